//! Private files written atomically, the one way every daemon writes state
//! (root secret, ACME cache, development PKI, the client's state files): a
//! reader or a crash at any moment sees the old file or the whole new one,
//! never half of one, and never a file readable by others.
//!
//! The steps: a temporary file in the same directory, created fresh
//! (`O_EXCL`, never through a link) with the mode set exactly (the umask is
//! undone with `fchmod`), written, fsynced, then renamed over the target (or
//! hard-linked to it when an existing file must never be replaced), then the
//! directory fsynced so the new name survives a power cut. On any error the
//! temporary file is removed.

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Mode of private files: the owner reads and writes, nobody else.
pub const PRIVATE: u32 = 0o600;

/// A write that failed; names the file and the step.
#[derive(Debug, Error)]
#[error("{path}: cannot {action}: {source}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl AtomicWriteError {
    /// The target existed and [`Replace::Never`] was asked for.
    pub fn already_exists(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::AlreadyExists
    }
}

/// What happens when the target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Rename over it (the usual state update).
    Always,
    /// Fail with `AlreadyExists` (a hard link never replaces): for a file
    /// another process may create at the same time, such as a shared secret.
    Never,
}

fn err(path: &Path, action: &'static str, e: impl Into<std::io::Error>) -> AtomicWriteError {
    AtomicWriteError {
        path: path.to_path_buf(),
        action,
        source: e.into(),
    }
}

/// One atomic write into an open directory.
#[derive(Debug, Clone, Copy)]
pub struct AtDir<'a> {
    /// The directory, opened by the caller (who may have checked it).
    pub dir: BorrowedFd<'a>,
    /// Its path, for error messages only.
    pub dir_path: &'a Path,
}

impl AtDir<'_> {
    /// Write `data` to `name` through the temporary `tmp` (both in this
    /// directory; `tmp` must not exist). The temporary file is gone afterwards,
    /// whatever happened.
    pub fn write(
        &self,
        name: &str,
        tmp: &str,
        data: &[u8],
        mode: u32,
        replace: Replace,
    ) -> Result<(), AtomicWriteError> {
        self.write_with(name, tmp, data, mode, replace, &mut |d| rfs::fsync(d))
    }

    /// [`write`](Self::write) with the directory fsync given (tests count it).
    fn write_with(
        &self,
        name: &str,
        tmp: &str,
        data: &[u8],
        mode: u32,
        replace: Replace,
        sync_dir: &mut dyn FnMut(BorrowedFd<'_>) -> Result<(), Errno>,
    ) -> Result<(), AtomicWriteError> {
        let path = self.dir_path.join(name);
        let result = self
            .write_tmp(tmp, data, mode)
            .and_then(|()| match replace {
                Replace::Always => rfs::renameat(self.dir, tmp, self.dir, name)
                    .map_err(|e| err(&path, "rename into place", e)),
                Replace::Never => rfs::linkat(self.dir, tmp, self.dir, name, AtFlags::empty())
                    .map_err(|e| err(&path, "create", e)),
            });
        // After a rename the temporary name is gone (NOENT); after a link or an
        // error it must go.
        let _ = rfs::unlinkat(self.dir, tmp, AtFlags::empty());
        result?;
        sync_dir(self.dir).map_err(|e| err(self.dir_path, "sync the directory", e))
    }

    fn write_tmp(&self, tmp: &str, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
        let path = self.dir_path.join(tmp);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(mode);
        let fd = rfs::openat(self.dir, tmp, flags, mode).map_err(|e| err(&path, "create", e))?;
        // The umask may have taken bits off the mode given to open().
        rfs::fchmod(&fd, mode).map_err(|e| err(&path, "set the mode of", e))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(data).map_err(|e| err(&path, "write", e))?;
        f.sync_all().map_err(|e| err(&path, "sync", e))
    }
}

/// The directory of `path` (`.` for a bare name) and its file name.
fn split(path: &Path) -> Result<(&Path, &str), AtomicWriteError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        err(
            path,
            "write",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

fn open_dir(dir: &Path) -> Result<OwnedFd, AtomicWriteError> {
    rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(dir, "open the directory", e))
}

/// A temporary name no other writer uses: `.NAME.PID.RANDOM.tmp`.
fn unique_tmp(name: &str) -> String {
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}.{salt:x}{seq:x}.tmp", std::process::id())
}

/// Write `path` atomically with `mode`; its directory must exist.
pub fn write(
    path: &Path,
    data: &[u8],
    mode: u32,
    replace: Replace,
) -> Result<(), AtomicWriteError> {
    let (dir, name) = split(path)?;
    let fd = open_dir(dir)?;
    let at = AtDir {
        dir: fd.as_fd(),
        dir_path: dir,
    };
    at.write(name, &unique_tmp(name), data, mode, replace)
}

/// Replace `path` atomically with `data`, mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), AtomicWriteError> {
    write(path, data, PRIVATE, Replace::Always)
}

/// Remove temporary files [`write`] left for `name` in `dir` (a writer that was
/// killed between create and rename). Only names of the `.NAME.*.tmp` form.
pub fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn mode_is_exact_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_private(&p, b"one").unwrap();
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o600);
        // 0o666 survives a umask of 022 because the mode is set after open().
        let q = d.path().join("public");
        write(&q, b"x", 0o666, Replace::Always).unwrap();
        let m = std::fs::metadata(&q).unwrap().permissions().mode() & 0o7777;
        assert_eq!(m, 0o666);
    }

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        write_private(&p, b"old contents").unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(entries(d.path()), ["state"]);
    }

    #[test]
    fn a_failed_rename_leaves_the_target_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        // A non-empty directory where the file goes: rename() must fail.
        let p = d.path().join("target");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), b"keep").unwrap();
        let e = write_private(&p, b"data").unwrap_err();
        assert_eq!(e.action, "rename into place");
        assert!(e.to_string().contains("target"), "{e}");
        assert_eq!(entries(d.path()), ["target"]);
        assert!(p.is_dir());
    }

    #[test]
    fn never_replace_keeps_the_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("root.key");
        write(&p, b"first", PRIVATE, Replace::Never).unwrap();
        let e = write(&p, b"second", PRIVATE, Replace::Never).unwrap_err();
        assert!(e.already_exists(), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(entries(d.path()), ["root.key"]);
    }

    #[test]
    fn a_link_where_the_temporary_goes_is_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("x.tmp")).unwrap();
        let fd = open_dir(d.path()).unwrap();
        let at = AtDir {
            dir: fd.as_fd(),
            dir_path: d.path(),
        };
        let e = at
            .write("x", "x.tmp", b"data", PRIVATE, Replace::Always)
            .unwrap_err();
        assert_eq!(e.action, "create");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn the_directory_is_fsynced_after_the_rename() {
        let d = tempfile::tempdir().unwrap();
        let fd = open_dir(d.path()).unwrap();
        let at = AtDir {
            dir: fd.as_fd(),
            dir_path: d.path(),
        };
        let mut synced = Vec::new();
        at.write_with("f", "f.tmp", b"1", PRIVATE, Replace::Always, &mut |_| {
            // The new name must already be in place when the directory is synced.
            synced.push(d.path().join("f").exists());
            Ok(())
        })
        .unwrap();
        assert_eq!(synced, [true]);
        // A failed directory sync is reported, naming the directory.
        let e = at
            .write_with("f", "f.tmp", b"2", PRIVATE, Replace::Always, &mut |_| {
                Err(Errno::IO)
            })
            .unwrap_err();
        assert_eq!(e.action, "sync the directory");
        assert_eq!(e.path, d.path());
    }

    #[test]
    fn stale_temporaries_of_that_name_only_are_removed() {
        let d = tempfile::tempdir().unwrap();
        for n in [".a.1.2.tmp", ".b.1.2.tmp", "a", ".a.keep"] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        remove_stale_temporaries(d.path(), "a");
        assert_eq!(entries(d.path()), [".a.keep", ".b.1.2.tmp", "a"]);
    }
}
