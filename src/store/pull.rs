//! The edge tier (see `docs/edge.md`): objects no volume holds are fetched from upstreams — HTTP
//! origins (another segd, nginx, a CDN origin) or S3-compatible buckets — into a disk cache,
//! one fetch per object however many requests wait.
//!
//! - The cache is a directory (`pull.cache_path`) read like a volume (the last one in the local
//!   tier's set: sendfile, hot-body cache and I/O backend as for any volume). Each object has a
//!   sidecar `.<name>.segd-meta` with the upstream's validators, type, Cache-Control and the
//!   fetch time; an in-memory index (moka, byte-weighted, TinyLFU admission) bounds it by
//!   `max_bytes` and unlinks what it evicts. At start the directory is indexed in the background.
//! - A miss starts a fill (or joins the one in flight: single flight): a task that tries the
//!   upstreams for the path in order, writes the body to a temporary file through the one write
//!   path, and announces its progress; every waiter streams from that file as it grows, with its
//!   own range. The fill goes on if the client that started it leaves. Only a complete body
//!   whose length matches is renamed into place; a failed fill fails every waiter's stream.
//! - 404s are remembered for `negative_ttl`; connect errors, timeouts, 5xx and HTML pages for
//!   media paths (soft 404s) try the next upstream; an upstream whose 503 or 429 says
//!   `Retry-After` rests that long (1–60 s; a 503 for its path only: [`Pull::note_rest`]),
//!   skipped meanwhile; when all
//!   fail, a stale copy within `stale_if_error` is served with `Warning` and `Age`, else
//!   502/504, or 503 with `Retry-After` while one rests. Playlists follow the
//!   upstream's lifetime, else the one segd's own `[cache_control]` gives them (which the CDN
//!   is told too); segments are immutable unless their upstream gave them a lifetime, which
//!   they then follow. Stale copies are revalidated with `If-None-Match`/`If-Modified-Since`.
//! - An object over `max_bytes` is never stored: each request fetches its own bytes, its Range
//!   forwarded, streamed through ([`Through`]); the lookup has the upstream's answer before
//!   it returns, so an upstream failing then is a miss a fill takes over, never a reset. So is, for a while, an object the index
//!   refused to admit (TinyLFU: the objects it would evict are asked for more often), until
//!   its requests have cost the upstream one whole copy: then a fill tries the cache again.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{
    ACCEPT_ENCODING, AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, DATE,
    ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::watch;

use super::growing::{Growing, GrowingSet};
use super::local::Local;
use super::write::TempFile;
use super::{Miss, Object, ObjectClass, Source};
use crate::config::{Config, PullConfig, Secret, UpstreamConfig, UpstreamKind};
use crate::metrics::Metrics;
use crate::volumes::{ObjectMeta, RelPath};

/// How upstreams are reached: plain HTTP, or TLS for `https://` URLs and S3 endpoints.
pub(super) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The connector of every upstream client (pull and write-through): pooled keep-alive
/// connections, the connect timeout, and for https the system's CA roots plus `tls_ca_file`.
pub(super) fn connector(cfg: &PullConfig) -> Result<Connector, rustls::Error> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be loaded");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    let (extra, bad) = roots.add_parsable_certificates(cfg.tls_ca.iter().cloned());
    if bad > 0 {
        tracing::warn!(
            rejected = bad,
            "pull.tls_ca_file: some certificates are not usable CAs"
        );
    }
    tracing::debug!(system = added, extra, "CA roots for https upstreams");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// A reloaded `[pull]`, built and ready to apply ([`Pull::prepare`]).
pub struct Prepared(Conf);

/// Bytes a sidecar is counted for against `max_bytes`.
const SIDECAR_WEIGHT: u64 = 256;

/// The index weighs objects in KiB, not bytes: moka's weights are `u32`, and in bytes every
/// object past 4 GiB would weigh 4 GiB, so a cache of such objects would hold more than
/// `max_bytes` on disk (two 5 GiB files under a 9 GiB limit, say). In KiB an object may be
/// 4 TiB. Weights round up and the capacity rounds down, so the files never exceed `max_bytes`.
const WEIGHT_UNIT: u64 = 1024;

/// The index's capacity for `max_bytes`, in [`WEIGHT_UNIT`]s.
fn capacity(max_bytes: u64) -> u64 {
    max_bytes / WEIGHT_UNIT
}

/// What an object of `len` bytes and its sidecar weigh in the index, in [`WEIGHT_UNIT`]s.
fn weight(len: u64) -> u32 {
    u32::try_from(len.saturating_add(SIDECAR_WEIGHT).div_ceil(WEIGHT_UNIT)).unwrap_or(u32::MAX)
}

/// Seconds a playlist without a lifetime from its upstream is held when segd's own
/// `[cache_control]` value for it names none either (RFC 9111 §4.2.2 lets a cache choose; a
/// live playlist may change at every segment).
const HEURISTIC_LIFETIME: u64 = 1;

/// Whether a 304 names another version than the cached copy `old` (RFC 9111 §4.3.4): it
/// carries an entity-tag that is not the one the upstream gave the copy (compared weakly; a
/// copy without one matches none). A 304 without an `ETag` refreshes the copy.
fn another_version(old: &Meta, h: &http::HeaderMap) -> bool {
    let opaque = |v: &HeaderValue| {
        let b = v.as_bytes().trim_ascii();
        b.strip_prefix(b"W/").unwrap_or(b).to_vec()
    };
    match h.get(ETAG) {
        None => false,
        Some(new) => old
            .upstream_etag
            .as_ref()
            .is_none_or(|kept| opaque(kept) != opaque(new)),
    }
}

/// What is kept with a cached object (its sidecar).
#[derive(Debug, Clone, Default)]
struct Meta {
    len: u64,
    /// The file's modification time (ns) when the fill put it in place: a copy rewritten in
    /// place behind segd's back (same length) is told by it. `None` in sidecars written before
    /// it was kept.
    file_mtime_ns: Option<i128>,
    /// The validators the copy is served with (the upstream's, else made at the fill).
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    /// The validators the upstream itself sent in `ETag` and `Last-Modified`: the only ones a
    /// revalidation sends back to it. One segd made up would never match there, and an
    /// `If-None-Match` that never matches wins over an `If-Modified-Since` that would (RFC 9110
    /// §13.1.3), so the upstream would never answer 304.
    upstream_etag: Option<HeaderValue>,
    upstream_last_modified: Option<HeaderValue>,
    content_type: Option<HeaderValue>,
    /// The upstream's content coding (an S3 object stored gzipped): forwarded, never undone.
    content_encoding: Option<HeaderValue>,
    cache_control: Option<HeaderValue>,
    /// Unix milliseconds of the fetch (or the last revalidation), less the `Age` the upstream
    /// gave: when the response was generated, as RFC 9111 §4.2.3 counts a response's age. In
    /// milliseconds so that a copy fetched just before a second's turn is not 1 s old just after.
    fetched_ms: u64,
    /// The upstream said `Vary: *`: never stored, and passed on with its answers, so that no
    /// cache in front reuses them either (RFC 9111 §4.1). Not in the sidecar (never stored).
    vary_any: bool,
}

fn now() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When a response the upstream says is `age` seconds old was generated, in Unix milliseconds.
fn generated_ms(age: u64) -> u64 {
    now_ms().saturating_sub(age.saturating_mul(1000))
}

impl Meta {
    fn to_text(&self) -> String {
        // `fetched` (seconds) is kept for a downgraded segd, which would otherwise find every
        // copy stale; `fetched-ms` wins where both are read.
        let mut s = format!(
            "len: {}\nfetched: {}\nfetched-ms: {}\n",
            self.len,
            self.fetched_ms / 1000,
            self.fetched_ms
        );
        if let Some(ns) = self.file_mtime_ns {
            s.push_str(&format!("file-mtime-ns: {ns}\n"));
        }
        let mut line = |k: &str, v: &Option<HeaderValue>| {
            if let Some(v) = v.as_ref().and_then(|v| v.to_str().ok()) {
                s.push_str(&format!("{k}: {v}\n"));
            }
        };
        line("etag", &self.etag);
        line("last-modified", &self.last_modified);
        line("upstream-etag", &self.upstream_etag);
        line("upstream-last-modified", &self.upstream_last_modified);
        line("content-type", &self.content_type);
        line("content-encoding", &self.content_encoding);
        line("cache-control", &self.cache_control);
        s
    }

    fn from_text(t: &str) -> Option<Meta> {
        let mut m = Meta::default();
        let mut has_len = false;
        let (mut fetched_secs, mut fetched_ms) = (None, None);
        for line in t.lines() {
            let (k, v) = line.split_once(": ")?;
            let hv = || HeaderValue::from_str(v).ok();
            match k {
                "len" => {
                    m.len = v.parse().ok()?;
                    has_len = true;
                }
                "fetched" => fetched_secs = Some(v.parse::<u64>().ok()?),
                "fetched-ms" => fetched_ms = Some(v.parse().ok()?),
                "file-mtime-ns" => m.file_mtime_ns = v.parse().ok(),
                "etag" => m.etag = hv(),
                "last-modified" => m.last_modified = hv(),
                "upstream-etag" => m.upstream_etag = hv(),
                "upstream-last-modified" => m.upstream_last_modified = hv(),
                "content-type" => m.content_type = specific_type(hv()),
                "content-encoding" => m.content_encoding = hv(),
                "cache-control" => m.cache_control = hv(),
                _ => {}
            }
        }
        // `fetched-ms` wherever it comes; a sidecar of an older segd has seconds only.
        m.fetched_ms = fetched_ms
            .or(fetched_secs.map(|s: u64| s.saturating_mul(1000)))
            .unwrap_or(0);
        has_len.then_some(m)
    }

    /// The lifetime the upstream gave the copy ([`lifetime`]); `None` when it gave none.
    fn lifetime(&self) -> Option<u64> {
        lifetime(self.cache_control.as_ref()?.to_str().ok()?)
    }

    /// Seconds this copy stays fresh; `None`: for good. `unstated` is what applies when the
    /// upstream gave it no lifetime ([`Conf::unstated_lifetime`]: seconds for a playlist,
    /// `None` for segments and keys, which are immutable then). A segment the upstream gave a
    /// lifetime follows it as a playlist does (`no-cache` included), unless it also says
    /// `immutable` (RFC 8246).
    fn max_age(&self, unstated: Option<u64>) -> Option<u64> {
        let cc = self.cache_control.as_ref().and_then(|v| v.to_str().ok());
        let has = |name: &str| cc.is_some_and(|c| has_directive(c, name));
        match unstated {
            Some(secs) => Some(self.lifetime().unwrap_or(secs)),
            None if has("immutable") && !has("no-cache") => None,
            None => self.lifetime(),
        }
    }

    /// The `Cache-Control` this copy is served with: the upstream's, as it came, with one
    /// exception. A playlist the upstream gave no lifetime is held here for `unstated` seconds
    /// (the lifetime segd's own `[cache_control]` gives it), so a CDN in front must be told the
    /// same: with no Cache-Control from the upstream, `None` lets the handler send segd's own
    /// value for the class (where `unstated` comes from); with one that names no lifetime
    /// (`public`), `max-age=<unstated>` is added to it, or the CDN would pick a heuristic
    /// lifetime of its own. A response no shared cache may store goes out as it came.
    fn served_cache_control(&self, unstated: Option<u64>) -> Option<HeaderValue> {
        let cc = self.cache_control.as_ref().and_then(|v| v.to_str().ok());
        let Some(secs) = unstated.filter(|_| self.lifetime().is_none()) else {
            return self.cache_control.clone();
        };
        match cc {
            None => None,
            Some(cc) if forbids_storing(cc) => self.cache_control.clone(),
            Some(cc) => HeaderValue::from_str(&format!("{cc}, max-age={secs}"))
                .ok()
                .or_else(|| self.cache_control.clone()),
        }
    }

    /// Whether this copy may stand in, stale, for an upstream that cannot be reached: not when
    /// its Cache-Control has `must-revalidate`, `proxy-revalidate` or `s-maxage` (RFC 9111
    /// §5.2.2.2, §5.2.2.8, §5.2.2.10: a shared cache then answers with an error, 504), nor
    /// `no-cache` (§5.2.2.4: never reused without a successful revalidation).
    fn may_serve_stale(&self) -> bool {
        let Some(cc) = self.cache_control.as_ref().and_then(|v| v.to_str().ok()) else {
            return true;
        };
        ![
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage",
            "no-cache",
        ]
        .iter()
        .any(|n| has_directive(cc, n))
    }

    fn fresh(&self, unstated: Option<u64>) -> bool {
        self.max_age(unstated)
            .is_none_or(|a| now_ms() < self.fetched_ms.saturating_add(a.saturating_mul(1000)))
    }

    fn age(&self) -> u64 {
        now_ms().saturating_sub(self.fetched_ms) / 1000
    }

    /// Headers a copy is served with besides validators, type and Cache-Control: its `Age`
    /// (RFC 9111 §5.1: a cache MUST send it with a stored response, so that a CDN in front
    /// counts the time it spent here against the upstream's max-age) and its content coding.
    fn served_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AGE, HeaderValue::from(self.age()));
        if let Some(ce) = &self.content_encoding {
            h.insert(CONTENT_ENCODING, ce.clone());
        }
        if self.vary_any {
            h.insert(VARY, HeaderValue::from_static("*"));
        }
        h
    }
}

/// The lifetime a Cache-Control gives (RFC 9111 §4.2.1): 0 with `no-cache`, else its
/// `s-maxage` (segd is a shared cache, §5.2.2.10), else its `max-age` (an upstream's `Expires`
/// became one at the fill); `None` when it gives none.
fn lifetime(cc: &str) -> Option<u64> {
    // The upstream wants the copy revalidated before every reuse (RFC 9111 §5.2.2.4; the
    // qualified form as well, since segd does not strip the fields it names): stale from the
    // start. Each revalidation is a fill, so requests that come meanwhile join it (single
    // flight).
    if has_directive(cc, "no-cache") {
        return Some(0);
    }
    directive_secs(cc, "s-maxage").or_else(|| directive_secs(cc, "max-age"))
}

/// The `Cache-Control` of a private derivative of a response that goes out with `served` and
/// `age` (its `Age`): a playlist rewritten for one viewer's token. `private`, so no CDN keeps
/// it, for what is left of the lifetime `served` gives ([`lifetime`], as for the stored copy:
/// `s-maxage`, else `max-age`, else [`HEURISTIC_LIFETIME`]; `no-cache` 0), and at most `cap`
/// seconds (the token's own validity): never longer than the response itself may be kept, nor
/// shorter. No lifetime left is `no-cache`; `no-store` stays `no-store`.
pub fn private_cache_control(served: &HeaderValue, age: u64, cap: u64) -> HeaderValue {
    let cc = served.to_str().unwrap_or("no-store");
    if has_directive(cc, "no-store") {
        return HeaderValue::from_static("private, no-store");
    }
    // `s-maxage` is for shared caches only: a browser keeps what `max-age` allows, and no
    // longer than the shared copy this one is made from lives.
    let own = match (
        directive_secs(cc, "max-age"),
        directive_secs(cc, "s-maxage"),
    ) {
        _ if has_directive(cc, "no-cache") => Some(0),
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let left = own
        .unwrap_or(HEURISTIC_LIFETIME)
        .saturating_sub(age)
        .min(cap);
    if left == 0 {
        return HeaderValue::from_static("private, no-cache");
    }
    HeaderValue::from_str(&format!("private, max-age={left}"))
        .unwrap_or(HeaderValue::from_static("private, no-cache"))
}

/// The value of Cache-Control directive `name` in seconds (names are case-insensitive and a
/// quoted value is accepted, RFC 9111 §5.2).
fn directive_secs(cc: &str, name: &str) -> Option<u64> {
    cc.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(name) {
            return None;
        }
        v.trim().trim_matches('"').parse().ok()
    })
}

/// An upstream's Cache-Control as one list: every field line, in order, joined with commas
/// (RFC 9110 §5.3). nginx's `expires 60s; add_header Cache-Control private;` sends `max-age=60`
/// and `private` on two lines, and the second one must count as much as the first.
fn cache_control(h: &HeaderMap) -> Option<HeaderValue> {
    let mut out: Vec<u8> = Vec::new();
    for v in h.get_all(CACHE_CONTROL) {
        let v = v.as_bytes().trim_ascii();
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&out).ok()
}

/// The response says `Vary: *` (on any of its `Vary` lines): it never matches a later request
/// (RFC 9111 §4.1), so it is not stored, and it is passed on with its `Vary: *` so that no
/// cache in front reuses it either. Fills and LL-HLS answers passed through alike.
fn varies_on_all(h: &HeaderMap) -> bool {
    h.get_all(VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|f| f.trim() == "*"))
    })
}

/// What makes a response's framing unusable, if anything:
/// - both `Content-Length` and `Transfer-Encoding`: framing two readers may take differently
///   (the stuff of response smuggling), which RFC 9112 §6.3 lets a client handle only as an
///   error;
/// - a transfer coding other than `chunked` (`gzip, chunked`): segd's requests carry no `TE`,
///   so none may be applied (RFC 9112 §7.4), and the body the client hands on is still in it:
///   stored, it would be served as the object's bytes; so with `chunked` twice.
///
/// Such an answer is the upstream's failure: tried on the next one, else 502, never stored,
/// and no head of it reaches a viewer.
fn unusable_framing(h: &HeaderMap) -> Option<&'static str> {
    if h.contains_key(CONTENT_LENGTH) && h.contains_key(TRANSFER_ENCODING) {
        return Some("both Content-Length and Transfer-Encoding");
    }
    let mut chunked = 0;
    for v in h.get_all(TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else {
            return Some("an unreadable Transfer-Encoding");
        };
        for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !c.eq_ignore_ascii_case("chunked") {
                return Some("a transfer coding other than chunked");
            }
            chunked += 1;
        }
    }
    // Chunked is applied once (RFC 9112 §7): twice, the body handed on would still be chunked.
    (chunked > 1).then_some("chunked more than once")
}

/// Whether the response's body is chunked: `chunked` is its last transfer coding (RFC 9112
/// §6.3).
fn chunked(h: &HeaderMap) -> bool {
    h.get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether Cache-Control has directive `name`, with or without a value (names in any case).
fn has_directive(cc: &str, name: &str) -> bool {
    cc.split(',').any(|d| {
        d.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case(name)
    })
}

/// Whether Cache-Control forbids a shared cache to store the response.
fn forbids_storing(cc: &str) -> bool {
    cc.split(',')
        .map(str::trim)
        .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("private"))
}

/// The upstream's `Content-Type`, unless it says nothing about the media: no type, the generic
/// `application/octet-stream` / `binary/octet-stream` that S3 clients store when nobody set one,
/// or a compression format's type (`application/gzip`, `application/x-gzip`: what SeaweedFS
/// stores for a gzipped object uploaded without a type, from its bytes; segd serves only media
/// types, and the coding is in `Content-Encoding`), or what a system's `mime.types` gives the
/// extension for another kind of file (`text/vnd.trolltech.linguist`, Qt Linguist's `.ts`: what
/// `aws s3 cp` on Debian stores for an MPEG-TS segment). Then the object is served with the type
/// segd's own table gives its extension.
fn specific_type(v: Option<HeaderValue>) -> Option<HeaderValue> {
    const GENERIC: [&str; 5] = [
        "application/octet-stream",
        "binary/octet-stream",
        "application/gzip",
        "application/x-gzip",
        "text/vnd.trolltech.linguist",
    ];
    v.filter(|v| {
        let Ok(t) = v.to_str() else { return false };
        let essence = t.split(';').next().unwrap_or("").trim();
        !essence.is_empty() && !GENERIC.iter().any(|g| essence.eq_ignore_ascii_case(g))
    })
}

/// Whether a media type is HTML (`text/html`, in any case, with any parameters).
fn is_html(v: &HeaderValue) -> bool {
    v.to_str()
        .ok()
        .and_then(|t| t.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/html"))
}

/// The `Content-Type` of a 200 that is an HTML page for a path segd serves as something else
/// (`served`: its table's type for the path, media, playlist or key): a CMS's catch-all page
/// answering 200 for what it does not have, a "soft 404". It is not the object: never stored
/// nor served, a failure of that upstream like a 5xx. Another type, or none, is no sign of one.
fn soft_404<'a, B>(resp: &'a http::Response<B>, served: Option<&HeaderValue>) -> Option<&'a str> {
    let t = resp.headers().get(CONTENT_TYPE)?;
    let media = served.is_some_and(|s| !is_html(s));
    (resp.status() == StatusCode::OK && media && is_html(t))
        .then(|| t.to_str().unwrap_or("text/html"))
}

/// A `Last-Modified` segd can keep and send back as it came: an HTTP date (RFC 9110 §5.6.7; one
/// that is not, "yesterday", was served as it came), in visible ASCII (obs-text would not
/// survive the sidecar); without one the fill makes its own. (`ETag`s: [`entity_tag`].)
fn keepable(v: Option<HeaderValue>) -> Option<HeaderValue> {
    v.filter(|v| {
        v.to_str()
            .is_ok_and(|t| httpdate::parse_http_date(t.trim()).is_ok())
    })
}

/// An `ETag` segd can keep, serve and send back: a valid entity-tag (RFC 9110 §8.8.3: `W/` or
/// not, then a quoted string of visible ASCII other than `"`; obs-text would not survive the
/// sidecar). Anything else is no validator, and the fill makes its own.
fn entity_tag(v: Option<HeaderValue>) -> Option<HeaderValue> {
    v.filter(|v| {
        let b = v.as_bytes();
        let opaque = b.strip_prefix(b"W/").unwrap_or(b);
        match opaque {
            [b'"', inner @ .., b'"'] => inner
                .iter()
                .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c)),
            _ => false,
        }
    })
}

/// The longest file name a directory entry takes (Linux `NAME_MAX`).
const NAME_MAX: usize = 255;

fn sidecar(rel: &str) -> (String, String) {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    (dir.to_owned(), format!(".{name}.segd-meta"))
}

/// An upstream's 404 or 410, remembered for `negative_ttl`.
#[derive(Debug, Clone, Copy)]
struct Negative {
    /// 410 rather than 404.
    gone: bool,
    /// When segd forgets it (moka's own expiry, which it does not tell).
    until: Instant,
}

impl Negative {
    /// How much longer segd remembers it: what a CDN in front may keep the answer for
    /// ([`Miss::Negative`]), so that a 404 stampede reaches neither segd's upstream nor segd,
    /// and an object published meanwhile is seen by the CDN no later than by segd.
    fn remembered(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }
}

/// What a fill tells its waiters once the upstream answered.
#[derive(Clone)]
enum Outcome {
    /// The body is coming: stream it from here.
    Body(Box<Meta>, Option<u64>, Arc<Growing>, String),
    /// 304 to our revalidation: the cached copy is fresh again.
    Revalidated,
    /// An object over `max_bytes`, from upstream `String`: never stored, each request fetches
    /// its own bytes ([`Through`]).
    Oversize(Arc<Meta>, String),
    /// 404 (`gone`: 410), remembered until `until` (`None`: not remembered: a live path, the
    /// queued upstream).
    NotFound { gone: bool, until: Option<Instant> },
    /// Every upstream failed (`timeout`: the last failure was a timeout), or rested: `rest`,
    /// the shortest time left of a rest an upstream asked for ([`Pull::note_rest`]).
    Failed {
        timeout: bool,
        rest: Option<Duration>,
    },
}

struct Fill {
    outcome: watch::Sender<Option<Outcome>>,
    /// Set when the path was deleted through this node while the fill ran
    /// ([`Pull::drop_copy`]): the upstream's answer predates the deletion, so the fill's
    /// waiters get it but the cache does not keep it.
    void: std::sync::atomic::AtomicBool,
}

impl Fill {
    fn void(&self) -> bool {
        self.void.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct PullMetrics {
    results: prometheus::IntCounterVec,
    upstream_requests: prometheus::IntCounterVec,
    upstream_seconds: prometheus::HistogramVec,
    fill_bytes: prometheus::IntCounter,
    evicted_bytes: prometheus::IntCounter,
    cache_bytes: prometheus::IntGauge,
}

enum Fetcher {
    Http(String),
    S3(Box<(rusty_s3::Bucket, rusty_s3::Credentials, String)>),
}

pub struct Pull {
    /// Bytes indexed (added on insert, taken off by every removal).
    held: Arc<std::sync::atomic::AtomicU64>,
    /// The cache directory (fixed for the process's life).
    root: std::path::PathBuf,
    conf: arc_swap::ArcSwap<Conf>,
    index: moka::sync::Cache<String, Arc<Meta>>,
    /// Paths an upstream answered 404 or 410, for `negative_ttl`.
    negative: moka::sync::Cache<String, Negative>,
    /// `negative_ttl` as started (a reload does not change it).
    negative_ttl: Duration,
    /// `max_bytes` as started (a reload does not change it).
    max_bytes: u64,
    /// Objects not kept: over `max_bytes` (which the cache would evict the moment it stored
    /// them), or refused admission by the index: what their fill learnt of them, so that each
    /// request fetches its own bytes, its Range forwarded ([`Through`]), instead of the whole
    /// object every time.
    unkept: moka::sync::Cache<String, Arc<Unkept>>,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    /// LL-HLS requests in flight to an upstream, by path and directives (single flight).
    passing: Mutex<HashMap<String, SharedPass>>,
    growing: Arc<GrowingSet>,
    m: Arc<PullMetrics>,
    /// The local tier whose open-file cache holds descriptors of cached files (the store owns
    /// it and sets it here, [`Pull::attach`]), for the eviction listener.
    local: Arc<Mutex<std::sync::Weak<Local>>>,
    /// Unix seconds of the last warning that the cache disk took no file.
    warned: std::sync::atomic::AtomicU64,
    /// The write-through bucket this cluster's uploads reach ([`Pull::set_written_upstream`]).
    /// Its 404s are not remembered.
    written_upstream: Mutex<Option<String>>,
    /// Upstreams that asked to be left alone (`Retry-After` on a 503 or 429, a bucket's
    /// `SlowDown`), by name and, for an HTTP upstream's 503, path, until when
    /// ([`Pull::note_rest`]): no request for it goes to them meanwhile; the next upstream is
    /// asked, else the viewer is told 503 with `Retry-After`.
    resting: Mutex<HashMap<Rest, Instant>>,
}

/// The shortest and longest rest an upstream's `Retry-After` buys it (a `Retry-After: 0` or a
/// date past is still a second; an hour is a minute, so a wrong value cannot take an upstream
/// out for long).
const REST_MIN: Duration = Duration::from_secs(1);
const REST_MAX: Duration = Duration::from_secs(60);

/// What a rest covers: upstream `.0`, for every path (`None`) or for one (`Some`: its canonical
/// path).
type Rest = (String, Option<String>);

/// Rests held for single paths at most: past it, expired ones are dropped first, then a new
/// path's rest is not remembered (its request still gets its 503).
const PATH_RESTS_MAX: usize = 4096;

/// The shorter of a rest seen so far and `d`.
fn shorter(rest: Option<Duration>, d: Duration) -> Option<Duration> {
    Some(rest.map_or(d, |r| r.min(d)))
}

/// What one upstream request asks for.
#[derive(Clone, Copy)]
enum Ask<'a> {
    /// The object; with a copy, a revalidation of it (a fill).
    Object(Option<&'a Meta>),
    /// A live playlist with these LL-HLS directives (HTTP upstreams only).
    Pass(&'a str),
    /// Bytes `first..=last` of an object over `max_bytes` (`None`: all of them), as long as it
    /// is still the one the fill saw ([`Through`]).
    Bytes(&'a Meta, Option<(u64, u64)>),
}

/// What a fill learnt of an object the cache does not keep, and from which upstream.
struct Unkept {
    meta: Arc<Meta>,
    upstream: String,
    /// `None`: over `max_bytes`, never kept. `Some`: under it, but the index refused to admit
    /// it (TinyLFU: the objects it would have evicted are asked for more often); the bytes
    /// its requests may still fetch through before the next request is a fill again, which
    /// offers it to the index once more (its frequency counted meanwhile: every request
    /// looks it up). Set to the object's length: passing ranges through costs the upstream
    /// at most about one more copy before the cache is tried again, where a fill per request
    /// cost one copy per Range (ski rental: rent until the rent paid equals the price).
    refused: Option<std::sync::atomic::AtomicU64>,
}

impl Unkept {
    /// Counts `count` bytes against a refused object's allowance; true when it is used up
    /// (the next request should offer the object to the cache again).
    fn spend(&self, count: u64) -> bool {
        let Some(left) = &self.refused else {
            return false;
        };
        let before = left
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |l| Some(l.saturating_sub(count)),
            )
            .unwrap_or(0);
        before <= count
    }
}

/// The body of an object over `max_bytes`, which the cache does not keep (it would evict it
/// the moment it was stored, so every request used to fetch the whole object anew, a Range of
/// a few bytes included). Each request fetches its own bytes from the upstream that answered
/// the fill, with its Range forwarded (HTTP upstreams and buckets alike), and streams them to
/// the client as they arrive: nothing is written to the cache disk nor gathered in memory.
/// The request carries `If-Match` (or `If-Unmodified-Since`), so an object changed upstream
/// since is not spliced in. An upstream that ignores Range (a 200 of the same length) is read
/// from the start and the bytes before the range skipped.
///
/// The lookup asks the upstream for the bytes its request reads ([`super::Reads`]) before it
/// returns the object, and holds the answer here: a failure then (down, 5xx, a `Retry-After`,
/// another version) is a miss, which a fill takes over (the next upstream, else what a failed
/// fill gives: 502, 504, 503), never a response cut after its head. Only a failure after the
/// head (the body stalls or ends short) cuts the response.
///
/// The same path serves an object the index refused to admit, for a while ([`Unkept`]).
#[derive(Clone)]
pub(super) struct Through {
    pull: Arc<Pull>,
    rel: RelPath,
    unkept: Arc<Unkept>,
    /// The upstream's answer for the bytes the request reads, asked for by the lookup.
    held: Arc<Mutex<Option<Held>>>,
}

/// An upstream's answer for `count` bytes from `offset`, its body not read yet.
struct Held {
    offset: u64,
    count: u64,
    body: super::ByteStream,
}

impl Through {
    /// `first`, a fill's `len` bytes from `offset` as they come, and should it fail before
    /// their end (its cache disk full and its body too large for memory, or its upstream
    /// connection lost), the rest of them fetched from the upstream that answered the fill,
    /// as long as it is still the object the fill saw: the reader finishes where the fill
    /// could not. A failure of that request too is the reader's.
    pub(super) fn resume(
        self,
        first: super::ByteStream,
        offset: u64,
        len: u64,
    ) -> super::ByteStream {
        use futures_util::StreamExt;
        enum Part {
            /// The fill's bytes, the position reached, and what fetches the rest should it fail.
            Fill(super::ByteStream, u64, Through),
            Rest(super::ByteStream),
        }
        let end = offset + len;
        Box::pin(futures_util::stream::unfold(
            Some(Part::Fill(first, offset, self)),
            move |part| async move {
                match part? {
                    Part::Rest(mut s) => {
                        let item = s.next().await?;
                        Some((item, Some(Part::Rest(s))))
                    }
                    Part::Fill(mut s, pos, this) => match s.next().await {
                        Some(Ok(b)) => {
                            let next = pos + b.len() as u64;
                            Some((Ok(b), Some(Part::Fill(s, next, this))))
                        }
                        Some(Err(e)) if pos < end => {
                            tracing::debug!(path = %this.rel, at = pos, error = %e, "the fill failed under its reader: the rest from its upstream");
                            let mut rest = this.stream(pos, end - pos);
                            let item = rest.next().await?;
                            Some((item, Some(Part::Rest(rest))))
                        }
                        Some(Err(e)) => Some((Err(e), None)),
                        None => None,
                    },
                }
            },
        ))
    }

    /// `count` bytes from `offset`: the answer the lookup holds when it starts there and is as
    /// long (a prefix of it for a shorter `count`: the reader stops), else fetched when the
    /// stream is first polled (a request whose span the lookup did not know: its failure
    /// cuts the response).
    pub(super) fn stream(&self, offset: u64, count: u64) -> super::ByteStream {
        use futures_util::StreamExt;
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|h| h.offset == offset && h.count >= count);
        if let Some(h) = held {
            if h.count == count {
                return h.body;
            }
            // Never more than asked: a body longer than its Content-Length would desync a
            // kept-alive connection.
            return Box::pin(h.body.scan(count, |left, item| {
                let out = match item {
                    Ok(_) if *left == 0 => None,
                    Ok(mut b) => {
                        if b.len() as u64 > *left {
                            b.truncate(*left as usize);
                        }
                        *left -= b.len() as u64;
                        Some(Ok(b))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures_util::future::ready(out)
            }));
        }
        let this = self.clone();
        let open = async move {
            this.open(offset, count)
                .await
                .map_err(|m| io::Error::other(format!("upstream failed: {m:?}")))
        };
        Box::pin(futures_util::stream::once(open).flat_map(|r| match r {
            Ok(s) => s,
            Err(e) => Box::pin(futures_util::stream::once(async { Err(e) })) as super::ByteStream,
        }))
    }

    /// Asks the upstream for `count` bytes from `offset` now and holds its answer for
    /// [`Through::stream`]; a failure is the miss the request gets.
    async fn hold(&self, offset: u64, count: u64) -> Result<(), Miss> {
        let body = self.open(offset, count).await?;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Held {
            offset,
            count,
            body,
        });
        Ok(())
    }

    /// Sends the request for `count` bytes from `offset` and checks its answer is those bytes
    /// of the object the fill saw; the body is streamed from there. Any failure forgets what
    /// the fill learnt, so that a fill takes over (every upstream again, with their rests).
    async fn open(&self, offset: u64, count: u64) -> Result<super::ByteStream, Miss> {
        let pull = &self.pull;
        let conf = pull.conf.load_full();
        let meta = &self.unkept.meta;
        let path = format!("/{}", self.rel);
        let found = conf
            .cfg
            .upstreams
            .iter()
            .enumerate()
            .find(|(_, u)| u.name == self.unkept.upstream)
            .and_then(|(i, u)| Some((u, conf.fetchers.get(i)?)));
        let Some((up, fetcher)) = found else {
            // Gone with a reload: a fill asks the upstreams configured now.
            pull.forget_unkept(&self.rel, &self.unkept);
            return Err(Miss::UpstreamFailed);
        };
        if let Some(retry_after) = pull.resting(&up.name, &path) {
            pull.forget_unkept(&self.rel, &self.unkept);
            return Err(Miss::UpstreamUnavailable { retry_after });
        }
        if self.unkept.spend(count) {
            pull.forget_unkept(&self.rel, &self.unkept);
        }
        let whole = offset == 0 && count == meta.len;
        let range = (!whole).then(|| (offset, offset + count.max(1) - 1));
        let ask = Ask::Bytes(meta, range);
        let resp = pull
            .timed_request(
                &conf,
                fetcher,
                up,
                &self.rel,
                ask,
                conf.cfg.first_byte_timeout,
            )
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                pull.forget_unkept(&self.rel, &self.unkept);
                pull.m
                    .upstream_requests
                    .with_label_values(&[&up.name, "error"])
                    .inc();
                tracing::warn!(upstream = %up.name, path, error = %e, "upstream request failed");
                return Err(if e.kind() == io::ErrorKind::TimedOut {
                    Miss::UpstreamTimeout
                } else {
                    Miss::UpstreamFailed
                });
            }
        };
        let html = pull.counted(&conf, up, &self.rel, &resp);
        let status = resp.status();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            // Asked to be left alone? (A bucket's `SlowDown` says so in its body.)
            let h = resp.headers().clone();
            let code = match fetcher {
                Fetcher::S3(_) => s3_error(resp, &conf).await.code,
                Fetcher::Http(_) => None,
            };
            tracing::warn!(upstream = %up.name, path, status = status.as_u16(), s3_code = code.as_deref().unwrap_or("-"), "upstream answered a range with an error");
            pull.forget_unkept(&self.rel, &self.unkept);
            return Err(
                match pull.note_rest(up, &path, false, status, &h, code.as_deref()) {
                    Some(retry_after) => Miss::UpstreamUnavailable { retry_after },
                    None => Miss::UpstreamFailed,
                },
            );
        }
        let skip = match (html, self.skip(&resp, range)) {
            (None, Some(skip)) => skip,
            _ => {
                tracing::warn!(upstream = %up.name, path, status = resp.status().as_u16(), "upstream answer is not the object the fill saw; asking the upstreams anew");
                pull.forget_unkept(&self.rel, &self.unkept);
                return Err(Miss::UpstreamFailed);
            }
        };
        Ok(upstream_bytes(
            resp.into_body(),
            skip,
            count,
            conf.cfg.idle_timeout,
            Arc::clone(&pull.m),
        ))
    }

    /// How many bytes of `resp`'s body come before the ones asked for: 0 for the 206 of
    /// exactly `range`, or `range`'s start for a 200 of the whole object (its length); `None`
    /// for any other answer (412: it changed).
    fn skip<B>(&self, resp: &http::Response<B>, range: Option<(u64, u64)>) -> Option<u64> {
        let h = resp.headers();
        let meta = &self.unkept.meta;
        let len = meta.len;
        // An upstream that ignores If-Match, or an object replaced by one of the same length:
        // validators that differ from the fill's say another object, whose bytes must not be
        // served under this one's ETag.
        let differs = |name, seen: &Option<HeaderValue>| matches!((seen, h.get(name)), (Some(a), Some(b)) if a != b);
        if differs(ETAG, &meta.upstream_etag)
            || differs(LAST_MODIFIED, &meta.upstream_last_modified)
        {
            return None;
        }
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let (first, last) = range?;
                let want = format!("bytes {first}-{last}/{len}");
                let cr = h.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
                (cr.trim() == want && unusable_framing(h).is_none()).then_some(0)
            }
            StatusCode::OK => {
                let cl: Option<u64> = h
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                let same = cl.is_none_or(|cl| cl == len) && unusable_framing(h).is_none();
                same.then_some(range.map_or(0, |(first, _)| first))
            }
            _ => None,
        }
    }
}

/// `count` bytes of an upstream body after its first `skip`, as a stream: each chunk as it
/// arrives (within `idle` of the last), an error if the body ends short or fails.
fn upstream_bytes(
    body: hyper::body::Incoming,
    skip: u64,
    count: u64,
    idle: Duration,
    m: Arc<PullMetrics>,
) -> super::ByteStream {
    struct Left {
        body: hyper::body::Incoming,
        skip: u64,
        left: u64,
    }
    let start = Left {
        body,
        skip,
        left: count,
    };
    Box::pin(futures_util::stream::unfold(Some(start), move |st| {
        let m = Arc::clone(&m);
        async move {
            let mut st = st?;
            while st.left > 0 {
                let frame = match tokio::time::timeout(idle, st.body.frame()).await {
                    Ok(Some(Ok(f))) => f,
                    Ok(Some(Err(e))) => return Some((Err(io::Error::other(e)), None)),
                    Ok(None) => {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "upstream body ended short",
                        );
                        return Some((Err(e), None));
                    }
                    Err(_) => return Some((Err(io::Error::from(io::ErrorKind::TimedOut)), None)),
                };
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                m.fill_bytes.inc_by(data.len() as u64);
                let skipped = st.skip.min(data.len() as u64);
                st.skip -= skipped;
                let data_left = data.split_off(skipped as usize);
                data = data_left;
                if data.is_empty() {
                    continue;
                }
                data.truncate(st.left.min(data.len() as u64) as usize);
                st.left -= data.len() as u64;
                return Some((Ok(data), Some(st)));
            }
            None
        }
    }))
}

/// An upstream's answer to an LL-HLS request passed through (never stored).
#[derive(Debug)]
pub struct Passed {
    pub status: StatusCode,
    /// The upstream's `Content-Type`, `ETag`, `Last-Modified`, `Age`, `Retry-After`, its
    /// `Vary: *` ([`varies_on_all`]), and the `Cache-Control` a stored copy of the answer would
    /// be served with (none: segd's own value for live playlists applies, as for a stored copy).
    pub headers: HeaderMap,
    pub body: Bytes,
}

type SharedPass = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<Arc<Passed>, Miss>>,
>;

/// Largest playlist passed through.
const PASS_MAX: usize = 4 << 20;

/// Largest object a fill passes through in memory when the cache disk takes no file.
const PASS_MEMORY: u64 = 64 << 20;

/// How long a fill waits for the cache disk to create, write or commit its file before it
/// gives the copy up and goes on in memory (a disk that stopped answering).
const DISK_STALL: Duration = Duration::from_secs(2);

/// The debug builds' hung cache disk (see `Volume::injected_hang`), where a fill's disk
/// operations run.
fn injected_cache_hang(local: &Local) {
    if let Some(v) = local
        .volumes
        .cache_volume()
        .and_then(|i| local.volumes.get(i))
    {
        v.injected_hang();
    }
}

/// The error for a cache-disk operation given up on after [`DISK_STALL`].
fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the pull cache's disk did not answer within {} s",
            DISK_STALL.as_secs()
        ),
    )
}

/// What a reload may change: the upstreams, their timeouts and credentials, and the client
/// (its connect timeout and CA roots). The cache directory and its size stay as started.
struct Conf {
    cfg: PullConfig,
    /// segd's extension → media type table (`[types]`), to tell an HTML page from the object.
    types: Vec<(String, HeaderValue)>,
    /// Seconds a playlist the upstream gave no lifetime is held: the lifetime segd's own
    /// `[cache_control]` gives it, outside and under the live prefixes
    /// ([`Conf::unstated_lifetime`]). Read from the config once, not per request.
    playlist_lifetime: u64,
    live_playlist_lifetime: u64,
    fetchers: Vec<Fetcher>,
    client: Client<Connector, Empty<Bytes>>,
}

impl Conf {
    fn build(config: &Config) -> anyhow::Result<Conf> {
        let cfg = &config.pull;
        let mut fetchers = Vec::new();
        for u in &cfg.upstreams {
            fetchers.push(match &u.kind {
                    UpstreamKind::Http { url } => Fetcher::Http(url.clone()),
                    UpstreamKind::S3 {
                        endpoint,
                        bucket,
                        region,
                        key_prefix,
                        access_key_id,
                        secret_access_key,
                        session_token,
                    } => {
                        let Ok(url) = url::Url::parse(endpoint) else {
                            tracing::warn!(upstream = %u.name, "s3_endpoint is not a URL; upstream unused");
                            continue;
                        };
                        match rusty_s3::Bucket::new(
                            url,
                            rusty_s3::UrlStyle::Path,
                            bucket.clone(),
                            region.clone(),
                        ) {
                            Ok(b) => Fetcher::S3(Box::new((
                                b,
                                s3_credentials(access_key_id, secret_access_key, session_token),
                                key_prefix.clone(),
                            ))),
                            Err(e) => {
                                tracing::warn!(upstream = %u.name, error = %e, "bad S3 bucket settings; upstream unused");
                                continue;
                            }
                        }
                    }
                });
        }
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector(cfg)?);
        Ok(Conf {
            cfg: cfg.clone(),
            types: config.types.clone(),
            playlist_lifetime: own_lifetime(&config.cache_control.playlists),
            live_playlist_lifetime: own_lifetime(&config.cache_control.live),
            fetchers,
            client,
        })
    }

    /// Seconds a copy of `class` is held when its upstream gave it no lifetime; `None`: for
    /// good (segments and keys are immutable). A playlist is held as long as segd's own
    /// `[cache_control]` value for it (`playlists`, or `live` under the live prefixes) lets a
    /// CDN keep it, since that is what a CDN is told of it ([`Meta::served_cache_control`]):
    /// a CDN in front is then never told a longer lifetime than the edge holds the copy for.
    fn unstated_lifetime(&self, class: ObjectClass, live: bool) -> Option<u64> {
        if class != ObjectClass::Playlist {
            return None;
        }
        Some(if live {
            self.live_playlist_lifetime
        } else {
            self.playlist_lifetime
        })
    }

    /// The type segd serves `rel` with (its table's entry for the extension).
    fn served_type(&self, rel: &RelPath) -> Option<&HeaderValue> {
        let ext = rel.extension()?.to_ascii_lowercase();
        self.types.iter().find(|(e, _)| *e == ext).map(|(_, t)| t)
    }
}

/// The lifetime one of segd's own `[cache_control]` values gives, else [`HEURISTIC_LIFETIME`].
fn own_lifetime(value: &HeaderValue) -> u64 {
    value
        .to_str()
        .ok()
        .and_then(lifetime)
        .unwrap_or(HEURISTIC_LIFETIME)
}

/// The pull tier's decision for one lookup.
pub enum Pulled {
    /// The path is not covered by any upstream: the miss stands.
    NotCovered,
    Found(Box<Object>),
}

impl Pull {
    pub fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<Pull>> {
        let cfg = &config.pull;
        let Some(root) = cfg.cache_path.clone() else {
            return Ok(None);
        };
        let reg = |c: Box<dyn prometheus::core::Collector>| metrics.register(c);
        let results = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "segd_pull_requests_total",
                "Requests the pull tier answered, by result (hit, miss, stale, coalesced, negative, pass)",
            ),
            &["result"],
        )?;
        reg(Box::new(results.clone()))?;
        let upstream_requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "segd_upstream_requests_total",
                "Requests sent to upstreams, by upstream and status class (error: no answer; soft_404: an HTML page for a media path)",
            ),
            &["upstream", "status_class"],
        )?;
        reg(Box::new(upstream_requests.clone()))?;
        let upstream_seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "segd_upstream_seconds",
                "Upstream requests: from sending to the response head",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["upstream"],
        )?;
        reg(Box::new(upstream_seconds.clone()))?;
        let fill_bytes = prometheus::IntCounter::new(
            "segd_pull_fill_bytes_total",
            "Bytes fetched from upstreams",
        )?;
        reg(Box::new(fill_bytes.clone()))?;
        let evicted_bytes = prometheus::IntCounter::new(
            "segd_pull_evicted_bytes_total",
            "Bytes evicted from the pull cache",
        )?;
        reg(Box::new(evicted_bytes.clone()))?;
        let cache_bytes =
            prometheus::IntGauge::new("segd_pull_cache_bytes", "Bytes held by the pull cache")?;
        reg(Box::new(cache_bytes.clone()))?;
        let m = Arc::new(PullMetrics {
            results,
            upstream_requests,
            upstream_seconds,
            fill_bytes,
            evicted_bytes,
            cache_bytes,
        });
        let conf = Conf::build(config)?;
        let evicted = Arc::clone(&m);
        let evict_root = root.clone();
        // For pruning the directories evictions leave empty (without a descriptor they stay).
        let evict_dir = std::fs::File::open(&root).ok();
        let held = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let held_ev = Arc::clone(&held);
        let local: Arc<Mutex<std::sync::Weak<Local>>> = Arc::default();
        let local_ev = Arc::clone(&local);
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity(cfg.max_bytes))
            // The object and its sidecar.
            .weigher(|_k: &String, v: &Arc<Meta>| weight(v.len))
            .eviction_listener(move |k: Arc<String>, v: Arc<Meta>, cause| {
                let left = held_ev.fetch_sub(v.len, std::sync::atomic::Ordering::Relaxed) - v.len;
                evicted.cache_bytes.set(left as i64);
                if cause == moka::notification::RemovalCause::Size
                    || cause == moka::notification::RemovalCause::Explicit
                {
                    let (dir, meta) = sidecar(&k);
                    let _ = std::fs::remove_file(evict_root.join(k.as_str()));
                    let _ = std::fs::remove_file(evict_root.join(&dir).join(meta));
                    // The directories it leaves empty go too: they take disk blocks and inodes
                    // that max_bytes does not count, and a catalogue turning over through the
                    // cache would leave one tree of them per asset. A fill that is about to
                    // create its file in one makes it again (`TempFile::create`).
                    if let Some(d) = &evict_dir {
                        super::write::remove_empty(d.as_fd(), &dir, 0);
                    }
                    // A descriptor kept in the open-file cache would keep the unlinked file's
                    // blocks on disk (until its idle timeout), beyond max_bytes: it goes too.
                    // Readers in flight hold their own and finish.
                    let local = local_ev.lock().unwrap_or_else(|p| p.into_inner()).upgrade();
                    if let Some(local) = local {
                        if let Some(vol) = local.volumes.cache_volume() {
                            local.forget_in(vol, &k);
                        }
                    }
                    if cause == moka::notification::RemovalCause::Size {
                        evicted.evicted_bytes.inc_by(v.len);
                    }
                }
            })
            .build();
        let negative = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(cfg.negative_ttl.max(Duration::from_millis(1)))
            .build();
        let pull = Pull {
            held,
            root,
            conf: arc_swap::ArcSwap::from_pointee(conf),
            index,
            negative,
            negative_ttl: cfg.negative_ttl,
            max_bytes: cfg.max_bytes,
            unkept: moka::sync::Cache::new(10_000),
            fills: Mutex::new(HashMap::new()),
            passing: Mutex::new(HashMap::new()),
            growing: Arc::default(),
            m,
            local,
            warned: std::sync::atomic::AtomicU64::new(0),
            written_upstream: Mutex::new(None),
            resting: Mutex::new(HashMap::new()),
        };
        Ok(Some(pull))
    }

    /// Names the upstream that this cluster's uploads are written through to (`[ingest]
    /// write_through`, either durability), or none. Its 404 means "not there yet" as often as
    /// "not there": an upload taken by another node may be in that node's queue (`durability =
    /// "local"`), or may reach the bucket a moment later (`"upstream"`: the 201 comes after
    /// the bucket has it). A 404 remembered for `negative_ttl` would outlive the upload's
    /// arrival for a read spilled or moved to this node before it. So its 404s are not
    /// remembered; concurrent misses still share one request (single flight).
    pub fn set_written_upstream(&self, name: Option<String>) {
        *self
            .written_upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = name;
    }

    fn written_through(&self, upstream: &str) -> bool {
        self.written_upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(upstream)
    }

    /// The local tier whose open-file cache the eviction listener clears (the store calls this
    /// whenever it builds one).
    pub fn attach(&self, local: &Arc<Local>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(local);
    }

    /// Builds a reloaded `[pull]` (upstreams, credentials, timeouts, CA roots) without applying
    /// it: a reload that cannot build it is rejected whole, before anything changes.
    pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
        Conf::build(config).map(Prepared)
    }

    /// Applies a prepared `[pull]` at once (fills in flight finish with what they started
    /// with); the cache directory, its size and `negative_ttl` keep their values until a
    /// restart (the reload names them: `Config::restart_only_changes`).
    pub fn reconfigure(&self, prepared: Prepared) {
        self.conf.store(Arc::new(prepared.0));
    }

    /// Indexes what a previous run left in the cache directory (called in the background at
    /// start; lookups meanwhile find files on disk by their sidecars).
    pub fn reindex(&self) -> u64 {
        let root = self.root.clone();
        let mut n = 0;
        // Directories something was removed from: pruned at the end if that left them empty
        // (a crash mid-fill leaves a temporary file in a directory made for it).
        let mut touched: Vec<String> = Vec::new();
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut removed = false;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(t) = e.file_type() else { continue };
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if t.is_dir() {
                    stack.push((e.path(), key));
                } else if name.starts_with(super::write::TEMP_PREFIX) {
                    // Another run's: this run's own are fills in progress.
                    if super::write::is_stale_temp(&name) {
                        removed |= std::fs::remove_file(e.path()).is_ok();
                    }
                } else if let Some(object) = name
                    .strip_prefix('.')
                    .and_then(|n| n.strip_suffix(".segd-meta"))
                {
                    // A sidecar whose object is gone (a crash between the two unlinks of an
                    // eviction): nothing would ever remove it. A fill of this run renames its
                    // object into place before it writes the sidecar.
                    if t.is_file() && !dir.join(object).exists() {
                        removed |= std::fs::remove_file(e.path()).is_ok();
                    }
                } else if !name.starts_with('.') && t.is_file() {
                    let (_, side) = sidecar(&key);
                    let meta = std::fs::read_to_string(dir.join(&side))
                        .ok()
                        .and_then(|t| Meta::from_text(&t));
                    match meta {
                        Some(m) if e.metadata().is_ok_and(|md| md.len() == m.len) => {
                            if !self.index.contains_key(&key) {
                                self.remember(key, Arc::new(m));
                                n += 1;
                            }
                        }
                        // No sidecar or a length that does not match: not trustworthy (its
                        // sidecar goes with it).
                        _ => {
                            removed |= std::fs::remove_file(e.path()).is_ok();
                            let _ = std::fs::remove_file(dir.join(&side));
                        }
                    }
                }
            }
            if removed && !rel.is_empty() {
                touched.push(rel);
            }
        }
        if let Ok(root) = std::fs::File::open(&root) {
            // Deepest first: a parent is empty only once its children are gone.
            touched.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
            for d in &touched {
                super::write::remove_empty(root.as_fd(), d, 0);
            }
        }
        n
    }

    /// The cache directory (fixed for the process's life).
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Drops this node's cached copy of `rel` (its files go with the index entry); true when
    /// there was one. A DELETE through this node calls it. A fill of `rel` still under way
    /// (the upstream answered before the deletion reached it, its body is still coming) is
    /// cut loose: its waiters finish, but it does not put its copy in the cache, and the
    /// next request starts a fill of its own.
    pub fn drop_copy(&self, rel: &RelPath) -> bool {
        let fill = self
            .fills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rel.as_str());
        if let Some(f) = fill {
            // Before the index entry goes: a fill that stores after this line sees it.
            f.void.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.unkept.invalidate(rel.as_str());
        let had = self.index.contains_key(rel.as_str());
        self.index.invalidate(rel.as_str());
        self.index.run_pending_tasks();
        had
    }

    /// Puts an object in the index (and counts its bytes).
    fn remember(&self, key: String, meta: Arc<Meta>) {
        let total = self
            .held
            .fetch_add(meta.len, std::sync::atomic::Ordering::Relaxed)
            + meta.len;
        self.m.cache_bytes.set(total as i64);
        self.index.insert(key, meta);
        // Evict now, not at moka's next maintenance: the disk holds what the index says.
        self.index.run_pending_tasks();
    }

    fn covered(&self, canonical: &str) -> bool {
        self.conf
            .load()
            .cfg
            .upstreams_for(canonical)
            .next()
            .is_some()
    }

    fn count(&self, result: &str) {
        self.m.results.with_label_values(&[result]).inc();
    }

    /// The pull tier's answer for `rel` (no volume had it).
    /// `live`: under `[live] prefixes`, where a 404 is not remembered (the object may be
    /// published the next moment).
    pub async fn lookup(
        self: &Arc<Self>,
        local: &Arc<Local>,
        rel: &RelPath,
        class: ObjectClass,
        live: bool,
        reads: Option<super::Reads<'_>>,
    ) -> Result<Pulled, Miss> {
        let canonical = rel.canonical();
        if !self.covered(&canonical) {
            return Ok(Pulled::NotCovered);
        }
        let Some(cache_vol) = local.volumes.cache_volume() else {
            return Ok(Pulled::NotCovered);
        };
        let key = rel.as_str().to_owned();
        let unstated = self.conf.load().unstated_lifetime(class, live);
        let mut cached = None;
        let mut fill = None;
        let mut cache_down = false;
        for _ in 0..3 {
            // 1. A cached copy: fresh → hit.
            cached = self.cached(&key).await;
            if let Some(meta) = cached.clone().filter(|m| m.fresh(unstated)) {
                match self
                    .hit(local, cache_vol, rel, unstated, &meta, "hit")
                    .await
                {
                    Ok(o) => {
                        self.count("hit");
                        return Ok(Pulled::Found(Box::new(o)));
                    }
                    // The file is gone (rm'd, unlinked by another process sharing cache_path,
                    // evicted as a fill raced it): its index entry goes too, or the fill below
                    // would take that entry for a fresher copy and never start.
                    Err(Miss::NotFound) => {
                        self.drop_entry(&key, &meta);
                        cached = None;
                    }
                    // The cache disk is down: fetched whole and passed through (the copy
                    // in the index is no reason not to fill).
                    Err(Miss::VolumeUnavailable) => {
                        cache_down = true;
                        cached = None;
                    }
                    // The file is not what the index says (it was dropped): fetched whole.
                    Err(_) => cached = None,
                }
            }
            // 2. A remembered 404 (or 410).
            if let Some(n) = self.negative.get(&key) {
                self.count("negative");
                return Err(Miss::Negative {
                    gone: n.gone,
                    remembered: n.remembered(),
                });
            }
            // 3. An object the cache does not keep (too large, or just refused admission): its
            //    bytes come from the upstream for each request.
            //    When that upstream fails before answering (down, an error, a `Retry-After`,
            //    another version), what was learnt is forgotten and a fill takes over below:
            //    the next upstream, else what a failed fill gives.
            if let Some(o) = self.unkept.get(&key) {
                if o.meta.fresh(unstated) {
                    if let Ok(o) = self.through(rel, o, unstated, reads).await {
                        self.count("pass");
                        return Ok(Pulled::Found(Box::new(o)));
                    }
                } else {
                    self.unkept.invalidate(&key);
                }
            }
            // 4. Join the fill in flight, or start one (unless one just finished: look again).
            fill = self.fill_for(local, rel, class, live, cached.clone(), cache_down);
            if fill.is_some() {
                break;
            }
        }
        let Some((fill, started)) = fill else {
            return Err(Miss::Changed);
        };
        let mut rx = fill.outcome.subscribe();
        let outcome = loop {
            if let Some(o) = rx.borrow_and_update().clone() {
                break o;
            }
            if rx.changed().await.is_err() {
                break Outcome::Failed {
                    timeout: false,
                    rest: None,
                };
            }
        };
        match outcome {
            Outcome::Body(meta, len, growing, upstream) => {
                self.count(if started { "miss" } else { "coalesced" });
                let status = if started { "miss" } else { "coalesced" };
                let meta: Arc<Meta> = Arc::from(meta);
                // Should the fill fail under its readers, they finish from its upstream, as
                // long as the object is still the one it saw (a length, and a validator the
                // upstream can be asked `If-Match` / `If-Unmodified-Since` with).
                let resumable = len.is_some()
                    && (meta
                        .upstream_etag
                        .as_ref()
                        .is_some_and(|e| !e.as_bytes().starts_with(b"W/"))
                        || meta.upstream_last_modified.is_some());
                let rest = resumable.then(|| Through {
                    pull: Arc::clone(self),
                    rel: rel.clone(),
                    unkept: Arc::new(Unkept {
                        meta: Arc::clone(&meta),
                        upstream,
                        refused: None,
                    }),
                    held: Arc::default(),
                });
                let source = Source::Growing(growing, rest);
                Ok(Pulled::Found(Box::new(object(
                    &meta, unstated, len, source, status,
                ))))
            }
            Outcome::Oversize(meta, upstream) => {
                let o = Arc::new(Unkept {
                    meta,
                    upstream,
                    refused: None,
                });
                // Its upstream fails now, after answering the fill: as a failed fill (the
                // next request starts one, which tries every upstream again).
                let o = self
                    .through(rel, o, unstated, reads)
                    .await
                    .inspect_err(|_| self.count("miss"))?;
                self.count("pass");
                Ok(Pulled::Found(Box::new(o)))
            }
            Outcome::Revalidated => {
                let meta = self.cached(&key).await.ok_or(Miss::Changed)?;
                let o = match self
                    .hit(local, cache_vol, rel, unstated, &meta, "hit")
                    .await
                {
                    Ok(o) => o,
                    // Gone since the revalidation began: not a 404 (the upstream has it); the
                    // next request fetches it whole.
                    Err(Miss::NotFound) => {
                        self.drop_entry(&key, &meta);
                        return Err(Miss::Changed);
                    }
                    Err(e) => return Err(e),
                };
                self.count("hit");
                Ok(Pulled::Found(Box::new(o)))
            }
            Outcome::NotFound { gone, until } => {
                self.count(if started { "miss" } else { "coalesced" });
                Err(Miss::UpstreamNotFound {
                    gone,
                    remembered: until.map_or(Duration::ZERO, |u| {
                        u.saturating_duration_since(Instant::now())
                    }),
                })
            }
            Outcome::Failed { timeout, rest } => {
                if let Some(meta) = cached {
                    // The upstream said the copy must not be served stale: the error RFC 9111
                    // §5.2.2.2 asks for instead (504), even with stale_if_error.
                    if !meta.may_serve_stale() {
                        return Err(Miss::UpstreamTimeout);
                    }
                    let cfg = &self.conf.load().cfg;
                    let window = if live && class == ObjectClass::Playlist {
                        cfg.live_stale_if_error
                    } else {
                        cfg.stale_if_error
                    };
                    if meta.age() <= window.as_secs() + meta.max_age(unstated).unwrap_or(0) {
                        if let Ok(mut o) = self
                            .hit(local, cache_vol, rel, unstated, &meta, "stale")
                            .await
                        {
                            o.extra.get_or_insert_with(HeaderMap::new).insert(
                                http::header::WARNING,
                                HeaderValue::from_static("110 - \"Response is Stale\""),
                            );
                            self.count("stale");
                            return Ok(Pulled::Found(Box::new(o)));
                        }
                    }
                }
                Err(match rest {
                    Some(retry_after) => Miss::UpstreamUnavailable { retry_after },
                    None if timeout => Miss::UpstreamTimeout,
                    None => Miss::UpstreamFailed,
                })
            }
        }
    }

    /// Drops the index entry for `key` if it is still `meta` (a fill may have put a newer copy
    /// there meanwhile); the eviction listener removes its files.
    fn drop_entry(&self, key: &str, meta: &Arc<Meta>) {
        self.index.entry_by_ref(key).and_compute_with(|e| match e {
            Some(e) if Arc::ptr_eq(e.value(), meta) => moka::ops::compute::Op::Remove,
            _ => moka::ops::compute::Op::Nop,
        });
        self.index.run_pending_tasks();
    }

    /// The index entry for `key`, or the sidecar on disk (before the start-up reindex got to it).
    async fn cached(&self, key: &str) -> Option<Arc<Meta>> {
        if let Some(m) = self.index.get(key) {
            return Some(m);
        }
        let root = self.root.clone();
        let k = key.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let (dir, side) = sidecar(&k);
            let m = Meta::from_text(&std::fs::read_to_string(root.join(&dir).join(side)).ok()?)?;
            let len = std::fs::metadata(root.join(&k)).ok()?.len();
            (len == m.len).then_some(m)
        });
        // A cache disk that does not answer within DISK_STALL has no copy to offer: the object
        // is fetched (a lookup stuck behind a hung file creation held its viewer for the whole
        // hang: acceptance recheck of F1).
        let meta = tokio::time::timeout(DISK_STALL, read)
            .await
            .ok()?
            .ok()
            .flatten()?;
        let meta = Arc::new(meta);
        self.remember(key.to_owned(), Arc::clone(&meta));
        Some(meta)
    }

    /// A cached copy as an object: its file on the cache volume, the upstream's validators.
    async fn hit(
        &self,
        local: &Arc<Local>,
        vol: usize,
        rel: &RelPath,
        unstated: Option<u64>,
        meta: &Meta,
        status: &'static str,
    ) -> Result<Object, Miss> {
        // A cache disk marked down (its reads fail, or it hangs) offers no copy: the object is
        // fetched and passed through, rather than answered 503 while the upstream is there.
        if !local.volumes.get(vol).is_some_and(|v| v.is_healthy()) {
            return Err(Miss::VolumeUnavailable);
        }
        let (open, disk) = local.find_in(vol, rel).await?;
        let rewritten = meta
            .file_mtime_ns
            .is_some_and(|ns| ns != open.meta.mtime_ns);
        if open.meta.len != meta.len || rewritten {
            // Changed behind segd's back (truncated, appended to, rewritten in place): the copy
            // goes, so that the fill this leads to can put a whole one in its place.
            tracing::warn!(path = %rel, "a pull cache file does not have its recorded length or modification time; dropped");
            local.forget_in(vol, rel.as_str());
            self.index.invalidate(rel.as_str());
            self.index.run_pending_tasks();
            return Err(Miss::Changed);
        }
        let mut o = Object::from_file(open, disk, rel);
        o.cache_control = meta.served_cache_control(unstated);
        if let Some(e) = &meta.etag {
            o.etag = e.clone();
        }
        match &meta.last_modified {
            Some(lm) => o.last_modified = lm.clone(),
            None => o.undated = true,
        }
        o.content_type = meta.content_type.clone();
        o.extra = Some(meta.served_headers());
        o.cache_status = Some(status);
        Ok(o)
    }

    /// The fill in flight for `rel`, or a new one (true); `None` when a fill finished since the
    /// caller looked at the cache (a fill stores its result before it leaves the map), unless
    /// `cache_down` (the cache's copy cannot be read: whatever the index says, a fill is due).
    fn fill_for(
        self: &Arc<Self>,
        local: &Arc<Local>,
        rel: &RelPath,
        class: ObjectClass,
        live: bool,
        cached: Option<Arc<Meta>>,
        cache_down: bool,
    ) -> Option<(Arc<Fill>, bool)> {
        let key = rel.as_str().to_owned();
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fills.get(&key) {
            return Some((Arc::clone(f), false));
        }
        let fresher = self.index.get(&key).is_some_and(|m| {
            cached
                .as_ref()
                .is_none_or(|c| m.fetched_ms > c.fetched_ms || !Arc::ptr_eq(&m, c))
        }) || (cached.is_none() && self.negative.contains_key(&key));
        if fresher && !cache_down {
            return None;
        }
        let fill = Arc::new(Fill {
            outcome: watch::Sender::new(None),
            void: std::sync::atomic::AtomicBool::new(false),
        });
        fills.insert(key.clone(), Arc::clone(&fill));
        drop(fills);
        let (me, local, rel, f) = (
            Arc::clone(self),
            Arc::clone(local),
            rel.clone(),
            Arc::clone(&fill),
        );
        // The fill outlives the request that started it.
        tokio::spawn(async move {
            me.run_fill(&local, &rel, class, live, cached, &f).await;
            let mut fills = me.fills.lock().unwrap_or_else(|p| p.into_inner());
            if fills.get(rel.as_str()).is_some_and(|x| Arc::ptr_eq(x, &f)) {
                fills.remove(rel.as_str());
            }
        });
        Some((fill, true))
    }

    /// Tells a fill's waiters how it ended, and takes it out of the fills in flight in the
    /// same step: a request that comes later joins no fill that has ended. (It used to, until
    /// the fill's task got round to leaving: on a busy machine a request after the object was
    /// replaced upstream was given the ended fill's validators, so its bytes were refused as
    /// another object's, a 502.) A fill that has a body ([`Outcome::Body`]) is still joined
    /// while it runs: its waiters read what it writes.
    fn conclude(&self, rel: &RelPath, fill: &Fill, outcome: Outcome) {
        let fills = self.leave(rel, fill);
        fill.outcome.send_replace(Some(outcome));
        drop(fills);
    }

    /// Takes `fill` out of the fills in flight (no later request joins it); the lock is
    /// returned held, for [`Pull::conclude`] to tell the waiters under it.
    fn leave(
        &self,
        rel: &RelPath,
        fill: &Fill,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Fill>>> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if fills
            .get(rel.as_str())
            .is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), fill))
        {
            fills.remove(rel.as_str());
        }
        fills
    }

    /// An object the cache disk cannot take now (full, failing) and too large to pass through
    /// in memory: its requests fetch their own bytes ([`Through`]) until they have fetched
    /// about `len` bytes, then a fill tries the disk again. Not remembered when nothing of the
    /// response may be stored, or it was deleted meanwhile.
    fn pass_for_now(
        &self,
        rel: &RelPath,
        meta: &Arc<Meta>,
        upstream: &str,
        storable: bool,
        fill: &Fill,
        len: u64,
    ) {
        tracing::debug!(path = %rel, len, "the pull cache cannot take it and it is too large for memory: its requests pass through for a while");
        let allowance = Some(std::sync::atomic::AtomicU64::new(len));
        self.unkeep(rel, meta, upstream, storable && !fill.void(), allowance);
    }

    /// What [`Pull::too_large`] and [`Pull::pass_for_now`] share: a copy kept from before (this
    /// was its revalidation) is another object now, never served again, not even stale (its
    /// file goes with the index entry); the fill's answer is remembered for the requests to
    /// pass through with when `remember` (`refused`: their allowance, [`Unkept::refused`]).
    fn unkeep(
        &self,
        rel: &RelPath,
        meta: &Arc<Meta>,
        upstream: &str,
        remember: bool,
        refused: Option<std::sync::atomic::AtomicU64>,
    ) {
        self.index.invalidate(rel.as_str());
        if remember {
            let o = Unkept {
                meta: Arc::clone(meta),
                upstream: upstream.to_owned(),
                refused,
            };
            self.unkept.insert(rel.as_str().to_owned(), Arc::new(o));
        }
    }

    async fn run_fill(
        &self,
        local: &Arc<Local>,
        rel: &RelPath,
        class: ObjectClass,
        live: bool,
        cached: Option<Arc<Meta>>,
        fill: &Fill,
    ) {
        let canonical = rel.canonical();
        let mut timeout = false;
        let mut rest = None;
        let conf = self.conf.load_full();
        let ups: Vec<(usize, &UpstreamConfig)> = conf
            .cfg
            .upstreams
            .iter()
            .enumerate()
            .filter(|(_, u)| u.prefixes.iter().any(|p| canonical.starts_with(p.as_str())))
            .collect();
        for (i, up) in ups {
            let Some(fetcher) = conf.fetchers.get(i) else {
                continue;
            };
            // It asked to be left alone for a while (`Retry-After`): the next one meanwhile.
            if let Some(left) = self.resting(&up.name, &canonical) {
                rest = shorter(rest, left);
                continue;
            }
            let resp = self
                .timed_request(
                    &conf,
                    fetcher,
                    up,
                    rel,
                    Ask::Object(cached.as_deref()),
                    conf.cfg.first_byte_timeout,
                )
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    timeout = e.kind() == io::ErrorKind::TimedOut;
                    self.m
                        .upstream_requests
                        .with_label_values(&[&up.name, "error"])
                        .inc();
                    tracing::warn!(upstream = %up.name, path = %canonical, error = %e, "upstream request failed");
                    continue;
                }
            };
            let status = resp.status();
            let html = self.counted(&conf, up, rel, &resp);
            match status {
                StatusCode::OK if unusable_framing(resp.headers()).is_some() => {
                    let framing = unusable_framing(resp.headers()).unwrap_or_default();
                    tracing::warn!(upstream = %up.name, path = %canonical, framing, "upstream response's framing is unusable");
                }
                // A soft 404 (counted and logged): the next upstream.
                StatusCode::OK if html.is_some() => {}
                StatusCode::OK => {
                    // Waiters learn of a body that fails after the head through their streams.
                    let bucket = matches!(fetcher, Fetcher::S3(_));
                    let unstated = conf.unstated_lifetime(class, live);
                    let revalidated = cached.is_some();
                    let from = (up.name.as_str(), bucket);
                    self.store(local, rel, unstated, resp, fill, from, revalidated)
                        .await;
                    return;
                }
                StatusCode::NOT_MODIFIED
                    if cached
                        .as_deref()
                        .is_some_and(|old| another_version(old, resp.headers())) =>
                {
                    // RFC 9111 §4.3.4: a 304 whose validator names none of the stored
                    // responses must not update them (the upstream has another version now).
                    // It used to refresh the old copy, served as fresh from then on. The
                    // object is asked for whole instead.
                    tracing::warn!(upstream = %up.name, path = %canonical, etag = ?resp.headers().get(ETAG), "upstream answered 304 naming another version than the cached copy; fetching it whole");
                    let again = self
                        .timed_request(
                            &conf,
                            fetcher,
                            up,
                            rel,
                            Ask::Object(None),
                            conf.cfg.first_byte_timeout,
                        )
                        .await;
                    match again {
                        Ok(r)
                            if r.status() == StatusCode::OK
                                && unusable_framing(r.headers()).is_none()
                                && self.counted(&conf, up, rel, &r).is_none() =>
                        {
                            let bucket = matches!(fetcher, Fetcher::S3(_));
                            let unstated = conf.unstated_lifetime(class, live);
                            let from = (up.name.as_str(), bucket);
                            self.store(local, rel, unstated, r, fill, from, true).await;
                            return;
                        }
                        Ok(r) => {
                            tracing::warn!(upstream = %up.name, path = %canonical, status = r.status().as_u16(), "upstream did not send the object after its 304 named another version");
                        }
                        Err(e) => {
                            timeout = e.kind() == io::ErrorKind::TimedOut;
                            tracing::warn!(upstream = %up.name, path = %canonical, error = %e, "upstream request failed");
                        }
                    }
                }
                StatusCode::NOT_MODIFIED if cached.is_some() => {
                    if let Some(old) = &cached {
                        let h = resp.headers();
                        let mut m = Meta::clone(old);
                        m.fetched_ms = generated_ms(upstream_age(h));
                        if let Some(cc) = kept_cache_control(h, SystemTime::now()) {
                            m.cache_control = Some(cc);
                        }
                        if !fill.void() {
                            self.save_meta(local, rel, &m);
                            self.remember(rel.as_str().to_owned(), Arc::new(m));
                        }
                    }
                    self.conclude(rel, fill, Outcome::Revalidated);
                    return;
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => {
                    if matches!(fetcher, Fetcher::S3(_)) {
                        let e = s3_error(resp, &conf).await;
                        // NoSuchBucket: the upstream is misconfigured, the object is not
                        // known to be gone. (Any other body, or one that cannot be read,
                        // counts as NoSuchKey.)
                        if e.code.as_deref() == Some("NoSuchBucket") {
                            tracing::warn!(upstream = %up.name, path = %canonical, status = status.as_u16(), s3_code = %e, "the bucket answered 404 without NoSuchKey");
                            continue;
                        }
                    }
                    let key = rel.as_str().to_owned();
                    let gone = status == StatusCode::GONE;
                    let mut until = None;
                    if !live && !self.written_through(&up.name) {
                        let n = Negative {
                            gone,
                            until: Instant::now() + self.negative_ttl,
                        };
                        self.negative.insert(key.clone(), n);
                        until = Some(n.until);
                    }
                    // The upstream no longer has it: a copy kept here must not come back
                    // (as a stale answer during a later upstream failure).
                    if cached.is_some() {
                        self.index.invalidate(&key);
                        self.index.run_pending_tasks();
                        if let Some(vol) = local.volumes.cache_volume() {
                            local.forget_in(vol, rel.as_str());
                        }
                    }
                    self.conclude(rel, fill, Outcome::NotFound { gone, until });
                    return;
                }
                // A bucket says why in its error body (wrong secret, clock skew, access
                // policy, throttling): the log names it, so the operator need not guess.
                s if matches!(fetcher, Fetcher::S3(_)) => {
                    let h = resp.headers().clone();
                    let e = s3_error(resp, &conf).await;
                    tracing::warn!(upstream = %up.name, path = %canonical, status = s.as_u16(), s3_code = %e, "the bucket answered with an error");
                    if let Some(r) = self.note_rest(up, &canonical, live, s, &h, e.code.as_deref())
                    {
                        rest = shorter(rest, r);
                    }
                }
                s => {
                    tracing::warn!(upstream = %up.name, path = %canonical, status = s.as_u16(), "upstream answered with an error");
                    if let Some(r) = self.note_rest(up, &canonical, live, s, resp.headers(), None) {
                        rest = shorter(rest, r);
                    }
                }
            }
        }
        self.conclude(rel, fill, Outcome::Failed { timeout, rest });
    }

    /// Whether an upstream serves `canonical` (a path no local tier holds is pulled).
    pub fn covers(&self, canonical: &str) -> bool {
        self.covered(canonical)
    }

    /// An LL-HLS playlist request (blocking reload, delta update) passed to the HTTP upstreams
    /// for the path with its directives `query`, waiting up to `wait` for the answer. Identical
    /// requests share one upstream request; nothing is stored (each answer is for one query).
    pub async fn passthrough(
        self: &Arc<Self>,
        rel: &RelPath,
        query: String,
        wait: Duration,
    ) -> Result<Arc<Passed>, Miss> {
        let key = format!("{rel}?{query}");
        let shared = {
            let mut map = self.passing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(&key) {
                self.count("coalesced");
                s.clone()
            } else {
                self.count("pass");
                let this = Arc::clone(self);
                let (rel, k) = (rel.clone(), key.clone());
                let fut: futures_util::future::BoxFuture<'static, _> = Box::pin(async move {
                    let r = this.pass(&rel, &query, wait).await;
                    this.passing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&k);
                    r
                });
                let s = fut.shared();
                map.insert(key, s.clone());
                // Driven to its end even when every viewer leaves, so that it leaves the map
                // then: a later viewer with the same directives asks the upstream anew instead
                // of getting an answer from long before.
                tokio::spawn(s.clone());
                s
            }
        };
        shared.await
    }

    async fn pass(&self, rel: &RelPath, query: &str, wait: Duration) -> Result<Arc<Passed>, Miss> {
        let canonical = rel.canonical();
        let mut timeout = false;
        let mut unavailable = None;
        let mut rest = None;
        let conf = self.conf.load_full();
        for (i, up) in conf.cfg.upstreams.iter().enumerate() {
            if !up
                .prefixes
                .iter()
                .any(|p| canonical.starts_with(p.as_str()))
            {
                continue;
            }
            let fetcher = match conf.fetchers.get(i) {
                Some(f @ Fetcher::Http(_)) => f,
                _ => continue, // a bucket has no live playlists
            };
            if let Some(left) = self.resting(&up.name, &canonical) {
                rest = shorter(rest, left);
                continue;
            }
            let resp = self
                .timed_request(&conf, fetcher, up, rel, Ask::Pass(query), wait)
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    timeout = e.kind() == io::ErrorKind::TimedOut;
                    self.m
                        .upstream_requests
                        .with_label_values(&[&up.name, "error"])
                        .inc();
                    tracing::warn!(upstream = %up.name, path = %canonical, error = %e, "upstream request failed");
                    continue;
                }
            };
            let status = resp.status();
            // An HTML page for the playlist is no answer to pass on, as for a fill.
            if self.counted(&conf, up, rel, &resp).is_some() {
                continue;
            }
            // A 429 with `Retry-After` rests the upstream (fills skip it too); a 503 is about
            // this request only (an origin's parked-request limit). Either answer is passed
            // on if no later upstream gives one.
            let rested = self
                .note_rest(up, &canonical, true, status, resp.headers(), None)
                .is_some();
            // As for a fill: a redirect (which is not followed, and whose Location is not passed
            // on) or another unexpected status is this upstream's failure. A client error (a
            // 404, an origin's 400 for a directive out of range) and a 503 are answers.
            let answer = status == StatusCode::OK
                || status.is_client_error()
                || status == StatusCode::SERVICE_UNAVAILABLE;
            if !answer {
                tracing::warn!(upstream = %up.name, path = %canonical, status = status.as_u16(), "upstream answered an LL-HLS request with an error");
                continue;
            }
            if let Some(framing) = unusable_framing(resp.headers()) {
                tracing::warn!(upstream = %up.name, path = %canonical, framing, "upstream response's framing is unusable");
                continue;
            }
            let mut headers = HeaderMap::new();
            for n in [
                CONTENT_TYPE,
                CONTENT_ENCODING,
                LAST_MODIFIED,
                AGE,
                http::header::RETRY_AFTER,
            ] {
                if let Some(v) = resp.headers().get(&n) {
                    headers.insert(n, v.clone());
                }
            }
            // Not a malformed one: a client would compare it, or send it back.
            if let Some(e) = entity_tag(resp.headers().get(ETAG).cloned()) {
                headers.insert(ETAG, e);
            }
            // As a fill's answer is served ([`Meta::served_headers`]): a CDN in front must not
            // reuse it either.
            if varies_on_all(resp.headers()) {
                headers.insert(VARY, HeaderValue::from_static("*"));
            }
            // What a stored copy would be served with ([`Meta::served_cache_control`]): the
            // upstream's Cache-Control, every line of it (a `private` on a line of its own must
            // reach the viewer), its `Expires` as a `max-age`, and a lifetime the upstream left
            // unstated added. `None`: the handler sends segd's own value, as for a stored copy.
            let answer = Meta {
                cache_control: kept_cache_control(resp.headers(), SystemTime::now()),
                ..Meta::default()
            };
            let unstated = conf.unstated_lifetime(ObjectClass::Playlist, true);
            if let Some(cc) = answer.served_cache_control(unstated) {
                headers.insert(CACHE_CONTROL, cc);
            }
            let body = http_body_util::Limited::new(resp.into_body(), PASS_MAX);
            let body = match tokio::time::timeout(conf.cfg.idle_timeout, body.collect()).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %up.name, path = %canonical, error = %e, "upstream playlist body failed");
                    continue;
                }
                Err(_) => {
                    timeout = true;
                    continue;
                }
            };
            self.m.fill_bytes.inc_by(body.len() as u64);
            let passed = Arc::new(Passed {
                status,
                headers,
                body,
            });
            // A 503 (an origin's "the playlist did not move in time", docs/live.md), or an
            // upstream that asked to be left alone, is passed on as it came, unless a later
            // upstream answers.
            if status == StatusCode::SERVICE_UNAVAILABLE || rested {
                unavailable = Some(passed);
                continue;
            }
            return Ok(passed);
        }
        if let Some(p) = unavailable {
            return Ok(p);
        }
        Err(match rest {
            Some(retry_after) => Miss::UpstreamUnavailable { retry_after },
            None if timeout => Miss::UpstreamTimeout,
            None => Miss::UpstreamFailed,
        })
    }

    /// How much longer upstream `name` rests for `canonical` ([`Pull::note_rest`]): the longer
    /// of its rest for every path and for this one; `None`: it may be asked.
    fn resting(&self, name: &str, canonical: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.resting.lock().unwrap_or_else(|p| p.into_inner());
        let mut left = None;
        for key in [
            (name.to_owned(), None),
            (name.to_owned(), Some(canonical.to_owned())),
        ] {
            let Some(until) = map.get(&key) else { continue };
            let l = until.saturating_duration_since(now);
            if l.is_zero() {
                map.remove(&key);
            } else {
                left = Some(left.map_or(l, |m: Duration| m.max(l)));
            }
        }
        left
    }

    /// An upstream's answer that asks to be left alone rests it: a 503 or 429 with
    /// `Retry-After` (seconds or a date, RFC 9110 §10.2.3), or a bucket's `503 SlowDown`
    /// (`s3_code`) without one, for that long within [`REST_MIN`]..=[`REST_MAX`]. Returns the
    /// rest. Nothing is asked of it meanwhile: fills and ranges go to the next upstream, and a
    /// request no upstream answers is told 503 with `Retry-After` (RFC 9110 §15.6.4).
    ///
    /// A 429 (this client asks too much) and a bucket's 503 rest the upstream for every path.
    /// An HTTP upstream's 503 rests it for `canonical` only: a segd upstream answers so for one
    /// live stream it does not have yet (`[live] unknown_stream_retry_after`), and an origin
    /// that is down for every path says so on each of them at the cost of one request a path.
    /// On a `live` path an HTTP upstream's 503 rests nothing: it is about that one request (a
    /// segd origin sheds parked LL-HLS requests beyond `max_blocked_requests` so), and resting
    /// the path would refuse every viewer of the stream; the rest is still returned, for this
    /// request's answer.
    fn note_rest(
        &self,
        up: &UpstreamConfig,
        canonical: &str,
        live: bool,
        status: StatusCode,
        h: &HeaderMap,
        s3_code: Option<&str>,
    ) -> Option<Duration> {
        if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let asked = super::write_through::retry_after(h, SystemTime::now())
            .or_else(|| (s3_code == Some("SlowDown")).then_some(REST_MIN))?;
        let rest = asked.clamp(REST_MIN, REST_MAX);
        let now = Instant::now();
        let until = now + rest;
        let bucket = matches!(up.kind, UpstreamKind::S3 { .. });
        let one_path = status == StatusCode::SERVICE_UNAVAILABLE && !bucket;
        let key = (up.name.clone(), one_path.then(|| canonical.to_owned()));
        if one_path && live {
            return Some(rest);
        }
        let mut map = self.resting.lock().unwrap_or_else(|p| p.into_inner());
        if one_path && map.len() >= PATH_RESTS_MAX && !map.contains_key(&key) {
            map.retain(|_, u| *u > now);
        }
        if !one_path || map.len() < PATH_RESTS_MAX || map.contains_key(&key) {
            let entry = map.entry(key).or_insert(until);
            if *entry < until {
                *entry = until;
            }
        }
        drop(map);
        let scope = if one_path { canonical } else { "*" };
        tracing::warn!(upstream = %up.name, path = scope, status = status.as_u16(), seconds = rest.as_secs(), "upstream asked to be left alone (Retry-After); not asked meanwhile");
        Some(rest)
    }

    /// Counts an upstream's answer by status class, and returns the type of a 200 that is an
    /// HTML page for a path segd serves as media, playlist or key ([`soft_404`]): counted as
    /// `soft_404`, not as the 2xx it claims to be, and logged; the caller takes it as that
    /// upstream's failure (never stored nor passed on). Fills and LL-HLS requests passed
    /// through alike.
    fn counted<B>(
        &self,
        conf: &Conf,
        up: &UpstreamConfig,
        rel: &RelPath,
        resp: &http::Response<B>,
    ) -> Option<String> {
        let html = soft_404(resp, conf.served_type(rel)).map(str::to_owned);
        let class_label = match &html {
            Some(_) => "soft_404".to_owned(),
            None => format!("{}xx", resp.status().as_u16() / 100),
        };
        self.m
            .upstream_requests
            .with_label_values(&[&up.name, &class_label])
            .inc();
        if let Some(content_type) = &html {
            tracing::warn!(upstream = %up.name, path = %format!("/{rel}"), content_type, "upstream answered a media path with an HTML page (soft 404); not served");
        }
        html
    }

    /// [`Pull::request`], timed into `segd_upstream_seconds{upstream}`: from sending to the
    /// response head, failures included. Every upstream request goes through here (a fill, an
    /// LL-HLS request passed through, the bytes of an object the cache does not keep).
    async fn timed_request(
        &self,
        conf: &Conf,
        fetcher: &Fetcher,
        up: &UpstreamConfig,
        rel: &RelPath,
        ask: Ask<'_>,
        wait: Duration,
    ) -> io::Result<http::Response<hyper::body::Incoming>> {
        let t0 = Instant::now();
        let resp = self.request(conf, fetcher, up, rel, ask, wait).await;
        self.m
            .upstream_seconds
            .with_label_values(&[&up.name])
            .observe(t0.elapsed().as_secs_f64());
        resp
    }

    /// Sends `ask` for `rel` to one upstream, waiting up to `wait` for the response head.
    async fn request(
        &self,
        conf: &Conf,
        fetcher: &Fetcher,
        up: &UpstreamConfig,
        rel: &RelPath,
        ask: Ask<'_>,
        wait: Duration,
    ) -> io::Result<http::Response<hyper::body::Incoming>> {
        let uri = match fetcher {
            Fetcher::Http(base) => match ask {
                Ask::Pass(q) => format!("{base}{}?{q}", rel.encoded()),
                _ => format!("{base}{}", rel.encoded()),
            },
            Fetcher::S3(s3) => {
                let (bucket, creds, prefix) = &**s3;
                use rusty_s3::S3Action;
                let key = format!("{prefix}{}", rel.as_str());
                bucket
                    .get_object(Some(creds), &key)
                    .sign(Duration::from_secs(300))
                    .to_string()
            }
        };
        // segd stores and serves one representation per path: ask for it unencoded (an origin
        // may otherwise gzip, RFC 9110 §12.5.3). A coding the upstream applies anyway (an S3
        // object stored with one) is kept and forwarded with the bytes.
        let mut req = http::Request::get(&uri).header(ACCEPT_ENCODING, "identity");
        if let Some((h, v)) = &up.origin_auth {
            req = req.header(h.as_str(), v.0.as_str());
        }
        match ask {
            Ask::Object(Some(m)) => {
                if let Some(e) = &m.upstream_etag {
                    req = req.header(IF_NONE_MATCH, e.clone());
                }
                if let Some(lm) = &m.upstream_last_modified {
                    req = req.header(IF_MODIFIED_SINCE, lm.clone());
                }
            }
            Ask::Bytes(m, range) => {
                if let Some((first, last)) = range {
                    req = req.header(http::header::RANGE, format!("bytes={first}-{last}"));
                }
                // The object the fill saw, or 412: a strong ETag (If-Match compares strongly,
                // RFC 9110 §13.1.1), else its date.
                match (&m.upstream_etag, &m.upstream_last_modified) {
                    (Some(e), _) if !e.as_bytes().starts_with(b"W/") => {
                        req = req.header(http::header::IF_MATCH, e.clone());
                    }
                    (_, Some(lm)) => {
                        req = req.header(http::header::IF_UNMODIFIED_SINCE, lm.clone());
                    }
                    _ => {}
                }
            }
            Ask::Object(None) | Ask::Pass(_) => {}
        }
        let req = req.body(Empty::new()).map_err(io::Error::other)?;
        let deadline = tokio::time::Instant::now() + wait;
        let again = req.clone();
        let mut sent = tokio::time::timeout_at(deadline, conf.client.request(req)).await;
        // A pooled connection the upstream closed as this request went out (its keep-alive
        // timeout) ends with no response byte: a GET is idempotent, so it is sent once more on
        // a new connection (RFC 9110 §9.2.2, RFC 9112 §9.3.1).
        if let Ok(Err(e)) = &sent {
            if closed_before_answer(e) {
                tracing::debug!(upstream = %up.name, error = %e, "upstream closed a kept-alive connection; sending again");
                sent = tokio::time::timeout_at(deadline, conf.client.request(again)).await;
            }
        }
        match sent {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let timed_out = std::error::Error::source(&e)
                    .is_some_and(|s| s.to_string().contains("timed out"));
                // The log says why, not just "client error (SendRequest)".
                Err(io::Error::new(
                    if timed_out {
                        io::ErrorKind::TimedOut
                    } else {
                        io::ErrorKind::ConnectionRefused
                    },
                    with_causes(&e),
                ))
            }
            Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
        }
    }

    /// Streams a 200's body into the cache: announced to waiters at once, committed only when
    /// complete and of the announced length (and storable). `unstated`: the object's lifetime
    /// when the upstream gives none ([`Conf::unstated_lifetime`]); `from`: the upstream's name
    /// and whether it is a bucket; `revalidated`: the answer to a revalidation of a stale copy,
    /// which it replaces. An object over `max_bytes` is not stored: see [`Through`].
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        local: &Arc<Local>,
        rel: &RelPath,
        unstated: Option<u64>,
        resp: http::Response<hyper::body::Incoming>,
        fill: &Fill,
        (upstream, bucket): (&str, bool),
        revalidated: bool,
    ) -> bool {
        let h = resp.headers();
        let get = |n: http::HeaderName| h.get(n).cloned();
        // An object a segd node wrote through to a bucket carries the validators that node
        // serves it with: every node serves it with the same ones (docs/cluster.md).
        let segd = |n: &str| if bucket { h.get(n).cloned() } else { None };
        // A chunked body (no Content-Length) is complete when its last chunk came: hyper fails
        // the body if the connection ends before it.
        let len: Option<u64> = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let received = SystemTime::now();
        // RFC 9111 §4.2.3: the age the upstream gave counts (a CDN or another cache before it).
        let fetched_ms = generated_ms(upstream_age(h));
        let cc = kept_cache_control(h, received);
        let (dir, name) = rel.as_str().rsplit_once('/').unwrap_or(("", rel.as_str()));
        // A body delimited by the connection's close (neither Content-Length nor chunked) ends
        // the same way whether it is whole or was cut short (RFC 9112 §6.3): it is passed
        // through, never stored, since nothing says it is complete.
        let close_delimited = len.is_none() && !chunked(h);
        if close_delimited {
            tracing::debug!(path = %rel, "upstream body delimited by close; passed through, not stored");
        }
        let vary_any = varies_on_all(h);
        let storable = !close_delimited
            && !cc
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(forbids_storing)
            && !vary_any
            // The sidecar's name must fit a directory entry too (its temporary name is short).
            && sidecar(rel.as_str()).1.len() <= NAME_MAX;
        // Validators the copy is served with from the first byte to its eviction: the
        // upstream's, else made here once and kept in the sidecar.
        // (Each checked on its own: a bad metadata value gives way to the upstream's own.)
        let etag = entity_tag(segd(crate::store::write_through::META_ETAG))
            .or_else(|| entity_tag(get(ETAG)))
            .unwrap_or_else(|| made_etag(received));
        // No date is made up: the fetch time shared its second with the next version's real
        // date, and a date-only revalidation got 304 for changed bytes. The ETag (the
        // upstream's, else made) tells versions apart.
        let last_modified = keepable(segd(crate::store::write_through::META_LAST_MODIFIED))
            .or_else(|| keepable(get(LAST_MODIFIED)));
        let content_encoding = get(CONTENT_ENCODING).filter(|v| {
            !v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"))
        });
        let mut meta = Meta {
            len: len.unwrap_or(0),
            file_mtime_ns: None,
            etag: Some(etag),
            last_modified,
            upstream_etag: entity_tag(get(ETAG)),
            upstream_last_modified: keepable(get(LAST_MODIFIED)),
            content_type: specific_type(get(CONTENT_TYPE)),
            content_encoding,
            cache_control: cc,
            fetched_ms,
            vary_any,
        };
        // Too large to keep (the cache would evict it the moment it was stored): nothing is
        // written, the waiters and later requests fetch their own bytes, Range forwarded
        // ([`Through`]). This answer's body is dropped unread.
        if len.is_some_and(|l| l > self.max_bytes) {
            let meta = Arc::new(meta);
            self.too_large(rel, &meta, upstream, storable, fill);
            self.conclude(rel, fill, Outcome::Oversize(meta, upstream.to_owned()));
            return true;
        }
        let Some(vol) = local
            .volumes
            .cache_volume()
            .and_then(|i| local.volumes.get(i))
        else {
            let failed = Outcome::Failed {
                timeout: false,
                rest: None,
            };
            self.conclude(rel, fill, failed);
            return false;
        };
        // A path whose directory is a cached file (`/v/movie.mp4` and `/v/movie.mp4/index.m3u8`,
        // nginx-vod-module's layout) cannot be stored beside it: it is passed through, its
        // temporary file in the cache root.
        let cacheable = storable;
        let mut storable = storable;
        // A fill that fails takes the directories made for it along (`TempFile::create`).
        // Created on the blocking pool, within DISK_STALL: a cache disk that stopped answering
        // held the worker thread in `openat`, and with it every listener, the admin one too
        // (acceptance F1); now it costs this object its copy.
        // A cache disk marked down (a device error, or a stall: see `cache_fault`) is not
        // tried until its next good probe.
        let root = vol.root_fd();
        let down = (!vol.is_healthy()).then(|| io::Error::other("the pull cache's volume is down"));
        let temp = match (vol.injected_write_fault().or(down), root) {
            (Some(e), _) => Some(Err(e)),
            (None, None) => None,
            (None, Some(Err(e))) => Some(Err(e)),
            (None, Some(Ok(root))) => {
                let (dir, cache) = (dir.to_owned(), Arc::clone(local));
                let create = tokio::task::spawn_blocking(move || {
                    injected_cache_hang(&cache);
                    match TempFile::create(&root, &dir, false, |_| Ok(())) {
                        Ok(t) => Ok((t, true)),
                        Err(e) => {
                            tracing::debug!(dir = %dir, error = %e, "not storable in the pull cache; passed through");
                            TempFile::create(&root, "", false, |_| Ok(())).map(|t| (t, false))
                        }
                    }
                });
                Some(match tokio::time::timeout(DISK_STALL, create).await {
                    Ok(Ok(Ok((t, placed)))) => {
                        storable &= placed;
                        Ok(t)
                    }
                    Ok(Ok(Err(e))) => Err(e),
                    Ok(Err(e)) => Err(io::Error::other(e)),
                    Err(_) => Err(stalled()),
                })
            }
        };
        // A cache disk that takes no file (full, read-only, failing) costs this object its
        // copy, not its viewers: the fill goes on in memory (up to PASS_MEMORY bytes).
        let mut temp = match temp {
            Some(Ok(t)) => Some(t),
            other => {
                let e = match other {
                    Some(Err(e)) => e,
                    _ => io::Error::other("no pull cache volume"),
                };
                self.cache_fault(local, &e);
                None
            }
        };
        // Too large for memory: passed through as an object over `max_bytes` is, each request
        // fetching its own bytes, until they have fetched about one copy; then a fill tries
        // the disk again ([`Unkept::refused`]).
        if let Some(l) = len.filter(|&l| temp.is_none() && l > PASS_MEMORY) {
            let meta = Arc::new(meta);
            self.pass_for_now(rel, &meta, upstream, cacheable, fill, l);
            self.conclude(rel, fill, Outcome::Oversize(meta, upstream.to_owned()));
            return true;
        }
        let key = rel.as_str().to_owned();
        let publisher = match temp.as_ref().map(TempFile::reader) {
            Some(Ok(reader)) => self.growing.register(&key, reader),
            _ => {
                temp = None;
                self.growing.announce(&key)
            }
        };
        storable &= temp.is_some();
        let Some(growing) = self.growing.get(&key) else {
            return false;
        };
        let body = Outcome::Body(Box::new(meta.clone()), len, growing, upstream.to_owned());
        fill.outcome.send_replace(Some(body));
        let idle_timeout = self.conf.load().cfg.idle_timeout;
        let mut body = resp.into_body();
        // Chunks are gathered while more are already here (one disk write, one blocking-pool
        // hop per batch, not per network read); what has arrived is written before waiting for
        // more, so waiters never lag the network.
        let mut pending = bytes::BytesMut::new();
        let mut ended = false;
        // Bytes received, and bytes in the temporary file (readers find the rest in memory);
        // once a write fails, the rest stays in memory.
        let (mut received, mut on_disk) = (0u64, 0u64);
        let mut disk_failed = false;
        while !ended {
            let next = match body.frame().now_or_never() {
                Some(f) => Ok(f),
                None if pending.is_empty() => {
                    tokio::time::timeout(idle_timeout, body.frame()).await
                }
                // Nothing more yet: write what is here, then wait.
                None => Ok(Some(Ok(hyper::body::Frame::data(Bytes::new())))),
            };
            let frame = match next {
                Ok(Some(Ok(f))) => Some(f),
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    tracing::warn!(path = %key, error = %e, "upstream body failed");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(path = %key, "upstream body stalled past idle_timeout");
                    return false;
                }
            };
            let data = match frame {
                None => {
                    ended = true;
                    Bytes::new()
                }
                Some(f) => f.into_data().unwrap_or_default(),
            };
            if len.is_some_and(|len| received + (pending.len() + data.len()) as u64 > len) {
                tracing::warn!(path = %key, "upstream body longer than its Content-Length");
                return false;
            }
            let flush = data.is_empty() || pending.len() + data.len() >= crate::io::CHUNK;
            pending.extend_from_slice(&data);
            if !flush || pending.is_empty() {
                continue;
            }
            let batch = pending.split().freeze();
            let n = batch.len() as u64;
            received += n;
            if let Some(mut t) = temp.take().filter(|_| !disk_failed) {
                let kept = batch.clone();
                let fault = vol.injected_write_fault();
                let cache = Arc::clone(local);
                let write = tokio::task::spawn_blocking(move || {
                    injected_cache_hang(&cache);
                    let r = fault.map_or_else(|| t.write_all(&kept), Err);
                    (t, r)
                });
                // A write that does not finish within DISK_STALL is given up on as a failed
                // one: the file stays with its thread (removed when that returns), and the
                // viewers go on from memory instead of waiting for the disk.
                let written = match tokio::time::timeout(DISK_STALL, write).await {
                    Ok(r) => r.map(|(t, r)| (Some(t), r)),
                    Err(_) => Ok((None, Err(stalled()))),
                };
                match written {
                    Ok((Some(t), Ok(()))) => {
                        on_disk = t.written();
                        temp = Some(t);
                    }
                    Ok((None, Ok(()))) => return false,
                    // From here on in memory; what the file has stays readable there.
                    Ok((t, Err(e))) => {
                        self.cache_fault(local, &e);
                        disk_failed = true;
                        storable = false;
                        temp = t;
                        // Too large for memory: the requests that come next pass through, and
                        // join this fill no more; its readers finish from the upstream should
                        // it run out of memory (`Through::resume`).
                        if let Some(l) = len.filter(|&l| l > PASS_MEMORY) {
                            let m = Arc::new(meta.clone());
                            self.pass_for_now(rel, &m, upstream, cacheable, fill, l);
                            drop(self.leave(rel, fill));
                        }
                    }
                    Err(_) => return false,
                }
            }
            if received - on_disk > PASS_MEMORY {
                tracing::warn!(path = %key, "upstream body too large to pass through in memory");
                return false;
            }
            self.m.fill_bytes.inc_by(n);
            publisher.advance_with(received, std::slice::from_ref(&batch), on_disk);
        }
        let len = match len {
            Some(len) if received != len => {
                tracing::warn!(path = %key, got = received, want = len, "upstream body shorter than its Content-Length");
                return false;
            }
            Some(len) => len,
            None => received,
        };
        meta.len = len;
        // A chunked body that turned out too large to keep: passed through, and the next
        // requests fetch their own bytes.
        if len > self.max_bytes {
            self.too_large(rel, &Arc::new(meta), upstream, storable, fill);
            publisher.done(len);
            return true;
        }
        // Deleted through this node while the body came: passed through, not kept.
        let Some(temp) = temp.filter(|_| storable && !fill.void()) else {
            // Passed through, not kept: the readers finish from memory and the unlinked file.
            publisher.done(len);
            return true;
        };
        // Immutable segments: a copy already in place (another process's fill, during an
        // upgrade's overlap) stays, so its readers are not cut off. A copy that goes stale
        // (playlists, segments the upstream gave a lifetime) is replaced, as is the stale copy
        // this answer revalidated (whatever the new answer says).
        let replace = revalidated || meta.max_age(unstated).is_some();
        let commit = tokio::task::spawn_blocking({
            let name = name.to_owned();
            let cache = Arc::clone(local);
            move || {
                injected_cache_hang(&cache);
                if replace {
                    temp.commit(&name, false).map(|(_, st)| Some(st))
                } else {
                    temp.commit_new(&name)
                }
            }
        });
        // A commit the disk does not finish within DISK_STALL: the readers finish from memory
        // and the file, as for an object not kept; the disk gets the copy if it ever answers.
        let committed = match tokio::time::timeout(DISK_STALL, commit).await {
            Ok(c) => c,
            Err(_) => {
                self.cache_fault(local, &stalled());
                Ok(Err(stalled()))
            }
        };
        match committed {
            Ok(Ok(st)) => {
                meta.file_mtime_ns =
                    st.map(|st| crate::volumes::ObjectMeta::from_stat(&st).mtime_ns);
                // The cache volume's probe reads a stored object from the device (a disk that
                // hangs or fails is then seen by the probe, not only by the next fill).
                if len > 0 {
                    vol.sample_object(rel);
                }
                self.save_meta_async(rel, &meta).await;
                local.forget_in(
                    local.volumes.cache_volume().unwrap_or(usize::MAX),
                    rel.as_str(),
                );
                let meta = Arc::new(meta);
                self.remember(key.clone(), Arc::clone(&meta));
                // Deleted through this node between the check above and now: the copy goes
                // again (drop_copy marks the fill before it clears the index, so one of the
                // two sees the other).
                if fill.void() {
                    self.index.invalidate(&key);
                    self.index.run_pending_tasks();
                } else if !self.index.contains_key(&key) {
                    // Refused admission (its file is already unlinked): the next requests
                    // fetch their own bytes, Range forwarded, rather than the whole object
                    // each, until a fill is worth trying again ([`Unkept::refused`]).
                    tracing::debug!(path = %key, len, "refused by the pull cache's admission; its requests pass through for a while");
                    let o = Unkept {
                        meta,
                        upstream: upstream.to_owned(),
                        refused: Some(std::sync::atomic::AtomicU64::new(len)),
                    };
                    self.unkept.insert(key.clone(), Arc::new(o));
                }
                publisher.done(len);
                true
            }
            // The body is whole but has no place (a directory holds the name): the readers
            // finish from the unlinked file, as for a response that may not be stored.
            Ok(Err(e)) => {
                tracing::debug!(path = %key, error = %e, "not storable in the pull cache; passed through");
                publisher.done(len);
                true
            }
            Err(_) => false,
        }
    }

    /// Remembers an object over `max_bytes` ([`Pull::unkept`]), unless nothing of the
    /// response may be stored (`no-store`, `private`, `Vary: *`) or it was deleted meanwhile.
    fn too_large(
        &self,
        rel: &RelPath,
        meta: &Arc<Meta>,
        upstream: &str,
        storable: bool,
        fill: &Fill,
    ) {
        tracing::debug!(path = %rel, len = meta.len, "over pull.max_bytes: not stored; requests fetch their own bytes");
        self.unkeep(rel, meta, upstream, storable && !fill.void(), None);
    }

    /// Forgets what was learnt of an object not kept, if it is still `unkept` (a fill may have
    /// put a newer answer there meanwhile): the next request for it starts a fill.
    fn forget_unkept(&self, rel: &RelPath, unkept: &Arc<Unkept>) {
        self.unkept
            .entry_by_ref(rel.as_str())
            .and_compute_with(|e| match e {
                Some(e) if Arc::ptr_eq(e.value(), unkept) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// An object over `max_bytes` as the handler serves it: the fill's validators, type and
    /// Cache-Control, its bytes fetched for each request ([`Through`]): the bytes `reads`
    /// says the request reads are asked for now, and a failure is the request's miss.
    async fn through(
        self: &Arc<Self>,
        rel: &RelPath,
        o: Arc<Unkept>,
        unstated: Option<u64>,
        reads: Option<super::Reads<'_>>,
    ) -> Result<Object, Miss> {
        let meta = Arc::clone(&o.meta);
        let through = Through {
            pull: Arc::clone(self),
            rel: rel.clone(),
            unkept: o,
            held: Arc::default(),
        };
        let source = Source::Upstream(through.clone());
        let object = object(&meta, unstated, Some(meta.len), source, "pass");
        if let Some((offset, count)) = reads.and_then(|f| f(&object)) {
            through.hold(offset, count).await?;
        }
        Ok(object)
    }

    /// A fill could not use the cache disk: said in the log (once a minute at most) and on the
    /// cache volume's health, like a volume's own I/O errors.
    fn cache_fault(&self, local: &Arc<Local>, e: &io::Error) {
        if let Some(i) = local.volumes.cache_volume() {
            local.volumes.note_error(i, e);
            // A disk that stopped answering is down until a probe says otherwise: the fills
            // meanwhile pass through at once rather than after DISK_STALL each.
            if e.kind() == io::ErrorKind::TimedOut {
                if let Some(v) = local.volumes.get(i) {
                    v.record_fault(e);
                }
            }
        }
        let now = now();
        let last = self.warned.swap(now, std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 60 {
            tracing::warn!(error = %e, "the pull cache cannot take new objects; fills pass through in memory");
        }
    }

    /// [`Pull::save_meta`] on the blocking pool (a fill's sidecar; not on a worker thread).
    async fn save_meta_async(&self, rel: &RelPath, meta: &Meta) {
        let root = self.root.clone();
        let (rel, text) = (rel.clone(), meta.to_text());
        let save = tokio::task::spawn_blocking(move || write_sidecar(&root, &rel, &text));
        // Not waited for past DISK_STALL: the object's readers wait for this fill.
        let _ = tokio::time::timeout(DISK_STALL, save).await;
    }

    fn save_meta(&self, _local: &Arc<Local>, rel: &RelPath, meta: &Meta) {
        let root = self.root.clone();
        write_sidecar(&root, rel, &meta.to_text());
    }
}

/// Writes the sidecar of `rel` under the cache root (temporary name, then rename).
/// Writes the sidecar by way of a temporary file of its own: a temporary name of this run
/// (never longer than a name's limit, which the sidecar's own name just fits for the longest
/// object names; one a crash left is removed by the next start's reindex).
fn write_sidecar(root: &std::path::Path, rel: &RelPath, text: &str) {
    let (dir, side) = sidecar(rel.as_str());
    let tmp = root
        .join(&dir)
        .join(super::write::temp_name(crate::io::random_bits()));
    let r = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, root.join(&dir).join(&side)));
    if let Err(e) = r {
        tracing::warn!(path = %rel, error = %e, "cannot write a pull cache sidecar");
    }
}

/// The credentials requests to a bucket are signed with: a key and its secret, and the
/// session token of temporary credentials (sent as `X-Amz-Security-Token`).
pub(crate) fn s3_credentials(
    key: &str,
    secret: &Secret,
    token: &Option<Secret>,
) -> rusty_s3::Credentials {
    match token {
        Some(t) => rusty_s3::Credentials::new_with_token(key, &secret.0, &t.0),
        None => rusty_s3::Credentials::new(key, &secret.0),
    }
}

/// What an S3 error body says: its `<Code>` (`NoSuchKey`, `NoSuchBucket`,
/// `SignatureDoesNotMatch`, `AccessDenied`, `RequestTimeTooSkewed`, `SlowDown`…) and
/// `<Message>`, either missing when the body has none or cannot be read.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct S3Error {
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
}

impl S3Error {
    pub(crate) fn parse(body: &str) -> S3Error {
        let element = |name: &str| {
            let (open, close) = (format!("<{name}>"), format!("</{name}>"));
            let start = body.find(&open)? + open.len();
            let len = body[start..].find(&close)?;
            let text = body[start..start + len].trim();
            // For a log line: one line, bounded, whatever the bucket sent.
            let text: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect();
            (!text.is_empty()).then_some(text)
        };
        S3Error {
            code: element("Code"),
            message: element("Message"),
        }
    }
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.message) {
            (Some(c), Some(m)) => write!(f, "{c}: {m}"),
            (Some(c), None) => f.write_str(c),
            (None, Some(m)) => f.write_str(m),
            (None, None) => f.write_str("(no error code in the body)"),
        }
    }
}

/// The error a bucket's answer carries in its body (read up to 16 KiB, within `idle_timeout`).
async fn s3_error(resp: http::Response<hyper::body::Incoming>, conf: &Conf) -> S3Error {
    let body = http_body_util::Limited::new(resp.into_body(), 16 << 10);
    match tokio::time::timeout(conf.cfg.idle_timeout, body.collect()).await {
        Ok(Ok(b)) => S3Error::parse(&String::from_utf8_lossy(&b.to_bytes())),
        _ => S3Error::default(),
    }
}

/// Whether a request failed because its connection closed before any of the response came
/// (hyper: an incomplete message on a connection it had reused, or one it canceled).
/// An error and what caused it, on one line: `client error (SendRequest): connection closed
/// before message completed`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether a request failed because its connection was closed before any byte of an answer
/// came: closed (EOF), or reset (the request reached a socket the peer had closed: RST, nginx's
/// way after a 412), or cancelled before it went out. Such a request may be sent again when
/// it is idempotent. A connection that could not be made at all is not this.
pub(crate) fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            );
        }
        source = s.source();
    }
    false
}

/// The `Age` an upstream sent (0 when none or invalid).
fn upstream_age(h: &HeaderMap) -> u64 {
    h.get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The `Cache-Control` a copy is kept and served with: the upstream's (every line of it), and
/// its `Expires` as the `max-age` it amounts to when that Cache-Control names no lifetime
/// (RFC 9111 §5.3: `max-age` and `s-maxage` win over `Expires`, nothing else does): a
/// `Cache-Control: public` with an `Expires` has a lifetime, which the copy follows and the
/// CDN, which is not sent `Expires`, is told.
fn kept_cache_control(h: &HeaderMap, received: SystemTime) -> Option<HeaderValue> {
    let cc = cache_control(h);
    let text = cc.as_ref().and_then(|v| v.to_str().ok());
    if text.is_some_and(|c| lifetime(c).is_some()) {
        return cc;
    }
    let Some(expires) = expires_as_max_age(h, received) else {
        return cc;
    };
    match text {
        Some(c) => HeaderValue::from_str(&format!("{c}, {}", expires.to_str().unwrap_or(""))).ok(),
        None => Some(expires),
    }
}

/// `Expires` as a `max-age`: its lifetime from the response's `Date` (RFC 9111 §4.2.1); an
/// invalid date means already expired (§5.3).
fn expires_as_max_age(h: &HeaderMap, received: SystemTime) -> Option<HeaderValue> {
    let expires = h.get(EXPIRES)?;
    let date = h
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .unwrap_or(received);
    let secs = expires
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .and_then(|e| e.duration_since(date).ok())
        .map_or(0, |d| d.as_secs());
    HeaderValue::from_str(&format!("max-age={secs}")).ok()
}

/// An entity tag for a copy whose upstream gave none (or one segd cannot keep): the time the
/// fill received its head, in nanoseconds, so two fills of one path never share one.
fn made_etag(received: SystemTime) -> HeaderValue {
    let ns = received
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    HeaderValue::from_str(&format!("\"p{ns:x}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// An object whose body comes from upstream: streamed from the fill as it grows
/// (`Source::Growing`; `len`: `None` for a chunked upstream body, whose length is known at its
/// end), or fetched for the request (`Source::Upstream`).
fn object(
    meta: &Meta,
    unstated: Option<u64>,
    len: Option<u64>,
    source: Source,
    status: &'static str,
) -> Object {
    let etag = meta
        .etag
        .clone()
        .unwrap_or(HeaderValue::from_static("\"0\""));
    let mut extra = meta.served_headers();
    if meta.age() == 0 {
        extra.remove(AGE);
    }
    Object {
        len,
        meta: ObjectMeta {
            len: meta.len,
            dev: 0,
            ino: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        },
        etag,
        last_modified: meta
            .last_modified
            .clone()
            .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
        undated: meta.last_modified.is_none(),
        growing: false,
        content_type: meta.content_type.clone(),
        cache_control: meta.served_cache_control(unstated),
        extra: Some(extra),
        cache_status: Some(status),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fill that has ended is out of the fills in flight the moment its waiters are told:
    /// the request after it starts its own fill rather than being handed the ended one's
    /// answer (an object replaced since, under the old validators).
    #[test]
    fn an_ended_fill_is_not_joined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[[volumes]]\npath = \"{v}\"\n[pull]\ncache_path = \"{c}\"\n[[pull.upstreams]]\nname = \"o\"\nurl = \"http://127.0.0.1:9\"\nprefixes = [\"/vod/\"]\n",
            v = dir.path().display(),
            c = dir.path().join("cache").display(),
        );
        let config =
            Config::parse(&text, std::path::Path::new("/etc/segd/t.toml")).expect("config");
        let metrics = Metrics::new().expect("metrics");
        let pull = Pull::new(&config, &metrics)
            .expect("pull")
            .expect("configured");
        let rel = crate::volumes::path::sanitize("/vod/a/b.ts").expect("path");
        let outcomes = [
            Outcome::Oversize(Arc::new(Meta::default()), "o".to_owned()),
            Outcome::Failed {
                timeout: false,
                rest: None,
            },
            Outcome::Revalidated,
            Outcome::NotFound {
                gone: false,
                until: None,
            },
        ];
        for outcome in outcomes {
            let fill = Arc::new(Fill {
                outcome: watch::Sender::new(None),
                void: std::sync::atomic::AtomicBool::new(false),
            });
            let lock = || pull.fills.lock().unwrap_or_else(|p| p.into_inner());
            lock().insert(rel.as_str().to_owned(), Arc::clone(&fill));
            let rx = fill.outcome.subscribe();
            pull.conclude(&rel, &fill, outcome);
            assert!(rx.borrow().is_some(), "the waiters are told");
            assert!(
                lock().get(rel.as_str()).is_none(),
                "no later request joins it"
            );
        }
    }

    /// A bucket's error body gives the log its code and message, on one bounded line.
    #[test]
    fn s3_error_bodies_name_their_code() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match.\nCheck your key.</Message><Resource>/media/a.ts</Resource></Error>";
        let e = S3Error::parse(body);
        assert_eq!(e.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            e.to_string(),
            "SignatureDoesNotMatch: The request signature we calculated does not match. Check your key."
        );
        assert_eq!(S3Error::parse("<html>oops</html>"), S3Error::default());
        assert_eq!(
            S3Error::parse("<Error><Code></Code></Error>").to_string(),
            "(no error code in the body)"
        );
        let long = format!("<Error><Code>{}</Code></Error>", "x".repeat(1000));
        assert_eq!(S3Error::parse(&long).code.map(|c| c.len()), Some(200));
    }

    /// A playlist rewritten for one viewer: private, for what is left of the lifetime the
    /// shared answer gives, capped by the token; `no-store` and nothing left are said so.
    #[test]
    fn private_derivatives() {
        let p = |cc: &str, age, cap| {
            let v = private_cache_control(&HeaderValue::from_str(cc).expect("value"), age, cap);
            v.to_str().expect("text").to_owned()
        };
        assert_eq!(p("public, max-age=30", 0, 3600), "private, max-age=30");
        assert_eq!(p("public, max-age=30", 12, 3600), "private, max-age=18");
        assert_eq!(p("public, max-age=600", 0, 40), "private, max-age=40");
        assert_eq!(p("max-age=60, s-maxage=5", 0, 3600), "private, max-age=5");
        // s-maxage is not a browser's: the smaller of the two.
        assert_eq!(
            p("public, s-maxage=60, max-age=5", 0, 3600),
            "private, max-age=5"
        );
        assert_eq!(p("public, s-maxage=60", 0, 3600), "private, max-age=60");
        assert_eq!(p("no-cache", 0, 3600), "private, no-cache");
        assert_eq!(p("max-age=10", 11, 3600), "private, no-cache");
        assert_eq!(p("max-age=10", 0, 0), "private, no-cache");
        assert_eq!(p("max-age=60, No-Store", 0, 3600), "private, no-store");
        // No lifetime named: the heuristic one.
        assert_eq!(p("private", 0, 3600), "private, max-age=1");
    }

    #[test]
    fn freshness_directives() {
        assert_eq!(directive_secs("public, max-age=30", "max-age"), Some(30));
        assert_eq!(directive_secs("Max-Age=30", "max-age"), Some(30));
        assert_eq!(directive_secs("max-age=\"7\"", "max-age"), Some(7));
        assert_eq!(directive_secs("max-age=x", "max-age"), None);
        assert_eq!(directive_secs("s-maxage=5, max-age=1", "max-age"), Some(1));
        let m = |cc: &str| Meta {
            cache_control: Some(HeaderValue::from_str(cc).expect("value")),
            ..Meta::default()
        };
        // A playlist (held 10 s when the upstream says nothing, say): s-maxage first, else
        // max-age, else the 10 s.
        let playlist = Some(10);
        assert_eq!(m("max-age=1, S-MaxAge=30").max_age(playlist), Some(30));
        assert_eq!(m("public").max_age(playlist), Some(10));
        assert_eq!(Meta::default().max_age(playlist), Some(10));
        // Segments and keys: immutable unless given a lifetime; `immutable` keeps them so.
        let segment = None;
        assert_eq!(Meta::default().max_age(segment), None);
        assert_eq!(m("public").max_age(segment), None);
        assert_eq!(m("max-age=1").max_age(segment), Some(1));
        assert_eq!(m("S-MaxAge=5, max-age=1").max_age(segment), Some(5));
        assert_eq!(m("max-age=60, Immutable").max_age(segment), None);
        // no-cache: stale at once, whatever else it says and whatever the class.
        assert_eq!(m("max-age=60, No-Cache").max_age(playlist), Some(0));
        assert_eq!(m("no-cache").max_age(segment), Some(0));
        assert_eq!(m("immutable, no-cache").max_age(segment), Some(0));
        assert_eq!(m("no-cache=\"set-cookie\"").max_age(playlist), Some(0));
        assert!(!m("no-cache").may_serve_stale());
        assert!(forbids_storing("public, No-Store"));
        assert!(m("max-age=1").may_serve_stale());
        assert!(Meta::default().may_serve_stale());
        for cc in [
            "max-age=1, must-revalidate",
            "Proxy-Revalidate",
            "public, s-maxage=5",
            "S-MAXAGE=\"5\"",
        ] {
            assert!(!m(cc).may_serve_stale(), "{cc}");
        }
        assert!(forbids_storing("private"));
    }

    /// Downstream, a copy never looks fresher than the edge holds it: a playlist without a
    /// lifetime of its own is held for segd's own one, which it goes out with (the handler's,
    /// or added to the upstream's directives); everything else goes out as the upstream sent
    /// it.
    #[test]
    fn served_cache_control_agrees_with_the_edges_freshness() {
        let m = |cc: Option<&'static str>| Meta {
            cache_control: cc.map(HeaderValue::from_static),
            ..Meta::default()
        };
        let served = |cc, unstated| m(cc).served_cache_control(unstated);
        let hv = |s: &'static str| Some(HeaderValue::from_static(s));
        let playlist = Some(10);
        assert_eq!(served(None, playlist), None);
        assert_eq!(served(Some("public"), playlist), hv("public, max-age=10"));
        assert_eq!(served(Some("max-age=30"), playlist), hv("max-age=30"));
        assert_eq!(served(Some("s-maxage=5"), playlist), hv("s-maxage=5"));
        assert_eq!(served(Some("no-cache"), playlist), hv("no-cache"));
        assert_eq!(served(Some("private"), playlist), hv("private"));
        assert_eq!(served(None, None), None);
        assert_eq!(served(Some("public"), None), hv("public"));
    }

    /// A playlist without a lifetime from its upstream is held as long as segd's own
    /// `[cache_control]` says of it (live or not); segments and keys for good.
    #[test]
    fn unstated_lifetime_is_segds_own_cache_control() {
        let config = |cc: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            let text = format!(
                "[[volumes]]\nname = \"v\"\npath = \"{}\"\n\n[cache_control]\n{cc}\n",
                dir.path().display()
            );
            let c = crate::config::Config::parse(&text, std::path::Path::new("t.toml"))
                .expect("config");
            Conf::build(&c).expect("conf")
        };
        let c = config("");
        assert_eq!(c.unstated_lifetime(ObjectClass::Playlist, false), Some(10));
        assert_eq!(c.unstated_lifetime(ObjectClass::Playlist, true), Some(1));
        assert_eq!(c.unstated_lifetime(ObjectClass::Segment, false), None);
        assert_eq!(c.unstated_lifetime(ObjectClass::Key, true), None);
        let c = config("playlists = \"public, max-age=5, s-maxage=30\"\nlive = \"no-cache\"");
        assert_eq!(c.unstated_lifetime(ObjectClass::Playlist, false), Some(30));
        assert_eq!(c.unstated_lifetime(ObjectClass::Playlist, true), Some(0));
        let c = config("playlists = \"public\"");
        assert_eq!(c.unstated_lifetime(ObjectClass::Playlist, false), Some(1));
    }

    #[test]
    fn html_for_a_media_path_is_a_soft_404() {
        let resp = |status: u16, ct: Option<&'static str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(ct) = ct {
                b = b.header(CONTENT_TYPE, ct);
            }
            b.body(()).expect("response")
        };
        let ts = HeaderValue::from_static("video/mp2t");
        let page = HeaderValue::from_static("text/html");
        for ct in ["text/html", "Text/HTML; Charset=UTF-8", " text/html ;q=1"] {
            let r = resp(200, Some(ct));
            assert_eq!(soft_404(&r, Some(&ts)), Some(ct), "{ct}");
            // A path segd itself serves as HTML ([types] html = "text/html"), or none.
            assert_eq!(soft_404(&r, Some(&page)), None, "{ct}");
            assert_eq!(soft_404(&r, None), None, "{ct}");
        }
        for ct in [
            Some("text/plain"),
            Some("text/htmlx"),
            Some("video/mp2t"),
            None,
        ] {
            assert_eq!(soft_404(&resp(200, ct), Some(&ts)), None, "{ct:?}");
        }
        assert_eq!(soft_404(&resp(404, Some("text/html")), Some(&ts)), None);
    }

    #[test]
    fn sidecar_keeps_the_upstreams_own_validators_apart() {
        let hv = HeaderValue::from_static;
        let m = Meta {
            len: 7,
            etag: Some(hv("\"p1\"")),
            last_modified: Some(hv("Wed, 01 Jan 2025 00:00:00 GMT")),
            upstream_etag: None,
            upstream_last_modified: Some(hv("Tue, 31 Dec 2024 00:00:00 GMT")),
            ..Meta::default()
        };
        let back = Meta::from_text(&m.to_text()).expect("parses");
        assert_eq!(back.etag, m.etag);
        assert_eq!(back.last_modified, m.last_modified);
        assert_eq!(back.upstream_etag, None);
        assert_eq!(back.upstream_last_modified, m.upstream_last_modified);
    }

    #[test]
    fn a_copys_fetch_time_is_kept_in_milliseconds_and_read_from_older_sidecars() {
        let m = Meta {
            len: 1,
            fetched_ms: 1_700_000_000_999,
            ..Meta::default()
        };
        let text = m.to_text();
        assert!(text.contains("fetched: 1700000000\n"), "{text}");
        let back = Meta::from_text(&text).expect("parses");
        assert_eq!(back.fetched_ms, 1_700_000_000_999);
        // `fetched-ms` wins wherever it comes; a sidecar of an older segd has seconds only.
        let first = Meta::from_text("fetched-ms: 5999\nlen: 1\nfetched: 5\n").expect("parses");
        assert_eq!(first.fetched_ms, 5999);
        let old = Meta::from_text("len: 1\nfetched: 5\n").expect("parses");
        assert_eq!(old.fetched_ms, 5000);
        // Just fetched is 0 s old, whatever second it is (not 1 s after a second's turn).
        let fresh = Meta {
            fetched_ms: now_ms(),
            ..Meta::default()
        };
        assert_eq!(fresh.age(), 0);
        let aged = Meta {
            fetched_ms: now_ms() - 2_500,
            ..Meta::default()
        };
        assert_eq!(aged.age(), 2);
    }

    #[test]
    fn only_entity_tags_are_kept() {
        let e = |s: &'static str| entity_tag(Some(HeaderValue::from_static(s)));
        for ok in ["\"a-1\"", "W/\"weak\"", "\"\"", "\"!#~\""] {
            assert!(e(ok).is_some(), "{ok}");
        }
        for bad in [
            "no-quotes",
            "\"open",
            "w/\"x\"",
            "\"a b\"",
            "\"a\"b\"",
            "\"",
            "W/x",
            "",
        ] {
            assert!(e(bad).is_none(), "{bad}");
        }
        let obs = HeaderValue::from_bytes(b"\"caf\xe9\"").expect("obs-text");
        assert!(entity_tag(Some(obs)).is_none());
    }

    #[test]
    fn chunked_is_the_last_coding() {
        let te = |lines: &[&'static str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(TRANSFER_ENCODING, HeaderValue::from_static(l));
            }
            chunked(&h)
        };
        assert!(!te(&[]));
        assert!(te(&["chunked"]));
        assert!(te(&["gzip, Chunked"]));
        assert!(te(&["gzip", "chunked"]));
        assert!(!te(&["chunked, gzip"]));
        assert!(!te(&["gzip"]));
    }

    #[test]
    fn framing_with_other_transfer_codings_is_unusable() {
        let framing = |lines: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in lines {
                h.append(*n, HeaderValue::from_static(v));
            }
            unusable_framing(&h)
        };
        assert_eq!(framing(&[]), None);
        assert_eq!(framing(&[("content-length", "5")]), None);
        assert_eq!(framing(&[("transfer-encoding", "chunked")]), None);
        assert_eq!(framing(&[("transfer-encoding", "Chunked")]), None);
        assert!(framing(&[("content-length", "5"), ("transfer-encoding", "chunked")]).is_some());
        for te in ["gzip, chunked", "gzip", "chunked, gzip", "identity"] {
            assert!(framing(&[("transfer-encoding", te)]).is_some(), "{te}");
        }
        assert!(framing(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked")
        ])
        .is_some());
        assert!(framing(&[("transfer-encoding", "chunked, chunked")]).is_some());
        let twice = [
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert!(framing(&twice).is_some());
    }

    #[test]
    fn cache_control_lines_combine() {
        let mut h = HeaderMap::new();
        assert_eq!(cache_control(&h), None);
        h.append(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        assert_eq!(
            cache_control(&h),
            Some(HeaderValue::from_static("max-age=60"))
        );
        h.append(CACHE_CONTROL, HeaderValue::from_static(""));
        h.append(CACHE_CONTROL, HeaderValue::from_static("private"));
        let cc = cache_control(&h).expect("combined");
        assert_eq!(cc, "max-age=60, private");
        assert!(forbids_storing(cc.to_str().expect("ascii")));
    }

    #[test]
    fn expires_becomes_a_lifetime() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let mut h = HeaderMap::new();
        h.insert(
            DATE,
            HeaderValue::from_static("Sun, 29 Nov 2026 17:00:00 GMT"),
        );
        h.insert(
            EXPIRES,
            HeaderValue::from_static("Sun, 29 Nov 2026 17:01:00 GMT"),
        );
        assert_eq!(
            expires_as_max_age(&h, at(0)),
            Some(HeaderValue::from_static("max-age=60"))
        );
        // In the past, or not a date: already expired (RFC 9111 §5.3).
        h.insert(EXPIRES, HeaderValue::from_static("0"));
        assert_eq!(
            expires_as_max_age(&h, at(0)),
            Some(HeaderValue::from_static("max-age=0"))
        );
        h.insert(
            EXPIRES,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(
            expires_as_max_age(&h, at(0)),
            Some(HeaderValue::from_static("max-age=0"))
        );
        h.remove(EXPIRES);
        assert_eq!(expires_as_max_age(&h, at(0)), None);
    }

    /// `Expires` counts when the Cache-Control names no lifetime, and only then.
    #[test]
    fn expires_joins_a_cache_control_without_a_lifetime() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let kept = |lines: &[&'static str], expires: bool| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(CACHE_CONTROL, HeaderValue::from_static(l));
            }
            h.insert(
                DATE,
                HeaderValue::from_static("Sun, 29 Nov 2026 17:00:00 GMT"),
            );
            if expires {
                h.insert(
                    EXPIRES,
                    HeaderValue::from_static("Sun, 29 Nov 2026 17:01:00 GMT"),
                );
            }
            kept_cache_control(&h, at(0)).map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(kept(&[], true), s("max-age=60"));
        assert_eq!(kept(&["public"], true), s("public, max-age=60"));
        assert_eq!(
            kept(&["public", "immutable"], true),
            s("public, immutable, max-age=60")
        );
        assert_eq!(kept(&["max-age=5"], true), s("max-age=5"));
        assert_eq!(kept(&["public, s-maxage=5"], true), s("public, s-maxage=5"));
        assert_eq!(kept(&["no-cache"], true), s("no-cache"));
        assert_eq!(kept(&["public"], false), s("public"));
        assert_eq!(kept(&[], false), None);
    }
}
