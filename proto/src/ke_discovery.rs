//! Finding every KE replica behind one DNS name (a Kubernetes headless
//! Service, or any name with several A/AAAA records), so KE can scale like a
//! Deployment without re-rendering the time servers: the time server
//! resolves the name again and again, links to each address it has not seen,
//! and drops addresses the name no longer holds.
//!
//! What DNS says is trusted only so far: an answer never removes every
//! replica (an empty answer or a failed lookup keeps the current set, and
//! the next lookup comes sooner), an address must be missing from two
//! answers in a row before its link is dropped (a replica between two
//! lookups of a changing Service stays), and at most `max_endpoints`
//! addresses are followed.

use crate::time::MonoTime;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How often and how far to follow the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Port of the key-sync service at every address.
    pub port: u16,
    /// Time between lookups that found replicas (each wait is drawn from
    /// half of it to all of it, so a fleet does not look up in step).
    pub interval: Duration,
    /// First wait after a lookup that failed or found nothing; doubles up to `interval`.
    pub retry: Duration,
    /// Addresses followed at most (the lowest, in address order).
    pub max_endpoints: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            port: 4461,
            interval: Duration::from_secs(30),
            retry: Duration::from_secs(1),
            max_endpoints: 32,
        }
    }
}

/// A change the driver carries out: open or close the link to one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Add(SocketAddr),
    Remove(SocketAddr),
}

/// The replicas one name stands for, and when to look again.
#[derive(Debug, Clone)]
pub struct Discovery {
    cfg: DiscoveryConfig,
    /// Followed addresses, with the number of answers in a row that lacked them.
    endpoints: BTreeMap<SocketAddr, u32>,
    next_lookup: MonoTime,
    failures: u32,
}

impl Discovery {
    /// A discovery whose first lookup is due at `now`.
    pub fn new(cfg: DiscoveryConfig, now: MonoTime) -> Self {
        Self {
            cfg,
            endpoints: BTreeMap::new(),
            next_lookup: now,
            failures: 0,
        }
    }

    /// When the driver should look the name up next.
    pub fn poll_timeout(&self) -> MonoTime {
        self.next_lookup
    }

    /// The addresses followed now.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints.keys().copied()
    }

    /// Feed a lookup's result (`None`: it failed). `jitter` is uniform in
    /// [0, 1), from the driver's random source. Returns the links to open and
    /// close, removals first.
    pub fn handle_lookup(
        &mut self,
        now: MonoTime,
        answer: Option<&[IpAddr]>,
        jitter: f64,
    ) -> Vec<Change> {
        let jitter = jitter.clamp(0.0, 1.0);
        let mut found: Vec<SocketAddr> = answer
            .unwrap_or_default()
            .iter()
            .map(|ip| SocketAddr::new(canonical(*ip), self.cfg.port))
            .collect();
        found.sort_unstable();
        found.dedup();
        found.truncate(self.cfg.max_endpoints);
        if found.is_empty() {
            // Keep what we have; look again soon, less soon each time.
            let wait = self
                .cfg
                .retry
                .saturating_mul(1 << self.failures.min(16))
                .min(self.cfg.interval);
            self.failures = self.failures.saturating_add(1);
            self.next_lookup = now + wait.mul_f64(1.0 - 0.5 * jitter);
            return Vec::new();
        }
        self.failures = 0;
        self.next_lookup = now + self.cfg.interval.mul_f64(1.0 - 0.5 * jitter);
        let mut changes = Vec::new();
        self.endpoints.retain(|addr, missed| {
            if found.binary_search(addr).is_ok() {
                *missed = 0;
                return true;
            }
            *missed += 1;
            if *missed >= 2 {
                changes.push(Change::Remove(*addr));
                return false;
            }
            true
        });
        for addr in found {
            if self.endpoints.len() >= self.cfg.max_endpoints {
                break;
            }
            if let std::collections::btree_map::Entry::Vacant(v) = self.endpoints.entry(addr) {
                v.insert(0);
                changes.push(Change::Add(addr));
            }
        }
        changes
    }
}

/// IPv4-mapped IPv6 answers name the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn at(secs: u64) -> MonoTime {
        MonoTime::from_nanos(secs * 1_000_000_000)
    }

    fn sa(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 4461)
    }

    #[test]
    fn follows_replicas_as_they_come_and_go() {
        let mut d = Discovery::new(DiscoveryConfig::default(), at(0));
        assert_eq!(d.poll_timeout(), at(0));
        let c = d.handle_lookup(at(0), Some(&ips(&["10.0.0.2", "10.0.0.1"])), 0.0);
        assert_eq!(
            c,
            vec![Change::Add(sa("10.0.0.1")), Change::Add(sa("10.0.0.2"))]
        );
        assert_eq!(d.poll_timeout(), at(30));
        // Scale up: one more.
        let c = d.handle_lookup(
            at(30),
            Some(&ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])),
            0.0,
        );
        assert_eq!(c, vec![Change::Add(sa("10.0.0.3"))]);
        // Scale down: dropped only once missing from two answers in a row.
        let two = ips(&["10.0.0.1", "10.0.0.3"]);
        assert_eq!(d.handle_lookup(at(60), Some(&two), 0.0), vec![]);
        assert_eq!(
            d.handle_lookup(at(90), Some(&two), 0.0),
            vec![Change::Remove(sa("10.0.0.2"))]
        );
        assert_eq!(
            d.endpoints().collect::<Vec<_>>(),
            vec![sa("10.0.0.1"), sa("10.0.0.3")]
        );
    }

    #[test]
    fn a_replica_missing_from_one_answer_stays() {
        let mut d = Discovery::new(DiscoveryConfig::default(), at(0));
        d.handle_lookup(at(0), Some(&ips(&["10.0.0.1", "10.0.0.2"])), 0.0);
        assert_eq!(
            d.handle_lookup(at(30), Some(&ips(&["10.0.0.1"])), 0.0),
            vec![]
        );
        assert_eq!(
            d.handle_lookup(at(60), Some(&ips(&["10.0.0.1", "10.0.0.2"])), 0.0),
            vec![]
        );
        assert_eq!(
            d.handle_lookup(at(90), Some(&ips(&["10.0.0.1"])), 0.0),
            vec![]
        );
        assert_eq!(d.endpoints().count(), 2);
    }

    #[test]
    fn a_failed_or_empty_answer_removes_nothing_and_retries_sooner() {
        let mut d = Discovery::new(DiscoveryConfig::default(), at(0));
        d.handle_lookup(at(0), Some(&ips(&["10.0.0.1"])), 0.0);
        for (i, answer) in [None, Some(&[][..]), None, None, None, None, None]
            .into_iter()
            .enumerate()
        {
            let now = at(100 + i as u64 * 100);
            assert_eq!(d.handle_lookup(now, answer, 0.0), vec![]);
            let wait = d.poll_timeout().saturating_since(now);
            assert_eq!(
                wait,
                Duration::from_secs(1 << i).min(Duration::from_secs(30)),
                "{i}"
            );
        }
        assert_eq!(d.endpoints().collect::<Vec<_>>(), vec![sa("10.0.0.1")]);
        // Found again: back to the full interval.
        d.handle_lookup(at(1000), Some(&ips(&["10.0.0.1"])), 0.0);
        assert_eq!(d.poll_timeout(), at(1030));
    }

    #[test]
    fn lookups_are_spread_and_answers_bounded() {
        let cfg = DiscoveryConfig {
            max_endpoints: 3,
            ..Default::default()
        };
        let mut d = Discovery::new(cfg, at(0));
        let many: Vec<IpAddr> = (1..=50)
            .map(|i| format!("10.0.1.{i}").parse().unwrap())
            .collect();
        let c = d.handle_lookup(at(0), Some(&many), 0.999);
        assert_eq!(c.len(), 3);
        assert!(d.poll_timeout() > at(15) && d.poll_timeout() <= at(16));
        // Duplicates and IPv4-mapped forms count once.
        let mut d = Discovery::new(DiscoveryConfig::default(), at(0));
        let c = d.handle_lookup(
            at(0),
            Some(&ips(&["10.0.0.1", "::ffff:10.0.0.1", "10.0.0.1"])),
            0.5,
        );
        assert_eq!(c, vec![Change::Add(sa("10.0.0.1"))]);
        assert_eq!(d.poll_timeout(), at(0) + Duration::from_millis(22_500));
    }
}
