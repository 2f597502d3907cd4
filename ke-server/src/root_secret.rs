//! The cookie root secret on disk: 64 hex digits in a file only its owner can
//! read. Losing it invalidates every cookie in circulation, so it is created
//! once and then only ever read.

use anyhow::{bail, Context, Result};
use nts_proto::key_ring::RootSecret;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Read the secret, or create it (mode 0600) when the file does not exist.
/// Returns the secret and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(RootSecret, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "cookie_keys.root_secret_file {} is readable by group or others (mode {:o}); it should be 0600",
                    path.display(),
                    mode & 0o777
                );
            }
            let bytes = hex::decode(text.trim()).map_err(|_| {
                anyhow::anyhow!(
                    "cookie_keys.root_secret_file {}: expected 64 hexadecimal digits",
                    path.display()
                )
            })?;
            let secret = RootSecret::from_bytes(&bytes)
                .with_context(|| format!("cookie_keys.root_secret_file {}", path.display()))?;
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = RootSecret::generate(&mut rand::rngs::OsRng);
            write_new(path, &secret)?;
            Ok((secret, true))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cookie_keys.root_secret_file {}", path.display()))
        }
    }
}

fn write_new(path: &Path, secret: &RootSecret) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating cookie_keys.root_secret_file {}", path.display()))?;
    let text = format!("{}\n", hex::encode(secret.as_bytes()));
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
        bail!("{} was created readable by others", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/root.key");
        let (a, created) = load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, created) = load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        std::fs::write(&p, "abcd").unwrap();
        let e = load_or_create(&p).unwrap_err();
        assert!(format!("{e:#}").contains("cookie_keys.root_secret_file"));
        std::fs::write(&p, "zz".repeat(32)).unwrap();
        assert!(load_or_create(&p).is_err());
    }
}
