//! Writes made while a volume was down, settled when it is back.
//!
//! An upload that replaces `rel`, or a DELETE of it, while the volume holding its copy is
//! unhealthy cannot touch that copy: the new object goes to a healthy volume (or the copy there
//! is removed) and the old copy waits on the volume that was down. Once that volume answers
//! again, the old copy would be served again: lookups try the volume that last served the
//! asset, then the placement volume, and after a restart that is the old one.
//!
//! So each such write leaves a line in a journal at the root of a healthy volume
//! (`.segd-outage`, a dot-file the read side never serves): the volume that was down, when, what
//! was done (`put` or `delete`) and the path. When a volume becomes healthy again (the periodic
//! check, or a request's probe) and at start-up, the lines naming a volume that is healthy now
//! are settled: of the copies of the path on healthy volumes, the newest stays (after a
//! `delete`, only one made after it) and the others are unlinked. Settled lines leave the
//! journal. A line for a volume no longer configured is dropped.
//!
//! Only what may leave a copy behind is journaled: a DELETE, and an upload that created its
//! object where it is (a replace in place found the object on a healthy volume, so any copy on a
//! down volume is older and was journaled when the object moved). The journal line is written
//! after the write's answer, so a crash in between loses it, and a journal stops growing at
//! 16 MiB; a line not written leaves the old copy until the next replace or DELETE of the path.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};

use super::local::Local;
use super::write::Dir;
use crate::volumes::{self, RelPath, Volumes};

/// The journal's name at a volume's root.
const JOURNAL: &str = ".segd-outage";
const JOURNAL_TEMP: &str = ".segd-outage.tmp";

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

/// Whether a write of any path now must be journaled (some served volume is down). Cheap: one
/// atomic load per volume.
pub fn needed(vols: &Volumes) -> bool {
    vols.served().any(|(_, v)| !v.is_healthy())
}

/// Journals `change` of `rel` for every served volume that is down now, on `on` if healthy,
/// else the first healthy volume (blocking). Errors are logged: the write itself stands.
pub fn note(vols: &Volumes, on: Option<usize>, rel: &RelPath, change: Change) {
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
    let mut lines = String::new();
    for d in &down {
        lines.push_str(&format!("{d}\t{ns}\t{}\t{rel}\n", change.as_str()));
    }
    let healthy = |i: usize| vols.get(i).is_some_and(volumes::Volume::is_healthy);
    let target = on
        .filter(|&i| healthy(i))
        .or_else(|| vols.served().find(|(_, v)| v.is_healthy()).map(|(i, _)| i));
    let appended = target
        .and_then(|i| vols.get(i))
        .and_then(|v| v.with_root(|root| append(root, lines.as_bytes())));
    match appended {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::warn!(path = %rel, error = %e, "cannot journal a write made while a volume is down; its old copy may be served when the volume is back")
        }
        None => {
            tracing::warn!(path = %rel, "no healthy volume to journal a write made while a volume is down")
        }
    }
}

/// A journal stops growing at this size (about 200,000 writes: a long outage on a busy ingest
/// node); later writes are not journaled, said once in the log.
const MAX_JOURNAL_BYTES: u64 = 16 << 20;

fn append(root: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    static FULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let fd = rustix::fs::openat(
        root,
        JOURNAL,
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    if rustix::fs::fstat(&fd)?.st_size as u64 >= MAX_JOURNAL_BYTES {
        if !FULL.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                max_bytes = MAX_JOURNAL_BYTES,
                "the outage journal is full: copies replaced or deleted from now on while a volume is down may be served again when it is back"
            );
        }
        return Ok(());
    }
    std::fs::File::from(fd).write_all(bytes)
}

/// One journal line.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    volume: String,
    ns: u128,
    change: Change,
    rel: String,
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
    let rel = f.next()?.to_owned();
    Some(Line {
        volume,
        ns,
        change,
        rel,
    })
}

/// Settles every journal line whose volume is healthy now (blocking); returns how many copies
/// it removed.
pub fn settle(local: &Local) -> u64 {
    let vols = &local.volumes;
    let mut removed = 0;
    for (_, w) in vols.served() {
        if !w.is_healthy() {
            continue;
        }
        let Some(Ok(Some(text))) = w.with_root(read_journal) else {
            continue;
        };
        let mut kept = String::new();
        for raw in text.lines() {
            let Some(line) = parse(raw) else {
                tracing::warn!(volume = %w.name, line = raw, "unreadable line in the outage journal; dropped");
                continue;
            };
            match vols.served().find(|(_, v)| v.name == line.volume) {
                Some((_, d)) if d.is_healthy() => removed += settle_line(local, &line),
                Some(_) => {
                    kept.push_str(raw);
                    kept.push('\n');
                }
                None => {} // no longer configured
            }
        }
        if kept.len() != text.len() {
            if let Some(Err(e)) = w.with_root(|root| rewrite(root, &kept)) {
                tracing::warn!(volume = %w.name, error = %e, "cannot rewrite the outage journal; its lines are settled again later");
            }
        }
    }
    removed
}

fn read_journal(root: BorrowedFd<'_>) -> io::Result<Option<String>> {
    let fd = match rustix::fs::openat(
        root,
        JOURNAL,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Replaces the journal with `kept` (removes it when empty). Lines appended meanwhile are
/// lost with the old file only if they came between the read and the rename; they name writes
/// of the last moments, made while a volume was down, and are written again by the next such
/// write of the same path.
fn rewrite(root: BorrowedFd<'_>, kept: &str) -> io::Result<()> {
    if kept.is_empty() {
        return match rustix::fs::unlinkat(root, JOURNAL, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let fd = rustix::fs::openat(
        root,
        JOURNAL_TEMP,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    std::fs::File::from(fd).write_all(kept.as_bytes())?;
    rustix::fs::renameat(root, JOURNAL_TEMP, root, JOURNAL)?;
    Ok(())
}

/// Of the copies of the line's path on healthy volumes, keeps the newest (after a `delete`, only
/// one made after it) and unlinks the others; returns how many it unlinked.
fn settle_line(local: &Local, line: &Line) -> u64 {
    let Ok(rel) = volumes::sanitize(&format!("/{}", line.rel)) else {
        return 0;
    };
    let vols = &local.volumes;
    let copies: Vec<(usize, i128)> = vols
        .served()
        .filter(|(_, v)| v.is_healthy())
        .filter_map(|(i, v)| v.stat(&rel).map(|m| (i, m.mtime_ns)))
        .collect();
    let newest = copies.iter().max_by_key(|(_, t)| *t).copied();
    let keep = match (line.change, newest) {
        (Change::Delete, Some((i, t))) if t >= line.ns as i128 => Some(i),
        (Change::Delete, _) => None,
        (Change::Put, n) => n.map(|(i, _)| i),
    };
    let (dir, name) = match rel.as_str().rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", rel.as_str()),
    };
    let mut removed = 0;
    for (i, _) in copies {
        if Some(i) == keep {
            continue;
        }
        let gone = vols.get(i).and_then(|v| {
            v.with_root(|root| Dir::open(root, dir, false).and_then(|d| d.unlink(name)))
        });
        match gone {
            Some(Ok(())) => {
                removed += 1;
                tracing::info!(path = %rel, volume = vols.get(i).map_or("", |v| v.name.as_str()), "removed a copy replaced or deleted while its volume was down");
            }
            Some(Err(e)) => {
                tracing::warn!(path = %rel, error = %e, "cannot remove a copy replaced or deleted while its volume was down")
            }
            None => {}
        }
    }
    if removed > 0 {
        local.forget(&rel);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        assert_eq!(
            parse("disk1\t1700000000000000000\tput\tlive/show/a b.ts"),
            Some(Line {
                volume: "disk1".into(),
                ns: 1_700_000_000_000_000_000,
                change: Change::Put,
                rel: "live/show/a b.ts".into(),
            })
        );
        assert_eq!(parse("disk1\t1\tmove\tx.ts"), None);
        assert_eq!(parse("disk1\tx\tput\tx.ts"), None);
        assert_eq!(parse("disk1\t1\tput"), None);
    }
}
