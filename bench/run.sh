#!/usr/bin/env bash
# Benchmark nts-time-server against chrony and a UDP echo baseline, one after
# the other, on loopback, with the same load generator. Bounded: about 3-5
# minutes after the build, hard limit 10 minutes. Needs root for chronyd
# (it runs with -x: it never touches the clock). Extra arguments go to
# nts-bench (see `target/release/nts-bench --help`), e.g. --skip-chrony.
#
#   bench/run.sh --per-core      each server pinned to CPU 1 (1 worker), the
#                                generator to CPU 0: max rates and CPU per
#                                request per core, and the targets; ~4-6 minutes
#   bench/run.sh --per-core --servers ours,echo --ours-server-option 'receive_buffer = 0'
#
# Results (NTS_BENCH_OUT to change): target/bench/summary.md, target/bench/results.json, target/bench/logs/
# (--per-core: target/bench/per-core/...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# NTS_BENCH_NO_BUILD=1 uses the binaries already in target/release (e.g. while
# the tree does not build); the summary records when they were built.
if [ -z "${NTS_BENCH_NO_BUILD:-}" ]; then
    cargo build --release --quiet -p nts-bench -p nts-ke-server -p nts-time-server
fi

echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)"
exec timeout --kill-after=20 600 "$ROOT/target/release/nts-bench" \
    --out "${NTS_BENCH_OUT:-$ROOT/target/bench}" "$@"
