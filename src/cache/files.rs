//! Open-file cache: relative path → open descriptor + metadata + volume.
//!
//! An entry is trusted for `valid` after it was opened or last checked (segments: immutable by
//! contract, so seconds are safe); after that the caller re-stats the path and keeps the entry
//! only if device, inode, size and mtime are unchanged. Playlists are checked on every use (a
//! `statat` of a path whose file is held open never touches the disk). Entries hold file
//! descriptors, so the cache is bounded by count, well under the process's fd limit.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::volumes::ObjectMeta;

pub struct OpenFile {
    pub file: Arc<File>,
    pub meta: ObjectMeta,
    pub volume: usize,
    /// Validators formatted once per entry, not per request.
    pub etag: http::HeaderValue,
    pub last_modified: http::HeaderValue,
    /// Milliseconds since the cache's epoch when the entry was last known to be current.
    checked_ms: AtomicU64,
}

/// What a lookup found.
pub enum Lookup {
    /// Current within its validity window: use it.
    Fresh(Arc<OpenFile>),
    /// Present but due for a check: re-stat, then [`FileCache::confirm`] or [`FileCache::remove`].
    Stale(Arc<OpenFile>),
    Miss,
}

pub struct FileCache {
    cache: moka::sync::Cache<Box<str>, Arc<OpenFile>, foldhash::fast::RandomState>,
    epoch: Instant,
}

impl FileCache {
    pub fn new(max_entries: u64) -> FileCache {
        FileCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                // An unused descriptor is released after a while even without pressure.
                .time_to_idle(Duration::from_secs(300))
                .build_with_hasher(foldhash::fast::RandomState::default()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Looks up `key`; `valid` is how long an entry of this class may go unchecked.
    pub fn get(&self, key: &str, valid: Duration) -> Lookup {
        match self.cache.get(key) {
            None => Lookup::Miss,
            Some(e) => {
                let age = self
                    .now_ms()
                    .saturating_sub(e.checked_ms.load(Ordering::Relaxed));
                if age <= valid.as_millis() as u64 && !valid.is_zero() {
                    Lookup::Fresh(e)
                } else {
                    Lookup::Stale(e)
                }
            }
        }
    }

    /// Marks a stale entry as checked now.
    pub fn confirm(&self, e: &OpenFile) {
        e.checked_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn insert(&self, key: &str, file: File, meta: ObjectMeta, volume: usize) -> Arc<OpenFile> {
        let etag = meta.etag_value();
        let last_modified = crate::http::http_date_value(meta.modified());
        let e = Arc::new(OpenFile {
            file: Arc::new(file),
            meta,
            volume,
            etag,
            last_modified,
            checked_ms: AtomicU64::new(self.now_ms()),
        });
        self.cache.insert(key.into(), Arc::clone(&e));
        e
    }

    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Removes `key` and closes its descriptor now (unless a response still holds it): moka
    /// keeps what it invalidates until its next maintenance, which only cache traffic brings,
    /// and a deleted file's blocks stay on disk while a descriptor is open.
    pub fn remove_now(&self, key: &str) {
        self.cache.invalidate(key);
        self.cache.run_pending_tasks();
    }

    /// Entries held (runs moka's pending maintenance first, so the count is current).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
