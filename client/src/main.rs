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

fn main() -> Result<()> {
    let cli = Cli::parse();
    nts_ops::init_logging("warn");
    match cli.command {
        Command::Query {
            server,
            ca,
            no_system_roots,
            no_nts,
            json,
            brief,
            timeout,
        } => {
            let opts = nts_client::query::QueryOptions {
                server,
                nts: !no_nts,
                ca_files: ca,
                system_roots: !no_system_roots,
                timeout: Duration::from_secs_f64(timeout),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(nts_client::query::query(&opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if brief {
                println!("{}", report.brief());
            } else {
                println!("{report}");
            }
        }
        Command::Ke {
            server,
            ca,
            no_system_roots,
            timeout,
        } => {
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
            println!("server      {host}:{port}");
            println!("aead        {} ({})", out.aead, out.aead.id());
            println!("ntp server  {}:{}", out.ntp_server, out.ntp_port);
            println!(
                "cookies     {} ({} bytes each)",
                out.cookies.len(),
                out.cookies.first().map_or(0, |c| c.len())
            );
            if !out.warnings.is_empty() {
                println!("warnings    {:?}", out.warnings);
            }
        }
    }
    Ok(())
}
