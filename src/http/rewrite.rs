//! Playlists rewritten for tokens: the query parameter appended to every relative URI, per
//! `[token] playlist_tokens` — `forward` repeats the request's token (URL-bound tokens cannot be
//! forwarded, so they are minted instead); `mint` signs a fresh ACL token for the playlist's
//! directory, which keeps the presented token's limits (start, expiry, `ip`, `id`, `data`).

use bytes::Bytes;
use http::HeaderValue;

use super::handler::Request;
use super::refusal::Refusal;
use crate::auth;
use crate::config::PlaylistTokens;
use crate::playlist;
use crate::policy::Policy;
use crate::store::Object;
use crate::volumes::{self, RelPath};

/// Largest playlist segd rewrites (bigger ones are served as they are, whole, with a warning).
const MAX_REWRITE_BYTES: u64 = 4 << 20;

/// What a playlist's relative URIs get: a query parameter carrying a token, or (a token that
/// came in a path segment) that segment before each root-relative URI.
pub struct Param {
    /// `name=token`, appended to each URI (or put before each root-relative one as a path
    /// segment, `in_path`).
    pub query: String,
    /// Unix seconds when the token in it expires.
    pub expires: u64,
    /// The token came in a path segment: only root-relative URIs need it.
    pub in_path: bool,
}

impl Param {
    /// What [`playlist::rewrite`] adds.
    pub fn add(&self) -> playlist::Add<'_> {
        if self.in_path {
            playlist::Add::PathSegment(&self.query)
        } else {
            playlist::Add::Query(&self.query)
        }
    }

    /// `body` rewritten, or `None` when that changes nothing (a path segment's playlist with
    /// no root-relative URI: served as it is, shared as any other).
    pub fn rewrite(&self, kind: playlist::Kind, body: &[u8]) -> Option<Vec<u8>> {
        let out = playlist::rewrite(kind, body, self.add());
        (!self.in_path || out != body).then_some(out)
    }

    /// The `Cache-Control` of a playlist rewritten with this parameter, given the one it goes
    /// out with unrewritten (`shared`: its upstream's, or segd's own for the class) and its
    /// `Age`: `private` (one viewer's token: no CDN keeps it), for what is left of the
    /// lifetime `shared` gives (the edge's stored copy's, so never longer than the upstream
    /// allows), and never past the token's expiry, when its URIs stop working
    /// ([`crate::store::private_cache_control`]).
    pub fn cache_control(&self, shared: &HeaderValue, age: u64, now: u64) -> HeaderValue {
        crate::store::private_cache_control(shared, age, self.expires.saturating_sub(now))
    }
}

/// The query parameter to append to a playlist's URIs, if any.
pub fn param(
    policy: &Policy,
    req: &Request<'_>,
    canonical: &str,
    grant: &auth::Grant,
    source: auth::Source,
    now: u64,
) -> Option<Param> {
    let cfg = &policy.config.token;
    let name = policy.auth.name();
    match cfg.playlist_tokens {
        PlaylistTokens::Off => None,
        // The token segment, forwarded whatever the mode: the playlist's path-relative URIs
        // carry it already (a URL token, bound to the playlist's URL, opens nothing else).
        _ if source == auth::Source::Path => {
            if grant.is_url_token {
                return None;
            }
            let segment = req.path.strip_prefix('/')?.split('/').next()?;
            let safe = segment
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"'<>&#\\?".contains(&b));
            let query = if safe {
                segment.to_owned()
            } else {
                let decoded = volumes::path::percent_decode(segment.as_bytes())?;
                let decoded = String::from_utf8_lossy(&decoded);
                let token = decoded.strip_prefix(name)?.strip_prefix('=')?;
                format!("{name}={}", auth::encode_token(token))
            };
            Some(Param {
                query,
                expires: grant.exp,
                in_path: true,
            })
        }
        PlaylistTokens::Forward if !grant.is_url_token => {
            let raw = req.query.and_then(|q| auth::query_param(q, name))?;
            let safe = raw
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"'<>&#\\".contains(&b));
            let query = if safe {
                format!("{name}={raw}")
            } else {
                let decoded = volumes::path::percent_decode(raw.as_bytes())?;
                format!(
                    "{name}={}",
                    auth::encode_token(&String::from_utf8_lossy(&decoded))
                )
            };
            Some(Param {
                query,
                expires: grant.exp,
                in_path: false,
            })
        }
        PlaylistTokens::Forward | PlaylistTokens::Mint => {
            let dir = &canonical[..canonical.rfind('/').unwrap_or(0)];
            let acl = format!("{dir}/*");
            // Whole minutes, so consecutive requests get the same playlist (and ETag). The new
            // token grants no more than the one presented, beyond reaching the directory: not
            // before its start, not after its expiry, bound to its client address, with its
            // session id and payload (a token for one playlist, bound to a viewer's address
            // for a minute, must not come back as a token anyone may use for hours).
            let start = (now - now % 60).max(grant.st.unwrap_or(0));
            let expires = (start + cfg.mint_ttl.as_secs()).min(grant.exp);
            let spec = auth::edgeauth::SignSpec {
                acl: Some(&acl),
                start: Some(start),
                exp: expires,
                ip: grant.ip.as_deref(),
                id: grant.id.as_deref(),
                data: grant.data.as_deref(),
                as_sent: true,
                ..Default::default()
            };
            let (_, token) = policy.auth.sign(&spec, Some(&grant.key_id), now)?;
            Some(Param {
                query: format!("{name}={}", auth::encode_token(&token)),
                expires,
                in_path: false,
            })
        }
    }
}

/// A rewritten playlist.
pub struct Rewritten {
    pub body: Bytes,
    /// Weak: depends on the object and on the appended parameter.
    pub etag: String,
    pub content_type: HeaderValue,
}

/// Rewritten playlists, shared: every request for one version of a playlist with one token
/// gets the same bytes, made once. Made per request, a client asking for a large playlist on
/// many HTTP/2 streams and reading none of them held a copy per stream (1.5 GB for 128 streams
/// of a 3.5 MB playlist); concurrent requests now wait for the one copy being made. Kept up to
/// [`REWRITES_MAX_BYTES`], a minute unused at most.
pub struct Rewrites {
    /// `None`: the rewrite changes nothing (served as it is).
    cache: moka::future::Cache<String, Option<Bytes>>,
}

/// What the shared rewritten playlists may hold.
const REWRITES_MAX_BYTES: u64 = 64 << 20;

impl Rewrites {
    pub fn new() -> Rewrites {
        Rewrites {
            cache: moka::future::Cache::builder()
                .max_capacity(REWRITES_MAX_BYTES)
                .weigher(|key: &String, body: &Option<Bytes>| {
                    let len = key.len() + body.as_ref().map_or(0, Bytes::len);
                    u32::try_from(len).unwrap_or(u32::MAX)
                })
                .time_to_idle(std::time::Duration::from_secs(60))
                .build(),
        }
    }
}

impl Default for Rewrites {
    fn default() -> Rewrites {
        Rewrites::new()
    }
}

/// Why no rewritten playlist was made.
#[derive(Debug)]
enum NotMade {
    TooLarge,
    Refused(Refusal),
}

/// Reads the playlist and appends `param` to its relative URIs (or takes the copy `rewrites`
/// holds); `None` when it is too large to rewrite, or the rewrite would change nothing (the
/// caller serves it as it is).
pub async fn playlist(
    policy: &Policy,
    rewrites: &Rewrites,
    rel: &RelPath,
    object: &Object,
    param: &Param,
) -> Result<Option<Rewritten>, Refusal> {
    let ext = rel.extension().map(str::to_ascii_lowercase);
    let kind = ext
        .as_deref()
        .and_then(playlist::Kind::of)
        .ok_or(Refusal::Internal)?;
    // One version of the object (its validators and length) with one parameter, in one place
    // (the same token text goes in a query or in a path segment: different rewrites).
    let key = format!(
        "{}\0{}\0{}\0{:?}\0{}\0{}",
        rel.as_str(),
        String::from_utf8_lossy(object.etag.as_bytes()),
        String::from_utf8_lossy(object.last_modified.as_bytes()),
        object.len,
        param.query,
        if param.in_path { "path" } else { "query" },
    );
    let made = rewrites
        .cache
        .try_get_with(key, async {
            // A pull fill of a chunked body has no length until its last chunk: it is read as
            // it comes, one byte past the limit at most, which is enough to tell it is too
            // large.
            let limit = match object.len {
                Some(len) if len > MAX_REWRITE_BYTES => return Err(NotMade::TooLarge),
                Some(len) => len,
                None => MAX_REWRITE_BYTES + 1,
            };
            let original = object
                .read_prefix(limit as usize)
                .await
                .map_err(|m| NotMade::Refused(m.into()))?;
            if original.len() as u64 > MAX_REWRITE_BYTES {
                return Err(NotMade::TooLarge);
            }
            Ok(param.rewrite(kind, &original).map(Bytes::from))
        })
        .await;
    let body = match made {
        Ok(Some(body)) => body,
        // Nothing to add (a path segment's playlist without root-relative URIs).
        Ok(None) => return Ok(None),
        Err(e) => match &*e {
            NotMade::TooLarge => {
                tracing::warn!(
                    bytes = object.len,
                    "playlist too large to rewrite; served without tokens"
                );
                return Ok(None);
            }
            NotMade::Refused(r) => return Err(*r),
        },
    };
    let strong = object.etag.to_str().unwrap_or_default();
    let etag = format!(
        "W/\"{}-{:08x}\"",
        strong.trim_matches('"'),
        volumes::fnv1a64(format!("{}{}", param.in_path, param.query).as_bytes()) as u32
    );
    let content_type = ext
        .as_deref()
        .and_then(|e| policy.config.content_type(e))
        .cloned()
        .ok_or(Refusal::Internal)?;
    Ok(Some(Rewritten {
        body,
        etag,
        content_type,
    }))
}
