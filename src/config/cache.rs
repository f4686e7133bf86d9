//! `[cache]`: the hot-body memory cache and the open-file cache limits.

use std::time::Duration;

use super::fields::{fmt_size, Section};

/// `cache.open_files` when the file does not set it (fitted to the descriptor limit at start).
pub const DEFAULT_OPEN_FILES: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub max_item_bytes: u64,
    /// Open descriptors kept in the open-file cache (bounded by the fd limit at start).
    pub open_files: u64,
    /// How long a cached segment descriptor is trusted before its path is re-checked.
    pub open_file_valid: Duration,
}

pub(super) const CACHE_KEYS: &[&str] = &[
    "max_bytes",
    "max_item_bytes",
    "open_files",
    "open_file_valid",
];

pub(super) fn parse_cache(s: &Section) -> CacheConfig {
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
        DEFAULT_OPEN_FILES as i64,
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
