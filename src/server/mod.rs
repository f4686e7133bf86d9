//! Start-up and lifecycle: build the runtime, bind every listener, open the volumes, serve, and
//! drain on SIGTERM/SIGINT.
//!
//! Order matters: listeners are bound before anything is announced, so a bind failure is an
//! error at start (exit 1, naming the key and address) rather than a half-working daemon.

mod accept;
mod banner;
pub mod listener;
pub mod quic;
mod reload;
pub mod systemd;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{fmt_size, Config};
use crate::drain::Controller;
use crate::policy::Policy;
use crate::runtime::Runtime;
use crate::state::Shared;
use crate::volumes;
use accept::{accept_plain, accept_tls, ActiveGuard};
use reload::Signals;

/// Raises the soft descriptor limit to the hard one and keeps the open-file cache under half of
/// it, so cached descriptors can never starve new connections.
pub(super) fn fit_fd_limit(config: &mut Config) {
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
    if config.server.mmap && !crate::io::mapped::install() {
        tracing::warn!("cannot install the SIGBUS handler; large TLS bodies are read, not mapped");
    }
    // Before any thread exists: socket activation reads and clears the environment.
    let inherited = systemd::take_listeners();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.workers)
        .thread_name("segd-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(config, inherited))
}

/// A listener for `addr`: the socket systemd passed for it, else a fresh bind.
fn listener_for(
    addr: SocketAddr,
    key: &str,
    inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
) -> anyhow::Result<TcpListener> {
    if let Some(i) = inherited.iter().position(|(a, _)| *a == addr) {
        let (_, l) = inherited.swap_remove(i);
        l.set_nonblocking(true)
            .with_context(|| format!("inherited socket for {key} = {addr}"))?;
        tracing::info!(%addr, "using the socket passed by systemd");
        return TcpListener::from_std(l)
            .with_context(|| format!("inherited socket for {key} = {addr}"));
    }
    listener::bind_tcp(addr).with_context(|| format!("cannot bind {key} = {addr}"))
}

async fn serve(
    config: Config,
    mut inherited: Vec<(SocketAddr, std::net::TcpListener)>,
) -> anyhow::Result<()> {
    // Handlers first: once the banner or READY=1 is out, a SIGHUP must reload, never kill.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let config = Arc::new(config);
    let runtime =
        Arc::new(Runtime::new(&config).context("cannot build the store and its metrics")?);
    let policy = Policy::new(Arc::clone(&config), &runtime.metrics)?;
    let shared = Arc::new(Shared::new(runtime, policy));
    remove_stale_temps(&shared);
    shared.runtime.store.start_write_through();
    {
        // The pull cache a previous run left is indexed in the background; lookups meanwhile
        // find its files through their sidecars.
        let store = shared.runtime.store.clone();
        tokio::task::spawn_blocking(move || {
            let n = store.reindex_pull_cache();
            if n > 0 {
                tracing::info!(objects = n, "pull cache indexed");
            }
        });
    }
    crate::live::watcher::spawn(
        shared
            .runtime
            .store
            .volumes()
            .iter()
            .map(|v| v.path.clone())
            .collect(),
        config.live.prefixes.clone(),
        Arc::clone(&shared.runtime.live),
    );

    let mut plain: Vec<(SocketAddr, TcpListener)> = Vec::new();
    for (i, addr) in config.server.listen.iter().enumerate() {
        let l = listener_for(*addr, &format!("server.listen[{i}]"), &mut inherited)?;
        plain.push((l.local_addr()?, l));
    }
    let mut tls_listeners: Vec<(SocketAddr, TcpListener)> = Vec::new();
    let mut udp: Vec<std::net::UdpSocket> = Vec::new();
    if let Some(t) = &config.tls {
        for (i, addr) in t.listen.iter().enumerate() {
            let key = format!("tls.listen[{i}]");
            let (l, u) = tls_sockets(*addr, &key, t.http3, &mut inherited)?;
            tls_listeners.push((l.local_addr()?, l));
            udp.extend(u);
        }
    }
    let admin = match config.admin.listen {
        Some(addr) => {
            let l = listener_for(addr, "admin.listen", &mut inherited)?;
            Some((l.local_addr()?, l))
        }
        None => None,
    };
    for (a, _) in &inherited {
        tracing::warn!(addr = %a, "systemd passed a socket that no listen address names; it is not used");
    }

    let controller = Controller::new();
    let builder = Arc::new(crate::http::service::builder(&config, true));
    let tls_builder = Arc::new(crate::http::service::builder(&config, false));
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addrs: Vec<SocketAddr> = plain.iter().map(|(a, _)| *a).collect();
    for (_, l) in plain {
        tokio::spawn(accept_plain(
            l,
            Arc::clone(&shared),
            Arc::clone(&builder),
            controller.drain(),
            Arc::clone(&active),
        ));
    }
    let tls_addrs: Vec<SocketAddr> = tls_listeners.iter().map(|(a, _)| *a).collect();
    let http3 = !udp.is_empty();
    for (a, l) in tls_listeners {
        // Browsers learn of HTTP/3 from this header on TCP responses (same port number).
        let alt_svc = http3
            .then(|| http::HeaderValue::try_from(format!("h3=\":{}\"; ma=86400", a.port())).ok())
            .flatten();
        tokio::spawn(accept_tls(
            l,
            Arc::clone(&shared),
            Arc::clone(&tls_builder),
            controller.drain(),
            Arc::clone(&active),
            alt_svc,
        ));
    }
    for sock in udp {
        let Some(q) = shared.load().quic.clone() else {
            break;
        };
        let addr = sock.local_addr()?;
        let endpoint = quic::endpoint(sock, q)
            .with_context(|| format!("cannot start QUIC on {addr} (tls.http3)"))?;
        tokio::spawn(quic::accept(
            endpoint,
            Arc::clone(&shared),
            controller.drain(),
            Arc::clone(&active),
        ));
    }
    let admin_addr = admin.as_ref().map(|(a, _)| *a);
    if let Some((_, l)) = admin {
        tokio::spawn(crate::admin::serve(
            l,
            Arc::clone(&shared),
            controller.drain().signal(),
        ));
    }
    spawn_health_checks(&shared);
    banner::banner(
        &shared.load(),
        &shared.runtime.store.volumes(),
        &addrs,
        &tls_addrs,
        http3,
        admin_addr,
    );
    systemd::notify("READY=1\nSTATUS=serving");

    signals.wait_for_stop(&shared).await;
    systemd::notify("STOPPING=1\nSTATUS=draining");
    // Parked LL-HLS requests are answered now, not at their timeouts.
    shared.runtime.live.stop();
    let timeout = shared.load().config.server.drain_timeout;
    tracing::info!(timeout = %crate::config::fmt_duration(timeout), "draining: no new connections; waiting for in-flight responses");
    if controller.shutdown(timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached; exiting with connections still open");
    }
    Ok(())
}

/// The TCP listener for a `[tls] listen` address and, with HTTP/3 on, a UDP socket on the same
/// address and port. For port 0 the TCP port is chosen first and the UDP socket takes the same
/// number (retried with a new port if that UDP port is taken).
fn tls_sockets(
    addr: SocketAddr,
    key: &str,
    http3: bool,
    inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
) -> anyhow::Result<(TcpListener, Option<std::net::UdpSocket>)> {
    let mut tries = 0;
    loop {
        let l = listener_for(addr, key, inherited)?;
        if !http3 {
            return Ok((l, None));
        }
        let bound = l.local_addr()?;
        match quic::bind_udp(bound) {
            Ok(u) => return Ok((l, Some(u))),
            Err(e)
                if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 =>
            {
                tries += 1;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot bind UDP {bound} for HTTP/3 ({key} with tls.http3 = true)")
                })
            }
        }
    }
}

fn spawn_health_checks(shared: &Arc<Shared>) {
    let sh = Arc::clone(shared);
    let every = shared.load().config.server.volume_check_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let v = sh.runtime.store.volumes();
            // Probing stats the disks: keep it off the event loop.
            let _ = tokio::task::spawn_blocking(move || v.check_health()).await;
        }
    });
    // Object counts for the start-up log, in the background: a big disk takes a while to walk.
    for v in shared.runtime.store.volumes().iter() {
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

/// Temporary upload files a crash left behind are removed, in the background (a large tree takes
/// a while to walk; they are dot-files, never served meanwhile).
fn remove_stale_temps(shared: &Arc<Shared>) {
    let prefixes = shared.load().config.ingest.prefixes.clone();
    if prefixes.is_empty() {
        return;
    }
    let store = shared.runtime.store.clone();
    tokio::task::spawn_blocking(move || {
        let n = store.remove_stale_temps(&prefixes);
        if n > 0 {
            tracing::info!(
                removed = n,
                "removed temporary files left by an earlier run"
            );
        }
    });
}
