//! The long-lived runtime: what outlives every reload — the metrics registry, the store
//! (volumes, I/O backend, caches, uploads in progress), the live registry and the QUIC token key. A reload asks the
//! store to reconfigure itself; it never rebuilds the runtime.

use std::sync::Arc;

use crate::config::Config;
use crate::live;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::QuicTokenKey;

pub struct Runtime {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub live: Arc<live::Registry>,
    /// QUIC address-validation tokens stay valid across reloads (and upgrades: passed on).
    pub quic_token_key: QuicTokenKey,
    /// Log lines a flood of requests would repeat, at most once a second each.
    pub log_throttle: crate::log::Throttle,
    /// Playlists rewritten for tokens, shared by the requests that want the same bytes.
    pub rewrites: crate::http::rewrite::Rewrites,
}

impl Runtime {
    /// A runtime with a new QUIC token key.
    pub fn new(config: &Config) -> anyhow::Result<Runtime> {
        Self::with_quic_token_key(config, QuicTokenKey::random()?)
    }

    /// A runtime keeping the QUIC token key of the process this one took over from.
    pub fn with_quic_token_key(
        config: &Config,
        quic_token_key: QuicTokenKey,
    ) -> anyhow::Result<Runtime> {
        let metrics = Arc::new(Metrics::new()?);
        let store = Store::new(config, Arc::clone(&metrics))?;
        let live = Arc::new(live::Registry::new(&metrics)?);
        Ok(Runtime {
            metrics,
            store,
            live,
            quic_token_key,
            log_throttle: crate::log::Throttle::new(),
            rewrites: crate::http::rewrite::Rewrites::new(),
        })
    }
}
