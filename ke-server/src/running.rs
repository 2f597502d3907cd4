//! A started KE server, and how it leaves: the graceful drain after SIGTERM.

use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A started server: its bound addresses, metrics, and its NTS-KE listeners.
pub struct Running {
    pub ke_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// Read by readiness: not ready from SIGTERM on.
    pub(crate) draining: Arc<AtomicBool>,
    pub(crate) listeners: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) drain_delay: Duration,
    /// Longest a connection in flight can still take.
    pub(crate) in_flight_limit: Duration,
}

impl Running {
    /// Leave gracefully (after SIGTERM): turn not ready at once, keep serving
    /// for `server.drain_delay` (clients the load balancer still sends here
    /// are answered), stop accepting, and wait for the connections in flight
    /// (at most a handshake and a request timeout). `abort` (a second
    /// signal) cuts the wait short.
    pub async fn drain(self, abort: impl std::future::Future<Output = ()>) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.draining.set(1);
        tracing::info!(
            delay_s = self.drain_delay.as_secs_f64(),
            "draining: not ready, serving until the load balancer has moved clients away"
        );
        tokio::pin!(abort);
        let waited = async {
            tokio::time::sleep(self.drain_delay).await;
            for l in &self.listeners {
                l.abort();
            }
            let t0 = tokio::time::Instant::now();
            while self.metrics.active_connections.get() > 0 && t0.elapsed() < self.in_flight_limit {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = waited => {}
            () = &mut abort => tracing::info!("second signal: leaving without finishing the drain"),
        }
        tracing::info!(
            unfinished = self.metrics.active_connections.get(),
            "drained: no longer accepting; exiting"
        );
    }
}
