//! AEAD algorithms NTS negotiates (RFC 8915 section 5.1): AES-SIV-CMAC (RFC 5297).
//!
//! Keys live in fixed-size, zeroized buffers so the packet path never allocates,
//! and are prepared for the cipher once, when the key is made ([`crate::siv`]):
//! the cookie key serves every request, so sealing and opening do no key setup.
//! The associated data and the nonce are passed to S2V as two separate header
//! components, in that order, as RFC 8915 section 5.6 prescribes.

use crate::siv::SivKey;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest key of any supported algorithm (AES-SIV-CMAC-512).
pub const MAX_KEY_LEN: usize = 64;
/// Length of the synthetic IV that prefixes every ciphertext.
pub const TAG_LEN: usize = 16;

/// AEAD algorithms by their IANA numeric identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    /// AEAD_AES_SIV_CMAC_256 (id 15): mandatory to implement.
    AesSivCmac256,
    /// AEAD_AES_SIV_CMAC_512 (id 17).
    AesSivCmac512,
}

impl AeadAlgorithm {
    /// Preference order when we are the client.
    pub const ALL: [AeadAlgorithm; 2] = [Self::AesSivCmac512, Self::AesSivCmac256];

    pub fn id(self) -> u16 {
        match self {
            Self::AesSivCmac256 => 15,
            Self::AesSivCmac512 => 17,
        }
    }

    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            15 => Some(Self::AesSivCmac256),
            17 => Some(Self::AesSivCmac512),
            _ => None,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Self::AesSivCmac256 => 32,
            Self::AesSivCmac512 => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::AesSivCmac256 => "AES-SIV-CMAC-256",
            Self::AesSivCmac512 => "AES-SIV-CMAC-512",
        }
    }
}

impl std::fmt::Display for AeadAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from sealing or opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AeadError {
    #[error("authentication failed")]
    Authentication,
    #[error("ciphertext shorter than the tag")]
    Truncated,
    #[error("key length {got} does not match {alg} ({want} bytes)")]
    KeyLength {
        alg: AeadAlgorithm,
        got: usize,
        want: usize,
    },
}

/// A key for one algorithm, with its prepared cipher state. Zeroed on drop
/// (the raw bytes here, the cipher state in [`SivKey`]); never printed.
///
/// About 2 KiB (the AES key schedules are sized for the software fallback):
/// pass it by reference.
#[derive(Clone)]
pub struct AeadKey {
    alg: AeadAlgorithm,
    bytes: [u8; MAX_KEY_LEN],
    siv: SivKey,
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for AeadKey {}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AeadKey({}, <redacted>)", self.alg)
    }
}

impl PartialEq for AeadKey {
    /// Constant-time comparison: keys are secrets.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.alg == other.alg && bool::from(self.bytes.ct_eq(&other.bytes))
    }
}
impl Eq for AeadKey {}

impl AeadKey {
    pub fn new(alg: AeadAlgorithm, key: &[u8]) -> Result<Self, AeadError> {
        let wrong_length = AeadError::KeyLength {
            alg,
            got: key.len(),
            want: alg.key_len(),
        };
        Ok(match alg {
            AeadAlgorithm::AesSivCmac256 => {
                Self::aes_siv_cmac_256(key.try_into().map_err(|_| wrong_length)?)
            }
            AeadAlgorithm::AesSivCmac512 => {
                Self::aes_siv_cmac_512(key.try_into().map_err(|_| wrong_length)?)
            }
        })
    }

    /// An AEAD_AES_SIV_CMAC_256 key. Infallible and always inlined, so that
    /// building one inside a larger value copies its ~2 KiB as little as the
    /// compiler allows (measured in `cookie::open`: half the copying of a
    /// fallible, out-of-line constructor).
    #[inline(always)]
    pub fn aes_siv_cmac_256(key: &[u8; 32]) -> Self {
        let mut bytes = [0u8; MAX_KEY_LEN];
        bytes[..32].copy_from_slice(key);
        Self {
            alg: AeadAlgorithm::AesSivCmac256,
            bytes,
            siv: SivKey::aes128(key),
        }
    }

    /// An AEAD_AES_SIV_CMAC_512 key (see [`AeadKey::aes_siv_cmac_256`]).
    #[inline(always)]
    pub fn aes_siv_cmac_512(key: &[u8; 64]) -> Self {
        Self {
            alg: AeadAlgorithm::AesSivCmac512,
            bytes: *key,
            siv: SivKey::aes256(key),
        }
    }

    pub fn algorithm(&self) -> AeadAlgorithm {
        self.alg
    }

    /// The raw key bytes (for cookie plaintexts). Handle with care.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.alg.key_len()]
    }

    /// Encrypt `buf` in place and return the 16-byte tag (which goes before the ciphertext on the wire).
    pub fn seal_detached(&self, nonce: &[u8], ad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.siv.seal(&[ad, nonce], buf)
    }

    /// Verify `tag` and decrypt `buf` in place. On failure `buf` is left encrypted.
    pub fn open_detached(
        &self,
        nonce: &[u8],
        ad: &[u8],
        tag: &[u8; TAG_LEN],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        self.siv
            .open(&[ad, nonce], tag, buf)
            .map_err(|_| AeadError::Authentication)
    }

    /// Seal into a new vector laid out as tag || ciphertext.
    pub fn seal(&self, nonce: &[u8], ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; TAG_LEN + plaintext.len()];
        out[TAG_LEN..].copy_from_slice(plaintext);
        let tag = self.seal_detached(nonce, ad, &mut out[TAG_LEN..]);
        out[..TAG_LEN].copy_from_slice(&tag);
        out
    }

    /// Open tag || ciphertext into a new vector.
    pub fn open(&self, nonce: &[u8], ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AeadError> {
        if sealed.len() < TAG_LEN {
            return Err(AeadError::Truncated);
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&sealed[..TAG_LEN]);
        let mut buf = sealed[TAG_LEN..].to_vec();
        self.open_detached(nonce, ad, &tag, &mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our (ad, nonce) API is S2V over exactly [ad, nonce, plaintext], as the
    /// `aes-siv` crate computes it (RFC 5297's vectors are checked in `siv`).
    #[test]
    fn seal_matches_aes_siv_crate() {
        use aes_siv::aead::generic_array::GenericArray;
        use aes_siv::siv::{Aes128Siv, Aes256Siv};
        use aes_siv::KeyInit;
        for alg in AeadAlgorithm::ALL {
            let key: Vec<u8> = (0..alg.key_len() as u8).collect();
            let headers: [&[u8]; 2] = [b"header", b"nonce-nonce-1234"];
            let reference = match alg {
                AeadAlgorithm::AesSivCmac256 => {
                    Aes128Siv::new(GenericArray::from_slice(&key)).encrypt(headers, b"hello")
                }
                AeadAlgorithm::AesSivCmac512 => {
                    Aes256Siv::new(GenericArray::from_slice(&key)).encrypt(headers, b"hello")
                }
            };
            let k = AeadKey::new(alg, &key).unwrap();
            let sealed = k.seal(b"nonce-nonce-1234", b"header", b"hello");
            assert_eq!(sealed, reference.unwrap());
            assert_eq!(
                k.open(b"nonce-nonce-1234", b"header", &sealed).unwrap(),
                b"hello"
            );
        }
    }

    #[test]
    fn equality_and_clone() {
        let a = AeadKey::new(AeadAlgorithm::AesSivCmac256, &[1; 32]).unwrap();
        let b = AeadKey::new(AeadAlgorithm::AesSivCmac256, &[2; 32]).unwrap();
        let c = a.clone();
        assert_eq!(a, c);
        assert_ne!(a, b);
        assert_eq!(c.as_bytes(), &[1; 32]);
        // A clone seals the same way as the original.
        assert_eq!(
            a.seal(&[0; 16], b"ad", b"pt"),
            c.seal(&[0; 16], b"ad", b"pt")
        );
        let wide = AeadKey::new(AeadAlgorithm::AesSivCmac512, &[1; 64]).unwrap();
        assert_ne!(a, wide);
    }

    #[test]
    fn tamper_is_detected() {
        let k = AeadKey::new(AeadAlgorithm::AesSivCmac256, &[3u8; 32]).unwrap();
        let sealed = k.seal(&[1; 16], b"ad", b"");
        assert_eq!(sealed.len(), TAG_LEN);
        assert!(k.open(&[1; 16], b"ad", &sealed).unwrap().is_empty());
        assert_eq!(
            k.open(&[1; 16], b"ae", &sealed),
            Err(AeadError::Authentication)
        );
        assert_eq!(
            k.open(&[2; 16], b"ad", &sealed),
            Err(AeadError::Authentication)
        );
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert_eq!(
            k.open(&[1; 16], b"ad", &bad),
            Err(AeadError::Authentication)
        );
        assert_eq!(
            k.open(&[1; 16], b"ad", &bad[..5]),
            Err(AeadError::Truncated)
        );
    }

    #[test]
    fn key_length_checked_and_redacted() {
        assert!(AeadKey::new(AeadAlgorithm::AesSivCmac512, &[0; 32]).is_err());
        assert_eq!(
            AeadKey::new(AeadAlgorithm::AesSivCmac256, &[0; 64]),
            Err(AeadError::KeyLength {
                alg: AeadAlgorithm::AesSivCmac256,
                got: 64,
                want: 32
            })
        );
        let k = AeadKey::new(AeadAlgorithm::AesSivCmac512, &[0x41; 64]).unwrap();
        assert!(!format!("{k:?}").contains("41"));
        assert_eq!(
            AeadAlgorithm::from_id(15),
            Some(AeadAlgorithm::AesSivCmac256)
        );
        assert_eq!(AeadAlgorithm::from_id(16), None);
    }
}
