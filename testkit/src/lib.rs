//! Test harness for end-to-end and interop tests: runs real NTS peers
//! (chrony, NTPsec) on loopback, in temporary directories, and cleans them up.
//!
//! Building blocks:
//!
//! * [`ports`]: free loopback ports that do not clash between tests running in
//!   parallel, in one process or in several.
//! * [`process`]: [`process::ChildGuard`], a spawned child whose output goes to
//!   log files, that is killed (SIGTERM, then SIGKILL) and reaped on drop, and
//!   whose logs are printed if the test panics.
//! * [`peers`]: locate `chronyd`, `chronyc`, NTPsec's `ntpd`/`ntpq` and `capsh`;
//!   skip or fail (with `NTS_REQUIRE_PEERS=1`) when they are missing.
//! * [`certs`]: a throw-away CA and a server certificate for `localhost`,
//!   `127.0.0.1` and `::1`.
//! * [`chrony`]: chrony as an NTS client ([`chrony::ChronyClient`]) or NTS server
//!   ([`chrony::ChronyServer`]), with parsed `chronyc -c` reports.
//! * [`ntpsec`]: NTPsec's `ntpd` as an NTS client ([`ntpsec::NtpsecClient`]),
//!   always without `CAP_SYS_TIME`.
//! * [`nts_probe`]: one NTS exchange with explicit credentials, to see what
//!   a time server does with a given cookie.
//!
//! Safety rules enforced here: `chronyd` always runs with `-x` (never touches the
//! system clock); NTPsec's `ntpd` always runs under
//! `capsh --drop=cap_sys_time -- -c 'exec ntpd ...'`, never with `-q`, and with
//! `disable ntp`/`disable kernel`. All traffic stays on loopback.
//!
//! Running real peers needs root (chronyd drops privileges to `_chrony`) and the
//! packages installed by `scripts/install-test-deps.sh`.
//!
//! ```no_run
//! use std::time::Duration;
//! use testkit::{certs::TestPki, chrony::{ChronyClient, ChronyServer}, peers};
//!
//! let Some(bins) = peers::require_chrony() else { return };
//! let pki = TestPki::generate().unwrap();
//! let server = ChronyServer::builder(&bins, &pki).start().unwrap();
//! let client = ChronyClient::builder(&bins)
//!     .nts_server("127.0.0.1", server.ke_port(), server.ntp_port())
//!     .trusted_certs(pki.ca_path())
//!     .start()
//!     .unwrap();
//! let auth = client.wait_for_cookies(8, Duration::from_secs(30)).unwrap();
//! assert_eq!(auth[0].cookies, 8);
//! ```

#![warn(missing_docs)]

pub mod certs;
pub mod chrony;
mod error;
mod fsutil;
pub mod netns;
pub mod ntpsec;
pub mod nts_probe;
pub mod peers;
pub mod ports;
pub mod process;
pub mod stack;

pub use error::{Error, Result};

use std::time::{Duration, Instant};

/// Default interval between two polls in the `wait_*` helpers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Calls `probe` every `interval` until it returns `Some`, or until `timeout`
/// has elapsed (then returns `None`). `probe` is always called at least once,
/// and once more right at the deadline.
pub fn wait_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_value_or_none() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, Some(3));
        let start = Instant::now();
        let v: Option<()> =
            wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
                None
            });
        assert!(v.is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
