//! The live request path (see `docs/live.md`): LL-HLS playlists with directives (blocking
//! reload, delta updates) answered from the live registry, preload-hint waits, and responses
//! streamed from uploads still in progress (read-while-write).

use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::handler::{preconditions, reply, Cx, Reply, Stop};
use super::headers;
use super::refusal::Refusal;
use super::rewrite::Param;
use crate::config::Config;
use crate::live::{Directives, Snapshot, WaitError};
use crate::playlist;
use crate::store::{Body, Object, ObjectClass, Progress};
use crate::volumes::RelPath;

impl From<WaitError> for Refusal {
    fn from(e: WaitError) -> Refusal {
        match e {
            WaitError::TooMany => Refusal::LiveBusy,
            WaitError::TimedOut => Refusal::BlockTimeout,
            WaitError::Gone => Refusal::NotFound,
        }
    }
}

/// How long a parked request may wait on a playlist with target duration `target` seconds.
fn block_timeout(cfg: &Config, target: f64) -> Duration {
    let t = if target > 0.0 { target } else { 6.0 };
    crate::live::playlist::duration(t * f64::from(cfg.live.block_timeout_factor))
}

/// Refuses a live media playlist this node found on its volume at start while its packager
/// may have been uploading newer versions to another node ([`crate::live::Registry::held_back`]):
/// 503 with `Retry-After`, as for a stream this node has no trace of, and only where that is
/// configured (`[live] unknown_stream_retry_after`, the cluster setting). A version the
/// registry does not know yet (the watcher's walk of the live directories at start still under
/// way when the first players come) is read from `object` and published, as a blocking reload
/// reads it; a pulled copy (an edge's, whose upstream is its stream's node) is not held.
pub(super) async fn not_held_back(
    cx: &Cx<'_>,
    canonical: &str,
    object: &Object,
) -> Result<(), Stop> {
    if cx.policy.config.live.unknown_stream_retry_after.is_none() || object.cache_status.is_some() {
        return Ok(());
    }
    let snap = match cx.rt.live.current(canonical) {
        Some(snap) => Some(snap),
        None => snapshot_of(cx, canonical, object).await?,
    };
    match snap {
        Some(snap) if cx.rt.live.held_back(&snap) => Err(Refusal::HeldBack.into()),
        _ => Ok(()),
    }
}

/// The playlist's current version: from the registry, or read from the store once and
/// published; `None` for one over `[live] max_playlist_bytes`, which is not followed (served as
/// it is, as without directives).
async fn snapshot(
    cx: &Cx<'_>,
    rel: &RelPath,
    canonical: &str,
) -> Result<Option<std::sync::Arc<Snapshot>>, Stop> {
    if let Some(s) = cx.rt.live.current(canonical) {
        return Ok(Some(s));
    }
    let object = cx
        .rt
        .store
        .lookup(rel, ObjectClass::Playlist, true, None)
        .await?;
    snapshot_of(cx, canonical, &object).await
}

/// The version `object` holds, read and published (unless another was published meanwhile,
/// which is then the current one); `None` for one over `[live] max_playlist_bytes`.
async fn snapshot_of(
    cx: &Cx<'_>,
    canonical: &str,
    object: &Object,
) -> Result<Option<std::sync::Arc<Snapshot>>, Stop> {
    let len = object.len.ok_or(Refusal::Changed)?;
    if len > cx.policy.config.live.max_playlist_bytes {
        return Ok(None);
    }
    let text = object.read_prefix(len as usize).await?;
    if text.len() as u64 != len {
        // Replaced or cut while read: never a version under another's validators.
        return Err(Refusal::Changed.into());
    }
    let mut snap = Snapshot::parse(text, object.etag.clone(), object.last_modified.clone());
    // A pulled copy is its upstream's version, not what this node's disk held.
    snap.pulled = object.cache_status.is_some();
    cx.rt.live.publish_read(canonical, snap, None);
    cx.rt
        .live
        .current(canonical)
        .ok_or(Refusal::Changed.into())
        .map(Some)
}

/// A live HLS playlist requested with LL-HLS directives.
pub(super) async fn playlist(
    cx: &Cx<'_>,
    rel: &RelPath,
    canonical: &str,
    dirs: Directives,
    rewrite_param: Option<&Param>,
    content_type: HeaderValue,
) -> Result<Option<Reply>, Stop> {
    let cfg = &cx.policy.config;
    // An edge node without the playlist: its upstream answers the directives (blocking there).
    if cx.rt.live.current(canonical).is_none() {
        // The longest a blocking reload may legitimately take (3 target durations of up to
        // 10 s by default), plus the upstream's first-byte allowance.
        let wait = Duration::from_secs(10 * u64::from(cfg.live.block_timeout_factor))
            + cfg.pull.first_byte_timeout;
        if let Some(p) = cx
            .rt
            .store
            .pull_live_playlist(rel, dirs.query(), wait)
            .await?
        {
            return passed(cx, &p, rewrite_param, content_type).map(Some);
        }
    }
    let Some(mut snap) = snapshot(cx, rel, canonical).await? else {
        return Ok(None);
    };
    if cfg.live.unknown_stream_retry_after.is_some() && cx.rt.live.held_back(&snap) {
        return Err(Refusal::HeldBack.into());
    }
    // Blocking reload: only where the playlist allows it, and never after its end.
    let blocking = dirs.want.filter(|_| snap.blocks());
    if let Some(want) = blocking {
        snap.check(want).map_err(|_| Refusal::BadDirective)?;
        if !snap.satisfies(want) {
            let timeout = block_timeout(cfg, snap.target);
            snap = cx
                .rt
                .live
                .wait(canonical, want, timeout, cfg.live.max_blocked_requests)
                .await?;
        }
    }
    // Delta update: only where the playlist advertises CAN-SKIP-UNTIL (built once per version).
    let delta = dirs.skip.and_then(|v| snap.delta(v == 2));
    let (mut body, mut etag) = match delta {
        Some(d) => (d.body.clone(), d.etag.clone()),
        None => (snap.text.clone(), Some(snap.etag.clone())),
    };
    // A rewrite that changes nothing (a path segment's token, no root-relative URI) is none.
    let rewritten = rewrite_param.and_then(|p| p.rewrite(playlist::Kind::Hls, &body));
    let rewrite_param = rewrite_param.filter(|_| rewritten.is_some());
    if let Some(out) = rewritten {
        body = Bytes::from(out);
        etag = crate::live::playlist::variant_etag(&snap.etag, &body);
    }
    let mut h = HeaderMap::with_capacity(12);
    headers::cors(cx.policy, cx.req, &mut h);
    // A drain answers parked requests with what there is: never cacheable when it does not
    // hold what was asked for (a CDN must not keep it for that query).
    let unsatisfied = blocking.is_some_and(|w| !snap.satisfies(w));
    let cc = if unsatisfied {
        headers::NO_STORE
    } else if rewrite_param.is_some() {
        // This node's own stream: its answers change within a second.
        HeaderValue::from_static("private, max-age=1")
    } else if blocking.is_some() {
        // The answer for this query stays valid: a CDN keyed on the query can share it.
        max_age(6.0 * snap.target)
    } else {
        live_playlist_cache_control(cfg, Some(snap.target).filter(|t| *t > 0.0))
    };
    h.insert(CACHE_CONTROL, cc);
    if let Some(e) = etag {
        h.insert(ETAG, e);
    }
    h.insert(LAST_MODIFIED, snap.last_modified.clone());
    // A client that already holds this version of the answer gets 304 (and a failed If-Match
    // 412), as for any other GET: the validators are those of the answer, after any wait.
    let mut h = answer_preconditions(cx, h, snap.date_shared)?;
    h.insert(CONTENT_TYPE, content_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = if cx.is_head {
        Body::Empty
    } else {
        Body::Bytes(body)
    };
    Ok(Some(reply(StatusCode::OK, h, body)))
}

/// Preconditions (RFC 9110 §13.2.2) against the `ETag` and `Last-Modified` in `h`; without
/// an ETag there is nothing to compare, and the answer goes on. `date_shared`: the date is
/// also an earlier version's, and is not compared.
fn answer_preconditions(cx: &Cx<'_>, h: HeaderMap, date_shared: bool) -> Result<HeaderMap, Stop> {
    let etag = h.get(ETAG).and_then(|v| v.to_str().ok());
    let modified = h
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .filter(|_| !date_shared);
    match etag {
        Some(etag) => {
            let etag = etag.to_owned();
            preconditions(cx, &etag, modified, h)
        }
        None => Ok(h),
    }
}

/// The date a live playlist's preconditions may compare: `None` when the registry's current
/// version shares its second with the version before it, or is not this object (a version
/// between two publications), or the registry has none (a pulled copy it never read, whose
/// versions may share a second as the origin's do): the registry cannot vouch for its date.
pub(super) fn playlist_date(
    cx: &Cx<'_>,
    canonical: &str,
    etag: &HeaderValue,
    modified: std::time::SystemTime,
) -> Option<std::time::SystemTime> {
    let unsure = cx
        .rt
        .live
        .current(canonical)
        .is_none_or(|s| s.date_shared || s.etag != *etag);
    (!unsure).then_some(modified)
}

/// An upstream's answer to LL-HLS directives, with this node's CORS headers (and its token
/// rewriting of the playlist's URIs, when configured). Its status stands, errors included; a
/// 200 is held to the client's preconditions and goes out with the Cache-Control a stored copy
/// would have (the pull tier's, else segd's own for live playlists); rewritten, with the
/// private form of it ([`Param::cache_control`]). An error is `no-store`, as segd's own errors
/// are, whatever the upstream said: a CDN must not keep it for the query.
fn passed(
    cx: &Cx<'_>,
    p: &crate::store::Passed,
    rewrite_param: Option<&Param>,
    content_type: HeaderValue,
) -> Result<Reply, Stop> {
    let mut h = HeaderMap::with_capacity(10);
    headers::cors(cx.policy, cx.req, &mut h);
    h.extend(p.headers.clone());
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(
            CACHE_CONTROL,
            live_playlist_cache_control(&cx.policy.config, None),
        );
    }
    // Coded bytes (an upstream that gzips although asked for identity) are passed as they are;
    // a rewrite that changes nothing (a path segment's token, no root-relative URI) is none.
    let rewritten = rewrite_param
        .filter(|_| !h.contains_key(CONTENT_ENCODING) && p.status == StatusCode::OK)
        .and_then(|param| Some((param, param.rewrite(playlist::Kind::Hls, &p.body)?)));
    let rewrite_param = rewritten.as_ref().map(|(param, _)| *param);
    let upstream_type = h.remove(CONTENT_TYPE);
    if p.status == StatusCode::OK && rewrite_param.is_none() {
        // The upstream was not asked with the client's preconditions: they are checked here.
        h = answer_preconditions(cx, h, false)?;
    }
    h.insert(CONTENT_TYPE, upstream_type.unwrap_or(content_type));
    if p.status != StatusCode::OK {
        h.insert(CACHE_CONTROL, headers::NO_STORE);
    }
    let mut body = p.body.clone();
    if let Some((param, out)) = rewritten {
        body = Bytes::from(out);
        // The private lifetime is what is left of the shared one: the Age is counted in it.
        let age = h
            .remove(AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok())
            .unwrap_or(0);
        let shared = h.get(CACHE_CONTROL).cloned().unwrap_or(headers::NO_STORE);
        h.insert(
            CACHE_CONTROL,
            param.cache_control(&shared, age, super::handler::unix_now()),
        );
        h.remove(ETAG);
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = if cx.is_head || body.is_empty() {
        Body::Empty
    } else {
        Body::Bytes(body)
    };
    Ok(reply(p.status, h, body))
}

/// `public, max-age=<secs>` (at least 1 s).
fn max_age(secs: f64) -> HeaderValue {
    let n = secs.floor().max(1.0) as u64;
    HeaderValue::from_str(&format!("public, max-age={n}"))
        .unwrap_or(HeaderValue::from_static("public, max-age=1"))
}

/// Cache-Control of a live playlist: the configured `cache_control.live`, but never fresh for
/// longer than half the target duration when it is known ([`cap_freshness`]), in the whole
/// seconds caches count: `max-age=0` below a target duration of 2 s (a cache revalidates
/// each time, a 304 while the version is the same, and collapses concurrent requests).
pub(super) fn live_playlist_cache_control(cfg: &Config, target: Option<f64>) -> HeaderValue {
    let configured = cfg.cache_control.live.clone();
    // 0 is a period too (a DASH `minimumUpdatePeriod="PT0S"`: fetched again each time).
    let Some(target) = target.filter(|t| *t >= 0.0) else {
        return configured;
    };
    let cap = (target / 2.0).floor() as u64;
    cap_freshness(&configured, cap)
}

/// `value` with its `max-age` and `s-maxage` at most `cap` seconds (a shared cache goes by
/// `s-maxage` first, RFC 9111 §5.2.2.10: capping `max-age` alone let a CDN keep a live playlist
/// for a configured `s-maxage=60`), `max-age=<cap>` added when it has neither, and every other
/// directive kept as it is (`stale-while-revalidate=0`, `must-revalidate`: they were dropped
/// whenever the cap applied).
pub(super) fn cap_freshness(value: &HeaderValue, cap: u64) -> HeaderValue {
    let Ok(text) = value.to_str() else {
        return max_age(cap as f64);
    };
    let mut out: Vec<String> = Vec::new();
    let mut bounded = false;
    for d in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, arg) = d.split_once('=').unwrap_or((d, ""));
        let name_lc = name.trim().to_ascii_lowercase();
        if name_lc == "max-age" || name_lc == "s-maxage" {
            bounded = true;
            let secs = arg.trim().trim_matches('"').parse::<u64>().unwrap_or(0);
            out.push(format!("{name_lc}={}", secs.min(cap)));
        } else {
            out.push(d.to_string());
        }
    }
    if !bounded {
        out.push(format!("max-age={cap}"));
    }
    HeaderValue::from_str(&out.join(", ")).unwrap_or_else(|_| max_age(cap as f64))
}

/// Whether `object`, found at `canonical`, is a file older than the version of the live
/// playlist that announces that name as its preload hint: a part left by an earlier session
/// of the stream (an encoder restarted on the same path reuses its names), not the one the
/// hint announces, which is still to be uploaded (a packager uploads a part before the
/// version that hints the next one). It is waited for as if absent ([`hinted`]).
pub(super) fn older_than_its_hint(cx: &Cx<'_>, canonical: &str, object: &Object) -> bool {
    if object.growing {
        return false;
    }
    let Some(snap) = cx
        .rt
        .live
        .hinted(canonical)
        .and_then(|playlist| cx.rt.live.current(&playlist))
    else {
        return false;
    };
    let hinted_at = snap
        .last_modified
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok());
    hinted_at.is_some_and(|t| object.meta.modified() < t)
}

/// A live media segment that does not exist (or only as an earlier session's file,
/// [`older_than_its_hint`]): if a live playlist announces it as a preload hint, waits for its
/// upload to start and returns it; likewise if it is the next segment of a series whose
/// uploads are under way ([`crate::live::Registry::next_in`]: a DASH player asks for the
/// segment its clock says is available, which a late packager has not begun); else 404 at
/// once. A hint that a newer version of the playlist lists as a part or segment instead is
/// still waited for (a packager that uploads in parallel may publish that version a moment
/// before the part); one it withdraws is 404. The next segment of a series is no longer
/// waited for once the series has gone past it or stopped.
pub(super) async fn hinted(cx: &Cx<'_>, rel: &RelPath, canonical: &str) -> Result<Object, Stop> {
    let live = &cx.rt.live;
    let (playlist, target) = match live.hinted(canonical) {
        Some(playlist) => {
            let target = live.current(&playlist).map_or(6.0, |s| s.target);
            (Some(playlist), target)
        }
        None => match live.next_in(canonical) {
            // At least a second: a packager catching up uploads segments back to back.
            Some(interval) => (None, interval.as_secs_f64().max(1.0)),
            None => return Err(Refusal::NotFound.into()),
        },
    };
    let still_expected = || match &playlist {
        Some(playlist) => {
            live.hinted(canonical).is_some()
                || live
                    .current(playlist)
                    .is_some_and(|s| !s.endlist && s.lists(playlist, canonical))
        }
        None => live.next_in(canonical).is_some(),
    };
    let cfg = &cx.policy.config;
    let store = &cx.rt.store;
    let deadline = cx.started + block_timeout(cfg, target);
    let mut wait = live.watch_object(canonical, cfg.live.max_blocked_requests)?;
    loop {
        // The object, or the upload of it in progress (a lookup gives that when no complete
        // version exists; while an earlier session's file is still in place, it is asked for).
        let found = match store.lookup(rel, ObjectClass::Segment, true, None).await {
            Ok(o) if !older_than_its_hint(cx, canonical, &o) => Some(o),
            Ok(_) => store.upload_in_progress(rel),
            Err(m) if m.is_not_found() || m.is_upstream_failure() => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(o) = found {
            wait.woken();
            return Ok(o);
        }
        // Not there, and no longer expected (a new version of the playlist dropped the hint,
        // the stream ended or was deleted): the packager will not publish it (RFC 8216bis
        // §6.2.6: 404).
        if !still_expected() {
            return Err(Refusal::NotFound.into());
        }
        match wait.changed(deadline).await {
            Ok(()) => {}
            // Nothing announced the next segment of a series: not begun in time, it is
            // not there (a hint's wait that times out is a 503, as a blocking reload's).
            Err(WaitError::TimedOut) if playlist.is_none() => return Err(Refusal::NotFound.into()),
            Err(e) => return Err(Refusal::from(e).into()),
        }
    }
}

/// What became of a request for a segment still being uploaded.
pub(super) enum Grown {
    /// Answered from the upload as it grows.
    Streamed(Reply),
    /// The object as it is now that the upload ended (committed, or failed and gone): served
    /// like any object, with its validators and real length.
    Complete(Object),
}

/// What a `Range` asks of an object whose length is not known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrowingRange {
    /// No range (or one the whole stream answers): 200, to the end.
    Whole,
    /// `bytes=a-b` that an upload can hold: sent once all of it is there.
    Closed(u64, u64),
    /// `bytes=a-b` with `b` past any upload (RFC 8673's "very large value", which LL-HLS players
    /// send for a preload hint with a start and no length): 206 `bytes a-b/*` streamed from
    /// `a` to wherever the upload ends.
    Open(u64, u64),
}

impl GrowingRange {
    fn parse(value: Option<&HeaderValue>, max_object: u64) -> GrowingRange {
        let Some((a, b)) = value
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
            .filter(|(a, b)| a <= b)
        else {
            return GrowingRange::Whole;
        };
        // (A last byte of u64::MAX is open too: `b + 1` below would wrap.)
        if b - a >= max_object || b == u64::MAX {
            GrowingRange::Open(a, b)
        } else {
            GrowingRange::Closed(a, b)
        }
    }
}

/// A segment still being uploaded.
/// - A preload hint's object (a part, RFC 8216bis §6.2.6: no byte of it before all of it can go
///   at full speed) and a closed range wait for their bytes: answered whole once the upload
///   has them, or like any object once it ended.
/// - A range from an offset to a very large value streams from that offset, once it is there.
/// - Anything else streams from the start as the upload grows (LL-DASH, chunked CMAF).
///
/// Streamed answers have no validators; the stream fails (the writer resets the response, so
/// no cache takes it for complete) if the upload does. A whole one is cacheable as the complete
/// segment is (`cache_control.live_segments`): it ends with exactly the committed bytes, and a
/// CDN can then share one origin request among the viewers at the live edge (request
/// collapsing needs a cacheable answer). A range of it (`bytes a-b/*`) is `no-store`: a cache
/// cannot combine a partial answer of unknown complete length.
pub(super) async fn growing(
    cx: &Cx<'_>,
    rel: &RelPath,
    canonical: &str,
    mut object: Object,
    content_type: &HeaderValue,
) -> Result<Grown, Stop> {
    let max_object = cx.policy.config.ingest.max_body_bytes.max(1);
    let range = GrowingRange::parse(cx.req.headers.get(RANGE), max_object);
    let hinted_by = cx.rt.live.hinted(canonical);
    let whole_part = range == GrowingRange::Whole && hinted_by.is_some();
    // A part's whole upload is waited for within the blocking limits, counted from the request
    // as the wait for its start is ([`hinted`]): a packager that stalls or trickles mid-part
    // gets the viewer a 503 after `block_timeout_factor` target durations, not after the
    // upload's `body_timeout`, nor never.
    let target = (hinted_by.as_deref())
        .and_then(|p| cx.rt.live.current(p))
        .map_or(6.0, |s| s.target);
    let deadline = cx.started + block_timeout(&cx.policy.config, target);
    // An upload that ended is looked up again; one replaced at once by another upload of the
    // same name is waited for again, a few times, then streamed.
    for _ in 0..3 {
        // A HEAD of a hinted part waits as its GET does, to be answered with the same fields
        // (RFC 9110 §9.3.2): the complete object's length and validators.
        if cx.is_head && !whole_part {
            break;
        }
        let want = match range {
            GrowingRange::Whole if whole_part => None,
            GrowingRange::Whole => break,
            GrowingRange::Closed(_, b) => Some(b + 1),
            GrowingRange::Open(a, _) => Some(a.saturating_add(1)),
        };
        let reached = if whole_part {
            tokio::time::timeout_at(deadline, object.grown_to(want))
                .await
                .map_err(|_| Refusal::BlockTimeout)?
        } else {
            object.grown_to(want).await
        };
        if let Some(Progress::Writing(_)) = reached {
            break;
        }
        // Ended: from here it is an object like any other (or gone).
        object = match cx
            .rt
            .store
            .lookup(rel, ObjectClass::Segment, true, None)
            .await
        {
            Ok(o) if o.growing => o,
            Ok(o) => return Ok(Grown::Complete(o)),
            // A failed upload attempt of a part the playlist still announces: the packager's
            // next attempt is waited for (RFC 8216bis §6.2.6 allows a 404 only for a name no
            // active playlist hints), within the blocking limits.
            Err(m) if whole_part && m.is_not_found() && cx.rt.live.hinted(canonical).is_some() => {
                match hinted(cx, rel, canonical).await? {
                    o if o.growing => o,
                    o => return Ok(Grown::Complete(o)),
                }
            }
            Err(m) => return Err(Refusal::from(m).into()),
        };
    }
    cx.rt.live.growing_read();
    let mut h = HeaderMap::with_capacity(8);
    headers::cors(cx.policy, cx.req, &mut h);
    let cc = match range {
        GrowingRange::Whole => {
            let cfg = &cx.policy.config;
            headers::cache_control(cfg, ObjectClass::Segment, cfg.live.covers(canonical))
        }
        GrowingRange::Closed(..) | GrowingRange::Open(..) => headers::NO_STORE,
    };
    h.insert(CACHE_CONTROL, cc);
    h.insert(CONTENT_TYPE, content_type.clone());
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if cx.is_head {
        return Ok(Grown::Streamed(reply(StatusCode::OK, h, Body::Empty)));
    }
    let content_range = |h: &mut HeaderMap, a: u64, b: u64| {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/*")) {
            h.insert(CONTENT_RANGE, v);
        }
    };
    Ok(Grown::Streamed(match range {
        GrowingRange::Closed(a, b) => {
            content_range(&mut h, a, b);
            h.insert(CONTENT_LENGTH, HeaderValue::from(b - a + 1));
            reply(
                StatusCode::PARTIAL_CONTENT,
                h,
                object.into_body(a, b - a + 1, false),
            )
        }
        // No Content-Length: the body ends where the upload does (chunked on HTTP/1.1).
        GrowingRange::Open(a, b) => {
            content_range(&mut h, a, b);
            reply(
                StatusCode::PARTIAL_CONTENT,
                h,
                object.into_body(a, 0, false),
            )
        }
        GrowingRange::Whole => reply(StatusCode::OK, h, object.into_body(0, 0, false)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_freshness_is_capped_in_every_directive_a_cache_reads() {
        let cap = |v: &'static str, n| {
            cap_freshness(&HeaderValue::from_static(v), n)
                .to_str()
                .map(str::to_owned)
                .unwrap_or_default()
        };
        assert_eq!(cap("public, max-age=1", 2), "public, max-age=1");
        assert_eq!(cap("public, max-age=30", 2), "public, max-age=2");
        assert_eq!(
            cap("public, max-age=1, s-maxage=60", 2),
            "public, max-age=1, s-maxage=2"
        );
        assert_eq!(
            cap(
                "public, max-age=30, must-revalidate, stale-while-revalidate=0",
                3
            ),
            "public, max-age=3, must-revalidate, stale-while-revalidate=0"
        );
        assert_eq!(cap("public", 2), "public, max-age=2");
        assert_eq!(cap("public, S-MaxAge=9", 4), "public, s-maxage=4");
    }
}
