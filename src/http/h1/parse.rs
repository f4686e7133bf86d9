//! Request heads on the HTTP/1.1 fast path: a small strict parser over `httparse`, the request
//! line's version (a higher HTTP/1 minor version is read as 1.1, another major version is 505:
//! RFC 9112 §2.3, RFC 9110 §2.5), message framing (RFC 9112 §6.3: one valid Content-Length at
//! most, never with Transfer-Encoding, anything ambiguous refused), `Connection` handling and
//! request targets.

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::http::request_body::{self, declared_length};

/// Field lines parsed into an array on the stack; a head with more (up to
/// `max_header_fields`) is parsed again into one on the heap.
const STACK_FIELDS: usize = 100;

/// Why a connection ends early; decides the final answer, if any.
pub(super) enum HeadError {
    Closed,
    TimedOut,
    TooLarge,
    /// More field lines than `max_header_fields` (431, saying so).
    TooManyFields,
    /// The request line alone fills the head limit: its target is too long (414, not 431).
    UriTooLong,
    /// The request line names another major version of HTTP (505).
    Version,
    Bad,
}

/// One parsed request head, owned.
pub(super) struct Head {
    pub method: Method,
    pub target: String,
    pub headers: HeaderMap,
    pub http10: bool,
}

/// The per-connection settings the fast path needs (small and `Copy`: kept in every connection).
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub keepalive_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_header_fields: usize,
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Limits {
            keepalive_timeout: c.keepalive_timeout,
            header_read_timeout: c.header_read_timeout,
            max_header_bytes: c.max_header_bytes,
            max_header_fields: c.max_header_fields,
        }
    }
}

/// Parses a complete head from `buf` if there is one. Synchronous on purpose: httparse's
/// header array lives on this stack frame, never in the connection's future (a head with more
/// field lines than it holds is parsed again into one on the heap, up to `max_header_fields`).
///
/// httparse knows HTTP/1.0 and HTTP/1.1 only. A request line with a higher minor version
/// (`HTTP/1.2`) is rewritten in `buf` to `HTTP/1.1` and parsed again: a server treats it as the
/// highest minor version it implements (RFC 9110 §2.5), and so does hyper when a chunked body
/// hands it the connection with these bytes.
pub(super) fn try_parse(
    buf: &mut [u8],
    limits: &Limits,
) -> Result<Option<(Head, usize)>, HeadError> {
    let parsed = {
        let mut headers = [httparse::EMPTY_HEADER; STACK_FIELDS];
        match parse_into(buf, limits, &mut headers) {
            Err(HeadError::TooManyFields) if limits.max_header_fields > STACK_FIELDS => {
                let mut headers = vec![httparse::EMPTY_HEADER; limits.max_header_fields];
                parse_into(buf, limits, &mut headers)
            }
            other => other,
        }
    }?;
    match parsed {
        Parsed::Head(head, n) => Ok(Some((head, n))),
        Parsed::Partial => partial(buf, limits.max_header_bytes),
        Parsed::HigherMinor(at) => {
            buf[at] = b'1';
            try_parse(buf, limits)
        }
    }
}

/// What one parse of the bytes so far found.
enum Parsed {
    Head(Head, usize),
    Partial,
    /// `HTTP/1.n` with n ≥ 2: the minor digit is at this offset in the buffer.
    HigherMinor(usize),
}

fn parse_into<'b>(
    buf: &'b [u8],
    limits: &Limits,
    headers: &mut [httparse::Header<'b>],
) -> Result<Parsed, HeadError> {
    let mut req = httparse::Request::new(headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > limits.max_header_bytes {
                return Err(HeadError::TooLarge);
            }
            if req.headers.len() > limits.max_header_fields {
                return Err(HeadError::TooManyFields);
            }
            own_head(&req).map(|h| Parsed::Head(h, n))
        }
        Ok(httparse::Status::Partial) => Ok(Parsed::Partial),
        Err(httparse::Error::Version) => match line_version(buf) {
            LineVersion::Incomplete => Ok(Parsed::Partial),
            LineVersion::HigherMinor(at) => Ok(Parsed::HigherMinor(at)),
            LineVersion::OtherMajor => Err(HeadError::Version),
            LineVersion::Malformed => Err(HeadError::Bad),
        },
        // The head may still be over `max_header_bytes`: that is the answer then.
        Err(httparse::Error::TooManyHeaders) if buf.len() > limits.max_header_bytes => {
            Err(HeadError::TooLarge)
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields),
        Err(_) => Err(HeadError::Bad),
    }
}

/// An incomplete head: wait for more, unless it already fills the limit.
fn partial(buf: &[u8], max_header_bytes: usize) -> Result<Option<(Head, usize)>, HeadError> {
    if buf.len() >= max_header_bytes {
        let in_request_line = !buf[..max_header_bytes].contains(&b'\n');
        return Err(if in_request_line {
            HeadError::UriTooLong
        } else {
            HeadError::TooLarge
        });
    }
    Ok(None)
}

/// What the version of a request line httparse refused for its version says.
#[derive(Debug, PartialEq, Eq)]
enum LineVersion {
    /// The line has not ended yet (httparse refuses `HTTP/2` before the rest arrives).
    Incomplete,
    /// `HTTP/1.n` with n ≥ 2: the minor digit is at this offset in the buffer.
    HigherMinor(usize),
    /// `HTTP/m.n` with m ≠ 1 (RFC 9110 §15.6.6: 505).
    OtherMajor,
    /// Not `method SP target SP HTTP/DIGIT.DIGIT` (RFC 9112 §2.3, §3): 400.
    Malformed,
}

fn line_version(buf: &[u8]) -> LineVersion {
    // Empty lines before a request line are skipped (RFC 9112 §2.2), as httparse does.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let Some(len) = buf[start..].iter().position(|&b| b == b'\n') else {
        return LineVersion::Incomplete;
    };
    let line = &buf[start..start + len];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return LineVersion::Malformed;
    };
    match *version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if major != b'1' {
                LineVersion::OtherMajor
            } else if minor >= b'2' {
                LineVersion::HigherMinor(start + method.len() + target.len() + 2 + 7)
            } else {
                // HTTP/1.0 or HTTP/1.1: httparse refused something else.
                LineVersion::Malformed
            }
        }
        _ => LineVersion::Malformed,
    }
}

/// Reads until a complete head is in `buf`; returns it and its length.
pub(super) async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cfg: &Limits,
) -> Result<(Head, usize), HeadError> {
    let deadline = tokio::time::Instant::now() + cfg.header_read_timeout;
    loop {
        if let Some(done) = try_parse(buf, cfg)? {
            return Ok(done);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(HeadError::Closed),
            Err(_) => return Err(HeadError::TimedOut),
        }
    }
}

fn own_head(req: &httparse::Request<'_, '_>) -> Result<Head, HeadError> {
    let method =
        Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| HeadError::Bad)?;
    let target = req.path.ok_or(HeadError::Bad)?.to_string();
    let http10 = req.version == Some(0);
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Bad)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Bad)?;
        headers.append(name, value);
    }
    if !super::super::headers::host_ok(&headers, !http10) {
        return Err(HeadError::Bad);
    }
    Ok(Head {
        method,
        target,
        headers,
        http10,
    })
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing {
    NoBody,
    /// `Content-Length` bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding` (which codings: checked by the caller).
    Chunked,
}

/// Validates message framing (RFC 9112 §6.3): one valid Content-Length at most, never both
/// Content-Length and Transfer-Encoding. Anything ambiguous is refused outright.
pub(super) fn body_framing(head: &Head) -> Result<Framing, ()> {
    let te = head
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .count();
    if te > 0 && head.headers.contains_key(http::header::CONTENT_LENGTH) {
        return Err(());
    }
    if te > 0 {
        return Ok(Framing::Chunked);
    }
    Ok(match declared_length(&head.headers)? {
        None | Some(0) => Framing::NoBody,
        Some(n) => Framing::Length(n),
    })
}

/// Whether the client waits for `100 Continue` before it sends the body (never from an
/// HTTP/1.0 client: RFC 9110 §10.1.1).
pub(super) fn expects_continue(head: &Head) -> bool {
    !head.http10 && request_body::expects_continue(&head.headers)
}

pub(super) fn connection_close(head: &Head) -> bool {
    let mut close = head.http10;
    for v in head.headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for tok in s.split(',') {
                let tok = tok.trim();
                if tok.eq_ignore_ascii_case("close") {
                    return true;
                }
                if tok.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    close
}

/// Origin-form `/path?query`, absolute-form `http://host/path?query`, `*` (OPTIONS), or
/// authority-form `host:port` (CONNECT), read as hyper reads them over TLS so that a target
/// means the same on every protocol: `*` is the path `*` and an authority-form target has the
/// empty path, whatever the method. The handler decides what they mean for it (CONNECT and
/// any method segd does not implement: 501; `*` is `OPTIONS *`; else 400).
///
/// Absolute-form (RFC 9112 §3.2.2) is what a proxy sends, and a server must accept it: the
/// scheme is case-insensitive (RFC 3986 §3.1), the authority ends at the first `/`, `?` or `#`
/// (a `/` in the query is not the path), and an empty host is invalid (RFC 9110 §4.2.1). An
/// empty path is `/` (RFC 9110 §4.2.3), except in `OPTIONS http://host[:port]` with no query,
/// which is the absolute form of `OPTIONS *` (RFC 9112 §3.2.4).
pub(super) fn split_target(head: &Head) -> Option<(&str, Option<&str>)> {
    let t = head.target.as_str();
    let path_query = if t.starts_with('/') {
        t
    } else if t == "*" {
        return Some(("*", None));
    } else if !t.contains("://") {
        // Authority-form, as `http::Uri` (hyper's parser) takes it: no scheme and no path.
        let uri = t.parse::<http::Uri>().ok()?;
        return (uri.scheme().is_none() && uri.authority().is_some()).then_some(("", None));
    } else {
        let rest = strip_scheme(t)?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(end);
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        // No host, userinfo (RFC 9110 §4.2.4: a recipient treats it as an error), or an
        // authority that is no `uri-host [":" port]`, as a `Host` must be: it stands for
        // `Host` here (RFC 9112 §3.2.2). `http://a:80:80/` and `http://a:xx/` were served.
        // A `%` there is refused as hyper's parser refuses it on the TLS listener
        // (`http://a%00/` was served here, 400 there).
        if host.is_empty()
            || authority.contains(['@', '%'])
            || !crate::http::headers::host_value_ok(authority.as_bytes())
        {
            return None;
        }
        if path_query.is_empty() || path_query.starts_with('#') {
            return Some((
                if head.method == Method::OPTIONS {
                    "*"
                } else {
                    "/"
                },
                None,
            ));
        }
        path_query
    };
    // One pass: the fragment cut off, the query split off at the first `?`, and characters no
    // URI has (RFC 3986 §2) that hyper's parser refuses on the TLS listener refused the same
    // (400). (It takes a backtick in the query.)
    let bytes = path_query.as_bytes();
    let end = memchr::memchr(b'#', bytes).unwrap_or(bytes.len());
    let question = memchr::memchr(b'?', &bytes[..end]);
    if memchr::memchr3(b'"', b'<', b'>', &bytes[..end]).is_some()
        || memchr::memchr(b'`', &bytes[..question.unwrap_or(end)]).is_some()
    {
        return None;
    }
    Some(match question {
        // `http://host?q`: the path is empty, so it is `/`.
        Some(0) => ("/", Some(&path_query[1..end])),
        Some(q) => (&path_query[..q], Some(&path_query[q + 1..end])),
        None => (&path_query[..end], None),
    })
}

/// The rest of an `http://` or `https://` target, the scheme matched case-insensitively.
fn strip_scheme(t: &str) -> Option<&str> {
    let (scheme, rest) = t.split_once("://")?;
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str, hs: &[(&str, &str)]) -> Head {
        let mut headers = HeaderMap::new();
        for (k, v) in hs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        Head {
            method: Method::from_bytes(method.as_bytes()).expect("method"),
            target: target.into(),
            headers,
            http10: false,
        }
    }

    #[test]
    fn framing_rules() {
        assert_eq!(body_framing(&head("GET", "/", &[])), Ok(Framing::NoBody));
        assert_eq!(
            body_framing(&head("GET", "/", &[("content-length", "0")])),
            Ok(Framing::NoBody)
        );
        assert_eq!(
            body_framing(&head("POST", "/", &[("content-length", "5")])),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            body_framing(&head("POST", "/", &[("transfer-encoding", "chunked")])),
            Ok(Framing::Chunked)
        );
        assert!(body_framing(&head(
            "GET",
            "/",
            &[("content-length", "1"), ("content-length", "1")]
        ))
        .is_err());
        assert!(body_framing(&head(
            "GET",
            "/",
            &[("content-length", "1"), ("transfer-encoding", "chunked")]
        ))
        .is_err());
        assert!(body_framing(&head("GET", "/", &[("content-length", "-1")])).is_err());
        assert!(body_framing(&head("GET", "/", &[("content-length", "1, 1")])).is_err());
        assert!(body_framing(&head(
            "GET",
            "/",
            &[("content-length", "99999999999999999999")]
        ))
        .is_err());
        assert!(body_framing(&head("GET", "/", &[("content-length", "+5")])).is_err());
        assert_eq!(
            body_framing(&head(
                "PUT",
                "/",
                &[("content-length", "18446744073709551615")]
            )),
            Ok(Framing::Length(u64::MAX)),
            "the largest length is a length (too large for a body: 413, not 400)"
        );
    }

    #[test]
    fn targets() {
        let h = head("GET", "/a/b.ts?x=1", &[]);
        assert_eq!(split_target(&h), Some(("/a/b.ts", Some("x=1"))));
        let h = head("GET", "http://host/a.ts", &[]);
        assert_eq!(split_target(&h), Some(("/a.ts", None)));
        assert_eq!(split_target(&head("OPTIONS", "*", &[])), Some(("*", None)));
        // The handler refuses these for GET (400); `BREW *` is 501 as it is over TLS.
        assert_eq!(split_target(&head("GET", "*", &[])), Some(("*", None)));
        assert_eq!(split_target(&head("GET", "host/a.ts", &[])), None);
        // Authority-form (CONNECT's): no path.
        assert_eq!(
            split_target(&head("CONNECT", "host:443", &[])),
            Some(("", None))
        );
        assert_eq!(
            split_target(&head("CONNECT", "[::1]:443", &[])),
            Some(("", None))
        );
        assert_eq!(split_target(&head("CONNECT", "host:443/x", &[])), None);
        assert_eq!(split_target(&head("CONNECT", "", &[])), None);
        // An absolute-form authority is a `Host`: checked as one.
        for bad in [
            "http://a:80:80/a.ts",
            "http://[::1/a.ts",
            "http://a:xx/a.ts",
            "http://a%00/a.ts",
            "http://a%41:80/a.ts",
        ] {
            assert_eq!(split_target(&head("GET", bad, &[])), None, "{bad}");
        }
        let h = head("GET", "http://[::1]:8080/a.ts", &[]);
        assert_eq!(split_target(&h), Some(("/a.ts", None)));
        // Characters hyper's URI parser refuses (over TLS): refused here too.
        for bad in [
            "/a\"b.ts",
            "/a<.ts",
            "/a>.ts",
            "/a`.ts",
            "/a.ts?q=\"x\"",
            "/a.ts?<",
        ] {
            assert_eq!(split_target(&head("GET", bad, &[])), None, "{bad}");
        }
        let h = head("GET", "/a{b}|^.ts?q=`", &[]);
        assert_eq!(split_target(&h), Some(("/a{b}|^.ts", Some("q=`"))));
        // The fragment goes, and what is in it is not looked at; the first `?` splits.
        for (target, want) in [
            ("/a.ts#f", ("/a.ts", None)),
            ("/a.ts#f<`\"", ("/a.ts", None)),
            ("/a.ts?x=1#f?y<", ("/a.ts", Some("x=1"))),
            ("/a?b?c`", ("/a", Some("b?c`"))),
            ("/a.ts?", ("/a.ts", Some(""))),
            ("http://host?q", ("/", Some("q"))),
            ("http://host?q#f", ("/", Some("q"))),
        ] {
            assert_eq!(
                split_target(&head("GET", target, &[])),
                Some(want),
                "{target}"
            );
        }
    }

    const LIMITS: Limits = Limits {
        keepalive_timeout: Duration::ZERO,
        header_read_timeout: Duration::ZERO,
        max_header_bytes: 8192,
        max_header_fields: 100,
    };

    #[test]
    fn header_field_counts() {
        let head = |fields: usize| {
            let mut h = String::from("GET /a.ts HTTP/1.1\r\nHost: t\r\n");
            for i in 1..fields {
                h.push_str(&format!("x-{i}: 1\r\n"));
            }
            h.push_str("\r\n");
            h.into_bytes()
        };
        let count = |fields: usize, max_header_fields: usize| {
            let limits = Limits {
                max_header_fields,
                ..LIMITS
            };
            match try_parse(&mut head(fields), &limits) {
                Ok(Some((h, _))) => Ok(h.headers.len()),
                Ok(None) => Err("partial"),
                Err(HeadError::TooManyFields) => Err("too many"),
                Err(HeadError::TooLarge) => Err("too large"),
                Err(HeadError::Bad) => Err("bad"),
                Err(_) => Err("other"),
            }
        };
        assert_eq!(count(100, 100), Ok(100));
        assert_eq!(count(101, 100), Err("too many"));
        // Above the stack array's 100: parsed again on the heap.
        assert_eq!(count(101, 300), Ok(101));
        assert_eq!(count(300, 300), Ok(300));
        assert_eq!(count(301, 300), Err("too many"));
        assert_eq!(count(20, 10), Err("too many"));
        // The byte limit still holds first (8192 bytes is about 900 of these lines).
        assert_eq!(count(1200, 2000), Err("too large"));
        // An incomplete head with more lines than allowed need not wait for its end.
        let mut cut = head(101);
        cut.truncate(cut.len() - 2);
        assert!(matches!(
            try_parse(&mut cut, &LIMITS),
            Err(HeadError::TooManyFields)
        ));
    }

    fn parse(line: &str) -> Result<Option<String>, &'static str> {
        let mut buf = format!("{line}\r\nHost: t\r\n\r\n").into_bytes();
        match try_parse(&mut buf, &LIMITS) {
            Ok(Some((h, n))) => {
                assert_eq!(n, buf.len());
                assert!(!h.http10);
                Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
            Ok(None) => Ok(None),
            Err(HeadError::Version) => Err("505"),
            Err(HeadError::Bad) => Err("400"),
            Err(_) => Err("other"),
        }
    }

    #[test]
    fn request_line_versions() {
        // A higher minor version is HTTP/1.1, in the buffer too (hyper may read it next).
        for v in ["HTTP/1.2", "HTTP/1.9"] {
            let out = parse(&format!("GET /a.ts {v}"))
                .expect("parsed")
                .expect("complete");
            assert!(out.starts_with("GET /a.ts HTTP/1.1\r\n"), "{v}: {out}");
        }
        let out = parse("\r\nGET /a.ts HTTP/1.5")
            .expect("parsed")
            .expect("complete");
        assert!(out.starts_with("\r\nGET /a.ts HTTP/1.1\r\n"), "{out}");
        for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/9.9"] {
            assert_eq!(parse(&format!("GET /a.ts {v}")), Err("505"), "{v}");
        }
        for v in [
            "HTTP/1.",
            "HTTP/x.y",
            "HTTPS/1.1",
            "http/1.1",
            "HTTP/1.1x",
            "HTTP/11.1",
            "HTTP/1.22",
            "HTTP/2",
            "HTTP/1.2 x",
        ] {
            assert_eq!(parse(&format!("GET /a.ts {v}")), Err("400"), "{v}");
        }
        // A space in the target is no version at all.
        assert_eq!(parse("GET /a b HTTP/1.2"), Err("400"));
        // The line has not ended: wait for it.
        let mut buf = b"GET /a.ts HTTP/2".to_vec();
        assert!(matches!(try_parse(&mut buf, &LIMITS), Ok(None)));
        let mut buf = b"GET /a.ts HTTP/1.2\r\nHost: t\r\n".to_vec();
        assert!(matches!(try_parse(&mut buf, &LIMITS), Ok(None)));
        assert!(buf.starts_with(b"GET /a.ts HTTP/1.1\r\n"));
    }

    #[test]
    fn absolute_form_targets() {
        // RFC 9112 §3.2.4: the absolute form of `OPTIONS *` is an empty path with no query.
        for t in [
            "http://host",
            "http://host:8080",
            "HTTP://host",
            "http://[::1]:80",
        ] {
            assert_eq!(
                split_target(&head("OPTIONS", t, &[])),
                Some(("*", None)),
                "{t}"
            );
        }
        // With a query, or for another method, an empty path is `/` (RFC 9110 §4.2.3).
        assert_eq!(
            split_target(&head("OPTIONS", "http://host?x", &[])),
            Some(("/", Some("x")))
        );
        assert_eq!(
            split_target(&head("GET", "http://host:80", &[])),
            Some(("/", None))
        );
        // The scheme is case-insensitive.
        assert_eq!(
            split_target(&head("GET", "HTTPS://host/a.ts?q=1", &[])),
            Some(("/a.ts", Some("q=1")))
        );
        // A `/` in the query is not where the path starts.
        assert_eq!(
            split_target(&head("GET", "http://host?/a.ts", &[])),
            Some(("/", Some("/a.ts")))
        );
        // No host, or not http(s): not a target this server answers.
        assert_eq!(split_target(&head("GET", "http:///a.ts", &[])), None);
        assert_eq!(split_target(&head("OPTIONS", "http://", &[])), None);
        assert_eq!(split_target(&head("GET", "ftp://host/a.ts", &[])), None);
        // Userinfo is an error (RFC 9110 §4.2.4).
        assert_eq!(
            split_target(&head("GET", "http://u:p@host/a.ts", &[])),
            None
        );
        assert_eq!(split_target(&head("OPTIONS", "http://u@host", &[])), None);
    }
}
