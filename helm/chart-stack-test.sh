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
#      servers, nothing runs as root or keeps a capability;
#   5. helm upgrade, as the controllers would roll it (exactly the pods whose
#      pod template, checksum annotations included, changed; StatefulSet from
#      the highest ordinal, DaemonSets within maxUnavailable): keServer.replicas
#      2 -> 3, then keServer.keySync.port 4461 -> 4471; after each, within
#      UPGRADE_TIMEOUT seconds, every KE replica (the new one too) Ready with
#      every time server registered, every pod Ready, every client authenticated;
#      then client.logLevel info -> debug: the clients roll, and each new agent
#      resumes the NTS association its predecessor saved in the node's
#      observe-mode state directory (client.state.observeOnHost), no key exchange;
#   6. self-test: the same replicas upgrade with the old time-server checksum
#      (of .Values.timeServer, which a replica count does not change) must
#      leave the new replica unready: the time servers are not rolled, keep
#      their old endpoint list and never register with it.
# Details in helm/tests/chart_stack.py; cleans up what it created on every exit.
# Usage: helm/chart-stack-test.sh [IMAGE]   (default $NTS_IMAGE or nts:dev; built when missing)
#        UPGRADE_TIMEOUT=60 SELF_TEST_TIMEOUT=20 (seconds: bound of each upgrade, of the self-test's)
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
PREFIX="ntscs$$"    # every container and the network chart_stack.py creates (and ${PREFIX}o: the self-test's)
cleanup() {
    local rc=$?
    # chart_stack.py removes what it made; this catches a python that was killed.
    for p in "$PREFIX" "${PREFIX}o"; do
        docker ps -aq --filter "label=nts-chart-stack=$p" | xargs -r docker rm -f >/dev/null 2>&1 || true
        docker network ls -q --filter "label=nts-chart-stack=$p" | xargs -r docker network rm >/dev/null 2>&1 || true
    done
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
UPGRADE_TIMEOUT="${UPGRADE_TIMEOUT:-60}"
render() {  # CHART OUT [--set ...]
    local chart="$1" out="$2"; shift 2
    "$HELM" template "$RELEASE" "$chart" --namespace "$NAMESPACE" \
        -f "$CHART/ci/cert-manager-values.yaml" -f "$ROOT/helm/tests/chart-stack-values.yaml" \
        "${image_set[@]}" "$@" > "$out"
}
render "$CHART" "$OUT/rendered.yaml"
render "$CHART" "$OUT/up-replicas.yaml" --set keServer.replicas=3
render "$CHART" "$OUT/up-keysync-port.yaml" --set keServer.replicas=3 --set keServer.keySync.port=4471
render "$CHART" "$OUT/up-client.yaml" --set keServer.replicas=3 --set keServer.keySync.port=4471 --set client.logLevel=debug
stack() {  # PREFIX RENDERED.yaml [chart_stack.py options]
    local prefix="$1"; shift
    # The client's extra CA (client.extraCA.secretName) is the operator's copy of
    # the CA behind the public KE certificate (Secret RELEASE-nts-ke-tls).
    PYTHONPATH="$ROOT/helm/tests" python3 "$ROOT/helm/tests/chart_stack.py" "$@" \
        --namespace "$NAMESPACE" --trust-secret "$RELEASE-nts-ke-ca=$RELEASE-nts-ke-tls" --workdir "$OUT" --prefix "$prefix"
}
stack "$PREFIX" "$OUT/rendered.yaml" --upgrade-timeout "$UPGRADE_TIMEOUT" \
    --upgrade "keServer.replicas 2->3=$OUT/up-replicas.yaml" \
    --upgrade "keServer.keySync.port 4461->4471=$OUT/up-keysync-port.yaml" \
    --upgrade "client.logLevel info->debug=$OUT/up-client.yaml" --expect-resume "client.logLevel info->debug"
echo "==> chart stack test passed in $((SECONDS - START))s"

# The upgrade check must be able to fail: the chart as it was before time servers
# hashed their rendered ConfigMap (checksum/config of .Values.timeServer).
echo "==> self-test: the replicas upgrade with the old time-server checksum must leave the new KE replica unready"
SELF="$((SECONDS))"
rm -rf "$OUT/old-chart" && cp -r "$CHART" "$OUT/old-chart"
sed -i 's/checksum\/config: {{ include "nts.timeServerConfigData" . | sha256sum }}/checksum\/config: {{ .Values.timeServer | toJson | sha256sum }}/' \
    "$OUT/old-chart/templates/time-server.yaml"
cmp -s "$CHART/templates/time-server.yaml" "$OUT/old-chart/templates/time-server.yaml" \
    && { echo "  FAIL self-test: no time-server checksum/config to break" >&2; exit 1; }
render "$OUT/old-chart" "$OUT/old.yaml"
render "$OUT/old-chart" "$OUT/old-up-replicas.yaml" --set keServer.replicas=3
stack "${PREFIX}o" "$OUT/old.yaml" --upgrade-timeout "${SELF_TEST_TIMEOUT:-20}" --expect-upgrade-failure \
    --upgrade "keServer.replicas 2->3=$OUT/old-up-replicas.yaml" | tee "$OUT/self-test.log"
line="$(grep '^UPGRADE-FAILED:' "$OUT/self-test.log" || true)"
case "$line" in
    *"$RELEASE-nts-ke-2: unready"*) echo "  ok   self-test: the old chart fails the upgrade check ($((SECONDS - SELF))s)" ;;
    *) echo "  FAIL self-test: the old chart's upgrade did not fail on the new replica being unready: ${line:-no failure}" >&2; exit 1 ;;
esac
echo "==> chart stack test and self-test passed in $((SECONDS - START))s"
