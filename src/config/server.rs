//! `[server]`: the plaintext listeners, worker threads, timeouts, limits and I/O backend.
//!
//! Also [`parse_addr`], the socket-address reader the admin and TLS sections share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::fields::Section;

/// `server.max_connections` when the file does not set it (fitted to the descriptor limit at
/// start: only an explicit value that does not fit is worth a warning).
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;

/// The largest `header_read_timeout` and `keepalive_timeout` a config may set (what a reload
/// can raise them to: hyper's own head timer on TLS connections runs past both, see
/// `http::h1::HYPER_BACKSTOP`).
pub const HEADER_READ_TIMEOUT_MAX: Duration = Duration::from_secs(600);
pub const KEEPALIVE_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plaintext listeners: HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    pub listen: Vec<SocketAddr>,
    /// Worker threads (resolved: `0` in the file becomes the number of CPU cores).
    pub workers: usize,
    /// Threads for blocking file work (opens, stats, writes, fsync), started at start-up and
    /// kept: a burst of requests queues for them instead of creating a thread each.
    pub blocking_threads: usize,
    /// How long SIGTERM waits for in-flight responses.
    pub drain_timeout: Duration,
    /// A client must send a complete request head within this time (and a body where one
    /// means nothing, a GET's, read and discarded, within this time again).
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this time.
    pub keepalive_timeout: Duration,
    /// Client connections beyond this are accepted and closed at once (counted).
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/3 request streams a client may have open at once on one QUIC connection.
    pub h3_max_concurrent_streams: u32,
    /// `auto` (io_uring, falling back to threads), `uring`, or `threads`.
    pub io_backend: String,
    /// Disk jobs in flight per volume.
    pub io_queue_depth: usize,
    /// Linux scheduling policy of the worker and blocking threads: `SCHED_OTHER` (false) or
    /// `SCHED_BATCH` (true: a worker woken by an event waits for the thread running on its CPU
    /// instead of preempting it; see docs/tuning.md).
    pub sched_batch: bool,
    /// A client that accepts no response bytes for this long is disconnected.
    pub send_timeout: Duration,
    /// Request heads larger than this get 431.
    pub max_header_bytes: usize,
    /// Requests with more header field lines than this get 431 (every protocol).
    pub max_header_fields: usize,
    /// Request targets longer than this get 414.
    pub max_uri_bytes: usize,
    /// How often volume health is re-checked.
    pub volume_check_interval: Duration,
    /// Paths printed as ready-to-open URLs when `serve` starts (signed if the path is protected).
    pub print_urls: Vec<String>,
    /// TLS writers send segments too big for the hot-body cache from a memory map (no read
    /// buffer copy); segment files must then be immutable while served (`io::mapped`).
    pub mmap: bool,
    /// `X-Served-By` value added to every response (`served_by`); `None`: no such header.
    pub served_by: Option<http::HeaderValue>,
    /// On SIGTERM/SIGINT, `/readyz` answers 503 at once while the listeners keep accepting and
    /// serving for this long (so a balancer's health check moves traffic away); then the drain.
    pub unready_delay: Duration,
    /// Where the pid is written at start (atomically), rewritten by the new process after an
    /// upgrade, and removed at a clean exit if it still holds this process's pid. Relative to the
    /// config file's directory.
    pub pid_file: Option<PathBuf>,
    /// Connections from these networks begin with a PROXY protocol header (v1 or v2), whose
    /// source address is the client's (`server::proxy_protocol`); none from anywhere else.
    pub proxy_protocol: Vec<ipnet::IpNet>,
}

pub(super) const SERVER_KEYS: &[&str] = &[
    "listen",
    "workers",
    "blocking_threads",
    "drain_timeout",
    "header_read_timeout",
    "keepalive_timeout",
    "max_header_bytes",
    "max_header_fields",
    "max_uri_bytes",
    "send_timeout",
    "max_connections",
    "h2_max_concurrent_streams",
    "h3_max_concurrent_streams",
    "io_backend",
    "io_queue_depth",
    "sched_policy",
    "volume_check_interval",
    "print_urls",
    "mmap",
    "served_by",
    "unready_delay",
    "pid_file",
    "proxy_protocol",
];

/// A listen address. An IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]:8080`) is refused here:
/// IPv6 listeners are IPv6-only (`IPV6_V6ONLY`, `server::listener::bind_tcp`), on which Linux
/// refuses to bind one (EINVAL, which would only say "Invalid argument" at start-up, after
/// `check-config` passed), and no client could reach it there anyway: the IPv4 address is
/// what reaches those clients.
pub(super) fn parse_addr(s: &Section, key: &str, v: &str) -> Option<SocketAddr> {
    let allowed = "IP:PORT such as \"127.0.0.1:8080\" or \"[::]:80\"";
    let Ok(addr) = v.parse::<SocketAddr>() else {
        s.error(key, format!("{v:?} is not a socket address"), allowed);
        return None;
    };
    if let SocketAddr::V6(a) = addr {
        if let Some(ip) = a.ip().to_ipv4_mapped() {
            let v4 = SocketAddr::from((ip, a.port()));
            s.error(
                key,
                format!(
                    "{v:?} is an IPv4-mapped IPv6 address, which an IPv6 listener cannot \
                     take: they are IPv6-only (IPV6_V6ONLY); write the IPv4 address \"{v4}\" \
                     instead"
                ),
                allowed,
            );
            return None;
        }
    }
    Some(addr)
}

pub(super) fn parse_server(s: &Section) -> ServerConfig {
    let listen_allowed = "a list of IP:PORT strings, e.g. [\"0.0.0.0:80\"]";
    let listen = match s.string_list("listen", listen_allowed) {
        Some(list) => {
            if list.is_empty() {
                s.error("listen", "no address given", listen_allowed);
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, a)| parse_addr(s, &format!("listen[{i}]"), a))
                .collect()
        }
        None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
    };
    let workers = s.int("workers", 0, 0, 1024, "0 (one per CPU core) or 1..=1024") as usize;
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    let blocking_threads = s.int("blocking_threads", 64, 1, 1024, "1..=1024") as usize;
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    let mmap = s.bool("mmap", true);
    let served_by = parse_served_by(s);
    s.finish();
    ServerConfig {
        listen,
        workers,
        blocking_threads,
        drain_timeout: s.duration("drain_timeout", secs(30), secs(0), secs(3600)),
        header_read_timeout: s.duration(
            "header_read_timeout",
            secs(10),
            ms(100),
            HEADER_READ_TIMEOUT_MAX,
        ),
        keepalive_timeout: s.duration(
            "keepalive_timeout",
            secs(60),
            ms(100),
            KEEPALIVE_TIMEOUT_MAX,
        ),
        send_timeout: s.duration("send_timeout", secs(30), secs(1), secs(3600)),
        max_connections: s.int(
            "max_connections",
            DEFAULT_MAX_CONNECTIONS as i64,
            1,
            10_000_000,
            "1..=10000000 connections",
        ) as usize,
        h2_max_concurrent_streams: s.int(
            "h2_max_concurrent_streams",
            128,
            1,
            10_000,
            "1..=10000 streams",
        ) as u32,
        h3_max_concurrent_streams: s.int(
            "h3_max_concurrent_streams",
            128,
            1,
            10_000,
            "1..=10000 streams",
        ) as u32,
        io_backend: {
            let allowed = "auto, uring, threads";
            match s.string("io_backend", allowed).as_deref() {
                None | Some("auto") => "auto".to_string(),
                Some(v @ ("uring" | "threads")) => v.to_string(),
                Some(other) => {
                    s.error("io_backend", format!("unknown backend {other:?}"), allowed);
                    "auto".to_string()
                }
            }
        },
        io_queue_depth: s.int("io_queue_depth", 64, 1, 4096, "1..=4096 jobs per volume") as usize,
        sched_batch: {
            let allowed = "other, batch";
            match s.string("sched_policy", allowed).as_deref() {
                None | Some("other") => false,
                Some("batch") => true,
                Some(v) => {
                    s.error("sched_policy", format!("unknown policy {v:?}"), allowed);
                    false
                }
            }
        },
        max_header_bytes: s.size("max_header_bytes", 16 << 10, 1 << 10, 1 << 20) as usize,
        max_header_fields: s.int("max_header_fields", 100, 8, 10_000, "8..=10000 field lines")
            as usize,
        max_uri_bytes: s.size("max_uri_bytes", 4096, 256, 64 << 10) as usize,
        volume_check_interval: s.duration("volume_check_interval", secs(2), ms(100), secs(3600)),
        print_urls: {
            let allowed = "URL paths starting with \"/\"";
            let urls = s.string_list("print_urls", allowed).unwrap_or_default();
            for (i, u) in urls.iter().enumerate() {
                if !u.starts_with('/') {
                    s.error(
                        &format!("print_urls[{i}]"),
                        format!("{u:?} is not a path"),
                        allowed,
                    );
                }
            }
            urls
        },
        mmap,
        served_by,
        unready_delay: s.duration("unready_delay", secs(0), secs(0), secs(300)),
        pid_file: parse_pid_file(s),
        proxy_protocol: parse_proxy_protocol(s),
    }
}

/// `proxy_protocol`: the balancers' networks (CIDR) or addresses.
fn parse_proxy_protocol(s: &Section) -> Vec<ipnet::IpNet> {
    let allowed = "a list of networks or addresses of the balancers that send the PROXY \
                   protocol header, e.g. [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::/8\"]";
    let list = s.string_list("proxy_protocol", allowed).unwrap_or_default();
    list.iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let net = v
                .parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| v.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
            if net.is_none() {
                s.error(
                    &format!("proxy_protocol[{i}]"),
                    format!("{v:?} is not a network or an address"),
                    allowed,
                );
            }
            net.map(|n| n.trunc())
        })
        .collect()
}

/// `served_by`: a node name for `X-Served-By`; it must be a visible-ASCII header value.
fn parse_served_by(s: &Section) -> Option<http::HeaderValue> {
    let allowed = "a node name of 1 to 64 visible ASCII characters, e.g. \"node-a\"";
    let v = s.string("served_by", allowed)?;
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic());
    match http::HeaderValue::from_str(&v) {
        Ok(h) if ok => Some(h),
        _ => {
            s.error(
                "served_by",
                format!("{v:?} is not a usable node name"),
                allowed,
            );
            None
        }
    }
}

/// `pid_file`: a path, relative to the config file's directory.
fn parse_pid_file(s: &Section) -> Option<PathBuf> {
    let allowed = "a file path such as \"/run/segd/segd.pid\"";
    let v = s.string("pid_file", allowed)?;
    if v.is_empty() || v.ends_with('/') {
        s.error("pid_file", format!("{v:?} is not a file path"), allowed);
        return None;
    }
    let base = s.ctx().file.parent().map(PathBuf::from).unwrap_or_default();
    Some(base.join(v))
}
