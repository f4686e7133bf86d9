//! Test harness: start the real `segd` binary on ephemeral loopback ports with temp volumes, and
//! talk to it over TCP with hyper's client (HTTP/1.1 and h2c) or raw bytes.

#![allow(dead_code)]

pub mod h2raw;
mod moto;
mod weed;
// Not every test target that includes this harness starts moto.
#[allow(unused_imports)]
pub use moto::*;
pub use weed::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const BIN: &str = env!("CARGO_BIN_EXE_segd");

/// The repository's demo corpus.
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo")
}

/// Copies a directory tree (files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// A filesystem (a tmpfs, or a bind mount) mounted over a directory for one test, unmounted
/// (lazily) when dropped, also on a panic. Mounting needs root: callers check
/// [`may_mount`] first and skip, saying so.
pub struct Mount(PathBuf);

/// Whether this process may mount filesystems (runs as root).
pub fn may_mount() -> bool {
    rustix::process::geteuid().is_root()
}

impl Mount {
    fn run(args: &[&str], at: &Path) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(args)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }

    /// A tmpfs of `size` (`mount -o size=`) at `at`; `None` if mounting failed.
    pub fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        Mount::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], at)
    }

    /// A fresh ext4 filesystem in the image file `img` (`size`, e.g. "16M"), loop-mounted at
    /// `at` with `options`; `None` if any step failed (no loop devices, no mkfs.ext4).
    pub fn ext4_image(img: &Path, size: &str, at: &Path, options: &str) -> Option<Mount> {
        let made = Command::new("truncate")
            .args(["-s", size])
            .arg(img)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(img)
                .status()
                .is_ok_and(|s| s.success());
        let img = img.to_str()?;
        made.then(|| Mount::run(&["-o", &format!("loop,{options}"), img], at))?
    }

    /// Directory `from` bind-mounted at `at`; `None` if mounting failed.
    pub fn bind(from: &Path, at: &Path) -> Option<Mount> {
        let from = from.to_str().expect("utf-8 path");
        Mount::run(&["--bind", from], at)
    }

    pub fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -o remount,{opts} {:?}", self.0);
    }

    /// `umount -l` now (what an operator, or a failing disk's udev rule, does under a running
    /// server): the filesystem stays reachable through descriptors already open on it.
    pub fn unmount_lazily(self) {
        let st = Command::new("umount").arg("-l").arg(&self.0).status();
        assert!(st.is_ok_and(|s| s.success()), "umount -l {:?}", self.0);
        std::mem::forget(self);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A temp dir with two volumes holding a copy of the demo corpus (t1 on disk1, t2 on disk2).
pub fn demo_volumes() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&demo_dir().join("disk1"), &dir.path().join("disk1"));
    copy_tree(&demo_dir().join("disk2"), &dir.path().join("disk2"));
    dir
}

/// A config with ephemeral ports, fast health checks, and `volumes` (name = dir name).
/// `SEGD_TEST_IO_BACKEND=threads` runs the whole suite on the fallback I/O backend.
pub fn config_for(volumes: &[&Path], extra: &str) -> String {
    let backend = std::env::var("SEGD_TEST_IO_BACKEND").unwrap_or_else(|_| "auto".into());
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nvolume_check_interval = \"200ms\"\ndrain_timeout = \"10s\"\nio_backend = \"{backend}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n",
    );
    for v in volumes {
        let name = v.file_name().and_then(|n| n.to_str()).unwrap_or("vol");
        s.push_str(&format!(
            "[[volumes]]\nname = \"{name}\"\npath = \"{}\"\n\n",
            v.display()
        ));
    }
    s.push_str(extra);
    s
}

/// `segd serve` on the shipped demo config (`config/segd.toml`) on ephemeral ports, with
/// `extra` appended (sections of its own, e.g. `[tls]`), and the three signed URLs its banner
/// prints.
pub fn demo_server(extra: &str) -> (Server, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/segd.toml")).expect("demo config");
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace(
            "\"demo/",
            &format!("\"{}/", root.join("config/demo").display()),
        )
        + extra;
    let srv = Server::start(&text);
    // The banner's last lines may still be on their way through the reader thread.
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

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The first TLS listener, if the config has one.
    pub tls_addr: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub stderr: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Writes `config` to a temp file and runs `segd serve` on it; waits for the banner.
    pub fn start(config: &str) -> Server {
        Server::start_with(config, |c| c)
    }

    /// Like `start`, with a hook to adjust the command (environment, inherited descriptors).
    pub fn start_with(config: &str, adjust: impl FnOnce(&mut Command) -> &mut Command) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segd.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("SEGD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn segd");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let err_buf = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                if let Ok(mut b) = err_buf.lock() {
                    b.push_str(&line);
                    b.push('\n');
                }
            }
        });
        let out_pipe = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let out_buf = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                if let Ok(mut b) = out_buf.lock() {
                    b.push_str(&line);
                    b.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut addr, mut admin, mut tls_addr) = (None, None, None);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                    panic!("segd did not print its banner; stderr:\n{err}");
                }
            };
            if let Some(rest) = line.split("listening http://").nth(1) {
                addr.get_or_insert(
                    rest.split_whitespace()
                        .next()
                        .expect("addr")
                        .parse()
                        .expect("addr"),
                );
            }
            if let Some(rest) = line.split("listening https://").nth(1) {
                tls_addr.get_or_insert(
                    rest.split_whitespace()
                        .next()
                        .expect("addr")
                        .parse()
                        .expect("addr"),
                );
            }
            if let Some(rest) = line.split("admin http://").nth(1) {
                admin = Some(
                    rest.split_whitespace()
                        .next()
                        .expect("addr")
                        .parse()
                        .expect("addr"),
                );
            }
        }
        Server {
            child,
            addr: addr.expect("listening line"),
            tls_addr,
            admin: admin.expect("admin line"),
            config: path,
            stderr,
            stdout,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The log so far, once it contains every one of `needles` (the reader thread may lag the
    /// event that wrote the line by a moment); panics with the whole log after 5 s.
    pub fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.stderr();
            if needles.iter().all(|n| log.contains(n)) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("log never showed {needles:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request with hyper's client; `h2` selects HTTP/2 with prior knowledge (h2c).
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], h2: bool) -> Resp {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Empty<Bytes>>();
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, false).await
}

/// Sends a request whose body the server may refuse before reading it (413 and close): the
/// bytes are written from another thread, a write that fails once the server has closed is
/// not an error, and what the server answered is read until it closes (or 10 s pass).
pub fn raw_refused(addr: SocketAddr, bytes: Vec<u8>) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends raw bytes and reads until the server closes or `timeout` passes.
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// The status code of the first response in raw bytes.
pub fn raw_status(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One `GET path` with `Connection: close` over raw TCP (for targets a URI type would reject).
pub fn raw_get(addr: SocketAddr, target: &str) -> Vec<u8> {
    let req = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes(), Duration::from_secs(5))
}

/// Value of a sample in Prometheus text, e.g. `segd_volume_healthy{volume="disk2"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Value of the sample of `name` whose labels include every `(label, value)` pair.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Bytes placed next to the volumes by [`traversal_fixture`]: a response containing them escaped.
pub const OUTSIDE_SECRET: &str = "TOP-SECRET-OUTSIDE-THE-VOLUME";

/// Puts a secret next to `dir/disk1` and symlinks out of (and within) it, for
/// [`traversal_targets`].
pub fn traversal_fixture(dir: &Path) {
    // A file next to the volumes, reachable only by escaping.
    std::fs::write(dir.join("secret.ts"), OUTSIDE_SECRET).expect("write");
    std::fs::write(dir.join("disk1/.hidden.ts"), OUTSIDE_SECRET).expect("write");
    std::os::unix::fs::symlink(dir.join("secret.ts"), dir.join("disk1/vod/t1/link.ts"))
        .expect("symlink");
    std::os::unix::fs::symlink(dir, dir.join("disk1/vod/up")).expect("symlink");
    std::os::unix::fs::symlink("hls/64k/seg_00001.ts", dir.join("disk1/vod/t1/inside.ts"))
        .expect("symlink");
}

/// More than 60 request targets that try to leave a volume (after [`traversal_fixture`]).
pub fn traversal_targets() -> Vec<String> {
    let long_dots = format!("/{}secret.ts", "../".repeat(200));
    let long_seg = format!("/vod/{}/../../secret.ts", "a".repeat(3000));
    [
        "/../secret.ts",
        "/vod/../../secret.ts",
        "/vod/t1/../../../secret.ts",
        "/%2e%2e/secret.ts",
        "/%2E%2E/secret.ts",
        "/%2e./secret.ts",
        "/.%2e/secret.ts",
        "/%2e%2E/secret.ts",
        "/vod/%2e%2e/%2e%2e/secret.ts",
        "/vod/t1/%2e%2e%2f%2e%2e%2fsecret.ts",
        "/%252e%252e/secret.ts",
        "/%252e%252e%252fsecret.ts",
        "/%25252e%25252e/secret.ts",
        "/vod%2f..%2f..%2fsecret.ts",
        "/vod%2F..%2F..%2Fsecret.ts",
        "/vod/..%2fsecret.ts",
        "/vod/..%2Fsecret.ts",
        "/..%5csecret.ts",
        "/..%5Csecret.ts",
        "/vod/..%5c..%5csecret.ts",
        "/vod\\..\\..\\secret.ts",
        "/..\\secret.ts",
        "/%c0%ae%c0%ae/secret.ts",
        "/%c0%2e%c0%2e/secret.ts",
        "/%e0%80%ae%e0%80%ae/secret.ts",
        "/%f0%80%80%ae%f0%80%80%ae/secret.ts",
        "/%c0%af../secret.ts",
        "/..%c0%afsecret.ts",
        "/..%c1%9csecret.ts",
        "/%uff0e%uff0e/secret.ts",
        "/%ef%bc%8e%ef%bc%8e/secret.ts",
        "/vod/t1/link.ts",
        "/vod/up/secret.ts",
        "/vod/up/./secret.ts",
        "/vod/up/%73ecret.ts",
        "/.hidden.ts",
        "/%2ehidden.ts",
        "/vod/%00/../secret.ts",
        "/vod/%00.ts",
        "/secret.ts%00.ts",
        "/secret.ts%00",
        "/vod/%0a../secret.ts",
        "/vod/%0d%0a/secret.ts",
        "/vod/%09../secret.ts",
        "//secret.ts",
        "///secret.ts",
        "/vod//../secret.ts",
        "/vod/.//../secret.ts",
        "/./secret.ts",
        "/vod/./../secret.ts",
        "/vod/t1/hls/64k/seg_00001.ts/../../../../../secret.ts",
        "http://evil/../secret.ts",
        "http://evil/%2e%2e/secret.ts",
        "https://evil/../secret.ts",
        "/%2fsecret.ts",
        "/%2f%2fsecret.ts",
        "/vod/%2f..%2f..%2f..%2fetc%2fpasswd",
        "/../../../../../../etc/passwd",
        "/vod/t1/hls/../../../../../../../etc/passwd",
        "/etc/passwd",
        "/proc/self/environ",
        "/vod/t1/../../proc/self/cwd/secret.ts",
        "/.git/config",
        "/vod/.ssh/id_rsa",
        "/%2e/secret.ts",
        "/vod/..;/secret.ts",
        "/vod/...../secret.ts",
        "/vod/..../secret.ts",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long_dots, long_seg])
    .collect()
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An EdgeAuth v2 token (sha256, `[token]`'s defaults) signed with `key` (hex) for the ACL `acl`,
/// valid for an hour.
pub fn token_with_key(key: &str, acl: &str) -> String {
    segd::auth::edgeauth::sign(
        segd::config::TokenAlgorithm::Sha256,
        &hex::decode(key).expect("hex key"),
        &segd::auth::edgeauth::SignSpec {
            acl: Some(acl),
            exp: now() + 3600,
            ..Default::default()
        },
    )
}

/// `path` with the token in the query.
/// Sleeps until about 50 ms into the next second of the clock, so that what follows (two
/// writes, a read between them) happens within one second, as `Last-Modified` counts them.
pub fn early_in_a_second() {
    let into_second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(
        1050 - into_second.min(1000),
    )));
}

pub fn q(path: &str, token: &str) -> String {
    format!("{path}?__token__={}", segd::auth::encode_token(token))
}

/// `path` with the token as its first path segment (the form ffmpeg needs).
pub fn p(path: &str, token: &str) -> String {
    format!("/__token__={}{path}", segd::auth::encode_token(token))
}

/// One request with a body over hyper's client (`h2`: HTTP/2 prior knowledge, i.e. h2c).
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    h2: bool,
) -> Resp {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<http_body_util::Full<Bytes>>();
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(http_body_util::Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// `name` on `PATH`, else the first of `fallbacks` that exists.
pub fn find_program(name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .chain(fallbacks.iter().cloned())
        .find(|p| p.is_file())
}

/// An HTTP/2 (prior knowledge) client connection to `addr`, its driver spawned (the handle
/// ends when the connection does).
pub async fn h2c(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (client, tokio::spawn(conn))
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// `streams` requests for `path` on one h2c connection that grants no flow-control window
/// (`SETTINGS_INITIAL_WINDOW_SIZE` 0): their heads, with the bodies left untaken (held until
/// the returned values are dropped).
pub async fn h2c_zero_window_gets(
    addr: SocketAddr,
    path: &str,
    streams: usize,
) -> (
    Vec<h2::RecvStream>,
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let mut heads = Vec::new();
    for _ in 0..streams {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        heads.push(resp);
        client = client.ready().await.expect("ready");
    }
    let mut bodies = Vec::new();
    for h in heads {
        let resp = h.await.expect("response head");
        assert_eq!(resp.status(), 200, "{path}");
        bodies.push(resp.into_body());
    }
    (bodies, client, driver)
}

/// Every temporary file under `root`: the `.segd-tmp-*` files, and the unnamed ones
/// (`O_TMPFILE`, what uploads use) that a process holds open, as `/proc/PID/fd` shows them
/// (`<dir>/#<inode> (deleted)`). An unnamed file lives as long as a descriptor of it: one a
/// process still holds after its upload ended is a leak, and counts.
pub fn tmp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = unnamed_tmp_files(root);
    out.extend(named_tmp_files(root));
    out
}

/// The bytes written so far to the temporary files under `root` (see [`tmp_files`]).
pub fn tmp_bytes(root: &Path) -> u64 {
    let named: u64 = named_tmp_files(root)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    named
        + unnamed_tmp_fds(root)
            .iter()
            .map(|(_, len)| len)
            .sum::<u64>()
}

/// The unnamed temporary files under `root` some process holds open (see [`tmp_files`]).
pub fn unnamed_tmp_files(root: &Path) -> Vec<PathBuf> {
    unnamed_tmp_fds(root).into_iter().map(|(p, _)| p).collect()
}

/// [`unnamed_tmp_files`], each with its size.
fn unnamed_tmp_fds(root: &Path) -> Vec<(PathBuf, u64)> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            let unnamed = t.strip_suffix(" (deleted)").is_some_and(|t| {
                t.rsplit_once("/#")
                    .is_some_and(|(_, ino)| ino.bytes().all(|b| b.is_ascii_digit()))
            });
            // A committed one keeps that name in `/proc` while a descriptor of it is open
            // (a reader's): it has a link now.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let linked = std::os::unix::fs::MetadataExt::nlink(&meta) > 0;
            if unnamed
                && !linked
                && target.starts_with(&root)
                && !out.iter().any(|(p, _)| *p == target)
            {
                out.push((target, meta.len()));
            }
        }
    }
    out
}

/// Every `.segd-tmp-*` file under `root`.
pub fn named_tmp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if e
                .file_name()
                .to_string_lossy()
                .starts_with(segd::store::write::TEMP_PREFIX)
            {
                out.push(path);
            }
        }
    }
    out
}
