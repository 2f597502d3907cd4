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

use anyhow::{bail, Context, Result};
use clap::Parser;
use nts_bench::percore;
use nts_bench::report::{RunReport, StepResult};
use nts_bench::server_config::{time_server_toml, ServerOption, TimeServerSetup};
use nts_bench::sys;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testkit::certs::TestPki;
use testkit::chrony::ChronyServer;
use testkit::process::ChildGuard;

/// Label of the nts-time-server run with the kernel-default receive buffer.
const SMALL_RCVBUF: &str = "nts-time-server, rcvbuf = kernel default";

/// PIDs of every server this process started, for the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn track(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn untrack(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

/// Benchmark nts-time-server against chrony and a UDP echo baseline on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Directory holding nts-loadgen, nts-echo, nts-ke-server, nts-time-server
    /// (default: this program's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where results.json, summary.md and server logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Time server worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds per find-max step.
    #[arg(long, default_value_t = 1.5)]
    step_secs: f64,
    /// First rate of each find-max search.
    #[arg(long, default_value_t = 20_000.0)]
    start_rate: f64,
    /// Rate factor between find-max steps.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Rate of the fixed-rate latency runs.
    #[arg(long, default_value_t = 10_000.0)]
    fixed_rate: f64,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 2.0)]
    fixed_secs: f64,
    /// Key exchanges per NTS run (8 cookies each).
    #[arg(long, default_value_t = 256)]
    ke_sessions: usize,
    /// Source addresses of the load (127.0.0.2 and up).
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Sockets (source ports) per source address.
    #[arg(long, default_value_t = 4)]
    ports_per_source: usize,
    /// Wait up to this many seconds, before each measurement, for other load on
    /// the machine to go below --quiet-cores.
    #[arg(long, default_value_t = 20.0)]
    quiet_wait: f64,
    /// CPU cores of background load considered quiet.
    #[arg(long, default_value_t = 0.2)]
    quiet_cores: f64,
    /// Skip chrony (when it is not installed).
    #[arg(long)]
    skip_chrony: bool,
    /// Skip the extra NTS run of nts-time-server with the kernel-default
    /// receive buffer (server.receive_buffer = 0, what chrony uses).
    #[arg(long)]
    no_small_rcvbuf: bool,
    /// Also measure echo with datagrams as long as the NTS requests.
    #[arg(long)]
    echo_nts_size: bool,
    /// Print the summary of an earlier results.json and exit.
    #[arg(long, value_name = "FILE")]
    summarize: Option<PathBuf>,
    /// Hard limit for the whole benchmark, in seconds.
    #[arg(long, default_value_t = 420.0)]
    budget_secs: f64,
    /// Which servers to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,chrony,echo"
    )]
    servers: Vec<ServerKind>,
    /// Extra `key = value` for the [server] table of nts-time-server's
    /// configuration (repeatable; replaces a generated key of the same name),
    /// e.g. --ours-server-option 'receive_buffer = 0'.
    #[arg(long, value_name = "KEY = VALUE")]
    ours_server_option: Vec<ServerOption>,
    /// Per-core comparison: every server on --server-cpu (nts-time-server and
    /// nts-echo with 1 worker, chronyd with all its processes and threads),
    /// the generator on --gen-cpu; find-max for NTS and plain (echo: NTS-sized
    /// and 48-byte datagrams), then fixed steps at --per-core-rates.
    /// Results go to OUT/per-core.
    #[arg(long)]
    per_core: bool,
    /// Per-core mode: the CPU every server is pinned to.
    #[arg(long, default_value_t = 1)]
    server_cpu: usize,
    /// Per-core mode: the CPU of the load generator (and of nts-ke-server and
    /// this runner).
    #[arg(long, default_value_t = 0)]
    gen_cpu: usize,
    /// Per-core mode: fixed rates (comma-separated) at which server CPU per
    /// request and latency are measured.
    #[arg(long, value_delimiter = ',', default_value = "10000,40000")]
    per_core_rates: Vec<f64>,
    /// Per-core mode: seconds of each fixed-rate step.
    #[arg(long, default_value_t = 2.5)]
    per_core_fixed_secs: f64,
    /// Per-core mode: datagram length of the NTS-sized echo when
    /// nts-time-server is not measured in the same run (otherwise the length
    /// of its NTS requests).
    #[arg(long, default_value_t = 232)]
    echo_nts_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServerKind {
    Ours,
    Chrony,
    Echo,
}

struct Bins {
    loadgen: PathBuf,
    echo: PathBuf,
    ke: PathBuf,
    ts: PathBuf,
}

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Measurement {
    server: String,
    load: String,
    find_max: RunReport,
    fixed: Option<RunReport>,
    /// Per-core mode: one fixed-rate step per rate of --per-core-rates.
    #[serde(default)]
    fixed_steps: Vec<StepResult>,
    /// Machine CPU busy (cores) just before the search started.
    background_cores: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Rss {
    process: String,
    vm_hwm_kib: Option<u64>,
    vm_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Results {
    started_unix: u64,
    cpus: usize,
    kernel: String,
    cpu_model: String,
    chrony_version: Option<String>,
    /// git HEAD of the workspace (with "+dirty" for local changes) and when the server binaries were built.
    build: String,
    settings: String,
    measurements: Vec<Measurement>,
    rss: Vec<Rss>,
    notes: Vec<String>,
    /// Per-core mode and its pinning (absent: the shared-cores run).
    #[serde(default)]
    per_core: Option<PerCore>,
    /// Servers measured (--servers).
    #[serde(default)]
    servers: Vec<String>,
    /// Extra [server] keys given to nts-time-server (--ours-server-option).
    #[serde(default)]
    ours_server_options: Vec<String>,
    /// /proc/loadavg before and after the run.
    #[serde(default)]
    loadavg_start: Option<String>,
    #[serde(default)]
    loadavg_end: Option<String>,
    /// Per-core mode: where each server's threads (and child processes) could
    /// run, checked after start and again before stop.
    #[serde(default)]
    pinning: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PerCore {
    server_cpu: usize,
    gen_cpu: usize,
    fixed_rates: Vec<f64>,
    fixed_secs: f64,
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
    let mut results = Results {
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
        build: build_info(&bins),
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
    };
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
        run_per_core(&ctx, &mut results, &pki, &logs)
    } else {
        run_shared(&ctx, &mut results, &pki, &logs)
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

/// The shared-cores run: servers and generator scheduled freely on the machine.
fn run_shared(ctx: &Ctx<'_>, results: &mut Results, pki: &TestPki, logs: &Path) -> Result<()> {
    let cli = ctx.cli;
    let bins = ctx.bins;
    let opts = &cli.ours_server_option;
    if cli.servers.contains(&ServerKind::Ours) {
        eprintln!(
            "\n=== nts-ke-server + nts-time-server (workers {}, rate limit off) ===",
            cli.workers
        );
        let dir = tempfile::Builder::new()
            .prefix("nts-bench-ours-")
            .tempdir()?;
        let ours = start_ours(bins, pki, dir.path(), cli.workers, logs, opts, "", None)?;
        let pids = vec![ours.ts.pid()];
        let r = (|| -> Result<()> {
            let nts = ctx.measure(percore::OURS, "NTS", "nts", &ours.ke_addr, None, &pids)?;
            results.measurements.push(nts);
            let plain = ctx.measure(
                percore::OURS,
                "plain",
                "plain",
                "",
                Some(&ours.ntp_addr),
                &pids,
            )?;
            results.measurements.push(plain);
            Ok(())
        })();
        finish_ours(ours, results, logs, "");
        r?;

        // Ours with chrony's receive buffer (the kernel default), NTS only.
        if !cli.no_small_rcvbuf {
            eprintln!("\n=== nts-time-server with the kernel-default socket receive buffer ===");
            let dir = tempfile::Builder::new()
                .prefix("nts-bench-ours-")
                .tempdir()?;
            let mut small = opts.clone();
            small.push("receive_buffer = 0".parse()?);
            let ours = start_ours(
                bins,
                pki,
                dir.path(),
                cli.workers,
                logs,
                &small,
                "-small-rcvbuf",
                None,
            )?;
            let pids = vec![ours.ts.pid()];
            let m = ctx.measure(SMALL_RCVBUF, "NTS", "nts", &ours.ke_addr, None, &pids);
            stop(ours.ts);
            stop(ours.ke);
            results.measurements.push(m?);
        }
    }

    if cli.servers.contains(&ServerKind::Chrony) {
        if let Some(server) = start_chrony(pki, results, None)? {
            let pid = server.process().pid();
            let ke_addr = format!("127.0.0.1:{}", server.ke_port());
            let ntp_addr = format!("127.0.0.1:{}", server.ntp_port());
            let pids = vec![pid];
            let r = (|| -> Result<()> {
                let nts = ctx.measure(percore::CHRONY, "NTS", "nts", &ke_addr, None, &pids)?;
                results.measurements.push(nts);
                let plain = ctx.measure(
                    percore::CHRONY,
                    "plain",
                    "plain",
                    "",
                    Some(&ntp_addr),
                    &pids,
                )?;
                results.measurements.push(plain);
                Ok(())
            })();
            finish_chrony(server, results, logs);
            r?;
        }
    }

    if cli.servers.contains(&ServerKind::Echo) {
        eprintln!("\n=== nts-echo (UDP echo, {} workers) ===", cli.workers);
        let (echo, addr) = start_echo(ctx, cli.workers, logs, None)?;
        let pids = vec![echo.pid()];
        let r = (|| -> Result<()> {
            let m = ctx.measure(percore::ECHO, "echo 48 B", "echo", "", Some(&addr), &pids)?;
            results.measurements.push(m);
            if cli.echo_nts_size {
                let len = nts_request_len(results).unwrap_or(cli.echo_nts_len);
                let load = format!("echo {len} B");
                let m = ctx.measure_with(
                    percore::ECHO,
                    &load,
                    "echo",
                    "",
                    Some(&addr),
                    &pids,
                    &["--echo-len".into(), len.to_string()],
                )?;
                results.measurements.push(m);
            }
            Ok(())
        })();
        results.rss.push(rss("nts-echo", echo.pid()));
        stop(echo);
        r?;
    }
    Ok(())
}

/// The per-core run: each server pinned to `--server-cpu`, the generator
/// (and this runner, and nts-ke-server, which inherit it) to `--gen-cpu`.
fn run_per_core(ctx: &Ctx<'_>, results: &mut Results, pki: &TestPki, logs: &Path) -> Result<()> {
    let cli = ctx.cli;
    let bins = ctx.bins;
    let (scpu, gcpu) = (cli.server_cpu, cli.gen_cpu);
    let ncpu = sys::ncpus();
    if scpu == gcpu || scpu >= ncpu || gcpu >= ncpu {
        bail!("--server-cpu {scpu} and --gen-cpu {gcpu} must be two different CPUs below {ncpu}");
    }
    sys::pin_task(0, gcpu).context("pinning the runner to the generator's CPU")?;

    if cli.servers.contains(&ServerKind::Ours) {
        eprintln!(
            "\n=== per core: nts-time-server (1 worker) on CPU {scpu}, generator on CPU {gcpu} ==="
        );
        let dir = tempfile::Builder::new()
            .prefix("nts-bench-ours-")
            .tempdir()?;
        let ours = start_ours(
            bins,
            pki,
            dir.path(),
            1,
            logs,
            &cli.ours_server_option,
            "-per-core",
            Some(scpu),
        )?;
        let pid = ours.ts.pid();
        let r = (|| -> Result<()> {
            check_pinned(
                percore::OURS,
                "after start",
                pid,
                scpu,
                &mut results.pinning,
            )?;
            let nts = ctx.measure(percore::OURS, "NTS", "nts", &ours.ke_addr, None, &[pid])?;
            results.measurements.push(nts);
            let plain = ctx.measure(
                percore::OURS,
                "plain",
                "plain",
                "",
                Some(&ours.ntp_addr),
                &[pid],
            )?;
            results.measurements.push(plain);
            check_pinned(
                percore::OURS,
                "before stop",
                pid,
                scpu,
                &mut results.pinning,
            )
        })();
        finish_ours(ours, results, logs, "-per-core");
        r?;
    }

    if cli.servers.contains(&ServerKind::Chrony) {
        if let Some(server) = start_chrony(pki, results, Some((scpu, gcpu)))? {
            let pid = server.process().pid();
            let ke_addr = format!("127.0.0.1:{}", server.ke_port());
            let ntp_addr = format!("127.0.0.1:{}", server.ntp_port());
            let r = (|| -> Result<()> {
                // chronyd started on the server CPU (so did the NTS-KE helpers
                // it forked); pin every thread of the tree again to be sure.
                sys::pin_process_tree(pid, scpu).context("pinning chronyd")?;
                check_pinned(
                    percore::CHRONY,
                    "after start",
                    pid,
                    scpu,
                    &mut results.pinning,
                )?;
                let nts = ctx.measure(percore::CHRONY, "NTS", "nts", &ke_addr, None, &[pid])?;
                results.measurements.push(nts);
                let plain = ctx.measure(
                    percore::CHRONY,
                    "plain",
                    "plain",
                    "",
                    Some(&ntp_addr),
                    &[pid],
                )?;
                results.measurements.push(plain);
                check_pinned(
                    percore::CHRONY,
                    "before stop",
                    pid,
                    scpu,
                    &mut results.pinning,
                )
            })();
            finish_chrony(server, results, logs);
            r?;
        }
    }

    if cli.servers.contains(&ServerKind::Echo) {
        eprintln!("\n=== per core: nts-echo (1 worker) on CPU {scpu} ===");
        let (echo, addr) = start_echo(ctx, 1, logs, Some(scpu))?;
        let pid = echo.pid();
        let len = nts_request_len(results).unwrap_or(cli.echo_nts_len);
        let r = (|| -> Result<()> {
            check_pinned(
                percore::ECHO,
                "after start",
                pid,
                scpu,
                &mut results.pinning,
            )?;
            let m = ctx.measure_with(
                percore::ECHO,
                &format!("echo {len} B"),
                "echo",
                "",
                Some(&addr),
                &[pid],
                &["--echo-len".into(), len.to_string()],
            )?;
            results.measurements.push(m);
            let m = ctx.measure(percore::ECHO, "echo 48 B", "echo", "", Some(&addr), &[pid])?;
            results.measurements.push(m);
            check_pinned(
                percore::ECHO,
                "before stop",
                pid,
                scpu,
                &mut results.pinning,
            )
        })();
        results.rss.push(rss("nts-echo", pid));
        stop(echo);
        r?;
    }
    Ok(())
}

/// Record where `pid`'s threads (and child processes) may run; fails unless
/// all of them are restricted to `cpu`.
fn check_pinned(name: &str, when: &str, pid: u32, cpu: usize, log: &mut Vec<String>) -> Result<()> {
    let (text, ok) = sys::affinity_summary(pid, cpu);
    let line = format!("{name} {when}: {text}");
    eprintln!("  {line}");
    log.push(line);
    if !ok {
        bail!("{name} is not pinned to CPU {cpu}: {text}");
    }
    Ok(())
}

/// Length of our NTS requests in this run (for the NTS-sized echo).
fn nts_request_len(results: &Results) -> Option<usize> {
    results
        .measurements
        .iter()
        .find(|m| m.server == percore::OURS && m.load == "NTS")
        .and_then(|m| {
            // The shortest: requests that also ask for cookies are longer.
            m.find_max
                .steps
                .iter()
                .map(|s| s.request_len)
                .filter(|&l| l > 0)
                .min()
        })
        .filter(|&l| l > 48)
}

/// Peak memory, the metrics that show dropped requests, then stop.
fn finish_ours(ours: Ours, results: &mut Results, logs: &Path, tag: &str) {
    results
        .rss
        .push(rss(&format!("nts-time-server{tag}"), ours.ts.pid()));
    results
        .rss
        .push(rss(&format!("nts-ke-server{tag}"), ours.ke.pid()));
    if let Some(m) = scrape(&ours.metrics_addr) {
        let _ = std::fs::write(logs.join(format!("nts-time-server{tag}.metrics.txt")), &m);
        for l in m.lines().filter(|l| {
            (l.starts_with("nts_time_requests_dropped_total")
                || l.starts_with("nts_time_send_errors_total")
                || l.starts_with("nts_time_nts_nak_total"))
                && !l.ends_with(" 0")
        }) {
            results
                .notes
                .push(format!("nts-time-server{tag} metric after the run: {l}"));
        }
    }
    stop(ours.ts);
    stop(ours.ke);
}

/// Start chronyd as an NTS server (None, with a note, when chrony is missing
/// or skipped). `pin`: (server CPU, CPU to return this thread to): chronyd is
/// forked from this thread while it runs on the server CPU, so chronyd and
/// the helpers it forks start there.
fn start_chrony(
    pki: &TestPki,
    results: &mut Results,
    pin: Option<(usize, usize)>,
) -> Result<Option<ChronyServer>> {
    let Some(cbins) = testkit::peers::require_chrony() else {
        results.notes.push("chrony not found: skipped".into());
        return Ok(None);
    };
    eprintln!(
        "\n=== chronyd -x as NTS server (no ratelimit){} ===",
        pin.map_or(String::new(), |(s, _)| format!(" on CPU {s}"))
    );
    results.chrony_version = Command::new(&cbins.chronyd)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some((server_cpu, _)) = pin {
        sys::pin_task(0, server_cpu)?;
    }
    let server = ChronyServer::builder(&cbins, pki)
        .name("chrony-bench")
        // Sources are 127.0.0.2 and up.
        .config_line("allow 127.0.0.0/8")
        .start();
    if let Some((_, back)) = pin {
        sys::pin_task(0, back)?;
    }
    let server = server.context("starting chronyd")?;
    track(server.process().pid());
    Ok(Some(server))
}

fn finish_chrony(server: ChronyServer, results: &mut Results, logs: &Path) {
    let pid = server.process().pid();
    results.rss.push(rss("chronyd (main: NTP)", pid));
    for c in sys::children_of(pid) {
        results.rss.push(rss("chronyd (NTS-KE helper)", c));
    }
    let _ = std::fs::write(logs.join("chronyd.log"), server.logs());
    let _ = std::fs::write(logs.join("chronyd.conf"), server.config());
    drop(server);
    untrack(pid);
}

/// Start nts-echo with `workers` threads, optionally pinned to a CPU.
fn start_echo(
    ctx: &Ctx<'_>,
    workers: usize,
    logs: &Path,
    pin: Option<usize>,
) -> Result<(ChildGuard, String)> {
    let port = testkit::ports::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&ctx.bins.echo);
    cmd.args(["--listen", &addr, "--workers", &workers.to_string()]);
    cmd.args(["--max-secs", &(ctx.cli.budget_secs as u64 + 60).to_string()]);
    if let Some(cpu) = pin {
        sys::pin_command(&mut cmd, cpu);
    }
    let echo = ChildGuard::spawn("nts-echo", cmd, logs)?;
    track(echo.pid());
    wait_for(Duration::from_secs(10), || {
        testkit::ports::is_udp_bound(port)
    })
    .context("nts-echo did not bind")?;
    Ok((echo, addr))
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

struct Ctx<'a> {
    cli: &'a Cli,
    bins: &'a Bins,
    t0: Instant,
    budget: Duration,
    ca: PathBuf,
}

impl Ctx<'_> {
    fn measure(
        &self,
        server: &str,
        load: &str,
        mode: &str,
        ke: &str,
        ntp: Option<&str>,
        pids: &[u32],
    ) -> Result<Measurement> {
        self.measure_with(server, load, mode, ke, ntp, pids, &[])
    }

    /// A find-max search, then a fixed-rate run, with one nts-loadgen each.
    #[allow(clippy::too_many_arguments)]
    fn measure_with(
        &self,
        server: &str,
        load: &str,
        mode: &str,
        ke: &str,
        ntp: Option<&str>,
        pids: &[u32],
        extra: &[String],
    ) -> Result<Measurement> {
        let c = self.cli;
        let mut base: Vec<String> = vec![
            "--mode".into(),
            mode.into(),
            "--sources".into(),
            c.sources.to_string(),
            "--ports-per-source".into(),
            c.ports_per_source.to_string(),
            "--quiet".into(),
        ];
        if mode == "nts" {
            base.extend([
                "--ke".into(),
                ke.into(),
                "--ca".into(),
                self.ca.display().to_string(),
                "--ke-sessions".into(),
                c.ke_sessions.to_string(),
            ]);
        }
        if let Some(a) = ntp {
            base.extend(["--server".into(), a.into()]);
        }
        for p in pids {
            base.extend(["--server-pid".into(), p.to_string()]);
        }
        base.extend(extra.iter().cloned());

        let background = self.wait_quiet();
        eprintln!(
            "--- {server} {load}: find-max (background load {} cores)",
            background.map_or("?".into(), |b| format!("{b:.2}"))
        );
        let left = self.budget.saturating_sub(self.t0.elapsed()).as_secs_f64();
        if left < 20.0 {
            bail!("time budget exhausted before {server} {load}");
        }
        let mut args = base.clone();
        args.extend([
            "--find-max".into(),
            "--start-rate".into(),
            c.start_rate.to_string(),
            "--factor".into(),
            c.factor.to_string(),
            "--step-secs".into(),
            c.step_secs.to_string(),
            "--max-total-secs".into(),
            (left - 10.0).min(75.0).to_string(),
        ]);
        let find_max = self.loadgen(&args)?;
        for s in &find_max.steps {
            eprintln!("  {}", nts_bench::loadgen::step_line(s));
        }
        match &find_max.best {
            Some(b) => eprintln!(
                "  => {:.0}/s with < {}% loss (stopped by {:?})",
                b.recv_rate, find_max.loss_threshold_pct, find_max.limit
            ),
            None => eprintln!("  => no rate with < {}% loss", find_max.loss_threshold_pct),
        }

        let mut fixed = None;
        let mut fixed_steps = Vec::new();
        if c.per_core {
            for &rate in &c.per_core_rates {
                // A short wait: the search just ended, the machine was checked before it.
                let before = self.wait_quiet_for(c.quiet_wait.min(5.0));
                let r = self.fixed_run(&base, rate, c.per_core_fixed_secs)?;
                // A fixed step is not repeated: if other processes kept the
                // machine busy up to its start, mark it, even when their load
                // does not show in the step's own accounting.
                let busy_before = before.is_some_and(|b| b > c.quiet_cores);
                fixed_steps.extend(r.steps.into_iter().map(|mut st| {
                    st.disturbed |= busy_before;
                    st
                }));
            }
        } else if c.fixed_secs > 0.0 {
            self.wait_quiet();
            fixed = Some(self.fixed_run(&base, c.fixed_rate, c.fixed_secs)?);
        }
        Ok(Measurement {
            server: server.into(),
            load: load.into(),
            find_max,
            fixed,
            fixed_steps,
            background_cores: background,
        })
    }

    /// One nts-loadgen run at a fixed rate.
    fn fixed_run(&self, base: &[String], rate: f64, secs: f64) -> Result<RunReport> {
        let left = self.budget.saturating_sub(self.t0.elapsed()).as_secs_f64();
        let mut args = base.to_vec();
        args.extend([
            "--rate".into(),
            rate.to_string(),
            "--duration".into(),
            secs.to_string(),
            "--max-total-secs".into(),
            (left - 5.0).min(secs + 30.0).max(5.0).to_string(),
        ]);
        let r = self.loadgen(&args)?;
        eprintln!("  fixed: {}", nts_bench::loadgen::step_line(&r.steps[0]));
        Ok(r)
    }

    fn loadgen(&self, args: &[String]) -> Result<RunReport> {
        let json = tempfile::Builder::new()
            .prefix("nts-loadgen-")
            .suffix(".json")
            .tempfile()?;
        let mut cmd = Command::new(&self.bins.loadgen);
        cmd.args(args).arg("--json-out").arg(json.path());
        cmd.stdout(std::process::Stdio::null());
        if self.cli.per_core {
            sys::pin_command(&mut cmd, self.cli.gen_cpu);
        }
        let limit: f64 = args
            .iter()
            .position(|a| a == "--max-total-secs")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(120.0);
        let mut child = cmd.spawn().context("starting nts-loadgen")?;
        let deadline = Instant::now() + Duration::from_secs_f64(limit + 30.0);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nts-loadgen did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("nts-loadgen {} failed: {status}", args.join(" "));
        }
        let text = std::fs::read_to_string(json.path())?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Wait (bounded) until the machine is quiet; returns the last busy reading.
    fn wait_quiet(&self) -> Option<f64> {
        self.wait_quiet_for(self.cli.quiet_wait)
    }

    /// [`Self::wait_quiet`] for at most `secs`.
    fn wait_quiet_for(&self, secs: f64) -> Option<f64> {
        let busy = sys::wait_quiet(self.cli.quiet_cores, Duration::from_secs_f64(secs.max(0.0)))?;
        if busy > self.cli.quiet_cores {
            eprintln!("  (machine still busy with {busy:.2} cores of other load; going on)");
        }
        Some(busy)
    }
}

struct Ours {
    ke: ChildGuard,
    ts: ChildGuard,
    ke_addr: String,
    ntp_addr: String,
    metrics_addr: String,
}

/// Start nts-ke-server and nts-time-server with `server_options` added to its
/// [server] table; `tag` names the logs; `pin` restricts the time server (all
/// its threads, from exec on) to one CPU.
#[allow(clippy::too_many_arguments)]
fn start_ours(
    bins: &Bins,
    pki: &TestPki,
    dir: &Path,
    workers: usize,
    logs: &Path,
    server_options: &[ServerOption],
    tag: &str,
    pin: Option<usize>,
) -> Result<Ours> {
    let ports = testkit::ports::free_ports(3);
    let (ke_port, ntp_port, metrics_port) = (ports[0], ports[1], ports[2]);
    let root = dir.join("cookie-root.key");
    let ke_conf = dir.join("ke-server.toml");
    std::fs::write(
        &ke_conf,
        format!(
            r#"# nts-bench: NTS-KE for the load generator (many exchanges from 127.0.0.1).
[server]
listen = ["127.0.0.1:{ke_port}"]
connections_per_minute = 0
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = "127.0.0.1"
port = {ntp_port}
[cookie_keys]
root_secret_file = {root:?}
create_if_missing = true
[log]
level = "warn"
"#,
            chain = pki.chain_path(),
            key = pki.key_path(),
        ),
    )?;
    let ts_conf = dir.join("time-server.toml");
    let setup = TimeServerSetup {
        ntp_port,
        metrics_port,
        workers,
        root_secret: &root,
    };
    std::fs::write(&ts_conf, time_server_toml(&setup, server_options))?;
    let _ = std::fs::copy(&ke_conf, logs.join(format!("ke-server{tag}.toml")));
    let _ = std::fs::copy(&ts_conf, logs.join(format!("time-server{tag}.toml")));
    let mut cmd = Command::new(&bins.ke);
    cmd.arg("--config").arg(&ke_conf);
    let ke = ChildGuard::spawn(&format!("nts-ke-server{tag}"), cmd, logs)?;
    track(ke.pid());
    wait_for(Duration::from_secs(15), || {
        testkit::ports::is_tcp_listening(ke_port) && root.exists()
    })
    .with_context(|| format!("nts-ke-server did not start:\n{}", ke.logs()))?;
    let mut cmd = Command::new(&bins.ts);
    cmd.arg("--config").arg(&ts_conf);
    if let Some(cpu) = pin {
        sys::pin_command(&mut cmd, cpu);
    }
    let ts = ChildGuard::spawn(&format!("nts-time-server{tag}"), cmd, logs)?;
    track(ts.pid());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    wait_for(Duration::from_secs(15), || {
        http_get(&metrics_addr, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .with_context(|| format!("nts-time-server did not become ready:\n{}", ts.logs()))?;
    Ok(Ours {
        ke,
        ts,
        ke_addr: format!("127.0.0.1:{ke_port}"),
        ntp_addr: format!("127.0.0.1:{ntp_port}"),
        metrics_addr,
    })
}

fn stop(c: ChildGuard) {
    let pid = c.pid();
    let _ = c.stop();
    untrack(pid);
}

fn wait_for(timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    // Normalise the status line for the readiness check.
    Some(out.replacen("HTTP/1.0", "HTTP/1.1", 1))
}

fn scrape(addr: &str) -> Option<String> {
    let r = http_get(addr, "/metrics")?;
    Some(
        r.split_once("\r\n\r\n")
            .map_or(r.clone(), |(_, b)| b.to_string()),
    )
}

fn rss(process: &str, pid: u32) -> Rss {
    Rss {
        process: format!("{process} (pid {pid})"),
        vm_hwm_kib: sys::proc_status_kb(pid, "VmHWM"),
        vm_rss_kib: sys::proc_status_kb(pid, "VmRSS"),
    }
}

fn build_info(bins: &Bins) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let built = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or("?".into(), |d| format!("unix {}", d.as_secs()))
    };
    format!(
        "git {head}{}; nts-time-server built {}, nts-ke-server built {}",
        if dirty { "+dirty" } else { "" },
        built(&bins.ts),
        built(&bins.ke)
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_string())
            })
        })
        .unwrap_or_default()
}

fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.1}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

fn best(m: &Measurement) -> Option<&StepResult> {
    m.find_max.best.as_ref()
}

fn find<'a>(r: &'a Results, server: &str, load: &str) -> Option<&'a Measurement> {
    r.measurements
        .iter()
        .find(|m| m.server == server && m.load == load)
}

fn ratio(a: Option<&Measurement>, b: Option<&Measurement>) -> String {
    match (a.and_then(best), b.and_then(best)) {
        (Some(x), Some(y)) if y.recv_rate > 0.0 => format!("{:.2}", x.recv_rate / y.recv_rate),
        _ => "n/a".into(),
    }
}

/// Machine, build, settings, options and load of a run.
fn header(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {} x {}, Linux {}; {}",
        r.cpus, r.cpu_model, r.kernel, r.settings
    );
    let _ = writeln!(s, "Build: {}", r.build);
    if let Some(v) = &r.chrony_version {
        let _ = writeln!(s, "chrony: {v}");
    }
    if !r.servers.is_empty() {
        let _ = writeln!(s, "Servers: {}", r.servers.join(", "));
    }
    if !r.ours_server_options.is_empty() {
        let _ = writeln!(
            s,
            "nts-time-server extra [server] options: {}",
            r.ours_server_options
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if r.loadavg_start.is_some() || r.loadavg_end.is_some() {
        let _ = writeln!(
            s,
            "Load average (1, 5, 15 min) before: {}, after: {}",
            r.loadavg_start.as_deref().unwrap_or("?"),
            r.loadavg_end.as_deref().unwrap_or("?")
        );
    }
    s
}

/// RSS table and notes, common to both summaries.
fn footer(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| process | peak RSS (VmHWM) | RSS at end |");
    let _ = writeln!(s, "|---|---:|---:|");
    for x in &r.rss {
        let f = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            x.process,
            f(x.vm_hwm_kib),
            f(x.vm_rss_kib)
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s);
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// The per-core summary: the per-core table, the targets, pinning, memory.
fn summarize_per_core(r: &Results, p: &PerCore) -> String {
    let mut s = header(r);
    let _ = writeln!(
        s,
        "Per core: every server pinned to CPU {} (nts-time-server and nts-echo with 1 worker; chronyd with all its threads and NTS-KE helpers), the load generator to CPU {}; fixed steps of {} s.",
        p.server_cpu, p.gen_cpu, p.fixed_secs
    );
    let _ = writeln!(s);
    let rows: Vec<percore::Row<'_>> = r
        .measurements
        .iter()
        .map(|m| percore::Row {
            server: &m.server,
            load: &m.load,
            find_max: &m.find_max,
            fixed: &m.fixed_steps,
        })
        .collect();
    s.push_str(&percore::table(&rows, &p.fixed_rates));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "(!) = other processes used more than {} core during that step (a find-max step is repeated twice before it is kept) or, for a fixed step, just before it.",
        percore::DISTURBED_CORES
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "Targets (computed, not asserted):");
    let _ = writeln!(s);
    s.push_str(&percore::targets_table(&percore::targets(&rows)));
    let _ = writeln!(s);
    if !r.pinning.is_empty() {
        let _ = writeln!(s, "Pinning (Cpus_allowed_list of every thread):");
        let _ = writeln!(s);
        for l in &r.pinning {
            let _ = writeln!(s, "- {l}");
        }
        let _ = writeln!(s);
    }
    s.push_str(&footer(r));
    s
}

fn summarize(r: &Results) -> String {
    if let Some(p) = &r.per_core {
        return summarize_per_core(r, p);
    }
    let mut s = header(r);
    let _ = writeln!(s);
    let fixed_rate = r
        .measurements
        .first()
        .and_then(|m| m.fixed.as_ref())
        .map_or(0.0, |f| f.steps[0].offered_rate);
    let _ = writeln!(
        s,
        "| server | load | max rate, < 1% loss | limited by | latency at max: p50 / p90 / p99 / max (us) | server CPU at max: cores, us/request | generator CPU (cores) | other load (cores) | at {} /s: p50 / p99 (us), server us/request |",
        fmt_rate(fixed_rate)
    );
    let _ = writeln!(s, "|---|---|---:|---|---|---|---:|---:|---|");
    for m in &r.measurements {
        let (rate, lat, scpu, gcpu, other) = match best(m) {
            Some(b) => (
                format!("{}/s", fmt_rate(b.recv_rate)),
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    b.latency_us.p50, b.latency_us.p90, b.latency_us.p99, b.latency_us.max
                ),
                b.server_cpu.map_or("-".into(), |c| {
                    format!("{c:.2}, {:.1}", c / b.recv_rate.max(1.0) * 1e6)
                }),
                format!("{:.2}", b.gen_cpu),
                b.other_load.map_or("-".into(), |o| {
                    format!("{o:.2}{}", if b.disturbed { " (!)" } else { "" })
                }),
            ),
            None => (
                "none".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        let fixed = match m.fixed.as_ref().map(|f| &f.steps[0]) {
            Some(f) => format!(
                "{:.0} / {:.0}, {}{}",
                f.latency_us.p50,
                f.latency_us.p99,
                f.server_cpu
                    .filter(|_| f.recv_rate > 0.0)
                    .map_or("-".into(), |c| format!("{:.1}", c / f.recv_rate * 1e6)),
                if f.loss_pct >= 1.0 {
                    format!(" ({:.1}% loss)", f.loss_pct)
                } else {
                    String::new()
                }
            ),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.server,
            m.load,
            rate,
            m.find_max.limit.map_or("-".into(), |l| match l {
                nts_bench::report::Limit::Loss => "loss".to_string(),
                nts_bench::report::Limit::Generator => "CPU (generator short)".to_string(),
                nts_bench::report::Limit::MaxRate => "max rate".to_string(),
                nts_bench::report::Limit::Time => "time".to_string(),
            }),
            lat,
            scpu,
            gcpu,
            other,
            fixed
        );
    }
    let _ = writeln!(s);
    let ours_nts = find(r, "nts-time-server", "NTS");
    let ours_plain = find(r, "nts-time-server", "plain");
    let ch_nts = find(r, "chronyd", "NTS");
    let ch_plain = find(r, "chronyd", "plain");
    let echo = find(r, "nts-echo", "echo 48 B");
    // Latency at the offered rates every search went through.
    let mut common: Vec<f64> = Vec::new();
    for m in &r.measurements {
        for st in &m.find_max.steps {
            if !common.iter().any(|&c| (c - st.offered_rate).abs() < 0.5) {
                common.push(st.offered_rate);
            }
        }
    }
    common.retain(|&c| {
        r.measurements
            .iter()
            .filter(|m| {
                m.find_max
                    .steps
                    .iter()
                    .any(|st| (st.offered_rate - c).abs() < 0.5)
            })
            .count()
            >= 3
    });
    common.sort_by(|a, b| a.total_cmp(b));
    if !common.is_empty() {
        let _ = writeln!(
            s,
            "Latency p50 / p99 (us) at the offered rates the searches share (find-max steps; * = loss >= 1% or generator short):"
        );
        let _ = writeln!(s);
        let mut head = String::from("| server | load |");
        let mut rule = String::from("|---|---|");
        for c in &common {
            let _ = write!(head, " {}/s |", fmt_rate(*c));
            rule.push_str("---|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for m in &r.measurements {
            let _ = write!(s, "| {} | {} |", m.server, m.load);
            for c in &common {
                match m
                    .find_max
                    .steps
                    .iter()
                    .find(|st| (st.offered_rate - c).abs() < 0.5)
                {
                    Some(st) => {
                        let bad = st.loss_pct >= m.find_max.loss_threshold_pct
                            || st.send_rate < 0.97 * st.offered_rate;
                        let _ = write!(
                            s,
                            " {:.0} / {:.0}{} |",
                            st.latency_us.p50,
                            st.latency_us.p99,
                            if bad { " *" } else { "" }
                        );
                    }
                    None => s.push_str(" - |"),
                }
            }
            s.push('\n');
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Ratios of max rates:");
    let _ = writeln!(s);
    let _ = writeln!(s, "- NTS, ours / chrony: {}", ratio(ours_nts, ch_nts));
    let _ = writeln!(s, "- plain, ours / chrony: {}", ratio(ours_plain, ch_plain));
    let _ = writeln!(s, "- ours, plain / echo: {}", ratio(ours_plain, echo));
    let _ = writeln!(s, "- chrony, plain / echo: {}", ratio(ch_plain, echo));
    let _ = writeln!(s, "- ours, NTS / plain: {}", ratio(ours_nts, ours_plain));
    let _ = writeln!(s, "- chrony, NTS / plain: {}", ratio(ch_nts, ch_plain));
    if let Some(small) = find(r, SMALL_RCVBUF, "NTS") {
        let _ = writeln!(
            s,
            "- NTS, ours with the kernel-default receive buffer / chrony: {}",
            ratio(Some(small), ch_nts)
        );
    }
    let _ = writeln!(s);
    s.push_str(&footer(r));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_bench::report::{Latency, Limit};

    fn step(rate: f64, cores: f64, len: usize) -> StepResult {
        StepResult {
            offered_rate: rate,
            send_rate: rate,
            recv_rate: rate * 0.999_7,
            server_cpu: Some(cores),
            request_len: len,
            latency_us: Latency {
                p50: 31.3,
                p90: 70.1,
                p99: 123.456_7,
                max: 999.0,
            },
            ..StepResult::default()
        }
    }

    fn measurement(server: &str, load: &str, max: f64, len: usize) -> Measurement {
        let best = step(max, 0.987_654_321, len);
        Measurement {
            server: server.into(),
            load: load.into(),
            find_max: RunReport {
                mode: "nts".into(),
                target: "127.0.0.1:1".into(),
                sources: 16,
                sockets: 64,
                ke_sessions: 256,
                aead: None,
                cookie_len: None,
                verify_every: 1,
                loss_threshold_pct: 1.0,
                steps: vec![step(20_000.0, 0.1, len), best.clone()],
                best: Some(best),
                limit: Some(Limit::Loss),
                wall_s: 20.0,
            },
            fixed: None,
            fixed_steps: vec![step(10_000.0, 0.123_456, len), step(40_000.0, 0.333_3, len)],
            background_cores: Some(0.01),
        }
    }

    fn per_core_results() -> Results {
        Results {
            started_unix: 1,
            cpus: 2,
            kernel: "6.1".into(),
            cpu_model: "test".into(),
            chrony_version: Some("chronyd 4.3".into()),
            build: "git abc".into(),
            settings: "workers 1".into(),
            measurements: vec![
                measurement(percore::OURS, "NTS", 151_234.5, 232),
                measurement(percore::OURS, "plain", 201_234.5, 48),
                measurement(percore::CHRONY, "NTS", 70_321.9, 228),
                measurement(percore::ECHO, "echo 232 B", 180_111.1, 232),
                measurement(percore::ECHO, "echo 48 B", 190_111.1, 48),
            ],
            rss: Vec::new(),
            notes: vec!["a note".into()],
            per_core: Some(PerCore {
                server_cpu: 1,
                gen_cpu: 0,
                fixed_rates: vec![10_000.0, 40_000.0],
                fixed_secs: 2.5,
            }),
            servers: vec!["ours".into(), "chrony".into(), "echo".into()],
            ours_server_options: vec!["receive_buffer = 0".into()],
            loadavg_start: Some("0.10 0.20 0.30".into()),
            loadavg_end: Some("1.00 0.50 0.40".into()),
            pinning: vec!["nts-time-server after start: pid 1: 3 threads on CPU 1".into()],
        }
    }

    #[test]
    fn summarize_of_the_written_json_is_the_summary() {
        let r = per_core_results();
        let json = serde_json::to_string_pretty(&r).unwrap();
        let back: Results = serde_json::from_str(&json).unwrap();
        let s = summarize(&back);
        assert_eq!(s, summarize(&r));
        assert!(
            s.contains("| nts-time-server | NTS | 232 B | 151.2k/s |"),
            "{s}"
        );
        assert!(
            s.contains("(b) NTS max rate per core: ours / chrony | 2.15 | ≥ 2 | met |"),
            "{s}"
        );
        assert!(s.contains("`receive_buffer = 0`"));
        assert!(s.contains("before: 0.10 0.20 0.30, after: 1.00 0.50 0.40"));
        assert!(s.contains("- nts-time-server after start: pid 1: 3 threads on CPU 1"));
    }

    #[test]
    fn results_written_before_the_per_core_mode_still_summarize() {
        let mut r = per_core_results();
        r.per_core = None;
        let mut v = serde_json::to_value(&r).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "per_core",
            "servers",
            "ours_server_options",
            "loadavg_start",
            "loadavg_end",
            "pinning",
        ] {
            o.remove(k);
        }
        for m in o["measurements"].as_array_mut().unwrap() {
            m.as_object_mut().unwrap().remove("fixed_steps");
        }
        let old: Results = serde_json::from_value(v).unwrap();
        let s = summarize(&old);
        assert!(s.contains("Ratios of max rates:"), "{s}");
        assert!(!s.contains("Targets"));
    }
}
