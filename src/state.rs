//! `State`: everything a request needs, built once per config (and rebuilt on reload).

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::http::handler::Prepared;
use crate::metrics::Metrics;
use crate::volumes::Volumes;

pub struct State {
    pub config: Arc<Config>,
    pub volumes: Arc<Volumes>,
    pub metrics: Arc<Metrics>,
    pub prepared: Prepared,
    pub auth: Auth,
}

impl State {
    pub fn new(config: Arc<Config>, volumes: Arc<Volumes>, metrics: Arc<Metrics>) -> State {
        State {
            prepared: Prepared::new(&config),
            auth: Auth::new(&config.token),
            config,
            volumes,
            metrics,
        }
    }
}
