//! Objects replaced, deleted or rewritten while a download of them is under way, on every
//! protocol: HTTP/1.1 (sendfile), h2c (reads through the I/O backend), HTTPS/1.1 and h2 over TLS
//! (memory map) and HTTP/3 (reads). README "The zero-copy contract", docs/ingest.md "Read your
//! writes" (acceptance round A, F1 and F2):
//! - replaced by rename (the safe way to publish), replaced by segd's own PUT, or DELETEd while
//!   the client has read only part of the body: the download completes with the old bytes (the
//!   held inode keeps them);
//! - rewritten in place with new bytes of the same size (`rsync --inplace`, `dd conv=notrunc`) or
//!   by `cp` (truncate, then write): the response never completes (a reset or a short body),
//!   never a 200 with all its bytes and the old ETag.
//!
//! Objects are 24 MB, larger than the hot-body cache's biggest item (8 MiB by default) and than
//! what socket buffers and HTTP/2 or QUIC windows let the server send ahead, so the change lands
//! while the server still has most of the body to read and send.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::h3::{h3_connect, H3};
use crate::tls::{connect, tls_config, Pki};
use crate::util::*;

const LEN: usize = 24_000_000;
/// Body bytes the client reads before the object is changed; then it pauses, so the server has
/// filled every buffer on the way and waits with the rest of the body unsent.
const AT: usize = 1 << 20;
/// The `[[ingest.keys]]` secret for PUT and DELETE.
const UP_KEY: &str = "0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone, Copy)]
enum Proto {
    /// Plaintext HTTP/1.1: sendfile.
    H1,
    /// HTTP/2 with prior knowledge: chunks read through the volume's I/O backend.
    H2c,
    /// HTTP/1.1 over TLS: slices of a memory map.
    H1Tls,
    /// HTTP/2 over TLS: slices of a memory map.
    H2Tls,
    /// HTTP/3: chunks read through the volume's I/O backend.
    H3,
}

const EVERY: [Proto; 5] = [Proto::H1, Proto::H2c, Proto::H1Tls, Proto::H2Tls, Proto::H3];

/// A server with one volume (`dir/v`), TLS with HTTP/3, and ingest under `/vod/`.
struct Rig {
    pki: Pki,
    dir: tempfile::TempDir,
    srv: Server,
}

impl Rig {
    fn start() -> Rig {
        let pki = Pki::new();
        let (cert, key, _) = pki.leaf("segd");
        let dir = tempfile::tempdir().expect("tempdir");
        let vol = dir.path().join("v");
        std::fs::create_dir_all(vol.join("vod/m")).expect("mkdir");
        let ingest = format!(
            "[ingest]\nprefixes = [\"/vod/\"]\nreserve = \"0B\"\nfsync = false\n\n\
             [[ingest.keys]]\nid = \"up\"\nsecret = \"{UP_KEY}\"\n\n"
        );
        let srv = Server::start(&config_for(
            &[&vol],
            &(tls_config(dir.path(), &cert, &key) + "http3 = true\n\n" + &ingest),
        ));
        Rig { pki, dir, srv }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join("v/vod/m").join(name)
    }

    /// Publishes `data` as `name` the safe way: a new file renamed into place.
    fn publish(&self, name: &str, data: &[u8]) {
        let tmp = self.file(&format!(".tmp-{name}"));
        // A DELETE removes the directories it leaves empty.
        std::fs::create_dir_all(tmp.parent().expect("parent")).expect("mkdir");
        std::fs::write(&tmp, data).expect("write");
        std::fs::rename(&tmp, self.file(name)).expect("rename");
    }

    /// PUT or DELETE through segd's ingest, with an upload token.
    async fn write(&self, method: &str, name: &str, body: &[u8]) -> u16 {
        let token = token_with_key(UP_KEY, "/vod/*");
        let url = self.srv.url(&q(&format!("/vod/m/{name}"), &token));
        send(method, &url, &[], body, false).await.status
    }
}

/// A byte pattern that never contains 0; `seed` makes versions differ at every byte.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed) % 251) as u8 + 1)
        .collect()
}

/// What a download got.
struct Got {
    status: u16,
    /// The `Content-Length` of the head.
    len: usize,
    etag: String,
    body: Vec<u8>,
    /// `Ok` when the body ended as the protocol ends a complete one, else how it ended.
    end: Result<(), String>,
}

impl Got {
    /// A 200 carrying all the bytes its head announced, ended cleanly.
    fn complete(&self) -> bool {
        self.status == 200 && self.end.is_ok() && self.body.len() == self.len
    }
}

/// A response body being read, whatever the protocol.
enum Reader {
    H1 {
        io: Box<dyn AsyncRead + Unpin + Send>,
        /// Body bytes that came with the head.
        early: Option<Vec<u8>>,
        left: usize,
    },
    H2(hyper::body::Incoming),
    H3 {
        stream: Box<h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>>,
        _conn: Box<H3>,
    },
}

impl Reader {
    /// The next body bytes; `None` at a clean end.
    async fn next(&mut self) -> Option<Result<Vec<u8>, String>> {
        match self {
            Reader::H1 { io, early, left } => {
                if let Some(b) = early.take().filter(|b| !b.is_empty()) {
                    *left = left.saturating_sub(b.len());
                    return Some(Ok(b));
                }
                if *left == 0 {
                    return None;
                }
                let mut buf = vec![0u8; 256 << 10];
                match io.read(&mut buf).await {
                    Ok(0) => Some(Err("connection closed".into())),
                    Ok(n) => {
                        *left = left.saturating_sub(n);
                        buf.truncate(n);
                        Some(Ok(buf))
                    }
                    Err(e) => Some(Err(e.to_string())),
                }
            }
            Reader::H2(body) => loop {
                match body.frame().await? {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            return Some(Ok(d.to_vec()));
                        }
                    }
                    Err(e) => return Some(Err(e.to_string())),
                }
            },
            Reader::H3 { stream, .. } => match stream.recv_data().await {
                Ok(Some(mut d)) => Some(Ok(d.copy_to_bytes(d.remaining()).to_vec())),
                Ok(None) => None,
                Err(e) => Some(Err(e.to_string())),
            },
        }
    }
}

/// Sends `GET path` over HTTP/1.1 on `io`; the head's status and headers, and the body's reader.
async fn h1_get<I>(mut io: I, path: &str) -> (u16, http::HeaderMap, Reader)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    io.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = io.read(&mut buf).await.expect("response head");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&got[..end + 4]).expect("parse head");
    let status = resp.code.expect("status");
    let mut map = http::HeaderMap::new();
    for h in resp.headers.iter() {
        map.append(
            http::HeaderName::from_bytes(h.name.as_bytes()).expect("name"),
            http::HeaderValue::from_bytes(h.value).expect("value"),
        );
    }
    let left = content_length(&map);
    let reader = Reader::H1 {
        io: Box::new(io),
        early: Some(got[end + 4..].to_vec()),
        left,
    };
    (status, map, reader)
}

/// Sends `GET path` over HTTP/2 on `io`.
async fn h2_get<I>(io: I, path: &str) -> (u16, http::HeaderMap, Reader)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tx.send_request(req).await.expect("response head");
    let (parts, body) = resp.into_parts();
    (parts.status.as_u16(), parts.headers, Reader::H2(body))
}

fn content_length(h: &http::HeaderMap) -> usize {
    h.get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("content-length")
}

/// GETs `/vod/m/<name>` over `proto`, reads `AT` body bytes, pauses, runs `change`, then reads
/// on until the body ends.
async fn download(rig: &Rig, proto: Proto, name: &str, change: impl AsyncFnOnce()) -> Got {
    let path = format!("/vod/m/{name}");
    let tls = |alpn: &[u8]| rig.pki.client(&[&rustls::version::TLS13], &[alpn]);
    let (status, headers, mut reader) = match proto {
        Proto::H1 => {
            let tcp = tokio::net::TcpStream::connect(rig.srv.addr)
                .await
                .expect("connect");
            h1_get(tcp, &path).await
        }
        Proto::H2c => {
            let tcp = tokio::net::TcpStream::connect(rig.srv.addr)
                .await
                .expect("connect");
            h2_get(tcp, &path).await
        }
        Proto::H1Tls => h1_get(connect(&rig.srv, &tls(b"http/1.1")).await, &path).await,
        Proto::H2Tls => h2_get(connect(&rig.srv, &tls(b"h2")).await, &path).await,
        Proto::H3 => {
            let mut conn = h3_connect(rig.srv.tls_addr.expect("tls"), &rig.pki).await;
            let mut stream = conn.open("GET", &path, &[]).await;
            let resp = stream.recv_response().await.expect("response head");
            let reader = Reader::H3 {
                stream: Box::new(stream),
                _conn: Box::new(conn),
            };
            (resp.status().as_u16(), resp.headers().clone(), reader)
        }
    };
    let mut body = Vec::new();
    let mut change = Some(change);
    let end = loop {
        if body.len() >= AT {
            if let Some(c) = change.take() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                c().await;
            }
        }
        match tokio::time::timeout(Duration::from_secs(20), reader.next()).await {
            Err(_) => panic!("{proto:?} {name}: body stalled after {} bytes", body.len()),
            Ok(None) => break Ok(()),
            Ok(Some(Ok(b))) => body.extend_from_slice(&b),
            Ok(Some(Err(e))) => break Err(e),
        }
    };
    assert!(
        change.is_none(),
        "{proto:?} {name}: the change ran mid-body"
    );
    Got {
        status,
        len: content_length(&headers),
        etag: headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body,
        end,
    }
}

/// Why a download that had to complete with `old`, byte for byte, did not (`None`: it did).
fn not_old_bytes(proto: Proto, what: &str, got: &Got, old: &[u8]) -> Option<String> {
    if !got.complete() {
        return Some(format!(
            "{proto:?}, {what} mid-body: the download did not complete ({} {} of {} bytes, {:?})",
            got.status,
            got.body.len(),
            got.len,
            got.end
        ));
    }
    (got.body != old).then(|| format!("{proto:?}, {what} mid-body: not the old bytes"))
}

/// Fails with every protocol's failure at once (each protocol is tried whatever the others did).
fn assert_none_failed(failures: &[String]) {
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Renamed over mid-body (the documented safe way to publish): every protocol finishes with
/// the old inode's bytes; the next request gets the new ones.
#[tokio::test]
async fn renamed_over_mid_body_completes_with_the_old_bytes() {
    let rig = Rig::start();
    let (old, new) = (pattern(LEN, 0), pattern(LEN, 7));
    let mut failures = Vec::new();
    for proto in EVERY {
        let name = format!("rename-{proto:?}.ts");
        rig.publish(&name, &old);
        let got = download(&rig, proto, &name, async || rig.publish(&name, &new)).await;
        failures.extend(not_old_bytes(proto, "renamed over", &got, &old));
        let after = get(&rig.srv.url(&format!("/vod/m/{name}")), &[]).await;
        assert!(
            after.body.as_ref() == new.as_slice(),
            "{proto:?}: then the new bytes"
        );
    }
    assert_none_failed(&failures);
}

/// Replaced through segd's own PUT mid-body: every protocol finishes with the old bytes.
#[tokio::test]
async fn replaced_by_put_mid_body_completes_with_the_old_bytes() {
    let rig = Rig::start();
    let (old, new) = (pattern(LEN, 0), pattern(LEN, 7));
    let mut failures = Vec::new();
    for proto in EVERY {
        let name = format!("put-{proto:?}.ts");
        assert_eq!(rig.write("PUT", &name, &old).await, 201, "{proto:?}");
        let got = download(&rig, proto, &name, async || {
            assert_eq!(
                rig.write("PUT", &name, &new).await,
                204,
                "{proto:?}: replaced"
            );
        })
        .await;
        failures.extend(not_old_bytes(proto, "replaced by PUT", &got, &old));
    }
    assert_none_failed(&failures);
}

/// DELETEd through segd mid-body: every protocol finishes the download (docs/ingest.md).
#[tokio::test]
async fn deleted_mid_body_completes_with_the_old_bytes() {
    let rig = Rig::start();
    let old = pattern(LEN, 0);
    let mut failures = Vec::new();
    for proto in EVERY {
        let name = format!("delete-{proto:?}.ts");
        rig.publish(&name, &old);
        let got = download(&rig, proto, &name, async || {
            assert_eq!(
                rig.write("DELETE", &name, b"").await,
                204,
                "{proto:?}: deleted"
            );
        })
        .await;
        failures.extend(not_old_bytes(proto, "deleted", &got, &old));
        let after = get(&rig.srv.url(&format!("/vod/m/{name}")), &[]).await;
        assert_eq!(after.status, 404, "{proto:?}: then gone");
    }
    assert_none_failed(&failures);
}

/// Writes `data` over the start of `path` without truncating it (`dd conv=notrunc`,
/// `rsync --inplace`): same size, same inode, a new mtime.
fn overwrite(path: &Path, data: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open")
        .write_all_at(data, 0)
        .expect("write in place");
}

/// Rewritten in place mid-body, keeping its size or by `cp` (truncate, then write): on no
/// protocol does the response complete as a 200 with all its bytes under the old ETag. Bytes
/// read after the change may leave within the span being sent, but the body then fails.
#[tokio::test]
async fn rewritten_in_place_mid_body_never_completes() {
    let rig = Rig::start();
    let (old, new) = (pattern(LEN, 0), pattern(LEN, 7));
    let mut failures = Vec::new();
    for proto in EVERY {
        for how in ["overwrite", "cp"] {
            let name = format!("{how}-{proto:?}.ts");
            rig.publish(&name, &old);
            let path = rig.file(&name);
            // A new mtime: the change must be visible at the clock's coarse granularity.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let got = download(&rig, proto, &name, async || match how {
                "overwrite" => overwrite(&path, &new),
                _ => std::fs::write(&path, &new).expect("cp"),
            })
            .await;
            assert_eq!(got.status, 200, "{proto:?} {how}");
            if got.complete() {
                failures.push(format!(
                    "{proto:?}, {how} in place mid-body: completed ({} of {} bytes, ETag {}, \
                     the old bytes: {})",
                    got.body.len(),
                    got.len,
                    got.etag,
                    got.body == old
                ));
            }
            let after = get(&rig.srv.url(&format!("/vod/m/{name}")), &[]).await;
            assert!(
                after.body.as_ref() == new.as_slice(),
                "{proto:?} {how}: then new"
            );
            assert_ne!(
                after.header("etag"),
                Some(got.etag.as_str()),
                "{proto:?} {how}: under a new ETag"
            );
        }
    }
    assert_none_failed(&failures);
}
