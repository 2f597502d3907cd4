//! Locating the real peers: chrony (`chronyd`, `chronyc`), NTPsec (`ntpd`,
//! `ntpq`) and `capsh`.
//!
//! The `require*` functions return `None` when something is missing, after
//! printing `skipped: ...`, so a test can simply `return`. If the environment
//! variable `NTS_REQUIRE_PEERS=1` is set (CI and our test command set it), a
//! missing peer is a panic instead, so that a broken install cannot pass
//! silently.
//!
//! Search order for each program: an explicit environment variable
//! (`NTS_TESTKIT_CHRONYD`, `NTS_TESTKIT_CHRONYC`, `NTS_TESTKIT_NTPD`,
//! `NTS_TESTKIT_NTPQ`, `NTS_TESTKIT_CAPSH`), then for NTPsec the extracted tree
//! `$NTS_TESTKIT_NTPSEC_DIR` (default [`DEFAULT_NTPSEC_DIR`], see
//! `scripts/install-test-deps.sh`), then `PATH`, `/usr/sbin`, `/usr/bin`,
//! `/sbin`, `/usr/local/sbin`, `/usr/local/bin`.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Environment variable that turns a missing peer into a test failure.
pub const REQUIRE_ENV: &str = "NTS_REQUIRE_PEERS";

/// Where `scripts/install-test-deps.sh` extracts the NTPsec package.
pub const DEFAULT_NTPSEC_DIR: &str = "/opt/nts-testkit/ntpsec";

/// The Python interpreter that NTPsec's `ntpq` must run with: Debian's, which
/// sees the `python3-ntp` package (a pyenv `python3` on `PATH` does not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A program the harness can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// chrony's daemon.
    Chronyd,
    /// chrony's control client.
    Chronyc,
    /// NTPsec's daemon.
    Ntpd,
    /// NTPsec's query tool (a Python script, needs `python3-ntp`).
    Ntpq,
    /// `capsh` from libcap2-bin, used to drop `CAP_SYS_TIME`.
    Capsh,
}

impl Peer {
    /// The program's file name.
    pub fn program(self) -> &'static str {
        match self {
            Peer::Chronyd => "chronyd",
            Peer::Chronyc => "chronyc",
            Peer::Ntpd => "ntpd",
            Peer::Ntpq => "ntpq",
            Peer::Capsh => "capsh",
        }
    }

    /// The package that provides it (for messages).
    pub fn package(self) -> &'static str {
        match self {
            Peer::Chronyd | Peer::Chronyc => "chrony",
            Peer::Ntpd => "ntpsec, extracted",
            Peer::Ntpq => "ntpsec + python3-ntp",
            Peer::Capsh => "libcap2-bin",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Peer::Chronyd => "NTS_TESTKIT_CHRONYD",
            Peer::Chronyc => "NTS_TESTKIT_CHRONYC",
            Peer::Ntpd => "NTS_TESTKIT_NTPD",
            Peer::Ntpq => "NTS_TESTKIT_NTPQ",
            Peer::Capsh => "NTS_TESTKIT_CAPSH",
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program())
    }
}

/// Paths of chrony's programs.
#[derive(Debug, Clone)]
pub struct ChronyBins {
    /// `chronyd`.
    pub chronyd: PathBuf,
    /// `chronyc`.
    pub chronyc: PathBuf,
}

/// Paths of NTPsec's programs and what they need.
#[derive(Debug, Clone)]
pub struct NtpsecBins {
    /// NTPsec's `ntpd`.
    pub ntpd: PathBuf,
    /// NTPsec's `ntpq` script (run as `python3 ntpq`).
    pub ntpq: PathBuf,
    /// The Python that runs `ntpq` ([`SYSTEM_PYTHON`]).
    pub python3: PathBuf,
    /// `capsh`, to drop `CAP_SYS_TIME` from `ntpd`.
    pub capsh: PathBuf,
}

/// True if `NTS_REQUIRE_PEERS` is set to `1` (or `true`/`yes`).
pub fn peers_required() -> bool {
    std::env::var(REQUIRE_ENV)
        .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Finds `peer` without any skip/panic policy. `None` if not found (for
/// [`Peer::Ntpq`], also if `/usr/bin/python3` cannot import `ntp`).
pub fn find(peer: Peer) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(peer.env_var()) {
        let p = PathBuf::from(p);
        return is_executable_file(&p, peer).then_some(p);
    }
    let found = match peer {
        Peer::Ntpd | Peer::Ntpq => {
            let rel = if peer == Peer::Ntpd {
                "usr/sbin/ntpd"
            } else {
                "usr/bin/ntpq"
            };
            let p = ntpsec_dir().join(rel);
            if is_executable_file(&p, peer) {
                Some(p)
            } else {
                search_path(peer)
            }
        }
        _ => search_path(peer),
    }?;
    if peer == Peer::Ntpq && !python_has_ntp() {
        return None;
    }
    Some(found)
}

/// The directory NTPsec was extracted to (`$NTS_TESTKIT_NTPSEC_DIR` or
/// [`DEFAULT_NTPSEC_DIR`]).
pub fn ntpsec_dir() -> PathBuf {
    std::env::var_os("NTS_TESTKIT_NTPSEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_NTPSEC_DIR))
}

/// Finds all of `peers`. Returns their paths in the same order, or `None` after
/// printing `skipped: ... not installed` when one is missing.
///
/// # Panics
/// When something is missing and `NTS_REQUIRE_PEERS=1`; also when the process
/// is not root (chronyd must start as root to drop to its own user, and ntpd
/// binds port 123).
pub fn require(peers: &[Peer]) -> Option<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut found = Vec::new();
    for &p in peers {
        match find(p) {
            Some(path) => found.push(path),
            None => missing.push(p),
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|p| format!("{} ({})", p.program(), p.package()))
            .collect();
        return skip_or_panic(&format!(
            "{} not installed; run scripts/install-test-deps.sh",
            list.join(", ")
        ));
    }
    if crate::fsutil::euid() != 0 {
        return skip_or_panic(
            "real peers need root (chronyd drops to its own user, ntpd binds port 123)",
        );
    }
    Some(found)
}

/// [`require`] for chrony: `chronyd` and `chronyc`, and the `_chrony` user.
pub fn require_chrony() -> Option<ChronyBins> {
    let v = require(&[Peer::Chronyd, Peer::Chronyc])?;
    if crate::fsutil::chrony_user().is_none() {
        return skip_or_panic("chrony's user (_chrony) does not exist; reinstall chrony");
    }
    let mut v = v.into_iter();
    Some(ChronyBins {
        chronyd: v.next()?,
        chronyc: v.next()?,
    })
}

/// [`require`] for NTPsec: `ntpd`, `ntpq` (with `/usr/bin/python3` and
/// `python3-ntp`) and `capsh`.
pub fn require_ntpsec() -> Option<NtpsecBins> {
    let v = require(&[Peer::Ntpd, Peer::Ntpq, Peer::Capsh])?;
    let mut v = v.into_iter();
    Some(NtpsecBins {
        ntpd: v.next()?,
        ntpq: v.next()?,
        python3: PathBuf::from(SYSTEM_PYTHON),
        capsh: v.next()?,
    })
}

fn skip_or_panic<T>(reason: &str) -> Option<T> {
    if peers_required() {
        panic!("{REQUIRE_ENV}=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

fn search_path(peer: Peer) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter()
        .map(|d| d.join(peer.program()))
        .find(|p| is_executable_file(p, peer))
}

fn is_executable_file(p: &Path, peer: Peer) -> bool {
    match std::fs::metadata(p) {
        // ntpq is run through python3, it only needs to be a readable file.
        Ok(m) if peer == Peer::Ntpq => m.is_file(),
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

fn python_has_ntp() -> bool {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args(["-c", "import ntp.packet, ntp.util"]);
    crate::process::run_capture(cmd, Duration::from_secs(20)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_check() {
        // Not a peer, but exercises the executable check.
        assert!(is_executable_file(Path::new("/bin/sh"), Peer::Chronyd));
        assert!(!is_executable_file(
            Path::new("/nonexistent/x"),
            Peer::Chronyd
        ));
    }
}
