//! `aead_siv`: nts-proto's own AES-SIV-CMAC against the `aes-siv` crate.
//!
//! Input layout (short inputs read as zeros where bytes are missing):
//!
//! ```text
//! byte 0: bit 0 = algorithm (0: AES-SIV-CMAC-256, 1: -512)
//! byte 1: AD length, byte 2: nonce length (each cut to what remains)
//! bytes 3-4: tamper position (big-endian), taken modulo tag+ciphertext+AD+nonce
//! next 32 or 64 bytes: the key; then the AD, the nonce, and the rest is the plaintext
//! ```
//!
//! 1. Sealing gives exactly the tag and ciphertext the `aes-siv` crate gives for
//!    S2V over [AD, nonce, plaintext] (RFC 8915 section 5.6), and both open it.
//! 2. Flipping one bit of tag, ciphertext, AD or nonce makes both refuse it, and
//!    our failed open leaves the ciphertext as it was.
//! 3. The plaintext bytes read as tag || ciphertext open with ours exactly when
//!    they open with the crate, to the same plaintext.

use aes_siv::aead::generic_array::GenericArray;
use aes_siv::siv::{Aes128Siv, Aes256Siv};
use aes_siv::KeyInit;
use nts_proto::aead::{AeadAlgorithm, AeadError, AeadKey, TAG_LEN};

/// What one input reached (for the seed test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub alg: AeadAlgorithm,
    pub ad_len: usize,
    pub nonce_len: usize,
    pub plaintext_len: usize,
}

/// The reference cipher, built fresh the way nts-proto used to.
enum Reference {
    Aes128(Box<Aes128Siv>),
    Aes256(Box<Aes256Siv>),
}

impl Reference {
    fn new(key: &[u8]) -> Self {
        match key.len() {
            32 => Self::Aes128(Box::new(Aes128Siv::new(GenericArray::from_slice(key)))),
            _ => Self::Aes256(Box::new(Aes256Siv::new(GenericArray::from_slice(key)))),
        }
    }

    fn seal(&mut self, ad: &[u8], nonce: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let headers: [&[u8]; 2] = [ad, nonce];
        let tag = match self {
            Self::Aes128(c) => c.encrypt_in_place_detached(headers, buf),
            Self::Aes256(c) => c.encrypt_in_place_detached(headers, buf),
        };
        tag.expect("two headers are within S2V's limit").into()
    }

    fn open(&mut self, ad: &[u8], nonce: &[u8], tag: &[u8; TAG_LEN], buf: &mut [u8]) -> bool {
        let headers: [&[u8]; 2] = [ad, nonce];
        let tag = GenericArray::from_slice(tag);
        match self {
            Self::Aes128(c) => c.decrypt_in_place_detached(headers, buf, tag).is_ok(),
            Self::Aes256(c) => c.decrypt_in_place_detached(headers, buf, tag).is_ok(),
        }
    }
}

/// Take up to `n` bytes from the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = data.split_at(n.min(data.len()));
    *data = rest;
    head
}

pub fn check(data: &[u8]) -> Outcome {
    let mut rest = data;
    let mut header = [0u8; 5];
    let h = take(&mut rest, header.len());
    header[..h.len()].copy_from_slice(h);
    let alg = if header[0] & 1 == 0 {
        AeadAlgorithm::AesSivCmac256
    } else {
        AeadAlgorithm::AesSivCmac512
    };
    let mut key = [0u8; 64];
    let k = take(&mut rest, alg.key_len());
    key[..k.len()].copy_from_slice(k);
    let key = &key[..alg.key_len()];
    let ad = take(&mut rest, usize::from(header[1]));
    let nonce = take(&mut rest, usize::from(header[2]));
    let plaintext = rest;
    let tamper = usize::from(u16::from_be_bytes([header[3], header[4]]));

    let ours = AeadKey::new(alg, key).expect("key of the algorithm's length");
    let mut reference = Reference::new(key);

    // 1. Same tag and ciphertext; each side opens the other's.
    let mut ct = plaintext.to_vec();
    let tag = ours.seal_detached(nonce, ad, &mut ct);
    let mut ref_ct = plaintext.to_vec();
    let ref_tag = reference.seal(ad, nonce, &mut ref_ct);
    assert_eq!(tag, ref_tag, "tag differs from the aes-siv crate");
    assert_eq!(ct, ref_ct, "ciphertext differs from the aes-siv crate");
    let mut buf = ct.clone();
    ours.open_detached(nonce, ad, &tag, &mut buf)
        .expect("our own seal opens");
    assert_eq!(buf, plaintext);
    let mut buf = ct.clone();
    assert!(
        reference.open(ad, nonce, &tag, &mut buf),
        "the crate opens ours"
    );
    assert_eq!(buf, plaintext);

    // 2. One flipped bit anywhere that is authenticated.
    let covered = TAG_LEN + ct.len() + ad.len() + nonce.len();
    let at = tamper % covered;
    let bit = 1u8 << (tamper / covered % 8);
    let (mut t, mut c, mut a, mut n) = (tag, ct.clone(), ad.to_vec(), nonce.to_vec());
    if at < TAG_LEN {
        t[at] ^= bit;
    } else if at < TAG_LEN + c.len() {
        c[at - TAG_LEN] ^= bit;
    } else if at < TAG_LEN + c.len() + a.len() {
        a[at - TAG_LEN - ct.len()] ^= bit;
    } else {
        n[at - TAG_LEN - ct.len() - ad.len()] ^= bit;
    }
    let tampered = c.clone();
    assert_eq!(
        ours.open_detached(&n, &a, &t, &mut c),
        Err(AeadError::Authentication),
        "a flipped bit at {at} went unnoticed"
    );
    assert_eq!(c, tampered, "a failed open changed the ciphertext");
    assert!(!reference.open(&a, &n, &t, &mut c.clone()));

    // 3. Arbitrary bytes as a sealed message.
    if plaintext.len() >= TAG_LEN {
        let forged_tag: [u8; TAG_LEN] = plaintext[..TAG_LEN].try_into().expect("16 bytes");
        let mut ours_buf = plaintext[TAG_LEN..].to_vec();
        let mut ref_buf = ours_buf.clone();
        let ours_ok = ours
            .open_detached(nonce, ad, &forged_tag, &mut ours_buf)
            .is_ok();
        let ref_ok = reference.open(ad, nonce, &forged_tag, &mut ref_buf);
        assert_eq!(ours_ok, ref_ok, "open disagrees with the aes-siv crate");
        if ours_ok {
            assert_eq!(ours_buf, ref_buf);
        } else {
            assert_eq!(ours_buf, &plaintext[TAG_LEN..]);
        }
    }

    Outcome {
        alg,
        ad_len: ad.len(),
        nonce_len: nonce.len(),
        plaintext_len: plaintext.len(),
    }
}

/// An input in [`check`]'s layout.
pub fn encode(
    alg: AeadAlgorithm,
    tamper: u16,
    key: &[u8],
    ad: &[u8],
    nonce: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    assert_eq!(key.len(), alg.key_len());
    let wide = u8::from(alg == AeadAlgorithm::AesSivCmac512);
    let mut out = vec![wide, ad.len() as u8, nonce.len() as u8];
    out.extend_from_slice(&tamper.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(ad);
    out.extend_from_slice(nonce);
    out.extend_from_slice(plaintext);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_empty_inputs() {
        let o = check(&[]);
        assert_eq!(o.alg, AeadAlgorithm::AesSivCmac256);
        assert_eq!((o.ad_len, o.nonce_len, o.plaintext_len), (0, 0, 0));
        assert_eq!(check(&[1]).alg, AeadAlgorithm::AesSivCmac512);
    }

    #[test]
    fn layout_round_trips() {
        let data = encode(
            AeadAlgorithm::AesSivCmac512,
            9,
            &[7; 64],
            &[1; 48],
            &[2; 16],
            &[3; 100],
        );
        let o = check(&data);
        assert_eq!(o.alg, AeadAlgorithm::AesSivCmac512);
        assert_eq!((o.ad_len, o.nonce_len, o.plaintext_len), (48, 16, 100));
    }
}
