//! Getting cookie keys from the key master(s) over gRPC with mutual TLS.
//!
//! One task per ke-server endpoint: connect, register, watch the key set,
//! report load. Every endpoint's latest set is kept; the ring in service is
//! the union of the sets that agree (replicas derive identical keys, so this
//! only matters while one is unreachable or misconfigured), minus keys whose
//! window has ended. Sets from another root secret are refused, never mixed
//! (`nts_proto::key_agreement::choose`), and each ke-server is told in its
//! reports whether its set is refused. When
//! links are down the server keeps serving with what it has, pruning keys as
//! they expire, and reconnects with exponential backoff and jitter.

use crate::key_merge::Merger;
use crate::keys::{unix_now, KeyStore};
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use nts_ops::file_reader::FileReader;
use nts_proto::key_sync::pb::key_sync_client::KeySyncClient;
use nts_proto::key_sync::pb::{LoadReport, RegisterRequest, TimeServerInfo, WatchKeysRequest};
use nts_proto::key_sync::{keys_from_set, set_fingerprint};
use nts_proto::key_sync_report::{ReportSchedule, Standing};
use nts_proto::time::MonoTime;
use rand::Rng;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What the client needs to know.
#[derive(Debug, Clone)]
pub struct KeySyncClientSettings {
    /// `host:port` of each ke-server's key-sync service.
    pub endpoints: Vec<String>,
    pub ca: PathBuf,
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
    /// Name to verify in the ke-servers' certificates (default: each endpoint's host).
    pub server_name: Option<String>,
    pub info: TimeServerInfo,
    pub max_backoff: Duration,
    /// Reads the CA, certificate and key (through the privileged helper after a
    /// user switch); they are read again at every reconnection, so a renewed
    /// client certificate is used without a restart.
    pub reader: Arc<FileReader>,
}

pub fn client_tls(s: &KeySyncClientSettings) -> Result<Arc<rustls::ClientConfig>> {
    let read = |what: &str, p: &std::path::Path| {
        s.reader
            .read(p)
            .with_context(|| format!("{what} {}: cannot read", p.display()))
    };
    let ca_pem = read("key_sync.ca", &s.ca)?;
    let chain_pem = read("key_sync.certificate_chain", &s.certificate_chain)?;
    let key_pem = read("key_sync.private_key", &s.private_key)?;
    let roots = nts_ops::trust_store::from_pem(&s.ca, &ca_pem).context("key_sync.ca")?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "key_sync.certificate_chain {}: not PEM",
                s.certificate_chain.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "key_sync.certificate_chain {}: no certificate",
            s.certificate_chain.display()
        );
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("key_sync.private_key {}", s.private_key.display()))?;
    let provider = nts_ops::tls_provider::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("key_sync.certificate_chain / key_sync.private_key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Start the key-sync client on its own thread and runtime. Fails at once on bad
/// certificate files; connection problems are retried forever.
pub fn spawn(
    settings: KeySyncClientSettings,
    store: Arc<KeyStore>,
    serving: Arc<crate::ServingState>,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<()>> {
    let tls = client_tls(&settings)?;
    let merger = Arc::new(Merger::new(
        settings.endpoints.clone(),
        store,
        serving,
        metrics.clone(),
    ));
    let handle = std::thread::Builder::new()
        .name("key-sync".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("key sync cannot start a runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                for (i, endpoint) in settings.endpoints.iter().enumerate() {
                    tokio::spawn(run_endpoint(
                        i,
                        endpoint.clone(),
                        settings.clone(),
                        tls.clone(),
                        merger.clone(),
                        metrics.clone(),
                    ));
                }
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    merger.prune();
                }
            });
        })?;
    Ok(handle)
}

/// Open an HTTP/2 channel to `endpoint` (`host:port`) over our TLS configuration,
/// verifying `server_name` (default: the host) in the server's certificate.
pub async fn connect(
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
    server_name: Option<&str>,
) -> Result<tonic::transport::Channel> {
    let (host, _) = endpoint
        .rsplit_once(':')
        .with_context(|| format!("endpoint {endpoint:?} is not host:port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = server_name.map(str::to_string).unwrap_or(host);
    let server_name =
        ServerName::try_from(name.clone()).with_context(|| format!("bad server name {name:?}"))?;
    let target = endpoint.to_string();
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tls.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// How often a key-sync link checks whether health changed since its last report.
const HEALTH_CHECK: Duration = Duration::from_millis(200);

/// Longest cause a key-sync warning quotes.
const MAX_CAUSE: usize = 240;

/// An error and its causes on one short line, each cause said once: wrappers
/// that repeat their source's text are skipped, and a gRPC status is its code
/// and message (its `Display` dumps details and metadata).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(st) if st.message().is_empty() => format!("{:?}", st.code()),
            Some(st) => format!("{:?}: {}", st.code(), st.message()),
            None => cause.to_string(),
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        // A later, fuller text replaces an earlier one it contains.
        parts.retain(|p| !text.contains(p.as_str()));
        parts.push(text);
    }
    let mut line = parts.join(": ");
    if line.len() > MAX_CAUSE {
        let mut cut = MAX_CAUSE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

async fn run_endpoint(
    index: usize,
    endpoint: String,
    settings: KeySyncClientSettings,
    tls: Arc<rustls::ClientConfig>,
    merger: Arc<Merger>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut last_error: Option<String> = None;
    let mut tls = tls;
    loop {
        // Files renewed on disk are used from the next connection on.
        match client_tls(&settings) {
            Ok(t) => tls = t,
            Err(e) => {
                tracing::debug!(endpoint = %endpoint, "key-sync certificate files not reloaded, keeping the loaded ones: {e:#}")
            }
        }
        let mut got_keys = false;
        let result = session(
            &endpoint,
            &settings,
            tls.clone(),
            &merger,
            &metrics,
            index,
            &mut got_keys,
        )
        .await;
        metrics.key_sync_link_up(index, false);
        let why = match result {
            Ok(()) => "stream ended".to_string(),
            Err(e) => one_line(&e),
        };
        // Say it once per outage (and when the reason changes); retries go to debug.
        if got_keys || last_error.as_deref() != Some(why.as_str()) {
            tracing::warn!(endpoint = %endpoint, "key-sync link down: {why}; reconnecting with backoff");
        } else {
            tracing::debug!(endpoint = %endpoint, "key-sync reconnect failed: {why}");
        }
        last_error = Some(why);
        if got_keys {
            backoff = Duration::from_millis(250);
        }
        // Full jitter: spread reconnections of many time servers after a ke-server restart.
        let wait = rand::thread_rng().gen_range(backoff / 2..=backoff);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(settings.max_backoff);
        metrics.key_sync_reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

async fn session(
    endpoint: &str,
    settings: &KeySyncClientSettings,
    tls: Arc<rustls::ClientConfig>,
    merger: &Merger,
    metrics: &Metrics,
    index: usize,
    got_keys: &mut bool,
) -> Result<()> {
    let channel = connect(endpoint, tls, settings.server_name.as_deref()).await?;
    let mut client = KeySyncClient::new(channel);
    let reg = tokio::time::timeout(
        Duration::from_secs(10),
        client.register(RegisterRequest {
            info: Some(settings.info.clone()),
        }),
    )
    .await
    .context("register timed out")?
    .context("register")?
    .into_inner();
    let report_every = Duration::from_millis(reg.report_interval_ms.clamp(200, 300_000));
    let mut stream = client
        .watch_keys(WatchKeysRequest {
            server_id: settings.info.server_id.clone(),
        })
        .await
        .context("watch keys")?
        .into_inner();
    metrics.key_sync_link_up(index, true);
    tracing::info!(endpoint = %endpoint, "key-sync link up");
    let started = std::time::Instant::now();
    let mono = || MonoTime::from_duration(started.elapsed());
    let mut schedule = ReportSchedule::new(metrics.requests_received(), mono());
    let standing = |merger: &Merger| Standing {
        healthy: crate::health(&merger.serving, &merger.store).is_ok(),
        refused: merger.refused(index),
    };
    let mut tick = tokio::time::interval(report_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Health changes are reported at once, not at the next interval.
    let mut health_tick = tokio::time::interval(HEALTH_CHECK);
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let report_now = tokio::select! {
            msg = stream.message() => {
                let Some(set) = msg.context("key stream")? else { return Ok(()) };
                let keys = keys_from_set(&set).context("malformed key set")?;
                tracing::debug!(endpoint = %endpoint, keys = keys.len(), "key set received");
                metrics.key_sets_received.fetch_add(1, Ordering::Relaxed);
                if merger.update(index, set_fingerprint(&set), keys) {
                    merger.store.confirm(unix_now());
                }
                let first = !std::mem::replace(got_keys, true);
                schedule.on_key_set(first)
            }
            _ = tick.tick() => true,
            // A change of health, or of whether this ke-server's set is served
            // (another endpoint's set can change that), is reported at once.
            _ = health_tick.tick() => schedule.changed(standing(merger)),
        };
        if report_now {
            let report = schedule.report(standing(merger), metrics.requests_received(), mono());
            let sent = client.report(LoadReport {
                info: Some(settings.info.clone()),
                requests_per_second: report.requests_per_second,
                has_keys: merger.store.has_keys(unix_now()),
                healthy: report.standing.healthy,
                key_set_refused: report.standing.refused,
                served_fingerprint: merger
                    .served_fingerprint()
                    .map(|f| f.as_bytes().to_vec())
                    .unwrap_or_default(),
            });
            // A report that cannot get through in one interval means the link is gone.
            tokio::time::timeout(report_every.max(Duration::from_secs(2)), sent)
                .await
                .context("report timed out")?
                .context("report")?;
            if schedule.confirms_keys(&report) {
                merger.store.confirm(unix_now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once_on_one_line() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let e = anyhow::Error::new(io)
            .context("transport error: Connection refused (os error 111)")
            .context("connecting to 127.0.0.1:4461");
        assert_eq!(
            one_line(&e),
            "connecting to 127.0.0.1:4461: transport error: Connection refused (os error 111)"
        );
        let st = tonic::Status::unavailable("error reading a body from connection");
        let e = anyhow::Error::new(st).context("key stream");
        let line = one_line(&e);
        assert_eq!(
            line,
            "key stream: Unavailable: error reading a body from connection"
        );
        assert!(!line.contains("metadata"));
        let long = anyhow::anyhow!("{}", "x\n".repeat(500));
        let line = one_line(&long);
        assert!(line.len() <= MAX_CAUSE + 3 && !line.contains('\n'));
    }
}
