//! The whole source through its driver interface, in the harness.

use crate::source::harness::{t, NetOp, Sim, SimRng, World};
use crate::source::*;
use std::time::Duration;

#[test]
fn an_nts_source_exchanges_keys_once_and_measures_the_true_offset() {
    let mut sim = Sim::nts(1);
    sim.run_until(t(600.0));
    let c = sim.source.counters();
    assert_eq!(sim.tally.key_exchanges, 1);
    assert!(sim.tally.measurements >= 30, "{:?}", sim.tally);
    assert_eq!(c.accepted, sim.tally.measurements);
    assert!(sim.tally.worst_error < 1e-3, "{:?}", sim.tally);
    assert_eq!(sim.source.nts_half().unwrap().cookies(), 8);
    // Persisted after the key exchange, then once per jar turned over.
    let turns = sim.tally.measurements / 8;
    assert_eq!(sim.tally.persisted, 1 + turns, "{:?}", sim.tally);
}

#[test]
fn a_plain_source_measures_too() {
    let mut sim = Sim::plain(2);
    sim.run_until(t(300.0));
    assert_eq!(sim.tally.key_exchanges, 0);
    assert!(sim.tally.measurements >= 15);
    assert!(sim.tally.worst_error < 1e-3);
    assert!(!sim.source.authenticated());
}

#[test]
fn rate_kisses_hold_a_plain_source_and_the_hold_doubles() {
    // Plain NTP cannot tell a forged kiss from a real one: every kiss counts.
    let mut sim = Sim::plain(3).script(|n| {
        if (2..=4).contains(&n) {
            vec![NetOp::DropAnswer, NetOp::ForgeKiss(*b"RATE")]
        } else {
            vec![]
        }
    });
    sim.run_until(t(600.0));
    assert_eq!(sim.tally.kisses, vec![*b"RATE"; 3]);
    let gaps: Vec<f64> = sim.tally.sent.windows(2).map(|w| w[1] - w[0]).collect();
    // Poll at 16 s, then holds of 64, 128 and 256 s from each kiss (10 ms
    // after its request); the answer after them resets the doubling.
    let want = [16.0, 64.01, 128.01, 256.01, 16.0];
    for (g, w) in gaps.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{gaps:?}");
    }
}

#[test]
fn deny_stops_a_plain_source() {
    let mut sim = Sim::plain(4).every_exchange(vec![NetOp::DropAnswer, NetOp::ForgeKiss(*b"DENY")]);
    sim.run_until(t(1000.0));
    assert_eq!(sim.tally.stopped, Some(*b"DENY"));
    assert_eq!(sim.tally.requests, 1);
    assert_eq!(sim.source.poll_timeout(), None);
}

#[test]
fn every_resolved_address_is_tried_in_turn() {
    let mut src = Source::plain(
        SourceConfig::default(),
        "pool.example".into(),
        123,
        Box::new(SimRng::new(5)),
    );
    let addrs: Vec<std::net::SocketAddr> = vec![
        "192.0.2.1:123".parse().unwrap(),
        "[2001:db8::1]:123".parse().unwrap(),
        "192.0.2.2:123".parse().unwrap(),
    ];
    src.handle_timeout(t(0.0));
    assert!(matches!(src.poll_action(), Some(Action::Resolve { .. })));
    src.handle_resolved(t(0.0), Ok(addrs));
    let mut seen = Vec::new();
    let mut now = 0.0;
    for _ in 0..4 {
        let Some(Action::Send { to, .. }) = src.poll_action() else {
            panic!()
        };
        seen.push(to.to_string());
        now += 16.0;
        src.handle_timeout(t(now)); // response timeout
        while src.poll_action().is_some() {}
        src.set_poll_at(t(now));
        src.handle_timeout(t(now));
    }
    // IPv6 first, then the families alternate; the rotation wraps.
    assert_eq!(
        seen,
        [
            "[2001:db8::1]:123",
            "192.0.2.1:123",
            "192.0.2.2:123",
            "[2001:db8::1]:123"
        ]
    );
}

#[test]
fn a_time_server_on_the_own_host_costs_the_keys_and_a_backoff() {
    let cfg = SourceConfig {
        own_addresses: vec!["10.0.0.5".parse().unwrap()],
        ..Default::default()
    };
    let nts = NtsSource::new(NtsSourceConfig::default(), t(0.0), 0.0);
    let mut src = Source::nts(cfg, nts, Box::new(SimRng::new(6)));
    let mut w = World::new();
    src.handle_timeout(t(0.0));
    assert!(matches!(src.poll_action(), Some(Action::KeyExchange)));
    src.handle_key_exchange(t(0.0), w.key_exchange(1));
    while let Some(a) = src.poll_action() {
        if matches!(a, Action::Resolve { .. }) {
            break;
        }
    }
    src.handle_resolved(t(0.0), Ok(vec!["10.0.0.5:123".parse().unwrap()]));
    assert_eq!(src.nts_half().unwrap().cookies(), 0);
    let retry = src.poll_timeout().unwrap();
    assert!(retry >= t(4.0) - Duration::from_secs(2), "{retry:?}");
    src.set_poll_at(t(0.0));
    src.handle_timeout(retry);
    let mut saw_ke = false;
    while let Some(a) = src.poll_action() {
        saw_ke |= matches!(a, Action::KeyExchange);
    }
    assert!(saw_ke, "a new key exchange for another time server");
}

#[test]
fn a_key_exchange_outage_backs_off_and_recovers() {
    let mut sim = Sim::nts(7);
    sim.ke_down_until = t(100.0);
    sim.run_until(t(99.0));
    // 4, 8, 16, 32 s of backoff (jitter takes up to half off each).
    let failed = sim.tally.ke_failures;
    assert!((4..=8).contains(&failed), "{:?}", sim.tally);
    assert_eq!(sim.tally.requests, 0, "nothing to send with");
    sim.run_until(t(400.0));
    assert_eq!(
        sim.tally.key_exchanges,
        failed + 1,
        "one more, and it worked"
    );
    assert!(sim.tally.measurements > 0);
    assert_eq!(sim.source.nts_half().unwrap().ke_failures_in_row(), 0);
}

#[test]
fn a_plain_source_takes_only_answers_that_echo_its_request() {
    // On the path, a forged plain answer with the request's origin cannot be
    // told from the real one; replays and garbage are still refused.
    let mut sim =
        Sim::plain(8).every_exchange(vec![NetOp::ForgeAnswer, NetOp::Replay, NetOp::Garbage]);
    sim.run_until(t(300.0));
    assert_eq!(sim.tally.plain_forgeries_measured, sim.tally.requests);
    let c = sim.source.counters();
    assert!(c.ignored_mismatch + 1 >= sim.tally.requests, "{c:?}");
}
