//! Memory given back after a burst of requests.
//!
//! An allocator keeps what a program frees for reuse. After a burst — 10,000 connections
//! opening and asking at once, each request's transient state (its boxed exchange, head,
//! headers, reply) alive together while they wait for the blocking pool — the pages that held it
//! are free but stay resident, interleaved with the connections that live on, so RSS would stay
//! at the burst's peak for good (measured with glibc's malloc: the worker's 64 MB arena heap
//! full, about 38 of its 75 MB free after 10,000 idle connections settle). jemalloc (segd's
//! allocator, `src/main.rs`) returns dirty pages on its own only after a decay of seconds and
//! only while the arena is in use; `arena.<all>.purge` returns every free page of every arena
//! at once.
//!
//! It walks the arenas under their locks, so it runs only where it pays. A trimming task starts
//! once at least [`MIN_REQUESTS`] requests were answered since the last one ended; it trims each
//! time no request has finished for [`QUIET`] and some did since its last trim, and ends after a
//! quiet period with none. So under steady load it never trims (no pause that long); after a
//! burst it trims once — and again if stragglers finish after a pause inside the burst, whose
//! memory a trim during the pause could not return (they still held it). Traffic that arrives in
//! gaps longer than `QUIET` keeps the task trimming at most once per gap, on a heap that is then
//! small. Nothing here changes how much memory a request uses, only how long freed memory stays
//! resident.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Requests answered since the last trim before one is considered: a burst smaller than this
/// leaves too little behind to be worth a walk of the heaps.
const MIN_REQUESTS: u64 = 1024;

/// How long no request may finish before the burst counts as over.
const QUIET: Duration = Duration::from_millis(250);

/// Requests answered since the trimming task last ended (it counts on while the task runs).
static DONE: AtomicU64 = AtomicU64::new(0);
/// Whether the trimming task runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Called once per answered request (on a runtime thread). Starts the one trimming task when
/// enough requests have passed; otherwise one relaxed add.
pub(super) fn request_done() {
    let n = DONE.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= MIN_REQUESTS && !RUNNING.swap(true, Ordering::Relaxed) {
        tokio::spawn(trim_when_quiet());
    }
}

/// Trims whenever a [`QUIET`] period follows requests that finished since the last trim; ends
/// after a quiet period with none. The trim runs on the blocking pool: the walk must not hold a
/// worker.
async fn trim_when_quiet() {
    let mut trimmed_at = 0;
    let mut seen = DONE.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(QUIET).await;
        let now = DONE.load(Ordering::Relaxed);
        if now != seen {
            // Still busy.
            seen = now;
            continue;
        }
        if now == trimmed_at {
            break;
        }
        let _ = tokio::task::spawn_blocking(trim).await;
        trimmed_at = now;
    }
    DONE.store(0, Ordering::Relaxed);
    RUNNING.store(false, Ordering::Relaxed);
}

/// `arena.<i>.purge` with jemalloc's `MALLCTL_ARENAS_ALL` (4096) as `<i>`: every arena.
const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";

fn trim() {
    // SAFETY: a NUL-terminated control name with no value read or written. jemalloc locks each
    // arena while it purges it, so this is safe from any thread at any time; when jemalloc is not
    // the allocator (unit tests), its arenas are empty and this does nothing.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
