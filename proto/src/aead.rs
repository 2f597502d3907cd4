//! AEAD algorithms NTS negotiates (RFC 8915 section 5.1): AES-SIV-CMAC (RFC 5297).
//!
//! Keys live in fixed-size, zeroized buffers so the packet path never allocates.
//! The associated data and the nonce are passed to S2V as two separate header
//! components, in that order, as RFC 8915 section 5.6 prescribes.

use aes_siv::aead::generic_array::GenericArray;
use aes_siv::siv::{Aes128Siv, Aes256Siv};
use aes_siv::KeyInit;
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

/// A key for one algorithm. Zeroed on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AeadKey {
    #[zeroize(skip)]
    alg: AeadAlgorithm,
    bytes: [u8; MAX_KEY_LEN],
}

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
        if key.len() != alg.key_len() {
            return Err(AeadError::KeyLength {
                alg,
                got: key.len(),
                want: alg.key_len(),
            });
        }
        let mut bytes = [0u8; MAX_KEY_LEN];
        bytes[..key.len()].copy_from_slice(key);
        Ok(Self { alg, bytes })
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
        let headers: [&[u8]; 2] = [ad, nonce];
        let tag = match self.alg {
            AeadAlgorithm::AesSivCmac256 => {
                Aes128Siv::new(GenericArray::from_slice(self.as_bytes()))
                    .encrypt_in_place_detached(headers, buf)
            }
            AeadAlgorithm::AesSivCmac512 => {
                Aes256Siv::new(GenericArray::from_slice(self.as_bytes()))
                    .encrypt_in_place_detached(headers, buf)
            }
        };
        // S2V only fails for more than 126 header components; we always pass two.
        let tag = tag.unwrap_or_default();
        tag.into()
    }

    /// Verify `tag` and decrypt `buf` in place. On failure `buf` is left encrypted.
    pub fn open_detached(
        &self,
        nonce: &[u8],
        ad: &[u8],
        tag: &[u8; TAG_LEN],
        buf: &mut [u8],
    ) -> Result<(), AeadError> {
        let headers: [&[u8]; 2] = [ad, nonce];
        let tag = GenericArray::from_slice(tag);
        let r = match self.alg {
            AeadAlgorithm::AesSivCmac256 => {
                Aes128Siv::new(GenericArray::from_slice(self.as_bytes()))
                    .decrypt_in_place_detached(headers, buf, tag)
            }
            AeadAlgorithm::AesSivCmac512 => {
                Aes256Siv::new(GenericArray::from_slice(self.as_bytes()))
                    .decrypt_in_place_detached(headers, buf, tag)
            }
        };
        r.map_err(|_| AeadError::Authentication)
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

/// Raw AES-SIV with an arbitrary list of header components, for checking against RFC 5297's vectors.
#[cfg(test)]
fn siv_raw(alg: AeadAlgorithm, key: &[u8], headers: &[&[u8]], pt: &[u8]) -> Vec<u8> {
    match alg {
        AeadAlgorithm::AesSivCmac256 => Aes128Siv::new(GenericArray::from_slice(key))
            .encrypt(headers, pt)
            .unwrap(),
        AeadAlgorithm::AesSivCmac512 => Aes256Siv::new(GenericArray::from_slice(key))
            .encrypt(headers, pt)
            .unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// RFC 5297 appendix A.1 (deterministic authenticated encryption).
    #[test]
    fn rfc5297_a1() {
        let key = h("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
        let ad = h("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let pt = h("11223344 55667788 99aabbcc ddee");
        let expected = h("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c");
        assert_eq!(
            siv_raw(AeadAlgorithm::AesSivCmac256, &key, &[&ad], &pt),
            expected
        );
    }

    /// RFC 5297 appendix A.2 (nonce-based): two AD components then the nonce, the
    /// same layout our seal() uses with one AD component.
    #[test]
    fn rfc5297_a2() {
        let key = h("7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f");
        let ad1 = h("00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988 77665544 33221100");
        let ad2 = h("10203040 50607080 90a0");
        let nonce = h("09f91102 9d74e35b d84156c5 635688c0");
        let pt = h("74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970 74207573 696e6720 5349562d 414553");
        let expected = h("7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17 dba77ceb 094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d");
        assert_eq!(
            siv_raw(
                AeadAlgorithm::AesSivCmac256,
                &key,
                &[&ad1, &ad2, &nonce],
                &pt
            ),
            expected
        );
    }

    /// Our (ad, nonce) API is S2V over exactly [ad, nonce, plaintext].
    #[test]
    fn seal_matches_raw_siv() {
        for alg in AeadAlgorithm::ALL {
            let key: Vec<u8> = (0..alg.key_len() as u8).collect();
            let k = AeadKey::new(alg, &key).unwrap();
            let sealed = k.seal(b"nonce-nonce-1234", b"header", b"hello");
            assert_eq!(
                sealed,
                siv_raw(alg, &key, &[b"header", b"nonce-nonce-1234"], b"hello")
            );
            assert_eq!(
                k.open(b"nonce-nonce-1234", b"header", &sealed).unwrap(),
                b"hello"
            );
        }
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
        let k = AeadKey::new(AeadAlgorithm::AesSivCmac512, &[0x41; 64]).unwrap();
        assert!(!format!("{k:?}").contains("41"));
        assert_eq!(
            AeadAlgorithm::from_id(15),
            Some(AeadAlgorithm::AesSivCmac256)
        );
        assert_eq!(AeadAlgorithm::from_id(16), None);
    }
}
