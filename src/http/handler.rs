//! THE request path. Every protocol (hyper's HTTP/1.1 and HTTP/2, later the sendfile fast path
//! and HTTP/3) calls [`handle`]; it decides status, headers, token and range, and names the body.
//! Only the body writers differ per protocol.
//!
//! Steps, in order (each may end the request):
//! 1. target length → 414
//! 2. method: GET/HEAD proceed, OPTIONS answers CORS preflight / `Allow`, others 405
//! 3. path sanitising (`volumes::path`) → 400 malformed, 404 directories and dot-files
//! 4. extension → content type and object class; unknown → 404
//! 5. token check for protected prefixes (`auth`) → 403
//! 6. lookup across volumes → 404, or 503 when a volume that may hold it is down
//! 7. preconditions (`conditional`) → 412 / 304
//! 8. range (`range`, honouring `If-Range`; GET only) → 206 / 416 / 200
//! 9. headers: validators, Cache-Control by class, CORS, Accept-Ranges, Content-Length/-Range

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, ORIGIN, RANGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::conditional::{self, Outcome};
use super::range::{self, RangeDecision};
use crate::auth::{self, Decision};
use crate::cache::files::{Lookup, OpenFile};
use crate::config::Config;
use crate::config::PlaylistTokens;
use crate::playlist;
use crate::state::State;
use crate::volumes::{self, LookupError, PathError, RelPath};

/// The protocol a request arrived on (a metric and log label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
    H3,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }
}

/// What the handler needs from a request, whatever the protocol.
pub struct Request<'a> {
    pub method: &'a Method,
    /// Raw (still percent-encoded) path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub peer: SocketAddr,
    pub proto: Proto,
    /// The TLS version (`"1.3"`, `"1.2"`) when the connection is TLS.
    pub tls: Option<&'static str>,
    /// `Alt-Svc` for every response on this connection (TLS over TCP with HTTP/3 on).
    pub alt_svc: Option<&'a HeaderValue>,
}

/// The decided response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ReplyBody,
    /// What the access log says about it.
    pub log: LogInfo,
}

/// Facts for the access log that only the handler knows.
#[derive(Debug, Default)]
pub struct LogInfo {
    /// The decoded path without any token (absent when the path was refused before decoding).
    pub path: Option<String>,
    /// The id of the key that verified the request's token.
    pub key_id: Option<String>,
}

/// What to send as the body; the protocol's writer turns it into bytes on the wire.
pub enum ReplyBody {
    /// No body (HEAD, 304, 204). `Content-Length` in the headers says what a GET would send.
    Empty,
    /// A small in-memory body (errors, rewritten playlists).
    Static(Bytes),
    /// `len` bytes of `file` from `offset`. `volume` is where a read fault must be reported;
    /// `meta` identifies the whole object (cache key). `small_copy`: a playlist, which a writer
    /// may copy instead of sendfile when it is small (segments never are).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
        volume: usize,
        meta: volumes::ObjectMeta,
        small_copy: bool,
    },
}

impl ReplyBody {
    /// Bytes this body will put on the wire.
    pub fn len(&self) -> u64 {
        match self {
            ReplyBody::Empty => 0,
            ReplyBody::Static(b) => b.len() as u64,
            ReplyBody::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Object classes for Cache-Control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectClass {
    Playlist,
    Segment,
    Key,
}

impl ObjectClass {
    pub fn of(ext: &str) -> ObjectClass {
        match ext {
            "m3u8" | "mpd" => ObjectClass::Playlist,
            "key" => ObjectClass::Key,
            _ => ObjectClass::Segment,
        }
    }
}

/// Header values computed once per config, not per request.
pub struct Prepared {
    pub segments: HeaderValue,
    pub playlists: HeaderValue,
    pub keys: HeaderValue,
    pub live: HeaderValue,
    pub live_segments: HeaderValue,
    pub allow_any_origin: bool,
    pub cors_max_age: HeaderValue,
}

const EXPOSE: HeaderValue = HeaderValue::from_static("Content-Length, Content-Range, ETag");
const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
const ALLOWED_HEADERS: HeaderValue =
    HeaderValue::from_static("Range, If-None-Match, If-Modified-Since, If-Range, If-Match");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

impl Prepared {
    pub fn new(cfg: &Config) -> Prepared {
        let cc = &cfg.cache_control;
        Prepared {
            segments: cc.segments.clone(),
            playlists: cc.playlists.clone(),
            keys: cc.keys.clone(),
            live: cc.live.clone(),
            live_segments: cc.live_segments.clone(),
            allow_any_origin: cfg.cors.any_origin(),
            cors_max_age: cfg.cors.max_age_header.clone(),
        }
    }
}

/// Handles one request. See the module doc for the steps.
pub async fn handle(state: &State, req: &Request<'_>) -> Reply {
    let mut log = LogInfo::default();
    let mut reply = decide(state, req, &mut log).await;
    reply.log = log;
    if let Some(v) = req.alt_svc {
        reply.headers.insert(http::header::ALT_SVC, v.clone());
    }
    reply
}

async fn decide(state: &State, req: &Request<'_>, log: &mut LogInfo) -> Reply {
    let cfg = &state.config;

    // 1. Target length.
    let target_len = req.path.len() + req.query.map_or(0, |q| q.len() + 1);
    if target_len > cfg.server.max_uri_bytes {
        return error(state, req, StatusCode::URI_TOO_LONG, "uri too long\n");
    }

    // 2. Method.
    let is_head = match *req.method {
        Method::GET => false,
        Method::HEAD => true,
        Method::OPTIONS => return options(state, req),
        _ => {
            let mut r = error(
                state,
                req,
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
            );
            r.headers.insert(ALLOW, ALLOWED_METHODS);
            return r;
        }
    };

    // 3. Path (a path-embedded token segment is split off first, on the raw path).
    let split = auth::split_path_token(state.auth.name(), req.path);
    let rel = match volumes::sanitize(split.path) {
        Ok(p) => p,
        Err(PathError::Malformed(_)) => {
            return error(state, req, StatusCode::BAD_REQUEST, "bad request\n")
        }
        Err(PathError::NotServed(_)) => {
            return error(state, req, StatusCode::NOT_FOUND, "not found\n")
        }
    };

    // 4. Type and class.
    let ext = rel.extension().map(str::to_ascii_lowercase);
    let Some(content_type) = ext.as_deref().and_then(|e| cfg.content_type(e)) else {
        return error(state, req, StatusCode::NOT_FOUND, "not found\n");
    };
    let class = ObjectClass::of(ext.as_deref().unwrap_or_default());
    let canonical = format!("/{rel}");
    if state.access.enabled() {
        log.path = Some(canonical.clone());
    }
    let live = cfg
        .cache_control
        .live_prefixes
        .iter()
        .any(|p| canonical.starts_with(p.as_str()));

    // 5. Token, for protected prefixes.
    let now = unix_now();
    let decision = state.auth.decide(&auth::Facts {
        raw_path: split.path,
        canonical_path: &canonical,
        query: req.query,
        headers: req.headers,
        path_token: split.token.as_deref(),
        peer_ip: req.peer.ip(),
        now,
    });
    match &decision {
        Decision::Denied(reason) => {
            state
                .metrics
                .token_rejections
                .with_label_values(&[reason.as_str()])
                .inc();
            tracing::info!(reason = %reason.as_str(), path = %canonical, peer = %req.peer.ip(), "token rejected");
            return error(state, req, StatusCode::FORBIDDEN, "forbidden\n");
        }
        Decision::Granted { grant, .. } => {
            tracing::debug!(key_id = %grant.key_id, "token accepted");
            if state.access.enabled() {
                log.key_id = Some(grant.key_id.clone());
            }
        }
        Decision::Public | Decision::OriginAuth => {}
    }
    let rewrite_param = match (class, &decision) {
        (
            ObjectClass::Playlist,
            Decision::Granted {
                grant,
                source: auth::Source::Query,
            },
        ) => playlist_param(state, req, &canonical, grant, now),
        _ => None,
    };

    // 6. Lookup: the open-file cache, else an open on the blocking pool.
    let valid = match (class, live) {
        (ObjectClass::Segment | ObjectClass::Key, false) => cfg.cache.open_file_valid,
        _ => Duration::ZERO,
    };
    let opened = match lookup(state, &rel, valid).await {
        Ok(o) => o,
        Err(LookupError::NotFound) => {
            return error(state, req, StatusCode::NOT_FOUND, "not found\n")
        }
        Err(LookupError::VolumeUnavailable { .. }) => {
            return error(
                state,
                req,
                StatusCode::SERVICE_UNAVAILABLE,
                "volume unavailable\n",
            )
        }
        Err(LookupError::Overloaded) => {
            return error(state, req, StatusCode::SERVICE_UNAVAILABLE, "overloaded\n")
        }
    };
    let meta = opened.meta;
    let modified = meta.modified();
    if let Some(param) = rewrite_param {
        return rewritten_playlist(state, req, &rel, opened, &param, live, is_head).await;
    }
    let etag = opened.etag.to_str().unwrap_or_default();

    let mut headers = HeaderMap::with_capacity(12);
    cors_headers(state, req, &mut headers);
    let cache_control = match (class, live) {
        (ObjectClass::Playlist, false) => &state.prepared.playlists,
        (ObjectClass::Segment, false) => &state.prepared.segments,
        (ObjectClass::Key, _) => &state.prepared.keys,
        (ObjectClass::Playlist, true) => &state.prepared.live,
        (ObjectClass::Segment, true) => &state.prepared.live_segments,
    };
    headers.insert(CACHE_CONTROL, cache_control.clone());
    headers.insert(ETAG, opened.etag.clone());
    headers.insert(LAST_MODIFIED, opened.last_modified.clone());
    headers.insert(ACCEPT_RANGES, BYTES);

    // 7. Preconditions.
    let mut headers = match preconditions(req, etag, modified, headers, is_head) {
        Ok(h) => h,
        Err(reply) => return *reply,
    };

    // 8. Range (defined for GET only, RFC 9110 §14.2).
    let len = meta.len;
    let decision = if is_head || !conditional::if_range_allows(req.headers, etag, modified) {
        RangeDecision::Full
    } else {
        range::resolve(req.headers.get(RANGE).map(HeaderValue::as_bytes), len)
    };

    // 9. Headers and body.
    let (status, offset, count) = match decision {
        RangeDecision::Full => (StatusCode::OK, 0, len),
        RangeDecision::Partial { start, end } => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                headers.insert(CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeDecision::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(CONTENT_RANGE, v);
            }
            headers.insert(CONTENT_TYPE, TEXT);
            return with_body(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                is_head,
                "range not satisfiable\n",
            );
        }
    };
    headers.insert(CONTENT_TYPE, content_type.clone());
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    let body = if is_head || count == 0 {
        ReplyBody::Empty
    } else {
        ReplyBody::File {
            file: Arc::clone(&opened.file),
            offset,
            len: count,
            volume: opened.volume,
            meta,
            small_copy: class == ObjectClass::Playlist,
        }
    };
    Reply {
        log: LogInfo::default(),
        status,
        headers,
        body,
    }
}

/// Preconditions (RFC 9110 §13.2.2): `Ok(headers)` to go on, or the 304 / 412 to send, carrying
/// the validators and Cache-Control already in `headers`.
fn preconditions(
    req: &Request<'_>,
    etag: &str,
    modified: std::time::SystemTime,
    mut headers: HeaderMap,
    is_head: bool,
) -> Result<HeaderMap, Box<Reply>> {
    match conditional::evaluate(req.headers, etag, modified) {
        Outcome::Proceed => Ok(headers),
        Outcome::NotModified => Err(Box::new(Reply {
            log: LogInfo::default(),
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: ReplyBody::Empty,
        })),
        Outcome::PreconditionFailed => {
            headers.insert(CONTENT_TYPE, TEXT);
            Err(Box::new(with_body(
                StatusCode::PRECONDITION_FAILED,
                headers,
                is_head,
                "precondition failed\n",
            )))
        }
    }
}

fn with_body(
    status: StatusCode,
    mut headers: HeaderMap,
    is_head: bool,
    msg: &'static str,
) -> Reply {
    headers.insert(CONTENT_LENGTH, HeaderValue::from(msg.len()));
    headers.insert(CACHE_CONTROL, NO_STORE);
    Reply {
        log: LogInfo::default(),
        status,
        headers,
        body: if is_head {
            ReplyBody::Empty
        } else {
            ReplyBody::Static(Bytes::from_static(msg.as_bytes()))
        },
    }
}

/// A small plain-text error. Bodies are fixed strings: they never echo the path or a file name.
pub fn error(state: &State, req: &Request<'_>, status: StatusCode, msg: &'static str) -> Reply {
    let mut headers = HeaderMap::with_capacity(6);
    cors_headers(state, req, &mut headers);
    headers.insert(CONTENT_TYPE, TEXT);
    with_body(status, headers, *req.method == Method::HEAD, msg)
}

/// `Access-Control-Allow-Origin` (+ `Vary: Origin` when it depends on the request),
/// `Access-Control-Expose-Headers`, and `Timing-Allow-Origin` for the same origins (players'
/// Resource Timing then sees protocol and timings of segment fetches), on every response so
/// players can read errors too.
fn cors_headers(state: &State, req: &Request<'_>, headers: &mut HeaderMap) {
    const TIMING_ALLOW_ORIGIN: http::HeaderName =
        http::HeaderName::from_static("timing-allow-origin");
    if state.prepared.allow_any_origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(TIMING_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = req.headers.get(ORIGIN) else {
            return;
        };
        let allowed = state
            .config
            .cors
            .allow_origins
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes());
        if !allowed {
            return;
        }
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(TIMING_ALLOW_ORIGIN, origin.clone());
    }
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
}

/// OPTIONS: a CORS preflight gets the allowed methods and headers; any other OPTIONS (including
/// `OPTIONS *`) gets `Allow`. No token is required: browsers never send credentials on preflight.
fn options(state: &State, req: &Request<'_>) -> Reply {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(ALLOW, ALLOWED_METHODS);
    if req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        cors_headers(state, req, &mut headers);
        if headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS);
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS);
            headers.insert(ACCESS_CONTROL_MAX_AGE, state.prepared.cors_max_age.clone());
        }
    }
    Reply {
        log: LogInfo::default(),
        status: StatusCode::NO_CONTENT,
        headers,
        body: ReplyBody::Empty,
    }
}

/// Finds `rel` in the open-file cache, or opens it. Every hit is checked against its descriptor
/// (`still_current`); past `valid`, the path is re-checked too, which catches a file replaced
/// by rename.
async fn lookup(
    state: &State,
    rel: &RelPath,
    valid: Duration,
) -> Result<Arc<OpenFile>, LookupError> {
    let healthy = |v: usize| state.volumes.get(v).is_some_and(|v| v.is_healthy());
    match state.files.get(rel.as_str(), valid) {
        // Rewritten, truncated or unlinked in place: the held descriptor tells (one fstat).
        Lookup::Fresh(e) if healthy(e.volume) && volumes::still_current(&e.file, &e.meta) => {
            return Ok(e)
        }
        Lookup::Stale(e) if healthy(e.volume) => {
            if state.volumes.stat(e.volume, rel) == Some(e.meta) {
                state.files.confirm(&e);
                return Ok(e);
            }
            state.files.remove(rel.as_str());
        }
        Lookup::Fresh(_) | Lookup::Stale(_) => state.files.remove(rel.as_str()),
        Lookup::Miss => {}
    }
    let o = state.io.open(&state.volumes, rel).await?;
    Ok(state.files.insert(rel.as_str(), o.file, o.meta, o.volume))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Largest playlist segd rewrites (bigger ones are served as they are, with a warning).
const MAX_REWRITE_BYTES: u64 = 4 << 20;

/// The query parameter to append to a playlist's URIs, per `[token] playlist_tokens`:
/// `forward` repeats the request's token (URL-bound tokens cannot be forwarded, so they are
/// minted instead); `mint` signs a fresh ACL token for the playlist's directory.
fn playlist_param(
    state: &State,
    req: &Request<'_>,
    canonical: &str,
    grant: &auth::Grant,
    now: u64,
) -> Option<String> {
    let cfg = &state.config.token;
    let name = state.auth.name();
    match cfg.playlist_tokens {
        PlaylistTokens::Off => None,
        PlaylistTokens::Forward if !grant.is_url_token => {
            let raw = req.query.and_then(|q| auth::query_param(q, name))?;
            let safe = raw
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"'<>&#\\".contains(&b));
            if safe {
                Some(format!("{name}={raw}"))
            } else {
                let decoded = volumes::path::percent_decode(raw.as_bytes())?;
                Some(format!(
                    "{name}={}",
                    auth::encode_token(&String::from_utf8_lossy(&decoded))
                ))
            }
        }
        PlaylistTokens::Forward | PlaylistTokens::Mint => {
            let dir = &canonical[..canonical.rfind('/').unwrap_or(0)];
            let acl = format!("{dir}/*");
            // Whole minutes, so consecutive requests get the same playlist (and ETag).
            let start = now - now % 60;
            let spec = auth::edgeauth::SignSpec {
                acl: Some(&acl),
                start: Some(start),
                exp: start + cfg.mint_ttl.as_secs(),
                ..Default::default()
            };
            let (_, token) = state.auth.sign(&spec, Some(&grant.key_id), now)?;
            Some(format!("{name}={}", auth::encode_token(&token)))
        }
    }
}

/// A playlist with the token appended to every relative URI. Private (never shared by a CDN),
/// a weak ETag that depends on the token, no ranges.
async fn rewritten_playlist(
    state: &State,
    req: &Request<'_>,
    rel: &RelPath,
    opened: Arc<OpenFile>,
    param: &str,
    live: bool,
    is_head: bool,
) -> Reply {
    let meta = opened.meta;
    let ext = rel.extension().map(str::to_ascii_lowercase);
    let Some(kind) = ext.as_deref().and_then(playlist::Kind::of) else {
        return error(
            state,
            req,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error\n",
        );
    };
    if meta.len > MAX_REWRITE_BYTES {
        tracing::warn!(
            bytes = meta.len,
            "playlist too large to rewrite; served without tokens"
        );
    }
    let volume = opened.volume;
    let limit = meta.len.min(MAX_REWRITE_BYTES) as usize;
    let original = match state
        .io
        .read(volume, Arc::clone(&opened.file), 0, limit)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            if volumes::is_device_fault(&e) {
                if let Some(v) = state.volumes.get(volume) {
                    v.record_fault(&e);
                }
                return error(
                    state,
                    req,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "volume unavailable\n",
                );
            }
            // Changed under us (shrank): drop the cached descriptor; the client may retry.
            state.files.remove(rel.as_str());
            return error(
                state,
                req,
                StatusCode::SERVICE_UNAVAILABLE,
                "object changed while read\n",
            );
        }
    };
    let body = if meta.len > MAX_REWRITE_BYTES {
        original.to_vec()
    } else {
        playlist::rewrite(kind, &original, param)
    };
    let strong = meta.etag();
    let etag = format!(
        "W/\"{}-{:08x}\"",
        strong.trim_matches('"'),
        crate::volumes::fnv1a64(param.as_bytes()) as u32
    );
    let mut headers = HeaderMap::with_capacity(12);
    cors_headers(state, req, &mut headers);
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if live {
            "private, max-age=1"
        } else {
            "private, max-age=10"
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(ETAG, v);
    }
    let modified = meta.modified();
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        headers.insert(LAST_MODIFIED, v);
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("none"));
    let mut headers = match preconditions(req, &etag, modified, headers, is_head) {
        Ok(h) => h,
        Err(reply) => return *reply,
    };
    let ctype = ext
        .as_deref()
        .and_then(|e| state.config.content_type(e))
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_TYPE, ctype);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Reply {
        log: LogInfo::default(),
        status: StatusCode::OK,
        headers,
        body: if is_head {
            ReplyBody::Empty
        } else {
            ReplyBody::Static(Bytes::from(body))
        },
    }
}
