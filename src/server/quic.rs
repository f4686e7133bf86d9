//! QUIC endpoints for HTTP/3 (quinn): one UDP socket per `[tls] listen` address, the same port
//! number as the TCP listener.
//!
//! Transport limits follow `[server]`: `h3_max_concurrent_streams` bidirectional (request) streams
//! per connection, a few unidirectional ones (HTTP/3 needs three: control and two QPACK),
//! `keepalive_timeout` as the idle timeout, small receive windows (requests have no bodies) and a
//! bounded send window, so a connection never holds more than a few MiB of unacknowledged
//! response data; clients that implement the ACK frequency extension are asked to acknowledge
//! every 10 packets rather than every second one (`tls::quic_server_config`). Handshakes must
//! finish within `header_read_timeout`; connections count against `max_connections` together
//! with TCP ones.
//!
//! Address validation: with `tls.quic_retry` (default `auto`: while more than half of
//! `max_connections` are open) a new connection must first answer a stateless Retry, so spoofed
//! source addresses cannot make segd spend handshakes or send to victims.
//!
//! A reload swaps the endpoint's server config (new certificate for new handshakes; established
//! connections keep theirs). On drain the endpoint stops accepting, every connection sends
//! GOAWAY and finishes its requests, then the endpoint waits for the close to reach the peers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::quic_share::{Share, SharedSocket, TaggedCids};
use super::ActiveGuard;
use crate::config::QuicRetry;
use crate::drain::Drain;
use crate::state::Shared;

/// UDP socket buffers asked for (the kernel caps them at net.core.[rw]mem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket for `addr` with large buffers (best effort), non-blocking, IPv6-only for IPv6
/// addresses so `0.0.0.0:443` and `[::]:443` can both be bound.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    size_buffers(&sock);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Asks for [`SOCKET_BUFFER`] of send and receive buffer (best effort), on a socket bound here
/// or passed by systemd (`segd.socket`'s `ListenDatagram=` comes with the kernel's default).
pub fn size_buffers(sock: impl std::os::fd::AsFd) {
    let sock = socket2::SockRef::from(&sock);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
}

/// A quinn endpoint on `socket` serving the policy's QUIC config. Its connection IDs carry
/// `share`'s tag, and datagrams for another process's connections go to it (`quic_share`).
pub fn endpoint(
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
    share: Arc<Share>,
) -> std::io::Result<quinn::Endpoint> {
    use quinn::Runtime;
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(SharedSocket::new(
        runtime.wrap_udp_socket(socket)?,
        share.clone(),
    ));
    let mut endpoint_config = quinn::EndpointConfig::default();
    let tag = share.tag();
    endpoint_config.cid_generator(move || Box::new(TaggedCids { tag }));
    quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(config), socket, runtime)
}

/// Accepts QUIC connections until the drain starts, then waits for them to close.
pub async fn accept(
    endpoint: quinn::Endpoint,
    share: Arc<Share>,
    shared: Arc<Shared>,
    drain: Drain,
    active: Arc<AtomicUsize>,
) {
    let mut stop = drain.signal();
    let mut swaps = shared.swaps();
    let mut at_capacity = super::accept::AtCapacity::default();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            r = swaps.changed() => {
                if r.is_err() {
                    break;
                }
                if let Some(q) = shared.load().quic.clone() {
                    endpoint.set_server_config(Some(q));
                }
                continue;
            }
            _ = stop.wait() => break,
        };
        let policy = shared.load();
        let open = active.load(Ordering::Relaxed);
        let max = policy.config.server.max_connections;
        if open >= max {
            // Counted first: the refusal reaches the client at once.
            shared.runtime.metrics.connections_rejected.inc();
            at_capacity.refused(max);
            incoming.refuse();
            continue;
        }
        let retry = match policy.config.tls.as_ref().map(|t| t.quic_retry) {
            Some(QuicRetry::Always) => true,
            Some(QuicRetry::Auto) => open * 2 > max,
            _ => false,
        };
        let incoming = if retry && !incoming.remote_address_validated() {
            // The client comes back with a token proving it receives at its address.
            match incoming.retry() {
                Ok(()) => {
                    shared.runtime.metrics.quic_retries.inc();
                    continue;
                }
                Err(e) => e.into_incoming(),
            }
        } else {
            incoming
        };
        active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&active));
        let timeout = policy.config.server.header_read_timeout;
        let (shared, drain) = (Arc::clone(&shared), drain.clone());
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "QUIC connection refused");
                    return;
                }
            };
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => {
                    let m = &shared.runtime.metrics;
                    m.tls_handshakes.with_label_values(&["1.3"]).inc();
                    crate::http::h3::serve(conn, shared, drain).await;
                }
                Ok(Err(e)) => {
                    let reason = crate::tls::quic_handshake_failure(&e);
                    let m = &shared.runtime.metrics.tls_handshake_failures;
                    m.with_label_values(&["quic", reason]).inc();
                    tracing::debug!(%peer, error = %e, reason, "QUIC handshake failed")
                }
                Err(_) => {
                    let m = &shared.runtime.metrics.tls_handshake_failures;
                    m.with_label_values(&["quic", "timeout"]).inc();
                    tracing::debug!(%peer, "QUIC handshake timed out")
                }
            }
            drop(guard);
        });
    }
    // No new connections (their packets go to the process taking over, if there is one); the
    // open ones finish under their own drains. Keep the socket until their closes are delivered.
    share.stop_accepting();
    endpoint.set_server_config(None);
    endpoint.wait_idle().await;
    // After upgrades in a row, the processes after this one reach an older one through it.
    share.predecessor_gone().await;
    drop(drain);
}
