//! NTS cookies: the per-client keys (C2S, S2C) and negotiated algorithm, sealed
//! under a server-side cookie key so the time server can stay stateless.
//!
//! Wire layout (everything is opaque to clients):
//!
//! ```text
//! key id (4) | nonce (16) | SIV tag (16) | encrypted: algorithm (2) | reserved (2) | C2S | S2C
//! ```
//!
//! The key id is authenticated as associated data. Cookies are a multiple of
//! four bytes long (104 for AES-SIV-CMAC-256, 168 for -512), so extension
//! fields carrying them need no padding.

use crate::aead::{AeadAlgorithm, AeadKey, MAX_KEY_LEN, TAG_LEN};
use crate::key_ring::{CookieKey, KeyId, KeyLookupError, KeyRing};
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of the random nonce inside each cookie.
pub const COOKIE_NONCE_LEN: usize = 16;
const HEADER_LEN: usize = 4 + COOKIE_NONCE_LEN + TAG_LEN;
const MAX_PLAINTEXT: usize = 4 + 2 * MAX_KEY_LEN;
/// Longest cookie this implementation produces or accepts.
pub const MAX_COOKIE_LEN: usize = HEADER_LEN + MAX_PLAINTEXT;

/// Length of a cookie for a client that negotiated `alg`.
pub fn cookie_len(alg: AeadAlgorithm) -> usize {
    HEADER_LEN + 4 + 2 * alg.key_len()
}

/// The keys a cookie carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieContents {
    pub c2s: AeadKey,
    pub s2c: AeadKey,
}

impl CookieContents {
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.c2s.algorithm()
    }
}

/// Why a cookie could not be opened. All of these earn the client an NTS NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CookieError {
    #[error("cookie length {0} is not a valid cookie length")]
    Malformed(usize),
    #[error(transparent)]
    Key(#[from] KeyLookupError),
    #[error("cookie failed authentication")]
    Authentication,
    #[error("cookie plaintext is inconsistent")]
    BadContents,
}

impl CookieError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Key(KeyLookupError::Unknown(_)) => "unknown_key",
            Self::Key(KeyLookupError::Expired(_)) => "expired_key",
            Self::Authentication => "bad_tag",
            Self::BadContents => "bad_contents",
        }
    }
}

/// Seal `contents` under `key` into `out`, returning the cookie length. No allocation.
///
/// `out` must hold at least [`cookie_len`] bytes; a shorter buffer returns `None`.
pub fn seal_into(
    key: &CookieKey,
    contents: &CookieContents,
    nonce: &[u8; COOKIE_NONCE_LEN],
    out: &mut [u8],
) -> Option<usize> {
    let alg = contents.algorithm();
    let len = cookie_len(alg);
    let out = out.get_mut(..len)?;
    let kl = alg.key_len();
    let id = key.id.0.to_be_bytes();
    out[..4].copy_from_slice(&id);
    out[4..20].copy_from_slice(nonce);
    let pt = &mut out[HEADER_LEN..];
    pt[..2].copy_from_slice(&alg.id().to_be_bytes());
    pt[2..4].fill(0);
    pt[4..4 + kl].copy_from_slice(contents.c2s.as_bytes());
    pt[4 + kl..4 + 2 * kl].copy_from_slice(contents.s2c.as_bytes());
    let tag = key.aead_key().seal_detached(nonce, &id, pt);
    out[20..HEADER_LEN].copy_from_slice(&tag);
    Some(len)
}

/// Seal into a new vector (for NTS-KE, where allocation is fine).
pub fn seal(key: &CookieKey, contents: &CookieContents, nonce: &[u8; COOKIE_NONCE_LEN]) -> Vec<u8> {
    let mut out = vec![0u8; cookie_len(contents.algorithm())];
    // The buffer was sized by cookie_len, so sealing always fits.
    let n = seal_into(key, contents, nonce, &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

/// The key id a cookie names, if it is long enough to have one.
pub fn key_id(cookie: &[u8]) -> Option<KeyId> {
    let b = cookie.get(..4)?;
    Some(KeyId(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// The two client keys from a cookie's plaintext after its 4-byte header.
///
/// Each key carries about 2 KiB of prepared cipher state. Lengths are settled
/// first, the keys are built inside the returned value with the infallible
/// constructors, and `open` returns this result as it is: that keeps the
/// copying of that state to about 4 KiB per cookie (the compiler still stages
/// the first key, which must survive if building the second one unwinds).
fn contents_from(alg: AeadAlgorithm, keys: &[u8]) -> Result<CookieContents, CookieError> {
    fn two<const N: usize>(keys: &[u8]) -> Option<(&[u8; N], &[u8; N])> {
        let (c2s, rest) = keys.split_first_chunk::<N>()?;
        Some((c2s, rest.first_chunk::<N>()?))
    }
    match alg {
        AeadAlgorithm::AesSivCmac256 => {
            let (c2s, s2c) = two::<32>(keys).ok_or(CookieError::BadContents)?;
            Ok(CookieContents {
                c2s: AeadKey::aes_siv_cmac_256(c2s),
                s2c: AeadKey::aes_siv_cmac_256(s2c),
            })
        }
        AeadAlgorithm::AesSivCmac512 => {
            let (c2s, s2c) = two::<64>(keys).ok_or(CookieError::BadContents)?;
            Ok(CookieContents {
                c2s: AeadKey::aes_siv_cmac_512(c2s),
                s2c: AeadKey::aes_siv_cmac_512(s2c),
            })
        }
    }
}

/// Open a cookie with the key ring at Unix time `now`. No allocation.
pub fn open(ring: &KeyRing, cookie: &[u8], now: u64) -> Result<CookieContents, CookieError> {
    let len = cookie.len();
    let alg = [AeadAlgorithm::AesSivCmac256, AeadAlgorithm::AesSivCmac512]
        .into_iter()
        .find(|a| cookie_len(*a) == len)
        .ok_or(CookieError::Malformed(len))?;
    let id = key_id(cookie).ok_or(CookieError::Malformed(len))?;
    let key = ring.lookup(id, now)?;
    let mut nonce = [0u8; COOKIE_NONCE_LEN];
    nonce.copy_from_slice(&cookie[4..20]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&cookie[20..HEADER_LEN]);
    // Wiped when this function returns, on every path.
    let mut pt = Zeroizing::new([0u8; MAX_PLAINTEXT]);
    let pt = &mut pt[..len - HEADER_LEN];
    pt.copy_from_slice(&cookie[HEADER_LEN..]);
    key.aead_key()
        .open_detached(&nonce, &cookie[..4], &tag, pt)
        .map_err(|_| CookieError::Authentication)?;
    if u16::from_be_bytes([pt[0], pt[1]]) != alg.id() || pt[2] != 0 || pt[3] != 0 {
        return Err(CookieError::BadContents);
    }
    contents_from(alg, &pt[4..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_ring::{KeySchedule, RootSecret};

    fn setup() -> (KeyRing, u64) {
        let root = RootSecret::from_bytes(&[1u8; 32]).unwrap();
        let now = 1_700_000_000;
        (
            KeyRing::derive(&root, &KeySchedule::new(3600, 2).unwrap(), now),
            now,
        )
    }

    fn contents(alg: AeadAlgorithm) -> CookieContents {
        CookieContents {
            c2s: AeadKey::new(alg, &vec![0xc2; alg.key_len()]).unwrap(),
            s2c: AeadKey::new(alg, &vec![0x5c; alg.key_len()]).unwrap(),
        }
    }

    #[test]
    fn seal_open_both_algorithms() {
        let (ring, now) = setup();
        for alg in AeadAlgorithm::ALL {
            let key = ring.current(now).unwrap();
            let c = seal(key, &contents(alg), &[7; 16]);
            assert_eq!(c.len(), cookie_len(alg));
            assert_eq!(c.len() % 4, 0);
            assert_eq!(key_id(&c), Some(key.id));
            assert_eq!(open(&ring, &c, now).unwrap(), contents(alg));
        }
        assert_eq!(cookie_len(AeadAlgorithm::AesSivCmac256), 104);
        assert_eq!(cookie_len(AeadAlgorithm::AesSivCmac512), 168);
    }

    #[test]
    fn failures_are_errors() {
        let (ring, now) = setup();
        let key = ring.current(now).unwrap();
        let c = seal(key, &contents(AeadAlgorithm::AesSivCmac256), &[7; 16]);
        // Flip each byte in turn: every one must be detected.
        for i in 0..c.len() {
            let mut bad = c.clone();
            bad[i] ^= 0x01;
            let err = open(&ring, &bad, now).unwrap_err();
            if i < 4 {
                assert!(matches!(err, CookieError::Key(_)), "byte {i}: {err:?}");
            } else {
                assert_eq!(err, CookieError::Authentication, "byte {i}");
            }
        }
        assert_eq!(open(&ring, &c[..50], now), Err(CookieError::Malformed(50)));
        assert_eq!(open(&ring, &[], now), Err(CookieError::Malformed(0)));
        // Expired: the ring's schedule accepts keys for 3 hours after their epoch starts.
        assert!(matches!(
            open(&ring, &c, now + 4 * 3600),
            Err(CookieError::Key(KeyLookupError::Expired(_)))
        ));
        assert_eq!(
            CookieError::Key(KeyLookupError::Unknown(KeyId(1))).reason(),
            "unknown_key"
        );
    }

    #[test]
    fn seal_into_short_buffer() {
        let (ring, now) = setup();
        let mut small = [0u8; 50];
        assert!(seal_into(
            ring.current(now).unwrap(),
            &contents(AeadAlgorithm::AesSivCmac256),
            &[0; 16],
            &mut small
        )
        .is_none());
    }
}
