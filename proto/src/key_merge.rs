//! Which ke-servers' key sets a time server serves, as a pure state machine:
//! every endpoint's latest set is kept, accepted or not; the ring in service
//! is the union of the sets [`choose`] serves (sets from another root secret
//! are refused, never mixed: rule 7), and the choice is made again whenever a
//! set arrives or keys expire. Time comes in as [`UnixTime`]; the time
//! server's shell holds this behind a lock, stores the ring and logs and
//! exports the changes it reports.

use crate::key_agreement::{choose, Offer, RootFingerprint};
use crate::key_ring::{CookieKey, KeyRing};
use crate::time::UnixTime;

/// A change in whether an endpoint's latest set is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalChange {
    pub endpoint: usize,
    pub refused: bool,
    /// The fingerprint its set named.
    pub theirs: Option<RootFingerprint>,
}

/// The outcome of one choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeStep {
    /// By endpoint: its keys are served.
    pub accepted: Vec<bool>,
    /// The ring to serve: the served sets' unexpired keys.
    pub ring: KeyRing,
    /// Endpoints whose refusal changed, in order.
    pub refusals: Vec<RefusalChange>,
    /// The served root secret, when it changed.
    pub served_changed: Option<Option<RootFingerprint>>,
}

/// Every endpoint's latest key set, and which are served.
#[derive(Debug, Clone)]
pub struct KeyMerge {
    /// By endpoint: the fingerprint it named and its unexpired keys.
    offers: Vec<Option<(Option<RootFingerprint>, Vec<CookieKey>)>>,
    refused: Vec<bool>,
    /// By endpoint: its link was closed (a replica DNS no longer names) but
    /// its set is kept, being the only one held, until a live link's set arrives.
    retired: Vec<bool>,
    served: Option<RootFingerprint>,
}

fn unix_secs(t: UnixTime) -> u64 {
    u64::try_from(t.as_secs()).unwrap_or(0)
}

impl KeyMerge {
    pub fn new(endpoints: usize) -> Self {
        Self {
            offers: vec![None; endpoints],
            refused: vec![false; endpoints],
            retired: vec![false; endpoints],
            served: None,
        }
    }

    /// Endpoint `index`'s latest set is held but not served.
    pub fn refused(&self, index: usize) -> bool {
        self.refused.get(index).copied().unwrap_or(false)
    }

    /// The root secret whose keys are served, when a served ke-server named it.
    pub fn served(&self) -> Option<RootFingerprint> {
        self.served
    }

    /// Take endpoint `index`'s latest set and choose again. `held` is the ring
    /// in service (a tie between groups keeps the group that agrees with it).
    pub fn offer(
        &mut self,
        index: usize,
        fingerprint: Option<RootFingerprint>,
        keys: Vec<CookieKey>,
        held: &KeyRing,
        now: UnixTime,
    ) -> MergeStep {
        if let Some(slot) = self.offers.get_mut(index) {
            *slot = Some((fingerprint, keys));
            self.retired[index] = false;
            // A live replica's set replaces what retired links left.
            for (offer, retired) in self.offers.iter_mut().zip(self.retired.iter_mut()) {
                if std::mem::take(retired) {
                    *offer = None;
                }
            }
        }
        self.decide(held, now)
    }

    /// Endpoint `index`'s link is closed for good (its address left the
    /// discovered set; the index may be reused). Its set is dropped at once
    /// when another live endpoint holds one; otherwise it is kept, so the
    /// keys in service never vanish with a replica, until a live set arrives
    /// or its keys expire.
    pub fn retire(&mut self, index: usize, held: &KeyRing, now: UnixTime) -> MergeStep {
        if index < self.offers.len() {
            let others = self
                .offers
                .iter()
                .zip(&self.retired)
                .enumerate()
                .any(|(i, (o, r))| i != index && o.is_some() && !r);
            if others {
                self.offers[index] = None;
                self.retired[index] = false;
            } else if self.offers[index].is_some() {
                self.retired[index] = true;
            }
        }
        self.decide(held, now)
    }

    /// Drop expired keys and choose again (which may change whose sets are served).
    pub fn prune(&mut self, held: &KeyRing, now: UnixTime) -> MergeStep {
        self.decide(held, now)
    }

    fn decide(&mut self, held: &KeyRing, now: UnixTime) -> MergeStep {
        let now = unix_secs(now);
        for slot in self.offers.iter_mut() {
            if let Some((_, keys)) = slot {
                keys.retain(|k| now < k.not_after);
                if keys.is_empty() {
                    *slot = None;
                }
            }
        }
        for (slot, retired) in self.offers.iter().zip(self.retired.iter_mut()) {
            if slot.is_none() {
                *retired = false;
            }
        }
        let held = (!held.is_empty()).then(|| Offer {
            fingerprint: self.served,
            keys: held.keys(),
        });
        let offers: Vec<Option<Offer<'_>>> = self
            .offers
            .iter()
            .map(|o| {
                o.as_ref().map(|(fingerprint, keys)| Offer {
                    fingerprint: *fingerprint,
                    keys,
                })
            })
            .collect();
        let choice = choose(held, &offers);
        let mut refusals = Vec::new();
        for (i, offer) in offers.iter().enumerate() {
            let refused = offer.is_some() && !choice.accepted[i];
            if refused != self.refused[i] {
                refusals.push(RefusalChange {
                    endpoint: i,
                    refused,
                    theirs: offer.and_then(|o| o.fingerprint),
                });
            }
        }
        let served: Vec<CookieKey> = offers
            .iter()
            .zip(&choice.accepted)
            .filter(|(_, a)| **a)
            .filter_map(|(o, _)| *o)
            .flat_map(|o| o.keys.iter())
            .filter(|k| now < k.not_after)
            .cloned()
            .collect();
        for r in &refusals {
            self.refused[r.endpoint] = r.refused;
        }
        let served_changed = (choice.fingerprint != self.served).then_some(choice.fingerprint);
        self.served = choice.fingerprint;
        MergeStep {
            accepted: choice.accepted,
            ring: KeyRing::from_keys(served),
            refusals,
            served_changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_ring::{KeySchedule, RootSecret};

    const NOW: i64 = 1_800_000_000;

    fn set(b: u8) -> (Option<RootFingerprint>, Vec<CookieKey>) {
        let root = RootSecret::from_bytes(&[b; 32]).unwrap();
        let ring = KeyRing::derive(&root, &KeySchedule::new(3600, 1).unwrap(), NOW as u64);
        (Some(RootFingerprint::of(&root)), ring.keys().to_vec())
    }

    #[test]
    fn another_secret_is_refused_until_every_replica_moves_to_it() {
        let now = UnixTime::from_secs(NOW);
        let mut m = KeyMerge::new(2);
        let ((f1, k1), (f2, k2)) = (set(1), set(2));
        let s = m.offer(0, f1, k1.clone(), &KeyRing::default(), now);
        assert_eq!(s.accepted, vec![true, false]);
        assert_eq!(s.served_changed, Some(f1));
        assert!(s.refusals.is_empty());
        let held = s.ring;
        assert_eq!(held.keys(), KeyRing::from_keys(k1.clone()).keys());
        // b restarted with another secret: refused, the keys served unchanged.
        let s = m.offer(1, f2, k2.clone(), &held, now);
        assert_eq!(s.accepted, vec![true, false]);
        assert_eq!(
            s.refusals,
            vec![RefusalChange {
                endpoint: 1,
                refused: true,
                theirs: f2
            }]
        );
        assert_eq!(s.ring, held);
        assert!(m.refused(1) && !m.refused(0));
        assert_eq!(m.served(), f1);
        // b back with the right secret: served again, said once.
        let s = m.offer(1, f1, k1.clone(), &held, now);
        assert_eq!(s.accepted, vec![true, true]);
        assert_eq!(s.refusals.len(), 1);
        assert!(!s.refusals[0].refused);
        // a moves first (refused: a tie keeps the keys held), then b: both served.
        assert_eq!(
            m.offer(0, f2, k2.clone(), &held, now).accepted,
            vec![false, true]
        );
        let s = m.offer(1, f2, k2.clone(), &held, now);
        assert_eq!(s.accepted, vec![true, true]);
        assert_eq!(s.served_changed, Some(f2));
        assert_eq!(s.ring.keys(), KeyRing::from_keys(k2).keys());
    }

    #[test]
    fn expired_keys_leave_the_ring_and_empty_sets_are_forgotten() {
        let mut m = KeyMerge::new(1);
        let (f, keys) = set(3);
        let last = keys.iter().map(|k| k.not_after).max().unwrap();
        let first = keys.iter().map(|k| k.not_after).min().unwrap();
        let now = UnixTime::from_secs(NOW);
        let held = m.offer(0, f, keys.clone(), &KeyRing::default(), now).ring;
        assert_eq!(held.keys().len(), keys.len());
        // Past the first key's window: it is gone from the ring served.
        let s = m.prune(&held, UnixTime::from_secs(first as i64));
        assert_eq!(s.ring.keys().len(), keys.len() - 1);
        assert!(s.ring.keys().iter().all(|k| k.not_after > first));
        // Past every window: nothing is served, and the set is not refused.
        let s = m.prune(&s.ring, UnixTime::from_secs(last as i64));
        assert!(s.ring.is_empty());
        assert_eq!(s.accepted, vec![false]);
        assert!(!m.refused(0));
    }

    #[test]
    fn a_retired_replica_set_is_dropped_only_when_another_is_held() {
        let now = UnixTime::from_secs(NOW);
        let ((f1, k1), (f2, k2)) = (set(1), set(2));
        let mut m = KeyMerge::new(3);
        let held = m.offer(0, f1, k1.clone(), &KeyRing::default(), now).ring;
        // The only replica goes: its keys stay in service.
        let s = m.retire(0, &held, now);
        assert_eq!(s.ring, held);
        assert_eq!(s.accepted, vec![true, false, false]);
        // A new replica's set (another secret, after a rotation of the
        // root secret) replaces it rather than being outvoted by it.
        let s = m.offer(1, f2, k2.clone(), &held, now);
        assert_eq!(s.accepted, vec![false, true, false]);
        assert_eq!(s.ring.keys(), KeyRing::from_keys(k2.clone()).keys());
        // With two live replicas, retiring one drops its set at once.
        let held = s.ring;
        m.offer(2, f2, k2.clone(), &held, now);
        let s = m.retire(1, &held, now);
        assert_eq!(s.accepted, vec![false, false, true]);
        // Retiring an endpoint that never sent a set changes nothing.
        let s = m.retire(0, &held, now);
        assert_eq!(s.accepted, vec![false, false, true]);
        assert_eq!(s.ring.keys(), KeyRing::from_keys(k2).keys());
        let _ = (f1, k1);
    }
}
