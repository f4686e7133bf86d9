//! The write request path: PUT and POST (create or replace) and DELETE under `[ingest]
//! prefixes`, after the handler's steps 1–5 (target, method, path, type, upload token).
//! See `docs/ingest.md` for the contract.
//!
//! PUT/POST, in order:
//! 0. a `Content-Range` (a partial body) → 400; a `Content-Encoding` (an encoded body) → 415
//! 1. an upload slot (`max_uploads`) → 503 with `Retry-After`
//! 2. a declared length over `max_body_bytes` → 413, before anything is read or created
//! 3. the upload starts: the path is locked against other writes, the volume picked (where the
//!    object is, else its asset's volume, else placement; never unhealthy, never below
//!    `reserve`) → 507 / 503; a directory at the name, or a file where a directory should be,
//!    → 409; a temporary file is created. For a client that waits on `Expect: 100-continue`,
//!    or a body longer than one write buffer, this happens here; for the rest (ffmpeg sends
//!    neither) with the first write to disk — for most bodies the commit, so the file is
//!    placed, written and renamed in one trip to the blocking pool. The same refusals then come
//!    after the body, still with nothing written
//! 4. preconditions against the object as it is now (`If-Match`, `If-None-Match: *`) → 412
//! 5. the body is read — only now, so `Expect: 100-continue` is answered only for a write that
//!    will be accepted — within `body_timeout` per chunk and `max_body_bytes` in all (408, 413,
//!    400 for a broken body); any failure drops the temporary file
//! 6. commit: rename into place (fsync'd first if `ingest.fsync`) → 201 or 204 with the ETag
//!
//! Steps 5 and 6 run in a task of their own: a complete body is committed even when the client
//! closes its connection without waiting for the answer (ffmpeg does, on every request of a
//! non-persistent connection), and an incomplete one is dropped however the client went away.
//!
//! DELETE: depth (`min_delete_depth` → 403), body (ffmpeg sends an empty chunked one) read and
//! discarded (an HTTP/2 stream reset before its end ends the request there), preconditions, then
//! the store deletes the file and prunes emptied directories below the prefix → 204, 404, 409.
//! A name without a served type, or with a trailing slash, is never removed: 409 when it is a
//! directory, else 404.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, ETAG, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::conditional;
use super::handler::{reply, Cx, Proto, Reply, Stop, MAX_DISCARDED_BODY};
use super::headers;
use super::refusal::Refusal;
use super::request_body::{expects_continue, Piece, RequestBody};
use crate::live::Snapshot;
use crate::metrics::Metrics;
use crate::store::{Body, Mode, ObjectClass};
use crate::volumes::RelPath;

/// The longest name one path segment can have on disk (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;

/// `class` is `None` for a name no object of a served type can have (no served extension, or
/// a DELETE of `dir/`): only a DELETE gets here with it, to be told whether the name is a
/// directory (409) or nothing (404).
pub(super) async fn handle(
    cx: &Cx<'_>,
    rel: &RelPath,
    class: Option<ObjectClass>,
    live: bool,
    body: RequestBody<'_>,
) -> Result<Reply, Stop> {
    if *cx.req.method == Method::DELETE {
        return delete(cx, rel, class, live, body).await;
    }
    let Some(class) = class else {
        return Err(Refusal::UnsupportedMediaType.into());
    };
    // A name no filesystem here can hold: refused before anything is read or created.
    if crate::text::split(rel.as_str(), b'/').any(|s| s.len() > NAME_MAX) {
        return Err(Refusal::UriTooLong.into());
    }
    put(cx, rel, class, live, body).await
}

/// An upload in progress, for `segd_ingest_uploads_in_progress` and the duration histogram:
/// counted out however the upload ends.
struct InProgress {
    metrics: Arc<Metrics>,
    start: Instant,
}

impl InProgress {
    /// Counted once the upload exists (its temporary file, and for live segments its announcement
    /// to readers); timed from `start`, the request's.
    fn new(metrics: &Arc<Metrics>, start: Instant) -> InProgress {
        metrics.ingest_in_progress.inc();
        InProgress {
            metrics: Arc::clone(metrics),
            start,
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.metrics.ingest_in_progress.dec();
        self.metrics
            .ingest_seconds
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// What a write's preconditions are evaluated against.
enum Current {
    /// No object.
    Absent,
    /// An upload in progress (possibly this one): not a version of the object yet, and whether
    /// one is committed under it is not known here.
    Uploading,
    /// The object's validators.
    Version(String, std::time::SystemTime),
}

async fn current(
    cx: &Cx<'_>,
    rel: &RelPath,
    class: ObjectClass,
    live: bool,
) -> Result<Current, Refusal> {
    match cx.rt.store.lookup(rel, class, live, None).await {
        Ok(o) if o.growing => Ok(Current::Uploading),
        Ok(o) => Ok(Current::Version(
            o.etag.to_str().unwrap_or_default().to_owned(),
            o.modified(),
        )),
        Err(m) if m.is_not_found() => Ok(Current::Absent),
        Err(m) => Err(m.into()),
    }
}

async fn put(
    cx: &Cx<'_>,
    rel: &RelPath,
    class: ObjectClass,
    live: bool,
    body: RequestBody<'_>,
) -> Result<Reply, Stop> {
    let ingest = &cx.policy.config.ingest;
    let start = Instant::now();
    // 0. A part of a body is not an object (RFC 9110 §14.5), nor is an encoded one: the bytes
    // stored are the bytes served, as the media type, never with a `Content-Encoding`.
    if cx.req.headers.contains_key(http::header::CONTENT_RANGE) {
        return Err(Refusal::PartialWrite.into());
    }
    if content_coded(cx.req.headers) {
        return Err(Refusal::UnsupportedContentCoding.into());
    }
    if form_upload(cx.req.headers) {
        return Err(Refusal::FormUpload.into());
    }
    // 1. A slot.
    let slot = Arc::clone(&cx.policy.upload_slots)
        .try_acquire_owned()
        .map_err(|_| Refusal::UploadsBusy)?;
    // 2. A declared length that can never fit: `max_body_bytes`, and for a live playlist
    // (kept in memory and followed) `[live] max_playlist_bytes`.
    let canonical = rel.canonical();
    let ext = |x: &str| rel.extension().is_some_and(|e| e.eq_ignore_ascii_case(x));
    let hls_playlist = live && ext("m3u8");
    let manifest = live && ext("mpd");
    let (limit, too_large) = match cx.policy.config.live.max_playlist_bytes {
        max if (hls_playlist || manifest) && max < ingest.max_body_bytes => {
            (max, Refusal::PlaylistTooLarge)
        }
        _ => (ingest.max_body_bytes, Refusal::TooLarge),
    };
    if body.declared.is_some_and(|d| d > limit) {
        return Err(too_large.into());
    }
    // 3. The upload (path locked, volume picked, temporary file created). A live playlist is
    // kept in memory for the live registry; a live media segment can be read while it grows.
    let mode = Mode {
        keep: hls_playlist || manifest,
        growing: live && class == ObjectClass::Segment,
        live,
        // The 100 (Continue) goes out only for a write that will be accepted.
        decide_first: expects_continue(cx.req.headers),
    };
    let upload = cx
        .rt
        .store
        .begin_upload(
            rel,
            body.declared.unwrap_or(0),
            ingest.reserve,
            ingest.fsync,
            ingest.inline_writes,
            mode,
        )
        .await?;
    let in_progress = InProgress::new(&cx.rt.metrics, start);
    if mode.growing {
        // Requests parked on this name (a preload hint) can start streaming it now.
        cx.rt.live.object_started(&canonical);
    }
    // 4. Preconditions, under the path's lock.
    preconditions(cx, rel, class, live).await?;
    // 5. The body, and 6. the commit. A body that owns its source is read in a task of its
    // own, so a complete body is committed even when the client closes without reading the
    // answer (ffmpeg does) and the protocol library drops the request; the HTTP/1.1 fast
    // path's body borrows its connection, whose task runs every request to its end. On HTTP/2
    // the commit waits for this future to confirm the stream was not reset (`ResetGate`).
    let held = (slot, in_progress);
    let receive = Receive {
        limit,
        too_large,
        timeout: ingest.body_timeout,
        metrics: Arc::clone(&cx.rt.metrics),
        registry: Arc::clone(&cx.rt.live),
        key: canonical,
        manifest,
    };
    let done = match body.detach() {
        Ok(body) => {
            let (gate, confirm) = if cx.req.proto == Proto::H2 {
                let (g, c) = ResetGate::new();
                (Some(g), Some(c))
            } else {
                (None, None)
            };
            let task = tokio::spawn(async move {
                let _held = held;
                receive.run(body, upload, gate).await
            });
            if let Some(c) = confirm {
                c.confirm().await;
            }
            task.await.map_err(|_| Refusal::Internal)??
        }
        Err(body) => {
            let _held = held;
            receive.run(body, upload, None).await?
        }
    };
    let mut h = answer_headers(cx);
    h.insert(ETAG, done.etag);
    let status = if done.created {
        // A URI reference (RFC 9110 §10.2.2): the path percent-encoded, as a client would
        // request it (a decoded `?`, `#`, `%` or space would name another resource).
        if let Ok(v) = HeaderValue::from_str(&rel.encoded()) {
            h.insert(LOCATION, v);
        }
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    };
    if status == StatusCode::CREATED {
        h.insert(CONTENT_LENGTH, HeaderValue::from(0));
    }
    Ok(reply(status, h, Body::Empty))
}

/// How long after a live playlist's version is stored an older version is refused as one
/// that lost a race with it ([`Snapshot::behind`]); shorter for a target duration shorter
/// than this. Versions a packager sends back to back arrive milliseconds apart; a packager
/// that restarts its stream takes at least a segment before its first playlist.
const RACE_WINDOW: Duration = Duration::from_secs(2);

/// What a live upload kept in memory is: an HLS playlist (parsed), or a DASH manifest
/// (whether it is `type="static"`; `None`: no `<MPD` in it).
enum Kept {
    Hls(Box<Snapshot>),
    /// Whether it is static (`None`: unreadable), its `minimumUpdatePeriod` in seconds and its
    /// `availabilityStartTime`.
    Mpd(Option<bool>, Option<f64>, Option<String>),
}

/// Reads an upload's body into it and commits it.
struct Receive {
    limit: u64,
    /// The refusal for a body over `limit`.
    too_large: Refusal,
    timeout: Duration,
    metrics: Arc<Metrics>,
    registry: Arc<crate::live::Registry>,
    key: String,
    /// The upload is a live DASH manifest (what it keeps in memory is one, see [`Kept`]).
    manifest: bool,
}

impl Receive {
    async fn run(
        self,
        mut body: RequestBody<'_>,
        mut upload: crate::store::Upload,
        gate: Option<ResetGate>,
    ) -> Result<crate::store::Committed, Refusal> {
        // What a body read from its own socket still has there goes through the upload's pipe,
        // if it has one.
        let mut spliced = 0;
        // Another upload (or a DELETE) of the path has waited for this one for
        // `YIELD_AFTER`: this one gives up, slow or silent (one byte a second held a live
        // playlist's newer versions for as long as it trickled: acceptance H-F4).
        let contention = upload.contention();
        let waited_since = std::sync::Mutex::new(None::<Instant>);
        let contended = move || {
            let mut since = waited_since.lock().unwrap_or_else(|p| p.into_inner());
            if !contention.waiting() {
                *since = None;
                return false;
            }
            since.get_or_insert_with(Instant::now).elapsed() >= super::request_body::YIELD_AFTER
        };
        loop {
            let pipe = if body.can_splice() {
                upload.pipe()?
            } else {
                None
            };
            let piece = body.next_piece(self.limit, self.timeout, pipe, &contended);
            match piece.await.map_err(|e| match e {
                Refusal::TooLarge => self.too_large,
                e => e,
            })? {
                None => break,
                Some(Piece::Bytes(chunk)) => upload.write(chunk).await?,
                Some(Piece::Piped(p)) => {
                    spliced += p.len as u64;
                    upload.piped(p.len, p.full).await?;
                }
            }
        }
        if let Some(g) = gate {
            g.pass().await?;
        }
        // A live playlist, parsed once per write, or a live DASH manifest. A version older
        // than the one stored moments ago (it raced it on another connection, and lost) is
        // refused: the stream keeps its newest version ([`Snapshot::behind`],
        // [`crate::live::Registry::mpd_behind`]).
        let version = upload.kept().map(|text| {
            if self.manifest {
                Kept::Mpd(
                    crate::live::mpd_is_static(text),
                    crate::live::mpd_update_period(text),
                    crate::live::mpd_availability_start(text),
                )
            } else {
                let unknown = HeaderValue::from_static("");
                Kept::Hls(Box::new(Snapshot::parse(
                    Bytes::copy_from_slice(text),
                    unknown.clone(),
                    unknown,
                )))
            }
        });
        let behind = match &version {
            Some(Kept::Hls(new)) => self.registry.current(&self.key).is_some_and(|stored| {
                let target = Duration::try_from_secs_f64(stored.target).unwrap_or(RACE_WINDOW);
                new.behind(&stored, RACE_WINDOW.min(target))
            }),
            Some(Kept::Mpd(Some(is_static), _, start)) => {
                self.registry
                    .mpd_behind(&self.key, *is_static, start.as_deref(), RACE_WINDOW)
            }
            Some(Kept::Mpd(None, _, _)) | None => false,
        };
        if behind {
            return Err(Refusal::StalePlaylist);
        }
        let mut done = upload.commit().await?;
        self.metrics.ingest_bytes.inc_by(body.received());
        self.metrics.ingest_spliced_bytes.inc_by(spliced);
        // Every request parked on this playlist re-checks now. Recorded before the path's lock
        // goes, so the next upload of the path is compared with this version.
        match version {
            Some(Kept::Hls(mut snap)) => {
                snap.etag = done.etag.clone();
                snap.last_modified = done.last_modified.clone();
                self.registry.publish(&self.key, *snap);
            }
            Some(Kept::Mpd(is_static, period, start)) => self.registry.mpd_stored(
                &self.key,
                is_static == Some(true),
                period,
                start,
                RACE_WINDOW,
            ),
            None => {}
        }
        done.body = None;
        done.unlock();
        Ok(done)
    }
}

/// HTTP/2: a body is committed only if its stream was not reset by the body's end. hyper
/// reports a stream the client reset with `NO_ERROR` as a body that ended (that reset is how a
/// server cuts a request short, RFC 9113 §8.1, and hyper reads it the same way in both
/// directions), so a client that resets mid-body would get its partial body stored. hyper does
/// notice the reset where the request's own future waits: it drops that future. So the body's
/// task, at the body's end, asks that future to confirm; it confirms only after waiting once,
/// and a reset stream never confirms: the upload is dropped and nothing is written. A connection
/// that closes right after the body may lose the upload the same way; it was never
/// acknowledged. A reset that arrives after the confirmation, during the commit (fsync, rename),
/// is not seen: that upload is stored without an answer. No check can close that window (a
/// commit under way cannot be taken back), so docs/ingest.md promises only that a reset before
/// the body's end leaves nothing.
struct ResetGate {
    ended: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
}

/// The request future's side of a [`ResetGate`].
struct Confirm {
    ended: tokio::sync::oneshot::Receiver<()>,
    go: tokio::sync::oneshot::Sender<()>,
}

impl ResetGate {
    fn new() -> (ResetGate, Confirm) {
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel();
        (
            ResetGate {
                ended: ended_tx,
                go: go_rx,
            },
            Confirm {
                ended: ended_rx,
                go: go_tx,
            },
        )
    }

    /// Waits for the request's future to confirm the stream is still open.
    async fn pass(self) -> Result<(), Refusal> {
        let _ = self.ended.send(());
        self.go.await.map_err(|_| {
            tracing::debug!("HTTP/2 stream reset or gone at the end of its body: nothing written");
            Refusal::BodyIncomplete
        })
    }
}

impl Confirm {
    /// In the request's future: once the body has ended, let hyper look for a reset, then let
    /// the commit go. A body task that failed before its end drops its side: nothing to confirm.
    async fn confirm(self) {
        if self.ended.await.is_ok() {
            stream_stands().await;
            let _ = self.go.send(());
        }
    }
}

/// HTTP/2, in the request's own future: returns only if its stream was not reset by now. hyper
/// checks the stream for a reset whenever this future waits, and drops the future if there is
/// one; so this waits once.
async fn stream_stands() {
    tokio::task::yield_now().await;
}

/// With no `class` nothing is removed: the answer says whether the name is a directory (409)
/// or nothing (404).
async fn delete(
    cx: &Cx<'_>,
    rel: &RelPath,
    class: Option<ObjectClass>,
    live: bool,
    mut body: RequestBody<'_>,
) -> Result<Reply, Stop> {
    let ingest = &cx.policy.config.ingest;
    let depth = crate::text::split(rel.as_str(), b'/').count();
    if depth < ingest.min_delete_depth {
        return Err(Refusal::DeleteTooShallow.into());
    }
    if body.is_present() {
        body.discard(MAX_DISCARDED_BODY, ingest.body_timeout)
            .await?;
    }
    // hyper reports an HTTP/2 stream reset with `NO_ERROR` as the body's end, as for uploads
    // (`ResetGate`): a DELETE whose stream was reset removes nothing. Its body is read here, in
    // the request's future, so that future can look for the reset itself.
    if cx.req.proto == Proto::H2 {
        stream_stands().await;
    }
    let Some(class) = class else {
        return Err(if cx.rt.store.is_directory(rel).await {
            Refusal::IsDirectory
        } else {
            Refusal::NotFound
        }
        .into());
    };
    // Preconditions against the version this removes: an upload of the path in progress
    // commits first (RFC 9110 §13.2.2: evaluated when about to perform the method).
    let lock = cx.rt.store.lock_for_delete(rel).await;
    preconditions(cx, rel, class, live).await?;
    // Directories of the ingest prefix itself are never removed.
    let canonical = rel.canonical();
    let keep = ingest
        .prefixes
        .iter()
        .filter(|p| canonical.starts_with(p.as_str()))
        .map(|p| crate::text::components(p).count())
        .max()
        .unwrap_or(1);
    cx.rt.store.delete(rel, keep, live, lock).await?;
    cx.rt.live.forget(&canonical);
    Ok(reply(
        StatusCode::NO_CONTENT,
        answer_headers(cx),
        Body::Empty,
    ))
}

/// `If-Match`, `If-None-Match` and `If-Unmodified-Since` against the object as it is now → 412.
/// They are evaluated only for a request that would otherwise succeed (RFC 9110 §13.2.1): a
/// PUT of an absent object would create it (so `If-Match` fails it), but a DELETE of one is 404
/// whatever they say. Under an upload in progress they see no version (`If-Match` fails).
async fn preconditions(
    cx: &Cx<'_>,
    rel: &RelPath,
    class: ObjectClass,
    live: bool,
) -> Result<(), Refusal> {
    if !has_preconditions(cx.req.headers) {
        return Ok(());
    }
    let now = match current(cx, rel, class, live).await? {
        Current::Absent if *cx.req.method == Method::DELETE => return Err(Refusal::NotFound),
        Current::Absent | Current::Uploading => None,
        Current::Version(etag, modified) => Some((etag, modified)),
    };
    let now = now.as_ref().map(|(e, t)| (e.as_str(), *t));
    if conditional::write_allowed(cx.req.headers, now) {
        Ok(())
    } else {
        Err(Refusal::PreconditionFailed)
    }
}

/// Whether a request's body is in a content coding (RFC 9110 §8.4): any `Content-Encoding`
/// other than `identity` (which names no coding).
fn content_coded(h: &HeaderMap) -> bool {
    h.get_all(http::header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |s| {
            s.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        })
    })
}

/// Whether a request's body is a multipart form (`curl -F`, an HTML form): the file inside
/// MIME parts, not the file.
fn form_upload(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::text::split(v, b';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn has_preconditions(h: &HeaderMap) -> bool {
    h.contains_key(http::header::IF_MATCH)
        || h.contains_key(http::header::IF_NONE_MATCH)
        || h.contains_key(http::header::IF_UNMODIFIED_SINCE)
}

fn answer_headers(cx: &Cx<'_>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    headers::cors(cx.policy, cx.req, &mut h);
    h.insert(CACHE_CONTROL, headers::NO_STORE);
    h
}
