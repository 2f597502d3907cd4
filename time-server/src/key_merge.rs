//! Which ke-servers' key sets a time server serves: the rules are
//! [`nts_proto::key_merge::KeyMerge`] (sets from another root secret are
//! refused, never mixed: rule 7); this shell holds it behind a lock, reads
//! the clock, stores the ring it chooses and logs and exports what changed.

use crate::keys::{unix_now, KeyStore};
use crate::metrics::Metrics;
use nts_proto::key_agreement::RootFingerprint;
use nts_proto::key_merge::{KeyMerge, MergeStep};
use nts_proto::key_ring::CookieKey;
use nts_proto::time::UnixTime;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Per-endpoint latest key sets, merged into the ring in service.
pub struct Merger {
    state: Mutex<KeyMerge>,
    endpoints: Vec<String>,
    pub store: Arc<KeyStore>,
    /// With the store, what health is decided from (key sync reports it).
    pub serving: Arc<crate::ServingState>,
    metrics: Arc<Metrics>,
}

impl Merger {
    pub fn new(
        endpoints: Vec<String>,
        store: Arc<KeyStore>,
        serving: Arc<crate::ServingState>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            state: Mutex::new(KeyMerge::new(endpoints.len())),
            endpoints,
            store,
            serving,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyMerge> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take endpoint `index`'s latest set and choose again; true when its keys are served.
    pub fn update(
        &self,
        index: usize,
        fingerprint: Option<RootFingerprint>,
        keys: Vec<CookieKey>,
    ) -> bool {
        let now = unix_now();
        let mut st = self.lock();
        let step = st.offer(
            index,
            fingerprint,
            keys,
            &self.store.load(),
            UnixTime::from_secs(now as i64),
        );
        let accepted = step.accepted.get(index).copied().unwrap_or(false);
        if !accepted {
            self.metrics.key_conflicts.fetch_add(1, Ordering::Relaxed);
        }
        self.apply(&st, step, accepted, now);
        accepted
    }

    /// Endpoint `index`'s latest set is held but refused.
    pub fn refused(&self, index: usize) -> bool {
        self.lock().refused(index)
    }

    pub fn served_fingerprint(&self) -> Option<RootFingerprint> {
        self.lock().served()
    }

    /// Drop expired keys (which may change whose sets are served).
    pub fn prune(&self) {
        let now = unix_now();
        let mut st = self.lock();
        let step = st.prune(&self.store.load(), UnixTime::from_secs(now as i64));
        self.apply(&st, step, false, now);
    }

    /// Log and export what a choice changed and store its ring; `fresh`
    /// counts the ring as a refresh.
    fn apply(&self, st: &KeyMerge, step: MergeStep, fresh: bool, now: u64) {
        for r in &step.refusals {
            if let Some(endpoint) = self.endpoints.get(r.endpoint) {
                self.log_refusal(endpoint, r.refused, r.theirs, st.served());
            }
            self.metrics.key_sync_refused(r.endpoint, r.refused);
        }
        if let Some(served) = step.served_changed {
            if let Some(fp) = served {
                tracing::info!(fingerprint = %fp, "serving the cookie keys of root secret {fp}");
            }
            *self
                .metrics
                .served_fingerprint
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = served;
        }
        if fresh {
            self.store.store(step.ring, now);
        } else if **self.store.load() != step.ring {
            self.store.replace(step.ring);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};

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
            Default::default(),
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
