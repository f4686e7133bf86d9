//! The per-config policy: everything a SIGHUP replaces whole — the config itself, token keys and
//! rules, the access log (reopened, which also serves log rotation), and the TLS and QUIC server
//! configs. Built in one place, with an error that says which part failed.

use std::sync::Arc;

use crate::access::AccessLog;
use crate::auth::Auth;
use crate::config::Config;
use crate::runtime::Runtime;

pub struct Policy {
    pub config: Arc<Config>,
    /// Playback tokens (`[token]`).
    pub auth: Auth,
    /// Upload tokens (`[[ingest.keys]]`, same format and locations).
    pub uploads: Auth,
    /// Uploads in progress (`ingest.max_uploads`).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    pub access: AccessLog,
    /// TLS for the `[tls]` listeners (new handshakes use the policy current at accept).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// QUIC for HTTP/3 when `tls.http3` is on (the endpoints take it up on every swap).
    pub quic: Option<quinn::ServerConfig>,
}

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot open the access log (log.access = {path}): {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load TLS ({key}): {problem}")]
    Tls { key: String, problem: String },
    #[error("cannot set up QUIC for HTTP/3 (tls.http3): {0}")]
    Quic(std::io::Error),
    #[error("cannot set up the pull tier's upstream connections ([pull]): {0}")]
    Pull(String),
}

impl Policy {
    /// Builds the policy for `config`; access-log drops are counted in `metrics`.
    pub fn new(config: Arc<Config>, runtime: &Runtime) -> Result<Policy, PolicyError> {
        let metrics = &runtime.metrics;
        let (tls, quic) = match &config.tls {
            None => (None, None),
            Some(t) => {
                let configs = crate::tls::server_configs(t)
                    .map_err(|(key, problem)| PolicyError::Tls { key, problem })?;
                let quic = if t.http3 {
                    Some(
                        crate::tls::quic_server_config(
                            &config,
                            configs.quic,
                            &runtime.quic_token_key,
                        )
                        .map_err(PolicyError::Quic)?,
                    )
                } else {
                    None
                };
                (Some(tokio_rustls::TlsAcceptor::from(configs.tcp)), quic)
            }
        };
        let access =
            AccessLog::open(&config.log, metrics.access_log_dropped.clone()).map_err(|source| {
                PolicyError::AccessLog {
                    path: format!("{:?}", config.log.access),
                    source,
                }
            })?;
        Ok(Policy {
            auth: Auth::new(&config.token),
            uploads: Auth::for_uploads(&config.token, &config.ingest.keys),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(config.ingest.max_uploads)),
            access,
            tls,
            quic,
            config,
        })
    }
}
