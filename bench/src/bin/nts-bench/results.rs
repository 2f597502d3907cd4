//! What a run records: the measurements, memory and notes written to `results.json`.

use nts_bench::report::{RunReport, StepResult};

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Measurement {
    pub(crate) server: String,
    pub(crate) load: String,
    pub(crate) find_max: RunReport,
    pub(crate) fixed: Option<RunReport>,
    /// Per-core mode: one fixed-rate step per rate of --per-core-rates.
    #[serde(default)]
    pub(crate) fixed_steps: Vec<StepResult>,
    /// Machine CPU busy (cores) just before the search started.
    pub(crate) background_cores: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Rss {
    pub(crate) process: String,
    pub(crate) vm_hwm_kib: Option<u64>,
    pub(crate) vm_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Results {
    pub(crate) started_unix: u64,
    pub(crate) cpus: usize,
    pub(crate) kernel: String,
    pub(crate) cpu_model: String,
    pub(crate) chrony_version: Option<String>,
    /// git HEAD of the workspace (with "+dirty" for local changes) and when the server binaries were built.
    pub(crate) build: String,
    pub(crate) settings: String,
    pub(crate) measurements: Vec<Measurement>,
    pub(crate) rss: Vec<Rss>,
    pub(crate) notes: Vec<String>,
    /// Per-core mode and its pinning (absent: the shared-cores run).
    #[serde(default)]
    pub(crate) per_core: Option<PerCore>,
    /// Servers measured (--servers).
    #[serde(default)]
    pub(crate) servers: Vec<String>,
    /// Extra [server] keys given to nts-time-server (--ours-server-option).
    #[serde(default)]
    pub(crate) ours_server_options: Vec<String>,
    /// /proc/loadavg before and after the run.
    #[serde(default)]
    pub(crate) loadavg_start: Option<String>,
    #[serde(default)]
    pub(crate) loadavg_end: Option<String>,
    /// Per-core mode: where each server's threads (and child processes) could
    /// run, checked after start and again before stop.
    #[serde(default)]
    pub(crate) pinning: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct PerCore {
    pub(crate) server_cpu: usize,
    pub(crate) gen_cpu: usize,
    pub(crate) fixed_rates: Vec<f64>,
    pub(crate) fixed_secs: f64,
}
