//! The body writer for hyper (HTTP/2 here; later TLS and HTTP/3): these paths must copy body bytes
//! into the connection, so they take them from the hot-body cache when the whole object fits
//! (`[cache] max_item_bytes`), filling it once per object however many requests miss together,
//! and otherwise stream the range in chunks read through the volume's I/O backend.
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
}

impl Body {
    pub fn new(body: ReplyBody, state: &Arc<State>) -> Body {
        match body {
            ReplyBody::Empty => Body::Empty,
            ReplyBody::Static(b) => Body::Static(Some(b)),
            ReplyBody::File {
                file,
                offset,
                len,
                volume,
                meta,
                ..
            } => Body::File(FileStream {
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
