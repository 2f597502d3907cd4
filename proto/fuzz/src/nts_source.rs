//! `nts_source`: the NTS half of a client source
//! ([`nts_proto::source::NtsSource`]) driven through an arbitrary sequence
//! of events: genuine answers from a real server function, replays, forged
//! NAKs and kisses, garbage, tampered answers, timeouts, key exchanges that
//! succeed or fail, and the passing of time.
//!
//! Each input byte is one event (some take the next bytes as arguments):
//!
//! | byte % 12 | event |
//! | --- | --- |
//! | 0 | send a request if the source says `Request` |
//! | 1 | the genuine answer to the request in flight |
//! | 2 | a replay of the last genuine answer |
//! | 3 | a forged NAK with the request's origin and Unique Identifier |
//! | 4 | a forged unauthenticated kiss (code from the next 4 bytes) |
//! | 5 | garbage (length from the next byte, then that many bytes) |
//! | 6 | the genuine answer with one byte flipped (index from the next byte) |
//! | 7 | the request times out |
//! | 8 | a key exchange succeeds (if one is due) |
//! | 9 | a key exchange fails (if one is due; jitter from the next byte) |
//! | 10 | time passes (seconds from the next byte) |
//! | 11 | the shell asks for the next step |
//!
//! Checks: no panic; never more cookies than the jar holds; nothing
//! unauthenticated (events 2 to 6) ends an exchange, changes the cookies,
//! makes a key exchange due or drops the keys; a genuine answer to the
//! request in flight is always accepted; a key exchange is never due before
//! its backoff ends unless the shell may still poll; a re-key is only ever
//! caused by a key exchange failure, a timeout, running out of cookies or
//! age; a failed key exchange keeps the keys held before it.

use crate::{c2s_key, ring, s2c_key, Counter, NOW};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::cookie::{self, CookieContents};
use nts_proto::ntp_packet::{LeapIndicator, Mode, NtpHeader, NtpShort, NtpTimestamp};
use nts_proto::ntp_server::{respond, RequestContext, ServerClock, ServerPolicy};
use nts_proto::source::{
    Association, InFlight, NtsSource, NtsSourceConfig, RekeyReason, Step, Verdict,
};
use nts_proto::time::{MonoTime, UnixTime};
use std::time::Duration;

const ALG: AeadAlgorithm = AeadAlgorithm::AesSivCmac256;
/// Most events one input drives.
const MAX_EVENTS: usize = 512;

fn association() -> Association {
    Association {
        aead: ALG,
        c2s: c2s_key(ALG),
        s2c: s2c_key(ALG),
        ntp_host: "time.example".into(),
        ntp_port: 123,
        established: UnixTime::from_secs(NOW as i64),
    }
}

fn cookies(n: usize, nonce: &mut Counter) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut nb = [0u8; 16];
            nonce.fill(&mut nb);
            cookie::seal(
                ring().current(NOW).expect("current key"),
                &CookieContents {
                    c2s: c2s_key(ALG),
                    s2c: s2c_key(ALG),
                },
                &nb,
            )
        })
        .collect()
}

fn clock() -> ServerClock {
    ServerClock {
        leap: LeapIndicator::NoWarning,
        stratum: 1,
        precision: -20,
        root_delay: NtpShort(0),
        root_dispersion: NtpShort(10),
        reference_id: *b"LOCL",
        reference_timestamp: NtpTimestamp(5),
    }
}

fn serve(req: &[u8], rng: &mut Counter) -> Option<Vec<u8>> {
    let clock = clock();
    let policy = ServerPolicy::default();
    let ctx = RequestContext {
        receive_timestamp: NtpTimestamp(100),
        unix_now: NOW,
        clock: &clock,
        ring: ring(),
        policy: &policy,
        rate_kiss: false,
        previous_transmit: None,
    };
    let mut out = vec![0u8; req.len()];
    let r = respond(req, &ctx, &mut out, &mut |b| rng.fill(b), &mut || {
        NtpTimestamp(200)
    })
    .ok()?;
    out.truncate(r.len());
    Some(out)
}

fn forged(req: &[u8], stratum: u8, refid: [u8; 4]) -> Vec<u8> {
    let Ok((h, rest)) = NtpHeader::parse(req) else {
        return Vec::new();
    };
    let mut p = NtpHeader {
        leap: LeapIndicator::Unsynchronized,
        version: 4,
        mode: Mode::Server,
        stratum,
        reference_id: refid,
        origin_timestamp: h.transmit_timestamp,
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    p.extend_from_slice(rest.get(..36).unwrap_or(&[]));
    p
}

/// The client's random source: a counter would repeat its Unique
/// Identifiers and origins every 256 bytes, making a replay a genuine answer.
struct SplitMix(u64);

impl SplitMix {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

struct Flight {
    flight: InFlight,
    request: Vec<u8>,
    answered: bool,
}

/// Drive one sequence (panics on a finding). Returns how many answers were accepted.
pub fn check(data: &[u8]) -> usize {
    let cfg = NtsSourceConfig::default();
    let mut now = MonoTime::ZERO;
    let mut src = NtsSource::new(cfg, now, 0.0);
    let mut rng = Counter(0x11);
    let mut client_rng = SplitMix(0x5eed);
    let mut nonce = Counter(0x77);
    let mut flight: Option<Flight> = None;
    let mut last_genuine: Option<Vec<u8>> = None;
    let mut accepted = 0usize;
    let mut bytes = data.iter().copied();
    let mut events = 0;
    while let Some(op) = bytes.next() {
        events += 1;
        if events > MAX_EVENTS {
            break;
        }
        let before = (
            src.cookies(),
            src.rekey_reason(),
            src.association().is_some(),
        );
        let mut unauthenticated: Option<Vec<u8>> = None;
        match op % 12 {
            0 => {
                if src.next_step(now) == Step::Request && flight.is_none() {
                    let mut req = Vec::new();
                    if let Some(f) =
                        src.prepare_request(&mut req, None, &mut |b| client_rng.fill(b))
                    {
                        assert_eq!(src.cookies(), before.0 - 1, "one cookie per request");
                        flight = Some(Flight {
                            flight: f,
                            request: req,
                            answered: false,
                        });
                    }
                }
            }
            1 => {
                if let Some(f) = flight.as_mut().filter(|f| !f.answered) {
                    let resp = serve(&f.request, &mut rng).expect("a genuine request is answered");
                    let v = src.on_datagram(&resp, &mut f.flight);
                    assert!(matches!(v, Verdict::Accepted(_)), "genuine answer: {v:?}");
                    src.answered();
                    f.answered = true;
                    accepted += 1;
                    last_genuine = Some(resp);
                    flight = None;
                }
            }
            2 => unauthenticated = last_genuine.clone(),
            3 => unauthenticated = flight.as_ref().map(|f| forged(&f.request, 0, *b"NTSN")),
            4 => {
                let mut code = [0u8; 4];
                for c in code.iter_mut() {
                    *c = bytes.next().unwrap_or(b'X');
                }
                unauthenticated = flight.as_ref().map(|f| forged(&f.request, 0, code));
            }
            5 => {
                let n = usize::from(bytes.next().unwrap_or(0));
                unauthenticated = Some(bytes.by_ref().take(n).collect());
            }
            6 => {
                let at = usize::from(bytes.next().unwrap_or(0));
                if let Some(f) = flight.as_ref() {
                    if let Some(mut resp) = serve(&f.request, &mut rng) {
                        let i = at % resp.len();
                        resp[i] ^= 0x80;
                        unauthenticated = Some(resp);
                    }
                }
            }
            7 => {
                if let Some(f) = flight.take() {
                    let nak = f.flight.nak_seen;
                    let due_before = src.rekey_reason();
                    src.timed_out(&f.flight);
                    if nak && due_before.is_none() {
                        assert_eq!(src.rekey_reason(), Some(RekeyReason::Nak));
                    }
                }
            }
            8 => {
                if src.next_step(now) == Step::KeyExchange {
                    flight = None;
                    src.begin_key_exchange();
                    src.ke_succeeded(association(), cookies(8, &mut nonce), now);
                    assert_eq!(src.rekey_reason(), None);
                    assert_eq!(src.cookies(), 8);
                }
            }
            9 => {
                let j = f64::from(bytes.next().unwrap_or(0)) / 256.0;
                if src.next_step(now) == Step::KeyExchange {
                    src.begin_key_exchange();
                    let held = src.cookies();
                    let next = src.ke_failed(now, j);
                    assert_eq!(src.cookies(), held, "a failed key exchange keeps the keys");
                    assert!(next > now, "a failed key exchange backs off");
                    assert!(src.rekey_reason().is_some());
                }
            }
            10 => now += Duration::from_secs(u64::from(bytes.next().unwrap_or(1))),
            _ => {
                let step = src.next_step(now);
                if step == Step::KeyExchange {
                    assert!(now >= src.ke_not_before());
                    assert!(src.rekey_reason().is_some());
                }
            }
        }
        if let (Some(d), Some(f)) = (unauthenticated, flight.as_mut()) {
            if !f.answered {
                let v = src.on_datagram(&d, &mut f.flight);
                assert!(
                    matches!(v, Verdict::KeepWaiting(_)),
                    "unauthenticated bytes ended an exchange: {v:?}"
                );
                assert_eq!(
                    (
                        src.cookies(),
                        src.rekey_reason(),
                        src.association().is_some()
                    ),
                    before,
                    "unauthenticated bytes changed the source"
                );
            }
        }
        assert!(src.cookies() <= cfg.jar_size);
    }
    accepted
}
