//! The agent: per-source filters, selection and the discipline, as one state
//! machine that an I/O shell drives.
//!
//! The shell owns the sockets, the timers and the clock. It tells the agent
//! when it sent a poll ([`Agent::poll_sent`]) and hands it every checked
//! response ([`Agent::on_sample`]); it calls [`Agent::tick`] at
//! [`Agent::next_deadline`]; and it carries out the [`ClockCommand`]s these
//! return. Every time argument is the same monotonic clock in seconds (for
//! example CLOCK_MONOTONIC, which is slewed with the system clock but never
//! stepped); the epoch does not matter.
//!
//! On each sample: the source's filter takes it; every source with data and
//! a synchronized server is offered to selection (falsetickers out,
//! clustering, combination into the system offset); if the source that just
//! answered is among the survivors, its new sample goes to the discipline's
//! Kalman filter, weighted by the source's noise and the sample's excess
//! delay. Feeding survivors' samples one by one into the filter is itself the
//! combination, with inverse-variance weights, and uses each sample once.

use super::clock_trait::ClockCommand;
use super::discipline::{Discipline, DisciplineConfig, Measurement};
use super::drift::{self, DriftRecord};
use super::filter::{ClockFilter, FilterOutput};
use super::leap::{self, LeapDecision, LeapSecondsList, LeapStatus};
use super::sample::Sample;
use super::select::{select, Candidate, SelectConfig, SelectError, Selection};
use super::{SourceId, PHI};

mod status;

pub use status::{AgentStatus, PollLoss, SourceState, SourceStatus, Tracking, RECENT_POLLS};

/// Agent parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentConfig {
    /// Selection: minimum agreeing sources, clustering floor, maximum distance.
    pub select: SelectConfig,
    pub discipline: DisciplineConfig,
    /// Dispersion growth rate for root distances (RFC 5905 PHI).
    pub phi: f64,
    /// Polls at start (and after [`Agent::reset_source`]) sent `burst_interval` apart.
    pub burst: u32,
    pub burst_interval: f64,
    /// Floor of a source's assumed measurement noise (seconds, one standard deviation).
    pub min_noise: f64,
    /// How much a sample's delay above its source's minimum counts against
    /// it: its variance is noise² + (weight · excess delay / 2)².
    pub excess_delay_weight: f64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            select: SelectConfig::default(),
            discipline: DisciplineConfig::default(),
            phi: PHI,
            burst: 4,
            burst_interval: 2.0,
            min_noise: 1e-7,
            excess_delay_weight: 1.0,
        }
    }
}

/// NTP timestamps carry no era: the agent reads them in the era nearest
/// this time (2025-01-01), right until 2093.
pub const NTP_ERA_PIVOT_UNIX: u64 = 1_735_689_600;

#[derive(Debug, Clone)]
struct Source {
    id: SourceId,
    filter: ClockFilter,
    reach: u8,
    polls: u32,
    last_poll: Option<f64>,
    state: SourceState,
    /// Answered polls, one bit per poll, newest lowest (kept across resets:
    /// loss is the path's, not the samples').
    answers: u64,
    /// Polls sent and polls answered since the source was added.
    sent: u64,
    answered: u64,
}

impl Source {
    fn poll_loss(&self) -> PollLoss {
        // The newest poll counts only once answered: it may be in flight.
        let newest_open = self.sent > 0 && self.answers & 1 == 0;
        let counted = self.sent - u64::from(newest_open);
        let answered = self.answered.min(counted);
        let recent = counted.min(u64::from(RECENT_POLLS)) as u32;
        let shift = u32::from(newest_open);
        let mask = if recent == 0 {
            0
        } else {
            u64::MAX >> (64 - recent)
        };
        let recent_answered = ((self.answers >> shift) & mask).count_ones();
        PollLoss {
            recent_polls: recent,
            recent_lost: recent - recent_answered.min(recent),
            polls: counted,
            lost: counted - answered,
        }
    }
}

/// The client agent's clock state machine.
#[derive(Debug, Clone)]
pub struct Agent {
    cfg: AgentConfig,
    sources: Vec<Source>,
    next_id: u32,
    discipline: Discipline,
    selection: Result<Selection, SelectError>,
    leap_list: Option<LeapSecondsList>,
    leap: LeapDecision,
    kernel_leap: LeapStatus,
    /// A monotonic time and the true UTC (Unix seconds) then, from the last
    /// sample: the date, for leap seconds.
    utc_ref: Option<(f64, f64)>,
    /// Monotonic time of the last leap second's midnight, once passed.
    leap_mono: Option<f64>,
    /// The latest time the shell passed in.
    last_now: f64,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Self {
        Self {
            cfg,
            sources: Vec::new(),
            next_id: 0,
            discipline: Discipline::new(cfg.discipline),
            selection: Err(SelectError::NoCandidates),
            leap_list: None,
            leap: LeapDecision::default(),
            kernel_leap: LeapStatus::None,
            utc_ref: None,
            leap_mono: None,
            last_now: f64::NEG_INFINITY,
        }
    }

    /// Use a verified `leap-seconds.list`: while it has not expired, it
    /// decides whether a leap second falls at the end of a month, and the
    /// sources' announcements are ignored. None goes back to the sources.
    pub fn set_leap_seconds_list(&mut self, list: Option<LeapSecondsList>) {
        self.leap_list = list;
    }

    /// The list in use, if any.
    pub fn leap_seconds_list(&self) -> Option<&LeapSecondsList> {
        self.leap_list.as_ref()
    }

    /// True UTC (Unix seconds) at monotonic `now`, once a sample has told
    /// the agent the date.
    pub fn utc_at(&self, now: f64) -> Option<f64> {
        self.utc_ref.map(|(m, u)| u + (now - m))
    }

    fn mono_of_utc(&self, unix: f64) -> Option<f64> {
        self.utc_ref.map(|(m, u)| m + (unix - u))
    }

    /// Re-decide the leap status at `now` and return the command for the
    /// kernel if it changed (discipline mode, synchronized, not panicking).
    fn update_leap(&mut self, now: f64) -> Vec<ClockCommand> {
        let Some(utc) = self.utc_at(now) else {
            return Vec::new();
        };
        let indicators: Vec<_> = match &self.selection {
            Ok(sel) => sel
                .survivors
                .iter()
                .filter_map(|id| self.source(*id))
                .filter_map(|s| s.filter.last_server().map(|i| i.leap))
                .collect(),
            Err(_) => Vec::new(),
        };
        let vote = leap::vote(&indicators);
        let armed = self.leap.status != LeapStatus::None;
        let d = leap::decide(utc, self.leap_list.as_ref(), vote, armed);
        // Where the leap falls on the monotonic clock, for dropping samples
        // in flight across it: refined while it is ahead (after it the
        // date's reference has leapt too and would place it a second off).
        if let (LeapStatus::Insert | LeapStatus::Delete, Some(at)) = (d.status, d.at_unix) {
            if utc < at as f64 {
                self.leap_mono = self.mono_of_utc(at as f64);
            }
        }
        self.leap = d;
        let commanding = !self.discipline.config().observe_only
            && !self.discipline.panicked()
            && self.discipline.updates() > 0;
        if commanding && d.status != self.kernel_leap {
            self.kernel_leap = d.status;
            return vec![ClockCommand::SetLeap(d.status)];
        }
        Vec::new()
    }

    /// When the leap decision next changes by the clock alone: the start of
    /// the last day of the month (flag up) or just after its midnight (flag
    /// down); only ever in the future.
    fn leap_deadline(&self, now: f64) -> Option<f64> {
        let at = self.leap.at_unix?;
        let up = (leap::arm_time(at) as f64) + leap::CLEAR_DELAY + 1.0;
        let down = at as f64 + leap::CLEAR_DELAY + 0.5;
        [up, down]
            .into_iter()
            .filter_map(|u| self.mono_of_utc(u))
            .find(|&m| m > now)
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// Start tracking a new source; its first polls are a burst.
    pub fn add_source(&mut self) -> SourceId {
        let id = SourceId(self.next_id);
        self.next_id += 1;
        self.sources.push(Source {
            id,
            filter: ClockFilter::new(self.cfg.phi),
            reach: 0,
            polls: 0,
            last_poll: None,
            state: SourceState::NoData,
            answers: 0,
            sent: 0,
            answered: 0,
        });
        id
    }

    /// Stop tracking a source. Returns whether it existed.
    pub fn remove_source(&mut self, id: SourceId) -> bool {
        let before = self.sources.len();
        self.sources.retain(|s| s.id != id);
        before != self.sources.len()
    }

    /// Forget a source's samples and burst again (after a new NTS-KE, a new
    /// address, or a kiss-o'-death).
    pub fn reset_source(&mut self, id: SourceId) {
        if let Some(s) = self.source_mut(id) {
            s.filter.clear();
            s.reach = 0;
            s.polls = 0;
            s.state = SourceState::NoData;
        }
    }

    /// The ids of every source.
    pub fn source_ids(&self) -> Vec<SourceId> {
        self.sources.iter().map(|s| s.id).collect()
    }

    fn source(&self, id: SourceId) -> Option<&Source> {
        self.sources.iter().find(|s| s.id == id)
    }

    fn source_mut(&mut self, id: SourceId) -> Option<&mut Source> {
        self.sources.iter_mut().find(|s| s.id == id)
    }

    /// The interval between this source's polls (seconds): `burst_interval`
    /// during its burst, then the system poll interval.
    pub fn poll_interval(&self, id: SourceId) -> Option<f64> {
        let s = self.source(id)?;
        Some(if s.polls < self.cfg.burst {
            self.cfg.burst_interval
        } else {
            self.discipline.poll_interval()
        })
    }

    /// When to poll this source next (monotonic seconds);
    /// `f64::NEG_INFINITY` if it has never been polled (poll now).
    pub fn next_poll(&self, id: SourceId) -> Option<f64> {
        let s = self.source(id)?;
        let interval = self.poll_interval(id)?;
        Some(s.last_poll.map_or(f64::NEG_INFINITY, |t| t + interval))
    }

    /// The shell sent a poll to this source at `now`.
    pub fn poll_sent(&mut self, id: SourceId, now: f64) {
        if let Some(s) = self.source_mut(id) {
            s.reach <<= 1;
            s.answers <<= 1;
            s.sent += 1;
            s.polls = s.polls.saturating_add(1);
            s.last_poll = Some(now);
        }
    }

    /// A checked response from `id` arrived at `now` and measured `sample`.
    pub fn on_sample(&mut self, id: SourceId, sample: Sample, now: f64) -> Vec<ClockCommand> {
        // The poll was answered, whatever becomes of the sample.
        if let Some(src) = self.source_mut(id) {
            if src.sent > 0 && src.answers & 1 == 0 {
                src.answers |= 1;
                src.answered += 1;
            }
        }
        // A request in flight across a step measured garbage.
        if let Some(step) = self.discipline.last_step() {
            if now - sample.round_trip <= step {
                return Vec::new();
            }
        }
        // So did one in flight across a leap second (clocks on both ends
        // leap, not necessarily at the same instant).
        if let Some(leap) = self.leap_mono {
            if now - sample.round_trip - 1.0 <= leap && leap <= now + 1.0 {
                return Vec::new();
            }
        }
        let mut cmds = self.discipline.advance(now);
        let p = self.discipline.projection(now);
        let half = sample.round_trip / 2.0;
        let c_mid = p.correction - self.discipline.commanded_frequency_ppm() * 1e-6 * half;
        let Some(src) = self.source_mut(id) else {
            return cmds;
        };
        src.reach |= 1;
        src.filter.add(&sample, now - half, c_mid);
        cmds.extend(self.select_and_update(now, id));
        // The date: our reading at arrival plus the estimated offset (the
        // combined one, so a lying source cannot move it).
        if let (Some(t4), Some(e)) = (sample.received, self.discipline.estimate(now)) {
            self.utc_ref = Some((now, t4.to_unix_f64(NTP_ERA_PIVOT_UNIX) + e.offset));
        }
        cmds.extend(self.update_leap(now));
        self.last_now = self.last_now.max(now);
        cmds
    }

    fn select_and_update(&mut self, now: f64, trigger: SourceId) -> Vec<ClockCommand> {
        let p = self.discipline.projection(now);
        let mut outputs: Vec<(SourceId, FilterOutput)> = Vec::with_capacity(self.sources.len());
        let mut candidates = Vec::with_capacity(self.sources.len());
        for s in self.sources.iter_mut() {
            let Some(o) = s.filter.output(&p) else {
                s.state = SourceState::NoData;
                continue;
            };
            s.state = SourceState::Unselectable;
            if s.reach != 0 && o.server.is_synchronized() {
                candidates.push(Candidate {
                    id: s.id,
                    offset: o.offset,
                    root_distance: o.root_distance,
                    jitter: o.jitter,
                });
            }
            outputs.push((s.id, o));
        }
        self.selection = select(&candidates, &self.cfg.select);
        let Ok(sel) = &self.selection else {
            return Vec::new();
        };
        for s in self.sources.iter_mut() {
            s.state = if sel.system_peer == s.id {
                SourceState::SystemPeer
            } else if sel.survivors.contains(&s.id) {
                SourceState::Survivor
            } else if sel.truechimers.contains(&s.id) {
                SourceState::Outlier
            } else if sel.falsetickers.contains(&s.id) {
                SourceState::Falseticker
            } else {
                s.state
            };
        }

        if !sel.survivors.contains(&trigger) {
            return Vec::new();
        }
        let min_noise = self.cfg.min_noise;
        let excess_weight = self.cfg.excess_delay_weight;
        let noise = |o: &FilterOutput| {
            // The spread of the register's offsets; until a source has a few
            // samples that means little, and delay/4 is assumed at least.
            let mut sd = o.noise.max(min_noise);
            if o.samples < 4 {
                sd = sd.max(o.delay / 4.0);
            }
            sd
        };
        let out = |id: SourceId| outputs.iter().find(|(i, _)| *i == id).map(|(_, o)| *o);
        let round_variance: f64 = sel
            .survivors
            .iter()
            .zip(&sel.weights)
            .filter_map(|(id, w)| out(*id).map(|o| (w * noise(&o)).powi(2)))
            .sum();
        let Some(trigger_out) = out(trigger) else {
            return Vec::new();
        };
        let root_distance = sel.root_distance;
        let Some(src) = self.source_mut(trigger) else {
            return Vec::new();
        };
        let Some(latest) = src.filter.latest(&p).filter(|l| !l.used) else {
            return Vec::new();
        };
        src.filter.mark_latest_used();
        // The new sample, weighted by its source's noise and by how much
        // more delay it met than the best sample in the register.
        let m = Measurement {
            offset: latest.offset,
            variance: noise(&trigger_out).powi(2)
                + (excess_weight * latest.excess_delay / 2.0).powi(2),
            round_variance,
            root_distance,
        };
        let (_, cmds) = self.discipline.update(now, &m);
        cmds
    }

    /// Let time pass: ends a slew when due. Call at [`next_deadline`](Self::next_deadline).
    pub fn tick(&mut self, now: f64) -> Vec<ClockCommand> {
        let mut cmds = self.discipline.advance(now);
        cmds.extend(self.update_leap(now));
        self.last_now = self.last_now.max(now);
        cmds
    }

    /// When [`tick`](Self::tick) must next be called (monotonic seconds), if
    /// at all: the end of a slew, or a leap second's flag going up or down.
    pub fn next_deadline(&self) -> Option<f64> {
        let slew = self.discipline.next_deadline();
        let leap = self.leap_deadline(self.last_now);
        match (slew, leap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What to write to the drift file now, if the frequency is known well
    /// enough (see [`drift::MAX_RECORDED_UNCERTAINTY_PPM`]); None in
    /// observe-only mode. `written_unix` is left for the shell to fill.
    pub fn drift_record(&self, now: f64) -> Option<DriftRecord> {
        let (ppm, sd) = self
            .discipline
            .frequency_record(now, drift::MAX_RECORDED_UNCERTAINTY_PPM)?;
        Some(DriftRecord {
            frequency_ppm: ppm,
            uncertainty_ppm: sd,
            written_unix: None,
        })
    }

    /// The agent is stopping: end a slew in progress, so the kernel keeps the
    /// base frequency (which the next start reads back). Apply the commands
    /// before exiting, then write the drift file.
    pub fn shutdown(&mut self, now: f64) -> Vec<ClockCommand> {
        self.discipline.shutdown(now)
    }

    /// The last selection, or why there was none.
    pub fn selection(&self) -> Result<&Selection, SelectError> {
        self.selection.as_ref().map_err(|e| *e)
    }

    /// The discipline loop (estimates, poll interval, step count).
    pub fn discipline(&self) -> &Discipline {
        &self.discipline
    }

    /// Base frequency correction in force (ppm).
    pub fn frequency_ppm(&self) -> f64 {
        self.discipline.frequency_ppm()
    }

    /// One source's status at `now`.
    pub fn source_status(&self, id: SourceId, now: f64) -> Option<SourceStatus> {
        let s = self.source(id)?;
        let p = self.discipline.projection(now);
        Some(SourceStatus {
            id,
            state: s.state,
            reach: s.reach,
            filter: s.filter.output(&p),
            poll_interval: self.poll_interval(id)?,
            polls: s.polls,
            loss: s.poll_loss(),
        })
    }

    /// Every source's status at `now`.
    pub fn sources(&self, now: f64) -> Vec<SourceStatus> {
        self.sources
            .iter()
            .filter_map(|s| self.source_status(s.id, now))
            .collect()
    }

    /// The tracking view at `now`, if there is a selection.
    pub fn tracking(&self, now: f64) -> Option<Tracking> {
        let sel = self.selection.as_ref().ok()?;
        let peer = self.source(sel.system_peer)?;
        let p = self.discipline.projection(now);
        let o = peer.filter.output(&p)?;
        let d = &self.discipline;
        let latest = peer.filter.latest(&p);
        Some(Tracking {
            reference: sel.system_peer,
            reference_stratum: o.server.stratum,
            reference_id: o.server.reference_id,
            reference_time: o.server.reference_time,
            stratum: o.server.stratum.saturating_add(1).min(16),
            root_delay: o.server.root_delay + o.delay,
            root_dispersion: o.server.root_dispersion + o.dispersion + o.jitter,
            root_distance: sel.root_distance,
            jitter: sel.jitter,
            last_offset: d.last_offset(),
            rms_offset: d.rms_offset(),
            update_interval: d.update_interval(),
            last_update: d.last_update(),
            last_update_age: d.last_update().map(|t| now - t),
            last_sample_age: latest.map(|l| now - l.time),
        })
    }

    /// The agent's status at `now`.
    pub fn status(&self, now: f64) -> AgentStatus {
        let d = &self.discipline;
        let e = d.estimate(now);
        AgentStatus {
            synchronized: e.is_some() && !d.panicked(),
            observe_only: d.config().observe_only,
            panicked: d.panicked(),
            refused_offset: d.refused_offset(),
            offset: e.map(|e| e.offset),
            offset_sd: e.map(|e| e.offset_sd),
            frequency_ppm: d.frequency_ppm(),
            residual_frequency_ppm: e.map(|e| e.residual_frequency_ppm),
            estimated_frequency_ppm: e.map(|e| d.frequency_ppm() + e.residual_frequency_ppm),
            frequency_sd_ppm: e.map(|e| e.frequency_sd_ppm),
            poll_exponent: d.poll_exponent(),
            updates: d.updates(),
            steps: d.steps(),
            selection: self.selection.clone(),
            leap: self.leap,
            kernel_leap: self.kernel_leap,
            tracking: self.tracking(now),
        }
    }
}

#[cfg(test)]
mod tests;
