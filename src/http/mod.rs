//! HTTP front ends. `handler` decides every response; the other modules only move bytes:
//! `h1` is the plaintext HTTP/1.1 fast path (httparse + sendfile), `service` adapts hyper (h2c
//! handed over from `h1`), and `body` writes file bodies for hyper.

pub mod body;
pub mod conditional;
pub mod h1;
pub mod handler;
pub mod range;
pub mod service;

use std::time::Instant;

use crate::metrics::status_class;
use crate::state::State;
use handler::Proto;

/// Records one answered request: the single exit point every protocol calls.
pub fn record(
    state: &State,
    method: &http::Method,
    status: http::StatusCode,
    proto: Proto,
    bytes: u64,
    start: Instant,
) {
    let m = &state.metrics;
    let method = match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    m.requests
        .with_label_values(&[method, status_class(status.as_u16()), proto.as_str()])
        .inc();
    m.response_bytes
        .with_label_values(&[proto.as_str()])
        .inc_by(bytes);
    m.duration
        .with_label_values(&["total"])
        .observe(start.elapsed().as_secs_f64());
}
