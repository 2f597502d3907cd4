//! The registry of time servers: who registered, when they were last heard
//! from, how loaded they are. Server Negotiation picks from the live entries.

use nts_proto::key_sync::pb::TimeServerInfo;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How Server Negotiation chooses among live time servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    RoundRobin,
    LeastLoaded,
}

#[derive(Debug, Clone)]
struct Entry {
    info: TimeServerInfo,
    /// The certificate name the registration is bound to.
    certificate: String,
    /// Where its key-sync connection comes from (its host, on a host network).
    peer: Option<IpAddr>,
    last_seen: Instant,
    requests_per_second: f64,
    has_keys: bool,
    healthy: bool,
}

/// A time server clients can be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// What /metrics shows about one registered server.
#[derive(Debug, Clone)]
pub struct EntryView {
    pub server_id: String,
    pub address: String,
    pub alive: bool,
    pub requests_per_second: f64,
}

/// IPv4-mapped IPv6 as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the time server of `e` runs on the host at `client`.
fn on_host(e: &Entry, client: IpAddr) -> bool {
    e.peer == Some(client)
        || std::iter::once(e.info.ntp_host.as_str())
            .chain(e.info.alternates.iter().map(|a| a.host.as_str()))
            .filter_map(|h| h.parse::<IpAddr>().ok())
            .any(|ip| canonical(ip) == client)
}

/// Whether `host` is an IP literal of the same family as `client`.
fn same_family(host: &str, client: IpAddr) -> bool {
    let client_v6 = match client {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
    };
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => !client_v6,
        Ok(IpAddr::V6(_)) => client_v6,
        Err(_) => false,
    }
}

/// The address of `info` to give a client at `client`: the first advertised
/// one (main, then alternates) of the client's family, else the main one (a
/// DNS name, or the only family the server has).
pub fn address_for(info: &TimeServerInfo, client: Option<IpAddr>) -> Target {
    let main = Target {
        host: info.ntp_host.clone(),
        port: info.ntp_port as u16,
    };
    let Some(client) = client else { return main };
    if same_family(&main.host, client) {
        return main;
    }
    info.alternates
        .iter()
        .find(|a| same_family(&a.host, client))
        .map(|a| Target {
            host: a.host.clone(),
            port: a.port as u16,
        })
        .unwrap_or(main)
}

/// A registration refused because its certificate already has its share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate name {certificate:?} already has {limit} registered time servers (key_sync.max_registrations_per_certificate)")]
pub struct TooManyForCertificate {
    pub certificate: String,
    pub limit: usize,
}

#[derive(Debug)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
    expiry: Duration,
    selection: Selection,
    /// Live entries one certificate name may hold (a stolen certificate must
    /// not fill the registry with entries of its own).
    per_certificate: usize,
    next: AtomicUsize,
}

impl Registry {
    pub fn new(expiry: Duration, selection: Selection, per_certificate: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            expiry,
            selection,
            per_certificate: per_certificate.max(1),
            next: AtomicUsize::new(0),
        }
    }

    /// Refuse a server_id new to the registry when its certificate already
    /// holds its share of entries heard from within the expiry.
    fn admit_new(
        &self,
        e: &HashMap<String, Entry>,
        id: &str,
        certificate: &str,
        now: Instant,
    ) -> Result<(), TooManyForCertificate> {
        if e.contains_key(id) {
            return Ok(());
        }
        let held = e
            .values()
            .filter(|v| {
                v.certificate == certificate
                    && now.saturating_duration_since(v.last_seen) <= self.expiry
            })
            .count();
        if held >= self.per_certificate {
            return Err(TooManyForCertificate {
                certificate: certificate.into(),
                limit: self.per_certificate,
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add or refresh a registration (not yet eligible until it reports keys),
    /// bound to `certificate`.
    pub fn register(
        &self,
        info: TimeServerInfo,
        certificate: &str,
        now: Instant,
    ) -> Result<(), TooManyForCertificate> {
        let mut e = self.lock();
        self.admit_new(&e, &info.server_id, certificate, now)?;
        let entry = e.entry(info.server_id.clone()).or_insert(Entry {
            info: info.clone(),
            certificate: certificate.into(),
            peer: None,
            last_seen: now,
            requests_per_second: 0.0,
            has_keys: false,
            healthy: false,
        });
        entry.info = info;
        entry.certificate = certificate.into();
        entry.last_seen = now;
        Ok(())
    }

    /// Record a heartbeat with load and health.
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &self,
        info: TimeServerInfo,
        certificate: &str,
        rps: f64,
        has_keys: bool,
        healthy: bool,
        now: Instant,
    ) -> Result<(), TooManyForCertificate> {
        let mut e = self.lock();
        self.admit_new(&e, &info.server_id, certificate, now)?;
        let rps = if rps.is_finite() && rps >= 0.0 {
            rps
        } else {
            0.0
        };
        let peer = e.get(&info.server_id).and_then(|v| v.peer);
        e.insert(
            info.server_id.clone(),
            Entry {
                info,
                certificate: certificate.into(),
                peer,
                last_seen: now,
                requests_per_second: rps,
                has_keys,
                healthy,
            },
        );
        Ok(())
    }

    fn eligible(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.last_seen) <= self.expiry
            && e.has_keys
            && e.healthy
            && !e.info.ntp_host.is_empty()
            && e.info.ntp_port != 0
    }

    /// Where `server_id`'s key-sync connection comes from.
    pub fn note_peer(&self, server_id: &str, peer: IpAddr) {
        if let Some(v) = self.lock().get_mut(server_id) {
            v.peer = Some(canonical(peer));
        }
    }

    /// Whether `server_id` registered (and was not forgotten since).
    pub fn is_registered(&self, server_id: &str) -> bool {
        self.lock().contains_key(server_id)
    }

    /// Whether at least one time server could be handed out now.
    pub fn has_live(&self, now: Instant) -> bool {
        self.lock().values().any(|v| self.eligible(v, now))
    }

    /// Choose a live time server, or None when none is eligible. The address is
    /// one of the client's family where the server advertised one (`client`
    /// IPv6, or IPv4 including IPv4-mapped IPv6), else its main address.
    pub fn pick(&self, now: Instant, client: Option<IpAddr>) -> Option<Target> {
        let mut e = self.lock();
        // Forget entries dead for a long time so the map stays bounded by live servers.
        let expiry = self.expiry;
        e.retain(|_, v| now.saturating_duration_since(v.last_seen) <= expiry * 10);
        let mut live: Vec<&Entry> = e.values().filter(|v| self.eligible(v, now)).collect();
        if live.is_empty() {
            return None;
        }
        // A client on a time server's own host (it advertises the client's
        // address, or its key-sync link comes from it) is sent elsewhere: a
        // node's agent steering its clock by its own node's server is a loop.
        // When no other server is live, it gets that one (and may refuse it).
        if let Some(c) = client.map(canonical) {
            let elsewhere: Vec<&Entry> = live.iter().copied().filter(|v| !on_host(v, c)).collect();
            if !elsewhere.is_empty() {
                live = elsewhere;
            }
        }
        live.sort_by(|a, b| a.info.server_id.cmp(&b.info.server_id));
        let chosen = match self.selection {
            Selection::RoundRobin => live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()],
            Selection::LeastLoaded => live
                .iter()
                .min_by(|a, b| {
                    let la = a.requests_per_second / a.info.workers.max(1) as f64;
                    let lb = b.requests_per_second / b.info.workers.max(1) as f64;
                    la.total_cmp(&lb)
                })
                .copied()?,
        };
        Some(address_for(&chosen.info, client))
    }

    /// Forget every registration (a test helper for restart scenarios).
    #[cfg(test)]
    fn clear(&self) {
        self.lock().clear();
    }

    pub fn view(&self, now: Instant) -> Vec<EntryView> {
        let e = self.lock();
        let mut v: Vec<EntryView> = e
            .values()
            .map(|x| EntryView {
                server_id: x.info.server_id.clone(),
                address: format!("{}:{}", x.info.ntp_host, x.info.ntp_port),
                alive: self.eligible(x, now),
                requests_per_second: x.requests_per_second,
            })
            .collect();
        v.sort_by(|a, b| a.server_id.cmp(&b.server_id));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, port: u32, workers: u32) -> TimeServerInfo {
        TimeServerInfo {
            server_id: id.into(),
            ntp_host: "127.0.0.1".into(),
            ntp_port: port,
            workers,
            timestamping: "software".into(),
            alternates: Vec::new(),
        }
    }

    #[test]
    fn only_live_servers_with_keys_are_picked() {
        let r = Registry::new(Duration::from_secs(10), Selection::RoundRobin, 16);
        let t0 = Instant::now();
        assert_eq!(r.pick(t0, None), None);
        r.register(info("a", 1001, 2), "c", t0).unwrap();
        assert_eq!(r.pick(t0, None), None, "registered but no keys yet");
        r.report(info("a", 1001, 2), "c", 0.0, true, true, t0)
            .unwrap();
        r.report(info("b", 1002, 2), "c", 0.0, true, true, t0)
            .unwrap();
        r.report(info("c", 1003, 2), "c", 0.0, false, true, t0)
            .unwrap();
        let mut seen: Vec<u16> = (0..4).map(|_| r.pick(t0, None).unwrap().port).collect();
        seen.sort();
        assert_eq!(seen, vec![1001, 1001, 1002, 1002]);
        // b goes silent: after the expiry only a is picked.
        let t1 = t0 + Duration::from_secs(11);
        r.report(info("a", 1001, 2), "c", 0.0, true, true, t1)
            .unwrap();
        assert!((0..4).all(|_| r.pick(t1, None).unwrap().port == 1001));
        // Unhealthy servers are skipped.
        r.report(info("a", 1001, 2), "c", 0.0, true, false, t1)
            .unwrap();
        assert_eq!(r.pick(t1, None), None);
        assert_eq!(r.view(t1).len(), 3);
        assert!(!r.has_live(t1));
        r.report(info("a", 1001, 2), "c", 0.0, true, true, t1)
            .unwrap();
        assert!(r.has_live(t1));
        r.clear();
        assert!(!r.has_live(t1));
    }

    #[test]
    fn client_gets_an_address_of_its_family() {
        use nts_proto::key_sync::pb::NtpEndpoint;
        let mut i = info("a", 123, 1);
        i.alternates = vec![NtpEndpoint {
            host: "2001:db8::7".into(),
            port: 1123,
        }];
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(address_for(&i, Some(v4)).host, "127.0.0.1");
        assert_eq!(address_for(&i, Some(mapped)).host, "127.0.0.1");
        assert_eq!(
            address_for(&i, Some(v6)),
            Target {
                host: "2001:db8::7".into(),
                port: 1123
            }
        );
        assert_eq!(address_for(&i, None).host, "127.0.0.1");
        // No address of the client's family: the main one.
        i.alternates.clear();
        assert_eq!(address_for(&i, Some(v6)).host, "127.0.0.1");
        let r = Registry::new(Duration::from_secs(10), Selection::RoundRobin, 16);
        let t = Instant::now();
        i.alternates = vec![NtpEndpoint {
            host: "::1".into(),
            port: 5,
        }];
        r.report(i, "c", 0.0, true, true, t).unwrap();
        assert_eq!(r.pick(t, Some(v6)).unwrap().host, "::1");
        assert_eq!(r.pick(t, Some(v4)).unwrap().host, "127.0.0.1");
    }

    #[test]
    fn one_certificate_holds_a_bounded_share() {
        let r = Registry::new(Duration::from_secs(10), Selection::RoundRobin, 2);
        let t = Instant::now();
        r.register(info("a:1", 1, 1), "a", t).unwrap();
        r.report(info("a:2", 2, 1), "a", 0.0, true, true, t)
            .unwrap();
        let e = r.register(info("a:3", 3, 1), "a", t).unwrap_err();
        assert_eq!(e.limit, 2);
        assert!(r
            .report(info("a:3", 3, 1), "a", 0.0, true, true, t)
            .is_err());
        // Known entries refresh; other certificates are not affected.
        r.report(info("a:1", 1, 1), "a", 0.0, true, true, t)
            .unwrap();
        r.register(info("b:1", 4, 1), "b", t).unwrap();
        // Entries silent past the expiry no longer count.
        let later = t + Duration::from_secs(11);
        r.report(info("a:1", 1, 1), "a", 0.0, true, true, later)
            .unwrap();
        r.register(info("a:3", 3, 1), "a", later).unwrap();
    }

    #[test]
    fn a_client_is_not_sent_to_the_time_server_on_its_own_host() {
        let r = Registry::new(Duration::from_secs(10), Selection::RoundRobin, 16);
        let t = Instant::now();
        let mut a = info("node-a", 123, 1);
        a.ntp_host = "10.0.0.1".into();
        let mut b = info("node-b", 123, 1);
        b.ntp_host = "time-b.example.net".into();
        r.report(a, "c", 0.0, true, true, t).unwrap();
        r.report(b, "c", 0.0, true, true, t).unwrap();
        r.note_peer("node-b", "::ffff:10.0.0.2".parse().unwrap());
        let on_a: IpAddr = "10.0.0.1".parse().unwrap();
        let on_b: IpAddr = "10.0.0.2".parse().unwrap();
        // Round robin would alternate; a client on either node never gets its own.
        for _ in 0..6 {
            assert_eq!(r.pick(t, Some(on_a)).unwrap().host, "time-b.example.net");
            assert_eq!(r.pick(t, Some(on_b)).unwrap().host, "10.0.0.1");
        }
        // The only live server is the client's own: it gets it (and may refuse it).
        let r1 = Registry::new(Duration::from_secs(10), Selection::RoundRobin, 16);
        let mut only = info("node-a", 123, 1);
        only.ntp_host = "10.0.0.1".into();
        r1.report(only, "c", 0.0, true, true, t).unwrap();
        assert_eq!(r1.pick(t, Some(on_a)).unwrap().host, "10.0.0.1");
    }

    #[test]
    fn least_loaded_per_worker() {
        let r = Registry::new(Duration::from_secs(10), Selection::LeastLoaded, 16);
        let t = Instant::now();
        r.report(info("a", 1, 1), "c", 100.0, true, true, t)
            .unwrap();
        r.report(info("b", 2, 4), "c", 200.0, true, true, t)
            .unwrap();
        r.report(info("c", 3, 1), "c", f64::NAN, true, true, t)
            .unwrap();
        assert_eq!(r.pick(t, None).unwrap().port, 3, "NaN counts as idle");
        r.report(info("c", 3, 1), "c", 500.0, true, true, t)
            .unwrap();
        assert_eq!(r.pick(t, None).unwrap().port, 2);
    }
}
