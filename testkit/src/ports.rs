//! Free loopback ports for peers under test.
//!
//! A port handed out by [`free_port`] is:
//!
//! * bindable right now for TCP and UDP on `127.0.0.1`, and on `[::]` (dual
//!   stack) when IPv6 is available, because chrony's NTS-KE listener also binds
//!   `[::]:PORT` whatever `bindaddress` says;
//! * never handed out twice by this process (tests in one binary run in
//!   parallel threads);
//! * reserved against other processes using this crate by an `flock` on
//!   `$TMPDIR/nts-testkit-ports/PORT.lock`, held until this process exits
//!   (lock files that nobody holds are removed by the next process);
//! * chosen outside the kernel's ephemeral range
//!   (`/proc/sys/net/ipv4/ip_local_port_range`) when possible, so that the
//!   kernel does not give it to some outgoing connection in the meantime.
//!
//! There is still a window between picking a port and the peer binding it in
//! which an unrelated program could take it; that is as good as it gets without
//! passing sockets to the peers.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Ports reserved by this process, with the lock files that reserve them.
struct Reserved {
    ports: HashSet<u16>,
    locks: Vec<File>,
}

fn reserved() -> &'static Mutex<Reserved> {
    static R: OnceLock<Mutex<Reserved>> = OnceLock::new();
    R.get_or_init(|| {
        Mutex::new(Reserved {
            ports: HashSet::new(),
            locks: Vec::new(),
        })
    })
}

/// Returns a free loopback port, usable for both TCP and UDP (see the module
/// documentation for the guarantees).
///
/// # Panics
/// If no free port can be found in the whole candidate range (a broken machine;
/// test helper, so it panics with a message instead of returning an error).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Returns `n` distinct free ports, see [`free_port`].
///
/// # Panics
/// As [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    let (lo, hi) = candidate_range();
    let span = u32::from(hi - lo) + 1;
    let start = random_u32() % span;
    let lock_dir = lock_dir();
    let mut out = Vec::with_capacity(n);
    let mut guard = reserved().lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        if out.len() == n {
            break;
        }
        let port = lo + ((start + i) % span) as u16;
        if guard.ports.contains(&port) || !is_bindable(port) {
            continue;
        }
        let lock = match lock_dir.as_ref() {
            Some(dir) => match try_lock(dir, port) {
                Some(f) => Some(f),
                None => continue, // another process has it
            },
            None => None,
        };
        guard.ports.insert(port);
        guard.locks.extend(lock);
        out.push(port);
    }
    assert!(
        out.len() == n,
        "testkit::ports: could not find {n} free loopback ports in {lo}..={hi}"
    );
    out
}

/// True if `port` can be bound now for TCP and UDP on 127.0.0.1 (and on `[::]`
/// when the machine has IPv6).
pub fn is_bindable(port: u16) -> bool {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if TcpListener::bind(v4).is_err() || UdpSocket::bind(v4).is_err() {
        return false;
    }
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    for ok in [
        TcpListener::bind(v6).map(drop),
        UdpSocket::bind(v6).map(drop),
    ] {
        match ok {
            Ok(()) => {}
            // No IPv6 on this machine: only IPv4 matters.
            Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {}
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            Err(_) => return false,
        }
    }
    true
}

/// True if some socket is listening on TCP `port` (any address), according to
/// `/proc/net/tcp` and `/proc/net/tcp6`. Does not connect, so it does not
/// disturb servers that count connections.
pub fn is_tcp_listening(port: u16) -> bool {
    // State 0A is TCP_LISTEN.
    proc_net_has_port(&["/proc/net/tcp", "/proc/net/tcp6"], port, Some("0A"))
}

/// True if some UDP socket is bound to `port` (any address), according to
/// `/proc/net/udp` and `/proc/net/udp6`.
pub fn is_udp_bound(port: u16) -> bool {
    proc_net_has_port(&["/proc/net/udp", "/proc/net/udp6"], port, None)
}

fn proc_net_has_port(files: &[&str], port: u16, state: Option<&str>) -> bool {
    let want = format!(":{port:04X}");
    files.iter().any(|f| {
        let Ok(text) = fs::read_to_string(f) else {
            return false;
        };
        text.lines().skip(1).any(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1).unwrap_or("");
            let st = cols.nth(1).unwrap_or("");
            local.ends_with(&want) && state.is_none_or(|s| s == st)
        })
    })
}

/// Candidate ports: below the ephemeral range when there is room, else the
/// ephemeral range itself.
fn candidate_range() -> (u16, u16) {
    let (eph_lo, eph_hi) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if eph_lo > 12000 {
        (10000, eph_lo - 1)
    } else if eph_hi < 60000 {
        (eph_hi + 1, 65000)
    } else {
        (eph_lo, eph_hi)
    }
}

fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish() as u32
}

fn lock_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("nts-testkit-ports");
        fs::create_dir_all(&dir).ok()?;
        // Shared between users: world-writable with the sticky bit, like /tmp.
        // Best effort: if another user created it, leave it as it is.
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
        remove_stale_locks(&dir);
        Some(dir)
    })
    .clone()
}

/// Takes an exclusive, non-blocking `flock` on `DIR/PORT.lock`. `None` if some
/// other process (or another open of the file here) holds it.
fn try_lock(dir: &Path, port: u16) -> Option<File> {
    lock_path(&dir.join(format!("{port}.lock")))
}

/// Opens (creating) and `flock`s `path` exclusively without blocking. Checks
/// after locking that `path` still names the locked file, since
/// [`remove_stale_locks`] may unlink it between our open and our lock.
fn lock_path(path: &Path) -> Option<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o666)
        .open(path)
        .ok()?;
    // SAFETY: flock on a valid open descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return None;
    }
    let (held, named) = (f.metadata().ok()?, fs::metadata(path).ok()?);
    (held.dev() == named.dev() && held.ino() == named.ino()).then_some(f)
}

/// Removes lock files that no live process holds (left by earlier runs), so
/// that the lock directory does not grow forever. Safe against concurrent
/// users thanks to the inode check in [`lock_path`].
fn remove_stale_locks(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "lock") {
            if let Some(f) = lock_path(&path) {
                // We hold the lock: nobody else owns this port. Unlink while
                // holding it; a process that opened the old file will notice.
                let _ = fs::remove_file(&path);
                drop(f);
            }
        }
    }
}

/// An exclusive lock on a named machine-wide resource (e.g. UDP port 123, which
/// NTPsec's `ntpd` always binds), shared with other processes that use this
/// crate. Released on drop.
#[derive(Debug)]
pub struct ResourceLock {
    _file: File,
    name: String,
}

impl ResourceLock {
    /// Blocks (polling) until the lock named `name` is acquired, or returns
    /// `None` after `timeout`.
    pub fn acquire(name: &str, timeout: std::time::Duration) -> Option<ResourceLock> {
        let dir = std::env::temp_dir().join("nts-testkit-locks");
        fs::create_dir_all(&dir).ok()?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
        let path = dir.join(format!("{name}.lock"));
        crate::wait_until(timeout, std::time::Duration::from_millis(100), || {
            lock_path(&path)
        })
        .map(|f| ResourceLock {
            _file: f,
            name: name.to_string(),
        })
    }

    /// The name given to [`ResourceLock::acquire`].
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ports_are_distinct_across_threads() {
        let handles: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| free_ports(5)))
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for p in h.join().expect("thread panicked") {
                assert!(all.insert(p), "port {p} handed out twice");
                assert!(p >= 1024);
            }
        }
        assert_eq!(all.len(), 40);
    }

    #[test]
    fn port_is_usable_and_listening_is_detected() {
        let p = free_port();
        assert!(!is_tcp_listening(p));
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("bind free port");
        assert!(is_tcp_listening(p));
        drop(l);
        let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).expect("bind free port (udp)");
        assert!(is_udp_bound(p));
        drop(u);
    }

    #[test]
    fn lock_files_exclude_other_opens() {
        // A second open of the lock file of a reserved port must fail to lock,
        // which is what another process would see.
        let p = free_port();
        let dir = lock_dir().expect("lock dir");
        assert!(try_lock(&dir, p).is_none());
    }

    #[test]
    fn stale_lock_files_are_removed_and_inode_checked() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("1.lock");
        fs::write(&stale, "").unwrap();
        let held = try_lock(dir.path(), 2).expect("lock 2");
        remove_stale_locks(dir.path());
        assert!(!stale.exists(), "unheld lock file removed");
        assert!(dir.path().join("2.lock").exists(), "held lock file kept");
        // A lock on a file that was unlinked meanwhile is not a lock.
        let f = File::open(dir.path().join("2.lock")).unwrap();
        fs::remove_file(dir.path().join("2.lock")).unwrap();
        drop(held);
        // SAFETY: flock on a valid open descriptor.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0);
        assert!(
            try_lock(dir.path(), 2).is_some(),
            "fresh file can be locked"
        );
    }

    #[test]
    fn resource_lock_is_exclusive() {
        let name = format!("testkit-selftest-{}", std::process::id());
        let a = ResourceLock::acquire(&name, Duration::from_secs(1)).expect("first lock");
        assert!(ResourceLock::acquire(&name, Duration::from_millis(300)).is_none());
        drop(a);
        assert!(ResourceLock::acquire(&name, Duration::from_secs(1)).is_some());
    }
}
