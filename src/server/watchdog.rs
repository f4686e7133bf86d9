//! Keeps the runtime's I/O and timers driven while a worker is held by a blocking call.
//!
//! A tokio worker that goes to sleep while another worker holds the driver (epoll and the
//! timers) sleeps on a condition variable, and is woken only when a task is queued for it. When
//! the worker that held the driver wakes with events, it lets go of the driver and runs the
//! tasks the events woke. If one of those tasks then blocks (a disk that stops answering under an
//! upload written on the worker, `ingest.inline_writes`), nobody polls epoll or the timers: no
//! socket event, no timeout, no new connection is seen, and nothing wakes the sleeping workers.
//! One hung disk then holds the whole process. Measured with the debug builds' injected hang
//! and two workers: `/metrics` and reads from another volume timed out until the disk answered
//! (`benches/results/2026-12-04-0520-ingest-inline-writes-ab/notes.md`).
//!
//! A task on the runtime counts ticks of its clock. A thread outside the runtime checks the
//! count. When the count has not moved for [`STALL`], the thread queues an empty task. That
//! wakes a sleeping worker, which runs the task, finds the driver free when it goes back to
//! sleep, and drives it. The worker that is held loses only what it holds itself: the task that
//! blocked, and the task in its LIFO slot if there is one. Its other queued tasks are stolen
//! by the workers that are free. With one worker nothing can take over, and the process waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the runtime's clock task ticks.
const TICK: Duration = Duration::from_millis(20);

/// No tick for this long: a worker is queued an empty task. Several ticks, so a busy runtime
/// (the tick's wake-up late behind other tasks) is not taken for a stalled one.
const STALL: Duration = Duration::from_millis(100);

/// Starts the clock task on the current runtime and the thread that watches it.
pub fn start() {
    let ticks = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&ticks);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let handle = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("segd-watchdog".into())
        .spawn(move || {
            let mut seen = ticks.load(Ordering::Relaxed);
            loop {
                std::thread::sleep(STALL);
                let now = ticks.load(Ordering::Relaxed);
                if now == seen {
                    // A worker asleep wakes for it, and drives I/O and timers from then on.
                    drop(handle.spawn(async {}));
                }
                seen = now;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the runtime watchdog: a worker held by a blocking call may hold up the others");
    }
}
