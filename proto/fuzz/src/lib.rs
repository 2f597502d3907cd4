//! The bodies of the nts-proto fuzz targets, plus what they share: a fixed key
//! ring, fixed session keys, the chunk plan that splits an NTS-KE stream, and
//! the builders of the seed corpora.
//!
//! Each `fuzz_targets/*.rs` binary is a one-line call into this library, so the
//! same checks also run as plain unit tests over the committed seeds
//! (`cargo test` in this directory) and can replay a crash without libFuzzer.
//! Every `check_*` function panics if, and only if, it finds a bug.

use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
use std::sync::OnceLock;

pub mod aead_siv;
pub mod conversation;
pub mod cookie_open;
pub mod drift_record;
pub mod ke_record;
pub mod ke_request;
pub mod ke_response;
pub mod leap_list;
pub mod ntp_client;
pub mod ntp_packet;
pub mod ntp_server;
pub mod nts_roles;
pub mod nts_source;
pub mod root_secret;
pub mod saved_association;
pub mod seeds;

/// The Unix time at which every target runs (the ring is derived for it).
pub const NOW: u64 = 1_700_000_000;
const ROOT: [u8; 32] = [0x42; 32];
const OTHER_ROOT: [u8; 32] = [0x43; 32];

fn schedule() -> KeySchedule {
    KeySchedule::new(3600, 2).expect("non-zero period")
}

/// The time server's key ring: derived once, shared by every iteration.
pub fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let root = RootSecret::from_bytes(&ROOT).expect("32 bytes");
        KeyRing::derive(&root, &schedule(), NOW)
    })
}

/// A ring with the same schedule (so the same key ids) but another root secret:
/// a cookie from [`ring`] must never open with it.
pub fn other_ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let root = RootSecret::from_bytes(&OTHER_ROOT).expect("32 bytes");
        KeyRing::derive(&root, &schedule(), NOW)
    })
}

/// The fixed C2S key the NTP seeds' cookies carry.
pub fn c2s_key(alg: AeadAlgorithm) -> AeadKey {
    AeadKey::new(alg, &[0xc2; 64][..alg.key_len()]).expect("right length")
}

/// The fixed S2C key: the client view of `ntp_packet` opens server authenticators with it.
pub fn s2c_key(alg: AeadAlgorithm) -> AeadKey {
    AeadKey::new(alg, &[0x5c; 64][..alg.key_len()]).expect("right length")
}

/// A deterministic stand-in for a random source: fills buffers with a running
/// byte counter, so every run (and every seed) is reproducible.
#[derive(Debug, Clone)]
pub struct Counter(pub u8);

impl Counter {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

/// Run the named target's checks on one input (panics on a finding).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "ntp_packet" => {
            ntp_packet::check(data);
        }
        "ke_record" => {
            ke_record::check(data);
        }
        "ke_request" => {
            let _ = ke_request::check(data);
        }
        "ke_response" => {
            let _ = ke_response::check(data);
        }
        "cookie_open" => cookie_open::check(data),
        "aead_siv" => {
            aead_siv::check(data);
        }
        "ntp_server" => {
            ntp_server::check(data);
        }
        "ntp_client" => {
            ntp_client::check(data);
        }
        "nts_source" => {
            nts_source::check(data);
        }
        "leap_list" => {
            leap_list::check(data);
        }
        "drift_record" => {
            drift_record::check(data);
        }
        "saved_association" => {
            saved_association::check(data);
        }
        "root_secret" => {
            root_secret::check(data);
        }
        "nts_roles" => {
            nts_roles::check(data);
        }
        "conversation" => {
            conversation::check(data);
        }
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Most pieces an input is cut into; past that the rest goes in one piece.
const MAX_CHUNKS: usize = 4096;

/// How a KE target reads its input:
///
/// ```text
/// byte 0: selector (high 4 bits) | number of chunk sizes n (low 4 bits)
/// bytes 1..=n: chunk sizes, used in turn (0 feeds an empty piece)
/// rest: the stream, fed to the decoder in pieces of those sizes
/// ```
///
/// With n = 0 the stream is fed in one piece. An empty input is an empty stream.
#[derive(Debug, Clone, Copy)]
pub struct ChunkPlan<'a> {
    pub selector: u8,
    sizes: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> ChunkPlan<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let Some((&first, rest)) = data.split_first() else {
            return Self {
                selector: 0,
                sizes: &[],
                payload: &[],
            };
        };
        let n = usize::from(first & 0x0f).min(rest.len());
        let (sizes, payload) = rest.split_at(n);
        Self {
            selector: first >> 4,
            sizes,
            payload,
        }
    }

    /// The input that [`ChunkPlan::parse`] reads back as this plan (for seeds).
    pub fn encode(selector: u8, sizes: &[u8], payload: &[u8]) -> Vec<u8> {
        assert!(selector < 16 && sizes.len() < 16);
        let mut out = vec![(selector << 4) | sizes.len() as u8];
        out.extend_from_slice(sizes);
        out.extend_from_slice(payload);
        out
    }

    pub fn chunks(&self) -> Chunks<'a> {
        Chunks {
            sizes: self.sizes,
            rest: self.payload,
            emitted: 0,
            done: false,
        }
    }
}

/// The pieces of a [`ChunkPlan`]'s stream, in order; together they are the whole payload.
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    sizes: &'a [u8],
    rest: &'a [u8],
    emitted: usize,
    done: bool,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        if self.sizes.is_empty() || self.emitted >= MAX_CHUNKS {
            self.done = true;
            return Some(std::mem::take(&mut self.rest));
        }
        if self.rest.is_empty() {
            self.done = true;
            return None;
        }
        let size = usize::from(self.sizes[self.emitted % self.sizes.len()]);
        self.emitted += 1;
        let (piece, rest) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = rest;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plan_covers_the_payload() {
        let data = ChunkPlan::encode(3, &[2, 0, 5], b"abcdefghijklmnop");
        let plan = ChunkPlan::parse(&data);
        assert_eq!(plan.selector, 3);
        let pieces: Vec<&[u8]> = plan.chunks().collect();
        assert_eq!(pieces[0], b"ab");
        assert_eq!(pieces[1], b"");
        assert_eq!(pieces[2], b"cdefg");
        assert_eq!(pieces.concat(), b"abcdefghijklmnop");

        // All-zero sizes cannot loop forever.
        let data = ChunkPlan::encode(0, &[0], b"xyz");
        let pieces: Vec<&[u8]> = ChunkPlan::parse(&data).chunks().collect();
        assert_eq!(pieces.len(), MAX_CHUNKS + 1);
        assert_eq!(pieces.concat(), b"xyz");

        // Short inputs.
        assert_eq!(ChunkPlan::parse(&[]).chunks().collect::<Vec<_>>(), [b""]);
        let plan = ChunkPlan::parse(&[0x0f, 1]);
        assert_eq!(plan.payload, b"");
        assert_eq!(plan.chunks().count(), 0);
    }

    #[test]
    fn rings() {
        assert_eq!(ring().keys().len(), 4);
        let ids: Vec<_> = ring().keys().iter().map(|k| k.id).collect();
        let other: Vec<_> = other_ring().keys().iter().map(|k| k.id).collect();
        assert_eq!(ids, other);
        assert_ne!(
            ring().keys()[0].key_bytes(),
            other_ring().keys()[0].key_bytes()
        );
    }
}
