//! The challenge listeners: TLS-ALPN-01 on a listener of its own, and
//! HTTP-01.

use super::*;

/// Answer TLS-ALPN-01 validations on a listener of their own.
pub async fn serve_tls_alpn(
    listener: TcpListener,
    resolver: Arc<AcmeResolver>,
    provider: Arc<CryptoProvider>,
) {
    let cfg = match rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => {
            let mut c = b
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(ChallengeOnly(resolver)));
            c.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            c
        }
        Err(e) => {
            tracing::error!("ACME: challenge listener cannot start: {e}");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let slots = Arc::new(Semaphore::new(CHALLENGE_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("ACME: challenge listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(CHALLENGE_CONN_TIMEOUT, async {
                let mut tls = acceptor.accept(stream).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut tls).await
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    tracing::debug!(%peer, "ACME: answered a TLS-ALPN-01 validation")
                }
                Ok(Err(e)) => tracing::debug!(%peer, "ACME: challenge connection failed: {e}"),
                Err(_) => tracing::debug!(%peer, "ACME: challenge connection timed out"),
            }
            drop(permit);
        });
    }
}

pub(super) fn http01_response(
    resolver: &AcmeResolver,
    method: &hyper::Method,
    path: &str,
) -> hyper::Response<Full<Bytes>> {
    let answer = (method == hyper::Method::GET || method == hyper::Method::HEAD)
        .then(|| path.strip_prefix(HTTP01_PREFIX))
        .flatten()
        .and_then(|token| resolver.http01_answer(token));
    let (status, body) = match answer {
        Some(a) => (hyper::StatusCode::OK, a),
        None => (hyper::StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// Answer HTTP-01 validations: `GET /.well-known/acme-challenge/TOKEN`.
pub async fn serve_http01(listener: TcpListener, resolver: Arc<AcmeResolver>) {
    let slots = Arc::new(Semaphore::new(CHALLENGE_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("ACME: HTTP-01 listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let resp = http01_response(&resolver, req.method(), req.uri().path());
                    tracing::debug!(%peer, path = req.uri().path(), status = %resp.status(), "ACME: HTTP-01 request");
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CHALLENGE_CONN_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}
