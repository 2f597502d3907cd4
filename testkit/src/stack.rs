//! Our own daemons as real processes: `nts-ke-server` and `nts-time-server`
//! started from the workspace's binaries with a written configuration, on
//! free loopback ports, plus a scraper for their `/metrics`.

use crate::certs::TestPki;
use crate::process::ChildGuard;
use crate::{Error, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Newest modification time among the workspace's sources (Rust, TOML, lock, proto files).
fn newest_source() -> std::time::SystemTime {
    fn walk(dir: &Path, newest: &mut std::time::SystemTime, depth: usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                || ["target", "fuzz", "nts-dev", "tests", "benches"].contains(&name.as_ref())
            {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if depth < 6 {
                    walk(&path, newest, depth + 1);
                }
            } else if ["rs", "toml", "lock", "proto"]
                .iter()
                .any(|ext| path.extension().is_some_and(|x| x == *ext))
            {
                if let Ok(m) = meta.modified() {
                    *newest = (*newest).max(m);
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    walk(root, &mut newest, 0);
    newest
}

/// Path of a workspace binary, with the same profile as the running test.
///
/// `cargo test --workspace` (what `scripts/test.sh` runs) builds every binary
/// first, so this only locates it. When the binary is missing or older than the
/// workspace's sources (a `cargo test -p ONE` run), it is built here with
/// `cargo build -p PACKAGE --bin BIN`.
pub fn cargo_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(bin) {
        return p.clone();
    }
    // The test executable lives in target/PROFILE/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary inside target/PROFILE/deps")
        .to_path_buf();
    let path = profile_dir.join(bin);
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|built_at| built_at >= newest_source());
    if !fresh {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin} failed"
        );
        assert!(path.exists(), "{} missing after build", path.display());
    }
    built.insert(bin.to_string(), path.clone());
    path
}

/// Fetch `path` from an HTTP endpoint (HTTP/1.0, whole body). Returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| Error::io("set_read_timeout", e))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| Error::io("sending request", e))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| Error::io("reading response", e))?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Other(format!("bad HTTP response: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of the samples of a Prometheus text exposition matching `selector`
/// exactly (`name` or `name{label="v"}`); 0 when absent.
pub fn metric_value(exposition: &str, selector: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == selector)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// A daemon of ours, running.
#[derive(Debug)]
pub struct Daemon {
    /// The process; its log is printed if the test fails.
    pub guard: ChildGuard,
    /// Main service address (NTS-KE TCP, or NTP UDP).
    pub addr: SocketAddr,
    /// /metrics endpoint.
    pub metrics: SocketAddr,
    /// The configuration file it was started with.
    pub config_path: PathBuf,
}

impl Daemon {
    /// Current value of a metric (see [`metric_value`]).
    pub fn metric(&self, selector: &str) -> f64 {
        let (_, body) =
            http_get(self.metrics, "/metrics").unwrap_or_else(|e| panic!("scraping metrics: {e}"));
        metric_value(&body, selector)
    }

    /// HTTP status of /readyz.
    pub fn ready(&self) -> bool {
        matches!(http_get(self.metrics, "/readyz"), Ok((200, _)))
    }

    /// Port of the main service.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Settings for [`start_ke_server`].
#[derive(Debug, Clone)]
pub struct KeServerOptions {
    /// Time server clients are sent to (Server and Port Negotiation).
    pub ntp_server: String,
    /// Port clients are sent to.
    pub ntp_port: u16,
    /// `cookie_keys.rotation_period`.
    pub rotation_period: u64,
    /// `cookie_keys.past_epochs`.
    pub past_epochs: u32,
    /// Extra lines for the `[server]` section.
    pub server_extra: String,
}

impl Default for KeServerOptions {
    fn default() -> Self {
        Self {
            ntp_server: "127.0.0.1".into(),
            ntp_port: 123,
            rotation_period: 86_400,
            past_epochs: 7,
            server_extra: String::new(),
        }
    }
}

/// Write `config` to `dir/NAME.toml`, start `bin --config` with it, and wait for `ready_log` in its output.
pub fn start_daemon(
    name: &str,
    bin: PathBuf,
    config: &str,
    dir: &Path,
    addr: SocketAddr,
    metrics: SocketAddr,
    ready_log: &str,
) -> Result<Daemon> {
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).map_err(|e| Error::io("writing config", e))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config_path);
    let guard = ChildGuard::spawn_combined(name, cmd, dir)?;
    guard.wait_for_log_contains(ready_log, Duration::from_secs(30))?;
    Ok(Daemon {
        guard,
        addr,
        metrics,
        config_path,
    })
}

/// Start `nts-ke-server` with the test PKI's certificate and `root_secret_file`.
pub fn start_ke_server(
    dir: &Path,
    pki: &TestPki,
    root_secret_file: &Path,
    opts: &KeServerOptions,
) -> Result<Daemon> {
    let port = crate::ports::free_port();
    let mport = crate::ports::free_port();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
{extra}
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = {ntp_server:?}
port = {ntp_port}
[cookie_keys]
root_secret_file = {root:?}
rotation_period = {rot}
past_epochs = {past}
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
"#,
        extra = opts.server_extra,
        chain = pki.chain_path(),
        key = pki.key_path(),
        ntp_server = opts.ntp_server,
        ntp_port = opts.ntp_port,
        root = root_secret_file,
        rot = opts.rotation_period,
        past = opts.past_epochs,
    );
    start_daemon(
        "nts-ke-server",
        cargo_bin("nts-ke-server", "nts-ke-server"),
        &config,
        dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTS-KE listening",
    )
}

/// Settings for [`start_time_server`].
#[derive(Debug, Clone)]
pub struct TimeServerOptions {
    /// `server.workers`.
    pub workers: usize,
    /// `keys.rotation_period`.
    pub rotation_period: u64,
    /// `keys.past_epochs`.
    pub past_epochs: u32,
    /// Extra TOML appended to the configuration (whole sections).
    pub extra: String,
    /// Lines for the `[server]` section.
    pub server_extra: String,
    /// UDP port to serve on (default: a free one).
    pub port: Option<u16>,
}

impl Default for TimeServerOptions {
    fn default() -> Self {
        Self {
            port: None,
            workers: 2,
            rotation_period: 86_400,
            past_epochs: 7,
            extra: String::new(),
            server_extra: String::new(),
        }
    }
}

/// Start `nts-time-server` as a local reference clock with the keys of `root_secret_file`.
pub fn start_time_server(
    dir: &Path,
    root_secret_file: &Path,
    opts: &TimeServerOptions,
) -> Result<Daemon> {
    let port = opts.port.unwrap_or_else(crate::ports::free_port);
    let mport = crate::ports::free_port();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
{server_extra}
[clock]
local_reference = true
stratum = 1
reference_id = "LOCL"
[keys]
root_secret_file = {root:?}
rotation_period = {rot}
past_epochs = {past}
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "debug"
{extra}
"#,
        workers = opts.workers,
        server_extra = opts.server_extra,
        root = root_secret_file,
        rot = opts.rotation_period,
        past = opts.past_epochs,
        extra = opts.extra,
    );
    let d = start_daemon(
        "nts-time-server",
        cargo_bin("nts-time-server", "nts-time-server"),
        &config,
        dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], mport)),
        "NTP listening",
    )?;
    // Ready means it holds cookie keys.
    let ok = crate::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        d.ready().then_some(())
    });
    if ok.is_none() {
        return Err(Error::Other(format!(
            "time server never became ready\n{}",
            d.guard.logs()
        )));
    }
    Ok(d)
}

/// A KE server and a time server sharing one cookie root secret, the KE server
/// sending clients to the time server: the smallest complete NTS service.
#[derive(Debug)]
pub struct Stack {
    /// `nts-ke-server`, certificate from `pki`.
    pub ke: Daemon,
    /// `nts-time-server`, local reference clock.
    pub ts: Daemon,
    /// The CA clients must trust.
    pub pki: TestPki,
    /// Working directory (configurations, logs, the root secret).
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Start both daemons in a fresh directory with a fresh PKI and root secret.
    pub fn start(ts_opts: &TimeServerOptions) -> Result<Stack> {
        let dir = crate::fsutil::tempdir("ntstk-stack-")?;
        let pki = TestPki::generate()?;
        let root = dir.path().join("root.key");
        write_root_secret(&root)?;
        let ts = start_time_server(dir.path(), &root, ts_opts)?;
        let ke = start_ke_server(
            dir.path(),
            &pki,
            &root,
            &KeServerOptions {
                ntp_port: ts.port(),
                ..Default::default()
            },
        )?;
        Ok(Stack { ke, ts, pki, dir })
    }
}

/// A fresh cookie root secret (64 hex digits) written to `path` with mode 0600.
pub fn write_root_secret(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").map_err(|e| Error::io("/dev/urandom", e))?;
    std::io::Read::read_exact(&mut f, &mut bytes).map_err(|e| Error::io("/dev/urandom", e))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    writeln!(out, "{hex}").map_err(|e| Error::io("writing root secret", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_selection() {
        let text = "# HELP a x\n# TYPE a counter\na 3\nb{reason=\"x\"} 2\nb{reason=\"y\"} 5\n";
        assert_eq!(metric_value(text, "a"), 3.0);
        assert_eq!(metric_value(text, "b{reason=\"y\"}"), 5.0);
        assert_eq!(metric_value(text, "c"), 0.0);
    }
}

/// The configuration of an `nts-ke-server` that is also the key master
/// (`[key_sync]`), as the key-sync tests need it in several variants.
#[derive(Debug, Clone)]
pub struct KeySyncKeConfig<'a> {
    /// `server.listen` addresses, e.g. `"127.0.0.1:4460"` or `"[::]:4460"`.
    pub listen: Vec<String>,
    /// NTS-KE certificate chain.
    pub tls_chain: &'a Path,
    /// NTS-KE private key.
    pub tls_key: &'a Path,
    /// `ntp.server` (and `ntp.port`): the explicit fallback, if any.
    pub fallback: Option<(&'a str, Option<u16>)>,
    /// `cookie_keys.root_secret_file`.
    pub root_secret: &'a Path,
    /// `cookie_keys.rotation_period` and `past_epochs` (defaults when None).
    pub rotation: Option<(u64, u32)>,
    /// Key-sync listener port (on 127.0.0.1).
    pub key_sync_port: u16,
    /// `key_sync.client_ca`.
    pub client_ca: &'a Path,
    /// `key_sync.certificate_chain`.
    pub key_sync_chain: &'a Path,
    /// `key_sync.private_key`.
    pub key_sync_key: &'a Path,
    /// `key_sync.report_interval` (seconds).
    pub report_interval: f64,
    /// `key_sync.expiry` (seconds).
    pub expiry: f64,
    /// Metrics port (on 127.0.0.1).
    pub metrics_port: u16,
    /// Extra lines for `[server]`.
    pub server_extra: String,
    /// Extra lines for `[tls]`.
    pub tls_extra: String,
}

impl KeySyncKeConfig<'_> {
    /// The TOML text.
    pub fn render(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|l| format!("{l:?}")).collect();
        let mut s = format!(
            "[server]\nlisten = [{}]\n{}\n[tls]\ncertificate_chain = {:?}\nprivate_key = {:?}\n{}\n",
            listen.join(", "),
            self.server_extra,
            self.tls_chain,
            self.tls_key,
            self.tls_extra
        );
        if let Some((host, port)) = self.fallback {
            s.push_str(&format!("[ntp]\nserver = {host:?}\n"));
            if let Some(p) = port {
                s.push_str(&format!("port = {p}\n"));
            }
        }
        s.push_str(&format!(
            "[cookie_keys]\nroot_secret_file = {:?}\n",
            self.root_secret
        ));
        if let Some((rotation, past)) = self.rotation {
            s.push_str(&format!(
                "rotation_period = {rotation}\npast_epochs = {past}\n"
            ));
        }
        s.push_str(&format!(
            "[key_sync]\nlisten = \"127.0.0.1:{}\"\nclient_ca = {:?}\ncertificate_chain = {:?}\nprivate_key = {:?}\nreport_interval = {}\nexpiry = {}\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[log]\nlevel = \"debug\"\n",
            self.key_sync_port,
            self.client_ca,
            self.key_sync_chain,
            self.key_sync_key,
            self.report_interval,
            self.expiry,
            self.metrics_port
        ));
        s
    }
}
