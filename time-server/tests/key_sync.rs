//! Key sync over gRPC with mutual TLS, end to end with real processes on
//! loopback: ke-server replicas, several time servers, rotation, outages,
//! restarts, refused peers, and chrony sent to a time server it was never told
//! about. Each rule of ARCHITECTURE.md's "Key sync" section is checked here.

use nts_client::ke::{self, KeOutcome};
use nts_ke_server::dev_pki::DevPki;
use nts_proto::aead::AeadAlgorithm;
use nts_proto::ntp_client::ResponseCheckError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::nts_probe::{nts_probe, NtsCredentials, Probe, ProbeError};
use testkit::ports::free_port;
use testkit::stack::{self, cargo_bin, Daemon};

struct Ke {
    d: Daemon,
    ks_port: u16,
    config: String,
    dir: PathBuf,
    name: String,
}

struct Ts {
    d: Daemon,
    config: String,
    dir: PathBuf,
    name: String,
}

fn ke_config(
    pki: &DevPki,
    root: &Path,
    port: u16,
    mport: u16,
    ks_port: u16,
    rotation: u64,
    past: u32,
) -> String {
    stack::KeySyncKeConfig {
        listen: vec![format!("127.0.0.1:{port}")],
        tls_chain: &pki.server_cert,
        tls_key: &pki.server_key,
        fallback: Some(("127.0.0.1", Some(9))),
        root_secret: root,
        rotation: Some((rotation, past)),
        key_sync_port: ks_port,
        client_ca: &pki.ca_cert,
        key_sync_chain: &pki.keysync_cert,
        key_sync_key: &pki.keysync_key,
        report_interval: 0.5,
        expiry: 2.0,
        metrics_port: mport,
        server_extra: String::new(),
        tls_extra: String::new(),
    }
    .render()
}

fn start_ke(base: &Path, name: &str, pki: &DevPki, root: &Path, rotation: u64, past: u32) -> Ke {
    let (port, mport, ks_port) = (free_port(), free_port(), free_port());
    let config = ke_config(pki, root, port, mport, ks_port, rotation, past);
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let d = launch_ke(&dir, name, &config, port, mport);
    Ke {
        d,
        ks_port,
        config,
        dir,
        name: name.into(),
    }
}

fn launch_ke(dir: &Path, name: &str, config: &str, port: u16, mport: u16) -> Daemon {
    stack::start_daemon(
        name,
        cargo_bin("nts-ke-server", "nts-ke-server"),
        config,
        dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTS-KE listening",
    )
    .unwrap()
}

impl Ke {
    fn restart(&mut self) {
        self.d.guard.stop().unwrap();
        self.d = launch_ke(
            &self.dir,
            &self.name,
            &self.config,
            self.d.addr.port(),
            self.d.metrics.port(),
        );
    }
}

fn ts_config(pki: &DevPki, port: u16, mport: u16, endpoints: &[u16]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[rate_limit]
enabled = false
[clock]
local_reference = true
stratum = 1
reference_id = "LOCL"
[key_sync]
endpoints = [{eps}]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
server_id = "time-server:{port}"
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
    )
}

fn launch_ts(dir: &Path, name: &str, config: &str, port: u16, mport: u16) -> Daemon {
    stack::start_daemon(
        name,
        cargo_bin("nts-time-server", "nts-time-server"),
        config,
        dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTP listening",
    )
    .unwrap()
}

fn start_ts(base: &Path, name: &str, pki: &DevPki, endpoints: &[u16]) -> Ts {
    let (port, mport) = (free_port(), free_port());
    let config = ts_config(pki, port, mport, endpoints);
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let d = launch_ts(&dir, name, &config, port, mport);
    Ts {
        d,
        config,
        dir,
        name: name.into(),
    }
}

impl Ts {
    /// Restart and return how long it took to hold keys again.
    fn restart(&mut self) -> Duration {
        self.d.guard.stop().unwrap();
        let start = Instant::now();
        self.d = launch_ts(
            &self.dir,
            &self.name,
            &self.config,
            self.d.addr.port(),
            self.d.metrics.port(),
        );
        wait_for(
            Duration::from_secs(20),
            "time server ready after restart",
            || self.d.ready(),
        );
        start.elapsed()
    }
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let ok = testkit::wait_until(timeout, Duration::from_millis(50), || f().then_some(()));
    assert!(ok.is_some(), "timed out waiting for {what}");
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
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
    .unwrap_or_else(|e| panic!("KE with {}: {e}\n{}", ke.name, ke.d.guard.logs()))
}

async fn query(ts: &Ts, ko: &KeOutcome, cookie: &[u8]) -> Result<Probe, ProbeError> {
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
}

fn setup(dir: &Path) -> (DevPki, PathBuf) {
    let (pki, _) = DevPki::ensure(&dir.join("pki")).unwrap();
    let root = dir.join("root.key");
    stack::write_root_secret(&root).unwrap();
    (pki, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_time_servers_and_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, root) = setup(tmp.path());
    // 3-second epochs, keys honoured one epoch after their own: a cookie lives 3 to 6 seconds.
    let a = start_ke(tmp.path(), "ke-a", &pki, &root, 3, 1);
    let b = start_ke(tmp.path(), "ke-b", &pki, &root, 3, 1);
    let servers: Vec<Ts> = (0..3)
        .map(|i| {
            start_ts(
                tmp.path(),
                &format!("ts-{i}"),
                &pki,
                &[a.ks_port, b.ks_port],
            )
        })
        .collect();
    for ts in &servers {
        wait_for(Duration::from_secs(20), "time server keys", || ts.d.ready());
    }
    for ke in [&a, &b] {
        wait_for(Duration::from_secs(10), "3 live registrations", || {
            ke.d.metric("nts_ke_registered_time_servers{state=\"alive\"}") == 3.0
        });
    }

    // Rule 1: a cookie from either replica is accepted by every time server.
    let from_a = key_exchange(&pki, &a).await;
    let from_b = key_exchange(&pki, &b).await;
    for ts in &servers {
        for (ko, i) in [(&from_a, 0), (&from_b, 1), (&from_a, 2), (&from_b, 3)] {
            let s = query(ts, ko, &ko.cookies[i])
                .await
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", ts.name, ts.d.guard.logs()));
            assert!(s.sample.authenticated);
            assert_eq!(s.cookies.len(), 1);
        }
    }
    // Rule 6: Server Negotiation spreads clients over the registered servers (round robin).
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..6 {
        ports.insert(key_exchange(&pki, &a).await.ntp_port);
    }
    let expected: std::collections::BTreeSet<u16> = servers.iter().map(|t| t.d.port()).collect();
    assert_eq!(ports, expected);

    // Rule 3: after a rotation, new cookies name the new key and old ones still work.
    let old = key_exchange(&pki, &a).await;
    let old_key = nts_proto::cookie::key_id(&old.cookies[0]).unwrap();
    let issued_at = unix_now();
    // Wait for the next epoch to begin.
    let next_epoch = ((old_key.0 as f64 / 3.0).floor() + 1.0) * 3.0;
    tokio::time::sleep(Duration::from_secs_f64(
        (next_epoch - unix_now()).max(0.0) + 1.2,
    ))
    .await;
    let new = key_exchange(&pki, &b).await;
    let new_key = nts_proto::cookie::key_id(&new.cookies[0]).unwrap();
    assert!(
        new_key.0 > old_key.0,
        "new cookies use the new key: {old_key} -> {new_key}"
    );
    for ts in &servers {
        assert!(
            query(ts, &old, &old.cookies[1])
                .await
                .unwrap()
                .sample
                .authenticated,
            "previous epoch still accepted"
        );
        assert!(
            query(ts, &new, &new.cookies[1])
                .await
                .unwrap()
                .sample
                .authenticated
        );
    }
    // A cookie older than the window gets an NTS NAK.
    let expiry = old_key.0 as f64 + 6.0;
    tokio::time::sleep(Duration::from_secs_f64(
        (expiry - unix_now()).max(0.0) + 1.5,
    ))
    .await;
    for ts in &servers {
        let r = query(ts, &old, &old.cookies[2]).await;
        assert!(
            matches!(r, Err(ProbeError::Check(ResponseCheckError::NtsNak))),
            "{}: cookie issued {:.1}s ago: {r:?}",
            ts.name,
            unix_now() - issued_at
        );
        assert!(
            ts.d.metric("nts_time_nts_nak_total{reason=\"expired_key\"}")
                + ts.d
                    .metric("nts_time_nts_nak_total{reason=\"unknown_key\"}")
                >= 1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, root) = setup(tmp.path());
    let mut a = start_ke(tmp.path(), "ke-a", &pki, &root, 3600, 1);
    let mut b = start_ke(tmp.path(), "ke-b", &pki, &root, 3600, 1);
    let mut servers: Vec<Ts> = (0..2)
        .map(|i| {
            start_ts(
                tmp.path(),
                &format!("ts-{i}"),
                &pki,
                &[a.ks_port, b.ks_port],
            )
        })
        .collect();
    for ts in &servers {
        wait_for(Duration::from_secs(20), "time server keys", || ts.d.ready());
    }
    let ko = key_exchange(&pki, &a).await;

    // Rule 4: with every ke-server gone, time servers keep serving NTS.
    a.d.guard.stop().unwrap();
    b.d.guard.stop().unwrap();
    for ts in &servers {
        wait_for(Duration::from_secs(15), "links down", || {
            metric_sum(&ts.d, "nts_time_key_sync_link_up") == 0.0
        });
        assert!(
            query(ts, &ko, &ko.cookies[0])
                .await
                .unwrap()
                .sample
                .authenticated,
            "serving during the outage"
        );
        assert!(ts.d.ready(), "keys are kept while the key master is away");
    }
    // Restarted ke-servers are found again without touching the time servers.
    a.restart();
    b.restart();
    for ts in &servers {
        let ok = testkit::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            (metric_sum(&ts.d, "nts_time_key_sync_link_up") == 2.0).then_some(())
        });
        if ok.is_none() {
            let (_, body) = stack::http_get(ts.d.metrics, "/metrics").unwrap();
            panic!(
                "links not back up: {:?} {}:\n{}",
                stack::http_get(ts.d.metrics, "/metrics").map(|x| x.0),
                ts.d.metrics,
                body
            );
        }
    }
    wait_for(Duration::from_secs(10), "registrations back", || {
        a.d.metric("nts_ke_registered_time_servers{state=\"alive\"}") == 2.0
    });
    assert!(metric_sum(&servers[0].d, "nts_time_key_sync_reconnects_total") >= 2.0);

    // Rule 2: a restarted time server serves again once it has keys, and cookies
    // issued before its restart still work.
    let took = servers[1].restart();
    eprintln!("time server holds keys {took:?} after restart (process start included)");
    assert!(took < Duration::from_secs(10));
    let s = query(&servers[1], &ko, &ko.cookies[1]).await.unwrap();
    assert!(s.sample.authenticated);
    // Likewise a cookie from before a ke-server restart.
    let after = key_exchange(&pki, &b).await;
    assert!(
        query(&servers[0], &after, &after.cookies[0])
            .await
            .unwrap()
            .sample
            .authenticated
    );
    assert!(
        query(&servers[0], &ko, &ko.cookies[2])
            .await
            .unwrap()
            .sample
            .authenticated
    );
}

fn metric_sum(d: &Daemon, name: &str) -> f64 {
    let (_, body) = stack::http_get(d.metrics, "/metrics").unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_trusted_certificate_get_nothing() {
    use nts_proto::key_sync::pb::key_sync_client::KeySyncClient;
    use nts_proto::key_sync::pb::WatchKeysRequest;
    let tmp = tempfile::tempdir().unwrap();
    let (pki, root) = setup(tmp.path());
    let ke = start_ke(tmp.path(), "ke", &pki, &root, 3600, 1);
    let endpoint = format!("127.0.0.1:{}", ke.ks_port);
    let provider = nts_ops::tls_provider::provider();
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&pki.ca_cert).unwrap() {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let base = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    // No client certificate at all.
    let mut no_cert = base().with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    // A client certificate from another CA.
    let (other, _) = DevPki::ensure(&tmp.path().join("other-pki")).unwrap();
    let chain = rustls_pki_types::pem::PemObject::pem_file_iter(&other.time_server_cert)
        .unwrap()
        .collect::<Result<Vec<rustls_pki_types::CertificateDer>, _>>()
        .unwrap();
    let key = <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_file(
        &other.time_server_key,
    )
    .unwrap();
    let mut wrong_ca = base().with_client_auth_cert(chain, key).unwrap();
    wrong_ca.alpn_protocols = vec![b"h2".to_vec()];

    for (what, cfg) in [("no certificate", no_cert), ("another CA", wrong_ca)] {
        let got = async {
            let channel = nts_time_server::key_sync_client::connect(
                &endpoint,
                std::sync::Arc::new(cfg),
                None,
            )
            .await?;
            let mut client = KeySyncClient::new(channel);
            let mut stream = client
                .watch_keys(WatchKeysRequest {
                    server_id: "intruder".into(),
                })
                .await?
                .into_inner();
            let set = stream.message().await?;
            anyhow::Ok(set)
        }
        .await;
        if let Ok(Some(set)) = got {
            panic!("{what}: received {} keys", set.keys.len());
        }
    }
    wait_for(Duration::from_secs(5), "refusals counted", || {
        ke.d.metric("nts_ke_key_sync_refused_total") >= 2.0
    });
    assert_eq!(ke.d.metric("nts_ke_key_sets_sent_total"), 0.0);
}

#[test]
fn chrony_is_sent_to_a_registered_time_server() {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (pki, root) = setup(tmp.path());
    // chronyd runs as _chrony: the CA and the folders above it must be readable.
    for p in [tmp.path(), &tmp.path().join("pki")] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The ke-server's configured fallback (port 9) serves nothing: only the registry can help.
    let ke = start_ke(tmp.path(), "ke", &pki, &root, 3600, 1);
    let ts = start_ts(tmp.path(), "ts", &pki, &[ke.ks_port]);
    wait_for(Duration::from_secs(20), "registration", || {
        ke.d.metric("nts_ke_registered_time_servers{state=\"alive\"}") == 1.0
    });
    let client = testkit::chrony::ChronyClient::builder(&bins)
        .source(testkit::chrony::NtsSource {
            host: "127.0.0.1".into(),
            ke_port: ke.d.port(),
            ntp_port: None,
        })
        .trusted_certs(&pki.ca_cert)
        .start()
        .unwrap();
    let status = client
        .wait_until(
            Duration::from_secs(60),
            "authenticated time from the registered server",
            |st| {
                st.ntpdata
                    .first()
                    .is_some_and(|n| n.authenticated && n.total_good_rx >= 2)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ke.d.guard.logs(), ts.d.guard.logs()));
    assert_eq!(
        status.ntpdata[0].remote_port,
        ts.d.port(),
        "chrony was sent to the registered time server"
    );
    assert!(ke.d.metric("nts_ke_server_negotiation_total{source=\"registry\"}") >= 1.0);
    assert_eq!(
        ke.d.metric("nts_ke_server_negotiation_total{source=\"fallback\"}"),
        0.0
    );
}

/// A time server dies under a running client agent: the agent's source stops
/// getting answers, runs NTS-KE again after a few missed polls, and is sent
/// to the time server that is still alive, all within a minute.
#[test]
fn agent_moves_to_a_live_time_server_when_its_own_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, root) = setup(tmp.path());
    let ke = start_ke(tmp.path(), "ke", &pki, &root, 86_400, 7);
    let mut servers: Vec<Ts> = (0..2)
        .map(|i| start_ts(tmp.path(), &format!("ts-{i}"), &pki, &[ke.ks_port]))
        .collect();
    wait_for(Duration::from_secs(20), "2 live registrations", || {
        ke.d.metric("nts_ke_registered_time_servers{state=\"alive\"}") == 2.0
    });
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let socket = agent_dir.join("status.sock");
    let config = format!(
        r#"[[source]]
type = "nts"
address = "127.0.0.1:{ke_port}"
[nts]
ca_files = [{ca:?}]
system_roots = false
ke_spread = 0.0
request_timeout = 1.0
unreachable_polls = 3
[clock]
minpoll = 1
maxpoll = 1
[status]
socket = {socket:?}
[log]
level = "debug"
"#,
        ke_port = ke.d.port(),
        ca = pki.ca_cert,
    );
    let path = agent_dir.join("client.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new(cargo_bin("nts-client", "nts-client"));
    cmd.arg("run").arg("--config").arg(&path);
    let agent =
        testkit::process::ChildGuard::spawn_combined("nts-client", cmd, &agent_dir).unwrap();
    let status = || nts_client::status::fetch(&socket).ok();
    let mut first = None;
    wait_for(
        Duration::from_secs(30),
        "a first authenticated sample",
        || {
            first = status().filter(|r| r.sources[0].reach != 0);
            first.is_some()
        },
    );
    let first = first.unwrap();
    let used = first.sources[0].ntp_address.clone().unwrap();
    let victim = servers
        .iter()
        .position(|t| t.d.addr.to_string() == used)
        .unwrap_or_else(|| panic!("{used} is not one of ours"));
    let killed_at = Instant::now();
    servers[victim].d.guard.stop().unwrap();
    let survivor = servers[1 - victim].d.addr.to_string();
    let mut moved = None;
    let ok = testkit::wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let r = status()?;
        let s = &r.sources[0];
        (s.ntp_address.as_deref() == Some(survivor.as_str()) && s.reach & 1 == 1)
            .then(|| moved = Some(r.clone()))
    });
    assert!(
        ok.is_some(),
        "not moved within 60 s: {:#?}\n{}",
        status(),
        agent.logs()
    );
    let r = moved.unwrap();
    let s = &r.sources[0];
    eprintln!(
        "killed {used}; on {survivor} with an authenticated sample {:.1} s later ({} key exchanges, {} timeouts)",
        killed_at.elapsed().as_secs_f64(),
        s.ke_ok,
        s.timeouts
    );
    assert!(s.authenticated && s.ke_ok >= 2);
    assert!(agent.logs().contains("using a new time server"));
    assert!(agent.logs().contains("time server stopped answering"));
    drop(servers.remove(1 - victim));
}
