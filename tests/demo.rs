//! The shipped demo: `config/segd.toml` passes check-config, and every URI in every demo playlist
//! and manifest resolves to a 200 with the right content type.

use crate::util::*;

fn uris(playlist: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in playlist.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            out.push(line.to_string());
        } else if let Some(i) = line.find("URI=\"") {
            let rest = &line[i + 5..];
            if let Some(end) = rest.find('"') {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}

fn resolve(base: &str, rel: &str) -> String {
    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    format!("{dir}{rel}")
}

#[tokio::test]
async fn every_demo_uri_is_served() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(
        &[&dir.path().join("disk1"), &dir.path().join("disk2")],
        "",
    ));
    let mut served = 0;
    for t in ["t1", "t2"] {
        for master in [
            format!("/vod/{t}/hls/master.m3u8"),
            format!("/vod/{t}/fmp4/master.m3u8"),
        ] {
            let m = get(&srv.url(&master), &[]).await;
            assert_eq!(m.status, 200, "{master}");
            let variants = uris(&m.text());
            assert_eq!(variants.len(), 2, "two renditions in {master}");
            for v in variants {
                let vpath = resolve(&master, &v);
                let media = get(&srv.url(&vpath), &[]).await;
                assert_eq!(media.status, 200, "{vpath}");
                assert_eq!(
                    media.header("content-type"),
                    Some("application/vnd.apple.mpegurl")
                );
                for s in uris(&media.text()) {
                    let spath = resolve(&vpath, &s);
                    let seg = get(&srv.url(&spath), &[]).await;
                    assert_eq!(seg.status, 200, "{spath}");
                    assert!(!seg.body.is_empty());
                    served += 1;
                }
            }
        }
        let mpd_path = format!("/vod/{t}/dash/manifest.mpd");
        let mpd = get(&srv.url(&mpd_path), &[]).await;
        assert_eq!(mpd.header("content-type"), Some("application/dash+xml"));
        let text = mpd.text();
        assert!(text.contains("init-$RepresentationID$.m4s"));
        for rep in ["0", "1"] {
            let init = resolve(&mpd_path, &format!("init-{rep}.m4s"));
            assert_eq!(get(&srv.url(&init), &[]).await.status, 200, "{init}");
            for n in 1..=5 {
                let seg = resolve(&mpd_path, &format!("chunk-{rep}-{n:05}.m4s"));
                let r = get(&srv.url(&seg), &[]).await;
                assert_eq!(r.status, 200, "{seg}");
                assert_eq!(r.header("content-type"), Some("video/iso.segment"));
                served += 1;
            }
        }
    }
    assert!(served > 50, "walked {served} segments");
}

#[test]
fn shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["config/segd.toml", "config/segd.production.toml"] {
        let out = std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(root.join(f))
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        // The production file names /srv paths that do not exist here: only path checks may fail.
        if f.ends_with("production.toml") {
            for line in err.lines().filter(|l| l.contains(": ")) {
                assert!(
                    line.contains("volumes[")
                        || line.contains("problem(s)")
                        || line.contains("log.access")
                        || line.contains(": tls.cert: ")
                        || line.contains(": tls.key: "),
                    "{f}: {line}"
                );
            }
        } else {
            assert!(out.status.success(), "{f}: {err}");
        }
    }
}

/// `segd serve` on the shipped demo config protects /vod/ and prints signed URLs that play.
#[tokio::test]
async fn demo_prints_signed_urls_that_play() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/segd.toml")).expect("demo config");
    assert!(text.contains("protect = [\"/vod/\"]"));
    let (srv, urls) = demo_server("");
    for u in &urls {
        assert!(
            u.contains("/__token__="),
            "protected paths are printed signed: {u}"
        );
        let r = get(u, &[]).await;
        assert_eq!(r.status, 200, "{u}");
    }
    assert_eq!(
        get(&srv.url("/vod/t1/hls/master.m3u8"), &[]).await.status,
        403,
        "unsigned is refused"
    );
}
