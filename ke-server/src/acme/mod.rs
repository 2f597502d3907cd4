//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, or any other ACME
//! directory), obtained and renewed by the server itself.
//!
//! The protocol messages and their JOSE signatures come from `rustls-acme`'s
//! `acme` module; the life cycle is ours, so that every step is logged and
//! counted, a refused nonce (`badNonce`) is answered by sending the request
//! again instead of failing the whole order, renewal is configurable, and
//! replicas can share one cache:
//!
//! * At start the cache is read: a cached certificate goes into service before
//!   the first connection is accepted, and no order is placed until it is due
//!   for renewal (by default when a third of its lifetime is left).
//! * An order proves control of every name with TLS-ALPN-01 (answered by the
//!   NTS-KE listener itself, or by a separate listener) or HTTP-01 (a small HTTP
//!   listener), downloads the certificate, stores it in the cache (files 0600,
//!   replaced atomically) and swaps it in: new handshakes use it, connections
//!   already open finish with the old one.
//! * A failed attempt keeps the current certificate in service and is retried
//!   after `retry_min`, doubling up to `retry_max`.
//! * Replicas sharing `cache_dir`: only the holder of `cache_dir/order.lock`
//!   orders; the others take the certificate from the cache (checked every
//!   `cache_poll_interval`). Challenge answers are also written to
//!   `cache_dir/challenges/`, so whichever replica the CA's validation reaches
//!   can answer it.
//!
//! Modules: `cache` (file names, private atomic writes, the order lock),
//! `certificates` (the cached bundle, renewal time, TLS-ALPN-01 answer
//! certificates), `resolver` (what handshakes are answered with), `order` (one
//! attempt with the CA), `listeners` (the challenge listeners); this module
//! holds the manager that keeps a certificate in service.

use crate::certificate::certified_key_from_pem;
use crate::config::{AcmeSettings, ChallengeType};
use crate::metrics::Metrics;
use anyhow::{anyhow, bail, Context, Result};
use arc_swap::ArcSwapOption;
use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::Full;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::acme::{
    Account, AcmeError, AuthStatus, ChallengeType as AcmeChallenge, Directory, Identifier,
    OrderStatus, Problem,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One request to the CA may take this long.
pub(super) const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole attempt (directory to certificate) may take this long.
pub(super) const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for the CA to validate one authorization.
pub(super) const AUTH_TIMEOUT: Duration = Duration::from_secs(120);
/// Sending a request again after badNonce: at most this many tries.
pub(super) const BAD_NONCE_TRIES: u32 = 16;
/// Validation connections handled at once by the challenge listeners.
pub(super) const CHALLENGE_CONNECTIONS: usize = 64;
pub(super) const CHALLENGE_CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// URL path prefix of HTTP-01 challenges.
pub(super) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

pub(super) fn unix_now() -> i64 {
    crate::server::unix_now() as i64
}

mod cache;
mod certificates;
mod listeners;
mod order;
mod resolver;

use cache::*;
pub use cache::{account_cache_path, cert_cache_path, write_private};
use certificates::*;
pub use listeners::{serve_http01, serve_tls_alpn};
#[cfg(test)]
use order::*;
use resolver::*;
pub use resolver::{is_acme_hello, watch_shared_challenges, AcmeResolver};

/// Obtains, renews and serves the ACME certificate.
pub struct AcmeManager {
    s: AcmeSettings,
    resolver: Arc<AcmeResolver>,
    metrics: Arc<Metrics>,
    provider: Arc<CryptoProvider>,
    client: Arc<rustls::ClientConfig>,
    cert_file: PathBuf,
    account_file: PathBuf,
    lock_file: PathBuf,
    current: Mutex<Option<CertInfo>>,
    /// Hash of the cache file last looked at, so a bad file is reported once.
    last_seen: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("domains", &self.s.domains)
            .field("directory", &self.s.directory)
            .finish_non_exhaustive()
    }
}

/// TLS client configuration for the ACME directory: Mozilla's roots plus `acme.ca_roots`.
fn directory_client(
    s: &AcmeSettings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for f in &s.ca_roots {
        nts_ops::trust_store::add_pem_file(&mut roots, f).context("acme.ca_roots")?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS version available in the crypto provider")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl AcmeManager {
    /// Prepare the cache directory and the directory client, and put a cached
    /// certificate (if any) into service.
    pub fn new(
        s: AcmeSettings,
        metrics: Arc<Metrics>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>> {
        ensure_private_dir(&s.cache_dir, "acme.cache_dir")?;
        let shared = s.cache_dir.join("challenges");
        ensure_private_dir(&shared, "acme.cache_dir")?;
        let client = directory_client(&s, provider.clone())?;
        let resolver = Arc::new(AcmeResolver::new(shared, provider.clone(), metrics.clone()));
        let m = Arc::new(Self {
            cert_file: cert_cache_path(&s.cache_dir, &s.directory, &s.domains),
            account_file: account_cache_path(&s.cache_dir, &s.directory),
            lock_file: s.cache_dir.join("order.lock"),
            s,
            resolver,
            metrics,
            provider,
            client,
            current: Mutex::new(None),
            last_seen: Mutex::new(None),
        });
        tracing::info!(
            domains = ?m.s.domains,
            directory = %m.s.directory,
            challenge = m.s.challenge.name(),
            cache = %m.s.cache_dir.display(),
            "ACME: certificates come from the ACME CA"
        );
        if !m.adopt_from_cache(true) {
            tracing::info!(file = %m.cert_file.display(), "ACME: no cached certificate; ordering one");
        }
        Ok(m)
    }

    /// The challenge type the CA is asked to validate.
    pub fn challenge(&self) -> ChallengeType {
        self.s.challenge
    }

    /// The certificate resolver for the NTS-KE listener.
    pub fn resolver(&self) -> Arc<AcmeResolver> {
        self.resolver.clone()
    }

    /// True once a certificate is in service.
    pub fn has_certificate(&self) -> bool {
        self.resolver.certificate().is_some()
    }

    /// The cache file of the certificate.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// Start-up check after dropping privileges: the cache must stay writable.
    pub fn check_cache_writable(&self) -> Result<()> {
        let probe = self
            .s
            .cache_dir
            .join(format!(".probe.{}", std::process::id()));
        write_private(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe).map_err(Into::into))
            .with_context(|| {
                format!(
                    "acme.cache_dir: {} is not writable by the user the server runs as",
                    self.s.cache_dir.display()
                )
            })
    }

    fn deploy(&self, ck: CertifiedKey, info: CertInfo) {
        self.resolver.cert.store(Some(Arc::new(ck)));
        self.metrics.acme_cert_expiry.set(info.not_after);
        *lock(&self.last_seen) = Some(info.hash);
        *lock(&self.current) = Some(info);
    }

    /// Take the cached certificate if it is newer than the one in service.
    /// Returns true when one was put into service.
    fn adopt_from_cache(&self, at_start: bool) -> bool {
        let pem = match read_if_exists(&self.cert_file) {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!("ACME: {e:#}");
                return false;
            }
        };
        let hash: [u8; 32] = Sha256::digest(&pem).into();
        if *lock(&self.last_seen) == Some(hash) {
            return false;
        }
        *lock(&self.last_seen) = Some(hash);
        let (ck, info) = match parse_bundle(&pem, &self.provider) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(
                    file = %self.cert_file.display(),
                    "ACME: ignoring the cached certificate, it is not usable: {e:#}"
                );
                return false;
            }
        };
        let newer = match &*lock(&self.current) {
            None => true,
            Some(cur) => info.not_after > cur.not_after,
        };
        if !newer {
            return false;
        }
        let now = unix_now();
        let renew_at = self.renew_at(&info);
        if at_start {
            tracing::info!(
                file = %self.cert_file.display(),
                serial = %info.serial,
                expires = %rfc3339(info.not_after),
                renewal_due = %rfc3339(renew_at),
                "ACME: serving the cached certificate"
            );
        } else {
            tracing::info!(
                file = %self.cert_file.display(),
                serial = %info.serial,
                expires = %rfc3339(info.not_after),
                "ACME: took a newer certificate from the cache (renewed by another replica); new handshakes use it"
            );
        }
        if info.not_after <= now {
            tracing::warn!(
                expired = %rfc3339(info.not_after),
                "ACME: the cached certificate has expired; serving it until a new one is obtained"
            );
        }
        self.metrics.acme_cache_loads.inc();
        self.deploy(ck, info);
        true
    }

    fn renew_at(&self, info: &CertInfo) -> i64 {
        renew_at(self.s.renew_before, info.not_before, info.not_after)
    }

    /// Time until renewal is due (zero: now, or there is no certificate).
    fn until_renewal(&self) -> Duration {
        match &*lock(&self.current) {
            None => Duration::ZERO,
            Some(info) => {
                let wait = self.renew_at(info) - unix_now();
                Duration::from_secs(wait.max(0) as u64)
            }
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = self
            .s
            .retry_min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.s.retry_max);
        // Up to 10% more, so that replicas and restarts spread out.
        base + base.mul_f64(rand::random::<f64>() * 0.1)
    }

    /// Keep a valid certificate in service, forever.
    pub async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        loop {
            // Wait until an attempt is due, looking at the cache now and then.
            loop {
                let wait = match retry_at {
                    Some(t) => t.saturating_duration_since(Instant::now()),
                    None => self.until_renewal(),
                };
                if wait.is_zero() {
                    break;
                }
                tokio::time::sleep(wait.min(self.s.cache_poll_interval)).await;
                if self.adopt_from_cache(false) {
                    failures = 0;
                    retry_at = None;
                    self.metrics.acme_consecutive_failures.set(0);
                }
            }
            let guard = match try_lock(&self.lock_file) {
                Ok(Some(g)) => Some(g),
                Ok(None) => {
                    tracing::info!(
                        lock = %self.lock_file.display(),
                        "ACME: another replica is ordering (it holds the order lock); waiting for the certificate it stores in the cache"
                    );
                    retry_at = Some(Instant::now() + self.s.cache_poll_interval);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("ACME: {e:#}; ordering without the lock");
                    None
                }
            };
            // Another replica may have renewed while we waited for the lock.
            if self.adopt_from_cache(false) && !self.until_renewal().is_zero() {
                failures = 0;
                retry_at = None;
                continue;
            }
            let outcome = match tokio::time::timeout(ORDER_TIMEOUT, self.obtain()).await {
                Ok(r) => r,
                Err(_) => Err(anyhow!(
                    "the attempt did not finish within {}s",
                    ORDER_TIMEOUT.as_secs()
                )),
            };
            drop(guard);
            match outcome {
                Ok(()) => {
                    failures = 0;
                    retry_at = None;
                    self.metrics.acme_renewals_ok.inc();
                    self.metrics.acme_consecutive_failures.set(0);
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.acme_renewals_failed.inc();
                    self.metrics
                        .acme_consecutive_failures
                        .set(i64::from(failures));
                    let delay = self.backoff(failures);
                    retry_at = Some(Instant::now() + delay);
                    let serving = match &*lock(&self.current) {
                        Some(c) => format!(
                            "keeping the current certificate in service (expires {})",
                            rfc3339(c.not_after)
                        ),
                        None => "no certificate in service yet".to_string(),
                    };
                    tracing::warn!(
                        failures,
                        retry_in_seconds = delay.as_secs_f64().round(),
                        "ACME: could not obtain a certificate: {e:#}; {serving}; next attempt in {:.0}s",
                        delay.as_secs_f64()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rustls_acme() {
        let der = Account::generate_key_pair();
        let key_pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
        )
        .unwrap();
        let directory: Directory = serde_json::from_str(
            r#"{"newNonce":"https://x/n","newAccount":"https://x/a","newOrder":"https://x/o"}"#,
        )
        .unwrap();
        let account = Account {
            key_pair,
            directory,
            kid: "k".into(),
        };
        let challenges: Vec<rustls_acme::acme::Challenge> =
            serde_json::from_str(r#"[{"type":"http-01","url":"https://x/c","token":"tok_en-1"}]"#)
                .unwrap();
        let (_, theirs) = account.http_01(&challenges).unwrap();
        assert_eq!(theirs, format!("tok_en-1.{}", jwk_thumbprint(&account)));
    }

    #[test]
    fn renewal_time() {
        let day = 86_400;
        // Default: a third of the lifetime before expiry (30 of 90 days).
        assert_eq!(renew_at(None, 0, 90 * day), 60 * day);
        assert_eq!(
            renew_at(Some(Duration::from_secs(10 * day as u64)), 0, 90 * day),
            80 * day
        );
        // Never more than half the lifetime ahead.
        assert_eq!(
            renew_at(Some(Duration::from_secs(30 * day as u64)), 0, 6 * day),
            3 * day
        );
    }

    #[test]
    fn dates_and_errors_read_well() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        let p = Some(Problem {
            typ: Some("urn:ietf:params:acme:error:connection".into()),
            detail: Some("refused".into()),
        });
        assert_eq!(problem(&p), "connection: refused");
    }

    #[test]
    fn tokens_and_names_cannot_escape_the_directory() {
        assert!(valid_token("abc-DEF_123"));
        assert!(!valid_token("../x"));
        assert!(!valid_token(""));
        assert!(!valid_token("a/b"));
        assert!(valid_sni("nts.example.net"));
        assert!(!valid_sni("../etc"));
        assert!(!valid_sni("a/b.example"));
    }

    #[test]
    fn cache_files_are_private_and_named_by_directory_and_domains() {
        let dir = tempfile::tempdir().unwrap();
        let d = vec!["a.test".to_string()];
        let p1 = cert_cache_path(dir.path(), "https://one/dir", &d);
        let p2 = cert_cache_path(dir.path(), "https://two/dir", &d);
        assert_ne!(p1, p2);
        assert_ne!(
            account_cache_path(dir.path(), "https://one/dir"),
            account_cache_path(dir.path(), "https://two/dir")
        );
        write_private(&p1, b"one").unwrap();
        write_private(&p1, b"two").unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), b"two");
        let mode = std::fs::metadata(&p1).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bundle_parses_with_dates() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 4, 1);
        let cert = params.self_signed(&key).unwrap();
        let bundle = format!("{}\n{}", key.serialize_pem(), cert.pem());
        let (_, info) = parse_bundle(bundle.as_bytes(), &provider).unwrap();
        assert_eq!(rfc3339(info.not_before), "2030-01-01T00:00:00Z");
        assert_eq!(rfc3339(info.not_after), "2030-04-01T00:00:00Z");
        assert!(parse_bundle(cert.pem().as_bytes(), &provider).is_err());
    }

    #[test]
    fn acme_errors_are_condensed() {
        let body = r#"{"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "no such name", "status": 400}"#;
        let e = AcmeError::Io(std::io::Error::other(format!(
            "non 2xx http status: 400 {body:?}"
        )));
        let d = describe(&e);
        assert!(d.contains("rejectedIdentifier: no such name"), "{d}");
        assert!(d.contains("HTTP 400"), "{d}");
        let bad = AcmeError::Io(std::io::Error::other(
            "urn:ietf:params:acme:error:badNonce".to_string(),
        ));
        assert!(is_bad_nonce(&bad));
    }
}
