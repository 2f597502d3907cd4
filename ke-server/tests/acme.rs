//! ACME end to end, against Let's Encrypt's test CA: Debian's `pebble` with
//! `pebble-challtestsrv` as its DNS (every name resolves to 127.0.0.1), on
//! loopback, with real TLS-ALPN-01 and HTTP-01 validation (never
//! `PEBBLE_VA_ALWAYS_VALID`). chrony, trusting pebble's root (fetched from the
//! management port), completes NTS-KE against the certificate the server got;
//! chrony resolves the ACME name through a hosts file bind-mounted in a private
//! mount namespace (the system's `/etc/hosts` is never touched).
//!
//! Pebble runs with `PEBBLE_WFE_NONCEREJECT=0` (no random badNonce) except in
//! the test of badNonce recovery, `PEBBLE_VA_NOSLEEP=1` and
//! `PEBBLE_AUTHZREUSE=0` (every order is validated again).

use nts_proto::aead::AeadAlgorithm;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::certs::TestPki;
use testkit::process::ChildGuard;

const DOMAIN: &str = "nts.test";

/// pebble and pebble-challtestsrv, or None (skip) when missing and peers are not required.
fn require_pebble() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/bin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    match (find("pebble"), find("pebble-challtestsrv")) {
        (Some(p), Some(c)) => Some((p, c)),
        _ if testkit::peers::peers_required() => {
            panic!("pebble not installed; run scripts/install-test-deps.sh")
        }
        _ => {
            eprintln!("skipped: pebble not installed; run scripts/install-test-deps.sh");
            None
        }
    }
}

/// A directory readable by chrony's user (`tempdir` makes 0700).
fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

struct PebbleOptions {
    /// Port pebble connects to for TLS-ALPN-01.
    tls_port: u16,
    /// Port pebble connects to for HTTP-01.
    http_port: u16,
    /// `certificateValidityPeriod`, seconds.
    validity: Option<u64>,
    /// `PEBBLE_WFE_NONCEREJECT`, percent.
    nonce_reject: u32,
}

struct Pebble {
    // Stopped in this order, before the directory goes.
    pebble: ChildGuard,
    _chall: ChildGuard,
    /// CA of pebble's own listener certificate (what `acme.ca_roots` trusts).
    listener_ca: PathBuf,
    acme_port: u16,
    mgmt_port: u16,
    _pki: TestPki,
    dir: tempfile::TempDir,
}

impl Pebble {
    fn start(o: PebbleOptions) -> Option<Pebble> {
        let (pebble_bin, chall_bin) = require_pebble()?;
        let dir = open_tempdir();
        let pki =
            TestPki::generate_in(&dir.path().join("pki"), &["localhost", "127.0.0.1"]).unwrap();
        let p = testkit::ports::free_ports(4);
        let (acme_port, mgmt_port, dns_port, chall_mgmt) = (p[0], p[1], p[2], p[3]);

        let mut chall = Command::new(chall_bin);
        chall
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let chall = ChildGuard::spawn_combined("pebble-challtestsrv", chall, dir.path()).unwrap();
        chall
            .wait_for_log_contains("Starting management server", Duration::from_secs(20))
            .unwrap();

        let validity = o
            .validity
            .map(|v| format!(",\n    \"certificateValidityPeriod\": {v}"))
            .unwrap_or_default();
        let config = format!(
            r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{acme_port}",
    "managementListenAddress": "127.0.0.1:{mgmt_port}",
    "certificate": {cert:?},
    "privateKey": {key:?},
    "httpPort": {http},
    "tlsPort": {tls},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false{validity}
  }}
}}
"#,
            cert = pki.chain_path(),
            key = pki.key_path(),
            http = o.http_port,
            tls = o.tls_port,
        );
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(pebble_bin);
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", o.nonce_reject.to_string())
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = ChildGuard::spawn_combined("pebble", cmd, dir.path()).unwrap();
        pebble
            .wait_for_log_contains("ACME directory available", Duration::from_secs(30))
            .unwrap();
        Some(Pebble {
            pebble,
            _chall: chall,
            listener_ca: pki.ca_path().to_path_buf(),
            acme_port,
            mgmt_port,
            _pki: pki,
            dir,
        })
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// Orders pebble has received (`POST /order-plz` in its log).
    fn orders(&self) -> usize {
        self.pebble.output().matches("POST /order-plz").count()
    }

    /// Pebble's issuing root (regenerated at each start), written readable by chrony.
    fn root(&self) -> PathBuf {
        let pem = https_get(self.mgmt_port, "/roots/0", &self.listener_ca);
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
        let path = self.dir.path().join("pebble-root.pem");
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

/// GET over HTTPS on 127.0.0.1 trusting `ca`; returns the body.
fn https_get(port: u16, path: &str, ca: &Path) -> String {
    use std::io::{Read, Write};
    let roots = nts_client::ke::root_store(&[ca], false).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

struct Server {
    guard: ChildGuard,
    port: u16,
    metrics: SocketAddr,
}

impl Server {
    fn metric(&self, selector: &str) -> f64 {
        let (_, body) = testkit::stack::http_get(self.metrics, "/metrics").unwrap();
        testkit::stack::metric_value(&body, selector)
    }

    fn wait_log(&self, needle: &str, secs: u64) {
        self.guard
            .wait_for_log_contains(needle, Duration::from_secs(secs))
            .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"));
    }

    fn count(&self, needle: &str) -> usize {
        self.guard.output().matches(needle).count()
    }

    fn wait_count(&self, needle: &str, n: usize, secs: u64) {
        self.guard
            .wait_for_log(Duration::from_secs(secs), |s| {
                s.matches(needle).count() >= n
            })
            .unwrap_or_else(|e| panic!("waiting for {n} x {needle:?}: {e}"));
    }

    /// NTS-KE with our client: connect to 127.0.0.1, verify the certificate for DOMAIN.
    async fn key_exchange(&self, root: &Path) -> nts_client::ke::KeOutcome {
        nts_client::ke::key_exchange_at(
            "127.0.0.1",
            DOMAIN,
            self.port,
            client_config(root),
            &AeadAlgorithm::ALL,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("NTS-KE failed: {e}\n{}", self.guard.logs()))
    }
}

fn client_config(root: &Path) -> Arc<rustls::ClientConfig> {
    nts_client::ke::tls_config(nts_client::ke::root_store(&[root], false).unwrap())
}

/// Start nts-ke-server on 127.0.0.1:`port` with `acme` as the [acme] section; it
/// sends clients to NTP on 127.0.0.1:`ntp_port` and keeps its cookie root secret
/// in `dir/root.key`.
fn start_server(name: &str, dir: &Path, port: u16, server_extra: &str, acme: &str) -> Server {
    start_server_ntp(name, dir, port, server_extra, acme, 4123)
}

fn start_server_ntp(
    name: &str,
    dir: &Path,
    port: u16,
    server_extra: &str,
    acme: &str,
    ntp_port: u16,
) -> Server {
    let mport = testkit::ports::free_port();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
{server_extra}
[acme]
{acme}
[ntp]
server = "127.0.0.1"
port = {ntp_port}
[cookie_keys]
root_secret_file = {root:?}
create_if_missing = true
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
"#,
        root = dir.join("root.key"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nts-ke-server"));
    cmd.arg("--config").arg(&path);
    let guard = ChildGuard::spawn_combined(name, cmd, dir).unwrap();
    guard
        .wait_for_log_contains("NTS-KE listening", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("server did not start: {e}"));
    Server {
        guard,
        port,
        metrics: format!("127.0.0.1:{mport}").parse().unwrap(),
    }
}

fn acme_section(directory: &str, ca_roots: &Path, cache: &Path, extra: &str) -> String {
    let poll = if extra.contains("cache_poll_interval") {
        ""
    } else {
        "cache_poll_interval = 1"
    };
    format!(
        r#"domains = ["{DOMAIN}"]
contact = ["ops@{DOMAIN}"]
directory = "{directory}"
ca_roots = [{ca_roots:?}]
cache_dir = {cache:?}
retry_min = 1
retry_max = 4
{poll}
{extra}"#
    )
}

/// A time server sharing the KE server's cookie root secret (`dir/root.key`, written
/// here), so that NTS clients get authenticated responses and fresh cookies.
fn start_time_server(dir: &Path) -> testkit::stack::Daemon {
    let root = dir.join("root.key");
    testkit::stack::write_root_secret(&root).unwrap();
    testkit::stack::start_time_server(dir, &root, &testkit::stack::TimeServerOptions::default())
        .unwrap()
}

/// chrony, resolving DOMAIN to 127.0.0.1 and trusting `root`, completes NTS-KE with
/// the KE server on `port` (8 cookies) and gets authenticated NTP responses from the
/// time server the KE server names.
fn chrony_completes_nts_ke(port: u16, ntp_port: u16, root: &Path, dir: &Path) {
    let Some(bins) = testkit::peers::require_chrony() else {
        return;
    };
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n127.0.0.1 {DOMAIN}\n")).unwrap();
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644)).unwrap();
    let client = testkit::chrony::ChronyClient::builder(&bins)
        .nts_server(DOMAIN, port, ntp_port)
        .trusted_certs(root)
        .hosts_file(&hosts)
        .start()
        .unwrap();
    let auth = client
        .wait_for_cookies(8, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("chrony did not complete NTS-KE: {e}"));
    assert!(auth[0].cookies >= 8);
    assert!(auth[0].key_length > 0);
    client
        .wait_for_authenticated_response(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("chrony got no authenticated NTP response: {e}"));
}

fn assert_private(cache: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(cache).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        if meta.is_file() {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", e.path().display());
            n += 1;
        }
    }
    assert!(n >= 2, "account key and certificate in the cache");
}

async fn presented_cert(port: u16, root: &Path, alpn: &[&[u8]]) -> CertificateDer<'static> {
    let mut cfg = (*client_config(root)).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(DOMAIN.try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_on_the_nts_ke_listener() {
    let port = testkit::ports::free_port();
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port: port,
        http_port: testkit::ports::free_port(),
        validity: None,
        nonce_reject: 0,
    }) else {
        return;
    };
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    let acme = acme_section(
        &pebble.directory(),
        &pebble.listener_ca,
        &cache,
        &format!("challenge = \"tls-alpn-01\"\nchallenge_listen = \"127.0.0.1:{port}\""),
    );
    let time_server = start_time_server(dir.path());
    let server = start_server_ntp(
        "nts-ke-server",
        dir.path(),
        port,
        "",
        &acme,
        time_server.port(),
    );
    server.wait_log("ACME: new certificate stored", 60);
    assert!(server.count("answered_by=the NTS-KE listener") >= 1);
    assert!(server.metric("nts_ke_acme_challenge_answers_total{type=\"tls-alpn-01\"}") >= 1.0);
    assert_eq!(
        server.metric("nts_ke_acme_renewals_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(server.metric("nts_ke_acme_orders_total"), 1.0);
    assert!(server.metric("nts_ke_acme_certificate_expiry_seconds") > 1e9);
    // The validation handshakes were not counted as failed NTS-KE clients.
    assert_eq!(
        server.metric("nts_ke_connections_cut_off_total{reason=\"no_alpn\"}"),
        0.0
    );
    assert_eq!(
        server.metric("nts_ke_connections_cut_off_total{reason=\"handshake_failed\"}"),
        0.0
    );
    assert_private(&cache);

    let root = pebble.root();
    let ke = server.key_exchange(&root).await;
    assert_eq!(ke.cookies.len(), 8);

    // Ordinary clients must still negotiate ntske/1: a client offering only
    // something else is refused, one offering nothing is cut off as no_alpn.
    let mut cfg = (*client_config(&root)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(DOMAIN.try_into().unwrap(), tcp)
        .await;
    assert!(r.is_err(), "a client without ntske/1 completed a handshake");
    presented_cert(port, &root, &[]).await;
    let cut = testkit::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        (server.metric("nts_ke_connections_cut_off_total{reason=\"no_alpn\"}") >= 1.0).then_some(())
    });
    assert!(cut.is_some(), "no-ALPN client not cut off");
    // An acme-tls/1 hello with no challenge pending gets no certificate.
    let mut cfg = (*client_config(&root)).clone();
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(DOMAIN.try_into().unwrap(), tcp)
        .await;
    assert!(r.is_err(), "acme-tls/1 handshake with no challenge pending");

    chrony_completes_nts_ke(port, time_server.port(), &root, dir.path());
    assert!(server.metric("nts_ke_key_exchanges_total") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_its_own_listener() {
    let port = testkit::ports::free_port();
    let http_port = testkit::ports::free_port();
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port: testkit::ports::free_port(),
        http_port,
        validity: None,
        nonce_reject: 0,
    }) else {
        return;
    };
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    let acme = acme_section(
        &pebble.directory(),
        &pebble.listener_ca,
        &cache,
        &format!("challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{http_port}\""),
    );
    let time_server = start_time_server(dir.path());
    let server = start_server_ntp(
        "nts-ke-server",
        dir.path(),
        port,
        "",
        &acme,
        time_server.port(),
    );
    server.wait_log("ACME: new certificate stored", 60);
    assert!(server.metric("nts_ke_acme_challenge_answers_total{type=\"http-01\"}") >= 1.0);
    assert_eq!(server.metric("nts_ke_acme_orders_total"), 1.0);
    assert_private(&cache);
    // Nothing else is served on the challenge listener.
    let (status, _) = testkit::stack::http_get(
        format!("127.0.0.1:{http_port}").parse().unwrap(),
        "/.well-known/acme-challenge/unknown",
    )
    .unwrap();
    assert_eq!(status, 404);

    let root = pebble.root();
    assert_eq!(server.key_exchange(&root).await.cookies.len(), 8);
    chrony_completes_nts_ke(port, time_server.port(), &root, dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_cached_certificate_without_ordering() {
    let port = testkit::ports::free_port();
    let challenge_port = testkit::ports::free_port();
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port: challenge_port,
        http_port: testkit::ports::free_port(),
        validity: None,
        nonce_reject: 0,
    }) else {
        return;
    };
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    // TLS-ALPN-01 on a listener of its own this time.
    let acme = acme_section(
        &pebble.directory(),
        &pebble.listener_ca,
        &cache,
        &format!("challenge_listen = \"127.0.0.1:{challenge_port}\""),
    );
    let first = start_server("nts-ke-server-1", dir.path(), port, "", &acme);
    first.wait_log("ACME: new certificate stored", 60);
    assert!(first.count("answered_by=challenge listener") >= 1);
    let root = pebble.root();
    let cert = presented_cert(port, &root, &[b"ntske/1"]).await;
    assert_eq!(pebble.orders(), 1);
    first.guard.stop().unwrap();
    drop(first);

    let started = Instant::now();
    let second = start_server("nts-ke-server-2", dir.path(), port, "", &acme);
    second.wait_log("ACME: serving the cached certificate", 5);
    // In service from the first connection on.
    assert_eq!(presented_cert(port, &root, &[b"ntske/1"]).await, cert);
    assert_eq!(second.key_exchange(&root).await.cookies.len(), 8);
    assert!(started.elapsed() < Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(second.metric("nts_ke_acme_orders_total"), 0.0);
    assert_eq!(second.metric("nts_ke_acme_cache_loads_total"), 1.0);
    assert_eq!(second.count("ACME: order placed"), 0);
    assert_eq!(pebble.orders(), 1, "a new order reached the CA");
    assert!(second.metric("nts_ke_acme_certificate_expiry_seconds") > 1e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_nonce_rejections_are_retried() {
    let port = testkit::ports::free_port();
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port: port,
        http_port: testkit::ports::free_port(),
        validity: None,
        nonce_reject: 50,
    }) else {
        return;
    };
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    let acme = acme_section(
        &pebble.directory(),
        &pebble.listener_ca,
        &cache,
        &format!("challenge_listen = \"127.0.0.1:{port}\""),
    );
    let server = start_server("nts-ke-server", dir.path(), port, "", &acme);
    server.wait_log("ACME: new certificate stored", 90);
    let retries = server.metric("nts_ke_acme_bad_nonce_retries_total");
    assert!(
        retries >= 1.0,
        "pebble rejected no nonce (NONCEREJECT=50)?\n{}",
        pebble.pebble.logs()
    );
    assert!(server.count("badNonce") >= 1);
    // Recovered request by request: the order did not have to start over.
    assert_eq!(
        server.metric("nts_ke_acme_renewals_total{result=\"failed\"}"),
        0.0
    );
    assert_eq!(server.metric("nts_ke_acme_orders_total"), 1.0);
    let root = pebble.root();
    assert_eq!(server.key_exchange(&root).await.cookies.len(), 8);
}

/// A certificate for DOMAIN from a throw-away CA, a third of its life left (so due for renewal).
fn cached_bundle(ca_dir: &Path) -> (String, PathBuf, i64) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![DOMAIN.to_string()]).unwrap();
    let now = time_now();
    params.not_before = now - time::Duration::days(80);
    params.not_after = now + time::Duration::days(10);
    let not_after = params.not_after.unix_timestamp();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_path = ca_dir.join("cached-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    (
        format!("{}\n{}{}", key.serialize_pem(), cert.pem(), ca.pem()),
        ca_path,
        not_after,
    )
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A directory that accepts connections and answers 503 to everything.
async fn refusing_directory(pki: &TestPki) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ck = nts_ke_server::certificate::certified_key_from_pem(
        std::fs::read(pki.chain_path()).unwrap().as_slice(),
        std::fs::read(pki.key_path()).unwrap().as_slice(),
        &rustls::crypto::aws_lc_rs::default_provider(),
    )
    .unwrap();
    #[derive(Debug)]
    struct One(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for One {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(One(Arc::new(ck))));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "{\"type\":\"urn:ietf:params:acme:error:serverInternal\",\"detail\":\"down for maintenance\",\"status\":503}";
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_down_or_refusing_keeps_the_cached_certificate() {
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    std::fs::create_dir_all(&cache).unwrap();
    let pki = TestPki::generate_in(&dir.path().join("pki"), &["localhost", "127.0.0.1"]).unwrap();
    let (bundle, cached_ca, not_after) = cached_bundle(dir.path());

    for phase in ["down", "refusing"] {
        let (directory, _refuser) = match phase {
            // Nothing listens there.
            "down" => (
                format!("https://127.0.0.1:{}/dir", testkit::ports::free_port()),
                None,
            ),
            _ => {
                let (p, task) = refusing_directory(&pki).await;
                (format!("https://127.0.0.1:{p}/dir"), Some(task))
            }
        };
        let file = nts_ke_server::acme::cert_cache_path(&cache, &directory, &[DOMAIN.into()]);
        nts_ke_server::acme::write_private(&file, bundle.as_bytes()).unwrap();
        let port = testkit::ports::free_port();
        let acme = acme_section(&directory, pki.ca_path(), &cache, "");
        let server = start_server(
            &format!("nts-ke-server-{phase}"),
            dir.path(),
            port,
            "",
            &acme,
        );
        server.wait_log("ACME: serving the cached certificate", 5);
        // Attempts right away (renewal is due), then after 1, 2, 4, 4... seconds.
        server.wait_count("ACME: could not obtain a certificate", 3, 30);
        let log = server.guard.output();
        assert!(
            log.contains("keeping the current certificate in service"),
            "{log}"
        );
        assert!(log.contains("next attempt in 1s"), "{log}");
        assert!(log.contains("next attempt in 2s"), "{log}");
        if phase == "refusing" {
            assert!(
                log.contains("HTTP 503 serverInternal: down for maintenance"),
                "{log}"
            );
        }
        assert!(server.metric("nts_ke_acme_renewals_total{result=\"failed\"}") >= 3.0);
        assert!(server.metric("nts_ke_acme_consecutive_failures") >= 3.0);
        assert_eq!(
            server.metric("nts_ke_acme_renewals_total{result=\"ok\"}"),
            0.0
        );
        assert_eq!(
            server.metric("nts_ke_acme_certificate_expiry_seconds"),
            not_after as f64
        );
        // Still serving clients with the cached certificate, and ready.
        assert_eq!(server.key_exchange(&cached_ca).await.cookies.len(), 8);
        let (status, _) = testkit::stack::http_get(server.metrics, "/readyz").unwrap();
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_under_open_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = testkit::ports::free_port();
    // 30-second certificates: renewal is due 20 seconds after issue.
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port: port,
        http_port: testkit::ports::free_port(),
        validity: Some(30),
        nonce_reject: 0,
    }) else {
        return;
    };
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    let acme = acme_section(
        &pebble.directory(),
        &pebble.listener_ca,
        &cache,
        &format!("challenge_listen = \"127.0.0.1:{port}\""),
    );
    // Long enough to hold a connection open across the renewal.
    let server = start_server(
        "nts-ke-server",
        dir.path(),
        port,
        "request_timeout = 60.0",
        &acme,
    );
    server.wait_log("ACME: new certificate stored", 60);
    let root = pebble.root();
    let first = presented_cert(port, &root, &[b"ntske/1"]).await;

    // A connection with the first certificate, request not sent yet.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut open_conn = tokio_rustls::TlsConnector::from(client_config(&root))
        .connect(DOMAIN.try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(open_conn.get_ref().1.peer_certificates().unwrap()[0], first);

    server.wait_count("ACME: new certificate stored", 2, 60);
    let second = presented_cert(port, &root, &[b"ntske/1"]).await;
    assert_ne!(second, first, "new handshakes get the renewed certificate");
    assert_eq!(
        server.metric("nts_ke_acme_renewals_total{result=\"ok\"}"),
        2.0
    );
    assert_eq!(pebble.orders(), 2);
    assert_eq!(server.key_exchange(&root).await.cookies.len(), 8);

    // The connection opened before the renewal completes its exchange.
    let mut req = Vec::new();
    nts_proto::ke_record::Record::NextProtocol(vec![0]).encode(true, &mut req);
    nts_proto::ke_record::Record::AeadAlgorithm(vec![15]).encode(true, &mut req);
    nts_proto::ke_record::Record::EndOfMessage.encode(true, &mut req);
    open_conn.write_all(&req).await.unwrap();
    let mut resp = Vec::new();
    open_conn.read_to_end(&mut resp).await.unwrap();
    let r = nts_proto::ke_client::ResponseDecoder::new()
        .feed(&resp)
        .unwrap()
        .unwrap();
    assert_eq!(r.cookies.len(), 8);
    // The cache holds the renewed certificate.
    let file = nts_ke_server::acme::cert_cache_path(&cache, &pebble.directory(), &[DOMAIN.into()]);
    let cached: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&file)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(cached[0], second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_cache_order_once() {
    use std::os::unix::io::AsRawFd;
    let http_a = testkit::ports::free_port();
    let Some(pebble) = Pebble::start(PebbleOptions {
        tls_port: testkit::ports::free_port(),
        http_port: http_a,
        validity: None,
        nonce_reject: 0,
    }) else {
        return;
    };
    let dir = open_tempdir();
    let cache = dir.path().join("acme");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Hold the order lock while both replicas start, as a third replica would.
    let lock = std::fs::File::create(cache.join("order.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0);
    // The CA validates HTTP-01 on A's port only; B looks at the cache more often,
    // so B gets the lock first and orders, and A answers B's challenge.
    let a = start_server(
        "replica-a",
        dir.path(),
        testkit::ports::free_port(),
        "",
        &acme_section(
            &pebble.directory(),
            &pebble.listener_ca,
            &cache,
            &format!(
                "challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{http_a}\"\ncache_poll_interval = 5"
            ),
        ),
    );
    a.wait_log("another replica is ordering", 10);
    let b = start_server(
        "replica-b",
        dir.path(),
        testkit::ports::free_port(),
        "",
        &acme_section(
            &pebble.directory(),
            &pebble.listener_ca,
            &cache,
            &format!(
                "challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{}\"\ncache_poll_interval = 0.5",
                testkit::ports::free_port()
            ),
        ),
    );
    b.wait_log("another replica is ordering", 10);
    drop(lock);

    b.wait_log("ACME: new certificate stored", 60);
    a.wait_log("took a newer certificate from the cache", 30);
    assert_eq!(pebble.orders(), 1);
    assert_eq!(b.metric("nts_ke_acme_orders_total"), 1.0);
    assert_eq!(a.metric("nts_ke_acme_orders_total"), 0.0);
    // A answered the validation of B's order from the shared challenge file.
    assert!(a.metric("nts_ke_acme_challenge_answers_total{type=\"http-01\"}") >= 1.0);
    assert_eq!(
        b.metric("nts_ke_acme_challenge_answers_total{type=\"http-01\"}"),
        0.0
    );
    let root = pebble.root();
    let ca = presented_cert(a.port, &root, &[b"ntske/1"]).await;
    let cb = presented_cert(b.port, &root, &[b"ntske/1"]).await;
    assert_eq!(ca, cb, "both replicas serve the one certificate");
    assert_eq!(a.key_exchange(&root).await.cookies.len(), 8);
    // Challenge answers are withdrawn once validated.
    assert_eq!(
        std::fs::read_dir(cache.join("challenges")).unwrap().count(),
        0
    );
}
