//! Everything start-up needs from the file system and the user database,
//! checked without starting anything: `--check-config` prints these problems,
//! and start-up refuses to go on when there is any, so the two agree.
//!
//! Files are read with the identity the daemon reads them with: the start-up
//! identity (before the privilege drop, and through the file-reading helper
//! afterwards; see `nts_ops::file_reader`).

use crate::certificate::check_pair;
use crate::config::Settings;
use nts_ops::file_reader::FileReader;
use std::path::Path;

/// Descriptors the configured limits can hold open at once, and the keys
/// that set them: every NTS-KE connection, every key-sync handshake, and
/// headroom for listeners, metrics, certificate reloads and key-sync links.
pub fn open_files_needed(settings: &Settings) -> (&'static str, u64) {
    let ke = settings.ke_slots.capacity as u64;
    match &settings.config.key_sync {
        Some(_) => (
            "server.max_connections + key_sync.max_handshakes",
            ke + settings.key_sync_slots.capacity as u64 + nts_ops::open_files::HEADROOM,
        ),
        None => ("server.max_connections", ke + nts_ops::open_files::HEADROOM),
    }
}

/// One line per problem, each naming the configuration key and the reason.
pub fn problems(settings: &Settings) -> Vec<String> {
    let cfg = &settings.config;
    let mut out = Vec::new();
    let reader = FileReader::direct();
    let provider = nts_ops::tls_provider::provider();
    out.extend(nts_ops::privileges::check_user(
        cfg.server.user.as_deref(),
        cfg.server.group.as_deref(),
    ));
    let (what, needed) = open_files_needed(settings);
    if let Err(e) = nts_ops::open_files::check(what, needed) {
        out.push(e.to_string());
    }
    if let Some(tls) = &cfg.tls {
        if let Err(e) = check_pair(
            &reader,
            "tls.certificate_chain",
            &tls.certificate_chain,
            "tls.private_key",
            &tls.private_key,
            &provider,
        ) {
            out.push(format!("{e:#}"));
        }
    }
    if let Some(k) = &cfg.key_sync {
        if let Err(e) = check_pair(
            &reader,
            "key_sync.certificate_chain",
            &k.certificate_chain,
            "key_sync.private_key",
            &k.private_key,
            &provider,
        ) {
            out.push(format!("{e:#}"));
        }
        if let Err(why) = ca_file(&k.client_ca) {
            out.push(format!("key_sync.client_ca: {why}"));
        }
    }
    if let Some(a) = &settings.acme {
        for f in &a.ca_roots {
            if let Err(why) = ca_file(f) {
                out.push(format!("acme.ca_roots: {why}"));
            }
        }
        if a.cache_dir.exists() && !a.cache_dir.is_dir() {
            out.push(format!(
                "acme.cache_dir {}: exists and is not a directory",
                a.cache_dir.display()
            ));
        } else if let Some(user) = cfg.server.user.as_deref() {
            // After the drop the cache is written as server.user.
            if !a.cache_dir.exists() {
                out.push(format!(
                    "acme.cache_dir {}: does not exist; it would be created owned by root and not writable by server.user {user:?}: create it owned by that user",
                    a.cache_dir.display()
                ));
            } else if nts_ops::privileges::running_as_root() {
                if let Err(e) = nts_ops::privileges::check_dir_writable_as(
                    Some(user),
                    cfg.server.group.as_deref(),
                    &a.cache_dir,
                ) {
                    out.push(format!(
                        "acme.cache_dir {}: not writable by server.user: {e:#}",
                        a.cache_dir.display()
                    ));
                }
            }
        }
    }
    let ck = &cfg.cookie_keys;
    if let Err(e) = crate::root_secret::check(&ck.root_secret_file, ck.create_if_missing) {
        out.push(format!("{e:#}"));
    }
    out
}

/// A PEM file holding at least one parsable certificate (the error names the file).
pub fn ca_file(path: &Path) -> Result<(), String> {
    nts_ops::trust_store::from_pem_file(path)
        .map(drop)
        .map_err(|e| e.to_string())
}
