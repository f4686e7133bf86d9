//! `[cache_control]`: the `Cache-Control` header per object class (segments, playlists, keys)
//! and for live paths. Each value is parsed into a [`HeaderValue`] here, so a value that is not
//! a valid header is a config error rather than a fallback at request time.

use http::HeaderValue;

use super::fields::Section;

/// `Cache-Control` values, ready to send.
#[derive(Debug, Clone)]
pub struct CacheControlConfig {
    /// Segments outside the live prefixes.
    pub segments: HeaderValue,
    /// Playlists outside the live prefixes.
    pub playlists: HeaderValue,
    /// Key files, live or not.
    pub keys: HeaderValue,
    /// Path prefixes served as live: their playlists get `live`, their segments `live_segments`.
    pub live_prefixes: Vec<String>,
    /// Playlists under a live prefix.
    pub live: HeaderValue,
    /// Segments under a live prefix (defaults to `live`).
    pub live_segments: HeaderValue,
}

pub(super) const CACHE_CONTROL_KEYS: &[&str] = &[
    "segments",
    "playlists",
    "keys",
    "live_prefixes",
    "live",
    "live_segments",
];

/// A non-empty header value: no control characters other than tab (what `HeaderValue::from_str`
/// accepts).
fn header_value(s: &Section, key: &str, default: HeaderValue) -> HeaderValue {
    let allowed =
        "a Cache-Control header value (not empty, no control characters), e.g. \"public, max-age=60\"";
    match s.string(key, allowed) {
        None => default,
        Some(v) => match HeaderValue::from_str(&v) {
            Ok(h) if !v.is_empty() => h,
            _ => {
                s.error(key, format!("{v:?} is not a valid header value"), allowed);
                default
            }
        },
    }
}

pub(super) fn parse_cache_control(s: &Section) -> CacheControlConfig {
    let live = header_value(s, "live", HeaderValue::from_static("public, max-age=1"));
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
        segments: header_value(
            s,
            "segments",
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ),
        playlists: header_value(
            s,
            "playlists",
            HeaderValue::from_static("public, max-age=10"),
        ),
        keys: header_value(s, "keys", HeaderValue::from_static("private, no-store")),
        live_segments: header_value(s, "live_segments", live.clone()),
        live,
        live_prefixes,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::HeaderValue;

    use crate::config::Config;

    const VOLUME: &str = "[[volumes]]\npath = \"v\"\n";

    fn parse(section: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(
            &format!("{VOLUME}[cache_control]\n{section}"),
            Path::new("/etc/segd/t.toml"),
        )
    }

    #[test]
    fn values_are_header_values() {
        let cfg = parse("segments = \"public, max-age=60\"\nlive = \"no-cache\"\n").expect("valid");
        let cc = &cfg.cache_control;
        assert_eq!(cc.segments, HeaderValue::from_static("public, max-age=60"));
        assert_eq!(cc.playlists, HeaderValue::from_static("public, max-age=10"));
        assert_eq!(cc.keys, HeaderValue::from_static("private, no-store"));
        assert_eq!(cc.live, HeaderValue::from_static("no-cache"));
        // live_segments defaults to live.
        assert_eq!(cc.live_segments, HeaderValue::from_static("no-cache"));
        assert_eq!(cc.live_prefixes, vec!["/live/".to_string()]);
    }

    #[test]
    fn invalid_header_value_names_file_key_and_allowed() {
        for (key, value) in [
            ("segments", "public, max-age=60\\n"),
            ("playlists", "max-age=10\\u0001"),
            ("keys", ""),
            ("live", "no-cache\\u0000"),
            ("live_segments", "max-age=1\\u007f"),
        ] {
            let errs = parse(&format!("{key} = \"{value}\"\n")).expect_err(key);
            assert_eq!(errs.len(), 1, "{errs}");
            let e = &errs.0[0];
            assert_eq!(e.file, Path::new("/etc/segd/t.toml"));
            assert_eq!(e.key, format!("cache_control.{key}"));
            assert!(e.problem.contains("not a valid header value"), "{e}");
            assert!(e.allowed.contains("Cache-Control header value"), "{e}");
            assert!(e.allowed.contains("no control characters"), "{e}");
            let line = e.to_string();
            assert!(
                line.starts_with(&format!("/etc/segd/t.toml: cache_control.{key}: ")),
                "{line}"
            );
            assert!(
                line.contains("(allowed: a Cache-Control header value"),
                "{line}"
            );
        }
    }
}
