//! A source's timers, in one table, and the exponential backoff its key
//! exchanges and name resolutions share.

use crate::time::MonoTime;
use std::time::Duration;

/// What a source waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The next poll, as the clock agent schedules it.
    Poll,
    /// The answer to the request in flight.
    Response,
    /// A key exchange or name resolution backing off.
    Backoff,
    /// An authenticated RATE kiss (any RATE kiss for plain NTP): hold off.
    RateHold,
}

const TIMERS: usize = 4;

/// One deadline per [`Timer`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerTable([Option<MonoTime>; TIMERS]);

impl TimerTable {
    fn slot(t: Timer) -> usize {
        match t {
            Timer::Poll => 0,
            Timer::Response => 1,
            Timer::Backoff => 2,
            Timer::RateHold => 3,
        }
    }

    pub fn set(&mut self, t: Timer, at: MonoTime) {
        self.0[Self::slot(t)] = Some(at);
    }

    pub fn clear(&mut self, t: Timer) {
        self.0[Self::slot(t)] = None;
    }

    pub fn get(&self, t: Timer) -> Option<MonoTime> {
        self.0[Self::slot(t)]
    }

    /// The time at which all of `gates` have passed (unset ones are open):
    /// a poll waits for its schedule, a backoff and a RATE hold alike.
    pub fn all_passed(&self, gates: &[Timer]) -> MonoTime {
        gates
            .iter()
            .filter_map(|t| self.get(*t))
            .max()
            .unwrap_or(MonoTime::ZERO)
    }
}

/// Exponential backoff: `min` after the first failure, doubled each time up
/// to `max`, with jitter taking up to half off so a fleet does not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: 0,
        }
    }

    /// A failure at `now`; `jitter` uniform in [0, 1). Returns when to try again.
    pub fn fail(&mut self, now: MonoTime, jitter: f64) -> MonoTime {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let wait = self.min.saturating_mul(1u32 << exp).min(self.max);
        now + wait.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_open_when_the_last_has_passed() {
        let mut t = TimerTable::default();
        assert_eq!(
            t.all_passed(&[Timer::Poll, Timer::RateHold]),
            MonoTime::ZERO
        );
        t.set(Timer::Poll, MonoTime::from_secs_f64(10.0));
        t.set(Timer::RateHold, MonoTime::from_secs_f64(74.0));
        t.set(Timer::Response, MonoTime::from_secs_f64(99.0));
        assert_eq!(
            t.all_passed(&[Timer::Poll, Timer::RateHold, Timer::Backoff]),
            MonoTime::from_secs_f64(74.0)
        );
        t.clear(Timer::RateHold);
        assert_eq!(t.get(Timer::RateHold), None);
    }
}
