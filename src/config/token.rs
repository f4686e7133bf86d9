//! `[token]` and `[[token.keys]]`: CDN token verification (EdgeAuth-style HMAC), the signing
//! keys with their validity windows, origin auth, and playlist token handling.
//!
//! Also the readers for header names and key timestamps (Unix seconds or RFC 3339 UTC).

use std::path::Path;
use std::time::Duration;

use super::fields::Section;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    Sha256,
    Sha1,
    Md5,
}

impl TokenAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlgorithm::Sha256 => "sha256",
            TokenAlgorithm::Sha1 => "sha1",
            TokenAlgorithm::Md5 => "md5",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaylistTokens {
    Off,
    Forward,
    Mint,
}

#[derive(Debug, Clone)]
pub struct TokenKey {
    pub id: String,
    /// The hex-decoded secret: the HMAC key.
    pub secret: Vec<u8>,
    /// Unix seconds; the key is not used before this.
    pub not_before: Option<u64>,
    /// Unix seconds; the key is not used after this.
    pub not_after: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    pub algorithm: TokenAlgorithm,
    pub protect: Vec<String>,
    pub leeway: Duration,
    pub keys: Vec<TokenKey>,
    pub salt: Option<String>,
    /// Tokens are minted with early escaping (Akamai's "Escape token inputs", the reference
    /// generator's `escape_early=True`): `segd sign` and playlist minting escape `ip`, `id`,
    /// `data` and the signed URL, and verification also accepts such a token whose escapes a
    /// URL's decoding undid (see `auth::edgeauth::Verifier::escape_early`).
    pub escape_early: bool,
    /// Header name (lower-case) and secret that let a CDN skip token checks.
    pub origin_auth: Option<(String, String)>,
    /// Whether an origin-authenticated request skips token checks (default true). When false,
    /// origin auth only makes `client_ip_header` trusted, and tokens are still verified.
    pub origin_auth_skips_tokens: bool,
    /// Header (lower-case) carrying the real client address, trusted only with origin auth.
    pub client_ip_header: Option<String>,
    /// Trusted proxies between the CDN and segd that append their peer's address to
    /// `client_ip_header` (HAProxy's `option forwardfor`, nginx's `$proxy_add_x_forwarded_for`).
    /// The client is the entry that many places left of the last one: the address the CDN
    /// itself appended. Entries further left came from the client and are never trusted.
    pub client_ip_proxies: usize,
    pub playlist_tokens: PlaylistTokens,
    /// Lifetime of tokens minted into playlists (`playlist_tokens = "mint"`).
    pub mint_ttl: Duration,
}

pub(super) const TOKEN_KEYS: &[&str] = &[
    "name",
    "algorithm",
    "protect",
    "leeway",
    "keys",
    "salt",
    "escape_early",
    "origin_auth_header",
    "origin_auth_secret",
    "origin_auth_secret_file",
    "origin_auth_skips_tokens",
    "client_ip_header",
    "client_ip_proxies",
    "playlist_tokens",
    "mint_ttl",
];

const KEY_KEYS: &[&str] = &["id", "secret", "secret_file", "not_before", "not_after"];

/// Header names are checked here so a typo cannot silently disable origin auth.
fn header_name(s: &Section, key: &str) -> Option<String> {
    let allowed = "an HTTP header name such as \"X-Origin-Auth\"";
    let v = s.string(key, allowed)?;
    match http::HeaderName::from_bytes(v.as_bytes()) {
        Ok(h) => Some(h.as_str().to_string()),
        Err(_) => {
            s.error(key, format!("{v:?} is not a valid header name"), allowed);
            None
        }
    }
}

/// Unix seconds as an integer, or RFC 3339 UTC (`2026-01-01T00:00:00Z`).
fn timestamp(s: &Section, key: &str) -> Option<u64> {
    let allowed = "Unix seconds, or an RFC 3339 UTC time such as 2026-01-01T00:00:00Z";
    match s.raw(key)? {
        toml::Value::Integer(i) if *i >= 0 => Some(*i as u64),
        toml::Value::Datetime(d) => match (d.date, d.time, d.offset) {
            (Some(date), Some(time), Some(toml::value::Offset::Z)) => Some(
                unix_from_civil(
                    i64::from(date.year),
                    u32::from(date.month),
                    u32::from(date.day),
                ) as u64
                    + u64::from(time.hour) * 3600
                    + u64::from(time.minute) * 60
                    + u64::from(time.second.unwrap_or(0)),
            ),
            _ => {
                s.error(key, format!("{d} is not a UTC timestamp"), allowed);
                None
            }
        },
        other => {
            s.error(key, format!("{other} is not a timestamp"), allowed);
            None
        }
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date, times 86400.
fn unix_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86400
}

pub(super) fn parse_token(s: &Section, base: &Path) -> TokenConfig {
    let name = s
        .string("name", "a query/cookie name such as \"__token__\"")
        .unwrap_or_else(|| "__token__".into());
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !name_ok {
        s.error(
            "name",
            format!("{name:?} is not a usable token name"),
            "letters, digits, '_', '-', '.'",
        );
    }
    let alg_allowed = "sha256, sha1, md5";
    let algorithm = match s.string("algorithm", alg_allowed).as_deref() {
        None | Some("sha256") => TokenAlgorithm::Sha256,
        Some("sha1") => TokenAlgorithm::Sha1,
        Some("md5") => TokenAlgorithm::Md5,
        Some(other) => {
            s.error(
                "algorithm",
                format!("unknown algorithm {other:?}"),
                alg_allowed,
            );
            TokenAlgorithm::Sha256
        }
    };
    let prefix_allowed = "URL path prefixes starting with \"/\", e.g. \"/vod/\"";
    let protect = s.string_list("protect", prefix_allowed).unwrap_or_default();
    for (i, p) in protect.iter().enumerate() {
        if !p.starts_with('/') {
            s.error(
                &format!("protect[{i}]"),
                format!("{p:?} does not start with \"/\""),
                prefix_allowed,
            );
        }
    }
    let leeway = s.duration(
        "leeway",
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let keys = parse_keys(s, base);
    if !protect.is_empty() && keys.is_empty() && s.raw("keys").is_none() {
        s.error(
            "keys",
            "token.protect is set but no [[token.keys]] is configured, so nothing could be served there",
            "at least one [[token.keys]] table with id and secret",
        );
    }
    let salt = s.string("salt", "a string appended to the signed data as ~salt=…");
    let escape_early = s.bool("escape_early", false);
    let origin_header = header_name(s, "origin_auth_header");
    let origin_secret = s.secret(
        "origin_auth_secret",
        "origin_auth_secret_file",
        base,
        "a shared secret string",
    );
    // A short secret is reported whatever the header (every problem at once).
    let origin_secret = origin_secret.filter(|v| {
        if v.len() < 16 {
            s.error(
                "origin_auth_secret",
                "shorter than 16 characters",
                "a secret of 16+ characters",
            );
        }
        v.len() >= 16
    });
    let origin_auth = match (origin_header, origin_secret) {
        (Some(h), Some(v)) => Some((h, v)),
        (Some(_), None) if s.has_secret("origin_auth_secret", "origin_auth_secret_file") => None,
        (Some(_), None) => {
            s.error(
                "origin_auth_secret",
                "missing while origin_auth_header is set",
                "a secret of 16+ characters",
            );
            None
        }
        // (A secret that is there but unusable was reported above; the header's absence too.)
        (None, _)
            if s.raw("origin_auth_header").is_none()
                && s.has_secret("origin_auth_secret", "origin_auth_secret_file") =>
        {
            s.error(
                "origin_auth_header",
                "missing while origin_auth_secret is set",
                "an HTTP header name",
            );
            None
        }
        _ => None,
    };
    let origin_auth_skips_tokens = s.bool("origin_auth_skips_tokens", true);
    let client_ip_header = header_name(s, "client_ip_header");
    let client_ip_proxies = s.int(
        "client_ip_proxies",
        0,
        0,
        8,
        "0 to 8: proxies between the CDN and segd that append to client_ip_header",
    ) as usize;
    let pt_allowed = "forward, mint, off";
    let playlist_tokens = match s.string("playlist_tokens", pt_allowed).as_deref() {
        None | Some("forward") => PlaylistTokens::Forward,
        Some("mint") => PlaylistTokens::Mint,
        Some("off") => PlaylistTokens::Off,
        Some(other) => {
            s.error(
                "playlist_tokens",
                format!("unknown mode {other:?}"),
                pt_allowed,
            );
            PlaylistTokens::Forward
        }
    };
    let mint_ttl = s.duration(
        "mint_ttl",
        Duration::from_secs(6 * 3600),
        Duration::from_secs(1),
        Duration::from_secs(7 * 86400),
    );
    s.finish();
    TokenConfig {
        name,
        algorithm,
        protect,
        leeway,
        keys,
        salt,
        escape_early,
        origin_auth,
        origin_auth_skips_tokens,
        client_ip_header,
        client_ip_proxies,
        playlist_tokens,
        mint_ttl,
    }
}

/// A `keys` array of tables (`[[token.keys]]`, `[[ingest.keys]]`): id, hex secret, validity.
pub(super) fn parse_keys(s: &Section, base: &Path) -> Vec<TokenKey> {
    let mut keys: Vec<TokenKey> = Vec::new();
    for k in s.tables("keys", KEY_KEYS) {
        let id = k.string("id", "a short key identifier");
        if id.is_none() && k.raw("id").is_none() {
            k.error("id", "missing", "a short key identifier");
        }
        // The limit is 8 bytes (16 digits); the text must say what is checked.
        let secret_allowed = "an even number of hex digits, at least 16 (8 bytes); 32 or more is recommended (CDNs issue 28+)";
        let secret = match k.secret("secret", "secret_file", base, secret_allowed) {
            Some(hexs) => match hex::decode(hexs.trim()) {
                Ok(b) if b.len() >= 8 => Some(b),
                Ok(_) => {
                    k.error("secret", "secret is too short", secret_allowed);
                    None
                }
                Err(e) => {
                    k.error("secret", format!("not hex: {e}"), secret_allowed);
                    None
                }
            },
            None => {
                if !k.has_secret("secret", "secret_file") {
                    k.error(
                        "secret",
                        "missing",
                        format!("{secret_allowed}; or secret_file"),
                    );
                }
                None
            }
        };
        let not_before = timestamp(&k, "not_before");
        let not_after = timestamp(&k, "not_after");
        if let (Some(a), Some(b)) = (not_before, not_after) {
            if b <= a {
                k.error(
                    "not_after",
                    "is not after not_before",
                    "a time later than not_before",
                );
            }
        }
        if let (Some(id), Some(secret)) = (id, secret) {
            if keys.iter().any(|o| o.id == id) {
                k.error(
                    "id",
                    format!("key id {id:?} is used twice"),
                    "unique key ids",
                );
            }
            keys.push(TokenKey {
                id,
                secret,
                not_before,
                not_after,
            });
        }
        k.finish();
    }
    keys
}
