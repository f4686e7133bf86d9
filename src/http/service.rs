//! hyper glue: TLS connections (HTTP/1.1 and HTTP/2 by ALPN), h2c and HTTP/1.1 connections
//! with request bodies (both handed over by the plaintext fast path in `h1`).
//!
//! Per request: convert to [`handler::Request`] with its body, call [`handler::handle`], convert
//! the [`Reply`] to a hyper response whose body finishes the request's [`Record`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::Interest;

use super::body::HyperBody;
use super::conn_watch::{ConnWatch, InFlight, Verdict};
use super::handler::{self, Proto};
use super::headers;
use super::refusal::Refusal;
use super::request_body::RequestBody;
use super::Record;
use crate::drain::{Drain, Stop};
use crate::state::Shared;

/// The hyper connection builder configured from `[server]`.
///
/// HTTP/1.1 half-close is on: a request whose client shut down its sending side (or, over TLS,
/// sent `close_notify`) right after it is still carried out. Uploaders do that: ffmpeg closes
/// right after its last byte, over TLS with a `close_notify` in the same flight, and a complete
/// body must still be committed, a DELETE still done. Without it hyper drops the request being
/// served when it reads that end of the stream. hyper then does not read while it serves a
/// request, so a parked LL-HLS request watches its socket itself ([`peer_closed`]): a client
/// that goes away still frees its slot at once.
pub fn builder(config: &crate::config::Config) -> auto::Builder<TokioExecutor> {
    let s = &config.server;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .half_close(true)
        .header_read_timeout(s.header_read_timeout)
        // hyper refuses a buffer below 8 KiB; heads over the limit get 431.
        .max_buf_size(s.max_header_bytes.max(8192));
    // hyper's own count is 100, on the stack; another costs a heap array per request.
    if s.max_header_fields != 100 {
        b.http1().max_headers(s.max_header_fields);
    }
    // Rapid reset (CVE-2023-44487): a client that opens and cancels streams faster than they
    // are served is sent GOAWAY once 20 resets are pending; locally refused streams are capped too.
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(s.keepalive_timeout / 2))
        .keep_alive_timeout(s.keepalive_timeout);
    b
}

/// What a connection tells every request on it.
pub struct Conn {
    pub peer: SocketAddr,
    /// `h1` or `h2`: the `segd_connections_open` label (from ALPN, or the h2c preface).
    pub proto: &'static str,
    /// The TLS version, for TLS connections.
    pub tls: Option<&'static str>,
    /// `Alt-Svc` for every response (TLS listeners with HTTP/3 on).
    pub alt_svc: Option<http::HeaderValue>,
    /// Set once the client is gone (plaintext HTTP/1.1, `h1::Prefixed`): the requests it sent
    /// in full are still read, but only writes are carried out; nobody takes the answers.
    pub peer_gone: Option<Arc<AtomicBool>>,
    /// Set when a request on the connection is a write (HTTP/1.1 beneath `h1::Prefixed`):
    /// the kernel is then told to acknowledge the next request's head at once after each
    /// answer (`h1::socket::ack_now`), and a drain waits longer for its next request
    /// (`drain::UPLOAD_IDLE_GRACE`).
    pub writes: Option<Arc<AtomicBool>>,
    /// The connection's socket, watched while an HTTP/1.1 request parks ([`peer_closed`]).
    /// hyper does not read an HTTP/1.1 connection while it serves a request (half-close is on),
    /// so it would not notice a client that left.
    pub socket: Option<RawFd>,
}

/// Serves one connection with hyper (HTTP/1.1 or HTTP/2, detected from the preface) until it
/// closes or the drain asks it to finish.
pub async fn serve_io<I>(
    io: I,
    conn: Conn,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    drain: Drain,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        proto,
        tls,
        alt_svc,
        peer_gone,
        writes,
        socket,
    } = conn;
    let gauge = shared
        .runtime
        .metrics
        .connections_open
        .with_label_values(&[proto]);
    gauge.inc();
    let (grace, upload_grace, send_timeout, idle_timeout) = {
        let s = &shared.load().config.server;
        (
            crate::drain::IDLE_GRACE.min(s.keepalive_timeout),
            crate::drain::UPLOAD_IDLE_GRACE.min(s.keepalive_timeout),
            s.send_timeout,
            s.keepalive_timeout,
        )
    };
    // Whether the connection carried an upload: a drain waits longer for its next request.
    let uploaded = writes.clone();
    let draining = drain.signal();
    let watch = ConnWatch::new();
    let requests = Arc::clone(&watch);
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let shared = Arc::clone(&shared);
        let alt_svc = alt_svc.clone();
        let draining = draining.clone();
        let gone = peer_gone
            .as_ref()
            .is_some_and(|g| g.load(Ordering::Relaxed));
        let write = matches!(req.method(), &Method::PUT | &Method::POST | &Method::DELETE);
        if let (true, Some(w)) = (write, &writes) {
            w.store(true, Ordering::Relaxed);
        }
        // In flight from here: a handler that is still working is not an idle connection.
        let in_flight = requests.start();
        async move {
            if gone && !write {
                return Ok::<_, Infallible>(hyper::Response::new(HyperBody::unrecorded()));
            }
            let at = At {
                peer,
                tls,
                alt_svc: alt_svc.as_ref(),
                draining: &draining,
            };
            // Only a read parks; a write must go on if its client leaves (a complete body is
            // committed, a DELETE done).
            let watched = socket.filter(|_| {
                req.version() != http::Version::HTTP_2
                    && matches!(req.method(), &Method::GET | &Method::HEAD)
                    && handler::may_park(&shared.load(), req.uri().path(), req.uri().query())
            });
            let Some(fd) = watched else {
                return Ok::<_, Infallible>(respond(&shared, at, in_flight, req).await);
            };
            tokio::select! {
                resp = respond(&shared, at, in_flight, req) => Ok(resp),
                () = peer_closed(fd) => {
                    // Nobody takes the answer: the request is dropped, its slot freed.
                    Ok(hyper::Response::new(HyperBody::unrecorded()))
                }
            }
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut stop = drain.signal();
    // Whether hyper finished the connection (rather than it being given up on).
    let finished = tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            true
        }
        verdict = watch.verdict(send_timeout, idle_timeout) => match verdict {
            // Closed at once, as the HTTP/1.1 fast path closes a stalled reader.
            Verdict::Stalled => {
                tracing::debug!(%peer, "client took no response bytes within send_timeout: closed");
                false
            }
            Verdict::Idle => {
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(grace, conn.as_mut()).await {
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "idle connection ended with an error");
                        true
                    }
                    Ok(Ok(())) => true,
                    Err(_) => false,
                }
            }
        },
        _ = stop.wait() => {
            // HTTP/1.1: hyper's graceful shutdown closes an idle connection at once, racing a
            // client reusing it; first give it `drain::IDLE_GRACE` (`UPLOAD_IDLE_GRACE` after
            // an upload) in which responses carry `Connection: close`. HTTP/2's GOAWAY has no
            // such race.
            let ended = if proto != "h2" {
                let wait = if uploaded.as_ref().is_some_and(|w| w.load(Ordering::Relaxed)) {
                    upload_grace
                } else {
                    grace
                };
                tokio::time::timeout(wait, conn.as_mut()).await.ok()
            } else {
                None
            };
            let res = match ended {
                Some(res) => res,
                None => {
                    conn.as_mut().graceful_shutdown();
                    // hyper's HTTP/2 shutdown waits for the client to answer a PING after the
                    // first GOAWAY; a client that keeps the connection open reading nothing
                    // held every drain and upgrade to `drain_timeout`. Once nothing has been
                    // in flight on it for `grace` (counted from the GOAWAY at the earliest),
                    // it is closed.
                    let idle = async {
                        tokio::time::sleep(grace).await;
                        let verdict = watch.verdict(send_timeout, grace).await;
                        // Nothing in flight: what HTTP/2 (or TLS) still holds of the last
                        // responses is covered by the client's window and waits only for room
                        // in the socket. While the socket's queue is not empty, the client is
                        // still taking bytes; `conn` goes on writing them meanwhile.
                        if let Some(fd) = socket {
                            sent_out(fd, send_timeout).await;
                        }
                        verdict
                    };
                    tokio::select! {
                        res = conn.as_mut() => res,
                        verdict = idle => {
                            tracing::debug!(%peer, ?verdict, "connection closed during drain without finishing its shutdown");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error during drain");
            }
            true
        }
    };
    if let (true, Some(fd)) = (finished, socket) {
        // hyper is done with the socket, which closes when `conn` is dropped.
        linger(fd, send_timeout).await;
    }
    gauge.dec();
}

/// Before a finished connection's socket is closed: its sending side is shut, and what the
/// client still sends is read and dropped until it closes its side too, it stops taking the
/// bytes queued for it for `send_timeout` (what it sends is no progress: a client that sends
/// and never reads is not kept), it has had them all for [`LINGER_AFTER_SENT`], or it sent
/// [`LINGER_MAX_READ`].
/// Closed with unread bytes waiting (an HTTP/2 client's WINDOW_UPDATEs as it reads the end of
/// a large response; anything a client sends after a GOAWAY), the kernel sends a reset instead
/// of a FIN and drops the bytes still queued: the ends of responses hyper had finished writing,
/// cut on every drain and upgrade.
async fn linger(fd: RawFd, send_timeout: std::time::Duration) {
    use std::time::Duration;
    // SAFETY: `fd` is the socket of the connection whose future (which owns it) is still alive
    // in the caller and no longer polled; it is only duplicated here.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Write);
    let Some(watched) = watch_readable(socket) else {
        return;
    };
    let mut sink = vec![0u8; 4096];
    let mut drained = 0usize;
    let mut queued = super::h1::socket::unacked(socket);
    let mut progress = tokio::time::Instant::now();
    let mut all_sent: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let q = super::h1::socket::unacked(socket);
        if q < queued {
            progress = now;
        }
        queued = q;
        if queued == 0 {
            let since = *all_sent.get_or_insert(now);
            if now >= since + LINGER_AFTER_SENT {
                return;
            }
        }
        if now >= progress + send_timeout {
            return;
        }
        let tick = tokio::time::timeout(Duration::from_millis(100), watched.readable()).await;
        let Ok(ready) = tick else { continue };
        let Ok(mut ready) = ready else { return };
        match rustix::io::read(watched.get_ref(), &mut sink) {
            Ok(0) => return,
            Ok(n) => {
                drained += n;
                if drained >= LINGER_MAX_READ {
                    return;
                }
            }
            Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
            Err(_) => return,
        }
    }
}

/// Resolves once the client has acknowledged every byte written to socket `fd`, or took none
/// for `send_timeout`. A slow HTTP/2 reader's last pieces wait in hyper's send buffer until the
/// socket has room, which it has only as the client reads: closed as soon as nothing was in
/// flight, the last few hundred KB of a download at 1 MB/s were cut at drain in about half of
/// the runs (`lifecycle::sigterm_lets_very_slow_http2_downloads_finish`).
async fn sent_out(fd: RawFd, send_timeout: std::time::Duration) {
    // SAFETY: `fd` is the socket of the connection whose future (which owns it) is alive in
    // the caller for as long as this runs; it is only queried here.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut queued = super::h1::socket::unacked(socket);
    let mut progress = tokio::time::Instant::now();
    while queued > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now();
        let q = super::h1::socket::unacked(socket);
        // Acknowledged bytes shrink the queue, and the room they make lets `conn` add to it:
        // either way it moved. A client that takes nothing leaves it as it was.
        if q != queued {
            progress = now;
        } else if now >= progress + send_timeout {
            return;
        }
        queued = q;
    }
}

/// How long a finished connection stays open once the client has every byte (acknowledged), in
/// case it has more to send before it closes (see [`linger`]).
const LINGER_AFTER_SENT: std::time::Duration = std::time::Duration::from_secs(1);

/// The most a finished connection's client may still send before it is closed (see [`linger`]).
const LINGER_MAX_READ: usize = 4 << 20;

/// Resolves when the peer of the HTTP/1.1 connection on socket `fd` has closed it (or it
/// failed); never for bytes that arrive (a pipelined request: the client is still there).
/// Watches a duplicate of the descriptor, registered on its own, so hyper's reads and writes
/// on the socket are untouched.
async fn peer_closed(fd: RawFd) {
    // SAFETY: `fd` is the socket of the connection this request came on. An HTTP/1.1 request's
    // future is polled by its connection's own future, which owns the socket, so the
    // descriptor is open while this runs; it is only duplicated here.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Some(watched) = watch_readable(socket) else {
        // No descriptor to spare: the request is noticed when its answer is written.
        return std::future::pending().await;
    };
    loop {
        let Ok(mut ready) = watched.readable().await else {
            return;
        };
        let r = ready.ready();
        if r.is_read_closed() || r.is_error() {
            return;
        }
        ready.clear_ready();
    }
}

/// A duplicate of `socket` registered for readability on its own, so hyper's reads and writes
/// on the socket are untouched; `None` when no descriptor can be had.
fn watch_readable(
    socket: std::os::fd::BorrowedFd<'_>,
) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let dup = socket.try_clone_to_owned().ok()?;
    // SAFETY: the `OwnedFd` is open and stays the same descriptor while `AsyncFd` owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, Interest::READABLE) }.ok()
}

/// Where a request came in.
struct At<'a> {
    peer: SocketAddr,
    tls: Option<&'static str>,
    alt_svc: Option<&'a http::HeaderValue>,
    draining: &'a Stop,
}

/// The path a request names. `OPTIONS http://host[:port]` (absolute form, empty path, no
/// query) is the absolute form of `OPTIONS *` (RFC 9112 §3.2.4), as the plaintext fast path
/// reads it (`h1::parse::split_target`). `http::Uri` (hyper's parser, over TLS) turns an empty
/// absolute path into `/` as it parses, so `OPTIONS http://host/` cannot be told from it here
/// and is `*` too; the answer is the same for both (`/` is no resource: `Allow` lists the
/// server's methods either way), only the access log's path differs. Over HTTP/2, `:path` `*`
/// arrives as the path `*` already.
fn target_path<'u>(method: &http::Method, uri: &'u http::Uri) -> &'u str {
    let empty_absolute = uri.scheme().is_some() && uri.path() == "/" && uri.query().is_none();
    if method == http::Method::OPTIONS && empty_absolute {
        "*"
    } else {
        uri.path()
    }
}

/// One request through the handler; its record finishes with the body, and it stays in flight
/// on its connection's watch until then.
async fn respond(
    shared: &Shared,
    at: At<'_>,
    in_flight: InFlight,
    req: hyper::Request<Incoming>,
) -> hyper::Response<HyperBody> {
    let At {
        peer,
        tls,
        alt_svc,
        draining,
    } = at;
    let start = Instant::now();
    // One policy for the whole request, even if a reload swaps it meanwhile.
    let policy = shared.load();
    let runtime = &shared.runtime;
    let proto = if req.version() == http::Version::HTTP_2 {
        Proto::H2
    } else {
        Proto::H1
    };
    let (parts, incoming) = req.into_parts();
    let hreq = handler::Request {
        method: &parts.method,
        path: target_path(&parts.method, &parts.uri),
        query: parts.uri.query(),
        headers: &parts.headers,
        peer,
        proto,
        http10: parts.version == http::Version::HTTP_10,
        tls,
        alt_svc,
    };
    // The fast path checks `Host` as it parses; hyper does not (RFC 9112 §3.2). HTTP/2 carries
    // `:authority`, or `Host`, and the two agree (RFC 9113 §8.3.1).
    let host_ok = match parts.version {
        // A `Content-Length` that is not one number (two fields, even equal ones) is refused
        // as HTTP/1.1 and HTTP/3 refuse it (h2 lets equal ones through).
        http::Version::HTTP_2 => {
            headers::h2_authority_ok(parts.uri.authority(), &parts.headers)
                && headers::target_ok(&parts.uri)
                && headers::values_trimmed(&parts.headers)
                && super::request_body::declared_length(&parts.headers).is_ok()
        }
        // After a chunked body hyper parses the connection's heads, and takes in an absolute
        // target what the fast path refuses: userinfo (RFC 9110 §4.2.4), an authority that is
        // no `Host` (`http://a:xx/`).
        v => {
            headers::host_ok(&parts.headers, v == http::Version::HTTP_11)
                && headers::authority_ok(&parts.uri)
        }
    };
    // An HTTP/1.1 body the handler leaves unread (a refusal) ends the connection: hyper does
    // not read past it, and the answer says so (as the fast path's do).
    // Only a request with a body gets the flag (no allocation for a GET).
    let read_whole = (proto == Proto::H1 && !http_body::Body::is_end_stream(&incoming))
        .then(|| Arc::new(AtomicBool::new(false)));
    let mut reply = if host_ok {
        let body = RequestBody::from_hyper_telling(incoming, read_whole.clone());
        handler::handle(runtime, &policy, &hreq, body).await
    } else {
        handler::refused(runtime, &policy, &hreq, Refusal::Malformed)
    };
    // Only TLS connections have the socket guard that makes mapped bodies safe.
    let mapped_ok = tls.is_some();
    // The cache status of the body as the handler gave it (the first piece's read makes it a
    // stream), or of the refusal that replaced it.
    let cache = reply.log.cache.unwrap_or_else(|| reply.body.cache_status());
    let status = reply.status;
    reply = handler::with_first_piece(runtime, &policy, &hreq, reply, mapped_ok).await;
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
    // hyper writes the head as soon as this returns.
    record.head_sent();
    let mut resp = hyper::Response::new(HyperBody::new(reply.body, mapped_ok, record, in_flight));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    let unread = read_whole.is_some_and(|f| !f.load(Ordering::Relaxed));
    if (reply.close || draining.is_set() || unread) && proto == Proto::H1 {
        // The request's body could not be trusted: nothing after it on this connection can.
        // Or a drain: the client should take its next request elsewhere. Or a body left
        // unread: hyper closes the connection after this answer.
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::target_path;
    use http::{Method, Uri};

    #[test]
    fn options_absolute_form_is_asterisk() {
        let path = |m: &Method, t: &str| {
            let uri: Uri = t.parse().expect("uri");
            target_path(m, &uri).to_string()
        };
        assert_eq!(path(&Method::OPTIONS, "http://h"), "*");
        assert_eq!(path(&Method::OPTIONS, "https://h:8443"), "*");
        // (Indistinguishable from `http://h` once parsed: see `target_path`.)
        assert_eq!(path(&Method::OPTIONS, "http://h/"), "*");
        assert_eq!(path(&Method::OPTIONS, "http://h?x"), "/");
        assert_eq!(path(&Method::OPTIONS, "*"), "*");
        assert_eq!(path(&Method::OPTIONS, "/a.ts"), "/a.ts");
        assert_eq!(path(&Method::GET, "http://h"), "/");
        assert_eq!(path(&Method::GET, "http://h/a.ts?q"), "/a.ts");
    }
}
