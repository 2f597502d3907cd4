//! The configuration `nts-bench` writes for `nts-time-server`, with the
//! operator's extra `[server]` keys (`--ours-server-option 'key = value'`),
//! so variants of server settings can be compared without editing code.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

/// One `key = value` line for the `[server]` table; the value is TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOption {
    pub key: String,
    pub value: String,
}

/// Why a `--ours-server-option` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("expected `key = value`, got {0:?}")]
    NoEquals(String),
    #[error("key {0:?} is not a bare TOML key (letters, digits, `_`, `-`)")]
    BadKey(String),
    #[error("value of {key} is not a TOML value: {reason}")]
    BadValue { key: String, reason: String },
}

impl FromStr for ServerOption {
    type Err = OptionError;

    fn from_str(s: &str) -> Result<Self, OptionError> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| OptionError::NoEquals(s.to_string()))?;
        let (key, value) = (k.trim(), v.trim());
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(OptionError::BadKey(key.to_string()));
        }
        toml::from_str::<toml::Table>(&format!("{key} = {value}")).map_err(|e| {
            OptionError::BadValue {
                key: key.to_string(),
                reason: e.message().to_string(),
            }
        })?;
        Ok(ServerOption {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

impl std::fmt::Display for ServerOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}", self.key, self.value)
    }
}

/// Ports and paths of one time server instance.
#[derive(Debug, Clone)]
pub struct TimeServerSetup<'a> {
    pub ntp_port: u16,
    pub metrics_port: u16,
    pub workers: usize,
    pub root_secret: &'a Path,
}

/// The time server's TOML: the `--dev` configuration with rate limiting off
/// (the load comes from a few addresses), our ports and workers, a metrics
/// endpoint; `options` replace generated `[server]` keys of the same name
/// (the last one wins) and add the others, in order.
pub fn time_server_toml(setup: &TimeServerSetup<'_>, options: &[ServerOption]) -> String {
    let mut server: Vec<(String, String)> = vec![
        (
            "listen".into(),
            format!("[\"127.0.0.1:{}\"]", setup.ntp_port),
        ),
        ("workers".into(), setup.workers.to_string()),
    ];
    for o in options {
        match server.iter_mut().find(|(k, _)| *k == o.key) {
            Some(slot) => slot.1 = o.value.clone(),
            None => server.push((o.key.clone(), o.value.clone())),
        }
    }
    let mut s = String::from("# nts-bench: dev configuration with rate limiting off.\n[server]\n");
    for (k, v) in &server {
        let _ = writeln!(s, "{k} = {v}");
    }
    let _ = write!(
        s,
        r#"[rate_limit]
enabled = false
[clock]
local_reference = true
stratum = 1
reference_id = "LOCL"
[keys]
root_secret_file = {root:?}
[metrics]
listen = "127.0.0.1:{metrics}"
[log]
level = "warn"
"#,
        root = setup.root_secret,
        metrics = setup.metrics_port,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(root: &Path) -> TimeServerSetup<'_> {
        TimeServerSetup {
            ntp_port: 4123,
            metrics_port: 9100,
            workers: 1,
            root_secret: root,
        }
    }

    #[test]
    fn options_parse_as_toml_and_bad_ones_are_refused() {
        let o: ServerOption = " receive_buffer =  0 ".parse().unwrap();
        assert_eq!(o.to_string(), "receive_buffer = 0");
        let o: ServerOption = "batch-size = [1, \"a=b\"]".parse().unwrap();
        assert_eq!(o.value, "[1, \"a=b\"]");
        assert_eq!(
            "workers".parse::<ServerOption>(),
            Err(OptionError::NoEquals("workers".into()))
        );
        assert_eq!(
            "a.b = 1".parse::<ServerOption>(),
            Err(OptionError::BadKey("a.b".into()))
        );
        assert!(matches!(
            "mode = fast".parse::<ServerOption>(),
            Err(OptionError::BadValue { .. })
        ));
        assert!(matches!(
            "x = ".parse::<ServerOption>(),
            Err(OptionError::BadValue { .. })
        ));
    }

    #[test]
    fn options_override_or_extend_the_server_table() {
        let root = Path::new("/tmp/x/cookie-root.key");
        let opts: Vec<ServerOption> = [
            "workers = 3",
            "receive_buffer = 0",
            "receive_buffer = 65536",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let text = time_server_toml(&setup(root), &opts);
        let t: toml::Table = toml::from_str(&text).expect("valid TOML");
        let server = t["server"].as_table().unwrap();
        assert_eq!(server["workers"].as_integer(), Some(3));
        assert_eq!(server["receive_buffer"].as_integer(), Some(65536));
        assert_eq!(
            server["listen"].as_array().unwrap()[0].as_str(),
            Some("127.0.0.1:4123")
        );
        assert_eq!(t["rate_limit"]["enabled"].as_bool(), Some(false));
        assert_eq!(
            t["keys"]["root_secret_file"].as_str(),
            Some("/tmp/x/cookie-root.key")
        );
        assert_eq!(t["metrics"]["listen"].as_str(), Some("127.0.0.1:9100"));

        let plain: toml::Table = toml::from_str(&time_server_toml(&setup(root), &[])).unwrap();
        assert_eq!(plain["server"]["workers"].as_integer(), Some(1));
        assert!(plain["server"].get("receive_buffer").is_none());
    }
}
