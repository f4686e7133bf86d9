//! One QUIC socket, two processes: how an upgrade hands HTTP/3 over without losing packets.
//!
//! TCP hands over cleanly: the new process takes the listening socket and the old one keeps the
//! connections it accepted. A UDP socket cannot be split like that. Both processes read the same
//! socket while the old one drains, and the kernel gives each datagram to whichever reads first,
//! so without help about half of each process's packets reach the other, which does not know
//! the connection and drops them.
//!
//! So each process tags the connection IDs it issues (the first byte, [`TaggedCids`]: the new
//! process's tag is the old one's plus one), and the two are joined by a `SOCK_SEQPACKET` pair
//! passed with the sockets ([`Link`]). Every datagram is routed before quinn sees it
//! ([`route`]): one for the other process's connection ID goes over the link with its addresses
//! and ECN bits, and the other process feeds it to its endpoint as if it had read it from the
//! socket. Packets whose connection ID the client chose (a connection's first Initial and
//! 0-RTT packets) and Initials answering a Retry belong to the process that accepts new
//! connections: the new one, once the old one has stopped accepting. Both validate the other's
//! Retry tokens: the token key is handed over too (`tls::QuicTokenKey`). Replies go straight out of the shared socket from the process
//! that owns the connection.
//!
//! A link ends when the process at its other end exits (or never started serving); datagrams for
//! it are then handled locally (dropped, as before). Upgrades in a row make a chain (each process
//! linked to the one before and the one after it); a datagram for a process further along is
//! passed on link by link, so a process stays until the one before it has exited. Datagrams that cannot be forwarded at once
//! (the link's buffer is full) are dropped; QUIC retransmits. Counted in
//! `segd_quic_handover_datagrams_total{way}`.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use tokio::io::unix::AsyncFd;

/// Length of the connection IDs segd issues (quinn's default); the first byte is the tag.
pub const CID_LEN: usize = 8;

/// Bytes appended to a forwarded datagram: source address, destination IP, ECN, a check byte.
const TRAILER: usize = 40;
const TRAILER_MAGIC: u8 = 0x5e;

/// How many generations of processes apart a connection-ID tag is still routed (each link leads
/// one generation on; a datagram for a process further away is passed on by the next).
const GENERATIONS: u8 = 8;

/// Send buffer of each end of a link.
const LINK_BUFFER: usize = 4 << 20;

/// QUIC version 2 (RFC 9369) numbers long-header packet types differently from version 1.
const QUIC_V2: u32 = 0x6b33_43cf;

// === connection IDs ===

/// Connection IDs whose first byte names the process that issued them.
#[derive(Debug, Clone, Copy)]
pub struct TaggedCids {
    pub tag: u8,
}

impl ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        // Tag, two check bytes, five random bytes.
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = self.tag;
        bytes[3..].copy_from_slice(&crate::io::random_bits().to_le_bytes()[..CID_LEN - 3]);
        let c = check(self.tag, &bytes[3..]);
        bytes[1..3].copy_from_slice(&c);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A tag for a process that took over from nobody.
pub fn first_tag() -> u8 {
    crate::io::random_bits() as u8
}

// === routing ===

/// Where a received datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This process's endpoint.
    Local,
    /// The process this one took over from (still draining).
    Predecessor,
    /// The process that took over from this one.
    Successor,
}

/// Routes one datagram by its destination connection ID. `accepting`: this process still takes
/// new connections.
pub fn route(datagram: &[u8], me: u8, accepting: bool) -> Route {
    // A tag a few generations older belongs to a process up the chain (an upgrade started
    // while an older process still drains); a few newer, down the chain.
    let by_tag = |tag: u8| {
        if (1..=GENERATIONS).contains(&me.wrapping_sub(tag)) {
            Route::Predecessor
        } else if (1..=GENERATIONS).contains(&tag.wrapping_sub(me)) {
            Route::Successor
        } else {
            Route::Local
        }
    };
    let Some(&first) = datagram.first() else {
        return Route::Local;
    };
    if first & 0x80 == 0 {
        // Short header: the destination connection ID (always one we issued) follows the flags.
        return match datagram.get(1..1 + CID_LEN) {
            Some(cid) => by_tag(cid[0]),
            None => Route::Local,
        };
    }
    let Some(p) = LongHeader::parse(datagram) else {
        return Route::Local;
    };
    if p.handshake {
        // Handshake packets carry a connection ID the server chose.
        return if p.dcid.len() == CID_LEN {
            by_tag(p.dcid[0])
        } else {
            Route::Local
        };
    }
    if p.initial && p.token_len != 0 {
        // An Initial carrying a Retry's token. With a Handshake packet behind it, the client
        // is finishing a handshake: that packet names the process. Alone, it may be the first
        // answer to a Retry: whoever accepts new connections validates it (they share the
        // token key), whoever sent the Retry.
        if let Some(next) = datagram.get(p.end..).and_then(LongHeader::parse) {
            if next.handshake && next.dcid.len() == CID_LEN {
                return by_tag(next.dcid[0]);
            }
        }
    } else if is_ours(p.dcid, me) {
        // Initial or 0-RTT for a connection this process is setting up (the client took the
        // ID it was given; a client's own ID passes the check only by a 1 in 65,536 chance).
        return Route::Local;
    }
    if accepting {
        Route::Local
    } else {
        Route::Successor
    }
}

/// What routing needs of a long-header packet (RFC 9000 §17.2; v2: RFC 9369).
struct LongHeader<'a> {
    dcid: &'a [u8],
    handshake: bool,
    initial: bool,
    /// An Initial's token length.
    token_len: u64,
    /// Where the next packet in the datagram starts (Initial and Handshake packets only).
    end: usize,
}

impl<'a> LongHeader<'a> {
    fn parse(d: &'a [u8]) -> Option<LongHeader<'a>> {
        let first = *d.first()?;
        if first & 0x80 == 0 {
            return None;
        }
        let version = u32::from_be_bytes(d.get(1..5)?.try_into().ok()?);
        let dcid_end = 6 + *d.get(5)? as usize;
        let dcid = d.get(6..dcid_end)?;
        let kind = (first >> 4) & 0x3;
        // Version 1 and the drafts quinn speaks number the types alike; v2 shifts them.
        let v1 = version == 1 || (0xff00_001d..=0xff00_0022).contains(&version);
        let (handshake, initial) = match version {
            _ if v1 => (kind == 2, kind == 0),
            QUIC_V2 => (kind == 3, kind == 1),
            _ => (false, false),
        };
        let mut h = LongHeader {
            dcid,
            handshake,
            initial,
            token_len: 0,
            end: d.len(),
        };
        if !(handshake || initial) {
            return Some(h);
        }
        let mut at = dcid_end + 1 + *d.get(dcid_end)? as usize;
        if initial {
            let (len, next) = varint(d, at)?;
            h.token_len = len;
            at = next.checked_add(usize::try_from(len).ok()?)?;
        }
        let (len, next) = varint(d, at)?;
        h.end = next.checked_add(usize::try_from(len).ok()?)?;
        Some(h)
    }
}

/// A variable-length integer at `at` (RFC 9000 §16) and where it ends.
fn varint(d: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *d.get(at)?;
    let len = 1usize << (first >> 6);
    let bytes = d.get(at..at + len)?;
    let v = bytes[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    Some((v, at + len))
}

/// The two check bytes of a connection ID with tag `tag` and random bytes `rest` (FNV-1a: only
/// to tell our IDs from ones clients make up, not a secret).
fn check(tag: u8, rest: &[u8]) -> [u8; 2] {
    let h = std::iter::once(&tag)
        .chain(rest)
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
    [(h >> 8) as u8, h as u8]
}

/// Whether `cid` is one this process (tag `me`) issued.
fn is_ours(cid: &[u8], me: u8) -> bool {
    cid.len() == CID_LEN && cid[0] == me && cid[1..3] == check(me, &cid[3..])
}

// === the link between the two processes ===

/// One end of the `SOCK_SEQPACKET` pair joining two processes that share a UDP socket.
pub struct Link {
    fd: AsyncFd<OwnedFd>,
}

impl Link {
    /// A connected pair: this process's end and the end to pass on.
    pub fn pair() -> io::Result<(Link, OwnedFd)> {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // Room for a few GRO batches of full-size datagrams on their way (best effort: the
        // kernel caps it at net.core.wmem_max).
        for end in [&ours, &theirs] {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(end, LINK_BUFFER);
        }
        Ok((Link::new(ours)?, theirs))
    }

    /// Wraps an end passed by the other process (made non-blocking and close-on-exec).
    pub fn new(fd: OwnedFd) -> io::Result<Link> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        // SAFETY: the `OwnedFd` is open, is moved into the `AsyncFd` and is never swapped or
        // closed while it is registered, so its number names the same socket throughout.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Link { fd })
    }

    /// Sends one datagram with its trailer; `Ok(false)`: the link is full, the datagram dropped.
    fn forward(&self, datagram: &[u8], meta: &RecvMeta) -> io::Result<bool> {
        let mut msg = Vec::with_capacity(datagram.len() + TRAILER);
        msg.extend_from_slice(datagram);
        msg.extend_from_slice(&encode_trailer(meta));
        use rustix::net::SendFlags;
        match rustix::net::send(
            self.fd.get_ref(),
            &msg,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one forwarded datagram into `buf`: `Ready(Ok(None))` when the other process has
    /// closed its end.
    fn poll_recv(&self, cx: &mut Context, buf: &mut [u8]) -> Poll<io::Result<Option<RecvMeta>>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            use rustix::net::RecvFlags;
            match rustix::net::recv(
                guard.get_inner().as_fd(),
                &mut *buf,
                RecvFlags::DONTWAIT | RecvFlags::TRUNC,
            ) {
                Ok((0, _)) => return Poll::Ready(Ok(None)),
                // Longer than the buffer (never sent by segd): dropped.
                Ok((_, n)) if n > buf.len() => continue,
                Ok((_, n)) => match decode_trailer(&buf[..n]) {
                    Some(meta) => return Poll::Ready(Ok(Some(meta))),
                    None => continue,
                },
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

fn encode_trailer(meta: &RecvMeta) -> [u8; TRAILER] {
    let mut t = [0u8; TRAILER];
    let (family, ip) = match meta.addr.ip() {
        IpAddr::V4(a) => (4, a.to_ipv6_mapped()),
        IpAddr::V6(a) => (6, a),
    };
    t[0..16].copy_from_slice(&ip.octets());
    t[16..18].copy_from_slice(&meta.addr.port().to_be_bytes());
    t[18] = family;
    if let Some(dst) = meta.dst_ip {
        let (family, ip) = match dst {
            IpAddr::V4(a) => (4, a.to_ipv6_mapped()),
            IpAddr::V6(a) => (6, a),
        };
        t[19] = family;
        t[20..36].copy_from_slice(&ip.octets());
    }
    t[36] = meta.ecn.map_or(0, |e| e as u8);
    t[TRAILER - 1] = TRAILER_MAGIC;
    t
}

/// The datagram's metadata from the trailer at the end of `msg`; `len` is the datagram's.
fn decode_trailer(msg: &[u8]) -> Option<RecvMeta> {
    let len = msg.len().checked_sub(TRAILER)?;
    let t = &msg[len..];
    if t[TRAILER - 1] != TRAILER_MAGIC || len == 0 {
        return None;
    }
    let ip_of = |family: u8, bytes: &[u8]| -> Option<IpAddr> {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(bytes);
        let v6 = Ipv6Addr::from(octets);
        match family {
            4 => v6.to_ipv4_mapped().map(IpAddr::V4),
            6 => Some(IpAddr::V6(v6)),
            _ => None,
        }
    };
    let src = ip_of(t[18], &t[0..16])?;
    let port = u16::from_be_bytes([t[16], t[17]]);
    let dst_ip = match t[19] {
        0 => None,
        f => Some(ip_of(f, &t[20..36])?),
    };
    Some(RecvMeta {
        addr: SocketAddr::new(src, port),
        len,
        stride: len,
        ecn: EcnCodepoint::from_bits(t[36]),
        dst_ip,
    })
}

// === the shared socket ===

/// What one process knows of the other processes on its UDP sockets.
pub struct Share {
    tag: u8,
    accepting: AtomicBool,
    predecessor: Mutex<Option<Arc<Link>>>,
    successor: Mutex<Option<Arc<Link>>>,
    /// Told when a link closes.
    closed: tokio::sync::Notify,
    forwarded: prometheus::IntCounter,
    received: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
}

impl Share {
    pub fn new(tag: u8, predecessor: Option<Link>, counts: prometheus::IntCounterVec) -> Share {
        Share {
            tag,
            accepting: AtomicBool::new(true),
            predecessor: Mutex::new(predecessor.map(Arc::new)),
            successor: Mutex::new(None),
            closed: tokio::sync::Notify::new(),
            forwarded: counts.with_label_values(&["forwarded"]),
            received: counts.with_label_values(&["received"]),
            dropped: counts.with_label_values(&["dropped"]),
        }
    }

    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// This process takes no more new connections: their packets go to the successor.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    /// Resolves once the process this one took over from has exited (its link closed). Until
    /// then this process relays its datagrams from the processes after it, so it keeps its
    /// endpoint that long.
    pub async fn predecessor_gone(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if lock(&self.predecessor).is_none() {
                return;
            }
            closed.await;
        }
    }

    /// The link to a process being started to take over (replacing any earlier one).
    pub fn set_successor(&self, link: Link) {
        *lock(&self.successor) = Some(Arc::new(link));
    }

    /// Empties `slot` if it still holds `link`.
    fn drop_link(&self, slot: &Mutex<Option<Arc<Link>>>, link: &Arc<Link>) {
        let mut s = lock(slot);
        if s.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *s = None;
            self.closed.notify_waiters();
        }
    }

    fn slot(&self, r: Route) -> Option<&Mutex<Option<Arc<Link>>>> {
        match r {
            Route::Local => None,
            Route::Predecessor => Some(&self.predecessor),
            Route::Successor => Some(&self.successor),
        }
    }

    /// Where `datagram` goes from here.
    fn route(&self, datagram: &[u8]) -> Route {
        route(datagram, self.tag, self.accepting.load(Ordering::Relaxed))
    }

    /// Forwards `datagram` if it belongs to another process that is there; false: handle it
    /// here.
    fn forwarded(&self, datagram: &[u8], meta: &RecvMeta) -> bool {
        self.send_via(self.route(datagram), datagram, meta)
    }

    /// Sends `datagram` over the link `r` names, if there is one; false: handle it here.
    fn send_via(&self, r: Route, datagram: &[u8], meta: &RecvMeta) -> bool {
        let Some(slot) = self.slot(r) else {
            return false;
        };
        let Some(link) = lock(slot).clone() else {
            return false;
        };
        match link.forward(datagram, meta) {
            Ok(true) => self.forwarded.inc(),
            Ok(false) => self.dropped.inc(),
            Err(e) => {
                // The other process has gone: its connections went with it.
                tracing::debug!(error = %e, "QUIC handover link closed");
                self.drop_link(slot, &link);
                return false;
            }
        }
        true
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("tag", &self.tag)
            .field("accepting", &self.accepting)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// quinn's socket with the routing above in its receive path.
#[derive(Debug)]
pub struct SharedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    share: Arc<Share>,
    links_first: AtomicBool,
}

impl SharedSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, share: Arc<Share>) -> SharedSocket {
        SharedSocket {
            inner,
            share,
            links_first: AtomicBool::new(false),
        }
    }

    /// A datagram either link brought (registering both for wake-ups when neither has one).
    fn poll_links(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        for from in [Route::Predecessor, Route::Successor] {
            if let Poll::Ready(n) = self.poll_forwarded(cx, from, bufs, meta) {
                return Poll::Ready(n);
            }
        }
        Poll::Pending
    }

    /// A datagram the process at the other end of link `from` forwarded, in `bufs[0]`; one for
    /// a process further on (a chain of upgrades) is passed on, never back.
    fn poll_forwarded(
        &self,
        cx: &mut Context,
        from: Route,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let Some(slot) = self.share.slot(from) else {
            return Poll::Pending;
        };
        let Some(link) = lock(slot).clone() else {
            return Poll::Pending;
        };
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Pending;
        };
        match link.poll_recv(cx, buf) {
            Poll::Ready(Ok(Some(got))) => {
                self.share.received.inc();
                let datagram = &buf[..got.len];
                let on = self.share.route(datagram);
                if on != Route::Local && on != from && self.share.send_via(on, datagram, &got) {
                    return Poll::Ready(0);
                }
                *m = got;
                Poll::Ready(1)
            }
            Poll::Ready(r) => {
                tracing::debug!(?from, error = ?r.err(), "QUIC handover link closed");
                self.share.drop_link(slot, &link);
                // Nothing received; the caller polls again.
                Poll::Ready(0)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncUdpSocket for SharedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // The links and the socket take turns going first, so neither starves the other.
        let links_first = self.links_first.fetch_xor(true, Ordering::Relaxed);
        if links_first {
            if let Poll::Ready(n) = self.poll_links(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
        }
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            Poll::Pending if !links_first => {
                return self.poll_links(cx, bufs, meta).map(Ok);
            }
            other => return other,
        };
        // Keep what is ours, in order, at the front: within a batch (GRO: several datagrams of
        // one source, each `stride` long but the last) and across batches.
        let mut kept = 0;
        for i in 0..n.min(bufs.len()).min(meta.len()) {
            let mut m = meta[i];
            let stride = m.stride.max(1);
            let len = m.len.min(bufs[i].len());
            let mut local = 0;
            for start in (0..len).step_by(stride) {
                let end = (start + stride).min(len);
                if self.share.forwarded(&bufs[i][start..end], &m) {
                    continue;
                }
                if local != start {
                    bufs[i].copy_within(start..end, local);
                }
                local += end - start;
            }
            if local == 0 {
                continue;
            }
            m.len = local;
            if kept != i {
                let (front, back) = bufs.split_at_mut(i);
                front[kept][..local].copy_from_slice(&back[0][..local]);
            }
            meta[kept] = m;
            kept += 1;
        }
        Poll::Ready(Ok(kept))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        // quinn sizes each receive buffer by this; a forwarded datagram carries its trailer too,
        // so even without GRO a buffer holds two datagrams' room.
        self.inner.max_receive_segments().max(2)
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(tag: u8) -> Vec<u8> {
        let mut d = vec![0x40, tag, 1, 2, 3, 4, 5, 6, 7];
        d.extend_from_slice(&[0xaa; 30]);
        d
    }

    fn long(kind: u8, version: u32, dcid: &[u8]) -> Vec<u8> {
        long_with_token(kind, version, dcid, &[])
    }

    /// A long-header packet: DCID, SCID (4 bytes), for an Initial its token, then a Length of 8
    /// and 8 bytes of payload.
    fn long_with_token(kind: u8, version: u32, dcid: &[u8], token: &[u8]) -> Vec<u8> {
        let mut d = vec![0xc0 | (kind << 4)];
        d.extend_from_slice(&version.to_be_bytes());
        d.push(dcid.len() as u8);
        d.extend_from_slice(dcid);
        d.push(4);
        d.extend_from_slice(&[9; 4]);
        if (version == 1 && kind == 0) || (version == QUIC_V2 && kind == 1) {
            if token.len() < 64 {
                d.push(token.len() as u8);
            } else {
                d.extend_from_slice(&(0x4000 | token.len() as u16).to_be_bytes());
            }
            d.extend_from_slice(token);
        }
        d.push(8);
        d.extend_from_slice(&[0; 8]);
        d
    }

    #[test]
    fn short_headers_go_by_tag() {
        assert_eq!(route(&short(7), 7, true), Route::Local);
        assert_eq!(route(&short(6), 7, true), Route::Predecessor);
        assert_eq!(route(&short(8), 7, false), Route::Successor);
        assert_eq!(route(&short(200), 7, false), Route::Local);
        // Further generations: passed on along the chain.
        assert_eq!(route(&short(5), 7, true), Route::Predecessor);
        assert_eq!(route(&short(15), 7, true), Route::Successor);
        assert_eq!(route(&short(16), 7, true), Route::Local);
        // Tags wrap.
        assert_eq!(route(&short(255), 0, true), Route::Predecessor);
        assert_eq!(route(&short(0), 255, true), Route::Successor);
        // Too short to carry an ID: ours to drop.
        assert_eq!(route(&[0x40, 8], 7, false), Route::Local);
        assert_eq!(route(&[], 7, false), Route::Local);
    }

    #[test]
    fn handshake_packets_go_by_tag() {
        let cid = [8, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(route(&long(2, 1, &cid), 7, true), Route::Successor);
        assert_eq!(route(&long(2, 1, &[6; 8]), 7, false), Route::Predecessor);
        // QUIC v2 numbers Handshake 3.
        assert_eq!(route(&long(3, QUIC_V2, &cid), 7, true), Route::Successor);
    }

    #[test]
    fn new_connections_go_to_whoever_accepts() {
        // A client's first Initial: an ID of its own making, whatever its first byte.
        for dcid in [&[8u8, 1, 2, 3, 4, 5, 6, 7][..], &[6; 8], &[1; 16], &[]] {
            assert_eq!(route(&long(0, 1, dcid), 7, true), Route::Local, "{dcid:?}");
            assert_eq!(
                route(&long(0, 1, dcid), 7, false),
                Route::Successor,
                "{dcid:?}"
            );
            // 0-RTT likewise.
            assert_eq!(
                route(&long(1, 1, dcid), 7, false),
                Route::Successor,
                "{dcid:?}"
            );
        }
        // An Initial for a connection this process is still setting up stays; a client's own
        // ID that merely starts with the tag does not.
        let ours = TaggedCids { tag: 7 }.generate_cid();
        assert_eq!(route(&long(0, 1, &ours), 7, false), Route::Local);
        assert_eq!(route(&long(0, 1, &[7; 8]), 7, false), Route::Successor);
        // One answering a Retry goes to whoever accepts (they share the token key)...
        for token in [&[1u8; 5][..], &[2; 90]] {
            let retried = long_with_token(0, 1, &ours, token);
            assert_eq!(route(&retried, 7, false), Route::Successor);
            assert_eq!(route(&retried, 7, true), Route::Local);
            let retried_v2 = long_with_token(1, QUIC_V2, &ours, token);
            assert_eq!(route(&retried_v2, 7, false), Route::Successor);
            // ...unless a Handshake packet rides with it: that one names the process.
            let mut finishing = retried.clone();
            finishing.extend(long(2, 1, &ours));
            assert_eq!(route(&finishing, 7, false), Route::Local);
            let mut finishing = retried.clone();
            finishing.extend(long(2, 1, &TaggedCids { tag: 6 }.generate_cid()));
            assert_eq!(route(&finishing, 7, true), Route::Predecessor);
        }
        // Drafts number packet types like version 1.
        assert_eq!(
            route(&long(2, 0xff00_001d, &[8; 8]), 7, true),
            Route::Successor
        );
        // Truncated long headers stay (quinn drops them).
        assert_eq!(route(&[0xc0, 0, 0], 7, false), Route::Local);
        assert_eq!(route(&[0xc0, 0, 0, 0, 1, 20, 1], 7, false), Route::Local);
    }

    #[test]
    fn tagged_ids_carry_the_tag() {
        let mut g = TaggedCids { tag: 42 };
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(a[0], 42);
        assert_ne!(a, b);
        assert!(is_ours(&a, 42) && is_ours(&b, 42));
        assert!(!is_ours(&a, 43), "another process's");
        let mut forged = a.to_vec();
        forged[7] ^= 1;
        assert!(!is_ours(&forged, 42), "one bit off");
    }

    #[test]
    fn trailers_round_trip() {
        for (addr, dst) in [
            ("192.0.2.7:4433", Some("198.51.100.1")),
            ("[2001:db8::5]:50000", None),
            ("[::ffff:192.0.2.9]:1", Some("2001:db8::1")),
        ] {
            let meta = RecvMeta {
                addr: addr.parse().expect("addr"),
                dst_ip: dst.map(|d| d.parse().expect("ip")),
                ecn: Some(EcnCodepoint::Ce),
                ..Default::default()
            };
            let mut msg = b"datagram".to_vec();
            msg.extend_from_slice(&encode_trailer(&meta));
            let got = decode_trailer(&msg).expect("decoded");
            assert_eq!(got.addr, meta.addr);
            assert_eq!(got.dst_ip, meta.dst_ip);
            assert_eq!(got.ecn, meta.ecn);
            assert_eq!((got.len, got.stride), (8, 8));
        }
        assert!(decode_trailer(&[0; TRAILER]).is_none(), "no datagram");
        assert!(decode_trailer(&[0; TRAILER + 3]).is_none(), "no check byte");
    }
}
