//! The agent's status: what `nts-client status` shows (like `chronyc sources`
//! plus `ntpq -c nts`), served as JSON on a local Unix socket.

use nts_proto::clock::PollLoss;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceReport {
    pub name: String,
    pub kind: String,
    pub authenticated: bool,
    /// selected, combined, outlier, falseticker, unselectable, no_data.
    pub state: String,
    pub reach: u8,
    /// Poll interval, seconds.
    pub poll: f64,
    pub offset: Option<f64>,
    pub delay: Option<f64>,
    pub jitter: Option<f64>,
    pub stratum: Option<u8>,
    /// The time server NTS-KE sent this source to (host:port as negotiated).
    pub ntp_server: Option<String>,
    /// The address requests go to now.
    pub ntp_address: Option<String>,
    /// The negotiated AEAD algorithm.
    pub aead: Option<String>,
    /// Seconds since the last successful NTS-KE.
    pub ke_age: Option<f64>,
    /// Seconds until the next NTS-KE attempt, when one is wanted (0: now).
    #[serde(default)]
    pub ke_next_in: Option<f64>,
    pub ke_ok: u64,
    pub ke_failures: u64,
    pub cookies: usize,
    pub naks: u64,
    /// Datagrams whose authenticator failed (forged or corrupted).
    pub auth_failures: u64,
    /// Datagrams ignored for any reason while waiting for an answer.
    pub ignored: u64,
    pub ignored_unauthenticated: u64,
    pub ignored_mismatch: u64,
    pub ignored_malformed: u64,
    /// NTS requests sent.
    pub requests: u64,
    pub timeouts: u64,
    /// Polls in a row without an authentic answer.
    pub missed_polls: u32,
    /// Why a new key exchange is due, if one is.
    pub rekey_due: Option<String>,
    pub kiss: Option<String>,
    /// Seconds since the last usable sample.
    pub last_sample_age: Option<f64>,
    pub last_error: Option<String>,
    /// Interleaved mode asked for (`xleave`).
    #[serde(default)]
    pub xleave: bool,
    /// Answers that were interleaved, and answers that were basic (since start).
    #[serde(default)]
    pub interleaved_answers: u64,
    #[serde(default)]
    pub basic_answers: u64,
    /// Polls without an answer: of the last (up to 16) counted polls, and
    /// since start (the poll in flight is not counted).
    #[serde(default)]
    pub recent_polls: u32,
    #[serde(default)]
    pub recent_lost: u32,
    #[serde(default)]
    pub polls_counted: u64,
    #[serde(default)]
    pub polls_lost: u64,
}

impl SourceReport {
    /// Its polls without an answer, as the agent counted them.
    pub fn loss(&self) -> PollLoss {
        PollLoss {
            recent_polls: self.recent_polls,
            recent_lost: self.recent_lost,
            polls: self.polls_counted,
            lost: self.polls_lost,
        }
    }
}

/// A share as a percentage, or "-".
fn percent(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
}

/// What `chronyc tracking` shows: the reference and how well the clock follows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tracking {
    /// The selected source (system peer).
    pub reference: Option<String>,
    /// The address of its time server.
    pub reference_time_server: Option<String>,
    /// Our stratum: the reference's plus one.
    pub stratum: Option<u8>,
    /// Unix time of the last clock update.
    pub reference_time_unix: Option<f64>,
    /// Estimated offset of the system clock (true minus ours), seconds.
    pub system_time_offset: Option<f64>,
    /// Offset estimate at the last update, and the RMS of recent ones (seconds).
    pub last_offset: Option<f64>,
    pub rms_offset: Option<f64>,
    /// Frequency correction in force (ppm; always 0 when observing).
    pub frequency_ppm: f64,
    /// The clock's frequency error as estimated (ppm): what discipline would set.
    pub estimated_frequency_ppm: Option<f64>,
    /// Frequency error not yet corrected, and its standard deviation (ppm).
    pub residual_frequency_ppm: Option<f64>,
    pub skew_ppm: Option<f64>,
    /// To the primary reference, through the selected source (seconds).
    pub root_delay: Option<f64>,
    pub root_dispersion: Option<f64>,
    /// Seconds between clock updates now.
    pub update_interval: f64,
    /// Seconds since the last update.
    pub last_update_age: Option<f64>,
    /// Seconds since the reference's newest sample.
    pub last_sample_age: Option<f64>,
    /// normal, insert/delete second (armed or at the end of the month), not synchronised.
    pub leap_status: String,
    /// When the announced leap second happens, for people.
    pub leap_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub observe_only: bool,
    pub synchronized: bool,
    pub panicked: bool,
    /// Estimated offset of our clock from true time... as the agent sees it (true minus ours).
    pub offset: Option<f64>,
    pub offset_sd: Option<f64>,
    pub frequency_ppm: f64,
    pub poll_exponent: i8,
    pub updates: u64,
    pub steps: u32,
    /// Corrections actually applied to the system clock (always 0 when observing).
    pub clock_commands: u64,
    /// Unix time of the last clock update (None before the first).
    pub last_update_unix: Option<f64>,
    pub tracking: Tracking,
    pub sources: Vec<SourceReport>,
}

/// A Unix time for people: `2026-12-31 23:59:59.123 UTC`.
pub fn format_unix(t: f64) -> String {
    let secs = t.floor();
    let nanos = ((t - secs) * 1e9) as u32;
    chrono::DateTime::from_timestamp(secs as i64, nanos.min(999_999_999))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| format!("{t} (Unix)"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.9} seconds"))
}

fn us(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{:+.1}us", v * 1e6),
        None => "-".into(),
    }
}

impl StatusReport {
    /// The time of the newest successful measurement from any source, if any.
    pub fn has_measurement(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.offset.is_some() && s.reach != 0)
    }

    /// One line: mode, offset, and each source's state.
    pub fn brief(&self) -> String {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} {} reach {:o} offset {} {}",
                    s.name,
                    s.state,
                    s.reach,
                    us(s.offset),
                    if s.authenticated {
                        format!("NTS, {} cookies", s.cookies)
                    } else {
                        "unauthenticated".into()
                    }
                )
            })
            .collect();
        format!(
            "{}: offset {} | {}",
            if self.observe_only {
                "observe-only"
            } else {
                "disciplining"
            },
            us(self.offset),
            sources.join(" | ")
        )
    }

    /// Text like `chronyc tracking`.
    pub fn render_tracking(&self) -> String {
        let t = &self.tracking;
        let mut o = String::new();
        let mut line = |k: &str, v: String| o.push_str(&format!("{k:<20}: {v}\n"));
        line(
            "Reference source",
            match (&t.reference, &t.reference_time_server) {
                (Some(r), Some(ts)) => format!("{r} (time server {ts})"),
                (Some(r), None) => r.clone(),
                _ => "none".into(),
            },
        );
        line("Stratum", t.stratum.map_or("-".into(), |s| s.to_string()));
        line(
            "Reference time",
            t.reference_time_unix.map_or("-".into(), format_unix),
        );
        line(
            "System time",
            match t.system_time_offset {
                Some(o) if self.observe_only => format!(
                    "{:.9} seconds {} of NTS time (observe-only: not corrected)",
                    o.abs(),
                    if o > 0.0 { "slow" } else { "fast" }
                ),
                Some(o) => format!(
                    "{:.9} seconds {} of NTS time",
                    o.abs(),
                    if o > 0.0 { "slow" } else { "fast" }
                ),
                None => "-".into(),
            },
        );
        line("Last offset", secs(t.last_offset));
        line(
            "RMS offset",
            t.rms_offset
                .map_or("-".into(), |v| format!("{v:.9} seconds")),
        );
        line(
            "Frequency",
            format!(
                "{:+.3} ppm in force{}",
                t.frequency_ppm,
                t.estimated_frequency_ppm
                    .map(|e| format!(", {e:+.3} ppm estimated"))
                    .unwrap_or_default()
            ),
        );
        line(
            "Residual freq",
            t.residual_frequency_ppm
                .map_or("-".into(), |v| format!("{v:+.3} ppm")),
        );
        line(
            "Skew",
            t.skew_ppm.map_or("-".into(), |v| format!("{v:.3} ppm")),
        );
        line(
            "Root delay",
            t.root_delay
                .map_or("-".into(), |v| format!("{v:.9} seconds")),
        );
        line(
            "Root dispersion",
            t.root_dispersion
                .map_or("-".into(), |v| format!("{v:.9} seconds")),
        );
        line(
            "Update interval",
            format!("{:.1} seconds", t.update_interval),
        );
        line(
            "Last update",
            t.last_update_age
                .map_or("never".into(), |a| format!("{a:.1} seconds ago")),
        );
        line(
            "Last sample",
            t.last_sample_age
                .map_or("-".into(), |a| format!("{a:.1} seconds ago")),
        );
        line(
            "Leap status",
            match (&t.leap_status, &t.leap_at) {
                (s, _) if s.is_empty() => "-".into(),
                (s, Some(at)) => format!("{s} ({at})"),
                (s, None) => s.clone(),
            },
        );
        o
    }

    /// Text like `chronyc tracking`, `chronyc sources`, then NTS state per source.
    pub fn render(&self) -> String {
        let mut o = self.render_tracking();
        o.push('\n');
        o.push_str(&format!(
            "mode: {}   synchronized: {}   offset: {}   frequency: {:+.3} ppm   updates: {}   steps: {}{}\n\n",
            if self.observe_only { "observe-only" } else { "discipline" },
            if self.synchronized { "yes" } else { "no" },
            us(self.offset),
            self.frequency_ppm,
            self.updates,
            self.steps,
            if self.panicked { "   PANIC: offset beyond the panic threshold" } else { "" },
        ));
        o.push_str(&format!(
            "{:<34} {:<12} {:>4} {:>6} {:>5} {:>12} {:>11} {:>10} {:>11}  time server\n",
            "source", "state", "str", "reach", "poll", "offset", "delay", "jitter", "loss 16/all"
        ));
        for s in &self.sources {
            o.push_str(&format!(
                "{:<34} {:<12} {:>4} {:>6o} {:>5.0} {:>12} {:>11} {:>10} {:>11}  {}\n",
                s.name,
                s.state,
                s.stratum.map_or("-".into(), |x| x.to_string()),
                s.reach,
                s.poll,
                us(s.offset),
                s.delay.map_or("-".into(), |d| format!("{:.1}us", d * 1e6)),
                s.jitter.map_or("-".into(), |d| format!("{:.1}us", d * 1e6)),
                {
                    let loss = s.loss();
                    format!(
                        "{}/{}",
                        percent(loss.recent_share()),
                        percent(loss.overall_share())
                    )
                },
                match (&s.ntp_server, &s.ntp_address) {
                    (Some(n), Some(a)) if n != a => format!("{n} ({a})"),
                    (_, Some(a)) => a.clone(),
                    (Some(n), None) => n.clone(),
                    (None, None) => "-".into(),
                } + &if s.xleave {
                    format!(
                        "  xleave: {} of {} answers interleaved",
                        s.interleaved_answers,
                        s.interleaved_answers + s.basic_answers
                    )
                } else {
                    String::new()
                },
            ));
        }
        o.push('\n');
        o.push_str(&format!(
            "{:<34} {:>16} {:>8} {:>6} {:>7} {:>5} {:>5} {:>8} {:>7}  last error\n",
            "NTS source",
            "AEAD",
            "KE age",
            "KE ok",
            "KE fail",
            "cook",
            "NAK",
            "authfail",
            "ignored"
        ));
        for s in &self.sources {
            o.push_str(&format!(
                "{:<34} {:>16} {:>8} {:>6} {:>7} {:>5} {:>5} {:>8} {:>7}  {}\n",
                s.name,
                if s.authenticated {
                    s.aead.as_deref().unwrap_or("NTS")
                } else {
                    "none"
                },
                s.ke_age.map_or("-".into(), |a| format!("{a:.0}s")),
                s.ke_ok,
                s.ke_failures,
                s.cookies,
                s.naks,
                s.auth_failures,
                s.ignored,
                note_with_next_ke(s),
            ));
        }
        o
    }
}

/// Serve the latest report to every connection on a Unix socket (one JSON document, then close).
pub async fn serve(
    path: &Path,
    shared: std::sync::Arc<crate::agent::Shared>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    loop {
        let (mut s, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let body = {
            let r = shared.report.lock().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&*r).unwrap_or_default()
        };
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Read the running agent's report.
pub fn fetch(path: &Path) -> anyhow::Result<StatusReport> {
    use anyhow::Context;
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `nts-client run` running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    serde_json::from_slice(&buf).context("malformed status from the agent")
}

/// The last error (or kiss), and when the next key exchange is due if the
/// source is waiting for one.
fn note_with_next_ke(s: &SourceReport) -> String {
    let note = s.last_error.as_deref().or(s.kiss.as_deref()).unwrap_or("");
    match s.ke_next_in {
        Some(t) if t >= 0.5 && note.is_empty() => format!("next KE in {t:.0}s"),
        Some(t) if t >= 0.5 => format!("{note} (next KE in {t:.0}s)"),
        _ => note.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sources_and_nts_state() {
        let r = StatusReport {
            observe_only: true,
            sources: vec![SourceReport {
                name: "time.example:4460".into(),
                state: "selected".into(),
                authenticated: true,
                reach: 0o377,
                offset: Some(-2.5e-6),
                cookies: 8,
                recent_polls: 16,
                recent_lost: 2,
                polls_counted: 40,
                polls_lost: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = r.render();
        assert!(text.contains("observe-only"));
        assert!(text.contains("time.example:4460"));
        assert!(text.contains("-2.5us"));
        assert!(text.contains("377"));
        assert!(text.contains("12%/10%"), "{text}");
        assert!(text.contains("Reference source"));
        assert_eq!(format_unix(1_798_761_599.5), "2026-12-31 23:59:59.500 UTC");
        assert!(r.has_measurement());
        let json = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sources[0].cookies, 8);
    }

    #[test]
    fn a_source_waiting_for_its_next_key_exchange_says_when() {
        let mut s = SourceReport {
            name: "ke.example:4460".into(),
            ke_next_in: Some(37.2),
            ..Default::default()
        };
        let r = |s: &SourceReport| {
            StatusReport {
                sources: vec![s.clone()],
                ..Default::default()
            }
            .render()
        };
        assert!(r(&s).contains("next KE in 37s"), "{}", r(&s));
        s.last_error = Some("ke.example closed the connection before the TLS handshake".into());
        assert!(r(&s).contains("handshake (next KE in 37s)"), "{}", r(&s));
        s.ke_next_in = Some(0.0);
        assert!(!r(&s).contains("next KE"));
    }
}
