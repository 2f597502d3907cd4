#!/usr/bin/env bash
# Install the real peers used by the end-to-end tests (see testkit/).
#
# Idempotent and fast when everything is already present. Installs, when missing:
#   - chrony        (chronyd/chronyc, NTS client and server)
#   - python3-ntp   (needed by NTPsec's ntpq/ntpdig)
#   - libcap2-bin   (capsh, to drop CAP_SYS_TIME from ntpd)
#   - iproute2      (ip, for network namespaces)
#   - pebble        (Let's Encrypt's ACME test server, with pebble-challtestsrv as
#                    its DNS; for the nts-ke-server ACME tests)
# and extracts NTPsec (which conflicts with chrony as a package) with
# `apt-get download` + `dpkg-deb -x` into $NTS_TESTKIT_NTPSEC_DIR (default
# /opt/nts-testkit/ntpsec; the .deb is cached in $NTS_TESTKIT_CACHE_DIR, default
# /opt/nts-testkit/cache), so that its ntpd is at $NTS_TESTKIT_NTPSEC_DIR/usr/sbin/ntpd
# and its ntpq at .../usr/bin/ntpq (run with /usr/bin/python3). Installs ntpsec's
# shared-library dependencies (libssl3, libbsd0, ...) if missing.
#
# Exits non-zero with an ERROR line on any failure.
#
# Never starts a time daemon: /usr/sbin/policy-rc.d is made to exit 101 before any
# install so that installing chrony does not start a chronyd disciplining the clock.
set -euo pipefail

NTPSEC_DIR="${NTS_TESTKIT_NTPSEC_DIR:-/opt/nts-testkit/ntpsec}"
CACHE_DIR="${NTS_TESTKIT_CACHE_DIR:-/opt/nts-testkit/cache}"
PACKAGES=(chrony python3-ntp libcap2-bin iproute2 pebble)

log() { echo "install-test-deps: $*"; }
die() { echo "install-test-deps: ERROR: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        die "must run as root (or with sudo available) to install packages"
    fi
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: only Debian/Ubuntu are supported"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found"

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "running apt-get update"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

ensure_policy_rc_d() {
    local f=/usr/sbin/policy-rc.d
    if [ -x "$f" ] && grep -qE '^[[:space:]]*exit[[:space:]]+101' "$f"; then
        return
    fi
    if [ -e "$f" ]; then
        log "replacing $f (saving the old one as $f.nts-testkit.bak) so that no daemon starts"
        $SUDO cp -a "$f" "$f.nts-testkit.bak"
    else
        log "creating $f so that installing chrony starts no daemon"
    fi
    printf '#!/bin/sh\n# Installed by install-test-deps.sh: start no services on install.\nexit 101\n' \
        | $SUDO tee "$f" >/dev/null
    $SUDO chmod 0755 "$f"
}

# 1. Debian packages.
MISSING=()
for p in "${PACKAGES[@]}"; do
    if is_installed "$p"; then
        log "$p: already installed"
    else
        MISSING+=("$p")
    fi
done

if [ "${#MISSING[@]}" -gt 0 ]; then
    ensure_policy_rc_d
    apt_update_once
    log "installing: ${MISSING[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${MISSING[@]}" || die "apt-get install ${MISSING[*]} failed"
    # Belt and braces: if a chronyd got started anyway by the package, say so loudly.
    if pgrep -x chronyd >/dev/null 2>&1; then
        log "WARNING: a chronyd process is running; it was not started by this script's request." \
            "Check it is not disciplining the system clock (it must run with -x)."
    fi
fi

for b in chronyd chronyc capsh ip pebble pebble-challtestsrv; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || [ -x "/usr/bin/$b" ] \
        || die "$b not found after install"
done

# 2. NTPsec, extracted (not installed: it conflicts with chrony).
NTPD="$NTPSEC_DIR/usr/sbin/ntpd"
NTPQ="$NTPSEC_DIR/usr/bin/ntpq"
MARKER=".nts-testkit-extracted"

# Sets DEB to the cached ntpsec .deb, downloading it if needed.
ensure_ntpsec_deb() {
    $SUDO mkdir -p "$CACHE_DIR"
    DEB="$(ls -1 "$CACHE_DIR"/ntpsec_*.deb 2>/dev/null | sort | tail -n 1 || true)"
    if [ -n "$DEB" ]; then
        log "using cached $DEB"
        return
    fi
    apt_update_once
    log "downloading ntpsec .deb into $CACHE_DIR"
    # Download in a fresh folder that apt's _apt user may write to (apt warns
    # and falls back to root otherwise), then move the .deb to the cache.
    local dl
    dl="$($SUDO mktemp -d "$CACHE_DIR/download.XXXXXX")" || die "mktemp in $CACHE_DIR failed"
    if id _apt >/dev/null 2>&1; then $SUDO chown _apt "$dl" 2>/dev/null || true; fi
    if ! (cd "$dl" && $SUDO apt-get download -q ntpsec); then
        $SUDO rm -rf "$dl"
        die "apt-get download ntpsec failed"
    fi
    $SUDO mv "$dl"/ntpsec_*.deb "$CACHE_DIR"/ 2>/dev/null || true
    $SUDO rm -rf "$dl"
    DEB="$(ls -1 "$CACHE_DIR"/ntpsec_*.deb 2>/dev/null | sort | tail -n 1 || true)"
    [ -n "$DEB" ] || die "apt-get download ntpsec produced no .deb"
}

# Installs the shared libraries ntpsec depends on (lib* entries of its Depends:
# libssl3, libbsd0, libcap2, ...), which a minimal image may lack. The package's
# other dependencies (tzdata, netbase, adduser, ...) are not needed to run ntpd.
ensure_ntpsec_libs() {
    local libs=() dep
    for dep in $(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed -e 's/(.*)//' -e 's/|.*//' \
                 | awk '{print $1}' | grep '^lib' || true); do
        is_installed "$dep" || libs+=("$dep")
    done
    if [ "${#libs[@]}" -gt 0 ]; then
        ensure_policy_rc_d
        apt_update_once
        log "installing ntpsec's libraries: ${libs[*]}"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${libs[@]}" || die "apt-get install ${libs[*]} failed"
    fi
}

if [ -x "$NTPD" ] && [ -f "$NTPQ" ]; then
    log "ntpsec: already extracted in $NTPSEC_DIR"
else
    # Never replace a folder that is not ours (e.g. a mistyped override).
    if [ -d "$NTPSEC_DIR" ] && [ ! -e "$NTPSEC_DIR/$MARKER" ] \
        && [ -n "$(ls -A "$NTPSEC_DIR" 2>/dev/null)" ]; then
        die "$NTPSEC_DIR exists, is not empty and was not made by this script; remove it or set NTS_TESTKIT_NTPSEC_DIR"
    fi
    ensure_ntpsec_deb
    ensure_ntpsec_libs
    log "extracting $DEB into $NTPSEC_DIR"
    TMP_DIR="$NTPSEC_DIR.tmp.$$"
    $SUDO rm -rf "$TMP_DIR"
    $SUDO mkdir -p "$TMP_DIR"
    $SUDO dpkg-deb -x "$DEB" "$TMP_DIR" || { $SUDO rm -rf "$TMP_DIR"; die "dpkg-deb -x $DEB failed"; }
    [ -x "$TMP_DIR/usr/sbin/ntpd" ] || { $SUDO rm -rf "$TMP_DIR"; die "no usr/sbin/ntpd in $DEB"; }
    echo "$(basename "$DEB")" | $SUDO tee "$TMP_DIR/$MARKER" >/dev/null
    $SUDO rm -rf "$NTPSEC_DIR"
    $SUDO mkdir -p "$(dirname "$NTPSEC_DIR")"
    $SUDO mv "$TMP_DIR" "$NTPSEC_DIR"
    $SUDO chmod 0755 "$NTPSEC_DIR"
fi

# ntpdig (plain NTP client, its own package) goes into the same folder.
NTPDIG="$NTPSEC_DIR/usr/bin/ntpdig"
if [ -f "$NTPDIG" ]; then
    log "ntpdig: already extracted in $NTPSEC_DIR"
else
    DIG_DEB="$(ls -1 "$CACHE_DIR"/ntpsec-ntpdig_*.deb 2>/dev/null | sort | tail -n 1 || true)"
    if [ -z "$DIG_DEB" ]; then
        apt_update_once
        dl="$($SUDO mktemp -d "$CACHE_DIR/download.XXXXXX")" || die "mktemp in $CACHE_DIR failed"
        if id _apt >/dev/null 2>&1; then $SUDO chown _apt "$dl" 2>/dev/null || true; fi
        (cd "$dl" && $SUDO apt-get download -q ntpsec-ntpdig) || { $SUDO rm -rf "$dl"; die "apt-get download ntpsec-ntpdig failed"; }
        $SUDO mv "$dl"/ntpsec-ntpdig_*.deb "$CACHE_DIR"/
        $SUDO rm -rf "$dl"
        DIG_DEB="$(ls -1 "$CACHE_DIR"/ntpsec-ntpdig_*.deb | sort | tail -n 1)"
    fi
    log "extracting $DIG_DEB into $NTPSEC_DIR"
    $SUDO dpkg-deb -x "$DIG_DEB" "$NTPSEC_DIR" || die "dpkg-deb -x $DIG_DEB failed"
    [ -f "$NTPDIG" ] || die "no usr/bin/ntpdig in $DIG_DEB"
fi

[ -x "$NTPD" ] || die "$NTPD missing"
# The dynamic loader must resolve all of ntpd's libraries.
if command -v ldd >/dev/null 2>&1 && ldd "$NTPD" | grep -q "not found"; then
    log "ntpd has unresolved libraries, installing ntpsec's library dependencies"
    ensure_ntpsec_deb
    ensure_ntpsec_libs
    if ldd "$NTPD" | grep -q "not found"; then
        ldd "$NTPD" | grep "not found" >&2
        die "ntpd still has unresolved libraries (listed above)"
    fi
fi
"$NTPD" --version >/dev/null 2>&1 || die "$NTPD --version failed"
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 missing (needed by ntpq)"
/usr/bin/python3 -c 'import ntp.packet, ntp.util' 2>/dev/null \
    || die "python3-ntp not importable by /usr/bin/python3 (needed by ntpq)"

log "ok: chronyd=$(command -v chronyd || echo /usr/sbin/chronyd) ntpd=$NTPD ntpq=$NTPQ" \
    "pebble=$(command -v pebble || echo /usr/bin/pebble)"
