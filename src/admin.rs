//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Never on a public listener.
//!
//! `/healthz` is 200 while the process runs. `/readyz` is 200 only when every listener is bound
//! (true once this serves), at least one volume is healthy, and no drain is in progress; otherwise
//! 503 with the reason, one per line. "Drain in progress" means SIGTERM/SIGINT was received: it
//! turns 503 at once, before anything closes (`server.unready_delay`).
//!
//! On an upgrade the admin socket is handed to the new process with the others: this process
//! stops accepting on it, and its open admin connections get `Connection: close`, so a health
//! checker's next request reaches the new process. Its `/readyz` does not turn 503 for that.

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

/// `unready`: set when a drain starts (SIGTERM/SIGINT). Every path is read-only: another
/// method RFC 9110 defines is 405 with `Allow` (§15.5.6), so a probe configured with the wrong
/// method fails loudly instead of passing; a method segd knows nowhere is 501 (§15.6.2), as on
/// the media listeners.
pub fn route(
    runtime: &Runtime,
    unready: &Stop,
    method: &http::Method,
    path: &str,
) -> hyper::Response<Full<Bytes>> {
    use http::Method;
    if !matches!(
        *method,
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::OPTIONS
    ) {
        return text(501, "text/plain; charset=utf-8", "not implemented\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(405, "text/plain; charset=utf-8", "method not allowed\n");
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path {
        "/metrics" => text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            runtime.metrics.render(),
        ),
        "/healthz" => text(200, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" => {
            // Each state is read once: a drain or a volume fault that began between two reads
            // would give a 503 with no reason.
            let draining = unready.is_set();
            let mut reasons = String::new();
            if draining {
                reasons.push_str("draining\n");
            }
            let volumes = runtime.store.volumes();
            for v in volumes.iter() {
                if !v.is_healthy() {
                    reasons.push_str(&format!("volume {} unhealthy\n", v.name));
                }
            }
            let none_healthy = !volumes.any_healthy();
            if none_healthy {
                reasons.push_str("no healthy volume\n");
            }
            if draining || none_healthy {
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

/// Serves the admin listener until the process exits, or until `released` (the socket was handed
/// to a new process). It keeps answering during a drain (so `/readyz` can say so) and does not
/// hold the drain open: only client traffic is waited for.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, unready: Stop, released: Stop) {
    let mut release = released.clone();
    let mut errors = crate::server::AcceptErrors::new("admin accept failed");
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    let pause = errors.failed(&e, &shared.runtime.metrics.accept_errors);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        _ = release.wait() => return,
                    }
                }
            },
            _ = release.wait() => return,
        };
        errors.accepted();
        let shared = Arc::clone(&shared);
        let (unready, released) = (unready.clone(), released.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let mut r = route(&shared.runtime, &unready, req.method(), req.uri().path());
                if released.is_set() {
                    r.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
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
