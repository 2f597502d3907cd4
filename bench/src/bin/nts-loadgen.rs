//! `nts-loadgen`: NTS / plain NTP / echo load from many loopback sources.
//! See the `nts_bench::loadgen` module documentation.

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use nts_bench::loadgen::{step_line, Config, FindMax, Generator, KeParams, Mode};
use nts_bench::report::RunReport;
use nts_proto::aead::AeadAlgorithm;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliMode {
    Nts,
    Plain,
    Echo,
}

/// Load generator for NTP/NTS servers (loopback only).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// What to send.
    #[arg(long, value_enum, default_value = "nts")]
    mode: CliMode,
    /// NTP (or echo) server address. For NTS it defaults to what NTS-KE negotiates.
    #[arg(long, value_name = "ADDR")]
    server: Option<SocketAddr>,
    /// NTS-KE server (HOST:PORT); needed for --mode nts.
    #[arg(long, value_name = "HOST:PORT")]
    ke: Option<String>,
    /// CA certificate (PEM) to trust for NTS-KE.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Key exchanges to run at start (8 cookies each).
    #[arg(long, default_value_t = 256)]
    ke_sessions: usize,
    /// Key exchanges in parallel.
    #[arg(long, default_value_t = 8)]
    ke_concurrency: usize,
    /// AEAD algorithm to ask for: 256 (AES-SIV-CMAC-256, which every server has) or 512.
    #[arg(long, default_value_t = 256)]
    aead: u16,
    /// Source addresses: 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 16)]
    sources: u8,
    /// Sockets (source ports) per source address.
    #[arg(long, default_value_t = 4)]
    ports_per_source: usize,
    /// Datagrams per sendmmsg/recvmmsg.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Requests per second (fixed-rate run).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of sending (fixed-rate run).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Shortest sleep between send bursts, in microseconds.
    #[arg(long, default_value_t = 50)]
    min_wait_us: u64,
    /// A response later than this many milliseconds counts as lost.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// NTS: decrypt and check one response in N (1 = every one). Unchecked
    /// responses give no new cookies, so cookies get reused.
    #[arg(long, default_value_t = 1)]
    verify_every: u32,
    /// Echo mode: datagram length in bytes (48 = a plain NTP request).
    #[arg(long, default_value_t = 48)]
    echo_len: usize,
    /// Search for the highest rate with loss under --loss-threshold.
    #[arg(long)]
    find_max: bool,
    /// find-max: first rate.
    #[arg(long, default_value_t = 5_000.0)]
    start_rate: f64,
    /// find-max: factor between steps.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// find-max: highest rate to try.
    #[arg(long, default_value_t = 2_000_000.0)]
    max_rate: f64,
    /// find-max: seconds per step.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// find-max: loss (percent) at or above which a step fails.
    #[arg(long, default_value_t = 1.0)]
    loss_threshold: f64,
    /// find-max: bisection steps after the first failing step.
    #[arg(long, default_value_t = 3)]
    refine: usize,
    /// find-max: repeat a step (twice at most) when other processes used more
    /// than this many cores during it (needs --server-pid).
    #[arg(long, default_value_t = 0.25)]
    max_other_cores: f64,
    /// Hard limit on the whole run in seconds (key exchange included).
    #[arg(long, default_value_t = 120.0)]
    max_total_secs: f64,
    /// Report CPU use of these processes per step (repeatable).
    #[arg(long, value_name = "PID")]
    server_pid: Vec<u32>,
    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// No per-step lines.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let t0 = Instant::now();
    let budget = Duration::from_secs_f64(cli.max_total_secs.clamp(1.0, 3600.0));
    // Watchdog: whatever happens, this process ends shortly after its budget.
    std::thread::spawn(move || {
        std::thread::sleep(budget + Duration::from_secs(20));
        eprintln!("nts-loadgen: over the time budget, exiting");
        std::process::exit(3);
    });
    // Finer timer wake-ups for pacing (the default slack is 50 us).
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 10_000u64) };

    let mode = match cli.mode {
        CliMode::Nts => Mode::Nts,
        CliMode::Plain => Mode::Plain,
        CliMode::Echo => Mode::Echo,
    };
    if cli.sources == 0 || cli.sources > 250 {
        bail!("--sources must be between 1 and 250");
    }
    if !(cli.rate > 0.0 && cli.start_rate > 0.0 && cli.factor > 1.0) {
        bail!("rates must be positive and --factor above 1");
    }
    let sources: Vec<Ipv4Addr> = (0..cli.sources)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
        .collect();
    let target = cli
        .server
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    if !target.ip().is_loopback() {
        bail!("--server must be a loopback address");
    }
    let ke = match mode {
        Mode::Nts => {
            let ke = cli
                .ke
                .as_deref()
                .context("--mode nts needs --ke HOST:PORT")?;
            let (host, port) = nts_client::split_host_port(ke, 4460).map_err(anyhow::Error::msg)?;
            let cas: Vec<&std::path::Path> = cli.ca.iter().map(|p| p.as_path()).collect();
            let roots = nts_client::ke::root_store(&cas, false)?;
            let aead = match cli.aead {
                256 => AeadAlgorithm::AesSivCmac256,
                512 => AeadAlgorithm::AesSivCmac512,
                _ => bail!("--aead must be 256 or 512"),
            };
            Some(KeParams {
                host,
                port,
                tls: nts_client::ke::tls_config(roots),
                aead,
                sessions: cli.ke_sessions.max(1),
                concurrency: cli.ke_concurrency,
                timeout: Duration::from_secs(5),
            })
        }
        _ => None,
    };
    let cfg = Config {
        mode,
        target,
        sources,
        ports_per_source: cli.ports_per_source,
        batch: cli.batch.clamp(1, 1024),
        timeout: Duration::from_millis(cli.timeout_ms.clamp(10, 5000)),
        verify_every: cli.verify_every.max(1),
        echo_len: cli.echo_len.clamp(48, 1400),
        server_pids: cli.server_pid.clone(),
        quiet: cli.quiet,
        min_wait: Duration::from_micros(cli.min_wait_us.clamp(1, 10_000)),
    };
    let mut g = Generator::new(cfg, ke)?;
    eprintln!(
        "nts-loadgen: mode {} -> {} from {} sockets ({} addresses){}",
        mode.name(),
        g.target(),
        g.sockets(),
        cli.sources,
        match (g.aead, g.cookie_len) {
            (Some(a), Some(l)) => format!(
                ", {} key exchanges, {a}, cookies of {l} bytes",
                g.ke_sessions()
            ),
            _ => String::new(),
        }
    );
    let remaining = budget.saturating_sub(t0.elapsed());
    let (steps, best, limit) = if cli.find_max {
        let p = FindMax {
            start_rate: cli.start_rate,
            factor: cli.factor,
            max_rate: cli.max_rate,
            step: Duration::from_secs_f64(cli.step_secs.clamp(0.2, 60.0)),
            pause: Duration::from_millis(300),
            loss_threshold: cli.loss_threshold,
            refine: cli.refine,
            budget: remaining,
            max_other: cli.max_other_cores,
        };
        let (steps, best, limit) = g.find_max(&p)?;
        (steps, best, Some(limit))
    } else {
        let d = Duration::from_secs_f64(cli.duration.clamp(0.1, 600.0))
            .min(remaining.saturating_sub(Duration::from_secs(1)));
        let r = g.fixed(cli.rate, d)?;
        (vec![r], None, None)
    };
    let report = RunReport {
        mode: mode.name().into(),
        target: g.target().to_string(),
        sources: cli.sources as usize,
        sockets: g.sockets(),
        ke_sessions: g.ke_sessions(),
        aead: g.aead.map(|a| a.name().to_string()),
        cookie_len: g.cookie_len,
        verify_every: cli.verify_every.max(1),
        loss_threshold_pct: cli.loss_threshold,
        steps,
        best,
        limit,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    if cli.find_max {
        match &report.best {
            Some(b) => println!(
                "max rate with loss < {}%: {:.0}/s (offered {:.0}/s; stopped by {:?})\n  {}",
                cli.loss_threshold,
                b.recv_rate,
                b.offered_rate,
                report.limit.expect("find-max sets a limit"),
                step_line(b)
            ),
            None => println!(
                "no step had loss under {}% (stopped by {:?})",
                cli.loss_threshold, report.limit
            ),
        }
    } else {
        let r = &report.steps[0];
        println!(
            "sent {} received {} loss {:.3}% rate {:.0}/s (offered {:.0}/s)\n  {}",
            r.sent,
            r.received,
            r.loss_pct,
            r.recv_rate,
            r.offered_rate,
            step_line(r)
        );
    }
    if let Some(path) = &cli.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
