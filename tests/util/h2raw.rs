//! HTTP/2 written frame by frame (h2c), for what no client library sends: malformed frames,
//! pseudo-header fields where they may not be, frames on streams in the wrong state.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const H2_DATA: u8 = 0;
pub const H2_HEADERS: u8 = 1;
pub const H2_RST_STREAM: u8 = 3;
pub const H2_SETTINGS: u8 = 4;
pub const H2_GOAWAY: u8 = 7;
pub const H2_END_STREAM: u8 = 0x1;
pub const H2_END_HEADERS: u8 = 0x4;

/// An HTTP/2 (h2c) connection written frame by frame.
pub struct RawH2 {
    s: TcpStream,
}

impl RawH2 {
    /// Connects, sends the preface and empty SETTINGS.
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        let mut c = RawH2 { s };
        c.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        c.send(H2_SETTINGS, 0, 0, &[]);
        c
    }

    pub fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("frame length");
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        self.s.write_all(&f).expect("send frame");
    }

    /// The next frame (type, flags, stream, payload), or `None` when the connection ends (or
    /// a read times out); a SETTINGS is acknowledged on the way.
    fn next_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut h = [0u8; 9];
        self.s.read_exact(&mut h).ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        if kind == H2_SETTINGS && flags & 0x1 == 0 {
            self.send(H2_SETTINGS, 0x1, 0, &[]);
        }
        Some((kind, flags, id, payload))
    }

    /// The frames of `stream` (type, flags, payload) until it ends (END_STREAM or RST_STREAM) or
    /// the connection does; SETTINGS are acknowledged on the way.
    pub fn stream_frames(&mut self, stream: u32) -> Vec<(u8, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((kind, flags, id, payload)) = self.next_frame() {
            if id != stream {
                continue;
            }
            let end = kind == H2_RST_STREAM
                || (matches!(kind, H2_DATA | H2_HEADERS) && flags & H2_END_STREAM != 0);
            out.push((kind, flags, payload));
            if end {
                break;
            }
        }
        out
    }

    /// Every frame (type, flags, stream, payload) until the connection ends, the server's
    /// GOAWAY, or `quiet` passes with nothing to read; SETTINGS are acknowledged on the way.
    pub fn frames(&mut self, quiet: Duration) -> Vec<(u8, u8, u32, Vec<u8>)> {
        self.s.set_read_timeout(Some(quiet)).expect("read timeout");
        let mut out = Vec::new();
        while let Some(frame) = self.next_frame() {
            let goaway = frame.0 == H2_GOAWAY;
            out.push(frame);
            if goaway {
                break;
            }
        }
        out
    }
}

/// An HPACK field block of literal fields without indexing and without Huffman coding (RFC 7541
/// §6.2.2), names taken as they are: pseudo-header fields anywhere.
pub fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    // An integer with a 7-bit prefix (§5.1), the high bit (Huffman) clear.
    fn int(mut v: usize, out: &mut Vec<u8>) {
        if v < 127 {
            out.push(v as u8);
            return;
        }
        out.push(127);
        v -= 127;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        for s in [name, value] {
            int(s.len(), &mut out);
            out.extend(s.as_bytes());
        }
    }
    out
}

/// A GET of `path` on `localhost`, as an HPACK field block of literals.
pub fn hpack_get(path: &str) -> Vec<u8> {
    hpack_literals(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", path),
    ])
}

/// One SETTINGS parameter (RFC 9113 §6.5.1): identifier and value.
pub fn h2_setting(id: u16, v: u32) -> Vec<u8> {
    [&id.to_be_bytes()[..], &v.to_be_bytes()[..]].concat()
}
