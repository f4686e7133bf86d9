//! HTTP semantics against the running server:
//! - content types per extension, unknown extensions 404, `[types]` additions
//! - Cache-Control per class: segments, VOD playlists, live prefix, keys
//! - Range: `a-b`, `a-`, `-n`, 416 with `bytes */LEN`, multi-range → 200, invalid → 200, HEAD;
//!   `-n` of an empty object → 200 (RFC 9110 §14.1.2)
//! - ETag / Last-Modified, If-None-Match / If-Modified-Since → 304, If-Match → 412, If-Range
//! - methods: 405 with Allow for a write where none is allowed, 501 for a method segd does not
//!   implement (CONNECT too), on every protocol; OPTIONS preflight; CORS with `*` and with an
//!   origin list, and with credentials (echoed origin, `Access-Control-Allow-Credentials` on
//!   200/206/304/403)
//! - keep-alive and pipelining over raw HTTP/1.1; h2c prior knowledge
//! - HTTP/1.x request-line versions: 1.2+ served as 1.1, other majors 505, garbage 400
//! - error bodies never contain filesystem paths

use std::path::Path;
use std::time::Duration;

use crate::util::*;

const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";

fn demo_file(rel: &str) -> Vec<u8> {
    std::fs::read(demo_dir().join("disk1").join(rel.trim_start_matches('/'))).expect("demo file")
}

fn one_volume(extra: &str) -> (tempfile::TempDir, Server) {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], extra));
    (dir, srv)
}

#[tokio::test]
async fn content_types_by_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/a")).expect("mkdir");
    let cases = [
        ("p.m3u8", "application/vnd.apple.mpegurl"),
        ("m.mpd", "application/dash+xml"),
        ("s.ts", "video/mp2t"),
        ("s.m4s", "video/iso.segment"),
        ("i.mp4", "video/mp4"),
        ("a.m4a", "audio/mp4"),
        ("a.aac", "audio/aac"),
        ("a.mp3", "audio/mpeg"),
        ("a.ac3", "audio/ac3"),
        ("a.ec3", "audio/eac3"),
        ("a.cmfa", "audio/mp4"),
        ("v.cmfv", "video/mp4"),
        ("t.cmft", "application/mp4"),
        ("v.m4v", "video/mp4"),
        ("c.vtt", "text/vtt"),
        ("c.webvtt", "text/vtt"),
        ("c.ttml", "application/ttml+xml"),
        ("k.key", "application/octet-stream"),
        ("x.flac", "audio/flac"),
        ("UPPER.TS", "video/mp2t"),
    ];
    for (name, _) in cases {
        std::fs::write(vol.join("vod/a").join(name), b"data").expect("write");
    }
    for name in ["x.html", "x.txt", "x.php", "noext"] {
        std::fs::write(vol.join("vod/a").join(name), b"data").expect("write");
    }
    let srv = Server::start(&config_for(&[&vol], "[types]\nflac = \"audio/flac\"\n"));
    for (name, ctype) in cases {
        let r = get(&srv.url(&format!("/vod/a/{name}")), &[]).await;
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("content-type"), Some(ctype), "{name}");
        assert_eq!(r.body.as_ref(), b"data");
    }
    for name in ["x.html", "x.txt", "x.php", "noext"] {
        let r = get(&srv.url(&format!("/vod/a/{name}")), &[]).await;
        assert_eq!(r.status, 404, "{name} is not media and must not be served");
    }
}

#[tokio::test]
async fn cache_control_per_class() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    for d in ["vod/t", "live/r", "radio/r"] {
        std::fs::create_dir_all(vol.join(d)).expect("mkdir");
    }
    for f in [
        "vod/t/index.m3u8",
        "vod/t/m.mpd",
        "vod/t/s.ts",
        "vod/t/k.key",
        "live/r/index.m3u8",
        "live/r/s.ts",
        "radio/r/index.m3u8",
    ] {
        std::fs::write(vol.join(f), b"x").expect("write");
    }
    let srv = Server::start(&config_for(
        &[&vol],
        "[cache_control]\nplaylists = \"public, max-age=30\"\nlive_prefixes = [\"/live/\", \"/radio/\"]\n",
    ));
    for (path, cc) in [
        ("/vod/t/index.m3u8", "public, max-age=30"),
        ("/vod/t/m.mpd", "public, max-age=30"),
        ("/vod/t/s.ts", "public, max-age=31536000, immutable"),
        ("/vod/t/k.key", "private, no-store"),
        (
            "/live/r/index.m3u8",
            "public, max-age=1, stale-while-revalidate=0",
        ),
        (
            "/live/r/s.ts",
            "public, max-age=1, stale-while-revalidate=0",
        ),
        (
            "/radio/r/index.m3u8",
            "public, max-age=1, stale-while-revalidate=0",
        ),
    ] {
        let r = get(&srv.url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("cache-control"), Some(cc), "{path}");
    }
    // Defaults without a [cache_control] section.
    let (_d, srv) = one_volume("");
    let r = get(&srv.url("/vod/t1/hls/master.m3u8"), &[]).await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    // Errors are never cached by default.
    let r = get(&srv.url("/vod/t1/nope.ts"), &[]).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

/// An empty object: `bytes=-n` (n > 0) is the one satisfiable range of it (RFC 9110 §14.1.2),
/// so not 416; no `Content-Range` spells an empty part, so the whole object with 200. A range
/// from a first byte has nothing to start at: 416 `bytes */0`. On HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn ranges_of_an_empty_object() {
    let (d, srv) = one_volume("");
    std::fs::write(d.path().join("disk1/vod/t1/empty.ts"), b"").expect("write");
    let url = srv.url("/vod/t1/empty.ts");
    for h2 in [false, true] {
        for suffix in ["bytes=-1", "bytes=-500"] {
            let r = request("GET", &url, &[("range", suffix)], h2).await;
            assert_eq!(r.status, 200, "{suffix} (h2: {h2})");
            assert_eq!(r.header("content-length"), Some("0"));
            assert_eq!(r.header("content-range"), None);
            assert!(r.body.is_empty());
        }
        for unsat in ["bytes=0-", "bytes=0-0", "bytes=-0"] {
            let r = request("GET", &url, &[("range", unsat)], h2).await;
            assert_eq!(r.status, 416, "{unsat} (h2: {h2})");
            assert_eq!(r.header("content-range"), Some("bytes */0"));
        }
    }
}

#[tokio::test]
async fn ranges() {
    let (_d, srv) = one_volume("");
    let full = demo_file(SEG);
    let len = full.len();
    let url = srv.url(SEG);

    let r = get(&url, &[("range", "bytes=0-99")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-99/{len}").as_str())
    );
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(r.body.as_ref(), &full[..100]);

    let r = get(&url, &[("range", "bytes=1000-")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-{}/{len}", len - 1).as_str())
    );
    assert_eq!(r.body.as_ref(), &full[1000..]);

    let r = get(&url, &[("range", "bytes=-500")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &full[len - 500..]);

    let r = get(&url, &[("range", &format!("bytes=10-{}", len * 2))]).await;
    assert_eq!(r.status, 206, "end past the object is clamped");
    assert_eq!(r.body.as_ref(), &full[10..]);

    for unsat in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 10),
        "bytes=-0".into(),
    ] {
        let r = get(&url, &[("range", &unsat)]).await;
        assert_eq!(r.status, 416, "{unsat}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }

    // Multi-range: documented policy is the whole object with 200.
    let r = get(&url, &[("range", "bytes=0-9,20-29")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), len);
    // Invalid or foreign-unit ranges are ignored.
    for bad in [
        "bytes=9-3",
        "items=0-9",
        "bytes=abc",
        "bytes=-",
        "bytes=1-2-3",
    ] {
        let r = get(&url, &[("range", bad)]).await;
        assert_eq!(r.status, 200, "{bad}");
        assert_eq!(r.body.len(), len);
    }
    // Range is defined for GET only: HEAD answers 200 with the full length.
    let r = request("HEAD", &url, &[("range", "bytes=0-9")], false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
    assert!(r.body.is_empty());
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn validators_and_conditionals() {
    let (dir, srv) = one_volume("");
    let url = srv.url(SEG);
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200);
    let etag = r.header("etag").expect("etag").to_string();
    let lm = r
        .header("last-modified")
        .expect("last-modified")
        .to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag: {etag}"
    );

    let r = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert!(
        r.header("cache-control").is_some(),
        "304 carries Cache-Control"
    );
    let r = get(&url, &[("if-none-match", &format!("\"other\", W/{etag}"))]).await;
    assert_eq!(r.status, 304, "weak comparison for If-None-Match");
    let r = get(&url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
    let r = get(&url, &[("if-modified-since", &lm)]).await;
    assert_eq!(r.status, 304);
    let r = get(
        &url,
        &[("if-modified-since", "Thu, 01 Jan 1970 00:00:01 GMT")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request("HEAD", &url, &[("if-none-match", &etag)], false).await;
    assert_eq!(r.status, 304);
    let r = get(&url, &[("if-match", "\"nope\"")]).await;
    assert_eq!(r.status, 412);
    let r = get(&url, &[("if-match", &etag), ("range", "bytes=0-0")]).await;
    assert_eq!(r.status, 206);

    // If-Range: honoured only when the validator still matches.
    let r = get(&url, &[("if-range", &etag), ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 206);
    let r = get(&url, &[("if-range", "\"stale\""), ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 200);
    let r = get(&url, &[("if-range", &lm), ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 206);
    let r = get(
        &url,
        &[
            ("if-range", "Thu, 01 Jan 1970 00:00:01 GMT"),
            ("range", "bytes=0-9"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);

    // Rewriting the file changes the validator: the old ETag no longer gives 304.
    let path = dir.path().join("disk1").join(SEG.trim_start_matches('/'));
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, b"new content").expect("rewrite");
    let r = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), b"new content");
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

/// A file whose modification time is ahead of the clock (touched into the future, copied
/// from a machine whose clock ran ahead) is sent without `Last-Modified`, which must never be
/// later than `Date` (RFC 9110 §8.8.2.1), on every protocol's writer; `If-Modified-Since`
/// never makes it a 304.
#[tokio::test]
async fn a_modification_time_in_the_future_is_not_sent() {
    let (dir, srv) = one_volume("");
    let path = dir.path().join("disk1").join(SEG.trim_start_matches('/'));
    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    let now = std::time::SystemTime::now();
    file.set_modified(now + Duration::from_secs(86_400))
        .expect("set mtime");
    drop(file);
    let url = srv.url(SEG);
    let this_second = httpdate::fmt_http_date(now);
    for h2 in [false, true] {
        let r = request("GET", &url, &[], h2).await;
        assert_eq!(r.status, 200, "h2: {h2}");
        assert!(r.header("etag").is_some(), "h2: {h2}");
        assert_eq!(r.header("last-modified"), None, "h2: {h2}");
        let r = request("GET", &url, &[("if-modified-since", &this_second)], h2).await;
        assert_eq!(r.status, 200, "If-Modified-Since now (h2: {h2})");
    }
}

/// A modification time past the year 9999 (a broken clock, restored metadata; tmpfs keeps
/// it, ext4 clamps at 2446), which no HTTP date can name: served, without `Last-Modified`, on
/// every protocol (each request panicked a worker task: an empty reply, a backtrace).
#[tokio::test]
async fn a_modification_time_past_the_year_9999_is_served() {
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(&vol).expect("mkdir");
    let _m = Mount::tmpfs(&vol, "4m").expect("mount a tmpfs (root)");
    std::fs::create_dir_all(vol.join("vod/t")).expect("mkdir");
    let file = vol.join("vod/t/far.ts");
    std::fs::write(&file, b"from the far future").expect("write");
    let year_11000 = std::time::UNIX_EPOCH + Duration::from_secs(285_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .expect("open")
        .set_modified(year_11000)
        .expect("set mtime");
    let srv = Server::start(&config_for(&[&vol], ""));
    for h2 in [false, true] {
        for _ in 0..2 {
            let r = request("GET", &srv.url("/vod/t/far.ts"), &[], h2).await;
            assert_eq!(r.status, 200, "h2: {h2}");
            assert_eq!(r.body.as_ref(), b"from the far future");
            assert_eq!(r.header("last-modified"), None);
        }
    }
    assert!(!srv.stderr().contains("panicked"), "{}", srv.stderr());
}

/// A playlist outside the live prefixes replaced twice within one second (a catalogue
/// tool's fix-up, an EVENT playlist): the first version's `Last-Modified` would name the
/// second version's second too, and a cache that revalidates with `If-Modified-Since` alone
/// would keep the first version (RFC 9110 §8.8.2.2: such a date is a weak validator). Its
/// date is sent only once that second is over; until then the ETag tells the versions apart.
/// (Live playlists: `live::if_modified_since_never_hides_a_version_written_in_the_same_second`.)
#[tokio::test]
async fn a_date_is_sent_as_a_validator_only_once_its_second_is_over() {
    let (dir, srv) = one_volume("");
    let rel = "vod/t1/fixed.m3u8";
    let path = dir.path().join("disk1").join(rel);
    let url = srv.url(&format!("/{rel}"));
    let put = |body: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    };
    let mut dated = 0;
    for round in 0..3 {
        // Both versions early in one second, as two renames of one tool would be.
        early_in_a_second();
        put(&format!("#EXTM3U\n# first {round}\n"));
        let first = get(&url, &[]).await;
        assert_eq!(first.status, 200);
        assert!(first.body.starts_with(b"#EXTM3U\n# first"));
        put(&format!("#EXTM3U\n# second {round}\n"));
        if let Some(lm) = first.header("last-modified") {
            // Sent only when the second had ended before the first version was asked for:
            // the second version, written after that, is not "not modified".
            dated += 1;
            let r = get(&url, &[("if-modified-since", lm)]).await;
            assert_eq!(r.status, 200, "round {round}: the second version is new");
            assert!(r.body.starts_with(b"#EXTM3U\n# second"));
        }
        let etag = first.header("etag").expect("etag");
        let r = get(&url, &[("if-none-match", etag)]).await;
        assert_eq!(r.status, 200, "round {round}: the ETag tells them apart");
    }
    // Dated a second later, the version is sent with its date, and a revalidation with it
    // alone is a 304.
    std::thread::sleep(Duration::from_millis(1100));
    let r = get(&url, &[]).await;
    let lm = r
        .header("last-modified")
        .expect("the date, once its second is over");
    let r = get(&url, &[("if-modified-since", lm)]).await;
    assert_eq!(r.status, 304);
    assert!(
        dated < 3,
        "the first version was always asked for in its own second"
    );
}

#[tokio::test]
async fn methods_and_preflight() {
    let (_d, srv) = one_volume("");
    // Methods segd implements but this path does not allow (no ingest here); the ones it does
    // not implement are 501: `unknown_methods_are_501_on_every_protocol`.
    for m in ["POST", "PUT", "DELETE"] {
        let req = format!(
            "{m} {SEG} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let resp = raw(srv.addr, req.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
        assert_eq!(raw_status(&resp), 405, "{m}: {text}");
        assert!(text.contains("allow: get, head, options"), "{m}: {text}");
    }
    let r = request("HEAD", &srv.url(SEG), &[], false).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(demo_file(SEG).len().to_string().as_str())
    );
    assert!(r.body.is_empty());

    let r = request(
        "OPTIONS",
        &srv.url(SEG),
        &[
            ("origin", "https://player.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range"),
        ],
        false,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|v| v.contains("GET")));
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|v| v.to_ascii_lowercase().contains("range")));
    assert!(r.header("access-control-max-age").is_some());
    let r = request("OPTIONS", &srv.url(SEG), &[], false).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));

    let r = get(&srv.url(SEG), &[("origin", "https://player.example")]).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("timing-allow-origin"), Some("*"));
    let exposed = r
        .header("access-control-expose-headers")
        .expect("expose")
        .to_ascii_lowercase();
    // Location and Retry-After for browser uploaders (a 201's, a 503's: acceptance L3).
    for h in [
        "content-length",
        "content-range",
        "etag",
        "age",
        "date",
        "location",
        "retry-after",
    ] {
        assert!(
            exposed.split(", ").any(|x| x == h),
            "{h} exposed: {exposed}"
        );
    }
}

#[tokio::test]
async fn cors_origin_list() {
    let (_d, srv) =
        one_volume("[cors]\nallow_origins = [\"https://a.example\", \"https://b.example\"]\n");
    let r = get(&srv.url(SEG), &[("origin", "https://b.example")]).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://b.example")
    );
    assert_eq!(r.header("timing-allow-origin"), Some("https://b.example"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = get(&srv.url(SEG), &[("origin", "https://evil.example")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("timing-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = request(
        "OPTIONS",
        &srv.url(SEG),
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        false,
    )
    .await;
    assert_eq!(r.header("access-control-allow-methods"), None);
}

/// `allow_credentials = true` (Fetch standard, CORS check): an allowed origin is echoed, never
/// `*`, with `Access-Control-Allow-Credentials: true` and `Vary: Origin` on the preflight and on
/// every answer a player reads: 200, 206, 304, and the 403 of a missing cookie token. Another
/// origin, or no `Origin`, gets neither.
#[tokio::test]
async fn cors_credentials() {
    let (_d, srv) = one_volume(
        "[cors]\nallow_origins = [\"https://player.example\"]\nallow_credentials = true\n\
         [token]\nprotect = [\"/vod/t1/hls/64k/index\"]\n[[token.keys]]\nid = \"k\"\n\
         secret = \"52a152a152a152a152a152a152a1\"\n",
    );
    let origin = ("origin", "https://player.example");
    let credentialed = |r: &Resp, what: &str| {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://player.example"),
            "{what}"
        );
        assert_eq!(
            r.header("access-control-allow-credentials"),
            Some("true"),
            "{what}"
        );
        assert_eq!(r.header("vary"), Some("Origin"), "{what}");
    };
    let r = get(&srv.url(SEG), &[origin]).await;
    assert_eq!(r.status, 200);
    credentialed(&r, "200");
    let etag = r.header("etag").expect("etag").to_string();
    let r = get(&srv.url(SEG), &[origin, ("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 206);
    credentialed(&r, "206");
    let r = get(&srv.url(SEG), &[origin, ("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    credentialed(&r, "304");
    let r = get(&srv.url("/vod/t1/hls/64k/index.m3u8"), &[origin]).await;
    assert_eq!(r.status, 403, "no token");
    credentialed(&r, "403");
    let r = request(
        "OPTIONS",
        &srv.url(SEG),
        &[
            origin,
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "range"),
        ],
        false,
    )
    .await;
    assert_eq!(r.status, 204);
    credentialed(&r, "preflight");
    assert!(r.header("access-control-allow-methods").is_some());
    for headers in [&[("origin", "https://evil.example")][..], &[][..]] {
        let r = get(&srv.url(SEG), headers).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), None, "{headers:?}");
        assert_eq!(
            r.header("access-control-allow-credentials"),
            None,
            "{headers:?}"
        );
    }
    // Without the setting, an allowed origin gets no credentials header (as before).
    let (_d2, plain) = one_volume("[cors]\nallow_origins = [\"https://player.example\"]\n");
    let r = get(&plain.url(SEG), &[origin]).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://player.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn keepalive_and_pipelining() {
    let (_d, srv) = one_volume("");
    let a = "/vod/t1/hls/64k/index.m3u8";
    let b = "/vod/t1/hls/master.m3u8";
    let req = format!(
        "GET {a} HTTP/1.1\r\nHost: t\r\n\r\nHEAD {b} HTTP/1.1\r\nHost: t\r\n\r\nGET {b} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-6\r\nConnection: close\r\n\r\n"
    );
    let resp = raw(srv.addr, req.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&resp).to_string();
    let ia = demo_file(a);
    let first = text.find("HTTP/1.1 200").expect("first response");
    let second = text[first + 1..]
        .find("HTTP/1.1 200")
        .map(|i| i + first + 1)
        .expect("second");
    let third = text.find("HTTP/1.1 206").expect("third");
    assert!(
        first < second && second < third,
        "answered in order:\n{text}"
    );
    assert!(text[first..second].contains(std::str::from_utf8(&ia).expect("utf8")));
    assert!(
        text[third..].ends_with("#EXTM3U"),
        "range body last:\n{}",
        &text[third..]
    );
    // The HEAD answer carries the GET's length and no body.
    let head = &text[second..third];
    let master_len = demo_file(b).len();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {master_len}")),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "no body after HEAD: {head:?}");
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let (_d, srv) = one_volume("");
    let full = demo_file(SEG);
    // HTTP/1.1 bodies go out with sendfile; HTTP/2 bodies (handed to hyper) cannot.
    let zc = async || {
        metric(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            "segd_zero_copy_bytes_total",
        )
    };
    assert_eq!(zc().await, Some(0.0));
    assert_eq!(get(&srv.url(SEG), &[]).await.status, 200);
    // Metrics are recorded just after the last byte is handed to the kernel: wait for them.
    assert!(
        eventually(Duration::from_secs(5), async || zc().await
            == Some(full.len() as f64))
        .await,
        "HTTP/1.1 GET used sendfile: {:?}",
        zc().await
    );
    let r = request("GET", &srv.url(SEG), &[], true).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), &full[..]);
    let r = request("GET", &srv.url(SEG), &[("range", "bytes=5-14")], true).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &full[5..15]);
    let r = request("GET", &srv.url("/vod/../x.ts"), &[], true).await;
    assert_eq!(r.status, 400);
    let r = request("DELETE", &srv.url(SEG), &[], true).await;
    assert_eq!(r.status, 405);
    assert_eq!(
        zc().await,
        Some(full.len() as f64),
        "h2 bodies are not counted as zero-copy"
    );
}

/// RFC 9113 §8.3.1: over HTTP/2 a `Host` field that names another authority than `:authority`
/// makes the request malformed (HTTP/3 refuses the same request, RFC 9114 §4.3.1); one that
/// agrees (in any case) or none at all is fine. So does userinfo in `:authority` or a scheme
/// other than http(s). RFC 9113 §8.2.1: so does a field value that starts or ends with
/// whitespace.
#[tokio::test]
async fn h2_host_must_agree_with_authority() {
    let (_d, srv) = one_volume("");
    let (mut client, _driver) = h2c(srv.addr).await;
    let authority = format!("localhost:{}", srv.addr.port());
    let upper = format!("LOCALHOST:{}", srv.addr.port());
    for (host, want) in [
        (None, 200),
        (Some(authority.as_str()), 200),
        (Some(upper.as_str()), 200),
        (Some("other.example"), 400),
        (Some("localhost:1"), 400),
    ] {
        let mut b = http::Request::builder().uri(format!("http://{authority}{SEG}"));
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let req = b.body(()).expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        let resp = resp.await.expect("response");
        assert_eq!(resp.status().as_u16(), want, "Host {host:?}");
    }
    // RFC 9113 §8.3.1: no userinfo in `:authority`; `:scheme` http or https (HTTP/1.1 refuses
    // userinfo in `Host` and in an absolute target alike). Both were served.
    for (uri, want) in [
        (format!("http://user@{authority}{SEG}"), 400),
        (format!("http://user:pw@{authority}{SEG}"), 400),
        (format!("ftp://{authority}{SEG}"), 400),
        (format!("https://{authority}{SEG}"), 200),
        // A port that is no number, as in `Host` (acceptance): 400.
        (format!("http://localhost:8a0{SEG}"), 400),
    ] {
        let req = http::Request::builder()
            .uri(&uri)
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        let resp = resp.await.expect("response");
        assert_eq!(resp.status().as_u16(), want, "{uri}");
    }
    // RFC 9113 §8.2.1: a field value may not start or end with whitespace.
    for (value, want) in [(" a", 400), ("a ", 400), ("\ta", 400), ("a b", 200)] {
        let req = http::Request::builder()
            .uri(format!("http://{authority}{SEG}"))
            .header("x-a", http::HeaderValue::from_static(value))
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        let resp = resp.await.expect("response");
        assert_eq!(resp.status().as_u16(), want, "x-a: {value:?}");
    }
}

/// HTTP/2 frames that break the framing rules get the error code RFC 9113 names for each, and
/// the server goes on serving other connections: a wrong length is FRAME_SIZE_ERROR (§4.2,
/// §6.3-§6.9), an initial window over 2^31-1 FLOW_CONTROL_ERROR (§6.5.2), DATA after the
/// client's END_STREAM STREAM_CLOSED (§5.1), and the rest PROTOCOL_ERROR.
#[tokio::test]
async fn h2_frame_errors_carry_the_right_codes() {
    use crate::util::h2raw::*;
    const PRIORITY: u8 = 2;
    const PING: u8 = 6;
    const WINDOW_UPDATE: u8 = 8;
    const PROTOCOL_ERROR: u32 = 1;
    const FLOW_CONTROL_ERROR: u32 = 3;
    const STREAM_CLOSED: u32 = 5;
    const FRAME_SIZE_ERROR: u32 = 6;
    const COMPRESSION_ERROR: u32 = 9;
    let (_d, srv) = one_volume("");
    let get = hpack_get(SEG);
    let setting = h2_setting;
    let end_both = H2_END_HEADERS | H2_END_STREAM;
    let (big_window, push_2) = (setting(4, 1 << 31), setting(2, 2));
    let (no_window, get_5) = (setting(4, 0), get.clone());
    let empty_name = [get.clone(), hpack_literals(&[("", "x")])].concat();
    let upper_name = [get.clone(), hpack_literals(&[("X-Upper", "1")])].concat();
    let lf_value = [get.clone(), hpack_literals(&[("x-a", "a\nb")])].concat();
    let unknown_pseudo = hpack_literals(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":test", "x"),
        (":authority", "localhost"),
        (":path", SEG),
    ]);
    let connect = hpack_literals(&[(":method", "CONNECT")]);
    type Frame<'a> = (u8, u8, u32, &'a [u8]);
    let cases: Vec<(&str, Vec<Frame>, u8, u32)> = vec![
        (
            "SETTINGS of 3 bytes",
            vec![(H2_SETTINGS, 0, 0, &[0, 0, 0])],
            H2_GOAWAY,
            FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS ACK with a payload",
            vec![(H2_SETTINGS, 1, 0, &[0; 6])],
            H2_GOAWAY,
            FRAME_SIZE_ERROR,
        ),
        (
            "PING of 7 bytes",
            vec![(PING, 0, 0, &[0; 7])],
            H2_GOAWAY,
            FRAME_SIZE_ERROR,
        ),
        (
            "WINDOW_UPDATE of 3 bytes",
            vec![(WINDOW_UPDATE, 0, 0, &[0, 0, 1])],
            H2_GOAWAY,
            FRAME_SIZE_ERROR,
        ),
        (
            "PRIORITY of 4 bytes",
            vec![(PRIORITY, 0, 1, &[0; 4])],
            H2_RST_STREAM,
            FRAME_SIZE_ERROR,
        ),
        (
            "RST_STREAM of 3 bytes",
            vec![
                (H2_HEADERS, end_both, 1, &get),
                (H2_RST_STREAM, 0, 1, &[0, 0, 8]),
            ],
            H2_GOAWAY,
            FRAME_SIZE_ERROR,
        ),
        (
            "INITIAL_WINDOW_SIZE 2^31",
            vec![(H2_SETTINGS, 0, 0, &big_window)],
            H2_GOAWAY,
            FLOW_CONTROL_ERROR,
        ),
        (
            "ENABLE_PUSH 2",
            vec![(H2_SETTINGS, 0, 0, &push_2)],
            H2_GOAWAY,
            PROTOCOL_ERROR,
        ),
        (
            "DATA after END_STREAM",
            vec![
                (H2_HEADERS, end_both, 1, &get),
                (H2_DATA, H2_END_STREAM, 1, b"x"),
            ],
            H2_GOAWAY,
            STREAM_CLOSED,
        ),
        (
            // The response cannot end (no window), so the stream is half-closed (remote):
            // a stream error (h2spec http2/5.1/6).
            "HEADERS after END_STREAM",
            vec![
                (H2_SETTINGS, 0, 0, &no_window),
                (H2_HEADERS, end_both, 1, &get),
                (H2_HEADERS, end_both, 1, &get),
            ],
            H2_RST_STREAM,
            STREAM_CLOSED,
        ),
        (
            // Stream 3 was never opened: 5 closed it while idle (RFC 9113 §5.1.1).
            "HEADERS on a stream skipped",
            vec![
                (H2_HEADERS, end_both, 5, &get_5),
                (H2_HEADERS, end_both, 3, &get),
            ],
            H2_GOAWAY,
            PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE of 0 on a stream",
            vec![
                (H2_SETTINGS, 0, 0, &no_window),
                (H2_HEADERS, end_both, 1, &get),
                (WINDOW_UPDATE, 0, 1, &[0; 4]),
            ],
            H2_RST_STREAM,
            PROTOCOL_ERROR,
        ),
        (
            "CONNECT without :authority",
            vec![(H2_HEADERS, end_both, 1, &connect)],
            H2_RST_STREAM,
            PROTOCOL_ERROR,
        ),
        (
            "DATA on stream 0",
            vec![(H2_DATA, 0, 0, b"x")],
            H2_GOAWAY,
            PROTOCOL_ERROR,
        ),
        (
            // :method GET, :path /, :scheme http, then index 254 (no such entry).
            "HPACK index out of range",
            vec![(H2_HEADERS, end_both, 1, &[0x82, 0x84, 0x86, 0xff, 0x7f])],
            H2_GOAWAY,
            COMPRESSION_ERROR,
        ),
    ];
    // A field that is no valid field makes its request malformed: a stream error (RFC 9113
    // §8.1.1, §8.2.1); they closed the connection, and every stream on it.
    let malformed = [
        ("an empty field name", &empty_name),
        ("an upper-case field name", &upper_name),
        ("LF in a field value", &lf_value),
        ("an unknown pseudo-header", &unknown_pseudo),
    ];
    let malformed = malformed.iter().map(|(what, block)| {
        let frames: Vec<Frame> = vec![(H2_HEADERS, end_both, 1, &block[..])];
        (*what, frames, H2_RST_STREAM, PROTOCOL_ERROR)
    });
    for (what, frames, kind, code) in cases.into_iter().chain(malformed) {
        let mut c = RawH2::connect(srv.addr);
        for (k, flags, stream, payload) in frames {
            c.send(k, flags, stream, payload);
        }
        let got = c.frames(Duration::from_secs(2));
        let error = got.iter().find_map(|(k, _, _, p)| match *k {
            H2_GOAWAY => Some((*k, u32::from_be_bytes([p[4], p[5], p[6], p[7]]))),
            H2_RST_STREAM => Some((*k, u32::from_be_bytes([p[0], p[1], p[2], p[3]]))),
            _ => None,
        });
        assert_eq!(error, Some((kind, code)), "{what}: {got:?}");
    }
    // A stream both sides ended (the answer came whole) is closed: HEADERS or DATA on it is a
    // connection error STREAM_CLOSED (RFC 9113 §5.1; h2spec http2/5.1/12 and 5.1/11), whether
    // the server still holds the stream or has forgotten it. (DATA was a stream error once
    // the stream was forgotten: h2spec waits for a GOAWAY.)
    for (kind, payload) in [(H2_HEADERS, &get[..]), (H2_DATA, &b"test"[..])] {
        for pause in [Duration::ZERO, Duration::from_millis(300)] {
            let mut c = RawH2::connect(srv.addr);
            c.send(H2_HEADERS, end_both, 1, &get);
            let answer = c.stream_frames(1);
            assert!(answer.iter().any(|f| f.0 == H2_DATA), "{answer:?}");
            std::thread::sleep(pause);
            let flags = if kind == H2_DATA {
                H2_END_STREAM
            } else {
                end_both
            };
            c.send(kind, flags, 1, payload);
            let got = c.frames(Duration::from_secs(2));
            let goaway = got.iter().find(|f| f.0 == H2_GOAWAY).map(|f| {
                let p = &f.3;
                u32::from_be_bytes([p[4], p[5], p[6], p[7]])
            });
            assert_eq!(
                goaway,
                Some(STREAM_CLOSED),
                "frame {kind} after {pause:?}: {got:?}"
            );
        }
    }
    let r = request("GET", &srv.url(SEG), &[], true).await;
    assert_eq!(r.status, 200, "still serving");
}

/// A write segd refuses at once (405: `POST /`, h2spec's default target) has its body read
/// first on HTTP/2, so a broken body is the stream error RFC 9113 §8.1 names, every time: a
/// trailer section without END_STREAM, pseudo-header fields in trailers, DATA beyond
/// `content-length`. The early 405 and its RST_STREAM(NO_ERROR) raced these frames, and h2spec
/// (http2/8.1/1, 8.1.2.1/3, 8.1.2.6/2) failed about half its runs.
#[tokio::test]
async fn h2_a_refused_writes_broken_body_is_a_stream_error_every_time() {
    use crate::util::h2raw::*;
    let (_d, srv) = one_volume("");
    let post = |extra: &[(&str, &str)]| {
        let mut f = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "localhost"),
            (":path", "/"),
        ];
        f.extend_from_slice(extra);
        hpack_literals(&f)
    };
    let plain = post(&[]);
    let with_length = post(&[("content-length", "1")]);
    let trailer = hpack_literals(&[("x-trailer", "1")]);
    let pseudo_trailer = hpack_literals(&[(":path", "/")]);
    type Frame<'a> = (u8, u8, &'a [u8]);
    let cases: [(&str, Vec<Frame>); 3] = [
        (
            "trailers without END_STREAM",
            vec![
                (H2_HEADERS, H2_END_HEADERS, &plain),
                (H2_DATA, 0, b"test"),
                (H2_HEADERS, H2_END_HEADERS, &trailer),
            ],
        ),
        (
            "a pseudo-header field in trailers",
            vec![
                (H2_HEADERS, H2_END_HEADERS, &plain),
                (H2_DATA, 0, b"test"),
                (H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, &pseudo_trailer),
            ],
        ),
        (
            "DATA beyond content-length",
            vec![
                (H2_HEADERS, H2_END_HEADERS, &with_length),
                (H2_DATA, 0, b"test"),
                (H2_DATA, H2_END_STREAM, b"test"),
            ],
        ),
    ];
    for (what, frames) in &cases {
        for run in 0..8 {
            let mut c = RawH2::connect(srv.addr);
            // Apart, as h2spec writes them: the answer could go out between them.
            for (kind, flags, payload) in frames {
                c.send(*kind, *flags, 1, payload);
                std::thread::sleep(Duration::from_millis(20));
            }
            let got = c.stream_frames(1);
            let reset = got
                .iter()
                .find(|f| f.0 == H2_RST_STREAM)
                .map(|f| f.2.clone());
            assert_eq!(
                reset,
                Some(vec![0, 0, 0, 1]),
                "{what}, run {run}: RST_STREAM(PROTOCOL_ERROR): {got:?}"
            );
        }
    }
    // A well-formed body is read and told 405.
    let mut c = RawH2::connect(srv.addr);
    c.send(H2_HEADERS, H2_END_HEADERS, 1, &plain);
    c.send(H2_DATA, H2_END_STREAM, 1, b"test");
    let got = c.stream_frames(1);
    assert!(
        matches!(got.first(), Some((H2_HEADERS, _, _))) && got.iter().all(|f| f.0 != H2_RST_STREAM),
        "{got:?}"
    );
}

/// A request with a field that is no valid field (RFC 9113 §8.2.1) is reset alone: a download
/// in flight on the same connection completes (the connection was closed, cutting it at 0
/// bytes), and such a field kept in the HPACK dynamic table stays there as the client's
/// encoder has it: a later request naming it by index is malformed too, one naming other
/// entries is served.
#[tokio::test]
async fn h2_a_malformed_field_resets_its_stream_only() {
    use crate::util::h2raw::*;
    const WINDOW_UPDATE: u8 = 8;
    let (_d, srv) = one_volume("");
    let full = demo_file(SEG);
    let get = hpack_get(SEG);
    let setting = h2_setting;
    let end_both = H2_END_HEADERS | H2_END_STREAM;
    let mut c = RawH2::connect(srv.addr);
    // Stream 1's answer waits for window.
    c.send(H2_SETTINGS, 0, 0, &setting(4, 0));
    c.send(H2_HEADERS, end_both, 1, &get);
    // Stream 3: `X-Up: 1` as a literal with incremental indexing (RFC 7541 §6.2.1): dynamic
    // entry 62.
    let indexed_upper = [&get[..], &[0x40, 4], b"X-Up", &[1], b"1"].concat();
    c.send(H2_HEADERS, end_both, 3, &indexed_upper);
    // Stream 5 names entry 62; stream 7 is a plain GET.
    c.send(H2_HEADERS, end_both, 5, &[&get[..], &[0x80 | 62]].concat());
    c.send(H2_HEADERS, end_both, 7, &get);
    c.send(H2_SETTINGS, 0, 0, &setting(4, 1 << 20));
    c.send(WINDOW_UPDATE, 0, 0, &(1u32 << 24).to_be_bytes());
    let mut body: std::collections::HashMap<u32, usize> = Default::default();
    let mut resets = Vec::new();
    let mut ended = std::collections::HashSet::new();
    let frames = c.frames(Duration::from_secs(2));
    for (kind, flags, id, payload) in &frames {
        match *kind {
            H2_DATA => *body.entry(*id).or_default() += payload.len(),
            H2_RST_STREAM => resets.push((*id, payload.clone())),
            H2_GOAWAY => panic!("the connection was closed: {frames:?}"),
            _ => {}
        }
        if matches!(*kind, H2_DATA | H2_HEADERS) && flags & H2_END_STREAM != 0 {
            ended.insert(*id);
        }
    }
    assert_eq!(
        resets,
        vec![(3, vec![0, 0, 0, 1]), (5, vec![0, 0, 0, 1])],
        "{frames:?}"
    );
    for id in [1, 7] {
        assert!(ended.contains(&id), "stream {id} ended: {frames:?}");
        assert_eq!(body.get(&id), Some(&full.len()), "stream {id}'s body");
    }
    // A `:path` that is no absolute path (RFC 9113 §8.3.1) is 400, as its HTTP/1.1 target is
    // (it was looked up as `/`). 0x8c: `:status 400`, static table entry 12 (RFC 7541).
    let mut c = RawH2::connect(srv.addr);
    let no_slash = hpack_literals(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", "?x"),
    ]);
    c.send(H2_HEADERS, end_both, 1, &no_slash);
    let answer = c.stream_frames(1);
    assert!(
        matches!(answer.first(), Some((H2_HEADERS, _, p)) if p.first() == Some(&0x8c)),
        "{answer:?}"
    );
}

/// Two field lines of a singleton field are one list (RFC 9110 §5.3): two `If-Modified-Since`
/// or `If-Unmodified-Since` dates are ignored (§13.1.3, §13.1.4), two `Range` lines are no
/// valid range set (whole object), two `If-Range` validators match nothing (whole object).
#[tokio::test]
async fn repeated_singleton_fields_are_ignored() {
    let (_d, srv) = one_volume("");
    let full = demo_file(SEG);
    let lm = get(&srv.url(SEG), &[])
        .await
        .header("last-modified")
        .expect("last-modified")
        .to_string();
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    for (fields, want) in [
        (vec![("If-Modified-Since", lm.as_str())], 304),
        (
            vec![("If-Modified-Since", &lm), ("If-Modified-Since", old)],
            200,
        ),
        (vec![("If-Unmodified-Since", old)], 412),
        (
            vec![("If-Unmodified-Since", old), ("If-Unmodified-Since", &lm)],
            200,
        ),
        (vec![("Range", "bytes=0-9")], 206),
        (vec![("Range", "bytes=0-9"), ("Range", "bytes=20-29")], 200),
        (vec![("Range", "bytes=0-9"), ("If-Range", &lm)], 206),
        (
            vec![("Range", "bytes=0-9"), ("If-Range", &lm), ("If-Range", &lm)],
            200,
        ),
    ] {
        let mut req = format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        for (k, v) in &fields {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let out = raw(srv.addr, req.as_bytes(), Duration::from_secs(5));
        assert_eq!(raw_status(&out), want, "{fields:?}");
        if want == 200 {
            assert!(out.ends_with(&full), "{fields:?}: the whole object");
        }
    }
}

#[tokio::test]
async fn errors_do_not_leak_paths() {
    let (dir, srv) = one_volume("");
    let root = dir.path().to_string_lossy().to_string();
    for target in [
        "/vod/t1/missing.ts",
        "/vod/../../etc/passwd",
        "/vod/t1/hls/",
        "/vod/%00.ts",
        "/vod/t1/x.exe",
    ] {
        let resp = raw_get(srv.addr, target);
        let text = String::from_utf8_lossy(&resp);
        assert!(
            !text.contains(&root),
            "{target} leaked the volume path: {text}"
        );
        assert!(!text.contains("/tmp"), "{target}: {text}");
        let status = raw_status(&resp);
        assert!(status == 400 || status == 404, "{target}: {status}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{text}"
        );
    }
    let _ = Path::new("/");
}

// === Methods and HTTP versions, on every protocol ===

/// One server with every protocol: plaintext (the HTTP/1.1 fast path and h2c), TLS (HTTP/1.1
/// and HTTP/2 by ALPN, both hyper) and HTTP/3.
struct Every {
    pki: crate::tls::Pki,
    _vols: tempfile::TempDir,
    srv: Server,
}

fn every_protocol() -> Every {
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-methods");
    let vols = demo_volumes();
    let srv = Server::start(&config_for(
        &[&vols.path().join("disk1")],
        &(crate::tls::tls_config(vols.path(), &cert, &key) + "http3 = true\n"),
    ));
    Every {
        pki,
        _vols: vols,
        srv,
    }
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Plain,
    H2c,
    TlsH1,
    TlsH2,
    H3,
}

const EVERY: [Via; 5] = [Via::Plain, Via::H2c, Via::TlsH1, Via::TlsH2, Via::H3];

impl Every {
    /// One request with each protocol's usual client (hyper, h3).
    async fn ask(&self, via: Via, method: &str, path: &str) -> Resp {
        let tls = |alpn: &'static [u8]| self.pki.client(&[&rustls::version::TLS13], &[alpn]);
        match via {
            Via::Plain => request(method, &self.srv.url(path), &[], false).await,
            Via::H2c => request(method, &self.srv.url(path), &[], true).await,
            Via::TlsH1 => {
                let io = crate::tls::connect(&self.srv, &tls(b"http/1.1")).await;
                crate::tls::send(io, method, path, &[]).await
            }
            Via::TlsH2 => {
                let io = crate::tls::connect(&self.srv, &tls(b"h2")).await;
                crate::tls::send(io, method, path, &[]).await
            }
            Via::H3 => {
                let addr = self.srv.tls_addr.expect("tls");
                let mut c = crate::h3::h3_connect(addr, &self.pki).await;
                c.request(method, path, &[]).await
            }
        }
    }

    /// Raw bytes over TLS with ALPN `http/1.1`, read until the server closes (or 5 s).
    async fn tls_raw(&self, bytes: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let c = self.pki.client(&[&rustls::version::TLS13], &[b"http/1.1"]);
        let mut io = crate::tls::connect(&self.srv, &c).await;
        io.write_all(bytes).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out)).await;
        out
    }
}

/// An HTTP/2 request with the h2 crate (which sends a CONNECT as RFC 9113 §8.5 says: `:method`
/// and `:authority` only) on `io`: status, headers and body; `Err` for a stream error.
async fn h2_ask<T>(io: T, req: http::Request<()>) -> Result<Resp, h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, conn) = h2::client::handshake(io).await?;
    tokio::spawn(conn);
    let (resp, _) = client.send_request(req, true)?;
    let (parts, mut body) = resp.await?.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(Resp {
        status: parts.status.as_u16(),
        version: http::Version::HTTP_2,
        headers: parts.headers,
        body: bytes.into(),
    })
}

/// RFC 9110 §9.1: segd implements GET, HEAD, OPTIONS, PUT, POST and DELETE. A method it
/// implements that the resource does not allow (a write outside `[ingest] prefixes`) is 405
/// with `Allow`; any other method (WebDAV's, PATCH, TRACE, made-up ones) is 501 Not
/// Implemented (§15.6.2), with a short body and `no-store` (501 is heuristically cacheable).
/// The same on every protocol.
#[tokio::test]
async fn unknown_methods_are_501_on_every_protocol() {
    let e = every_protocol();
    for via in EVERY {
        for m in ["BREW", "PROPFIND", "PATCH", "TRACE", "FOO"] {
            let r = e.ask(via, m, SEG).await;
            assert_eq!(r.status, 501, "{via:?} {m}: {r:?}");
            assert_eq!(r.text(), "method not implemented\n", "{via:?} {m}");
            assert_eq!(r.header("cache-control"), Some("no-store"), "{via:?} {m}");
            assert_eq!(r.header("allow"), None, "{via:?} {m}");
        }
        for m in ["PUT", "POST", "DELETE"] {
            let r = e.ask(via, m, SEG).await;
            assert_eq!(r.status, 405, "{via:?} {m}: {r:?}");
            assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "{via:?} {m}");
            assert_eq!(r.text(), "method not allowed\n", "{via:?} {m}");
        }
        assert_eq!(e.ask(via, "GET", SEG).await.status, 200, "{via:?}");
    }
    // Plaintext HTTP/1.1: a 501 keeps the connection (its framing is sound).
    let req = format!(
        "BREW {SEG} HTTP/1.1\r\nHost: t\r\n\r\nGET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let text = String::from_utf8_lossy(&raw(e.srv.addr, req.as_bytes(), Duration::from_secs(5)))
        .to_string();
    assert!(text.starts_with("HTTP/1.1 501 "), "{text}");
    assert!(
        text.contains("\r\n\r\nmethod not implemented\nHTTP/1.1 200 "),
        "{text}"
    );
}

/// CONNECT (RFC 9110 §9.3.6) asks a proxy for a tunnel; segd is an origin and implements no
/// tunnel, so CONNECT is 501 like any method it does not implement — on plaintext HTTP/1.1
/// (authority-form target, RFC 9112 §3.2.3), over TLS, and as a well-formed HTTP/2 CONNECT
/// (`:method` and `:authority` only, RFC 9113 §8.5) or HTTP/3 one (RFC 9114 §4.4): an answer,
/// not a stream error. An HTTP/3 CONNECT with `:scheme` and `:path` is malformed.
#[tokio::test]
async fn connect_is_501_on_every_protocol() {
    let e = every_protocol();
    let authority = "localhost:443";
    // HTTP/1.1, plaintext and TLS: answered, and the connection goes on.
    let req = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\nGET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let plain = raw(e.srv.addr, req.as_bytes(), Duration::from_secs(5));
    let tls = e.tls_raw(req.as_bytes()).await;
    for (what, resp) in [("plaintext", plain), ("TLS", tls)] {
        let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 501 "), "{what}: {text}");
        assert!(text.contains("cache-control: no-store"), "{what}: {text}");
        assert!(
            text.contains("\r\n\r\nmethod not implemented\nhttp/1.1 200 "),
            "{what}: the next request is answered: {text}"
        );
    }
    // Origin-form CONNECT (not what a client sends, but unambiguous): the same answer. An
    // authority-form target with a method segd implements is 400, and a method it does not
    // implement is 501 whatever its target; the same on plaintext and over TLS (hyper's parser).
    for (target, method, status) in [
        (SEG, "CONNECT", 501),
        (authority, "GET", 400),
        (authority, "OPTIONS", 400),
        (authority, "PUT", 400),
        (authority, "BREW", 501),
        ("*", "BREW", 501),
        ("*", "GET", 400),
    ] {
        let req = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let plain = raw(e.srv.addr, req.as_bytes(), Duration::from_secs(5));
        let tls = e.tls_raw(req.as_bytes()).await;
        for (what, resp) in [("plaintext", plain), ("TLS", tls)] {
            let text = String::from_utf8_lossy(&resp);
            assert_eq!(
                raw_status(&resp),
                status,
                "{what} {method} {target}: {text}"
            );
        }
    }
    // HTTP/2, h2c and TLS.
    let connect = || {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority)
            .body(())
            .expect("request")
    };
    let tcp = tokio::net::TcpStream::connect(e.srv.addr)
        .await
        .expect("connect");
    let h2c = h2_ask(tcp, connect()).await;
    let c = e.pki.client(&[&rustls::version::TLS13], &[b"h2"]);
    let h2 = h2_ask(crate::tls::connect(&e.srv, &c).await, connect()).await;
    for (what, r) in [("h2c", h2c), ("h2", h2)] {
        let r = r.unwrap_or_else(|err| panic!("{what}: no answer: {err:?}"));
        assert_eq!(r.status, 501, "{what}: {r:?}");
        assert_eq!(r.text(), "method not implemented\n", "{what}");
    }
    // HTTP/3: a HEADERS frame with `:method` and `:authority` only (h3's client would add
    // `:scheme` and `:path`). The answer's body is segd's 501 text, in a DATA frame as it is.
    let addr = e.srv.tls_addr.expect("tls");
    let c = crate::h3::h3_connect(addr, &e.pki).await;
    let ask = async |fields: &[(&str, &str)]| crate::h3::raw_request(&c.conn, fields).await;
    let answer = ask(&[(":method", "CONNECT"), (":authority", authority)])
        .await
        .expect("an answer, not a stream error");
    assert!(
        answer
            .windows(b"method not implemented\n".len())
            .any(|w| w == b"method not implemented\n"),
        "{answer:?}"
    );
    // A CONNECT with `:scheme` and `:path` (as h3's own client sends it) is malformed (RFC 9114
    // §4.4), a stream error H3_MESSAGE_ERROR as over HTTP/2 (RFC 9113 §8.5), not a 501.
    let answer = ask(&[
        (":method", "CONNECT"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", "/"),
    ])
    .await;
    match answer {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code, quinn::VarInt::from_u32(0x10e), "H3_MESSAGE_ERROR")
        }
        other => panic!("not refused as malformed: {other:?}"),
    }
}

/// HTTP/1 versions in a request line (RFC 9112 §2.3, RFC 9110 §2.5 and §15.6.6): a higher minor
/// version of HTTP/1 is served as HTTP/1.1 (and answered as HTTP/1.1); another major version
/// is 505 and close; a version that is not `HTTP/DIGIT.DIGIT` is 400 and close. Over TLS the
/// same (segd's parser reads each head before hyper: `h1::HeadGate`), except after a chunked
/// body, where hyper parses the connection's heads and refuses any version but 1.0 and 1.1
/// with its own 400 (empty body): the README's exception, checked here so a hyper upgrade that
/// changes it is noticed.
#[tokio::test]
async fn http1_versions_in_the_request_line() {
    let e = every_protocol();
    let seg = demo_file(SEG);
    let read = |req: String| {
        String::from_utf8_lossy(&raw(e.srv.addr, req.as_bytes(), Duration::from_secs(5)))
            .to_string()
    };
    // HTTP/1.2 and HTTP/1.9 are HTTP/1.1: served, kept alive, pipelined.
    let text = read(format!(
        "GET {SEG} HTTP/1.2\r\nHost: t\r\n\r\nHEAD {SEG} HTTP/1.9\r\nHost: t\r\nConnection: close\r\n\r\n"
    ));
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    assert!(
        text.contains(&format!("{}HTTP/1.1 200 ", String::from_utf8_lossy(&seg))),
        "{text}"
    );
    // Without `Host`, HTTP/1.2 is refused as HTTP/1.1 is (RFC 9112 §3.2).
    let text = read(format!("GET {SEG} HTTP/1.2\r\nConnection: close\r\n\r\n"));
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    // A chunked body hands the connection to hyper, which reads the head as HTTP/1.1 too.
    let text = read(format!(
        "GET {SEG} HTTP/1.2\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ));
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    // Another major version: 505, and nothing after it on the connection is read.
    for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.1"] {
        let text = read(format!(
            "GET {SEG} {v}\r\nHost: t\r\n\r\nGET {SEG} HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
        let lower = text.to_ascii_lowercase();
        assert!(text.starts_with("HTTP/1.1 505 "), "{v}: {text}");
        assert!(
            text.ends_with("\r\n\r\nhttp version not supported\n"),
            "{v}: {text}"
        );
        assert!(lower.contains("connection: close"), "{v}: {text}");
        assert!(lower.contains("cache-control: no-store"), "{v}: {text}");
    }
    // Not a version at all: 400.
    for v in [
        "HTTP/1.",
        "HTTP/x.y",
        "HTTPS/1.1",
        "http/1.1",
        "HTTP/1.1x",
        "HTTP/11.1",
        "HTTP/1.12",
        "HTTP/2",
    ] {
        let text = read(format!("GET {SEG} {v}\r\nHost: t\r\n\r\n"));
        assert!(text.starts_with("HTTP/1.1 400 "), "{v}: {text}");
        assert!(text.ends_with("\r\n\r\nbad request\n"), "{v}: {text}");
    }
    // Over TLS, the same answers.
    let e = &e;
    let tls = |req: String| async move {
        String::from_utf8_lossy(&e.tls_raw(req.as_bytes()).await).into_owned()
    };
    let text = tls(format!(
        "GET {SEG} HTTP/1.2\r\nHost: t\r\n\r\nHEAD {SEG} HTTP/1.9\r\nHost: t\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "TLS: {text:.300}");
    for (v, ends) in [
        ("HTTP/2.0", "\r\n\r\nhttp version not supported\n"),
        ("HTTP/1.", "\r\n\r\nbad request\n"),
    ] {
        let text = tls(format!("GET {SEG} {v}\r\nHost: t\r\n\r\n")).await;
        assert!(text.ends_with(ends), "TLS {v}: {text}");
        assert!(text.contains("connection: close"), "TLS {v}: {text}");
    }
    // After a chunked body the heads are still read here first (hyper answered its own 400,
    // with no body, for HTTP/2.0 there): 505, as for a first head.
    let text = tls(format!(
        "GET {SEG} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET {SEG} HTTP/2.0\r\nHost: t\r\n\r\n"
    ))
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200 "),
        "TLS after chunked: {text}"
    );
    let last = text.rfind("HTTP/1.1 ").map_or("", |i| &text[i..]);
    assert!(
        last.starts_with("HTTP/1.1 505 "),
        "TLS after chunked: {text}"
    );
    assert!(
        last.ends_with("\r\n\r\nhttp version not supported\n"),
        "TLS after chunked: {text}"
    );
}

/// A volume on tmpfs (a RAM disk for a live window, `/dev/shm`) or overlayfs (a container's
/// writable layer): those refuse `preadv2(RWF_NOWAIT)`, which reads small bodies (playlists)
/// from the page cache, with EOPNOTSUPP. Every plaintext HTTP/1.1 GET of a playlist was 503
/// "object changed while read", logged as a 200 (acceptance P1); they are read the usual way
/// then, and served.
#[tokio::test]
async fn playlists_on_tmpfs_are_served() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for this test");
    let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let vol = dir.path().join("disk1");
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg_00001.ts\n#EXT-X-ENDLIST\n";
    std::fs::create_dir_all(vol.join("vod/shm")).expect("mkdir");
    std::fs::write(vol.join("vod/shm/index.m3u8"), playlist).expect("playlist");
    std::fs::write(vol.join("vod/shm/seg_00001.ts"), vec![0x47u8; 188 * 100]).expect("segment");
    let log = dir.path().join("access.log");
    let srv = Server::start(&config_for(
        &[vol.as_path()],
        &format!("[log]\naccess = \"{}\"\n", log.display()),
    ));
    for _ in 0..3 {
        let out = raw(
            srv.addr,
            b"GET /vod/shm/index.m3u8 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert_eq!(raw_status(&out), 200, "{}", String::from_utf8_lossy(&out));
        assert!(out.ends_with(playlist.as_bytes()));
    }
    let r = get(&srv.url("/vod/shm/seg_00001.ts"), &[]).await;
    assert_eq!((r.status, r.body.len()), (200, 188 * 100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = std::fs::read_to_string(&log).expect("access log");
    assert_eq!(lines.matches("\"status\":200").count(), 4, "{lines}");
}
