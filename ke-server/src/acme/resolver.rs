//! The certificate resolver: the ACME certificate in service and the
//! challenge answers on offer (this replica's, and those other replicas wrote
//! to the shared directory, loaded in the background so no handshake reads a
//! file).

use super::*;

/// An HTTP-01 token is base64url (RFC 8555 section 8.3): safe as a file name.
pub(super) fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 256
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn valid_sni(name: &str) -> bool {
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
    pub(super) cert: ArcSwapOption<CertifiedKey>,
    pub(super) tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 answers other replicas offer in `shared`, loaded by
    /// [`watch_shared_challenges`] so that no handshake reads a file.
    pub(super) shared_tls_alpn: Mutex<HashMap<String, (std::time::SystemTime, Arc<CertifiedKey>)>>,
    pub(super) http01: Mutex<HashMap<String, String>>,
    /// `cache_dir/challenges`: answers another replica is offering.
    pub(super) shared: PathBuf,
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) metrics: Arc<Metrics>,
}

impl AcmeResolver {
    pub(super) fn new(
        shared: PathBuf,
        provider: Arc<CryptoProvider>,
        metrics: Arc<Metrics>,
    ) -> Self {
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

    pub(super) fn http01_file(&self, token: &str) -> PathBuf {
        self.shared.join(format!("http-01-{token}"))
    }

    pub(super) fn tls_alpn_file(&self, domain: &str) -> PathBuf {
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

    pub(super) fn tls_alpn_answer(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
pub(super) struct ChallengeOnly(pub(super) Arc<AcmeResolver>);

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
pub(super) struct Armed<'a> {
    pub(super) resolver: &'a AcmeResolver,
    pub(super) kind: ChallengeType,
    pub(super) key: String,
    pub(super) file: PathBuf,
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
