//! Start-up and lifecycle: build the runtime, bind every listener, open the volumes, serve, and
//! drain on SIGTERM/SIGINT.
//!
//! Order matters: listeners are bound before anything is announced, so a bind failure is an
//! error at start (exit 1, naming the key and address) rather than a half-working daemon.

pub mod listener;
pub mod quic;
pub mod shutdown;
pub mod systemd;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{fmt_size, Config};
use crate::metrics::Metrics;
use crate::state::{Shared, State};
use crate::volumes;
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
    let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
    let state = State::new(Arc::clone(&config), metrics)
        .context("cannot open the access log (log.access)")?;
    state
        .metrics
        .io_backend
        .with_label_values(&[state.io.kind().as_str()])
        .set(1);
    let shared = Arc::new(Shared::new(state));

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
    let http3 = !udp.is_empty();
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
    banner(&shared.load(), &addrs, &tls_addrs, http3, admin_addr);
    systemd::notify("READY=1\nSTATUS=serving");

    signals.wait_for_stop(&shared).await;
    systemd::notify("STOPPING=1\nSTATUS=draining");
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
            match State::reload(&old, Arc::new(cfg)) {
                Ok(st) => {
                    shared.swap(st);
                    tracing::info!(file = %path.display(), "configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload rejected: cannot open the access log; the running configuration stays")
                }
            }
        }
    }
    systemd::notify("READY=1\nSTATUS=serving");
}

/// Accepts until the drain starts: backs off on accept errors (EMFILE and friends) instead of
/// spinning, closes connections beyond `max_connections` at once (counted), and runs `serve` for
/// each accepted connection while it counts as open.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    drain: Drain,
    active: Arc<std::sync::atomic::AtomicUsize>,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, Drain) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let mut stop = drain.signal();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.wait() => break,
        };
        let state = shared.load();
        if active.load(Ordering::Relaxed) >= state.config.server.max_connections {
            // A reset: the cheapest answer for a connection we will not serve.
            let _ = stream.set_zero_linger();
            state.metrics.connections_rejected.inc();
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&active));
        let conn = serve(stream, peer, drain.clone());
        tokio::spawn(async move {
            conn.await;
            drop(guard);
        });
    }
}

type HyperBuilder = hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

/// Plaintext listeners: the HTTP/1.1 fast path (which hands h2c connections to hyper).
async fn accept_plain(
    listener: TcpListener,
    shared: Arc<Shared>,
    builder: Arc<HyperBuilder>,
    drain: Drain,
    active: Arc<std::sync::atomic::AtomicUsize>,
) {
    let sh = Arc::clone(&shared);
    accept_loop(
        listener,
        shared,
        drain,
        active,
        move |stream, peer, drain| {
            crate::http::h1::serve(stream, peer, Arc::clone(&sh), Arc::clone(&builder), drain)
        },
    )
    .await;
}

/// TLS listeners: handshake (within `header_read_timeout`) with the TLS config of the state
/// current at accept, then hyper serves HTTP/1.1 or HTTP/2 as ALPN chose. Bodies are copied
/// (encrypted in user space: this kernel has no kTLS), from the hot-body cache when they fit.
async fn accept_tls(
    listener: TcpListener,
    shared: Arc<Shared>,
    builder: Arc<HyperBuilder>,
    drain: Drain,
    active: Arc<std::sync::atomic::AtomicUsize>,
    alt_svc: Option<http::HeaderValue>,
) {
    let sh = Arc::clone(&shared);
    accept_loop(
        listener,
        shared,
        drain,
        active,
        move |stream, peer, drain| {
            let state = sh.load();
            let acceptor = state.tls.clone();
            let timeout = state.config.server.header_read_timeout;
            let (shared, builder) = (Arc::clone(&sh), Arc::clone(&builder));
            let alt_svc = alt_svc.clone();
            async move {
                let Some(acceptor) = acceptor else { return };
                let _ = stream.set_nodelay(true);
                // Bodies may be encrypted from file mappings: the guard keeps a truncation fault's
                // zero page from reaching the socket.
                let stream = crate::io::mapped::FaultGuard::new(stream);
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let version = match tls.get_ref().1.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                            _ => "other",
                        };
                        let m = &shared.load().metrics;
                        m.tls_handshakes.with_label_values(&[version]).inc();
                        let proto = match tls.get_ref().1.alpn_protocol() {
                            Some(b"h2") => "h2",
                            _ => "h1",
                        };
                        let conn = crate::http::service::Conn {
                            peer,
                            proto,
                            tls: Some(version),
                            alt_svc,
                        };
                        crate::http::service::serve_io(tls, conn, shared, builder, drain).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        },
    )
    .await;
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ActiveGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn spawn_health_checks(shared: &Arc<Shared>) {
    let sh = Arc::clone(shared);
    let state = shared.load();
    let every = state.config.server.volume_check_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let v = Arc::clone(&sh.load().volumes);
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
fn banner(
    state: &State,
    addrs: &[SocketAddr],
    tls: &[SocketAddr],
    http3: bool,
    admin: Option<SocketAddr>,
) {
    let version = env!("CARGO_PKG_VERSION");
    let mut out = String::new();
    for a in addrs {
        out.push_str(&format!(
            "segd {version}: listening http://{a} (HTTP/1.1, h2c)\n"
        ));
    }
    for a in tls {
        out.push_str(&format!(
            "segd {version}: listening https://{a} (TLS 1.3/1.2; HTTP/1.1 and h2 by ALPN)\n"
        ));
        if http3 {
            out.push_str(&format!(
                "segd {version}: listening https://{a} over QUIC/UDP (HTTP/3, TLS 1.3)\n"
            ));
        }
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

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads on SIGHUP until SIGTERM or SIGINT.
    async fn wait_for_stop(mut self, shared: &Shared) {
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
