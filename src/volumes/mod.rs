//! Volumes: the local disks segd serves from, object lookup across them, and their health.
//!
//! Owns: root directory handles, containment (`openat2` with `RESOLVE_BENEATH`, so neither `..`
//! nor a symlink can lead outside a root), the placement rule, per-volume health, and a
//! filesystem survey for the start-up log. Knows nothing about HTTP.
//!
//! ## Placement rule (how operators lay out disks)
//! The *asset key* of a path is its first two segments (`vod/t1/128k/seg_1.ts` → `vod/t1`).
//! Its preferred volume is `fnv1a64(asset key) % number_of_volumes` in the order volumes appear
//! in the config (`segd place --config F PATH` prints it). Lookup tries, in order: the volume
//! that last served this asset key (remembered), the preferred volume, then every other healthy
//! volume. So any layout works, and the hash layout costs one `openat2` per request. An object
//! found on no healthy volume is 404 when every volume is healthy and 503 otherwise (it may be
//! on the disk that is down, and a CDN must not cache a 404 for it).
//!
//! ## Health
//! A volume is unhealthy when its root is gone, unmounted (the path now leads to another
//! directory, on no mount of its own: `volume` module doc), its marker file is missing, or a
//! read failed with a device error (EIO, ENXIO, ENODEV, ESTALE, ...). The transition is logged
//! once. The periodic check ([`Volume::probe`], each volume on a thread of its own) re-probes,
//! reads a block of a lately opened object from the device, reopens a root that came back, and
//! marks down a volume whose probe does not return ([`Volume::check_stalled`]). No disk error
//! ever panics or stops the process.

pub mod beneath;
mod object;
pub mod path;
mod volume;

use std::io;
use std::path::Path;
use std::time::Duration;

pub use object::{clone_error, is_device_fault, still_current, unchanged, ObjectMeta};
pub use path::{sanitize, PathError, RelPath};
use volume::OpenError;
pub use volume::{set_busy_limit, Abandoned, Busy, Opened, Stuck, Volume, BUSY_STALL};

use crate::config::VolumeConfig;

/// Why a lookup produced no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// Not on any volume, and every volume is healthy.
    NotFound,
    /// Not on any healthy volume, and at least one volume (this one) is unhealthy.
    VolumeUnavailable { volume: usize },
    /// The process is out of file descriptors (not a disk problem).
    Overloaded,
}

/// How recent a root probe must be for a lookup that found nothing to skip its own.
const MISS_PROBE_FRESH: Duration = Duration::from_millis(250);

/// FNV-1a, 64-bit: stable across versions and platforms, so the placement rule never moves.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The placement rule: the preferred volume of `rel` among `count` volumes in config order
/// (`fnv1a64(asset key) % count`). `segd place` and lookups both use this one function.
pub fn placement(rel: &RelPath, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    (fnv1a64(rel.asset_key().as_bytes()) % count as u64) as usize
}

/// All volumes, in config order, then the pull cache's directory (when there is one): it is
/// opened, probed and read like a volume, but never searched by lookups, placement or writes.
pub struct Volumes {
    vols: Vec<Volume>,
    /// Volumes lookups search: the configured ones (the pull cache, if any, comes after them).
    served: usize,
    /// asset key → index of the volume that last served it.
    memo: moka::sync::Cache<Box<str>, u16>,
}

// === impl Volumes ===

impl Volumes {
    pub fn new(cfgs: &[VolumeConfig]) -> Volumes {
        Volumes::with_cache(cfgs, None)
    }

    /// The configured volumes and, after them, the pull cache's directory.
    pub fn with_cache(cfgs: &[VolumeConfig], cache: Option<&VolumeConfig>) -> Volumes {
        Volumes {
            served: cfgs.len(),
            vols: cfgs.iter().chain(cache).map(Volume::new).collect(),
            memo: moka::sync::Cache::new(100_000),
        }
    }

    /// Every volume, the pull cache's directory included (health, metrics, the banner).
    pub fn iter(&self) -> impl Iterator<Item = &Volume> {
        self.vols.iter()
    }

    /// The volumes lookups, placement and writes use, with their indexes.
    pub fn served(&self) -> impl Iterator<Item = (usize, &Volume)> {
        self.vols[..self.served].iter().enumerate()
    }

    /// The index of the pull cache's directory, when there is one.
    pub fn cache_volume(&self) -> Option<usize> {
        (self.vols.len() > self.served).then_some(self.served)
    }

    pub fn get(&self, i: usize) -> Option<&Volume> {
        self.vols.get(i)
    }

    pub fn len(&self) -> usize {
        self.vols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vols.is_empty()
    }

    pub fn any_healthy(&self) -> bool {
        self.served().any(|(_, v)| v.is_healthy())
    }

    /// The preferred volume of a path by the placement rule.
    pub fn placement(&self, rel: &RelPath) -> usize {
        placement(rel, self.served)
    }

    /// Finds and opens `rel` (see the module doc for the order). `NotFound` means no healthy
    /// volume has it and none is known to be down; see [`Volumes::confirm_missing`].
    pub fn open(&self, rel: &RelPath) -> Result<Opened, LookupError> {
        let n = self.served;
        let key = rel.asset_key();
        let remembered = self.memo.get(key).map(usize::from).filter(|&i| i < n);
        let preferred = self.placement(rel);
        let order = remembered
            .into_iter()
            .chain(std::iter::once(preferred))
            .chain(0..n);
        let mut tried: u64 = 0; // bitmask for the first 64 volumes; more are simply retried
        let mut unavailable: Option<usize> = None;
        for i in order {
            if i < 64 {
                if tried & (1 << i) != 0 {
                    continue;
                }
                tried |= 1 << i;
            }
            let vol = &self.vols[i];
            if !vol.is_healthy() {
                unavailable.get_or_insert(i);
                continue;
            }
            match vol.open(rel) {
                Ok(mut o) => {
                    o.volume = i;
                    if remembered != Some(i) {
                        self.memo.insert(key.into(), i as u16);
                    }
                    return Ok(o);
                }
                Err(OpenError::NotFound) => {}
                // The root made unreadable turns every lookup into EACCES: a probe (at most one
                // per `MISS_PROBE_FRESH`, as before a 404) sees it (503, logged). A file of its
                // own that segd may not read is a 404.
                Err(OpenError::Denied) => {
                    if !vol.probe_unless_recent(MISS_PROBE_FRESH) {
                        unavailable.get_or_insert(i);
                    }
                }
                Err(OpenError::Overloaded) => return Err(LookupError::Overloaded),
                // Its disk does not answer the calls in progress: another volume may have the
                // object, else 503 (the probe decides whether the volume is down).
                Err(OpenError::Busy) => {
                    unavailable.get_or_insert(i);
                }
                Err(OpenError::Fault(e)) => {
                    vol.record_fault(&e);
                    unavailable.get_or_insert(i);
                }
            }
        }
        match unavailable {
            Some(volume) => Err(LookupError::VolumeUnavailable { volume }),
            None => Err(LookupError::NotFound),
        }
    }

    /// Opens `rel` on volume `i` only (the pull cache's directory).
    pub fn open_one(&self, i: usize, rel: &RelPath) -> Result<Opened, LookupError> {
        let vol = self
            .vols
            .get(i)
            .ok_or(LookupError::VolumeUnavailable { volume: i })?;
        match vol.open(rel) {
            Ok(mut o) => {
                o.volume = i;
                Ok(o)
            }
            Err(OpenError::NotFound) => Err(LookupError::NotFound),
            Err(OpenError::Denied) if !vol.probe_unless_recent(MISS_PROBE_FRESH) => {
                Err(LookupError::VolumeUnavailable { volume: i })
            }
            Err(OpenError::Denied) => Err(LookupError::NotFound),
            Err(OpenError::Overloaded) => Err(LookupError::Overloaded),
            Err(OpenError::Busy) => Err(LookupError::VolumeUnavailable { volume: i }),
            Err(OpenError::Fault(e)) => {
                vol.record_fault(&e);
                Err(LookupError::VolumeUnavailable { volume: i })
            }
        }
    }

    /// Before a lookup that found nothing becomes a cacheable 404: makes sure no volume silently
    /// went away (root deleted or unmounted between health checks). Probes each root unless it
    /// was probed within `MISS_PROBE_FRESH` (so a flood of random 404s costs a few probes a
    /// second, not one per request); `force` probes regardless (the object was known a moment
    /// ago, so its disk is suspect).
    pub fn confirm_missing(&self, force: bool) -> Result<(), LookupError> {
        let mut unavailable = None;
        for (i, vol) in self.served() {
            let healthy = if force {
                vol.probe()
            } else {
                vol.probe_unless_recent(MISS_PROBE_FRESH)
            };
            if !healthy {
                unavailable.get_or_insert(i);
            }
        }
        match unavailable {
            Some(volume) => Err(LookupError::VolumeUnavailable { volume }),
            None => Ok(()),
        }
    }

    /// Remembers that `rel`'s asset lives on volume `i` (after a write put it there).
    /// With one volume there is nothing to remember; an asset already remembered there (every
    /// segment after an asset's first) costs a lookup, not an insert.
    pub fn remember(&self, rel: &RelPath, i: usize) {
        if i >= self.served || self.served < 2 {
            return;
        }
        let key = rel.asset_key();
        if self.memo.get(key) != Some(i as u16) {
            self.memo.insert(key.into(), i as u16);
        }
    }

    /// The volume that last served `rel`'s asset, if remembered.
    pub fn remembered(&self, rel: &RelPath) -> Option<usize> {
        self.memo
            .get(rel.asset_key())
            .map(usize::from)
            .filter(|&i| i < self.served)
    }

    /// Counts `e` against volume `i` (marking it unhealthy) when it is a device fault; other
    /// errors — a reset peer, a shrunk file, a timeout — say nothing about the disk.
    pub fn note_error(&self, i: usize, e: &io::Error) {
        if is_device_fault(e) {
            if let Some(v) = self.vols.get(i) {
                v.record_fault(e);
            }
        }
        if e.raw_os_error() == Some(libc::EROFS) {
            if let Some(v) = self.vols.get(i) {
                v.note_read_only();
            }
        }
    }

    /// Current metadata of `rel` on volume `i` (following symlinks: only compared, never served).
    pub fn stat(&self, i: usize, rel: &RelPath) -> Option<ObjectMeta> {
        self.vols.get(i)?.stat(rel)
    }
}

/// Object count and bytes under a root (for the start-up log), stopping after `limit` entries.
pub fn survey(root: &Path, limit: u64) -> io::Result<(u64, u64, bool)> {
    let mut stack = vec![root.to_path_buf()];
    let (mut count, mut bytes, mut seen) = (0u64, 0u64, 0u64);
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            seen += 1;
            if seen > limit {
                return Ok((count, bytes, true));
            }
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                count += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    Ok((count, bytes, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(p: &Path) -> VolumeConfig {
        VolumeConfig {
            name: p.display().to_string(),
            path: p.to_path_buf(),
            marker: None,
        }
    }

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret.ts"), b"secret").expect("write");
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("a")).expect("mkdir");
        std::fs::write(root.path().join("a/in.ts"), b"inside").expect("write");
        std::os::unix::fs::symlink(
            outside.path().join("secret.ts"),
            root.path().join("a/out.ts"),
        )
        .expect("symlink");
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).expect("symlink");
        std::os::unix::fs::symlink("in.ts", root.path().join("a/alias.ts")).expect("symlink");
        let vols = Volumes::new(&[cfg(root.path())]);
        let open = |p: &str| vols.open(&sanitize(p).expect("sane"));
        assert!(open("/a/in.ts").is_ok());
        assert!(
            open("/a/alias.ts").is_ok(),
            "a symlink inside the root is fine"
        );
        assert_eq!(open("/a/out.ts").err(), Some(LookupError::NotFound));
        assert_eq!(open("/dir/secret.ts").err(), Some(LookupError::NotFound));
        assert_eq!(
            open("/a").err(),
            Some(LookupError::NotFound),
            "directories are not objects"
        );
    }

    #[test]
    fn placement_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
