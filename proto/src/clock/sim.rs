//! A deterministic network and clock simulator that drives an [`Agent`]
//! exactly as an I/O shell would: it polls when the agent says, builds each
//! response from four timestamps taken on the simulated clock and on the
//! servers' clocks, and applies the agent's commands to a [`SimulatedClock`].
//!
//! Time is event-driven (polls, arrivals, slew ends, trace points), so a
//! simulated hour costs milliseconds. Everything random comes from one seeded
//! [`Rng`]: the same [`Scenario`] always gives the same [`SimReport`].

use super::agent::{Agent, AgentConfig, AgentStatus, SourceStatus};
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

    /// Exponential with this mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
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

/// The chance that this poll is lost, given whether the previous one was:
/// a two-state chain whose runs of losses last `loss_burst` polls on average
/// and whose long-run share of losses is `poll_loss`.
fn poll_loss_probability(s: &ServerModel, previous_lost: bool) -> f64 {
    let burst = s.loss_burst.max(1.0);
    if burst <= 1.0 {
        return s.poll_loss;
    }
    let leave = 1.0 / burst;
    if previous_lost {
        1.0 - leave
    } else {
        (s.poll_loss * leave / (1.0 - s.poll_loss).max(1e-9)).min(1.0)
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
    /// Probability that a poll gets no answer, on top of `loss` (drawn from
    /// its own random stream, so the same seed sees the same jitter with and
    /// without it).
    pub poll_loss: f64,
    /// Mean length of a run of polls `poll_loss` loses (1: independent
    /// losses; above 1, a two-state chain with the same long-run share).
    pub loss_burst: f64,
    /// Mean of an extra one-sided delay (exponential, as a queue or a relay
    /// adds) on each direction, independent per direction and packet (seconds).
    pub queueing: f64,
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
            poll_loss: 0.0,
            loss_burst: 1.0,
            queueing: 0.0,
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
    /// Every source's status at the end.
    pub sources: Vec<SourceStatus>,
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
    // Queueing delays and poll losses too have their own streams.
    let mut queue_rng = Rng::new(sc.seed ^ 0x0c0e_0e1e_0000_0000);
    let mut loss_rng = Rng::new(sc.seed ^ 0x1055_0000_0000_0000);
    let mut in_loss_run = vec![false; sc.servers.len()];
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
        sources: Vec::new(),
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
                let mut fwd = fwd;
                if s.queueing > 0.0 {
                    fwd += queue_rng.exponential(s.queueing);
                    back += queue_rng.exponential(s.queueing);
                }
                let lost_poll = s.poll_loss > 0.0 && {
                    let p = poll_loss_probability(s, in_loss_run[i]);
                    in_loss_run[i] = loss_rng.uniform() < p;
                    in_loss_run[i]
                };
                if !lost_request && !lost_response && !lost_poll {
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
    report.sources = agent.sources(clock.monotonic());
    report.drift = agent.drift_record(clock.monotonic());
    report.leaps = clock.leaps()[leaps_before..].to_vec();
    for cmd in agent.shutdown(clock.monotonic()) {
        apply_command(clock, &cmd).expect("infallible");
    }
    report
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod loss_tests;
