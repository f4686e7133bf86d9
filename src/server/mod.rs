//! Start-up and lifecycle: build the runtime, bind every listener, open the volumes, serve, and
//! drain on SIGTERM/SIGINT.
//!
//! Order matters: listeners are bound before anything is announced, so a bind failure is an
//! error at start (exit 1, naming the key and address) rather than a half-working daemon.

pub mod listener;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{fmt_size, Config};
use crate::metrics::Metrics;
use crate::state::State;
use crate::volumes::{self, Volumes};
use shutdown::{Controller, Drain};

/// Raises the soft descriptor limit to the hard one and keeps the open-file cache under half of
/// it, so cached descriptors can never starve new connections.
fn fit_fd_limit(config: &mut Config) {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft < hard {
        let new = rustix::process::Rlimit {
            current: Some(hard),
            maximum: lim.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, new) {
            tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit");
        }
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let cap = limit / 2;
    if config.cache.open_files > cap {
        tracing::warn!(
            configured = config.cache.open_files,
            limit,
            used = cap,
            "cache.open_files exceeds half the descriptor limit; using half"
        );
        config.cache.open_files = cap;
    }
}

/// Runs the daemon until SIGTERM/SIGINT and the drain finish.
pub fn run(mut config: Config) -> anyhow::Result<()> {
    fit_fd_limit(&mut config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.workers)
        .thread_name("segd-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    let volumes = Arc::new(Volumes::new(&config.volumes));
    let state = Arc::new(State::new(Arc::clone(&config), volumes, metrics));
    state
        .metrics
        .io_backend
        .with_label_values(&[state.io.kind().as_str()])
        .set(1);

    let mut plain: Vec<(SocketAddr, TcpListener)> = Vec::new();
    for (i, addr) in config.server.listen.iter().enumerate() {
        let l = listener::bind_tcp(*addr)
            .with_context(|| format!("cannot bind server.listen[{i}] = {addr}"))?;
        plain.push((l.local_addr()?, l));
    }
    let admin = match config.admin.listen {
        Some(addr) => {
            let l = listener::bind_tcp(addr)
                .with_context(|| format!("cannot bind admin.listen = {addr}"))?;
            Some((l.local_addr()?, l))
        }
        None => None,
    };

    let controller = Controller::new();
    let builder = Arc::new(crate::http::service::builder(&state));
    let addrs: Vec<SocketAddr> = plain.iter().map(|(a, _)| *a).collect();
    for (_, l) in plain {
        tokio::spawn(accept_plain(
            l,
            Arc::clone(&state),
            Arc::clone(&builder),
            controller.drain(),
        ));
    }
    let admin_addr = admin.as_ref().map(|(a, _)| *a);
    if let Some((_, l)) = admin {
        tokio::spawn(crate::admin::serve(
            l,
            Arc::clone(&state),
            controller.drain().signal(),
        ));
    }
    spawn_health_checks(&state);
    banner(&state, &addrs, admin_addr);

    wait_for_stop().await;
    let timeout = config.server.drain_timeout;
    tracing::info!(timeout = %crate::config::fmt_duration(timeout), "draining: no new connections; waiting for in-flight responses");
    if controller.shutdown(timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached; exiting with connections still open");
    }
    Ok(())
}

async fn accept_plain(
    listener: TcpListener,
    state: Arc<State>,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    drain: Drain,
) {
    let mut stop = drain.signal();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a full process.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.wait() => break,
        };
        tokio::spawn(crate::http::h1::serve(
            stream,
            peer,
            Arc::clone(&state),
            Arc::clone(&builder),
            drain.clone(),
        ));
    }
}

fn spawn_health_checks(state: &Arc<State>) {
    let volumes = Arc::clone(&state.volumes);
    let every = state.config.server.volume_check_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let v = Arc::clone(&volumes);
            // Probing stats the disks: keep it off the event loop.
            let _ = tokio::task::spawn_blocking(move || v.check_health()).await;
        }
    });
    // Object counts for the start-up log, in the background: a big disk takes a while to walk.
    for v in state.volumes.iter() {
        let (name, path) = (v.name.clone(), v.path.clone());
        tokio::task::spawn_blocking(move || match volumes::survey(&path, 1_000_000) {
            Ok((n, bytes, false)) => {
                tracing::info!(volume = %name, objects = n, bytes = %fmt_size(bytes), "volume surveyed")
            }
            Ok((n, bytes, true)) => {
                tracing::info!(volume = %name, objects = %format!(">{n}"), bytes = %format!(">{}", fmt_size(bytes)), "volume survey stopped at 1,000,000 entries")
            }
            Err(e) => tracing::warn!(volume = %name, error = %e, "volume survey failed"),
        });
    }
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The start-up banner on stdout: every bound address and volume, then the URLs to open.
/// Tests and scripts read the `listening` lines to learn ephemeral ports.
fn banner(state: &State, addrs: &[SocketAddr], admin: Option<SocketAddr>) {
    let version = env!("CARGO_PKG_VERSION");
    let mut out = String::new();
    for a in addrs {
        out.push_str(&format!(
            "segd {version}: listening http://{a} (HTTP/1.1, h2c)\n"
        ));
    }
    if let Some(a) = admin {
        out.push_str(&format!(
            "segd {version}: admin http://{a} (/metrics /healthz /readyz)\n"
        ));
    }
    for v in state.volumes.iter() {
        let fs = rustix::fs::statvfs(&v.path)
            .map(|s| {
                let total = s.f_blocks * s.f_frsize;
                let free = s.f_bavail * s.f_frsize;
                format!("filesystem {} ({} free)", human(total), human(free))
            })
            .unwrap_or_else(|e| format!("filesystem unavailable: {e}"));
        out.push_str(&format!(
            "segd {version}: volume {} at {}: {}, {}\n",
            v.name,
            v.path.display(),
            if v.is_healthy() {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            fs
        ));
    }
    if let Some(a) = addrs.first() {
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            match a {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            }
        };
        let base = format!("http://{host}:{}", a.port());
        for p in &state.config.server.print_urls {
            out.push_str(&format!(
                "segd {version}: open {}\n",
                signed_url(state, &base, p)
            ));
        }
    }
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// `base + path`, or for a protected path the path-embedded form with a token for the path's
/// directory (valid for `token.mint_ttl`), which players carry to every relative URI.
fn signed_url(state: &State, base: &str, path: &str) -> String {
    if !state.auth.is_protected(path) {
        return format!("{base}{path}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = &path[..path.rfind('/').unwrap_or(0)];
    let acl = format!("{dir}/*");
    let spec = crate::auth::edgeauth::SignSpec {
        acl: Some(&acl),
        exp: now + state.config.token.mint_ttl.as_secs(),
        ..Default::default()
    };
    match state.auth.sign(&spec, None, now) {
        Some((_, token)) => crate::auth::ready_urls(base, state.auth.name(), &token, path).2,
        None => format!("{base}{path} (protected, but no signing key is active)"),
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers; running until killed");
            return std::future::pending().await;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return; }
            _ = int.recv() => { tracing::info!("SIGINT received"); return; }
            _ = hup.recv() => {
                tracing::warn!("SIGHUP received: live reload is not implemented yet; restart to apply a new config");
            }
        }
    }
}
