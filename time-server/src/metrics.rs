//! Packet-path counters: one cache-line-aligned block per worker (no sharing
//! between cores), summed when Prometheus scrapes.

use nts_ops::metrics::{Counter, Exposition, Gauge};
use nts_proto::key_agreement::RootFingerprint;
use nts_proto::ntp_server::DropReason;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};

/// Cookie failure labels, as `CookieError::reason` returns them.
pub const NAK_REASONS: [&str; 5] = [
    "malformed",
    "unknown_key",
    "expired_key",
    "bad_tag",
    "bad_contents",
];

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    pub received: Counter,
    pub plain: Counter,
    pub nts: Counter,
    pub cookies_issued: Counter,
    pub rate_kiss: Counter,
    /// Requests the rate limiter decided through its overflow sketch (table full of live entries).
    pub rate_overflowed: Gauge,
    /// Bytes of this worker's rate-limit table (0: rate limiting off).
    pub rate_limit_table_bytes: Gauge,
    pub send_errors: Counter,
    pub user_timestamps: Counter,
    /// Responses sent in interleaved mode.
    pub interleaved: Counter,
    /// Responses whose transmit timestamp was asked for (clients trying interleaved mode).
    pub interleaved_tracked: Counter,
    pub tx_stamps_software: Counter,
    pub tx_stamps_hardware: Counter,
    /// Error-queue messages that named no tracked response (overwritten, or no packet copy).
    pub tx_stamps_unmatched: Counter,
    /// Bytes of this worker's interleaved-mode table.
    pub interleaved_table_bytes: Gauge,
    /// Short batches after which the worker waited for more requests.
    pub batch_waits: Counter,
    nak: [Counter; 5],
    dropped: [Counter; DropReason::ALL.len()],
}

impl WorkerMetrics {
    pub fn nak(&self, reason: &str) {
        if let Some(i) = NAK_REASONS.iter().position(|r| *r == reason) {
            self.nak[i].inc();
        }
    }

    pub fn dropped(&self, why: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == why) {
            self.dropped[i].inc();
        }
    }
}

/// Everything the /metrics endpoint shows.
#[derive(Debug)]
pub struct Metrics {
    pub workers: Vec<WorkerMetrics>,
    /// 0 user, 1 software, 2 hardware.
    pub timestamp_source: AtomicU8,
    pub keys_held: AtomicI64,
    pub key_age_seconds: AtomicI64,
    pub synchronized: AtomicI64,
    /// 1 when the clock is synchronized and keys are held (what key sync reports).
    pub healthy: AtomicI64,
    pub stratum: AtomicI64,
    pub leap: AtomicI64,
    /// Key-sync endpoints and whether each link is up.
    pub key_sync_endpoints: Vec<(String, AtomicBool)>,
    pub key_sync_reconnects: AtomicU64,
    pub key_sets_received: AtomicU64,
    /// Key sets refused: another root secret than the one served (by keys or fingerprint).
    pub key_conflicts: AtomicU64,
    /// By key-sync endpoint: its latest key set is refused now.
    key_sync_refused: Vec<AtomicBool>,
    /// Fingerprint of the root secret whose keys are served (None: unknown).
    pub served_fingerprint: std::sync::Mutex<Option<RootFingerprint>>,
    /// Client addresses are steered to workers by a reuseport BPF program.
    pub steering: AtomicBool,
    /// Set by SIGTERM: unhealthy for the KE replicas and /readyz, still answering.
    pub draining: AtomicBool,
}

impl Metrics {
    pub fn new(workers: usize, key_sync_endpoints: &[String]) -> Self {
        Self {
            key_sync_endpoints: key_sync_endpoints
                .iter()
                .map(|e| (e.clone(), AtomicBool::new(false)))
                .collect(),
            key_sync_reconnects: AtomicU64::new(0),
            key_sets_received: AtomicU64::new(0),
            key_conflicts: AtomicU64::new(0),
            key_sync_refused: key_sync_endpoints
                .iter()
                .map(|_| AtomicBool::new(false))
                .collect(),
            served_fingerprint: std::sync::Mutex::new(None),
            steering: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            workers: (0..workers).map(|_| WorkerMetrics::default()).collect(),
            timestamp_source: AtomicU8::new(0),
            keys_held: AtomicI64::new(0),
            key_age_seconds: AtomicI64::new(-1),
            synchronized: AtomicI64::new(0),
            healthy: AtomicI64::new(0),
            stratum: AtomicI64::new(16),
            leap: AtomicI64::new(3),
        }
    }

    pub fn key_sync_link_up(&self, index: usize, up: bool) {
        if let Some((_, flag)) = self.key_sync_endpoints.get(index) {
            flag.store(up, Ordering::Relaxed);
        }
    }

    /// Whether endpoint `index`'s latest key set is refused now.
    pub fn key_sync_refused(&self, index: usize, refused: bool) {
        if let Some(flag) = self.key_sync_refused.get(index) {
            flag.store(refused, Ordering::Relaxed);
        }
    }

    /// Whether responses claim a synchronized clock.
    pub fn is_synchronized(&self) -> bool {
        self.synchronized.load(Ordering::Relaxed) == 1
    }

    /// Datagrams received by all workers so far.
    pub fn requests_received(&self) -> u64 {
        self.sum(|w| w.received.get())
    }

    fn sum(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers.iter().map(f).sum()
    }

    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.counter(
            "nts_time_requests_received_total",
            "Datagrams received on the NTP sockets.",
            self.sum(|w| w.received.get()),
        );
        e.counters(
            "nts_time_responses_total",
            "Responses sent, by kind.",
            &[
                (&[("kind", "plain")], self.sum(|w| w.plain.get())),
                (&[("kind", "nts")], self.sum(|w| w.nts.get())),
                (
                    &[("kind", "nts_nak")],
                    self.sum(|w| w.nak.iter().map(|c| c.get()).sum()),
                ),
                (&[("kind", "rate_kiss")], self.sum(|w| w.rate_kiss.get())),
            ],
        );
        e.counters_by(
            "nts_time_nts_nak_total",
            "NTS NAKs sent because the cookie could not be opened, by reason.",
            "reason",
            NAK_REASONS
                .iter()
                .enumerate()
                .map(|(i, r)| (*r, self.sum(|w| w.nak[i].get()))),
        );
        e.counters_by(
            "nts_time_requests_dropped_total",
            "Requests dropped without an answer, by reason (auth_failed: NTS authenticator did not verify; rate_limited_nts: NTS over the rate; too_old: waited longer than server.max_request_age).",
            "reason",
            DropReason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| (r.label(), self.sum(|w| w.dropped[i].get()))),
        );
        e.counter(
            "nts_time_rate_limit_overflow_total",
            "Requests limited through the overflow sketch because every entry of their rate-limit bucket was live (rate_limit.slots too small for the traffic).",
            self.workers
                .iter()
                .map(|w| w.rate_overflowed.get().max(0) as u64)
                .sum::<u64>(),
        );
        e.gauge(
            "nts_time_rate_limit_table_bytes",
            "Memory of the rate-limit tables of all workers.",
            self.workers
                .iter()
                .map(|w| w.rate_limit_table_bytes.get())
                .sum::<i64>(),
        );
        e.gauge(
            "nts_time_rate_limit_steering",
            "1 when each client address is steered to one worker (reuseport BPF), so one table sees all its requests.",
            self.steering.load(Ordering::Relaxed) as u8,
        );
        e.counter(
            "nts_time_cookies_issued_total",
            "Cookies sent in NTS responses.",
            self.sum(|w| w.cookies_issued.get()),
        );
        e.counter(
            "nts_time_send_errors_total",
            "Responses the kernel refused to send.",
            self.sum(|w| w.send_errors.get()),
        );
        e.counter(
            "nts_time_user_timestamps_total",
            "Requests that arrived without a kernel timestamp (stamped in user space).",
            self.sum(|w| w.user_timestamps.get()),
        );
        e.counter(
            "nts_time_interleaved_responses_total",
            "Responses sent in interleaved mode (RFC 9769), carrying the transmit timestamp of the previous response to that client.",
            self.sum(|w| w.interleaved.get()),
        );
        e.counter(
            "nts_time_interleaved_tracked_total",
            "Responses whose transmit timestamp was captured for a client using interleaved mode.",
            self.sum(|w| w.interleaved_tracked.get()),
        );
        e.counters(
            "nts_time_transmit_timestamps_total",
            "Transmit timestamps read back from the kernel for interleaved mode, by source (hardware: the NIC; software: the kernel, also the fallback when the NIC stamps nothing).",
            &[
                (&[("source", "hardware")], self.sum(|w| w.tx_stamps_hardware.get())),
                (&[("source", "software")], self.sum(|w| w.tx_stamps_software.get())),
            ],
        );
        e.counter(
            "nts_time_transmit_timestamps_unmatched_total",
            "Transmit timestamps that named no tracked response (its table entry was overwritten, or the kernel returned no packet copy: net.core.tstamp_allow_data = 0).",
            self.sum(|w| w.tx_stamps_unmatched.get()),
        );
        e.counter(
            "nts_time_batch_waits_total",
            "Times a worker waited up to server.batch_wait for more requests after a short batch (adaptive batching at moderate load).",
            self.sum(|w| w.batch_waits.get()),
        );
        e.gauge(
            "nts_time_interleaved_table_bytes",
            "Memory of the interleaved-mode tables of all workers.",
            self.workers
                .iter()
                .map(|w| w.interleaved_table_bytes.get())
                .sum::<i64>(),
        );
        let src = self.timestamp_source.load(Ordering::Relaxed);
        e.gauges(
            "nts_time_timestamp_source",
            "Receive timestamp source in use (1 for the active one).",
            &[
                (&[("source", "hardware")], (src == 2) as u8 as f64),
                (&[("source", "software")], (src == 1) as u8 as f64),
                (&[("source", "user")], (src == 0) as u8 as f64),
            ],
        );
        e.gauge(
            "nts_time_workers",
            "Worker threads serving NTP.",
            self.workers.len(),
        );
        e.gauge(
            "nts_time_cookie_keys",
            "Cookie keys held (past window, current, next).",
            self.keys_held.load(Ordering::Relaxed),
        );
        e.gauge(
            "nts_time_key_set_age_seconds",
            "Seconds since the key set held was last known current: a key set received, a live key-sync link's report answered, or the root secret file read (-1: never). Small while links are healthy; grows when every link is down.",
            self.key_age_seconds.load(Ordering::Relaxed),
        );
        e.gauge(
            "nts_time_draining",
            "1 after SIGTERM: reported unhealthy to the KE replicas (no longer handed out), still answering for server.drain_grace.",
            i64::from(self.draining.load(Ordering::Relaxed)),
        );
        e.gauge(
            "nts_time_clock_synchronized",
            "1 when responses claim a synchronized clock.",
            self.synchronized.load(Ordering::Relaxed),
        );
        e.gauge(
            "nts_time_healthy",
            "1 when the clock is synchronized (or the local reference) and cookie keys are held: what is reported to the ke-servers and on /readyz.",
            self.healthy.load(Ordering::Relaxed),
        );
        e.gauge(
            "nts_time_stratum",
            "Stratum announced.",
            self.stratum.load(Ordering::Relaxed),
        );
        e.gauge(
            "nts_time_leap_indicator",
            "Leap indicator announced.",
            self.leap.load(Ordering::Relaxed),
        );
        if !self.key_sync_endpoints.is_empty() {
            e.gauges_by(
                "nts_time_key_sync_link_up",
                "1 while the key-sync stream to this ke-server is up.",
                "endpoint",
                self.key_sync_endpoints
                    .iter()
                    .map(|(ep, up)| (ep.as_str(), f64::from(u8::from(up.load(Ordering::Relaxed))))),
            );
            e.counter(
                "nts_time_key_sync_reconnects_total",
                "Key-sync reconnection attempts.",
                self.key_sync_reconnects.load(Ordering::Relaxed),
            );
            e.counter(
                "nts_time_key_sets_received_total",
                "Key sets received from ke-servers.",
                self.key_sets_received.load(Ordering::Relaxed),
            );
            e.counter(
                "nts_time_key_conflicts_total",
                "Key sets refused because they derive from another root secret than the keys served (a key differing under the same id, or another fingerprint).",
                self.key_conflicts.load(Ordering::Relaxed),
            );
            e.gauges_by(
                "nts_time_key_sync_refused",
                "1 while this ke-server's latest key set is refused (another root secret than the one served); the ke-server is told in every report.",
                "endpoint",
                self.key_sync_endpoints
                    .iter()
                    .zip(&self.key_sync_refused)
                    .map(|((ep, _), r)| (ep.as_str(), f64::from(u8::from(r.load(Ordering::Relaxed))))),
            );
            let served = *self
                .served_fingerprint
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(fp) = served {
                let fp = fp.to_string();
                e.gauges(
                    "nts_time_root_secret_info",
                    "1, labelled with the fingerprint of the root secret whose cookie keys are served (compare with nts_ke_root_secret_info).",
                    &[(&[("fingerprint", fp.as_str())], 1.0)],
                );
            }
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family the time server exports (all of them rendered: key sync
    /// configured, a fingerprint known) and every `nts_time_*` name in its
    /// sources is documented in docs/time-server.md; adding a metric without
    /// documenting it fails here.
    #[test]
    fn every_metric_is_documented() {
        let m = Metrics::new(2, &["ke.example:4461".to_string()]);
        *m.served_fingerprint.lock().unwrap() =
            Some(nts_proto::key_agreement::RootFingerprint::of(
                &nts_proto::key_ring::RootSecret::from_bytes(&[7; 32]).unwrap(),
            ));
        let text = m.render();
        assert!(text.contains("nts_time_root_secret_info{"), "{text}");
        let docs = include_str!("../../docs/time-server.md");
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let missing = nts_ops::metrics::missing_from_docs(&text, &src, "nts_time_", docs);
        assert!(
            missing.is_empty(),
            "not in docs/time-server.md: {missing:?}"
        );
    }

    #[test]
    fn workers_are_summed_into_counters() {
        let m = Metrics::new(2, &[]);
        m.workers[0].received.add(3);
        m.workers[1].received.inc();
        m.workers[1].nak("bad_tag");
        m.workers[0].rate_overflowed.set(5);
        let text = m.render();
        assert!(text.contains("# TYPE nts_time_requests_received_total counter\nnts_time_requests_received_total 4\n"), "{text}");
        assert!(
            text.contains("nts_time_nts_nak_total{reason=\"bad_tag\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nts_time_responses_total{kind=\"nts_nak\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE nts_time_rate_limit_overflow_total counter\nnts_time_rate_limit_overflow_total 5\n"), "{text}");
    }
}
