//! One volume: a root directory on a local disk, its health, and opening objects beneath it.
//!
//! Containment is `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the root's descriptor,
//! so neither `..` nor a symlink can lead outside (the same walk done one component at a time
//! where openat2 is refused: [`super::beneath`]). Health flips on device faults and on probes of
//! the root (gone, replaced by another mount, marker missing); every probe is counted.
//!
//! ## An unmounted root
//! A filesystem unmounted under a running segd (`umount -l`, or a forced unmount) stays readable
//! through the open root handle, while the configured path now leads to the empty mount point on
//! the filesystem beneath. A probe that finds another directory at the path therefore decides
//! whether the root was *unmounted* (unhealthy: its objects are 503, never 404s from the empty
//! mount point) or *replaced* (reopened and served):
//! - unmounted: the path now lies on a mount higher up than when the root was opened (the mount
//!   at the path, or at a directory above it for a volume inside a filesystem, went away);
//! - replaced: the path lies on a mount at the same place or further down (the disk mounted
//!   again, a new disk mounted where the old one was, a filesystem mounted at the path after
//!   segd started), or the directory was recreated on the same filesystem.
//!
//! An unmounted root keeps its handle, so mounting the same filesystem back matches it again
//! (same device and inode) and the volume is healthy again.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use rustix::fs::{Mode, OFlags};

use super::beneath::{self, Symlinks};
use super::object::{is_device_fault, ObjectMeta};
use super::path::RelPath;
use crate::config::VolumeConfig;

/// An opened regular file and where it was found.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub meta: ObjectMeta,
    pub volume: usize,
}

pub(super) enum OpenError {
    NotFound,
    /// EACCES: segd's user may not open it (the object, or the volume's root: a probe tells).
    Denied,
    Fault(io::Error),
    Overloaded,
    /// The disk has not answered the calls in progress on it (see [`Volume::enter`]).
    Busy,
}

/// Calls on a volume are refused: its disk has not answered the ones in progress (see
/// [`Volume::enter`]).
#[derive(Debug)]
pub struct Stuck;

/// One root directory.
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
    marker: Option<String>,
    root: ArcSwapOption<Root>,
    healthy: AtomicBool,
    io_errors: AtomicU64,
    probes: AtomicU64,
    /// Milliseconds since `epoch` of the last probe (for probes that may be skipped when recent).
    last_probe_ms: AtomicU64,
    epoch: Instant,
    /// Times it became healthy again after being down.
    recoveries: AtomicU64,
    /// Bytes uploads in progress may still write here: their room, taken from the free space
    /// before they write it, so that uploads side by side keep the reserve together.
    promised: AtomicU64,
    /// Milliseconds since `epoch` (plus one) of the last write refused with EROFS: see
    /// [`Volume::note_read_only`]. 0: none.
    refused_writes_ms: AtomicU64,
    /// An object opened here lately: the probe reads its first block from the device (see
    /// [`Volume::device_answers`]).
    sample: std::sync::Mutex<Option<RelPath>>,
    /// Whether `sample` is empty (so that opens take the lock only then).
    sample_wanted: AtomicBool,
    /// Milliseconds since `epoch` (plus one) at which the probe running now began; 0: none.
    probing_since_ms: AtomicU64,
    /// Marked down because a probe has not returned (see [`Volume::check_stalled`]).
    stalled: AtomicBool,
    /// Blocking calls on this volume's disk in progress now (see [`Volume::enter`]).
    busy: AtomicUsize,
    /// Milliseconds since `epoch` (plus one) at which a blocking call here last returned, or
    /// the first of a busy spell began.
    busy_progress_ms: AtomicU64,
    /// Calls refused since the last one returned were said in the log.
    busy_warned: AtomicBool,
    /// Calls refused because the disk's calls in progress have not returned.
    busy_refusals: AtomicU64,
    /// Temporary files given up while the disk did not answer, to remove when it does (see
    /// [`Volume::abandon`]).
    abandoned: std::sync::Mutex<Vec<Abandoned>>,
}

/// A temporary file given up while its disk did not answer (see [`Volume::abandon`]).
pub enum Abandoned {
    /// A directory and the file's name in it: unlinked once the disk answers.
    Named(OwnedFd, String),
    /// An unnamed file (`O_TMPFILE`), held open: its last close frees it, once the disk
    /// answers.
    Unnamed(std::fs::File),
}

/// Blocking calls one volume may have in progress at once: set from `[server]
/// blocking_threads` at start ([`set_busy_limit`]). A disk that stops answering holds this many
/// threads of the blocking pool, not all of them (acceptance F2: 80 uploads stuck on a hung
/// disk took the 64 threads, and cold reads and uploads on the healthy volumes waited).
static BUSY_LIMIT: AtomicUsize = AtomicUsize::new(32);

/// How long the calls in progress on a volume may go without one of them returning before
/// calls beyond [`BUSY_LIMIT`] are refused.
pub const BUSY_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Sets how many blocking calls a volume may have in progress: half the blocking pool, at
/// least 2 (enough for a busy disk's uploads and cold reads side by side; a hung one leaves
/// the other half to the other volumes).
pub fn set_busy_limit(blocking_threads: usize) {
    BUSY_LIMIT.store((blocking_threads / 2).max(2), Ordering::Relaxed);
}

/// A blocking call in progress on a volume's disk (see [`Volume::enter`]); its drop says it
/// returned.
pub struct Busy<'a>(&'a Volume);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let v = self.0;
        v.busy_progress_ms.store(v.now_ms(), Ordering::Release);
        v.busy_warned.store(false, Ordering::Relaxed);
        v.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The block read from the device by a probe ([`Volume::device_answers`]).
const DIRECT_BLOCK: usize = 4096;

/// How long a volume that refused a write as read-only is taken for read-only without the
/// mount flag saying so.
const READ_ONLY_MEMORY: std::time::Duration = std::time::Duration::from_secs(30);

struct Root {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    /// How deep the mount holding the root was when it was opened: the number of path
    /// components of the nearest directory at or above the root that is a mount's root.
    mount_depth: Option<usize>,
}

/// Whether `fd` is the root of a mount: a filesystem or a bind mount is mounted at it.
fn is_mount_root(fd: BorrowedFd<'_>) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    if let Ok(x) = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS) {
        if x.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
            return x.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
        }
    }
    // Kernels before 5.8 do not say; a mounted filesystem is on another device than its parent
    // directory (a bind mount within one filesystem is not seen this way).
    match (
        rustix::fs::fstat(fd),
        rustix::fs::statat(fd, "..", rustix::fs::AtFlags::empty()),
    ) {
        (Ok(here), Ok(up)) => here.st_dev != up.st_dev,
        _ => false,
    }
}

/// The number of components of the nearest directory at or above `path` that is a mount's
/// root (`/` is one), or `None` when none of them can be opened.
fn mount_depth(path: &Path) -> Option<usize> {
    let path = std::path::absolute(path).ok()?;
    path.ancestors()
        .find(|dir| {
            rustix::fs::open(
                *dir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .is_ok_and(|fd| is_mount_root(fd.as_fd()))
        })
        .map(|dir| dir.components().count())
}

/// Why the directory now at `path` (device `dev`) means `root`'s filesystem was unmounted, or
/// `None` when it is a replacement to reopen (see the module doc, "An unmounted root"): the
/// path now lies on a mount higher up than the one it lay on (the mount that held it is gone),
/// not on the same mount point (a disk mounted again, a new disk) or one further down.
fn unmounted(root: &Root, path: &Path, dev: u64) -> Option<String> {
    let gone = match (root.mount_depth, mount_depth(path)) {
        (Some(then), Some(now)) => now < then,
        // Unknown (a directory above cannot be opened now): another device is another mount.
        _ => dev != root.dev,
    };
    gone.then(|| {
        format!(
            "filesystem unmounted: {} is now a directory of another filesystem \
             (device {}:{}, the volume's was {}:{})",
            path.display(),
            rustix::fs::major(dev),
            rustix::fs::minor(dev),
            rustix::fs::major(root.dev),
            rustix::fs::minor(root.dev),
        )
    })
}

/// Test-only fault injection, compiled into debug builds only (what `cargo test` runs; release
/// builds never contain it). Dot-files are never served, so the triggers are invisible to
/// clients:
/// - `.segd-fault-eio` at a volume's root: every open and probe on the volume fails with EIO;
/// - `.segd-fault-eio-read`: every read and prefetch of an object's bytes, and the probe's read
///   from the device, fails with EIO (opens still succeed), as a disk with bad sectors would;
/// - `.segd-fault-enospc`: the pull cache's new files and writes fail with ENOSPC, as a full
///   disk's would (reads go on);
/// - `.segd-fault-hang`: the pull cache's file creates, writes and commits, and the probe's
///   read from the device, block while it exists, as on a disk that stopped answering.
#[cfg(debug_assertions)]
fn injected(root: &Root, trigger: &str) -> Option<io::Error> {
    rustix::fs::statat(&root.fd, trigger, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|_| io::Error::from_raw_os_error(libc::EIO))
}

#[cfg(not(debug_assertions))]
fn injected(_root: &Root, _trigger: &str) -> Option<io::Error> {
    None
}

/// Whether segd's user may list and search the directory `fd` (its r and x bits, as they
/// apply to segd's effective IDs): EACCES otherwise.
fn searchable(fd: &rustix::fd::OwnedFd) -> io::Result<()> {
    rustix::fs::accessat(
        fd,
        ".",
        rustix::fs::Access::READ_OK | rustix::fs::Access::EXEC_OK,
        rustix::fs::AtFlags::EACCESS,
    )
    .map_err(io::Error::from)
}

fn classify(e: &io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
        | Some(libc::EPERM | libc::ENAMETOOLONG | libc::EISDIR | libc::EINVAL) => {
            OpenError::NotFound
        }
        Some(libc::EACCES) => OpenError::Denied,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => OpenError::Overloaded,
        _ => OpenError::Fault(super::clone_error(e)),
    }
}

// === impl Volume ===

impl Volume {
    pub(super) fn new(cfg: &VolumeConfig) -> Volume {
        let v = Volume {
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            marker: cfg.marker.clone(),
            root: ArcSwapOption::empty(),
            healthy: AtomicBool::new(false),
            io_errors: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            last_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            recoveries: AtomicU64::new(0),
            promised: AtomicU64::new(0),
            refused_writes_ms: AtomicU64::new(0),
            sample: std::sync::Mutex::new(None),
            sample_wanted: AtomicBool::new(true),
            probing_since_ms: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            busy_progress_ms: AtomicU64::new(0),
            busy_warned: AtomicBool::new(false),
            busy_refusals: AtomicU64::new(0),
            abandoned: std::sync::Mutex::new(Vec::new()),
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

    /// Device errors seen on this volume.
    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::Relaxed)
    }

    /// Times this volume became healthy again after being down.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }

    /// Probes of the root so far.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    fn open_root(&self) -> io::Result<Root> {
        let fd = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Opening a directory needs only its r bit; serving from it needs x too.
        searchable(&fd)?;
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
            mount_depth: mount_depth(&self.path),
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
            self.recoveries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(volume = %self.name, "volume healthy again");
        }
    }

    /// Probes the root unless a probe ran within `fresh`; returns the health after it. Lookups
    /// that found nothing call this, so a flood of 404s costs one probe per volume per `fresh`.
    pub fn probe_unless_recent(&self, fresh: std::time::Duration) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_probe_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < fresh.as_millis() as u64 {
            return self.is_healthy();
        }
        self.probe()
    }

    /// Re-checks the root: still there, same device and inode, marker present. Reopens a root
    /// that came back (remount, directory restored); keeps the handle of one whose filesystem
    /// was unmounted (see the module doc). Returns the health after the check.
    pub fn probe(&self) -> bool {
        let now_ms = (self.epoch.elapsed().as_millis() as u64).max(1);
        // One probe at a time: a disk that does not answer holds one thread, not one per
        // probe (see `check_stalled`).
        if (self.probing_since_ms)
            .compare_exchange(0, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.is_healthy();
        }
        // However the probe ends, it returned: the disk answered (a stall is over).
        struct Probing<'a>(&'a Volume);
        impl Drop for Probing<'_> {
            fn drop(&mut self) {
                self.0.stalled.store(false, Ordering::Release);
                self.0.probing_since_ms.store(0, Ordering::Release);
            }
        }
        let _probing = Probing(self);
        self.probes.fetch_add(1, Ordering::Relaxed);
        self.last_probe_ms.store(now_ms, Ordering::Relaxed);
        let current = self.root.load_full();
        if let Some(e) = current
            .as_deref()
            .and_then(|r| injected(r, ".segd-fault-eio"))
        {
            self.record_fault(&e);
            return false;
        }
        match rustix::fs::stat(&self.path) {
            Ok(st) => {
                let same = current
                    .as_ref()
                    .is_some_and(|r| r.dev == st.st_dev && r.ino == st.st_ino);
                if let Some(why) = current
                    .as_deref()
                    .filter(|_| !same)
                    .and_then(|r| unmounted(r, &self.path, st.st_dev))
                {
                    self.set_health(false, &why);
                    return false;
                }
                let marker_ok = match (&self.marker, &current) {
                    (Some(m), Some(r)) if same => {
                        rustix::fs::statat(&r.fd, m.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok()
                    }
                    _ => true,
                };
                // Also make sure the root itself still answers (EIO on the directory), and that
                // segd's user may still list and search it: a root made unreadable (`chmod`,
                // an ownership change) turns every lookup into EACCES, which is no 404.
                let root_ok = current
                    .as_ref()
                    .is_some_and(|r| rustix::fs::fstat(&r.fd).is_ok() && searchable(&r.fd).is_ok());
                if same && marker_ok && root_ok {
                    // The checks above may all be answered from memory: the device is asked
                    // too, or a disk that fails (or hangs) looked healthy within a second of
                    // being marked down (acceptance F4).
                    if let Some(Err(e)) = current.as_deref().map(|r| self.device_answers(r)) {
                        self.record_fault(&e);
                        return false;
                    }
                    if self.is_stuck() {
                        // Its calls in progress have not returned (see `enter`): the disk
                        // answers this read, not them.
                        return false;
                    }
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
    pub(super) fn open(&self, rel: &RelPath) -> Result<Opened, OpenError> {
        let Some(root) = self.root.load_full() else {
            return Err(OpenError::Fault(io::Error::other("volume root not open")));
        };
        let Some(_busy) = self.enter() else {
            return Err(OpenError::Busy);
        };
        if let Some(e) = injected(&root, ".segd-fault-eio") {
            return Err(OpenError::Fault(e));
        }
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd: OwnedFd = beneath::open(&root.fd, rel.as_str(), flags, Symlinks::Follow)
            .map_err(|e| classify(&e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| classify(&e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(OpenError::NotFound);
        }
        if st.st_size > 0 {
            self.sample_object(rel);
        }
        Ok(Opened {
            meta: ObjectMeta::from_stat(&st),
            file: File::from(fd),
            volume: usize::MAX,
        })
    }

    /// Current metadata of `rel` (one `statat`, following symlinks): only compared with the
    /// metadata of a file opened contained (the open-file cache's re-check of a path, on every
    /// playlist hit), never taken for an object of its own. A symlink out of the volume gives
    /// another file's metadata, so no match, and the lookup opens the path again, contained.
    pub fn stat(&self, rel: &RelPath) -> Option<ObjectMeta> {
        let root = self.root.load_full()?;
        let st = rustix::fs::statat(&root.fd, rel.as_str(), rustix::fs::AtFlags::empty()).ok()?;
        Some(ObjectMeta::from_stat(&st))
    }

    /// Current metadata of `rel`, resolved as [`Volume::open`] resolves it: a symlink is
    /// followed only while it stays beneath the root, so whether a file outside the volume
    /// exists never shows (an upload's placement asks this, and 201 or 204 would tell).
    pub fn stat_contained(&self, rel: &RelPath) -> Option<ObjectMeta> {
        self.try_stat_contained(rel).ok().flatten()
    }

    /// [`Volume::stat_contained`], which says whether it could ask: `Err` when calls on the
    /// volume are refused (see [`Volume::enter`]), so nobody can tell whether it holds `rel`.
    pub fn try_stat_contained(&self, rel: &RelPath) -> Result<Option<ObjectMeta>, Stuck> {
        let Some(root) = self.root.load_full() else {
            return Ok(None);
        };
        let _busy = self.enter().ok_or(Stuck)?;
        let flags = OFlags::PATH | OFlags::CLOEXEC;
        let Ok(fd) = beneath::open(&root.fd, rel.as_str(), flags, Symlinks::Follow) else {
            return Ok(None);
        };
        Ok(rustix::fs::fstat(&fd)
            .ok()
            .map(|st| ObjectMeta::from_stat(&st)))
    }

    /// A descriptor of the root directory (a `dup`: asks no disk, never waits), if it is open.
    pub fn root_fd(&self) -> Option<io::Result<OwnedFd>> {
        let root = self.root.load_full()?;
        Some(root.fd.try_clone())
    }

    /// Runs `f` with the root directory's descriptor (for writes beneath it), if it is open
    /// and calls on the volume are not refused (see [`Volume::enter`]: blocking, it may wait
    /// up to [`BUSY_STALL`]; never on a worker thread).
    pub fn with_root<T>(&self, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> T) -> Option<T> {
        let root = self.root.load_full()?;
        let _busy = self.enter()?;
        Some(f(root.fd.as_fd()))
    }

    /// Bytes available to unprivileged writers on this volume's filesystem; `None` when it is
    /// mounted read-only (as ext4 with `errors=remount-ro` does itself after a device error),
    /// where nothing can be written whatever `f_bavail` says.
    /// Promises `bytes` to an upload if they fit in `room` (the free space above the reserve)
    /// beside what is promised already; at once, whatever other uploads promise meanwhile.
    pub fn promise(&self, bytes: u64, room: u64) -> bool {
        self.promised
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                p.checked_add(bytes).filter(|total| *total <= room)
            })
            .is_ok()
    }

    /// Gives back bytes promised and written (the free space has them now) or not needed.
    pub fn unpromise(&self, bytes: u64) {
        let _ = self
            .promised
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(bytes))
            });
    }

    /// A write here was refused with EROFS. ext4's `errors=remount-ro` on Linux 6.9 and later
    /// makes a filesystem that hit an error refuse writes ("emergency_ro") without setting
    /// the read-only mount flag that `statvfs` shows: the volume is taken for read-only for
    /// [`READ_ONLY_MEMORY`] (new objects go elsewhere), then tried again.
    pub fn note_read_only(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.refused_writes_ms
            .store(ms.saturating_add(1), Ordering::Relaxed);
    }

    /// Whether a write was refused as read-only within [`READ_ONLY_MEMORY`].
    fn refused_writes_lately(&self) -> bool {
        let at = self.refused_writes_ms.load(Ordering::Relaxed);
        if at == 0 {
            return false;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(at - 1) < READ_ONLY_MEMORY.as_millis() as u64
    }

    /// The bytes free for writes, `None` when the volume is read-only (its mount flag, or a
    /// write refused lately: [`Volume::note_read_only`]).
    pub fn free_bytes(&self) -> io::Result<Option<u64>> {
        let root = self
            .root
            .load_full()
            .ok_or_else(|| io::Error::other("volume root not open"))?;
        let st = rustix::fs::fstatvfs(&root.fd)?;
        if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) || self.refused_writes_lately()
        {
            return Ok(None);
        }
        // No inode left: no new file fits, whatever the bytes say (a filesystem that counts
        // inodes: `f_files` 0 means it does not).
        if st.f_files > 0 && st.f_favail == 0 {
            return Ok(Some(0));
        }
        Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
    }

    /// The debug-build read fault (see [`injected`]): `Some(EIO)` while the trigger exists.
    pub fn injected_read_fault(&self) -> Option<io::Error> {
        if cfg!(debug_assertions) {
            let root = self.root.load_full()?;
            injected(&root, ".segd-fault-eio-read")
        } else {
            None
        }
    }

    /// The debug-build full-disk fault (see [`injected`]): `Some(ENOSPC)` while the trigger
    /// exists.
    pub fn injected_write_fault(&self) -> Option<io::Error> {
        if cfg!(debug_assertions) {
            let root = self.root.load_full()?;
            injected(&root, ".segd-fault-enospc")
                .map(|_| io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            None
        }
    }

    /// Takes `rel`, an object with bytes on this volume, for the probe's device read when it
    /// has none ([`Volume::device_answers`]).
    pub fn sample_object(&self, rel: &RelPath) {
        if self.sample_wanted.swap(false, Ordering::AcqRel) {
            *self.sample.lock().unwrap_or_else(|p| p.into_inner()) = Some(rel.clone());
        }
    }

    /// Reads the first block of an object opened here lately with `O_DIRECT`, from the device
    /// rather than the page cache: an error is the disk's (EIO), and a disk that stopped
    /// answering holds the probe here (see [`Volume::check_stalled`]). Nothing to read (no
    /// object opened yet, or it is gone) or no `O_DIRECT` on this filesystem: nothing asked.
    fn device_answers(&self, root: &Root) -> io::Result<()> {
        let Some(rel) = self
            .sample
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        self.injected_hang();
        if let Some(e) = injected(root, ".segd-fault-eio-read") {
            return Err(e);
        }
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECT | OFlags::NOCTTY;
        let fd = match beneath::open(&root.fd, rel.as_str(), flags, Symlinks::Follow) {
            Ok(fd) => fd,
            Err(e) if is_device_fault(&e.into()) => return Err(e.into()),
            Err(_) => {
                // Gone, or no O_DIRECT here: the next object opened is asked instead.
                *self.sample.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.sample_wanted.store(true, Ordering::Release);
                return Ok(());
            }
        };
        // O_DIRECT wants a buffer aligned to the logical block size (4 KiB covers it).
        let mut buf = vec![0u8; 2 * DIRECT_BLOCK];
        let at = buf.as_ptr().align_offset(DIRECT_BLOCK).min(DIRECT_BLOCK);
        match rustix::io::pread(&fd, &mut buf[at..at + DIRECT_BLOCK], 0) {
            Ok(_) => Ok(()),
            Err(e) if is_device_fault(&e.into()) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }

    /// Marks the volume down when the probe running now began `after` ago or more: its disk
    /// does not answer (a read of it would wait as long). Its objects answer 503 and new
    /// uploads go elsewhere meanwhile; the probe, when it returns, says what the disk is.
    pub fn check_stalled(&self, after: std::time::Duration) {
        let since = self.probing_since_ms.load(Ordering::Acquire);
        let now = self.epoch.elapsed().as_millis() as u64;
        if since == 0 || now.saturating_sub(since) < after.as_millis() as u64 {
            return;
        }
        if !self.stalled.swap(true, Ordering::AcqRel) {
            let secs = now.saturating_sub(since) / 1000;
            self.io_errors.fetch_add(1, Ordering::Relaxed);
            self.set_health(
                false,
                &format!("its disk has not answered a probe for {secs} s"),
            );
        }
    }

    fn now_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).saturating_add(1)
    }

    /// Starts a blocking call on this volume's disk (an open, a look-up, an upload's create,
    /// writes and rename), or refuses it. At most [`BUSY_LIMIT`] calls are in progress on a
    /// volume: one beyond waits for one of them to return, and is refused when none has
    /// returned for [`BUSY_STALL`]: the disk is not answering, and the call would only hold one
    /// more thread of the blocking pool for as long as it does not. The caller answers as for
    /// a volume that is down (503 with `Retry-After`), and the volume is marked down at the
    /// first refusal, until its calls return and a probe succeeds.
    pub fn enter(&self) -> Option<Busy<'_>> {
        let limit = BUSY_LIMIT.load(Ordering::Relaxed);
        loop {
            let n = self.busy.load(Ordering::Acquire);
            if n < limit {
                if self
                    .busy
                    .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                if n == 0 {
                    self.busy_progress_ms
                        .store(self.now_ms(), Ordering::Release);
                }
                let busy = Busy(self);
                self.injected_call_hang();
                return Some(busy);
            }
            if self.no_progress() {
                self.busy_refusals.fetch_add(1, Ordering::Relaxed);
                if !self.busy_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        volume = %self.name,
                        in_progress = n,
                        "the volume's disk has not finished a call for {} s: new calls on it are refused (503) until one returns",
                        BUSY_STALL.as_secs()
                    );
                    // Its disk does not answer: down at once (new objects go elsewhere,
                    // journaled), not after its probe's longer stall; a probe takes it back
                    // only once its calls return (see `probe`).
                    self.set_health(
                        false,
                        &format!(
                            "{n} calls on its disk have not returned for {} s",
                            BUSY_STALL.as_secs()
                        ),
                    );
                }
                return None;
            }
            // Rare (a disk this busy is slow or stuck): polled, so that a call returning
            // costs no wake-up.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether calls on this volume are refused now (see [`Volume::enter`]).
    pub fn is_stuck(&self) -> bool {
        self.busy.load(Ordering::Acquire) >= BUSY_LIMIT.load(Ordering::Relaxed)
            && self.no_progress()
    }

    /// Whether calls are in progress on this volume and none has returned for `after`, or so
    /// many are in progress that a new one may have to wait for a slot ([`Volume::enter`]).
    pub fn lagging(&self, after: std::time::Duration) -> bool {
        let n = self.busy.load(Ordering::Acquire);
        if n == 0 {
            return false;
        }
        let last = self.busy_progress_ms.load(Ordering::Acquire);
        n >= BUSY_LIMIT.load(Ordering::Relaxed) / 2
            || self.now_ms().saturating_sub(last) >= after.as_millis() as u64
    }

    fn no_progress(&self) -> bool {
        let last = self.busy_progress_ms.load(Ordering::Acquire);
        self.now_ms().saturating_sub(last) >= BUSY_STALL.as_millis() as u64
    }

    /// Blocking calls on this volume's disk in progress now.
    pub fn busy_calls(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Calls refused because the disk had not answered the ones in progress.
    pub fn busy_refusals(&self) -> u64 {
        self.busy_refusals.load(Ordering::Relaxed)
    }

    /// Keeps a temporary file that could not be removed now because the disk does not
    /// answer: the probe removes it once the disk answers again
    /// ([`Volume::remove_abandoned`]). Readers never see it (a temporary name, or none).
    pub fn abandon(&self, file: Abandoned) {
        self.abandoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(file);
    }

    /// Removes the temporary files given up while the disk did not answer (blocking: the
    /// probe's thread, after the disk answered it). Returns how many went.
    pub fn remove_abandoned(&self) -> usize {
        let files = std::mem::take(&mut *self.abandoned.lock().unwrap_or_else(|p| p.into_inner()));
        let mut removed = 0;
        for file in files {
            let (dir, name) = match file {
                Abandoned::Named(dir, name) => (dir, name),
                Abandoned::Unnamed(f) => {
                    drop(f);
                    removed += 1;
                    continue;
                }
            };
            match rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty()) {
                Ok(()) => removed += 1,
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    tracing::warn!(volume = %self.name, file = %name, error = %e, "cannot remove a temporary file left while the disk did not answer");
                }
            }
        }
        removed
    }

    /// The debug-build hung disk for every call that [`Volume::enter`] starts: blocks while
    /// `.segd-fault-hang-calls` exists at the root (up to a minute).
    fn injected_call_hang(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < until
            && (self.root.load_full())
                .is_some_and(|r| injected(&r, ".segd-fault-hang-calls").is_some())
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Whether a probe is running now.
    pub fn probing(&self) -> bool {
        self.probing_since_ms.load(Ordering::Acquire) != 0
    }

    /// The debug-build hung disk (see [`injected`]): blocks while `.segd-fault-hang` exists
    /// (up to a minute), as an operation on a disk that stopped answering does.
    pub fn injected_hang(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < until
            && (self.root.load_full()).is_some_and(|r| injected(&r, ".segd-fault-hang").is_some())
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Debug builds only: the text of a test trigger file at the root (`None` in release builds).
    pub fn test_trigger(&self, name: &str) -> Option<String> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let root = self.root.load_full()?;
        let fd = rustix::fs::openat(
            &root.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        std::io::read_to_string(File::from(fd)).ok()
    }

    /// Records a device error seen while reading an object of this volume.
    pub fn record_fault(&self, e: &io::Error) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
        self.set_health(false, e);
    }
}
