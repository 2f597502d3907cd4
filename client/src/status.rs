//! The agent's status: what `nts-client status` shows (like `chronyc sources`
//! plus `ntpq -c nts`), served as JSON on a local Unix socket.

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
    pub ntp_address: Option<String>,
    /// Seconds since the last successful NTS-KE.
    pub ke_age: Option<f64>,
    pub ke_ok: u64,
    pub ke_failures: u64,
    pub cookies: usize,
    pub naks: u64,
    pub auth_failures: u64,
    pub timeouts: u64,
    pub kiss: Option<String>,
    pub last_error: Option<String>,
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
    pub last_update_unix: f64,
    pub sources: Vec<SourceReport>,
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

    /// Text like `chronyc sources` followed by NTS state per source.
    pub fn render(&self) -> String {
        let mut o = String::new();
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
            "{:<34} {:<12} {:>4} {:>6} {:>5} {:>12} {:>11} {:>10}\n",
            "source", "state", "str", "reach", "poll", "offset", "delay", "jitter"
        ));
        for s in &self.sources {
            o.push_str(&format!(
                "{:<34} {:<12} {:>4} {:>6o} {:>5.0} {:>12} {:>11} {:>10}\n",
                s.name,
                s.state,
                s.stratum.map_or("-".into(), |x| x.to_string()),
                s.reach,
                s.poll,
                us(s.offset),
                s.delay.map_or("-".into(), |d| format!("{:.1}us", d * 1e6)),
                s.jitter.map_or("-".into(), |d| format!("{:.1}us", d * 1e6)),
            ));
        }
        o.push('\n');
        o.push_str(&format!(
            "{:<34} {:>5} {:>8} {:>7} {:>8} {:>5} {:>10} {:>8}  last error\n",
            "NTS source", "auth", "KE age", "KE ok", "KE fail", "cook", "NAK", "authfail"
        ));
        for s in &self.sources {
            o.push_str(&format!(
                "{:<34} {:>5} {:>8} {:>7} {:>8} {:>5} {:>10} {:>8}  {}\n",
                s.name,
                if s.authenticated { "NTS" } else { "none" },
                s.ke_age.map_or("-".into(), |a| format!("{a:.0}s")),
                s.ke_ok,
                s.ke_failures,
                s.cookies,
                s.naks,
                s.auth_failures,
                s.last_error.as_deref().or(s.kiss.as_deref()).unwrap_or(""),
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
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = r.render();
        assert!(text.contains("observe-only"));
        assert!(text.contains("time.example:4460"));
        assert!(text.contains("-2.5us"));
        assert!(text.contains("377"));
        assert!(r.has_measurement());
        let json = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.sources[0].cookies, 8);
    }
}
