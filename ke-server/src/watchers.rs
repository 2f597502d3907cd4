//! Key-set watches (WatchKeys streams) per time server. A time server keeps
//! one watch per KE replica; a new watch for a `server_id` that already has
//! `per_server` replaces the oldest, so a reconnect after a network blip
//! never waits for its dead stream to time out, and an authenticated peer
//! cannot pile up streams (and the memory each holds) under one name.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The open watches, by server_id.
#[derive(Debug)]
pub struct Watchers {
    per_server: usize,
    open: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    by_server: HashMap<String, VecDeque<(u64, oneshot::Sender<()>)>>,
}

/// One open watch; dropping it (its stream ended) removes it.
#[derive(Debug)]
pub struct Watch {
    watchers: Arc<Watchers>,
    server_id: String,
    seq: u64,
}

impl Watchers {
    pub fn new(per_server: usize) -> Arc<Self> {
        Arc::new(Self {
            per_server: per_server.max(1),
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open a watch for `server_id`. The receiver completes when a newer
    /// watch replaced this one; the watch's stream then ends. Returns how
    /// many older watches were replaced.
    pub fn open(self: &Arc<Self>, server_id: &str) -> (Watch, oneshot::Receiver<()>, usize) {
        let (tx, rx) = oneshot::channel();
        let mut t = self.lock();
        let seq = t.next;
        t.next += 1;
        let list = t.by_server.entry(server_id.to_string()).or_default();
        list.push_back((seq, tx));
        let mut replaced = 0;
        while list.len() > self.per_server {
            // Dropping its sender ends the oldest stream.
            list.pop_front();
            replaced += 1;
        }
        let watch = Watch {
            watchers: self.clone(),
            server_id: server_id.to_string(),
            seq,
        };
        (watch, rx, replaced)
    }

    /// Watches open for `server_id`.
    pub fn count(&self, server_id: &str) -> usize {
        self.lock()
            .by_server
            .get(server_id)
            .map_or(0, VecDeque::len)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut t = self.watchers.lock();
        if let Some(list) = t.by_server.get_mut(&self.server_id) {
            list.retain(|(s, _)| *s != self.seq);
            if list.is_empty() {
                t.by_server.remove(&self.server_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_watch_replaces_the_oldest_beyond_the_share() {
        let w = Watchers::new(2);
        let (a, mut ra, _) = w.open("ts:1");
        let (_b, mut rb, _) = w.open("ts:1");
        let (_other, _, _) = w.open("ts:2");
        assert!(ra
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        let (_c, _rc, replaced) = w.open("ts:1");
        assert_eq!(replaced, 1);
        assert_eq!(
            ra.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the oldest is told"
        );
        assert!(rb
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert_eq!(w.count("ts:1"), 2);
        drop(a); // already replaced: removes nothing else
        assert_eq!(w.count("ts:1"), 2);
        assert_eq!(w.count("ts:2"), 1);
    }
}
