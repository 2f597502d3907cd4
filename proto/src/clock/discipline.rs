//! The discipline loop over phase and frequency.
//!
//! **Estimator.** A two-state Kalman filter over x = (θ, f): θ is the offset
//! (true time minus our clock, what the combined measurement observes) and f
//! its free drift rate, minus the clock's frequency error left after the
//! current correction. Between measurements the model is
//! θ' = θ + (f − s)·dt with s the slew rate the agent itself commanded (a
//! known input), and f a random walk (process noise `wander`, the oscillator's
//! frequency wander; `phase_noise` adds white frequency noise). Each new
//! sample of a surviving source is a measurement of θ with its own variance
//! R (see [`Measurement`]).
//!
//! **Control.** Certainty equivalence: after each update the whole frequency
//! estimate goes into the base frequency correction (f := 0, clamped to
//! ±`max_frequency_ppm`), and the whole offset estimate is slewed out by
//! adding a slew rate of at most `max_slew_ppm` to the frequency for as long
//! as it takes (at least `min_slew_duration`), after which the base frequency
//! is set again. The filter's gain is the loop's time constant: while the
//! frequency is uncertain it follows the measurements closely, and as it
//! converges it averages over longer and longer spans, down to what the
//! assumed wander allows.
//!
//! **Step, slew, panic.** During the first `step_limit` updates an offset
//! beyond `step_threshold` is stepped (chrony's `makestep 0.1 3`); after
//! that everything is slewed. An offset beyond `panic_threshold` (ntpd's
//! 1000 s) is never acted on: the agent says [`ClockCommand::Panic`] and
//! leaves the clock alone until the offset is back within the threshold.
//!
//! **Outliers.** A measurement whose innovation exceeds `outlier_gate`
//! standard deviations is ignored, unless `outlier_limit` of them come in a
//! row: then the offset is taken to have really moved and the filter's offset
//! uncertainty is opened up to accept it.
//!
//! **Poll interval.** The system poll exponent goes up (by one, after
//! `poll_hold` agreeing updates) when free-running for twice the current
//! interval would add less offset variance than `poll_error_ratio`² times
//! the variance of one round of measurements, and down (after half as many)
//! when one interval adds more than that round's whole variance, or when
//! measurements keep surprising the filter (innovations beyond 3σ, outliers).

use super::clock_trait::{ClockCommand, SyncStatus};
use super::filter::Projection;

mod config;
mod kalman;

pub use config::DisciplineConfig;
use kalman::Kalman;

/// One combined measurement handed to the discipline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Combined offset (seconds, true minus ours).
    pub offset: f64,
    /// The variance to give it in this update (s²).
    pub variance: f64,
    /// The variance of one full round of measurements from every survivor
    /// (s²), which the poll adaptation compares against.
    pub round_variance: f64,
    /// Root distance of the selection (seconds), for the kernel's maxerror.
    pub root_distance: f64,
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// The filter took the measurement (and the clock was corrected unless observing).
    Accepted,
    /// The measurement was an outlier and ignored.
    Outlier,
    /// Beyond the panic threshold: nothing was done to the clock.
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Slew {
    /// Seconds per second, on top of the base frequency.
    rate: f64,
    /// Monotonic time at which it should end.
    end: f64,
}

/// The loop's state.
#[derive(Debug, Clone)]
pub struct Discipline {
    cfg: DisciplineConfig,
    kf: Option<Kalman>,
    /// Time the state was last advanced to.
    t: Option<f64>,
    /// Base frequency correction (s/s).
    base: f64,
    slew: Option<Slew>,
    /// C(t): total correction applied up to `t` (seconds).
    correction: f64,
    updates: u64,
    acted: u32,
    steps: u32,
    last_step: Option<f64>,
    poll: i8,
    jiggle: i32,
    outliers: u32,
    panicked: bool,
    /// The offset the panic threshold refused at the last update.
    refused_offset: Option<f64>,
    last_innovation: f64,
    status: Option<SyncStatus>,
    /// Monotonic times of the last two accepted updates.
    last_update: Option<f64>,
    update_interval: Option<f64>,
    /// The offset estimate at the last accepted update (what was then
    /// corrected), and the running mean square of it.
    last_offset: Option<f64>,
    mean_square_offset: Option<f64>,
}

/// Weight of the newest update in the running RMS offset (about the last
/// 30 updates count).
pub const RMS_OFFSET_WEIGHT: f64 = 1.0 / 32.0;

/// A snapshot of the loop's estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Offset now (seconds, true minus ours) and its standard deviation.
    pub offset: f64,
    pub offset_sd: f64,
    /// Residual frequency error not yet corrected (ppm, positive: the clock
    /// is slow) and its standard deviation.
    pub residual_frequency_ppm: f64,
    pub frequency_sd_ppm: f64,
}

impl Discipline {
    pub fn new(cfg: DisciplineConfig) -> Self {
        Self {
            cfg,
            kf: None,
            t: None,
            base: cfg.initial_frequency_ppm * 1e-6,
            slew: None,
            correction: 0.0,
            updates: 0,
            acted: 0,
            steps: 0,
            last_step: None,
            poll: cfg.min_poll,
            jiggle: 0,
            outliers: 0,
            panicked: false,
            refused_offset: None,
            last_innovation: 0.0,
            status: None,
            last_update: None,
            update_interval: None,
            last_offset: None,
            mean_square_offset: None,
        }
    }

    pub fn config(&self) -> &DisciplineConfig {
        &self.cfg
    }

    fn commanding(&self) -> bool {
        !self.cfg.observe_only && !self.panicked
    }

    /// Bring the state up to `now`; ends a slew that is due. Returns the
    /// commands that requires.
    pub fn advance(&mut self, now: f64) -> Vec<ClockCommand> {
        let mut cmds = Vec::new();
        let Some(t) = self.t else {
            self.t = Some(now);
            return cmds;
        };
        let slew_rate = self.slew.map_or(0.0, |s| s.rate);
        if now > t {
            let dt = now - t;
            if let Some(kf) = self.kf.as_mut() {
                kf.predict(dt, slew_rate, self.cfg.wander, self.cfg.phase_noise);
            }
            self.correction += (self.base + slew_rate) * dt;
            self.t = Some(now);
        }
        if let Some(s) = self.slew {
            if now >= s.end - 1e-9 {
                self.slew = None;
                if self.commanding() {
                    cmds.push(ClockCommand::SetFrequency {
                        ppm: self.base * 1e6,
                    });
                }
            }
        }
        cmds
    }

    /// When [`advance`](Self::advance) must next be called (the end of the
    /// slew in progress).
    pub fn next_deadline(&self) -> Option<f64> {
        self.slew.map(|s| s.end)
    }

    /// How to carry source samples forward to `now`.
    pub fn projection(&self, now: f64) -> Projection {
        let slew_rate = self.slew.map_or(0.0, |s| s.rate);
        let correction = match self.t {
            Some(t) if now > t => self.correction + (self.base + slew_rate) * (now - t),
            _ => self.correction,
        };
        let (f, sd) = match self.kf {
            Some(kf) => (kf.f, kf.p11.sqrt()),
            None => (0.0, self.cfg.initial_frequency_uncertainty_ppm * 1e-6),
        };
        Projection {
            now,
            correction,
            drift: self.base + f,
            drift_uncertainty: sd,
        }
    }

    /// The total correction applied up to `now` (see [`Projection::correction`]).
    pub fn correction_at(&self, now: f64) -> f64 {
        self.projection(now).correction
    }

    /// Take one combined measurement at `now`.
    pub fn update(&mut self, now: f64, m: &Measurement) -> (UpdateKind, Vec<ClockCommand>) {
        let mut cmds = self.advance(now);
        let r = m.variance.max(1e-18);
        let mut nu_norm = 0.0;
        match self.kf.as_mut() {
            None => {
                let sd = self.cfg.initial_frequency_uncertainty_ppm * 1e-6;
                self.kf = Some(Kalman {
                    theta: m.offset,
                    f: 0.0,
                    p00: r,
                    p01: 0.0,
                    p11: sd * sd,
                });
                self.last_innovation = 0.0;
            }
            Some(kf) => {
                let nu = m.offset - kf.theta;
                let s = kf.p00 + r;
                if nu * nu > self.cfg.outlier_gate.powi(2) * s {
                    self.outliers += 1;
                    if self.outliers < self.cfg.outlier_limit {
                        self.adapt_poll(-2);
                        return (UpdateKind::Outlier, cmds);
                    }
                    // It persists: the offset really moved. Accept it.
                    kf.p00 += nu * nu;
                    kf.p01 = 0.0;
                }
                self.outliers = 0;
                nu_norm = (nu * nu / (kf.p00 + r)).sqrt();
                self.last_innovation = kf.update(m.offset, r);
            }
        }
        self.updates += 1;
        let kf = self.kf.expect("initialised above");

        if let Some(limit) = self.cfg.panic_threshold {
            if kf.theta.abs() > limit {
                let first = !self.panicked;
                self.panicked = true;
                self.refused_offset = Some(kf.theta);
                self.slew = None;
                if !self.cfg.observe_only {
                    cmds.push(ClockCommand::Panic {
                        offset: kf.theta,
                        threshold: limit,
                    });
                    if first {
                        let s = SyncStatus::UNSYNCHRONIZED;
                        self.status = Some(s);
                        cmds.push(ClockCommand::SetSyncStatus(s));
                    }
                }
                return (UpdateKind::Panic, cmds);
            }
        }
        self.panicked = false;
        self.refused_offset = None;
        if let Some(prev) = self.last_update {
            self.update_interval = Some(now - prev);
        }
        self.last_update = Some(now);
        self.last_offset = Some(kf.theta);

        // Poll adaptation (done in observe-only mode too: it still measures).
        let t_poll = self.poll_interval();
        let q = self.cfg.wander;
        let growth = |t: f64| {
            (2.0 * t * kf.p01 + t * t * kf.p11 + q * t.powi(3) / 3.0 + self.cfg.phase_noise * t)
                .max(0.0)
        };
        let round = m.round_variance.max(1e-18) * self.cfg.poll_error_ratio.powi(2);
        let mut vote = 0;
        if nu_norm > 3.0 {
            vote = -2;
        } else if growth(2.0 * t_poll) < round {
            vote = 1;
        } else if growth(t_poll) > 16.0 * round {
            vote = -1;
        }
        self.adapt_poll(vote);

        if self.cfg.observe_only {
            self.accumulate_offset(kf.theta);
            return (UpdateKind::Accepted, cmds);
        }
        self.acted += 1;
        let mut kf = kf;

        // Step, only at start-up.
        if self.acted <= self.cfg.step_limit && kf.theta.abs() > self.cfg.step_threshold {
            let offset = kf.theta;
            cmds.push(ClockCommand::Step { offset });
            kf.theta = 0.0;
            self.correction += offset;
            self.steps += 1;
            self.last_step = Some(now);
            self.slew = None;
        } else {
            // Steps are counted apart; the RMS is of what was slewed.
            self.accumulate_offset(kf.theta);
        }

        // Frequency: the whole estimate goes into the base correction.
        let max_f = self.cfg.max_frequency_ppm * 1e-6;
        let new_base = (self.base + kf.f).clamp(-max_f, max_f);
        kf.f -= new_base - self.base;
        self.base = new_base;

        // Phase: slew the whole offset estimate out.
        let amount = kf.theta;
        let max_rate = self.cfg.max_slew_ppm * 1e-6;
        let duration = (amount.abs() / max_rate).max(self.cfg.min_slew_duration);
        let mut rate = amount / duration;
        rate = (self.base + rate).clamp(-max_f, max_f) - self.base;
        self.slew = None;
        if rate != 0.0 && amount != 0.0 {
            self.slew = Some(Slew {
                rate,
                end: now + amount / rate,
            });
        }
        cmds.push(ClockCommand::SetFrequency {
            ppm: (self.base + rate) * 1e6,
        });
        self.kf = Some(kf);

        let status = SyncStatus {
            synchronized: true,
            max_error: m.root_distance + kf.theta.abs(),
            est_error: kf.p00.sqrt(),
        };
        self.status = Some(status);
        cmds.push(ClockCommand::SetSyncStatus(status));
        (UpdateKind::Accepted, cmds)
    }

    fn accumulate_offset(&mut self, offset: f64) {
        let sq = offset * offset;
        self.mean_square_offset = Some(match self.mean_square_offset {
            None => sq,
            Some(m) => m + RMS_OFFSET_WEIGHT * (sq - m),
        });
    }

    fn adapt_poll(&mut self, vote: i32) {
        if vote == 0 {
            return;
        }
        if (vote > 0) != (self.jiggle > 0) && self.jiggle != 0 {
            self.jiggle = 0;
        }
        self.jiggle += vote;
        if self.jiggle >= self.cfg.poll_hold {
            self.poll = (self.poll + 1).min(self.cfg.max_poll);
            self.jiggle = 0;
        } else if self.jiggle <= -((self.cfg.poll_hold + 1) / 2) {
            self.poll = (self.poll - 1).max(self.cfg.min_poll);
            self.jiggle = 0;
        }
    }

    /// The system poll exponent (log2 seconds).
    pub fn poll_exponent(&self) -> i8 {
        self.poll
    }

    /// The system poll interval (seconds).
    pub fn poll_interval(&self) -> f64 {
        2f64.powi(i32::from(self.poll))
    }

    /// The offset and frequency estimates carried forward to `now`, once
    /// there has been a measurement.
    pub fn estimate(&self, now: f64) -> Option<Estimate> {
        let mut kf = self.kf?;
        if let Some(t) = self.t {
            if now > t {
                let slew = self.slew.map_or(0.0, |s| s.rate);
                kf.predict(now - t, slew, self.cfg.wander, self.cfg.phase_noise);
            }
        }
        Some(Estimate {
            offset: kf.theta,
            offset_sd: kf.p00.sqrt(),
            residual_frequency_ppm: kf.f * 1e6,
            frequency_sd_ppm: kf.p11.sqrt() * 1e6,
        })
    }

    /// The base frequency correction in force (ppm), without any slew.
    pub fn frequency_ppm(&self) -> f64 {
        self.base * 1e6
    }

    /// The frequency correction the clock has now, slew included (ppm).
    pub fn commanded_frequency_ppm(&self) -> f64 {
        (self.base + self.slew.map_or(0.0, |s| s.rate)) * 1e6
    }

    /// Updates taken so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Steps commanded so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Monotonic time of the last step.
    pub fn last_step(&self) -> Option<f64> {
        self.last_step
    }

    /// Whether the last update was beyond the panic threshold.
    pub fn panicked(&self) -> bool {
        self.panicked
    }

    /// The offset the panic threshold refused at the last update (also in
    /// observe-only mode, where no command says so), for the shell to report.
    pub fn refused_offset(&self) -> Option<f64> {
        self.refused_offset
    }

    /// The innovation (measurement minus prediction) of the last update (seconds).
    pub fn last_innovation(&self) -> f64 {
        self.last_innovation
    }

    /// Monotonic time of the last accepted update.
    pub fn last_update(&self) -> Option<f64> {
        self.last_update
    }

    /// Time between the last two accepted updates (seconds).
    pub fn update_interval(&self) -> Option<f64> {
        self.update_interval
    }

    /// The offset estimate at the last accepted update (seconds, true minus
    /// ours; in discipline mode what was then stepped or slewed out).
    pub fn last_offset(&self) -> Option<f64> {
        self.last_offset
    }

    /// Running RMS of [`last_offset`](Self::last_offset) over roughly the
    /// last 30 updates, steps left out (seconds).
    pub fn rms_offset(&self) -> Option<f64> {
        self.mean_square_offset.map(f64::sqrt)
    }

    /// The kernel status last sent.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.status
    }

    /// The frequency correction that keeps the clock on time and its
    /// standard deviation (ppm), for a drift file: None in observe-only
    /// mode, while panicking, before the first update, or while the
    /// frequency is known worse than `max_sd_ppm`.
    pub fn frequency_record(&self, now: f64, max_sd_ppm: f64) -> Option<(f64, f64)> {
        if self.cfg.observe_only || self.panicked {
            return None;
        }
        let e = self.estimate(now)?;
        (e.frequency_sd_ppm <= max_sd_ppm).then_some((
            self.base * 1e6 + e.residual_frequency_ppm,
            e.frequency_sd_ppm,
        ))
    }

    /// Stop here (the agent is shutting down): end a slew in progress so the
    /// clock is left at the base frequency, not base plus slew. The part of
    /// the offset not yet slewed out stays. Returns the command that needs.
    pub fn shutdown(&mut self, now: f64) -> Vec<ClockCommand> {
        let mut cmds = self.advance(now);
        if self.slew.take().is_some() && self.commanding() {
            cmds.push(ClockCommand::SetFrequency {
                ppm: self.base * 1e6,
            });
        }
        cmds
    }
}

#[cfg(test)]
mod tests;
