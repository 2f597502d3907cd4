//! `nts-ke-server` configuration: one TOML file, every key documented in
//! `docs/ke-server.md`, unknown keys rejected, every value checked before
//! start-up with an error that names the key.

use anyhow::{bail, Context, Result};
use nts_ops::config::{LogSection, MetricsSection};
use nts_proto::admission::AdmissionLimits;
use nts_proto::aead::AeadAlgorithm;
use nts_proto::client_prefix::{PrefixLengthError, PrefixLengths};
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
    /// Certificate files on disk (exactly one of `tls` and `acme`).
    pub tls: Option<TlsSection>,
    /// Certificates obtained and renewed over ACME (exactly one of `tls` and `acme`).
    pub acme: Option<AcmeSection>,
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
    /// TLS handshakes on the key-sync listener running at once; more connections are closed.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Handshakes one client address (per `server.ipv4_prefix_length` /
    /// `ipv6_prefix_length`) may run at once; its oldest is closed for a newer one.
    /// Absent: 8, or `max_handshakes` when that is smaller.
    #[serde(default)]
    pub max_handshakes_per_address: Option<usize>,
    /// Seconds a peer has to complete the TLS handshake.
    #[serde(default = "default_key_sync_handshake_timeout")]
    pub handshake_timeout: f64,
    /// Source networks allowed to connect (empty: any); others are closed before TLS.
    #[serde(default)]
    pub allowed_networks: Vec<ipnet::IpNet>,
    /// HTTP/2 streams (RPCs) one authenticated connection may have open at once.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// Time servers one certificate name may have registered at once.
    #[serde(default = "default_max_registrations_per_certificate")]
    pub max_registrations_per_certificate: usize,
    /// Networks whose IP literals time servers may advertise (besides their
    /// certificate's own IP names); with `advertise_domains` empty too: any.
    #[serde(default)]
    pub advertise_networks: Vec<ipnet::IpNet>,
    /// DNS names (and names under them) time servers may advertise.
    #[serde(default)]
    pub advertise_domains: Vec<String>,
    /// SHA-256 fingerprints of time-server certificates that get nothing.
    #[serde(default)]
    pub revoked_certificates: Vec<String>,
}

fn default_max_registrations_per_certificate() -> usize {
    4
}

fn default_max_handshakes() -> usize {
    64
}
/// Key-sync handshakes per client address when `max_handshakes_per_address` is absent.
const DEFAULT_HANDSHAKES_PER_ADDRESS: usize = 8;
/// NTS-KE connections per client address when `max_connections_per_address` is absent.
const DEFAULT_CONNECTIONS_PER_ADDRESS: usize = 16;
fn default_key_sync_handshake_timeout() -> f64 {
    5.0
}
fn default_max_streams_per_connection() -> u32 {
    16
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
    /// Connections handled at once. When all are taken, a new connection
    /// closes the oldest of the client address holding the most.
    pub max_connections: usize,
    /// Connections one client address may hold at once; its oldest is closed
    /// for a newer one. Absent: 16, or `max_connections` when that is smaller.
    pub max_connections_per_address: Option<usize>,
    /// Client addresses that count as one for the per-address limits: IPv4 per this prefix length.
    pub ipv4_prefix_length: u8,
    /// IPv6 per this prefix length (one host can use any address of its /64).
    pub ipv6_prefix_length: u8,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most records in one request.
    pub max_request_records: usize,
    /// Seconds allowed for the TLS handshake.
    pub handshake_timeout: f64,
    /// Seconds allowed, after the handshake, to receive the request and send the response.
    pub request_timeout: f64,
    /// Seconds a replica keeps serving after SIGTERM, not ready, so clients
    /// still sent to it while the load balancer catches up are answered
    /// (0: stop accepting at once; the chart sets it for Kubernetes).
    pub drain_delay: f64,
    /// New connections allowed per client address (IPv6: per /64) per minute; 0 turns the limit off.
    pub connections_per_minute: u32,
    /// Slots in the rate limiter's fixed-size table.
    pub rate_limit_slots: usize,
    /// User to switch to after binding (when started as root).
    pub user: Option<String>,
    /// Group to switch to (default: the user's primary group).
    pub group: Option<String>,
    /// Confine the process to its seccomp allow-list after start-up (off: for debugging).
    pub seccomp: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec!["[::]:4460".parse().expect("valid literal")],
            max_connections: 1024,
            max_connections_per_address: None,
            ipv4_prefix_length: 32,
            ipv6_prefix_length: 64,
            max_request_bytes: 1024,
            max_request_records: 64,
            handshake_timeout: 5.0,
            request_timeout: 5.0,
            drain_delay: 0.0,
            connections_per_minute: 120,
            rate_limit_slots: 65_536,
            user: None,
            group: None,
            seccomp: true,
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

/// Let's Encrypt's production directory, the default `acme.directory`.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`acme.staging = true`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The ACME challenge the CA is asked to validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChallengeType {
    /// TLS-ALPN-01 (RFC 8737): a TLS handshake with ALPN `acme-tls/1` on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01: `GET /.well-known/acme-challenge/TOKEN` on port 80.
    #[serde(rename = "http-01")]
    Http01,
}

impl ChallengeType {
    pub fn name(self) -> &'static str {
        match self {
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Http01 => "http-01",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// DNS names the certificate is for (the first is what clients usually ask for).
    pub domains: Vec<String>,
    /// Contact e-mail addresses for the ACME account (`mailto:` is added when missing).
    #[serde(default)]
    pub contact: Vec<String>,
    /// ACME directory URL; unset: Let's Encrypt production (or staging with `staging`).
    pub directory: Option<String>,
    /// Use Let's Encrypt's staging directory.
    #[serde(default)]
    pub staging: bool,
    /// Extra PEM files of CA roots to trust when talking to the directory (private ACME CAs).
    #[serde(default)]
    pub ca_roots: Vec<PathBuf>,
    /// `tls-alpn-01` (default) or `http-01`.
    #[serde(default = "default_challenge")]
    pub challenge: ChallengeType,
    /// TLS-ALPN-01: address the CA's validation connections arrive on (default `[::]:443`).
    /// When `server.listen` has this port, the NTS-KE listener answers them itself.
    pub challenge_listen: Option<SocketAddr>,
    /// HTTP-01: address of the small HTTP listener (default `[::]:80`).
    pub http_listen: Option<SocketAddr>,
    /// Directory holding the account key and certificates (files 0600).
    pub cache_dir: PathBuf,
    /// Seconds before expiry at which to renew; unset: when a third of the lifetime is left.
    pub renew_before: Option<f64>,
    /// Seconds to wait after the first failed attempt; doubled after each failure.
    #[serde(default = "default_retry_min")]
    pub retry_min: f64,
    /// Longest wait between failed attempts, in seconds.
    #[serde(default = "default_retry_max")]
    pub retry_max: f64,
    /// Seconds between looks at the cache for a certificate another replica renewed.
    #[serde(default = "default_cache_poll")]
    pub cache_poll_interval: f64,
}

fn default_challenge() -> ChallengeType {
    ChallengeType::TlsAlpn01
}
fn default_retry_min() -> f64 {
    60.0
}
fn default_retry_max() -> f64 {
    21_600.0
}
fn default_cache_poll() -> f64 {
    60.0
}

/// Checked `[acme]` settings.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    /// `mailto:` URLs.
    pub contact: Vec<String>,
    pub directory: String,
    pub ca_roots: Vec<PathBuf>,
    pub challenge: ChallengeType,
    /// TLS-ALPN-01 answered by a separate listener on this address (`None`: by the
    /// NTS-KE listener, or not at all with HTTP-01).
    pub challenge_listener: Option<SocketAddr>,
    /// TLS-ALPN-01 answered by the NTS-KE listener (`acme-tls/1` offered there).
    pub ke_answers_tls_alpn: bool,
    /// HTTP-01 listener.
    pub http_listener: Option<SocketAddr>,
    pub cache_dir: PathBuf,
    pub renew_before: Option<Duration>,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub cache_poll_interval: Duration,
}

/// A DNS name an ACME CA can validate with HTTP-01 or TLS-ALPN-01: ASCII letters,
/// digits, hyphens and dots, no wildcard, not an address. Returned lower-cased.
pub fn check_domain(name: &str) -> std::result::Result<String, String> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if n.starts_with("*.") {
        return Err("wildcard names need the DNS-01 challenge, which is not supported".into());
    }
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Err("IP addresses are not supported, only DNS names".into());
    }
    if n.is_empty() || n.len() > 253 {
        return Err("must be a DNS name of 1 to 253 characters".into());
    }
    for label in n.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(
                "must be a DNS name (letters, digits, hyphens; labels of 1 to 63 characters)"
                    .into(),
            );
        }
    }
    Ok(n)
}

/// Same port, and the same address or one of them the wildcard address.
fn same_listener(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl AcmeSection {
    fn validate(&self, ke_listen: &[SocketAddr]) -> Result<AcmeSettings> {
        if self.domains.is_empty() {
            bail!("acme.domains: at least one DNS name is needed");
        }
        let mut domains = Vec::new();
        for d in &self.domains {
            let d = check_domain(d).map_err(|why| anyhow::anyhow!("acme.domains: {d:?}: {why}"))?;
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let mut contact = Vec::new();
        for c in &self.contact {
            let addr = c.strip_prefix("mailto:").unwrap_or(c);
            let ok = addr.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && !host.is_empty() && !host.contains('@')
            }) && addr.is_ascii()
                && !addr.contains(|ch: char| ch.is_whitespace() || ch == ',');
            if !ok {
                bail!("acme.contact: {c:?} is not an e-mail address");
            }
            contact.push(format!("mailto:{addr}"));
        }
        let directory = match (&self.directory, self.staging) {
            (Some(_), true) => bail!(
                "acme.staging = true and acme.directory are both set: staging is a shortcut for Let's Encrypt's staging directory; set one of them"
            ),
            (Some(url), false) => {
                if !url.starts_with("https://") || url.len() <= "https://".len() {
                    bail!("acme.directory = {url:?}: must be an https:// URL");
                }
                url.clone()
            }
            (None, true) => LETS_ENCRYPT_STAGING.to_string(),
            (None, false) => LETS_ENCRYPT_PRODUCTION.to_string(),
        };
        for f in &self.ca_roots {
            if f.as_os_str().is_empty() {
                bail!("acme.ca_roots: empty file name");
            }
        }
        let (challenge_listener, ke_answers_tls_alpn, http_listener) = match self.challenge {
            ChallengeType::TlsAlpn01 => {
                if self.http_listen.is_some() {
                    bail!("acme.http_listen is only used with acme.challenge = \"http-01\"");
                }
                let addr = self
                    .challenge_listen
                    .unwrap_or_else(|| "[::]:443".parse().expect("valid literal"));
                if ke_listen.iter().any(|k| same_listener(k, &addr)) {
                    (None, true, None)
                } else {
                    (Some(addr), false, None)
                }
            }
            ChallengeType::Http01 => {
                if self.challenge_listen.is_some() {
                    bail!(
                        "acme.challenge_listen is only used with acme.challenge = \"tls-alpn-01\""
                    );
                }
                let addr = self
                    .http_listen
                    .unwrap_or_else(|| "[::]:80".parse().expect("valid literal"));
                if ke_listen.iter().any(|k| same_listener(k, &addr)) {
                    bail!("acme.http_listen = {addr}: the NTS-KE listener (server.listen) already uses this port");
                }
                (None, false, Some(addr))
            }
        };
        if self.cache_dir.as_os_str().is_empty() {
            bail!("acme.cache_dir: a directory is needed for the account key and certificates");
        }
        let renew_before = match self.renew_before {
            None => None,
            Some(v) => {
                if !v.is_finite() || v <= 0.0 || v > 365.0 * 86_400.0 {
                    bail!(
                        "acme.renew_before = {v}: must be a number of seconds between 0 and a year"
                    );
                }
                Some(Duration::from_secs_f64(v))
            }
        };
        let retry_min = seconds("acme.retry_min", self.retry_min)?;
        let retry_max = seconds("acme.retry_max", self.retry_max)?;
        if retry_max < retry_min {
            bail!(
                "acme.retry_max = {}: must be at least acme.retry_min ({})",
                self.retry_max,
                self.retry_min
            );
        }
        let cache_poll_interval = seconds("acme.cache_poll_interval", self.cache_poll_interval)?;
        Ok(AcmeSettings {
            domains,
            contact,
            directory,
            ca_roots: self.ca_roots.clone(),
            challenge: self.challenge,
            challenge_listener,
            ke_answers_tls_alpn,
            http_listener,
            cache_dir: self.cache_dir.clone(),
            renew_before,
            retry_min,
            retry_max,
            cache_poll_interval,
        })
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NtpSection {
    /// Host name or address clients should send NTP to (Server Negotiation). Without
    /// `[key_sync]`, unset means the KE host itself (no record sent). With `[key_sync]`
    /// it is the explicit fallback used when no registered time server is alive;
    /// unset: no fallback (key exchanges fail and /readyz says not ready).
    pub server: Option<String>,
    /// UDP port clients should send NTP to (Port Negotiation); unset: 123.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieKeysSection {
    /// File holding the 32-byte root secret (64 hex digits), mode 0600.
    pub root_secret_file: PathBuf,
    /// Create `root_secret_file` (mode 0600) when it does not exist; otherwise a
    /// missing file stops start-up (a typo must not yield a second secret).
    #[serde(default)]
    pub create_if_missing: bool,
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

/// The slots one client address may hold of `total` (the key `KEY`):
/// `KEY_per_address`, or `default` (at most `total`) when absent.
fn per_address_share(
    total_key: &str,
    total: usize,
    configured: Option<usize>,
    default: usize,
) -> Result<usize> {
    let share = configured.unwrap_or(default.min(total));
    if share == 0 || share > total {
        bail!("{total_key}_per_address = {share}: must be between 1 and {total_key} ({total})");
    }
    Ok(share)
}

/// The checked registration policy of `[key_sync]`.
fn registration_policy_of(k: &KeySyncSection) -> Result<crate::registration::Policy> {
    if k.max_registrations_per_certificate == 0 || k.max_registrations_per_certificate > 65_536 {
        bail!(
            "key_sync.max_registrations_per_certificate = {}: must be between 1 and 65536",
            k.max_registrations_per_certificate
        );
    }
    let mut domains = Vec::new();
    for d in &k.advertise_domains {
        let name = d
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if crate::registration::check_host(&name).is_err()
            || name.parse::<std::net::IpAddr>().is_ok()
        {
            bail!("key_sync.advertise_domains: {d:?} is not a DNS name");
        }
        domains.push(name);
    }
    let mut revoked = Vec::new();
    for f in &k.revoked_certificates {
        revoked.push(crate::registration::parse_fingerprint(f).with_context(|| {
            format!("key_sync.revoked_certificates: {f:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed: openssl x509 -noout -fingerprint -sha256)")
        })?);
    }
    Ok(crate::registration::Policy {
        revoked,
        networks: k.advertise_networks.clone(),
        domains,
    })
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
    pub drain_delay: Duration,
    pub reload_interval: Duration,
    pub schedule: KeySchedule,
    pub algorithms: Vec<AeadAlgorithm>,
    pub report_interval: Duration,
    pub expiry: Duration,
    /// Connection slots of the NTS-KE listeners.
    pub ke_slots: AdmissionLimits,
    /// Handshake slots of the key-sync listener.
    pub key_sync_slots: AdmissionLimits,
    pub key_sync_handshake_timeout: Duration,
    /// What key-sync registrations may claim.
    pub registration_policy: crate::registration::Policy,
    /// Checked `[acme]` section, when certificates come from ACME.
    pub acme: Option<AcmeSettings>,
}

impl Config {
    /// Parse TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        nts_ops::config::parse_toml(text, origin)
    }

    pub fn load(path: &Path) -> Result<Self> {
        nts_ops::config::load_toml(path)
    }

    /// Check every value; errors name the key and the reason.
    pub fn validate(self) -> Result<Settings> {
        self.log.validate()?;
        let s = &self.server;
        if s.listen.is_empty() {
            bail!("server.listen: at least one address is needed");
        }
        if s.max_connections == 0 || s.max_connections > 1 << 20 {
            bail!(
                "server.max_connections = {}: must be between 1 and 1048576",
                s.max_connections
            );
        }
        let per_address = per_address_share(
            "server.max_connections",
            s.max_connections,
            s.max_connections_per_address,
            DEFAULT_CONNECTIONS_PER_ADDRESS,
        )?;
        let prefixes = PrefixLengths::new(s.ipv4_prefix_length, s.ipv6_prefix_length).map_err(
            |e| match e {
                PrefixLengthError::V4(_) => anyhow::anyhow!("server.ipv4_prefix_length: {e}"),
                PrefixLengthError::V6(_) => anyhow::anyhow!("server.ipv6_prefix_length: {e}"),
            },
        )?;
        let ke_slots = AdmissionLimits {
            capacity: s.max_connections,
            per_prefix: per_address,
            prefixes,
        };
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
        // 0 is allowed: exit as soon as the connections in flight are done.
        let drain_delay = if s.drain_delay == 0.0 {
            Duration::ZERO
        } else {
            seconds("server.drain_delay", s.drain_delay)?
        };
        let (reload_interval, acme) = match (&self.tls, &self.acme) {
            (Some(tls), None) => (seconds("tls.reload_interval", tls.reload_interval)?, None),
            (None, Some(acme)) => (
                Duration::from_secs_f64(default_reload_interval()),
                Some(acme.validate(&s.listen)?),
            ),
            (None, None) => bail!(
                "no certificate configured: add a [tls] section (tls.certificate_chain and tls.private_key: certificate files) or an [acme] section (acme.domains and acme.cache_dir: certificates from an ACME CA such as Let's Encrypt)"
            ),
            (Some(_), Some(_)) => bail!(
                "[tls] and [acme] are both configured: the certificate comes either from files (tls.certificate_chain, tls.private_key) or from ACME (acme.domains, acme.cache_dir); remove one section"
            ),
        };
        if let Some(server) = &self.ntp.server {
            if server.is_empty() || !server.is_ascii() || server.len() > 255 {
                bail!("ntp.server = {server:?}: must be a non-empty ASCII host name or address of at most 255 characters");
            }
        }
        if self.ntp.port == Some(0) {
            bail!("ntp.port: 0 is not a port");
        }
        if self.key_sync.is_some() && self.ntp.server.is_none() && self.ntp.port.is_some() {
            bail!("ntp.port is set without ntp.server: with [key_sync], the fallback time server must be named explicitly in ntp.server (there is no implicit \"this host\" fallback)");
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
        let mut key_sync_slots = AdmissionLimits {
            capacity: default_max_handshakes(),
            per_prefix: DEFAULT_HANDSHAKES_PER_ADDRESS,
            prefixes,
        };
        let mut key_sync_handshake_timeout =
            Duration::from_secs_f64(default_key_sync_handshake_timeout());
        let mut registration_policy = crate::registration::Policy::default();
        let (report_interval, expiry) = match &self.key_sync {
            Some(k) => {
                let r = seconds("key_sync.report_interval", k.report_interval)?;
                let e = seconds("key_sync.expiry", k.expiry)?;
                if k.max_handshakes == 0 || k.max_handshakes > 65_536 {
                    bail!(
                        "key_sync.max_handshakes = {}: must be between 1 and 65536",
                        k.max_handshakes
                    );
                }
                let per_address = per_address_share(
                    "key_sync.max_handshakes",
                    k.max_handshakes,
                    k.max_handshakes_per_address,
                    DEFAULT_HANDSHAKES_PER_ADDRESS,
                )?;
                if k.max_streams_per_connection == 0 || k.max_streams_per_connection > 1024 {
                    bail!(
                        "key_sync.max_streams_per_connection = {}: must be between 1 and 1024 (a time server uses 2)",
                        k.max_streams_per_connection
                    );
                }
                key_sync_handshake_timeout =
                    seconds("key_sync.handshake_timeout", k.handshake_timeout)?;
                if key_sync_handshake_timeout > Duration::from_secs(60) {
                    bail!(
                        "key_sync.handshake_timeout = {}: at most 60 seconds (an idle peer holds a slot that long)",
                        k.handshake_timeout
                    );
                }
                registration_policy = registration_policy_of(k)?;
                key_sync_slots.capacity = k.max_handshakes;
                key_sync_slots.per_prefix = per_address;
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
            acme,
            report_interval,
            expiry,
            ke_slots,
            key_sync_slots,
            key_sync_handshake_timeout,
            registration_policy,
            handshake_timeout,
            request_timeout,
            drain_delay,
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
            (
                "[server]\nmax_connections = 8\nmax_connections_per_address = 9\n",
                "server.max_connections_per_address",
            ),
            (
                "[server]\nipv6_prefix_length = 8\n",
                "server.ipv6_prefix_length",
            ),
            (
                "[server]\nipv4_prefix_length = 33\n",
                "server.ipv4_prefix_length",
            ),
            ("[server]\nlisten = []\n", "server.listen"),
            ("[server]\ndrain_delay = -1\n", "server.drain_delay"),
            ("[ntp]\nport = 0\n", "ntp.port"),
            ("[ntp]\nserver = \"\"\n", "ntp.server"),
            ("[log]\nlevel = \"infoo\"\n", "log.level"),
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

    const KEY_SYNC: &str = r#"
[key_sync]
listen = "127.0.0.1:4461"
client_ca = "/ca.pem"
certificate_chain = "/c.pem"
private_key = "/k.pem"
"#;

    #[test]
    fn key_sync_limits_default_and_are_checked() {
        let s = check(&format!("{MINIMAL}{KEY_SYNC}")).unwrap();
        assert_eq!(
            (s.key_sync_slots.capacity, s.key_sync_slots.per_prefix),
            (64, 8)
        );
        assert_eq!(s.key_sync_handshake_timeout, Duration::from_secs(5));
        assert_eq!((s.ke_slots.capacity, s.ke_slots.per_prefix), (1024, 16));
        let k = s.config.key_sync.unwrap();
        assert!(k.allowed_networks.is_empty());
        assert_eq!(k.max_streams_per_connection, 16);
        let s = check(&format!(
            "{MINIMAL}{KEY_SYNC}allowed_networks = [\"10.0.0.0/8\", \"fd00::/8\"]\n"
        ))
        .unwrap();
        assert_eq!(s.config.key_sync.unwrap().allowed_networks.len(), 2);
        for (extra, key) in [
            (
                "max_handshakes_per_address = 0",
                "key_sync.max_handshakes_per_address",
            ),
            (
                "max_handshakes_per_address = 65",
                "key_sync.max_handshakes_per_address",
            ),
            ("handshake_timeout = 0", "key_sync.handshake_timeout"),
            ("handshake_timeout = 61", "key_sync.handshake_timeout"),
            (
                "max_streams_per_connection = 0",
                "key_sync.max_streams_per_connection",
            ),
            ("allowed_networks = [\"10.0.0.0/33\"]", "allowed_networks"),
            (
                "max_registrations_per_certificate = 0",
                "key_sync.max_registrations_per_certificate",
            ),
            (
                "advertise_domains = [\"a b\"]",
                "key_sync.advertise_domains",
            ),
            (
                "revoked_certificates = [\"AB:CD\"]",
                "key_sync.revoked_certificates",
            ),
        ] {
            let e = check(&format!("{MINIMAL}{KEY_SYNC}{extra}\n")).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
    }

    const ACME: &str = r#"
[acme]
domains = ["NTS.example.net"]
contact = ["ops@example.net", "mailto:noc@example.net"]
cache_dir = "/var/lib/nts/acme"
[cookie_keys]
root_secret_file = "/var/lib/nts/root.key"
"#;

    #[test]
    fn acme_defaults() {
        let s = check(ACME).unwrap();
        let a = s.acme.unwrap();
        assert_eq!(a.domains, vec!["nts.example.net"]);
        assert_eq!(
            a.contact,
            vec!["mailto:ops@example.net", "mailto:noc@example.net"]
        );
        assert_eq!(a.directory, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(a.challenge, ChallengeType::TlsAlpn01);
        // KE on 4460: TLS-ALPN-01 gets its own listener on 443.
        assert_eq!(a.challenge_listener, Some("[::]:443".parse().unwrap()));
        assert!(!a.ke_answers_tls_alpn);
        assert_eq!(a.retry_min, Duration::from_secs(60));
        let s = check(&format!("[server]\nlisten = [\"0.0.0.0:443\"]\n{ACME}")).unwrap();
        let a = s.acme.unwrap();
        assert!(a.ke_answers_tls_alpn);
        assert_eq!(a.challenge_listener, None);
        let s = check(&ACME.replace("[acme]", "[acme]\nstaging = true")).unwrap();
        assert_eq!(s.acme.unwrap().directory, LETS_ENCRYPT_STAGING);
        let s = check(&ACME.replace("[acme]", "[acme]\nchallenge = \"http-01\"")).unwrap();
        let a = s.acme.unwrap();
        assert_eq!(a.http_listener, Some("[::]:80".parse().unwrap()));
        assert_eq!(a.challenge_listener, None);
    }

    #[test]
    fn tls_xor_acme() {
        let e = check("[cookie_keys]\nroot_secret_file = \"/x\"\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("tls.certificate_chain") && msg.contains("acme.domains"),
            "{msg}"
        );
        let both = format!("{ACME}\n[tls]\ncertificate_chain = \"/a\"\nprivate_key = \"/b\"\n");
        let e = check(&both).unwrap_err();
        assert!(format!("{e:#}").contains("both configured"), "{e:#}");
    }

    #[test]
    fn acme_bad_values_are_named() {
        let cases = [
            ("domains = [\"*.example.net\"]", "acme.domains"),
            ("domains = [\"192.0.2.1\"]", "acme.domains"),
            ("domains = []", "acme.domains"),
            ("domains = [\"bad_name.example\"]", "acme.domains"),
        ];
        for (line, key) in cases {
            let text = ACME.replace("domains = [\"NTS.example.net\"]", line);
            let e = check(&text).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{line}: {e:#}");
        }
        let extra = [
            ("contact = [\"nobody\"]", "acme.contact"),
            (
                "staging = true\ndirectory = \"https://ca/dir\"",
                "acme.staging",
            ),
            ("directory = \"http://ca/dir\"", "acme.directory"),
            ("http_listen = \"127.0.0.1:80\"", "acme.http_listen"),
            (
                "challenge = \"http-01\"\nchallenge_listen = \"127.0.0.1:443\"",
                "acme.challenge_listen",
            ),
            ("challenge = \"dns-01\"", "challenge"),
            ("retry_min = 0", "acme.retry_min"),
            ("retry_min = 100\nretry_max = 10", "acme.retry_max"),
            ("renew_before = -1", "acme.renew_before"),
            ("cache_poll_interval = 0", "acme.cache_poll_interval"),
        ];
        for (line, key) in extra {
            let text = ACME
                .replace(
                    "contact = [\"ops@example.net\", \"mailto:noc@example.net\"]\n",
                    "",
                )
                .replace("[acme]", &format!("[acme]\n{line}"));
            let e = check(&text).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{line}: {e:#}");
        }
        let e = check(
            &ACME.replace("[acme]", "[server]\nlisten = [\"127.0.0.1:80\"]\n[acme]\nchallenge = \"http-01\"\nhttp_listen = \"127.0.0.1:80\""),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("acme.http_listen"), "{e:#}");
    }
}
