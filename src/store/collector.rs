//! The store's figures as Prometheus metrics, read at scrape time from the current tiers (so a
//! reload that rebuilds a tier is followed without anyone copying values around):
//! `segd_volume_healthy`, `segd_volume_io_errors_total`, `segd_volume_probes_total`,
//! `segd_volume_disk_calls`, `segd_volume_disk_calls_refused_total`,
//! `segd_io_backend`, `segd_cache_{hits,misses,evictions,fills}_total`, `segd_cache_bytes`,
//! `segd_open_files_cached`, `segd_mmap_faults_total`.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use super::Store;

pub struct StoreCollector {
    store: Store,
    /// One scrape at a time: collecting resets and refills the children.
    scrape: std::sync::Mutex<()>,
    volume_healthy: IntGaugeVec,
    volume_io_errors: IntCounterVec,
    volume_probes: IntCounterVec,
    volume_calls: IntGaugeVec,
    volume_calls_refused: IntCounterVec,
    io_backend: IntGaugeVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
    cache_fills: IntCounter,
    cache_bytes: IntGauge,
    open_files: IntGauge,
    mmap_faults: IntCounter,
}

impl StoreCollector {
    pub fn new(store: Store) -> Result<StoreCollector, prometheus::Error> {
        let gauge_vec =
            |name: &str, help: &str, label: &str| IntGaugeVec::new(Opts::new(name, help), &[label]);
        let counter_vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        Ok(StoreCollector {
            store,
            scrape: std::sync::Mutex::new(()),
            volume_healthy: gauge_vec(
                "segd_volume_healthy",
                "1 if the volume serves, 0 if it is marked unhealthy",
                "volume",
            )?,
            volume_io_errors: counter_vec(
                "segd_volume_io_errors_total",
                "Device errors seen on the volume",
                "volume",
            )?,
            volume_probes: counter_vec(
                "segd_volume_probes_total",
                "Health probes of the volume root (periodic; before a 404 at most once per 250 ms; at once after an open refused with EACCES)",
                "volume",
            )?,
            volume_calls: gauge_vec(
                "segd_volume_disk_calls",
                "Blocking calls on the volume's disk in progress (opens, look-ups, uploads' writes)",
                "volume",
            )?,
            volume_calls_refused: counter_vec(
                "segd_volume_disk_calls_refused_total",
                "Calls refused (503) because the volume's disk had not finished any of the calls in progress for 2 s",
                "volume",
            )?,
            io_backend: gauge_vec(
                "segd_io_backend",
                "1 for the disk I/O backend in use (io_uring or threads)",
                "backend",
            )?,
            cache_hits: IntCounter::new("segd_cache_hits_total", "Hot-body cache hits")?,
            cache_misses: IntCounter::new("segd_cache_misses_total", "Hot-body cache misses")?,
            cache_evictions: IntCounter::new(
                "segd_cache_evictions_total",
                "Hot-body cache entries evicted for space",
            )?,
            cache_fills: IntCounter::new(
                "segd_cache_fills_total",
                "Disk reads that filled the hot-body cache (coalesced misses count once)",
            )?,
            cache_bytes: IntGauge::new("segd_cache_bytes", "Bytes held by the hot-body cache")?,
            open_files: IntGauge::new(
                "segd_open_files_cached",
                "Descriptors held by the open-file cache",
            )?,
            mmap_faults: IntCounter::new(
                "segd_mmap_faults_total",
                "SIGBUS faults on mapped segments (file truncated while served) caught and handled",
            )?,
        })
    }
}

/// Sets a counter to a value kept elsewhere (only ever called while collecting).
fn set_counter(c: &IntCounter, v: u64) {
    c.reset();
    c.inc_by(v);
}

impl StoreCollector {
    /// Every series this collector exports, in one list for `desc` and `collect`.
    fn parts(&self) -> [&dyn Collector; 13] {
        [
            &self.volume_healthy,
            &self.volume_io_errors,
            &self.volume_probes,
            &self.volume_calls,
            &self.volume_calls_refused,
            &self.io_backend,
            &self.cache_hits,
            &self.cache_misses,
            &self.cache_evictions,
            &self.cache_fills,
            &self.cache_bytes,
            &self.open_files,
            &self.mmap_faults,
        ]
    }
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let local = self.store.local();
        // Children are rebuilt each scrape: a volume removed by a reload disappears.
        self.volume_healthy.reset();
        self.volume_io_errors.reset();
        self.volume_probes.reset();
        self.volume_calls.reset();
        self.volume_calls_refused.reset();
        for v in local.volumes.iter() {
            let name = [v.name.as_str()];
            self.volume_healthy
                .with_label_values(&name)
                .set(i64::from(v.is_healthy()));
            self.volume_io_errors
                .with_label_values(&name)
                .inc_by(v.io_errors());
            self.volume_probes
                .with_label_values(&name)
                .inc_by(v.probes());
            self.volume_calls
                .with_label_values(&name)
                .set(i64::try_from(v.busy_calls()).unwrap_or(i64::MAX));
            self.volume_calls_refused
                .with_label_values(&name)
                .inc_by(v.busy_refusals());
        }
        // Only the backend in use (a reload that switches backends switches the series).
        self.io_backend.reset();
        self.io_backend
            .with_label_values(&[local.io.kind().as_str()])
            .set(1);
        let st = self.store.cache_stats();
        set_counter(&self.cache_hits, st.hits.load(Relaxed));
        set_counter(&self.cache_misses, st.misses.load(Relaxed));
        set_counter(&self.cache_evictions, st.evictions.load(Relaxed));
        set_counter(&self.cache_fills, st.fills.load(Relaxed));
        set_counter(&self.mmap_faults, crate::io::mapped::faults());
        self.cache_bytes.set(local.bodies().weighted_size() as i64);
        self.open_files.set(local.open_files() as i64);
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}
