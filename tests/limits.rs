//! Limits against hostile or broken clients:
//! - beyond server.max_connections, connections are accepted and closed at once, counted, and
//!   service resumes when load falls
//! - HTTP/2 rapid reset (CVE-2023-44487): a client that opens and cancels streams in a loop gets
//!   GOAWAY and its connection ends; other clients are unaffected
//! - a flood of connections under a small descriptor limit: `max_connections` is fitted to the
//!   limit, so connections beyond it are refused and counted, and requests on connections already
//!   open still get their files (not 503 `overloaded` from an EMFILE on open)
//! - absurd Range headers (thousands of ranges, overlapping, negative, huge) never cost a 5xx
//! - HTTP/2 clients that grant no window for large objects read from disk pin little memory
//!   per stream (the first read of a body is small)
//! - connections served by hyper (HTTP/2, HTTP/1.1 over TLS): a client that takes no response
//!   bytes is disconnected after send_timeout, an HTTP/2 connection with no request gets GOAWAY
//!   after keepalive_timeout, though it answers every ping

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::*;

const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";

#[tokio::test]
async fn connection_limit() {
    let dir = demo_volumes();
    let cfg = config_for(&[&dir.path().join("disk1")], "")
        .replace("[admin]", "max_connections = 3\n[admin]");
    let srv = Server::start(&cfg);
    let req = format!("HEAD {SEG} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(req.as_bytes()).expect("write");
        let mut buf = [0u8; 2048];
        let n = s.read(&mut buf).expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // The fourth is closed without an answer.
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(req.as_bytes());
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "refused over the limit: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "segd_connections_rejected_total"),
        Some(1.0),
        "{m}"
    );
    // Load falls: service resumes.
    held.pop();
    assert!(
        eventually(Duration::from_secs(5), async || {
            let Ok(mut s) = TcpStream::connect(srv.addr) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            if s.write_all(req.as_bytes()).is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
        })
        .await
    );
}

#[tokio::test]
async fn h2_rapid_reset_gets_goaway() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let (mut client, driver) = h2c(srv.addr).await;
    let mut refused = false;
    for _ in 0..5_000 {
        let req = http::Request::get(srv.url(SEG)).body(()).expect("request");
        match client.send_request(req, true) {
            Ok((_resp, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
        if futures_util::future::poll_fn(|cx| client.poll_ready(cx))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    let conn_err = match ended {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    assert!(refused || conn_err.is_some(), "the connection was not cut");
    if let Some(e) = conn_err {
        assert!(e.is_go_away() || e.is_io() || e.reason().is_some(), "{e:?}");
    }
    // Everyone else is unaffected.
    assert_eq!(request("GET", &srv.url(SEG), &[], true).await.status, 200);
    assert_eq!(get(&srv.url(SEG), &[]).await.status, 200);
}

#[tokio::test]
async fn absurd_ranges_never_5xx() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let many = format!(
        "bytes={}",
        (0..1500)
            .map(|i| format!("{}-{}", i, i + 3))
            .collect::<Vec<_>>()
            .join(",")
    );
    for h in [
        many.as_str(),
        "bytes=0-0,0-0,0-0,0-0,0-0",
        "bytes=-1-2",
        "bytes=--1",
        "bytes=18446744073709551615-18446744073709551616",
        "bytes=99999999999999999999999999999999-",
        "bytes=-99999999999999999999999999999999",
        "bytes=0-18446744073709551615",
        "bytes=1-0",
        "bytes= 0 - 1 ",
        "bytes=0-1;q=1",
    ] {
        for h2 in [false, true] {
            let r = request("GET", &srv.url(SEG), &[("range", h)], h2).await;
            // Over HTTP/2 a value with whitespace at either end is a malformed request (RFC
            // 9113 §8.2.1); HTTP/1.1 strips it as optional whitespace.
            let malformed = h2 && h.trim() != h;
            assert!(
                if malformed {
                    r.status == 400
                } else {
                    matches!(r.status, 200 | 206 | 416)
                },
                "{h:?} h2={h2}: {}",
                r.status
            );
        }
    }
}

/// Threads of the segd process (its `/proc/PID/task` entries).
fn threads(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `[server] blocking_threads`: the file-work threads are all started at start-up, and a burst
/// of concurrent requests that each need file work (misses, opens) queues for them instead of
/// creating threads (a thread costs ~50 µs to create, paid before the first byte of the burst).
#[tokio::test]
async fn blocking_pool_is_started_up_front_and_bounded() {
    let dir = demo_volumes();
    let cfg = config_for(&[&dir.path().join("disk1")], "")
        .replace("[admin]", "blocking_threads = 6\n[admin]");
    let server = Server::start(&cfg);
    let at_start = threads(&server);
    // 2 workers + 6 blocking threads, and segd's own few (signals, access log, volume checks).
    assert!(at_start >= 8, "{at_start} threads at start");
    let addr = server.addr;
    let burst: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let target = if i % 2 == 0 {
                    format!("/vod/t1/hls/64k/missing_{i}.ts")
                } else {
                    SEG.to_string()
                };
                raw_status(&raw_get(addr, &target))
            })
        })
        .collect();
    for (i, t) in burst.into_iter().enumerate() {
        let status = t.join().expect("client");
        assert_eq!(status, if i % 2 == 0 { 404 } else { 200 }, "request {i}");
    }
    let after = threads(&server);
    assert!(
        after <= at_start,
        "the burst created threads: {at_start} at start, {after} after"
    );
}

/// A volume with one large object, served with short `send_timeout` and `keepalive_timeout`.
fn watched_server(dir: &std::path::Path) -> Server {
    let vol = dir.join("v");
    std::fs::create_dir_all(vol.join("vod/big")).expect("mkdir");
    std::fs::write(vol.join("vod/big/huge.mp4"), vec![7u8; 16 << 20]).expect("write");
    let cfg = config_for(&[&vol], "").replace(
        "[admin]",
        "send_timeout = \"1s\"\nkeepalive_timeout = \"2s\"\n[admin]",
    );
    Server::start(&cfg)
}

/// HTTP/2 flow control lets a client take the response head and never a byte of the body (no
/// window): each such stream pins its buffered chunk. After send_timeout the connection goes.
#[tokio::test]
async fn h2_client_that_grants_no_window_is_disconnected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = watched_server(dir.path());
    let tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let req = http::Request::get(srv.url("/vod/big/huge.mp4"))
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        streams.push(resp);
        futures_util::future::poll_fn(|cx| client.poll_ready(cx))
            .await
            .expect("ready");
    }
    for resp in streams {
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("a response head")
            .expect("response");
        assert_eq!(resp.status(), 200);
    }
    let t0 = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        ended.is_ok(),
        "a client that takes no body bytes still holds its connection after 10 s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    // Everyone else is served.
    assert_eq!(
        request("GET", &srv.url(SEG_OF_WATCHED), &[], true)
            .await
            .status,
        200
    );
}

/// One HTTP/2 stream the client grants no window while it reads the others on the same
/// connection: the connection is kept, and every other stream is served whole. It was closed
/// at `send_timeout` under every stream on it (acceptance N5: a browser pausing one track, a
/// proxy holding back one slow viewer, cut all the others mid-body).
#[tokio::test]
async fn one_stalled_http2_stream_does_not_close_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = watched_server(dir.path());
    std::fs::write(dir.path().join("v/vod/big/small.mp4"), vec![3u8; 40_000]).expect("write");
    let tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    // Stream windows of 64 KiB, a connection window far larger: what stream A holds does not
    // take the others' room.
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(64 << 10)
        .initial_connection_window_size(64 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    // Stream A: its head taken, its body never read (its window is never given back).
    let req = http::Request::get(srv.url("/vod/big/huge.mp4"))
        .body(())
        .expect("request");
    let (held, _) = client.send_request(req, true).expect("send");
    let held = held.await.expect("response");
    assert_eq!(held.status(), 200);
    // The others, one after another, for 3 × `send_timeout` (1 s).
    let started = std::time::Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(3) {
        client = client.ready().await.expect("the connection is still there");
        let req = http::Request::get(srv.url("/vod/big/small.mp4"))
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        let mut body = resp.await.expect("response").into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap_or_else(|e| {
                panic!("cut after {served} streams, {:?}: {e}", started.elapsed())
            });
            got += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        assert_eq!(got, 40_000);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!driver.is_finished(), "the connection was closed");
    drop(held);
}

const SEG_OF_WATCHED: &str = "/vod/big/huge.mp4";

/// hyper's keep-alive pings only tell whether the peer lives: an HTTP/2 connection that asks
/// nothing for keepalive_timeout is closed (GOAWAY), as an idle HTTP/1.1 one is.
#[tokio::test]
async fn h2_idle_connection_ends_after_keepalive_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = watched_server(dir.path());
    let (mut client, driver) = h2c(srv.addr).await;
    let req = http::Request::head(srv.url(SEG_OF_WATCHED))
        .body(())
        .expect("request");
    let (resp, _) = client.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), 200);
    let t0 = std::time::Instant::now();
    // The client stays (the h2 crate answers the server's pings): only the idle rule ends it.
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection still open after 10 s"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before keepalive_timeout",
        t0.elapsed()
    );
}

/// Runs the command under a descriptor limit of 400 (soft and hard).
fn nofile_400(c: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 400,
                rlim_max: 400,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Under `ulimit -n 400` with the default `max_connections` (50,000), 450 idle connections
/// used to take every descriptor: requests on a connection already open got 503 (the file opens
/// failed with EMFILE) and the excess waited in the backlog, uncounted. Now `max_connections` is
/// fitted to the descriptors left (said at start), the excess is refused and counted, and the
/// open connection is served.
#[tokio::test]
async fn descriptor_limit_caps_connections_not_requests() {
    let dir = demo_volumes();
    let cfg = config_for(&[&dir.path().join("disk1")], "");
    let srv = Server::start_with(&cfg, nofile_400);
    let mut keep = TcpStream::connect(srv.addr).expect("connect");
    keep.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let ask = |s: &mut TcpStream, path: &str| -> String {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        // Reads one whole answer: head, then Content-Length bytes.
        loop {
            let n = s.read(&mut buf).expect("read an answer");
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    return text.lines().next().unwrap_or("").to_string();
                }
            }
        }
    };
    assert_eq!(ask(&mut keep, "/vod/t1/hls/master.m3u8"), "HTTP/1.1 200 OK");
    // 450 clients that connect and send half a head, and hold on.
    let mut flood = Vec::new();
    for _ in 0..450 {
        let mut s = TcpStream::connect(srv.addr).expect("connect (the backlog takes it)");
        let _ = s.write_all(b"GET /vod/t1/hls/master.m3u8 HTTP/1.1\r\n");
        flood.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    // The connection already open is still served, each file opened anew.
    for i in 0..=5 {
        let path = format!("/vod/t1/hls/64k/seg_{i:05}.ts");
        assert_eq!(ask(&mut keep, &path), "HTTP/1.1 200 OK", "{path}");
    }
    let metrics = get(&srv.admin_url("/metrics"), &[]).await.text();
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("segd_connections_rejected_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("segd_connections_rejected_total");
    assert!(
        rejected > 0.0,
        "the excess is refused and counted:\n{metrics}"
    );
    drop(flood);
    let err = srv.stderr.lock().map(|s| s.clone()).unwrap_or_default();
    // The default adapts to the machine (said); fitted to a handful of connections (102 here)
    // it is a warning with the fix; a value set in the file that cannot be had is a warning.
    assert!(
        err.contains("server.max_connections fitted to the descriptor limit"),
        "the cap is said at start:\n{err}"
    );
    assert!(
        err.lines().any(|l| l.contains("WARN")
            && l.contains("only 102 connections fit the descriptor limit (400)")
            && l.contains("raise LimitNOFILE")),
        "so few connections are a warning:\n{err}"
    );
    // Refused connections are said too, at most once every 10 s (they reached no log).
    let refused = err
        .lines()
        .filter(|l| l.contains("server.max_connections reached"))
        .count();
    assert_eq!(refused, 1, "one line for the flood:\n{err}");
    assert!(
        err.lines()
            .filter(|l| l.contains("WARN"))
            .all(|l| l.contains("server.max_connections reached")
                || l.contains("connections fit the descriptor limit")),
        "no other warning:\n{err}"
    );
    let explicit = cfg.replacen("[server]\n", "[server]\nmax_connections = 60000\n", 1);
    let srv = Server::start_with(&explicit, nofile_400);
    let err = srv.stderr();
    assert!(
        err.contains("WARN")
            && err.contains("server.max_connections exceeds the descriptors left")
            && err.contains("configured=60000"),
        "an explicit value that does not fit is a warning:\n{err}"
    );
}

/// Descriptors running out under a server already started (its limit lowered while it runs, as
/// uploads, pulls or another process's share can leave it): each failed accept is counted,
/// the log says it once rather than a hundred times a second, the loop backs off instead of
/// spinning, and connections are served again as soon as descriptors are.
#[tokio::test]
async fn failed_accepts_are_counted_and_said_once() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let pid = srv.child.id().to_string();
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    // The lowest free descriptor number (some are kept high, out of the way).
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap_or(0);
    // The soft limit only (`N:`): raising it back needs no privilege.
    let prlimit = |n: &str| {
        let st = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:")])
            .status()
            .expect("prlimit (util-linux)");
        assert!(st.success(), "prlimit --nofile={n}");
    };
    let before = srv.stderr.lock().map(|s| s.clone()).unwrap_or_default();
    // No descriptor left: every number below the limit is in use.
    prlimit(&lowest_free.to_string());
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(TcpStream::connect(srv.addr).expect("connect (the backlog takes it)"));
    }
    std::thread::sleep(Duration::from_secs(3));
    let during = srv.stderr.lock().map(|s| s.clone()).unwrap_or_default();
    let said = during[before.len().min(during.len())..]
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    let hard = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .expect("hard limit");
    prlimit(&hard);
    drop(flood);
    assert!(
        (1..=2).contains(&said),
        "failed accepts said once, not every 10 ms: {said} lines\n{during}"
    );
    // Served again at once (the back-off is at most 0.5 s).
    let served = eventually(Duration::from_secs(3), async || {
        get(&srv.url("/vod/t1/hls/master.m3u8"), &[]).await.status == 200
    });
    assert!(served.await, "served again once descriptors are back");
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    let failed: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("segd_accept_errors_total{reason=\"descriptors\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        (1.0..100.0).contains(&failed),
        "counted, with a back-off (not one every 10 ms): {failed}\n{m}"
    );
}

/// HTTP/2 clients that grant no flow-control window (`SETTINGS_INITIAL_WINDOW_SIZE` 0) and ask
/// for large objects read from disk (over `cache.max_item_bytes`, h2c: no memory map). Each
/// stream read a whole 256 KiB chunk as hyper first asked for its body, held until
/// `send_timeout`: 128 streams pinned 32 MiB per connection, a few hundred such connections
/// gigabytes. The first read of a body is small and reads grow as the client takes them, as
/// nginx's output buffers are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_http2_clients_pin_little_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/m")).expect("mkdir");
    std::fs::write(vol.join("vod/m/big.mp4"), vec![b'Z'; 8 << 20]).expect("write");
    let srv = Server::start(&config_for(&[&vol], "[cache]\nmax_item_bytes = \"1MiB\"\n"));
    let pid = srv.child.id();
    let (conns, streams) = (8, 100);
    let before = rss(pid);
    let mut held = Vec::new();
    for _ in 0..conns {
        held.push(h2c_zero_window_gets(srv.addr, "/vod/m/big.mp4", streams as usize).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = rss(pid).saturating_sub(before);
    let per_stream = grown / (conns * streams);
    assert!(
        per_stream < 96 << 10,
        "{} MiB more resident for {} streams that took nothing ({} KiB each)",
        grown >> 20,
        conns * streams,
        per_stream >> 10
    );
    for (_, _, driver) in held {
        driver.abort();
    }
}

/// A PING with the ACK flag that segd never asked for is ignored (RFC 9113 §6.7), without a
/// log line: a warning per frame let a client write 100,000 lines in 2 s (acceptance J1). The
/// connection goes on, and a request on it is served.
#[tokio::test]
async fn unsolicited_ping_acks_write_no_log_lines() {
    let (srv, _) = demo_server("");
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]); // SETTINGS, empty
    for i in 0..2_000u64 {
        out.extend_from_slice(&[0, 0, 8, 0x06, 0x01, 0, 0, 0, 0]); // PING, ACK
        out.extend_from_slice(&i.to_be_bytes());
    }
    s.write_all(&out).expect("frames");
    // A GET on stream 1: HEADERS (END_STREAM | END_HEADERS), HPACK literals without indexing.
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, literal
    let path = b"/vod/t1/hls/64k/seg_00001.ts";
    block.push(path.len() as u8);
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 0x01, b'x']); // :authority x
    let mut head = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    head.extend_from_slice(&block);
    s.write_all(&head).expect("request");
    // Read frames until a HEADERS frame on stream 1 (the answer).
    let mut answered = false;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    while !answered {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            let (ty, stream) = (
                buf[at + 3],
                u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]),
            );
            if ty == 0x01 && stream == 1 {
                answered = true;
            }
            at += 9 + len;
        }
    }
    assert!(answered, "the request after the PINGs is answered");
    let log = srv.stderr();
    assert!(
        !log.contains("PING"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}

/// A client that resets more requests than h2 lets wait (rapid reset, CVE-2023-44487) has its
/// connection closed with ENHANCE_YOUR_CALM, and no log line: h2 wrote a warning each time, a
/// line any client could have written at will, once per connection (acceptance load F5).
#[tokio::test]
async fn rapid_resets_close_the_connection_without_a_log_line() {
    use crate::util::h2raw::hpack_literals;
    let (srv, _) = demo_server("");
    let block = hpack_literals(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/vod/t1/hls/master.m3u8"),
    ]);
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = u32::try_from(payload.len()).expect("len").to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x04, 0, 0, &[]));
    for i in 0..100u32 {
        out.extend(frame(0x01, 0x05, 2 * i + 1, &block)); // HEADERS, END_STREAM | END_HEADERS
        out.extend(frame(0x03, 0, 2 * i + 1, &8u32.to_be_bytes())); // RST_STREAM, CANCEL
    }
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&out).expect("frames");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut at = 0;
    let mut goaway = None;
    while buf.len() >= at + 9 {
        let len = (usize::from(buf[at]) << 16)
            | (usize::from(buf[at + 1]) << 8)
            | usize::from(buf[at + 2]);
        if buf[at + 3] == 0x07 && buf.len() >= at + 17 {
            let p = &buf[at + 9..];
            goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(11), "closed with ENHANCE_YOUR_CALM");
    std::thread::sleep(Duration::from_millis(200));
    let log = srv.stderr();
    assert!(
        !log.contains("reached limit"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}
