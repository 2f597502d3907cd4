//! `nts-respond-bench`: CPU cost of answering one request, no sockets.
//!
//! Builds realistic requests with the client's own request builder (as
//! `nts-loadgen` does) around a cookie sealed under a key ring's current key,
//! then calls `nts_proto::ntp_server::respond` on them in a loop on one thread
//! and prints nanoseconds per request (best and median of 20 rounds); then the
//! AEAD primitives on their own.
//! This isolates the protocol and crypto work from the kernel's UDP path that
//! `nts-bench` measures. Random bytes come from a cheap counter so the RNG
//! does not dominate; the real server draws its nonces from the OS RNG.
//!
//! Usage: nts-respond-bench [--seconds N]

use clap::Parser;
use nts_proto::aead::{AeadAlgorithm, AeadKey, TAG_LEN};
use nts_proto::cookie::{self, CookieContents};
use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
use nts_proto::ntp_client::build_request;
use nts_proto::ntp_packet::{LeapIndicator, NtpShort, NtpTimestamp};
use nts_proto::ntp_server::{respond, RequestContext, Response, ServerClock, ServerPolicy};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Seconds spent on each measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// Deterministic filler for nonces and unique ids: fast, and never all-zero.
struct Counter(u64);

impl Counter {
    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1);
            let v = self.0.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Nanoseconds per call of `f`: the best and the median of 20 rounds that
/// share `seconds`. The machine may be shared; preemption only ever adds
/// time, so the best round is the least disturbed estimate.
struct Timing {
    best: f64,
    median: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:7.0} ns best {:7.0} ns median", self.best, self.median)
    }
}

const ROUNDS: usize = 20;

fn time_per_call(seconds: f64, mut f: impl FnMut()) -> Timing {
    // Warm up caches and branch predictors before timing.
    for _ in 0..1000 {
        f();
    }
    let budget = Duration::from_secs_f64(seconds / ROUNDS as f64);
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let mut calls: u64 = 0;
            loop {
                for _ in 0..64 {
                    f();
                }
                calls += 64;
                let elapsed = start.elapsed();
                if elapsed >= budget {
                    return elapsed.as_nanos() as f64 / calls as f64;
                }
            }
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    Timing {
        best: rounds[0],
        median: rounds[ROUNDS / 2],
    }
}

fn main() {
    let cli = Cli::parse();
    let now: u64 = 1_700_000_000;
    let root = RootSecret::from_bytes(&[0x5a; 32]).expect("32-byte root secret");
    let schedule = KeySchedule::new(3600, 2).expect("valid schedule");
    let ring = KeyRing::derive(&root, &schedule, now);
    let cookie_key = ring.current(now).expect("a current key").clone();
    let clock = ServerClock {
        leap: LeapIndicator::NoWarning,
        stratum: 2,
        precision: -20,
        root_delay: NtpShort(0x10),
        root_dispersion: NtpShort(0x20),
        reference_id: [127, 0, 0, 1],
        reference_timestamp: NtpTimestamp(0xe000_0000_0000_0000),
    };
    let policy = ServerPolicy::default();
    let ctx = RequestContext {
        receive_timestamp: NtpTimestamp(0xe100_0000_0000_0000),
        unix_now: now,
        clock: &clock,
        ring: &ring,
        policy: &policy,
        rate_kiss: false,
        // Basic mode, as for a client that does not ask for interleaved answers.
        previous_transmit: None,
    };
    let mut rng = Counter(1);

    // The client keys as NTS-KE hands them out: AES-SIV-CMAC-256, the algorithm clients negotiate most.
    let alg = AeadAlgorithm::AesSivCmac256;
    let mut k = vec![0u8; alg.key_len()];
    rng.fill(&mut k);
    let c2s = AeadKey::new(alg, &k).expect("key length");
    rng.fill(&mut k);
    let s2c = AeadKey::new(alg, &k).expect("key length");
    let contents = CookieContents { c2s, s2c };
    let cookie = cookie::seal(&cookie_key, &contents, &[0x33; 16]);

    println!("nts-respond-bench: {} s per line, one thread", cli.seconds);
    let cases: [(&str, Option<usize>, usize); 3] = [
        ("NTS, 1 cookie returned", Some(0), 1),
        ("NTS, 1 placeholder (2 cookies)", Some(1), 2),
        ("plain NTP", None, 0),
    ];
    for (name, placeholders, want_cookies) in cases {
        let mut req = Vec::new();
        let nts = placeholders.map(|p| (cookie.as_slice(), p, &contents.c2s));
        build_request(&mut req, nts, &mut |b| rng.fill(b));
        let mut out = vec![0u8; req.len()];
        // Check once that the request is answered the way the case claims.
        let first = respond(&req, &ctx, &mut out, &mut |b| rng.fill(b), &mut || {
            NtpTimestamp(1)
        });
        match (first, placeholders) {
            (Ok(Response::Nts { cookies, .. }), Some(_)) if cookies == want_cookies => {}
            (Ok(Response::Plain(_)), None) => {}
            (other, _) => panic!("{name}: unexpected answer {other:?}"),
        }
        let ns = time_per_call(cli.seconds, || {
            let r = respond(
                black_box(&req),
                &ctx,
                &mut out,
                &mut |b| rng.fill(b),
                &mut || NtpTimestamp(1),
            );
            black_box(&r);
        });
        println!("respond  {name:<32} {ns} per request ({} bytes)", req.len());
    }

    for alg in AeadAlgorithm::ALL {
        let mut k = vec![0u8; alg.key_len()];
        rng.fill(&mut k);
        let key = AeadKey::new(alg, &k).expect("key length");
        let ad = [0x48u8; 48];
        let nonce = [0x4eu8; 16];
        let ns = time_per_call(cli.seconds / 2.0, || {
            black_box(AeadKey::new(alg, black_box(&k)).expect("key length"));
        });
        println!("AeadKey::new {alg:<20}           {ns}");
        for pt_len in [0usize, 100] {
            let mut buf = vec![0u8; pt_len];
            let ns = time_per_call(cli.seconds / 2.0, || {
                black_box(key.seal_detached(&nonce, black_box(&ad), &mut buf));
            });
            println!("seal {alg:<20} ad 48 pt {pt_len:>3} {ns}");
            let plain = vec![0x50u8; pt_len];
            let sealed = key.seal(&nonce, &ad, &plain);
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&sealed[..TAG_LEN]);
            let ns = time_per_call(cli.seconds / 2.0, || {
                buf.copy_from_slice(&sealed[TAG_LEN..]);
                let r = key.open_detached(&nonce, black_box(&ad), &tag, &mut buf);
                assert!(r.is_ok());
            });
            println!("open {alg:<20} ad 48 pt {pt_len:>3} {ns}");
        }
    }
}
