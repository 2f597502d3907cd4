//! Cookie master keys, one per epoch, derived from a root secret.
//!
//! Time is cut into epochs of `rotation_period` seconds aligned to the Unix
//! epoch. The key of the epoch starting at `t` is HKDF-SHA256(root, t) and its
//! key id is `t` as a 32-bit number. Any process that holds the same root secret
//! and schedule derives the same keys, so ke-server replicas agree without
//! talking to each other and a restart loses nothing. A key issues cookies
//! during its own epoch and is accepted for `past_epochs` epochs after that;
//! the next epoch's key is in the ring one epoch before it is used, so it can
//! reach every time server before any cookie names it.

use crate::aead::{AeadAlgorithm, AeadKey};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Algorithm that seals cookies (independent of what clients negotiate).
pub const COOKIE_KEY_ALGORITHM: AeadAlgorithm = AeadAlgorithm::AesSivCmac256;
/// Most past epochs a ring holds (bounds memory and derivation work).
pub const MAX_PAST_EPOCHS: u64 = 1000;
/// Length of the root secret.
pub const ROOT_SECRET_LEN: usize = 32;
pub(crate) const HKDF_SALT: &[u8] = b"nts-cookie-key/v1";

/// Identifies the key a cookie was sealed with; travels in clear at the start of the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The secret every ke-server replica shares. Never sent to time servers.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RootSecret([u8; ROOT_SECRET_LEN]);

impl std::fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootSecret(<redacted>)")
    }
}

/// Problems with key material or schedules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("root secret must be {ROOT_SECRET_LEN} bytes, got {0}")]
    RootLength(usize),
    #[error("rotation period must be at least 1 second")]
    ZeroPeriod,
    #[error("cookie key must be 32 bytes, got {0}")]
    KeyLength(usize),
}

/// What to do about a root secret file that is not one; the same advice
/// from the KE server and the time server, which read the same file.
const ROOT_FILE_FIX: &str = "copy the file from another KE replica (every replica and time server needs the same secret), or delete it and start a KE server with cookie_keys.create_if_missing = true to create a new one (the cookies clients hold then stop working)";

/// Why the text of a root secret file is not a root secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RootFileError {
    #[error(
        "is empty ({0} bytes), as a creation killed before it wrote leaves it: {ROOT_FILE_FIX}"
    )]
    Empty(usize),
    #[error("expected 64 hexadecimal digits, found {0} characters that are not: {ROOT_FILE_FIX}")]
    NotHex(usize),
    #[error("expected 64 hexadecimal digits, found {0}: {ROOT_FILE_FIX}")]
    Length(usize),
}

impl RootSecret {
    /// Parse a root secret file: 64 hexadecimal digits, blank space around them allowed.
    pub fn from_file_text(text: &str) -> Result<Self, RootFileError> {
        let digits = text.trim();
        if digits.is_empty() {
            return Err(RootFileError::Empty(text.len()));
        }
        let bytes = hex::decode(digits).map_err(|_| RootFileError::NotHex(digits.len()))?;
        Self::from_bytes(&bytes).map_err(|_| RootFileError::Length(digits.len()))
    }

    /// The file form [`from_file_text`](Self::from_file_text) reads.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.0))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; ROOT_SECRET_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::RootLength(bytes.len()))?;
        Ok(Self(arr))
    }

    /// A fresh secret from a cryptographic RNG.
    pub fn generate(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Self {
        let mut b = [0u8; ROOT_SECRET_LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; ROOT_SECRET_LEN] {
        &self.0
    }

    /// The key of the epoch starting at `epoch_start` (Unix seconds).
    pub fn derive_key(&self, epoch_start: u64, schedule: &KeySchedule) -> CookieKey {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF's 255*32 limit, so expand cannot fail.
        let _ = hk.expand(&epoch_start.to_be_bytes(), &mut okm);
        let key = CookieKey::new(
            KeyId(epoch_start as u32),
            &okm,
            epoch_start,
            schedule.accept_until(epoch_start),
        );
        okm.zeroize();
        // Length is fixed at 32, matching COOKIE_KEY_ALGORITHM.
        key.unwrap_or_else(|_| unreachable!("32-byte key"))
    }
}

/// How often keys rotate and how long old ones are honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchedule {
    /// Length of an epoch in seconds.
    pub rotation_period: u64,
    /// Epochs after its own for which a key still opens cookies.
    pub past_epochs: u32,
}

impl Default for KeySchedule {
    /// One-day epochs, keys honoured for a week after their day: cookies live 7-8 days.
    fn default() -> Self {
        Self {
            rotation_period: 86_400,
            past_epochs: 7,
        }
    }
}

impl KeySchedule {
    pub fn new(rotation_period: u64, past_epochs: u32) -> Result<Self, KeyError> {
        if rotation_period == 0 {
            return Err(KeyError::ZeroPeriod);
        }
        Ok(Self {
            rotation_period,
            past_epochs,
        })
    }

    /// Start of the epoch containing `now`.
    pub fn epoch_start(&self, now: u64) -> u64 {
        let p = self.rotation_period.max(1);
        now - now % p
    }

    /// The last instant (exclusive) at which a key of the epoch starting at `start` opens cookies.
    pub fn accept_until(&self, start: u64) -> u64 {
        start.saturating_add(
            self.rotation_period
                .saturating_mul(1 + self.past_epochs as u64),
        )
    }

    /// Longest time a cookie can remain valid after it was issued.
    pub fn cookie_lifetime(&self) -> u64 {
        self.rotation_period
            .saturating_mul(1 + self.past_epochs as u64)
    }
}

/// One epoch's key and its validity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CookieKey {
    pub id: KeyId,
    key: AeadKey,
    /// Unix time from which cookies are issued with this key.
    pub not_before: u64,
    /// Unix time from which cookies sealed with this key are refused.
    pub not_after: u64,
}

impl CookieKey {
    pub fn new(id: KeyId, key: &[u8], not_before: u64, not_after: u64) -> Result<Self, KeyError> {
        let key =
            AeadKey::new(COOKIE_KEY_ALGORITHM, key).map_err(|_| KeyError::KeyLength(key.len()))?;
        Ok(Self {
            id,
            key,
            not_before,
            not_after,
        })
    }

    pub fn aead_key(&self) -> &AeadKey {
        &self.key
    }

    /// Raw key bytes, for distribution to time servers over mutual TLS only.
    pub fn key_bytes(&self) -> &[u8] {
        self.key.as_bytes()
    }

    /// Same key id, different key material (compared in constant time): two
    /// key masters with different root secrets.
    pub fn contradicts(&self, other: &CookieKey) -> bool {
        use subtle::ConstantTimeEq;
        self.id == other.id && !bool::from(self.key_bytes().ct_eq(other.key_bytes()))
    }
}

/// The first key id of `incoming` that contradicts a key of `held`, if any.
pub fn find_conflict(held: &[CookieKey], incoming: &[CookieKey]) -> Option<KeyId> {
    incoming
        .iter()
        .find(|k| held.iter().any(|h| h.contradicts(k)))
        .map(|k| k.id)
}

/// Why a key id does not lead to a usable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyLookupError {
    #[error("unknown cookie key id {0}")]
    Unknown(KeyId),
    #[error("cookie key {0} has expired")]
    Expired(KeyId),
}

/// The keys a process holds right now: a window of past keys, the current one and the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    /// Sorted by `not_before`, oldest first.
    keys: Vec<CookieKey>,
}

impl KeyRing {
    /// Build a ring from keys received from elsewhere (the key master).
    pub fn from_keys(mut keys: Vec<CookieKey>) -> Self {
        keys.sort_by_key(|k| k.not_before);
        keys.dedup_by_key(|k| k.id);
        Self { keys }
    }

    /// Derive every key that is usable at `now`: past epochs still accepted, the current epoch and the next.
    ///
    /// At most [`MAX_PAST_EPOCHS`] past keys are derived, whatever the schedule says.
    pub fn derive(root: &RootSecret, schedule: &KeySchedule, now: u64) -> Self {
        let current = schedule.epoch_start(now);
        let p = schedule.rotation_period.max(1);
        let past = (schedule.past_epochs as u64).min(MAX_PAST_EPOCHS);
        let mut keys = Vec::with_capacity(past as usize + 2);
        for back in (1..=past).rev() {
            if let Some(start) = back.checked_mul(p).and_then(|d| current.checked_sub(d)) {
                keys.push(root.derive_key(start, schedule));
            }
        }
        keys.push(root.derive_key(current, schedule));
        if let Some(next) = current.checked_add(p) {
            keys.push(root.derive_key(next, schedule));
        }
        Self { keys }
    }

    pub fn keys(&self) -> &[CookieKey] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key to issue new cookies with at `now`: the newest one whose epoch has begun and not expired.
    pub fn current(&self, now: u64) -> Option<&CookieKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.not_before <= now && now < k.not_after)
    }

    /// The key named by a cookie, if it is held and not expired at `now`. Never allocates.
    pub fn lookup(&self, id: KeyId, now: u64) -> Result<&CookieKey, KeyLookupError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(KeyLookupError::Unknown(id))?;
        if now >= key.not_after {
            return Err(KeyLookupError::Expired(id));
        }
        Ok(key)
    }

    /// A copy without the keys that have expired at `now`.
    pub fn without_expired(&self, now: u64) -> Self {
        Self {
            keys: self
                .keys
                .iter()
                .filter(|k| now < k.not_after)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicting_keys_are_found() {
        let schedule = KeySchedule::new(10, 1).unwrap();
        let a = KeyRing::derive(&RootSecret::from_bytes(&[1; 32]).unwrap(), &schedule, 100);
        let a2 = KeyRing::derive(&RootSecret::from_bytes(&[1; 32]).unwrap(), &schedule, 105);
        let b = KeyRing::derive(&RootSecret::from_bytes(&[2; 32]).unwrap(), &schedule, 100);
        // Same root: no conflict, also with a shifted window.
        assert_eq!(find_conflict(a.keys(), a2.keys()), None);
        assert_eq!(find_conflict(a.keys(), &[]), None);
        // Another root: the same key ids hold other keys.
        let id = find_conflict(a.keys(), b.keys()).expect("conflict");
        assert!(a.keys().iter().any(|k| k.id == id));
        // Keys of other ids never conflict.
        let later = KeyRing::derive(
            &RootSecret::from_bytes(&[2; 32]).unwrap(),
            &schedule,
            10_000,
        );
        assert_eq!(find_conflict(a.keys(), later.keys()), None);
    }

    fn root() -> RootSecret {
        RootSecret::from_bytes(&[42u8; 32]).unwrap()
    }

    #[test]
    fn derivation_is_deterministic_and_distinct() {
        let s = KeySchedule::new(3600, 2).unwrap();
        let a = root().derive_key(7200, &s);
        let b = root().derive_key(7200, &s);
        let c = root().derive_key(10800, &s);
        assert_eq!(a, b);
        assert_ne!(a.key_bytes(), c.key_bytes());
        assert_eq!(a.id, KeyId(7200));
        let other = RootSecret::from_bytes(&[43u8; 32])
            .unwrap()
            .derive_key(7200, &s);
        assert_ne!(a.key_bytes(), other.key_bytes());
    }

    #[test]
    fn ring_window() {
        let s = KeySchedule::new(100, 3).unwrap();
        let now = 1_000_050;
        let ring = KeyRing::derive(&root(), &s, now);
        let ids: Vec<u32> = ring.keys().iter().map(|k| k.id.0).collect();
        assert_eq!(ids, vec![999_700, 999_800, 999_900, 1_000_000, 1_000_100]);
        assert_eq!(ring.current(now).unwrap().id, KeyId(1_000_000));
        // The next key is present but not current yet.
        assert!(ring.lookup(KeyId(1_000_100), now).is_ok());
        // The oldest accepted key expires at 999_700 + 400.
        assert!(ring.lookup(KeyId(999_700), 1_000_099).is_ok());
        assert_eq!(
            ring.lookup(KeyId(999_700), 1_000_100),
            Err(KeyLookupError::Expired(KeyId(999_700)))
        );
        assert_eq!(
            ring.lookup(KeyId(5), now),
            Err(KeyLookupError::Unknown(KeyId(5)))
        );
        assert_eq!(ring.without_expired(1_000_100).keys().len(), 4);
    }

    #[test]
    fn extreme_schedules_are_bounded() {
        let r = root();
        let ring = KeyRing::derive(
            &r,
            &KeySchedule::new(u64::MAX / 2, u32::MAX).unwrap(),
            u64::MAX - 5,
        );
        assert!(ring.keys().len() <= MAX_PAST_EPOCHS as usize + 2);
        let ring = KeyRing::derive(&r, &KeySchedule::new(1, u32::MAX).unwrap(), 10);
        assert_eq!(ring.keys().len(), 10 + 2);
    }

    #[test]
    fn replicas_agree() {
        let s = KeySchedule::default();
        let a = KeyRing::derive(&root(), &s, 1_700_000_000);
        let b = KeyRing::derive(&root(), &s, 1_700_000_123);
        assert_eq!(a, b);
    }

    #[test]
    fn bad_inputs() {
        assert_eq!(
            RootSecret::from_bytes(&[0; 3]).unwrap_err(),
            KeyError::RootLength(3)
        );
        assert_eq!(KeySchedule::new(0, 1), Err(KeyError::ZeroPeriod));
        assert!(CookieKey::new(KeyId(1), &[0; 31], 0, 1).is_err());
        assert!(!format!("{:?}", root()).contains("42"));
    }

    #[test]
    fn root_file_text() {
        let r = RootSecret::from_bytes(&[0xab; 32]).unwrap();
        let t = r.to_file_text();
        assert_eq!(t, format!("{}\n", "ab".repeat(32)));
        assert_eq!(
            RootSecret::from_file_text(&t).unwrap().as_bytes(),
            r.as_bytes()
        );
        assert_eq!(
            RootSecret::from_file_text("").unwrap_err(),
            RootFileError::Empty(0)
        );
        assert_eq!(
            RootSecret::from_file_text(" \n").unwrap_err(),
            RootFileError::Empty(2)
        );
        assert_eq!(
            RootSecret::from_file_text("xyz\n").unwrap_err(),
            RootFileError::NotHex(3)
        );
        assert_eq!(
            RootSecret::from_file_text("abab").unwrap_err(),
            RootFileError::Length(4)
        );
        let e = RootFileError::Empty(0).to_string();
        assert!(
            e.contains("empty (0 bytes)") && e.contains("delete it"),
            "{e}"
        );
    }

    #[test]
    fn from_keys_sorts() {
        let s = KeySchedule::new(10, 1).unwrap();
        let r = root();
        let ring = KeyRing::from_keys(vec![r.derive_key(20, &s), r.derive_key(10, &s)]);
        assert_eq!(ring.keys()[0].id, KeyId(10));
        assert_eq!(ring.current(25).unwrap().id, KeyId(20));
        assert!(KeyRing::default().current(0).is_none());
    }
}
