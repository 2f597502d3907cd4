//! When a time server reports its load and health to a ke-server over key
//! sync, and what the report says: pure, over [`MonoTime`]. The key-sync
//! client only runs the timers and the RPCs.
//!
//! A report goes out at every interval, at once after the first key set from
//! that ke-server (so it can start sending clients here), and at once when
//! health or the refusal of that ke-server's set changes (checked often, so a
//! draining or unsynchronized server stops being handed out within a check).
//! After a report gets through, the keys held from an accepted set are
//! current as of then: the watch stream would have pushed any change.

use crate::time::MonoTime;

/// What the last report said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub healthy: bool,
    /// This ke-server's key set is held but not served.
    pub refused: bool,
}

/// One report's content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub requests_per_second: f64,
    pub standing: Standing,
}

/// The reporting state of one key-sync session.
#[derive(Debug, Clone)]
pub struct ReportSchedule {
    reported: Option<Standing>,
    /// A key set arrived on this session's stream.
    got_set: bool,
    last_count: u64,
    last_at: MonoTime,
}

impl ReportSchedule {
    /// A session starting at `now` with `requests` received so far.
    pub fn new(requests: u64, now: MonoTime) -> Self {
        Self {
            reported: None,
            got_set: false,
            last_count: requests,
            last_at: now,
        }
    }

    /// A key set arrived; `first_ever` when it is the first from this
    /// ke-server since start. Whether to report now.
    pub fn on_key_set(&mut self, first_ever: bool) -> bool {
        self.got_set = true;
        first_ever
    }

    /// At a health check: whether the standing changed since the last report.
    pub fn changed(&self, now: Standing) -> bool {
        self.reported.is_some_and(|r| r != now)
    }

    /// The report to send now, with `requests` received in total so far.
    pub fn report(&mut self, standing: Standing, requests: u64, now: MonoTime) -> Report {
        let secs = now.saturating_since(self.last_at).as_secs_f64().max(1e-3);
        let rps = requests.saturating_sub(self.last_count) as f64 / secs;
        self.reported = Some(standing);
        self.last_count = requests;
        self.last_at = now;
        Report {
            requests_per_second: rps,
            standing,
        }
    }

    /// After `report` got through: whether the keys held are confirmed current.
    pub fn confirms_keys(&self, report: &Report) -> bool {
        self.got_set && !report.standing.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Standing = Standing {
        healthy: true,
        refused: false,
    };

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn reports_load_per_second_and_changes_at_once() {
        let mut s = ReportSchedule::new(100, at(0));
        // Nothing reported yet: a health check has nothing to compare with.
        assert!(!s.changed(OK));
        let r = s.report(OK, 300, at(2000));
        assert!((r.requests_per_second - 100.0).abs() < 1e-9);
        assert!(!s.changed(OK));
        let sick = Standing {
            healthy: false,
            ..OK
        };
        assert!(s.changed(sick));
        let refused = Standing {
            refused: true,
            ..OK
        };
        assert!(s.changed(refused));
        // A counter that went backwards (restart) is no load, not a panic.
        let r = s.report(OK, 5, at(2000));
        assert_eq!(r.requests_per_second, 0.0);
    }

    #[test]
    fn keys_are_confirmed_only_from_an_accepted_set() {
        let mut s = ReportSchedule::new(0, at(0));
        let r = s.report(OK, 0, at(1000));
        assert!(!s.confirms_keys(&r), "no set on this stream yet");
        assert!(s.on_key_set(true));
        assert!(!s.on_key_set(false));
        assert!(s.confirms_keys(&r));
        let refused = s.report(
            Standing {
                refused: true,
                ..OK
            },
            0,
            at(2000),
        );
        assert!(!s.confirms_keys(&refused));
    }
}
