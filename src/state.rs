//! What every connection holds: the long-lived [`Runtime`] and the current [`Policy`], which a
//! reload swaps atomically. A request loads the policy once and keeps it to the end, so a
//! reload never changes the rules under a response in flight.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::policy::{Policy, PolicyError};
use crate::runtime::Runtime;

pub struct Shared {
    pub runtime: Arc<Runtime>,
    policy: ArcSwap<Policy>,
    /// Bumped after every swap, for holders of long-lived objects built from the policy (the
    /// QUIC endpoints' server config).
    swapped: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn new(runtime: Arc<Runtime>, policy: Policy) -> Shared {
        Shared {
            runtime,
            policy: ArcSwap::from_pointee(policy),
            swapped: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The current policy.
    pub fn load(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Applies a validated `config`: builds its policy (nothing changes if that fails), then lets
    /// the store keep or rebuild its tiers, then swaps the policy in.
    pub fn reload(&self, config: Arc<Config>) -> Result<(), PolicyError> {
        let policy = Policy::new(Arc::clone(&config), &self.runtime)?;
        self.runtime
            .store
            .reconfigure(&config)
            .map_err(|e| PolicyError::Pull(format!("{e:#}")))?;
        self.policy.store(Arc::new(policy));
        self.swapped.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Changes after every reload.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }
}
