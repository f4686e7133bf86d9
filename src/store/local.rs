//! The local tier: objects on the volumes (local disks), found through the open-file cache, read
//! through each volume's I/O backend, whole small objects kept in the hot-body cache.
//!
//! Owns: the volume set with placement and health, the open-file cache, the hot-body cache, the
//! memory maps for TLS bodies, and the I/O backend. [`Local::build`] makes them from a config and
//! keeps the parts of a previous tier whose settings did not change, so a reload keeps open
//! descriptors, cached bodies and I/O workers where it can; this is the only place that decides
//! what survives a reload.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cache::bodies::{BodyCache, Stats};
use crate::cache::files::{FileCache, Lookup, OpenFile};
use crate::config::{Config, VolumeConfig};
use crate::io::mapped::{MapCache, Mapping};
use crate::io::Io;
use crate::metrics::Metrics;
use crate::volumes::{self, LookupError, ObjectMeta, RelPath, Volumes};

pub struct Local {
    pub volumes: Arc<Volumes>,
    files: Arc<FileCache>,
    bodies: Arc<BodyCache>,
    pub io: Arc<Io>,
    maps: Arc<MapCache>,
    /// How long a cached descriptor of an immutable object is trusted before its path is
    /// re-checked.
    open_file_valid: Duration,
    mmap: bool,
    zero_copy_bytes: prometheus::IntCounter,
    mapped_bytes: prometheus::IntCounter,
    /// What this tier was built from (to decide what a rebuild keeps).
    settings: Settings,
}

#[derive(Clone, PartialEq)]
struct Settings {
    /// The configured volumes, then the pull cache's directory (if any).
    volumes: Vec<(std::path::PathBuf, String, Option<String>)>,
    open_files: u64,
    cache: (u64, u64),
    io: (String, usize),
}

impl Settings {
    fn of(cfg: &Config) -> Settings {
        let vol = |v: &VolumeConfig| (v.path.clone(), v.name.clone(), v.marker.clone());
        Settings {
            volumes: cfg
                .volumes
                .iter()
                .chain(&cache_volume(cfg))
                .map(vol)
                .collect(),
            open_files: cfg.cache.open_files,
            cache: (cfg.cache.max_bytes, cfg.cache.max_item_bytes),
            io: (cfg.server.io_backend.clone(), cfg.server.io_queue_depth),
        }
    }
}

/// One volume of a [`Local`] tier: what a body needs to read, probe and report faults.
#[derive(Clone)]
pub struct Disk {
    local: Arc<Local>,
    volume: usize,
}

/// The pull cache's directory as a volume (read, probed and timed like one; never searched).
pub fn cache_volume(cfg: &Config) -> Option<VolumeConfig> {
    let path = cfg.pull.cache_path.clone()?;
    Some(VolumeConfig {
        name: "pull-cache".into(),
        path,
        marker: None,
    })
}

impl Local {
    /// Builds the tier for `cfg`, keeping from `old` whatever `cfg` does not change: the same
    /// volume list keeps its handles, health and placement memory (and the open-file cache, whose
    /// entries name volumes by position); unchanged cache limits keep the hot bodies; an
    /// unchanged I/O setup keeps its workers.
    pub fn build(
        cfg: &Config,
        old: Option<&Local>,
        metrics: &Metrics,
        cache_stats: &Arc<Stats>,
    ) -> Local {
        let new = Settings::of(cfg);
        let same_volumes = old.is_some_and(|o| o.settings.volumes == new.volumes);
        let volumes = match old {
            Some(o) if same_volumes => Arc::clone(&o.volumes),
            _ => Arc::new(Volumes::with_cache(
                &cfg.volumes,
                cache_volume(cfg).as_ref(),
            )),
        };
        let files = match old {
            Some(o) if same_volumes && o.settings.open_files == new.open_files => {
                Arc::clone(&o.files)
            }
            _ => Arc::new(FileCache::new(cfg.cache.open_files)),
        };
        let bodies = match old {
            Some(o) if o.settings.cache == new.cache => Arc::clone(&o.bodies),
            _ => Arc::new(BodyCache::new(
                cfg.cache.max_bytes,
                cfg.cache.max_item_bytes,
                Arc::clone(cache_stats),
            )),
        };
        // The I/O workers time reads per volume, by name: kept only for the same names.
        let names = |s: &Settings| s.volumes.iter().map(|v| v.1.clone()).collect::<Vec<_>>();
        let io = match old {
            Some(o) if o.settings.io == new.io && names(&o.settings) == names(&new) => {
                Arc::clone(&o.io)
            }
            _ => {
                // A volume gone from the config takes its read-time series with it.
                if let Some(o) = old {
                    let now = names(&new);
                    for gone in names(&o.settings).iter().filter(|n| !now.contains(n)) {
                        let _ = metrics.volume_read_seconds.remove_label_values(&[gone]);
                    }
                }
                let all: Vec<VolumeConfig> = cfg
                    .volumes
                    .iter()
                    .cloned()
                    .chain(cache_volume(cfg))
                    .collect();
                let timings = all
                    .iter()
                    .map(|v| metrics.volume_read_seconds.with_label_values(&[&v.name]))
                    .collect();
                Arc::new(
                    Io::new(all.len(), cfg.server.io_queue_depth, &cfg.server.io_backend)
                        .with_timings(timings),
                )
            }
        };
        let maps = match old {
            Some(o) => Arc::clone(&o.maps),
            None => Arc::new(MapCache::new(cfg.cache.open_files)),
        };
        Local {
            volumes,
            files,
            bodies,
            io,
            maps,
            open_file_valid: cfg.cache.open_file_valid,
            mmap: cfg.server.mmap,
            zero_copy_bytes: metrics.zero_copy_bytes.clone(),
            mapped_bytes: metrics.mapped_bytes.clone(),
            settings: new,
        }
    }

    /// Finds `rel` in the open-file cache, or opens it. Every hit is checked against its
    /// descriptor (`still_current`); past the validity window (`immutable` objects only; zero for
    /// the others), the path is re-checked too, which catches a file replaced by rename.
    pub async fn find(
        self: &Arc<Self>,
        rel: &RelPath,
        immutable: bool,
    ) -> Result<(Arc<OpenFile>, Disk), LookupError> {
        let valid = if immutable {
            self.open_file_valid
        } else {
            Duration::ZERO
        };
        let healthy = |v: usize| self.volumes.get(v).is_some_and(|v| v.is_healthy());
        // Set when a cached entry turned out stale: the object was known a moment ago.
        let mut known = false;
        let found = match self.files.get(rel.as_str(), valid) {
            // Rewritten, truncated or unlinked in place: the held descriptor tells (one fstat).
            Lookup::Fresh(e) if healthy(e.volume) && volumes::still_current(&e.file, &e.meta) => {
                Some(e)
            }
            Lookup::Stale(e) if healthy(e.volume) => {
                if self.volumes.stat(e.volume, rel) == Some(e.meta) {
                    self.files.confirm(&e);
                    Some(e)
                } else {
                    self.files.remove(rel.as_str());
                    known = true;
                    None
                }
            }
            Lookup::Fresh(_) | Lookup::Stale(_) => {
                self.files.remove(rel.as_str());
                known = true;
                None
            }
            Lookup::Miss => None,
        };
        let entry = match found {
            Some(e) => e,
            None => {
                // An object known a moment ago that is gone now makes its disk suspect: a miss
                // then re-checks every root at once instead of trusting a recent probe.
                let o = self.io.open(&self.volumes, rel, known).await?;
                self.files.insert(rel.as_str(), o.file, o.meta, o.volume)
            }
        };
        let disk = Disk {
            local: Arc::clone(self),
            volume: entry.volume,
        };
        Ok((entry, disk))
    }

    /// Opens `rel` beneath volume `volume` only (the pull cache's directory), through the
    /// open-file cache under a key of its own.
    pub async fn find_in(
        self: &Arc<Self>,
        volume: usize,
        rel: &RelPath,
    ) -> Result<(Arc<OpenFile>, Disk), LookupError> {
        let key = format!("\0{volume}/{rel}");
        if let Lookup::Fresh(e) | Lookup::Stale(e) = self.files.get(&key, Duration::ZERO) {
            if volumes::still_current(&e.file, &e.meta) {
                let disk = Disk {
                    local: Arc::clone(self),
                    volume,
                };
                return Ok((e, disk));
            }
            self.files.remove(&key);
        }
        let (vols, r) = (Arc::clone(&self.volumes), rel.clone());
        let o = tokio::task::spawn_blocking(move || vols.open_one(volume, &r))
            .await
            .unwrap_or(Err(LookupError::Overloaded))?;
        let e = self.files.insert(&key, o.file, o.meta, volume);
        // The pull cache evicts a file by unlinking it, then forgetting its descriptor here
        // ([`Local::forget_in`]); an eviction between the open above and this insert found
        // nothing to forget, and the entry would hold the file's blocks until its idle timeout
        // (`edge::edge_evicted_files_are_closed` failed so once in CI). Checked after the
        // insert, one side sees the other whichever came first. This request still serves it,
        // as a reader in flight does.
        if !volumes::still_current(&e.file, &e.meta) {
            self.files.remove_now(&key);
        }
        Ok((
            e,
            Disk {
                local: Arc::clone(self),
                volume,
            },
        ))
    }

    /// Forgets the descriptor `find_in` cached for `rel` on `volume`, closing it now (the pull
    /// cache evicts the file: its blocks must go; `edge::edge_evicted_files_are_closed` failed
    /// in CI when no request came after the last eviction to run moka's maintenance).
    pub fn forget_in(&self, volume: usize, rel: &str) {
        self.files.remove_now(&format!("\0{volume}/{rel}"));
    }

    /// Forgets a cached descriptor (the object changed under it).
    pub fn forget(&self, rel: &RelPath) {
        self.files.remove(rel.as_str());
    }

    pub fn bodies(&self) -> &BodyCache {
        &self.bodies
    }

    pub fn open_files(&self) -> u64 {
        self.files.len()
    }
}

// === impl Disk ===

impl Disk {
    fn volume(&self) -> Option<&volumes::Volume> {
        self.local.volumes.get(self.volume)
    }

    /// Debug builds: the injected read fault, counted like a real one.
    fn injected_fault(&self) -> io::Result<()> {
        match self.volume().and_then(volumes::Volume::injected_read_fault) {
            Some(e) => {
                self.note_error(&e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Counts `e` against this volume (marking it unhealthy) when it is a device fault.
    pub fn note_error(&self, e: &io::Error) {
        self.local.volumes.note_error(self.volume, e);
    }

    pub async fn read(&self, file: Arc<File>, off: u64, len: usize) -> io::Result<Bytes> {
        self.injected_fault()?;
        let r = self.local.io.read(self.volume, file, off, len).await;
        if let Err(e) = &r {
            self.note_error(e);
        }
        r
    }

    pub async fn ensure_resident(
        &self,
        file: &Arc<File>,
        meta: &ObjectMeta,
        off: u64,
        len: u64,
    ) -> io::Result<()> {
        self.injected_fault()?;
        let r = self
            .local
            .io
            .ensure_resident(self.volume, file, meta, off, len)
            .await;
        if let Err(e) = &r {
            self.note_error(e);
        }
        r
    }

    /// Whether an object of `len` bytes goes through the hot-body cache.
    pub fn cacheable(&self, len: u64) -> bool {
        self.local.bodies.admits(len)
    }

    pub fn cached_now(&self, meta: &ObjectMeta) -> bool {
        self.local.bodies.contains_now(meta)
    }

    /// The whole object from the hot-body cache, filled once however many callers miss together.
    /// A fill's error reaches every waiter with its OS error code intact; the fault is counted
    /// once, by the fill. A fill is checked after its read ([`volumes::unchanged`]): bytes of a
    /// file rewritten in place are never cached, nor sent, under the identity it had before.
    pub async fn whole(&self, file: &Arc<File>, meta: &ObjectMeta) -> io::Result<Bytes> {
        let fill = async {
            let bytes = self.read(Arc::clone(file), 0, meta.len as usize).await?;
            if !volumes::unchanged(file, meta) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "file changed while being read",
                ));
            }
            Ok(bytes)
        };
        self.local
            .bodies
            .get_or_fill(meta, fill)
            .await
            .map_err(|e| volumes::clone_error(&e))
    }

    /// Whether a segment of `len` bytes may be sent from a memory map (too big for the hot-body
    /// cache, and mapping is on).
    pub fn maps_ok(&self, len: u64) -> bool {
        self.local.mmap && !self.local.bodies.admits(len)
    }

    pub fn map(&self, file: &File, meta: &ObjectMeta) -> Option<Arc<Mapping>> {
        self.local.maps.get(file, meta)
    }

    pub fn sent_zero_copy(&self, n: u64) {
        self.local.zero_copy_bytes.inc_by(n);
    }

    pub fn sent_mapped(&self, n: u64) {
        self.local.mapped_bytes.inc_by(n);
    }
}

impl Disk {
    /// Forgets the cached descriptor of `key` (the object changed under it).
    pub fn forget(&self, key: &RelPath) {
        self.local.forget(key);
    }

    /// Debug builds: the text of a test trigger file at this volume's root.
    pub fn test_trigger(&self, name: &str) -> Option<String> {
        self.volume()?.test_trigger(name)
    }
}
