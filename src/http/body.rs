//! The body writer for hyper (HTTP/1.1 and HTTP/2): turns a [`ReplyBody`] into `Bytes` frames.
//!
//! File bodies are read in chunks with `pread` on tokio's blocking pool, so a slow disk blocks a
//! pool thread, never an event-loop thread. If the file shrinks while it is being sent, the body
//! fails instead of padding or repeating bytes: hyper then aborts the connection, so a client never
//! receives a short or wrong 200/206 that looks complete. A device error marks the volume unhealthy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use super::handler::ReplyBody;
use crate::volumes::{self, Volumes};

/// Largest read per frame.
const CHUNK: u64 = 256 * 1024;

pub enum Body {
    Empty,
    Static(Option<Bytes>),
    File(FileStream),
}

pub struct FileStream {
    file: Arc<File>,
    pos: u64,
    remaining: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    volumes: Arc<Volumes>,
    volume: usize,
}

impl Body {
    pub fn new(body: ReplyBody, volumes: &Arc<Volumes>) -> Body {
        match body {
            ReplyBody::Empty => Body::Empty,
            ReplyBody::Static(b) => Body::Static(Some(b)),
            ReplyBody::File {
                file,
                offset,
                len,
                volume,
            } => Body::File(FileStream {
                file,
                pos: offset,
                remaining: len,
                pending: None,
                volumes: Arc::clone(volumes),
                volume,
            }),
        }
    }
}

/// Reads exactly `len` bytes at `pos`, or fails (a short file is an error, never padding).
fn read_exact_at(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.freeze())
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
                let handle = fs.pending.get_or_insert_with(|| {
                    let file = Arc::clone(&fs.file);
                    let (pos, len) = (fs.pos, fs.remaining.min(CHUNK) as usize);
                    tokio::task::spawn_blocking(move || read_exact_at(&file, pos, len))
                });
                let res = match Pin::new(handle).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                fs.pending = None;
                match res {
                    Ok(Ok(bytes)) => {
                        fs.pos += bytes.len() as u64;
                        fs.remaining -= bytes.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    Ok(Err(e)) => {
                        if volumes::is_device_fault(&e) {
                            if let Some(v) = fs.volumes.get(fs.volume) {
                                v.record_fault(&e);
                            }
                        }
                        fs.remaining = 0;
                        Poll::Ready(Some(Err(e)))
                    }
                    Err(join) => {
                        fs.remaining = 0;
                        Poll::Ready(Some(Err(io::Error::other(join.to_string()))))
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

use std::future::Future;
