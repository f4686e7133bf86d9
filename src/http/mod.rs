//! HTTP front ends. `handler` decides every response; the other modules only move bytes:
//! `h1` is the plaintext HTTP/1.1 fast path (httparse + sendfile), `service` adapts hyper (h2c
//! handed over from `h1`), `h3` serves HTTP/3 over quinn, and `body` writes file bodies for the
//! copying writers (hyper and HTTP/3).

pub mod body;
pub mod conditional;
pub mod h1;
pub mod h3;
pub mod handler;
pub mod range;
pub mod service;

use std::time::Instant;

use crate::state::State;
use handler::Proto;

fn access_line(
    state: &State,
    req: &handler::Request<'_>,
    status: http::StatusCode,
    bytes: u64,
    start: Instant,
    cache: &'static str,
    log: &handler::LogInfo,
) {
    // Never the token: the path-embedded segment is split off and the query is not logged.
    let raw;
    let path = match &log.path {
        Some(p) => p.as_str(),
        None => {
            raw = crate::auth::split_path_token(state.auth.name(), req.path).path;
            &raw[..raw.len().min(1024)]
        }
    };
    let header = |n: http::header::HeaderName| req.headers.get(n).and_then(|v| v.to_str().ok());
    let rid = crate::access::request_id(req.headers);
    state.access.log(&crate::access::Entry {
        time: std::time::SystemTime::now(),
        client: state.auth.client_ip(req.headers, req.peer.ip()),
        peer: req.peer,
        method: req.method.as_str(),
        path,
        status: status.as_u16(),
        bytes,
        duration: start.elapsed(),
        proto: req.proto.as_str(),
        tls: req.tls,
        cache,
        key_id: log.key_id.as_deref(),
        request_id: &rid,
        user_agent: header(http::header::USER_AGENT),
        referer: header(http::header::REFERER),
    });
}

/// The access log's `cache` field for a body a copying writer (hyper, HTTP/3) will send: `hit` or
/// `miss` in the hot-body cache, `bypass` for objects too big for it, `none` for no file body.
pub fn cache_status(state: &State, body: &handler::ReplyBody) -> &'static str {
    match body {
        handler::ReplyBody::File { meta, .. } if state.bodies.admits(meta.len) => {
            if state.bodies.contains_now(meta) {
                "hit"
            } else {
                "miss"
            }
        }
        handler::ReplyBody::File { .. } => "bypass",
        _ => "none",
    }
}

/// Records one answered request — metrics and the access log: the single exit point every
/// protocol calls.
pub fn record(
    state: &State,
    req: &handler::Request<'_>,
    status: http::StatusCode,
    bytes: u64,
    start: Instant,
    cache: &'static str,
    log: &handler::LogInfo,
) {
    let proto = req.proto;
    if state.access.enabled() {
        access_line(state, req, status, bytes, start, cache, log);
    }
    let m = &state.metrics;
    let mi = match *req.method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::OPTIONS => 2,
        _ => 3,
    };
    let ci = match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    let pi = match proto {
        Proto::H1 => 0,
        Proto::H2 => 1,
        Proto::H3 => 2,
    };
    if let Some(c) = m.request_handles.get((mi * 5 + ci) * 3 + pi) {
        c.inc();
    }
    if let Some(c) = m.byte_handles.get(pi) {
        c.inc_by(bytes);
    }
    m.total_time.observe(start.elapsed().as_secs_f64());
}
