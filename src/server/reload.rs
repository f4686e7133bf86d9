//! Signals: SIGTERM/SIGINT start the drain, SIGHUP reloads the config file, SIGUSR1 reopens the
//! access log (log rotation, as nginx; nothing else is re-read), SIGUSR2 upgrades (starts a new
//! process and hands it the sockets, see `upgrade`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::upgrade::{Upgrader, READY_TIMEOUT};
use super::{fit_fd_limit, systemd};
use crate::config::Config;
use crate::state::Shared;

/// SIGHUP: re-read the config file. A config that `serve` would refuse is rejected with the
/// same messages and the running one stays (a volume whose disk is down is not a reason: it
/// stays unhealthy, as at start); a good one is swapped in whole, except the keys
/// only a restart applies ([`Config::restart_only_changes`] against `started`, the config this
/// process started with), which are named in the log. The outcome is in the metrics too:
/// `segd_config_last_reload_successful`, `segd_config_last_reload_success_timestamp_seconds`
/// and `segd_config_restart_pending`.
fn reload(shared: &Shared, started: &Config) {
    systemd::notify_reloading();
    let old = shared.load();
    let path = old.config.file.clone();
    let metrics = &shared.runtime.metrics;
    let loaded = Config::load(&path).and_then(|c| {
        let mut errs = c.reload_checks();
        errs.0.extend(crate::tls::validate(&c).0);
        // The TLS listeners bound at start stay until a restart, and need a certificate: a
        // file without one would leave them accepting connections and failing every handshake.
        let listening = |c: &Config| c.tls.as_ref().is_some_and(|t| !t.listen.is_empty());
        if listening(started) && !listening(&c) {
            errs.push(
                &c.file,
                "tls.listen",
                "the running TLS listeners need [tls] and its certificate until a restart closes them",
                "keep [tls] with its listen addresses, and restart (or upgrade with SIGUSR2) to remove them",
            );
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs)
        }
    });
    match loaded {
        Err(mut errs) => {
            errs.locate();
            for e in errs.iter() {
                tracing::error!("{e}");
            }
            tracing::error!(
                problems = errs.len(),
                "reload rejected; the running configuration stays"
            );
            metrics.reload_rejected();
        }
        Ok(mut cfg) => {
            fit_fd_limit(&mut cfg);
            let pending = started.restart_only_changes(&cfg);
            match shared.reload(Arc::new(cfg)) {
                Ok(()) => {
                    if !pending.is_empty() {
                        tracing::warn!(
                            keys = %pending.join(", "),
                            "these keys differ from the running values and change only on restart; the rest is reloaded"
                        );
                    }
                    tracing::info!(file = %path.display(), "configuration reloaded");
                    metrics.reload_applied(!pending.is_empty());
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected; the running configuration stays");
                    metrics.reload_rejected();
                }
            }
        }
    }
    systemd::notify("READY=1\nSTATUS=serving");
}

/// Why serving stops.
pub(super) enum StopReason {
    /// SIGTERM or SIGINT: the unready phase, then the drain.
    Signal,
    /// A new process (this pid) is serving on our sockets: the drain at once.
    HandedOver(u32),
}

type Upgrading = Pin<Box<dyn Future<Output = Result<u32, String>> + Send>>;

pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            // Its default action would kill the process (logrotate configs written for nginx
            // send it).
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Reloads on SIGHUP and upgrades on SIGUSR2 until SIGTERM/SIGINT or a successful upgrade.
    pub(super) async fn wait_for_stop(
        &mut self,
        shared: &Shared,
        upgrader: &Upgrader,
        started: &Config,
    ) -> StopReason {
        let mut upgrading: Option<Upgrading> = None;
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM received");
                    return StopReason::Signal;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT received");
                    return StopReason::Signal;
                }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reloading");
                    reload(shared, started);
                }
                _ = self.usr1.recv() => {
                    tracing::info!("SIGUSR1 received: reopening the access log");
                    shared.load().access.reopen();
                }
                _ = self.usr2.recv() => {
                    if upgrading.is_some() {
                        tracing::warn!("SIGUSR2 received while an upgrade is in progress; ignored");
                        continue;
                    }
                    tracing::info!("SIGUSR2 received: upgrading");
                    match upgrader.start() {
                        Ok(p) => upgrading = Some(Box::pin(p.wait(READY_TIMEOUT))),
                        Err(e) => tracing::error!(error = %e, "upgrade failed: cannot start the new process; still serving"),
                    }
                }
                r = until(&mut upgrading) => {
                    upgrading = None;
                    match r {
                        Ok(pid) => {
                            tracing::info!(pid, "the new process is serving; handing over");
                            return StopReason::HandedOver(pid);
                        }
                        Err(e) => tracing::error!("upgrade failed: {e}; still serving"),
                    }
                }
            }
        }
    }

    /// Waits `delay` (the unready phase), cut short by another SIGTERM/SIGINT.
    pub(super) async fn hold(&mut self, delay: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.term.recv() => tracing::info!("SIGTERM received again: draining now"),
            _ = self.int.recv() => tracing::info!("SIGINT received again: draining now"),
        }
    }
}

/// The upgrade in progress, or never.
async fn until(upgrading: &mut Option<Upgrading>) -> Result<u32, String> {
    match upgrading {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
