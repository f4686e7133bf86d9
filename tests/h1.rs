//! The plaintext HTTP/1.1 fast path (httparse + sendfile), strictly:
//! - ambiguous framing (duplicate or conflicting Content-Length / Transfer-Encoding), a missing
//!   or repeated Host → 400 and close
//! - a request with a body → answered (405), then the connection is closed
//! - HTTP/1.0 closes unless keep-alive is asked for; `Connection: close` is honoured
//! - a client trickling its head (slowloris) gets 408 within header_read_timeout, and so does
//!   one trickling a GET's (discarded) body
//! - a client that stops reading is disconnected after send_timeout
//! - a file truncated while being sent never completes: the connection is reset mid-body
//! - absolute-form targets: `OPTIONS http://host` is `OPTIONS *`, an empty path is `/`, the
//!   scheme is case-insensitive

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::util::*;

fn start(extra: &str) -> (tempfile::TempDir, Server) {
    let dir = demo_volumes();
    let cfg = config_for(&[&dir.path().join("disk1")], "")
        .replace("[admin]", &format!("{extra}\n[admin]"));
    let srv = Server::start(&cfg);
    (dir, srv)
}

const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";

#[test]
fn framing_and_host_rules() {
    let (_d, srv) = start("");
    for req in [
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nContent-Length: 1,1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        // A Host that is no `uri-host [":" port]` (acceptance J7: served).
        format!("GET {SEG} HTTP/1.1\r\nHost: x:-1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: x:80:80\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: [::1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: ::1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nX-Bad: a\rb\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n"),
        // HTTP/1.0 has no transfer codings: faulty framing (RFC 9112 §6.1).
        format!("POST {SEG} HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        // A Transfer-Encoding naming no coding frames nothing.
        format!("POST {SEG} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \r\n\r\n"),
        format!("POST {SEG} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: ,\r\n\r\n"),
    ] {
        let resp = raw(srv.addr, req.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&resp);
        assert_eq!(raw_status(&resp), 400, "{req:?}: {text}");
        assert!(text.contains("connection: close"), "{req:?}: {text}");
        assert!(text.ends_with("\r\n\r\nbad request\n"), "segd's own answer to {req:?}: {text}");
    }
    // A request with a body is answered, and nothing after it is read as a request.
    let req = format!("POST {SEG} HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\nGET /smuggled.ts HTTP/1.1\r\n\r\n");
    let resp =
        String::from_utf8_lossy(&raw(srv.addr, req.as_bytes(), Duration::from_secs(5))).to_string();
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert_eq!(
        resp.matches("HTTP/1.1").count(),
        1,
        "the body was not parsed as a request: {resp}"
    );
    // HTTP/1.0: one response, then close; with keep-alive: stays open.
    let resp = raw(
        srv.addr,
        format!("GET {SEG} HTTP/1.0\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(raw_status(&resp), 200);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("HEAD {SEG} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.contains("connection: keep-alive"), "{text}");
    s.write_all(format!("HEAD {SEG} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
        .expect("second request on the same connection");
    let n = s.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn slowloris_gets_408() {
    let (_d, srv) = start("header_read_timeout = \"500ms\"");
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t0 = Instant::now();
    s.write_all(b"GET /vod/t1/hls/master.m3u8 HTTP/1.1\r\nHo")
        .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let took = t0.elapsed();
    assert_eq!(raw_status(&out), 408, "{}", String::from_utf8_lossy(&out));
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
}

#[test]
fn stalled_reader_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/big")).expect("mkdir");
    std::fs::write(vol.join("vod/big/huge.mp4"), vec![7u8; 64 << 20]).expect("write");
    let cfg = config_for(&[&vol], "").replace("[admin]", "send_timeout = \"1s\"\n[admin]");
    let srv = Server::start(&cfg);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    // A tiny receive window and no reading: the server must give up on its own.
    s.write_all(b"GET /vod/big/huge.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_secs(3));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(_) => break,
        }
    }
    assert!(
        total < 64 << 20,
        "the server stopped sending to a stalled reader ({total} bytes)"
    );
}

/// A client that keeps reading, slower than the socket drains a third of its send buffer per
/// `send_timeout` (the kernel reports a socket writable only then: megabytes, with autotuning),
/// is not a stalled one: it acknowledges bytes, and it keeps its connection. It was reset after
/// one or two `send_timeout`s on the sendfile path (acceptance).
#[test]
fn a_slow_steady_reader_keeps_its_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/big")).expect("mkdir");
    std::fs::write(vol.join("vod/big/huge.mp4"), vec![7u8; 32 << 20]).expect("write");
    let cfg = config_for(&[&vol], "").replace("[admin]", "send_timeout = \"1s\"\n[admin]");
    let srv = Server::start(&cfg);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /vod/big/huge.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    // 64 KiB every 200 ms (about 320 KB/s) for 5 s: five send_timeouts.
    let start = std::time::Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        let mut got = 0;
        while got < buf.len() {
            match s.read(&mut buf[got..]) {
                Ok(0) => panic!("closed after {total} bytes, {:?}", start.elapsed()),
                Ok(n) => got += n,
                Err(e) => panic!("{e} after {total} bytes, {:?}", start.elapsed()),
            }
        }
        total += got;
    }
    assert!(total >= 20 * (64 << 10), "read {total} bytes");
}

#[test]
fn truncated_file_ends_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/big")).expect("mkdir");
    let path = vol.join("vod/big/shrinks.mp4");
    let len = 32 << 20;
    std::fs::write(&path, vec![b'A'; len]).expect("write");
    let srv = Server::start(&config_for(&[&vol], ""));
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /vod/big/shrinks.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut buf = vec![0u8; 64 << 10];
    let n = s.read(&mut buf).expect("first bytes");
    // Truncate while the body is in flight.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(1 << 20)
        .expect("truncate");
    let mut body_bytes: Vec<u8> = buf[..n].to_vec();
    let mut reset = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Err(e) => {
                reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                break;
            }
            Ok(n) => {
                body_bytes.extend_from_slice(&buf[..n]);
            }
        }
    }
    let head_end = body_bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    let body = &body_bytes[head_end..];
    assert!(
        body.len() < len,
        "the response never completes ({} of {len} body bytes)",
        body.len()
    );
    assert!(
        reset,
        "the connection is reset, not closed cleanly, so no client takes it as complete"
    );
    // Zero-copy may have put changed bytes on the wire before the change was seen; they only
    // ever appear at or past the new end of file, inside a response that was reset.
    if let Some(i) = body.iter().position(|&b| b != b'A') {
        assert!(
            i >= 1 << 20,
            "changed bytes before the truncation point at {i}"
        );
    }
    // The next request sees the new state.
    let resp = raw_get(srv.addr, "/vod/big/shrinks.mp4");
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head");
    let text = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
    assert!(
        text.contains(&format!("content-length: {}", 1 << 20)),
        "{text}"
    );
}

/// Clients that abort mid-body, reset, send garbage after a valid request, or connect and vanish
/// leave no descriptor behind (counted in /proc/PID/fd before and after).
#[tokio::test]
async fn broken_clients_leak_no_descriptors() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("v");
    std::fs::create_dir_all(vol.join("vod/big")).expect("mkdir");
    std::fs::write(vol.join("vod/big/b.mp4"), vec![1u8; 8 << 20]).expect("write");
    let srv = Server::start(&config_for(&[&vol], ""));
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", srv.child.id()))
            .expect("proc")
            .count()
    };
    let open_conns = async || {
        metric_with(
            &get(&srv.admin_url("/metrics"), &[]).await.text(),
            "segd_connections_open",
            &[("proto", "h1")],
        )
    };
    // Each protocol's series is there from the start, at 0 (h3's was missing until the first
    // QUIC connection: a dashboard showed "no data").
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    for proto in ["h1", "h2", "h3"] {
        assert_eq!(
            metric_with(&m, "segd_connections_open", &[("proto", proto)]),
            Some(0.0),
            "{proto}"
        );
    }
    // Warm: the descriptor cache holds the file from now on.
    assert_eq!(
        get(&srv.url("/vod/big/b.mp4"), &[("range", "bytes=0-0")])
            .await
            .status,
        206
    );
    assert!(
        eventually(Duration::from_secs(5), async || open_conns().await
            == Some(0.0))
        .await
    );
    let before = fds();
    let req = b"GET /vod/big/b.mp4 HTTP/1.1\r\nHost: t\r\n\r\n";
    for i in 0..40 {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        match i % 4 {
            0 => {
                // Abort mid-body.
                s.write_all(req).expect("write");
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
            }
            1 => {
                // Reset (RST) right after asking.
                s.write_all(req).expect("write");
                let lin = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: valid socket and a correctly sized linger struct.
                unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&lin as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
            }
            2 => {
                // Garbage after a valid request.
                s.write_all(
                    b"HEAD /vod/big/b.mp4 HTTP/1.1\r\nHost: t\r\n\r\n\x00\x01\x02garbage\r\n\r\n",
                )
                .expect("write");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                assert!(
                    out.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
                assert!(
                    String::from_utf8_lossy(&out).contains("HTTP/1.1 400"),
                    "garbage gets a 400"
                );
            }
            _ => {} // Connect and vanish.
        }
        drop(s);
    }
    assert!(
        eventually(Duration::from_secs(10), async || open_conns().await
            == Some(0.0))
        .await,
        "connections closed"
    );
    assert!(
        eventually(Duration::from_secs(5), async || fds() <= before).await,
        "descriptors: {} before, {} after",
        before,
        fds()
    );
    assert_eq!(
        get(&srv.url("/vod/big/b.mp4"), &[("range", "bytes=0-9")])
            .await
            .status,
        206,
        "still serving"
    );
}

/// RFC 9112 §3.2 on every HTTP/1.1 path: a request without `Host`, with two, or with a value
/// that is no host is 400 — also after a chunked request handed the connection to hyper, and
/// on TLS (`tls::host_rules_hold_on_tls`).
#[test]
fn host_rules_hold_after_the_hand_over() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let statuses = |data: String| -> Vec<u16> {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(data.as_bytes()).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        text.match_indices("HTTP/1.")
            .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    };
    // A GET with a chunked body: served, and the connection handed to hyper.
    let first =
        format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    for bad in [
        format!("GET {SEG} HTTP/1.1\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        format!("GET {SEG} HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ] {
        assert_eq!(statuses(format!("{first}{bad}")), vec![200, 400], "{bad:?}");
        assert_eq!(statuses(bad.clone()), vec![400], "fast path: {bad:?}");
    }
    // An HTTP/1.0 keep-alive request segd answers with `close` is told `close` alone (hyper
    // appended `keep-alive`: `Connection: close, keep-alive`, and `ab -k` counted a failure),
    // and the connection closes.
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // (A refusal hyper writes: the head is let through by segd's gate, and the unread body
    // closes the connection.)
    let refused =
        format!("POST {SEG} HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello");
    s.write_all(format!("{first}{refused}").as_bytes())
        .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let second = text.rfind("http/1.").map_or("", |i| &text[i..]);
    assert!(second.starts_with("http/1.0 405"), "{text:.900}");
    let connection: Vec<&str> = (second.lines())
        .filter_map(|l| l.strip_prefix("connection: "))
        .collect();
    assert_eq!(connection, vec!["close"], "{second}");
    // HTTP/1.0 needs none; IPv6 literals and ports are hosts.
    assert_eq!(
        statuses(format!("{first}GET {SEG} HTTP/1.0\r\n\r\n")),
        vec![200, 200]
    );
    assert_eq!(
        statuses(format!(
            "GET {SEG} HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n"
        )),
        vec![200]
    );
}

/// A bare LF after a chunked body's last chunk, or ending a trailer line, is no line end for
/// segd but is one for a peer that takes a bare LF for one (RFC 9112 §2.2 allows it; nginx
/// and HAProxy do): hyper read on, took the next request's head for trailers and served the
/// request hidden in its body. Now the body is an error: the connection closes, nothing after
/// it is served (acceptance finding, session 32).
#[test]
fn a_bare_lf_in_the_chunked_trailer_section_smuggles_nothing() {
    let (_d, srv) = start("");
    let hidden = "GET /vod/t1/hls/master.m3u8 HTTP/1.1\r\nHost: a\r\n\r\n";
    let cover = format!(
        "POST /vod/t1/hls/64k/seg_00002.ts HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    for end in ["0\r\n\n", "0\r\nX: 1\n\n", "0\r\nX: 1\r\nY: 2\n\n"] {
        let req = format!(
            "GET {SEG} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{end}{cover}"
        );
        let out = raw(srv.addr, req.as_bytes(), Duration::from_secs(3));
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(
            !text.contains("mpegurl"),
            "{end:?}: the hidden request was served: {text:.600}"
        );
        assert!(
            text.matches("http/1.1 ").count() <= 1,
            "{end:?}: one answer at most: {text:.600}"
        );
    }
    // A well-formed trailer section still ends the body, and the next request is served.
    let req = format!(
        "GET {SEG} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n\r\n{hidden}"
    );
    let out = raw(srv.addr, req.as_bytes(), Duration::from_secs(3));
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert_eq!(text.matches("http/1.1 200").count(), 2, "{text:.600}");
}

/// The HTTP/2 preface has one `header_read_timeout` in all, as a request head does: a byte
/// every second does not keep the connection.
#[test]
fn trickled_h2_preface_is_cut_at_header_read_timeout() {
    let dir = demo_volumes();
    let cfg = config_for(&[&dir.path().join("disk1")], "")
        .replace("[admin]", "header_read_timeout = \"2s\"\n[admin]");
    let srv = Server::start(&cfg);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let t0 = std::time::Instant::now();
    let mut cut = None;
    let mut buf = [0u8; 64];
    for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        if s.write_all(&[*b]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        // Still open: the read waits out its timeout. Closed: 0 bytes, or a reset.
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            _ => {
                cut = Some(t0.elapsed());
                break;
            }
        }
    }
    let cut = cut.expect("the connection outlived a 17 s preface");
    assert!(cut < Duration::from_secs(5), "cut after {cut:?}");
}

/// A body where one means nothing (a GET's), trickled a byte at a time, is read within one
/// `header_read_timeout` in all, then 408 and close: it was timed per read, so a byte every
/// few seconds held the connection unanswered for as long as 64 KiB took (acceptance F8).
/// Sent at once, it is dropped and the GET answered.
#[test]
fn trickled_discarded_body_gets_408() {
    let (_d, srv) = start("header_read_timeout = \"2s\"");
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let t0 = Instant::now();
    s.write_all(
        format!("GET {SEG} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").as_bytes(),
    )
    .expect("head");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let cut = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no answer after {:?}",
            t0.elapsed()
        );
        let _ = s.write_all(b"a");
        match s.read(&mut buf) {
            Ok(0) => break t0.elapsed(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break t0.elapsed(),
        }
    };
    assert_eq!(raw_status(&out), 408, "{}", String::from_utf8_lossy(&out));
    assert!(cut < Duration::from_secs(5), "closed after {cut:?}");

    let mut req = format!(
        "GET {SEG} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&[b'a'; 1000]);
    let out = raw(srv.addr, &req, Duration::from_secs(5));
    assert_eq!(
        raw_status(&out),
        200,
        "{}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
}

/// A request line longer than the whole head may be is a target too long (414, RFC 9112
/// §3), not a header section too large (431); a long header is still 431.
#[test]
fn a_request_line_past_the_head_limit_is_414() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let status = |req: String| {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(req.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        raw_status(&out)
    };
    let long = format!("/vod/{}.ts", "a".repeat(20_000));
    assert_eq!(
        status(format!("GET {long} HTTP/1.1\r\nHost: t\r\n\r\n")),
        414
    );
    let big = "b".repeat(20_000);
    assert_eq!(
        status(format!(
            "GET {SEG} HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n"
        )),
        431
    );
    assert_eq!(
        status(format!(
            "GET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )),
        200
    );
}

/// Absolute-form request targets (RFC 9112 §3.2.2: a server must accept them) on the fast
/// path: `OPTIONS http://host[:port]` is `OPTIONS *` (§3.2.4), another method's empty path is
/// `/`, the scheme is case-insensitive, and a `/` in the query does not start the path. (Over
/// TLS, hyper's parser reads these the same way: `tls::options_absolute_form_is_asterisk_over_tls`.)
#[test]
fn absolute_form_targets() {
    let (_d, srv) = start("");
    let send = |line: &str| -> String {
        let req = format!("{line} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&raw(srv.addr, req.as_bytes(), Duration::from_secs(5))).into_owned()
    };
    let star = send("OPTIONS *");
    assert!(star.starts_with("HTTP/1.1 204"), "{star}");
    let host = srv.addr.to_string();
    for target in [
        format!("http://{host}"),
        format!("HTTP://{host}"),
        "http://t".to_string(),
    ] {
        let r = send(&format!("OPTIONS {target}"));
        assert!(r.starts_with("HTTP/1.1 204"), "OPTIONS {target}: {r}");
        assert!(
            r.contains("allow: GET, HEAD, OPTIONS"),
            "OPTIONS {target}: {r}"
        );
    }
    // An empty path with a query, or for GET, is `/`: answered like `/` (no object there).
    assert_eq!(raw_status(send("OPTIONS http://t?x").as_bytes()), 204);
    assert_eq!(raw_status(send("GET /").as_bytes()), 404);
    assert_eq!(
        raw_status(send(&format!("GET http://{host}")).as_bytes()),
        404
    );
    // The object, with the scheme in any case.
    for scheme in ["http", "HTTP", "Https"] {
        let r = send(&format!("GET {scheme}://t{SEG}"));
        assert_eq!(raw_status(r.as_bytes()), 200, "{scheme}: {r}");
    }
    // `http://t?/vod/…`: the path is empty and the rest is the query, so not the object.
    assert_eq!(
        raw_status(send(&format!("GET http://t?{SEG}")).as_bytes()),
        404
    );
    // No host: 400. Userinfo: 400 (RFC 9110 §4.2.4: a recipient treats it as an error).
    assert_eq!(
        raw_status(send(&format!("GET http://{SEG}")).as_bytes()),
        400
    );
    assert_eq!(
        raw_status(send(&format!("GET http://user:pw@t{SEG}")).as_bytes()),
        400
    );
}
