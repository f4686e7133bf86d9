//! Binding listeners: `SO_REUSEADDR` + `SO_REUSEPORT` (so an upgraded process can bind the same
//! ports while the old one drains) and a deep accept backlog.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

pub const BACKLOG: u32 = 4096;

pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}
