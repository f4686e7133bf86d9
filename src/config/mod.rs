//! segd's configuration: one TOML file, parsed and validated once into typed structs.
//!
//! [`Config::load`] reads a file; [`Config::parse`] takes the text (tests use it). Either collects
//! every problem — unknown keys, wrong types, out-of-range values, cross-key conflicts — and
//! returns them all in [`ConfigErrors`]. Checks that touch the filesystem (do the volume roots
//! exist?) are separate, in [`Config::check_paths`]: `check-config` runs them as errors, while
//! `serve` starts with such a volume marked unhealthy, because a dead disk must not stop the others.
//!
//! Relative paths in the file (volumes, access log) are relative to the file's own directory.
//!
//! Each `[section]` lives in its own file with its struct, its list of accepted keys and its
//! parser, so the keys a section accepts cannot drift from the code that reads them: `server`,
//! `admin`, `volumes`, `cache`, `token`, `cors`, `cache_control`, `types`, `log`, `tls`. This file
//! owns [`Config`] itself, the top-level keys, the cross-section checks and the filesystem checks.
//! Values derived from the config (header values, flags) are computed and validated at parse time
//! by the section that owns them, so request handling never falls back on a default for a bad value.

mod admin;
mod cache;
mod cache_control;
mod cors;
mod error;
mod fields;
mod ingest;
mod live;
pub(crate) mod log;
mod pull;
mod server;
mod tls;
mod token;
mod types;
mod volumes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::HeaderValue;

pub use admin::AdminConfig;
pub use cache::{CacheConfig, DEFAULT_OPEN_FILES};
pub use cache_control::CacheControlConfig;
pub use cors::CorsConfig;
pub use error::{ConfigError, ConfigErrors};
pub use fields::{fmt_duration, fmt_size, parse_duration, parse_size, SecretSource};
pub use ingest::{Durability, IngestConfig, WriteThrough};
pub use live::{LiveConfig, DEFAULT_MAX_PLAYLIST_BYTES};
pub use log::{AccessLog, LogConfig, LogFormat};
pub use pull::{PullConfig, Secret, UpstreamConfig, UpstreamKind};
pub use server::{
    ServerConfig, DEFAULT_MAX_CONNECTIONS, HEADER_READ_TIMEOUT_MAX, KEEPALIVE_TIMEOUT_MAX,
};
pub use tls::{QuicRetry, SniCert, TlsConfig};
pub use token::{PlaylistTokens, TokenAlgorithm, TokenConfig, TokenKey};
pub use types::BUILTIN_TYPES;
pub use volumes::VolumeConfig;

use admin::{parse_admin, ADMIN_KEYS};
use cache::{parse_cache, CACHE_KEYS};
use cache_control::{parse_cache_control, CACHE_CONTROL_KEYS};
use cors::{parse_cors, CORS_KEYS};
use fields::{Ctx, Section};
use ingest::{parse_ingest, INGEST_KEYS};
use live::{parse_live, LIVE_KEYS};
use log::{parse_log, LOG_KEYS};
use pull::{parse_pull, PULL_KEYS};
use server::{parse_server, SERVER_KEYS};
use tls::{parse_tls, TLS_KEYS};
use token::{parse_token, TOKEN_KEYS};
use types::parse_types;
use volumes::parse_volumes;

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
    /// Every served extension (lower-case, no dot) with its `Content-Type`: the built-in media
    /// types ([`BUILTIN_TYPES`]) with `[types]` applied on top (overriding or adding).
    pub types: Vec<(String, HeaderValue)>,
    pub log: LogConfig,
    /// TLS listeners, when `[tls]` lists any.
    pub tls: Option<TlsConfig>,
    /// Uploads (`[ingest]`); no prefixes means no ingest.
    pub ingest: IngestConfig,
    /// Live rules (`[live]`).
    pub live: LiveConfig,
    /// The edge tier (`[pull]`).
    pub pull: PullConfig,
    /// Where each secret came from: inline, or a `…_file` (see [`Config::exposed_secrets`]).
    pub secrets: Vec<SecretSource>,
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
    "ingest",
    "live",
    "pull",
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
                let mut errors = ctx.errors.into_inner();
                if let (Some(span), Some(first)) = (e.span(), errors.0.first_mut()) {
                    first.line = Some(error::line_at(text, span.start));
                }
                return Err(errors);
            }
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let top = Section::new(&ctx, "", Some(&doc), TOP_KEYS);
        let server = parse_server(&top.table("server", SERVER_KEYS));
        let admin = parse_admin(&top.table("admin", ADMIN_KEYS));
        let volumes = parse_volumes(&top, &base);
        let cache = parse_cache(&top.table("cache", CACHE_KEYS));
        let token = parse_token(&top.table("token", TOKEN_KEYS), &base);
        let cors = parse_cors(&top.table("cors", CORS_KEYS), &token.name);
        let cache_control = parse_cache_control(&top.table("cache_control", CACHE_CONTROL_KEYS));
        let types = parse_types(&top);
        let log = parse_log(&top.table("log", LOG_KEYS), &base);
        let tls = parse_tls(&top.table("tls", TLS_KEYS), &base);
        let ingest = parse_ingest(&top.table("ingest", INGEST_KEYS), &base);
        let cc_set = doc
            .get("cache_control")
            .and_then(|t| t.get("live_prefixes"))
            .is_some();
        let live = parse_live(
            &top.table("live", LIVE_KEYS),
            &cache_control.live_prefixes,
            cc_set,
        );
        let pull = parse_pull(&top.table("pull", PULL_KEYS), &base);
        let mut cache_control = cache_control;
        cache_control.live_prefixes = live.prefixes.clone();
        top.finish();

        // Cross-key checks.
        // Every listen address with its key, in file order of the sections; a repeat is
        // reported at its own key, naming the first.
        let mut all: Vec<(String, SocketAddr)> = Vec::new();
        all.extend(
            (server.listen.iter().enumerate()).map(|(i, a)| (format!("server.listen[{i}]"), *a)),
        );
        all.extend(admin.listen.map(|a| ("admin.listen".to_string(), a)));
        if let Some(t) = &tls {
            all.extend(
                (t.listen.iter().enumerate()).map(|(i, a)| (format!("tls.listen[{i}]"), *a)),
            );
        }
        for (i, (key, a)) in all.iter().enumerate() {
            if a.port() == 0 {
                continue;
            }
            if let Some((first, _)) = all[..i].iter().find(|(_, b)| b == a) {
                ctx.error(
                    key.as_str(),
                    format!("address {a} is used twice (also {first})"),
                    "each listener needs its own address",
                );
            }
        }

        if let Some(wt) = &ingest.write_through {
            let bucket = pull
                .upstreams
                .iter()
                .find(|u| u.name == wt.upstream)
                .map(|u| matches!(u.kind, UpstreamKind::S3 { .. }));
            let problem = match bucket {
                None => Some(format!(
                    "no [[pull.upstreams]] entry is named {:?}",
                    wt.upstream
                )),
                Some(false) => Some(format!(
                    "upstream {:?} is an HTTP origin, not a bucket",
                    wt.upstream
                )),
                Some(true) => None,
            };
            if let Some(problem) = problem {
                ctx.error(
                    "ingest.write_through",
                    problem,
                    "the name of a [[pull.upstreams]] entry with s3_endpoint",
                );
            }
            if ingest.prefixes.is_empty() {
                ctx.error(
                    "ingest.write_through",
                    "ingest.prefixes is empty, so nothing is ingested to write through",
                    "set ingest.prefixes, or remove ingest.write_through",
                );
            }
        }

        let mut errors = ctx.errors.into_inner();
        if !errors.is_empty() {
            errors.locate_in(path, text);
            return Err(errors);
        }
        let secrets = ctx.secrets.into_inner();
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
            ingest,
            live,
            pull,
            secrets,
        })
    }

    /// The secrets segd's repository publishes (its example configs' keys) that this config
    /// uses: anyone can mint tokens with them. One line each.
    pub fn published_secrets(&self) -> Vec<String> {
        let what = |key: &str| {
            if key.starts_with("ingest.") {
                ", and upload or delete media"
            } else {
                ""
            }
        };
        (self.secrets.iter().filter(|s| s.published))
            .map(|s| {
                format!(
                    "{}: {} is a secret published in segd's repository (its example configs): \
                     anyone can mint tokens with it{}; make your own (openssl rand -hex 32)",
                    self.file.display(),
                    s.key,
                    what(&s.key),
                )
            })
            .collect()
    }

    /// Whether every listener is on a loopback address (the demo's): nobody else can reach it.
    pub fn loopback_only(&self) -> bool {
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.listen.as_slice())
            .unwrap_or(&[]);
        (self.server.listen.iter().chain(tls)).all(|a| a.ip().is_loopback())
    }

    /// Secrets any user of the machine can read: written inline in a config file every user
    /// can read, or kept in such a `…_file`, and those segd's repository publishes
    /// ([`Config::published_secrets`]). Whoever reads a key can mint tokens for it (an upload
    /// key: write and delete media). One line each, for `check-config`.
    pub fn exposed_secrets(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let world_readable = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| m.permissions().mode() & 0o777)
                .filter(|mode| mode & 0o004 != 0)
        };
        let mut out = self.published_secrets();
        let inline: Vec<&str> = (self.secrets.iter())
            .filter(|s| s.file.is_none())
            .map(|s| s.key.as_str())
            .collect();
        if let (false, Some(mode)) = (inline.is_empty(), world_readable(&self.file)) {
            out.push(format!(
                "{}: secrets written inline ({}) in a file every user can read (mode \
                 {mode:04o}); make the file readable by segd's user only, or move each secret \
                 to its _file key (a file of its own)",
                self.file.display(),
                inline.join(", "),
            ));
        }
        for s in &self.secrets {
            if let Some(f) = &s.file {
                if let Some(mode) = world_readable(f) {
                    out.push(format!(
                        "{}: {}: {} is readable by every user (mode {mode:04o}); make it \
                         readable by segd's user only",
                        self.file.display(),
                        s.key,
                        f.display(),
                    ));
                }
            }
        }
        out
    }

    /// Filesystem checks `check-config` adds: volume roots exist, are directories, are readable;
    /// and those a reload makes ([`Config::reload_checks`]).
    pub fn check_paths(&self) -> ConfigErrors {
        let mut errs = self.reload_checks();
        errs.0.extend(self.volume_checks().0);
        errs
    }

    /// Volume roots exist, are readable directories, hold their marker: what `check-config`
    /// checks besides [`Config::reload_checks`]. (`serve` and a reload take a volume that
    /// fails them as unhealthy.)
    pub fn volume_checks(&self) -> ConfigErrors {
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
        errs
    }

    /// The filesystem checks a reload makes: those `serve` makes ([`Config::distinct_volumes`])
    /// and the access log's and pid file's directories. A volume root that is missing or
    /// unreadable is not one of them: `serve` starts with such a volume unhealthy, and a disk
    /// that is down must not stop every reload.
    pub fn reload_checks(&self) -> ConfigErrors {
        let mut errs = self.distinct_volumes();
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
        // segd makes the pid file's directory when it is missing (`/run/segd` exists only
        // while the unit runs: its RuntimeDirectory): what must hold is that it can.
        if let Some(p) = &self.server.pid_file {
            let existing = p
                .ancestors()
                .skip(1)
                .find(|d| d.as_os_str().is_empty() || d.exists());
            if let Some(d) = existing.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                errs.push(
                    &self.file,
                    "server.pid_file",
                    format!("{} is not a directory", d.display()),
                    "a file path whose directory exists or can be made",
                );
            }
        }
        errs
    }

    /// Volumes that are one directory under two spellings (`v1` and `./v1/`, an absolute path,
    /// a symlink, a bind mount), found by device and inode: the parser's check compares the
    /// paths as written. Two such volumes would count, survey and place the same files twice.
    /// A root that cannot be read is skipped here (`check_paths` reports it; `serve` starts
    /// with it unhealthy). And the trees segd writes on its own: see [`Config::apart`].
    pub fn distinct_volumes(&self) -> ConfigErrors {
        let mut errs = self.apart();
        errs.0.extend(self.distinct_roots().0);
        errs
    }

    /// The directories segd owns, each apart from the others: every volume, `pull.cache_path`
    /// and `ingest.queue_path` neither is, contains nor lies inside another (spelt as written
    /// or through symlinks), except in a dot-directory of a volume, which is never served. The pull cache's start removes every file in its tree it did not
    /// write (a volume's media, the queue's acknowledged uploads); a cache inside a volume
    /// would serve what it pulled under its own path, past the tokens protecting the original
    /// path; a volume inside another would be counted and served twice.
    fn apart(&self) -> ConfigErrors {
        let mut errs = ConfigErrors::default();
        let mut trees: Vec<(String, PathBuf)> = self
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("volumes[{i}].path"), v.path.clone()))
            .collect();
        if let Some(p) = &self.pull.cache_path {
            trees.push(("pull.cache_path".into(), p.clone()));
        }
        // (Its default, `.segd-queue` in the first volume, is a directory the read side never
        // serves, and the pull cache's tree is checked against that volume.)
        if let Some(p) = self
            .ingest
            .write_through
            .as_ref()
            .and_then(|w| w.queue_path.as_ref())
        {
            trees.push(("ingest.queue_path".into(), p.clone()));
        }
        let resolved: Vec<PathBuf> = trees.iter().map(|(_, p)| resolve_existing(p)).collect();
        for (j, (key, path)) in trees.iter().enumerate() {
            for (i, (other, other_path)) in trees.iter().enumerate().take(j) {
                let (a, b) = (&resolved[j], &resolved[i]);
                let how = if a == b {
                    // Equal volumes are the parser's (as written) and `distinct_roots`' (by
                    // device and inode) to report.
                    if i < self.volumes.len() && j < self.volumes.len() {
                        continue;
                    }
                    "is the same directory as"
                } else if a.starts_with(b) {
                    // In a dot-directory of a volume (the queue's default, `.segd-queue`), a
                    // tree is never served, and holds none of the volume's media.
                    let hidden = a.strip_prefix(b).is_ok_and(|rest| {
                        rest.components()
                            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
                    });
                    if i < self.volumes.len() && j >= self.volumes.len() && hidden {
                        continue;
                    }
                    "lies inside"
                } else if b.starts_with(a) {
                    "contains"
                } else {
                    continue;
                };
                errs.push(
                    &self.file,
                    key.clone(),
                    format!(
                        "{} {how} {other} ({})",
                        path.display(),
                        other_path.display()
                    ),
                    "a directory apart from every volume, pull.cache_path and ingest.queue_path",
                );
            }
        }
        errs
    }

    fn distinct_roots(&self) -> ConfigErrors {
        use std::os::unix::fs::MetadataExt;
        let mut errs = ConfigErrors::default();
        let mut seen: Vec<((u64, u64), usize)> = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let Ok(meta) = std::fs::metadata(&v.path) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            match seen.iter().find(|(s, _)| *s == id) {
                // The same text is already reported by the parser ("listed twice").
                Some(&(_, j)) if self.volumes[j].path != v.path => errs.push(
                    &self.file,
                    format!("volumes[{i}].path"),
                    format!(
                        "{} is the same directory as volumes[{j}].path ({})",
                        v.path.display(),
                        self.volumes[j].path.display()
                    ),
                    "distinct directories",
                ),
                Some(_) => {}
                None => seen.push((id, i)),
            }
        }
        errs
    }
}

/// `p` with its symlinks resolved as far as it exists (the rest, still to be made, appended as
/// written): how two spellings of a path, or a path and one inside it, are compared.
fn resolve_existing(p: &std::path::Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = p;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

impl Config {
    /// The keys whose value differs between this running config and `next` (a reloaded file)
    /// but that only a restart applies, because what they shape is made once at start: the
    /// sockets, the thread pools, the logger, the pid file, the pull cache and the write-through
    /// queue. A reload keeps their running values; the caller says which ones were ignored.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let (a, b) = (self, next);
        let tls_listen = |c: &Config| c.tls.as_ref().map(|t| t.listen.clone());
        let http3 = |c: &Config| c.tls.as_ref().is_some_and(|t| t.http3);
        [
            ("server.listen", a.server.listen != b.server.listen),
            ("server.workers", a.server.workers != b.server.workers),
            (
                "server.blocking_threads",
                a.server.blocking_threads != b.server.blocking_threads,
            ),
            (
                "server.sched_policy",
                a.server.sched_batch != b.server.sched_batch,
            ),
            ("server.pid_file", a.server.pid_file != b.server.pid_file),
            // The HTTP/2 settings and hyper's connection limits are built once, at start
            // (`http::service::builder`); the HTTP/1.1 fast path reads the running config.
            (
                "server.h2_max_concurrent_streams",
                a.server.h2_max_concurrent_streams != b.server.h2_max_concurrent_streams,
            ),
            (
                "server.max_header_bytes",
                a.server.max_header_bytes != b.server.max_header_bytes,
            ),
            (
                "server.max_header_fields",
                a.server.max_header_fields != b.server.max_header_fields,
            ),
            (
                "server.header_read_timeout",
                a.server.header_read_timeout != b.server.header_read_timeout,
            ),
            (
                "server.keepalive_timeout",
                a.server.keepalive_timeout != b.server.keepalive_timeout,
            ),
            // The health checks' timer and the SIGBUS handler of mapped bodies: set at start.
            (
                "server.volume_check_interval",
                a.server.volume_check_interval != b.server.volume_check_interval,
            ),
            ("server.mmap", a.server.mmap != b.server.mmap),
            ("admin.listen", a.admin.listen != b.admin.listen),
            ("tls.listen", tls_listen(a) != tls_listen(b)),
            ("tls.http3", http3(a) != http3(b)),
            ("log.level", a.log.level != b.log.level),
            ("pull.cache_path", a.pull.cache_path != b.pull.cache_path),
            ("pull.max_bytes", a.pull.max_bytes != b.pull.max_bytes),
            (
                "pull.negative_ttl",
                a.pull.negative_ttl != b.pull.negative_ttl,
            ),
            (
                "ingest.write_through",
                a.ingest.write_through != b.ingest.write_through,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// The content type for a file extension (lower-case, without the dot), if segd serves it.
    /// `HeaderValue::to_str` gives the text (it fails only for non-ASCII `[types]` values).
    pub fn content_type(&self, ext: &str) -> Option<&HeaderValue> {
        self.types.iter().find(|(e, _)| e == ext).map(|(_, t)| t)
    }
}
