use anyhow::{bail, Result};
use clap::Parser;
use nts_time_server::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// NTP/NTS time server (RFC 5905, RFC 8915).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML). See docs/time-server.md.
    #[arg(short, long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Development mode: serve on 127.0.0.1:4123 as a local reference, with the keys of
    /// the `nts-ke-server --dev` sharing --state-dir.
    #[arg(long)]
    dev: bool,
    /// State directory for --dev.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./nts-dev",
        requires = "dev"
    )]
    state_dir: PathBuf,
    /// UDP listen address (replaces server.listen; repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Worker threads per listen address (replaces server.workers; 0 = one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Metrics and health endpoint address (replaces metrics.listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log level (replaces log.level; RUST_LOG wins over both).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Where clients are sent for NTP, `host:port` or `[ip]:port` (replaces
    /// key_sync.advertise), so each pod of a DaemonSet can advertise its node's address.
    #[arg(long, value_name = "HOST:PORT", env = "NTS_ADVERTISE")]
    advertise: Option<String>,
    /// Identity in the ke-servers' registry (replaces key_sync.server_id).
    #[arg(long, value_name = "ID", env = "NTS_SERVER_ID")]
    server_id: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut config = match (&cli.config, cli.dev) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => nts_time_server::dev_config(&cli.state_dir)?,
        (None, false) => bail!("either --config FILE or --dev is required (see --help)"),
    };
    if !cli.listen.is_empty() {
        config.server.listen = cli.listen.clone();
    }
    if let Some(w) = cli.workers {
        config.server.workers = w;
    }
    if cli.metrics_listen.is_some() {
        config.metrics.listen = cli.metrics_listen;
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    config.override_key_sync(cli.advertise.clone(), cli.server_id.clone())?;
    config.log.validate()?;
    nts_ops::init_logging(&config.log.level);
    if cli.dev {
        // The ke-server started beside us creates the development PKI; give it a moment.
        let cert = cli.state_dir.join("time-server-cert.pem");
        let mut waited = 0;
        while !cert.exists() {
            if waited == 0 {
                tracing::info!(file = %cert.display(), "waiting for nts-ke-server --dev to create the development certificates");
            }
            if waited >= 600 {
                bail!(
                    "{} did not appear: start `nts-ke-server --dev --state-dir {}` first",
                    cert.display(),
                    cli.state_dir.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            waited += 1;
        }
    }
    let settings = config.validate()?;
    if cli.check_config {
        // Everything start-up would check: files, keys, certificates, users.
        let problems = nts_time_server::check::problems(&settings);
        if problems.is_empty() {
            println!("configuration OK");
            return Ok(());
        }
        for p in &problems {
            eprintln!("error: {p}");
        }
        bail!("{} problem(s) in the configuration", problems.len());
    }
    let seccomp = settings.config.server.seccomp;
    let drain_grace = std::time::Duration::from_secs_f64(settings.config.server.drain_grace);
    let key_sync = settings.config.key_sync.is_some() && settings.config.keys.is_none();
    let running = nts_time_server::start(settings)?;
    for a in &running.addrs {
        tracing::info!(addr = %a, workers = running.metrics.workers.len() / running.addrs.len(), "NTP listening");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    nts_ops::sandbox::enter(nts_ops::sandbox::Role::TimeServer, seccomp)?;
    runtime.block_on(async move {
        if let Some(l) = running.metrics_listener {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(addr = %l.local_addr()?, "metrics and health on /metrics, /healthz, /readyz");
            let health = Arc::new(nts_time_server::Health {
                metrics: running.metrics.clone(),
                serving: running.shared.serving.clone(),
                keys: running.keys.clone(),
            });
            tokio::spawn(nts_ops::http::serve(l, health));
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Unhealthy from now on: key sync reports it within its health check
        // (200 ms) and the KE replicas stop handing this server out; clients
        // already here keep getting answers for the grace period.
        running.shared.serving.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        running.metrics.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let grace = if key_sync {
            drain_grace.max(std::time::Duration::from_millis(500))
        } else {
            drain_grace
        };
        tracing::info!(grace_s = grace.as_secs_f64(), "draining: reported unhealthy to the KE replicas, answering until the grace period ends");
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shared.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok::<(), anyhow::Error>(())
    })
}
