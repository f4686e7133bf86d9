//! Accept loops: plaintext listeners (the HTTP/1.1 fast path, which hands h2c and request
//! bodies to hyper) and TLS listeners (handshake, then hyper by ALPN). Both share one loop that
//! backs off on accept errors, refuses connections beyond `max_connections`, and counts open
//! connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::proxy_protocol;
use crate::drain::Drain;
use crate::http::h1::HeadGate;
use crate::state::Shared;

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
    F: Fn(tokio::net::TcpStream, SocketAddr, Drain) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let serve = Arc::new(serve);
    let mut stop = drain.signal();
    let mut errors = AcceptErrors::new("accept failed");
    let mut at_capacity = AtCapacity::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    let pause = errors.failed(&e, &shared.runtime.metrics.accept_errors);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        _ = stop.wait() => break,
                    }
                }
            },
            _ = stop.wait() => break,
        };
        errors.accepted();
        let policy = shared.load();
        let max = policy.config.server.max_connections;
        if active.load(Ordering::Relaxed) >= max {
            // A reset: the cheapest answer for a connection we will not serve.
            let _ = stream.set_zero_linger();
            shared.runtime.metrics.connections_rejected.inc();
            at_capacity.refused(max);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&active));
        let server = &policy.config.server;
        if proxy_protocol::expected_from(&server.proxy_protocol, peer.ip()) {
            // A balancer's connection: the client's address comes first (read in the
            // connection's own task, never holding up the accepts).
            let (serve, drain, shared) = (Arc::clone(&serve), drain.clone(), Arc::clone(&shared));
            let timeout = server.header_read_timeout;
            tokio::spawn(async move {
                let mut stream = stream;
                let mut stop = drain.signal();
                // A drain does not wait for a header that has not come.
                let header = tokio::select! {
                    h = proxy_protocol::read_header(&mut stream, timeout) => h,
                    _ = stop.wait() => return,
                };
                match header {
                    Ok(client) => serve(stream, client.unwrap_or(peer), drain).await,
                    Err(reason) => {
                        let refused = &shared.runtime.metrics.proxy_protocol_refused;
                        refused.with_label_values(&[reason.as_str()]).inc();
                        tracing::debug!(%peer, reason = reason.as_str(), "no usable PROXY protocol header: connection closed");
                    }
                }
                drop(guard);
            });
            continue;
        }
        let conn = serve(stream, peer, drain.clone());
        tokio::spawn(async move {
            conn.await;
            drop(guard);
        });
    }
}

/// Connections refused at `max_connections`: counted by the caller
/// (`segd_connections_rejected_total`), said in the log at the first and then at most once per
/// [`AcceptErrors::SAY_EVERY`] with how many were left out (they reached no log before; nginx
/// says `worker_connections are not enough`).
#[derive(Default)]
pub(crate) struct AtCapacity {
    said: Option<Instant>,
    unsaid: u64,
}

impl AtCapacity {
    pub(crate) fn refused(&mut self, max_connections: usize) {
        let now = Instant::now();
        if self
            .said
            .is_none_or(|t| now.duration_since(t) >= AcceptErrors::SAY_EVERY)
        {
            tracing::warn!(
                max_connections,
                left_out = self.unsaid,
                "connection refused: server.max_connections reached (said at most every 10 s, left_out since the last line; counted in segd_connections_rejected_total)"
            );
            self.said = Some(now);
            self.unsaid = 0;
        } else {
            self.unsaid += 1;
        }
    }
}

/// What an accept loop does about failed accepts (EMFILE when descriptors run out, ENOBUFS,
/// …): each is counted (`segd_accept_errors_total{reason}`); the log says the first and then at
/// most one line per [`AcceptErrors::SAY_EVERY`] with how many it left out (a loop retrying
/// every few milliseconds would otherwise write a hundred lines a second); and the loop waits
/// before it tries again, from 10 ms doubling to 0.5 s while the failures last (as nginx
/// pauses accepting for 0.5 s on EMFILE), so it does not spin on a condition only time or
/// closing connections can clear.
pub(crate) struct AcceptErrors {
    what: &'static str,
    pause: Duration,
    said: Option<Instant>,
    unsaid: u64,
}

impl AcceptErrors {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_millis(500);
    const SAY_EVERY: Duration = Duration::from_secs(10);

    /// `what` is the log message ("accept failed").
    pub(crate) fn new(what: &'static str) -> AcceptErrors {
        AcceptErrors {
            what,
            pause: Self::FIRST_PAUSE,
            said: None,
            unsaid: 0,
        }
    }

    /// Counts and maybe logs `e`; returns how long to wait before the next accept.
    pub(crate) fn failed(
        &mut self,
        e: &std::io::Error,
        counter: &prometheus::IntCounterVec,
    ) -> Duration {
        counter.with_label_values(&[accept_error_reason(e)]).inc();
        let now = Instant::now();
        if self
            .said
            .is_none_or(|t| now.duration_since(t) >= Self::SAY_EVERY)
        {
            tracing::warn!(
                error = %e,
                left_out = self.unsaid,
                "{} (said at most every 10 s, left_out since the last line; counted in segd_accept_errors_total)",
                self.what
            );
            self.said = Some(now);
            self.unsaid = 0;
        } else {
            self.unsaid += 1;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
        pause
    }

    /// An accept succeeded: the next failure waits the shortest pause again.
    pub(crate) fn accepted(&mut self) {
        self.pause = Self::FIRST_PAUSE;
    }
}

/// The `reason` label of a failed accept.
fn accept_error_reason(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => "descriptors",
        Some(libc::ENOBUFS | libc::ENOMEM) => "memory",
        _ => "other",
    }
}

pub(super) type HyperBuilder =
    hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>;

/// `builder` for HTTP/1.1 connections whose heads `h1::HeadGate` reads first: the gate keeps an
/// idle connection for `keepalive_timeout` and answers a head not complete within
/// `header_read_timeout` of its first byte itself. hyper's own timer counts idle time too: it
/// runs past the largest both may be reloaded to, so the gate decides first.
fn gated(builder: &HyperBuilder) -> HyperBuilder {
    let mut b = builder.clone();
    b.http1()
        .header_read_timeout(crate::http::h1::HYPER_BACKSTOP);
    b
}

/// Plaintext listeners: the HTTP/1.1 fast path (which hands h2c connections to hyper).
pub(super) async fn accept_plain(
    listener: TcpListener,
    shared: Arc<Shared>,
    builder: Arc<HyperBuilder>,
    drain: Drain,
    active: Arc<std::sync::atomic::AtomicUsize>,
) {
    let sh = Arc::clone(&shared);
    // HTTP/1.1 connections hyper serves after a chunked body are gated as over TLS: hyper's
    // head timer is the backstop (`accept_tls`). h2c uses the same builder's HTTP/2 settings.
    let builder = Arc::new(gated(&builder));
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
/// current at accept, then hyper serves HTTP/1.1 or HTTP/2 as ALPN chose, each HTTP/1.1 head
/// read and checked by segd's parser first (`h1::HeadGate`). Bodies are copied
/// (encrypted in user space: this kernel has no kTLS), from the hot-body cache when they fit.
pub(super) async fn accept_tls(
    listener: TcpListener,
    shared: Arc<Shared>,
    builder: Arc<HyperBuilder>,
    drain: Drain,
    active: Arc<std::sync::atomic::AtomicUsize>,
    alt_svc: Option<http::HeaderValue>,
) {
    let sh = Arc::clone(&shared);
    // HTTP/1.1 heads are checked by segd's parser before hyper reads them (`h1::HeadGate`).
    let gated = gated(&builder);
    // The protocol ALPN chose is the one spoken (RFC 9113 §3.3): HTTP/2 only after `h2`,
    // HTTP/1.1 only after `http/1.1`; a client that offered neither gets either, by preface.
    let by_alpn = Arc::new(ByAlpn {
        h1: Arc::new(gated.clone().http1_only()),
        h2: Arc::new((*builder).clone().http2_only()),
        either: Arc::new(gated),
    });
    accept_loop(
        listener,
        shared,
        drain,
        active,
        move |stream, peer, drain| {
            let policy = sh.load();
            let acceptor = policy.tls.clone();
            let timeout = policy.config.server.header_read_timeout;
            let (shared, by_alpn) = (Arc::clone(&sh), Arc::clone(&by_alpn));
            let alt_svc = alt_svc.clone();
            async move {
                let Some(acceptor) = acceptor else { return };
                let _ = stream.set_nodelay(true);
                // Bodies may be encrypted from file mappings: the guard keeps a truncation fault's
                // zero page from reaching the socket.
                let stream = crate::io::mapped::FaultGuard::new(stream);
                // Beneath TLS, so a client that leaves right after its pipelined uploads (ffmpeg
                // with `-http_persistent 1`) still has them carried out (`h1::Prefixed`).
                let stream = crate::http::h1::Prefixed::new(bytes::Bytes::new(), stream, false);
                let peer_gone = stream.gone_flag();
                let writes = stream.writes_flag();
                let socket = stream.raw_fd();
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(mut tls)) => {
                        let version = match tls.get_ref().1.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                            _ => "other",
                        };
                        let m = &shared.runtime.metrics;
                        m.tls_handshakes.with_label_values(&[version]).inc();
                        let alpn = tls.get_ref().1.alpn_protocol();
                        // `gate`: HTTP/1.1 heads go through `HeadGate` (`Some(true)`: or an
                        // HTTP/2 preface may come first).
                        let (proto, builder, orphans, gate) = match alpn {
                            Some(b"h2") => ("h2", Arc::clone(&by_alpn.h2), false, None),
                            Some(_) => ("h1", Arc::clone(&by_alpn.h1), true, Some(false)),
                            // No ALPN (ffmpeg offers none): HTTP/1.1 unless the client sends the
                            // HTTP/2 preface, which no client without ALPN does in practice.
                            None => ("h1", Arc::clone(&by_alpn.either), true, Some(true)),
                        };
                        tls.get_mut().0.set_orphans(orphans);
                        let io = match gate {
                            None => HeadGate::through(tls),
                            Some(h2_preface) => HeadGate::new(
                                tls,
                                &shared.load().config.server,
                                shared.runtime.metrics.refusals.clone(),
                                h2_preface,
                            ),
                        };
                        let conn = crate::http::service::Conn {
                            peer,
                            proto,
                            tls: Some(version),
                            alt_svc,
                            peer_gone: orphans.then_some(peer_gone),
                            writes: orphans.then_some(writes),
                            socket: Some(socket),
                        };
                        crate::http::service::serve_io(io, conn, shared, builder, drain).await
                    }
                    Ok(Err(e)) => {
                        let reason = crate::tls::handshake_failure(&e);
                        let m = &shared.runtime.metrics.tls_handshake_failures;
                        m.with_label_values(&["tls", reason]).inc();
                        tracing::debug!(%peer, error = %e, reason, "TLS handshake failed")
                    }
                    Err(_) => {
                        let m = &shared.runtime.metrics.tls_handshake_failures;
                        m.with_label_values(&["tls", "timeout"]).inc();
                        tracing::debug!(%peer, "TLS handshake timed out")
                    }
                }
            }
        },
    )
    .await;
}

/// The hyper builders of a TLS listener, by the protocol ALPN chose.
struct ByAlpn {
    h1: Arc<HyperBuilder>,
    h2: Arc<HyperBuilder>,
    either: Arc<HyperBuilder>,
}

/// Decrements the open-connection count when a connection task ends, however it ends.
pub(super) struct ActiveGuard(pub(super) Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
