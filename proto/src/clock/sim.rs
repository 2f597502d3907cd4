//! A deterministic network and clock simulator that drives an [`Agent`]
//! exactly as an I/O shell would: it polls when the agent says, builds each
//! response from four timestamps taken on the simulated clock and on the
//! servers' clocks, and applies the agent's commands to a [`SimulatedClock`].
//!
//! Time is event-driven (polls, arrivals, slew ends, trace points), so a
//! simulated hour costs milliseconds. Everything random comes from one seeded
//! [`Rng`]: the same [`Scenario`] always gives the same [`SimReport`].

use super::agent::{Agent, AgentConfig, AgentStatus};
use super::clock_trait::{apply_command, Clock, ClockCommand};
use super::drift::DriftRecord;
use super::leap::{LeapSecondsList, LeapStatus};
use super::sample::{Sample, ServerInfo};
use super::sim_clock::{offset_timestamp, SimulatedClock, DEFAULT_EPOCH_UNIX};
use super::SourceId;
use crate::ntp_packet::{LeapIndicator, NtpTimestamp};

/// SplitMix64: a small, fast, seedable generator (not for cryptography).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * a.sin());
        r * a.cos()
    }
}

/// One simulated server and the path to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerModel {
    /// The server's clock minus true time (seconds): non-zero makes it lie.
    pub offset: f64,
    /// Mean round-trip network delay (seconds).
    pub delay: f64,
    /// Standard deviation of each direction's delay (seconds, Gaussian,
    /// independent per direction and per packet).
    pub jitter: f64,
    /// Mean outbound delay minus mean return delay (seconds).
    pub asymmetry: f64,
    /// Probability that any one packet (request or response) is lost.
    pub loss: f64,
    /// Time between the server's receive and transmit timestamps (seconds).
    pub processing: f64,
    /// Probability that a response is held up on its way back (a queue
    /// somewhere on the return path), on top of the normal delay.
    pub spike_probability: f64,
    /// How long such a response is held up (seconds). One direction only, so
    /// its offset is off by half of this.
    pub spike_delay: f64,
    pub info: ServerInfo,
    /// A leap indicator this server always sends, whatever UTC does (a
    /// forged or mistaken announcement). None: it announces the scenario's
    /// leap, if any, until it happens.
    pub forced_leap: Option<LeapIndicator>,
}

impl ServerModel {
    /// An honest server `delay` away with `jitter` on each direction.
    pub fn new(delay: f64, jitter: f64) -> Self {
        Self {
            offset: 0.0,
            delay,
            jitter,
            asymmetry: 0.0,
            loss: 0.0,
            processing: 20e-6,
            spike_probability: 0.0,
            spike_delay: 0.0,
            info: ServerInfo::default(),
            forced_leap: None,
        }
    }
}

/// Everything about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub seed: u64,
    /// Simulated seconds.
    pub duration: f64,
    /// Initial clock minus true time (seconds).
    pub initial_offset: f64,
    /// The clock's frequency error (ppm, positive: fast).
    pub frequency_ppm: f64,
    /// Random-walk frequency noise of the clock ((s/s)² per second).
    pub wander: f64,
    pub servers: Vec<ServerModel>,
    pub agent: AgentConfig,
    /// Precision of the client's timestamps (seconds).
    pub local_precision: f64,
    /// Seconds between trace points.
    pub trace_interval: f64,
    /// UTC (Unix seconds) at which true time starts (for a fresh clock).
    pub start_unix: i64,
    /// A leap second in true UTC: at the midnight `.0` (Unix seconds, the
    /// first second of the new day) a second is inserted or deleted. The
    /// servers' clocks follow it and announce it until then.
    pub leap: Option<(i64, LeapStatus)>,
    /// A `leap-seconds.list` for the agent.
    pub leap_list: Option<LeapSecondsList>,
}

impl Scenario {
    /// The acceptance baseline: +100 ppm, +0.5 s, four servers 1 ms away with
    /// 50 µs of Gaussian jitter on each direction (round trip 1 ms ± 71 µs,
    /// one standard deviation), 40 minutes, three sources must agree.
    pub fn baseline(seed: u64) -> Self {
        let mut agent = AgentConfig::default();
        agent.select.min_sources = 3;
        Self {
            seed,
            duration: 2400.0,
            initial_offset: 0.5,
            frequency_ppm: 100.0,
            wander: 0.0,
            servers: vec![ServerModel::new(1e-3, 50e-6); 4],
            agent,
            local_precision: 1e-9,
            trace_interval: 1.0,
            start_unix: DEFAULT_EPOCH_UNIX,
            leap: None,
            leap_list: None,
        }
    }
}

/// The simulation's state at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TracePoint {
    /// True time (seconds since the start).
    pub time: f64,
    /// Clock minus true time (seconds).
    pub offset: f64,
    /// The clock's frequency error with the base correction, slews left out (ppm).
    pub frequency_error_ppm: f64,
    /// The clock's rate error with everything (ppm).
    pub rate_error_ppm: f64,
    pub poll_exponent: i8,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub trace: Vec<TracePoint>,
    /// Steps: (true time, seconds).
    pub steps: Vec<(f64, f64)>,
    /// Panic commands received.
    pub panics: usize,
    pub polls: usize,
    pub samples: usize,
    /// Clock updates the discipline took.
    pub updates: u64,
    /// Per server: ever combined (survivor) after it first took part in a selection.
    pub ever_survivor: Vec<bool>,
    /// Per server: ever marked a falseticker.
    pub ever_falseticker: Vec<bool>,
    /// Per server: marked a falseticker in the last selection.
    pub final_falseticker: Vec<bool>,
    pub status: AgentStatus,
    /// What the agent would write to its drift file at the end.
    pub drift: Option<DriftRecord>,
    /// Leap flags the agent commanded: (true time, flag).
    pub leap_commands: Vec<(f64, LeapStatus)>,
    /// Leaps the clock's kernel applied in this run: (true time, what).
    pub leaps: Vec<(f64, LeapStatus)>,
}

impl SimReport {
    fn window(&self, from: f64, to: f64) -> impl Iterator<Item = &TracePoint> {
        self.trace
            .iter()
            .filter(move |p| p.time >= from && p.time <= to)
    }

    /// RMS of the clock's offset from true time over [from, to] (seconds).
    pub fn offset_rms(&self, from: f64, to: f64) -> f64 {
        let (n, s) = self
            .window(from, to)
            .fold((0usize, 0.0), |(n, s), p| (n + 1, s + p.offset * p.offset));
        (s / n.max(1) as f64).sqrt()
    }

    /// Mean of the offset over [from, to] (seconds).
    pub fn offset_mean(&self, from: f64, to: f64) -> f64 {
        let (n, s) = self
            .window(from, to)
            .fold((0usize, 0.0), |(n, s), p| (n + 1, s + p.offset));
        s / n.max(1) as f64
    }

    /// Largest |offset| over [from, to] (seconds).
    pub fn max_abs_offset(&self, from: f64, to: f64) -> f64 {
        self.window(from, to)
            .map(|p| p.offset.abs())
            .fold(0.0, f64::max)
    }

    /// Largest |frequency error| over [from, to] (ppm).
    pub fn max_abs_frequency_error(&self, from: f64, to: f64) -> f64 {
        self.window(from, to)
            .map(|p| p.frequency_error_ppm.abs())
            .fold(0.0, f64::max)
    }

    /// Mean |rate error| over [from, to] (ppm): includes the slews.
    pub fn mean_abs_rate_error(&self, from: f64, to: f64) -> f64 {
        let (n, s) = self.window(from, to).fold((0usize, 0.0), |(n, s), p| {
            (n + 1, s + p.rate_error_ppm.abs())
        });
        s / n.max(1) as f64
    }

    /// The poll exponent at the end.
    pub fn final_poll_exponent(&self) -> i8 {
        self.status.poll_exponent
    }
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    server: usize,
    arrival: f64,
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t3: NtpTimestamp,
    info: ServerInfo,
}

enum Event {
    Trace,
    Poll(usize),
    Arrival(usize),
    Deadline,
}

/// Seconds true UTC's leap has taken off its reading at true time `t` (since
/// the clock's epoch): 1 after an inserted second, −1 after a deleted one.
fn true_leap_adjust(sc: &Scenario, epoch_unix: i64, t: f64) -> f64 {
    match sc.leap {
        Some((at, LeapStatus::Insert)) if t >= (at - epoch_unix) as f64 => 1.0,
        Some((at, LeapStatus::Delete)) if t >= (at - 1 - epoch_unix) as f64 => -1.0,
        _ => 0.0,
    }
}

/// Run one scenario to its end.
pub fn run(sc: &Scenario) -> SimReport {
    let mut clock = SimulatedClock::new(sc.initial_offset, sc.frequency_ppm, sc.seed)
        .with_wander(sc.wander)
        .with_epoch_unix(sc.start_unix);
    run_on(sc, &mut clock)
}

/// Run a scenario's agent on a clock another run has already used, from the
/// clock's current true time for `sc.duration` seconds: a restarted agent
/// meets the clock its predecessor left. The scenario's `initial_offset`,
/// `frequency_ppm` and `wander` are not used (the clock has its own). Like
/// a shell stopping on SIGTERM, the run ends with [`Agent::shutdown`].
pub fn run_on(sc: &Scenario, clock: &mut SimulatedClock) -> SimReport {
    let mut rng = Rng::new(sc.seed);
    // Delay spikes draw from their own stream, so a run with spikes sees the
    // same jitter, losses and clock as the same seed without them.
    let mut spike_rng = Rng::new(sc.seed ^ 0x5b1c_e5b1_ce00_0000);
    let start = clock.true_time();
    let end = start + sc.duration;
    let mut agent = Agent::new(sc.agent);
    agent.set_leap_seconds_list(sc.leap_list.clone());
    let epoch_unix = clock.epoch_unix();
    let ids: Vec<SourceId> = sc.servers.iter().map(|_| agent.add_source()).collect();
    let n = sc.servers.len();
    // Sources start a little apart, as a shell resolving names would.
    let first_poll: Vec<f64> = (0..n).map(|i| start + 0.1 + 0.37 * i as f64).collect();
    let mut polled = vec![false; n];
    let mut flights: Vec<Flight> = Vec::new();
    let mut next_trace = start;
    let mut report = SimReport {
        trace: Vec::new(),
        steps: Vec::new(),
        panics: 0,
        polls: 0,
        samples: 0,
        updates: 0,
        ever_survivor: vec![false; n],
        ever_falseticker: vec![false; n],
        final_falseticker: vec![false; n],
        status: agent.status(0.0),
        drift: None,
        leap_commands: Vec::new(),
        leaps: Vec::new(),
    };
    let leaps_before = clock.leaps().len();

    loop {
        let now = clock.true_time();
        let mono = clock.monotonic();
        let rate = clock.rate();
        let to_true = |m: f64| now + ((m - mono) / (1.0 + rate)).max(0.0);

        let mut next = (next_trace, Event::Trace);
        let mut consider = |t: f64, e: Event| {
            if t < next.0 {
                next = (t, e);
            }
        };
        for (i, id) in ids.iter().enumerate() {
            let due = if polled[i] {
                to_true(agent.next_poll(*id).unwrap_or(f64::INFINITY))
            } else {
                first_poll[i]
            };
            consider(due.max(now), Event::Poll(i));
        }
        for (k, f) in flights.iter().enumerate() {
            consider(f.arrival, Event::Arrival(k));
        }
        if let Some(d) = agent.next_deadline() {
            consider(to_true(d), Event::Deadline);
        }
        let (t, event) = next;
        if t > end {
            break;
        }
        clock.advance(t - now);
        let mono = clock.monotonic();

        let mut cmds = Vec::new();
        match event {
            Event::Trace => {
                let t = clock.true_time();
                report.trace.push(TracePoint {
                    time: t,
                    // UTC readings compared: a leap applied at the wrong
                    // second, or twice, shows as a second of offset. (The
                    // true leap is counted at the clock's own time, so a
                    // clock 20 µs behind does not show a 1 s error for the
                    // 20 µs between the true midnight and its own.)
                    offset: clock.offset() - clock.leap_adjustment()
                        + true_leap_adjust(sc, epoch_unix, t + clock.offset()),
                    frequency_error_ppm: clock.intrinsic_frequency_ppm() + agent.frequency_ppm(),
                    rate_error_ppm: clock.rate() * 1e6,
                    poll_exponent: agent.discipline().poll_exponent(),
                });
                next_trace += sc.trace_interval;
            }
            Event::Deadline => cmds = agent.tick(mono),
            Event::Poll(i) => {
                agent.poll_sent(ids[i], mono);
                polled[i] = true;
                report.polls += 1;
                let s = &sc.servers[i];
                let t1 = clock.now().expect("infallible");
                let lost_request = rng.uniform() < s.loss;
                let lost_response = rng.uniform() < s.loss;
                let fwd = (s.delay / 2.0 + s.asymmetry / 2.0 + s.jitter * rng.normal()).max(1e-6);
                let mut back =
                    (s.delay / 2.0 - s.asymmetry / 2.0 + s.jitter * rng.normal()).max(1e-6);
                if s.spike_probability > 0.0 && spike_rng.uniform() < s.spike_probability {
                    back += s.spike_delay;
                }
                if !lost_request && !lost_response {
                    let at_server = clock.true_time() + fwd;
                    let epoch = clock.true_timestamp(0.0);
                    // The server's UTC reading: true time, its error, and
                    // the leap if UTC has had it.
                    let utc = |t: f64| t + s.offset - true_leap_adjust(sc, epoch_unix, t);
                    let mut info = s.info;
                    info.leap = match (s.forced_leap, sc.leap) {
                        (Some(li), _) => li,
                        (None, Some((at, what))) if epoch_unix as f64 + at_server < at as f64 => {
                            match what {
                                LeapStatus::Insert => LeapIndicator::InsertSecond,
                                LeapStatus::Delete => LeapIndicator::DeleteSecond,
                                LeapStatus::None => s.info.leap,
                            }
                        }
                        _ => s.info.leap,
                    };
                    flights.push(Flight {
                        server: i,
                        arrival: at_server + s.processing + back,
                        t1,
                        t2: offset_timestamp(epoch, utc(at_server)),
                        t3: offset_timestamp(epoch, utc(at_server + s.processing)),
                        info,
                    });
                }
            }
            Event::Arrival(k) => {
                let f = flights.swap_remove(k);
                let t4 = clock.now().expect("infallible");
                if let Ok(sample) =
                    Sample::from_timestamps(f.t1, f.t2, f.t3, t4, f.info, sc.local_precision)
                {
                    report.samples += 1;
                    cmds = agent.on_sample(ids[f.server], sample, mono);
                    if let Ok(sel) = agent.selection() {
                        for (i, id) in ids.iter().enumerate() {
                            report.ever_survivor[i] |= sel.survivors.contains(id);
                            let ft = sel.falsetickers.contains(id);
                            report.ever_falseticker[i] |= ft;
                            report.final_falseticker[i] = ft;
                        }
                    }
                }
            }
        }
        for cmd in &cmds {
            match cmd {
                ClockCommand::Panic { .. } => report.panics += 1,
                ClockCommand::Step { offset } => {
                    report.steps.push((clock.true_time(), *offset));
                    apply_command(clock, cmd).expect("infallible");
                }
                ClockCommand::SetLeap(l) => {
                    report.leap_commands.push((clock.true_time(), *l));
                    apply_command(clock, cmd).expect("infallible");
                }
                _ => apply_command(clock, cmd).expect("infallible"),
            }
        }
    }
    report.updates = agent.discipline().updates();
    report.status = agent.status(clock.monotonic());
    report.drift = agent.drift_record(clock.monotonic());
    report.leaps = clock.leaps()[leaps_before..].to_vec();
    for cmd in agent.shutdown(clock.monotonic()) {
        apply_command(clock, &cmd).expect("infallible");
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{InitialFrequency, LeapDecision, LeapSource};

    const MINUTE: f64 = 60.0;

    fn show(name: &str, seed: u64, r: &SimReport, from: f64, to: f64) {
        println!(
            "{name} seed {seed}: steps {:?}, offset rms {:.2} µs, mean {:.2} µs, max {:.2} µs, max |freq err| {:.4} ppm, mean |rate err| {:.4} ppm, poll 2^{}, updates {}, samples {}/{} polls",
            r.steps,
            r.offset_rms(from, to) * 1e6,
            r.offset_mean(from, to) * 1e6,
            r.max_abs_offset(from, to) * 1e6,
            r.max_abs_frequency_error(from, to),
            r.mean_abs_rate_error(from, to),
            r.final_poll_exponent(),
            r.updates,
            r.samples,
            r.polls,
        );
    }

    #[test]
    fn rng_is_deterministic_and_roughly_normal() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut r = Rng::new(1);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    /// 10% of every server's replies held up 20 ms on the way back.
    fn with_spikes(mut sc: Scenario) -> Scenario {
        for s in sc.servers.iter_mut() {
            s.spike_probability = 0.1;
            s.spike_delay = 20e-3;
        }
        sc
    }

    fn check_converged(name: &str, sc: &Scenario) -> SimReport {
        let r = run(sc);
        show(name, sc.seed, &r, 30.0 * MINUTE, 40.0 * MINUTE);
        assert_eq!(r.steps.len(), 1, "{name}: steps {:?}", r.steps);
        assert!(
            (r.steps[0].1 + 0.5).abs() < 1e-3,
            "{name}: step {:?}",
            r.steps
        );
        assert_eq!(r.panics, 0);
        let rms = r.offset_rms(30.0 * MINUTE, 40.0 * MINUTE);
        assert!(rms < 20e-6, "{name} seed {}: offset rms {rms}", sc.seed);
        // The tracking view agrees with what the loop did.
        let tr = r.status.tracking.expect("a selection");
        assert!(tr.rms_offset.unwrap() < 50e-6, "{tr:?}");
        assert!(tr.last_offset.unwrap().abs() < 100e-6, "{tr:?}");
        assert!(tr.update_interval.unwrap() > 0.0);
        assert!(tr.last_update_age.unwrap() < 2.0 * r.status.poll_exponent as f64 * 64.0);
        assert_eq!((tr.reference_stratum, tr.stratum), (1, 2));
        assert!(tr.root_delay > 0.5e-3 && tr.root_delay < 2e-3, "{tr:?}");
        let ferr = r.max_abs_frequency_error(30.0 * MINUTE, 40.0 * MINUTE);
        assert!(
            ferr < 0.1,
            "{name} seed {}: frequency error {ferr} ppm",
            sc.seed
        );
        r
    }

    #[test]
    fn baseline_steps_once_then_holds_microseconds() {
        for seed in 1..=5 {
            check_converged("baseline", &Scenario::baseline(seed));
        }
    }

    #[test]
    fn a_source_one_second_off_is_a_falseticker() {
        for seed in 1..=5 {
            let mut sc = Scenario::baseline(seed);
            sc.servers[2].offset = 1.0;
            let r = check_converged("falseticker", &sc);
            assert!(r.ever_falseticker[2] && r.final_falseticker[2]);
            assert!(!r.ever_survivor[2], "the liar was combined");
            for i in [0, 1, 3] {
                assert!(r.ever_survivor[i] && !r.ever_falseticker[i], "server {i}");
            }
        }
    }

    #[test]
    fn asymmetry_wander_and_loss_stay_stable_without_stepping_again() {
        for seed in 1..=3 {
            let mut sc = Scenario::baseline(seed);
            sc.duration = 4.0 * 3600.0;
            sc.wander = 1e-17;
            for (s, asym) in sc.servers.iter_mut().zip([200e-6, -100e-6, 50e-6, 0.0]) {
                s.asymmetry = asym;
                s.loss = 0.1;
            }
            let r = run(&sc);
            let end = sc.duration;
            show("hostile", seed, &r, 30.0 * MINUTE, end);
            assert_eq!(r.steps.len(), 1, "steps {:?}", r.steps);
            assert_eq!(r.panics, 0);
            // The combined asymmetry (about +19 µs of offset, unknowable to
            // the client) shows up as a constant error; the clock must stay
            // close to it.
            let max = r.max_abs_offset(30.0 * MINUTE, end);
            assert!(max < 200e-6, "max offset {max}");
            let rms = r.offset_rms(30.0 * MINUTE, end);
            assert!(rms < 60e-6, "rms {rms}");
            let ferr = r.max_abs_frequency_error(30.0 * MINUTE, end);
            assert!(ferr < 0.5, "frequency error {ferr}");
        }
    }

    /// 10% of replies held up 20 ms on the way back (their offsets off by
    /// 10 ms): the clock must stay within 1.5 times the offset RMS of the
    /// same seeds without spikes, after it has settled (10 to 40 minutes).
    #[test]
    fn delay_spikes_barely_disturb_the_clock() {
        let (mut sum_clean, mut sum_spiky) = (0.0, 0.0);
        for seed in 1..=8 {
            let clean = run(&Scenario::baseline(seed));
            let spiky = run(&with_spikes(Scenario::baseline(seed)));
            let (from, to) = (10.0 * MINUTE, 40.0 * MINUTE);
            let (a, b) = (clean.offset_rms(from, to), spiky.offset_rms(from, to));
            println!(
                "spikes seed {seed}: offset rms {:.2} µs without, {:.2} µs with (ratio {:.2})",
                a * 1e6,
                b * 1e6,
                b / a,
            );
            assert_eq!(spiky.steps.len(), 1, "seed {seed}: steps {:?}", spiky.steps);
            assert!(
                b < 1.5 * a,
                "seed {seed}: rms {b} with spikes vs {a} without"
            );
            sum_clean += a * a;
            sum_spiky += b * b;
        }
        let ratio = (sum_spiky / sum_clean).sqrt();
        println!("spikes, 8 seeds pooled: ratio {ratio:.2}");
        assert!(ratio < 1.5, "pooled ratio {ratio}");
    }

    /// The second agent's scenario: the baseline's servers and settings, a
    /// new seed, and the initial frequency decided as a shell would.
    fn restarted(seed: u64, clock: &SimulatedClock, drift: Option<&DriftRecord>) -> Scenario {
        let mut sc = Scenario::baseline(seed + 100);
        sc.duration = 20.0 * MINUTE;
        let kernel_ppm = clock.frequency().expect("infallible");
        let kernel_status = clock.sync_status().expect("infallible");
        let init = InitialFrequency::decide(
            drift.map(|d| (d, 0)),
            Some((kernel_ppm, &kernel_status)),
            sc.agent.discipline.wander,
        );
        init.apply(&mut sc.agent.discipline);
        sc
    }

    /// A converged agent stops; a new one starts on the same clock with the
    /// frequency it finds (in the kernel, or in the drift file). It must not
    /// move the frequency by more than 0.1 ppm, step, or let the offset grow.
    #[test]
    fn a_restart_keeps_the_frequency_it_found() {
        for seed in 1..=4 {
            let mut clock = SimulatedClock::new(0.5, 100.0, seed);
            let first = run_on(&Scenario::baseline(seed), &mut clock);
            assert_eq!(first.steps.len(), 1);
            let found = clock.frequency().unwrap();
            assert!((found + 100.0).abs() < 0.1, "converged to {found}");
            let record = first.drift.expect("a converged agent has a drift record");
            assert!((record.frequency_ppm - found).abs() < 0.01, "{record:?}");
            let record = DriftRecord::parse(&record.to_text()).unwrap();

            for (how, drift) in [("kernel", None), ("drift file", Some(&record))] {
                let mut c = clock.clone();
                let sc = restarted(seed, &c, drift);
                let start = c.true_time();
                let r = run_on(&sc, &mut c);
                // How far the frequency moves from what it found, over the
                // first minute (the start-up burst and the first ~20
                // updates) and the first five.
                let f0 = r.trace[0].frequency_error_ppm;
                let moved = |minutes: f64| {
                    r.trace
                        .iter()
                        .filter(|p| p.time <= start + minutes * MINUTE)
                        .map(|p| (p.frequency_error_ppm - f0).abs())
                        .fold(0.0, f64::max)
                };
                let (moved1, moved5) = (moved(1.0), moved(5.0));
                let ferr = r.max_abs_frequency_error(start, start + sc.duration);
                let max = r.max_abs_offset(start, start + sc.duration);
                let rms = r.offset_rms(start, start + sc.duration);
                println!(
                    "restart seed {seed} from the {how}: found {found:.4} ppm (± {:.3}), moved at most {moved1:.4} ppm in 1 min, {moved5:.4} in 5 min, max |frequency error| {ferr:.4} ppm in 20 min, offset rms {:.2} µs, max {:.2} µs, steps {}",
                    sc.agent.discipline.initial_frequency_uncertainty_ppm,
                    rms * 1e6,
                    max * 1e6,
                    r.steps.len()
                );
                assert!(r.steps.is_empty(), "{how}: steps {:?}", r.steps);
                assert!(moved1 < 0.1, "{how}: frequency moved {moved1} ppm");
                // It stays converged: the first run's frequency errors reach
                // 0.03 ppm; a restart trusting the kernel to 0.1 ppm
                // wanders a little more at first.
                let limit = if drift.is_some() { 0.1 } else { 0.2 };
                assert!(ferr < limit, "{how}: frequency error {ferr} ppm");
                assert!(max < 100e-6, "{how}: max offset {max}");
                assert!(r.status.synchronized && r.updates > 20);
            }

            // What this replaces: starting from 0 ppm undoes the correction.
            let mut c = clock.clone();
            let mut sc = Scenario::baseline(seed + 100);
            sc.duration = 20.0 * MINUTE;
            let start = c.true_time();
            let r = run_on(&sc, &mut c);
            println!(
                "restart seed {seed} from 0 ppm: max offset {:.2} µs, max |frequency error| {:.2} ppm, steps {}",
                r.max_abs_offset(start, start + sc.duration) * 1e6,
                r.max_abs_frequency_error(start, start + sc.duration),
                r.steps.len()
            );
        }
    }

    /// 2027-01-01 00:00:00 UTC: a leap second (23:59:60) before it.
    const NEW_YEAR_2027: i64 = 1_798_761_600;

    /// The baseline, starting 40 minutes before the new year, for an hour.
    fn new_year(seed: u64, leap: Option<LeapStatus>) -> Scenario {
        let mut sc = Scenario::baseline(seed);
        sc.start_unix = NEW_YEAR_2027 - 2400;
        sc.duration = 3600.0;
        sc.leap = leap.map(|l| (NEW_YEAR_2027, l));
        sc
    }

    /// A `leap-seconds.list` with a valid hash: the given entries, updated
    /// and expiring as asked.
    fn make_list(updated_unix: i64, expires_unix: i64, entries: &[(i64, i32)]) -> LeapSecondsList {
        use sha1::{Digest, Sha1};
        let ntp = |u: i64| u + crate::clock::leap::NTP_UNIX_OFFSET;
        let mut text = format!("#$\t{}\n#@\t{}\n", ntp(updated_unix), ntp(expires_unix));
        let mut h = Sha1::new();
        h.update(ntp(updated_unix).to_string());
        h.update(ntp(expires_unix).to_string());
        for (u, tai) in entries {
            text.push_str(&format!("{}\t{}\n", ntp(*u), tai));
            h.update(format!("{}{}", ntp(*u), tai));
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let groups: Vec<&str> = (0..5).map(|i| &hex[i * 8..i * 8 + 8]).collect();
        text.push_str(&format!("#h\t{}\n", groups.join(" ")));
        LeapSecondsList::parse(&text).unwrap()
    }

    /// Checks a run that crossed the new year with (or without) a leap.
    fn check_leap_run(name: &str, sc: &Scenario, want: Option<LeapStatus>) -> SimReport {
        let r = run(sc);
        let at = (NEW_YEAR_2027 - sc.start_unix) as f64;
        let after = r.max_abs_offset(at - 120.0, sc.duration);
        let settled = r.max_abs_offset(10.0 * MINUTE, sc.duration);
        println!(
            "{name} seed {}: kernel leaps {:?} (due at {at} s), flags {:?}, steps {}, max |UTC offset| {:.2} µs from 10 min, {:.2} µs around and after the leap",
            sc.seed,
            r.leaps,
            r.leap_commands,
            r.steps.len(),
            settled * 1e6,
            after * 1e6
        );
        match want {
            Some(l) => {
                // Exactly one leap, at the right second: an inserted second
                // starts when the clock reads midnight, a deleted one when
                // it reads 23:59:59; the clock is microseconds from truth.
                let due = if l == LeapStatus::Insert {
                    at
                } else {
                    at - 1.0
                };
                assert_eq!(r.leaps.len(), 1, "{name}: leaps {:?}", r.leaps);
                assert_eq!(r.leaps[0].1, l);
                assert!((r.leaps[0].0 - due).abs() < 1e-3, "{name}: {:?}", r.leaps);
                // Flag up on the last day, down once past midnight.
                assert_eq!(r.leap_commands.first().map(|c| c.1), Some(l));
                let (t_down, down) = *r.leap_commands.last().unwrap();
                assert_eq!(down, LeapStatus::None);
                assert!(
                    t_down > due && t_down < due + 10.0,
                    "{name}: {:?}",
                    r.leap_commands
                );
                assert_eq!(r.leap_commands.len(), 2, "{name}: {:?}", r.leap_commands);
            }
            None => {
                assert!(r.leaps.is_empty(), "{name}: leaps {:?}", r.leaps);
                assert!(r.leap_commands.is_empty(), "{name}: {:?}", r.leap_commands);
            }
        }
        assert_eq!(r.steps.len(), 1, "{name}: steps {:?}", r.steps);
        assert!(r.steps[0].0 < 60.0, "{name}: late step {:?}", r.steps);
        assert!(settled < 100e-6, "{name}: offset {settled}");
        r
    }

    #[test]
    fn a_leap_second_is_applied_once_at_the_right_second() {
        for seed in 1..=3 {
            let r = check_leap_run(
                "insert",
                &new_year(seed, Some(LeapStatus::Insert)),
                Some(LeapStatus::Insert),
            );
            assert_eq!(r.status.leap, LeapDecision::default());
            check_leap_run(
                "delete",
                &new_year(seed, Some(LeapStatus::Delete)),
                Some(LeapStatus::Delete),
            );
        }
        println!(
            "the inserted second: {}",
            crate::clock::leap::format_leap_second(NEW_YEAR_2027, LeapStatus::Insert)
        );
    }

    #[test]
    fn a_minority_or_overruled_leap_announcement_is_not_acted_on() {
        // One server of four announces a leap that UTC does not have.
        let mut sc = new_year(1, None);
        sc.servers[2].forced_leap = Some(LeapIndicator::InsertSecond);
        let r = check_leap_run("forged minority", &sc, None);
        assert_eq!(r.status.leap.announced, LeapStatus::None);
        // Two of four: still no majority.
        sc.servers[3].forced_leap = Some(LeapIndicator::InsertSecond);
        check_leap_run("two of four", &sc, None);
        // All four announce it, but a valid leap-seconds.list says no leap
        // at this new year: the list decides.
        let mut sc = new_year(2, None);
        for s in sc.servers.iter_mut() {
            s.forced_leap = Some(LeapIndicator::InsertSecond);
        }
        let no_leap_list = make_list(
            NEW_YEAR_2027 - 100 * 86_400,
            NEW_YEAR_2027 + 100 * 86_400,
            &[(1_483_228_800, 37)],
        );
        sc.leap_list = Some(no_leap_list.clone());
        check_leap_run("overruled by the list", &sc, None);
        // An expired list does not decide: the majority of sources does.
        let mut sc = new_year(3, Some(LeapStatus::Insert));
        let mut expired = no_leap_list;
        expired.expires_ntp = expired.updated_ntp + 86_400;
        sc.leap_list = Some(expired);
        check_leap_run("expired list", &sc, Some(LeapStatus::Insert));
        // A valid list announces it while no server does: the list decides.
        let mut sc = new_year(3, Some(LeapStatus::Insert));
        for s in sc.servers.iter_mut() {
            s.forced_leap = Some(LeapIndicator::NoWarning);
        }
        sc.leap_list = Some(make_list(
            NEW_YEAR_2027 - 100 * 86_400,
            NEW_YEAR_2027 + 100 * 86_400,
            &[(1_483_228_800, 37), (NEW_YEAR_2027, 38)],
        ));
        check_leap_run("list only", &sc, Some(LeapStatus::Insert));
    }

    #[test]
    fn observe_mode_reports_a_leap_without_commanding_it() {
        let mut sc = new_year(1, Some(LeapStatus::Insert));
        sc.agent.discipline.observe_only = true;
        sc.duration = 1200.0;
        let r = run(&sc);
        assert!(r.leap_commands.is_empty() && r.leaps.is_empty());
        assert_eq!(r.status.leap.status, LeapStatus::Insert);
        assert_eq!(r.status.leap.announced, LeapStatus::Insert);
        assert_eq!(r.status.leap.source, LeapSource::Sources);
        assert_eq!(r.status.leap.at_unix, Some(NEW_YEAR_2027));
        assert_eq!(r.status.kernel_leap, LeapStatus::None);
    }

    #[test]
    fn an_absurd_offset_panics_and_the_clock_is_left_alone() {
        let mut sc = Scenario::baseline(1);
        sc.initial_offset = 2000.0;
        sc.duration = 300.0;
        let r = run(&sc);
        assert!(r.panics > 0);
        assert!(r.steps.is_empty());
        assert!(r.status.panicked && !r.status.synchronized);
        // No frequency was set: the clock still runs 100 ppm fast.
        let last = r.trace.last().unwrap();
        assert!((last.rate_error_ppm - 100.0).abs() < 1e-9);
        assert!((last.offset - (2000.0 + 100e-6 * last.time)).abs() < 1e-6);
    }

    #[test]
    fn observe_only_measures_without_touching_the_clock() {
        let mut sc = Scenario::baseline(3);
        sc.agent.discipline.observe_only = true;
        sc.duration = 600.0;
        let r = run(&sc);
        assert!(r.steps.is_empty() && r.panics == 0);
        let last = r.trace.last().unwrap();
        assert!((last.rate_error_ppm - 100.0).abs() < 1e-9);
        // It still knows the offset (true minus ours) and the frequency error.
        let est = r.status.offset.unwrap();
        let truth = -(0.5 + 100e-6 * 600.0);
        assert!((est - truth).abs() < 50e-6, "{est} vs {truth}");
        let f = r.status.residual_frequency_ppm.unwrap();
        assert!((f + 100.0).abs() < 0.1, "{f}");
        assert_eq!(r.status.frequency_ppm, 0.0);
        assert!((r.status.estimated_frequency_ppm.unwrap() + 100.0).abs() < 0.1);
    }

    /// The numbers in docs/clock-discipline.md:
    /// `cargo test -p nts-proto --lib clock::sim -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn report_many_seeds() {
        fn stats(mut v: Vec<f64>) -> String {
            v.sort_by(f64::total_cmp);
            let median = v[v.len() / 2];
            format!("median {:.4}, worst {:.4}", median, v[v.len() - 1])
        }
        type Setup = fn(&mut Scenario);
        let scenarios: [(&str, Setup, f64); 5] = [
            ("baseline", |_| {}, 2400.0),
            (
                "spikes",
                |sc| {
                    for s in sc.servers.iter_mut() {
                        s.spike_probability = 0.1;
                        s.spike_delay = 20e-3;
                    }
                },
                2400.0,
            ),
            ("falseticker", |sc| sc.servers[2].offset = 1.0, 2400.0),
            (
                "hostile",
                |sc| {
                    sc.duration = 4.0 * 3600.0;
                    sc.wander = 1e-17;
                    for (s, asym) in sc.servers.iter_mut().zip([200e-6, -100e-6, 50e-6, 0.0]) {
                        s.asymmetry = asym;
                        s.loss = 0.1;
                    }
                },
                4.0 * 3600.0,
            ),
            (
                "hostile-24h",
                |sc| {
                    sc.duration = 24.0 * 3600.0;
                    sc.wander = 1e-17;
                    for (s, asym) in sc.servers.iter_mut().zip([200e-6, -100e-6, 50e-6, 0.0]) {
                        s.asymmetry = asym;
                        s.loss = 0.1;
                    }
                },
                24.0 * 3600.0,
            ),
        ];
        for (name, setup, end) in scenarios {
            let (mut rms, mut mean, mut max, mut ferr, mut steps, mut poll) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for seed in 1..=20 {
                let mut sc = Scenario::baseline(seed);
                setup(&mut sc);
                let r = run(&sc);
                let from = 30.0 * MINUTE;
                rms.push(r.offset_rms(from, end) * 1e6);
                mean.push(r.offset_mean(from, end).abs() * 1e6);
                max.push(r.max_abs_offset(from, end) * 1e6);
                ferr.push(r.max_abs_frequency_error(from, end));
                steps.push(r.steps.len() as f64);
                poll.push(f64::from(r.final_poll_exponent()));
            }
            println!("{name} (20 seeds, from 30 min to {:.0} min):", end / 60.0);
            println!("  offset rms µs: {}", stats(rms));
            println!("  |mean offset| µs: {}", stats(mean));
            println!("  max |offset| µs: {}", stats(max));
            println!("  max |frequency error| ppm: {}", stats(ferr));
            println!("  steps: {}", stats(steps));
            println!("  final poll exponent: {}", stats(poll));
        }
    }
}
