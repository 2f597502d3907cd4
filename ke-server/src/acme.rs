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
use std::io::Write;
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
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole attempt (directory to certificate) may take this long.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long to wait for the CA to validate one authorization.
const AUTH_TIMEOUT: Duration = Duration::from_secs(120);
/// Sending a request again after badNonce: at most this many tries.
const BAD_NONCE_TRIES: u32 = 16;
/// Validation connections handled at once by the challenge listeners.
const CHALLENGE_CONNECTIONS: usize = 64;
const CHALLENGE_CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// URL path prefix of HTTP-01 challenges.
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

fn unix_now() -> i64 {
    crate::server::unix_now() as i64
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Where the certificate for `domains` from `directory` is cached: key (PKCS#8
/// PEM) first, then the chain, leaf first.
pub fn cert_cache_path(cache_dir: &Path, directory: &str, domains: &[String]) -> PathBuf {
    let mut parts = vec![directory];
    parts.extend(domains.iter().map(String::as_str));
    let first = domains.first().map(String::as_str).unwrap_or("none");
    cache_dir.join(format!("cert-{first}-{}.pem", short_hash(&parts)))
}

/// Where the account key for `directory` is cached (PKCS#8 PEM).
pub fn account_cache_path(cache_dir: &Path, directory: &str) -> PathBuf {
    cache_dir.join(format!("account-{}.pem", short_hash(&[directory])))
}

/// Write `bytes` to `path` with mode 0600, atomically (temporary file in the same
/// directory, fsync, rename), so that readers never see half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// An HTTP-01 token is base64url (RFC 8555 section 8.3): safe as a file name.
fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 256
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_sni(name: &str) -> bool {
    crate::config::check_domain(name).is_ok_and(|n| n == name)
}

/// True when the ClientHello offers exactly `acme-tls/1`: a TLS-ALPN-01 validation.
pub fn is_acme_hello(hello: &ClientHello<'_>) -> bool {
    hello.alpn().into_iter().flatten().eq([ACME_TLS_ALPN])
}

/// The certificate in service plus the challenge answers being offered.
/// Used as the NTS-KE listener's certificate resolver.
#[derive(Debug)]
pub struct AcmeResolver {
    cert: ArcSwapOption<CertifiedKey>,
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 answers other replicas offer in `shared`, loaded by
    /// [`watch_shared_challenges`] so that no handshake reads a file.
    shared_tls_alpn: Mutex<HashMap<String, (std::time::SystemTime, Arc<CertifiedKey>)>>,
    http01: Mutex<HashMap<String, String>>,
    /// `cache_dir/challenges`: answers another replica is offering.
    shared: PathBuf,
    provider: Arc<CryptoProvider>,
    metrics: Arc<Metrics>,
}

impl AcmeResolver {
    fn new(shared: PathBuf, provider: Arc<CryptoProvider>, metrics: Arc<Metrics>) -> Self {
        Self {
            cert: ArcSwapOption::empty(),
            tls_alpn: Mutex::default(),
            shared_tls_alpn: Mutex::default(),
            http01: Mutex::default(),
            shared,
            provider,
            metrics,
        }
    }

    /// The certificate in service, if any.
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.cert.load_full()
    }

    fn http01_file(&self, token: &str) -> PathBuf {
        self.shared.join(format!("http-01-{token}"))
    }

    fn tls_alpn_file(&self, domain: &str) -> PathBuf {
        self.shared.join(format!("tls-alpn-01-{domain}.pem"))
    }

    /// Key authorization to answer `GET /.well-known/acme-challenge/TOKEN` with.
    pub fn http01_answer(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        let mine = lock(&self.http01).get(token).cloned();
        let answer = mine.or_else(|| {
            std::fs::read_to_string(self.http01_file(token))
                .ok()
                .map(|s| s.trim().to_string())
        })?;
        self.metrics.acme_http01_answers.inc();
        Some(answer)
    }

    fn tls_alpn_answer(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        if !valid_sni(&sni) {
            return None;
        }
        // Memory only: this runs inside a TLS handshake.
        let mine = lock(&self.tls_alpn).get(&sni).cloned();
        let answer = mine.or_else(|| {
            lock(&self.shared_tls_alpn)
                .get(&sni)
                .map(|(_, c)| c.clone())
        })?;
        self.metrics.acme_tls_alpn_answers.inc();
        Some(answer)
    }

    /// Load the TLS-ALPN-01 answers other replicas wrote to the shared directory
    /// (new or changed files only), and forget those whose files are gone.
    pub fn refresh_shared(&self) {
        let Ok(dir) = std::fs::read_dir(&self.shared) else {
            return;
        };
        let mut seen = HashMap::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(sni) = name
                .to_str()
                .and_then(|n| n.strip_prefix("tls-alpn-01-"))
                .and_then(|n| n.strip_suffix(".pem"))
            else {
                continue;
            };
            if !valid_sni(sni) {
                continue;
            }
            let Ok(mtime) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            seen.insert(sni.to_string(), mtime);
        }
        let stale: Vec<String> = {
            let have = lock(&self.shared_tls_alpn);
            seen.iter()
                .filter(|(sni, m)| have.get(*sni).is_none_or(|(t, _)| t != *m))
                .map(|(sni, _)| sni.clone())
                .collect()
        };
        let mut loaded = Vec::new();
        for sni in stale {
            let Ok(pem) = std::fs::read(self.tls_alpn_file(&sni)) else {
                continue;
            };
            if let Ok(ck) = challenge_key(&pem, &self.provider) {
                loaded.push((sni.clone(), seen[&sni], Arc::new(ck)));
            }
        }
        let mut have = lock(&self.shared_tls_alpn);
        have.retain(|sni, _| seen.contains_key(sni));
        for (sni, mtime, ck) in loaded {
            have.insert(sni, (mtime, ck));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_hello(&hello) {
            let sni = hello.server_name()?;
            return self.tls_alpn_answer(sni);
        }
        self.cert.load_full()
    }
}

/// Keep the shared TLS-ALPN-01 answers of other replicas in memory, looking
/// at the shared directory every 250 ms (validations follow within seconds).
pub async fn watch_shared_challenges(resolver: Arc<AcmeResolver>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = resolver.clone();
        let _ = tokio::task::spawn_blocking(move || r.refresh_shared()).await;
    }
}

/// For a listener that only answers TLS-ALPN-01 validations.
#[derive(Debug)]
struct ChallengeOnly(Arc<AcmeResolver>);

impl ResolvesServerCert for ChallengeOnly {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_hello(&hello) {
            self.0.resolve(hello)
        } else {
            None
        }
    }
}

/// A challenge answer on offer; withdrawn (from memory and the shared directory) on drop.
struct Armed<'a> {
    resolver: &'a AcmeResolver,
    kind: ChallengeType,
    key: String,
    file: PathBuf,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        match self.kind {
            ChallengeType::Http01 => {
                lock(&self.resolver.http01).remove(&self.key);
            }
            ChallengeType::TlsAlpn01 => {
                lock(&self.resolver.tls_alpn).remove(&self.key);
            }
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// What we know about the certificate in service.
#[derive(Debug, Clone)]
struct CertInfo {
    not_before: i64,
    not_after: i64,
    serial: String,
    hash: [u8; 32],
}

fn rfc3339(t: i64) -> String {
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Parse a cache file (key, then chain) into a usable certificate and its dates.
fn parse_bundle(pem: &[u8], provider: &CryptoProvider) -> Result<(CertifiedKey, CertInfo)> {
    let ck = certified_key_from_pem(pem, pem, provider)?;
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .context("no certificate")?
        .context("certificate is not valid PEM")?;
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| anyhow!("leaf certificate does not parse: {e}"))?;
    let v = x509.validity();
    let info = CertInfo {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
        serial: x509.raw_serial_as_string(),
        hash: Sha256::digest(pem).into(),
    };
    Ok((ck, info))
}

/// When to renew a certificate valid from `not_before` to `not_after`: `renew_before`
/// ahead of expiry, at most half the lifetime (so that a short-lived certificate is
/// not renewed again at once, in a loop); by default a third of the lifetime ahead.
fn renew_at(renew_before: Option<Duration>, not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let before = match renew_before {
        Some(d) => (d.as_secs() as i64).min(lifetime / 2),
        None => lifetime / 3,
    };
    not_after - before
}

/// Condense an ACME error: the problem type and detail when the CA sent one.
fn describe(e: &AcmeError) -> String {
    let text = e.to_string();
    let unescaped = text.replace("\\\"", "\"").replace("\\n", " ");
    let Some(start) = unescaped.find("urn:ietf:params:acme:error:") else {
        return text;
    };
    let kind: String = unescaped[start + "urn:ietf:params:acme:error:".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let status = unescaped
        .split("non 2xx http status: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|s| format!("HTTP {s} "))
        .unwrap_or_default();
    let detail = unescaped
        .split("\"detail\":")
        .nth(1)
        .and_then(|s| s.trim_start().strip_prefix('"'))
        .and_then(|s| s.split('"').next())
        .unwrap_or("");
    format!("{status}{kind}: {detail}")
}

fn is_bad_nonce(e: &AcmeError) -> bool {
    e.to_string()
        .contains("urn:ietf:params:acme:error:badNonce")
}

fn problem(p: &Option<Problem>) -> String {
    match p {
        Some(p) => format!(
            "{}: {}",
            p.typ
                .as_deref()
                .unwrap_or("")
                .trim_start_matches("urn:ietf:params:acme:error:"),
            p.detail.as_deref().unwrap_or("")
        ),
        None => "no reason given".into(),
    }
}

/// RFC 7638 thumbprint of the account's P-256 key, base64url.
fn jwk_thumbprint(account: &Account) -> String {
    use ring::signature::KeyPair as _;
    let pk = account.key_pair.public_key().as_ref();
    let (x, y) = pk[1..].split_at(32);
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        BASE64_URL_SAFE_NO_PAD.encode(x),
        BASE64_URL_SAFE_NO_PAD.encode(y)
    );
    BASE64_URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// A TLS-ALPN-01 answer (key + self-signed certificate PEM) as a `CertifiedKey`.
/// Not through `CertifiedKey::from_der`: its consistency check parses the
/// certificate, and the critical acmeIdentifier extension makes that fail.
fn challenge_key(pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey> {
    let cert =
        CertificateDer::from_pem_slice(pem).context("no certificate in the challenge answer")?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem)
        .context("no key in the challenge answer")?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("challenge key not usable: {e}"))?;
    Ok(CertifiedKey::new(vec![cert], key))
}

/// Self-signed TLS-ALPN-01 certificate for `domain` (RFC 8737 section 3), as key + cert PEM.
fn tls_alpn_cert(domain: &str, key_auth: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    let digest = Sha256::digest(key_auth.as_bytes());
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(format!("{}{}", key.serialize_pem(), cert.pem()))
}

/// An exclusive `flock` on a file; released on drop.
struct FileLock(#[allow(dead_code)] File);

fn try_lock(path: &Path) -> Result<Option<FileLock>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(FileLock(f)));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e).with_context(|| format!("cannot lock {}", path.display()))
    }
}

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
        let certs = CertificateDer::pem_file_iter(f)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| anyhow!("acme.ca_roots: cannot read {}: {e}", f.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            bail!("acme.ca_roots: {} holds no usable certificate", f.display());
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS version available in the crypto provider")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn ensure_private_dir(dir: &Path, what: &str) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{what}: cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{what}: cannot set the mode of {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!("{what}: {} is not a directory", dir.display());
    }
    Ok(())
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

    /// One request to the CA, sent again (with a fresh nonce) when the CA refuses the nonce.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AcmeError>>,
    {
        let mut attempt = 1;
        loop {
            match tokio::time::timeout(HTTP_TIMEOUT, f()).await {
                Err(_) => bail!(
                    "{what}: no answer from the CA within {}s",
                    HTTP_TIMEOUT.as_secs()
                ),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_bad_nonce(&e) && attempt < BAD_NONCE_TRIES => {
                    self.metrics.acme_bad_nonce_retries.inc();
                    tracing::info!(
                        request = what,
                        attempt,
                        "ACME: the CA refused the nonce (badNonce); sending the request again with a fresh one"
                    );
                    attempt += 1;
                }
                Ok(Err(e)) => bail!("{what}: {}", describe(&e)),
            }
        }
    }

    fn account_key(&self) -> Result<Vec<u8>> {
        if let Some(pem) = read_if_exists(&self.account_file)? {
            let key = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
                anyhow!(
                    "the cached account key {} is not a PKCS#8 PEM key: {e}",
                    self.account_file.display()
                )
            })?;
            tracing::info!(file = %self.account_file.display(), "ACME: using the cached account key");
            return Ok(key.secret_pkcs8_der().to_vec());
        }
        let der = Account::generate_key_pair();
        let pem = rustls_pki_types::PrivatePkcs8KeyDer::from(der.clone());
        let text = pem_encode("PRIVATE KEY", pem.secret_pkcs8_der());
        write_private(&self.account_file, text.as_bytes())?;
        tracing::info!(file = %self.account_file.display(), "ACME: created a new account key and stored it in the cache");
        Ok(der)
    }

    /// Directory, account, order, authorizations, finalization, download; then
    /// store the certificate and put it into service.
    async fn obtain(&self) -> Result<()> {
        let s = &self.s;
        let client = &self.client;
        tracing::info!(directory = %s.directory, "ACME: fetching the directory");
        let directory = self
            .call(&format!("fetching the directory {}", s.directory), || {
                Directory::discover(client, &s.directory)
            })
            .await?;
        let key = self.account_key()?;
        tracing::info!(contact = ?s.contact, "ACME: registering the account (or finding the existing one)");
        let account = self
            .call("newAccount", || {
                Account::create_with_keypair(client, directory.clone(), &s.contact, &key)
            })
            .await?;
        tracing::info!(account = %account.kid, "ACME: account ready");
        let thumbprint = jwk_thumbprint(&account);

        let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(s.domains.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&cert_key)?;

        let (order_url, mut order) = self
            .call("newOrder", || account.new_order(client, s.domains.clone()))
            .await?;
        self.metrics.acme_orders.inc();
        tracing::info!(order = %order_url, domains = ?s.domains, "ACME: order placed");
        let mut delay = Duration::from_millis(500);
        let mut processing_since: Option<Instant> = None;
        loop {
            match order.status {
                OrderStatus::Pending => {
                    for url in &order.authorizations {
                        self.authorize(&account, url, &thumbprint).await?;
                    }
                    order = self
                        .call("order", || account.order(client, &order_url))
                        .await?;
                    if matches!(order.status, OrderStatus::Pending) {
                        bail!("the order is still pending after every authorization succeeded");
                    }
                }
                OrderStatus::Ready => {
                    tracing::info!(
                        "ACME: every name is validated; finalizing the order (sending the CSR)"
                    );
                    let finalize = order.finalize.clone();
                    order = self
                        .call("finalize", || {
                            account.finalize(client, &finalize, csr.der())
                        })
                        .await?;
                }
                OrderStatus::Processing => {
                    let since = *processing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > AUTH_TIMEOUT {
                        bail!(
                            "the CA did not issue the certificate within {}s",
                            AUTH_TIMEOUT.as_secs()
                        );
                    }
                    tracing::info!("ACME: waiting for the CA to issue the certificate");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    order = self
                        .call("order", || account.order(client, &order_url))
                        .await?;
                }
                OrderStatus::Valid { certificate } => {
                    tracing::info!(url = %certificate, "ACME: certificate issued; downloading it");
                    let chain = self
                        .call("certificate", || account.certificate(client, &certificate))
                        .await?;
                    let bundle = format!("{}\n{}", cert_key.serialize_pem(), chain);
                    let (ck, info) = parse_bundle(bundle.as_bytes(), &self.provider)
                        .context("the certificate the CA issued is not usable")?;
                    write_private(&self.cert_file, bundle.as_bytes())
                        .context("storing the certificate in the cache")?;
                    tracing::info!(
                        serial = %info.serial,
                        not_before = %rfc3339(info.not_before),
                        expires = %rfc3339(info.not_after),
                        renewal_due = %rfc3339(self.renew_at(&info)),
                        file = %self.cert_file.display(),
                        "ACME: new certificate stored in the cache and in service; new handshakes use it"
                    );
                    self.deploy(ck, info);
                    return Ok(());
                }
                OrderStatus::Invalid => {
                    bail!("the CA marked the order invalid: {}", problem(&order.error))
                }
            }
        }
    }

    async fn authorize(&self, account: &Account, url: &str, thumbprint: &str) -> Result<()> {
        let client = &self.client;
        let auth = self
            .call("authorization", || account.auth(client, url))
            .await?;
        let Identifier::Dns(domain) = &auth.identifier;
        match auth.status {
            AuthStatus::Valid => {
                tracing::info!(domain = %domain, "ACME: authorization already valid");
                return Ok(());
            }
            AuthStatus::Pending => {}
            other => bail!("authorization for {domain} is {other:?}"),
        }
        let kind = self.s.challenge;
        let wanted = match kind {
            ChallengeType::Http01 => AcmeChallenge::Http01,
            ChallengeType::TlsAlpn01 => AcmeChallenge::TlsAlpn01,
        };
        let challenge = auth
            .challenges
            .iter()
            .find(|c| c.typ == wanted)
            .with_context(|| format!("the CA offers no {} challenge for {domain}", kind.name()))?;
        let key_auth = format!("{}.{thumbprint}", challenge.token);
        let _armed = self.arm(kind, domain, &challenge.token, &key_auth)?;
        let answered_by = match (kind, self.s.challenge_listener, self.s.http_listener) {
            (ChallengeType::TlsAlpn01, Some(a), _) => format!("challenge listener {a}"),
            (ChallengeType::TlsAlpn01, None, _) => "the NTS-KE listener".to_string(),
            (ChallengeType::Http01, _, Some(a)) => format!("HTTP listener {a}"),
            (ChallengeType::Http01, _, None) => "nothing".to_string(),
        };
        tracing::info!(
            domain = %domain,
            challenge = kind.name(),
            answered_by = %answered_by,
            "ACME: challenge ready; asking the CA to validate"
        );
        let challenge_url = challenge.url.clone();
        self.call("challenge", || account.challenge(client, &challenge_url))
            .await?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            let auth = self
                .call("authorization", || account.auth(client, url))
                .await?;
            match auth.status {
                AuthStatus::Pending => {
                    if start.elapsed() > AUTH_TIMEOUT {
                        bail!(
                            "the CA did not validate {domain} within {}s",
                            AUTH_TIMEOUT.as_secs()
                        );
                    }
                    tracing::debug!(domain = %domain, "ACME: validation still pending");
                }
                AuthStatus::Valid => {
                    tracing::info!(domain = %domain, challenge = kind.name(), "ACME: authorization valid");
                    return Ok(());
                }
                other => {
                    let why = auth
                        .challenges
                        .iter()
                        .find(|c| c.typ == wanted)
                        .map(|c| problem(&c.error))
                        .unwrap_or_else(|| "no reason given".into());
                    bail!(
                        "the CA could not validate {domain} with {} ({other:?}): {why}",
                        kind.name()
                    );
                }
            }
        }
    }

    /// Offer a challenge answer, in memory and in the shared cache directory.
    fn arm(
        &self,
        kind: ChallengeType,
        domain: &str,
        token: &str,
        key_auth: &str,
    ) -> Result<Armed<'_>> {
        let r = &self.resolver;
        match kind {
            ChallengeType::Http01 => {
                if !valid_token(token) {
                    bail!("the CA sent a malformed challenge token {token:?}");
                }
                let file = r.http01_file(token);
                lock(&r.http01).insert(token.to_string(), key_auth.to_string());
                let armed = Armed {
                    resolver: r,
                    kind,
                    key: token.to_string(),
                    file,
                };
                if let Err(e) = write_private(&armed.file, key_auth.as_bytes()) {
                    tracing::warn!(
                        "ACME: cannot share the challenge answer with other replicas: {e:#}"
                    );
                }
                Ok(armed)
            }
            ChallengeType::TlsAlpn01 => {
                let pem = tls_alpn_cert(domain, key_auth)?;
                let ck = challenge_key(pem.as_bytes(), &self.provider)?;
                let file = r.tls_alpn_file(domain);
                lock(&r.tls_alpn).insert(domain.to_string(), Arc::new(ck));
                let armed = Armed {
                    resolver: r,
                    kind,
                    key: domain.to_string(),
                    file,
                };
                if let Err(e) = write_private(&armed.file, pem.as_bytes()) {
                    tracing::warn!(
                        "ACME: cannot share the challenge answer with other replicas: {e:#}"
                    );
                }
                Ok(armed)
            }
        }
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::prelude::BASE64_STANDARD;
    let b64 = BASE64_STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Answer TLS-ALPN-01 validations on a listener of their own.
pub async fn serve_tls_alpn(
    listener: TcpListener,
    resolver: Arc<AcmeResolver>,
    provider: Arc<CryptoProvider>,
) {
    let cfg = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => {
            let mut c = b
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(ChallengeOnly(resolver)));
            c.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            c
        }
        Err(e) => {
            tracing::error!("ACME: challenge listener cannot start: {e}");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let slots = Arc::new(Semaphore::new(CHALLENGE_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("ACME: challenge listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(CHALLENGE_CONN_TIMEOUT, async {
                let mut tls = acceptor.accept(stream).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut tls).await
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    tracing::debug!(%peer, "ACME: answered a TLS-ALPN-01 validation")
                }
                Ok(Err(e)) => tracing::debug!(%peer, "ACME: challenge connection failed: {e}"),
                Err(_) => tracing::debug!(%peer, "ACME: challenge connection timed out"),
            }
            drop(permit);
        });
    }
}

fn http01_response(
    resolver: &AcmeResolver,
    method: &hyper::Method,
    path: &str,
) -> hyper::Response<Full<Bytes>> {
    let answer = (method == hyper::Method::GET || method == hyper::Method::HEAD)
        .then(|| path.strip_prefix(HTTP01_PREFIX))
        .flatten()
        .and_then(|token| resolver.http01_answer(token));
    let (status, body) = match answer {
        Some(a) => (hyper::StatusCode::OK, a),
        None => (hyper::StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// Answer HTTP-01 validations: `GET /.well-known/acme-challenge/TOKEN`.
pub async fn serve_http01(listener: TcpListener, resolver: Arc<AcmeResolver>) {
    let slots = Arc::new(Semaphore::new(CHALLENGE_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("ACME: HTTP-01 listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let resp = http01_response(&resolver, req.method(), req.uri().path());
                    tracing::debug!(%peer, path = req.uri().path(), status = %resp.status(), "ACME: HTTP-01 request");
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CHALLENGE_CONN_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rustls_acme() {
        let der = Account::generate_key_pair();
        let key_pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
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
        let provider = rustls::crypto::ring::default_provider();
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
