//! The server certificate: loaded from PEM files, checked, and swapped in
//! without a restart when the files change (as cert-manager and certbot renew
//! them). A replacement that does not load keeps the old certificate in
//! service and says why, once.

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use nts_ops::file_reader::FileReader;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Parse a chain and key from PEM bytes and check they belong together.
pub fn certified_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("certificate chain is not valid PEM")?;
    if chain.is_empty() {
        bail!("no certificate found in the chain file");
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).context("no usable private key in the key file")?;
    let ck = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            anyhow::anyhow!("private key does not match the certificate")
        }
        e => anyhow::anyhow!("certificate and key are not usable: {e}"),
    })?;
    // from_der tolerates an unknown consistency; insist on a positive match.
    ck.keys_match()
        .map_err(|e| anyhow::anyhow!("private key does not match the certificate: {e}"))?;
    Ok(ck)
}

/// Not-before and not-after of a DER certificate, Unix seconds.
pub fn validity(der: &[u8]) -> Result<(i64, i64)> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).context("certificate is not parsable X.509")?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Not-after of the leaf of `ck`, Unix seconds.
pub fn leaf_not_after(ck: &CertifiedKey) -> Option<i64> {
    ck.cert.first().and_then(|c| validity(c).ok()).map(|v| v.1)
}

/// Refuse a leaf certificate that is not valid at `now` (Unix seconds).
pub fn check_within_validity(ck: &CertifiedKey, now: i64) -> Result<()> {
    let leaf = ck.cert.first().context("empty certificate chain")?;
    let (nb, na) = validity(leaf)?;
    if now < nb {
        bail!("certificate is not valid yet (valid from Unix time {nb})");
    }
    if now > na {
        bail!("certificate expired (not after Unix time {na})");
    }
    Ok(())
}

/// Read, parse and check a chain and key pair the way start-up does: readable,
/// matching, within validity. Errors name `chain_key` and `key_key`.
pub fn check_pair(
    reader: &FileReader,
    chain_key: &str,
    chain: &Path,
    key_key: &str,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey> {
    let chain_pem = reader
        .read(chain)
        .with_context(|| format!("{chain_key} {}: cannot read", chain.display()))?;
    let key_pem = reader
        .read(key)
        .with_context(|| format!("{key_key} {}: cannot read", key.display()))?;
    let ck = certified_key_from_pem(&chain_pem, &key_pem, provider).with_context(|| {
        format!(
            "{chain_key} {} and {key_key} {}",
            chain.display(),
            key.display()
        )
    })?;
    check_within_validity(&ck, now_unix())
        .with_context(|| format!("{chain_key} {}", chain.display()))?;
    Ok(ck)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A certificate resolver whose certificate can be replaced at any time.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    chain_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// Reads the files; through the privileged helper after a user switch.
    reader: Arc<FileReader>,
    /// Fingerprint of the file contents in service, and of the last contents that failed.
    seen: Mutex<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What a reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Replaced,
    /// New contents failed to load; the old certificate stays. Reported once per bad content.
    Rejected(String),
    /// The same bad contents as last time: nothing new to say.
    StillRejected,
}

/// How long a pair of files that does not load is given to settle (a
/// renewal writing the chain and the key one after the other) before it
/// counts as broken.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

fn fingerprint(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((a.len() as u64).to_be_bytes());
    h.update(a);
    h.update(b);
    h.finalize().to_vec()
}

fn read(reader: &FileReader, path: &Path) -> Result<Vec<u8>> {
    reader
        .read(path)
        .with_context(|| format!("cannot read {}", path.display()))
}

impl ReloadingCert {
    /// Load the files now; failing here stops start-up.
    pub fn load(chain_path: &Path, key_path: &Path, provider: Arc<CryptoProvider>) -> Result<Self> {
        Self::load_with(
            Arc::new(FileReader::direct()),
            chain_path,
            key_path,
            provider,
        )
    }

    /// Like [`Self::load`], reading (now and at every reload) through `reader`.
    pub fn load_with(
        reader: Arc<FileReader>,
        chain_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self> {
        let chain = read(&reader, chain_path)?;
        let key = read(&reader, key_path)?;
        let ck = certified_key_from_pem(&chain, &key, &provider).with_context(|| {
            format!(
                "loading tls.certificate_chain {} and tls.private_key {}",
                chain_path.display(),
                key_path.display()
            )
        })?;
        Ok(Self {
            current: ArcSwap::from_pointee(ck),
            chain_path: chain_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            reader,
            seen: Mutex::new((fingerprint(&chain, &key), None)),
        })
    }

    /// Re-read the files and swap in a new certificate if they changed and load.
    ///
    /// A renewal that replaces the chain and the key one after the other
    /// shows a mismatched pair for a moment, so new contents that do not load
    /// are looked at again after [`SETTLE`] before they count as broken.
    /// Blocking: call from a blocking thread.
    pub fn reload(&self) -> ReloadOutcome {
        match self.try_load() {
            Ok(outcome) => outcome,
            Err(_) => {
                std::thread::sleep(SETTLE);
                match self.try_load() {
                    Ok(outcome) => outcome,
                    Err((fp, why)) => self.rejected(fp, why),
                }
            }
        }
    }

    /// Load the files if they changed. `Err` carries new contents that do
    /// not load (their fingerprint and why); contents already rejected give
    /// `StillRejected`.
    fn try_load(&self) -> Result<ReloadOutcome, (Vec<u8>, String)> {
        let (chain, key) = match (
            read(&self.reader, &self.chain_path),
            read(&self.reader, &self.key_path),
        ) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                let fp = format!("{e:#}").into_bytes();
                return self.new_failure(fp, format!("{e:#}"));
            }
        };
        let fp = fingerprint(&chain, &key);
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 == fp {
                return Ok(ReloadOutcome::Unchanged);
            }
        }
        match certified_key_from_pem(&chain, &key, &self.provider) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                *seen = (fp, None);
                Ok(ReloadOutcome::Replaced)
            }
            Err(e) => self.new_failure(fp, format!("{e:#}")),
        }
    }

    fn new_failure(&self, fp: Vec<u8>, why: String) -> Result<ReloadOutcome, (Vec<u8>, String)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.1.as_deref() == Some(&fp[..]) {
            return Ok(ReloadOutcome::StillRejected);
        }
        Err((fp, why))
    }

    fn rejected(&self, fp: Vec<u8>, why: String) -> ReloadOutcome {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.1.as_deref() == Some(&fp[..]) {
            return ReloadOutcome::StillRejected;
        }
        seen.1 = Some(fp);
        ReloadOutcome::Rejected(why)
    }

    /// The certificate chain in service (leaf first).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(name: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (ck.cert.pem(), ck.key_pair.serialize_pem())
    }

    fn provider() -> Arc<CryptoProvider> {
        nts_ops::tls_provider::provider()
    }

    #[test]
    fn a_renewal_caught_between_its_two_files_is_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        let (c1, k1) = make("one.test");
        std::fs::write(&chain, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let rc = ReloadingCert::load(&chain, &key, provider()).unwrap();
        // The renewal has written the new chain; its key follows 100 ms later.
        let (c2, k2) = make("two.test");
        std::fs::write(&chain, &c2).unwrap();
        let key2 = key.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            std::fs::write(&key2, k2).unwrap();
        });
        assert_eq!(rc.reload(), ReloadOutcome::Replaced);
        writer.join().unwrap();
        assert_eq!(rc.reload(), ReloadOutcome::Unchanged);
    }

    #[test]
    fn reload_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        let (c1, k1) = make("one.test");
        std::fs::write(&chain, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let rc = ReloadingCert::load(&chain, &key, provider()).unwrap();
        let first = rc.current().cert[0].clone();
        assert_eq!(rc.reload(), ReloadOutcome::Unchanged);

        // A key that does not match the certificate is refused; the old one stays.
        let (c2, k2) = make("two.test");
        std::fs::write(&chain, &c2).unwrap();
        assert!(
            matches!(rc.reload(), ReloadOutcome::Rejected(why) if why.contains("does not match"))
        );
        assert_eq!(rc.reload(), ReloadOutcome::StillRejected);
        assert_eq!(rc.current().cert[0], first);

        // Garbage is refused too.
        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(rc.reload(), ReloadOutcome::Rejected(_)));

        // The matching pair goes into service.
        std::fs::write(&key, &k2).unwrap();
        assert_eq!(rc.reload(), ReloadOutcome::Replaced);
        assert_ne!(rc.current().cert[0], first);

        // A missing file keeps the certificate in service.
        std::fs::remove_file(&chain).unwrap();
        assert!(matches!(rc.reload(), ReloadOutcome::Rejected(why) if why.contains("cannot read")));
        assert_eq!(rc.reload(), ReloadOutcome::StillRejected);
    }

    #[test]
    fn start_up_errors_name_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&chain, "").unwrap();
        std::fs::write(&key, "").unwrap();
        let e = ReloadingCert::load(&chain, &key, provider()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("tls.certificate_chain") && msg.contains("no certificate"),
            "{msg}"
        );
    }
}
