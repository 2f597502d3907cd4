//! The key master's gRPC service: time servers register, report, and watch
//! the cookie key set, over mutual TLS 1.3. A peer without a certificate from
//! the configured CA fails the handshake and is counted; it never reaches the
//! service.

use crate::certificate::ReloadingCert;
use crate::metrics::Metrics;
use crate::registration::{self, RegistrationError};
use crate::registry::{Registry, TooManyForCertificate};
use crate::server::unix_now;
use anyhow::{Context, Result};
use nts_proto::key_agreement::{RootFingerprint, TimeServerView};
use nts_proto::key_ring::{KeyRing, KeySchedule};
use nts_proto::key_sync::key_set;
use nts_proto::key_sync::pb::key_sync_server::{KeySync, KeySyncServer};
use nts_proto::key_sync::pb::{
    KeySet, LoadReport, RegisterRequest, RegisterResponse, ReportResponse, TimeServerInfo,
    WatchKeysRequest,
};
use nts_proto::placement::Load;
use rustls::server::WebPkiClientVerifier;
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
    /// What registrations may claim.
    pub policy: registration::Policy,
    /// Open WatchKeys streams per server_id.
    pub watchers: Arc<crate::watchers::Watchers>,
    /// What the time servers say about this replica's key set (rule 7).
    pub key_set: Arc<crate::key_set_status::KeySetStatus>,
}

impl KeySyncService {
    /// Refuse (and count) a registration whose `server_id` is not bound to the
    /// peer's certificate, whose certificate is revoked, or whose advertised
    /// address is unusable or not allowed. Returns the certificate name.
    fn admit<T>(
        &self,
        req: &Request<T>,
        info: &TimeServerInfo,
        what: &str,
    ) -> Result<String, Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        registration::check(info, leaf, &self.policy).map_err(|e| {
            self.metrics.registration_refused(e.reason());
            tracing::warn!(peer = ?req.remote_addr(), "key-sync {what} refused: {e}");
            match e {
                RegistrationError::BadHost(_)
                | RegistrationError::BadPort(_)
                | RegistrationError::TooManyAlternates(_) => {
                    Status::invalid_argument(e.to_string())
                }
                _ => Status::permission_denied(e.to_string()),
            }
        })
    }

    /// Count and log a registration over its certificate's share.
    fn over_limit(&self, peer: Option<std::net::SocketAddr>, e: TooManyForCertificate) -> Status {
        self.metrics.registration_refused("limit");
        tracing::warn!(?peer, "key-sync registration refused: {e}");
        Status::resource_exhausted(e.to_string())
    }
}

impl KeySyncService {
    /// A key watcher names itself too: the name must be bound to its
    /// certificate like a registration's (which also keeps control
    /// characters out of the log line that names it).
    fn admit_watcher(&self, req: &Request<WatchKeysRequest>) -> Result<(), Status> {
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let checked = leaf
            .ok_or(RegistrationError::NoCertificate)
            .and_then(|leaf| registration::peer_names(leaf, &self.policy))
            .and_then(|names| registration::check_identity(&req.get_ref().server_id, &names));
        checked.map(|_| ()).map_err(|e| {
            self.metrics.registration_refused(e.reason());
            tracing::warn!(peer = ?req.remote_addr(), "key-sync watch refused: {e}");
            Status::permission_denied(e.to_string())
        })
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
        let certificate = self.admit(&req, &info, "registration")?;
        self.registry
            .register(info.clone(), &certificate, Instant::now())
            .map_err(|e| self.over_limit(req.remote_addr(), e))?;
        if let Some(peer) = req.remote_addr() {
            self.registry.note_peer(&info.server_id, peer.ip());
        }
        tracing::info!(
            server_id = %info.server_id,
            ntp = %format!("{}:{}", info.ntp_host, info.ntp_port),
            alternates = info.alternates.len(),
            workers = info.workers,
            // Free text from the peer: Debug escapes control characters.
            timestamping = ?info.timestamping,
            "time server registered"
        );
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
        let certificate = self.admit(&req, &info, "report")?;
        let peer = req.remote_addr();
        let r = req.into_inner();
        let now = Instant::now();
        let view = TimeServerView {
            refused: r.key_set_refused,
            serves: RootFingerprint::from_bytes(&r.served_fingerprint),
        };
        self.key_set.report(&info.server_id, view, now);
        // A time server that refuses this replica's keys cannot open its
        // cookies: it holds no keys as far as Server Negotiation is concerned.
        self.registry
            .report(
                info,
                &certificate,
                Load {
                    requests_per_second: r.requests_per_second,
                    has_keys: r.has_keys && !r.key_set_refused,
                    healthy: r.healthy,
                },
                now,
            )
            .map_err(|e| self.over_limit(peer, e))?;
        Ok(Response::new(ReportResponse {}))
    }

    type WatchKeysStream = Pin<Box<dyn Stream<Item = Result<KeySet, Status>> + Send + 'static>>;

    async fn watch_keys(
        &self,
        req: Request<WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        self.admit_watcher(&req)?;
        let id = req.into_inner().server_id;
        // Watches are bounded through registrations (bounded per certificate).
        if !self.registry.is_registered(&id) {
            self.metrics.registration_refused("identity");
            return Err(Status::failed_precondition("register before watching keys"));
        }
        let (watch, replaced_by, replaced) = self.watchers.open(&id);
        tracing::info!(server_id = %id, replaced, "time server watching keys");
        let period = self.schedule.rotation_period;
        let fingerprint = self.key_set.own();
        let metrics = self.metrics.clone();
        metrics.key_watchers.inc();
        let guard = WatcherGuard(metrics.clone(), watch);
        let sets = tokio_stream::wrappers::WatchStream::new(self.ring.clone()).map(move |ring| {
            let _keep = &guard;
            metrics.key_sets_sent.inc();
            Ok(key_set(&ring, unix_now(), period, fingerprint))
        });
        let stream = futures_util::StreamExt::take_until(sets, replaced_by);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Counts a watcher out (and closes its watch) when its stream is dropped.
struct WatcherGuard(Arc<Metrics>, #[allow(dead_code)] crate::watchers::Watch);
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
    let roots = nts_ops::trust_store::from_pem_file(client_ca).context("key_sync.client_ca")?;
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

/// Limits of the key-sync listener before a peer has authenticated.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Handshake slots, shared fairly among peer addresses.
    pub slots: nts_proto::admission::AdmissionLimits,
    pub handshake_timeout: Duration,
    /// Source networks allowed to connect (empty: any).
    pub allowed: Vec<ipnet::IpNet>,
    /// HTTP/2 streams one authenticated connection may have open at once.
    pub max_streams: u32,
}

impl Guard {
    fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.allowed.is_empty() || self.allowed.iter().any(|n| n.contains(&ip))
    }
}

/// Accept mutual-TLS connections on `listener` and serve the key-sync service on them.
///
/// Until a peer has completed its handshake it holds one of a fixed number of
/// slots, shared fairly among addresses ([`crate::slots`]): a connection that
/// arrives when they are all taken closes the oldest handshake of the address
/// holding the most, so idle connections cost their sender its own slots and
/// a time server always gets through. Handshakes end at `handshake_timeout`;
/// an authenticated connection leaves the table, so a time server's
/// established link never competes with unauthenticated peers.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    service: KeySyncService,
    guard: Guard,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let metrics = service.metrics.clone();
    let slots = crate::slots::Slots::new(guard.slots);
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >(64);
    let max_streams = guard.max_streams;
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
            if !guard.allows(peer.ip()) {
                metrics.key_sync_not_allowed.inc();
                tracing::debug!(%peer, "key-sync connection closed: source not in key_sync.allowed_networks");
                continue;
            }
            let admitted = slots.admit(peer.ip());
            if let Some(why) = admitted.made_room {
                metrics.key_sync_evicted(why);
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            let deadline = guard.handshake_timeout;
            let in_progress = slots.clone();
            tokio::spawn(async move {
                metrics.key_sync_handshakes.set(in_progress.in_use() as i64);
                let slot = &admitted.slot;
                let handshake = tokio::time::timeout(deadline, async move {
                    slot.await_first_bytes(&tcp).await;
                    acceptor.accept(tcp).await
                });
                let outcome = tokio::select! {
                    r = handshake => Some(r),
                    () = admitted.notice.wait() => None,
                };
                drop(admitted.slot);
                metrics.key_sync_handshakes.set(in_progress.in_use() as i64);
                match outcome {
                    Some(Ok(Ok(tls))) => {
                        metrics.key_sync_connections.inc();
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Some(Ok(Err(e))) => {
                        metrics.key_sync_refused.inc();
                        // A peer that closes before finishing costs nothing to repeat:
                        // debug only, so an idle flood cannot flood the log too.
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                        ) {
                            tracing::debug!(%peer, "key-sync peer closed during the TLS handshake: {e}");
                        } else {
                            tracing::warn!(%peer, "key-sync peer refused: {e}");
                        }
                    }
                    Some(Err(_)) => {
                        metrics.key_sync_refused.inc();
                        tracing::debug!(%peer, "key-sync peer refused: TLS handshake not completed within key_sync.handshake_timeout");
                    }
                    None => {
                        tracing::debug!(%peer, "key-sync handshake closed to make room for a newer connection");
                    }
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .max_concurrent_streams(Some(max_streams))
        .add_service(KeySyncServer::new(service))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = result {
        tracing::error!("key-sync service stopped: {e}");
    }
}
