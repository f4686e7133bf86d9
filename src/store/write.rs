//! The one write path: bytes into a temporary file in the target directory, then commit (rename
//! into place) or abort (unlink). Uploads use it today; pull-through fills and write-through
//! copies will too — they differ only in where the bytes come from.
//!
//! Containment: directories are walked and created one component at a time from the volume's
//! root descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or its user-space
//! equivalent, `volumes::beneath`) and `mkdirat`, so
//! neither `..` nor a symlink (planted before or during the write) can lead a write outside the
//! volume. The temporary file is a dot-file (`.segd-tmp-<run>-<random>`), which the read side never
//! serves; the rename is atomic for readers (a reader that opened the old file keeps the old
//! inode). Durable commit order, when asked: write → fsync(file) → rename → fsync(directory).
//!
//! Uploads ask for an *unnamed* temporary file where the filesystem has them (`O_TMPFILE`, in
//! the target directory): no name at all until the commit links it into place (`linkat`, which
//! fails on a name that exists, so a replace links it under a temporary name and renames that
//! over the old one). A new object costs one directory entry instead of three changes to the
//! directory (temporary name created, removed, final name added): about 18 µs of an upload's
//! CPU on ext4 with 500 files a directory. A failed upload needs no unlink (closing the file
//! frees it) and a crash leaves nothing behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::volumes::beneath::Symlinks;

/// Name prefix of temporary files (removed at start-up if a crash left any).
pub const TEMP_PREFIX: &str = ".segd-tmp-";

/// This process's run id: the part of its temporary files' names after [`TEMP_PREFIX`]. The
/// start-up clean-up runs while this process already writes (after an upgrade, once the old
/// process has exited; after a plain start, in the background), so it tells the temporary files
/// of this run, which are uploads in progress, from those an earlier run left.
fn run_id() -> u64 {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RUN.get_or_init(crate::io::random_bits)
}

/// Whether `name` is a temporary file another run (a crashed or exited process) left: never
/// one of this process's writes in progress.
pub fn is_stale_temp(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .is_some_and(|rest| !rest.starts_with(&format!("{:016x}-", run_id())))
}

/// How this process links an unnamed temporary file into place, found by the first one
/// ([`link_mode`]): `linkat(fd, "", AT_EMPTY_PATH)` (Linux 6.10 on for any process that opened
/// the file; before that, with `CAP_DAC_READ_SEARCH`), else through `/proc/self/fd` (any
/// kernel, needs `/proc`), else not at all (named temporary files only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkMode {
    EmptyPath,
    ProcFd,
}

const LINK_UNKNOWN: u8 = 0;
const LINK_EMPTY_PATH: u8 = 1;
const LINK_PROC_FD: u8 = 2;
const LINK_NONE: u8 = 3;

static LINK_MODE: AtomicU8 = AtomicU8::new(LINK_UNKNOWN);

/// This process's [`LinkMode`]; the first call tries each way with a throwaway unnamed file in
/// `dir` (an unnamed file once linked and unlinked cannot be linked again, so the probe cannot
/// be the upload's own).
fn link_mode(dir: &Dir) -> Option<LinkMode> {
    match LINK_MODE.load(Ordering::Relaxed) {
        LINK_EMPTY_PATH => return Some(LinkMode::EmptyPath),
        LINK_PROC_FD => return Some(LinkMode::ProcFd),
        LINK_NONE => return None,
        _ => {}
    }
    // A way that is refused is not tried again; any other failure (a full disk, the
    // directory removed meanwhile) says nothing about the way: the next file tries again.
    let mut mode = None;
    for m in [LinkMode::EmptyPath, LinkMode::ProcFd] {
        match probe_link(dir, m) {
            Ok(()) => {
                mode = Some(m);
                break;
            }
            Err(Probe::Refused) => {}
            Err(Probe::Failed(e)) => {
                tracing::debug!(error = %e, way = ?m, "cannot tell yet how to link unnamed temporary files");
                return None;
            }
        }
    }
    let (code, how) = match mode {
        Some(LinkMode::EmptyPath) => (LINK_EMPTY_PATH, "linkat(AT_EMPTY_PATH)"),
        Some(LinkMode::ProcFd) => (LINK_PROC_FD, "linkat through /proc/self/fd"),
        None => (LINK_NONE, "none: named temporary files"),
    };
    LINK_MODE.store(code, Ordering::Relaxed);
    tracing::debug!(
        how,
        "unnamed temporary files (O_TMPFILE) are linked into place"
    );
    mode
}

/// Why a way of linking did not work for the probe.
enum Probe {
    /// The way is refused to this process.
    Refused,
    /// Something else failed: nothing learned.
    Failed(rustix::io::Errno),
}

fn probe_link(dir: &Dir, mode: LinkMode) -> Result<(), Probe> {
    let probe = dir.open_unnamed().map_err(Probe::Failed)?;
    let name = temp_name(crate::io::random_bits());
    match dir.link_as(mode, &probe, &name) {
        Ok(()) => {
            if let Err(e) = rustix::fs::unlinkat(&dir.fd, name.as_str(), AtFlags::empty()) {
                tracing::warn!(error = %e, file = %name, "cannot remove a temporary file");
            }
            Ok(())
        }
        // ENOENT: `AT_EMPTY_PATH` ignored without the capability (before Linux 6.10), or no
        // `/proc`; unless the directory itself was removed meanwhile.
        Err(rustix::io::Errno::NOENT)
            if rustix::fs::fstat(&dir.fd).is_ok_and(|st| st.st_nlink == 0) =>
        {
            Err(Probe::Failed(rustix::io::Errno::NOENT))
        }
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
            Err(Probe::Refused)
        }
        Err(e) => Err(Probe::Failed(e)),
    }
}

/// A directory beneath a volume root, held open.
pub struct Dir {
    fd: OwnedFd,
}

/// Opens the directory `path` beneath `at`, refusing `..` out of `at` and a symlink anywhere on
/// the way (openat2 where it is allowed, else the same walk in user space: under the shipped
/// systemd unit openat2 is always refused, see [`crate::volumes::beneath`]).
fn open_beneath(at: impl AsFd, path: &str) -> rustix::io::Result<OwnedFd> {
    crate::volumes::beneath::open(
        at,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Symlinks::Refuse,
    )
}

impl Dir {
    /// Opens (with `create`: making missing components) the directory `rel_dir` (`a/b/c`, no
    /// leading slash, already sanitised) beneath `root`. Never follows a symlink.
    pub fn open(root: impl AsFd, rel_dir: &str, create: bool) -> io::Result<Dir> {
        Dir::walk(root.as_fd(), rel_dir, create).map(|(d, _)| d)
    }

    /// [`Dir::open`], also saying which component of `rel_dir` was the first this walk made
    /// (`None`: it made none).
    fn walk(root: BorrowedFd<'_>, rel_dir: &str, create: bool) -> io::Result<(Dir, Option<usize>)> {
        // The whole path in one call when it exists (the usual case).
        let whole = if rel_dir.is_empty() { "." } else { rel_dir };
        match open_beneath(root, whole) {
            Ok(fd) => return Ok((Dir { fd }, None)),
            Err(rustix::io::Errno::NOENT) if create => {}
            Err(e) => return Err(e.into()),
        }
        // Missing components are made one at a time.
        let mut made = None;
        let mut fd = open_beneath(root, ".")?;
        for (i, comp) in crate::text::components(rel_dir).enumerate() {
            fd = match open_beneath(&fd, comp) {
                Ok(next) => next,
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&fd, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {
                            made.get_or_insert(i);
                        }
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_beneath(&fd, comp)?
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok((Dir { fd }, made))
    }

    /// Creates a new unnamed temporary file in this directory (`O_TMPFILE`), if the filesystem
    /// has them and this process can link one into place (see [`link_mode`]); `None` otherwise.
    pub fn temp_unnamed(&self) -> io::Result<Option<File>> {
        if LINK_MODE.load(Ordering::Relaxed) == LINK_NONE {
            return Ok(None);
        }
        let file = match self.open_unnamed() {
            Ok(f) => f,
            // No O_TMPFILE on this filesystem (EOPNOTSUPP; EISDIR and EINVAL from kernels and
            // filesystems that do not know the flag), or another failure: a named file, as
            // everywhere before, whose creation fails the way callers know (a directory removed
            // meanwhile is ENOENT there, and [`TempFile::create`] walks again; O_TMPFILE says
            // EPERM).
            Err(_) => return Ok(None),
        };
        Ok(link_mode(self).map(|_| file))
    }

    fn open_unnamed(&self) -> rustix::io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        Ok(File::from(fd))
    }

    /// Gives the unnamed file `file` the name `to` in this directory (`EEXIST` when it exists).
    fn link(&self, file: &File, to: &str) -> rustix::io::Result<()> {
        match link_mode(self) {
            Some(mode) => self.link_as(mode, file, to),
            None => Err(rustix::io::Errno::NOTSUP),
        }
    }

    /// [`Dir::link`] the way `mode` says.
    fn link_as(&self, mode: LinkMode, file: &File, to: &str) -> rustix::io::Result<()> {
        match mode {
            LinkMode::EmptyPath => rustix::fs::linkat(file, "", &self.fd, to, AtFlags::EMPTY_PATH),
            LinkMode::ProcFd => {
                let path = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    path.as_str(),
                    &self.fd,
                    to,
                    AtFlags::SYMLINK_FOLLOW,
                )
            }
        }
    }

    /// Gives the unnamed file `file` a new temporary name in this directory, and returns it.
    fn link_temp(&self, file: &File) -> io::Result<String> {
        for _ in 0..8 {
            let name = temp_name(crate::io::random_bits());
            match self.link(file, &name) {
                Ok(()) => return Ok(name),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other("cannot pick a temporary file name"))
    }

    /// Creates a new temporary file with a name in this directory.
    pub fn temp(&self) -> io::Result<(String, File)> {
        for _ in 0..8 {
            let name = temp_name(crate::io::random_bits());
            match rustix::fs::openat(
                &self.fd,
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => return Ok((name, File::from(fd))),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other("cannot pick a temporary file name"))
    }

    /// Metadata of `name` in this directory, without following a symlink.
    pub fn stat(&self, name: &str) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Opens the regular file `name` in this directory for reading, without following a
    /// symlink.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        let file = File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        Ok(file)
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Whether `name` in this directory is a regular file (not followed if a symlink).
    pub fn is_file(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
    }

    /// The type of the entry `name` in this directory, not followed if a symlink.
    pub fn entry_type(&self, name: &str) -> io::Result<rustix::fs::FileType> {
        let st = rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(rustix::fs::FileType::from_raw_mode(st.st_mode))
    }

    /// Whether `name` in this directory is a directory (not followed if a symlink).
    pub fn is_dir(&self, name: &str) -> bool {
        rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
    }

    /// The modification time (ns since the epoch) of `name` when it is a regular file (never
    /// following a symlink); `None` for anything else or nothing.
    pub fn file_mtime(&self, name: &str) -> Option<i128> {
        let st = rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
        rustix::fs::FileType::from_raw_mode(st.st_mode)
            .is_file()
            .then(|| i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec))
    }

    /// Renames `from` to `to` only if `to` does not exist (`EEXIST` otherwise; `EINVAL` where the
    /// filesystem has no `RENAME_NOREPLACE`).
    pub fn rename_new(&self, from: &str, to: &str) -> Result<(), rustix::io::Errno> {
        rustix::fs::renameat_with(
            &self.fd,
            from,
            &self.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        )
    }

    /// Renames `from` to `to`, replacing it; says whether `to` was an object (a regular file:
    /// a symlink or other entry something else planted there is no object, as for reads, and
    /// the rename replaces the link itself). A new name is learned from the rename itself
    /// (`RENAME_NOREPLACE`), so it costs no lookup; a name that exists gets one, and so does
    /// every rename on a filesystem without that flag.
    pub fn rename_reporting(&self, from: &str, to: &str) -> io::Result<bool> {
        match self.rename_new(from, to) {
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::EXIST | rustix::io::Errno::INVAL) => {
                // EINVAL: no RENAME_NOREPLACE here (some network and FUSE filesystems).
                let existed = self.is_file(to);
                self.rename(from, to).map(|()| existed)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the file `name` (a directory is `EISDIR`).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Removes the empty directory `name`; a non-empty one stays (`ENOTEMPTY`).
    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }
}

/// Where a temporary file is in its directory.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// A dot-file of this name ([`TEMP_PREFIX`]).
    Named(String),
    /// No name (`O_TMPFILE`): the commit links it into place.
    Unnamed,
    /// Committed, or given up ([`TempFile::abandon`]): nothing to remove.
    Gone,
}

/// A file being written: committed by rename (or link), or removed when dropped uncommitted.
pub struct TempFile {
    dir: Dir,
    entry: Entry,
    file: Option<File>,
    written: u64,
    /// Its mtime was set by [`stamp`] (sealed): the commit keeps it, since the sealed
    /// metadata (and ETag) already went out, to a write-through bucket.
    stamped: bool,
    /// The made directories it uses (see [`Claim`]), released when it is committed or dropped.
    claim: Option<Claim>,
    /// Counts its removal when it is dropped uncommitted (an upload's: the metric
    /// `segd_ingest_temp_removed_total`), once the file is really gone.
    removed: Option<prometheus::IntCounter>,
}

/// Directories made for temporary files that are neither committed nor dropped yet, by volume
/// root (its device and inode) and path beneath it, each with how many such files use it
/// (live in it or below it). The last file of a made directory to go uncommitted removes it
/// when it is empty, whichever file made it: two uploads cut short in a new directory, the one
/// that made it ending first, leave nothing behind (the first found the second's file there).
/// A directory that was there before no upload ever enters the map, and so is never removed
/// by one (a DELETE prunes what it empties, a separate rule).
///
/// No system call runs under the map's lock (a disk that hangs in `mkdirat` or `rmdir` must
/// stall only the uploads to its own volume): a walk makes what is missing, then enters what
/// it made and claims the entries on its path, before its file is created; a release gives its
/// claims back under the lock and then removes, deepest first, the empty directories nobody
/// uses any more. A walk that found such a directory just before it went cannot create its
/// file in it (`ENOENT`: it walks again, making it anew); one that found a directory made by a
/// walk not yet entered takes it as one that was there before (if both uploads then fail, it
/// stays: the narrow case left). Nothing is ever removed that holds a file (`rmdir` of a
/// non-empty directory fails), and the beneath rules of [`Dir`] apply to every step. An
/// unnamed temporary file is in no directory: the one it is to be linked into may go while it
/// is written, and its commit makes it again ([`TempFile::commit_or_remake`]).
static MADE: std::sync::LazyLock<std::sync::Mutex<HashMap<MadeKey, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// A volume root (device, inode) and a directory's path beneath it.
type MadeKey = (u64, u64, String);

fn made_map() -> std::sync::MutexGuard<'static, HashMap<MadeKey, usize>> {
    MADE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The made directories (entries of [`MADE`]) one temporary file uses: the components of
/// `rel_dir` at the indices `comps`, in path order.
struct Claim {
    root: OwnedFd,
    dev: u64,
    ino: u64,
    rel_dir: String,
    comps: Vec<usize>,
}

impl Claim {
    /// Walks to `rel_dir` beneath `root`, making missing components, and claims every made
    /// directory on the way: those this walk made (entered in [`MADE`]) and those other
    /// files' walks made that are still in use. `None` when there is none to claim.
    fn walk(root: BorrowedFd<'_>, rel_dir: &str) -> io::Result<(Dir, Option<Claim>)> {
        let whole = if rel_dir.is_empty() { "." } else { rel_dir };
        // The usual case: the directory exists and no made directory is in use anywhere.
        let found = match open_beneath(root, whole) {
            Ok(fd) => Some(Dir { fd }),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(e.into()),
        };
        let found = match found {
            Some(d) if made_map().is_empty() => return Ok((d, None)),
            other => other,
        };
        // No system call runs under the map's lock: a volume whose disk hangs in `mkdirat` or
        // `rmdir` must not stall the uploads to the others. Directories this walk makes are
        // entered just after; a release that removes one of them meanwhile (empty, unclaimed)
        // makes this file's creation fail with `ENOENT`, and the walk is made again.
        let (dir, made) = match found {
            Some(d) => (d, None),
            None => Dir::walk(root, rel_dir, true)?,
        };
        let st = rustix::fs::fstat(root)?;
        let (dev, ino) = (st.st_dev, st.st_ino);
        let comps_all: Vec<&str> = crate::text::components(rel_dir).collect();
        let mut map = made_map();
        let mut comps = Vec::new();
        for i in 0..comps_all.len() {
            let key = (dev, ino, comps_all[..=i].join("/"));
            let made_here = made.is_some_and(|first| i >= first);
            match map.get_mut(&key) {
                Some(n) => *n += 1,
                None if made_here => {
                    map.insert(key, 1);
                }
                None => continue,
            }
            comps.push(i);
        }
        drop(map);
        if comps.is_empty() {
            return Ok((dir, None));
        }
        let root = match root.try_clone_to_owned() {
            Ok(r) => r,
            Err(e) => {
                // Without a descriptor of the root nothing can be removed later: give the
                // claims back now (the directories then stay, empty, if the file fails).
                Claim::release_entries(dev, ino, &comps_all, &comps);
                return Err(e);
            }
        };
        Ok((
            dir,
            Some(Claim {
                root,
                dev,
                ino,
                rel_dir: rel_dir.to_owned(),
                comps,
            }),
        ))
    }

    /// Gives the claims back; the directories no other file uses any more are removed when
    /// `remove` (the file was not committed) and they are empty, deepest first.
    fn release(self, remove: bool) {
        let comps_all: Vec<&str> = crate::text::components(&self.rel_dir).collect();
        let free = Claim::release_entries(self.dev, self.ino, &comps_all, &self.comps);
        // Outside the map's lock (see `walk`): a walk that finds one of these directories
        // before it goes takes it as one that was there before, and one whose file creation
        // comes after it goes walks again.
        if remove {
            for depth in free.into_iter().rev() {
                let Ok(parent) = Dir::open(&self.root, &comps_all[..depth].join("/"), false) else {
                    break;
                };
                if parent.rmdir(comps_all[depth]).is_err() {
                    break;
                }
            }
        }
    }

    fn release_entries(dev: u64, ino: u64, comps_all: &[&str], comps: &[usize]) -> Vec<usize> {
        Claim::release_entries_in(&mut made_map(), dev, ino, comps_all, comps)
    }

    /// Decrements the entries of `comps`; returns those no file uses any more (removed from
    /// the map), in path order.
    fn release_entries_in(
        map: &mut HashMap<MadeKey, usize>,
        dev: u64,
        ino: u64,
        comps_all: &[&str],
        comps: &[usize],
    ) -> Vec<usize> {
        let mut free = Vec::new();
        for &i in comps {
            let key = (dev, ino, comps_all[..=i].join("/"));
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                    free.push(i);
                }
            }
        }
        free
    }
}

/// How many times [`TempFile::create`] walks to its directory again after finding it removed.
const REMOVED_DIR_RETRIES: usize = 8;

impl TempFile {
    /// A new temporary file with a name in `dir`.
    pub fn new(dir: Dir) -> io::Result<TempFile> {
        let (name, file) = dir.temp()?;
        Ok(TempFile::with(dir, Entry::Named(name), file))
    }

    /// A new unnamed temporary file in `dir` where the filesystem and this process allow one
    /// (see the module doc), else a named one.
    pub fn new_unnamed(dir: Dir) -> io::Result<TempFile> {
        match dir.temp_unnamed()? {
            Some(file) => Ok(TempFile::with(dir, Entry::Unnamed, file)),
            None => TempFile::new(dir),
        }
    }

    fn with(dir: Dir, entry: Entry, file: File) -> TempFile {
        TempFile {
            dir,
            entry,
            file: Some(file),
            written: 0,
            stamped: false,
            claim: None,
            removed: None,
        }
    }

    /// Whether the file has no name (see [`TempFile::new_unnamed`]).
    pub fn is_unnamed(&self) -> bool {
        self.entry == Entry::Unnamed
    }

    /// Counts this file's removal in `c` should it be dropped uncommitted.
    pub fn count_removal(&mut self, c: prometheus::IntCounter) {
        self.removed = Some(c);
    }

    /// A new temporary file in the directory `rel_dir` beneath `root`, making missing
    /// directories; `check` looks at the directory first and may refuse it. A DELETE removes
    /// the directories it leaves empty (and the last file of a made directory to fail, see
    /// [`MADE`]), and may remove this one between the walk and the file's creation: nothing
    /// can be created in a removed directory (`ENOENT`, from `mkdirat` or `openat`), so the
    /// walk is made again (making the directory anew), a few times.
    /// `unnamed`: an unnamed file where there can be one ([`TempFile::new_unnamed`]).
    pub fn create(
        root: impl AsFd,
        rel_dir: &str,
        unnamed: bool,
        check: impl Fn(&Dir) -> io::Result<()>,
    ) -> io::Result<TempFile> {
        let mut retries = 0;
        loop {
            let mut claim = None;
            let temp = Claim::walk(root.as_fd(), rel_dir).and_then(|(d, c)| {
                claim = c;
                check(&d)?;
                match unnamed {
                    true => TempFile::new_unnamed(d),
                    false => TempFile::new(d),
                }
            });
            match temp {
                Ok(mut t) => {
                    t.claim = claim;
                    return Ok(t);
                }
                Err(e) => {
                    // What this walk made goes again, unless another file uses it.
                    if let Some(c) = claim {
                        c.release(true);
                    }
                    if e.raw_os_error() == Some(libc::ENOENT) && retries < REMOVED_DIR_RETRIES {
                        retries += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// A second descriptor of the file, for readers of an object still being written.
    pub fn reader(&self) -> io::Result<File> {
        self.file.as_ref().ok_or_else(closed)?.try_clone()
    }

    /// The directory the file will be committed in.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Appends `data` (a blocking write: call it off the request threads).
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let f = self.file.as_mut().ok_or_else(closed)?;
        f.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// The complete file before its commit: flushed to disk when `durable`, with its metadata
    /// (the validators it will be served with: a rename keeps them) and a descriptor to read it
    /// with (positioned reads only: it shares the writer's offset).
    pub fn seal(&mut self, durable: bool) -> io::Result<(rustix::fs::Stat, File)> {
        let f = self.file.as_ref().ok_or_else(closed)?;
        stamp(f)?;
        self.stamped = true;
        if durable {
            f.sync_all()?;
        }
        Ok((rustix::fs::fstat(f)?, f.try_clone()?))
    }

    /// Appends `chunks` in order with as few `writev` calls as the kernel allows (blocking: call
    /// it off the request threads).
    pub fn write_chunks(&mut self, chunks: &[bytes::Bytes]) -> io::Result<()> {
        let f = self.file.as_mut().ok_or_else(closed)?;
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        // IOV_MAX is 1024 on Linux: larger lists go in groups.
        for group in chunks.chunks(1024) {
            let mut slices: Vec<io::IoSlice<'_>> =
                group.iter().map(|c| io::IoSlice::new(c)).collect();
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match f.write_vectored(rest) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.written += total as u64;
        Ok(())
    }

    /// Appends everything in `pipe` (blocking: call it off the request threads).
    pub fn write_pipe(&mut self, pipe: &mut crate::io::pipe::Pipe) -> io::Result<()> {
        let f = self.file.as_mut().ok_or_else(closed)?;
        let len = pipe.len();
        pipe.drain_into(f)?;
        self.written += len as u64;
        Ok(())
    }

    /// Renames the file to `target` unless `target` exists (then the file is dropped and `None`
    /// returned): for immutable objects another writer (another process sharing the directory
    /// during an upgrade) may have put in place first, and replacing it would cut off whoever is
    /// being sent the first copy (the zero-copy contract resets a response whose file is
    /// replaced).
    pub fn commit_new(mut self, target: &str) -> io::Result<Option<rustix::fs::Stat>> {
        let file = self.file.take().ok_or_else(closed)?;
        let st = rustix::fs::fstat(&file)?;
        let placed = match &self.entry {
            Entry::Unnamed => self.dir.link(&file, target),
            Entry::Named(name) => {
                drop(file);
                self.dir.rename_new(name, target)
            }
            Entry::Gone => return Err(closed()),
        };
        match placed {
            Ok(()) => {
                self.entry = Entry::Gone;
                Ok(Some(st))
            }
            // Dropping `self` removes the temporary file. A directory in the way is no copy.
            Err(rustix::io::Errno::EXIST) => match self.dir.is_file(target) {
                true => Ok(None),
                false => Err(rustix::io::Errno::ISDIR.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `target` is a regular file in this file's directory now (the commit would
    /// replace it).
    pub fn target_exists(&self, target: &str) -> bool {
        self.dir.is_file(target)
    }

    /// Renames the file to `target` in its directory (after an fsync of the file, and followed by
    /// one of the directory, when `durable`). Returns whether `target` existed (and was
    /// replaced), and the new file's metadata.
    pub fn commit(self, target: &str, durable: bool) -> io::Result<(bool, rustix::fs::Stat)> {
        self.commit_or_remake(target, durable, || Err(io::ErrorKind::NotFound.into()))
    }

    /// [`TempFile::commit`]; an unnamed file whose directory is gone (`ENOENT`) is linked into
    /// the directory `remake` walks to and makes again. Nothing held the directory while the
    /// file was written (a named file kept it from being removed: `rmdir` of a directory that
    /// holds one fails), so a DELETE that emptied it, or another upload that made it and
    /// failed, may have removed it meanwhile.
    pub fn commit_or_remake(
        mut self,
        target: &str,
        durable: bool,
        remake: impl FnOnce() -> io::Result<Dir>,
    ) -> io::Result<(bool, rustix::fs::Stat)> {
        let file = self.file.take().ok_or_else(closed)?;
        if !self.stamped {
            stamp(&file)?;
        }
        if durable {
            file.sync_all()?;
        }
        let st = rustix::fs::fstat(&file)?;
        let existed = match &self.entry {
            Entry::Unnamed => {
                let mut linked = self.dir.link(&file, target);
                if linked == Err(rustix::io::Errno::NOENT) {
                    self.dir = remake()?;
                    linked = self.dir.link(&file, target);
                }
                match linked {
                    Ok(()) => false,
                    Err(rustix::io::Errno::EXIST) => {
                        // A replace: linked under a temporary name, which is renamed over the old
                        // object (removed by the drop should the rename fail).
                        let name = self.dir.link_temp(&file)?;
                        drop(file);
                        self.entry = Entry::Named(name.clone());
                        let existed = self.dir.is_file(target);
                        self.dir.rename(&name, target)?;
                        existed
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Entry::Named(name) => {
                drop(file);
                self.dir.rename_reporting(name, target)?
            }
            Entry::Gone => return Err(closed()),
        };
        // Committed: nothing to remove any more.
        self.entry = Entry::Gone;
        if durable {
            self.dir.sync()?;
        }
        Ok((existed, st))
    }
}

/// The error for a use of a [`TempFile`] whose file was already closed (committed).
fn closed() -> io::Error {
    io::Error::other("temporary file already closed")
}

/// Sets a finished file's mtime to the realtime clock's nanoseconds. The kernel stamps writes
/// with its coarse clock (one tick, milliseconds), and the ETag is length and mtime: two
/// versions of one length written in one tick, on one node or on two nodes of a cluster, would
/// share an ETag.
fn stamp(f: &File) -> io::Result<()> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: now,
    };
    rustix::fs::futimens(f, &times)?;
    Ok(())
}

impl TempFile {
    /// Gives the file up without removing it now: the disk of `volume` does not answer, and an
    /// unlink would wait as long (see [`crate::volumes::Volume::enter`]). The volume removes
    /// it once its disk answers again; it has a temporary name meanwhile, never served, and a
    /// restart removes it too.
    pub fn abandon(mut self, volume: &crate::volumes::Volume) {
        match std::mem::replace(&mut self.entry, Entry::Gone) {
            Entry::Named(name) => {
                self.file = None;
                match self.dir.fd.try_clone() {
                    Ok(dir) => volume.abandon(crate::volumes::Abandoned::Named(dir, name)),
                    Err(e) => {
                        tracing::warn!(error = %e, file = %name, "cannot keep a temporary file to remove later; a restart removes it")
                    }
                }
            }
            // Its last close frees it, which may wait on the disk like an unlink: kept open
            // until the disk answers.
            Entry::Unnamed => {
                if let Some(f) = self.file.take() {
                    volume.abandon(crate::volumes::Abandoned::Unnamed(f));
                }
            }
            Entry::Gone => {}
        }
        // The drop sees a file that is not to be removed (gone): made directories stay.
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let uncommitted = self.entry != Entry::Gone;
        self.file = None;
        let removed = match std::mem::replace(&mut self.entry, Entry::Gone) {
            Entry::Named(name) => match self.dir.unlink(&name) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, file = %name, "cannot remove a temporary file");
                    false
                }
            },
            // Closed above: freed.
            Entry::Unnamed => true,
            Entry::Gone => false,
        };
        if let (true, Some(c)) = (removed, &self.removed) {
            c.inc();
        }
        // The made directories it used: removed when it was the last to use them and was not
        // committed, if empty.
        if let Some(c) = self.claim.take() {
            c.release(uncommitted);
        }
    }
}

/// Removes the components of `rel_dir` beneath `root` from the deepest up to the one at index
/// `first`, each only if empty; stops at the first that stays (not empty, or gone).
pub fn remove_empty(root: BorrowedFd<'_>, rel_dir: &str, first: usize) {
    let comps: Vec<&str> = crate::text::components(rel_dir).collect();
    for depth in (first..comps.len()).rev() {
        let Ok(parent) = Dir::open(root, &comps[..depth].join("/"), false) else {
            return;
        };
        if parent.rmdir(comps[depth]).is_err() {
            return;
        }
    }
}

/// `TEMP_PREFIX`, this run's id and 16 hex digits of `bits`, in a string allocated once at its
/// final size.
pub(crate) fn temp_name(bits: u64) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(TEMP_PREFIX.len() + 33);
    name.push_str(TEMP_PREFIX);
    let _ = write!(name, "{:016x}-{bits:016x}", run_id());
    name
}

/// Removes temporary files earlier runs left under `dir` (recursively), never this run's own
/// (uploads in progress); returns how many.
pub fn remove_stale_temps(dir: &std::path::Path) -> u64 {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && is_stale_temp(&e.file_name().to_string_lossy()) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) => {
                        tracing::warn!(error = %err, path = %e.path().display(), "cannot remove a stale temporary file")
                    }
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor of a test's volume root.
    fn open_root(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("root")
    }

    #[test]
    fn temp_names_are_the_prefix_the_run_and_sixteen_hex_digits() {
        let run = run_id();
        for bits in [0, 1, 0xfedc_ba98_7654_3210, u64::MAX] {
            let name = temp_name(bits);
            assert_eq!(name, format!("{TEMP_PREFIX}{run:016x}-{bits:016x}"));
            assert!(!is_stale_temp(&name), "this run's own: {name}");
        }
        // Another run's (an older segd's names had no run id), and a crash's leftovers.
        for other in [
            format!("{TEMP_PREFIX}{:016x}-0000000000000001", run.wrapping_add(1)),
            format!("{TEMP_PREFIX}{:016x}", 7),
            format!("{TEMP_PREFIX}abc123"),
        ] {
            assert!(is_stale_temp(&other), "{other}");
        }
        assert!(!is_stale_temp("seg1.ts"));
    }

    /// The start-up clean-up runs while this process already takes uploads: it removes what
    /// earlier runs left and never a temporary file of this run (an upload in progress, which
    /// would then fail to commit).
    #[test]
    fn the_clean_up_leaves_this_runs_uploads_in_progress() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        let dir = Dir::open(&rootfd, "live/s1", true).expect("mkdir -p");
        let mut t = TempFile::new(dir).expect("temp");
        t.write_all(b"half").expect("write");
        let left = root.path().join("live/s1/.segd-tmp-00000000deadbeef");
        std::fs::write(&left, b"a crash's").expect("write");
        assert_eq!(remove_stale_temps(&root.path().join("live")), 1);
        assert!(!left.exists());
        t.write_all(b" and the rest").expect("write");
        t.commit("seg1.m4s", false)
            .expect("commit after the clean-up");
        assert_eq!(
            std::fs::read(root.path().join("live/s1/seg1.m4s")).expect("read"),
            b"half and the rest"
        );
    }

    #[test]
    fn commit_renames_and_drop_removes() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        let dir = Dir::open(&rootfd, "a/b", true).expect("mkdir -p");
        let mut t = TempFile::new(dir).expect("temp");
        t.write_all(b"hello").expect("write");
        t.commit("x.ts", true).expect("commit");
        assert_eq!(
            std::fs::read(root.path().join("a/b/x.ts")).expect("read"),
            b"hello"
        );
        let dir = Dir::open(&rootfd, "a/b", false).expect("open");
        let mut t = TempFile::new(dir).expect("temp");
        t.write_all(b"partial").expect("write");
        drop(t);
        let names: Vec<_> = std::fs::read_dir(root.path().join("a/b"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.ts")]);
    }

    /// The names in `dir`, sorted.
    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn unnamed_files_are_linked_into_place_and_leave_nothing_when_dropped() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        let d = root.path().join("a/b");
        let mut t = TempFile::new_unnamed(Dir::open(&rootfd, "a/b", true).expect("mkdir -p"))
            .expect("temp");
        if !t.is_unnamed() {
            eprintln!("skipped: no O_TMPFILE for {}", root.path().display());
            return;
        }
        t.write_all(b"first").expect("write");
        assert!(names(&d).is_empty(), "no name before the commit");
        let (existed, st) = t.commit("x.ts", false).expect("commit");
        assert!(!existed);
        assert_eq!(st.st_size, 5);
        assert_eq!(std::fs::read(d.join("x.ts")).expect("read"), b"first");
        // A replace: linked under a temporary name, renamed over the old object.
        let mut t =
            TempFile::new_unnamed(Dir::open(&rootfd, "a/b", false).expect("open")).expect("temp");
        t.write_all(b"second").expect("write");
        let (existed, _) = t.commit("x.ts", true).expect("commit");
        assert!(existed);
        assert_eq!(std::fs::read(d.join("x.ts")).expect("read"), b"second");
        assert_eq!(names(&d), ["x.ts"]);
        // Create-only: the object that is there stays.
        let mut t =
            TempFile::new_unnamed(Dir::open(&rootfd, "a/b", false).expect("open")).expect("temp");
        t.write_all(b"third").expect("write");
        assert!(t.commit_new("x.ts").expect("commit_new").is_none());
        assert_eq!(std::fs::read(d.join("x.ts")).expect("read"), b"second");
        let mut t =
            TempFile::new_unnamed(Dir::open(&rootfd, "a/b", false).expect("open")).expect("temp");
        t.write_all(b"new").expect("write");
        assert!(t.commit_new("y.ts").expect("commit_new").is_some());
        assert_eq!(std::fs::read(d.join("y.ts")).expect("read"), b"new");
        // A directory in the way: refused, nothing left.
        std::fs::create_dir(d.join("z.ts")).expect("mkdir");
        let t =
            TempFile::new_unnamed(Dir::open(&rootfd, "a/b", false).expect("open")).expect("temp");
        assert!(t.commit("z.ts", false).is_err());
        // Dropped uncommitted, counted as removed.
        let c = prometheus::IntCounter::new("removed", "removed").expect("counter");
        let mut t =
            TempFile::new_unnamed(Dir::open(&rootfd, "a/b", false).expect("open")).expect("temp");
        t.count_removal(c.clone());
        t.write_all(b"partial").expect("write");
        drop(t);
        assert_eq!(c.get(), 1);
        assert_eq!(names(&d), ["x.ts", "y.ts", "z.ts"]);
    }

    #[test]
    fn an_unnamed_file_whose_directory_went_is_linked_into_it_made_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        let open = || Dir::open(&rootfd, "a/b", true);
        let mut t = TempFile::new_unnamed(open().expect("mkdir -p")).expect("temp");
        if !t.is_unnamed() {
            eprintln!("skipped: no O_TMPFILE for {}", root.path().display());
            return;
        }
        t.write_all(b"kept").expect("write");
        // Nothing holds the directory: a DELETE's pruning removes it.
        std::fs::remove_dir(root.path().join("a/b")).expect("rmdir");
        std::fs::remove_dir(root.path().join("a")).expect("rmdir");
        let (existed, _) = t.commit_or_remake("x.ts", true, open).expect("commit");
        assert!(!existed);
        assert_eq!(
            std::fs::read(root.path().join("a/b/x.ts")).expect("read"),
            b"kept"
        );
        // Without a way to make it again: the commit fails, nothing is left.
        let mut t = TempFile::new_unnamed(open().expect("mkdir -p")).expect("temp");
        t.write_all(b"lost").expect("write");
        std::fs::remove_file(root.path().join("a/b/x.ts")).expect("rm");
        std::fs::remove_dir(root.path().join("a/b")).expect("rmdir");
        let e = t.commit("x.ts", false).expect_err("no directory");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(!root.path().join("a/b").exists());
    }

    #[test]
    fn symlinks_never_lead_a_write_outside() {
        let outside = tempfile::tempdir().expect("tempdir");
        let root = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("live")).expect("symlink");
        let rootfd = open_root(root.path());
        assert!(Dir::open(&rootfd, "live/show", true).is_err());
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("ls").count(),
            0,
            "nothing created outside"
        );
        // A path that exists all the way (opened in one call): a symlink at its end or in its
        // middle is refused too, with or without `create`.
        std::fs::create_dir_all(outside.path().join("deep")).expect("mkdir outside");
        std::fs::create_dir_all(root.path().join("vod/a")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("vod/a/out")).expect("symlink");
        for create in [false, true] {
            assert!(Dir::open(&rootfd, "vod/a/out", create).is_err());
            assert!(Dir::open(&rootfd, "vod/a/out/deep", create).is_err());
            assert!(Dir::open(&rootfd, "vod/a/out/deep/new", create).is_err());
        }
        // A symlink that stays beneath the root is not followed either.
        std::fs::create_dir_all(root.path().join("vod/b/c")).expect("mkdir");
        std::os::unix::fs::symlink("../b", root.path().join("vod/a/in")).expect("symlink");
        for create in [false, true] {
            assert!(Dir::open(&rootfd, "vod/a/in", create).is_err());
            assert!(Dir::open(&rootfd, "vod/a/in/c", create).is_err());
        }
        assert!(Dir::open(&rootfd, "vod/a", false).is_ok());
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("ls").count(),
            1,
            "nothing created outside"
        );
    }

    /// A DELETE prunes the directories it leaves empty; one may go between the walk to an
    /// upload's directory and the creation of its temporary file (the `check` here removes
    /// it at that moment, as the DELETE would): the upload makes it anew and gets its file.
    #[test]
    fn a_directory_pruned_under_an_upload_is_made_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        std::fs::create_dir_all(root.path().join("live/show/a")).expect("mkdir");
        let pruned = std::cell::Cell::new(0);
        let t = TempFile::create(&rootfd, "live/show/a", false, |_| {
            if pruned.get() < 2 {
                pruned.set(pruned.get() + 1);
                std::fs::remove_dir(root.path().join("live/show/a")).expect("rmdir a");
                std::fs::remove_dir(root.path().join("live/show")).expect("rmdir show");
            }
            Ok(())
        })
        .expect("a temporary file despite the pruning");
        assert_eq!(pruned.get(), 2);
        t.commit("x.ts", false).expect("commit");
        assert!(root.path().join("live/show/a/x.ts").is_file());
    }

    /// Two files in a new directory, the one that made it dropped first: the last to go
    /// removes it (it used to stay, empty: acceptance F7). A directory that was there before
    /// stays; one that holds a committed file stays.
    #[test]
    fn the_last_file_of_a_made_directory_removes_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        std::fs::create_dir_all(root.path().join("live/old")).expect("mkdir");
        for (first, second) in [("live/new/a", "live/new/a"), ("live/new/a", "live/new/b/c")] {
            let a = TempFile::create(&rootfd, first, false, |_| Ok(())).expect("temp a");
            let b = TempFile::create(&rootfd, second, false, |_| Ok(())).expect("temp b");
            drop(a);
            assert!(root.path().join(second).is_dir(), "b still uses it");
            drop(b);
            assert!(!root.path().join("live/new").exists(), "{first} {second}");
            assert!(root.path().join("live/old").is_dir());
        }
        // The other order, and a file committed by one of them.
        let a = TempFile::create(&rootfd, "live/new/a", false, |_| Ok(())).expect("temp a");
        let b = TempFile::create(&rootfd, "live/new/a", false, |_| Ok(())).expect("temp b");
        drop(b);
        drop(a);
        assert!(!root.path().join("live/new").exists());
        let a = TempFile::create(&rootfd, "live/new/a", false, |_| Ok(())).expect("temp a");
        let b = TempFile::create(&rootfd, "live/new/a", false, |_| Ok(())).expect("temp b");
        b.commit("x.ts", false).expect("commit");
        drop(a);
        assert!(root.path().join("live/new/a/x.ts").is_file());
        // Files in a directory that was there before never remove it.
        let a = TempFile::create(&rootfd, "live/old", false, |_| Ok(())).expect("temp a");
        drop(a);
        assert!(root.path().join("live/old").is_dir());
        assert!(made_map()
            .keys()
            .all(|k| k.0 != rustix::fs::fstat(&rootfd).expect("stat").st_dev
                || k.1 != rustix::fs::fstat(&rootfd).expect("stat").st_ino));
    }

    /// A temporary file dropped uncommitted takes the directories made for it along, when
    /// they are still empty; directories that were there before, or that another file was put
    /// in meanwhile, stay.
    #[test]
    fn an_abandoned_upload_removes_the_directories_it_made() {
        let root = tempfile::tempdir().expect("tempdir");
        let rootfd = open_root(root.path());
        std::fs::create_dir_all(root.path().join("live")).expect("mkdir");
        let mut t = TempFile::create(&rootfd, "live/new/a/b", false, |_| Ok(())).expect("temp");
        t.write_all(b"partial").expect("write");
        drop(t);
        assert!(root.path().join("live").is_dir(), "there before: kept");
        assert!(
            !root.path().join("live/new").exists(),
            "made for it: removed"
        );

        // Another file in a made directory keeps it (and those above it).
        let t = TempFile::create(&rootfd, "live/new/a/b", false, |_| Ok(())).expect("temp");
        std::fs::write(root.path().join("live/new/a/other.ts"), b"x").expect("write");
        drop(t);
        assert!(!root.path().join("live/new/a/b").exists());
        assert!(root.path().join("live/new/a/other.ts").is_file());

        // A refused one (the check) too; a committed one keeps them.
        let r = TempFile::create(&rootfd, "live/z/y", false, |_| {
            Err(io::Error::from_raw_os_error(libc::EISDIR))
        });
        assert!(r.is_err());
        assert!(!root.path().join("live/z").exists());
        let t = TempFile::create(&rootfd, "live/c/d", false, |_| Ok(())).expect("temp");
        t.commit("x.ts", false).expect("commit");
        assert!(root.path().join("live/c/d/x.ts").is_file());
    }
}
