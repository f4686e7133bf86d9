//! The long-lived runtime: what outlives every reload — the metrics registry and the store
//! (volumes, I/O backend, caches; later the live registry and the in-flight fills). A reload
//! asks the store to reconfigure itself; it never rebuilds the runtime.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Runtime {
    pub metrics: Arc<Metrics>,
    pub store: Store,
}

impl Runtime {
    pub fn new(config: &Config) -> Result<Runtime, prometheus::Error> {
        let metrics = Arc::new(Metrics::new()?);
        let store = Store::new(config, Arc::clone(&metrics))?;
        Ok(Runtime { metrics, store })
    }
}
