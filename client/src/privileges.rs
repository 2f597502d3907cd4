//! Least privilege for the agent once it has started: it keeps CAP_SYS_TIME
//! when (and only when) it disciplines the clock, gives up every other
//! capability (effective, permitted, inheritable, ambient and the bounding
//! set, so no child could get them back), and sets no-new-privileges.
//!
//! The agent needs nothing else after start-up: its state directory and
//! status socket are plain files of its own user, and NTP and NTS-KE use
//! unprivileged ports on the client side.

use anyhow::{bail, Context, Result};

/// Bit of CAP_SYS_TIME in the capability sets.
const CAP_SYS_TIME: u32 = 25;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Keep only CAP_SYS_TIME (when `keep_sys_time`) and set no-new-privileges.
/// Capabilities that cannot be dropped from the bounding set (when the
/// process lacks CAP_SETPCAP) stay there, but are never effective again.
pub fn narrow(keep_sys_time: bool) -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            bail!(
                "setting no-new-privileges: {}",
                std::io::Error::last_os_error()
            );
        }
        // Ambient capabilities survive exec for unprivileged children: none.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        for cap in 0..=last_cap() {
            if keep_sys_time && cap == CAP_SYS_TIME {
                continue;
            }
            // EPERM without CAP_SETPCAP, EINVAL past the kernel's last: both harmless.
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
    }
    let keep = if keep_sys_time {
        1u32 << CAP_SYS_TIME
    } else {
        0
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills the two data structs of version 3.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    let had_sys_time = data[0].permitted & keep != 0;
    let new = [
        CapData {
            effective: keep & data[0].permitted,
            permitted: keep & data[0].permitted,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset reads the header and the two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, new.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    tracing::info!(
        cap_sys_time = keep_sys_time && had_sys_time,
        "capabilities narrowed, no-new-privileges set"
    );
    Ok(())
}
