//! `nts-client`: the NTS client agent. This crate holds the I/O shells; the
//! protocol and clock algorithms live in `nts-proto`.

pub mod agent;
pub mod association_file;
pub mod config;
pub mod drift_file;
pub mod exchange;
pub mod ke;
pub mod leap_file;
pub mod metrics;
pub mod publish;
pub mod query;
pub mod sources;
pub mod state_dir;
pub mod status;
pub mod system_clock;

/// Split `host`, `host:port`, `[v6]` or `[v6]:port` into host and port.
pub fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("{s:?}: bad port"))?,
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => Ok((s.to_string(), default_port)),
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
        )),
        None => Ok((s.to_string(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::split_host_port;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("a.example", 4460).unwrap(),
            ("a.example".into(), 4460)
        );
        assert_eq!(
            split_host_port("a.example:1", 4460).unwrap(),
            ("a.example".into(), 1)
        );
        assert_eq!(split_host_port("[::1]:7", 4460).unwrap(), ("::1".into(), 7));
        assert_eq!(
            split_host_port("[::1]", 4460).unwrap(),
            ("::1".into(), 4460)
        );
        assert_eq!(split_host_port("::1", 4460).unwrap(), ("::1".into(), 4460));
        assert!(split_host_port("a:b", 1).is_err());
        assert!(split_host_port("[::1", 1).is_err());
    }
}
