//! Prometheus metrics and readiness from the agent's status report.

use crate::status::StatusReport;
use nts_ops::metrics::Exposition;

/// Ready when synchronized (discipline), or observing with a recent measurement.
pub fn readiness(r: &StatusReport) -> Result<(), String> {
    if r.panicked {
        return Err("offset beyond the panic threshold".into());
    }
    if r.observe_only {
        if r.has_measurement() {
            return Ok(());
        }
        return Err("observing, no measurement yet".into());
    }
    if r.synchronized {
        Ok(())
    } else {
        Err("not synchronized".into())
    }
}

pub fn render(r: &StatusReport) -> String {
    let mut e = Exposition::new();
    e.gauge(
        "nts_client_synchronized",
        "1 when the agent considers the clock synchronized.",
        r.synchronized as u8,
    );
    e.gauge(
        "nts_client_observe_only",
        "1 when the agent only measures.",
        r.observe_only as u8,
    );
    if let Some(o) = r.offset {
        e.gauge(
            "nts_client_offset_seconds",
            "Estimated offset: true time minus this clock.",
            o,
        );
    }
    e.gauge(
        "nts_client_frequency_ppm",
        "Frequency correction in force.",
        r.frequency_ppm,
    );
    e.counter(
        "nts_client_clock_updates_total",
        "Updates of the discipline loop.",
        r.updates,
    );
    e.counter(
        "nts_client_clock_steps_total",
        "Clock steps.",
        r.steps as u64,
    );
    e.counter(
        "nts_client_clock_adjustments_total",
        "Corrections applied to the system clock.",
        r.clock_commands,
    );
    let labels: Vec<[(&str, &str); 1]> = r
        .sources
        .iter()
        .map(|s| [("source", s.name.as_str())])
        .collect();
    let gauge = |f: &dyn Fn(&crate::status::SourceReport) -> f64| -> Vec<(&[(&str, &str)], f64)> {
        labels
            .iter()
            .zip(&r.sources)
            .map(|(l, s)| (&l[..], f(s)))
            .collect()
    };
    let counter = |f: &dyn Fn(&crate::status::SourceReport) -> u64| -> Vec<(&[(&str, &str)], u64)> {
        labels
            .iter()
            .zip(&r.sources)
            .map(|(l, s)| (&l[..], f(s)))
            .collect()
    };
    e.gauges(
        "nts_client_source_offset_seconds",
        "Filtered offset per source.",
        &gauge(&|s| s.offset.unwrap_or(f64::NAN)),
    );
    e.gauges(
        "nts_client_source_delay_seconds",
        "Round-trip delay per source.",
        &gauge(&|s| s.delay.unwrap_or(f64::NAN)),
    );
    e.gauges(
        "nts_client_source_reach",
        "Reachability register per source.",
        &gauge(&|s| s.reach as f64),
    );
    e.gauges(
        "nts_client_source_recent_loss_ratio",
        "Share of the last 16 polls without an answer, per source (NaN before the first counted poll).",
        &gauge(&|s| s.loss().recent_share().unwrap_or(f64::NAN)),
    );
    e.counters(
        "nts_client_source_polls_lost_total",
        "Polls without an answer per source (the poll in flight not counted).",
        &counter(&|s| s.polls_lost),
    );
    e.gauges(
        "nts_client_source_selected",
        "1 for the system peer, 0.5 combined, 0 otherwise.",
        &gauge(&|s| match s.state.as_str() {
            "selected" => 1.0,
            "combined" => 0.5,
            _ => 0.0,
        }),
    );
    e.gauges(
        "nts_client_source_cookies",
        "NTS cookies held per source.",
        &gauge(&|s| s.cookies as f64),
    );
    e.counters(
        "nts_client_source_naks_total",
        "NTS NAKs per source.",
        &counter(&|s| s.naks),
    );
    e.counters(
        "nts_client_source_auth_failures_total",
        "Datagrams whose NTS authenticator failed (forged or corrupted), per source.",
        &counter(&|s| s.auth_failures),
    );
    e.counters(
        "nts_client_source_ignored_total",
        "Datagrams ignored while waiting for an answer (forged, stray, replayed, unauthenticated, garbage), per source.",
        &counter(&|s| s.ignored),
    );
    e.counters(
        "nts_client_source_key_exchanges_total",
        "Successful NTS key exchanges per source.",
        &counter(&|s| s.ke_ok),
    );
    e.counters(
        "nts_client_source_ke_failures_total",
        "Failed NTS key exchanges per source.",
        &counter(&|s| s.ke_failures),
    );
    e.counters(
        "nts_client_source_timeouts_total",
        "Unanswered requests per source.",
        &counter(&|s| s.timeouts),
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family the agent exports (with an offset and a source, so all
    /// are rendered) and every `nts_client_*` name in its sources is
    /// documented in docs/client.md; per-source counts are counters.
    #[test]
    fn every_metric_is_documented_and_counts_are_counters() {
        let r = StatusReport {
            offset: Some(0.001),
            sources: vec![crate::status::SourceReport {
                name: "time.example".into(),
                naks: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&r);
        assert!(
            text.contains("# TYPE nts_client_source_naks_total counter\nnts_client_source_naks_total{source=\"time.example\"} 2\n"),
            "{text}"
        );
        for name in nts_ops::metrics::family_names(&text) {
            let kind = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
                .unwrap_or_default();
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
        }
        let docs = include_str!("../../docs/client.md");
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let missing = nts_ops::metrics::missing_from_docs(&text, &src, "nts_client_", docs);
        assert!(missing.is_empty(), "not in docs/client.md: {missing:?}");
    }
}
