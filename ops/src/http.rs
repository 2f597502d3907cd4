//! The operations endpoint every daemon exposes: `/metrics` (Prometheus text
//! format 0.0.4, encoded by prometheus-client),
//! `/healthz` (the process is up) and `/readyz` (it can do its job).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What the endpoint asks the daemon for.
pub trait Observable: Send + Sync + 'static {
    /// Prometheus text exposition of all metrics.
    fn render_metrics(&self) -> String;
    /// `Ok(())` when ready to serve; otherwise why not.
    fn readiness(&self) -> Result<(), String>;
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn route(obs: &dyn Observable, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            obs.render_metrics(),
        ),
        "/healthz" | "/livez" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match obs.readiness() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, obs: Arc<dyn Observable>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics endpoint accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let obs = obs.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = route(obs.as_ref(), req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(bool);
    impl Observable for Fake {
        fn render_metrics(&self) -> String {
            "x 1\n".into()
        }
        fn readiness(&self) -> Result<(), String> {
            if self.0 {
                Ok(())
            } else {
                Err("no keys".into())
            }
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Fake(true), "/metrics").status(), StatusCode::OK);
        assert_eq!(route(&Fake(true), "/readyz").status(), StatusCode::OK);
        assert_eq!(
            route(&Fake(false), "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(route(&Fake(false), "/healthz").status(), StatusCode::OK);
        assert_eq!(route(&Fake(false), "/nope").status(), StatusCode::NOT_FOUND);
    }
}
