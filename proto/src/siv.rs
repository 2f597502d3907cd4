//! AES-SIV-CMAC (RFC 5297) with the per-key work done once.
//!
//! A time server seals and opens with the same cookie key for every request.
//! Building a fresh cipher per operation (as the `aes-siv` crate's API does)
//! repeats both AES key expansions and the CMAC subkey derivation each time;
//! that was about 8% of the server's CPU. A [`SivKey`] holds everything that
//! depends on the key alone, so sealing and opening do no setup:
//!
//! - the encrypt-only AES key schedules for S2V's CMAC and for CTR,
//! - the CMAC subkeys K1 and K2 (RFC 4493 section 2.3),
//! - CMAC(K, 0^128), the value S2V starts from (RFC 5297 section 2.4).
//!
//! The AES block cipher comes from the `aes` crate; `BlockEncrypt` takes
//! `&self`, so one prepared key serves any number of operations without copies.
//!
//! Wiping: the AES key schedules are zeroized on drop by the `aes` crate (its
//! `zeroize` feature), the subkeys and the S2V start value by [`SivCore`]'s
//! `Drop`, and the CTR keystream buffer at the end of each operation. The S2V
//! accumulator and the tag are not wiped: they are public (the tag is sent) or
//! derived from public values by a one-way function of the key.

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, BlockSizeUser, Key, KeyInit};
use aes::{Aes128Enc, Aes256Enc};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::aead::TAG_LEN;

/// One AES block, also the size of the SIV tag.
type Block = [u8; TAG_LEN];

/// CTR keystream blocks generated per call into AES: enough for AES-NI to
/// pipeline (it works on 8 blocks at a time), small enough for the stack.
const CTR_BATCH: usize = 8;

/// The synthetic IV did not match: the data or the key is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagMismatch;

/// A prepared AES-SIV-CMAC key of either size.
///
/// Inline rather than boxed on purpose: the time server makes two of these per
/// request (the client keys out of a cookie), and an allocation each would cost
/// more than the bytes the smaller variant leaves unused.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum SivKey {
    /// AEAD_AES_SIV_CMAC_256: two AES-128 keys.
    Aes128(SivCore<Aes128Enc>),
    /// AEAD_AES_SIV_CMAC_512: two AES-256 keys.
    Aes256(SivCore<Aes256Enc>),
}

impl SivKey {
    /// Prepare an AEAD_AES_SIV_CMAC_256 key. RFC 5297 section 2.6: the left
    /// half keys S2V, the right half CTR.
    ///
    /// Infallible (no `Option` layer to copy the large state through).
    #[inline]
    pub(crate) fn aes128(key: &[u8; 32]) -> Self {
        Self::Aes128(SivCore::new(
            GenericArray::from_slice(&key[..16]),
            GenericArray::from_slice(&key[16..]),
        ))
    }

    /// Prepare an AEAD_AES_SIV_CMAC_512 key (halves as for [`SivKey::aes128`]).
    #[inline]
    pub(crate) fn aes256(key: &[u8; 64]) -> Self {
        Self::Aes256(SivCore::new(
            GenericArray::from_slice(&key[..32]),
            GenericArray::from_slice(&key[32..]),
        ))
    }

    /// Encrypt `buf` in place; returns the synthetic IV (the tag).
    ///
    /// S2V runs over `headers` and then the plaintext. RFC 5297 allows at most
    /// 126 headers; NTS always passes two (associated data, nonce).
    pub(crate) fn seal(&self, headers: &[&[u8]], buf: &mut [u8]) -> Block {
        match self {
            Self::Aes128(core) => core.seal(headers, buf),
            Self::Aes256(core) => core.seal(headers, buf),
        }
    }

    /// Decrypt `buf` in place and check `tag`. On a mismatch `buf` is
    /// encrypted again, so unauthenticated plaintext never stays behind.
    pub(crate) fn open(
        &self,
        headers: &[&[u8]],
        tag: &Block,
        buf: &mut [u8],
    ) -> Result<(), TagMismatch> {
        match self {
            Self::Aes128(core) => core.open(headers, tag, buf),
            Self::Aes256(core) => core.open(headers, tag, buf),
        }
    }

    /// S2V alone (RFC 5297 section 2.4), for checking against the RFC's intermediate values.
    #[cfg(test)]
    pub(crate) fn s2v(&self, headers: &[&[u8]], plaintext: &[u8]) -> Block {
        match self {
            Self::Aes128(core) => core.s2v(headers, plaintext),
            Self::Aes256(core) => core.s2v(headers, plaintext),
        }
    }
}

/// What [`SivCore`] needs of a block cipher: AES of one key size, encrypt only.
pub(crate) trait Aes: BlockEncrypt + BlockSizeUser<BlockSize = U16> + KeyInit {}
impl<C: BlockEncrypt + BlockSizeUser<BlockSize = U16> + KeyInit> Aes for C {}

/// The prepared state for one AES key size.
#[derive(Clone)]
pub(crate) struct SivCore<C> {
    /// S2V's CMAC key schedule.
    mac: C,
    /// CTR's key schedule.
    ctr: C,
    /// CMAC subkey for a complete last block.
    k1: Block,
    /// CMAC subkey for a padded last block.
    k2: Block,
    /// CMAC(K, 0^128): where S2V starts.
    d0: Block,
}

impl<C> Drop for SivCore<C> {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
        self.d0.zeroize();
        // `mac` and `ctr` wipe their round keys in their own Drop.
    }
}

impl<C: ZeroizeOnDrop> ZeroizeOnDrop for SivCore<C> {}

impl<C: Aes> SivCore<C> {
    /// The schedules are large and every move is a copy, so the state is
    /// built in one value and completed in place.
    #[inline]
    fn new(mac_key: &Key<C>, ctr_key: &Key<C>) -> Self {
        let mut core = Self {
            mac: C::new(mac_key),
            ctr: C::new(ctr_key),
            k1: [0; TAG_LEN],
            k2: [0; TAG_LEN],
            d0: [0; TAG_LEN],
        };
        let mut l = [0u8; TAG_LEN];
        encrypt(&core.mac, &mut l);
        core.k1 = dbl(&l);
        core.k2 = dbl(&core.k1);
        l.zeroize();
        core.d0 = core.cmac(&[0; TAG_LEN], None);
        core
    }

    fn seal(&self, headers: &[&[u8]], buf: &mut [u8]) -> Block {
        let v = self.s2v(headers, buf);
        self.ctr(&v, buf);
        v
    }

    fn open(&self, headers: &[&[u8]], tag: &Block, buf: &mut [u8]) -> Result<(), TagMismatch> {
        self.ctr(tag, buf);
        let v = self.s2v(headers, buf);
        if bool::from(v.ct_eq(tag)) {
            Ok(())
        } else {
            self.ctr(tag, buf);
            Err(TagMismatch)
        }
    }

    /// S2V (RFC 5297 section 2.4) over `headers` followed by `plaintext`.
    fn s2v(&self, headers: &[&[u8]], plaintext: &[u8]) -> Block {
        let mut d = self.d0;
        for h in headers {
            d = dbl(&d);
            xor_into(&mut d, &self.cmac(h, None));
        }
        if plaintext.len() >= TAG_LEN {
            // T = plaintext xorend D: D is folded into the last 16 bytes as CMAC reads them.
            self.cmac(plaintext, Some(&d))
        } else {
            let mut t = dbl(&d);
            let mut padded = [0u8; TAG_LEN];
            padded[..plaintext.len()].copy_from_slice(plaintext);
            padded[plaintext.len()] = 0x80;
            xor_into(&mut t, &padded);
            padded.zeroize();
            self.cmac(&t, None)
        }
    }

    /// CMAC (RFC 4493) of `msg`, with `xorend` (if given) XORed into the last 16
    /// bytes of `msg` on the fly; `msg` must then be at least 16 bytes long.
    fn cmac(&self, msg: &[u8], xorend: Option<&Block>) -> Block {
        let n = msg.len();
        let blocks = n.div_ceil(TAG_LEN).max(1);
        // Where the bytes that `xorend` covers begin.
        let tail = n.saturating_sub(TAG_LEN);
        let mut x = [0u8; TAG_LEN];
        for j in 0..blocks {
            let start = j * TAG_LEN;
            let end = (start + TAG_LEN).min(n);
            let mut b = [0u8; TAG_LEN];
            b[..end - start].copy_from_slice(&msg[start..end]);
            if let Some(d) = xorend {
                for i in start.max(tail)..end {
                    b[i - start] ^= d[i - tail];
                }
            }
            if j + 1 == blocks {
                if end - start == TAG_LEN {
                    xor_into(&mut b, &self.k1);
                } else {
                    b[end - start] = 0x80;
                    xor_into(&mut b, &self.k2);
                }
            }
            xor_into(&mut x, &b);
            encrypt(&self.mac, &mut x);
        }
        x
    }

    /// AES-CTR (RFC 5297 section 2.5) from `iv` with bits 63 and 31 cleared.
    fn ctr(&self, iv: &Block, buf: &mut [u8]) {
        let mut q = *iv;
        q[8] &= 0x7f;
        q[12] &= 0x7f;
        let mut counter = u128::from_be_bytes(q);
        let mut ks = [GenericArray::<u8, U16>::default(); CTR_BATCH];
        for chunk in buf.chunks_mut(TAG_LEN * CTR_BATCH) {
            let n = chunk.len().div_ceil(TAG_LEN);
            for b in &mut ks[..n] {
                b.copy_from_slice(&counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            self.ctr.encrypt_blocks(&mut ks[..n]);
            for (c, k) in chunk.chunks_mut(TAG_LEN).zip(&ks) {
                for (x, y) in c.iter_mut().zip(k) {
                    *x ^= y;
                }
            }
        }
        for b in &mut ks {
            b.as_mut_slice().zeroize();
        }
    }
}

fn encrypt<C: Aes>(cipher: &C, block: &mut Block) {
    cipher.encrypt_block(GenericArray::from_mut_slice(block));
}

fn xor_into(a: &mut Block, b: &Block) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Doubling in GF(2^128) (RFC 5297 section 2.3).
fn dbl(b: &Block) -> Block {
    let v = u128::from_be_bytes(*b);
    // Branch-free: the reduction constant is applied when the top bit was set.
    let carry = (v >> 127) as u8;
    let mut out = (v << 1).to_be_bytes();
    out[TAG_LEN - 1] ^= 0x87 & carry.wrapping_neg();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aead::AeadAlgorithm;
    use aes_siv::aead::generic_array::GenericArray as SivArray;
    use aes_siv::siv::{Aes128Siv, Aes256Siv};
    use rand::{Rng, RngCore, SeedableRng};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn prepared(key: &[u8]) -> SivKey {
        match key.len() {
            32 => SivKey::aes128(key.try_into().unwrap()),
            _ => SivKey::aes256(key.try_into().unwrap()),
        }
    }

    /// tag || ciphertext, the RFC's output layout.
    fn seal_vec(key: &SivKey, headers: &[&[u8]], pt: &[u8]) -> Vec<u8> {
        let mut buf = pt.to_vec();
        let tag = key.seal(headers, &mut buf);
        [&tag[..], &buf].concat()
    }

    /// RFC 5297 appendix A.1 (deterministic authenticated encryption), with
    /// the S2V result the appendix lists.
    #[test]
    fn rfc5297_a1() {
        let key = prepared(&h(
            "fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff",
        ));
        let ad = h("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let headers: [&[u8]; 1] = [&ad];
        let pt = h("11223344 55667788 99aabbcc ddee");
        let expected = h("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c");
        assert_eq!(
            key.s2v(&headers, &pt).to_vec(),
            h("85632d07 c6e8f37f 950acd32 0a2ecc93")
        );
        let sealed = seal_vec(&key, &headers, &pt);
        assert_eq!(sealed, expected);
        let mut buf = sealed[TAG_LEN..].to_vec();
        key.open(&headers, sealed[..TAG_LEN].try_into().unwrap(), &mut buf)
            .unwrap();
        assert_eq!(buf, pt);
    }

    /// RFC 5297 appendix A.2 (nonce-based): two AD components then the nonce,
    /// a plaintext longer than one block (the xorend branch of S2V).
    #[test]
    fn rfc5297_a2() {
        let key = prepared(&h(
            "7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f",
        ));
        let ad1 = h("00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988 77665544 33221100");
        let ad2 = h("10203040 50607080 90a0");
        let nonce = h("09f91102 9d74e35b d84156c5 635688c0");
        let pt = h("74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970 74207573 696e6720 5349562d 414553");
        let expected = h("7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17 dba77ceb 094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d");
        let headers: [&[u8]; 3] = [&ad1, &ad2, &nonce];
        assert_eq!(
            key.s2v(&headers, &pt).to_vec(),
            h("7bdb6e3b 432667eb 06f4d14b ff2fbd0f")
        );
        let sealed = seal_vec(&key, &headers, &pt);
        assert_eq!(sealed, expected);
        let mut buf = sealed[TAG_LEN..].to_vec();
        key.open(&headers, sealed[..TAG_LEN].try_into().unwrap(), &mut buf)
            .unwrap();
        assert_eq!(buf, pt);
    }

    /// The CMAC subkeys of RFC 4493 section 4 (AES-128 key 2b7e1516...).
    #[test]
    fn cmac_subkeys_rfc4493() {
        let key = h("2b7e1516 28aed2a6 abf71588 09cf4f3c");
        let core = SivCore::<Aes128Enc>::new(GenericArray::from_slice(&key), &Default::default());
        assert_eq!(core.k1.to_vec(), h("fbeed618 35713366 7c85e08f 7236a8de"));
        assert_eq!(core.k2.to_vec(), h("f7ddac30 6ae266cc f90bc11e e46d513b"));
        // RFC 4493 examples 1 and 2: the empty message and one complete block.
        assert_eq!(
            core.cmac(&[], None).to_vec(),
            h("bb1d6929 e9593728 7fa37d12 9b756746")
        );
        assert_eq!(
            core.cmac(&h("6bc1bee2 2e409f96 e93d7e11 7393172a"), None)
                .to_vec(),
            h("070a16b4 6b4d4144 f79bdd9d d04a287c")
        );
    }

    #[test]
    fn dbl_reduces() {
        let mut top = [0u8; 16];
        top[0] = 0x80;
        let mut expected = [0u8; 16];
        expected[15] = 0x87;
        assert_eq!(dbl(&top), expected);
        let mut low = [0u8; 16];
        low[15] = 0x01;
        expected[15] = 0x02;
        assert_eq!(dbl(&low), expected);
    }

    /// What the `aes-siv` crate produces for S2V over [ad, nonce, plaintext].
    fn reference(key: &[u8], ad: &[u8], nonce: &[u8], pt: &[u8]) -> Vec<u8> {
        let headers: [&[u8]; 2] = [ad, nonce];
        match key.len() {
            32 => Aes128Siv::new(SivArray::from_slice(key))
                .encrypt(headers, pt)
                .unwrap(),
            _ => Aes256Siv::new(SivArray::from_slice(key))
                .encrypt(headers, pt)
                .unwrap(),
        }
    }

    /// Differential test against the `aes-siv` crate: random keys, AD, nonces
    /// and plaintexts of 0..100 bytes (so every CMAC and CTR edge: empty,
    /// partial, exactly one block, several blocks, more than one CTR batch is
    /// covered by the longer cases below), for both key sizes.
    #[test]
    fn matches_aes_siv_crate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5150);
        for alg in AeadAlgorithm::ALL {
            for round in 0..400 {
                let mut key = vec![0u8; alg.key_len()];
                rng.fill_bytes(&mut key);
                let mut field = |max: usize| {
                    let mut v = vec![0u8; rng.gen_range(0..max)];
                    rng.fill_bytes(&mut v);
                    v
                };
                let ad = field(100);
                let nonce = field(100);
                // Mostly short, as in NTS; every tenth round past one CTR batch.
                let pt = if round % 10 == 0 {
                    field(400)
                } else {
                    field(100)
                };
                let ours = prepared(&key);
                let headers: [&[u8]; 2] = [&ad, &nonce];
                let sealed = seal_vec(&ours, &headers, &pt);
                assert_eq!(
                    sealed,
                    reference(&key, &ad, &nonce, &pt),
                    "{alg} round {round}"
                );

                let tag: Block = sealed[..TAG_LEN].try_into().unwrap();
                let mut buf = sealed[TAG_LEN..].to_vec();
                ours.open(&headers, &tag, &mut buf).unwrap();
                assert_eq!(buf, pt);

                // Tampering with any byte of tag, ciphertext, AD or nonce fails,
                // and a failed open leaves the ciphertext as it was.
                let i = rng.gen_range(0..sealed.len() + ad.len() + nonce.len());
                let bit = 1u8 << rng.gen_range(0..8);
                let (mut t, mut c, mut a, mut n) =
                    (tag, sealed[TAG_LEN..].to_vec(), ad.clone(), nonce.clone());
                if i < TAG_LEN {
                    t[i] ^= bit;
                } else if i < sealed.len() {
                    c[i - TAG_LEN] ^= bit;
                } else if i < sealed.len() + ad.len() {
                    a[i - sealed.len()] ^= bit;
                } else {
                    n[i - sealed.len() - ad.len()] ^= bit;
                }
                let tampered = c.clone();
                let headers: [&[u8]; 2] = [&a, &n];
                assert_eq!(ours.open(&headers, &t, &mut c), Err(TagMismatch));
                assert_eq!(c, tampered);
            }
        }
    }

    /// Every byte of a short message, flipped in turn, is caught.
    #[test]
    fn every_byte_is_authenticated() {
        for alg in AeadAlgorithm::ALL {
            let key = prepared(&vec![0x42; alg.key_len()]);
            let (ad, nonce, pt) = ([1u8; 48], [2u8; 16], [3u8; 40]);
            let headers: [&[u8]; 2] = [&ad, &nonce];
            let sealed = seal_vec(&key, &headers, &pt);
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                let tag: Block = bad[..TAG_LEN].try_into().unwrap();
                assert_eq!(
                    key.open(&headers, &tag, &mut bad[TAG_LEN..]),
                    Err(TagMismatch),
                    "{alg} byte {i}"
                );
            }
        }
    }

    /// CTR ignores bits 63 and 31 of the IV, and the counter then counts on as
    /// one 128-bit big-endian integer: from low word 0x7fffffff it carries into
    /// bit 31, which stays set (RFC 5297 section 2.5 clears bits in Q only).
    #[test]
    fn ctr_clears_two_bits_then_counts() {
        let key = [0x11u8; 32];
        let SivKey::Aes128(core) = SivKey::aes128(&key) else {
            unreachable!("a 32-byte key is AES-128")
        };
        let iv = [0xffu8; TAG_LEN];
        let mut cleared = iv;
        cleared[8] = 0x7f;
        cleared[12] = 0x7f;
        let mut a = vec![0u8; 40];
        let mut b = vec![0u8; 40];
        core.ctr(&iv, &mut a);
        core.ctr(&cleared, &mut b);
        assert_eq!(a, b);

        let cipher = Aes128Enc::new_from_slice(&key[16..]).unwrap();
        let mut second = cleared;
        second[12..].copy_from_slice(&[0x80, 0, 0, 0]);
        encrypt(&cipher, &mut second);
        assert_eq!(a[16..32], second);
    }
}
