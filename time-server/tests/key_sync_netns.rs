//! Key sync across a link that breaks and heals (ARCHITECTURE.md rule 4), with
//! real processes in two network namespaces joined by a veth pair:
//! `nts-ke-server` in A (NTS-KE and key sync on A's veth address), and
//! `nts-time-server` in B (NTP on B's veth address) syncing keys from A over
//! mutual TLS. The test process reaches into the namespaces with
//! `testkit::netns::Netns::enter` (a thread that joined the namespace): for
//! metrics, NTS-KE and NTS-protected NTP. Nothing is configured outside the two
//! namespaces, which are deleted at the end (also when the test fails).
//!
//! With the link cut, the time server must notice within a few seconds (HTTP/2
//! keepalives), keep its keys and its readiness, and keep answering NTS requests
//! that carry cookies issued before the cut; once healed, it must reconnect and
//! re-register by itself, and `nts-client query` must work again through A.

use nts_client::ke::{self, KeOutcome};
use nts_ke_server::dev_pki::DevPki;
use nts_proto::aead::AeadAlgorithm;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::netns::{self, Netns, VethLink};
use testkit::nts_probe::{nts_probe, NtsCredentials, Probe};
use testkit::process::ChildGuard;
use testkit::stack::{self, cargo_bin, metric_value};

// Each namespace has its own port space: fixed ports cannot clash with anything.
const KE_PORT: u16 = 4460;
const KEY_SYNC_PORT: u16 = 4461;
const NTP_PORT: u16 = 4123;
const METRICS_PORT: u16 = 9100;
/// The ke-server's fallback for Server Negotiation: nothing listens there, so a
/// working `nts-client query` proves the time server is registered.
const FALLBACK_NTP_PORT: u16 = 9;
const ROTATION_PERIOD: u64 = 86_400;

/// Everything the test made. Fields drop in declaration order: the daemons are
/// stopped (SIGTERM, then SIGKILL, by PID) before their namespaces are deleted,
/// and the namespaces before the directory holding configurations and logs.
struct Lab {
    daemons: Vec<ChildGuard>,
    link: VethLink,
    dir: tempfile::TempDir,
}

fn a_ks_endpoint(link: &VethLink) -> String {
    format!("{}:{KEY_SYNC_PORT}", link.a_addr)
}

/// Start `bin --config DIR/NAME.toml` inside `ns` and wait for `ready_log`.
fn launch(lab: &mut Lab, in_a: bool, name: &str, bin: &Path, config: &str, ready_log: &str) {
    let path = lab.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let ns = if in_a { &lab.link.a } else { &lab.link.b };
    let mut cmd = ns.command(bin);
    cmd.arg("--config").arg(&path);
    let guard = ChildGuard::spawn_combined(name, cmd, lab.dir.path()).unwrap();
    let waited = guard.wait_for_log_contains(ready_log, Duration::from_secs(20));
    let pid = guard.pid();
    lab.daemons.push(guard);
    waited.unwrap_or_else(|e| panic!("{name} did not start: {e}"));
    // `ip netns exec` execs the daemon: the PID we hold (and will signal) is the
    // daemon's own, and it lives in the namespace.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        bin.canonicalize().unwrap(),
        "pid {pid} is the daemon itself, not `ip`"
    );
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ours, theirs, "{name} runs in its own network namespace");
}

fn ke_config(lab: &Lab, pki: &DevPki, tls: &testkit::certs::TestPki, root: &Path) -> String {
    let a = lab.link.a_addr;
    format!(
        r#"[server]
listen = ["{a}:{KE_PORT}"]
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = "127.0.0.1"
port = {FALLBACK_NTP_PORT}
[cookie_keys]
root_secret_file = {root:?}
rotation_period = {ROTATION_PERIOD}
past_epochs = 1
[key_sync]
listen = "{a}:{KEY_SYNC_PORT}"
client_ca = {ca:?}
certificate_chain = {ks_chain:?}
private_key = {ks_key:?}
report_interval = 0.5
expiry = 2.0
[metrics]
listen = "127.0.0.1:{METRICS_PORT}"
[log]
level = "debug"
"#,
        chain = tls.chain_path(),
        key = tls.key_path(),
        ca = pki.ca_cert,
        ks_chain = pki.keysync_cert,
        ks_key = pki.keysync_key,
    )
}

fn ts_config(lab: &Lab, pki: &DevPki) -> String {
    let b = lab.link.b_addr;
    format!(
        r#"[server]
listen = ["{b}:{NTP_PORT}"]
workers = 1
[rate_limit]
enabled = false
[clock]
local_reference = true
stratum = 1
reference_id = "LOCL"
[key_sync]
endpoints = ["{ep}"]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
# The development key-sync certificate names localhost, 127.0.0.1 and ::1.
server_name = "localhost"
server_id = "time-server:netns"
max_backoff = 1.0
[metrics]
listen = "127.0.0.1:{METRICS_PORT}"
[log]
level = "debug"
"#,
        ep = a_ks_endpoint(&lab.link),
        ca = pki.ca_cert,
        cert = pki.time_server_cert,
        key = pki.time_server_key,
    )
}

/// GET `path` from the daemon's metrics endpoint on the namespace's loopback.
fn http(ns: &Netns, path: &str) -> Result<(u16, String), String> {
    ns.enter(|| stack::http_get(SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)), path))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn metrics(ns: &Netns) -> String {
    http(ns, "/metrics").map_or_else(|e| panic!("metrics in {}: {e}", ns.name()), |(_, b)| b)
}

fn ready(ns: &Netns) -> bool {
    matches!(http(ns, "/readyz"), Ok((200, _)))
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let ok = testkit::wait_until(timeout, Duration::from_millis(100), || f().then_some(()));
    assert!(
        ok.is_some(),
        "timed out after {timeout:?} waiting for {what}"
    );
    start.elapsed()
}

/// Run an async block on a current-thread runtime inside `ns`.
fn in_ns<T: Send>(ns: &Netns, fut: impl std::future::Future<Output = T> + Send) -> T {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    })
    .unwrap()
}

/// NTS-KE with A from inside B.
fn key_exchange(lab: &Lab, ca: &Path, timeout: Duration) -> Result<KeOutcome, String> {
    let host = lab.link.a_addr.to_string();
    let roots = ke::root_store(&[ca], false).unwrap();
    in_ns(&lab.link.b, async {
        ke::key_exchange(
            &host,
            KE_PORT,
            ke::tls_config(roots),
            &[AeadAlgorithm::AesSivCmac256],
            timeout,
        )
        .await
        .map_err(|e| e.to_string())
    })
}

/// One NTS-protected NTP exchange with the time server, from inside B.
fn nts_query(lab: &Lab, ko: &KeOutcome, cookie: &[u8]) -> Result<Probe, String> {
    let server = SocketAddr::from((lab.link.b_addr, NTP_PORT));
    in_ns(&lab.link.b, async {
        nts_probe(
            server,
            NtsCredentials {
                cookie,
                c2s: &ko.c2s,
                s2c: &ko.s2c,
                placeholders: 0,
            },
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| e.to_string())
    })
}

/// `nts-client query` run inside B against A's NTS-KE service.
fn client_query(lab: &Lab, ca: &Path) -> Result<String, String> {
    let ca = ca.to_str().unwrap();
    let server = format!("{}:{KE_PORT}", lab.link.a_addr);
    lab.link
        .b
        .run(
            cargo_bin("nts-client", "nts-client"),
            &[
                "query",
                "--ca",
                ca,
                "--no-system-roots",
                "--brief",
                "--timeout",
                "3",
                &server,
            ],
            Duration::from_secs(15),
        )
        .map_err(|e| e.to_string())
}

fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / ROTATION_PERIOD
}

fn dump(lab: &Lab) -> String {
    lab.daemons.iter().map(|d| d.logs()).collect()
}

#[test]
fn cut_and_healed_link_between_time_server_and_ke_server() {
    if let Err(why) = netns::available() {
        if testkit::peers::peers_required() {
            panic!("network namespaces are required (NTS_REQUIRE_PEERS=1): {why}");
        }
        println!("skipped: {why}");
        return;
    }
    // Built (when stale) before anything exists that would have to wait.
    let ke_bin = cargo_bin("nts-ke-server", "nts-ke-server");
    let ts_bin = cargo_bin("nts-time-server", "nts-time-server");
    cargo_bin("nts-client", "nts-client");
    let started = Instant::now();
    let pid = std::process::id();
    let prefix = format!("ntsks-{pid}");
    // The addresses exist only inside the test's own namespaces; varying the
    // subnet by PID only makes captures of parallel runs easier to tell apart.
    let subnet = (pid % 250) as u8 + 1;
    let link = VethLink::create(&prefix, subnet).unwrap();
    let (a_name, b_name) = (link.a.name().to_string(), link.b.name().to_string());
    let mut lab = Lab {
        daemons: Vec::new(),
        link,
        dir: tempfile::tempdir().unwrap(),
    };
    let dir = lab.dir.path().to_path_buf();
    let (pki, _) = DevPki::ensure(&dir.join("pki")).unwrap();
    // The NTS-KE certificate names A's veth address, which is what clients in B dial.
    let a_ip = lab.link.a_addr.to_string();
    let tls = testkit::certs::TestPki::generate_in(&dir.join("ke-tls"), &[&a_ip]).unwrap();
    let ca: PathBuf = tls.ca_path().to_path_buf();
    let root = dir.join("root.key");
    stack::write_root_secret(&root).unwrap();

    eprintln!("namespaces and PKI ready after {:?}", started.elapsed());
    let scenario = Instant::now();
    let config = ke_config(&lab, &pki, &tls, &root);
    launch(
        &mut lab,
        true,
        "ke-server",
        &ke_bin,
        &config,
        "NTS-KE listening",
    );
    let config = ts_config(&lab, &pki);
    launch(
        &mut lab,
        false,
        "time-server",
        &ts_bin,
        &config,
        "NTP listening",
    );

    let link_up = format!(
        "nts_time_key_sync_link_up{{endpoint=\"{}\"}}",
        a_ks_endpoint(&lab.link)
    );
    let alive = "nts_ke_registered_time_servers{state=\"alive\"}";
    let dead = "nts_ke_registered_time_servers{state=\"dead\"}";
    let reconnects = "nts_time_key_sync_reconnects_total";
    let watchers = "nts_ke_key_watchers";
    let cookie_keys = "nts_time_cookie_keys";
    let nts_responses = "nts_time_responses_total{kind=\"nts\"}";
    let (a, b) = (&lab.link.a, &lab.link.b);

    // Linked: B holds keys from A, and A has B registered.
    let took = wait_for(Duration::from_secs(15), "keys and link up in B", || {
        let m = metrics(b);
        ready(b) && metric_value(&m, &link_up) == 1.0 && metric_value(&m, cookie_keys) > 0.0
    });
    eprintln!("time server holds keys {took:?} after start");
    wait_for(Duration::from_secs(10), "registration in A", || {
        metric_value(&metrics(a), alive) == 1.0
    });

    // End to end through the link: the CLI client in B, and our own KE whose
    // cookies are kept for the outage.
    let out = client_query(&lab, &ca).unwrap_or_else(|e| panic!("{e}\n{}", dump(&lab)));
    assert!(out.contains("authenticated (NTS"), "{out}");
    assert!(
        out.starts_with(&format!("{}:{NTP_PORT}", lab.link.b_addr)),
        "sent to the registered time server: {out}"
    );
    let ko = key_exchange(&lab, &ca, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("KE before the cut: {e}\n{}", dump(&lab)));
    assert_eq!(
        (ko.ntp_server.as_str(), ko.ntp_port),
        (lab.link.b_addr.to_string().as_str(), NTP_PORT)
    );
    assert!(ko.cookies.len() >= 4);
    assert!(
        nts_query(&lab, &ko, &ko.cookies[0])
            .unwrap()
            .sample
            .authenticated
    );
    let before = metrics(b);
    let keys_before = metric_value(&before, cookie_keys);
    let reconnects_before = metric_value(&before, reconnects);
    let epoch_before = epoch_now();

    // Cut.
    lab.link.cut().unwrap();
    let cut_at = Instant::now();
    let down = wait_for(Duration::from_secs(10), "link down seen in B", || {
        metric_value(&metrics(b), &link_up) == 0.0
    });
    eprintln!("link down reported {down:?} after the cut");
    wait_for(Duration::from_secs(5), "registration expired in A", || {
        let m = metrics(a);
        metric_value(&m, alive) == 0.0 && metric_value(&m, dead) == 1.0
    });
    // The link really is cut: NTS-KE through it fails.
    let ke_cut = key_exchange(&lab, &ca, Duration::from_secs(2));
    assert!(ke_cut.is_err(), "KE across a cut link: {ke_cut:?}");
    // Keys and readiness kept; NTS served with cookies from before the cut.
    let during = metrics(b);
    let keys_during = metric_value(&during, cookie_keys);
    if epoch_now() == epoch_before {
        assert_eq!(keys_during, keys_before, "keys kept while cut off");
    } else {
        // An epoch ended meanwhile: its oldest key may have been dropped.
        assert!(keys_during >= keys_before - 1.0 && keys_during > 0.0);
    }
    assert!(ready(b), "still ready while cut off");
    assert!(
        metric_value(&during, "nts_time_key_set_age_seconds") >= 3.0,
        "the key set ages while cut off"
    );
    let served_before = metric_value(&during, nts_responses);
    for cookie in &ko.cookies[1..3] {
        let s = nts_query(&lab, &ko, cookie)
            .unwrap_or_else(|e| panic!("NTS while cut off: {e}\n{}", dump(&lab)));
        assert!(s.sample.authenticated, "authenticated while cut off");
        assert_eq!(s.cookies.len(), 1, "a fresh cookie in the answer");
    }
    assert_eq!(
        metric_value(&metrics(b), nts_responses),
        served_before + 2.0
    );
    assert_eq!(metric_value(&metrics(b), &link_up), 0.0, "still down");
    eprintln!(
        "link cut for {:?}; A still counts {} key watcher(s)",
        cut_at.elapsed(),
        metric_value(&metrics(a), watchers)
    );

    // Heal.
    lab.link.heal().unwrap();
    let back = wait_for(Duration::from_secs(10), "link up again in B", || {
        metric_value(&metrics(b), &link_up) == 1.0
    });
    eprintln!("link up again {back:?} after healing");
    let after = metrics(b);
    assert!(
        metric_value(&after, reconnects) > reconnects_before,
        "reconnects counted: {} -> {}",
        reconnects_before,
        metric_value(&after, reconnects)
    );
    assert!(ready(b));
    wait_for(
        Duration::from_secs(5),
        "registration alive again in A",
        || metric_value(&metrics(a), alive) == 1.0,
    );
    let one = wait_for(Duration::from_secs(15), "one key watcher in A", || {
        metric_value(&metrics(a), watchers) == 1.0
    });
    eprintln!("A back to one key watcher {one:?} later");
    let out = client_query(&lab, &ca).unwrap_or_else(|e| panic!("{e}\n{}", dump(&lab)));
    assert!(out.contains("authenticated (NTS"), "after healing: {out}");
    // A cookie from before the cut is still good.
    assert!(
        nts_query(&lab, &ko, &ko.cookies[3])
            .unwrap()
            .sample
            .authenticated
    );

    // Teardown: daemons first, then the namespaces; nothing is left behind.
    let pids: Vec<u32> = lab.daemons.iter().map(|d| d.pid()).collect();
    drop(lab);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "daemon {pid} is gone"
        );
    }
    for name in [&a_name, &b_name] {
        assert!(!netns::exists(name).unwrap(), "namespace {name} deleted");
    }
    eprintln!(
        "scenario {:?}, {:?} in all (teardown included)",
        scenario.elapsed(),
        started.elapsed()
    );
}
