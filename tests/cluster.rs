//! The cluster (`docs/cluster.md`, issue 15): three segd nodes on 127.0.0.2, .3 and .4 (each
//! with its own volume, a pull cache, and the bucket as `[[pull.upstreams]]`), a real S3 bucket
//! (SeaweedFS `weed mini`) holding the catalogue, and HAProxy in front running the shipped
//! `config/haproxy/segd.cfg` unchanged (its addresses come from the environment). The catalogue
//! is `ASSETS` assets of three files each in directories of different depths; every request
//! carries a playback token, as a path segment (a different one per viewer) or in the query.
//!
//! Which node answered a request is read from the nodes' JSON access logs: every request the
//! tests send carries a unique `X-Request-Id`, which segd logs. Where segd accepts
//! `[server] served_by`, the nodes are named and every `X-Served-By` is checked against the logs
//! too.
//!
//! - placement: every request for an asset (each file; path tokens of two viewers; a query
//!   token) lands on one node, and the three nodes share the catalogue; live paths (HAProxy's
//!   pinned backend) stay on one node even when requested all at once; the same through nginx
//!   running the shipped `config/nginx/segd-cluster.conf` (addresses swapped in)
//! - uploads through HAProxy land on their asset's node even while reads keep the nodes busy
//!   (a new file of an existing asset; eight files of a new asset uploaded at once)
//! - live reads are never replayed on another node: a stalled stream's preload hint and
//!   blocking reload get their node's 503, not another node's 404 (HAProxy and nginx)
//! - node loss under load: six clients (keep-alive and new connections) GET random files while
//!   one node is SIGKILLed and later restarted: no failed request for the other nodes' assets;
//!   for the killed node's, no more than one per client (a response cut mid-body is the one
//!   thing HAProxy cannot retry; the goal and the usual result is zero); the nodes that take over
//!   serve them by pulling from the bucket; back up, the node gets its assets back
//! - a hung node (SIGSTOP) under load: no failed read, none slower than the balancers' VOD read
//!   timeout (5 s) plus a retry, through HAProxy and through nginx
//! - a node's disk failing (EIO): what the bucket holds is still served, same bytes and ETag
//! - the bucket hung (SIGSTOP): cached objects keep playing, a miss is segd's 504 after
//!   `first_byte_timeout`, before HAProxy's read timeout, and is not retried on other nodes
//! - live requests moved off a killed node to one that never saw the stream: 503 with
//!   `Retry-After`, not 404 (`[live] unknown_stream_retry_after`)
//! - writes to a node killed a moment ago land on the node that owns the asset once it is out
//!   (the pinned backend redispatches on its last retry only), never split over two nodes
//! - write-through, durability "upstream": the node holding a fresh upload is SIGKILLed right
//!   after its 201 and the object is still read through HAProxy (another node pulls it); a
//!   DELETE while the node's pull of the object is still under way leaves no copy; a read on
//!   another node before the upload (404) is not remembered after the 201
//! - write-through, durability "local": a read on another node before the queue drained (404)
//!   is not remembered: once the bucket has the object, that node serves it
//! - write-through, durability "local": the queue drains (`segd_write_through_backlog` back to 0)
//!   and survives a kill -9 taken while the bucket was unreachable
//! - same validators: an object ingested on one node and pulled by the other two has one ETag and
//!   one Last-Modified; revalidating against another node gets 304
//! - rolling upgrade (SIGUSR2, a new pid in `pid_file`) and rolling restart (SIGTERM with
//!   `unready_delay`) of all three nodes under load: no failed request
//! - the shipped nginx config passes `nginx -t` and waits as long as HAProxy's for a node's
//!   answer to a write; the HAProxy config refuses to start without the nodes' addresses
//!
//! Tests that need segd features from the cluster contract not yet built (`served_by`,
//! `write_through`, `pid_file`/SIGUSR2, `unready_delay`) fail at start with segd's own "unknown
//! key" error until those land.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use segd::auth::edgeauth::{sign, SignSpec};
use segd::config::TokenAlgorithm;

use crate::util::*;

/// The nodes: name (HAProxy's server name and `served_by`) and loopback address.
const NODES: [(&str, &str); 3] = [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")];
/// Assets in the catalogue (`/vod/cNN/…`), enough for every node to own some.
const ASSETS: usize = 24;
/// The files of each asset, at different depths (the asset key is the first two segments).
const FILES: [&str; 3] = ["init.mp4", "hls/seg_00001.ts", "hls/64k/seg_00002.ts"];
/// Playback key ([token], protects /vod/) and upload key ([ingest]), hex.
const PLAY_KEY: &str = "00112233445566778899aabbccddeeff";
const UPLOAD_KEY: &str = "ffeeddccbbaa99887766554433221100";
/// Clients of the steady load.
const CLIENTS: usize = 6;

// ---------------------------------------------------------------------------------------------
// The catalogue

fn asset_path(asset: usize, file: usize) -> String {
    format!("/vod/c{asset:02}/{}", FILES[file])
}

/// Deterministic bytes, different for every seed, 8–40 KiB.
fn pattern(seed: u32) -> Vec<u8> {
    let len = 8192 + (seed as usize * 7919) % 32768;
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn content(asset: usize, file: usize) -> Vec<u8> {
    pattern((asset * FILES.len() + file) as u32 + 1)
}

/// Every file's bytes, indexed `[asset][file]`.
fn catalogue() -> Arc<Vec<Vec<Vec<u8>>>> {
    Arc::new(
        (0..ASSETS)
            .map(|a| (0..FILES.len()).map(|f| content(a, f)).collect())
            .collect(),
    )
}

/// A playback token for `/vod/*`; `viewer` makes it differ per viewer (its `id` field).
fn play_token(viewer: usize) -> String {
    let id = format!("viewer-{viewer}");
    sign(
        TokenAlgorithm::Sha256,
        &hex::decode(PLAY_KEY).expect("hex"),
        &SignSpec {
            acl: Some("/vod/*"),
            exp: now() + 3600,
            id: Some(&id),
            ..Default::default()
        },
    )
}

fn upload_token() -> String {
    token_with_key(UPLOAD_KEY, "/*")
}

// ---------------------------------------------------------------------------------------------
// Small helpers

static REQUEST_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A request id no other request of this run carries (segd logs it as `request_id`).
fn rid(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        REQUEST_IDS.fetch_add(1, Ordering::Relaxed)
    )
}

/// A string field of a JSON access-log line.
fn json_field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let key = format!("\"{name}\":\"");
    let rest = &line[line.find(&key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A keep-alive client, or one that opens a new connection for every request.
fn client(keep_alive: bool) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    if !keep_alive {
        b.pool_max_idle_per_host(0);
    }
    b.build_http()
}

/// A response, or what went wrong (connection error, reset, aborted body, timeout).
async fn try_get(
    c: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let mut b = http::Request::builder().method("GET").uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = c
            .request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| {
                let by = header(&parts.headers, "x-served-by").unwrap_or_else(|| "-".into());
                format!("status {}, served by {by}, body: {e:?}", parts.status)
            })?
            .to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

fn header(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Polls `f` (blocking) every 50 ms for up to `timeout`.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// A segd node

/// Per-cluster node settings beyond the common ones.
#[derive(Clone, Default)]
struct Opts {
    /// `[server] pid_file` in the node's directory.
    pid_file: bool,
    /// `[server] unready_delay`.
    unready_delay: Option<&'static str>,
    /// Lines added to `[ingest]` (write-through).
    ingest: &'static str,
    /// Lines of a `[live]` section (live prefix `/live/`, ingested like `/vod/`).
    live: &'static str,
    /// More `[[pull.upstreams]]`, after the bucket.
    upstreams: &'static str,
    /// `[token] name` on the nodes, and `SEGD_TOKEN_NAME` for HAProxy.
    token_name: Option<&'static str>,
    /// `[pull] negative_ttl` (default "1s").
    negative_ttl: Option<&'static str>,
    /// HAProxy in master-worker mode (`-W`), as Debian's unit runs it: reloadable by SIGUSR2
    /// to the master.
    lb_master_worker: bool,
}

struct Node {
    name: &'static str,
    ip: &'static str,
    port: u16,
    admin_port: u16,
    /// The node's own directory: `disk/` (its volume), `cache/` (pull cache), `access.log`,
    /// `segd.pid`.
    dir: PathBuf,
    opts: Opts,
    /// The S3 endpoint of its `bucket` upstream (a dead one in one test).
    bucket: String,
    secret_file: PathBuf,
    served_by: bool,
    srv: Option<Server>,
    /// Every config file a process of this node was started with (an upgraded process keeps
    /// its predecessor's command line): how `Drop` recognises ours.
    configs: Vec<PathBuf>,
}

impl Node {
    fn config(&self) -> String {
        let backend = std::env::var("SEGD_TEST_IO_BACKEND").unwrap_or_else(|_| "auto".into());
        let d = self.dir.display();
        let mut server = format!(
            "listen = [\"{ip}:{port}\"]\nworkers = 2\nvolume_check_interval = \"200ms\"\ndrain_timeout = \"10s\"\nio_backend = \"{backend}\"\n",
            ip = self.ip,
            port = self.port,
        );
        if self.served_by {
            server.push_str(&format!("served_by = \"{}\"\n", self.name));
        }
        if self.opts.pid_file {
            server.push_str(&format!("pid_file = \"{d}/segd.pid\"\n"));
        }
        if let Some(delay) = self.opts.unready_delay {
            server.push_str(&format!("unready_delay = \"{delay}\"\n"));
        }
        format!(
            r#"[server]
{server}
[admin]
listen = "{ip}:{admin}"

[[volumes]]
name = "disk"
path = "{d}/disk"

[log]
access = "{d}/access.log"
format = "json"

[token]
protect = ["/vod/"]
{token_name}
[[token.keys]]
id = "play"
secret = "{PLAY_KEY}"

[live]
prefixes = ["/live/"]
{live}

[ingest]
prefixes = ["/vod/", "/live/"]
reserve = "1MiB"
{ingest}
[[ingest.keys]]
id = "up"
secret = "{UPLOAD_KEY}"

[pull]
cache_path = "{d}/cache"
max_bytes = "64MiB"
negative_ttl = "{negative_ttl}"
stale_if_error = "0s"
connect_timeout = "1s"
first_byte_timeout = "4s"
idle_timeout = "4s"

[[pull.upstreams]]
name = "bucket"
s3_endpoint = "{bucket}"
bucket = "{S3_BUCKET}"
region = "{S3_REGION}"
key_prefix = ""
access_key_id = "{S3_ACCESS_KEY}"
secret_access_key_file = "{secret}"
prefixes = ["/vod/"]
{upstreams}
"#,
            ip = self.ip,
            admin = self.admin_port,
            ingest = self.opts.ingest,
            live = self.opts.live,
            upstreams = self.opts.upstreams,
            token_name = self
                .opts
                .token_name
                .map(|n| format!("name = \"{n}\""))
                .unwrap_or_default(),
            bucket = self.bucket,
            secret = self.secret_file.display(),
            negative_ttl = self.opts.negative_ttl.unwrap_or("1s"),
        )
    }

    fn start(&mut self) {
        assert!(self.srv.is_none(), "node {} is running", self.name);
        let srv = Server::start(&self.config());
        self.configs.push(srv.config.clone());
        self.srv = Some(srv);
    }

    fn srv(&self) -> &Server {
        self.srv
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.name))
    }

    /// SIGKILL, and reap it.
    fn kill9(&mut self) {
        if let Some(mut srv) = self.srv.take() {
            srv.signal(libc::SIGKILL);
            let _ = srv.child.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.port)
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}:{}/metrics", self.ip, self.admin_port);
        match try_get(&client(false), &url, &[]).await {
            Ok((_, _, body)) => String::from_utf8_lossy(&body).into_owned(),
            Err(_) => String::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("segd.pid")
    }

    fn pid_in_file(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// The file the node's volume holds for a URL path, if any.
    fn volume_file(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join("disk").join(path.trim_start_matches('/'))).ok()
    }
}

/// Whether `pid` runs a segd started with one of `configs` (so it is ours to stop).
fn is_our_segd(pid: i32, configs: &[PathBuf]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    configs
        .iter()
        .any(|c| cmdline.contains(&c.display().to_string()))
}

impl Drop for Node {
    fn drop(&mut self) {
        // After an upgrade the running process is not our child: stop it by its pid file.
        if let Some(pid) = self.pid_in_file() {
            if is_our_segd(pid, &self.configs) {
                // SAFETY: kill(2) on a pid checked to be a segd this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        self.srv.take();
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy with the shipped config

struct Haproxy {
    child: Child,
    addr: SocketAddr,
    stats: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn shipped_haproxy_cfg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy/segd.cfg")
}

impl Haproxy {
    /// `haproxy -db -f config/haproxy/segd.cfg` with the nodes' addresses in its environment,
    /// logging to a file; returns once it serves its stats page.
    fn start(port: u16, admin_port: u16, token_name: Option<&str>, master_worker: bool) -> Haproxy {
        let bin = find_program("haproxy", &[PathBuf::from("/usr/sbin/haproxy")])
            .expect("haproxy is not installed (Debian haproxy; .ci/run installs it)");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("haproxy.log");
        let ports = free_ports(2);
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().expect("addr");
        let stats: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().expect("addr");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new(bin);
        if let Some(name) = token_name {
            cmd.env("SEGD_TOKEN_NAME", name);
        }
        if master_worker {
            cmd.arg("-W");
        }
        let mut child = cmd
            .arg("-db")
            .arg("-f")
            .arg(shipped_haproxy_cfg())
            .env("SEGD_A_IP", NODES[0].1)
            .env("SEGD_B_IP", NODES[1].1)
            .env("SEGD_C_IP", NODES[2].1)
            .env("SEGD_PORT", port.to_string())
            .env("SEGD_ADMIN_PORT", admin_port.to_string())
            .env("SEGD_LB_BIND", addr.to_string())
            .env("SEGD_LB_STATS_BIND", stats.to_string())
            .env("SEGD_LB_LOG", "stdout")
            .env("SEGD_LB_LOG_FORMAT", "raw")
            .env("SEGD_LB_USER", "")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn haproxy");
        let up = wait_until(Duration::from_secs(15), || {
            TcpStream::connect(stats).is_ok() || child.try_wait().ok().flatten().is_some()
        });
        let exited = child.try_wait().ok().flatten();
        if !up || exited.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "haproxy did not start ({exited:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Haproxy {
            child,
            addr,
            stats,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The rows of `/stats;csv` for the nodes (both backends), as column → value.
    async fn server_rows(&self) -> Vec<HashMap<String, String>> {
        let url = format!("http://{}/stats;csv", self.stats);
        let Ok((200, _, body)) = try_get(&client(false), &url, &[]).await else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let mut lines = text.lines();
        let head: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_string)
            .collect();
        lines
            .map(|l| {
                head.iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_string))
                    .collect()
            })
            .filter(|row: &HashMap<String, String>| {
                row.get("pxname").is_some_and(|p| p.starts_with("segd_"))
                    && row
                        .get("svname")
                        .is_some_and(|s| s != "BACKEND" && s != "FRONTEND")
            })
            .collect()
    }

    /// Each node's state as HAProxy's health checks see it (`UP`, `DOWN`, `UP 1/2` going
    /// down, …).
    async fn statuses(&self) -> BTreeMap<String, String> {
        self.server_rows()
            .await
            .into_iter()
            .filter(|r| r.get("pxname").map(String::as_str) == Some("segd_nodes"))
            .filter_map(|r| Some((r.get("svname")?.clone(), r.get("status")?.clone())))
            .collect()
    }

    /// Waits until no request is in flight to any node (`scur` 0 everywhere). The bounded-load
    /// backend spills a request when its node already has more than its share in flight, and
    /// at a concurrency of one that share is one request: a request sent while HAProxy has not
    /// yet closed the previous one's stream could spill. Placement probes wait for this first.
    async fn quiet(&self) {
        let quiet = eventually(Duration::from_secs(5), async || {
            let rows = self.server_rows().await;
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| r.get("scur").map(String::as_str) == Some("0"))
        })
        .await;
        assert!(
            quiet,
            "requests still in flight: {:?}",
            self.server_rows().await
        );
    }

    /// Waits until HAProxy reports `node` in state `want` (exactly).
    async fn wait_status(&self, node: &str, want: &str, timeout: Duration) -> bool {
        eventually(timeout, async || {
            self.statuses().await.get(node).map(String::as_str) == Some(want)
        })
        .await
    }

    /// Requests HAProxy had to try again (the retries field of its log lines, `+N` when the
    /// last try was redispatched).
    fn retried(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" segd_public "))
            .filter_map(|l| {
                // `… actconn/feconn/beconn/srv_conn/retries srv_queue/backend_queue "GET …"`
                let before_req = l.split(" \"").next()?;
                let counters = before_req.split_whitespace().rev().nth(1)?;
                let retries = counters.rsplit('/').next()?;
                retries.trim_start_matches('+').parse::<usize>().ok()
            })
            .filter(|n| *n > 0)
            .count()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// nginx with the shipped config

fn shipped_nginx_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx/segd-cluster.conf")
}

/// nginx with a main config in `dir` that includes `http_conf` in its http context (as
/// /etc/nginx/conf.d/ files are), everything it writes in `dir`, in the foreground.
fn nginx_command(dir: &Path, http_conf: &Path) -> Command {
    let bin = find_program("nginx", &[PathBuf::from("/usr/sbin/nginx")])
        .expect("nginx is not installed (Debian nginx-light; .ci/run installs it)");
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/b;\n    proxy_temp_path {d}/p;\n    fastcgi_temp_path {d}/f;\n    uwsgi_temp_path {d}/u;\n    scgi_temp_path {d}/s;\n    include {};\n}}\n",
        http_conf.display(),
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    cmd
}

/// nginx running the shipped `segd-cluster.conf` with only its example addresses replaced:
/// the three nodes for the upstream servers, a free loopback port for `listen`.
struct NginxLb {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NginxLb {
    fn start(node_port: u16) -> NginxLb {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_port();
        let mut conf = std::fs::read_to_string(shipped_nginx_conf()).expect("read");
        let mut swap = |from: &str, to: &str| {
            assert_eq!(
                conf.matches(from).count(),
                1,
                "{from:?} in segd-cluster.conf"
            );
            conf = conf.replace(from, to);
        };
        for (i, (_, ip)) in NODES.iter().enumerate() {
            swap(
                &format!("server 10.0.0.1{}:80 ", i + 1),
                &format!("server {ip}:{node_port} "),
            );
        }
        swap("listen 80;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(d.join("segd-cluster.conf"), conf).expect("write");
        let out = std::fs::File::create(d.join("stdout.log")).expect("log");
        let mut child = nginx_command(d, &d.join("segd-cluster.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn nginx");
        let up = wait_until(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || child.try_wait().ok().flatten().is_some()
        });
        let exited = child.try_wait().ok().flatten();
        if !up || exited.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nginx did not start ({exited:?}):\n{}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
        }
        NginxLb {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for NginxLb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

struct Cluster {
    nodes: Vec<Node>,
    lb: Haproxy,
    weed: Weed,
    served_by: bool,
    _dir: tempfile::TempDir,
}

/// A public and an admin port that are free on all three node addresses.
fn cluster_ports() -> (u16, u16) {
    loop {
        let Ok(a) = TcpListener::bind((NODES[0].1, 0)) else {
            continue;
        };
        let Ok(b) = TcpListener::bind((NODES[0].1, 0)) else {
            continue;
        };
        let port = a.local_addr().expect("addr").port();
        let admin = b.local_addr().expect("addr").port();
        let others_free = NODES[1..].iter().all(|(_, ip)| {
            TcpListener::bind((*ip, port)).is_ok() && TcpListener::bind((*ip, admin)).is_ok()
        });
        if others_free {
            return (port, admin);
        }
    }
}

impl Cluster {
    /// The bucket filled with the catalogue, three nodes started, HAProxy in front with every
    /// node UP.
    async fn start(opts: Opts) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = dir.path().join("catalogue");
        for a in 0..ASSETS {
            for f in 0..FILES.len() {
                let p = cat.join(asset_path(a, f).trim_start_matches('/'));
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, content(a, f)).expect("write");
            }
        }
        let weed = Weed::start_filled(&cat, "");
        let served_by = true;
        let (port, admin_port) = cluster_ports();
        let nodes = NODES
            .iter()
            .map(|(name, ip)| {
                let nd = dir.path().join(name);
                std::fs::create_dir_all(nd.join("disk")).expect("mkdir");
                std::fs::create_dir_all(nd.join("cache")).expect("mkdir");
                let mut n = Node {
                    name,
                    ip,
                    port,
                    admin_port,
                    dir: nd,
                    opts: opts.clone(),
                    bucket: weed.endpoint(),
                    secret_file: weed.secret_file(),
                    served_by,
                    srv: None,
                    configs: Vec::new(),
                };
                n.start();
                n
            })
            .collect();
        let lb = Haproxy::start(port, admin_port, opts.token_name, opts.lb_master_worker);
        let c = Cluster {
            nodes,
            lb,
            weed,
            served_by,
            _dir: dir,
        };
        for (name, _) in NODES {
            assert!(
                c.lb.wait_status(name, "UP", Duration::from_secs(10)).await,
                "HAProxy never saw node {name} UP: {:?}",
                c.lb.statuses().await
            );
        }
        c
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Which node logged each of `rids` (waiting up to 5 s for the access logs, which are
    /// flushed every 200 ms). Ids no running node logged are missing from the map.
    fn who_served(&self, rids: &[String]) -> HashMap<String, &'static str> {
        let mut found = HashMap::new();
        wait_until(Duration::from_secs(5), || {
            for n in &self.nodes {
                for line in n.log().lines() {
                    if let Some(id) = json_field(line, "request_id") {
                        found.entry(id.to_string()).or_insert(n.name);
                    }
                }
            }
            rids.iter().all(|r| found.contains_key(r))
        });
        rids.iter()
            .filter_map(|r| found.get(r).map(|n| (r.clone(), *n)))
            .collect()
    }

    /// One GET through HAProxy with a playback token (in the path for even `viewer`s, in the
    /// query for odd ones) and a fresh request id, once no other request is in flight (see
    /// `Haproxy::quiet`); returns the id, status, headers and body.
    async fn get(&self, path: &str, viewer: usize) -> (String, u16, http::HeaderMap, Bytes) {
        let token = play_token(viewer);
        let target = if viewer % 2 == 0 {
            p(path, &token)
        } else {
            q(path, &token)
        };
        let id = rid("get");
        self.lb.quiet().await;
        let (status, headers, body) = try_get(
            &client(true),
            &self.lb.url(&target),
            &[("x-request-id", &id)],
        )
        .await
        .unwrap_or_else(|e| panic!("GET {target} through HAProxy: {e}"));
        (id, status, headers, body)
    }

    /// The node that serves `path` through HAProxy now (one GET of it, any status).
    async fn owner_of(&self, path: &str) -> &'static str {
        let (id, status, headers, _) = self.get(path, 0).await;
        let who = self.who_served(std::slice::from_ref(&id));
        let owner = *who
            .get(&id)
            .unwrap_or_else(|| panic!("no node logged GET {path} ({status})"));
        if self.served_by {
            assert_eq!(header(&headers, "x-served-by").as_deref(), Some(owner));
        }
        owner
    }

    /// The owner of every catalogue asset: each file fetched once through HAProxy (so the owner
    /// pulls it into its cache), all of an asset's files on one node.
    async fn learn_owners(&self) -> Vec<&'static str> {
        let mut ids = Vec::new();
        for a in 0..ASSETS {
            for f in 0..FILES.len() {
                let (id, status, _, body) = self.get(&asset_path(a, f), 0).await;
                assert_eq!(status, 200, "{}", asset_path(a, f));
                assert!(body == content(a, f), "{}: bytes", asset_path(a, f));
                ids.push((a, id));
            }
        }
        let all: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
        let who = self.who_served(&all);
        (0..ASSETS)
            .map(|a| {
                let nodes: BTreeSet<&str> = ids
                    .iter()
                    .filter(|(x, _)| *x == a)
                    .map(|(_, id)| *who.get(id).expect("logged"))
                    .collect();
                assert_eq!(nodes.len(), 1, "asset {a} on {nodes:?}");
                nodes.into_iter().next().expect("one node")
            })
            .collect()
    }

    /// PUT through HAProxy with an upload token in the path; returns the request id and the
    /// answer.
    async fn put(&self, path: &str, body: &[u8]) -> (String, Resp) {
        let id = rid("put");
        let r = send(
            "PUT",
            &self.lb.url(&p(path, &upload_token())),
            &[("x-request-id", &id)],
            body,
            false,
        )
        .await;
        (id, r)
    }

    /// PUTs a new object through HAProxy (201) and returns the node that took it.
    async fn put_new(&self, path: &str, body: &[u8]) -> &'static str {
        let (id, r) = self.put(path, body).await;
        assert_eq!(r.status, 201, "PUT {path}: {}", r.text());
        let who = self.who_served(std::slice::from_ref(&id));
        *who.get(&id)
            .unwrap_or_else(|| panic!("no node logged PUT {path}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Steady load

#[derive(Debug)]
struct Outcome {
    asset: usize,
    path: String,
    started: Instant,
    rid: String,
    /// From sending the request to the end of its answer (or its failure).
    took: Duration,
    /// `Ok(X-Served-By)` for a 200 with the right bytes, else what went wrong.
    result: Result<Option<String>, String>,
}

/// `CLIENTS` tasks GETting random catalogue files through HAProxy until stopped: even ones on
/// keep-alive connections, odd ones on a new connection per request; each client is a viewer
/// with its own token, half its requests with the token in the path, half in the query.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(base: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let cat = catalogue();
        let tasks = (0..CLIENTS)
            .map(|i| {
                let (stop, cat, base) = (Arc::clone(&stop), Arc::clone(&cat), base.to_string());
                tokio::spawn(async move {
                    let c = client(i % 2 == 0);
                    let token = play_token(100 + i);
                    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut out = Vec::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let (asset, file) = (
                            (x % ASSETS as u64) as usize,
                            (x >> 32) as usize % FILES.len(),
                        );
                        let path = asset_path(asset, file);
                        let target = if n % 2 == 0 {
                            p(&path, &token)
                        } else {
                            q(&path, &token)
                        };
                        let id = rid(&format!("load{i}"));
                        let started = Instant::now();
                        let result =
                            match try_get(&c, &format!("{base}{target}"), &[("x-request-id", &id)])
                                .await
                            {
                                Ok((200, h, body)) if body == cat[asset][file] => {
                                    Ok(header(&h, "x-served-by"))
                                }
                                Ok((200, _, body)) => Err(format!("200 with {} bytes", body.len())),
                                Ok((status, _, body)) => Err(format!(
                                    "status {status}: {}",
                                    String::from_utf8_lossy(&body).trim()
                                )),
                                Err(e) => Err(e),
                            };
                        out.push(Outcome {
                            asset,
                            path,
                            started,
                            rid: id,
                            took: started.elapsed(),
                            result,
                        });
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load task"));
        }
        all
    }
}

/// Failed outcomes, formatted for an assertion message.
fn failures<'o>(outcomes: impl Iterator<Item = &'o Outcome>) -> Vec<String> {
    outcomes
        .filter_map(|o| match &o.result {
            Ok(_) => None,
            Err(e) => Some(format!("{} ({}): {e}", o.path, o.rid)),
        })
        .collect()
}

/// Nodes and how many assets each owns.
fn shares(owners: &[&'static str]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for o in owners {
        *m.entry(*o).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// 1. Placement

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_every_request_for_an_asset_lands_on_one_node() {
    let c = Cluster::start(Opts::default()).await;
    // Each file of each asset, with the path token of viewer 0, of viewer 2 (another token in
    // the first path segment), and a query token (viewer 1).
    let mut sent = Vec::new();
    for a in 0..ASSETS {
        for f in 0..FILES.len() {
            for viewer in [0, 2, 1] {
                let (id, status, headers, body) = c.get(&asset_path(a, f), viewer).await;
                assert_eq!(status, 200, "{} viewer {viewer}", asset_path(a, f));
                assert!(body == content(a, f), "{}: bytes", asset_path(a, f));
                sent.push((a, id, header(&headers, "x-served-by")));
            }
            // Another spelling of the same path, which segd decodes to the same name: it must
            // hash to the same node (HAProxy hashes the decoded path).
            let spelled = asset_path(a, f)
                .replacen("/vod/c", "/vod/%63", 1)
                .replace('.', "%2e");
            let (id, status, headers, body) = c.get(&spelled, 0).await;
            assert_eq!(status, 200, "{spelled}");
            assert!(body == content(a, f), "{spelled}: bytes");
            sent.push((a, id, header(&headers, "x-served-by")));
        }
    }
    let ids: Vec<String> = sent.iter().map(|(_, id, _)| id.clone()).collect();
    let who = c.who_served(&ids);
    let mut owners = Vec::new();
    for a in 0..ASSETS {
        let mine: Vec<_> = sent.iter().filter(|(x, _, _)| *x == a).collect();
        let nodes: BTreeSet<&str> = mine
            .iter()
            .map(|(_, id, _)| {
                *who.get(id)
                    .unwrap_or_else(|| panic!("no node logged request {id}"))
            })
            .collect();
        assert_eq!(
            nodes.len(),
            1,
            "asset {a}: its requests went to {nodes:?}, not one node"
        );
        let owner = *nodes.iter().next().expect("one");
        if c.served_by {
            for (_, id, by) in &mine {
                assert_eq!(by.as_deref(), Some(owner), "X-Served-By of {id}");
            }
        }
        owners.push(owner);
    }
    let haproxy_shares = shares(&owners);
    assert_eq!(
        haproxy_shares.len(),
        3,
        "all three nodes own assets: {haproxy_shares:?} ({ASSETS} assets)"
    );
    eprintln!("placement of {ASSETS} assets through HAProxy: {haproxy_shares:?}");

    // Live paths (pinned: no bounded load) stay on one node even when requested all at once.
    // Nothing is published there, so each answer is a 404 from the node the asset hashes to.
    let kc = client(true);
    let live: Vec<(usize, String)> = (0..48)
        .map(|i| (i % 8, format!("/live/s{}/{}/part_{i}.m4s", i % 8, i % 3)))
        .collect();
    let gets = live.iter().map(|(_, path)| {
        let id = rid("live");
        let url = c.lb.url(path);
        let kc = &kc;
        async move {
            let r = try_get(kc, &url, &[("x-request-id", &id)]).await;
            (id, r.map(|(status, _, _)| status))
        }
    });
    let answers = futures_util::future::join_all(gets).await;
    let ids: Vec<String> = answers.iter().map(|(id, _)| id.clone()).collect();
    for (id, status) in &answers {
        assert_eq!(status.as_ref().ok(), Some(&404), "{id}: {status:?}");
    }
    let who = c.who_served(&ids);
    for stream in 0..8 {
        let nodes: BTreeSet<_> = live
            .iter()
            .zip(&ids)
            .filter(|((s, _), _)| *s == stream)
            .map(|(_, id)| who.get(id).copied())
            .collect();
        assert_eq!(nodes.len(), 1, "/live/s{stream}/ went to {nodes:?}");
        assert!(
            !nodes.contains(&None),
            "/live/s{stream}/: a request nobody logged"
        );
    }

    // The same through nginx running the shipped segd-cluster.conf (its own hash: the owners
    // may differ from HAProxy's, but each asset again has one).
    let nginx = NginxLb::start(c.nodes[0].port);
    let mut sent = Vec::new();
    for a in 0..ASSETS {
        for f in 0..FILES.len() {
            for viewer in [0, 2, 1] {
                let token = play_token(viewer);
                let path = asset_path(a, f);
                let target = if viewer % 2 == 0 {
                    p(&path, &token)
                } else {
                    q(&path, &token)
                };
                let id = rid("nginx");
                let (status, _, body) = try_get(&kc, &nginx.url(&target), &[("x-request-id", &id)])
                    .await
                    .unwrap_or_else(|e| panic!("GET {target} through nginx: {e}"));
                assert_eq!(status, 200, "{target} through nginx");
                assert!(body == content(a, f), "{path}: bytes through nginx");
                sent.push((a, id));
            }
        }
    }
    // A token in the `__token__` header (one of its four places) reaches the nodes through
    // both balancers: nginx drops request headers with an underscore unless told otherwise.
    let token = play_token(3);
    let path = asset_path(0, 0);
    for (via, url) in [("HAProxy", c.lb.url(&path)), ("nginx", nginx.url(&path))] {
        let (status, _, body) = try_get(&kc, &url, &[("__token__", &token)])
            .await
            .unwrap_or_else(|e| panic!("GET {path} through {via} with a header token: {e}"));
        assert_eq!(status, 200, "{path} through {via} with a header token");
        assert!(body == content(0, 0), "{path} through {via}: bytes");
    }
    let ids: Vec<String> = sent.iter().map(|(_, id)| id.clone()).collect();
    let who = c.who_served(&ids);
    let mut nginx_owners = Vec::new();
    for a in 0..ASSETS {
        let nodes: BTreeSet<Option<&str>> = sent
            .iter()
            .filter(|(x, _)| *x == a)
            .map(|(_, id)| who.get(id).copied())
            .collect();
        assert_eq!(nodes.len(), 1, "asset {a} through nginx went to {nodes:?}");
        nginx_owners.push(nodes.into_iter().next().flatten().expect("logged"));
    }
    eprintln!("placement through nginx: {:?}", shares(&nginx_owners));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_uploads_through_haproxy_land_on_the_assets_node_even_under_load() {
    let c = Cluster::start(Opts::default()).await;
    let owner = c.owner_of(&asset_path(3, 0)).await;
    // Reads keep every node busy meanwhile, so bounded load would spill: writes must not.
    let load = Load::start(&c.lb.url(""));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A new file of an existing asset goes to the node that serves the rest of it.
    let path = "/vod/c03/hls/128k/seg_00009.ts";
    let (id, r) = c.put(path, &pattern(9001)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        c.who_served(std::slice::from_ref(&id)).get(&id),
        Some(&owner)
    );
    if c.served_by {
        assert_eq!(r.header("x-served-by"), Some(owner));
    }
    for n in &c.nodes {
        assert_eq!(
            n.volume_file(path).is_some(),
            n.name == owner,
            "{path} on node {}'s volume",
            n.name
        );
    }

    // A new asset: its files, uploaded at the same time (as a packager does), land on one node.
    let files: Vec<String> = (0..8)
        .map(|i| format!("/vod/new01/hls/{}/seg_{i:05}.ts", i % 3))
        .collect();
    let bodies: Vec<Vec<u8>> = (0..files.len()).map(|i| pattern(9100 + i as u32)).collect();
    let puts = files.iter().zip(&bodies).map(|(f, b)| c.put(f, b));
    let answers = futures_util::future::join_all(puts).await;
    let outcomes = load.finish().await;
    let mut ids = Vec::new();
    for (f, (id, r)) in files.iter().zip(&answers) {
        assert_eq!(r.status, 201, "{f}: {}", r.text());
        ids.push(id.clone());
    }
    let who = c.who_served(&ids);
    let nodes: BTreeSet<_> = ids.iter().filter_map(|id| who.get(id)).collect();
    assert_eq!(nodes.len(), 1, "uploads of one asset went to {nodes:?}");
    assert_eq!(who.len(), ids.len(), "every upload logged");
    let new_owner = **nodes.iter().next().expect("one");
    let failed = failures(outcomes.iter());
    assert!(failed.is_empty(), "reads failed:\n{}", failed.join("\n"));

    // That node has them and serves them.
    for (f, body) in files.iter().zip(&bodies) {
        assert_eq!(
            c.node(new_owner).volume_file(f).as_ref(),
            Some(body),
            "{f} on {new_owner}"
        );
        let (id, status, _, got) = c.get(f, 1).await;
        assert_eq!(status, 200, "{f}");
        assert!(got == body, "{f}: bytes");
        assert_eq!(
            c.who_served(std::slice::from_ref(&id)).get(&id),
            Some(&new_owner)
        );
    }
    // HAProxy's log has a line per request and no token: the uploads' path tokens are
    // redacted, the reads' query tokens left out (its log had every token whole).
    let log = std::fs::read_to_string(&c.lb.log).unwrap_or_default();
    assert!(
        log.contains("\"PUT /__token__=<redacted>/vod/new01/hls/"),
        "no upload line:\n{log}"
    );
    assert!(
        log.contains("\"GET /vod/new01/hls/"),
        "no read line:\n{log}"
    );
    assert!(!log.contains("hmac"), "a token in HAProxy's log:\n{log}");
}

/// Writes to a node killed a moment ago, before HAProxy has marked it down, land on the node
/// that owns the asset once it is down: the next node of the ring, where the asset's later
/// uploads (and a live stream's) go. HAProxy's redispatch on the first retry picked the next
/// server with the dead one avoided, which for some assets is another node than the ring
/// gives once the dead one is out: a live stream's uploads were split over two nodes, and one
/// kept a stale copy (acceptance F-R3). The pinned backend now retries the same node (1 s
/// apart) and redispatches only on its last retry, by when the node is marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_during_a_node_loss_land_where_the_asset_moves() {
    let mut c = Cluster::start(Opts::default()).await;
    let owners = c.learn_owners().await;
    let shares = shares(&owners);
    let victim = *shares
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| name)
        .expect("nodes");
    let assets: Vec<usize> = (0..ASSETS).filter(|a| owners[*a] == victim).collect();
    c.node_mut(victim).kill9();
    // A new file for each of its assets at once, before HAProxy knows the node is gone.
    let early: Vec<String> = assets
        .iter()
        .map(|a| format!("/vod/c{a:02}/new/early.ts"))
        .collect();
    let body = pattern(9300);
    let answers = futures_util::future::join_all(early.iter().map(|p| c.put(p, &body))).await;
    for (p, (_, r)) in early.iter().zip(&answers) {
        assert_eq!(r.status, 201, "{p}: {}", r.text());
    }
    assert!(
        c.lb.wait_status(victim, "DOWN", Duration::from_secs(5))
            .await,
        "HAProxy still has {victim} up"
    );
    let mut split = Vec::new();
    for (a, (early_id, _)) in assets.iter().zip(&answers) {
        let (late_id, r) = c
            .put(&format!("/vod/c{a:02}/new/late.ts"), &pattern(9301))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let who = c.who_served(&[early_id.clone(), late_id.clone()]);
        if who.get(early_id) != who.get(&late_id) {
            split.push(format!(
                "asset {a}: {:?} then {:?}",
                who.get(early_id),
                who.get(&late_id)
            ));
        }
    }
    assert!(
        split.is_empty(),
        "uploads of one asset went to two nodes while {victim} was lost:\n{}",
        split.join("\n")
    );
}

/// ffmpeg pushing live HLS (and DASH) through HAProxy, as the README's "Pointing a packager at
/// a cluster" and `segd sign --upload` tell (no `-http_persistent 1`: ffmpeg pipelines its last uploads
/// on a kept-alive connection and resets it at exit, and HAProxy, which forwards one request
/// at a time, drops those still queued). Three streams at once, as fast as ffmpeg makes them
/// (no `-re`), so playlist versions follow each other on new connections without waiting:
/// through the balancer an older version can arrive after a newer one, and each stream must
/// still end with its final playlist (`#EXT-X-ENDLIST`, every segment listed and served), and
/// the DASH one with its final `type="static"` manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ffmpeg_live_hls_through_haproxy_ends_with_its_final_playlist() {
    let c = Cluster::start(Opts::default()).await;
    // Three HLS streams and a DASH one (whose final manifest is `type="static"`).
    let streams: Vec<(String, &str)> = (0..4)
        .map(|i| {
            let out = if i < 3 { "index.m3u8" } else { "manifest.mpd" };
            (format!("/live/ff{i}/"), out)
        })
        .collect();
    let pushes: Vec<_> = streams
        .iter()
        .map(|(dir, out)| {
            let url = c.lb.url(&p(&format!("{dir}{out}"), &upload_token()));
            let mut cmd = Command::new("ffmpeg");
            cmd.args([
                "-hide_banner",
                "-nostdin",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "8",
                "-c:a",
                "aac",
                "-b:a",
                "64k",
            ]);
            if out.ends_with(".m3u8") {
                cmd.args(["-f", "hls", "-hls_time", "1", "-hls_list_size", "0"]);
            } else {
                cmd.args(["-f", "dash", "-seg_duration", "1", "-window_size", "3"]);
            }
            cmd.args(["-method", "PUT", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            tokio::task::spawn_blocking(move || cmd.output().expect("run ffmpeg"))
        })
        .collect();
    for ((dir, _), push) in streams.iter().zip(pushes) {
        let out = push.await.expect("join");
        assert!(
            out.status.success(),
            "ffmpeg {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (dir, out) in &streams {
        let (_, status, _, body) = c.get(&format!("{dir}{out}"), 0).await;
        assert_eq!(status, 200, "{dir}{out}");
        let text = String::from_utf8_lossy(&body).into_owned();
        if out.ends_with(".mpd") {
            assert!(
                text.contains("type=\"static\""),
                "{dir}: the presentation never ended for its players:\n{text}"
            );
            continue;
        }
        assert!(
            text.trim_end().ends_with("#EXT-X-ENDLIST"),
            "{dir}: the stream never ended for its players:\n{text}"
        );
        let segments: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        assert!(segments.len() >= 7, "{dir}: {segments:?}");
        for (i, seg) in segments.iter().enumerate() {
            assert_eq!(*seg, format!("index{i}.ts"), "{dir}: {segments:?}");
            let (_, status, _, _) = c.get(&format!("{dir}{seg}"), 0).await;
            assert_eq!(status, 200, "{dir}{seg}");
        }
    }
}

/// With another `[token] name` on the nodes and the same in HAProxy's `SEGD_TOKEN_NAME`, a
/// path-embedded token segment still stays out of the asset key: every viewer's requests for an
/// asset land on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_custom_token_name_in_the_path_still_places_by_asset() {
    let c = Cluster::start(Opts {
        token_name: Some("hdnts"),
        ..Opts::default()
    })
    .await;
    for asset in [1, 2] {
        let path = asset_path(asset, 1);
        let mut ids = Vec::new();
        for viewer in 0..8 {
            // Tokens minted at different times (their `exp` differs, as viewers' do).
            let token = sign(
                TokenAlgorithm::Sha256,
                &hex::decode(PLAY_KEY).expect("hex"),
                &SignSpec {
                    acl: Some("/vod/*"),
                    exp: now() + 3600 + viewer as u64 * 7,
                    ..Default::default()
                },
            );
            let target = format!("/hdnts={}{path}", segd::auth::encode_token(&token));
            let id = rid("name");
            c.lb.quiet().await;
            let (status, _, body) =
                try_get(&client(false), &c.lb.url(&target), &[("x-request-id", &id)])
                    .await
                    .unwrap_or_else(|e| panic!("GET {target}: {e}"));
            assert_eq!(status, 200, "{target}");
            assert!(body == content(asset, 1), "{target}: bytes");
            ids.push(id);
        }
        let who = c.who_served(&ids);
        let nodes: BTreeSet<_> = who.values().collect();
        assert_eq!(who.len(), ids.len(), "every request logged");
        assert_eq!(nodes.len(), 1, "{path} for 8 viewers went to {nodes:?}");
    }
}

/// A live read's 503 ("not yet" on the stream's node) reaches the client from that node:
/// HAProxy does not replay it on the next node of the ring, which does not hold the stream
/// and would answer 404 (a player stops on a live 404, a CDN caches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_live_503_is_not_replayed_on_a_node_without_the_stream() {
    let c = Cluster::start(Opts {
        live: "block_timeout_factor = 1",
        ..Opts::default()
    })
    .await;
    // A live LL-HLS playlist whose packager stalled: it still announces the next part.
    let playlist = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
        #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5\n\
        #EXT-X-PART-INF:PART-TARGET=0.5\n#EXT-X-MEDIA-SEQUENCE:0\n\
        #EXT-X-PART:DURATION=0.5,URI=\"seg0.part0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg0.part1.m4s\"\n";
    let owner = c.put_new("/live/ll01/seg0.part0.m4s", &pattern(5001)).await;
    let (_, r) = c.put("/live/ll01/index.m3u8", playlist.as_bytes()).await;
    assert!(r.status == 201 || r.status == 204, "{}", r.text());

    // The hinted part never comes: its node answers 503 after 1 × the target duration.
    let hint = rid("hint");
    c.lb.quiet().await;
    let (status, h, body) = try_get(
        &client(false),
        &c.lb.url("/live/ll01/seg0.part1.m4s"),
        &[("x-request-id", &hint)],
    )
    .await
    .unwrap_or_else(|e| panic!("GET the preload hint through HAProxy: {e}"));
    let who = c.who_served(std::slice::from_ref(&hint));
    assert_eq!(
        (status, header(&h, "x-served-by").as_deref()),
        (503, Some(owner)),
        "the stalled preload hint: {} (logged by {:?})",
        String::from_utf8_lossy(&body).trim(),
        who.get(&hint)
    );
    // So does a blocking reload for a part that never comes.
    let (status, h, _) = try_get(
        &client(false),
        &c.lb.url("/live/ll01/index.m3u8?_HLS_msn=0&_HLS_part=1"),
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("blocking reload through HAProxy: {e}"));
    assert_eq!(
        (status, header(&h, "x-served-by").as_deref()),
        (503, Some(owner)),
        "the blocking reload"
    );
    assert_eq!(c.lb.retried(), 0, "HAProxy replayed a live request");

    // The same through nginx with the shipped config (which places assets its own way: a
    // stream of its own, uploaded through it).
    let nginx = NginxLb::start(c.nodes[0].port);
    let url = |path: &str| nginx.url(path);
    let put = async |path: &str, body: &[u8]| {
        let (id, url) = (rid("ngx-put"), url(&p(path, &upload_token())));
        let r = send("PUT", &url, &[("x-request-id", &id)], body, false).await;
        (id, r)
    };
    let (id, r) = put("/live/ll02/seg0.part0.m4s", &pattern(5002)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let owner = *c
        .who_served(std::slice::from_ref(&id))
        .get(&id)
        .expect("logged");
    let (_, r) = put("/live/ll02/index.m3u8", playlist.as_bytes()).await;
    assert!(r.status == 201 || r.status == 204, "{}", r.text());
    let (status, h, body) = try_get(&client(false), &url("/live/ll02/seg0.part1.m4s"), &[])
        .await
        .unwrap_or_else(|e| panic!("GET the preload hint through nginx: {e}"));
    assert_eq!(
        (status, header(&h, "x-served-by").as_deref()),
        (503, Some(owner)),
        "the stalled preload hint through nginx: {}",
        String::from_utf8_lossy(&body).trim()
    );
}

/// A live stream's node refuses connections (killed): its viewers' requests move to the next
/// node of the ring, which has never seen the stream. With `[live] unknown_stream_retry_after`
/// it answers 503 with `Retry-After` (a player retries it; it stops on a live 404), not
/// cacheable; a stream the node does hold keeps its 404 for a name it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_live_request_moved_off_a_down_node_is_503_retry_after_not_404() {
    let mut c = Cluster::start(Opts {
        live: "unknown_stream_retry_after = \"2s\"",
        ..Opts::default()
    })
    .await;
    let playlist = "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:2\n\
        #EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.0,\nseg0.ts\n";
    let owner = c.put_new("/live/mv01/seg0.ts", &pattern(5101)).await;
    let (_, r) = c.put("/live/mv01/index.m3u8", playlist.as_bytes()).await;
    assert!(r.status == 201 || r.status == 204, "{}", r.text());
    let (_, status, _, _) = c.get("/live/mv01/index.m3u8", 0).await;
    assert_eq!(status, 200);

    c.node_mut(owner).kill9();
    // At once (HAProxy retries the refused connection on the next node) and once the health
    // check has taken the node out (the ring sends it there directly).
    for when in ["at once", "after the health check"] {
        if when != "at once" {
            assert!(
                c.lb.wait_status(owner, "DOWN", Duration::from_secs(5))
                    .await
            );
        }
        for file in ["index.m3u8", "seg0.ts"] {
            let path = format!("/live/mv01/{file}");
            let (id, status, h, _) = c.get(&path, 0).await;
            let by = c.who_served(std::slice::from_ref(&id)).get(&id).copied();
            assert!(
                by.is_some_and(|n| n != owner),
                "{path} {when}: served by {by:?}"
            );
            assert_eq!(status, 503, "{path} {when} (served by {by:?})");
            assert_eq!(header(&h, "retry-after").as_deref(), Some("2"), "{path}");
            assert_eq!(
                header(&h, "cache-control").as_deref(),
                Some("no-store"),
                "{path}"
            );
        }
    }
    // The node that took over has the stream once the packager's uploads land there: from
    // then on a name it does not have is a 404 as usual.
    let (id, r) = c.put("/live/mv01/seg1.ts", &pattern(5102)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let new_owner = *c
        .who_served(std::slice::from_ref(&id))
        .get(&id)
        .expect("logged");
    assert_ne!(new_owner, owner);
    let (_, status, _, _) = c.get("/live/mv01/seg1.ts", 0).await;
    assert_eq!(status, 200);
    let (_, status, _, _) = c.get("/live/mv01/seg9.ts", 0).await;
    assert_eq!(status, 404, "a name the stream does not have");
}

#[test]
fn cluster_nginx_config_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nginx_command(dir.path(), &shipped_nginx_conf())
        .arg("-t")
        .output()
        .expect("run nginx -t");
    assert!(
        out.status.success(),
        "nginx -t refused config/nginx/segd-cluster.conf:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A write through the shipped nginx config waits for the node's answer as long as HAProxy's
/// does (120 s): with write-through durability "upstream", segd answers an upload only once the
/// bucket has it, up to `first_byte_timeout` + 1 s + 1 s per 4 MiB (+ a HEAD after a lost
/// answer), 85 s for a 256 MiB body at the defaults. A stand-in node answers a PUT after 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nginx_waits_for_a_slow_write_as_haproxy_does() {
    use std::io::{Read, Write};
    let (port, _) = cluster_ports();
    for (_, ip) in NODES {
        let l = TcpListener::bind((ip, port)).expect("bind the stand-in node");
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    // Read the head and the (small, Content-Length) body, then think for 40 s.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut chunk) {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_secs(40));
                    let _ = conn.write_all(
                        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
    }
    let nginx = NginxLb::start(port);
    let started = Instant::now();
    let r = send(
        "PUT",
        &nginx.url(&p("/vod/slow01/a.ts", &upload_token())),
        &[],
        &pattern(1),
        false,
    )
    .await;
    assert_eq!(
        r.status,
        201,
        "the node's answer after {:?}: {}",
        started.elapsed(),
        r.text()
    );
}

#[test]
fn cluster_haproxy_config_refuses_to_start_without_node_addresses() {
    let bin = find_program("haproxy", &[PathBuf::from("/usr/sbin/haproxy")])
        .expect("haproxy is not installed (Debian haproxy; .ci/run installs it)");
    let check = |ips: &[(&str, &str)]| {
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg("-f").arg(shipped_haproxy_cfg());
        for var in ["SEGD_A_IP", "SEGD_B_IP", "SEGD_C_IP"] {
            cmd.env_remove(var);
        }
        for (k, v) in ips {
            cmd.env(k, v);
        }
        cmd.output().expect("run haproxy -c")
    };
    let all = [
        ("SEGD_A_IP", NODES[0].1),
        ("SEGD_B_IP", NODES[1].1),
        ("SEGD_C_IP", NODES[2].1),
    ];
    let ok = check(&all);
    assert!(
        ok.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let missing = check(&all[..2]);
    assert!(!missing.status.success(), "started without SEGD_C_IP");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("set SEGD_A_IP, SEGD_B_IP and SEGD_C_IP"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Node loss

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_node_loss_under_load_moves_only_its_assets_and_fails_no_request() {
    let mut c = Cluster::start(Opts::default()).await;
    let owners = c.learn_owners().await;
    let shares = shares(&owners);
    assert_eq!(shares.len(), 3, "every node owns assets: {shares:?}");
    // The node with the most assets goes down.
    let victim = *shares
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| name)
        .expect("nodes");
    let victim_assets: BTreeSet<usize> = (0..ASSETS).filter(|a| owners[*a] == victim).collect();

    let load = Load::start(&c.lb.url(""));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bucket_gets = c.weed.gets().await;
    let killed_at = Instant::now();
    c.node_mut(victim).kill9();
    assert!(
        c.lb.wait_status(victim, "DOWN", Duration::from_secs(5))
            .await,
        "HAProxy still has {victim} up: {:?}",
        c.lb.statuses().await
    );
    // Under load with the node gone: its assets are served elsewhere.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let restarted_at = Instant::now();
    let bucket_gets_down = c.weed.gets().await;
    c.node_mut(victim).start();
    assert!(
        c.lb.wait_status(victim, "UP", Duration::from_secs(10))
            .await,
        "HAProxy never saw {victim} back: {:?}",
        c.lb.statuses().await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outcomes = load.finish().await;

    // No failure for the assets that stayed where they were. With `hash-balance-factor`, HAProxy
    // sends an asset to another node while its owner is over the bound, so the victim may have
    // been streaming another node's asset when it died: such a cut body is the victim's
    // in-flight response, counted with its own below.
    let cut_by_victim = format!("served by {victim},");
    let spilled = |o: &Outcome| matches!(&o.result, Err(e) if e.contains(&cut_by_victim));
    let others = failures(
        outcomes
            .iter()
            .filter(|o| !victim_assets.contains(&o.asset) && !spilled(o)),
    );
    assert!(
        others.is_empty(),
        "{} failed requests for assets not on {victim}:\n{}",
        others.len(),
        others.join("\n")
    );
    // For the moved ones: retry-on conn-failure/empty-response with redispatch covers a
    // refused connection and a request the node died holding; only a response already
    // streaming when the node died can fail, at most one per client.
    let moved = failures(
        outcomes
            .iter()
            .filter(|o| victim_assets.contains(&o.asset) || spilled(o)),
    );
    assert!(
        moved.len() <= CLIENTS,
        "{} failed requests for {victim}'s assets (at most one in flight per client):\n{}",
        moved.len(),
        moved.join("\n")
    );
    eprintln!(
        "node loss: {} requests, {} failed for {victim}'s {} assets, {} retried by HAProxy",
        outcomes.len(),
        moved.len(),
        victim_assets.len(),
        c.lb.retried()
    );

    // While it was down, the others served its assets, pulling them from the bucket.
    let down: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| victim_assets.contains(&o.asset))
        .filter(|o| o.started > killed_at && o.started < restarted_at && o.result.is_ok())
        .collect();
    let ids: Vec<String> = down.iter().map(|o| o.rid.clone()).collect();
    let who = c.who_served(&ids);
    for o in &down {
        let node = who.get(&o.rid).copied();
        assert!(
            node.is_some_and(|n| n != victim),
            "{} ({}) while {victim} was down: served by {node:?}",
            o.path,
            o.rid
        );
        if let Ok(Some(by)) = &o.result {
            assert_eq!(Some(by.as_str()), node, "X-Served-By of {}", o.rid);
        }
    }
    let covered: BTreeSet<usize> = down.iter().map(|o| o.asset).collect();
    assert_eq!(
        covered, victim_assets,
        "every one of {victim}'s assets was requested (and served) while it was down"
    );
    assert!(
        bucket_gets_down > bucket_gets,
        "the nodes taking over pulled from the bucket ({bucket_gets} → {bucket_gets_down} GETs)"
    );
    let pulled = c
        .nodes
        .iter()
        .filter(|n| n.name != victim)
        .flat_map(|n| n.log().lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| json_field(l, "cache") == Some("miss"))
        .filter(|l| {
            json_field(l, "path").is_some_and(|p| {
                victim_assets
                    .iter()
                    .any(|a| p.starts_with(&format!("/vod/c{a:02}/")))
            })
        })
        .count();
    assert!(pulled > 0, "no pull-through miss for {victim}'s assets");

    // Back up, it serves its assets again.
    for a in &victim_assets {
        assert_eq!(
            c.owner_of(&asset_path(*a, 1)).await,
            victim,
            "asset {a} back on {victim}"
        );
    }
}

/// A hung node (SIGSTOP: the kernel still accepts its connections, nothing answers) costs a
/// VOD read the balancer's read timeout (5 s) at most, not `timeout server` (35 s): the read
/// is retried on the next node of the ring, and no request fails. Through HAProxy (whose
/// health check also takes the node out) and then through nginx (which has no health check:
/// every read sent to the hung node waits out the timeout, until `max_fails` takes it out).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_hung_node_costs_a_read_seconds_not_timeout_server() {
    let c = Cluster::start(Opts::default()).await;
    let owners = c.learn_owners().await;
    let shares = shares(&owners);
    let victim = *shares
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| name)
        .expect("nodes");
    let pid = c.node(victim).srv().child.id() as i32;
    // The balancers' read timeout, and what a retry on the next node (a pull from the bucket)
    // may add to it on a loaded two-core machine.
    let bound = Duration::from_secs(5) + Duration::from_millis(2500);
    let nginx = NginxLb::start(c.nodes[0].port);
    for (lb, base) in [("HAProxy", c.lb.url("")), ("nginx", nginx.url(""))] {
        let load = Load::start(&base);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // SAFETY: kill(2) on the pid of a segd this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        if lb == "HAProxy" {
            assert!(
                c.lb.wait_status(victim, "DOWN", Duration::from_secs(6))
                    .await,
                "HAProxy's health check never took the hung {victim} out: {:?}",
                c.lb.statuses().await
            );
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        let outcomes = load.finish().await;
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        // A response whose body was streaming when the node stopped is cut once the read
        // timeout passes (the one thing no balancer can retry): at most one per client, as
        // for a killed node. Anything else is a failure.
        let cut_by_victim = format!("served by {victim}, body");
        let cut = |o: &&Outcome| matches!(&o.result, Err(e) if e.contains(&cut_by_victim));
        let failed = failures(outcomes.iter().filter(|o| !cut(o)));
        let cut = outcomes.iter().filter(cut).count();
        assert!(
            cut <= CLIENTS,
            "{lb}: {cut} responses cut by the hung {victim}"
        );
        let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
        let slow = outcomes
            .iter()
            .filter(|o| o.took > Duration::from_secs(1))
            .count();
        eprintln!(
            "{lb}: {victim} hung under load: {} requests, {} failed, {cut} cut mid-body, {slow} took over 1 s, the slowest {slowest:?}",
            outcomes.len(),
            failed.len(),
        );
        assert!(
            failed.is_empty(),
            "{lb}: {} of {} requests failed while {victim} hung:\n{}",
            failed.len(),
            outcomes.len(),
            failed.join("\n")
        );
        assert!(
            slow > 0,
            "{lb}: no request waited for the hung {victim} (was it hung?)"
        );
        assert!(
            slowest <= bound,
            "{lb}: a request waited {slowest:?} for the hung {victim} (bound {bound:?})"
        );
        assert!(
            c.lb.wait_status(victim, "UP", Duration::from_secs(10))
                .await,
            "{victim} never came back in HAProxy: {:?}",
            c.lb.statuses().await
        );
    }
}

/// The bucket hung (SIGSTOP: it accepts connections and answers nothing): objects a node
/// already holds keep playing; a miss is segd's 504 once `first_byte_timeout` (4 s) passes,
/// before the balancer's 5 s read timeout, so HAProxy neither retries it on the other nodes
/// (which would ask the same bucket) nor answers it itself; the bucket back, the miss is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bucket_hung_misses_are_504_once_hits_keep_playing() {
    let c = Cluster::start(Opts::default()).await;
    let cached = asset_path(0, 0);
    let (_, status, _, _) = c.get(&cached, 0).await;
    assert_eq!(status, 200);
    let retried = c.lb.retried();
    // SAFETY: kill(2) on the pid of a weed this test started.
    unsafe { libc::kill(c.weed.pid(), libc::SIGSTOP) };
    let (_, status, _, body) = c.get(&cached, 2).await;
    assert_eq!(
        status, 200,
        "{cached}, cached on its node, while the bucket hangs"
    );
    assert!(body == content(0, 0));
    let miss = asset_path(1, 2);
    let started = Instant::now();
    let (id, status, h, _) = c.get(&miss, 0).await;
    let took = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(c.weed.pid(), libc::SIGCONT) };
    assert_eq!(
        (status, header(&h, "x-served-by").is_some()),
        (504, true),
        "{miss} while the bucket hangs: segd's own 504 (after {took:?})"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(5),
        "{miss}: answered after {took:?} (first_byte_timeout 4 s)"
    );
    assert_eq!(c.who_served(std::slice::from_ref(&id)).len(), 1);
    assert_eq!(c.lb.retried(), retried, "HAProxy retried a bucket timeout");
    let (_, status, _, body) = c.get(&miss, 0).await;
    assert_eq!(status, 200, "{miss} with the bucket back");
    assert!(body == content(1, 2));
}

/// A node's disk failing (reads fail with EIO: the debug build's `.segd-fault-eio` hook): the
/// objects it held are still served through HAProxy, from the bucket (by that node's pull
/// tier, or by another node after a retried 503), with the same bytes and the same ETag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_nodes_disk_failing_costs_no_request_for_what_the_bucket_holds() {
    let c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"upstream\"\n",
        ..Opts::default()
    })
    .await;
    let path = "/vod/df01/hls/seg_00001.ts";
    let body = pattern(6101);
    let owner = c.put_new(path, &body).await;
    let (_, status, h, _) = c.get(path, 0).await;
    assert_eq!(status, 200);
    let etag = header(&h, "etag");
    std::fs::write(c.node(owner).dir.join("disk/.segd-fault-eio"), b"").expect("inject");
    for viewer in 0..4 {
        let (id, status, h, got) = c.get(path, viewer).await;
        let by = c.who_served(std::slice::from_ref(&id)).get(&id).copied();
        assert_eq!(
            status, 200,
            "{path} with {owner}'s disk failing (served by {by:?})"
        );
        assert!(got == body, "bytes");
        assert_eq!(header(&h, "etag"), etag, "the same ETag from {by:?}");
        eprintln!("{path} with {owner}'s disk failing: served by {by:?}");
    }
    // The fault was real: the node took its disk for unhealthy.
    let m = c.node(owner).metrics().await;
    assert_eq!(
        metric_with(&m, "segd_volume_healthy", &[("volume", "disk")]),
        Some(0.0),
        "{owner}'s disk is still healthy"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Write-through

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_through_upstream_object_survives_killing_its_node_after_the_201() {
    let mut c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"upstream\"\n",
        ..Opts::default()
    })
    .await;
    let path = "/vod/wt01/hls/seg_00001.ts";
    let body = pattern(7001);
    // The node the asset hashes to (learnt from a 404 for a file of it: placement is by asset).
    let owner = c.owner_of("/vod/wt01/probe.ts").await;
    let (_, r) = c.put(path, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    c.node_mut(owner).kill9();
    let etag = r.header("etag").map(str::to_string);
    assert_eq!(
        c.node(owner).volume_file(path),
        Some(body.clone()),
        "the upload landed on {owner}"
    );
    // Read through the cluster: another node pulls it from the bucket.
    let (id, status, headers, got) = c.get(path, 0).await;
    assert_eq!(status, 200, "{path} after {owner} was killed");
    assert!(got == body, "same bytes");
    let who = c.who_served(std::slice::from_ref(&id));
    let by = who.get(&id).copied();
    assert!(by.is_some_and(|n| n != owner), "served by {by:?}");
    if c.served_by {
        assert_eq!(header(&headers, "x-served-by").as_deref(), by);
    }
    assert_eq!(
        header(&headers, "etag"),
        etag,
        "the validator travelled with it"
    );
    // The bucket has it, with the validators as metadata.
    let o = c.weed.object("GET", path.trim_start_matches('/')).await;
    assert_eq!(o.status, 200);
    assert!(o.body == body);
    assert_eq!(
        o.header("x-amz-meta-segd-etag").map(str::to_string),
        etag,
        "x-amz-meta-segd-etag"
    );
    assert!(o.header("x-amz-meta-segd-last-modified").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_through_local_queue_drains_and_survives_kill9() {
    let mut c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"local\"\n",
        ..Opts::default()
    })
    .await;
    let owner = c.owner_of("/vod/wq01/probe.ts").await;
    let backlog =
        async |c: &Cluster| metric(&c.node(owner).metrics().await, "segd_write_through_backlog");

    // The queue drains to the bucket.
    let first = "/vod/wq01/a.ts";
    let (_, r) = c.put(first, &pattern(8001)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let drained = eventually(Duration::from_secs(10), async || {
        backlog(&c).await == Some(0.0)
            && c.weed
                .object("HEAD", first.trim_start_matches('/'))
                .await
                .status
                == 200
    })
    .await;
    assert!(drained, "backlog {:?}", backlog(&c).await);
    let o = c.weed.object("GET", first.trim_start_matches('/')).await;
    assert!(o.body == pattern(8001), "{first} in the bucket");
    // A name with a `%` in it (URL `x%2541.ts`, object `x%41.ts`) reaches the bucket under
    // its own key, not decoded once more (`xA.ts`).
    let (_, r) = c.put("/vod/wq01/x%2541.ts", &pattern(8003)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let drained = eventually(Duration::from_secs(10), async || {
        backlog(&c).await == Some(0.0)
            && c.weed.object("HEAD", "vod/wq01/x%41.ts").await.status == 200
    })
    .await;
    assert!(
        drained,
        "x%41.ts never reached the bucket under its own key"
    );
    assert_eq!(c.weed.object("HEAD", "vod/wq01/xA.ts").await.status, 404);

    // The bucket unreachable (the node's bucket upstream points at a closed port): the entry
    // stays queued; kill -9 before it drains.
    let live = c.weed.endpoint();
    let closed = ClosedPort::new();
    c.node_mut(owner).kill9();
    c.node_mut(owner).bucket = closed.url();
    c.node_mut(owner).start();
    assert!(c.lb.wait_status(owner, "UP", Duration::from_secs(10)).await);
    let second = "/vod/wq01/b.ts";
    let (id, r) = c.put(second, &pattern(8002)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        c.who_served(std::slice::from_ref(&id)).get(&id),
        Some(&owner)
    );
    assert!(
        eventually(Duration::from_secs(5), async || backlog(&c)
            .await
            .is_some_and(|b| b >= 1.0))
        .await,
        "queued: backlog {:?}",
        backlog(&c).await
    );
    c.node_mut(owner).kill9();
    assert_eq!(
        c.weed
            .object("HEAD", second.trim_start_matches('/'))
            .await
            .status,
        404,
        "not uploaded before the kill"
    );

    // Restarted with the bucket reachable: the queue is read again and drains.
    c.node_mut(owner).bucket = live;
    c.node_mut(owner).start();
    let drained = eventually(Duration::from_secs(20), async || {
        c.weed
            .object("HEAD", second.trim_start_matches('/'))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        drained,
        "{second} never reached the bucket after the restart"
    );
    let o = c.weed.object("GET", second.trim_start_matches('/')).await;
    assert!(o.body == pattern(8002), "{second}: bytes in the bucket");
    assert!(
        eventually(Duration::from_secs(5), async || backlog(&c).await
            == Some(0.0))
        .await,
        "backlog back to 0: {:?}",
        backlog(&c).await
    );
}

/// Durability "local": after a DELETE's 204, the node does not fetch the object back from the
/// bucket while the deletion is still queued (the bucket holds it until the queue applies it).
/// A copy pulled then was served for as long as the pull cache kept it, long after the bucket
/// had deleted it too. Here the queue cannot apply it (the write-through bucket is a closed
/// port) while reads pull from the real bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_through_local_queued_delete_is_not_pulled_back() {
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), S3_SECRET).expect("write the secret");
    let closed = ClosedPort::new();
    let c = Cluster::start(Opts {
        ingest: "write_through = \"unreachable\"\ndurability = \"local\"\n",
        upstreams: Box::leak(
            format!(
                "\n[[pull.upstreams]]\nname = \"unreachable\"\ns3_endpoint = \"{}\"\nbucket = \"{S3_BUCKET}\"\nregion = \"{S3_REGION}\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\nprefixes = [\"/nowhere/\"]\n",
                closed.url(),
                secret.path().display()
            )
            .into_boxed_str(),
        ),
        ..Opts::default()
    })
    .await;
    // A catalogue object (in the bucket), pulled by its node.
    let path = asset_path(5, 1);
    let (_, status, _, _) = c.get(&path, 0).await;
    assert_eq!(status, 200, "{path}");
    let owner = c.owner_of(&path).await;
    let (id, r) = send_delete(&c, &path).await;
    assert_eq!(r.status, 204, "DELETE {path}: {}", r.text());
    assert_eq!(
        c.who_served(std::slice::from_ref(&id)).get(&id),
        Some(&owner)
    );
    for _ in 0..2 {
        let (id, status, _, _) = c.get(&path, 1).await;
        assert_eq!(
            (status, c.who_served(std::slice::from_ref(&id)).get(&id)),
            (404, Some(&owner)),
            "GET {path} after its DELETE was answered 204 (deletion queued)"
        );
    }
}

/// DELETE through HAProxy with an upload token in the path.
async fn send_delete(c: &Cluster, path: &str) -> (String, Resp) {
    let id = rid("delete");
    let r = send(
        "DELETE",
        &c.lb.url(&p(path, &upload_token())),
        &[("x-request-id", &id)],
        b"",
        false,
    )
    .await;
    (id, r)
}

/// Durability "local": a read that reaches another node (spilled, or moved by a node loss)
/// before the upload's node has put it in the bucket gets a 404 there. That 404 was remembered
/// for `negative_ttl`, so the object stayed missing on that node long after the bucket had it.
/// The write-through bucket's 404s are not remembered when uploads reach it through a queue:
/// once the bucket has the object, the next read anywhere finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_through_local_404_before_the_queue_drains_is_not_remembered() {
    let mut c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"local\"\n",
        negative_ttl: Some("60s"),
        ..Opts::default()
    })
    .await;
    let path = "/vod/nq01/hls/seg_00001.ts";
    let body = pattern(8101);
    let owner = c.owner_of("/vod/nq01/probe.ts").await;
    // The owner's queue cannot reach the bucket for now.
    let live = c.weed.endpoint();
    let closed = ClosedPort::new();
    c.node_mut(owner).kill9();
    c.node_mut(owner).bucket = closed.url();
    c.node_mut(owner).start();
    assert!(c.lb.wait_status(owner, "UP", Duration::from_secs(10)).await);
    let (id, r) = c.put(path, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        c.who_served(std::slice::from_ref(&id)).get(&id),
        Some(&owner)
    );
    // A read on another node meanwhile: not in the bucket yet.
    let other = c
        .nodes
        .iter()
        .find(|n| n.name != owner)
        .expect("another node");
    let token = play_token(0);
    let kc = client(false);
    let (status, _, _) = try_get(&kc, &other.url(&q(path, &token)), &[])
        .await
        .unwrap_or_else(|e| panic!("GET from {}: {e}", other.name));
    assert_eq!(
        status, 404,
        "{path} on {} before the queue drained",
        other.name
    );
    let other_name = other.name;
    // The owner's queue reaches the bucket (restarted with it reachable).
    c.node_mut(owner).kill9();
    c.node_mut(owner).bucket = live;
    c.node_mut(owner).start();
    let arrived = eventually(Duration::from_secs(20), async || {
        c.weed
            .object("HEAD", path.trim_start_matches('/'))
            .await
            .status
            == 200
    })
    .await;
    assert!(arrived, "{path} never reached the bucket");
    // Well within negative_ttl (60 s): the other node serves it now.
    let other = c.node(other_name);
    let (status, _, got) = try_get(&kc, &other.url(&q(path, &token)), &[])
        .await
        .unwrap_or_else(|e| panic!("GET from {}: {e}", other.name));
    assert_eq!(
        status, 200,
        "{path} on {} once the bucket has it (a remembered 404?)",
        other.name
    );
    assert!(got == body, "bytes");
}

/// Durability "upstream": a node asked for a path before its upload (a read spilled or moved
/// there) got the bucket's 404 and remembered it for `negative_ttl`, so it answered 404 long
/// after the upload's 201, although the bucket had the object before that 201 was sent. The
/// write-through bucket's 404s are not remembered under either durability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_write_through_upstream_404_before_the_upload_is_not_remembered() {
    let c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"upstream\"\n",
        negative_ttl: Some("60s"),
        ..Opts::default()
    })
    .await;
    let path = "/vod/nu01/hls/seg_00001.ts";
    let body = pattern(8111);
    let owner = c.owner_of("/vod/nu01/probe.ts").await;
    let token = play_token(0);
    let kc = client(false);
    // Every other node is asked first: not in the bucket yet.
    let others: Vec<&Node> = c.nodes.iter().filter(|n| n.name != owner).collect();
    for n in &others {
        let (status, _, _) = try_get(&kc, &n.url(&q(path, &token)), &[])
            .await
            .unwrap_or_else(|e| panic!("GET from {}: {e}", n.name));
        assert_eq!(status, 404, "{path} on {} before its upload", n.name);
    }
    let (id, r) = c.put(path, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        c.who_served(std::slice::from_ref(&id)).get(&id),
        Some(&owner)
    );
    // The bucket had it before the 201: every node serves it now, well within negative_ttl.
    for n in &others {
        let (status, _, got) = try_get(&kc, &n.url(&q(path, &token)), &[])
            .await
            .unwrap_or_else(|e| panic!("GET from {}: {e}", n.name));
        assert_eq!(
            status, 200,
            "{path} on {} right after its upload's 201 (a remembered 404?)",
            n.name
        );
        assert!(got == body, "bytes from {}", n.name);
    }
}

/// Durability "upstream": a DELETE through a node while that node's pull of the object is
/// still under way (the bucket answered before the deletion, its body is still coming) leaves
/// no copy behind. The fill used to store its copy after the DELETE's 204 and serve it for as
/// long as the pull cache kept it. The bucket here sends the second half of the body 3 s late
/// (`tests/tools/s3_fault_proxy.py`, `slow-body`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_delete_during_a_pull_under_way_leaves_no_copy() {
    let mut c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"upstream\"\n",
        ..Opts::default()
    })
    .await;
    let path = "/vod/sd01/hls/slow-body.ts";
    let body = pattern(8201);
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join(path.trim_start_matches('/'));
    std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
    std::fs::write(&f, &body).expect("write");
    c.weed.upload(dir.path(), "");
    // Node a reaches the bucket through the slow proxy (reads and writes).
    let proxy = crate::edge::LosingProxy::start(&c.weed.endpoint());
    c.node_mut("a").kill9();
    c.node_mut("a").bucket = format!("http://{}", proxy.addr);
    c.node_mut("a").start();
    let url = c.node("a").url(&q(path, &play_token(0)));
    let started = Instant::now();
    let first = tokio::spawn({
        let url = url.clone();
        async move { try_get(&client(false), &url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = send(
        "DELETE",
        &c.node("a").url(&p(path, &upload_token())),
        &[],
        b"",
        false,
    )
    .await;
    assert_eq!(r.status, 204, "DELETE: {}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the DELETE came after the pull ended ({:?})",
        started.elapsed()
    );
    // The read that came first gets the object (it was asked for before the deletion).
    let (status, _, _) = first.await.expect("task").expect("the first GET");
    assert_eq!(status, 200, "the GET sent before the DELETE");
    assert_eq!(
        c.weed
            .object("HEAD", path.trim_start_matches('/'))
            .await
            .status,
        404,
        "deleted in the bucket"
    );
    // After the 204, the object is gone on this node too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = try_get(&client(false), &url, &[])
        .await
        .expect("GET after the DELETE");
    assert_eq!(
        status, 404,
        "{path} after its DELETE's 204 (a stale pulled copy?)"
    );
    assert!(
        !c.node("a")
            .dir
            .join("cache")
            .join(path.trim_start_matches('/'))
            .exists(),
        "the pull cache kept a copy"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Same validators on every node

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_same_validators_on_every_node_and_304_across_nodes() {
    let c = Cluster::start(Opts {
        ingest: "write_through = \"bucket\"\ndurability = \"upstream\"\n",
        ..Opts::default()
    })
    .await;
    let path = "/vod/val01/hls/seg_00001.ts";
    let body = pattern(6001);
    let (id, r) = c.put(path, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let owner = *c
        .who_served(std::slice::from_ref(&id))
        .get(&id)
        .expect("logged");
    let token = play_token(0);
    let kc = client(true);
    // The headers a CDN caches by are the same on every node, for a segment and a playlist:
    // the owner serves them from its disk, the others from their pull of the bucket.
    let playlist = "/vod/val01/hls/index.m3u8";
    let (_, r2) = c
        .put(
            playlist,
            b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nseg_00001.ts\n#EXT-X-ENDLIST\n",
        )
        .await;
    assert_eq!(r2.status, 201, "{}", r2.text());
    for probe in [path, playlist] {
        let mut seen = BTreeMap::new();
        for n in &c.nodes {
            let (status, h, _) = try_get(&kc, &n.url(&p(probe, &token)), &[])
                .await
                .unwrap_or_else(|e| panic!("GET from {}: {e}", n.name));
            assert_eq!(status, 200, "{probe} on node {}", n.name);
            let pick = |k: &str| header(&h, k);
            // A viewer's token makes the answer `private` for what is left of the token: its
            // seconds move between two nodes' answers.
            let cache_control = pick("cache-control")
                .map(|c| c.trim_end_matches(|d: char| d.is_ascii_digit()).to_owned());
            seen.insert(
                n.name,
                [
                    pick("content-type"),
                    cache_control,
                    pick("accept-ranges"),
                    pick("content-length"),
                ],
            );
        }
        for (name, v) in &seen {
            assert_eq!(v, &seen[owner], "{probe}: node {name} vs {owner}: {seen:?}");
        }
    }
    // Ask each node directly: the owner from its disk, the others pull from the bucket. An
    // uploaded object's date is a validator once its second is over (README, Validators).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut validators = BTreeMap::new();
    for n in &c.nodes {
        let (status, h, got) = try_get(&kc, &n.url(&q(path, &token)), &[])
            .await
            .unwrap_or_else(|e| panic!("GET from {}: {e}", n.name));
        assert_eq!(status, 200, "node {}", n.name);
        assert!(got == body, "node {}: bytes", n.name);
        validators.insert(n.name, (header(&h, "etag"), header(&h, "last-modified")));
    }
    let (etag, lm) = validators[owner].clone();
    assert!(etag.is_some() && lm.is_some(), "{validators:?}");
    assert_eq!(etag.as_deref(), r.header("etag"), "the PUT's ETag");
    for (name, v) in &validators {
        assert_eq!(
            v, &validators[owner],
            "node {name} vs {owner}: {validators:?}"
        );
    }
    // A CDN revalidating against another node gets 304.
    let etag = etag.expect("etag");
    let lm = lm.expect("last-modified");
    for n in c.nodes.iter().filter(|n| n.name != owner) {
        let (status, _, _) = try_get(&kc, &n.url(&q(path, &token)), &[("if-none-match", &etag)])
            .await
            .unwrap_or_else(|e| panic!("conditional GET from {}: {e}", n.name));
        assert_eq!(status, 304, "If-None-Match {etag} on {}", n.name);
        let (status, _, _) = try_get(&kc, &n.url(&q(path, &token)), &[("if-modified-since", &lm)])
            .await
            .unwrap_or_else(|e| panic!("conditional GET from {}: {e}", n.name));
        assert_eq!(status, 304, "If-Modified-Since {lm} on {}", n.name);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Rolling upgrade and rolling restart

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_rolling_upgrade_under_load_fails_no_request() {
    let mut c = Cluster::start(Opts {
        pid_file: true,
        ..Opts::default()
    })
    .await;
    let _ = c.learn_owners().await;
    let load = Load::start(&c.lb.url(""));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (name, _) in NODES {
        let node = c.node_mut(name);
        let old = node.srv().child.id() as i32;
        assert!(
            wait_until(Duration::from_secs(5), || node.pid_in_file() == Some(old)),
            "{name}: pid_file names the running process ({old}): {:?}",
            node.pid_in_file()
        );
        node.srv().signal(libc::SIGUSR2);
        let configs = node.configs.clone();
        let upgraded = wait_until(Duration::from_secs(15), || {
            node.pid_in_file()
                .is_some_and(|p| p != old && is_our_segd(p, &configs))
        });
        assert!(
            upgraded,
            "{name}: no new pid in its pid_file after SIGUSR2:\n{}",
            node.srv().stderr()
        );
        let srv = node.srv.as_mut().expect("running");
        assert_eq!(
            srv.wait_exit(Duration::from_secs(15)),
            Some(0),
            "{name}: the old process drains and exits"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outcomes = load.finish().await;
    let failed = failures(outcomes.iter());
    assert!(
        failed.is_empty(),
        "requests failed during the rolling upgrade:\n{}\n({} of {} failed)",
        failed.join("\n"),
        failed.len(),
        outcomes.len(),
    );
    // Every node still serves its assets (through the new processes), and HAProxy has them
    // all up (its view follows its checks, a second apart).
    let _ = c.learn_owners().await;
    for (name, _) in NODES {
        assert!(
            c.lb.wait_status(name, "UP", Duration::from_secs(5)).await,
            "{name} is not UP in HAProxy after the upgrade: {:?}",
            c.lb.statuses().await
        );
    }
}

/// `systemctl reload haproxy` (SIGUSR2 to the master), which docs/cluster.md prescribes when a
/// node is added or removed, costs clients that keep their connections alive nothing: the old
/// worker answers the next request on each idle connection with `Connection: close` (`option
/// idle-close-on-response`) instead of closing it under a request on its way (6 of 6 such
/// clients lost a request per reload, with no line in HAProxy's log).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_haproxy_reload_costs_kept_alive_clients_nothing() {
    use std::io::{Read, Write};
    let c = Cluster::start(Opts {
        lb_master_worker: true,
        ..Opts::default()
    })
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lb = c.lb.addr;
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let path = q(&asset_path(i % ASSETS, 1), &play_token(i));
                let req = format!("GET {path} HTTP/1.1\r\nHost: origin\r\n\r\n");
                let (mut ok, mut failed) = (0u32, Vec::new());
                let connect = || {
                    let s = TcpStream::connect(lb).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    s
                };
                let mut s = connect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut answer = Vec::new();
                    let sent = s.write_all(req.as_bytes()).is_ok();
                    let mut buf = [0u8; 65536];
                    // One answer: its head, then Content-Length bytes of body.
                    let complete = sent
                        && loop {
                            let n = match s.read(&mut buf) {
                                Ok(0) | Err(_) => break false,
                                Ok(n) => n,
                            };
                            answer.extend_from_slice(&buf[..n]);
                            let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
                            let Some(end) = text.find("\r\n\r\n") else {
                                continue;
                            };
                            let len: usize = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if answer.len() >= end + 4 + len {
                                break true;
                            }
                        };
                    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
                    if complete && head.starts_with("http/1.1 200") {
                        ok += 1;
                    } else {
                        failed.push(format!("{path}: {:?}", head.lines().next()));
                    }
                    if !complete || head.contains("connection: close") {
                        s = connect();
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
                (ok, failed)
            })
        })
        .collect();
    let master = c.lb.child.id() as i32;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // SAFETY: signals HAProxy's master, our child.
        unsafe { libc::kill(master, libc::SIGUSR2) };
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut failed = Vec::new();
    for t in clients {
        let (ok, f) = t.join().expect("client");
        total += ok;
        failed.extend(f);
    }
    assert!(
        total > 100,
        "{total} requests answered: {:?}",
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        failed.is_empty(),
        "requests lost to HAProxy reloads ({} of {}):\n{}\n{}",
        failed.len(),
        total as usize + failed.len(),
        failed.join("\n"),
        std::fs::read_to_string(&c.lb.log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_rolling_restart_with_unready_delay_fails_no_request() {
    // HAProxy marks a node down after `fall 2` failed checks, 1 s + 250 ms apart: a 3 s
    // unready_delay lets it move traffic away before segd stops accepting.
    let mut c = Cluster::start(Opts {
        unready_delay: Some("3s"),
        ..Opts::default()
    })
    .await;
    let _ = c.learn_owners().await;
    let load = Load::start(&c.lb.url(""));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (name, _) in NODES {
        c.node(name).srv().signal(libc::SIGTERM);
        assert!(
            c.lb.wait_status(name, "DOWN", Duration::from_secs(3)).await,
            "{name}: /readyz never took it out of HAProxy"
        );
        let node = c.node_mut(name);
        let srv = node.srv.as_mut().expect("running");
        assert!(
            srv.child.try_wait().ok().flatten().is_none(),
            "{name} exited before HAProxy took it out"
        );
        assert_eq!(
            srv.wait_exit(Duration::from_secs(15)),
            Some(0),
            "{name} drains and exits 0"
        );
        node.srv = None;
        node.start();
        assert!(
            c.lb.wait_status(name, "UP", Duration::from_secs(10)).await,
            "{name} never came back"
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outcomes = load.finish().await;
    let failed = failures(outcomes.iter());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
}
