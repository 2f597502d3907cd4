//! The key master's gRPC service: time servers register, report, and watch
//! the cookie key set, over mutual TLS 1.3. A peer without a certificate from
//! the configured CA fails the handshake and is counted; it never reaches the
//! service.

use crate::certificate::ReloadingCert;
use crate::metrics::Metrics;
use crate::registration::{self, RegistrationError};
use crate::registry::Registry;
use crate::server::unix_now;
use anyhow::{Context, Result};
use nts_proto::key_ring::{KeyRing, KeySchedule};
use nts_proto::key_sync::key_set;
use nts_proto::key_sync::pb::key_sync_server::{KeySync, KeySyncServer};
use nts_proto::key_sync::pb::{
    KeySet, LoadReport, RegisterRequest, RegisterResponse, ReportResponse, TimeServerInfo,
    WatchKeysRequest,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The service state.
pub struct KeySyncService {
    pub ring: watch::Receiver<Arc<KeyRing>>,
    pub schedule: KeySchedule,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub report_interval: Duration,
    pub expiry: Duration,
}

impl KeySyncService {
    /// Refuse (and count) a registration whose `server_id` is not bound to the
    /// peer's certificate or whose advertised address is unusable.
    fn admit<T>(&self, req: &Request<T>, info: &TimeServerInfo, what: &str) -> Result<(), Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        match registration::check(info, leaf) {
            Ok(()) => Ok(()),
            Err(e) => {
                let identity = matches!(
                    e,
                    RegistrationError::IdentityMismatch { .. }
                        | RegistrationError::NoCertificate
                        | RegistrationError::BadCertificate
                );
                self.metrics.registration_refused(identity);
                tracing::warn!(peer = ?req.remote_addr(), "key-sync {what} refused: {e}");
                Err(if identity {
                    Status::permission_denied(e.to_string())
                } else {
                    Status::invalid_argument(e.to_string())
                })
            }
        }
    }
}

#[tonic::async_trait]
impl KeySync for KeySyncService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let info = req
            .get_ref()
            .info
            .clone()
            .ok_or_else(|| Status::invalid_argument("info is required"))?;
        self.admit(&req, &info, "registration")?;
        tracing::info!(
            server_id = %info.server_id,
            ntp = %format!("{}:{}", info.ntp_host, info.ntp_port),
            alternates = info.alternates.len(),
            workers = info.workers,
            timestamping = %info.timestamping,
            "time server registered"
        );
        self.registry.register(info, Instant::now());
        Ok(Response::new(RegisterResponse {
            report_interval_ms: self.report_interval.as_millis() as u64,
            expiry_ms: self.expiry.as_millis() as u64,
        }))
    }

    async fn report(&self, req: Request<LoadReport>) -> Result<Response<ReportResponse>, Status> {
        let info = req
            .get_ref()
            .info
            .clone()
            .ok_or_else(|| Status::invalid_argument("info is required"))?;
        self.admit(&req, &info, "report")?;
        let r = req.into_inner();
        self.registry.report(
            info,
            r.requests_per_second,
            r.has_keys,
            r.healthy,
            Instant::now(),
        );
        Ok(Response::new(ReportResponse {}))
    }

    type WatchKeysStream = Pin<Box<dyn Stream<Item = Result<KeySet, Status>> + Send + 'static>>;

    async fn watch_keys(
        &self,
        req: Request<WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let id = req.into_inner().server_id;
        tracing::info!(server_id = %id, "time server watching keys");
        let period = self.schedule.rotation_period;
        let metrics = self.metrics.clone();
        metrics.key_watchers.inc();
        let guard = WatcherGuard(metrics.clone());
        let stream = tokio_stream::wrappers::WatchStream::new(self.ring.clone()).map(move |ring| {
            let _keep = &guard;
            metrics.key_sets_sent.inc();
            Ok(key_set(&ring, unix_now(), period))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Counts a watcher out when its stream is dropped.
struct WatcherGuard(Arc<Metrics>);
impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.key_watchers.dec();
    }
}

/// TLS 1.3 server configuration that requires a client certificate from `client_ca`.
pub fn mtls_config(
    cert: Arc<ReloadingCert>,
    client_ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(client_ca)
        .with_context(|| format!("key_sync.client_ca {}", client_ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("key_sync.client_ca {}: not PEM", client_ca.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        anyhow::bail!(
            "key_sync.client_ca {}: no usable CA certificate",
            client_ca.display()
        );
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("key_sync.client_ca: building the client verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Accept mutual-TLS connections on `listener` and serve the key-sync service on them.
/// At most `max_handshakes` TLS handshakes run at once; a connection arriving
/// beyond that is closed at once and counted, so a flood of half-open
/// handshakes cannot hold unbounded memory and tasks.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    service: KeySyncService,
    max_handshakes: usize,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let metrics = service.metrics.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("key-sync accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics.key_sync_busy.inc();
                tracing::debug!(%peer, "key-sync connection refused: key_sync.max_handshakes reached");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        metrics.key_sync_connections.inc();
                        drop(_permit);
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.key_sync_refused.inc();
                        tracing::warn!(%peer, "key-sync peer refused: {e}");
                    }
                    Err(_) => {
                        metrics.key_sync_refused.inc();
                        tracing::warn!(%peer, "key-sync peer refused: TLS handshake timed out");
                    }
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(KeySyncServer::new(service))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = result {
        tracing::error!("key-sync service stopped: {e}");
    }
}
