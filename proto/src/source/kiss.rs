//! What a kiss-o'-death does to a source, NTS or plain alike. Only kisses
//! the response check let through get here: for an NTS source that means
//! authenticated ones, so a forged kiss never costs it its keys or its time.

use crate::ntp_packet::kiss;
use crate::time::MonoTime;
use std::time::Duration;

/// Longest RATE hold, as a multiple of the first.
const MAX_RATE_FACTOR: u32 = 16;

/// What the source does after a kiss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KissAction {
    /// RATE: send nothing before this time.
    Hold(MonoTime),
    /// DENY or RSTR: the server wants no more requests from us.
    Stop,
    /// Any other code: the server answered, but with no time.
    Nothing,
}

/// RATE holds that double while RATE kisses keep coming (up to 16 times the
/// first), and the stop rule for DENY and RSTR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KissPolicy {
    holdoff: Duration,
    rate_in_row: u32,
    last: Option<[u8; 4]>,
}

impl KissPolicy {
    pub fn new(holdoff: Duration) -> Self {
        Self {
            holdoff,
            rate_in_row: 0,
            last: None,
        }
    }

    /// A kiss that counts arrived at `now`.
    pub fn on_kiss(&mut self, code: [u8; 4], now: MonoTime) -> KissAction {
        self.last = Some(code);
        match code {
            kiss::DENY | kiss::RSTR => KissAction::Stop,
            kiss::RATE => {
                let factor = (1u32 << self.rate_in_row.min(4)).min(MAX_RATE_FACTOR);
                self.rate_in_row = self.rate_in_row.saturating_add(1);
                KissAction::Hold(now + self.holdoff.saturating_mul(factor))
            }
            _ => KissAction::Nothing,
        }
    }

    /// A real answer: the next RATE starts from the first hold again.
    pub fn on_answer(&mut self) {
        self.rate_in_row = 0;
    }

    /// The last kiss that counted, for status.
    pub fn last(&self) -> Option<[u8; 4]> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_holds_double_up_to_sixteen_times_and_reset_on_an_answer() {
        let mut k = KissPolicy::new(Duration::from_secs(64));
        let t = |s: f64| MonoTime::from_secs_f64(s);
        let holds: Vec<_> = (0..6)
            .map(|_| match k.on_kiss(kiss::RATE, t(0.0)) {
                KissAction::Hold(at) => at.as_secs_f64(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(holds, [64.0, 128.0, 256.0, 512.0, 1024.0, 1024.0]);
        k.on_answer();
        assert_eq!(k.on_kiss(kiss::RATE, t(10.0)), KissAction::Hold(t(74.0)));
        assert_eq!(k.on_kiss(kiss::DENY, t(11.0)), KissAction::Stop);
        assert_eq!(k.on_kiss(kiss::RSTR, t(11.0)), KissAction::Stop);
        assert_eq!(k.on_kiss(*b"XYZW", t(11.0)), KissAction::Nothing);
        assert_eq!(k.last(), Some(*b"XYZW"));
    }
}
