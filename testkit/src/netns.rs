//! Network namespaces for tests that need a link they can cut and heal.
//!
//! [`VethLink::create`] makes two fresh namespaces joined by a veth pair, with
//! a /30 of `10.213.0.0/16` configured *inside* them only (nothing is added to
//! the namespace the test runs in), and `lo` and both veth ends up.
//! [`VethLink::cut`] and [`VethLink::heal`] set side A's veth end down and up.
//!
//! Programs run inside a namespace with `ip netns exec NAME PROGRAM ...`
//! ([`Netns::command`]): `ip` enters the namespace and then *execs* the program,
//! so the PID of the spawned child is the program's own and a
//! [`crate::process::ChildGuard`] around that command stops the program itself.
//! The test process can also act from inside a namespace without any helper
//! program: [`Netns::enter`] runs a closure on a thread of its own that has
//! joined the namespace (`setns(2)` changes only the calling thread), so the
//! sockets that closure opens (HTTP scrapes, NTS-KE, NTP) live in there.
//!
//! A [`Netns`] is deleted when dropped. Stop the processes running inside it
//! first (drop their guards before the namespace): a deleted namespace lives on
//! while a process is still in it.
//!
//! Needs root and iproute2; [`available`] says whether that is the case.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use crate::process::run_capture;
use crate::{Error, Result};

/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// `Ok(())` when network namespaces can be made here (root, `ip netns` works),
/// else why not.
pub fn available() -> std::result::Result<(), String> {
    if crate::fsutil::euid() != 0 {
        return Err("network namespaces need root".into());
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    run_capture(cmd, IP_TIMEOUT)
        .map(|_| ())
        .map_err(|e| format!("`ip netns` does not work here: {e}"))
}

/// Runs `ip ARGS...` to completion (bounded), returning its standard output.
pub fn ip(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_capture(cmd, IP_TIMEOUT)
}

/// Whether a namespace called `name` exists (is listed by `ip netns list`).
pub fn exists(name: &str) -> Result<bool> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name)))
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates the namespace `name` (`ip netns add`) and waits until programs
    /// can be run inside it: the first `ip netns exec` right after `ip netns
    /// add` can fail once with "Invalid argument".
    pub fn create(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            deleted: false,
        };
        let mut last = None;
        for _ in 0..20 {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", name, "true"]);
            match run_capture(cmd, IP_TIMEOUT) {
                Ok(_) => return Ok(ns),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Other(format!(
            "namespace {name} never became usable: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...` (bounded), returning its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip netns exec NAME PROGRAM`: add arguments, then spawn it (for example in
    /// a [`crate::process::ChildGuard`]). `ip` execs `PROGRAM`, so the child's PID
    /// is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name.as_str()]);
        cmd.arg(program);
        cmd
    }

    /// Runs `PROGRAM ARGS...` inside the namespace to completion, killing it
    /// after `timeout`. Returns its standard output; fails (with its output) on a
    /// non-zero exit status or a timeout.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        program: impl AsRef<OsStr>,
        args: &[S],
        timeout: Duration,
    ) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_capture(cmd, timeout)
    }

    /// Runs `f` on a new thread that has joined this namespace (`setns(2)`
    /// affects only that thread), and returns what it returns. Sockets that `f`
    /// opens belong to the namespace; so do those of a Tokio current-thread
    /// runtime built inside `f`. A panic in `f` is propagated.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                let file =
                    File::open(&path).map_err(|e| Error::io(format!("opening {path}"), e))?;
                let mut tries = 0;
                loop {
                    // SAFETY: setns(2) with a descriptor we hold open; it changes only
                    // this thread's network namespace, and this thread ends after `f`.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc == 0 {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    tries += 1;
                    if e.raw_os_error() != Some(libc::EINVAL) || tries >= 20 {
                        return Err(Error::io(format!("setns({path})"), e));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(f())
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Deletes the namespace now (`ip netns delete`). Idempotent.
    pub fn delete(&mut self) -> Result<()> {
        if self.deleted {
            return Ok(());
        }
        ip(&["netns", "delete", &self.name])?;
        self.deleted = true;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!(
                "testkit: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// Two namespaces joined by a veth pair, with a /30 inside them:
/// `10.213.SUBNET.1` on A's end and `10.213.SUBNET.2` on B's.
#[derive(Debug)]
pub struct VethLink {
    /// Side A (its veth end is the one [`VethLink::cut`] sets down).
    pub a: Netns,
    /// Side B.
    pub b: Netns,
    /// Name of the veth end in A.
    pub a_if: String,
    /// Name of the veth end in B.
    pub b_if: String,
    /// A's address on the link.
    pub a_addr: std::net::Ipv4Addr,
    /// B's address on the link.
    pub b_addr: std::net::Ipv4Addr,
}

impl VethLink {
    /// Creates namespaces `PREFIX-a` and `PREFIX-b`, a veth pair between them
    /// (created inside A with its peer moved straight into B, so it never
    /// appears in the caller's namespace), the addresses, and brings `lo` and
    /// the veth ends up. On error, whatever was made is removed.
    pub fn create(prefix: &str, subnet: u8) -> Result<VethLink> {
        let a = Netns::create(&format!("{prefix}-a"))?;
        let b = Netns::create(&format!("{prefix}-b"))?;
        let (a_if, b_if) = ("veth-a".to_string(), "veth-b".to_string());
        let a_addr = std::net::Ipv4Addr::new(10, 213, subnet, 1);
        let b_addr = std::net::Ipv4Addr::new(10, 213, subnet, 2);
        a.ip(&[
            "link",
            "add",
            &a_if,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
        ])?;
        for (ns, ifname, addr) in [(&a, &a_if, a_addr), (&b, &b_if, b_addr)] {
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", ifname])?;
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(VethLink {
            a,
            b,
            a_if,
            b_if,
            a_addr,
            b_addr,
        })
    }

    /// Cuts the link: A's veth end goes down (B's loses its carrier).
    pub fn cut(&self) -> Result<()> {
        self.a.ip(&["link", "set", &self.a_if, "down"]).map(|_| ())
    }

    /// Heals the link: A's veth end goes up again.
    pub fn heal(&self) -> Result<()> {
        self.a.ip(&["link", "set", &self.a_if, "up"]).map(|_| ())
    }
}
