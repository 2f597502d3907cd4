//! Dropping root after the listening sockets are bound.

use anyhow::{bail, Context, Result};
use nix::unistd::{setgid, setgroups, setuid, Group, User};

/// Switch to `user` (and its primary group, or `group` when given). Call after binding.
///
/// Does nothing when `user` is `None`. Fails when the process is not root, the
/// user does not exist, or the switch does not take.
pub fn drop_to(user: Option<&str>, group: Option<&str>) -> Result<()> {
    let Some(user) = user else {
        return Ok(());
    };
    let u = User::from_name(user)
        .with_context(|| format!("looking up user {user:?}"))?
        .with_context(|| format!("user {user:?} does not exist"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .with_context(|| format!("looking up group {g:?}"))?
                .with_context(|| format!("group {g:?} does not exist"))?
                .gid
        }
        None => u.gid,
    };
    setgroups(&[gid]).context("setgroups (is the daemon started as root?)")?;
    setgid(gid).context("setgid")?;
    setuid(u.uid).context("setuid")?;
    if nix::unistd::geteuid() != u.uid {
        bail!(
            "still running as uid {} after dropping to {user}",
            nix::unistd::geteuid()
        );
    }
    tracing::info!(user, gid = gid.as_raw(), "dropped privileges");
    Ok(())
}

/// Whether the process runs with effective uid 0.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Problems that would stop [`drop_to`]: `server.user`/`server.group` that do
/// not exist, or a daemon not started as root. One line per problem, naming the key.
pub fn check_user(user: Option<&str>, group: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = user {
        match User::from_name(u) {
            Ok(Some(_)) => {}
            Ok(None) => out.push(format!("server.user = {u:?}: no such user")),
            Err(e) => out.push(format!("server.user = {u:?}: cannot look it up: {e}")),
        }
        if !nix::unistd::geteuid().is_root() {
            out.push(format!(
                "server.user = {u:?}: switching users needs the daemon to start as root (running as uid {})",
                nix::unistd::geteuid()
            ));
        }
    }
    if let Some(g) = group {
        if user.is_none() {
            out.push("server.group: only used together with server.user".into());
        }
        match Group::from_name(g) {
            Ok(Some(_)) => {}
            Ok(None) => out.push(format!("server.group = {g:?}: no such group")),
            Err(e) => out.push(format!("server.group = {g:?}: cannot look it up: {e}")),
        }
    }
    out
}

/// Whether `user` (and `group`, default its primary group) can create a file in
/// `dir`, tried for real in a short-lived child process that switches to that
/// user, as the daemon will. Needs root; `Ok(())` when there is no user.
pub fn check_dir_writable_as(
    user: Option<&str>,
    group: Option<&str>,
    dir: &std::path::Path,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(user) = user else { return Ok(()) };
    let u = User::from_name(user)?.with_context(|| format!("user {user:?} does not exist"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)?
                .with_context(|| format!("group {g:?} does not exist"))?
                .gid
        }
        None => u.gid,
    };
    // Everything the child needs is prepared before fork: it only makes system calls.
    let mut probe = dir.as_os_str().as_bytes().to_vec();
    probe.extend_from_slice(format!("/.nts-check.{}", std::process::id()).as_bytes());
    let probe = std::ffi::CString::new(probe).context("directory name holds a NUL byte")?;
    let (uid, gid) = (u.uid.as_raw(), gid.as_raw());
    // SAFETY: the child performs only async-signal-safe system calls and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: raw system calls on prepared data; `_exit` ends the child.
        unsafe {
            let gids = [gid];
            if libc::setgroups(1, gids.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(100);
            }
            let fd = libc::open(
                probe.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600,
            );
            if fd < 0 {
                libc::_exit(*libc::__errno_location() & 0x7f);
            }
            libc::close(fd);
            libc::unlink(probe.as_ptr());
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) {
        bail!("the check process did not finish");
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        100 => bail!("cannot switch to user {user:?}"),
        e => Err(std::io::Error::from_raw_os_error(e))
            .with_context(|| format!("user {user:?} cannot create files there")),
    }
}

/// Why a file holding a secret (a cookie root secret) has permissions too
/// loose to use, if it has: any access for others, or write access for the
/// group. Read access for the group is allowed, because that is how a
/// non-root pod reads a Kubernetes Secret (`defaultMode: 0440` with `fsGroup`).
pub fn secret_mode_problem(mode: u32) -> Option<String> {
    (mode & 0o027 != 0).then(|| {
        format!(
            "readable or writable by others, or writable by its group (mode {:o}); chmod 600 (or 640) it",
            mode & 0o777
        )
    })
}

#[cfg(test)]
mod secret_mode_tests {
    use super::secret_mode_problem;

    #[test]
    fn private_or_group_readable_only() {
        for ok in [0o600, 0o400, 0o640, 0o440, 0o100600] {
            assert!(secret_mode_problem(ok).is_none(), "{ok:o}");
        }
        for bad in [0o644, 0o604, 0o660, 0o666, 0o601, 0o100644] {
            assert!(secret_mode_problem(bad).is_some(), "{bad:o}");
        }
    }
}
