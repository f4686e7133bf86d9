//! Socket helpers for the HTTP/1.1 fast path: abortive close, lingering close, and the stream
//! that replays bytes already read when a connection is handed to hyper.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Bytes written to the socket that the client has not acknowledged yet (`SIOCOUTQ`); 0 when
/// it cannot be told.
pub(crate) fn unacked(socket: std::os::fd::BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n`.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::TIOCOUTQ,
            &mut n,
        )
    };
    if r == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// Whether a client whose socket stayed unwritable for `send_timeout` is still reading: a
/// socket is reported writable only once about a third of its send buffer has drained
/// (megabytes, with autotuning), so a client that reads slowly but steadily looked like one
/// that stopped, and was cut (acceptance). It made progress when it acknowledged bytes: fewer
/// wait unacknowledged than at the last look.
pub(super) struct Acked(usize);

impl Acked {
    pub(super) fn now(socket: std::os::fd::BorrowedFd<'_>) -> Acked {
        Acked(unacked(socket))
    }

    /// Whether the client acknowledged bytes since the last look (then it is the last look).
    pub(super) fn moved(&mut self, socket: std::os::fd::BorrowedFd<'_>) -> bool {
        let now = unacked(socket);
        let moved = now != 0 && now < self.0;
        self.0 = now;
        moved
    }
}

/// Makes the coming close an abortive one (RST): SO_LINGER with a zero timeout, which never
/// blocks; unsent bytes are dropped.
pub(super) fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Resolves when the peer has closed the connection (or reset it). Pipelined bytes mean the
/// client is still there: then it never resolves.
pub(super) async fn peer_closed(stream: &TcpStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut byte = [0u8; 1];
        // try_io clears the readiness when the peek would block (stale readiness).
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            rustix::net::recv(
                stream,
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            )
            .map(|(n, _)| n)
            .map_err(io::Error::from)
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => return std::future::pending().await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Closes a connection that may still carry unread request bytes: stop writing, then drain
/// briefly so the kernel does not answer our last response with a reset.
pub(super) async fn linger_close(mut stream: TcpStream) {
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

/// Acknowledges at once what was read from `socket`, instead of after the kernel's delayed-ACK
/// timer (40 ms here): for a read that took bytes, and before waiting for more. A client with
/// Nagle's algorithm on (ffmpeg's default, Java's sockets) holds back the rest of a request
/// until its first bytes are acknowledged, so on a kept-alive connection every upload waited
/// for the timer, and one that left right after its last upload lost what it held (its kernel
/// drops unsent bytes when it resets the connection). After a read that leaves bytes in the
/// socket the kernel sends no ACK yet, so the wait that follows sends it.
///
/// Also after an answer to a write (PUT, POST, DELETE), at once and again [`REACK_AFTER`]
/// later: sending an answer right after a request puts the kernel back into delaying ACKs (to
/// send them with the next answer), and so does its resending of an answer the client is slow
/// to acknowledge (ffmpeg never reads them; its kernel delays its ACKs). The next request's
/// head would then be acknowledged only once segd reads it, and a client that sends its last
/// upload and exits at once (ffmpeg) loses the body it held back whenever segd is slower to
/// read than it is to exit (a busy machine). Out of that mode, the kernel acknowledges the head
/// as it arrives when it has quick ACKs left, which it has again after a pause longer than
/// the retransmission timeout (about 200 ms; a packager pauses a segment between uploads); the
/// body then follows at once
/// (`ingest::a_nagle_clients_last_upload_is_acknowledged_while_segd_is_busy`).
pub(super) fn ack_now(socket: impl AsFd) {
    let _ = rustix::net::sockopt::set_tcp_quickack(socket, true);
}

/// When [`ack_now`] is said again after an answer to a write: once the answer is acknowledged
/// or resent on loopback and LAN paths (a client's delayed ACK is at most 200 ms on Linux; an
/// answer not acknowledged by then is resent after about 200 ms plus two round trips, so on a
/// slow WAN path a resend can still come later), and before the client's next upload (a
/// packager's come a segment apart).
pub(super) const REACK_AFTER: Duration = Duration::from_millis(300);

/// The second [`ack_now`] after an answer to a write, [`REACK_AFTER`] later unless a request
/// comes first; boxed, so an idle connection stays small while it is not armed.
#[derive(Default)]
pub(super) struct Reack(Option<Pin<Box<tokio::time::Sleep>>>);

impl Reack {
    /// [`ack_now`] at once, and again after [`REACK_AFTER`] ([`Reack::poll_due`]).
    pub(super) fn arm(&mut self, socket: impl AsFd) {
        ack_now(socket);
        let at = tokio::time::Instant::now() + REACK_AFTER;
        match &mut self.0 {
            Some(t) => t.as_mut().reset(at),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// A request came: no second ACK is needed.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }

    pub(super) fn is_armed(&self) -> bool {
        self.0.is_some()
    }

    /// Ready once the timer fires (then disarmed): the caller says [`ack_now`].
    pub(super) fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(t) = &mut self.0 else {
            return Poll::Pending;
        };
        std::task::ready!(t.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(())
    }
}

/// Whether a failed write says the peer is gone (it reset the connection or closed it), as
/// opposed to a stall or a local failure.
pub(super) fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// A stream that first yields bytes already read (the h2 preface, or a request head) and then
/// the socket.
///
/// `orphans`: when the peer is gone — a write fails with a reset or a broken pipe, or a read
/// with a reset — the requests it sent in full are still carried out, unanswered. The kernel
/// keeps what arrived before the reset readable, and a client that pipelines uploads and exits
/// without reading the answers (ffmpeg with `-http_persistent 1`: its last segment and its
/// final playlist, sent right before it exits) resets the connection while segd is still busy
/// with an earlier request. So from then on writes are discarded, a reset read is the end of
/// the stream (a body it cuts short fails as on any early end: nothing is written), and the
/// connection ends when the bytes that arrived are used up; no more can arrive after a reset.
/// For HTTP/1.1 connections handed to hyper (a chunked body), and under TLS for HTTP/1.1
/// connections (beneath the TLS layer: what the peer sent in full before it left is decrypted
/// and carried out); HTTP/2 keeps hyper's own handling of a lost connection.
pub struct Prefixed<S = TcpStream> {
    prefix: Bytes,
    inner: S,
    orphans: bool,
    /// The peer is gone; writes are discarded (only with `orphans`). Shared with the
    /// connection's requests ([`Prefixed::gone_flag`]), which then carry out only writes.
    gone: Arc<AtomicBool>,
    /// Bytes were written since the last flush ([`ack_now`] after the flush).
    wrote: bool,
    /// Set by the connection's requests when one is a write ([`Prefixed::writes_flag`]): from
    /// then on each answer is followed by [`ack_now`], now and after [`REACK_AFTER`].
    writes: Arc<AtomicBool>,
    /// Armed after an answer on a connection that carries writes.
    reack: Reack,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S, orphans: bool) -> Prefixed<S> {
        Prefixed {
            prefix,
            inner,
            orphans,
            gone: Arc::new(AtomicBool::new(false)),
            wrote: false,
            writes: Arc::new(AtomicBool::new(false)),
            reack: Reack::default(),
        }
    }

    /// Set once a request on the connection is a write (uploads and DELETEs): its answers
    /// are then followed by [`ack_now`].
    pub fn writes_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.writes)
    }

    /// Set once the peer is gone: requests read after that are not answered, so only writes
    /// (uploads, DELETEs) are worth carrying out.
    pub fn gone_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.gone)
    }

    /// The socket's descriptor, for [`crate::http::service::Conn::socket`].
    pub fn raw_fd(&self) -> std::os::fd::RawFd
    where
        S: AsFd,
    {
        use std::os::fd::AsRawFd;
        self.inner.as_fd().as_raw_fd()
    }

    /// Whether the requests of a peer that is gone are carried out (see the type's doc). Set
    /// before anything is served; for TLS, once ALPN has said which protocol is spoken.
    pub fn set_orphans(&mut self, orphans: bool) {
        self.orphans = orphans;
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn set_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    /// An HTTP/1.1 connection whose peer is already gone (an answer could not be written):
    /// the requests it sent in full (`prefix`, then what the socket still holds) are carried
    /// out, unanswered.
    pub fn orphaned(prefix: Bytes, inner: S) -> Prefixed<S> {
        let p = Prefixed::new(prefix, inner, true);
        p.set_gone();
        p
    }

    /// Whether `e` says the peer is gone and the connection should go on unanswered.
    fn goes_on_without(&mut self, e: &io::Error) -> bool {
        if self.orphans && peer_gone(e) {
            self.set_gone();
        }
        self.is_gone()
    }

    /// Says [`ack_now`] again once the timer set after an answer fires (polled from reads
    /// and flushes, so the connection's task wakes for it).
    fn poll_reack(&mut self, cx: &mut Context<'_>)
    where
        S: AsFd,
    {
        if self.reack.poll_due(cx).is_ready() {
            ack_now(&self.inner);
        }
    }

    /// A write's result, with the answer discarded once the peer is gone.
    fn written(&mut self, r: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.wrote = true;
        }
        match r {
            Poll::Ready(Err(e)) if self.goes_on_without(&e) => Poll::Ready(Ok(len)),
            r => r,
        }
    }

    /// A flush's or shutdown's result, likewise.
    fn done(&mut self, r: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
        match r {
            Poll::Ready(Err(e)) if self.goes_on_without(&e) => Poll::Ready(Ok(())),
            r => r,
        }
    }
}

impl<S: AsyncRead + AsFd + Unpin> AsyncRead for Prefixed<S> {
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
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            // A reset read is the end of what the peer sent (nothing is added to `buf`).
            Poll::Ready(Err(e)) if self.orphans && e.kind() == io::ErrorKind::ConnectionReset => {
                self.set_gone();
                Poll::Ready(Ok(()))
            }
            // Acknowledged at once ([`ack_now`]).
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                ack_now(&self.inner);
                self.reack.disarm();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                ack_now(&self.inner);
                self.poll_reack(cx);
                Poll::Pending
            }
            r => r,
        }
    }
}

impl<S: AsyncWrite + AsFd + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_gone() {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(r, buf.len())
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_gone() {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        // An answer went out on a connection that carries writes: the next request's head is
        // acknowledged on arrival ([`ack_now`], now and after [`REACK_AFTER`]). Once per
        // flush, not per write.
        if self.wrote && matches!(r, Poll::Ready(Ok(()))) && self.writes.load(Ordering::Relaxed) {
            self.wrote = false;
            let this = &mut *self;
            this.reack.arm(&this.inner);
            self.poll_reack(cx);
        }
        self.done(r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_gone() {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.done(r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.is_gone() {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(r, len)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
