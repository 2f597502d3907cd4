//! Both roles refuse the same malformed NTS packets, because both read them
//! through one parser (`nts_fields`): a request shaped a given way is dropped
//! by the server's `respond`, and a response shaped the same way is refused
//! by the client's `check_response`. Each packet is genuinely sealed with the
//! right key, so only the shape rule can refuse it; the well-shaped control
//! built by the same code is accepted by both.

use nts_proto::aead::{AeadAlgorithm, AeadKey, TAG_LEN};
use nts_proto::cookie::{self, CookieContents};
use nts_proto::extension_field::{field_type, write_field};
use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
use nts_proto::ntp_client::{check_response, PendingRequest, ResponseCheckError, UNIQUE_ID_LEN};
use nts_proto::ntp_packet::{LeapIndicator, Mode, NtpHeader, NtpShort, NtpTimestamp};
use nts_proto::ntp_server::{
    respond, DropReason, RequestContext, Response, ServerClock, ServerPolicy,
};

const NOW: u64 = 1_800_000_000;
const ORIGIN: NtpTimestamp = NtpTimestamp(0x1234_5678_9abc_def0);

/// How a packet deviates from a well-formed one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    WellFormed,
    Nonce15,
    DuplicateUid,
    /// The longest too-short Unique Identifier the wire can carry: field
    /// bodies are multiples of 4 octets (RFC 7822), so a 31-octet identifier
    /// written with its padding is a 32-octet one ending in a zero.
    Uid28,
    /// A 31-octet identifier in a field that declares 35 octets: not a
    /// multiple of 4, so the field itself does not parse.
    Uid31Unpadded,
}

/// Header, Unique Identifier field(s), `middle` fields, then an authenticator
/// sealed with `key` over everything before it, carrying `plaintext`.
fn sealed(
    header: NtpHeader,
    shape: Shape,
    middle: &[(u16, Vec<u8>)],
    key: &AeadKey,
    plaintext: &[u8],
) -> Vec<u8> {
    let uid = [0xa5u8; UNIQUE_ID_LEN];
    let mut p = header.to_bytes().to_vec();
    match shape {
        Shape::Uid28 => write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &uid[..28]),
        Shape::Uid31Unpadded => {
            p.extend_from_slice(&field_type::UNIQUE_IDENTIFIER.to_be_bytes());
            p.extend_from_slice(&35u16.to_be_bytes());
            p.extend_from_slice(&uid[..31]);
        }
        _ => write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &uid),
    }
    if shape == Shape::DuplicateUid {
        write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &uid);
    }
    for (t, b) in middle {
        write_field(&mut p, *t, b);
    }
    let nonce_len = if shape == Shape::Nonce15 { 15 } else { 16 };
    let nonce = vec![0x3c; nonce_len];
    let mut ct = plaintext.to_vec();
    let tag = key.seal_detached(&nonce, &p, &mut ct);
    let mut body = Vec::new();
    body.extend_from_slice(&(nonce_len as u16).to_be_bytes());
    body.extend_from_slice(&((TAG_LEN + ct.len()) as u16).to_be_bytes());
    body.extend_from_slice(&nonce);
    body.resize(4 + nonce_len.div_ceil(4) * 4, 0);
    body.extend_from_slice(&tag);
    body.extend_from_slice(&ct);
    write_field(&mut p, field_type::NTS_AUTHENTICATOR, &body);
    p
}

struct Setup {
    ring: KeyRing,
    c2s: AeadKey,
    s2c: AeadKey,
    cookie: Vec<u8>,
    clock: ServerClock,
    policy: ServerPolicy,
}

fn setup() -> Setup {
    let root = RootSecret::from_bytes(&[9; 32]).unwrap();
    let ring = KeyRing::derive(&root, &KeySchedule::new(3600, 2).unwrap(), NOW);
    let alg = AeadAlgorithm::AesSivCmac256;
    let c2s = AeadKey::new(alg, &vec![0x11; alg.key_len()]).unwrap();
    let s2c = AeadKey::new(alg, &vec![0x22; alg.key_len()]).unwrap();
    let contents = CookieContents {
        c2s: c2s.clone(),
        s2c: s2c.clone(),
    };
    let cookie = cookie::seal(ring.current(NOW).unwrap(), &contents, &[3; 16]);
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
        c2s,
        s2c,
        cookie,
        clock,
        policy: ServerPolicy::default(),
    }
}

fn server_says(s: &Setup, req: &[u8]) -> Result<Response, DropReason> {
    let ctx = RequestContext {
        receive_timestamp: NtpTimestamp(100),
        unix_now: NOW,
        clock: &s.clock,
        ring: &s.ring,
        policy: &s.policy,
        rate_kiss: false,
        previous_transmit: None,
    };
    let mut out = vec![0u8; req.len()];
    respond(req, &ctx, &mut out, &mut |b| b.fill(7), &mut || {
        NtpTimestamp(200)
    })
}

fn client_says(s: &Setup, shape: Shape) -> Result<usize, ResponseCheckError> {
    let header = NtpHeader {
        mode: Mode::Server,
        stratum: 1,
        origin_timestamp: ORIGIN,
        receive_timestamp: NtpTimestamp(100),
        transmit_timestamp: NtpTimestamp(200),
        ..Default::default()
    };
    let mut plain = Vec::new();
    write_field(&mut plain, field_type::NTS_COOKIE, &s.cookie);
    let resp = sealed(header, shape, &[], &s.s2c, &plain);
    let pending = PendingRequest {
        unique_id: [0xa5; UNIQUE_ID_LEN],
        origin: ORIGIN,
        interleaved_origin: None,
    };
    check_response(&resp, &pending, Some(&s.s2c)).map(|c| c.cookies.len())
}

fn request(s: &Setup, shape: Shape) -> Vec<u8> {
    let header = NtpHeader {
        mode: Mode::Client,
        transmit_timestamp: ORIGIN,
        ..Default::default()
    };
    let middle = [(field_type::NTS_COOKIE, s.cookie.clone())];
    sealed(header, shape, &middle, &s.c2s, &[])
}

#[test]
fn well_formed_control_is_accepted_by_both_roles() {
    let s = setup();
    let r = server_says(&s, &request(&s, Shape::WellFormed));
    assert!(matches!(r, Ok(Response::Nts { cookies: 1, .. })), "{r:?}");
    assert_eq!(client_says(&s, Shape::WellFormed), Ok(1));
}

#[test]
fn a_padded_31_octet_identifier_is_a_32_octet_one() {
    // What a sender writing 31 octets puts on the wire: the server reads 32
    // (the last one the padding zero) and echoes all 32.
    let mut p = NtpHeader {
        mode: Mode::Client,
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &[0xa5; 31]);
    let f = nts_proto::nts_fields::scan(&p, 16).unwrap();
    let mut want = [0xa5u8; 32];
    want[31] = 0;
    assert_eq!(f.unique_id, Some(&want[..]));
}

#[test]
fn both_roles_refuse_the_same_shapes() {
    let s = setup();
    for shape in [
        Shape::Nonce15,
        Shape::DuplicateUid,
        Shape::Uid28,
        Shape::Uid31Unpadded,
    ] {
        let want = if shape == Shape::Uid31Unpadded {
            DropReason::MalformedExtensions
        } else {
            DropReason::MalformedNts
        };
        assert_eq!(
            server_says(&s, &request(&s, shape)),
            Err(want),
            "server, {shape:?}"
        );
        assert!(
            matches!(
                client_says(&s, shape),
                Err(ResponseCheckError::Malformed(_))
            ),
            "client, {shape:?}: {:?}",
            client_says(&s, shape)
        );
    }
}
