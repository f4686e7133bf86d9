//! Request bodies, the same on every protocol: an async stream of chunks the handler pulls when
//! (and only when) it has decided the request is acceptable, each chunk within a timeout, the
//! total within a limit. Framing is decoded by the protocol's library — hyper for HTTP/1.1
//! (`Content-Length` and `chunked`; the fast path hands such connections to hyper) and HTTP/2,
//! h3 for HTTP/3 — never by segd.
//!
//! `Expect: 100-continue` follows from pulling: hyper sends the interim 100 when the body is
//! first polled, so a request refused before its body is read never gets one (and its
//! connection is closed after the answer, the unread body with it).

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;

use super::refusal::Refusal;
use crate::store::ByteStream;

/// A request's body (possibly none).
pub struct RequestBody {
    stream: Option<ByteStream>,
    /// The length the request declared (`Content-Length`), when it declared one.
    pub declared: Option<u64>,
    received: u64,
}

impl RequestBody {
    /// No body at all (the HTTP/1.1 fast path only calls the handler for such requests).
    pub fn none() -> RequestBody {
        RequestBody {
            stream: None,
            declared: Some(0),
            received: 0,
        }
    }

    pub fn new(declared: Option<u64>, stream: ByteStream) -> RequestBody {
        RequestBody {
            stream: Some(stream),
            declared,
            received: 0,
        }
    }

    /// hyper's body (HTTP/1.1 and HTTP/2): data frames in order, trailers skipped.
    pub fn from_hyper(body: hyper::body::Incoming) -> RequestBody {
        use http_body::Body as _;
        if body.is_end_stream() {
            return RequestBody::none();
        }
        let declared = body.size_hint().exact();
        let frames = http_body_util::BodyStream::new(body).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(io::Error::other(e))),
            }
        });
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

    /// The next chunk (`None` at the end), within `timeout`, keeping the total within `limit`.
    pub async fn next(&mut self, limit: u64, timeout: Duration) -> Result<Option<Bytes>, Refusal> {
        if self.declared.is_some_and(|d| d > limit) {
            return Err(Refusal::TooLarge);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match tokio::time::timeout(timeout, stream.next()).await {
            Err(_) => Err(Refusal::BodyTimeout),
            Ok(None) => {
                self.stream = None;
                Ok(None)
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed");
                self.stream = None;
                Err(Refusal::BodyIncomplete)
            }
            Ok(Some(Ok(mut chunk))) => {
                self.received += chunk.len() as u64;
                if self.received > limit {
                    return Err(Refusal::TooLarge);
                }
                Ok(Some(chunk.copy_to_bytes(chunk.remaining())))
            }
        }
    }

    /// Reads the whole body and throws it away (a GET, HEAD or OPTIONS that carries one: legal,
    /// meaningless, and it must be consumed for the next request on the connection).
    pub async fn discard(&mut self, limit: u64, timeout: Duration) -> Result<(), Refusal> {
        while self.next(limit, timeout).await?.is_some() {}
        Ok(())
    }
}
