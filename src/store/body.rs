//! Response bodies of every shape, named by reference until a protocol's writer sends them.
//!
//! A [`Body`] is one of:
//! - `Empty` — HEAD, 304, 204;
//! - `Bytes` — in memory (error texts, rewritten playlists);
//! - `File` — a byte range of an open file on a volume ([`FileRange`]): the plaintext HTTP/1.1
//!   writer sends it with `sendfile(2)`, the copying writers (hyper, HTTP/3) take it in chunks
//!   from the hot-body cache, a memory map, or reads through the volume's I/O backend;
//! - `Stream` — bytes that arrive over time, with a length that may be unknown when the head is
//!   sent (objects still being written, upstream fills). Unknown length goes out as chunked
//!   transfer-coding on HTTP/1.1 and as plain DATA frames on h2/h3.
//!
//! The contract every writer keeps: a body that fails mid-way never looks complete to the
//! client. A file that shrinks or changes while it is read fails the body instead of padding or
//! repeating bytes; a stream that yields an error fails it; the writer then resets the
//! connection (HTTP/1.1) or the stream (h2, h3). A device error marks the volume unhealthy.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::local::Disk;
use crate::io::mapped::Mapping;
use crate::volumes::ObjectMeta;

/// A stream of body bytes; an `Err` item fails the response.
pub type ByteStream = Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send>>;

/// What to send as a response body (see the module doc).
pub enum Body {
    Empty,
    Bytes(Bytes),
    File(FileRange),
    Stream(Stream),
}

/// Bytes that arrive over time. `len` is the total when known in advance.
pub struct Stream {
    pub len: Option<u64>,
    pub inner: ByteStream,
}

impl Body {
    /// Bytes this body will put on the wire, when known before sending.
    pub fn known_len(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Bytes(b) => Some(b.len() as u64),
            Body::File(f) => Some(f.len),
            Body::Stream(s) => s.len,
        }
    }

    /// The access log's `cache` field for this body as a copying writer (hyper, HTTP/3) sends it:
    /// `hit` or `miss` in the hot-body cache, `bypass` for files too big for it, `stream` for
    /// streams, `none` for no body from the store.
    pub fn cache_status(&self) -> &'static str {
        match self {
            Body::File(f) if f.disk.cacheable(f.meta.len) => {
                if f.disk.cached_now(&f.meta) {
                    "hit"
                } else {
                    "miss"
                }
            }
            Body::File(_) => "bypass",
            Body::Stream(_) => "stream",
            _ => "none",
        }
    }

    /// The body as a stream of chunks, for the copying writers. `mapped_ok`: the connection can
    /// send from a memory map safely (TLS, with its socket guard).
    pub fn into_stream(self, mapped_ok: bool) -> Option<ByteStream> {
        match self {
            Body::Empty => None,
            Body::Bytes(b) if b.is_empty() => None,
            Body::Bytes(b) => Some(Box::pin(futures_util::stream::once(async move { Ok(b) }))),
            Body::File(f) if f.len == 0 => None,
            Body::File(f) => Some(Box::pin(f.chunks(mapped_ok))),
            Body::Stream(s) => Some(s.inner),
        }
    }
}

/// `len` bytes of an open file from `offset`, and the volume that holds it.
pub struct FileRange {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u64,
    /// Identity of the whole object (the hot-body cache key; the change check while sending).
    pub meta: ObjectMeta,
    /// A playlist: a writer may copy it instead of sendfile when it is small; never mapped.
    pub small: bool,
    pub(super) disk: Disk,
}

impl FileRange {
    /// Makes sure `len` bytes at `off` are in the page cache, pulling them in through the
    /// volume's I/O backend when they are not (a sendfile must never wait for the disk on a
    /// request thread). Call it per chunk: the middle of a file may be evicted while its ends
    /// are resident.
    pub async fn ensure_resident(&self, off: u64, len: u64) -> io::Result<()> {
        self.disk
            .ensure_resident(&self.file, &self.meta, off, len)
            .await
    }

    /// Whether the held file still has the bytes of the object this range was taken from: the
    /// same size and mtime (one `fstat`). An unlink or a rename over the file leaves them (see
    /// [`crate::volumes::unchanged`]); an in-place rewrite or a truncation does not.
    pub fn unchanged(&self) -> bool {
        crate::volumes::unchanged(&self.file, &self.meta)
    }

    /// Counts `e` against the volume when it is a device fault.
    pub fn note_error(&self, e: &io::Error) {
        self.disk.note_error(e);
    }

    /// Reads `len` bytes at `off` through the volume's I/O backend.
    pub async fn read(&self, off: u64, len: usize) -> io::Result<Bytes> {
        self.disk.read(Arc::clone(&self.file), off, len).await
    }

    /// Reports bytes that left by sendfile (never copied through user space).
    pub fn sent_zero_copy(&self, n: u64) {
        self.disk.sent_zero_copy(n);
    }

    /// The range as chunks for a copying writer: the whole object from the hot-body cache when
    /// it fits, slices of a memory map for large segments on connections that allow it, else
    /// reads of up to `io::CHUNK` bytes. See [`Chunks`] for when the file is checked.
    pub fn chunks(self, mapped_ok: bool) -> Chunks {
        let map = (mapped_ok && !self.small && self.disk.maps_ok(self.meta.len))
            .then(|| self.disk.map(&self.file, &self.meta))
            .flatten();
        Chunks {
            pos: self.offset,
            remaining: self.len,
            first: true,
            check_at: self.offset + CHECK_SPAN,
            pending: None,
            map,
            read: FIRST_READ,
            range: Arc::new(self),
        }
    }
}

/// The error that fails a body whose file changed under it.
fn changed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "file changed while being sent")
}

/// A [`FileRange`] read chunk by chunk (see [`FileRange::chunks`]), for every writer that copies
/// bytes (hyper's HTTP/1.1 and HTTP/2, with or without TLS, and HTTP/3).
///
/// A file rewritten in place or truncated while it is sent must fail the body, never complete
/// it with bytes of two versions, as the sendfile path does (`http::h1::zerocopy`). So the held
/// descriptor is checked with [`FileRange::unchanged`] (one `fstat`: size and mtime; an unlink or
/// a rename over the file is no change) at the same distances:
/// - reads: after the read that reaches each 1 MiB span's end and after the last read, before
///   their bytes are handed out: bytes read after a change may leave within that span, but the
///   body fails before it completes;
/// - memory-mapped chunks: before each chunk is handed out (the `fstat` that makes sure the file
///   still covers the chunk's pages, so no extra call): a mapped page is read when the writer
///   encrypts it, so a change is seen at the next chunk;
/// - the whole object from the hot-body cache: once, when the cache is filled
///   (`Disk::whole`); cached bytes are a copy and cannot change.
///
/// As with sendfile, a change after the last check, while the last bytes are still on their way
/// (queued in the writer or the socket), is not seen.
pub struct Chunks {
    range: Arc<FileRange>,
    pos: u64,
    remaining: u64,
    first: bool,
    /// The position a read has to reach before the file is checked again.
    check_at: u64,
    pending: Option<BoxFuture<'static, io::Result<Bytes>>>,
    map: Option<Arc<Mapping>>,
    /// Bytes the next read asks for: [`FIRST_READ`], doubled by each read up to `io::CHUNK`.
    read: u64,
}

/// The first read of a body read through the I/O backend. A writer asks for the body's first
/// bytes before its client has taken any (an HTTP/2 or HTTP/3 stream asks as soon as the
/// client grants a window, or even none), and holds what it got until the client takes it: a
/// whole `io::CHUNK` there pinned 256 KiB per stream, 32 MiB per connection of 128 streams for
/// clients that never read. One HTTP/2 frame's worth, doubled by each read as the client takes
/// them (nginx's output buffers hold 2 × 32 KiB per request).
const FIRST_READ: u64 = 16 << 10;

/// Bytes handed out per mapped chunk (no buffer behind it, so larger than a read chunk).
const MAP_CHUNK: u64 = 2 * crate::io::CHUNK as u64;

/// Bytes read between two checks of the file: the sendfile path's span, so every writer notices
/// a change within the same distance at the same cost (one `fstat` per MiB).
const CHECK_SPAN: u64 = 1 << 20;

impl Chunks {
    fn next_read(&mut self) -> BoxFuture<'static, io::Result<Bytes>> {
        let r = Arc::clone(&self.range);
        let (pos, remaining) = (self.pos, self.remaining);
        let whole = self.first && r.disk.cacheable(r.meta.len);
        self.first = false;
        if let Some(map) = &self.map {
            let map = Arc::clone(map);
            return async move {
                let want = remaining.min(MAP_CHUNK);
                if map.poisoned() {
                    return Err(io::Error::other("mapped file was truncated while served"));
                }
                r.ensure_resident(pos, want).await?;
                // The file must still hold the object's bytes: never touch pages past its end,
                // never hand out pages rewritten in place.
                if (pos + want) as usize > map.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ));
                }
                if !r.unchanged() {
                    return Err(changed());
                }
                r.disk.sent_mapped(want);
                Ok(map.slice(pos as usize, want as usize))
            }
            .boxed();
        }
        if whole {
            return async move {
                let all = r.disk.whole(&r.file, &r.meta).await?;
                let end = (pos + remaining) as usize;
                if end > all.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cached body shorter than the range",
                    ));
                }
                Ok(all.slice(pos as usize..end))
            }
            .boxed();
        }
        let want = remaining.min(self.read);
        self.read = (self.read * 2).min(crate::io::CHUNK as u64);
        let check = pos + want >= self.check_at || want == remaining;
        if check {
            self.check_at = pos + want + CHECK_SPAN;
        }
        async move {
            let bytes = r.read(pos, want as usize).await?;
            if check && !r.unchanged() {
                return Err(changed());
            }
            Ok(bytes)
        }
        .boxed()
    }
}

impl futures_util::Stream for Chunks {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.pending.is_none() {
            this.pending = Some(this.next_read());
        }
        let res = match this.pending.as_mut().map(|f| f.as_mut().poll(cx)) {
            Some(Poll::Ready(r)) => r,
            _ => return Poll::Pending,
        };
        this.pending = None;
        match res {
            Ok(bytes) if !bytes.is_empty() => {
                this.pos += bytes.len() as u64;
                this.remaining = this.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(bytes)))
            }
            Ok(_) => {
                this.remaining = 0;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "empty read",
                ))))
            }
            Err(e) => {
                // Device faults were counted where they happened (the read or the fill).
                this.remaining = 0;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, None)
    }
}
