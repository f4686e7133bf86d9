//! The PROXY protocol behind a real HAProxy in TCP mode (`send-proxy`, `send-proxy-v2`, TLS
//! passed through to segd): the client's address reaches IP-bound tokens and the access log, a
//! listed balancer that sends no header is refused, and nobody else can claim an address.
//!
//! Clients connect from chosen loopback addresses (all of 127.0.0.0/8 is local), so "the
//! client" and "the balancer" are different addresses on one machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const SEG: &str = "/vod/t1/hls/64k/seg_00001.ts";
const KEY: &str = "52a152a152a152a152a152a152a152a1";
/// The client the tokens are bound to, and another one.
const VIEWER: &str = "127.0.0.55";
const OTHER: &str = "127.0.0.66";

struct Haproxy {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in TCP mode with three frontends on `ports`: version 2 headers to segd's plaintext
/// listener (with health checks, which send a `LOCAL` header), version 1 headers to it, and
/// version 2 headers to segd's TLS listener (TLS ends in segd).
fn haproxy(ports: &[u16], plain: SocketAddr, tls: SocketAddr) -> Haproxy {
    let bin = find_program("haproxy", &[PathBuf::from("/usr/sbin/haproxy")])
        .expect("haproxy is not installed (Debian haproxy; .ci/run installs it)");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("haproxy.cfg");
    let log = dir.path().join("haproxy.log");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  log global\n  \
             timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend v2\n  bind 127.0.0.1:{}\n  default_backend v2\n\
             frontend v1\n  bind 127.0.0.1:{}\n  default_backend v1\n\
             frontend tls\n  bind 127.0.0.1:{}\n  default_backend tls\n\
             backend v2\n  server segd {plain} send-proxy-v2 check inter 200ms\n\
             backend v1\n  server segd {plain} send-proxy\n\
             backend tls\n  server segd {tls} send-proxy-v2\n",
            ports[0], ports[1], ports[2]
        ),
    )
    .expect("haproxy.cfg");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("spawn haproxy");
    let deadline = Instant::now() + Duration::from_secs(15);
    while ports
        .iter()
        .any(|p| TcpStream::connect(("127.0.0.1", *p)).is_err())
    {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!(
                "haproxy did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy {
        child,
        log,
        _dir: dir,
    }
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: SocketAddr = format!("{from}:0").parse().expect("source");
    s.bind(&src.into()).expect("bind the client's address");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Raw `bytes` from `from` to `to`; what came back before the server closed.
fn exchange_from(from: &str, to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect_from(from, to);
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn get_from(from: &str, to: SocketAddr, target: &str, rid: &str) -> u16 {
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
    );
    raw_status(&exchange_from(from, to, req.as_bytes()))
}

/// The access log's JSON line for request id `rid`, once it is there.
fn log_line(log: &std::path::Path, rid: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&format!("\"{rid}\""))) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no log line for {rid}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key).map(|i| i + key.len()).unwrap_or(0);
    let end = line[start..].find('"').map_or(start, |e| start + e);
    &line[start..end]
}

#[tokio::test]
async fn proxy_protocol_from_haproxy_names_the_client_and_nobody_else_can() {
    let vols = demo_volumes();
    let access = vols.path().join("access.log");
    let extra = format!(
        "[token]\nprotect = [\"/vod/\"]\n[[token.keys]]\nid = \"k1\"\nsecret = \"{KEY}\"\n\
         [log]\naccess = \"{}\"\nformat = \"json\"\n",
        access.display()
    );
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-pp");
    let config = config_for(
        &[&vols.path().join("disk1")],
        &(crate::tls::tls_config(vols.path(), &cert, &key) + &extra),
    )
    .replace("[admin]", "proxy_protocol = [\"127.0.0.1/32\"]\n\n[admin]");
    let srv = Server::start(&config);
    let tls_addr = srv.tls_addr.expect("tls listener");
    let ports = free_ports(3);
    let lb = haproxy(&ports, srv.addr, tls_addr);
    let (v2, v1, tls) = (
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        SocketAddr::from(([127, 0, 0, 1], ports[1])),
        SocketAddr::from(([127, 0, 0, 1], ports[2])),
    );
    // A token bound to the viewer's address.
    let token = segd::auth::edgeauth::sign(
        segd::config::TokenAlgorithm::Sha256,
        &hex::decode(KEY).expect("hex key"),
        &segd::auth::edgeauth::SignSpec {
            acl: Some("/vod/*"),
            ip: Some(VIEWER),
            exp: now() + 3600,
            ..Default::default()
        },
    );
    let target = q(SEG, &token);

    // Through HAProxy, both header versions: segd sees the viewer, not the balancer.
    for (name, lb_addr) in [("v2", v2), ("v1", v1)] {
        let rid = format!("pp-{name}-viewer");
        assert_eq!(
            get_from(VIEWER, lb_addr, &target, &rid),
            200,
            "{name}: the viewer's IP-bound token, through the balancer"
        );
        let line = log_line(&access, &rid);
        assert_eq!(field(&line, "client"), VIEWER, "{line}");
        assert!(field(&line, "peer").starts_with(VIEWER), "{line}");
        let rid = format!("pp-{name}-other");
        assert_eq!(
            get_from(OTHER, lb_addr, &target, &rid),
            403,
            "{name}: another client with the viewer's token"
        );
        assert_eq!(field(&log_line(&access, &rid), "client"), OTHER);
    }

    // TLS passed through to segd (HTTP/2 by ALPN), the header before the ClientHello.
    let client = pki.client(&[&rustls::version::TLS13], &[b"h2"]);
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{VIEWER}:0").parse().expect("source"))
        .expect("bind the viewer's address");
    let tcp = sock.connect(tls).await.expect("connect");
    let stream = client
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("TLS handshake through the balancer");
    let r = crate::tls::send(stream, "GET", &target, &[("x-request-id", "pp-tls-viewer")]).await;
    assert_eq!(r.status, 200, "h2 over TLS through the balancer");
    let line = log_line(&access, "pp-tls-viewer");
    assert_eq!(field(&line, "client"), VIEWER, "{line}");
    assert!(line.contains("\"proto\":\"h2\""), "{line}");

    // Straight to segd from an address not listed: no header is read, the peer is the client.
    assert_eq!(get_from(VIEWER, srv.addr, &target, "pp-direct"), 200);
    // A forged header from there is no header: an HTTP request line segd does not accept, and
    // the address it names is never the client.
    let forged = format!(
        "PROXY TCP4 {OTHER} 127.0.0.1 4000 80\r\nGET {target} HTTP/1.1\r\nHost: t\r\n\
         X-Request-Id: pp-forged\r\nConnection: close\r\n\r\n"
    );
    let resp = exchange_from(VIEWER, srv.addr, forged.as_bytes());
    let status = raw_status(&resp);
    assert!(
        (400..500).contains(&status) || status == 501,
        "a forged PROXY line is refused as a request: {}",
        String::from_utf8_lossy(&resp)
    );
    let text = std::fs::read_to_string(&access).unwrap_or_default();
    assert!(
        !text.contains("pp-forged"),
        "the forged request was served:\n{text}"
    );

    // The balancer's address without a header (a misconfigured balancer, or something else
    // on its host): closed before any answer, counted.
    let resp = exchange_from(
        "127.0.0.1",
        srv.addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(
        resp.is_empty(),
        "a listed balancer's connection without a header got an answer: {}",
        String::from_utf8_lossy(&resp)
    );
    let metrics = get(&srv.admin_url("/metrics"), &[]).await.text();
    let refused = |reason: &str| {
        metric_with(
            &metrics,
            "segd_proxy_protocol_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(refused("malformed"), Some(1.0), "{metrics}");
    // HAProxy's health checks (a version 2 `LOCAL` header, then nothing) were taken as such:
    // refused none, and the server is up in HAProxy's view.
    assert_eq!(refused("closed"), Some(0.0));
    assert_eq!(refused("timeout"), Some(0.0));
    let hlog = std::fs::read_to_string(&lb.log).unwrap_or_default();
    assert!(
        !hlog.contains("is DOWN"),
        "HAProxy's health checks failed against segd:\n{hlog}"
    );

    // A balancer's connection still waiting for its header holds no drain up: SIGTERM ends the
    // process well before header_read_timeout (10 s) would have closed it.
    drop(lb);
    let _silent = connect_from("127.0.0.1", srv.addr);
    std::thread::sleep(Duration::from_millis(100));
    let mut srv = srv;
    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited {:?} for a connection with no header",
        started.elapsed()
    );
}

/// A balancer that opens a connection and sends its header slowly (in pieces), or not at all,
/// costs segd a timer: the header is waited for up to `header_read_timeout`, then the
/// connection is closed and counted, and every other connection is served meanwhile.
#[tokio::test]
async fn proxy_protocol_header_in_pieces_is_waited_for_and_a_silent_one_times_out() {
    let vols = demo_volumes();
    let config = config_for(&[&vols.path().join("disk1")], "").replace(
        "[admin]",
        "proxy_protocol = [\"127.0.0.1\"]\nheader_read_timeout = \"1s\"\n\n[admin]",
    );
    let srv = Server::start(&config);

    // In three pieces, 100 ms apart, then the request.
    let mut s = connect_from("127.0.0.1", srv.addr);
    for piece in [
        &b"PROXY TCP4 "[..],
        b"192.0.2.44 127.0.0.1 ",
        b"5000 80\r\n",
    ] {
        s.write_all(piece).expect("write");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Meanwhile another balancer connection is served at once.
    let other = exchange_from(
        "127.0.0.1",
        srv.addr,
        format!("PROXY TCP4 192.0.2.45 127.0.0.1 5001 80\r\nGET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(raw_status(&other), 200);
    s.write_all(format!("GET {SEG} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(raw_status(&out), 200, "{}", String::from_utf8_lossy(&out));

    // Silent: closed after header_read_timeout.
    let started = Instant::now();
    let mut s = connect_from("127.0.0.1", srv.addr);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let waited = started.elapsed();
    assert!(out.is_empty());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    let metrics = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric_with(
            &metrics,
            "segd_proxy_protocol_refused_total",
            &[("reason", "timeout")]
        ),
        Some(1.0),
        "{metrics}"
    );

    // A reload that takes the balancer off the list applies to the next connection: a plain
    // request from its address is served.
    assert_eq!(
        raw_status(&raw_get(srv.addr, SEG)),
        0,
        "still expects a header"
    );
    std::fs::write(
        &srv.config,
        config.replace("proxy_protocol = [\"127.0.0.1\"]\n", ""),
    )
    .expect("rewrite config");
    srv.signal(libc::SIGHUP);
    srv.log_with(&["configuration reloaded"]);
    assert_eq!(raw_status(&raw_get(srv.addr, SEG)), 200);
}
