//! The threads that write uploads into the page cache when nothing waits for the disk
//! (`ingest.fsync = false`): creating the temporary file, copying the body in, renaming it into
//! place.
//!
//! That work is CPU, not waiting, so it runs on about as many threads as segd has workers.
//! Uploads beyond that queue, and a busy thread takes the next one as it finishes, with no thread
//! woken per upload. The general blocking pool wakes an idle thread for every job. With 16
//! uploaders on one core that spread the core over up to 16 runnable threads: upload p99 was
//! 39 ms against nginx's 12. On these threads it is 14 ms, at the same CPU per MB
//! (`benches/results/2026-11-29-1048-ingest-writer-threads/notes.md`). The futex calls saved
//! (about 15 µs an upload) come back as a slower page-cache copy: a body that waits in the
//! queue is no longer in the CPU cache.
//!
//! A write that waits on its disk after all (a directory block not in memory, the kernel
//! throttling dirty pages, a disk that stopped answering) must not hold up the uploads behind
//! it. When no job has started or finished for [`STALL`] and uploads are waiting, the next one
//! starts a thread of its own, up to `server.blocking_threads`; threads beyond the usual number
//! leave after [`IDLE`] without work. A volume that hangs costs its own uploads and the threads
//! stuck on it; the uploads to other volumes get threads of their own.
//!
//! Durable uploads (`fsync = true`) wait on the disk by design and stay on the general blocking
//! pool, whose threads are there to wait.
//!
//! `ingest.inline_writes` runs the jobs on the worker that received the upload instead, as nginx
//! writes on its event loop: no hand-off, about 10 % less CPU per upload
//! (`benches/results/2026-12-04-0520-ingest-inline-writes-ab/`). A disk that stops answering
//! then holds that worker; jobs go to these threads again while any volume is down or has a
//! call that has not returned for [`INLINE_LAG`], and the runtime's watchdog
//! (`server::watchdog`) lets the other workers carry on.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// No job finished for this long while others wait: the threads are waiting on a disk.
const STALL: Duration = Duration::from_millis(50);

/// A thread beyond the usual number leaves after this long without a job.
const IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// See the module doc.
pub struct Writers {
    inner: Arc<Inner>,
    /// Jobs run on these threads, and jobs run on a worker instead (`ingest.inline_writes`).
    on_threads: prometheus::IntCounter,
    on_workers: prometheus::IntCounter,
}

struct Inner {
    state: Mutex<State>,
    work: Condvar,
    /// Threads kept for the CPU work.
    usual: usize,
    /// Threads at most, counting the ones started because the others were stuck.
    max: usize,
}

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// When a job last started or finished (or the pool last had nothing to do).
    progress: Instant,
    closed: bool,
}

impl Writers {
    /// `usual` threads for the CPU work (segd's worker count), up to `max` when they are stuck;
    /// jobs are counted in `jobs` (`segd_ingest_disk_jobs_total{on}`).
    pub fn new(usual: usize, max: usize, jobs: &prometheus::IntCounterVec) -> Writers {
        let usual = usual.max(1);
        Writers {
            on_threads: jobs.with_label_values(&["writer_threads"]),
            on_workers: jobs.with_label_values(&["worker"]),
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    progress: Instant::now(),
                    closed: false,
                }),
                work: Condvar::new(),
                usual,
                max: max.max(usual),
            }),
        }
    }

    /// Queues `f` for a writer thread at once; the future gives its result. An error only if
    /// the job could not be queued or panicked.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = io::Result<T>> {
        self.on_threads.inc();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let queued = self.submit(Box::new(move || {
            let _ = tx.send(f());
        }));
        let inner = Arc::clone(&self.inner);
        async move {
            queued?;
            // Waited for longer than a stall: the threads may all be stuck on a disk while
            // jobs for other disks wait behind theirs, and no new upload comes to start a
            // thread (the uploads waiting hold every upload slot: acceptance F2 with
            // `fsync = false`). The waiting job starts one.
            loop {
                match tokio::time::timeout(STALL, &mut rx).await {
                    Ok(r) => {
                        return r.map_err(|_| {
                            io::Error::other("an upload's write failed on its thread")
                        })
                    }
                    Err(_) => inner.kick(),
                }
            }
        }
    }

    /// Runs `f` on the calling thread, a worker (`ingest.inline_writes`), while every volume's
    /// disk answers (see [`lagging`]); else queues it as [`Writers::run`] does.
    pub async fn run_inline<T: Send + 'static>(
        &self,
        volumes: &crate::volumes::Volumes,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        if lagging(volumes) {
            return self.run(f).await;
        }
        self.on_workers.inc();
        Ok(f())
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        let inner = &self.inner;
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.queue.is_empty() && st.idle == st.threads {
            // Nothing was running: the clock for a stall starts now.
            st.progress = Instant::now();
        }
        st.queue.push_back(job);
        if st.idle > 0 {
            // A waiting thread takes it. Busy threads take queued jobs without being woken.
            inner.work.notify_one();
            return Ok(());
        }
        let stuck = st.progress.elapsed() >= STALL;
        if st.threads < inner.usual || (stuck && st.threads < inner.max) {
            if let Err(e) = inner.start(&mut st) {
                if st.threads == 0 {
                    // Nobody would ever take it.
                    st.queue.pop_back();
                    return Err(e);
                }
                tracing::warn!(error = %e, "cannot start a writer thread; uploads wait for the others");
            }
        }
        Ok(())
    }
}

/// A disk call on a volume has been in progress for this long without one returning: writes
/// leave the workers for the writer threads until the disk answers again.
const INLINE_LAG: Duration = Duration::from_millis(100);

/// Whether a worker must not write now: a volume is down, has calls in progress none of which
/// returned for [`INLINE_LAG`] (its disk may have stopped answering: a write there would hold
/// the worker), or is near its limit of calls in progress (a new one could wait for a slot, see
/// [`crate::volumes::Volume::enter`]). The placement may ask any volume, so all are looked at.
fn lagging(volumes: &crate::volumes::Volumes) -> bool {
    volumes
        .iter()
        .any(|v| !v.is_healthy() || v.lagging(INLINE_LAG))
}

impl Inner {
    /// Starts one more thread (the state's lock held).
    fn start(self: &Arc<Self>, st: &mut State) -> io::Result<()> {
        st.threads += 1;
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("segd-writer".into())
            .spawn(move || me.work());
        if spawned.is_err() {
            st.threads -= 1;
        }
        spawned.map(|_| ())
    }

    /// A job has waited for [`STALL`]: when jobs are queued, none is idle to take them, and no
    /// job started or finished for as long, one more thread starts (up to `max`).
    fn kick(self: &Arc<Self>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.queue.is_empty()
            && st.idle == 0
            && !st.closed
            && st.threads < self.max
            && st.progress.elapsed() >= STALL
        {
            if let Err(e) = self.start(&mut st) {
                tracing::warn!(error = %e, "cannot start a writer thread; uploads wait for the others");
            }
            // The clock for the next stall starts now: one thread per stall, not one per
            // waiting job.
            st.progress = Instant::now();
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.closed = true;
        self.inner.work.notify_all();
    }
}

impl Inner {
    fn work(self: Arc<Self>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = st.queue.pop_front() {
                // A thread that takes a job is not stuck, whatever the last finish was.
                st.progress = Instant::now();
                drop(st);
                // A panic fails this upload only (its result channel is dropped).
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                st.progress = Instant::now();
                continue;
            }
            if st.closed {
                break;
            }
            st.idle += 1;
            let (next, timeout) = self
                .work
                .wait_timeout(st, IDLE)
                .unwrap_or_else(|p| p.into_inner());
            st = next;
            st.idle -= 1;
            if timeout.timed_out() && st.queue.is_empty() && st.threads > self.usual {
                break;
            }
        }
        st.threads -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A job that blocks, as on a disk that stopped answering, until the sender is used or
    /// dropped; the counter says when it started.
    fn stuck_job(
        w: &Writers,
    ) -> (
        std::sync::mpsc::Sender<()>,
        Arc<AtomicUsize>,
        impl std::future::Future<Output = io::Result<()>>,
    ) {
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&started);
        let blocked = w.run(move || {
            s.fetch_add(1, Ordering::SeqCst);
            let _ = stuck.recv();
        });
        (release, started, blocked)
    }

    fn jobs() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("jobs", "jobs"), &["on"])
            .expect("counter")
    }

    #[test]
    fn runs_jobs_and_returns_their_results() {
        let w = Writers::new(2, 4, &jobs());
        let got = rt().block_on(async {
            let mut v = Vec::new();
            for i in 0..50u32 {
                v.push(w.run(move || i * 2).await.expect("ran"));
            }
            v
        });
        assert_eq!(got, (0..50).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_fails_alone() {
        let w = Writers::new(1, 1, &jobs());
        rt().block_on(async {
            assert!(w.run(|| panic!("boom")).await.is_err());
            assert_eq!(w.run(|| 7).await.expect("the thread still works"), 7);
        });
    }

    /// A job queued behind a stuck thread, with no upload coming after it to start another,
    /// starts one itself once it has waited for a stall. It waited for the disk (acceptance
    /// F2 with `fsync = false`: jobs for healthy disks queued behind a hung one's).
    #[test]
    fn a_job_behind_a_stuck_thread_starts_one_itself() {
        let w = Writers::new(1, 2, &jobs());
        let (release, started, blocked) = stuck_job(&w);
        let rt = rt();
        rt.block_on(async {
            let blocked = tokio::spawn(blocked);
            while started.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Submitted while the stuck job has just started: no stall yet, no new thread.
            let behind = tokio::time::timeout(Duration::from_secs(2), w.run(|| 42)).await;
            assert_eq!(
                behind.ok().and_then(Result::ok),
                Some(42),
                "ran on a thread it started"
            );
            let _ = release.send(());
            assert!(blocked.await.is_ok());
        });
    }

    #[test]
    fn a_stuck_thread_gets_help_only_after_a_stall() {
        // One usual thread, blocked as on a disk that stopped answering.
        let w = Writers::new(1, 2, &jobs());
        let (release, started, blocked) = stuck_job(&w);
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let rt = rt();
        // Before a stall, a queued job waits for the busy thread: no thread per job.
        let (tx, waited) = std::sync::mpsc::channel();
        let queued = w.run(move || tx.send(()).expect("send"));
        std::thread::sleep(STALL / 2);
        assert!(
            waited.try_recv().is_err(),
            "ran on a second thread before any stall"
        );
        // After it, the next job finds the pool stuck and starts a thread, which takes both.
        std::thread::sleep(STALL);
        let helped =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), w.run(|| 2)).await });
        assert_eq!(
            helped
                .expect("not stuck behind the blocked job")
                .expect("ran"),
            2
        );
        rt.block_on(queued).expect("the queued job ran");
        // No third thread: the pool is at its maximum.
        assert_eq!(w.inner.state.lock().expect("lock").threads, 2);
        release.send(()).expect("release");
        rt.block_on(blocked).expect("ran");
    }
}
