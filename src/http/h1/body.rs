//! Request bodies delimited by `Content-Length` on the HTTP/1.1 fast path (what curl and most
//! client libraries send). Framing here is counting: the body is the next `Content-Length`
//! bytes. A `chunked` body is decoded by hyper, which then takes the connection (see the module
//! doc of `h1`).
//!
//! Bytes are read only when the handler pulls the next chunk, so `Expect: 100-continue` is
//! answered exactly when the handler has accepted the request and starts reading; a request
//! refused before that never gets a 100 and its connection is closed after the answer.
//!
//! Reads go straight into buffers sized for the body (32 KiB first, then up to [`READ_MAX`] once
//! a read fills one), and every read takes what the socket holds: a 200 KB segment arrives in a
//! handful of reads, not in pieces of hyper's 8 KiB starting buffer. A read never goes past the
//! body's end, so a pipelined request after it stays in the socket for the next exchange.
//!
//! Offered a pipe (an upload that takes its body through one), the bytes still in the socket are
//! moved into it with `splice(2)` instead: no buffer, and no copy through user space.

use std::io;
use std::os::fd::AsFd;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::socket::ack_now;
use crate::http::request_body::{ConnBody, Piece, Piped};
use crate::io::pipe::{Filled, Pipe};

/// Largest buffer one body read goes into (segd writes uploads 256 KiB at a time).
const READ_MAX: usize = 256 * 1024;

/// The first buffer of a body: a read that fills it is followed by buffers of up to
/// [`READ_MAX`]. A connection that announces a body and trickles it holds no more than this.
const READ_FIRST: usize = 32 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of one request, read from the connection as the handler asks for it.
pub(super) struct LengthBody<'a> {
    stream: &'a mut TcpStream,
    /// The connection's buffer: body bytes that arrived with the head are taken from it first.
    buf: &'a mut BytesMut,
    remaining: u64,
    /// Where `Expect: 100-continue` stands.
    interim: Interim,
    /// Where reads go: the capacity left after one read is the next read's.
    rx: BytesMut,
    /// The size of the next buffer.
    next_buf: usize,
    failed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Interim {
    /// No 100 to send (none asked for, already sent, or no longer useful).
    None,
    /// Asked for: sent before the first read from the socket.
    Due,
    /// Being written; still so after the handler means the write was cut short (a timeout),
    /// and the connection holds part of a response.
    Writing,
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
            interim: if expect { Interim::Due } else { Interim::None },
            rx: BytesMut::new(),
            next_buf: READ_FIRST,
            failed: false,
        }
    }

    /// Whether every byte of the body was read (else the connection cannot carry another
    /// request and must close).
    pub(super) fn complete(&self) -> bool {
        self.remaining == 0 && !self.failed
    }

    /// Whether a `100 Continue` was cut short: nothing more may be written on the connection.
    pub(super) fn interim_cut(&self) -> bool {
        self.interim == Interim::Writing
    }

    async fn next(&mut self, pipe: Option<&mut Pipe>) -> Option<io::Result<Piece>> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let r = if !self.buf.is_empty() {
            Ok(Piece::Bytes(self.buffered()))
        } else {
            match self.interim().await {
                Err(e) => Err(e),
                Ok(()) => match pipe {
                    Some(p) => self.splice(p).await.map(Piece::Piped),
                    None => self.read().await.map(Piece::Bytes),
                },
            }
        };
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }

    /// Body bytes that arrived with the head (or the bytes before it).
    fn buffered(&mut self) -> Bytes {
        // The client is sending without waiting for a 100: none is needed any more.
        if self.interim == Interim::Due {
            self.interim = Interim::None;
        }
        let n = usize::try_from(self.remaining).map_or(self.buf.len(), |r| r.min(self.buf.len()));
        self.remaining -= n as u64;
        self.buf.split_to(n).freeze()
    }

    /// Sends the `100 Continue` before the first read from the socket, if one is due.
    async fn interim(&mut self) -> io::Result<()> {
        if self.interim == Interim::Due {
            self.interim = Interim::Writing;
            self.stream.write_all(CONTINUE).await?;
            self.interim = Interim::None;
        }
        Ok(())
    }

    /// Moves what the socket holds of the body (never past its end) into `pipe`, waiting for
    /// bytes when it holds none; a piece of zero bytes when the pipe has no room.
    async fn splice(&mut self, pipe: &mut Pipe) -> io::Result<Piped> {
        const FULL: Piped = Piped { len: 0, full: true };
        let max = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        loop {
            // Never a loop that keeps the timers (`body_timeout`) from running, whatever the
            // socket reports.
            tokio::task::coop::consume_budget().await;
            let filled = self.stream.try_io(Interest::READABLE, || {
                pipe.fill_from(self.stream.as_fd(), max)
            });
            match filled {
                Ok(Filled::Moved(0)) => return Err(self.closed()),
                Ok(Filled::Moved(n)) => {
                    self.remaining -= n as u64;
                    return Ok(Piped {
                        len: n,
                        full: pipe.room() == 0,
                    });
                }
                Ok(Filled::Full) => return Ok(FULL),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ack_now(&*self.stream);
                    let ready = self.stream.ready(Interest::READABLE).await?;
                    // Closed or failed while every slot of the pipe is taken (small pieces use
                    // up slots before bytes): splice says so only once the pipe is drained.
                    if (ready.is_read_closed() || ready.is_error()) && !pipe.is_empty() {
                        return Ok(FULL);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn closed(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed with {} body bytes to come",
                self.remaining
            ),
        )
    }

    async fn read(&mut self) -> io::Result<Bytes> {
        if futures_util::FutureExt::now_or_never(self.stream.readable()).is_none() {
            ack_now(&*self.stream);
        }
        if self.rx.capacity() == 0 {
            // Nothing is allocated for a body before its bytes arrive.
            self.stream.readable().await?;
            let size =
                usize::try_from(self.remaining).map_or(self.next_buf, |r| r.min(self.next_buf));
            self.rx = BytesMut::with_capacity(size);
        }
        // Never past the body's end: what follows belongs to the next request.
        let limit = usize::try_from(self.remaining)
            .map_or(self.rx.capacity(), |r| r.min(self.rx.capacity()));
        let n = self
            .stream
            .read_buf(&mut (&mut self.rx).limit(limit))
            .await?;
        if n == 0 {
            return Err(self.closed());
        }
        if n == limit {
            // A read that fills its buffer: the body is coming fast, so read in large pieces.
            self.next_buf = READ_MAX;
        }
        self.remaining -= n as u64;
        Ok(self.rx.split().freeze())
    }
}

impl ConnBody for LengthBody<'_> {
    fn can_splice(&self) -> bool {
        self.buf.is_empty() && self.remaining > 0 && !self.failed
    }

    fn next_piece<'s>(
        &'s mut self,
        pipe: Option<&'s mut Pipe>,
    ) -> futures_util::future::BoxFuture<'s, Option<io::Result<Piece>>> {
        Box::pin(self.next(pipe))
    }
}
