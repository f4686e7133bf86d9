//! Writes made while a volume was down, settled when it is back.
//!
//! An upload that replaces `rel`, or a DELETE of it, while the volume holding its copy is
//! unhealthy cannot touch that copy: the new object goes to a healthy volume (or the copy there
//! is removed) and the old copy waits on the volume that was down. Once that volume answers
//! again, the old copy would be served again: lookups try the volume that last served the
//! asset, then the placement volume, and after a restart that is the old one.
//!
//! - **At the write** (under the path's lock, on the blocking pool): for each volume down, a
//!   line goes into a journal at the root of a healthy volume (`.segd-outage`, a dot-file the
//!   read side never serves): the volume, when, `put` or `delete`, and the path
//!   (percent-encoded, as `sanitize` reads it back). An upload about to create its object
//!   writes the line before its rename, synced when the upload is durable (`[ingest] fsync`),
//!   so a crash after the rename cannot lose it (a line whose rename never happened settles to
//!   what is there). After the rename it removes older copies from the other healthy volumes
//!   (one that came back during the upload). A DELETE removes every healthy copy, then
//!   journals.
//! - **When a volume is healthy again** (the periodic check or a request's probe found it) and
//!   at start-up, before the first request: each line naming a volume that is healthy now is
//!   settled under the path's lock. Of the regular-file copies on healthy volumes the newest
//!   stays (after a `delete`, only one made after it) and the others are unlinked; the line
//!   leaves the journal. Lines naming a volume not configured now stay (a reload may bring it
//!   back).
//!
//! Appends and the journal's rewrite hold an exclusive `flock` on it (several processes share
//! it during an upgrade); an appender that finds the name moved to a new file appends there.
//! Only complete lines (ending in a newline) are read. A journal stops growing at 16 MiB (said
//! in the log); a write not journaled leaves the old copy until the next replace or DELETE.
//! A replace in place journals nothing: it found the object on a healthy volume, so any copy on
//! a down volume is older and was journaled when the object moved.

use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

use super::local::Local;
use super::upload::PathLocks;
use super::write::Dir;
use crate::volumes::{self, RelPath, Volumes};

/// The journal's name at a volume's root.
const JOURNAL: &str = ".segd-outage";

/// A journal stops growing at this size (some 150,000 writes: a long outage on a busy ingest
/// node); later writes are not journaled, said in the log.
const MAX_JOURNAL_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    Put,
    Delete,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Put => "put",
            Change::Delete => "delete",
        }
    }
}

/// Whether some served volume is down now. Cheap: one atomic load per volume.
pub fn needed(vols: &Volumes) -> bool {
    vols.served().any(|(_, v)| !v.is_healthy())
}

/// After an upload created `rel` on volume `on` while a volume was (or had been) down
/// (blocking, under the path's lock): older copies on the other healthy volumes go, and, unless
/// the upload `journaled` before its rename, the volumes down now get a journal line.
pub fn created(local: &Local, on: usize, rel: &RelPath, journaled: bool) {
    let vols = &local.volumes;
    let (dir, name) = split(rel);
    let mut removed = false;
    for (i, v) in vols.served() {
        if i == on || !v.is_healthy() {
            continue;
        }
        let gone = v.with_root(|root| {
            let d = Dir::open(root, dir, false)?;
            match d.file_mtime(name) {
                Some(_) => d.unlink(name).map(|()| true),
                None => Ok(false),
            }
        });
        if let Some(Ok(true)) = gone {
            removed = true;
            tracing::info!(path = %rel, volume = %v.name, "removed a copy the upload replaced on another volume");
        }
    }
    if removed {
        local.forget(rel);
    }
    if !journaled {
        note(vols, Some(on), rel, Change::Put, false);
    }
}

/// Journals `change` of `rel` for every served volume that is down now, on `on` if healthy,
/// else the first healthy volume (blocking; synced to disk when `durable`). Errors are logged:
/// the write itself stands.
pub fn note(vols: &Volumes, on: Option<usize>, rel: &RelPath, change: Change, durable: bool) {
    let down: Vec<&str> = vols
        .served()
        .filter(|(_, v)| !v.is_healthy())
        .map(|(_, v)| v.name.as_str())
        .collect();
    if down.is_empty() {
        return;
    }
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = rel.encoded();
    let mut lines = String::new();
    for d in &down {
        lines.push_str(&format!("{d}\t{ns}\t{}\t{path}\n", change.as_str()));
    }
    let healthy = |i: usize| vols.get(i).is_some_and(volumes::Volume::is_healthy);
    let target = on
        .filter(|&i| healthy(i))
        .or_else(|| vols.served().find(|(_, v)| v.is_healthy()).map(|(i, _)| i));
    let appended = target
        .and_then(|i| vols.get(i))
        .and_then(|v| v.with_root(|root| append(root, lines.as_bytes(), durable)));
    match appended {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            tracing::warn!(path = %rel, max_bytes = MAX_JOURNAL_BYTES, "the outage journal is full: this write's old copy on the volume that is down may be served again when it is back")
        }
        Some(Err(e)) => {
            tracing::warn!(path = %rel, error = %e, "cannot journal a write made while a volume is down; its old copy may be served when the volume is back")
        }
        None => {
            tracing::warn!(path = %rel, "no healthy volume to journal a write made while a volume is down")
        }
    }
}

/// The journal at `root`, opened with `flags` and locked (exclusive), as the name is now: a
/// rewrite may have renamed a new file over the one opened.
fn open_locked(root: BorrowedFd<'_>, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    loop {
        let fd = rustix::fs::openat(
            root,
            JOURNAL,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
        let held = rustix::fs::fstat(&fd)?;
        match rustix::fs::statat(root, JOURNAL, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => return Ok(fd),
            // Replaced (or removed) while we waited for the lock: open the name again.
            Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Appends `bytes` (whole lines) to the journal (and syncs it when `durable`); false when it is
/// full.
fn append(root: BorrowedFd<'_>, bytes: &[u8], durable: bool) -> io::Result<bool> {
    let fd = open_locked(root, OFlags::RDWR | OFlags::APPEND | OFlags::CREATE)?;
    let size = rustix::fs::fstat(&fd)?.st_size as u64;
    if size >= MAX_JOURNAL_BYTES {
        return Ok(false);
    }
    let f = std::fs::File::from(fd);
    // A line cut short (a crash, a full disk) is ended first, so this one stays whole.
    let mut last = [0u8; 1];
    if size > 0 && f.read_at(&mut last, size - 1)? == 1 && last[0] != b'\n' {
        (&f).write_all(b"\n")?;
    }
    (&f).write_all(bytes)?;
    if durable {
        f.sync_data()?;
        if size == 0 {
            // A new journal: its name must survive a crash too.
            rustix::fs::fsync(root)?;
        }
    }
    Ok(true)
}

/// One journal line.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    volume: String,
    ns: u128,
    change: Change,
    /// Percent-encoded, with its leading `/`.
    path: String,
}

fn parse(line: &str) -> Option<Line> {
    let mut f = line.splitn(4, '\t');
    let volume = f.next()?.to_owned();
    let ns = f.next()?.parse().ok()?;
    let change = match f.next()? {
        "put" => Change::Put,
        "delete" => Change::Delete,
        _ => return None,
    };
    let path = f.next()?.to_owned();
    Some(Line {
        volume,
        ns,
        change,
        path,
    })
}

/// The complete lines of a journal (each ended by a newline; a last one cut short is left out).
fn complete_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    lines.pop(); // after the last newline: empty, or a line cut short
    lines
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

fn read_all(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::from(fd.try_clone()?).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Settles every journal line whose volume is healthy now (blocking; call it on the blocking
/// pool, where a runtime handle is current, to take the paths' locks); returns how many copies
/// it removed.
pub fn settle(local: &Local, locks: &PathLocks) -> (u64, bool) {
    let vols = &local.volumes;
    let mut removed = 0;
    // Lines of a volume that is back, left for a later try (a removal that failed).
    let mut left = false;
    for (_, w) in vols.served() {
        if !w.is_healthy() {
            continue;
        }
        // 1. The lines to settle, read under the lock, which is then let go: settling takes
        // the paths' locks, and an upload holding one may be waiting to append here.
        let read = w.with_root(|root| -> io::Result<Vec<String>> {
            match open_locked(root, OFlags::RDONLY) {
                Ok(fd) => Ok(complete_lines(&read_all(&fd)?)),
                Err(rustix::io::Errno::NOENT) => Ok(Vec::new()),
                Err(e) => Err(e.into()),
            }
        });
        let lines = match read {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                tracing::warn!(volume = %w.name, error = %e, "cannot read the outage journal");
                continue;
            }
            None => continue,
        };
        // 2. Each line whose volume is back, under its path's lock.
        let mut settled = Vec::new();
        for raw in lines {
            let Some(line) = parse(&raw) else {
                tracing::warn!(volume = %w.name, line = %raw, "unreadable line in the outage journal; dropped");
                settled.push(raw);
                continue;
            };
            let back = vols
                .served()
                .any(|(_, d)| d.name == line.volume && d.is_healthy());
            if back && !deferred().contains(&raw) {
                // A line stays until the removals it calls for are on disk.
                match settle_line(local, locks, &line) {
                    Settle::Done(n) => {
                        removed += n;
                        settled.push(raw);
                    }
                    Settle::Retry => left = true,
                    Settle::AtNextStart => {
                        deferred().insert(raw);
                    }
                }
            }
        }
        if settled.is_empty() {
            continue;
        }
        // 3. The settled lines leave the journal; lines appended meanwhile stay.
        if let Some(Err(e)) = w.with_root(|root| drop_lines(root, &settled)) {
            tracing::warn!(volume = %w.name, error = %e, "cannot rewrite the outage journal; its lines are settled again later");
        }
    }
    (removed, left)
}

/// Rewrites the journal without `settled` (each removed once), under its lock.
fn drop_lines(root: BorrowedFd<'_>, settled: &[String]) -> io::Result<()> {
    let fd = match open_locked(root, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut gone: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in settled {
        *gone.entry(l.as_str()).or_default() += 1;
    }
    let mut kept = String::new();
    for l in complete_lines(&read_all(&fd)?) {
        match gone.get_mut(l.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                kept.push_str(&l);
                kept.push('\n');
            }
        }
    }
    if kept.is_empty() {
        rustix::fs::unlinkat(root, JOURNAL, AtFlags::empty())?;
        return Ok(());
    }
    // A name of this process's own: during an upgrade two processes may rewrite in turn.
    let temp = format!(".segd-outage.{}.tmp", std::process::id());
    let tfd = rustix::fs::openat(
        root,
        temp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let tf = std::fs::File::from(tfd);
    (&tf).write_all(kept.as_bytes())?;
    // The lines kept must not be lost to a crash just after the rename.
    tf.sync_data()?;
    rustix::fs::renameat(root, temp.as_str(), root, JOURNAL)?;
    // The lock goes with `fd`, after the rename: appenders waiting on the old file find the new.
    drop(fd);
    Ok(())
}

fn split(rel: &RelPath) -> (&str, &str) {
    match rel.as_str().rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", rel.as_str()),
    }
}

/// Of the regular-file copies of the line's path on healthy volumes, keeps the newest (after a
/// `delete`, only one made after it; a copy dated ahead of the clock is the oldest) and unlinks
/// the others, under the path's lock; returns how
/// many it unlinked.
/// What became of a journal line.
enum Settle {
    /// Its removals are on disk (this many): it leaves the journal.
    Done(u64),
    /// A removal failed (an immutable file, a permission): tried again later.
    Retry,
    /// A removal met a device error: what this process sees of that disk may be what its
    /// memory kept (an unlink that reached the page cache only looks done), so the line stays
    /// for the next start, which looks at the disk as it is then.
    AtNextStart,
}

/// Journal lines this process leaves to the next start ([`Settle::AtNextStart`]).
fn deferred() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static DEFERRED: std::sync::OnceLock<Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    DEFERRED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn settle_line(local: &Local, locks: &PathLocks, line: &Line) -> Settle {
    let Ok(rel) = volumes::sanitize(&line.path) else {
        tracing::warn!(path = %line.path, "outage journal line names no valid path; dropped");
        return Settle::Done(0);
    };
    let _lock = match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(locks.lock_quietly(&rel)),
        Err(_) => return Settle::Retry,
    };
    let vols = &local.volumes;
    let (dir, name) = split(&rel);
    // A modification time ahead of the clock (written while the clock ran ahead, and stepped
    // back since; copied with preserved times from such a host) says nothing of which copy is
    // newer: such a copy counts as the oldest (it took the place of an acknowledged upload, and
    // brought a deleted object back: acceptance H-F8).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mut copies: Vec<(usize, i128)> = Vec::new();
    for (i, v) in vols.served().filter(|(_, v)| v.is_healthy()) {
        // A volume whose disk does not answer the calls in progress (see `Volume::enter`)
        // cannot say which copy it holds: the line waits for it.
        let Some(mtime) = v.with_root(|root| Dir::open(root, dir, false).ok()?.file_mtime(name))
        else {
            return Settle::Retry;
        };
        if let Some(t) = mtime {
            copies.push((i, if t > now { i128::MIN } else { t }));
        }
    }
    // The newest; of equal times the first in volume order (the one lookups try first).
    let newest = copies
        .iter()
        .copied()
        .reduce(|a, b| if b.1 > a.1 { b } else { a });
    let keep = match (line.change, newest) {
        (Change::Delete, Some((i, t))) if t >= line.ns as i128 => Some(i),
        (Change::Delete, _) => None,
        (Change::Put, n) => n.map(|(i, _)| i),
    };
    let mut removed = 0;
    let mut outcome = Settle::Done(0);
    for (i, _) in copies {
        if Some(i) == keep {
            continue;
        }
        let Some(v) = vols.get(i) else { continue };
        // Unlinked and the directory synced: the line that called for it may go. A removal
        // that only reached the page cache of a disk that failed again (EIO, a journal
        // aborted) came back at the next mount, serving the old copy of an acknowledged
        // replace with no record left (acceptance F3).
        let unlinked = v.with_root(|root| {
            let d = Dir::open(root, dir, false)?;
            match d.unlink(name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            d.sync()
        });
        match unlinked {
            Some(Ok(())) => {
                removed += 1;
                tracing::info!(path = %rel, volume = %v.name, "removed a copy replaced or deleted while its volume was down");
            }
            Some(Err(e)) if volumes::is_device_fault(&e) => {
                local.volumes.note_error(i, &e);
                outcome = Settle::AtNextStart;
                tracing::warn!(path = %rel, volume = %v.name, error = %e, "cannot remove a copy replaced or deleted while its volume was down; its journal line waits for the next start")
            }
            Some(Err(e)) => {
                if !matches!(outcome, Settle::AtNextStart) {
                    outcome = Settle::Retry;
                }
                tracing::warn!(path = %rel, volume = %v.name, error = %e, "cannot remove a copy replaced or deleted while its volume was down; tried again later")
            }
            None => {
                if !matches!(outcome, Settle::AtNextStart) {
                    outcome = Settle::Retry;
                }
            }
        }
    }
    if removed > 0 {
        local.forget(&rel);
    }
    match outcome {
        Settle::Done(_) => Settle::Done(removed),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        assert_eq!(
            parse("disk1\t1700000000000000000\tput\t/live/show/a%20b.ts"),
            Some(Line {
                volume: "disk1".into(),
                ns: 1_700_000_000_000_000_000,
                change: Change::Put,
                path: "/live/show/a%20b.ts".into(),
            })
        );
        assert_eq!(parse("disk1\t1\tmove\t/x.ts"), None);
        assert_eq!(parse("disk1\tx\tput\t/x.ts"), None);
        assert_eq!(parse("disk1\t1\tput"), None);
    }

    /// The path is written encoded, so reading it back names the same object: a decoded
    /// `live/x%41.ts` read through `sanitize` again would be `live/xA.ts`.
    #[test]
    fn paths_read_back_as_written() {
        for raw in ["/live/x%2541.ts", "/live/50%25off.ts", "/live/a%20b.ts"] {
            let rel = volumes::sanitize(raw).expect("valid");
            let back = volumes::sanitize(&rel.encoded()).expect("valid");
            assert_eq!(back.as_str(), rel.as_str(), "{raw}");
        }
    }

    /// Only whole lines are read: one cut short by a crash is left out.
    #[test]
    fn a_line_cut_short_is_left_out() {
        assert_eq!(
            complete_lines(b"d\t1\tput\t/a.ts\nd\t2\tdelete\t/live/seg_1"),
            vec!["d\t1\tput\t/a.ts".to_string()]
        );
        assert!(complete_lines(b"").is_empty());
        assert_eq!(complete_lines(b"\n\nd\t1\tput\t/a.ts\n").len(), 1);
    }
}
