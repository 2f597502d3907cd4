//! Development certificates for `--dev`: a local CA (`ca.pem`) and a server
//! certificate for localhost, 127.0.0.1 and ::1 signed by it. Generated once
//! per state directory and reused, so clients configured with `ca.pem` keep
//! working across restarts. Never for production.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// Paths of the development PKI inside a state directory.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The key-sync (gRPC) service's certificate.
    pub keysync_cert: PathBuf,
    pub keysync_key: PathBuf,
    /// The client certificate time servers present to the key-sync service.
    pub time_server_cert: PathBuf,
    pub time_server_key: PathBuf,
}

impl DevPki {
    pub fn paths(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("ke-cert.pem"),
            server_key: dir.join("ke-key.pem"),
            keysync_cert: dir.join("keysync-cert.pem"),
            keysync_key: dir.join("keysync-key.pem"),
            time_server_cert: dir.join("time-server-cert.pem"),
            time_server_key: dir.join("time-server-key.pem"),
        }
    }

    /// Create whatever is missing. Returns true if anything was generated.
    pub fn ensure(dir: &Path) -> Result<(Self, bool)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let p = Self::paths(dir);
        let mut generated = false;
        if !p.ca_cert.exists() || !p.ca_key.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(
                DnType::CommonName,
                "NTS development CA (do not trust in production)",
            );
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2099, 1, 1);
            let cert = params.self_signed(&key)?;
            write_file(&p.ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&p.ca_cert, cert.pem().as_bytes(), 0o644)?;
            // A new CA invalidates every certificate it did not sign.
            for f in [&p.server_cert, &p.keysync_cert, &p.time_server_cert] {
                let _ = std::fs::remove_file(f);
            }
            generated = true;
        }
        let loopback = ["localhost", "127.0.0.1", "::1"];
        let leaves: [(&PathBuf, &PathBuf, &[&str], ExtendedKeyUsagePurpose); 3] = [
            (
                &p.server_cert,
                &p.server_key,
                &loopback,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                &p.keysync_cert,
                &p.keysync_key,
                &loopback,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                &p.time_server_cert,
                &p.time_server_key,
                &["time-server"],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ];
        for (cert_path, key_path, names, usage) in leaves {
            if !cert_path.exists() || !key_path.exists() {
                let (cert, key) = issue(&p, names, &[usage])?;
                write_file(key_path, key.as_bytes(), 0o600)?;
                write_file(cert_path, cert.as_bytes(), 0o644)?;
                generated = true;
            }
        }
        Ok((p, generated))
    }
}

/// Issue a certificate for `names` (DNS names or IP literals) from the development CA.
/// Returns (certificate PEM, private key PEM).
pub fn issue(
    pki: &DevPki,
    names: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<(String, String)> {
    let ca_key_pem = std::fs::read_to_string(&pki.ca_key).context("reading development CA key")?;
    let ca_cert_pem = std::fs::read_to_string(&pki.ca_cert).context("reading development CA")?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_cert_pem)?;
    let ca = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.extended_key_usages = usages.to_vec();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use nts_ops::atomic_file::{write, Replace};
    Ok(write(path, data, mode, Replace::Always)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let (p, generated) = DevPki::ensure(dir.path()).unwrap();
        assert!(generated);
        let before = std::fs::read(&p.server_cert).unwrap();
        let (_, generated) = DevPki::ensure(dir.path()).unwrap();
        assert!(!generated);
        assert_eq!(std::fs::read(&p.server_cert).unwrap(), before);

        // The server certificate verifies against the CA for all three names.
        use rustls::client::danger::ServerCertVerifier;
        let provider = nts_ops::tls_provider::provider();
        let roots = nts_ops::trust_store::from_pem_file(&p.ca_cert).unwrap();
        use rustls_pki_types::pem::PemObject;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let leaf = rustls_pki_types::CertificateDer::from_pem_file(&p.server_cert).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let sn = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &sn, &[], rustls_pki_types::UnixTime::now())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
