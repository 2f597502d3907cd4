//! One configured source, NTS or plain, as a sans-IO state machine driven
//! quinn-style: the shell asks [`Source::poll_timeout`] when to wake it,
//! calls [`Source::handle_timeout`] then, carries out every
//! [`Source::poll_action`] (send a datagram, run NTS-KE, resolve a name,
//! persist the association) and feeds results back through
//! [`Source::handle_datagram`], [`Source::handle_key_exchange`] and
//! [`Source::handle_resolved`]. Every protocol decision is made here.

use super::action::{Action, Event, KeyExchangeResult};
use super::addresses::{interleave_families, usable_server_addresses, AddressBook};
use super::judge::{Ignored, Judgement};
use super::kiss::{KissAction, KissPolicy};
use super::measurement::Measurement;
use super::nts::{InFlight, NtsSource, SourceCounters, Step, Transition, Verdict};
use super::saved::SavedAssociation;
use super::timers::{Backoff, Timer, TimerTable};
use crate::interleaved::{InterleavedClient, Timestamps};
use crate::ntp_client::{build_request_interleaved, check_response, PendingRequest};
use crate::ntp_packet::{NtpHeader, NtpTimestamp};
use crate::time::MonoTime;
use rand_core::RngCore;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How a source behaves beyond its NTS half.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// How long to wait for the answer to a request.
    pub request_timeout: Duration,
    /// First hold after a RATE kiss, doubled on repeats up to 16 times.
    pub rate_holdoff: Duration,
    /// Ask for interleaved mode (RFC 9769).
    pub interleaved: bool,
    /// This host's addresses: a negotiated time server there is not used.
    pub own_addresses: Vec<IpAddr>,
    pub allow_own_host: bool,
    /// Backoff of failed name resolutions.
    pub resolve_backoff_min: Duration,
    pub resolve_backoff_max: Duration,
    /// Polls without an answer after which a plain source resolves its name again.
    pub unreachable_polls: u32,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(2),
            rate_holdoff: Duration::from_secs(64),
            interleaved: false,
            own_addresses: Vec::new(),
            allow_own_host: false,
            resolve_backoff_min: Duration::from_secs(4),
            resolve_backoff_max: Duration::from_secs(1024),
            unreachable_polls: 4,
        }
    }
}

/// The request in flight.
#[derive(Debug, Clone)]
enum Pending {
    Nts(InFlight),
    Plain(PendingRequest),
}

#[derive(Debug, Clone)]
struct Flight {
    to: SocketAddr,
    pending: Pending,
}

/// Where the source stands.
#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for its timers.
    Idle,
    /// The shell runs NTS-KE.
    KeyExchange,
    /// The shell resolves the time server's name.
    Resolving,
    /// A request is out.
    Waiting(Flight),
    /// DENY or RSTR.
    Stopped([u8; 4]),
}

/// One configured source; see the module documentation.
pub struct Source {
    cfg: SourceConfig,
    /// The NTS half; `None` for a plain NTP source.
    nts: Option<NtsSource>,
    /// A plain source's server name, resolved when `addresses` is empty.
    plain_server: Option<(String, u16)>,
    /// Addresses given at start (pool members): never resolved again.
    fixed: bool,
    addresses: AddressBook,
    kiss: KissPolicy,
    xleave: Option<InterleavedClient>,
    xleave_server: Option<SocketAddr>,
    timers: TimerTable,
    resolve_backoff: Backoff,
    phase: Phase,
    actions: VecDeque<Action>,
    /// A plain source's counters (an NTS source's are its NTS half's).
    plain_counters: SourceCounters,
    plain_missed: u32,
    /// Accepted answers since the association was last persisted.
    answers_since_save: usize,
    rng: Box<dyn RngCore + Send>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("nts", &self.nts)
            .field("addresses", &self.addresses)
            .field("phase", &self.phase)
            .field("timers", &self.timers)
            .finish_non_exhaustive()
    }
}

impl Source {
    fn with(cfg: SourceConfig, nts: Option<NtsSource>, rng: Box<dyn RngCore + Send>) -> Self {
        let mut timers = TimerTable::default();
        timers.set(Timer::Poll, MonoTime::ZERO);
        Self {
            kiss: KissPolicy::new(cfg.rate_holdoff),
            xleave: cfg.interleaved.then(InterleavedClient::new),
            resolve_backoff: Backoff::new(cfg.resolve_backoff_min, cfg.resolve_backoff_max),
            cfg,
            nts,
            plain_server: None,
            fixed: false,
            addresses: AddressBook::default(),
            xleave_server: None,
            timers,
            phase: Phase::Idle,
            actions: VecDeque::new(),
            plain_counters: SourceCounters::default(),
            plain_missed: 0,
            answers_since_save: 0,
            rng,
        }
    }

    /// An NTS source around its NTS half (new or restored). `rng` must be
    /// a cryptographic generator: it makes the Unique Identifiers and nonces.
    pub fn nts(cfg: SourceConfig, nts: NtsSource, rng: Box<dyn RngCore + Send>) -> Self {
        Self::with(cfg, Some(nts), rng)
    }

    /// A plain NTP source for `host:port`.
    pub fn plain(cfg: SourceConfig, host: String, port: u16, rng: Box<dyn RngCore + Send>) -> Self {
        let mut s = Self::with(cfg, None, rng);
        s.plain_server = Some((host, port));
        s
    }

    /// Use these addresses and never resolve (a pool member's address).
    pub fn with_fixed_addresses(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.addresses.set(addrs);
        self.fixed = true;
        self
    }

    /// The clock agent's schedule: poll at `at` (or as soon after as the
    /// other timers allow).
    pub fn set_poll_at(&mut self, at: MonoTime) {
        self.timers.set(Timer::Poll, at);
    }

    /// When the shell must call [`handle_timeout`](Self::handle_timeout)
    /// next; `None` while it runs a key exchange or a resolution for this
    /// source, or after it stopped.
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        match &self.phase {
            Phase::Idle => {
                Some(
                    self.timers
                        .all_passed(&[Timer::Poll, Timer::Backoff, Timer::RateHold]),
                )
            }
            Phase::Waiting(_) => self.timers.get(Timer::Response),
            Phase::KeyExchange | Phase::Resolving | Phase::Stopped(_) => None,
        }
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Time has reached `now`: time out the request in flight, or start a poll.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        match self.phase {
            Phase::Waiting(_) if self.timers.get(Timer::Response).is_some_and(|t| now >= t) => {
                self.time_out(now)
            }
            Phase::Idle if self.poll_timeout().is_some_and(|t| now >= t) => self.start_poll(now),
            _ => {}
        }
    }

    fn note(&mut self, e: Event) {
        self.actions.push_back(Action::Note(e));
    }

    fn jitter(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn start_poll(&mut self, now: MonoTime) {
        if let Some(nts) = self.nts.as_mut() {
            match nts.next_step(now) {
                Step::NotBefore(t) => {
                    self.timers.set(Timer::Backoff, t);
                    return;
                }
                Step::KeyExchange => {
                    nts.begin_key_exchange();
                    self.phase = Phase::KeyExchange;
                    self.actions.push_back(Action::KeyExchange);
                    return;
                }
                Step::Request => {}
            }
        }
        if self.addresses.is_empty() {
            let target = match (&self.nts, &self.plain_server) {
                (Some(n), _) => n.association().map(|a| (a.ntp_host.clone(), a.ntp_port)),
                (None, s) => s.clone(),
            };
            if let Some((host, port)) = target {
                self.phase = Phase::Resolving;
                self.actions.push_back(Action::Resolve { host, port });
            }
            return;
        }
        self.send_request(now);
    }

    fn send_request(&mut self, now: MonoTime) {
        let Some(to) = self.addresses.current() else {
            self.phase = Phase::Idle;
            return;
        };
        if self.xleave_server != Some(to) {
            // The previous exchange was not with this server.
            if let Some(x) = self.xleave.as_mut() {
                x.reset();
            }
            self.xleave_server = Some(to);
        }
        let fields = self.xleave.as_ref().and_then(|x| x.request_fields());
        let mut out = Vec::with_capacity(1024);
        let rng = &mut self.rng;
        let mut random = |b: &mut [u8]| rng.fill_bytes(b);
        let pending = match self.nts.as_mut() {
            Some(n) => match n.prepare_request(&mut out, fields, &mut random) {
                Some(f) => Pending::Nts(f),
                None => {
                    self.phase = Phase::Idle;
                    return;
                }
            },
            None => {
                self.plain_counters.requests += 1;
                Pending::Plain(build_request_interleaved(
                    &mut out,
                    None,
                    fields,
                    &mut random,
                ))
            }
        };
        self.timers
            .set(Timer::Response, now + self.cfg.request_timeout);
        self.phase = Phase::Waiting(Flight { to, pending });
        self.actions.push_back(Action::Send { to, datagram: out });
    }

    fn time_out(&mut self, _now: MonoTime) {
        let Phase::Waiting(flight) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        self.timers.clear(Timer::Response);
        if !self.fixed || self.addresses.all().len() > 1 {
            self.addresses.rotate();
        }
        let t = match (&mut self.nts, &flight.pending) {
            (Some(n), Pending::Nts(f)) => n.timed_out(f),
            _ => {
                self.plain_counters.timeouts += 1;
                self.plain_missed = self.plain_missed.saturating_add(1);
                if !self.fixed && self.plain_missed % self.cfg.unreachable_polls.max(1) == 0 {
                    // Perhaps the name points elsewhere now.
                    self.addresses.clear();
                }
                (self.plain_missed == 1).then_some(Transition::TimeoutsBegan)
            }
        };
        if let Some(t) = t {
            self.note(Event::Transition(t));
        }
    }

    /// A datagram arrived (at `rx`, for the request sent at `tx`, on our
    /// clock). Returns the measurement when it was the authentic answer;
    /// anything else is judged, counted and ignored.
    pub fn handle_datagram(
        &mut self,
        now: MonoTime,
        data: &[u8],
        rx: NtpTimestamp,
        tx: NtpTimestamp,
    ) -> Option<Measurement> {
        let Phase::Waiting(flight) = &mut self.phase else {
            // Late, stray or replayed: there is no request it could answer.
            self.counters_mut().count_ignored(Ignored::Mismatch);
            return None;
        };
        let to = flight.to;
        let (header, interleaved, authenticated, kiss) = match (&mut self.nts, &mut flight.pending)
        {
            (Some(n), Pending::Nts(f)) => match n.on_datagram(data, f) {
                Verdict::Accepted(h) => (h, f.interleaved, true, None),
                Verdict::Kiss(code) => (NtpHeader::default(), false, true, Some(code)),
                Verdict::KeepWaiting(None) => {
                    self.note(Event::NakNoted);
                    return None;
                }
                Verdict::KeepWaiting(Some(_)) => return None,
            },
            (_, Pending::Plain(p)) => match Judgement::of(check_response(data, p, None)) {
                Judgement::Accept(c) => {
                    self.plain_counters.accepted += 1;
                    (c.header, c.interleaved, false, None)
                }
                Judgement::Kiss(code) => {
                    self.plain_counters.kisses += 1;
                    (NtpHeader::default(), false, false, Some(code))
                }
                Judgement::Nak => return None,
                Judgement::Ignore(why) => {
                    self.plain_counters.count_ignored(why);
                    return None;
                }
            },
            (None, Pending::Nts(_)) => return None,
        };
        self.phase = Phase::Idle;
        self.timers.clear(Timer::Response);
        self.answered();
        if let Some(code) = kiss {
            self.on_kiss(code, now);
            return None;
        }
        self.kiss.on_answer();
        let ts = match self.xleave.as_mut() {
            Some(x) => x.complete(&header, interleaved, tx, rx),
            None => Timestamps {
                t1: tx,
                t2: header.receive_timestamp,
                t3: header.transmit_timestamp,
                t4: rx,
            },
        };
        self.maybe_persist();
        Some(Measurement::new(to, header, ts, interleaved, authenticated))
    }

    fn answered(&mut self) {
        let t = match self.nts.as_mut() {
            Some(n) => n.answered(),
            None => {
                let after = std::mem::take(&mut self.plain_missed);
                (after > 0).then_some(Transition::Answering { after })
            }
        };
        if let Some(t) = t {
            self.note(Event::Transition(t));
        }
    }

    fn on_kiss(&mut self, code: [u8; 4], now: MonoTime) {
        self.note(Event::Kiss(code));
        match self.kiss.on_kiss(code, now) {
            KissAction::Hold(until) => self.timers.set(Timer::RateHold, until),
            KissAction::Stop => {
                self.phase = Phase::Stopped(code);
                self.actions.push_back(Action::Stopped(code));
            }
            KissAction::Nothing => {}
        }
    }

    /// Persist once the saved cookies have all been spent: a restart then
    /// finds cookies it has not sent before, at one write per jar.
    fn maybe_persist(&mut self) {
        let Some(n) = &self.nts else { return };
        self.answers_since_save += 1;
        if self.answers_since_save >= n.config().jar_size {
            self.answers_since_save = 0;
            self.actions
                .push_back(Action::Persist(n.save().map(Box::new)));
        }
    }

    /// NTS-KE finished at `now`.
    pub fn handle_key_exchange(
        &mut self,
        now: MonoTime,
        result: Result<KeyExchangeResult, String>,
    ) {
        if !matches!(self.phase, Phase::KeyExchange) {
            return;
        }
        self.phase = Phase::Idle;
        let jitter = self.jitter();
        let Some(nts) = self.nts.as_mut() else { return };
        match result {
            Ok(r) => {
                let reason = nts.rekey_reason();
                let after_failures = nts.ke_failures_in_row();
                let cookies = r.cookies.len();
                let changed = nts.ke_succeeded(r.association, r.cookies, now);
                let save = nts.save().map(Box::new);
                if changed {
                    self.addresses.clear();
                    self.actions.push_back(Action::ForgetSamples);
                }
                self.note(Event::KeyExchangeDone {
                    reason,
                    time_server_changed: changed,
                    cookies,
                    after_failures,
                });
                self.answers_since_save = 0;
                self.actions.push_back(Action::Persist(save));
                self.start_poll(now);
            }
            Err(error) => {
                let next = nts.ke_failed(now, jitter);
                let failures = nts.ke_failures_in_row();
                let usable = nts.cookies() > 0;
                self.timers.set(Timer::Backoff, next);
                self.note(Event::KeyExchangeFailed {
                    error,
                    retry_in: next.saturating_since(now),
                    failures,
                });
                if usable && !self.addresses.is_empty() {
                    // Until a key exchange succeeds, this poll goes on with the keys held.
                    self.send_request(now);
                }
            }
        }
    }

    /// The name resolution the source asked for finished at `now`.
    pub fn handle_resolved(&mut self, now: MonoTime, result: Result<Vec<SocketAddr>, String>) {
        if !matches!(self.phase, Phase::Resolving) {
            return;
        }
        self.phase = Phase::Idle;
        let addrs = result.map(interleave_families).and_then(|a| {
            if self.nts.is_none() {
                return Ok(a);
            }
            usable_server_addresses(a, &self.cfg.own_addresses, self.cfg.allow_own_host).map_err(
                |e| {
                    // Keys for a server we must not use are worth nothing: re-key.
                    let jitter = self.jitter();
                    if let Some(n) = self.nts.as_mut() {
                        n.discard();
                        let next = n.ke_failed(now, jitter);
                        self.timers.set(Timer::Backoff, next);
                    }
                    e.to_string()
                },
            )
        });
        match addrs {
            Ok(a) if !a.is_empty() => {
                self.resolve_backoff.reset();
                self.addresses.set(a);
                self.send_request(now);
            }
            other => {
                let error = other.err().unwrap_or_else(|| "no usable address".into());
                let jitter = self.jitter();
                let next = self.resolve_backoff.fail(now, jitter);
                let held = self.timers.get(Timer::Backoff).unwrap_or(MonoTime::ZERO);
                self.timers.set(Timer::Backoff, next.max(held));
                self.note(Event::ResolveFailed(error));
            }
        }
    }

    /// What to persist now (at shutdown).
    pub fn save(&self) -> Option<SavedAssociation> {
        self.nts.as_ref().and_then(NtsSource::save)
    }

    pub fn nts_half(&self) -> Option<&NtsSource> {
        self.nts.as_ref()
    }

    pub fn authenticated(&self) -> bool {
        self.nts.is_some()
    }

    fn counters_mut(&mut self) -> &mut SourceCounters {
        match self.nts.as_mut() {
            Some(n) => n.counters_mut(),
            None => &mut self.plain_counters,
        }
    }

    pub fn counters(&self) -> SourceCounters {
        match &self.nts {
            Some(n) => *n.counters(),
            None => self.plain_counters,
        }
    }

    /// Polls in a row without an answer.
    pub fn missed_polls(&self) -> u32 {
        self.nts
            .as_ref()
            .map_or(self.plain_missed, NtsSource::missed_polls)
    }

    /// The address the next request goes to.
    pub fn address(&self) -> Option<SocketAddr> {
        self.addresses.current()
    }

    pub fn addresses(&self) -> &[SocketAddr] {
        self.addresses.all()
    }

    /// The kiss code that stopped this source.
    pub fn stopped_by(&self) -> Option<[u8; 4]> {
        match self.phase {
            Phase::Stopped(c) => Some(c),
            _ => None,
        }
    }

    /// The last kiss that counted.
    pub fn last_kiss(&self) -> Option<[u8; 4]> {
        self.kiss.last()
    }

    /// A request is out.
    pub fn waiting(&self) -> bool {
        matches!(self.phase, Phase::Waiting(_))
    }

    /// Interleaved mode: (interleaved, basic) answers; `None` when off.
    pub fn interleave_counts(&self) -> Option<(u64, u64)> {
        self.xleave.as_ref().map(InterleavedClient::counts)
    }
}
