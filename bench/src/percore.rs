//! The per-core comparison (`nts-bench --per-core`): each server on a core of
//! its own, the generator on another, so rates and CPU per request compare
//! servers rather than how they share two cores with the generator. Builds
//! the per-core table and checks the targets of the comparison (printed,
//! not asserted).

use crate::report::{Limit, RunReport, StepResult};
use std::fmt::Write as _;

/// Server names as they appear in results.json.
pub const OURS: &str = "nts-time-server";
pub const CHRONY: &str = "chronyd";
pub const ECHO: &str = "nts-echo";

/// Fixed rate at which targets (c) are checked, requests/s.
pub const TARGET_RATE: f64 = 40_000.0;
/// (a): our CPU per NTS request at saturation, at most this × echo's (NTS-sized datagrams).
pub const MAX_CPU_VS_ECHO: f64 = 1.3;
/// (b): our NTS max rate per core, at least this × chrony's.
pub const MIN_RATE_VS_CHRONY: f64 = 2.0;
/// (c): our CPU per NTS request at [`TARGET_RATE`], at most this × chrony's.
pub const MAX_CPU_VS_CHRONY: f64 = 0.5;
/// (c): our p99 response time at [`TARGET_RATE`], microseconds.
pub const MAX_P99_US: f64 = 200.0;

/// One server and load of a per-core run.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub server: &'a str,
    pub load: &'a str,
    pub find_max: &'a RunReport,
    /// The fixed-rate steps (10k/s, 40k/s, ...).
    pub fixed: &'a [StepResult],
}

impl Row<'_> {
    fn best(&self) -> Option<&StepResult> {
        self.find_max.best.as_ref()
    }

    /// The fixed step at `rate` (offered rate within 0.5%).
    pub fn fixed_at(&self, rate: f64) -> Option<&StepResult> {
        self.fixed
            .iter()
            .find(|s| (s.offered_rate - rate).abs() <= rate * 0.005)
    }

    /// Length of the requests of this load, bytes: the shortest seen, since an
    /// NTS request that also asks for missing cookies (placeholders, after
    /// losses) is longer than the usual one.
    fn request_len(&self) -> usize {
        self.find_max
            .steps
            .iter()
            .chain(self.fixed)
            .map(|s| s.request_len)
            .filter(|&l| l > 0)
            .min()
            .unwrap_or(0)
    }
}

/// Server CPU per answered request, microseconds: server cores / responses per second.
/// Other processes' load (cores) above which a step counts as disturbed.
pub const DISTURBED_CORES: f64 = 0.25;

/// Whether other processes used the machine during the step (find-max steps
/// are repeated twice before they are kept disturbed; fixed steps are not).
fn disturbed(s: &StepResult) -> bool {
    s.disturbed || s.other_load.is_some_and(|o| o > DISTURBED_CORES)
}

pub fn cpu_us_per_request(s: &StepResult) -> Option<f64> {
    let cores = s.server_cpu?;
    (s.recv_rate > 0.0).then(|| cores / s.recv_rate * 1e6)
}

fn find<'a>(rows: &[Row<'a>], server: &str, load: &str) -> Option<Row<'a>> {
    rows.iter()
        .find(|r| r.server == server && r.load == load)
        .copied()
}

/// Echo with datagrams longer than a plain request: the NTS-sized baseline.
fn echo_nts_sized<'a>(rows: &[Row<'a>]) -> Option<Row<'a>> {
    rows.iter()
        .filter(|r| r.server == ECHO && r.request_len() > 48)
        .max_by_key(|r| r.request_len())
        .copied()
}

/// One target of the comparison: a measured value against a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// Measured value (ratio, or µs); None when a measurement is missing.
    pub value: Option<f64>,
    /// `<=` or `>=` threshold.
    pub at_most: bool,
    pub threshold: f64,
    /// Why the value needs care (e.g. a rate limited by the generator).
    pub note: String,
}

impl Target {
    /// Whether the value meets the threshold (None: not measured).
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(if self.at_most {
            v <= self.threshold
        } else {
            v >= self.threshold
        })
    }
}

fn limit_note(who: &str, r: Option<Row<'_>>) -> Option<String> {
    match r?.find_max.limit? {
        Limit::Generator => Some(format!(
            "{who}'s max is the generator's (its core could not send more): a lower bound"
        )),
        Limit::MaxRate | Limit::Time => Some(format!("{who}'s search did not reach its limit")),
        Limit::Loss => None,
    }
}

fn fixed_note(who: &str, s: Option<&StepResult>) -> Option<String> {
    let s = s?;
    if s.loss_pct >= 1.0 {
        Some(format!("{who} lost {:.1}% at that rate", s.loss_pct))
    } else if disturbed(s) {
        Some(format!("{who}'s step was disturbed by other load"))
    } else {
        None
    }
}

/// The targets: (a) CPU per NTS request at saturation vs echo, (b) NTS max
/// rate vs chrony, (c) CPU per NTS request and p99 at 40k/s.
pub fn targets(rows: &[Row<'_>]) -> Vec<Target> {
    let ours = find(rows, OURS, "NTS");
    let chrony = find(rows, CHRONY, "NTS");
    let echo = echo_nts_sized(rows);
    let at_max = |r: Option<Row<'_>>| r.and_then(|r| cpu_us_per_request(r.best()?));
    let max_rate = |r: Option<Row<'_>>| r.and_then(|r| Some(r.best()?.recv_rate));
    let fixed = |r: Option<Row<'_>>| r.and_then(|r| r.fixed_at(TARGET_RATE).cloned());
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let notes = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<Vec<_>>().join("; ");
    let (of, cf) = (fixed(ours), fixed(chrony));
    let k = TARGET_RATE / 1000.0;
    vec![
        Target {
            name: format!(
                "(a) server CPU per NTS request at max: ours / nts-echo ({} datagrams)",
                echo.map_or("NTS-sized".into(), |e| format!("{} B", e.request_len()))
            ),
            value: div(at_max(ours), at_max(echo)),
            at_most: true,
            threshold: MAX_CPU_VS_ECHO,
            note: notes(vec![limit_note("ours", ours), limit_note("echo", echo)]),
        },
        Target {
            name: "(b) NTS max rate per core: ours / chrony".into(),
            value: div(max_rate(ours), max_rate(chrony)),
            at_most: false,
            threshold: MIN_RATE_VS_CHRONY,
            note: notes(vec![limit_note("ours", ours), limit_note("chrony", chrony)]),
        },
        Target {
            name: format!("(c) server CPU per NTS request at {k:.0}k/s: ours / chrony"),
            value: div(
                of.as_ref().and_then(cpu_us_per_request),
                cf.as_ref().and_then(cpu_us_per_request),
            ),
            at_most: true,
            threshold: MAX_CPU_VS_CHRONY,
            note: notes(vec![
                fixed_note("ours", of.as_ref()),
                fixed_note("chrony", cf.as_ref()),
            ]),
        },
        Target {
            name: format!("(c) our NTS p99 response time at {k:.0}k/s (µs)"),
            value: of.as_ref().map(|s| s.latency_us.p99),
            at_most: true,
            threshold: MAX_P99_US,
            note: notes(vec![fixed_note("ours", of.as_ref())]),
        },
    ]
}

fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

fn limit_name(l: Option<Limit>) -> &'static str {
    match l {
        Some(Limit::Loss) => "loss",
        Some(Limit::Generator) => "generator's core",
        Some(Limit::MaxRate) => "max rate tried",
        Some(Limit::Time) => "time budget",
        None => "-",
    }
}

/// The per-core table: one row per server and load; columns for the maximum
/// and for each of `rates` (fixed steps).
pub fn table(rows: &[Row<'_>], rates: &[f64]) -> String {
    let mut s = String::new();
    let mut head = String::from(
        "| server | load | request | max rate, < 1% loss | limited by | server core busy at max | server CPU µs/request at max |",
    );
    let mut rule = String::from("|---|---|---:|---:|---|---:|---:|");
    for r in rates {
        let k = fmt_rate(*r);
        let _ = write!(
            head,
            " at {k}/s: server CPU µs/request | at {k}/s: p50 / p99 µs |"
        );
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for row in rows {
        let best = row.best();
        let _ = write!(
            s,
            "| {} | {} | {} B | {} | {} | {} | {} |",
            row.server,
            row.load,
            row.request_len(),
            best.map_or("none".into(), |b| format!(
                "{}/s{}",
                fmt_rate(b.recv_rate),
                if disturbed(b) { " (!)" } else { "" }
            )),
            limit_name(row.find_max.limit),
            best.and_then(|b| b.server_cpu)
                .map_or("-".into(), |c| format!("{c:.2}")),
            best.and_then(cpu_us_per_request)
                .map_or("-".into(), |c| format!("{c:.1}")),
        );
        for r in rates {
            match row.fixed_at(*r) {
                Some(f) => {
                    let mark = match (f.loss_pct >= 1.0, disturbed(f)) {
                        (true, _) => format!(" ({:.1}% loss)", f.loss_pct),
                        (false, true) => " (!)".into(),
                        _ => String::new(),
                    };
                    let _ = write!(
                        s,
                        " {}{mark} | {:.0} / {:.0} |",
                        cpu_us_per_request(f).map_or("-".into(), |c| format!("{c:.1}")),
                        f.latency_us.p50,
                        f.latency_us.p99
                    );
                }
                None => s.push_str(" - | - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// The targets as a table: value, threshold, met or not.
pub fn targets_table(targets: &[Target]) -> String {
    let mut s = String::from(
        "| target | measured | threshold | result | note |\n|---|---:|---:|---|---|\n",
    );
    for t in targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} {} | {} | {} |",
            t.name,
            t.value.map_or("n/a".into(), |v| if v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }),
            if t.at_most { "≤" } else { "≥" },
            t.threshold,
            match t.met() {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            },
            if t.note.is_empty() { "-" } else { &t.note }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Latency;

    fn step(rate: f64, cores: f64, len: usize, p99: f64) -> StepResult {
        StepResult {
            offered_rate: rate,
            send_rate: rate,
            recv_rate: rate,
            server_cpu: Some(cores),
            request_len: len,
            latency_us: Latency {
                p50: p99 / 4.0,
                p90: p99 / 2.0,
                p99,
                max: p99 * 2.0,
            },
            ..StepResult::default()
        }
    }

    fn report(best: StepResult, limit: Limit) -> RunReport {
        RunReport {
            mode: "x".into(),
            target: "127.0.0.1:1".into(),
            sources: 16,
            sockets: 64,
            ke_sessions: 0,
            aead: None,
            cookie_len: None,
            verify_every: 1,
            loss_threshold_pct: 1.0,
            steps: vec![best.clone()],
            best: Some(best),
            limit: Some(limit),
            wall_s: 1.0,
        }
    }

    struct Data {
        ours: RunReport,
        chrony: RunReport,
        echo_big: RunReport,
        echo_small: RunReport,
        ours_fixed: Vec<StepResult>,
        chrony_fixed: Vec<StepResult>,
    }

    fn data() -> Data {
        Data {
            // 200k/s on one core: 5 µs per request.
            ours: report(step(200_000.0, 1.0, 232, 900.0), Limit::Loss),
            // 80k/s at 0.6 core: 7.5 µs per request.
            chrony: report(step(80_000.0, 0.6, 228, 900.0), Limit::Loss),
            // 250k/s on one core: 4 µs per request.
            echo_big: report(step(250_000.0, 1.0, 232, 500.0), Limit::Generator),
            echo_small: report(step(300_000.0, 1.0, 48, 500.0), Limit::Generator),
            // 40k/s: ours 0.24 core (6 µs), chrony 0.6 core (15 µs).
            ours_fixed: vec![
                step(10_000.0, 0.1, 232, 50.0),
                step(40_000.0, 0.24, 232, 150.0),
            ],
            chrony_fixed: vec![
                step(10_000.0, 0.2, 228, 60.0),
                step(40_000.0, 0.6, 228, 300.0),
            ],
        }
    }

    fn rows(d: &Data) -> Vec<Row<'_>> {
        vec![
            Row {
                server: OURS,
                load: "NTS",
                find_max: &d.ours,
                fixed: &d.ours_fixed,
            },
            Row {
                server: CHRONY,
                load: "NTS",
                find_max: &d.chrony,
                fixed: &d.chrony_fixed,
            },
            Row {
                server: ECHO,
                load: "echo 48 B",
                find_max: &d.echo_small,
                fixed: &[],
            },
            Row {
                server: ECHO,
                load: "echo 232 B",
                find_max: &d.echo_big,
                fixed: &[],
            },
        ]
    }

    #[test]
    fn targets_are_the_ratios_of_the_issue() {
        let d = data();
        let t = targets(&rows(&d));
        assert_eq!(t.len(), 4);
        // (a) 5 / 4 µs, against the NTS-sized echo (not the 48-byte one).
        assert!((t[0].value.unwrap() - 1.25).abs() < 1e-9, "{t:?}");
        assert!(t[0].name.contains("232 B"));
        assert_eq!(t[0].met(), Some(true));
        assert!(t[0].note.contains("echo's max is the generator's"));
        // (b) 200k / 80k.
        assert!((t[1].value.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(t[1].met(), Some(true));
        // (c) 6 / 15 µs, and p99 150 µs.
        assert!((t[2].value.unwrap() - 0.4).abs() < 1e-9);
        assert_eq!(t[2].met(), Some(true));
        assert_eq!(t[3].value, Some(150.0));
        assert_eq!(t[3].met(), Some(true));
    }

    #[test]
    fn a_missed_or_missing_target_is_reported_as_such() {
        let mut d = data();
        d.ours_fixed[1].latency_us.p99 = 250.0;
        d.ours_fixed[1].loss_pct = 2.0;
        d.chrony.best.as_mut().unwrap().recv_rate = 150_000.0;
        let t = targets(&rows(&d));
        assert_eq!(t[1].met(), Some(false));
        assert_eq!(t[3].met(), Some(false));
        assert!(t[3].note.contains("lost 2.0%"));
        let table = targets_table(&t);
        assert_eq!(table.matches("**not met**").count(), 2, "{table}");

        // Without chrony, (b) and the CPU half of (c) are not measured.
        let d = data();
        let r: Vec<Row<'_>> = rows(&d)
            .into_iter()
            .filter(|r| r.server != CHRONY)
            .collect();
        let t = targets(&r);
        assert_eq!(t[1].met(), None);
        assert_eq!(t[2].met(), None);
        assert_eq!(t[0].met(), Some(true));
        assert!(targets_table(&t).contains("not measured"));
    }

    #[test]
    fn the_table_has_a_row_per_server_and_load_and_columns_per_rate() {
        let d = data();
        let t = table(&rows(&d), &[10_000.0, 40_000.0]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 4, "{t}");
        assert!(lines[0].contains("at 40.0k/s: p50 / p99 µs"));
        // ours NTS: 200k/s, 1 core, 5 µs at max; 10 µs at 10k/s, 6 µs at 40k/s.
        assert_eq!(
            lines[2],
            "| nts-time-server | NTS | 232 B | 200.0k/s | loss | 1.00 | 5.0 | 10.0 | 12 / 50 | 6.0 | 38 / 150 |"
        );
        assert!(lines[4].contains("| generator's core |"));
        assert!(lines[4].ends_with("| - | - | - | - |"));

        // A fixed step with other load on the machine is marked, one with loss says so.
        let mut d = data();
        d.chrony_fixed[0].other_load = Some(0.5);
        d.chrony_fixed[1].loss_pct = 3.0;
        let t = table(&rows(&d), &[10_000.0, 40_000.0]);
        let chrony = t.lines().nth(3).unwrap();
        assert!(chrony.contains("| 20.0 (!) | 15 / 60 |"), "{chrony}");
        assert!(chrony.contains("| 15.0 (3.0% loss) |"), "{chrony}");
    }
}
