//! Cookie keys for the packet path. Workers read the current ring through an
//! `ArcSwap` (no lock, no allocation); a background thread replaces it.
//!
//! The source in this version is the root secret file shared with the
//! ke-server on the same host; the ring is re-derived every epoch and expired
//! keys are dropped.

use arc_swap::ArcSwap;
use nts_ops::file_reader::FileReader;
use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared, atomically replaced key ring plus when it was last refreshed.
#[derive(Debug, Default)]
pub struct KeyStore {
    ring: ArcSwap<KeyRing>,
    /// Unix seconds when the key set was last known current: received, derived
    /// from the root secret file, or confirmed by a live key-sync link (0: never).
    refreshed_at: AtomicU64,
}

impl KeyStore {
    pub fn load(&self) -> arc_swap::Guard<Arc<KeyRing>> {
        self.ring.load()
    }

    pub fn store(&self, ring: KeyRing, now: u64) {
        self.ring.store(Arc::new(ring));
        self.refreshed_at.store(now, Ordering::Relaxed);
    }

    /// A key master confirmed that the ring held is current (the key set is fresh).
    pub fn confirm(&self, now: u64) {
        self.refreshed_at.store(now, Ordering::Relaxed);
    }

    /// Replace the ring without counting it as a refresh (pruning expired keys).
    pub fn replace(&self, ring: KeyRing) {
        self.ring.store(Arc::new(ring));
    }

    /// Seconds since the key set was last known current, or None if it never was.
    pub fn age(&self, now: u64) -> Option<u64> {
        match self.refreshed_at.load(Ordering::Relaxed) {
            0 => None,
            t => Some(now.saturating_sub(t)),
        }
    }

    pub fn has_keys(&self, now: u64) -> bool {
        self.ring.load().keys().iter().any(|k| now < k.not_after)
    }
}

pub fn unix_now() -> u64 {
    crate::clock_state::now_nanos() / 1_000_000_000
}

/// Read and parse the root secret file (through the privileged reader after a user switch).
pub fn read_root(reader: &FileReader, path: &Path) -> Result<RootSecret, String> {
    let text = reader
        .read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // The KE server's own parser and messages: one file format, one advice.
    RootSecret::from_file_text(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Keep `store` filled from the root secret file. Waits (and says so) while the
/// file does not exist yet, as when ke-server and time-server start together.
pub fn run_file_source(
    path: PathBuf,
    schedule: KeySchedule,
    store: Arc<KeyStore>,
    reader: Arc<FileReader>,
) {
    let mut last_error: Option<String> = None;
    loop {
        let now = unix_now();
        match read_root(&reader, &path) {
            Ok(root) => {
                if last_error.take().is_some() || store.age(now).is_none() {
                    tracing::info!(file = %path.display(), "cookie keys loaded");
                }
                store.store(KeyRing::derive(&root, &schedule, now), now);
            }
            Err(e) => {
                if last_error.as_deref() != Some(&e) {
                    tracing::warn!(
                        "cannot load cookie keys ({e}); serving with the keys held, retrying"
                    );
                    last_error = Some(e);
                }
                // Keys past their window must stop opening cookies even without a refresh.
                let pruned = store.load().without_expired(now);
                if pruned.keys().len() != store.load().keys().len() {
                    store.replace(pruned);
                }
            }
        }
        let next = schedule.epoch_start(now) + schedule.rotation_period;
        let wait = if last_error.is_some() {
            1
        } else {
            (next - now).clamp(1, 10)
        };
        std::thread::sleep(Duration::from_secs(wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_reports_age_and_keys() {
        let s = KeyStore::default();
        assert_eq!(s.age(100), None);
        assert!(!s.has_keys(100));
        let root = RootSecret::from_bytes(&[1; 32]).unwrap();
        let sched = KeySchedule::new(10, 1).unwrap();
        s.store(KeyRing::derive(&root, &sched, 100), 100);
        assert_eq!(s.age(105), Some(5));
        assert!(s.has_keys(105));
        assert!(!s.has_keys(1000));
    }

    #[test]
    fn root_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r");
        let r = FileReader::direct();
        assert!(read_root(&r, &p).is_err());
        std::fs::write(&p, "00").unwrap();
        assert!(read_root(&r, &p).unwrap_err().contains("found 2"));
        // What a KE server killed while creating the file left (before it
        // wrote atomically): the same reason and fix as the KE server gives.
        std::fs::write(&p, "").unwrap();
        let e = read_root(&r, &p).unwrap_err();
        assert!(
            e.contains(&p.display().to_string())
                && e.contains("empty (0 bytes)")
                && e.contains("delete it"),
            "{e}"
        );
        std::fs::write(&p, "not hex").unwrap();
        let e = read_root(&r, &p).unwrap_err();
        assert!(e.contains("copy the file from another KE replica"), "{e}");
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(read_root(&r, &p).is_ok());
    }
}
