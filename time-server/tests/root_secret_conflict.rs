//! Rule 7 of the shared ARCHITECTURE.md, end to end with real processes on
//! loopback: a ke-server replica restarted with another root secret (a chart
//! rendered without `lookup` re-generates the Secret) is refused by the time
//! servers, says so, and is not ready until it holds the right secret again.

use nts_client::ke::{self, KeOutcome};
use nts_ke_server::dev_pki::DevPki;
use nts_proto::aead::AeadAlgorithm;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testkit::nts_probe::{nts_probe, NtsCredentials, ProbeError};
use testkit::ports::free_port;
use testkit::stack::{self, cargo_bin, Daemon};

/// A ke-server replica and what it takes to start it again.
struct Ke {
    /// The running process (None before the first start).
    running: Option<Daemon>,
    ks_port: u16,
    port: u16,
    mport: u16,
    dir: PathBuf,
    name: String,
}

fn ke_config(pki: &DevPki, root: &Path, port: u16, mport: u16, ks_port: u16) -> String {
    stack::KeySyncKeConfig {
        listen: vec![format!("127.0.0.1:{port}")],
        tls_chain: &pki.server_cert,
        tls_key: &pki.server_key,
        // No fallback: clients go only to time servers registered over key sync.
        fallback: None,
        root_secret: root,
        rotation: Some((3600, 1)),
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

impl Ke {
    fn new(base: &Path, name: &str) -> Self {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Ke {
            running: None,
            ks_port: free_port(),
            port: free_port(),
            mport: free_port(),
            dir,
            name: name.into(),
        }
    }

    /// Start (or restart) this replica with `root` as its root secret file.
    fn start(&mut self, pki: &DevPki, root: &Path) {
        if let Some(old) = self.running.take() {
            old.guard.stop().unwrap();
        }
        let config = ke_config(pki, root, self.port, self.mport, self.ks_port);
        self.running = Some(
            stack::start_daemon(
                &self.name,
                cargo_bin("nts-ke-server", "nts-ke-server"),
                &config,
                &self.dir,
                SocketAddr::from(([127, 0, 0, 1], self.port)),
                SocketAddr::from(([127, 0, 0, 1], self.mport)),
                "NTS-KE listening",
            )
            .unwrap(),
        );
    }

    fn d(&self) -> &Daemon {
        self.running.as_ref().expect("replica started")
    }

    fn readyz(&self) -> (u16, String) {
        stack::http_get(self.d().metrics, "/readyz").unwrap_or((0, String::new()))
    }
}

fn start_ts(base: &Path, pki: &DevPki, endpoints: &[u16]) -> Daemon {
    let (port, mport) = (free_port(), free_port());
    let eps: Vec<String> = endpoints
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    let config = format!(
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
    );
    let dir = base.join("ts");
    std::fs::create_dir_all(&dir).unwrap();
    stack::start_daemon(
        "ts",
        cargo_bin("nts-time-server", "nts-time-server"),
        &config,
        &dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTP listening",
    )
    .unwrap()
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let ok = testkit::wait_until(timeout, Duration::from_millis(50), || f().then_some(()));
    assert!(ok.is_some(), "timed out waiting for {what}");
}

async fn key_exchange(pki: &DevPki, ke: &Ke) -> Result<KeOutcome, String> {
    let roots = ke::root_store(&[&pki.ca_cert], false).unwrap();
    ke::key_exchange(
        "127.0.0.1",
        ke.d().port(),
        ke::tls_config(roots),
        &[AeadAlgorithm::AesSivCmac256],
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| e.to_string())
}

/// What a new client of `ke` gets: a cookie the time server it is sent to accepts, a NAK, or no cookie.
async fn new_client(pki: &DevPki, ke: &Ke) -> String {
    let ko = match key_exchange(pki, ke).await {
        Ok(ko) => ko,
        Err(e) => return format!("no cookies: {e}"),
    };
    let probe = nts_probe(
        SocketAddr::from(([127, 0, 0, 1], ko.ntp_port)),
        NtsCredentials {
            cookie: &ko.cookies[0],
            c2s: &ko.c2s,
            s2c: &ko.s2c,
            placeholders: 0,
        },
        Duration::from_secs(2),
    )
    .await;
    match probe {
        Ok(p) if p.sample.authenticated => "authenticated".into(),
        Ok(_) => "unauthenticated".into(),
        Err(ProbeError::Check(e)) => format!("refused by the time server: {e:?}"),
        Err(e) => format!("no answer: {e}"),
    }
}

/// The `fingerprint` label of `nts_ke_root_secret_info`.
fn fingerprint(d: &Daemon) -> String {
    let (_, body) = stack::http_get(d.metrics, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("nts_ke_root_secret_info{fingerprint=\""))
        .and_then(|rest| rest.split_once('"'))
        .map(|(fp, _)| fp.to_string())
        .unwrap_or_else(|| panic!("no nts_ke_root_secret_info in\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_root_secret_is_refused_and_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(&tmp.path().join("pki")).unwrap();
    let root = tmp.path().join("root.key");
    let other_root = tmp.path().join("other-root.key");
    stack::write_root_secret(&root).unwrap();
    stack::write_root_secret(&other_root).unwrap();

    let mut a = Ke::new(tmp.path(), "ke-a");
    let mut b = Ke::new(tmp.path(), "ke-b");
    a.start(&pki, &root);
    b.start(&pki, &root);
    let ts = start_ts(tmp.path(), &pki, &[a.ks_port, b.ks_port]);
    wait_for(Duration::from_secs(20), "time server keys", || ts.ready());
    for ke in [&a, &b] {
        wait_for(Duration::from_secs(10), "replica ready", || ke.d().ready());
    }

    // B restarts and finds another root secret (the Secret was rendered again).
    b.start(&pki, &other_root);
    let restarted = Instant::now();
    // A bounded time after its start, the odd replica says why it is not ready.
    let not_ready = testkit::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let (code, body) = b.readyz();
        (code != 200 && body.contains("root secret differs")).then_some(restarted.elapsed())
    });
    let Some(took) = not_ready else {
        let (code, body) = b.readyz();
        let client = new_client(&pki, &b).await;
        panic!(
            "replica with another root secret: /readyz {code} {body:?} 10 s after its start; a new client of it: {client}\n{}",
            ts.guard.logs()
        );
    };
    eprintln!(
        "odd replica not ready {} ms after its start",
        took.as_millis()
    );
    // It stays so (the readiness is not a transient before its first report).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = b.readyz();
    assert_ne!(code, 200, "{body}");
    let (fa, fb) = (fingerprint(a.d()), fingerprint(b.d()));
    assert_ne!(fa, fb);
    assert!(
        body.contains(&fa) && body.contains(&fb),
        "the reason names both fingerprints: {body}"
    );
    assert_eq!(b.d().metric("nts_ke_key_set_refused"), 1.0);
    assert_eq!(a.d().metric("nts_ke_key_set_refused"), 0.0);
    assert!(
        a.d().ready(),
        "the replica the time server agrees with stays ready"
    );
    // Said once per change of state, not at every report.
    let said = b.d().guard.output().matches("root secret differs").count();
    assert_eq!(said, 1, "{}", b.d().guard.logs());
    // The time server says which replica it refuses, naming both fingerprints, once.
    let ts_log = ts.guard.output();
    let refusals: Vec<&str> = ts_log
        .lines()
        .filter(|l| l.contains("key set refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{ts_log}");
    assert!(
        refusals[0].contains(&fa) && refusals[0].contains(&fb),
        "{}",
        refusals[0]
    );
    eprintln!("time server: {}", refusals[0]);
    eprintln!(
        "odd replica: {}",
        b.d()
            .guard
            .output()
            .lines()
            .find(|l| l.contains("root secret differs"))
            .unwrap_or("")
    );
    // It names the refused replica and the fingerprint it serves in its metrics.
    assert_eq!(
        ts.metric(&format!(
            "nts_time_key_sync_refused{{endpoint=\"127.0.0.1:{}\"}}",
            b.ks_port
        )),
        1.0
    );
    assert_eq!(
        ts.metric(&format!(
            "nts_time_root_secret_info{{fingerprint=\"{fa}\"}}"
        )),
        1.0
    );
    // No new client of the odd replica gets a cookie the time server NAKs.
    for _ in 0..3 {
        let got = new_client(&pki, &b).await;
        assert!(
            got == "authenticated" || got.starts_with("no cookies"),
            "new client of the odd replica: {got}"
        );
        assert_eq!(new_client(&pki, &a).await, "authenticated");
    }

    // B restarts with the right secret: ready again, nothing refused.
    b.start(&pki, &root);
    let back = Instant::now();
    wait_for(Duration::from_secs(10), "replica ready again", || {
        b.d().ready()
    });
    eprintln!(
        "replica ready again {} ms after its restart",
        back.elapsed().as_millis()
    );
    assert_eq!(b.d().metric("nts_ke_key_set_refused"), 0.0);
    assert_eq!(fingerprint(a.d()), fingerprint(b.d()), "same root secret");
    wait_for(
        Duration::from_secs(5),
        "time server refuses nothing",
        || {
            ts.metric(&format!(
                "nts_time_key_sync_refused{{endpoint=\"127.0.0.1:{}\"}}",
                b.ks_port
            )) == 0.0
        },
    );
    assert_eq!(new_client(&pki, &b).await, "authenticated");
}
