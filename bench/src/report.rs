//! Results of a load generator run, as written to JSON by `nts-loadgen
//! --json-out` and read back by `nts-bench`.

use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From latencies in nanoseconds (sorted in place).
    pub fn from_ns(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i] as f64 / 1000.0
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: samples[samples.len() - 1] as f64 / 1000.0,
        }
    }
}

/// One constant-rate step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    /// Requests per second asked for.
    pub offered_rate: f64,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Requests handed to the kernel.
    pub sent: u64,
    /// Valid responses that matched a request and arrived within the timeout.
    pub received: u64,
    /// 100 * (sent - received) / sent: anything but a valid, timely answer is lost.
    pub loss_pct: f64,
    /// Requests per second actually sent.
    pub send_rate: f64,
    /// Valid responses per second.
    pub recv_rate: f64,
    /// Request-to-response time (send timestamp taken just before sendmmsg,
    /// kernel receive timestamp of the response).
    pub latency_us: Latency,
    /// Responses that matched but arrived after the timeout.
    pub late: u64,
    /// Requests the pacer dropped because the generator fell more than 10 ms behind.
    pub skipped: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// Responses that failed checks (bad header, failed authentication, ...).
    pub invalid: u64,
    /// Datagrams that matched no outstanding request (duplicates, stale).
    pub unmatched: u64,
    /// NTS NAK responses (cookie refused).
    pub naks: u64,
    /// Kiss-o'-death responses (RATE, ...).
    pub kisses: u64,
    /// NTS responses fully checked and decrypted (check_response with S2C).
    pub verified: u64,
    /// NTS requests sent with a cookie never used before.
    pub cookies_fresh: u64,
    /// NTS requests that had to reuse a cookie (pool empty after losses).
    pub cookies_reused: u64,
    /// NTS requests that carried a Cookie Placeholder to refill the pool.
    pub placeholder_requests: u64,
    /// Cookies in the pool at the end of the step.
    pub cookie_pool_end: u64,
    /// CPU cores used by the generator (user + system) during the step.
    pub gen_cpu: f64,
    /// CPU cores used by the server process(es) given with --server-pid.
    pub server_cpu: Option<f64>,
    /// Machine-wide busy cores during the step (from /proc/stat).
    pub machine_busy: Option<f64>,
    /// Machine busy minus generator minus server: other processes' load (cores).
    pub other_load: Option<f64>,
    /// Times this step was run again because other load disturbed it.
    pub retries: u32,
    /// Other load was still above the limit after the retries (nts-bench
    /// per-core fixed steps: or the machine was busy just before the step).
    pub disturbed: bool,
    /// Datagrams the kernel dropped on full socket receive buffers (any socket
    /// in this network namespace: server or generator).
    pub udp_rcvbuf_errors: Option<u64>,
    /// Bytes of the last request sent.
    pub request_len: usize,
}

/// Why a find-max search stopped going up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Loss reached the threshold.
    Loss,
    /// The generator could not send the offered rate (CPU shared with the server).
    Generator,
    /// The configured maximum rate was reached.
    MaxRate,
    /// The time budget ran out.
    Time,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub mode: String,
    pub target: String,
    pub sources: usize,
    pub sockets: usize,
    pub ke_sessions: usize,
    pub aead: Option<String>,
    pub cookie_len: Option<usize>,
    pub verify_every: u32,
    pub loss_threshold_pct: f64,
    pub steps: Vec<StepResult>,
    /// find-max: the step with the highest received rate whose loss was under the threshold.
    pub best: Option<StepResult>,
    pub limit: Option<Limit>,
    pub wall_s: f64,
}
