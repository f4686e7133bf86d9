//! The QUIC transport under the h3 crate: h3's `quic` traits implemented over quinn streams.
//! Owns stream plumbing only (accepting, opening, reading, writing, error conversion); HTTP/3
//! framing is h3's and request handling is `h3.rs`'s.
//!
//! This is what the h3-quinn crate does (its code is the model, MIT), with two additions segd
//! needs. h3 hides the QUIC stream behind its request stream, so every accepted request stream
//! leaves its [`StreamExtras`] in the connection's [`Accepted`] slot, which `h3::serve` takes
//! right after h3 hands it the stream's resolver:
//! - a [`Stopped`] future (quinn's `SendStream::stopped()`), raced against the handler, so a
//!   client cancelling a request whose response has not started (a parked LL-HLS reload) is seen;
//! - a [`BodyChunk`] slot: the body chunk segd is about to give h3 is offered there first, and
//!   when the DATA frame h3 then writes carries exactly that memory, quinn gets the `Bytes`
//!   itself (`write_chunks`) instead of copying it into its send buffer (h3's frame type owns
//!   its payload privately; only its bytes are visible, so the match is by address and length,
//!   which can only be the same bytes). Anything else is written by copy, as h3-quinn does.
//!
//! It also keeps the connection's [`Progress`]: when quinn last took response bytes on any of
//! its streams (or the client last acknowledged packets), which `h3.rs` measures `send_timeout`
//! against.
//!
//! Reads and writes poll quinn's cancel-safe futures in place, so no stream holds a boxed
//! future; the two accept loops and openers are boxed once per connection.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::{self, Stream, StreamExt};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;

/// Resolves when the peer stops the response direction of a request stream (STOP_SENDING:
/// `Some(code)`) or the stream can no longer be answered (connection lost, stream closed:
/// `None`).
pub type Stopped = Pin<Box<dyn Future<Output = Option<u64>> + Send + Sync>>;

/// What `h3::serve` gets of a request stream besides h3's request stream.
pub struct StreamExtras {
    pub stopped: Stopped,
    pub body: BodyChunk,
}

/// The [`StreamExtras`] of the request stream accepted last. h3's `accept` returns a resolver
/// for exactly the bidirectional stream it accepted last (streams it rejects after GOAWAY are
/// followed by another accept), so taking the slot right after `accept` pairs them.
#[derive(Clone, Default)]
pub struct Accepted(Arc<Mutex<Option<StreamExtras>>>);

impl Accepted {
    /// The extras of the stream h3 just accepted.
    pub fn take(&self) -> Option<StreamExtras> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }

    fn put(&self, extras: StreamExtras) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(extras);
        }
    }
}

/// The body chunk about to be sent on a request stream, shared by the request task (which
/// offers it right before `send_data`) and the stream's transport (which takes it when h3
/// writes the DATA frame).
#[derive(Clone, Default)]
pub struct BodyChunk(Arc<Mutex<Option<Bytes>>>);

impl BodyChunk {
    /// Offers `data` (a cheap clone) for the next frame written on the stream.
    pub fn offer(&self, data: &Bytes) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(data.clone());
        }
    }

    fn take(&self) -> Option<Bytes> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// When the client last showed it accepts data (tokio's clock): quinn took bytes written on
/// one of the connection's streams, or an ACK frame arrived. quinn takes bytes only within the
/// stream's and the connection's flow-control credit and its send window, which frees as the
/// client acknowledges what it got; a client on a slow link acknowledges packets between its
/// credit updates. A stream waiting its turn behind others sees this move; a client that takes
/// nothing (silent, or granting no credit with everything sent acknowledged) does not move it.
#[derive(Clone)]
pub struct Progress(Arc<ProgressClock>);

struct ProgressClock {
    epoch: tokio::time::Instant,
    /// Milliseconds from `epoch` to the last progress.
    last: AtomicU64,
    /// ACK frames received when last looked at (`check`).
    acks: AtomicU64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress(Arc::new(ProgressClock {
            epoch: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            acks: AtomicU64::new(0),
        }))
    }

    /// The last progress seen on the connection (its creation before the first).
    pub fn last(&self) -> tokio::time::Instant {
        self.0.epoch + Duration::from_millis(self.0.last.load(Ordering::Relaxed))
    }

    /// Notes progress now if ACK frames arrived on `conn` since the last look (one stats
    /// snapshot under quinn's connection lock: called by waiting writes a few times per
    /// `send_timeout`, not per packet).
    pub fn check(&self, conn: &quinn::Connection) {
        let acks = conn.stats().frame_rx.acks;
        if self.0.acks.fetch_max(acks, Ordering::Relaxed) < acks {
            self.note();
        }
    }

    fn note(&self) {
        let ms = self.0.epoch.elapsed().as_millis() as u64;
        self.0.last.fetch_max(ms, Ordering::Relaxed);
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

type Accepting<T> = Pin<Box<dyn Stream<Item = Result<T, quinn::ConnectionError>> + Send + Sync>>;

/// A QUIC connection as h3 sees it.
pub struct Connection {
    conn: quinn::Connection,
    incoming_bi: Accepting<(quinn::SendStream, quinn::RecvStream)>,
    incoming_uni: Accepting<quinn::RecvStream>,
    opener: OpenStreams,
    accepted: Accepted,
    progress: Progress,
}

impl Connection {
    /// Wraps `conn`; each accepted request stream's extras go to `accepted`, and each write quinn
    /// takes on a request stream is noted in `progress`.
    pub fn new(conn: quinn::Connection, accepted: Accepted, progress: Progress) -> Connection {
        let bi = conn.clone();
        let uni = conn.clone();
        Connection {
            incoming_bi: Box::pin(stream::unfold(bi, |c| async {
                Some((c.accept_bi().await, c))
            })),
            incoming_uni: Box::pin(stream::unfold(uni, |c| async {
                Some((c.accept_uni().await, c))
            })),
            opener: OpenStreams::new(conn.clone()),
            conn,
            accepted,
            progress,
        }
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        match self.incoming_uni.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(recv))) => Poll::Ready(Ok(RecvStream::new(recv))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(connection_error(e))),
            Poll::Ready(None) => Poll::Ready(Err(ended())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        match self.incoming_bi.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok((send, recv)))) => {
                let stopped = send.stopped();
                let body = BodyChunk::default();
                self.accepted.put(StreamExtras {
                    stopped: Box::pin(async move {
                        match stopped.await {
                            Ok(Some(code)) => Some(code.into_inner()),
                            _ => None,
                        }
                    }),
                    body: body.clone(),
                });
                let mut send = SendStream::new(send);
                send.offered = Some(body);
                send.progress = Some(self.progress.clone());
                Poll::Ready(Ok(BidiStream {
                    send,
                    recv: RecvStream::new(recv),
                }))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(connection_error(e))),
            Poll::Ready(None) => Poll::Ready(Err(ended())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn opener(&self) -> OpenStreams {
        OpenStreams::new(self.conn.clone())
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.opener, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        close(&self.conn, code, reason);
    }
}

/// Opens streams on a connection (h3 opens its control and QPACK streams with it).
pub struct OpenStreams {
    conn: quinn::Connection,
    opening_bi: Option<Accepting<(quinn::SendStream, quinn::RecvStream)>>,
    opening_uni: Option<Accepting<quinn::SendStream>>,
}

impl OpenStreams {
    fn new(conn: quinn::Connection) -> OpenStreams {
        OpenStreams {
            conn,
            opening_bi: None,
            opening_uni: None,
        }
    }
}

impl Clone for OpenStreams {
    fn clone(&self) -> OpenStreams {
        OpenStreams::new(self.conn.clone())
    }
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        let conn = &self.conn;
        let opening = self.opening_bi.get_or_insert_with(|| {
            Box::pin(stream::unfold(conn.clone(), |c| async {
                Some((c.open_bi().await, c))
            }))
        });
        match opening.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok((send, recv)))) => Poll::Ready(Ok(BidiStream {
                send: SendStream::new(send),
                recv: RecvStream::new(recv),
            })),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(stream_connection_error(e))),
            Poll::Ready(None) => Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ended(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        let conn = &self.conn;
        let opening = self.opening_uni.get_or_insert_with(|| {
            Box::pin(stream::unfold(conn.clone(), |c| async {
                Some((c.open_uni().await, c))
            }))
        });
        match opening.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(send))) => Poll::Ready(Ok(SendStream::new(send))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(stream_connection_error(e))),
            Poll::Ready(None) => Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ended(),
            })),
            Poll::Pending => Poll::Pending,
        }
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        close(&self.conn, code, reason);
    }
}

/// A request stream: both directions, split by h3 into the response (send) and request body
/// (recv) halves.
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream<B>, RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

/// The sending half of a stream. h3 hands it one frame at a time (`send_data`) and waits in
/// `poll_ready` until quinn took all of it: quinn takes bytes only within the stream's and the
/// connection's flow-control credit and its send window, which is the back-pressure `h3.rs`
/// relies on.
pub struct SendStream<B: Buf> {
    stream: quinn::SendStream,
    /// A frame's header and payload as owned pieces, handed to quinn without copying (written
    /// before `writing`).
    owned: [Bytes; 2],
    /// The rest of the frame, copied into quinn as it takes it.
    writing: Option<WriteBuf<B>>,
    /// Request streams: where the request task offers the next body chunk.
    offered: Option<BodyChunk>,
    /// Request streams: the connection's progress clock, moved by every write quinn takes.
    progress: Option<Progress>,
}

impl<B: Buf> SendStream<B> {
    fn new(stream: quinn::SendStream) -> SendStream<B> {
        SendStream {
            stream,
            owned: [Bytes::new(), Bytes::new()],
            writing: None,
            offered: None,
            progress: None,
        }
    }

    /// Moves the frame's header into `owned[0]` and, when the frame's payload is exactly the
    /// offered chunk's memory, the chunk into `owned[1]`; true when nothing is left to copy.
    fn take_frame(&mut self, frame: &mut WriteBuf<B>) -> bool {
        let Some(chunk) = self.offered.as_ref().and_then(BodyChunk::take) else {
            return false;
        };
        let Some(head_len) = frame.remaining().checked_sub(chunk.len()) else {
            return false;
        };
        if chunk.is_empty() || frame.chunk().len() != head_len {
            return false;
        }
        self.owned[0] = Bytes::copy_from_slice(frame.chunk());
        frame.advance(head_len);
        let payload = frame.chunk();
        if payload.as_ptr() != chunk.as_ptr() || payload.len() != chunk.len() {
            // Not the offered bytes: the header goes first from `owned`, the rest by copy.
            return false;
        }
        self.owned[1] = chunk;
        true
    }
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        while let Some(first) = self.owned.iter().position(|b| !b.is_empty()) {
            // `write_chunks` is cancel-safe, and empties (or splits) what quinn took.
            match pin!(self.stream.write_chunks(&mut self.owned[first..])).poll(cx) {
                Poll::Ready(Ok(w)) => took(&self.progress, w.bytes),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Some(data) = self.writing.as_mut() {
            while data.has_remaining() {
                // `write` is cancel-safe: a future dropped while pending wrote nothing.
                let written = match pin!(self.stream.write(data.chunk())).poll(cx) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(write_error(e))),
                    Poll::Pending => return Poll::Pending,
                };
                data.advance(written);
                took(&self.progress, written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() || self.owned.iter().any(|b| !b.is_empty()) {
            // h3 waits for poll_ready before the next frame; this would be a bug in h3.
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data before the previous frame was written".into(),
                ),
            });
        }
        let mut frame = data.into();
        if !self.take_frame(&mut frame) {
            self.writing = Some(frame);
        }
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self
            .stream
            .reset(VarInt::from_u64(reset_code).unwrap_or(VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// quinn took `n` bytes of a stream: the connection progresses.
fn took(progress: &Option<Progress>, n: usize) {
    if n > 0 {
        if let Some(p) = progress {
            p.note();
        }
    }
}

/// The receiving half of a stream (request bodies, and the client's control and QPACK streams).
pub struct RecvStream {
    stream: quinn::RecvStream,
}

impl RecvStream {
    fn new(stream: quinn::RecvStream) -> RecvStream {
        RecvStream { stream }
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        // `read_chunk` is cancel-safe: a future dropped while pending consumed nothing.
        match pin!(self.stream.read_chunk(usize::MAX, true)).poll(cx) {
            Poll::Ready(Ok(chunk)) => Poll::Ready(Ok(chunk.map(|c| c.bytes))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(read_error(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self
            .stream
            .stop(VarInt::from_u64(error_code).unwrap_or(VarInt::MAX));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// A request body segd stops reading before its end (an answer that does not need the rest: a
/// 413, 403, 415…) asks the client to stop sending with `H3_NO_ERROR`, as RFC 9114 §4.1.1 says
/// it should; quinn's own drop would send STOP_SENDING with code 0, which is no HTTP/3 error
/// code. A stream h3 already stopped with a code of its own (`H3_MESSAGE_ERROR`), or read to its
/// end, or on a closed connection, is left as it is (`stop` then fails and sends nothing).
impl Drop for RecvStream {
    fn drop(&mut self) {
        let _ = self
            .stream
            .stop(VarInt::from_u32(Code::H3_NO_ERROR.value() as u32));
    }
}

// === errors and ids ===

/// quinn's stream ids are QUIC varints (below 2^62), exactly the range h3's `StreamId` takes.
fn stream_id(id: quinn::StreamId) -> StreamId {
    let n: u64 = id.into();
    StreamId::try_from(n).expect("a QUIC stream id is a varint")
}

fn close(conn: &quinn::Connection, code: Code, reason: &[u8]) {
    conn.close(
        VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX),
        reason,
    );
}

/// The accept and open loops never end by themselves; if one did, the connection is unusable.
fn ended() -> ConnectionErrorIncoming {
    ConnectionErrorIncoming::InternalError("QUIC stream loop ended".into())
}

fn connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into_inner(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_connection_error(e: quinn::ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

fn read_error(e: quinn::ReadError) -> StreamErrorIncoming {
    match e {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => stream_connection_error(e),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn write_error(e: quinn::WriteError) -> StreamErrorIncoming {
    match e {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => stream_connection_error(e),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}
