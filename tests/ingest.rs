//! Ingest (docs/ingest.md) against the running server: PUT/POST/DELETE with upload tokens.
//! Every test checks the HTTP answer and the disk (the object's bytes, no `.segd-tmp-*` left):
//! - curl uploads: Content-Length, chunked, `Expect: 100-continue`; 201/204 with the ETag that a
//!   later GET (HTTP/1.1 and h2c) reports; the token in each of the four places
//! - read-your-writes after a replace, with the old object in every cache, segments and playlists
//! - DELETE: 204/404/409/403 (depth), ffmpeg's chunked empty-bodied DELETE, empty directories,
//!   an HTTP/2 DELETE reset mid-body (removes nothing)
//! - refusals that write nothing: tokens, method, path, type, preconditions, sizes, timeouts,
//!   disconnects, malformed chunks, free space, upload slots, HTTP/2 trailers with pseudo-header
//!   fields, a PUT onto a directory (409); failed uploads leave no directory made for them,
//!   also when two shared a new one and the one that made it ended first
//! - temp files from a crash removed at start-up; placement next to the asset's other objects
//! - ffmpeg pushing live HLS (MPEG-TS and fMP4, with and without a persistent connection) and
//!   DASH (POST, PUT, low-latency chunked), read back with ffprobe
//! - ingest metrics
//! - pipelined uploads of a client that left without its answers (ffmpeg -http_persistent 1)
//!   are carried out; reads pipelined with them are not
//! - an HTTP/3 upload answered before its body is read: STOP_SENDING with H3_NO_ERROR
//!
//! What ffmpeg 5.1 actually sends (seen against a logging server): every upload and every DELETE
//! is `Transfer-Encoding: chunked` (a DELETE's body is just `0\r\n\r\n`); it never waits for the
//! answer (it sends the last chunk, reads whatever is already there without blocking, and closes);
//! segment and DELETE URLs are the playlist URL's directory plus the name, *without* its query, so
//! only the path-embedded token `/__token__=<token>/…` reaches segments; `-hls_flags
//! delete_segments` keeps `hls_delete_threshold` (at least 1) segment(s) older than the playlist.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use segd::auth::edgeauth::{sign, SignSpec};
use segd::auth::encode_token;
use segd::config::TokenAlgorithm;

use crate::util::h2raw::*;
use crate::util::*;

/// The `[[ingest.keys]]` secret of docs/ingest.md.
const UP_KEY: &str = "0123456789abcdef0123456789abcdef";
/// A `[[token.keys]]` (playback) secret: never authorises a write.
const PLAY_KEY: &str = "52a152a152a152a152a152a152a1";

/// An upload token: `[token]`'s defaults (name `__token__`, sha256), an `[[ingest.keys]]` secret.
fn upload_token(acl: &str) -> String {
    token_with_key(UP_KEY, acl)
}

/// The `[ingest]` section of docs/ingest.md; `over` replaces values by key (TOML literals).
fn ingest_section(over: &[(&str, &str)]) -> String {
    let defaults = [
        ("prefixes", r#"["/live/", "/vod/"]"#),
        ("max_body_bytes", r#""256MiB""#),
        ("body_timeout", r#""30s""#),
        ("reserve", r#""1GiB""#),
        ("min_delete_depth", "2"),
        ("max_uploads", "64"),
        ("fsync", "true"),
    ];
    let mut s = String::from("[ingest]\n");
    for (k, v) in defaults {
        let v = over
            .iter()
            .find(|(ok, _)| *ok == k)
            .map(|(_, ov)| *ov)
            .unwrap_or(v);
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push_str(&format!(
        "\n[[ingest.keys]]\nid = \"up1\"\nsecret = \"{UP_KEY}\"\n\n"
    ));
    s
}

/// A running segd with its volumes (`dir/<name>`), which `prepare` may fill before the start.
struct Rig {
    dir: tempfile::TempDir,
    srv: Server,
}

impl Rig {
    fn start(
        vols: &[&str],
        over: &[(&str, &str)],
        extra: &str,
        prepare: impl FnOnce(&Path),
    ) -> Rig {
        Rig::start_in(
            tempfile::tempdir().expect("tempdir"),
            vols,
            over,
            extra,
            prepare,
        )
    }

    fn start_in(
        dir: tempfile::TempDir,
        vols: &[&str],
        over: &[(&str, &str)],
        extra: &str,
        prepare: impl FnOnce(&Path),
    ) -> Rig {
        let paths: Vec<PathBuf> = vols.iter().map(|v| dir.path().join(v)).collect();
        for v in &paths {
            std::fs::create_dir_all(v).expect("mkdir volume");
        }
        prepare(dir.path());
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let cfg = config_for(&refs, &format!("{}{extra}", ingest_section(over)));
        let srv = Server::start(&cfg);
        Rig { dir, srv }
    }

    /// A public server (no `[token] protect`) with one volume `disk1`.
    fn simple(over: &[(&str, &str)]) -> Rig {
        Rig::start(&["disk1"], over, "", |_| {})
    }

    /// [`Rig::simple`] with a TLS listener too, its certificate from `pki`.
    fn tls(pki: &crate::tls::Pki, prepare: impl FnOnce(&Path)) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, _) = pki.leaf("segd-up");
        let tls = crate::tls::tls_config(dir.path(), &cert, &key);
        Rig::start_in(dir, &["disk1"], &[], &tls, prepare)
    }

    /// `target` on the TLS listener (ffmpeg does not verify the certificate unless told to).
    fn tls_url(&self, target: &str) -> String {
        format!(
            "https://{}{target}",
            self.srv.tls_addr.expect("tls listener")
        )
    }

    fn vol(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn url(&self, target: &str) -> String {
        self.srv.url(target)
    }

    async fn metrics(&self) -> String {
        get(&self.srv.admin_url("/metrics"), &[]).await.text()
    }
}

/// Deterministic bytes, different for each `seed`.
fn payload(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| {
            (i.wrapping_add(seed.wrapping_mul(7919))
                .wrapping_mul(2_654_435_761)
                >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Disk helpers

fn assert_no_tmp(root: &Path, what: &str) {
    let left = tmp_files(root);
    assert!(left.is_empty(), "{what}: temp files left: {left:?}");
}

/// Waits (up to 10 s) for every temp file under `root` to go: a failed upload removes its own.
async fn no_tmp_eventually(root: &Path, what: &str) {
    let gone = eventually(Duration::from_secs(10), async || tmp_files(root).is_empty()).await;
    assert!(
        gone,
        "{what}: temp files never removed: {:?}",
        tmp_files(root)
    );
}

/// A file's length and FNV-1a hash: compared, and printed on failure, instead of its bytes.
fn digest(bytes: &[u8]) -> (usize, u64) {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (bytes.len(), h)
}

/// Every file and directory under `root` (relative path → digest; `None` for a directory).
fn tree(root: &Path) -> BTreeMap<String, Option<(usize, u64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let kind = e.file_type().expect("file type");
            if kind.is_dir() {
                out.insert(rel, None);
                stack.push(path);
            } else if kind.is_symlink() {
                // Recorded, not followed.
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(digest(&std::fs::read(&path).expect("read file"))));
            }
        }
    }
    out
}

/// Names of the regular files directly in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The file holds exactly `want` (without printing large bodies on failure).
fn assert_file(path: &Path, want: &[u8], what: &str) {
    let got = read(path);
    assert!(
        got == want,
        "{what}: {} holds {} bytes, not the {} expected",
        path.display(),
        got.len(),
        want.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Clients

/// GET over HTTP/1.1 (`h2` false) or h2c.
async fn get_on(url: &str, h2: bool) -> Resp {
    request("GET", url, &[], h2).await
}

/// What curl saw: every status line (interim 100 included) and the final response's headers.
#[derive(Debug)]
struct Curl {
    statuses: Vec<u16>,
    headers: Vec<(String, String)>,
}

impl Curl {
    fn status(&self) -> u16 {
        self.statuses.last().copied().unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn etag(&self) -> String {
        self.header("etag")
            .unwrap_or_else(|| panic!("no ETag: {self:?}"))
            .to_string()
    }
}

/// Runs `curl -sS -o /dev/null -D - ARGS` (with `stdin` piped in when given).
fn curl(args: &[&str], stdin: Option<&[u8]>) -> Curl {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "/dev/null", "-D", "-"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("run curl (Debian package curl)");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("curl stdin");
        // A refusal before the body (413, 507, ...) can end curl before it took all of it: its
        // answer says what happened, the pipe's error does not.
        if let Err(e) = pipe.write_all(data) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe,
                "write to curl: {e}"
            );
        }
    }
    let out = child.wait_with_output().expect("curl output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut statuses = Vec::new();
    let mut headers = Vec::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("HTTP/") {
            statuses.push(
                line.split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            );
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    assert!(
        !statuses.is_empty(),
        "curl {args:?} got no answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Curl { statuses, headers }
}

/// `curl -T FILE URL`: a PUT with Content-Length.
fn curl_put_file(url: &str, file: &Path, extra: &[&str]) -> Curl {
    let f = file.to_str().expect("utf-8 path");
    let mut args = vec!["-T", f];
    args.extend_from_slice(extra);
    args.push(url);
    curl(&args, None)
}

/// `curl -T - URL` with `Transfer-Encoding: chunked` and no `Expect`, body from stdin.
fn curl_put_chunked(url: &str, body: &[u8]) -> Curl {
    curl(
        &[
            "-T",
            "-",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect:",
            url,
        ],
        Some(body),
    )
}

/// PUT `body` with curl (Content-Length) through a temp file.
fn curl_put(url: &str, body: &[u8], extra: &[&str]) -> Curl {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), body).expect("write body");
    curl_put_file(url, f.path(), extra)
}

fn curl_delete(url: &str) -> Curl {
    curl(&["-X", "DELETE", url], None)
}

/// A TCP connection with a 15 s read timeout.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    s
}

/// A PUT of `body` (with its `Content-Length`) to `target`, of which the first `sent` bytes
/// are sent; the rest is the caller's to send.
fn start_put(addr: SocketAddr, target: &str, body: &[u8], sent: usize) -> TcpStream {
    let mut s = connect(addr);
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: segd\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&body[..sent]).expect("first part");
    s
}

/// Reads one response head (through the blank line); empty when the connection ends first.
fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. Uploads with curl

/// `segd sign --upload` prints commands its own token authorises, whatever the ACL's wildcards:
/// cut at the ACL's last `/`, `/live/show1*` and `/live/show?/*` printed URLs under `/live/`,
/// outside the ACL, and every upload of the printed commands was 403 (acceptance P3). An ACL
/// with no `*` covers one path: the output says so.
#[tokio::test]
async fn printed_upload_commands_write_inside_their_acl() {
    let rig = Rig::simple(&[]);
    for (acl, writes) in [
        ("/live/show1*", true),
        ("/live/show?/*", true),
        ("/live/show2/*", true),
        ("/live/show3/", false),
    ] {
        let out = Command::new(BIN)
            .args(["sign", "--config"])
            .arg(&rig.srv.config)
            .args(["--upload", "--acl", acl])
            .output()
            .expect("segd sign");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let url = (text.lines())
            .find_map(|l| l.strip_prefix("curl -T FILE '"))
            .and_then(|u| u.strip_suffix('\''))
            .unwrap_or_else(|| panic!("{acl}: no curl command: {text}"));
        // The printed URL names the configured listener; this segd listens on another port.
        let target = &url[url
            .find("/__token__=")
            .expect("the token as a path segment")..];
        let r = curl_put(&rig.url(target), b"x", &[]);
        // The cookie form, as `sign --help` promises (acceptance L4): a replace, 204.
        let (cookie, cookie_url) = (text.lines())
            .find_map(|l| l.strip_prefix("cookie: curl -b '"))
            .and_then(|l| l.split_once("' -T FILE '"))
            .unwrap_or_else(|| panic!("{acl}: no cookie command: {text}"));
        let cookie_url = cookie_url.strip_suffix('\'').expect("quoted URL");
        let path = &cookie_url[cookie_url.find("/live/").expect("a path")..];
        let c = curl_put(&rig.url(path), b"y", &["-b", cookie]);
        let note = text.contains("# note: this ACL has no '*'");
        if writes {
            assert_eq!(r.status(), 201, "{acl}: {url}");
            assert_eq!(c.status(), 204, "{acl}: cookie {cookie} to {path}");
            assert!(!note, "{acl}: {text}");
        } else {
            assert_eq!(r.status(), 403, "{acl}: {url}");
            assert!(
                note,
                "{acl}: the output says the ACL covers one path: {text}"
            );
        }
    }
}

#[tokio::test]
async fn curl_uploads_create_replace_and_read_back() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/c1/*");
    let url = rig.url(&q("/live/c1/a.ts", &tok));
    let plain = rig.url("/live/c1/a.ts");
    let files = tempfile::tempdir().expect("tempdir");

    // curl -T file: Content-Length; a new object is 201 with ETag and Location.
    let a = payload(300_000, 1);
    std::fs::write(files.path().join("a"), &a).expect("write");
    let r = curl_put_file(&url, &files.path().join("a"), &[]);
    assert_eq!(r.status(), 201, "create: {r:?}");
    let etag_a = r.etag();
    let loc = r.header("location").expect("Location on 201");
    assert!(loc.contains("/live/c1/a.ts"), "Location: {loc}");
    assert_file(&vol.join("live/c1/a.ts"), &a, "bytes on disk");
    assert_no_tmp(&vol, "after 201");
    for h2 in [false, true] {
        let g = get_on(&plain, h2).await;
        assert_eq!(g.status, 200, "h2={h2}");
        assert!(
            g.body.as_ref() == a.as_slice(),
            "h2={h2}: the uploaded bytes"
        );
        assert_eq!(g.header("etag"), Some(etag_a.as_str()), "h2={h2}");
        assert_eq!(g.header("content-type"), Some("video/mp2t"));
    }

    // Chunked from stdin: a replace is 204 with a new ETag.
    let b = payload(150_001, 2);
    let r = curl_put_chunked(&url, &b);
    assert_eq!(r.statuses, vec![204], "chunked replace: {r:?}");
    let etag_b = r.etag();
    assert_ne!(etag_b, etag_a, "a replace has a new ETag");
    assert_file(&vol.join("live/c1/a.ts"), &b, "chunked replace");
    assert_no_tmp(&vol, "after chunked 204");
    for h2 in [false, true] {
        let g = get_on(&plain, h2).await;
        assert!(g.body.as_ref() == b.as_slice(), "h2={h2}: the new bytes");
        assert_eq!(g.header("etag"), Some(etag_b.as_str()), "h2={h2}");
    }

    // Expect: 100-continue (2 MiB, forced): an acceptable upload gets the 100, then 204.
    let c = payload(2 << 20, 3);
    std::fs::write(files.path().join("c"), &c).expect("write");
    let r = curl_put_file(
        &url,
        &files.path().join("c"),
        &["-H", "Expect: 100-continue"],
    );
    assert_eq!(r.statuses, vec![100, 204], "100-continue replace: {r:?}");
    let etag_c = r.etag();
    assert!(etag_c != etag_a && etag_c != etag_b, "new ETag {etag_c}");
    assert_file(&vol.join("live/c1/a.ts"), &c, "100-continue replace");
    assert_no_tmp(&vol, "after 100-continue 204");
    for h2 in [false, true] {
        let g = get_on(&plain, h2).await;
        assert!(g.body.as_ref() == c.as_slice(), "h2={h2}: the 2 MiB body");
        assert_eq!(g.header("etag"), Some(etag_c.as_str()), "h2={h2}");
        assert_eq!(g.header("content-length"), Some("2097152"));
    }

    // Chunked create (a playlist in a directory that does not exist yet): 201.
    let m3u8 = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\na.ts\n".to_vec();
    let r = curl_put_chunked(&rig.url(&q("/live/c1/new/index.m3u8", &tok)), &m3u8);
    assert_eq!(r.status(), 201, "chunked create: {r:?}");
    let etag_m = r.etag();
    assert_eq!(read(&vol.join("live/c1/new/index.m3u8")), m3u8);
    for h2 in [false, true] {
        let g = get_on(&rig.url("/live/c1/new/index.m3u8"), h2).await;
        assert_eq!(g.body.as_ref(), m3u8.as_slice(), "h2={h2}");
        assert_eq!(g.header("etag"), Some(etag_m.as_str()), "h2={h2}");
    }
    // POST is an upload too.
    let r = curl(
        &[
            "-X",
            "POST",
            "--data-binary",
            "posted",
            &rig.url(&q("/live/c1/p.ts", &tok)),
        ],
        None,
    );
    assert_eq!(r.status(), 201, "POST create: {r:?}");
    assert_eq!(read(&vol.join("live/c1/p.ts")), b"posted");

    // Location is a URI reference (RFC 9110 §10.2.2): a name with a space, `?`, `#`, `%` or a
    // non-ASCII letter is percent-encoded, and following it reaches the object just made.
    for (target, file) in [
        ("/live/c1/a%20b.ts", "a b.ts"),
        ("/live/c1/q%3Fx.ts", "q?x.ts"),
        ("/live/c1/f%23x.ts", "f#x.ts"),
        ("/live/c1/p%25x.ts", "p%x.ts"),
        ("/live/c1/%C3%A9t%C3%A9.ts", "été.ts"),
    ] {
        let r = curl_put(&rig.url(&q(target, &tok)), file.as_bytes(), &[]);
        assert_eq!(r.status(), 201, "{target}: {r:?}");
        assert_eq!(r.header("location"), Some(target), "{target}: {r:?}");
        assert_eq!(read(&vol.join("live/c1").join(file)), file.as_bytes());
        let g = get_on(&rig.url(target), false).await;
        assert_eq!(g.body.as_ref(), file.as_bytes(), "GET Location {target}");
    }
    assert_no_tmp(&vol, "end");
}

#[tokio::test]
async fn upload_token_in_every_location() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/loc/*");
    let cookie = format!("__token__={tok}");
    let header = format!("__token__: {tok}");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("query", rig.url(&q("/live/loc/q.ts", &tok)), vec![]),
        ("path", rig.url(&p("/live/loc/p.ts", &tok)), vec![]),
        ("cookie", rig.url("/live/loc/c.ts"), vec!["-b", &cookie]),
        ("header", rig.url("/live/loc/h.ts"), vec!["-H", &header]),
    ];
    for (i, (place, url, extra)) in cases.iter().enumerate() {
        let body = payload(1000 + i, 10 + i as u32);
        let r = curl_put(url, &body, extra);
        assert_eq!(r.status(), 201, "{place}: {r:?}");
        let name = format!("{}.ts", &place[..1]);
        assert_eq!(read(&vol.join("live/loc").join(&name)), body, "{place}");
    }
    // The same forms over h2c (hyper): path-embedded and header.
    let r = send(
        "PUT",
        &rig.url(&p("/live/loc/h2p.ts", &tok)),
        &[],
        b"over h2c",
        true,
    )
    .await;
    assert_eq!(r.status, 201, "h2c path token");
    assert_eq!(r.version, http::Version::HTTP_2);
    let r = send(
        "PUT",
        &rig.url("/live/loc/h2p.ts"),
        &[("__token__", &tok)],
        b"over h2c again",
        true,
    )
    .await;
    assert_eq!(r.status, 204, "h2c header token, replace");
    assert_eq!(read(&vol.join("live/loc/h2p.ts")), b"over h2c again");
    assert_no_tmp(&vol, "end");
}

// ---------------------------------------------------------------------------------------------
// 2. Read your writes

#[tokio::test]
async fn read_your_writes_after_replace() {
    let old_seg = payload(200_000, 20);
    let old_pl =
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\nseg.ts\n";
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        let dir = d.join("disk1/live/r1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("seg.ts"), &old_seg).expect("write");
        std::fs::write(dir.join("index.m3u8"), old_pl).expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/r1/*");
    for (path, old) in [
        ("/live/r1/seg.ts", old_seg.clone()),
        ("/live/r1/index.m3u8", old_pl.to_vec()),
    ] {
        // Warm every cache: the open-file cache (HTTP/1.1), the body cache (h2c).
        for _ in 0..3 {
            for h2 in [false, true] {
                let g = get_on(&rig.url(path), h2).await;
                assert_eq!(g.status, 200);
                assert!(
                    g.body.as_ref() == old.as_slice(),
                    "{path} h2={h2}: old bytes"
                );
            }
        }
        let is_pl = path.ends_with(".m3u8");
        for round in 0..4u32 {
            // Some rounds keep the original size (a cache keyed on size alone would hit).
            let new = if is_pl {
                format!(
                    "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{}\n#EXTINF:2.0,\nseg.ts\n{}",
                    round + 1,
                    "#\n".repeat(round as usize % 2)
                )
                .into_bytes()
            } else if round % 2 == 1 {
                payload(old_seg.len(), 100 + round)
            } else {
                payload(123_457 + round as usize, 100 + round)
            };
            // Replace over HTTP/1.1 (curl) in even rounds, over h2c (hyper) in odd ones.
            let etag = if round % 2 == 0 {
                let r = curl_put(&rig.url(&q(path, &tok)), &new, &[]);
                assert_eq!(r.status(), 204, "{path} round {round}: {r:?}");
                r.etag()
            } else {
                let r = send("PUT", &rig.url(&q(path, &tok)), &[], &new, true).await;
                assert_eq!(r.status, 204, "{path} round {round} over h2c");
                r.header("etag").expect("ETag on 204").to_string()
            };
            for h2 in [false, true] {
                let g = get_on(&rig.url(path), h2).await;
                assert_eq!(g.status, 200);
                assert!(
                    g.body.as_ref() == new.as_slice(),
                    "{path} round {round} h2={h2}: the first GET after the 204 has the new bytes"
                );
                assert_eq!(g.header("etag"), Some(etag.as_str()), "{path} h2={h2}");
                assert_eq!(
                    g.header("content-length"),
                    Some(new.len().to_string().as_str())
                );
                // The new ETag validates the new object.
                let c = request("GET", &rig.url(path), &[("if-none-match", &etag)], h2).await;
                assert_eq!(c.status, 304, "{path} h2={h2}");
            }
            assert_file(&vol.join(&path[1..]), &new, path);
        }
    }
    // A 404 is not remembered past the 201.
    for h2 in [false, true] {
        assert_eq!(get_on(&rig.url("/live/r1/late.ts"), h2).await.status, 404);
    }
    let r = curl_put(&rig.url(&q("/live/r1/late.ts", &tok)), b"late", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    for h2 in [false, true] {
        let g = get_on(&rig.url("/live/r1/late.ts"), h2).await;
        assert_eq!(g.status, 200, "h2={h2}: GET right after the 201");
        assert_eq!(g.body.as_ref(), b"late");
    }
    assert_no_tmp(&vol, "end");
}

// ---------------------------------------------------------------------------------------------
// 3. DELETE

/// An upload in progress into a directory whose only other file a DELETE removes: the
/// DELETE prunes the directory it emptied (an upload's unnamed temporary file does not keep
/// it from being removed, as a named one did), and the upload, at its commit, finds the
/// directory gone and makes it again: 201, and the object is there.
#[tokio::test]
async fn an_upload_whose_directory_a_delete_prunes_meanwhile_lands() {
    let rig = Rig::start(&["disk1"], &[], "", |_| {});
    let vol = rig.vol("disk1");
    let tok = upload_token("/*");
    let r = curl_put(&rig.url(&q("/vod/solo/a/old.ts", &tok)), b"old", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    // Longer than one write buffer: its file exists from the first bytes on.
    let total = 600 * 1024;
    let body = payload(total, 3);
    let mut s = start_put(
        rig.srv.addr,
        &q("/vod/solo/a/new.ts", &tok),
        &body,
        400 * 1024,
    );
    assert!(
        eventually(Duration::from_secs(5), async || tmp_files(&vol).len() == 1).await,
        "the upload has its temporary file: {:?}",
        tmp_files(&vol)
    );
    let r = curl_delete(&rig.url(&q("/vod/solo/a/old.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    let pruned = !vol.join("vod/solo").exists();
    s.write_all(&body[400 * 1024..]).expect("the rest");
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        std::fs::read(vol.join("vod/solo/a/new.ts")).expect("new") == body,
        "the upload's bytes (its directory was pruned meanwhile: {pruned})"
    );
    assert!(!vol.join("vod/solo/a/old.ts").exists());
    no_tmp_eventually(&vol, "after the commit").await;
}

#[tokio::test]
async fn delete_objects_and_empty_directories() {
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        // A directory whose name has a served extension.
        let dir = d.join("disk1/live/d9/dir.ts");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("inner.ts"), b"inner").expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/*");
    let up = |path: &str, body: &[u8]| {
        let r = curl_put(&rig.url(&q(path, &tok)), body, &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
    };
    up("/live/d1/a/b/x.ts", b"x");
    up("/live/d1/keep.ts", b"keep");
    up("/vod/v1/only.ts", b"only");
    assert!(
        vol.join("live/d1/a/b").is_dir(),
        "intermediate directories created"
    );

    // 204, then 404 on every protocol, even with the object in the caches.
    for h2 in [false, true] {
        assert_eq!(get_on(&rig.url("/live/d1/a/b/x.ts"), h2).await.status, 200);
    }
    let r = curl_delete(&rig.url(&q("/live/d1/a/b/x.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    for h2 in [false, true] {
        assert_eq!(
            get_on(&rig.url("/live/d1/a/b/x.ts"), h2).await.status,
            404,
            "h2={h2}: GET after DELETE"
        );
    }
    assert!(!vol.join("live/d1/a/b/x.ts").exists());
    assert!(
        !vol.join("live/d1/a").exists(),
        "empty directories removed after the last DELETE"
    );
    assert_eq!(
        read(&vol.join("live/d1/keep.ts")),
        b"keep",
        "a non-empty one stays"
    );

    // Absent: 404.
    let r = curl_delete(&rig.url(&q("/live/d1/a/b/x.ts", &tok)));
    assert_eq!(r.status(), 404, "{r:?}");
    let r = curl_delete(&rig.url(&q("/live/nothing/here.ts", &tok)));
    assert_eq!(r.status(), 404, "{r:?}");

    // The last object under a prefix: its directories go, the prefix directory stays.
    let r = curl_delete(&rig.url(&q("/vod/v1/only.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    assert!(
        !vol.join("vod/v1").exists(),
        "empty asset directory removed"
    );
    assert!(
        vol.join("vod").is_dir(),
        "never the prefix directory itself"
    );
    assert!(vol.is_dir());

    // A directory: 409, nothing removed, whatever its name looks like and with or without a
    // trailing slash. A file of a type segd does not serve is not segd's to delete (404), and
    // `file/` names no directory (404): both stay.
    std::fs::write(vol.join("live/d9/notes.txt"), b"operator's").expect("write");
    let before = tree(&vol);
    for (path, want) in [
        ("/live/d9/dir.ts", 409),
        ("/live/d9/dir.ts/", 409),
        ("/live/d9", 409),
        ("/live/d9/", 409),
        ("/live/d9/notes.txt", 404),
        ("/live/d9/dir.ts/inner.ts/", 404),
        ("/live/d9/absent/", 404),
    ] {
        let r = curl_delete(&rig.url(&q(path, &tok)));
        assert_eq!(r.status(), want, "DELETE {path}: {r:?}");
    }
    assert_eq!(tree(&vol), before, "nothing deleted");
    let r = curl_delete(&rig.url("/live/d9/"));
    assert_eq!(r.status(), 403, "no token, even for a directory: {r:?}");

    // ffmpeg's form: chunked, the body only the last chunk, over a raw socket.
    up("/live/d2/f.ts", b"ffmpeg deletes me");
    let req = format!(
        "DELETE {} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\nConnection: close\r\nHost: {}\r\nIcy-MetaData: 1\r\n\r\n0\r\n\r\n",
        p("/live/d2/f.ts", &tok),
        rig.srv.addr
    );
    let resp = raw(rig.srv.addr, req.as_bytes(), Duration::from_secs(10));
    assert_eq!(raw_status(&resp), 204, "{}", String::from_utf8_lossy(&resp));
    assert!(!vol.join("live/d2").exists(), "deleted, and its directory");
    assert_eq!(get_on(&rig.url("/live/d2/f.ts"), false).await.status, 404);
    assert_no_tmp(&vol, "end");
}

/// A DELETE removes the object from every volume that has it. Two copies happen when an
/// object is replaced while the volume holding it is down (the upload lands on another); after
/// the DELETE's 204 neither copy may be served, nor the directories they leave empty kept.
#[tokio::test]
async fn delete_removes_every_copy() {
    let rig = Rig::start(&["disk1", "disk2"], &[], "", |d| {
        for (vol, body) in [("disk1", "one"), ("disk2", "two")] {
            std::fs::create_dir_all(d.join(vol).join("live/dup")).expect("mkdir");
            std::fs::write(d.join(vol).join("live/dup/a.ts"), body).expect("write");
        }
    });
    let tok = upload_token("/live/*");
    let url = rig.url("/live/dup/a.ts");
    assert_eq!(get_on(&url, false).await.status, 200);
    let r = curl_delete(&rig.url(&q("/live/dup/a.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    for h2 in [false, true] {
        let g = get_on(&url, h2).await;
        assert_eq!(g.status, 404, "h2={h2}: the other copy is served: {g:?}");
    }
    for vol in ["disk1", "disk2"] {
        assert!(
            !rig.vol(vol).join("live/dup").exists(),
            "{vol}: copy or its directory left"
        );
    }
    let r = curl_delete(&rig.url(&q("/live/dup/a.ts", &tok)));
    assert_eq!(r.status(), 404, "{r:?}");
}

/// A volume that has only been written to since the start, whose disk then stops answering
/// (the debug builds' `.segd-fault-hang`), is marked down by its probe like one that was read
/// from: an upload's object is what the probe reads from the device. Probed from cached
/// metadata alone, it stayed healthy for the whole hang (acceptance F2).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn a_volume_only_written_to_is_marked_down_when_its_disk_hangs() {
    let rig = Rig::start(&["disk1", "disk2"], &[("fsync", "false")], "", |_| {});
    let tok = upload_token("/vod/*");
    let r = curl_put(
        &rig.url(&q("/vod/hw/a.ts", &tok)),
        b"written, never read",
        &[],
    );
    assert_eq!(r.status(), 201, "{r:?}");
    let on = ["disk1", "disk2"]
        .into_iter()
        .find(|v| rig.vol(v).join("vod/hw/a.ts").is_file())
        .expect("the upload is on a volume");
    std::fs::write(rig.vol(on).join(".segd-fault-hang"), b"").expect("inject");
    let healthy = format!("segd_volume_healthy{{volume=\"{on}\"}}");
    let down = eventually(Duration::from_secs(10), async || {
        metric(
            &get(&rig.srv.admin_url("/metrics"), &[]).await.text(),
            &healthy,
        ) == Some(0.0)
    })
    .await;
    assert!(down, "{on} is marked down: {}", rig.srv.stderr());
    std::fs::remove_file(rig.vol(on).join(".segd-fault-hang")).expect("heal");
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &get(&rig.srv.admin_url("/metrics"), &[]).await.text(),
            &healthy
        ) == Some(1.0))
        .await,
        "{on} is back once its disk answers"
    );
}

/// Hangs every disk call on volume `vol` (the debug builds' `.segd-fault-hang-calls`), starts
/// `n` uploads of `dir/h<i>.ts` (curl, on threads; their statuses come back when joined), waits
/// until `calls` of them are in the volume's calls (`segd_volume_disk_calls`), then for the
/// 2 s stall after which more are refused. Returns the trigger (remove it to heal) and the
/// uploads.
async fn hang_with_uploads(
    srv: &Server,
    vol: (&str, &Path),
    dir: &str,
    n: usize,
    calls: f64,
) -> (PathBuf, Vec<std::thread::JoinHandle<u16>>) {
    let tok = upload_token("/vod/*");
    let hang = vol.1.join(".segd-fault-hang-calls");
    std::fs::write(&hang, b"").expect("inject");
    let uploads = (0..n)
        .map(|i| {
            let url = srv.url(&q(&format!("{dir}/h{i}.ts"), &tok));
            std::thread::spawn(move || curl_put(&url, b"h", &["--max-time", "60"]).status())
        })
        .collect();
    let series = format!("segd_volume_disk_calls{{volume=\"{}\"}}", vol.0);
    assert!(
        eventually(Duration::from_secs(10), async || metric(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            &series
        ) == Some(calls))
        .await,
        "{calls} calls taken on {}",
        vol.0
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    (hang, uploads)
}

/// A disk that stops answering under a burst of uploads (the debug builds'
/// `.segd-fault-hang-calls`: every open, look-up and upload write on the volume blocks while it
/// exists; its probe does not see it) holds half of the blocking pool, not all of it, and is
/// marked down at the first call it refuses: a cold read on the other volume is answered at
/// once, a new upload goes to the other volume at once (journaled) rather than waiting, a
/// DELETE removes the other volume's copy, and everything works again when the disk answers
/// (the volume is taken back only then), with no temporary file left. 20 uploads stuck on the
/// hung disk took every thread of the pool (16 here), and the other volume's reads and
/// uploads waited as long as the disk did (acceptance F2, under load).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn a_hung_disk_under_upload_load_holds_half_the_blocking_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    std::fs::create_dir_all(d1.join("vod/fine")).expect("mkdir");
    std::fs::create_dir_all(d2.join("vod/hung")).expect("mkdir");
    std::fs::write(d1.join("vod/fine/cold.ts"), b"never read yet").expect("write");
    let cfg = config_for(&[&d1, &d2], &ingest_section(&[]))
        .replace("workers = 2\n", "workers = 2\nblocking_threads = 16\n");
    let srv = Server::start(&cfg);
    let tok = upload_token("/vod/*");
    let (hang, uploads) = hang_with_uploads(&srv, ("disk2", &d2), "/vod/hung", 20, 8.0).await;
    let cold = tokio::time::timeout(
        Duration::from_secs(3),
        get(&srv.url("/vod/fine/cold.ts"), &[]),
    )
    .await
    .expect("a read on the other volume is answered at once, not after the hang");
    assert_eq!(cold.status, 200);
    assert_eq!(&cold.body[..], b"never read yet");
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"disk2\"}"),
        Some(0.0),
        "marked down at the first refused call: {m}"
    );
    assert_eq!(
        metric(&m, "segd_volume_disk_calls{volume=\"disk2\"}"),
        Some(8.0),
        "half of the 16 threads held by the hung disk"
    );
    assert!(
        metric(&m, "segd_volume_disk_calls_refused_total{volume=\"disk2\"}")
            .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    let url = srv.url(&q("/vod/fine/new.ts", &tok));
    let t0 = Instant::now();
    let r = tokio::task::spawn_blocking(move || curl_put(&url, b"new", &["--max-time", "20"]))
        .await
        .expect("curl");
    assert_eq!(r.status(), 201, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "placed at once, not after the hang: {:?}",
        t0.elapsed()
    );
    assert!(d1.join("vod/fine/new.ts").is_file(), "on the other volume");
    let url = srv.url(&q("/vod/fine/cold.ts", &tok));
    let r = tokio::task::spawn_blocking(move || curl_delete(&url))
        .await
        .expect("curl");
    assert_eq!(r.status(), 204, "{r:?}");
    assert!(!d1.join("vod/fine/cold.ts").exists());
    std::fs::remove_file(&hang).expect("heal");
    let statuses: Vec<u16> = uploads
        .into_iter()
        .map(|t| t.join().expect("upload thread"))
        .collect();
    assert!(
        statuses.iter().all(|s| [201, 503].contains(s)),
        "{statuses:?}"
    );
    // The 8 in their calls finish once the disk answers (201); those refused got 503; those
    // placed after disk2 was marked down went to disk1 (201).
    assert!(
        statuses.iter().filter(|s| **s == 201).count() >= 8 && statuses.contains(&503),
        "{statuses:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            "segd_volume_healthy{volume=\"disk2\"}"
        ) == Some(1.0))
        .await,
        "disk2 is back once its calls return"
    );
    let url = srv.url(&q("/vod/hung/after.ts", &tok));
    let r = tokio::task::spawn_blocking(move || curl_put(&url, b"after", &[]))
        .await
        .expect("curl");
    assert_eq!(r.status(), 201, "{r:?}");
    for d in [&d1, &d2] {
        no_tmp_eventually(d, "after the hang").await;
    }
    let log = srv.stderr();
    assert!(
        log.contains("new calls on it are refused (503) until one returns")
            && log.contains("8 calls on its disk have not returned for 2 s"),
        "{log}"
    );
}

/// A new upload is placed without asking a volume marked down whether it holds the asset: the
/// question could wait as long as its disk (the debug builds' `.segd-fault-hang-calls`), and
/// such a volume cannot take the object anyway. Every new upload hung behind the hung disk
/// until 32 of them were stuck on it (acceptance F2, recheck 3).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn uploads_never_ask_a_volume_marked_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    std::fs::create_dir_all(&d1).expect("mkdir");
    std::fs::create_dir_all(d2.join("vod/old")).expect("mkdir");
    std::fs::write(d2.join("vod/old/a.ts"), b"on disk2").expect("write");
    let srv = Server::start(&config_for(&[&d1, &d2], &ingest_section(&[])));
    // Read once: the probe then reads it from the device, and so sees the hang.
    assert_eq!(get(&srv.url("/vod/old/a.ts"), &[]).await.status, 200);
    for t in [".segd-fault-hang", ".segd-fault-hang-calls"] {
        std::fs::write(d2.join(t), b"").expect("inject");
    }
    let healthy = "segd_volume_healthy{volume=\"disk2\"}";
    assert!(
        eventually(Duration::from_secs(10), async || metric(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            healthy
        ) == Some(0.0))
        .await,
        "disk2 is marked down: {}",
        srv.stderr()
    );
    let tok = upload_token("/vod/*");
    let url = srv.url(&q("/vod/new/a.ts", &tok));
    let t0 = Instant::now();
    let r = tokio::task::spawn_blocking(move || curl_put(&url, b"new", &["--max-time", "10"]))
        .await
        .expect("curl");
    assert_eq!(r.status(), 201, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(d1.join("vod/new/a.ts").is_file(), "placed on disk1");
    for t in [".segd-fault-hang", ".segd-fault-hang-calls"] {
        std::fs::remove_file(d2.join(t)).expect("heal");
    }
}

/// An upload under way on a disk that stops answering (the debug builds'
/// `.segd-fault-hang-calls`) is refused (503) at its next write once the calls in progress
/// there have not returned for 2 s, and its temporary file, which cannot be removed while the
/// disk does not answer (the unlink would hold one more thread as long), is left to the volume,
/// which removes it once its disk answers: nothing is left, and nothing is put in place.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn an_upload_cut_off_by_a_hung_disk_leaves_its_file_to_the_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d1 = dir.path().join("disk1");
    std::fs::create_dir_all(d1.join("vod/cut")).expect("mkdir");
    let cfg = config_for(&[&d1], &ingest_section(&[("fsync", "false")]))
        .replace("workers = 2\n", "workers = 2\nblocking_threads = 4\n");
    let srv = Server::start(&cfg);
    let tok = upload_token("/vod/*");
    let total = 600 * 1024;
    let body = payload(total, 7);
    let mut s = start_put(srv.addr, &q("/vod/cut/a.ts", &tok), &body, 300 * 1024);
    // One write buffer of it (256 KiB) is on disk: no call of this upload is in progress when
    // the disk stops answering.
    assert!(
        eventually(Duration::from_secs(5), async || tmp_bytes(&d1)
            >= 256 * 1024)
        .await,
        "the first half is written to a temporary file: {:?}",
        tmp_files(&d1)
    );
    // Two uploads whose file creation hangs take the volume's two calls (half of 4 threads).
    let (hang, hung) = hang_with_uploads(&srv, ("disk1", &d1), "/vod/cut", 2, 2.0).await;
    // The rest: its write is refused (the answer may come before all of it is taken).
    let _ = s.write_all(&body[300 * 1024..]);
    let answer = read_head(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "{answer}: {}",
        srv.stderr()
    );
    assert!(
        answer.to_ascii_lowercase().contains("retry-after:"),
        "{answer}"
    );
    assert!(
        !tmp_files(&d1).is_empty(),
        "the temporary file waits for the disk to answer"
    );
    std::fs::remove_file(&hang).expect("heal");
    let statuses: Vec<u16> = hung
        .into_iter()
        .map(|t| t.join().expect("upload thread"))
        .collect();
    assert_eq!(statuses, [201, 201], "the calls in progress finish");
    no_tmp_eventually(&d1, "once the disk answers").await;
    assert!(!d1.join("vod/cut/a.ts").exists(), "nothing put in place");
}

/// An old copy that cannot be removed when its volume is back (immutable here, `chattr +i`;
/// in the field, a disk that fails again, its removal never reaching it) keeps its journal
/// line, and is removed once it can be. The line was dropped at the first try whatever the
/// removal did: the stale copy stayed with no record of it, and came back at the next start
/// (acceptance F3).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn an_old_copy_that_cannot_be_removed_yet_keeps_its_journal_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    std::fs::create_dir_all(d1.join("live/im")).expect("mkdir");
    std::fs::create_dir_all(&d2).expect("mkdir");
    let old = d1.join("live/im/a.ts");
    std::fs::write(&old, b"old a").expect("write");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&old)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!(
            "skipped: chattr +i does not work here (not root, or no ext4 under the temp dir)"
        );
        return;
    }
    assert!(chattr("-i"));
    // Whatever happens below, the file is left removable (or the temp dir stays behind).
    struct Removable<'a>(&'a Path);
    impl Drop for Removable<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(self.0)
                .status();
        }
    }
    let _removable = Removable(&old);
    let cfg = config_for(&[&d1, &d2], &ingest_section(&[]));
    let tok = upload_token("/live/*");
    let srv = Server::start(&cfg);
    let url = srv.url("/live/im/a.ts");
    assert_eq!(get(&url, &[]).await.text(), "old a");
    let fault = d1.join(".segd-fault-eio");
    std::fs::write(&fault, b"").expect("inject");
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 503)
        .await,
        "disk1 is down"
    );
    let r = curl_put(&srv.url(&q("/live/im/a.ts", &tok)), b"new a", &[]);
    assert_eq!(r.status(), 201, "lands on disk2: {r:?}");
    let journal = d2.join(".segd-outage");
    assert!(journal.exists(), "the replace is journaled");
    // disk1 is back, but its old copy cannot be removed yet.
    assert!(chattr("+i"));
    std::fs::remove_file(&fault).expect("heal");
    assert!(
        eventually(Duration::from_secs(5), async || srv.stderr().contains(
            "cannot remove a copy replaced or deleted while its volume was down"
        ))
        .await,
        "the removal is tried: {}",
        srv.stderr()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let kept = std::fs::read_to_string(&journal).unwrap_or_default();
    assert!(
        kept.contains("live/im/a.ts"),
        "the line stays while its copy does: {kept:?}"
    );
    // Removable again: the next try (within 2 s here) removes it and settles the line.
    assert!(chattr("-i"));
    assert!(
        eventually(Duration::from_secs(8), async || !old.exists()
            && !journal.exists())
        .await,
        "the old copy goes and its line with it: copy {}, journal {:?}",
        old.exists(),
        std::fs::read_to_string(&journal)
    );
    assert_eq!(get(&url, &[]).await.text(), "new a");
}

/// An object replaced or deleted while the volume holding it is down: the upload lands on
/// another volume (or the DELETE removes what is there), and the old copy waits on the volume
/// that was down. When that volume is back (a health check finds it, or a restart), the old copy
/// must not be served, then or after a restart: it is removed. Lookups try the placement volume
/// first after a restart, so without this the old bytes came back.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn copies_replaced_or_deleted_while_their_volume_was_down_do_not_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    // `x%41.ts` (URL `x%2541.ts`) and `xA.ts` are two objects: the journal must not confuse
    // them (read back decoded once more, `x%41` would be `xA`).
    for (name, body) in [
        ("a.ts", "old a"),
        ("b.ts", "old b"),
        ("c.ts", "old c"),
        ("x%41.ts", "old pct"),
        ("xA.ts", "keep A"),
    ] {
        std::fs::create_dir_all(d1.join("live/out")).expect("mkdir");
        std::fs::write(d1.join("live/out").join(name), body).expect("write");
    }
    std::fs::create_dir_all(&d2).expect("mkdir");
    let cfg = config_for(&[&d1, &d2], &ingest_section(&[]));
    let tok = upload_token("/live/*");
    let fault = d1.join(".segd-fault-eio");
    let body = async |srv: &Server, path: &str| {
        let r = get(&srv.url(path), &[]).await;
        (r.status, r.text())
    };
    // disk1 goes down (its objects answer 503).
    let down = async |srv: &Server, path: &str| {
        std::fs::write(&fault, b"").expect("inject");
        let is_down = eventually(Duration::from_secs(5), async || {
            body(srv, path).await.0 == 503
        });
        assert!(is_down.await, "disk1 is down");
    };
    let mut srv = Server::start(&cfg);
    assert_eq!(body(&srv, "/live/out/a.ts").await, (200, "old a".into()));

    // disk1 goes down; a is replaced and b replaced then deleted, on disk2.
    down(&srv, "/live/out/a.ts").await;
    for (path, new) in [("/live/out/a.ts", "new a"), ("/live/out/b.ts", "new b")] {
        let r = curl_put(&srv.url(&q(path, &tok)), new.as_bytes(), &[]);
        assert_eq!(r.status(), 201, "{path}: lands on disk2: {r:?}");
    }
    let r = curl_put(&srv.url(&q("/live/out/x%2541.ts", &tok)), b"new pct", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    for path in ["/live/out/b.ts", "/live/out/x%2541.ts"] {
        let r = curl_delete(&srv.url(&q(path, &tok)));
        assert_eq!(r.status(), 204, "{path}: {r:?}");
    }
    assert_eq!(body(&srv, "/live/out/a.ts").await, (200, "new a".into()));

    // disk1 is back: its old a and b go, c (not written meanwhile) stays.
    std::fs::remove_file(&fault).expect("heal");
    // (The settlement removes them one by one: waited for together.)
    let gone = ["live/out/b.ts", "live/out/a.ts", "live/out/x%41.ts"];
    assert!(
        eventually(Duration::from_secs(5), async || gone
            .iter()
            .all(|p| !d1.join(p).exists()))
        .await,
        "the deleted object's old copy is removed when disk1 is back"
    );
    assert!(
        !d1.join("live/out/a.ts").exists(),
        "replaced: old copy removed"
    );
    assert!(
        !d1.join("live/out/x%41.ts").exists(),
        "deleted: old copy removed"
    );
    assert_eq!(read(&d1.join("live/out/c.ts")), b"old c");
    assert_eq!(
        read(&d1.join("live/out/xA.ts")),
        b"keep A",
        "another object"
    );
    for _ in 0..2 {
        assert_eq!(body(&srv, "/live/out/a.ts").await, (200, "new a".into()));
        assert_eq!(body(&srv, "/live/out/b.ts").await.0, 404);
        assert_eq!(body(&srv, "/live/out/c.ts").await, (200, "old c".into()));
        assert_eq!(body(&srv, "/live/out/x%2541.ts").await.0, 404);
        assert_eq!(body(&srv, "/live/out/xA.ts").await, (200, "keep A".into()));
        // And after a restart.
        drop(srv);
        srv = Server::start(&cfg);
    }
    assert!(
        !d2.join(".segd-outage").exists(),
        "settled lines leave the journal"
    );

    // disk1 down again; c replaced; segd stops; disk1 comes back before segd starts: the
    // start settles it before the first request.
    down(&srv, "/live/out/c.ts").await;
    let r = curl_put(&srv.url(&q("/live/out/c.ts", &tok)), b"new c", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    drop(srv);
    std::fs::remove_file(&fault).expect("heal");
    let srv = Server::start(&cfg);
    assert_eq!(body(&srv, "/live/out/c.ts").await, (200, "new c".into()));
    assert!(
        !d1.join("live/out/c.ts").exists(),
        "old copy removed at the start"
    );
}

/// The same when the old copy's modification time is ahead of the clock (written while the
/// clock ran ahead, stepped back since): it is no newer for that. It took the place of the
/// acknowledged upload, which was removed, and brought a deleted object back (acceptance
/// H-F8).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn an_old_copy_dated_ahead_of_the_clock_does_not_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    std::fs::create_dir_all(d1.join("live/ck")).expect("mkdir");
    std::fs::create_dir_all(&d2).expect("mkdir");
    let ahead = std::time::SystemTime::now() + Duration::from_secs(600);
    for name in ["a.ts", "b.ts"] {
        let path = d1.join("live/ck").join(name);
        std::fs::write(&path, b"OLD").expect("write");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(ahead)
            .expect("set mtime");
    }
    let srv = Server::start(&config_for(&[&d1, &d2], &ingest_section(&[])));
    let tok = upload_token("/live/*");
    let fault = d1.join(".segd-fault-eio");
    std::fs::write(&fault, b"").expect("inject");
    assert!(
        eventually(Duration::from_secs(5), async || get(
            &srv.url("/live/ck/a.ts"),
            &[]
        )
        .await
        .status
            == 503)
        .await,
        "disk1 is down"
    );
    let r = curl_put(
        &srv.url(&q("/live/ck/a.ts", &tok)),
        b"NEW, acknowledged",
        &[],
    );
    assert_eq!(r.status(), 201, "{r:?}");
    let r = curl_put(&srv.url(&q("/live/ck/b.ts", &tok)), b"NEW b", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    let r = curl_delete(&srv.url(&q("/live/ck/b.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    std::fs::remove_file(&fault).expect("heal");
    assert!(
        eventually(Duration::from_secs(5), async || !d1
            .join("live/ck/a.ts")
            .exists()
            && !d1.join("live/ck/b.ts").exists())
        .await,
        "the old copies are removed when disk1 is back"
    );
    let r = get(&srv.url("/live/ck/a.ts"), &[]).await;
    assert_eq!((r.status, r.text()), (200, "NEW, acknowledged".to_string()));
    assert_eq!(get(&srv.url("/live/ck/b.ts"), &[]).await.status, 404);
}

/// A durable upload that creates its object while a volume is down has its journal line on disk
/// before the rename makes the object visible: a crash after the rename (and before the 201)
/// cannot leave the old copy on the volume that is down without a line. Seen from outside with
/// strace: the journal's `fdatasync` comes before the object's `renameat2`.
#[tokio::test]
async fn an_upload_journals_before_its_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    std::fs::create_dir_all(d1.join("live/out")).expect("mkdir");
    std::fs::write(d1.join("live/out/a.ts"), b"old a").expect("write");
    std::fs::create_dir_all(&d2).expect("mkdir");
    let cfg = config_for(&[&d1, &d2], &ingest_section(&[("fsync", "true")]));
    let tok = upload_token("/live/*");
    let srv = Server::start(&cfg);
    std::fs::write(d1.join(".segd-fault-eio"), b"").expect("inject");
    let is_down = eventually(Duration::from_secs(5), async || {
        get(&srv.url("/live/out/a.ts"), &[]).await.status == 503
    });
    assert!(is_down.await, "disk1 is down");

    let log = dir.path().join("strace.log");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-e",
            "trace=renameat2,renameat,rename,linkat,fdatasync,fsync",
        ])
        .arg("-o")
        .arg(&log)
        .args(["-p", &srv.child.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (Debian package strace)");
    // strace says on stderr when it has attached (to every thread, with -f).
    let mut attached = String::new();
    // Kept open until strace ends: it writes a line for every thread.
    let mut err = strace.stderr.take().map(std::io::BufReader::new);
    if let Some(err) = err.as_mut() {
        let _ = std::io::BufRead::read_line(err, &mut attached);
    }
    assert!(attached.contains("attached"), "strace attached: {attached}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = curl_put(&srv.url(&q("/live/out/a.ts", &tok)), b"new a", &[]);
    assert_eq!(r.status(), 201, "lands on disk2: {r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    drop(err);
    let trace = std::fs::read_to_string(&log).expect("strace log");
    let journal_synced = trace
        .lines()
        .position(|l| l.contains("fdatasync(") && l.contains(".segd-outage>") && l.contains("= 0"));
    // Put in place by a rename, or by a link (an unnamed temporary file: O_TMPFILE).
    let renamed = trace.lines().position(|l| {
        (l.contains("renameat2(") || l.contains("linkat("))
            && l.contains("\"a.ts\"")
            && l.contains("= 0")
    });
    let (Some(synced), Some(renamed)) = (journal_synced, renamed) else {
        panic!("the journal sync and the rename are both in the trace:\n{trace}");
    };
    assert!(
        synced < renamed,
        "the journal is synced before the rename:\n{trace}"
    );
    let journal = std::fs::read_to_string(d2.join(".segd-outage")).expect("journal");
    assert!(
        journal.contains("disk1\t") && journal.contains("\tput\t/live/out/a.ts\n"),
        "{journal}"
    );
}

/// A symlink in a volume that points out of it is no object, on the write side as on the read
/// side: an upload's answer (where it is placed, 201 or 204) is the same whether the file
/// outside exists or not, and nothing outside is written. Each asset was last served from the
/// other volume, where a new object goes, unless the link is taken for a copy.
#[tokio::test]
async fn symlinks_out_of_a_volume_tell_nothing_to_uploads() {
    let tok = upload_token("/live/*");
    let assets: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let mut answers = Vec::new();
    for outside_exists in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        for a in &assets {
            std::fs::create_dir_all(d1.join("live").join(a)).expect("mkdir");
            std::fs::create_dir_all(d2.join("live").join(a)).expect("mkdir");
            std::fs::write(d2.join("live").join(a).join("other.ts"), b"o").expect("write");
            let target = outside.join(a);
            if outside_exists {
                std::fs::write(&target, b"secret").expect("write");
            }
            std::os::unix::fs::symlink(&target, d1.join("live").join(a).join("l.ts"))
                .expect("symlink");
        }
        let srv = Server::start(&config_for(&[&d1, &d2], &ingest_section(&[])));
        let mut statuses = Vec::new();
        for a in &assets {
            // The asset was last served from disk2: a new object goes there.
            let other = format!("/live/{a}/other.ts");
            assert_eq!(get(&srv.url(&other), &[]).await.status, 200, "{other}");
            let path = format!("/live/{a}/l.ts");
            assert_eq!(
                get(&srv.url(&path), &[]).await.status,
                404,
                "{path}: no object"
            );
            let r = curl_put(&srv.url(&q(&path, &tok)), b"new", &[]);
            statuses.push(r.status());
            assert_eq!(get(&srv.url(&path), &[]).await.text(), "new", "{path}");
        }
        for a in &assets {
            let target = outside.join(a);
            if outside_exists {
                assert_eq!(read(&target), b"secret", "outside file untouched");
            } else {
                assert!(!target.exists(), "nothing written outside");
            }
        }
        answers.push(statuses);
    }
    assert_eq!(
        answers[0], answers[1],
        "the same answers whether the files outside exist or not"
    );
    assert!(
        answers[0].iter().all(|&s| s == 201),
        "a link is no object: each upload created one: {answers:?}"
    );
}

/// A symlink planted in a volume (dangling, or out of it) is absent for every method, as it is
/// for GET: an upload over it creates the object (201, also with `If-None-Match: *`) and
/// replaces the link itself, and a DELETE of it is 404 with the link left (acceptance H-F7:
/// 204 and 204).
#[tokio::test]
async fn a_planted_symlink_is_absent_for_writes_too() {
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        let asset = d.join("disk1/live/sl");
        std::fs::create_dir_all(&asset).expect("mkdir");
        std::fs::create_dir_all(d.join("outside")).expect("mkdir");
        std::fs::write(d.join("outside/secret.ts"), b"secret").expect("write");
        std::fs::write(asset.join("seed.ts"), b"seed").expect("write");
        std::os::unix::fs::symlink("/nonexistent/zz.ts", asset.join("dangling.ts"))
            .expect("symlink");
        std::os::unix::fs::symlink(d.join("outside/secret.ts"), asset.join("out.ts"))
            .expect("symlink");
    });
    let tok = upload_token("/live/*");
    let asset = rig.vol("disk1").join("live/sl");
    for name in ["dangling.ts", "out.ts"] {
        let path = format!("/live/sl/{name}");
        assert_eq!(get(&rig.url(&path), &[]).await.status, 404, "{path}");
    }
    let r = curl_put(
        &rig.url(&q("/live/sl/dangling.ts", &tok)),
        b"new",
        &["-H", "If-None-Match: *"],
    );
    assert_eq!(r.status(), 201, "{r:?}");
    assert_file(
        &asset.join("dangling.ts"),
        b"new",
        "the link replaced by the object",
    );
    let r = curl_delete(&rig.url(&q("/live/sl/out.ts", &tok)));
    assert_eq!(r.status(), 404, "{r:?}");
    assert!(
        std::fs::symlink_metadata(asset.join("out.ts")).is_ok_and(|m| m.file_type().is_symlink()),
        "the link is left"
    );
    assert_eq!(read(&rig.dir.path().join("outside/secret.ts")), b"secret");
}

/// After an outage a name can be a file on one volume and a directory on another (the file's
/// volume was down when an upload made `z.ts/i.ts` elsewhere). A DELETE of the name removes the
/// file copies and says so (204); the directory is another object's path and stays. Once only
/// the directory is left, a DELETE is 409 with nothing removed (acceptance H-F6: 409 after it
/// had removed the file).
#[tokio::test]
async fn delete_of_a_name_that_is_a_file_and_a_directory_removes_the_file() {
    let rig = Rig::start(&["disk1", "disk2"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/m3")).expect("mkdir");
        std::fs::write(d.join("disk1/live/m3/z.ts"), b"file").expect("write");
        std::fs::create_dir_all(d.join("disk2/live/m3/z.ts")).expect("mkdir");
        std::fs::write(d.join("disk2/live/m3/z.ts/i.ts"), b"inner").expect("write");
    });
    let tok = upload_token("/live/*");
    assert_eq!(get(&rig.url("/live/m3/z.ts"), &[]).await.status, 200);
    let r = curl_delete(&rig.url(&q("/live/m3/z.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    assert!(
        !rig.vol("disk1").join("live/m3/z.ts").exists(),
        "file copy left"
    );
    assert_eq!(get(&rig.url("/live/m3/z.ts"), &[]).await.status, 404);
    assert_eq!(
        get(&rig.url("/live/m3/z.ts/i.ts"), &[]).await.text(),
        "inner"
    );
    let r = curl_delete(&rig.url(&q("/live/m3/z.ts", &tok)));
    assert_eq!(r.status(), 409, "{r:?}");
    assert_file(
        &rig.vol("disk2").join("live/m3/z.ts/i.ts"),
        b"inner",
        "the directory's object",
    );
}

#[tokio::test]
async fn delete_needs_min_depth() {
    let rig = Rig::simple(&[("min_delete_depth", "3")]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    for path in ["/live/x.ts", "/live/s/y.ts"] {
        let r = curl_put(&rig.url(&q(path, &tok)), b"deep enough?", &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
    }
    // `/live/x.ts` has 2 path segments: 403, nothing deleted.
    let r = curl_delete(&rig.url(&q("/live/x.ts", &tok)));
    assert_eq!(r.status(), 403, "{r:?}");
    assert_eq!(read(&vol.join("live/x.ts")), b"deep enough?");
    assert_eq!(get_on(&rig.url("/live/x.ts"), false).await.status, 200);
    // 3 segments: allowed.
    let r = curl_delete(&rig.url(&q("/live/s/y.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    assert!(!vol.join("live/s/y.ts").exists());
}

/// An HTTP/2 DELETE whose stream the client resets before the end of its body removes nothing,
/// whatever the reset's code: hyper reports a reset with `NO_ERROR` as the body's end, and the
/// DELETE must not take that for a complete request. DELETEs whose stream ends normally, with or
/// without a body, still remove their object.
#[tokio::test]
async fn h2_delete_reset_mid_body_removes_nothing() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let path = "/live/dr/obj.ts";
    let r = curl_put(&rig.url(&q(path, &tok)), b"keep me", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    let (client, _driver) = h2c(rig.srv.addr).await;
    let delete = |content_length: Option<&str>| {
        let mut req = http::Request::builder()
            .method("DELETE")
            .uri(rig.url(&q(path, &tok)));
        if let Some(n) = content_length {
            req = req.header("content-length", n);
        }
        req.body(()).expect("request")
    };
    for (what, content_length, reason) in [
        ("NO_ERROR, no content-length", None, h2::Reason::NO_ERROR),
        (
            "NO_ERROR, content-length",
            Some("100"),
            h2::Reason::NO_ERROR,
        ),
        ("CANCEL, no content-length", None, h2::Reason::CANCEL),
    ] {
        let mut client = client.clone().ready().await.expect("h2 ready");
        let (_resp, mut stream) = client
            .send_request(delete(content_length), false)
            .expect("send");
        stream
            .send_data(Bytes::from_static(b"hel"), false)
            .expect("data");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.send_reset(reason);
        // Nothing tells when segd is done with a request it drops: watch the object for a
        // second (a DELETE that goes on removes it within milliseconds).
        let gone = eventually(Duration::from_secs(1), async || {
            !vol.join("live/dr/obj.ts").exists()
        })
        .await;
        assert!(!gone, "{what}: the object was deleted");
        assert_eq!(read(&vol.join("live/dr/obj.ts")), b"keep me", "{what}");
    }
    // A DELETE whose body ends, then one without a body: carried out.
    for with_body in [true, false] {
        if !with_body {
            let r = curl_put(&rig.url(&q(path, &tok)), b"again", &[]);
            assert_eq!(r.status(), 201, "{r:?}");
        }
        let mut client = client.clone().ready().await.expect("h2 ready");
        let (resp, mut stream) = client.send_request(delete(None), !with_body).expect("send");
        if with_body {
            stream
                .send_data(Bytes::from_static(b"hel"), true)
                .expect("data");
        }
        let resp = resp.await.expect("h2 answer");
        assert_eq!(resp.status().as_u16(), 204, "with body: {with_body}");
        assert!(
            !vol.join("live/dr/obj.ts").exists(),
            "with body: {with_body}"
        );
    }
    assert_no_tmp(&vol, "end");
}

// ---------------------------------------------------------------------------------------------
// 4. Refusals: nothing written, the old version intact

/// Public except `/live/` (protected by playback tokens), with a playback key.
fn protected_extra() -> String {
    format!("[token]\nprotect = [\"/live/\"]\n[[token.keys]]\nid = \"play1\"\nsecret = \"{PLAY_KEY}\"\n\n")
}

#[tokio::test]
async fn token_refusals_write_nothing() {
    let rig = Rig::start(&["disk1"], &[], &protected_extra(), |d| {
        let dir = d.join("disk1/live/t");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("a.ts"), b"old version").expect("write");
    });
    let vol = rig.vol("disk1");
    let play = token_with_key(PLAY_KEY, "/live/*");
    let expired = sign(
        TokenAlgorithm::Sha256,
        &hex::decode(UP_KEY).expect("hex"),
        &SignSpec {
            acl: Some("/live/*"),
            exp: now() - 3600,
            ..Default::default()
        },
    );
    let good = upload_token("/live/*");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("playback key", Some(play.clone())),
        ("ACL of another path", Some(upload_token("/live/other/*"))),
        ("expired", Some(expired)),
        ("bad hmac", Some(good.replace("exp=", "exp=9"))),
        ("malformed", Some("garbage".to_string())),
    ];
    let before = tree(&vol);
    for (what, tok) in &cases {
        for path in ["/live/t/a.ts", "/live/t/new.ts", "/live/brand-new/a.ts"] {
            let target = match tok {
                Some(t) => q(path, t),
                None => path.to_string(),
            };
            let r = curl_put(&rig.url(&target), b"attacker bytes", &[]);
            assert_eq!(r.status(), 403, "PUT {path} with {what}: {r:?}");
            let r = curl(
                &[
                    "-X",
                    "POST",
                    "--data-binary",
                    "attacker bytes",
                    &rig.url(&target),
                ],
                None,
            );
            assert_eq!(r.status(), 403, "POST {path} with {what}: {r:?}");
            let r = curl_delete(&rig.url(&target));
            assert_eq!(r.status(), 403, "DELETE {path} with {what}: {r:?}");
        }
        // A refused 100-continue upload gets its 403 without a 100.
        let target = match tok {
            Some(t) => q("/live/t/a.ts", t),
            None => "/live/t/a.ts".to_string(),
        };
        let r = curl_put(
            &rig.url(&target),
            &payload(2 << 20, 1),
            &["-H", "Expect: 100-continue"],
        );
        assert_eq!(r.statuses, vec![403], "{what}: no 100 before a refusal");
    }
    // The playback token is for the path-embedded form as well.
    let r = curl_put(&rig.url(&p("/live/t/a.ts", &play)), b"x", &[]);
    assert_eq!(r.status(), 403, "path-embedded playback token: {r:?}");
    assert_eq!(tree(&vol), before, "nothing written, no directory created");
    assert_no_tmp(&vol, "after refusals");
    let g = get(&rig.url(&q("/live/t/a.ts", &play)), &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body.as_ref(), b"old version", "old version served");

    // An upload token never authorises a read of a protected path.
    for h2 in [false, true] {
        let g = get_on(&rig.url(&q("/live/t/a.ts", &good)), h2).await;
        assert_eq!(g.status, 403, "h2={h2}: GET with an upload token");
        let g = request(
            "GET",
            &rig.url("/live/t/a.ts"),
            &[("cookie", &format!("__token__={good}"))],
            h2,
        )
        .await;
        assert_eq!(g.status, 403, "h2={h2}: upload token in a cookie");
    }
    // …while it does authorise the write.
    let r = curl_put(&rig.url(&q("/live/t/a.ts", &good)), b"new version", &[]);
    assert_eq!(r.status(), 204, "{r:?}");
    let g = get(&rig.url(&q("/live/t/a.ts", &play)), &[]).await;
    assert_eq!(g.body.as_ref(), b"new version");

    let m = rig.metrics().await;
    for reason in [
        "missing",
        "acl_mismatch",
        "bad_hmac",
        "expired",
        "malformed",
    ] {
        assert!(
            metric(
                &m,
                &format!("segd_token_rejections_total{{reason=\"{reason}\"}}")
            )
            .is_some_and(|v| v >= 1.0),
            "{reason} counted:\n{m}"
        );
    }
}

#[tokio::test]
async fn method_path_and_type_refusals() {
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/other")).expect("mkdir");
        std::fs::write(d.join("disk1/other/o.ts"), b"outside").expect("write");
        std::fs::create_dir_all(d.join("disk1/live/m")).expect("mkdir");
        // A directory outside the volume, and a symlink to it inside.
        std::fs::create_dir_all(d.join("outside")).expect("mkdir");
        std::os::unix::fs::symlink(d.join("outside"), d.join("disk1/live/out")).expect("symlink");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/*");
    let before = tree(rig.dir.path());

    // Outside the ingest prefixes: 405 with Allow, for every write method.
    for method in ["PUT", "POST", "DELETE"] {
        let r = curl(
            &[
                "-X",
                method,
                "--data-binary",
                "x",
                &rig.url(&q("/other/o.ts", &tok)),
            ],
            None,
        );
        assert_eq!(r.status(), 405, "{method} outside: {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "{r:?}");
        // The root and a directory's name too, under the prefixes as well: such a path
        // allows what OPTIONS lists (PUT and POST were 404 without `Allow`: acceptance L2).
        // A DELETE of a directory under them is a 409 (the prefix's own is never removed).
        let delete = method == "DELETE";
        for (target, status) in [
            ("/", 405),
            ("/other/", 405),
            ("/live/", 405),
            ("/live/m/", if delete { 409 } else { 405 }),
        ] {
            let r = curl(
                &[
                    "-X",
                    method,
                    "--data-binary",
                    "x",
                    &rig.url(&q(target, &tok)),
                ],
                None,
            );
            assert_eq!(r.status(), status, "{method} {target}: {r:?}");
            if status == 405 {
                assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "{r:?}");
            }
        }
    }
    // An extension not in the type table: 415.
    let r = curl_put(&rig.url(&q("/live/m/evil.exe", &tok)), b"MZ", &[]);
    assert_eq!(r.status(), 415, "{r:?}");
    let r = curl_put(&rig.url(&q("/live/m/noext", &tok)), b"x", &[]);
    assert_eq!(r.status(), 415, "no extension: {r:?}");
    // A dot-file: 404 as for GET.
    let r = curl_put(&rig.url(&q("/live/.hidden.ts", &tok)), b"x", &[]);
    assert_eq!(r.status(), 404, "{r:?}");
    let r = curl_put(&rig.url(&q("/live/m/.segd-tmp-forged.ts", &tok)), b"x", &[]);
    assert_eq!(r.status(), 404, "a temp-file name is a dot-file: {r:?}");
    // Traversal and bad escapes: the same answer as a GET (404 or 400), nothing written.
    let enc = encode_token(&tok);
    for target in [
        "/live/../other/o.ts",
        "/live/%2e%2e/other/o.ts",
        "/live/m/..%2f..%2fother%2fo.ts",
        "/live/m/%2e%2e%2f%2e%2e%2fescape.ts",
        "/live/m/%zz.ts",
        "/live/m/%00.ts",
        "/live/%2ehidden.ts",
    ] {
        let sep = if target.contains('?') { '&' } else { '?' };
        let t = format!("{target}{sep}__token__={enc}");
        let get_status = raw_status(&raw_get(rig.srv.addr, &t));
        let req = format!(
            "PUT {t} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nescap"
        );
        let put_status = raw_status(&raw(rig.srv.addr, req.as_bytes(), Duration::from_secs(10)));
        assert!(
            put_status == 400 || put_status == 404,
            "PUT {target}: {put_status}"
        );
        assert_eq!(put_status, get_status, "PUT {target} answers like GET");
    }
    // Through a symlink, out of the volume: 404 as for GET, nothing written there.
    let r = curl_put(&rig.url(&q("/live/out/x.ts", &tok)), b"escape", &[]);
    assert_eq!(r.status(), 404, "{r:?}");
    assert_eq!(get_on(&rig.url("/live/out/x.ts"), false).await.status, 404);
    assert!(
        !rig.dir.path().join("outside/x.ts").exists(),
        "written outside"
    );
    // A name longer than a file name can be (255 bytes), as a file or as a directory: 414,
    // before anything is read or created (GET says 404: nothing can be there).
    for target in [
        format!("/live/m/{}.ts", "a".repeat(300)),
        format!("/live/{}/x.ts", "d".repeat(256)),
    ] {
        let r = curl_put(&rig.url(&q(&target, &tok)), b"long", &[]);
        assert_eq!(r.status(), 414, "PUT {}…: {r:?}", &target[..20]);
        assert_eq!(get_on(&rig.url(&target), false).await.status, 404);
    }
    // Content-Range: a partial body is not an object (RFC 9110 §14.5): 400, on every
    // protocol, and nothing written.
    for h2 in [false, true] {
        let r = request(
            "PUT",
            &rig.url(&q("/live/m/part.ts", &tok)),
            &[("content-range", "bytes 0-3/100")],
            h2,
        )
        .await;
        assert_eq!(r.status, 400, "h2={h2}: {r:?}");
    }
    let r = curl_put(
        &rig.url(&q("/live/m/part.ts", &tok)),
        b"part",
        &["-H", "Content-Range: bytes 0-3/100"],
    );
    assert_eq!(r.status(), 400, "{r:?}");
    // A body in a content coding would be stored and then served as if it were the media:
    // 415 with `Accept-Encoding: identity` (RFC 9110 §15.5.16, §12.5.3), on every protocol
    // and for POST too, nothing written. `identity` names no coding.
    for h2 in [false, true] {
        for method in ["PUT", "POST"] {
            let r = request(
                method,
                &rig.url(&q("/live/m/gz.ts", &tok)),
                &[("content-encoding", "gzip")],
                h2,
            )
            .await;
            assert_eq!(r.status, 415, "h2={h2} {method}: {r:?}");
            assert_eq!(r.header("accept-encoding"), Some("identity"), "{r:?}");
        }
    }
    let r = curl_put(
        &rig.url(&q("/live/m/gz.ts", &tok)),
        b"\x1f\x8b\x08\x00",
        &["-H", "Content-Encoding: identity, br"],
    );
    assert_eq!(r.status(), 415, "{r:?}");
    // A form upload (`curl -F`): the file inside MIME parts would be served with them. 415,
    // nothing written; `--data-binary` (form-urlencoded by name, the raw bytes) is taken.
    let seg = rig.dir.path().join("form-seg.ts");
    std::fs::write(&seg, b"segment bytes").expect("write");
    let field = format!("file=@{}", seg.display());
    let r = curl(
        &[
            "-X",
            "PUT",
            "-F",
            &field,
            &rig.url(&q("/live/m/form.ts", &tok)),
        ],
        None,
    );
    assert_eq!(r.status(), 415, "{r:?}");
    std::fs::remove_file(&seg).expect("rm");
    // Transfer-Encoding other than chunked: 501.
    let req = format!(
        "PUT {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        q("/live/m/gz.ts", &tok)
    );
    let resp = raw(rig.srv.addr, req.as_bytes(), Duration::from_secs(10));
    assert_eq!(raw_status(&resp), 501, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(
        tree(rig.dir.path()),
        before,
        "nothing written anywhere (volume and around it)"
    );
    assert_eq!(
        get_on(&rig.url("/other/o.ts"), false).await.body.as_ref(),
        b"outside"
    );

    // OPTIONS and CORS preflight list the write methods under a prefix only.
    const INGEST_ALLOW: &str = "GET, HEAD, OPTIONS, PUT, POST, DELETE";
    for h2 in [false, true] {
        let r = request("OPTIONS", &rig.url("/live/m/x.ts"), &[], h2).await;
        assert_eq!(r.header("allow"), Some(INGEST_ALLOW), "h2={h2}: {r:?}");
        let r = request(
            "OPTIONS",
            &rig.url("/live/m/x.ts"),
            &[
                ("origin", "https://packager.example"),
                ("access-control-request-method", "PUT"),
            ],
            h2,
        )
        .await;
        assert!(r.status == 200 || r.status == 204, "{r:?}");
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some(INGEST_ALLOW),
            "h2={h2}: preflight {r:?}"
        );
        let r = request("OPTIONS", &rig.url("/other/o.ts"), &[], h2).await;
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "h2={h2}");
        // A 405 lists the same methods as OPTIONS for its path (RFC 9110 §15.5.6: the
        // resource's methods). Under a prefix every method segd implements is allowed, so a
        // method there is answered or is one segd does not implement (PATCH: 501, no `Allow`).
        let r = request("PUT", &rig.url(&q("/other/o.ts", &tok)), &[], h2).await;
        assert_eq!(r.status, 405, "h2={h2} PUT outside: {r:?}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "h2={h2}");
        for path in ["/live/m/x.ts", "/other/o.ts"] {
            let r = request("PATCH", &rig.url(&q(path, &tok)), &[], h2).await;
            assert_eq!(r.status, 501, "h2={h2} PATCH {path}: {r:?}");
            assert_eq!(r.header("allow"), None, "h2={h2} PATCH {path}");
        }
    }
    assert_no_tmp(&vol, "end");
}

/// A PUT onto a name that is a directory is 409, as a DELETE of it is: a client's mistake, not a
/// disk fault (never `write_failed`), nothing written and the directory intact, on every body
/// path (small bodies placed with their commit, large ones placed first, chunked, HTTP/2). A
/// client waiting on `Expect: 100-continue` gets the 409 without a 100: it is found before the
/// body is read.
#[tokio::test]
async fn put_onto_a_directory_is_409() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/*");
    for dir in ["/vod/pd/dir.ts", "/live/pd/dir.ts"] {
        let r = curl_put(&rig.url(&q(&format!("{dir}/inner.ts"), &tok)), b"A", &[]);
        assert_eq!(r.status(), 201, "{dir}/inner.ts: {r:?}");
    }
    let before = tree(&vol);
    let large = payload(300_000, 31);
    let url = |path: &str| rig.url(&q(path, &tok));
    let cases = [
        (
            "small body",
            curl_put(&url("/vod/pd/dir.ts"), b"B", &["-H", "Expect:"]),
        ),
        (
            "large body",
            curl_put(&url("/vod/pd/dir.ts"), &large, &["-H", "Expect:"]),
        ),
        (
            "Expect: 100-continue",
            curl_put(
                &url("/vod/pd/dir.ts"),
                b"B",
                &["-H", "Expect: 100-continue"],
            ),
        ),
        ("chunked", curl_put_chunked(&url("/vod/pd/dir.ts"), b"B")),
        (
            "live, chunked",
            curl_put_chunked(&url("/live/pd/dir.ts"), b"B"),
        ),
    ];
    for (what, r) in &cases {
        assert_eq!(r.statuses, [409], "{what}: {r:?}");
    }
    for path in ["/vod/pd/dir.ts", "/live/pd/dir.ts"] {
        let r = send("PUT", &url(path), &[], b"B", true).await;
        assert_eq!(r.status, 409, "h2 {path}: {r:?}");
    }
    no_tmp_eventually(&vol, "PUT onto a directory").await;
    assert_eq!(
        tree(&vol),
        before,
        "nothing written, the directories intact"
    );
    let m = rig.metrics().await;
    // A series appears with its first count.
    let disk_faults = m
        .lines()
        .filter(|l| l.starts_with("segd_refusals_total{") && l.contains("fault=\"disk\""))
        .collect::<Vec<_>>();
    assert!(disk_faults.is_empty(), "no disk fault: {disk_faults:?}");
    assert_eq!(
        metric_with(
            &m,
            "segd_refusals_total",
            &[("reason", "is_directory"), ("fault", "client")]
        ),
        Some(cases.len() as f64 + 2.0),
        "counted as the client's:\n{m}"
    );
}

#[tokio::test]
async fn preconditions() {
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/pc")).expect("mkdir");
        std::fs::write(d.join("disk1/live/pc/a.ts"), b"version one").expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/pc/*");
    let url = rig.url(&q("/live/pc/a.ts", &tok));
    let etag = get(&rig.url("/live/pc/a.ts"), &[])
        .await
        .header("etag")
        .expect("etag")
        .to_string();

    let r = curl_put(&url, b"clobber", &["-H", "If-None-Match: *"]);
    assert_eq!(
        r.status(),
        412,
        "If-None-Match: * on an existing object: {r:?}"
    );
    let r = curl_put(&url, b"clobber", &["-H", "If-Match: \"not-the-etag\""]);
    assert_eq!(r.status(), 412, "wrong If-Match: {r:?}");
    // A refused 100-continue upload gets its 412 without a 100.
    let r = curl_put(
        &url,
        &payload(2 << 20, 5),
        &["-H", "If-None-Match: *", "-H", "Expect: 100-continue"],
    );
    assert_eq!(r.statuses, vec![412], "{r:?}");
    assert_eq!(read(&vol.join("live/pc/a.ts")), b"version one", "intact");

    let r = curl_put(&url, b"version two", &["-H", &format!("If-Match: {etag}")]);
    assert_eq!(r.status(), 204, "right If-Match: {r:?}");
    let etag2 = r.etag();
    assert_ne!(etag2, etag);
    assert_eq!(read(&vol.join("live/pc/a.ts")), b"version two");
    // The old ETag is stale now.
    let r = curl_put(
        &url,
        b"version three",
        &["-H", &format!("If-Match: {etag}")],
    );
    assert_eq!(r.status(), 412, "stale If-Match: {r:?}");
    assert_eq!(read(&vol.join("live/pc/a.ts")), b"version two");

    // Absent object: If-Match fails and creates nothing; If-None-Match: * creates.
    let url_b = rig.url(&q("/live/pc/b.ts", &tok));
    let r = curl_put(&url_b, b"b", &["-H", &format!("If-Match: {etag2}")]);
    assert_eq!(r.status(), 412, "If-Match on an absent object: {r:?}");
    assert!(!vol.join("live/pc/b.ts").exists());
    let r = curl_put(&url_b, b"b", &["-H", "If-None-Match: *"]);
    assert_eq!(r.status(), 201, "{r:?}");
    assert_eq!(read(&vol.join("live/pc/b.ts")), b"b");

    // DELETE: a stale If-Match or `If-None-Match: *` keeps the object (412); the right
    // If-Match removes it. A DELETE of an absent object is 404 whatever its preconditions:
    // they are evaluated only for a request that would otherwise succeed (RFC 9110 §13.2.1).
    let etag_b = r.etag();
    for h in ["If-Match: \"stale\"", "If-None-Match: *"] {
        let r = curl(&["-X", "DELETE", "-H", h, &url_b], None);
        assert_eq!(r.status(), 412, "DELETE {h}: {r:?}");
        assert_eq!(read(&vol.join("live/pc/b.ts")), b"b", "kept after {h}");
    }
    let r = curl(
        &["-X", "DELETE", "-H", &format!("If-Match: {etag_b}"), &url_b],
        None,
    );
    assert_eq!(r.status(), 204, "DELETE with the right If-Match: {r:?}");
    assert!(!vol.join("live/pc/b.ts").exists());
    for h in [
        format!("If-Match: {etag_b}"),
        "If-Match: *".to_string(),
        "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT".to_string(),
    ] {
        let r = curl(&["-X", "DELETE", "-H", &h, &url_b], None);
        assert_eq!(r.status(), 404, "DELETE of an absent object, {h}: {r:?}");
    }
    assert_no_tmp(&vol, "end");
}

/// A conditional DELETE that arrives while the path is being replaced waits for the replace
/// and evaluates its preconditions against the version it would remove (RFC 9110 §13.2.2): a
/// DELETE with the old version's ETag (or a date before the new version) keeps the new one.
/// It used to check them before it waited, and removed the new version.
#[tokio::test]
async fn a_conditional_delete_behind_a_replace_sees_the_new_version() {
    // Version one is from 2020, so a replace is later by its date too.
    let version_one = |p: &Path| {
        std::fs::write(p, b"version one").expect("write");
        let f = std::fs::File::options().write(true).open(p).expect("open");
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
            .expect("mtime");
    };
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/vod/race")).expect("mkdir");
        version_one(&d.join("disk1/vod/race/a.ts"));
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/vod/race/*");
    let url = rig.url(&q("/vod/race/a.ts", &tok));
    let old = get(&rig.url("/vod/race/a.ts"), &[]).await;
    let etag1 = old.header("etag").expect("etag").to_string();
    let modified1 = old
        .header("last-modified")
        .expect("last-modified")
        .to_string();
    let v2 = b"version two, longer";
    for condition in [
        format!("If-Match: {etag1}"),
        format!("If-Unmodified-Since: {modified1}"),
    ] {
        // The replace: its head and half its body, then a pause while the DELETE comes.
        let mut put = connect(rig.srv.addr);
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            q("/vod/race/a.ts", &tok),
            v2.len()
        );
        put.write_all(head.as_bytes()).expect("head");
        put.write_all(&v2[..8]).expect("first half");
        std::thread::sleep(Duration::from_millis(300));
        let (del_url, cond) = (url.clone(), condition.clone());
        let del = std::thread::spawn(move || curl(&["-X", "DELETE", "-H", &cond, &del_url], None));
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !del.is_finished(),
            "{condition}: the DELETE waits for the replace"
        );
        put.write_all(&v2[8..]).expect("second half");
        let answer = read_head(&mut put);
        assert!(answer.starts_with("HTTP/1.1 204"), "replace: {answer:?}");
        let r = del.join().expect("delete thread");
        assert_eq!(
            r.status(),
            412,
            "{condition} names the replaced version: {r:?}"
        );
        assert_eq!(
            read(&vol.join("vod/race/a.ts")),
            v2,
            "{condition}: the new version stays"
        );
        // Version one again for the next round.
        version_one(&vol.join("vod/race/a.ts"));
    }
    assert_no_tmp(&vol, "end");
}

/// A segment replaced twice within one second: the first version's `Last-Modified` would
/// name the second's second too, and a cache revalidating with `If-Modified-Since` alone was
/// told 304 for the old bytes (acceptance). As for playlists
/// (`http_semantics::a_date_is_sent_as_a_validator_only_once_its_second_is_over`), the date is
/// sent only once its second is over; until then the ETag tells the versions apart.
#[tokio::test]
async fn a_segment_replaced_within_one_second_is_never_not_modified() {
    let rig = Rig::simple(&[]);
    let tok = upload_token("/*");
    for rel in ["/vod/sec/a.ts", "/live/sec/a.m4s"] {
        let url = rig.url(&q(rel, &tok));
        let mut dated = 0;
        for round in 0..3 {
            // Both versions early in one second.
            early_in_a_second();
            let r = curl_put(&url, format!("first {round}").as_bytes(), &[]);
            assert!(matches!(r.status(), 201 | 204), "{rel}: {r:?}");
            let first = get(&rig.url(rel), &[]).await;
            assert_eq!(first.body.as_ref(), format!("first {round}").as_bytes());
            let r = curl_put(&url, format!("second {round}!").as_bytes(), &[]);
            assert_eq!(r.status(), 204, "{rel}: {r:?}");
            if let Some(lm) = first.header("last-modified") {
                dated += 1;
                let r = get(&rig.url(rel), &[("if-modified-since", lm)]).await;
                assert_eq!(
                    r.status, 200,
                    "{rel} round {round}: the second version is new"
                );
            }
            let etag = first.header("etag").expect("etag");
            let r = get(&rig.url(rel), &[("if-none-match", etag)]).await;
            assert_eq!(
                r.status, 200,
                "{rel} round {round}: the ETag tells them apart"
            );
            assert_eq!(r.body.as_ref(), format!("second {round}!").as_bytes());
        }
        assert!(
            dated < 3,
            "{rel}: the first version was always asked for in its own second"
        );
        // Once its second is over, the date is sent, and a revalidation with it alone is a 304.
        std::thread::sleep(Duration::from_millis(1100));
        let r = get(&rig.url(rel), &[]).await;
        let lm = r
            .header("last-modified")
            .expect("the date, once its second is over");
        let r = get(&rig.url(rel), &[("if-modified-since", lm)]).await;
        assert_eq!(r.status, 304, "{rel}");
    }
}

#[tokio::test]
async fn body_over_max_body_bytes() {
    let rig = Rig::start(&["disk1"], &[("max_body_bytes", "\"1KiB\"")], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/big")).expect("mkdir");
        std::fs::write(d.join("disk1/live/big/a.ts"), b"old").expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let target = q("/live/big/a.ts", &tok);
    let before = tree(&vol);

    // Declared too large, with Expect: the final 413 comes first, never a 100.
    let mut s = connect(rig.srv.addr);
    let head = format!(
        "PUT {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("write head");
    let answer = read_head(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "first response line must be the 413, not a 100: {answer:?}"
    );
    drop(s);
    // Declared too large, body sent at once.
    let r = curl_put(&rig.url(&target), &payload(1025, 1), &["-H", "Expect:"]);
    assert_eq!(r.status(), 413, "{r:?}");
    // Chunked, counted past the limit: 413.
    let r = curl_put_chunked(&rig.url(&target), &payload(4000, 2));
    assert_eq!(r.status(), 413, "chunked: {r:?}");
    let r = curl_put_chunked(&rig.url(&q("/live/big/new.ts", &tok)), &payload(1025, 3));
    assert_eq!(r.status(), 413, "chunked, one byte over: {r:?}");
    no_tmp_eventually(&vol, "413").await;
    assert_eq!(tree(&vol), before, "nothing written");
    assert_eq!(
        get_on(&rig.url("/live/big/a.ts"), true).await.body.as_ref(),
        b"old"
    );
    // Exactly the limit is fine, declared or chunked.
    let at = payload(1024, 4);
    let r = curl_put(&rig.url(&target), &at, &[]);
    assert_eq!(r.status(), 204, "{r:?}");
    assert_eq!(read(&vol.join("live/big/a.ts")), at);
    let r = curl_put_chunked(&rig.url(&q("/live/big/new.ts", &tok)), &at);
    assert_eq!(r.status(), 201, "{r:?}");
    assert_no_tmp(&vol, "end");
}

#[tokio::test]
async fn body_timeout_is_408() {
    let rig = Rig::start(&["disk1"], &[("body_timeout", "\"1s\"")], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/slow")).expect("mkdir");
        std::fs::write(d.join("disk1/live/slow/a.ts"), b"old").expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let before = tree(&vol);
    for (what, head, first_half) in [
        (
            "content-length",
            format!(
                "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n",
                q("/live/slow/a.ts", &tok)
            ),
            vec![b'a'; 500],
        ),
        (
            "chunked",
            format!(
                "PUT {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
                q("/live/slow/b.ts", &tok)
            ),
            b"1f4\r\n"
                .iter()
                .copied()
                .chain([b'b'; 500])
                .chain(*b"\r\n")
                .collect(),
        ),
    ] {
        let mut s = connect(rig.srv.addr);
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&first_half).expect("half the body");
        // …and nothing more: the server answers 408 after body_timeout.
        let answer = read_head(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer:?}");
        no_tmp_eventually(&vol, what).await;
    }
    assert_eq!(tree(&vol), before, "nothing written");
    assert_eq!(
        get_on(&rig.url("/live/slow/a.ts"), false)
            .await
            .body
            .as_ref(),
        b"old"
    );
}

/// A PUT creating `path` with `body` (`Content-Length`) and a GET of it, in one write on `s`:
/// 201, then the GET answered with exactly the new bytes.
fn put_then_get_pipelined(s: &mut TcpStream, path: &str, tok: &str, body: &[u8]) {
    let mut wire = format!(
        "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        q(path, tok),
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(body);
    wire.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    s.write_all(&wire).expect("pipelined PUT and GET");
    let put = read_head(s);
    assert!(put.starts_with("HTTP/1.1 201"), "PUT {path}: {put:?}");
    let got = read_head(s);
    assert!(got.starts_with("HTTP/1.1 200"), "pipelined GET: {got:?}");
    assert!(
        got.to_ascii_lowercase()
            .contains(&format!("content-length: {}\r\n", body.len())),
        "pipelined GET: {got:?}"
    );
    let mut back = vec![0u8; body.len()];
    s.read_exact(&mut back).expect("GET body");
    assert!(
        back == body,
        "the pipelined GET of {path} returned other bytes"
    );
}

/// A `Content-Length` body is read on the connection it came on, which then carries on: a
/// request pipelined right behind the body is answered next, `Expect: 100-continue` gets its 100
/// only for an accepted write, and a refused body's connection is closed after the answer.
#[tokio::test]
async fn content_length_bodies_keep_the_connection() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let body = payload(70_000, 3);
    let mut s = connect(rig.srv.addr);

    // A PUT and a GET of the same object in one write: the GET sees the new bytes.
    put_then_get_pipelined(&mut s, "/live/kc/a.ts", &tok, &body);

    // Expect: 100-continue on the same connection: 100, then the body, then 201.
    s.write_all(
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            q("/live/kc/b.ts", &tok)
        )
        .as_bytes(),
    )
    .expect("head");
    let interim = read_head(&mut s);
    assert!(interim.starts_with("HTTP/1.1 100"), "Expect: {interim:?}");
    s.write_all(b"hello").expect("body");
    let done = read_head(&mut s);
    assert!(done.starts_with("HTTP/1.1 201"), "after 100: {done:?}");
    assert_file(&vol.join("live/kc/b.ts"), b"hello", "Expect upload");

    // Expect, but the client sends without waiting: no 100 in the middle of its body.
    let mut wire = format!(
        "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\nhello",
        q("/live/kc/d.ts", &tok)
    )
    .into_bytes();
    s.write_all(&wire).expect("head and half the body");
    std::thread::sleep(Duration::from_millis(100));
    wire.clear();
    s.write_all(b"world").expect("the rest");
    let done = read_head(&mut s);
    assert!(
        done.starts_with("HTTP/1.1 201"),
        "no 100 mid-body: {done:?}"
    );
    assert_file(
        &vol.join("live/kc/d.ts"),
        b"helloworld",
        "Expect, not waited for",
    );

    // Refused (no token) with Expect: no 100, the answer, and the connection closes.
    s.write_all(
        b"PUT /live/kc/c.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("head");
    let refused = read_head(&mut s);
    assert!(refused.starts_with("HTTP/1.1 403"), "no token: {refused:?}");
    assert!(
        refused.to_ascii_lowercase().contains("connection: close"),
        "a refused body closes the connection: {refused:?}"
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 100"),
        "a 100 after the refusal: {rest:?}"
    );
    assert!(!vol.join("live/kc/c.ts").exists(), "refused upload written");
    assert_file(&vol.join("live/kc/a.ts"), &body, "first upload");
    assert_no_tmp(&vol, "after the connection");
}

#[tokio::test]
async fn client_gone_mid_body() {
    let old = payload(50_000, 7);
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/gone")).expect("mkdir");
        std::fs::write(d.join("disk1/live/gone/a.ts"), &old).expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let before = tree(&vol);
    for (what, head, part) in [
        (
            "content-length",
            format!(
                "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n",
                q("/live/gone/a.ts", &tok)
            ),
            payload(100_000, 8),
        ),
        (
            "chunked",
            format!(
                "PUT {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
                q("/live/gone/a.ts", &tok)
            ),
            b"186a0\r\n"
                .iter()
                .copied()
                .chain(payload(100_000, 9))
                .chain(*b"\r\n186a0\r\n")
                .chain(payload(5000, 10))
                .collect(),
        ),
        ("h2c, CANCEL", String::new(), Vec::new()),
        // hyper reports a NO_ERROR reset as the body's end: segd must still see the reset.
        ("h2c, NO_ERROR", String::new(), Vec::new()),
        (
            "h2c, NO_ERROR, no content-length",
            String::new(),
            Vec::new(),
        ),
    ] {
        let mut connection = None;
        if what.starts_with("h2c") {
            // An HTTP/2 stream reset mid-body.
            let (client, driver) = h2c(rig.srv.addr).await;
            let mut client = client.ready().await.expect("h2 ready");
            let mut req = http::Request::builder()
                .method("PUT")
                .uri(rig.url(&q("/live/gone/a.ts", &tok)));
            if !what.ends_with("no content-length") {
                req = req.header("content-length", "200000");
            }
            let (resp, mut stream) = client
                .send_request(req.body(()).expect("request"), false)
                .expect("send");
            stream
                .send_data(Bytes::from(payload(16_000, 11)), false)
                .expect("data");
            // Wait until the server is receiving the body, then reset the stream.
            in_progress(&rig, what).await;
            stream.send_reset(if what.contains("NO_ERROR") {
                h2::Reason::NO_ERROR
            } else {
                h2::Reason::CANCEL
            });
            // The connection stays open until the server is done with the upload: a closed
            // connection fails the body whatever the reset said.
            connection = Some((resp, client, driver));
        } else {
            let mut s = connect(rig.srv.addr);
            s.write_all(head.as_bytes()).expect("head");
            s.write_all(&part).expect("part of the body");
            in_progress(&rig, what).await;
            drop(s);
        }
        uploads_ended(&rig, what).await;
        if let Some((resp, client, driver)) = connection.take() {
            drop((resp, client));
            driver.abort();
        }
        nothing_written(&rig, &before, "/live/gone/a.ts", &old, what).await;
    }
}

/// Waits until segd counts no upload in progress.
/// A client that pipelines uploads without reading the answers and then exits resets its
/// connection (its unread answers make the kernel send RST), usually while segd is still busy
/// with an earlier upload. ffmpeg with `-http_persistent 1` does this with its last segment and
/// its final playlist (`#EXT-X-ENDLIST`). The uploads it sent in full are carried out all the
/// same (the kernel keeps what arrived before the reset readable); only the answers are lost.
/// Chunked bodies (ffmpeg's; hyper's path) and `Content-Length` bodies (the fast path).
#[tokio::test]
async fn pipelined_uploads_of_a_client_that_left_are_carried_out() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let put = |name: &str, body: &[u8], chunked: bool| {
        put_request(&q(&format!("/live/pl/{name}"), &tok), body, chunked)
    };
    for (what, chunked) in [("chunked", true), ("content-length", false)] {
        let files = [
            format!("{what}-1.ts"),
            format!("{what}-2.ts"),
            format!("{what}.m3u8"),
        ];
        let bodies = [
            payload(20_000, 1),
            payload(30_000, 2),
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nx.ts\n#EXT-X-ENDLIST\n".to_vec(),
        ];
        let mut s = connect(rig.srv.addr);
        s.write_all(&put(&files[0], &bodies[0], chunked))
            .expect("first upload");
        // Its answer arrives and stays unread.
        let mut peek = [0u8; 1];
        assert_eq!(s.peek(&mut peek).expect("the first answer"), 1, "{what}");
        let mut rest = put(&files[1], &bodies[1], chunked);
        rest.extend(put(&files[2], &bodies[2], chunked));
        s.write_all(&rest).expect("pipelined uploads");
        // Gone without reading: the kernel resets the connection.
        drop(s);
        all_stored(&vol, &vol.join("live/pl"), &files, &bodies, what).await;
    }
}

/// The same over TLS (HTTP/1.1 by ALPN): what the client sent in full before it left is
/// decrypted and carried out, unanswered.
#[tokio::test]
async fn pipelined_uploads_of_a_client_that_left_over_tls_are_carried_out() {
    use tokio::io::AsyncWriteExt;
    let pki = crate::tls::Pki::new();
    let rig = Rig::tls(&pki, |_| {});
    let vol = rig.vol("disk1");
    let dir = vol.join("live/tp");
    let tok = upload_token("/live/*");
    let put =
        |name: &str, body: &[u8]| put_request(&q(&format!("/live/tp/{name}"), &tok), body, true);
    let files = ["1.ts", "2.ts", "index.m3u8"];
    let bodies = [
        payload(20_000, 1),
        payload(30_000, 2),
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nx.ts\n#EXT-X-ENDLIST\n".to_vec(),
    ];
    let client = pki.client(&[&rustls::version::TLS13], &[b"http/1.1"]);
    let mut s = crate::tls::connect(&rig.srv, &client).await;
    s.get_ref().0.set_nodelay(true).expect("nodelay");
    s.write_all(&put(files[0], &bodies[0]))
        .await
        .expect("first upload");
    s.flush().await.expect("flush");
    // Its answer arrives and stays unread.
    let mut peek = [0u8; 1];
    assert_eq!(
        s.get_ref()
            .0
            .peek(&mut peek)
            .await
            .expect("the first answer"),
        1
    );
    let mut rest = put(files[1], &bodies[1]);
    rest.extend(put(files[2], &bodies[2]));
    s.write_all(&rest).await.expect("pipelined uploads");
    s.flush().await.expect("flush");
    // Gone without reading: the kernel resets the connection.
    drop(s);
    all_stored(&vol, &dir, &files, &bodies, "tls").await;
}

/// A refusal over TLS (HTTP/1.1) that leaves the body unread says `Connection: close`, as the
/// plaintext fast path's do: hyper closes the connection after it (it reads no further), and a
/// client that reused it would lose its next request. It said nothing. An upload read whole
/// keeps the connection, for chunked and `Content-Length` bodies alike.
#[tokio::test]
async fn tls_refusals_that_leave_the_body_unread_say_connection_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = crate::tls::Pki::new();
    let rig = Rig::tls(&pki, |_| {});
    let tok = upload_token("/live/*");
    let client = pki.client(&[&rustls::version::TLS13], &[b"http/1.1"]);
    // The answer's head, and whether the connection then ends (or takes another request).
    let ask = |request: Vec<u8>| {
        let client = client.clone();
        let srv = &rig.srv;
        async move {
            let mut s = crate::tls::connect(srv, &client).await;
            s.write_all(&request).await.expect("request");
            s.flush().await.expect("flush");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .expect("an answer in time")
                    .expect("read");
                assert!(
                    n > 0,
                    "closed before an answer: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&got).to_lowercase();
            let head = head.split("\r\n\r\n").next().unwrap_or("").to_string();
            let next = b"GET /vod/none.ts HTTP/1.1\r\nHost: t\r\n\r\n";
            let _ = s.write_all(next).await;
            let _ = s.flush().await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
            let served_next = String::from_utf8_lossy(&rest).contains("HTTP/1.1 404");
            (head, served_next)
        }
    };
    // No token: 403 before the body, 100 KB of it declared and 1 KB sent.
    let mut unread =
        b"PUT /live/cc/a.ts HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n".to_vec();
    unread.extend(payload(1000, 1));
    let (head, served_next) = ask(unread).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(
        head.contains("\r\nconnection: close"),
        "unread body, no close: {head}"
    );
    assert!(!served_next, "the connection went on after an unread body");
    // The same refused in chunked coding, its body unread.
    let chunked =
        b"PUT /live/cc/b.ts HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"
            .to_vec();
    let (head, _) = ask(chunked).await;
    assert!(
        head.starts_with("http/1.1 403") && head.contains("\r\nconnection: close"),
        "{head}"
    );
    // Uploads read whole keep the connection.
    for chunked in [false, true] {
        let (head, served_next) = ask(put_request(
            &q("/live/cc/c.ts", &tok),
            &payload(50_000, 2),
            chunked,
        ))
        .await;
        assert!(head.starts_with("http/1.1 20"), "chunked {chunked}: {head}");
        assert!(
            !head.contains("connection: close"),
            "chunked {chunked}: {head}"
        );
        assert!(
            served_next,
            "chunked {chunked}: the connection ended after an upload"
        );
    }
}

/// A write over TLS whose client ends its side right after it (`close_notify` and FIN, as
/// ffmpeg's DELETE connections do) is still carried out: a DELETE and a chunked upload under a
/// live prefix.
#[tokio::test]
async fn tls_writes_followed_by_close_notify_are_carried_out() {
    use tokio::io::AsyncWriteExt;
    let pki = crate::tls::Pki::new();
    let rig = Rig::tls(&pki, |d| {
        std::fs::create_dir_all(d.join("disk1/live/cn")).expect("mkdir");
        std::fs::write(d.join("disk1/live/cn/old.ts"), b"old").expect("write");
        std::fs::write(d.join("disk1/live/cn/keep.ts"), b"keep").expect("write");
    });
    let vol = rig.vol("disk1");
    let dir = vol.join("live/cn");
    let tok = upload_token("/live/*");
    let client = pki.client(&[&rustls::version::TLS13], &[b"http/1.1"]);
    let requests = [
        format!(
            "DELETE {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            q("/live/cn/old.ts", &tok)
        ),
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            q("/live/cn/new.ts", &tok)
        ),
    ];
    for r in &requests {
        let mut s = crate::tls::connect(&rig.srv, &client).await;
        s.write_all(r.as_bytes()).await.expect("request");
        // close_notify, then FIN: the client is done sending, and does not wait.
        s.shutdown().await.expect("shutdown");
        drop(s);
    }
    let done = eventually(Duration::from_secs(5), async || {
        !dir.join("old.ts").exists() && dir.join("new.ts").exists()
    })
    .await;
    assert!(
        done,
        "the DELETE and the upload are carried out: {:?}",
        names(&dir)
    );
    assert_file(&dir.join("new.ts"), b"hello", "tls");
    no_tmp_eventually(&vol, "tls").await;
}

/// A PUT of `body` to `target`, whole: chunked (one chunk and the last) or with its length.
fn put_request(target: &str, body: &[u8], chunked: bool) -> Vec<u8> {
    let mut r = if chunked {
        format!(
            "PUT {target} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        )
    } else {
        format!(
            "PUT {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    }
    .into_bytes();
    r.extend_from_slice(body);
    if chunked {
        r.extend_from_slice(b"\r\n0\r\n\r\n");
    }
    r
}

/// Every upload a client that left sent in full is stored whole in `dir`, and no temporary
/// file is left on `vol`.
async fn all_stored(
    vol: &Path,
    dir: &Path,
    files: &[impl AsRef<str>],
    bodies: &[Vec<u8>],
    what: &str,
) {
    let all = eventually(Duration::from_secs(5), async || {
        files.iter().all(|n| dir.join(n.as_ref()).exists())
    })
    .await;
    assert!(
        all,
        "{what}: every upload sent in full is stored: {:?}",
        names(dir)
    );
    for (n, b) in files.iter().zip(bodies) {
        assert_file(&dir.join(n.as_ref()), b, what);
    }
    no_tmp_eventually(vol, what).await;
}

/// A client with Nagle's algorithm on (std's default, Java's, ffmpeg's) that writes a request
/// head and then its body holds the body back until the head is acknowledged. segd acknowledges
/// at once what it read before it waits for a body, so such uploads on a kept-alive connection
/// are not held up by the kernel's delayed-ACK timer (at least 40 ms each on Linux:
/// `TCP_DELACK_MIN`). Both body paths: `Content-Length` (the fast path) and chunked (hyper's).
/// Each upload takes a few ms on loopback, one held up by the timer at least 40 ms: the fastest
/// of nine must be well under that. (Not their sum against a bound: on a busy machine a few
/// uploads may be slow for other reasons; the timer makes every one of them slow.)
#[tokio::test]
async fn nagle_clients_are_not_held_up_by_delayed_acks() {
    let rig = Rig::simple(&[]);
    let tok = upload_token("/live/*");
    for chunked in [false, true] {
        let mut s = connect(rig.srv.addr);
        let put = |s: &mut TcpStream, i: usize| {
            let target = q(&format!("/live/ng/{chunked}-{i}.ts"), &tok);
            let body = payload(3000, i as u32);
            if chunked {
                let head = format!(
                    "PUT {target} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                s.write_all(head.as_bytes()).expect("head");
                s.write_all(format!("{:x}\r\n", body.len()).as_bytes())
                    .expect("chunk size");
                s.write_all(&body).expect("chunk");
                s.write_all(b"\r\n0\r\n\r\n").expect("last chunk");
            } else {
                let head = format!(
                    "PUT {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).expect("head");
                s.write_all(&body).expect("body");
            }
            let head = read_head(s);
            assert!(head.starts_with("HTTP/1.1 201"), "{head}");
        };
        // The first exchange puts the connection in request/answer rhythm (the kernel then
        // delays ACKs to send them with answers).
        put(&mut s, 0);
        let took: Vec<Duration> = (1..=9)
            .map(|i| {
                let start = Instant::now();
                put(&mut s, i);
                start.elapsed()
            })
            .collect();
        let fastest = took.iter().min().copied().unwrap_or_default();
        assert!(
            fastest < Duration::from_millis(30),
            "chunked {chunked}: the fastest of nine uploads took {fastest:?} ({took:?}): held up by delayed ACKs"
        );
    }
}

/// A Nagle client (ffmpeg) that sends its last upload on a kept-alive connection and leaves at
/// once, its earlier answers unread, has it stored even when segd is too busy to read it in
/// time (here: stopped with SIGSTOP). Its kernel holds the body until the head is
/// acknowledged, and the reset its exit makes drops what it holds; so the head must be
/// acknowledged by segd's kernel on arrival, not once segd reads it. After an answer the kernel
/// delays its ACKs (to send them with the next answer), and again after it resends an answer
/// the client was slow to acknowledge (seen here over TLS); segd tells it not to after each
/// answer and once more a little later. The CI once lost ffmpeg's final playlist over TLS this
/// way (`ffmpeg_hls_ts_push_persistent_connection_over_tls`). Fast path (`Content-Length`),
/// hyper (chunked) and TLS. Without the fix the fast path's upload is lost every time, the
/// TLS one most times.
#[tokio::test]
async fn a_nagle_clients_last_upload_is_acknowledged_while_segd_is_busy() {
    use tokio::io::AsyncWriteExt;
    let pki = crate::tls::Pki::new();
    let rig = Rig::tls(&pki, |_| {});
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    // ffmpeg's last uploads come a segment (at least a second) after the ones before. A gap
    // longer than the retransmission timeout is also what lets the kernel acknowledge the next
    // data at once rather than delay it; segd's part is that nothing delays it otherwise.
    const GAP: Duration = Duration::from_secs(1);
    let target = |name: &str| q(&format!("/live/na/{name}"), &tok);
    // Head and body in separate writes, as ffmpeg sends them.
    let parts = |name: &str, body: &[u8], chunked: bool| -> (Vec<u8>, Vec<u8>) {
        let t = target(name);
        if chunked {
            let head = format!("PUT {t} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
            let mut b = format!("{:x}\r\n", body.len()).into_bytes();
            b.extend_from_slice(body);
            b.extend_from_slice(b"\r\n0\r\n\r\n");
            (head.into_bytes(), b)
        } else {
            let head = format!(
                "PUT {t} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            (head.into_bytes(), body.to_vec())
        }
    };
    /// segd stopped (SIGSTOP) until this goes, however the test ends.
    struct Stopped<'a>(&'a Server);
    impl Stopped<'_> {
        /// Returns once the process is stopped (SIGSTOP takes effect asynchronously).
        fn new(srv: &Server) -> Stopped<'_> {
            srv.signal(libc::SIGSTOP);
            let stat = format!("/proc/{}/stat", srv.child.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let text = std::fs::read_to_string(&stat).unwrap_or_default();
                // The state follows the command's closing parenthesis.
                let state = text.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
                if state == Some(Some('T')) {
                    break;
                }
                assert!(Instant::now() < deadline, "segd did not stop: {text}");
                std::thread::sleep(Duration::from_millis(1));
            }
            Stopped(srv)
        }
    }
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            self.0.signal(libc::SIGCONT);
        }
    }
    for (i, (chunked, tls)) in [(false, false), (true, false), (true, true)]
        .into_iter()
        .enumerate()
    {
        let what = format!("chunked {chunked}, tls {tls}");
        let first = payload(5000, i as u32);
        let last = payload(7000, 10 + i as u32);
        let (a, b) = (format!("{i}-first.ts"), format!("{i}-last.ts"));
        if tls {
            let client = pki.client(&[&rustls::version::TLS13], &[b"http/1.1"]);
            let mut s = crate::tls::connect(&rig.srv, &client).await;
            let (h, body) = parts(&a, &first, chunked);
            s.write_all(&h).await.expect("head");
            s.write_all(&body).await.expect("body");
            s.flush().await.expect("flush");
            let mut peek = [0u8; 1];
            assert_eq!(s.get_ref().0.peek(&mut peek).await.expect("answer"), 1);
            tokio::time::sleep(GAP).await;
            let _stopped = Stopped::new(&rig.srv);
            let (h, body) = parts(&b, &last, chunked);
            s.write_all(&h).await.expect("head");
            s.flush().await.expect("flush");
            s.write_all(&body).await.expect("body");
            s.flush().await.expect("flush");
            // Gone without reading: the kernel resets the connection.
            drop(s);
        } else {
            let mut s = connect(rig.srv.addr);
            let (h, body) = parts(&a, &first, chunked);
            s.write_all(&h).expect("head");
            s.write_all(&body).expect("body");
            let mut peek = [0u8; 1];
            assert_eq!(s.peek(&mut peek).expect("answer"), 1);
            tokio::time::sleep(GAP).await;
            let _stopped = Stopped::new(&rig.srv);
            let (h, body) = parts(&b, &last, chunked);
            s.write_all(&h).expect("head");
            s.write_all(&body).expect("body");
            drop(s);
        }
        let dir = vol.join("live/na");
        let stored = eventually(Duration::from_secs(5), async || {
            std::fs::read(dir.join(&b)).is_ok_and(|got| got == last)
        })
        .await;
        assert!(
            stored,
            "{what}: the last upload is stored: {:?}",
            names(&dir)
        );
        assert_file(&dir.join(&a), &first, &what);
    }
}

/// A read pipelined between the uploads of a client that left is not carried out: nobody takes
/// its answer, so no file is read for it and the access log has no line saying it was sent.
#[tokio::test]
async fn reads_pipelined_by_a_client_that_left_are_not_served() {
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("access.log");
    let big = payload(600_000, 5);
    let rig = Rig::start(
        &["disk1"],
        &[],
        &format!("[log]\naccess = \"{}\"\n", log.display()),
        |d| {
            std::fs::create_dir_all(d.join("disk1/live/pr")).expect("mkdir");
            std::fs::write(d.join("disk1/live/pr/big.ts"), &big).expect("write");
        },
    );
    let dir = rig.vol("disk1").join("live/pr");
    let tok = upload_token("/live/*");
    let put = |name: &str| {
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            q(&format!("/live/pr/{name}"), &tok)
        )
    };
    let mut s = connect(rig.srv.addr);
    s.write_all(put("a.ts").as_bytes()).expect("first upload");
    let mut peek = [0u8; 1];
    assert_eq!(s.peek(&mut peek).expect("the first answer"), 1);
    let rest = format!(
        "{}GET /live/pr/big.ts HTTP/1.1\r\nHost: t\r\n\r\n{}",
        put("b.ts"),
        put("c.ts")
    );
    s.write_all(rest.as_bytes()).expect("pipelined requests");
    drop(s);
    let stored = eventually(Duration::from_secs(5), async || dir.join("c.ts").exists()).await;
    assert!(stored, "the last upload is carried out: {:?}", names(&dir));
    // The access log line of c.ts is written before its answer (discarded) is: give the log
    // a moment, then look for the GET.
    let logged = eventually(Duration::from_secs(5), async || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/live/pr/c.ts"))
    })
    .await;
    assert!(logged, "the uploads are logged");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let gets: Vec<&str> = text.lines().filter(|l| l.contains("\"GET\"")).collect();
    assert!(
        gets.is_empty(),
        "a read nobody takes is not served: {gets:?}"
    );
}

async fn uploads_ended(rig: &Rig, what: &str) {
    let done = eventually(Duration::from_secs(10), async || {
        metric(&rig.metrics().await, "segd_ingest_uploads_in_progress") == Some(0.0)
    })
    .await;
    assert!(done, "{what}: the upload ended:\n{}", rig.metrics().await);
}

/// A failed upload left `disk1` as it was (`before`, no temporary file), and `path` still
/// serves `old` on HTTP/1.1 and h2c.
async fn nothing_written(
    rig: &Rig,
    before: &BTreeMap<String, Option<(usize, u64)>>,
    path: &str,
    old: &[u8],
    what: &str,
) {
    let vol = rig.vol("disk1");
    no_tmp_eventually(&vol, what).await;
    assert_eq!(tree(&vol), *before, "{what}: nothing written");
    for h2 in [false, true] {
        let g = get_on(&rig.url(path), h2).await;
        assert!(g.body.as_ref() == old, "{what}: old version served");
    }
}

/// A `Content-Length` body of an object not read while it is written (here `/vod/`) goes from the
/// socket to its file through a pipe (`splice`), not through a buffer: bodies larger than a pipe,
/// a pipelined request behind one, `Expect: 100-continue`, and every failure (disconnect, stall)
/// behave as they do through buffers, and the spliced bytes are counted.
#[tokio::test]
async fn content_length_bodies_through_the_pipe() {
    let old = payload(50_000, 20);
    let rig = Rig::start(
        &["disk1"],
        &[("body_timeout", "\"1s\""), ("fsync", "false")],
        "",
        |d| {
            std::fs::create_dir_all(d.join("disk1/vod/p")).expect("mkdir");
            std::fs::write(d.join("disk1/vod/p/a.ts"), &old).expect("write");
        },
    );
    let vol = rig.vol("disk1");
    let tok = upload_token("/vod/*");
    let before = tree(&vol);
    let put_head = |path: &str, len: usize, extra: &str| {
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n{extra}\r\n",
            q(path, &tok)
        )
    };

    // The client goes away after part of the body: nothing written.
    let mut s = connect(rig.srv.addr);
    s.write_all(put_head("/vod/p/a.ts", 1_000_000, "").as_bytes())
        .expect("head");
    s.write_all(&payload(300_000, 21))
        .expect("part of the body");
    in_progress(&rig, "disconnect").await;
    drop(s);
    uploads_ended(&rig, "disconnect").await;
    nothing_written(&rig, &before, "/vod/p/a.ts", &old, "disconnect").await;

    // Small pieces, each spliced alone, take one of the pipe's slots (a page each) apiece: as
    // many pieces as slots fill the pipe with a few KB. The client then goes away while the pipe
    // is full and the socket empty: the upload ends at once, nothing written.
    let slots = segd::io::pipe::CAPACITY / 4096;
    // Sends `n` pieces of 100 bytes, one at a time; returns what it sent.
    let small_pieces = |s: &mut TcpStream, n: usize| {
        s.set_nodelay(true).expect("nodelay");
        // The head is read alone first: every piece is then spliced.
        std::thread::sleep(Duration::from_millis(50));
        let mut sent = Vec::with_capacity(n * 100);
        for i in 0..n {
            let piece = [b'0' + (i % 10) as u8; 100];
            s.write_all(&piece).expect("piece");
            sent.extend_from_slice(&piece);
            std::thread::sleep(Duration::from_millis(3));
        }
        std::thread::sleep(Duration::from_millis(50));
        sent
    };
    let mut s = connect(rig.srv.addr);
    s.write_all(put_head("/vod/p/a.ts", 1_000_000, "").as_bytes())
        .expect("head");
    small_pieces(&mut s, slots);
    drop(s);
    uploads_ended(&rig, "disconnect with the pipe's slots taken").await;
    nothing_written(&rig, &before, "/vod/p/a.ts", &old, "slots taken").await;
    // Seen as the disconnect it is, not waited out until body_timeout.
    let m = rig.metrics().await;
    let refused = |reason: &str| metric_with(&m, "segd_refusals_total", &[("reason", reason)]);
    assert_eq!(refused("body_incomplete"), Some(2.0), "{m}");
    assert_eq!(refused("body_timeout"), None, "{m}");

    // The same pieces, then the rest of the body: a full pipe is drained, and the body is whole.
    let mut s = connect(rig.srv.addr);
    let rest = payload(200_000, 26);
    s.write_all(put_head("/vod/p/pieces.ts", slots * 100 + rest.len(), "").as_bytes())
        .expect("head");
    let mut pieces = small_pieces(&mut s, slots);
    s.write_all(&rest).expect("the rest");
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 201"), "pieces: {answer:?}");
    pieces.extend_from_slice(&rest);
    assert_file(
        &vol.join("vod/p/pieces.ts"),
        &pieces,
        "small pieces, then the rest",
    );
    let before = tree(&vol);

    // The client stalls mid-body: 408 after body_timeout, nothing written.
    let mut s = connect(rig.srv.addr);
    s.write_all(put_head("/vod/p/a.ts", 1000, "").as_bytes())
        .expect("head");
    s.write_all(&[b'x'; 500]).expect("half the body");
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "stall: {answer:?}");
    nothing_written(&rig, &before, "/vod/p/a.ts", &old, "stall").await;

    // A body many pipes long, sent in one go: the pipe fills and drains in turn.
    let big = payload(3 << 20, 22);
    let mut s = connect(rig.srv.addr);
    let mut wire = put_head("/vod/p/a.ts", big.len(), "").into_bytes();
    wire.extend_from_slice(&big);
    s.write_all(&wire).expect("big upload");
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 204"), "replace: {answer:?}");
    assert_file(&vol.join("vod/p/a.ts"), &big, "3 MiB through the pipe");

    // The same in small pieces with pauses: the pipe takes what has arrived each time.
    let slow = payload(700_000, 23);
    s.write_all(put_head("/vod/p/slow.ts", slow.len(), "").as_bytes())
        .expect("head");
    for piece in slow.chunks(50_000) {
        s.write_all(piece).expect("piece");
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 201"), "slow: {answer:?}");
    assert_file(&vol.join("vod/p/slow.ts"), &slow, "sent in pieces");

    // A request pipelined right behind the body stays out of the pipe and is answered next,
    // with the new bytes.
    let small = payload(70_000, 24);
    put_then_get_pipelined(&mut s, "/vod/p/b.ts", &tok, &small);

    // Expect: 100-continue: the 100, then the body, then 201.
    let c = payload(500_000, 25);
    s.write_all(put_head("/vod/p/c.ts", c.len(), "Expect: 100-continue\r\n").as_bytes())
        .expect("head");
    let interim = read_head(&mut s);
    assert!(interim.starts_with("HTTP/1.1 100"), "Expect: {interim:?}");
    s.write_all(&c).expect("body");
    let done = read_head(&mut s);
    assert!(done.starts_with("HTTP/1.1 201"), "after 100: {done:?}");
    assert_file(&vol.join("vod/p/c.ts"), &c, "Expect upload");
    assert_no_tmp(&vol, "end");

    // Everything committed went through the pipe, but for what arrived with each head.
    let m = rig.metrics().await;
    let committed = (pieces.len() + big.len() + slow.len() + small.len() + c.len()) as f64;
    let spliced = metric(&m, "segd_ingest_spliced_bytes_total").expect("spliced bytes");
    assert_eq!(metric(&m, "segd_ingest_bytes_total"), Some(committed));
    assert!(
        spliced <= committed && spliced >= committed - 5.0 * 4096.0,
        "spliced {spliced} of {committed} committed bytes"
    );
}

/// Waits until segd counts one upload in progress.
async fn in_progress(rig: &Rig, what: &str) {
    let busy = eventually(Duration::from_secs(10), async || {
        metric(&rig.metrics().await, "segd_ingest_uploads_in_progress") == Some(1.0)
    })
    .await;
    assert!(busy, "{what}: upload in progress:\n{}", rig.metrics().await);
}

/// A failed upload into directories that did not exist leaves none of them behind (issue 12:
/// "leaves no trace"; docs/ingest.md: empty directories are removed, never above the prefix):
/// client gone mid-body, a malformed chunk, too many bytes, `body_timeout` after a 100
/// (Continue), an HTTP/2 stream reset. Directories that were there before stay, empty or not.
#[tokio::test]
async fn failed_uploads_leave_no_new_directories() {
    let rig = Rig::start(
        &["disk1"],
        &[("body_timeout", "\"1s\""), ("max_body_bytes", "\"1MiB\"")],
        "",
        |d| {
            std::fs::create_dir_all(d.join("disk1/live/empty")).expect("mkdir");
        },
    );
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let before = tree(&vol);
    // Bodies longer than one write buffer: the upload is placed (its directories made) before
    // the body is read.
    let big = payload(600_000, 21);
    let chunked = |tail: &str| -> Vec<u8> {
        let mut b = format!("{:x}\r\n", big.len()).into_bytes();
        b.extend_from_slice(&big);
        b.extend_from_slice(tail.as_bytes());
        b
    };
    for (what, path, head, body, status) in [
        (
            "client gone",
            "/live/n1/a/b/x.ts",
            "Content-Length: 900000\r\n",
            big.clone(),
            None,
        ),
        (
            "malformed chunk",
            "/live/n2/a/x.ts",
            "Transfer-Encoding: chunked\r\n",
            chunked("\r\nzz\r\n"),
            Some("400"),
        ),
        (
            "body timeout after 100",
            "/live/n4/x.ts",
            "Content-Length: 900000\r\nExpect: 100-continue\r\n",
            Vec::new(),
            Some("408"),
        ),
    ] {
        let mut s = connect(rig.srv.addr);
        let head = format!("PUT {} HTTP/1.1\r\nHost: t\r\n{head}\r\n", q(path, &tok));
        s.write_all(head.as_bytes()).expect("head");
        // A peer that stops reading may make this write fail: the answer is what counts.
        let _ = s.write_all(&body);
        match status {
            None => {
                in_progress(&rig, what).await;
                drop(s);
            }
            Some(code) => {
                let mut answer = read_head(&mut s);
                if answer.starts_with("HTTP/1.1 100") {
                    answer = read_head(&mut s);
                }
                assert!(
                    answer.contains(&format!("HTTP/1.1 {code}")),
                    "{what}: {answer:?}"
                );
            }
        }
        uploads_ended(&rig, what).await;
        no_tmp_eventually(&vol, what).await;
        assert_eq!(tree(&vol), before, "{what}: no directory left");
    }

    // Too many bytes, chunked (counted, not declared).
    let r = curl_put_chunked(
        &rig.url(&q("/live/empty/n3/x.ts", &tok)),
        &payload(1_200_000, 23),
    );
    assert_eq!(r.status(), 413, "{r:?}");
    uploads_ended(&rig, "413").await;
    no_tmp_eventually(&vol, "413").await;
    assert_eq!(tree(&vol), before, "413: no directory left");

    // HTTP/2: a stream reset mid-body.
    let (client, driver) = h2c(rig.srv.addr).await;
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::builder()
        .method("PUT")
        .uri(rig.url(&q("/live/n5/a/x.ts", &tok)))
        .header("content-length", "900000")
        .body(())
        .expect("request");
    let (resp, mut stream) = client.send_request(req, false).expect("send");
    stream
        .send_data(Bytes::from(payload(16_000, 22)), false)
        .expect("data");
    in_progress(&rig, "h2 reset").await;
    stream.send_reset(h2::Reason::CANCEL);
    uploads_ended(&rig, "h2 reset").await;
    drop((resp, client));
    driver.abort();
    no_tmp_eventually(&vol, "h2 reset").await;
    assert_eq!(tree(&vol), before, "h2 reset: no directory left");

    // A complete upload keeps its directories.
    let r = curl_put(&rig.url(&q("/live/n6/a/x.ts", &tok)), &big, &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    assert_eq!(read(&vol.join("live/n6/a/x.ts")), big);
}
/// Two uploads cut short in one new directory (both clients close mid-body): whichever ends
/// first, the last to go takes the directory along. (When the one that made it ended first,
/// the directory stayed, empty, and counted as a trace of the stream: acceptance F7.) A third
/// that completes keeps it.
#[tokio::test]
async fn uploads_cut_short_in_one_new_directory_leave_it_not() {
    let rig = Rig::start(&["disk1"], &[], "", |_| {});
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    std::fs::create_dir_all(vol.join("live")).expect("mkdir");
    let before = tree(&vol);
    let open = |path: &str| {
        let mut s = connect(rig.srv.addr);
        // Longer than one write buffer: placed (its directory made) before the body is read.
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n",
            q(path, &tok)
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&[b'x'; 10]).expect("body");
        s
    };
    for (case, maker_first) in [("ed1", true), ("ed2", false)] {
        let a = open(&format!("/live/{case}/a.ts"));
        let placed = eventually(Duration::from_secs(10), async || tmp_files(&vol).len() == 1).await;
        assert!(placed, "{case}: the first upload made its directory");
        let b = open(&format!("/live/{case}/b.ts"));
        let placed = eventually(Duration::from_secs(10), async || tmp_files(&vol).len() == 2).await;
        assert!(placed, "{case}: both uploads placed");
        let (first, second) = if maker_first { (a, b) } else { (b, a) };
        drop(first);
        let one = eventually(Duration::from_secs(10), async || {
            metric(&rig.metrics().await, "segd_ingest_uploads_in_progress") == Some(1.0)
        })
        .await;
        assert!(one, "{case}: the first ended");
        assert!(vol.join("live").join(case).is_dir(), "{case}: still in use");
        drop(second);
        uploads_ended(&rig, case).await;
        no_tmp_eventually(&vol, case).await;
        assert_eq!(tree(&vol), before, "{case}: no directory left");
    }
    // One of them completing keeps it.
    let a = open("/live/ed3/a.ts");
    let placed = eventually(Duration::from_secs(10), async || tmp_files(&vol).len() == 1).await;
    assert!(placed, "ed3: placed");
    let r = curl_put(&rig.url(&q("/live/ed3/b.ts", &tok)), b"done", &[]);
    assert_eq!(r.status(), 201, "{r:?}");
    drop(a);
    uploads_ended(&rig, "ed3").await;
    no_tmp_eventually(&vol, "ed3").await;
    assert_eq!(read(&vol.join("live/ed3/b.ts")), b"done");
}

#[tokio::test]
async fn malformed_chunked_body_is_400() {
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/mc")).expect("mkdir");
        std::fs::write(d.join("disk1/live/mc/a.ts"), b"old").expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let before = tree(&vol);
    for (path, body) in [
        ("/live/mc/a.ts", "zz\r\nhello\r\n0\r\n\r\n"),
        ("/live/mc/new.ts", "zz\r\nhello\r\n0\r\n\r\n"),
        ("/live/mc/a.ts", "5\r\nhello\r\nzz\r\n0\r\n\r\n"),
        ("/live/mc/a.ts", "5\r\nhelloXX0\r\n\r\n"),
    ] {
        let req = format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
            q(path, &tok)
        );
        let mut s = connect(rig.srv.addr);
        s.write_all(req.as_bytes()).expect("write");
        let answer = read_head(&mut s);
        assert!(answer.starts_with("HTTP/1.1 400"), "{body:?}: {answer:?}");
        no_tmp_eventually(&vol, body).await;
        assert_eq!(tree(&vol), before, "{body:?}: nothing written");
    }
    assert_eq!(
        get_on(&rig.url("/live/mc/a.ts"), false).await.body.as_ref(),
        b"old"
    );
}

/// A new object of unknown length (chunked) placed before its body arrives (`Expect:
/// 100-continue`, what curl sends with `-T` and chunked) goes to a volume with room above the
/// reserve. It said 0 bytes, so the placement volume with no room left passed the check and the
/// first byte written was a 507, while another volume had gigabytes (acceptance D-F9).
#[tokio::test]
async fn a_chunked_upload_of_unknown_length_skips_a_volume_at_its_reserve() {
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).expect("mkdir");
    let _m = Mount::tmpfs(&small, "16m").expect("mount a tmpfs (root)");
    let rig = Rig::start_in(
        dir,
        &["big", "small"],
        &[("reserve", "\"64MiB\"")],
        "",
        |_| {},
    );
    let tok = upload_token("/live/*");
    for i in 0..16 {
        let path = format!("/live/new{i:02}/a.ts");
        let r = curl(
            &[
                "-T",
                "-",
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                "Expect: 100-continue",
                &rig.url(&q(&path, &tok)),
            ],
            Some(b"a new stream's first segment"),
        );
        assert_eq!(r.status(), 201, "{path}: {r:?}");
        let on_big = rig.vol("big").join(path.trim_start_matches('/'));
        assert!(on_big.is_file(), "{path} is not on the volume with room");
    }
    assert_no_tmp(&rig.vol("small"), "nothing on the full volume");
}

/// Uploads side by side keep the reserve together: each is promised its room on the volume
/// (its length, or steps of a body of unknown length) from the free space above the reserve
/// beside what the others were promised. 12 concurrent 1 MiB uploads onto an 8 MiB volume with
/// a 2 MiB reserve each saw the same free space and together left 0–1 MiB (acceptance H-F1).
/// With `Content-Length` and chunked bodies; the refused ones leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_keep_the_reserve_together() {
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("small");
    std::fs::create_dir_all(&vol).expect("mkdir");
    let _m = Mount::tmpfs(&vol, "8m").expect("mount a tmpfs (root)");
    let rig = Rig::start_in(dir, &["small"], &[("reserve", "\"2MiB\"")], "", |_| {});
    let tok = upload_token("/vod/*");
    let free = || {
        let st = rustix::fs::statvfs(&vol).expect("statvfs");
        st.f_bavail * st.f_frsize
    };
    for chunked in [false, true] {
        let body = vec![b'x'; MIB];
        let mut conns: Vec<TcpStream> = (0..12)
            .map(|i| {
                let mut c = TcpStream::connect(rig.srv.addr).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let target = q(&format!("/vod/r{chunked}/s{i}.ts"), &tok);
                let framing = if chunked {
                    "Transfer-Encoding: chunked".to_string()
                } else {
                    format!("Content-Length: {MIB}")
                };
                c.write_all(
                    format!("PUT {target} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n").as_bytes(),
                )
                .expect("head");
                c
            })
            .collect();
        // Every upload under way (half its body each), then the rest.
        for half in [&body[..MIB / 2], &body[MIB / 2..]] {
            for c in &mut conns {
                let out = if chunked {
                    let mut o = format!("{:x}\r\n", half.len()).into_bytes();
                    o.extend_from_slice(half);
                    o.extend_from_slice(b"\r\n");
                    o
                } else {
                    half.to_vec()
                };
                // A refused upload may be answered (and closed) before all of it is sent.
                let _ = c.write_all(&out);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut statuses = Vec::new();
        for c in &mut conns {
            if chunked {
                let _ = c.write_all(b"0\r\n\r\n");
            }
            let text = read_head(c);
            statuses.push(text.split(' ').nth(1).unwrap_or("none").to_string());
        }
        let taken = statuses.iter().filter(|s| *s == "201").count();
        assert!(
            statuses.iter().all(|s| s == "201" || s == "507"),
            "chunked {chunked}: {statuses:?}"
        );
        assert!(taken >= 1, "chunked {chunked}: some fit: {statuses:?}");
        assert!(
            free() >= 2 * MIB as u64,
            "chunked {chunked}: {} bytes left free, under the 2 MiB reserve ({statuses:?})",
            free()
        );
        assert_no_tmp(&vol, "refused uploads leave nothing");
        // Room for the next round.
        std::fs::remove_dir_all(vol.join(format!("vod/r{chunked}"))).expect("clean");
    }
}

/// A playlist upload of `target` that has sent its head (`Content-Length: 1000`) and its
/// first bytes, and no more.
fn playlist_upload_begun(rig: &Rig, target: &str) -> TcpStream {
    let mut a = TcpStream::connect(rig.srv.addr).expect("connect");
    a.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    a.write_all(
        format!("PUT {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n#EXTM3U\n")
            .as_bytes(),
    )
    .expect("write");
    a
}

/// Uploads of one path are taken one at a time. A stalled one (its client's connection lost
/// mid-body) held every newer upload of the path for its `body_timeout`, a live playlist's
/// newer versions included (the stream froze for 30 s by default), and the n-th waiter n
/// times as long. Once a newer upload has waited 2 s for it, it gives up (409) and the newer
/// one goes on.
#[tokio::test]
async fn a_stalled_upload_yields_to_a_newer_one_of_the_same_path() {
    let rig = Rig::simple(&[("body_timeout", "\"20s\"")]);
    let tok = upload_token("/live/*");
    let vol = rig.vol("disk1");
    // A trickling upload (a byte every half second: lossy, not silent) yields too: it held the
    // newer one for as long as it trickled (acceptance H-F4).
    for trickle in [false, true] {
        let path = format!("/live/yield{trickle}/index.m3u8");
        // A: a playlist upload that stops after its first bytes, or trickles on.
        let mut a = playlist_upload_begun(&rig, &q(&path, &tok));
        let drip = trickle.then(|| {
            let mut dripper = a.try_clone().expect("clone");
            std::thread::spawn(move || {
                for _ in 0..40 {
                    std::thread::sleep(Duration::from_millis(500));
                    if dripper.write_all(b"#").is_err() {
                        break;
                    }
                }
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        // B: a whole newer version.
        let newer =
            b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:4.0,\ns0.ts\n";
        let t0 = Instant::now();
        let r = curl_put(&rig.url(&q(&path, &tok)), newer, &[]);
        let took = t0.elapsed();
        assert_eq!(r.status(), 201, "trickle {trickle}: {r:?}");
        assert!(
            took < Duration::from_secs(8),
            "trickle {trickle}: the newer upload waited {took:?} for the older one (body_timeout 20 s)"
        );
        let mut answer = Vec::new();
        let _ = a.read_to_end(&mut answer);
        assert_eq!(
            raw_status(&answer),
            409,
            "trickle {trickle}: {}",
            String::from_utf8_lossy(&answer)
        );
        if let Some(d) = drip {
            let _ = d.join();
        }
        assert_eq!(
            std::fs::read(vol.join(path.trim_start_matches('/')))
                .ok()
                .as_deref(),
            Some(&newer[..])
        );
    }
    assert_no_tmp(&vol, "superseded uploads");
}

#[tokio::test]
async fn reserve_beyond_free_space_is_507() {
    // 1000 TiB: more than any test disk has free.
    let rig = Rig::start(&["disk1"], &[("reserve", "\"1000TiB\"")], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/full")).expect("mkdir");
        std::fs::write(d.join("disk1/live/full/a.ts"), b"old").expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    let before = tree(&vol);
    let r = curl_put(&rig.url(&q("/live/full/a.ts", &tok)), b"new", &[]);
    assert_eq!(r.status(), 507, "{r:?}");
    let r = curl_put_chunked(&rig.url(&q("/live/full/b.ts", &tok)), b"new");
    assert_eq!(r.status(), 507, "chunked: {r:?}");
    // A 507 is known before the body: no 100.
    let r = curl_put(
        &rig.url(&q("/live/full/a.ts", &tok)),
        &payload(2 << 20, 1),
        &["-H", "Expect: 100-continue"],
    );
    assert_eq!(r.statuses, vec![507], "{r:?}");
    // Also for a body small enough to be placed with its commit otherwise.
    let r = curl_put(
        &rig.url(&q("/live/full/c.ts", &tok)),
        b"small",
        &["-H", "Expect: 100-continue"],
    );
    assert_eq!(r.statuses, vec![507], "small body, Expect: {r:?}");
    assert_eq!(tree(&vol), before, "nothing written");
    assert_no_tmp(&vol, "507");
    assert_eq!(
        get_on(&rig.url("/live/full/a.ts"), false)
            .await
            .body
            .as_ref(),
        b"old"
    );
    // Reads and DELETE need no space.
    let r = curl_delete(&rig.url(&q("/live/full/a.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    let m = rig.metrics().await;
    // Each of the four refusals counted, whether before the body (Expect) or with the commit.
    assert_eq!(
        metric(&m, "segd_ingest_insufficient_storage_total"),
        Some(4.0),
        "{m}"
    );
}

#[tokio::test]
async fn max_uploads_is_503_with_retry_after() {
    let rig = Rig::simple(&[("max_uploads", "1")]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");
    // One upload stalls mid-body…
    let mut s = connect(rig.srv.addr);
    s.write_all(
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
            q("/live/slots/a.ts", &tok)
        )
        .as_bytes(),
    )
    .expect("head");
    s.write_all(&[b'a'; 10]).expect("10 bytes");
    in_progress(&rig, "the stalled upload").await;
    // …so the next is refused at once, on either protocol, with nothing written.
    let r = curl_put(&rig.url(&q("/live/slots/b.ts", &tok)), b"b", &[]);
    assert_eq!(r.status(), 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = send(
        "PUT",
        &rig.url(&q("/live/slots/b.ts", &tok)),
        &[],
        b"b",
        true,
    )
    .await;
    assert_eq!(r.status, 503, "h2c");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(!vol.join("live/slots/b.ts").exists());
    // The first one completes; then there is room again.
    s.write_all(&[b'a'; 990]).expect("rest");
    let answer = read_head(&mut s);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
    assert_eq!(read(&vol.join("live/slots/a.ts")), vec![b'a'; 1000]);
    let free = eventually(Duration::from_secs(10), async || {
        curl_put(&rig.url(&q("/live/slots/b.ts", &tok)), b"b", &[]).status() == 201
    })
    .await;
    assert!(free, "room again after the first upload finished");
    assert_eq!(read(&vol.join("live/slots/b.ts")), b"b");
    assert_no_tmp(&vol, "end");
}

// ---------------------------------------------------------------------------------------------
// 5. Crash leftovers

#[tokio::test]
async fn temp_files_from_a_crash_are_removed_at_start() {
    let rig = Rig::start(&["disk1", "disk2"], &[], "", |d| {
        let show = d.join("disk1/live/show");
        std::fs::create_dir_all(&show).expect("mkdir");
        std::fs::write(show.join(".segd-tmp-abc123"), b"half an upload").expect("write");
        std::fs::write(show.join("seg.ts"), b"a real segment").expect("write");
        let deep = d.join("disk2/vod/asset/64k");
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::write(deep.join(".segd-tmp-Zq9"), b"another").expect("write");
        std::fs::write(deep.join("index.m3u8"), b"#EXTM3U\n").expect("write");
    });
    let (d1, d2) = (rig.vol("disk1"), rig.vol("disk2"));
    let gone = eventually(Duration::from_secs(10), async || {
        tmp_files(&d1).is_empty() && tmp_files(&d2).is_empty()
    })
    .await;
    assert!(gone, "left: {:?} {:?}", tmp_files(&d1), tmp_files(&d2));
    assert_eq!(read(&d1.join("live/show/seg.ts")), b"a real segment");
    assert_eq!(read(&d2.join("vod/asset/64k/index.m3u8")), b"#EXTM3U\n");
    assert_eq!(
        get(&rig.url("/live/show/seg.ts"), &[]).await.body.as_ref(),
        b"a real segment"
    );
    let counted = eventually(Duration::from_secs(5), async || {
        metric(&rig.metrics().await, "segd_ingest_temp_removed_total").is_some_and(|v| v >= 2.0)
    })
    .await;
    assert!(counted, "{}", rig.metrics().await);
}

// ---------------------------------------------------------------------------------------------
// 6. Placement

/// The volume `segd place` picks for `path` under the server's config.
fn placed(srv: &Server, path: &str) -> String {
    placed_with(&srv.config, path)
}

/// The volume `segd place` picks for `path` among volumes named `vols` (in this order).
fn placed_before_start(vols: &[&str], path: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = vols.iter().map(|v| dir.path().join(v)).collect();
    for v in &paths {
        std::fs::create_dir_all(v).expect("mkdir volume");
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let cfg = dir.path().join("segd.toml");
    std::fs::write(&cfg, config_for(&refs, &ingest_section(&[]))).expect("write config");
    placed_with(&cfg, path)
}

fn placed_with(config: &Path, path: &str) -> String {
    let out = Command::new(BIN)
        .args(["place", "--config"])
        .arg(config)
        .arg(path)
        .output()
        .expect("segd place");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split('\t')
        .nth(1)
        .expect("volume column")
        .to_string()
}

#[tokio::test]
async fn placement_keeps_an_asset_on_one_volume() {
    let both = ["disk1", "disk2"];
    let other = |v: &str| if v == "disk1" { "disk2" } else { "disk1" };
    // showB is laid out by hand on the volume the rule does NOT pick (found with a first start).
    let pref_b = placed_before_start(&both, "/live/showB/x.ts");
    let rig = Rig::start(&both, &[], "", |d| {
        let dir = d.join(other(&pref_b)).join("live/showB");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("existing.ts"), b"here first").expect("write");
    });
    let tok = upload_token("/live/*");

    // showA: the first object goes where the rule says; the later ones follow it.
    let pref_a = placed(&rig.srv, "/live/showA/x.ts");
    for (i, path) in [
        "/live/showA/first.ts",
        "/live/showA/index.m3u8",
        "/live/showA/128k/seg1.ts",
        "/live/showA/128k/deeper/seg2.ts",
    ]
    .iter()
    .enumerate()
    {
        let body = payload(100 + i, i as u32);
        let r = curl_put(&rig.url(&q(path, &tok)), &body, &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
        assert_eq!(read(&rig.vol(&pref_a).join(&path[1..])), body, "{path}");
        assert!(
            !rig.vol(other(&pref_a)).join(&path[1..]).exists(),
            "{path} only on {pref_a}"
        );
    }
    // showB already lives on the other volume: new objects go there, not where the rule points.
    for path in ["/live/showB/new.ts", "/live/showB/64k/new.ts"] {
        let r = curl_put(&rig.url(&q(path, &tok)), path.as_bytes(), &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
        assert_eq!(
            read(&rig.vol(other(&pref_b)).join(&path[1..])),
            path.as_bytes()
        );
        assert!(
            !rig.vol(&pref_b).join("live/showB").exists(),
            "nothing of showB on the preferred volume {pref_b}"
        );
        assert_eq!(
            get(&rig.url(path), &[]).await.body.as_ref(),
            path.as_bytes()
        );
    }
    // A replace stays where the object is.
    let r = curl_put(
        &rig.url(&q("/live/showB/existing.ts", &tok)),
        b"replaced",
        &[],
    );
    assert_eq!(r.status(), 204, "{r:?}");
    assert_eq!(
        read(&rig.vol(other(&pref_b)).join("live/showB/existing.ts")),
        b"replaced"
    );
    assert!(!rig.vol(&pref_b).join("live/showB").exists());
    assert_no_tmp(rig.dir.path(), "end");
}

// ---------------------------------------------------------------------------------------------
// 7–8. ffmpeg pushing live HLS and DASH

/// ffmpeg's input: 9 s of a 440 Hz tone, AAC 64k (`re`: at real-time pace).
fn ffmpeg_input(re: bool) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "warning", "-y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if re {
        a.push("-re".into());
    }
    for s in [
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "9",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
    ] {
        a.push(s.into());
    }
    a
}

/// Runs ffmpeg to the end; while it runs, `poll` is called every 200 ms. Returns what it
/// logged (for a failure's message: ffmpeg does not wait for answers, so an upload it could
/// not make shows only there).
async fn run_ffmpeg(args: &[String], mut poll: impl AsyncFnMut()) -> String {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.reopen().expect("reopen log")))
        .spawn()
        .expect("run ffmpeg (Debian package ffmpeg)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ffmpeg did not finish: {}", read_log(log.path()));
        }
        poll().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        status.success(),
        "ffmpeg {args:?} failed: {}",
        read_log(log.path())
    );
    read_log(log.path())
}

fn read_log(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// `ffprobe` on a URL served by segd: the codec types and names of its streams.
fn ffprobe(url: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name",
            "-of",
            "csv=p=0",
            url,
        ])
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HLS media playlist: media sequence, segment URIs, the EXT-X-MAP URI, ended or not.
struct Playlist {
    sequence: u64,
    segments: Vec<String>,
    map: Option<String>,
    ended: bool,
}

fn parse_playlist(text: &str) -> Playlist {
    let mut pl = Playlist {
        sequence: 0,
        segments: Vec::new(),
        map: None,
        ended: false,
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(n) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            pl.sequence = n.parse().expect("media sequence");
        } else if let Some(rest) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            pl.map = Some(rest[..rest.find('"').expect("quote")].to_string());
        } else if line == "#EXT-X-ENDLIST" {
            pl.ended = true;
        } else if !line.starts_with('#') {
            pl.segments.push(line.to_string());
        }
    }
    pl
}

#[derive(Clone, Copy)]
enum Hls {
    Ts,
    TsPersistent,
    /// `-http_persistent 1` to the TLS listener: ffmpeg pipelines its last segment and final
    /// playlist there too and exits without reading the answers.
    TsPersistentTls,
    Fmp4,
}

/// ffmpeg pushes 9 s of live HLS (3-segment window, old segments deleted) with the
/// path-embedded upload token; the playlist is served while it runs; at the end the disk holds
/// the playlist, its segments (plus at most the one `hls_delete_threshold` keeps), the init
/// segment for fMP4, and nothing else; ffprobe reads the stream back from segd.
async fn hls_push(kind: Hls) {
    // The access log, for a failure's message.
    let log = "[log]\naccess = \"stdout\"\n";
    let rig = if matches!(kind, Hls::TsPersistentTls) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, _) = crate::tls::Pki::new().leaf("segd-up");
        let tls = crate::tls::tls_config(dir.path(), &cert, &key);
        Rig::start_in(dir, &["disk1"], &[], &(tls + log), |_| {})
    } else {
        Rig::start(&["disk1"], &[], log, |_| {})
    };
    let vol = rig.vol("disk1");
    let dir = vol.join("live/s1");
    let tok = upload_token("/live/s1/*");
    let target = match kind {
        Hls::TsPersistentTls => rig.tls_url(&p("/live/s1/index.m3u8", &tok)),
        _ => rig.url(&p("/live/s1/index.m3u8", &tok)),
    };
    let mut args = ffmpeg_input(true);
    for s in [
        "-f",
        "hls",
        "-hls_time",
        "2",
        "-hls_list_size",
        "3",
        "-hls_flags",
        "delete_segments",
        "-method",
        "PUT",
    ] {
        args.push(s.into());
    }
    let ext = match kind {
        Hls::Ts => "ts",
        Hls::TsPersistent | Hls::TsPersistentTls => {
            args.extend(["-http_persistent".into(), "1".into()]);
            "ts"
        }
        Hls::Fmp4 => {
            args.extend(["-hls_segment_type".into(), "fmp4".into()]);
            "m4s"
        }
    };
    args.push(target);

    let playlist_url = rig.url("/live/s1/index.m3u8");
    let mut live_versions = BTreeSet::new();
    let ffmpeg_log = run_ffmpeg(&args, async || {
        let r = get_on(&playlist_url, false).await;
        if r.status == 200 && !parse_playlist(&r.text()).ended {
            live_versions.insert(r.text());
        }
    })
    .await;
    assert!(
        live_versions.len() >= 2,
        "the playlist was served and updated while ffmpeg ran: {live_versions:?}"
    );
    for v in &live_versions {
        assert!(v.starts_with("#EXTM3U"), "never a partial playlist: {v:?}");
    }

    // ffmpeg does not wait for answers: wait for the last playlist and the last DELETE.
    let check = async || -> Result<Playlist, String> {
        let r = get_on(&playlist_url, false).await;
        let pl = parse_playlist(&r.text());
        if r.status != 200 || !pl.ended {
            return Err(format!("final playlist not there yet: {}", r.text()));
        }
        let on_disk = names(&dir);
        let mut want: BTreeSet<String> = pl.segments.iter().cloned().collect();
        want.insert("index.m3u8".into());
        if let Some(m) = &pl.map {
            want.insert(m.clone());
        }
        // hls_delete_threshold (default 1) keeps the segment just before the window.
        let kept = format!("index{}.{ext}", pl.sequence.saturating_sub(1));
        let extra: BTreeSet<&String> = on_disk.difference(&want).collect();
        if !want.is_subset(&on_disk) || extra.iter().any(|e| **e != kept) {
            return Err(format!("disk {on_disk:?}, playlist wants {want:?}"));
        }
        Ok(pl)
    };
    let mut last = String::new();
    let mut final_pl = None;
    let settled = eventually(Duration::from_secs(15), async || match check().await {
        Ok(pl) => {
            final_pl = Some(pl);
            true
        }
        Err(e) => {
            last = e;
            false
        }
    })
    .await;
    assert!(
        settled,
        "{last}\nffmpeg logged:\n{ffmpeg_log}\nsegd logged:\n{}\nsegd's access log (writes):\n{}",
        rig.srv.stderr(),
        rig.srv
            .stdout
            .lock()
            .map(|s| s
                .lines()
                .filter(|l| !l.contains("\"method\":\"GET\""))
                .collect::<Vec<_>>()
                .join("\n"))
            .unwrap_or_default()
    );
    let pl = final_pl.expect("final playlist");
    assert!(
        pl.sequence >= 2,
        "segments left the window and were deleted (sequence {})",
        pl.sequence
    );
    assert!(
        !dir.join(format!("index0.{ext}")).exists(),
        "index0 deleted"
    );
    assert_eq!(pl.segments.len(), 3);
    assert_eq!(pl.map.is_some(), matches!(kind, Hls::Fmp4));
    if matches!(kind, Hls::Fmp4) {
        assert_eq!(pl.map.as_deref(), Some("init.mp4"));
    }
    for s in pl.segments.iter().chain(pl.map.iter()) {
        let g = get_on(&rig.url(&format!("/live/s1/{s}")), true).await;
        assert_eq!(g.status, 200, "{s}");
        assert!(g.body.as_ref() == read(&dir.join(s)).as_slice(), "{s}");
        assert!(!g.body.is_empty(), "{s}");
    }
    assert_no_tmp(&vol, "after ffmpeg");
    let probe = ffprobe(&playlist_url);
    assert!(probe.contains("aac,audio"), "ffprobe: {probe:?}");
}

#[tokio::test]
async fn ffmpeg_hls_ts_push() {
    hls_push(Hls::Ts).await;
}

#[tokio::test]
async fn ffmpeg_hls_ts_push_persistent_connection() {
    hls_push(Hls::TsPersistent).await;
}

/// Over TLS with `-http_persistent 1`, the uploads ffmpeg pipelined before it left (the last
/// segment and the final playlist) are carried out as on plaintext.
#[tokio::test]
async fn ffmpeg_hls_ts_push_persistent_connection_over_tls() {
    hls_push(Hls::TsPersistentTls).await;
}

#[tokio::test]
async fn ffmpeg_hls_fmp4_push() {
    hls_push(Hls::Fmp4).await;
}

/// A query token reaches only the playlist: ffmpeg drops the query from segment and DELETE
/// URLs, so segments are refused (403) and never written. (Why the docs say: use the path form.)
#[tokio::test]
async fn ffmpeg_hls_query_token_reaches_only_the_playlist() {
    let rig = Rig::simple(&[]);
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/s1/*");
    let mut args = ffmpeg_input(false);
    for s in [
        "-f",
        "hls",
        "-hls_time",
        "2",
        "-hls_list_size",
        "3",
        "-method",
        "PUT",
    ] {
        args.push(s.into());
    }
    args.push(rig.url(&q("/live/s1/index.m3u8", &tok)));
    run_ffmpeg(&args, async || {}).await;
    let url = rig.url("/live/s1/index.m3u8");
    let ended = eventually(Duration::from_secs(10), async || {
        parse_playlist(&get_on(&url, false).await.text()).ended
    })
    .await;
    assert!(ended, "the playlist (query token) was accepted");
    assert_eq!(
        names(&vol.join("live/s1")),
        BTreeSet::from(["index.m3u8".to_string()]),
        "no segment without a token"
    );
    let m = rig.metrics().await;
    assert!(
        metric(&m, "segd_token_rejections_total{reason=\"missing\"}").is_some_and(|v| v >= 5.0),
        "every segment refused:\n{m}"
    );
    no_tmp_eventually(&vol, "query token").await;
}

#[derive(Clone, Copy)]
enum Dash {
    Post,
    Put,
    LowLatency,
    /// Low latency with `-http_persistent 1` to the TLS listener: its final static MPD is the
    /// last request on a kept-alive connection, sent right before ffmpeg exits.
    LowLatencyPersistentTls,
}

/// `startNumber` and the number of segments of the (single) representation of an MPD.
fn mpd_window(text: &str) -> (u64, u64) {
    let attr = |s: &str, name: &str| -> Option<String> {
        let i = s.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(s[i..i + s[i..].find('"')?].to_string())
    };
    let start = attr(text, "startNumber")
        .expect("startNumber")
        .parse()
        .expect("number");
    let mut n = 0;
    for s in text.split("<S ").skip(1) {
        let tag = &s[..s.find('>').expect("tag end")];
        n += 1 + attr(&format!(" {tag}"), "r").map_or(0, |r| r.parse::<u64>().expect("r"));
    }
    (start, n)
}

/// ffmpeg's DASH muxer (3-segment window, no extra window) into segd; the disk ends with exactly
/// the MPD, the init segment and the window's segments; ffprobe reads the MPD back.
async fn dash_push(kind: Dash) {
    let tls = matches!(kind, Dash::LowLatencyPersistentTls);
    let rig = if tls {
        Rig::tls(&crate::tls::Pki::new(), |_| {})
    } else {
        Rig::simple(&[])
    };
    let vol = rig.vol("disk1");
    let dir = vol.join("live/d1");
    let tok = upload_token("/live/d1/*");
    let re = matches!(kind, Dash::LowLatency | Dash::LowLatencyPersistentTls);
    let mut args = ffmpeg_input(re);
    for s in [
        "-f",
        "dash",
        "-seg_duration",
        "2",
        "-window_size",
        "3",
        "-extra_window_size",
        "0",
        "-remove_at_exit",
        "0",
    ] {
        args.push(s.into());
    }
    match kind {
        Dash::Post => {}
        Dash::Put => args.extend(["-method".into(), "PUT".into()]),
        Dash::LowLatency => {
            for s in ["-method", "PUT", "-streaming", "1", "-ldash", "1"] {
                args.push(s.into());
            }
        }
        Dash::LowLatencyPersistentTls => {
            for s in [
                "-method",
                "PUT",
                "-streaming",
                "1",
                "-ldash",
                "1",
                // What `segd sign` prints for low latency.
                "-frag_type",
                "duration",
                "-frag_duration",
                "0.2",
                "-http_persistent",
                "1",
            ] {
                args.push(s.into());
            }
        }
    }
    args.push(if tls {
        rig.tls_url(&p("/live/d1/manifest.mpd", &tok))
    } else {
        rig.url(&p("/live/d1/manifest.mpd", &tok))
    });
    let mpd_url = rig.url("/live/d1/manifest.mpd");
    let mut live = 0;
    run_ffmpeg(&args, async || {
        if re
            && get_on(&mpd_url, false)
                .await
                .text()
                .contains("type=\"dynamic\"")
        {
            live += 1;
        }
    })
    .await;
    if re {
        assert!(live > 0, "the dynamic MPD was served while ffmpeg ran");
    }
    let mut last = String::new();
    let settled = eventually(Duration::from_secs(15), async || {
        let r = get_on(&mpd_url, false).await;
        let text = r.text();
        if r.status != 200 || !text.contains("type=\"static\"") {
            last = format!("final MPD not there yet: {text}");
            return false;
        }
        let (start, n) = mpd_window(&text);
        let mut want: BTreeSet<String> = (start..start + n)
            .map(|i| format!("chunk-stream0-{i:05}.m4s"))
            .collect();
        want.insert("init-stream0.m4s".into());
        want.insert("manifest.mpd".into());
        let on_disk = names(&dir);
        last = format!("disk {on_disk:?}, MPD wants {want:?}");
        on_disk == want
    })
    .await;
    assert!(settled, "{last}");
    assert!(
        !dir.join("chunk-stream0-00001.m4s").exists(),
        "segments out of the window were deleted"
    );
    for name in names(&dir) {
        let g = get_on(&rig.url(&format!("/live/d1/{name}")), true).await;
        assert_eq!(g.status, 200, "{name}");
        assert!(
            g.body.as_ref() == read(&dir.join(&name)).as_slice(),
            "{name}"
        );
    }
    assert_no_tmp(&vol, "after ffmpeg");
    let probe = ffprobe(&mpd_url);
    assert!(probe.contains("aac,audio"), "ffprobe: {probe:?}");
}

#[tokio::test]
async fn ffmpeg_dash_post() {
    dash_push(Dash::Post).await;
}

#[tokio::test]
async fn ffmpeg_dash_put() {
    dash_push(Dash::Put).await;
}

#[tokio::test]
async fn ffmpeg_dash_low_latency_chunked() {
    dash_push(Dash::LowLatency).await;
}

/// The final static MPD of a kept-alive TLS connection arrives: segd acknowledges what it has
/// read before it waits for more, so ffmpeg (Nagle's algorithm on) does not hold it back until
/// its exit resets the connection and drops it.
#[tokio::test]
async fn ffmpeg_dash_low_latency_persistent_over_tls() {
    dash_push(Dash::LowLatencyPersistentTls).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Metrics

#[tokio::test]
async fn ingest_metrics() {
    let rig = Rig::simple(&[]);
    let tok = upload_token("/live/*");
    let mut total = 0usize;
    for (i, n) in [10_000usize, 250_000, 1].iter().enumerate() {
        let r = curl_put(
            &rig.url(&q(&format!("/live/m/{i}.ts"), &tok)),
            &payload(*n, i as u32),
            &[],
        );
        assert_eq!(r.status(), 201, "{r:?}");
        total += n;
    }
    let body = payload(77_777, 9);
    let r = curl_put_chunked(&rig.url(&q("/live/m/0.ts", &tok)), &body);
    assert_eq!(r.status(), 204, "{r:?}");
    total += body.len();
    let r = send(
        "POST",
        &rig.url(&q("/live/m/h2.ts", &tok)),
        &[],
        b"h2",
        true,
    )
    .await;
    assert_eq!(r.status, 201);
    total += 2;
    let r = curl_delete(&rig.url(&q("/live/m/1.ts", &tok)));
    assert_eq!(r.status(), 204, "{r:?}");
    let r = curl_put(&rig.url("/live/m/x.ts"), b"no token", &[]);
    assert_eq!(r.status(), 403);

    // Requests are counted once their answer is sent: wait for the counters to catch up.
    let mut m = String::new();
    let ok = eventually(Duration::from_secs(5), async || {
        m = rig.metrics().await;
        let put2 = metric_with(
            &m,
            "segd_http_requests_total",
            &[("method", "PUT"), ("status_class", "2xx"), ("proto", "h1")],
        );
        let post2 = metric_with(
            &m,
            "segd_http_requests_total",
            &[("method", "POST"), ("status_class", "2xx"), ("proto", "h2")],
        );
        let del2 = metric_with(
            &m,
            "segd_http_requests_total",
            &[("method", "DELETE"), ("status_class", "2xx")],
        );
        let put4 = metric_with(
            &m,
            "segd_http_requests_total",
            &[("method", "PUT"), ("status_class", "4xx")],
        );
        put2 == Some(4.0) && post2 == Some(1.0) && del2 == Some(1.0) && put4 == Some(1.0)
    })
    .await;
    assert!(ok, "request counters:\n{m}");
    assert!(
        metric(&m, "segd_ingest_bytes_total").is_some_and(|v| v >= total as f64),
        "ingest bytes >= {total}:\n{m}"
    );
    assert!(
        metric(&m, "segd_ingest_duration_seconds_count").is_some_and(|v| v >= 5.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "segd_ingest_uploads_in_progress"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "segd_ingest_temp_removed_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "segd_ingest_insufficient_storage_total"),
        Some(0.0),
        "{m}"
    );
}

/// An HTTP/3 request's final answer: its status after any interim ones, the body read to its end.
async fn h3_final(
    s: &mut h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    what: &str,
) -> u16 {
    let mut status = 100;
    while status == 100 {
        let head = tokio::time::timeout(Duration::from_secs(10), s.recv_response())
            .await
            .unwrap_or_else(|_| panic!("{what}: an answer within 10 s"))
            .unwrap_or_else(|e| panic!("{what}: answer: {e}"));
        status = head.status().as_u16();
    }
    while let Ok(Some(_)) = s.recv_data().await {}
    status
}

/// Uploads over HTTP/2 and HTTP/3 follow the contract as HTTP/1.1 does: created, replaced, read
/// back; on HTTP/3 (where the protocol library does not check it) a body that disagrees with its
/// `Content-Length`, or an invalid `Content-Length`, is 400 with nothing written; and
/// `Expect: 100-continue` gets its 100 before the body is sent.
#[tokio::test]
async fn uploads_over_http2_and_http3() {
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-up");
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = crate::tls::tls_config(certs.path(), &cert, &key) + "http3 = true\n";
    let old = b"OLD-VERSION".to_vec();
    let rig = Rig::start(&["disk1"], &[], &tls, |d| {
        std::fs::create_dir_all(d.join("disk1/live/mp")).expect("mkdir");
        std::fs::write(d.join("disk1/live/mp/old.ts"), &old).expect("write");
    });
    let vol = rig.vol("disk1");
    let tok = upload_token("/live/*");

    // HTTP/2 (h2c): create, then replace.
    let (client, _driver) = h2c(rig.srv.addr).await;
    for (body, want) in [(payload(300_000, 21), 201), (payload(1000, 22), 204)] {
        let mut client = client.clone().ready().await.expect("h2 ready");
        let req = http::Request::builder()
            .method("PUT")
            .uri(rig.url(&q("/live/mp/h2.ts", &tok)))
            .header("content-length", body.len().to_string())
            .body(())
            .expect("request");
        let (resp, mut stream) = client.send_request(req, false).expect("send");
        stream
            .send_data(Bytes::from(body.clone()), true)
            .expect("data");
        let resp = resp.await.expect("h2 answer");
        assert_eq!(resp.status().as_u16(), want, "h2 PUT");
        assert!(
            std::fs::read(vol.join("live/mp/h2.ts")).expect("on disk") == body,
            "h2: the new bytes on disk"
        );
        for h2 in [false, true] {
            let g = get_on(&rig.url("/live/mp/h2.ts"), h2).await;
            assert!(g.body.as_ref() == body.as_slice(), "h2 upload read back");
        }
    }

    // HTTP/3: create, then replace.
    let addr = rig.srv.tls_addr.expect("tls listener");
    let mut c = crate::h3::h3_connect(addr, &pki).await;
    for (body, want) in [(payload(300_000, 23), 201), (payload(1000, 24), 204)] {
        let len = body.len().to_string();
        let mut s = c
            .start(
                "PUT",
                &q("/live/mp/h3.ts", &tok),
                &[("content-length", &len)],
            )
            .await;
        for part in body.chunks(64 * 1024) {
            s.send_data(Bytes::copy_from_slice(part))
                .await
                .expect("data");
        }
        s.finish().await.expect("finish");
        assert_eq!(h3_final(&mut s, "h3 PUT").await, want, "h3 PUT");
        assert!(
            std::fs::read(vol.join("live/mp/h3.ts")).expect("on disk") == body,
            "h3: the new bytes on disk"
        );
        let g = c.request("GET", "/live/mp/h3.ts", &[]).await;
        assert!(g.body.as_ref() == body.as_slice(), "h3 upload read back");
    }

    // HTTP/3: bodies that disagree with their length, and lengths that are not one: 400, on a
    // new name and on a replace, nothing written.
    let before = tree(&vol);
    // (what, request headers, body sent)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [u8],
    );
    let cases: [Case; 6] = [
        ("declared 5, none sent", &[("content-length", "5")], b""),
        (
            "declared 5, 10 sent",
            &[("content-length", "5")],
            b"0123456789",
        ),
        ("declared 10, 5 sent", &[("content-length", "10")], b"01234"),
        ("a sign", &[("content-length", "+5")], b"01234"),
        ("a list", &[("content-length", "5, 5")], b"01234"),
        (
            "two fields",
            &[("content-length", "5"), ("content-length", "6")],
            b"01234",
        ),
    ];
    for name in ["/live/mp/new.ts", "/live/mp/old.ts"] {
        for (what, headers, body) in cases {
            let mut s = c.start("PUT", &q(name, &tok), headers).await;
            if !body.is_empty() {
                // The server may answer before taking it all.
                let _ = s.send_data(Bytes::from_static(body)).await;
            }
            let _ = s.finish().await;
            assert_eq!(h3_final(&mut s, what).await, 400, "h3 {name}: {what}");
            no_tmp_eventually(&vol, what).await;
            assert_eq!(tree(&vol), before, "h3 {name}: {what}: nothing written");
        }
    }
    let g = c.request("GET", "/live/mp/old.ts", &[]).await;
    assert!(g.body.as_ref() == old.as_slice(), "h3: old version served");

    // HTTP/3 `Expect: 100-continue`: the 100 comes before any body byte is sent.
    let mut s = c
        .start(
            "PUT",
            &q("/live/mp/expect.ts", &tok),
            &[("content-length", "5"), ("expect", "100-continue")],
        )
        .await;
    let interim = tokio::time::timeout(Duration::from_secs(5), s.recv_response())
        .await
        .expect("a 100 before the body is sent")
        .expect("interim answer");
    assert_eq!(interim.status().as_u16(), 100, "h3 100 Continue");
    s.send_data(Bytes::from_static(b"HELLO"))
        .await
        .expect("data");
    s.finish().await.expect("finish");
    assert_eq!(
        h3_final(&mut s, "h3 expect").await,
        201,
        "h3 expect: created"
    );
    assert_eq!(
        std::fs::read(vol.join("live/mp/expect.ts")).expect("on disk"),
        b"HELLO"
    );
}

/// An HTTP/2 upload whose trailers carry pseudo-header fields is malformed (RFC 9113 §8.1): the
/// stream is reset with PROTOCOL_ERROR and nothing is written, the old object intact. Regular
/// trailer fields are allowed, and such an upload is committed. No client library sends such
/// trailers (a `HeaderMap` cannot hold a pseudo-header name), so the frames are made by hand.
/// Two `content-length` fields, even equal ones, are no valid length on HTTP/2 either: 400,
/// nothing written, as on HTTP/1.1 and HTTP/3 (h2 let equal ones through, and the upload was
/// stored: acceptance H-F5).
#[tokio::test]
async fn h2_two_content_length_fields_are_refused() {
    let rig = Rig::start(&["disk1"], &[], "", |_| {});
    let target = q("/live/cl/two.ts", &upload_token("/live/*"));
    let mut c = RawH2::connect(rig.srv.addr);
    let head = [
        (":method", "PUT"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", target.as_str()),
        ("content-length", "5"),
        ("content-length", "5"),
    ];
    c.send(H2_HEADERS, H2_END_HEADERS, 1, &hpack_literals(&head));
    c.send(H2_DATA, H2_END_STREAM, 1, b"hello");
    let frames = c.stream_frames(1);
    let headers = frames
        .iter()
        .find(|(kind, _, _)| *kind == H2_HEADERS)
        .unwrap_or_else(|| panic!("no answer: {frames:?}"));
    // `:status: 400` is entry 12 of HPACK's static table: an indexed field, 0x80 | 12.
    assert_eq!(headers.2.first(), Some(&0x8c), "not a 400: {frames:?}");
    assert!(
        !rig.vol("disk1").join("live/cl/two.ts").exists(),
        "nothing written"
    );
}

#[tokio::test]
async fn h2_trailers_with_pseudo_headers_write_nothing() {
    let old = b"ORIGINAL".to_vec();
    let rig = Rig::start(&["disk1"], &[], "", |d| {
        std::fs::create_dir_all(d.join("disk1/live/tr")).expect("mkdir");
        std::fs::write(d.join("disk1/live/tr/obj.ts"), &old).expect("write");
    });
    let path = "/live/tr/obj.ts";
    let target = q(path, &upload_token("/live/*"));
    // PUT `hello` with `trailers`: the frames of its stream.
    let put = |trailers: &[(&str, &str)]| {
        let mut c = RawH2::connect(rig.srv.addr);
        let head = [
            (":method", "PUT"),
            (":scheme", "http"),
            (":authority", "localhost"),
            (":path", target.as_str()),
        ];
        c.send(H2_HEADERS, H2_END_HEADERS, 1, &hpack_literals(&head));
        c.send(H2_DATA, 0, 1, b"hello");
        let end = H2_END_HEADERS | H2_END_STREAM;
        c.send(H2_HEADERS, end, 1, &hpack_literals(trailers));
        c.stream_frames(1)
    };
    let before = tree(&rig.vol("disk1"));
    for trailers in [
        &[(":path", "/live/tr/other.ts")][..],
        &[(":status", "200")],
        &[(":method", "GET")],
        // After a regular field (h2 refused this one before segd's patch too).
        &[("x-ok", "1"), (":path", "/live/tr/other.ts")],
    ] {
        let what = format!("trailers {trailers:?}");
        let frames = put(trailers);
        assert!(
            frames
                .iter()
                .any(|(kind, _, payload)| *kind == H2_RST_STREAM && payload[..] == [0, 0, 0, 1]),
            "{what}: stream reset with PROTOCOL_ERROR: {frames:?}"
        );
        uploads_ended(&rig, &what).await;
        nothing_written(&rig, &before, path, &old, &what).await;
    }
    // Regular trailer fields: answered, and committed.
    let frames = put(&[("x-ok", "1")]);
    assert!(
        frames.iter().all(|(kind, _, _)| *kind != H2_RST_STREAM)
            && frames.iter().any(|(kind, _, _)| *kind == H2_HEADERS),
        "regular trailers: answered: {frames:?}"
    );
    assert_file(
        &rig.vol("disk1").join("live/tr/obj.ts"),
        b"hello",
        "regular trailers",
    );
}

/// An empty DATA frame that does not end its stream is legal (RFC 9113 §6.1). h2 counts them
/// against a flood (CVE-2019-9518), and counted them over the connection's whole life: a client
/// sending one per upload lost its kept connection at the 101st upload. They are counted since
/// the last body the client ended; a flood on one stream still closes the connection.
#[tokio::test]
async fn h2_empty_data_frames_are_counted_per_body_not_per_connection() {
    let rig = Rig::simple(&[]);
    let target = q("/live/empty/obj.ts", &upload_token("/live/*"));
    let head = hpack_literals(&[
        (":method", "PUT"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", target.as_str()),
    ]);
    let mut c = RawH2::connect(rig.srv.addr);
    for i in 0..120u32 {
        let id = 1 + 2 * i;
        c.send(H2_HEADERS, H2_END_HEADERS, id, &head);
        c.send(H2_DATA, 0, id, b"");
        c.send(H2_DATA, H2_END_STREAM, id, format!("{i:03}").as_bytes());
        let frames = c.stream_frames(id);
        assert!(
            matches!(frames.first(), Some((H2_HEADERS, _, _))),
            "upload {i} answered: {frames:?}"
        );
    }
    assert_file(
        &rig.vol("disk1").join("live/empty/obj.ts"),
        b"119",
        "the last upload",
    );
    // A flood of them in one body still ends the connection (ENHANCE_YOUR_CALM).
    let mut c = RawH2::connect(rig.srv.addr);
    c.send(H2_HEADERS, H2_END_HEADERS, 1, &head);
    for _ in 0..101 {
        c.send(H2_DATA, 0, 1, b"");
    }
    let got = c.frames(Duration::from_secs(2));
    let goaway = got.iter().find(|f| f.0 == H2_GOAWAY).map(|f| {
        let p = &f.3;
        u32::from_be_bytes([p[4], p[5], p[6], p[7]])
    });
    assert_eq!(goaway, Some(0xb), "a flood: {got:?}");
}

/// HTTP/3 as HTTP/2: trailers with pseudo-header fields make an upload malformed (RFC 9114
/// §4.1.2), so nothing is written and the old object stays; ordinary trailers still commit.
#[tokio::test]
async fn h3_trailers_with_pseudo_headers_write_nothing() {
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-up");
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = crate::tls::tls_config(certs.path(), &cert, &key) + "http3 = true\n";
    let old = b"ORIGINAL".to_vec();
    let rig = Rig::start(&["disk1"], &[], &tls, |d| {
        std::fs::create_dir_all(d.join("disk1/live/tr")).expect("mkdir");
        std::fs::write(d.join("disk1/live/tr/obj.ts"), &old).expect("write");
    });
    let path = "/live/tr/obj.ts";
    let target = q(path, &upload_token("/live/*"));
    let c = crate::h3::h3_connect(rig.srv.tls_addr.expect("tls listener"), &pki).await;
    // PUT `hello` with `trailers`, frame by frame: the answer's bytes, or how the stream ended.
    let put = async |trailers: &[(&str, &str)]| {
        let (mut tx, mut rx) = c.conn.open_bi().await.expect("stream");
        let head = [
            (":method", "PUT"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", target.as_str()),
        ];
        let mut frames = crate::h3::raw_headers_frame(&head);
        frames.extend_from_slice(&[0x00, 5]);
        frames.extend_from_slice(b"hello");
        frames.extend(crate::h3::raw_headers_frame(trailers));
        tx.write_all(&frames).await.expect("write");
        let _ = tx.finish();
        tokio::time::timeout(Duration::from_secs(5), rx.read_to_end(1 << 20))
            .await
            .expect("an answer or a reset within 5 s")
    };
    let before = tree(&rig.vol("disk1"));
    for trailers in [
        &[(":path", "/live/tr/other.ts")][..],
        &[(":status", "200")],
        &[(":method", "GET")],
    ] {
        let what = format!("h3 trailers {trailers:?}");
        let _ = put(trailers).await;
        uploads_ended(&rig, &what).await;
        nothing_written(&rig, &before, path, &old, &what).await;
    }
    // Regular trailer fields: committed.
    let _ = put(&[("x-ok", "1")]).await.expect("answered");
    assert_file(
        &rig.vol("disk1").join("live/tr/obj.ts"),
        b"hello",
        "regular trailers",
    );
}

/// HTTP/3: a DELETE whose request stream is reset mid-body (`H3_NO_ERROR` or
/// `H3_REQUEST_CANCELLED`) removes nothing; one whose body ends is carried out.
#[tokio::test]
async fn h3_delete_reset_mid_body_removes_nothing() {
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-up");
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = crate::tls::tls_config(certs.path(), &cert, &key) + "http3 = true\n";
    let rig = Rig::start(&["disk1"], &[], &tls, |d| {
        std::fs::create_dir_all(d.join("disk1/live/dr")).expect("mkdir");
        std::fs::write(d.join("disk1/live/dr/obj.ts"), b"keep me").expect("write");
    });
    let file = rig.vol("disk1").join("live/dr/obj.ts");
    let target = q("/live/dr/obj.ts", &upload_token("/live/*"));
    let c = crate::h3::h3_connect(rig.srv.tls_addr.expect("tls listener"), &pki).await;
    let head = [
        (":method", "DELETE"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", target.as_str()),
    ];
    for (what, code) in [("H3_NO_ERROR", 0x100u32), ("H3_REQUEST_CANCELLED", 0x10c)] {
        let (mut tx, _rx) = c.conn.open_bi().await.expect("stream");
        let mut frames = crate::h3::raw_headers_frame(&head);
        frames.extend_from_slice(&[0x00, 3]);
        frames.extend_from_slice(b"hel");
        tx.write_all(&frames).await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.reset(code.into()).expect("reset");
        // Nothing tells when segd is done with a request it drops: watch the object for a
        // second (a DELETE that goes on removes it within milliseconds).
        let gone = eventually(Duration::from_secs(1), async || !file.exists()).await;
        assert!(!gone, "{what}: the object was deleted");
        assert_eq!(read(&file), b"keep me", "{what}");
    }
    // The same DELETE with its body's end: carried out.
    let (mut tx, mut rx) = c.conn.open_bi().await.expect("stream");
    let mut frames = crate::h3::raw_headers_frame(&head);
    frames.extend_from_slice(&[0x00, 3]);
    frames.extend_from_slice(b"hel");
    tx.write_all(&frames).await.expect("write");
    let _ = tx.finish();
    tokio::time::timeout(Duration::from_secs(5), rx.read_to_end(1 << 20))
        .await
        .expect("an answer within 5 s")
        .expect("answered");
    assert!(
        !file.exists(),
        "a DELETE whose body ended removes the object"
    );
}

/// HTTP/3: an upload answered before its body is read (413 for a declared length over
/// `max_body_bytes`, 415, 403) asks the client to stop sending with `H3_NO_ERROR` (0x100, RFC
/// 9114 §4.1.1), never with code 0 (no HTTP/3 error code; quinn's default when a stream is
/// dropped unread); nothing is written.
#[tokio::test]
async fn h3_early_answer_stops_the_body_with_h3_no_error() {
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-up");
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = crate::tls::tls_config(certs.path(), &cert, &key) + "http3 = true\n";
    let rig = Rig::start(&["disk1"], &[("max_body_bytes", r#""1MiB""#)], &tls, |_| {});
    let vol = rig.vol("disk1");
    let before = tree(&vol);
    let c = crate::h3::h3_connect(rig.srv.tls_addr.expect("tls listener"), &pki).await;
    let tok = upload_token("/live/*");
    let other = upload_token("/vod/*");
    let cases = [
        ("413", q("/live/es/big.ts", &tok)),
        ("415", q("/live/es/notes.txt", &tok)),
        ("403", q("/live/es/a.ts", &other)),
    ];
    for (what, target) in &cases {
        let len = 2_000_000usize;
        let head = [
            (":method", "PUT"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", target.as_str()),
            ("content-length", "2000000"),
        ];
        let (mut tx, mut rx) = c.conn.open_bi().await.expect("stream");
        let mut frames = crate::h3::raw_headers_frame(&head);
        // One DATA frame for the whole body (type 0, length as an 8-byte varint).
        frames.push(0x00);
        frames.extend_from_slice(&(0xc000_0000_0000_0000u64 | len as u64).to_be_bytes());
        tx.write_all(&frames).await.expect("head");
        // Send the body until segd stops it (it never reads it) or it is all sent.
        let chunk = vec![b'x'; 16 * 1024];
        let mut sent = 0;
        while sent < len {
            match tokio::time::timeout(Duration::from_secs(5), tx.write(&chunk)).await {
                Ok(Ok(n)) => sent += n,
                Ok(Err(_)) => break,
                Err(_) => panic!("{what}: the body neither taken nor stopped within 5 s"),
            }
        }
        let code = tokio::time::timeout(Duration::from_secs(5), tx.stopped())
            .await
            .unwrap_or_else(|_| panic!("{what}: STOP_SENDING within 5 s"))
            .unwrap_or_else(|e| panic!("{what}: stopped: {e}"));
        assert_eq!(
            code.map(u64::from),
            Some(0x100),
            "{what}: STOP_SENDING with H3_NO_ERROR (sent {sent} of {len})"
        );
        // The answer itself arrives whole.
        let answer = tokio::time::timeout(Duration::from_secs(5), rx.read_to_end(1 << 20))
            .await
            .unwrap_or_else(|_| panic!("{what}: an answer within 5 s"))
            .unwrap_or_else(|e| panic!("{what}: answer: {e}"));
        assert_eq!(answer.first(), Some(&0x01), "{what}: a HEADERS frame first");
        no_tmp_eventually(&vol, what).await;
        assert_eq!(tree(&vol), before, "{what}: nothing written");
    }
}

/// An upload cut by its volume going read-only mid-body (ext4's emergency read-only after an
/// error): 503, the old version intact, and its temporary file, which cannot be removed on a
/// read-only filesystem, is not counted as removed (`segd_ingest_temp_removed_total` said it
/// was: acceptance H-F3); the next start removes it. A named temporary file (the test trigger
/// `.segd-test-named-temps`: filesystems without O_TMPFILE).
#[tokio::test]
async fn a_temporary_file_that_cannot_be_removed_is_not_counted_as_removed() {
    volume_read_only_mid_upload(true).await;
}

/// The same with the unnamed temporary file uploads get on ext4: nothing to unlink, nothing
/// left once its descriptor is closed, counted as removed.
#[tokio::test]
async fn an_unnamed_temporary_file_goes_with_its_descriptor_on_a_read_only_volume() {
    volume_read_only_mid_upload(false).await;
}

async fn volume_read_only_mid_upload(named: bool) {
    if !may_mount() {
        eprintln!("skipped: loop-mounting an ext4 image needs root");
        return;
    }
    let mut mounted = None;
    let rig = Rig::start(&["bad"], &[("reserve", "\"0\"")], "", |d| {
        mounted = Mount::ext4_image(
            &d.join("bad.img"),
            "16M",
            &d.join("bad"),
            "errors=remount-ro",
        );
        if mounted.is_some() {
            std::fs::create_dir_all(d.join("bad/live/a")).expect("mkdir");
            std::fs::write(d.join("bad/live/a/ro.ts"), b"old").expect("write");
            if named {
                std::fs::write(d.join("bad/.segd-test-named-temps"), b"").expect("trigger");
            }
        }
    });
    let Some(_bad) = mounted else {
        eprintln!("skipped: no loop device or mkfs.ext4 here");
        return;
    };
    let trigger = ext4_error_trigger(&rig.vol("bad"));
    let tok = upload_token("/live/*");
    let len = 3 << 20;
    let mut c = TcpStream::connect(rig.srv.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    c.write_all(
        format!(
            "PUT {} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n",
            q("/live/a/ro.ts", &tok)
        )
        .as_bytes(),
    )
    .expect("head");
    c.write_all(&vec![b'n'; 1 << 20]).expect("first MiB");
    tokio::time::sleep(Duration::from_millis(300)).await;
    if std::fs::write(&trigger, "segd test").is_err() {
        eprintln!("skipped: {trigger} cannot be written");
        return;
    }
    let _ = c.write_all(&vec![b'n'; len - (1 << 20)]);
    let head = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(
        std::fs::read(rig.vol("bad").join("live/a/ro.ts")).expect("old"),
        b"old"
    );
    let m = rig.metrics().await;
    let counted = metric(&m, "segd_ingest_temp_removed_total").unwrap_or(0.0);
    if named {
        let left = named_tmp_files(&rig.vol("bad"));
        assert_eq!(
            counted,
            0.0,
            "{} temporary file(s) left, {counted} counted as removed",
            left.len()
        );
        assert_eq!(left.len(), 1, "the one it could not remove");
        assert!(unnamed_tmp_files(&rig.vol("bad")).is_empty());
    } else {
        // Nothing to unlink on the read-only filesystem: gone with its descriptor.
        assert_eq!(counted, 1.0, "the unnamed file counted as removed");
        assert!(
            tmp_files(&rig.vol("bad")).is_empty(),
            "left: {:?}",
            tmp_files(&rig.vol("bad"))
        );
    }
}

/// The file that makes the ext4 filesystem mounted at `mount` hit an error (what a failing
/// device does): `/sys/fs/ext4/<its loop device>/trigger_fs_error`.
fn ext4_error_trigger(mount: &Path) -> String {
    let dev = std::fs::read_to_string("/proc/mounts")
        .expect("mounts")
        .lines()
        .find(|l| l.split(' ').nth(1) == mount.to_str())
        .and_then(|l| l.split(' ').next().map(str::to_owned))
        .expect("the image's loop device");
    format!(
        "/sys/fs/ext4/{}/trigger_fs_error",
        dev.trim_start_matches("/dev/")
    )
}

/// A volume with no free inode has no room for a new object, whatever its free bytes: new
/// objects go to the other volume (they were placed there and got 507: acceptance H-F11).
#[tokio::test]
async fn a_volume_without_free_inodes_is_skipped_for_new_objects() {
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut mounted = None;
    let rig = Rig::start(&["few", "many"], &[("reserve", "\"0\"")], "", |d| {
        let few = d.join("few");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs"])
            .arg(&few)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount a tmpfs with 64 inodes");
        mounted = Some(few);
    });
    let few = mounted.expect("mounted");
    let _unmount = Unmount(few.clone());
    // Use up the inodes.
    std::fs::create_dir_all(few.join("filler")).expect("mkdir");
    for i in 0.. {
        if std::fs::write(few.join(format!("filler/{i}")), b"").is_err() {
            break;
        }
    }
    let tok = upload_token("/live/*");
    for i in 0..12 {
        let path = format!("/live/ino{i}/seg.ts");
        let r = curl_put(&rig.url(&q(&path, &tok)), b"new", &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
        assert!(rig.vol("many").join(&path[1..]).is_file(), "{path}");
    }
}

/// `umount -l` of a path when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// ext4's `errors=remount-ro` on Linux 6.9 and later: after an error the filesystem refuses
/// writes ("emergency_ro") but `statvfs` does not say read-only. The first write refused there
/// makes the volume read-only for placement, and that upload goes to the other volume, as
/// every new object after it (each was `503 volume is read-only` while the other volume had
/// room: acceptance H-F2).
#[tokio::test]
async fn a_volume_that_refuses_writes_as_read_only_is_skipped_for_new_objects() {
    if !may_mount() {
        eprintln!("skipped: loop-mounting an ext4 image needs root");
        return;
    }
    let mut mounted = None;
    let rig = Rig::start(&["bad", "good"], &[("reserve", "\"0\"")], "", |d| {
        mounted = Mount::ext4_image(
            &d.join("bad.img"),
            "16M",
            &d.join("bad"),
            "errors=remount-ro",
        );
    });
    let Some(_bad) = mounted else {
        eprintln!("skipped: no loop device or mkfs.ext4 here");
        return;
    };
    let trigger = ext4_error_trigger(&rig.vol("bad"));
    if std::fs::write(&trigger, "segd test").is_err() {
        eprintln!("skipped: {trigger} cannot be written");
        return;
    }
    assert!(
        std::fs::write(rig.vol("bad").join("probe"), b"x").is_err(),
        "the filesystem refuses writes now"
    );
    let tok = upload_token("/live/*");
    for i in 0..12 {
        let path = format!("/live/show{i}/seg.ts");
        let r = curl_put(&rig.url(&q(&path, &tok)), b"new", &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
        assert_eq!(
            std::fs::read(rig.vol("good").join(&path[1..])).expect("on the writable volume"),
            b"new"
        );
    }
}

/// A volume whose filesystem went read-only (ext4 `errors=remount-ro` after a device error,
/// here a tmpfs remounted `ro`) degrades that volume for writes only: new objects go to the
/// other volume (they were placed on the read-only one and failed with 500 "write failed"), a
/// replace or delete of an object that lives there is 503 `volume is read-only`, and its
/// objects are still served.
#[tokio::test]
async fn read_only_volume_is_skipped_for_new_objects() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut mounted = None;
    let rig = Rig::start(&["ro", "rw"], &[("reserve", "\"0\"")], "", |d| {
        let m = Mount::tmpfs(&d.join("ro"), "4m").expect("mount a tmpfs (root)");
        std::fs::create_dir_all(d.join("ro/live/old")).expect("mkdir");
        std::fs::write(d.join("ro/live/old/a.ts"), b"old").expect("write");
        m.remount("ro");
        mounted = Some(m);
    });
    let _ro = mounted.expect("mounted");
    let tok = upload_token("/live/*");
    // New objects in several asset directories: the placement rule puts about half of them on
    // the read-only volume.
    for i in 0..12 {
        let path = format!("/live/show{i}/seg.ts");
        let r = curl_put(&rig.url(&q(&path, &tok)), b"new", &[]);
        assert_eq!(r.status(), 201, "{path}: {r:?}");
        assert_eq!(
            std::fs::read(rig.vol("rw").join(&path[1..])).expect("on the writable volume"),
            b"new"
        );
    }
    // An object on the read-only volume can be neither replaced nor deleted there, and is not
    // copied elsewhere (the old copy would still be served).
    let r = curl_put(&rig.url(&q("/live/old/a.ts", &tok)), b"new", &[]);
    assert_eq!(r.status(), 503, "replace on a read-only volume: {r:?}");
    let r = curl_delete(&rig.url(&q("/live/old/a.ts", &tok)));
    assert_eq!(r.status(), 503, "delete on a read-only volume: {r:?}");
    assert!(
        !rig.vol("rw").join("live/old").exists(),
        "no copy elsewhere"
    );
    let got = get_on(&rig.url("/live/old/a.ts"), false).await;
    assert_eq!(got.body.as_ref(), b"old", "still served");
    let m = rig.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("segd_refusals_total") && l.contains("read_only")),
        "counted as read_only:\n{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("segd_refusals_total") && l.contains("write_failed")),
        "never a bare write failure:\n{m}"
    );
    assert_no_tmp(&rig.vol("rw"), "read-only volume");
}

/// After a chunked upload, the next heads on an HTTP/1.1 connection get the same answers as the
/// first one on a connection: segd's gate finds where the chunked body ends (as hyper, which
/// decodes it, reads it) and checks each head after it with the fast path's parser before hyper
/// reads it. Before, the rest of the connection was hyper's: a head over `max_header_bytes` was
/// carried out (acceptance J2), `Content-Length` with `Transfer-Encoding` stored the chunked body
/// where a first request got 400, two equal `Content-Length`s were one, a raw `"` in the path
/// made a file of that name, `HTTP/1.2` was 400 and `HTTP/2.0` 400 instead of 505.
#[tokio::test]
async fn heads_after_a_chunked_upload_get_the_same_refusals() {
    let rig = Rig::simple(&[]);
    let tok = upload_token("/live/*");
    let vol = rig.vol("disk1");
    let chunked = |path: &str| {
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            q(path, &tok)
        )
    };
    let put = |target: &str, version: &str, fields: &str| {
        format!("PUT {target} {version}\r\nHost: x\r\n{fields}\r\n")
    };
    let b = q("/live/j2/b.ts", &tok);
    let big = "y".repeat(20 << 10);
    let cases: [(&str, String, &str); 8] = [
        (
            "a head over max_header_bytes",
            put(
                &b,
                "HTTP/1.1",
                &format!("X-Big: {big}\r\nContent-Length: 3\r\n\r\nxyz"),
            ),
            "HTTP/1.1 431",
        ),
        // RFC 9110 §4.2.4: userinfo in a target is an error, as in `Host`.
        (
            "userinfo in an absolute target",
            put(
                &format!("http://user:pw@x{b}"),
                "HTTP/1.1",
                "Content-Length: 3\r\n\r\nxyz",
            ),
            "HTTP/1.1 400",
        ),
        (
            "an absolute target whose authority is no host",
            put(
                &format!("http://x:xx{b}"),
                "HTTP/1.1",
                "Content-Length: 3\r\n\r\nxyz",
            ),
            "HTTP/1.1 400",
        ),
        (
            "Content-Length with Transfer-Encoding",
            put(
                &b,
                "HTTP/1.1",
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
            "HTTP/1.1 400",
        ),
        (
            "two Content-Lengths",
            put(
                &b,
                "HTTP/1.1",
                "Content-Length: 3\r\nContent-Length: 3\r\n\r\nxyz",
            ),
            "HTTP/1.1 400",
        ),
        (
            "a raw quote in the path",
            put(
                &q("/live/j2/b\".ts", &tok),
                "HTTP/1.1",
                "Content-Length: 3\r\n\r\nxyz",
            ),
            "HTTP/1.1 400",
        ),
        (
            "HTTP/2.0 in an HTTP/1 request line",
            put(&b, "HTTP/2.0", "Content-Length: 3\r\n\r\nxyz"),
            "HTTP/1.1 505",
        ),
        (
            "a higher HTTP/1 minor version, served as HTTP/1.1 (RFC 9110 §2.5)",
            put(
                &q("/live/j2/c.ts", &tok),
                "HTTP/1.2",
                "Content-Length: 3\r\n\r\nxyz",
            ),
            "HTTP/1.1 201",
        ),
    ];
    for (what, second, want) in &cases {
        for after_chunked in [false, true] {
            let _ = std::fs::remove_file(vol.join("live/j2/c.ts"));
            let mut s = connect(rig.srv.addr);
            if after_chunked {
                s.write_all(chunked("/live/j2/a.ts").as_bytes())
                    .expect("first");
                let head = read_head(&mut s);
                assert!(head.starts_with("HTTP/1.1 20"), "{what}: {head}");
            }
            s.write_all(second.as_bytes()).expect("second");
            let head = read_head(&mut s);
            assert!(
                head.starts_with(want),
                "{what} (after a chunked upload: {after_chunked}): {head}"
            );
            if !want.ends_with("201") {
                // segd's answer, with its reason, not hyper's empty one.
                assert!(
                    head.to_ascii_lowercase()
                        .contains("content-type: text/plain"),
                    "{what} (after a chunked upload: {after_chunked}): {head}"
                );
            }
            for file in ["live/j2/b.ts", "live/j2/b\".ts"] {
                assert!(!vol.join(file).exists(), "{what}: {file} written");
            }
        }
    }
    assert_eq!(
        std::fs::read(vol.join("live/j2/a.ts")).expect("a.ts"),
        b"abc",
        "the chunked body, its extension and trailer passed over"
    );
}

/// `inline_writes`: an upload is written by the worker that received it (counted
/// `on="worker"`) and read back at once. While a disk does not answer (the debug builds'
/// `.segd-fault-hang-calls`), the upload caught in it holds its worker, the next one goes to
/// the writer threads (`on="writer_threads"`), and the other worker serves reads and metrics
/// (the runtime's watchdog: before it, the whole process stopped). When the disk answers, both
/// uploads complete and no temporary file is left.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn inline_writes_leave_the_workers_while_a_disk_lags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    std::fs::create_dir_all(d1.join("vod/fine")).expect("mkdir");
    std::fs::create_dir_all(d2.join("vod/hung")).expect("mkdir");
    std::fs::write(d1.join("vod/fine/cold.ts"), b"never read yet").expect("write");
    let ingest = ingest_section(&[("fsync", "false")])
        .replace("fsync = false\n", "fsync = false\ninline_writes = true\n");
    let srv = Server::start(&config_for(&[&d1, &d2], &ingest));
    let tok = upload_token("/vod/*");
    let jobs = |m: &str, on: &str| {
        metric(m, &format!("segd_ingest_disk_jobs_total{{on=\"{on}\"}}")).unwrap_or(-1.0)
    };

    for i in 0..3 {
        let body = format!("inline {i}").into_bytes();
        let url = srv.url(&q(&format!("/vod/fine/i{i}.ts"), &tok));
        let sent = body.clone();
        let r = tokio::task::spawn_blocking(move || curl_put(&url, &sent, &[]))
            .await
            .expect("curl");
        assert_eq!(r.status(), 201, "{r:?}");
        let back = get(&srv.url(&format!("/vod/fine/i{i}.ts")), &[]).await;
        assert_eq!((back.status, &back.body[..]), (200, &body[..]));
    }
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    // Each upload's disk work is one job or more (the create may go first).
    assert!(
        jobs(&m, "worker") >= 3.0 && jobs(&m, "writer_threads") == 0.0,
        "{m}"
    );

    let hang = d2.join(".segd-fault-hang-calls");
    std::fs::write(&hang, b"").expect("inject");
    let url = srv.url(&q("/vod/hung/h0.ts", &tok));
    let caught = std::thread::spawn(move || curl_put(&url, b"caught", &["--max-time", "60"]));
    let calls = async || {
        let m = tokio::time::timeout(Duration::from_secs(2), get(&srv.admin_url("/metrics"), &[]))
            .await
            .expect("metrics are answered while a worker is held")
            .text();
        metric(&m, "segd_volume_disk_calls{volume=\"disk2\"}")
    };
    assert!(
        eventually(Duration::from_secs(10), async || calls().await == Some(1.0)).await,
        "the upload is in disk2's calls"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cold = tokio::time::timeout(
        Duration::from_secs(2),
        get(&srv.url("/vod/fine/cold.ts"), &[]),
    )
    .await
    .expect("a read is answered by the other worker meanwhile");
    assert_eq!((cold.status, &cold.body[..]), (200, &b"never read yet"[..]));
    let url = srv.url(&q("/vod/fine/during.ts", &tok));
    let during = std::thread::spawn(move || curl_put(&url, b"during", &["--max-time", "60"]));
    assert!(
        eventually(Duration::from_secs(5), async || jobs(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            "writer_threads"
        ) >= 1.0)
        .await,
        "the upload after the lag went to the writer threads: {}",
        get(&srv.admin_url("/metrics"), &[]).await.text()
    );

    std::fs::remove_file(&hang).expect("heal");
    for (t, name, body) in [
        (caught, "vod/hung/h0.ts", &b"caught"[..]),
        (during, "vod/fine/during.ts", &b"during"[..]),
    ] {
        let r = t.join().expect("curl thread");
        assert_eq!(r.status(), 201, "{name}: {r:?}");
        let on_disk = [&d1, &d2]
            .iter()
            .find_map(|d| std::fs::read(d.join(name)).ok());
        assert_eq!(on_disk.as_deref(), Some(body), "{name}");
    }
    for d in [&d1, &d2] {
        no_tmp_eventually(d, "after the hang").await;
    }
}
