//! Live playlists written by a packager on the same host (ffmpeg `-hls_flags temp_file`, or any
//! tool that renames into place) are noticed without polling, through inotify: every directory
//! under a live prefix on every volume is watched (and the directories leading to the prefixes,
//! so a prefix created later is picked up), and a playlist renamed or written into place is
//! parsed and published to the registry. Temporary names (`*.tmp`, dot-files) are ignored. A
//! queue overflow rescans every live directory.
//!
//! Runs on a thread of its own: inotify reads and the small playlist reads are blocking. After
//! each batch of events it waits [`COALESCE`] before it reads again: every upload into a live
//! directory, segd's own included, makes four events (temporary file created and closed, renamed
//! from and to), and a thread woken for each of them cost a sequential uploader 5 of its 14
//! context switches per upload. After [`IDLE_AFTER`] batches in a row with nothing in them for
//! the watcher (segd's own uploads of media segments), it waits [`COALESCE_IDLE`]: under a
//! stream of uploads, the wakes cost more than the events read (the thread's CPU at about 2,900
//! uploads a second, in two sets of runs: 5.4–13.0 µs per upload with 2 ms, 2.2–4.5 with this).
//! Not after one such batch: a local packager renames a segment, then its playlist, and the
//! playlist would wait the longer pause behind the segment. A lone write is still seen at once;
//! events of a burst wait at most `COALESCE`, or `COALESCE_IDLE` amid a stream of uploads and
//! nothing else.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::{Registry, Snapshot};
use crate::volumes::ObjectMeta;

/// How long the watcher lets events gather after a batch (see the module docs).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);
/// How long after [`IDLE_AFTER`] batches in a row none of whose events mattered.
const COALESCE_IDLE: std::time::Duration = std::time::Duration::from_millis(10);
/// Batches in a row with nothing wanted before the watcher pauses [`COALESCE_IDLE`].
const IDLE_AFTER: u32 = 4;

struct Watch {
    /// The URL path of the directory, with a trailing `/` (e.g. `/live/show1/`).
    url: String,
    dir: PathBuf,
}

struct Watcher {
    fd: OwnedFd,
    /// The volume directories: a playlist deleted from one is gone when none has it.
    roots: Vec<PathBuf>,
    /// Playlists over `max_playlist_bytes` a warning was logged for.
    oversize: std::sync::Mutex<std::collections::HashSet<String>>,
    prefixes: Vec<String>,
    watches: HashMap<i32, Watch>,
    registry: Arc<Registry>,
    /// Which watcher this is ([`Registry::watchers`]): one started after it (a reload changed
    /// the volumes or the live prefixes) replaces it, and it stops at its next event.
    generation: u64,
}

/// Starts watching `roots` (volume directories) for live playlists under `prefixes`, in place
/// of the watcher started before, if any (a reload that changes the volumes or the live
/// prefixes starts a new one: the old one watched neither the new volumes nor the new
/// prefixes' directories).
pub fn spawn(roots: Vec<PathBuf>, prefixes: Vec<String>, registry: Arc<Registry>) {
    let generation = registry
        .watchers
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
        + 1;
    if prefixes.is_empty() {
        return;
    }
    let fd = match inotify::init(CreateFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable: live playlists written by local packagers are seen only when requested");
            return;
        }
    };
    let mut w = Watcher {
        fd,
        roots: roots.clone(),
        oversize: Default::default(),
        prefixes,
        watches: HashMap::new(),
        registry,
        generation,
    };
    let spawned = std::thread::Builder::new()
        .name("segd-live-watch".into())
        .spawn(move || {
            for r in &roots {
                w.add_tree(r, "/");
            }
            w.run();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the live playlist watcher");
    }
}

/// Whether an event can matter, from its flags and name alone: a directory's, the queue's, a
/// watch's end, or a playlist's. Every upload into a watched directory makes four events (its
/// temporary file created and closed, then renamed from that name to a media segment's,
/// usually): they are passed over here without a string made for them.
fn wanted(flags: ReadFlags, name: Option<&[u8]>) -> bool {
    if flags.intersects(ReadFlags::QUEUE_OVERFLOW | ReadFlags::IGNORED | ReadFlags::ISDIR) {
        return true;
    }
    name.is_some_and(|n| !n.starts_with(b".") && n.ends_with(b".m3u8"))
}

impl Watcher {
    /// Whether a directory at URL path `url` (trailing `/`) leads to or lies under a prefix.
    fn interesting(&self, url: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| url.starts_with(p.as_str()) || p.starts_with(url))
    }

    fn live(&self, url: &str) -> bool {
        self.prefixes.iter().any(|p| url.starts_with(p.as_str()))
    }

    /// Watches `dir` (at URL path `url`) and the interesting directories below it, publishing
    /// the playlists already there.
    fn add_tree(&mut self, dir: &Path, url: &str) {
        if !self.interesting(url) {
            return;
        }
        let flags = WatchFlags::CREATE
            | WatchFlags::MOVED_TO
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW;
        match inotify::add_watch(&self.fd, dir, flags) {
            Ok(wd) => {
                self.watches.insert(
                    wd,
                    Watch {
                        url: url.to_owned(),
                        dir: dir.to_owned(),
                    },
                );
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot watch a live directory");
                return;
            }
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => self.add_tree(&e.path(), &format!("{url}{name}/")),
                // Found by walking the tree (at start, or after an overflow), not written now.
                Ok(t) if t.is_file() && self.live(url) => self.publish(&e.path(), url, &name),
                _ => {}
            }
        }
    }

    /// Parses and publishes a playlist renamed into place, or found on disk. A panic in doing
    /// so (a playlist segd failed to foresee) loses that version only: the thread watches on.
    fn publish(&self, file: &Path, url: &str, name: &str) {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.publish_file(file, url, name)
        }));
        if done.is_err() {
            tracing::error!(file = %file.display(), "a live playlist could not be parsed; this version is not tracked");
        }
    }

    fn publish_file(&self, file: &Path, url: &str, name: &str) {
        if !name.ends_with(".m3u8") || name.starts_with('.') || name.ends_with(".tmp") {
            return;
        }
        let Ok(meta) = std::fs::metadata(file) else {
            return;
        };
        let path = format!("{url}{name}");
        let max = (self.registry.max_playlist_bytes).load(std::sync::atomic::Ordering::Relaxed);
        if meta.len() > max {
            // Not followed: LL-HLS requests get the file as it is (an older version the
            // registry had would answer them wrongly). Said once a path (a packager rewrites
            // it every few seconds).
            let mut said = self.oversize.lock().unwrap_or_else(|p| p.into_inner());
            if said.len() >= 1024 {
                said.clear();
            }
            if said.insert(path.clone()) {
                tracing::warn!(
                    path,
                    bytes = meta.len(),
                    max_playlist_bytes = max,
                    "a live playlist over live.max_playlist_bytes is served without LL-HLS"
                );
            }
            self.registry.forget(&path);
            return;
        }
        // What the registry has before the file is read: a version published after it (an
        // ingest commit's) is not replaced by what was read.
        let seen = self.registry.current(&path);
        let Ok(text) = std::fs::read(file) else {
            return;
        };
        let Ok(st) = rustix::fs::stat(file) else {
            return;
        };
        let m = ObjectMeta::from_stat(&st);
        let (Ok(etag), Ok(lm)) = (
            http::HeaderValue::from_str(&m.etag()),
            http::HeaderValue::from_str(&crate::http::http_date(m.modified())),
        ) else {
            return;
        };
        // Our own ingest commit published this version already.
        if self
            .registry
            .current(&path)
            .is_some_and(|s| s.etag == etag && s.text.len() == text.len())
        {
            return;
        }
        let snap = Snapshot::parse(Bytes::from(text), etag, lm);
        self.registry.publish_read(&path, snap, seen);
    }

    /// A playlist deleted or moved away by something else than an HTTP DELETE (which forgets
    /// it itself): once no volume has it, its versions go from the registry (LL-HLS requests
    /// would be answered from memory, and the memory never freed).
    fn gone(&self, url: &str, name: &str) {
        let rel = format!("{}{name}", url.trim_start_matches('/'));
        let somewhere = self.roots.iter().any(|r| {
            std::fs::symlink_metadata(r.join(&rel)).is_ok_and(|m| m.file_type().is_file())
        });
        if !somewhere {
            self.registry.forget(&format!("{url}{name}"));
        }
    }

    fn rescan(&mut self) {
        let dirs: Vec<(String, PathBuf)> = self
            .watches
            .values()
            .map(|w| (w.url.clone(), w.dir.clone()))
            .collect();
        for (url, dir) in dirs {
            self.add_tree(&dir, &url);
        }
    }

    fn run(mut self) {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
        // Batches in a row with events none of which mattered.
        let mut idle = 0u32;
        loop {
            let mut events: Vec<(i32, ReadFlags, Option<String>)> = Vec::new();
            let mut any = false;
            {
                let mut reader = inotify::Reader::new(&self.fd, &mut buf);
                loop {
                    let next = reader.next();
                    any |= next.is_ok();
                    match next {
                        Ok(ev) if wanted(ev.events(), ev.file_name().map(|n| n.to_bytes())) => {
                            events.push((
                                ev.wd(),
                                ev.events(),
                                ev.file_name().map(|n| n.to_string_lossy().into_owned()),
                            ))
                        }
                        Ok(_) => {}
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(rustix::io::Errno::AGAIN) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "live playlist watcher stopped");
                            return;
                        }
                    }
                    if reader.is_buffer_empty() {
                        break;
                    }
                }
            }
            if self
                .registry
                .watchers
                .load(std::sync::atomic::Ordering::Acquire)
                != self.generation
            {
                // Replaced: the newer watcher has these directories too.
                return;
            }
            idle = match any && events.is_empty() {
                true => idle.saturating_add(1),
                false => 0,
            };
            let pause = match idle >= IDLE_AFTER {
                true => COALESCE_IDLE,
                false => COALESCE,
            };
            for (wd, flags, name) in events {
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    tracing::warn!("inotify queue overflow: rescanning live directories");
                    self.rescan();
                    continue;
                }
                if flags.contains(ReadFlags::IGNORED) {
                    self.watches.remove(&wd);
                    continue;
                }
                let (Some(w), Some(name)) = (self.watches.get(&wd), name) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let (url, dir) = (w.url.clone(), w.dir.join(&name));
                if flags.contains(ReadFlags::ISDIR) {
                    if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                        self.add_tree(&dir, &format!("{url}{name}/"));
                    }
                } else if flags.intersects(ReadFlags::MOVED_TO | ReadFlags::CLOSE_WRITE)
                    && self.live(&url)
                {
                    self.publish(&dir, &url, &name);
                } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM)
                    && self.live(&url)
                    && name.ends_with(".m3u8")
                {
                    self.gone(&url, &name);
                }
            }
            std::thread::sleep(pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events an upload makes are passed over unless they are a playlist's; directories,
    /// overflows and ended watches are always looked at.
    #[test]
    fn only_playlists_directories_and_the_queue_are_wanted() {
        let file = ReadFlags::CREATE;
        let closed = ReadFlags::CLOSE_WRITE;
        let renamed = ReadFlags::MOVED_TO;
        let temp = b".segd-tmp-0000000000000001-00000000000000ff".as_slice();
        assert!(!wanted(file, Some(temp)));
        assert!(!wanted(closed, Some(temp)));
        assert!(!wanted(renamed, Some(b"seg_0000001.ts")));
        assert!(!wanted(renamed, Some(b"chunk-1.m4s")));
        assert!(!wanted(renamed, Some(b".index.m3u8")));
        assert!(wanted(renamed, Some(b"index.m3u8")));
        assert!(wanted(closed, Some(b"index.m3u8")));
        assert!(wanted(ReadFlags::DELETE, Some(b"index.m3u8")));
        assert!(wanted(ReadFlags::MOVED_FROM, Some(b"a.m3u8")));
        assert!(wanted(ReadFlags::CREATE | ReadFlags::ISDIR, Some(b"show2")));
        assert!(wanted(
            ReadFlags::MOVED_TO | ReadFlags::ISDIR,
            Some(b"x.ts")
        ));
        assert!(wanted(ReadFlags::QUEUE_OVERFLOW, None));
        assert!(wanted(ReadFlags::IGNORED, None));
        assert!(!wanted(file, None));
    }
}
