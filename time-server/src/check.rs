//! Everything start-up needs from the file system and the user database,
//! checked without starting anything: `--check-config` prints these problems
//! and start-up refuses to go on when there is any, so the two agree. Files are
//! read with the start-up identity, as the daemon reads them (before the
//! privilege drop, and through the file-reading helper afterwards).

use crate::config::Settings;
use crate::key_sync_client::{client_tls, KeySyncClientSettings};
use nts_ops::file_reader::FileReader;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One line per problem, each naming the configuration key and the reason.
pub fn problems(settings: &Settings) -> Vec<String> {
    let cfg = &settings.config;
    let mut out =
        nts_ops::privileges::check_user(cfg.server.user.as_deref(), cfg.server.group.as_deref());
    if let Some(ks) = &cfg.key_sync {
        let s = KeySyncClientSettings {
            endpoints: ks.endpoints.clone(),
            ca: ks.ca.clone(),
            certificate_chain: ks.certificate_chain.clone(),
            private_key: ks.private_key.clone(),
            server_name: ks.server_name.clone(),
            info: Default::default(),
            max_backoff: Duration::from_secs(1),
            reader: Arc::new(FileReader::direct()),
        };
        match client_tls(&s) {
            Err(e) => out.push(format!("{e:#}")),
            Ok(_) => {
                if let Err(why) = pair_matches_and_is_valid(&ks.certificate_chain, &ks.private_key)
                {
                    out.push(format!(
                        "key_sync.certificate_chain {} / key_sync.private_key {}: {why}",
                        ks.certificate_chain.display(),
                        ks.private_key.display()
                    ));
                }
            }
        }
    }
    if let Some(k) = &cfg.keys {
        if let Some(why) = root_secret_problem(&k.root_secret_file) {
            out.push(format!(
                "keys.root_secret_file {}: {why}",
                k.root_secret_file.display()
            ));
        }
    }
    out
}

/// The key matches the leaf certificate, and the leaf is valid now.
fn pair_matches_and_is_valid(chain: &Path, key: &Path) -> Result<(), String> {
    let chain = CertificateDer::pem_file_iter(chain)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
    let provider = nts_ops::tls_provider::provider();
    let leaf = chain.first().cloned().ok_or("no certificate")?;
    let ck = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("private key does not match the certificate ({e})"))?;
    ck.keys_match()
        .map_err(|e| format!("private key does not match the certificate ({e})"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|_| "certificate is not parsable X.509".to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = x509.validity();
    if now < v.not_before.timestamp() {
        return Err(format!(
            "certificate is not valid yet (from {})",
            v.not_before
        ));
    }
    if now > v.not_after.timestamp() {
        return Err(format!("certificate expired ({})", v.not_after));
    }
    Ok(())
}

/// A root secret file that exists must be private and well formed. A missing
/// one is not a problem: the time server waits for it (the KE server on the
/// same host may create it).
fn root_secret_problem(path: &Path) -> Option<String> {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(e.to_string()),
        Ok(m) => m,
    };
    let mode = meta.permissions().mode();
    if let Some(why) = nts_ops::privileges::secret_mode_problem(mode) {
        return Some(why);
    }
    crate::keys::read_root(&FileReader::direct(), path).err()
}
