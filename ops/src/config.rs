//! Configuration pieces every daemon shares: the `[metrics]` and `[log]`
//! sections, and reading a TOML file with errors that name the file and key.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// `[metrics]`: where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the endpoint; unset: no endpoint.
    pub listen: Option<SocketAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// error, warn, info, debug or trace (RUST_LOG overrides).
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// Level names `log.level` accepts, alone or per target (`nts_ke_server=debug`).
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

impl LogSection {
    /// A level name, or comma-separated directives that are each a level name or
    /// `target=level`. Anything else is refused: `tracing` would read an unknown
    /// word as a target name and silently log nothing.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| {
            anyhow::anyhow!(
                "log.level = {:?}: {why} (levels: {})",
                self.level,
                LOG_LEVELS.join(", ")
            )
        };
        if self.level.trim().is_empty() {
            return Err(bad("empty"));
        }
        for d in self.level.split(',') {
            let level = match d.trim().split_once('=') {
                Some((target, level)) => {
                    let ok = !target.is_empty()
                        && target
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
                    if !ok {
                        return Err(bad(&format!("{d:?} is not target=level")));
                    }
                    level
                }
                None => d.trim(),
            };
            if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
                return Err(bad(&format!("{level:?} is not a level")));
            }
        }
        Ok(())
    }
}

/// Parse TOML text; `origin` names the file in errors (the TOML error names the key).
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    toml::from_str(text).with_context(|| format!("invalid configuration in {}", origin.display()))
}

/// Read and parse a TOML configuration file.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    parse_toml(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[serde(default)]
        log: LogSection,
        #[serde(default)]
        metrics: MetricsSection,
    }

    #[test]
    fn sections_and_errors() {
        let d: Demo =
            parse_toml("[metrics]\nlisten = \"127.0.0.1:1\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(d.log.level, "info");
        assert!(d.metrics.listen.is_some());
        let e = parse_toml::<Demo>("[log]\nlevl = \"debug\"\n", Path::new("x.toml")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("x.toml") && msg.contains("levl"), "{msg}");
        assert!(load_toml::<Demo>(Path::new("/nonexistent/x.toml")).is_err());
    }

    #[test]
    fn log_levels() {
        for good in [
            "info",
            "DEBUG",
            "off",
            "warn,nts_ke_server=trace",
            "h2=warn, info",
        ] {
            let l = LogSection { level: good.into() };
            assert!(l.validate().is_ok(), "{good}");
        }
        for bad in ["", "infoo", "verbose", "nts=loud", "=debug", "a b=info"] {
            let l = LogSection { level: bad.into() };
            let e = l.validate().unwrap_err();
            assert!(format!("{e}").contains("log.level"), "{bad}: {e}");
        }
    }
}
