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
}
