//! What hyper does not watch on the connections it serves (HTTP/1.1 over TLS or after the fast
//! path's hand-over, HTTP/2 over TLS and h2c), and the HTTP/1.1 fast path does for its own:
//!
//! - **a client that takes no response bytes** for `send_timeout`. On HTTP/1.1 its socket stops
//!   taking writes; on HTTP/2 it grants no flow-control window, and each stalled stream pins its
//!   buffered chunk for as long as the client likes. The connection is closed, as the fast path
//!   does. On HTTP/2 that is a connection on which no stream had a piece taken for
//!   `send_timeout`: a client that withholds credit from one stream while it reads others keeps
//!   that stream (and its piece) until it reads, cancels or closes, as on HTTP/3 (one stalled
//!   stream closed the connection under every other stream: acceptance N5).
//! - **an HTTP/2 connection with no request** for `keepalive_timeout`: hyper's keep-alive pings
//!   only tell whether the peer lives, and a peer that answers them would hold its connection
//!   (and a `max_connections` slot) forever. It gets GOAWAY.
//!
//! A body is "stalled" only while the client is the one that waits: from the moment a frame is
//! handed to hyper until hyper asks for the next. A body waiting for its own bytes (a blocking
//! playlist reload, an upload still growing, an upstream fill) is not, nor is a request whose
//! answer is still being made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, the one its timers keep.
use tokio::time::Instant;

/// Why a connection should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A response body handed to hyper was not taken for `send_timeout`: close now.
    Stalled,
    /// No request for `keepalive_timeout`: finish gracefully (GOAWAY).
    Idle,
}

pub struct ConnWatch {
    epoch: Instant,
    state: Mutex<State>,
    /// Wakes the watcher from its idle sleep when a request starts.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// Requests in flight: from the start of a request to the end (or drop) of its response.
    active: usize,
    /// When a request last started or ended (since `epoch`).
    last_activity: Duration,
    /// When a body piece handed to hyper was last taken, or a request started (since `epoch`).
    last_taken: Duration,
    next_id: u64,
    /// Bodies that handed hyper a frame it has not asked past yet: since when.
    handed: HashMap<u64, Duration>,
    /// The watcher sleeps until the idle deadline: a request that starts must wake it.
    idle_sleep: bool,
}

impl ConnWatch {
    pub fn new() -> Arc<ConnWatch> {
        Arc::new(ConnWatch {
            epoch: Instant::now(),
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request starts; it is in flight until the returned value is dropped (with its
    /// response body).
    pub fn start(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.active += 1;
        s.last_activity = self.epoch.elapsed();
        s.last_taken = s.last_activity;
        s.next_id += 1;
        // The watcher sleeps until the idle deadline only while nothing is in flight; any
        // other sleep of its is short enough to see a stall in time.
        if std::mem::take(&mut s.idle_sleep) {
            self.changed.notify_one();
        }
        InFlight {
            watch: Arc::clone(self),
            id: s.next_id,
        }
    }

    /// Resolves when the connection should end. It sleeps until the next moment something can
    /// be due: the oldest handed frame's `send_timeout` (and that of the last piece taken), the
    /// idle connection's `keepalive_timeout`, or, while requests are in flight with nothing
    /// handed, half a `send_timeout` (so a stall is seen within 1.5 × `send_timeout`; an idle
    /// connection costs one wake-up per `keepalive_timeout`, not one a second). The last request
    /// ending wakes it to time the idle connection from then.
    pub async fn verdict(&self, send_timeout: Duration, idle_timeout: Duration) -> Verdict {
        loop {
            let now = self.epoch.elapsed();
            let next = {
                let mut s = self.lock();
                // Stalled: a piece handed `send_timeout` ago is still there, and no piece of any
                // stream was taken since `send_timeout` either.
                let due = (s.handed.values().min().copied())
                    .map(|oldest| oldest.max(s.last_taken) + send_timeout);
                if due.is_some_and(|due| now >= due) {
                    return Verdict::Stalled;
                }
                if s.active == 0 && now.saturating_sub(s.last_activity) >= idle_timeout {
                    return Verdict::Idle;
                }
                match due {
                    Some(due) => due.saturating_sub(now),
                    None if s.active == 0 => {
                        s.idle_sleep = true;
                        (s.last_activity + idle_timeout).saturating_sub(now)
                    }
                    None => send_timeout / 2,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(next.max(Duration::from_millis(10))) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// A request in flight on a watched connection (see [`ConnWatch::start`]).
pub struct InFlight {
    watch: Arc<ConnWatch>,
    id: u64,
}

impl InFlight {
    /// A frame of the response body went to hyper: from now the client is the one that waits.
    pub fn handed(&self) {
        let now = self.watch.epoch.elapsed();
        self.watch.lock().handed.insert(self.id, now);
    }

    /// hyper asks for more: what was handed has been taken (or buffered within the window).
    pub fn polled(&self) {
        let mut s = self.watch.lock();
        if s.handed.remove(&self.id).is_some() {
            s.last_taken = self.watch.epoch.elapsed();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.watch.epoch.elapsed();
        let mut s = self.watch.lock();
        s.active = s.active.saturating_sub(1);
        s.last_activity = now;
        s.handed.remove(&self.id);
        if s.active == 0 {
            // The watcher may be in a stall-watch sleep (half a `send_timeout`): the idle
            // connection is timed from now (acceptance N4: closed at `send_timeout` / 2, not
            // `keepalive_timeout`, when that was shorter).
            drop(s);
            self.watch.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handed_frame_not_taken_is_a_stall_a_wait_for_our_bytes_is_not() {
        let w = ConnWatch::new();
        let send = Duration::from_millis(200);
        let idle = Duration::from_millis(400);
        let req = w.start();
        // Waiting for our own bytes (nothing handed): neither stalled nor idle.
        let r = tokio::time::timeout(Duration::from_secs(1), w.verdict(send, idle)).await;
        assert!(r.is_err(), "{r:?}");
        // Timed from just after each event: a deadline counts from the event itself.
        req.handed();
        let started = Instant::now();
        assert_eq!(w.verdict(send, idle).await, Verdict::Stalled);
        let took = started.elapsed();
        assert!(took + Duration::from_millis(5) >= send, "{took:?}");
        // Taken: no longer stalled; the request ends, and the connection idles after `idle`.
        req.polled();
        drop(req);
        let started = Instant::now();
        assert_eq!(w.verdict(send, idle).await, Verdict::Idle);
        let took = started.elapsed();
        assert!(took + Duration::from_millis(5) >= idle, "{took:?}");
    }

    /// One stream that is not read while another is: the connection is kept. Once nothing is
    /// taken for `send_timeout`, it is stalled.
    #[tokio::test]
    async fn one_stream_held_while_others_are_read_is_no_stall() {
        let w = ConnWatch::new();
        let send = Duration::from_millis(200);
        let idle = Duration::from_secs(60);
        let (held, read) = (w.start(), w.start());
        held.handed();
        let reading = async {
            for _ in 0..10 {
                read.handed();
                tokio::time::sleep(send / 4).await;
                read.polled();
            }
        };
        tokio::select! {
            v = w.verdict(send, idle) => panic!("{v:?} while a stream was read"),
            () = reading => {}
        }
        let started = Instant::now();
        read.handed();
        assert_eq!(w.verdict(send, idle).await, Verdict::Stalled);
        assert!(started.elapsed() + Duration::from_millis(5) >= send);
    }

    /// The idle time runs from the last request's end, also when the watcher was sleeping its
    /// stall-watch sleep (half a `send_timeout`) then.
    #[tokio::test]
    async fn idle_is_timed_from_the_last_request_end() {
        let w = ConnWatch::new();
        let (send, idle) = (Duration::from_secs(10), Duration::from_millis(200));
        let req = w.start();
        let ended = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(req);
            Instant::now()
        };
        let (verdict, ended) = tokio::join!(w.verdict(send, idle), ended);
        assert_eq!(verdict, Verdict::Idle);
        let took = ended.elapsed();
        assert!(took < Duration::from_secs(2), "idle after {took:?}");
    }
}
