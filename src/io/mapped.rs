//! Memory-mapped segment bodies for the TLS writers, and what happens when a mapped file is
//! truncated (the SIGBUS contract).
//!
//! Over TLS every body byte passes through user space to be encrypted. Segments small enough for
//! the hot-body cache are encrypted from the cached bytes; larger immutable segments (never
//! playlists) are encrypted straight from a read-only shared mapping of the file, so no copy is
//! made into a read buffer first. Before a chunk is handed out its pages are made resident through
//! the volume's I/O backend (no disk wait on a request thread) and the file is checked to still
//! hold the object (size and mtime, `store::body::Chunks`), so it covers the chunk and was not
//! rewritten in place.
//!
//! ## Contract
//! Segment files are immutable while served: replace them by writing a new file and renaming it
//! over the old one (the old mapping keeps the old inode alive; deleting is safe too). If a mapped
//! file is nevertheless truncated, touching a page past the new end raises SIGBUS. segd handles
//! it: the handler finds the mapping that owns the address, maps a zero page over the faulting page
//! (so the interrupted copy or encryption can finish), marks the mapping poisoned and flags the
//! thread. The TLS connection's socket writer ([`FaultGuard`]) sees the flag before the ciphertext
//! made from the zero page is written and fails the connection; the body also fails on its next
//! chunk. So the process survives, the connection is closed before a wrong byte leaves, the
//! response never completes, `segd_mmap_faults_total` counts it, and the next request sees the
//! file as it now is (a new identity, a new mapping). A fault outside every mapping is not ours:
//! the previous handler (or the default action) deals with it.
//!
//! Mappings are cached by file identity (`MapCache`); each takes one slot of a fixed table the
//! signal handler can search without locks or allocation. When the table is full, or the handler
//! could not be installed, bodies fall back to chunked reads.

use std::cell::Cell;
use std::fs::File;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::volumes::ObjectMeta;

/// Mappings that can exist at once (the open-file cache is bounded by half the fd limit, 20000
/// here; mappings are bounded separately by [`MapCache`]).
const SLOTS: usize = 4096;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    poisoned: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    poisoned: AtomicBool::new(false),
};
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// SIGBUS faults handled (pages replaced by zeros) since start.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALLED: OnceLock<bool> = OnceLock::new();
/// The action that was in place before ours, for faults outside our mappings.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

thread_local! {
    /// Set by the handler on the faulting thread; taken by the socket writer that runs next on
    /// this thread within the same poll.
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the SIGBUS handler once. False if it could not be installed (mapping stays off).
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        PAGE.store(rustix::param::page_size(), Ordering::Relaxed);
        // SAFETY: a zeroed sigaction is a valid value to fill in; the handler is an extern "C"
        // function with the SA_SIGINFO signature; `old` receives the previous action.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &act, &mut old) != 0 {
                return false;
            }
            let _ = PREVIOUS.set(old);
        }
        true
    })
}

/// SIGBUS faults handled since start.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Whether a mapped page faulted on this thread since the last call (and clears the flag).
pub fn take_thread_fault() -> bool {
    FAULTED.with(|f| f.replace(false))
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only async-signal-safe work here: atomics, one mmap(2), thread-local Cell.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for slot in TABLE.iter() {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 {
            continue;
        }
        let len = slot.len.load(Ordering::Acquire);
        if addr < start || addr >= start + len {
            continue;
        }
        let at = addr & !(page - 1);
        // SAFETY: replaces one page inside a mapping this process owns (the slot is registered
        // only while the mapping exists) with an anonymous zero page.
        let r = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            break;
        }
        slot.poisoned.store(true, Ordering::Release);
        FAULTED.with(|f| f.set(true));
        FAULTS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // Not one of ours: hand it to whoever was there before, or let the default action run when
    // the instruction faults again.
    if let Some(prev) = PREVIOUS.get() {
        let h = prev.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with this signature.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: as above, the plain handler signature.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
            return;
        }
    }
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

/// A read-only shared mapping of a whole file, registered with the SIGBUS handler.
pub struct Mapping {
    map: memmap2::Mmap,
    slot: usize,
}

impl Mapping {
    /// Maps `file` (whose length is `len`), or `None` if mapping is unavailable (handler not
    /// installed, table full, empty file, or mmap refused).
    fn new(file: &File, len: u64) -> Option<Mapping> {
        if len == 0 || !INSTALLED.get().copied().unwrap_or(false) {
            return None;
        }
        // SAFETY: read-only shared mapping; a later truncation by another process is the SIGBUS
        // case the module's handler covers (see the contract above).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(usize::try_from(len).ok()?)
                .map(file)
        }
        .ok()?;
        let start = map.as_ptr() as usize;
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.poisoned.store(false, Ordering::Relaxed);
                slot.len.store(map.len(), Ordering::Release);
                return Some(Mapping { map, slot: i });
            }
        }
        None
    }

    /// Whether a page of this mapping faulted (the file was truncated under it).
    pub fn poisoned(&self) -> bool {
        TABLE[self.slot].poisoned.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `len` bytes at `off` as `Bytes` that keep the mapping alive (no copy).
    pub fn slice(self: &Arc<Self>, off: usize, len: usize) -> Bytes {
        let end = off.saturating_add(len).min(self.map.len());
        Bytes::from_owner(Slice {
            map: Arc::clone(self),
            off: off.min(end),
            end,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister before the munmap that follows (the field drops after this body).
        let slot = &TABLE[self.slot];
        slot.len.store(0, Ordering::Release);
        slot.start.store(0, Ordering::Release);
    }
}

struct Slice {
    map: Arc<Mapping>,
    off: usize,
    end: usize,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.map.map[self.off..self.end]
    }
}

/// Mappings by file identity: a segment is mapped once however many responses send it.
pub struct MapCache {
    maps: moka::sync::Cache<(u64, u64, i128, i128, u64), Arc<Mapping>>,
}

impl MapCache {
    pub fn new(capacity: u64) -> MapCache {
        MapCache {
            maps: moka::sync::Cache::builder()
                .max_capacity(capacity.min(SLOTS as u64 / 2))
                .time_to_idle(std::time::Duration::from_secs(60))
                .build(),
        }
    }

    /// The mapping for the object `meta` names, opened from `file`.
    pub fn get(&self, file: &File, meta: &ObjectMeta) -> Option<Arc<Mapping>> {
        let key = (meta.dev, meta.ino, meta.mtime_ns, meta.ctime_ns, meta.len);
        if let Some(m) = self.maps.get(&key) {
            if !m.poisoned() {
                return Some(m);
            }
            self.maps.invalidate(&key);
            return None;
        }
        let m = Arc::new(Mapping::new(file, meta.len)?);
        self.maps.insert(key, Arc::clone(&m));
        Some(m)
    }
}

/// The socket under a TLS session that may encrypt from mappings: if a mapped page faulted on
/// this thread during this poll (while this connection encrypted or copied a body), the write is
/// refused and the connection is failed, so the ciphertext of a zero page never leaves.
pub struct FaultGuard<IO> {
    io: IO,
    failed: bool,
}

impl<IO> FaultGuard<IO> {
    pub fn new(io: IO) -> FaultGuard<IO> {
        FaultGuard { io, failed: false }
    }

    fn check(&mut self) -> std::io::Result<()> {
        if take_thread_fault() {
            self.failed = true;
        }
        if self.failed {
            return Err(std::io::Error::other(
                "a mapped file was truncated while being sent",
            ));
        }
        Ok(())
    }
}

impl<IO: std::os::fd::AsFd> std::os::fd::AsFd for FaultGuard<IO> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FaultGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FaultGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Truncating a mapped file, then reading past the new end: the handler replaces the page
    /// with zeros, poisons the mapping and flags the thread instead of killing the process.
    #[test]
    fn truncation_under_a_mapping_is_caught() {
        assert!(install());
        let mut f = tempfile::tempfile().expect("tmp");
        let len = 64 * 1024;
        f.write_all(&vec![0xAB; len]).expect("write");
        let m = Arc::new(Mapping::new(&f, len as u64).expect("map"));
        let before = faults();
        assert_eq!(m.slice(0, 4).as_ref(), &[0xAB; 4]);
        assert!(!m.poisoned() && !take_thread_fault());
        f.set_len(0).expect("truncate");
        let tail = m.slice(len - 8, 8);
        // SAFETY-free read through the public API: the page is gone; the handler zero-fills it.
        let v: Vec<u8> = tail.as_ref().to_vec();
        assert_eq!(v, vec![0u8; 8]);
        assert!(m.poisoned());
        assert!(take_thread_fault());
        assert!(!take_thread_fault(), "the flag is taken once");
        assert!(faults() > before);
        drop(tail);
        drop(m);
    }
}
