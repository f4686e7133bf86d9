//! `[types]`: which file extensions are served and with what `Content-Type`: the built-in media
//! types, extended or overridden by the config, as header values ready to send.

use http::HeaderValue;

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
    // Packed audio of HLS (RFC 8216 §3.4) besides AAC and MP3: AC-3 (RFC 4184), E-AC-3 (RFC 4598).
    ("ac3", "audio/ac3"),
    ("ec3", "audio/eac3"),
    // CMAF tracks as CTA-5001 names them (audio, video, text), as some packagers write them.
    ("cmfa", "audio/mp4"),
    ("cmfv", "video/mp4"),
    ("cmft", "application/mp4"),
    ("m4v", "video/mp4"),
    ("vtt", "text/vtt"),
    ("webvtt", "text/vtt"),
    ("ttml", "application/ttml+xml"),
    ("key", "application/octet-stream"),
];

/// The served extensions and their content types: [`BUILTIN_TYPES`], then each `[types]` entry
/// (replacing a built-in with the same extension, else added). Each content type is checked as a
/// header value here, so serving never falls back on a default type.
pub(super) fn parse_types(top: &Section) -> Vec<(String, HeaderValue)> {
    let mut out: Vec<(String, HeaderValue)> = BUILTIN_TYPES
        .iter()
        .map(|(ext, t)| (ext.to_string(), HeaderValue::from_static(t)))
        .collect();
    let allowed =
        "extension = \"content/type\" pairs (no control characters), e.g. flac = \"audio/flac\"";
    let table = match top.raw("types") {
        None => return out,
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            top.error("types", "expected a table", allowed);
            return out;
        }
    };
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
        let value = v
            .as_str()
            .filter(|t| t.contains('/'))
            .and_then(|t| HeaderValue::from_str(t).ok());
        match value {
            Some(h) => match out.iter_mut().find(|(e, _)| e == ext) {
                Some(builtin) => builtin.1 = h,
                None => out.push((ext.clone(), h)),
            },
            None => top
                .ctx()
                .error(&key, format!("{v} is not a content type"), allowed),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::HeaderValue;

    use crate::config::{Config, ConfigErrors, BUILTIN_TYPES};

    fn parse(types: &str) -> Result<Config, ConfigErrors> {
        Config::parse(
            &format!("[[volumes]]\npath = \"v\"\n[types]\n{types}"),
            Path::new("/etc/segd/t.toml"),
        )
    }

    #[test]
    fn builtins_extended_and_overridden() {
        let cfg =
            parse("flac = \"audio/flac\"\nvtt = \"text/vtt; charset=utf-8\"\n").expect("valid");
        for (ext, t) in BUILTIN_TYPES.iter().filter(|(e, _)| *e != "vtt") {
            assert_eq!(cfg.content_type(ext), Some(&HeaderValue::from_static(t)));
        }
        assert_eq!(
            cfg.content_type("flac"),
            Some(&HeaderValue::from_static("audio/flac"))
        );
        assert_eq!(
            cfg.content_type("vtt").and_then(|v| v.to_str().ok()),
            Some("text/vtt; charset=utf-8")
        );
        assert_eq!(cfg.content_type("html"), None);
        assert_eq!(cfg.types.len(), BUILTIN_TYPES.len() + 1);
        let plain = parse("").expect("valid");
        assert_eq!(plain.types.len(), BUILTIN_TYPES.len());
    }

    #[test]
    fn invalid_content_type_names_file_key_and_allowed() {
        for (ext, value) in [
            ("flac", "\"audio/flac\\n\""),
            ("opus", "\"audio/ogg\\u0000codecs=opus\""),
            ("ogg", "\"audio\""),
            ("wav", "42"),
        ] {
            let errs = parse(&format!("{ext} = {value}\n")).expect_err(ext);
            assert_eq!(errs.len(), 1, "{errs}");
            let e = &errs.0[0];
            assert_eq!(e.file, Path::new("/etc/segd/t.toml"));
            assert_eq!(e.key, format!("types.{ext}"));
            assert!(e.problem.contains("is not a content type"), "{e}");
            assert!(e.allowed.contains("no control characters"), "{e}");
            let line = e.to_string();
            assert!(
                line.starts_with(&format!("/etc/segd/t.toml:4: types.{ext}: ")),
                "{line}"
            );
            assert!(
                line.contains("(allowed: extension = \"content/type\" pairs"),
                "{line}"
            );
        }
    }
}
