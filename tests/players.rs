//! Real browser players against the real binary: hls.js and dash.js in Debian's Chromium, driven
//! by playwright-core (the harness in `benches/players/`, which never downloads a browser).
//!
//! - The demo's three VOD streams (HLS with MPEG-TS segments, HLS fMP4, DASH), from the signed
//!   URLs `segd serve` prints, played by a page on another origin: tokens in the path, CORS,
//!   media types and ranges as a browser sees them.
//! - Live streams pushed into segd as they play (`benches/players/run.sh`): ffmpeg HLS with
//!   `delete_segments`, ffmpeg LL-DASH with a `SegmentTimeline` and with `SegmentTemplate`
//!   numbers (segments read while they are uploaded), and LL-HLS from the test packager (parts,
//!   preload hints, blocking reload).
//!
//! Its own test binary, so that no other test takes the CPU from the players while they play.
//! Needs `chromium` (Debian) and the harness's npm packages; when `node_modules` is missing the
//! test runs `npm ci` there (the lockfile pins hls.js, dashjs and playwright-core).

mod util;

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
    output: String,
}

/// Plays `url` for `seconds` with `play.mjs` and reads its summary.
fn play(dir: &Path, page: &str, url: &str, seconds: u32, out: &Path) -> Played {
    let result = Command::new("node")
        .arg(dir.join("play.mjs"))
        .args(["--url", url, "--page", page])
        .args(["--seconds", &seconds.to_string(), "--warmup", "0"])
        .arg("--chromium")
        .arg(chromium())
        .arg("--out")
        .arg(out)
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
        output,
    }
}

/// The demo config (`config/segd.toml`) on ephemeral ports; the signed URLs its banner prints.
fn demo_server() -> (Server, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/segd.toml")).expect("demo config");
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace(
            "\"demo/",
            &format!("\"{}/", root.join("config/demo").display()),
        );
    let srv = Server::start(&text);
    let deadline = Instant::now() + Duration::from_secs(5);
    let banner = loop {
        let b = srv.stdout.lock().map(|s| s.clone()).unwrap_or_default();
        if b.matches(": open ").count() >= 3 || Instant::now() > deadline {
            break b;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let urls: Vec<String> = banner
        .lines()
        .filter_map(|l| l.split(": open ").nth(1))
        .map(|u| u.trim().replace("127.0.0.1:0", &srv.addr.to_string()))
        .collect();
    assert_eq!(urls.len(), 3, "three demo streams in the banner: {banner}");
    (srv, urls)
}

/// Every demo stream plays in Chromium from a page on another origin: it starts, plays on, and
/// every request the player made to segd was answered 200 (no player error of any kind).
#[test]
fn demo_streams_play_in_chromium_from_another_origin() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = harness_ready();
    let (srv, urls) = demo_server();
    let page = PageServer::start(&dir);
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, url) in urls.iter().enumerate() {
        let got = play(
            &dir,
            &page.page(),
            url,
            6,
            &tmp.path().join(format!("{i}.json")),
        );
        let s = &got.summary;
        let detail = format!("{url}\n{}\nsegd: {}", got.output, srv.stderr());
        assert!(got.ok, "did not play: {detail}");
        assert_eq!(s["ok"], true, "{detail}");
        assert!(
            s["playedSeconds"].as_f64().unwrap_or(0.0) >= 2.0,
            "played {} s of 6: {detail}",
            s["playedSeconds"]
        );
        assert_eq!(s["errors"]["fatal"], 0, "{detail}");
        assert_eq!(s["errors"]["nonFatal"], 0, "{detail}");
        let requests = s["requests"].as_object().expect("requests by kind");
        assert!(
            requests.contains_key("segment"),
            "the player fetched no segment: {detail}"
        );
        for (kind, r) in requests {
            let statuses = r["status"].as_object().expect("statuses");
            assert!(
                statuses.keys().all(|k| k == "200"),
                "{kind} answers other than 200: {statuses:?}: {detail}"
            );
            assert_eq!(r["failed"], 0, "{kind} requests failed: {detail}");
        }
    }
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
