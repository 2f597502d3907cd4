#!/usr/bin/env bash
# Multi-host engine test: the nts image in Docker, on a private `internal`
# network (docker/test/compose.yaml). Asserts, with real processes:
#   1. least privilege: the time server cannot bind UDP 123 without
#      NET_BIND_SERVICE (ip_unprivileged_port_start=1024), a non-root process
#      cannot use an added capability, and every daemon runs as uid 10001 with
#      no capability left; no container has SYS_TIME;
#   2. chrony (Debian's) and both nts-client agents get authenticated time, and
#      Server Negotiation hands out both time servers;
#   3. one KE replica stopped: nothing lost; both stopped: the time servers keep
#      serving with the keys they hold;
#   4. a time server disconnected: both KE replicas stop handing it out within
#      their expiry, clients keep authenticated time from the other one;
#      reconnected: handed out again (the time this took is printed);
#   5. every container restarted: cookies chrony held from before still work
#      (no new key exchange by chrony);
#   3b. monitoring: a real Prometheus scrapes every daemon; each dashboard
#      query of the chart returns data, each alert expression evaluates, finds
#      its metrics and is quiet on the healthy stack (the certificate-expiry
#      alert must fire: the test PKI lives 2 days), and the key-sync alert's
#      expression sees the links down in step 4;
#   6. graceful drain: a KE rolling restart (SIGTERM, 2 s of endpoint lag
#      during which clients are still sent to the stopping replica) fails no
#      key exchange; a time server sent SIGTERM is no longer handed out
#      within 1 s and keeps answering for its grace period.
# Cleans up (containers, network, volume, temp files) on every exit.
#
# Usage: docker/test/compose-test.sh        (builds the images when missing)
#   NTS_IMAGE (default nts:dev), NTS_PEER_IMAGE (default nts-test-peer:bookworm)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/docker/test"
export NTS_IMAGE="${NTS_IMAGE:-nts:dev}"
export NTS_PEER_IMAGE="${NTS_PEER_IMAGE:-nts-test-peer:bookworm}"
export NTS_PROJECT="ntse2e$$"
# A /24 no Docker network and no host route uses (another run may be going on).
used="$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' $(docker network ls -q) 2>/dev/null; ip route 2>/dev/null | awk '{print $1}')"
for i in $(seq 0 199); do
    NTS_NET="172.30.$(( (($$ + i) % 200) + 20 ))"
    grep -q "${NTS_NET//./\.}\." <<<"$used" || break
done
export NTS_NET
NET="${NTS_PROJECT}_nts"
EXPIRY=4            # KE key_sync.expiry (seconds) in this test
REPORT=1            # KE key_sync.report_interval
DRAIN=3             # KE server.drain_delay and time server server.drain_grace
START=$SECONDS

log() { printf '[%4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { printf '[%4ds] FAIL: %s\n' "$((SECONDS - START))" "$*" >&2; dump_logs; exit 1; }

[ -n "$(docker image ls -q "$NTS_IMAGE")" ] || "$ROOT/docker/build-images.sh" "$NTS_IMAGE"
[ -n "$(docker image ls -q "$NTS_PEER_IMAGE")" ] || "$HERE/build-peer-image.sh" "$NTS_PEER_IMAGE"

NTS_WORK="$(mktemp -d /tmp/nts-e2e.XXXXXX)"
export NTS_WORK
dc() { docker-compose --ansi never -p "$NTS_PROJECT" -f "$HERE/compose.yaml" "$@"; }
cleanup() {
    local rc=$?
    dc down -v --remove-orphans -t 3 >/dev/null 2>&1 || true
    docker rm -f "$NTS_PROJECT-privtest" >/dev/null 2>&1 || true
    [ -n "${PROM_PID:-}" ] && { kill "$PROM_PID" 2>/dev/null; wait "$PROM_PID" 2>/dev/null; }
    rm -rf "$NTS_WORK"
    exit $rc
}
trap cleanup EXIT INT TERM
dump_logs() {
    [ -n "${DUMPED:-}" ] && return; DUMPED=1
    for c in ke1 ke2 ts1 ts2 client1 client2 chrony; do
        echo "----- logs of $c (last 15 lines)" >&2
        docker logs --tail 15 "$NTS_PROJECT-$c" 2>&1 | sed 's/^/    /' >&2 || true
    done
}

# ---------------------------------------------------------------- PKI and configs
PKI="$NTS_WORK/pki"
mkdir -p "$PKI"
chmod 0755 "$NTS_WORK" "$PKI"
ca() { # NAME CN
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$PKI/$1-key.pem" -out "$PKI/$1.pem" -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() { # CA NAME EKU SAN
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$PKI/$2-key.pem" -out "$NTS_WORK/$2.csr" -subj "/CN=$2" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' "$3" "$4" > "$NTS_WORK/$2.ext"
    openssl x509 -req -in "$NTS_WORK/$2.csr" -CA "$PKI/$1.pem" -CAkey "$PKI/$1-key.pem" \
        -CAcreateserial -days 2 -out "$PKI/$2.pem" -extfile "$NTS_WORK/$2.ext" 2>/dev/null
}
ca ke-ca "nts engine test NTS-KE CA"
ca keysync-ca "nts engine test key-sync CA"
leaf ke-ca ke serverAuth "subjectAltName=DNS:ke1,DNS:ke2,DNS:ke"
leaf keysync-ca keysync serverAuth "subjectAltName=DNS:ke1,DNS:ke2"
leaf keysync-ca ts1 clientAuth "subjectAltName=DNS:ts1"
leaf keysync-ca ts2 clientAuth "subjectAltName=DNS:ts2"
openssl rand -hex 32 > "$PKI/cookie-root.key"
# The clients' "system roots": the image's bundle plus the test CA, through SSL_CERT_FILE.
cat /etc/ssl/certs/ca-certificates.crt "$PKI/ke-ca.pem" > "$PKI/bundle.pem"
rm -f "$PKI"/*-ca-key.pem
chmod 0644 "$PKI"/*
# The cookie root secret: 0600 (the daemons refuse a looser one), owned by the
# KE servers' user; a root-owned copy for the time server started as root.
chown 10001:10001 "$PKI/cookie-root.key"
chmod 0600 "$PKI/cookie-root.key"
cp "$PKI/cookie-root.key" "$PKI/cookie-root-priv.key"
chown 0:0 "$PKI/cookie-root-priv.key"
chmod 0600 "$PKI/cookie-root-priv.key"

cat > "$NTS_WORK/ke.toml" <<EOF
[server]
listen = ["0.0.0.0:4460"]
# Serve this long after SIGTERM, not ready (longer than the 2 s of endpoint lag step 7 plays).
drain_delay = $DRAIN.0
[tls]
certificate_chain = "/etc/nts/pki/ke.pem"
private_key = "/etc/nts/pki/ke-key.pem"
[cookie_keys]
root_secret_file = "/etc/nts/pki/cookie-root.key"
[key_sync]
listen = "0.0.0.0:4461"
client_ca = "/etc/nts/pki/keysync-ca.pem"
certificate_chain = "/etc/nts/pki/keysync.pem"
private_key = "/etc/nts/pki/keysync-key.pem"
report_interval = $REPORT.0
expiry = $EXPIRY.0
[metrics]
listen = "0.0.0.0:9460"
EOF
for t in ts1 ts2; do
    cat > "$NTS_WORK/$t.toml" <<EOF
# key_sync.advertise and server_id come from NTS_ADVERTISE / NTS_SERVER_ID.
[server]
listen = ["0.0.0.0:123"]
workers = 1
user = "nts"
drain_grace = $DRAIN.0
[clock]
# The test host's kernel may be unsynchronized; announce a local reference.
local_reference = true
stratum = 1
reference_id = "TEST"
[key_sync]
endpoints = ["ke1:4461", "ke2:4461"]
ca = "/etc/nts/pki/keysync-ca.pem"
certificate_chain = "/etc/nts/pki/$t.pem"
private_key = "/etc/nts/pki/$t-key.pem"
max_backoff = 2.0
[metrics]
listen = "0.0.0.0:9461"
EOF
done
cat > "$NTS_WORK/client.toml" <<EOF
[[source]]
type = "nts"
address = "ke1"
[[source]]
type = "nts"
address = "ke2"
[nts]
# No ca_files: the test CA is only in SSL_CERT_FILE, so this proves the client reads it.
system_roots = true
[clock]
mode = "observe"
minpoll = 0
maxpoll = 1
[status]
socket = "/run/nts-client/status.sock"
[metrics]
listen = "0.0.0.0:9462"
EOF
cat > "$NTS_WORK/chrony.conf" <<EOF
server ke1 iburst nts minpoll 0 maxpoll 1
server ke2 iburst nts minpoll 0 maxpoll 1
ntstrustedcerts /etc/nts-test/pki/ke-ca.pem
ntsdumpdir /var/lib/chrony
port 0
cmdport 0
bindcmdaddress /run/chrony/chronyd.sock
EOF
chmod 0644 "$NTS_WORK"/*.toml "$NTS_WORK/chrony.conf"
mkdir -p "$NTS_WORK/run-client1" "$NTS_WORK/run-client2"
chown 10001:10001 "$NTS_WORK/run-client1" "$NTS_WORK/run-client2"

# ---------------------------------------------------------------- helpers
IP_ke1="$NTS_NET.11"; IP_ke2="$NTS_NET.12"; IP_ts1="$NTS_NET.21"; IP_ts2="$NTS_NET.22"
metrics() { # HOST PORT
    docker exec "$NTS_PROJECT-probe" curl -sf --max-time 2 "http://$1:$2/metrics" 2>/dev/null || true
}
metric() { # HOST PORT 'name{labels}' -> value (0 when absent)
    metrics "$1" "$2" | awk -v m="$3" '$1 == m { v = $2 } END { print (v == "" ? 0 : v + 0) }'
}
http_code() { # HOST PORT PATH
    docker exec "$NTS_PROJECT-probe" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1:$2$3" 2>/dev/null || true
}
wait_for() { # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local t0=$SECONDS
    until "$@"; do
        [ $((SECONDS - t0)) -lt "$limit" ] || fail "timed out after ${limit}s waiting for: $what"
        sleep 0.5
    done
}
alive_on() { # KE N
    [ "$(metric "$1" 9460 'nts_ke_registered_time_servers{state="alive"}')" = "$2" ]
}
# The NTP server one key exchange hands out (via client1's nts-client ke).
handed_out() { # KE
    docker exec "$NTS_PROJECT-client1" nts-client ke --timeout 3 "$1" 2>/dev/null \
        | awk '$1 == "ntp" && $2 == "server" { sub(/:[0-9]+$/, "", $3); print $3 }'
}
# Handed-out servers over 4 exchanges with each replica, sorted and unique.
handed_out_set() {
    local k i
    for k in "$@"; do for i in 1 2 3 4; do handed_out "$k"; done; done | sort -u | tr '\n' ' '
}
status_json() { docker exec "$NTS_PROJECT-$1" nts-client status --json --socket /run/nts-client/status.sock; }
# Client N's authenticated sources with a fresh answer: "name ntp_address" lines.
client_auth_sources() { # CLIENT
    status_json "$1" 2>/dev/null | python3 2>/dev/null -c '
import json, sys
r = json.load(sys.stdin)
for s in r["sources"]:
    if s["authenticated"] and s["reach"] & 1 and s["offset"] is not None:
        print(s["name"], s["ntp_address"])'
}
chronyc() { docker exec -u _chrony "$NTS_PROJECT-chrony" chronyc -h /run/chrony/chronyd.sock -c -n "$@"; }
# chrony's sources whose last answer was authenticated, one address a line (text form of ntpdata:
# "Remote address  : IP (HEX)" ... "Authenticated   : Yes").
chrony_auth_remotes() {
    docker exec -u _chrony "$NTS_PROJECT-chrony" chronyc -h /run/chrony/chronyd.sock -n ntpdata 2>/dev/null \
        | awk -F' *: ' '/^Remote address/ { split($2, a, " "); addr = a[1] } /^Authenticated/ && $2 ~ /^Yes/ { print addr }' || true
}
responses_nts() { metric "$1" 9461 'nts_time_responses_total{kind="nts"}'; }

# ---------------------------------------------------------------- 1. privileges
log "privileges: the time server needs NET_BIND_SERVICE for UDP 123"
cat > "$NTS_WORK/ts-priv.toml" <<EOF
[server]
listen = ["0.0.0.0:123"]
workers = 1
user = "nts"
[keys]
root_secret_file = "/etc/nts/pki/cookie-root-priv.key"
EOF
chmod 0644 "$NTS_WORK/ts-priv.toml"
priv_run() { # extra docker args...; prints the container's output, returns its exit status
    timeout 20 docker run --rm --name "$NTS_PROJECT-privtest" --network none --read-only \
        --cap-drop ALL --sysctl net.ipv4.ip_unprivileged_port_start=1024 \
        -v "$NTS_WORK/ts-priv.toml:/etc/nts/ts.toml:ro" -v "$PKI:/etc/nts/pki:ro" \
        "$@" "$NTS_IMAGE" nts-time-server --config /etc/nts/ts.toml 2>&1
}
out="$(priv_run --user 0:0 --cap-add SETUID --cap-add SETGID)" && fail "time server bound UDP 123 as root without NET_BIND_SERVICE"
grep -qi "permission denied" <<<"$out" || fail "no permission error without NET_BIND_SERVICE: $out"
log "  root without NET_BIND_SERVICE: refused ($(grep -io 'cannot bind[^:]*' <<<"$out" | head -1 || true))"
out="$(priv_run --user 10001:10001 --cap-add NET_BIND_SERVICE)" && fail "non-root time server bound UDP 123"
grep -qi "permission denied" <<<"$out" || fail "no permission error as non-root: $out"
log "  uid 10001 with NET_BIND_SERVICE added: refused too (no ambient capabilities: start as root, drop to server.user)"

# ---------------------------------------------------------------- 2. start
log "starting 2 KE replicas and a probe on internal network $NET ($NTS_NET.0/24)"
dc up -d --no-color probe ke1 ke2 >/dev/null 2>&1 || { dc up -d probe ke1 ke2; fail "compose up"; }
[ "$(docker network inspect -f '{{.Internal}}' "$NET")" = "true" ] || fail "$NET is not internal"
for k in ke1 ke2; do wait_for 30 "$k /healthz" bash -c "[ \"\$(docker exec $NTS_PROJECT-probe curl -s -o /dev/null -w '%{http_code}' http://$k:9460/healthz)\" = 200 ]"; done
# With key sync and no explicit fallback, a replica is not ready before a time server registered.
for k in ke1 ke2; do [ "$(docker exec $NTS_PROJECT-probe curl -s -o /dev/null -w '%{http_code}' http://$k:9460/readyz)" = 503 ] || fail "$k ready with no time server"; done
log "  KE replicas up, not ready until a time server registers"
log "starting 2 time servers"
dc up -d ts1 ts2 >/dev/null 2>&1 || fail "compose up ts"
for t in ts1 ts2; do wait_for 30 "$t /readyz (keys held)" bash -c "[ \"\$(docker exec $NTS_PROJECT-probe curl -s -o /dev/null -w '%{http_code}' http://$t:9461/readyz)\" = 200 ]"; done
wait_for 20 "both time servers alive on ke1" alive_on ke1 2
wait_for 20 "both time servers alive on ke2" alive_on ke2 2
for k in ke1 ke2; do wait_for 30 "$k /readyz" bash -c "[ \"\$(docker exec $NTS_PROJECT-probe curl -s -o /dev/null -w '%{http_code}' http://$k:9460/readyz)\" = 200 ]"; done
log "starting 2 nts-client agents (observe) and chrony"
dc up -d client1 client2 chrony >/dev/null 2>&1 || fail "compose up clients"

# Privileges of what runs: uid/gid and capabilities from /proc, no SYS_TIME anywhere.
for c in ke1 ke2 ts1 ts2 client1 client2; do
    pid="$(docker inspect -f '{{.State.Pid}}' "$NTS_PROJECT-$c")"
    uid="$(awk '/^Uid:/ { print $2 "," $3 }' "/proc/$pid/status")"
    capeff="$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")"
    capprm="$(awk '/^CapPrm:/ { print $2 }' "/proc/$pid/status")"
    [ "$uid" = "10001,10001" ] || fail "$c runs as uid $uid, not 10001"
    [ "$capeff" = "0000000000000000" ] && [ "$capprm" = "0000000000000000" ] || fail "$c holds capabilities (eff $capeff, prm $capprm)"
done
for c in ke1 ke2 ts1 ts2 client1 client2 chrony probe; do
    pid="$(docker inspect -f '{{.State.Pid}}' "$NTS_PROJECT-$c")"
    bnd="$(awk '/^CapBnd:/ { print $2 }' "/proc/$pid/status")"
    (( (16#$bnd >> 25) & 1 )) && fail "$c may gain SYS_TIME (CapBnd $bnd)"
    [ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$NTS_PROJECT-$c")" = true ] || fail "$c root filesystem is writable"
done
grep -q "dropped privileges" <(docker logs "$NTS_PROJECT-ts1" 2>&1) || fail "ts1 did not log dropping privileges"
log "  every daemon runs as uid 10001 with no capability (the time servers dropped root after binding 123); no container can get SYS_TIME; all root filesystems read-only"

# The client's system roots: without the test CA in them, the KE certificate is refused.
out="$(docker run --rm --network "$NET" --read-only --cap-drop ALL "$NTS_IMAGE" \
        nts-client ke --timeout 3 "$IP_ke1" 2>&1)" && fail "nts-client trusted the test CA without being told: $out"
grep -qi "certificate\|issuer" <<<"$out" || fail "unexpected error without the test CA: $out"
[ "$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$NTS_PROJECT-client2" | grep '^SSL_CERT_FILE=')" \
    = "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" ] || fail "client2 does not use the image's SSL_CERT_FILE"
log "  system roots: the image's bundle alone refuses the test KE certificate; client1 trusts it through SSL_CERT_FILE, client2 through the image's bundle path"

# ---------------------------------------------------------------- 3. authenticated time
both="$IP_ts1 $IP_ts2 "
got="$(handed_out_set ke1 ke2)"
[ "$got" = "$both" ] || fail "Server Negotiation handed out [$got], expected [$both]"
log "Server Negotiation hands out both time servers: $got"
clients_ok() { # every client has an authenticated fresh answer; chrony has one too
    local c
    for c in client1 client2; do [ -n "$(client_auth_sources "$c")" ] || return 1; done
    [ -n "$(chrony_auth_remotes)" ]
}
wait_for 60 "chrony and both nts-client agents with authenticated time" clients_ok
auth="$(chronyc authdata)"
awk -F, '$2 == "NTS" && $9 > 0 { ok = 1 } END { exit !ok }' <<<"$auth" || fail "chrony holds no NTS cookies: $auth"
log "  chrony: $(chrony_auth_remotes | tr '\n' ' ')authenticated; authdata: $(tr '\n' ' ' <<<"$auth")"
for c in client1 client2; do log "  $c: $(client_auth_sources "$c" | tr '\n' ';')"; done
# Every authenticated source anyone uses is one of the two time servers.
for c in client1 client2; do
    client_auth_sources "$c" | while read -r _ a; do case "$a" in "$IP_ts1":*|"$IP_ts2":*|"$IP_ts1"|"$IP_ts2") ;; *) fail "$c measures against $a";; esac; done
done

# ---------------------------------------------------------------- 3b. monitoring
DEPS="$("$HERE/install-deps.sh")"
PROMETHEUS="$(sed -n 's/^PROMETHEUS=//p' <<<"$DEPS")"; HELM="$(sed -n 's/^HELM=//p' <<<"$DEPS")"
PROM_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PROM="http://127.0.0.1:$PROM_PORT"
cat > "$NTS_WORK/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 900ms}
scrape_configs:
  - job_name: ke-server
    static_configs: [{targets: ["$IP_ke1:9460", "$IP_ke2:9460"]}]
  - job_name: time-server
    static_configs: [{targets: ["$IP_ts1:9461", "$IP_ts2:9461"]}]
  - job_name: client
    static_configs: [{targets: ["$NTS_NET.31:9462", "$NTS_NET.32:9462"]}]
EOF
# On the host, listening on loopback only; it reaches the containers over the internal network's bridge.
"$PROMETHEUS" --config.file="$NTS_WORK/prometheus.yml" --storage.tsdb.path="$NTS_WORK/prometheus" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$NTS_WORK/prometheus.log" 2>&1 &
PROM_PID=$!
prom_targets_up() {
    curl -sf "$PROM/api/v1/query?query=count(up%3D%3D1)" 2>/dev/null | grep -q '"value":\[[0-9.]*,"6"\]'
}
wait_for 30 "Prometheus scraping all 6 daemons" prom_targets_up
sleep 5   # two samples in every rate window the dashboard uses
python3 "$ROOT/helm/tests/check_live_queries.py" "$PROM" "$HELM" "$ROOT/helm/nts" healthy \
    --absent-ok nts_ke_acme_consecutive_failures \
    --expect-firing "NtsCertificateExpiringSoon=the test PKI's certificates live 2 days" \
    | sed 's/^/  /' || fail "monitoring expressions against the running stack (Prometheus log: $(tail -3 "$NTS_WORK/prometheus.log"))"
log "  Prometheus: every chart dashboard query has data, every alert expression is quiet on the healthy stack except the certificate-expiry alert, which sees the test PKI's 2-day certificates (ACME metrics absent: no ACME here)"

# ---------------------------------------------------------------- 4. KE replicas stop
log "stopping ke1: nothing is lost"
docker stop -t 3 "$NTS_PROJECT-ke1" >/dev/null
got="$(handed_out_set ke2)"
[ "$got" = "$both" ] || fail "with ke1 stopped, ke2 handed out [$got]"
for t in ts1 ts2; do [ "$(http_code "$t" 9461 /readyz)" = 200 ] || fail "$t lost its keys with ke1 stopped"; done
sleep 4
wait_for 20 "authenticated time with ke1 stopped" clients_ok
log "  ke2 alone hands out both time servers; time servers ready; chrony and clients authenticated"

log "stopping ke2 too: time servers keep serving with the keys they hold"
docker stop -t 3 "$NTS_PROJECT-ke2" >/dev/null
before1="$(responses_nts ts1)"; before2="$(responses_nts ts2)"
sleep 8
for t in ts1 ts2; do [ "$(http_code "$t" 9461 /readyz)" = 200 ] || fail "$t not ready without any KE replica"; done
after1="$(responses_nts ts1)"; after2="$(responses_nts ts2)"
served=$(( ${after1%.*} + ${after2%.*} - ${before1%.*} - ${before2%.*} ))
[ "$served" -gt 4 ] || fail "time servers answered only $served NTS requests in 8 s without KE"
clients_ok || fail "clients lost authenticated time without KE replicas"
up1="$(metric ts1 9461 'nts_time_key_sync_link_up{endpoint="ke1:4461"}')"
log "  no KE running: $served NTS responses in 8 s, both time servers ready, key-sync link to ke1 up=$up1, clients still authenticated"
[ "$up1" = 0 ] || fail "ts1 reports its link to a stopped KE as up"
python3 "$ROOT/helm/tests/check_live_queries.py" "$PROM" "$HELM" "$ROOT/helm/nts" firing NtsKeySyncLinkDown 4 \
    | sed 's/^/  /' || fail "the key-sync alert's expression does not see 4 links down"
docker start "$NTS_PROJECT-ke1" "$NTS_PROJECT-ke2" >/dev/null
wait_for 30 "both time servers registered again on ke1" alive_on ke1 2
wait_for 30 "both time servers registered again on ke2" alive_on ke2 2
log "  KE replicas back, both time servers registered again"

# ---------------------------------------------------------------- 5. disconnect a time server
log "disconnecting ts1 from the network"
t0=$SECONDS
docker network disconnect "$NET" "$NTS_PROJECT-ts1"
dead_on_both() { alive_on ke1 1 && alive_on ke2 1; }
wait_for $((EXPIRY + 2 * REPORT + 4)) "both KE replicas dropping ts1 (expiry ${EXPIRY}s)" dead_on_both
dropped=$((SECONDS - t0))
got="$(handed_out_set ke1 ke2)"
[ "$got" = "$IP_ts2 " ] || fail "with ts1 disconnected, KE handed out [$got]"
log "  both replicas stopped handing out ts1 after ~${dropped}s (expiry ${EXPIRY}s); 8 exchanges all got $got"
only_ts2() { # every client and chrony authenticated from ts2, none from ts1
    local c
    for c in client1 client2; do
        client_auth_sources "$c" | grep -q "$IP_ts2" || return 1
        client_auth_sources "$c" | grep -q "$IP_ts1" && return 1
    done
    chrony_auth_remotes | grep -qx "$IP_ts2" || return 1
    ! chrony_auth_remotes | grep -qx "$IP_ts1"
}
wait_for 90 "clients keeping authenticated time from ts2 alone" only_ts2
log "  chrony and both clients keep authenticated time from ts2 ($((SECONDS - t0))s after the disconnect)"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
ts1_handed_out() { handed_out ke1 | grep -qx "$IP_ts1" || handed_out ke2 | grep -qx "$IP_ts1"; }
log "reconnecting ts1"
docker network connect --ip "$IP_ts1" "$NET" "$NTS_PROJECT-ts1"
t0="$(now_ms)"
wait_for 60 "ts1 handed out again" ts1_handed_out
REJOIN_MS=$(( $(now_ms) - t0 ))
alive_on ke1 2 || wait_for 30 "ts1 alive on ke1" alive_on ke1 2
alive_on ke2 2 || wait_for 30 "ts1 alive on ke2" alive_on ke2 2
log "  ts1 handed out again ${REJOIN_MS} ms after reconnecting (key-sync max_backoff 2 s), alive on both replicas"

log "replacing ts1 by a new container (same node address, same server_id)"
t0="$(now_ms)"
dc up -d --force-recreate --no-deps ts1 >/dev/null 2>&1 || fail "recreating ts1"
# The old registration (same id and address) may still be within expiry: wait for the new
# process itself to hold keys and links to both replicas, then for a replica to hand it out.
new_ts1_registered() {
    [ "$(http_code ts1 9461 /readyz)" = 200 ] \
        && [ "$(metric ts1 9461 'nts_time_key_sync_link_up{endpoint="ke1:4461"}')" = 1 ] \
        && [ "$(metric ts1 9461 'nts_time_key_sync_link_up{endpoint="ke2:4461"}')" = 1 ] \
        && ts1_handed_out
}
wait_for 60 "the new ts1 registered and handed out" new_ts1_registered
REPLACE_MS=$(( $(now_ms) - t0 ))
alive_on ke1 2 && alive_on ke2 2 || fail "the new ts1 is not alive on both replicas"
log "  the new ts1 handed out ${REPLACE_MS} ms after 'docker-compose up --force-recreate' began (old container stopped, new one started, keys held, links to both replicas up, handed out)"

# ---------------------------------------------------------------- 6. restart everything
log "restarting every container; chrony keeps its cookies (ntsdumpdir)"
ke_before=$(( $(metric ke1 9460 nts_ke_key_exchanges_total) + $(metric ke2 9460 nts_ke_key_exchanges_total) ))
# authdata CSV: name, mode, key id, type, key length, last NTS-KE, attempts, NAK, cookies, cookie length.
# chrony refuses two sources with the same negotiated address, so a source may hold none.
auth_before="$(chronyc authdata)"
with_cookies="$(awk -F, '$2 == "NTS" && $9 > 0' <<<"$auth_before" | wc -l)"
without_cookies="$(awk -F, '$2 == "NTS" && $9 == 0' <<<"$auth_before" | wc -l)"
[ "$with_cookies" -ge 1 ] || fail "chrony holds no cookies before the restart: $auth_before"
dc stop -t 5 client1 client2 chrony >/dev/null 2>&1
docker run --rm -v "${NTS_PROJECT}_chrony-state:/s:ro" --entrypoint /bin/ls "$NTS_PEER_IMAGE" /s | grep -q '\.nts$' \
    || fail "chrony saved no cookies on exit"
dc restart -t 5 probe ke1 ke2 ts1 ts2 >/dev/null 2>&1
for k in ke1 ke2; do wait_for 30 "$k ready after restart" bash -c "[ \"\$(docker exec $NTS_PROJECT-probe curl -s -o /dev/null -w '%{http_code}' http://$k:9460/readyz)\" = 200 ]"; done
for t in ts1 ts2; do wait_for 30 "$t ready after restart" bash -c "[ \"\$(docker exec $NTS_PROJECT-probe curl -s -o /dev/null -w '%{http_code}' http://$t:9461/readyz)\" = 200 ]"; done
[ "$(metric ke1 9460 nts_ke_key_exchanges_total)" = 0 ] && [ "$(metric ke2 9460 nts_ke_key_exchanges_total)" = 0 ] || fail "KE counters did not restart"
dc start chrony >/dev/null 2>&1
restarted=$SECONDS
chrony_authenticated() { [ -n "$(chrony_auth_remotes)" ]; }
wait_for 30 "chrony authenticated with its old cookies" chrony_authenticated
sleep 3
ke_chrony=$(( $(metric ke1 9460 nts_ke_key_exchanges_total) + $(metric ke2 9460 nts_ke_key_exchanges_total) ))
# Only a source that held no cookies may do a key exchange; the others use the saved ones.
[ "$ke_chrony" -le "$without_cookies" ] || fail "chrony made $ke_chrony key exchanges after the restart; only $without_cookies of its sources held no cookies"
auth_after="$(chronyc authdata)"
# A source that kept its cookies reports its last key exchange from before the restart.
since_start=$((SECONDS - restarted))
awk -F, -v s="$since_start" '$2 == "NTS" && $9 > 0 && $6 > s + 1 { ok = 1 } END { exit !ok }' <<<"$auth_after" \
    || fail "no chrony source shows a key exchange older than its restart (${since_start}s): $auth_after"
nts_after=$(( $(responses_nts ts1 | cut -d. -f1) + $(responses_nts ts2 | cut -d. -f1) ))
[ "$nts_after" -gt 0 ] || fail "no NTS response after the restart"
log "  chrony: authenticated time $((SECONDS - restarted))s after start; $with_cookies source(s) with saved cookies, $ke_chrony key exchange(s) after the restart (allowed: $without_cookies source(s) that held none; $ke_before exchanges before), $nts_after NTS responses"
log "  chrony authdata before: $(tr '\n' ' ' <<<"$auth_before")"
log "  chrony authdata after:  $(tr '\n' ' ' <<<"$auth_after")"
dc start client1 client2 >/dev/null 2>&1
wait_for 60 "nts-client agents authenticated after the restart" bash -c "for c in client1 client2; do docker exec $NTS_PROJECT-\$c nts-client status --json --socket /run/nts-client/status.sock | grep -q '\"authenticated\": *true' || exit 1; done"
clients_ok_after() { local c; for c in client1 client2; do [ -n "$(client_auth_sources "$c")" ] || return 1; done; }
wait_for 30 "both clients authenticated after the restart" clients_ok_after
log "  both nts-client agents authenticated again after the restart"

# ---------------------------------------------------------------- 7. graceful drain
not_running() { [ "$(docker inspect -f '{{.State.Running}}' "$NTS_PROJECT-$1")" = false ]; }
exit_code() { docker inspect -f '{{.State.ExitCode}}' "$NTS_PROJECT-$1"; }
ke_not_ready() { [ "$(http_code "$1" 9460 /readyz)" = 503 ]; }
log "KE rolling restart, each replica sent SIGTERM while clients keep coming for 2 s (endpoint lag)"
ke_tried=0; ke_failed=0
for k in ke1 ke2; do
    docker kill -s TERM "$NTS_PROJECT-$k" >/dev/null
    t0="$(now_ms)"
    ke_not_ready "$k" || fail "$k still ready after SIGTERM"
    while [ $(( $(now_ms) - t0 )) -lt 2000 ]; do
        ke_tried=$((ke_tried + 1))
        [ -n "$(handed_out "$k")" ] || ke_failed=$((ke_failed + 1))
    done
    wait_for $((DRAIN + 12)) "$k to exit after its drain" not_running "$k"
    [ "$(exit_code "$k")" = 0 ] || fail "$k exited with $(exit_code "$k") after SIGTERM"
    docker start "$NTS_PROJECT-$k" >/dev/null
    wait_for 30 "both time servers registered on the restarted $k" alive_on "$k" 2
done
[ "$ke_failed" = 0 ] || fail "$ke_failed of $ke_tried key exchanges failed during the KE rolling restart"
log "  $ke_tried key exchanges sent to replicas in their drain: $ke_failed failed; each exited 0 after ${DRAIN}s"

log "draining ts1 (SIGTERM): no longer handed out within 1 s, answering for its grace period"
docker kill -s TERM "$NTS_PROJECT-ts1" >/dev/null
t0="$(now_ms)"
until alive_on ke1 1 && alive_on ke2 1; do
    [ $(( $(now_ms) - t0 )) -lt 5000 ] || fail "ts1 still alive on a KE replica 5 s after SIGTERM"
    sleep 0.05
done
LEAVE_MS=$(( $(now_ms) - t0 ))
[ "$LEAVE_MS" -le 1000 ] || fail "ts1 was handed out for ${LEAVE_MS} ms after SIGTERM (at most 1000)"
got="$(handed_out_set ke1 ke2)"
[ "$got" = "$IP_ts2 " ] || fail "a drained ts1 is still handed out: [$got]"
not_running ts1 && fail "ts1 left before its grace period"
[ "$(http_code ts1 9461 /readyz)" = 503 ] || fail "a draining ts1 is still ready"
wait_for $((DRAIN + 10)) "ts1 to exit after its grace period" not_running ts1
[ "$(exit_code ts1)" = 0 ] || fail "ts1 exited with $(exit_code ts1) after SIGTERM"
log "  ts1 no longer handed out ${LEAVE_MS} ms after SIGTERM (both replicas; 8 exchanges got $got); exited 0 after its ${DRAIN}s grace"
docker start "$NTS_PROJECT-ts1" >/dev/null
wait_for 30 "ts1 alive on ke1" alive_on ke1 2
wait_for 30 "ts1 alive on ke2" alive_on ke2 2

echo "RESULT dropped_after_disconnect_s=$dropped rejoin_after_reconnect_ms=$REJOIN_MS handed_out_after_replace_ms=$REPLACE_MS ke_drain_failed=$ke_failed/$ke_tried drained_ts_left_ms=$LEAVE_MS"
log "engine test passed in $((SECONDS - START))s"
