//! The sandbox every daemon enters once it has started: no-new-privileges,
//! capabilities narrowed to what its role keeps, and a seccomp allow-list of
//! system calls per role. A call outside the list kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`): a daemon that does something it never does
//! is better stopped, visibly (signal SIGSYS, an audit record naming the
//! call), than left running in an unknown state. `[server] seccomp = false`
//! (or `NTS_SECCOMP=off` in the environment, for the client) turns the filter
//! off for debugging; no-new-privileges and the capability narrowing stay.
//! `NTS_SECCOMP=log` lets every call through and has the kernel log those
//! outside the list (to derive or check a list).
//!
//! The lists were derived by running the daemons' test suites and the local
//! stack under `strace -f -c` (see docs/architecture.md, "Sandbox"), plus the
//! calls of their error paths (signals, thread creation, file replacement).

use anyhow::{Context, Result};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use std::collections::BTreeMap;

/// Which daemon (or helper) a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    KeServer,
    TimeServer,
    Client,
    /// The file-reading helper of [`crate::file_reader`].
    FileReader,
}

/// Environment variable that makes a daemon attempt a forbidden system call
/// right after installing its filter: the test that proves the filter is active.
pub const SELFTEST_ENV: &str = "NTS_SECCOMP_SELFTEST";
/// Environment variable that turns the filter off (`off`), for every daemon.
pub const DISABLE_ENV: &str = "NTS_SECCOMP";

/// Calls every role makes: memory, threads, futexes, signals, time, files,
/// sockets, epoll (tokio), randomness.
const BASE: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_tgkill,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrlimit,
    libc::SYS_prlimit64,
];

/// Threads (tokio's blocking pool and workers), epoll, sockets, files.
const SERVICE: &[libc::c_long] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_pipe2,
    libc::SYS_ppoll,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_flock,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_getcwd,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_sched_setaffinity,
    libc::SYS_membarrier,
];

/// Older x86-64 names glibc and std still use for some calls.
#[cfg(target_arch = "x86_64")]
const LEGACY: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_pipe,
    libc::SYS_dup2,
    libc::SYS_rename,
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_chmod,
    libc::SYS_getdents,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[libc::c_long] = &[];

/// Reading the kernel clock state (adjtimex / clock_adjtime with modes 0: the
/// capability narrowing leaves no CAP_SYS_TIME, so any other mode fails) and
/// PHC clocks.
const TIME_SERVER: &[libc::c_long] = &[libc::SYS_adjtimex, libc::SYS_clock_adjtime];

/// Disciplining the clock (with CAP_SYS_TIME, when configured to).
const CLIENT: &[libc::c_long] = &[
    libc::SYS_adjtimex,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_settimeofday,
];

/// What the file-reading helper does: read requests, open and read files, answer.
const FILE_READER: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_fcntl,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
];

/// The system calls `role` may make.
pub fn allowed(role: Role) -> Vec<libc::c_long> {
    let mut v: Vec<libc::c_long> = BASE.to_vec();
    match role {
        Role::KeServer => {
            v.extend(SERVICE);
            v.extend(LEGACY);
        }
        Role::TimeServer => {
            v.extend(SERVICE);
            v.extend(LEGACY);
            v.extend(TIME_SERVER);
        }
        Role::Client => {
            v.extend(SERVICE);
            v.extend(LEGACY);
            v.extend(CLIENT);
        }
        Role::FileReader => {
            v.extend(FILE_READER);
            v.extend(LEGACY);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn target_arch() -> Result<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        anyhow::bail!("seccomp filters are built for x86_64 and aarch64 only")
    }
}

/// The compiled allow-list of `role`: a call outside it kills the process.
pub fn program(role: Role) -> Result<BpfProgram> {
    program_with(role, SeccompAction::KillProcess)
}

/// The allow-list of `role` with `mismatch` for calls outside it.
fn program_with(role: Role, mismatch: SeccompAction) -> Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(role)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, target_arch()?)
        .context("building the seccomp filter")?;
    filter
        .try_into()
        .context("compiling the seccomp filter to BPF")
}

/// Set no-new-privileges on the calling thread (inherited by threads and
/// processes it creates later; the seccomp filter sets it on every thread).
pub fn no_new_privs() -> Result<()> {
    // SAFETY: plain prctl.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
    }
    Ok(())
}

/// Capability numbers (linux/capability.h) a role may keep.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_TIME: u32 = 25;
    /// Highest capability number we drop from the bounding set.
    pub const LAST: u32 = 63;
}

/// Keep only `keep` (those of them the thread has) in the calling thread's
/// effective and permitted sets, none inheritable or ambient, and drop every
/// other capability from its bounding set. Threads and processes created
/// afterwards inherit the narrowed sets; call it before starting threads.
pub fn narrow_capabilities(keep: &[u32]) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut mask = [0u32; 2];
    for &c in keep {
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    // SAFETY: prctl and capget/capset with a version-3 header and two data words.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        for c in 0..=cap::LAST {
            if !keep.contains(&c) {
                // Fails without CAP_SETPCAP or for numbers the kernel does not know: fine.
                libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0);
            }
        }
        let mut hdr = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error()).context("capget");
        }
        for (d, m) in data.iter_mut().zip(mask) {
            let have = d.permitted & m;
            *d = Data {
                effective: have,
                permitted: have,
                inheritable: 0,
            };
        }
        if libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error()).context("capset");
        }
    }
    Ok(())
}

/// Whether the environment turns the filter off (`NTS_SECCOMP=off|0|false`).
pub fn disabled_by_env() -> bool {
    std::env::var(DISABLE_ENV)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "off" | "0" | "false"))
}

/// `NTS_SECCOMP=log`: calls outside the list are allowed and logged by the
/// kernel (audit type 1326 in `dmesg`), to derive or check a list.
fn log_only_by_env() -> bool {
    std::env::var(DISABLE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("log"))
}

/// Enter the sandbox after start-up: no-new-privileges, and (when `seccomp`
/// and not disabled by the environment) the allow-list of `role` on every
/// thread of the process. With [`SELFTEST_ENV`] set, then attempts a call no
/// role allows (`personality(0xffffffff)`, a harmless query), which kills the
/// process when the filter is active.
pub fn enter(role: Role, seccomp: bool) -> Result<()> {
    no_new_privs()?;
    let on = seccomp && !disabled_by_env();
    if on {
        let prog = if log_only_by_env() {
            program_with(role, SeccompAction::Log)?
        } else {
            program(role)?
        };
        seccompiler::apply_filter_all_threads(&prog).context("installing the seccomp filter")?;
        tracing::info!(
            role = ?role,
            syscalls = allowed(role).len(),
            "seccomp allow-list active (a call outside it kills the process)"
        );
    } else {
        tracing::warn!(role = ?role, "seccomp filter off (server.seccomp = false or NTS_SECCOMP=off)");
    }
    if std::env::var_os(SELFTEST_ENV).is_some() {
        tracing::warn!("{SELFTEST_ENV}: attempting a forbidden system call");
        // SAFETY: personality(0xffffffff) only reads the persona.
        let r = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) };
        tracing::warn!(
            result = r,
            "{SELFTEST_ENV}: forbidden call returned (no filter)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_compile_and_differ_by_role() {
        for role in [
            Role::KeServer,
            Role::TimeServer,
            Role::Client,
            Role::FileReader,
        ] {
            assert!(program(role).is_ok(), "{role:?}");
        }
        let ke = allowed(Role::KeServer);
        let ts = allowed(Role::TimeServer);
        let cl = allowed(Role::Client);
        assert!(!ke.contains(&libc::SYS_adjtimex));
        assert!(ts.contains(&libc::SYS_adjtimex) && !ts.contains(&libc::SYS_clock_settime));
        assert!(cl.contains(&libc::SYS_clock_adjtime));
        for forbidden in [
            libc::SYS_personality,
            libc::SYS_ptrace,
            libc::SYS_execve,
            libc::SYS_mount,
            libc::SYS_init_module,
            libc::SYS_setuid,
        ] {
            assert!(
                !ke.contains(&forbidden) && !ts.contains(&forbidden) && !cl.contains(&forbidden)
            );
        }
    }
}
