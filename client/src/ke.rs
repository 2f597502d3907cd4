//! NTS-KE client: TLS 1.3 to the KE server, request, response, key export.
//! The record logic is `nts_proto::ke_client`; this is the I/O around it.

use nts_proto::aead::{AeadAlgorithm, AeadKey};
use nts_proto::ke_client::{build_request, check_algorithm, ResponseDecoder, ResponseError};
use nts_proto::ke_server::{exporter_context, ALPN, EXPORTER_LABEL};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Default NTS-KE port (RFC 8915 section 4).
pub const DEFAULT_KE_PORT: u16 = 4460;
/// Default NTP port when the server sends no Port Negotiation record.
pub const DEFAULT_NTP_PORT: u16 = 123;

/// What a key exchange gives the NTP layer.
#[derive(Debug, Clone)]
pub struct KeOutcome {
    pub aead: AeadAlgorithm,
    pub c2s: AeadKey,
    pub s2c: AeadKey,
    pub cookies: Vec<Vec<u8>>,
    /// Negotiated NTP server, or, when none was sent, the IP address the KE
    /// connection went to (RFC 8915 4.1.7: "the same IP address as the NTS-KE
    /// server"; resolving the KE name again could give another host).
    pub ntp_server: String,
    /// Negotiated NTP port, or 123.
    pub ntp_port: u16,
    pub warnings: Vec<u16>,
}

#[derive(Debug, Error)]
pub enum KeError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("{0} closed the connection before the TLS handshake completed: no NTS-KE server answers there (a load balancer or Service without endpoints, a port forward to nothing), or it refused this client (connection limits)")]
    ClosedBeforeHandshake(String),
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("server did not negotiate ALPN ntske/1")]
    Alpn,
    #[error("timed out")]
    Timeout,
    #[error("connection failed during the exchange: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ResponseError),
    #[error("TLS key export failed: {0}")]
    Export(rustls::Error),
}

/// A handshake error: the peer closing (or resetting) before any TLS answer
/// is not a TLS problem, and saying "tls handshake eof" sends operators to
/// the wrong place.
fn handshake_error(target: &str, e: std::io::Error) -> KeError {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, UnexpectedEof};
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted => {
            KeError::ClosedBeforeHandshake(target.to_string())
        }
        _ => KeError::Tls(target.to_string(), e),
    }
}

/// A CA file given in the configuration that yields no trust anchor.
pub type TrustError = nts_ops::trust_store::TrustStoreError;

/// Trust anchors: the system's roots (when `system_roots`) plus PEM files.
pub fn root_store(
    extra_ca_files: &[&Path],
    system_roots: bool,
) -> Result<RootCertStore, TrustError> {
    let mut roots = RootCertStore::empty();
    if system_roots {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    }
    for path in extra_ca_files {
        nts_ops::trust_store::add_pem_file(&mut roots, path)?;
    }
    Ok(roots)
}

/// TLS 1.3-only client configuration with ALPN `ntske/1`.
pub fn tls_config(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = nts_ops::tls_provider::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(cfg)
}

/// Run one key exchange with `host:port`; `host` is also the TLS server name (SNI).
pub async fn key_exchange(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    algorithms: &[AeadAlgorithm],
    timeout: Duration,
) -> Result<KeOutcome, KeError> {
    key_exchange_at(host, host, port, tls, algorithms, timeout).await
}

/// Key exchange connecting to `connect` (a name or an address, e.g. one member of a
/// pool) while verifying the certificate for, and sending SNI of, `host`.
pub async fn key_exchange_at(
    connect: &str,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    algorithms: &[AeadAlgorithm],
    timeout: Duration,
) -> Result<KeOutcome, KeError> {
    tokio::time::timeout(timeout, exchange(connect, host, port, tls, algorithms))
        .await
        .map_err(|_| KeError::Timeout)?
}

async fn exchange(
    connect: &str,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    algorithms: &[AeadAlgorithm],
) -> Result<KeOutcome, KeError> {
    let target = format!("{connect}:{port}");
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| KeError::ServerName(host.into()))?;
    let tcp = TcpStream::connect((connect.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| KeError::Connect(target.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp
        .peer_addr()
        .map_err(|e| KeError::Connect(target.clone(), e))?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(&target, e))?;
    if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(KeError::Alpn);
    }
    stream
        .write_all(&build_request(algorithms))
        .await
        .map_err(KeError::Io)?;
    let mut decoder = ResponseDecoder::new();
    let mut buf = [0u8; 4096];
    let response = loop {
        let n = stream.read(&mut buf).await.map_err(KeError::Io)?;
        if n == 0 {
            return Err(decoder.eof().into());
        }
        if let Some(r) = decoder.feed(&buf[..n])? {
            break r;
        }
    };
    check_algorithm(&response, algorithms)?;
    let alg = response.aead;
    let conn = stream.get_ref().1;
    let kl = alg.key_len();
    let mut c2s = [0u8; 64];
    let mut s2c = [0u8; 64];
    conn.export_keying_material(
        &mut c2s[..kl],
        EXPORTER_LABEL,
        Some(&exporter_context(alg, false)),
    )
    .map_err(KeError::Export)?;
    conn.export_keying_material(
        &mut s2c[..kl],
        EXPORTER_LABEL,
        Some(&exporter_context(alg, true)),
    )
    .map_err(KeError::Export)?;
    let keys = AeadKey::new(alg, &c2s[..kl]).and_then(|c| Ok((c, AeadKey::new(alg, &s2c[..kl])?)));
    c2s.fill(0);
    s2c.fill(0);
    let (c2s, s2c) = keys.map_err(|_| KeError::Protocol(ResponseError::Malformed("key length")))?;
    let _ = stream.shutdown().await;
    Ok(KeOutcome {
        aead: alg,
        c2s,
        s2c,
        cookies: response.cookies,
        ntp_server: response.server.unwrap_or_else(|| peer.ip().to_string()),
        ntp_port: response.port.unwrap_or(DEFAULT_NTP_PORT),
        warnings: response.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint that accepts and closes at once (a Service with no
    /// endpoints, a port forward to nothing) is named as such, not as a TLS
    /// failure ("tls handshake eof").
    #[tokio::test]
    async fn an_endpoint_that_closes_before_the_handshake_is_named() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        let tls = tls_config(RootCertStore::empty());
        let e = key_exchange(
            "127.0.0.1",
            port,
            tls,
            &AeadAlgorithm::ALL,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, KeError::ClosedBeforeHandshake(_)), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("closed the connection before the TLS handshake"),
            "{msg}"
        );
        assert!(!msg.contains("tls handshake eof"), "{msg}");
    }
}
