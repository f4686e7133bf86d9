//! segd's own answers to HTTP/1.1 request heads it refuses before any handler sees them, and
//! the checks that decide them: one table for the plaintext fast path and for the heads hyper
//! serves over TLS (`gate`), so a malformed or ambiguous request gets the same status and
//! reason on either listener.

use prometheus::IntCounterVec;

use super::parse::{body_framing, split_target, Framing, Head, HeadError};
use crate::http::handler;
use crate::http::refusal::Refusal;

/// An answer segd writes itself (a short `text/plain` reason, `Connection: close`), then
/// closes the connection: a row of the refusal table, counted in `segd_refusals_total` like
/// every other refusal, so heads that never became a request (unreadable, too large, too slow)
/// are seen too. They have no access-log line: there is no request to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answer(pub(super) Refusal);

impl Answer {
    pub(super) const BAD_REQUEST: Answer = Answer(Refusal::BadHead);

    /// The answer to a head that could not be read; `None`: the client left, nobody to answer.
    pub(super) fn to_head_error(e: &HeadError) -> Option<Answer> {
        Some(Answer(match e {
            HeadError::Closed => return None,
            HeadError::TimedOut => Refusal::HeadTimeout,
            HeadError::TooLarge => Refusal::HeadTooLarge,
            HeadError::TooManyFields => Refusal::TooManyFields,
            HeadError::UriTooLong => Refusal::UriTooLong,
            HeadError::Version => Refusal::VersionNotSupported,
            HeadError::Bad => Refusal::BadHead,
        }))
    }

    pub(super) fn status_body(self) -> (http::StatusCode, &'static str) {
        let row = self.0.row();
        (row.status, row.body)
    }

    /// Counts the refusal in `segd_refusals_total{reason,fault}`.
    pub(super) fn count(self, refusals: &IntCounterVec) {
        let row = self.0.row();
        refusals
            .with_label_values(&[row.label, row.fault.as_str()])
            .inc();
    }

    /// The answer on the wire: head and body.
    pub(super) fn bytes(self) -> Vec<u8> {
        let (status, body) = self.status_body();
        super::write::simple_bytes(status, body)
    }

    /// Whether the request bytes still unread are drained before the close (so the answer is
    /// not lost to a reset): for every answer but a timeout, whose client is too slow to wait
    /// for.
    pub(super) fn lingers(self) -> bool {
        self.0 != Refusal::HeadTimeout
    }
}

/// Whether the last `Transfer-Encoding` line ends with `chunked` (its last list element, blank
/// ones included, as hyper reads it).
fn last_coding_is_chunked(head: &Head) -> bool {
    (head.headers.get_all(http::header::TRANSFER_ENCODING).iter())
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// A head [`screen`] let through: its framing, and its target's path and query.
pub(super) struct Screened<'h> {
    pub(super) framing: Framing,
    pub(super) path: &'h str,
    pub(super) query: Option<&'h str>,
}

/// What segd checks in a parsed head before the handler, in order: message framing (RFC 9112
/// §6.3: one valid `Content-Length` at most, never with `Transfer-Encoding`), transfer codings
/// (`chunked` only, and none in HTTP/1.0: §6.1), and the request target.
pub(super) fn screen(head: &Head) -> Result<Screened<'_>, Answer> {
    let framing = body_framing(head).map_err(|()| Answer::BAD_REQUEST)?;
    if framing == Framing::Chunked {
        // HTTP/1.0 has no transfer codings: its framing is faulty.
        if head.http10 {
            return Err(Answer(Refusal::Malformed));
        }
        // segd decodes `chunked` and nothing else.
        handler::check_transfer_codings(&head.headers).map_err(Answer)?;
        // hyper, which decodes it, looks at the last element of the last line only: after
        // `chunked,` or an empty last line it answered its own empty 400.
        if !last_coding_is_chunked(head) {
            return Err(Answer(Refusal::Malformed));
        }
    }
    // A CONNECT request has no content (RFC 9110 §9.3.6): framing one is ambiguous (hyper
    // read it as content over TLS, the fast path left it unread).
    if head.method == http::Method::CONNECT && framing != Framing::NoBody {
        return Err(Answer(Refusal::Malformed));
    }
    let (path, query) = split_target(head).ok_or(Answer::BAD_REQUEST)?;
    Ok(Screened {
        framing,
        path,
        query,
    })
}
