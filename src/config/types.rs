//! `[types]`: which file extensions are served and with what `Content-Type`: the built-in media
//! types, extended or overridden by the config.

use super::fields::Section;

/// Built-in served extensions. Anything else is 404 unless added under `[types]`.
pub const BUILTIN_TYPES: &[(&str, &str)] = &[
    ("m3u8", "application/vnd.apple.mpegurl"),
    ("mpd", "application/dash+xml"),
    ("ts", "video/mp2t"),
    ("m4s", "video/iso.segment"),
    ("mp4", "video/mp4"),
    ("m4a", "audio/mp4"),
    ("aac", "audio/aac"),
    ("mp3", "audio/mpeg"),
    ("vtt", "text/vtt"),
    ("key", "application/octet-stream"),
];

pub(super) fn parse_types(top: &Section) -> Vec<(String, String)> {
    let allowed = "extension = \"content/type\" pairs, e.g. flac = \"audio/flac\"";
    let table = match top.raw("types") {
        None => return Vec::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            top.error("types", "expected a table", allowed);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (ext, v) in table {
        let key = format!("types.{ext}");
        let ext_ok = !ext.is_empty()
            && ext.len() <= 16
            && ext
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ext_ok {
            top.ctx().error(
                &key,
                format!("{ext:?} is not a file extension"),
                "1-16 lower-case letters or digits, no dot",
            );
            continue;
        }
        match v.as_str() {
            Some(t) if t.contains('/') && http::HeaderValue::from_str(t).is_ok() => {
                out.push((ext.clone(), t.to_string()))
            }
            _ => top
                .ctx()
                .error(&key, format!("{v} is not a content type"), allowed),
        }
    }
    out
}
