//! Objects still being written (read-while-write, LL-DASH / chunked CMAF): the first tier of a
//! lookup for live media segments that have no complete version yet.
//!
//! An upload of a live media segment registers here when it starts; every chunk it receives is
//! announced at once (a `watch` of its progress) and kept in memory until its temporary file has
//! it (writes go to disk in larger batches). A reader streams from the kept chunks, or from the
//! file for older bytes: what is there, then each new chunk as the progress moves, until the
//! upload commits (the stream ends at the final length) or fails (the stream fails, so the
//! writer resets the response). The registration goes with the upload: after the commit, new
//! lookups find the complete file on its volume.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::body::ByteStream;

/// How far an upload has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Writing(u64),
    Done(u64),
    Failed,
}

/// One upload in progress, as readers see it.
pub struct Growing {
    /// Set once the upload has its temporary file (the entry is announced before that, so a
    /// reader that asks at once waits instead of missing it).
    file: std::sync::OnceLock<Arc<File>>,
    progress: watch::Sender<Progress>,
    /// The most recent chunks (offset, bytes): at least every byte the progress announces that
    /// is not in the file yet, and up to [`RETAIN`] bytes in all. Readers that keep up with the
    /// writer — every waiter of a stampede, every LL-DASH player — take them from here, no read.
    recent: Mutex<Recent>,
}

/// See [`Growing::recent`].
/// (Its sums and searches take time independent of how many chunks it holds: a client sending
/// one-byte chunks made each of them cost a walk over every chunk held, quadratic in all.)
/// Small pieces are gathered into one buffer ([`Gather`]), not kept one by one.
#[derive(Default)]
struct Recent {
    /// In offset order, contiguous.
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    /// Small pieces after `chunks` (from offset `small_off`), becoming a chunk once large.
    small: Gather,
    small_off: u64,
    /// The bytes of `chunks` and `small`.
    held: usize,
    /// Bytes in the file: chunks ending at or before this may be dropped.
    on_disk: u64,
}

impl Recent {
    fn push(&mut self, off: u64, b: Bytes) {
        self.held += b.len();
        if self.small.is_empty() {
            self.small_off = off;
        }
        let (gathered, large) = self.small.push(b);
        if let Some(g) = gathered {
            self.chunks.push_back((self.small_off, g));
        }
        if let Some(b) = large {
            self.chunks.push_back((off, b));
        }
    }

    /// Drops the oldest chunks beyond [`RETAIN`] bytes, never one that is not in the file yet.
    fn trim(&mut self) {
        while self.held > RETAIN && self.chunks.len() > 1 {
            match self.chunks.front() {
                Some((off, b)) if off + b.len() as u64 <= self.on_disk => {
                    self.held -= b.len();
                    self.chunks.pop_front();
                }
                _ => break,
            }
        }
    }
}

/// Bytes of recent chunks kept in memory per object being written.
const RETAIN: usize = 1 << 20;

/// Pieces of a body under this size are copied together instead of kept one by one.
const SMALL_PIECE: usize = 4 << 10;
/// Gathered small pieces become one chunk at this size.
const GATHERED: usize = 64 << 10;

/// Small pieces of a body, gathered: hyper hands each HTTP/1.1 chunk over as a piece of its
/// own, a slice of its read buffer, and a client sending one-byte chunks had every byte held as
/// a `Bytes` of its own, the read buffers under them with it, by the upload's write batch and by
/// the chunks kept for readers of a growing segment: about 41 times the bytes (acceptance L2).
/// A piece of [`SMALL_PIECE`] or more is kept as it came.
#[derive(Default)]
pub(super) struct Gather {
    buf: BytesMut,
}

impl Gather {
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Takes `b`; returns what is done, in this order: the gathered bytes (once [`GATHERED`]
    /// are there, or when `b` is large), and `b` when it is large.
    pub(super) fn push(&mut self, b: Bytes) -> (Option<Bytes>, Option<Bytes>) {
        if b.is_empty() {
            (None, None)
        } else if b.len() < SMALL_PIECE {
            if self.buf.capacity() - self.buf.len() < b.len() {
                // Doubled as pieces come, from [`SMALL_PIECE`] up to [`GATHERED`]: the few
                // bytes of a body that arrived with its head, often its only small piece, cost
                // a small buffer, not a 64 KiB one (a large allocation, and its release, on
                // every upload).
                let want = (self.buf.len() + b.len())
                    .max(2 * self.buf.capacity())
                    .clamp(SMALL_PIECE, GATHERED);
                self.buf
                    .reserve(want.saturating_sub(self.buf.len()).max(b.len()));
            }
            self.buf.extend_from_slice(&b);
            let full = self.buf.len() >= GATHERED;
            (full.then(|| self.take()).flatten(), None)
        } else {
            (self.take(), Some(b))
        }
    }

    /// The gathered bytes as a chunk, if any.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

impl Growing {
    /// Up to `max` bytes at `pos` from the retained chunks, if they hold `pos`.
    fn recent_at(&self, pos: u64, max: u64) -> Option<Bytes> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if pos >= recent.small_off && !recent.small.is_empty() {
            // Still being gathered: a copy (under [`GATHERED`] bytes).
            let small = recent.small.bytes();
            let start = usize::try_from(pos - recent.small_off).ok()?;
            let end = small.len().min(start.saturating_add(max));
            return (start < end).then(|| Bytes::copy_from_slice(&small[start..end]));
        }
        // The last chunk starting at or before `pos` (they are in offset order).
        let i = recent.chunks.partition_point(|(off, _)| *off <= pos);
        let (off, b) = recent.chunks.get(i.checked_sub(1)?)?;
        if pos >= off + b.len() as u64 {
            return None;
        }
        let start = (pos - off) as usize;
        let end = b.len().min(start.saturating_add(max));
        Some(b.slice(start..end))
    }
}

impl Growing {
    /// Waits until the upload has `pos` bytes (`None`: until it ends) or it ends.
    pub async fn reach(&self, pos: Option<u64>) -> Progress {
        let mut rx = self.progress.subscribe();
        loop {
            let p = *rx.borrow_and_update();
            match p {
                Progress::Writing(n) if pos.is_none_or(|x| n < x) => {}
                _ => return p,
            }
            // The sender lives as long as `self`: this never fails while we wait.
            if rx.changed().await.is_err() {
                return Progress::Failed;
            }
        }
    }

    /// The bytes from `offset` as they arrive, `len` of them at most (all when `None`).
    pub fn stream(self: &Arc<Self>, offset: u64, len: Option<u64>) -> ByteStream {
        let end = len.and_then(|l| offset.checked_add(l));
        let rx = self.progress.subscribe();
        let me = Arc::clone(self);
        Box::pin(futures_util::stream::unfold(
            (offset, rx, me, false),
            move |(pos, mut rx, file, done)| async move {
                if done || end.is_some_and(|e| pos >= e) {
                    return None;
                }
                loop {
                    let p = *rx.borrow_and_update();
                    let (avail, finished) = match p {
                        Progress::Failed => {
                            let e = io::Error::other("upload failed while being read");
                            return Some((Err(e), (pos, rx, file, true)));
                        }
                        Progress::Writing(n) => (n, false),
                        Progress::Done(n) => (n, true),
                    };
                    let avail = end.map_or(avail, |e| avail.min(e));
                    if pos < avail {
                        if let Some(b) = file.recent_at(pos, avail - pos) {
                            let next = pos + b.len() as u64;
                            return Some((Ok(b), (next, rx, file, false)));
                        }
                        let want = (avail - pos).min(crate::io::CHUNK as u64) as usize;
                        let Some(f) = file.file.get().cloned() else {
                            let e = io::Error::other("growing object has no file");
                            return Some((Err(e), (pos, rx, file, true)));
                        };
                        // Bytes just written are in the page cache: read them here rather
                        // than through a blocking-pool hop per chunk and per reader (which is
                        // what a stampede of readers on one fill would pay).
                        let read = {
                            let mut buf = BytesMut::zeroed(want);
                            f.read_at(&mut buf, pos).map(|n| {
                                buf.truncate(n);
                                buf.freeze()
                            })
                        };
                        return match read {
                            Ok(b) if !b.is_empty() => {
                                let next = pos + b.len() as u64;
                                Some((Ok(b), (next, rx, file, false)))
                            }
                            Ok(_) => Some((
                                Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "growing object shorter than its progress",
                                )),
                                (pos, rx, file, true),
                            )),
                            Err(e) => Some((Err(e), (pos, rx, file, true))),
                        };
                    }
                    if finished {
                        if end.is_some_and(|e| pos < e) {
                            let e = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "range beyond the object's final length",
                            );
                            return Some((Err(e), (pos, rx, file, true)));
                        }
                        return None;
                    }
                    if rx.changed().await.is_err() {
                        let e = io::Error::other("upload went away while being read");
                        return Some((Err(e), (pos, rx, file, true)));
                    }
                }
            },
        ))
    }
}

/// The writer's side: progress reports, and the registration removed when dropped.
pub struct Publisher {
    key: String,
    entry: Arc<Growing>,
    set: Arc<GrowingSet>,
    finished: bool,
}

impl Publisher {
    /// The upload's temporary file, opened for reading.
    pub fn attach(&self, file: File) {
        let _ = self.entry.file.set(Arc::new(file));
    }

    pub fn advance(&self, written: u64) {
        self.set(Progress::Writing(written));
    }

    /// Moves the progress to `next`. Readers are woken only when there are any: the wake is a
    /// pass over every shard of the channel's notifier, and most uploads have nobody reading
    /// them while they are written. A reader that subscribes meanwhile reads the value after
    /// this (its count is taken before it reads, the value is set under the channel's lock), so
    /// it is never left waiting for what it missed.
    fn set(&self, next: Progress) {
        let tx = &self.entry.progress;
        tx.send_if_modified(|p| {
            let changed = *p != next;
            *p = next;
            changed && tx.receiver_count() > 0
        });
    }

    /// Announces the object up to `visible`, keeping `chunks` (the bytes that end at `visible`)
    /// for readers; `on_disk` bytes are in the file. Bytes between `on_disk` and `visible` are
    /// served from the kept chunks until [`Publisher::written`] says the file has them.
    pub fn advance_with(&self, visible: u64, chunks: &[Bytes], on_disk: u64) {
        {
            let mut recent = self.entry.recent.lock().unwrap_or_else(|p| p.into_inner());
            let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
            let mut off = visible - total.min(visible);
            for c in chunks {
                if !c.is_empty() {
                    recent.push(off, c.clone());
                    off += c.len() as u64;
                }
            }
            recent.on_disk = recent.on_disk.max(on_disk);
            recent.trim();
        }
        self.advance(visible);
    }

    /// The file now holds the first `on_disk` bytes: kept chunks before that may go.
    pub fn written(&self, on_disk: u64) {
        let mut recent = self.entry.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.on_disk = recent.on_disk.max(on_disk);
        recent.trim();
    }

    pub fn done(mut self, len: u64) {
        self.set(Progress::Done(len));
        self.finished = true;
    }

    /// The writer failed: what it kept goes (readers fail on the progress).
    fn forget_recent(&self) {
        *self.entry.recent.lock().unwrap_or_else(|p| p.into_inner()) = Recent::default();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if !self.finished {
            self.set(Progress::Failed);
            self.forget_recent();
        }
        let mut map = self.set.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            map.remove(&self.key);
        }
    }
}

/// Uploads in progress, by path.
#[derive(Default)]
pub struct GrowingSet {
    map: Mutex<HashMap<String, Arc<Growing>>>,
}

impl GrowingSet {
    /// Announces an upload of `key`; its file is attached when it exists.
    pub fn announce(self: &Arc<Self>, key: &str) -> Publisher {
        let entry = Arc::new(Growing {
            file: std::sync::OnceLock::new(),
            progress: watch::Sender::new(Progress::Writing(0)),
            recent: Mutex::default(),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key.to_owned(), Arc::clone(&entry));
        Publisher {
            key: key.to_owned(),
            entry,
            set: Arc::clone(self),
            finished: false,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Growing>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }
}

impl GrowingSet {
    /// Registers an upload of `key` writing `file` (opened for reading too).
    pub fn register(self: &Arc<Self>, key: &str, file: File) -> Publisher {
        let p = self.announce(key);
        p.attach(file);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn held(g: &Growing) -> (usize, u64) {
        let r = g.recent.lock().unwrap_or_else(|p| p.into_inner());
        let gathered = r.small.bytes().len();
        (
            r.chunks.iter().map(|(_, b)| b.len()).sum::<usize>() + gathered,
            r.on_disk,
        )
    }

    /// Small pieces come out gathered, in order, in chunks of [`GATHERED`]; a lone small piece
    /// (the body bytes that came with a request's head) takes a small buffer.
    #[test]
    fn small_pieces_are_gathered_in_order_and_a_lone_one_stays_small() {
        let mut g = Gather::default();
        assert_eq!(g.push(Bytes::from(vec![1u8; 3000])), (None, None));
        assert!(
            g.buf.capacity() <= SMALL_PIECE,
            "{} bytes held for one piece of 3000",
            g.buf.capacity()
        );
        let mut g = Gather::default();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        for i in 0..2000usize {
            let piece: Vec<u8> = (0..(i * 37) % SMALL_PIECE).map(|j| (i + j) as u8).collect();
            sent.extend_from_slice(&piece);
            let (gathered, large) = g.push(Bytes::from(piece));
            assert!(large.is_none());
            if let Some(b) = gathered {
                assert!(b.len() >= GATHERED, "a gathered chunk of {}", b.len());
                got.extend_from_slice(&b);
            }
        }
        got.extend_from_slice(&g.take().unwrap_or_default());
        assert_eq!(got, sent);
    }

    /// Bytes announced but not yet in the file stay in memory whatever their amount, and a
    /// reader gets them all from there; once the file has them, memory shrinks to the window.
    #[test]
    fn unwritten_chunks_are_kept_until_the_file_has_them() {
        let set = Arc::new(GrowingSet::default());
        let file = tempfile::tempfile().expect("temp file");
        let p = set.register("/live/a/s.m4s", file.try_clone().expect("clone"));
        let chunk = Bytes::from(vec![7u8; 256 * 1024]);
        let mut visible = 0;
        for _ in 0..8 {
            visible += chunk.len() as u64;
            p.advance_with(visible, std::slice::from_ref(&chunk), 0);
        }
        let g = set.get("/live/a/s.m4s").expect("registered");
        assert_eq!(held(&g), (2 << 20, 0), "nothing written: everything kept");
        // A reader streams the whole announced object from memory (the file is empty).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let got = rt.block_on(async {
            let mut s = g.stream(0, Some(visible));
            let mut n = 0u64;
            while let Some(b) = s.next().await {
                n += b.expect("chunk").len() as u64;
            }
            n
        });
        assert_eq!(got, visible);
        // The file has the first 1.5 MiB: what it holds may go, down to the window.
        file.write_all_at(&vec![7u8; 3 << 19], 0).expect("write");
        p.written(3 << 19);
        let (kept, on_disk) = held(&g);
        assert_eq!(on_disk, 3 << 19);
        assert!(kept <= RETAIN, "{kept} bytes kept");
        assert!(
            kept as u64 >= visible - on_disk,
            "unwritten bytes dropped: {kept}"
        );
        p.done(visible);
    }

    /// An upload small enough to be written with its commit never has a file while it grows:
    /// readers that join before and during it get every byte from memory, to the end.
    #[test]
    fn an_upload_without_a_file_yet_is_read_from_memory() {
        let set = Arc::new(GrowingSet::default());
        let p = set.announce("/live/a/t.m4s");
        let g = set.get("/live/a/t.m4s").expect("announced");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let got = rt.block_on(async {
            let mut s = g.stream(0, None);
            let chunk = Bytes::from(vec![3u8; 40 * 1024]);
            let mut visible = 0;
            for _ in 0..5 {
                visible += chunk.len() as u64;
                p.advance_with(visible, std::slice::from_ref(&chunk), 0);
            }
            p.done(visible);
            let mut n = 0u64;
            while let Some(b) = s.next().await {
                let b = b.expect("chunk");
                assert!(b.iter().all(|&x| x == 3));
                n += b.len() as u64;
            }
            n
        });
        assert_eq!(got, 200 * 1024);
    }
}
