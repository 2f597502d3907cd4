//! The host's clock behind `nts_proto::clock::Clock`, through
//! `clock_adjtime(CLOCK_REALTIME)` in frequency-only mode (the kernel PLL is
//! switched off so it cannot fight the agent's loop).
//!
//! Only the agent in discipline mode, with CAP_SYS_TIME, ever constructs a
//! writable one. Tests use the simulated clock in `nts_proto::clock`.

use nts_proto::clock::{Clock, LeapStatus, SyncStatus};
use nts_proto::ntp_packet::NtpTimestamp;

const STA_PLL: i32 = 0x0001;
const STA_FLL: i32 = 0x0008;
const STA_INS: i32 = 0x0010;
const STA_DEL: i32 = 0x0020;
const STA_UNSYNC: i32 = 0x0040;
const TIME_ERROR: i32 = 5;

/// Does this process hold CAP_SYS_TIME (needed to change the clock)?
pub fn has_cap_sys_time() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 25) != 0)
}

/// The system clock.
#[derive(Debug)]
pub struct SystemClock {
    pll_cleared: bool,
}

impl SystemClock {
    /// A handle that may change the clock. Callers check [`has_cap_sys_time`] first.
    pub fn new() -> Self {
        Self { pll_cleared: false }
    }

    fn adjtime(tx: &mut libc::timex) -> std::io::Result<i32> {
        // SAFETY: clock_adjtime reads and writes the timex it is given.
        let r = unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, tx) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(r)
    }

    fn read() -> std::io::Result<(i32, libc::timex)> {
        // SAFETY: all-zero timex means modes = 0: a pure read.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = Self::adjtime(&mut tx)?;
        Ok((state, tx))
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    type Error = std::io::Error;

    fn now(&self) -> Result<NtpTimestamp, Self::Error> {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(std::io::Error::other)?;
        Ok(NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos()))
    }

    fn step(&mut self, offset: f64) -> Result<(), Self::Error> {
        // SAFETY: zeroed timex, then only the fields for ADJ_SETOFFSET.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
        let secs = offset.floor();
        tx.time.tv_sec = secs as libc::time_t;
        tx.time.tv_usec =
            ((offset - secs) * 1e9).round().clamp(0.0, 999_999_999.0) as libc::suseconds_t;
        Self::adjtime(&mut tx).map(|_| ())
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), Self::Error> {
        // SAFETY: zeroed timex, then only the fields named in modes.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_FREQUENCY;
        tx.freq = (ppm.clamp(-500.0, 500.0) * 65536.0).round() as libc::c_long;
        if !self.pll_cleared {
            let (_, cur) = Self::read()?;
            tx.modes |= libc::ADJ_STATUS;
            tx.status = cur.status & !(STA_PLL | STA_FLL);
        }
        Self::adjtime(&mut tx)?;
        self.pll_cleared = true;
        Ok(())
    }

    fn frequency(&self) -> Result<f64, Self::Error> {
        Ok(Self::read()?.1.freq as f64 / 65536.0)
    }

    fn set_sync_status(&mut self, status: &SyncStatus) -> Result<(), Self::Error> {
        let (_, cur) = Self::read()?;
        // SAFETY: zeroed timex, then only the fields named in modes.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
        let mut st = cur.status & !(STA_PLL | STA_FLL);
        if status.synchronized {
            st &= !STA_UNSYNC;
        } else {
            st |= STA_UNSYNC;
        }
        tx.status = st;
        tx.maxerror = (status.max_error * 1e6).clamp(0.0, 16e6) as libc::c_long;
        tx.esterror = (status.est_error * 1e6).clamp(0.0, 16e6) as libc::c_long;
        Self::adjtime(&mut tx).map(|_| ())
    }

    fn set_leap(&mut self, leap: LeapStatus) -> Result<(), Self::Error> {
        let (_, cur) = Self::read()?;
        // SAFETY: zeroed timex, then only the fields named in modes.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        tx.modes = libc::ADJ_STATUS;
        tx.status = leap_status_bits(cur.status, leap);
        Self::adjtime(&mut tx).map(|_| ())
    }

    fn sync_status(&self) -> Result<SyncStatus, Self::Error> {
        let (state, tx) = Self::read()?;
        Ok(SyncStatus {
            synchronized: tx.status & STA_UNSYNC == 0 && state != TIME_ERROR,
            max_error: tx.maxerror as f64 * 1e-6,
            est_error: tx.esterror as f64 * 1e-6,
        })
    }
}

/// The kernel status word with the leap flag set as asked: `STA_INS`,
/// `STA_DEL` or neither. The other bits the agent manages stay as they are
/// (`STA_UNSYNC`), and the PLL and FLL stay off.
fn leap_status_bits(current: i32, leap: LeapStatus) -> i32 {
    let base = current & !(STA_PLL | STA_FLL | STA_INS | STA_DEL);
    match leap {
        LeapStatus::None => base,
        LeapStatus::Insert => base | STA_INS,
        LeapStatus::Delete => base | STA_DEL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leap_bits_keep_the_rest() {
        let cur = STA_UNSYNC | STA_PLL | STA_DEL | 0x2000;
        assert_eq!(
            leap_status_bits(cur, LeapStatus::Insert),
            STA_UNSYNC | STA_INS | 0x2000
        );
        assert_eq!(leap_status_bits(cur, LeapStatus::None), STA_UNSYNC | 0x2000);
        assert_eq!(leap_status_bits(STA_INS, LeapStatus::Delete), STA_DEL);
    }

    /// Read-only calls are safe to make in tests; nothing here writes the clock.
    #[test]
    fn reads_only() {
        let c = SystemClock::new();
        assert!(c.frequency().unwrap().abs() <= 512.0);
        let s = c.sync_status().unwrap();
        assert!(s.max_error >= 0.0);
        assert!(c.now().unwrap().seconds() > 0);
    }
}
