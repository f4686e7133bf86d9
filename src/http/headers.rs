//! Response headers that depend on policy, not on the object: CORS (on every response, so
//! players can read errors too), Cache-Control by object class, and the OPTIONS answer.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ALLOW, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::handler::{LogInfo, Reply, Request};
use crate::config::Config;
use crate::policy::Policy;
use crate::store::{Body, ObjectClass};

pub const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
pub const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
/// Under `[ingest] prefixes`.
const WRITABLE_METHODS: HeaderValue =
    HeaderValue::from_static("GET, HEAD, OPTIONS, PUT, POST, DELETE");
/// `Age` and `Date` let a player tell how old a CDN's copy of a live playlist is (RFC 8216bis
/// Appendix C; hls.js reads `Age`); `Location` (a 201's) and `Retry-After` (a 503's) serve a
/// browser uploader. Browsers hide them from scripts unless exposed.
const EXPOSE: HeaderValue = HeaderValue::from_static(
    "Content-Length, Content-Range, ETag, Age, Date, Location, Retry-After",
);
const TIMING_ALLOW_ORIGIN: http::HeaderName = http::HeaderName::from_static("timing-allow-origin");

thread_local! {
    static DATE: std::cell::RefCell<(u64, HeaderValue)> =
        const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// The `Date` of a response sent now (RFC 9110 §6.6.1: an origin server with a clock sends it
/// on every 2xx, 3xx and 4xx answer), formatted once per second per thread. hyper adds its own
/// on the connections it writes; the HTTP/1.1 fast path and HTTP/3 take this one.
pub fn date() -> HeaderValue {
    date_value(std::time::SystemTime::now())
}

/// `t` as an HTTP date header value ([`super::http_date`]): formatted once per second per
/// thread, shared with [`date`] (a file just written has a `Last-Modified` of this second).
pub fn date_value(t: std::time::SystemTime) -> HeaderValue {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 == secs {
            return d.1.clone();
        }
        let v = HeaderValue::from_str(&super::http_date(t))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        *d = (secs, v.clone());
        v
    })
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, any request at most one, and
/// its value is a `uri-host [ ":" port ]` (RFC 3986 characters only; it may be empty).
pub fn host_ok(headers: &HeaderMap, http11: bool) -> bool {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => !http11,
        (Some(_), Some(_)) => false,
        (Some(v), None) => host_value_ok(v.as_bytes()),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2, §3.2.3), or empty: an IP literal in brackets (hex
/// digits, `:` and `.`), or a name of unreserved, percent-encoded and sub-delim characters (an
/// IPv4 address is one); the port all digits. `x:-1`, `x:80:80`, `[::1` and `::1` were taken.
/// Also the authority of an HTTP/1.1 absolute-form target, which stands for `Host` there.
pub(super) fn host_value_ok(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        None => return true,
        Some(b'[') => {
            let Some(end) = v.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &v[1..end];
            if literal.is_empty()
                || !(literal.iter()).all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return false;
            }
            match &v[end + 1..] {
                [] => (&v[..0], None),
                [b':', port @ ..] => (&v[..0], Some(port)),
                _ => return false,
            }
        }
        Some(_) => match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        },
    };
    let name_ok =
        (host.iter()).all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    name_ok && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// RFC 9113 §8.3.1 (HTTP/2): a request names its authority in `:authority` or in `Host` (an
/// `http` or `https` request with neither is malformed), at most one `Host`, and a `Host` that
/// names another authority than `:authority` makes the request malformed too (a SHOULD there;
/// HTTP/3 makes it a MUST, RFC 9114 §4.3.1, and h3 refuses it). Names compare without regard
/// to case (RFC 3986 §3.2.2). `authority` is the request URI's, which hyper takes from
/// `:authority`.
pub fn h2_authority_ok(authority: Option<&http::uri::Authority>, headers: &HeaderMap) -> bool {
    if !host_ok(headers, false) {
        return false;
    }
    match (authority, headers.get(http::header::HOST)) {
        (None, None) => false,
        (Some(a), Some(h)) => a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()),
        _ => true,
    }
}

/// RFC 9113 §8.3.1 (HTTP/2) and RFC 9114 §4.3.1 (HTTP/3): `:scheme` is `http` or `https` for
/// the requests segd serves, and `:authority` has no userinfo (`user@host`, which the HTTP/1.1
/// parsers refuse in `Host` and in an absolute target too: RFC 9110 §4.2.4) and is a
/// `uri-host [ ":" port ]` as `Host` must be; `:path` is an absolute path (§8.3.1), or `*`.
/// Any of them makes the request malformed.
pub fn target_ok(uri: &http::Uri) -> bool {
    let scheme_ok = uri
        .scheme_str()
        .is_none_or(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    // `:path` is an absolute path (or `*`): `?x` was looked up as `/` (HTTP/1.1: 400).
    let path_ok = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().starts_with('/') || p.as_str() == "*");
    scheme_ok && authority_ok(uri) && path_ok
}

/// The authority of a request's URI, if it has one, has no userinfo and is checked as a `Host`
/// value is (`x:abc` and `x:8a0` were served): `:authority`, or an HTTP/1.1 absolute target's.
pub fn authority_ok(uri: &http::Uri) -> bool {
    uri.authority()
        .is_none_or(|a| !a.as_str().contains('@') && host_value_ok(a.as_str().as_bytes()))
}

/// RFC 9113 §8.2.1 (HTTP/2), and the field-value grammar of RFC 9110 §5.5 that HTTP/3 carries
/// as it is: a field value that starts or ends with whitespace (SP, HTAB) makes the request
/// malformed. (HTTP/1.1's parsers strip it as the optional whitespace around a value.)
pub fn values_trimmed(headers: &HeaderMap) -> bool {
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    headers
        .values()
        .all(|v| !ws(v.as_bytes().first()) && !ws(v.as_bytes().last()))
}

/// `Cache-Control` for an object of `class` (live: under `cache_control.live_prefixes`).
pub fn cache_control(cfg: &Config, class: ObjectClass, live: bool) -> HeaderValue {
    let cc = &cfg.cache_control;
    match (class, live) {
        (ObjectClass::Playlist, false) => cc.playlists.clone(),
        (ObjectClass::Segment, false) => cc.segments.clone(),
        (ObjectClass::Key, _) => cc.keys.clone(),
        (ObjectClass::Playlist, true) => cc.live.clone(),
        (ObjectClass::Segment, true) => cc.live_segments.clone(),
    }
}

/// `Cache-Control` of an upstream's 404 or 410 that the pull tier remembers for `remembered`
/// longer (`[pull] negative_ttl`): a CDN may keep it that long and never longer (whole seconds,
/// rounded down), so a stampede of requests for a missing object reaches neither segd nor its
/// upstream, and an object published meanwhile reaches viewers through the CDN no later than
/// through segd. `None` when it is not remembered, or for less than a second (a live path,
/// segd's own 404s): such an answer is `no-store`, as every other error.
pub fn negative_cache_control(remembered: std::time::Duration) -> Option<HeaderValue> {
    let secs = remembered.as_secs();
    (secs > 0)
        .then(|| HeaderValue::from_str(&format!("public, max-age={secs}")).ok())
        .flatten()
}

/// `Access-Control-Allow-Origin` (+ `Vary: Origin` when it depends on the request),
/// `Access-Control-Expose-Headers`, and `Timing-Allow-Origin` for the same origins (players'
/// Resource Timing then sees protocol and timings of segment fetches). With
/// `allow_credentials` (an explicit origin list, checked by the config), the allowed origin is
/// echoed with `Access-Control-Allow-Credentials: true`, on preflights and on every answer
/// (Fetch standard, CORS check: a credentialed response needs both).
pub fn cors(policy: &Policy, req: &Request<'_>, headers: &mut HeaderMap) {
    let cors = &policy.config.cors;
    if cors.any_origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(TIMING_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = req.headers.get(ORIGIN) else {
            return;
        };
        let allowed = cors
            .allow_origins
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes());
        if !allowed {
            return;
        }
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(TIMING_ALLOW_ORIGIN, origin.clone());
        if cors.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
}

/// The methods a path accepts (`Allow` on OPTIONS and on 405, RFC 9110 §10.2.1, §15.5.6;
/// CORS preflight): `writable` when it is under `[ingest] prefixes`.
pub fn allow(writable: bool) -> HeaderValue {
    if writable {
        WRITABLE_METHODS
    } else {
        ALLOWED_METHODS
    }
}

/// OPTIONS: a CORS preflight gets the allowed methods and headers; any other OPTIONS (including
/// `OPTIONS *`) gets `Allow`. No token is required: browsers never send credentials on preflight.
/// `writable`: the path is under `[ingest] prefixes` (PUT, POST and DELETE are listed too).
pub fn options(policy: &Policy, req: &Request<'_>, writable: bool) -> Reply {
    let methods = allow(writable);
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(ALLOW, methods.clone());
    if req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        cors(policy, req, &mut headers);
        if headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
            let cors = &policy.config.cors;
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                if writable {
                    cors.allow_headers_write.clone()
                } else {
                    cors.allow_headers.clone()
                },
            );
            headers.insert(
                ACCESS_CONTROL_MAX_AGE,
                policy.config.cors.max_age_header.clone(),
            );
        }
    }
    Reply {
        status: StatusCode::NO_CONTENT,
        headers,
        body: Body::Empty,
        log: LogInfo::default(),
        close: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9112 §3.2 / RFC 3986 §3.2.2-3: what a `Host` may be (acceptance J7: the bad ones
    /// were served on HTTP/1.1).
    #[test]
    fn host_values() {
        for good in [
            "",
            "x",
            "x:80",
            "x:",
            "a.example:8080",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
            "a%20b",
        ] {
            assert!(host_value_ok(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "x:-1",
            "x:8o",
            "x:80:80",
            "[::1",
            "::1",
            "[]",
            "[::1]x",
            "[::1]:x",
            "a b",
            "a@b",
            "a/b",
            "[fe80::1%eth0]",
        ] {
            assert!(!host_value_ok(bad.as_bytes()), "{bad:?}");
        }
    }

    /// A remembered 404 is kept by a CDN for the whole seconds left, never rounded up; under a
    /// second, not at all.
    #[test]
    fn negative_answers_are_kept_no_longer_than_remembered() {
        let cc = |ms| negative_cache_control(std::time::Duration::from_millis(ms));
        assert_eq!(
            cc(5_999),
            Some(HeaderValue::from_static("public, max-age=5"))
        );
        assert_eq!(
            cc(1_000),
            Some(HeaderValue::from_static("public, max-age=1"))
        );
        assert_eq!(cc(999), None);
        assert_eq!(cc(0), None);
    }

    #[test]
    fn h2_authority_rules() {
        let a: http::uri::Authority = "media.example:8443".parse().expect("authority");
        let host = |vals: &[&str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append(http::header::HOST, HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        assert!(h2_authority_ok(Some(&a), &host(&[])));
        assert!(h2_authority_ok(Some(&a), &host(&["media.example:8443"])));
        assert!(h2_authority_ok(Some(&a), &host(&["MEDIA.example:8443"])));
        assert!(h2_authority_ok(None, &host(&["media.example"])));
        assert!(!h2_authority_ok(None, &host(&[])), "no authority at all");
        assert!(!h2_authority_ok(Some(&a), &host(&["other.example"])));
        assert!(
            !h2_authority_ok(Some(&a), &host(&["media.example"])),
            "port differs"
        );
        assert!(
            !h2_authority_ok(None, &host(&["a", "a"])),
            "two Host fields"
        );
    }

    #[test]
    fn values_with_whitespace_at_either_end_are_malformed() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-a", HeaderValue::from_static("ok"));
            h.append("x-a", HeaderValue::from_str(v).expect("value"));
            values_trimmed(&h)
        };
        assert!(with("a b"));
        assert!(with(""));
        for bad in [" a", "a ", "\ta", "a\t", " "] {
            assert!(!with(bad), "{bad:?}");
        }
    }
}
