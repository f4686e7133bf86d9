//! Volumes against the running server:
//! - traversal variants (raw request targets) never return bytes from outside a volume
//! - symlinks out of a volume are 404; symlinks inside are served; dot-files and directories 404
//! - overlong targets 414, malformed request lines 400
//! - several volumes: objects found on each; `segd place` agrees with the placement rule
//! - a volume removed while running: 503 for its objects, others 200, /readyz and metrics show it,
//!   and it serves again when it comes back
//! - a volume whose filesystem is lazily unmounted (no marker): 503, unhealthy, logged once (not
//!   404s from the empty mount point); healthy again when a filesystem is mounted there again,
//!   a new one or the same one (a bind mount, which keeps the device)
//! - a volume inside a mounted filesystem: 503 when its disk is unmounted, served from a new
//!   disk mounted at the same place
//! - a reload that removes or renames a volume takes its read-time series along

use std::time::{Duration, Instant};

use crate::util::*;

#[tokio::test]
async fn traversal_never_escapes() {
    let dir = demo_volumes();
    traversal_fixture(dir.path());
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let targets = traversal_targets();
    assert!(targets.len() >= 60, "{} cases", targets.len());
    for t in &targets {
        let resp = raw_get(srv.addr, t);
        let text = String::from_utf8_lossy(&resp);
        assert!(
            !text.contains(OUTSIDE_SECRET),
            "{t} escaped the volume:\n{text}"
        );
        let st = raw_status(&resp);
        assert!((400..500).contains(&st), "{t}: status {st}");
    }
    let r = get(&srv.url("/vod/t1/inside.ts"), &[]).await;
    assert_eq!(r.status, 200, "a symlink within the volume is served");
    assert_eq!(
        get(&srv.url("/vod/t1"), &[]).await.status,
        404,
        "directories are not listed"
    );
    assert_eq!(get(&srv.url("/vod/t1/"), &[]).await.status, 404);
    assert_eq!(get(&srv.url("/"), &[]).await.status, 404);
}

#[tokio::test]
async fn overlong_and_malformed_requests() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let long = format!("/vod/{}.ts", "a".repeat(5000));
    assert_eq!(raw_status(&raw_get(srv.addr, &long)), 414);
    let long_q = format!("/vod/t1/hls/master.m3u8?{}", "q".repeat(5000));
    assert_eq!(raw_status(&raw_get(srv.addr, &long_q)), 414);
    for bad in [
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET /x.ts HTTP/9.9\r\n\r\n",
        "GET /x.ts HTTP/1.1\r\nHost t\r\n\r\n",
        "GET /a b.ts HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let resp = raw(srv.addr, bad.as_bytes(), Duration::from_secs(5));
        let st = raw_status(&resp);
        assert!(
            st == 400 || st == 505 || resp.is_empty(),
            "{bad:?}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert!(st < 500 || st == 505, "{bad:?} must not be a server error");
    }
    let huge = format!(
        "GET /x.ts HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    assert_eq!(
        raw_status(&raw(srv.addr, huge.as_bytes(), Duration::from_secs(5))),
        431
    );
    // The server still answers after all that.
    assert_eq!(
        get(&srv.url("/vod/t1/hls/master.m3u8"), &[]).await.status,
        200
    );
}

#[tokio::test]
async fn several_volumes_and_placement() {
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    let d2 = dir.path().join("disk2");
    let config = config_for(&[&d1, &d2], "");
    let srv = Server::start(&config);
    assert_eq!(
        get(&srv.url("/vod/t1/hls/master.m3u8"), &[]).await.status,
        200
    );
    assert_eq!(
        get(&srv.url("/vod/t2/hls/master.m3u8"), &[]).await.status,
        200
    );
    assert_eq!(
        get(&srv.url("/vod/t2/dash/init-0.m4s"), &[]).await.status,
        200
    );
    assert_eq!(
        get(&srv.url("/vod/t3/hls/master.m3u8"), &[]).await.status,
        404
    );

    // `segd place` prints the preferred volume; put a new asset there and on the other disk.
    let out = std::process::Command::new(BIN)
        .args(["place", "--config"])
        .arg(&srv.config)
        .args(["/vod/t1/a.ts", "/vod/t2/b.ts", "/vod/zz/c.ts"])
        .output()
        .expect("place");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(cols.len(), 3, "{l}");
        assert!(cols[1] == "disk1" || cols[1] == "disk2");
        assert!(cols[2].ends_with(cols[0].trim_start_matches('/')));
    }
    // A URL as the banner, a player or a CDN log has it (a path-embedded token, encoded or
    // not, a host, a query) is placed as its path: the server strips them so too (it was
    // refused, or placed with the token segment as a directory: acceptance I-F5).
    let place = |p: &str| {
        let out = std::process::Command::new(BIN)
            .args(["place", "--config"])
            .arg(&srv.config)
            .arg(p)
            .output()
            .expect("place");
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let cols: Vec<String> = text.trim_end().split('\t').map(str::to_owned).collect();
        (cols[1].clone(), cols[2].clone())
    };
    let plain = place("/vod/t1/a.ts");
    for p in [
        "/__token__=exp%3D1%7Eacl%3D%2Fvod%2F*%7Ehmac%3D00/vod/t1/a.ts",
        "/__token__=exp=1~hmac=00/vod/t1/a.ts",
        "http://127.0.0.1:8080/vod/t1/a.ts?__token__=exp%3D1",
    ] {
        assert_eq!(place(p), plain, "{p}");
    }
}

#[tokio::test]
async fn volume_removed_while_running() {
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    let d2 = dir.path().join("disk2");
    let srv = Server::start(&config_for(&[&d1, &d2], ""));
    let t1 = srv.url("/vod/t1/hls/64k/seg_00000.ts");
    let t2 = srv.url("/vod/t2/hls/64k/seg_00000.ts");
    assert_eq!(get(&t2, &[]).await.status, 200);

    // A renamed (or lazily unmounted) root is still reachable through the open directory handle,
    // so it is detected by the next health check (volume_check_interval = 200ms here).
    let gone = dir.path().join("disk2.gone");
    std::fs::rename(&d2, &gone).expect("remove volume");
    assert!(
        eventually(Duration::from_secs(5), async || get(&t2, &[]).await.status
            == 503)
        .await
    );
    let r = get(&t2, &[]).await;
    assert_eq!(r.status, 503, "object of a vanished volume: {}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // The next probe is at most 200 ms away: a retry a second later (whole seconds).
    assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
    assert_eq!(
        get(&t1, &[]).await.status,
        200,
        "the other volume keeps serving"
    );
    let r = get(&srv.admin_url("/readyz"), &[]).await;
    assert_eq!(r.status, 200, "still ready with one healthy volume");
    assert!(r.text().contains("volume disk2 unhealthy"), "{}", r.text());
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"disk2\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"disk1\"}"),
        Some(1.0)
    );
    srv.log_with(&["volume marked unhealthy"]);

    // Both gone: not ready.
    let gone1 = dir.path().join("disk1.gone");
    std::fs::rename(&d1, &gone1).expect("remove volume");
    let admin = srv.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(5), async || get(&admin, &[])
            .await
            .status
            == 503)
        .await
    );
    assert_eq!(get(&t1, &[]).await.status, 503);

    // Back again: healthy and serving.
    std::fs::rename(&gone, &d2).expect("restore");
    std::fs::rename(&gone1, &d1).expect("restore");
    assert!(
        eventually(Duration::from_secs(5), async || get(&t2, &[]).await.status
            == 200)
        .await
    );
    assert_eq!(get(&t1, &[]).await.status, 200);
    let r = get(&admin, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ready\n");
    // The process never exited over it.
    assert!(get(&srv.admin_url("/healthz"), &[]).await.status == 200);
}

/// `umount -l` of a volume's filesystem under the running server, no marker configured: the old
/// filesystem stays readable through segd's root handle and the mount point is an empty
/// directory, so only comparing the path with the handle tells. Its objects are 503 (the one in
/// the open-file cache too), the volume unhealthy in metrics and /readyz, logged once; a
/// filesystem mounted there again with the objects serves again.
#[tokio::test]
async fn lazily_unmounted_volume_is_503_until_mounted_again() {
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    let d2 = dir.path().join("disk2");
    let corpus = dir.path().join("disk2.corpus");
    std::fs::rename(&d2, &corpus).expect("move corpus");
    std::fs::create_dir(&d2).expect("mount point");
    let m = Mount::tmpfs(&d2, "16m").expect("mount a tmpfs (root)");
    copy_tree(&corpus, &d2);
    let srv = Server::start(&config_for(&[&d1, &d2], ""));
    let seen = srv.url("/vod/t2/hls/64k/seg_00000.ts");
    let unseen = srv.url("/vod/t2/hls/128k/seg_00003.ts");
    assert_eq!(get(&seen, &[]).await.status, 200);

    m.unmount_lazily();
    assert!(
        eventually(Duration::from_secs(5), async || get(&seen, &[])
            .await
            .status
            == 503)
        .await,
        "an object of the unmounted volume (in the open-file cache)"
    );
    let r = get(&unseen, &[]).await;
    assert_eq!(r.status, 503, "never opened before: {}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        get(&srv.url("/vod/t1/hls/64k/seg_00000.ts"), &[])
            .await
            .status,
        200,
        "the other volume keeps serving"
    );
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"disk2\"}"),
        Some(0.0),
        "{m}"
    );
    let r = get(&srv.admin_url("/readyz"), &[]).await;
    assert!(r.text().contains("volume disk2 unhealthy"), "{}", r.text());
    // Several checks later (200 ms apart), still one line about it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get(&unseen, &[]).await.status, 503);
    let log = srv.log_with(&["volume marked unhealthy", "filesystem unmounted"]);
    assert_eq!(
        log.matches("volume marked unhealthy").count(),
        1,
        "logged once:\n{log}"
    );

    // A filesystem mounted there again, holding the objects: healthy and serving.
    let _m = Mount::tmpfs(&d2, "16m").expect("mount a tmpfs again");
    copy_tree(&corpus, &d2);
    assert!(
        eventually(Duration::from_secs(5), async || get(&unseen, &[])
            .await
            .status
            == 200)
        .await
    );
    assert_eq!(get(&seen, &[]).await.status, 200);
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"disk2\"}"),
        Some(1.0),
        "{m}"
    );
}

/// A volume that is a directory inside a mounted filesystem (`/mnt/disk2/media`): its disk
/// unmounted, it is 503; a new disk mounted at the same mount point with the directory on it
/// serves (the replacement disk of an operator). It stayed 503 until a restart: the path was
/// on another device and was not itself a mount's root, which read as "unmounted" forever.
#[tokio::test]
async fn volume_inside_a_replaced_disk_serves_from_the_new_disk() {
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    let corpus = dir.path().join("disk2");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let media = mnt.join("media");
    let m = Mount::tmpfs(&mnt, "16m").expect("mount a tmpfs (root)");
    copy_tree(&corpus, &media);
    let srv = Server::start(&config_for(&[&d1, &media], ""));
    let url = srv.url("/vod/t2/hls/64k/seg_00000.ts");
    assert_eq!(get(&url, &[]).await.status, 200);

    m.unmount_lazily();
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 503)
        .await,
        "an object of the volume whose disk is gone"
    );
    // The replacement disk: a new filesystem at the same mount point, the corpus restored.
    let _m = Mount::tmpfs(&mnt, "16m").expect("mount a new tmpfs");
    copy_tree(&corpus, &media);
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 200)
        .await,
        "the volume on its new disk"
    );
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"media\"}"),
        Some(1.0),
        "{m}"
    );
}

/// A bind mount as the volume (same device as the directory beneath it, so the device alone
/// does not tell): lazily unmounted, it is 503; mounted back, the path leads to the very root
/// segd holds (same device and inode) and it serves again.
#[tokio::test]
async fn unmounted_bind_mount_recovers_when_mounted_back() {
    if !may_mount() {
        eprintln!("skipped: a bind mount needs root");
        return;
    }
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    let src = dir.path().join("disk2");
    let at = dir.path().join("bound");
    std::fs::create_dir(&at).expect("mount point");
    let m = Mount::bind(&src, &at).expect("bind mount (root)");
    let srv = Server::start(&config_for(&[&d1, &at], ""));
    let url = srv.url("/vod/t2/hls/128k/seg_00002.ts");
    assert_eq!(get(&url, &[]).await.status, 200);
    m.unmount_lazily();
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 503)
        .await
    );
    let _m = Mount::bind(&src, &at).expect("bind mount again");
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 200)
        .await
    );
    srv.log_with(&["filesystem unmounted", "volume healthy again"]);
}

#[tokio::test]
async fn deleted_volume_is_503_at_once() {
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    let d2 = dir.path().join("disk2");
    // A slow health check, so only the lookup path can notice.
    let cfg = config_for(&[&d1, &d2], "").replace(
        "volume_check_interval = \"200ms\"",
        "volume_check_interval = \"1h\"",
    );
    let srv = Server::start(&cfg);
    let t2 = srv.url("/vod/t2/hls/64k/seg_00000.ts");
    assert_eq!(get(&t2, &[]).await.status, 200);
    std::fs::remove_dir_all(&d2).expect("delete volume");
    // The very first miss re-probes the roots: 503, never a 404 a CDN would cache.
    assert_eq!(get(&t2, &[]).await.status, 503);
    assert_eq!(
        get(&srv.url("/vod/t1/hls/64k/seg_00000.ts"), &[])
            .await
            .status,
        200
    );
    // Every refusal is counted; the log says it at most once a second, with how many it left
    // out (a line per request flooded the log at the request rate while a disk was down).
    for _ in 0..200 {
        assert_eq!(get(&t2, &[]).await.status, 503);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&t2, &[]).await.status, 503);
    // The last request's line is written (more than a second after the one before).
    let mut log = String::new();
    let mut said = 0;
    for _ in 0..50 {
        log = srv.stderr();
        let refused: Vec<u64> = log
            .lines()
            .filter(|l| l.contains("request refused") && l.contains("volume unavailable"))
            .map(|l| {
                l.split("left_out=")
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no left_out in {l}"))
            })
            .collect();
        said = refused.len() as u64 + refused.iter().sum::<u64>();
        if said == 202 {
            assert!(refused.len() <= 10, "{} lines:\n{log}", refused.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(said, 202, "refusals logged or left out:\n{log}");
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric_with(
            &m,
            "segd_refusals_total",
            &[("reason", "volume_unavailable")]
        ),
        Some(202.0),
        "{m}"
    );
}

/// A volume root segd's user may no longer read (a `chmod`, an ownership change) turns every
/// lookup into EACCES: the volume is unhealthy, its objects are 503 and the log says why. They
/// were silent 404s with the volume "healthy" (acceptance M1). segd runs as `nobody` here (a
/// root process reads anything): the test needs root to start it so, and is skipped without.
#[tokio::test]
async fn a_volume_segd_may_not_read_is_503_not_404() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test needs it"
        );
        eprintln!("not root: a_volume_segd_may_not_read_is_503_not_404 skipped");
        return;
    }
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let dir = demo_volumes();
    chmod(dir.path(), 0o755);
    let d1 = dir.path().join("disk1");
    let d2 = dir.path().join("disk2");
    let cfg = config_for(&[&d1, &d2], "");
    let srv = Server::start_with(&cfg, |c| {
        // Its config (in a directory of its own, mode 0700) must be readable by nobody.
        let config = c
            .get_args()
            .map(Path::new)
            .find(|a| a.ends_with("segd.toml"))
            .map(Path::to_path_buf)
            .expect("--config");
        chmod(config.parent().expect("its directory"), 0o755);
        chmod(&config, 0o644);
        c.uid(65534).gid(65534)
    });
    let t2 = srv.url("/vod/t2/hls/64k/seg_00001.ts");
    assert_eq!(get(&t2, &[]).await.status, 200, "{}", srv.stderr());
    chmod(&d2, 0o000);
    // (An object served before is held open, and still served.)
    let other = srv.url("/vod/t2/hls/64k/seg_00002.ts");
    // (A probe within the last 250 ms stands for this one, as before any 404.)
    assert!(
        eventually(Duration::from_secs(2), async || get(&other, &[])
            .await
            .status
            == 503)
        .await,
        "an object segd may not read is a 503 within a probe's freshness, not a 404"
    );
    assert_eq!(
        get(&srv.url("/vod/t1/hls/64k/seg_00001.ts"), &[])
            .await
            .status,
        200,
        "the other volume serves"
    );
    srv.log_with(&["volume marked unhealthy"]);
    // Searchable no more (`chmod -R 644`: opening the root still works, its files do not).
    chmod(&d2, 0o644);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&other, &[]).await.status,
        503,
        "no x bit: still unhealthy"
    );
    chmod(&d2, 0o755);
    assert!(
        eventually(Duration::from_secs(5), async || get(&other, &[])
            .await
            .status
            == 200)
        .await,
        "readable again: served again"
    );
}

#[tokio::test]
async fn marker_file_detects_an_unmounted_disk() {
    let dir = demo_volumes();
    let d1 = dir.path().join("disk1");
    std::fs::write(d1.join(".segd-volume"), b"").expect("marker");
    let cfg = config_for(
        &[],
        &format!(
            "[[volumes]]\nname = \"disk1\"\npath = \"{}\"\nmarker = \".segd-volume\"\n",
            d1.display()
        ),
    );
    let srv = Server::start(&cfg);
    let url = srv.url("/vod/t1/hls/master.m3u8");
    assert_eq!(get(&url, &[]).await.status, 200);
    assert_eq!(
        get(&srv.url("/.segd-volume"), &[]).await.status,
        404,
        "the marker is never served"
    );
    // An "unmounted" disk: the mount point is there, the marker is not.
    std::fs::remove_file(d1.join(".segd-volume")).expect("rm marker");
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 503)
        .await
    );
    std::fs::write(d1.join(".segd-volume"), b"").expect("marker");
    assert!(
        eventually(Duration::from_secs(5), async || get(&url, &[]).await.status
            == 200)
        .await
    );
}

/// The demo's two volumes served, and a segment of each (`t1` on disk1, `t2` on disk2), `t2`
/// read once (so disk2's probe reads it from the device from then on).
async fn two_volumes_one_read() -> (tempfile::TempDir, Server, String, String) {
    let dir = demo_volumes();
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    let srv = Server::start(&config_for(&[&d1, &d2], ""));
    let t1 = srv.url("/vod/t1/hls/64k/seg_00002.ts");
    let t2 = srv.url("/vod/t2/hls/64k/seg_00002.ts");
    assert_eq!(get(&t2, &[]).await.status, 200);
    (dir, srv, t1, t2)
}

/// A volume whose reads fail with EIO (the debug-build fault hook: `.segd-fault-eio` at its
/// root): 503 for its objects, the other volume unaffected, metric and log show it, and it
/// serves again once the fault clears.
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn eio_volume_degrades_alone_and_recovers() {
    let (dir, srv, t1, t2) = two_volumes_one_read().await;
    let d2 = dir.path().join("disk2");
    let fault = d2.join(".segd-fault-eio");
    std::fs::write(&fault, b"").expect("inject");
    assert!(
        eventually(Duration::from_secs(5), async || get(&t2, &[]).await.status
            == 503)
        .await
    );
    // A never-opened object of the faulty disk: 503 at once, never a cacheable 404.
    assert_eq!(
        get(&srv.url("/vod/t2/hls/128k/seg_00003.ts"), &[])
            .await
            .status,
        503
    );
    assert_eq!(
        get(&t1, &[]).await.status,
        200,
        "the healthy volume is unaffected"
    );
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_volume_healthy{volume=\"disk2\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(&m, "segd_volume_io_errors_total{volume=\"disk2\"}").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "segd_volume_io_errors_total{volume=\"disk1\"}"),
        Some(0.0)
    );
    let log = srv.log_with(&["volume marked unhealthy", "Input/output error"]);
    assert!(
        log.contains("volume marked unhealthy") && log.contains("Input/output error"),
        "{log}"
    );
    assert_eq!(get(&srv.url("/.segd-fault-eio"), &[]).await.status, 404);
    std::fs::remove_file(&fault).expect("heal");
    assert!(
        eventually(Duration::from_secs(5), async || get(&t2, &[]).await.status
            == 200)
        .await
    );
    assert!(get(&srv.admin_url("/readyz"), &[]).await.text() == "ready\n");
}

/// A volume whose disk stops answering (the debug builds' `.segd-fault-hang`: the probe's read
/// from the device blocks while it exists) is marked down once its probe has not returned for
/// 5 × `volume_check_interval` (3 s at least): its objects answer 503 with `Retry-After` at
/// once instead of waiting on the disk, `/readyz` and the metrics say so, the other volume is
/// unaffected, and it serves again when the disk answers. It stayed "healthy" for the whole
/// hang, its readers waiting as long as the disk did (acceptance F2).
#[tokio::test]
#[cfg_attr(
    not(debug_assertions),
    ignore = "needs the test hooks of a debug build"
)]
async fn a_volume_whose_disk_stops_answering_is_marked_down() {
    let (dir, srv, t1, t2) = two_volumes_one_read().await;
    let d2 = dir.path().join("disk2");
    let hang = d2.join(".segd-fault-hang");
    std::fs::write(&hang, b"").expect("inject");
    let t0 = Instant::now();
    let down = eventually(Duration::from_secs(10), async || {
        metric(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            "segd_volume_healthy{volume=\"disk2\"}",
        ) == Some(0.0)
    })
    .await;
    assert!(down, "disk2 is marked down: {}", srv.stderr());
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "marked down after the stall time, not at once ({:?})",
        t0.elapsed()
    );
    let r = tokio::time::timeout(Duration::from_secs(2), async { get(&t2, &[]).await })
        .await
        .expect("an answer at once, not a wait on the disk");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        get(&t1, &[]).await.status,
        200,
        "the other volume is unaffected"
    );
    assert_ne!(get(&srv.admin_url("/readyz"), &[]).await.text(), "ready\n");
    let log = srv.log_with(&["its disk has not answered a probe"]);
    assert!(log.contains("volume marked unhealthy"), "{log}");
    std::fs::remove_file(&hang).expect("heal");
    assert!(
        eventually(Duration::from_secs(5), async || get(&t2, &[]).await.status
            == 200)
        .await,
        "disk2 serves again once its disk answers"
    );
    assert_eq!(get(&srv.admin_url("/readyz"), &[]).await.text(), "ready\n");
}

/// A reload that removes a volume takes its `segd_volume_read_seconds` series with it (as
/// `segd_volume_healthy`), and a renamed volume's reads are timed under its new name: the
/// read timings were kept for any volume list of the same length.
#[tokio::test]
async fn reloaded_volumes_take_their_read_time_series_along() {
    let dir = demo_volumes();
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    let srv = Server::start(&config_for(&[&d1, &d2], ""));
    let series = |m: &str, name: &str| {
        m.contains(&format!(
            "segd_volume_read_seconds_count{{volume=\"{name}\"}}"
        ))
    };
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert!(series(&m, "disk1") && series(&m, "disk2"), "{m}");
    // Applies `text` and waits (up to 10 s) for the metrics to say `done`.
    let reload = async |text: String, done: &dyn Fn(&str) -> bool| {
        std::fs::write(&srv.config, text).expect("config");
        srv.signal(libc::SIGHUP);
        let mut m = String::new();
        eventually(Duration::from_secs(10), async || {
            m = get(&srv.admin_url("/metrics"), &[]).await.text();
            done(&m)
        })
        .await;
        m
    };
    // Waited for as a whole: on the fallback I/O backend one CI run saw disk2's read-time
    // series in the first scrape after the reload (not reproduced here; cause not found).
    let gone = |m: &str| {
        !m.contains("segd_volume_healthy{volume=\"disk2\"}")
            && !series(m, "disk2")
            && series(m, "disk1")
    };
    let m = reload(config_for(&[&d1], ""), &gone).await;
    assert!(gone(&m), "the reload never applied: {m}");
    assert!(series(&m, "disk1"), "{m}");
    assert!(
        !series(&m, "disk2"),
        "disk2's series after its removal: {m}"
    );
    // The same number of volumes under another name.
    let renamed = dir.path().join("disk3");
    std::fs::rename(&d2, &renamed).expect("rename");
    let applied = |m: &str| {
        m.contains("segd_volume_healthy{volume=\"disk3\"}")
            && series(m, "disk3")
            && !series(m, "disk1")
    };
    let m = reload(config_for(&[&renamed], ""), &applied).await;
    assert!(applied(&m), "the reload never applied: {m}");
    assert!(series(&m, "disk3") && !series(&m, "disk1"), "{m}");
}
