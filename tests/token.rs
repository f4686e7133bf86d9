//! Tokens against the running server:
//! - accepted in each location: query, cookie, path-embedded (any character encoded), header
//! - a CORS preflight allows the token's header location (the configured name)
//! - `segd sign` mints the reference generator's tokens byte for byte (recorded vectors), with
//!   `escape_early = true` its early-escaped ones too; its cookie command works as printed, also
//!   for a token holding `;`, `'`, `"`
//! - `escape_early = true`: the generator's early-escaped tokens (and the legacy form with an
//!   escaped ACL) in all four places, raw, fully encoded and encoded only in part
//! - every rejection reason answers a generic 403 and is counted under its metric label
//! - key rotation (not_before / not_after), origin auth (right and wrong secret), public paths
//! - the trusted client address: `True-Client-IP`, and `X-Forwarded-For` read from the right
//!   (`client_ip_proxies` entries skipped), never an entry the viewer wrote
//! - a player loading a path-form playlist URL resolves relative URIs that carry the token
//! - forward and mint rewriting of the demo HLS-TS, HLS-fMP4 and DASH manifests: every URI in
//!   the rewritten playlists is served 200 with no further token in hand; a URI's own (stale)
//!   token is replaced, not followed by a second one; a non-UTF-8 playlist is served as it is

use segd::auth::edgeauth::{sign, SignSpec};
use segd::auth::encode_token;
use segd::config::TokenAlgorithm;

use crate::util::*;

const K1: &str = "52a152a152a152a152a152a152a1";
const K2: &str = "00112233445566778899aabbccddeeff";
const K_OLD: &str = "ffeeddccbbaa99887766554433221100";
const ORIGIN_SECRET: &str = "cdn-shared-secret-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `segd sign --config CONFIG ARGS…`, run to its end.
fn segd_sign(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["sign", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("sign")
}

/// `segd sign` with `base` and then each case's arguments prints the case's token.
fn sign_cases(config: &std::path::Path, base: &[&str], cases: &[(&[&str], &str)]) {
    for (args, expect) in cases {
        let out = segd_sign(config, &[base, args].concat());
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("token:"))
            .map(str::trim);
        assert_eq!(
            token,
            Some(*expect),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn tok(key: &str, spec: SignSpec<'_>) -> String {
    sign(
        TokenAlgorithm::Sha256,
        &hex::decode(key).expect("hex"),
        &spec,
    )
}

fn acl(pattern: &str) -> String {
    tok(
        K1,
        SignSpec {
            acl: Some(pattern),
            start: Some(now() - 5),
            exp: now() + 300,
            ..Default::default()
        },
    )
}

fn token_config(mode: &str) -> String {
    let n = now();
    format!(
        r#"[token]
protect = ["/vod/"]
playlist_tokens = "{mode}"
origin_auth_header = "X-Origin-Auth"
origin_auth_secret = "{ORIGIN_SECRET}"
[[token.keys]]
id = "k1"
secret = "{K1}"
[[token.keys]]
id = "k2"
secret = "{K2}"
not_before = {nb}
[[token.keys]]
id = "old"
secret = "{K_OLD}"
not_after = {na}
"#,
        nb = n - 60,
        na = n - 60,
    )
}

fn start(mode: &str) -> (tempfile::TempDir, Server) {
    let dir = demo_volumes();
    std::fs::create_dir_all(dir.path().join("disk1/pub")).expect("mkdir");
    std::fs::write(dir.path().join("disk1/pub/free.ts"), b"free").expect("write");
    let srv = Server::start(&config_for(
        &[&dir.path().join("disk1"), &dir.path().join("disk2")],
        &token_config(mode),
    ));
    (dir, srv)
}

const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";

#[tokio::test]
async fn accepted_in_every_location() {
    let (_d, srv) = start("forward");
    let t = acl("/vod/t1/*");
    let enc = encode_token(&t);
    let r = get(&srv.url(&format!("{SEG}?__token__={enc}")), &[]).await;
    assert_eq!(r.status, 200, "query");
    let r = get(&srv.url(&format!("{SEG}?a=1&__token__={enc}&b=2")), &[]).await;
    assert_eq!(r.status, 200, "query among others");
    let r = get(
        &srv.url(SEG),
        &[("cookie", &format!("other=1; __token__={t}"))],
    )
    .await;
    assert_eq!(r.status, 200, "cookie");
    let r = get(&srv.url(&format!("/__token__={enc}{SEG}")), &[]).await;
    assert_eq!(r.status, 200, "path-embedded");
    // Every character of the token percent-encoded, '=' '~' '*' '!' included.
    let all: String = format!("__token__={t}")
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            if i < 10 {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let r = get(&srv.url(&format!("/{all}{SEG}")), &[]).await;
    assert_eq!(r.status, 200, "fully encoded path-embedded");
    let r = get(&srv.url(SEG), &[("__token__", &t)]).await;
    assert_eq!(r.status, 200, "header");
    // Multi-ACL and the path-embedded token over h2c.
    let multi = tok(
        K1,
        SignSpec {
            acl: Some("/vod/t9/*!/vod/t1/hls/*"),
            exp: now() + 60,
            ..Default::default()
        },
    );
    let r = request(
        "GET",
        &srv.url(&format!("/__token__={}{SEG}", encode_token(&multi))),
        &[],
        true,
    )
    .await;
    assert_eq!(r.status, 200, "h2 + multi-acl");
    // URL token bound to the exact path.
    let u = tok(
        K1,
        SignSpec {
            url: Some(SEG),
            exp: now() + 60,
            ..Default::default()
        },
    );
    assert_eq!(
        get(
            &srv.url(&format!("{SEG}?__token__={}", encode_token(&u))),
            &[]
        )
        .await
        .status,
        200
    );
    // Public paths need nothing; a token segment on a public path is stripped too.
    assert_eq!(get(&srv.url("/pub/free.ts"), &[]).await.status, 200);
    assert_eq!(
        get(&srv.url(&format!("/__token__={enc}/pub/free.ts")), &[])
            .await
            .status,
        200
    );
}

/// A browser player that sends its token in the header location (`__token__: …`, a custom
/// header) is preflighted first: the preflight must allow that header, or the browser never
/// sends the request. The allowed list names the configured token name.
#[tokio::test]
async fn preflight_allows_the_token_header() {
    let (_d, srv) = start("forward");
    let preflight = |headers: &'static str| {
        let url = srv.url(SEG);
        async move {
            request(
                "OPTIONS",
                &url,
                &[
                    ("origin", "https://player.example"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", headers),
                ],
                false,
            )
            .await
        }
    };
    let r = preflight("__token__,range").await;
    assert_eq!(r.status, 204);
    let allowed: Vec<String> = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for h in ["__token__", "range", "if-none-match", "if-unmodified-since"] {
        assert!(allowed.iter().any(|a| a == h), "{h} not in {allowed:?}");
    }
    // The request the browser then sends.
    let r = get(
        &srv.url(SEG),
        &[
            ("origin", "https://player.example"),
            ("__token__", &acl("/vod/t1/*")),
        ],
    )
    .await;
    assert_eq!(r.status, 200);

    // Another token name is the header that is allowed.
    let dir = demo_volumes();
    let srv = Server::start(&config_for(
        &[&dir.path().join("disk1")],
        &format!("[token]\nname = \"hdnts\"\nprotect = [\"/vod/\"]\n[[token.keys]]\nid = \"k1\"\nsecret = \"{K1}\"\n"),
    ));
    let r = request(
        "OPTIONS",
        &srv.url(SEG),
        &[
            ("origin", "https://player.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "hdnts"),
        ],
        false,
    )
    .await;
    assert!(
        r.header("access-control-allow-headers")
            .is_some_and(|v| v.split(", ").any(|h| h == "hdnts")),
        "{:?}",
        r.header("access-control-allow-headers")
    );
    let r = get(&srv.url(SEG), &[("hdnts", &acl("/vod/t1/*"))]).await;
    assert_eq!(r.status, 200);
}

/// A token rejection's log line names the path asked for (without a token segment), also
/// with the access log off, the default (it said `path="-"`: acceptance I-F3).
#[tokio::test]
async fn a_rejection_is_logged_with_its_path() {
    let (_d, srv) = start("forward");
    let r = get(&srv.url("/vod/t1/hls/64k/seg_00001.ts"), &[]).await;
    assert_eq!(r.status, 403);
    let r = get(
        &srv.url("/__token__=exp=1~hmac=00/vod/t1/hls/64k/seg_00002.ts"),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    // Both lines, however the second is written (the log is written after the answer).
    let log = srv.log_with(&["seg_00001.ts", "seg_00002.ts"]);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("token rejected"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("path=\"/vod/t1/hls/64k/seg_00001.ts\"")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("path=\"/vod/t1/hls/64k/seg_00002.ts\"")),
        "the path without its token segment: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("hmac=00")),
        "no token in the log: {lines:?}"
    );
}

/// A path token sent unencoded, as the generators' READMEs build URLs, is split by its ACL's
/// `/`: the first segment is `__token__=exp=…~acl=`, and the rest of the token (`…~hmac=…`)
/// stays in the path. The rejection's log line redacts it as the access log does (it wrote
/// the MAC, the session id and the payload: with the address and time beside them, enough to
/// rebuild the token).
#[tokio::test]
async fn a_rejection_line_never_shows_a_token_split_by_its_acl() {
    let (_d, srv) = start("forward");
    let mac = "6309bd0bb0c91ccdd80e3f25f1cef3dd48d777848032202939b531872d75b857";
    let url = srv.url(&format!(
        "/__token__=exp=1~acl=/vod/t1/*~id=abc~hmac={mac}/vod/t1/hls/64k/seg_00003.ts"
    ));
    assert_eq!(get(&url, &[]).await.status, 403);
    let log = srv.log_with(&["token rejected"]);
    let line = log
        .lines()
        .find(|l| l.contains("token rejected"))
        .unwrap_or_default();
    assert!(line.contains("<redacted>"), "{line}");
    assert!(line.contains("seg_00003.ts"), "{line}");
    assert!(!log.contains(mac) && !log.contains("id=abc"), "{log}");
}

#[tokio::test]
async fn every_reason_is_counted() {
    let (_d, srv) = start("forward");
    let n = now();
    let good = acl("/vod/t1/*");
    let cases: Vec<(&str, String)> = vec![
        ("missing", String::new()),
        ("malformed", "exp=notanumber~acl=/vod/*~hmac=00".into()),
        ("malformed", "complete garbage".into()),
        (
            "expired",
            tok(
                K1,
                SignSpec {
                    acl: Some("/vod/*"),
                    exp: n - 100,
                    ..Default::default()
                },
            ),
        ),
        (
            "not_yet_valid",
            tok(
                K1,
                SignSpec {
                    acl: Some("/vod/*"),
                    start: Some(n + 100),
                    exp: n + 200,
                    ..Default::default()
                },
            ),
        ),
        ("acl_mismatch", acl("/vod/t2/*")),
        ("bad_hmac", good.replace("exp=", "exp=1")),
        (
            "bad_hmac",
            tok(
                K_OLD,
                SignSpec {
                    acl: Some("/vod/*"),
                    exp: n + 100,
                    ..Default::default()
                },
            ),
        ),
        (
            "bad_hmac",
            tok(
                "0badc0de0badc0de0badc0de0badc0de",
                SignSpec {
                    acl: Some("/vod/*"),
                    exp: n + 100,
                    ..Default::default()
                },
            ),
        ),
        (
            "ip_mismatch",
            tok(
                K1,
                SignSpec {
                    acl: Some("/vod/*"),
                    ip: Some("10.9.9.9"),
                    exp: n + 100,
                    ..Default::default()
                },
            ),
        ),
    ];
    for (reason, t) in &cases {
        let url = if t.is_empty() {
            srv.url(SEG)
        } else {
            srv.url(&format!("{SEG}?__token__={}", encode_token(t)))
        };
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 403, "{reason}: {t}");
        assert_eq!(r.text(), "forbidden\n", "generic body for {reason}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        // The same token as a percent-encoded cookie (what cookie libraries write) is
        // refused for the same reason: it counted as `malformed` whatever it was.
        if !t.is_empty() {
            let cookie = format!("__token__={}", encode_token(t));
            let r = get(&srv.url(SEG), &[("cookie", &cookie)]).await;
            assert_eq!(r.status, 403, "{reason} as a cookie: {t}");
        }
    }
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    for (reason, want) in [
        ("missing", 1.0),
        ("malformed", 4.0),
        ("expired", 2.0),
        ("not_yet_valid", 2.0),
        ("acl_mismatch", 2.0),
        ("bad_hmac", 6.0),
        ("ip_mismatch", 2.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("segd_token_rejections_total{{reason=\"{reason}\"}}")
            ),
            Some(want),
            "{reason}\n{m}"
        );
    }
    // ip= matching the client passes; the token never appears in the log.
    let t = tok(
        K1,
        SignSpec {
            acl: Some("/vod/*"),
            ip: Some("127.0.0.1"),
            exp: n + 100,
            ..Default::default()
        },
    );
    assert_eq!(
        get(
            &srv.url(&format!("{SEG}?__token__={}", encode_token(&t))),
            &[]
        )
        .await
        .status,
        200
    );
    let log = srv.log_with(&["reason=bad_hmac", "reason=acl_mismatch"]);
    assert!(
        log.contains("reason=bad_hmac") && log.contains("reason=acl_mismatch"),
        "{log}"
    );
    let mac = good.rsplit("hmac=").next().expect("mac");
    assert!(!log.contains(mac), "the log must not contain a token");
}

/// A token whose `id` holds a space (no early escaping), put in the query by a form encoder:
/// `+` for the space (`URLSearchParams`, `urlencode`). It was refused (`bad_hmac`) while the
/// same token with `%20` passed (acceptance C-F7).
#[tokio::test]
async fn a_form_encoded_query_token_is_read_with_its_spaces() {
    let (_d, srv) = start("off");
    let t = tok(
        K1,
        SignSpec {
            acl: Some("/vod/*"),
            id: Some("a b"),
            data: Some("x+y z"),
            exp: now() + 300,
            ..Default::default()
        },
    );
    let pct = encode_token(&t);
    assert!(pct.contains("%20") && pct.contains("%2B"), "{pct}");
    let form = pct.replace("%20", "+");
    for q in [&pct, &form] {
        let r = get(&srv.url(&format!("{SEG}?__token__={q}")), &[]).await;
        assert_eq!(r.status, 200, "{q}");
    }
    // A forged one is still refused.
    let forged = form.replace("a+b", "a+c");
    let r = get(&srv.url(&format!("{SEG}?__token__={forged}")), &[]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn rotation_and_origin_auth() {
    let (_d, srv) = start("forward");
    let t2 = tok(
        K2,
        SignSpec {
            acl: Some("/vod/*"),
            exp: now() + 100,
            ..Default::default()
        },
    );
    assert_eq!(
        get(
            &srv.url(&format!("{SEG}?__token__={}", encode_token(&t2))),
            &[]
        )
        .await
        .status,
        200,
        "second active key"
    );
    let r = get(&srv.url(SEG), &[("x-origin-auth", ORIGIN_SECRET)]).await;
    assert_eq!(r.status, 200, "origin auth skips the token");
    let r = get(
        &srv.url(SEG),
        &[("x-origin-auth", "cdn-shared-secret-0123456780")],
    )
    .await;
    assert_eq!(r.status, 403, "wrong origin secret");
}

/// The URI lines and URI="…" attributes of an HLS playlist.
fn hls_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !line.starts_with('#') {
            out.push(line.to_string());
        } else if let Some(i) = line.find("URI=\"") {
            let rest = &line[i + 5..];
            out.push(rest[..rest.find('"').expect("quote")].to_string());
        }
    }
    out
}

/// Resolves `rel` (which may carry its own query) against `base` like a player does.
fn resolve(base: &str, rel: &str) -> String {
    let base = base.split('?').next().expect("base");
    format!("{}{rel}", &base[..base.rfind('/').expect("slash") + 1])
}

/// Walks master → media playlists → segments using only the URIs the server wrote.
async fn walk_hls(master_url: &str) -> usize {
    let m = get(master_url, &[]).await;
    assert_eq!(m.status, 200, "{master_url}");
    let mut n = 0;
    for v in hls_uris(&m.text()) {
        let vurl = resolve(master_url, &v);
        let media = get(&vurl, &[]).await;
        assert_eq!(media.status, 200, "{vurl}");
        for s in hls_uris(&media.text()) {
            let surl = resolve(&vurl, &s);
            let seg = get(&surl, &[]).await;
            assert_eq!(seg.status, 200, "{surl}");
            n += 1;
        }
    }
    n
}

/// Expands the DASH SegmentTemplate the server wrote (with its token query) and fetches it all.
async fn walk_dash(mpd_url: &str) -> usize {
    let r = get(mpd_url, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("cache-control")
        .is_some_and(|c| c.starts_with("private")));
    let text = r.text();
    let attr = |name: &str| {
        let i = text.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
        text[i..i + text[i..].find('"').expect("quote")].replace("&amp;", "&")
    };
    let (init, media) = (attr("initialization"), attr("media"));
    assert!(
        init.contains("__token__=") && media.contains("__token__="),
        "{text}"
    );
    let mut n = 0;
    for rep in ["0", "1"] {
        let i = init.replace("$RepresentationID$", rep);
        assert_eq!(get(&resolve(mpd_url, &i), &[]).await.status, 200, "{i}");
        for num in 1..=5 {
            let m = media
                .replace("$RepresentationID$", rep)
                .replace("$Number%05d$", &format!("{num:05}"));
            let u = resolve(mpd_url, &m);
            assert_eq!(get(&u, &[]).await.status, 200, "{u}");
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn path_form_playlist_resolution() {
    let (_d, srv) = start("off");
    let t = acl("/vod/t1/*");
    // No rewriting at all (mode off): the path-embedded token survives relative resolution.
    let n = walk_hls(&srv.url(&format!(
        "/__token__={}/vod/t1/hls/master.m3u8",
        encode_token(&t)
    )))
    .await;
    assert!(n >= 12, "{n}");
    let n = walk_hls(&srv.url(&format!(
        "/__token__={}/vod/t1/fmp4/master.m3u8",
        encode_token(&t)
    )))
    .await;
    assert!(n >= 12, "{n}");
    // Without any token the same segments are refused.
    assert_eq!(
        get(&srv.url("/vod/t1/hls/64k/index.m3u8"), &[])
            .await
            .status,
        403
    );
}

/// A token in a path segment survives the resolution of path-relative URIs, not of
/// root-relative ones (`/vod/…`, which packagers and CDNs write): those get the segment put
/// before them, so a player that opened the master this way reaches every rendition and
/// segment (acceptance, tokens F1: 403 `missing`). Path-relative and absolute URIs are left as
/// they are, and a playlist with nothing to change is served as stored, under its own ETag.
#[tokio::test]
async fn a_path_token_reaches_root_relative_uris() {
    for mode in ["forward", "mint"] {
        let (d, srv) = start(mode);
        let dir = d.path().join("disk1/vod/abs");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("master.m3u8"),
            "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=128000\n/vod/t1/hls/128k/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=64000\n../t1/hls/64k/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=32000\nhttps://other.example/x.m3u8\n",
        )
        .expect("write");
        let t = acl("/vod/*");
        let segment = format!("__token__={}", encode_token(&t));
        let base = srv.url("");
        let master = format!("{base}/{segment}/vod/abs/master.m3u8");
        let r = get(&master, &[]).await;
        assert_eq!(r.status, 200, "{mode}");
        let text = r.text();
        assert!(
            text.contains(&format!("\n/{segment}/vod/t1/hls/128k/index.m3u8\n")),
            "{mode}: {text}"
        );
        assert!(
            text.contains("\n../t1/hls/64k/index.m3u8\n"),
            "{mode}: {text}"
        );
        assert!(
            text.contains("\nhttps://other.example/x.m3u8\n"),
            "{mode}: {text}"
        );
        assert!(
            r.header("cache-control")
                .is_some_and(|c| c.starts_with("private")),
            "{mode}: a viewer's token is in it: {:?}",
            r.header("cache-control")
        );
        // Resolved as a player resolves them, both renditions and their segments play.
        let root = format!("{base}/{segment}/vod/t1/hls/128k/index.m3u8");
        // (`../` removed as RFC 3986 §5.2.4 does.)
        let relative = format!("{base}/{segment}/vod/t1/hls/64k/index.m3u8");
        for media in [root, relative] {
            let m = get(&media, &[]).await;
            assert_eq!(m.status, 200, "{mode}: {media}");
            let first = hls_uris(&m.text()).into_iter().next().expect("a segment");
            let seg = get(&resolve(&media, &first), &[]).await;
            assert_eq!(seg.status, 200, "{mode}: {first}");
        }
        // Nothing root-relative: served as stored.
        let plain = get(&format!("{base}/{segment}/vod/t1/hls/64k/index.m3u8"), &[]).await;
        assert_eq!(plain.status, 200);
        let stored = std::fs::read_to_string(d.path().join("disk1/vod/t1/hls/64k/index.m3u8"))
            .expect("read");
        assert_eq!(plain.text(), stored, "{mode}");
        let etag = plain.header("etag").expect("etag");
        assert!(
            !etag.starts_with("W/"),
            "{mode}: the stored version's: {etag}"
        );
        // The same token in the query next: its own rewrite, not the path form's (shared by
        // mistake, its relative URIs had no token: 403 on the next step).
        let q = format!("?__token__={}", encode_token(&t));
        let r = get(&format!("{base}/vod/abs/master.m3u8{q}"), &[]).await;
        assert!(
            r.text().contains("\n../t1/hls/64k/index.m3u8?__token__="),
            "{mode}: {}",
            r.text()
        );
    }
}

#[tokio::test]
async fn forward_rewriting() {
    let (_d, srv) = start("forward");
    let t = acl("/vod/*");
    let q = format!("?__token__={}", encode_token(&t));
    for master in ["/vod/t1/hls/master.m3u8", "/vod/t2/fmp4/master.m3u8"] {
        let url = srv.url(&format!("{master}{q}"));
        let r = get(&url, &[]).await;
        assert!(
            r.text().contains(&q[1..]),
            "forward appends the same token:\n{}",
            r.text()
        );
        assert_eq!(r.header("cache-control"), Some("private, max-age=10"));
        let etag = r.header("etag").expect("etag").to_string();
        assert!(etag.starts_with("W/"), "{etag}");
        assert!(!etag.contains(&t), "token not in the ETag");
        assert_eq!(get(&url, &[("if-none-match", &etag)]).await.status, 304);
        assert!(walk_hls(&url).await >= 12);
    }
    assert_eq!(
        walk_dash(&srv.url(&format!("/vod/t2/dash/manifest.mpd{q}"))).await,
        10
    );
}

/// A playlist whose URI carries a token of its own (a packager's, stale) gets the forwarded
/// one in its place, and the segment is then served: appended after it, the old one was read
/// first (403, acceptance F9). A playlist that is not UTF-8 is served as it is (no panic).
#[tokio::test]
async fn forward_rewriting_replaces_a_uris_own_token() {
    let (d, srv) = start("forward");
    let dir = d.path().join("disk1/vod/fz");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("seg8.ts"), b"eight").expect("write");
    std::fs::write(
        dir.join("misc.m3u8"),
        "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg8.ts?__token__=old\n#EXTINF:4,\nseg8.ts?a=1&__token__=old&__token__=older\n#EXT-X-ENDLIST\n",
    )
    .expect("write");
    let bad: &[u8] =
        b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg8.ts\n#EXT-X-PART:DURATION=1,URI=\"\xff\xfe.ts\"\n#EXT-X-ENDLIST\n";
    std::fs::write(dir.join("badutf.m3u8"), bad).expect("write");
    let t = acl("/vod/*");
    let q = format!("__token__={}", encode_token(&t));
    let url = srv.url(&format!("/vod/fz/misc.m3u8?{q}"));
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200);
    let uris = hls_uris(&r.text());
    assert_eq!(
        uris,
        vec![format!("seg8.ts?{q}"), format!("seg8.ts?a=1&{q}")],
        "{}",
        r.text()
    );
    for u in &uris {
        let r = get(&resolve(&url, u), &[]).await;
        assert_eq!(r.status, 200, "{u}");
        assert_eq!(r.text(), "eight");
    }
    let r = get(&srv.url(&format!("/vod/fz/badutf.m3u8?{q}")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], bad);
}

#[tokio::test]
async fn mint_rewriting() {
    let (_d, srv) = start("mint");
    for (master, dash) in [
        ("/vod/t1/hls/master.m3u8", false),
        ("/vod/t2/fmp4/master.m3u8", false),
        ("/vod/t1/dash/manifest.mpd", true),
    ] {
        // A URL-bound token for the playlist alone: only minting can carry access further.
        let u = tok(
            K1,
            SignSpec {
                url: Some(master),
                exp: now() + 60,
                ..Default::default()
            },
        );
        let url = srv.url(&format!("{master}?__token__={}", encode_token(&u)));
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200);
        let text = r.text();
        assert!(
            !text.contains(&encode_token(&u)),
            "mint does not forward the URL token"
        );
        let dir = &master[..master.rfind('/').expect("slash")];
        assert!(
            text.contains(&encode_token(&format!("acl={dir}/*"))),
            "minted ACL is the playlist's directory:\n{text}"
        );
        if dash {
            assert_eq!(walk_dash(&url).await, 10);
        } else {
            assert!(walk_hls(&url).await >= 12);
        }
    }
}

/// A token minted for a playlist's URIs grants no more than the one presented, beyond reaching
/// the playlist's directory: it kept neither its expiry (6 h of `mint_ttl` for a 60 s token),
/// nor its client address, session id or payload, so a viewer's short-lived link bound to its
/// address came back as a token anyone could use for hours (acceptance, Akamai's generator).
/// Both modes mint for a URL token; `mint` for an ACL token too.
#[tokio::test]
async fn minted_tokens_keep_the_presented_tokens_limits() {
    let master = "/vod/t1/hls/master.m3u8";
    for mode in ["forward", "mint"] {
        let (_d, srv) = start(mode);
        let exp = now() + 60;
        let url_token = tok(
            K1,
            SignSpec {
                url: Some(master),
                ip: Some("127.0.0.1"),
                id: Some("viewer42"),
                data: Some("geo=de"),
                exp,
                ..Default::default()
            },
        );
        let acl_token = tok(
            K1,
            SignSpec {
                acl: Some("/vod/t1/*"),
                ip: Some("127.0.0.1"),
                id: Some("viewer42"),
                data: Some("geo=de"),
                exp,
                ..Default::default()
            },
        );
        let presented: &[&str] = if mode == "mint" {
            &[&url_token, &acl_token]
        } else {
            &[&url_token]
        };
        for t in presented {
            let url = srv.url(&format!("{master}?__token__={}", encode_token(t)));
            let r = get(&url, &[]).await;
            assert_eq!(r.status, 200, "{mode}");
            let uri = hls_uris(&r.text()).into_iter().next().expect("a URI");
            let minted = uri.split("__token__=").nth(1).expect("a token in the URI");
            let minted = String::from_utf8(
                segd::volumes::path::percent_decode(minted.as_bytes()).expect("escapes"),
            )
            .expect("utf-8");
            assert_ne!(&minted, t, "{mode}: minted, not forwarded");
            let field = |name: &str| {
                minted
                    .split('~')
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned)
            };
            assert_eq!(field("acl").as_deref(), Some("/vod/t1/hls/*"), "{minted}");
            let minted_exp: u64 = field("exp").and_then(|e| e.parse().ok()).expect("exp");
            assert!(minted_exp <= exp, "{mode}: {minted} outlives {exp}");
            assert_eq!(field("ip").as_deref(), Some("127.0.0.1"), "{minted}");
            assert_eq!(field("id").as_deref(), Some("viewer42"), "{minted}");
            assert_eq!(field("data").as_deref(), Some("geo=de"), "{minted}");
            // It works for the viewer it was made for, and only for that address.
            assert!(walk_hls(&url).await >= 12, "{mode}");
            let seg = resolve(&url, &uri);
            let target = &seg[seg.find("/vod/").expect("path")..];
            let from = |ip: &str| {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind(format!("{ip}:0").parse().expect("addr"))
                    .expect("bind");
                sock
            };
            for (ip, want) in [("127.0.0.1", 200), ("127.0.0.9", 403)] {
                let mut c = from(ip).connect(srv.addr).await.expect("connect");
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                c.write_all(
                    format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .expect("write");
                let mut resp = Vec::new();
                let _ = c.read_to_end(&mut resp).await;
                assert_eq!(raw_status(&resp), want, "{mode}: {target} from {ip}");
            }
        }
    }
}

/// A large playlist rewritten for tokens, asked for on many HTTP/2 streams by a client that
/// reads none of them: each request made and held its own rewritten copy (1.5 GB for 128
/// streams of a 3.5 MB playlist, acceptance). One version with one token is made once and
/// shared by every request for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_playlist_is_made_once_for_every_stream_that_wants_it() {
    let (d, srv) = start("forward");
    let dir = d.path().join("disk1/vod/long");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n");
    for i in 0..10_000 {
        text.push_str(&format!("#EXTINF:2.0,\nseg_{i:05}.ts\n"));
    }
    text.push_str("#EXT-X-ENDLIST\n");
    std::fs::write(dir.join("index.m3u8"), &text).expect("write");
    let t = acl("/vod/*");
    let path = format!("/vod/long/index.m3u8?__token__={}", encode_token(&t));
    let whole = get(&srv.url(&path), &[]).await;
    assert_eq!(whole.status, 200);
    let size = whole.body.len() as u64;
    assert!(size > 1 << 20, "{size} bytes rewritten");
    let pid = srv.child.id();
    let before = rss(pid);
    let streams = 64;
    let held = h2c_zero_window_gets(srv.addr, &path, streams).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grown = rss(pid).saturating_sub(before);
    assert!(
        grown < 8 * size,
        "{} MiB more resident for {streams} streams of a {} KiB playlist",
        grown >> 20,
        size >> 10
    );
    held.2.abort();
}

#[tokio::test]
async fn sign_command_prints_working_urls() {
    let (_d, srv) = start("forward");
    let out = segd_sign(
        &srv.config,
        &[
            "--acl",
            "/vod/t1/*",
            "--acl",
            "/vod/t2/*",
            "--ttl",
            "10m",
            "--start",
            "now",
            "--path",
            "/vod/t2/hls/master.m3u8",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let token = field("token:");
    assert!(
        token.starts_with("st=") && token.contains("~acl=/vod/t1/*!/vod/t2/*~hmac="),
        "{token}"
    );
    // The printed URLs use the config's listen address (port 0 here): point them at the server.
    let fix = |u: String| u.replace("http://127.0.0.1:0", &format!("http://{}", srv.addr));
    assert_eq!(get(&fix(field("query:")), &[]).await.status, 200);
    assert_eq!(get(&fix(field("path:")), &[]).await.status, 200);
    assert_eq!(
        get(
            &srv.url("/vod/t2/hls/master.m3u8"),
            &[("cookie", &format!("__token__={token}"))]
        )
        .await
        .status,
        200
    );
    // URL token form, and a bad key id is a clear error.
    let out = segd_sign(
        &srv.config,
        &["--url", "/vod/t1/dash/manifest.mpd", "--key-id", "k2"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let q = text
        .lines()
        .find_map(|l| l.strip_prefix("query:"))
        .expect("query")
        .trim()
        .to_string();
    assert!(!text.contains("acl="));
    assert_eq!(get(&fix(q), &[]).await.status, 200);
    let out = segd_sign(&srv.config, &["--acl", "/x/*", "--key-id", "nope"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no active key with id \"nope\""));
}

/// The cookie command `segd sign` prints works as printed (run by a shell, with curl) when the
/// token holds what a cookie value cannot (`;` ends it, `"`, `,`, space, `\\`) or the shell
/// quoting cannot (`'`), from `--data` or `--id`: the cookie is then percent-encoded, which segd
/// decodes once. (A raw `;` cut the token short: 403, acceptance F1.)
#[tokio::test]
async fn sign_cookie_command_works_as_printed() {
    let (_d, srv) = start("forward");
    let Some(curl) = find_program("curl", &[]) else {
        panic!("curl is needed");
    };
    for extra in [
        &["--data", "x=1;y=2"][..],
        &["--id", "a;b"],
        &["--data", "it's \"q\", a\\b"],
        &["--data", "plain"],
    ] {
        let out = segd_sign(
            &srv.config,
            &[
                &["--acl", "/vod/t1/*", "--path", "/vod/t1/hls/master.m3u8"],
                extra,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("cookie:"))
            .map(|l| {
                l.trim()
                    .replace("http://127.0.0.1:0", &format!("http://{}", srv.addr))
            })
            .unwrap_or_else(|| panic!("no cookie: in\n{text}"));
        let line = line.replacen("curl ", &format!("{} ", curl.display()), 1);
        let run = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{line} -s -o /dev/null -w '%{{http_code}}'"))
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            "200",
            "{extra:?}: {line}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

/// `segd sign` prints URLs that work as printed for a path that needs escaping in a URL (a
/// space): the path part is percent-encoded, for an ACL token's fixed prefix, `--url` and
/// `--path` alike, and the URL token still verifies (it signs the path as given).
#[tokio::test]
async fn sign_prints_escaped_paths() {
    let (d, srv) = start("forward");
    let dir = d.path().join("disk1/vod/t1/my mix");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("a.ts"), b"spaced").expect("write");
    let fix = |u: &str| u.replace("http://127.0.0.1:0", &format!("http://{}", srv.addr));
    for args in [
        vec!["--url", "/vod/t1/my mix/a.ts"],
        vec!["--acl", "/vod/t1/my mix/*", "--path", "/vod/t1/my mix/a.ts"],
    ] {
        let out = segd_sign(&srv.config, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for name in ["query:", "path:"] {
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| fix(v.trim()))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            assert!(url.contains("/my%20mix/a.ts"), "{args:?} {name} {url}");
            // As a client sends it, unchanged (a URL type would refuse a raw space).
            let target = url.split_once(&srv.addr.to_string()).map_or("", |(_, t)| t);
            let resp = raw_get(srv.addr, target);
            assert_eq!(raw_status(&resp), 200, "{args:?} {name} {url}");
            assert!(resp.ends_with(b"spaced"), "{args:?} {name}");
        }
        // The cookie form's curl command names the same escaped URL.
        let cookie = text
            .lines()
            .find(|l| l.starts_with("cookie:"))
            .unwrap_or_default();
        assert!(cookie.ends_with("/vod/t1/my%20mix/a.ts'"), "{cookie}");
    }
}

/// `segd sign` mints the reference generator's tokens byte for byte where the inputs fix
/// them (`--start` in Unix seconds). Recorded with akamai-edgeauth 0.3.2 (PyPI), key
/// 52a152a152a152a152a152a152a1, sha256, no salt, escape_early off:
/// `EdgeAuth(key=K, start_time=1900000000, window_seconds=TTL, ...)` and then
/// `.generate_acl_token(ACL or [ACL, ...])` or `.generate_url_token(URL)`.
#[test]
fn sign_matches_the_reference_generator() {
    let (_d, srv) = start("forward");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--acl", "/vod/t1/*", "--ttl", "300s"],
            "st=1900000000~exp=1900000300~acl=/vod/t1/*~hmac=72e79a933e8a4982ca165b85370f9ba555e29c13d60fd8e9a68c78144d93bc7a",
        ),
        (
            &["--acl", "/vod/t1/*", "--acl", "/vod/t2/*", "--ttl", "1h"],
            "st=1900000000~exp=1900003600~acl=/vod/t1/*!/vod/t2/*~hmac=6d999151c4e605fb3164b6f978b92d945432b7aaa0275efe81cce773977594e8",
        ),
        (
            &["--url", "/vod/t1/a.ts", "--ttl", "60s"],
            "st=1900000000~exp=1900000060~hmac=2533be32dad79fb725e6dc21f98de0b09d8984aa415055326ba2e127cc9670d5",
        ),
        (
            &["--url", "/vod/t1/my mix/a.ts", "--ttl", "60s"],
            "st=1900000000~exp=1900000060~hmac=ec8cc5a79303abdbfd8fd64d7d2323352e8af5ad6be0ee276dfd30e42453275e",
        ),
        (
            &["--acl", "/vod/*", "--ttl", "60s", "--ip", "1.2.3.4", "--id", "sess", "--data", "payload"],
            "ip=1.2.3.4~st=1900000000~exp=1900000060~acl=/vod/*~id=sess~data=payload~hmac=b5f5e1dacca16c487d6806dd9e19bdf127f334e64b97bb59b80120d27dec01ce",
        ),
    ];
    sign_cases(
        &srv.config,
        &["--key-id", "k1", "--start", "1900000000"],
        &cases,
    );
}

/// `~` separates a token's fields: `segd sign` refuses a value that holds one (exit 64, the
/// flag named) instead of printing a token that can never verify.
#[tokio::test]
async fn sign_refuses_a_tilde_in_a_field() {
    let (_d, srv) = start("forward");
    for (flag, value) in [
        ("--data", "a~b"),
        ("--id", "s~1"),
        ("--ip", "127.0.0.1~"),
        ("--acl", "/vod/~user/*"),
    ] {
        let mut args = vec![flag, value];
        if flag != "--acl" {
            args.extend(["--acl", "/vod/t1/*"]);
        }
        let out = segd_sign(&srv.config, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{flag}: {err}");
        assert!(err.contains(flag) && err.contains("'~'"), "{flag}: {err}");
        assert!(out.stdout.is_empty(), "{flag}: no token printed");
    }
    // `ip=` is compared with the viewer's address: a value that is none is refused too
    // (acceptance L5: it printed a token that was always 403).
    let out = segd_sign(&srv.config, &["--ip", "not-an-ip", "--acl", "/vod/t1/*"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("--ip") && err.contains("not an IP address"),
        "{err}"
    );
    // Anything else in those fields makes a token that verifies.
    let out = segd_sign(
        &srv.config,
        &[
            "--acl",
            "/vod/t1/*",
            "--data",
            "user=42&plan=pro",
            "--id",
            "s 1",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no token in {text}"));
    assert_eq!(
        get(&srv.url(SEG), &[("cookie", &format!("__token__={token}"))])
            .await
            .status,
        200
    );
}

/// With `origin_auth_skips_tokens = false`, tokens are still verified behind the CDN, and the
/// `ip=` field is compared with the trusted client-IP header — only on origin-authenticated
/// requests; anyone else's header is ignored.
#[tokio::test]
async fn trusted_client_ip_behind_origin_auth() {
    let dir = demo_volumes();
    let cfg = config_for(&[&dir.path().join("disk1")], &token_config("forward").replace(
        "origin_auth_header = \"X-Origin-Auth\"",
        "origin_auth_header = \"X-Origin-Auth\"\norigin_auth_skips_tokens = false\nclient_ip_header = \"True-Client-IP\"",
    ));
    let srv = Server::start(&cfg);
    let t = tok(
        K1,
        SignSpec {
            acl: Some("/vod/*"),
            ip: Some("203.0.113.7"),
            exp: now() + 100,
            ..Default::default()
        },
    );
    let url = srv.url(&format!("{SEG}?__token__={}", encode_token(&t)));
    let ok = get(
        &url,
        &[
            ("x-origin-auth", ORIGIN_SECRET),
            ("true-client-ip", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "the CDN vouches for the viewer's address");
    let forged = get(&url, &[("true-client-ip", "203.0.113.7")]).await;
    assert_eq!(
        forged.status, 403,
        "the header is not trusted without origin auth"
    );
    let other = get(
        &url,
        &[
            ("x-origin-auth", ORIGIN_SECRET),
            ("true-client-ip", "198.51.100.1"),
        ],
    )
    .await;
    assert_eq!(other.status, 403);
    assert_eq!(
        get(&srv.url(SEG), &[("x-origin-auth", ORIGIN_SECRET)])
            .await
            .status,
        403,
        "tokens still required"
    );
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_token_rejections_total{reason=\"ip_mismatch\"}"),
        Some(2.0),
        "{m}"
    );
}

/// Tokens from Akamai's reference generator (akamai-edgeauth 0.3.2) with `escape_early=True`,
/// key K1, `end_time` 4102444800 (2100-01-01), recorded here:
/// - `id="sess 42"`, `payload="u=42&b64=eyJ1IjoxfQ+/x="`, `generate_acl_token("/vod/t1/*")`
///   (a `+` that is a space in `id`, a `%2b` that is a plus in `data`);
/// - the legacy 2.0 form, the ACL escaped too: `generate_acl_token(_escape_early("/vod/t1/*"))`;
/// - `payload="p/q r"`, `generate_url_token(SEG)`.
const EARLY_ACL: &str = "exp=4102444800~acl=/vod/t1/*~id=sess+42~data=u%3d42%26b64%3deyJ1IjoxfQ%2b%2fx%3d~hmac=7387f9c9f0cc6ebcb7284ebf30e25903a5861fee5f4ccbdfc636ff83c4e2a403";
const EARLY_LEGACY: &str = "exp=4102444800~acl=%2fvod%2ft1%2f%2a~hmac=f0eb75371c5a350f1400caf6d8d0efd2de6aad15f49f6eda3ade17a4b6bca0e6";
const EARLY_URL: &str = "exp=4102444800~data=p%2fq+r~hmac=a663b9d26b65c62ecf845ae19a4edcdd73e498fa13bfb8a37193df9c7f2a2efc";

/// A location form: its name, the request target, and request headers.
type Form<'a> = (&'a str, String, Vec<(&'a str, String)>);

fn start_escape_early(on: bool) -> (tempfile::TempDir, Server) {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(
        &[&dir.path().join("disk1")],
        &format!("[token]\nprotect = [\"/vod/\"]\nescape_early = {on}\n[[token.keys]]\nid = \"k1\"\nsecret = \"{K1}\"\n"),
    ));
    (dir, srv)
}

/// `escape_early = true` (Akamai's "Escape token inputs"): the generator's early-escaped tokens
/// are accepted in all four places, sent as the generator's docs send them (raw), fully
/// percent-encoded, and encoded only in part (`/` as `%2F`, the generator's own `%2f`/`%3d`
/// left as they are, so the one decoding undoes them: the reported failure in the path); a
/// changed byte is still refused. With the setting off, the partly encoded path form is
/// refused, as a CDN with the setting off refuses it.
#[tokio::test]
async fn escape_early_tokens_in_every_location() {
    let (_d, srv) = start_escape_early(true);
    let slash = |t: &str| t.replace('/', "%2F");
    for t in [EARLY_ACL, EARLY_LEGACY, EARLY_URL] {
        let forms: Vec<Form<'_>> = vec![
            ("query raw", format!("{SEG}?__token__={t}"), vec![]),
            (
                "query /-encoded",
                format!("{SEG}?__token__={}", slash(t)),
                vec![],
            ),
            (
                "query encoded",
                format!("{SEG}?__token__={}", encode_token(t)),
                vec![],
            ),
            (
                "path /-encoded",
                format!("/__token__={}{SEG}", slash(t)),
                vec![],
            ),
            (
                "path encoded",
                format!("/__token__={}{SEG}", encode_token(t)),
                vec![],
            ),
            (
                "cookie raw",
                SEG.into(),
                vec![("cookie", format!("__token__={t}"))],
            ),
            (
                "cookie encoded",
                SEG.into(),
                vec![("cookie", format!("__token__={}", encode_token(t)))],
            ),
            ("header", SEG.into(), vec![("__token__", t.to_string())]),
            // Decoded once when it does not verify as sent, as the cookie is (was bad_hmac).
            (
                "header /-encoded",
                SEG.into(),
                vec![("__token__", slash(t))],
            ),
            (
                "header encoded",
                SEG.into(),
                vec![("__token__", encode_token(t))],
            ),
        ];
        for (name, target, headers) in forms {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = get(&srv.url(&target), &headers).await;
            assert_eq!(r.status, 200, "{name}: {t} as {target} {headers:?}");
        }
    }
    // A changed field is not a different spelling of the same token.
    let changed = EARLY_ACL.replace("sess+42", "sess+43");
    let r = get(
        &srv.url(&format!("/__token__={}{SEG}", slash(&changed))),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    // The legacy ACL is `/vod/t1/*`, decoded: nothing outside it.
    let r = get(
        &srv.url(&format!("/vod/t2/hls/master.m3u8?__token__={EARLY_LEGACY}")),
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "t2 is outside the legacy ACL");
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_token_rejections_total{reason=\"bad_hmac\"}"),
        Some(1.0),
        "{m}"
    );

    let (_d2, off) = start_escape_early(false);
    let r = get(
        &off.url(&format!("/__token__={}{SEG}", slash(EARLY_ACL))),
        &[],
    )
    .await;
    assert_eq!(
        r.status, 403,
        "escape_early off: the decoded fields are not re-escaped"
    );
    let r = get(
        &off.url(&format!("/__token__={}{SEG}", encode_token(EARLY_ACL))),
        &[],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "escape_early off: the exact token still verifies"
    );
}

/// A token whose payload is UTF-8 (`data=é`, as both Akamai generators mint it with
/// `escape_early` off) is read from a header or a cookie as sent; it was taken for no token
/// at all (`missing`) there. A header that is no UTF-8 is a `malformed` token, not a missing one.
#[tokio::test]
async fn utf8_tokens_in_headers_and_cookies() {
    let (_d, srv) = start_escape_early(false);
    let t = tok(
        K1,
        SignSpec {
            acl: Some("/vod/t1/*"),
            exp: now() + 300,
            data: Some("é"),
            ..Default::default()
        },
    );
    assert!(t.contains("data=é"), "{t}");
    let r = get(&srv.url(SEG), &[("__token__", &t)]).await;
    assert_eq!(r.status, 200, "header");
    let r = get(&srv.url(SEG), &[("cookie", &format!("__token__={t}"))]).await;
    assert_eq!(r.status, 200, "cookie");
    let r = get(&srv.url(SEG), &[("__token__", "exp=1~hmac=\u{ff}")]).await;
    assert_eq!(r.status, 403);
    let latin1 = "exp=1~data=\u{e9}~hmac=00";
    let head = format!(
        "GET {SEG} HTTP/1.1\r\nHost: t\r\n__token__: {latin1}\r\nConnection: close\r\n\r\n"
    );
    // The header's bytes as Latin-1 (one byte 0xE9), which is no UTF-8.
    let bytes: Vec<u8> = head.chars().map(|c| c as u32 as u8).collect();
    let reply = raw(srv.addr, &bytes, std::time::Duration::from_secs(5));
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    // The same as a cookie.
    let head = format!(
        "GET {SEG} HTTP/1.1\r\nHost: t\r\nCookie: a=b; __token__={latin1}\r\nConnection: close\r\n\r\n"
    );
    let bytes: Vec<u8> = head.chars().map(|c| c as u32 as u8).collect();
    let reply = raw(srv.addr, &bytes, std::time::Duration::from_secs(5));
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_token_rejections_total{reason=\"missing\"}"),
        Some(0.0),
        "{m}"
    );
}

/// With `escape_early = true`, `segd sign` mints what the reference generator mints with
/// `escape_early=True` (K1, `start_time` 1900000000, `end_time` 1900000060): `ip="::1"`,
/// `session_id="sess 42"`, `payload="u=42&b64=eyJ1IjoxfQ+/x="` for `generate_acl_token("/vod/*")`,
/// and `generate_url_token("/vod/t1/my mix/a.ts")`.
#[test]
fn sign_escape_early_matches_the_reference_generator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("segd.toml");
    std::fs::write(
        &config,
        config_for(
            &[dir.path()],
            &format!("[token]\nprotect = [\"/vod/\"]\nescape_early = true\n[[token.keys]]\nid = \"k1\"\nsecret = \"{K1}\"\n"),
        ),
    )
    .expect("write config");
    let cases: [(&[&str], &str); 2] = [
        (
            &["--acl", "/vod/*", "--ip", "::1", "--id", "sess 42", "--data", "u=42&b64=eyJ1IjoxfQ+/x="],
            "ip=%3a%3a1~st=1900000000~exp=1900000060~acl=/vod/*~id=sess+42~data=u%3d42%26b64%3deyJ1IjoxfQ%2b%2fx%3d~hmac=e7d8974da84047107991a3ef17ec2a0bf7d3289a1829a95efc98d58b0f7cf719",
        ),
        (
            &["--url", "/vod/t1/my mix/a.ts"],
            "st=1900000000~exp=1900000060~hmac=203fd88971cf597d3ff4431da64cbf0994e10fff427a42eec2582197a413fe31",
        ),
    ];
    sign_cases(&config, &["--start", "1900000000", "--ttl", "60s"], &cases);
    // An expiry no HTTP date can name (past the year 9999) is a usage error, not a panic.
    for args in [
        &["--acl", "/vod/*", "--ttl", "99999999999999h"][..],
        &["--acl", "/vod/*", "--start", "300000000000"][..],
    ] {
        let out = segd_sign(&config, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("past the year 9999"), "{args:?}: {err}");
    }
}

/// `client_ip_header = "X-Forwarded-For"`: a viewer can send an `X-Forwarded-For` of its own
/// and the CDN appends the address it saw, so the client is read from the right; the entries
/// the viewer wrote (a token's bound address among them) prove nothing. With HAProxy between
/// the CDN and segd (`option forwardfor` appends the CDN's address), `client_ip_proxies = 1`
/// skips that entry. Several field lines are one list.
#[tokio::test]
async fn forwarded_for_is_read_from_the_right() {
    let dir = demo_volumes();
    let cfg = |proxies: u32| {
        config_for(&[&dir.path().join("disk1")], &token_config("forward").replace(
            "origin_auth_header = \"X-Origin-Auth\"",
            &format!("origin_auth_header = \"X-Origin-Auth\"\norigin_auth_skips_tokens = false\nclient_ip_header = \"X-Forwarded-For\"\nclient_ip_proxies = {proxies}"),
        ))
    };
    let t = tok(
        K1,
        SignSpec {
            acl: Some("/vod/*"),
            ip: Some("203.0.113.7"),
            exp: now() + 100,
            ..Default::default()
        },
    );
    async fn send_with(srv: &Server, token: &str, xff: &[&str]) -> u16 {
        let url = srv.url(&format!("{SEG}?__token__={}", encode_token(token)));
        let mut headers = vec![("x-origin-auth", ORIGIN_SECRET)];
        headers.extend(xff.iter().map(|v| ("x-forwarded-for", *v)));
        get(&url, &headers).await.status
    }
    let status = |srv, xff| send_with(srv, &t, xff);
    let direct = Server::start(&cfg(0));
    // The viewer wrote the bound address; the CDN appended its real one.
    assert_eq!(status(&direct, &["203.0.113.7, 198.51.100.9"]).await, 403);
    assert_eq!(status(&direct, &["198.51.100.9, 203.0.113.7"]).await, 200);
    assert_eq!(status(&direct, &["203.0.113.7"]).await, 200);
    assert_eq!(
        status(&direct, &["198.51.100.9", "203.0.113.7"]).await,
        200,
        "two lines"
    );
    assert_eq!(
        status(&direct, &["203.0.113.7", "198.51.100.9"]).await,
        403,
        "two lines"
    );
    assert_eq!(status(&direct, &["203.0.113.7, garbage"]).await, 403);
    let behind_haproxy = Server::start(&cfg(1));
    assert_eq!(
        status(&behind_haproxy, &["203.0.113.7, 10.0.0.1"]).await,
        200,
        "the CDN appended the viewer, HAProxy the CDN"
    );
    assert_eq!(
        status(&behind_haproxy, &["203.0.113.7, 198.51.100.9, 10.0.0.1"]).await,
        403
    );
    assert_eq!(
        status(&behind_haproxy, &["203.0.113.7"]).await,
        403,
        "too short a list: the peer (loopback) is the client"
    );
}

/// Secrets in files of their own (`secret_file`, `origin_auth_secret_file`), for configs
/// everyone may read: tokens signed with the file's key are accepted (playback and upload),
/// origin auth takes the file's secret, and a reload reads the files again (a rotated key
/// takes over; the old one's tokens are refused). Acceptance I-F15: the shipped unit needed the
/// whole config readable by its user, inline secrets and all (`check-config`'s warnings:
/// `config::secrets_inline_or_in_files_and_who_can_read_them`).
#[tokio::test]
async fn secrets_in_files_of_their_own_are_read_at_start_and_on_reload() {
    use std::os::unix::fs::PermissionsExt;
    let dir = demo_volumes();
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str, mode: u32| {
        let p = secrets.path().join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p.display().to_string()
    };
    let (k, up, origin) = (
        file("k1", &format!("{K1}\n"), 0o600),
        file("up1", &format!("{K2}\n"), 0o644),
        file("origin", ORIGIN_SECRET, 0o600),
    );
    let srv = Server::start(&config_for(
        &[&dir.path().join("disk1")],
        &format!(
            "[token]\nprotect = [\"/vod/\"]\norigin_auth_header = \"X-Origin-Auth\"\n\
             origin_auth_secret_file = \"{origin}\"\n\
             [[token.keys]]\nid = \"k1\"\nsecret_file = \"{k}\"\n\
             [ingest]\nprefixes = [\"/vod/up/\"]\n[[ingest.keys]]\nid = \"u1\"\nsecret_file = \"{up}\"\n"
        ),
    ));
    assert_eq!(get(&srv.url(SEG), &[]).await.status, 403);
    assert_eq!(
        get(&srv.url(&q(SEG, &acl("/vod/*"))), &[]).await.status,
        200
    );
    assert_eq!(
        get(&srv.url(SEG), &[("x-origin-auth", ORIGIN_SECRET)])
            .await
            .status,
        200
    );
    let put = async |key: &str| {
        let target = q("/vod/up/a/b.ts", &token_with_key(key, "/vod/up/*"));
        request("PUT", &srv.url(&target), &[], false).await
    };
    assert_eq!(put(K2).await.status, 201);

    // Rotation: new texts in the files, then a reload.
    file("up1", K_OLD, 0o600);
    file("k1", K_OLD, 0o600);
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(std::time::Duration::from_secs(5), async || {
            get(&srv.url(&q(SEG, &acl("/vod/*"))), &[]).await.status == 403
        })
        .await,
        "the old playback key still works after the reload"
    );
    let new = token_with_key(K_OLD, "/vod/*");
    assert_eq!(get(&srv.url(&q(SEG, &new)), &[]).await.status, 200);
    assert_eq!(put(K2).await.status, 403, "the old upload key");
    assert_eq!(put(K_OLD).await.status, 204, "the new upload key");
}

/// An answer a viewer's own token opened is that viewer's: `private`, for no longer than the
/// token has left, in every location and on a 304 too. A shared cache that does not check
/// tokens served protected segments to anyone (a cookie or header token is not in the URL it
/// keys on) for a year, also after the token expired (acceptance K1). A CDN that proves itself
/// with origin auth (README "CDN-side setup": it checks tokens itself) keeps shared copies, and
/// so does a public path.
#[tokio::test]
async fn answers_a_viewers_token_opened_are_private_to_that_viewer() {
    let (_d, srv) = start("forward");
    let t = acl("/vod/t1/*"); // valid for 300 s
    let enc = encode_token(&t);
    let cookie = format!("__token__={t}");
    let private_max_age = |r: &Resp, what: &str| {
        let cc = r.header("cache-control").unwrap_or_default().to_owned();
        let age = cc
            .strip_prefix("private, max-age=")
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{what}: {cc}"));
        assert!((1..=300).contains(&age), "{what}: {cc}");
    };
    for h2 in [false, true] {
        let query = request("GET", &srv.url(&format!("{SEG}?__token__={enc}")), &[], h2).await;
        assert_eq!(query.status, 200);
        private_max_age(&query, "query");
        let r = request("GET", &srv.url(SEG), &[("cookie", &cookie)], h2).await;
        assert_eq!(r.status, 200);
        private_max_age(&r, "cookie");
        let r = request("GET", &srv.url(SEG), &[("__token__", &t)], h2).await;
        private_max_age(&r, "header");
        let r = request("GET", &srv.url(&format!("/__token__={enc}{SEG}")), &[], h2).await;
        private_max_age(&r, "path");
        let etag = query.header("etag").unwrap_or_default().to_owned();
        let r = request(
            "GET",
            &srv.url(SEG),
            &[("cookie", &cookie), ("if-none-match", &etag)],
            h2,
        )
        .await;
        assert_eq!(r.status, 304);
        private_max_age(&r, "304");
        // A CDN with origin auth, and a public path: shared.
        let r = request(
            "GET",
            &srv.url(SEG),
            &[("x-origin-auth", ORIGIN_SECRET)],
            h2,
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("cache-control")
                .is_some_and(|c| c.starts_with("public")),
            "{:?}",
            r.header("cache-control")
        );
        let r = request("GET", &srv.url("/pub/free.ts"), &[], h2).await;
        assert!(
            r.header("cache-control")
                .is_some_and(|c| c.starts_with("public")),
            "{:?}",
            r.header("cache-control")
        );
    }
}
