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
