//! Hot-body cache: file identity → whole-object `Bytes`, weighted by size.
//!
//! Keys are the file's identity (device, inode, size, mtime), not its path, so a changed file can
//! never be served from an old entry: it simply has a new key, and the old entry ages out.
//! Fills are single-flight (`try_get_with`): N concurrent misses for one object cause one read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Future;

use crate::volumes::ObjectMeta;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl From<&ObjectMeta> for BodyKey {
    fn from(m: &ObjectMeta) -> Self {
        BodyKey {
            dev: m.dev,
            ino: m.ino,
            len: m.len,
            mtime_ns: m.mtime_ns,
        }
    }
}

/// Counters the metrics layer reads. They outlive one cache: a reload that resizes the cache
/// hands the same `Stats` to the new one, so the exported counters never go down.
#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    /// Fills actually performed (one per coalesced group of misses).
    pub fills: AtomicU64,
}

pub struct BodyCache {
    cache: moka::future::Cache<BodyKey, Bytes>,
    max_item: u64,
    pub max_bytes: u64,
    pub stats: Arc<Stats>,
    /// Bytes held: added when a fill is stored, subtracted whenever an entry leaves.
    bytes: Arc<AtomicU64>,
}

impl BodyCache {
    pub fn new(max_bytes: u64, max_item: u64, stats: Arc<Stats>) -> BodyCache {
        let ev = Arc::clone(&stats);
        let bytes = Arc::new(AtomicU64::new(0));
        let held = Arc::clone(&bytes);
        BodyCache {
            cache: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &BodyKey, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .eviction_listener(move |_k, v: Bytes, cause| {
                    held.fetch_sub(v.len() as u64, Ordering::Relaxed);
                    if cause == moka::notification::RemovalCause::Size {
                        ev.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build(),
            max_item: max_item.min(max_bytes),
            max_bytes,
            stats,
            bytes,
        }
    }

    /// The largest object admitted.
    pub fn max_item(&self) -> u64 {
        self.max_item
    }

    /// Whether an object of `len` bytes may be cached at all.
    pub fn admits(&self, len: u64) -> bool {
        len > 0 && len <= self.max_item
    }

    /// The cached body for `meta`, or `fill()`'s result, shared by every concurrent caller.
    pub async fn get_or_fill<F>(
        &self,
        meta: &ObjectMeta,
        fill: F,
    ) -> Result<Bytes, Arc<std::io::Error>>
    where
        F: Future<Output = std::io::Result<Bytes>>,
    {
        let key = BodyKey::from(meta);
        if let Some(b) = self.cache.get(&key).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let (stats, bytes) = (Arc::clone(&self.stats), Arc::clone(&self.bytes));
        let got = self
            .cache
            .try_get_with(key, async move {
                stats.fills.fetch_add(1, Ordering::Relaxed);
                let b = fill.await?;
                bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                Ok(b)
            })
            .await;
        // moka evicts in its maintenance, which runs every so many operations: with few of
        // them the cache held several times `max_bytes` (acceptance L1). An eighth over budget
        // (not at every fill of a full cache, where moka's own maintenance keeps up), now.
        if self.bytes.load(Ordering::Relaxed) > self.max_bytes + self.max_bytes / 8 {
            self.cache.run_pending_tasks().await;
        }
        got
    }

    /// Bytes currently held (exact, unlike moka's lagging weighted size).
    pub fn weighted_size(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the body is cached right now (no effect on the policy; for logs).
    pub fn contains_now(&self, meta: &ObjectMeta) -> bool {
        self.cache.contains_key(&BodyKey::from(meta))
    }

    pub async fn contains(&self, meta: &ObjectMeta) -> bool {
        self.cache.get(&BodyKey::from(meta)).await.is_some()
    }

    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ino: u64, len: u64) -> ObjectMeta {
        ObjectMeta {
            len,
            dev: 1,
            ino,
            mtime_ns: 0,
            ctime_ns: 0,
        }
    }

    #[tokio::test]
    async fn cold_sweep_does_not_flush_the_hot_set() {
        // Room for ~10 objects of 100 KiB.
        let cache = BodyCache::new(1_000 * 1024, 200 * 1024, Arc::default());
        let body = Bytes::from(vec![0u8; 100 * 1024]);
        // A hot set of 8 objects, each read many times.
        for _ in 0..30 {
            for ino in 0..8 {
                let b = body.clone();
                cache
                    .get_or_fill(&meta(ino, 102_400), async move { Ok(b) })
                    .await
                    .expect("fill");
            }
            cache.run_pending_tasks().await;
        }
        // One pass over a cold catalogue of 500 objects, each read once.
        for ino in 1_000..1_500 {
            let b = body.clone();
            cache
                .get_or_fill(&meta(ino, 102_400), async move { Ok(b) })
                .await
                .expect("fill");
            cache.run_pending_tasks().await;
        }
        let mut kept = 0;
        for ino in 0..8 {
            if cache.contains(&meta(ino, 102_400)).await {
                kept += 1;
            }
        }
        assert!(
            kept >= 7,
            "TinyLFU admission keeps the hot set: {kept}/8 survived the sweep"
        );
        cache.run_pending_tasks().await;
        assert!(
            cache.weighted_size() <= 1_000 * 1024,
            "{}",
            cache.weighted_size()
        );
    }

    /// The budget holds after every fill, not only once moka's maintenance happens to run
    /// (with few requests it ran rarely: 189 KB held under a 64 KiB budget).
    #[tokio::test]
    async fn the_budget_holds_after_each_fill() {
        let cache = BodyCache::new(64 * 1024, 16 * 1024, Arc::default());
        for ino in 0..40 {
            let b = Bytes::from(vec![0u8; 10_000]);
            cache
                .get_or_fill(&meta(ino, 10_000), async move { Ok(b) })
                .await
                .expect("fill");
            assert!(
                cache.weighted_size() <= 64 * 1024 * 9 / 8,
                "after fill {ino}: {} bytes held",
                cache.weighted_size()
            );
        }
    }

    #[tokio::test]
    async fn concurrent_misses_fill_once() {
        let cache = Arc::new(BodyCache::new(10 << 20, 1 << 20, Arc::default()));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let c = Arc::clone(&cache);
            tasks.push(tokio::spawn(async move {
                c.get_or_fill(&meta(7, 5), async {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok(Bytes::from_static(b"hello"))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.expect("join").expect("fill"),
                Bytes::from_static(b"hello")
            );
        }
        assert_eq!(cache.stats.fills.load(Ordering::Relaxed), 1);
    }
}
