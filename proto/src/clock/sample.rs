//! One measurement from a client/server exchange (RFC 5905 section 8).
//!
//! From the four timestamps of an exchange (t1 client transmit, t2 server
//! receive, t3 server transmit, t4 client receive):
//!
//! * offset θ = ((t2 − t1) + (t3 − t4)) / 2: the server's clock minus ours,
//!   i.e. the correction our clock needs;
//! * delay δ = (t4 − t1) − (t3 − t2), never less than the local precision;
//! * dispersion ε = ρ_local + ρ_server + PHI · (t4 − t1): the error bound the
//!   reading itself adds (clock resolutions, and frequency tolerance over the
//!   round trip).
//!
//! Whatever the path asymmetry, the true offset lies in θ ± δ/2 when the server
//! tells the truth: that is what makes intersection-based selection work.

use super::PHI;
use crate::ntp_packet::{LeapIndicator, NtpHeader, NtpTimestamp};
use thiserror::Error;

/// What the server said about itself in its response header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerInfo {
    pub leap: LeapIndicator,
    pub stratum: u8,
    /// The server clock's precision, in seconds.
    pub precision: f64,
    /// Round-trip delay from the server to its primary reference, in seconds.
    pub root_delay: f64,
    /// The server's own dispersion to its primary reference, in seconds.
    pub root_dispersion: f64,
    /// Its reference id (for stratum 1 an ASCII source name, else usually
    /// its own server's IPv4 address or an address hash).
    pub reference_id: [u8; 4],
    /// When the server's clock was last set or corrected.
    pub reference_time: NtpTimestamp,
}

impl ServerInfo {
    /// The fields of a (checked) server response header.
    pub fn from_header(h: &NtpHeader) -> Self {
        Self {
            leap: h.leap,
            stratum: h.stratum,
            precision: precision_seconds(h.precision),
            root_delay: h.root_delay.to_seconds(),
            root_dispersion: h.root_dispersion.to_seconds(),
            reference_id: h.reference_id,
            reference_time: h.reference_timestamp,
        }
    }

    /// Whether a source reporting this may take part in selection: a stratum
    /// between 1 and 15 and a leap indicator other than "unsynchronized".
    pub fn is_synchronized(&self) -> bool {
        (1..16).contains(&self.stratum) && self.leap != LeapIndicator::Unsynchronized
    }
}

impl Default for ServerInfo {
    fn default() -> Self {
        Self {
            leap: LeapIndicator::NoWarning,
            stratum: 1,
            precision: 1e-9,
            root_delay: 0.0,
            root_dispersion: 0.0,
            reference_id: [0; 4],
            reference_time: NtpTimestamp::ZERO,
        }
    }
}

/// A precision field (log2 seconds) as seconds, clamped to a sane range.
pub fn precision_seconds(log2: i8) -> f64 {
    2f64.powi(i32::from(log2.clamp(-32, 0)))
}

/// Why four timestamps do not make a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SampleError {
    #[error("the response arrived before the request left (t4 < t1)")]
    NegativeRoundTrip,
    #[error("the server sent its answer before it received the request (t3 < t2)")]
    NegativeServerTime,
    #[error("the server held the request longer than the whole round trip")]
    ServerTimeExceedsRoundTrip,
    #[error("the round trip is longer than a measurement may take")]
    RoundTripTooLong,
}

/// Longest round trip accepted for a measurement (seconds).
pub const MAX_ROUND_TRIP: f64 = 16.0;

/// One measurement of one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// θ: the server's clock minus ours, in seconds (positive: we are behind).
    pub offset: f64,
    /// δ: the round-trip delay less the server's processing time, in seconds.
    pub delay: f64,
    /// ε: the dispersion of this reading, in seconds.
    pub dispersion: f64,
    /// t4 − t1 on our clock, in seconds: how long the exchange took.
    pub round_trip: f64,
    pub server: ServerInfo,
    /// t4: our clock's reading when the response arrived, if known. With the
    /// offset it tells the agent the UTC date, which leap seconds need.
    pub received: Option<NtpTimestamp>,
}

impl Sample {
    /// Measure from the four timestamps. `local_precision` is our clock's
    /// reading precision in seconds (for example 1e-9 with kernel timestamps).
    pub fn from_timestamps(
        t1: NtpTimestamp,
        t2: NtpTimestamp,
        t3: NtpTimestamp,
        t4: NtpTimestamp,
        server: ServerInfo,
        local_precision: f64,
    ) -> Result<Self, SampleError> {
        let round_trip = t4.diff_seconds(t1);
        let server_time = t3.diff_seconds(t2);
        if round_trip < 0.0 {
            return Err(SampleError::NegativeRoundTrip);
        }
        if round_trip > MAX_ROUND_TRIP {
            return Err(SampleError::RoundTripTooLong);
        }
        if server_time < 0.0 {
            return Err(SampleError::NegativeServerTime);
        }
        // A server that claims to have held the packet longer than the round
        // trip lies, or the clocks moved under us; allow the two clocks'
        // frequency errors (500 ppm each) to explain a little of it.
        if server_time > round_trip * (1.0 + 1e-3) + local_precision + server.precision {
            return Err(SampleError::ServerTimeExceedsRoundTrip);
        }
        let offset = (t2.diff_seconds(t1) + t3.diff_seconds(t4)) / 2.0;
        let mut s = Self::new(
            offset,
            round_trip - server_time,
            round_trip,
            server,
            local_precision,
        );
        s.received = Some(t4);
        Ok(s)
    }

    /// A measurement from an already computed offset and delay (for tests and
    /// for shells that timestamp in another format).
    pub fn new(
        offset: f64,
        delay: f64,
        round_trip: f64,
        server: ServerInfo,
        local_precision: f64,
    ) -> Self {
        let precision = local_precision.max(1e-9);
        let delay = delay.max(precision);
        let dispersion = precision + server.precision + PHI * round_trip.max(0.0);
        Self {
            offset,
            delay,
            dispersion,
            round_trip: round_trip.max(0.0),
            server,
            received: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntp_packet::NtpShort;

    fn ts(secs: f64) -> NtpTimestamp {
        let base = NtpTimestamp::from_unix(1_700_000_000, 0);
        NtpTimestamp(base.0.wrapping_add((secs * 4_294_967_296.0) as i64 as u64))
    }

    #[test]
    fn offset_delay_dispersion_from_timestamps() {
        // Client 0.25 s behind the server; 10 ms each way; 1 ms in the server.
        let s = Sample::from_timestamps(
            ts(0.0),
            ts(0.26),
            ts(0.261),
            ts(0.021),
            ServerInfo::default(),
            1e-6,
        )
        .unwrap();
        assert!((s.offset - 0.25).abs() < 1e-9, "{}", s.offset);
        assert!((s.delay - 0.020).abs() < 1e-9, "{}", s.delay);
        assert!((s.round_trip - 0.021).abs() < 1e-9);
        assert_eq!(s.received, Some(ts(0.021)));
        let want = 1e-6 + 1e-9 + PHI * 0.021;
        assert!((s.dispersion - want).abs() < 1e-12);
    }

    #[test]
    fn asymmetry_stays_within_half_the_delay() {
        // True offset 0; 30 ms out, 2 ms back: the measured offset is wrong by
        // 14 ms, less than delay/2 = 16 ms.
        let s = Sample::from_timestamps(
            ts(0.0),
            ts(0.030),
            ts(0.030),
            ts(0.032),
            ServerInfo::default(),
            1e-6,
        )
        .unwrap();
        assert!((s.offset - 0.014).abs() < 1e-9);
        assert!(s.offset.abs() <= s.delay / 2.0);
    }

    #[test]
    fn bad_timestamps_are_refused() {
        let info = ServerInfo::default();
        assert_eq!(
            Sample::from_timestamps(ts(1.0), ts(0.0), ts(0.0), ts(0.5), info, 1e-6),
            Err(SampleError::NegativeRoundTrip)
        );
        assert_eq!(
            Sample::from_timestamps(ts(0.0), ts(0.2), ts(0.1), ts(0.5), info, 1e-6),
            Err(SampleError::NegativeServerTime)
        );
        assert_eq!(
            Sample::from_timestamps(ts(0.0), ts(0.0), ts(2.0), ts(0.5), info, 1e-6),
            Err(SampleError::ServerTimeExceedsRoundTrip)
        );
        assert_eq!(
            Sample::from_timestamps(ts(0.0), ts(0.0), ts(0.0), ts(100.0), info, 1e-6),
            Err(SampleError::RoundTripTooLong)
        );
    }

    #[test]
    fn delay_is_floored_at_precision() {
        let s = Sample::new(0.0, -1e-7, 0.0, ServerInfo::default(), 1e-6);
        assert_eq!(s.delay, 1e-6);
    }

    #[test]
    fn server_info_from_header() {
        let h = NtpHeader {
            leap: LeapIndicator::Unsynchronized,
            stratum: 2,
            precision: -20,
            root_delay: NtpShort::from_seconds(0.5),
            root_dispersion: NtpShort::from_seconds(0.25),
            ..Default::default()
        };
        let i = ServerInfo::from_header(&h);
        assert_eq!(i.stratum, 2);
        assert_eq!(i.precision, 2f64.powi(-20));
        assert_eq!(i.root_delay, 0.5);
        assert_eq!(i.root_dispersion, 0.25);
        assert!(!i.is_synchronized());
        assert!(ServerInfo::default().is_synchronized());
    }
}
