//! `ntp_server`: the time server answering an arbitrary datagram with
//! [`nts_proto::ntp_server::respond`].
//!
//! Every input is answered twice with the fixed ring at [`NOW`], a fixed
//! [`ServerClock`], `ServerPolicy::default()` and nonces from a [`Counter`]:
//! once normally and once with `rate_kiss` set. Checks:
//!
//! * no panic, never `DropReason::Internal` (the buffer is request-sized), the
//!   simple drop reasons agree with the bytes, nothing is written past the
//!   request's length, the clock is read only for a time-bearing answer;
//! * with `rate_kiss` a plain request gets a RATE kiss or the same drop as
//!   without it, and an NTS request is dropped (`RateLimitedNts`), never kissed;
//! * every answer is no longer than the request and parses as a server-mode
//!   header with the request's version, poll and transmit timestamp as origin;
//! * `Plain` only for requests without NTS fields; `Rate` only when asked for
//!   and only to plain requests; `Nak` only when the cookie
//!   does not open (with that error), echoing the Unique Identifier;
//! * `Nts` only when the cookie opens and the request's authenticator verifies
//!   with its C2S key; the response is UID + authenticator, verifies with
//!   `ntp_client::check_response` under the cookie's S2C key for a
//!   `PendingRequest` rebuilt from the request, and carries at most one cookie
//!   per cookie and placeholder, each opening with the ring to the same keys.
//!
//! The same checks run again on the input with its authenticator re-sealed
//! with the C2S key of its cookie ([`reseal`]), which must then not be dropped
//! for authentication nor NAKed: so the fuzzer also reaches what lies behind
//! the authenticator (encrypted fields, cookie count, response sizing).

use crate::{ring, s2c_key, Counter, NOW};
use nts_proto::aead::{AeadAlgorithm, TAG_LEN};
use nts_proto::cookie;
use nts_proto::extension_field::{
    field_type, write_field, Authenticator, ExtensionFields, MAX_UNIQUE_ID_LEN, MIN_UNIQUE_ID_LEN,
    NONCE_LEN,
};
use nts_proto::ntp_client::{check_response, PendingRequest, ResponseCheckError, UNIQUE_ID_LEN};
use nts_proto::ntp_packet::{
    kiss, LeapIndicator, Mode, NtpHeader, NtpShort, NtpTimestamp, HEADER_LEN,
};
use nts_proto::ntp_server::{
    respond, DropReason, RequestContext, Response, ServerClock, ServerPolicy, MAX_COOKIES_RETURNED,
    MAX_REQUEST_LEN,
};

/// The fixed clock state the fuzzed server reports.
pub fn clock() -> ServerClock {
    ServerClock {
        leap: LeapIndicator::NoWarning,
        stratum: 2,
        precision: -23,
        root_delay: NtpShort::from_seconds(0.004),
        root_dispersion: NtpShort::from_seconds(0.008),
        reference_id: [192, 0, 2, 1],
        reference_timestamp: NtpTimestamp::from_unix(NOW - 64, 0),
    }
}

/// When every request "arrives" (lowest bit set, as the server flags
/// receive timestamps for interleaved mode).
pub fn receive_timestamp() -> NtpTimestamp {
    NtpTimestamp(NtpTimestamp::from_unix(NOW, 400_000_000).0 | 1)
}

/// What the server's clock reads just before sealing (lowest bit clear).
pub fn transmit_timestamp() -> NtpTimestamp {
    NtpTimestamp(NtpTimestamp::from_unix(NOW, 400_050_000).0 & !1)
}

/// The transmit timestamp of "the previous response" for the interleaved pass.
pub fn previous_transmit() -> NtpTimestamp {
    NtpTimestamp(NtpTimestamp::from_unix(NOW - 2, 7_000_000).0 & !1)
}

/// Bytes of output buffer past the request's length, which must stay untouched.
const SLACK: usize = 64;
const SENTINEL: u8 = 0xee;

/// Answer `req` as the fuzzed server: the result, and the response bytes (empty on a drop).
pub fn serve(req: &[u8], rate_kiss: bool) -> (Result<Response, DropReason>, Vec<u8>) {
    serve_with(req, rate_kiss, None)
}

/// [`serve`], in interleaved mode when `previous` is set.
pub fn serve_with(
    req: &[u8],
    rate_kiss: bool,
    previous: Option<NtpTimestamp>,
) -> (Result<Response, DropReason>, Vec<u8>) {
    let clock = clock();
    let policy = ServerPolicy::default();
    let ctx = RequestContext {
        receive_timestamp: receive_timestamp(),
        unix_now: NOW,
        clock: &clock,
        ring: ring(),
        policy: &policy,
        rate_kiss,
        previous_transmit: previous,
    };
    let mut out = vec![SENTINEL; req.len() + SLACK];
    let mut rng = Counter(0x90);
    let mut clock_reads = 0;
    let r = respond(
        req,
        &ctx,
        &mut out,
        &mut |b: &mut [u8]| rng.fill(b),
        &mut || {
            clock_reads += 1;
            transmit_timestamp()
        },
    );
    assert!(
        out[req.len()..].iter().all(|&b| b == SENTINEL),
        "wrote past the request's length"
    );
    let timed = matches!(r, Ok(Response::Plain(_) | Response::Nts { .. }));
    assert_eq!(
        clock_reads,
        usize::from(timed && previous.is_none()),
        "transmit clock read {clock_reads} times for {r:?}"
    );
    match &r {
        Ok(resp) => {
            assert!(
                resp.len() <= req.len(),
                "{resp:?} longer than the {}-byte request",
                req.len()
            );
            out.truncate(resp.len());
        }
        Err(_) => out.clear(),
    }
    (r, out)
}

/// The request's NTS fields, found independently of `respond` (first of each kind).
#[derive(Debug, Default, Clone, Copy)]
struct NtsParts<'a> {
    any: bool,
    unique_id: Option<&'a [u8]>,
    cookie: Option<&'a [u8]>,
    placeholders: usize,
    /// Offset of the authenticator field in the packet, and its body.
    authenticator: Option<(usize, &'a [u8])>,
}

fn nts_parts(rest: &[u8]) -> NtsParts<'_> {
    let mut p = NtsParts::default();
    for f in ExtensionFields::new(rest, ServerPolicy::default().max_extension_fields) {
        let f = f.expect("answered a request whose extension fields do not parse");
        match f.field_type {
            field_type::UNIQUE_IDENTIFIER => {
                p.unique_id.get_or_insert(f.body);
            }
            field_type::NTS_COOKIE => {
                p.cookie.get_or_insert(f.body);
            }
            field_type::NTS_COOKIE_PLACEHOLDER => p.placeholders += 1,
            field_type::NTS_AUTHENTICATOR => {
                p.authenticator
                    .get_or_insert((HEADER_LEN + f.offset, f.body));
            }
            _ => continue,
        }
        p.any = true;
    }
    p
}

/// The one extension field a kiss to an NTS client carries: its Unique Identifier, echoed.
fn uid_field(uid: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_field(&mut v, field_type::UNIQUE_IDENTIFIER, uid);
    v
}

/// The answers to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub normal: Result<Response, DropReason>,
    pub rate_kiss: Result<Response, DropReason>,
    /// The normal answer to the input with its authenticator re-sealed (see [`reseal`]), if it has one.
    pub resealed: Option<Result<Response, DropReason>>,
}

/// The input with its authenticator made genuine: if the first NTS Cookie
/// field opens with the ring and the first NTS Authenticator parses, the
/// authenticator's ciphertext (after the 16-byte tag) is taken as plaintext
/// and sealed with the cookie's C2S key over everything before the field, in
/// place. The fuzzer cannot forge a tag; this lets its mutations of the
/// layout, the Unique Identifier, the placeholders and the encrypted fields
/// reach the code behind authentication.
pub fn reseal(req: &[u8]) -> Option<Vec<u8>> {
    let (_, rest) = NtpHeader::parse(req).ok()?;
    let mut cookie = None;
    let mut auth = None;
    for f in ExtensionFields::new(rest, ServerPolicy::default().max_extension_fields) {
        let Ok(f) = f else { break };
        match f.field_type {
            field_type::NTS_COOKIE => {
                cookie.get_or_insert(f.body);
            }
            field_type::NTS_AUTHENTICATOR => {
                auth.get_or_insert((HEADER_LEN + f.offset, f.body));
            }
            _ => {}
        }
    }
    let keys = cookie::open(ring(), cookie?, NOW).ok()?;
    let (auth_at, body) = auth?;
    let a = Authenticator::parse(body).ok()?;
    let ct_at = a.ciphertext.as_ptr() as usize - req.as_ptr() as usize;
    let sealed = keys
        .c2s
        .seal(a.nonce, &req[..auth_at], &a.ciphertext[TAG_LEN..]);
    let mut out = req.to_vec();
    out[ct_at..ct_at + sealed.len()].copy_from_slice(&sealed);
    Some(out)
}

pub fn check(req: &[u8]) -> Outcome {
    let (normal, rate_kiss) = check_datagram(req);
    let resealed = reseal(req).map(|fixed| {
        let (r, _) = check_datagram(&fixed);
        assert!(
            !matches!(
                r,
                Err(DropReason::AuthenticationFailed) | Ok(Response::Nak { .. })
            ),
            "{r:?} for a request with an opening cookie and a genuine authenticator"
        );
        r
    });
    Outcome {
        normal,
        rate_kiss,
        resealed,
    }
}

/// Answer with and without `rate_kiss` and check both answers.
fn check_datagram(req: &[u8]) -> (Result<Response, DropReason>, Result<Response, DropReason>) {
    let (normal, out) = serve(req, false);
    let (kissed, kiss_out) = serve(req, true);

    for r in [&normal, &kissed] {
        match r {
            Err(DropReason::Internal) => panic!("Internal drop with a request-sized buffer"),
            Err(DropReason::UnauthenticatedRefused) => {
                panic!("plain NTP refused although the policy serves it")
            }
            Err(DropReason::TooLong) => assert!(req.len() > MAX_REQUEST_LEN),
            Err(DropReason::TooShort) => assert!(req.len() < HEADER_LEN),
            Err(DropReason::BadVersion) => assert!(!(1..=4).contains(&((req[0] >> 3) & 7))),
            Err(DropReason::NotClientMode) => assert_ne!(req[0] & 7, Mode::Client as u8),
            _ => {}
        }
    }

    // The RATE decision comes after the request is known to be well formed,
    // and before any cryptography. An NTS request is then dropped, never kissed.
    match (&kissed, &normal) {
        (Err(DropReason::RateLimitedNts), n) => assert!(
            matches!(
                n,
                Ok(Response::Nts { .. } | Response::Nak { .. })
                    | Err(DropReason::AuthenticationFailed | DropReason::MalformedNts)
            ),
            "rate-limited NTS drop for a request otherwise answered {n:?}"
        ),
        (Err(e), n) => assert_eq!(n, &Err(*e), "rate_kiss changed the drop reason"),
        (Ok(Response::Rate(_)), Ok(Response::Rate(_))) => {
            panic!("RATE kiss without rate_kiss")
        }
        (Ok(Response::Rate(_)), Ok(Response::Plain(_))) => {}
        (Ok(Response::Rate(_)), n) => panic!("RATE kiss for a request otherwise answered {n:?}"),
        (Ok(other), _) => panic!("rate_kiss answered {other:?}"),
    }

    if let Ok(r) = normal {
        check_answer(req, r, &out, false, None);
    }
    if let Ok(r) = kissed {
        check_answer(req, r, &kiss_out, true, None);
    }
    // Interleaved mode changes the timestamps, never whether or how much is answered.
    let (inter, inter_out) = serve_with(req, false, Some(previous_transmit()));
    match (&inter, &normal) {
        (Ok(Response::Nts { len, cookies }), Ok(Response::Nts { len: l, cookies: c })) => {
            assert_eq!(
                (len, cookies),
                (l, c),
                "interleaved NTS answer differs in size"
            );
        }
        (Ok(Response::Nak { len, why }), Ok(Response::Nak { len: l, why: w })) => {
            assert_eq!((len, why), (l, w));
        }
        (i, n) => assert_eq!(i, n, "interleaved mode changed the answer"),
    }
    if let Ok(r) = inter {
        check_answer(req, r, &inter_out, false, Some(previous_transmit()));
    }
    (normal, kissed)
}

fn check_answer(
    req: &[u8],
    r: Response,
    out: &[u8],
    rate_kiss: bool,
    previous: Option<NtpTimestamp>,
) {
    assert_eq!(out.len(), r.len());
    let (rh, rrest) = NtpHeader::parse(req).expect("answered a request without a header");
    assert_eq!(rh.mode, Mode::Client);
    let nts = nts_parts(rrest);

    let (h, rest) = NtpHeader::parse(out).expect("the response does not parse");
    assert_eq!(h.mode, Mode::Server, "response not in server mode");
    assert_eq!(h.version, rh.version, "response version");
    assert_eq!(h.poll, rh.poll, "response poll");
    // Interleaved answers (time-bearing ones) echo the request's receive field.
    let interleaved = previous.is_some() && matches!(r, Response::Plain(_) | Response::Nts { .. });
    assert_eq!(
        h.origin_timestamp,
        if interleaved {
            rh.receive_timestamp
        } else {
            rh.transmit_timestamp
        },
        "origin is not the request's transmit (basic) or receive (interleaved) timestamp"
    );
    let clock = clock();
    let timed = |h: &NtpHeader| {
        assert_eq!(h.leap, clock.leap);
        assert_eq!(h.stratum, clock.stratum);
        assert_eq!(h.precision, clock.precision);
        assert_eq!(h.root_delay, clock.root_delay);
        assert_eq!(h.root_dispersion, clock.root_dispersion);
        assert_eq!(h.reference_id, clock.reference_id);
        assert_eq!(h.reference_timestamp, clock.reference_timestamp);
        assert_eq!(h.receive_timestamp, receive_timestamp());
        assert_eq!(
            h.transmit_timestamp,
            previous.unwrap_or_else(transmit_timestamp)
        );
        assert_eq!(h.kiss_code(), None);
    };
    let kissed = |h: &NtpHeader, code: [u8; 4]| {
        assert_eq!(h.kiss_code(), Some(code));
        assert_eq!(h.leap, LeapIndicator::Unsynchronized);
        assert_eq!(h.reference_timestamp, NtpTimestamp::ZERO);
        assert_eq!(h.receive_timestamp, NtpTimestamp::ZERO);
        assert_eq!(h.transmit_timestamp, NtpTimestamp::ZERO);
    };
    let mut pending = PendingRequest {
        unique_id: [0; UNIQUE_ID_LEN],
        origin: rh.transmit_timestamp,
        interleaved_origin: previous.map(|_| rh.receive_timestamp),
    };
    if let Some(uid) = nts.unique_id {
        if let Some(u) = uid.get(..UNIQUE_ID_LEN) {
            pending.unique_id.copy_from_slice(u);
        }
    }
    // Our client sends 32-octet identifiers and compares the echo whole: a
    // request with a longer one (the server takes 32 to 256) is not ours, and
    // the client must refuse its answer as not matching.
    let ours = nts.unique_id.is_some_and(|u| u.len() == UNIQUE_ID_LEN);

    match r {
        Response::Plain(len) => {
            assert!(!rate_kiss, "time served despite rate_kiss");
            assert!(!nts.any, "plain answer to a request with NTS fields");
            assert_eq!(len, HEADER_LEN);
            timed(&h);
            let c = check_response(out, &pending, None).expect("client rejects a plain answer");
            assert!(!c.authenticated && c.cookies.is_empty());
            assert_eq!(c.interleaved, interleaved);
            assert_eq!(c.header, h);
        }
        Response::Rate(_) => {
            assert!(rate_kiss, "RATE kiss without rate_kiss");
            kissed(&h, kiss::RATE);
            assert!(!nts.any, "unauthenticated RATE kiss to an NTS request");
            assert!(
                rest.is_empty(),
                "RATE kiss to a plain client carries fields"
            );
            assert_eq!(
                check_response(out, &pending, None),
                Err(ResponseCheckError::Kiss(kiss::RATE))
            );
        }
        Response::Nak { why, .. } => {
            assert!(!rate_kiss);
            let uid = nts.unique_id.expect("NAK to a request without a UID");
            assert!((MIN_UNIQUE_ID_LEN..=MAX_UNIQUE_ID_LEN).contains(&uid.len()));
            let c = nts.cookie.expect("NAK to a request without a cookie");
            assert!(
                nts.authenticator.is_some(),
                "NAK to a request without authenticator"
            );
            assert_eq!(
                cookie::open(ring(), c, NOW).err(),
                Some(why),
                "NAK for a cookie that opens (or for another reason)"
            );
            kissed(&h, kiss::NTSN);
            assert_eq!(rest, uid_field(uid), "NAK does not echo the UID");
            assert_eq!(
                check_response(out, &pending, Some(&s2c_key(AeadAlgorithm::AesSivCmac256))),
                Err(if ours {
                    ResponseCheckError::NtsNak
                } else {
                    ResponseCheckError::UniqueIdMismatch
                })
            );
        }
        Response::Nts { len, cookies } => {
            assert!(!rate_kiss);
            let uid = nts
                .unique_id
                .expect("NTS answer to a request without a UID");
            assert!((MIN_UNIQUE_ID_LEN..=MAX_UNIQUE_ID_LEN).contains(&uid.len()));
            let c = nts
                .cookie
                .expect("NTS answer to a request without a cookie");
            let keys =
                cookie::open(ring(), c, NOW).expect("NTS answer for a cookie that does not open");
            let (auth_at, auth_body) = nts
                .authenticator
                .expect("NTS answer to a request without authenticator");
            let auth = Authenticator::parse(auth_body).expect("NTS answer to a bad authenticator");
            keys.c2s
                .open(auth.nonce, &req[..auth_at], auth.ciphertext)
                .expect("NTS answer to a request whose authenticator does not verify");
            timed(&h);

            // Layout: header | UID echoed | authenticator (16-byte nonce), nothing else.
            let echo = uid_field(uid);
            assert_eq!(
                rest[..echo.len()],
                echo[..],
                "NTS response does not echo the UID"
            );
            let mut fields = ExtensionFields::new(&rest[echo.len()..], 1);
            let a = fields
                .next()
                .expect("NTS response without authenticator")
                .expect("NTS response authenticator does not parse");
            assert_eq!(a.field_type, field_type::NTS_AUTHENTICATOR);
            assert_eq!(
                HEADER_LEN + echo.len() + a.wire_len(),
                len,
                "bytes after the authenticator"
            );
            let a = Authenticator::parse(a.body).expect("NTS response authenticator body");
            assert_eq!(a.nonce.len(), NONCE_LEN);

            if !ours {
                assert_eq!(
                    check_response(out, &pending, Some(&keys.s2c)).err(),
                    Some(ResponseCheckError::UniqueIdMismatch),
                    "the client took an answer echoing a UID it could not have sent"
                );
                return;
            }
            let checked = check_response(out, &pending, Some(&keys.s2c))
                .expect("the client rejects the NTS response");
            assert!(checked.authenticated);
            assert_eq!(checked.interleaved, interleaved);
            assert_eq!(checked.header, h);
            assert_eq!(checked.cookies.len(), cookies, "cookie count");
            assert!(
                cookies <= (1 + nts.placeholders).min(MAX_COOKIES_RETURNED),
                "{cookies} cookies for 1 cookie and {} placeholders",
                nts.placeholders
            );
            for nc in &checked.cookies {
                let k = cookie::open(ring(), nc, NOW).expect("a returned cookie does not open");
                assert_eq!(k, keys, "a returned cookie carries other keys");
            }
        }
    }
}
