//! Binding listeners: `SO_REUSEADDR` + `SO_REUSEPORT` and a deep accept backlog; and the sockets
//! a process is handed instead of binding (by systemd, or by the process it upgrades), matched
//! to the config by local address.
//!
//! Matching: a configured address matches a passed socket of the same kind (TCP listener or UDP)
//! with exactly that local address. A configured port 0 ("any port") also matches a socket the
//! previous process passed under the same config key with the same IP, so an upgraded process
//! keeps the ports its predecessor was given.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue asked for: as deep as the kernel allows. Linux caps `listen(2)`'s backlog at
/// `net.core.somaxconn` (4096 by default since 5.4), so the sysctl alone sets the depth, as
/// docs/tuning.md says: a fixed number here would silently cap a raised `somaxconn` (65535 in
/// `config/sysctl.d/90-segd.conf`) at that number.
pub const BACKLOG: u32 = i32::MAX as u32;

/// A listening TCP socket for `addr`. An IPv6 address is IPv6-only (`IPV6_V6ONLY`), as segd's
/// UDP sockets and nginx's `listen [::]:80` are: `[::]:80` and `0.0.0.0:80` are two listeners,
/// and a dual-stack `[::]:80` would collide with a `0.0.0.0:80` another user holds (systemd's
/// `segd.socket`: `SO_REUSEPORT` shares a port only within one uid), so segd could not start.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let sock = TcpSocket::new_v6()?;
        socket2::SockRef::from(&sock).set_only_v6(true)?;
        sock
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// A passed socket: a listening TCP socket or a UDP socket (QUIC).
#[derive(Debug)]
pub enum Socket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// Who passed a socket (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Systemd,
    Upgrade,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Systemd => "systemd",
            Source::Upgrade => "the previous process",
        }
    }
}

#[derive(Debug)]
pub struct Passed {
    pub addr: SocketAddr,
    /// The config key the previous process bound it for (`server.listen[0]`, …); none from systemd.
    pub key: Option<String>,
    pub source: Source,
    pub socket: Socket,
}

/// Takes ownership of a descriptor some other process passed: it must be a listening TCP socket
/// or a UDP socket. It is made close-on-exec (passed descriptors arrive without the flag; a
/// later upgrade passes them on explicitly, nothing else may inherit them).
pub fn classify(fd: OwnedFd) -> Result<(SocketAddr, Socket), String> {
    use rustix::net::{sockopt, SocketType};
    let kind = sockopt::socket_type(fd.as_fd()).map_err(|e| format!("not a socket: {e}"))?;
    rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("cannot set close-on-exec: {e}"))?;
    let socket = if kind == SocketType::STREAM {
        if !sockopt::socket_acceptconn(fd.as_fd()).unwrap_or(false) {
            return Err("a stream socket that is not listening".into());
        }
        Socket::Tcp(std::net::TcpListener::from(fd))
    } else if kind == SocketType::DGRAM {
        Socket::Udp(std::net::UdpSocket::from(fd))
    } else {
        return Err(format!("unsupported socket type {kind:?}"));
    };
    let addr = match &socket {
        Socket::Tcp(l) => l.local_addr(),
        Socket::Udp(u) => u.local_addr(),
    }
    .map_err(|e| format!("no local address: {e}"))?;
    if !matches!(addr, SocketAddr::V4(_) | SocketAddr::V6(_)) {
        return Err("not an IP socket".into());
    }
    Ok((addr, socket))
}

/// The passed sockets not yet claimed by a listen address.
#[derive(Debug, Default)]
pub struct Inherited(Vec<Passed>);

impl Inherited {
    pub fn new(passed: Vec<Passed>) -> Inherited {
        Inherited(passed)
    }

    /// The TCP listener passed for `addr` (configured under `key`), if any.
    pub fn take_tcp(
        &mut self,
        addr: SocketAddr,
        key: &str,
    ) -> Option<(std::net::TcpListener, Source)> {
        let i = self.find(addr, Some(key), true)?;
        let p = self.0.swap_remove(i);
        match p.socket {
            Socket::Tcp(l) => Some((l, p.source)),
            Socket::Udp(_) => None,
        }
    }

    /// The UDP socket passed for exactly `addr`, if any.
    pub fn take_udp(&mut self, addr: SocketAddr) -> Option<(std::net::UdpSocket, Source)> {
        let i = self.find(addr, None, false)?;
        let p = self.0.swap_remove(i);
        match p.socket {
            Socket::Udp(u) => Some((u, p.source)),
            Socket::Tcp(_) => None,
        }
    }

    fn find(&self, addr: SocketAddr, key: Option<&str>, tcp: bool) -> Option<usize> {
        let kind = |p: &Passed| matches!(p.socket, Socket::Tcp(_)) == tcp;
        self.0
            .iter()
            .position(|p| kind(p) && p.addr == addr)
            .or_else(|| {
                (addr.port() == 0).then_some(())?;
                self.0.iter().position(|p| {
                    kind(p) && p.addr.ip() == addr.ip() && key.is_some() && p.key.as_deref() == key
                })
            })
    }

    /// Sockets no listen address claimed (they are closed when dropped).
    pub fn unclaimed(&self) -> impl Iterator<Item = &Passed> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(key: Option<&str>, socket: Socket) -> Passed {
        let addr = match &socket {
            Socket::Tcp(l) => l.local_addr(),
            Socket::Udp(u) => u.local_addr(),
        }
        .expect("addr");
        Passed {
            addr,
            key: key.map(str::to_string),
            source: Source::Upgrade,
            socket,
        }
    }

    #[test]
    fn matching_by_address_then_by_key_for_port_zero() {
        let tcp = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (a, b) = (tcp(), tcp());
        let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let udp = std::net::UdpSocket::bind(b_addr).expect("udp on b's port");
        let mut inh = Inherited::new(vec![
            passed(Some("server.listen[0]"), Socket::Tcp(a)),
            passed(Some("tls.listen[0]"), Socket::Tcp(b)),
            passed(Some("tls.listen[0]"), Socket::Udp(udp)),
        ]);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        // Port 0 takes the socket passed under the same key, never another key's.
        assert!(inh.take_tcp(any, "admin.listen").is_none());
        let (l, _) = inh.take_tcp(any, "tls.listen[0]").expect("by key");
        assert_eq!(l.local_addr().expect("addr"), b_addr);
        // An exact address matches whatever key it was passed under; UDP only by address.
        let (l, _) = inh
            .take_tcp(a_addr, "server.listen[7]")
            .expect("by address");
        assert_eq!(l.local_addr().expect("addr"), a_addr);
        assert!(
            inh.take_tcp(b_addr, "x").is_none(),
            "TCP was taken; UDP is not TCP"
        );
        assert!(inh.take_udp(any).is_none());
        assert!(inh.take_udp(b_addr).is_some());
        assert_eq!(inh.unclaimed().count(), 0);
    }

    #[test]
    fn classify_refuses_what_is_not_a_listener() {
        let s = std::net::TcpStream::connect(
            std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind")
                .local_addr()
                .expect("addr"),
        );
        // A connected (or refused) stream socket is not a listener either way.
        if let Ok(s) = s {
            assert!(classify(OwnedFd::from(s)).is_err());
        }
        let f = std::fs::File::open("/dev/null").expect("open");
        assert!(classify(OwnedFd::from(f)).is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let (addr, sock) = classify(OwnedFd::from(l)).expect("a listener");
        assert!(matches!(sock, Socket::Tcp(_)) && addr.port() != 0);
    }
}
