//! Connection slots shared fairly among client prefixes: the async driver of
//! [`nts_proto::admission`]. Each admitted connection holds a [`Slot`] and an
//! [`EvictionNotice`]; when the table evicts it, the notice completes and the
//! connection's task ends itself. Dropping the slot frees it.

use nts_proto::admission::{Admission, AdmissionLimits, ConnectionId, Eviction};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// A table of connection slots (see the module documentation).
#[derive(Debug)]
pub struct Slots {
    table: Mutex<Admission<oneshot::Sender<()>>>,
}

/// One admitted connection's claim on a slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: ConnectionId,
}

/// Completes when the table evicted its connection to make room.
#[derive(Debug)]
pub struct EvictionNotice(oneshot::Receiver<()>);

/// What [`Slots::admit`] gives a new connection.
#[derive(Debug)]
pub struct Admitted {
    pub slot: Slot,
    pub notice: EvictionNotice,
    /// Set when making room evicted an older connection, and why.
    pub made_room: Option<Eviction>,
}

impl Slots {
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Admission::new(limits)),
        })
    }

    /// Admit a connection from `addr`. The newcomer always gets a slot; when
    /// that took one from an older connection, that connection's notice
    /// completes.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Admitted {
        let (tx, rx) = oneshot::channel();
        let admitted = self.lock().admit(addr, tx);
        // Dropping the evicted connection's sender is what tells it.
        let made_room = admitted.evicted.map(|e| e.reason);
        Admitted {
            slot: Slot {
                slots: self.clone(),
                id: admitted.id,
            },
            notice: EvictionNotice(rx),
            made_room,
        }
    }

    /// Connections holding a slot.
    pub fn in_use(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admission<oneshot::Sender<()>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Slot {
    /// The peer has sent its first bytes: silent connections of its address go first.
    pub fn mark_active(&self) {
        self.slots.lock().mark_active(self.id);
    }

    /// Wait for the peer's first bytes, then [`Self::mark_active`]. Returns
    /// at once, unmarked, when the peer closed or the socket failed.
    pub async fn await_first_bytes(&self, tcp: &tokio::net::TcpStream) {
        // peek waits for data itself (readable() may wake without any).
        if matches!(tcp.peek(&mut [0u8; 1]).await, Ok(n) if n > 0) {
            self.mark_active();
        }
    }
}

impl EvictionNotice {
    /// Completes when the table evicted this connection to make room.
    pub async fn wait(self) {
        // The sender is never used to send: only its drop (eviction) ends the wait.
        let _ = self.0.await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::client_prefix::PrefixLengths;
    use std::time::Duration;

    #[tokio::test]
    async fn an_evicted_slot_learns_it_and_a_dropped_one_frees_its_place() {
        let slots = Slots::new(AdmissionLimits {
            capacity: 2,
            per_prefix: 2,
            prefixes: PrefixLengths::DEFAULT,
        });
        let flood: IpAddr = "192.0.2.1".parse().unwrap();
        let a = slots.admit(flood);
        let b = slots.admit(flood);
        assert!(a.made_room.is_none() && b.made_room.is_none());
        let c = slots.admit("192.0.2.9".parse().unwrap());
        assert_eq!(c.made_room, Some(Eviction::TableFull));
        tokio::time::timeout(Duration::from_secs(1), a.notice.wait())
            .await
            .expect("the oldest of the heaviest prefix is told");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.notice.wait())
                .await
                .is_err(),
            "only one connection is evicted"
        );
        assert_eq!(slots.in_use(), 2);
        drop(a.slot); // already evicted: frees nothing twice
        drop(c.slot);
        assert_eq!(slots.in_use(), 1);
        drop(b.slot);
        assert_eq!(slots.in_use(), 0);
    }
}
