//! NTS-KE handshakes per second: nts-ke-server and chronyd's NTS-KE server,
//! one after the other on loopback, driven by the same client (our KE client
//! code: TLS 1.3, full handshake every time, 8 cookies per exchange).
//!
//! Usage: nts-ke-bench [--seconds N] [--concurrency C] [--skip-chrony]

use anyhow::{Context, Result};
use clap::Parser;
use nts_proto::aead::AeadAlgorithm;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::certs::TestPki;

#[derive(Debug, Parser)]
struct Cli {
    /// Seconds of load per server.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Key exchanges in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measure only nts-ke-server.
    #[arg(long)]
    skip_chrony: bool,
}

struct Outcome {
    ok: u64,
    failed: u64,
    elapsed: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn drive(
    port: u16,
    ca: &std::path::Path,
    seconds: f64,
    concurrency: usize,
    aead: AeadAlgorithm,
) -> Result<Outcome> {
    let roots = nts_client::ke::root_store(&[ca], false)?;
    // Full handshakes every time: no TLS session resumption.
    let mut cfg = (*nts_client::ke::tls_config(roots)).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    let tls = Arc::new(cfg);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (tls, ok, failed) = (tls.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                match nts_client::ke::key_exchange(
                    "127.0.0.1",
                    port,
                    tls.clone(),
                    &[aead],
                    Duration::from_secs(5),
                )
                .await
                {
                    Ok(o) if o.cookies.len() == 8 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Outcome {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

fn ours(pki: &TestPki, dir: &std::path::Path) -> Result<testkit::stack::Daemon> {
    let root = dir.join("root.key");
    testkit::stack::write_root_secret(&root)?;
    let port = testkit::ports::free_port();
    let mport = testkit::ports::free_port();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
connections_per_minute = 0
max_connections = 4096
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
[ntp]
server = "127.0.0.1"
port = 123
[cookie_keys]
root_secret_file = {root:?}
[metrics]
listen = "127.0.0.1:{mport}"
[log]
level = "warn"
"#,
        chain = pki.chain_path(),
        key = pki.key_path(),
    );
    let bin = std::env::current_exe()?.with_file_name("nts-ke-server");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: build with `cargo build --release -p nts-ke-server`",
        bin.display()
    );
    // The daemon logs at warn: wait for its port instead of a log line.
    let path = dir.join("ke.toml");
    std::fs::write(&path, &config)?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--config")
        .arg(&path)
        .arg("--log-level")
        .arg("info");
    let guard = testkit::process::ChildGuard::spawn_combined("nts-ke-server", cmd, dir)?;
    guard.wait_for_log_contains("NTS-KE listening", Duration::from_secs(20))?;
    Ok(testkit::stack::Daemon {
        guard,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        metrics: std::net::SocketAddr::from(([127, 0, 0, 1], mport)),
        config_path: path,
    })
}

fn report(name: &str, o: &Outcome) -> f64 {
    let rate = o.ok as f64 / o.elapsed;
    println!(
        "{name:<16} {rate:>9.0} handshakes/s   ok {:>7}  failed {:>5}   latency p50 {:>6.2} ms  p99 {:>6.2} ms",
        o.ok, o.failed, o.p50_ms, o.p99_ms
    );
    rate
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::generate().context("test PKI")?;
    println!(
        "NTS-KE full TLS 1.3 handshakes + 8 cookies, {} in flight, {} s per server, client on 1 thread, loopback, {} cores",
        cli.concurrency,
        cli.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let d = ours(&pki, dir.path())?;
    let o = rt.block_on(drive(
        d.port(),
        pki.ca_path(),
        cli.seconds,
        cli.concurrency,
        AeadAlgorithm::AesSivCmac256,
    ))?;
    let ours_rate = report("nts-ke-server", &o);
    drop(d);
    if !cli.skip_chrony {
        let Some(bins) = testkit::peers::require_chrony() else {
            return Ok(());
        };
        let chrony = testkit::chrony::ChronyServer::builder(&bins, &pki).start()?;
        let o = rt.block_on(drive(
            chrony.ke_port(),
            pki.ca_path(),
            cli.seconds,
            cli.concurrency,
            AeadAlgorithm::AesSivCmac256,
        ))?;
        let chrony_rate = report("chronyd 4.3", &o);
        println!(
            "ratio nts-ke-server / chronyd: {:.2}",
            ours_rate / chrony_rate.max(1e-9)
        );
    }
    Ok(())
}
