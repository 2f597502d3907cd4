//! Admission of connections that have not proven anything yet: TLS handshakes
//! in progress and NTS-KE exchanges. A fixed number of slots is shared among
//! client prefixes ([`crate::client_prefix`]), and a full table never turns a
//! newcomer away: it evicts the oldest connection of the prefix that holds the
//! most slots (or of the newcomer's own prefix once that holds its share).
//!
//! Refusing newcomers when full, as a plain semaphore does, lets anyone who
//! opens enough idle connections lock everybody else out. With eviction an
//! idle flood only ever costs its senders their own slots: a client that holds
//! fewer slots than the heaviest prefix always gets in, and its connection is
//! only at risk once it is itself the oldest of the heaviest prefix.
//!
//! Within a prefix, a connection that has sent nothing yet goes before one
//! that has ([`Admission::mark_active`]): a peer that opened a connection and
//! stays silent is the cheapest thing to drop, and an honest peer's first
//! bytes (a TLS ClientHello) follow its connect at once.
//!
//! No I/O and no clock: the driver closes what this table evicts, and frees a
//! slot when its connection ends (deadlines are the driver's).

use crate::client_prefix::{ClientPrefix, PrefixLengths};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// A connection admitted to the table; ids grow with age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

/// Why a connection was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its prefix already held `per_prefix` slots when another of its connections arrived.
    PrefixFull,
    /// Every slot was taken; its prefix held the most.
    TableFull,
}

impl Eviction {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PrefixFull => "prefix_full",
            Self::TableFull => "table_full",
        }
    }
}

/// A connection the driver must now close, with what it stored for it.
#[derive(Debug)]
pub struct Evicted<T> {
    pub id: ConnectionId,
    pub prefix: ClientPrefix,
    pub reason: Eviction,
    pub payload: T,
}

/// The outcome of [`Admission::admit`]: the newcomer is always in.
#[derive(Debug)]
pub struct Admitted<T> {
    pub id: ConnectionId,
    pub evicted: Option<Evicted<T>>,
}

/// Limits of an [`Admission`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Slots in all.
    pub capacity: usize,
    /// Slots one prefix may hold.
    pub per_prefix: usize,
    pub prefixes: PrefixLengths,
}

/// Bounded table of open connections, fair across client prefixes. `T` is
/// what the driver needs to close one (a cancellation handle).
#[derive(Debug)]
pub struct Admission<T> {
    limits: AdmissionLimits,
    next: u64,
    open: BTreeMap<ConnectionId, (ClientPrefix, T)>,
    by_prefix: HashMap<ClientPrefix, PrefixSlots>,
}

/// The connections of one prefix, silent ones apart.
#[derive(Debug, Default)]
struct PrefixSlots {
    silent: BTreeSet<ConnectionId>,
    active: BTreeSet<ConnectionId>,
}

impl PrefixSlots {
    fn len(&self) -> usize {
        self.silent.len() + self.active.len()
    }

    /// Whom this prefix gives up first: its oldest silent connection, else
    /// its oldest; never `spare` (the newcomer).
    fn victim(&self, spare: ConnectionId) -> Option<(bool, ConnectionId)> {
        match self.silent.iter().find(|id| **id != spare) {
            Some(id) => Some((true, *id)),
            None => self.active.first().map(|id| (false, *id)),
        }
    }

    fn remove(&mut self, id: ConnectionId) {
        if !self.silent.remove(&id) {
            self.active.remove(&id);
        }
    }
}

impl<T> Admission<T> {
    /// A table with `limits`; a capacity or share of 0 counts as 1.
    pub fn new(limits: AdmissionLimits) -> Self {
        let limits = AdmissionLimits {
            capacity: limits.capacity.max(1),
            per_prefix: limits.per_prefix.max(1),
            ..limits
        };
        Self {
            limits,
            next: 0,
            open: BTreeMap::new(),
            by_prefix: HashMap::new(),
        }
    }

    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Connections in the table.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Slots held by the client `addr` belongs to.
    pub fn held_by(&self, addr: IpAddr) -> usize {
        let p = self.limits.prefixes.prefix_of(addr);
        self.by_prefix.get(&p).map_or(0, PrefixSlots::len)
    }

    /// The connection `id` has sent its first bytes: it goes after the silent
    /// ones of its prefix when one must make room.
    pub fn mark_active(&mut self, id: ConnectionId) {
        if let Some((prefix, _)) = self.open.get(&id) {
            if let Some(set) = self.by_prefix.get_mut(prefix) {
                if set.silent.remove(&id) {
                    set.active.insert(id);
                }
            }
        }
    }

    /// Admit a connection from `addr`, storing `payload` for it. At most one
    /// older connection is evicted to make room.
    pub fn admit(&mut self, addr: IpAddr, payload: T) -> Admitted<T> {
        let prefix = self.limits.prefixes.prefix_of(addr);
        let id = ConnectionId(self.next);
        self.next += 1;
        self.open.insert(id, (prefix, payload));
        let own = self.by_prefix.entry(prefix).or_default();
        own.silent.insert(id);
        let evicted = if own.len() > self.limits.per_prefix {
            // The prefix holds another connection (per_prefix >= 1): never the newcomer.
            let victim = own.victim(id).map_or(id, |(_, v)| v);
            self.evict(victim, Eviction::PrefixFull)
        } else if self.open.len() > self.limits.capacity {
            let victim = self.heaviest_oldest(id);
            self.evict(victim, Eviction::TableFull)
        } else {
            None
        };
        Admitted { id, evicted }
    }

    /// The connection `id` ended: free its slot. `None` when it was evicted
    /// (or released) before.
    pub fn release(&mut self, id: ConnectionId) -> Option<T> {
        let (prefix, payload) = self.open.remove(&id)?;
        if let Some(set) = self.by_prefix.get_mut(&prefix) {
            set.remove(id);
            if set.len() == 0 {
                self.by_prefix.remove(&prefix);
            }
        }
        Some(payload)
    }

    fn evict(&mut self, id: ConnectionId, reason: Eviction) -> Option<Evicted<T>> {
        let prefix = self.open.get(&id)?.0;
        let payload = self.release(id)?;
        Some(Evicted {
            id,
            prefix,
            reason,
            payload,
        })
    }

    /// The victim of the prefix holding the most slots; among prefixes
    /// holding as many, one whose victim is silent, then the oldest victim.
    /// Linear in the number of prefixes (at most `capacity + 1`), and only
    /// run when the table is full. The newcomer (`spare`) is never chosen; a
    /// full table holds at least one other connection.
    fn heaviest_oldest(&self, spare: ConnectionId) -> ConnectionId {
        self.by_prefix
            .values()
            .filter_map(|set| {
                set.victim(spare)
                    .map(|(silent, id)| (set.len(), silent, id))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)))
            .map(|(_, _, id)| id)
            .expect("a full table has a prefix")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: usize, per_prefix: usize) -> Admission<u32> {
        Admission::new(AdmissionLimits {
            capacity,
            per_prefix,
            prefixes: PrefixLengths::DEFAULT,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn admits_freely_below_the_limits() {
        let mut t = table(4, 2);
        let a = t.admit(ip("192.0.2.1"), 1);
        let b = t.admit(ip("192.0.2.2"), 2);
        assert!(a.evicted.is_none() && b.evicted.is_none());
        assert_eq!(t.len(), 2);
        assert_eq!(t.release(a.id), Some(1));
        assert_eq!(t.release(a.id), None, "a slot is freed once");
        assert_eq!(t.held_by(ip("192.0.2.1")), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_prefix_over_its_share_loses_its_oldest() {
        let mut t = table(100, 3);
        let ids: Vec<_> = (0..3).map(|i| t.admit(ip("192.0.2.9"), i).id).collect();
        let fourth = t.admit(ip("192.0.2.9"), 3);
        let e = fourth.evicted.expect("oldest evicted");
        assert_eq!(
            (e.id, e.reason, e.payload),
            (ids[0], Eviction::PrefixFull, 0)
        );
        assert_eq!(t.held_by(ip("192.0.2.9")), 3);
        // IPv6 shares are per /64: another address of the same /64 is the same client.
        for i in 0..3 {
            t.admit(ip(&format!("2001:db8::{i}")), 10 + i);
        }
        let e = t.admit(ip("2001:db8::ffff"), 20).evicted.unwrap();
        assert_eq!(e.payload, 10);
    }

    #[test]
    fn a_full_table_takes_from_the_heaviest_prefix_never_the_newcomer() {
        let mut t = table(6, 6);
        for i in 0..4 {
            t.admit(ip("198.51.100.1"), i); // the flood: 4 slots
        }
        let light = t.admit(ip("192.0.2.1"), 100).id;
        t.admit(ip("192.0.2.2"), 101);
        // Full. A new client evicts the flood's oldest, not the light clients.
        let n = t.admit(ip("203.0.113.7"), 200);
        let e = n.evicted.unwrap();
        assert_eq!((e.payload, e.reason), (0, Eviction::TableFull));
        assert_eq!(t.len(), 6);
        assert_eq!(t.held_by(ip("198.51.100.1")), 3);
        // The flood reconnecting only rotates its own slots.
        for i in 10..20 {
            let e = t.admit(ip("198.51.100.1"), i).evicted.unwrap();
            assert!(e.payload < 100, "flood evicted a client: {}", e.payload);
        }
        assert!(t.release(light).is_some(), "the light client kept its slot");
    }

    #[test]
    fn ties_evict_the_oldest_connection() {
        let mut t = table(3, 3);
        t.admit(ip("192.0.2.1"), 1);
        t.admit(ip("192.0.2.2"), 2);
        t.admit(ip("192.0.2.3"), 3);
        let e = t.admit(ip("192.0.2.4"), 4).evicted.unwrap();
        assert_eq!(e.payload, 1);
        // A table of one always takes the newcomer.
        let mut one = table(1, 1);
        one.admit(ip("192.0.2.1"), 1);
        assert_eq!(one.admit(ip("192.0.2.2"), 2).evicted.unwrap().payload, 1);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let mut t = table(16, 4);
        let mut live = Vec::new();
        for i in 0..10_000u32 {
            let a = ip(&format!("10.0.{}.{}", (i * 7) % 5, (i * 13) % 11));
            let adm = t.admit(a, i);
            live.push(adm.id);
            if let Some(e) = adm.evicted {
                live.retain(|x| *x != e.id);
            }
            if i % 3 == 0 {
                let id = live.remove(0);
                assert!(t.release(id).is_some());
            }
            assert!(t.len() <= 16);
            assert_eq!(t.len(), live.len());
        }
        for id in live {
            assert!(t.release(id).is_some());
        }
        assert!(t.is_empty() && t.by_prefix.is_empty(), "nothing leaks");
    }

    #[test]
    fn silent_connections_make_room_before_talking_ones() {
        let mut t = table(100, 3);
        let a = t.admit(ip("192.0.2.1"), 1).id;
        t.admit(ip("192.0.2.1"), 2);
        let c = t.admit(ip("192.0.2.1"), 3).id;
        t.mark_active(a);
        // The oldest silent one goes, not the older one that has spoken.
        let e = t.admit(ip("192.0.2.1"), 4).evicted.unwrap();
        assert_eq!(e.payload, 2);
        t.mark_active(c);
        let e = t.admit(ip("192.0.2.1"), 5).evicted.unwrap();
        assert_eq!(e.payload, 4);
        // Only the newcomer is silent: the oldest talking one goes.
        let d = t.admit(ip("192.0.2.1"), 6);
        assert_eq!(d.evicted.unwrap().payload, 5);
        t.mark_active(d.id);
        let e = t.admit(ip("192.0.2.1"), 7).evicted.unwrap();
        assert_eq!(e.payload, 1, "all talking: the oldest");
        assert_eq!(t.held_by(ip("192.0.2.1")), 3);
    }

    #[test]
    fn a_full_table_prefers_a_silent_victim_among_equals() {
        let mut t = table(2, 2);
        let a = t.admit(ip("192.0.2.1"), 1).id;
        t.admit(ip("192.0.2.2"), 2);
        t.mark_active(a);
        let e = t.admit(ip("192.0.2.3"), 3).evicted.unwrap();
        assert_eq!(e.payload, 2, "the silent one, though younger");
        // Every other connection has spoken: the newcomer (silent, as every
        // newcomer is) still is not the one to go.
        let mut t = table(2, 2);
        let a = t.admit(ip("192.0.2.1"), 1).id;
        let b = t.admit(ip("192.0.2.2"), 2).id;
        t.mark_active(a);
        t.mark_active(b);
        let e = t.admit(ip("192.0.2.3"), 3).evicted.unwrap();
        assert_eq!(e.payload, 1);
    }
}
