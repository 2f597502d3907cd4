use anyhow::{bail, Result};
use clap::Parser;
use nts_ke_server::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

/// NTS-KE server (RFC 8915): hands out NTS cookies over TLS 1.3.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML). See docs/ke-server.md.
    #[arg(short, long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Development mode: generate a local CA and certificate in --state-dir and listen on loopback.
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
    /// NTS-KE listen address (replaces server.listen; repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Metrics and health endpoint address (replaces metrics.listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Time server name clients are sent to (replaces ntp.server).
    #[arg(long, value_name = "HOST")]
    ntp_server: Option<String>,
    /// Time server port clients are sent to (replaces ntp.port).
    #[arg(long, value_name = "PORT")]
    ntp_port: Option<u16>,
    /// Log level (replaces log.level; RUST_LOG wins over both).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut config = match (&cli.config, cli.dev) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => {
            nts_ops::init_logging(cli.log_level.as_deref().unwrap_or("info"));
            nts_ke_server::dev_config(&cli.state_dir)?
        }
        (None, false) => bail!("either --config FILE or --dev is required (see --help)"),
    };
    if !cli.listen.is_empty() {
        config.server.listen = cli.listen.clone();
    }
    if cli.metrics_listen.is_some() {
        config.metrics.listen = cli.metrics_listen;
    }
    if cli.ntp_server.is_some() {
        config.ntp.server = cli.ntp_server.clone();
    }
    if cli.ntp_port.is_some() {
        config.ntp.port = cli.ntp_port;
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    let settings = config.validate()?;
    nts_ops::init_logging(&settings.config.log.level);
    if cli.check_config {
        // Everything start-up would check: files, keys, certificates, users.
        let problems = nts_ke_server::check::problems(&settings);
        if problems.is_empty() {
            println!("configuration OK");
            return Ok(());
        }
        for p in &problems {
            eprintln!("error: {p}");
        }
        bail!("{} problem(s) in the configuration", problems.len());
    }
    // Before any thread exists: the helper that reads renewed certificates after the drop.
    let reader = nts_ke_server::file_reader(&settings.config)?;
    // What the KE server may still need while starting (binding low ports, switching
    // users, reading root-only files); a switch to server.user drops them all.
    {
        use nts_ops::sandbox::cap;
        nts_ops::sandbox::narrow_capabilities(&[
            cap::NET_BIND_SERVICE,
            cap::SETUID,
            cap::SETGID,
            cap::DAC_OVERRIDE,
            cap::DAC_READ_SEARCH,
            cap::CHOWN,
            cap::FOWNER,
        ])?;
    }
    let seccomp = settings.config.server.seccomp;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let running = nts_ke_server::start_with(settings, reader).await?;
        nts_ops::sandbox::enter(nts_ops::sandbox::Role::KeServer, seccomp)?;
        for a in &running.ke_addrs {
            tracing::info!(addr = %a, "NTS-KE listening");
        }
        if let Some(a) = running.metrics_addr {
            tracing::info!(addr = %a, "metrics and health on http://{a}/metrics, /healthz, /readyz");
        }
        if cli.dev {
            tracing::info!(
                ca = %cli.state_dir.join("ca.pem").display(),
                "development mode: clients must trust this CA; NTP is at 127.0.0.1:{}",
                nts_ke_server::DEV_NTP_PORT
            );
        }
        wait_for_shutdown().await;
        running.drain(wait_for_shutdown()).await;
        Ok(())
    })
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
