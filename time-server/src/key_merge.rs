//! Which ke-servers' key sets a time server serves. Every endpoint's latest
//! set is kept, accepted or not; the ring in service is the union of the sets
//! [`nts_proto::key_agreement::choose`] serves: sets from another root secret
//! are refused, never mixed (rule 7), and the choice is made again whenever a
//! set arrives or keys expire.

use crate::keys::{unix_now, KeyStore};
use crate::metrics::Metrics;
use nts_proto::key_agreement::{choose, Offer, RootFingerprint};
use nts_proto::key_ring::{CookieKey, KeyRing};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Every endpoint's latest key set, accepted or not, and which are served.
#[derive(Default)]
struct MergeState {
    /// By endpoint index: the fingerprint it named and its unexpired keys.
    offers: Vec<Option<(Option<RootFingerprint>, Vec<CookieKey>)>>,
    /// By endpoint index: its latest set is held but not served.
    refused: Vec<bool>,
    /// The root secret whose keys are served, when a served ke-server named it.
    served: Option<RootFingerprint>,
}

/// Per-endpoint latest key sets, merged into the ring in service by
/// [`nts_proto::key_agreement::choose`]: ke-servers that disagree about the
/// root secret are never mixed; the sets of the others are refused.
pub struct Merger {
    state: Mutex<MergeState>,
    endpoints: Vec<String>,
    pub store: Arc<KeyStore>,
    metrics: Arc<Metrics>,
}

impl Merger {
    pub fn new(endpoints: Vec<String>, store: Arc<KeyStore>, metrics: Arc<Metrics>) -> Self {
        let n = endpoints.len();
        let state = MergeState {
            offers: vec![None; n],
            refused: vec![false; n],
            served: None,
        };
        Self {
            state: Mutex::new(state),
            endpoints,
            store,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MergeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take endpoint `index`'s latest set and choose again; true when its keys are served.
    pub fn update(
        &self,
        index: usize,
        fingerprint: Option<RootFingerprint>,
        keys: Vec<CookieKey>,
    ) -> bool {
        let mut st = self.lock();
        if let Some(slot) = st.offers.get_mut(index) {
            *slot = Some((fingerprint, keys));
        }
        let served = self.decide(&mut st);
        let accepted = served.get(index).copied().unwrap_or(false);
        if !accepted {
            self.metrics.key_conflicts.fetch_add(1, Ordering::Relaxed);
        }
        self.publish(&st, &served, accepted);
        accepted
    }

    /// Endpoint `index`'s latest set is held but refused.
    pub fn refused(&self, index: usize) -> bool {
        self.lock().refused.get(index).copied().unwrap_or(false)
    }

    pub fn served_fingerprint(&self) -> Option<RootFingerprint> {
        self.lock().served
    }

    /// Drop expired keys, choose whose sets are served, and log and export
    /// what changed. Returns, by endpoint, whether its keys are served.
    fn decide(&self, st: &mut MergeState) -> Vec<bool> {
        let now = unix_now();
        for slot in st.offers.iter_mut() {
            if let Some((_, keys)) = slot {
                keys.retain(|k| now < k.not_after);
                if keys.is_empty() {
                    *slot = None;
                }
            }
        }
        let ring = self.store.load();
        let held = (!ring.is_empty()).then(|| Offer {
            fingerprint: st.served,
            keys: ring.keys(),
        });
        let offers: Vec<Option<Offer<'_>>> = st
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
        let served_fp = choice.fingerprint;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let now_refused = offers[i].is_some() && !choice.accepted[i];
            if now_refused != st.refused[i] {
                self.log_refusal(
                    endpoint,
                    now_refused,
                    offers[i].and_then(|o| o.fingerprint),
                    served_fp,
                );
            }
            st.refused[i] = now_refused;
            self.metrics.key_sync_refused(i, now_refused);
        }
        if served_fp != st.served {
            if let Some(fp) = served_fp {
                tracing::info!(fingerprint = %fp, "serving the cookie keys of root secret {fp}");
            }
            st.served = served_fp;
            *self
                .metrics
                .served_fingerprint
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = served_fp;
        }
        choice.accepted
    }

    /// Said once per change: a refusal names both fingerprints.
    fn log_refusal(
        &self,
        endpoint: &str,
        refused: bool,
        theirs: Option<RootFingerprint>,
        served: Option<RootFingerprint>,
    ) {
        let name =
            |f: Option<RootFingerprint>| f.map_or_else(|| "unknown".into(), |f| f.to_string());
        if refused {
            tracing::warn!(
                endpoint = %endpoint,
                fingerprint = %name(theirs),
                served = %name(served),
                "key set refused: this ke-server's root secret (fingerprint {}) differs from the one whose keys are served ({}); serving with the keys held",
                name(theirs),
                name(served)
            );
        } else {
            tracing::info!(endpoint = %endpoint, "key set from this ke-server agrees with the keys served again");
        }
    }

    /// Rebuild the ring from the served endpoints' sets; `fresh` counts it as a refresh.
    fn publish(&self, st: &MergeState, served: &[bool], fresh: bool) {
        let now = unix_now();
        let all: Vec<CookieKey> = st
            .offers
            .iter()
            .zip(served)
            .filter(|(_, s)| **s)
            .filter_map(|(o, _)| o.as_ref())
            .flat_map(|(_, keys)| keys.iter())
            .filter(|k| now < k.not_after)
            .cloned()
            .collect();
        let ring = KeyRing::from_keys(all);
        if fresh {
            self.store.store(ring, now);
        } else if **self.store.load() != ring {
            self.store.replace(ring);
        }
    }

    /// Drop expired keys (which may change whose sets are served).
    pub fn prune(&self) {
        let mut st = self.lock();
        let served = self.decide(&mut st);
        self.publish(&st, &served, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::key_ring::{KeySchedule, RootSecret};

    fn set(b: u8) -> (Option<RootFingerprint>, Vec<CookieKey>) {
        let root = RootSecret::from_bytes(&[b; 32]).unwrap();
        let ring = KeyRing::derive(&root, &KeySchedule::new(3600, 1).unwrap(), unix_now());
        (Some(RootFingerprint::of(&root)), ring.keys().to_vec())
    }

    #[test]
    fn another_secret_is_refused_until_every_replica_moves_to_it() {
        let metrics = Arc::new(Metrics::new(1, &["a:1".into(), "b:1".into()]));
        let store = Arc::new(KeyStore::default());
        let m = Merger::new(
            vec!["a:1".into(), "b:1".into()],
            store.clone(),
            metrics.clone(),
        );
        let ((f1, k1), (f2, k2)) = (set(1), set(2));
        assert!(m.update(0, f1, k1.clone()));
        // b restarted with another secret: refused, the keys served unchanged.
        assert!(!m.update(1, f2, k2.clone()));
        assert!(m.refused(1) && !m.refused(0));
        assert_eq!(m.served_fingerprint(), f1);
        assert_eq!(store.load().keys(), KeyRing::from_keys(k1.clone()).keys());
        let text = metrics.render();
        assert!(
            text.contains("nts_time_key_sync_refused{endpoint=\"b:1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "nts_time_root_secret_info{{fingerprint=\"{}\"}} 1",
                f1.unwrap()
            )),
            "{text}"
        );
        // b back with the right secret: served again.
        assert!(m.update(1, f1, k1.clone()));
        assert!(!m.refused(1));
        // a moves first (refused: a tie keeps the keys held), then b: both served.
        assert!(!m.update(0, f2, k2.clone()));
        assert!(m.update(1, f2, k2.clone()));
        assert!(!m.refused(0) && !m.refused(1));
        assert_eq!(m.served_fingerprint(), f2);
        assert_eq!(store.load().keys(), KeyRing::from_keys(k2).keys());
        assert_eq!(metrics.key_conflicts.load(Ordering::Relaxed), 2);
    }
}
