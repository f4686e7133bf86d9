//! The response body for hyper (HTTP/1.1 and HTTP/2 over TLS or h2c): a store [`Body`] as
//! `http_body` frames, which also finishes the request's [`Record`] when the body ends — sent
//! whole, failed, or dropped because the client went away — so metrics and the access log
//! describe what was delivered, not what was promised in the head.
//!
//! A failed chunk is returned as an error: hyper then resets the HTTP/2 stream, or closes the
//! HTTP/1.1 connection without finishing the body (no terminating chunk, short of its
//! `Content-Length`), so no client mistakes it for complete. Unknown length goes out as chunked
//! on HTTP/1.1 and as plain DATA frames on HTTP/2.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::conn_watch::InFlight;
use super::Record;
use crate::store::{Body, ByteStream};

/// Largest frame handed to hyper at once. A body from the hot-body cache is one piece of up to
/// `cache.max_item_bytes`; handed whole, the `send_timeout` watch (`conn_watch`) timed how long
/// the client took to read all of it, so a slow reader that never stopped was cut as stalled
/// (and logged as complete: every byte had been handed over). In pieces, it times each piece.
const MAX_FRAME: usize = 128 << 10;

/// Reads the first piece of a body that comes from a disk before its answer's head is sent
/// (hyper and HTTP/3 send the head first): a device error there can still be answered 503,
/// as the HTTP/1.1 fast path answers it. It was a 200 head, then a reset stream (HTTP/2) or a
/// cut connection (acceptance F6). The piece read is sent first; other bodies pass as they are.
/// `Err`: the first piece met a device fault (counted against its volume by the read).
pub async fn first_piece_read(body: Body, mapped_ok: bool) -> Result<Body, io::Error> {
    use futures_util::StreamExt;
    let Body::File(f) = body else {
        return Ok(body);
    };
    let len = f.len;
    if len == 0 {
        return Ok(Body::File(f));
    }
    let mut chunks = Box::pin(f.chunks(mapped_ok));
    let first = match chunks.next().await {
        Some(Err(e)) if crate::volumes::is_device_fault(&e) => return Err(e),
        first => first,
    };
    Ok(Body::Stream(crate::store::Stream {
        len: Some(len),
        inner: Box::pin(futures_util::stream::iter(first).chain(chunks)),
    }))
}

pub struct HyperBody {
    stream: Option<ByteStream>,
    /// What is left of the last chunk the stream gave, handed over [`MAX_FRAME`] at a time.
    rest: Bytes,
    /// The exact length, when known.
    len: Option<u64>,
    sent: u64,
    /// Set once the body reached its end (or had none).
    done: bool,
    record: Option<Record>,
    /// The request on its connection's watch (`conn_watch`): in flight until the body ends.
    in_flight: Option<InFlight>,
}

impl HyperBody {
    /// `mapped_ok`: the connection can send from a memory map safely (TLS, with its socket guard).
    pub fn new(body: Body, mapped_ok: bool, record: Record, in_flight: InFlight) -> HyperBody {
        let len = body.known_len();
        let stream = body.into_stream(mapped_ok);
        // The head goes to hyper now: until hyper first asks for the body (an HTTP/2 client
        // that grants no window never lets it), the client is the one that waits.
        in_flight.handed();
        HyperBody {
            done: stream.is_none(),
            stream,
            rest: Bytes::new(),
            len,
            sent: 0,
            record: Some(record),
            in_flight: Some(in_flight),
        }
    }

    /// No body, nothing to record: the answer to a request never carried out (a read pipelined
    /// by a client that is gone: `h1::Prefixed`).
    pub fn unrecorded() -> HyperBody {
        HyperBody {
            stream: None,
            rest: Bytes::new(),
            len: Some(0),
            sent: 0,
            done: true,
            record: None,
            in_flight: None,
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish(self.sent, self.done);
        }
        self.in_flight = None;
    }
}

impl http_body::Body for HyperBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            this.finish();
            return Poll::Ready(None);
        };
        if let Some(f) = &this.in_flight {
            f.polled();
        }
        if this.rest.is_empty() {
            match stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(b))) => this.rest = b,
                Poll::Ready(Some(Err(e))) => return this.failed(e),
                Poll::Ready(None) => return this.at_end(),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(MAX_FRAME));
        this.sent += piece.len() as u64;
        if let Some(f) = &this.in_flight {
            f.handed();
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(l) => SizeHint::with_exact(l.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

impl HyperBody {
    /// The stream failed: so does the body (hyper resets the stream or closes the connection).
    fn failed(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.stream = None;
        self.finish();
        Poll::Ready(Some(Err(e)))
    }

    /// The stream ended: the body too, unless short of the length promised (a failure then).
    fn at_end(&mut self) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.stream = None;
        if self.len.is_some_and(|l| l != self.sent) {
            self.finish();
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body ended short of its length",
            ))));
        }
        self.done = true;
        self.finish();
        Poll::Ready(None)
    }
}

impl Drop for HyperBody {
    fn drop(&mut self) {
        // hyper's HTTP/1.1 writer stops polling a body of known length once it has that many
        // bytes (its `Content-Length` is met), so the end is never polled: handed over whole is
        // complete. Otherwise not polled to the end: the client went away or the connection
        // failed.
        if self.stream.is_some() && self.len == Some(self.sent) {
            self.done = true;
        }
        self.finish();
    }
}
