//! HTTP/3 over quinn: the h3 crate parses requests and frames responses; every request goes
//! through [`handler::handle`] like HTTP/1.1 and HTTP/2, with its body (DATA frames, decoded by
//! h3) as a [`RequestBody`]. Response bodies are store bodies as chunks, like the hyper paths'
//! (whole objects from the hot-body cache, larger ones read in chunks, streams as they come).
//!
//! Back-pressure: a body goes to quinn in pieces of at most [`PIECE`] bytes (slices of its
//! chunks, no copy), each handed over only when the previous one fit into the stream's
//! flow-control credit and the connection's send window. So what a connection holds is quinn's
//! send window plus, per stream, the chunk it is sending (at most `io::CHUNK` read from disk; a
//! hot-cache object is the cache's own memory), never a whole file read ahead.
//!
//! `send_timeout` measures a lack of progress, not how long a body takes: a write fails only
//! when, for `send_timeout`, quinn took no byte of this stream nor of any other of the
//! connection and the client acknowledged no packet (a stream waiting its turn behind others
//! that flow is not stalled; see [`transport::Progress`]). Then the client accepts nothing at
//! all, and the connection is closed, as HTTP/1.1 and HTTP/2 close theirs: its streams' buffers
//! go at once (resetting the streams one at a time would free the window for the next one to
//! fill, holding the memory for a `send_timeout` per stream). A body that cannot be completed
//! (file truncated, device error) resets the stream instead of finishing it, so no client
//! mistakes a short body for a whole one.
//!
//! Limits: request heads within `header_read_timeout` and `max_header_bytes` (h3 answers 431),
//! concurrent requests by QUIC stream credit (`h3_max_concurrent_streams`), and a connection that
//! cancels requests in bulk (the HTTP/3 form of HTTP/2's rapid reset) is closed with
//! `H3_EXCESSIVE_LOAD`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures_util::{FutureExt, StreamExt};
use h3::error::{Code, StreamError};

use super::h3_transport::{
    self as transport, Accepted, BodyChunk, Progress, Stopped, StreamExtras,
};
use super::handler::{self, Proto};
use super::request_body::{declared_length, expects_continue, RequestBody};
use super::Record;
use crate::drain::Drain;
use crate::state::Shared;
use crate::store::{Body, ByteStream};

type H3Conn = h3::server::Connection<transport::Connection, Bytes>;
type SendHalf = h3::server::RequestStream<transport::SendStream<Bytes>, Bytes>;
type RecvHalf = h3::server::RequestStream<transport::RecvStream, Bytes>;

/// Cancelled requests allowed per connection in one window before it counts as an attack.
const CANCEL_WINDOW: Duration = Duration::from_secs(10);

/// The most of a body handed to quinn at once (one DATA frame). quinn takes a write as far as
/// the windows allow, so one large write lets a stream take the whole send window while the
/// others wait; pieces interleave streams and let a stream's progress be seen per piece.
const PIECE: usize = 64 << 10;

/// Counts requests the client cancelled (reset or stopped before the response completed), per
/// window of `CANCEL_WINDOW`. Touched only when a request is cancelled.
struct Cancels {
    epoch: Instant,
    /// (window number, cancels in it).
    seen: std::sync::Mutex<(u64, u32)>,
    limit: u32,
}

impl Cancels {
    fn new(limit: u32) -> Cancels {
        Cancels {
            epoch: Instant::now(),
            seen: std::sync::Mutex::new((0, 0)),
            limit,
        }
    }

    /// Notes one cancel; true exactly when this window's count passes the limit.
    fn note(&self) -> bool {
        let window = self.epoch.elapsed().as_secs() / CANCEL_WINDOW.as_secs();
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if seen.0 != window {
            *seen = (window, 0);
        }
        seen.1 = seen.1.saturating_add(1);
        seen.1 == self.limit.saturating_add(1)
    }
}

/// Serves one QUIC connection until the client closes it, it idles out, or a drain finishes it
/// (GOAWAY, then in-flight requests complete).
pub async fn serve(conn: quinn::Connection, shared: Arc<Shared>, drain: Drain) {
    let peer = conn.remote_address();
    let policy = shared.load();
    let gauge = shared
        .runtime
        .metrics
        .connections_open
        .with_label_values(&["h3"]);
    gauge.inc();
    let max_head = policy.config.server.max_header_bytes as u64;
    // A player seeking cancels a few requests; thousands in seconds is an attack.
    let cancels = Arc::new(Cancels::new(
        policy.config.server.h3_max_concurrent_streams.max(50) * 4,
    ));
    drop(policy);
    let accepted = Accepted::default();
    let progress = Progress::new();
    let built = h3::server::builder()
        .max_field_section_size(max_head)
        .build::<_, Bytes>(transport::Connection::new(
            conn.clone(),
            accepted.clone(),
            progress.clone(),
        ))
        .await;
    let mut h3: H3Conn = match built {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            gauge.dec();
            return;
        }
    };
    // Each request task holds a sender; the receiver sees `None` once all have finished.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut alive = Some(alive);
    let mut stop = drain.signal();
    loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    // The stop signal and body slot of exactly this stream (see `h3_transport`).
                    let extras = accepted.take();
                    let Some(tx) = alive.clone() else { continue };
                    let (shared, conn, cancels, progress) = (
                        Arc::clone(&shared),
                        conn.clone(),
                        Arc::clone(&cancels),
                        progress.clone(),
                    );
                    tokio::spawn(async move {
                        let on = Conn {
                            peer,
                            conn: &conn,
                            cancels: &cancels,
                            progress: &progress,
                        };
                        request(resolver, extras, &shared, on).await;
                        drop(tx);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            _ = stop.wait(), if alive.is_some() => {
                // GOAWAY: no new requests; the accepted ones finish below. Its stream ID is
                // the first one not processed (RFC 9114 §5.2), one past the last accepted (h3
                // counts from the last accepted: `shutdown(0)` named that one, in progress,
                // as not processed, inviting the client to send it again elsewhere).
                let _ = h3.shutdown(1).await;
                alive = None;
            }
            _ = all_done.recv(), if alive.is_none() => break,
        }
    }
    drop(alive);
    if drain.is_stopping() {
        // Let the in-flight requests finish, then the bytes quinn still buffers for them reach
        // the client (closing discards them), then close cleanly.
        while all_done.recv().await.is_some() {}
        tokio::select! {
            _ = conn.closed() => {}
            _ = quiet(&conn) => conn.close(
                quinn::VarInt::from_u32(Code::H3_NO_ERROR.value() as u32),
                b"shutting down",
            ),
        }
    }
    gauge.dec();
}

/// Resolves once the connection has sent nothing for a few round trips: the responses the
/// request tasks handed to quinn have been delivered (a client that reads keeps the flow going;
/// the drain timeout bounds a client that does not).
async fn quiet(conn: &quinn::Connection) {
    let step = Duration::from_millis(25);
    let mut last = conn.stats().udp_tx.datagrams;
    let mut still = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let window = (conn.rtt() * 4).max(Duration::from_millis(250));
        let now = conn.stats().udp_tx.datagrams;
        if now == last {
            still += step;
            if still >= window {
                return;
            }
        } else {
            last = now;
            still = Duration::ZERO;
        }
    }
}

/// What a request task knows of its connection.
struct Conn<'a> {
    peer: SocketAddr,
    conn: &'a quinn::Connection,
    cancels: &'a Cancels,
    progress: &'a Progress,
}

/// One request stream: head (within the timeout), the handler (with the request body), then
/// the response body.
async fn request(
    resolver: h3::server::RequestResolver<transport::Connection, Bytes>,
    extras: Option<StreamExtras>,
    shared: &Shared,
    on: Conn<'_>,
) {
    let Conn {
        peer,
        conn,
        cancels,
        progress,
    } = on;
    let policy = shared.load();
    let runtime = &shared.runtime;
    let head_timeout = policy.config.server.header_read_timeout;
    let (req, stream) = match tokio::time::timeout(head_timeout, resolver.resolve_request()).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            // h3 has answered what it could (431, H3_MESSAGE_ERROR); a reset counts as a cancel.
            match e {
                StreamError::RemoteTerminate { .. } => cancelled(shared, conn, cancels),
                StreamError::HeaderTooBig { .. } => head_too_big(shared, peer),
                _ => {}
            }
            tracing::debug!(%peer, error = %e, "HTTP/3 request refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP/3 request head timed out");
            return;
        }
    };
    let start = Instant::now();
    let (stopped, offer) = match extras {
        Some(x) => (Some(x.stopped), Some(x.body)),
        None => (None, None),
    };
    let (mut stream, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let hreq = handler::Request {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        peer,
        proto: Proto::H3,
        http10: false,
        tls: Some("1.3"),
        alt_svc: None,
    };
    // h3 decodes the framing but does not hold the body to its declared length: the body
    // does (an invalid length fails it, a body that disagrees with it fails at its end).
    // `Expect: 100-continue`: the 100 goes out when the handler first pulls the body, as on
    // HTTP/1.1, so a request refused before that never gets one.
    let (pulled, first_pull) = if expects_continue(&parts.headers) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let body = match declared_length(&parts.headers) {
        Ok(declared) => RequestBody::new(declared, request_body(recv, pulled)),
        Err(()) => RequestBody::invalid_length(),
    };
    // A request that may park (LL-HLS directives, a live path) is dropped when its client goes
    // away — the connection closes, or the client cancels just this request (STOP_SENDING on
    // the response direction, RFC 9114 §4.1.1) — so a parked request frees its slot at once.
    let may_park = hreq.query.is_some_and(|q| q.contains("HLS_"))
        || policy
            .config
            .live
            .prefixes
            .iter()
            .any(|p| hreq.path.contains(p.as_str()));
    let send_timeout = policy.config.server.send_timeout;
    let handled = async {
        // h3 compares only the first `Host` with `:authority`: a second one that disagrees
        // passed (RFC 9114 §4.3.1: the same value). The HTTP/2 rule covers both.
        if super::headers::values_trimmed(&parts.headers)
            && super::headers::target_ok(&parts.uri)
            && super::headers::h2_authority_ok(parts.uri.authority(), &parts.headers)
        {
            handler::handle(runtime, &policy, &hreq, body).await
        } else {
            handler::refused(runtime, &policy, &hreq, super::refusal::Refusal::Malformed)
        }
    };
    let handled = with_interim(handled, first_pull, &mut stream, send_timeout);
    let reply = if may_park {
        tokio::select! {
            r = handled => r,
            code = client_gone(stopped, conn) => {
                if code.is_some() {
                    cancelled(shared, conn, cancels);
                }
                tracing::debug!(%peer, ?code, "HTTP/3 client went away while its request waited");
                return;
            }
        }
    } else {
        handled.await
    };
    // The cache status of the body as the handler gave it (the first piece's read makes it a
    // stream), or of the refusal that replaced it.
    let cache = reply.log.cache.unwrap_or_else(|| reply.body.cache_status());
    let status = reply.status;
    let reply = handler::with_first_piece(runtime, &policy, &hreq, reply, false).await;
    let cache = if reply.status == status {
        cache
    } else {
        reply.log.cache.unwrap_or_else(|| reply.body.cache_status())
    };
    let record = Record::new(
        runtime,
        &policy,
        &hreq,
        reply.status,
        start,
        cache,
        reply.log,
    );
    let mut resp = http::Response::new(());
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    // hyper dates its answers itself; over HTTP/3 segd does (RFC 9110 §6.6.1).
    resp.headers_mut()
        .insert(http::header::DATE, super::headers::date());
    let mut sent = 0u64;
    let watch = Watch {
        conn,
        progress,
        send_timeout,
    };
    let outcome = match progressing(stream.send_response(resp), &watch).await {
        Ok(Ok(())) => {
            record.head_sent();
            let offer = offer.as_ref();
            send_body(&mut stream, offer, &watch, reply.body, &mut sent).await
        }
        Ok(Err(e)) => Err(Ended::Stream(e)),
        Err(stalled) => Err(stalled),
    };
    let complete = outcome.is_ok();
    match outcome {
        Ok(()) => {}
        Err(Ended::Stream(e)) => {
            if matches!(e, StreamError::RemoteTerminate { .. }) {
                cancelled(shared, conn, cancels);
            }
            tracing::debug!(%peer, error = %e, "HTTP/3 response not completed");
        }
        Err(Ended::Stalled) => {
            // No stream of the connection moved for send_timeout: the client accepts nothing.
            stream.stop_stream(Code::H3_REQUEST_CANCELLED);
            conn.close(
                quinn::VarInt::from_u32(Code::H3_NO_ERROR.value() as u32),
                b"no response bytes accepted for send_timeout",
            );
            tracing::debug!(%peer, "HTTP/3 client accepted nothing for send_timeout; connection closed");
        }
        Err(Ended::Body(e)) => {
            // Never finish a stream whose body came up short: reset it.
            stream.stop_stream(Code::H3_INTERNAL_ERROR);
            tracing::warn!(%peer, path = parts.uri.path(), error = %e, "HTTP/3 body failed; stream reset");
        }
    }
    record.finish(sent, complete);
}

/// Resolves when the client cancelled the request (`Some(code)` of its STOP_SENDING) or its
/// connection is gone (`None`).
async fn client_gone(stopped: Option<Stopped>, conn: &quinn::Connection) -> Option<u64> {
    match stopped {
        Some(stopped) => stopped.await,
        None => {
            conn.closed().await;
            None
        }
    }
}

/// Runs the handler; if `first_pull` fires (the handler pulled the body of a request that asked
/// for a 100), sends the interim `100 Continue` on the response side meanwhile. h3 writes it as
/// a HEADERS frame before the final one (RFC 9114 §4.1).
async fn with_interim(
    handled: impl std::future::Future<Output = handler::Reply>,
    first_pull: Option<tokio::sync::oneshot::Receiver<()>>,
    stream: &mut SendHalf,
    timeout: Duration,
) -> handler::Reply {
    let Some(first_pull) = first_pull else {
        return handled.await;
    };
    tokio::pin!(handled);
    tokio::select! {
        biased;
        reply = &mut handled => return reply,
        pulled = first_pull => {
            if pulled.is_ok() {
                let mut interim = http::Response::new(());
                *interim.status_mut() = http::StatusCode::CONTINUE;
                match tokio::time::timeout(timeout, stream.send_response(interim)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "HTTP/3 100 Continue not sent"),
                    Err(_) => tracing::debug!("HTTP/3 100 Continue not sent within send_timeout"),
                }
            }
        }
    }
    handled.await
}

/// The request stream's DATA frames as a body stream (h3 decodes the framing). `pulled`, if
/// given, is told when the body is first pulled.
fn request_body(recv: RecvHalf, pulled: Option<tokio::sync::oneshot::Sender<()>>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (Some(recv), pulled),
        |(recv, pulled)| async move {
            if let Some(p) = pulled {
                let _ = p.send(());
            }
            let mut recv = recv?;
            match recv.recv_data().await {
                Ok(Some(mut data)) => {
                    let b = data.copy_to_bytes(data.remaining());
                    Some((Ok(b), (Some(recv), None)))
                }
                // The body's end: its trailers, if any, are read (and dropped) so that a
                // malformed trailer section fails the body (h3 refuses pseudo-header fields
                // there: vendor/h3/SEGD-PATCH.md).
                Ok(None) => match recv.recv_trailers().await {
                    Ok(_) => None,
                    Err(e) => Some((Err(std::io::Error::other(e)), (None, None))),
                },
                Err(e) => Some((Err(std::io::Error::other(e)), (None, None))),
            }
        },
    ))
}

enum Ended {
    Stream(StreamError),
    Stalled,
    Body(std::io::Error),
}

/// Sends `body` in pieces of at most [`PIECE`] bytes (slices of its chunks); each piece is first
/// offered to the transport, which then gives it to quinn without a copy.
async fn send_body(
    stream: &mut SendHalf,
    offer: Option<&BodyChunk>,
    watch: &Watch<'_>,
    body: Body,
    sent: &mut u64,
) -> Result<(), Ended> {
    let expected = body.known_len();
    if let Some(mut chunks) = body.into_stream(false) {
        while let Some(chunk) = chunks.next().await {
            let mut rest = chunk.map_err(Ended::Body)?;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(PIECE));
                let n = piece.len() as u64;
                if let Some(o) = offer {
                    o.offer(&piece);
                }
                match progressing(stream.send_data(piece), watch).await {
                    Ok(Ok(())) => *sent += n,
                    Ok(Err(e)) => return Err(Ended::Stream(e)),
                    Err(stalled) => return Err(stalled),
                }
            }
        }
    }
    if expected.is_some_and(|l| l != *sent) {
        return Err(Ended::Body(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "body ended short of its length",
        )));
    }
    match progressing(stream.finish(), watch).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended::Stream(e)),
        Err(stalled) => Err(stalled),
    }
}

/// Runs `write` (a write that waits for the client's credit) to its end, unless the connection
/// makes no progress ([`Progress`]: quinn takes no byte of this stream or another, no ACK
/// arrives) for `send_timeout` from the write's start or the connection's last progress,
/// whichever is later: then `Ended::Stalled`. ACKs are looked at every quarter `send_timeout`,
/// so a stall is seen within 1.25 × `send_timeout`.
async fn progressing<T>(
    write: impl std::future::Future<Output = T>,
    watch: &Watch<'_>,
) -> Result<T, Ended> {
    tokio::pin!(write);
    // Most writes fit at once: no timer for them.
    if let Some(done) = write.as_mut().now_or_never() {
        return Ok(done);
    }
    let since = tokio::time::Instant::now();
    let step = watch.send_timeout / 4;
    loop {
        tokio::select! {
            done = &mut write => return Ok(done),
            _ = tokio::time::sleep(step) => {
                watch.progress.check(watch.conn);
                let deadline = watch.progress.last().max(since) + watch.send_timeout;
                if deadline <= tokio::time::Instant::now() {
                    return Err(Ended::Stalled);
                }
            }
        }
    }
}

/// What a response's writes are watched with.
struct Watch<'a> {
    conn: &'a quinn::Connection,
    progress: &'a Progress,
    send_timeout: Duration,
}

/// Records the 431 h3 sent for a head over `max_header_bytes` (method and path unknown: the
/// head was never decoded).
fn head_too_big(shared: &Shared, peer: SocketAddr) {
    let (method, headers) = (http::Method::from_bytes(b"-"), http::HeaderMap::new());
    let Ok(method) = method else { return };
    let req = handler::Request {
        method: &method,
        path: "",
        query: None,
        headers: &headers,
        peer,
        proto: Proto::H3,
        http10: false,
        tls: Some("1.3"),
        alt_svc: None,
    };
    Record::new(
        &shared.runtime,
        &shared.load(),
        &req,
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Instant::now(),
        "none",
        handler::LogInfo::default(),
    )
    .finish(0, true);
}

/// Counts a cancelled request; past the limit the whole connection is closed.
fn cancelled(shared: &Shared, conn: &quinn::Connection, cancels: &Cancels) {
    if cancels.note() {
        shared.runtime.metrics.h3_rapid_reset_closes.inc();
        tracing::warn!(peer = %conn.remote_address(), "HTTP/3 client cancelled too many requests; closing with H3_EXCESSIVE_LOAD");
        conn.close(
            quinn::VarInt::from_u32(Code::H3_EXCESSIVE_LOAD.value() as u32),
            b"too many cancelled requests",
        );
    }
}
