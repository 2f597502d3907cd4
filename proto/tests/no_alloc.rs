//! The server's packet path allocates nothing: `respond` answers NTS, NAK,
//! plain and RATE requests (and drops bad ones) from byte buffers the caller
//! owns. A counting global allocator makes an allocation fail this test, so
//! a change that adds one to the hot path fails the build, not a review.

use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::cookie::{self, CookieContents};
use nts_proto::interleaved::{ClientAddress, TransmitTable};
use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
use nts_proto::ntp_client::build_request;
use nts_proto::ntp_packet::{LeapIndicator, NtpShort, NtpTimestamp};
use nts_proto::ntp_server::{
    over_rate_reason_of, parse_request, respond, respond_to, RequestContext, Response, ServerClock,
    ServerPolicy,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the allocations of the thread that armed it.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a thread-local
// Cell, touched without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    COUNT.with(Cell::get)
}

fn fill(b: &mut [u8]) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
}

#[test]
fn respond_allocates_nothing() {
    let root = RootSecret::from_bytes(&[9; 32]).unwrap();
    let now = 1_800_000_000;
    let ring = KeyRing::derive(&root, &KeySchedule::new(3600, 2).unwrap(), now);
    let clock = ServerClock {
        leap: LeapIndicator::NoWarning,
        stratum: 1,
        precision: -20,
        root_delay: NtpShort(0),
        root_dispersion: NtpShort(10),
        reference_id: *b"LOCL",
        reference_timestamp: NtpTimestamp(5),
    };
    let policy = ServerPolicy::default();
    let table = TransmitTable::new(64);
    let client = ClientAddress::from(std::net::IpAddr::from([127, 0, 0, 1]));
    for alg in AeadAlgorithm::ALL {
        let c2s = AeadKey::new(alg, &vec![0x11; alg.key_len()]).unwrap();
        let s2c = AeadKey::new(alg, &vec![0x22; alg.key_len()]).unwrap();
        let good = cookie::seal(
            ring.current(now).unwrap(),
            &CookieContents {
                c2s: c2s.clone(),
                s2c,
            },
            &[3; 16],
        );
        let mut bad = good.clone();
        bad[30] ^= 1;
        // (request, what a server without rate limiting must answer)
        let mut requests: Vec<(Vec<u8>, &str)> = Vec::new();
        for (cookie, placeholders, want) in [(&good, 0, "nts"), (&good, 7, "nts"), (&bad, 1, "nak")]
        {
            let mut req = Vec::new();
            build_request(&mut req, Some((cookie, placeholders, &c2s)), &mut fill);
            requests.push((req, want));
        }
        let mut plain = Vec::new();
        build_request(&mut plain, None, &mut fill);
        requests.push((plain, "plain"));
        requests.push((vec![0x23; 47], "drop"));
        let mut out = vec![0u8; 2048];
        for rate_kiss in [false, true] {
            for (req, want) in &requests {
                let ctx = RequestContext {
                    receive_timestamp: NtpTimestamp(100),
                    unix_now: now,
                    clock: &clock,
                    ring: &ring,
                    policy: &policy,
                    rate_kiss,
                    previous_transmit: None,
                };
                let mut result = None;
                let n = allocations(|| {
                    result = Some(respond(req, &ctx, &mut out, &mut fill, &mut || {
                        NtpTimestamp(200)
                    }));
                });
                let result = result.expect("respond ran");
                assert_eq!(
                    n, 0,
                    "{alg:?} {want} rate_kiss={rate_kiss}: {result:?} allocated {n} times"
                );
                // The worker's path: one parse, read by the rate-limit label,
                // the interleaved table and the answer.
                let mut again = None;
                let n = allocations(|| {
                    let parsed = parse_request(req, &policy);
                    std::hint::black_box(over_rate_reason_of(&parsed));
                    again = Some(parsed.and_then(|p| {
                        std::hint::black_box(table.decide(&p.header, client));
                        respond_to(&p, &ctx, &mut out, &mut fill, &mut || NtpTimestamp(200))
                    }));
                });
                assert_eq!(
                    n, 0,
                    "{alg:?} {want}: parse + respond_to allocated {n} times"
                );
                assert_eq!(
                    again,
                    Some(result),
                    "{alg:?} {want}: one parse, same answer"
                );
                if !rate_kiss {
                    let got = match result {
                        Ok(Response::Nts { .. }) => "nts",
                        Ok(Response::Nak { .. }) => "nak",
                        Ok(Response::Plain(_)) => "plain",
                        Ok(_) => "other",
                        Err(_) => "drop",
                    };
                    assert_eq!(got, *want, "{alg:?}: {result:?}");
                }
            }
        }
    }
    // The counter itself works: a Vec allocates.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 64]))) > 0);
}
