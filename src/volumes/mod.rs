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
//! A volume is unhealthy when its root is gone, replaced (unmounted: different device or
//! inode), its marker file is missing, or a read failed with a device error (EIO, ENXIO,
//! ENODEV, ESTALE, ...). The transition is logged once. [`Volumes::check_health`] re-probes and
//! reopens a root that came back. No disk error ever panics or stops the process.

pub mod path;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::config::VolumeConfig;
pub use path::{sanitize, PathError, RelPath};

/// Stat data of an opened object, from one `fstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    pub len: u64,
    pub dev: u64,
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds: moves on every write and truncation, even one that
    /// restores the old mtime.
    pub ctime_ns: i128,
}

impl ObjectMeta {
    pub fn modified(&self) -> SystemTime {
        let secs = (self.mtime_ns / 1_000_000_000) as i64;
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    }

    /// Strong validator from device, inode, size and modification time (ns): any replacement or
    /// rewrite of the file changes it.
    pub fn etag(&self) -> String {
        format!(
            "\"{:x}-{:x}-{:x}-{:x}\"",
            self.dev, self.ino, self.len, self.mtime_ns
        )
    }
}

/// An opened regular file and where it was found.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: ObjectMeta,
    pub volume: usize,
}

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

enum OpenError {
    NotFound,
    Fault(io::Error),
    Overloaded,
}

/// One root directory.
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
    marker: Option<String>,
    root: ArcSwapOption<Root>,
    healthy: AtomicBool,
    io_errors: AtomicU64,
}

struct Root {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
}

/// Test-only fault injection, compiled into debug builds only (what `cargo test` runs; release
/// builds never contain it): while a file named `.segd-fault-eio` exists at a volume's root,
/// every open and probe on that volume fails with EIO, as a dying disk would. Dot-files are never
/// served, so the trigger is invisible to clients.
#[cfg(debug_assertions)]
fn injected_fault(root: &Root) -> Option<io::Error> {
    rustix::fs::statat(
        &root.fd,
        ".segd-fault-eio",
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .ok()
    .map(|_| io::Error::from_raw_os_error(libc::EIO))
}

#[cfg(not(debug_assertions))]
fn injected_fault(_root: &Root) -> Option<io::Error> {
    None
}

/// Whether `openat2` exists on this kernel; if not, containment falls back to canonicalising.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

fn classify(e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV | libc::EACCES)
        | Some(libc::EPERM | libc::ENAMETOOLONG | libc::EISDIR | libc::EINVAL) => {
            OpenError::NotFound
        }
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => OpenError::Overloaded,
        _ => OpenError::Fault(io::Error::new(e.kind(), e.to_string())),
    }
}

// === impl Volume ===

impl Volume {
    fn new(cfg: &VolumeConfig) -> Volume {
        let v = Volume {
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            marker: cfg.marker.clone(),
            root: ArcSwapOption::empty(),
            healthy: AtomicBool::new(false),
            io_errors: AtomicU64::new(0),
        };
        match v.open_root() {
            Ok(root) => {
                v.root.store(Some(Arc::new(root)));
                v.healthy.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(volume = %v.name, error = %e, "volume is unavailable at start")
            }
        }
        v
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    fn open_root(&self) -> io::Result<Root> {
        let fd = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if let Some(m) = &self.marker {
            rustix::fs::statat(&fd, m.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).map_err(
                |e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("marker file {m:?} missing"),
                    )
                },
            )?;
        }
        Ok(Root {
            fd,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    fn set_health(&self, healthy: bool, why: &dyn std::fmt::Display) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was && !healthy {
            tracing::error!(volume = %self.name, reason = %why, "volume marked unhealthy; its objects answer 503");
        } else if !was && healthy {
            tracing::info!(volume = %self.name, "volume healthy again");
        }
    }

    /// Re-checks the root: still there, same device and inode, marker present. Reopens a root
    /// that came back (remount, directory restored). Returns the health after the check.
    pub fn probe(&self) -> bool {
        let current = self.root.load_full();
        if let Some(e) = current.as_deref().and_then(injected_fault) {
            self.record_fault(&e);
            return false;
        }
        match rustix::fs::stat(&self.path) {
            Ok(st) => {
                let same = current
                    .as_ref()
                    .is_some_and(|r| r.dev == st.st_dev && r.ino == st.st_ino);
                let marker_ok = match (&self.marker, &current) {
                    (Some(m), Some(r)) if same => {
                        rustix::fs::statat(&r.fd, m.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok()
                    }
                    _ => true,
                };
                // Also make sure the root itself still answers (EIO on the directory).
                let root_ok = current
                    .as_ref()
                    .is_some_and(|r| rustix::fs::fstat(&r.fd).is_ok());
                if same && marker_ok && root_ok {
                    if !self.is_healthy() {
                        // Only a fault marked it unhealthy; the disk answers again.
                        self.set_health(true, &"probe succeeded");
                    }
                    return true;
                }
                match self.open_root() {
                    Ok(root) => {
                        self.root.store(Some(Arc::new(root)));
                        self.set_health(true, &"root reopened");
                        true
                    }
                    Err(e) => {
                        self.set_health(false, &e);
                        false
                    }
                }
            }
            Err(e) => {
                self.set_health(false, &io::Error::from(e));
                false
            }
        }
    }

    /// Opens `rel` under this root. Never follows anything out of the root.
    fn open(&self, rel: &RelPath) -> Result<Opened, OpenError> {
        let Some(root) = self.root.load_full() else {
            return Err(OpenError::Fault(io::Error::other("volume root not open")));
        };
        if let Some(e) = injected_fault(&root) {
            return Err(OpenError::Fault(e));
        }
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd: OwnedFd = if OPENAT2_MISSING.load(Ordering::Relaxed) {
            self.open_fallback(rel, flags)?
        } else {
            match rustix::fs::openat2(
                root.fd.as_fd(),
                rel.as_str(),
                flags,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOSYS) => {
                    tracing::warn!("openat2 is not available; containment falls back to canonicalize + prefix check");
                    OPENAT2_MISSING.store(true, Ordering::Relaxed);
                    self.open_fallback(rel, flags)?
                }
                Err(e) => return Err(classify(&e.into())),
            }
        };
        let file = File::from(fd);
        let md = file.metadata().map_err(|e| classify(&e))?;
        if !md.is_file() {
            return Err(OpenError::NotFound);
        }
        Ok(Opened {
            meta: ObjectMeta {
                len: md.len(),
                dev: md.dev(),
                ino: md.ino(),
                mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
                ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            },
            file,
            volume: usize::MAX,
        })
    }

    /// Containment without openat2: resolve symlinks, then require the result under the root.
    /// (There is a window between the check and the open that openat2 does not have.)
    fn open_fallback(&self, rel: &RelPath, flags: OFlags) -> Result<OwnedFd, OpenError> {
        let root = std::fs::canonicalize(&self.path).map_err(OpenError::Fault)?;
        let full = std::fs::canonicalize(root.join(rel.as_str())).map_err(|e| classify(&e))?;
        if !full.starts_with(&root) {
            return Err(OpenError::NotFound);
        }
        rustix::fs::open(&full, flags, Mode::empty()).map_err(|e| classify(&e.into()))
    }

    /// Records a device error seen while reading an object of this volume.
    pub fn record_fault(&self, e: &io::Error) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        self.set_health(false, e);
    }
}

/// Whether an open descriptor still shows the object described by `meta`: same size and mtime,
/// and not unlinked. One `fstat` on a held descriptor: no path walk, no disk I/O.
pub fn still_current(file: &File, meta: &ObjectMeta) -> bool {
    match rustix::fs::fstat(file) {
        Ok(st) => {
            st.st_nlink > 0
                && st.st_size as u64 == meta.len
                && i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec)
                    == meta.mtime_ns
        }
        Err(_) => false,
    }
}

/// Whether an error from reading or sending a file is a device fault of its disk. Only these
/// errno values count: a peer reset, a shrunk file or a timeout must never mark a volume down.
pub fn is_device_fault(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EIO
                | libc::ENXIO
                | libc::ENODEV
                | libc::ESTALE
                | libc::ENOMEDIUM
                | libc::EREMOTEIO
                | libc::EUCLEAN
        )
    )
}

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

/// All volumes, in config order.
pub struct Volumes {
    vols: Vec<Volume>,
    /// asset key → index of the volume that last served it.
    memo: moka::sync::Cache<Box<str>, u16>,
}

// === impl Volumes ===

impl Volumes {
    pub fn new(cfgs: &[VolumeConfig]) -> Volumes {
        Volumes {
            vols: cfgs.iter().map(Volume::new).collect(),
            memo: moka::sync::Cache::new(100_000),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Volume> {
        self.vols.iter()
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
        self.vols.iter().any(Volume::is_healthy)
    }

    /// The preferred volume of a path by the placement rule.
    pub fn placement(&self, rel: &RelPath) -> usize {
        placement(rel, self.vols.len())
    }

    /// Finds and opens `rel` (see the module doc for the order).
    pub fn open(&self, rel: &RelPath) -> Result<Opened, LookupError> {
        let n = self.vols.len();
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
                Err(OpenError::Overloaded) => return Err(LookupError::Overloaded),
                Err(OpenError::Fault(e)) => {
                    vol.record_fault(&e);
                    unavailable.get_or_insert(i);
                }
            }
        }
        if unavailable.is_none() {
            // Before answering a cacheable 404, make sure no volume silently went away
            // (root deleted or unmounted between health checks).
            for (i, vol) in self.vols.iter().enumerate() {
                if !vol.probe() {
                    unavailable.get_or_insert(i);
                }
            }
        }
        match unavailable {
            Some(volume) => Err(LookupError::VolumeUnavailable { volume }),
            None => Err(LookupError::NotFound),
        }
    }

    /// Counts `e` against volume `i` (marking it unhealthy) when it is a device fault; other
    /// errors — a reset peer, a shrunk file, a timeout — say nothing about the disk.
    pub fn note_error(&self, i: usize, e: &io::Error) {
        if is_device_fault(e) {
            if let Some(v) = self.vols.get(i) {
                v.record_fault(e);
            }
        }
    }

    /// Current metadata of `rel` on volume `i` (following symlinks: only compared, never served).
    pub fn stat(&self, i: usize, rel: &RelPath) -> Option<ObjectMeta> {
        let vol = self.vols.get(i)?;
        let root = vol.root.load_full()?;
        let st = rustix::fs::statat(&root.fd, rel.as_str(), rustix::fs::AtFlags::empty()).ok()?;
        Some(ObjectMeta {
            len: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        })
    }

    /// Re-probes every volume (called periodically, off the request path).
    pub fn check_health(&self) {
        for v in &self.vols {
            v.probe();
        }
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
    fn only_device_errors_are_faults() {
        for errno in [libc::EIO, libc::ENXIO, libc::ENODEV, libc::ESTALE] {
            assert!(is_device_fault(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [
            libc::EPIPE,
            libc::ECONNRESET,
            libc::ENOTCONN,
            libc::EAGAIN,
            libc::ENOENT,
        ] {
            assert!(!is_device_fault(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_device_fault(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "shrank"
        )));
        assert!(!is_device_fault(&io::Error::from(io::ErrorKind::TimedOut)));
    }

    #[test]
    fn placement_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
