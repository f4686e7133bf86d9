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
    let mi = match *method {
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
