//! segd's HTTP/1.1 head parser in front of hyper, for the HTTP/1.1 connections hyper serves
//! over TLS. Each request head is read and checked here (`parse`, then `answer::screen`, as the
//! plaintext fast path does) before hyper sees a byte of it, so a malformed, ambiguous or
//! oversized head gets the fast path's precise answer (its status, a `text/plain` reason,
//! `Connection: close`) instead of hyper's 400 with an empty body, and a head hyper would take
//! but segd refuses (two `Content-Length`s, `Content-Length` with `Transfer-Encoding`, userinfo
//! in the target) never reaches it. A higher HTTP/1 minor version is rewritten to 1.1 in the
//! bytes hyper is given (hyper's parser knows 1.0 and 1.1 only), as on the fast path.
//!
//! hyper does everything else: it parses the head it is then handed (the same bytes), reads
//! the body, writes the answers. The gate only knows where each message ends: it hands hyper one
//! checked head and its body, never a byte further, and reads the next head after that. A
//! `Content-Length` body ends by its length; a `chunked` body where hyper's decoder finds its
//! end: the gate follows its framing byte for byte as that decoder does ([`Chunk`]), decoding
//! nothing (hyper does). At a byte the decoder refuses, the rest of the connection is hyper's,
//! which fails the body there and closes the connection. The plaintext fast path hands a
//! connection with a chunked body to hyper behind this gate too, so every HTTP/1.1 head segd
//! serves is read by its own parser first. On a connection without ALPN an HTTP/2 preface first
//! also leaves the connection to hyper (which serves either protocol there).
//!
//! A refused head: hyper reads the end of the stream (it holds nothing of the next message, so
//! it ends the connection cleanly once the answers before are written), and the answer is
//! written when hyper shuts the connection down, after everything hyper wrote; then the request
//! bytes still unread are drained briefly so the answer is not lost to a reset
//! (`socket::linger_close`, which the fast path uses).
//!
//! The timeouts are the gate's, as on the fast path: a connection with no byte of a next head
//! for `keepalive_timeout` (of its first head: `header_read_timeout`) just ends (idle), and a
//! head not complete within `header_read_timeout` of its first byte is 408. hyper's own head timer, which counts from
//! when it starts waiting, idle time included (it closed idle TLS connections after
//! `header_read_timeout`, not `keepalive_timeout`), is [`HYPER_BACKSTOP`] on these
//! connections, past the largest both may be set to, so the gate always decides first, also
//! after a reload that raised them (the gate takes the values current when it accepts).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::answer::{screen, Answer};
use super::parse::{try_parse, Framing, HeadError, Limits};
use super::H2_PREFACE;

/// hyper's own head timer on gated connections (see the module doc): past the largest
/// `keepalive_timeout` and `header_read_timeout` together.
pub const HYPER_BACKSTOP: Duration = Duration::from_secs(
    crate::config::KEEPALIVE_TIMEOUT_MAX.as_secs()
        + crate::config::HEADER_READ_TIMEOUT_MAX.as_secs()
        + 1,
);

/// How long, and how many bytes, unread request bytes are drained after an answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Bytes read from the connection at a time while a head is incomplete.
const READ_CHUNK: usize = 4096;

/// An HTTP/1.1 connection (the decrypted stream) whose request heads segd checks before hyper
/// reads them; see the module doc.
pub struct HeadGate<S> {
    inner: S,
    /// Read from `inner`, not handed to hyper yet.
    buf: BytesMut,
    /// In a chunked body: how many bytes at the front of `buf` were scanned (`State::Chunked`
    /// is the state after them), to be handed to hyper.
    scanned: usize,
    state: State,
    limits: Limits,
    /// When the head awaited must have started (`keepalive_timeout`) or be complete
    /// (`header_read_timeout` from its first byte: `started`), once `armed`; the timer is kept
    /// and reset for the next head rather than made anew per request.
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
    started: bool,
    /// No head has come yet: the wait for its first byte is `header_read_timeout`, not
    /// `keepalive_timeout` (a connection that never sends a request is closed as soon as on
    /// the plaintext fast path; it was kept six times as long over TLS).
    first: bool,
    refusals: Option<IntCounterVec>,
    /// The answer to a refused head, and how much of it is written.
    answer: Option<(Answer, Vec<u8>, usize)>,
    /// After the answer: drain what the client still sends, until this deadline.
    linger: Option<(Pin<Box<Sleep>>, usize)>,
    shut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next bytes are a request head; `h2_preface`: an HTTP/2 preface may come instead
    /// (the first bytes of a connection without ALPN).
    Head { h2_preface: bool },
    /// Handing hyper a checked message: this many more bytes of it (its head, then its body);
    /// `chunked`: then its body, in `chunked` coding.
    Message { left: u64, chunked: bool },
    /// Handing hyper a `chunked` body, where its framing is at the first byte not yet scanned.
    Chunked(Chunk),
    /// hyper reads everything from here on.
    Through,
    /// A head was refused, or the client left or stalled within one: hyper reads the end.
    Ended,
}

/// Where a `chunked` body's framing is (RFC 9112 §7.1), read as hyper's decoder reads it
/// (`vendor/hyper/src/proto/h1/decode.rs`, `ChunkedState`), step for step, so that both see the
/// body end at the same byte. The gate decodes nothing: it passes the bytes on as they are and
/// only finds where the message ends, to check the head after it. A byte hyper's decoder
/// refuses is refused here too ([`Chunk::step`] → `None`): the gate then leaves the rest of the
/// connection to hyper, which fails the body at that byte and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line's first byte (a hex digit).
    Start,
    /// The size's digits so far.
    Size(u64),
    /// Blanks after the size.
    SizeLws(u64),
    /// A chunk extension, ignored up to its CR.
    Extension(u64),
    /// The size line's LF.
    SizeLf(u64),
    /// This many bytes of chunk data (never 0), passed on without a look.
    Data(u64),
    BodyCr,
    BodyLf,
    /// After the last chunk's line: a CR (the end), or a trailer field line.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
    /// The message has ended: the next byte is the next head's.
    End,
}

impl Chunk {
    /// The state after `b` (not in `Data`), or `None` where hyper's decoder fails the body.
    fn step(self, b: u8) -> Option<Chunk> {
        let digit = |size: u64| {
            let d = char::from(b).to_digit(16)?;
            size.checked_mul(16)?.checked_add(u64::from(d))
        };
        Some(match (self, b) {
            (Chunk::Start, _) => Chunk::Size(digit(0)?),
            (Chunk::Size(n) | Chunk::SizeLws(n), b'\t' | b' ') => Chunk::SizeLws(n),
            (Chunk::Size(n) | Chunk::SizeLws(n), b';') => Chunk::Extension(n),
            (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Size(n), _) => Chunk::Size(digit(n)?),
            (Chunk::Extension(_), b'\n') => return None,
            (Chunk::Extension(n), _) => Chunk::Extension(n),
            (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::BodyCr, b'\r') => Chunk::BodyLf,
            (Chunk::BodyLf, b'\n') => Chunk::Start,
            (Chunk::EndCr, b'\r') => Chunk::EndLf,
            (Chunk::EndCr | Chunk::Trailer, b'\n') => return None,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
            (Chunk::EndLf, b'\n') => Chunk::End,
            _ => return None,
        })
    }
}

impl<S> HeadGate<S> {
    /// A gate on an HTTP/1.1 connection; `h2_preface`: the connection has no ALPN, so it may
    /// start with an HTTP/2 preface, which hyper then serves. `refusals` counts refused heads
    /// (`segd_refusals_total`), as on the fast path.
    pub fn new(
        inner: S,
        server: &crate::config::ServerConfig,
        refusals: IntCounterVec,
        h2_preface: bool,
    ) -> HeadGate<S> {
        HeadGate {
            inner,
            buf: BytesMut::new(),
            scanned: 0,
            state: State::Head { h2_preface },
            limits: Limits::from(server),
            deadline: None,
            armed: false,
            started: false,
            first: true,
            refusals: Some(refusals),
            answer: None,
            linger: None,
            shut: false,
        }
    }

    /// No gate: every byte goes to hyper as it comes (HTTP/2, chosen by ALPN).
    pub fn through(inner: S) -> HeadGate<S> {
        HeadGate {
            inner,
            buf: BytesMut::new(),
            scanned: 0,
            state: State::Through,
            limits: Limits {
                keepalive_timeout: Duration::ZERO,
                header_read_timeout: Duration::ZERO,
                max_header_bytes: 0,
                max_header_fields: 0,
            },
            deadline: None,
            armed: false,
            started: false,
            first: false,
            refusals: None,
            answer: None,
            linger: None,
            shut: false,
        }
    }

    /// Refuses the head being read: hyper reads the end of the stream, the answer waits for
    /// hyper's shutdown.
    fn refuse(&mut self, a: Answer) {
        if let Some(r) = &self.refusals {
            a.count(r);
        }
        self.answer = Some((a, a.bytes(), 0));
        self.end();
    }

    fn end(&mut self) {
        self.state = State::Ended;
        self.armed = false;
        self.buf = BytesMut::new();
    }

    /// Moves up to `n` buffered bytes into `out`; how many moved.
    fn give(&mut self, out: &mut ReadBuf<'_>, n: u64) -> usize {
        let k = (self.buf.len() as u64).min(n).min(out.remaining() as u64) as usize;
        out.put_slice(&self.buf[..k]);
        self.buf.advance(k);
        if self.buf.is_empty() {
            // Released while the connection idles.
            self.buf = BytesMut::new();
        }
        k
    }
}

impl<S: AsyncRead + Unpin> HeadGate<S> {
    /// Reads more of a head into `buf`: `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let mut rb = ReadBuf::new(&mut self.buf[len..]);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.buf.truncate(len + n);
        match r {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads at most `max` bytes from `inner` straight into `out`: how many.
    fn read_into(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
        max: u64,
    ) -> Poll<io::Result<usize>> {
        let max = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(out.remaining());
        let mut rb = ReadBuf::new(out.initialize_unfilled_to(max));
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        let k = rb.filled().len();
        out.advance(k);
        r.map_ok(|()| k)
    }

    /// Waits for a complete head and decides it: the state after it (`Message`, `Through`,
    /// `Ended`).
    fn poll_head(&mut self, cx: &mut Context<'_>, mut h2_preface: bool) -> Poll<io::Result<()>> {
        loop {
            if h2_preface && !self.buf.is_empty() {
                let n = self.buf.len().min(H2_PREFACE.len());
                if self.buf[..n] != H2_PREFACE[..n] {
                    h2_preface = false;
                    self.state = State::Head { h2_preface };
                } else if n == H2_PREFACE.len() {
                    self.state = State::Through;
                    self.armed = false;
                    return Poll::Ready(Ok(()));
                }
            }
            if !h2_preface {
                if let Some(parsed) = self.parse() {
                    self.armed = false;
                    self.first = false;
                    match parsed {
                        Ok(state) => self.state = state,
                        Err(Some(a)) => self.refuse(a),
                        Err(None) => self.end(),
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            // Idle until a head's first byte (blank lines between requests are not one).
            let begun = self.buf.iter().any(|&b| b != b'\r' && b != b'\n');
            let rearm = !self.armed || (begun && !self.started);
            let limit = if begun || self.first {
                self.limits.header_read_timeout
            } else {
                self.limits.keepalive_timeout
            };
            let at = Instant::now() + limit;
            let deadline = match (&mut self.deadline, rearm) {
                (Some(d), false) => d,
                (Some(d), true) => {
                    d.as_mut().reset(at);
                    d
                }
                (d @ None, _) => d.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            self.armed = true;
            self.started = begun;
            if deadline.as_mut().poll(cx).is_ready() {
                // No byte of a head within keepalive_timeout (blank lines at most), or of an
                // HTTP/2 preface: the connection just ends. Part of a head: 408.
                match Answer::to_head_error(&HeadError::TimedOut) {
                    Some(a) if begun && !h2_preface => self.refuse(a),
                    _ => self.end(),
                }
                return Poll::Ready(Ok(()));
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    // The client left within a head: no answer, as on the fast path.
                    self.end();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The buffered head, if complete, decided as the fast path decides it: the state to hand
    /// it to hyper in, or the answer refusing it (`None`: the client left, no answer). `None`
    /// while the head is incomplete.
    fn parse(&mut self) -> Option<Result<State, Option<Answer>>> {
        let (head, len) = match try_parse(&mut self.buf, &self.limits) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return None,
            Err(e) => return Some(Err(Answer::to_head_error(&e))),
        };
        let len = len as u64;
        Some(match screen(&head).map(|s| s.framing) {
            // A target `http::Uri` cannot parse, hyper would refuse with its own empty 400
            // (the fast path reads targets itself).
            Ok(_) if head.target.parse::<http::Uri>().is_err() => Err(Some(Answer::BAD_REQUEST)),
            Ok(Framing::NoBody) => Ok(State::Message {
                left: len,
                chunked: false,
            }),
            Ok(Framing::Length(n)) => Ok(State::Message {
                left: len.saturating_add(n),
                chunked: false,
            }),
            Ok(Framing::Chunked) => Ok(State::Message {
                left: len,
                chunked: true,
            }),
            Err(a) => Err(Some(a)),
        })
    }

    /// Scans the buffered bytes of a chunked body not scanned yet, up to the message's end:
    /// the state after them (`Through` at a byte hyper's decoder refuses).
    fn scan(&mut self, mut at: Chunk) -> State {
        while self.scanned < self.buf.len() {
            at = match at {
                Chunk::End => break,
                Chunk::Data(n) => {
                    let k = ((self.buf.len() - self.scanned) as u64).min(n);
                    self.scanned += k as usize;
                    if k == n {
                        Chunk::BodyCr
                    } else {
                        Chunk::Data(n - k)
                    }
                }
                at => match at.step(self.buf[self.scanned]) {
                    Some(next) => {
                        self.scanned += 1;
                        next
                    }
                    None => return State::Through,
                },
            };
        }
        State::Chunked(at)
    }

    /// After the answer: reads and drops what the client still sends, for a while.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((deadline, drained)) = &mut self.linger else {
            return Poll::Ready(());
        };
        let mut sink = [0u8; 4096];
        loop {
            if *drained >= LINGER_BYTES || deadline.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut rb = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => *drained += rb.filled().len(),
                Poll::Ready(_) => break,
                Poll::Pending => return Poll::Pending,
            }
        }
        self.linger = None;
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Ended => return Poll::Ready(Ok(())),
                State::Through => {
                    if !this.buf.is_empty() {
                        this.give(out, u64::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, out);
                }
                State::Message { left: 0, chunked } => {
                    this.state = if chunked {
                        State::Chunked(Chunk::Start)
                    } else {
                        State::Head { h2_preface: false }
                    };
                }
                State::Message { left, chunked } => {
                    if !this.buf.is_empty() {
                        let k = this.give(out, left);
                        this.state = State::Message {
                            left: left - k as u64,
                            chunked,
                        };
                        return Poll::Ready(Ok(()));
                    }
                    // The body straight into hyper's buffer, never past the message's end.
                    let r = this.read_into(cx, out, left);
                    if let Poll::Ready(Ok(k)) = r {
                        this.state = State::Message {
                            left: left - k as u64,
                            chunked,
                        };
                    }
                    return r.map_ok(|_| ());
                }
                State::Chunked(at) => {
                    this.state = this.scan(at);
                    if this.state == State::Through {
                        // Everything buffered, scanned or not, goes to hyper as it is.
                        this.scanned = 0;
                        continue;
                    }
                    if this.scanned > 0 {
                        let k = this.give(out, this.scanned as u64);
                        this.scanned -= k;
                        return Poll::Ready(Ok(()));
                    }
                    match this.state {
                        State::Chunked(Chunk::End) => {
                            this.state = State::Head { h2_preface: false }
                        }
                        // Chunk data straight into hyper's buffer (nothing is buffered here).
                        State::Chunked(Chunk::Data(n)) => {
                            let room = out.remaining() > 0;
                            let r = this.read_into(cx, out, n);
                            if let Poll::Ready(Ok(k)) = r {
                                let k = k as u64;
                                this.state = if k == 0 && room {
                                    // The end of the stream within the body: hyper's to see.
                                    State::Through
                                } else if k == n {
                                    State::Chunked(Chunk::BodyCr)
                                } else {
                                    State::Chunked(Chunk::Data(n - k))
                                };
                            }
                            return r.map_ok(|_| ());
                        }
                        State::Chunked(_) => match this.poll_fill(cx) {
                            // The end of the stream within the body: hyper's to see.
                            Poll::Ready(Ok(0)) => this.state = State::Through,
                            Poll::Ready(Ok(_)) => {}
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        },
                        // A byte hyper's decoder refuses is buffered: the rest is hyper's.
                        _ => {}
                    }
                }
                State::Head { h2_preface } => match this.poll_head(cx, h2_preface) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                },
            }
        }
    }
}

impl<S: AsyncWrite + AsyncRead + Unpin> AsyncWrite for HeadGate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Writes a refused head's answer after everything hyper wrote, shuts down, and lingers.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((a, bytes, written)) = &mut this.answer {
            while *written < bytes.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if a.lingers() {
                this.linger = Some((
                    Box::pin(tokio::time::sleep_until(Instant::now() + LINGER)),
                    0,
                ));
            }
            this.answer = None;
        }
        if !this.shut {
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => this.shut = true,
                other => return other,
            }
        }
        match this.poll_linger(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn gate(io: tokio::io::DuplexStream) -> (HeadGate<tokio::io::DuplexStream>, IntCounterVec) {
        let cfg = crate::config::Config::parse(
            "[[volumes]]\npath = \"/\"\n",
            std::path::Path::new("/x.toml"),
        )
        .expect("cfg");
        let refusals =
            IntCounterVec::new(prometheus::Opts::new("r", "r"), &["reason", "fault"]).expect("r");
        (
            HeadGate::new(io, &cfg.server, refusals.clone(), false),
            refusals,
        )
    }

    /// Refused heads counted, whatever the reason.
    fn refused(refusals: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        Collector::collect(refusals)
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// hyper is handed one message at a time, never a byte past it: a request with its body,
    /// then the end of the stream where the next head is refused (and counted, as every refused
    /// head is); the answer follows what hyper wrote, once it shuts down.
    #[tokio::test]
    async fn hands_over_whole_messages_and_answers_after_hyper() {
        let first = "PUT /a.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
        for (next, answer, counted) in [
            (
                "GET /b.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "\r\n\r\nbad request\n",
                1,
            ),
            (
                "GET /b.ts HTTP/3.0\r\nHost: t\r\n\r\n",
                "\r\n\r\nhttp version not supported\n",
                1,
            ),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let (mut gate, refusals) = gate(server);
            client
                .write_all(format!("{first}{next}").as_bytes())
                .await
                .expect("write");
            client.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            gate.read_to_end(&mut got).await.expect("read");
            assert_eq!(String::from_utf8_lossy(&got), first);
            gate.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("hyper's answer");
            gate.shutdown().await.expect("gate shutdown");
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read answers");
            let out = String::from_utf8_lossy(&out);
            assert!(
                out.starts_with("HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\nHTTP/1.1 "),
                "{out}"
            );
            assert!(out.ends_with(answer), "{out}");
            assert_eq!(refused(&refusals), counted, "refusals counted for {next:?}");
        }
    }

    /// Writes `data` to the gate's peer `step` bytes at a time (every way a body's framing can
    /// be cut between reads), then closes; returns what the gate hands hyper.
    async fn through_gate(data: &[u8], step: usize) -> (String, u64) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (mut gate, refusals) = gate(server);
        let data = data.to_vec();
        let writer = tokio::spawn(async move {
            for piece in data.chunks(step) {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client.shutdown().await.expect("shutdown");
            client
        });
        let mut got = Vec::new();
        gate.read_to_end(&mut got).await.expect("read");
        drop(writer.await.expect("writer"));
        (
            String::from_utf8_lossy(&got).into_owned(),
            refused(&refusals),
        )
    }

    /// A chunked body is passed on whole, up to its last byte as hyper's decoder reads it
    /// (extensions, blanks after the size, upper-case digits, a trailer section), and the head
    /// after it is checked here: refused, never handed to hyper.
    #[tokio::test]
    async fn a_chunked_body_is_delimited_and_the_next_head_checked() {
        let head = "PUT /a.ts HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
        let next = "PUT /b.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for body in [
            "0\r\n\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
            "5;name=\"v; x\"\r\nhello\r\n0;last\r\n\r\n",
            "A \t\r\n0123456789\r\n00002\r\n\r\n\r\n0\r\n\r\n",
            "3\r\nabc\r\n0\r\nX-Sum: 1\r\nContent-Length: 9\r\n\r\n",
        ] {
            let first = format!("{head}{body}");
            for step in [1, 2, 3, 7, 4096] {
                let (got, refused) = through_gate(format!("{first}{next}").as_bytes(), step).await;
                assert_eq!(got, first, "{body:?} in pieces of {step}");
                assert_eq!(refused, 1, "{body:?} in pieces of {step}");
            }
        }
        // Two messages with chunked bodies, then a good head: all three handed on.
        let good = "GET /c.ts HTTP/1.1\r\nHost: t\r\n\r\n";
        let all = format!("{head}3\r\nabc\r\n0\r\n\r\n{head}0\r\n\r\n{good}");
        for step in [1, 5, 4096] {
            assert_eq!(through_gate(all.as_bytes(), step).await, (all.clone(), 0));
        }
    }

    /// A chunked body hyper's decoder fails: from the byte it fails at, every byte goes to
    /// hyper as it is (which fails the body there and closes the connection); nothing after it
    /// is taken for a head, and nothing is refused here.
    #[tokio::test]
    async fn a_chunked_body_hyper_fails_is_left_to_hyper() {
        let head = "PUT /a.ts HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
        let next = "GET /b.ts HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n";
        for body in [
            "x\r\n",
            ";x\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "5 5\r\nhello\r\n0\r\n\r\n",
            "5;a\nb\r\nhello\r\n0\r\n\r\n",
            "5\r\nhello\n0\r\n\r\n",
            "5\r\nhelloX\r\n0\r\n\r\n",
            "0\r\n\n",
            "0\r\nX: 1\n\r\n",
            "0\r\nX: 1\r\r\n",
            "0\r\n\rX",
            "1ffffffffffffffff\r\n",
        ] {
            let all = format!("{head}{body}{next}");
            for step in [1, 4096] {
                assert_eq!(
                    through_gate(all.as_bytes(), step).await,
                    (all.clone(), 0),
                    "{body:?} in pieces of {step}"
                );
            }
        }
    }

    /// The largest size hyper takes (16 hex digits) is read as hyper reads it.
    #[test]
    fn chunk_sizes_are_read_as_hyper_reads_them() {
        let size = |line: &str| {
            line.bytes()
                .try_fold(Chunk::Start, |at, b| at.step(b))
                .and_then(|at| at.step(b'\n'))
        };
        assert_eq!(size("ffffffffffffffff\r"), Some(Chunk::Data(u64::MAX)));
        assert_eq!(size("0000000000000000001a\r"), Some(Chunk::Data(26)));
        assert_eq!(size("0\r"), Some(Chunk::EndCr));
        assert_eq!(size("10000000000000000\r"), None, "overflow");
    }
}
