use super::*;
use crate::clock::sample::ServerInfo;

fn sample(offset: f64) -> Sample {
    Sample::new(offset, 1e-3, 1e-3, ServerInfo::default(), 1e-9)
}

#[test]
fn burst_then_system_poll() {
    let mut a = Agent::new(AgentConfig::default());
    let id = a.add_source();
    assert_eq!(a.next_poll(id), Some(f64::NEG_INFINITY));
    for i in 0..4 {
        assert_eq!(a.poll_interval(id), Some(2.0));
        a.poll_sent(id, f64::from(i) * 2.0);
    }
    assert_eq!(a.poll_interval(id), Some(16.0));
    assert_eq!(a.next_poll(id), Some(6.0 + 16.0));
    assert_eq!(a.source_status(id, 7.0).unwrap().reach, 0);
    assert!(a.remove_source(id));
    assert!(!a.remove_source(id));
    assert_eq!(a.next_poll(id), None);
}

#[test]
fn min_sources_gates_the_clock() {
    let mut a = Agent::new(AgentConfig {
        select: SelectConfig {
            min_sources: 3,
            ..Default::default()
        },
        ..Default::default()
    });
    let ids: Vec<_> = (0..3).map(|_| a.add_source()).collect();
    a.poll_sent(ids[0], 0.0);
    assert!(a.on_sample(ids[0], sample(0.5), 0.001).is_empty());
    a.poll_sent(ids[1], 0.0);
    assert!(a.on_sample(ids[1], sample(0.5), 0.002).is_empty());
    assert!(matches!(
        a.selection(),
        Err(SelectError::TooFewSources {
            found: 2,
            required: 3
        })
    ));
    a.poll_sent(ids[2], 0.0);
    let cmds = a.on_sample(ids[2], sample(0.5), 0.003);
    assert!(matches!(cmds[0], ClockCommand::Step { offset } if (offset - 0.5).abs() < 1e-3));
    let st = a.status(0.003);
    assert_eq!(st.steps, 1);
    assert!(st.synchronized);
    let tr = st.tracking.unwrap();
    assert_eq!(tr.stratum, 2);
    assert!((tr.last_offset.unwrap() - 0.5).abs() < 1e-3, "{tr:?}");
    assert_eq!(tr.last_update, Some(0.003));
    assert_eq!(tr.update_interval, None);
    assert!((tr.root_delay - 1e-3).abs() < 1e-9);
    assert!(tr.root_dispersion > 0.0 && tr.root_distance >= tr.root_delay / 2.0);
    // A sample sent before the step and received after it is dropped.
    a.poll_sent(ids[0], 0.0025);
    assert!(a.on_sample(ids[0], sample(0.5), 0.0035).is_empty());
    assert_eq!(a.status(0.004).updates, 1);
}

#[test]
fn unsynchronized_servers_are_not_selectable() {
    let mut a = Agent::new(AgentConfig::default());
    let id = a.add_source();
    a.poll_sent(id, 0.0);
    let mut s = sample(0.0);
    s.server.stratum = 16;
    assert!(a.on_sample(id, s, 0.001).is_empty());
    assert_eq!(
        a.source_status(id, 0.001).unwrap().state,
        SourceState::Unselectable
    );
    assert_eq!(a.selection(), Err(SelectError::NoCandidates));
}

#[test]
fn observe_only_reports_without_commanding() {
    let mut cfg = AgentConfig::default();
    cfg.discipline.observe_only = true;
    let mut a = Agent::new(cfg);
    let id = a.add_source();
    for i in 0..8 {
        let t = f64::from(i) * 2.0;
        a.poll_sent(id, t);
        assert!(a.on_sample(id, sample(0.25), t + 0.001).is_empty());
        assert!(a.tick(t + 1.0).is_empty());
    }
    let st = a.status(16.0);
    assert!(st.observe_only);
    assert!((st.offset.unwrap() - 0.25).abs() < 1e-3, "{st:?}");
    assert_eq!(st.steps, 0);
    assert_eq!(
        a.source_status(id, 16.0).unwrap().state,
        SourceState::SystemPeer
    );
}

#[test]
fn poll_loss_counts_unanswered_polls_not_the_one_in_flight() {
    let mut a = Agent::new(AgentConfig::default());
    let id = a.add_source();
    let loss = |a: &Agent| a.source_status(id, 100.0).unwrap().loss;
    assert_eq!(loss(&a), PollLoss::default());
    assert_eq!(loss(&a).recent_share(), None);
    // In flight: not counted yet.
    a.poll_sent(id, 0.0);
    assert_eq!(loss(&a).polls, 0);
    a.on_sample(id, sample(0.0), 0.01);
    // A duplicate answer counts once.
    a.on_sample(id, sample(0.0), 0.02);
    assert_eq!((loss(&a).polls, loss(&a).lost), (1, 0));
    // Then 3 answered and 1 lost of every 4, for 40 polls.
    for i in 1..=40u32 {
        let t = f64::from(i) * 2.0;
        a.poll_sent(id, t);
        if i % 4 != 0 {
            a.on_sample(id, sample(0.0), t + 0.01);
        }
    }
    // The last poll (the 40th) went unanswered but may still be in flight.
    let l = loss(&a);
    assert_eq!((l.polls, l.lost), (40, 9));
    assert_eq!((l.recent_polls, l.recent_lost), (RECENT_POLLS, 4));
    assert_eq!(l.recent_share(), Some(0.25));
    assert!((l.overall_share().unwrap() - 9.0 / 40.0).abs() < 1e-12);
    // The next poll settles it; a reset keeps the path's record.
    a.poll_sent(id, 82.0);
    assert_eq!((loss(&a).polls, loss(&a).lost), (41, 10));
    a.reset_source(id);
    assert_eq!(loss(&a).polls, 41);
}
