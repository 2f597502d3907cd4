use super::*;

fn m(offset: f64) -> Measurement {
    Measurement {
        offset,
        variance: 1e-10,
        round_variance: 1e-10,
        root_distance: 1e-3,
    }
}

fn freq(cmds: &[ClockCommand]) -> Option<f64> {
    cmds.iter().rev().find_map(|c| match c {
        ClockCommand::SetFrequency { ppm } => Some(*ppm),
        _ => None,
    })
}

#[test]
fn steps_at_startup_only() {
    let mut d = Discipline::new(DisciplineConfig::default());
    let (k, cmds) = d.update(0.0, &m(-0.5));
    assert_eq!(k, UpdateKind::Accepted);
    assert_eq!(cmds[0], ClockCommand::Step { offset: -0.5 });
    assert_eq!(d.steps(), 1);
    assert!((d.correction_at(0.0) + 0.5).abs() < 1e-12);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, ClockCommand::SetSyncStatus(s) if s.synchronized)));
    // Later large offsets (after persisting past the outlier gate) are slewed.
    let mut d = Discipline::new(DisciplineConfig {
        step_limit: 1,
        ..Default::default()
    });
    d.update(0.0, &m(0.0));
    let mut stepped = false;
    for i in 1..10 {
        let (_, cmds) = d.update(f64::from(i) * 16.0, &m(0.3));
        stepped |= cmds.iter().any(|c| matches!(c, ClockCommand::Step { .. }));
    }
    assert!(!stepped);
    assert_eq!(d.steps(), 0);
}

#[test]
fn slew_is_rate_limited_and_ends_on_time() {
    let mut d = Discipline::new(DisciplineConfig {
        step_limit: 0,
        max_slew_ppm: 100.0,
        ..Default::default()
    });
    let (_, cmds) = d.update(0.0, &m(0.01));
    // 10 ms at 100 ppm: 100 s.
    assert!((freq(&cmds).unwrap() - 100.0).abs() < 1e-6);
    let end = d.next_deadline().unwrap();
    assert!((end - 100.0).abs() < 1e-6, "{end}");
    assert!(d.advance(50.0).is_empty());
    let cmds = d.advance(end);
    assert_eq!(cmds, vec![ClockCommand::SetFrequency { ppm: 0.0 }]);
    assert_eq!(d.next_deadline(), None);
    assert!((d.correction_at(end) - 0.01).abs() < 1e-12);
    // The state knows the offset has been slewed out.
    assert!(d.estimate(end).unwrap().offset.abs() < 1e-9);
}

#[test]
fn frequency_is_limited() {
    let mut d = Discipline::new(DisciplineConfig {
        step_limit: 0,
        outlier_gate: 1e9,
        ..Default::default()
    });
    // Offset growing by 1 ms per second: a 1000 ppm slow clock.
    let mut last = 0.0;
    for i in 0..20 {
        let t = f64::from(i);
        let (_, cmds) = d.update(t, &m(1e-3 * t - d.correction_at(t)));
        last = freq(&cmds).unwrap();
        assert!(last.abs() <= 500.0 + 1e-9);
    }
    assert!((last - 500.0).abs() < 1e-6);
    assert!((d.frequency_ppm() - 500.0).abs() < 1e-6);
}

/// Observe-only: nothing is commanded, but the refusal is still there
/// for the shell to log.
#[test]
fn observe_only_panic_is_reported_without_commands() {
    let mut d = Discipline::new(DisciplineConfig {
        observe_only: true,
        ..Default::default()
    });
    let (k, cmds) = d.update(0.0, &m(2000.0));
    assert_eq!(k, UpdateKind::Panic);
    assert!(cmds.is_empty(), "{cmds:?}");
    assert_eq!(d.refused_offset(), Some(2000.0));
    // Whatever the next updates make of it, the two always agree.
    for i in 1..10 {
        d.update(16.0 * f64::from(i), &m(0.01));
        assert_eq!(d.refused_offset().is_some(), d.panicked());
    }
}

#[test]
fn panic_refuses_to_act() {
    let mut d = Discipline::new(DisciplineConfig::default());
    let (k, cmds) = d.update(0.0, &m(5000.0));
    assert_eq!(k, UpdateKind::Panic);
    assert!(d.panicked());
    assert_eq!(d.refused_offset(), Some(5000.0));
    assert_eq!(
        cmds[0],
        ClockCommand::Panic {
            offset: 5000.0,
            threshold: 1000.0
        }
    );
    assert!(!cmds.iter().any(|c| matches!(
        c,
        ClockCommand::Step { .. } | ClockCommand::SetFrequency { .. }
    )));
    // No panic threshold: the first update may step any distance.
    let mut d = Discipline::new(DisciplineConfig {
        panic_threshold: None,
        ..Default::default()
    });
    let (_, cmds) = d.update(0.0, &m(5000.0));
    assert_eq!(cmds[0], ClockCommand::Step { offset: 5000.0 });
}

#[test]
fn observe_only_commands_nothing() {
    let mut d = Discipline::new(DisciplineConfig {
        observe_only: true,
        ..Default::default()
    });
    for i in 0..10 {
        let t = f64::from(i) * 16.0;
        let (_, cmds) = d.update(t, &m(0.5 + 1e-4 * t));
        assert!(cmds.is_empty());
        assert!(d.advance(t + 1.0).is_empty());
    }
    let e = d.estimate(150.0).unwrap();
    assert!((e.offset - (0.5 + 1e-4 * 150.0)).abs() < 1e-6, "{e:?}");
    assert!((e.residual_frequency_ppm - 100.0).abs() < 0.1, "{e:?}");
    assert_eq!(d.steps(), 0);
}

#[test]
fn a_lone_outlier_is_ignored() {
    let mut d = Discipline::new(DisciplineConfig::default());
    for i in 0..20 {
        d.update(f64::from(i) * 16.0, &m(0.0));
    }
    let (k, _) = d.update(320.0, &m(0.01));
    assert_eq!(k, UpdateKind::Outlier);
    let (k, _) = d.update(336.0, &m(0.0));
    assert_eq!(k, UpdateKind::Accepted);
    assert!(d.estimate(336.0).unwrap().offset.abs() < 1e-6);
}

#[test]
fn poll_lengthens_when_quiet() {
    let mut d = Discipline::new(DisciplineConfig::default());
    let noisy = Measurement {
        variance: 1e-9,
        round_variance: 1e-9,
        ..m(0.0)
    };
    let mut t = 0.0;
    for _ in 0..400 {
        d.update(t, &noisy);
        t += d.poll_interval();
    }
    assert!(d.poll_exponent() >= 6, "{}", d.poll_exponent());
    assert!(d.poll_exponent() <= 10);
    // Measurements that keep surprising the filter shorten it again.
    for i in 0..40 {
        let off = if i % 2 == 0 { 3e-4 } else { -3e-4 };
        d.update(
            t,
            &Measurement {
                offset: off,
                ..noisy
            },
        );
        t += d.poll_interval();
    }
    assert_eq!(d.poll_exponent(), 4);
}
