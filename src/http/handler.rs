//! THE request path. Every protocol (the HTTP/1.1 fast path, hyper's HTTP/1.1 and HTTP/2, and
//! HTTP/3) calls [`handle`]; it decides status, headers, token and range, and names the body.
//! Only the body writers differ per protocol.
//!
//! Steps, in order (each may end the request with a [`Refusal`] or a finished answer):
//! 1. target length → 414
//! 2. method: GET/HEAD read, PUT/POST/DELETE write, OPTIONS answers CORS preflight / `Allow`;
//!    any other method is one segd does not implement → 501 (RFC 9110 §9.1; CONNECT too);
//!    a target in authority-form (CONNECT's) → 400 for these; a body on GET/HEAD/OPTIONS is
//!    read and discarded (bounded → 413); an unknown transfer coding → 501
//! 3. path sanitising (`volumes::path`) → 400 malformed, 404 directories and dot-files
//! 4. extension → content type and object class; unknown → 404 (415 for writes); a write
//!    outside `[ingest] prefixes` → 405
//! 5. token: playback tokens for protected prefixes (`auth`), upload tokens for every write → 403
//! 6. writes continue in [`super::write`]; reads ask the store (`store`: every tier behind one
//!    call) → 404, 503
//! 7. preconditions (`conditional`) → 412 / 304
//! 8. range (`range`, honouring `If-Range`; GET only) → 206 / 416 / 200
//! 9. headers: validators, Cache-Control by class, CORS, Accept-Ranges, Content-Length/-Range

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    LAST_MODIFIED, RANGE, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::conditional::{self, Outcome};
use super::range::{self, RangeDecision};
use super::refusal::{Level, Refusal};
use super::request_body::RequestBody;
use super::{headers, rewrite, write};
use crate::auth::{self, Decision};
use crate::policy::Policy;
use crate::runtime::Runtime;
use crate::store::{Body, Miss, Object, ObjectClass};
use crate::volumes::{self, PathError};

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
    /// An HTTP/1.0 request (the access log's request line says so).
    pub http10: bool,
    /// The TLS version (`"1.3"`, `"1.2"`) when the connection is TLS.
    pub tls: Option<&'static str>,
    /// `Alt-Svc` for every response on this connection (TLS over TCP with HTTP/3 on).
    pub alt_svc: Option<&'a HeaderValue>,
}

/// The decided response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    /// What the access log says about it.
    pub log: LogInfo,
    /// The connection must close after this answer (the request's body or framing was bad).
    pub close: bool,
}

/// Facts for the access log that only the handler knows.
#[derive(Debug, Default)]
pub struct LogInfo {
    /// The decoded path without any token (absent when the path was refused before decoding).
    pub path: Option<String>,
    /// The id of the key that verified the request's token.
    pub key_id: Option<String>,
    /// The cache status a tier decided (`hit`, `miss`, `stale`, `coalesced`, `negative`, `pass`);
    /// otherwise the writer's own.
    pub cache: Option<&'static str>,
    /// A read a viewer's own token opened (not a CDN's origin auth): when the token expires.
    /// The answer is that viewer's ([`viewer_only`]).
    pub private_until: Option<u64>,
}

/// A body on GET/HEAD/OPTIONS is read and discarded up to this size; more is 413.
pub const MAX_DISCARDED_BODY: u64 = 64 * 1024;

/// Why the steps stopped before the end: a refusal (one table decides its answer), or an answer
/// that is complete as it is (304, 412, 416, OPTIONS, a rewritten playlist).
pub(super) enum Stop {
    Refused(Refusal),
    Answered(Box<Reply>),
}

impl<E: Into<Refusal>> From<E> for Stop {
    fn from(e: E) -> Stop {
        Stop::Refused(e.into())
    }
}

/// What every step may look at.
pub(super) struct Cx<'a> {
    pub rt: &'a Runtime,
    pub policy: &'a Policy,
    pub req: &'a Request<'a>,
    pub is_head: bool,
    /// When the handler took the request: waits on live objects are bounded from here.
    pub started: tokio::time::Instant,
}

/// Handles one request. See the module doc for the steps.
pub async fn handle(
    rt: &Runtime,
    policy: &Policy,
    req: &Request<'_>,
    body: RequestBody<'_>,
) -> Reply {
    let mut log = LogInfo::default();
    let cx = Cx {
        rt,
        policy,
        req,
        is_head: *req.method == Method::HEAD,
        started: tokio::time::Instant::now(),
    };
    let mut reply = match decide(&cx, body, &mut log).await {
        Ok(r) => r,
        Err(Stop::Answered(r)) => *r,
        Err(Stop::Refused(Refusal::NotFound)) if stream_elsewhere(&cx).await => {
            refuse(&cx, Refusal::StreamElsewhere, log.path.as_deref())
        }
        Err(Stop::Refused(r)) => refuse(&cx, r, log.path.as_deref()),
    };
    if let Some(exp) = log.private_until {
        viewer_only(&mut reply.headers, exp);
    }
    reply.log = log;
    if let Some(v) = req.alt_svc {
        reply.headers.insert(http::header::ALT_SVC, v.clone());
    }
    if let Some(node) = &cx.policy.config.server.served_by {
        reply.headers.insert(X_SERVED_BY, node.clone());
    }
    reply
}

/// Makes an answer a viewer's token opened that viewer's alone: `private`, for no longer than
/// its lifetime and what is left of the token (`exp`, Unix seconds). A shared cache that does
/// not check tokens would otherwise hand it to anyone who asks for the URL (a cookie or header
/// token is not in it), and after the token expired. A CDN that checks tokens itself proves it
/// with origin auth, and its copies stay shared (README "CDN-side setup").
fn viewer_only(headers: &mut HeaderMap, exp: u64) {
    let Some(cc) = headers.get(CACHE_CONTROL) else {
        return;
    };
    // The `Age` that goes out with it (a pulled copy's) is counted by the client against
    // `max-age` itself: the token's seconds are capped with it added, and the lifetime is not
    // shortened by it here too. (A playlist rewritten for this token is already `private`,
    // sent without an `Age`: it is only capped.)
    let age: u64 = (headers.get(http::header::AGE))
        .and_then(|a| a.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0);
    let left = exp.saturating_sub(unix_now()).saturating_add(age);
    let private = crate::store::private_cache_control(cc, 0, left);
    headers.insert(CACHE_CONTROL, private);
}

/// Whether a read refused 404 asks for a live stream this node has no trace of (no directory
/// of it on a healthy volume), with `[live] unknown_stream_retry_after` set: a balancer moved
/// it here from the stream's node (docs/cluster.md), and a player stops on a live 404 where it
/// retries a 503. A stream this node holds keeps its 404s (a name it does not have).
async fn stream_elsewhere(cx: &Cx<'_>) -> bool {
    let cfg = &cx.policy.config;
    if cfg.live.unknown_stream_retry_after.is_none()
        || !matches!(*cx.req.method, Method::GET | Method::HEAD)
    {
        return false;
    }
    let split = auth::split_path_token(cx.policy.auth.name(), cx.req.path);
    let Ok(rel) = volumes::sanitize(split.path) else {
        return false;
    };
    let canonical = rel.canonical();
    let Some(stream) = cfg.live.stream_of(&canonical) else {
        return false;
    };
    match volumes::sanitize(stream) {
        Ok(dir) => !cx.rt.store.is_directory(&dir).await,
        Err(_) => false,
    }
}

/// A write refused before its body is read. On HTTP/2 the body is read first (within
/// `MAX_DISCARDED_BODY` and `header_read_timeout`), so an error in it (trailers without
/// END_STREAM or with pseudo-header fields, DATA beyond `content-length`) is the stream error
/// RFC 9113 §8.1 names rather than lost behind the early answer and its reset: h2spec's
/// http2/8.1/1, 8.1.2.1/3 and 8.1.2.6/2, sent to `POST /`, failed about half their runs. A
/// body too large or too slow gets the refusal all the same.
async fn refuse_write(cx: &Cx<'_>, body: &mut RequestBody<'_>, r: Refusal) -> Stop {
    if cx.req.proto == Proto::H2 && body.is_present() {
        let timeout = cx.policy.config.server.header_read_timeout;
        let _ = body.discard(MAX_DISCARDED_BODY, timeout).await;
    }
    r.into()
}

/// Names the node that answered (`server.served_by`), for clusters behind a balancer.
const X_SERVED_BY: http::HeaderName = http::HeaderName::from_static("x-served-by");

async fn decide(cx: &Cx<'_>, mut body: RequestBody<'_>, log: &mut LogInfo) -> Result<Reply, Stop> {
    let (cfg, req) = (&cx.policy.config, cx.req);

    // 1. Target length.
    let target_len = req.path.len() + req.query.map_or(0, |q| q.len() + 1);
    if target_len > cfg.server.max_uri_bytes {
        return Err(Refusal::UriTooLong.into());
    }

    // 2. Method, and a body where one means nothing.
    if req.proto == Proto::H3 && connection_specific(req.headers) {
        return Err(Refusal::Malformed.into());
    }
    transfer_codings(req.headers)?;
    // HTTP/1.1 heads were measured and counted as segd's parser read them: on the fast path,
    // or in the gate before hyper (`h1::HeadGate`: over TLS, and after a chunked body).
    if req.proto != Proto::H1 && field_lines(req.headers) > cfg.server.max_header_fields {
        return Err(Refusal::TooManyFields.into());
    }
    let writing = match *req.method {
        Method::GET | Method::HEAD => false,
        // An authority-form target (`host:port`, RFC 9112 §3.2.3) is CONNECT's alone, and it
        // arrives as an empty path; for GET, HEAD and the writes the path step refuses it.
        Method::OPTIONS if req.path != "*" && !req.path.starts_with('/') => {
            return Err(Refusal::Malformed.into())
        }
        Method::OPTIONS => {
            if body.is_present() {
                body.discard(MAX_DISCARDED_BODY, cfg.server.header_read_timeout)
                    .await?;
            }
            return Ok(headers::options(cx.policy, req, writable(cx)));
        }
        Method::PUT | Method::POST | Method::DELETE => true,
        // Not "not allowed here" (405): allowed nowhere, whatever the path (§15.6.2).
        _ => return Err(Refusal::MethodNotImplemented.into()),
    };
    if !writing && body.is_present() {
        body.discard(MAX_DISCARDED_BODY, cfg.server.header_read_timeout)
            .await?;
    }

    // 3. Path (a path-embedded token segment is split off first, on the raw path).
    // A DELETE may name a directory with a trailing slash (`/live/show1/`): only to be told
    // it is one (409); nothing is removed that way.
    let split = auth::split_path_token(cx.policy.auth.name(), req.path);
    let dir_form =
        *req.method == Method::DELETE && split.path.len() > 1 && split.path.ends_with('/');
    let path = if dir_form {
        &split.path[..split.path.len() - 1]
    } else {
        split.path
    };
    // Any other write to the root or to a directory's name (`PUT /live/show1/`) names no
    // object: such a path allows what OPTIONS says, GET, HEAD and OPTIONS, under the ingest
    // prefixes too.
    if writing && path.ends_with('/') {
        return Err(refuse_write(cx, &mut body, Refusal::MethodNotAllowed).await);
    }
    let rel = volumes::sanitize(path).map_err(|e| match e {
        PathError::Malformed(_) => Refusal::Malformed,
        PathError::NotServed(_) => Refusal::NotFound,
    })?;
    let canonical = rel.canonical();
    if cx.policy.access.enabled() {
        log.path = Some(canonical.clone());
    }

    // 4. Type and class; writes only where ingest is on.
    if writing && !cfg.ingest.covers(&canonical) {
        return Err(refuse_write(cx, &mut body, Refusal::MethodNotAllowed).await);
    }
    let ext = rel.extension().map(str::to_ascii_lowercase);
    let served = ext.as_deref().and_then(|e| cfg.content_type(e)).cloned();
    // A DELETE of a name no object of a served type can have is answered after the token
    // check: 409 for a directory, else 404 (see `write::delete`).
    let deletes_no_object = *req.method == Method::DELETE && (dir_form || served.is_none());
    if served.is_none() && !deletes_no_object {
        return Err(if writing {
            Refusal::UnsupportedMediaType
        } else {
            Refusal::NotFound
        }
        .into());
    }
    let class = ObjectClass::of(ext.as_deref().unwrap_or_default());
    let live = cfg.live.covers(&canonical);

    // 5. Token: playback tokens for protected reads, upload tokens for every write.
    let now = unix_now();
    let auth = if writing {
        &cx.policy.uploads
    } else {
        &cx.policy.auth
    };
    let decision = auth.decide(&auth::Facts {
        raw_path: split.path,
        canonical_path: &canonical,
        query: req.query,
        headers: req.headers,
        path_token: split.token.as_deref(),
        peer_ip: req.peer.ip(),
        now,
    });
    match &decision {
        Decision::Denied(reason) => return Err(Refusal::Forbidden(*reason).into()),
        Decision::Granted { grant, .. } => {
            tracing::debug!(key_id = %grant.key_id, "token accepted");
            if cx.policy.access.enabled() {
                log.key_id = Some(grant.key_id.clone());
            }
            if !writing && !auth.origin_authenticated(req.headers) {
                log.private_until = Some(grant.exp);
            }
        }
        Decision::Public | Decision::OriginAuth => {}
    }

    // 6. Writes go their own way from here.
    if writing {
        let class = (!deletes_no_object).then_some(class);
        return write::handle(cx, &rel, class, live, body).await;
    }
    let Some(content_type) = served else {
        return Err(Refusal::NotFound.into());
    };
    let rewrite_param = match (class, &decision) {
        (
            ObjectClass::Playlist,
            Decision::Granted {
                grant,
                source: source @ (auth::Source::Query | auth::Source::Path),
            },
        ) => rewrite::param(cx.policy, req, &canonical, grant, *source, now),
        _ => None,
    };

    // 6. Read. Live HLS playlists with LL-HLS directives are answered from the live registry;
    // everything else from the store (every tier behind one call). A live segment that does
    // not exist may be an announced preload hint, or still growing.
    let hls = ext.as_deref() == Some("m3u8");
    if live && hls {
        let dirs = crate::live::Directives::parse(req.query).map_err(|_| Refusal::BadDirective)?;
        if dirs.any() {
            let answer = super::live::playlist(
                cx,
                &rel,
                &canonical,
                dirs,
                rewrite_param.as_ref(),
                content_type.clone(),
            )
            .await?;
            // (None: a playlist too large to follow is served as it is, below.)
            if let Some(answer) = answer {
                return Ok(answer);
            }
        }
    }
    // What the request will read of the object, decided as steps 7–9 decide it: an object the
    // pull cache does not keep has those bytes fetched by the lookup, so that an upstream that
    // fails is a clean 502/504/503 rather than a response cut after its head.
    let reads = |o: &Object| body_span(cx, &canonical, live && hls, o);
    let object = match cx.rt.store.lookup(&rel, class, live, Some(&reads)).await {
        // Not here, nor (when an upstream covers live paths) there: it may be a preload hint,
        // which this node's own live stream announced (its upstream cannot have it yet).
        Err(m)
            if live
                && class == ObjectClass::Segment
                && (m.is_not_found()
                    || (m.is_upstream_failure() && cx.rt.live.hinted(&canonical).is_some())) =>
        {
            super::live::hinted(cx, &rel, &canonical).await?
        }
        Err(m @ Miss::Negative { .. }) => {
            log.cache = Some("negative");
            return Err(pull_miss(cx, m, log.path.as_deref()));
        }
        // The pull tier asked an upstream for it: the access log says so, as metrics do.
        Err(
            m @ (Miss::UpstreamNotFound { .. }
            | Miss::UpstreamFailed
            | Miss::UpstreamTimeout
            | Miss::UpstreamUnavailable { .. }),
        ) => {
            log.cache = Some("miss");
            return Err(pull_miss(cx, m, log.path.as_deref()));
        }
        r => r?,
    };
    // A file the current preload hint names, left by an earlier session of the stream: the
    // hint announces the upload still to come.
    let object = if live
        && class == ObjectClass::Segment
        && super::live::older_than_its_hint(cx, &canonical, &object)
    {
        super::live::hinted(cx, &rel, &canonical).await?
    } else {
        object
    };
    let object = if object.growing {
        match super::live::growing(cx, &rel, &canonical, object, &content_type).await? {
            super::live::Grown::Streamed(reply) => return Ok(reply),
            super::live::Grown::Complete(o) => o,
        }
    } else {
        object
    };
    if live && hls {
        super::live::not_held_back(cx, &canonical, &object).await?;
    }
    // A pulled object keeps its upstream's Cache-Control and Content-Type.
    let cache_control = if let Some(cc) = &object.cache_control {
        cc.clone()
    } else if live && hls {
        // (A playlist without EXT-X-TARGETDURATION has none: 0.)
        let target = (cx.rt.live.current(&canonical).map(|s| s.target)).filter(|t| *t > 0.0);
        super::live::live_playlist_cache_control(cfg, target)
    } else if live && ext.as_deref() == Some("mpd") {
        // A dynamic manifest is fetched again every `minimumUpdatePeriod`: no cache may keep
        // it longer than half of that, as a playlist's target duration bounds it.
        let period = cx.rt.live.mpd_update_period(&canonical);
        super::live::live_playlist_cache_control(cfg, period)
    } else {
        headers::cache_control(cfg, class, live)
    };
    if let Some(param) = rewrite_param.filter(|_| !object.encoded()) {
        // A playlist too large to rewrite is served as it is, below.
        if let Some(out) =
            rewrite::playlist(cx.policy, &cx.rt.rewrites, &rel, &object, &param).await?
        {
            let cc = param.cache_control(&cache_control, object.age(), now);
            return rewritten(cx, &canonical, live, &object, out, cc);
        }
    }

    let mut headers = HeaderMap::with_capacity(12);
    headers::cors(cx.policy, req, &mut headers);
    let content_type = object.content_type.clone().unwrap_or(content_type);
    headers.insert(CACHE_CONTROL, cache_control);
    headers.insert(ETAG, object.etag.clone());
    // A date names one version only once its second is over where versions follow each other
    // within a second: playlists outside the live prefixes, and whatever uploads replace (the
    // ingest prefixes). Live playlists: the live state tells their versions apart.
    let replaceable = if class == ObjectClass::Playlist {
        !live
    } else {
        cfg.ingest.covers(&canonical)
    };
    if let Some(lm) = object.last_modified(replaceable) {
        headers.insert(LAST_MODIFIED, lm);
    }
    if let Some(extra) = &object.extra {
        for (k, v) in extra {
            headers.insert(k, v.clone());
        }
    }
    log.cache = object.cache_status;

    // 7. Preconditions.
    let etag = object.etag.to_str().unwrap_or_default().to_owned();
    let date = validator_date(cx, &canonical, live && hls, &object);
    let mut headers = preconditions(cx, &etag, date, headers)?;

    // 8. Range (defined for GET only, RFC 9110 §14.2; a stream of unknown length is sent whole).
    let Some(len) = object.len else {
        headers.insert(CONTENT_TYPE, content_type);
        let body = if cx.is_head {
            Body::Empty
        } else {
            object.into_body(0, 0, false)
        };
        return Ok(reply(StatusCode::OK, headers, body));
    };
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let decision = range_decision(cx, &etag, date, len);

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
            let r = text(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                cx.is_head,
                "range not satisfiable\n",
            );
            return Err(Stop::Answered(Box::new(r)));
        }
    };
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    let body = if cx.is_head || count == 0 {
        Body::Empty
    } else {
        object.into_body(offset, count, class == ObjectClass::Playlist)
    };
    Ok(reply(status, headers, body))
}

/// The date preconditions compare (step 7): the object's `Last-Modified`, or for a live HLS
/// playlist the one its live registry vouches for (`None`: a date that cannot tell versions
/// apart).
fn validator_date(
    cx: &Cx<'_>,
    canonical: &str,
    live_hls: bool,
    object: &Object,
) -> Option<std::time::SystemTime> {
    let modified = object.modified();
    if object.undated {
        None
    } else if live_hls {
        super::live::playlist_date(cx, canonical, &object.etag, modified)
    } else {
        Some(modified)
    }
}

/// Step 8's decision for an object of `len` bytes (HEAD and a failed `If-Range`: the whole).
fn range_decision(
    cx: &Cx<'_>,
    etag: &str,
    modified: Option<std::time::SystemTime>,
    len: u64,
) -> RangeDecision {
    let h = cx.req.headers;
    if cx.is_head || !conditional::if_range_allows(h, etag, modified) {
        RangeDecision::Full
    } else {
        range::resolve_fields(h.get_all(RANGE), len)
    }
}

/// The bytes of `object` a request is sent (`offset`, `count`), as steps 7–9 decide them from
/// its validators and length; `None` when it is sent none (HEAD, 304, 412, 416, nothing in
/// range, a length not known yet). The store asks it of an object whose bytes must come from
/// an upstream before the answer is decided (see [`crate::store::Reads`]).
fn body_span(cx: &Cx<'_>, canonical: &str, live_hls: bool, object: &Object) -> Option<(u64, u64)> {
    let len = object.len?;
    if cx.is_head {
        return None;
    }
    let etag = object.etag.to_str().unwrap_or_default();
    let date = validator_date(cx, canonical, live_hls, object);
    if conditional::evaluate(cx.req.headers, etag, date) != Outcome::Proceed {
        return None;
    }
    let span = match range_decision(cx, etag, date, len) {
        RangeDecision::Full => (0, len),
        RangeDecision::Partial { start, end } => (start, end - start + 1),
        RangeDecision::Unsatisfiable => return None,
    };
    (span.1 > 0).then_some(span)
}

/// Whether the request's path accepts writes (for `Allow` and CORS preflight answers).
fn writable(cx: &Cx<'_>) -> bool {
    let ingest = &cx.policy.config.ingest;
    if ingest.prefixes.is_empty() {
        return false;
    }
    let split = auth::split_path_token(cx.policy.auth.name(), cx.req.path);
    volumes::sanitize(split.path).is_ok_and(|rel| ingest.covers(&rel.canonical()))
}

/// Transfer codings (HTTP/1.1 only; h2 and h3 have none): segd decodes `chunked` and nothing
/// else, so any other coding is 501 (RFC 9112 §6.1) and a `chunked` that is not the single,
/// final coding is 400 (§6.3). The HTTP/1.1 fast path applies the same rule before it hands a
/// body to hyper.
fn transfer_codings(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut codings: Vec<&str> = Vec::new();
    for v in headers.get_all(TRANSFER_ENCODING) {
        let s = v.to_str().map_err(|_| Refusal::Malformed)?;
        codings.extend(s.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    let chunked = |c: &&str| c.eq_ignore_ascii_case("chunked");
    // A field that names no coding (`Transfer-Encoding: ,`), or `chunked` anywhere but once and
    // last (`chunked, identity`): the body's length cannot be told, 400 before any 501.
    if headers.contains_key(TRANSFER_ENCODING) && codings.is_empty() {
        return Err(Refusal::Malformed);
    }
    if codings.iter().rev().skip(1).any(chunked) {
        return Err(Refusal::Malformed);
    }
    if codings.iter().any(|c| !chunked(c)) {
        return Err(Refusal::UnsupportedCoding);
    }
    Ok(())
}

/// The field lines of an HTTP/2 or HTTP/3 request, as `max_header_fields` counts them: a
/// `Cookie` split into crumbs for compression (RFC 9113 §8.2.3, RFC 9114 §4.2.1) is one line.
fn field_lines(headers: &HeaderMap) -> usize {
    let crumbs = headers.get_all(http::header::COOKIE).iter().count();
    headers.len() - crumbs.saturating_sub(1)
}

/// Whether an HTTP/3 request carries a connection-specific field, which makes it malformed
/// (RFC 9114 §4.2): `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, or a `TE` other than `trailers`. Checked for HTTP/3 only: the h2 crate refuses
/// the same fields itself (RFC 9113 §8.2.2) before a request reaches the handler.
fn connection_specific(headers: &HeaderMap) -> bool {
    const FIELDS: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ];
    FIELDS.iter().any(|f| headers.contains_key(*f))
        || headers
            .get_all(http::header::TE)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

/// Whether a request head's transfer codings are acceptable (for the HTTP/1.1 fast path).
/// Whether a request may park (LL-HLS directives, `_` escaped or not, or a path under a live prefix: preload
/// hints). Its connection is then watched while it waits: a client that goes away frees its
/// slot at once.
pub fn may_park(policy: &Policy, path: &str, query: Option<&str>) -> bool {
    query.is_some_and(|q| q.contains("HLS_"))
        || policy
            .config
            .live
            .prefixes
            .iter()
            .any(|p| path.contains(p.as_str()))
}

pub fn check_transfer_codings(headers: &HeaderMap) -> Result<(), Refusal> {
    transfer_codings(headers)
}

pub(super) fn reply(status: StatusCode, headers: HeaderMap, body: Body) -> Reply {
    Reply {
        status,
        headers,
        body,
        log: LogInfo::default(),
        close: false,
    }
}

/// Preconditions (RFC 9110 §13.2.2): the headers to go on with, or the 304 / 412 to send,
/// carrying the validators and Cache-Control already in `headers`.
/// Preconditions (RFC 9110 §13.2.2) against `etag` and `modified` (`None`: a date that cannot
/// tell versions apart, see [`conditional::evaluate`]).
pub(super) fn preconditions(
    cx: &Cx<'_>,
    etag: &str,
    modified: Option<std::time::SystemTime>,
    headers: HeaderMap,
) -> Result<HeaderMap, Stop> {
    match conditional::evaluate(cx.req.headers, etag, modified) {
        Outcome::Proceed => Ok(headers),
        Outcome::NotModified => Err(Stop::Answered(Box::new(reply(
            StatusCode::NOT_MODIFIED,
            headers,
            Body::Empty,
        )))),
        Outcome::PreconditionFailed => Err(Stop::Answered(Box::new(text(
            StatusCode::PRECONDITION_FAILED,
            headers,
            cx.is_head,
            "precondition failed\n",
        )))),
    }
}

/// A short plain-text answer, never stored by caches.
fn text(status: StatusCode, mut headers: HeaderMap, is_head: bool, msg: &'static str) -> Reply {
    headers.insert(CONTENT_TYPE, headers::TEXT);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(msg.len()));
    headers.insert(CACHE_CONTROL, headers::NO_STORE);
    let body = if is_head {
        Body::Empty
    } else {
        Body::Bytes(Bytes::from_static(msg.as_bytes()))
    };
    reply(status, headers, body)
}

/// The answer for a refusal, from the one table; counted and logged here.
/// A request refused before its steps, by a protocol check of its own (hyper's HTTP/1.1 heads
/// with a missing, repeated or invalid `Host`); the connection closes after the answer.
/// Reads the first piece of `reply`'s body from disk before a writer that sends the head first
/// (hyper, HTTP/3) sends it ([`crate::http::body::first_piece_read`]): a device error there
/// becomes the answer of an unavailable volume (503). Returns the reply to send.
pub async fn with_first_piece(
    rt: &Runtime,
    policy: &Policy,
    req: &Request<'_>,
    mut reply: Reply,
    mapped_ok: bool,
) -> Reply {
    let body = std::mem::replace(&mut reply.body, crate::store::Body::Empty);
    match super::body::first_piece_read(body, mapped_ok).await {
        Ok(body) => {
            reply.body = body;
            reply
        }
        Err(e) => {
            tracing::warn!(error = %e, "an object's bytes could not be read; answered 503");
            refused(rt, policy, req, Refusal::VolumeUnavailable)
        }
    }
}

pub fn refused(rt: &Runtime, policy: &Policy, req: &Request<'_>, why: Refusal) -> Reply {
    let cx = Cx {
        rt,
        policy,
        req,
        is_head: *req.method == Method::HEAD,
        started: tokio::time::Instant::now(),
    };
    let mut reply = refuse(&cx, why, None);
    reply.close = true;
    reply
}

fn refuse(cx: &Cx<'_>, r: Refusal, path: Option<&str>) -> Reply {
    let row = r.row();
    let m = &cx.rt.metrics;
    m.refusals
        .with_label_values(&[row.label, row.fault.as_str()])
        .inc();
    let peer = cx.req.peer.ip();
    // The decoded path when the access log made it; else the request's, without a token
    // segment (a refusal's line names its path whether or not the access log is on).
    let path = path.unwrap_or_else(|| {
        let p = auth::split_path_token(cx.policy.auth.name(), cx.req.path).path;
        if p.is_empty() {
            "-"
        } else {
            p
        }
    });
    // Never a token in the log: a token segment sent unencoded is split by its ACL's `/`,
    // and what follows the first segment (`…~hmac=…/`) is left in the path.
    let path = || crate::access::redact_path(cx.policy.auth.name(), path);
    // Counted every time; logged at most once a second per kind (with how many were left
    // out), or a flood of requests (a volume down under load, a token sprayer) floods the log.
    let throttle = &cx.rt.log_throttle;
    match (r, row.level) {
        (Refusal::Forbidden(reason), _) => {
            m.token_rejections
                .with_label_values(&[reason.as_str()])
                .inc();
            if let Some(left_out) = throttle.allow(("token rejected", reason.as_str())) {
                tracing::info!(reason = %reason.as_str(), path = path().as_str(), %peer, left_out, "token rejected");
            }
        }
        (_, Level::Warn) => {
            if let Some(left_out) = throttle.allow(("request refused", row.label)) {
                tracing::warn!(refusal = %r, fault = row.fault.as_str(), path = path().as_str(), left_out, "request refused")
            }
        }
        (_, Level::Info) => {
            if let Some(left_out) = throttle.allow(("request refused", row.label)) {
                tracing::info!(refusal = %r, fault = row.fault.as_str(), path = path().as_str(), %peer, left_out, "request refused")
            }
        }
        (_, Level::Debug) => {
            tracing::debug!(refusal = %r, path = path().as_str(), %peer, "request refused")
        }
    }
    let mut headers = HeaderMap::with_capacity(6);
    headers::cors(cx.policy, cx.req, &mut headers);
    if r == Refusal::MethodNotAllowed {
        // The path's own methods, as OPTIONS lists them (a write outside the ingest prefixes
        // is told GET, HEAD and OPTIONS).
        headers.insert(ALLOW, headers::allow(writable(cx)));
    }
    if matches!(r, Refusal::UploadsBusy | Refusal::LiveBusy) {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if r == Refusal::VolumeUnavailable {
        // The volume is probed again within `volume_check_interval`: whole seconds, rounded up.
        let every = cx.policy.config.server.volume_check_interval;
        let secs = (every.as_secs() + u64::from(every.subsec_nanos() > 0)).max(1);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Refusal::UpstreamUnavailable(secs) = r {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let (Refusal::StreamElsewhere | Refusal::HeldBack, Some(after)) =
        (r, cx.policy.config.live.unknown_stream_retry_after)
    {
        // Whole seconds, rounded up (RFC 9110 §10.2.3).
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if r == Refusal::UnsupportedContentCoding {
        headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let mut reply = text(row.status, headers, cx.is_head, row.body);
    reply.close = r.closes_connection();
    reply
}

/// The refusal for a miss the pull tier decided. An upstream's 404 or 410 that segd remembers
/// (`[pull] negative_ttl`) may be kept by a CDN for as long as segd still remembers it, never
/// longer ([`headers::negative_cache_control`]); any other (not remembered: live paths) is
/// refused as usual, `no-store`. So is one for a path this node takes uploads for: an
/// object published here is served at once, and a CDN must not go on answering 404 for it.
fn pull_miss(cx: &Cx<'_>, m: Miss, path: Option<&str>) -> Stop {
    let cc = headers::negative_cache_control(m.remembered()).filter(|_| !writable(cx));
    let Some(cc) = cc else {
        return Refusal::from(m).into();
    };
    let mut reply = refuse(cx, Refusal::from(m), path);
    reply.headers.insert(CACHE_CONTROL, cc);
    Stop::Answered(Box::new(reply))
}

/// A playlist with the token appended to every relative URI: `cache_control` private (never
/// shared by a CDN; [`rewrite::Param::cache_control`]), a weak ETag that depends on the token,
/// no ranges.
fn rewritten(
    cx: &Cx<'_>,
    canonical: &str,
    live: bool,
    object: &Object,
    out: rewrite::Rewritten,
    cache_control: HeaderValue,
) -> Result<Reply, Stop> {
    let mut headers = HeaderMap::with_capacity(12);
    headers::cors(cx.policy, cx.req, &mut headers);
    headers.insert(CACHE_CONTROL, cache_control);
    if let Ok(v) = HeaderValue::from_str(&out.etag) {
        headers.insert(ETAG, v);
    }
    if let Some(lm) = object.last_modified(!live) {
        headers.insert(LAST_MODIFIED, lm);
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("none"));
    let date = super::live::playlist_date(cx, canonical, &object.etag, object.modified())
        .filter(|_| !object.undated);
    let mut headers = preconditions(cx, &out.etag, date, headers)?;
    headers.insert(CONTENT_TYPE, out.content_type);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(out.body.len()));
    let body = if cx.is_head {
        Body::Empty
    } else {
        Body::Bytes(out.body)
    };
    Ok(reply(StatusCode::OK, headers, body))
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&str]) -> Result<(), Refusal> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRANSFER_ENCODING, HeaderValue::from_str(v).expect("value"));
        }
        transfer_codings(&h)
    }

    #[test]
    fn transfer_coding_rules() {
        assert_eq!(te(&[]), Ok(()));
        assert_eq!(te(&["chunked"]), Ok(()));
        assert_eq!(te(&["Chunked"]), Ok(()));
        assert_eq!(te(&["rot13"]), Err(Refusal::UnsupportedCoding));
        assert_eq!(te(&["gzip, chunked"]), Err(Refusal::UnsupportedCoding));
        assert_eq!(te(&["gzip", "chunked"]), Err(Refusal::UnsupportedCoding));
        assert_eq!(te(&["chunked, chunked"]), Err(Refusal::Malformed));
        assert_eq!(te(&["chunked", "chunked"]), Err(Refusal::Malformed));
        // chunked not last: 400 (RFC 9112 §6.3), though the other coding is unknown too.
        assert_eq!(te(&["chunked, identity"]), Err(Refusal::Malformed));
        assert_eq!(te(&["chunked", "gzip"]), Err(Refusal::Malformed));
        assert_eq!(te(&[","]), Err(Refusal::Malformed));
    }
}
