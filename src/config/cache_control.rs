//! `[cache_control]`: the `Cache-Control` header per object class (segments, playlists, keys)
//! and for live paths, validated as header values when the config is parsed.

use super::fields::Section;

#[derive(Debug, Clone)]
pub struct CacheControlConfig {
    pub segments: String,
    pub playlists: String,
    pub keys: String,
    pub live_prefixes: Vec<String>,
    pub live: String,
    pub live_segments: String,
}

pub(super) const CACHE_CONTROL_KEYS: &[&str] = &[
    "segments",
    "playlists",
    "keys",
    "live_prefixes",
    "live",
    "live_segments",
];

fn header_value(s: &Section, key: &str, default: &str) -> String {
    let allowed = "a Cache-Control header value, e.g. \"public, max-age=60\"";
    match s.string(key, allowed) {
        None => default.to_string(),
        Some(v) if !v.is_empty() && http::HeaderValue::from_str(&v).is_ok() => v,
        Some(v) => {
            s.error(key, format!("{v:?} is not a valid header value"), allowed);
            default.to_string()
        }
    }
}

pub(super) fn parse_cache_control(s: &Section) -> CacheControlConfig {
    let live = header_value(s, "live", "public, max-age=1");
    let prefix_allowed = "URL path prefixes starting with \"/\", e.g. \"/live/\"";
    let live_prefixes = s
        .string_list("live_prefixes", prefix_allowed)
        .unwrap_or_else(|| vec!["/live/".into()]);
    for (i, p) in live_prefixes.iter().enumerate() {
        if !p.starts_with('/') {
            s.error(
                &format!("live_prefixes[{i}]"),
                format!("{p:?} does not start with \"/\""),
                prefix_allowed,
            );
        }
    }
    s.finish();
    CacheControlConfig {
        segments: header_value(s, "segments", "public, max-age=31536000, immutable"),
        playlists: header_value(s, "playlists", "public, max-age=10"),
        keys: header_value(s, "keys", "private, no-store"),
        live_segments: header_value(s, "live_segments", &live),
        live,
        live_prefixes,
    }
}
