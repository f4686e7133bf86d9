//! File bodies on the HTTP/1.1 fast path: `sendfile(2)`, so body bytes never pass through user
//! space, and small playlists copied from the page cache together with the head.
//!
//! A sendfile must never wait for the disk on a request thread: before each span of up to
//! `SENDFILE_CHUNK` bytes the span is made resident through the volume's I/O backend (a no-op
//! when it already is: two one-byte `RWF_NOWAIT` probes). The first span is made resident before
//! the head is written, so a disk error there is still a precise 503.
//!
//! Zero-copy queues references to page-cache pages, so bytes of a file modified or truncated
//! during the send can reach the wire changed (or as zeros past a new end of file). segd cannot
//! recall them, so it guarantees the next best thing: such a response never completes. The file
//! is checked against the object's identity (one `fstat`) after every span, the last `TAIL`
//! bytes are sent only after a check, and after them a last check; a change fails the send, which
//! the caller turns into a TCP reset. "Change" means what can make sent bytes wrong, a new size
//! or mtime (`FileRange::unchanged`): an unlink or a rename over the file leaves the held inode's
//! bytes intact, so a download that started before a replace or a DELETE finishes with them.
//!
//! What that costs per response, in system calls: a body of up to `SENDFILE_CHUNK` bytes goes
//! out in two sendfile calls (all but the tail, then the tail), after one residency check (two
//! probes) and with two identity checks; a 1.8 MB segment takes three sendfile calls, two
//! residency checks and three identity checks (it took six probes and a check per call before
//! the span was decoupled from the tail). A partial send (the socket buffer full) only continues
//! its chunk; it adds no check. All of it is about 1 % of segd's CPU on 1–2 MB segments; the
//! sendfile calls themselves are over 90 % (perf, `benches/results/2026-11-28-*-h1-perf/`).

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use http::StatusCode;
use rustix::net::SendFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::write::{write_all_timeout, write_simple};
use crate::store::FileRange;

/// Largest single sendfile call and the span one residency check covers; bounds how long one
/// connection holds a worker. 2 MiB (nginx's `sendfile_max_chunk`) was measured: it saves one
/// call per 1–2 MB segment but cost no less CPU per request (median 348 vs 310 µs over seven
/// interleaved rounds; more time in the kernel's page-cache lookups), so 1 MiB stays.
const SENDFILE_CHUNK: u64 = 1 << 20;

/// Held back and sent last, after a final check that the file did not change.
const TAIL: u64 = 64 * 1024;

/// Playlists up to this size are copied: one page-cache read and one write of head + body cost
/// less than sendfile's setup for a few KiB. Segments always go out with sendfile.
pub(super) const SMALL_COPY: u64 = 64 * 1024;

/// Where a zero-copy send stands, and what it must do next: pure arithmetic, so the order of
/// residency checks, sends and identity checks is tested without a socket.
struct Cursor {
    /// The next byte to send.
    off: u64,
    /// The end of the span made resident (nothing before the first [`Cursor::next_span`]).
    span_end: u64,
    /// The end of the body.
    end: u64,
}

impl Cursor {
    fn new(offset: u64, len: u64) -> Cursor {
        Cursor {
            off: offset,
            span_end: offset,
            end: offset + len,
        }
    }

    fn done(&self) -> bool {
        self.off >= self.end
    }

    /// The span (offset, length) to make resident before the next send, when the last one is
    /// used up.
    fn next_span(&mut self) -> Option<(u64, u64)> {
        if self.off < self.span_end || self.done() {
            return None;
        }
        let len = (self.end - self.off).min(SENDFILE_CHUNK);
        self.span_end = self.off + len;
        Some((self.off, len))
    }

    /// How many bytes the next sendfile may send: never past the resident span, and never into
    /// the tail together with bytes before it.
    fn want(&self) -> u64 {
        let remaining = self.end - self.off;
        let chunk = if remaining > TAIL {
            remaining - TAIL
        } else {
            remaining
        };
        chunk.min(self.span_end - self.off)
    }

    /// Records `n` bytes sent; true when the file must be checked now: at the end of each span
    /// (a change is noticed within one span), before the tail, and at the end. A partial send
    /// only continues its chunk.
    fn advance(&mut self, n: u64) -> bool {
        self.off += n;
        self.off == self.span_end || self.off == self.end || self.off + TAIL == self.end
    }
}

/// Sends `head` then the range with sendfile; `sent` counts the body bytes on their way, also
/// when the send fails part way.
pub(super) async fn send_file(
    stream: &mut TcpStream,
    head: &[u8],
    range: &FileRange,
    stall: Duration,
    first_byte: impl FnOnce(),
    sent: &mut u64,
    retry_after: u64,
) -> io::Result<()> {
    let mut cur = Cursor::new(range.offset, range.len);
    if let Some((off, len)) = cur.next_span() {
        if let Err(e) = range.ensure_resident(off, len).await {
            // Nothing is on the wire yet: the client gets the answer of an unavailable volume
            // (503, `Retry-After`), and the log and metrics say 503, not an unfinished 200.
            tracing::warn!(error = %e, "an object's bytes could not be read; answered 503");
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(retry_after),
            );
            let out = super::write::simple_bytes_with(
                StatusCode::SERVICE_UNAVAILABLE,
                "volume unavailable\n",
                h,
            );
            let _ = write_all_timeout(stream, &out, stall).await;
            return Err(io::Error::other(AnsweredInstead(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(crate::http::refusal::Refusal::VolumeUnavailable),
            )));
        }
    }
    send_more(stream, head, stall).await?;
    first_byte();
    let sock: &TcpStream = stream;
    while !cur.done() {
        if let Some((off, len)) = cur.next_span() {
            range.ensure_resident(off, len).await?;
        }
        let (off, want) = (cur.off, cur.want());
        let n = write_ready(sock, stall, || {
            let mut at = off;
            rustix::fs::sendfile(sock, &*range.file, Some(&mut at), want as usize)
        })
        .await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                range.note_error(&e);
                return Err(e);
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        *sent += n as u64;
        if cur.advance(n as u64) && !range.unchanged() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file changed while being sent",
            ));
        }
    }
    range.sent_zero_copy(range.len);
    Ok(())
}

/// Reads a small body (a playlist) from the page cache, or through the I/O backend when cold,
/// and writes it together with the head. A file that shrank is caught before any byte is sent.
pub(super) async fn write_small(
    stream: &mut TcpStream,
    mut head: Vec<u8>,
    range: &FileRange,
    stall: Duration,
) -> io::Result<u64> {
    let at = head.len();
    let len = range.len as usize;
    head.resize(at + len, 0);
    let n = match crate::io::pread_cached(&range.file, range.offset, &mut head[at..]) {
        Ok(n) => Ok(n),
        // On tmpfs and overlayfs every playlist was 503 "changed" (acceptance P1).
        Err(e) if crate::io::not_cached(&e) => match range.read(range.offset, len).await {
            Ok(b) => {
                head[at..at + b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            Err(e) => Err(e),
        },
        Err(e) => {
            range.note_error(&e);
            Err(e)
        }
    };
    let n = match n {
        Ok(n) if n == len => n,
        Ok(_) => {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank before it was sent",
            );
            return fail_small(stream, e).await;
        }
        Err(e) => return fail_small(stream, e).await,
    };
    write_all_timeout(stream, &head, stall).await?;
    Ok(n as u64)
}

/// Nothing is on the wire yet: answer 503 precisely, then fail (the caller closes, and
/// records the 503: [`AnsweredInstead`]).
async fn fail_small(stream: &mut TcpStream, e: io::Error) -> io::Result<u64> {
    tracing::warn!(error = %e, "a small body could not be read; answered 503");
    let _ = write_simple(
        stream,
        StatusCode::SERVICE_UNAVAILABLE,
        "object changed while read\n",
    )
    .await;
    Err(io::Error::other(AnsweredInstead(
        StatusCode::SERVICE_UNAVAILABLE,
        None,
    )))
}

/// The error of a body that was never sent because another answer went out instead (a
/// refusal, to be counted as one, when it was one).
#[derive(Debug)]
pub(super) struct AnsweredInstead(pub StatusCode, pub Option<crate::http::refusal::Refusal>);

impl std::fmt::Display for AnsweredInstead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "answered {} instead", self.0)
    }
}

impl std::error::Error for AnsweredInstead {}

/// Sends the head with `MSG_MORE`, so the kernel coalesces it with the first body bytes.
async fn send_more(stream: &TcpStream, bytes: &[u8], stall: Duration) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let n = write_ready(stream, stall, || {
            rustix::net::send(stream, rest, SendFlags::MORE | SendFlags::NOSIGNAL)
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
    mut op: impl FnMut() -> rustix::io::Result<usize>,
) -> io::Result<usize> {
    // What the client had not acknowledged when the socket first filled: taken then, not on
    // every write (a write that does not block costs no extra call).
    let mut acked: Option<super::socket::Acked> = None;
    loop {
        let fut = stream.async_io(Interest::WRITABLE, || {
            let r = op();
            if r == Err(rustix::io::Errno::AGAIN) && acked.is_none() {
                acked = Some(super::socket::Acked::now(stream.as_fd()));
            }
            r.map_err(io::Error::from)
        });
        let r = tokio::time::timeout(stall, fut).await;
        match r {
            Ok(r) => return r,
            // Still reading, slowly: wait on.
            Err(_) if acked.as_mut().is_some_and(|a| a.moved(stream.as_fd())) => {}
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Step {
        Resident(u64, u64),
        Send(u64, u64),
        Check(u64),
    }

    /// send_file's order of operations for a body of `len` bytes at `offset`, when each sendfile
    /// call sends at most `max_write` bytes (a socket buffer that fills up).
    fn steps(offset: u64, len: u64, max_write: u64) -> Vec<Step> {
        let mut cur = Cursor::new(offset, len);
        let mut out = Vec::new();
        while !cur.done() {
            if let Some((o, l)) = cur.next_span() {
                out.push(Step::Resident(o, l));
            }
            let n = cur.want().min(max_write);
            assert!(n > 0, "no progress at {}", cur.off);
            out.push(Step::Send(cur.off, n));
            if cur.advance(n) {
                out.push(Step::Check(cur.off));
            }
        }
        out
    }

    /// The zero-copy contract, for sizes around every boundary and with full or partial sends:
    /// every byte sent lies in a span made resident before it; the tail's bytes go out only after
    /// a check, never in the same call as earlier bytes; the last step is a check at the end;
    /// no call exceeds `SENDFILE_CHUNK`.
    #[test]
    fn tail_only_after_a_check_and_the_end_is_checked() {
        let c = SENDFILE_CHUNK;
        for len in [
            1,
            4096,
            TAIL - 1,
            TAIL,
            TAIL + 1,
            166_000,
            1_863_644,
            c - 1,
            c,
            c + 1,
            c + TAIL / 2,
            c + TAIL + 1,
            5 << 20,
            6_400_000,
        ] {
            for max_write in [u64::MAX, 300_000, 65_536, 4_000] {
                let offset = 1000;
                let end = offset + len;
                let tail_start = end.saturating_sub(TAIL).max(offset);
                let st = steps(offset, len, max_write);
                let mut resident_to = offset;
                let mut checked_at = None;
                let mut sent = offset;
                for s in &st {
                    match *s {
                        Step::Resident(o, l) => {
                            assert_eq!(o, sent, "{len}/{max_write}: spans are contiguous");
                            assert!(l <= c, "{len}/{max_write}: span {l}");
                            resident_to = o + l;
                        }
                        Step::Send(o, n) => {
                            assert_eq!(o, sent, "{len}/{max_write}");
                            assert!(o + n <= resident_to, "{len}/{max_write}: past the span");
                            assert!(n <= c, "{len}/{max_write}: call of {n}");
                            if o + n > tail_start && tail_start > offset {
                                assert!(
                                    o >= tail_start,
                                    "{len}/{max_write}: tail sent with earlier bytes"
                                );
                                assert!(
                                    checked_at.is_some_and(|at| at >= tail_start),
                                    "{len}/{max_write}: tail before a check"
                                );
                            }
                            sent = o + n;
                        }
                        Step::Check(at) => checked_at = Some(at),
                    }
                }
                assert_eq!(sent, end, "{len}/{max_write}: all sent");
                assert_eq!(st.last(), Some(&Step::Check(end)), "{len}/{max_write}");
            }
        }
    }

    /// What a CDN's typical segments cost: a hot 163 KB one is one residency check and two
    /// sends; a 1.8 MB one is two residency checks and three sends, with the file checked at
    /// each span's end, before the tail and at the end.
    #[test]
    fn typical_segments() {
        let len = 166_000;
        assert_eq!(
            steps(0, len, u64::MAX),
            vec![
                Step::Resident(0, len),
                Step::Send(0, len - TAIL),
                Step::Check(len - TAIL),
                Step::Send(len - TAIL, TAIL),
                Step::Check(len),
            ]
        );
        let (len, c) = (1_863_644, SENDFILE_CHUNK);
        assert_eq!(
            steps(0, len, u64::MAX),
            vec![
                Step::Resident(0, c),
                Step::Send(0, c),
                Step::Check(c),
                Step::Resident(c, len - c),
                Step::Send(c, len - TAIL - c),
                Step::Check(len - TAIL),
                Step::Send(len - TAIL, TAIL),
                Step::Check(len),
            ]
        );
    }
}
