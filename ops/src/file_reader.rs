//! Reading key and certificate files that must keep loading after the daemon
//! dropped privileges (renewed certificates, for instance, owned by root with
//! mode 0600).
//!
//! Design: when the daemon will switch users, it forks, before it binds or
//! starts any thread, a tiny helper process that keeps the start-up identity
//! with one capability (`CAP_DAC_READ_SEARCH`, so files of any owner can be
//! read) and no-new-privileges. The helper reads only the files listed at start
//! (by index, never a path sent by the daemon) and returns their contents over
//! a socket pair; it dies with the daemon (`PR_SET_PDEATHSIG`) or when the
//! socket closes. The daemon itself keeps no capability to read files it does
//! not own, so a compromised daemon can read exactly the listed files, as it
//! could anyway. Without a user switch, files are read directly.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Largest file the helper returns (certificate chains and keys are a few KiB).
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Reads a fixed list of files, directly or through the privileged helper.
#[derive(Debug)]
pub struct FileReader {
    paths: Vec<PathBuf>,
    helper: Option<Mutex<UnixStream>>,
}

impl FileReader {
    /// Read files directly with the process's own identity.
    pub fn direct() -> Self {
        Self {
            paths: Vec::new(),
            helper: None,
        }
    }

    /// Fork the helper that reads `paths` (and nothing else) with the current
    /// identity. Call while the process is single-threaded, before dropping
    /// privileges.
    /// `seccomp`: confine the helper to its own allow-list (see [`crate::sandbox`]).
    pub fn with_helper(paths: Vec<PathBuf>, seccomp: bool) -> std::io::Result<Self> {
        let (parent, child) = UnixStream::pair()?;
        let parent_pid = std::process::id();
        // SAFETY: called while single-threaded (documented contract); the child
        // only runs `helper_main`, which ends with `_exit`.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(parent);
                helper_main(child, &paths, parent_pid, seccomp)
            }
            _pid => {
                drop(child);
                Ok(Self {
                    paths,
                    helper: Some(Mutex::new(parent)),
                })
            }
        }
    }

    /// Whether reads go through the helper.
    pub fn is_privileged(&self) -> bool {
        self.helper.is_some()
    }

    /// The contents of `path` (one of the listed paths when a helper is used).
    pub fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let Some(helper) = &self.helper else {
            return std::fs::read(path);
        };
        let index = self.paths.iter().position(|p| p == path).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not among the files readable after the privilege drop",
                    path.display()
                ),
            )
        })?;
        let mut s = helper.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(&(index as u32).to_le_bytes())?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FILE_BYTES {
            return Err(std::io::Error::other("file reader: oversized answer"));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        if head[0] == 0 {
            Ok(body)
        } else {
            let code = body
                .get(..4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(libc::EIO);
            Err(std::io::Error::from_raw_os_error(code))
        }
    }

    /// Read a file as UTF-8 text.
    pub fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        String::from_utf8(self.read(path)?)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
    }
}

/// Keep only `CAP_DAC_READ_SEARCH` (effective and permitted), none inheritable.
fn narrow_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_DAC_READ_SEARCH: u32 = 2;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let keep = 1u32 << CAP_DAC_READ_SEARCH;
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget/capset with a version-3 header and two data elements.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) != 0 {
            return;
        }
        let have = data[0].permitted & keep;
        data[0] = Data {
            effective: have,
            permitted: have,
            inheritable: 0,
        };
        data[1] = Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        };
        libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr());
    }
}

fn helper_main(mut s: UnixStream, paths: &[PathBuf], parent: u32, seccomp: bool) -> ! {
    // SAFETY: plain prctl calls; `_exit` skips the parent's destructors and atexit.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() as u32 != parent {
            libc::_exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"file-reader".as_ptr(), 0, 0, 0);
    }
    narrow_capabilities();
    // SAFETY: as above.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    if seccomp && !crate::sandbox::disabled_by_env() {
        let ok = crate::sandbox::program(crate::sandbox::Role::FileReader)
            .ok()
            .is_some_and(|p| seccompiler::apply_filter(&p).is_ok());
        if !ok {
            // Never serve files unconfined when confinement was asked for.
            // SAFETY: see above.
            unsafe { libc::_exit(1) }
        }
    }
    let mut req = [0u8; 4];
    while s.read_exact(&mut req).is_ok() {
        let i = u32::from_le_bytes(req) as usize;
        let answer = match paths.get(i) {
            None => Err(libc::EINVAL),
            Some(p) => match std::fs::File::open(p) {
                Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
                Ok(f) => {
                    let mut buf = Vec::new();
                    match f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf) {
                        Ok(n) if n > MAX_FILE_BYTES => Err(libc::EFBIG),
                        Ok(_) => Ok(buf),
                        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
                    }
                }
            },
        };
        let (status, body) = match answer {
            Ok(b) => (0u8, b),
            Err(code) => (1u8, code.to_le_bytes().to_vec()),
        };
        let mut msg = Vec::with_capacity(5 + body.len());
        msg.push(status);
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&body);
        if s.write_all(&msg).is_err() {
            break;
        }
    }
    // SAFETY: see above.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_reads_only_listed_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pem");
        let b = dir.path().join("b.pem");
        std::fs::write(&a, b"one").unwrap();
        // Tests run multi-threaded; glibc's fork keeps malloc usable in the child,
        // and the helper takes no other lock.
        let r = FileReader::with_helper(vec![a.clone(), dir.path().join("missing")], true).unwrap();
        assert!(r.is_privileged());
        assert_eq!(r.read(&a).unwrap(), b"one");
        std::fs::write(&a, b"two").unwrap();
        assert_eq!(r.read_to_string(&a).unwrap(), "two");
        let e = r.read(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        std::fs::write(&b, b"x").unwrap();
        let e = r.read(&b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(FileReader::direct().read(&b).unwrap(), b"x");
    }
}
