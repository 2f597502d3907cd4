//! The ACME cache directory: file names per directory and domain list,
//! private atomic writes, and the order lock replicas share.

use super::*;

pub(super) fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Where the certificate for `domains` from `directory` is cached: key (PKCS#8
/// PEM) first, then the chain, leaf first.
pub fn cert_cache_path(cache_dir: &Path, directory: &str, domains: &[String]) -> PathBuf {
    let mut parts = vec![directory];
    parts.extend(domains.iter().map(String::as_str));
    let first = domains.first().map(String::as_str).unwrap_or("none");
    cache_dir.join(format!("cert-{first}-{}.pem", short_hash(&parts)))
}

/// Where the account key for `directory` is cached (PKCS#8 PEM).
pub fn account_cache_path(cache_dir: &Path, directory: &str) -> PathBuf {
    cache_dir.join(format!("account-{}.pem", short_hash(&[directory])))
}

/// Write `bytes` to `path` with mode 0600, atomically (`nts_ops::atomic_file`:
/// a unique temporary file per writer, as replicas share the directory), so
/// that readers never see half a file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(nts_ops::atomic_file::write_private(path, bytes)?)
}

pub(super) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// An exclusive `flock` on a file; released on drop.
pub(super) struct FileLock(#[allow(dead_code)] File);

pub(super) fn try_lock(path: &Path) -> Result<Option<FileLock>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(FileLock(f)));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e).with_context(|| format!("cannot lock {}", path.display()))
    }
}

pub(super) fn ensure_private_dir(dir: &Path, what: &str) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{what}: cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{what}: cannot set the mode of {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!("{what}: {} is not a directory", dir.display());
    }
    Ok(())
}
