//! The registry of time servers, shared by the key-sync service (which
//! records registrations and heartbeats) and the NTS-KE listener (which asks
//! it where to send a client). The rules live in
//! [`nts_proto::placement::Placement`]; this is the lock around it, the
//! conversion from the key-sync messages and from `Instant` to `MonoTime`.

use nts_proto::key_sync::pb::TimeServerInfo;
use nts_proto::placement::{self, Endpoint, Load, Placement, ServerInfo};
use nts_proto::time::MonoTime;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use nts_proto::placement::{EntryView, TooManyForCertificate};

/// A time server clients can be sent to.
pub type Target = Endpoint;

/// How Server Negotiation chooses among live time servers (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    RoundRobin,
    LeastLoaded,
}

impl From<Selection> for placement::Selection {
    fn from(s: Selection) -> Self {
        match s {
            Selection::RoundRobin => Self::RoundRobin,
            Selection::LeastLoaded => Self::LeastLoaded,
        }
    }
}

/// A port out of a key-sync message: out of range is no port (never eligible).
fn port(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// What the placement rules need of a registration message.
pub fn server_info(info: &TimeServerInfo) -> ServerInfo {
    ServerInfo {
        server_id: info.server_id.clone(),
        main: Endpoint {
            host: info.ntp_host.clone(),
            port: port(info.ntp_port),
        },
        alternates: info
            .alternates
            .iter()
            .map(|a| Endpoint {
                host: a.host.clone(),
                port: port(a.port),
            })
            .collect(),
        workers: info.workers,
    }
}

#[derive(Debug)]
pub struct Registry {
    placement: Mutex<Placement>,
    /// What `MonoTime::ZERO` is for the placement.
    origin: Instant,
}

impl Registry {
    pub fn new(expiry: Duration, selection: Selection, per_certificate: usize) -> Self {
        Self {
            placement: Mutex::new(Placement::new(expiry, selection.into(), per_certificate)),
            origin: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mono(&self, at: Instant) -> MonoTime {
        MonoTime::from_duration(at.saturating_duration_since(self.origin))
    }

    /// Add or refresh a registration bound to `certificate`.
    pub fn register(
        &self,
        info: TimeServerInfo,
        certificate: &str,
        now: Instant,
    ) -> Result<(), TooManyForCertificate> {
        let now = self.mono(now);
        self.lock().register(server_info(&info), certificate, now)
    }

    /// Record a heartbeat with load and health.
    pub fn report(
        &self,
        info: TimeServerInfo,
        certificate: &str,
        load: Load,
        now: Instant,
    ) -> Result<(), TooManyForCertificate> {
        let now = self.mono(now);
        self.lock()
            .report(server_info(&info), certificate, load, now)
    }

    /// Where `server_id`'s key-sync connection comes from.
    pub fn note_peer(&self, server_id: &str, peer: IpAddr) {
        self.lock().note_peer(server_id, peer);
    }

    /// Whether `server_id` registered (and was not forgotten since).
    pub fn is_registered(&self, server_id: &str) -> bool {
        self.lock().is_registered(server_id)
    }

    /// Whether at least one time server could be handed out now.
    pub fn has_live(&self, now: Instant) -> bool {
        self.lock().has_live(self.mono(now))
    }

    /// Choose a live time server for a client at `client`, or None.
    pub fn pick(&self, now: Instant, client: Option<IpAddr>) -> Option<Target> {
        let now = self.mono(now);
        self.lock().pick(now, client)
    }

    pub fn view(&self, now: Instant) -> Vec<EntryView> {
        self.lock().view(self.mono(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::key_sync::pb::NtpEndpoint;

    #[test]
    fn messages_reach_the_placement_rules() {
        let r = Registry::new(Duration::from_secs(10), Selection::LeastLoaded, 16);
        let t = Instant::now();
        let info = TimeServerInfo {
            server_id: "a".into(),
            ntp_host: "192.0.2.1".into(),
            ntp_port: 123,
            workers: 2,
            timestamping: "software".into(),
            alternates: vec![NtpEndpoint {
                host: "2001:db8::1".into(),
                port: 1123,
            }],
        };
        r.register(info.clone(), "c", t).unwrap();
        assert!(r.is_registered("a") && !r.has_live(t));
        let up = Load {
            requests_per_second: 5.0,
            has_keys: true,
            healthy: true,
        };
        r.report(info.clone(), "c", up, t).unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(r.pick(t, Some(v6)).unwrap().port, 1123);
        assert_eq!(r.view(t)[0].address, "192.0.2.1:123");
        // A port out of range is no port: never handed out.
        let mut bad = info;
        bad.ntp_port = 70_000;
        r.report(bad, "c", up, t).unwrap();
        assert_eq!(r.pick(t, None), None);
        assert!(!r.has_live(t + Duration::from_secs(11)));
    }
}
