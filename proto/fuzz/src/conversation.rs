//! `conversation`: whole conversations between a client source and a time
//! server with its KE server ([`nts_proto::source::harness::Sim`]), an hour
//! of simulated polling per input, with the fuzzer's bytes choosing what the
//! network and an on-path attacker do around each exchange.
//!
//! Input: byte 0 picks the source (even: NTS, odd: plain NTP); then two
//! bytes per request, `flags` and `arg`:
//!
//! | flags bit | network event |
//! | --- | --- |
//! | 0 | the request is lost |
//! | 1 | the answer is lost (both 0 and 1: the KE server is down for ten minutes) |
//! | 2 | the answer arrives twice |
//! | 3 | the answer is late by `arg % 40` × 100 ms |
//! | 4 | a forged NAK first |
//! | 5 | a forged kiss first (RATE, DENY, RSTR, NTSN or `arg` repeated, by `arg % 5`) |
//! | 6 | a replay of an earlier answer and garbage first |
//! | 7 | a tampered copy of the answer (byte `arg`) and a forged answer first |
//!
//! Requests past the input's end see a faithful network.
//!
//! Invariants (the harness panics on a violation): no panic; the simulation
//! always progresses; for NTS, no measurement from a datagram the time
//! server did not make for the request in flight, and no attacker's datagram
//! changes the keys, the cookies, the re-key decision or whether the source
//! stops; a plain source (which cannot tell an on-path forgery) measures
//! only datagrams that echo its request.
//! Here also: an NTS source is never stopped, it never holds more than eight
//! cookies, and its measurements are true to a millisecond.

use nts_proto::source::harness::{t, NetOp, Sim};

fn ops(flags: u8, arg: u8) -> Vec<NetOp> {
    let mut v = Vec::new();
    let bit = |i: u8| flags & (1 << i) != 0;
    if bit(0) {
        v.push(NetOp::DropRequest);
    }
    if bit(1) {
        v.push(NetOp::DropAnswer);
    }
    if bit(0) && bit(1) {
        v.push(NetOp::KeOutage);
    }
    if bit(2) {
        v.push(NetOp::Duplicate);
    }
    if bit(3) {
        v.push(NetOp::Delay(arg % 40));
    }
    if bit(4) {
        v.push(NetOp::ForgeNak);
    }
    if bit(5) {
        let code = match arg % 5 {
            0 => *b"RATE",
            1 => *b"DENY",
            2 => *b"RSTR",
            3 => *b"NTSN",
            _ => [arg; 4],
        };
        v.push(NetOp::ForgeKiss(code));
    }
    if bit(6) {
        v.push(NetOp::Replay);
        v.push(NetOp::Garbage);
    }
    if bit(7) {
        v.push(NetOp::Tamper(arg));
        v.push(NetOp::ForgeAnswer);
    }
    v
}

/// Run one conversation (panics on a finding). Returns the measurements made.
pub fn check(data: &[u8]) -> u64 {
    let Some((&kind, rest)) = data.split_first() else {
        return 0;
    };
    let plan: Vec<(u8, u8)> = rest
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or(0)))
        .collect();
    let seed = u64::from(kind) | (rest.len() as u64) << 8;
    let sim = if kind % 2 == 0 {
        Sim::nts(seed)
    } else {
        Sim::plain(seed)
    };
    let mut sim = sim.script(move |n| {
        let i = usize::try_from(n).unwrap_or(usize::MAX).saturating_sub(1);
        plan.get(i).map_or_else(Vec::new, |&(f, a)| ops(f, a))
    });
    sim.run_until(t(3600.0));
    if let Some(n) = sim.source.nts_half() {
        assert_eq!(
            sim.tally.stopped, None,
            "an NTS source stopped: {:?}",
            sim.tally
        );
        assert!(n.cookies() <= 8);
        assert!(sim.tally.worst_error < 1e-3, "{:?}", sim.tally);
    }
    sim.tally.measurements
}
