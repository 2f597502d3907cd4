//! The server side of the simulation: a time server with a real key ring
//! and clock, the NTS-KE server's record logic, and a deterministic RNG.

use super::action::KeyExchangeResult;
use super::nts::Association;
use crate::aead::{AeadAlgorithm, AeadKey};
use crate::ke_client::{self, ResponseDecoder};
use crate::ke_server::{self, Negotiation, NtpTarget, RequestDecoder, RequestLimits};
use crate::key_ring::{KeyRing, KeySchedule, RootSecret};
use crate::ntp_packet::{LeapIndicator, NtpShort, NtpTimestamp};
use crate::ntp_server::{respond, RequestContext, ServerClock, ServerPolicy};
use crate::time::UnixTime;
use rand_core::{CryptoRng, RngCore};

/// SplitMix64: deterministic, for simulations only (it is no CSPRNG; the
/// `CryptoRng` marker is there because the KE server's cookie code asks for one).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl RngCore for SimRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for SimRng {}

/// Unix time at the simulation's origin.
pub const UNIX0: u64 = 1_800_000_000;

/// A time server (key ring, clock) and an association made for it: what
/// unit tests of the NTS half need, and the server side of [`Sim`].
pub struct World {
    pub root: RootSecret,
    pub schedule: KeySchedule,
    pub ring: KeyRing,
    pub now_unix: u64,
    pub clock: ServerClock,
    pub policy: ServerPolicy,
    pub assoc: Association,
}

impl World {
    pub fn new() -> Self {
        Self::with_schedule(KeySchedule::new(3600, 2).expect("valid schedule"))
    }

    pub fn with_schedule(schedule: KeySchedule) -> Self {
        let root = RootSecret::from_bytes(&[5; 32]).expect("32 bytes");
        let ring = KeyRing::derive(&root, &schedule, UNIX0);
        let alg = AeadAlgorithm::AesSivCmac256;
        Self {
            root,
            schedule,
            ring,
            now_unix: UNIX0,
            clock: ServerClock {
                leap: LeapIndicator::NoWarning,
                stratum: 1,
                precision: -20,
                root_delay: NtpShort(0),
                root_dispersion: NtpShort(10),
                reference_id: *b"LOCL",
                reference_timestamp: NtpTimestamp(5),
            },
            policy: ServerPolicy::default(),
            assoc: Association {
                aead: alg,
                c2s: AeadKey::new(alg, &[0x11; 32]).expect("key"),
                s2c: AeadKey::new(alg, &[0x22; 32]).expect("key"),
                ntp_host: "time.example".into(),
                ntp_port: 123,
                established: UnixTime::from_secs(UNIX0 as i64),
            },
        }
    }

    /// Move the server to Unix time `unix`, rotating its keys as ke-server would.
    pub fn set_unix(&mut self, unix: u64) {
        if self.schedule.epoch_start(unix) != self.schedule.epoch_start(self.now_unix) {
            self.ring = KeyRing::derive(&self.root, &self.schedule, unix);
        }
        self.now_unix = unix;
    }

    /// `n` cookies for the association, sealed with the current key.
    pub fn cookies(&self, n: usize) -> Vec<Vec<u8>> {
        let mut rng = SimRng::new(n as u64);
        ke_server::make_cookies(
            &self.ring,
            self.now_unix,
            &self.assoc.c2s,
            &self.assoc.s2c,
            n,
            &mut rng,
        )
        .expect("current key")
    }

    /// The time server's answer to `req` (received at `rx`, sent at `tx`,
    /// both true time), or `None` when it drops it.
    pub fn serve_at(
        &self,
        req: &[u8],
        rx: NtpTimestamp,
        tx: NtpTimestamp,
        rate_kiss: bool,
    ) -> Option<Vec<u8>> {
        let ctx = RequestContext {
            receive_timestamp: rx,
            unix_now: self.now_unix,
            clock: &self.clock,
            ring: &self.ring,
            policy: &self.policy,
            rate_kiss,
            previous_transmit: None,
        };
        let mut out = vec![0u8; req.len().max(48)];
        let mut rng = SimRng::new(u64::from_le_bytes(req.get(40..48)?.try_into().ok()?));
        let r = respond(req, &ctx, &mut out, &mut |b| rng.fill_bytes(b), &mut || tx).ok()?;
        out.truncate(r.len());
        Some(out)
    }

    /// An answer to `req` with fixed timestamps.
    pub fn serve(&self, req: &[u8]) -> Vec<u8> {
        self.serve_at(req, NtpTimestamp(100), NtpTimestamp(200), false)
            .expect("an answer")
    }

    /// A key exchange through the KE server's record logic: request,
    /// negotiation, cookies and response, decoded by the client's decoder.
    /// Keys stand in for the TLS exporter's.
    pub fn key_exchange(&mut self, seed: u64) -> Result<KeyExchangeResult, String> {
        let mut rng = SimRng::new(seed);
        let request = ke_client::build_request(&AeadAlgorithm::ALL);
        let req = RequestDecoder::new(RequestLimits::default())
            .feed(&request)
            .map_err(|e| e.to_string())?
            .ok_or("incomplete request")?;
        let Negotiation::Ntpv4(alg) = ke_server::negotiate(&req, &AeadAlgorithm::ALL) else {
            return Err("no algorithm".into());
        };
        let mut k = vec![0u8; alg.key_len()];
        rng.fill_bytes(&mut k);
        let c2s = AeadKey::new(alg, &k).map_err(|e| e.to_string())?;
        rng.fill_bytes(&mut k);
        let s2c = AeadKey::new(alg, &k).map_err(|e| e.to_string())?;
        let cookies = ke_server::make_cookies(&self.ring, self.now_unix, &c2s, &s2c, 8, &mut rng)
            .map_err(|e| e.to_string())?;
        let target = NtpTarget {
            server: Some("time.example".into()),
            port: Some(123),
        };
        let wire = ke_server::encode_response(Negotiation::Ntpv4(alg), &cookies, &target);
        let resp = ResponseDecoder::new()
            .feed(&wire)
            .map_err(|e| e.to_string())?
            .ok_or("incomplete response")?;
        let assoc = Association {
            aead: resp.aead,
            c2s,
            s2c,
            ntp_host: resp.server.unwrap_or_default(),
            ntp_port: resp.port.unwrap_or(123),
            established: UnixTime::from_secs(self.now_unix as i64),
        };
        self.assoc = assoc.clone();
        Ok(KeyExchangeResult {
            association: assoc,
            cookies: resp.cookies,
        })
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
