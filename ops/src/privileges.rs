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
