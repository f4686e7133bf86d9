//! File bodies on the HTTP/1.1 fast path: `sendfile(2)`, so body bytes never pass through user
//! space, and small playlists copied from the page cache together with the head.
//!
//! A sendfile must never wait for the disk on a request thread: before each chunk the range is
//! made resident through the volume's I/O backend (a no-op when it already is). The first chunk
//! is made resident before the head is written, so a disk error there is still a precise 503.
//!
//! Zero-copy queues references to page-cache pages, so bytes of a file modified or truncated
//! during the send can reach the wire changed (or as zeros past a new end of file). segd cannot
//! recall them, so it guarantees the next best thing: such a response never completes. The file
//! is checked against the object's identity after every chunk, the last `TAIL` bytes are sent
//! only after a check, and a change fails the send, which the caller turns into a TCP reset.

use std::io;
use std::time::Duration;

use http::StatusCode;
use rustix::net::SendFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::write::{write_all_timeout, write_simple};
use crate::store::FileRange;

/// Largest single sendfile call; bounds how long one connection holds a worker, and the span
/// one residency check covers.
const SENDFILE_CHUNK: u64 = 1 << 20;

/// Held back and sent last, after a final check that the file did not change.
const TAIL: u64 = 64 * 1024;

/// Playlists up to this size are copied: one page-cache read and one write of head + body cost
/// less than sendfile's setup for a few KiB. Segments always go out with sendfile.
pub(super) const SMALL_COPY: u64 = 64 * 1024;

/// The next chunk to send from `off` towards `end`, holding back the tail.
fn chunk_len(off: u64, end: u64) -> u64 {
    let remaining = end - off;
    if remaining > TAIL {
        (remaining - TAIL).min(SENDFILE_CHUNK)
    } else {
        remaining
    }
}

/// Sends `head` then the range with sendfile; returns the body bytes sent.
pub(super) async fn send_file(
    stream: &mut TcpStream,
    head: &[u8],
    range: &FileRange,
    stall: Duration,
    first_byte: impl FnOnce(),
) -> io::Result<u64> {
    let end = range.offset + range.len;
    let first = chunk_len(range.offset, end);
    if let Err(e) = range.ensure_resident(range.offset, first).await {
        // Nothing is on the wire yet: the client gets a precise answer, not a reset.
        let _ = write_simple(
            stream,
            StatusCode::SERVICE_UNAVAILABLE,
            "volume unavailable\n",
        )
        .await;
        return Err(e);
    }
    send_more(stream, head, stall).await?;
    first_byte();
    let sock: &TcpStream = stream;
    let mut off = range.offset;
    while off < end {
        let want = chunk_len(off, end);
        // The first chunk was made resident above.
        if off != range.offset {
            range.ensure_resident(off, want).await?;
        }
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
        off += n as u64;
        if !range.still_current() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file changed while being sent",
            ));
        }
    }
    range.sent_zero_copy(range.len);
    Ok(range.len)
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
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            match range.read(range.offset, len).await {
                Ok(b) => {
                    head[at..at + b.len()].copy_from_slice(&b);
                    Ok(b.len())
                }
                Err(e) => Err(e),
            }
        }
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

/// Nothing is on the wire yet: answer 503 precisely, then fail (the caller closes).
async fn fail_small(stream: &mut TcpStream, e: io::Error) -> io::Result<u64> {
    let _ = write_simple(
        stream,
        StatusCode::SERVICE_UNAVAILABLE,
        "object changed while read\n",
    )
    .await;
    Err(e)
}

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
    let fut = stream.async_io(Interest::WRITABLE, || op().map_err(io::Error::from));
    tokio::time::timeout(stall, fut)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}
