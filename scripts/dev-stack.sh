#!/usr/bin/env bash
# Start a local NTS stack on loopback with no configuration: development
# certificates in ./nts-dev (or $NTS_DEV_DIR), every role that exists, in the
# foreground. Ctrl-C stops them all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="${NTS_DEV_DIR:-$ROOT/nts-dev}"

cargo build --release --quiet -p nts-ke-server -p nts-client
BIN="$ROOT/target/release"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$BIN/nts-ke-server" --dev --state-dir "$STATE" --metrics-listen 127.0.0.1:9460 &
pids+=($!)

# Wait for the KE server, then show a key exchange as a client sees it.
for _ in $(seq 50); do
    if "$BIN/nts-client" ke --ca "$STATE/ca.pem" --no-system-roots --timeout 1 127.0.0.1:4460 2>/dev/null; then
        break
    fi
    sleep 0.2
done
echo
echo "NTS-KE on 127.0.0.1:4460 (CA: $STATE/ca.pem), metrics on http://127.0.0.1:9460/metrics. Ctrl-C to stop."
wait
