#!/usr/bin/env bash
# Build the nts image offline, in one command: static release binaries on the
# host (cached in target/), then `docker build --target offline`, which copies
# them onto an empty base. No registry and no pull are needed. Prints the size.
#
# Usage: docker/build-images.sh [IMAGE]        (default nts:dev, or $NTS_IMAGE)
# The public build (with internet) is plain:  docker build -f docker/Dockerfile .
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
IMAGE="${1:-${NTS_IMAGE:-nts:dev}}"
TARGET="$(uname -m)-unknown-linux-gnu"
BINS=(nts-ke-server nts-time-server nts-client)
BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { echo "build-images: $*"; }
[ -s "$BUNDLE" ] || { echo "build-images: ERROR: $BUNDLE missing (apt-get install ca-certificates)" >&2; exit 1; }

log "static release build for $TARGET (glibc, +crt-static)"
# The flag goes on the command line, not in .cargo/config.toml: there it would
# also reach build scripts and proc-macros and invalidate target/release.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet \
    --target "$TARGET" -p nts-ke-server -p nts-time-server -p nts-client

OUT=docker/offline
find "$OUT" -mindepth 1 ! -name .gitignore -delete
mkdir -p "$OUT/usr/local/bin" "$OUT/etc/ssl/certs"
for b in "${BINS[@]}"; do
    f="target/$TARGET/release/$b"
    # Dynamic binaries would not start on an empty base.
    if file "$f" 2>/dev/null | grep -q 'dynamically linked'; then
        echo "build-images: ERROR: $f is dynamically linked" >&2; exit 1
    fi
    install -m 0755 "$f" "$OUT/usr/local/bin/$b"
done
install -m 0644 "$BUNDLE" "$OUT/etc/ssl/certs/ca-certificates.crt"

log "docker build --target offline -t $IMAGE"
# (the classic builder's deprecation notice is dropped; real errors are shown)
errs="$(mktemp)"
if ! docker build --quiet --target offline -f docker/Dockerfile -t "$IMAGE" . >/dev/null 2>"$errs"; then
    cat "$errs" >&2; rm -f "$errs"; exit 1
fi
rm -f "$errs"
# Nothing but the binaries, the CA bundle and the user (the engine adds /dev, /etc/hosts and friends).
c="$(docker create "$IMAGE" x)"
files="$(docker export "$c" | tar -t | grep -v '/$' | grep -vxE '\.dockerenv|dev/console|etc/(hostname|hosts|mtab|resolv\.conf)' | sort | tr '\n' ' ')"
docker rm "$c" >/dev/null
expected="etc/group etc/passwd etc/ssl/certs/ca-certificates.crt usr/local/bin/nts-client usr/local/bin/nts-ke-server usr/local/bin/nts-time-server "
[ "$files" = "$expected" ] || { echo "build-images: ERROR: unexpected image contents: $files" >&2; exit 1; }
docker image inspect -f 'built {{index .RepoTags 0}}: {{.Size}} bytes' "$IMAGE"
docker run --rm --network none "$IMAGE" /usr/local/bin/nts-ke-server --version >/dev/null
du -b "$OUT"/usr/local/bin/* "$OUT"/etc/ssl/certs/* | awk '{printf "  %10d  %s\n", $1, $2}'
