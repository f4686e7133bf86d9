//! The PROXY protocol (HAProxy's `send-proxy` and `send-proxy-v2`, also sent by AWS NLB, nginx's
//! stream module and most TCP balancers): a balancer that passes TCP through (to keep TLS on
//! segd, or for HTTP/2) cannot add `X-Forwarded-For`, so it writes one header naming the client
//! before the client's bytes. Connections from the networks in `[server] proxy_protocol` must
//! begin with one (version 1 or 2); its source address is the connection's peer from then on:
//! in the access log, in `ip=` token checks, wherever segd names the client. Connections from
//! anywhere else are never read for one, so no client can claim an address.
//!
//! The header is parsed by the `ppp` crate. It is read with `MSG_PEEK` first and then consumed to
//! its last byte exactly, so the bytes after it (a TLS ClientHello, a request head) stay in the
//! socket for whatever serves the connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header taken: a version 2 header with the TLVs balancers add (ALPN, authority,
/// unique id, TLS details) is a few hundred bytes; a version 1 header is at most 107.
const MAX_HEADER: usize = 4096;

/// While a header is incomplete (it came in more than one segment, which balancers do not do in
/// practice), the socket is looked at again after this long.
const RECHECK: Duration = Duration::from_millis(2);

/// Why a connection that had to begin with a PROXY header was closed (the `reason` label of
/// `segd_proxy_protocol_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a PROXY header (a client speaking HTTP or TLS at once, or garbage).
    Malformed,
    /// Longer than [`MAX_HEADER`].
    TooLong,
    /// Not complete within `header_read_timeout`.
    Timeout,
    /// The connection ended or failed before the header was complete.
    Closed,
}

impl Refused {
    pub const ALL: [Refused; 4] = [
        Refused::Malformed,
        Refused::TooLong,
        Refused::Timeout,
        Refused::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::TooLong => "too_long",
            Refused::Timeout => "timeout",
            Refused::Closed => "closed",
        }
    }
}

/// Whether a connection from `peer` must begin with a PROXY header.
pub fn expected_from(networks: &[ipnet::IpNet], peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&peer))
}

/// Reads the PROXY header at the start of `stream` and consumes exactly its bytes. `Ok(Some)`:
/// the client's address; `Ok(None)`: the header names none (version 2 `LOCAL`, as in a balancer's
/// own health checks; version 1 `UNKNOWN`; a UNIX socket), so the connection's own peer stands.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Refused> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_HEADER];
    let (len, client) = loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Err(Refused::Timeout),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(Refused::Closed),
            Ok(Ok(n)) => n,
        };
        match parse(&buf[..n]) {
            Parsed::Header { len, client } => break (len, client),
            Parsed::Malformed => return Err(Refused::Malformed),
            Parsed::Incomplete if n == buf.len() || v2_len(&buf[..n]) > MAX_HEADER => {
                return Err(Refused::TooLong)
            }
            Parsed::Incomplete => {
                // A peek returns what is there at once: wait a little for the rest.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(RECHECK))
                    .await
                    .is_err()
                {
                    return Err(Refused::Timeout);
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut buf[..len])).await {
        Err(_) => Err(Refused::Timeout),
        Ok(Err(_)) => Err(Refused::Closed),
        Ok(Ok(_)) => Ok(client),
    }
}

/// The whole length a version 2 header declares (0 before its first 16 bytes).
fn v2_len(bytes: &[u8]) -> usize {
    match bytes.get(14..16) {
        Some(&[hi, lo]) if bytes.starts_with(b"\r\n\r\n\0\r\nQUIT\n") => {
            16 + usize::from(u16::from_be_bytes([hi, lo]))
        }
        _ => 0,
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    /// A whole header of `len` bytes.
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    Incomplete,
    Malformed,
}

fn parse(bytes: &[u8]) -> Parsed {
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
            },
        },
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Parsed::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_tcp4(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x21); // version 2, PROXY
        h.push(0x11); // TCP over IPv4
        h.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn version_1_gives_the_source_and_its_exact_length() {
        let head = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 80\r\n";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse(&bytes),
            Parsed::Header {
                len: head.len(),
                client: Some("192.0.2.7:51234".parse().expect("addr")),
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::5 ::1 4000 443\r\n\x16\x03\x01";
        assert_eq!(
            parse(v6),
            Parsed::Header {
                len: v6.len() - 3,
                client: Some("[2001:db8::5]:4000".parse().expect("addr")),
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                client: None
            }
        );
    }

    #[test]
    fn version_2_gives_the_source_tlvs_included_and_local_names_nobody() {
        // One TLV (PP2_TYPE_ALPN "h2") counted in the length, then the client's first bytes.
        let tlv = [0x01, 0x00, 0x02, b'h', b'2'];
        let head = v2_tcp4([198, 51, 100, 9], 60000, &tlv);
        let mut bytes = head.clone();
        bytes.extend_from_slice(b"\x16\x03\x01\x02\x00");
        assert_eq!(
            parse(&bytes),
            Parsed::Header {
                len: head.len(),
                client: Some("198.51.100.9:60000".parse().expect("addr")),
            }
        );
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                client: None
            }
        );
    }

    #[test]
    fn partial_headers_wait_and_other_protocols_are_refused() {
        let head = v2_tcp4([198, 51, 100, 9], 60000, &[]);
        for cut in [1, 5, 12, 15, 20] {
            assert_eq!(parse(&head[..cut]), Parsed::Incomplete, "v2 cut at {cut}");
        }
        for cut in [1, 3, 6, 20] {
            let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 80\r\n";
            assert_eq!(parse(&v1[..cut]), Parsed::Incomplete, "v1 cut at {cut}");
        }
        for other in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PROXY TCP4 999.0.2.7 127.0.0.1 51234 80\r\n",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 51234\r\n",
        ] {
            assert_eq!(parse(other), Parsed::Malformed, "{other:?}");
        }
        // A version 2 header declaring more than is taken is refused before it is all there.
        let mut long = v2_tcp4([198, 51, 100, 9], 60000, &[]);
        long[14..16].copy_from_slice(&5000u16.to_be_bytes());
        assert_eq!(v2_len(&long), 5016);
        assert_eq!(v2_len(&head[..15]), 0);
        // A version 1 line that never ends is refused once it is longer than any can be.
        assert_eq!(
            parse(format!("PROXY TCP4 {}", "1".repeat(200)).as_bytes()),
            Parsed::Malformed
        );
    }

    #[test]
    fn only_listed_networks_must_send_a_header() {
        let nets: Vec<ipnet::IpNet> = ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        for (ip, want) in [
            ("10.1.2.3", true),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("::ffff:10.9.9.9", true),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("192.0.2.1", false),
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(expected_from(&nets, ip), want, "{ip}");
        }
        assert!(!expected_from(&[], "10.1.2.3".parse().expect("ip")));
    }
}
