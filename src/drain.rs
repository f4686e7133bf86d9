//! Drain: stop accepting, let in-flight connections finish, give up after a deadline.
//!
//! Every accept loop and connection holds a [`Drain`]. The [`Controller`] flips one watch flag to
//! ask them to stop, then waits until every `Drain` is dropped (an mpsc channel closes when its
//! last sender goes) or the timeout passes.
//!
//! A keep-alive connection that is idle when the drain starts is not closed at once: for
//! [`IDLE_GRACE`] it may still send one request, answered with `Connection: close`. Closing an
//! idle HTTP/1.1 connection races a client that is reusing it at that instant (the request is on
//! the wire, the close crosses it, and the client sees a failure it cannot safely retry); a
//! client that is actively using the connection sends its next request well within the grace and
//! learns to move on from the answer. A connection still idle after the grace is closed, as an
//! idle timeout would, and clients detect that before reusing it. A connection that carried an
//! upload gets [`UPLOAD_IDLE_GRACE`]: a packager's next upload comes a segment later.
//!
//! [`Flag`] is the same idea without the waiting: a one-way switch many tasks can watch (the
//! readiness `/readyz` reports, "the sockets now belong to a new process").

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// How long a keep-alive connection idle when the drain starts may still send one request
/// (capped at `server.keepalive_timeout`).
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The same for a connection that carried an upload (capped at `server.keepalive_timeout`): a
/// packager's next upload comes a segment or a part later, and a client does not resend an
/// upload it wrote into a connection that closed under it. ffmpeg's HLS muxer with
/// `-http_persistent 1` lost the segment it wrote 1 s or more after a `SIGUSR2` upgrade (the
/// playlist it retries on a new connection then listed a segment never stored: one 404 per
/// rendition and upgrade). Answered with `Connection: close`, it reconnects for the next one.
pub const UPLOAD_IDLE_GRACE: Duration = Duration::from_secs(12);

pub struct Controller {
    stop: watch::Sender<bool>,
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
}

/// Held by each accept loop and connection.
#[derive(Clone)]
pub struct Drain {
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

/// A future-friendly view of the stop flag.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

impl Controller {
    pub fn new() -> Controller {
        let (stop, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        Controller {
            stop,
            alive_tx,
            alive_rx,
        }
    }

    pub fn drain(&self) -> Drain {
        Drain {
            stop: self.stop.subscribe(),
            _alive: self.alive_tx.clone(),
        }
    }

    /// Asks everyone to stop and waits up to `timeout`. Returns true if all finished in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let Controller {
            stop,
            alive_tx,
            mut alive_rx,
        } = self;
        let _ = stop.send(true);
        drop(alive_tx);
        tokio::time::timeout(timeout, alive_rx.recv()).await.is_ok()
    }
}

impl Drain {
    pub fn signal(&self) -> Stop {
        Stop(self.stop.clone())
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// A one-way switch: once set it stays set. Watched through [`Stop`] views.
pub struct Flag(watch::Sender<bool>);

impl Default for Flag {
    fn default() -> Self {
        Self::new()
    }
}

impl Flag {
    pub fn new() -> Flag {
        Flag(watch::Sender::new(false))
    }

    pub fn set(&self) {
        self.0.send_replace(true);
    }

    /// A view that resolves once the flag is set.
    pub fn watch(&self) -> Stop {
        Stop(self.0.subscribe())
    }
}

impl Stop {
    /// Whether a drain has been requested (does not keep anything alive, unlike [`Drain`]).
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a drain has been requested.
    pub async fn wait(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}
