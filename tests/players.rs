//! Real browser players against the real binary: hls.js and dash.js in Debian's Chromium, driven
//! by playwright-core (the harness in `benches/players/`, which never downloads a browser).
//!
//! - The demo's three VOD streams (HLS with MPEG-TS segments, HLS fMP4, DASH), from the signed
//!   URLs `segd serve` prints, played by a page on another origin: tokens in the path, CORS,
//!   media types and ranges as a browser sees them; over plaintext HTTP/1.1, and over the
//!   protocols real players reach segd with: HTTP/2 over TLS and HTTP/3 over QUIC (forced, and
//!   discovered through segd's `Alt-Svc`), each request's protocol as Chromium reports it.
//! - Live streams pushed into segd as they play (`benches/players/run.sh`): ffmpeg HLS with
//!   `delete_segments`, ffmpeg LL-DASH with a `SegmentTimeline` and with `SegmentTemplate`
//!   numbers (segments read while they are uploaded), and LL-HLS from the test packager (parts,
//!   preload hints, blocking reload); LL-HLS and LL-DASH also over HTTP/2 and HTTP/3.
//! - A player page's own credentialed `fetch` with a cookie token (`benches/players/fetch.mjs`):
//!   served with `[cors] allow_credentials = true`, refused by Chromium's CORS check without it.
//!
//! Its own test binary, so that no other test takes the CPU from the players while they play.
//! Needs `chromium` (Debian) and the harness's npm packages; when `node_modules` is missing the
//! test runs `npm ci` there (the lockfile pins hls.js, dashjs and playwright-core).

mod util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use util::*;

/// One browser at a time: the tests of this binary would otherwise play side by side.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/players")
}

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        path.is_file(),
        "{} not found: apt-get install chromium (or set CHROMIUM)",
        path.display()
    );
    path
}

/// The harness's npm packages, installed from its lockfile when they are missing.
fn harness_ready() -> PathBuf {
    let dir = harness_dir();
    let have = |p: &str| dir.join("node_modules").join(p).is_dir();
    if !(have("playwright-core") && have("hls.js") && have("dashjs")) {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("run npm (Debian packages nodejs and npm)");
        assert!(
            out.status.success(),
            "npm ci in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    chromium();
    dir
}

/// `benches/players/serve.py`: the player page, on a port of its own (another origin than segd).
struct PageServer {
    child: Child,
    port: u16,
}

impl PageServer {
    fn start(dir: &Path) -> PageServer {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(dir.join("serve.py"))
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        assert!(
            line.starts_with("serving "),
            "serve.py did not start on port {port}: {line:?}"
        );
        PageServer { child, port }
    }

    fn page(&self) -> String {
        format!("http://127.0.0.1:{}/player.html", self.port)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `play.mjs` wrote for one stream.
struct Played {
    ok: bool,
    summary: serde_json::Value,
    /// Every request the page made to segd, in the order it made them (`play.mjs`'s raw log).
    requests: Vec<serde_json::Value>,
    output: String,
}

/// Plays `url` for `seconds` with `play.mjs` (plus `extra` options) and reads its summary.
fn play(dir: &Path, page: &str, url: &str, seconds: u32, out: &Path, extra: &[String]) -> Played {
    let result = Command::new("node")
        .arg(dir.join("play.mjs"))
        .args(["--url", url, "--page", page])
        .args(["--seconds", &seconds.to_string(), "--warmup", "0"])
        .arg("--chromium")
        .arg(chromium())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("run node (Debian package nodejs)");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Played {
        ok: result.status.success(),
        summary: json["summary"].clone(),
        requests: json["requests"].as_array().cloned().unwrap_or_default(),
        output,
    }
}

/// The checks every demo play must pass: it started, played on, the player reported no error,
/// it fetched segments, and every request the player made to segd was answered 200.
fn assert_played(got: &Played, detail: &str) {
    assert_played_tolerating(got, detail, &[])
}

/// `assert_played`, with these non-fatal player errors tolerated (by kind, as `play.mjs` counts
/// them in `errors.byKind`).
fn assert_played_tolerating(got: &Played, detail: &str, tolerated: &[&str]) {
    let failed: Vec<&serde_json::Value> = got
        .requests
        .iter()
        .filter(|r| r["state"] == "failed")
        .collect();
    assert!(failed.is_empty(), "requests failed: {failed:#?}: {detail}");
    let s = &got.summary;
    assert!(got.ok, "did not play: {detail}");
    assert_eq!(s["ok"], true, "{detail}");
    assert!(
        s["playedSeconds"].as_f64().unwrap_or(0.0) >= 2.0,
        "played {} s (at least 2 s expected): {detail}",
        s["playedSeconds"]
    );
    assert_eq!(s["errors"]["fatal"], 0, "{detail}");
    let by_kind = s["errors"]["byKind"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let tolerated_n: u64 = by_kind
        .iter()
        .filter(|(k, _)| tolerated.contains(&k.as_str()))
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert_eq!(
        s["errors"]["nonFatal"].as_u64(),
        Some(tolerated_n),
        "non-fatal player errors {by_kind:?} (tolerated: {tolerated:?}): {detail}"
    );
    let requests = s["requests"].as_object().expect("requests by kind");
    assert!(
        requests.contains_key("segment"),
        "the player fetched no segment: {detail}"
    );
    // `blockingReloads` (LL-HLS) sits beside the request kinds: timings, no statuses.
    for (kind, r) in requests.iter().filter(|(k, _)| *k != "blockingReloads") {
        let statuses = r["status"].as_object().expect("statuses");
        assert!(
            statuses.keys().all(|k| k == "200"),
            "{kind} answers other than 200: {statuses:?}: {detail}"
        );
        assert_eq!(r["failed"], 0, "{kind} requests failed: {detail}");
    }
}

/// The protocol of each answered request to segd, in the order the page made them (Chromium's
/// `response.protocol`: `http/1.1`, `h2`, `h3`), with the request's kind and path.
fn protocols(got: &Played) -> Vec<(String, String)> {
    got.requests
        .iter()
        // `time`: the DASH clock (`UTCTiming`), served by the page server, not by segd.
        .filter(|r| !r["status"].is_null() && r["cls"] != "time")
        .map(|r| {
            let proto = r["protocol"].as_str().unwrap_or("none").to_string();
            let what = format!("{} {}", r["cls"].as_str().unwrap_or("?"), r["url"]);
            (proto, what)
        })
        .collect()
}

/// segd's own count of answered requests by protocol (`segd_http_requests_total`, summed over
/// methods and statuses): `h1`, `h2`, `h3`.
fn served_by_proto(srv: &Server) -> Served {
    let resp = raw_get(srv.admin, "/metrics");
    let text = String::from_utf8_lossy(&resp);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("segd_http_requests_total{") else {
            continue;
        };
        let proto = rest
            .split("proto=\"")
            .nth(1)
            .and_then(|p| p.split('"').next());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(proto), Some(value)) = (proto, value) {
            *out.entry(proto.to_string()).or_insert(0.0) += value;
        }
    }
    out
}

/// What segd counted between two `served_by_proto` readings, by protocol (changes only).
fn served_during(before: &Served, after: &Served) -> Served {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

type Served = BTreeMap<String, f64>;

/// One line per play on stderr (shown with `--nocapture`): the protocols seen, by kind.
fn log_protocols(got: &Played) {
    let s = &got.summary;
    let kinds: Vec<String> = s["requests"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, r)| r["protocol"].is_object())
                .map(|(k, r)| format!("{k} {}", r["protocol"]))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "players: {}: {} (resource timing {}, first by protocol {}; {})",
        s["url"].as_str().unwrap_or("?"),
        s["protocols"]["network"],
        s["protocols"]["resourceTiming"],
        s["protocols"]["firstByProtocol"],
        kinds.join(", ")
    );
}

/// Every answered request to segd went over `proto`, as Chromium's network stack saw it and as
/// the page's Resource Timing (`nextHopProtocol`, across origins thanks to Timing-Allow-Origin)
/// saw it; and the page made no CORS preflight.
fn assert_all_over(got: &Played, proto: &str, detail: &str) {
    log_protocols(got);
    let seen = protocols(got);
    assert!(!seen.is_empty(), "no answered request: {detail}");
    let other: Vec<_> = seen.iter().filter(|(p, _)| p != proto).collect();
    assert!(
        other.is_empty(),
        "{} of {} requests not over {proto}: {other:?}: {detail}",
        other.len(),
        seen.len()
    );
    let p = &got.summary["protocols"];
    let timing = p["resourceTiming"].as_object().expect("resource timing");
    assert!(
        !timing.is_empty() && timing.keys().all(|k| k == proto),
        "Resource Timing nextHopProtocol {timing:?}, expected only {proto}: {detail}"
    );
    assert_eq!(p["preflight"], serde_json::json!({}), "{detail}");
}

/// What a play needs: segd, the harness, the page server, a directory for the raw JSON.
struct Stage<'a> {
    srv: &'a Server,
    dir: &'a Path,
    page: &'a PageServer,
    tmp: &'a Path,
}

/// Plays `url` for 6 s with `extra` options (raw JSON in `name`.json) and checks it like every
/// demo play (`assert_played`), with every request over `proto` as Chromium saw it
/// (`assert_all_over`) and as segd counted it (`served`: its label in `segd_http_requests_total`;
/// segd may count a request the browser gave up mid-body, which the page does not see answered).
fn play_over(
    at: &Stage,
    name: &str,
    url: &str,
    extra: &[String],
    proto: &str,
    served: &str,
) -> Played {
    let srv = at.srv;
    let before = served_by_proto(srv);
    let out = at.tmp.join(format!("{name}.json"));
    let got = play(at.dir, &at.page.page(), url, 6, &out, extra);
    let during = served_during(&before, &served_by_proto(srv));
    let detail = format!(
        "{proto}: {url}\n{}\nsegd counted {during:?}\nsegd: {}",
        got.output,
        srv.stderr()
    );
    assert_all_over(&got, proto, &detail);
    let answered = protocols(&got).len() as f64;
    let counted = during.get(served).copied().unwrap_or(0.0);
    assert!(
        during.keys().all(|k| k == served) && counted >= answered,
        "segd counted {during:?}, expected {answered}+ over {served} only: {detail}"
    );
    assert_played(&got, &detail);
    got
}

/// Every demo stream plays in Chromium from a page on another origin: it starts, plays on, and
/// every request the player made to segd was answered 200 (no player error of any kind), over
/// HTTP/1.1.
#[test]
fn demo_streams_play_in_chromium_from_another_origin() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = harness_ready();
    let (srv, urls) = demo_server("");
    let page = PageServer::start(&dir);
    let tmp = tempfile::tempdir().expect("tempdir");
    let at = Stage {
        srv: &srv,
        dir: &dir,
        page: &page,
        tmp: tmp.path(),
    };
    for (i, url) in urls.iter().enumerate() {
        play_over(&at, &i.to_string(), url, &[], "http/1.1", "h1");
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, its key, and the base64 SHA-256 of its
/// SubjectPublicKeyInfo (what Chromium's `--ignore-certificate-errors-spki-list` takes).
struct SelfSigned {
    dir: tempfile::TempDir,
    spki_sha256: String,
}

impl SelfSigned {
    fn new() -> SelfSigned {
        use rcgen::PublicKeyData;
        use sha2::Digest;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("key");
        let spki = ck.signing_key.subject_public_key_info();
        SelfSigned {
            dir,
            spki_sha256: base64(&sha2::Sha256::digest(&spki)),
        }
    }

    /// `[tls]` on an ephemeral port with this pair, HTTP/3 on.
    fn tls_section(&self) -> String {
        format!(
            "\n[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\nhttp3 = true\n",
            self.dir.path().join("cert.pem").display(),
            self.dir.path().join("key.pem").display()
        )
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want);
    }
}

/// The same demo streams over HTTPS, the way browsers reach segd: HTTP/2 over TLS (QUIC off),
/// HTTP/3 over QUIC (Chromium forced onto QUIC for segd's origin: every request over h3, the
/// first one included, no TCP at all), and HTTP/3 found through segd's `Alt-Svc` on the TLS
/// listener (QUIC on, not forced: h2 until Chromium has the QUIC connection, h3 from then on).
/// Each play must pass the plaintext test's checks too.
#[test]
fn demo_streams_play_in_chromium_over_h2_and_h3() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = harness_ready();
    let cert = SelfSigned::new();
    let (srv, urls) = demo_server(&cert.tls_section());
    let tls = srv.tls_addr.expect("TLS listener in the banner");
    let plain = format!("http://{}/", srv.addr);
    let urls: Vec<String> = urls
        .iter()
        .map(|u| {
            assert!(u.starts_with(&plain), "{u} is not on {plain}");
            u.replacen(&plain, &format!("https://{tls}/"), 1)
        })
        .collect();
    let page = PageServer::start(&dir);
    let tmp = tempfile::tempdir().expect("tempdir");
    let trust = ["--spki-hash".to_string(), cert.spki_sha256.clone()];
    let alt_svc = format!("h3=\":{}\"; ma=86400", tls.port());

    let at = Stage {
        srv: &srv,
        dir: &dir,
        page: &page,
        tmp: tmp.path(),
    };

    // HTTP/2: the certificate accepted by the page, QUIC off (segd's Alt-Svc is still sent).
    for (i, url) in urls.iter().enumerate() {
        let extra = ["--ignore-https-errors".to_string()];
        let got = play_over(&at, &format!("h2-{i}"), url, &extra, "h2", "h2");
        assert_eq!(
            got.summary["protocols"]["altSvc"],
            serde_json::json!([alt_svc]),
            "Alt-Svc on the TLS listener's responses: {url}\n{}",
            got.output
        );
    }

    // HTTP/3, forced: every request over QUIC, the first one included.
    for (i, url) in urls.iter().enumerate() {
        let mut extra = vec!["--force-quic".to_string(), tls.to_string()];
        extra.extend(trust.iter().cloned());
        play_over(&at, &format!("h3-{i}"), url, &extra, "h3", "h3");
    }

    // HTTP/3 through Alt-Svc (QUIC on because it is forced for another origin, a closed port):
    // the first request goes over h2 (nothing known about segd yet), its Alt-Svc starts a QUIC
    // connection, and from the first request over h3 on no request goes back to h2.
    let url = &urls[0];
    let mut extra = vec!["--force-quic".to_string(), "127.0.0.1:1".to_string()];
    extra.extend(trust.iter().cloned());
    let before = served_by_proto(&srv);
    let got = play(
        &dir,
        &page.page(),
        url,
        6,
        &tmp.path().join("alt-svc.json"),
        &extra,
    );
    let during = served_during(&before, &served_by_proto(&srv));
    let detail = format!(
        "Alt-Svc: {url}\n{}\nsegd counted {during:?}\nsegd: {}",
        got.output,
        srv.stderr()
    );
    log_protocols(&got);
    let seen = protocols(&got);
    let order: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    let switch = order.iter().position(|p| *p == "h3").unwrap_or(order.len());
    assert!(
        order.first() == Some(&"h2")
            && switch < order.len()
            && order[..switch].iter().all(|p| *p == "h2")
            && order[switch..].iter().all(|p| *p == "h3"),
        "expected h2 first, then h3 only once it started: {seen:?}: {detail}"
    );
    assert!(
        seen[switch..]
            .iter()
            .any(|(_, what)| what.starts_with("segment ")),
        "no segment over h3 after Alt-Svc: {seen:?}: {detail}"
    );
    assert!(
        during.keys().all(|k| k == "h2" || k == "h3")
            && during.get("h2").copied().unwrap_or(0.0) >= switch as f64
            && during.get("h3").copied().unwrap_or(0.0) >= (order.len() - switch) as f64,
        "segd counted {during:?}, the page saw {order:?}: {detail}"
    );
    assert_played(&got, &detail);
}

/// Live HLS, LL-DASH (timeline and numbered) and LL-HLS pushed into segd play in Chromium as
/// they are published: `benches/players/run.sh` exits 0 only when every stream started, played
/// at least half of its time and its player never gave up.
#[test]
fn live_streams_play_in_chromium_while_pushed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = harness_ready();
    let out = tempfile::tempdir().expect("tempdir");
    let result = Command::new(dir.join("run.sh"))
        .arg(BIN)
        .args(["--seconds", "10", "--source", "hls,dash,dash-number,llhls"])
        .arg("--out")
        .arg(out.path())
        .env("CHROMIUM", chromium())
        .env("INGEST_FSYNC", "false")
        .env("SEGD_PLAYERS_LIVE", "1")
        .output()
        .expect("run benches/players/run.sh (bash)");
    let summary = std::fs::read_to_string(out.path().join("summary.md")).unwrap_or_default();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        result.status.success(),
        "run.sh exited {:?}\n{log}\n{summary}",
        result.status.code()
    );
    for source in ["hls", "dash", "dash-number", "llhls"] {
        assert!(
            log.contains(&format!("   {source}: ok,")),
            "{source} did not play: {log}"
        );
    }
}

/// A player's own `fetch(url, {credentials: 'include'})` from a page on another origin (same
/// host, another port: the same site, so the browser sends its Lax cookie) carrying a cookie
/// token (`benches/players/fetch.mjs`): with `[cors] allow_credentials = true` Chromium hands the
/// protected segment and playlist to the page; from a segd without it, the same response is
/// refused by the browser's CORS check (a TypeError), as the Fetch standard says.
#[test]
fn credentialed_fetch_with_a_cookie_token_in_chromium() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = harness_ready();
    let page = PageServer::start(&dir);
    let key = "52a152a152a152a152a152a152a1";
    let vols = demo_volumes();
    let cfg = |credentials: bool| {
        config_for(
            &[&vols.path().join("disk1")],
            &format!(
                "[cors]\nallow_origins = [\"http://127.0.0.1:{}\"]\nallow_credentials = {credentials}\n\
                 [token]\nprotect = [\"/vod/\"]\n[[token.keys]]\nid = \"k\"\nsecret = \"{key}\"\n",
                page.port
            ),
        )
    };
    let with = Server::start(&cfg(true));
    let without = Server::start(&cfg(false));
    let token = token_with_key(key, "/vod/t1/*");
    let seg = "/vod/t1/hls/64k/seg_00001.ts";
    let playlist = "/vod/t1/hls/master.m3u8";
    let urls = [with.url(seg), with.url(playlist), without.url(seg)];
    let out = Command::new("node")
        .arg(dir.join("fetch.mjs"))
        .args(["--page", &page.page()])
        .args(urls.iter().flat_map(|u| ["--url", u.as_str()]))
        .args(["--cookie", &format!("__token__={token}")])
        .args(["--credentials", "include"])
        .arg("--chromium")
        .arg(chromium())
        .output()
        .expect("run node fetch.mjs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fetch.mjs: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: BTreeMap<String, serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["url"].as_str()?.to_string(), v)))
        .collect();
    let expect_len = |rel: &str| {
        std::fs::metadata(demo_dir().join("disk1").join(rel.trim_start_matches('/')))
            .expect("demo file")
            .len()
    };
    for (url, rel) in [(&urls[0], seg), (&urls[1], playlist)] {
        let r = &results[url.as_str()];
        assert_eq!(r["status"], 200, "{url}: {text}");
        assert_eq!(r["bytes"], expect_len(rel), "{url}: {text}");
    }
    let refused = &results[urls[2].as_str()];
    assert_eq!(refused["status"], 0, "{text}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError")),
        "no credentials allowed: the browser refuses the answer: {text}"
    );
    // The cookie reached segd: the credentialed requests were served, not refused.
    let m = |srv: &Server| {
        let out = Command::new("curl")
            .args(["-s", &srv.admin_url("/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        metric(&m(&with), "segd_token_rejections_total{reason=\"missing\"}").unwrap_or(0.0),
        0.0
    );
}

/// A live source pushing into segd for as long as the test runs (killed on drop).
struct Source {
    child: Child,
    name: &'static str,
}

impl Source {
    fn start(name: &'static str, cmd: &mut Command) -> Source {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name} source: {e}"));
        Source { child, name }
    }

    /// Fails the test with the source's stderr if it has exited.
    fn still_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            let mut err = String::new();
            if let Some(e) = self.child.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(e, &mut err);
            }
            panic!("the {} source exited ({st}): {err}", self.name);
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Low-latency streams as they are pushed, played over the protocols live players reach segd
/// with in production: HTTP/2 over TLS (what Apple's LL-HLS delivery asks for) and HTTP/3.
/// LL-HLS from the test packager (parts, preload hints, blocking playlist reload: hls.js asks
/// `_HLS_msn`/`_HLS_part` and each answer is held until the part is there) and ffmpeg LL-DASH
/// with `SegmentTemplate` numbers (segments read while they are uploaded, chunked answers).
/// The sources push over plaintext HTTP/1.1; every request the player makes must go over the
/// protocol under test and be answered 200, with no player error.
#[test]
fn low_latency_streams_play_in_chromium_over_h2_and_h3() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = harness_ready();
    let page = PageServer::start(&dir);
    let cert = SelfSigned::new();
    let vol = tempfile::tempdir().expect("tempdir");
    let key = "0badc0de0badc0de0badc0de0badc0de";
    let srv = Server::start(&config_for(
        &[vol.path()],
        &format!(
            "[cors]\nallow_origins = [\"*\"]\n\
             [ingest]\nprefixes = [\"/live/\"]\nfsync = false\n\
             [[ingest.keys]]\nid = \"up\"\nsecret = \"{key}\"\n\
             [live]\nprefixes = [\"/live/\"]\n{}",
            cert.tls_section()
        ),
    ));
    let tls = srv.tls_addr.expect("TLS listener in the banner");
    let token = token_with_key(key, "/live/*");
    let base = |name: &str| srv.url(&p(&format!("/live/{name}/"), &token));

    let packager = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/llhls_packager.py");
    let mut llhls = Source::start(
        "LL-HLS packager",
        Command::new("python3")
            .arg(&packager)
            .arg(base("ll"))
            .args(["--segments", "60"]),
    );
    let mut dash = Source::start(
        "ffmpeg LL-DASH",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "warning", "-re"])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "120",
            ])
            .args(["-c:a", "aac", "-b:a", "128k", "-f", "dash"])
            .args([
                "-seg_duration",
                "2",
                "-frag_duration",
                "0.5",
                "-window_size",
                "10",
            ])
            .args(["-streaming", "1", "-ldash", "1", "-method", "PUT"])
            .args(["-use_timeline", "0", "-use_template", "1"])
            .args([
                "-utc_timing_url",
                &format!("http://127.0.0.1:{}/time", page.port),
            ])
            .arg(format!("{}manifest.mpd", base("dash"))),
    );

    // Ready: three complete LL-HLS segments, two complete DASH segments.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        llhls.still_running();
        dash.still_running();
        let playlist = String::from_utf8_lossy(&raw_get(srv.addr, "/live/ll/index.m3u8"))
            .matches("#EXTINF")
            .count();
        let segment = raw_status(&raw_get(srv.addr, "/live/dash/chunk-stream0-00002.m4s"));
        if playlist >= 3 && segment == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sources did not publish in 40 s: {playlist} LL-HLS segments, DASH segment 2: {segment}\nsegd: {}",
            srv.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let h2 = vec!["--ignore-https-errors".to_string()];
    let h3 = vec![
        "--force-quic".to_string(),
        tls.to_string(),
        "--spki-hash".to_string(),
        cert.spki_sha256.clone(),
    ];
    for (proto, extra) in [("h2", &h2), ("h3", &h3)] {
        for stream in ["/live/ll/index.m3u8", "/live/dash/manifest.mpd"] {
            llhls.still_running();
            dash.still_running();
            let url = format!("https://{tls}{stream}");
            let live = |name: &str| {
                metric(
                    &String::from_utf8_lossy(&raw_get(srv.admin, "/metrics")),
                    name,
                )
                .unwrap_or(0.0)
            };
            let (wakeups, growing) = (
                live("segd_live_wakeups_total"),
                live("segd_live_growing_reads_total"),
            );
            let name = format!("{proto}-{}", stream.split('/').nth(2).unwrap_or("x"));
            // 12 s: a live start (QUIC handshake, blocking reloads, the player's hold-back)
            // takes several seconds on a loaded machine, and at least 2 s must play after it.
            let got = play(
                &dir,
                &page.page(),
                &url,
                12,
                &tmp.path().join(format!("{name}.json")),
                extra,
            );
            let detail = format!("{proto}: {url}\n{}\nsegd: {}", got.output, srv.stderr());
            assert_all_over(&got, proto, &detail);
            // hls.js's gap controller may jump a small hole in front of the first part it
            // buffered when it starts at the live edge (a start position, not a missing byte).
            assert_played_tolerating(&got, &detail, &["hls:mediaError:bufferSeekOverHole"]);
            if stream.ends_with(".m3u8") {
                let blocking = &got.summary["requests"]["blockingReloads"]["n"];
                assert!(
                    blocking.as_u64().unwrap_or(0) >= 3,
                    "hls.js made {blocking} blocking playlist reloads over {proto}: {detail}"
                );
                assert_eq!(got.summary["lowLatencyMode"], true, "{detail}");
                // The reloads were held by segd and answered when the part came.
                let held = live("segd_live_wakeups_total") - wakeups;
                assert!(held >= 3.0, "{held} held reloads answered: {detail}");
            } else {
                // Segments were read while they were uploaded.
                let growing = live("segd_live_growing_reads_total") - growing;
                assert!(growing >= 1.0, "{growing} growing reads: {detail}");
            }
        }
    }
}
