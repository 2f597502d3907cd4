//! File-system helpers: temporary directories that unprivileged daemon users can
//! read, ownership changes, user look-ups.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Longest base directory we use for temporary directories: chronyc binds its
/// reply socket at `DIR/chronyc.PID/RANDOM16/sock`, which must fit in
/// `sockaddr_un.sun_path` (108 bytes).
const MAX_BASE_LEN: usize = 40;

/// Creates a fresh temporary directory with mode 0755 (readable and traversable
/// by daemon users such as `_chrony`). Uses `$TMPDIR` when short, else `/tmp`.
pub(crate) fn tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = std::env::temp_dir();
    let base = if base.as_os_str().len() <= MAX_BASE_LEN && base.is_dir() {
        base
    } else {
        PathBuf::from("/tmp")
    };
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(|e| {
            Error::io(
                format!("creating a temporary directory in {}", base.display()),
                e,
            )
        })?;
    set_mode(dir.path(), 0o755)?;
    Ok(dir)
}

/// `chmod`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {mode:o} {}", path.display()), e))
}

/// Writes `contents` to `path` and sets its mode.
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    set_mode(path, mode)
}

/// `chown uid:gid path`.
pub(crate) fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("chown {uid}:{gid} {}", path.display()), e))
}

/// Creates directory `path` owned by `owner` (uid, gid) with `mode`.
pub(crate) fn create_owned_dir(path: &Path, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io(format!("mkdir {}", path.display()), e))?;
    if let Some((uid, gid)) = owner {
        chown(path, uid, gid)?;
    }
    set_mode(path, mode)
}

/// Looks up a user's uid and primary gid (`getpwnam_r`). `None` if no such user.
pub(crate) fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid `passwd` (null pointers and zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf.len()`
    // is the real size of `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// The user chrony drops privileges to on Debian (`_chrony`), or `chrony` on
/// other distributions, with its uid and gid.
pub(crate) fn chrony_user() -> Option<(u32, u32)> {
    lookup_user("_chrony").or_else(|| lookup_user("chrony"))
}

/// Effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
