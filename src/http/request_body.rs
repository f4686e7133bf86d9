//! Request bodies, the same on every protocol: an async stream of chunks the handler pulls when
//! (and only when) it has decided the request is acceptable, each chunk within a timeout, the
//! total within a limit. Framing is decoded by the protocol's library — hyper for HTTP/1.1
//! `chunked` (the fast path hands such connections to hyper) and HTTP/2, h3 for HTTP/3. A
//! `Content-Length` body on the HTTP/1.1 fast path is counted off the connection there
//! (`h1::body`).
//!
//! `Expect: 100-continue` follows from pulling: the interim 100 is sent when the body is first
//! polled, so a request refused before its body is read never gets one (and its connection is
//! closed after the answer, the unread body with it).
//!
//! An upload that can take its body through a pipe offers one ([`RequestBody::next_piece`]): a
//! body read from its own socket (the fast path's) then moves the bytes into it with `splice(2)`
//! instead of reading them, and the upload splices them on into its file (`io::pipe`).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::refusal::Refusal;
use crate::io::pipe::Pipe;
use crate::store::ByteStream;

/// How long a body may go without a byte while a newer upload of the same path waits for it
/// before it gives up to that one (409): uploads of one path are taken one at a time, and a
/// stalled one (a packager's lost connection, a half-open one after a reconnect) held every
/// newer version of the path, a live playlist's included, for its `body_timeout` each.
pub const YIELD_AFTER: Duration = Duration::from_secs(2);

/// The `Content-Length` a request declares: none, or exactly one number of digits alone, up to
/// 2^64 − 1. Anything else (a sign, spaces, a list, two fields, a larger number) is `Err`: a
/// recipient must treat an invalid length as unrecoverable (RFC 9110 §8.6), never guess.
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Result<Option<u64>, ()> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(one) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let s = one.to_str().map_err(|_| ())?;
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    s.parse().map(Some).map_err(|_| ())
}

/// Whether the client waits for `100 Continue` before it sends the body (RFC 9110 §10.1.1).
pub(crate) fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A piece of a body: bytes in memory, or bytes moved into the pipe the reader offered.
#[derive(Debug)]
pub enum Piece {
    Bytes(Bytes),
    Piped(Piped),
}

/// Bytes a body moved into a pipe.
#[derive(Debug, Clone, Copy)]
pub struct Piped {
    pub len: usize,
    /// The pipe can take no more: drain it before asking for the next piece.
    pub full: bool,
}

/// A body read from the socket it borrows (the HTTP/1.1 fast path's `Content-Length` body): read
/// in the request's own task, which always runs to its end.
pub trait ConnBody: Send {
    /// Whether the next piece would come from the socket (so a pipe could take it), not from
    /// bytes already read.
    fn can_splice(&self) -> bool;

    /// The next piece, `None` after the last. Given a pipe, bytes still in the socket are moved
    /// into it rather than read.
    fn next_piece<'s>(
        &'s mut self,
        pipe: Option<&'s mut Pipe>,
    ) -> futures_util::future::BoxFuture<'s, Option<io::Result<Piece>>>;
}

/// A request's body (possibly none).
pub struct RequestBody<'a> {
    stream: Option<Chunks<'a>>,
    /// The length the request declared (`Content-Length`), when it declared one.
    pub declared: Option<u64>,
    received: u64,
}

/// Where the chunks come from.
enum Chunks<'a> {
    /// A stream that owns what it reads from (hyper's body, h3's): the body can be read in a
    /// task of its own.
    Owned(ByteStream),
    /// A body that borrows its connection (the HTTP/1.1 fast path).
    Borrowed(&'a mut dyn ConnBody),
}

impl<'a> RequestBody<'a> {
    /// No body at all.
    pub fn none() -> RequestBody<'a> {
        RequestBody {
            stream: None,
            declared: Some(0),
            received: 0,
        }
    }

    pub fn new(declared: Option<u64>, stream: ByteStream) -> RequestBody<'a> {
        RequestBody {
            stream: Some(Chunks::Owned(stream)),
            declared,
            received: 0,
        }
    }

    /// A body read from a connection it borrows.
    pub fn borrowed(declared: Option<u64>, body: &'a mut dyn ConnBody) -> RequestBody<'a> {
        RequestBody {
            stream: Some(Chunks::Borrowed(body)),
            declared,
            received: 0,
        }
    }

    /// The body as one that may move to a task of its own (`Ok`), or back as it is when it
    /// borrows its connection (`Err`): then it is read where the request is handled.
    pub fn detach(self) -> Result<RequestBody<'static>, RequestBody<'a>> {
        let stream = match self.stream {
            Some(Chunks::Borrowed(s)) => {
                return Err(RequestBody {
                    stream: Some(Chunks::Borrowed(s)),
                    ..self
                })
            }
            Some(Chunks::Owned(s)) => Some(Chunks::Owned(s)),
            None => None,
        };
        Ok(RequestBody {
            stream,
            declared: self.declared,
            received: self.received,
        })
    }

    /// A request whose `Content-Length` is invalid: reading its body fails (400), so a write
    /// stores nothing and a read answers 400 after the head.
    pub fn invalid_length() -> RequestBody<'static> {
        let failed = futures_util::stream::once(async {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid content-length",
            ))
        });
        RequestBody::new(None, Box::pin(failed))
    }

    /// hyper's body (HTTP/1.1 and HTTP/2): data frames in order, trailers skipped (their fields
    /// mean nothing to segd). HTTP/2 trailers with pseudo-header fields make the message
    /// malformed; h2 drops those fields before hyper sees the trailers, so h2 itself resets the
    /// stream for them (patched: `vendor/h2/SEGD-PATCH.md`) and the body fails.
    pub fn from_hyper(body: hyper::body::Incoming) -> RequestBody<'static> {
        Self::from_hyper_telling(body, None)
    }

    /// As [`RequestBody::from_hyper`]; `read_whole` is set once the body has been read to its
    /// end (its declared length, or the end of its frames). An HTTP/1.1 body left short of it
    /// keeps hyper from reusing the connection: the answer must say `Connection: close`.
    pub fn from_hyper_telling(
        body: hyper::body::Incoming,
        read_whole: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> RequestBody<'static> {
        use http_body::Body as _;
        use std::sync::atomic::Ordering;
        if body.is_end_stream() {
            if let Some(f) = &read_whole {
                f.store(true, Ordering::Relaxed);
            }
            return RequestBody::none();
        }
        let declared = body.size_hint().exact();
        let frames = http_body_util::BodyStream::new(body).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(io::Error::other(e))),
            }
        });
        let Some(flag) = read_whole else {
            return RequestBody::new(declared, Box::pin(frames));
        };
        let at_end = std::sync::Arc::clone(&flag);
        let mut got = 0u64;
        let frames = frames
            .inspect(move |piece| {
                if let Ok(b) = piece {
                    got += b.len() as u64;
                    if Some(got) == declared {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            })
            .chain(futures_util::stream::poll_fn(move |_| {
                at_end.store(true, Ordering::Relaxed);
                std::task::Poll::Ready(None)
            }));
        RequestBody::new(declared, Box::pin(frames))
    }

    /// Whether the request may carry bytes (declared non-zero, or of unknown length).
    pub fn is_present(&self) -> bool {
        self.stream.is_some() && self.declared != Some(0)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the next piece can be moved into a pipe ([`RequestBody::next_piece`]): bytes still
    /// in the socket of a body that borrows its connection.
    pub fn can_splice(&self) -> bool {
        matches!(&self.stream, Some(Chunks::Borrowed(b)) if b.can_splice())
    }

    /// The next chunk (`None` at the end), within `timeout`, keeping the total within `limit`.
    pub async fn next(&mut self, limit: u64, timeout: Duration) -> Result<Option<Bytes>, Refusal> {
        match self.next_piece(limit, timeout, None, &|| false).await? {
            None => Ok(None),
            Some(Piece::Bytes(b)) => Ok(Some(b)),
            Some(Piece::Piped(_)) => Err(Refusal::Internal),
        }
    }

    /// The next piece (`None` at the end), within `timeout`, keeping the total within `limit`.
    /// Given `pipe`, a body that [can splice](RequestBody::can_splice) moves what its socket
    /// holds into it (a piece of zero bytes when the pipe is full); what was buffered already
    /// comes as bytes first.
    /// `contended`: whether another upload of the same path has waited for this one long
    /// enough ([`YIELD_AFTER`]); then this body gives up (`Superseded`), whether bytes still
    /// come or not.
    pub async fn next_piece(
        &mut self,
        limit: u64,
        timeout: Duration,
        pipe: Option<&mut Pipe>,
        contended: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Option<Piece>, Refusal> {
        if self.declared.is_some_and(|d| d > limit) {
            return Err(Refusal::TooLarge);
        }
        if contended() {
            return Err(Refusal::Superseded);
        }
        let give_up = async {
            let start = tokio::time::Instant::now();
            let deadline = start + timeout;
            loop {
                let next = tokio::time::Instant::now() + Duration::from_millis(250);
                tokio::time::sleep_until(next.min(deadline)).await;
                if tokio::time::Instant::now() >= deadline {
                    return Refusal::BodyTimeout;
                }
                if contended() {
                    return Refusal::Superseded;
                }
            }
        };
        // The body first (`biased`): a piece that is there already is taken without the timer
        // ever being armed (a timer armed and dropped per piece was two trips to the timer
        // wheel; most pieces are ready when asked for).
        let next = match self.stream.as_mut() {
            None => return Ok(None),
            Some(Chunks::Owned(s)) => tokio::select! {
                biased;
                c = s.next() => Ok(c.map(|r| r.map(Piece::Bytes))),
                r = give_up => Err(r),
            },
            Some(Chunks::Borrowed(b)) => tokio::select! {
                biased;
                c = b.next_piece(pipe) => Ok(c),
                r = give_up => Err(r),
            },
        };
        match next {
            Err(r) => Err(r),
            Ok(None) => {
                self.stream = None;
                // Fewer bytes than declared. hyper and the HTTP/1.1 fast path refuse that
                // themselves, except where hyper reports a stream the client reset with
                // NO_ERROR as ended; h3 does not check at all (RFC 9114 §4.1.2: malformed).
                if self.declared.is_some_and(|d| d != self.received) {
                    tracing::debug!(declared = ?self.declared, received = self.received, "request body shorter than its content-length");
                    return Err(Refusal::BodyIncomplete);
                }
                Ok(None)
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = ?e, "request body failed");
                self.stream = None;
                Err(Refusal::BodyIncomplete)
            }
            Ok(Some(Ok(piece))) => {
                self.received += match &piece {
                    Piece::Bytes(b) => b.len(),
                    Piece::Piped(p) => p.len,
                } as u64;
                if self.received > limit {
                    return Err(Refusal::TooLarge);
                }
                if self.declared.is_some_and(|d| self.received > d) {
                    tracing::debug!(declared = ?self.declared, received = self.received, "request body longer than its content-length");
                    self.stream = None;
                    return Err(Refusal::BodyIncomplete);
                }
                Ok(Some(piece))
            }
        }
    }

    /// Reads the whole body and throws it away (a GET, HEAD or OPTIONS that carries one: legal,
    /// meaningless, and it must be consumed for the next request on the connection), within
    /// `timeout` in all: timed per read, a body trickled a byte at a time would hold the
    /// connection, unanswered, for `limit` times `timeout` (a slowloris past the head's bound).
    pub async fn discard(&mut self, limit: u64, timeout: Duration) -> Result<(), Refusal> {
        let all = async {
            while self.next(limit, timeout).await?.is_some() {}
            Ok(())
        };
        tokio::time::timeout(timeout, all)
            .await
            .unwrap_or(Err(Refusal::BodyTimeout))
    }
}
