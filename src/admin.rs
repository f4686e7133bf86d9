//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Never on a public listener.
//!
//! `/healthz` is 200 while the process runs. `/readyz` is 200 only when every listener is bound
//! (true once this serves), at least one volume is healthy, and no drain is in progress; otherwise
//! 503 with the reason, one per line.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::drain::Stop;
use crate::runtime::Runtime;
use crate::state::Shared;

fn text(status: u16, ctype: &'static str, body: impl Into<Bytes>) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

pub fn route(runtime: &Runtime, drain: &Stop, path: &str) -> hyper::Response<Full<Bytes>> {
    match path {
        "/metrics" => text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            runtime.metrics.render(),
        ),
        "/healthz" => text(200, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" => {
            let mut reasons = String::new();
            if drain.is_set() {
                reasons.push_str("draining\n");
            }
            let volumes = runtime.store.volumes();
            for v in volumes.iter() {
                if !v.is_healthy() {
                    reasons.push_str(&format!("volume {} unhealthy\n", v.name));
                }
            }
            if !volumes.any_healthy() {
                reasons.push_str("no healthy volume\n");
            }
            if drain.is_set() || !volumes.any_healthy() {
                text(503, "text/plain; charset=utf-8", reasons)
            } else {
                // Degraded but serving: still ready; the body lists what is down.
                text(
                    200,
                    "text/plain; charset=utf-8",
                    format!("ready\n{reasons}"),
                )
            }
        }
        _ => text(404, "text/plain; charset=utf-8", "not found\n"),
    }
}

/// Serves the admin listener until the process exits. It keeps answering during a drain (so
/// `/readyz` can say so) and does not hold the drain open: only client traffic is waited for.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, drain: Stop) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let drain = drain.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let r = route(&shared.runtime, &drain, req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}
