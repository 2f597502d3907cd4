//! Lost polls (independent and in runs) and one-sided (queueing) jitter,
//! measured against the same seeds without losses (issue 19):
//! `cargo test -p nts-proto --lib clock::sim::loss_tests -- --ignored --nocapture`.
//!
//! Printed per seed: [offset RMS µs, mean offset µs, max |frequency error|
//! ppm] from 20 minutes to the end. Measured (8 seeds, pooled RMS): with
//! four servers and the adaptive poll interval losses cost little (Gaussian
//! 16.9/16.1/16.4 µs, queueing 19.4/18.5/21.5 µs at 0/10/30% loss); with one
//! source polled every 2 s behind 0.25 ms mean queueing each way, 14.9/17.2/
//! 21.0 µs (1.15x and 1.41x; thinning alone explains 1.05x and 1.20x), and
//! the per-seed mean offset exceeds 10 µs even without loss.

use super::*;
use crate::clock::RECENT_POLLS;

const MINUTE: f64 = 60.0;

/// The baseline's four servers, their jitter `kind`, and `loss` of polls
/// lost (in runs of `burst` on average).
fn lossy(seed: u64, kind: Jitter, loss: f64, burst: f64) -> Scenario {
    let mut sc = Scenario::baseline(seed);
    for s in sc.servers.iter_mut() {
        match kind {
            Jitter::Gaussian => s.jitter = 100e-6,
            Jitter::Queueing => {
                s.jitter = 10e-6;
                s.queueing = 250e-6;
            }
        }
        s.poll_loss = loss;
        s.loss_burst = burst;
    }
    sc
}

#[derive(Debug, Clone, Copy)]
enum Jitter {
    Gaussian,
    Queueing,
}

struct Outcome {
    rms: f64,
    mean: f64,
    ferr: f64,
}

fn measure(sc: &Scenario) -> Outcome {
    let r = run(sc);
    let (from, to) = (20.0 * MINUTE, sc.duration);
    Outcome {
        rms: r.offset_rms(from, to),
        mean: r.offset_mean(from, to),
        ferr: r.max_abs_frequency_error(from, to),
    }
}

#[test]
#[ignore]
fn report_loss() {
    for kind in [Jitter::Gaussian, Jitter::Queueing] {
        for (loss, burst) in [(0.0, 1.0), (0.1, 1.0), (0.3, 1.0), (0.1, 4.0), (0.3, 4.0)] {
            let mut line = format!("{kind:?} loss {loss} burst {burst}:");
            let mut sq = 0.0;
            for seed in 1..=8 {
                let o = measure(&lossy(seed, kind, loss, burst));
                sq += o.rms * o.rms;
                line += &format!(" [{:.1} {:+.1} {:.3}]", o.rms * 1e6, o.mean * 1e6, o.ferr);
            }
            println!("{line} pooled {:.2}", (sq / 8.0).sqrt() * 1e6);
        }
    }
}

/// The relay measurement's setting: one source polled every 2 s.
fn relay_like(seed: u64, queueing: f64, loss: f64) -> Scenario {
    let mut sc = Scenario::baseline(seed);
    sc.duration = 2400.0;
    sc.agent.select.min_sources = 1;
    sc.agent.discipline.min_poll = 1;
    sc.agent.discipline.max_poll = 1;
    let mut s = ServerModel::new(2e-3, 10e-6);
    s.queueing = queueing;
    s.poll_loss = loss;
    sc.servers = vec![s];
    sc
}

#[test]
#[ignore]
fn report_relay_like() {
    for q in [100e-6, 500e-6] {
        for loss in [0.0, 0.1, 0.3] {
            let mut line = format!("one source, 2 s polls, queueing {q} loss {loss}:");
            let mut sq = 0.0;
            for seed in 1..=8 {
                let o = measure(&relay_like(seed, q, loss));
                sq += o.rms * o.rms;
                line += &format!(" [{:.1} {:+.1} {:.3}]", o.rms * 1e6, o.mean * 1e6, o.ferr);
            }
            println!("{line} pooled {:.2}", (sq / 8.0).sqrt() * 1e6);
        }
    }
}

/// The agent's per-source loss record sees what the network did.
#[test]
fn the_agent_reports_the_share_of_lost_polls() {
    for (loss, burst) in [(0.0, 1.0), (0.1, 1.0), (0.3, 1.0), (0.3, 4.0)] {
        let mut sc = relay_like(1, 100e-6, loss);
        sc.servers[0].loss_burst = burst;
        let r = run(&sc);
        let l = r.sources[0].loss;
        let share = l.overall_share().unwrap();
        println!(
            "poll loss {loss} in runs of {burst}: agent saw {share:.3} of {} polls, recently {:?}",
            l.polls,
            l.recent_share()
        );
        assert!(l.polls + 1 >= r.polls as u64 && l.polls <= r.polls as u64);
        assert_eq!(l.polls - l.lost, r.samples as u64, "{l:?}");
        // The exact count is checked above; this is the generator's long-run share.
        assert!((share - loss).abs() < 0.05, "share {share} for {loss}");
        assert_eq!(l.recent_polls, RECENT_POLLS);
    }
}
