//! A throw-away PKI for tests: a CA and a server certificate signed by it, valid
//! for `localhost`, `127.0.0.1` and `::1` (ECDSA P-256, generated with `rcgen`).
//!
//! Files are written readable by daemon users: the directory is 0755, the
//! certificates 0644 and the key 0640 owned by `root:_chrony` when we are root
//! and chrony's user exists (0644 otherwise), so that chronyd can load them
//! after dropping privileges.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::fsutil;
use crate::{Error, Result};

/// Names in the server certificate by default.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A CA and a server certificate + key, in memory and on disk.
#[derive(Debug)]
pub struct TestPki {
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// Server certificate, PEM (the leaf only; the CA is in `ca_pem`).
    pub cert_pem: String,
    /// Server certificate, DER.
    pub cert_der: Vec<u8>,
    /// Server private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Server private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    ca_path: PathBuf,
    cert_path: PathBuf,
    chain_path: PathBuf,
    key_path: PathBuf,
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl TestPki {
    /// Generates a PKI with [`DEFAULT_SERVER_NAMES`] in a fresh temporary
    /// directory (removed when the `TestPki` is dropped).
    pub fn generate() -> Result<TestPki> {
        let tmp = fsutil::tempdir("ntstk-pki-")?;
        let mut pki = Self::generate_in(tmp.path(), DEFAULT_SERVER_NAMES)?;
        pki._tempdir = Some(tmp);
        Ok(pki)
    }

    /// Generates a PKI whose server certificate holds `names` (DNS names or IP
    /// addresses) and writes it into `dir` (created if needed, made 0755):
    /// `ca.pem`, `server.pem`, `server-chain.pem` (server + CA) and `server.key`.
    pub fn generate_in(dir: &Path, names: &[&str]) -> Result<TestPki> {
        let cert_err = |what: &str, e: rcgen::Error| Error::Other(format!("{what}: {e}"));

        let ca_key = KeyPair::generate().map_err(|e| cert_err("generating CA key", e))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| cert_err("CA parameters", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "nts-testkit test CA");
        ca_params.distinguished_name = dn;
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params
            .self_signed(&ca_key)
            .map_err(|e| cert_err("self-signing CA", e))?;

        let key = KeyPair::generate().map_err(|e| cert_err("generating server key", e))?;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())
            .map_err(|e| cert_err("server certificate parameters", e))?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .map_err(|e| cert_err("signing server certificate", e))?;

        let pki_dir = dir.to_path_buf();
        std::fs::create_dir_all(&pki_dir)
            .map_err(|e| Error::io(format!("mkdir {}", pki_dir.display()), e))?;
        fsutil::set_mode(&pki_dir, 0o755)?;

        let ca_pem = ca.pem();
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let ca_path = pki_dir.join("ca.pem");
        let cert_path = pki_dir.join("server.pem");
        let chain_path = pki_dir.join("server-chain.pem");
        let key_path = pki_dir.join("server.key");
        fsutil::write_file(&ca_path, &ca_pem, 0o644)?;
        fsutil::write_file(&cert_path, &cert_pem, 0o644)?;
        fsutil::write_file(&chain_path, format!("{cert_pem}{ca_pem}"), 0o644)?;
        match (fsutil::euid() == 0, fsutil::chrony_user()) {
            (true, Some((_, gid))) => {
                fsutil::write_file(&key_path, &key_pem, 0o600)?;
                fsutil::chown(&key_path, 0, gid)?;
                fsutil::set_mode(&key_path, 0o640)?;
            }
            _ => fsutil::write_file(&key_path, &key_pem, 0o644)?,
        }

        Ok(TestPki {
            ca_der: ca.der().to_vec(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            ca_pem,
            cert_pem,
            key_pem,
            ca_path,
            cert_path,
            chain_path,
            key_path,
            dir: pki_dir,
            _tempdir: None,
        })
    }

    /// Path of the CA certificate (PEM): what clients trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Path of the server certificate (PEM, leaf only).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Path of the server certificate followed by the CA (PEM).
    pub fn chain_path(&self) -> &Path {
        &self.chain_path
    }

    /// Path of the server private key (PKCS#8 PEM).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_files() {
        let pki = TestPki::generate().unwrap();
        for p in [
            pki.ca_path(),
            pki.cert_path(),
            pki.chain_path(),
            pki.key_path(),
        ] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", p.display());
        }
        assert!(pki.key_pem.contains("PRIVATE KEY"));
        assert!(pki.cert_pem.contains("BEGIN CERTIFICATE"));
        assert_ne!(pki.ca_der, pki.cert_der);
        let dir = pki.dir().to_path_buf();
        drop(pki);
        assert!(!dir.exists());
    }
}
