#!/usr/bin/env bash
# Chart checks (run by scripts/test.sh):
#   1. helm lint --strict, with the defaults and each values file in helm/nts/ci/;
#   2. values.schema.json refuses bad values (a typo in an enum, an unknown key);
#   3. helm template with every values file (minimal, ACME, cert-manager,
#      production-like), each rendered manifest validated offline with
#      kubernetes-validate --strict against the oldest supported and the newest
#      Kubernetes schemas (custom resources: cert-manager, ServiceMonitor are
#      only warned about: no schema offline);
#   4. NOTES.txt renders with each values file; references between resources
#      hold (helm/tests/check_wiring.py: selectors, named ports, the headless
#      Service, key-sync endpoints and certificate names, time-server ids the
#      shared key-sync client certificate names);
#   5. every rendered container's command, args, env and ConfigMaps run through
#      the real binary in the real image with --check-config (helm/tests/check_config.py);
#   6. each workload's checksum/config changes exactly when a ConfigMap its pods
#      mount changes (helm/tests/check_checksums.py: replicas, key-sync port,
#      per-component settings, update strategies), with a self-test;
#   7. the PrometheusRule as rendered passes `promtool check rules` and the
#      promtool unit tests of every alert (helm/tests/check_alerts.py,
#      helm/tests/alerts_test.yaml), and the dashboard is valid JSON.
# The chart stack test (helm/chart-stack-test.sh) runs the rendered pods together.
# Usage: helm/check-chart.sh [IMAGE]   (default $NTS_IMAGE or nts:dev; built when missing)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/nts"
IMAGE="${1:-${NTS_IMAGE:-nts:dev}}"
DEPS="$("$ROOT/docker/test/install-deps.sh")"
HELM="$(sed -n 's/^HELM=//p' <<<"$DEPS")"
PROMTOOL="$(sed -n 's/^PROMTOOL=//p' <<<"$DEPS")"
[ -x "$HELM" ] || { echo "check-chart: no helm" >&2; exit 1; }
[ -n "$(docker image ls -q "$IMAGE")" ] || "$ROOT/docker/build-images.sh" "$IMAGE"
OUT="$(mktemp -d /tmp/nts-chart.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
KUBE_OLDEST=1.25.0   # Chart.yaml kubeVersion
KUBE_NEWEST=1.37.0

echo "==> helm lint --strict ($("$HELM" version --short))"
"$HELM" lint --strict "$CHART" >/dev/null
for f in "$CHART"/ci/*.yaml; do
    "$HELM" lint --strict "$CHART" -f "$f" >/dev/null || { "$HELM" lint --strict "$CHART" -f "$f"; exit 1; }
    echo "  ok   lint with $(basename "$f")"
done

echo "==> values.schema.json (and the templates) refuse bad values"
# (workers=0 without resources.limits.memory: the schema; phcDevices without
# timestamping.interface: the template.)
for bad in client.mode=disciplne keServer.replicaz=2 timeServer.port=70000 keServer.tls.source=file \
        keySyncPki.clientName=Time_Server 'keySyncPki.clientName=*.nts.svc' \
        keySyncPki.clientName=a-name-longer-than-sixty-four-characters-which-no-x509-cn-may-hold \
        timeServer.workers=0 'timeServer.timestamping.phcDevices={/dev/sda}' \
        'timeServer.timestamping.phcDevices={/dev/ptp0}' priorityClasses.value=2000000000 \
        client.state.hostPath=relative/dir; do
    if "$HELM" template t "$CHART" --set "$bad" >/dev/null 2>&1; then
        echo "  FAIL --set $bad was accepted" >&2; exit 1
    fi
    echo "  ok   --set $bad refused"
done
# ... and the same values made whole are accepted (the refusals above are not of everything).
"$HELM" template t "$CHART" --set timeServer.workers=0 --set timeServer.resources.limits.memory=512Mi >/dev/null \
    || { echo "  FAIL timeServer.workers=0 with resources.limits.memory refused" >&2; exit 1; }
"$HELM" template t "$CHART" --set 'timeServer.timestamping.phcDevices={/dev/ptp0}' \
    --set timeServer.timestamping.interface=eth0 >/dev/null \
    || { echo "  FAIL phcDevices with an interface refused" >&2; exit 1; }
echo "  ok   workers=0 with a memory limit, phcDevices with an interface accepted"

for f in "$CHART"/ci/*.yaml; do
    name="$(basename "$f" .yaml)"
    echo "==> $name: helm template, kubernetes-validate --strict, --check-config in $IMAGE"
    "$HELM" template nts "$CHART" --namespace nts -f "$f" > "$OUT/$name.yaml"
    kinds="$(grep -h '^kind:' "$OUT/$name.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')"
    echo "  rendered: ${kinds%, }"
    for v in "$KUBE_OLDEST" "$KUBE_NEWEST"; do
        if ! kubernetes-validate --strict -k "$v" "$OUT/$name.yaml" > "$OUT/kv.log" 2>&1; then
            cat "$OUT/kv.log" >&2; echo "  FAIL kubernetes-validate $v" >&2; exit 1
        fi
        warn="$(grep -c WARN "$OUT/kv.log" || true)"
        echo "  ok   kubernetes-validate --strict -k $v ($warn custom resources without an offline schema)"
    done
    # NOTES.txt, rendered through a throwaway copy of the chart (helm template skips it).
    rm -rf "$OUT/notes-chart" && cp -r "$CHART" "$OUT/notes-chart"
    echo 'notes: {{ include "nts/templates/NOTES.txt" . | toJson }}' > "$OUT/notes-chart/templates/zz-notes.yaml"
    "$HELM" template nts "$OUT/notes-chart" --namespace nts -f "$f" --show-only templates/zz-notes.yaml \
        | python3 -c 'import sys, yaml; n = yaml.safe_load(sys.stdin)["notes"]; sys.exit(0 if "installed as nts in nts" in n else 1)' \
        || { echo "  FAIL NOTES.txt does not render" >&2; exit 1; }
    echo "  ok   NOTES.txt renders"
    python3 "$ROOT/helm/tests/check_wiring.py" "$OUT/$name.yaml" nts
    if [ "$name" = cert-manager-values ]; then
        # ... and time servers registering under ids the client certificate does not name (issue 20).
        sed 's/value: "[^"]*:$(NODE_NAME)"/value: "$(NODE_NAME)"/' "$OUT/$name.yaml" > "$OUT/broken.yaml"
        cmp -s "$OUT/$name.yaml" "$OUT/broken.yaml" && { echo "  FAIL self-test: no NTS_SERVER_ID to break" >&2; exit 1; }
        if python3 "$ROOT/helm/tests/check_wiring.py" "$OUT/broken.yaml" nts >/dev/null; then
            echo "  FAIL self-test: NTS_SERVER_ID=\$(NODE_NAME) passed the wiring check" >&2; exit 1
        fi
        sed '/kind: Certificate/,$ s/^\(  commonName:\|    - \)nts-time-server$/\1other-name/' "$OUT/$name.yaml" > "$OUT/broken.yaml"
        cmp -s "$OUT/$name.yaml" "$OUT/broken.yaml" && { echo "  FAIL self-test: no client certificate name to break" >&2; exit 1; }
        if python3 "$ROOT/helm/tests/check_wiring.py" "$OUT/broken.yaml" nts >/dev/null; then
            echo "  FAIL self-test: a client certificate without the time servers' name passed the wiring check" >&2; exit 1
        fi
        echo "  ok   self-test: server ids the client certificate does not name fail the wiring check"
    fi
    if [ "$name" = minimal-values ]; then
        # The wiring check must be able to fail: a Service port by a name no container has,
        # and time servers pointed at replicas of another namespace.
        sed 's/targetPort: key-sync/targetPort: keysync/' "$OUT/$name.yaml" > "$OUT/broken.yaml"
        if python3 "$ROOT/helm/tests/check_wiring.py" "$OUT/broken.yaml" nts >/dev/null; then
            echo "  FAIL self-test: a wrong targetPort passed the wiring check" >&2; exit 1
        fi
        if python3 "$ROOT/helm/tests/check_wiring.py" "$OUT/$name.yaml" elsewhere >/dev/null; then
            echo "  FAIL self-test: key-sync endpoints in the wrong namespace passed" >&2; exit 1
        fi
        echo "  ok   self-test: a wrong targetPort and a wrong namespace fail the wiring check"
    fi
    python3 "$ROOT/helm/tests/check_config.py" "$IMAGE" "$OUT/$name.yaml" $([ "$name" = minimal-values ] && echo --self-test)
done
echo "==> checksum/config rolls exactly the pods whose configuration changed"
python3 "$ROOT/helm/tests/check_checksums.py" "$HELM" "$CHART" "$CHART/ci/minimal-values.yaml"
# The check must be able to fail: time servers hashing their values instead of their ConfigMap.
rm -rf "$OUT/sum-chart" && cp -r "$CHART" "$OUT/sum-chart"
sed -i 's/checksum\/config: {{ include "nts.timeServerConfigData" . | sha256sum }}/checksum\/config: {{ .Values.timeServer | toJson | sha256sum }}/' \
    "$OUT/sum-chart/templates/time-server.yaml"
cmp -s "$CHART/templates/time-server.yaml" "$OUT/sum-chart/templates/time-server.yaml" \
    && { echo "  FAIL self-test: no time-server checksum/config to break" >&2; exit 1; }
if python3 "$ROOT/helm/tests/check_checksums.py" "$HELM" "$OUT/sum-chart" "$CHART/ci/minimal-values.yaml" >/dev/null; then
    echo "  FAIL self-test: a time-server checksum of .Values.timeServer passed the checksum check" >&2; exit 1
fi
echo "  ok   self-test: a time-server checksum of .Values.timeServer (the old one) fails the checksum check"
echo "==> alerts: promtool check rules and promtool test rules on the rendered PrometheusRule"
python3 "$ROOT/helm/tests/check_alerts.py" "$HELM" "$PROMTOOL" "$CHART"
echo "==> chart checks passed"
