#!/usr/bin/env bash
# Start a local NTS stack on loopback with no configuration: development
# certificates and keys in ./nts-dev (or $NTS_DEV_DIR), the KE server, the
# time server, and a client measuring its offset with NTS (observe-only:
# nothing touches the clock). Runs in the foreground; Ctrl-C stops it all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${NTS_DEV_DIR:-$ROOT/nts-dev}"
INTERVAL="${NTS_DEV_QUERY_INTERVAL:-4}"

echo "building release binaries..."
cargo build --release --quiet -p nts-ke-server -p nts-time-server -p nts-client
BIN="$ROOT/target/release"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$BIN/nts-ke-server" --dev --state-dir "$STATE" --metrics-listen 127.0.0.1:9460 &
pids+=($!)
"$BIN/nts-time-server" --dev --state-dir "$STATE" --metrics-listen 127.0.0.1:9461 &
pids+=($!)

cat <<MSG

NTS-KE   127.0.0.1:4460   (trust $STATE/ca.pem)     metrics http://127.0.0.1:9460/metrics
NTP/NTS  127.0.0.1:4123                              metrics http://127.0.0.1:9461/metrics
Client: NTS key exchange and an authenticated query every ${INTERVAL}s (observe-only). Ctrl-C to stop.

MSG
while true; do
    if out="$("$BIN/nts-client" query --brief --timeout 2 --ca "$STATE/ca.pem" --no-system-roots 127.0.0.1:4460 2>&1)"; then
        echo "$(date +%T) client: $out"
    else
        echo "$(date +%T) client: query failed: $(echo "$out" | head -n 3 | tr '\n' ' ')"
    fi
    sleep "$INTERVAL"
done
