//! A deterministic world for client sources (quinn's `Pair` is the model):
//! one [`Source`], the time server's real request-to-response function with
//! a real key ring, the NTS-KE server's record logic, a simulated client
//! clock, and a simulated network that an attacker script can make drop,
//! duplicate, delay, replay, forge and tamper with datagrams. Time is
//! simulated, so an hour of polling runs in milliseconds.
//!
//! The harness checks the invariants as it goes: for an NTS source, no
//! measurement ever comes from a datagram the time server did not make for
//! the request in flight, and no datagram the attacker made changes the
//! source's keys, cookies or standing; a plain source (unauthenticated by
//! choice) only ever measures datagrams that echo its request.

use super::action::{Action, Event};
use super::driver::{Source, SourceConfig};
use super::measurement::Measurement;
use super::nts::{NtsSource, NtsSourceConfig};
pub use super::sim_world::{SimRng, World, UNIX0};
use crate::aead::AeadKey;
use crate::clock::sim_clock::SimulatedClock;
use crate::ntp_packet::{kiss, LeapIndicator, Mode, NtpHeader, NtpTimestamp};
use crate::time::MonoTime;
use rand_core::RngCore;
use std::net::SocketAddr;
use std::time::Duration;

/// Monotonic time `secs` after the origin.
pub fn t(secs: f64) -> MonoTime {
    MonoTime::from_secs_f64(secs)
}

/// What an on-path attacker (or plain loss) does around one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetOp {
    /// Lose the request.
    DropRequest,
    /// Lose the answer.
    DropAnswer,
    /// Deliver the answer twice.
    Duplicate,
    /// Deliver the answer this many 100 ms late (beyond the timeout: stale).
    Delay(u8),
    /// Before the answer: a forged NTS NAK echoing the request's identifiers.
    ForgeNak,
    /// Before the answer: a forged, unauthenticated kiss.
    ForgeKiss([u8; 4]),
    /// Before the answer: an unauthenticated answer 1000 s off.
    ForgeAnswer,
    /// Before the answer: an earlier genuine answer again.
    Replay,
    /// Before the answer: the answer with one byte changed.
    Tamper(u8),
    /// Before the answer: random bytes.
    Garbage,
    /// The KE server goes down for ten minutes.
    KeOutage,
}

/// Who made a datagram the client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The time server, for request number `n`.
    Server(u64),
    Attacker,
}

#[derive(Debug, Clone)]
struct InFlightDatagram {
    at: MonoTime,
    bytes: Vec<u8>,
    origin: Origin,
}

/// What happened in a run, for assertions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub requests: u64,
    /// When each request went out (simulated seconds).
    pub sent: Vec<f64>,
    pub key_exchanges: u64,
    pub ke_failures: u64,
    pub measurements: u64,
    pub persisted: u64,
    pub forged_delivered: u64,
    /// Forged answers a plain source took (it has no way to tell them).
    pub plain_forgeries_measured: u64,
    pub naks_noted: u64,
    pub kisses: Vec<[u8; 4]>,
    pub stopped: Option<[u8; 4]>,
    /// Largest |measured offset − true offset| (seconds).
    pub worst_error: f64,
}

/// The attacker's script: the operations for request number `n`.
pub type Script = Box<dyn FnMut(u64) -> Vec<NetOp>>;

/// One source in a simulated world; see the module documentation.
pub struct Sim {
    pub source: Source,
    pub world: World,
    pub clock: SimulatedClock,
    pub now: MonoTime,
    pub tally: Tally,
    pub poll_interval: Duration,
    /// One-way network delay.
    pub delay: Duration,
    script: Script,
    to_client: Vec<InFlightDatagram>,
    sent_at: NtpTimestamp,
    /// The transmit timestamp of the request in flight, as sent.
    request_origin: [u8; 8],
    last_genuine: Option<Vec<u8>>,
    /// Key exchanges fail until then (a KE server outage).
    pub ke_down_until: MonoTime,
    rng: SimRng,
    server_addr: SocketAddr,
}

impl Sim {
    /// An NTS source with nothing yet, against a faithful network; the
    /// client's clock is 0.25 s ahead.
    pub fn nts(seed: u64) -> Self {
        let nts = NtsSource::new(NtsSourceConfig::default(), MonoTime::ZERO, 0.0);
        let source = Source::nts(SourceConfig::default(), nts, Box::new(SimRng::new(seed)));
        Self::with_source(source, World::new(), seed)
    }

    /// A plain NTP source.
    pub fn plain(seed: u64) -> Self {
        let source = Source::plain(
            SourceConfig::default(),
            "time.example".into(),
            123,
            Box::new(SimRng::new(seed)),
        );
        Self::with_source(source, World::new(), seed)
    }

    pub fn with_source(source: Source, world: World, seed: u64) -> Self {
        Self {
            source,
            world,
            clock: SimulatedClock::new(0.25, 10.0, seed).with_epoch_unix(UNIX0 as i64),
            now: MonoTime::ZERO,
            tally: Tally::default(),
            poll_interval: Duration::from_secs(16),
            delay: Duration::from_millis(10),
            script: Box::new(|_| Vec::new()),
            to_client: Vec::new(),
            sent_at: NtpTimestamp::ZERO,
            request_origin: [0; 8],
            last_genuine: None,
            ke_down_until: MonoTime::ZERO,
            rng: SimRng::new(seed ^ 0x5eed),
            server_addr: "192.0.2.1:123".parse().expect("literal"),
        }
    }

    /// What the network and the attacker do, exchange by exchange.
    pub fn script(mut self, s: impl FnMut(u64) -> Vec<NetOp> + 'static) -> Self {
        self.script = Box::new(s);
        self
    }

    /// The same operations around every exchange.
    pub fn every_exchange(self, ops: Vec<NetOp>) -> Self {
        self.script(move |_| ops.clone())
    }

    fn local_timestamp(&self) -> NtpTimestamp {
        crate::clock::Clock::now(&self.clock).unwrap_or(NtpTimestamp::ZERO)
    }

    fn advance_to(&mut self, at: MonoTime) {
        let dt = at.saturating_since(self.now).as_secs_f64();
        self.clock.advance(dt);
        self.now = at;
        self.world.set_unix(UNIX0 + at.as_secs_f64() as u64);
    }

    /// Run until `end` (simulated).
    pub fn run_until(&mut self, end: MonoTime) {
        let mut guard = 0u32;
        loop {
            guard += 1;
            assert!(guard < 1_000_000, "the simulation does not progress");
            let next_net = self.to_client.iter().map(|d| d.at).min();
            let next = match (self.source.poll_timeout(), next_net) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.advance_to(next.max(self.now));
            self.deliver_due();
            self.source.handle_timeout(self.now);
            self.drain();
            if self.source.stopped_by().is_some() {
                break;
            }
        }
        self.advance_to(end.max(self.now));
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let mut due: Vec<_> = Vec::new();
        self.to_client.retain(|d| {
            if d.at <= now {
                due.push(d.clone());
                false
            } else {
                true
            }
        });
        for d in due {
            self.deliver(d);
        }
    }

    fn deliver(&mut self, d: InFlightDatagram) {
        let before = Standing::of(&self.source);
        let rx = self.local_timestamp();
        let got = self
            .source
            .handle_datagram(self.now, &d.bytes, rx, self.sent_at);
        if d.origin == Origin::Attacker {
            self.tally.forged_delivered += 1;
        }
        if self.source.authenticated() {
            if d.origin == Origin::Attacker {
                assert!(
                    got.is_none(),
                    "a measurement from a datagram the attacker made"
                );
                let after = Standing::of(&self.source);
                assert_eq!(
                    before, after,
                    "an attacker's datagram changed the source's standing"
                );
            }
            if got.is_some() {
                assert_eq!(
                    d.origin,
                    Origin::Server(self.tally.requests),
                    "a measurement from a datagram that does not answer the request in flight"
                );
            }
        } else if got.is_some() && d.origin == Origin::Attacker {
            // Plain NTP cannot tell an on-path forgery from the answer; it
            // must still never take one that does not echo the request.
            assert_eq!(
                d.bytes.get(24..32),
                Some(&self.request_origin[..]),
                "a plain source measured a datagram that does not echo its request"
            );
            self.tally.plain_forgeries_measured += 1;
        }
        if let Some(m) = got {
            self.measured(&m, d.origin == Origin::Attacker);
        }
        self.drain();
    }

    fn measured(&mut self, m: &Measurement, forged: bool) {
        self.tally.measurements += 1;
        if let (Ok(s), false) = (&m.sample, forged) {
            // Server minus client: the negative of the client clock's error.
            let err = (s.offset + self.clock.offset()).abs();
            self.tally.worst_error = self.tally.worst_error.max(err);
        }
    }

    fn drain(&mut self) {
        while let Some(a) = self.source.poll_action() {
            match a {
                Action::Send { to, datagram } => self.send(to, datagram),
                Action::KeyExchange => {
                    self.tally.key_exchanges += 1;
                    let r = if self.now < self.ke_down_until {
                        Err("KE server unreachable (simulated outage)".to_string())
                    } else {
                        self.world.key_exchange(self.rng.next_u64())
                    };
                    if r.is_err() {
                        self.tally.ke_failures += 1;
                    }
                    self.source.handle_key_exchange(self.now, r);
                }
                Action::Resolve { .. } => {
                    let addr = self.server_addr;
                    self.source.handle_resolved(self.now, Ok(vec![addr]));
                }
                Action::Persist(_) => self.tally.persisted += 1,
                Action::ForgetSamples => {}
                Action::Note(Event::NakNoted) => self.tally.naks_noted += 1,
                Action::Note(Event::Kiss(code)) => self.tally.kisses.push(code),
                Action::Note(_) => {}
                Action::Stopped(code) => self.tally.stopped = Some(code),
            }
        }
    }

    /// A poll went out: the clock agent's schedule moves on.
    fn send(&mut self, to: SocketAddr, req: Vec<u8>) {
        assert_eq!(to, self.server_addr);
        self.tally.requests += 1;
        self.tally.sent.push(self.now.as_secs_f64());
        let n = self.tally.requests;
        self.source.set_poll_at(self.now + self.poll_interval);
        self.sent_at = self.local_timestamp();
        if let Some(o) = req.get(40..48) {
            self.request_origin.copy_from_slice(o);
        }
        let ops = (self.script)(n);
        if ops.contains(&NetOp::KeOutage) {
            self.ke_down_until = self.now + Duration::from_secs(600);
        }
        let arrive = self.now + self.delay;
        let mut attacker_first = Vec::new();
        let (h, rest) = match NtpHeader::parse(&req) {
            Ok(x) => x,
            Err(_) => return,
        };
        let uid = rest.get(..36).unwrap_or(&[]).to_vec();
        for op in &ops {
            let forged = match *op {
                NetOp::ForgeNak => Some(forge(&h, &uid, 0, kiss::NTSN)),
                NetOp::ForgeKiss(code) => Some(forge(&h, &uid, 0, code)),
                NetOp::ForgeAnswer => {
                    let mut p = forge(&h, &uid, 1, *b"GPS\0");
                    p[0] = 0x24;
                    Some(p)
                }
                NetOp::Replay => self.last_genuine.clone(),
                NetOp::Garbage => {
                    let mut g = vec![0u8; 48 + (self.rng.next_u32() % 200) as usize];
                    self.rng.fill_bytes(&mut g);
                    Some(g)
                }
                _ => None,
            };
            attacker_first.extend(forged);
        }
        for bytes in attacker_first {
            self.to_client.push(InFlightDatagram {
                at: arrive,
                bytes,
                origin: Origin::Attacker,
            });
        }
        if ops.contains(&NetOp::DropRequest) {
            return;
        }
        // The server receives at true time `arrive` and answers at once.
        let server_rx = self
            .clock
            .true_timestamp(self.clock.true_time() + self.delay.as_secs_f64());
        let Some(answer) = self.world.serve_at(&req, server_rx, server_rx, false) else {
            return;
        };
        let back = arrive + self.delay;
        for op in &ops {
            if let NetOp::Tamper(at) = *op {
                let mut bad = answer.clone();
                let i = usize::from(at) % bad.len();
                bad[i] ^= 0x5a;
                self.to_client.push(InFlightDatagram {
                    at: back,
                    bytes: bad,
                    origin: Origin::Attacker,
                });
            }
        }
        if !ops.contains(&NetOp::DropAnswer) {
            let extra = ops.iter().find_map(|o| match o {
                NetOp::Delay(d) => Some(Duration::from_millis(100 * u64::from(*d))),
                _ => None,
            });
            let copies = if ops.contains(&NetOp::Duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                self.to_client.push(InFlightDatagram {
                    at: back + extra.unwrap_or_default(),
                    bytes: answer.clone(),
                    origin: Origin::Server(n),
                });
            }
        }
        self.last_genuine = Some(answer);
    }
}

/// A forged server packet echoing the request's origin and Unique Identifier.
fn forge(req: &NtpHeader, uid_field: &[u8], stratum: u8, refid: [u8; 4]) -> Vec<u8> {
    let mut p = NtpHeader {
        leap: LeapIndicator::Unsynchronized,
        version: 4,
        mode: Mode::Server,
        stratum,
        reference_id: refid,
        origin_timestamp: req.transmit_timestamp,
        receive_timestamp: req.transmit_timestamp,
        transmit_timestamp: NtpTimestamp(req.transmit_timestamp.0.wrapping_add(1000 << 32)),
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    p.extend_from_slice(uid_field);
    p
}

/// What an attacker must never change: keys, cookies, standing.
#[derive(Debug, Clone, PartialEq)]
struct Standing {
    keys: Option<Vec<u8>>,
    cookies: usize,
    rekey: Option<super::nts::RekeyReason>,
    stopped: Option<[u8; 4]>,
    waiting: bool,
}

impl Standing {
    fn of(s: &Source) -> Self {
        let n = s.nts_half();
        Self {
            keys: n
                .and_then(|n| n.association())
                .map(|a| a.s2c.as_bytes().to_vec()),
            cookies: n.map_or(0, NtsSource::cookies),
            rekey: n.and_then(NtsSource::rekey_reason),
            stopped: s.stopped_by(),
            waiting: s.waiting(),
        }
    }
}

/// What a server (or anyone who saw the request) sends as an NTS NAK: a
/// NTSN kiss echoing the origin and the Unique Identifier, no authenticator.
pub fn nak_for(req: &[u8]) -> Vec<u8> {
    let (h, rest) = NtpHeader::parse(req).expect("a request");
    let mut resp = NtpHeader {
        leap: LeapIndicator::Unsynchronized,
        version: 4,
        mode: Mode::Server,
        stratum: 0,
        reference_id: kiss::NTSN,
        origin_timestamp: h.transmit_timestamp,
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    resp.extend_from_slice(&rest[..36]);
    resp
}

/// Re-seal the authenticator of `resp` (whose last field is the
/// authenticator with a 16-byte nonce and the encrypted cookies) with `s2c`:
/// how a test makes an authenticated kiss.
pub fn reseal(resp: &mut Vec<u8>, s2c: &AeadKey) {
    use crate::extension_field::{field_type, write_field, Authenticator, ExtensionFields};
    let Ok((_, rest)) = NtpHeader::parse(resp) else {
        return;
    };
    let at = ExtensionFields::new(rest, 64)
        .filter_map(Result::ok)
        .find(|f| f.field_type == field_type::NTS_AUTHENTICATOR)
        .map(|f| 48 + f.offset);
    let Some(at) = at else { return };
    let body = resp[at + 4..].to_vec();
    let Ok(a) = Authenticator::parse(&body) else {
        return;
    };
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
    write_field(resp, field_type::NTS_AUTHENTICATOR, &new_body);
}
