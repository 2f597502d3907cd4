//! `summary.md`: the tables made from `results.json`.

use crate::results::{Measurement, PerCore, Results};
use crate::SMALL_RCVBUF;
use nts_bench::percore;
use nts_bench::report::StepResult;
use std::fmt::Write as _;

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

pub(crate) fn best(m: &Measurement) -> Option<&StepResult> {
    m.find_max.best.as_ref()
}

pub(crate) fn find<'a>(r: &'a Results, server: &str, load: &str) -> Option<&'a Measurement> {
    r.measurements
        .iter()
        .find(|m| m.server == server && m.load == load)
}

pub(crate) fn ratio(a: Option<&Measurement>, b: Option<&Measurement>) -> String {
    match (a.and_then(best), b.and_then(best)) {
        (Some(x), Some(y)) if y.recv_rate > 0.0 => format!("{:.2}", x.recv_rate / y.recv_rate),
        _ => "n/a".into(),
    }
}

/// Machine, build, settings, options and load of a run.
pub(crate) fn header(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {} x {}, Linux {}; {}",
        r.cpus, r.cpu_model, r.kernel, r.settings
    );
    let _ = writeln!(s, "Build: {}", r.build);
    if let Some(v) = &r.chrony_version {
        let _ = writeln!(s, "chrony: {v}");
    }
    if !r.servers.is_empty() {
        let _ = writeln!(s, "Servers: {}", r.servers.join(", "));
    }
    if !r.ours_server_options.is_empty() {
        let _ = writeln!(
            s,
            "nts-time-server extra [server] options: {}",
            r.ours_server_options
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if r.loadavg_start.is_some() || r.loadavg_end.is_some() {
        let _ = writeln!(
            s,
            "Load average (1, 5, 15 min) before: {}, after: {}",
            r.loadavg_start.as_deref().unwrap_or("?"),
            r.loadavg_end.as_deref().unwrap_or("?")
        );
    }
    s
}

/// RSS table and notes, common to both summaries.
pub(crate) fn footer(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| process | peak RSS (VmHWM) | RSS at end |");
    let _ = writeln!(s, "|---|---:|---:|");
    for x in &r.rss {
        let f = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            x.process,
            f(x.vm_hwm_kib),
            f(x.vm_rss_kib)
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s);
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The per-core summary: the per-core table, the targets, pinning, memory.
pub(crate) fn summarize_per_core(r: &Results, p: &PerCore) -> String {
    let mut s = header(r);
    let _ = writeln!(
        s,
        "Per core: every server pinned to CPU {} (nts-time-server and nts-echo with 1 worker; chronyd with all its threads and NTS-KE helpers), the load generator to CPU {}; fixed steps of {} s.",
        p.server_cpu, p.gen_cpu, p.fixed_secs
    );
    let _ = writeln!(s);
    let rows: Vec<percore::Row<'_>> = r
        .measurements
        .iter()
        .map(|m| percore::Row {
            server: &m.server,
            load: &m.load,
            find_max: &m.find_max,
            fixed: &m.fixed_steps,
        })
        .collect();
    s.push_str(&percore::table(&rows, &p.fixed_rates));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "(!) = other processes used more than {} core during that step (a find-max step is repeated twice before it is kept) or, for a fixed step, just before it.",
        percore::DISTURBED_CORES
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Targets (computed, not asserted):");
    let _ = writeln!(s);
    s.push_str(&percore::targets_table(&percore::targets(&rows)));
    let _ = writeln!(s);
    if !r.pinning.is_empty() {
        let _ = writeln!(s, "Pinning (Cpus_allowed_list of every thread):");
        let _ = writeln!(s);
        for l in &r.pinning {
            let _ = writeln!(s, "- {l}");
        }
        let _ = writeln!(s);
    }
    s.push_str(&footer(r));
    s
}

pub(crate) fn summarize(r: &Results) -> String {
    if let Some(p) = &r.per_core {
        return summarize_per_core(r, p);
    }
    let mut s = header(r);
    let _ = writeln!(s);
    max_rate_table(&mut s, r);
    let _ = writeln!(s);
    latency_table(&mut s, r);
    ratios(&mut s, r);
    s.push_str(&footer(r));
    s
}

/// The shared-cores table: max rate, latency and CPU of every measurement.
fn max_rate_table(s: &mut String, r: &Results) {
    let fixed_rate = r
        .measurements
        .first()
        .and_then(|m| m.fixed.as_ref())
        .map_or(0.0, |f| f.steps[0].offered_rate);
    let _ = writeln!(
        s,
        "| server | load | max rate, < 1% loss | limited by | latency at max: p50 / p90 / p99 / max (us) | server CPU at max: cores, us/request | generator CPU (cores) | other load (cores) | at {} /s: p50 / p99 (us), server us/request |",
        fmt_rate(fixed_rate)
    );
    let _ = writeln!(s, "|---|---|---:|---|---|---|---:|---:|---|");
    for m in &r.measurements {
        let (rate, lat, scpu, gcpu, other) = match best(m) {
            Some(b) => (
                format!("{}/s", fmt_rate(b.recv_rate)),
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    b.latency_us.p50, b.latency_us.p90, b.latency_us.p99, b.latency_us.max
                ),
                b.server_cpu.map_or("-".into(), |c| {
                    format!("{c:.2}, {:.1}", c / b.recv_rate.max(1.0) * 1e6)
                }),
                format!("{:.2}", b.gen_cpu),
                b.other_load.map_or("-".into(), |o| {
                    format!("{o:.2}{}", if b.disturbed { " (!)" } else { "" })
                }),
            ),
            None => (
                "none".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        let fixed = match m.fixed.as_ref().map(|f| &f.steps[0]) {
            Some(f) => format!(
                "{:.0} / {:.0}, {}{}",
                f.latency_us.p50,
                f.latency_us.p99,
                f.server_cpu
                    .filter(|_| f.recv_rate > 0.0)
                    .map_or("-".into(), |c| format!("{:.1}", c / f.recv_rate * 1e6)),
                if f.loss_pct >= 1.0 {
                    format!(" ({:.1}% loss)", f.loss_pct)
                } else {
                    String::new()
                }
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.server,
            m.load,
            rate,
            m.find_max.limit.map_or("-".into(), |l| match l {
                nts_bench::report::Limit::Loss => "loss".to_string(),
                nts_bench::report::Limit::Generator => "CPU (generator short)".to_string(),
                nts_bench::report::Limit::MaxRate => "max rate".to_string(),
                nts_bench::report::Limit::Time => "time".to_string(),
            }),
            lat,
            scpu,
            gcpu,
            other,
            fixed
        );
    }
}

/// Latency at the offered rates the find-max searches share.
fn latency_table(s: &mut String, r: &Results) {
    // Latency at the offered rates every search went through.
    let mut common: Vec<f64> = Vec::new();
    for m in &r.measurements {
        for st in &m.find_max.steps {
            if !common.iter().any(|&c| (c - st.offered_rate).abs() < 0.5) {
                common.push(st.offered_rate);
            }
        }
    }
    common.retain(|&c| {
        r.measurements
            .iter()
            .filter(|m| {
                m.find_max
                    .steps
                    .iter()
                    .any(|st| (st.offered_rate - c).abs() < 0.5)
            })
            .count()
            >= 3
    });
    common.sort_by(|a, b| a.total_cmp(b));
    if !common.is_empty() {
        let _ = writeln!(
            s,
            "Latency p50 / p99 (us) at the offered rates the searches share (find-max steps; * = loss >= 1% or generator short):"
        );
        let _ = writeln!(s);
        let mut head = String::from("| server | load |");
        let mut rule = String::from("|---|---|");
        for c in &common {
            let _ = write!(head, " {}/s |", fmt_rate(*c));
            rule.push_str("---|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for m in &r.measurements {
            let _ = write!(s, "| {} | {} |", m.server, m.load);
            for c in &common {
                match m
                    .find_max
                    .steps
                    .iter()
                    .find(|st| (st.offered_rate - c).abs() < 0.5)
                {
                    Some(st) => {
                        let bad = st.loss_pct >= m.find_max.loss_threshold_pct
                            || st.send_rate < 0.97 * st.offered_rate;
                        let _ = write!(
                            s,
                            " {:.0} / {:.0}{} |",
                            st.latency_us.p50,
                            st.latency_us.p99,
                            if bad { " *" } else { "" }
                        );
                    }
                    None => s.push_str(" - |"),
                }
            }
            s.push('\n');
        }
        let _ = writeln!(s);
    }
}

/// Ratios of max rates between servers and loads.
fn ratios(s: &mut String, r: &Results) {
    let ours_nts = find(r, "nts-time-server", "NTS");
    let ours_plain = find(r, "nts-time-server", "plain");
    let ch_nts = find(r, "chronyd", "NTS");
    let ch_plain = find(r, "chronyd", "plain");
    let echo = find(r, "nts-echo", "echo 48 B");
    let _ = writeln!(s, "Ratios of max rates:");
    let _ = writeln!(s);
    let _ = writeln!(s, "- NTS, ours / chrony: {}", ratio(ours_nts, ch_nts));
    let _ = writeln!(s, "- plain, ours / chrony: {}", ratio(ours_plain, ch_plain));
    let _ = writeln!(s, "- ours, plain / echo: {}", ratio(ours_plain, echo));
    let _ = writeln!(s, "- chrony, plain / echo: {}", ratio(ch_plain, echo));
    let _ = writeln!(s, "- ours, NTS / plain: {}", ratio(ours_nts, ours_plain));
    let _ = writeln!(s, "- chrony, NTS / plain: {}", ratio(ch_nts, ch_plain));
    if let Some(small) = find(r, SMALL_RCVBUF, "NTS") {
        let _ = writeln!(
            s,
            "- NTS, ours with the kernel-default receive buffer / chrony: {}",
            ratio(Some(small), ch_nts)
        );
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_bench::report::{Latency, Limit, RunReport};

    fn step(rate: f64, cores: f64, len: usize) -> StepResult {
        StepResult {
            offered_rate: rate,
            send_rate: rate,
            recv_rate: rate * 0.999_7,
            server_cpu: Some(cores),
            request_len: len,
            latency_us: Latency {
                p50: 31.3,
                p90: 70.1,
                p99: 123.456_7,
                max: 999.0,
            },
            ..StepResult::default()
        }
    }

    fn measurement(server: &str, load: &str, max: f64, len: usize) -> Measurement {
        let best = step(max, 0.987_654_321, len);
        Measurement {
            server: server.into(),
            load: load.into(),
            find_max: RunReport {
                mode: "nts".into(),
                target: "127.0.0.1:1".into(),
                sources: 16,
                sockets: 64,
                ke_sessions: 256,
                aead: None,
                cookie_len: None,
                verify_every: 1,
                loss_threshold_pct: 1.0,
                steps: vec![step(20_000.0, 0.1, len), best.clone()],
                best: Some(best),
                limit: Some(Limit::Loss),
                wall_s: 20.0,
            },
            fixed: None,
            fixed_steps: vec![step(10_000.0, 0.123_456, len), step(40_000.0, 0.333_3, len)],
            background_cores: Some(0.01),
        }
    }

    fn per_core_results() -> Results {
        Results {
            started_unix: 1,
            cpus: 2,
            kernel: "6.1".into(),
            cpu_model: "test".into(),
            chrony_version: Some("chronyd 4.3".into()),
            build: "git abc".into(),
            settings: "workers 1".into(),
            measurements: vec![
                measurement(percore::OURS, "NTS", 151_234.5, 232),
                measurement(percore::OURS, "plain", 201_234.5, 48),
                measurement(percore::CHRONY, "NTS", 70_321.9, 228),
                measurement(percore::ECHO, "echo 232 B", 180_111.1, 232),
                measurement(percore::ECHO, "echo 48 B", 190_111.1, 48),
            ],
            rss: Vec::new(),
            notes: vec!["a note".into()],
            per_core: Some(PerCore {
                server_cpu: 1,
                gen_cpu: 0,
                fixed_rates: vec![10_000.0, 40_000.0],
                fixed_secs: 2.5,
            }),
            servers: vec!["ours".into(), "chrony".into(), "echo".into()],
            ours_server_options: vec!["receive_buffer = 0".into()],
            loadavg_start: Some("0.10 0.20 0.30".into()),
            loadavg_end: Some("1.00 0.50 0.40".into()),
            pinning: vec!["nts-time-server after start: pid 1: 3 threads on CPU 1".into()],
        }
    }

    #[test]
    fn summarize_of_the_written_json_is_the_summary() {
        let r = per_core_results();
        let json = serde_json::to_string_pretty(&r).unwrap();
        let back: Results = serde_json::from_str(&json).unwrap();
        let s = summarize(&back);
        assert_eq!(s, summarize(&r));
        assert!(
            s.contains("| nts-time-server | NTS | 232 B | 151.2k/s |"),
            "{s}"
        );
        assert!(
            s.contains("(b) NTS max rate per core: ours / chrony | 2.15 | ≥ 2 | met |"),
            "{s}"
        );
        assert!(s.contains("`receive_buffer = 0`"));
        assert!(s.contains("before: 0.10 0.20 0.30, after: 1.00 0.50 0.40"));
        assert!(s.contains("- nts-time-server after start: pid 1: 3 threads on CPU 1"));
    }

    #[test]
    fn results_written_before_the_per_core_mode_still_summarize() {
        let mut r = per_core_results();
        r.per_core = None;
        let mut v = serde_json::to_value(&r).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "per_core",
            "servers",
            "ours_server_options",
            "loadavg_start",
            "loadavg_end",
            "pinning",
        ] {
            o.remove(k);
        }
        for m in o["measurements"].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("fixed_steps");
        }
        let old: Results = serde_json::from_value(v).unwrap();
        let s = summarize(&old);
        assert!(s.contains("Ratios of max rates:"), "{s}");
        assert!(!s.contains("Targets"));
    }
}
