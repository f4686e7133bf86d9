//! Lifecycle and operations against the running server:
//! - SIGHUP with a new key makes it valid; a broken config is rejected with check-config's
//!   messages and the old config keeps serving
//! - SIGTERM during a large download lets it finish; /readyz says draining; new connections are
//!   refused; exit status 0
//! - the sd_notify sequence: READY=1, RELOADING=1 + MONOTONIC_USEC / READY=1, STOPPING=1
//! - socket activation: a listening socket passed as fd 3 with LISTEN_FDS/LISTEN_PID is served
//! - the access log line has every field, and never the token
//! - metrics after a scripted burst show exact counts

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use segd::auth::edgeauth::{sign, SignSpec};
use segd::auth::encode_token;
use segd::config::TokenAlgorithm;

use crate::util::*;

const K1: &str = "52a152a152a152a152a152a152a1";
const K2: &str = "00112233445566778899aabbccddeeff";
const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn token(key: &str) -> String {
    encode_token(&sign(
        TokenAlgorithm::Sha256,
        &hex::decode(key).expect("hex"),
        &SignSpec {
            acl: Some("/vod/*"),
            exp: now() + 300,
            ..Default::default()
        },
    ))
}

fn keys(list: &[(&str, &str)]) -> String {
    let mut s = String::from("[token]\nprotect = [\"/vod/\"]\n");
    for (id, k) in list {
        s.push_str(&format!(
            "[[token.keys]]\nid = \"{id}\"\nsecret = \"{k}\"\n"
        ));
    }
    s
}

#[tokio::test]
async fn sighup_reloads_keys_and_rejects_broken_configs() {
    let dir = demo_volumes();
    let vol = dir.path().join("disk1");
    let srv = Server::start(&config_for(&[&vol], &keys(&[("k1", K1)])));
    let with_k2 = srv.url(&format!("{SEG}?__token__={}", token(K2)));
    assert_eq!(get(&with_k2, &[]).await.status, 403);
    std::fs::write(
        &srv.config,
        config_for(&[&vol], &keys(&[("k1", K1), ("k2", K2)])),
    )
    .expect("write");
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), async || get(&with_k2, &[])
            .await
            .status
            == 200)
        .await,
        "{}",
        srv.stderr()
    );
    srv.log_with(&["configuration reloaded"]);
    // A broken file: rejected with the same messages as check-config; the old config stays.
    std::fs::write(
        &srv.config,
        config_for(&[&vol], &keys(&[("k1", K1), ("k2", "zz")])) + "bogus_key = 1\n",
    )
    .expect("write");
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), async || srv
            .stderr()
            .contains("reload rejected"))
        .await,
        "{}",
        srv.stderr()
    );
    srv.log_with(&[
        "token.keys[1].secret: not hex",
        "token.keys[1].bogus_key: unknown key",
    ]);
    assert_eq!(
        get(&with_k2, &[]).await.status,
        200,
        "the running config keeps serving"
    );
    assert_eq!(get(&srv.url(SEG), &[]).await.status, 403);
}

#[tokio::test]
async fn sigterm_lets_a_download_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/m")).expect("mkdir");
    let len = 8 << 20;
    std::fs::write(vol.join("vod/m/big.mp4"), vec![b'Z'; len]).expect("write");
    let mut srv = Server::start(&config_for(&[&vol], ""));
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /vod/m/big.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut got = Vec::with_capacity(len + 1024);
    let mut buf = vec![0u8; 64 << 10];
    let n = s.read(&mut buf).expect("first bytes");
    got.extend_from_slice(&buf[..n]);
    srv.signal(libc::SIGTERM);
    // Draining: not ready, and no new connections.
    let admin = srv.admin_url("/readyz");
    assert!(
        eventually(Duration::from_secs(5), async || get(&admin, &[])
            .await
            .status
            == 503)
        .await
    );
    assert!(get(&admin, &[]).await.text().contains("draining"));
    assert!(
        eventually(Duration::from_secs(5), async || TcpStream::connect(
            srv.addr
        )
        .is_err())
        .await,
        "listener closed"
    );
    // The download in flight completes, slowly read.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("download broken by the drain: {e}"),
        }
        if got.len() >= len + 200 && got.ends_with(b"ZZZZ") {
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
            if let Some(h) = head_end {
                if got.len() - h == len {
                    break;
                }
            }
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert_eq!(got.len() - head_end, len, "the whole body arrived");
    drop(s);
    assert_eq!(
        srv.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        srv.stderr()
    );
}

#[tokio::test]
async fn notify_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let vols = demo_volumes();
    let mut srv = Server::start_with(&config_for(&[&vols.path().join("disk1")], ""), |c| {
        c.env("NOTIFY_SOCKET", &sock_path)
    });
    let mut buf = [0u8; 512];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(recv().starts_with("READY=1"));
    srv.signal(libc::SIGHUP);
    let r = recv();
    assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
    assert!(recv().starts_with("READY=1"));
    srv.signal(libc::SIGTERM);
    assert!(recv().starts_with("STOPPING=1"));
    assert_eq!(srv.wait_exit(Duration::from_secs(15)), Some(0));
}

#[tokio::test]
async fn socket_activation() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // A socket bound without SO_REUSEPORT: segd could not bind this address itself.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = listener.as_raw_fd();
    let vols = demo_volumes();
    let cfg = config_for(&[&vols.path().join("disk1")], "").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{addr}\"]"),
    );
    let srv = Server::start_with(&cfg, |c| {
        // LISTEN_PID must be segd's own pid: exec through a shell that exports its $$.
        let program = c.get_program().to_owned();
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
            .arg(program)
            .args(args);
        *c = sh;
        c.env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    });
    assert_eq!(srv.addr, addr);
    assert_eq!(get(&srv.url(SEG), &[]).await.status, 200);
    // The log line reaches the test's stderr reader on its own schedule: wait for it.
    srv.log_with(&["using the socket passed by systemd"]);
    drop(listener);
}

#[tokio::test]
async fn access_log_lines() {
    let dir = demo_volumes();
    let log = dir.path().join("access.log");
    let cfg = config_for(
        &[&dir.path().join("disk1")],
        &format!(
            "{}[log]\naccess = \"{}\"\nformat = \"json\"\n",
            keys(&[("k1", K1)]),
            log.display()
        ),
    );
    let srv = Server::start(&cfg);
    let t = token(K1);
    assert_eq!(
        get(
            &srv.url(&format!("/__token__={t}{SEG}")),
            &[("user-agent", "ffplay/7"), ("x-request-id", "cdn-42")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&srv.url(&format!("{SEG}?__token__={t}")), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        request("GET", &srv.url(SEG), &[("x-origin-auth", "nope")], true)
            .await
            .status,
        403
    );
    assert!(
        eventually(Duration::from_secs(5), async || std::fs::read_to_string(
            &log
        )
        .is_ok_and(|s| s.lines().count() >= 3))
        .await
    );
    let text = std::fs::read_to_string(&log).expect("log");
    // Lines are written when each response's last byte is out, so two quick requests may be
    // logged in either order: find them by content.
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .find(|l| l.contains("cdn-42"))
        .unwrap_or_else(|| panic!("the first request's line:\n{text}"));
    for field in [
        "\"time\":\"",
        "\"client\":\"127.0.0.1\"",
        "\"peer\":\"127.0.0.1:",
        "\"method\":\"GET\"",
        &format!("\"path\":\"{SEG}\""),
        "\"status\":200",
        "\"bytes\":",
        "\"duration_ms\":",
        "\"proto\":\"h1\"",
        "\"cache\":\"bypass\"",
        "\"key_id\":\"k1\"",
        "\"request_id\":\"cdn-42\"",
        "\"user_agent\":\"ffplay/7\"",
    ] {
        assert!(first.contains(field), "missing {field} in {first}");
    }
    let refused = lines
        .iter()
        .find(|l| l.contains("\"status\":403"))
        .unwrap_or_else(|| panic!("the 403's line:\n{text}"));
    assert!(
        refused.contains("\"proto\":\"h2\"") && refused.contains("\"key_id\":null"),
        "{refused}"
    );
    let mac = t.rsplit("hmac%3D").next().expect("mac");
    assert!(
        !text.contains(mac) && !text.contains("__token__"),
        "no token in the access log:\n{text}"
    );
}

#[tokio::test]
async fn metrics_count_a_scripted_burst() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let t0 = Instant::now();
    for _ in 0..10 {
        assert_eq!(get(&srv.url(SEG), &[]).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&srv.url("/vod/t1/nope.ts"), &[]).await.status, 404);
    }
    for _ in 0..2 {
        assert_eq!(request("HEAD", &srv.url(SEG), &[], false).await.status, 200);
    }
    assert_eq!(request("GET", &srv.url(SEG), &[], true).await.status, 200);
    assert_eq!(
        request("DELETE", &srv.url(SEG), &[], false).await.status,
        405
    );
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    let c = |method: &str, class: &str, proto: &str| {
        metric_with(
            &m,
            "segd_http_requests_total",
            &[
                ("method", method),
                ("status_class", class),
                ("proto", proto),
            ],
        )
    };
    assert_eq!(c("GET", "2xx", "h1"), Some(10.0), "{m}");
    assert_eq!(c("GET", "4xx", "h1"), Some(3.0));
    assert_eq!(c("HEAD", "2xx", "h1"), Some(2.0));
    assert_eq!(c("GET", "2xx", "h2"), Some(1.0));
    assert_eq!(c("DELETE", "4xx", "h1"), Some(1.0));
    let seg_len = std::fs::metadata(dir.path().join("disk1").join(SEG.trim_start_matches('/')))
        .expect("meta")
        .len() as f64;
    let h1_bytes =
        metric_with(&m, "segd_http_response_bytes_total", &[("proto", "h1")]).expect("bytes");
    assert_eq!(
        h1_bytes,
        10.0 * seg_len + 3.0 * "not found\n".len() as f64 + "method not allowed\n".len() as f64
    );
    let count = metric_with(
        &m,
        "segd_http_request_duration_seconds_count",
        &[("phase", "total")],
    )
    .expect("histogram");
    assert_eq!(count, 17.0);
    assert!(metric_with(
        &m,
        "segd_http_request_duration_seconds_bucket",
        &[("phase", "total"), ("le", "10")]
    )
    .is_some_and(|v| v == 17.0));
    assert!(
        m.contains("segd_build_info{version=\"")
            && m.contains("segd_volume_healthy{volume=\"disk1\"} 1")
    );
    let _ = t0;
}
