//! The status snapshot the agent publishes for `nts-client status`,
//! /metrics and /readyz, and the log lines for selection, leap and panic
//! changes (once per change).

use crate::agent::Shared;
use crate::sources::{host_port, Slot};
use crate::status::{SourceReport, StatusReport, Tracking};
use nts_proto::clock::{Agent, AgentStatus, LeapStatus, SourceId, SourceState};
use nts_proto::time::{MonoTime, UnixTime};
use std::time::SystemTime;

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

fn state_label(s: SourceState) -> &'static str {
    match s {
        SourceState::NoData => "no_data",
        SourceState::Unselectable => "unselectable",
        SourceState::Falseticker => "falseticker",
        SourceState::Outlier => "outlier",
        SourceState::Survivor => "combined",
        SourceState::SystemPeer => "selected",
    }
}

/// What status shows of one source.
pub fn source_report(agent: &Agent, s: &Slot, now: MonoTime) -> SourceReport {
    let ss = agent.source_status(s.id, now.as_secs_f64());
    let f = ss.as_ref().and_then(|x| x.filter);
    let reach = ss.map_or(0, |x| x.reach);
    let loss = ss.map(|x| x.loss).unwrap_or_default();
    let mut state = ss.map_or("no_data", |x| state_label(x.state));
    // The last selection may predate the silence: never show an unreachable source as used.
    if reach == 0 && state != "no_data" {
        state = "unreachable";
    }
    if s.source.stopped_by().is_some() {
        state = "stopped";
    }
    let nts = s.source.nts_half();
    let assoc = nts.and_then(|n| n.association());
    let c = s.source.counters();
    let xleave = s.source.interleave_counts();
    SourceReport {
        name: s.name.clone(),
        kind: format!("{:?}", s.kind).to_lowercase(),
        authenticated: s.source.authenticated(),
        state: state.to_string(),
        reach,
        poll: ss.map_or(0.0, |x| x.poll_interval),
        offset: f.map(|f| f.offset).or(s.last_offset),
        delay: f.map(|f| f.delay).or(s.last_delay),
        jitter: f.map(|f| f.jitter),
        stratum: f.map(|f| f.server.stratum),
        ntp_server: assoc.map(|a| host_port(&a.ntp_host, a.ntp_port)),
        ntp_address: s.source.address().map(|a| a.to_string()),
        aead: assoc.map(|a| a.aead.name().to_string()),
        ke_age: nts
            .and_then(|n| n.association_age(now))
            .map(|d| d.as_secs_f64()),
        ke_next_in: nts
            .filter(|_| s.source.stopped_by().is_none())
            .and_then(|n| n.next_key_exchange_in(now))
            .map(|d| d.as_secs_f64()),
        ke_ok: c.ke_ok,
        ke_failures: c.ke_failures,
        cookies: nts.map_or(0, |n| n.cookies()),
        naks: c.naks,
        auth_failures: c.ignored_forged,
        ignored: c.ignored(),
        ignored_unauthenticated: c.ignored_unauthenticated,
        ignored_mismatch: c.ignored_mismatch,
        ignored_malformed: c.ignored_malformed,
        requests: c.requests,
        timeouts: c.timeouts,
        missed_polls: s.source.missed_polls(),
        rekey_due: nts
            .and_then(|n| n.rekey_reason())
            .map(|r| r.as_str().to_string()),
        kiss: s
            .source
            .last_kiss()
            .map(|k| nts_proto::ntp_packet::kiss::text(&k)),
        last_sample_age: s
            .last_sample
            .map(|t| unix_now().saturating_since(t).as_secs_f64()),
        last_error: s.last_error.clone(),
        xleave: xleave.is_some(),
        interleaved_answers: xleave.map_or(0, |x| x.0),
        basic_answers: xleave.map_or(0, |x| x.1),
        recent_polls: loss.recent_polls,
        recent_lost: loss.recent_lost,
        polls_counted: loss.polls,
        polls_lost: loss.lost,
    }
}

/// What the shell remembers between reports.
#[derive(Default)]
pub struct TrackState {
    updates_seen: u64,
    last_update_unix: Option<f64>,
    system_peer: Option<SourceId>,
    leap: LeapStatus,
    panicked: bool,
}

/// Say when the panic threshold starts refusing the offset (naming it and
/// the key) and when it stops: once per change, not once per poll.
fn log_panic_change(agent: &Agent, st: &AgentStatus, observe: bool, track: &mut TrackState) {
    if st.panicked == track.panicked {
        return;
    }
    track.panicked = st.panicked;
    let threshold = agent
        .config()
        .discipline
        .panic_threshold
        .unwrap_or(f64::INFINITY);
    match st.refused_offset.filter(|_| st.panicked) {
        Some(offset) => tracing::warn!(
            offset,
            threshold,
            "offset beyond clock.panic_threshold: {}",
            if observe {
                "observe-only, but disciplining would refuse to correct the clock"
            } else {
                "refusing to correct the clock"
            }
        ),
        None => tracing::info!(threshold, "offset back within clock.panic_threshold"),
    }
}

/// Refresh the shared report.
pub fn publish(
    shared: &Shared,
    agent: &Agent,
    slots: &[Slot],
    now: MonoTime,
    observe: bool,
    commands: u64,
    track: &mut TrackState,
) {
    let cache: Vec<SourceReport> = slots.iter().map(|s| source_report(agent, s, now)).collect();
    let st = agent.status(now.as_secs_f64());
    if st.updates != track.updates_seen {
        track.updates_seen = st.updates;
        track.last_update_unix = Some(unix_now().as_secs_f64());
    }
    let ids = agent.source_ids();
    let name_of = |id: SourceId| ids.iter().position(|x| *x == id).and_then(|i| cache.get(i));
    // Selection and leap changes, logged once each.
    let peer = st.selection.as_ref().ok().map(|s| s.system_peer);
    if peer != track.system_peer {
        match peer.and_then(name_of) {
            Some(r) => tracing::info!(source = %r.name, "selected as the reference source"),
            None => tracing::warn!("no source selectable: {:?}", st.selection.as_ref().err()),
        }
        track.system_peer = peer;
    }
    log_panic_change(agent, &st, observe, track);
    if st.leap.announced != track.leap {
        track.leap = st.leap.announced;
        match (st.leap.announced, st.leap.at_unix) {
            (LeapStatus::None, _) => tracing::info!("no leap second announced any more"),
            (l, Some(at)) => tracing::warn!(
                source = st.leap.source.as_str(),
                "leap second announced: {}{}",
                nts_proto::clock::leap::format_leap_second(at, l),
                if observe {
                    " (observe-only: reported, the kernel is not told)"
                } else {
                    ""
                }
            ),
            (l, None) => tracing::warn!("leap second announced: {}", l.as_str()),
        }
    }
    let t = st.tracking.as_ref();
    let peer_report = t.and_then(|t| name_of(t.reference));
    let tracking = Tracking {
        reference: peer_report.map(|r| r.name.clone()),
        reference_time_server: peer_report.and_then(|r| r.ntp_address.clone()),
        stratum: t.map(|t| t.stratum),
        reference_time_unix: t
            .map(|t| {
                t.reference_time
                    .to_unix_f64(nts_proto::clock::agent::NTP_ERA_PIVOT_UNIX)
            })
            .filter(|u| *u > 0.0),
        system_time_offset: st.offset,
        last_offset: t.and_then(|t| t.last_offset),
        rms_offset: t.and_then(|t| t.rms_offset),
        frequency_ppm: st.frequency_ppm,
        estimated_frequency_ppm: st.estimated_frequency_ppm,
        residual_frequency_ppm: st.residual_frequency_ppm,
        skew_ppm: st.frequency_sd_ppm,
        root_delay: t.map(|t| t.root_delay),
        root_dispersion: t.map(|t| t.root_dispersion),
        update_interval: t
            .and_then(|t| t.update_interval)
            .unwrap_or_else(|| 2f64.powi(i32::from(st.poll_exponent))),
        last_update_age: t.and_then(|t| t.last_update_age),
        last_sample_age: t.and_then(|t| t.last_sample_age),
        leap_status: match (st.leap.status, st.leap.announced) {
            (LeapStatus::Insert, _) => "insert second (armed)".into(),
            (LeapStatus::Delete, _) => "delete second (armed)".into(),
            (_, LeapStatus::Insert) => "insert second at the end of the month".into(),
            (_, LeapStatus::Delete) => "delete second at the end of the month".into(),
            _ if t.is_some() => "normal".into(),
            _ => "not synchronised".into(),
        },
        leap_at: st
            .leap
            .at_unix
            .filter(|_| st.leap.announced != LeapStatus::None)
            .map(|a| nts_proto::clock::leap::format_leap_second(a, st.leap.announced)),
    };
    let reachable_peer = peer_report.is_some_and(|r| r.reach != 0);
    let report = StatusReport {
        observe_only: observe,
        synchronized: st.synchronized && reachable_peer,
        panicked: st.panicked,
        offset: st.offset,
        offset_sd: st.offset_sd,
        frequency_ppm: st.frequency_ppm,
        poll_exponent: st.poll_exponent,
        updates: st.updates,
        steps: st.steps,
        clock_commands: commands,
        last_update_unix: track.last_update_unix,
        tracking,
        sources: cache.clone(),
    };
    *shared.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
}
