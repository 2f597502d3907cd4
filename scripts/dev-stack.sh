#!/usr/bin/env bash
# Start a local NTS stack on loopback with no configuration: development
# certificates and keys in ./nts-dev (or $NTS_DEV_DIR), the KE server, the
# time server, and the client agent measuring its offset with NTS (observe-only:
# nothing touches the clock). Runs in the foreground; Ctrl-C stops it all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${NTS_DEV_DIR:-$ROOT/nts-dev}"
INTERVAL="${NTS_DEV_STATUS_INTERVAL:-5}"

echo "building release binaries..."
cargo build --release --quiet -p nts-ke-server -p nts-time-server -p nts-client
BIN="$ROOT/target/release"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/nts-ke-server" --dev --state-dir "$STATE" --metrics-listen 127.0.0.1:9460 &
pids+=($!)
"$BIN/nts-time-server" --dev --state-dir "$STATE" --metrics-listen 127.0.0.1:9461 &
pids+=($!)
# The client starts once the time server holds cookie keys (its /readyz),
# so its first request is not answered with a NAK for a cookie whose key
# the time server has not received yet.
readyz() {
    (exec 3<>/dev/tcp/127.0.0.1/9461 && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3) 2>/dev/null
}
for _ in $(seq 50); do
    [[ "$(readyz || true)" == *" 200"* ]] && break
    sleep 0.1
done
"$BIN/nts-client" run --dev --state-dir "$STATE" --metrics-listen 127.0.0.1:9462 &
pids+=($!)

cat <<MSG

NTS-KE   127.0.0.1:4460   (trust $STATE/ca.pem)     metrics http://127.0.0.1:9460/metrics
NTP/NTS  127.0.0.1:4123                              metrics http://127.0.0.1:9461/metrics
key sync 127.0.0.1:4461   (gRPC, mutual TLS; the time server gets its cookie keys here)
client   observe-only agent, NTS to 127.0.0.1:4460   metrics http://127.0.0.1:9462/metrics
         full view: $BIN/nts-client status --socket $STATE/client.sock
Ctrl-C to stop.

MSG
sleep 3
while true; do
    if out="$("$BIN/nts-client" status --brief --socket "$STATE/client.sock" 2>&1)"; then
        echo "$(date +%T) client $out"
    else
        echo "$(date +%T) client: not ready yet ($(echo "$out" | head -n 1))"
    fi
    sleep "$INTERVAL"
done
