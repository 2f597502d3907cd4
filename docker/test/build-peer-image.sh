#!/usr/bin/env bash
# Build the local image of outside peers for the engine test: chrony (Debian's
# package, an independent NTS client) and curl (to read metrics from inside the
# private network). No registry is needed: the root filesystem comes from
# Debian's packages with mmdebstrap, and `docker import` turns it into an image.
#
# The root filesystem tar is cached in $NTS_TEST_CACHE (default
# /var/cache/nts-test), keyed by what it contains (suite, variant, packages), so
# later runs import it in a few seconds instead of bootstrapping for a minute.
#
# Usage: docker/test/build-peer-image.sh [IMAGE]   (default nts-test-peer:bookworm)
set -euo pipefail

IMAGE="${1:-nts-test-peer:bookworm}"
CACHE="${NTS_TEST_CACHE:-/var/cache/nts-test}"
SUITE=bookworm
VARIANT=minbase
PACKAGES=chrony,curl,ca-certificates

log() { echo "build-peer-image: $*"; }

command -v mmdebstrap >/dev/null || { echo "build-peer-image: ERROR: mmdebstrap missing (apt-get install mmdebstrap)" >&2; exit 1; }
KEY="$(printf '%s\n' "$SUITE" "$VARIANT" "$PACKAGES" | sha256sum | cut -c1-16)"
TAR="$CACHE/peer-rootfs-$SUITE-$KEY.tar"
mkdir -p "$CACHE"
if [ -f "$TAR" ] && [ -s "$TAR" ]; then
    log "using cached $TAR"
else
    log "bootstrapping $SUITE ($VARIANT + $PACKAGES) into $TAR"
    tmp="$CACHE/.partial-$$-$(basename "$TAR")"  # must end in .tar: mmdebstrap picks the format by name
    trap 'rm -f "$tmp"' EXIT
    # The host's Debian mirror (the only package source these machines reach).
    mmdebstrap --quiet --variant="$VARIANT" --include="$PACKAGES" "$SUITE" "$tmp" \
        "deb http://deb.debian.org/debian $SUITE main" \
        "deb http://deb.debian.org/debian-security $SUITE-security main"
    mv "$tmp" "$TAR"
    trap - EXIT
fi
# Same tar, same image: re-import only when the tag is missing or was made from another tar.
if [ "$(docker image inspect -f '{{ index .Config.Labels "nts-test.rootfs" }}' "$IMAGE" 2>/dev/null || true)" = "$KEY" ]; then
    log "$IMAGE is up to date"
else
    docker import \
        -c "LABEL nts-test.rootfs=$KEY" \
        -c 'ENTRYPOINT ["/usr/sbin/chronyd", "-x", "-d"]' \
        "$TAR" "$IMAGE" >/dev/null
    log "imported $IMAGE"
fi
