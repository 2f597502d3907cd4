//! The client's side of an NTS-protected NTP exchange (RFC 8915 section 5):
//! build a request around one cookie, then check and decrypt the response.
//! Also the plain (unauthenticated) request and its checks.

use crate::aead::{AeadKey, TAG_LEN};
use crate::extension_field::{
    field_type, field_wire_len, Authenticator, ExtensionFields, NONCE_LEN,
};
use crate::interleaved::InterleavedFields;
use crate::ntp_packet::{kiss, LeapIndicator, Mode, NtpHeader, NtpTimestamp, HEADER_LEN};
use crate::nts_fields;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Length of the Unique Identifier we send.
pub const UNIQUE_ID_LEN: usize = 32;

/// A request to send, and what is needed to check its answer.
#[derive(Debug, Clone)]
pub struct PendingRequest {
    pub unique_id: [u8; UNIQUE_ID_LEN],
    /// Our transmit timestamp: random bits, so an off-path attacker cannot guess it.
    pub origin: NtpTimestamp,
    /// The receive field of an interleaved request: an interleaved answer
    /// carries it as its origin (RFC 9769 section 2).
    pub interleaved_origin: Option<NtpTimestamp>,
}

/// Build a client-mode request. With `nts` set it carries the Unique Identifier,
/// the cookie, `placeholders` Cookie Placeholders and the authenticator sealed with C2S.
///
/// `random` supplies the Unique Identifier, the transmit timestamp and the nonce.
pub fn build_request(
    out: &mut Vec<u8>,
    nts: Option<(&[u8], usize, &AeadKey)>,
    random: &mut dyn FnMut(&mut [u8]),
) -> PendingRequest {
    build_request_interleaved(out, nts, None, random)
}

/// [`build_request`] asking for interleaved mode: origin and receive fields
/// refer to the previous exchange, so the server may answer with the real
/// transmit timestamp of its previous response.
pub fn build_request_interleaved(
    out: &mut Vec<u8>,
    nts: Option<(&[u8], usize, &AeadKey)>,
    interleave: Option<InterleavedFields>,
    random: &mut dyn FnMut(&mut [u8]),
) -> PendingRequest {
    let mut unique_id = [0u8; UNIQUE_ID_LEN];
    random(&mut unique_id);
    let mut t = [0u8; 8];
    random(&mut t);
    let mut origin = NtpTimestamp(u64::from_be_bytes(t));
    if interleave.is_some_and(|f| f.receive == origin) {
        // The two must differ for the server, and for us to tell the answers apart.
        origin.0 ^= 1;
    }
    let header = NtpHeader {
        leap: LeapIndicator::Unsynchronized,
        version: 4,
        mode: Mode::Client,
        origin_timestamp: interleave.map_or(NtpTimestamp::ZERO, |f| f.origin),
        receive_timestamp: interleave.map_or(NtpTimestamp::ZERO, |f| f.receive),
        transmit_timestamp: origin,
        ..Default::default()
    };
    out.clear();
    out.extend_from_slice(&header.to_bytes());
    if let Some((cookie, placeholders, c2s)) = nts {
        crate::extension_field::write_field(out, field_type::UNIQUE_IDENTIFIER, &unique_id);
        crate::extension_field::write_field(out, field_type::NTS_COOKIE, cookie);
        let zeros = [0u8; 512];
        for _ in 0..placeholders {
            let body = &zeros[..cookie.len().min(zeros.len())];
            crate::extension_field::write_field(out, field_type::NTS_COOKIE_PLACEHOLDER, body);
        }
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce);
        let tag = c2s.seal_detached(&nonce, out.as_slice(), &mut []);
        let mut body = Vec::with_capacity(Authenticator::body_len(NONCE_LEN, TAG_LEN));
        body.extend_from_slice(&(NONCE_LEN as u16).to_be_bytes());
        body.extend_from_slice(&(TAG_LEN as u16).to_be_bytes());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&tag);
        crate::extension_field::write_field(out, field_type::NTS_AUTHENTICATOR, &body);
    }
    PendingRequest {
        unique_id,
        origin,
        interleaved_origin: interleave.map(|f| f.receive),
    }
}

/// A response that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedResponse {
    pub header: NtpHeader,
    /// New cookies from the encrypted part (NTS only).
    pub cookies: Vec<Vec<u8>>,
    pub authenticated: bool,
    /// An interleaved answer: its transmit timestamp completes the previous exchange.
    pub interleaved: bool,
}

/// Why a response is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ResponseCheckError {
    #[error("not an NTP server response: {0}")]
    Malformed(&'static str),
    #[error("origin timestamp does not match our request")]
    OriginMismatch,
    #[error("Unique Identifier does not match our request")]
    UniqueIdMismatch,
    #[error("server sent NTS NAK: our cookie was refused")]
    NtsNak,
    #[error("kiss-o'-death {0:?}")]
    Kiss([u8; 4]),
    #[error("response is not authenticated")]
    Unauthenticated,
    #[error("authenticator failed to verify")]
    AuthenticationFailed,
}

/// Check a response against the pending request. With `s2c` the response must be
/// NTS-authenticated; an NTS NAK is recognised (it is unauthenticated by nature,
/// so it is only reported when the Unique Identifier matches).
pub fn check_response(
    resp: &[u8],
    pending: &PendingRequest,
    s2c: Option<&AeadKey>,
) -> Result<CheckedResponse, ResponseCheckError> {
    use ResponseCheckError as E;
    let (header, _) = NtpHeader::parse(resp).map_err(|_| E::Malformed("bad header"))?;
    if header.mode != Mode::Server {
        return Err(E::Malformed("not server mode"));
    }
    let interleaved = pending.interleaved_origin == Some(header.origin_timestamp);
    if header.origin_timestamp != pending.origin && !interleaved {
        return Err(E::OriginMismatch);
    }
    let nts = nts_fields::scan(resp, nts_fields::DEFAULT_MAX_FIELDS)
        .map_err(|_| E::Malformed("bad NTS extension fields"))?;
    // The whole identifier, in constant time (same length first: it is public).
    let uid_ok = nts.unique_id.is_some_and(|b| {
        b.len() == pending.unique_id.len() && bool::from(b.ct_eq(&pending.unique_id))
    });
    let auth = nts.authenticator;
    let Some(s2c) = s2c else {
        if let Some(code) = header.kiss_code() {
            return Err(E::Kiss(code));
        }
        return Ok(CheckedResponse {
            header,
            cookies: Vec::new(),
            authenticated: false,
            interleaved,
        });
    };
    if !uid_ok {
        return Err(E::UniqueIdMismatch);
    }
    if header.kiss_code() == Some(kiss::NTSN) && auth.is_none() {
        return Err(E::NtsNak);
    }
    let (auth_at, body) = auth.ok_or(E::Unauthenticated)?;
    let a = Authenticator::parse(body).map_err(|_| E::Malformed("bad authenticator"))?;
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&a.ciphertext[..TAG_LEN]);
    let mut plain = a.ciphertext[TAG_LEN..].to_vec();
    s2c.open_detached(a.nonce, &resp[..auth_at], &tag, &mut plain)
        .map_err(|_| E::AuthenticationFailed)?;
    if let Some(code) = header.kiss_code() {
        return Err(E::Kiss(code));
    }
    let mut cookies = Vec::new();
    for f in ExtensionFields::new(&plain, nts_fields::DEFAULT_MAX_FIELDS) {
        let f = f.map_err(|_| E::Malformed("bad encrypted field"))?;
        if f.field_type == field_type::NTS_COOKIE {
            cookies.push(f.body.to_vec());
        }
    }
    Ok(CheckedResponse {
        header,
        cookies,
        authenticated: true,
        interleaved,
    })
}

/// Wire length of a request with a cookie of `cookie_len` bytes and `placeholders` placeholders.
pub fn nts_request_len(cookie_len: usize, placeholders: usize) -> usize {
    HEADER_LEN
        + field_wire_len(UNIQUE_ID_LEN)
        + (1 + placeholders) * field_wire_len(cookie_len)
        + field_wire_len(Authenticator::body_len(NONCE_LEN, TAG_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aead::AeadAlgorithm;
    use crate::cookie::{self, CookieContents};
    use crate::key_ring::{KeyRing, KeySchedule, RootSecret};
    use crate::ntp_packet::NtpShort;
    use crate::ntp_server::{
        respond, DropReason, RequestContext, Response, ServerClock, ServerPolicy,
    };
    use rand::RngCore;

    struct Setup {
        ring: KeyRing,
        now: u64,
        c2s: AeadKey,
        s2c: AeadKey,
        cookie: Vec<u8>,
        clock: ServerClock,
        policy: ServerPolicy,
    }

    fn setup(alg: AeadAlgorithm) -> Setup {
        let root = RootSecret::from_bytes(&[9; 32]).unwrap();
        let now = 1_800_000_000;
        let ring = KeyRing::derive(&root, &KeySchedule::new(3600, 2).unwrap(), now);
        let c2s = AeadKey::new(alg, &vec![0x11; alg.key_len()]).unwrap();
        let s2c = AeadKey::new(alg, &vec![0x22; alg.key_len()]).unwrap();
        let cookie = cookie::seal(
            ring.current(now).unwrap(),
            &CookieContents {
                c2s: c2s.clone(),
                s2c: s2c.clone(),
            },
            &[3; 16],
        );
        let clock = ServerClock {
            leap: LeapIndicator::NoWarning,
            stratum: 1,
            precision: -20,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(10),
            reference_id: *b"LOCL",
            reference_timestamp: NtpTimestamp(5),
        };
        Setup {
            ring,
            now,
            c2s,
            s2c,
            cookie,
            clock,
            policy: ServerPolicy::default(),
        }
    }

    fn rnd(b: &mut [u8]) {
        rand::thread_rng().fill_bytes(b)
    }

    fn serve(s: &Setup, req: &[u8], rate_kiss: bool) -> (Result<Response, DropReason>, Vec<u8>) {
        let ctx = RequestContext {
            receive_timestamp: NtpTimestamp(100),
            unix_now: s.now,
            clock: &s.clock,
            ring: &s.ring,
            policy: &s.policy,
            rate_kiss,
            previous_transmit: None,
        };
        let mut out = vec![0u8; req.len()];
        let r = respond(req, &ctx, &mut out, &mut rnd, &mut || NtpTimestamp(200));
        if let Ok(resp) = &r {
            out.truncate(resp.len());
        }
        (r, out)
    }

    #[test]
    fn nts_round_trip_both_algorithms() {
        for alg in AeadAlgorithm::ALL {
            let s = setup(alg);
            for placeholders in [0, 1, 7] {
                let mut req = Vec::new();
                let p = build_request(&mut req, Some((&s.cookie, placeholders, &s.c2s)), &mut rnd);
                assert_eq!(req.len(), nts_request_len(s.cookie.len(), placeholders));
                let (r, out) = serve(&s, &req, false);
                let r = r.unwrap();
                assert_eq!(
                    r,
                    Response::Nts {
                        len: out.len(),
                        cookies: placeholders + 1
                    }
                );
                assert!(out.len() <= req.len());
                let checked = check_response(&out, &p, Some(&s.s2c)).unwrap();
                assert!(checked.authenticated);
                assert_eq!(checked.cookies.len(), placeholders + 1);
                // Receive timestamps go out with the lowest bit set (interleaved mode's flag).
                assert_eq!(checked.header.receive_timestamp, NtpTimestamp(101));
                assert_eq!(checked.header.transmit_timestamp, NtpTimestamp(200));
                assert!(!checked.interleaved);
                assert_eq!(checked.header.stratum, 1);
                // The new cookies open to the same keys.
                for c in &checked.cookies {
                    let k = cookie::open(&s.ring, c, s.now).unwrap();
                    assert_eq!(k.c2s, s.c2s);
                    assert_eq!(k.s2c, s.s2c);
                }
                // Tampering with any byte of the response is caught.
                for i in 0..out.len() {
                    let mut bad = out.clone();
                    bad[i] ^= 0x40;
                    assert!(check_response(&bad, &p, Some(&s.s2c)).is_err(), "byte {i}");
                }
            }
        }
    }

    #[test]
    fn nothing_may_follow_the_authenticator() {
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut req = Vec::new();
        let p = build_request(&mut req, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        let (_, out) = serve(&s, &req, false);
        for extra in [4usize, 20, 24] {
            let mut r = req.clone();
            r.extend(std::iter::repeat_n(0xffu8, extra));
            assert_eq!(
                serve(&s, &r, false).0,
                Err(DropReason::MalformedNts),
                "{extra}"
            );
            let mut o = out.clone();
            o.extend(std::iter::repeat_n(0xffu8, extra));
            assert!(check_response(&o, &p, Some(&s.s2c)).is_err(), "{extra}");
        }
    }

    /// A NAK (header plus `uid_fields`), as anyone who saw the request could forge it.
    fn nak_with(req: &[u8], uid_fields: &[Vec<u8>]) -> Vec<u8> {
        let (h, _) = NtpHeader::parse(req).unwrap();
        let mut resp = NtpHeader {
            mode: Mode::Server,
            reference_id: crate::ntp_packet::kiss::NTSN,
            origin_timestamp: h.transmit_timestamp,
            ..Default::default()
        }
        .to_bytes()
        .to_vec();
        for uid in uid_fields {
            crate::extension_field::write_field(&mut resp, field_type::UNIQUE_IDENTIFIER, uid);
        }
        resp
    }

    #[test]
    fn the_client_reads_unique_identifiers_by_the_servers_rules() {
        // Both roles walk the fields with nts_fields::scan: a duplicated
        // Unique Identifier is malformed (it was last-one-wins here), and the
        // identifier must be the request's whole (a longer one sharing its
        // first 32 octets used to match).
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut req = Vec::new();
        let p = build_request(&mut req, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        let good = p.unique_id.to_vec();
        assert_eq!(
            check_response(
                &nak_with(&req, std::slice::from_ref(&good)),
                &p,
                Some(&s.s2c)
            ),
            Err(ResponseCheckError::NtsNak)
        );
        let other = vec![0x55; 32];
        for (fields, what) in [
            (
                vec![other.clone(), good.clone()],
                "duplicate, the last one matching",
            ),
            (
                vec![good.clone(), other],
                "duplicate, the first one matching",
            ),
        ] {
            assert!(
                matches!(
                    check_response(&nak_with(&req, &fields), &p, Some(&s.s2c)),
                    Err(ResponseCheckError::Malformed(_))
                ),
                "{what}"
            );
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(
            check_response(&nak_with(&req, &[longer]), &p, Some(&s.s2c)),
            Err(ResponseCheckError::UniqueIdMismatch)
        );
    }

    #[test]
    fn bad_cookie_gets_nak() {
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut bad_cookie = s.cookie.clone();
        bad_cookie[30] ^= 1;
        let mut req = Vec::new();
        let p = build_request(&mut req, Some((&bad_cookie, 0, &s.c2s)), &mut rnd);
        let (r, out) = serve(&s, &req, false);
        assert!(matches!(r, Ok(Response::Nak { .. })));
        assert!(out.len() <= req.len());
        assert_eq!(
            check_response(&out, &p, Some(&s.s2c)),
            Err(ResponseCheckError::NtsNak)
        );
        // Unknown key id.
        bad_cookie = s.cookie.clone();
        bad_cookie[0] ^= 0xff;
        build_request(&mut req, Some((&bad_cookie, 0, &s.c2s)), &mut rnd);
        assert!(matches!(
            serve(&s, &req, false).0,
            Ok(Response::Nak {
                why: crate::cookie::CookieError::Key(_),
                ..
            })
        ));
    }

    #[test]
    fn bad_authenticator_is_dropped() {
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut req = Vec::new();
        build_request(&mut req, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        // Change the transmit timestamp after sealing: the AD no longer matches.
        req[47] ^= 1;
        assert_eq!(
            serve(&s, &req, false).0,
            Err(DropReason::AuthenticationFailed)
        );
        // Sealed with the wrong key.
        let wrong = AeadKey::new(AeadAlgorithm::AesSivCmac256, &[0x33; 32]).unwrap();
        build_request(&mut req, Some((&s.cookie, 0, &wrong)), &mut rnd);
        assert_eq!(
            serve(&s, &req, false).0,
            Err(DropReason::AuthenticationFailed)
        );
    }

    #[test]
    fn plain_ntp_and_policy() {
        let mut s = setup(AeadAlgorithm::AesSivCmac256);
        let mut req = Vec::new();
        let p = build_request(&mut req, None, &mut rnd);
        let (r, out) = serve(&s, &req, false);
        assert_eq!(r, Ok(Response::Plain(48)));
        let c = check_response(&out, &p, None).unwrap();
        assert!(!c.authenticated);
        assert_eq!(c.header.version, 4);
        // A v3 client gets v3 back.
        req[0] = (req[0] & !0x38) | (3 << 3);
        let (_, out) = serve(&s, &req, false);
        assert_eq!(NtpHeader::parse(&out).unwrap().0.version, 3);
        // An NTS client refuses an unauthenticated answer.
        let mut nreq = Vec::new();
        let np = build_request(&mut nreq, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        assert_eq!(
            check_response(&out, &np, Some(&s.s2c)),
            Err(ResponseCheckError::OriginMismatch)
        );
        s.policy.serve_unauthenticated = false;
        assert_eq!(
            serve(&s, &req, false).0,
            Err(DropReason::UnauthenticatedRefused)
        );
        // NTS is still served.
        assert!(matches!(
            serve(&s, &nreq, false).0,
            Ok(Response::Nts { .. })
        ));
    }

    #[test]
    fn rate_kiss() {
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut req = Vec::new();
        let p = build_request(&mut req, None, &mut rnd);
        let (r, out) = serve(&s, &req, true);
        assert_eq!(r, Ok(Response::Rate(48)));
        assert_eq!(
            check_response(&out, &p, None),
            Err(ResponseCheckError::Kiss(*b"RATE"))
        );
        let mut nreq = Vec::new();
        build_request(&mut nreq, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        // NTS over the rate: dropped, never an unauthenticated kiss.
        let (r, _) = serve(&s, &nreq, true);
        assert_eq!(r, Err(DropReason::RateLimitedNts));
        let policy = ServerPolicy::default();
        assert_eq!(
            crate::ntp_server::over_rate_reason(&nreq, &policy),
            DropReason::RateLimitedNts
        );
        assert_eq!(
            crate::ntp_server::over_rate_reason(&req, &policy),
            DropReason::RateLimited
        );
    }

    #[test]
    fn unsynchronized_server_answers_plain_but_not_nts() {
        let mut s = setup(AeadAlgorithm::AesSivCmac256);
        s.clock = ServerClock::unsynchronized(-20);
        let mut req = Vec::new();
        build_request(&mut req, None, &mut rnd);
        let (r, out) = serve(&s, &req, false);
        assert_eq!(r, Ok(Response::Plain(48)));
        assert_eq!(
            NtpHeader::parse(&out).unwrap().0.leap,
            LeapIndicator::Unsynchronized
        );
        let mut nreq = Vec::new();
        build_request(&mut nreq, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        assert_eq!(serve(&s, &nreq, false).0, Err(DropReason::Unsynchronized));
    }

    #[test]
    fn malformed_requests_are_dropped_by_reason() {
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut good = Vec::new();
        build_request(&mut good, Some((&s.cookie, 0, &s.c2s)), &mut rnd);
        assert_eq!(serve(&s, &good[..47], false).0, Err(DropReason::TooShort));
        assert_eq!(
            serve(&s, &vec![0x23; 3000], false).0,
            Err(DropReason::TooLong)
        );
        let mut v = good.clone();
        v[0] = (v[0] & !0x38) | (5 << 3);
        assert_eq!(serve(&s, &v, false).0, Err(DropReason::BadVersion));
        for mode in [0u8, 1, 2, 4, 5, 6, 7] {
            let mut m = good.clone();
            m[0] = (m[0] & !7) | mode;
            assert_eq!(
                serve(&s, &m, false).0,
                Err(DropReason::NotClientMode),
                "mode {mode}"
            );
        }
        // Bad extension field length.
        let mut b = good.clone();
        b[50] = 0xff;
        assert_eq!(serve(&s, &b, false).0, Err(DropReason::MalformedExtensions));
        // Too many fields.
        let mut many = good[..48].to_vec();
        for _ in 0..17 {
            crate::extension_field::write_field(&mut many, 0x7777, &[0; 12]);
        }
        assert_eq!(
            serve(&s, &many, false).0,
            Err(DropReason::TooManyExtensions)
        );
        // Cookie without authenticator; authenticator without cookie; short UID; field after auth.
        let uid = [1u8; 32];
        let mut no_auth = good[..48].to_vec();
        crate::extension_field::write_field(&mut no_auth, field_type::UNIQUE_IDENTIFIER, &uid);
        crate::extension_field::write_field(&mut no_auth, field_type::NTS_COOKIE, &s.cookie);
        assert_eq!(serve(&s, &no_auth, false).0, Err(DropReason::MalformedNts));
        let mut after = good.clone();
        crate::extension_field::write_field(&mut after, 0x7777, &[0; 12]);
        assert_eq!(serve(&s, &after, false).0, Err(DropReason::MalformedNts));
        let mut short_uid = good[..48].to_vec();
        crate::extension_field::write_field(
            &mut short_uid,
            field_type::UNIQUE_IDENTIFIER,
            &[1; 16],
        );
        short_uid.extend_from_slice(&good[48 + 36..]);
        assert_eq!(
            serve(&s, &short_uid, false).0,
            Err(DropReason::MalformedNts)
        );
    }

    /// A request authenticated with a nonce of `nonce_len` bytes and 7 placeholders.
    fn request_with_nonce(s: &Setup, nonce_len: usize) -> (Vec<u8>, PendingRequest) {
        let mut req = Vec::new();
        let p = build_request(&mut req, None, &mut rnd);
        crate::extension_field::write_field(&mut req, field_type::UNIQUE_IDENTIFIER, &p.unique_id);
        crate::extension_field::write_field(&mut req, field_type::NTS_COOKIE, &s.cookie);
        for _ in 0..7 {
            crate::extension_field::write_field(
                &mut req,
                field_type::NTS_COOKIE_PLACEHOLDER,
                &vec![0; s.cookie.len()],
            );
        }
        let nonce = vec![7u8; nonce_len];
        let tag = s.c2s.seal_detached(&nonce, &req, &mut []);
        let mut body = Vec::new();
        body.extend_from_slice(&(nonce_len as u16).to_be_bytes());
        body.extend_from_slice(&16u16.to_be_bytes());
        body.extend_from_slice(&nonce);
        body.resize(4 + nonce_len.div_ceil(4) * 4, 0);
        body.extend_from_slice(&tag);
        crate::extension_field::write_field(&mut req, field_type::NTS_AUTHENTICATOR, &body);
        (req, p)
    }

    #[test]
    fn nonces_shorter_than_16_octets_are_refused() {
        // RFC 8915 section 5.6: the nonce is at least 16 octets.
        let s = setup(AeadAlgorithm::AesSivCmac512);
        for short in [1, 4, 15] {
            let (req, _) = request_with_nonce(&s, short);
            let (r, _) = serve(&s, &req, false);
            assert_eq!(r, Err(DropReason::MalformedNts), "{short}-byte nonce");
        }
    }

    #[test]
    fn response_never_exceeds_request_even_with_the_shortest_nonce() {
        let s = setup(AeadAlgorithm::AesSivCmac512);
        let (req, p) = request_with_nonce(&s, 16);
        let (r, out) = serve(&s, &req, false);
        let Ok(Response::Nts { len, cookies }) = r else {
            panic!("{r:?}")
        };
        assert!(len <= req.len());
        assert!(cookies >= 7, "{cookies}");
        assert_eq!(
            check_response(&out, &p, Some(&s.s2c))
                .unwrap()
                .cookies
                .len(),
            cookies
        );
    }

    #[test]
    fn random_bytes_never_panic_or_amplify() {
        let s = setup(AeadAlgorithm::AesSivCmac256);
        let mut rng = rand::thread_rng();
        let mut good = Vec::new();
        build_request(&mut good, Some((&s.cookie, 2, &s.c2s)), &mut rnd);
        for i in 0..20_000 {
            let mut req = if i % 2 == 0 {
                let mut r = vec![0u8; (rng.next_u32() % 600) as usize];
                rng.fill_bytes(&mut r);
                if !r.is_empty() {
                    r[0] = 0x23; // v4 client, so the fields get parsed
                }
                r
            } else {
                let mut r = good.clone();
                let n = 1 + rng.next_u32() as usize % 4;
                for _ in 0..n {
                    let at = rng.next_u32() as usize % r.len();
                    r[at] = rng.next_u32() as u8;
                }
                r.truncate(48 + rng.next_u32() as usize % (r.len() - 47));
                r
            };
            req.truncate(MAX_REQUEST_LEN_FOR_TEST);
            let (r, _) = serve(&s, &req, false);
            if let Ok(resp) = r {
                assert!(resp.len() <= req.len());
            }
        }
    }

    const MAX_REQUEST_LEN_FOR_TEST: usize = crate::ntp_server::MAX_REQUEST_LEN;

    /// RFC 9769 over the real server function and client checks, NTS and
    /// plain: the third request of a client is answered with the kernel's
    /// transmit timestamp of the second response, and a client that never
    /// sent the request its origin names gets a basic answer.
    #[test]
    fn interleaved_answer_carries_the_previous_transmit_timestamp() {
        use crate::interleaved::{ClientAddress, InterleavedClient, TransmitTable};
        let s = setup(AeadAlgorithm::AesSivCmac256);
        for nts in [true, false] {
            let mut table = TransmitTable::new(256);
            let me = ClientAddress::from("192.0.2.7".parse::<std::net::IpAddr>().unwrap());
            let stranger = ClientAddress::from("198.51.100.9".parse::<std::net::IpAddr>().unwrap());
            let mut client = InterleavedClient::new();
            let mut kernel_tx = Vec::new();
            let mut modes = Vec::new();
            for i in 0..4u64 {
                let mut req = Vec::new();
                let creds = nts.then_some((&s.cookie[..], 0, &s.c2s));
                let p =
                    build_request_interleaved(&mut req, creds, client.request_fields(), &mut rnd);
                let (h, _) = NtpHeader::parse(&req).unwrap();
                let d = table.decide(&h, me);
                let rx = NtpTimestamp(1_000_000 * (i + 1));
                let ctx = RequestContext {
                    receive_timestamp: rx,
                    unix_now: s.now,
                    clock: &s.clock,
                    ring: &s.ring,
                    policy: &s.policy,
                    rate_kiss: false,
                    previous_transmit: d.previous_transmit,
                };
                let mut out = vec![0u8; req.len()];
                let r = respond(&req, &ctx, &mut out, &mut rnd, &mut || rx).unwrap();
                out.truncate(r.len());
                let checked = check_response(&out, &p, nts.then_some(&s.s2c)).unwrap();
                assert_eq!(checked.authenticated, nts);
                // What the kernel reports after the response left: 5 ticks later.
                let sent = NtpTimestamp(rx.0 + 10);
                if d.track {
                    table.track(checked.header.receive_timestamp, me);
                    assert!(table.record_transmit(checked.header.receive_timestamp, sent, false));
                }
                kernel_tx.push(sent);
                if checked.interleaved {
                    assert_eq!(checked.header.transmit_timestamp, kernel_tx[i as usize - 1]);
                    assert_eq!(checked.header.receive_timestamp, NtpTimestamp(rx.0 | 1));
                } else {
                    assert_eq!(checked.header.transmit_timestamp, rx);
                }
                modes.push(checked.interleaved);
                // A stranger replaying this client's origin gets a basic answer.
                let (h, _) = NtpHeader::parse(&req).unwrap();
                assert_eq!(table.decide(&h, stranger).previous_transmit, None);
                client.complete(&checked.header, checked.interleaved, rx, rx);
            }
            assert_eq!(modes, [false, false, true, true], "nts {nts}");
            // A basic client (no interleave fields) of the same address: basic answer.
            let mut req = Vec::new();
            let p = build_request(&mut req, None, &mut rnd);
            let (h, _) = NtpHeader::parse(&req).unwrap();
            assert_eq!(table.decide(&h, me).previous_transmit, None);
            let (r, out) = serve(&s, &req, false);
            r.unwrap();
            assert!(!check_response(&out, &p, None).unwrap().interleaved);
        }
    }
}
