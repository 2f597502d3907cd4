//! Health that means something, end to end: a time server whose clock is made
//! unsynchronized (through the clock-state test hook, never the real clock)
//! reports itself unhealthy over key sync and on /readyz, the ke-server stops
//! sending clients to it and does again once it recovers, and chrony follows
//! to the other server. And two ke-server replicas with different root
//! secrets: the time server refuses the conflicting key set, says so once,
//! counts it, and keeps serving with the consistent keys.

use nts_client::ke::{self, KeOutcome};
use nts_ke_server::dev_pki::DevPki;
use nts_proto::aead::AeadAlgorithm;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testkit::nts_probe::{nts_probe, NtsCredentials, ProbeError};
use testkit::ports::free_port;
use testkit::process::ChildGuard;
use testkit::stack::{self, cargo_bin, Daemon};

const CLOCK_HOOK: &str = "NTS_TIME_SERVER_TEST_CLOCK_STATE_FILE";

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let ok = testkit::wait_until(timeout, Duration::from_millis(50), || f().then_some(()));
    assert!(ok.is_some(), "timed out waiting for {what}");
}

fn setup(dir: &Path) -> DevPki {
    let (pki, _) = DevPki::ensure(&dir.join("pki")).unwrap();
    pki
}

struct Ke {
    d: Daemon,
    ks_port: u16,
}

fn start_ke(base: &Path, name: &str, pki: &DevPki, root: &Path) -> Ke {
    start_ke_on(base, name, pki, root, free_port())
}

fn start_ke_on(base: &Path, name: &str, pki: &DevPki, root: &Path, ks_port: u16) -> Ke {
    let (port, mport) = (free_port(), free_port());
    let config = stack::KeySyncKeConfig {
        listen: vec![format!("127.0.0.1:{port}")],
        tls_chain: &pki.server_cert,
        tls_key: &pki.server_key,
        fallback: Some(("127.0.0.1", Some(9))),
        root_secret: root,
        rotation: Some((3600, 1)),
        key_sync_port: ks_port,
        client_ca: &pki.ca_cert,
        key_sync_chain: &pki.keysync_cert,
        key_sync_key: &pki.keysync_key,
        report_interval: 0.3,
        expiry: 2.0,
        metrics_port: mport,
        server_extra: String::new(),
        tls_extra: String::new(),
    }
    .render();
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let d = stack::start_daemon(
        name,
        cargo_bin("nts-ke-server", "nts-ke-server"),
        &config,
        &dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTS-KE listening",
    )
    .unwrap();
    Ke { d, ks_port }
}

struct Ts {
    d: Daemon,
    /// The clock-state test hook's file.
    clock: PathBuf,
}

impl Ts {
    fn set_clock(&self, state: &str) {
        std::fs::write(&self.clock, state).unwrap();
    }
}

/// A time server with key sync to `endpoints`, not a local reference: its clock
/// state comes from the test hook's file, which starts `synchronized`.
fn start_ts(base: &Path, name: &str, pki: &DevPki, endpoints: &[u16]) -> Ts {
    let (port, mport) = (free_port(), free_port());
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[clock]
local_reference = false
refresh_interval = 0.2
[key_sync]
endpoints = [{eps}]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
server_id = "time-server:{name}"
max_backoff = 1.0
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
"#,
        eps = eps.join(", "),
        ca = pki.ca_cert,
        cert = pki.time_server_cert,
        key = pki.time_server_key,
    );
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let clock = dir.join("clock-state");
    std::fs::write(&clock, "synchronized").unwrap();
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(cargo_bin("nts-time-server", "nts-time-server"));
    cmd.arg("--config")
        .arg(&config_path)
        .env(CLOCK_HOOK, &clock);
    let guard = ChildGuard::spawn_combined(name, cmd, &dir).unwrap();
    guard
        .wait_for_log_contains("NTP listening", Duration::from_secs(30))
        .unwrap();
    let d = Daemon {
        guard,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        metrics: SocketAddr::from(([127, 0, 0, 1], mport)),
        config_path,
    };
    Ts { d, clock }
}

async fn key_exchange(pki: &DevPki, ke: &Ke) -> KeOutcome {
    let roots = ke::root_store(&[&pki.ca_cert], false).unwrap();
    ke::key_exchange(
        "127.0.0.1",
        ke.d.port(),
        ke::tls_config(roots),
        &[AeadAlgorithm::AesSivCmac256],
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("KE: {e}\n{}", ke.d.guard.logs()))
}

/// The NTP ports `n` key exchanges hand out.
async fn handed_out(pki: &DevPki, ke: &Ke, n: usize) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for _ in 0..n {
        ports.insert(key_exchange(pki, ke).await.ntp_port);
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynchronized_time_server_is_not_handed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = setup(tmp.path());
    let root = tmp.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let ke = start_ke(tmp.path(), "ke", &pki, &root);
    let a = start_ts(tmp.path(), "ts-a", &pki, &[ke.ks_port]);
    let b = start_ts(tmp.path(), "ts-b", &pki, &[ke.ks_port]);
    for ts in [&a, &b] {
        wait_for(
            Duration::from_secs(20),
            "time server ready and healthy",
            || ts.d.ready() && ts.d.metric("nts_time_healthy") == 1.0,
        );
    }
    let both: BTreeSet<u16> = [a.d.port(), b.d.port()].into();
    wait_for(Duration::from_secs(10), "both handed out", || {
        futures_block(handed_out(&pki, &ke, 4)) == both
    });

    // A's clock loses synchronization: unhealthy locally and in the registry.
    a.set_clock("unsynchronized");
    wait_for(Duration::from_secs(5), "A unhealthy", || {
        !a.d.ready() && a.d.metric("nts_time_healthy") == 0.0
    });
    assert_eq!(a.d.metric("nts_time_clock_synchronized"), 0.0);
    assert!(b.d.ready());
    wait_for(Duration::from_secs(5), "only B handed out", || {
        futures_block(handed_out(&pki, &ke, 6)) == [b.d.port()].into()
    });
    for _ in 0..3 {
        assert_eq!(
            handed_out(&pki, &ke, 6).await,
            [b.d.port()].into(),
            "an unsynchronized server was handed out"
        );
    }

    // Recovery: A is handed out again.
    a.set_clock("synchronized");
    wait_for(Duration::from_secs(5), "A healthy again", || a.d.ready());
    wait_for(Duration::from_secs(5), "both handed out again", || {
        futures_block(handed_out(&pki, &ke, 4)) == both
    });
}

/// Run a future to completion from a synchronous closure inside the test's runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[test]
fn chrony_follows_to_the_healthy_server() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pki = setup(tmp.path());
    // chronyd runs as _chrony: the CA and the folders above it must be readable.
    for p in [tmp.path(), &tmp.path().join("pki")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let root = tmp.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let ke = start_ke(tmp.path(), "ke", &pki, &root);
    let a = start_ts(tmp.path(), "ts-a", &pki, &[ke.ks_port]);
    let b = start_ts(tmp.path(), "ts-b", &pki, &[ke.ks_port]);
    // Only A is healthy when chrony starts, so chrony is sent to A.
    b.set_clock("unsynchronized");
    wait_for(Duration::from_secs(20), "A ready, B not", || {
        a.d.ready() && b.d.metric("nts_time_healthy") == 0.0
    });
    wait_for(
        Duration::from_secs(10),
        "A alone registered healthy",
        || {
            ke.d.metric("nts_ke_registered_time_servers{state=\"alive\"}") >= 1.0
        },
    );
    std::thread::sleep(Duration::from_millis(800));
    let client = testkit::chrony::ChronyClient::builder(&bins)
        .source(testkit::chrony::NtsSource {
            host: "127.0.0.1".into(),
            ke_port: ke.d.port(),
            ntp_port: None,
        })
        .trusted_certs(&pki.ca_cert)
        .poll(-2, -1)
        .start()
        .unwrap();
    let logs = || {
        format!(
            "{}\n{}\n{}",
            ke.d.guard.logs(),
            a.d.guard.logs(),
            b.d.guard.logs()
        )
    };
    client
        .wait_until(Duration::from_secs(60), "authenticated time from A", |st| {
            st.ntpdata.first().is_some_and(|n| {
                n.authenticated && n.total_good_rx >= 2 && n.remote_port == a.d.port()
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    // A loses synchronization, B recovers: chrony ends up on B.
    b.set_clock("synchronized");
    a.set_clock("unsynchronized");
    let moved = std::time::Instant::now();
    let st = client
        .wait_until(Duration::from_secs(90), "chrony on B", |st| {
            st.ntpdata.first().is_some_and(|n| {
                n.authenticated && n.remote_port == b.d.port() && n.leap == "Normal"
            })
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    eprintln!(
        "chrony moved to B {:?} after A lost synchronization: {:?}",
        moved.elapsed(),
        st.ntpdata.first()
    );
    // A stopped answering NTS while unsynchronized, which sent chrony back to NTS-KE.
    assert!(a.d.metric("nts_time_requests_dropped_total{reason=\"unsynchronized\"}") >= 1.0);
}

async fn query(ts: &Ts, ko: &KeOutcome, cookie: &[u8]) -> Result<bool, ProbeError> {
    nts_probe(
        ts.d.addr,
        NtsCredentials {
            cookie,
            c2s: &ko.c2s,
            s2c: &ko.s2c,
            placeholders: 0,
        },
        Duration::from_secs(2),
    )
    .await
    .map(|p| p.sample.authenticated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_key_sets_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = setup(tmp.path());
    // Two replicas with different root secrets (a typo in one's root_secret_file).
    let (root_a, root_b) = (tmp.path().join("root-a.key"), tmp.path().join("root-b.key"));
    stack::write_root_secret(&root_a).unwrap();
    stack::write_root_secret(&root_b).unwrap();
    let a = start_ke(tmp.path(), "ke-a", &pki, &root_a);
    let b_port = free_port();
    let ts = start_ts(tmp.path(), "ts", &pki, &[a.ks_port, b_port]);
    wait_for(Duration::from_secs(20), "keys from A", || ts.d.ready());
    let from_a = key_exchange(&pki, &a).await;
    assert!(query(&ts, &from_a, &from_a.cookies[0]).await.unwrap());
    assert_eq!(ts.d.metric("nts_time_key_conflicts_total"), 0.0);

    // B comes up with the other secret: its key set names the same key ids.
    let b = start_ke_on(tmp.path(), "ke-b", &pki, &root_b, b_port);
    wait_for(Duration::from_secs(15), "conflict counted", || {
        ts.d.metric("nts_time_key_conflicts_total") >= 1.0
    });
    let endpoint = format!("127.0.0.1:{b_port}");
    let logs = ts.d.guard.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("key set refused"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{logs}");
    assert!(warnings[0].contains(&endpoint), "{}", warnings[0]);
    // It names both fingerprints (one-way values), as B and A export them.
    for ke in [&b, &a] {
        let (_, body) = stack::http_get(ke.d.metrics, "/metrics").unwrap();
        let fp = body
            .lines()
            .find_map(|l| l.strip_prefix("nts_ke_root_secret_info{fingerprint=\""))
            .and_then(|r| r.split_once('"'))
            .map(|(f, _)| f.to_string())
            .unwrap_or_else(|| panic!("no fingerprint in\n{body}"));
        assert!(warnings[0].contains(&fp), "{fp}: {}", warnings[0]);
    }
    assert!(warnings[0].len() < 400, "{}", warnings[0]);
    assert!(
        !root_b_hex_in(&root_b, &logs),
        "the root secret leaked into the log"
    );

    // Still serving with A's keys; B's cookies open to nothing (NAK), never mixed in.
    assert!(query(&ts, &from_a, &from_a.cookies[1]).await.unwrap());
    let from_b = key_exchange(&pki, &b).await;
    let r = query(&ts, &from_b, &from_b.cookies[0]).await;
    assert!(
        matches!(
            r,
            Err(ProbeError::Check(
                nts_proto::ntp_client::ResponseCheckError::NtsNak
            ))
        ),
        "{r:?}"
    );
    assert!(ts.d.ready());
    // Both links are up: the refusal does not cost the link.
    wait_for(Duration::from_secs(5), "both links up", || {
        ts.d.metric(&format!(
            "nts_time_key_sync_link_up{{endpoint=\"{endpoint}\"}}"
        )) == 1.0
    });
    // The key set is known current while links are healthy.
    std::thread::sleep(Duration::from_secs(3));
    let age = ts.d.metric("nts_time_key_set_age_seconds");
    assert!(
        (0.0..=1.0).contains(&age),
        "key set age {age} with healthy links"
    );
}

fn root_b_hex_in(root: &Path, logs: &str) -> bool {
    let hex = std::fs::read_to_string(root).unwrap();
    logs.contains(hex.trim())
}
