//! The per-source clock filter: RFC 5905 section 10's eight-stage shift
//! register, with two changes that matter at microsecond accuracy.
//!
//! 1. **Samples are carried forward to the present.** Every stored offset is
//!    corrected for what the agent has done to the clock since it was measured
//!    (steps, slews and frequency changes: the "correction" C(t), the total
//!    adjustment applied up to monotonic time t) and for the clock's estimated
//!    free-running drift. chrony does the same to its sample sets. Without it a
//!    register full of samples taken before a 0.5 s step, or while a 100 ppm
//!    error was being learnt, would be garbage.
//!
//! 2. **The best sample is the one with the smallest error bound, with aging
//!    at the real frequency uncertainty.** RFC 5905 takes the sample of least
//!    delay. Its offset error is bounded by delay/2, but carrying it forward
//!    adds an error of (frequency error × age). We pick the minimum of
//!    `delay + 2 · drift_uncertainty · age`, where `drift_uncertainty` comes
//!    from the discipline's frequency estimate: at start-up (hundreds of ppm
//!    unknown) that is simply the newest sample; once the frequency is known
//!    to a few ppb it is the least-delayed sample of the last eight, as in the
//!    RFC.
//!
//! The chosen sample gives the source's offset for selection and status.
//! The discipline instead takes every new sample once ([`ClockFilter::latest`]),
//! with its *excess delay* over the register's minimum: the agent weights
//! it by noise² + (excess/2)² (as chrony weights its regression
//! by distance above the minimum), so queueing-delayed samples count little
//! while none of the information in the others is thrown away.
//!
//! Dispersion, jitter and root distance follow the RFC: the filter
//! dispersion is Σ εᵢ / 2^(i+1) over the samples sorted by the same score
//! (each εᵢ grown by PHI · age), the jitter is the RMS of the other samples'
//! offsets about the chosen one, and the root distance is
//! (δ + root delay)/2 + root dispersion + ε + ψ.

use super::sample::{Sample, ServerInfo};
use super::PHI;
use std::collections::VecDeque;

/// Stages of the shift register (RFC 5905 NSTAGE).
pub const STAGES: usize = 8;

/// A sample whose delay exceeds the register's least delay by more than this
/// many times the ordinary spread of delays is a queueing spike, left out of
/// the noise and jitter estimates (its offset may be off by up to half the
/// extra delay).
pub const DELAY_GATE: f64 = 3.0;

/// ... and by more than this fraction of the least delay: with a few samples
/// of nearly equal delay the spread alone would call ordinary jitter a spike.
pub const DELAY_GATE_RATIO: f64 = 0.5;

/// How to carry an old measurement forward to `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Monotonic time now, in seconds.
    pub now: f64,
    /// The total correction the agent has applied to the clock up to `now`
    /// (seconds): steps plus the integral of every frequency and slew
    /// adjustment. Only differences of it matter.
    pub correction: f64,
    /// The estimated rate at which the offset θ would change if nobody
    /// touched the clock (seconds per second): minus the clock's own
    /// frequency error.
    pub drift: f64,
    /// The uncertainty of `drift` (seconds per second), which ages samples
    /// when the best one is chosen.
    pub drift_uncertainty: f64,
}

impl Projection {
    /// A projection for a clock nobody corrects and whose drift is unknown
    /// (so only the newest sample is trusted).
    pub fn uncorrected(now: f64) -> Self {
        Self {
            now,
            correction: 0.0,
            drift: 0.0,
            drift_uncertainty: 1e-3,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: f64,
    delay: f64,
    dispersion: f64,
    /// Monotonic time of the measurement (middle of the exchange).
    time: f64,
    /// The correction C(time) in force when it was measured.
    correction: f64,
    /// Already handed to the discipline.
    used: bool,
}

impl Entry {
    fn offset_at(&self, p: &Projection) -> f64 {
        let age = p.now - self.time;
        self.offset + p.drift * age - (p.correction - self.correction)
    }

    fn age(&self, p: &Projection) -> f64 {
        (p.now - self.time).max(0.0)
    }

    fn score(&self, p: &Projection) -> f64 {
        self.delay + 2.0 * p.drift_uncertainty * self.age(p)
    }
}

/// What the filter says about its source now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterOutput {
    /// The chosen sample's offset carried forward to now (seconds).
    pub offset: f64,
    /// The chosen sample's delay (seconds).
    pub delay: f64,
    /// The filter dispersion ε, aged to now (seconds).
    pub dispersion: f64,
    /// The jitter ψ: RMS of the other samples' offsets about the chosen one
    /// (seconds). With a single sample, delay/2.
    pub jitter: f64,
    /// The noise of one measurement (seconds): the standard deviation of the
    /// register's offsets, leaving out delay spikes and offset outliers (see
    /// [`ClockFilter::output`]). With fewer than two usable samples, delay/2.
    pub noise: f64,
    /// Root distance λ = (δ + root delay)/2 + root dispersion + ε + ψ (seconds).
    pub root_distance: f64,
    /// Monotonic time of the chosen sample.
    pub sample_time: f64,
    /// Samples in the register.
    pub samples: usize,
    /// What the server said in its most recent response.
    pub server: ServerInfo,
}

/// The eight-stage filter of one source.
#[derive(Debug, Clone)]
pub struct ClockFilter {
    /// Newest first.
    entries: VecDeque<Entry>,
    server: ServerInfo,
    phi: f64,
}

impl Default for ClockFilter {
    fn default() -> Self {
        Self::new(PHI)
    }
}

impl ClockFilter {
    /// A filter whose dispersions grow at `phi` seconds per second.
    pub fn new(phi: f64) -> Self {
        Self {
            entries: VecDeque::with_capacity(STAGES),
            server: ServerInfo::default(),
            phi,
        }
    }

    /// Shift in a measurement taken at monotonic `time`, when the correction
    /// applied so far was `correction`.
    pub fn add(&mut self, sample: &Sample, time: f64, correction: f64) {
        if self.entries.len() == STAGES {
            self.entries.pop_back();
        }
        self.entries.push_front(Entry {
            offset: sample.offset,
            delay: sample.delay,
            dispersion: sample.dispersion,
            time,
            correction,
            used: false,
        });
        self.server = sample.server;
    }

    /// Samples in the register.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the server said in its most recent response, if any is held.
    pub fn last_server(&self) -> Option<ServerInfo> {
        (!self.entries.is_empty()).then_some(self.server)
    }

    /// Forget every sample (for example when the source's address changes).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    fn best(&self, p: &Projection) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let s = e.score(p);
            // Ties go to the newer sample (lower index).
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The source's estimate carried forward by `p`, or None while empty.
    pub fn output(&self, p: &Projection) -> Option<FilterOutput> {
        let best = self.best(p)?;
        let chosen = self.entries[best];
        let offset = chosen.offset_at(p);

        // Filter dispersion: Σ εᵢ / 2^(i+1) with the samples in score order.
        let mut order: Vec<(f64, f64)> = self
            .entries
            .iter()
            .map(|e| (e.score(p), e.dispersion + self.phi * e.age(p)))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let dispersion: f64 = order
            .iter()
            .enumerate()
            .map(|(i, &(_, eps))| eps / f64::from(2u32 << i.min(30)))
            .sum();

        let n = self.entries.len();
        // Jitter over the samples of ordinary delay: a queueing spike's
        // offset says nothing about the source's own noise.
        let gate = self.delay_gate();
        let others: Vec<f64> = self
            .entries
            .iter()
            .enumerate()
            .filter(|&(i, e)| i != best && e.delay <= gate)
            .map(|(_, e)| (e.offset_at(p) - offset).powi(2))
            .collect();
        let jitter = if others.is_empty() {
            chosen.delay / 2.0
        } else {
            (others.iter().sum::<f64>() / others.len() as f64).sqrt()
        };

        let noise = self.robust_noise(p).unwrap_or(chosen.delay / 2.0);

        let root_distance = (chosen.delay + self.server.root_delay) / 2.0
            + self.server.root_dispersion
            + dispersion
            + jitter;

        Some(FilterOutput {
            offset,
            delay: chosen.delay,
            dispersion,
            jitter,
            noise,
            root_distance,
            sample_time: chosen.time,
            samples: n,
            server: self.server,
        })
    }

    /// Samples with a delay above this are queueing spikes. Queueing only
    /// ever adds delay, so the reference is the least delay in the register
    /// (which spikes cannot move), and the ordinary spread is the distance
    /// from it to the lower median (clean while at most half the register is
    /// spiked). The gate is [`DELAY_GATE`] such spreads, and at least
    /// [`DELAY_GATE_RATIO`] times the least delay, above the least delay.
    fn delay_gate(&self) -> f64 {
        let mut delays: Vec<f64> = self.entries.iter().map(|e| e.delay).collect();
        if delays.is_empty() {
            return f64::INFINITY;
        }
        delays.sort_by(f64::total_cmp);
        let min = delays[0];
        let spread = delays[(delays.len() - 1) / 2] - min;
        min + (DELAY_GATE * spread).max(DELAY_GATE_RATIO * min)
    }

    /// The noise of one measurement: the standard deviation of the offsets
    /// of the samples within the delay gate (see [`Self::delay_gate`]). A
    /// truthful server's sample cannot be off by more than half its extra
    /// delay, so a sample of ordinary delay has an ordinary offset and one
    /// delayed reply no longer inflates the estimate for eight polls. None
    /// with fewer than two such samples.
    fn robust_noise(&self, p: &Projection) -> Option<f64> {
        let gate = self.delay_gate();
        let offsets: Vec<f64> = self
            .entries
            .iter()
            .filter(|e| e.delay <= gate)
            .map(|e| e.offset_at(p))
            .collect();
        let n = offsets.len();
        if n < 2 {
            return None;
        }
        let mean = offsets.iter().sum::<f64>() / n as f64;
        Some((offsets.iter().map(|o| (o - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
    }

    /// The newest sample carried forward by `p`, for the discipline.
    pub fn latest(&self, p: &Projection) -> Option<Latest> {
        let e = self.entries.front()?;
        let min_delay = self
            .entries
            .iter()
            .map(|e| e.delay)
            .fold(f64::INFINITY, f64::min);
        Some(Latest {
            offset: e.offset_at(p),
            delay: e.delay,
            excess_delay: e.delay - min_delay,
            time: e.time,
            used: e.used,
        })
    }

    /// Record that the newest sample has been handed to the discipline.
    pub fn mark_latest_used(&mut self) {
        if let Some(e) = self.entries.front_mut() {
            e.used = true;
        }
    }
}

/// The newest sample of a source, as the discipline takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latest {
    /// Offset carried forward to now (seconds).
    pub offset: f64,
    pub delay: f64,
    /// Its delay above the least delay in the register (seconds).
    pub excess_delay: f64,
    /// Monotonic time of the measurement.
    pub time: f64,
    /// Already handed to the discipline.
    pub used: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offset: f64, delay: f64) -> Sample {
        Sample::new(offset, delay, delay, ServerInfo::default(), 1e-9)
    }

    fn settled(now: f64) -> Projection {
        Projection {
            now,
            correction: 0.0,
            drift: 0.0,
            drift_uncertainty: 1e-9,
        }
    }

    #[test]
    fn picks_least_delay_when_frequency_is_known() {
        let mut f = ClockFilter::default();
        let data = [(1e-3, 5e-3), (2e-3, 1e-3), (3e-3, 4e-3), (4e-3, 6e-3)];
        for (i, &(o, d)) in data.iter().enumerate() {
            f.add(&sample(o, d), i as f64 * 16.0, 0.0);
        }
        let out = f.output(&settled(64.0)).unwrap();
        assert_eq!(out.offset, 2e-3);
        assert_eq!(out.delay, 1e-3);
        assert_eq!(out.samples, 4);
        // Jitter: RMS of (1, 1, 2) ms about the chosen one.
        let want = ((1e-6 + 1e-6 + 4e-6) / 3.0f64).sqrt();
        assert!((out.jitter - want).abs() < 1e-12);
        assert!(out.root_distance >= out.delay / 2.0 + out.jitter);
    }

    #[test]
    fn picks_newest_when_frequency_is_unknown() {
        let mut f = ClockFilter::default();
        f.add(&sample(1e-3, 1e-3), 0.0, 0.0);
        f.add(&sample(2e-3, 5e-3), 16.0, 0.0);
        let p = Projection::uncorrected(20.0);
        let out = f.output(&p).unwrap();
        assert_eq!(out.offset, 2e-3);
    }

    #[test]
    fn samples_are_carried_across_corrections() {
        let mut f = ClockFilter::default();
        // Measured +0.5 s, then the clock was stepped by +0.5 s, and it drifts
        // by -10 ppm (offset grows 10 µs per second).
        f.add(&sample(0.5, 1e-3), 10.0, 0.0);
        let p = Projection {
            now: 110.0,
            correction: 0.5,
            drift: 10e-6,
            drift_uncertainty: 1e-9,
        };
        let out = f.output(&p).unwrap();
        assert!((out.offset - 1e-3).abs() < 1e-12, "{}", out.offset);
    }

    #[test]
    fn latest_sample_is_used_once() {
        let mut f = ClockFilter::default();
        assert!(f.latest(&settled(0.0)).is_none());
        f.add(&sample(1e-3, 1e-3), 0.0, 0.0);
        f.add(&sample(2e-3, 3e-3), 16.0, 0.0);
        let p = settled(17.0);
        let l = f.latest(&p).unwrap();
        assert_eq!(l.offset, 2e-3);
        assert!((l.excess_delay - 2e-3).abs() < 1e-15);
        assert!(!l.used);
        f.mark_latest_used();
        assert!(f.latest(&p).unwrap().used);
        // The best sample for selection is still the least delayed one.
        assert_eq!(f.output(&p).unwrap().offset, 1e-3);
    }

    #[test]
    fn a_delay_spike_does_not_inflate_noise_or_jitter() {
        // Eight samples of 1 ms ± 50 µs with offsets ± 20 µs; then one
        // reply held up 20 ms on the way back (offset off by 10 ms).
        let clean = |f: &mut ClockFilter, n: usize, t0: f64| {
            for i in 0..n {
                let wiggle = if i % 2 == 0 { 1.0 } else { -1.0 };
                f.add(
                    &sample(20e-6 * wiggle, 1e-3 + 50e-6 * wiggle),
                    t0 + i as f64 * 16.0,
                    0.0,
                );
            }
        };
        let mut f = ClockFilter::default();
        clean(&mut f, 8, 0.0);
        let before = f.output(&settled(128.0)).unwrap();
        assert!((before.noise - 21.4e-6).abs() < 1e-6, "{}", before.noise);
        f.add(&sample(-10e-3, 21e-3), 128.0, 0.0);
        let after = f.output(&settled(129.0)).unwrap();
        assert!(after.noise < 25e-6, "noise {}", after.noise);
        assert!(after.jitter < 50e-6, "jitter {}", after.jitter);
        // Spikes are still left out when nearly half the register is spiked.
        let mut f = ClockFilter::default();
        clean(&mut f, 5, 0.0);
        for i in 0..3 {
            f.add(&sample(-10e-3, 21e-3), 80.0 + f64::from(i) * 16.0, 0.0);
        }
        assert!(f.output(&settled(130.0)).unwrap().noise < 25e-6);
        // With one usable sample the noise falls back to delay/2.
        let mut f = ClockFilter::default();
        f.add(&sample(0.0, 1e-3), 0.0, 0.0);
        f.add(&sample(-10e-3, 21e-3), 16.0, 0.0);
        assert_eq!(f.output(&settled(17.0)).unwrap().noise, 0.5e-3);
    }

    #[test]
    fn register_keeps_eight_and_dispersion_ages() {
        let mut f = ClockFilter::default();
        for i in 0..12 {
            f.add(&sample(0.0, 1e-3), f64::from(i), 0.0);
        }
        assert_eq!(f.len(), STAGES);
        let d0 = f.output(&settled(12.0)).unwrap().dispersion;
        let d1 = f.output(&settled(1012.0)).unwrap().dispersion;
        // Every sample aged 1000 s at PHI; the weights sum to 1 - 2^-8.
        let want = PHI * 1000.0 * (1.0 - 1.0 / 256.0);
        assert!((d1 - d0 - want).abs() < 1e-9, "{} {}", d1 - d0, want);
        f.clear();
        assert!(f.output(&settled(0.0)).is_none());
    }
}
