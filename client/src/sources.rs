//! The agent's sources as configured: pools expanded, saved associations
//! loaded, each a `nts_proto::source::Source` with what the shell needs
//! beside it (where its KE server is, its file, what status shows).

use crate::association_file::AssociationFile;
use crate::config::{Config, SourceKind};
use crate::ke;
use crate::state_dir::StateDir;
use anyhow::Result;
use nts_proto::clock::{Agent, SourceId};
use nts_proto::ntp_packet::kiss;
use nts_proto::source::{
    Event, Measurement, NtsSource, NtsSourceConfig, Source, SourceConfig, Transition,
    DEFAULT_JAR_SIZE,
};
use nts_proto::time::{MonoTime, UnixTime};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A span from the configuration (seconds; validated as positive there).
pub fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One source and the shell's side of it.
pub struct Slot {
    pub id: SourceId,
    pub name: String,
    pub kind: SourceKind,
    /// KE server (NTS) or NTP server (plain) host and port; the TLS name.
    pub host: String,
    pub port: u16,
    /// For pool members: the address to contact; the name stays the TLS server name.
    pub address: Option<IpAddr>,
    pub source: Source,
    pub state_file: Option<AssociationFile>,
    pub last_error: Option<String>,
    pub last_offset: Option<f64>,
    pub last_delay: Option<f64>,
    /// Unix time of the last usable sample.
    pub last_sample: Option<UnixTime>,
}

impl Slot {
    /// Where the key exchange connects (a pool member's address, or the name).
    pub fn ke_connect_host(&self) -> String {
        self.address
            .map_or_else(|| self.host.clone(), |ip| ip.to_string())
    }

    /// A measurement arrived: remember what status shows.
    pub fn measured(&mut self, m: &Measurement) {
        match &m.sample {
            Ok(_) => {
                self.last_error = None;
                self.last_offset = Some(m.offset().as_f64());
                self.last_delay = Some(m.delay().as_f64());
                self.last_sample = Some(UnixTime::from_system_time(std::time::SystemTime::now()));
            }
            Err(nts_proto::source::Unusable::Unsynchronized) => {
                self.last_error =
                    Some("server is unsynchronized (leap indicator 3 or stratum 0/16)".into());
            }
            Err(nts_proto::source::Unusable::Sample(e)) => {
                self.last_error = Some(format!("unusable sample: {e}"));
            }
        }
    }

    /// One log line (and the status's last error) for an event of the source.
    pub fn log_event(&mut self, e: &Event) {
        let name = &self.name;
        let server = self
            .source
            .address()
            .map_or_else(String::new, |a| a.to_string());
        match e {
            Event::Transition(Transition::TimeoutsBegan) => {
                tracing::warn!(source = %name, %server, "time server stopped answering")
            }
            Event::Transition(Transition::Answering { after }) => {
                tracing::info!(source = %name, %server, "time server answers again after {after} missed polls")
            }
            Event::Transition(Transition::RekeyDue(why)) => {
                tracing::warn!(source = %name, %server, "new key exchange due: {}", why.as_str())
            }
            Event::NakNoted => {
                tracing::info!(source = %name, %server, "NTS NAK received: waiting for an authentic answer before acting on it")
            }
            Event::Kiss(code) => {
                let code = kiss::text(code);
                let how = if self.source.authenticated() {
                    "authenticated kiss-o'-death"
                } else {
                    "kiss-o'-death (unauthenticated source)"
                };
                tracing::warn!(source = %name, %server, kiss = %code, "{how}");
                self.last_error = Some(format!("kiss-o'-death {code}"));
            }
            Event::KeyExchangeDone {
                reason,
                time_server_changed,
                cookies,
                after_failures,
            } => {
                let reason = reason.map_or("", |r| r.as_str());
                let ts = self
                    .source
                    .nts_half()
                    .and_then(|n| n.association())
                    .map(|a| host_port(&a.ntp_host, a.ntp_port))
                    .unwrap_or_default();
                if *after_failures > 0 {
                    tracing::info!(source = %name, failures = after_failures, "key exchange succeeded after failed attempts");
                }
                let what = if *time_server_changed {
                    "key exchange done: using a new time server"
                } else {
                    "key exchange done"
                };
                tracing::info!(source = %name, time_server = %ts, cookies, reason, "{what}");
            }
            Event::KeyExchangeFailed {
                error,
                retry_in,
                failures,
            } => {
                let wait = retry_in.as_secs_f64();
                // Each attempt once: the backoff doubles, so these stay few.
                if *failures == 1 {
                    tracing::warn!(source = %name, "key exchange failed: {error}; next attempt in {wait:.0} s, backing off to nts.ke_backoff_max");
                } else {
                    tracing::info!(source = %name, failures, "key exchange failed again: {error}; next attempt in {wait:.0} s");
                }
                self.last_error = Some(error.clone());
            }
            Event::ResolveFailed(error) => {
                tracing::warn!(source = %name, "cannot resolve the time server: {error}");
                self.last_error = Some(error.clone());
            }
        }
    }
}

fn nts_config(cfg: &Config) -> NtsSourceConfig {
    NtsSourceConfig {
        jar_size: DEFAULT_JAR_SIZE,
        ke_refresh: secs(cfg.nts.ke_refresh),
        ke_spread: secs(cfg.nts.ke_spread),
        ke_backoff_min: secs(cfg.nts.ke_backoff_min),
        ke_backoff_max: secs(cfg.nts.ke_backoff_max),
        unreachable_polls: cfg.nts.unreachable_polls,
    }
}

fn source_config(cfg: &Config, xleave: bool) -> SourceConfig {
    SourceConfig {
        request_timeout: secs(cfg.nts.request_timeout),
        interleaved: xleave,
        own_addresses: cfg.nts.own_addresses.clone(),
        allow_own_host: cfg.nts.allow_own_host,
        resolve_backoff_min: secs(cfg.nts.ke_backoff_min),
        resolve_backoff_max: secs(cfg.nts.ke_backoff_max),
        unreachable_polls: cfg.nts.unreachable_polls,
        ..SourceConfig::default()
    }
}

/// A pool's members: up to `max` addresses of its name.
async fn pool_members(host: &str, port: u16, max: usize) -> Vec<Option<IpAddr>> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let mut v: Vec<_> = addrs.map(|a| Some(a.ip())).collect();
            v.dedup();
            v.truncate(max);
            if v.is_empty() {
                tracing::warn!(pool = %host, "pool name has no addresses");
            }
            v
        }
        Err(e) => {
            tracing::warn!(pool = %host, "cannot resolve pool: {e}");
            Vec::new()
        }
    }
}

/// The NTS half of a source: resumed from its saved association when there is one.
fn nts_half(
    cfg: &Config,
    name: &str,
    file: Option<&AssociationFile>,
    now: MonoTime,
) -> Result<NtsSource> {
    let saved = match file {
        Some(f) => f
            .load()
            .map_err(|e| anyhow::anyhow!("nts.state_dir: {e}"))?,
        None => None,
    };
    let jitter: f64 = rand::random();
    let unix_now = UnixTime::from_system_time(std::time::SystemTime::now());
    Ok(match saved {
        Some(saved) => {
            let src = NtsSource::restored(nts_config(cfg), saved, now, unix_now, jitter);
            if src.cookies() > 0 {
                tracing::info!(source = %name, cookies = src.cookies(), "resuming the saved NTS association: no key exchange needed");
            } else {
                tracing::info!(source = %name, "saved NTS association too old: a key exchange is due");
            }
            src
        }
        None => NtsSource::new(nts_config(cfg), now, jitter),
    })
}

/// The sources of the configuration (pools expanded). A saved association
/// that fails the state-directory rules stops start-up.
pub async fn expand(
    cfg: &Config,
    state: Option<&Arc<StateDir>>,
    agent: &mut Agent,
    now: MonoTime,
) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    for s in &cfg.sources {
        let default = match s.kind {
            SourceKind::Nts | SourceKind::NtsPool => ke::DEFAULT_KE_PORT,
            SourceKind::Ntp | SourceKind::Pool => ke::DEFAULT_NTP_PORT,
        };
        let Ok((host, port)) = crate::split_host_port(&s.address, default) else {
            continue;
        };
        let members = match s.kind {
            SourceKind::Nts | SourceKind::Ntp => vec![None],
            SourceKind::NtsPool | SourceKind::Pool => {
                pool_members(&host, port, s.max_sources).await
            }
        };
        for address in members {
            let name = match address {
                Some(ip) => format!("{host}[{ip}]"),
                None => host_port(&host, port),
            };
            let rng = Box::new(rand::rngs::OsRng);
            let scfg = source_config(cfg, s.xleave);
            let authenticated = matches!(s.kind, SourceKind::Nts | SourceKind::NtsPool);
            let state_file = state
                .filter(|_| authenticated)
                .map(|d| AssociationFile::new(d.clone(), &name));
            let source = if authenticated {
                Source::nts(scfg, nts_half(cfg, &name, state_file.as_ref(), now)?, rng)
            } else {
                let plain = Source::plain(scfg, host.clone(), port, rng);
                match address {
                    Some(ip) => plain.with_fixed_addresses(vec![SocketAddr::new(ip, port)]),
                    None => plain,
                }
            };
            out.push(Slot {
                id: agent.add_source(),
                name,
                kind: s.kind,
                host: host.clone(),
                port,
                address,
                source,
                state_file,
                last_error: None,
                last_offset: None,
                last_delay: None,
                last_sample: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(host_port("::1", 4460), "[::1]:4460");
        assert_eq!(host_port("time.example", 4460), "time.example:4460");
    }

    #[test]
    fn configured_spans_never_panic() {
        assert_eq!(secs(2.5), Duration::from_millis(2500));
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::INFINITY), Duration::MAX);
    }
}
