//! Graceful drain on SIGTERM (issue 20), with real processes on loopback: a
//! time server tells the KE to stop handing it out at once and keeps
//! answering for its grace period; a KE replica turns not ready at once,
//! keeps answering key exchanges for its drain delay (the load balancer's
//! endpoint lag), then stops accepting and exits.

use nts_ke_server::dev_pki::DevPki;
use nts_proto::aead::AeadAlgorithm;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::ports::free_port;
use testkit::stack::{self, cargo_bin, Daemon};

const FALLBACK_PORT: u16 = 9;

fn start(
    name: &str,
    bin: &str,
    dir: &std::path::Path,
    config: &str,
    port: u16,
    mport: u16,
    ready: &str,
) -> Daemon {
    stack::start_daemon(
        name,
        cargo_bin(bin, bin),
        config,
        dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        ready,
    )
    .unwrap()
}

/// The NTP port one key exchange hands out, or the error.
async fn handed_out(ke_port: u16, pki: &DevPki) -> Result<u16, String> {
    let roots = nts_client::ke::root_store(&[pki.ca_cert.as_path()], false).unwrap();
    nts_client::ke::key_exchange(
        "127.0.0.1",
        ke_port,
        nts_client::ke::tls_config(roots),
        &AeadAlgorithm::ALL,
        Duration::from_secs(2),
    )
    .await
    .map(|o| o.ntp_port)
    .map_err(|e| e.to_string())
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_server_and_ke_drain_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(tmp.path()).unwrap();
    let root = tmp.path().join("root.key");
    stack::write_root_secret(&root).unwrap();
    let (kport, kmport, ks_port) = (free_port(), free_port(), free_port());
    let ke_cfg = stack::KeySyncKeConfig {
        listen: vec![format!("127.0.0.1:{kport}")],
        tls_chain: &pki.server_cert,
        tls_key: &pki.server_key,
        fallback: Some(("127.0.0.1", Some(FALLBACK_PORT))),
        root_secret: &root,
        rotation: None,
        key_sync_port: ks_port,
        client_ca: &pki.ca_cert,
        key_sync_chain: &pki.keysync_cert,
        key_sync_key: &pki.keysync_key,
        report_interval: 0.5,
        expiry: 5.0,
        metrics_port: kmport,
        server_extra: "drain_delay = 1.5".into(),
        tls_extra: String::new(),
    }
    .render();
    let ke = start(
        "ke",
        "nts-ke-server",
        tmp.path(),
        &ke_cfg,
        kport,
        kmport,
        "NTS-KE listening",
    );
    let (tport, tmport) = (free_port(), free_port());
    let ts_cfg = format!(
        r#"[server]
listen = ["127.0.0.1:{tport}"]
workers = 1
drain_grace = 2.0
[clock]
local_reference = true
[key_sync]
endpoints = ["127.0.0.1:{ks_port}"]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
server_id = "time-server:{tport}"
server_name = "localhost"
[metrics]
listen = "127.0.0.1:{tmport}"
"#,
        ca = pki.ca_cert,
        cert = pki.time_server_cert,
        key = pki.time_server_key,
    );
    let ts = start(
        "ts",
        "nts-time-server",
        tmp.path(),
        &ts_cfg,
        tport,
        tmport,
        "NTP listening",
    );
    let t0 = Instant::now();
    while handed_out(kport, &pki).await != Ok(tport) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "time server never handed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The time server: SIGTERM, and the KE stops handing it out within a second.
    ts.guard.signal(libc::SIGTERM).unwrap();
    let t0 = Instant::now();
    loop {
        match handed_out(kport, &pki).await {
            Ok(p) if p == tport => {}
            Ok(p) => {
                assert_eq!(p, FALLBACK_PORT);
                break;
            }
            Err(e) => panic!("key exchange failed while a time server drained: {e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "still handed out 1 s after SIGTERM"
        );
    }
    let left = t0.elapsed();
    assert!(
        ts.guard.is_running(),
        "the time server must keep answering during its grace period"
    );
    assert_eq!(stack::http_get(ts.metrics, "/readyz").unwrap().0, 503);
    assert_eq!(ts.metric("nts_time_draining"), 1.0);
    wait_for(Duration::from_secs(5), "the time server to exit", || {
        !ts.guard.is_running()
    });
    let ts_exit = t0.elapsed();
    assert!(
        ts_exit >= Duration::from_secs(2),
        "left before its grace period: {ts_exit:?}"
    );
    assert!(ts.guard.exit_status().unwrap().unwrap().success());

    // The KE: SIGTERM, not ready at once, key exchanges answered for the drain delay.
    ke.guard.signal(libc::SIGTERM).unwrap();
    let t0 = Instant::now();
    wait_for(Duration::from_millis(500), "KE not ready", || {
        stack::http_get(ke.metrics, "/readyz").is_ok_and(|r| r.0 == 503)
    });
    let mut answered = 0;
    while t0.elapsed() < Duration::from_millis(1200) {
        handed_out(kport, &pki)
            .await
            .unwrap_or_else(|e| panic!("key exchange refused during the drain delay: {e}"));
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(Duration::from_secs(5), "the KE to exit", || {
        !ke.guard.is_running()
    });
    let ke_exit = t0.elapsed();
    assert!(
        ke_exit >= Duration::from_millis(1500),
        "KE left before its drain delay: {ke_exit:?}"
    );
    assert!(ke.guard.exit_status().unwrap().unwrap().success());
    println!(
        "time server no longer handed out {left:?} after SIGTERM, exited after {ts_exit:?}; \
         KE answered {answered} key exchanges while draining, exited after {ke_exit:?}"
    );
}
