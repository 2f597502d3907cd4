//! `nts-client run` configuration: one TOML file, every key documented in
//! `docs/client.md`, unknown keys rejected, errors naming the key.

use anyhow::{bail, Result};
use nts_ops::config::{LogSection, MetricsSection};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub nts: NtsSection,
    #[serde(default)]
    pub clock: ClockSection,
    #[serde(default)]
    pub status: StatusSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An NTS server: `address` is its NTS-KE server (`host` or `host:port`, default 4460).
    Nts,
    /// A DNS name whose addresses are each used as an NTS server (SNI = the name).
    NtsPool,
    /// A plain NTP server (unauthenticated), `host` or `host:port` (default 123).
    Ntp,
    /// A DNS name whose addresses are each a plain NTP server.
    Pool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: SourceKind,
    pub address: String,
    /// For pools: how many of the name's addresses to use.
    #[serde(default = "default_pool_size")]
    pub max_sources: usize,
    /// Ask for interleaved mode (RFC 9769, chrony's `xleave`): the server's
    /// transmit timestamps are then taken after its responses leave.
    #[serde(default)]
    pub xleave: bool,
}

fn default_pool_size() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NtsSection {
    /// Extra CA certificates (PEM) trusted for NTS-KE.
    pub ca_files: Vec<PathBuf>,
    /// Also trust the system's CA roots.
    pub system_roots: bool,
    /// Seconds after which a source redoes NTS-KE even with cookies left.
    pub ke_refresh: f64,
    /// Seconds to wait for one key exchange.
    pub ke_timeout: f64,
    /// Directory where each NTS source keeps its keys and cookies (0600) so a
    /// restart needs no key exchange, like chrony's `ntsdumpdir`. None: not kept.
    pub state_dir: Option<PathBuf>,
    /// The first key exchange of a source without saved cookies starts at a
    /// random moment within this many seconds, so a fleet restarting together
    /// does not storm its KE servers.
    pub ke_spread: f64,
    /// Wait after a failed key exchange (seconds), doubled on each failure in a row...
    pub ke_backoff_min: f64,
    /// ...up to this many seconds.
    pub ke_backoff_max: f64,
    /// Polls in a row without an authentic answer after which a source runs
    /// NTS-KE again (to be sent to a time server that is alive).
    pub unreachable_polls: u32,
    /// Seconds to wait for the answer to one NTP request.
    pub request_timeout: f64,
    /// Use a time server at one of this host's own (non-loopback) addresses.
    /// Off: NTS-KE naming one counts as a failed key exchange (a node's
    /// agent steering its clock by its node's own time server is a loop).
    pub allow_own_host: bool,
    /// This host's addresses, read at start (not configuration).
    #[serde(skip)]
    pub own_addresses: Vec<std::net::IpAddr>,
}

impl Default for NtsSection {
    fn default() -> Self {
        Self {
            ca_files: Vec::new(),
            system_roots: true,
            ke_refresh: 86_400.0,
            ke_timeout: 10.0,
            state_dir: None,
            ke_spread: 10.0,
            ke_backoff_min: 4.0,
            ke_backoff_max: 1024.0,
            unreachable_polls: 3,
            request_timeout: 2.0,
            allow_own_host: false,
            own_addresses: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// Measure and report; never touch the clock.
    Observe,
    /// Discipline the system clock (needs CAP_SYS_TIME; falls back to observe without it).
    Discipline,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockSection {
    pub mode: ClockMode,
    /// Minimum number of agreeing sources before the clock is touched.
    pub min_sources: usize,
    /// Step only beyond this offset (seconds)...
    pub step_threshold: f64,
    /// ...and only in the first this many clock updates (like chrony's makestep).
    pub step_limit: u32,
    /// Refuse corrections beyond this offset (seconds) and say so.
    pub panic_threshold: f64,
    /// Frequency correction limit (ppm).
    pub max_frequency: f64,
    /// Poll interval bounds, log2 seconds.
    pub minpoll: i8,
    pub maxpoll: i8,
    /// Where the frequency is kept across restarts (discipline mode), like chrony's driftfile.
    pub drift_file: Option<PathBuf>,
    /// Write the drift file at most this often (seconds), and at shutdown.
    pub drift_interval: f64,
    /// A `leap-seconds.list` (IETF/NIST format) that decides leap seconds while unexpired.
    pub leap_seconds_file: Option<PathBuf>,
}

impl Default for ClockSection {
    fn default() -> Self {
        Self {
            mode: ClockMode::Observe,
            min_sources: 1,
            step_threshold: 0.1,
            step_limit: 3,
            panic_threshold: 1000.0,
            max_frequency: 500.0,
            minpoll: 4,
            maxpoll: 10,
            drift_file: None,
            drift_interval: 3600.0,
            leap_seconds_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusSection {
    /// Unix socket `nts-client status` reads from.
    pub socket: PathBuf,
}

impl Default for StatusSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/nts-client/status.sock"),
        }
    }
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        nts_ops::config::parse_toml(text, origin)
    }

    pub fn load(path: &Path) -> Result<Self> {
        nts_ops::config::load_toml(path)
    }

    /// Check every value; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.sources.is_empty() {
            bail!("source: at least one [[source]] is needed");
        }
        for (i, s) in self.sources.iter().enumerate() {
            let default = match s.kind {
                SourceKind::Nts | SourceKind::NtsPool => crate::ke::DEFAULT_KE_PORT,
                SourceKind::Ntp | SourceKind::Pool => crate::ke::DEFAULT_NTP_PORT,
            };
            crate::split_host_port(&s.address, default)
                .map_err(|e| anyhow::anyhow!("source[{i}].address: {e}"))?;
            if s.max_sources == 0 || s.max_sources > 16 {
                bail!(
                    "source[{i}].max_sources = {}: must be between 1 and 16",
                    s.max_sources
                );
            }
        }
        let c = &self.clock;
        if c.min_sources == 0 {
            bail!("clock.min_sources: must be at least 1");
        }
        if !(c.step_threshold.is_finite() && c.step_threshold > 0.0) {
            bail!(
                "clock.step_threshold = {}: must be a positive number of seconds",
                c.step_threshold
            );
        }
        if !(c.panic_threshold.is_finite() && c.panic_threshold > c.step_threshold) {
            bail!(
                "clock.panic_threshold = {}: must be larger than clock.step_threshold",
                c.panic_threshold
            );
        }
        if !(c.max_frequency > 0.0 && c.max_frequency <= 500.0) {
            bail!("clock.max_frequency = {}: must be above 0 and at most 500 ppm (the kernel's limit)", c.max_frequency);
        }
        if !(0..=17).contains(&c.minpoll) || c.maxpoll < c.minpoll || c.maxpoll > 17 {
            bail!(
                "clock.minpoll/clock.maxpoll = {}/{}: need 0 <= minpoll <= maxpoll <= 17",
                c.minpoll,
                c.maxpoll
            );
        }
        if !(self.nts.ke_refresh.is_finite() && self.nts.ke_refresh >= 60.0) {
            bail!(
                "nts.ke_refresh = {}: must be at least 60 seconds",
                self.nts.ke_refresh
            );
        }
        if !(self.nts.ke_timeout.is_finite()
            && self.nts.ke_timeout > 0.0
            && self.nts.ke_timeout <= 120.0)
        {
            bail!(
                "nts.ke_timeout = {}: must be between 0 and 120 seconds",
                self.nts.ke_timeout
            );
        }
        if !(c.drift_interval.is_finite() && c.drift_interval >= 60.0) {
            bail!(
                "clock.drift_interval = {}: must be at least 60 seconds",
                c.drift_interval
            );
        }
        if let Some(p) = &c.drift_file {
            crate::drift_file::read(p).map_err(|e| anyhow::anyhow!("clock.drift_file: {e}"))?;
        }
        if let Some(p) = &c.leap_seconds_file {
            crate::leap_file::read(p)
                .map_err(|e| anyhow::anyhow!("clock.leap_seconds_file: {e}"))?;
        }
        let n = &self.nts;
        if !(n.ke_spread.is_finite() && (0.0..=3600.0).contains(&n.ke_spread)) {
            bail!(
                "nts.ke_spread = {}: must be between 0 and 3600 seconds",
                n.ke_spread
            );
        }
        if !(n.ke_backoff_min.is_finite() && n.ke_backoff_min >= 1.0) {
            bail!(
                "nts.ke_backoff_min = {}: must be at least 1 second",
                n.ke_backoff_min
            );
        }
        if !(n.ke_backoff_max.is_finite() && n.ke_backoff_max >= n.ke_backoff_min) {
            bail!(
                "nts.ke_backoff_max = {}: must be at least nts.ke_backoff_min ({})",
                n.ke_backoff_max,
                n.ke_backoff_min
            );
        }
        if !(1..=64).contains(&n.unreachable_polls) {
            bail!(
                "nts.unreachable_polls = {}: must be between 1 and 64",
                n.unreachable_polls
            );
        }
        if !(n.request_timeout.is_finite() && n.request_timeout > 0.0 && n.request_timeout <= 30.0)
        {
            bail!(
                "nts.request_timeout = {}: must be above 0 and at most 30 seconds",
                n.request_timeout
            );
        }
        if let Some(d) = &n.state_dir {
            if d.as_os_str().is_empty() {
                bail!("nts.state_dir: must not be empty (leave it out to keep no state)");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config> {
        let c = Config::parse(text, Path::new("t.toml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn sources_and_defaults() {
        let c = check(
            "[[source]]\ntype = \"nts\"\naddress = \"time.example.net\"\n[[source]]\ntype = \"pool\"\naddress = \"pool.example.net\"\nmax_sources = 3\n",
        )
        .unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.clock.mode, ClockMode::Observe);
        assert!(c.nts.system_roots);
    }

    #[test]
    fn errors_name_keys() {
        let src = "[[source]]\ntype = \"nts\"\naddress = \"a.example\"\n";
        for (text, key) in [
            ("".to_string(), "source"),
            (
                format!("{src}[clock]\nmin_sources = 0\n"),
                "clock.min_sources",
            ),
            (
                format!("{src}[clock]\nmaxpoll = 2\n"),
                "clock.minpoll/clock.maxpoll",
            ),
            (format!("{src}[clock]\nmode = \"yolo\"\n"), "yolo"),
            (
                "[[source]]\ntype = \"nts\"\naddress = \"a:b\"\n".to_string(),
                "source[0].address",
            ),
            (format!("{src}bogus = 1\n"), "bogus"),
            (format!("{src}[nts]\nke_spread = -1\n"), "nts.ke_spread"),
            (
                format!("{src}[nts]\nke_backoff_min = 10\nke_backoff_max = 5\n"),
                "nts.ke_backoff_max",
            ),
            (
                format!("{src}[nts]\nunreachable_polls = 0\n"),
                "nts.unreachable_polls",
            ),
            (
                format!("{src}[nts]\nrequest_timeout = 0\n"),
                "nts.request_timeout",
            ),
        ] {
            let e = check(&text).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
    }
}
