//! `nts-ke-server` configuration: one TOML file, every key documented in
//! `docs/ke-server.md`, unknown keys rejected, every value checked before
//! start-up with an error that names the key.

use anyhow::{bail, Context, Result};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::key_ring::KeySchedule;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    pub tls: TlsSection,
    #[serde(default)]
    pub ntp: NtpSection,
    pub cookie_keys: CookieKeysSection,
    /// Key distribution to time servers over gRPC with mutual TLS (absent: off).
    pub key_sync: Option<KeySyncSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySyncSection {
    /// TCP address of the gRPC service.
    pub listen: SocketAddr,
    /// CA whose certificates time servers must present.
    pub client_ca: PathBuf,
    /// This service's certificate chain and key (PEM).
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
    /// Seconds between the load reports time servers send.
    #[serde(default = "default_report_interval")]
    pub report_interval: f64,
    /// Seconds without a report after which a time server is no longer offered to clients.
    #[serde(default = "default_expiry")]
    pub expiry: f64,
    /// How Server Negotiation picks among live time servers.
    #[serde(default = "default_selection")]
    pub selection: crate::registry::Selection,
}

fn default_report_interval() -> f64 {
    5.0
}
fn default_expiry() -> f64 {
    15.0
}
fn default_selection() -> crate::registry::Selection {
    crate::registry::Selection::RoundRobin
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Addresses to accept NTS-KE connections on.
    pub listen: Vec<SocketAddr>,
    /// Connections handled at once; more are refused until one finishes.
    pub max_connections: usize,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most records in one request.
    pub max_request_records: usize,
    /// Seconds allowed for the TLS handshake.
    pub handshake_timeout: f64,
    /// Seconds allowed, after the handshake, to receive the request and send the response.
    pub request_timeout: f64,
    /// New connections allowed per client address (IPv6: per /64) per minute; 0 turns the limit off.
    pub connections_per_minute: u32,
    /// Slots in the rate limiter's fixed-size table.
    pub rate_limit_slots: usize,
    /// User to switch to after binding (when started as root).
    pub user: Option<String>,
    /// Group to switch to (default: the user's primary group).
    pub group: Option<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec!["[::]:4460".parse().expect("valid literal")],
            max_connections: 1024,
            max_request_bytes: 1024,
            max_request_records: 64,
            handshake_timeout: 5.0,
            request_timeout: 5.0,
            connections_per_minute: 120,
            rate_limit_slots: 65_536,
            user: None,
            group: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the certificate chain, leaf first.
    pub certificate_chain: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// Seconds between checks of the files for a renewed certificate.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: f64,
}

fn default_reload_interval() -> f64 {
    10.0
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NtpSection {
    /// Host name or address clients should send NTP to (Server Negotiation); unset: the KE host itself.
    pub server: Option<String>,
    /// UDP port clients should send NTP to (Port Negotiation); unset: 123.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieKeysSection {
    /// File holding the 32-byte root secret (64 hex digits); created, mode 0600, when missing.
    pub root_secret_file: PathBuf,
    /// Seconds per key epoch.
    #[serde(default = "default_rotation")]
    pub rotation_period: u64,
    /// Epochs after its own during which a key still opens cookies.
    #[serde(default = "default_past_epochs")]
    pub past_epochs: u32,
    /// AEAD algorithms offered to clients.
    #[serde(default = "default_algorithms")]
    pub aead_algorithms: Vec<String>,
}

fn default_rotation() -> u64 {
    KeySchedule::default().rotation_period
}
fn default_past_epochs() -> u32 {
    KeySchedule::default().past_epochs
}
fn default_algorithms() -> Vec<String> {
    vec!["AES-SIV-CMAC-256".into(), "AES-SIV-CMAC-512".into()]
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the /metrics, /healthz and /readyz endpoint; unset: no endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// error, warn, info, debug or trace (RUST_LOG overrides).
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

fn seconds(key: &str, v: f64) -> Result<Duration> {
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        bail!("{key} = {v}: must be a number of seconds between 0 and 86400");
    }
    Ok(Duration::from_secs_f64(v))
}

/// Checked, ready-to-use settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub handshake_timeout: Duration,
    pub request_timeout: Duration,
    pub reload_interval: Duration,
    pub schedule: KeySchedule,
    pub algorithms: Vec<AeadAlgorithm>,
    pub report_interval: Duration,
    pub expiry: Duration,
}

impl Config {
    /// Parse TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text)
            .with_context(|| format!("invalid configuration in {}", origin.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Check every value; errors name the key and the reason.
    pub fn validate(self) -> Result<Settings> {
        let s = &self.server;
        if s.listen.is_empty() {
            bail!("server.listen: at least one address is needed");
        }
        if s.max_connections == 0 {
            bail!("server.max_connections: must be at least 1");
        }
        if s.max_request_bytes < 16 || s.max_request_bytes > 65_536 {
            bail!(
                "server.max_request_bytes = {}: must be between 16 and 65536",
                s.max_request_bytes
            );
        }
        if s.max_request_records < 3 {
            bail!(
                "server.max_request_records = {}: a request needs at least 3 records",
                s.max_request_records
            );
        }
        if s.rate_limit_slots == 0 || s.rate_limit_slots > 1 << 24 {
            bail!(
                "server.rate_limit_slots = {}: must be between 1 and 16777216",
                s.rate_limit_slots
            );
        }
        let handshake_timeout = seconds("server.handshake_timeout", s.handshake_timeout)?;
        let request_timeout = seconds("server.request_timeout", s.request_timeout)?;
        let reload_interval = seconds("tls.reload_interval", self.tls.reload_interval)?;
        if let Some(server) = &self.ntp.server {
            if server.is_empty() || !server.is_ascii() || server.len() > 255 {
                bail!("ntp.server = {server:?}: must be a non-empty ASCII host name or address of at most 255 characters");
            }
        }
        if self.ntp.port == Some(0) {
            bail!("ntp.port: 0 is not a port");
        }
        let ck = &self.cookie_keys;
        if ck.rotation_period == 0 || ck.rotation_period > 365 * 86_400 {
            bail!(
                "cookie_keys.rotation_period = {}: must be between 1 second and a year",
                ck.rotation_period
            );
        }
        if ck.past_epochs > 1000 {
            bail!("cookie_keys.past_epochs = {}: at most 1000", ck.past_epochs);
        }
        let schedule = KeySchedule::new(ck.rotation_period, ck.past_epochs)
            .context("cookie_keys.rotation_period")?;
        let mut algorithms = Vec::new();
        for name in &ck.aead_algorithms {
            let alg = AeadAlgorithm::ALL
                .into_iter()
                .find(|a| a.name().eq_ignore_ascii_case(name))
                .with_context(|| {
                    format!("cookie_keys.aead_algorithms: unknown algorithm {name:?} (known: AES-SIV-CMAC-256, AES-SIV-CMAC-512)")
                })?;
            algorithms.push(alg);
        }
        if !algorithms.contains(&AeadAlgorithm::AesSivCmac256) {
            bail!(
                "cookie_keys.aead_algorithms: AES-SIV-CMAC-256 is mandatory (RFC 8915 section 5.1)"
            );
        }
        let (report_interval, expiry) = match &self.key_sync {
            Some(k) => {
                let r = seconds("key_sync.report_interval", k.report_interval)?;
                let e = seconds("key_sync.expiry", k.expiry)?;
                if e <= r {
                    bail!(
                        "key_sync.expiry = {}: must be longer than key_sync.report_interval ({})",
                        k.expiry,
                        k.report_interval
                    );
                }
                (r, e)
            }
            None => (Duration::from_secs(5), Duration::from_secs(15)),
        };
        Ok(Settings {
            report_interval,
            expiry,
            handshake_timeout,
            request_timeout,
            reload_interval,
            schedule,
            algorithms,
            config: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[tls]
certificate_chain = "/etc/nts/chain.pem"
private_key = "/etc/nts/key.pem"
[cookie_keys]
root_secret_file = "/var/lib/nts/root.key"
"#;

    fn check(text: &str) -> Result<Settings> {
        Config::parse(text, Path::new("test.toml"))?.validate()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = check(MINIMAL).unwrap();
        assert_eq!(s.config.server.listen, vec!["[::]:4460".parse().unwrap()]);
        assert_eq!(s.schedule, KeySchedule::default());
        assert_eq!(s.algorithms.len(), 2);
        assert_eq!(s.handshake_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = check(&format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n"
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let e = check(&format!("bogus_top = 1\n{MINIMAL}")).unwrap_err();
        assert!(format!("{e:#}").contains("bogus_top"), "{e:#}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                "[server]\nhandshake_timeout = -1\n",
                "server.handshake_timeout",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[server]\nlisten = []\n", "server.listen"),
            ("[ntp]\nport = 0\n", "ntp.port"),
            ("[ntp]\nserver = \"\"\n", "ntp.server"),
        ];
        for (extra, key) in cases {
            let e = check(&format!("{extra}{MINIMAL}")).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
        let e = check(&MINIMAL.replace(
            "root_secret_file = \"/var/lib/nts/root.key\"",
            "root_secret_file = \"/x\"\naead_algorithms = [\"AES-GCM\"]",
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("cookie_keys.aead_algorithms"));
        let e = check(&MINIMAL.replace(
            "root_secret_file = \"/var/lib/nts/root.key\"",
            "root_secret_file = \"/x\"\nrotation_period = 0",
        ))
        .unwrap_err();
        assert!(format!("{e:#}").contains("cookie_keys.rotation_period"));
        // Wrong type is reported with the key by the TOML parser.
        let e = check(&format!("[server]\nmax_connections = \"many\"\n{MINIMAL}")).unwrap_err();
        assert!(format!("{e:#}").contains("max_connections"), "{e:#}");
    }
}
