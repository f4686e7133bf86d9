//! Write-through to a bucket (`[ingest] write_through`, see `docs/cluster.md`): every ingested
//! object under a VOD prefix (and live ones with `write_through_live`) is written to an
//! S3-compatible bucket too, and deleted there when it is deleted here.
//!
//! - `durability = "upstream"`: the upload's complete temporary file is PUT before it is renamed
//!   into place; the client's 201/204 waits for the bucket, and a bucket failure leaves both the
//!   local and the remote object as they were.
//! - `durability = "local"`: before the rename, an entry naming the path is written and fsynced
//!   in the queue directory; a worker makes the bucket match the node's current state of each
//!   queued path (PUT the current file, or DELETE when a deletion was queued and the file is
//!   gone), oldest first, retrying with backoff (1 s doubling to 60 s). The queue is a directory
//!   of small files, so it survives a restart and a crash; replaying an entry is harmless.
//!
//! The PUT carries the validators the node serves the object with as user metadata
//! ([`META_ETAG`], [`META_LAST_MODIFIED`]); the pull tier serves objects fetched from a bucket
//! under them, so every node answers with the same `ETag` and `Last-Modified`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderValue, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use rusty_s3::S3Action;

use super::local::Local;
use super::write::Dir;
use crate::config::{Config, Durability, UpstreamKind};
use crate::metrics::Metrics;
use crate::volumes::{ObjectMeta, RelPath};

/// S3 user metadata with the `ETag` segd serves the object with.
pub const META_ETAG: &str = "x-amz-meta-segd-etag";
/// S3 user metadata with the `Last-Modified` segd serves the object with.
pub const META_LAST_MODIFIED: &str = "x-amz-meta-segd-last-modified";

/// Bytes per read when an object is streamed to the bucket.
const CHUNK: usize = 256 * 1024;
/// Paths the queue worker writes at once.
const PARALLEL: usize = 8;
/// Entries the worker takes per round.
const BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The longest a bucket's `Retry-After` holds the queue (a longer one counts as this).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// See [`WriteThrough::settings`].
type Settings = (
    Option<crate::config::WriteThrough>,
    Option<UpstreamKind>,
    Duration,
);

/// Why the bucket did not take a write.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("the bucket did not answer in time")]
    Timeout,
    /// No answer, a broken connection or a 5xx: the bucket may or may not have applied it.
    #[error("the bucket failed: {0}")]
    Failed(String),
    /// A 4xx other than 403, 408 and 429 (and other than the S3 errors `worth_retrying`):
    /// the bucket will refuse this request every time.
    #[error("the bucket refused: {0}")]
    Refused(String),
    /// The path's key is longer than a bucket takes ([`MAX_KEY`]).
    #[error("the path's key is longer than {MAX_KEY} bytes")]
    KeyTooLong,
    /// `404 NoSuchBucket`: nothing was applied, and the request is tried again later (the
    /// bucket may be made, or `bucket` corrected).
    #[error("the bucket does not exist: {0}")]
    NoBucket(String),
}

impl BucketError {
    /// Whether the write may have been applied although no success came back.
    fn ambiguous(&self) -> bool {
        !matches!(
            self,
            BucketError::Refused(_) | BucketError::KeyTooLong | BucketError::NoBucket(_)
        )
    }
}

/// An error and its sources, `: `-joined (`client error (Connect): tcp connect error:
/// Connection refused (os error 111)`), for the log: not the `Debug` dump of nested structs.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Failures a queue round says at `warn`, one line each (see [`WriteThrough::warn_once_more`]).
const WARNED_A_ROUND: u64 = 3;

/// The longest key S3 takes (bytes of its UTF-8).
pub const MAX_KEY: usize = 1024;

/// What the bucket holds under a key, as segd wrote it.
#[derive(Debug)]
struct Stored {
    /// [`META_ETAG`]: the ETag the writing node served it with.
    etag: Option<String>,
    /// [`META_LAST_MODIFIED`], in seconds.
    modified: Option<SystemTime>,
}

/// A queued change: make the bucket hold this path's current file, or delete it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Delete,
}

impl Op {
    fn ext(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "del",
        }
    }
}

struct WtMetrics {
    backlog: prometheus::IntGauge,
    oldest: prometheus::IntGauge,
    /// When the oldest entry the queue's last listing found was queued (Unix ns; 0: none):
    /// `oldest` is its age, brought up to date every second, also while a round of bucket
    /// requests or a backoff runs (set only at each listing, it stood still for minutes during a
    /// bucket outage, when the backlog alerts need it).
    oldest_ns: AtomicU64,
    total: prometheus::IntCounterVec,
}

pub struct WriteThrough {
    bucket: rusty_s3::Bucket,
    /// Replaced by a reload: temporary credentials (a session token) rotate, hourly on AWS.
    creds: std::sync::RwLock<rusty_s3::Credentials>,
    key_prefix: String,
    client: Client<super::pull::Connector, BoxBody<Bytes, io::Error>>,
    /// Added to every bucket request's time limit (plus 1 s per 4 MiB of body).
    timeout: Duration,
    pub durability: Durability,
    live: bool,
    types: Vec<(String, HeaderValue)>,
    /// The durable queue: filled with durability "local", drained with either.
    queue: Option<PathBuf>,
    wake: tokio::sync::Notify,
    /// Set when a drain begins: the worker takes no more entries.
    stopping: std::sync::atomic::AtomicBool,
    /// Paths (as the queue names them: [`queued_name`]) whose deletion is queued but not yet
    /// applied to the bucket, with the time (Unix
    /// ns) of the latest such entry. The bucket still holds them, so the pull tier must not
    /// fetch them back: a copy pulled then would be served after the deletion, for as long as
    /// the pull cache keeps it (pulled segments are never revalidated).
    deleting: std::sync::Mutex<HashMap<String, u128>>,
    seq: AtomicU64,
    /// Failures of the queue's current round said at `warn` (the first [`WARNED_A_ROUND`]; the
    /// rest at `debug`, and the round's count in one line).
    warned: AtomicU64,
    /// Until when the bucket asked to be left alone: the latest `Retry-After` of a 503
    /// (`SlowDown`) or 429 ([`retry_after`]). The queue's next round waits for it.
    hold_off: std::sync::Mutex<Option<tokio::time::Instant>>,
    m: WtMetrics,
    /// The settings it was built with ([`WriteThrough::settings`]), to tell a reload that
    /// changes them.
    settings: Settings,
}

/// How the queue names `rel`: percent-encoded, without the leading `/` (read back through
/// `sanitize`, which decodes once: a decoded `%41` would come back as `A`, another object).
fn queued_name(rel: &RelPath) -> String {
    let mut e = rel.encoded();
    e.remove(0);
    e
}

impl WriteThrough {
    /// The write-through tier for `cfg`, when `ingest.write_through` names a bucket.
    pub fn new(cfg: &Config, metrics: &Metrics) -> anyhow::Result<Option<WriteThrough>> {
        let Some(wt) = &cfg.ingest.write_through else {
            return Ok(None);
        };
        let Some(up) = cfg.pull.upstreams.iter().find(|u| u.name == wt.upstream) else {
            return Ok(None);
        };
        let UpstreamKind::S3 {
            endpoint,
            bucket,
            region,
            key_prefix,
            access_key_id,
            secret_access_key,
            session_token,
        } = &up.kind
        else {
            return Ok(None);
        };
        let bucket = match url::Url::parse(endpoint)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                rusty_s3::Bucket::new(u, rusty_s3::UrlStyle::Path, bucket.clone(), region.clone())
                    .map_err(|e| e.to_string())
            }) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(upstream = %up.name, error = %e, "bad S3 settings: ingest.write_through is off");
                return Ok(None);
            }
        };
        let backlog = prometheus::IntGauge::new(
            "segd_write_through_backlog",
            "Write-through queue entries not yet applied to the bucket",
        )?;
        metrics.register(Box::new(backlog.clone()))?;
        let oldest = prometheus::IntGauge::new(
            "segd_write_through_oldest_seconds",
            "Age of the oldest write-through queue entry (0 when the queue is empty)",
        )?;
        metrics.register(Box::new(oldest.clone()))?;
        let total = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "segd_write_through_total",
                "Writes to the write-through bucket, by operation (put, delete) and result (ok, error)",
            ),
            &["op", "result"],
        )?;
        metrics.register(Box::new(total.clone()))?;
        // With durability "upstream" too: nothing is queued then, but what a run with "local"
        // left queued is still delivered (a node switched to "upstream" dropped it silently).
        let queue = Some(wt.queue_path.clone().unwrap_or_else(|| {
            cfg.volumes
                .first()
                .map(|v| v.path.join(".segd-queue"))
                .unwrap_or_else(|| PathBuf::from(".segd-queue"))
        }));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(PARALLEL * 2)
            .build(super::pull::connector(&cfg.pull)?);
        tracing::info!(
            upstream = %up.name,
            durability = ?wt.durability,
            live = wt.live,
            queue = ?queue,
            "ingested objects are written through to the bucket"
        );
        Ok(Some(WriteThrough {
            bucket,
            creds: std::sync::RwLock::new(super::pull::s3_credentials(
                access_key_id,
                secret_access_key,
                session_token,
            )),
            key_prefix: key_prefix.clone(),
            client,
            timeout: cfg.pull.first_byte_timeout,
            durability: wt.durability,
            live: wt.live,
            types: cfg.types.clone(),
            queue,
            wake: tokio::sync::Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            deleting: std::sync::Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            warned: AtomicU64::new(0),
            hold_off: std::sync::Mutex::new(None),
            settings: WriteThrough::settings(cfg),
            m: WtMetrics {
                backlog,
                oldest,
                oldest_ns: AtomicU64::new(0),
                total,
            },
        }))
    }

    /// Everything a write-through is built from, but its credentials: its keys, its bucket
    /// and the bucket timeout.
    fn settings(cfg: &Config) -> Settings {
        let wt = cfg.ingest.write_through.clone();
        let bucket = WriteThrough::bucket_kind(cfg).map(|mut k| {
            if let UpstreamKind::S3 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } = &mut k
            {
                access_key_id.clear();
                secret_access_key.0.clear();
                *session_token = None;
            }
            k
        });
        (wt, bucket, cfg.pull.first_byte_timeout)
    }

    /// The `[[pull.upstreams]]` entry `ingest.write_through` names.
    fn bucket_kind(cfg: &Config) -> Option<UpstreamKind> {
        let wt = cfg.ingest.write_through.as_ref()?;
        cfg.pull
            .upstreams
            .iter()
            .find(|u| u.name == wt.upstream)
            .map(|u| u.kind.clone())
    }

    /// The credentials requests are signed with now.
    fn creds(&self) -> rusty_s3::Credentials {
        self.creds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a reloaded config's credentials for the bucket (a rotated secret or session
    /// token), and says so in the log when it changes what uploads are written through to:
    /// that takes a restart, and until then uploads keep the bucket they started with.
    pub fn reloaded(&self, cfg: &Config) {
        if WriteThrough::settings(cfg) != self.settings {
            tracing::warn!("ingest.write_through or its bucket's settings changed: uploads keep writing through as started until segd is restarted (reads follow the new [pull] at once)");
            return;
        }
        if let Some(UpstreamKind::S3 {
            access_key_id,
            secret_access_key,
            session_token,
            ..
        }) = WriteThrough::bucket_kind(cfg)
        {
            let next =
                super::pull::s3_credentials(&access_key_id, &secret_access_key, &session_token);
            let mut c = self.creds.write().unwrap_or_else(|p| p.into_inner());
            if (c.key(), c.secret(), c.token()) != (next.key(), next.secret(), next.token()) {
                tracing::info!("write-through: the bucket's credentials are reloaded");
                *c = next;
            }
        }
    }

    /// The queue worker takes no more entries (they stay on disk for the next process).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether writes of a path (live or not) go through.
    pub fn applies(&self, live: bool) -> bool {
        !live || self.live
    }

    fn count(&self, op: Op, ok: bool) {
        let op = match op {
            Op::Put => "put",
            Op::Delete => "delete",
        };
        self.m
            .total
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Whether a deletion of `rel` is queued and not yet applied to the bucket (the pull tier
    /// then treats it as absent rather than fetching it back).
    pub fn deleting(&self, rel: &RelPath) -> bool {
        self.deleting.lock().is_ok_and(|d| {
            // Keyed as the queue names paths (percent-encoded); nothing to encode if empty.
            !d.is_empty() && d.contains_key(&queued_name(rel))
        })
    }

    /// Notes a queued deletion of `rel` enqueued at `ns` (kept: the latest one).
    fn mark_deleting(&self, rel: &str, ns: u128) {
        if let Ok(mut d) = self.deleting.lock() {
            let e = d.entry(rel.to_owned()).or_insert(ns);
            *e = (*e).max(ns);
        }
    }

    /// Forgets the queued deletion of `rel` once the entries up to `ns` are applied (a later
    /// one, enqueued meanwhile, keeps it), or at once with `None` (a new upload of the path).
    fn unmark_deleting(&self, rel: &str, ns: Option<u128>) {
        if let Ok(mut d) = self.deleting.lock() {
            if d.get(rel).is_some_and(|&at| ns.is_none_or(|ns| at <= ns)) {
                d.remove(rel);
            }
        }
    }

    fn key(&self, rel: &RelPath) -> String {
        format!("{}{}", self.key_prefix, rel.as_str())
    }

    /// Whether the bucket can take `rel` at all: its key within [`MAX_KEY`] bytes. An upload of
    /// a path that cannot be written through is refused before anything is written.
    pub fn key_fits(&self, rel: &RelPath) -> bool {
        self.key_prefix.len() + rel.as_str().len() <= MAX_KEY
    }

    /// PUTs `file` (all `meta.len` bytes, read by position) as `rel`, with the validators it is
    /// served with.
    pub async fn put(
        &self,
        rel: &RelPath,
        file: File,
        meta: &ObjectMeta,
    ) -> Result<(), BucketError> {
        let r = match self.put_inner(rel, Arc::new(file), meta).await {
            // The answer was lost, or a gateway failed after the bucket stored it: the bucket
            // says whether it holds this version (the upload's ETag is in its metadata).
            Err(e) if e.ambiguous() => match self.head(rel).await {
                Ok(Some(s)) if s.etag.as_deref() == Some(meta.etag().as_str()) => {
                    tracing::info!(path = %rel, error = %e, "the bucket had stored the upload although its answer failed");
                    Ok(())
                }
                Ok(other) => {
                    tracing::info!(path = %rel, error = %e, bucket = ?other, "the bucket does not hold the upload whose answer failed");
                    Err(e)
                }
                Err(asked) => {
                    // (Not "does not hold": nobody knows. The queue, or the uploader, tries
                    // again.)
                    tracing::info!(path = %rel, error = %e, head = %asked, "whether the bucket holds the upload whose answer failed is unknown: its HEAD failed too");
                    Err(e)
                }
            },
            r => r,
        };
        self.count(Op::Put, r.is_ok());
        r
    }

    /// What the bucket holds for `rel` (HEAD): `None` when nothing.
    async fn head(&self, rel: &RelPath) -> Result<Option<Stored>, BucketError> {
        let url = self
            .bucket
            .head_object(Some(&self.creds()), &self.key(rel))
            .sign(Duration::from_secs(3600))
            .to_string();
        let resp = self
            .request(
                || empty_request(http::Method::HEAD, &url),
                self.timeout,
                None,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let h = resp.headers();
                let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
                Ok(Some(Stored {
                    etag: text(META_ETAG),
                    modified: text(META_LAST_MODIFIED)
                        .and_then(|v| httpdate::parse_http_date(&v).ok()),
                }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            s => {
                self.note_retry_after(s, resp.headers());
                Err(BucketError::Failed(format!("HEAD: {s}")))
            }
        }
    }

    async fn put_inner(
        &self,
        rel: &RelPath,
        file: Arc<File>,
        meta: &ObjectMeta,
    ) -> Result<(), BucketError> {
        let etag = meta.etag();
        let last_modified = crate::http::http_date(meta.modified());
        let ctype = rel.extension().map(str::to_ascii_lowercase).and_then(|e| {
            self.types
                .iter()
                .find(|(x, _)| *x == e)
                .map(|(_, t)| t.clone())
        });
        let key = self.key(rel);
        let creds = self.creds();
        let mut action = self.bucket.put_object(Some(&creds), &key);
        action.headers_mut().insert(META_ETAG, etag.clone());
        action
            .headers_mut()
            .insert(META_LAST_MODIFIED, last_modified.clone());
        let ctype_str = ctype
            .as_ref()
            .and_then(|c| c.to_str().ok())
            .map(str::to_owned);
        if let Some(c) = &ctype_str {
            action.headers_mut().insert("content-type", c.clone());
        }
        let url = action.sign(Duration::from_secs(3600)).to_string();
        let len = meta.len;
        // The time limit counts from the last body bytes the bucket took, however slow its
        // link: a fixed allowance per size (1 s per 4 MiB) failed every large upload over a
        // link slower than 4 MiB/s, for ever (acceptance M1).
        let progress = Arc::new(Progress::new());
        self.send_with(
            || {
                let mut req = http::Request::put(&url)
                    .header(http::header::CONTENT_LENGTH, len)
                    .header(META_ETAG, &etag)
                    .header(META_LAST_MODIFIED, &last_modified);
                if let Some(c) = &ctype_str {
                    req = req.header(http::header::CONTENT_TYPE, c.as_str());
                }
                req.body(file_body(
                    Arc::clone(&file),
                    len,
                    Some(Arc::clone(&progress)),
                ))
                .map_err(|e| BucketError::Failed(e.to_string()))
            },
            self.timeout + Duration::from_secs(1),
            &[StatusCode::OK, StatusCode::CREATED, StatusCode::NO_CONTENT],
            Some(&progress),
        )
        .await
    }

    /// Deletes `rel` in the bucket; says whether the bucket had it (asked first: S3 answers a
    /// DELETE of a missing key like any other). A node without a local copy answers from this.
    pub async fn delete_existing(&self, rel: &RelPath) -> Result<bool, BucketError> {
        let had = matches!(self.head(rel).await, Ok(Some(_)));
        self.delete(rel).await.map(|()| had)
    }

    /// Deletes `rel` in the bucket (one that is not there counts as deleted).
    pub async fn delete(&self, rel: &RelPath) -> Result<(), BucketError> {
        if !self.key_fits(rel) {
            // Such a key was never written: nothing to delete there.
            return Ok(());
        }
        let key = self.key(rel);
        let url = self
            .bucket
            .delete_object(Some(&self.creds()), &key)
            .sign(Duration::from_secs(3600))
            .to_string();
        let r = self
            .send(
                || empty_request(http::Method::DELETE, &url),
                self.timeout,
                &[
                    StatusCode::OK,
                    StatusCode::NO_CONTENT,
                    StatusCode::NOT_FOUND,
                ],
            )
            .await;
        let r = match r {
            // Deleted although the answer was lost: the key is gone.
            Err(e) if e.ambiguous() && matches!(self.head(rel).await, Ok(None)) => {
                tracing::info!(path = %rel, error = %e, "the bucket had applied the DELETE although its answer failed");
                Ok(())
            }
            r => r,
        };
        self.count(Op::Delete, r.is_ok());
        r
    }

    /// Sends the request `make` builds, within `limit`. A pooled connection the bucket closed
    /// as the request went out (its keep-alive timeout) ends with no byte of an answer: the
    /// request, idempotent (HEAD, PUT, DELETE: RFC 9110 §9.2.2), is built and sent once more,
    /// on a new connection (RFC 9112 §9.3.1), as the pull tier does.
    ///
    /// With `progress` (a body being sent), `limit` runs from the last body bytes taken: a
    /// slow link that keeps taking them is never cut, one that stalls is.
    async fn request(
        &self,
        make: impl Fn() -> Result<http::Request<BoxBody<Bytes, io::Error>>, BucketError>,
        limit: Duration,
        progress: Option<&Progress>,
    ) -> Result<http::Response<hyper::body::Incoming>, BucketError> {
        let run = async {
            let first = self.client.request(make()?).await;
            match first {
                Err(e) if super::pull::closed_before_answer(&e) => {
                    tracing::debug!(error = %e, "the bucket closed a kept-alive connection; sending again");
                    Ok(self.client.request(make()?).await)
                }
                r => Ok(r),
            }
        };
        tokio::pin!(run);
        let start = tokio::time::Instant::now();
        let sent = loop {
            let last = progress.map_or(start, |p| p.last().max(start));
            tokio::select! {
                r = &mut run => break r?,
                () = tokio::time::sleep_until(last + limit) => {
                    if progress.is_none_or(|p| p.last() <= last) {
                        return Err(BucketError::Timeout);
                    }
                }
            }
        };
        sent.map_err(|e| BucketError::Failed(causes(&e)))
    }

    /// Sends the request `make` builds ([`WriteThrough::request`]) and reads its answer: `Ok`
    /// for a status in `ok`.
    async fn send(
        &self,
        make: impl Fn() -> Result<http::Request<BoxBody<Bytes, io::Error>>, BucketError>,
        limit: Duration,
        ok: &[StatusCode],
    ) -> Result<(), BucketError> {
        self.send_with(make, limit, ok, None).await
    }

    /// [`WriteThrough::send`], with the body's `progress` ([`WriteThrough::request`]).
    async fn send_with(
        &self,
        make: impl Fn() -> Result<http::Request<BoxBody<Bytes, io::Error>>, BucketError>,
        limit: Duration,
        ok: &[StatusCode],
        progress: Option<&Progress>,
    ) -> Result<(), BucketError> {
        let resp = self.request(make, limit, progress).await?;
        let status = resp.status();
        self.note_retry_after(status, resp.headers());
        // Read the answer to its end so the connection can be reused (bounded in time).
        let body = tokio::time::timeout(limit, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        // The status alone does not say it all: S3's error body names the error (its `<Code>`).
        let e = super::pull::S3Error::parse(&String::from_utf8_lossy(&body));
        let code = e.code.as_deref();
        // A bucket that does not exist answers every request `404 NoSuchBucket`: never "the key
        // is not there" (a DELETE's success), whatever the request.
        if ok.contains(&status) && code != Some("NoSuchBucket") {
            return Ok(());
        }
        let text = match code {
            Some(_) => format!("{status}: {e}"),
            None => format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        };
        // The bucket is not there (yet, or `bucket` is misspelt): the operator makes it or
        // fixes the setting, and the queue retries meanwhile (it set the entries aside for
        // good: making the bucket then uploaded nothing).
        if code == Some("NoSuchBucket") {
            return Err(BucketError::NoBucket(text));
        }
        if status.is_client_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS
            && status != StatusCode::FORBIDDEN
            && !code.is_some_and(worth_retrying)
        {
            // 403 stays retryable: credentials and clocks get fixed; a bad key does not.
            Err(BucketError::Refused(text))
        } else {
            Err(BucketError::Failed(text))
        }
    }

    /// A bucket that is throttling (503 `SlowDown`, 429) may say for how long: the queue
    /// waits that long ([`retry_after`]) before its next round, instead of its own backoff.
    fn note_retry_after(&self, status: StatusCode, h: &http::HeaderMap) {
        if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        let Some(wait) = retry_after(h, SystemTime::now()) else {
            return;
        };
        let until = tokio::time::Instant::now() + wait;
        let mut hold = self.hold_off.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none_or(|t| t < until) {
            *hold = Some(until);
        }
    }

    /// How long the queue waits after a round with failures: what the bucket asked for with
    /// `Retry-After` (at least 1 s), else `backoff`.
    fn retry_wait(&self, backoff: Duration) -> Duration {
        let hold = self
            .hold_off
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match hold {
            Some(t) => t
                .saturating_duration_since(tokio::time::Instant::now())
                .max(BACKOFF_MIN),
            None => backoff,
        }
    }

    // === the durable queue ===

    /// Records (durably) that `rel` must be put or deleted in the bucket. Blocking: call it on
    /// the blocking pool.
    pub fn enqueue(&self, op: Op, rel: &RelPath) -> io::Result<()> {
        let Some(dir) = &self.queue else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{ns:020}-{seq:08x}.{}", op.ext());
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            use std::io::Write;
            let mut f = File::create(&tmp)?;
            f.write_all(queued_name(rel).as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(&name))?;
        File::open(dir)?.sync_all()?;
        match op {
            Op::Delete => self.mark_deleting(&queued_name(rel), ns),
            Op::Put => self.unmark_deleting(&queued_name(rel), None),
        }
        self.m.backlog.inc();
        self.wake.notify_one();
        Ok(())
    }

    /// `segd_write_through_oldest_seconds` from the last listing's oldest entry and the clock.
    fn update_oldest(&self) {
        let ns = self.m.oldest_ns.load(Ordering::Relaxed);
        let age = if ns == 0 {
            0
        } else {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            now.saturating_sub(u128::from(ns)) / 1_000_000_000
        };
        self.m.oldest.set(i64::try_from(age).unwrap_or(i64::MAX));
    }

    /// Applies queued entries until the process ends. `store` gives the node's current files
    /// and the path locks uploads hold until their rename.
    pub(super) async fn run_queue(self: Arc<Self>, store: super::Store) {
        let Some(dir) = self.queue.clone() else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        let ages = Arc::clone(&self);
        tokio::spawn(async move {
            while !ages.stopping.load(Ordering::Relaxed) {
                ages.update_oldest();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        while !self.stopping.load(Ordering::Relaxed) {
            let d = dir.clone();
            let listed = tokio::task::spawn_blocking(move || list(&d)).await;
            let (entries, total) = match listed {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the write-through queue");
                    (Vec::new(), 0)
                }
                Err(_) => (Vec::new(), 0),
            };
            self.m.backlog.set(total as i64);
            let oldest = entries.first().map_or(0, |e| e.ns.max(1));
            self.m
                .oldest_ns
                .store(u64::try_from(oldest).unwrap_or(u64::MAX), Ordering::Relaxed);
            self.update_oldest();
            if entries.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.wake.notified()).await;
                continue;
            }
            // One action per path, from its entries and its current state.
            let mut by_path: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for e in entries {
                // Queued deletions read back from disk (after a restart) hold off the pull
                // tier too.
                if e.op == Op::Delete {
                    self.mark_deleting(&e.rel, e.ns);
                }
                by_path.entry(e.rel.clone()).or_default().push(e);
            }
            self.warned.store(0, Ordering::Relaxed);
            let failed = futures_util::stream::iter(by_path)
                .map(|(rel, entries)| {
                    let this = Arc::clone(&self);
                    let store = store.clone();
                    let dir = dir.clone();
                    async move {
                        let applied = this.apply(&store, &rel, &entries).await;
                        if applied != Applied::Retry {
                            let deleted = entries
                                .iter()
                                .filter(|e| e.op == Op::Delete)
                                .map(|e| e.ns)
                                .max();
                            if deleted.is_some() {
                                this.unmark_deleting(&rel, deleted);
                            }
                            let names: Vec<String> = entries.into_iter().map(|e| e.name).collect();
                            let aside = applied == Applied::Refused;
                            let _ = tokio::task::spawn_blocking(move || {
                                for n in names {
                                    if aside {
                                        // Kept for the operator, out of the queue's way.
                                        let _ = std::fs::rename(
                                            dir.join(&n),
                                            dir.join(format!(".{n}.refused")),
                                        );
                                    } else {
                                        let _ = std::fs::remove_file(dir.join(n));
                                    }
                                }
                            })
                            .await;
                        }
                        applied == Applied::Retry
                    }
                })
                .buffer_unordered(PARALLEL)
                .filter(|failed| std::future::ready(*failed))
                .count()
                .await;
            if failed > 0 {
                let wait = self.retry_wait(backoff);
                tracing::warn!(paths = failed, retry_in = ?wait, "write-through to the bucket failed; retrying");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            } else {
                backoff = BACKOFF_MIN;
            }
        }
    }

    /// Whether a failure of this round is said at `warn` (while the bucket is down, every round
    /// fails every queued path: a line each flooded the log, acceptance M5).
    fn warn_once_more(&self) -> bool {
        self.warned.fetch_add(1, Ordering::Relaxed) < WARNED_A_ROUND
    }

    /// Makes the bucket hold the node's current state of `rel`, unless the bucket holds a
    /// newer version that another node wrote meanwhile (then this node's copy is the stale one
    /// and goes, so that it is not served in place of the newer one).
    async fn apply(&self, store: &super::Store, rel: &str, entries: &[Entry]) -> Applied {
        let Ok(path) = crate::volumes::sanitize(&format!("/{rel}")) else {
            tracing::warn!(
                path = rel,
                "write-through queue entry names no valid path; dropped"
            );
            return Applied::Done;
        };
        if !self.key_fits(&path) {
            tracing::error!(
                path = rel,
                "write-through queue entry's key is longer than a bucket takes; set aside"
            );
            return Applied::Refused;
        }
        // What the bucket has now, to compare with what this node would send.
        let stored = match self.head(&path).await {
            Ok(s) => s,
            Err(e) => {
                if self.warn_once_more() {
                    tracing::warn!(path = rel, error = %e, "write-through HEAD failed");
                } else {
                    tracing::debug!(path = rel, error = %e, "write-through HEAD failed");
                }
                let put = entries.iter().any(|e| e.op == Op::Put);
                self.count(if put { Op::Put } else { Op::Delete }, false);
                return Applied::Retry;
            }
        };
        let newer_than = |t: SystemTime| {
            stored
                .as_ref()
                .and_then(|s| s.modified)
                .is_some_and(|m| secs(m) > secs(t))
        };
        // An entry is written before its upload's rename: the upload holds the path until the
        // rename is done (or failed), so the state read under the lock is the one to send.
        let current = {
            let _lock = store.inner.locks.lock_quietly(&path).await;
            let l = store.local();
            let p = path.clone();
            tokio::task::spawn_blocking(move || current_file(&l, &p)).await
        };
        let last_entry = entries.iter().map(|e| e.ns).max().unwrap_or(0);
        match current {
            Ok(Ok(Some((_, meta)))) if newer_than(meta.modified()) => {
                tracing::warn!(path = rel, "the bucket holds a newer version written through another node; this node's copy is dropped, not sent");
                let (l, p) = (store.local(), path.clone());
                let _lock = store.inner.locks.lock_quietly(&path).await;
                let _ = tokio::task::spawn_blocking(move || drop_if_same(&l, &p, &meta)).await;
                Applied::Done
            }
            Ok(Ok(Some((_, meta))))
                if stored
                    .as_ref()
                    .is_some_and(|s| s.etag.as_deref() == Some(meta.etag().as_str())) =>
            {
                Applied::Done
            }
            Ok(Ok(Some((file, meta)))) => match self.put(&path, file, &meta).await {
                Ok(()) => Applied::Done,
                Err(e @ (BucketError::Refused(_) | BucketError::KeyTooLong)) => {
                    tracing::error!(path = rel, error = %e, "the bucket refuses this object; its queue entries are set aside");
                    Applied::Refused
                }
                Err(e) => {
                    if self.warn_once_more() {
                        tracing::warn!(path = rel, error = %e, "write-through PUT failed");
                    } else {
                        tracing::debug!(path = rel, error = %e, "write-through PUT failed");
                    }
                    Applied::Retry
                }
            },
            Ok(Ok(None)) if entries.iter().any(|e| e.op == Op::Delete) => {
                let deleted_at = SystemTime::UNIX_EPOCH + Duration::from_nanos(last_entry as u64);
                if newer_than(deleted_at) {
                    tracing::warn!(path = rel, "the bucket holds a version written through another node after this deletion; kept");
                    return Applied::Done;
                }
                match self.delete(&path).await {
                    Ok(()) => {
                        // A copy pulled before the deletion held off the pull tier (a fill
                        // already under way) must not outlive it either.
                        if let Some(pull) = &store.inner.pull {
                            pull.drop_copy(&path);
                        }
                        Applied::Done
                    }
                    Err(e @ BucketError::Refused(_)) => {
                        tracing::error!(path = rel, error = %e, "the bucket refuses this object; its queue entries are set aside");
                        Applied::Refused
                    }
                    Err(e) => {
                        if self.warn_once_more() {
                            tracing::warn!(path = rel, error = %e, "write-through DELETE failed");
                        } else {
                            tracing::debug!(path = rel, error = %e, "write-through DELETE failed");
                        }
                        Applied::Retry
                    }
                }
            }
            // Queued for a PUT but gone since (deleted; its deletion has an entry of its own),
            // or never renamed into place (the upload failed after queuing): nothing to send.
            Ok(Ok(None)) => Applied::Done,
            Ok(Err(e)) => {
                if self.warn_once_more() {
                    tracing::warn!(path = rel, error = %e, "write-through cannot read the local object");
                } else {
                    tracing::debug!(path = rel, error = %e, "write-through cannot read the local object");
                }
                Applied::Retry
            }
            Err(_) => Applied::Retry,
        }
    }
}

/// What became of a path's queue entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// The bucket matches (or must not be changed): the entries go.
    Done,
    /// Try again after the backoff.
    Retry,
    /// The bucket refuses it for good: the entries are set aside (`.<name>.refused`).
    Refused,
}

/// A request without a body.
fn empty_request(
    method: http::Method,
    url: &str,
) -> Result<http::Request<BoxBody<Bytes, io::Error>>, BucketError> {
    http::Request::builder()
        .method(method)
        .uri(url)
        .body(BodyExt::boxed(
            http_body_util::Empty::new().map_err(|never| match never {}),
        ))
        .map_err(|e| BucketError::Failed(e.to_string()))
}

/// When a request body last had bytes taken (see [`WriteThrough::request`]).
pub(super) struct Progress {
    start: tokio::time::Instant,
    /// Nanoseconds after `start`.
    at: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: tokio::time::Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    fn note(&self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at.fetch_max(ns, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_nanos(self.at.load(Ordering::Relaxed))
    }
}

/// The `len` bytes of `file` as a request body, read by position in [`CHUNK`]s on the blocking
/// pool (so each attempt at a request reads them anew); each chunk asked for is noted in
/// `progress` (the client asks for the next once the connection took the one before).
fn file_body(
    file: Arc<File>,
    len: u64,
    progress: Option<Arc<Progress>>,
) -> BoxBody<Bytes, io::Error> {
    let chunks = futures_util::stream::unfold(0u64, move |off| {
        let file = Arc::clone(&file);
        if let Some(p) = &progress {
            p.note();
        }
        async move {
            if off >= len {
                return None;
            }
            let want = usize::try_from((len - off).min(CHUNK as u64)).unwrap_or(CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match file.read_at(&mut buf[got..], off + got as u64) {
                        Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
            Some((read.map(hyper::body::Frame::data), off + want as u64))
        }
    });
    BodyExt::boxed(StreamBody::new(chunks.into_stream()))
}

/// S3 error codes that come with a 4xx (other than 403, 408 and 429) and yet do not mean the
/// request will fail every time, so it is retried rather than refused for good:
/// - `RequestTimeout` (400): AWS's answer when an upload's body did not arrive in time;
/// - `OperationAborted` (409): a conflicting operation on the key or bucket is under way ("try
///   again");
/// - `AuthorizationQueryParametersError`, `AuthorizationHeaderMalformed` (400): AWS's answer
///   to a signature for another region than the bucket's (`region`), a setting the operator
///   fixes, as a refused key or a skewed clock (403). (SeaweedFS takes any region.)
///
/// (`NoSuchBucket` is [`BucketError::NoBucket`], retried too.)
fn worth_retrying(code: &str) -> bool {
    matches!(
        code,
        "RequestTimeout"
            | "OperationAborted"
            | "AuthorizationQueryParametersError"
            | "AuthorizationHeaderMalformed"
    )
}

/// A `Retry-After` (RFC 9110 §10.2.3: seconds, or an HTTP date), at most [`RETRY_AFTER_MAX`].
pub(super) fn retry_after(h: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

/// Unix seconds of `t` (the bucket's `Last-Modified` metadata has whole seconds).
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unlinks `rel` from the volume that holds it if it is still the file `meta` describes.
fn drop_if_same(local: &Local, rel: &RelPath, meta: &ObjectMeta) {
    let (dir, name) = rel.as_str().rsplit_once('/').unwrap_or(("", rel.as_str()));
    for (_, v) in local.volumes.served() {
        let done = v.with_root(|root| -> io::Result<bool> {
            let d = Dir::open(root, dir, false)?;
            let f = d.open_file(name)?;
            let st = rustix::fs::fstat(&f)?;
            if ObjectMeta::from_stat(&st) != *meta {
                return Ok(true);
            }
            d.unlink(name)?;
            Ok(true)
        });
        if matches!(done, Some(Ok(true))) {
            local.forget(rel);
            return;
        }
    }
}

/// The file `rel` on a served volume, with its metadata; `None` when no volume has it; an
/// error when a volume that might have it cannot say.
fn current_file(local: &Local, rel: &RelPath) -> io::Result<Option<(File, ObjectMeta)>> {
    let (dir, name) = rel.as_str().rsplit_once('/').unwrap_or(("", rel.as_str()));
    let mut unavailable = false;
    for (_, v) in local.volumes.served() {
        if !v.is_healthy() {
            unavailable = true;
            continue;
        }
        let found = v.with_root(|root| -> io::Result<Option<File>> {
            match Dir::open(root, dir, false).and_then(|d| d.open_file(name)) {
                Ok(f) => Ok(Some(f)),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        });
        match found {
            Some(Ok(Some(f))) => {
                let st = rustix::fs::fstat(&f)?;
                return Ok(Some((f, ObjectMeta::from_stat(&st))));
            }
            Some(Ok(None)) => {}
            Some(Err(e)) => return Err(e),
            None => unavailable = true,
        }
    }
    if unavailable {
        Err(io::Error::other(
            "a volume that may hold the object is unavailable",
        ))
    } else {
        Ok(None)
    }
}

struct Entry {
    name: String,
    op: Op,
    rel: String,
    /// Unix nanoseconds of the enqueue (from the name).
    ns: u128,
}

/// The oldest [`BATCH`] entries of the queue, and how many there are in all. An entry that
/// cannot be read is renamed aside (`.bad`) so it does not block the queue.
fn list(dir: &std::path::Path) -> io::Result<(Vec<Entry>, usize)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && (n.ends_with(".put") || n.ends_with(".del")))
        .collect();
    let total = names.len();
    names.sort_unstable();
    let mut out = Vec::new();
    for name in names.into_iter().take(BATCH) {
        let op = if name.ends_with(".put") {
            Op::Put
        } else {
            Op::Delete
        };
        let ns = name
            .split('-')
            .next()
            .and_then(|n| n.parse::<u128>().ok())
            .unwrap_or(0);
        match std::fs::read_to_string(dir.join(&name)) {
            Ok(rel) if !rel.is_empty() => out.push(Entry { name, op, rel, ns }),
            Ok(_) | Err(_) => {
                tracing::warn!(entry = %name, "unreadable write-through queue entry; set aside");
                let _ = std::fs::rename(dir.join(&name), dir.join(format!(".{name}.bad")));
            }
        }
    }
    Ok((out, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Retry-After` in seconds or as a date, bounded; anything else is no answer.
    #[test]
    fn retry_after_is_read_and_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from_str(v).expect("value"),
            );
            retry_after(&m, now)
        };
        assert_eq!(h("5"), Some(Duration::from_secs(5)));
        assert_eq!(h("3600"), Some(RETRY_AFTER_MAX));
        let later = crate::http::http_date(now + Duration::from_secs(7));
        assert_eq!(h(&later), Some(Duration::from_secs(7)));
        let past = crate::http::http_date(now - Duration::from_secs(7));
        assert_eq!(h(&past), Some(Duration::ZERO));
        assert_eq!(h("soon"), None);
        assert_eq!(h("-1"), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }
}
