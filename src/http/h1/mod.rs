//! The plaintext HTTP/1.1 fast path: a small strict parser (`httparse`, in `parse`) and a body
//! writer that sends files with `sendfile(2)` (`zerocopy`), so body bytes never pass through
//! user space. This is what a CDN pull is; hyper cannot hand a body to sendfile, so this path
//! owns the socket.
//!
//! Per connection: wait for a request (idle: `keepalive_timeout`), read its head (at most
//! `max_header_bytes`, within `header_read_timeout`, else 431 / 408), answer with
//! [`handler::handle`] exactly like every other protocol, write the head, send the body, and
//! loop; pipelined requests are answered in order from the same buffer.
//!
//! Handed elsewhere or refused, precisely:
//! - an HTTP/2 connection preface (h2c prior knowledge) → the whole connection goes to hyper;
//! - a request with a `Content-Length` body is read here (`body`): as the handler pulls it,
//!   into buffers sized for the body or, for an upload that offers one, spliced into a pipe;
//!   `Expect: 100-continue` is answered on the first pull; a body the handler leaves unread
//!   closes the connection after the answer;
//! - a `Transfer-Encoding: chunked` body → the connection, this request's bytes included, goes
//!   to hyper, which decodes the body and answers `Expect: 100-continue` when the handler
//!   reads it, behind `gate`, which finds where each body ends and checks every later head
//!   with this module's parser before hyper reads it;
//! - a request line with another major version of HTTP → 505 and close (a higher HTTP/1 minor
//!   version is served as HTTP/1.1: `parse`);
//! - a transfer coding other than `chunked` → 501 and close; duplicate or conflicting
//!   `Content-Length`/`Transfer-Encoding`, a missing or repeated `Host` on HTTP/1.1, invalid
//!   header bytes → 400 and close (no request smuggling);
//! - a stalled reader: no send progress within `send_timeout` → close;
//! - a client gone (reset, closed) before it took an answer → the connection goes to hyper
//!   (behind `gate`) with the bytes buffered so far, answers discarded, so the requests it
//!   pipelined in full are still carried out (`socket::Prefixed::orphaned`).
//!
//! A body that cannot be completed (file changed, stream failed) ends the connection with a
//! reset: the client sees a short body against its `Content-Length`, or a chunked body without
//! its last chunk, never padding or bytes from another version.
//!
//! The refusals before the handler are one table (`answer`), which also answers the HTTP/1.1
//! heads hyper serves (over TLS, and after a hand-over here): `gate` reads and checks each of
//! them with this module's parser before hyper does.

mod answer;
mod body;
mod gate;
mod parse;
pub(crate) mod socket;
mod trim;
mod write;
mod zerocopy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::handler::{self, Proto, Reply};
use super::request_body::RequestBody;
use super::Record;
use crate::drain::Drain;
use crate::state::Shared;
use crate::store::Body;
use answer::{screen, Answer};
use body::LengthBody;
pub use gate::{HeadGate, HYPER_BACKSTOP};
use parse::{connection_close, expects_continue, read_head, Framing, Limits};
pub use socket::Prefixed;
use socket::{linger_close, reset};
use write::{head_bytes, write_simple, Delimit};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection does once one exchange (a request and its answer) is over.
enum Next {
    /// Keep the connection: wait for the next request, or answer one already buffered.
    Again,
    /// [`Next::Again`] after a write's answer (`socket::ack_now` again after
    /// `socket::REACK_AFTER` if the connection is still idle then).
    AgainAfterWrite,
    /// Close gracefully (shut down the write side).
    Close,
    /// Close after draining unread request bytes briefly, so the answer just written is not
    /// lost to a reset.
    Linger,
    /// Reset: a body could not be sent whole, and no client may take it as complete.
    Reset,
    /// The peer is gone (or never completed an HTTP/2 preface): just drop the socket.
    Gone,
    /// The peer went away (reset, closed) before taking an answer to a complete request: the
    /// requests it sent in full after it are still carried out, unanswered (`Prefixed`).
    Orphaned,
    /// Hand the connection, the bytes buffered so far included, to hyper (the label is the
    /// `segd_connections_open` protocol: "h2" for prior knowledge, "h1" for a request body).
    Hyper(&'static str),
}

/// Serves one accepted plaintext connection.
///
/// This future is what every keep-alive connection holds while idle, so it only waits: for the
/// first byte of the next request (within `keepalive_timeout`) or the drain. Everything a request
/// needs lives in [`exchange`]'s future, boxed per request and freed before the connection idles
/// again; the read buffer is allocated when bytes arrive and released when it is empty.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    hyper: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    drain: Drain,
) {
    let _ = stream.set_nodelay(true);
    // Connection-level settings come from the policy current at accept time.
    let cfg = Limits::from(&shared.load().config.server);
    let gauge = shared
        .runtime
        .metrics
        .connections_open
        .with_label_values(&["h1"]);
    gauge.inc();
    let mut buf = BytesMut::new();
    let mut stop = drain.signal();
    // Registered once for the connection's life, not re-armed per request.
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut first = true;
    // Armed after a write's answer.
    let mut reack = socket::Reack::default();
    // Whether the connection carried an upload: a drain waits longer for its next request.
    let mut uploaded = false;
    let next = loop {
        if buf.is_empty() {
            if buf.capacity() > 0 {
                buf = BytesMut::new();
            }
            // Draining: a request the client is already sending is still answered (with
            // `Connection: close`); see `drain::IDLE_GRACE` for why idle is not closed at once.
            let grace = if uploaded {
                crate::drain::UPLOAD_IDLE_GRACE
            } else {
                crate::drain::IDLE_GRACE
            }
            .min(cfg.keepalive_timeout);
            let idle_until = tokio::time::Instant::now() + cfg.keepalive_timeout;
            let ready = loop {
                if drain.is_stopping() {
                    break tokio::time::timeout(grace, stream.readable()).await;
                }
                tokio::select! {
                    r = tokio::time::timeout_at(idle_until, stream.readable()) => break r,
                    _ = &mut stopped => break tokio::time::timeout(grace, stream.readable()).await,
                    () = std::future::poll_fn(|cx| reack.poll_due(cx)), if reack.is_armed() => {
                        socket::ack_now(&stream);
                    }
                }
            };
            if !matches!(ready, Ok(Ok(()))) {
                break Next::Close;
            }
        }
        let next =
            boxed_in_place(|| exchange(&mut stream, &mut buf, first, peer, &shared, &cfg, &drain))
                .await;
        first = false;
        trim::request_done();
        // The next request's head is acknowledged on arrival, not when it is read.
        match next {
            Next::AgainAfterWrite => {
                uploaded = true;
                reack.arm(&stream);
            }
            _ => reack.disarm(),
        }
        if !matches!(next, Next::Again | Next::AgainAfterWrite) {
            break next;
        }
    };
    gauge.dec();
    match next {
        Next::Again | Next::AgainAfterWrite | Next::Close => {
            let _ = stream.shutdown().await;
        }
        Next::Linger => Box::pin(linger_close(stream)).await,
        // A body that could not be sent whole (file changed, stream failed, client stalled or
        // gone): reset, so queued bytes are dropped and no client mistakes it for complete.
        Next::Reset => reset(&stream),
        Next::Gone => {}
        Next::Hyper(label) => {
            let io = Prefixed::new(buf.freeze(), stream, label == "h1");
            let h1 = label == "h1";
            Box::pin(to_hyper(io, label, peer, shared, hyper, drain, h1)).await;
        }
        Next::Orphaned => {
            let io = Prefixed::orphaned(buf.freeze(), stream);
            Box::pin(to_hyper(io, "h1", peer, shared, hyper, drain, true)).await;
        }
    }
}

/// The future `make` returns, on the heap, built there rather than on the stack and copied:
/// `Box::pin` of an exchange copies its 8 KB (its state when suspended) on every request,
/// whatever the few bytes of its arguments.
fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: the slot was written just above.
    Box::into_pin(unsafe { slot.assume_init() })
}

/// One exchange: reads a request head (the first bytes when `buf` is empty), answers it with
/// [`handler::handle`] exactly like every other protocol, writes head and body, and says what the
/// connection does next. Pipelined requests stay in `buf` for the next exchange.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    first: bool,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    cfg: &Limits,
    drain: &Drain,
) -> Next {
    if buf.is_empty() {
        buf.reserve(4096);
        match tokio::time::timeout(cfg.header_read_timeout, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Next::Close,
        }
    }
    // HTTP/2 with prior knowledge: hand the connection, bytes read so far included, to hyper.
    if first && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
        // One deadline for the whole preface, not one per read: a byte every few seconds must
        // not hold the connection for 24 × header_read_timeout.
        let deadline = tokio::time::Instant::now() + cfg.header_read_timeout;
        while buf.len() < H2_PREFACE.len() {
            match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Next::Gone,
            }
        }
        if buf.starts_with(H2_PREFACE) {
            return Next::Hyper("h2");
        }
    }

    let metrics = &shared.runtime.metrics;
    let (head, consumed) = match read_head(stream, buf, cfg).await {
        Ok(h) => h,
        Err(e) => {
            return match Answer::to_head_error(&e) {
                Some(a) => answer(stream, metrics, a).await,
                None => Next::Close,
            }
        }
    };
    // Framing, transfer codings, target: refused here, before the handler (`answer::screen`).
    let screened = match screen(&head) {
        Ok(s) => s,
        Err(a) => return answer(stream, metrics, a).await,
    };
    let mut declared = match screened.framing {
        Framing::NoBody => 0,
        Framing::Length(n) => n,
        // hyper decodes `chunked` (and answers `Expect: 100-continue`) and takes the
        // connection from this request on, with the bytes read so far.
        Framing::Chunked => return Next::Hyper("h1"),
    };
    buf.advance(consumed);
    let write = matches!(head.method, Method::PUT | Method::POST | Method::DELETE);
    if buf.is_empty() {
        // The head is owned now: give the buffer back before the handler may wait (an open
        // on the blocking pool), so a burst of requests does not hold a buffer each.
        *buf = BytesMut::new();
    }
    let mut close = connection_close(&head) || drain.is_stopping();

    let start = Instant::now();
    let (path, query) = (screened.path, screened.query);
    let req = handler::Request {
        method: &head.method,
        path,
        query,
        headers: &head.headers,
        peer,
        proto: Proto::H1,
        http10: head.http10,
        tls: None,
        alt_svc: None,
    };
    if meaningless_body(&head, declared) {
        if let Err(next) = drop_body(stream, buf, &head, declared, cfg, metrics).await {
            return next;
        }
        declared = 0;
    }
    // One policy for the whole request, even if a reload swaps it meanwhile.
    let policy = shared.load();
    let mut interim_cut = false;
    let reply = if declared > 0 {
        // The handler reads the body from the connection as it goes; what it leaves unread
        // (a refusal) ends the connection after the answer.
        let mut body = LengthBody::new(stream, buf, declared, expects_continue(&head));
        let body_in = RequestBody::borrowed(Some(declared), &mut body);
        let mut reply = handler::handle(&shared.runtime, &policy, &req, body_in).await;
        reply.close |= !body.complete();
        interim_cut = body.interim_cut();
        reply
    } else {
        let handled = handler::handle(&shared.runtime, &policy, &req, RequestBody::none());
        // A request that may park (LL-HLS directives, a live path: preload hints) watches its
        // connection meanwhile: a client that goes away frees its slot at once.
        if handler::may_park(&policy, path, query) {
            tokio::select! {
                r = handled => r,
                () = socket::peer_closed(stream) => return Next::Gone,
            }
        } else {
            handled.await
        }
    };
    let Reply {
        status,
        mut headers,
        body,
        log,
        close: must_close,
    } = reply;
    close |= must_close;
    let cache = log.cache.unwrap_or(match body {
        Body::File(_) => "bypass",
        Body::Stream(_) => "stream",
        _ => "none",
    });
    let record = Record::new(&shared.runtime, &policy, &req, status, start, cache, log);
    if interim_cut {
        // Part of a `100 Continue` is on the wire (its write timed out): no answer can follow.
        record.finish(0, false);
        return Next::Reset;
    }
    // A stream of unknown length is chunked; HTTP/1.0 has no chunking, so the close ends it.
    // Then a body cut short (a growing segment whose upload failed) looks complete to the
    // client: no cache may keep it.
    let delimit = match (&body, head.http10) {
        (Body::Stream(s), _) if s.len.is_some() => Delimit::Length,
        (Body::Stream(_), true) => {
            close = true;
            headers.insert(http::header::CACHE_CONTROL, super::headers::NO_STORE);
            Delimit::Close
        }
        _ => Delimit::Chunked,
    };
    let chunked = matches!(&body, Body::Stream(s) if s.len.is_none()) && !head.http10;
    let head_out = head_bytes(status, &headers, close, head.http10, chunked);
    let stall = policy.config.server.send_timeout;
    let mut sent = 0;
    // An object whose bytes cannot be read is answered as an unavailable volume: probed again
    // within `volume_check_interval` (whole seconds, rounded up).
    let every = policy.config.server.volume_check_interval;
    let retry_after = (every.as_secs() + u64::from(every.subsec_nanos() > 0)).max(1);
    let how = Writing { stall, retry_after };
    let written = write_body(stream, head_out, body, delimit, how, &record, &mut sent).await;
    let mut record = record;
    let instead = (written.as_ref().err())
        .and_then(|e| e.get_ref())
        .and_then(|e| e.downcast_ref::<zerocopy::AnsweredInstead>())
        .map(|a| (a.0, a.1));
    if let Some((status, refusal)) = instead {
        record.answered_instead(status);
        if let Some(r) = refusal {
            Answer(r).count(&shared.runtime.metrics.refusals);
        }
    }
    let instead = instead.map(|(status, _)| status);
    // An aborted body logs and counts the bytes that did go out.
    record.finish(sent, written.is_ok() || instead.is_some());
    match (written, close, must_close) {
        // Another answer went out whole instead (a 503 saying `Connection: close`): closed
        // gracefully, so that the client reads it (a reset could drop it unread).
        (Err(_), _, _) if instead.is_some() => Next::Linger,
        // The client left without this answer; what it pipelined after is still carried out.
        (Err(e), false, _) if socket::peer_gone(&e) => Next::Orphaned,
        (Err(_), _, _) => Next::Reset,
        (Ok(_), true, true) => Next::Linger,
        (Ok(_), true, false) => Next::Close,
        (Ok(_), false, _) if write => Next::AgainAfterWrite,
        (Ok(_), false, _) => Next::Again,
    }
}

/// A small body where one means nothing (GET, HEAD, OPTIONS): it is read and dropped before
/// the handler, so the request is handled like one without (and may park watching its
/// connection). A larger one goes to the handler, which refuses it.
fn meaningless_body(head: &parse::Head, declared: u64) -> bool {
    declared > 0
        && declared <= handler::MAX_DISCARDED_BODY
        && matches!(head.method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Reads and drops a [`meaningless_body`]; `Err` says how the connection ends instead.
async fn drop_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head: &parse::Head,
    declared: u64,
    cfg: &Limits,
    metrics: &crate::metrics::Metrics,
) -> Result<(), Next> {
    let mut body = LengthBody::new(stream, buf, declared, expects_continue(head));
    let dropped = RequestBody::borrowed(Some(declared), &mut body)
        .discard(handler::MAX_DISCARDED_BODY, cfg.header_read_timeout)
        .await;
    if body.interim_cut() {
        return Err(Next::Reset);
    }
    match dropped {
        Ok(()) => Ok(()),
        Err(r) => Err(answer(stream, metrics, Answer(r)).await),
    }
}

/// Answers a head refused before the handler saw it (a refusal counted like the handler's),
/// then closes: lingering, so the answer is not lost to a reset, unless the client was too slow
/// to wait for.
async fn answer(stream: &mut TcpStream, metrics: &crate::metrics::Metrics, a: Answer) -> Next {
    a.count(&metrics.refusals);
    let (status, body) = a.status_body();
    let _ = write_simple(stream, status, body).await;
    if a.lingers() {
        Next::Linger
    } else {
        Next::Close
    }
}

/// Hands the connection to hyper with the bytes read so far (`label`: the
/// `segd_connections_open` protocol); `gated`: behind a [`HeadGate`].
async fn to_hyper(
    io: Prefixed,
    label: &'static str,
    peer: SocketAddr,
    shared: Arc<Shared>,
    hyper: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    drain: Drain,
    gated: bool,
) {
    let conn = super::service::Conn {
        peer,
        proto: label,
        tls: None,
        alt_svc: None,
        peer_gone: Some(io.gone_flag()),
        writes: (label == "h1").then(|| io.writes_flag()),
        socket: Some(io.raw_fd()),
    };
    if gated {
        // HTTP/1.1 (a chunked body, or a client gone): every head from this one on is read and
        // checked by this module's parser before hyper reads it, as over TLS (`gate`).
        let io = HeadGate::new(
            io,
            &shared.load().config.server,
            shared.runtime.metrics.refusals.clone(),
            false,
        );
        super::service::serve_io(io, conn, shared, hyper, drain).await;
    } else {
        super::service::serve_io(io, conn, shared, hyper, drain).await;
    }
}

/// How a response is written: `send_timeout`, and the `Retry-After` of the answer that goes
/// out instead when the body's bytes cannot be read.
#[derive(Clone, Copy)]
struct Writing {
    stall: std::time::Duration,
    retry_after: u64,
}

/// Writes head and body; returns the body bytes sent.
async fn write_body(
    stream: &mut TcpStream,
    mut head: Vec<u8>,
    body: Body,
    delimit: Delimit,
    how: Writing,
    record: &Record,
    sent: &mut u64,
) -> std::io::Result<()> {
    let Writing { stall, retry_after } = how;
    let first_byte = || record.head_sent();
    match body {
        Body::Empty => {
            write::write_all_timeout(stream, &head, stall).await?;
            first_byte();
        }
        Body::Bytes(b) => {
            head.extend_from_slice(&b);
            write::write_all_timeout(stream, &head, stall).await?;
            first_byte();
            *sent = b.len() as u64;
        }
        Body::File(range) if range.small && range.len <= zerocopy::SMALL_COPY => {
            let n = zerocopy::write_small(stream, head, &range, stall).await?;
            first_byte();
            *sent = n;
        }
        Body::File(range) => {
            zerocopy::send_file(stream, &head, &range, stall, first_byte, sent, retry_after).await?
        }
        Body::Stream(s) => {
            write::write_stream(stream, &head, s.inner, delimit, stall, first_byte, sent).await?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thousands of idle keep-alive connections each hold one of these futures: everything a
    /// request needs is boxed per request (`exchange`), so the idle state is what it costs. Debug
    /// builds measure 776 bytes (1,520 before the request phase was boxed); release is smaller.
    #[test]
    fn connection_future_is_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let c = TcpStream::connect(l.local_addr().expect("addr"))
                .await
                .expect("connect");
            let cfg = crate::config::Config::parse(
                "[[volumes]]\npath = \"/\"\n",
                std::path::Path::new("/x.toml"),
            )
            .expect("cfg");
            let runtime = Arc::new(crate::runtime::Runtime::new(&cfg).expect("runtime"));
            let policy =
                crate::policy::Policy::new(Arc::new(cfg.clone()), &runtime).expect("policy");
            let shared = Arc::new(Shared::new(runtime, policy));
            let hyper = Arc::new(super::super::service::builder(&cfg));
            let ctl = crate::drain::Controller::new();
            let fut = serve(
                c,
                "127.0.0.1:1".parse().expect("addr"),
                shared,
                hyper,
                ctl.drain(),
            );
            let size = std::mem::size_of_val(&fut);
            assert!(size <= 1024, "connection future is {size} bytes");
        });
    }
}
