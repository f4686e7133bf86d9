//! Writing on the HTTP/1.1 fast path: response heads, short answers for requests that never
//! reached the handler, and bodies that pass through user space — in-memory bytes and streams
//! (chunked when their length is unknown; close-delimited for HTTP/1.0 clients).

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::store::ByteStream;

/// The response head. `chunked`: the body's length is unknown and goes out chunked.
pub(super) fn head_bytes(
    status: StatusCode,
    headers: &HeaderMap,
    close: bool,
    http10: bool,
    chunked: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(crate::http::headers::date().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
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
pub(super) fn write_simple<'a>(
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
    let out = simple_bytes(status, msg);
    tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// A minimal answer's bytes: `text/plain` `msg`, `no-store`, `Connection: close`.
pub(super) fn simple_bytes(status: StatusCode, msg: &str) -> Vec<u8> {
    simple_bytes_with(status, msg, HeaderMap::new())
}

/// [`simple_bytes`] with `h` besides.
pub(super) fn simple_bytes_with(status: StatusCode, msg: &str, mut h: HeaderMap) -> Vec<u8> {
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(msg.len()));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    let mut out = head_bytes(status, &h, true, false, false);
    out.extend_from_slice(msg.as_bytes());
    out
}

pub(super) async fn write_all_timeout(
    stream: &mut TcpStream,
    bytes: &[u8],
    stall: Duration,
) -> io::Result<()> {
    // A write at a time, so a client that keeps reading, however slowly, is not cut. What it
    // had not acknowledged is taken when the socket fills, not on every write.
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.try_write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut acked = super::socket::Acked::now(stream.as_fd());
                loop {
                    match tokio::time::timeout(stall, stream.writable()).await {
                        Ok(r) => break r?,
                        // Still reading, slowly: wait on.
                        Err(_) if acked.moved(stream.as_fd()) => {}
                        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How a body of unknown length is delimited on this connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Delimit {
    /// `Transfer-Encoding: chunked` (HTTP/1.1): the zero chunk ends it.
    Chunked,
    /// The connection's close ends it (HTTP/1.0 has no chunked coding).
    Close,
    /// The head's `Content-Length` says how long it is.
    Length,
}

/// Writes a stream's chunks after `head`. The terminating zero chunk is written only after the
/// stream ended cleanly: a stream that fails returns the error with the body unterminated, and
/// the caller resets the connection, so the client sees an incomplete body, never a short one
/// that looks complete. `sent` counts the body bytes sent (payload, without chunk framing), also
/// when the stream fails part way.
pub(super) async fn write_stream(
    stream: &mut TcpStream,
    head: &[u8],
    mut body: ByteStream,
    delimit: Delimit,
    stall: Duration,
    first_byte: impl FnOnce(),
    sent: &mut u64,
) -> io::Result<()> {
    write_all_timeout(stream, head, stall).await?;
    first_byte();
    // Many responses usually start from one event (the waiters of a fill, the readers of an
    // upload): each sends its head, then lets the others send theirs before it sends a body
    // that may already be all there, so the last one's first byte does not wait for every
    // earlier one's whole body.
    tokio::task::yield_now().await;
    while let Some(chunk) = body.next().await {
        let data = chunk?;
        if data.is_empty() {
            continue;
        }
        match delimit {
            Delimit::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                let mut framed = Vec::with_capacity(size.len() + data.len() + 2);
                framed.extend_from_slice(size.as_bytes());
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                write_all_timeout(stream, &framed, stall).await?;
            }
            Delimit::Close | Delimit::Length => write_all_timeout(stream, &data, stall).await?,
        }
        *sent += data.len() as u64;
    }
    if delimit == Delimit::Chunked {
        write_all_timeout(stream, b"0\r\n\r\n", stall).await?;
    }
    Ok(())
}
