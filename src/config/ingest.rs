//! `[ingest]` and `[[ingest.keys]]`: where uploads are accepted, their limits, their durability,
//! and the keys of upload tokens (separate from `[[token.keys]]`: a playback key never
//! authorises a write). See `docs/ingest.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fields::Section;
use super::token::{parse_keys, TokenKey};

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// URL prefixes that accept PUT/POST/DELETE; empty: no ingest.
    pub prefixes: Vec<String>,
    /// Larger bodies get 413 and nothing is written.
    pub max_body_bytes: u64,
    /// No body byte for this long: 408, nothing written.
    pub body_timeout: Duration,
    /// Free space kept on each volume; a write that would cross it goes elsewhere, else 507.
    pub reserve: u64,
    /// DELETE needs at least this many path segments.
    pub min_delete_depth: usize,
    /// Uploads in progress at once; beyond: 503 with Retry-After.
    pub max_uploads: usize,
    /// fsync the file and its directory before answering 201/204.
    pub fsync: bool,
    /// With `fsync = false`: an upload's file is written by the worker that received it, not
    /// handed to a writer thread (see `store::writers` and docs/tuning.md).
    pub inline_writes: bool,
    /// Upload token keys.
    pub keys: Vec<TokenKey>,
    /// Where ingested objects are also written (see `docs/cluster.md`).
    pub write_through: Option<WriteThrough>,
}

/// `write_through` and the keys that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteThrough {
    /// The `[[pull.upstreams]]` entry (an S3 bucket) written to.
    pub upstream: String,
    /// Live objects (under `[live] prefixes`) too, not only VOD ones.
    pub live: bool,
    pub durability: Durability,
    /// The durable queue of `durability = "local"`; `None`: `.segd-queue` in the first volume.
    pub queue_path: Option<PathBuf>,
}

/// When an upload is answered (`ingest.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once the local disk has it; the bucket gets it from the durable queue.
    Local,
    /// Once the bucket has it.
    Upstream,
}

impl IngestConfig {
    /// Whether `canonical` (a decoded path with a leading `/`) is under an ingest prefix.
    pub fn covers(&self, canonical: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| canonical.starts_with(p.as_str()))
    }
}

pub(super) const INGEST_KEYS: &[&str] = &[
    "prefixes",
    "max_body_bytes",
    "body_timeout",
    "reserve",
    "min_delete_depth",
    "max_uploads",
    "fsync",
    "inline_writes",
    "keys",
    "write_through",
    "write_through_live",
    "durability",
    "queue_path",
];

pub(super) fn parse_ingest(s: &Section, base: &Path) -> IngestConfig {
    let prefix_allowed = "URL path prefixes starting and ending with \"/\", e.g. \"/live/\"";
    let prefixes = s
        .string_list("prefixes", prefix_allowed)
        .unwrap_or_default();
    for (i, p) in prefixes.iter().enumerate() {
        // A prefix is a directory: "/live" would also cover "/livestock/".
        if !p.starts_with('/') || !p.ends_with('/') || p == "/" {
            s.error(
                &format!("prefixes[{i}]"),
                format!("{p:?} is not a directory prefix below the root"),
                prefix_allowed,
            );
        }
    }
    let max_body_bytes = s.size("max_body_bytes", 256 << 20, 1, 1 << 40);
    let body_timeout = s.duration(
        "body_timeout",
        Duration::from_secs(30),
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let reserve = s.size("reserve", 1 << 30, 0, u64::MAX >> 1);
    let min_delete_depth = s.int(
        "min_delete_depth",
        2,
        1,
        64,
        "a number of path segments, 1 to 64",
    ) as usize;
    let max_uploads = s.int(
        "max_uploads",
        64,
        1,
        100_000,
        "uploads in progress at once, 1 to 100000",
    ) as usize;
    let fsync = s.bool("fsync", true);
    let inline_writes = s.bool("inline_writes", false);
    if inline_writes && fsync {
        s.error(
            "inline_writes",
            "needs fsync = false: a durable upload waits on its disk, never on a worker",
            "false, or true with fsync = false",
        );
    }
    let keys = parse_keys(s, base);
    if !prefixes.is_empty() && keys.is_empty() && s.raw("keys").is_none() {
        s.error(
            "keys",
            "ingest.prefixes is set but no [[ingest.keys]] is configured, so no upload could be authorised",
            "at least one [[ingest.keys]] table with id and secret",
        );
    }
    let write_through = parse_write_through(s, base);
    s.finish();
    IngestConfig {
        prefixes,
        max_body_bytes,
        body_timeout,
        reserve,
        min_delete_depth,
        max_uploads,
        fsync,
        inline_writes,
        keys,
        write_through,
    }
}

/// `write_through`, `write_through_live`, `durability`, `queue_path`. Whether the upstream
/// exists and is a bucket is checked with `[pull]` (see `Config::load`).
fn parse_write_through(s: &Section, base: &Path) -> Option<WriteThrough> {
    let name_allowed = "the name of a [[pull.upstreams]] entry with s3_endpoint";
    let upstream = s.string("write_through", name_allowed);
    let live = s.bool("write_through_live", false);
    let dur_allowed = "\"local\" or \"upstream\"";
    let durability = match s.string("durability", dur_allowed).as_deref() {
        None | Some("local") => Durability::Local,
        Some("upstream") => Durability::Upstream,
        Some(other) => {
            s.error(
                "durability",
                format!("unknown durability {other:?}"),
                dur_allowed,
            );
            Durability::Local
        }
    };
    let queue_path = s
        .string("queue_path", "a directory on a local disk")
        .map(|p| base.join(p));
    if upstream.is_none() {
        for key in ["write_through_live", "durability", "queue_path"] {
            if s.raw(key).is_some() {
                s.error(
                    key,
                    "has no effect without ingest.write_through",
                    "set ingest.write_through to an S3 upstream, or remove this key",
                );
            }
        }
        return None;
    }
    Some(WriteThrough {
        upstream: upstream?,
        live,
        durability,
        queue_path,
    })
}
