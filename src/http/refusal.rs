//! Every way a request ends early, and one table that maps each to its status, body text, log
//! level, metric label and whose fault it is. The handler's steps return `Result<_, Refusal>`
//! and join with `?`; no call site picks a status.
//!
//! Bodies are fixed strings: they never echo the path, a file name or a token.

use http::StatusCode;

use crate::auth::edgeauth::Reason;
use crate::store::Miss;

/// Whose fault a refusal is (a dashboard can then tell a misbehaving CDN from a dying disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong or not allowed.
    Client,
    /// A volume failed or is down.
    Disk,
    /// An upstream origin or bucket failed (pull-through tier).
    Upstream,
    /// segd itself: out of resources, or a bug.
    Server,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Disk => "disk",
            Fault::Upstream => "upstream",
            Fault::Server => "server",
        }
    }
}

/// Why a request ended before its object was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request")]
    Malformed,
    /// An HTTP/1 request head that could not be parsed (not HTTP, a bad header line, a control
    /// character in a field, two `Host`s, two `Content-Length`s, a target that is no URI…):
    /// refused before it became a request, so no access-log line (there is none to log).
    #[error("unreadable request head")]
    BadHead,
    /// An HTTP/1 request head begun but not complete within `header_read_timeout` (a slow or
    /// stalled client, slowloris).
    #[error("request head timed out")]
    HeadTimeout,
    /// An HTTP/1 request head larger than the head buffer (`max_header_bytes`).
    #[error("request head too large")]
    HeadTooLarge,
    /// A request with more header field lines than `max_header_fields` (every protocol).
    #[error("too many header fields")]
    TooManyFields,
    #[error("request target too long")]
    UriTooLong,
    /// A method segd implements that the target does not allow (a write outside `[ingest]
    /// prefixes`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A method segd does not implement (RFC 9110 §9.1): any but GET, HEAD, OPTIONS, PUT, POST
    /// and DELETE. CONNECT is one: segd is an origin, not a proxy (§9.3.6).
    #[error("method not implemented")]
    MethodNotImplemented,
    /// An HTTP/1 request line with a major version other than 1 (the plaintext fast path).
    #[error("http version not supported")]
    VersionNotSupported,
    #[error("not found")]
    NotFound,
    /// An upstream said the object is gone for good (410), so the edge says so too.
    #[error("gone")]
    Gone,
    #[error("token rejected: {}", .0.as_str())]
    Forbidden(Reason),
    #[error("volume unavailable")]
    VolumeUnavailable,
    /// A write to a volume mounted read-only (EROFS), none other able to take it.
    #[error("volume is read-only")]
    ReadOnly,
    #[error("overloaded")]
    Overloaded,
    #[error("object changed while read")]
    Changed,
    #[error("request body too large")]
    TooLarge,
    #[error("live playlist larger than live.max_playlist_bytes")]
    PlaylistTooLarge,
    #[error("request body timed out")]
    BodyTimeout,
    #[error("request body incomplete or malformed")]
    BodyIncomplete,
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    #[error("media type not served")]
    UnsupportedMediaType,
    #[error("Content-Range in a write (a partial body)")]
    PartialWrite,
    #[error("content coding in a write")]
    UnsupportedContentCoding,
    #[error("a form upload (multipart/form-data) in a write")]
    FormUpload,
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("path is a directory")]
    IsDirectory,
    /// A live playlist's version older than the one stored moments before: it lost a race
    /// with it on another connection (see `live::playlist::Snapshot::behind`).
    #[error("a newer version of the playlist was stored")]
    StalePlaylist,
    #[error("delete not allowed this close to the root")]
    DeleteTooShallow,
    #[error("too many uploads in progress")]
    UploadsBusy,
    /// The body stalled while a newer upload of the path waited for it (see
    /// `request_body::YIELD_AFTER`).
    #[error("a newer upload of the path superseded this stalled one")]
    Superseded,
    #[error("insufficient storage")]
    InsufficientStorage,
    #[error("write failed")]
    WriteFailed,
    #[error("bad LL-HLS directive")]
    BadDirective,
    #[error("every upstream failed")]
    BadGateway,
    #[error("upstream timed out")]
    GatewayTimeout,
    /// No upstream could answer, and one asked to be left alone for a while (its 503 or 429
    /// `Retry-After`): 503 with `Retry-After` (the seconds it still rests).
    #[error("upstream unavailable")]
    UpstreamUnavailable(u64),
    #[error("too many parked requests")]
    LiveBusy,
    #[error("playlist not updated in time")]
    BlockTimeout,
    /// A live read for a stream this node has no trace of, with `[live]
    /// unknown_stream_retry_after` set: a cluster's balancer moved it here from the stream's
    /// node, which is down; the stream appears here once its packager's uploads do.
    #[error("live stream not on this node")]
    StreamElsewhere,
    /// A live playlist this node holds but nobody wrote for 3 target durations, with `[live]
    /// unknown_stream_retry_after` set: its packager's uploads go to another node (after a
    /// restart here, or after the stream moved back from here), and this version would take
    /// the players' media sequence back ([`crate::live::Registry::held_back`]).
    #[error("live playlist not written here lately")]
    HeldBack,
    #[error("internal error")]
    Internal,
}

/// Log level of a refusal's operational log line (the access log records every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// One row of the table.
pub struct Row {
    pub status: StatusCode,
    pub body: &'static str,
    pub level: Level,
    /// `segd_refusals_total{reason}`.
    pub label: &'static str,
    pub fault: Fault,
}

impl Refusal {
    /// THE table.
    pub fn row(self) -> Row {
        use Fault::*;
        use Level::*;
        let (status, body, level, label, fault) = match self {
            Refusal::Malformed => (
                StatusCode::BAD_REQUEST,
                "bad request\n",
                Debug,
                "malformed",
                Client,
            ),
            Refusal::BadHead => (
                StatusCode::BAD_REQUEST,
                "bad request\n",
                Debug,
                "bad_head",
                Client,
            ),
            Refusal::HeadTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request timeout\n",
                Debug,
                "head_timeout",
                Client,
            ),
            Refusal::HeadTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header too large\n",
                Debug,
                "head_too_large",
                Client,
            ),
            Refusal::TooManyFields => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields\n",
                Debug,
                "too_many_fields",
                Client,
            ),
            Refusal::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "URI too long\n",
                Debug,
                "uri_too_long",
                Client,
            ),
            Refusal::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
                Debug,
                "method",
                Client,
            ),
            // RFC 9110 §15.6.2: 501 is the answer to a method the server does not support for
            // any resource; 405 (with `Allow`) says another resource may allow it.
            Refusal::MethodNotImplemented => (
                StatusCode::NOT_IMPLEMENTED,
                "method not implemented\n",
                Debug,
                "method_not_implemented",
                Client,
            ),
            // RFC 9110 §15.6.6; a higher minor version of HTTP/1 is served as HTTP/1.1 instead.
            Refusal::VersionNotSupported => (
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "http version not supported\n",
                Debug,
                "version",
                Client,
            ),
            Refusal::NotFound => (
                StatusCode::NOT_FOUND,
                "not found\n",
                Debug,
                "not_found",
                Client,
            ),
            Refusal::Gone => (StatusCode::GONE, "gone\n", Debug, "gone", Client),
            Refusal::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "forbidden\n",
                Info,
                "forbidden",
                Client,
            ),
            Refusal::VolumeUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "volume unavailable\n",
                Warn,
                "volume_unavailable",
                Disk,
            ),
            Refusal::ReadOnly => (
                StatusCode::SERVICE_UNAVAILABLE,
                "volume is read-only\n",
                Warn,
                "read_only",
                Disk,
            ),
            Refusal::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded\n",
                Warn,
                "overloaded",
                Server,
            ),
            Refusal::Changed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "object changed while read\n",
                Info,
                "changed",
                Server,
            ),
            Refusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
                Info,
                "too_large",
                Client,
            ),
            Refusal::PlaylistTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "live playlist larger than live.max_playlist_bytes\n",
                Info,
                "too_large",
                Client,
            ),
            Refusal::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request body timeout\n",
                Info,
                "body_timeout",
                Client,
            ),
            Refusal::BodyIncomplete => (
                StatusCode::BAD_REQUEST,
                "bad request body\n",
                Info,
                "body_incomplete",
                Client,
            ),
            Refusal::UnsupportedCoding => (
                StatusCode::NOT_IMPLEMENTED,
                "transfer coding not implemented\n",
                Info,
                "unsupported_coding",
                Client,
            ),
            Refusal::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "media type not served\n",
                Info,
                "media_type",
                Client,
            ),
            // RFC 9110 §14.5: a PUT with Content-Range is likely partial content, and an
            // origin server that allows PUT must answer it 400.
            Refusal::PartialWrite => (
                StatusCode::BAD_REQUEST,
                "content-range not allowed in a write\n",
                Info,
                "partial_write",
                Client,
            ),
            // RFC 9110 §8.4, §15.5.16: segd stores and serves the bytes it is sent as the
            // object; a body in a content coding (gzip…) would be served as if it were the
            // media itself. The answer carries `Accept-Encoding: identity` (§12.5.3).
            Refusal::UnsupportedContentCoding => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content coding not accepted\n",
                Info,
                "content_coding",
                Client,
            ),
            // `curl -F` and HTML forms wrap the file in MIME parts (boundaries, part headers):
            // stored as it is, the object would be served to players with them inside. A PUT
            // or POST of the bytes themselves (`curl -T`, `--data-binary`) is what is taken.
            Refusal::FormUpload => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a form upload is not an object: send the file's bytes as the body (curl -T)\n",
                Info,
                "form_upload",
                Client,
            ),
            Refusal::PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "precondition failed\n",
                Debug,
                "precondition",
                Client,
            ),
            Refusal::IsDirectory => (
                StatusCode::CONFLICT,
                "path is a directory\n",
                Info,
                "is_directory",
                Client,
            ),
            Refusal::StalePlaylist => (
                StatusCode::CONFLICT,
                "a newer version of this live playlist was stored moments ago\n",
                Info,
                "stale_playlist",
                Client,
            ),
            Refusal::DeleteTooShallow => (
                StatusCode::FORBIDDEN,
                "delete not allowed at this depth\n",
                Info,
                "delete_depth",
                Client,
            ),
            Refusal::UploadsBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many uploads in progress\n",
                Warn,
                "uploads_busy",
                Server,
            ),
            Refusal::Superseded => (
                StatusCode::CONFLICT,
                "superseded by a newer upload of this path\n",
                Info,
                "superseded",
                Client,
            ),
            Refusal::InsufficientStorage => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient storage\n",
                Warn,
                "no_space",
                Disk,
            ),
            Refusal::WriteFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "write failed\n",
                Warn,
                "write_failed",
                Disk,
            ),
            Refusal::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "upstream failed\n",
                Warn,
                "bad_gateway",
                Upstream,
            ),
            Refusal::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timed out\n",
                Warn,
                "gateway_timeout",
                Upstream,
            ),
            Refusal::UpstreamUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream unavailable\n",
                Warn,
                "upstream_unavailable",
                Upstream,
            ),
            Refusal::BadDirective => (
                StatusCode::BAD_REQUEST,
                "bad LL-HLS directive\n",
                Debug,
                "bad_directive",
                Client,
            ),
            Refusal::LiveBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many parked requests\n",
                Warn,
                "live_busy",
                Server,
            ),
            Refusal::BlockTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "playlist not updated in time\n",
                Info,
                "block_timeout",
                Upstream,
            ),
            Refusal::StreamElsewhere => (
                StatusCode::SERVICE_UNAVAILABLE,
                "live stream not on this node\n",
                Info,
                "stream_elsewhere",
                Server,
            ),
            Refusal::HeldBack => (
                StatusCode::SERVICE_UNAVAILABLE,
                "live playlist not written here lately\n",
                Info,
                "held_back",
                Server,
            ),
            Refusal::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n",
                Warn,
                "internal",
                Server,
            ),
        };
        Row {
            status,
            body,
            level,
            label,
            fault,
        }
    }

    /// Whether the connection must be closed after the answer (the request's framing or body
    /// cannot be trusted, so nothing after it on the connection can be either).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Refusal::Malformed
                | Refusal::BadHead
                | Refusal::HeadTimeout
                | Refusal::HeadTooLarge
                | Refusal::TooManyFields
                | Refusal::TooLarge
                | Refusal::PlaylistTooLarge
                | Refusal::BodyTimeout
                | Refusal::BodyIncomplete
                | Refusal::UnsupportedCoding
                | Refusal::VersionNotSupported
        )
    }
}

impl From<crate::store::WriteError> for Refusal {
    fn from(e: crate::store::WriteError) -> Refusal {
        use crate::store::WriteError;
        match e {
            WriteError::NoSpace => Refusal::InsufficientStorage,
            WriteError::Bucket(crate::store::write_through::BucketError::Timeout) => {
                Refusal::GatewayTimeout
            }
            WriteError::Bucket(crate::store::write_through::BucketError::KeyTooLong) => {
                Refusal::UriTooLong
            }
            WriteError::Bucket(e) => {
                tracing::warn!(error = %e, "write-through to the bucket failed");
                Refusal::BadGateway
            }
            WriteError::VolumeUnavailable => Refusal::VolumeUnavailable,
            WriteError::ReadOnly => Refusal::ReadOnly,
            // Remounted read-only after the upload was placed, or a deletion on such a volume.
            WriteError::Io(e) if e.raw_os_error() == Some(libc::EROFS) => Refusal::ReadOnly,
            WriteError::IsDirectory => Refusal::IsDirectory,
            WriteError::NotFound => Refusal::NotFound,
            WriteError::Io(e) if crate::volumes::is_device_fault(&e) => Refusal::VolumeUnavailable,
            // A name longer than this filesystem takes (some take less than 255 bytes).
            WriteError::Io(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                Refusal::UriTooLong
            }
            WriteError::Io(e) => {
                tracing::warn!(error = %e, "write failed");
                Refusal::WriteFailed
            }
        }
    }
}

impl From<Miss> for Refusal {
    fn from(m: Miss) -> Refusal {
        match m {
            Miss::NotFound
            | Miss::Negative { gone: false, .. }
            | Miss::UpstreamNotFound { gone: false, .. } => Refusal::NotFound,
            Miss::Negative { gone: true, .. } | Miss::UpstreamNotFound { gone: true, .. } => {
                Refusal::Gone
            }
            Miss::VolumeUnavailable => Refusal::VolumeUnavailable,
            Miss::Overloaded => Refusal::Overloaded,
            Miss::Changed => Refusal::Changed,
            Miss::UpstreamFailed => Refusal::BadGateway,
            Miss::UpstreamTimeout => Refusal::GatewayTimeout,
            // Whole seconds, rounded up (RFC 9110 §10.2.3), at least one.
            Miss::UpstreamUnavailable { retry_after } => Refusal::UpstreamUnavailable(
                (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1),
            ),
        }
    }
}

/// Every refusal, for pre-registering metric labels and for tests.
pub const ALL: &[Refusal] = &[
    Refusal::Malformed,
    Refusal::BadHead,
    Refusal::HeadTimeout,
    Refusal::HeadTooLarge,
    Refusal::TooManyFields,
    Refusal::UriTooLong,
    Refusal::MethodNotAllowed,
    Refusal::MethodNotImplemented,
    Refusal::VersionNotSupported,
    Refusal::NotFound,
    Refusal::Gone,
    Refusal::Forbidden(Reason::Malformed),
    Refusal::VolumeUnavailable,
    Refusal::ReadOnly,
    Refusal::Overloaded,
    Refusal::Changed,
    Refusal::TooLarge,
    Refusal::PlaylistTooLarge,
    Refusal::BodyTimeout,
    Refusal::BodyIncomplete,
    Refusal::UnsupportedCoding,
    Refusal::UnsupportedMediaType,
    Refusal::PartialWrite,
    Refusal::UnsupportedContentCoding,
    Refusal::FormUpload,
    Refusal::PreconditionFailed,
    Refusal::IsDirectory,
    Refusal::StalePlaylist,
    Refusal::DeleteTooShallow,
    Refusal::UploadsBusy,
    Refusal::Superseded,
    Refusal::InsufficientStorage,
    Refusal::WriteFailed,
    Refusal::BadDirective,
    Refusal::BadGateway,
    Refusal::GatewayTimeout,
    Refusal::UpstreamUnavailable(1),
    Refusal::LiveBusy,
    Refusal::BlockTimeout,
    Refusal::StreamElsewhere,
    Refusal::HeldBack,
    Refusal::Internal,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A resting upstream's time left goes out as whole seconds, rounded up, at least one.
    #[test]
    fn upstream_unavailable_retry_after_is_whole_seconds_rounded_up() {
        let r = |ms| {
            Refusal::from(Miss::UpstreamUnavailable {
                retry_after: std::time::Duration::from_millis(ms),
            })
        };
        assert_eq!(r(0), Refusal::UpstreamUnavailable(1));
        assert_eq!(r(1), Refusal::UpstreamUnavailable(1));
        assert_eq!(r(2000), Refusal::UpstreamUnavailable(2));
        assert_eq!(r(2001), Refusal::UpstreamUnavailable(3));
        assert_eq!(r(60_000).row().status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_refusal_is_an_error_status_with_a_fixed_body() {
        for r in ALL {
            let row = r.row();
            assert!(
                row.status.is_client_error() || row.status.is_server_error(),
                "{r:?}"
            );
            assert!(row.body.ends_with('\n') && !row.body.contains('/'), "{r:?}");
            // Disk and server faults are 5xx; client faults 4xx, except 501 for a method or
            // coding the server does not implement and 505 for an HTTP version it does not serve.
            match row.fault {
                Fault::Client => assert!(
                    row.status.is_client_error()
                        || row.status == StatusCode::NOT_IMPLEMENTED
                        || row.status == StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "{r:?}"
                ),
                _ => assert!(row.status.is_server_error(), "{r:?}"),
            }
        }
    }
}
