//! Caches and disk I/O against the running server:
//! - 32 concurrent HTTP/2 requests for one cold object cause one disk read (single-flight fill),
//!   and later requests are cache hits; ranges are served as slices of the cached body
//! - a file rewritten in place is never served from the old cache entry (new identity, new key)
//! - HTTP/1.1 bodies go out with sendfile and never enter the body cache
//! - the threads backend (what segd falls back to without io_uring) serves identical bytes

use std::time::Duration;

use crate::util::*;

fn big_volume(bytes: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/m")).expect("mkdir");
    let data: Vec<u8> = (0..bytes as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(vol.join("vod/m/a.m4s"), &data).expect("write");
    (dir, vol, data)
}

async fn metrics(srv: &Server) -> String {
    get(&srv.admin_url("/metrics"), &[]).await.text()
}

#[tokio::test]
async fn concurrent_misses_read_once() {
    let (_d, vol, data) = big_volume(3 << 20);
    let srv = Server::start(&config_for(&[&vol], ""));
    let url = srv.url("/vod/m/a.m4s");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let u = url.clone();
        tasks.push(tokio::spawn(
            async move { request("GET", &u, &[], true).await },
        ));
    }
    for t in tasks {
        let r = t.await.expect("join");
        assert_eq!(r.status, 200);
        assert!(r.body.as_ref() == data.as_slice(), "identical bytes");
    }
    let m = metrics(&srv).await;
    assert_eq!(
        metric(&m, "segd_cache_fills_total"),
        Some(1.0),
        "one disk read for 32 misses:\n{m}"
    );
    assert_eq!(metric(&m, "segd_cache_bytes"), Some(data.len() as f64));
    let r = request("GET", &url, &[("range", "bytes=100-199")], true).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &data[100..200]);
    let m = metrics(&srv).await;
    assert!(
        metric(&m, "segd_cache_hits_total").is_some_and(|h| h >= 1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "segd_cache_fills_total"), Some(1.0));
}

#[tokio::test]
async fn changed_file_is_never_served_from_cache() {
    let (_d, vol, _data) = big_volume(100_000);
    let srv = Server::start(&config_for(&[&vol], ""));
    let url = srv.url("/vod/m/a.m4s");
    assert_eq!(request("GET", &url, &[], true).await.body.len(), 100_000);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(vol.join("vod/m/a.m4s"), b"rewritten in place").expect("rewrite");
    for h2 in [true, false] {
        let r = request("GET", &url, &[], h2).await;
        assert_eq!(r.body.as_ref(), b"rewritten in place", "h2={h2}");
    }
}

#[tokio::test]
async fn sendfile_bodies_stay_out_of_the_cache() {
    let (_d, vol, data) = big_volume(500_000);
    let srv = Server::start(&config_for(&[&vol], ""));
    for _ in 0..5 {
        let r = get(&srv.url("/vod/m/a.m4s"), &[]).await;
        assert!(r.body.as_ref() == data.as_slice());
    }
    // Metrics are recorded just after the last byte is handed to the kernel: wait for them.
    let want = 5.0 * data.len() as f64;
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &metrics(&srv).await,
            "segd_zero_copy_bytes_total"
        ) == Some(want))
        .await
    );
    let m = metrics(&srv).await;
    assert_eq!(metric(&m, "segd_cache_bytes"), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "segd_zero_copy_bytes_total"),
        Some(5.0 * data.len() as f64)
    );
    assert_eq!(
        metric(&m, "segd_open_files_cached"),
        Some(1.0),
        "one descriptor reused"
    );
}

#[tokio::test]
async fn threads_backend_serves_the_same_bytes() {
    let (_d, vol, data) = big_volume(1 << 20);
    for backend in ["threads", "auto"] {
        let ours = format!("io_backend = \"{backend}\"");
        let cfg = config_for(&[&vol], "")
            .lines()
            .map(|l| {
                if l.starts_with("io_backend") {
                    ours.as_str()
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let srv = Server::start(&cfg);
        let m = metrics(&srv).await;
        let uring = metric(&m, "segd_io_backend{backend=\"io_uring\"}");
        let threads = metric(&m, "segd_io_backend{backend=\"threads\"}");
        if backend == "threads" {
            assert_eq!((uring, threads), (None, Some(1.0)), "{m}");
        } else {
            assert!(uring == Some(1.0) || threads == Some(1.0), "{m}");
        }
        let url = srv.url("/vod/m/a.m4s");
        for h2 in [false, true] {
            let r = request("GET", &url, &[], h2).await;
            assert!(r.body.as_ref() == data.as_slice(), "{backend} h2={h2}");
            let r = request("GET", &url, &[("range", "bytes=1000-299999")], h2).await;
            assert_eq!(r.body.as_ref(), &data[1000..300_000], "{backend} h2={h2}");
        }
    }
}

/// Restores `kernel.io_uring_disabled` when dropped, even if the test fails.
struct UringDisabled(String);

impl Drop for UringDisabled {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/io_uring_disabled", &self.0);
    }
}

/// With io_uring refused by the kernel, segd falls back to the thread pool with one log line and
/// the metric, and serves the same bytes. Needs root (CI runs as root); says so when it cannot.
#[tokio::test]
async fn io_uring_refused_falls_back() {
    const KNOB: &str = "/proc/sys/kernel/io_uring_disabled";
    let Ok(before) = std::fs::read_to_string(KNOB) else {
        eprintln!(
            "io_uring_refused_falls_back: {KNOB} missing; this kernel cannot refuse io_uring"
        );
        return;
    };
    if std::fs::write(KNOB, "2").is_err() {
        eprintln!(
            "io_uring_refused_falls_back: cannot write {KNOB} (not root); fallback not exercised"
        );
        return;
    }
    let guard = UringDisabled(before.trim().to_string());
    let (_d, vol, data) = big_volume(700_000);
    // Ask for io_uring (auto), whatever backend the rest of the suite runs on.
    let cfg = config_for(&[&vol], "")
        .lines()
        .map(|l| {
            if l.starts_with("io_backend") {
                "io_backend = \"auto\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let srv = Server::start(&cfg);
    drop(guard);
    let m = metrics(&srv).await;
    assert_eq!(
        metric(&m, "segd_io_backend{backend=\"threads\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        srv.log_with(&["io_uring is unavailable"])
            .matches("io_uring is unavailable")
            .count(),
        1,
        "{}",
        srv.stderr()
    );
    for h2 in [false, true] {
        let r = request(
            "GET",
            &srv.url("/vod/m/a.m4s"),
            &[("range", "bytes=10-600009")],
            h2,
        )
        .await;
        assert_eq!(r.body.as_ref(), &data[10..600_010], "h2={h2}");
    }
}
