//! The body writer for the copying paths (hyper's HTTP/2 and TLS, and HTTP/3): they must pass
//! body bytes through user space, so they take them from the hot-body cache when the whole object
//! fits (`[cache] max_item_bytes`), filling it once per object however many requests miss
//! together. Larger segments over TLS are sliced from a memory map of the file (`io::mapped`: no
//! read copy; pages made resident through the I/O backend first); everything else streams in
//! chunks read through the volume's I/O backend.
//!
//! If the file shrinks while it is being read, the body fails instead of padding or repeating
//! bytes: hyper then resets the stream, so a client never receives a short or wrong 200/206 that
//! looks complete. A device error marks the volume unhealthy.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http_body::{Frame, SizeHint};

use super::handler::ReplyBody;
use crate::io::mapped::Mapping;
use crate::state::State;
use crate::volumes::ObjectMeta;

pub enum Body {
    Empty,
    Static(Option<Bytes>),
    File(FileStream),
}

pub struct FileStream {
    state: Arc<State>,
    file: Arc<File>,
    meta: ObjectMeta,
    volume: usize,
    pos: u64,
    remaining: u64,
    pending: Option<BoxFuture<'static, io::Result<Bytes>>>,
    first: bool,
    /// Set when the body is sent from a mapping.
    map: Option<Arc<Mapping>>,
}

impl Body {
    /// `mapped_ok`: the connection can send from a mapping safely (TLS, with its socket guard).
    pub fn new(body: ReplyBody, state: &Arc<State>, mapped_ok: bool) -> Body {
        match body {
            ReplyBody::Empty => Body::Empty,
            ReplyBody::Static(b) => Body::Static(Some(b)),
            ReplyBody::File {
                file,
                offset,
                len,
                volume,
                meta,
                small_copy,
            } => Body::File(FileStream {
                // Immutable segments only (never playlists), and only when not cached whole.
                map: (mapped_ok
                    && !small_copy
                    && state.config.server.mmap
                    && !state.bodies.admits(meta.len))
                .then(|| state.maps.get(&file, &meta))
                .flatten(),
                state: Arc::clone(state),
                file,
                meta,
                volume,
                pos: offset,
                remaining: len,
                pending: None,
                first: true,
            }),
        }
    }
}

impl FileStream {
    /// The next chunk: the whole range from the cache on the first poll when the object is
    /// cacheable, else up to `io::CHUNK` bytes read through the backend.
    fn next_read(&mut self) -> BoxFuture<'static, io::Result<Bytes>> {
        let state = Arc::clone(&self.state);
        let file = Arc::clone(&self.file);
        let (meta, volume, pos, remaining) = (self.meta, self.volume, self.pos, self.remaining);
        let whole = self.first && state.bodies.admits(meta.len);
        self.first = false;
        if let Some(map) = &self.map {
            let map = Arc::clone(map);
            return async move {
                let want = remaining.min(MAP_CHUNK);
                if map.poisoned() {
                    return Err(io::Error::other("mapped file was truncated while served"));
                }
                state
                    .io
                    .ensure_resident(volume, &file, &meta, pos, want)
                    .await?;
                // The file must still cover the chunk: never touch pages past its end.
                if file.metadata()?.len() < pos + want || (pos + want) as usize > map.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ));
                }
                state.metrics.mapped_bytes.inc_by(want);
                Ok(map.slice(pos as usize, want as usize))
            }
            .boxed();
        }
        async move {
            if whole {
                let fill_state = Arc::clone(&state);
                let fill_file = Arc::clone(&file);
                let all = state
                    .bodies
                    .get_or_fill(&meta, async move {
                        fill_state
                            .io
                            .read(volume, fill_file, 0, meta.len as usize)
                            .await
                    })
                    .await
                    .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
                let end = (pos + remaining) as usize;
                if end > all.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cached body shorter than the range",
                    ));
                }
                return Ok(all.slice(pos as usize..end));
            }
            let want = remaining.min(crate::io::CHUNK as u64) as usize;
            state.io.read(volume, file, pos, want).await
        }
        .boxed()
    }
}

/// Bytes handed out per mapped chunk (no buffer behind it, so larger than a read chunk).
const MAP_CHUNK: u64 = 2 * crate::io::CHUNK as u64;

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Static(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::File(fs) => {
                if fs.remaining == 0 {
                    return Poll::Ready(None);
                }
                if fs.pending.is_none() {
                    fs.pending = Some(fs.next_read());
                }
                let res = match fs.pending.as_mut().map(|f| f.as_mut().poll(cx)) {
                    Some(Poll::Ready(r)) => r,
                    _ => return Poll::Pending,
                };
                fs.pending = None;
                match res {
                    Ok(bytes) if !bytes.is_empty() => {
                        fs.pos += bytes.len() as u64;
                        fs.remaining = fs.remaining.saturating_sub(bytes.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    Ok(_) => {
                        fs.remaining = 0;
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "empty read",
                        ))))
                    }
                    Err(e) => {
                        fs.state.volumes.note_error(fs.volume, &e);
                        fs.remaining = 0;
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Static(b) => b.is_none(),
            Body::File(fs) => fs.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Static(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File(fs) => SizeHint::with_exact(fs.remaining),
        }
    }
}
