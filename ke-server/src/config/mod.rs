//! `nts-ke-server` configuration: one TOML file, every key documented in
//! `docs/ke-server.md`, unknown keys rejected, every value checked before
//! start-up with an error that names the key.
//!
//! Split by subject: the plain sections (`sections.rs`), `[acme]`
//! (`acme.rs`), and here the checks that turn a [`Config`] into [`Settings`].

use anyhow::{bail, Context, Result};
use nts_ops::config::{LogSection, MetricsSection};
use nts_proto::admission::AdmissionLimits;
use nts_proto::aead::AeadAlgorithm;
use nts_proto::client_prefix::{PrefixLengthError, PrefixLengths};
use nts_proto::key_ring::KeySchedule;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

mod acme;
mod sections;

pub use acme::*;
pub use sections::*;

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

pub(super) fn seconds(key: &str, v: f64) -> Result<Duration> {
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
mod tests;
