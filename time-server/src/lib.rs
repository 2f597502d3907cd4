//! `nts-time-server`: NTPv4 server mode and NTS (RFC 8915 section 5) on UDP,
//! one worker thread and `SO_REUSEPORT` socket per core and listen address,
//! kernel or NIC receive timestamps, per-address rate limiting.

pub mod check;
pub mod clock_state;
pub mod coalesce;
pub mod config;
pub mod key_merge;
pub mod key_sync_client;
pub mod keys;
pub mod metrics;
pub mod steering;
pub mod timestamping;
pub mod tx_timestamps;
pub mod worker;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use config::{Config, Settings, TimestampingMode};
use keys::{unix_now, KeyStore};
use metrics::Metrics;
use nts_proto::health::{time_server_readiness, TimeServerSnapshot};
use nts_proto::ntp_server::ServerPolicy;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use timestamping::{PhcConversion, TimestampSource};
use worker::{RateSettings, Shared, WorkerSettings};

/// Default UDP address in `--dev` mode (the port `nts-ke-server --dev` sends clients to).
pub const DEV_LISTEN: &str = "127.0.0.1:4123";

/// Key-sync address of `nts-ke-server --dev`.
pub const DEV_KEY_SYNC: &str = "127.0.0.1:4461";

/// Configuration for `--dev`: loopback, local reference clock, keys over gRPC
/// from the `nts-ke-server --dev` that uses the same state directory (its
/// development CA issued this server's client certificate).
pub fn dev_config(state_dir: &Path) -> Result<Config> {
    let text = format!(
        r#"
[server]
listen = ["{DEV_LISTEN}"]
[clock]
local_reference = true
stratum = 1
reference_id = "LOCL"
[key_sync]
endpoints = ["{DEV_KEY_SYNC}"]
ca = {ca:?}
certificate_chain = {cert:?}
private_key = {key:?}
# The development client certificate names "time-server": the registry binds the id to it.
server_id = "time-server:{port}"
"#,
        port = DEV_LISTEN.rsplit_once(':').map_or("4123", |(_, p)| p),
        ca = state_dir.join("ca.pem"),
        cert = state_dir.join("time-server-cert.pem"),
        key = state_dir.join("time-server-key.pem"),
    );
    Config::parse(&text, Path::new("--dev"))
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "time-server".into())
}

fn bind_socket(addr: SocketAddr, receive_buffer: usize) -> Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if receive_buffer > 0 {
        // SO_RCVBUFFORCE (root/CAP_NET_ADMIN, before privileges are dropped) passes the
        // net.core.rmem_max cap; otherwise the kernel silently caps SO_RCVBUF.
        let forced = nts_ops::socket_timestamps::setsockopt_u32(
            &sock,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            receive_buffer.min(i32::MAX as usize) as u32,
        );
        if forced.is_err() {
            let _ = sock.set_recv_buffer_size(receive_buffer);
        }
        // The kernel reports twice what it keeps for payload.
        let got = sock.recv_buffer_size().unwrap_or(0) / 2;
        if got < receive_buffer {
            tracing::warn!(
                requested = receive_buffer,
                obtained = got,
                "server.receive_buffer capped by the kernel (raise net.core.rmem_max or run with CAP_NET_ADMIN)"
            );
        }
    }
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    sock.bind(&addr.into())
        .with_context(|| format!("server.listen: cannot bind UDP {addr}"))?;
    Ok(sock)
}

/// A started server.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub metrics_listener: Option<std::net::TcpListener>,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<Shared>,
    pub keys: Arc<KeyStore>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

/// The files read after the privilege drop (through the helper): the key-sync
/// CA, certificate and key (read again at every reconnection), and the root
/// secret file of `[keys]` (read every epoch).
pub fn reloadable_files(cfg: &Config) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Some(k) = &cfg.key_sync {
        v.extend([
            k.ca.clone(),
            k.certificate_chain.clone(),
            k.private_key.clone(),
        ]);
    }
    if let Some(k) = &cfg.keys {
        v.push(k.root_secret_file.clone());
    }
    v
}

/// Bind, drop privileges, and start the worker and housekeeping threads.
/// Call before any other thread is started (it may fork the file-reading helper).
pub fn start(settings: Settings) -> Result<Running> {
    let cfg = &settings.config;
    let workers = settings.workers;
    let problems = check::problems(&settings);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    // With a user switch, files read later go through a helper that keeps the
    // start-up identity (see nts_ops::file_reader).
    let reader = Arc::new(if cfg.server.user.is_some() {
        nts_ops::file_reader::FileReader::with_helper(reloadable_files(cfg), cfg.server.seccomp)
            .context("starting the file-reading helper")?
    } else {
        nts_ops::file_reader::FileReader::direct()
    });

    // Bind every socket first (port 123 may need root), resolving port 0 once so all
    // workers of an address share the port.
    let mut sockets = Vec::new();
    let mut addrs = Vec::new();
    // Rate limiting and interleaved mode keep per-client state in a worker:
    // all of an address's datagrams must reach that worker.
    let steer = steering::needed(
        workers,
        cfg.rate_limit.enabled,
        cfg.server.interleaved_slots > 0,
    );
    let key = steering::SteeringKey::from_random(&mut |b| {
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, b)
    });
    for &addr in &cfg.server.listen {
        let first = bind_socket(addr, cfg.server.receive_buffer)?;
        let bound = first
            .local_addr()?
            .as_socket()
            .context("bound socket has no address")?;
        addrs.push(bound);
        let group = sockets.len();
        sockets.push((bound, first));
        for _ in 1..workers {
            sockets.push((bound, bind_socket(bound, cfg.server.receive_buffer)?));
        }
        if steer {
            // The group's sockets are numbered in bind order, which is worker order.
            let program = steering::program(bound.is_ipv6(), &key, workers as u32);
            steering::attach(&sockets[group].1, &program).with_context(|| {
                format!(
                    "cannot attach the reuseport BPF program that steers each client address to \
                     one worker on {bound} (needs Linux 4.6+); without it a client changing \
                     source ports is rate-limited once per worker and loses interleaved mode. \
                     Set server.workers = 1, or both rate_limit.enabled = false and \
                     server.interleaved_slots = 0"
                )
            })?;
        }
    }

    // Timestamping: detect at start, fall back with a clear word.
    let mut phc_file = None;
    let mut hardware_tx = false;
    let source = match cfg.timestamping.mode {
        TimestampingMode::None => TimestampSource::User,
        TimestampingMode::Software => TimestampSource::Software,
        TimestampingMode::Hardware | TimestampingMode::Auto => match &cfg.timestamping.interface {
            None => TimestampSource::Software,
            Some(iface) => match timestamping::enable_hardware(&sockets[0].1, iface)
                .and_then(|hw| timestamping::open_phc(hw.phc_index).map(|f| (hw, f)))
            {
                Ok((hw, f)) => {
                    tracing::info!(interface = %iface, phc = hw.phc_index, "hardware receive timestamps enabled");
                    if hw.transmit {
                        tracing::info!(interface = %iface, "hardware transmit timestamps enabled (interleaved mode)");
                    } else {
                        tracing::warn!(interface = %iface, "the NIC cannot timestamp transmitted packets: interleaved responses carry kernel software transmit timestamps");
                    }
                    hardware_tx = hw.transmit;
                    phc_file = Some(f);
                    TimestampSource::Hardware
                }
                Err(e) if cfg.timestamping.mode == TimestampingMode::Hardware => {
                    bail!("timestamping.mode = \"hardware\": interface {iface} cannot timestamp in hardware: {e}")
                }
                Err(e) => {
                    tracing::warn!(interface = %iface, "no hardware timestamping ({e}); using kernel software timestamps");
                    TimestampSource::Software
                }
            },
        },
    };
    for (addr, s) in &sockets {
        // Wildcard binds need each datagram's destination to answer from the same address.
        let pktinfo = addr.ip().is_unspecified().then_some(addr.is_ipv6());
        if source != TimestampSource::User {
            timestamping::enable(s, source == TimestampSource::Hardware, pktinfo)
                .with_context(|| format!("enabling SO_TIMESTAMPING on {addr}"))?;
        } else if let Some(v6) = pktinfo {
            let (level, name) = if v6 {
                (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
            } else {
                (libc::IPPROTO_IP, libc::IP_PKTINFO)
            };
            nts_ops::socket_timestamps::setsockopt_u32(s, level, name, 1)
                .with_context(|| format!("enabling packet info on {addr}"))?;
        }
    }
    tracing::info!(source = source.label(), "receive timestamps");
    let interleaved_slots = if source == TimestampSource::User {
        if cfg.server.interleaved_slots > 0 {
            tracing::warn!("timestamping.mode = \"none\": no kernel transmit timestamps, so interleaved mode is off");
        }
        0
    } else {
        if cfg.server.interleaved_slots > 0
            && std::fs::read_to_string("/proc/sys/net/core/tstamp_allow_data")
                .is_ok_and(|v| v.trim() == "0")
        {
            tracing::warn!("net.core.tstamp_allow_data = 0: the kernel returns transmit timestamps without the packet, so interleaved responses cannot be matched and clients get basic mode");
        }
        cfg.server.interleaved_slots
    };

    let metrics_listener = match cfg.metrics.listen {
        Some(a) => Some(
            nts_ops::net::bind_tcp(a)
                .with_context(|| format!("metrics.listen: cannot bind {a}"))?,
        ),
        None => None,
    };
    nts_ops::privileges::drop_to(cfg.server.user.as_deref(), cfg.server.group.as_deref())
        .context("server.user/server.group: cannot drop privileges")?;
    // Sockets are bound and timestamping is set up: no capability is needed any
    // more (reading the clock state needs none). Before any thread starts.
    nts_ops::sandbox::narrow_capabilities(&[])?;

    let endpoints = cfg
        .key_sync
        .as_ref()
        .map(|k| k.endpoints.clone())
        .unwrap_or_default();
    let metrics = Arc::new(Metrics::new(sockets.len(), &endpoints));
    metrics.steering.store(steer, Ordering::Relaxed);
    metrics.timestamp_source.store(
        match source {
            TimestampSource::User => 0,
            TimestampSource::Software => 1,
            TimestampSource::Hardware => 2,
        },
        Ordering::Relaxed,
    );
    let precision = clock_state::measure_precision();
    let keys = Arc::new(KeyStore::default());
    let shared = Arc::new(Shared {
        keys: keys.clone(),
        clock: ArcSwap::from_pointee(nts_proto::ntp_server::ServerClock::unsynchronized(
            precision,
        )),
        policy: ServerPolicy {
            serve_unauthenticated: cfg.server.serve_unauthenticated,
            max_extension_fields: cfg.server.max_extension_fields,
        },
        source,
        phc: ArcSwap::from_pointee(PhcConversion::default()),
        stop: Default::default(),
        serving: Default::default(),
    });

    let mut threads = Vec::new();
    match (&cfg.keys, &cfg.key_sync) {
        (Some(k), _) => {
            let (path, schedule, keys, reader) = (
                k.root_secret_file.clone(),
                settings.schedule,
                keys.clone(),
                reader.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("keys".into())
                    .spawn(move || keys::run_file_source(path, schedule, keys, reader))?,
            );
        }
        (None, Some(ks)) => {
            let advertise = ks.advertise.clone().unwrap_or_else(|| addrs[0].to_string());
            let (host, port) = config::split_host_port(&advertise)
                .context("key_sync.advertise: must be host:port")?;
            let info = nts_proto::key_sync::pb::TimeServerInfo {
                server_id: ks
                    .server_id
                    .clone()
                    .unwrap_or_else(|| format!("{}:{port}", host_name())),
                ntp_host: host,
                ntp_port: port as u32,
                workers: workers as u32,
                timestamping: source.label().to_string(),
                alternates: ks
                    .advertise_also
                    .iter()
                    .filter_map(|a| config::split_host_port(a))
                    .map(|(host, port)| nts_proto::key_sync::pb::NtpEndpoint {
                        host,
                        port: port as u32,
                    })
                    .collect(),
            };
            let client = key_sync_client::KeySyncClientSettings {
                endpoints: ks.endpoints.clone(),
                ca: ks.ca.clone(),
                certificate_chain: ks.certificate_chain.clone(),
                private_key: ks.private_key.clone(),
                server_name: ks.server_name.clone(),
                info,
                max_backoff: Duration::from_secs_f64(ks.max_backoff),
                reader: reader.clone(),
            };
            threads.push(key_sync_client::spawn(
                client,
                keys.clone(),
                shared.serving.clone(),
                metrics.clone(),
            )?);
        }
        (None, None) => bail!("[keys] or [key_sync]: a source of cookie keys is required"),
    }
    {
        let shared = shared.clone();
        let metrics = metrics.clone();
        let mut clock = ClockRefresh {
            source: clock_state::ClockStateSource::from_env(),
            cfg: cfg.clock.clone(),
            reference_id: settings.reference_id,
            precision,
            last_error: None,
        };
        if let clock_state::ClockStateSource::TestFile(p) = &clock.source {
            tracing::warn!(file = %p.display(), "TEST HOOK: clock state read from a file, not the kernel ({})", clock_state::TEST_CLOCK_STATE_ENV);
        }
        clock.refresh(&shared, &metrics);
        let every = Duration::from_secs_f64(cfg.clock.refresh_interval);
        threads.push(
            std::thread::Builder::new()
                .name("clock-state".into())
                .spawn(move || loop {
                    clock.refresh(&shared, &metrics);
                    std::thread::sleep(every);
                })?,
        );
    }
    if let Some(f) = phc_file {
        let shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("phc".into())
                .spawn(move || loop {
                    match timestamping::sample_phc(&f) {
                        Ok(c) => shared.phc.store(Arc::new(c)),
                        Err(e) => tracing::warn!("PHC sample failed: {e}"),
                    }
                    std::thread::sleep(Duration::from_secs(1));
                })?,
        );
    }

    let rate = cfg.rate_limit.enabled.then_some(RateSettings {
        rate: cfg.rate_limit.rate,
        burst: cfg.rate_limit.burst,
        kiss_interval_ms: (cfg.rate_limit.kiss_interval * 1000.0) as u64,
        slots: cfg.rate_limit.slots,
    });
    let batch = cfg.server.batch_size;
    let max_request_age_ns = (cfg.server.max_request_age * 1e9) as u64;
    for (i, (addr, sock)) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let metrics = metrics.clone();
        let settings = WorkerSettings {
            batch,
            use_pktinfo: addr.ip().is_unspecified(),
            rate,
            max_request_age_ns,
            interleaved_slots,
            hardware_tx,
            batch_wait_ns: (cfg.server.batch_wait * 1e9) as u64,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("ntp-{i}"))
                .spawn(move || worker::run(sock, shared, &metrics.workers[i], settings))?,
        );
    }
    Ok(Running {
        addrs,
        metrics_listener,
        metrics,
        shared,
        keys,
        threads,
    })
}

/// Reads the clock state and publishes what responses announce, the metrics and health.
struct ClockRefresh {
    source: clock_state::ClockStateSource,
    cfg: config::ClockSection,
    reference_id: [u8; 4],
    precision: i8,
    last_error: Option<String>,
}

impl ClockRefresh {
    fn refresh(&mut self, shared: &Shared, metrics: &Metrics) {
        let kernel = match self.source.read() {
            Ok(k) => {
                self.last_error = None;
                Some(k)
            }
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_deref() != Some(&e) {
                    tracing::warn!(
                        "clock state read failed ({e}); announcing an unsynchronized clock"
                    );
                    self.last_error = Some(e);
                }
                None
            }
        };
        let c = clock_state::server_clock(
            kernel.as_ref(),
            &self.cfg,
            self.reference_id,
            self.precision,
            clock_state::now_ntp(),
        );
        let synced = c.leap != nts_proto::ntp_packet::LeapIndicator::Unsynchronized;
        if synced != shared.serving.synchronized.swap(synced, Ordering::Relaxed) {
            if synced {
                tracing::info!("clock synchronized: serving time and reporting healthy");
            } else {
                tracing::warn!("clock not synchronized: announcing leap indicator 3 and reporting unhealthy to the ke-servers");
            }
        }
        metrics.synchronized.store(synced as i64, Ordering::Relaxed);
        metrics.stratum.store(c.stratum as i64, Ordering::Relaxed);
        metrics.leap.store(c.leap as i64, Ordering::Relaxed);
        shared.clock.store(Arc::new(c));
        let now = unix_now();
        let ring = shared.keys.load();
        metrics.keys_held.store(
            ring.keys().iter().filter(|k| now < k.not_after).count() as i64,
            Ordering::Relaxed,
        );
        metrics.key_age_seconds.store(
            shared.keys.age(now).map_or(-1, |a| a as i64),
            Ordering::Relaxed,
        );
        metrics.healthy.store(
            health(&shared.serving, &shared.keys).is_ok() as i64,
            Ordering::Relaxed,
        );
    }
}

/// What readiness is decided from besides the keys: set by the clock refresh
/// and by SIGTERM, never read back from the metrics.
#[derive(Debug, Default)]
pub struct ServingState {
    /// SIGTERM received: still answering, reported unhealthy.
    pub draining: AtomicBool,
    /// Responses claim a synchronized clock (or the local reference).
    pub synchronized: AtomicBool,
}

/// Healthy ([`time_server_readiness`]): not draining, the clock synchronized
/// (or this host the configured local reference) and cookie keys held. This
/// is what the server reports to the ke-servers (which send clients only to
/// healthy servers) and on `/readyz`.
pub fn health(state: &ServingState, keys: &KeyStore) -> Result<(), String> {
    let snapshot = TimeServerSnapshot {
        draining: state.draining.load(Ordering::Relaxed),
        synchronized: state.synchronized.load(Ordering::Relaxed),
        has_keys: keys.has_keys(unix_now()),
    };
    time_server_readiness(&snapshot).map_err(|e| e.to_string())
}

/// What the operations endpoint reports.
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub serving: Arc<ServingState>,
    pub keys: Arc<KeyStore>,
}

impl nts_ops::http::Observable for Health {
    fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn readiness(&self) -> Result<(), String> {
        health(&self.serving, &self.keys)
    }
}
