//! A simulated clock: true time advances when the simulation says so, and the
//! clock drifts from it by its own frequency error (with optional random-walk
//! wander) plus whatever frequency correction is set, like a kernel clock
//! under frequency-only control.

use super::clock_trait::{Clock, SyncStatus};
use super::leap::LeapStatus;
use super::sim::Rng;
use crate::ntp_packet::NtpTimestamp;
use core::convert::Infallible;

/// The kernel's limit on the frequency correction (ppm).
pub const KERNEL_MAX_FREQUENCY_PPM: f64 = 500.0;

/// A deterministic clock for tests.
#[derive(Debug, Clone)]
pub struct SimulatedClock {
    /// True time since the start of the simulation (seconds).
    true_time: f64,
    /// Clock reading minus true time (seconds).
    error: f64,
    /// The oscillator's own frequency error (ppm); wanders.
    intrinsic_ppm: f64,
    /// The frequency correction set through the trait (ppm).
    correction_ppm: f64,
    /// Random-walk frequency noise: variance of the frequency, in (s/s)², added per second.
    wander: f64,
    rng: Rng,
    /// The NTP timestamp that true time 0 corresponds to, and the same as
    /// Unix seconds.
    epoch: NtpTimestamp,
    epoch_unix: i64,
    steps: Vec<(f64, f64)>,
    stepped: f64,
    status: SyncStatus,
    /// The kernel's leap flag (`STA_INS`/`STA_DEL`).
    leap_flag: LeapStatus,
    /// The kernel has applied a leap and waits for the flag to be cleared
    /// before it will apply another (Linux's TIME_WAIT).
    leap_wait: bool,
    /// Seconds the kernel's leaps took off the UTC reading (+1 per inserted
    /// second, −1 per deleted one).
    leap_adjust: f64,
    /// Leaps applied: (true time, what).
    leaps: Vec<(f64, LeapStatus)>,
}

/// 2024-01-01T00:00:00Z, where simulations start unless told otherwise.
pub const DEFAULT_EPOCH_UNIX: i64 = 1_704_067_200;

impl SimulatedClock {
    /// A clock `initial_offset` seconds ahead of true time, running
    /// `frequency_error_ppm` fast, with no wander. `seed` drives the wander.
    pub fn new(initial_offset: f64, frequency_error_ppm: f64, seed: u64) -> Self {
        Self {
            true_time: 0.0,
            error: initial_offset,
            intrinsic_ppm: frequency_error_ppm,
            correction_ppm: 0.0,
            wander: 0.0,
            rng: Rng::new(seed ^ 0x5eed_c10c),
            epoch: NtpTimestamp::from_unix(DEFAULT_EPOCH_UNIX as u64, 0),
            epoch_unix: DEFAULT_EPOCH_UNIX,
            steps: Vec::new(),
            stepped: 0.0,
            status: SyncStatus::UNSYNCHRONIZED,
            leap_flag: LeapStatus::None,
            leap_wait: false,
            leap_adjust: 0.0,
            leaps: Vec::new(),
        }
    }

    /// Start true time at `unix` (Unix seconds, UTC) instead of 2024-01-01.
    pub fn with_epoch_unix(mut self, unix: i64) -> Self {
        self.epoch_unix = unix;
        self.epoch = NtpTimestamp::from_unix(unix.max(0) as u64, 0);
        self
    }

    /// The Unix time that true time 0 corresponds to.
    pub fn epoch_unix(&self) -> i64 {
        self.epoch_unix
    }

    /// The clock's UTC reading, as seconds since the epoch: the local time
    /// less what the kernel's leaps took off.
    fn reading(&self) -> f64 {
        self.local_time() - self.leap_adjust
    }

    /// The reading (seconds since the epoch) at which the armed leap
    /// happens, if one is armed: midnight UTC for an insertion (the clock is
    /// set back a second: 23:59:59 repeats, the kernel's 23:59:60), one
    /// second before it for a deletion (23:59:59 is skipped).
    fn leap_boundary(&self) -> Option<f64> {
        if self.leap_wait {
            return None;
        }
        let r = self.reading() + self.epoch_unix as f64;
        let next_midnight = |x: f64| ((x / 86_400.0).floor() + 1.0) * 86_400.0;
        let b = match self.leap_flag {
            LeapStatus::None => return None,
            LeapStatus::Insert => next_midnight(r),
            LeapStatus::Delete => next_midnight(r + 1.0) - 1.0,
        };
        Some(b - self.epoch_unix as f64)
    }

    fn apply_leap(&mut self) {
        let delta = match self.leap_flag {
            LeapStatus::None => return,
            LeapStatus::Insert => 1.0,
            LeapStatus::Delete => -1.0,
        };
        self.leap_adjust += delta;
        self.leaps.push((self.true_time, self.leap_flag));
        self.leap_wait = true;
    }

    /// Leaps the kernel applied: (true time, inserted or deleted).
    pub fn leaps(&self) -> &[(f64, LeapStatus)] {
        &self.leaps
    }

    /// Seconds the kernel's leaps took off the UTC reading so far.
    pub fn leap_adjustment(&self) -> f64 {
        self.leap_adjust
    }

    /// The kernel's leap flag now.
    pub fn leap_flag(&self) -> LeapStatus {
        self.leap_flag
    }

    /// Add random-walk frequency noise: the frequency's variance grows by
    /// `wander` (s/s)² per second (for example 1e-17: about 0.1 ppm per 1000 s).
    pub fn with_wander(mut self, wander: f64) -> Self {
        self.wander = wander.max(0.0);
        self
    }

    /// Let `dt` seconds of true time pass.
    pub fn advance(&mut self, dt: f64) {
        let mut left = dt.max(0.0);
        while left > 0.0 {
            // Wander is applied at most a second apart, so its effect on the
            // phase is integrated finely enough.
            let mut h = if self.wander > 0.0 {
                left.min(1.0)
            } else {
                left
            };
            // Stop exactly at an armed leap, as the kernel does.
            let mut leap_now = false;
            if let Some(b) = self.leap_boundary() {
                let to_b = (b - self.reading()) / (1.0 + self.rate());
                if to_b <= h {
                    h = to_b.max(0.0);
                    leap_now = true;
                }
            }
            self.error += self.rate() * h;
            self.true_time += h;
            if self.wander > 0.0 {
                self.intrinsic_ppm += self.rng.normal() * (self.wander * h).sqrt() * 1e6;
            }
            if leap_now {
                self.apply_leap();
            }
            left -= h;
        }
    }

    /// True time since the start (seconds).
    pub fn true_time(&self) -> f64 {
        self.true_time
    }

    /// Clock minus true time (seconds).
    pub fn offset(&self) -> f64 {
        self.error
    }

    /// The clock's reading in seconds since the start of the simulation.
    pub fn local_time(&self) -> f64 {
        self.true_time + self.error
    }

    /// A monotonic reading: the clock without its steps (like CLOCK_MONOTONIC).
    pub fn monotonic(&self) -> f64 {
        self.local_time() - self.stepped
    }

    /// Rate error of the clock now, corrections included (seconds per second).
    pub fn rate(&self) -> f64 {
        (self.intrinsic_ppm + self.correction_ppm) * 1e-6
    }

    /// The oscillator's own frequency error (ppm).
    pub fn intrinsic_frequency_ppm(&self) -> f64 {
        self.intrinsic_ppm
    }

    /// Steps taken: (true time, amount).
    pub fn steps(&self) -> &[(f64, f64)] {
        &self.steps
    }

    /// The NTP timestamp of true time `t` (seconds since the start).
    pub fn true_timestamp(&self, t: f64) -> NtpTimestamp {
        offset_timestamp(self.epoch, t)
    }
}

/// `base` plus `secs` seconds.
pub(crate) fn offset_timestamp(base: NtpTimestamp, secs: f64) -> NtpTimestamp {
    let frac = (secs * 4_294_967_296.0).round() as i64;
    NtpTimestamp(base.0.wrapping_add(frac as u64))
}

impl Clock for SimulatedClock {
    type Error = Infallible;

    fn now(&self) -> Result<NtpTimestamp, Infallible> {
        Ok(offset_timestamp(self.epoch, self.reading()))
    }

    fn step(&mut self, offset: f64) -> Result<(), Infallible> {
        self.error += offset;
        self.stepped += offset;
        self.steps.push((self.true_time, offset));
        Ok(())
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), Infallible> {
        self.correction_ppm = ppm.clamp(-KERNEL_MAX_FREQUENCY_PPM, KERNEL_MAX_FREQUENCY_PPM);
        Ok(())
    }

    fn frequency(&self) -> Result<f64, Infallible> {
        Ok(self.correction_ppm)
    }

    fn set_sync_status(&mut self, status: &SyncStatus) -> Result<(), Infallible> {
        self.status = *status;
        Ok(())
    }

    fn sync_status(&self) -> Result<SyncStatus, Infallible> {
        Ok(self.status)
    }

    fn set_leap(&mut self, leap: LeapStatus) -> Result<(), Infallible> {
        self.leap_flag = leap;
        if leap == LeapStatus::None {
            self.leap_wait = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drifts_steps_and_slews() {
        let mut c = SimulatedClock::new(0.5, 100.0, 1);
        c.advance(10.0);
        assert!((c.offset() - (0.5 + 1e-3)).abs() < 1e-12);
        c.step(-0.5).unwrap();
        assert!((c.offset() - 1e-3).abs() < 1e-12);
        assert!((c.monotonic() - (10.0 + 0.5 + 1e-3)).abs() < 1e-9);
        c.set_frequency(-100.0).unwrap();
        c.advance(1000.0);
        assert!((c.offset() - 1e-3).abs() < 1e-12);
        c.set_frequency(-1000.0).unwrap();
        assert_eq!(c.frequency().unwrap(), -500.0);
        assert_eq!(c.steps(), &[(10.0, -0.5)]);
        let t = c.now().unwrap();
        let want = c.true_timestamp(c.true_time());
        assert!((t.diff_seconds(want) - c.offset()).abs() < 1e-9);
    }

    #[test]
    fn the_kernel_applies_a_leap_once_at_midnight() {
        // 2026-12-31 23:59:50 UTC.
        let mut c = SimulatedClock::new(0.0, 0.0, 1).with_epoch_unix(1_798_761_590);
        let read = |c: &SimulatedClock| c.now().unwrap().to_unix_f64(1_798_761_600);
        c.set_leap(LeapStatus::Insert).unwrap();
        c.advance(9.5);
        assert!((read(&c) - 1_798_761_599.5).abs() < 1e-6);
        c.advance(1.0);
        // 23:59:60.5: the reading repeats 23:59:59.
        assert!((read(&c) - 1_798_761_599.5).abs() < 1e-6, "{}", read(&c));
        assert_eq!(c.leaps(), &[(10.0, LeapStatus::Insert)]);
        c.advance(1.0);
        assert!((read(&c) - 1_798_761_600.5).abs() < 1e-6);
        // Still flagged, but the kernel waits for the flag to be cleared.
        c.advance(86_400.0);
        assert_eq!(c.leaps().len(), 1);
        assert_eq!(c.leap_adjustment(), 1.0);
        // Monotonic time never jumps.
        assert!((c.monotonic() - c.true_time()).abs() < 1e-9);

        // Deletion: 23:59:58 is followed by 00:00:00.
        let mut c = SimulatedClock::new(0.0, 0.0, 1).with_epoch_unix(1_798_761_590);
        c.set_leap(LeapStatus::Delete).unwrap();
        c.advance(8.5);
        assert!((read(&c) - 1_798_761_598.5).abs() < 1e-6);
        c.advance(1.0);
        assert!((read(&c) - 1_798_761_600.5).abs() < 1e-6, "{}", read(&c));
        assert_eq!(c.leaps(), &[(9.0, LeapStatus::Delete)]);
        // Cleared in time, nothing happens.
        let mut c = SimulatedClock::new(0.0, 0.0, 1).with_epoch_unix(1_798_761_590);
        c.set_leap(LeapStatus::Insert).unwrap();
        c.advance(5.0);
        c.set_leap(LeapStatus::None).unwrap();
        c.advance(10.0);
        assert!(c.leaps().is_empty());
    }

    #[test]
    fn wander_is_a_seeded_random_walk() {
        let run = |seed| {
            let mut c = SimulatedClock::new(0.0, 0.0, seed).with_wander(1e-16);
            c.advance(3600.0);
            c.intrinsic_frequency_ppm()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // σ after an hour: sqrt(1e-16 · 3600) = 0.6 ppm.
        let spread: f64 = (0..50).map(|s| run(s).powi(2)).sum::<f64>() / 50.0;
        assert!(
            spread.sqrt() > 0.2 && spread.sqrt() < 1.5,
            "{}",
            spread.sqrt()
        );
    }
}
