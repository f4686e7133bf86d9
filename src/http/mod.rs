//! HTTP front ends. `handler` decides every response; the other modules only move bytes:
//! `h1` is the plaintext HTTP/1.1 fast path (httparse + sendfile), `service` adapts hyper
//! (h2c handed over from `h1`, HTTP/1.1 with request bodies, and TLS), `h3` serves HTTP/3 over
//! quinn (`h3_transport` puts h3 on quinn's streams), and `body` adapts store bodies for hyper.
//!
//! Every protocol records each request exactly once, after its body has ended (sent whole,
//! failed, or abandoned by the client): [`Record`] is made when the head is decided and
//! [`Record::finish`]ed by the writer.

pub mod body;

/// The last second an HTTP date can name (9999-12-31T23:59:59Z, Unix seconds).
pub const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// `t` as an HTTP date (RFC 9110 §5.6.7), a time past the year 9999 (a file's mtime from a
/// broken clock, restored metadata) as the last date one can name: `httpdate` panics on it.
pub fn http_date(t: std::time::SystemTime) -> String {
    let last = std::time::UNIX_EPOCH + std::time::Duration::from_secs(LAST_HTTP_DATE);
    httpdate::fmt_http_date(t.min(last))
}

/// [`http_date`] as a header value, formatted once per second per thread (`Last-Modified` of
/// a file written this second, as `Date` is).
pub fn http_date_value(t: std::time::SystemTime) -> http::HeaderValue {
    headers::date_value(t)
}
pub mod conditional;
mod conn_watch;
pub mod h1;
pub mod h3;
mod h3_transport;
pub mod handler;
mod headers;
mod live;
pub mod range;
pub mod refusal;
pub mod request_body;
pub(crate) mod rewrite;
pub mod service;
mod write;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::policy::Policy;
use crate::runtime::Runtime;
use handler::{LogInfo, Proto, Request};

/// One request's metrics and access-log line, waiting for its body to end.
pub struct Record {
    runtime: Arc<Runtime>,
    policy: Arc<Policy>,
    /// Index into the pre-resolved (method, status class, proto) counters.
    handle: usize,
    proto: Proto,
    start: Instant,
    /// Set when the access log is on: the line's fields, owned.
    line: Option<Box<Line>>,
}

struct Line {
    client: IpAddr,
    peer: SocketAddr,
    method: http::Method,
    path: String,
    status: u16,
    http10: bool,
    tls: Option<&'static str>,
    cache: &'static str,
    key_id: Option<String>,
    request_id: String,
    user_agent: Option<String>,
    referer: Option<String>,
}

impl Record {
    /// Starts the record of `req`, answered with `status`; `start` is when its head was read.
    pub fn new(
        runtime: &Arc<Runtime>,
        policy: &Arc<Policy>,
        req: &Request<'_>,
        status: http::StatusCode,
        start: Instant,
        cache: &'static str,
        log: LogInfo,
    ) -> Record {
        let mi = match *req.method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            http::Method::OPTIONS => 2,
            http::Method::PUT => 3,
            http::Method::POST => 4,
            http::Method::DELETE => 5,
            _ => 6,
        };
        let ci = class_index(status);
        let pi = match req.proto {
            Proto::H1 => 0,
            Proto::H2 => 1,
            Proto::H3 => 2,
        };
        let line = policy.access.enabled().then(|| {
            // Never the token: the path-embedded segment is split off, the query not logged,
            // and a token segment anywhere else (a 400) redacted, as in the Referer.
            let name = policy.auth.name();
            let path = log.path.unwrap_or_else(|| {
                let raw = crate::auth::split_path_token(name, req.path).path;
                let mut end = raw.len().min(1024);
                while !raw.is_char_boundary(end) {
                    end -= 1;
                }
                raw[..end].to_string()
            });
            let path = crate::access::redact_path(name, &path);
            let header = |n: http::header::HeaderName| {
                req.headers
                    .get(n)
                    .map(|v| crate::access::header_text(v.as_bytes()))
            };
            Box::new(Line {
                client: policy.auth.client_ip(req.headers, req.peer.ip()),
                peer: req.peer,
                method: req.method.clone(),
                path,
                status: status.as_u16(),
                http10: req.http10,
                tls: req.tls,
                cache,
                key_id: log.key_id,
                request_id: crate::access::request_id(req.headers),
                user_agent: header(http::header::USER_AGENT),
                referer: header(http::header::REFERER).map(|r| crate::access::redact_url(name, &r)),
            })
        });
        Record {
            runtime: Arc::clone(runtime),
            policy: Arc::clone(policy),
            handle: (mi * 5 + ci) * 3 + pi,
            proto: req.proto,
            start,
            line,
        }
    }

    /// The answer that went out was not the one prepared: nothing of it was sent, and this
    /// status was (a small body that could not be read: 503).
    pub fn answered_instead(&mut self, status: http::StatusCode) {
        let (mi, pi) = (self.handle / 15, self.handle % 3);
        self.handle = (mi * 5 + class_index(status)) * 3 + pi;
        if let Some(l) = &mut self.line {
            l.status = status.as_u16();
        }
    }

    /// The response head is on its way: the time-to-first-byte phase.
    pub fn head_sent(&self) {
        self.runtime
            .metrics
            .ttfb
            .observe(self.start.elapsed().as_secs_f64());
    }

    /// The body ended: `bytes` went out, `complete` says whether it reached its end.
    pub fn finish(self, bytes: u64, complete: bool) {
        let m = &self.runtime.metrics;
        if let Some(c) = m.request_handles.get(self.handle) {
            c.inc();
        }
        let pi = match self.proto {
            Proto::H1 => 0,
            Proto::H2 => 1,
            Proto::H3 => 2,
        };
        if let Some(c) = m.byte_handles.get(pi) {
            c.inc_by(bytes);
        }
        let elapsed = self.start.elapsed();
        m.total_time.observe(elapsed.as_secs_f64());
        if let Some(l) = self.line {
            self.policy.access.log(&crate::access::Entry {
                time: SystemTime::now(),
                client: l.client,
                peer: l.peer,
                method: l.method.as_str(),
                path: &l.path,
                status: l.status,
                bytes,
                duration: elapsed,
                proto: self.proto.as_str(),
                http10: l.http10,
                tls: l.tls,
                cache: l.cache,
                key_id: l.key_id.as_deref(),
                request_id: &l.request_id,
                user_agent: l.user_agent.as_deref(),
                referer: l.referer.as_deref(),
                complete,
            });
        }
    }
}

/// A status's class, as the request counters are indexed.
fn class_index(status: http::StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
