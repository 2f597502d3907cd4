//! The key-sync link under abuse and misconfiguration, against a real
//! `nts-ke-server` process: registrations bound to the peer certificate,
//! validated addresses, readiness that needs a live time server (or an
//! explicit fallback), the handshake limit, and an IPv6 client handed an IPv6
//! time server address. Time servers are played by a gRPC client here, so
//! each case controls exactly what is registered.

use hyper_util::rt::TokioIo;
use nts_ke_server::dev_pki::{self, DevPki};
use nts_proto::key_sync::pb::key_sync_client::KeySyncClient;
use nts_proto::key_sync::pb::{LoadReport, NtpEndpoint, RegisterRequest, TimeServerInfo};
use rcgen::ExtendedKeyUsagePurpose;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::ports::free_port;
use testkit::stack::{self, cargo_bin, Daemon};

struct Ke {
    d: Daemon,
    ks_port: u16,
    dir: std::path::PathBuf,
    config: String,
}

fn ke_config(pki: &DevPki, dir: &Path, ports: (u16, u16, u16), listen: &str, ntp: &str) -> String {
    let (port, mport, ks_port) = ports;
    let root = dir.join("root.key");
    if !root.exists() {
        stack::write_root_secret(&root).unwrap();
    }
    format!(
        r#"[server]
listen = [{listen}]
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
{ntp}
[cookie_keys]
root_secret_file = {root:?}
[key_sync]
listen = "127.0.0.1:{ks_port}"
client_ca = {ca:?}
certificate_chain = {ks_chain:?}
private_key = {ks_key:?}
report_interval = 0.5
expiry = 2.0
max_handshakes = 2
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
"#,
        listen = listen.replace("PORT", &port.to_string()),
        chain = pki.server_cert,
        key = pki.server_key,
        ca = pki.ca_cert,
        ks_chain = pki.keysync_cert,
        ks_key = pki.keysync_key,
    )
}

fn start_ke(dir: &Path, pki: &DevPki, listen: &str, ntp: &str) -> Ke {
    start_ke_edited(dir, pki, listen, ntp, |c| c)
}

/// [`start_ke`] with the configuration passed through `edit` first.
fn start_ke_edited(
    dir: &Path,
    pki: &DevPki,
    listen: &str,
    ntp: &str,
    edit: impl FnOnce(String) -> String,
) -> Ke {
    let ports = (free_port(), free_port(), free_port());
    let config = edit(ke_config(pki, dir, ports, listen, ntp));
    let d = launch(dir, &config, ports.0, ports.1);
    Ke {
        d,
        ks_port: ports.2,
        dir: dir.to_path_buf(),
        config,
    }
}

fn launch(dir: &Path, config: &str, port: u16, mport: u16) -> Daemon {
    stack::start_daemon(
        "ke",
        cargo_bin("nts-ke-server", "nts-ke-server"),
        config,
        dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTS-KE listening",
    )
    .unwrap()
}

/// A key-sync client presenting a certificate for `names`, issued by the development CA.
fn client_tls(pki: &DevPki, names: &[&str]) -> Arc<rustls::ClientConfig> {
    let (cert, key) = dev_pki::issue(pki, names, &[ExtendedKeyUsagePurpose::ClientAuth]).unwrap();
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = nts_ops::tls_provider::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

async fn connect(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> KeySyncClient<tonic::transport::Channel> {
    try_connect(port, tls).await.unwrap()
}

async fn try_connect(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<KeySyncClient<tonic::transport::Channel>, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let s = tokio_rustls::TlsConnector::from(tls)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(s))
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_with_connector(connector)
        .await?;
    Ok(KeySyncClient::new(channel))
}

fn info(id: &str, host: &str, port: u32) -> TimeServerInfo {
    TimeServerInfo {
        server_id: id.into(),
        ntp_host: host.into(),
        ntp_port: port,
        workers: 1,
        timestamping: "software".into(),
        alternates: Vec::new(),
    }
}

async fn report(client: &mut KeySyncClient<tonic::transport::Channel>, i: &TimeServerInfo) {
    client
        .report(LoadReport {
            info: Some(i.clone()),
            requests_per_second: 0.0,
            has_keys: true,
            healthy: true,
            ..Default::default()
        })
        .await
        .unwrap();
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ke_client_tls(pki: &DevPki) -> Arc<rustls::ClientConfig> {
    let roots = nts_client::ke::root_store(&[pki.ca_cert.as_path()], false).unwrap();
    nts_client::ke::tls_config(roots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_bound_to_the_certificate_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let ke = start_ke(
        tmp.path(),
        &pki,
        "\"127.0.0.1:PORT\"",
        "[ntp]\nserver = \"127.0.0.1\"\nport = 9",
    );
    // A time server with a valid certificate for ts-a.
    let mut a = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    let own = info("ts-a.test:123", "127.0.0.1", 123);
    a.register(RegisterRequest {
        info: Some(own.clone()),
    })
    .await
    .expect("own identity registers");
    // The same peer claiming ts-b's identity: refused, on Register and on Report.
    let stolen = info("ts-b.test:123", "127.0.0.1", 124);
    let e = a
        .register(RegisterRequest {
            info: Some(stolen.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = a
        .report(LoadReport {
            info: Some(stolen),
            requests_per_second: 0.0,
            has_keys: true,
            healthy: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // Its own identity with an unusable address: refused as invalid.
    for (host, port) in [("0.0.0.0", 123), ("127.0.0.1", 0), ("127.0.0.1", 70_000)] {
        let e = a
            .register(RegisterRequest {
                info: Some(info("ts-a.test", host, port)),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{host}:{port}: {e}");
    }
    assert_eq!(
        ke.d.metric("nts_ke_key_sync_registrations_refused_total{reason=\"identity\"}"),
        2.0
    );
    assert_eq!(
        ke.d.metric("nts_ke_key_sync_registrations_refused_total{reason=\"address\"}"),
        3.0
    );
    // Only the honest registration is in the registry.
    let (_, body) = stack::http_get(ke.d.metrics, "/metrics").unwrap();
    assert!(body.contains("server_id=\"ts-a.test:123\""), "{body}");
    assert!(!body.contains("ts-b.test"), "{body}");
    assert!(ke.d.guard.logs().contains("key-sync registration refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_with_a_live_time_server_and_no_implicit_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    // No [ntp] section: with key sync there is no fallback at all.
    let mut ke = start_ke(tmp.path(), &pki, "\"127.0.0.1:PORT\"", "");
    let (_, why) = stack::http_get(ke.d.metrics, "/readyz").unwrap();
    assert!(!ke.d.ready(), "ready with no time server: {why}");
    assert!(why.contains("no live time server"), "{why}");
    // A key exchange now gets an error, never "this host".
    let e = nts_client::ke::key_exchange(
        "127.0.0.1",
        ke.d.port(),
        ke_client_tls(&pki),
        &nts_proto::aead::AeadAlgorithm::ALL,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(format!("{e}").to_lowercase().contains("internal"), "{e}");
    assert_eq!(
        ke.d.metric("nts_ke_server_negotiation_total{source=\"none\"}"),
        1.0
    );

    let mut ts = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    let i = info("ts-a.test", "127.0.0.1", 4123);
    ts.register(RegisterRequest {
        info: Some(i.clone()),
    })
    .await
    .unwrap();
    assert!(!ke.d.ready(), "registered without keys is not live");
    report(&mut ts, &i).await;
    assert!(ke.d.ready());
    let ok = nts_client::ke::key_exchange(
        "127.0.0.1",
        ke.d.port(),
        ke_client_tls(&pki),
        &nts_proto::aead::AeadAlgorithm::ALL,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!((ok.ntp_server.as_str(), ok.ntp_port), ("127.0.0.1", 4123));
    // Silent past the expiry: not ready any more.
    wait_for(Duration::from_secs(5), "expiry", || !ke.d.ready());

    // A restarted replica is not ready until a time server registered again.
    report(&mut ts, &i).await;
    assert!(ke.d.ready());
    ke.d.guard.stop().unwrap();
    ke.d = launch(&ke.dir, &ke.config, ke.d.port(), ke.d.metrics.port());
    assert!(
        !ke.d.ready(),
        "restarted replica ready before any registration"
    );
    let mut ts = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    report(&mut ts, &i).await;
    assert!(ke.d.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sync_handshakes_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let ke = start_ke(
        tmp.path(),
        &pki,
        "\"127.0.0.1:PORT\"",
        "[ntp]\nserver = \"127.0.0.1\"",
    );
    // max_handshakes = 2: connections that never finish their handshake take
    // the slots, and every newer one closes the oldest of them.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", ke.ks_port))
                .await
                .unwrap(),
        );
    }
    wait_for(Duration::from_secs(5), "evictions", || {
        ke.d.metric("nts_ke_key_sync_evicted_total{reason=\"prefix_full\"}") >= 4.0
    });
    assert!(ke.d.metric("nts_ke_key_sync_handshakes_in_progress") <= 2.0);
    // A real time server gets through while they are still open.
    let mut ts = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    ts.register(RegisterRequest {
        info: Some(info("ts-a.test", "127.0.0.1", 123)),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_gets_an_ipv6_time_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    // One dual-stack listener on [::]: IPv4 clients arrive as IPv4-mapped addresses.
    let ke = start_ke(tmp.path(), &pki, "\"[::]:PORT\"", "");
    let mut ts = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    let mut i = info("ts-a.test", "127.0.0.1", 4123);
    i.alternates = vec![NtpEndpoint {
        host: "::1".into(),
        port: 4124,
    }];
    ts.register(RegisterRequest {
        info: Some(i.clone()),
    })
    .await
    .unwrap();
    report(&mut ts, &i).await;
    for (connect, want) in [("::1", ("::1", 4124)), ("127.0.0.1", ("127.0.0.1", 4123))] {
        let got = nts_client::ke::key_exchange(
            connect,
            ke.d.port(),
            ke_client_tls(&pki),
            &nts_proto::aead::AeadAlgorithm::ALL,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{connect}: {e}\n{}", ke.d.guard.logs()));
        assert_eq!((got.ntp_server.as_str(), got.ntp_port), want, "{connect}");
    }
}

/// Keep `n` TCP connections from `source` to `port` open and silent, each
/// reopened as soon as the server closes it: the idle flood of the red-team
/// report (issue 21). The tasks end when the returned handles are aborted.
fn idle_flood(source: IpAddr, port: u16, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::AsyncReadExt;
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                loop {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind(SocketAddr::new(source, 0)).unwrap();
                    match sock.connect(SocketAddr::from(([127, 0, 0, 1], port))).await {
                        Ok(mut s) => {
                            let mut b = [0u8; 256];
                            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect()
}

/// How long a time server (from 127.0.0.1) needs to connect and register,
/// retrying as the real one does; `None` when it did not within `limit`.
async fn time_to_register(pki: &DevPki, port: u16, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let attempt = async {
            let mut c = try_connect(port, client_tls(pki, &["ts-a.test"]))
                .await
                .ok()?;
            c.register(RegisterRequest {
                info: Some(info("ts-a.test", "127.0.0.1", 123)),
            })
            .await
            .ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_does_not_starve_key_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    // Default key_sync limits: the flood must not win against what operators run.
    let ke = start_ke_edited(
        tmp.path(),
        &pki,
        "\"127.0.0.1:PORT\"",
        "[ntp]\nserver = \"127.0.0.1\"",
        |c| c.replace("max_handshakes = 2\n", ""),
    );
    let baseline = time_to_register(&pki, ke.ks_port, Duration::from_secs(5))
        .await
        .expect("registers without a flood");
    // 80 idle connections from another address, then from the time server's own.
    for source in ["127.0.0.2", "127.0.0.1"] {
        let flood = idle_flood(source.parse().unwrap(), ke.ks_port, 80);
        wait_for(
            Duration::from_secs(5),
            "the flood to fill the slots",
            || {
                ke.d.metric("nts_ke_key_sync_handshakes_in_progress") >= 8.0
                    || ke.d.metric("nts_ke_key_sync_busy_total") >= 16.0
                    || ke
                        .d
                        .metric("nts_ke_key_sync_evicted_total{reason=\"prefix_full\"}")
                        >= 16.0
            },
        );
        let took = time_to_register(&pki, ke.ks_port, Duration::from_secs(5)).await;
        for f in &flood {
            f.abort();
        }
        let took = took.unwrap_or_else(|| {
            panic!(
                "no registration within 5 s under 80 idle connections from {source} \
                 (without them: {baseline:?})\n{}",
                ke.d.guard.logs()
            )
        });
        println!(
            "registered in {took:?} under an idle flood from {source} (baseline {baseline:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_networks_reach_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let ke = start_ke_edited(
        tmp.path(),
        &pki,
        "\"127.0.0.1:PORT\"",
        "[ntp]\nserver = \"127.0.0.1\"",
        |c| {
            c.replace(
                "max_handshakes = 2\n",
                "allowed_networks = [\"127.0.0.0/31\"]\n",
            )
        },
    );
    // 127.0.0.1 is inside: a time server registers.
    let mut ts = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    ts.register(RegisterRequest {
        info: Some(info("ts-a.test", "127.0.0.1", 123)),
    })
    .await
    .unwrap();
    // 127.0.0.3 is outside: closed before any TLS byte, and counted.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut s = sock
        .connect(SocketAddr::from(([127, 0, 0, 1], ke.ks_port)))
        .await
        .unwrap();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut s, &mut b),
    )
    .await
    .expect("closed at once")
    .unwrap_or(0);
    assert_eq!(n, 0);
    wait_for(Duration::from_secs(2), "the refusal counted", || {
        ke.d.metric("nts_ke_key_sync_not_allowed_total") == 1.0
    });
}

/// The rogue-server scenario of the red-team report (issue 21): a stolen
/// time-server certificate registers many `name:suffix` entries, one at an
/// address of the attacker's choice, and waits for clients to be sent there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_cannot_register_without_bounds_or_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let ke = start_ke_edited(tmp.path(), &pki, "\"127.0.0.1:PORT\"", "", |c| {
        c.replace(
            "max_handshakes = 2\n",
            "max_registrations_per_certificate = 3\nadvertise_networks = [\"127.0.0.0/8\"]\n",
        )
    });
    let mut stolen = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    // Three entries for one certificate are fine; the fourth is refused.
    for i in 1..=3 {
        let own = info(&format!("ts-a.test:{i}"), "127.0.0.1", 4000 + i);
        stolen
            .register(RegisterRequest {
                info: Some(own.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("entry {i}: {e}"));
        report(&mut stolen, &own).await;
    }
    let fourth = info("ts-a.test:4", "127.0.0.1", 4004);
    let e = stolen
        .register(RegisterRequest {
            info: Some(fourth.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    let e = stolen
        .report(LoadReport {
            info: Some(fourth),
            requests_per_second: 0.0,
            has_keys: true,
            healthy: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    // An existing entry moved to an address outside the allowed networks: refused.
    let rogue = info("ts-a.test:1", "192.0.2.66", 123);
    let e = stolen
        .report(LoadReport {
            info: Some(rogue.clone()),
            requests_per_second: 0.0,
            has_keys: true,
            healthy: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // No client is ever sent to the rogue address.
    for _ in 0..12 {
        let got = nts_client::ke::key_exchange(
            "127.0.0.1",
            ke.d.port(),
            ke_client_tls(&pki),
            &nts_proto::aead::AeadAlgorithm::ALL,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(got.ntp_server, "127.0.0.1", "sent to {}", got.ntp_server);
    }
    assert_eq!(
        ke.d.metric("nts_ke_key_sync_registrations_refused_total{reason=\"limit\"}"),
        2.0
    );
    assert_eq!(
        ke.d.metric("nts_ke_key_sync_registrations_refused_total{reason=\"address\"}"),
        1.0
    );
    assert!(ke.d.guard.logs().contains("192.0.2.66"));
}

/// A certificate listed in key_sync.revoked_certificates gets nothing: no
/// registration, no key set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let (cert, key) = dev_pki::issue(
        &pki,
        &["ts-lost.test"],
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )
    .unwrap();
    let der = CertificateDer::pem_slice_iter(cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    use sha2::Digest;
    let fp = sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let ke = start_ke_edited(
        tmp.path(),
        &pki,
        "\"127.0.0.1:PORT\"",
        "[ntp]\nserver = \"127.0.0.1\"",
        |c| {
            c.replace(
                "max_handshakes = 2\n",
                &format!("revoked_certificates = [{fp:?}]\n"),
            )
        },
    );
    let chain = vec![der];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = nts_ops::tls_provider::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let lost = try_connect(ke.ks_port, Arc::new(cfg)).await;
    let refused = match lost {
        Err(_) => true,
        Ok(mut c) => {
            let r = c
                .register(RegisterRequest {
                    info: Some(info("ts-lost.test", "127.0.0.1", 123)),
                })
                .await;
            let w = c
                .watch_keys(nts_proto::key_sync::pb::WatchKeysRequest {
                    server_id: "ts-lost.test".into(),
                })
                .await;
            r.is_err() && w.is_err()
        }
    };
    assert!(refused, "a revoked certificate was served");
    assert!(ke.d.metric("nts_ke_key_sync_registrations_refused_total{reason=\"revoked\"}") >= 1.0);
    // Another certificate from the same CA still works.
    let mut ok = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    ok.register(RegisterRequest {
        info: Some(info("ts-a.test", "127.0.0.1", 123)),
    })
    .await
    .unwrap();
}

/// WatchKeys streams are bounded: only a registered server_id may watch, and
/// a third watch for one id ends the oldest (a time server holds one per
/// replica, plus one while a reconnect overlaps). Before, one connection
/// opened 10,000 streams and took the KE from 10.7 MB to 77 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_watches_are_bounded_per_time_server() {
    use nts_proto::key_sync::pb::WatchKeysRequest;
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let ke = start_ke(
        tmp.path(),
        &pki,
        "\"127.0.0.1:PORT\"",
        "[ntp]\nserver = \"127.0.0.1\"",
    );
    let mut c = connect(ke.ks_port, client_tls(&pki, &["ts-a.test"])).await;
    let watch = |id: &str| WatchKeysRequest {
        server_id: id.into(),
    };
    let e = c.watch_keys(watch("ts-a.test:9")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    c.register(RegisterRequest {
        info: Some(info("ts-a.test:9", "127.0.0.1", 123)),
    })
    .await
    .unwrap();
    let mut first = c
        .watch_keys(watch("ts-a.test:9"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        first.message().await.unwrap().is_some(),
        "a key set at once"
    );
    let mut second = c
        .watch_keys(watch("ts-a.test:9"))
        .await
        .unwrap()
        .into_inner();
    assert!(second.message().await.unwrap().is_some());
    let mut third = c
        .watch_keys(watch("ts-a.test:9"))
        .await
        .unwrap()
        .into_inner();
    assert!(third.message().await.unwrap().is_some());
    let ended = tokio::time::timeout(Duration::from_secs(2), first.message())
        .await
        .expect("the oldest watch ends at once");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    wait_for(Duration::from_secs(2), "two watchers left", || {
        ke.d.metric("nts_ke_key_watchers") == 2.0
    });
}
