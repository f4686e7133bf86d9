//! segd's configuration: one TOML file, parsed and validated once into typed structs.
//!
//! [`Config::load`] reads a file; [`Config::parse`] takes the text (tests use it). Either collects
//! every problem — unknown keys, wrong types, out-of-range values, cross-key conflicts — and
//! returns them all in [`ConfigErrors`]. Checks that touch the filesystem (do the volume roots
//! exist?) are separate, in [`Config::check_paths`]: `check-config` runs them as errors, while
//! `serve` starts with such a volume marked unhealthy, because a dead disk must not stop the others.
//!
//! Relative paths in the file (volumes, access log) are relative to the file's own directory.

mod error;
mod fields;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, ConfigErrors};
pub use fields::{fmt_duration, fmt_size, parse_duration, parse_size};
use fields::{Ctx, Section};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (for messages and reload).
    pub file: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub volumes: Vec<VolumeConfig>,
    pub cache: CacheConfig,
    pub token: TokenConfig,
    pub cors: CorsConfig,
    pub cache_control: CacheControlConfig,
    /// Extra served extensions beyond the built-in media types: (extension, content type).
    pub types: Vec<(String, String)>,
    pub log: LogConfig,
    /// TLS listeners, when `[tls]` lists any.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// TCP listeners speaking TLS 1.2/1.3 with ALPN h2 and http/1.1.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first) and private key (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// HTTP/3 over QUIC on UDP at the same addresses; TCP responses on these listeners then
    /// advertise it with `Alt-Svc`.
    pub http3: bool,
    /// When a new QUIC connection must first prove its address with a Retry round trip.
    pub quic_retry: QuicRetry,
    /// Extra certificates chosen by SNI (`[[tls.certs]]`); `cert`/`key` above serve every other
    /// name and clients that send no SNI.
    pub certs: Vec<SniCert>,
}

/// Stateless Retry (address validation) for new QUIC connections: protects against spoofed-source
/// floods at the cost of one round trip for the clients it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicRetry {
    /// Only while more than half of `server.max_connections` are open.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct SniCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Exact DNS names (lowercase) this certificate is served for; each must be in the certificate.
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plaintext listeners: HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    pub listen: Vec<SocketAddr>,
    /// Worker threads (resolved: `0` in the file becomes the number of CPU cores).
    pub workers: usize,
    /// How long SIGTERM waits for in-flight responses.
    pub drain_timeout: Duration,
    /// A client must send a complete request head within this time.
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
    /// A client that accepts no response bytes for this long is disconnected.
    pub send_timeout: Duration,
    /// Request heads larger than this get 431.
    pub max_header_bytes: usize,
    /// Request targets longer than this get 414.
    pub max_uri_bytes: usize,
    /// How often volume health is re-checked.
    pub volume_check_interval: Duration,
    /// Paths printed as ready-to-open URLs when `serve` starts (signed if the path is protected).
    pub print_urls: Vec<String>,
    /// TLS writers send segments too big for the hot-body cache from a memory map (no read
    /// buffer copy); segment files must then be immutable while served (`io::mapped`).
    pub mmap: bool,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when the admin listener is off.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Label used in logs and metrics (defaults to the path as written).
    pub name: String,
    /// Absolute (or config-relative, resolved) root directory.
    pub path: PathBuf,
    /// If set, a file that must exist in the root for the volume to count as mounted and healthy.
    pub marker: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub max_item_bytes: u64,
    /// Open descriptors kept in the open-file cache (bounded by the fd limit at start).
    pub open_files: u64,
    /// How long a cached segment descriptor is trusted before its path is re-checked.
    pub open_file_valid: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    Sha256,
    Sha1,
    Md5,
}

impl TokenAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlgorithm::Sha256 => "sha256",
            TokenAlgorithm::Sha1 => "sha1",
            TokenAlgorithm::Md5 => "md5",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaylistTokens {
    Off,
    Forward,
    Mint,
}

#[derive(Debug, Clone)]
pub struct TokenKey {
    pub id: String,
    /// The hex-decoded secret: the HMAC key.
    pub secret: Vec<u8>,
    /// Unix seconds; the key is not used before this.
    pub not_before: Option<u64>,
    /// Unix seconds; the key is not used after this.
    pub not_after: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    pub algorithm: TokenAlgorithm,
    pub protect: Vec<String>,
    pub leeway: Duration,
    pub keys: Vec<TokenKey>,
    pub salt: Option<String>,
    /// Header name (lower-case) and secret that let a CDN skip token checks.
    pub origin_auth: Option<(String, String)>,
    /// Whether an origin-authenticated request skips token checks (default true). When false,
    /// origin auth only makes `client_ip_header` trusted, and tokens are still verified.
    pub origin_auth_skips_tokens: bool,
    /// Header (lower-case) carrying the real client address, trusted only with origin auth.
    pub client_ip_header: Option<String>,
    pub playlist_tokens: PlaylistTokens,
    /// Lifetime of tokens minted into playlists (`playlist_tokens = "mint"`).
    pub mint_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// `["*"]` or a list of exact origins.
    pub allow_origins: Vec<String>,
    /// `Access-Control-Max-Age` for preflight answers.
    pub max_age: Duration,
}

impl CorsConfig {
    pub fn any_origin(&self) -> bool {
        self.allow_origins.iter().any(|o| o == "*")
    }
}

#[derive(Debug, Clone)]
pub struct CacheControlConfig {
    pub segments: String,
    pub playlists: String,
    pub keys: String,
    pub live_prefixes: Vec<String>,
    pub live: String,
    pub live_segments: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: AccessLog,
    pub format: LogFormat,
    /// Operational log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub level: String,
}

const TOP_KEYS: &[&str] = &[
    "server",
    "admin",
    "volumes",
    "cache",
    "token",
    "cors",
    "cache_control",
    "types",
    "log",
    "tls",
];
const TLS_KEYS: &[&str] = &["listen", "cert", "key", "http3", "quic_retry", "certs"];
const TLS_CERT_KEYS: &[&str] = &["cert", "key", "server_names"];
const SERVER_KEYS: &[&str] = &[
    "listen",
    "workers",
    "drain_timeout",
    "header_read_timeout",
    "keepalive_timeout",
    "max_header_bytes",
    "max_uri_bytes",
    "send_timeout",
    "max_connections",
    "h2_max_concurrent_streams",
    "h3_max_concurrent_streams",
    "io_backend",
    "io_queue_depth",
    "volume_check_interval",
    "print_urls",
    "mmap",
];
const ADMIN_KEYS: &[&str] = &["listen"];
const VOLUME_KEYS: &[&str] = &["path", "name", "marker"];
const CACHE_KEYS: &[&str] = &[
    "max_bytes",
    "max_item_bytes",
    "open_files",
    "open_file_valid",
];
const TOKEN_KEYS: &[&str] = &[
    "name",
    "algorithm",
    "protect",
    "leeway",
    "keys",
    "salt",
    "origin_auth_header",
    "origin_auth_secret",
    "origin_auth_skips_tokens",
    "client_ip_header",
    "playlist_tokens",
    "mint_ttl",
];
const KEY_KEYS: &[&str] = &["id", "secret", "not_before", "not_after"];
const CORS_KEYS: &[&str] = &["allow_origins", "max_age"];
const CACHE_CONTROL_KEYS: &[&str] = &[
    "segments",
    "playlists",
    "keys",
    "live_prefixes",
    "live",
    "live_segments",
];
const LOG_KEYS: &[&str] = &["access", "format", "level"];

/// Built-in served extensions. Anything else is 404 unless added under `[types]`.
pub const BUILTIN_TYPES: &[(&str, &str)] = &[
    ("m3u8", "application/vnd.apple.mpegurl"),
    ("mpd", "application/dash+xml"),
    ("ts", "video/mp2t"),
    ("m4s", "video/iso.segment"),
    ("mp4", "video/mp4"),
    ("m4a", "audio/mp4"),
    ("aac", "audio/aac"),
    ("mp3", "audio/mpeg"),
    ("vtt", "text/vtt"),
    ("key", "application/octet-stream"),
];

impl Config {
    /// Reads and validates `path`. A missing or unreadable file is one error naming the path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut errs = ConfigErrors::default();
            errs.push(path, "", format!("cannot read config file: {e}"), "");
            errs
        })?;
        Config::parse(&text, path)
    }

    /// Validates config `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let ctx = Ctx::new(path);
        let doc: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                ctx.error("", format!("invalid TOML: {}", msg.trim()), "");
                return Err(ctx.errors.into_inner());
            }
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let top = Section::new(&ctx, "", Some(&doc), TOP_KEYS);
        let server = parse_server(&top.table("server", SERVER_KEYS));
        let admin = parse_admin(&top.table("admin", ADMIN_KEYS));
        let volumes = parse_volumes(&top, &base);
        let cache = parse_cache(&top.table("cache", CACHE_KEYS));
        let token = parse_token(&top.table("token", TOKEN_KEYS));
        let cors = parse_cors(&top.table("cors", CORS_KEYS));
        let cache_control = parse_cache_control(&top.table("cache_control", CACHE_CONTROL_KEYS));
        let types = parse_types(&top);
        let log = parse_log(&top.table("log", LOG_KEYS), &base);
        let tls = parse_tls(&top.table("tls", TLS_KEYS), &base);
        top.finish();

        // Cross-key checks.
        let mut all: Vec<SocketAddr> = server.listen.clone();
        all.extend(admin.listen);
        all.extend(tls.iter().flat_map(|t| t.listen.iter().copied()));
        for (i, a) in all.iter().enumerate() {
            if a.port() != 0 && all[..i].contains(a) {
                ctx.error(
                    if Some(*a) == admin.listen {
                        "admin.listen"
                    } else {
                        "server.listen"
                    },
                    format!("address {a} is used twice"),
                    "each listener needs its own address",
                );
            }
        }

        let errors = ctx.errors.into_inner();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            file: path.to_path_buf(),
            server,
            admin,
            volumes,
            cache,
            token,
            cors,
            cache_control,
            types,
            log,
            tls,
        })
    }

    /// Filesystem checks `check-config` adds: volume roots exist, are directories, are readable.
    pub fn check_paths(&self) -> ConfigErrors {
        let mut errs = ConfigErrors::default();
        for (i, v) in self.volumes.iter().enumerate() {
            let key = format!("volumes[{i}].path");
            match std::fs::read_dir(&v.path) {
                Ok(_) => {
                    if let Some(m) = &v.marker {
                        if !v.path.join(m).is_file() {
                            errs.push(
                                &self.file,
                                format!("volumes[{i}].marker"),
                                format!("marker file {m:?} not found in {}", v.path.display()),
                                "an existing regular file at the volume root",
                            );
                        }
                    }
                }
                Err(e) => errs.push(
                    &self.file,
                    key,
                    format!("{}: {e}", v.path.display()),
                    "an existing, readable directory",
                ),
            }
        }
        if let AccessLog::File(p) = &self.log.access {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir {
                if !d.is_dir() {
                    errs.push(
                        &self.file,
                        "log.access",
                        format!("directory {} does not exist", d.display()),
                        "off, stdout, or a file path in an existing directory",
                    );
                }
            }
        }
        errs
    }

    /// The content type for a file extension (lower-case, without the dot), if segd serves it.
    pub fn content_type(&self, ext: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, t)| t.as_str())
            .or_else(|| {
                BUILTIN_TYPES
                    .iter()
                    .find(|(e, _)| *e == ext)
                    .map(|(_, t)| *t)
            })
    }
}

fn parse_addr(s: &Section, key: &str, v: &str) -> Option<SocketAddr> {
    match v.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            s.error(
                key,
                format!("{v:?} is not a socket address"),
                "IP:PORT such as \"127.0.0.1:8080\" or \"[::]:80\"",
            );
            None
        }
    }
}

fn parse_server(s: &Section) -> ServerConfig {
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
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    let mmap = s.bool("mmap", true);
    s.finish();
    ServerConfig {
        listen,
        workers,
        drain_timeout: s.duration("drain_timeout", secs(30), secs(0), secs(3600)),
        header_read_timeout: s.duration("header_read_timeout", secs(10), ms(100), secs(600)),
        keepalive_timeout: s.duration("keepalive_timeout", secs(60), ms(100), secs(3600)),
        send_timeout: s.duration("send_timeout", secs(30), secs(1), secs(3600)),
        max_connections: s.int(
            "max_connections",
            50_000,
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
        max_header_bytes: s.size("max_header_bytes", 16 << 10, 1 << 10, 1 << 20) as usize,
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
    }
}

fn parse_admin(s: &Section) -> AdminConfig {
    let allowed = "IP:PORT such as \"127.0.0.1:9090\", or \"off\"";
    let listen = match s.string("listen", allowed).as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        Some("off") | Some("") => None,
        Some(v) => parse_addr(s, "listen", v),
    };
    s.finish();
    AdminConfig { listen }
}

fn parse_volumes(top: &Section, base: &Path) -> Vec<VolumeConfig> {
    let sections = top.tables("volumes", VOLUME_KEYS);
    if sections.is_empty() && top.raw("volumes").is_none() {
        top.error(
            "volumes",
            "no volume configured",
            "at least one [[volumes]] table with a path",
        );
    }
    let mut out: Vec<VolumeConfig> = Vec::new();
    for v in sections {
        let path = match v.string("path", "a directory path") {
            Some(p) if !p.is_empty() => Some(base.join(p)),
            Some(_) => {
                v.error("path", "empty path", "a directory path");
                None
            }
            None => {
                if v.raw("path").is_none() {
                    v.error("path", "missing", "a directory path");
                }
                None
            }
        };
        let name = v.string("name", "a short label for logs and metrics");
        let marker = v.string(
            "marker",
            "a file name at the volume root, e.g. \".segd-volume\"",
        );
        if let Some(m) = &marker {
            if m.is_empty() || m.contains('/') || m == "." || m == ".." {
                v.error(
                    "marker",
                    format!("{m:?} is not a plain file name"),
                    "a file name at the volume root, e.g. \".segd-volume\"",
                );
            }
        }
        if let Some(path) = path {
            let name = name.unwrap_or_else(|| {
                v.raw("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default()
                    .to_string()
            });
            if out.iter().any(|o| o.path == path) {
                v.error(
                    "path",
                    format!("{} is listed twice", path.display()),
                    "distinct directories",
                );
            }
            if out.iter().any(|o| o.name == name) {
                v.error(
                    "name",
                    format!("volume name {name:?} is used twice"),
                    "a unique label per volume",
                );
            }
            out.push(VolumeConfig { name, path, marker });
        }
        v.finish();
    }
    out
}

fn parse_cache(s: &Section) -> CacheConfig {
    let max_bytes = s.size("max_bytes", 1 << 30, 0, 1 << 40);
    let max_item_bytes = s.size("max_item_bytes", 8 << 20, 0, 1 << 32);
    if max_item_bytes > max_bytes {
        s.error(
            "max_item_bytes",
            format!(
                "{} is larger than cache.max_bytes ({})",
                fmt_size(max_item_bytes),
                fmt_size(max_bytes)
            ),
            "a size no larger than cache.max_bytes",
        );
    }
    let open_files = s.int(
        "open_files",
        10_000,
        0,
        1_000_000,
        "0 (off) to 1000000 descriptors",
    ) as u64;
    let open_file_valid = s.duration(
        "open_file_valid",
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    s.finish();
    CacheConfig {
        max_bytes,
        max_item_bytes,
        open_files,
        open_file_valid,
    }
}

/// Header names are checked here so a typo cannot silently disable origin auth.
fn header_name(s: &Section, key: &str) -> Option<String> {
    let allowed = "an HTTP header name such as \"X-Origin-Auth\"";
    let v = s.string(key, allowed)?;
    match http::HeaderName::from_bytes(v.as_bytes()) {
        Ok(h) => Some(h.as_str().to_string()),
        Err(_) => {
            s.error(key, format!("{v:?} is not a valid header name"), allowed);
            None
        }
    }
}

/// Unix seconds as an integer, or RFC 3339 UTC (`2026-01-01T00:00:00Z`).
fn timestamp(s: &Section, key: &str) -> Option<u64> {
    let allowed = "Unix seconds, or an RFC 3339 UTC time such as 2026-01-01T00:00:00Z";
    match s.raw(key)? {
        toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
        toml::Value::Datetime(d) => match (d.date, d.time, d.offset) {
            (Some(date), Some(time), Some(toml::value::Offset::Z)) => Some(
                unix_from_civil(
                    i64::from(date.year),
                    u32::from(date.month),
                    u32::from(date.day),
                ) as u64
                    + u64::from(time.hour) * 3600
                    + u64::from(time.minute) * 60
                    + u64::from(time.second.unwrap_or(0)),
            ),
            _ => {
                s.error(key, format!("{d} is not a UTC timestamp"), allowed);
                None
            }
        },
        other => {
            s.error(key, format!("{other} is not a timestamp"), allowed);
            None
        }
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date, times 86400.
fn unix_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86400
}

fn parse_token(s: &Section) -> TokenConfig {
    let name = s
        .string("name", "a query/cookie name such as \"__token__\"")
        .unwrap_or_else(|| "__token__".into());
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !name_ok {
        s.error(
            "name",
            format!("{name:?} is not a usable token name"),
            "letters, digits, '_', '-', '.'",
        );
    }
    let alg_allowed = "sha256, sha1, md5";
    let algorithm = match s.string("algorithm", alg_allowed).as_deref() {
        None | Some("sha256") => TokenAlgorithm::Sha256,
        Some("sha1") => TokenAlgorithm::Sha1,
        Some("md5") => TokenAlgorithm::Md5,
        Some(other) => {
            s.error(
                "algorithm",
                format!("unknown algorithm {other:?}"),
                alg_allowed,
            );
            TokenAlgorithm::Sha256
        }
    };
    let prefix_allowed = "URL path prefixes starting with \"/\", e.g. \"/vod/\"";
    let protect = s.string_list("protect", prefix_allowed).unwrap_or_default();
    for (i, p) in protect.iter().enumerate() {
        if !p.starts_with('/') {
            s.error(
                &format!("protect[{i}]"),
                format!("{p:?} does not start with \"/\""),
                prefix_allowed,
            );
        }
    }
    let leeway = s.duration(
        "leeway",
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let mut keys: Vec<TokenKey> = Vec::new();
    for k in s.tables("keys", KEY_KEYS) {
        let id = k.string("id", "a short key identifier");
        if id.is_none() && k.raw("id").is_none() {
            k.error("id", "missing", "a short key identifier");
        }
        let secret_allowed = "an even number of hex digits (at least 16 bytes' worth: 32 digits is recommended; CDNs issue 28+)";
        let secret = match k.string("secret", secret_allowed) {
            Some(hexs) => match hex::decode(hexs.trim()) {
                Ok(b) if b.len() >= 8 => Some(b),
                Ok(_) => {
                    k.error("secret", "secret is too short", secret_allowed);
                    None
                }
                Err(e) => {
                    k.error("secret", format!("not hex: {e}"), secret_allowed);
                    None
                }
            },
            None => {
                if k.raw("secret").is_none() {
                    k.error("secret", "missing", secret_allowed);
                }
                None
            }
        };
        let not_before = timestamp(&k, "not_before");
        let not_after = timestamp(&k, "not_after");
        if let (Some(a), Some(b)) = (not_before, not_after) {
            if b <= a {
                k.error(
                    "not_after",
                    "is not after not_before",
                    "a time later than not_before",
                );
            }
        }
        if let (Some(id), Some(secret)) = (id, secret) {
            if keys.iter().any(|o| o.id == id) {
                k.error(
                    "id",
                    format!("key id {id:?} is used twice"),
                    "unique key ids",
                );
            }
            keys.push(TokenKey {
                id,
                secret,
                not_before,
                not_after,
            });
        }
        k.finish();
    }
    if !protect.is_empty() && keys.is_empty() && s.raw("keys").is_none() {
        s.error(
            "keys",
            "token.protect is set but no [[token.keys]] is configured, so nothing could be served there",
            "at least one [[token.keys]] table with id and secret",
        );
    }
    let salt = s.string("salt", "a string appended to the signed data as ~salt=…");
    let origin_header = header_name(s, "origin_auth_header");
    let origin_secret = s.string("origin_auth_secret", "a shared secret string");
    let origin_auth = match (origin_header, origin_secret) {
        (Some(h), Some(v)) if v.len() >= 16 => Some((h, v)),
        (Some(_), Some(_)) => {
            s.error(
                "origin_auth_secret",
                "shorter than 16 characters",
                "a secret of 16+ characters",
            );
            None
        }
        (Some(_), None) => {
            s.error(
                "origin_auth_secret",
                "missing while origin_auth_header is set",
                "a secret of 16+ characters",
            );
            None
        }
        (None, Some(_)) if s.raw("origin_auth_header").is_none() => {
            s.error(
                "origin_auth_header",
                "missing while origin_auth_secret is set",
                "an HTTP header name",
            );
            None
        }
        _ => None,
    };
    let origin_auth_skips_tokens = s.bool("origin_auth_skips_tokens", true);
    let client_ip_header = header_name(s, "client_ip_header");
    let pt_allowed = "forward, mint, off";
    let playlist_tokens = match s.string("playlist_tokens", pt_allowed).as_deref() {
        None | Some("forward") => PlaylistTokens::Forward,
        Some("mint") => PlaylistTokens::Mint,
        Some("off") => PlaylistTokens::Off,
        Some(other) => {
            s.error(
                "playlist_tokens",
                format!("unknown mode {other:?}"),
                pt_allowed,
            );
            PlaylistTokens::Forward
        }
    };
    let mint_ttl = s.duration(
        "mint_ttl",
        Duration::from_secs(6 * 3600),
        Duration::from_secs(1),
        Duration::from_secs(7 * 86400),
    );
    s.finish();
    TokenConfig {
        name,
        algorithm,
        protect,
        leeway,
        keys,
        salt,
        origin_auth,
        origin_auth_skips_tokens,
        client_ip_header,
        playlist_tokens,
        mint_ttl,
    }
}

fn parse_cors(s: &Section) -> CorsConfig {
    let allowed = "[\"*\"] or a list of origins such as \"https://player.example.com\"";
    let allow_origins = s
        .string_list("allow_origins", allowed)
        .unwrap_or_else(|| vec!["*".into()]);
    for (i, o) in allow_origins.iter().enumerate() {
        let ok = o == "*"
            || ((o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && http::HeaderValue::from_str(o).is_ok());
        if !ok {
            s.error(
                &format!("allow_origins[{i}]"),
                format!("{o:?} is not an origin"),
                allowed,
            );
        }
    }
    let max_age = s.duration(
        "max_age",
        Duration::from_secs(86400),
        Duration::ZERO,
        Duration::from_secs(7 * 86400),
    );
    s.finish();
    CorsConfig {
        allow_origins,
        max_age,
    }
}

fn header_value(s: &Section, key: &str, default: &str) -> String {
    let allowed = "a Cache-Control header value, e.g. \"public, max-age=60\"";
    match s.string(key, allowed) {
        None => default.to_string(),
        Some(v) if !v.is_empty() && http::HeaderValue::from_str(&v).is_ok() => v,
        Some(v) => {
            s.error(key, format!("{v:?} is not a valid header value"), allowed);
            default.to_string()
        }
    }
}

fn parse_cache_control(s: &Section) -> CacheControlConfig {
    let live = header_value(s, "live", "public, max-age=1");
    let prefix_allowed = "URL path prefixes starting with \"/\", e.g. \"/live/\"";
    let live_prefixes = s
        .string_list("live_prefixes", prefix_allowed)
        .unwrap_or_else(|| vec!["/live/".into()]);
    for (i, p) in live_prefixes.iter().enumerate() {
        if !p.starts_with('/') {
            s.error(
                &format!("live_prefixes[{i}]"),
                format!("{p:?} does not start with \"/\""),
                prefix_allowed,
            );
        }
    }
    s.finish();
    CacheControlConfig {
        segments: header_value(s, "segments", "public, max-age=31536000, immutable"),
        playlists: header_value(s, "playlists", "public, max-age=10"),
        keys: header_value(s, "keys", "private, no-store"),
        live_segments: header_value(s, "live_segments", &live),
        live,
        live_prefixes,
    }
}

fn parse_types(top: &Section) -> Vec<(String, String)> {
    let allowed = "extension = \"content/type\" pairs, e.g. flac = \"audio/flac\"";
    let table = match top.raw("types") {
        None => return Vec::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            top.error("types", "expected a table", allowed);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (ext, v) in table {
        let key = format!("types.{ext}");
        let ext_ok = !ext.is_empty()
            && ext.len() <= 16
            && ext
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ext_ok {
            top.ctx().error(
                &key,
                format!("{ext:?} is not a file extension"),
                "1-16 lower-case letters or digits, no dot",
            );
            continue;
        }
        match v.as_str() {
            Some(t) if t.contains('/') && http::HeaderValue::from_str(t).is_ok() => {
                out.push((ext.clone(), t.to_string()))
            }
            _ => top
                .ctx()
                .error(&key, format!("{v} is not a content type"), allowed),
        }
    }
    out
}

fn parse_tls(s: &Section, base: &Path) -> Option<TlsConfig> {
    let listen_allowed = "a list of IP:PORT strings, e.g. [\"0.0.0.0:443\"]";
    let listen: Vec<SocketAddr> = s
        .string_list("listen", listen_allowed)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, a)| parse_addr(s, &format!("listen[{i}]"), a))
        .collect();
    let cert = tls_file(s, base, "cert", "a PEM certificate chain file, leaf first");
    let key = tls_file(
        s,
        base,
        "key",
        "a PEM private key file (PKCS#8, PKCS#1 or SEC1)",
    );
    let http3 = s.bool("http3", false);
    let retry_allowed = "auto, always, never";
    let quic_retry = match s.string("quic_retry", retry_allowed).as_deref() {
        None | Some("auto") => QuicRetry::Auto,
        Some("always") => QuicRetry::Always,
        Some("never") => QuicRetry::Never,
        Some(other) => {
            s.error(
                "quic_retry",
                format!("unknown mode {other:?}"),
                retry_allowed,
            );
            QuicRetry::Auto
        }
    };
    let certs = s
        .tables("certs", TLS_CERT_KEYS)
        .iter()
        .filter_map(|c| parse_sni_cert(c, base))
        .collect();
    s.finish();
    if listen.is_empty() {
        return None;
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            listen,
            cert,
            key,
            http3,
            quic_retry,
            certs,
        }),
        (c, k) => {
            if c.is_none() && s.raw("cert").is_none() {
                s.error(
                    "cert",
                    "missing while tls.listen is set",
                    "a PEM certificate chain file",
                );
            }
            if k.is_none() && s.raw("key").is_none() {
                s.error(
                    "key",
                    "missing while tls.listen is set",
                    "a PEM private key file",
                );
            }
            None
        }
    }
}

/// A certificate or key path, relative to the config file's directory.
fn tls_file(s: &Section, base: &Path, key: &str, what: &str) -> Option<PathBuf> {
    match s.string(key, what) {
        Some(p) if !p.is_empty() => Some(base.join(p)),
        Some(_) => {
            s.error(key, "empty path", what);
            None
        }
        None => None,
    }
}

/// One `[[tls.certs]]` entry: all three keys are required.
fn parse_sni_cert(s: &Section, base: &Path) -> Option<SniCert> {
    let names_allowed = "a non-empty list of exact DNS names, e.g. [\"media.example.com\"]";
    let cert = tls_file(s, base, "cert", "a PEM certificate chain file, leaf first");
    let key = tls_file(
        s,
        base,
        "key",
        "a PEM private key file (PKCS#8, PKCS#1 or SEC1)",
    );
    let names = s.string_list("server_names", names_allowed);
    let mut server_names = Vec::new();
    for (i, n) in names.iter().flatten().enumerate() {
        let lower = n.to_ascii_lowercase();
        if rustls::pki_types::DnsName::try_from(lower.as_str()).is_err() || lower.contains('*') {
            s.error(
                &format!("server_names[{i}]"),
                format!("{n:?} is not a DNS name (wildcards are not supported)"),
                names_allowed,
            );
        } else {
            server_names.push(lower);
        }
    }
    s.finish();
    for (k, v) in [("cert", cert.is_some()), ("key", key.is_some())] {
        if !v && s.raw(k).is_none() {
            s.error(
                k,
                "missing",
                "every [[tls.certs]] entry needs cert, key and server_names",
            );
        }
    }
    if names.as_ref().is_some_and(|n| n.is_empty()) || s.raw("server_names").is_none() {
        s.error("server_names", "missing or empty", names_allowed);
        return None;
    }
    Some(SniCert {
        cert: cert?,
        key: key?,
        server_names,
    })
}

fn parse_log(s: &Section, base: &Path) -> LogConfig {
    let access_allowed = "off, stdout, or a file path";
    let access = match s.string("access", access_allowed).as_deref() {
        None | Some("off") => AccessLog::Off,
        Some("stdout") => AccessLog::Stdout,
        Some("") => {
            s.error("access", "empty", access_allowed);
            AccessLog::Off
        }
        Some(p) => AccessLog::File(base.join(p)),
    };
    let fmt_allowed = "json, combined";
    let format = match s.string("format", fmt_allowed).as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("combined") => LogFormat::Combined,
        Some(other) => {
            s.error("format", format!("unknown format {other:?}"), fmt_allowed);
            LogFormat::Json
        }
    };
    let level_allowed =
        "error, warn, info, debug, trace, or a tracing filter such as \"segd=debug\"";
    let level = s
        .string("level", level_allowed)
        .unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        s.error(
            "level",
            format!("{level:?} is not a log filter"),
            level_allowed,
        );
    }
    s.finish();
    LogConfig {
        access,
        format,
        level,
    }
}
