//! Disk I/O off the request threads.
//!
//! Backends, chosen once at start (`[server] io_backend`):
//! - `uring`: one thread per volume running a tokio-uring runtime, fed by a bounded queue
//!   (`io_queue_depth` jobs in flight per volume). Reads and prefetches are io_uring reads, so a
//!   slow disk fills its own queue and stalls only requests for its own objects.
//! - `threads`: the same jobs as `pread` on tokio's blocking pool, bounded per volume by a
//!   semaphore. Used when io_uring is unavailable (old kernel, seccomp, `io_uring_disabled`);
//!   the fallback is logged once and shown by `segd_io_backend{backend}`.
//!
//! Where blocking happens, per operation:
//! - open + fstat (`open`): the blocking pool, bounded by one semaphore (openat2 with
//!   RESOLVE_BENEATH has no tokio-uring equivalent);
//! - body reads for copying writers (`read`) and cache fills: the volume's backend;
//! - sendfile bodies: the request thread, but only after `resident` (one-byte
//!   `preadv2(RWF_NOWAIT)` probes at both ends of the range) says the pages are cached, or after
//!   `prefetch` pulled them in through the backend. Concurrent prefetches of one range coalesce.

pub mod mapped;
pub mod pipe;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::volumes::{LookupError, ObjectMeta, Opened, RelPath, Volumes};

/// Largest single read issued for a prefetch or a streamed body chunk.
pub const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Uring,
    Threads,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Threads => "threads",
        }
    }
}

/// A job for a volume's io_uring worker; the reply carries the result back.
enum Job {
    Read {
        file: Arc<File>,
        off: u64,
        len: usize,
        reply: oneshot::Sender<io::Result<Bytes>>,
    },
    Prefetch {
        file: Arc<File>,
        off: u64,
        len: u64,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

enum Lane {
    Uring(mpsc::Sender<Job>),
    Threads(Arc<Semaphore>),
}

pub struct Io {
    kind: BackendKind,
    lanes: Vec<Lane>,
    /// Per-volume read latency (`segd_volume_read_seconds{volume}`), if the caller wants it.
    timings: Vec<Option<prometheus::Histogram>>,
    opens: Arc<Semaphore>,
    /// Ranges recently prefetched (and prefetches in flight, which callers share).
    prefetched: moka::future::Cache<(u64, u64, u64, u64), ()>,
}

/// Reads exactly `len` bytes at `off` with pread, or fails (short file → UnexpectedEof).
pub fn pread_exact(file: &File, off: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being read",
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.freeze())
}

/// Whether the page holding byte `off` is in the page cache (a one-byte `RWF_NOWAIT` read: it
/// never waits for the disk). Errors other than EAGAIN count as resident, so the sendfile that
/// follows reports them.
pub fn resident(file: &File, off: u64) -> bool {
    let mut byte = [0u8; 1];
    !matches!(
        pread_cached(file, off, &mut byte),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

/// Whether an error of [`pread_cached`] says only that the bytes cannot be read without waiting:
/// some would need the disk (`WouldBlock`), or the filesystem takes no `RWF_NOWAIT` reads at all
/// (tmpfs and overlayfs answer EOPNOTSUPP on Linux 6.18). Read them the usual way then.
pub fn not_cached(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error())
}

/// Reads into `buf` at `off` only from the page cache (`preadv2(RWF_NOWAIT)`): `WouldBlock` when
/// any of it would need the disk (see [`not_cached`]).
pub fn pread_cached(file: &File, off: u64, buf: &mut [u8]) -> io::Result<usize> {
    rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(buf)],
        off,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .map_err(io::Error::from)
}

async fn uring_job(job: Job) {
    match job {
        Job::Read {
            file,
            off,
            len,
            reply,
        } => {
            let _ = reply.send(uring_read(&file, off, len).await);
        }
        Job::Prefetch {
            file,
            off,
            len,
            reply,
        } => {
            let mut res = Ok(());
            let mut pos = off;
            let end = off + len;
            let mut buf = Vec::with_capacity(CHUNK);
            let f = match file.try_clone() {
                Ok(f) => tokio_uring::fs::File::from_std(f),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            while pos < end {
                let want = ((end - pos) as usize).min(CHUNK);
                buf.clear();
                let (r, b) = f
                    .read_at(tokio_uring::buf::BoundedBuf::slice(buf, ..want), pos)
                    .await;
                buf = b.into_inner();
                match r {
                    Ok(0) => break,
                    Ok(n) => pos += n as u64,
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            let _ = f.close().await;
            let _ = reply.send(res);
        }
    }
}

async fn uring_read(file: &File, off: u64, len: usize) -> io::Result<Bytes> {
    // tokio-uring owns (and closes) its descriptor: give it a duplicate of ours.
    let f = tokio_uring::fs::File::from_std(file.try_clone()?);
    let (res, buf) = f.read_exact_at(Vec::with_capacity(len), off).await;
    let _ = f.close().await;
    res.map(|()| Bytes::from(buf))
}

fn start_uring_lane(i: usize, depth: usize) -> io::Result<mpsc::Sender<Job>> {
    let (tx, mut rx) = mpsc::channel::<Job>(depth);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name(format!("segd-io-{i}"))
        .spawn(move || {
            let entries = (depth.next_power_of_two() as u32).clamp(8, 4096);
            let rt = match tokio_uring::Runtime::new(tokio_uring::builder().entries(entries)) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(async move {
                let inflight = Arc::new(Semaphore::new(depth));
                while let Some(job) = rx.recv().await {
                    let Ok(permit) = Arc::clone(&inflight).acquire_owned().await else {
                        break;
                    };
                    tokio_uring::spawn(async move {
                        uring_job(job).await;
                        drop(permit);
                    });
                }
            });
        })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| io::Error::other("io_uring worker did not start"))??;
    Ok(tx)
}

impl Io {
    /// Records read latencies per volume from now on.
    pub fn with_timings(mut self, timings: Vec<prometheus::Histogram>) -> Io {
        self.timings = timings.into_iter().map(Some).collect();
        self
    }

    fn observe(&self, volume: usize, since: std::time::Instant) {
        if let Some(Some(h)) = self.timings.get(volume) {
            h.observe(since.elapsed().as_secs_f64());
        }
    }

    /// Starts the backend for `volumes` volumes. `prefer` is `auto`, `uring` or `threads`.
    pub fn new(volumes: usize, depth: usize, prefer: &str) -> Io {
        let depth = depth.max(1);
        let mut lanes = Vec::with_capacity(volumes);
        let mut kind = if prefer == "threads" {
            BackendKind::Threads
        } else {
            BackendKind::Uring
        };
        if kind == BackendKind::Uring {
            for i in 0..volumes {
                match start_uring_lane(i, depth) {
                    Ok(tx) => lanes.push(Lane::Uring(tx)),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring is unavailable; disk I/O falls back to the blocking thread pool");
                        kind = BackendKind::Threads;
                        lanes.clear();
                        break;
                    }
                }
            }
        }
        if kind == BackendKind::Threads {
            lanes = (0..volumes)
                .map(|_| Lane::Threads(Arc::new(Semaphore::new(depth))))
                .collect();
        }
        Io {
            kind,
            lanes,
            timings: Vec::new(),
            opens: Arc::new(Semaphore::new(64)),
            prefetched: moka::future::Cache::builder()
                .max_capacity(65_536)
                .time_to_live(Duration::from_secs(2))
                .build(),
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Finds and opens `rel` across volumes on the blocking pool, at most 64 opens at once. A
    /// path found nowhere releases its slot before the roots are checked (`confirm_missing`;
    /// `force`: check them even if they were checked a moment ago), so misses never hold up
    /// opens of objects that exist.
    pub async fn open(
        &self,
        volumes: &Arc<Volumes>,
        rel: &RelPath,
        force: bool,
    ) -> Result<Opened, LookupError> {
        let opened = {
            let Ok(_permit) = self.opens.acquire().await else {
                return Err(LookupError::Overloaded);
            };
            let (v, rel) = (Arc::clone(volumes), rel.clone());
            tokio::task::spawn_blocking(move || v.open(&rel))
                .await
                .unwrap_or(Err(LookupError::Overloaded))
        };
        match opened {
            Err(LookupError::NotFound) => {
                let v = Arc::clone(volumes);
                tokio::task::spawn_blocking(move || v.confirm_missing(force))
                    .await
                    .unwrap_or(Err(LookupError::Overloaded))?;
                Err(LookupError::NotFound)
            }
            other => other,
        }
    }

    /// Reads `len` bytes at `off` through the volume's backend.
    pub async fn read(
        &self,
        volume: usize,
        file: Arc<File>,
        off: u64,
        len: usize,
    ) -> io::Result<Bytes> {
        let t0 = std::time::Instant::now();
        let f = Arc::clone(&file);
        let r = self
            .submit(
                volume,
                move |reply| Job::Read {
                    file,
                    off,
                    len,
                    reply,
                },
                move || pread_exact(&f, off, len),
            )
            .await;
        self.observe(volume, t0);
        r
    }

    /// Brings `len` bytes at `off` into the page cache unless they are already there.
    /// Concurrent calls for the same range share one prefetch.
    pub async fn ensure_resident(
        &self,
        volume: usize,
        file: &Arc<File>,
        meta: &ObjectMeta,
        off: u64,
        len: u64,
    ) -> io::Result<()> {
        if len == 0 || (resident(file, off) && resident(file, off + len - 1)) {
            return Ok(());
        }
        let key = (meta.dev, meta.ino, off, len);
        let (f1, f2) = (Arc::clone(file), Arc::clone(file));
        let fut = self.submit(
            volume,
            move |reply| Job::Prefetch {
                file: f1,
                off,
                len,
                reply,
            },
            move || prefetch_blocking(&f2, off, len),
        );
        let t0 = std::time::Instant::now();
        let r = self
            .prefetched
            .try_get_with(key, fut)
            .await
            // With its OS error code: an EIO here is a device fault, counted against the
            // volume (it was an error of no code, and a failing disk's reads went unseen).
            .map_err(|e| crate::volumes::clone_error(&e));
        self.observe(volume, t0);
        r
    }

    /// Runs one disk job on the volume's lane: as an io_uring job, or as `blocking` on the pool
    /// under the lane's semaphore.
    async fn submit<T: Send + 'static>(
        &self,
        volume: usize,
        uring: impl FnOnce(oneshot::Sender<io::Result<T>>) -> Job,
        blocking: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match self.lanes.get(volume) {
            Some(Lane::Uring(tx)) => {
                let (reply, rx) = oneshot::channel();
                tx.send(uring(reply))
                    .await
                    .map_err(|_| io::Error::other("io worker stopped"))?;
                rx.await
                    .map_err(|_| io::Error::other("io worker dropped the job"))?
            }
            Some(Lane::Threads(sem)) => {
                let _permit = sem
                    .acquire()
                    .await
                    .map_err(|_| io::Error::other("io pool closed"))?;
                tokio::task::spawn_blocking(blocking)
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?
            }
            None => Err(io::Error::other("no such volume")),
        }
    }
}

/// The threads backend's prefetch: readahead advice, then reads that pull the range into the
/// page cache (their bytes are discarded).
fn prefetch_blocking(file: &File, off: u64, len: u64) -> io::Result<()> {
    // Advisory only: a failure changes nothing but speed.
    let _ = rustix::fs::fadvise(
        file,
        off,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let want = ((end - pos) as usize).min(CHUNK);
        match pread_exact(file, pos, want) {
            Ok(_) => pos += want as u64,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// 64 random bits for temporary names and connection IDs (unpredictable enough to avoid
/// collisions and guessing; not for secrets).
pub fn random_bits() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_backends_read_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.bin");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).expect("write");
        let file = Arc::new(File::open(&p).expect("open"));
        for prefer in ["auto", "threads"] {
            let io = Io::new(1, 8, prefer);
            let b = io
                .read(0, Arc::clone(&file), 1000, 300_000)
                .await
                .expect("read");
            assert_eq!(&b[..], &data[1000..301_000], "{prefer} ({:?})", io.kind());
            let err = io
                .read(0, Arc::clone(&file), 500_000, 200_000)
                .await
                .expect_err("short");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{prefer}");
            let meta = ObjectMeta {
                len: data.len() as u64,
                dev: 1,
                ino: 2,
                mtime_ns: 3,
                ctime_ns: 4,
            };
            io.ensure_resident(0, &file, &meta, 0, data.len() as u64)
                .await
                .expect("prefetch");
            assert!(resident(&file, 0) && resident(&file, data.len() as u64 - 1));
        }
        assert_eq!(Io::new(1, 8, "threads").kind(), BackendKind::Threads);
    }
}
