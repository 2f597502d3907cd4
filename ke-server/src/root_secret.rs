//! The cookie root secret on disk: 64 hex digits in a file only its owner can
//! read. Losing it invalidates every cookie in circulation, and a replica with
//! a different secret makes clients fail, so it is created only when asked
//! (`cookie_keys.create_if_missing`, or `--dev`) and then only ever read; a
//! file readable or writable by others, or writable by its group, is refused
//! (group read is allowed: a Kubernetes Secret mounted with `fsGroup`).

use anyhow::{bail, Context, Result};
use nts_ops::atomic_file;
use nts_proto::key_ring::RootSecret;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Why the root secret file cannot be used; messages name the key.
fn problem(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cookie_keys.root_secret_file {}: {why}", path.display())
}

/// Check the file without creating anything: it exists (or `create_if_missing`),
/// only its owner can read it, and it holds 64 hexadecimal digits.
pub fn check(path: &Path, create_if_missing: bool) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if create_if_missing {
                Ok(())
            } else {
                Err(problem(path, "does not exist; copy it from another replica (every replica needs the same secret), or set cookie_keys.create_if_missing = true to create a new one"))
            }
        }
        Err(e) => Err(problem(path, e)),
        Ok(_) => read_existing(path).map(|_| ()),
    }
}

fn read_existing(path: &Path) -> Result<RootSecret> {
    let text = std::fs::read_to_string(path).map_err(|e| problem(path, e))?;
    let mode = std::fs::metadata(path)
        .map_err(|e| problem(path, e))?
        .permissions()
        .mode();
    if let Some(why) = nts_ops::privileges::secret_mode_problem(mode) {
        return Err(problem(path, why));
    }
    RootSecret::from_file_text(&text).map_err(|e| problem(path, e))
}

/// Read the secret; create it (mode 0600) only when it is missing and
/// `create_if_missing` is set. Returns the secret and whether it was created now.
pub fn load(path: &Path, create_if_missing: bool) -> Result<(RootSecret, bool)> {
    check(path, create_if_missing)?;
    match read_existing(path) {
        Ok(s) => Ok((s, false)),
        Err(_) if create_if_missing && !path.exists() => {
            let secret = RootSecret::generate(&mut rand::rngs::OsRng);
            write_new(path, &secret)?;
            Ok((secret, true))
        }
        Err(e) => Err(e),
    }
}

/// Create the file atomically, so a kill at any moment leaves either no
/// file or a whole one (`nts_ops::atomic_file`, 0600), hard-linked into place
/// so that it never replaces a secret another replica created meanwhile.
/// Temporary files a killed creation left are removed first.
fn write_new(path: &Path, secret: &RootSecret) -> Result<()> {
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => bail!(
            "cookie_keys.root_secret_file {}: not a file name",
            path.display()
        ),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    atomic_file::remove_stale_temporaries(dir, name);
    atomic_file::write(
        path,
        secret.to_file_text().as_bytes(),
        atomic_file::PRIVATE,
        atomic_file::Replace::Never,
    )
    .context("creating cookie_keys.root_secret_file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/root.key");
        let e = load(&p, false).unwrap_err();
        assert!(format!("{e:#}").contains("create_if_missing"), "{e:#}");
        assert!(!p.exists());
        let (a, created) = load(&p, true).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, created) = load(&p, false).unwrap();
        assert!(!created);
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn an_empty_or_malformed_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        for create in [false, true] {
            let e = format!("{:#}", load(&p, create).unwrap_err());
            assert!(
                e.contains(&p.display().to_string())
                    && e.contains("empty (0 bytes)")
                    && e.contains("delete it"),
                "{e}"
            );
        }
        std::fs::write(&p, "not hex\n").unwrap();
        let e = format!("{:#}", load(&p, true).unwrap_err());
        assert!(
            e.contains(&p.display().to_string())
                && e.contains("64 hexadecimal digits")
                && e.contains("copy the file from another KE replica"),
            "{e}"
        );
    }

    #[test]
    fn bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.key");
        std::fs::write(&p, "abc").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load(&p, true).unwrap_err();
        assert!(
            format!("{e:#}").contains("cookie_keys.root_secret_file")
                && format!("{e:#}").contains("64 hexadecimal"),
            "{e:#}"
        );
        std::fs::write(&p, "zz".repeat(32)).unwrap();
        assert!(load(&p, false).is_err());
        std::fs::write(&p, "ab".repeat(32)).unwrap();
        assert!(load(&p, false).is_ok());
        // Group read is what a Kubernetes Secret with fsGroup gives: allowed.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert!(load(&p, false).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&p, false).unwrap_err();
        assert!(
            format!("{e:#}").contains("readable or writable by others"),
            "{e:#}"
        );
    }
}
