//! The client's NTS association with one server (RFC 8915 sections 5.7 and 6),
//! as a state machine the agent's async shell drives.
//!
//! It owns what an on-path attacker would like to take away: the AEAD keys,
//! the cookie jar and the decision to run NTS-KE again. Every datagram the
//! shell receives while it waits for an answer goes through
//! [`NtsSource::on_datagram`], which says whether to use it or ignore it;
//! nothing unauthenticated ever ends an exchange, empties the jar or forces a
//! key exchange:
//!
//! - a datagram that does not match the request (origin timestamp, Unique
//!   Identifier), does not parse, is not authenticated, or fails the
//!   authenticator is *ignored* and counted, and the wait goes on;
//! - an NTS NAK (which carries no authenticator) is *noted*: as RFC 8915
//!   section 5.7 says, the client waits for a valid response to the same
//!   request, and only if none arrives before the timeout does it run NTS-KE
//!   again, keeping its cookies and keys until that succeeds;
//! - only an authenticated kiss-o'-death changes what the source does
//!   (RATE: hold off; DENY/RSTR: stop).
//!
//! The source also re-keys when the time server stops answering (after
//! `unreachable_polls` polls without an authentic answer, so a client moves to
//! a live time server that the KE servers hand out), when the jar is empty,
//! and when the association is older than `ke_refresh`. Key exchanges are
//! spread over `ke_spread` at start and backed off exponentially, with
//! jitter, when they fail, so a fleet never storms its KE servers.
//!
//! Time is monotonic seconds (`f64`, any epoch) for timers and Unix seconds
//! for the association's age, which must survive a restart
//! ([`SavedAssociation`]).

use crate::aead::{AeadAlgorithm, AeadKey};
use crate::interleaved::InterleavedFields;
use crate::ntp_client::{
    build_request_interleaved, check_response, PendingRequest, ResponseCheckError,
};
use crate::ntp_packet::NtpHeader;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

/// Cookies a source tries to hold (RFC 8915 section 6: eight).
pub const DEFAULT_JAR_SIZE: usize = 8;

/// How a source behaves; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NtsSourceConfig {
    /// Cookies to hold; placeholders ask the server for the rest.
    pub jar_size: usize,
    /// Seconds after which the association is renewed even with cookies left.
    pub ke_refresh: f64,
    /// First key exchange at a random moment within this many seconds of start.
    pub ke_spread: f64,
    /// Wait after the first failed key exchange (seconds), doubled each time...
    pub ke_backoff_min: f64,
    /// ...up to this (seconds).
    pub ke_backoff_max: f64,
    /// Polls without an authentic answer after which the source re-keys.
    pub unreachable_polls: u32,
    /// Hold-off after an authenticated RATE kiss (seconds), doubled on repeats up to 16×.
    pub rate_holdoff: f64,
}

impl Default for NtsSourceConfig {
    fn default() -> Self {
        Self {
            jar_size: DEFAULT_JAR_SIZE,
            ke_refresh: 86_400.0,
            ke_spread: 0.0,
            ke_backoff_min: 4.0,
            ke_backoff_max: 1024.0,
            unreachable_polls: 4,
            rate_holdoff: 64.0,
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
    /// Unix time of the key exchange.
    pub established_unix: u64,
}

impl std::fmt::Debug for Association {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Association")
            .field("aead", &self.aead)
            .field("ntp_host", &self.ntp_host)
            .field("ntp_port", &self.ntp_port)
            .field("established_unix", &self.established_unix)
            .finish_non_exhaustive()
    }
}

/// What the shell should do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Run NTS-KE now, then report with [`NtsSource::ke_succeeded`] or [`NtsSource::ke_failed`].
    KeyExchange,
    /// Send a request now ([`NtsSource::prepare_request`]).
    Request,
    /// Nothing may happen before this monotonic time.
    NotBefore(f64),
    /// An authenticated DENY or RSTR: this source is done.
    Stopped,
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

/// Why a datagram was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Does not parse as an NTP server response.
    Malformed,
    /// Origin timestamp or Unique Identifier is not our request's: stray, stale or replayed.
    Mismatch,
    /// No authenticator (an unauthenticated answer or kiss).
    Unauthenticated,
    /// The authenticator does not verify: forged or corrupted.
    Forged,
    /// A second NAK for the same request.
    RepeatedNak,
}

/// What to make of one received datagram.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Authentic: its cookies are in the jar; the exchange is over.
    Accepted(NtpHeader),
    /// Noted (a NAK) or ignored: keep waiting for the real answer.
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

/// One NTS source.
#[derive(Debug, Clone)]
pub struct NtsSource {
    cfg: NtsSourceConfig,
    assoc: Option<Association>,
    /// Monotonic time the association was made or restored, and its Unix age then.
    assoc_at: f64,
    assoc_age_then: f64,
    /// Oldest first, and spent first: every cookie is used before its key
    /// ages out, rather than the newest slot cycling while the rest go stale.
    cookies: VecDeque<Vec<u8>>,
    /// Resolved addresses of the time server and the one in use.
    addresses: Vec<SocketAddr>,
    address_index: usize,
    rekey: Option<RekeyReason>,
    ke_not_before: f64,
    ke_failures_in_row: u32,
    hold_until: f64,
    rate_kisses_in_row: u32,
    missed: u32,
    stopped: Option<[u8; 4]>,
    counters: SourceCounters,
}

impl NtsSource {
    /// A source with nothing yet. Its first key exchange waits
    /// `jitter · ke_spread` seconds (`jitter` uniform in [0, 1), from the shell's RNG).
    pub fn new(cfg: NtsSourceConfig, now: f64, jitter: f64) -> Self {
        Self {
            cfg,
            assoc: None,
            assoc_at: now,
            assoc_age_then: 0.0,
            cookies: VecDeque::new(),
            addresses: Vec::new(),
            address_index: 0,
            rekey: Some(RekeyReason::Initial),
            ke_not_before: now + cfg.ke_spread * jitter.clamp(0.0, 1.0),
            ke_failures_in_row: 0,
            hold_until: f64::NEG_INFINITY,
            rate_kisses_in_row: 0,
            missed: 0,
            stopped: None,
            counters: SourceCounters::default(),
        }
    }

    /// A source that resumes a saved association (after a restart): no key
    /// exchange while it has cookies and the association is younger than
    /// `ke_refresh`. A saved association that is too old is dropped.
    pub fn restored(
        cfg: NtsSourceConfig,
        saved: SavedAssociation,
        now: f64,
        unix_now: u64,
        jitter: f64,
    ) -> Self {
        let mut s = Self::new(cfg, now, jitter);
        let age = unix_now.saturating_sub(saved.association.established_unix) as f64;
        if saved.cookies.is_empty()
            || age >= cfg.ke_refresh
            || saved.association.established_unix > unix_now + 60
        {
            return s;
        }
        s.assoc = Some(saved.association);
        s.assoc_at = now;
        s.assoc_age_then = age;
        s.cookies = saved.cookies.into();
        s.cookies.truncate(cfg.jar_size);
        s.rekey = None;
        s
    }

    pub fn config(&self) -> &NtsSourceConfig {
        &self.cfg
    }

    pub fn association(&self) -> Option<&Association> {
        self.assoc.as_ref()
    }

    pub fn cookies(&self) -> usize {
        self.cookies.len()
    }

    pub fn counters(&self) -> &SourceCounters {
        &self.counters
    }

    /// Why a key exchange is due, if one is.
    pub fn rekey_reason(&self) -> Option<RekeyReason> {
        self.rekey
    }

    /// Polls in a row without an authentic answer.
    pub fn missed_polls(&self) -> u32 {
        self.missed
    }

    /// The kiss code that stopped this source.
    pub fn stopped_by(&self) -> Option<[u8; 4]> {
        self.stopped
    }

    /// Age of the association at monotonic `now` (seconds).
    pub fn association_age(&self, now: f64) -> Option<f64> {
        self.assoc
            .as_ref()
            .map(|_| self.assoc_age_then + (now - self.assoc_at).max(0.0))
    }

    /// Earliest monotonic time a key exchange may start.
    pub fn ke_not_before(&self) -> f64 {
        self.ke_not_before
    }

    /// Seconds until the next key exchange may start, when one is wanted (no
    /// association yet, or a re-key is due); 0 when it may start now. What
    /// `status` shows, so an operator sees a backoff instead of silence.
    pub fn next_key_exchange_in(&self, now: f64) -> Option<f64> {
        if self.stopped.is_some() || (self.rekey.is_none() && self.assoc.is_some()) {
            return None;
        }
        Some((self.ke_not_before.max(self.hold_until) - now).max(0.0))
    }

    fn refresh_rekey(&mut self, now: f64) {
        if self.rekey.is_none() {
            if self.cookies.is_empty() {
                self.rekey = Some(RekeyReason::NoCookies);
            } else if self
                .association_age(now)
                .is_some_and(|a| a >= self.cfg.ke_refresh)
            {
                self.rekey = Some(RekeyReason::Refresh);
            }
        }
    }

    /// What to do at monotonic `now`.
    pub fn next_step(&mut self, now: f64) -> Step {
        if self.stopped.is_some() {
            return Step::Stopped;
        }
        if now < self.hold_until {
            return Step::NotBefore(self.hold_until);
        }
        self.refresh_rekey(now);
        let usable = self.assoc.is_some() && !self.cookies.is_empty() && self.address().is_some();
        match self.rekey {
            None => Step::Request,
            Some(_) if now >= self.ke_not_before => Step::KeyExchange,
            // Until a new key exchange succeeds, keep polling with what we have.
            Some(_) if usable => Step::Request,
            Some(_) => Step::NotBefore(self.ke_not_before),
        }
    }

    /// NTS-KE succeeded. The shell resolves the negotiated server afterwards
    /// and hands its addresses to [`set_addresses`](Self::set_addresses).
    /// Returns whether the time server changed.
    pub fn ke_succeeded(&mut self, assoc: Association, cookies: Vec<Vec<u8>>, now: f64) -> bool {
        let changed = self
            .assoc
            .as_ref()
            .is_none_or(|a| a.ntp_host != assoc.ntp_host || a.ntp_port != assoc.ntp_port);
        self.counters.ke_ok += 1;
        self.assoc = Some(assoc);
        self.assoc_at = now;
        self.assoc_age_then = 0.0;
        self.cookies = cookies.into();
        self.cookies.truncate(self.cfg.jar_size);
        self.rekey = None;
        self.ke_failures_in_row = 0;
        self.missed = 0;
        if changed {
            self.addresses.clear();
            self.address_index = 0;
        }
        changed
    }

    /// NTS-KE failed (or gave nothing usable): back off exponentially, with
    /// `jitter` (uniform in [0, 1)) taking up to half off the wait. Returns
    /// the monotonic time of the next attempt.
    pub fn ke_failed(&mut self, now: f64, jitter: f64) -> f64 {
        self.counters.ke_failures += 1;
        let exp = self.ke_failures_in_row.min(30);
        self.ke_failures_in_row = self.ke_failures_in_row.saturating_add(1);
        let wait =
            (self.cfg.ke_backoff_min * f64::from(1u32 << exp.min(20))).min(self.cfg.ke_backoff_max);
        self.ke_not_before = now + wait * (1.0 - 0.5 * jitter.clamp(0.0, 1.0));
        if self.rekey.is_none() {
            self.rekey = Some(RekeyReason::Initial);
        }
        self.ke_not_before
    }

    /// The negotiated server's resolved addresses (IPv6 and IPv4, in the
    /// order to try). An empty list counts as a failed key exchange.
    pub fn set_addresses(&mut self, addrs: Vec<SocketAddr>) {
        if addrs != self.addresses {
            self.addresses = addrs;
            self.address_index = 0;
        }
    }

    /// The address to send the next request to.
    pub fn address(&self) -> Option<SocketAddr> {
        self.addresses.get(self.address_index).copied()
    }

    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Build the next request into `out`, spending one cookie and asking for
    /// the missing ones with placeholders. None without keys or cookies.
    pub fn prepare_request(
        &mut self,
        out: &mut Vec<u8>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Option<InFlight> {
        self.prepare_request_interleaved(out, None, random)
    }

    /// [`Self::prepare_request`] asking for interleaved mode with `fields`
    /// ([`crate::interleaved::InterleavedClient::request_fields`]).
    pub fn prepare_request_interleaved(
        &mut self,
        out: &mut Vec<u8>,
        fields: Option<InterleavedFields>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Option<InFlight> {
        let assoc = self.assoc.as_ref()?;
        let cookie = self.cookies.pop_front()?;
        let placeholders = self.cfg.jar_size.saturating_sub(self.cookies.len() + 1);
        let pending = build_request_interleaved(
            out,
            Some((&cookie, placeholders, &assoc.c2s)),
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
        let Some(assoc) = self.assoc.as_ref() else {
            return Verdict::KeepWaiting(Some(Ignored::Mismatch));
        };
        let ignored = match check_response(data, &flight.pending, Some(&assoc.s2c)) {
            Ok(c) => {
                let room = self.cfg.jar_size.saturating_sub(self.cookies.len());
                self.cookies.extend(c.cookies.into_iter().take(room));
                self.counters.accepted += 1;
                flight.interleaved = c.interleaved;
                return Verdict::Accepted(c.header);
            }
            Err(ResponseCheckError::Kiss(code)) => {
                // Authenticated: check_response opened the authenticator first.
                self.counters.kisses += 1;
                return Verdict::Kiss(code);
            }
            Err(ResponseCheckError::NtsNak) => {
                if flight.nak_seen {
                    Ignored::RepeatedNak
                } else {
                    flight.nak_seen = true;
                    self.counters.naks += 1;
                    return Verdict::KeepWaiting(None);
                }
            }
            Err(ResponseCheckError::Malformed(_)) => Ignored::Malformed,
            Err(ResponseCheckError::OriginMismatch | ResponseCheckError::UniqueIdMismatch) => {
                Ignored::Mismatch
            }
            Err(ResponseCheckError::Unauthenticated) => Ignored::Unauthenticated,
            Err(ResponseCheckError::AuthenticationFailed) => Ignored::Forged,
        };
        let c = &mut self.counters;
        match ignored {
            Ignored::Malformed => c.ignored_malformed += 1,
            Ignored::Mismatch => c.ignored_mismatch += 1,
            Ignored::Unauthenticated => c.ignored_unauthenticated += 1,
            Ignored::Forged | Ignored::RepeatedNak => c.ignored_forged += 1,
        }
        Verdict::KeepWaiting(Some(ignored))
    }

    /// The shell used an accepted answer (or a kiss) at `now`: bookkeeping
    /// that ends the exchange. Returns a transition to log, if any.
    pub fn exchange_done(&mut self, verdict: &Verdict, now: f64) -> Option<Transition> {
        match verdict {
            Verdict::Accepted(_) => {
                let after = std::mem::take(&mut self.missed);
                self.rate_kisses_in_row = 0;
                if matches!(
                    self.rekey,
                    Some(RekeyReason::Unreachable | RekeyReason::Nak)
                ) {
                    // The server answers after all: no reason to leave it.
                    self.rekey = None;
                }
                (after > 0).then_some(Transition::Answering { after })
            }
            Verdict::Kiss(code) => {
                if code == b"DENY" || code == b"RSTR" {
                    self.stopped = Some(*code);
                } else if code == b"RATE" {
                    let factor = f64::from(1u32 << self.rate_kisses_in_row.min(4));
                    self.rate_kisses_in_row += 1;
                    self.hold_until = now + self.cfg.rate_holdoff * factor;
                }
                // Any other authenticated kiss: the server answered, but with no time.
                None
            }
            Verdict::KeepWaiting(_) => None,
        }
    }

    /// No authentic answer to `flight` before its timeout. Moves to the
    /// next resolved address, and decides whether a key exchange is due.
    pub fn timed_out(&mut self, flight: &InFlight) -> Option<Transition> {
        self.counters.timeouts += 1;
        self.missed = self.missed.saturating_add(1);
        if !self.addresses.is_empty() {
            self.address_index = (self.address_index + 1) % self.addresses.len();
        }
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
        let a = self.assoc.as_ref()?;
        if self.cookies.is_empty() {
            return None;
        }
        Some(SavedAssociation {
            association: a.clone(),
            cookies: self.cookies.iter().cloned().collect(),
        })
    }
}

/// Why a negotiated time server is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("NTS-KE sent this client to a time server on its own host ({0}): disciplining a clock from itself is a loop (nts.allow_own_host allows it)")]
pub struct OwnHost(pub IpAddr);

/// The negotiated time server's addresses this client may use: never one of
/// its own host's addresses (`own`, loopback excluded: development stacks
/// and tests run there), since a node's agent handed its node's own time
/// server would steer its clock by itself. With `allow_own` everything goes.
/// An error when nothing is left: the shell counts it as a failed key
/// exchange, and the next one (round robin at the KE) names another server.
pub fn usable_server_addresses(
    addrs: Vec<SocketAddr>,
    own: &[IpAddr],
    allow_own: bool,
) -> Result<Vec<SocketAddr>, OwnHost> {
    if allow_own {
        return Ok(addrs);
    }
    let is_own = |a: &SocketAddr| {
        let ip = match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a.ip(), IpAddr::V4),
            v4 => v4,
        };
        !ip.is_loopback() && own.contains(&ip)
    };
    let first_own = addrs.iter().find(|a| is_own(a)).map(SocketAddr::ip);
    let usable: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_own(a)).collect();
    match (usable.is_empty(), first_own) {
        (true, Some(ip)) => Err(OwnHost(ip)),
        _ => Ok(usable),
    }
}

/// An association and its cookies, as kept across restarts.
#[derive(Debug, Clone)]
pub struct SavedAssociation {
    pub association: Association,
    pub cookies: Vec<Vec<u8>>,
}

/// Why a saved association could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SavedError {
    #[error("not an NTS association file (bad first line)")]
    Magic,
    #[error("line {line}: {why}")]
    Line { line: usize, why: &'static str },
    #[error("missing {0}")]
    Missing(&'static str),
}

const MAGIC: &str = "nts-association 1";
/// Longest cookie accepted from a file (NTS-KE allows far less in practice).
const MAX_SAVED_COOKIE: usize = 1024;

impl SavedAssociation {
    /// Text form: one `key value` per line, keys and cookies in hex. The
    /// file holds secrets: the shell writes it with mode 0600.
    pub fn to_text(&self) -> String {
        let a = &self.association;
        let mut s = format!(
            "{MAGIC}\naead {}\nc2s {}\ns2c {}\nntp {} {}\nestablished {}\n",
            a.aead.id(),
            hex_encode(a.c2s.as_bytes()),
            hex_encode(a.s2c.as_bytes()),
            a.ntp_port,
            a.ntp_host,
            a.established_unix
        );
        for c in &self.cookies {
            s.push_str("cookie ");
            s.push_str(&hex_encode(c));
            s.push('\n');
        }
        s
    }

    /// Parse [`to_text`](Self::to_text)'s output; any defect is an error.
    pub fn from_text(text: &str) -> Result<Self, SavedError> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l.trim()) != Some(MAGIC) {
            return Err(SavedError::Magic);
        }
        let (mut aead, mut c2s, mut s2c, mut ntp, mut est) = (None, None, None, None, None);
        let mut cookies = Vec::new();
        for (i, line) in lines {
            let line_no = i + 1;
            let bad = |why| SavedError::Line { line: line_no, why };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(' ').ok_or(bad("no value"))?;
            match key {
                "aead" => {
                    let id: u16 = value.parse().map_err(|_| bad("bad AEAD id"))?;
                    aead = Some(AeadAlgorithm::from_id(id).ok_or(bad("unknown AEAD id"))?);
                }
                "c2s" => c2s = Some(hex_decode(value, 64).ok_or(bad("bad key"))?),
                "s2c" => s2c = Some(hex_decode(value, 64).ok_or(bad("bad key"))?),
                "ntp" => {
                    let (port, host) = value.split_once(' ').ok_or(bad("need PORT HOST"))?;
                    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
                    if port == 0 || host.is_empty() || host.len() > 255 {
                        return Err(bad("bad server"));
                    }
                    ntp = Some((host.to_string(), port));
                }
                "established" => est = Some(value.parse().map_err(|_| bad("bad time"))?),
                "cookie" => {
                    let c = hex_decode(value, MAX_SAVED_COOKIE).ok_or(bad("bad cookie"))?;
                    if c.is_empty() {
                        return Err(bad("empty cookie"));
                    }
                    if cookies.len() < 64 {
                        cookies.push(c);
                    }
                }
                _ => return Err(bad("unknown key")),
            }
        }
        let aead = aead.ok_or(SavedError::Missing("aead"))?;
        let key = |k: Option<Vec<u8>>, name| {
            let k = k.ok_or(SavedError::Missing(name))?;
            AeadKey::new(aead, &k).map_err(|_| SavedError::Missing(name))
        };
        let c2s = key(c2s, "c2s")?;
        let s2c = key(s2c, "s2c")?;
        let (ntp_host, ntp_port) = ntp.ok_or(SavedError::Missing("ntp"))?;
        Ok(Self {
            association: Association {
                aead,
                c2s,
                s2c,
                ntp_host,
                ntp_port,
                established_unix: est.ok_or(SavedError::Missing("established"))?,
            },
            cookies,
        })
    }
}

fn hex_encode(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

fn hex_decode(s: &str, max_len: usize) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if s.len() % 2 != 0 || s.len() / 2 > max_len {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::{self, CookieContents};
    use crate::key_ring::{KeyRing, KeySchedule, RootSecret};
    use crate::ntp_packet::{kiss, LeapIndicator, NtpShort, NtpTimestamp};
    use crate::ntp_server::{respond, RequestContext, ServerClock, ServerPolicy};
    use rand::RngCore;

    fn rnd(b: &mut [u8]) {
        rand::thread_rng().fill_bytes(b)
    }

    /// A server (key ring, clock) and a client association made for it.
    struct World {
        ring: KeyRing,
        now_unix: u64,
        clock: ServerClock,
        policy: ServerPolicy,
        assoc: Association,
    }

    impl World {
        fn new() -> Self {
            let root = RootSecret::from_bytes(&[5; 32]).unwrap();
            let now_unix = 1_800_000_000;
            let ring = KeyRing::derive(&root, &KeySchedule::new(3600, 2).unwrap(), now_unix);
            let alg = AeadAlgorithm::AesSivCmac256;
            let c2s = AeadKey::new(alg, &[0x11; 32]).unwrap();
            let s2c = AeadKey::new(alg, &[0x22; 32]).unwrap();
            Self {
                ring,
                now_unix,
                clock: ServerClock {
                    leap: LeapIndicator::NoWarning,
                    stratum: 1,
                    precision: -20,
                    root_delay: NtpShort(0),
                    root_dispersion: NtpShort(10),
                    reference_id: *b"LOCL",
                    reference_timestamp: NtpTimestamp(5),
                },
                policy: ServerPolicy::default(),
                assoc: Association {
                    aead: alg,
                    c2s,
                    s2c,
                    ntp_host: "time.example".into(),
                    ntp_port: 123,
                    established_unix: now_unix,
                },
            }
        }

        fn cookies(&self, n: usize) -> Vec<Vec<u8>> {
            (0..n)
                .map(|i| {
                    cookie::seal(
                        self.ring.current(self.now_unix).unwrap(),
                        &CookieContents {
                            c2s: self.assoc.c2s.clone(),
                            s2c: self.assoc.s2c.clone(),
                        },
                        &[i as u8; 16],
                    )
                })
                .collect()
        }

        fn serve(&self, req: &[u8], rate_kiss: bool) -> Vec<u8> {
            let ctx = RequestContext {
                receive_timestamp: NtpTimestamp(100),
                unix_now: self.now_unix,
                clock: &self.clock,
                ring: &self.ring,
                policy: &self.policy,
                rate_kiss,
                previous_transmit: None,
            };
            let mut out = vec![0u8; req.len()];
            let r = respond(req, &ctx, &mut out, &mut rnd, &mut || NtpTimestamp(200)).unwrap();
            out.truncate(r.len());
            out
        }

        fn source(&self) -> NtsSource {
            let mut s = NtsSource::new(NtsSourceConfig::default(), 0.0, 0.0);
            assert_eq!(s.next_step(0.0), Step::KeyExchange);
            s.ke_succeeded(self.assoc.clone(), self.cookies(8), 0.0);
            s.set_addresses(vec!["192.0.2.1:123".parse().unwrap()]);
            s
        }
    }

    fn nak_for(req: &[u8]) -> Vec<u8> {
        // What a server (or anyone who saw the request) sends: a NTSN kiss
        // echoing the origin and the Unique Identifier, no authenticator.
        let (h, rest) = NtpHeader::parse(req).unwrap();
        let mut resp = NtpHeader {
            leap: LeapIndicator::Unsynchronized,
            version: 4,
            mode: crate::ntp_packet::Mode::Server,
            stratum: 0,
            reference_id: kiss::NTSN,
            origin_timestamp: h.transmit_timestamp,
            ..Default::default()
        }
        .to_bytes()
        .to_vec();
        resp.extend_from_slice(&rest[..36]); // the Unique Identifier field
        resp
    }

    #[test]
    fn genuine_answer_refills_the_jar() {
        let w = World::new();
        let mut s = w.source();
        assert_eq!(s.next_step(1.0), Step::Request);
        let mut req = Vec::new();
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        assert_eq!(s.cookies(), 7);
        let resp = w.serve(&req, false);
        let v = s.on_datagram(&resp, &mut f);
        assert!(matches!(v, Verdict::Accepted(_)));
        assert_eq!(s.exchange_done(&v, 1.1), None);
        assert_eq!(s.cookies(), 8);
        assert_eq!(s.counters().accepted, 1);
        // The same answer again (replayed later) matches no request.
        let mut req2 = Vec::new();
        let mut f2 = s.prepare_request(&mut req2, &mut rnd).unwrap();
        assert_eq!(
            s.on_datagram(&resp, &mut f2),
            Verdict::KeepWaiting(Some(Ignored::Mismatch))
        );
    }

    /// The cookie a request carries: the body of its (only) NTS Cookie field.
    fn cookie_in(req: &[u8]) -> Vec<u8> {
        crate::extension_field::ExtensionFields::new(&req[48..], 16)
            .map(|f| f.unwrap())
            .find(|f| f.field_type == crate::extension_field::field_type::NTS_COOKIE)
            .map(|f| f.body.to_vec())
            .unwrap()
    }

    #[test]
    fn a_time_server_on_the_clients_own_host_is_not_used() {
        let own: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            usable_server_addresses(vec![a("10.0.0.5:123")], &own, false),
            Err(OwnHost("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            usable_server_addresses(vec![a("[::ffff:10.0.0.5]:123")], &own, false).map_err(|_| ()),
            Err(())
        );
        // Another address of the same server is still fine; told to, everything is.
        assert_eq!(
            usable_server_addresses(vec![a("[fd00::5]:123"), a("10.0.0.9:123")], &own, false),
            Ok(vec![a("10.0.0.9:123")])
        );
        assert_eq!(
            usable_server_addresses(vec![a("10.0.0.5:123")], &own, true),
            Ok(vec![a("10.0.0.5:123")])
        );
        // Loopback is never treated as the own host (development, tests).
        let lo = vec!["127.0.0.1".parse().unwrap()];
        assert!(usable_server_addresses(vec![a("127.0.0.1:4123")], &lo, false).is_ok());
        assert_eq!(
            usable_server_addresses(Vec::new(), &own, false),
            Ok(Vec::new())
        );
    }

    #[test]
    fn the_next_key_exchange_is_announced_while_backing_off() {
        let w = World::new();
        let mut s = NtsSource::new(NtsSourceConfig::default(), 0.0, 0.0);
        assert_eq!(s.next_key_exchange_in(0.0), Some(0.0), "due at once");
        assert_eq!(s.next_step(0.0), Step::KeyExchange);
        let next = s.ke_failed(0.0, 0.0);
        assert!(next > 0.0);
        assert_eq!(s.next_key_exchange_in(1.0), Some(next - 1.0));
        s.ke_succeeded(w.assoc.clone(), w.cookies(8), next);
        assert_eq!(
            s.next_key_exchange_in(next),
            None,
            "none wanted with cookies"
        );
    }

    #[test]
    fn cookies_are_spent_oldest_first() {
        // First in, first out: a jar used newest-first keeps cycling the same
        // slot while the older cookies age past their key's lifetime.
        let w = World::new();
        let mut s = w.source();
        let issued = w.cookies(8);
        let mut req = Vec::new();
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        assert_eq!(cookie_in(&req), issued[0], "the oldest cookie goes first");
        let resp = w.serve(&req, false);
        assert!(matches!(s.on_datagram(&resp, &mut f), Verdict::Accepted(_)));
        // The fresh cookie from the answer waits behind the seven older ones.
        for (i, want) in issued.iter().enumerate().skip(1) {
            let mut req = Vec::new();
            s.prepare_request(&mut req, &mut rnd).unwrap();
            assert_eq!(&cookie_in(&req), want, "request {i}");
        }
    }

    #[test]
    fn forged_nak_is_ignored_when_the_real_answer_follows() {
        let w = World::new();
        let mut s = w.source();
        let mut req = Vec::new();
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        let nak = nak_for(&req);
        assert_eq!(s.on_datagram(&nak, &mut f), Verdict::KeepWaiting(None));
        assert_eq!(
            s.on_datagram(&nak, &mut f),
            Verdict::KeepWaiting(Some(Ignored::RepeatedNak))
        );
        let v = s.on_datagram(&w.serve(&req, false), &mut f);
        assert!(matches!(v, Verdict::Accepted(_)));
        s.exchange_done(&v, 1.0);
        // Cookies and keys kept, no key exchange.
        assert_eq!(s.cookies(), 8);
        assert_eq!(s.next_step(2.0), Step::Request);
        assert_eq!(s.counters().naks, 1);
    }

    #[test]
    fn nak_without_an_answer_rekeys_but_keeps_polling_meanwhile() {
        let w = World::new();
        let mut s = w.source();
        let mut req = Vec::new();
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        s.on_datagram(&nak_for(&req), &mut f);
        assert_eq!(
            s.timed_out(&f),
            Some(Transition::RekeyDue(RekeyReason::Nak))
        );
        assert_eq!(s.rekey_reason(), Some(RekeyReason::Nak));
        assert_eq!(s.next_step(3.0), Step::KeyExchange);
        // The key exchange fails: back off, and keep using the old cookies meanwhile.
        let next = s.ke_failed(3.0, 0.0);
        assert_eq!(next, 7.0);
        assert_eq!(s.cookies(), 7);
        assert_eq!(s.next_step(4.0), Step::Request);
        assert_eq!(s.next_step(7.0), Step::KeyExchange);
        // A new key exchange discards the old cookies.
        s.ke_succeeded(w.assoc.clone(), w.cookies(3), 8.0);
        assert_eq!(s.cookies(), 3);
        assert_eq!(s.next_step(8.0), Step::Request);
    }

    #[test]
    fn forged_and_unauthenticated_datagrams_are_ignored() {
        let w = World::new();
        let mut s = w.source();
        let mut req = Vec::new();
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        let genuine = w.serve(&req, false);
        // Tampered: the authenticator fails.
        let mut forged = genuine.clone();
        forged[44] ^= 1; // transmit timestamp
        assert_eq!(
            s.on_datagram(&forged, &mut f),
            Verdict::KeepWaiting(Some(Ignored::Forged))
        );
        // Unauthenticated copy of the header with the right UID, and a forged RATE kiss.
        let mut unauth = genuine[..48 + 36].to_vec();
        assert_eq!(
            s.on_datagram(&unauth, &mut f),
            Verdict::KeepWaiting(Some(Ignored::Unauthenticated))
        );
        unauth[1] = 0;
        unauth[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            s.on_datagram(&unauth, &mut f),
            Verdict::KeepWaiting(Some(Ignored::Unauthenticated))
        );
        unauth[12..16].copy_from_slice(b"DENY");
        assert_eq!(
            s.on_datagram(&unauth, &mut f),
            Verdict::KeepWaiting(Some(Ignored::Unauthenticated))
        );
        // Garbage and a stray answer.
        assert_eq!(
            s.on_datagram(&[0x24; 13], &mut f),
            Verdict::KeepWaiting(Some(Ignored::Malformed))
        );
        let mut stray = genuine.clone();
        stray[24] ^= 1; // origin
        assert_eq!(
            s.on_datagram(&stray, &mut f),
            Verdict::KeepWaiting(Some(Ignored::Mismatch))
        );
        // The real answer still wins.
        assert!(matches!(
            s.on_datagram(&genuine, &mut f),
            Verdict::Accepted(_)
        ));
        let c = s.counters();
        assert_eq!(c.ignored(), 6);
        assert_eq!(c.ignored_unauthenticated, 3);
        assert_eq!(s.stopped_by(), None);
    }

    #[test]
    fn authenticated_kisses_act() {
        let w = World::new();
        let mut s = w.source();
        let mut req = Vec::new();
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        // A server-made RATE kiss for an NTS request is unauthenticated today; build an authenticated one.
        let mut resp = w.serve(&req, false);
        let v = {
            // Turn the genuine response into a RATE kiss and seal it again with S2C.
            let (h, _) = NtpHeader::parse(&resp).unwrap();
            let kissed = NtpHeader {
                stratum: 0,
                reference_id: *b"RATE",
                ..h
            };
            resp[..48].copy_from_slice(&kissed.to_bytes());
            reseal(&mut resp, &w.assoc.s2c);
            s.on_datagram(&resp, &mut f)
        };
        assert_eq!(v, Verdict::Kiss(*b"RATE"));
        s.exchange_done(&v, 10.0);
        assert_eq!(s.next_step(11.0), Step::NotBefore(74.0));
        assert_eq!(s.next_step(74.0), Step::Request);
        s.exchange_done(&Verdict::Kiss(*b"DENY"), 80.0);
        assert_eq!(s.next_step(81.0), Step::Stopped);
    }

    /// Re-seal the authenticator of `resp` (whose last field is the
    /// authenticator with a 16-byte nonce and the encrypted cookies).
    fn reseal(resp: &mut Vec<u8>, s2c: &AeadKey) {
        use crate::extension_field::{field_type, ExtensionFields};
        let (_, rest) = NtpHeader::parse(resp).unwrap();
        let mut at = None;
        for f in ExtensionFields::new(rest, 64) {
            let f = f.unwrap();
            if f.field_type == field_type::NTS_AUTHENTICATOR {
                at = Some(48 + f.offset);
            }
        }
        let at = at.unwrap();
        let body = resp[at + 4..].to_vec();
        let a = crate::extension_field::Authenticator::parse(&body).unwrap();
        let nonce = a.nonce.to_vec();
        let mut plain = a.ciphertext[16..].to_vec();
        let tag = s2c.seal_detached(&nonce, &resp[..at], &mut plain);
        let mut new_body = Vec::new();
        new_body.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        new_body.extend_from_slice(&((16 + plain.len()) as u16).to_be_bytes());
        new_body.extend_from_slice(&nonce);
        new_body.extend_from_slice(&tag);
        new_body.extend_from_slice(&plain);
        resp.truncate(at);
        crate::extension_field::write_field(resp, field_type::NTS_AUTHENTICATOR, &new_body);
    }

    #[test]
    fn silent_server_rekeys_after_missed_polls_and_rotates_addresses() {
        let w = World::new();
        let mut s = w.source();
        s.set_addresses(vec![
            "[2001:db8::1]:123".parse().unwrap(),
            "192.0.2.1:123".parse().unwrap(),
        ]);
        let mut req = Vec::new();
        let f = s.prepare_request(&mut req, &mut rnd).unwrap();
        assert_eq!(s.address(), Some("[2001:db8::1]:123".parse().unwrap()));
        assert_eq!(s.timed_out(&f), Some(Transition::TimeoutsBegan));
        assert_eq!(s.address(), Some("192.0.2.1:123".parse().unwrap()));
        assert_eq!(s.timed_out(&f), None);
        assert_eq!(s.timed_out(&f), None);
        assert_eq!(
            s.timed_out(&f),
            Some(Transition::RekeyDue(RekeyReason::Unreachable))
        );
        assert_eq!(s.next_step(50.0), Step::KeyExchange);
        // If it answers before the key exchange ran, stay.
        let mut f = s.prepare_request(&mut req, &mut rnd).unwrap();
        let v = s.on_datagram(&w.serve(&req, false), &mut f);
        assert_eq!(
            s.exchange_done(&v, 51.0),
            Some(Transition::Answering { after: 4 })
        );
        assert_eq!(s.next_step(52.0), Step::Request);
        // A key exchange that hands out another server resets the addresses.
        let mut other = w.assoc.clone();
        other.ntp_host = "other.example".into();
        assert!(s.ke_succeeded(other, w.cookies(8), 60.0));
        assert_eq!(s.address(), None);
        assert!(s.ke_succeeded(w.assoc.clone(), w.cookies(8), 61.0));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let cfg = NtsSourceConfig {
            ke_spread: 10.0,
            ..Default::default()
        };
        let mut s = NtsSource::new(cfg, 100.0, 0.5);
        assert_eq!(s.next_step(100.0), Step::NotBefore(105.0));
        assert_eq!(s.next_step(105.0), Step::KeyExchange);
        let mut now = 105.0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let next = s.ke_failed(now, 0.0);
            waits.push(next - now);
            assert_eq!(s.next_step(now), Step::NotBefore(next));
            now = next;
        }
        assert_eq!(&waits[..4], &[4.0, 8.0, 16.0, 32.0]);
        assert_eq!(*waits.last().unwrap(), 1024.0);
        // Jitter takes at most half off.
        let next = s.ke_failed(now, 0.999);
        assert!(next - now > 512.0 && next - now < 1024.0);
    }

    #[test]
    fn out_of_cookies_and_refresh() {
        let w = World::new();
        let mut s = w.source();
        let mut req = Vec::new();
        for _ in 0..8 {
            let f = s.prepare_request(&mut req, &mut rnd).unwrap();
            s.timed_out(&f);
            s.missed = 0; // keep the unreachable rule out of this test
        }
        assert_eq!(s.cookies(), 0);
        assert!(s.prepare_request(&mut req, &mut rnd).is_none());
        assert_eq!(s.next_step(1.0), Step::KeyExchange);
        assert_eq!(s.rekey_reason(), Some(RekeyReason::NoCookies));
        s.ke_succeeded(w.assoc.clone(), w.cookies(8), 1.0);
        assert_eq!(s.next_step(86_400.0), Step::Request);
        assert_eq!(s.next_step(86_401.0), Step::KeyExchange);
        assert_eq!(s.rekey_reason(), Some(RekeyReason::Refresh));
    }

    #[test]
    fn saved_association_round_trips_and_restores_without_ke() {
        let w = World::new();
        let s = w.source();
        let saved = s.save().unwrap();
        let text = saved.to_text();
        let back = SavedAssociation::from_text(&text).unwrap();
        assert_eq!(back.cookies, saved.cookies);
        assert_eq!(back.association.c2s, w.assoc.c2s);
        assert_eq!(back.association.ntp_host, "time.example");
        let mut r = NtsSource::restored(
            NtsSourceConfig::default(),
            back.clone(),
            5.0,
            w.now_unix + 600,
            0.0,
        );
        assert_eq!(r.cookies(), 8);
        assert_eq!(r.rekey_reason(), None);
        assert_eq!(r.association_age(5.0), Some(600.0));
        // Too old: dropped, and a key exchange is due.
        let mut old = NtsSource::restored(
            NtsSourceConfig::default(),
            back,
            5.0,
            w.now_unix + 90_000,
            0.0,
        );
        assert_eq!(old.cookies(), 0);
        assert_eq!(old.next_step(5.0), Step::KeyExchange);
        // Without addresses it still waits for the shell to resolve.
        assert_eq!(r.next_step(5.0), Step::Request);
    }

    #[test]
    fn damaged_files_are_errors() {
        let w = World::new();
        let text = w.source().save().unwrap().to_text();
        assert_eq!(
            SavedAssociation::from_text("hello\n").unwrap_err(),
            SavedError::Magic
        );
        for (from, to) in [
            ("aead 15", "aead 99"),
            ("aead 15", "aead x"),
            ("ntp 123", "ntp 0"),
            ("cookie ", "cookie zz"),
            ("established", "bogus"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert!(SavedAssociation::from_text(&bad).is_err(), "{to}");
        }
        let no_c2s: String = text
            .lines()
            .filter(|l| !l.starts_with("c2s"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            SavedAssociation::from_text(&no_c2s).unwrap_err(),
            SavedError::Missing("c2s")
        );
        // Random bytes never panic.
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let mut b = text.clone().into_bytes();
            let at = rng.next_u32() as usize % b.len();
            b[at] = rng.next_u32() as u8;
            let _ = SavedAssociation::from_text(&String::from_utf8_lossy(&b));
        }
    }
}
