//! Attack scenarios in the harness: an on-path attacker who sees every
//! request and can send anything before the genuine answer. Each asserts
//! what matters: the source keeps its keys, does no key exchange it does not
//! need, keeps measuring, and never measures from a forged packet (the
//! harness itself fails on that, and on any standing an attacker's datagram
//! changes).

use crate::key_ring::KeySchedule;
use crate::source::harness::World;
use crate::source::harness::{t, NetOp, Sim};
use std::time::Instant;

/// Every scenario runs an hour of simulated polling in well under a second.
fn hour(mut sim: Sim) -> Sim {
    let started = Instant::now();
    sim.run_until(t(3600.0));
    assert!(
        started.elapsed().as_secs_f64() < 1.0,
        "took {:?}",
        started.elapsed()
    );
    sim
}

fn assert_unharmed(sim: &Sim) {
    let n = sim.source.nts_half().expect("an NTS source");
    assert_eq!(
        sim.tally.key_exchanges, 1,
        "exactly one key exchange: {:?}",
        sim.tally
    );
    let in_flight = usize::from(sim.source.waiting());
    assert_eq!(n.cookies() + in_flight, 8, "the jar stays full");
    assert!(n.rekey_reason().is_none());
    assert_eq!(sim.source.stopped_by(), None);
    assert!(sim.tally.kisses.is_empty(), "no forged kiss was acted on");
    // 3600 s at 16 s per poll.
    assert!(sim.tally.measurements >= 220, "{:?}", sim.tally);
    assert!(sim.tally.worst_error < 1e-3, "{:?}", sim.tally);
}

#[test]
fn forged_naks_cost_nothing_when_the_answer_follows() {
    let sim = hour(Sim::nts(11).every_exchange(vec![NetOp::ForgeNak]));
    assert_unharmed(&sim);
    // The last request's NAK may still be on its way.
    assert!(
        sim.tally.naks_noted + 1 >= sim.tally.requests,
        "{:?}",
        sim.tally
    );
}

#[test]
fn forged_kisses_are_ignored() {
    for code in [*b"RATE", *b"DENY", *b"RSTR"] {
        let sim = hour(Sim::nts(12).every_exchange(vec![NetOp::ForgeKiss(code)]));
        assert_unharmed(&sim);
        let ignored = sim.source.counters().ignored_unauthenticated;
        assert!(
            ignored + 1 >= sim.tally.requests,
            "{ignored} {:?}",
            sim.tally
        );
    }
}

#[test]
fn forged_kisses_without_the_answer_do_not_stop_or_slow_the_source() {
    // The attacker also drops every other answer: a kiss then has the stage to itself.
    let sim = hour(Sim::nts(13).script(|n| {
        let mut ops = vec![NetOp::ForgeKiss(*b"DENY"), NetOp::ForgeKiss(*b"RATE")];
        if n % 2 == 0 {
            ops.push(NetOp::DropAnswer);
        }
        ops
    }));
    let n = sim.source.nts_half().unwrap();
    assert_eq!(sim.source.stopped_by(), None);
    assert!(sim.tally.kisses.is_empty());
    assert_eq!(
        sim.tally.key_exchanges, 1,
        "one in two answered: reachable, no re-key"
    );
    assert!(n.association().is_some());
    assert!(sim.tally.requests >= 220, "no RATE hold: {:?}", sim.tally);
}

#[test]
fn replays_tampered_and_forged_answers_and_garbage_are_ignored() {
    let sim = hour(Sim::nts(14).every_exchange(vec![
        NetOp::Replay,
        NetOp::Tamper(60),
        NetOp::Tamper(3),
        NetOp::ForgeAnswer,
        NetOp::Garbage,
        NetOp::Duplicate,
    ]));
    assert_unharmed(&sim);
    let c = sim.source.counters();
    assert!(c.ignored_forged + 1 >= sim.tally.requests, "{c:?}");
    assert!(
        c.ignored_mismatch >= sim.tally.requests - 1,
        "replays and duplicates: {c:?}"
    );
}

#[test]
fn the_relay_of_everything_gives_exactly_one_key_exchange() {
    // What client/tests/agent.rs's hostile relay does, in simulated time.
    let sim = hour(Sim::nts(15).every_exchange(vec![
        NetOp::ForgeNak,
        NetOp::ForgeKiss(*b"RATE"),
        NetOp::ForgeKiss(*b"DENY"),
        NetOp::ForgeAnswer,
        NetOp::Garbage,
        NetOp::Replay,
        NetOp::Tamper(200),
    ]));
    assert_unharmed(&sim);
}

#[test]
fn a_forged_nak_with_the_answer_lost_rekeys_once_and_keeps_polling() {
    // RFC 8915 section 5.7: a NAK without an authentic answer means a re-key;
    // the keys stay in use until it succeeds.
    let sim = hour(Sim::nts(16).script(|n| {
        if n == 5 {
            vec![NetOp::ForgeNak, NetOp::DropAnswer]
        } else {
            vec![]
        }
    }));
    assert_eq!(sim.tally.key_exchanges, 2);
    assert!(sim.tally.measurements >= 220);
}

#[test]
fn a_ke_outage_during_a_rekey_keeps_the_old_keys_in_use() {
    // Unreachable server (four lost answers) while the KE server is down.
    let sim = hour(Sim::nts(17).script(|n| match n {
        10 => vec![NetOp::KeOutage, NetOp::DropAnswer],
        11..=13 => vec![NetOp::DropAnswer],
        _ => vec![],
    }));
    let n = sim.source.nts_half().unwrap();
    assert!(sim.tally.ke_failures >= 1, "{:?}", sim.tally);
    assert!(n.association().is_some());
    assert!(
        sim.tally.measurements >= 200,
        "kept polling with the old keys: {:?}",
        sim.tally
    );
}

#[test]
fn fifo_jar_after_a_key_rotation_window_a_lost_answer_does_not_lead_to_a_nak() {
    // Cookies live about 30 minutes here. After an hour with no loss, every
    // cookie in the jar is one the server can open: a lost answer only
    // costs the cookie it carried.
    let world = World::with_schedule(KeySchedule::new(600, 2).unwrap());
    let nts = crate::source::NtsSource::new(Default::default(), t(0.0), 0.0);
    let src = crate::source::Source::nts(
        Default::default(),
        nts,
        Box::new(crate::source::harness::SimRng::new(18)),
    );
    let mut sim = Sim::with_source(src, world, 18).script(|n| {
        if n == 230 {
            vec![NetOp::DropAnswer]
        } else {
            vec![]
        }
    });
    sim.run_until(t(4000.0));
    assert!(sim.tally.requests > 240);
    assert_eq!(
        sim.source.counters().naks,
        0,
        "no NAK: no stale cookie was sent"
    );
    assert_eq!(sim.tally.key_exchanges, 1);
}
