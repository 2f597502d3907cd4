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

use anyhow::{bail, Context, Result};
use clap::Parser;
use nts_bench::report::{RunReport, StepResult};
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(path) = &cli.summarize {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let old: Results = serde_json::from_str(&text)?;
        println!("{}", summarize(&old));
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
    std::fs::create_dir_all(&cli.out)?;
    let out = std::fs::canonicalize(&cli.out)?;
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
            cli.workers,
            cli.step_secs,
            cli.start_rate,
            cli.factor,
            cli.fixed_rate,
            cli.fixed_secs,
            cli.ke_sessions,
            cli.sources,
            cli.ports_per_source
        ),
        measurements: Vec::new(),
        rss: Vec::new(),
        notes: Vec::new(),
    };
    let ctx = Ctx {
        cli: &cli,
        bins: &bins,
        t0,
        budget,
        ca: pki.ca_path().to_path_buf(),
    };

    // 1. Ours.
    eprintln!(
        "\n=== nts-ke-server + nts-time-server (workers {}, rate limit off) ===",
        cli.workers
    );
    {
        let dir = tempfile::Builder::new()
            .prefix("nts-bench-ours-")
            .tempdir()?;
        let ours = start_ours(&bins, &pki, dir.path(), cli.workers, &logs, false)?;
        let pids = vec![ours.ts.pid()];
        let nts = ctx.measure("nts-time-server", "NTS", "nts", &ours.ke_addr, None, &pids)?;
        results.measurements.push(nts);
        let plain = ctx.measure(
            "nts-time-server",
            "plain",
            "plain",
            "",
            Some(&ours.ntp_addr),
            &pids,
        )?;
        results.measurements.push(plain);
        results.rss.push(rss("nts-time-server", ours.ts.pid()));
        results.rss.push(rss("nts-ke-server", ours.ke.pid()));
        if let Some(m) = scrape(&ours.metrics_addr) {
            std::fs::write(logs.join("nts-time-server.metrics.txt"), &m)?;
            for l in m.lines().filter(|l| {
                (l.starts_with("nts_time_requests_dropped_total")
                    || l.starts_with("nts_time_send_errors_total")
                    || l.starts_with("nts_time_nts_nak_total"))
                    && !l.ends_with(" 0")
            }) {
                results
                    .notes
                    .push(format!("nts-time-server metric after the run: {l}"));
            }
        }
        stop(ours.ts);
        stop(ours.ke);
    }

    // 1b. Ours with chrony's receive buffer (the kernel default), NTS only.
    if !cli.no_small_rcvbuf {
        eprintln!("\n=== nts-time-server with the kernel-default socket receive buffer ===");
        let dir = tempfile::Builder::new()
            .prefix("nts-bench-ours-")
            .tempdir()?;
        let ours = start_ours(&bins, &pki, dir.path(), cli.workers, &logs, true)?;
        let pids = vec![ours.ts.pid()];
        let m = ctx.measure(SMALL_RCVBUF, "NTS", "nts", &ours.ke_addr, None, &pids)?;
        results.measurements.push(m);
        stop(ours.ts);
        stop(ours.ke);
    }

    // 2. chrony.
    if cli.skip_chrony {
        results.notes.push("chrony skipped (--skip-chrony)".into());
    } else if let Some(cbins) = testkit::peers::require_chrony() {
        eprintln!("\n=== chronyd -x as NTS server (no ratelimit) ===");
        results.chrony_version = Command::new(&cbins.chronyd)
            .arg("-v")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let server = ChronyServer::builder(&cbins, &pki)
            .name("chrony-bench")
            // Sources are 127.0.0.2 and up.
            .config_line("allow 127.0.0.0/8")
            .start()
            .context("starting chronyd")?;
        let pid = server.process().pid();
        track(pid);
        let ke_addr = format!("127.0.0.1:{}", server.ke_port());
        let ntp_addr = format!("127.0.0.1:{}", server.ntp_port());
        let pids = vec![pid];
        let r = (|| -> Result<()> {
            let nts = ctx.measure("chronyd", "NTS", "nts", &ke_addr, None, &pids)?;
            results.measurements.push(nts);
            let plain = ctx.measure("chronyd", "plain", "plain", "", Some(&ntp_addr), &pids)?;
            results.measurements.push(plain);
            Ok(())
        })();
        results.rss.push(rss("chronyd (main: NTP)", pid));
        for c in sys::children_of(pid) {
            results.rss.push(rss("chronyd (NTS-KE helper)", c));
        }
        let _ = std::fs::write(logs.join("chronyd.log"), server.logs());
        let _ = std::fs::write(logs.join("chronyd.conf"), server.config());
        drop(server);
        untrack(pid);
        r?;
    } else {
        results.notes.push("chrony not found: skipped".into());
    }

    // 3. Echo baseline.
    eprintln!("\n=== nts-echo (UDP echo, {} workers) ===", cli.workers);
    {
        let port = testkit::ports::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(&bins.echo);
        cmd.args(["--listen", &addr, "--workers", &cli.workers.to_string()]);
        cmd.args(["--max-secs", &(cli.budget_secs as u64 + 60).to_string()]);
        let echo = ChildGuard::spawn("nts-echo", cmd, &logs)?;
        track(echo.pid());
        wait_for(Duration::from_secs(10), || {
            testkit::ports::is_udp_bound(port)
        })
        .context("nts-echo did not bind")?;
        let pids = vec![echo.pid()];
        let m = ctx.measure("nts-echo", "echo 48 B", "echo", "", Some(&addr), &pids)?;
        results.measurements.push(m);
        if cli.echo_nts_size {
            let len = results
                .measurements
                .iter()
                .find(|m| m.load == "NTS")
                .and_then(|m| m.find_max.steps.first())
                .map_or(228, |s| s.request_len);
            let mut m = ctx.measure_with(
                "nts-echo",
                &format!("echo {len} B"),
                "echo",
                "",
                Some(&addr),
                &pids,
                &["--echo-len".into(), len.to_string()],
            )?;
            m.load = format!("echo {len} B");
            results.measurements.push(m);
        }
        results.rss.push(rss("nts-echo", echo.pid()));
        stop(echo);
    }

    let summary = summarize(&results);
    println!("\n{summary}");
    std::fs::write(out.join("summary.md"), &summary)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "results: {} and {} (logs in {}); {:.0} s in all",
        out.join("summary.md").display(),
        out.join("results.json").display(),
        logs.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
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

        let fixed = if c.fixed_secs > 0.0 {
            self.wait_quiet();
            let left = self.budget.saturating_sub(self.t0.elapsed()).as_secs_f64();
            let mut args = base;
            args.extend([
                "--rate".into(),
                c.fixed_rate.to_string(),
                "--duration".into(),
                c.fixed_secs.to_string(),
                "--max-total-secs".into(),
                (left - 5.0).min(c.fixed_secs + 30.0).max(5.0).to_string(),
            ]);
            let r = self.loadgen(&args)?;
            eprintln!("  fixed: {}", nts_bench::loadgen::step_line(&r.steps[0]));
            Some(r)
        } else {
            None
        };
        Ok(Measurement {
            server: server.into(),
            load: load.into(),
            find_max,
            fixed,
            background_cores: background,
        })
    }

    fn loadgen(&self, args: &[String]) -> Result<RunReport> {
        let json = tempfile::Builder::new()
            .prefix("nts-loadgen-")
            .suffix(".json")
            .tempfile()?;
        let mut cmd = Command::new(&self.bins.loadgen);
        cmd.args(args).arg("--json-out").arg(json.path());
        cmd.stdout(std::process::Stdio::null());
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
        let busy = sys::wait_quiet(
            self.cli.quiet_cores,
            Duration::from_secs_f64(self.cli.quiet_wait.max(0.0)),
        )?;
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

/// Start nts-ke-server and nts-time-server; `small_rcvbuf` leaves the time
/// server's socket receive buffer at the kernel default (as chrony has it).
fn start_ours(
    bins: &Bins,
    pki: &TestPki,
    dir: &Path,
    workers: usize,
    logs: &Path,
    small_rcvbuf: bool,
) -> Result<Ours> {
    let tag = if small_rcvbuf { "-small-rcvbuf" } else { "" };
    let rcvbuf_line = if small_rcvbuf {
        "receive_buffer = 0\n"
    } else {
        ""
    };
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
    // As nts_time_server::dev_config, plus: rate limiting off (the load comes
    // from a few addresses), our port and workers, a metrics endpoint.
    let ts_conf = dir.join("time-server.toml");
    std::fs::write(
        &ts_conf,
        format!(
            r#"# nts-bench: dev configuration with rate limiting off.
[server]
listen = ["127.0.0.1:{ntp_port}"]
workers = {workers}
{rcvbuf_line}[rate_limit]
enabled = false
[clock]
local_reference = true
stratum = 1
reference_id = "LOCL"
[keys]
root_secret_file = {root:?}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[log]
level = "warn"
"#
        ),
    )?;
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

fn summarize(r: &Results) -> String {
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
