//! The plaintext HTTP/1.1 fast path: a small strict parser (`httparse`) and a body writer that
//! sends files with `sendfile(2)`, so body bytes never pass through user space. This is what a
//! CDN pull is; hyper cannot hand a body to sendfile, so this path owns the socket.
//!
//! Per connection: wait for a request (idle: `keepalive_timeout`), read its head (at most
//! `max_header_bytes`, within `header_read_timeout`, else 431 / 408), answer with
//! [`handler::handle`] exactly like every other protocol, write the head, send the body, and
//! loop; pipelined requests are answered in order from the same buffer.
//!
//! Handed elsewhere or refused, precisely:
//! - an HTTP/2 connection preface (h2c prior knowledge) → the whole connection goes to hyper;
//! - a request body (`Content-Length` > 0 or `Transfer-Encoding`) → answered (405 for POST and
//!   friends), then the connection is closed instead of reading the body;
//! - duplicate or conflicting `Content-Length`/`Transfer-Encoding`, a missing or repeated
//!   `Host` on HTTP/1.1, invalid header bytes → 400 and close (no request smuggling);
//! - a stalled reader: no send progress within `send_timeout` → close.
//!
//! A file that shrinks while being sent ends the connection: the client sees a short body
//! against its `Content-Length`, never padding or bytes from another version.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::handler::{self, Proto, Reply, ReplyBody};
use super::record;
use crate::server::shutdown::Drain;
use crate::state::{Shared, State};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_HEADERS: usize = 100;
/// Largest single sendfile call; bounds how long one connection holds a worker.
const SENDFILE_CHUNK: usize = 1 << 20;

/// Why a connection ends early; decides the final answer, if any.
enum HeadError {
    Closed,
    TimedOut,
    TooLarge,
    Bad,
}

/// One parsed request head, owned.
struct Head {
    method: Method,
    target: String,
    headers: HeaderMap,
    http10: bool,
}

/// Serves one accepted plaintext connection.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    hyper: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    drain: Drain,
) {
    let _ = stream.set_nodelay(true);
    // Connection-level settings come from the state current at accept time.
    let cfg = Limits::from(&shared.load().config.server);
    let metrics = Arc::clone(&shared.load().metrics);
    let mut buf = BytesMut::with_capacity(4096);
    let mut stop = drain.signal();
    // Registered once for the connection's life, not re-armed per request.
    let stopped = stop.wait();
    tokio::pin!(stopped);
    let mut first = true;
    let gauge = metrics.connections_open.with_label_values(&["h1"]);
    gauge.inc();
    loop {
        // Idle: wait for the first byte of the next request, or the drain. The read buffer is
        // released while idle, so a parked keep-alive connection costs little more than its task.
        if buf.is_empty() {
            if drain.is_stopping() {
                break;
            }
            if buf.capacity() > 0 {
                buf = BytesMut::new();
            }
            let ready = tokio::select! {
                r = tokio::time::timeout(cfg.keepalive_timeout, stream.readable()) => r,
                _ = &mut stopped => break,
            };
            if !matches!(ready, Ok(Ok(()))) {
                break;
            }
            buf.reserve(4096);
            match tokio::time::timeout(cfg.header_read_timeout, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        // HTTP/2 with prior knowledge: hand the connection, bytes read so far included, to hyper.
        if first && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
            while buf.len() < H2_PREFACE.len() {
                match tokio::time::timeout(cfg.header_read_timeout, stream.read_buf(&mut buf)).await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        gauge.dec();
                        return;
                    }
                }
            }
            if buf.starts_with(H2_PREFACE) {
                gauge.dec();
                let io = Prefixed {
                    prefix: buf.freeze(),
                    inner: stream,
                };
                let conn = super::service::Conn {
                    peer,
                    proto: "h2",
                    tls: None,
                    alt_svc: None,
                };
                Box::pin(super::service::serve_io(io, conn, shared, hyper, drain)).await;
                return;
            }
        }
        first = false;

        let (head, consumed) = match Box::pin(read_head(&mut stream, &mut buf, &cfg)).await {
            Ok(h) => h,
            Err(HeadError::Closed) => break,
            Err(HeadError::TimedOut) => {
                let _ = write_simple(
                    &mut stream,
                    StatusCode::REQUEST_TIMEOUT,
                    "request timeout\n",
                )
                .await;
                break;
            }
            Err(HeadError::TooLarge) => {
                let _ = write_simple(
                    &mut stream,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request header too large\n",
                )
                .await;
                linger_close(stream).await;
                gauge.dec();
                return;
            }
            Err(HeadError::Bad) => {
                let _ = write_simple(&mut stream, StatusCode::BAD_REQUEST, "bad request\n").await;
                linger_close(stream).await;
                gauge.dec();
                return;
            }
        };
        buf.advance(consumed);
        if buf.is_empty() {
            // The head is owned now: give the buffer back before the handler may wait (an open
            // on the blocking pool), so a burst of requests does not hold a buffer each.
            buf = BytesMut::new();
        }

        let framing = match body_framing(&head) {
            Ok(f) => f,
            Err(()) => {
                let _ = write_simple(&mut stream, StatusCode::BAD_REQUEST, "bad request\n").await;
                linger_close(stream).await;
                gauge.dec();
                return;
            }
        };
        let wants_close = connection_close(&head);
        let close = wants_close || framing == Framing::HasBody || drain.is_stopping();

        let start = Instant::now();
        let (path, query) = match split_target(&head) {
            Some(pq) => pq,
            None => {
                let _ = write_simple(&mut stream, StatusCode::BAD_REQUEST, "bad request\n").await;
                linger_close(stream).await;
                gauge.dec();
                return;
            }
        };
        let req = handler::Request {
            method: &head.method,
            path,
            query,
            headers: &head.headers,
            peer,
            proto: Proto::H1,
            tls: None,
            alt_svc: None,
        };
        // One state for the whole request, even if a reload swaps it meanwhile.
        let state = shared.load();
        // Boxed: the connection's future stays small while idle (it is sized for its largest
        // await point, and thousands of parked keep-alive connections each hold one).
        let mut reply = Box::pin(handler::handle(&state, &req)).await;
        let status = reply.status;
        let log = std::mem::take(&mut reply.log);
        let cache = match reply.body {
            ReplyBody::File { .. } => "bypass",
            _ => "none",
        };
        let sent = Box::pin(write_reply(
            &mut stream,
            reply,
            close,
            head.http10,
            &state,
            start,
        ))
        .await;
        let bytes = sent.as_ref().copied().unwrap_or(0);
        record(&state, &req, status, bytes, start, cache, &log);
        if sent.is_err() {
            // A body that could not be sent whole (file changed, client stalled or gone): reset
            // the connection, so queued bytes are dropped and no client mistakes it for complete.
            reset(&stream);
            gauge.dec();
            return;
        }
        if close {
            if framing == Framing::HasBody {
                linger_close(stream).await;
                gauge.dec();
                return;
            }
            break;
        }
    }
    gauge.dec();
    let _ = stream.shutdown().await;
}

/// The per-connection settings the fast path needs (small and `Copy`: kept in every connection).
#[derive(Clone, Copy)]
struct Limits {
    keepalive_timeout: Duration,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Limits {
            keepalive_timeout: c.keepalive_timeout,
            header_read_timeout: c.header_read_timeout,
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// Parses a complete head from `buf` if there is one. Synchronous on purpose: httparse's
/// header array lives on this stack frame, never in the connection's future.
fn try_parse(buf: &[u8], max_header_bytes: usize) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > max_header_bytes {
                return Err(HeadError::TooLarge);
            }
            own_head(&req).map(|h| Some((h, n)))
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_header_bytes {
                return Err(HeadError::TooLarge);
            }
            Ok(None)
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Bad),
    }
}

/// Reads until a complete head is in `buf`; returns it and its length.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cfg: &Limits,
) -> Result<(Head, usize), HeadError> {
    let deadline = tokio::time::Instant::now() + cfg.header_read_timeout;
    loop {
        if let Some(done) = try_parse(buf, cfg.max_header_bytes)? {
            return Ok(done);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(HeadError::Closed),
            Err(_) => return Err(HeadError::TimedOut),
        }
    }
}

fn own_head(req: &httparse::Request<'_, '_>) -> Result<Head, HeadError> {
    let method =
        Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| HeadError::Bad)?;
    let target = req.path.ok_or(HeadError::Bad)?.to_string();
    let http10 = req.version == Some(0);
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Bad)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Bad)?;
        headers.append(name, value);
    }
    if !http10 {
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
        let hosts = headers.get_all(http::header::HOST).iter().count();
        if hosts != 1 {
            return Err(HeadError::Bad);
        }
    }
    Ok(Head {
        method,
        target,
        headers,
        http10,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    NoBody,
    HasBody,
}

/// Validates message framing (RFC 9112 §6.3): one valid Content-Length at most, never both
/// Content-Length and Transfer-Encoding. Anything ambiguous is refused outright.
fn body_framing(head: &Head) -> Result<Framing, ()> {
    let te = head
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .count();
    let cls: Vec<&HeaderValue> = head
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    if te > 0 && !cls.is_empty() {
        return Err(());
    }
    if te > 0 {
        return Ok(Framing::HasBody);
    }
    match cls.as_slice() {
        [] => Ok(Framing::NoBody),
        [one] => {
            let s = one.to_str().map_err(|_| ())?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 19 {
                return Err(());
            }
            let n: u64 = s.parse().map_err(|_| ())?;
            Ok(if n == 0 {
                Framing::NoBody
            } else {
                Framing::HasBody
            })
        }
        _ => Err(()),
    }
}

fn connection_close(head: &Head) -> bool {
    let mut close = head.http10;
    for v in head.headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for tok in s.split(',') {
                let tok = tok.trim();
                if tok.eq_ignore_ascii_case("close") {
                    return true;
                }
                if tok.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    close
}

/// Origin-form `/path?query`, absolute-form `http://host/path?query`, or `*` (OPTIONS).
fn split_target(head: &Head) -> Option<(&str, Option<&str>)> {
    let t = head.target.as_str();
    let path_query = if t.starts_with('/') {
        t
    } else if t == "*" {
        return (head.method == Method::OPTIONS).then_some(("*", None));
    } else {
        let rest = t
            .strip_prefix("http://")
            .or_else(|| t.strip_prefix("https://"))?;
        &rest[rest.find('/')?..]
    };
    let path_query = path_query.split('#').next().unwrap_or("");
    Some(match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    })
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// `Date` value, formatted once per second per thread.
fn http_date() -> String {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        d.1.clone()
    })
}

fn head_bytes(status: StatusCode, headers: &HeaderMap, close: bool, http10: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(http_date().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A minimal error answer for requests that never reached the handler. Boxed: it is rare, and
/// its future would otherwise be part of every connection's.
fn write_simple<'a>(
    stream: &'a mut TcpStream,
    status: StatusCode,
    msg: &'a str,
) -> Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + 'a>> {
    Box::pin(write_simple_inner(stream, status, msg))
}

async fn write_simple_inner(
    stream: &mut TcpStream,
    status: StatusCode,
    msg: &str,
) -> io::Result<()> {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(msg.len()));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    let mut out = head_bytes(status, &h, true, false);
    out.extend_from_slice(msg.as_bytes());
    tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Writes head and body; returns the body bytes sent.
async fn write_reply(
    stream: &mut TcpStream,
    reply: Reply,
    close: bool,
    http10: bool,
    state: &State,
    start: Instant,
) -> io::Result<u64> {
    let first_byte = || state.metrics.ttfb.observe(start.elapsed().as_secs_f64());
    let Reply {
        status,
        headers,
        body,
        ..
    } = reply;
    let mut head = head_bytes(status, &headers, close, http10);
    let stall = state.config.server.send_timeout;
    match body {
        ReplyBody::Empty => {
            write_all_timeout(stream, &head, stall).await?;
            first_byte();
            Ok(0)
        }
        ReplyBody::Static(b) => {
            head.extend_from_slice(&b);
            write_all_timeout(stream, &head, stall).await?;
            first_byte();
            Ok(b.len() as u64)
        }
        ReplyBody::File {
            file,
            offset,
            len,
            volume,
            small_copy: true,
            ..
        } if len <= SMALL_COPY => {
            write_small(stream, head, &file, volume, offset, len, state).await
        }
        ReplyBody::File {
            file,
            offset,
            len,
            volume,
            meta,
            ..
        } => {
            // Never let sendfile wait for the disk on this thread: pull cold pages in through
            // the volume's I/O backend first (a no-op when both ends are resident).
            let res = match state
                .io
                .ensure_resident(volume, &file, &meta, offset, len)
                .await
            {
                Ok(()) => {
                    send_more(stream, &head, stall).await?;
                    first_byte();
                    sendfile_all(stream, &file, &meta, offset, len, stall).await
                }
                Err(e) => {
                    // Nothing is on the wire yet: the client gets a precise answer, not a reset.
                    let _ = write_simple(
                        stream,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "volume unavailable\n",
                    )
                    .await;
                    Err(e)
                }
            };
            if let Err(e) = &res {
                state.volumes.note_error(volume, e);
            }
            if res.is_ok() {
                state.metrics.zero_copy_bytes.inc_by(len);
            }
            res.map(|()| len)
        }
    }
}

/// Playlists up to this size are copied: one page-cache read and one write of head + body cost
/// less than sendfile's setup for a few KiB. Segments always go out with sendfile.
const SMALL_COPY: u64 = 64 * 1024;

/// Reads a small body (a playlist) from the page cache, or through the I/O backend when cold,
/// and writes it together with the head. A file that shrank is caught before any byte is sent.
async fn write_small(
    stream: &mut TcpStream,
    mut head: Vec<u8>,
    file: &Arc<std::fs::File>,
    volume: usize,
    offset: u64,
    len: u64,
    state: &State,
) -> io::Result<u64> {
    let stall = state.config.server.send_timeout;
    let at = head.len();
    head.resize(at + len as usize, 0);
    let n = match crate::io::pread_cached(file, offset, &mut head[at..]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let b = state
                .io
                .read(volume, Arc::clone(file), offset, len as usize)
                .await;
            match b {
                Ok(b) => {
                    head[at..at + b.len()].copy_from_slice(&b);
                    b.len()
                }
                Err(e) => return fail_small(stream, e, volume, state).await,
            }
        }
        Err(e) => return fail_small(stream, e, volume, state).await,
    };
    if n as u64 != len {
        let e = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank before it was sent",
        );
        return fail_small(stream, e, volume, state).await;
    }
    write_all_timeout(stream, &head, stall).await?;
    Ok(len)
}

/// Nothing is on the wire yet: answer 503 precisely, record a device fault, close.
async fn fail_small(
    stream: &mut TcpStream,
    e: io::Error,
    volume: usize,
    state: &State,
) -> io::Result<u64> {
    state.volumes.note_error(volume, &e);
    let _ = write_simple(
        stream,
        StatusCode::SERVICE_UNAVAILABLE,
        "object changed while read\n",
    )
    .await;
    Err(e)
}

async fn write_all_timeout(
    stream: &mut TcpStream,
    bytes: &[u8],
    stall: Duration,
) -> io::Result<()> {
    tokio::time::timeout(stall, stream.write_all(bytes))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Sends the head with `MSG_MORE`, so the kernel coalesces it with the first body bytes.
async fn send_more(stream: &mut TcpStream, bytes: &[u8], stall: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let n = write_ready(stream, stall, || {
            // SAFETY: `rest` is a valid, initialised slice for the duration of the call, and `fd`
            // is the open socket owned by `stream`.
            unsafe {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_MORE | libc::MSG_NOSIGNAL,
                )
            }
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// Runs a raw write syscall (`send`, `sendfile`) whenever the socket is writable, until it makes
/// progress or `stall` passes without any; returns what the call returned.
async fn write_ready(
    stream: &TcpStream,
    stall: Duration,
    mut op: impl FnMut() -> isize,
) -> io::Result<usize> {
    let fut = stream.async_io(Interest::WRITABLE, || {
        let n = op();
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    });
    tokio::time::timeout(stall, fut)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Held back and sent last, after a final check that the file did not change.
const TAIL: u64 = 64 * 1024;

/// `len` bytes of `file` from `offset` to the socket with sendfile(2), in the kernel.
///
/// Zero-copy queues references to page-cache pages, so bytes of a file modified or truncated
/// during the send can reach the wire changed (or as zeros past a new end of file). segd cannot
/// recall them, so it guarantees the next best thing: such a response never completes. The file
/// is checked against `meta` (size, mtime, ctime, link count; the handler checked it just before)
/// after every chunk, the last `TAIL` bytes are sent only after a check, and a change fails the
/// send, which the caller turns into a TCP reset.
async fn sendfile_all(
    stream: &mut TcpStream,
    file: &std::fs::File,
    meta: &crate::volumes::ObjectMeta,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<()> {
    let sock = stream.as_raw_fd();
    let ffd = file.as_raw_fd();
    let end = offset + len;
    let mut off = offset as libc::off_t;
    while (off as u64) < end {
        let remaining = end - off as u64;
        let want = if remaining > TAIL {
            (remaining - TAIL).min(SENDFILE_CHUNK as u64)
        } else {
            remaining
        } as usize;
        let n = write_ready(stream, stall, || {
            // SAFETY: both descriptors are open for the duration of the call (the socket is owned
            // by `stream`, the file by the caller's Arc); `off` is a valid pointer the kernel
            // updates with the new offset.
            unsafe { libc::sendfile(sock, ffd, &mut off, want) }
        })
        .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        if !crate::volumes::still_current(file, meta) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file changed while being sent",
            ));
        }
    }
    Ok(())
}

/// Makes the coming close an abortive one (RST): SO_LINGER with a zero timeout, which never
/// blocks; unsent bytes are dropped.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Closes a connection that may still carry unread request bytes: stop writing, then drain
/// briefly so the kernel does not answer our last response with a reset.
async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    // On the heap: an array here would be part of every connection's future.
    let mut sink = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut total = 0usize;
    while total < 1 << 20 {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// A stream that first yields bytes already read (the h2 preface) and then the socket.
pub struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thousands of idle keep-alive connections each hold one of these futures.
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
            let metrics = Arc::new(crate::metrics::Metrics::new().expect("metrics"));
            let state = State::new(Arc::new(cfg.clone()), metrics).expect("state");
            let shared = Arc::new(Shared::new(state));
            let hyper = Arc::new(super::super::service::builder(&cfg));
            let ctl = crate::server::shutdown::Controller::new();
            let fut = serve(
                c,
                "127.0.0.1:1".parse().expect("addr"),
                shared,
                hyper,
                ctl.drain(),
            );
            let size = std::mem::size_of_val(&fut);
            assert!(size <= 2048, "connection future is {size} bytes");
        });
    }

    fn head(method: &str, target: &str, hs: &[(&str, &str)]) -> Head {
        let mut headers = HeaderMap::new();
        for (k, v) in hs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        Head {
            method: Method::from_bytes(method.as_bytes()).expect("method"),
            target: target.into(),
            headers,
            http10: false,
        }
    }

    #[test]
    fn framing_rules() {
        assert_eq!(body_framing(&head("GET", "/", &[])), Ok(Framing::NoBody));
        assert_eq!(
            body_framing(&head("GET", "/", &[("content-length", "0")])),
            Ok(Framing::NoBody)
        );
        assert_eq!(
            body_framing(&head("POST", "/", &[("content-length", "5")])),
            Ok(Framing::HasBody)
        );
        assert_eq!(
            body_framing(&head("POST", "/", &[("transfer-encoding", "chunked")])),
            Ok(Framing::HasBody)
        );
        assert!(body_framing(&head(
            "GET",
            "/",
            &[("content-length", "1"), ("content-length", "1")]
        ))
        .is_err());
        assert!(body_framing(&head(
            "GET",
            "/",
            &[("content-length", "1"), ("transfer-encoding", "chunked")]
        ))
        .is_err());
        assert!(body_framing(&head("GET", "/", &[("content-length", "-1")])).is_err());
        assert!(body_framing(&head("GET", "/", &[("content-length", "1, 1")])).is_err());
        assert!(body_framing(&head(
            "GET",
            "/",
            &[("content-length", "99999999999999999999")]
        ))
        .is_err());
    }

    #[test]
    fn targets() {
        let h = head("GET", "/a/b.ts?x=1", &[]);
        assert_eq!(split_target(&h), Some(("/a/b.ts", Some("x=1"))));
        let h = head("GET", "http://host/a.ts", &[]);
        assert_eq!(split_target(&h), Some(("/a.ts", None)));
        assert_eq!(split_target(&head("OPTIONS", "*", &[])), Some(("*", None)));
        assert_eq!(split_target(&head("GET", "*", &[])), None);
        assert_eq!(split_target(&head("GET", "host/a.ts", &[])), None);
    }
}
