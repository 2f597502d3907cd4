//! The running agent: a driver around `nts_proto::clock::Agent` and the
//! sources (`nts_proto::source::Source`). It makes no protocol decision: it
//! arms the earliest deadline the sources and the clock agent ask for, moves
//! datagrams, runs key exchanges and name resolutions, feeds the results
//! back, carries out the clock agent's commands on the system clock (only in
//! discipline mode with CAP_SYS_TIME), writes saved associations off the
//! async threads, and publishes a status snapshot.

use crate::association_file::{prepare_state_dir, AssociationFile};
use crate::config::{ClockMode, Config};
use crate::exchange::NtpSocket;
use crate::ke::{self, KeOutcome};
use crate::publish::{publish, TrackState};
use crate::sources::{self, Slot};
use crate::status::StatusReport;
use crate::system_clock::{has_cap_sys_time, SystemClock};
use anyhow::{Context, Result};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::clock::{apply_command, Agent, AgentConfig, Clock, ClockCommand, InitialFrequency};
use nts_proto::ntp_packet::{kiss, NtpTimestamp};
use nts_proto::source::{Action, Association, KeyExchangeResult, SavedAssociation};
use nts_proto::time::{MonoTime, UnixTime};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Cookies a source tries to hold (placeholders ask the server for the rest).
pub const COOKIE_JAR: usize = nts_proto::source::DEFAULT_JAR_SIZE;

pub use crate::sources::host_port;

/// Everything shared with the status socket and the metrics endpoint.
pub struct Shared {
    pub report: Mutex<StatusReport>,
}

fn agent_config(cfg: &Config, observe: bool) -> AgentConfig {
    let mut a = AgentConfig::default();
    a.select.min_sources = cfg.clock.min_sources;
    a.discipline.step_threshold = cfg.clock.step_threshold;
    a.discipline.step_limit = cfg.clock.step_limit;
    a.discipline.panic_threshold = Some(cfg.clock.panic_threshold);
    a.discipline.max_frequency_ppm = cfg.clock.max_frequency;
    a.discipline.min_poll = cfg.clock.minpoll;
    a.discipline.max_poll = cfg.clock.maxpoll;
    a.discipline.observe_only = observe;
    a
}

/// Decide whether the clock may be touched: only in discipline mode with CAP_SYS_TIME.
pub fn effective_observe(cfg: &Config) -> bool {
    match cfg.clock.mode {
        ClockMode::Observe => true,
        ClockMode::Discipline if has_cap_sys_time() => false,
        ClockMode::Discipline => {
            tracing::warn!(
                "clock.mode = \"discipline\" but this process lacks CAP_SYS_TIME: running observe-only (measuring, never adjusting)"
            );
            true
        }
    }
}

/// The frequency to start from: the drift file (discipline mode), else what
/// the kernel has in force (a read, never a change), so a restart does not
/// disturb a clock that is already disciplined.
fn initial_frequency(cfg: &Config, observe: bool, acfg: &mut AgentConfig) -> Result<()> {
    let drift = match (&cfg.clock.drift_file, observe) {
        (Some(p), false) => crate::drift_file::read(p).context("clock.drift_file")?,
        _ => None,
    };
    let kernel = SystemClock::new();
    let reading = match (kernel.frequency(), kernel.sync_status()) {
        (Ok(f), Ok(s)) => Some((f, s)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot read the kernel's frequency: {e}");
            None
        }
    };
    let init = InitialFrequency::decide(
        drift.as_ref().map(|d| (d, crate::drift_file::unix_now())),
        reading.as_ref().map(|(f, s)| (*f, s)),
        acfg.discipline.wander,
    );
    init.apply(&mut acfg.discipline);
    tracing::info!(
        ppm = init.ppm,
        uncertainty_ppm = init.uncertainty_ppm,
        origin = ?init.origin,
        "starting frequency"
    );
    Ok(())
}

/// What a task of the driver reports back, for source number `slot`.
enum Done {
    /// A datagram for the request numbered `flight`, received at `rx`, the request sent at `tx`.
    Datagram {
        slot: usize,
        flight: u64,
        bytes: Vec<u8>,
        rx: NtpTimestamp,
        tx: NtpTimestamp,
    },
    KeyExchange {
        slot: usize,
        result: Box<Result<KeyExchangeResult, String>>,
    },
    Resolved {
        slot: usize,
        result: Result<Vec<SocketAddr>, String>,
    },
}

/// Saved associations, written in order on a blocking thread: file I/O and
/// fsync never run on the async threads.
struct Writer {
    tx: std::sync::mpsc::Sender<(AssociationFile, Option<SavedAssociation>)>,
    thread: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<(AssociationFile, Option<SavedAssociation>)>();
        let thread = tokio::task::spawn_blocking(move || {
            for (file, saved) in rx {
                if let Err(e) = file.store(saved.as_ref()) {
                    tracing::warn!(file = %file.path().display(), "cannot save NTS cookies: {e}");
                }
            }
        });
        Self { tx, thread }
    }

    fn store(&self, file: &AssociationFile, saved: Option<SavedAssociation>) {
        let _ = self.tx.send((file.clone(), saved));
    }

    /// Write what is queued, then stop.
    async fn finish(self) {
        drop(self.tx);
        let _ = self.thread.await;
    }
}

/// The shell around the sources: their I/O tasks and where results go.
struct Driver {
    cfg: Arc<Config>,
    tls: Arc<rustls::ClientConfig>,
    started: Instant,
    done: mpsc::UnboundedSender<Done>,
    /// Per source: the request in flight's number and its receiving task.
    flights: Vec<(u64, Option<tokio::task::AbortHandle>)>,
    writer: Writer,
}

impl Driver {
    fn now(&self) -> MonoTime {
        MonoTime::from_duration(self.started.elapsed())
    }

    /// Carry out every action source `i` asks for.
    fn run_actions(&mut self, i: usize, slot: &mut Slot, agent: &mut Agent) {
        while let Some(action) = slot.source.poll_action() {
            match action {
                Action::Send { to, datagram } => {
                    agent.poll_sent(slot.id, self.now().as_secs_f64());
                    self.send(i, to, datagram);
                }
                Action::KeyExchange => self.key_exchange(i, slot),
                Action::Resolve { host, port } => {
                    let done = self.done.clone();
                    tokio::spawn(async move {
                        let result = resolve(&host, port).await;
                        let _ = done.send(Done::Resolved { slot: i, result });
                    });
                }
                Action::Persist(saved) => {
                    if let Some(f) = &slot.state_file {
                        self.writer.store(f, saved.map(|b| *b));
                    }
                }
                Action::ForgetSamples => agent.reset_source(slot.id),
                Action::Note(e) => slot.log_event(&e),
                Action::Stopped(code) => {
                    tracing::warn!(source = %slot.name, kiss = %kiss::text(&code), "the server refuses this client: source stopped");
                }
            }
        }
        if !slot.source.waiting() {
            self.end_flight(i);
        }
    }

    fn end_flight(&mut self, i: usize) {
        if let Some(h) = self.flights[i].1.take() {
            h.abort();
        }
    }

    /// Send one request and pass back whatever comes back until the timeout.
    fn send(&mut self, i: usize, to: SocketAddr, datagram: Vec<u8>) {
        self.end_flight(i);
        let flight = self.flights[i].0 + 1;
        let done = self.done.clone();
        let timeout = sources::secs(self.cfg.nts.request_timeout);
        let task = tokio::spawn(async move {
            let run = async {
                let sock = NtpSocket::connect(to)?;
                let (tx, _) = sock.send(&datagram).await?;
                let mut buf = vec![0u8; 2048];
                loop {
                    let (n, rx, _) = sock.recv(&mut buf).await?;
                    let bytes = buf[..n].to_vec();
                    let d = Done::Datagram {
                        slot: i,
                        flight,
                        bytes,
                        rx,
                        tx,
                    };
                    if done.send(d).is_err() {
                        return Ok::<(), std::io::Error>(());
                    }
                }
            };
            if let Ok(Err(e)) = tokio::time::timeout(timeout, run).await {
                tracing::debug!(server = %to, "NTP exchange: {e}");
            }
        });
        self.flights[i] = (flight, Some(task.abort_handle()));
    }

    fn key_exchange(&self, i: usize, slot: &Slot) {
        let (connect, tls_name, port) = (slot.ke_connect_host(), slot.host.clone(), slot.port);
        let (tls, timeout) = (self.tls.clone(), sources::secs(self.cfg.nts.ke_timeout));
        let done = self.done.clone();
        tokio::spawn(async move {
            let result = ke_exchange(&connect, &tls_name, port, tls, timeout)
                .await
                .map(|ko| KeyExchangeResult {
                    association: Association {
                        aead: ko.aead,
                        c2s: ko.c2s,
                        s2c: ko.s2c,
                        ntp_host: ko.ntp_server,
                        ntp_port: ko.ntp_port,
                        established: UnixTime::from_system_time(SystemTime::now()),
                    },
                    cookies: ko.cookies,
                })
                .map_err(|e| format!("NTS-KE failed: {e}"));
            let result = Box::new(result);
            let _ = done.send(Done::KeyExchange { slot: i, result });
        });
    }

    /// Hand a task's result to its source.
    fn feed(&mut self, done: Done, slots: &mut [Slot], agent: &mut Agent) -> Vec<ClockCommand> {
        let now = self.now();
        let mut cmds = Vec::new();
        let i = match done {
            Done::Datagram {
                slot,
                flight,
                bytes,
                rx,
                tx,
            } => {
                if self.flights[slot].0 != flight {
                    return cmds;
                }
                let s = &mut slots[slot];
                if let Some(m) = s.source.handle_datagram(now, &bytes, rx, tx) {
                    s.measured(&m);
                    if let Ok(sample) = m.sample {
                        cmds.extend(agent.on_sample(s.id, sample, now.as_secs_f64()));
                    }
                }
                slot
            }
            Done::KeyExchange { slot, result } => {
                slots[slot].source.handle_key_exchange(now, *result);
                slot
            }
            Done::Resolved { slot, result } => {
                slots[slot].source.handle_resolved(now, result);
                slot
            }
        };
        self.run_actions(i, &mut slots[i], agent);
        cmds
    }

    /// Time has come: every source whose deadline passed acts.
    fn timeouts(&mut self, slots: &mut [Slot], agent: &mut Agent) {
        let now = self.now();
        for (i, s) in slots.iter_mut().enumerate() {
            if s.source.poll_timeout().is_some_and(|t| t <= now) {
                let was_waiting = s.source.waiting();
                s.source.handle_timeout(now);
                if was_waiting && !s.source.waiting() {
                    s.last_error = Some(format!(
                        "no {}answer within {:?}",
                        if s.source.authenticated() {
                            "authentic "
                        } else {
                            ""
                        },
                        sources::secs(self.cfg.nts.request_timeout)
                    ));
                }
                self.run_actions(i, s, agent);
            }
        }
    }
}

/// Every address of `host`; the source orders and filters them.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok(addrs)
}

/// Key exchange with `connect_host` (a name or address), verifying the certificate for `tls_name`.
async fn ke_exchange(
    connect_host: &str,
    tls_name: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<KeOutcome, ke::KeError> {
    if connect_host == tls_name {
        return ke::key_exchange(tls_name, port, tls, &AeadAlgorithm::ALL, timeout).await;
    }
    ke::key_exchange_at(
        connect_host,
        tls_name,
        port,
        tls,
        &AeadAlgorithm::ALL,
        timeout,
    )
    .await
}

/// Carry out the clock agent's commands (only with a clock to discipline).
fn apply(cmds: &[ClockCommand], clock: Option<&mut SystemClock>, commands: &mut u64) {
    let Some(c) = clock else { return };
    for cmd in cmds {
        match cmd {
            // Logged once per change by the status publisher.
            ClockCommand::Panic { offset, threshold } => {
                tracing::debug!(offset, threshold, "panic threshold: correction refused");
                continue;
            }
            ClockCommand::Step { offset } => tracing::warn!(offset, "stepping the clock"),
            ClockCommand::SetLeap(l) => {
                tracing::warn!(
                    leap = l.as_str(),
                    "telling the kernel about the leap second"
                )
            }
            _ => {}
        }
        *commands += 1;
        if let Err(e) = apply_command(c, cmd) {
            tracing::error!("clock adjustment failed: {e}");
        }
    }
}

/// The clock agent: configured, started from the right frequency, with the
/// leap-seconds list.
fn clock_agent(cfg: &Config, observe: bool) -> Result<Agent> {
    let mut acfg = agent_config(cfg, observe);
    initial_frequency(cfg, observe, &mut acfg)?;
    let mut agent = Agent::new(acfg);
    if let Some(p) = &cfg.clock.leap_seconds_file {
        let list = crate::leap_file::read(p).context("clock.leap_seconds_file")?;
        let unix = UnixTime::from_system_time(SystemTime::now()).as_secs_f64();
        if !list.is_valid_at(unix) {
            tracing::warn!(
                file = %p.display(),
                expired = %nts_proto::clock::leap::format_unix(list.expires_unix()),
                "leap-seconds list has expired: the sources decide leap seconds"
            );
        }
        agent.set_leap_seconds_list(Some(list));
    }
    Ok(agent)
}

/// The earliest deadline any source or the clock agent asks for.
fn next_deadline(slots: &mut [Slot], agent: &Agent) -> Option<MonoTime> {
    let mut due = agent.next_deadline().map(MonoTime::from_secs_f64);
    for s in slots.iter_mut() {
        // The clock agent's schedule for this source.
        if let Some(at) = agent.next_poll(s.id) {
            s.source.set_poll_at(MonoTime::from_secs_f64(at));
        }
        if let Some(t) = s.source.poll_timeout() {
            due = Some(due.map_or(t, |d| d.min(t)));
        }
    }
    due
}

/// Run the agent until `stop` turns true; then end a slew in progress,
/// write the drift file and the saved associations.
pub async fn run(
    cfg: Config,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let observe = effective_observe(&cfg);
    let cas: Vec<&std::path::Path> = cfg.nts.ca_files.iter().map(|p| p.as_path()).collect();
    let roots = ke::root_store(&cas, cfg.nts.system_roots).context("nts.ca_files")?;
    let state = prepare_state_dir(&cfg)?;
    let started = Instant::now();
    let mut agent = clock_agent(&cfg, observe)?;
    let mut drift_writer = match (&cfg.clock.drift_file, observe) {
        (Some(p), false) => Some(crate::drift_file::DriftWriter::new(
            p.clone(),
            sources::secs(cfg.clock.drift_interval),
        )),
        _ => None,
    };
    let now = MonoTime::from_duration(started.elapsed());
    let mut slots = sources::expand(&cfg, state.as_ref(), &mut agent, now).await?;
    let mut clock = (!observe).then(SystemClock::new);
    let mut commands = 0u64;
    let mode = if observe {
        "observe-only"
    } else {
        "discipline"
    };
    tracing::info!(sources = slots.len(), mode, "agent started");
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut d = Driver {
        cfg: Arc::new(cfg),
        tls: ke::tls_config(roots),
        started,
        done: done_tx,
        flights: vec![(0, None); slots.len()],
        writer: Writer::start(),
    };
    let mut track = TrackState::default();
    loop {
        let now = d.now();
        let when = next_deadline(&mut slots, &agent).unwrap_or(now + Duration::from_secs(1));
        let wait = when.saturating_since(now).min(Duration::from_secs(3600));
        let mut cmds = Vec::new();
        let mut stopping = false;
        tokio::select! {
            _ = stop.changed() => {
                stopping = true;
                cmds.extend(agent.shutdown(d.now().as_secs_f64()));
            }
            _ = tokio::time::sleep(wait) => {
                let now = d.now().as_secs_f64();
                if agent.next_deadline().is_some_and(|t| t <= now) {
                    cmds.extend(agent.tick(now));
                }
                d.timeouts(&mut slots, &mut agent);
            }
            Some(done) = done_rx.recv() => cmds.extend(d.feed(done, &mut slots, &mut agent)),
        }
        apply(&cmds, clock.as_mut(), &mut commands);
        if let Some(w) = drift_writer.as_mut() {
            let record = agent.drift_record(d.now().as_secs_f64());
            if let Err(e) = w.maybe_write(record, Instant::now(), stopping) {
                tracing::warn!("{e}");
            }
        }
        publish(
            &shared,
            &agent,
            &slots,
            d.now(),
            observe,
            commands,
            &mut track,
        );
        if stopping {
            for s in &slots {
                if let (Some(f), Some(saved)) = (&s.state_file, s.source.save()) {
                    d.writer.store(f, Some(saved));
                }
            }
            d.writer.finish().await;
            return Ok(());
        }
    }
}
