//! Operational plumbing shared by the NTS daemons: the Prometheus and health
//! HTTP endpoint, logging set-up and dropping privileges after binding.

pub mod atomic_file;
pub mod batch_socket;
pub mod config;
pub mod file_reader;
pub mod http;
pub mod metrics;
pub mod net;
pub mod open_files;
pub mod privileges;
pub mod sandbox;
pub mod socket_timestamps;
pub mod tls_provider;
pub mod trust_store;

/// Start logging through `tracing`. `RUST_LOG` wins over `level` when set.
pub fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
