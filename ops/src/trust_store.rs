//! Trust anchors from PEM CA bundles, loaded one way by every role (the
//! client's extra CAs, key sync's client and server CAs, ACME's extra roots,
//! `check`): a bundle that is unreadable, not PEM, holds no certificate or no
//! usable one is an error that names the file and says which of these it is.

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a CA bundle gave no trust anchor.
#[derive(Debug, Error)]
pub enum TrustStoreError {
    #[error("CA file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: bad PEM: {detail}")]
    BadPem { path: PathBuf, detail: String },
    #[error("CA file {path}: no certificates (no BEGIN CERTIFICATE section)")]
    NoCertificates { path: PathBuf },
    #[error("CA file {path}: no usable CA certificate ({rejected} could not be parsed as X.509 trust anchors)")]
    NoUsable { path: PathBuf, rejected: usize },
}

/// The certificates of a PEM bundle already read into memory; `path` names it
/// in errors. Non-certificate sections (keys, parameters) are skipped.
pub fn certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TrustStoreError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustStoreError::BadPem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TrustStoreError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Add the bundle `pem` (read from `path`) to `roots`; how many were added (at least one).
pub fn add_pem(
    roots: &mut RootCertStore,
    path: &Path,
    pem: &[u8],
) -> Result<usize, TrustStoreError> {
    let (added, rejected) = roots.add_parsable_certificates(certificates(path, pem)?);
    if added == 0 {
        return Err(TrustStoreError::NoUsable {
            path: path.to_path_buf(),
            rejected,
        });
    }
    Ok(added)
}

/// Read the bundle at `path` and add it to `roots`.
pub fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TrustStoreError> {
    let pem = std::fs::read(path).map_err(|source| TrustStoreError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    add_pem(roots, path, &pem)
}

/// A store holding exactly the bundle `pem` (read from `path`).
pub fn from_pem(path: &Path, pem: &[u8]) -> Result<RootCertStore, TrustStoreError> {
    let mut roots = RootCertStore::empty();
    add_pem(&mut roots, path, pem)?;
    Ok(roots)
}

/// A store holding exactly the bundle at `path`.
pub fn from_pem_file(path: &Path) -> Result<RootCertStore, TrustStoreError> {
    let mut roots = RootCertStore::empty();
    add_pem_file(&mut roots, path)?;
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ca.test".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn loads_a_bundle_and_names_the_file_on_each_failure() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("ca.pem");
        std::fs::write(&good, format!("{}{}", ca_pem(), ca_pem())).unwrap();
        assert_eq!(from_pem_file(&good).unwrap().len(), 2);

        let missing = d.path().join("missing.pem");
        let e = from_pem_file(&missing).unwrap_err();
        assert!(matches!(e, TrustStoreError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let e = from_pem(Path::new("empty.pem"), b"just text\n").unwrap_err();
        assert!(matches!(e, TrustStoreError::NoCertificates { .. }), "{e}");
        assert!(e.to_string().contains("empty.pem: no certificates"), "{e}");

        let bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = from_pem(Path::new("bad.pem"), bad).unwrap_err();
        assert!(matches!(e, TrustStoreError::BadPem { .. }), "{e}");
        assert!(e.to_string().contains("bad.pem: bad PEM"), "{e}");

        // Valid base64, not a certificate.
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = from_pem(Path::new("junk.pem"), junk).unwrap_err();
        assert!(
            matches!(e, TrustStoreError::NoUsable { rejected: 1, .. }),
            "{e}"
        );
    }

    #[test]
    fn adds_to_an_existing_store() {
        let mut roots = RootCertStore::empty();
        add_pem(&mut roots, Path::new("a"), ca_pem().as_bytes()).unwrap();
        add_pem(&mut roots, Path::new("b"), ca_pem().as_bytes()).unwrap();
        assert_eq!(roots.len(), 2);
    }
}
