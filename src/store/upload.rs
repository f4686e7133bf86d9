//! Writes into the local tier: uploads (create or replace) and deletions, as the ingest request
//! path asks for them. Placement for writes, per-path serialisation, space checks, and
//! read-your-writes (the caches forget the path the moment the rename lands) live here; the bytes
//! go through the one write path in `write.rs`.
//!
//! Placement: an object that exists is replaced where it is (never a second copy elsewhere);
//! a new object goes to the volume that already holds its asset (remembered, else found by its
//! asset directory), else the placement rule's preferred volume, else any other; an unhealthy
//! volume is never written, and one that would go below `reserve` is skipped.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

use super::growing::{Gather, GrowingSet, Publisher};
use super::local::Local;
use super::outage;
use super::write::{remove_empty, Dir, TempFile};
use super::write_through::{BucketError, Op, WriteThrough};
use super::writers::Writers;
use crate::config::Durability;
use crate::io::pipe::Pipe;
use crate::volumes::{self, ObjectMeta, RelPath};

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no volume has room above its reserve")]
    NoSpace,
    #[error("the volume that holds the object is unavailable")]
    VolumeUnavailable,
    /// The volume that holds the object, or every volume that could take it, is mounted
    /// read-only.
    #[error("the volume is read-only")]
    ReadOnly,
    #[error("the path names a directory")]
    IsDirectory,
    #[error("not found")]
    NotFound,
    #[error("write failed: {0}")]
    Io(io::Error),
    /// The write-through bucket did not take it (`durability = "upstream"`).
    #[error("write-through: {0}")]
    Bucket(#[from] BucketError),
}

/// Where an upload's blocking work runs. A durable upload waits on its disk (fsync): the
/// general blocking pool, whose threads are there to wait. Otherwise the work is CPU (copying
/// into the page cache): the writer threads, about one per worker (see `writers`), or with
/// `ingest.inline_writes` the worker itself while every disk answers.
#[derive(Clone)]
enum Pool {
    General,
    Writers(Arc<Writers>),
    Inline(Arc<Writers>, Arc<volumes::Volumes>),
}

impl Pool {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WriteError> {
        match self {
            Pool::General => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| WriteError::Io(io::Error::other(e))),
            Pool::Writers(w) => w.run(f).await.map_err(WriteError::Io),
            Pool::Inline(w, volumes) => w.run_inline(volumes, f).await.map_err(WriteError::Io),
        }
    }
}

/// Writes buffered before they go to disk (fewer, larger writes; one blocking hop per buffer).
const WRITE_BUFFER: usize = 256 * 1024;

/// In-memory bytes at most that [`Pending::head_into_pipe`] moves into an upload's pipe.
const HEAD_INTO_PIPE: usize = 64 * 1024;

/// What was received and not yet written: chunks in memory, then what is in the upload's pipe.
struct Pending {
    chunks: Vec<Bytes>,
    /// Small pieces after `chunks`, gathered (see [`Gather`]).
    small: Gather,
    /// The upload's pipe (see [`Upload::pipe`]), unless a write to disk has it.
    pipe: Option<Pipe>,
    /// Bytes waiting, in `chunks` and in the pipe.
    len: usize,
    /// No pipe is to be had (or the upload must have its bytes in memory): chunks only.
    no_pipe: bool,
}

/// What one write to disk takes: the chunks, then the pipe's bytes. The pipe comes back with it.
struct Batch {
    chunks: Vec<Bytes>,
    pipe: Option<Pipe>,
}

impl Pending {
    /// `pipe`: whether the bytes may go through a pipe.
    fn new(pipe: bool) -> Pending {
        Pending {
            chunks: Vec::new(),
            small: Gather::default(),
            pipe: None,
            len: 0,
            no_pipe: !pipe,
        }
    }

    fn push(&mut self, b: Bytes) {
        self.len += b.len();
        let (gathered, large) = self.small.push(b);
        self.chunks.extend(gathered);
        self.chunks.extend(large);
    }

    /// Moves the bytes in memory into the pipe while it is empty and they are few (see
    /// [`Upload::pipe`]); more, or a pipe that holds bytes already, are left as they are
    /// (written first, then the pipe's).
    fn head_into_pipe(&mut self) -> io::Result<()> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(());
        };
        if !pipe.is_empty() || self.len == 0 || self.len > HEAD_INTO_PIPE {
            return Ok(());
        }
        self.chunks.extend(self.small.take());
        pipe.push(&self.chunks)?;
        self.chunks.clear();
        Ok(())
    }

    fn piped(&self) -> usize {
        self.pipe.as_ref().map_or(0, Pipe::len)
    }

    fn take(&mut self) -> Batch {
        self.len = 0;
        self.chunks.extend(self.small.take());
        Batch {
            chunks: std::mem::take(&mut self.chunks),
            pipe: self.pipe.take(),
        }
    }

    /// The pipe back from a write to disk.
    fn restore(&mut self, pipe: Option<Pipe>) {
        self.pipe = pipe;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            p.recycle();
        }
    }
}

impl Batch {
    /// Writes the chunks, then the pipe's bytes, to the end of `temp` (blocking).
    fn write_to(&mut self, temp: &mut TempFile) -> io::Result<()> {
        temp.write_chunks(&self.chunks)?;
        match &mut self.pipe {
            Some(p) if !p.is_empty() => temp.write_pipe(p),
            _ => Ok(()),
        }
    }
}

/// What else an upload does besides writing its file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// Keep the body in memory (up to `[live] max_playlist_bytes`) and hand it back with the commit (live playlists,
    /// parsed once per write).
    pub keep: bool,
    /// Readers may stream it while it is written (live media segments): every chunk is
    /// announced to them from memory at once; the file gets it with the next batch.
    pub growing: bool,
    /// The path is under `[live] prefixes` (write-through applies to it only with
    /// `write_through_live`).
    pub live: bool,
    /// The client waits for a decision before it sends the body (`Expect: 100-continue`): the
    /// upload is placed and its file created at once, so a refusal (507, 409) comes first.
    pub decide_first: bool,
}

/// A file being uploaded. Dropped without [`Upload::commit`], it is removed: a failed upload
/// leaves no trace.
pub struct Upload {
    /// The temporary file, once the upload has one (see [`File`]).
    file: File,
    /// Received chunks not yet written, as they came (written with one `writev`, no copy).
    buf: Pending,
    name: String,
    key: RelPath,
    local: Arc<Local>,
    durable: bool,
    temp_removed: prometheus::IntCounter,
    /// Counts the uploads refused because no volume had room (507).
    no_space: prometheus::IntCounter,
    /// The body, when kept (see [`Mode::keep`]).
    kept: Option<BytesMut>,
    /// Set for growing uploads (see [`Mode::growing`]).
    publisher: Option<Publisher>,
    /// The bucket this upload is written through to.
    through: Option<Arc<WriteThrough>>,
    pool: Pool,
    /// A volume was down when the upload began (see [`outage`]).
    outage: bool,
    /// The path's lock, held until the commit's answer is given out ([`Committed::unlock`]).
    lock: Option<PathLock>,
}

/// Where an upload's bytes go.
enum File {
    /// Not placed yet: the volume is picked and the temporary file created with the first write
    /// to disk. A body that fits in one [`WRITE_BUFFER`] — most segments and every playlist —
    /// then costs one trip to the blocking pool (place, create, write, rename) instead of two.
    Later { len_hint: u64, reserve: u64 },
    Open {
        temp: TempFile,
        volume: usize,
        /// The bytes this upload may write before the volume would cross its reserve.
        room: Claim,
    },
    /// A write failed (its temporary file is gone): nothing more is written.
    Failed,
}

impl File {
    fn written(&self) -> u64 {
        match self {
            File::Open { temp, .. } => temp.written(),
            _ => 0,
        }
    }
}

/// A temporary file to write to: the one `file` has, else a new one placed for `need` bytes
/// (blocking: call it on the pool). Also says whether it was created now.
fn open_for(local: &Local, key: &RelPath, file: File, need: u64) -> Result<Opened, WriteError> {
    match file {
        File::Open { temp, volume, room } => Ok(Opened {
            temp,
            volume,
            room,
            new: false,
        }),
        File::Later { len_hint, reserve } => {
            let (volume, room, temp) = create(local, key, need.max(len_hint), reserve, false)?;
            Ok(Opened {
                temp,
                volume,
                room,
                new: true,
            })
        }
        File::Failed => Err(WriteError::Io(io::Error::other("upload already failed"))),
    }
}

struct Opened {
    temp: TempFile,
    volume: usize,
    room: Claim,
    new: bool,
}

/// Holds the volume of `o` busy for the disk calls that follow ([`volumes::Volume::enter`]).
/// Refused (its disk has not answered the calls in progress), the upload fails as on a volume
/// that is down (503), and its temporary file is left for the volume to remove once its disk
/// answers: removing it now could wait as long, on one more thread.
fn enter(local: &Local, o: Opened) -> Result<(volumes::Busy<'_>, Opened), WriteError> {
    let v = local
        .volumes
        .get(o.volume)
        .ok_or(WriteError::VolumeUnavailable)?;
    match v.enter() {
        Some(busy) => Ok((busy, o)),
        None => {
            o.temp.abandon(v);
            Err(WriteError::VolumeUnavailable)
        }
    }
}

/// How much a body of unknown length claims at a time once its first claim is written.
const CLAIM_STEP: u64 = 1 << 20;

/// The room an upload in progress has on its volume, promised there ([`volumes::Volume::promise`])
/// so that uploads side by side together keep the reserve: each new upload, and each step of a
/// body of unknown length, must fit in the free space above the reserve beside what the
/// others were promised and have not written yet (acceptance H-F1: 12 concurrent uploads each
/// saw the same free space and together left 0 of a 2 MiB reserve). Written bytes are given
/// back as the free space shows them; the rest when the upload ends.
struct Claim {
    volumes: Arc<volumes::Volumes>,
    volume: usize,
    reserve: u64,
    granted: u64,
    /// Of `granted`, the bytes counted as written (the free space has them).
    settled: u64,
}

impl Claim {
    /// Whether `total` bytes (written, `written` of them, and about to be) fit: gives back what
    /// was written since, and claims more when the body outgrows what it has.
    fn fits(&mut self, written: u64, total: u64) -> bool {
        let Some(v) = self.volumes.get(self.volume) else {
            return false;
        };
        let done = written.min(self.granted);
        if done > self.settled {
            v.unpromise(done - self.settled);
            self.settled = done;
        }
        if total <= self.granted {
            return true;
        }
        let more = (total - self.granted).max(CLAIM_STEP);
        let room = match v.free_bytes() {
            Ok(Some(free)) => free.saturating_sub(self.reserve),
            _ => return false,
        };
        // Every promise not written yet, this upload's too, is still in the free space: all
        // of them and `more` must fit above the reserve.
        if v.promise(more, room) {
            self.granted += more;
            true
        } else {
            false
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(v) = self.volumes.get(self.volume) {
            v.unpromise(self.granted - self.settled);
        }
    }
}

/// Picks the volume for `len` bytes of `key`, creates missing directories and the temporary
/// file (blocking). `early`: created before the body is read (a client waiting on `100
/// Continue`, a long body): a directory at the name is refused now, before the body comes.
/// Created at the first write instead (the body is in memory already), the commit's rename
/// finds it (`EISDIR`, also 409), and an upload pays no extra look-up.
fn create(
    local: &Local,
    key: &RelPath,
    len: u64,
    reserve: u64,
    early: bool,
) -> Result<(usize, Claim, TempFile), WriteError> {
    match create_once(local, key, len, reserve, early) {
        // The volume refused the file as read-only without saying so in its mount flags
        // (ext4's emergency read-only): it is known now (`note_error`), and a new object goes
        // to another volume; an existing one is refused as before.
        Err(WriteError::Io(e)) if e.raw_os_error() == Some(libc::EROFS) => {
            create_once(local, key, len, reserve, early)
        }
        r => r,
    }
}

fn create_once(
    local: &Local,
    key: &RelPath,
    len: u64,
    reserve: u64,
    early: bool,
) -> Result<(usize, Claim, TempFile), WriteError> {
    let (volume, room) = local.place_write(key, len, reserve)?;
    let (dir, name) = split(key);
    let v = local
        .volumes
        .get(volume)
        .ok_or(WriteError::VolumeUnavailable)?;
    // Unnamed (O_TMPFILE) where there can be one; debug builds take named ones on a volume
    // whose root holds the test trigger `.segd-test-named-temps` (tests of that path).
    let unnamed = v.test_trigger(".segd-test-named-temps").is_none();
    let temp = v
        .with_root(|root| {
            TempFile::create(root, dir, unnamed, |d| {
                // A directory at the name: the commit's rename could never replace it, so
                // the upload is refused before its body is written.
                if early && d.is_dir(name) {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
                Ok(())
            })
            .map_err(|e| {
                let symlink =
                    e.raw_os_error() == Some(libc::ENOTDIR) && symlink_on_the_way(root, dir);
                (e, symlink)
            })
        })
        .ok_or(WriteError::VolumeUnavailable)?
        .map_err(|(e, symlink)| {
            local.volumes.note_error(volume, &e);
            match e.raw_os_error() {
                Some(libc::ENOSPC) => WriteError::NoSpace,
                // A symlink on the way (never followed), or one that leaves the volume: the
                // read side serves nothing there either (404).
                Some(libc::ELOOP | libc::EXDEV) => WriteError::NotFound,
                Some(libc::ENOTDIR) if symlink => WriteError::NotFound,
                // A file where a directory should be, or a directory at the name.
                Some(libc::ENOTDIR | libc::EISDIR) => WriteError::IsDirectory,
                _ => WriteError::Io(e),
            }
        })?;
    Ok((volume, room, temp))
}

/// Whether one of the components of `dir` (beneath `root`) is a symlink: a symlink opened as a
/// directory without following it fails as `ENOTDIR`, like a file would. Only asked then.
fn symlink_on_the_way(root: std::os::fd::BorrowedFd<'_>, dir: &str) -> bool {
    let mut end = 0;
    for comp in crate::text::components(dir) {
        end += comp.len() + usize::from(end > 0);
        let kind = rustix::fs::statat(root, &dir[..end], rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        match kind {
            Ok(k) if k.is_symlink() => return true,
            Ok(k) if k.is_dir() => {}
            _ => return false,
        }
    }
    false
}

/// A failed write on `volume`: counted against the volume when the device failed; no space
/// left is a 507 like a full reserve. A directory made at the name after the upload was placed
/// (`create` looks) fails the rename: the client's conflict (409), not the disk's fault.
fn write_failed(local: &Local, volume: usize, e: io::Error) -> WriteError {
    local.volumes.note_error(volume, &e);
    match e.raw_os_error() {
        Some(libc::ENOSPC) => WriteError::NoSpace,
        Some(libc::EISDIR) => WriteError::IsDirectory,
        _ => WriteError::Io(e),
    }
}

/// What a committed upload did.
pub struct Committed {
    /// The object did not exist before (201), or was replaced (204).
    pub created: bool,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    /// The body, when the upload kept it.
    pub body: Option<Bytes>,
    /// The path's lock, still held: what the commit changes beyond the file (the live
    /// registry) is done before the next upload of the path may begin.
    lock: Option<PathLock>,
}

impl Committed {
    /// Lets the next upload of the path begin (also when this is dropped).
    pub fn unlock(&mut self) {
        self.lock = None;
    }
}

impl Drop for Upload {
    /// An upload that failed or was cut short removes its temporary file (its drop), except
    /// on a volume whose disk has stopped answering the calls in progress: there the unlink
    /// would hold this thread (a worker, often) as long as the disk does not answer, and the
    /// file is left for the volume to remove once it does ([`TempFile::abandon`]).
    fn drop(&mut self) {
        if let File::Open { temp, volume, .. } = std::mem::replace(&mut self.file, File::Failed) {
            match self.local.volumes.get(volume) {
                Some(v) if v.is_stuck() => temp.abandon(v),
                _ => drop(temp),
            }
        }
    }
}

impl Upload {
    /// The body so far, when the upload keeps it in memory ([`Mode::keep`]).
    pub fn kept(&self) -> Option<&[u8]> {
        self.kept.as_deref()
    }

    /// Whether another upload of this path waits for this one (see [`PathLock::contention`]).
    pub fn contention(&self) -> Contention {
        self.lock
            .as_ref()
            .map_or(Contention(None), PathLock::contention)
    }

    /// A pipe for the body's bytes (see `io::pipe`), when the upload takes them that way: not when
    /// it must have them in memory (a kept or growing upload), nor when no pipe can be had.
    /// Bytes moved into it are announced with [`Upload::piped`].
    ///
    /// The few bytes that came with the request's head, waiting in memory, go into the pipe
    /// first, so that the file gets the body in one write: a first write of a few KiB makes the
    /// kernel zero the rest of its page-cache folio, which the next write then fills again
    /// (about 5 % of an upload's CPU, measured with perf).
    pub fn pipe(&mut self) -> Result<Option<&mut Pipe>, WriteError> {
        let b = &mut self.buf;
        if b.no_pipe {
            return Ok(None);
        }
        if b.pipe.is_none() {
            b.pipe = Pipe::take();
            b.no_pipe = b.pipe.is_none();
        }
        b.head_into_pipe().map_err(WriteError::Io)?;
        Ok(b.pipe.as_mut())
    }

    /// Takes bytes moved into the upload's pipe (`full`: it has no room for more).
    pub async fn piped(&mut self, len: usize, full: bool) -> Result<(), WriteError> {
        self.check_room(len)?;
        self.buf.len += len;
        if full || self.buf.len >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Refuses `more` bytes that would take the volume below its reserve.
    fn check_room(&mut self, more: usize) -> Result<(), WriteError> {
        let written = self.file.written();
        if let File::Open { room, .. } = &mut self.file {
            if !room.fits(written, written + (self.buf.len + more) as u64) {
                self.no_space.inc();
                return Err(WriteError::NoSpace);
            }
        }
        Ok(())
    }

    /// Takes the next piece of the body.
    pub async fn write(&mut self, data: Bytes) -> Result<(), WriteError> {
        if self.buf.piped() > 0 {
            // Bytes in memory after bytes in the pipe: the pipe's go first.
            self.flush().await?;
        }
        self.check_room(data.len())?;
        let on_disk = self.file.written();
        let total = on_disk + (self.buf.len + data.len()) as u64;
        // (Bounded by the body's limit: `[live] max_playlist_bytes` for what is kept.)
        if let Some(k) = &mut self.kept {
            k.extend_from_slice(&data);
        }
        if let Some(p) = &self.publisher {
            // Readers of a growing upload have each chunk at once, from memory; the file gets
            // it with the next batch.
            p.advance_with(total, std::slice::from_ref(&data), on_disk);
        }
        self.buf.push(data);
        if self.buf.len >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is buffered, creating the temporary file first if there is none yet.
    async fn flush(&mut self) -> Result<(), WriteError> {
        let file = std::mem::replace(&mut self.file, File::Failed);
        let need = file.written() + self.buf.len as u64;
        let mut batch = self.buf.take();
        let (local, key) = (Arc::clone(&self.local), self.key.clone());
        let r = self
            .pool
            .run(move || -> Result<_, WriteError> {
                let o = open_for(&local, &key, file, need)?;
                let (busy, mut o) = enter(&local, o)?;
                let w = batch.write_to(&mut o.temp);
                drop(busy);
                Ok((o, w, batch.pipe))
            })
            .await?;
        let (o, written, pipe) = r.map_err(|e| self.refused(e))?;
        self.buf.restore(pipe);
        let new = o.new;
        let volume = self.keep(o);
        if let (Some(p), true, File::Open { temp, .. }) = (&self.publisher, new, &self.file) {
            p.attach(temp.reader().map_err(WriteError::Io)?);
        }
        written.map_err(|e| self.refused(write_failed(&self.local, volume, e)))?;
        if let Some(p) = &self.publisher {
            // Readers of what was just written may now read it from the file.
            p.written(self.file.written());
        }
        Ok(())
    }

    /// Keeps `o` as the upload's file (its drop removes it if the upload fails); returns its
    /// volume.
    fn keep(&mut self, o: Opened) -> usize {
        let volume = o.volume;
        let mut temp = o.temp;
        temp.count_removal(self.temp_removed.clone());
        self.file = File::Open {
            temp,
            volume,
            room: o.room,
        };
        volume
    }

    /// Counts a 507 as it goes by.
    fn refused(&self, e: WriteError) -> WriteError {
        if matches!(e, WriteError::NoSpace) {
            self.no_space.inc();
        }
        e
    }

    /// Writes what is buffered, then renames the file into place (durably, if configured). The
    /// first read after this returns the new bytes: the path's cached descriptor is forgotten.
    pub async fn commit(mut self) -> Result<Committed, WriteError> {
        let file = std::mem::replace(&mut self.file, File::Failed);
        let need = file.written() + self.buf.len as u64;
        let mut batch = self.buf.take();
        let durable = self.durable;
        let (local, key) = (Arc::clone(&self.local), self.key.clone());
        if let Some(wt) = self.through.clone() {
            // Written through: the bucket has it (or the queue says it will) before the rename.
            let w = Arc::clone(&wt);
            let r = Pool::General
                .run(move || -> Result<_, WriteError> {
                    let o = open_for(&local, &key, file, need)?;
                    let (busy, mut o) = enter(&local, o)?;
                    let sealed = batch
                        .write_to(&mut o.temp)
                        .and_then(|()| match w.durability {
                            Durability::Upstream => o.temp.seal(durable).map(Some),
                            Durability::Local => w.enqueue(Op::Put, &key).map(|()| None),
                        });
                    drop(busy);
                    Ok((o, sealed, batch.pipe))
                })
                .await?;
            let (o, sealed, pipe) = r.map_err(|e| self.refused(e))?;
            self.buf.restore(pipe);
            let volume = self.keep(o);
            let sealed = sealed.map_err(|e| self.refused(write_failed(&self.local, volume, e)))?;
            if let Some((st, reader)) = sealed {
                wt.put(&self.key, reader, &ObjectMeta::from_stat(&st))
                    .await?;
            }
            return self.rename().await;
        }
        // Placed and created now if need be, the last write and the rename: one trip to the
        // blocking pool.
        let (name, outage) = (self.name.clone(), self.outage);
        let removed = self.temp_removed.clone();
        let r = self
            .pool
            .run(move || {
                let o = open_for(&local, &key, file, need)?;
                let (_busy, o) = enter(&local, o)?;
                let (mut temp, volume) = (o.temp, o.volume);
                temp.count_removal(removed);
                let written = batch.write_to(&mut temp);
                if let Some(p) = batch.pipe {
                    p.recycle();
                }
                let done = written.and_then(|()| {
                    let journaled = before_commit(&local, volume, &key, &temp, outage, durable);
                    let done =
                        temp.commit_or_remake(&name, durable, || remake(&local, volume, &key));
                    if let Ok((false, _)) = done {
                        after_create(&local, volume, &key, journaled);
                    }
                    done
                });
                done.map(|(existed, st)| (existed, st, volume))
                    .map_err(|e| write_failed(&local, volume, e))
            })
            .await?;
        // A temporary file that went with the failed call was counted by its drop.
        let (existed, st, volume) = r.map_err(|e| self.refused(e))?;
        self.committed(existed, &st, volume)
    }

    /// Renames the complete file into place (durably, if configured).
    async fn rename(mut self) -> Result<Committed, WriteError> {
        let File::Open { temp, volume, .. } = std::mem::replace(&mut self.file, File::Failed)
        else {
            return Err(WriteError::Io(io::Error::other("upload already failed")));
        };
        let (name, durable) = (self.name.clone(), self.durable);
        let (local, key, outage) = (Arc::clone(&self.local), self.key.clone(), self.outage);
        let r = Pool::General
            .run(move || {
                let v = local
                    .volumes
                    .get(volume)
                    .ok_or(WriteError::VolumeUnavailable)?;
                let Some(_busy) = v.enter() else {
                    temp.abandon(v);
                    return Err(WriteError::VolumeUnavailable);
                };
                let journaled = before_commit(&local, volume, &key, &temp, outage, durable);
                let done = temp.commit_or_remake(&name, durable, || remake(&local, volume, &key));
                if let Ok((false, _)) = done {
                    after_create(&local, volume, &key, journaled);
                }
                done.map_err(|e| write_failed(&local, volume, e))
            })
            .await?;
        let (existed, st) = r.map_err(|e| self.refused(e))?;
        self.committed(existed, &st, volume)
    }

    /// The file is in place: readers see it from now on.
    fn committed(
        mut self,
        existed: bool,
        st: &rustix::fs::Stat,
        volume: usize,
    ) -> Result<Committed, WriteError> {
        self.local.forget(&self.key);
        self.local.volumes.remember(&self.key, volume);
        let meta = ObjectMeta::from_stat(st);
        if meta.len > 0 {
            // The volume's probe may read it from the device (a volume only written to had
            // nothing to read, and was probed from cached metadata alone).
            if let Some(v) = self.local.volumes.get(volume) {
                v.sample_object(&self.key);
            }
        }
        if let Some(p) = self.publisher.take() {
            p.done(meta.len);
        }
        Ok(Committed {
            created: !existed,
            etag: meta.etag_value(),
            last_modified: crate::http::http_date_value(meta.modified()),
            body: self.kept.take().map(BytesMut::freeze),
            lock: self.lock.take(),
        })
    }
}

/// Before an upload's rename (blocking, under the path's lock): when a volume is, or was when
/// the upload began, down and the upload is about to create its object, the volumes down get a
/// journal line first ([`outage`]; synced when the upload is `durable`), so no crash after the
/// rename can lose it. Returns whether it journaled.
fn before_commit(
    local: &Local,
    volume: usize,
    key: &RelPath,
    temp: &TempFile,
    outage_at_start: bool,
    durable: bool,
) -> bool {
    let (_, name) = split(key);
    if !(outage_at_start || outage::needed(&local.volumes)) || temp.target_exists(name) {
        return false;
    }
    outage::note(
        &local.volumes,
        Some(volume),
        key,
        outage::Change::Put,
        durable,
    );
    true
}

/// An upload created its object (blocking, under the path's lock): when a volume is or was down
/// meanwhile, older copies elsewhere go; a volume that went down since [`before_commit`] gets its
/// journal line now.
fn after_create(local: &Local, volume: usize, key: &RelPath, journaled: bool) {
    if journaled || outage::needed(&local.volumes) {
        outage::created(local, volume, key, journaled);
    }
}

// === placement and the public calls (on `Local`) ===

/// The directory of `key` on `volume`, walked to and made again for a commit that found it
/// removed (see [`TempFile::commit_or_remake`]).
fn remake(local: &Local, volume: usize, key: &RelPath) -> io::Result<Dir> {
    let (dir, _) = split(key);
    (local.volumes.get(volume))
        .and_then(|v| v.with_root(|root| Dir::open(root, dir, true)))
        .unwrap_or_else(|| Err(io::Error::other("the volume's root is not open")))
}

/// The directory part and the file name of a sanitised path.
fn split(rel: &RelPath) -> (&str, &str) {
    let s = rel.as_str();
    match crate::text::rfind(s, b'/') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => ("", s),
    }
}

impl Local {
    /// The volume an upload of `rel` (about `len` bytes) goes to, and the room it has there.
    fn place_write(
        &self,
        rel: &RelPath,
        len: u64,
        reserve: u64,
    ) -> Result<(usize, Claim), WriteError> {
        let vols = &self.volumes;
        // A body of unknown length (chunked, placed before it arrives: `Expect: 100-continue`)
        // says 0: a volume with no room left above its reserve must not take it either (it
        // was picked, and the first byte written was a 507, while other volumes had room).
        let len = len.max(1);
        // The room above the reserve on volume `i`: `NoSpace` when `len` does not fit, `ReadOnly`
        // when its filesystem is mounted read-only (a new object goes to another volume then).
        let room = |i: usize| -> Result<(usize, Claim), WriteError> {
            let v = vols.get(i).ok_or(WriteError::NoSpace)?;
            let free = v
                .free_bytes()
                .map_err(|_| WriteError::NoSpace)?
                .ok_or(WriteError::ReadOnly)?;
            if v.promise(len, free.saturating_sub(reserve)) {
                let claim = Claim {
                    volumes: Arc::clone(vols),
                    volume: i,
                    reserve,
                    granted: len,
                    settled: 0,
                };
                Ok((i, claim))
            } else {
                Err(WriteError::NoSpace)
            }
        };
        // One volume: nothing to choose, and no lookup to make.
        let mut served = vols.served();
        if let (Some((only, v)), None) = (served.next(), served.next()) {
            if !v.is_healthy() {
                return Err(WriteError::VolumeUnavailable);
            }
            return room(only);
        }
        // 1. Where it exists: replace in place (a copy written elsewhere would leave the old
        // one to be served; on a read-only volume the answer is `ReadOnly`).
        let mut saw_unhealthy = false;
        for (i, v) in vols.served() {
            if !v.is_healthy() {
                saw_unhealthy = true;
                continue;
            }
            match v.try_stat_contained(rel) {
                Ok(Some(_)) => return room(i),
                Ok(None) => {}
                // Its disk does not answer: whether it holds the object nobody can tell, and a
                // copy written elsewhere could leave the old one to be served when it answers
                // again. 503 for this upload; the refusal marked the volume down, so the next
                // ones go elsewhere, journaled (the outage journal applies).
                Err(volumes::Stuck) => return Err(WriteError::VolumeUnavailable),
            }
        }
        // 2. A new object: where its asset is, else the placement rule's order.
        let asset = rel.asset_key();
        let asset_rel = volumes::sanitize(&format!("/{asset}")).ok();
        // Only volumes that answer are asked: a volume marked down (or whose disk does not
        // answer its calls) cannot take the object anyway, and asking it could wait as long as
        // its disk (acceptance F2: new uploads for healthy volumes hung behind a hung one).
        let holds_asset = |i: usize| {
            asset_rel
                .as_ref()
                .and_then(|a| {
                    vols.get(i)
                        .filter(|v| v.is_healthy() && !v.is_stuck())
                        .and_then(|v| v.stat_contained(a))
                })
                .is_some()
        };
        let n = vols.served().count();
        if n == 0 {
            return Err(WriteError::VolumeUnavailable);
        }
        let preferred = vols.placement(rel);
        let order: Vec<usize> = vols
            .remembered(rel)
            .into_iter()
            .chain((0..n).filter(|&i| holds_asset(i)))
            .chain(std::iter::once(preferred))
            .chain((0..n).map(|k| (preferred + k) % n))
            .collect();
        let mut seen = Vec::with_capacity(n);
        let mut full = false;
        let mut saw_read_only = false;
        for i in order {
            if seen.contains(&i) {
                continue;
            }
            seen.push(i);
            if !vols.get(i).is_some_and(volumes::Volume::is_healthy) {
                saw_unhealthy = true;
                continue;
            }
            match room(i) {
                Ok(placed) => return Ok(placed),
                Err(WriteError::ReadOnly) => saw_read_only = true,
                Err(_) => full = true,
            }
        }
        if full {
            Err(WriteError::NoSpace)
        } else if saw_unhealthy {
            Err(WriteError::VolumeUnavailable)
        } else if saw_read_only {
            Err(WriteError::ReadOnly)
        } else {
            Err(WriteError::NoSpace)
        }
    }
}

/// Starts an upload of `rel`: takes the path's lock and announces a growing upload. The volume
/// is picked, missing directories created and the temporary file opened (blocking: on the pool)
/// now when the answer must come before the body ([`Mode::decide_first`]) or the body will not
/// fit in one write; otherwise with the first write, usually the commit.
#[allow(clippy::too_many_arguments)]
pub async fn begin(
    local: Arc<Local>,
    locks: &PathLocks,
    growing: &Arc<GrowingSet>,
    rel: &RelPath,
    len_hint: u64,
    reserve: u64,
    durable: bool,
    inline: bool,
    mode: Mode,
    through: Option<Arc<WriteThrough>>,
    writers: Arc<Writers>,
    counters: (prometheus::IntCounter, prometheus::IntCounter),
) -> Result<Upload, WriteError> {
    let (temp_removed, no_space) = counters;
    let pool = match (durable, inline) {
        (true, _) => Pool::General,
        (false, false) => Pool::Writers(writers),
        (false, true) => Pool::Inline(writers, Arc::clone(&local.volumes)),
    };
    let lock = locks.lock(rel).await;
    // A growing upload is announced before its file exists: a reader that asks at once waits,
    // and takes the first chunks from memory (they stay there until the file has them).
    let publisher = mode.growing.then(|| growing.announce(rel.as_str()));
    let mut file = File::Later { len_hint, reserve };
    if mode.decide_first || len_hint > WRITE_BUFFER as u64 {
        let (l, key) = (Arc::clone(&local), rel.clone());
        let (volume, room, temp) = pool
            .run(move || create(&l, &key, len_hint, reserve, true))
            .await??;
        if let Some(p) = &publisher {
            p.attach(temp.reader().map_err(WriteError::Io)?);
        }
        let mut temp = temp;
        temp.count_removal(temp_removed.clone());
        file = File::Open { temp, volume, room };
    }
    let outage = outage::needed(&local.volumes);
    Ok(Upload {
        kept: mode.keep.then(BytesMut::new),
        publisher,
        file,
        // A kept or growing body is needed in memory (readers of a growing one have each
        // chunk at once).
        buf: Pending::new(!(mode.keep || mode.growing)),
        name: split(rel).1.to_owned(),
        key: rel.clone(),
        local,
        durable,
        temp_removed,
        no_space,
        through,
        pool,
        outage,
        lock: Some(lock),
    })
}

/// Deletes `rel` from the volume that holds it, then removes directories the deletion left
/// empty, deepest first, never at or above `keep` path segments (the ingest prefix).
pub async fn delete(
    local: Arc<Local>,
    _lock: PathLock,
    rel: &RelPath,
    keep: usize,
    through: Option<Arc<WriteThrough>>,
) -> Result<(), WriteError> {
    let mut in_bucket = false;
    if let Some(wt) = through {
        // The bucket first: with durability "upstream" a failure there leaves both copies; with
        // "local" the deletion is queued before the file goes.
        match wt.durability {
            Durability::Upstream => in_bucket = wt.delete_existing(rel).await?,
            Durability::Local => {
                let key = rel.clone();
                Pool::General
                    .run(move || wt.enqueue(Op::Delete, &key))
                    .await?
                    .map_err(WriteError::Io)?;
            }
        }
    }
    let (l, key) = (Arc::clone(&local), rel.clone());
    let r = Pool::General
        .run(move || -> Result<(), WriteError> {
            let (dir, name) = split(&key);
            // Every healthy volume is asked, not only the first that has it: a copy left on
            // another volume (an upload that replaced the object elsewhere while its volume
            // was down) would otherwise be served after this 204.
            // Only regular files are objects, as for reads: a symlink something else planted
            // is left alone (404 when nothing else is there), and a directory is 409 only when
            // no volume holds a file of the name (after an outage a name can be a file on one
            // volume and a directory on another: the file copies go, the directory is another
            // object's path).
            // A volume whose disk does not answer the calls in progress (see
            // `Volume::enter`) cannot say whether it holds a copy, nor remove it: nothing is
            // removed anywhere (a copy left there would be served again once it answers).
            if l.volumes
                .served()
                .any(|(_, v)| v.is_healthy() && v.is_stuck())
            {
                return Err(WriteError::VolumeUnavailable);
            }
            let mut unavailable = false;
            let mut directory = false;
            let mut removed = false;
            for (i, v) in l.volumes.served() {
                if !v.is_healthy() {
                    unavailable = true;
                    continue;
                }
                let done = v.with_root(|root| -> Result<bool, WriteError> {
                    let d = match Dir::open(root, dir, false) {
                        Ok(d) => d,
                        Err(_) => return Ok(false),
                    };
                    let gone = |e: &io::Error| {
                        matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
                    };
                    match d.entry_type(name) {
                        Ok(t) if t.is_file() => {}
                        Ok(t) => {
                            directory |= t.is_dir();
                            return Ok(false);
                        }
                        Err(e) if gone(&e) => return Ok(false),
                        Err(e) => {
                            l.volumes.note_error(i, &e);
                            return Err(WriteError::Io(e));
                        }
                    }
                    match d.unlink(name) {
                        Ok(()) => {}
                        Err(e) if gone(&e) => return Ok(false),
                        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                            directory = true;
                            return Ok(false);
                        }
                        Err(e) => {
                            l.volumes.note_error(i, &e);
                            return Err(WriteError::Io(e));
                        }
                    }
                    // Directories the deletion left empty go, below the prefix.
                    remove_empty(root, dir, keep);
                    Ok(true)
                });
                match done {
                    Some(r) => removed |= r?,
                    // Refused: it got stuck meanwhile.
                    None => unavailable = true,
                }
            }
            if removed {
                l.forget(&key);
                // A copy on a volume that is down must not come back with it.
                outage::note(&l.volumes, None, &key, outage::Change::Delete, false);
                Ok(())
            } else if directory {
                Err(WriteError::IsDirectory)
            } else if unavailable {
                Err(WriteError::VolumeUnavailable)
            } else {
                Err(WriteError::NotFound)
            }
        })
        .await?;
    match r {
        // The object lived only in the bucket (another node took its upload): deleted there.
        Err(WriteError::NotFound) if in_bucket => Ok(()),
        r => r,
    }
}

/// Whether `rel` is a directory on a healthy volume (blocking).
pub fn is_directory(local: &Local, rel: &RelPath) -> bool {
    local.volumes.served().any(|(_, v)| {
        v.is_healthy()
            && v.with_root(|root| Dir::open(root, rel.as_str(), false).is_ok())
                .unwrap_or(false)
    })
}

// === per-path serialisation ===

type LockMap = Mutex<HashMap<String, Arc<PathEntry>, foldhash::fast::RandomState>>;

/// One path's lock, and how many uploads and DELETEs of it wait for it.
#[derive(Default)]
struct PathEntry {
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// Clients' writes waiting (not segd's own: the write-through queue, the outage
    /// settlement), which a stalled upload gives way to ([`Contention::waiting`]).
    clients_waiting: std::sync::atomic::AtomicUsize,
}

/// Concurrent writes to one path wait for each other, so a conditional write (`If-Match`,
/// `If-None-Match: *`) and the rename it leads to see the same object.
#[derive(Default)]
pub struct PathLocks {
    held: Arc<LockMap>,
}

/// Held while a path is being written; the map entry goes with the last holder.
pub struct PathLock {
    key: String,
    entry: Option<Arc<PathEntry>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    held: Arc<LockMap>,
}

/// Counts a client's write as waiting while it does (also when its request is dropped).
struct Waiting<'a>(&'a PathEntry);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        (self.0.clients_waiting).fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PathLocks {
    /// The lock of `rel` for a client's upload or DELETE: a stalled upload that holds it gives
    /// way to this one.
    pub async fn lock(&self, rel: &RelPath) -> PathLock {
        self.lock_as(rel, true).await
    }

    /// The lock of `rel` for segd's own work on it (the write-through queue, the outage
    /// settlement), which no upload gives way to.
    pub async fn lock_quietly(&self, rel: &RelPath) -> PathLock {
        self.lock_as(rel, false).await
    }

    async fn lock_as(&self, rel: &RelPath, client: bool) -> PathLock {
        let entry = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(held.entry(rel.as_str().to_owned()).or_default())
        };
        let guard = if client {
            (entry.clients_waiting).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _waiting = Waiting(&entry);
            Arc::clone(&entry.mutex).lock_owned().await
        } else {
            Arc::clone(&entry.mutex).lock_owned().await
        };
        PathLock {
            key: rel.as_str().to_owned(),
            entry: Some(entry),
            guard: Some(guard),
            held: Arc::clone(&self.held),
        }
    }
}

impl PathLock {
    /// Whether a client's upload or DELETE of the path waits for this lock, as a handle that
    /// can be asked while the upload is borrowed.
    pub fn contention(&self) -> Contention {
        Contention(self.entry.clone())
    }
}

/// See [`PathLock::contention`].
pub struct Contention(Option<Arc<PathEntry>>);

impl Contention {
    /// Whether a client's upload or DELETE waits for the path.
    pub fn waiting(&self) -> bool {
        (self.0.as_ref())
            .is_some_and(|e| e.clients_waiting.load(std::sync::atomic::Ordering::Relaxed) > 0)
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        self.guard = None;
        self.entry = None;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it now: nobody is writing or waiting (a contention handle still
        // alive counts as a holder, and the entry then goes with a later lock's drop).
        if held
            .get(&self.key)
            .is_some_and(|e| Arc::strong_count(e) == 1)
        {
            held.remove(&self.key);
        }
    }
}
