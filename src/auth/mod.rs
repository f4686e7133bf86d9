//! Token policy: where a token is found, which paths need one, origin auth, and the decision.
//!
//! Locations, in the order they are tried (name from `[token] name`, default `__token__`):
//! 1. path-embedded: the first raw path segment is `__token__=<percent-encoded token>`; it is
//!    isolated on the *undecoded* path, decoded once, and stripped before the ACL check and the
//!    file lookup (always, so public paths work under a tokenised prefix too);
//! 2. query parameter `__token__` (decoded once; if that fails, the raw value is tried, because
//!    early-escaped fields such as `data=a%3db` are signed in their escaped form);
//! 3. cookie `__token__`;
//! 4. request header named like the token (`__token__: …`).
//!
//! A CDN that validated the token at the edge proves itself with `origin_auth_header` /
//! `origin_auth_secret` (constant-time compare) and skips token checks.

pub mod edgeauth;

use std::net::IpAddr;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::TokenConfig;
use crate::volumes::path::percent_decode;
use edgeauth::{Claim, Key, Verifier};
pub use edgeauth::{Grant, Reason};

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Path,
    Query,
    Cookie,
    Header,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not under a protected prefix.
    Public,
    /// A CDN proved itself with the origin-auth secret.
    OriginAuth,
    /// A valid token.
    Granted { grant: Grant, source: Source },
    /// Refused (403); the reason is for logs and metrics only.
    Denied(Reason),
}

/// A path with any embedded token segment split off.
pub struct SplitPath<'a> {
    /// The path without the token segment (still raw / percent-encoded).
    pub path: &'a str,
    /// The decoded token from the first segment, if there was one.
    pub token: Option<String>,
}

/// Isolates a leading `/<name>=<token>` segment on the raw path.
pub fn split_path_token<'a>(name: &str, raw: &'a str) -> SplitPath<'a> {
    let none = SplitPath {
        path: raw,
        token: None,
    };
    let Some(rest) = raw.strip_prefix('/') else {
        return none;
    };
    let (seg, tail) = match crate::text::find(rest, b'/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let decoded;
    let seg = if crate::text::find(seg, b'%').is_some() {
        match decode_once(seg) {
            Some(d) => decoded = d,
            None => return none,
        }
        decoded.as_str()
    } else {
        seg
    };
    match seg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
        Some(tok) => SplitPath {
            path: if tail.is_empty() { "/" } else { tail },
            token: Some(tok.to_string()),
        },
        None => none,
    }
}

/// The raw value of query parameter `name` (first occurrence).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    let bytes = query.as_bytes();
    let mut start = 0;
    loop {
        let end = memchr::memchr(b'&', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let pair = &query[start..end];
        let (k, v) = match memchr::memchr(b'=', pair.as_bytes()) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, ""),
        };
        if k == name {
            return Some(v);
        }
        if end == bytes.len() {
            return None;
        }
        start = end + 1;
    }
}

/// The cookie `name`'s value; `Some(Err(()))` for one in a `Cookie` line that is no UTF-8 (a
/// token that cannot be one: `malformed`, not `missing`). UTF-8, not only ASCII: a token minted
/// with `data=é` is sent so.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<Result<&'h str, ()>> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| match std::str::from_utf8(v.as_bytes()) {
            Ok(text) => text.split(';').map(Ok).collect::<Vec<_>>(),
            Err(_) => v.as_bytes().split(|&b| b == b';').map(Err).collect(),
        })
        .find_map(|c| match c {
            Ok(c) => {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| Ok(v.trim_matches('"')))
            }
            Err(raw) => {
                let raw = raw.trim_ascii_start();
                let named = raw.strip_prefix(name.as_bytes())?.starts_with(b"=");
                named.then_some(Err(()))
            }
        })
}

fn decode_once(raw: &str) -> Option<String> {
    percent_decode(raw.as_bytes()).and_then(|d| String::from_utf8(d).ok())
}

/// The request facts the policy needs.
pub struct Facts<'a> {
    /// The path as received minus any token segment (raw).
    pub raw_path: &'a str,
    /// The decoded, sanitised path with a leading `/`.
    pub canonical_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub path_token: Option<&'a str>,
    pub peer_ip: IpAddr,
    pub now: u64,
}

/// Token policy for one config.
pub struct Auth {
    name: String,
    protect: Vec<String>,
    verifier: Verifier,
    origin_auth: Option<(http::HeaderName, Vec<u8>)>,
    origin_auth_skips_tokens: bool,
    client_ip_header: Option<http::HeaderName>,
    client_ip_proxies: usize,
}

impl Auth {
    pub fn new(cfg: &TokenConfig) -> Auth {
        Auth {
            name: cfg.name.clone(),
            protect: cfg.protect.clone(),
            verifier: Verifier {
                algorithm: cfg.algorithm,
                keys: cfg
                    .keys
                    .iter()
                    .map(|k| Key::new(&k.id, &k.secret, k.not_before, k.not_after))
                    .collect(),
                salt: cfg.salt.clone(),
                leeway: cfg.leeway.as_secs(),
                escape_early: cfg.escape_early,
                verified: Default::default(),
            },
            origin_auth: cfg.origin_auth.as_ref().and_then(|(h, s)| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .ok()
                    .map(|h| (h, s.as_bytes().to_vec()))
            }),
            origin_auth_skips_tokens: cfg.origin_auth_skips_tokens,
            client_ip_header: cfg
                .client_ip_header
                .as_ref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            client_ip_proxies: cfg.client_ip_proxies,
        }
    }

    /// The policy for upload tokens (`[[ingest.keys]]`): the same token format, name, algorithm,
    /// salt and locations as playback tokens, checked against the upload keys only, on every
    /// path, and never skipped for origin auth (a CDN's pull secret does not authorise writes).
    pub fn for_uploads(cfg: &TokenConfig, keys: &[crate::config::TokenKey]) -> Auth {
        let mut a = Auth::new(&TokenConfig {
            keys: keys.to_vec(),
            protect: vec!["/".into()],
            origin_auth: None,
            ..cfg.clone()
        });
        a.origin_auth_skips_tokens = false;
        a
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_protected(&self, canonical_path: &str) -> bool {
        self.protect
            .iter()
            .any(|p| canonical_path.starts_with(p.as_str()))
    }

    /// Whether the request proves it comes from the CDN (constant-time compare).
    pub fn origin_authenticated(&self, headers: &HeaderMap) -> bool {
        let Some((name, secret)) = &self.origin_auth else {
            return false;
        };
        headers
            .get(name)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret)))
    }

    /// The client address (for `ip=` checks and logs): from the trusted header on
    /// origin-authenticated requests, else the peer. A list header (`X-Forwarded-For`, over one
    /// or several field lines) is read from the right: each proxy appends the address it saw,
    /// so the last entry is the one the nearest proxy wrote, and the client is the entry the
    /// CDN appended, `client_ip_proxies` places left of it. Entries further left were sent by
    /// the client and prove nothing; a list too short, or an entry that is no address, gives
    /// the peer.
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let Some(h) = &self.client_ip_header else {
            return peer;
        };
        if !self.origin_authenticated(headers) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        entries
            .len()
            .checked_sub(1 + self.client_ip_proxies)
            .and_then(|i| entries[i].parse().ok())
            .unwrap_or(peer)
    }

    /// Decides access for a request. Pure apart from reading the facts.
    pub fn decide(&self, f: &Facts<'_>) -> Decision {
        if !self.is_protected(f.canonical_path) {
            return Decision::Public;
        }
        if self.origin_auth_skips_tokens && self.origin_authenticated(f.headers) {
            return Decision::OriginAuth;
        }
        let paths = [f.raw_path, f.canonical_path];
        let claim = Claim {
            paths: if f.raw_path == f.canonical_path {
                &paths[..1]
            } else {
                &paths[..]
            },
            client_ip: self.client_ip(f.headers, f.peer_ip),
            now: f.now,
        };
        let verify = |t: &str| self.verifier.verify(t, &claim);
        if let Some(t) = f.path_token {
            return to_decision(verify(t), Source::Path);
        }
        if let Some(raw) = f.query.and_then(|q| query_param(q, &self.name)) {
            let first = decode_once(raw)
                .map(|d| verify(&d))
                .unwrap_or(Err(Reason::Malformed));
            let r = match first {
                Err(Reason::BadHmac | Reason::Malformed)
                    if decode_once(raw).as_deref() != Some(raw) =>
                {
                    closer(first, verify(raw))
                }
                other => other,
            };
            // A form encoder (`URLSearchParams`, `urlencode`) writes a space as `+`: a token
            // whose `id` or `data` holds a space (`escape_early = false`) signed it as a space.
            let r = match r {
                Err(Reason::BadHmac) if raw.contains('+') => {
                    let spaced = decode_once(&raw.replace('+', "%20"))
                        .map_or(Err(Reason::Malformed), |d| verify(&d));
                    closer(r, spaced)
                }
                other => other,
            };
            return to_decision(r, Source::Query);
        }
        // A cookie or header token as sent, else decoded once (percent-encoded, wholly or in
        // part, as a browser's `document.cookie` or a player's header hook may send it).
        let sent_or_decoded = |raw: &str| {
            let first = verify(raw);
            match first {
                Err(Reason::BadHmac | Reason::Malformed) if raw.contains('%') => {
                    let decoded = decode_once(raw).map_or(Err(Reason::Malformed), |d| verify(&d));
                    closer(first, decoded)
                }
                other => other,
            }
        };
        if let Some(raw) = cookie(f.headers, &self.name) {
            let r = raw.map_or(Err(Reason::Malformed), sent_or_decoded);
            return to_decision(r, Source::Cookie);
        }
        if let Some(v) = f.headers.get(self.name.as_str()) {
            // UTF-8, not only ASCII (`data=é`); other bytes are a token that cannot be one.
            let r =
                std::str::from_utf8(v.as_bytes()).map_or(Err(Reason::Malformed), sent_or_decoded);
            return to_decision(r, Source::Header);
        }
        Decision::Denied(Reason::Missing)
    }

    /// Signs a token with the first key active at `now` (for `segd sign`, print_urls, minting).
    pub fn sign(
        &self,
        spec: &edgeauth::SignSpec<'_>,
        key_id: Option<&str>,
        now: u64,
    ) -> Option<(String, String)> {
        let key = self
            .verifier
            .keys
            .iter()
            .filter(|k| key_id.is_none_or(|id| k.id == id))
            .find(|k| k.active(now))?;
        let mut spec = spec.clone();
        let salt = self.verifier.salt.clone();
        spec.salt = salt.as_deref();
        spec.escape_early = self.verifier.escape_early;
        Some((
            key.id.clone(),
            edgeauth::sign(self.verifier.algorithm, &key.secret, &spec),
        ))
    }
}

/// Of two readings of one token (as sent and percent-decoded once), the one closer to a valid
/// token: a grant, else a refusal its signature got past (expired, not yet valid, another path
/// or address: the token is genuine, and that is why it is refused), else a bad signature,
/// else unreadable. The reason counted and logged is then the real one, whichever form the
/// client used (a percent-encoded cookie of an expired token counted as `malformed`).
fn closer(
    a: Result<edgeauth::Grant, Reason>,
    b: Result<edgeauth::Grant, Reason>,
) -> Result<edgeauth::Grant, Reason> {
    let rank = |r: &Result<edgeauth::Grant, Reason>| match r {
        Ok(_) => 3,
        Err(Reason::Malformed | Reason::Missing) => 0,
        Err(Reason::BadHmac) => 1,
        Err(_) => 2,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// The request for `path` with `token` in each location segd accepts:
/// (query URL, cookie header value, path-embedded URL). `base` is `http://host:port`; `path`
/// is a URL path as an operator types it (`/vod/my mix/a.ts`, perhaps with a `?query`), its
/// path part escaped here where a URL needs it (see [`encode_path`]). The cookie holds the
/// token as it is when a cookie value can (RFC 6265 `cookie-octet`s; no `'`, which would end
/// the shell quoting `segd sign` prints it in), else percent-encoded, which segd decodes once
/// (a `;` from `data=` or `id=` would end the cookie: the token would be cut short).
pub fn ready_urls(base: &str, name: &str, token: &str, path: &str) -> (String, String, String) {
    let enc = encode_token(token);
    let path = encode_target(path);
    let sep = if path.contains('?') { '&' } else { '?' };
    let cookie_safe = token.bytes().all(
        |b| matches!(b, 0x21 | 0x23..=0x26 | 0x28..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E),
    );
    (
        format!("{base}{path}{sep}{name}={enc}"),
        if cookie_safe {
            format!("{name}={token}")
        } else {
            format!("{name}={enc}")
        },
        format!("{base}/{name}={enc}{path}"),
    )
}

fn to_decision(r: Result<Grant, Reason>, source: Source) -> Decision {
    match r {
        Ok(grant) => Decision::Granted { grant, source },
        Err(reason) => Decision::Denied(reason),
    }
}

/// A path as an operator types it, perhaps with a `?query`, as a URL's request target: the
/// path part escaped by [`encode_path`], the query kept.
pub fn encode_target(path: &str) -> String {
    match path.split_once('?') {
        Some((p, q)) => format!("{}?{q}", encode_path(p)),
        None => encode_path(path),
    }
}

/// Percent-encodes what may not stand in a URL path as it is: controls, space, non-ASCII
/// bytes, and `"`, `#`, `<`, `>`, `?`, `[`, `\\`, `]`, `^`, `` ` ``, `{`, `|`, `}`. A `%` is
/// kept (the path may already be escaped: `/my%20mix/` and `/my mix/` give the same URL), and
/// so is everything RFC 3986 allows in a path segment, so the path segd decodes is the one given.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for &b in path.as_bytes() {
        if b.is_ascii_graphic() && !b"\"#<>?[\\]^`{|}".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a token for a query value or a path segment: everything but unreserved
/// characters and `~ * ! ( ) ,` is escaped (`=`, `/`, `%`, `&` included).
pub fn encode_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len() + 16);
    for &b in token.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'*' | b'!' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_token_split() {
        let s = split_path_token(
            "__token__",
            "/__token__=exp%3D1~acl%3D%2Fvod%2F*~hmac%3Dab/vod/t1/a.ts",
        );
        assert_eq!(s.path, "/vod/t1/a.ts");
        assert_eq!(s.token.as_deref(), Some("exp=1~acl=/vod/*~hmac=ab"));
        // '=' after the name may be encoded too.
        let s = split_path_token("__token__", "/__token__%3Dexp=1~hmac=ab/x.ts");
        assert_eq!(s.token.as_deref(), Some("exp=1~hmac=ab"));
        let s = split_path_token("__token__", "/vod/__token__=x/a.ts");
        assert!(s.token.is_none(), "only the first segment");
        assert_eq!(s.path, "/vod/__token__=x/a.ts");
        let s = split_path_token("__token__", "/__token__x=1/a.ts");
        assert!(s.token.is_none());
    }

    #[test]
    fn query_and_encoding() {
        assert_eq!(
            query_param("a=1&__token__=x%3Dy&b", "__token__"),
            Some("x%3Dy")
        );
        assert_eq!(query_param("b", "__token__"), None);
        assert_eq!(
            encode_token("exp=1~acl=/a/*!/b/*~hmac=ff"),
            "exp%3D1~acl%3D%2Fa%2F*!%2Fb%2F*~hmac%3Dff"
        );
    }

    #[test]
    fn path_encoding_for_printed_urls() {
        assert_eq!(encode_path("/vod/t1/a.ts"), "/vod/t1/a.ts");
        assert_eq!(encode_path("/vod/my mix/a.ts"), "/vod/my%20mix/a.ts");
        assert_eq!(encode_path("/vod/my%20mix/a.ts"), "/vod/my%20mix/a.ts");
        assert_eq!(
            encode_path("/v/é?#[]/~!$&'()*+,;=:@"),
            "/v/%C3%A9%3F%23%5B%5D/~!$&'()*+,;=:@"
        );
        let (q, c, p) = ready_urls("http://h", "__token__", "exp=1~hmac=ff", "/a b/x.ts");
        assert_eq!(q, "http://h/a%20b/x.ts?__token__=exp%3D1~hmac%3Dff");
        assert_eq!(c, "__token__=exp=1~hmac=ff");
        assert_eq!(p, "http://h/__token__=exp%3D1~hmac%3Dff/a%20b/x.ts");
        let (_, c, _) = ready_urls("http://h", "t", "exp=1~data=x=1;y=2~hmac=ff", "/a");
        assert_eq!(c, "t=exp%3D1~data%3Dx%3D1%3By%3D2~hmac%3Dff");
        let (_, c, _) = ready_urls("http://h", "t", "exp=1~data=it's~hmac=ff", "/a");
        assert_eq!(c, "t=exp%3D1~data%3Dit%27s~hmac%3Dff");
        let (q, _, _) = ready_urls("http://h", "t", "x", "/a b.m3u8?_HLS_msn=3");
        assert_eq!(q, "http://h/a%20b.m3u8?_HLS_msn=3&t=x");
    }
}
