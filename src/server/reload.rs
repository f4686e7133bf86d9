//! Signals: SIGTERM/SIGINT start the drain, SIGHUP reloads the config file.

use std::sync::Arc;

use super::{fit_fd_limit, systemd};
use crate::config::Config;
use crate::state::Shared;

/// SIGHUP: re-read the config file. A config that `check-config` would reject is rejected with
/// the same messages and the running one stays; a good one is swapped in whole. Listen
/// addresses and worker counts need a restart (the sockets stay as they are).
fn reload(shared: &Shared) {
    systemd::notify_reloading();
    let old = shared.load();
    let path = old.config.file.clone();
    let loaded = Config::load(&path).and_then(|c| {
        let mut errs = c.check_paths();
        errs.0.extend(crate::tls::validate(&c).0);
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs)
        }
    });
    match loaded {
        Err(errs) => {
            for e in errs.iter() {
                tracing::error!("{e}");
            }
            tracing::error!(
                problems = errs.len(),
                "reload rejected; the running configuration stays"
            );
        }
        Ok(mut cfg) => {
            fit_fd_limit(&mut cfg);
            let tls_addrs = |c: &Config| c.tls.as_ref().map(|t| t.listen.clone());
            if cfg.server.listen != old.config.server.listen
                || cfg.admin.listen != old.config.admin.listen
                || tls_addrs(&cfg) != tls_addrs(&old.config)
                || cfg.tls.as_ref().map(|t| t.http3) != old.config.tls.as_ref().map(|t| t.http3)
                || cfg.server.workers != old.config.server.workers
            {
                tracing::warn!(
                    "listen addresses, tls.http3 and workers change only on restart; the rest is reloaded"
                );
            }
            match shared.reload(Arc::new(cfg)) {
                Ok(()) => tracing::info!(file = %path.display(), "configuration reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected; the running configuration stays")
                }
            }
        }
    }
    systemd::notify("READY=1\nSTATUS=serving");
}

pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads on SIGHUP until SIGTERM or SIGINT.
    pub(super) async fn wait_for_stop(mut self, shared: &Shared) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM received"); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT received"); return; }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reloading");
                    reload(shared);
                }
            }
        }
    }
}
