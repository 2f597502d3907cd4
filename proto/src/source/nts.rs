//! The NTS half of a source (RFC 8915 sections 5.7 and 6): the AEAD keys,
//! the cookie jar and the decision to run NTS-KE again. What an on-path
//! attacker would like to take away lives here, and nothing unauthenticated
//! ever ends an exchange, empties the jar or forces a key exchange:
//!
//! - a datagram that does not match the request, does not parse, is not
//!   authenticated, or fails the authenticator is *ignored* and counted;
//! - an NTS NAK is *noted*: the client waits for a valid response to the same
//!   request, and only if none arrives before the timeout does it run NTS-KE
//!   again, keeping its cookies and keys until that succeeds;
//! - only an authenticated kiss-o'-death reaches the source's kiss policy.
//!
//! It re-keys when the time server stops answering (after `unreachable_polls`
//! polls without an authentic answer), when the jar is empty, and when the
//! association is older than `ke_refresh`. Key exchanges are spread over
//! `ke_spread` at start and backed off exponentially, with jitter.

use super::judge::{Ignored, Judgement};
use super::saved::SavedAssociation;
use super::timers::Backoff;
use crate::aead::{AeadAlgorithm, AeadKey};
use crate::interleaved::InterleavedFields;
use crate::ntp_client::{build_request_interleaved, check_response, PendingRequest};
use crate::ntp_packet::NtpHeader;
use crate::time::{MonoTime, UnixTime};
use std::collections::VecDeque;
use std::time::Duration;

/// Cookies a source tries to hold (RFC 8915 section 6: eight).
pub const DEFAULT_JAR_SIZE: usize = 8;

/// How the NTS half behaves; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NtsSourceConfig {
    /// Cookies to hold; placeholders ask the server for the rest.
    pub jar_size: usize,
    /// Age after which the association is renewed even with cookies left.
    pub ke_refresh: Duration,
    /// First key exchange at a random moment within this of start.
    pub ke_spread: Duration,
    /// Wait after the first failed key exchange, doubled each time...
    pub ke_backoff_min: Duration,
    /// ...up to this.
    pub ke_backoff_max: Duration,
    /// Polls without an authentic answer after which the source re-keys.
    pub unreachable_polls: u32,
}

impl Default for NtsSourceConfig {
    fn default() -> Self {
        Self {
            jar_size: DEFAULT_JAR_SIZE,
            ke_refresh: Duration::from_secs(86_400),
            ke_spread: Duration::ZERO,
            ke_backoff_min: Duration::from_secs(4),
            ke_backoff_max: Duration::from_secs(1024),
            unreachable_polls: 4,
        }
    }
}

/// What NTS-KE gave: keys, cookies and where to send NTP.
#[derive(Clone)]
pub struct Association {
    pub aead: AeadAlgorithm,
    pub c2s: AeadKey,
    pub s2c: AeadKey,
    /// Negotiated NTP server (name or address) and port.
    pub ntp_host: String,
    pub ntp_port: u16,
    /// When the key exchange happened (its age must survive a restart).
    pub established: UnixTime,
}

impl std::fmt::Debug for Association {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Association")
            .field("aead", &self.aead)
            .field("ntp_host", &self.ntp_host)
            .field("ntp_port", &self.ntp_port)
            .field("established", &self.established)
            .finish_non_exhaustive()
    }
}

/// What the NTS half needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run NTS-KE now.
    KeyExchange,
    /// Send a request now ([`NtsSource::prepare_request`]).
    Request,
    /// Nothing may happen before this time (key exchanges backing off).
    NotBefore(MonoTime),
}

/// Why the source wants a new key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyReason {
    /// Never had an association (or it was not restored).
    Initial,
    /// Out of cookies.
    NoCookies,
    /// The association is older than `ke_refresh`.
    Refresh,
    /// A NAK was not followed by an authentic response (RFC 8915 section 5.7).
    Nak,
    /// The time server stopped answering.
    Unreachable,
}

impl RekeyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::NoCookies => "out of cookies",
            Self::Refresh => "refresh",
            Self::Nak => "NAK without an authentic response",
            Self::Unreachable => "time server unreachable",
        }
    }
}

/// What to make of one received datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Authentic: its cookies are in the jar; the exchange is over.
    Accepted(NtpHeader),
    /// Noted (a NAK, `None`) or ignored: keep waiting for the real answer.
    KeepWaiting(Option<Ignored>),
    /// An authenticated kiss-o'-death; the exchange is over.
    Kiss([u8; 4]),
}

/// A request in flight.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub pending: PendingRequest,
    /// A NAK matching this request arrived.
    pub nak_seen: bool,
    /// The accepted answer was interleaved (RFC 9769): it completes the previous exchange.
    pub interleaved: bool,
}

/// Counters of everything that happened, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounters {
    pub requests: u64,
    pub accepted: u64,
    pub timeouts: u64,
    pub naks: u64,
    pub kisses: u64,
    pub ke_ok: u64,
    pub ke_failures: u64,
    pub ignored_malformed: u64,
    pub ignored_mismatch: u64,
    pub ignored_unauthenticated: u64,
    pub ignored_forged: u64,
}

impl SourceCounters {
    /// Datagrams ignored for any reason.
    pub fn ignored(&self) -> u64 {
        self.ignored_malformed
            + self.ignored_mismatch
            + self.ignored_unauthenticated
            + self.ignored_forged
    }

    pub(super) fn count_ignored(&mut self, why: Ignored) {
        match why {
            Ignored::Malformed => self.ignored_malformed += 1,
            Ignored::Mismatch => self.ignored_mismatch += 1,
            Ignored::Unauthenticated => self.ignored_unauthenticated += 1,
            Ignored::Forged | Ignored::RepeatedNak => self.ignored_forged += 1,
        }
    }
}

/// Reachability transitions worth one log line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The first timeout after an answer.
    TimeoutsBegan,
    /// An authentic answer after `after` timeouts.
    Answering { after: u32 },
    /// The source decided to re-key.
    RekeyDue(RekeyReason),
}

/// Keys in use: the association, when it was made or restored (monotonic)
/// with its age then, and the jar.
#[derive(Debug, Clone)]
struct Keys {
    assoc: Association,
    at: MonoTime,
    age_then: Duration,
    /// Oldest first, and spent first: every cookie is used before its key
    /// ages out, rather than the newest slot cycling while the rest go stale.
    cookies: VecDeque<Vec<u8>>,
}

/// Where the association stands.
#[derive(Debug, Clone)]
enum State {
    /// Nothing to send with: a key exchange is the only way forward.
    NoKeys,
    /// A key exchange is running; the keys held before it (if any) stay.
    Exchanging(Option<Keys>),
    /// Keys and (maybe) cookies in hand.
    Associated(Keys),
}

/// The NTS half of one source.
#[derive(Debug, Clone)]
pub struct NtsSource {
    cfg: NtsSourceConfig,
    state: State,
    rekey: Option<RekeyReason>,
    ke_not_before: MonoTime,
    backoff: Backoff,
    missed: u32,
    counters: SourceCounters,
}

impl NtsSource {
    /// A source with nothing yet. Its first key exchange waits
    /// `jitter · ke_spread` (`jitter` uniform in [0, 1), from the shell's RNG).
    pub fn new(cfg: NtsSourceConfig, now: MonoTime, jitter: f64) -> Self {
        Self {
            cfg,
            state: State::NoKeys,
            rekey: Some(RekeyReason::Initial),
            ke_not_before: now + cfg.ke_spread.mul_f64(jitter.clamp(0.0, 1.0)),
            backoff: Backoff::new(cfg.ke_backoff_min, cfg.ke_backoff_max),
            missed: 0,
            counters: SourceCounters::default(),
        }
    }

    /// A source that resumes a saved association (after a restart): no key
    /// exchange while it has cookies and the association is younger than
    /// `ke_refresh`. A saved association that is too old is dropped.
    pub fn restored(
        cfg: NtsSourceConfig,
        saved: SavedAssociation,
        now: MonoTime,
        unix_now: UnixTime,
        jitter: f64,
    ) -> Self {
        let mut s = Self::new(cfg, now, jitter);
        let age = unix_now.saturating_since(saved.association.established);
        if saved.cookies.is_empty()
            || age >= cfg.ke_refresh
            || saved.association.established > unix_now + Duration::from_secs(60)
        {
            return s;
        }
        let mut cookies: VecDeque<_> = saved.cookies.into();
        cookies.truncate(cfg.jar_size);
        s.state = State::Associated(Keys {
            assoc: saved.association,
            at: now,
            age_then: age,
            cookies,
        });
        s.rekey = None;
        s
    }

    pub fn config(&self) -> &NtsSourceConfig {
        &self.cfg
    }

    fn keys(&self) -> Option<&Keys> {
        match &self.state {
            State::Associated(k) | State::Exchanging(Some(k)) => Some(k),
            State::NoKeys | State::Exchanging(None) => None,
        }
    }

    fn keys_mut(&mut self) -> Option<&mut Keys> {
        match &mut self.state {
            State::Associated(k) | State::Exchanging(Some(k)) => Some(k),
            State::NoKeys | State::Exchanging(None) => None,
        }
    }

    pub fn association(&self) -> Option<&Association> {
        self.keys().map(|k| &k.assoc)
    }

    pub fn cookies(&self) -> usize {
        self.keys().map_or(0, |k| k.cookies.len())
    }

    /// A key exchange is running.
    pub fn exchanging(&self) -> bool {
        matches!(self.state, State::Exchanging(_))
    }

    pub fn counters(&self) -> &SourceCounters {
        &self.counters
    }

    pub(super) fn counters_mut(&mut self) -> &mut SourceCounters {
        &mut self.counters
    }

    /// Why a key exchange is due, if one is.
    pub fn rekey_reason(&self) -> Option<RekeyReason> {
        self.rekey
    }

    /// Polls in a row without an authentic answer.
    pub fn missed_polls(&self) -> u32 {
        self.missed
    }

    /// Age of the association at `now`.
    pub fn association_age(&self, now: MonoTime) -> Option<Duration> {
        self.keys().map(|k| k.age_then + now.saturating_since(k.at))
    }

    /// Earliest time a key exchange may start.
    pub fn ke_not_before(&self) -> MonoTime {
        self.ke_not_before
    }

    /// Time until the next key exchange may start, when one is wanted; zero
    /// when it may start now. What `status` shows, so an operator sees a
    /// backoff instead of silence.
    pub fn next_key_exchange_in(&self, now: MonoTime) -> Option<Duration> {
        if self.rekey.is_none() && self.keys().is_some() {
            return None;
        }
        Some(self.ke_not_before.saturating_since(now))
    }

    fn refresh_rekey(&mut self, now: MonoTime) {
        if self.rekey.is_some() {
            return;
        }
        if self.cookies() == 0 {
            self.rekey = Some(RekeyReason::NoCookies);
        } else if self
            .association_age(now)
            .is_some_and(|a| a >= self.cfg.ke_refresh)
        {
            self.rekey = Some(RekeyReason::Refresh);
        }
    }

    /// What to do at `now`.
    pub fn next_step(&mut self, now: MonoTime) -> Step {
        self.refresh_rekey(now);
        let usable = self.cookies() > 0;
        match self.rekey {
            None => Step::Request,
            Some(_) if now >= self.ke_not_before => Step::KeyExchange,
            // Until a new key exchange succeeds, keep polling with what we have.
            Some(_) if usable => Step::Request,
            Some(_) => Step::NotBefore(self.ke_not_before),
        }
    }

    /// The shell starts NTS-KE; keys held so far stay until it succeeds.
    pub fn begin_key_exchange(&mut self) {
        let held = match std::mem::replace(&mut self.state, State::NoKeys) {
            State::Associated(k) | State::Exchanging(Some(k)) => Some(k),
            State::NoKeys | State::Exchanging(None) => None,
        };
        self.state = State::Exchanging(held);
    }

    /// Leave the exchanging state with the keys held before it.
    fn end_key_exchange(&mut self) {
        if let State::Exchanging(held) = &mut self.state {
            let held = held.take();
            self.state = held.map_or(State::NoKeys, State::Associated);
        }
    }

    /// Drop the keys and cookies (a time server this client must not use):
    /// only a key exchange helps now.
    pub fn discard(&mut self) {
        self.state = State::NoKeys;
        self.rekey.get_or_insert(RekeyReason::Initial);
    }

    /// NTS-KE succeeded at `now`. Returns whether the time server changed.
    pub fn ke_succeeded(
        &mut self,
        assoc: Association,
        cookies: Vec<Vec<u8>>,
        now: MonoTime,
    ) -> bool {
        let changed = self
            .association()
            .is_none_or(|a| a.ntp_host != assoc.ntp_host || a.ntp_port != assoc.ntp_port);
        self.counters.ke_ok += 1;
        let mut cookies: VecDeque<_> = cookies.into();
        cookies.truncate(self.cfg.jar_size);
        self.state = State::Associated(Keys {
            assoc,
            at: now,
            age_then: Duration::ZERO,
            cookies,
        });
        self.rekey = None;
        self.backoff.reset();
        self.missed = 0;
        changed
    }

    /// NTS-KE failed (or gave nothing usable): back off exponentially, with
    /// `jitter` (uniform in [0, 1)) taking up to half off the wait. Returns
    /// the time of the next attempt.
    pub fn ke_failed(&mut self, now: MonoTime, jitter: f64) -> MonoTime {
        self.end_key_exchange();
        self.counters.ke_failures += 1;
        self.ke_not_before = self.backoff.fail(now, jitter);
        if self.rekey.is_none() {
            self.rekey = Some(RekeyReason::Initial);
        }
        self.ke_not_before
    }

    /// Key exchanges failed in a row.
    pub fn ke_failures_in_row(&self) -> u32 {
        self.backoff.failures()
    }

    /// Build the next request into `out`, spending the oldest cookie and
    /// asking for the missing ones with placeholders, in interleaved mode
    /// when `fields` is set. `None` without keys or cookies.
    pub fn prepare_request(
        &mut self,
        out: &mut Vec<u8>,
        fields: Option<InterleavedFields>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Option<InFlight> {
        let jar_size = self.cfg.jar_size;
        let keys = self.keys_mut()?;
        let cookie = keys.cookies.pop_front()?;
        let placeholders = jar_size.saturating_sub(keys.cookies.len() + 1);
        let pending = build_request_interleaved(
            out,
            Some((&cookie, placeholders, &keys.assoc.c2s)),
            fields,
            random,
        );
        self.counters.requests += 1;
        Some(InFlight {
            pending,
            nak_seen: false,
            interleaved: false,
        })
    }

    /// Judge one datagram received while `flight` waits for its answer.
    pub fn on_datagram(&mut self, data: &[u8], flight: &mut InFlight) -> Verdict {
        let jar_size = self.cfg.jar_size;
        let Some(keys) = self.keys_mut() else {
            self.counters.count_ignored(Ignored::Mismatch);
            return Verdict::KeepWaiting(Some(Ignored::Mismatch));
        };
        let why = match Judgement::of(check_response(data, &flight.pending, Some(&keys.assoc.s2c)))
        {
            Judgement::Accept(c) => {
                let room = jar_size.saturating_sub(keys.cookies.len());
                keys.cookies.extend(c.cookies.into_iter().take(room));
                self.counters.accepted += 1;
                flight.interleaved = c.interleaved;
                return Verdict::Accepted(c.header);
            }
            Judgement::Kiss(code) => {
                self.counters.kisses += 1;
                return Verdict::Kiss(code);
            }
            Judgement::Nak if !flight.nak_seen => {
                flight.nak_seen = true;
                self.counters.naks += 1;
                return Verdict::KeepWaiting(None);
            }
            Judgement::Nak => Ignored::RepeatedNak,
            Judgement::Ignore(why) => why,
        };
        self.counters.count_ignored(why);
        Verdict::KeepWaiting(Some(why))
    }

    /// An authentic answer (or authenticated kiss) ended the exchange: the
    /// server is alive. Returns a transition to log, if any.
    pub fn answered(&mut self) -> Option<Transition> {
        let after = std::mem::take(&mut self.missed);
        if matches!(
            self.rekey,
            Some(RekeyReason::Unreachable | RekeyReason::Nak)
        ) {
            // The server answers after all: no reason to leave it.
            self.rekey = None;
        }
        (after > 0).then_some(Transition::Answering { after })
    }

    /// No authentic answer to `flight` before its timeout: decide whether a
    /// key exchange is due.
    pub fn timed_out(&mut self, flight: &InFlight) -> Option<Transition> {
        self.counters.timeouts += 1;
        self.missed = self.missed.saturating_add(1);
        if self.rekey.is_none() {
            if flight.nak_seen {
                self.rekey = Some(RekeyReason::Nak);
                return Some(Transition::RekeyDue(RekeyReason::Nak));
            }
            if self.missed >= self.cfg.unreachable_polls {
                self.rekey = Some(RekeyReason::Unreachable);
                return Some(Transition::RekeyDue(RekeyReason::Unreachable));
            }
        }
        (self.missed == 1).then_some(Transition::TimeoutsBegan)
    }

    /// What to persist so a restart needs no key exchange.
    pub fn save(&self) -> Option<SavedAssociation> {
        let k = self.keys()?;
        if k.cookies.is_empty() {
            return None;
        }
        Some(SavedAssociation {
            association: k.assoc.clone(),
            cookies: k.cookies.iter().cloned().collect(),
        })
    }
}
