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
        "a Cache-Control header value: directives separated by commas, numbers of seconds where a directive takes them, no control characters, e.g. \"public, max-age=60\"";
    match s.string(key, allowed) {
        None => default,
        Some(v) => match HeaderValue::from_str(&v) {
            Ok(h) if !v.is_empty() => match directives(&v) {
                Ok(()) => h,
                Err(why) => {
                    s.error(key, format!("{v:?}: {why}"), allowed);
                    default
                }
            },
            _ => {
                s.error(key, format!("{v:?} is not a valid header value"), allowed);
                default
            }
        },
    }
}

/// Directives that take a number of seconds (RFC 9111 §1.2.2 delta-seconds; RFC 5861).
const SECONDS: &[&str] = &[
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Checks the syntax of a Cache-Control value (RFC 9111 §5.2): a comma-separated list of
/// `token [ "=" ( token / quoted-string ) ]`, and a number for the directives taking seconds.
fn directives(v: &str) -> Result<(), String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let mut rest = v;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Ok(());
        }
        let name_len = rest.find(|c: char| !is_tchar(c)).unwrap_or(rest.len());
        if name_len == 0 {
            return Err(format!("{rest:?} does not start with a directive name"));
        }
        let name = &rest[..name_len];
        rest = rest[name_len..].trim_start_matches([' ', '\t']);
        let arg = if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start_matches([' ', '\t']);
            if let Some(q) = after.strip_prefix('"') {
                // A quoted string: up to the closing quote, `\` escaping the next character.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in q.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or_else(|| format!("{name}: unterminated quoted string"))?;
                rest = &q[end + 1..];
                Some(&q[..end])
            } else {
                let len = after.find(|c: char| !is_tchar(c)).unwrap_or(after.len());
                if len == 0 {
                    return Err(format!("{name}= has no value"));
                }
                rest = &after[len..];
                Some(&after[..len])
            }
        } else {
            None
        };
        if SECONDS.iter().any(|d| d.eq_ignore_ascii_case(name))
            && !arg.is_some_and(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("{name} takes a number of seconds, e.g. {name}=60"));
        }
        rest = rest.trim_start_matches([' ', '\t']);
        if !rest.is_empty() && !rest.starts_with(',') {
            return Err(format!("expected a comma before {rest:?}"));
        }
    }
}

pub(super) fn parse_cache_control(s: &Section) -> CacheControlConfig {
    // `stale-while-revalidate=0`: a CDN whose default is to serve what expired while it
    // refreshes (Varnish's grace, 10 s) would hand players a playlist a whole poll behind.
    let live = header_value(
        s,
        "live",
        HeaderValue::from_static("public, max-age=1, stale-while-revalidate=0"),
    );
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
                line.starts_with(&format!(
                    "/etc/segd/t.toml:{}: cache_control.{key}: ",
                    VOLUME.lines().count() + 2
                )),
                "{line}"
            );
            assert!(
                line.contains("(allowed: a Cache-Control header value"),
                "{line}"
            );
        }
    }
}

#[cfg(test)]
mod directive_tests {
    use super::directives;

    #[test]
    fn cache_control_syntax() {
        for ok in [
            "public, max-age=31536000, immutable",
            "private, no-store",
            "public, max-age=1, stale-while-revalidate=2",
            "no-cache=\"Set-Cookie, X-A\", s-maxage=5",
            "max-age=\"60\"",
            "  public ,max-age=0,",
        ] {
            assert_eq!(directives(ok), Ok(()), "{ok}");
        }
        for bad in [
            "max-age=abc",
            "max-age",
            "public, s-maxage=-1",
            "max-age=1 2",
            "public; max-age=1",
            "no-cache=\"x",
            "=5",
            "max-age=",
        ] {
            assert!(directives(bad).is_err(), "{bad}");
        }
    }
}
