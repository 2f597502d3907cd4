use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nts_client::ke::{self, DEFAULT_KE_PORT};
use nts_proto::aead::AeadAlgorithm;
use std::path::PathBuf;
use std::time::Duration;

/// NTS client agent.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: measure against the configured sources and discipline the clock
    /// (or only observe). See docs/client.md.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, value_name = "FILE", conflicts_with = "dev")]
        config: Option<PathBuf>,
        /// Development mode: observe-only against the local stack of `nts-ke-server --dev`.
        #[arg(long)]
        dev: bool,
        /// State directory for --dev (where the development CA is).
        #[arg(long, value_name = "DIR", default_value = "./nts-dev")]
        state_dir: PathBuf,
        /// Metrics and health endpoint (replaces metrics.listen).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Status socket (replaces status.socket).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Log level (replaces log.level).
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
        /// Check the configuration and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Show the running agent's sources and NTS state (like `chronyc sources` and `ntpq -c nts`).
    Status {
        /// The agent's status socket.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/run/nts-client/status.sock"
        )]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long, conflicts_with = "brief")]
        json: bool,
        /// Print one line.
        #[arg(long)]
        brief: bool,
    },
    /// Measure the offset to one server once (NTS unless --no-nts), like `chronyd -Q` or `ntpdig`.
    Query {
        /// With NTS: the KE server as HOST or HOST:PORT (default 4460). With --no-nts: the NTP server (default port 123).
        server: String,
        /// Extra CA certificate (PEM) to trust for NTS-KE; repeatable.
        #[arg(long, value_name = "FILE")]
        ca: Vec<PathBuf>,
        /// Trust only --ca files, not the system's roots.
        #[arg(long)]
        no_system_roots: bool,
        /// Plain, unauthenticated NTP.
        #[arg(long)]
        no_nts: bool,
        /// Print JSON.
        #[arg(long, conflicts_with = "brief")]
        json: bool,
        /// Print one line.
        #[arg(long)]
        brief: bool,
        /// Seconds to wait for each step.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Samples to take (the one with the least delay is reported); lost packets are retried.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
        samples: u32,
        /// Seconds between samples.
        #[arg(long, default_value_t = 0.5)]
        interval: f64,
        /// Ask for interleaved mode (RFC 9769, chrony's xleave): from the
        /// third sample on, a server that supports it returns the transmit
        /// timestamp of its previous response, taken after it left.
        #[arg(long)]
        xleave: bool,
    },
    /// Run one NTS key exchange and print what the server negotiated.
    Ke {
        /// KE server as HOST or HOST:PORT (default port 4460).
        server: String,
        /// Extra CA certificate (PEM) to trust; repeatable.
        #[arg(long, value_name = "FILE")]
        ca: Vec<PathBuf>,
        /// Trust only --ca files, not the system's roots.
        #[arg(long)]
        no_system_roots: bool,
        /// Seconds to wait for the exchange.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

fn dev_config(state_dir: &std::path::Path) -> Result<nts_client::config::Config> {
    let text = format!(
        r#"
[[source]]
type = "nts"
address = "127.0.0.1:4460"
xleave = true
[nts]
ca_files = [{ca:?}]
system_roots = false
state_dir = {state:?}
ke_spread = 0.0
[clock]
mode = "observe"
minpoll = 2
maxpoll = 4
[status]
socket = {sock:?}
"#,
        ca = state_dir.join("ca.pem"),
        sock = state_dir.join("client.sock"),
        state = state_dir.join("client-state"),
    );
    nts_client::config::Config::parse(&text, std::path::Path::new("--dev"))
}

struct Health(std::sync::Arc<nts_client::agent::Shared>);

impl nts_ops::http::Observable for Health {
    fn render_metrics(&self) -> String {
        let r = self
            .0
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        nts_client::metrics::render(&r)
    }

    fn readiness(&self) -> std::result::Result<(), String> {
        let r = self.0.report.lock().unwrap_or_else(|p| p.into_inner());
        nts_client::metrics::readiness(&r)
    }
}

/// This host's interface addresses (none when they cannot be read: then no
/// time server is recognized as the host's own, which the log says).
fn own_addresses() -> Vec<std::net::IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(list) => list
            .filter_map(|i| i.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| std::net::IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list this host's addresses ({e}): a time server on this host will not be recognized as its own");
            Vec::new()
        }
    }
}

fn run_agent(
    mut config: nts_client::config::Config,
    metrics_listen: Option<std::net::SocketAddr>,
    socket: Option<PathBuf>,
) -> Result<()> {
    if metrics_listen.is_some() {
        config.metrics.listen = metrics_listen;
    }
    if let Some(s) = socket {
        config.status.socket = s;
    }
    // Capabilities are per thread: narrow them before the runtime starts any.
    // Keep CAP_SYS_TIME only to discipline; seccomp once started (NTS_SECCOMP=off: no filter).
    nts_client::association_file::prepare_state_dir(&config)?;
    // Read before the sandbox (netlink): a time server at one of these is this host's own.
    config.nts.own_addresses = own_addresses();
    let discipline = config.clock.mode == nts_client::config::ClockMode::Discipline
        && nts_client::system_clock::has_cap_sys_time();
    let keep: &[u32] = if discipline {
        &[nts_ops::sandbox::cap::SYS_TIME]
    } else {
        &[]
    };
    nts_ops::sandbox::narrow_capabilities(keep).context("dropping privileges")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shared = std::sync::Arc::new(nts_client::agent::Shared {
            report: Default::default(),
        });
        if let Some(addr) = config.metrics.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot bind {addr}"))?;
            tokio::spawn(nts_ops::http::serve(
                l,
                std::sync::Arc::new(Health(shared.clone())),
            ));
        }
        let sock = config.status.socket.clone();
        let s2 = shared.clone();
        let status_task = tokio::spawn(async move {
            if let Err(e) = nts_client::status::serve(&sock, s2).await {
                tracing::warn!("status socket {} unavailable: {e}", sock.display());
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut agent = tokio::spawn(nts_client::agent::run(config, shared, stop_rx));
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        nts_ops::sandbox::enter(nts_ops::sandbox::Role::Client, true)?;
        let finished = tokio::select! {
            r = &mut agent => { r??; true }
            _ = tokio::signal::ctrl_c() => false,
            _ = term.recv() => false,
        };
        if !finished {
            // Let the agent end a slew and save its frequency, briefly.
            let _ = stop_tx.send(true);
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(5), &mut agent).await {
                r??;
            }
        }
        status_task.abort();
        tracing::info!("shutting down");
        anyhow::Ok(())
    })
}

/// Print to stdout; a reader that went away (`| head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        if let Err(e) = writeln!(o, $($arg)*).and_then(|_| o.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            dev,
            state_dir,
            metrics_listen,
            socket,
            log_level,
            check_config,
        } => {
            let cfg = match (config, dev) {
                (Some(p), _) => nts_client::config::Config::load(&p)?,
                (None, true) => {
                    // The ke-server started beside us creates the development CA; wait for it.
                    let ca = state_dir.join("ca.pem");
                    for _ in 0..600 {
                        if ca.exists() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    dev_config(&state_dir)?
                }
                (None, false) => {
                    anyhow::bail!("either --config FILE or --dev is required (see --help)")
                }
            };
            nts_ops::init_logging(log_level.as_deref().unwrap_or(&cfg.log.level));
            cfg.validate()?;
            if check_config {
                nts_client::association_file::check_state(&cfg)?;
                out!("configuration OK");
                return Ok(());
            }
            return run_agent(cfg, metrics_listen, socket);
        }
        Command::Status {
            socket,
            json,
            brief,
        } => {
            let r = nts_client::status::fetch(&socket)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            } else if brief {
                out!("{}", r.brief());
            } else {
                out!("{}", r.render().trim_end());
            }
            return Ok(());
        }
        Command::Query {
            server,
            ca,
            no_system_roots,
            no_nts,
            json,
            brief,
            timeout,
            samples,
            interval,
            xleave,
        } => {
            nts_ops::init_logging("warn");
            anyhow::ensure!(
                timeout.is_finite() && timeout > 0.0,
                "--timeout must be a positive number of seconds"
            );
            anyhow::ensure!(
                interval.is_finite() && interval >= 0.0,
                "--interval must be zero or more seconds"
            );
            let opts = nts_client::query::QueryOptions {
                server,
                nts: !no_nts,
                ca_files: ca,
                system_roots: !no_system_roots,
                timeout: Duration::from_secs_f64(timeout),
                samples,
                interval: Duration::from_secs_f64(interval),
                xleave,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(nts_client::query::query(&opts))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else if brief {
                out!("{}", report.brief());
            } else {
                out!("{report}");
            }
        }
        Command::Ke {
            server,
            ca,
            no_system_roots,
            timeout,
        } => {
            nts_ops::init_logging("warn");
            let (host, port) = nts_client::split_host_port(&server, DEFAULT_KE_PORT)
                .map_err(anyhow::Error::msg)?;
            let cas: Vec<&std::path::Path> = ca.iter().map(|p| p.as_path()).collect();
            let roots = ke::root_store(&cas, !no_system_roots)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let out = rt
                .block_on(ke::key_exchange(
                    &host,
                    port,
                    ke::tls_config(roots),
                    &AeadAlgorithm::ALL,
                    Duration::from_secs_f64(timeout),
                ))
                .with_context(|| format!("key exchange with {host}:{port}"))?;
            out!("server      {host}:{port}");
            out!("aead        {} ({})", out.aead, out.aead.id());
            out!(
                "ntp server  {}",
                nts_client::agent::host_port(&out.ntp_server, out.ntp_port)
            );
            out!(
                "cookies     {} ({} bytes each)",
                out.cookies.len(),
                out.cookies.first().map_or(0, |c| c.len())
            );
            if !out.warnings.is_empty() {
                out!("warnings    {:?}", out.warnings);
            }
        }
    }
    Ok(())
}
