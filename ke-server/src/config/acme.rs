//! The `[acme]` section: certificates obtained and renewed over ACME.

use anyhow::{bail, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::seconds;

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

pub(super) fn default_challenge() -> ChallengeType {
    ChallengeType::TlsAlpn01
}
pub(super) fn default_retry_min() -> f64 {
    60.0
}
pub(super) fn default_retry_max() -> f64 {
    21_600.0
}
pub(super) fn default_cache_poll() -> f64 {
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
pub(super) fn same_listener(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl AcmeSection {
    pub(super) fn validate(&self, ke_listen: &[SocketAddr]) -> Result<AcmeSettings> {
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
