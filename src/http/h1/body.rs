//! Request bodies delimited by `Content-Length` on the HTTP/1.1 fast path (what curl and most
//! client libraries send). Framing here is counting: the body is the next `Content-Length`
//! bytes. A `chunked` body is decoded by hyper, which then takes the connection (see the module
//! doc of `h1`).
//!
//! Bytes are read only when the handler pulls the next chunk, so `Expect: 100-continue` is
//! answered exactly when the handler has accepted the request and starts reading; a request
//! refused before that never gets a 100 and its connection is closed after the answer.
//!
//! Reads go straight into one buffer sized for the body (at most [`READ_MAX`]), and every read
//! takes what the socket holds: a 200 KB segment arrives in a handful of reads, not in pieces of
//! hyper's 8 KiB starting buffer. A read never goes past the body's end, so a pipelined request
//! after it stays in the socket for the next exchange.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::request_body::BodyStream;

/// Largest buffer one body read goes into (as nginx's default `client_body_buffer_size` on
/// 64-bit is smaller, this is the bigger of the two: segd writes 256 KiB at a time).
const READ_MAX: usize = 256 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of one request, read from the connection as the handler asks for it.
pub(super) struct LengthBody<'a> {
    stream: &'a mut TcpStream,
    /// The connection's buffer: body bytes that arrived with the head are taken from it first.
    buf: &'a mut BytesMut,
    remaining: u64,
    /// `Expect: 100-continue` still to be answered before the first read from the socket.
    expect: bool,
    /// Where reads go: the capacity left after one read is the next read's.
    rx: BytesMut,
    failed: bool,
}

impl<'a> LengthBody<'a> {
    pub(super) fn new(
        stream: &'a mut TcpStream,
        buf: &'a mut BytesMut,
        len: u64,
        expect: bool,
    ) -> LengthBody<'a> {
        LengthBody {
            stream,
            buf,
            remaining: len,
            expect,
            rx: BytesMut::new(),
            failed: false,
        }
    }

    /// Whether every byte of the body was read (else the connection cannot carry another
    /// request and must close).
    pub(super) fn complete(&self) -> bool {
        self.remaining == 0 && !self.failed
    }

    /// The body as the stream [`RequestBody`](crate::http::request_body::RequestBody) pulls.
    pub(super) fn stream<'s>(&'s mut self) -> BodyStream<'s> {
        Box::pin(futures_util::stream::unfold(self, |body| async move {
            let item = body.next().await?;
            Some((item, body))
        }))
    }

    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let r = self.read().await;
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }

    async fn read(&mut self) -> io::Result<Bytes> {
        if !self.buf.is_empty() {
            let n =
                usize::try_from(self.remaining).map_or(self.buf.len(), |r| r.min(self.buf.len()));
            self.remaining -= n as u64;
            return Ok(self.buf.split_to(n).freeze());
        }
        if std::mem::take(&mut self.expect) {
            self.stream.write_all(CONTINUE).await?;
        }
        let want = usize::try_from(self.remaining).map_or(READ_MAX, |r| r.min(READ_MAX));
        if self.rx.capacity() == 0 {
            self.rx = BytesMut::with_capacity(want);
        }
        // Never past the body's end: what follows belongs to the next request.
        let limit = want.min(self.rx.capacity());
        let n = self
            .stream
            .read_buf(&mut (&mut self.rx).limit(limit))
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed with {} body bytes to come",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(self.rx.split().freeze())
    }
}
