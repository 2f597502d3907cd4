//! Valid inputs for each target, built with nts-proto itself: real NTS-KE
//! requests and responses, NTP packets carrying genuine cookies and valid
//! authenticators, genuine cookies. `examples/gen_seeds.rs` writes them to
//! `seeds/TARGET/`, from which `scripts/fuzz.sh` starts each run.

use crate::{c2s_key, ring, s2c_key, ChunkPlan, NOW};
use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::cookie::{self, CookieContents};
use nts_proto::extension_field::{field_type, write_field, Authenticator};
use nts_proto::ke_client::build_request;
use nts_proto::ke_record::{ErrorCode, Record};
use nts_proto::ke_server::{encode_error, encode_response, Negotiation, NtpTarget};
use nts_proto::ntp_packet::{kiss, LeapIndicator, Mode, NtpHeader, NtpShort, NtpTimestamp};

pub type Seed = (&'static str, Vec<u8>);

mod state_files;
pub use state_files::{drift_record, leap_list, root_secret, saved_association};

fn records(list: &[(Record, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (r, c) in list {
        r.encode(*c, &mut out);
    }
    out
}

/// A cookie from the fixed ring's current key carrying the fixed session keys.
pub fn genuine_cookie(alg: AeadAlgorithm, nonce_byte: u8) -> Vec<u8> {
    let contents = CookieContents {
        c2s: c2s_key(alg),
        s2c: s2c_key(alg),
    };
    let key = ring().current(NOW).expect("current key");
    cookie::seal(key, &contents, &[nonce_byte; 16])
}

fn cookies(alg: AeadAlgorithm, n: u8) -> Vec<Vec<u8>> {
    (0..n).map(|i| genuine_cookie(alg, i)).collect()
}

pub fn ke_request() -> Vec<Seed> {
    let req = build_request(&AeadAlgorithm::ALL);
    let req256 = build_request(&[AeadAlgorithm::AesSivCmac256]);
    let rich = records(&[
        (Record::NextProtocol(vec![0]), true),
        (Record::Warning(7), false),
        (
            Record::Unknown {
                critical: false,
                record_type: 0x4000,
                body: vec![1, 2, 3],
            },
            false,
        ),
        (Record::AeadAlgorithm(vec![99, 17, 15]), true),
        (Record::Server("ntp.example".into()), false),
        (Record::Port(4123), false),
        (Record::NewCookie(vec![0xc0; 8]), false),
        (Record::EndOfMessage, true),
    ]);
    let no_ntp = records(&[
        (Record::NextProtocol(vec![1, 2]), true),
        (Record::EndOfMessage, true),
    ]);
    let no_alg = records(&[
        (Record::NextProtocol(vec![0]), true),
        (Record::AeadAlgorithm(vec![1, 2]), true),
        (Record::EndOfMessage, true),
    ]);
    vec![
        ("whole", ChunkPlan::encode(0, &[], &req)),
        ("bytewise", ChunkPlan::encode(0, &[1], &req)),
        ("pieces", ChunkPlan::encode(0, &[3, 0, 7], &req)),
        ("aes256_only", ChunkPlan::encode(0, &[], &req256)),
        ("small_limits", ChunkPlan::encode(1, &[5], &req)),
        ("rich", ChunkPlan::encode(0, &[4, 11], &rich)),
        ("no_ntp", ChunkPlan::encode(0, &[], &no_ntp)),
        ("no_alg", ChunkPlan::encode(0, &[2], &no_alg)),
    ]
}

pub fn ke_response() -> Vec<Seed> {
    let target = NtpTarget {
        server: Some("time.example.net".into()),
        port: Some(4460),
    };
    let ok256 = encode_response(
        Negotiation::Ntpv4(AeadAlgorithm::AesSivCmac256),
        &cookies(AeadAlgorithm::AesSivCmac256, 8),
        &target,
    );
    let ok512 = encode_response(
        Negotiation::Ntpv4(AeadAlgorithm::AesSivCmac512),
        &cookies(AeadAlgorithm::AesSivCmac512, 2),
        &NtpTarget::default(),
    );
    let warned = records(&[
        (Record::NextProtocol(vec![0]), true),
        (Record::Warning(3), true),
        (Record::AeadAlgorithm(vec![15]), true),
        (Record::NewCookie(vec![0xc0; 104]), false),
        (
            Record::Unknown {
                critical: false,
                record_type: 0x1234,
                body: vec![],
            },
            false,
        ),
        (Record::EndOfMessage, true),
    ]);
    let no_alg = encode_response(Negotiation::NoAlgorithm, &[], &NtpTarget::default());
    let no_proto = encode_response(Negotiation::NoProtocol, &[], &NtpTarget::default());
    vec![
        ("ok256_whole", ChunkPlan::encode(0, &[], &ok256)),
        (
            "ok256_pieces",
            ChunkPlan::encode(1, &[100, 1, 0, 33], &ok256),
        ),
        ("ok512_bytewise", ChunkPlan::encode(2, &[1], &ok512)),
        ("warning", ChunkPlan::encode(0, &[], &warned)),
        ("no_alg", ChunkPlan::encode(0, &[], &no_alg)),
        ("no_proto", ChunkPlan::encode(0, &[], &no_proto)),
        (
            "error",
            ChunkPlan::encode(0, &[], &encode_error(ErrorCode::BadRequest)),
        ),
    ]
}

pub fn ke_record() -> Vec<Seed> {
    let all = records(&[
        (Record::NextProtocol(vec![0]), true),
        (Record::AeadAlgorithm(vec![17, 15]), true),
        (Record::Error(ErrorCode::InternalServerError), true),
        (Record::Warning(9), true),
        (Record::NewCookie(vec![0xc0; 20]), false),
        (Record::Server("192.0.2.1".into()), false),
        (Record::Port(123), false),
        (
            Record::Unknown {
                critical: true,
                record_type: 0x7fff,
                body: vec![1, 2],
            },
            true,
        ),
        (Record::EndOfMessage, true),
    ]);
    let response = encode_response(
        Negotiation::Ntpv4(AeadAlgorithm::AesSivCmac256),
        &cookies(AeadAlgorithm::AesSivCmac256, 2),
        &NtpTarget::default(),
    );
    vec![
        ("all_types", all),
        ("request", build_request(&AeadAlgorithm::ALL)),
        ("response", response),
    ]
}

fn header(mode: Mode) -> NtpHeader {
    NtpHeader {
        leap: LeapIndicator::NoWarning,
        version: 4,
        mode,
        stratum: if mode == Mode::Server { 1 } else { 0 },
        poll: 4,
        precision: -20,
        root_delay: NtpShort::from_seconds(0.001),
        root_dispersion: NtpShort::from_seconds(0.002),
        reference_id: if mode == Mode::Server {
            *b"GPS\0"
        } else {
            [0; 4]
        },
        reference_timestamp: NtpTimestamp::from_unix(NOW - 10, 0),
        origin_timestamp: NtpTimestamp::from_unix(NOW, 1),
        receive_timestamp: NtpTimestamp::from_unix(NOW, 2),
        transmit_timestamp: NtpTimestamp::from_unix(NOW, 3),
    }
}

/// Append an NTS Authenticator field sealing `plaintext` with `key` over everything in `packet`.
fn authenticate(packet: &mut Vec<u8>, key: &AeadKey, nonce: &[u8], plaintext: &[u8]) {
    let ct = key.seal(nonce, packet, plaintext);
    let mut body = Vec::with_capacity(Authenticator::body_len(nonce.len(), ct.len()));
    body.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
    body.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    body.extend_from_slice(nonce);
    body.resize(Authenticator::body_len(nonce.len(), 0), 0);
    body.extend_from_slice(&ct);
    body.resize(Authenticator::body_len(nonce.len(), ct.len()), 0);
    write_field(packet, field_type::NTS_AUTHENTICATOR, &body);
}

/// A client request: Unique Identifier, a genuine cookie, placeholders, authenticator (C2S).
pub fn client_request(alg: AeadAlgorithm, placeholders: usize) -> Vec<u8> {
    let cookie = genuine_cookie(alg, 0x11);
    let mut p = header(Mode::Client).to_bytes().to_vec();
    write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &[0xaa; 32]);
    write_field(&mut p, field_type::NTS_COOKIE, &cookie);
    for _ in 0..placeholders {
        write_field(
            &mut p,
            field_type::NTS_COOKIE_PLACEHOLDER,
            &vec![0; cookie.len()],
        );
    }
    authenticate(&mut p, &c2s_key(alg), &[0x33; 16], &[]);
    p
}

/// A server response: Unique Identifier, authenticator (S2C) over encrypted new cookies.
pub fn server_response(new_cookies: u8) -> Vec<u8> {
    let alg = AeadAlgorithm::AesSivCmac256;
    let mut inner = Vec::new();
    for c in cookies(alg, new_cookies) {
        write_field(&mut inner, field_type::NTS_COOKIE, &c);
    }
    let mut p = header(Mode::Server).to_bytes().to_vec();
    write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &[0xaa; 32]);
    authenticate(&mut p, &s2c_key(alg), &[0x44; 16], &inner);
    p
}

pub fn ntp_packet() -> Vec<Seed> {
    let plain = header(Mode::Client).to_bytes().to_vec();
    let mut v3_mac = header(Mode::Client);
    v3_mac.version = 3;
    let mut v3_mac = v3_mac.to_bytes().to_vec();
    v3_mac.extend_from_slice(&[0x01; 20]); // key id + MD5 digest
    let mut nak = header(Mode::Server);
    nak.stratum = 0;
    nak.reference_id = kiss::NTSN;
    let mut nak = nak.to_bytes().to_vec();
    write_field(&mut nak, field_type::UNIQUE_IDENTIFIER, &[0xaa; 32]);
    vec![
        ("plain_client", plain),
        ("v3_legacy_mac", v3_mac),
        ("nts_nak", nak),
        (
            "nts_request_256",
            client_request(AeadAlgorithm::AesSivCmac256, 0),
        ),
        (
            "nts_request_512_placeholders",
            client_request(AeadAlgorithm::AesSivCmac512, 2),
        ),
        ("nts_response", server_response(1)),
        ("nts_response_3_cookies", server_response(3)),
    ]
}

pub fn cookie_open() -> Vec<Seed> {
    let old_key = &ring().keys()[0];
    let old = cookie::seal(
        old_key,
        &CookieContents {
            c2s: c2s_key(AeadAlgorithm::AesSivCmac256),
            s2c: s2c_key(AeadAlgorithm::AesSivCmac256),
        },
        &[0x77; 16],
    );
    vec![
        (
            "genuine_256",
            genuine_cookie(AeadAlgorithm::AesSivCmac256, 1),
        ),
        (
            "genuine_512",
            genuine_cookie(AeadAlgorithm::AesSivCmac512, 2),
        ),
        ("genuine_old_key", old),
        ("short", vec![0; 20]),
    ]
}

/// A client request from `nts_proto::ntp_client::build_request`, with a cookie
/// of the fixed ring and `placeholders` placeholders (answers the fixed pending request).
pub fn ntp_request(cookie: &[u8], placeholders: usize, alg: AeadAlgorithm) -> Vec<u8> {
    crate::ntp_client::request(Some((cookie, placeholders, &c2s_key(alg)))).0
}

fn set_version(mut p: Vec<u8>, version: u8) -> Vec<u8> {
    p[0] = (p[0] & !0x38) | (version << 3);
    p
}

/// A request built by hand around `cookie`, sealed with the C2S key over
/// `encrypted` (extension fields) with a nonce of `nonce_len` bytes.
fn hand_request(
    version: u8,
    alg: AeadAlgorithm,
    cookie: &[u8],
    placeholders: usize,
    nonce_len: usize,
    encrypted: &[u8],
) -> Vec<u8> {
    let plain = crate::ntp_client::request(None).0;
    let mut p = set_version(plain, version);
    write_field(&mut p, field_type::UNIQUE_IDENTIFIER, &[0xab; 32]);
    write_field(&mut p, 0x7777, &[0x01; 12]); // an unknown field, authenticated
    write_field(&mut p, field_type::NTS_COOKIE, cookie);
    for _ in 0..placeholders {
        write_field(
            &mut p,
            field_type::NTS_COOKIE_PLACEHOLDER,
            &vec![0; cookie.len()],
        );
    }
    authenticate(&mut p, &c2s_key(alg), &vec![0x33; nonce_len], encrypted);
    p
}

pub fn ntp_server() -> Vec<Seed> {
    use AeadAlgorithm::{AesSivCmac256 as A256, AesSivCmac512 as A512};
    let c256 = genuine_cookie(A256, 0x21);
    let c512 = genuine_cookie(A512, 0x22);
    let mut bad_tag = ntp_request(&c256, 1, A256);
    *bad_tag.last_mut().expect("not empty") ^= 1;
    let mut wrong_id = c256.clone();
    wrong_id[0] ^= 0xff;
    let mut forged = c256.clone();
    forged[30] ^= 1;
    let old = cookie::seal(
        &ring().keys()[0],
        &CookieContents {
            c2s: c2s_key(A256),
            s2c: s2c_key(A256),
        },
        &[0x23; 16],
    );
    let mut inner = Vec::new();
    write_field(&mut inner, 0x7778, &[0x02; 16]);
    let mut legacy_mac = ntp_request(&c256, 0, A256);
    legacy_mac.extend_from_slice(&[0x01; 20]);
    let plain = crate::ntp_client::request(None).0;
    vec![
        ("nts_256_0", ntp_request(&c256, 0, A256)),
        ("nts_256_1", ntp_request(&c256, 1, A256)),
        ("nts_256_7", ntp_request(&c256, 7, A256)),
        ("nts_512_0", ntp_request(&c512, 0, A512)),
        ("nts_512_1", ntp_request(&c512, 1, A512)),
        ("nts_512_7", ntp_request(&c512, 7, A512)),
        ("nts_old_key", ntp_request(&old, 2, A256)),
        ("nts_v3", hand_request(3, A256, &c256, 1, 16, &[])),
        (
            "nts_encrypted_fields",
            hand_request(4, A512, &c512, 3, 16, &inner),
        ),
        // RFC 8915 section 5.6: a nonce under 16 octets is refused.
        (
            "nts_short_nonce",
            hand_request(4, A512, &c512, 3, 5, &inner),
        ),
        ("nts_legacy_mac_after_auth", legacy_mac),
        ("plain", plain.clone()),
        ("plain_v3", set_version(plain, 3)),
        ("bad_tag", bad_tag),
        ("wrong_key_id", ntp_request(&wrong_id, 0, A256)),
        ("forged_cookie", ntp_request(&forged, 1, A256)),
    ]
}

pub fn ntp_client() -> Vec<Seed> {
    use crate::ntp_server::serve;
    use AeadAlgorithm::{AesSivCmac256 as A256, AesSivCmac512 as A512};
    let c256 = genuine_cookie(A256, 0x31);
    let c512 = genuine_cookie(A512, 0x32);
    let mut forged = c256.clone();
    forged[30] ^= 1;
    let plain = crate::ntp_client::request(None).0;
    // An authenticated DENY kiss (respond never sends one; a server may).
    let pending = crate::ntp_client::pending();
    let mut deny = header(Mode::Server);
    deny.stratum = 0;
    deny.reference_id = kiss::DENY;
    deny.origin_timestamp = pending.origin;
    let mut deny = deny.to_bytes().to_vec();
    write_field(&mut deny, field_type::UNIQUE_IDENTIFIER, &pending.unique_id);
    authenticate(&mut deny, &s2c_key(A256), &[0x45; 16], &[]);
    // An unauthenticated RATE kiss echoing an NTS request's Unique Identifier: our
    // server never sends one (NTS over the rate is dropped), but an attacker can,
    // and clients must ignore it. Built from the plain kiss for that request.
    let nts_req = ntp_request(&c256, 1, A256);
    let mut rate_nts = serve(&plain, true).1;
    rate_nts[24..32].copy_from_slice(&nts_req[40..48]);
    let uid = nts_proto::extension_field::ExtensionFields::new(&nts_req[48..], 16)
        .filter_map(Result::ok)
        .find(|f| f.field_type == field_type::UNIQUE_IDENTIFIER)
        .expect("request has a UID")
        .body;
    write_field(&mut rate_nts, field_type::UNIQUE_IDENTIFIER, uid);
    vec![
        ("nts_256_0", serve(&ntp_request(&c256, 0, A256), false).1),
        ("nts_256_7", serve(&ntp_request(&c256, 7, A256), false).1),
        ("nts_512_1", serve(&ntp_request(&c512, 1, A512), false).1),
        ("nak", serve(&ntp_request(&forged, 0, A256), false).1),
        ("rate_nts", rate_nts),
        ("rate_plain", serve(&plain, true).1),
        ("plain", serve(&plain, false).1),
        ("authenticated_deny", deny),
    ]
}

/// Event sequences for the NTS source (see `nts_source` for the event bytes):
/// attacks around genuine answers, and a silent server that leads to re-keying.
pub fn nts_source() -> Vec<Seed> {
    vec![
        (
            "attacks_around_answers",
            vec![
                8, 0, 3, 4, b'R', b'A', b'T', b'E', 5, 3, 1, 2, 3, 6, 10, 1, 0, 2, 1, 0, 4, b'D',
                b'E', b'N', b'Y', 1, 0, 3, 7, 11, 8, 0, 1,
            ],
        ),
        (
            "silent_server_rekeys",
            vec![8, 0, 7, 0, 7, 0, 7, 0, 7, 11, 9, 128, 10, 10, 11, 8, 0, 1],
        ),
        (
            "backoff",
            vec![9, 0, 11, 10, 3, 9, 255, 10, 200, 11, 8, 0, 1],
        ),
    ]
}

/// Conversations (see `conversation` for the bytes): every attack at once,
/// losses that lead to re-keying during a KE outage, a plain source kissed.
pub fn conversation() -> Vec<Seed> {
    vec![
        ("all_attacks", [vec![0], [0xf4, 7].repeat(40)].concat()),
        (
            "outage_while_unreachable",
            [vec![2], vec![0, 0, 0, 0, 3, 0, 2, 0, 2, 0, 2, 0, 0x10, 0]].concat(),
        ),
        ("plain_rate_kisses", [vec![1], [0x22, 0].repeat(4)].concat()),
        (
            "plain_forged_answers",
            [vec![0xff], [0xfe, 0xc1].repeat(8)].concat(),
        ),
        (
            "late_and_duplicated",
            [vec![4], [0x0c, 35, 0x04, 0].repeat(10)].concat(),
        ),
    ]
}

/// NTS-shaped AES-SIV inputs: an authenticator (48-byte header as AD, empty
/// plaintext), a cookie (4-byte key id as AD, key material as plaintext), a
/// response carrying cookies (several CTR batches), and block-edge lengths.
pub fn aead_siv() -> Vec<Seed> {
    use crate::aead_siv::encode;
    const A256: AeadAlgorithm = AeadAlgorithm::AesSivCmac256;
    const A512: AeadAlgorithm = AeadAlgorithm::AesSivCmac512;
    let k256: Vec<u8> = (0..32).collect();
    let k512: Vec<u8> = (0..64).rev().collect();
    let header = [0x23u8; 48];
    let nonce = [0x4e; 16];
    vec![
        (
            "authenticator_256",
            encode(A256, 3, &k256, &header, &nonce, &[]),
        ),
        (
            "authenticator_512",
            encode(A512, 70, &k512, &header, &nonce, &[]),
        ),
        (
            "cookie_256",
            encode(A256, 100, &k256, &[0, 0, 0, 7], &nonce, &[0xc2; 68]),
        ),
        (
            "response_512",
            encode(A512, 2000, &k512, &header[..40], &[0x77; 16], &[0x5c; 344]),
        ),
        ("one_block", encode(A256, 17, &k256, &[], &[], &[1; 16])),
        (
            "block_minus_one",
            encode(A512, 31, &k512, &[9; 15], &[8; 17], &[2; 15]),
        ),
    ]
}

/// Every target's seeds, by target name.
pub fn all() -> Vec<(&'static str, Vec<Seed>)> {
    vec![
        ("ntp_packet", ntp_packet()),
        ("ke_record", ke_record()),
        ("ke_request", ke_request()),
        ("ke_response", ke_response()),
        ("cookie_open", cookie_open()),
        ("ntp_server", ntp_server()),
        ("ntp_client", ntp_client()),
        ("nts_source", nts_source()),
        ("conversation", conversation()),
        ("aead_siv", aead_siv()),
        ("leap_list", leap_list()),
        ("drift_record", drift_record()),
        ("saved_association", saved_association()),
        ("root_secret", root_secret()),
        ("nts_roles", nts_roles()),
    ]
}

/// `nts_roles`: genuine and own cookies, placeholder counts, basic and
/// interleaved, and mutations that break a shared rule (flags byte, cookie
/// length, cookie, then offset/mask triples into the extension fields).
pub fn nts_roles() -> Vec<Seed> {
    let fields_len = nts_proto::ntp_client::nts_request_len(
        genuine_cookie(AeadAlgorithm::AesSivCmac256, 9).len(),
        0,
    ) - nts_proto::ntp_packet::HEADER_LEN;
    // The low byte of the authenticator's nonce length (the last field is 40 octets).
    let [hi, lo] = ((fields_len - 40 + 5) as u16).to_be_bytes();
    vec![
        ("genuine_256_p0", vec![0x00, 0]),
        ("genuine_512_p7", vec![0x87, 0]),
        ("genuine_interleaved_p1", vec![0x09, 0]),
        ("own_cookie_p2", [&[0x02, 24][..], &[0x5a; 24]].concat()),
        // The Unique Identifier's field length 36 becomes 4: the fields do not parse.
        ("mutated_uid_length", vec![0x10, 0, 0, 3, 0x20]),
        // The cookie's type 0x0204 becomes 0x0104: a second Unique Identifier.
        ("mutated_duplicate_uid", vec![0x10, 0, 0, 36, 0x03]),
        // The nonce length 16 becomes 15.
        ("mutated_nonce_15", vec![0x10, 0, hi, lo, 0x1f]),
    ]
}

#[cfg(test)]
mod tests;
