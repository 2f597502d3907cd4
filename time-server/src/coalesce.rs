//! Adaptive batching: at moderate rates a worker would wake up for every
//! datagram, and a wake-up plus two system calls cost several times what
//! answering costs. After answering a short batch the worker may wait a
//! little before reading again, so the next read returns several requests at
//! once, the way a NIC coalesces interrupts.
//!
//! Off by default (`server.batch_wait = 0`): measured per core at 40k/s NTS
//! it saves 15% of CPU per request at 100 µs and 23% at 200 µs, for 100 and
//! 240 µs more median response time (docs/time-server.md).
//!
//! The wait is bounded (`server.batch_wait`), and taken only when it pays: the
//! arrival rate must bring at least [`MIN_GAIN`] more requests within it (at
//! low rates a wait would only add latency), and none after a full batch (a
//! backlog is waiting already). Accuracy is untouched: receive timestamps are
//! the kernel's, and the transmit timestamp is read after the wait, so the
//! time a request spends waiting is inside the server's t3 - t2 and not in
//! the client's measured delay.

/// Requests a wait must be expected to gather before it is worth taking.
pub const MIN_GAIN: f64 = 2.0;
/// Requests per wait the worker aims for.
const TARGET: f64 = 8.0;
/// Window of the arrival-rate estimate.
const WINDOW_NS: u64 = 20_000_000;

/// Decides, after each batch, how long to wait before reading again.
#[derive(Debug, Clone)]
pub struct Coalescer {
    max_wait_ns: u64,
    batch: usize,
    window_start: u64,
    window_count: u64,
    /// Requests per nanosecond over the last complete window.
    rate: f64,
}

impl Coalescer {
    /// `max_wait_ns` 0 never waits.
    pub fn new(max_wait_ns: u64, batch: usize) -> Self {
        Self {
            max_wait_ns,
            batch,
            window_start: 0,
            window_count: 0,
            rate: 0.0,
        }
    }

    /// `n` requests were read at `now_ns` (monotonic); how long to wait before
    /// the next read, in nanoseconds (0: read at once).
    pub fn after_batch(&mut self, n: usize, now_ns: u64) -> u64 {
        if self.max_wait_ns == 0 {
            return 0;
        }
        self.window_count += n as u64;
        let elapsed = now_ns.saturating_sub(self.window_start);
        if elapsed >= WINDOW_NS {
            // A gap of several windows (idle) leaves the rate at what that long window saw.
            self.rate = self.window_count as f64 / elapsed as f64;
            self.window_start = now_ns;
            self.window_count = 0;
        }
        if n >= self.batch || self.rate <= 0.0 {
            return 0;
        }
        let expected = self.rate * self.max_wait_ns as f64;
        if expected < MIN_GAIN {
            return 0;
        }
        ((TARGET / self.rate) as u64).min(self.max_wait_ns)
    }

    /// The arrival-rate estimate, requests per second.
    pub fn rate_per_second(&self) -> f64 {
        self.rate * 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed requests at `rate` per second for 100 ms, one read per arrival
    /// or per wait, and return the waits chosen at the end.
    fn steady(rate: f64, max_wait_ns: u64) -> (u64, f64) {
        let mut c = Coalescer::new(max_wait_ns, 32);
        let gap = 1e9 / rate;
        let mut now = 0u64;
        let mut wait = 0;
        let mut arrivals = 0.0;
        while now < 100_000_000 {
            // The read returns what arrived since the last one (at least one).
            let next = now + wait.max(gap as u64);
            let n = ((next as f64 - arrivals) / gap).floor().max(1.0);
            arrivals += n * gap;
            now = next;
            wait = c.after_batch(n as usize, now);
        }
        (wait, c.rate_per_second())
    }

    #[test]
    fn waits_only_where_it_gathers_requests() {
        // 40k/s: 4 expected in 100 µs, so wait the maximum.
        let (w, r) = steady(40_000.0, 100_000);
        assert_eq!(w, 100_000);
        assert!((r - 40_000.0).abs() < 4_000.0, "{r}");
        // 200k/s: 8 arrive in 40 µs.
        let (w, _) = steady(200_000.0, 100_000);
        assert!((35_000..=45_000).contains(&w), "{w}");
        // 10k/s: one per 100 µs is not worth the latency.
        assert_eq!(steady(10_000.0, 100_000).0, 0);
        // Off.
        assert_eq!(steady(40_000.0, 0).0, 0);
    }

    #[test]
    fn full_batches_and_idle_never_wait() {
        let mut c = Coalescer::new(100_000, 32);
        for i in 0..400u64 {
            c.after_batch(4, i * 100_000);
        }
        assert_eq!(c.after_batch(4, 40_000_000), 100_000);
        assert_eq!(c.after_batch(32, 40_100_000), 0, "backlog: read at once");
        // After a second of silence the estimate drops and nothing waits.
        assert_eq!(c.after_batch(1, 1_040_000_000), 0);
    }
}
