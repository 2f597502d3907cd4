//! A directory the agent keeps state in (`nts.state_dir`, the drift file's
//! directory), checked the way ssh checks `~/.ssh`: the agent may run as
//! root, so a link or file planted there by someone else must not make it
//! write elsewhere or trust what another user wrote.
//!
//! The rules: the directory is not a symbolic link, is owned by the agent's
//! user (euid) and is writable by nobody else; every directory above it is
//! owned by root or that user.
//! Files are opened relative to the directory's descriptor with
//! `O_NOFOLLOW`, must be regular files owned by the agent's user and
//! writable by nobody else (secret ones readable by nobody else either), and
//! are written atomically: temporary file (`O_EXCL`, mode set), fsync,
//! rename, fsync of the directory.

use nts_ops::atomic_file::Replace;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A state path that cannot be trusted or used; always names the path.
#[derive(Debug, Error)]
pub enum StateDirError {
    /// The path is there but fails a rule; `reason` says which and what to do.
    #[error("{path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// Who may read a file: secret files (keys) are for the agent's user only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Written 0600; refused when readable by group or others.
    Secret,
    /// Written 0644 (no secrets, meant for monitoring to read).
    Public,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Secret => 0o600,
            Access::Public => 0o644,
        }
    }
}

/// An open, checked state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
    euid: u32,
}

fn io_err(path: &Path, action: &'static str, e: impl Into<std::io::Error>) -> StateDirError {
    StateDirError::Io {
        path: path.to_path_buf(),
        action,
        source: e.into(),
    }
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> StateDirError {
    StateDirError::Unsafe {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// What is wrong with the directory `st` at `path`, if anything.
fn dir_problem(st: &rfs::Stat, euid: u32) -> Option<String> {
    let mode = st.st_mode & 0o7777;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Some("is not a directory".into());
    }
    if st.st_uid != euid {
        return Some(format!(
            "owned by uid {}, not by the agent's user (uid {euid}): chown it to uid {euid} or choose another directory",
            st.st_uid
        ));
    }
    if mode & 0o002 != 0 {
        return Some(format!(
            "writable by others (mode {mode:04o}): another user could plant files in it; chmod 700 it"
        ));
    }
    if mode & 0o020 != 0 {
        return Some(format!(
            "writable by its group (mode {mode:04o}): another user could plant files in it; chmod 700 it"
        ));
    }
    None
}

/// What is wrong with the file `st`, if anything.
fn file_problem(st: &rfs::Stat, euid: u32, access: Access) -> Option<String> {
    let mode = st.st_mode & 0o7777;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            return Some("is a symbolic link, which the agent never follows here: remove it".into())
        }
        FileType::RegularFile => {}
        _ => return Some("is not a regular file: remove it".into()),
    }
    if st.st_uid != euid {
        return Some(format!(
            "owned by uid {}, not by the agent's user (uid {euid}): someone else wrote it; remove it",
            st.st_uid
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "writable by its group or others (mode {mode:04o}): remove it, or chmod go-w it"
        ));
    }
    if access == Access::Secret && mode & 0o044 != 0 {
        return Some(format!(
            "readable by its group or others (mode {mode:04o}): the keys in it may have leaked; remove it (a new key exchange replaces it)"
        ));
    }
    None
}

/// Every directory above `path` must be owned by root or the agent's user:
/// another user could replace the state directory with one of theirs. Their
/// write bits are not held against them (a Kubernetes emptyDir is 0777): a
/// directory swapped in by someone else is refused by the owner check on
/// the opened descriptor, and nothing is looked up by name after that.
fn check_ancestors(parent: &Path, path: &Path, euid: u32) -> Result<(), StateDirError> {
    let real = std::fs::canonicalize(parent).map_err(|e| io_err(parent, "resolve", e))?;
    for dir in real.ancestors() {
        let st = rfs::lstat(dir).map_err(|e| io_err(dir, "stat", e))?;
        if st.st_uid != 0 && st.st_uid != euid {
            return Err(unsafe_path(
                dir,
                format!(
                    "above the state directory {} and owned by uid {}: that user could replace it; choose a directory under ones owned by root or uid {euid}",
                    path.display(),
                    st.st_uid
                ),
            ));
        }
    }
    Ok(())
}

impl StateDir {
    /// Create the directory (0700, with missing parents) if needed, then [`open`](Self::open) it.
    pub fn create(path: &Path) -> Result<StateDir, StateDirError> {
        use std::os::unix::fs::DirBuilderExt;
        match rfs::lstat(path) {
            Ok(_) => {}
            Err(Errno::NOENT) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| io_err(path, "create", e))?,
            Err(e) => return Err(io_err(path, "stat", e)),
        }
        Self::open(path)
    }

    /// Open an existing directory and check it (not its files: see [`scan`](Self::scan)).
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        let euid = euid();
        check_ancestors(parent_of(path), path, euid)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rfs::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) | Err(Errno::NOTDIR) if is_symlink(path) => {
                return Err(unsafe_path(
                    path,
                    "is a symbolic link, which the agent does not follow: give the real directory",
                ))
            }
            Err(e) => return Err(io_err(path, "open", e)),
        };
        let st = rfs::fstat(&fd).map_err(|e| io_err(path, "stat", e))?;
        if let Some(reason) = dir_problem(&st, euid) {
            return Err(unsafe_path(path, reason));
        }
        Ok(StateDir {
            path: path.to_path_buf(),
            fd,
            euid,
        })
    }

    /// What `--check-config` checks, creating nothing: an existing directory
    /// as [`open`](Self::open) and [`scan`](Self::scan) would; a missing one
    /// must be creatable (its nearest existing parent passes the same rules).
    pub fn check(
        path: &Path,
        access: impl Fn(&str) -> Option<Access>,
    ) -> Result<(), StateDirError> {
        let mut at = path;
        loop {
            match rfs::lstat(at) {
                Ok(_) => break,
                Err(Errno::NOENT) => {
                    at = at
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                }
                Err(e) => return Err(io_err(at, "stat", e)),
            }
        }
        if at == path {
            return Self::open(at)?.scan(access);
        }
        // The nearest existing parent: trusted as the directories above
        // a state directory are, and writable by the agent's user.
        check_ancestors(at, path, euid())?;
        rfs::access(at, rfs::Access::WRITE_OK | rfs::Access::EXEC_OK)
            .map_err(|e| io_err(at, "create a directory in", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Check every entry: no symbolic links at all, and each file `access`
    /// names (the agent's own files, temporary ones included) as [`read`](Self::read) would.
    pub fn scan(&self, access: impl Fn(&str) -> Option<Access>) -> Result<(), StateDirError> {
        let dir = rfs::Dir::read_from(&self.fd).map_err(|e| io_err(&self.path, "list", e))?;
        for entry in dir {
            let entry = entry.map_err(|e| io_err(&self.path, "list", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let is_link = entry.file_type() == FileType::Symlink;
            let Some(acc) = access(&name).or(is_link.then_some(Access::Public)) else {
                continue;
            };
            let st = rfs::statat(&self.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(&self.child(&name), "stat", e))?;
            if let Some(reason) = file_problem(&st, self.euid, acc) {
                return Err(unsafe_path(&self.child(&name), reason));
            }
        }
        Ok(())
    }

    /// Read `name`; Ok(None) when it does not exist. Refused unless it passes the file rules.
    pub fn read(&self, name: &str, access: Access) -> Result<Option<String>, StateDirError> {
        let path = self.child(name);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rfs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(unsafe_path(
                    &path,
                    "is a symbolic link, which the agent never follows here: remove it",
                ))
            }
            Err(e) => return Err(io_err(&path, "open", e)),
        };
        let st = rfs::fstat(&fd).map_err(|e| io_err(&path, "stat", e))?;
        if let Some(reason) = file_problem(&st, self.euid, access) {
            return Err(unsafe_path(&path, reason));
        }
        let mut text = String::new();
        std::fs::File::from(fd)
            .read_to_string(&mut text)
            .map_err(|e| io_err(&path, "read", e))?;
        Ok(Some(text))
    }

    /// Replace `name` with `data` atomically through `NAME.tmp`
    /// (`nts_ops::atomic_file`: created fresh with `O_EXCL`, never through a
    /// link, mode set, fsync, rename, fsync of the directory). A link where
    /// either file goes refuses the write.
    pub fn write(&self, name: &str, data: &[u8], access: Access) -> Result<(), StateDirError> {
        let tmp = format!("{name}.tmp");
        self.refuse_link(name)?;
        self.refuse_link(&tmp)?;
        match rfs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err(&self.child(&tmp), "remove", e)),
        }
        let at = nts_ops::atomic_file::AtDir {
            dir: self.fd.as_fd(),
            dir_path: &self.path,
        };
        at.write(name, &tmp, data, access.mode(), Replace::Always)
            .map_err(|e| StateDirError::Io {
                path: e.path,
                action: e.action,
                source: e.source,
            })
    }

    fn refuse_link(&self, name: &str) -> Result<(), StateDirError> {
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => Err(unsafe_path(
                &self.child(name),
                "is a symbolic link, which the agent never follows here: remove it",
            )),
            _ => Ok(()),
        }
    }

    /// Remove `name` (a link is removed, never followed); missing is fine.
    pub fn remove(&self, name: &str) -> Result<(), StateDirError> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(&self.child(name), "remove", e)),
        }
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn is_symlink(path: &Path) -> bool {
    rfs::lstat(path).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// The directory and file name of a state file given by its full path
/// (`clock.drift_file`).
pub fn split_file(path: &Path) -> Result<(&Path, &str), StateDirError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| unsafe_path(path, "has no usable file name"))?;
    Ok((parent_of(path), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn all_secret(_: &str) -> Option<Access> {
        Some(Access::Secret)
    }

    fn setup() -> (tempfile::TempDir, StateDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let d = StateDir::create(&t.path().join("a").join("state")).unwrap();
        (t, d, victim)
    }

    #[test]
    fn creates_0700_and_writes_atomically_with_the_mode_asked() {
        let (_t, d, _) = setup();
        assert_eq!(std::fs::metadata(d.path()).unwrap().mode() & 0o777, 0o700);
        assert_eq!(d.read("x", Access::Secret).unwrap(), None);
        d.write("x", b"one", Access::Secret).unwrap();
        d.write("x", b"two", Access::Secret).unwrap();
        assert_eq!(d.read("x", Access::Secret).unwrap().as_deref(), Some("two"));
        assert_eq!(
            std::fs::metadata(d.child("x")).unwrap().mode() & 0o777,
            0o600
        );
        d.write("p", b"", Access::Public).unwrap();
        assert_eq!(
            std::fs::metadata(d.child("p")).unwrap().mode() & 0o777,
            0o644
        );
        assert!(!d.child("x.tmp").exists());
        d.scan(all_secret).unwrap_err(); // "p" is 0644: not secret
        d.remove("p").unwrap();
        d.remove("p").unwrap();
        d.scan(all_secret).unwrap();
    }

    #[test]
    fn planted_links_are_refused_and_never_followed() {
        let (_t, d, victim) = setup();
        for name in ["x", "x.tmp"] {
            std::os::unix::fs::symlink(&victim, d.child(name)).unwrap();
            let e = d
                .write("x", b"keys", Access::Secret)
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("symbolic link"), "{e}");
            let e = d.read(name, Access::Secret).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            let e = d.scan(|_| None).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            d.remove(name).unwrap();
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        }
        d.write("x", b"keys", Access::Secret).unwrap();
    }

    #[test]
    fn a_stale_temporary_file_is_replaced() {
        let (_t, d, _) = setup();
        std::fs::write(d.child("x.tmp"), "half").unwrap();
        d.write("x", b"whole", Access::Secret).unwrap();
        assert_eq!(
            d.read("x", Access::Secret).unwrap().as_deref(),
            Some("whole")
        );
    }

    #[test]
    fn directory_rules_name_the_path_and_reason() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s");
        std::fs::create_dir(&p).unwrap();
        for (mode, reason) in [
            (0o777, "writable by others"),
            (0o1777, "writable by others"),
            (0o770, "writable by its group"),
        ] {
            set_mode(&p, mode);
            let e = StateDir::open(&p).unwrap_err().to_string();
            assert!(
                e.contains(&p.display().to_string()) && e.contains(reason),
                "{e}"
            );
            let e = StateDir::check(&p, all_secret).unwrap_err().to_string();
            assert!(e.contains(reason), "{e}");
        }
        set_mode(&p, 0o755);
        StateDir::open(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(12345), None).unwrap();
        let e = StateDir::create(&p).unwrap_err().to_string();
        assert!(e.contains("owned by uid 12345"), "{e}");
        // A parent another user owns is refused too.
        std::os::unix::fs::chown(&p, Some(euid()), None).unwrap();
        std::os::unix::fs::chown(t.path(), Some(12345), None).unwrap();
        let e = StateDir::open(&p).unwrap_err().to_string();
        assert!(e.contains("above the state directory"), "{e}");
        // Writable by all (an emptyDir) is not held against a parent.
        std::os::unix::fs::chown(t.path(), Some(euid()), None).unwrap();
        set_mode(t.path(), 0o777);
        StateDir::open(&p).unwrap();
        set_mode(t.path(), 0o700);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = StateDir::open(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn file_rules() {
        let (_t, d, _) = setup();
        d.write("x", b"k", Access::Secret).unwrap();
        set_mode(&d.child("x"), 0o640);
        let e = d.read("x", Access::Secret).unwrap_err().to_string();
        assert!(e.contains("readable by its group"), "{e}");
        assert!(d.read("x", Access::Public).is_ok());
        set_mode(&d.child("x"), 0o602);
        let e = d.read("x", Access::Public).unwrap_err().to_string();
        assert!(e.contains("writable by its group or others"), "{e}");
        set_mode(&d.child("x"), 0o600);
        std::os::unix::fs::chown(d.child("x"), Some(12345), None).unwrap();
        let e = d.read("x", Access::Secret).unwrap_err().to_string();
        assert!(e.contains("owned by uid 12345"), "{e}");
        let e = d.scan(all_secret).unwrap_err().to_string();
        assert!(e.contains("owned by uid 12345") && e.contains("/x:"), "{e}");
        d.scan(|_| None).unwrap();
    }

    #[test]
    fn check_creates_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a").join("b");
        StateDir::check(&p, all_secret).unwrap();
        assert!(!t.path().join("a").exists());
        std::os::unix::fs::chown(t.path(), Some(12345), None).unwrap();
        let e = StateDir::check(&p, all_secret).unwrap_err().to_string();
        assert!(e.contains("owned by uid 12345"), "{e}");
    }
}
