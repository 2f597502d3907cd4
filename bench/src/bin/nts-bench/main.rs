//! `nts-bench`: the benchmark runner behind `bench/run.sh`.
//!
//! One after the other, on loopback, with the same load generator
//! (`nts-loadgen`, run as a separate process):
//!
//! 1. `nts-ke-server` + `nts-time-server` (rate limiting off),
//! 2. `chronyd -x` as an NTS server (no `ratelimit`, so none),
//! 3. `nts-echo`, the UDP echo baseline with the time server's socket set-up.
//!
//! For each: the highest NTS and plain NTP rate with < 1% loss (find-max),
//! latency at a fixed moderate rate, server CPU per request, and peak RSS
//! (`VmHWM`). Prints a table and writes `results.json` and `summary.md` to
//! the output directory.
//!
//! `--per-core` measures servers rather than how they share the machine with
//! the generator: each server pinned to one core (one worker), the generator
//! to another, fixed steps at 10k/s and 40k/s, and the targets of the
//! comparison (`nts_bench::percore`).

mod machine;
mod measure;
mod results;
mod runs;
mod servers;
mod summary;

use anyhow::{bail, Context, Result};
use clap::Parser;
use machine::{build_info, cpu_model, loadavg};
use measure::Ctx;
use nts_bench::server_config::ServerOption;
use nts_bench::sys;
use results::{PerCore, Results};
use servers::CHILDREN;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use summary::summarize;
use testkit::certs::TestPki;

/// Label of the nts-time-server run with the kernel-default receive buffer.
const SMALL_RCVBUF: &str = "nts-time-server, rcvbuf = kernel default";

/// Benchmark nts-time-server against chrony and a UDP echo baseline on loopback.
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Cli {
    /// Directory holding nts-loadgen, nts-echo, nts-ke-server, nts-time-server
    /// (default: this program's directory).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Where results.json, summary.md and server logs go.
    #[arg(long, default_value = "target/bench")]
    pub(crate) out: PathBuf,
    /// Time server worker threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Seconds per find-max step.
    #[arg(long, default_value_t = 1.5)]
    pub(crate) step_secs: f64,
    /// First rate of each find-max search.
    #[arg(long, default_value_t = 20_000.0)]
    pub(crate) start_rate: f64,
    /// Rate factor between find-max steps.
    #[arg(long, default_value_t = 1.5)]
    pub(crate) factor: f64,
    /// Rate of the fixed-rate latency runs.
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) fixed_rate: f64,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) fixed_secs: f64,
    /// Key exchanges per NTS run (8 cookies each).
    #[arg(long, default_value_t = 256)]
    pub(crate) ke_sessions: usize,
    /// Source addresses of the load (127.0.0.2 and up).
    #[arg(long, default_value_t = 16)]
    pub(crate) sources: u8,
    /// Sockets (source ports) per source address.
    #[arg(long, default_value_t = 4)]
    pub(crate) ports_per_source: usize,
    /// Wait up to this many seconds, before each measurement, for other load on
    /// the machine to go below --quiet-cores.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) quiet_wait: f64,
    /// CPU cores of background load considered quiet.
    #[arg(long, default_value_t = 0.2)]
    pub(crate) quiet_cores: f64,
    /// Skip chrony (when it is not installed).
    #[arg(long)]
    pub(crate) skip_chrony: bool,
    /// Skip the extra NTS run of nts-time-server with the kernel-default
    /// receive buffer (server.receive_buffer = 0, what chrony uses).
    #[arg(long)]
    pub(crate) no_small_rcvbuf: bool,
    /// Also measure echo with datagrams as long as the NTS requests.
    #[arg(long)]
    pub(crate) echo_nts_size: bool,
    /// Print the summary of an earlier results.json and exit.
    #[arg(long, value_name = "FILE")]
    pub(crate) summarize: Option<PathBuf>,
    /// Hard limit for the whole benchmark, in seconds.
    #[arg(long, default_value_t = 420.0)]
    pub(crate) budget_secs: f64,
    /// Which servers to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,chrony,echo"
    )]
    pub(crate) servers: Vec<ServerKind>,
    /// Extra `key = value` for the [server] table of nts-time-server's
    /// configuration (repeatable; replaces a generated key of the same name),
    /// e.g. --ours-server-option 'receive_buffer = 0'.
    #[arg(long, value_name = "KEY = VALUE")]
    pub(crate) ours_server_option: Vec<ServerOption>,
    /// Per-core comparison: every server on --server-cpu (nts-time-server and
    /// nts-echo with 1 worker, chronyd with all its processes and threads),
    /// the generator on --gen-cpu; find-max for NTS and plain (echo: NTS-sized
    /// and 48-byte datagrams), then fixed steps at --per-core-rates.
    /// Results go to OUT/per-core.
    #[arg(long)]
    pub(crate) per_core: bool,
    /// Per-core mode: the CPU every server is pinned to.
    #[arg(long, default_value_t = 1)]
    pub(crate) server_cpu: usize,
    /// Per-core mode: the CPU of the load generator (and of nts-ke-server and
    /// this runner).
    #[arg(long, default_value_t = 0)]
    pub(crate) gen_cpu: usize,
    /// Per-core mode: fixed rates (comma-separated) at which server CPU per
    /// request and latency are measured.
    #[arg(long, value_delimiter = ',', default_value = "10000,40000")]
    pub(crate) per_core_rates: Vec<f64>,
    /// Per-core mode: seconds of each fixed-rate step.
    #[arg(long, default_value_t = 2.5)]
    pub(crate) per_core_fixed_secs: f64,
    /// Per-core mode: datagram length of the NTS-sized echo when
    /// nts-time-server is not measured in the same run (otherwise the length
    /// of its NTS requests).
    #[arg(long, default_value_t = 232)]
    pub(crate) echo_nts_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ServerKind {
    Ours,
    Chrony,
    Echo,
}

pub(crate) struct Bins {
    pub(crate) loadgen: PathBuf,
    pub(crate) echo: PathBuf,
    pub(crate) ke: PathBuf,
    pub(crate) ts: PathBuf,
}

fn main() -> Result<()> {
    let mut cli = Cli::parse();
    if cli.skip_chrony {
        cli.servers.retain(|s| *s != ServerKind::Chrony);
    }
    cli.servers.dedup();
    if let Some(path) = &cli.summarize {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old: Results = serde_json::from_str(&text)?;
        // Exactly the text of summary.md.
        print!("{}", summarize(&old));
        return Ok(());
    }
    let budget = Duration::from_secs_f64(cli.budget_secs.clamp(30.0, 3600.0));
    let t0 = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(budget + Duration::from_secs(30));
        eprintln!("nts-bench: over the time budget; stopping the servers it started and exiting");
        let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in pids {
            // SAFETY: kill(2) on a PID this process started and has not reaped.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_secs(2));
        std::process::exit(3);
    });

    let bins = find_bins(&cli)?;
    let out_dir = if cli.per_core {
        cli.out.join("per-core")
    } else {
        cli.out.clone()
    };
    std::fs::create_dir_all(&out_dir)?;
    let out = std::fs::canonicalize(&out_dir)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;

    let pki = TestPki::generate().context("generating a test PKI")?;
    let mut results = new_results(&cli, &bins);
    if cli.skip_chrony {
        results.notes.push("chrony skipped (--skip-chrony)".into());
    }
    let ctx = Ctx {
        cli: &cli,
        bins: &bins,
        t0,
        budget,
        ca: pki.ca_path().to_path_buf(),
    };

    let run = if cli.per_core {
        runs::run_per_core(&ctx, &mut results, &pki, &logs)
    } else {
        runs::run_shared(&ctx, &mut results, &pki, &logs)
    };
    results.loadavg_end = loadavg();
    if let Err(e) = &run {
        // Keep what was measured: the summary of a partial run is still useful.
        results.notes.push(format!("run stopped early: {e:#}"));
    }

    // The summary is made from the JSON as written, so that
    // `--summarize results.json` prints exactly summary.md.
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(out.join("results.json"), &json)?;
    let summary = summarize(&serde_json::from_str(&json)?);
    println!("\n{summary}");
    std::fs::write(out.join("summary.md"), &summary)?;
    eprintln!(
        "results: {} and {} (logs in {}); {:.0} s in all",
        out.join("summary.md").display(),
        out.join("results.json").display(),
        logs.display(),
        t0.elapsed().as_secs_f64()
    );
    run
}

/// The programs the run starts: `--bin-dir` or this program's directory.
fn find_bins(cli: &Cli) -> Result<Bins> {
    let bin_dir = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    let bins = Bins {
        loadgen: bin_dir.join("nts-loadgen"),
        echo: bin_dir.join("nts-echo"),
        ke: bin_dir.join("nts-ke-server"),
        ts: bin_dir.join("nts-time-server"),
    };
    for b in [&bins.loadgen, &bins.echo, &bins.ke, &bins.ts] {
        if !sys::is_executable(b) {
            bail!(
                "{} not found: build with `cargo build --release -p nts-bench -p nts-ke-server -p nts-time-server`",
                b.display()
            );
        }
    }
    Ok(bins)
}

/// The record of this run before anything is measured.
fn new_results(cli: &Cli, bins: &Bins) -> Results {
    Results {
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        cpus: sys::ncpus(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu_model: cpu_model(),
        chrony_version: None,
        build: build_info(bins),
        settings: format!(
            "workers {}, step {} s, start {} /s x{}, fixed {} /s for {} s, {} KE sessions, {} sources x {} ports",
            if cli.per_core { 1 } else { cli.workers },
            cli.step_secs,
            cli.start_rate,
            cli.factor,
            if cli.per_core {
                cli.per_core_rates
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                cli.fixed_rate.to_string()
            },
            if cli.per_core { cli.per_core_fixed_secs } else { cli.fixed_secs },
            cli.ke_sessions,
            cli.sources,
            cli.ports_per_source
        ),
        measurements: Vec::new(),
        rss: Vec::new(),
        notes: Vec::new(),
        per_core: cli.per_core.then(|| PerCore {
            server_cpu: cli.server_cpu,
            gen_cpu: cli.gen_cpu,
            fixed_rates: cli.per_core_rates.clone(),
            fixed_secs: cli.per_core_fixed_secs,
        }),
        servers: cli
            .servers
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect(),
        ours_server_options: cli
            .ours_server_option
            .iter()
            .map(|o| o.to_string())
            .collect(),
        loadavg_start: loadavg(),
        loadavg_end: None,
        pinning: Vec::new(),
    }
}
