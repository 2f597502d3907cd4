//! `nts_roles`: a differential target over the two roles' readings of one
//! NTS packet. The client builds a request ([`build_request`], or
//! [`build_request_interleaved`]) from fuzzer-chosen parameters; the shared
//! parser ([`NtsPacket::parse`]) must read back exactly what was built, and
//! the server ([`respond`]) must accept it with the matching ring. Then the
//! fuzzer's mutations are applied to the extension fields, and the server's
//! verdict on the mutated request is compared with the client's verdict
//! ([`check_response`]) on a response of the same shape (the same bytes
//! after a server-mode header).
//!
//! Input:
//!
//! ```text
//! byte 0: bit 7 algorithm (0: AES-SIV-CMAC-256, 1: -512), bits 0-2 placeholders,
//!         bit 3 interleaved, bits 4-6 number of mutations
//! byte 1: cookie length when the cookie is the fuzzer's own (0: a genuine cookie)
//! then:   that many cookie bytes, then mutations of 3 bytes each
//!         (offset into the extension fields, big endian u16, and an XOR mask)
//! ```
//!
//! The client's builder always sends a 32-octet Unique Identifier
//! ([`UNIQUE_ID_LEN`]); other lengths are reached through the mutations.
//!
//! Checks:
//! * the view of the built request has the request's UID, its cookie (with
//!   the field's zero padding), as many placeholders as asked, the
//!   authenticator as the last field and the request's transmit timestamp;
//! * a genuine cookie is answered `Nts` with one cookie per cookie and
//!   placeholder, which the client accepts; the fuzzer's own cookie is NAKed,
//!   which the client reports as a NAK;
//! * after mutation: the server's parse refuses the fields exactly when the
//!   client refuses them as malformed NTS extension fields; an authenticator
//!   body one role cannot parse the other cannot either; whatever the server
//!   still answers with time verifies at the client under the request's UID.

use crate::{c2s_key, ring, s2c_key, Counter, NOW};
use nts_proto::aead::AeadAlgorithm;
use nts_proto::extension_field::{field_wire_len, Authenticator};
use nts_proto::interleaved::InterleavedFields;
use nts_proto::ntp_client::{
    build_request, build_request_interleaved, check_response, PendingRequest, ResponseCheckError,
    UNIQUE_ID_LEN,
};
use nts_proto::ntp_packet::{Mode, NtpTimestamp, HEADER_LEN};
use nts_proto::ntp_server::{
    parse_request, respond, DropReason, RequestContext, Response, ServerPolicy,
    MAX_COOKIES_RETURNED,
};
use nts_proto::nts_fields::{NtsPacket, DEFAULT_MAX_FIELDS};

/// What one input did (for the seed tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The unmutated request was answered with time (genuine cookie).
    pub answered: bool,
    /// The unmutated request was NAKed (the fuzzer's cookie).
    pub naked: bool,
    /// Mutations were applied.
    pub mutated: bool,
    /// The mutated request's fields were refused by both roles.
    pub both_refused_fields: bool,
    /// The mutated authenticator was refused by both roles as unparseable.
    pub auth_refused_by_both: bool,
}

fn serve(req: &[u8]) -> (Result<Response, DropReason>, Vec<u8>) {
    let clock = crate::ntp_server::clock();
    let policy = ServerPolicy::default();
    let ctx = RequestContext {
        receive_timestamp: crate::ntp_server::receive_timestamp(),
        unix_now: NOW,
        clock: &clock,
        ring: ring(),
        policy: &policy,
        rate_kiss: false,
        previous_transmit: None,
    };
    let mut out = vec![0u8; req.len()];
    let mut rng = Counter(0x17);
    let r = respond(req, &ctx, &mut out, &mut |b| rng.fill(b), &mut || {
        crate::ntp_server::transmit_timestamp()
    });
    if let Ok(resp) = &r {
        out.truncate(resp.len());
    }
    (r, out)
}

/// The request's bytes after a server-mode header with `origin`: a response
/// shaped as the request is.
fn response_shaped(req: &[u8], origin: NtpTimestamp) -> Vec<u8> {
    let mut t = req.to_vec();
    t[0] = (t[0] & !0x07) | Mode::Server as u8;
    t[24..32].copy_from_slice(&origin.0.to_be_bytes());
    t
}

/// Run the checks on one input.
pub fn check(data: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&cookie_len, rest) = rest.split_first().unwrap_or((&0, &[]));
    let alg = if flags & 0x80 != 0 {
        AeadAlgorithm::AesSivCmac512
    } else {
        AeadAlgorithm::AesSivCmac256
    };
    let placeholders = usize::from(flags & 0x07);
    let (c2s, s2c) = (c2s_key(alg), s2c_key(alg));
    let own = usize::from(cookie_len).min(rest.len());
    let (cookie, mutations) = if cookie_len == 0 {
        (crate::seeds::genuine_cookie(alg, 9), rest)
    } else {
        (rest[..own].to_vec(), &rest[own..])
    };
    let mut req = Vec::new();
    let mut rng = Counter(flags ^ cookie_len);
    let nts = Some((cookie.as_slice(), placeholders, &c2s));
    let pending = if flags & 0x08 != 0 {
        let f = InterleavedFields {
            origin: NtpTimestamp(0x1111),
            receive: NtpTimestamp(0x2223),
        };
        build_request_interleaved(&mut req, nts, Some(f), &mut |b| rng.fill(b))
    } else {
        build_request(&mut req, nts, &mut |b| rng.fill(b))
    };
    read_back(&req, &pending, &cookie, placeholders);
    if req.len() > nts_proto::ntp_server::MAX_REQUEST_LEN {
        return out;
    }

    let (r, resp) = serve(&req);
    match r {
        Ok(Response::Nts { cookies, .. }) => {
            assert_eq!(cookie_len, 0, "the fuzzer's own cookie opened");
            assert_eq!(cookies, (placeholders + 1).min(MAX_COOKIES_RETURNED));
            let c = check_response(&resp, &pending, Some(&s2c)).expect("client accepts");
            assert!(c.authenticated && c.cookies.len() == cookies);
            out.answered = true;
        }
        Ok(Response::Nak { .. }) => {
            assert_ne!(cookie_len, 0, "a genuine cookie was NAKed");
            let c = check_response(&resp, &pending, Some(&s2c));
            assert_eq!(c, Err(ResponseCheckError::NtsNak));
            out.naked = true;
        }
        other => panic!("built request answered {other:?}"),
    }

    let n = usize::from((flags >> 4) & 0x07);
    let fields_len = req.len() - HEADER_LEN;
    let mut m = req.clone();
    for mu in mutations.chunks_exact(3).take(n) {
        let at = usize::from(u16::from_be_bytes([mu[0], mu[1]])) % fields_len;
        m[HEADER_LEN + at] ^= mu[2];
        out.mutated |= mu[2] != 0;
    }
    if out.mutated {
        (out.both_refused_fields, out.auth_refused_by_both) = compare(&m, &pending, &s2c);
    }
    out
}

/// The shared parser reads back what the client built.
fn read_back(req: &[u8], pending: &PendingRequest, cookie: &[u8], placeholders: usize) {
    let v = NtsPacket::parse(req, DEFAULT_MAX_FIELDS).expect("built request parses");
    assert_eq!(v.header.transmit_timestamp, pending.origin);
    assert_eq!(v.header.mode, Mode::Client);
    assert_eq!(v.fields.unique_id, Some(&pending.unique_id[..]));
    assert_eq!(pending.unique_id.len(), UNIQUE_ID_LEN);
    let got = v.fields.cookie.expect("cookie read back");
    assert_eq!(got.len(), field_wire_len(cookie.len()) - 4);
    assert_eq!(&got[..cookie.len()], cookie);
    assert!(got[cookie.len()..].iter().all(|&b| b == 0), "padding");
    assert_eq!(v.fields.placeholders, placeholders);
    let (at, body) = v.fields.authenticator.expect("authenticator read back");
    assert_eq!(at + 4 + body.len(), req.len(), "authenticator is last");
    assert!(Authenticator::parse(body).is_ok());
    assert!(v.fields.any_nts);
    // A request longer than the server takes (a fuzzer-made cookie of up to
    // 255 octets and 7 placeholders; a genuine one is at most 168) is refused
    // for its length alone.
    if req.len() > nts_proto::ntp_server::MAX_REQUEST_LEN {
        assert_eq!(
            parse_request(req, &ServerPolicy::default()),
            Err(nts_proto::ntp_server::DropReason::TooLong)
        );
        return;
    }
    assert_eq!(parse_request(req, &ServerPolicy::default()), Ok(v));
}

/// The two roles on a mutated request and its response-shaped twin; returns
/// whether both refused the extension fields, and the authenticator.
fn compare(m: &[u8], pending: &PendingRequest, s2c: &nts_proto::aead::AeadKey) -> (bool, bool) {
    let parsed = parse_request(m, &ServerPolicy::default());
    let (server, answer) = serve(m);
    let twin = response_shaped(m, pending.origin);
    let client = check_response(&twin, pending, Some(s2c));
    let client_fields = client == Err(ResponseCheckError::Malformed("bad NTS extension fields"));
    assert_eq!(
        parsed.is_err(),
        client_fields,
        "server parse {parsed:?}, client {client:?}"
    );
    let mut auth_both = false;
    if let Ok(v) = parsed {
        let auth_bad = v
            .fields
            .authenticator
            .is_some_and(|(_, b)| Authenticator::parse(b).is_err());
        let server_reads_auth = v.fields.unique_id.is_some() && v.fields.cookie.is_some();
        let client_reads_auth = v.fields.unique_id == Some(&pending.unique_id[..]);
        if auth_bad && server_reads_auth {
            assert_eq!(server, Err(DropReason::MalformedNts), "bad authenticator");
        }
        if auth_bad && client_reads_auth {
            assert_eq!(
                client,
                Err(ResponseCheckError::Malformed("bad authenticator"))
            );
        }
        auth_both = auth_bad && server_reads_auth && client_reads_auth;
        if let (Ok(Response::Nts { .. }), Some(uid)) = (server, v.fields.unique_id) {
            // The server accepted it: the authenticator verified, so it is the
            // client's (or a mutation the AEAD cannot see, none): the answer
            // verifies under the UID the request carried.
            let mut p = pending.clone();
            let uid: [u8; UNIQUE_ID_LEN] = uid.try_into().expect("a verified request's UID");
            p.unique_id = uid;
            assert!(check_response(&answer, &p, Some(s2c)).is_ok());
        }
    }
    (client_fields, auth_both)
}
