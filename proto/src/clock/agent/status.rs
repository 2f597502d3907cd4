//! What the agent reports about its sources and its synchronization.

use super::super::filter::FilterOutput;
use super::super::leap::{LeapDecision, LeapStatus};
use super::super::select::{SelectError, Selection};
use super::super::SourceId;

/// Where a source stands after the last selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// No measurement yet (or none since it was reset).
    NoData,
    /// Not offered to selection: unreachable, unsynchronized server, or too distant.
    Unselectable,
    /// Its interval does not meet the majority's.
    Falseticker,
    /// Agrees, but clustering left it out of the combination.
    Outlier,
    /// Combined.
    Survivor,
    /// Combined, and the one with the least root distance.
    SystemPeer,
}

/// One source, for a status view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceStatus {
    pub id: SourceId,
    pub state: SourceState,
    /// Reachability register: one bit per poll, newest lowest.
    pub reach: u8,
    /// The filter's view now, if it has data.
    pub filter: Option<FilterOutput>,
    /// Its poll interval now (seconds).
    pub poll_interval: f64,
    pub polls: u32,
    /// Polls without an answer, recent and since the source was added.
    pub loss: PollLoss,
}

/// How many of a source's polls went unanswered (like the reach register
/// and `chronyc sourcestats`). A poll counts once answered or once the next
/// poll has been sent, so the request in flight is never counted as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollLoss {
    /// Of the last (at most [`RECENT_POLLS`]) counted polls: how many, and
    /// how many got no answer.
    pub recent_polls: u32,
    pub recent_lost: u32,
    /// Since the source was added.
    pub polls: u64,
    pub lost: u64,
}

/// Polls the recent loss share is taken over.
pub const RECENT_POLLS: u32 = 16;

impl PollLoss {
    /// Share of the recent polls without an answer (0 to 1), once there is one.
    pub fn recent_share(&self) -> Option<f64> {
        (self.recent_polls > 0).then(|| f64::from(self.recent_lost) / f64::from(self.recent_polls))
    }

    /// Share of all counted polls without an answer (0 to 1), once there is one.
    pub fn overall_share(&self) -> Option<f64> {
        (self.polls > 0).then(|| self.lost as f64 / self.polls as f64)
    }
}

/// The agent's view of synchronization.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    /// The discipline has taken at least one update and is not panicking.
    pub synchronized: bool,
    pub observe_only: bool,
    pub panicked: bool,
    /// While panicking: the offset the panic threshold refused.
    pub refused_offset: Option<f64>,
    /// Estimated offset now (seconds, true minus ours) and its standard deviation.
    pub offset: Option<f64>,
    pub offset_sd: Option<f64>,
    /// Base frequency correction in force (ppm).
    pub frequency_ppm: f64,
    /// Frequency error not yet corrected (ppm) and the frequency's standard deviation.
    pub residual_frequency_ppm: Option<f64>,
    /// The frequency correction the clock needs by the estimate (ppm): the
    /// base plus the residual. In observe mode, where nothing is corrected,
    /// this is the clock's own drift with its sign turned (what discipline
    /// mode would set).
    pub estimated_frequency_ppm: Option<f64>,
    pub frequency_sd_ppm: Option<f64>,
    pub poll_exponent: i8,
    pub updates: u64,
    pub steps: u32,
    /// The last selection, or why there was none.
    pub selection: Result<Selection, SelectError>,
    /// The leap second situation: announced for the end of this month, by
    /// whom, and what the kernel should be told now (reported in observe
    /// mode, commanded in discipline mode).
    pub leap: LeapDecision,
    /// The leap flag last commanded to the kernel (always `None` in observe mode).
    pub kernel_leap: LeapStatus,
    /// The tracking view (like `chronyc tracking`), once there is a selection.
    pub tracking: Option<Tracking>,
}

/// What `chronyc tracking` shows, from the last selection and the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracking {
    /// The system peer: the survivor of least root distance.
    pub reference: SourceId,
    /// Its server's stratum, reference id and reference time.
    pub reference_stratum: u8,
    pub reference_id: [u8; 4],
    pub reference_time: crate::ntp_packet::NtpTimestamp,
    /// Our stratum: the reference's plus one.
    pub stratum: u8,
    /// Round-trip delay to the primary reference through the system peer:
    /// its server's root delay plus our delay to it (seconds).
    pub root_delay: f64,
    /// Dispersion to the primary reference: its server's root dispersion
    /// plus the peer's filter dispersion (aged to now) and jitter (seconds).
    pub root_dispersion: f64,
    /// Root distance of the selection (seconds), the kernel's maxerror.
    pub root_distance: f64,
    /// System jitter of the selection (seconds).
    pub jitter: f64,
    /// The offset at the last clock update (seconds, true minus ours) and
    /// the running RMS of those.
    pub last_offset: Option<f64>,
    pub rms_offset: Option<f64>,
    /// Time between the last two clock updates (seconds).
    pub update_interval: Option<f64>,
    /// Monotonic time of the last clock update, and its age now (seconds).
    pub last_update: Option<f64>,
    pub last_update_age: Option<f64>,
    /// Age of the system peer's newest sample (seconds).
    pub last_sample_age: Option<f64>,
}
