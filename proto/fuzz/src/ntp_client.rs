//! `ntp_client`: the client checking an arbitrary datagram as the answer to a
//! fixed pending request, with [`nts_proto::ntp_client::check_response`]: once
//! without a key (plain NTP) and once with each fixed S2C key (NTS).
//!
//! Checks: no panic; every outcome agrees with the bytes (a plain `Ok` is an
//! unauthenticated server-mode answer with our origin and no kiss code; errors
//! a plain check cannot give never appear). An authenticated `Ok`, and an
//! authenticated kiss, must genuinely verify: the authenticator, found
//! independently, is the last field, it opens with the key over everything
//! before it, re-sealing the plaintext gives the same ciphertext (SIV is
//! deterministic), the UID before it is ours and the cookies are the
//! plaintext's cookie fields. And flipping a bit of any byte the authenticator
//! covers (everything before it, its type, its length fields, nonce and
//! ciphertext) must make the check fail, while a flip elsewhere (padding,
//! trailing bytes) may only give back the very same result.
//!
//! The same checks (but the bit flips) run again on the input with its
//! authenticator re-sealed under each key ([`reseal`]), which must then not
//! fail authentication: so the fuzzer also reaches what lies behind it.

use crate::{s2c_key, Counter};
use nts_proto::aead::{AeadAlgorithm, AeadKey, TAG_LEN};
use nts_proto::extension_field::{field_type, Authenticator, ExtensionFields};
use nts_proto::ntp_client::{
    build_request, check_response, CheckedResponse, PendingRequest, ResponseCheckError,
    UNIQUE_ID_LEN,
};
use nts_proto::ntp_packet::{kiss, Mode, NtpHeader, HEADER_LEN};
use std::sync::OnceLock;

/// Where the counter standing in for the client's random source starts.
const CLIENT_RANDOM: u8 = 0x50;

/// A client request, built with the counter that also gives [`pending`]: so its
/// answers are answers to the pending request.
pub fn request(nts: Option<(&[u8], usize, &AeadKey)>) -> (Vec<u8>, PendingRequest) {
    let mut out = Vec::new();
    let mut rng = Counter(CLIENT_RANDOM);
    let p = build_request(&mut out, nts, &mut |b: &mut [u8]| rng.fill(b));
    (out, p)
}

/// The fixed request the fuzzed datagrams answer.
pub fn pending() -> &'static PendingRequest {
    static PENDING: OnceLock<PendingRequest> = OnceLock::new();
    PENDING.get_or_init(|| request(None).1)
}

type Checked = Result<CheckedResponse, ResponseCheckError>;

/// The verdicts on one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub plain: Checked,
    pub aes256: Checked,
    pub aes512: Checked,
    /// The verdicts on the input re-sealed with each key ([`reseal`]), if it has an authenticator.
    pub resealed: Option<[Checked; 2]>,
}

impl Outcome {
    pub fn authenticated(&self) -> bool {
        self.aes256.is_ok() || self.aes512.is_ok()
    }
}

const ALGS: [AeadAlgorithm; 2] = [AeadAlgorithm::AesSivCmac256, AeadAlgorithm::AesSivCmac512];

/// The input with its authenticator made genuine under `key`: the first NTS
/// Authenticator's ciphertext after the 16-byte tag is taken as plaintext and
/// sealed over everything before the field, in place. The fuzzer cannot forge
/// a tag; this lets its mutations reach the checks behind authentication
/// (kiss codes, the encrypted fields and cookies).
pub fn reseal(data: &[u8], key: &AeadKey) -> Option<Vec<u8>> {
    let (_, rest) = NtpHeader::parse(data).ok()?;
    let f = ExtensionFields::new(rest, 64)
        .map_while(Result::ok)
        .find(|f| f.field_type == field_type::NTS_AUTHENTICATOR)?;
    let a = Authenticator::parse(f.body).ok()?;
    let auth_at = HEADER_LEN + f.offset;
    let ct_at = a.ciphertext.as_ptr() as usize - data.as_ptr() as usize;
    let sealed = key.seal(a.nonce, &data[..auth_at], &a.ciphertext[TAG_LEN..]);
    let mut out = data.to_vec();
    out[ct_at..ct_at + sealed.len()].copy_from_slice(&sealed);
    Some(out)
}

pub fn check(data: &[u8]) -> Outcome {
    let pending = pending();
    let plain = check_response(data, pending, None);
    check_plain(data, pending, &plain);
    let [aes256, aes512] = ALGS.map(|alg| {
        let key = s2c_key(alg);
        let r = check_response(data, pending, Some(&key));
        check_nts(data, pending, &key, &r, true);
        r
    });
    assert!(
        !(aes256.is_ok() && aes512.is_ok()),
        "authenticated under two different keys"
    );
    let resealed = reseal(data, &s2c_key(ALGS[0])).map(|_| {
        ALGS.map(|alg| {
            let key = s2c_key(alg);
            let fixed = reseal(data, &key).expect("reseals under either key");
            let r = check_response(&fixed, pending, Some(&key));
            assert_ne!(
                r,
                Err(ResponseCheckError::AuthenticationFailed),
                "a genuine authenticator failed to verify"
            );
            check_nts(&fixed, pending, &key, &r, false);
            r
        })
    });
    Outcome {
        plain,
        aes256,
        aes512,
        resealed,
    }
}

fn check_plain(data: &[u8], pending: &PendingRequest, r: &Checked) {
    use ResponseCheckError as E;
    let header = NtpHeader::parse(data).ok().map(|(h, _)| h);
    match r {
        Ok(c) => {
            assert!(!c.authenticated, "authenticated without a key");
            assert!(c.cookies.is_empty(), "cookies without a key");
            let h = header.expect("accepted without a header");
            assert_eq!(c.header, h);
            assert_eq!(h.mode, Mode::Server);
            assert_eq!(h.origin_timestamp, pending.origin);
            assert_eq!(h.kiss_code(), None, "kiss-o'-death accepted as time");
        }
        Err(E::OriginMismatch) => {
            let h = header.expect("origin checked without a header");
            assert_eq!(h.mode, Mode::Server);
            assert_ne!(h.origin_timestamp, pending.origin);
        }
        Err(E::Kiss(code)) => {
            let h = header.expect("kiss without a header");
            assert_eq!(h.kiss_code(), Some(*code));
            assert_eq!(h.origin_timestamp, pending.origin);
        }
        Err(E::Malformed(_)) => {}
        Err(e) => panic!("{e:?} from a check without a key"),
    }
}

/// The parts of an authenticated response, found independently of `check_response`.
struct Located<'a> {
    header: NtpHeader,
    /// Offset of the authenticator field.
    auth_at: usize,
    auth: Authenticator<'a>,
    /// Bytes the authenticator covers (see the module docs).
    covered: Vec<std::ops::Range<usize>>,
}

fn locate<'a>(data: &'a [u8], pending: &PendingRequest) -> Located<'a> {
    let (header, rest) = NtpHeader::parse(data).expect("authenticated without a header");
    assert_eq!(header.mode, Mode::Server);
    assert_eq!(header.origin_timestamp, pending.origin);
    let mut last_uid = None;
    let mut auth = None;
    for f in ExtensionFields::new(rest, 64) {
        let f = f.expect("authenticated with malformed extension fields");
        assert!(auth.is_none(), "a field after the authenticator");
        match f.field_type {
            field_type::UNIQUE_IDENTIFIER => last_uid = Some(f.body),
            field_type::NTS_AUTHENTICATOR => auth = Some((HEADER_LEN + f.offset, f.body)),
            _ => {}
        }
    }
    let uid = last_uid.expect("authenticated without a Unique Identifier");
    assert_eq!(
        uid.get(..UNIQUE_ID_LEN),
        Some(&pending.unique_id[..]),
        "authenticated with another Unique Identifier"
    );
    let (auth_at, body) = auth.expect("authenticated without an authenticator");
    let auth = Authenticator::parse(body).expect("authenticated with a bad authenticator");
    let offset = |s: &[u8]| s.as_ptr() as usize - data.as_ptr() as usize;
    let nonce_at = offset(auth.nonce);
    let ct_at = offset(auth.ciphertext);
    let covered = vec![
        0..auth_at + 2,                        // all before it, and its type
        auth_at + 4..auth_at + 8,              // nonce and ciphertext lengths
        nonce_at..nonce_at + auth.nonce.len(), // nonce
        ct_at..ct_at + auth.ciphertext.len(),  // tag and ciphertext
    ];
    Located {
        header,
        auth_at,
        auth,
        covered,
    }
}

/// Open the authenticator independently; returns the plaintext.
fn verify(data: &[u8], key: &AeadKey, l: &Located<'_>) -> Vec<u8> {
    let ad = &data[..l.auth_at];
    let plain = key
        .open(l.auth.nonce, ad, l.auth.ciphertext)
        .expect("accepted an authenticator that does not verify");
    assert_eq!(
        key.seal(l.auth.nonce, ad, &plain),
        l.auth.ciphertext,
        "re-sealing gives another ciphertext"
    );
    plain
}

/// `mutate`: also flip every byte of an accepted response (the costly part).
fn check_nts(data: &[u8], pending: &PendingRequest, key: &AeadKey, r: &Checked, mutate: bool) {
    use ResponseCheckError as E;
    match r {
        Ok(c) => {
            assert!(c.authenticated, "unauthenticated Ok with a key");
            let l = locate(data, pending);
            assert_eq!(c.header, l.header);
            assert_eq!(l.header.kiss_code(), None, "kiss-o'-death accepted as time");
            let plain = verify(data, key, &l);
            let cookies: Vec<Vec<u8>> = ExtensionFields::new(&plain, 64)
                .map(|f| f.expect("accepted malformed encrypted fields"))
                .filter(|f| f.field_type == field_type::NTS_COOKIE)
                .map(|f| f.body.to_vec())
                .collect();
            assert_eq!(
                c.cookies, cookies,
                "cookies are not the encrypted cookie fields"
            );

            if !mutate {
                return;
            }
            // Every covered byte matters; the others may not change the result.
            let mut m = data.to_vec();
            for i in 0..m.len() {
                let bit = 1u8 << (i % 8);
                m[i] ^= bit;
                let r2 = check_response(&m, pending, Some(key));
                if l.covered.iter().any(|c| c.contains(&i)) {
                    assert!(
                        r2.is_err(),
                        "still accepted after flipping bit {} of covered byte {i}",
                        i % 8
                    );
                } else if let Ok(c2) = r2 {
                    assert_eq!(&c2, c, "flipping uncovered byte {i} changed the result");
                }
                m[i] ^= bit;
            }
        }
        Err(E::Kiss(code)) => {
            // Reported only after the authenticator verified.
            // (An authenticated NTSN is reported as this kiss, not as NtsNak.)
            let l = locate(data, pending);
            assert_eq!(l.header.kiss_code(), Some(*code));
            verify(data, key, &l);
        }
        Err(E::NtsNak) => {
            let (h, rest) = NtpHeader::parse(data).expect("NAK without a header");
            assert_eq!(h.kiss_code(), Some(kiss::NTSN));
            assert_eq!(h.origin_timestamp, pending.origin);
            // The NAK is unauthenticated, but must echo our Unique Identifier.
            let mut last_uid = None;
            for f in ExtensionFields::new(rest, 64) {
                let f = f.expect("NAK with malformed fields");
                assert_ne!(f.field_type, field_type::NTS_AUTHENTICATOR);
                if f.field_type == field_type::UNIQUE_IDENTIFIER {
                    last_uid = Some(f.body);
                }
            }
            assert_eq!(
                last_uid.and_then(|u| u.get(..UNIQUE_ID_LEN)),
                Some(&pending.unique_id[..]),
                "NAK reported without our Unique Identifier"
            );
        }
        Err(E::OriginMismatch) => {
            let (h, _) = NtpHeader::parse(data).expect("origin checked without a header");
            assert_ne!(h.origin_timestamp, pending.origin);
        }
        Err(_) => {}
    }
}
