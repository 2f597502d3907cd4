//! The KE and time servers started as root with `server.user`, every key and
//! certificate owned by root with mode 0600: both start, run as that user,
//! key sync works, and a certificate renewed on disk is served without a
//! restart (read through the privileged file-reading helper).

use nts_ke_server::dev_pki::{self, DevPki};
use rcgen::ExtendedKeyUsagePurpose;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::ports::free_port;
use testkit::stack::{self, cargo_bin};

/// An unprivileged system user to drop to: `nobody` (present on Debian).
const USER: &str = "nobody";

fn private(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leaf certificate the KE server presents now.
async fn served_leaf(port: u16, ca: &Path) -> Vec<u8> {
    let roots = nts_client::ke::root_store(&[ca], false).unwrap();
    let cfg = nts_client::ke::tls_config(roots);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_only_keys_load_before_and_after_the_privilege_drop() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let Ok(Some(user)) = nix::unistd::User::from_name(USER) else {
        eprintln!("skipped: no user {USER}");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let root = tmp.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    for p in [
        &pki.server_cert,
        &pki.server_key,
        &pki.keysync_cert,
        &pki.keysync_key,
        &pki.time_server_cert,
        &pki.time_server_key,
        &pki.ca_cert,
        &root,
    ] {
        private(p);
    }
    let (port, mport, ks_port) = (free_port(), free_port(), free_port());
    let ke_config = stack::KeySyncKeConfig {
        listen: vec![format!("127.0.0.1:{port}")],
        tls_chain: &pki.server_cert,
        tls_key: &pki.server_key,
        fallback: Some(("127.0.0.1", None)),
        root_secret: &root,
        rotation: None,
        key_sync_port: ks_port,
        client_ca: &pki.ca_cert,
        key_sync_chain: &pki.keysync_cert,
        key_sync_key: &pki.keysync_key,
        report_interval: 0.5,
        expiry: 2.0,
        metrics_port: mport,
        server_extra: format!("user = \"{USER}\""),
        tls_extra: "reload_interval = 0.2".into(),
    }
    .render();
    let ke_dir = tmp.path().join("ke");
    std::fs::create_dir_all(&ke_dir).unwrap();
    let ke = stack::start_daemon(
        "ke",
        cargo_bin("nts-ke-server", "nts-ke-server"),
        &ke_config,
        &ke_dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTS-KE listening",
    )
    .unwrap();
    let (ntp_port, ts_mport) = (free_port(), free_port());
    let ts_config = format!(
        r#"[server]
listen = ["127.0.0.1:{ntp_port}"]
workers = 1
user = "{USER}"
[clock]
local_reference = true
[key_sync]
endpoints = ["127.0.0.1:{ks_port}"]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
server_name = "localhost"
server_id = "time-server:{ntp_port}"
max_backoff = 1.0
[metrics]
listen = "127.0.0.1:{ts_mport}"
[log]
level = "debug"
"#,
        ca = pki.ca_cert,
        cert = pki.time_server_cert,
        key = pki.time_server_key,
    );
    let ts_dir = tmp.path().join("ts");
    std::fs::create_dir_all(&ts_dir).unwrap();
    let ts = stack::start_daemon(
        "ts",
        cargo_bin("nts-time-server", "nts-time-server"),
        &ts_config,
        &ts_dir,
        SocketAddr::from(([127, 0, 0, 1], ntp_port)),
        SocketAddr::from(([127, 0, 0, 1], ts_mport)),
        "NTP listening",
    )
    .unwrap();
    assert_eq!(
        uid_of(ke.guard.pid()),
        user.uid.as_raw(),
        "KE server dropped"
    );
    assert_eq!(
        uid_of(ts.guard.pid()),
        user.uid.as_raw(),
        "time server dropped"
    );
    wait_for(Duration::from_secs(20), "registration", || {
        ke.metric("nts_ke_registered_time_servers{state=\"alive\"}") == 1.0
    });
    assert!(ts.ready(), "time server holds keys");

    // Renew the KE certificate on disk (root, 0600): served without a restart.
    let before = served_leaf(port, &pki.ca_cert).await;
    let (cert, key) = dev_pki::issue(
        &pki,
        &["localhost", "127.0.0.1"],
        &[ExtendedKeyUsagePurpose::ServerAuth],
    )
    .unwrap();
    let tmp_key = pki.server_key.with_extension("new");
    std::fs::write(&tmp_key, key).unwrap();
    private(&tmp_key);
    let tmp_cert = pki.server_cert.with_extension("new");
    std::fs::write(&tmp_cert, cert.as_bytes()).unwrap();
    private(&tmp_cert);
    std::fs::rename(&tmp_key, &pki.server_key).unwrap();
    std::fs::rename(&tmp_cert, &pki.server_cert).unwrap();
    let want = rustls_pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .unwrap();
    let t0 = Instant::now();
    loop {
        let now = served_leaf(port, &pki.ca_cert).await;
        if now == want {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "renewed certificate not served\n{}",
            ke.guard.logs()
        );
        assert_eq!(now, before);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ke.metric("nts_ke_certificate_reloads_total{result=\"failed\"}"),
        0.0
    );
    assert!(!ke.guard.logs().contains("Permission denied"));
    // Every certificate in service has its expiry exported.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for c in ["tls", "key_sync"] {
        let t = ke.metric(&format!(
            "nts_ke_certificate_expiry_seconds{{certificate=\"{c}\"}}"
        ));
        assert!(t > now, "{c}: {t}");
    }
}
