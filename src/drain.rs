//! Drain: stop accepting, let in-flight connections finish, give up after a deadline.
//!
//! Every accept loop and connection holds a [`Drain`]. The [`Controller`] flips one watch flag to
//! ask them to stop, then waits until every `Drain` is dropped (an mpsc channel closes when its
//! last sender goes) or the timeout passes.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

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
