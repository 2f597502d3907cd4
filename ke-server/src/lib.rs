//! `nts-ke-server`: the NTS-KE service (RFC 8915 section 4). TLS 1.3 only,
//! ALPN `ntske/1`, eight cookies per exchange, Server and Port Negotiation,
//! bounded resources, certificates hot-reloaded from disk.

pub mod acme;
pub mod certificate;
pub mod check;
pub mod config;
pub mod dev_pki;
pub mod key_set_status;
pub mod key_sync;
pub mod metrics;
pub mod proxy;
pub mod registration;
pub mod registry;
pub mod root_secret;
pub mod running;
pub mod server;
pub mod slots;
pub mod watchers;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use certificate::{ReloadOutcome, ReloadingCert};
use config::{Config, Settings};
use metrics::Metrics;
use nts_proto::health::{ke_server_readiness, KeServerSnapshot};
use nts_proto::ke_server::{NtpTarget, ALPN};
use nts_proto::key_agreement::RootFingerprint;
use nts_proto::key_ring::{KeyRing, KeySchedule, RootSecret};
pub use running::Running;
use server::{unix_now, KeService};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Port of the time server `--dev` points clients at.
pub const DEV_NTP_PORT: u16 = 4123;
/// Default NTS-KE address in `--dev` mode.
pub const DEV_LISTEN: &str = "127.0.0.1:4460";
/// Name of the cookie root secret inside a `--dev` state directory.
pub const DEV_ROOT_SECRET: &str = "cookie-root.key";
/// Key-sync (gRPC) address in `--dev` mode.
pub const DEV_KEY_SYNC: &str = "127.0.0.1:4461";

/// Configuration for `--dev`: development certificates and secrets in `state_dir`, loopback only.
pub fn dev_config(state_dir: &Path) -> Result<Config> {
    let (pki, generated) = dev_pki::DevPki::ensure(state_dir)?;
    if generated {
        tracing::info!(dir = %state_dir.display(), "generated development CA and certificate");
    }
    let text = format!(
        r#"
[server]
listen = ["{DEV_LISTEN}"]
[tls]
certificate_chain = {chain:?}
private_key = {key:?}
reload_interval = 2.0
[ntp]
server = "127.0.0.1"
port = {DEV_NTP_PORT}
[cookie_keys]
root_secret_file = {root:?}
create_if_missing = true
[key_sync]
listen = "{DEV_KEY_SYNC}"
advertise_networks = ["127.0.0.0/8", "::1/128"]
client_ca = {ca:?}
certificate_chain = {ks_chain:?}
private_key = {ks_key:?}
"#,
        chain = pki.server_cert,
        key = pki.server_key,
        root = state_dir.join(DEV_ROOT_SECRET),
        ca = pki.ca_cert,
        ks_chain = pki.keysync_cert,
        ks_key = pki.keysync_key,
    );
    Config::parse(&text, Path::new("--dev"))
}

fn tls_config(
    cert: Arc<dyn rustls::server::ResolvesServerCert>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    answer_tls_alpn_01: bool,
) -> Result<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 not available in the crypto provider")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // The server's preference decides: an NTS-KE client offering ntske/1 always gets it;
    // only a client offering acme-tls/1 alone (a TLS-ALPN-01 validation) gets acme-tls/1.
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    if answer_tls_alpn_01 {
        cfg.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
    }
    // No 0-RTT: replayable early data has no place in key exchange.
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// Keep the ring current: re-derive at every epoch boundary (and at least every minute),
/// and tell key-sync watchers.
async fn maintain_ring(
    root: RootSecret,
    schedule: KeySchedule,
    ring: Arc<ArcSwap<KeyRing>>,
    watchers: tokio::sync::watch::Sender<Arc<KeyRing>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let now = unix_now();
        let fresh = KeyRing::derive(&root, &schedule, now);
        if let Some(k) = fresh.current(now) {
            metrics.current_key_id.set(k.id.0 as i64);
        }
        if **ring.load() != fresh {
            tracing::info!(
                current = ?fresh.current(now).map(|k| k.id.to_string()),
                keys = fresh.keys().len(),
                "cookie key ring updated"
            );
            let fresh = Arc::new(fresh);
            ring.store(fresh.clone());
            watchers.send_replace(fresh);
        }
        let next = schedule.epoch_start(now) + schedule.rotation_period;
        let wait = (next - now).clamp(1, 60);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

async fn watch_certificate(cert: Arc<ReloadingCert>, every: Duration, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = cert.clone();
        let outcome = tokio::task::spawn_blocking(move || c.reload())
            .await
            .unwrap_or(ReloadOutcome::Unchanged);
        match outcome {
            ReloadOutcome::Unchanged | ReloadOutcome::StillRejected => {}
            ReloadOutcome::Replaced => {
                metrics.cert_reloads_ok.inc();
                tracing::info!("certificate reloaded from disk; new handshakes use it");
            }
            ReloadOutcome::Rejected(why) => {
                metrics.cert_reloads_failed.inc();
                tracing::warn!(
                    "new certificate files not loaded, keeping the current certificate: {why}"
                );
            }
        }
    }
}

struct Health {
    metrics: Arc<Metrics>,
    /// Set by SIGTERM ([`Running::drain`]).
    draining: Arc<std::sync::atomic::AtomicBool>,
    ring: Arc<ArcSwap<KeyRing>>,
    /// Fingerprint of the root secret, for `nts_ke_root_secret_info`.
    fingerprint: RootFingerprint,
    /// With key sync: whether the time servers refuse this replica's key set.
    key_set: Option<Arc<key_set_status::KeySetStatus>>,
    registry: Option<Arc<registry::Registry>>,
    /// `ntp.server` is set: with key sync, the explicit fallback.
    has_fallback: bool,
    /// Certificates served from files: `[tls]` and `[key_sync]`.
    file_certs: Vec<(&'static str, Arc<ReloadingCert>)>,
    acme: Option<Arc<acme::AcmeManager>>,
}

impl nts_ops::http::Observable for Health {
    fn render_metrics(&self) -> String {
        let mut out = self.metrics.render();
        {
            // Not-after of every certificate served, whatever its source.
            let mut certs: Vec<(&str, f64)> = self
                .file_certs
                .iter()
                .filter_map(|(name, c)| {
                    certificate::leaf_not_after(&c.current()).map(|t| (*name, t as f64))
                })
                .collect();
            if let Some(a) = &self.acme {
                if let Some(t) = a
                    .resolver()
                    .certificate()
                    .and_then(|c| certificate::leaf_not_after(&c))
                {
                    certs.push(("acme", t as f64));
                }
            }
            let mut e = nts_ops::metrics::Exposition::new();
            e.gauges_by(
                "nts_ke_certificate_expiry_seconds",
                "Not-after of each certificate in service (tls, key_sync, acme), Unix seconds.",
                "certificate",
                certs.iter().copied(),
            );
            out.push_str(&e.finish());
        }
        {
            let mut e = nts_ops::metrics::Exposition::new();
            let fp = self.fingerprint.to_string();
            e.gauges(
                "nts_ke_root_secret_info",
                "1, labelled with the fingerprint of the cookie root secret (a one-way value): equal on replicas that share it.",
                &[(&[("fingerprint", fp.as_str())], 1.0)],
            );
            if let Some(k) = &self.key_set {
                e.gauge(
                    "nts_ke_key_set_refused",
                    "Live time servers that refuse this replica's key set (they serve keys of another root secret).",
                    k.refusing(std::time::Instant::now()),
                );
            }
            out.push_str(&e.finish());
        }
        if let Some(r) = &self.registry {
            let view = r.view(std::time::Instant::now());
            let mut e = nts_ops::metrics::Exposition::new();
            let alive = view.iter().filter(|v| v.alive).count();
            e.gauges(
                "nts_ke_registered_time_servers",
                "Time servers in the registry, by state.",
                &[
                    (&[("state", "alive")], alive as f64),
                    (&[("state", "dead")], (view.len() - alive) as f64),
                ],
            );
            let labels: Vec<[(&str, &str); 2]> = view
                .iter()
                .map(|v| {
                    [
                        ("server_id", v.server_id.as_str()),
                        ("address", v.address.as_str()),
                    ]
                })
                .collect();
            let samples: Vec<(&[(&str, &str)], f64)> = labels
                .iter()
                .zip(&view)
                .map(|(l, v)| (&l[..], v.requests_per_second))
                .collect();
            e.gauges(
                "nts_ke_time_server_requests_per_second",
                "Load each registered time server last reported.",
                &samples,
            );
            out.push_str(&e.finish());
        }
        out
    }

    fn readiness(&self) -> Result<(), String> {
        ke_server_readiness(&self.snapshot()).map_err(|e| e.to_string())
    }
}

impl Health {
    /// What readiness depends on, read from the state itself.
    fn snapshot(&self) -> KeServerSnapshot {
        let now = std::time::Instant::now();
        KeServerSnapshot {
            draining: self.draining.load(std::sync::atomic::Ordering::Relaxed),
            key_set_refused: self
                .key_set
                .as_ref()
                .and_then(|k| k.standing(now).not_ready_reason()),
            no_live_time_server: self.registry.as_ref().is_some_and(|r| !r.has_live(now)),
            has_fallback: self.has_fallback,
            awaiting_certificate: self.acme.as_ref().is_some_and(|a| !a.has_certificate()),
            has_current_key: self.ring.load().current(unix_now()).is_some(),
        }
    }
}

/// The files that must stay readable after the privilege drop (reloaded when
/// renewed): the TLS and key-sync certificate chains and keys. Everything else
/// (root secret, client CA, ACME roots) is read once before the drop.
pub fn reloadable_files(cfg: &Config) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Some(t) = &cfg.tls {
        v.push(t.certificate_chain.clone());
        v.push(t.private_key.clone());
    }
    if let Some(k) = &cfg.key_sync {
        v.push(k.certificate_chain.clone());
        v.push(k.private_key.clone());
    }
    v
}

/// How files are read: through a privileged helper when the daemon will switch
/// users (so renewed root-only certificates still load), directly otherwise.
/// Call before any thread is started.
pub fn file_reader(cfg: &Config) -> Result<Arc<nts_ops::file_reader::FileReader>> {
    use nts_ops::file_reader::FileReader;
    let reader = if cfg.server.user.is_some() {
        FileReader::with_helper(reloadable_files(cfg), cfg.server.seccomp)
            .context("starting the file-reading helper")?
    } else {
        FileReader::direct()
    };
    Ok(Arc::new(reader))
}

/// Bind everything, drop privileges, and spawn the service tasks on the current runtime.
pub async fn start(settings: Settings) -> Result<Running> {
    start_with(
        settings,
        Arc::new(nts_ops::file_reader::FileReader::direct()),
    )
    .await
}

/// [`start`] reading certificate files through `reader` (see [`file_reader`]).
pub async fn start_with(
    settings: Settings,
    reader: Arc<nts_ops::file_reader::FileReader>,
) -> Result<Running> {
    let problems = check::problems(&settings);
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    let (what, needed) = check::open_files_needed(&settings);
    if let nts_ops::open_files::OpenFiles::Raised { from, to } =
        nts_ops::open_files::ensure(what, needed)?
    {
        tracing::info!(
            from,
            to,
            "raised the open-file limit (RLIMIT_NOFILE) for {what}"
        );
    }
    let settings = Arc::new(settings);
    let cfg = &settings.config;
    let provider = nts_ops::tls_provider::provider();
    let metrics = Arc::new(Metrics::default());
    // The certificate: files on disk ([tls]) or ACME ([acme]); validate() made sure of one.
    let (file_cert, acme) = match (&cfg.tls, &settings.acme) {
        (Some(tls), _) => (
            Some(Arc::new(ReloadingCert::load_with(
                reader.clone(),
                &tls.certificate_chain,
                &tls.private_key,
                provider.clone(),
            )?)),
            None,
        ),
        (None, Some(a)) => (
            None,
            Some(acme::AcmeManager::new(
                a.clone(),
                metrics.clone(),
                provider.clone(),
            )?),
        ),
        (None, None) => anyhow::bail!("no [tls] or [acme] section"),
    };
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match (&file_cert, &acme) {
        (Some(c), _) => c.clone(),
        (None, Some(a)) => a.resolver(),
        (None, None) => anyhow::bail!("no certificate source"),
    };
    let answer_tls_alpn = settings
        .acme
        .as_ref()
        .is_some_and(|a| a.ke_answers_tls_alpn);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(
        resolver,
        provider.clone(),
        answer_tls_alpn,
    )?));

    let (root, created) = root_secret::load(
        &cfg.cookie_keys.root_secret_file,
        cfg.cookie_keys.create_if_missing,
    )?;
    if created {
        tracing::warn!(
            file = %cfg.cookie_keys.root_secret_file.display(),
            "created a new cookie root secret; every replica behind the same name needs a copy of this file"
        );
    }
    let fingerprint = RootFingerprint::of(&root);
    // Not secret: replicas and time servers holding the same root secret show the same value.
    tracing::info!(
        %fingerprint,
        file = %cfg.cookie_keys.root_secret_file.display(),
        "cookie root secret loaded, fingerprint {fingerprint}"
    );
    let key_set = cfg.key_sync.as_ref().map(|_| {
        Arc::new(key_set_status::KeySetStatus::new(
            fingerprint,
            settings.expiry,
        ))
    });
    let initial = Arc::new(KeyRing::derive(&root, &settings.schedule, unix_now()));
    let ring = Arc::new(ArcSwap::new(initial.clone()));
    let (ring_tx, ring_rx) = tokio::sync::watch::channel(initial);

    let mut listeners = Vec::new();
    for addr in &cfg.server.listen {
        let l = nts_ops::net::bind_tokio(*addr)
            .with_context(|| format!("server.listen: cannot bind {addr}"))?;
        listeners.push(l);
    }
    let key_sync_listener = match &cfg.key_sync {
        Some(k) => Some(
            nts_ops::net::bind_tokio(k.listen)
                .with_context(|| format!("key_sync.listen: cannot bind {}", k.listen))?,
        ),
        None => None,
    };
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => Some(
            nts_ops::net::bind_tokio(addr)
                .with_context(|| format!("metrics.listen: cannot bind {addr}"))?,
        ),
        None => None,
    };
    let acme_tls_alpn_listener = match settings.acme.as_ref().and_then(|a| a.challenge_listener) {
        Some(addr) => Some(
            nts_ops::net::bind_tokio(addr)
                .with_context(|| format!("acme.challenge_listen: cannot bind {addr}"))?,
        ),
        None => None,
    };
    let acme_http_listener = match settings.acme.as_ref().and_then(|a| a.http_listener) {
        Some(addr) => Some(
            nts_ops::net::bind_tokio(addr)
                .with_context(|| format!("acme.http_listen: cannot bind {addr}"))?,
        ),
        None => None,
    };
    // Key-sync certificate and client CA: read before the drop (the certificate is
    // re-read through `reader` when renewed).
    let key_sync_tls = match &cfg.key_sync {
        Some(k) => {
            let provider = nts_ops::tls_provider::provider();
            let ks_cert = Arc::new(
                ReloadingCert::load_with(
                    reader.clone(),
                    &k.certificate_chain,
                    &k.private_key,
                    provider.clone(),
                )
                .context("key_sync.certificate_chain / key_sync.private_key")?,
            );
            let tls = key_sync::mtls_config(ks_cert.clone(), &k.client_ca, provider)?;
            Some((ks_cert, tls))
        }
        None => None,
    };
    nts_ops::privileges::drop_to(cfg.server.user.as_deref(), cfg.server.group.as_deref())
        .context("server.user/server.group: cannot drop privileges")?;
    if let Some(a) = &acme {
        a.check_cache_writable()?;
    }

    let target = NtpTarget {
        server: cfg.ntp.server.clone(),
        port: cfg.ntp.port,
    };
    let registry = cfg.key_sync.as_ref().map(|k| {
        Arc::new(registry::Registry::new(
            settings.expiry,
            k.selection,
            k.max_registrations_per_certificate,
        ))
    });
    let mut file_certs: Vec<(&'static str, Arc<ReloadingCert>)> = Vec::new();
    if let Some(c) = &file_cert {
        file_certs.push(("tls", c.clone()));
    }
    if let Some((c, _)) = &key_sync_tls {
        file_certs.push(("key_sync", c.clone()));
    }
    if let (Some(k), Some(listener), Some((ks_cert, tls))) =
        (&cfg.key_sync, key_sync_listener, key_sync_tls)
    {
        let service = key_sync::KeySyncService {
            ring: ring_rx,
            schedule: settings.schedule,
            registry: registry.clone().context("registry exists with key_sync")?,
            metrics: metrics.clone(),
            report_interval: settings.report_interval,
            expiry: settings.expiry,
            policy: settings.registration_policy.clone(),
            // One watch per KE replica, and one more while a reconnect overlaps.
            watchers: watchers::Watchers::new(2),
            key_set: key_set
                .clone()
                .context("key-set status exists with key_sync")?,
        };
        if settings.registration_policy.allows_any_address() {
            tracing::warn!("key_sync.advertise_networks and advertise_domains are empty: a time-server certificate may advertise any address to clients (besides its own names); set them to the networks and domains your time servers live on");
        }
        tracing::info!(addr = %listener.local_addr()?, "key sync (gRPC, mutual TLS) listening");
        let guard = key_sync::Guard {
            slots: settings.key_sync_slots,
            handshake_timeout: settings.key_sync_handshake_timeout,
            allowed: k.allowed_networks.clone(),
            max_streams: k.max_streams_per_connection,
        };
        tokio::spawn(key_sync::serve(listener, tls, service, guard));
        tokio::spawn(watch_certificate(
            ks_cert,
            settings.reload_interval,
            metrics.clone(),
        ));
    }
    let svc = Arc::new(KeService::new(
        acceptor,
        settings.clone(),
        ring.clone(),
        metrics.clone(),
        target,
        registry.clone(),
    ));
    let ke_addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect::<Vec<_>>();
    let listener_tasks = listeners
        .into_iter()
        .map(|l| tokio::spawn(svc.clone().serve(l)))
        .collect();
    tokio::spawn(maintain_ring(
        root,
        settings.schedule,
        ring.clone(),
        ring_tx,
        metrics.clone(),
    ));
    if let Some(cert) = file_cert {
        tokio::spawn(watch_certificate(
            cert,
            settings.reload_interval,
            metrics.clone(),
        ));
    }
    if let Some(a) = &acme {
        if let Some(l) = acme_tls_alpn_listener {
            tracing::info!(addr = %l.local_addr()?, "ACME: TLS-ALPN-01 challenge listener");
            tokio::spawn(acme::serve_tls_alpn(l, a.resolver(), provider.clone()));
        }
        if let Some(l) = acme_http_listener {
            tracing::info!(addr = %l.local_addr()?, "ACME: HTTP-01 challenge listener");
            tokio::spawn(acme::serve_http01(l, a.resolver()));
        }
        if a.challenge() == config::ChallengeType::TlsAlpn01 {
            tokio::spawn(acme::watch_shared_challenges(a.resolver()));
        }
        tokio::spawn(a.clone().run());
    }
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(l) = metrics_listener {
        let health = Arc::new(Health {
            metrics: metrics.clone(),
            draining: draining.clone(),
            ring,
            fingerprint,
            key_set,
            registry,
            has_fallback: cfg.ntp.server.is_some(),
            file_certs,
            acme,
        });
        tokio::spawn(nts_ops::http::serve(l, health));
    }
    Ok(Running {
        ke_addrs,
        metrics_addr,
        metrics,
        draining,
        listeners: listener_tasks,
        drain_delay: settings.drain_delay,
        in_flight_limit: settings.handshake_timeout + settings.request_timeout,
    })
}
