//! The long-lived runtime: what outlives every reload — the metrics registry, the store
//! (volumes, I/O backend, caches, uploads in progress) and the live registry. A reload asks the
//! store to reconfigure itself; it never rebuilds the runtime.

use std::sync::Arc;

use crate::config::Config;
use crate::live;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Runtime {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub live: Arc<live::Registry>,
}

impl Runtime {
    pub fn new(config: &Config) -> anyhow::Result<Runtime> {
        let metrics = Arc::new(Metrics::new()?);
        let store = Store::new(config, Arc::clone(&metrics))?;
        let live = Arc::new(live::Registry::new(&metrics)?);
        Ok(Runtime {
            metrics,
            store,
            live,
        })
    }
}
