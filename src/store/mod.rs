//! The store: step 6 of every request. Given a sanitised path and its object class, [`Store::lookup`]
//! returns the object (validators, length, and a body source) or a typed [`Miss`]. The handler
//! never knows which tier answered.
//!
//! ## Tiers, in lookup order
//! 1. **local volumes** (`local.rs`): the open-file cache, then the volumes by the placement rule,
//!    with health. Bodies are [`body::FileRange`]s (sendfile on plaintext HTTP/1.1).
//! 2. **uploads in progress** (`growing.rs`), for live media segments with no complete version:
//!    read-while-write, a [`body::Stream`] that grows with the upload.
//! 3. **the pull cache** (`pull.rs`): a cache directory read like a volume (hits are
//!    `FileRange`s too), with the upstream's validators from a sidecar.
//! 4. **the upstreams** for the path (`pull.rs`: HTTP origins, S3 buckets): a miss starts (or
//!    joins) a single-flight fill that writes to the pull cache and streams to every waiter.
//!
//! Each tier answers `Found`, or a miss that lets the next tier try (not found, volume
//! unavailable), or one that ends the lookup (overloaded). Adding a tier is adding a module and
//! one step in [`Store::lookup`]; the handler's steps do not change.
//!
//! The store is long-lived: it outlives reloads, and [`Store::reconfigure`] rebuilds only the
//! parts whose settings changed. Its gauges and counters are exported by its own collector
//! (`collector.rs`), so `/metrics` always shows the current tiers.

pub mod body;
mod collector;
mod growing;
mod local;
mod outage;
mod pull;
mod test_stream;
mod upload;
pub mod write;
pub mod write_through;
mod writers;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;

use crate::cache::bodies::Stats;
use crate::cache::files::OpenFile;
use crate::config::Config;
use crate::io::BackendKind;
use crate::metrics::Metrics;
use crate::volumes::{self, LookupError, ObjectMeta, RelPath, Volumes};
pub use body::{Body, ByteStream, FileRange, Stream};
pub use growing::Progress;
use local::{Disk, Local};
pub use pull::{private_cache_control, Passed};
pub use upload::{Committed, Mode, PathLock, Upload, WriteError};

/// What kind of object a path names (from its extension): decides caching headers, whether a
/// cached descriptor may be trusted without a re-check, and which bodies may be sent mapped.
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

/// Why the store has no object to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No tier holds it, and every tier that might answered.
    NotFound,
    /// Not found on a healthy volume, and a volume that may hold it is down.
    VolumeUnavailable,
    /// Out of file descriptors or I/O capacity (not a disk problem).
    Overloaded,
    /// The object changed while it was being read; the client may retry.
    Changed,
    /// Not found, as an upstream said a moment ago (remembered for `pull.negative_ttl`);
    /// `gone`: it said 410; `remembered`: how much longer segd remembers it.
    Negative { gone: bool, remembered: Duration },
    /// An upstream answered this request's fill with 404 (`gone`: 410); `remembered`: how long
    /// segd remembers it (zero: not at all, as under live prefixes).
    UpstreamNotFound { gone: bool, remembered: Duration },
    /// Every upstream for the path failed (and no stale copy could stand in).
    UpstreamFailed,
    /// The last upstream tried timed out.
    UpstreamTimeout,
    /// No upstream could answer, and one rests for `retry_after` more (it asked to be left
    /// alone: a 503 or 429 with `Retry-After`, a bucket's `SlowDown`).
    UpstreamUnavailable { retry_after: Duration },
}

impl Miss {
    /// Whether the upstreams failed (error or timeout) rather than answered.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Miss::UpstreamFailed | Miss::UpstreamTimeout | Miss::UpstreamUnavailable { .. }
        )
    }

    /// How much longer segd remembers an upstream's 404 or 410 (zero for any other miss): the
    /// longest a CDN in front may keep the answer (`headers::negative_cache_control`).
    pub fn remembered(&self) -> Duration {
        match self {
            Miss::Negative { remembered, .. } | Miss::UpstreamNotFound { remembered, .. } => {
                *remembered
            }
            _ => Duration::ZERO,
        }
    }

    /// Whether no tier has the object (any kind of not-found).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Miss::NotFound | Miss::Negative { .. } | Miss::UpstreamNotFound { .. }
        )
    }
}

impl From<LookupError> for Miss {
    fn from(e: LookupError) -> Miss {
        match e {
            LookupError::NotFound => Miss::NotFound,
            LookupError::VolumeUnavailable { .. } => Miss::VolumeUnavailable,
            LookupError::Overloaded => Miss::Overloaded,
        }
    }
}

/// What a request reads of the object it looks up, decided from the object's validators and
/// length as the handler decides its answer (preconditions, Range): `(offset, count)`, or
/// `None` when it is sent no body (HEAD, 304, 412, 416). Given to [`Store::lookup`], it lets a
/// tier whose bytes must be fetched per request (an object the pull cache does not keep) ask
/// its upstream for them before the object is returned: an upstream that fails is then a miss
/// (the next upstream, else 502/504/503), never a response cut after its head.
pub type Reads<'a> = &'a (dyn Fn(&Object) -> Option<(u64, u64)> + Sync);

/// A found object: its validators, its length when known, and where its bytes come from.
pub struct Object {
    /// The total length; `None` while it is unknown (a stream still being written).
    pub len: Option<u64>,
    /// Stat data of the object.
    pub meta: ObjectMeta,
    /// Strong validator (see `volumes::object` for the rule).
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    /// No date is known for this version: a pulled copy whose upstream sent no
    /// `Last-Modified` (only an `ETag`, or no validator). None is sent, and a date condition
    /// finds no date to compare (a date made up here, the fetch time, shared its second with
    /// the next version's real date: a date-only revalidation got 304 for changed bytes).
    pub undated: bool,
    /// Still being written (read-while-write): no validators yet, never cacheable.
    pub growing: bool,
    /// An upstream's `Content-Type` and `Cache-Control` (pulled objects), sent as they are.
    pub content_type: Option<HeaderValue>,
    pub cache_control: Option<HeaderValue>,
    /// Headers to add (a stale copy's `Warning` and `Age`).
    pub extra: Option<http::HeaderMap>,
    /// The access log's cache field when a tier decides it (`hit`, `miss`, `stale`,
    /// `coalesced`, `negative`).
    pub cache_status: Option<&'static str>,
    source: Source,
}

enum Source {
    File {
        open: Arc<OpenFile>,
        disk: Disk,
        key: RelPath,
    },
    /// Behind a lock only so `&Object` can be shared across awaits (the stream is `Send`, not
    /// `Sync`); it is taken once, by `into_body`.
    Stream(std::sync::Mutex<ByteStream>),
    /// An upload or a pull fill in progress: streamed as it grows. A fill's readers carry how
    /// to fetch the rest from its upstream ([`pull::Through`]) should the fill fail under them
    /// (its cache disk full and its body too large for memory): they finish from there.
    Growing(Arc<growing::Growing>, Option<pull::Through>),
    /// An object the pull cache does not keep (over `[pull] max_bytes`, or refused admission):
    /// fetched from its upstream for each body, with the body's range; the lookup has already
    /// asked for the bytes its request reads ([`Reads`]).
    Upstream(pull::Through),
}

impl Object {
    /// Whether the bytes carry a content coding (an upstream's gzipped object): they are
    /// served as they are, never rewritten.
    pub fn encoded(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|h| h.contains_key(http::header::CONTENT_ENCODING))
    }

    /// An upload in progress, streamed as it grows: no validators, no length yet.
    fn growing(g: Arc<growing::Growing>) -> Object {
        Object {
            len: None,
            meta: ObjectMeta {
                len: 0,
                dev: 0,
                ino: 0,
                mtime_ns: 0,
                ctime_ns: 0,
            },
            etag: HeaderValue::from_static("\"growing\""),
            last_modified: HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
            undated: false,
            growing: true,
            content_type: None,
            cache_control: None,
            extra: None,
            cache_status: None,
            source: Source::Growing(g, None),
        }
    }

    fn from_file(open: Arc<OpenFile>, disk: Disk, key: &RelPath) -> Object {
        Object {
            len: Some(open.meta.len),
            meta: open.meta,
            etag: open.etag.clone(),
            last_modified: open.last_modified.clone(),
            undated: false,
            growing: false,
            content_type: None,
            cache_control: None,
            extra: None,
            cache_status: None,
            source: Source::File {
                open,
                disk,
                key: key.clone(),
            },
        }
    }

    /// The `Age` it goes out with (a pulled copy's, RFC 9111 §5.1), 0 without one.
    pub fn age(&self) -> u64 {
        self.extra
            .as_ref()
            .and_then(|h| h.get(http::header::AGE))
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    }

    /// Modification time (whole seconds) for `If-Modified-Since` and `If-Unmodified-Since`:
    /// the date of its `Last-Modified`, sent or not ([`Object::last_modified`]).
    pub fn modified(&self) -> SystemTime {
        self.last_modified
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or_else(|| self.meta.modified())
    }

    /// The `Last-Modified` it is sent with (`None`: none).
    /// - An undated object (see [`Object::undated`]) has none.
    /// - A time in a second later than the clock's (a file touched into the future, copied
    ///   from a machine whose clock ran ahead) is not sent (RFC 9110 §8.8.2.1: never later
    ///   than `Date`); it is a validator again once the clock has reached it.
    /// - `replaceable` (a playlist that is not live, or an object under the ingest prefixes,
    ///   which uploads replace): not sent either while the clock is still in the second it
    ///   names. Another version written later in that second would have the
    ///   same date, and a cache that revalidates with `If-Modified-Since` alone would be told
    ///   304 for the old bytes (RFC 9110 §8.8.2.2: such a date is only a weak validator).
    ///   Sent once its second is over, a date tells the versions apart; until then the `ETag`
    ///   does. (Live playlists, replaced every part, keep their date: the live state knows
    ///   when two versions share one and does not compare it.)
    pub fn last_modified(&self, replaceable: bool) -> Option<HeaderValue> {
        if self.undated {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let this_second = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let modified = self.modified();
        let sent = if replaceable {
            modified < this_second
        } else {
            modified <= this_second
        };
        sent.then(|| self.last_modified.clone())
    }

    /// The body for `len` bytes from `offset` (a stream is always sent whole). `small`: the
    /// object is a playlist, which a writer may copy instead of sendfile.
    pub fn into_body(self, offset: u64, len: u64, small: bool) -> Body {
        match self.source {
            Source::File { open, disk, .. } => Body::File(FileRange {
                file: Arc::clone(&open.file),
                offset,
                len,
                meta: open.meta,
                small,
                disk,
            }),
            Source::Stream(inner) => Body::Stream(Stream {
                len: self.len,
                inner: inner.into_inner().unwrap_or_else(|p| p.into_inner()),
            }),
            Source::Growing(g, rest) => {
                // `len` 0 with an unknown total means "to the end".
                let limit = (len > 0).then_some(len);
                let inner = match (rest, limit) {
                    (Some(rest), Some(len)) => rest.resume(g.stream(offset, limit), offset, len),
                    _ => g.stream(offset, limit),
                };
                Body::Stream(Stream { len: limit, inner })
            }
            Source::Upstream(t) => Body::Stream(Stream {
                len: Some(len),
                inner: t.stream(offset, len),
            }),
        }
    }

    /// The first `limit` bytes of the object, in memory (playlists that are rewritten).
    pub async fn read_prefix(&self, limit: usize) -> Result<Bytes, Miss> {
        match &self.source {
            Source::File { open, disk, key } => {
                match disk.read(Arc::clone(&open.file), 0, limit).await {
                    Ok(b) => Ok(b),
                    Err(e) if volumes::is_device_fault(&e) => Err(Miss::VolumeUnavailable),
                    Err(_) => {
                        // Shrank under us: drop the cached descriptor; the client may retry.
                        disk.forget(key);
                        Err(Miss::Changed)
                    }
                }
            }
            // A pull fill in progress (a playlist being rewritten for tokens): its first
            // `limit` bytes, or its whole body if shorter, once the fill has them (a chunked
            // fill's length is known only at its end). A fill that fails is its upstream's
            // failure.
            Source::Growing(g, _) => {
                use futures_util::StreamExt;
                let mut s = g.stream(0, None);
                let mut out = bytes::BytesMut::new();
                while out.len() < limit {
                    let Some(chunk) = s.next().await else { break };
                    out.extend_from_slice(&chunk.map_err(|_| Miss::UpstreamFailed)?);
                }
                out.truncate(limit);
                Ok(out.freeze())
            }
            // A playlist over max_bytes (a small cache): its first bytes, from the upstream's
            // answer the lookup holds, else fetched.
            Source::Upstream(t) => {
                use futures_util::StreamExt;
                let n = (limit as u64).min(self.meta.len);
                let mut s = t.stream(0, n);
                let mut out = bytes::BytesMut::new();
                while (out.len() as u64) < n {
                    let Some(chunk) = s.next().await else { break };
                    out.extend_from_slice(&chunk.map_err(|_| Miss::UpstreamFailed)?);
                }
                out.truncate(n as usize);
                Ok(out.freeze())
            }
            Source::Stream(_) => Err(Miss::Changed),
        }
    }

    /// For an upload still in progress: waits until it has `pos` bytes (`None`: until it ends)
    /// or it ends, and says how far it is. `None` for any other object.
    pub async fn grown_to(&self, pos: Option<u64>) -> Option<Progress> {
        match &self.source {
            Source::Growing(g, _) => Some(g.reach(pos).await),
            _ => None,
        }
    }
}

/// The upstream that this cluster's uploads are written through to (`[ingest] write_through`,
/// either durability): the pull tier does not remember its 404s (see
/// [`pull::Pull::set_written_upstream`]).
fn written_upstream(cfg: &Config) -> Option<String> {
    cfg.ingest
        .write_through
        .as_ref()
        .map(|w| w.upstream.clone())
}

/// The tiers behind one lookup call (see the module doc).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    local: ArcSwap<Local>,
    metrics: Arc<Metrics>,
    /// Hot-body cache counters, kept across cache rebuilds.
    cache_stats: Arc<Stats>,
    /// Writes to one path wait for each other.
    locks: upload::PathLocks,
    /// Uploads readers may stream while they are written.
    growing: Arc<growing::GrowingSet>,
    /// The edge tier, when `[pull]` has a cache path (built once; a reload keeps it).
    pull: Option<Arc<pull::Pull>>,
    /// Ingested objects also written to a bucket (built once; a reload keeps it).
    write_through: Option<Arc<write_through::WriteThrough>>,
    /// The threads that write uploads nothing fsyncs (built once: sized by the worker count).
    writers: Arc<writers::Writers>,
}

impl Store {
    /// Builds every tier for `cfg` and registers the store's collector with `metrics`.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Store> {
        let cache_stats = Arc::new(Stats::default());
        if let Some(dir) = &cfg.pull.cache_path {
            // A fresh node's cache directory does not exist yet; without it every pull fails.
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::error!(path = %dir.display(), error = %e, "cannot create pull.cache_path");
            }
        }
        let local = Arc::new(Local::build(cfg, None, &metrics, &cache_stats));
        let pull = pull::Pull::new(cfg, &metrics)?.map(Arc::new);
        if let Some(pull) = &pull {
            pull.attach(&local);
            // As write-through itself, fixed until a restart.
            pull.set_written_upstream(written_upstream(cfg));
        }
        let write_through = write_through::WriteThrough::new(cfg, &metrics)?.map(Arc::new);
        let store = Store {
            inner: Arc::new(Inner {
                local: ArcSwap::new(local),
                metrics: Arc::clone(&metrics),
                cache_stats,
                locks: upload::PathLocks::default(),
                growing: Arc::default(),
                pull,
                write_through,
                writers: Arc::new(writers::Writers::new(
                    cfg.server.workers,
                    cfg.server.blocking_threads,
                    &metrics.ingest_disk_jobs,
                )),
            }),
        };
        metrics.register(Box::new(collector::StoreCollector::new(store.clone())?))?;
        Ok(store)
    }

    /// Applies a reloaded config: each tier keeps what the new settings do not change.
    pub fn reconfigure(&self, cfg: &Config) -> anyhow::Result<()> {
        // What can fail is built first: a reload that cannot apply `[pull]` changes nothing.
        let pull = match &self.inner.pull {
            Some(_) => Some(pull::Pull::prepare(cfg)?),
            None => None,
        };
        let old = self.inner.local.load_full();
        // The pull cache's directory is the one started with (a new one needs a restart, as
        // the pull tier says): the volume list keeps it too, or the two would disagree.
        let kept;
        let cfg = match &self.inner.pull {
            Some(pull) if cfg.pull.cache_path.as_deref() != Some(pull.root()) => {
                let mut c = cfg.clone();
                c.pull.cache_path = Some(pull.root().to_path_buf());
                kept = c;
                &kept
            }
            _ => cfg,
        };
        let local = Arc::new(Local::build(
            cfg,
            Some(&old),
            &self.inner.metrics,
            &self.inner.cache_stats,
        ));
        self.inner.local.store(Arc::clone(&local));
        if let (Some(tier), Some(prepared)) = (&self.inner.pull, pull) {
            tier.attach(&local);
            tier.reconfigure(prepared);
        }
        // Added by a reload, write-through starts with the next process (the reload says so:
        // `Config::restart_only_changes`).
        if let Some(wt) = &self.inner.write_through {
            wt.reloaded(cfg);
        }
        Ok(())
    }

    /// Step 6: the object at `rel`, from the first tier that has it. `reads`: what the request
    /// will read of it (`None`: it reads no body through this object, or only lazily), see
    /// [`Reads`].
    pub async fn lookup(
        &self,
        rel: &RelPath,
        class: ObjectClass,
        live: bool,
        reads: Option<Reads<'_>>,
    ) -> Result<Object, Miss> {
        let local = self.inner.local.load_full();
        // Segments and keys are immutable by contract (except live ones, rewritten in place by
        // some packagers): their descriptors are trusted for a while without a re-check.
        let immutable = class != ObjectClass::Playlist && !live;
        let (open, disk) = match local.find(rel, immutable).await {
            Ok(found) => found,
            // Tier 1: a live media segment with no complete version may be being uploaded.
            Err(LookupError::NotFound) if live && class == ObjectClass::Segment => {
                let Some(g) = self.inner.growing.get(rel.as_str()) else {
                    // An upload renames its file into place before it leaves the growing set:
                    // one that finished between the two looks is on its volume now. Else an
                    // edge pulls it like any object.
                    return match local.find(rel, immutable).await {
                        Ok((open, disk)) => Ok(Object::from_file(open, disk, rel)),
                        Err(e) => self.pulled(&local, rel, class, live, e, reads).await,
                    };
                };
                return Ok(Object::growing(g));
            }
            // Tier 3 and 4: the pull cache, then the upstreams for the path — also when the
            // volume that may hold it is down.
            Err(e) => return self.pulled(&local, rel, class, live, e, reads).await,
        };
        let object = Object::from_file(open, disk, rel);
        if class == ObjectClass::Segment {
            if let Some(o) = test_stream::wrap(&object) {
                return Ok(o);
            }
        }
        Ok(object)
    }

    /// Tiers 3 and 4 for what the volumes do not have (also when the volume that may hold it
    /// is down): the pull cache, then the upstreams for the path.
    async fn pulled(
        &self,
        local: &Arc<Local>,
        rel: &RelPath,
        class: ObjectClass,
        live: bool,
        e: LookupError,
        reads: Option<Reads<'_>>,
    ) -> Result<Object, Miss> {
        // A deletion this node acknowledged but has not yet applied to the bucket
        // (durability "local"): the bucket's copy is not to be fetched back.
        if self
            .inner
            .write_through
            .as_ref()
            .is_some_and(|w| w.deleting(rel))
        {
            return Err(e.into());
        }
        if let (Some(pull), LookupError::NotFound | LookupError::VolumeUnavailable { .. }) =
            (&self.inner.pull, &e)
        {
            if let pull::Pulled::Found(o) = pull.lookup(local, rel, class, live, reads).await? {
                return Ok(*o);
            }
        }
        Err(e.into())
    }

    /// Starts an upload of `rel` (about `len_hint` bytes, 0 when unknown) into the local tier,
    /// keeping `reserve` bytes free on the volume; `durable`: fsync before the commit returns;
    /// `inline` (not durable): the file is written on the calling worker (`ingest.inline_writes`).
    /// Writes to one path are serialised: the upload holds the path until it is committed or
    /// dropped.
    pub async fn begin_upload(
        &self,
        rel: &RelPath,
        len_hint: u64,
        reserve: u64,
        durable: bool,
        inline: bool,
        mode: Mode,
    ) -> Result<Upload, WriteError> {
        let m = &self.inner.metrics;
        // A key the bucket would refuse: refused before anything is written (with "local", it
        // would otherwise be acknowledged and never reach the bucket).
        if self.through(mode.live).is_some_and(|wt| !wt.key_fits(rel)) {
            return Err(WriteError::Bucket(write_through::BucketError::KeyTooLong));
        }
        let r = upload::begin(
            self.local(),
            &self.inner.locks,
            &self.inner.growing,
            rel,
            len_hint,
            reserve,
            durable,
            inline,
            mode,
            self.through(mode.live),
            Arc::clone(&self.inner.writers),
            (m.ingest_temp_removed.clone(), m.ingest_no_space.clone()),
        )
        .await;
        if matches!(r, Err(WriteError::NoSpace)) {
            m.ingest_no_space.inc();
        }
        r
    }

    /// Whether an upload of `rel` is in progress (read-while-write can serve it).
    pub fn is_growing(&self, rel: &RelPath) -> bool {
        self.inner.growing.get(rel.as_str()).is_some()
    }

    /// The upload of `rel` in progress, whatever version of it is complete on its volume (a
    /// lookup gives that one): for a request that knows the complete version is not the one
    /// it wants (an earlier session's part, where a preload hint announces the next).
    pub fn upload_in_progress(&self, rel: &RelPath) -> Option<Object> {
        self.inner.growing.get(rel.as_str()).map(Object::growing)
    }

    /// The lock a client's DELETE of `rel` holds from its preconditions to its removal, so
    /// they are evaluated against the version it removes: an upload of the path in progress
    /// commits (or fails) first.
    pub async fn lock_for_delete(&self, rel: &RelPath) -> PathLock {
        self.inner.locks.lock(rel).await
    }

    /// Deletes `rel` (in the write-through bucket too), then the directories that left empty
    /// below the first `keep` segments. `lock` is the path's, from [`Store::lock_for_delete`].
    pub async fn delete(
        &self,
        rel: &RelPath,
        keep: usize,
        live: bool,
        lock: PathLock,
    ) -> Result<(), WriteError> {
        let r = upload::delete(self.local(), lock, rel, keep, self.through(live)).await;
        // A copy this node pulled earlier must not outlive the deletion here.
        if let Some(pull) = &self.inner.pull {
            if pull.drop_copy(rel) && matches!(r, Err(WriteError::NotFound)) {
                return Ok(());
            }
        }
        r
    }

    /// Whether `rel` names a directory on a healthy volume (a DELETE of it is a 409).
    pub async fn is_directory(&self, rel: &RelPath) -> bool {
        let (local, rel) = (self.local(), rel.clone());
        tokio::task::spawn_blocking(move || upload::is_directory(&local, &rel))
            .await
            .unwrap_or(false)
    }

    /// The write-through bucket for writes of a path, if they go through.
    fn through(&self, live: bool) -> Option<Arc<write_through::WriteThrough>> {
        self.inner
            .write_through
            .as_ref()
            .filter(|w| w.applies(live))
            .cloned()
    }

    /// For an LL-HLS playlist request with directives (`query`, normalised): the upstream's
    /// answer when no local tier holds the playlist and an upstream serves it (`None`: answer
    /// it here, from the live registry). See `docs/edge.md`.
    pub async fn pull_live_playlist(
        &self,
        rel: &RelPath,
        query: String,
        wait: std::time::Duration,
    ) -> Result<Option<Arc<pull::Passed>>, Miss> {
        let Some(pull) = &self.inner.pull else {
            return Ok(None);
        };
        if !pull.covers(&rel.canonical()) {
            return Ok(None);
        }
        match self.local().find(rel, false).await {
            Ok(_) => return Ok(None),
            Err(LookupError::NotFound | LookupError::VolumeUnavailable { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        pull.passthrough(rel, query, wait).await.map(Some)
    }

    /// Stops the write-through queue's worker taking new entries (a drain began); writes to the
    /// bucket in flight finish.
    pub fn stop_write_through(&self) {
        if let Some(wt) = &self.inner.write_through {
            wt.stop();
        }
    }

    /// Starts the write-through queue's worker (durability "local"); call once, in the runtime.
    pub fn start_write_through(&self) {
        if let Some(wt) = &self.inner.write_through {
            tokio::spawn(Arc::clone(wt).run_queue(self.clone()));
        }
    }

    /// Indexes the pull cache left by an earlier run (start-up, off the request path).
    pub fn reindex_pull_cache(&self) -> u64 {
        self.inner.pull.as_ref().map_or(0, |p| p.reindex())
    }

    /// Settles writes journaled while a volume was down, for the volumes healthy now (blocking:
    /// at start-up and after a volume comes back); returns how many old copies it removed, and
    /// whether some could not be (their lines stay, for a later try).
    pub fn settle_outage_writes(&self) -> (u64, bool) {
        outage::settle(&self.local(), &self.inner.locks)
    }

    /// Removes temporary files a crash left under `prefixes` on every volume (start-up, off the
    /// request path); returns how many.
    pub fn remove_stale_temps(&self, prefixes: &[String]) -> u64 {
        let local = self.local();
        let mut n = 0;
        for v in local.volumes.iter() {
            for p in prefixes {
                n += write::remove_stale_temps(&v.path.join(p.trim_matches('/')));
            }
        }
        self.inner.metrics.ingest_temp_removed.inc_by(n);
        n
    }

    /// The volumes of the local tier (health for `/readyz`, the banner, the health checker).
    pub fn volumes(&self) -> Arc<Volumes> {
        Arc::clone(&self.inner.local.load().volumes)
    }

    /// The I/O backend in use.
    pub fn io_kind(&self) -> BackendKind {
        self.inner.local.load().io.kind()
    }

    fn local(&self) -> Arc<Local> {
        self.inner.local.load_full()
    }

    fn cache_stats(&self) -> &Stats {
        &self.inner.cache_stats
    }
}
