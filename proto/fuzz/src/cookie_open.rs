//! `cookie_open`: the time server opening a cookie it was handed.
//!
//! 1. `cookie::open` on the raw input with the fixed ring must fail unless the
//!    input is a genuine cookie: if it opens, sealing the contents again with
//!    the key it names and its own nonce must give back exactly the input (SIV
//!    is deterministic), and the same bytes must not open under another root.
//! 2. The same input, read with `arbitrary` as keys, a nonce and a ring key,
//!    is sealed; the cookie must open to the same keys, and fail once a bit is
//!    flipped, once its key has expired, and under another root secret.

use crate::{other_ring, ring, NOW};
use arbitrary::{Arbitrary, Unstructured};
use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::cookie::{
    self, cookie_len, key_id, seal_into, CookieContents, CookieError, COOKIE_NONCE_LEN,
    MAX_COOKIE_LEN,
};
use nts_proto::key_ring::KeyLookupError;

#[derive(Debug, Arbitrary)]
pub struct SealInput {
    pub wide: bool,
    pub key_index: u8,
    pub flip: u16,
    pub nonce: [u8; COOKIE_NONCE_LEN],
    pub c2s: [u8; 64],
    pub s2c: [u8; 64],
}

/// True if the raw input opened.
pub fn check_open(data: &[u8]) -> bool {
    let ring = ring();
    let valid_len = [AeadAlgorithm::AesSivCmac256, AeadAlgorithm::AesSivCmac512]
        .iter()
        .any(|a| cookie_len(*a) == data.len());
    match cookie::open(ring, data, NOW) {
        Err(e) => {
            let _ = e.reason();
            match e {
                CookieError::Malformed(n) => assert!(n == data.len() && !valid_len),
                _ => assert!(valid_len, "{e:?} for a cookie of impossible length"),
            }
            false
        }
        Ok(contents) => {
            assert_eq!(data.len(), cookie_len(contents.algorithm()));
            let id = key_id(data).expect("long enough");
            let key = ring.lookup(id, NOW).expect("opened with it");
            let nonce: [u8; COOKIE_NONCE_LEN] = data[4..20].try_into().expect("16 bytes");
            assert_eq!(
                cookie::seal(key, &contents, &nonce),
                data,
                "a cookie opened that re-seals differently: forged"
            );
            assert_eq!(
                cookie::open(other_ring(), data, NOW),
                Err(CookieError::Authentication),
                "opened under another root"
            );
            true
        }
    }
}

pub fn check_seal(input: &SealInput) {
    let ring = ring();
    let alg = if input.wide {
        AeadAlgorithm::AesSivCmac512
    } else {
        AeadAlgorithm::AesSivCmac256
    };
    let kl = alg.key_len();
    let contents = CookieContents {
        c2s: AeadKey::new(alg, &input.c2s[..kl]).expect("key length"),
        s2c: AeadKey::new(alg, &input.s2c[..kl]).expect("key length"),
    };
    let keys = ring.keys();
    let key = &keys[usize::from(input.key_index) % keys.len()];

    let c = cookie::seal(key, &contents, &input.nonce);
    assert_eq!(c.len(), cookie_len(alg));
    assert_eq!(c.len() % 4, 0);
    assert_eq!(key_id(&c), Some(key.id));
    let mut buf = [0u8; MAX_COOKIE_LEN];
    assert_eq!(
        seal_into(key, &contents, &input.nonce, &mut buf),
        Some(c.len())
    );
    assert_eq!(buf[..c.len()], c[..], "seal_into and seal differ");
    assert!(seal_into(key, &contents, &input.nonce, &mut buf[..c.len() - 1]).is_none());

    assert_eq!(
        cookie::open(ring, &c, NOW).as_ref(),
        Ok(&contents),
        "round trip"
    );
    assert_eq!(
        cookie::open(ring, &c, key.not_after - 1).as_ref(),
        Ok(&contents)
    );
    assert_eq!(
        cookie::open(ring, &c, key.not_after),
        Err(CookieError::Key(KeyLookupError::Expired(key.id)))
    );
    assert_eq!(
        cookie::open(other_ring(), &c, NOW),
        Err(CookieError::Authentication)
    );

    let mut bad = c.clone();
    let bit = usize::from(input.flip) % (bad.len() * 8);
    bad[bit / 8] ^= 1 << (bit % 8);
    let err = cookie::open(ring, &bad, NOW).expect_err("tampered cookie opened");
    if bit < 32 {
        assert!(matches!(err, CookieError::Key(_)), "bit {bit}: {err:?}");
    } else {
        assert_eq!(err, CookieError::Authentication, "bit {bit}");
    }
    assert!(cookie::open(ring, &c[..c.len() - 4], NOW).is_err());
}

pub fn check(data: &[u8]) {
    check_open(data);
    if let Ok(input) = SealInput::arbitrary(&mut Unstructured::new(data)) {
        check_seal(&input);
    }
}
