//! The certificates ACME deals in: the cached bundle and its dates, when to
//! renew it, and the self-signed TLS-ALPN-01 answer certificates.

use super::*;

/// What we know about the certificate in service.
#[derive(Debug, Clone)]
pub(super) struct CertInfo {
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    pub(super) serial: String,
    pub(super) hash: [u8; 32],
}

pub(super) fn rfc3339(t: i64) -> String {
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
pub(super) fn parse_bundle(
    pem: &[u8],
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertInfo)> {
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
pub(super) fn renew_at(renew_before: Option<Duration>, not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let before = match renew_before {
        Some(d) => (d.as_secs() as i64).min(lifetime / 2),
        None => lifetime / 3,
    };
    not_after - before
}

/// A TLS-ALPN-01 answer (key + self-signed certificate PEM) as a `CertifiedKey`.
/// Not through `CertifiedKey::from_der`: its consistency check parses the
/// certificate, and the critical acmeIdentifier extension makes that fail.
pub(super) fn challenge_key(pem: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey> {
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
pub(super) fn tls_alpn_cert(domain: &str, key_auth: &str) -> Result<String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    let digest = Sha256::digest(key_auth.as_bytes());
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(format!("{}{}", key.serialize_pem(), cert.pem()))
}

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
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
