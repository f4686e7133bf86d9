//! `State`: everything a request needs, built once per config; `Shared` holds the current one and
//! swaps it atomically on reload. A request loads the current state once and keeps it to the
//! end, so a reload never changes the rules under a response in flight.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::access::AccessLog;
use crate::auth::Auth;
use crate::cache::bodies::BodyCache;
use crate::cache::files::FileCache;
use crate::config::Config;
use crate::http::handler::Prepared;
use crate::io::mapped::MapCache;
use crate::io::Io;
use crate::metrics::Metrics;
use crate::volumes::Volumes;

pub struct State {
    pub config: Arc<Config>,
    pub volumes: Arc<Volumes>,
    pub metrics: Arc<Metrics>,
    pub prepared: Prepared,
    pub auth: Auth,
    pub files: Arc<FileCache>,
    pub bodies: Arc<BodyCache>,
    /// Memory maps of large segments for the TLS writers.
    pub maps: Arc<MapCache>,
    pub io: Arc<Io>,
    pub access: AccessLog,
    /// TLS for the `[tls]` listeners (new handshakes use the state current at accept).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// QUIC for HTTP/3 when `tls.http3` is on (the endpoints take it up on every swap).
    pub quic: Option<quinn::ServerConfig>,
}

type TlsParts = (
    Option<tokio_rustls::TlsAcceptor>,
    Option<quinn::ServerConfig>,
);

/// The TLS acceptor and QUIC server config for `config`, both from one certificate load.
fn tls_parts(config: &Config) -> std::io::Result<TlsParts> {
    let Some(t) = &config.tls else {
        return Ok((None, None));
    };
    let configs = crate::tls::server_configs(t)
        .map_err(|(k, p)| std::io::Error::other(format!("{k}: {p}")))?;
    let quic = if t.http3 {
        Some(crate::server::quic::server_config(config, configs.quic)?)
    } else {
        None
    };
    Ok((Some(tokio_rustls::TlsAcceptor::from(configs.tcp)), quic))
}

impl State {
    /// Builds everything for `config`. Fails if the access log cannot be opened or the TLS
    /// certificate and key cannot be loaded.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> std::io::Result<State> {
        let (tls, quic) = tls_parts(&config)?;
        Ok(State {
            prepared: Prepared::new(&config),
            auth: Auth::new(&config.token),
            volumes: Arc::new(Volumes::new(&config.volumes)),
            files: Arc::new(FileCache::new(config.cache.open_files)),
            bodies: Arc::new(BodyCache::new(
                config.cache.max_bytes,
                config.cache.max_item_bytes,
            )),
            maps: Arc::new(MapCache::new(config.cache.open_files)),
            io: Arc::new(
                Io::new(
                    config.volumes.len(),
                    config.server.io_queue_depth,
                    &config.server.io_backend,
                )
                .with_timings(read_timings(&metrics, &config)),
            ),
            access: AccessLog::open(&config.log)?,
            tls,
            quic,
            metrics,
            config,
        })
    }

    /// The state for a reloaded `config`, keeping what did not change: the same volume list keeps
    /// its handles, health and placement memory (and the open-file cache, whose entries name
    /// volumes by position); unchanged cache limits keep the hot bodies; an unchanged I/O setup
    /// keeps its workers. Keys, policies, headers and the access log (reopened, which also serves
    /// log rotation) always follow the new file.
    pub fn reload(old: &State, config: Arc<Config>) -> std::io::Result<State> {
        let (o, n) = (&old.config, &config);
        let same_volumes = o.volumes.len() == n.volumes.len()
            && o.volumes
                .iter()
                .zip(&n.volumes)
                .all(|(a, b)| a.path == b.path && a.name == b.name && a.marker == b.marker);
        let volumes = if same_volumes {
            Arc::clone(&old.volumes)
        } else {
            Arc::new(Volumes::new(&n.volumes))
        };
        let files = if same_volumes && o.cache.open_files == n.cache.open_files {
            Arc::clone(&old.files)
        } else {
            Arc::new(FileCache::new(n.cache.open_files))
        };
        let bodies = if o.cache.max_bytes == n.cache.max_bytes
            && o.cache.max_item_bytes == n.cache.max_item_bytes
        {
            Arc::clone(&old.bodies)
        } else {
            Arc::new(BodyCache::new(n.cache.max_bytes, n.cache.max_item_bytes))
        };
        let io = if o.volumes.len() == n.volumes.len()
            && o.server.io_backend == n.server.io_backend
            && o.server.io_queue_depth == n.server.io_queue_depth
        {
            Arc::clone(&old.io)
        } else {
            Arc::new(Io::new(
                n.volumes.len(),
                n.server.io_queue_depth,
                &n.server.io_backend,
            ))
        };
        let (tls, quic) = tls_parts(&config)?;
        Ok(State {
            prepared: Prepared::new(&config),
            auth: Auth::new(&config.token),
            volumes,
            files,
            bodies,
            maps: Arc::clone(&old.maps),
            io,
            access: AccessLog::open(&config.log)?,
            tls,
            quic,
            metrics: Arc::clone(&old.metrics),
            config,
        })
    }
}

fn read_timings(metrics: &Metrics, config: &Config) -> Vec<prometheus::Histogram> {
    config
        .volumes
        .iter()
        .map(|v| metrics.volume_read_seconds.with_label_values(&[&v.name]))
        .collect()
}

/// The current state, swapped whole on reload.
pub struct Shared {
    current: ArcSwap<State>,
    /// Bumped after every swap, for holders of long-lived objects built from the state (the QUIC
    /// endpoints' server config).
    swapped: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn new(state: State) -> Shared {
        Shared {
            current: ArcSwap::from_pointee(state),
            swapped: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub fn swap(&self, state: State) {
        self.current.store(Arc::new(state));
        self.swapped.send_modify(|n| *n += 1);
    }

    /// Changes after every [`Shared::swap`].
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }
}
