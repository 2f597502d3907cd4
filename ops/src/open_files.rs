//! The open-file limit (RLIMIT_NOFILE) a daemon needs for the connections
//! its configuration allows. A limit below that shows up late and badly:
//! accept fails with EMFILE under load, and with it the metrics endpoint and
//! certificate reloads. So start-up raises the soft limit when the hard one
//! allows, and refuses to start, naming both numbers, when it does not.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// File descriptors kept free beyond the configured connections: listeners,
/// the metrics endpoint, certificate and key files, key-sync links, logs.
pub const HEADROOM: u64 = 256;

/// What [`ensure`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFiles {
    /// The soft limit already allowed `needed`.
    Enough { soft: u64 },
    /// The soft limit was raised from `from` to `to` (at most the hard limit).
    Raised { from: u64, to: u64 },
}

/// Why the limit cannot cover the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} needs about {needed} open files, but RLIMIT_NOFILE allows at most {hard} (hard limit; soft {soft}): raise the limit (ulimit -n, systemd LimitNOFILE=, the container runtime's nofile ulimit) or lower {what}")]
pub struct TooFewFiles {
    pub what: String,
    pub needed: u64,
    pub soft: u64,
    pub hard: u64,
}

/// The soft and hard RLIMIT_NOFILE.
pub fn current() -> std::io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)
}

/// Check that `needed` descriptors fit under the hard limit (for
/// `--check-config`: nothing is changed). `what` names the settings that need them.
pub fn check(what: &str, needed: u64) -> Result<(), TooFewFiles> {
    let (soft, hard) = current().unwrap_or((u64::MAX, u64::MAX));
    verdict(what, needed, soft, hard).map(|_| ())
}

/// [`check`], then raise the soft limit to `needed` when it is lower.
pub fn ensure(what: &str, needed: u64) -> Result<OpenFiles, TooFewFiles> {
    let (soft, hard) = current().unwrap_or((u64::MAX, u64::MAX));
    match verdict(what, needed, soft, hard)? {
        OpenFiles::Raised { from, to } => match setrlimit(Resource::RLIMIT_NOFILE, to, hard) {
            Ok(()) => Ok(OpenFiles::Raised { from, to }),
            Err(_) => Err(TooFewFiles {
                what: what.into(),
                needed,
                soft,
                hard: soft,
            }),
        },
        enough => Ok(enough),
    }
}

/// The decision, apart from the system calls.
fn verdict(what: &str, needed: u64, soft: u64, hard: u64) -> Result<OpenFiles, TooFewFiles> {
    if soft >= needed {
        Ok(OpenFiles::Enough { soft })
    } else if hard >= needed {
        Ok(OpenFiles::Raised {
            from: soft,
            to: needed,
        })
    } else {
        Err(TooFewFiles {
            what: what.into(),
            needed,
            soft,
            hard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_the_soft_limit_or_names_both_limits() {
        assert_eq!(
            verdict("x", 100, 1024, 4096),
            Ok(OpenFiles::Enough { soft: 1024 })
        );
        assert_eq!(
            verdict("x", 2000, 1024, 4096),
            Ok(OpenFiles::Raised {
                from: 1024,
                to: 2000
            })
        );
        let e = verdict("server.max_connections", 1536, 1024, 1024).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("server.max_connections"), "{msg}");
        assert!(msg.contains("1536") && msg.contains("1024"), "{msg}");
    }

    #[test]
    fn ensure_raises_this_process_soft_limit() {
        let (soft, hard) = current().unwrap();
        // Ask for a little more than the soft limit, when the hard one allows.
        if soft < hard && soft < 1 << 20 {
            let want = soft + 1;
            assert_eq!(
                ensure("test", want),
                Ok(OpenFiles::Raised {
                    from: soft,
                    to: want
                })
            );
            assert_eq!(current().unwrap().0, want);
        }
        assert!(ensure("test", hard.saturating_add(1)).is_err() || hard == u64::MAX);
    }
}
