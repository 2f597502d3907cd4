//! A time server that advertises an IPv4 and an IPv6 address over key sync,
//! and a KE server on a dual-stack `[::]` listener: a client that reaches the
//! KE server over IPv6 is sent to the IPv6 address and gets authenticated time
//! there; an IPv4 client is sent to the IPv4 address.

use nts_ke_server::dev_pki::DevPki;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::ports::free_port;
use testkit::stack::{self, cargo_bin};

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ipv6_clients_are_sent_to_the_ipv6_address() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let root = tmp.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let (port, mport, ks_port) = (free_port(), free_port(), free_port());
    let ke_config = stack::KeySyncKeConfig {
        listen: vec![format!("[::]:{port}")],
        tls_chain: &pki.server_cert,
        tls_key: &pki.server_key,
        fallback: None,
        root_secret: &root,
        rotation: None,
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
listen = ["127.0.0.1:{ntp_port}", "[::1]:{ntp_port}"]
workers = 1
[clock]
local_reference = true
[key_sync]
endpoints = ["127.0.0.1:{ks_port}"]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
server_name = "localhost"
advertise = "127.0.0.1:{ntp_port}"
advertise_also = ["[::1]:{ntp_port}"]
server_id = "time-server:{ntp_port}"
max_backoff = 1.0
[metrics]
listen = "127.0.0.1:{ts_mport}"
"#,
        ca = pki.ca_cert,
        cert = pki.time_server_cert,
        key = pki.time_server_key,
    );
    let ts_dir = tmp.path().join("ts");
    std::fs::create_dir_all(&ts_dir).unwrap();
    let _ts = stack::start_daemon(
        "ts",
        cargo_bin("nts-time-server", "nts-time-server"),
        &ts_config,
        &ts_dir,
        SocketAddr::from(([127, 0, 0, 1], ntp_port)),
        SocketAddr::from(([127, 0, 0, 1], ts_mport)),
        "NTP listening",
    )
    .unwrap();
    wait_for(Duration::from_secs(20), "registration", || ke.ready());

    let client = cargo_bin("nts-client", "nts-client");
    for (ke_host, want) in [
        (format!("[::1]:{port}"), format!("[::1]:{ntp_port}")),
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{ntp_port}")),
    ] {
        let out = Command::new(&client)
            .args(["query", "--brief", "--no-system-roots", "--ca"])
            .arg(&pki.ca_cert)
            .arg(&ke_host)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{ke_host}: {text}");
        assert!(
            text.contains(&want) && text.contains("authenticated"),
            "{ke_host}: expected time from {want}: {text}"
        );
    }
}
