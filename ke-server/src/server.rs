//! The NTS-KE listener: a thin async shell around `nts_proto::ke_server`.
//! It enforces the limits (connections, bytes, records, time, per-address
//! rate), exports the keys from TLS and writes the response.

use crate::config::Settings;
use crate::metrics::{CutOff, Metrics, ProxyResult};
use crate::slots::Slots;
use arc_swap::ArcSwap;
use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::ke_answer::{self, AnswerInput, ExportedKeys, KeAnswer, KeOutcome};
use nts_proto::ke_server::{
    self, exporter_context, NtpTarget, RequestDecoder, RequestLimits, ServerNegotiation,
    TargetSource, EXPORTER_LABEL,
};
use nts_proto::key_ring::KeyRing;
use nts_proto::rate_limit::RateLimiter;
use nts_proto::time::{MonoTime, UnixTime};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything a connection handler needs, shared by all connections.
pub struct KeService {
    pub acceptor: TlsAcceptor,
    pub settings: Arc<Settings>,
    pub ring: Arc<ArcSwap<KeyRing>>,
    pub metrics: Arc<Metrics>,
    /// Configured time server, used when no registered one is alive.
    pub target: NtpTarget,
    /// How answers name the time server.
    negotiation: ServerNegotiation,
    pub registry: Option<Arc<crate::registry::Registry>>,
    limiter: Option<Mutex<RateLimiter>>,
    slots: Arc<Slots>,
    /// `server.proxy_trusted_networks`.
    trusted: crate::proxy::Trusted,
    /// Bounds the PROXY headers being read at once (`server.max_connections`).
    header_reads: Arc<tokio::sync::Semaphore>,
    epoch: Instant,
}

impl KeService {
    pub fn new(
        acceptor: TlsAcceptor,
        settings: Arc<Settings>,
        ring: Arc<ArcSwap<KeyRing>>,
        metrics: Arc<Metrics>,
        target: NtpTarget,
        registry: Option<Arc<crate::registry::Registry>>,
    ) -> Self {
        let s = &settings.config.server;
        let limiter = (s.connections_per_minute > 0).then(|| {
            let per_min = s.connections_per_minute as f64;
            Mutex::new(
                RateLimiter::new(s.rate_limit_slots, per_min / 60.0, per_min)
                    .with_prefix_lengths(settings.ke_slots.prefixes),
            )
        });
        let slots = Slots::new(settings.ke_slots);
        let trusted = crate::proxy::Trusted::new(s.proxy_trusted_networks.clone());
        let header_reads = Arc::new(tokio::sync::Semaphore::new(s.max_connections));
        Self {
            trusted,
            header_reads,
            acceptor,
            settings,
            ring,
            metrics,
            negotiation: ServerNegotiation {
                key_sync: registry.is_some(),
                fallback: target.clone(),
            },
            target,
            registry,
            limiter,
            slots,
            epoch: Instant::now(),
        }
    }

    /// Accept connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.metrics.connections_accepted.inc();
            if !self.trusted.contains(peer.ip()) {
                if let Some(admitted) = self.admit(peer) {
                    tokio::spawn(self.clone().run(stream, peer, false, admitted));
                }
                continue;
            }
            // A trusted balancer: the client address comes from its header,
            // read before the limits that apply to that address.
            let Ok(permit) = self.header_reads.clone().try_acquire_owned() else {
                self.metrics.proxy_header(ProxyResult::Overloaded);
                tracing::debug!(%peer, "connection from a trusted balancer closed: too many PROXY headers being read");
                continue;
            };
            let svc = self.clone();
            tokio::spawn(async move {
                let mut stream = stream;
                let deadline = svc.settings.handshake_timeout;
                let client =
                    crate::proxy::client_of(&mut stream, peer, deadline, &svc.metrics).await;
                drop(permit);
                let Some(client) = client else { return };
                if let Some(admitted) = svc.admit(client) {
                    svc.run(stream, client, true, admitted).await;
                }
            });
        }
    }

    /// The per-address rate limit and connection slots, for `client` (the
    /// peer, or the client a trusted balancer named).
    fn admit(&self, client: SocketAddr) -> Option<crate::slots::Admitted> {
        if let Some(limiter) = &self.limiter {
            let now = MonoTime::from_duration(self.epoch.elapsed());
            let allowed = limiter
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allow(client.ip(), now);
            if !allowed {
                self.metrics.refused_rate_limited.inc();
                tracing::debug!(peer = %client, "connection refused: rate limit");
                return None;
            }
        }
        // Always admitted; a full table closes the oldest connection of the
        // address holding the most (an idle flood loses its own slots).
        let admitted = self.slots.admit(client.ip());
        if let Some(why) = admitted.made_room {
            self.metrics.evicted(why);
        }
        Some(admitted)
    }

    /// Serve one admitted connection until it ends or is evicted.
    async fn run(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        relayed: bool,
        admitted: crate::slots::Admitted,
    ) {
        self.metrics.active_connections.inc();
        let slot = &admitted.slot;
        tokio::select! {
            () = self.handle(stream, peer, relayed, slot) => {}
            () = admitted.notice.wait() => {
                tracing::debug!(%peer, "connection closed to make room for a newer one");
            }
        }
        self.metrics.active_connections.dec();
        drop(admitted.slot);
    }

    /// `relayed`: `peer` is the client a trusted balancer named.
    async fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        relayed: bool,
        slot: &crate::slots::Slot,
    ) {
        let _ = stream.set_nodelay(true);
        let check_untrusted = self.trusted.enabled() && !relayed;
        let hs = tokio::time::timeout(self.settings.handshake_timeout, async {
            slot.await_first_bytes(&stream).await;
            if check_untrusted && crate::proxy::opens_like_header(&stream).await {
                return None;
            }
            Some(self.acceptor.accept(stream).await)
        })
        .await;
        let mut tls = match hs {
            Ok(None) => {
                self.metrics.proxy_header(ProxyResult::Untrusted);
                tracing::debug!(%peer, "connection refused: PROXY header from outside server.proxy_trusted_networks");
                return;
            }
            Ok(Some(Err(e))) => {
                return self.cut(
                    peer,
                    CutOff::HandshakeFailed,
                    &format!("TLS handshake failed: {e}"),
                )
            }
            Ok(Some(Ok(tls))) => tls,
            Err(_) => return self.cut(peer, CutOff::HandshakeTimeout, "TLS handshake timed out"),
        };
        if tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
            // A TLS-ALPN-01 validation (RFC 8737): the handshake was the answer.
            let _ = tls.shutdown().await;
            tracing::debug!(%peer, "answered an ACME TLS-ALPN-01 validation handshake");
            return;
        }
        if tls.get_ref().1.alpn_protocol() != Some(ke_server::ALPN) {
            let _ = tls.shutdown().await;
            return self.cut(
                peer,
                CutOff::NoAlpn,
                "client did not negotiate ALPN ntske/1",
            );
        }
        let work = async {
            let response = self.exchange(&mut tls, peer).await?;
            tls.write_all(&response)
                .await
                .map_err(|_| CutOff::WriteFailed)?;
            tls.shutdown().await.map_err(|_| CutOff::WriteFailed)?;
            Ok::<(), CutOff>(())
        };
        match tokio::time::timeout(self.settings.request_timeout, work).await {
            Err(_) => self.cut(
                peer,
                CutOff::RequestTimeout,
                "request not completed in time",
            ),
            Ok(Err(why)) => self.cut(peer, why, "connection ended before the exchange completed"),
            Ok(Ok(())) => {}
        }
    }

    fn cut(&self, peer: SocketAddr, why: CutOff, msg: &str) {
        self.metrics.cut_off(why);
        tracing::debug!(%peer, reason = why.label(), "{msg}");
    }

    /// Read the request over TLS, export the keys and let
    /// [`ke_answer::answer`] decide the bytes to answer with.
    async fn exchange(
        &self,
        tls: &mut TlsStream<TcpStream>,
        peer: SocketAddr,
    ) -> Result<Vec<u8>, CutOff> {
        let s = &self.settings.config.server;
        let mut decoder = RequestDecoder::new(RequestLimits {
            max_bytes: s.max_request_bytes,
            max_records: s.max_request_records,
        });
        let mut buf = [0u8; 1024];
        let request = loop {
            let n = tls.read(&mut buf).await.map_err(|_| CutOff::ClosedEarly)?;
            if n == 0 {
                if decoder.bytes_received() == 0 {
                    return Err(CutOff::ClosedEarly);
                }
                tracing::info!(%peer, "refusing NTS-KE request: truncated before End of Message");
                return Ok(self.record(ke_answer::truncated(), peer));
            }
            match decoder.feed(&buf[..n]) {
                Ok(None) => continue,
                Ok(Some(req)) => break req,
                Err(e) => {
                    tracing::info!(%peer, "refusing NTS-KE request: {e}");
                    return Ok(self.record(ke_answer::refuse(&e), peer));
                }
            }
        };
        if !request.warnings.is_empty() {
            tracing::info!(%peer, warnings = ?request.warnings, "client sent warnings");
        }
        let keys = ke_answer::keys_needed(&request, &self.settings.algorithms)
            .and_then(|alg| export_keys(tls.get_ref().1, alg));
        let ring = self.ring.load();
        let input = AnswerInput {
            keys,
            ring: &ring,
            now: UnixTime::from_system_time(SystemTime::now()),
            negotiation: &self.negotiation,
        };
        let mut place = || {
            self.registry
                .as_ref()
                .and_then(|r| r.pick(Instant::now(), Some(peer.ip())))
                .map(|t| (t.host, t.port))
        };
        let answer = ke_answer::answer(
            &request,
            &self.settings.algorithms,
            input,
            &mut place,
            &mut rand::rngs::OsRng,
        );
        Ok(self.record(answer, peer))
    }

    /// Count and log what an answer did; hand back its bytes.
    fn record(&self, answer: KeAnswer, peer: SocketAddr) -> Vec<u8> {
        let m = &self.metrics;
        match &answer.outcome {
            KeOutcome::Issued {
                alg,
                cookies,
                source,
                server,
                port,
            } => {
                match source {
                    TargetSource::Registry => m.negotiated_registered.inc(),
                    TargetSource::Fallback => m.negotiated_fallback.inc(),
                }
                m.key_exchanges_ok.inc();
                m.cookies_issued.add(*cookies as u64);
                tracing::debug!(%peer, aead = %alg, ?server, ?port, "key exchange completed");
            }
            KeOutcome::NoProtocol => m.no_common_protocol.inc(),
            KeOutcome::NoAlgorithm => m.no_common_algorithm.inc(),
            KeOutcome::NoTimeServer => {
                m.negotiated_none.inc();
                tracing::info!(%peer, "no live time server and no ntp.server fallback: answering Internal Server Error");
            }
            KeOutcome::CannotIssue => {
                m.internal_errors.inc();
                tracing::error!(%peer, "cannot issue cookies: key export failed or no current cookie key");
            }
            KeOutcome::Refused(reason) => m.request_error(reason),
        }
        answer.bytes
    }
}

/// The session keys for `alg` from the TLS exporter (RFC 8915 section 5.1).
fn export_keys(conn: &rustls::ServerConnection, alg: AeadAlgorithm) -> Option<ExportedKeys> {
    let kl = alg.key_len();
    let mut c2s = [0u8; 64];
    let mut s2c = [0u8; 64];
    let ok = conn
        .export_keying_material(
            &mut c2s[..kl],
            EXPORTER_LABEL,
            Some(&exporter_context(alg, false)),
        )
        .is_ok()
        && conn
            .export_keying_material(
                &mut s2c[..kl],
                EXPORTER_LABEL,
                Some(&exporter_context(alg, true)),
            )
            .is_ok();
    let keys = ok.then(|| {
        Some(ExportedKeys {
            c2s: AeadKey::new(alg, &c2s[..kl]).ok()?,
            s2c: AeadKey::new(alg, &s2c[..kl]).ok()?,
        })
    });
    c2s.fill(0);
    s2c.fill(0);
    keys.flatten()
}
