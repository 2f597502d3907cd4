#!/usr/bin/env bash
# Fuzz nts-proto's parsers (wire formats and state files) and cookie opening
# with cargo-fuzz (libFuzzer). Targets are those of proto/fuzz/Cargo.toml.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 20)
#
# Installs cargo-fuzz when missing (`cargo install cargo-fuzz --locked`, ~30 s),
# builds every target in proto/fuzz once, then runs each for SECONDS_PER_TARGET
# on the stable toolchain with `cargo fuzz run -s none` (no sanitizer: the
# targets are safe Rust, and plain `cargo fuzz run` needs nightly for -Z flags).
# Each run starts from the committed seeds (proto/fuzz/seeds/TARGET, copied into
# proto/fuzz/corpus/TARGET, which keeps growing from run to run).
#
# Prints one line per target (target, runs, exec/s, result) and exits non-zero
# if any target found a crash, a timeout or an out-of-memory, or failed to run.
# A crash input is saved under proto/fuzz/artifacts/TARGET/ and printed as hex;
# replay it with: (cd proto && cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/FILE)
#
# Environment:
#   FUZZ_TARGETS   space-separated subset of targets (default: all of `cargo fuzz list`)
#   FUZZ_TIMEOUT   seconds one input may take before it counts as a hang (default 10)
set -euo pipefail

SECONDS_PER_TARGET="${1:-20}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
TIMEOUT="${FUZZ_TIMEOUT:-10}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTO="$ROOT/proto"
FUZZ="$PROTO/fuzz"
LOGS="$FUZZ/target/fuzz-logs"
START=$(date +%s)

log() { echo "fuzz: $*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$PROTO"
mkdir -p "$LOGS"

log "building targets (release, debug assertions, no sanitizer)"
if ! cargo fuzz build -s none >"$LOGS/build.log" 2>&1; then
    tail -n 40 "$LOGS/build.log" >&2
    log "build failed (full log: $LOGS/build.log)"
    exit 2
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a TARGETS <<<"$FUZZ_TARGETS"
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

# Inputs up to this size: ke_response must be able to exceed the 16 KiB response limit.
max_len() {
    case "$1" in
        ke_response) echo 17408 ;;
        *) echo 4096 ;;
    esac
}

# Last value of a libFuzzer final statistic in a log ("stat::NAME: VALUE").
stat() { sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$2" | tail -n 1; }

failures=0
summary=()
for t in "${TARGETS[@]}"; do
    corpus="$FUZZ/corpus/$t"
    mkdir -p "$corpus" "$FUZZ/artifacts/$t"
    if [ -d "$FUZZ/seeds/$t" ]; then
        cp -n "$FUZZ/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    tlog="$LOGS/$t.log"
    log "running $t for ${SECONDS_PER_TARGET}s"
    rc=0
    cargo fuzz run -s none "$t" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" -print_final_stats=1 >"$tlog" 2>&1 || rc=$?

    runs=$(stat number_of_executed_units "$tlog")
    eps=$(stat average_exec_per_sec "$tlog")
    corpus_n=$(find "$corpus" -type f | wc -l)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$tlog" | tail -n 1)
    if [ "$rc" -eq 0 ]; then
        result=ok
    elif [ -n "$artifact" ]; then
        kind=$(basename "$artifact" | cut -d- -f1) # crash, timeout, oom, leak, slow-unit
        result="FAILED:$kind"
    else
        result="FAILED:exit-$rc"
    fi
    line=$(printf '%-12s runs=%-10s exec/s=%-8s corpus=%-5s result=%s' \
        "$t" "${runs:-?}" "${eps:-?}" "$corpus_n" "$result")
    summary+=("$line")
    echo "fuzz: $line"
    if [ "$result" != ok ]; then
        failures=$((failures + 1))
        grep -m 1 -A 1 -E "panicked at|ERROR: libFuzzer" "$tlog" | sed 's/^/fuzz:   /' || true
        f="$artifact"
        [ -z "$f" ] || [ -f "$f" ] || f="$PROTO/$artifact"
        if [ -n "$artifact" ] && [ -f "$f" ]; then
            echo "fuzz:   input ($(wc -c <"$f") bytes): $f"
            echo "fuzz:   hex: $(head -c 1024 "$f" | od -An -v -tx1 | tr -d ' \n')"
        fi
        echo "fuzz:   log: $tlog"
    fi
done

echo "fuzz: ---- summary (${SECONDS_PER_TARGET}s per target, $(($(date +%s) - START))s wall) ----"
for line in "${summary[@]}"; do
    echo "fuzz: $line"
done
if [ "$failures" -ne 0 ]; then
    echo "fuzz: $failures target(s) FAILED"
    exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets ok"
