//! The client agent's clock algorithms, sans-IO: measurements from four
//! timestamps ([`sample`]), a per-source clock filter ([`filter`]), source
//! selection that rejects falsetickers and combines the survivors
//! ([`mod@select`]), and a discipline loop over phase and frequency
//! ([`discipline`]), tied together by the [`Agent`] state machine that an I/O
//! shell drives.
//!
//! Nothing here reads a clock, opens a socket or sleeps. The shell passes in
//! the time (a monotonic reading in seconds, on any epoch it likes), hands over
//! each checked response as a [`Sample`], and carries out the
//! [`ClockCommand`]s the agent returns against a [`Clock`]. [`SimulatedClock`]
//! is a `Clock` for tests and [`sim`] a deterministic network simulator that
//! drives the whole agent; `docs/clock-discipline.md` explains the choices and
//! the numbers the simulation measures.
//!
//! A typical shell loop:
//!
//! ```
//! use nts_proto::clock::{Agent, AgentConfig, SimulatedClock, apply_command};
//!
//! let mut clock = SimulatedClock::new(0.0, 0.0, 1);
//! let mut agent = Agent::new(AgentConfig::default());
//! let source = agent.add_source();
//! let now = 0.0; // monotonic seconds
//! if agent.next_poll(source).unwrap() <= now {
//!     agent.poll_sent(source, now);
//!     // ... send the request; when the checked response arrives, build a
//!     // `Sample` from t1..t4 and call `agent.on_sample(source, sample, now)`,
//!     // then apply every returned command:
//! }
//! for cmd in agent.tick(now) {
//!     apply_command(&mut clock, &cmd).unwrap();
//! }
//! // Sleep until the earliest of `agent.next_deadline()` and each source's
//! // `agent.next_poll(id)`.
//! ```

pub mod agent;
pub mod clock_trait;
pub mod discipline;
pub mod drift;
pub mod filter;
pub mod leap;
pub mod sample;
pub mod select;
pub mod sim;
pub mod sim_clock;

pub use agent::{
    Agent, AgentConfig, AgentStatus, PollLoss, SourceState, SourceStatus, Tracking, RECENT_POLLS,
};
pub use clock_trait::{apply_command, Clock, ClockCommand, SyncStatus};
pub use discipline::{Discipline, DisciplineConfig, Estimate, Measurement, UpdateKind};
pub use drift::{DriftParseError, DriftRecord, FrequencyOrigin, InitialFrequency};
pub use filter::{ClockFilter, FilterOutput, Latest, Projection};
pub use leap::{LeapDecision, LeapListError, LeapSecondsList, LeapSource, LeapStatus};
pub use sample::{Sample, SampleError, ServerInfo};
pub use select::{select, Candidate, SelectConfig, SelectError, Selection};
pub use sim_clock::SimulatedClock;

/// RFC 5905's frequency tolerance PHI (15 ppm), the rate at which the
/// dispersion of a measurement grows with its age, in seconds per second.
pub const PHI: f64 = 15e-6;

/// RFC 5905's MAXDISP: the dispersion of a sample that is no good (seconds).
pub const MAX_DISPERSION: f64 = 16.0;

/// RFC 5905's MAXDIST: a source whose root distance exceeds this is not selectable (seconds).
pub const MAX_DISTANCE: f64 = 1.5;

/// Identifies one source (a time server association) inside an [`Agent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(pub u32);

impl core::fmt::Display for SourceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "#{}", self.0)
    }
}
