//! Start-up and lifecycle: build the runtime, bind every listener (or take the sockets systemd or
//! an upgrading process passed), open the volumes, serve, and drain on SIGTERM/SIGINT or after
//! handing the sockets to a new process (SIGUSR2, see `upgrade`).
//!
//! Order matters: listeners are bound before anything is announced, so a bind failure is an
//! error at start (exit 1, naming the key and address) rather than a half-working daemon.
//!
//! Stopping on SIGTERM/SIGINT: `/readyz` turns 503 and `segd_draining` 1 at once, STOPPING=1 is
//! sent, and everything keeps accepting and serving for `server.unready_delay`; then the drain
//! (stop accepting, in-flight responses finish within `drain_timeout`). After an upgrade the
//! drain starts at once: the new process answers on the same sockets, admin included.

mod accept;
pub(crate) use accept::AcceptErrors;
mod banner;
pub mod listener;
mod pidfile;
pub mod proxy_protocol;
pub mod quic;
mod quic_share;
mod reload;
pub mod systemd;
pub mod upgrade;
mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{fmt_size, Config};
use crate::drain::{Controller, Flag};
use crate::policy::Policy;
use crate::runtime::Runtime;
use crate::state::Shared;
use crate::volumes;
use accept::{accept_plain, accept_tls, ActiveGuard};
use listener::Inherited;
use reload::{Signals, StopReason};
use upgrade::{Handover, Upgrader};

/// Raises the soft descriptor limit to the hard one, keeps the open-file cache under half of it
/// (cached descriptors never starve new connections), and keeps `max_connections` under what is
/// left after the cache and [`fd_headroom`] (connections never starve the opens a request needs).
///
/// Without the second cap a flood of connections took every descriptor: requests on connections
/// already open got 503 `overloaded` (their file opens failed with EMFILE), and the connections
/// beyond the limit waited in the listen backlog, uncounted, while every accept loop logged
/// "accept failed" a hundred times a second. Capped, they are closed at once and counted in
/// `segd_connections_rejected_total`, as `max_connections` documents.
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
        let default = config.cache.open_files == crate::config::DEFAULT_OPEN_FILES;
        capped(
            "cache.open_files",
            config.cache.open_files,
            default,
            limit,
            cap,
            "exceeds half the descriptor limit; using half",
        );
        config.cache.open_files = cap;
    }
    let conns = connection_cap(limit, config.cache.open_files);
    let asked = config.server.max_connections as u64;
    if asked > conns {
        let default = config.server.max_connections == crate::config::DEFAULT_MAX_CONNECTIONS;
        capped(
            "server.max_connections",
            asked,
            default,
            limit,
            conns,
            "exceeds the descriptors left after cache.open_files and headroom; using what is \
             left (raise LimitNOFILE / ulimit -n to allow more)",
        );
        config.server.max_connections = usize::try_from(conns).unwrap_or(usize::MAX);
        if default && conns < FEW_CONNECTIONS {
            // Fitting the default is no news; fitting it to a handful of connections is: a
            // service run with a small `ulimit -n` serves a few clients and turns the rest away.
            tracing::warn!(
                limit,
                used = conns,
                "server.max_connections: only {conns} connections fit the descriptor limit \
                 ({limit}); raise LimitNOFILE / ulimit -n (65536 or more) to serve more"
            );
        }
    }
}

/// Fewer connections than this fitted to the descriptor limit are worth a warning.
const FEW_CONNECTIONS: u64 = 256;

/// Says that `key` was lowered from `configured` to `used` to fit the descriptor `limit`: an
/// info line for its default (meant to adapt to the machine: nothing was asked that cannot be
/// had), a warning, saying `why`, for a value the file set.
fn capped(key: &str, configured: u64, default: bool, limit: u64, used: u64, why: &str) {
    if default {
        tracing::info!(limit, used, "{key} fitted to the descriptor limit");
    } else {
        tracing::warn!(configured, limit, used, "{key} {why}");
    }
}

/// Descriptors kept free of connections and cached files for everything else: listeners, logs,
/// upload temporary files and their pipes, pull-tier upstream connections, directory handles;
/// beside the ones segd holds from its start (each worker's epoll and io_uring, eventfds,
/// pipes, listeners: about 35 when idle, whatever the worker count), which the 16 at least
/// did not cover: with a small limit, descriptors ran out at a third of the fitted connections.
fn fd_headroom(limit: u64) -> u64 {
    (limit / 8).clamp(16, 1024) + SELF_DESCRIPTORS
}

/// The descriptors an idle segd holds (measured: 35 with 2, 8 or 32 workers), with room.
const SELF_DESCRIPTORS: u64 = 48;

/// The most connections that fit in `limit` descriptors beside `open_files` cached ones (at
/// least one, so a tiny limit still serves).
fn connection_cap(limit: u64, open_files: u64) -> u64 {
    limit
        .saturating_sub(open_files)
        .saturating_sub(fd_headroom(limit))
        .max(1)
}

/// How long an idle blocking thread is kept. Long: a thread is cheap to keep and costs ~50 µs
/// to create, which a burst of cold requests (a stampede on a new object) would otherwise pay
/// once per request that finds no idle thread, serially, before the first upstream request.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Ready sockets a worker takes from epoll per driver tick (tokio's default: 1,024), and the tasks
/// it runs between ticks (default: 61). With thousands of ready connections, 1,024 wake-ups
/// overflow the worker's 256-task local queue into the shared one; 128 per tick, run before the
/// next tick, stay in the local queue, closer to how nginx serves each `epoll_wait` batch in
/// order. Measured with 10,000 and 2,000 connections: p99 5-13 % lower, CPU the same
/// (`benches/results/2026-11-29-0615-c10k-scheduler/notes.md`).
const IO_EVENTS_PER_TICK: usize = 128;
const TASKS_PER_TICK: u32 = 128;

/// Starts every blocking thread now (each of `n` tasks holds its thread a moment, so each needs
/// a thread of its own), so the first burst of file work finds them idle.
fn warm_blocking_pool(rt: &tokio::runtime::Runtime, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| rt.spawn_blocking(|| std::thread::sleep(std::time::Duration::from_millis(20))))
        .collect();
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Runs the daemon until SIGTERM/SIGINT and the drain finish.
pub fn run(mut config: Config) -> anyhow::Result<()> {
    fit_fd_limit(&mut config);
    if config.server.mmap && !crate::io::mapped::install() {
        tracing::warn!("cannot install the SIGBUS handler; large TLS bodies are read, not mapped");
    }
    // At start, before a new binary may be installed over it: what an upgrade will run.
    let exec = upgrade::Exec::capture();
    // Before any thread exists: socket activation and an upgrade's handover read and clear the
    // environment.
    let mut passed = systemd::take_listeners();
    let (from_parent, handover) = upgrade::take_handover();
    passed.extend(from_parent);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_io_events_per_tick(IO_EVENTS_PER_TICK)
        .event_interval(TASKS_PER_TICK)
        .worker_threads(config.server.workers)
        .max_blocking_threads(config.server.blocking_threads)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .thread_name("segd-worker")
        .on_thread_start(if config.server.sched_batch {
            sched_batch
        } else {
            || {}
        })
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    warm_blocking_pool(&rt, config.server.blocking_threads);
    volumes::set_busy_limit(config.server.blocking_threads);
    rt.block_on(serve(
        config,
        Inherited::new(passed),
        Upgrader::new(exec),
        handover,
    ))
}

/// Puts the calling thread under `SCHED_BATCH` (`[server] sched_policy = "batch"`): woken, it
/// does not preempt the thread running on its CPU (an upload's writer thread, say) but waits for
/// it to block or use up its slice, so a busy worker and a writer hand the CPU back and forth
/// far less often. A refusal (a seccomp filter, say) is logged and the thread stays as it was.
fn sched_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is this thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if r != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot set SCHED_BATCH (server.sched_policy) on a thread");
    }
}

/// Warns of a `[::]:PORT` in `listen` without `0.0.0.0:PORT`: IPv6 listeners are IPv6-only
/// (`listener::bind_tcp`), so such a port takes no IPv4 client, where before 2026-11-30 it was
/// dual-stack.
fn ipv4_left_out(key: &str, listen: &[SocketAddr]) {
    for a in listen {
        let v4_too = listen
            .iter()
            .any(|b| b.is_ipv4() && b.port() == a.port() && b.ip().is_unspecified());
        if a.is_ipv6() && a.ip().is_unspecified() && !v4_too {
            tracing::warn!(
                key,
                addr = %a,
                "IPv6 only: no IPv4 client reaches this port; add \"0.0.0.0:{}\" to {key} for them",
                a.port()
            );
        }
    }
}

/// A listener for `addr`: the socket passed for it (systemd, or the process this one upgrades),
/// else a fresh bind.
fn listener_for(
    addr: SocketAddr,
    key: &str,
    inherited: &mut Inherited,
) -> anyhow::Result<TcpListener> {
    if let Some((l, source)) = inherited.take_tcp(addr, key) {
        l.set_nonblocking(true)
            .with_context(|| format!("inherited socket for {key} = {addr}"))?;
        let at = l.local_addr().ok();
        tracing::info!(addr = ?at.unwrap_or(addr), key, "using the socket passed by {}", source.as_str());
        return TcpListener::from_std(l)
            .with_context(|| format!("inherited socket for {key} = {addr}"));
    }
    listener::bind_tcp(addr).with_context(|| format!("cannot bind {key} = {addr}"))
}

async fn serve(
    config: Config,
    mut inherited: Inherited,
    mut upgrader: Upgrader,
    mut handover: Option<Handover>,
) -> anyhow::Result<()> {
    // Handlers first: once the banner or READY=1 is out, a SIGHUP must reload, never kill (and
    // SIGUSR2's default action would kill too).
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    watchdog::start();
    let config = Arc::new(config);
    // QUIC tokens the old process issued stay valid here.
    let runtime = match handover.as_mut().and_then(Handover::take_quic_token_key) {
        Some(key) => Runtime::with_quic_token_key(&config, key),
        None => Runtime::new(&config),
    };
    let runtime = Arc::new(runtime.context("cannot build the store and its metrics")?);
    upgrader.pass_quic_token_key(runtime.quic_token_key.clone());
    let policy = Policy::new(Arc::clone(&config), &runtime)?;
    let shared = Arc::new(Shared::new(runtime, policy));
    // Before the first request: a copy replaced or deleted while its volume was down (and
    // journaled then) must not be served now that the volume is here.
    let store = shared.runtime.store.clone();
    let settled = tokio::task::spawn_blocking(move || store.settle_outage_writes()).await;
    if let Ok((n @ 1.., _)) = settled {
        tracing::info!(
            removed = n,
            "removed copies replaced or deleted while their volume was down"
        );
    }
    match handover.as_ref().map(Handover::parent) {
        None => start_up_cleanup(&shared),
        Some(parent) => {
            // The old process's uploads and pull fills are still in flight, as temporary files
            // the clean-up would delete: it waits until that process has exited.
            let sh = Arc::clone(&shared);
            tokio::spawn(async move {
                upgrade::parent_exited(parent).await;
                start_up_cleanup(&sh);
            });
        }
    }
    watch_live_playlists(&shared);

    ipv4_left_out("server.listen", &config.server.listen);
    if let Some(t) = &config.tls {
        ipv4_left_out("tls.listen", &t.listen);
    }
    let mut plain: Vec<(SocketAddr, TcpListener)> = Vec::new();
    for (i, addr) in config.server.listen.iter().enumerate() {
        let key = format!("server.listen[{i}]");
        let l = listener_for(*addr, &key, &mut inherited)?;
        keep(&mut upgrader, &l, &key);
        plain.push((l.local_addr()?, l));
    }
    let mut tls_listeners: Vec<(SocketAddr, TcpListener)> = Vec::new();
    let mut udp: Vec<std::net::UdpSocket> = Vec::new();
    if let Some(t) = &config.tls {
        for (i, addr) in t.listen.iter().enumerate() {
            let key = format!("tls.listen[{i}]");
            let (l, u) = tls_sockets(*addr, &key, t.http3, &mut inherited)?;
            keep(&mut upgrader, &l, &key);
            if let Some(u) = &u {
                keep(&mut upgrader, u, &key);
            }
            tls_listeners.push((l.local_addr()?, l));
            udp.extend(u);
        }
    }
    let admin = match config.admin.listen {
        Some(addr) => {
            let l = listener_for(addr, "admin.listen", &mut inherited)?;
            keep(&mut upgrader, &l, "admin.listen");
            Some((l.local_addr()?, l))
        }
        None => None,
    };
    for p in inherited.unclaimed() {
        tracing::warn!(addr = %p.addr, "{} passed a socket that no listen address names; it is not used", p.source.as_str());
    }
    drop(inherited);
    let mut endpoints = Vec::new();
    // Connection IDs name the process (the old one's tag plus one after an upgrade), so the
    // two can pass each other's datagrams while they share the sockets (`quic_share`).
    let tag = handover
        .as_ref()
        .and_then(Handover::quic_tag)
        .map_or_else(quic_share::first_tag, |t| t.wrapping_add(1));
    for sock in udp {
        let Some(q) = shared.load().quic.clone() else {
            break;
        };
        let addr = sock.local_addr()?;
        let predecessor = match handover.as_mut().and_then(|h| h.take_quic_link(addr)) {
            Some(fd) => Some(
                quic_share::Link::new(fd)
                    .with_context(|| format!("the old process's QUIC link for {addr}"))?,
            ),
            None => None,
        };
        let share = Arc::new(quic_share::Share::new(
            tag,
            predecessor,
            shared.runtime.metrics.quic_handover_datagrams.clone(),
        ));
        upgrader.share_quic(addr, Arc::clone(&share));
        let endpoint = quic::endpoint(sock, q, Arc::clone(&share))
            .with_context(|| format!("cannot start QUIC on {addr} (tls.http3)"))?;
        endpoints.push((endpoint, share));
    }
    // Last of what can fail: an upgraded process that fails here exits before it has accepted
    // anything, and the old one goes on serving (its pid stays in the file).
    if let Some(path) = &config.server.pid_file {
        pidfile::write(path)
            .with_context(|| format!("cannot write server.pid_file {}", path.display()))?;
    }

    let controller = Controller::new();
    // Set when SIGTERM/SIGINT starts the drain (`/readyz` 503), and when the sockets have been
    // handed to a new process (the admin listener stops accepting).
    let unready = Flag::new();
    let released = Flag::new();
    let builder = Arc::new(crate::http::service::builder(&config));
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
    let http3 = !endpoints.is_empty();
    for (a, l) in tls_listeners {
        // Browsers learn of HTTP/3 from this header on TCP responses (same port number).
        let alt_svc = http3
            .then(|| http::HeaderValue::try_from(format!("h3=\":{}\"; ma=86400", a.port())).ok())
            .flatten();
        tokio::spawn(accept_tls(
            l,
            Arc::clone(&shared),
            Arc::clone(&builder),
            controller.drain(),
            Arc::clone(&active),
            alt_svc,
        ));
    }
    // Kept to close the connections still open when the drain times out.
    let quic_endpoints: Vec<quinn::Endpoint> = endpoints.iter().map(|(e, _)| e.clone()).collect();
    for (endpoint, share) in endpoints {
        tokio::spawn(quic::accept(
            endpoint,
            share,
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
            unready.watch(),
            released.watch(),
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
    if let Some(interval) = systemd::watchdog_interval(handover.is_some()) {
        tokio::spawn(systemd::keep_watchdog_fed(interval));
    }
    match handover {
        None => systemd::notify("READY=1\nSTATUS=serving"),
        Some(h) => {
            // Under systemd this process becomes the service's main process (the unit needs
            // NotifyAccess=all to accept it from us).
            systemd::notify(&format!(
                "MAINPID={}\nREADY=1\nSTATUS=serving",
                std::process::id()
            ));
            tracing::info!(
                old = h.parent(),
                "serving; telling the old process to drain"
            );
            h.ready();
        }
    }

    let stop = signals.wait_for_stop(&shared, &upgrader, &config).await;
    // Our spare copies of the sockets go first: a drain must be able to close them.
    drop(upgrader);
    let metrics = &shared.runtime.metrics;
    metrics.draining.set(1);
    let handed_over = matches!(stop, StopReason::HandedOver(_));
    match stop {
        StopReason::Signal => {
            unready.set();
            systemd::notify("STOPPING=1\nSTATUS=draining");
            let delay = shared.load().config.server.unready_delay;
            if !delay.is_zero() {
                tracing::info!(delay = %crate::config::fmt_duration(delay), "not ready: still serving until the delay ends, then draining");
                signals.hold(delay).await;
            }
        }
        StopReason::HandedOver(pid) => {
            // No STOPPING=1: the service goes on in the new process (its MAINPID).
            released.set();
            tracing::info!(new = pid, "sockets handed over");
        }
    }
    // Write-through entries queued from now on wait for the next process (after an upgrade, the
    // new one), which alone knows which of its own uploads are still before their rename.
    shared.runtime.store.stop_write_through();
    let timeout = shared.load().config.server.drain_timeout;
    if handed_over {
        // Parked LL-HLS requests go on waiting: the new process's writes reach this registry
        // through the live watcher (inotify sees its renames), so they are answered with what
        // they asked for (RFC 8216bis §6.2.5.2), or 503 at their timeout; those still parked
        // 1 s before the drain ends are answered with what there is.
        let live = Arc::clone(&shared.runtime.live);
        let grace = timeout.saturating_sub(std::time::Duration::from_secs(1));
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            live.stop();
        });
    } else {
        // Stopping for good: parked LL-HLS requests are answered now, not at their timeouts.
        shared.runtime.live.stop();
    }
    tracing::info!(timeout = %crate::config::fmt_duration(timeout), "draining: no new connections; waiting for in-flight responses");
    if controller.shutdown(timeout).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached; exiting with connections still open");
        // HTTP/3 clients are told (CONNECTION_CLOSE, H3_NO_ERROR), or they would wait for their
        // own idle timeout to notice the process is gone; TCP ones learn it from the kernel.
        for e in &quic_endpoints {
            e.close(quinn::VarInt::from_u32(0x100), b"server stopping");
        }
        for e in &quic_endpoints {
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), e.wait_idle()).await;
        }
    }
    // The file this process wrote (a reload does not move it: server.pid_file is restart-only).
    if let Some(path) = &config.server.pid_file {
        pidfile::remove_if_ours(path);
    }
    Ok(())
}

/// Keeps a copy of a socket for an upgrade; without it an upgrade would bind that address anew.
fn keep(upgrader: &mut Upgrader, sock: &impl std::os::fd::AsFd, key: &str) {
    if let Err(e) = upgrader.keep(sock, key) {
        tracing::warn!(key, error = %e, "cannot keep a copy of the socket for upgrades");
    }
}

/// The TCP listener for a `[tls] listen` address and, with HTTP/3 on, a UDP socket on the same
/// address and port. For port 0 the TCP port is chosen first and the UDP socket takes the same
/// number (retried with a new port if that UDP port is taken).
fn tls_sockets(
    addr: SocketAddr,
    key: &str,
    http3: bool,
    inherited: &mut Inherited,
) -> anyhow::Result<(TcpListener, Option<std::net::UdpSocket>)> {
    let mut tries = 0;
    loop {
        let l = listener_for(addr, key, inherited)?;
        if !http3 {
            return Ok((l, None));
        }
        let bound = l.local_addr()?;
        if let Some((u, source)) = inherited.take_udp(bound) {
            u.set_nonblocking(true)
                .with_context(|| format!("inherited UDP socket for {key} = {bound}"))?;
            if source == listener::Source::Systemd {
                quic::size_buffers(&u);
            }
            tracing::info!(addr = %bound, key, "using the UDP socket passed by {}", source.as_str());
            return Ok((l, Some(u)));
        }
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

/// Watches the volumes' live directories for playlists written by local packagers
/// ([`crate::live::watcher`]), again after a reload that changes the volumes or the live
/// prefixes.
fn watch_live_playlists(shared: &Arc<Shared>) {
    let watched = |sh: &Shared| -> (Vec<std::path::PathBuf>, Vec<String>) {
        let roots = sh
            .runtime
            .store
            .volumes()
            .served()
            // Not the pull cache: its copies of an upstream's live playlists are the upstream's
            // to announce (LL-HLS requests pass through to it), not this node's.
            .map(|(_, v)| v.path.clone())
            .collect();
        (roots, sh.load().config.live.prefixes.clone())
    };
    let limit = |sh: &Shared| {
        let max = sh.load().config.live.max_playlist_bytes;
        (sh.runtime.live.max_playlist_bytes).store(max, std::sync::atomic::Ordering::Relaxed);
    };
    limit(shared);
    let mut now = watched(shared);
    crate::live::watcher::spawn(
        now.0.clone(),
        now.1.clone(),
        Arc::clone(&shared.runtime.live),
    );
    let sh = Arc::clone(shared);
    let mut swaps = shared.swaps();
    tokio::spawn(async move {
        while swaps.changed().await.is_ok() {
            limit(&sh);
            let next = watched(&sh);
            if next != now {
                now = next;
                crate::live::watcher::spawn(
                    now.0.clone(),
                    now.1.clone(),
                    Arc::clone(&sh.runtime.live),
                );
            }
        }
    });
}

fn spawn_health_checks(shared: &Arc<Shared>) {
    // A tick a second: one that comes late by more than `RESUME_GAP` says the process did not
    // run meanwhile (see `live::Registry::resumed`).
    const RESUME_GAP: std::time::Duration = std::time::Duration::from_secs(4);
    let sh = Arc::clone(shared);
    tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let gap = last.elapsed();
            last = tokio::time::Instant::now();
            if gap > RESUME_GAP {
                sh.runtime.live.resumed(gap);
            }
        }
    });
    let sh = Arc::clone(shared);
    let every = shared.load().config.server.volume_check_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recoveries = |v: &volumes::Volumes| v.iter().map(volumes::Volume::recoveries).sum();
        let mut settled: u64 = recoveries(&sh.runtime.store.volumes());
        // Whether a settlement left copies it could not remove, and when it ran.
        let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tried = std::time::Instant::now();
        // A probe that has not returned for this long marks its volume down.
        let stall = (every * 5).clamp(
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(60),
        );
        // Copies that could not be removed are tried again this often, until they are.
        let retry = (every * 10).clamp(
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(60),
        );
        loop {
            tick.tick().await;
            let vols = sh.runtime.store.volumes();
            // Probing asks the disks: off the event loop, a volume each, so that a disk that
            // does not answer holds its own probe only (one at a time: `Volume::probe`). On
            // threads of their own, not the blocking pool: uploads stuck on a hung disk can
            // take every thread of the pool, and the probe that would see it waited behind
            // them (acceptance F2, under load).
            let probes: Vec<_> = (0..vols.len())
                .filter(|&i| vols.get(i).is_some_and(|v| !v.probing()))
                .filter_map(|i| {
                    let v = Arc::clone(&vols);
                    let (done, probed) = tokio::sync::oneshot::channel();
                    std::thread::Builder::new()
                        .name("segd-probe".into())
                        .spawn(move || {
                            let healthy = v.get(i).map(|v| {
                                let healthy = v.probe();
                                // Its disk answers: the temporary files given up while it did
                                // not go now (on this thread: a disk that stops again holds
                                // its probe, and the stall is seen).
                                if healthy && !v.is_stuck() {
                                    v.remove_abandoned();
                                }
                                healthy
                            });
                            let _ = done.send(healthy);
                        })
                        .ok()
                        .map(|_| probed)
                })
                .collect();
            let _ = tokio::time::timeout(stall, futures_util::future::join_all(probes)).await;
            // A probe that has not returned for `stall`: its disk is taken for down.
            for v in vols.iter() {
                v.check_stalled(stall);
            }
            // A volume came back (this check or a request's probe found it): copies on it that
            // were replaced or deleted meanwhile go.
            let now = recoveries(&sh.runtime.store.volumes());
            let again = left.load(std::sync::atomic::Ordering::Relaxed) && tried.elapsed() >= retry;
            if now != settled || again {
                settled = now;
                tried = std::time::Instant::now();
                left.store(false, std::sync::atomic::Ordering::Relaxed);
                // Not awaited: the health checks go on while it works.
                let store = sh.runtime.store.clone();
                let left = Arc::clone(&left);
                tokio::task::spawn_blocking(move || {
                    let (_, rest) = store.settle_outage_writes();
                    left.fetch_or(rest, std::sync::atomic::Ordering::Relaxed);
                });
            }
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

/// What a previous run may have left: temporary upload files a crash left behind are removed,
/// and the pull cache is indexed. In the background: a large tree takes a while to walk (the
/// temporary files are dot-files, never served meanwhile; lookups find pulled files through
/// their sidecars meanwhile).
fn start_up_cleanup(shared: &Arc<Shared>) {
    // The write-through queue is this process's to work from now on (an old process stopped
    // taking entries when its drain began).
    shared.runtime.store.start_write_through();
    let store = shared.runtime.store.clone();
    tokio::task::spawn_blocking(move || {
        let n = store.reindex_pull_cache();
        if n > 0 {
            tracing::info!(objects = n, "pull cache indexed");
        }
    });
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

#[cfg(test)]
mod tests {
    use super::connection_cap;

    /// Connections fitted beside a full open-file cache leave the descriptors an idle segd
    /// holds (35 measured) free, whatever the limit: under `ulimit -n 128` they ran out at a
    /// third of the fitted connections, and requests on open ones got 503.
    #[test]
    fn fitted_connections_leave_segds_own_descriptors() {
        const IDLE: u64 = 35;
        for limit in [64, 128, 256, 400, 1024, 4096, 1 << 20] {
            let open_files = limit / 2;
            let conns = connection_cap(limit, open_files);
            assert!(conns >= 1, "limit {limit}");
            if limit >= 128 {
                assert!(
                    open_files + conns + IDLE <= limit,
                    "limit {limit}: {open_files} files + {conns} connections + {IDLE} own"
                );
            }
        }
    }
}
