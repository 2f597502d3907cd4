//! Time and rates in types. The core never reads a clock: callers pass these
//! in. Each type is one base, so monotonic and wall-clock time, spans and
//! frequency offsets cannot be mixed up by accident (ntpd-rs's `time_types`
//! follows the same idea).
//!
//! - [`MonoTime`]: a reading of a monotonic clock (nanoseconds from an origin
//!   the driver fixes: process start, or zero in a simulation). Used for
//!   deadlines, ages and rate limits.
//! - [`UnixTime`]: wall-clock time since 1970-01-01 UTC (POSIX, leap seconds
//!   not counted), nanosecond resolution. Used for key epochs, cookie
//!   validity and leap-second dates.
//! - [`Seconds`]: a signed span in seconds (offsets, delays, dispersion),
//!   where fractions of a nanosecond matter to the clock filter.
//! - [`Ppm`]: a frequency offset in parts per million.

use core::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};
use std::time::{Duration, SystemTime};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A reading of a monotonic clock, in nanoseconds from the driver's origin.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(u64);

impl MonoTime {
    /// The origin.
    pub const ZERO: Self = Self(0);

    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time `since_origin` after the origin (saturating at ~584 years).
    pub fn from_duration(since_origin: Duration) -> Self {
        Self(u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Seconds since the origin; negative and non-finite inputs give the origin.
    pub fn from_secs_f64(secs: f64) -> Self {
        if secs.is_finite() && secs > 0.0 {
            Self::from_duration(Duration::from_secs_f64(secs.min(1.8e10)))
        } else {
            Self::ZERO
        }
    }

    pub fn as_secs_f64(self) -> f64 {
        Duration::from_nanos(self.0).as_secs_f64()
    }

    /// How long after `earlier` this is, or zero when it is not later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// How long after `earlier` this is, or `None` when it is earlier.
    pub fn checked_since(self, earlier: Self) -> Option<Duration> {
        self.0.checked_sub(earlier.0).map(Duration::from_nanos)
    }

    /// The signed span from `earlier` to this reading.
    pub fn signed_since(self, earlier: Self) -> Seconds {
        match self.checked_since(earlier) {
            Some(d) => Seconds::from(d),
            None => -Seconds::from(earlier.saturating_since(self)),
        }
    }

    /// This time plus `d`, saturating instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_nanos(d)))
    }

    /// This time minus `d`, saturating at the origin.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_nanos(d)))
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for MonoTime {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for MonoTime {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for MonoTime {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

/// Wall-clock time since the Unix epoch, in nanoseconds (signed, so dates
/// before 1970 in a leap-seconds list or a bad clock still have a value).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(i64);

impl UnixTime {
    /// 1970-01-01T00:00:00Z.
    pub const EPOCH: Self = Self(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch (saturating beyond the year 2262).
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(NANOS_PER_SEC as i64))
    }

    /// Seconds since the epoch; non-finite inputs give the epoch.
    pub fn from_secs_f64(secs: f64) -> Self {
        if secs.is_finite() {
            // `as` saturates on overflow: the intended behaviour at the range's ends.
            #[allow(clippy::cast_possible_truncation)]
            Self((secs * 1e9).round() as i64)
        } else {
            Self::EPOCH
        }
    }

    /// Whole seconds since the epoch, rounded down.
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(NANOS_PER_SEC as i64)
    }

    /// Nanoseconds past the whole second [`Self::as_secs`].
    pub const fn subsec_nanos(self) -> u32 {
        // rem_euclid of a positive divisor is in 0..1e9, which fits u32.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = self.0.rem_euclid(NANOS_PER_SEC as i64) as u32;
        n
    }

    #[allow(clippy::cast_precision_loss)]
    pub fn as_secs_f64(self) -> f64 {
        self.as_secs() as f64 + f64::from(self.subsec_nanos()) * 1e-9
    }

    /// The wall-clock reading a `SystemTime` stands for.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Self(i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n)),
        }
    }

    /// The signed span from `earlier` to this time.
    pub fn signed_since(self, earlier: Self) -> Seconds {
        // Two readings within ±146 years of each other differ by an i64.
        #[allow(clippy::cast_precision_loss)]
        Seconds(self.0.saturating_sub(earlier.0) as f64 * 1e-9)
    }

    /// How long after `earlier` this is, or zero when it is not later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        u64::try_from(self.0.saturating_sub(earlier.0)).map_or(Duration::ZERO, Duration::from_nanos)
    }

    /// This time shifted by a signed span.
    pub fn offset_by(self, s: Seconds) -> Self {
        Self::from_nanos(self.0.saturating_add(s.as_nanos_i64()))
    }
}

impl Add<Duration> for UnixTime {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        )
    }
}

impl Sub<Duration> for UnixTime {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        )
    }
}

/// A signed span of time in seconds: an offset, a delay, a dispersion.
#[derive(Debug, Default, Clone, Copy, PartialEq, PartialOrd)]
pub struct Seconds(f64);

impl Seconds {
    pub const ZERO: Self = Self(0.0);

    pub const fn new(secs: f64) -> Self {
        Self(secs)
    }

    pub fn from_millis(ms: f64) -> Self {
        Self(ms * 1e-3)
    }

    pub fn from_micros(us: f64) -> Self {
        Self(us * 1e-6)
    }

    pub const fn as_f64(self) -> f64 {
        self.0
    }

    pub fn as_millis(self) -> f64 {
        self.0 * 1e3
    }

    pub fn as_micros(self) -> f64 {
        self.0 * 1e6
    }

    pub fn abs(self) -> Self {
        Self(self.0.abs())
    }

    pub fn max(self, other: Self) -> Self {
        Self(self.0.max(other.0))
    }

    pub fn min(self, other: Self) -> Self {
        Self(self.0.min(other.0))
    }

    pub fn is_finite(self) -> bool {
        self.0.is_finite()
    }

    /// The span as a `Duration`, or `None` when negative or not finite.
    pub fn to_duration(self) -> Option<Duration> {
        Duration::try_from_secs_f64(self.0).ok()
    }

    /// Whole nanoseconds, rounded, saturating at the ends of `i64`.
    pub fn as_nanos_i64(self) -> i64 {
        // `as` saturates (and maps NaN to 0): the intended behaviour.
        #[allow(clippy::cast_possible_truncation)]
        let n = (self.0 * 1e9).round() as i64;
        n
    }
}

impl From<Duration> for Seconds {
    fn from(d: Duration) -> Self {
        Self(d.as_secs_f64())
    }
}

impl Add for Seconds {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self(self.0 + o.0)
    }
}

impl AddAssign for Seconds {
    fn add_assign(&mut self, o: Self) {
        self.0 += o.0;
    }
}

impl Sub for Seconds {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self(self.0 - o.0)
    }
}

impl SubAssign for Seconds {
    fn sub_assign(&mut self, o: Self) {
        self.0 -= o.0;
    }
}

impl Neg for Seconds {
    type Output = Self;
    fn neg(self) -> Self {
        Self(-self.0)
    }
}

impl Mul<f64> for Seconds {
    type Output = Self;
    fn mul(self, k: f64) -> Self {
        Self(self.0 * k)
    }
}

impl Div<f64> for Seconds {
    type Output = Self;
    fn div(self, k: f64) -> Self {
        Self(self.0 / k)
    }
}

/// The ratio of two spans.
impl Div for Seconds {
    type Output = f64;
    fn div(self, o: Self) -> f64 {
        self.0 / o.0
    }
}

/// A frequency offset in parts per million (positive: the clock runs fast).
#[derive(Debug, Default, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ppm(f64);

impl Ppm {
    pub const ZERO: Self = Self(0.0);

    pub const fn new(ppm: f64) -> Self {
        Self(ppm)
    }

    pub const fn as_f64(self) -> f64 {
        self.0
    }

    /// From a dimensionless ratio (seconds gained per second).
    pub fn from_ratio(ratio: f64) -> Self {
        Self(ratio * 1e6)
    }

    /// As a dimensionless ratio (seconds gained per second).
    pub fn as_ratio(self) -> f64 {
        self.0 * 1e-6
    }

    /// The time this offset gains over `interval`.
    pub fn over(self, interval: Seconds) -> Seconds {
        Seconds(self.as_ratio() * interval.0)
    }

    pub fn abs(self) -> Self {
        Self(self.0.abs())
    }

    /// Clamped to ±`limit`.
    pub fn clamp_abs(self, limit: Self) -> Self {
        let l = limit.0.abs();
        Self(self.0.clamp(-l, l))
    }
}

impl Add for Ppm {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self(self.0 + o.0)
    }
}

impl Sub for Ppm {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self(self.0 - o.0)
    }
}

impl Neg for Ppm {
    type Output = Self;
    fn neg(self) -> Self {
        Self(-self.0)
    }
}

impl Mul<f64> for Ppm {
    type Output = Self;
    fn mul(self, k: f64) -> Self {
        Self(self.0 * k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_time_saturates_instead_of_wrapping() {
        let t = MonoTime::from_nanos(5);
        assert_eq!(t - Duration::from_nanos(9), MonoTime::ZERO);
        assert_eq!(
            MonoTime::from_nanos(u64::MAX) + Duration::from_secs(1),
            MonoTime::from_nanos(u64::MAX)
        );
        assert_eq!(t.saturating_since(MonoTime::from_nanos(9)), Duration::ZERO);
        assert_eq!(t.checked_since(MonoTime::from_nanos(9)), None);
        assert_eq!(MonoTime::from_nanos(9).signed_since(t), Seconds::new(4e-9));
        assert_eq!(t.signed_since(MonoTime::from_nanos(9)), Seconds::new(-4e-9));
        assert_eq!(MonoTime::from_secs_f64(-1.0), MonoTime::ZERO);
        assert_eq!(MonoTime::from_secs_f64(f64::NAN), MonoTime::ZERO);
        assert_eq!(MonoTime::from_secs_f64(1.5).as_nanos(), 1_500_000_000);
    }

    #[test]
    fn unix_time_rounds_down_to_whole_seconds_also_before_1970() {
        let t = UnixTime::from_secs_f64(-1.25);
        assert_eq!(t.as_secs(), -2);
        assert_eq!(t.subsec_nanos(), 750_000_000);
        assert!((t.as_secs_f64() + 1.25).abs() < 1e-12);
        let now = UnixTime::from_secs(1_800_000_000);
        assert_eq!((now + Duration::from_millis(1500)).as_secs(), 1_800_000_001);
        assert_eq!(
            now.signed_since(now + Duration::from_secs(2)),
            Seconds::new(-2.0)
        );
        assert_eq!(
            now.saturating_since(now + Duration::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(
            now.offset_by(Seconds::new(-0.5)).as_nanos(),
            now.as_nanos() - 500_000_000
        );
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(3);
        assert_eq!(UnixTime::from_system_time(before).as_secs(), -3);
        assert_eq!(UnixTime::from_secs_f64(f64::INFINITY), UnixTime::EPOCH);
    }

    #[test]
    fn seconds_and_ppm_keep_their_units() {
        let s = Seconds::from_millis(2.0) - Seconds::from_micros(500.0);
        assert!((s.as_micros() - 1500.0).abs() < 1e-9);
        assert_eq!(Seconds::new(-1.0).to_duration(), None);
        assert_eq!(
            Seconds::new(0.25).to_duration(),
            Some(Duration::from_millis(250))
        );
        assert!((Ppm::new(10.0).over(Seconds::new(100.0)).as_micros() - 1000.0).abs() < 1e-9);
        assert_eq!(Ppm::from_ratio(2e-6), Ppm::new(2.0));
        assert_eq!(
            Ppm::new(-700.0).clamp_abs(Ppm::new(500.0)),
            Ppm::new(-500.0)
        );
        assert_eq!(Seconds::new(f64::NAN).as_nanos_i64(), 0);
    }
}
