//! A measurement from an accepted answer: offset, delay and the
//! synchronization test computed once, here, for every caller.

use crate::clock::{Sample, SampleError, ServerInfo};
use crate::interleaved::Timestamps;
use crate::ntp_packet::NtpHeader;
use crate::time::Seconds;
use std::net::SocketAddr;

/// Our clock's reading precision with kernel timestamps (seconds).
pub const LOCAL_PRECISION: f64 = 1e-8;

/// Why an authentic answer is not a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unusable {
    /// Leap indicator 3, stratum 0 or 16: the server says it has no time.
    Unsynchronized,
    Sample(SampleError),
}

/// One measurement from an accepted answer; offset, delay and the
/// synchronization test are computed here, once.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub server: SocketAddr,
    pub header: NtpHeader,
    /// The four timestamps measured with (in interleaved mode, the previous exchange's).
    pub timestamps: Timestamps,
    pub interleaved: bool,
    pub authenticated: bool,
    /// What the clock agent gets.
    pub sample: Result<Sample, Unusable>,
}

impl Measurement {
    /// The measurement an accepted answer `header` makes with the timestamps `ts`.
    pub fn new(
        server: SocketAddr,
        header: NtpHeader,
        ts: Timestamps,
        interleaved: bool,
        authenticated: bool,
    ) -> Self {
        let info = ServerInfo::from_header(&header);
        let sample = if info.is_synchronized() {
            Sample::from_timestamps(ts.t1, ts.t2, ts.t3, ts.t4, info, LOCAL_PRECISION)
                .map_err(Unusable::Sample)
        } else {
            Err(Unusable::Unsynchronized)
        };
        Self {
            server,
            header,
            timestamps: ts,
            interleaved,
            authenticated,
            sample,
        }
    }

    /// Server clock minus ours.
    pub fn offset(&self) -> Seconds {
        match &self.sample {
            Ok(s) => Seconds::new(s.offset),
            Err(_) => Seconds::new(self.timestamps.offset_delay().0),
        }
    }

    /// Round trip minus the server's time.
    pub fn delay(&self) -> Seconds {
        match &self.sample {
            Ok(s) => Seconds::new(s.delay),
            Err(_) => Seconds::new(self.timestamps.offset_delay().1),
        }
    }
}
