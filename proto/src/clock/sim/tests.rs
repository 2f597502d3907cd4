use super::*;
use crate::clock::{InitialFrequency, LeapDecision, LeapSource};

const MINUTE: f64 = 60.0;

fn show(name: &str, seed: u64, r: &SimReport, from: f64, to: f64) {
    println!(
            "{name} seed {seed}: steps {:?}, offset rms {:.2} µs, mean {:.2} µs, max {:.2} µs, max |freq err| {:.4} ppm, mean |rate err| {:.4} ppm, poll 2^{}, updates {}, samples {}/{} polls",
            r.steps,
            r.offset_rms(from, to) * 1e6,
            r.offset_mean(from, to) * 1e6,
            r.max_abs_offset(from, to) * 1e6,
            r.max_abs_frequency_error(from, to),
            r.mean_abs_rate_error(from, to),
            r.final_poll_exponent(),
            r.updates,
            r.samples,
            r.polls,
        );
}

#[test]
fn rng_is_deterministic_and_roughly_normal() {
    let mut a = Rng::new(42);
    let mut b = Rng::new(42);
    for _ in 0..100 {
        assert_eq!(a.next_u64(), b.next_u64());
    }
    let mut r = Rng::new(1);
    let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    assert!(mean.abs() < 0.03, "{mean}");
    assert!((var - 1.0).abs() < 0.05, "{var}");
}

/// 10% of every server's replies held up 20 ms on the way back.
fn with_spikes(mut sc: Scenario) -> Scenario {
    for s in sc.servers.iter_mut() {
        s.spike_probability = 0.1;
        s.spike_delay = 20e-3;
    }
    sc
}

fn check_converged(name: &str, sc: &Scenario) -> SimReport {
    let r = run(sc);
    show(name, sc.seed, &r, 30.0 * MINUTE, 40.0 * MINUTE);
    assert_eq!(r.steps.len(), 1, "{name}: steps {:?}", r.steps);
    assert!(
        (r.steps[0].1 + 0.5).abs() < 1e-3,
        "{name}: step {:?}",
        r.steps
    );
    assert_eq!(r.panics, 0);
    let rms = r.offset_rms(30.0 * MINUTE, 40.0 * MINUTE);
    assert!(rms < 20e-6, "{name} seed {}: offset rms {rms}", sc.seed);
    // The tracking view agrees with what the loop did.
    let tr = r.status.tracking.expect("a selection");
    assert!(tr.rms_offset.unwrap() < 50e-6, "{tr:?}");
    assert!(tr.last_offset.unwrap().abs() < 100e-6, "{tr:?}");
    assert!(tr.update_interval.unwrap() > 0.0);
    assert!(tr.last_update_age.unwrap() < 2.0 * r.status.poll_exponent as f64 * 64.0);
    assert_eq!((tr.reference_stratum, tr.stratum), (1, 2));
    assert!(tr.root_delay > 0.5e-3 && tr.root_delay < 2e-3, "{tr:?}");
    let ferr = r.max_abs_frequency_error(30.0 * MINUTE, 40.0 * MINUTE);
    assert!(
        ferr < 0.1,
        "{name} seed {}: frequency error {ferr} ppm",
        sc.seed
    );
    r
}

#[test]
fn baseline_steps_once_then_holds_microseconds() {
    for seed in 1..=5 {
        check_converged("baseline", &Scenario::baseline(seed));
    }
}

#[test]
fn a_source_one_second_off_is_a_falseticker() {
    for seed in 1..=5 {
        let mut sc = Scenario::baseline(seed);
        sc.servers[2].offset = 1.0;
        let r = check_converged("falseticker", &sc);
        assert!(r.ever_falseticker[2] && r.final_falseticker[2]);
        assert!(!r.ever_survivor[2], "the liar was combined");
        for i in [0, 1, 3] {
            assert!(r.ever_survivor[i] && !r.ever_falseticker[i], "server {i}");
        }
    }
}

#[test]
fn asymmetry_wander_and_loss_stay_stable_without_stepping_again() {
    for seed in 1..=3 {
        let mut sc = Scenario::baseline(seed);
        sc.duration = 4.0 * 3600.0;
        sc.wander = 1e-17;
        for (s, asym) in sc.servers.iter_mut().zip([200e-6, -100e-6, 50e-6, 0.0]) {
            s.asymmetry = asym;
            s.loss = 0.1;
        }
        let r = run(&sc);
        let end = sc.duration;
        show("hostile", seed, &r, 30.0 * MINUTE, end);
        assert_eq!(r.steps.len(), 1, "steps {:?}", r.steps);
        assert_eq!(r.panics, 0);
        // The combined asymmetry (about +19 µs of offset, unknowable to
        // the client) shows up as a constant error; the clock must stay
        // close to it.
        let max = r.max_abs_offset(30.0 * MINUTE, end);
        assert!(max < 200e-6, "max offset {max}");
        let rms = r.offset_rms(30.0 * MINUTE, end);
        assert!(rms < 60e-6, "rms {rms}");
        let ferr = r.max_abs_frequency_error(30.0 * MINUTE, end);
        assert!(ferr < 0.5, "frequency error {ferr}");
    }
}

/// 10% of replies held up 20 ms on the way back (their offsets off by
/// 10 ms): the clock must stay within 1.5 times the offset RMS of the
/// same seeds without spikes, after it has settled (10 to 40 minutes).
#[test]
fn delay_spikes_barely_disturb_the_clock() {
    let (mut sum_clean, mut sum_spiky) = (0.0, 0.0);
    for seed in 1..=8 {
        let clean = run(&Scenario::baseline(seed));
        let spiky = run(&with_spikes(Scenario::baseline(seed)));
        let (from, to) = (10.0 * MINUTE, 40.0 * MINUTE);
        let (a, b) = (clean.offset_rms(from, to), spiky.offset_rms(from, to));
        println!(
            "spikes seed {seed}: offset rms {:.2} µs without, {:.2} µs with (ratio {:.2})",
            a * 1e6,
            b * 1e6,
            b / a,
        );
        assert_eq!(spiky.steps.len(), 1, "seed {seed}: steps {:?}", spiky.steps);
        assert!(
            b < 1.5 * a,
            "seed {seed}: rms {b} with spikes vs {a} without"
        );
        sum_clean += a * a;
        sum_spiky += b * b;
    }
    let ratio = (sum_spiky / sum_clean).sqrt();
    println!("spikes, 8 seeds pooled: ratio {ratio:.2}");
    assert!(ratio < 1.5, "pooled ratio {ratio}");
}

/// The second agent's scenario: the baseline's servers and settings, a
/// new seed, and the initial frequency decided as a shell would.
fn restarted(seed: u64, clock: &SimulatedClock, drift: Option<&DriftRecord>) -> Scenario {
    let mut sc = Scenario::baseline(seed + 100);
    sc.duration = 20.0 * MINUTE;
    let kernel_ppm = clock.frequency().expect("infallible");
    let kernel_status = clock.sync_status().expect("infallible");
    let init = InitialFrequency::decide(
        drift.map(|d| (d, 0)),
        Some((kernel_ppm, &kernel_status)),
        sc.agent.discipline.wander,
    );
    init.apply(&mut sc.agent.discipline);
    sc
}

/// A converged agent stops; a new one starts on the same clock with the
/// frequency it finds (in the kernel, or in the drift file). It must not
/// move the frequency by more than 0.1 ppm, step, or let the offset grow.
#[test]
fn a_restart_keeps_the_frequency_it_found() {
    for seed in 1..=4 {
        let mut clock = SimulatedClock::new(0.5, 100.0, seed);
        let first = run_on(&Scenario::baseline(seed), &mut clock);
        assert_eq!(first.steps.len(), 1);
        let found = clock.frequency().unwrap();
        assert!((found + 100.0).abs() < 0.1, "converged to {found}");
        let record = first.drift.expect("a converged agent has a drift record");
        assert!((record.frequency_ppm - found).abs() < 0.01, "{record:?}");
        let record = DriftRecord::parse(&record.to_text()).unwrap();

        for (how, drift) in [("kernel", None), ("drift file", Some(&record))] {
            let mut c = clock.clone();
            let sc = restarted(seed, &c, drift);
            let start = c.true_time();
            let r = run_on(&sc, &mut c);
            // How far the frequency moves from what it found, over the
            // first minute (the start-up burst and the first ~20
            // updates) and the first five.
            let f0 = r.trace[0].frequency_error_ppm;
            let moved = |minutes: f64| {
                r.trace
                    .iter()
                    .filter(|p| p.time <= start + minutes * MINUTE)
                    .map(|p| (p.frequency_error_ppm - f0).abs())
                    .fold(0.0, f64::max)
            };
            let (moved1, moved5) = (moved(1.0), moved(5.0));
            let ferr = r.max_abs_frequency_error(start, start + sc.duration);
            let max = r.max_abs_offset(start, start + sc.duration);
            let rms = r.offset_rms(start, start + sc.duration);
            println!(
                    "restart seed {seed} from the {how}: found {found:.4} ppm (± {:.3}), moved at most {moved1:.4} ppm in 1 min, {moved5:.4} in 5 min, max |frequency error| {ferr:.4} ppm in 20 min, offset rms {:.2} µs, max {:.2} µs, steps {}",
                    sc.agent.discipline.initial_frequency_uncertainty_ppm,
                    rms * 1e6,
                    max * 1e6,
                    r.steps.len()
                );
            assert!(r.steps.is_empty(), "{how}: steps {:?}", r.steps);
            assert!(moved1 < 0.1, "{how}: frequency moved {moved1} ppm");
            // It stays converged: the first run's frequency errors reach
            // 0.03 ppm; a restart trusting the kernel to 0.1 ppm
            // wanders a little more at first.
            let limit = if drift.is_some() { 0.1 } else { 0.2 };
            assert!(ferr < limit, "{how}: frequency error {ferr} ppm");
            assert!(max < 100e-6, "{how}: max offset {max}");
            assert!(r.status.synchronized && r.updates > 20);
        }

        // What this replaces: starting from 0 ppm undoes the correction.
        let mut c = clock.clone();
        let mut sc = Scenario::baseline(seed + 100);
        sc.duration = 20.0 * MINUTE;
        let start = c.true_time();
        let r = run_on(&sc, &mut c);
        println!(
                "restart seed {seed} from 0 ppm: max offset {:.2} µs, max |frequency error| {:.2} ppm, steps {}",
                r.max_abs_offset(start, start + sc.duration) * 1e6,
                r.max_abs_frequency_error(start, start + sc.duration),
                r.steps.len()
            );
    }
}

/// 2027-01-01 00:00:00 UTC: a leap second (23:59:60) before it.
const NEW_YEAR_2027: i64 = 1_798_761_600;

/// The baseline, starting 40 minutes before the new year, for an hour.
fn new_year(seed: u64, leap: Option<LeapStatus>) -> Scenario {
    let mut sc = Scenario::baseline(seed);
    sc.start_unix = NEW_YEAR_2027 - 2400;
    sc.duration = 3600.0;
    sc.leap = leap.map(|l| (NEW_YEAR_2027, l));
    sc
}

/// A `leap-seconds.list` with a valid hash: the given entries, updated
/// and expiring as asked.
fn make_list(updated_unix: i64, expires_unix: i64, entries: &[(i64, i32)]) -> LeapSecondsList {
    use sha1::{Digest, Sha1};
    let ntp = |u: i64| u + crate::clock::leap::NTP_UNIX_OFFSET;
    let mut text = format!("#$\t{}\n#@\t{}\n", ntp(updated_unix), ntp(expires_unix));
    let mut h = Sha1::new();
    h.update(ntp(updated_unix).to_string());
    h.update(ntp(expires_unix).to_string());
    for (u, tai) in entries {
        text.push_str(&format!("{}\t{}\n", ntp(*u), tai));
        h.update(format!("{}{}", ntp(*u), tai));
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let groups: Vec<&str> = (0..5).map(|i| &hex[i * 8..i * 8 + 8]).collect();
    text.push_str(&format!("#h\t{}\n", groups.join(" ")));
    LeapSecondsList::parse(&text).unwrap()
}

/// Checks a run that crossed the new year with (or without) a leap.
fn check_leap_run(name: &str, sc: &Scenario, want: Option<LeapStatus>) -> SimReport {
    let r = run(sc);
    let at = (NEW_YEAR_2027 - sc.start_unix) as f64;
    let after = r.max_abs_offset(at - 120.0, sc.duration);
    let settled = r.max_abs_offset(10.0 * MINUTE, sc.duration);
    println!(
            "{name} seed {}: kernel leaps {:?} (due at {at} s), flags {:?}, steps {}, max |UTC offset| {:.2} µs from 10 min, {:.2} µs around and after the leap",
            sc.seed,
            r.leaps,
            r.leap_commands,
            r.steps.len(),
            settled * 1e6,
            after * 1e6
        );
    match want {
        Some(l) => {
            // Exactly one leap, at the right second: an inserted second
            // starts when the clock reads midnight, a deleted one when
            // it reads 23:59:59; the clock is microseconds from truth.
            let due = if l == LeapStatus::Insert {
                at
            } else {
                at - 1.0
            };
            assert_eq!(r.leaps.len(), 1, "{name}: leaps {:?}", r.leaps);
            assert_eq!(r.leaps[0].1, l);
            assert!((r.leaps[0].0 - due).abs() < 1e-3, "{name}: {:?}", r.leaps);
            // Flag up on the last day, down once past midnight.
            assert_eq!(r.leap_commands.first().map(|c| c.1), Some(l));
            let (t_down, down) = *r.leap_commands.last().unwrap();
            assert_eq!(down, LeapStatus::None);
            assert!(
                t_down > due && t_down < due + 10.0,
                "{name}: {:?}",
                r.leap_commands
            );
            assert_eq!(r.leap_commands.len(), 2, "{name}: {:?}", r.leap_commands);
        }
        None => {
            assert!(r.leaps.is_empty(), "{name}: leaps {:?}", r.leaps);
            assert!(r.leap_commands.is_empty(), "{name}: {:?}", r.leap_commands);
        }
    }
    assert_eq!(r.steps.len(), 1, "{name}: steps {:?}", r.steps);
    assert!(r.steps[0].0 < 60.0, "{name}: late step {:?}", r.steps);
    assert!(settled < 100e-6, "{name}: offset {settled}");
    r
}

#[test]
fn a_leap_second_is_applied_once_at_the_right_second() {
    for seed in 1..=3 {
        let r = check_leap_run(
            "insert",
            &new_year(seed, Some(LeapStatus::Insert)),
            Some(LeapStatus::Insert),
        );
        assert_eq!(r.status.leap, LeapDecision::default());
        check_leap_run(
            "delete",
            &new_year(seed, Some(LeapStatus::Delete)),
            Some(LeapStatus::Delete),
        );
    }
    println!(
        "the inserted second: {}",
        crate::clock::leap::format_leap_second(NEW_YEAR_2027, LeapStatus::Insert)
    );
}

#[test]
fn a_minority_or_overruled_leap_announcement_is_not_acted_on() {
    // One server of four announces a leap that UTC does not have.
    let mut sc = new_year(1, None);
    sc.servers[2].forced_leap = Some(LeapIndicator::InsertSecond);
    let r = check_leap_run("forged minority", &sc, None);
    assert_eq!(r.status.leap.announced, LeapStatus::None);
    // Two of four: still no majority.
    sc.servers[3].forced_leap = Some(LeapIndicator::InsertSecond);
    check_leap_run("two of four", &sc, None);
    // All four announce it, but a valid leap-seconds.list says no leap
    // at this new year: the list decides.
    let mut sc = new_year(2, None);
    for s in sc.servers.iter_mut() {
        s.forced_leap = Some(LeapIndicator::InsertSecond);
    }
    let no_leap_list = make_list(
        NEW_YEAR_2027 - 100 * 86_400,
        NEW_YEAR_2027 + 100 * 86_400,
        &[(1_483_228_800, 37)],
    );
    sc.leap_list = Some(no_leap_list.clone());
    check_leap_run("overruled by the list", &sc, None);
    // An expired list does not decide: the majority of sources does.
    let mut sc = new_year(3, Some(LeapStatus::Insert));
    let mut expired = no_leap_list;
    expired.expires_ntp = expired.updated_ntp + 86_400;
    sc.leap_list = Some(expired);
    check_leap_run("expired list", &sc, Some(LeapStatus::Insert));
    // A valid list announces it while no server does: the list decides.
    let mut sc = new_year(3, Some(LeapStatus::Insert));
    for s in sc.servers.iter_mut() {
        s.forced_leap = Some(LeapIndicator::NoWarning);
    }
    sc.leap_list = Some(make_list(
        NEW_YEAR_2027 - 100 * 86_400,
        NEW_YEAR_2027 + 100 * 86_400,
        &[(1_483_228_800, 37), (NEW_YEAR_2027, 38)],
    ));
    check_leap_run("list only", &sc, Some(LeapStatus::Insert));
}

#[test]
fn observe_mode_reports_a_leap_without_commanding_it() {
    let mut sc = new_year(1, Some(LeapStatus::Insert));
    sc.agent.discipline.observe_only = true;
    sc.duration = 1200.0;
    let r = run(&sc);
    assert!(r.leap_commands.is_empty() && r.leaps.is_empty());
    assert_eq!(r.status.leap.status, LeapStatus::Insert);
    assert_eq!(r.status.leap.announced, LeapStatus::Insert);
    assert_eq!(r.status.leap.source, LeapSource::Sources);
    assert_eq!(r.status.leap.at_unix, Some(NEW_YEAR_2027));
    assert_eq!(r.status.kernel_leap, LeapStatus::None);
}

#[test]
fn an_absurd_offset_panics_and_the_clock_is_left_alone() {
    let mut sc = Scenario::baseline(1);
    sc.initial_offset = 2000.0;
    sc.duration = 300.0;
    let r = run(&sc);
    assert!(r.panics > 0);
    assert!(r.steps.is_empty());
    assert!(r.status.panicked && !r.status.synchronized);
    // No frequency was set: the clock still runs 100 ppm fast.
    let last = r.trace.last().unwrap();
    assert!((last.rate_error_ppm - 100.0).abs() < 1e-9);
    assert!((last.offset - (2000.0 + 100e-6 * last.time)).abs() < 1e-6);
}

#[test]
fn observe_only_measures_without_touching_the_clock() {
    let mut sc = Scenario::baseline(3);
    sc.agent.discipline.observe_only = true;
    sc.duration = 600.0;
    let r = run(&sc);
    assert!(r.steps.is_empty() && r.panics == 0);
    let last = r.trace.last().unwrap();
    assert!((last.rate_error_ppm - 100.0).abs() < 1e-9);
    // It still knows the offset (true minus ours) and the frequency error.
    let est = r.status.offset.unwrap();
    let truth = -(0.5 + 100e-6 * 600.0);
    assert!((est - truth).abs() < 50e-6, "{est} vs {truth}");
    let f = r.status.residual_frequency_ppm.unwrap();
    assert!((f + 100.0).abs() < 0.1, "{f}");
    assert_eq!(r.status.frequency_ppm, 0.0);
    assert!((r.status.estimated_frequency_ppm.unwrap() + 100.0).abs() < 0.1);
}

/// The numbers in docs/clock-discipline.md:
/// `cargo test -p nts-proto --lib clock::sim -- --ignored --nocapture`.
#[test]
#[ignore]
fn report_many_seeds() {
    fn stats(mut v: Vec<f64>) -> String {
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        format!("median {:.4}, worst {:.4}", median, v[v.len() - 1])
    }
    type Setup = fn(&mut Scenario);
    let scenarios: [(&str, Setup, f64); 5] = [
        ("baseline", |_| {}, 2400.0),
        (
            "spikes",
            |sc| {
                for s in sc.servers.iter_mut() {
                    s.spike_probability = 0.1;
                    s.spike_delay = 20e-3;
                }
            },
            2400.0,
        ),
        ("falseticker", |sc| sc.servers[2].offset = 1.0, 2400.0),
        (
            "hostile",
            |sc| {
                sc.duration = 4.0 * 3600.0;
                sc.wander = 1e-17;
                for (s, asym) in sc.servers.iter_mut().zip([200e-6, -100e-6, 50e-6, 0.0]) {
                    s.asymmetry = asym;
                    s.loss = 0.1;
                }
            },
            4.0 * 3600.0,
        ),
        (
            "hostile-24h",
            |sc| {
                sc.duration = 24.0 * 3600.0;
                sc.wander = 1e-17;
                for (s, asym) in sc.servers.iter_mut().zip([200e-6, -100e-6, 50e-6, 0.0]) {
                    s.asymmetry = asym;
                    s.loss = 0.1;
                }
            },
            24.0 * 3600.0,
        ),
    ];
    for (name, setup, end) in scenarios {
        let (mut rms, mut mean, mut max, mut ferr, mut steps, mut poll) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for seed in 1..=20 {
            let mut sc = Scenario::baseline(seed);
            setup(&mut sc);
            let r = run(&sc);
            let from = 30.0 * MINUTE;
            rms.push(r.offset_rms(from, end) * 1e6);
            mean.push(r.offset_mean(from, end).abs() * 1e6);
            max.push(r.max_abs_offset(from, end) * 1e6);
            ferr.push(r.max_abs_frequency_error(from, end));
            steps.push(r.steps.len() as f64);
            poll.push(f64::from(r.final_poll_exponent()));
        }
        println!("{name} (20 seeds, from 30 min to {:.0} min):", end / 60.0);
        println!("  offset rms µs: {}", stats(rms));
        println!("  |mean offset| µs: {}", stats(mean));
        println!("  max |offset| µs: {}", stats(max));
        println!("  max |frequency error| ppm: {}", stats(ferr));
        println!("  steps: {}", stats(steps));
        println!("  final poll exponent: {}", stats(poll));
    }
}
