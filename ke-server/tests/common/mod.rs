//! Starts a real `nts-ke-server` process on loopback for end-to-end tests.
#![allow(dead_code)]

use nts_ke_server::dev_pki::DevPki;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use testkit::process::ChildGuard;

pub struct KeServer {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub pki: DevPki,
    pub dir: tempfile::TempDir,
}

/// Write a configuration using the development PKI in a fresh directory, with `extra` TOML
/// merged into the [server] section, and start the server.
pub fn start(server_extra: &str) -> KeServer {
    let dir = tempfile::tempdir().unwrap();
    let (pki, _) = DevPki::ensure(dir.path()).unwrap();
    let port = testkit::ports::free_port();
    let mport = testkit::ports::free_port();
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
{server_extra}
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
reload_interval = 0.2
[ntp]
server = "127.0.0.1"
port = 4123
[cookie_keys]
root_secret_file = {root:?}
create_if_missing = true
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
"#,
        chain = pki.server_cert,
        key = pki.server_key,
        root = dir.path().join("root.key"),
    );
    start_with_config(dir, pki, &config, port, mport)
}

pub fn start_with_config(
    dir: tempfile::TempDir,
    pki: DevPki,
    config: &str,
    port: u16,
    mport: u16,
) -> KeServer {
    let path = dir.path().join("ke.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nts-ke-server"));
    cmd.arg("--config").arg(&path);
    let guard = ChildGuard::spawn("nts-ke-server", cmd, dir.path()).unwrap();
    guard
        .wait_for_log_contains("NTS-KE listening", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("server did not start: {e}\n{}", guard.logs()));
    KeServer {
        guard,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        metrics: format!("127.0.0.1:{mport}").parse().unwrap(),
        pki,
        dir,
    }
}

impl KeServer {
    pub fn ca(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// Scrape a metric value (sum over label sets matching `selector`, e.g. `name{reason="x"}`).
    pub fn metric(&self, selector: &str) -> u64 {
        let (_, body) = testkit::stack::http_get(self.metrics, "/metrics").unwrap();
        testkit::stack::metric_value(&body, selector) as u64
    }

    /// A TLS 1.3 client trusting the development CA, ALPN ntske/1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let roots = nts_client::ke::root_store(&[self.ca()], false).unwrap();
        nts_client::ke::tls_config(roots)
    }

    pub async fn good_exchange(&self) -> nts_client::ke::KeOutcome {
        nts_client::ke::key_exchange(
            "127.0.0.1",
            self.addr.port(),
            self.client_config(),
            &nts_proto::aead::AeadAlgorithm::ALL,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("good client failed: {e}\n{}", self.guard.logs()))
    }
}
