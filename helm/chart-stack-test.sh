#!/usr/bin/env bash
# Chart stack test (run by scripts/test.sh after helm/check-chart.sh): install
# the chart the way an operator would, as far as a machine without a
# Kubernetes API server allows, and check that the pods work together.
#   1. helm template with the cert-manager path (helm/nts/ci/cert-manager-values.yaml)
#      plus test-only overrides (helm/tests/chart-stack-values.yaml: 2 KE
#      replicas, short key-sync report/expiry, a local-reference clock, clients
#      in observe mode pointed at the KE Service's name);
#   2. every rendered Certificate signed from its spec by a throwaway CA per
#      issuer, as cert-manager's CA issuer would (tls.crt, tls.key, ca.crt);
#   3. every rendered pod run as a Docker container with exactly what its
#      manifest gives it (command, args, env with the downward API filled in,
#      ConfigMaps and Secrets with the kubelet's modes and fsGroup, user,
#      capabilities without SYS_TIME, read-only root), on simulated nodes,
#      with cluster DNS names as network aliases, on an internal network;
#   4. asserts: every time server registers with every KE replica (no
#      refusal in any KE log, nts_ke_registered_time_servers{state="alive"} and
#      the registered server ids on each replica), every pod's readinessProbe
#      passes, every client agent gets authenticated NTS time from the time
#      servers, nothing runs as root or keeps a capability.
# Details in helm/tests/chart_stack.py; cleans up what it created on every exit.
# Usage: helm/chart-stack-test.sh [IMAGE]   (default $NTS_IMAGE or nts:dev; built when missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/nts"
IMAGE="${1:-${NTS_IMAGE:-nts:dev}}"
RELEASE=edge        # helm/tests/chart-stack-values.yaml names its Services after it
NAMESPACE=nts
START=$SECONDS
HELM="$("$ROOT/docker/test/install-deps.sh" | sed -n 's/^HELM=//p')"
[ -x "$HELM" ] || { echo "chart-stack-test: no helm" >&2; exit 1; }
[ -n "$(docker image ls -q "$IMAGE")" ] || "$ROOT/docker/build-images.sh" "$IMAGE"
OUT="$(mktemp -d /tmp/nts-chart-stack-render.XXXXXX)"
PREFIX="ntscs$$"    # every container and the network chart_stack.py creates
cleanup() {
    local rc=$?
    # chart_stack.py removes what it made; this catches a python that was killed.
    docker ps -aq --filter "label=nts-chart-stack=$PREFIX" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "label=nts-chart-stack=$PREFIX" | xargs -r docker network rm >/dev/null 2>&1 || true
    rm -rf "$OUT"
    exit $rc
}
trap cleanup EXIT INT TERM

echo "==> chart stack: helm template $RELEASE (cert-manager values + helm/tests/chart-stack-values.yaml, image $IMAGE)"
case "$IMAGE" in
    *@*) image_set=(--set "image.repository=${IMAGE%@*}" --set "image.digest=${IMAGE#*@}") ;;
    *:*) image_set=(--set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}") ;;
    *)   image_set=(--set "image.repository=$IMAGE" --set image.tag=latest) ;;
esac
"$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
    -f "$CHART/ci/cert-manager-values.yaml" -f "$ROOT/helm/tests/chart-stack-values.yaml" \
    "${image_set[@]}" > "$OUT/rendered.yaml"
# The client's extra CA (client.extraCA.secretName) is the operator's copy of
# the CA behind the public KE certificate (Secret RELEASE-nts-ke-tls).
PYTHONPATH="$ROOT/helm/tests" python3 "$ROOT/helm/tests/chart_stack.py" "$OUT/rendered.yaml" \
    --namespace "$NAMESPACE" --trust-secret "$RELEASE-nts-ke-ca=$RELEASE-nts-ke-tls" --prefix "$PREFIX" --workdir "$OUT"
echo "==> chart stack test passed in $((SECONDS - START))s"
