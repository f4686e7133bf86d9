//! `State`: everything a request needs, built once per config (and rebuilt on reload).

use std::sync::Arc;

use crate::auth::Auth;
use crate::cache::bodies::BodyCache;
use crate::cache::files::FileCache;
use crate::config::Config;
use crate::http::handler::Prepared;
use crate::io::Io;
use crate::metrics::Metrics;
use crate::volumes::Volumes;

pub struct State {
    pub config: Arc<Config>,
    pub volumes: Arc<Volumes>,
    pub metrics: Arc<Metrics>,
    pub prepared: Prepared,
    pub auth: Auth,
    pub files: FileCache,
    pub bodies: BodyCache,
    pub io: Io,
}

impl State {
    pub fn new(config: Arc<Config>, volumes: Arc<Volumes>, metrics: Arc<Metrics>) -> State {
        State {
            prepared: Prepared::new(&config),
            auth: Auth::new(&config.token),
            files: FileCache::new(config.cache.open_files),
            bodies: BodyCache::new(config.cache.max_bytes, config.cache.max_item_bytes),
            io: Io::new(
                config.volumes.len(),
                config.server.io_queue_depth,
                &config.server.io_backend,
            ),
            config,
            volumes,
            metrics,
        }
    }
}
