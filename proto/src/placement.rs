//! Placement among registered time servers (Server Negotiation, RFC 8915
//! section 4.1.7): who registered, when each was last heard from, how loaded
//! it is, and which one a client is sent to. Pure: the KE server's registry
//! holds this behind a lock and passes the time in.
//!
//! The rules: only a server heard from within the expiry, that has the keys
//! and reports itself healthy, with an address, is eligible; a client on a
//! time server's own host is sent elsewhere while another is eligible (an
//! agent steering its clock by its own node's server is a loop); the address
//! given is one of the client's family where the server advertised one; a
//! certificate holds a bounded share of the entries (a stolen certificate
//! must not fill the registry).

use crate::time::MonoTime;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// How Server Negotiation chooses among eligible time servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    RoundRobin,
    /// The fewest requests per second per worker.
    LeastLoaded,
}

/// An address a time server serves NTP on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// What a time server says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub server_id: String,
    /// Its main address (a DNS name or an IP literal).
    pub main: Endpoint,
    /// Further addresses (typically the other address family).
    pub alternates: Vec<Endpoint>,
    pub workers: u32,
}

/// What a time server reports in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub requests_per_second: f64,
    pub has_keys: bool,
    pub healthy: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    info: ServerInfo,
    /// The certificate name the registration is bound to.
    certificate: String,
    /// Where its key-sync connection comes from (its host, on a host network).
    peer: Option<IpAddr>,
    last_seen: MonoTime,
    load: Load,
}

/// What /metrics shows about one registered server.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryView {
    pub server_id: String,
    pub address: String,
    pub alive: bool,
    pub requests_per_second: f64,
}

/// A registration refused because its certificate already has its share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate name {certificate:?} already has {limit} registered time servers (key_sync.max_registrations_per_certificate)")]
pub struct TooManyForCertificate {
    pub certificate: String,
    pub limit: usize,
}

/// IPv4-mapped IPv6 as the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the time server of `e` runs on the host at `client`.
fn on_host(e: &Entry, client: IpAddr) -> bool {
    e.peer == Some(client)
        || std::iter::once(&e.info.main)
            .chain(&e.info.alternates)
            .filter_map(|a| a.host.parse::<IpAddr>().ok())
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
pub fn address_for(info: &ServerInfo, client: Option<IpAddr>) -> Endpoint {
    let Some(client) = client else {
        return info.main.clone();
    };
    std::iter::once(&info.main)
        .chain(&info.alternates)
        .find(|a| same_family(&a.host, client))
        .unwrap_or(&info.main)
        .clone()
}

/// The registered time servers and the placement rules over them.
#[derive(Debug)]
pub struct Placement {
    entries: HashMap<String, Entry>,
    expiry: Duration,
    selection: Selection,
    per_certificate: usize,
    next: usize,
}

impl Placement {
    pub fn new(expiry: Duration, selection: Selection, per_certificate: usize) -> Self {
        Self {
            entries: HashMap::new(),
            expiry,
            selection,
            per_certificate: per_certificate.max(1),
            next: 0,
        }
    }

    fn fresh(&self, e: &Entry, now: MonoTime) -> bool {
        now.saturating_since(e.last_seen) <= self.expiry
    }

    /// Refuse a server_id new to the registry when its certificate already
    /// holds its share of entries heard from within the expiry.
    fn admit_new(
        &self,
        id: &str,
        certificate: &str,
        now: MonoTime,
    ) -> Result<(), TooManyForCertificate> {
        if self.entries.contains_key(id) {
            return Ok(());
        }
        let held = self
            .entries
            .values()
            .filter(|v| v.certificate == certificate && self.fresh(v, now))
            .count();
        if held >= self.per_certificate {
            return Err(TooManyForCertificate {
                certificate: certificate.into(),
                limit: self.per_certificate,
            });
        }
        Ok(())
    }

    /// Add or refresh a registration bound to `certificate` (not eligible
    /// until it reports keys and health).
    pub fn register(
        &mut self,
        info: ServerInfo,
        certificate: &str,
        now: MonoTime,
    ) -> Result<(), TooManyForCertificate> {
        self.admit_new(&info.server_id, certificate, now)?;
        let idle = Load {
            requests_per_second: 0.0,
            has_keys: false,
            healthy: false,
        };
        let entry = self.entries.entry(info.server_id.clone()).or_insert(Entry {
            info: info.clone(),
            certificate: certificate.into(),
            peer: None,
            last_seen: now,
            load: idle,
        });
        entry.info = info;
        entry.certificate = certificate.into();
        entry.last_seen = now;
        Ok(())
    }

    /// Record a heartbeat; a load that is not a finite non-negative rate counts as idle.
    pub fn report(
        &mut self,
        info: ServerInfo,
        certificate: &str,
        mut load: Load,
        now: MonoTime,
    ) -> Result<(), TooManyForCertificate> {
        self.admit_new(&info.server_id, certificate, now)?;
        if !(load.requests_per_second.is_finite() && load.requests_per_second >= 0.0) {
            load.requests_per_second = 0.0;
        }
        let peer = self.entries.get(&info.server_id).and_then(|v| v.peer);
        self.entries.insert(
            info.server_id.clone(),
            Entry {
                info,
                certificate: certificate.into(),
                peer,
                last_seen: now,
                load,
            },
        );
        Ok(())
    }

    fn eligible(&self, e: &Entry, now: MonoTime) -> bool {
        self.fresh(e, now)
            && e.load.has_keys
            && e.load.healthy
            && !e.info.main.host.is_empty()
            && e.info.main.port != 0
    }

    /// Where `server_id`'s key-sync connection comes from.
    pub fn note_peer(&mut self, server_id: &str, peer: IpAddr) {
        if let Some(v) = self.entries.get_mut(server_id) {
            v.peer = Some(canonical(peer));
        }
    }

    /// Whether `server_id` registered (and was not forgotten since).
    pub fn is_registered(&self, server_id: &str) -> bool {
        self.entries.contains_key(server_id)
    }

    /// Whether at least one time server could be handed out now.
    pub fn has_live(&self, now: MonoTime) -> bool {
        self.entries.values().any(|v| self.eligible(v, now))
    }

    /// Choose an eligible time server for a client at `client`, or None.
    pub fn pick(&mut self, now: MonoTime, client: Option<IpAddr>) -> Option<Endpoint> {
        // Forget entries dead for a long time so the map stays bounded by live servers.
        let keep = self.expiry * 10;
        self.entries
            .retain(|_, v| now.saturating_since(v.last_seen) <= keep);
        let mut live: Vec<&Entry> = self
            .entries
            .values()
            .filter(|v| self.eligible(v, now))
            .collect();
        if live.is_empty() {
            return None;
        }
        // When no other server is live, a client gets its own host's (and may refuse it).
        if let Some(c) = client.map(canonical) {
            let elsewhere: Vec<&Entry> = live.iter().copied().filter(|v| !on_host(v, c)).collect();
            if !elsewhere.is_empty() {
                live = elsewhere;
            }
        }
        live.sort_by(|a, b| a.info.server_id.cmp(&b.info.server_id));
        let per_worker = |e: &Entry| e.load.requests_per_second / f64::from(e.info.workers.max(1));
        let chosen = match self.selection {
            Selection::RoundRobin => live[self.next % live.len()],
            Selection::LeastLoaded => live
                .iter()
                .copied()
                .min_by(|a, b| per_worker(a).total_cmp(&per_worker(b)))?,
        };
        let target = address_for(&chosen.info, client);
        if self.selection == Selection::RoundRobin {
            self.next = self.next.wrapping_add(1);
        }
        Some(target)
    }

    /// Forget every registration (a restart, in tests).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Every entry, sorted by id, as /metrics shows it.
    pub fn view(&self, now: MonoTime) -> Vec<EntryView> {
        let mut v: Vec<EntryView> = self
            .entries
            .values()
            .map(|x| EntryView {
                server_id: x.info.server_id.clone(),
                address: format!("{}:{}", x.info.main.host, x.info.main.port),
                alive: self.eligible(x, now),
                requests_per_second: x.load.requests_per_second,
            })
            .collect();
        v.sort_by(|a, b| a.server_id.cmp(&b.server_id));
        v
    }
}

#[cfg(test)]
mod tests;
