//! Pure URL-path sanitising: raw request path → a relative path that cannot leave a volume root.
//!
//! No I/O here. The rules, in the order they are applied to the *raw* (still percent-encoded)
//! path, and why:
//! 1. It must start with `/` (origin-form). Anything else is malformed → 400.
//! 2. It is split on `/` *before* decoding, so an encoded `%2F` can never create a separator.
//!    An empty segment in the middle (`//`) is rejected → 400: merging slashes would give one file
//!    several URLs and several CDN cache keys. A trailing `/` names a directory → 404 (no listings).
//! 3. Each segment is percent-decoded exactly once (`%252e` stays the literal `%2e`, never `.`).
//!    Invalid escapes, invalid UTF-8 (overlong forms included), NUL and other control bytes,
//!    `/` or `\` produced by decoding, and the segments `.` and `..` → 400.
//! 4. A segment starting with `.` (dot-files: `.git`, `.htpasswd`, volume markers) → 404.
//!
//! The result joined under a root therefore only ever names a descendant of that root; the
//! volume layer adds the filesystem half (symlinks) with `openat2(RESOLVE_BENEATH)`.

use std::fmt;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not a well-formed path for segd (→ 400).
    Malformed(&'static str),
    /// Well-formed but never served: directories, dot-files (→ 404).
    NotServed(&'static str),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Malformed(why) | PathError::NotServed(why) => f.write_str(why),
        }
    }
}

/// A sanitised path relative to a volume root: `/`-separated, no empty, `.` or `..` segments,
/// no leading `/`, no dot-files, valid UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The canonical URL path: `/` and this path, as is (what prefixes are matched against).
    pub fn canonical(&self) -> String {
        let mut s = String::with_capacity(self.0.len() + 1);
        s.push('/');
        s.push_str(&self.0);
        s
    }

    /// The lower-case file extension, if the last segment has one.
    pub fn extension(&self) -> Option<&str> {
        let name = crate::text::rfind(&self.0, b'/').map_or(&*self.0, |i| &self.0[i + 1..]);
        let dot = crate::text::rfind(name, b'.')?;
        if dot == 0 {
            return None;
        }
        Some(&name[dot + 1..])
    }

    /// The "asset directory" used for volume placement: the first two segments
    /// (`vod/t1/128k/seg.ts` → `vod/t1`), or the parent directory if the path is shallower.
    pub fn asset_key(&self) -> &str {
        let mut idx = 0;
        for (n, (i, _)) in self.0.match_indices('/').enumerate() {
            idx = i;
            if n == 1 {
                break;
            }
        }
        &self.0[..idx]
    }

    /// The path as a URL path (`/` first), percent-encoding what a path segment cannot carry as
    /// is (RFC 3986 §3.3 `pchar`): [`sanitize`] of the result gives this path back. For URLs
    /// segd writes itself: an upstream's, a `Location`.
    pub fn encoded(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = String::with_capacity(self.0.len() + 1);
        out.push('/');
        // Most paths need no escape: one copy (every upload's `Location`).
        if self.0.bytes().all(|b| PCHAR[usize::from(b)]) {
            out.push_str(&self.0);
            return out;
        }
        for b in self.0.bytes() {
            if PCHAR[usize::from(b)] {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        out
    }
}

/// The bytes a path segment carries as is (RFC 3986 §3.3 `pchar` without `%`, and `/`).
const PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~/!$&'()*+,;=:@";
    let mut i = 0;
    while i < others.len() {
        t[others[i] as usize] = true;
        i += 1;
    }
    t
};

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes once. `None` on a malformed escape (`%`, `%4`, `%zz`).
pub fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = memchr::memchr(b'%', rest) {
        out.extend_from_slice(&rest[..i]);
        let hi = hex(*rest.get(i + 1)?)?;
        let lo = hex(*rest.get(i + 2)?)?;
        out.push(hi << 4 | lo);
        rest = &rest[i + 3..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Sanitises the raw path of a request (the part before `?`, not yet decoded).
pub fn sanitize(raw: &str) -> Result<RelPath, PathError> {
    let rest = raw
        .strip_prefix('/')
        .ok_or(PathError::Malformed("path must start with /"))?;
    if rest.is_empty() {
        return Err(PathError::NotServed("directory"));
    }
    let mut out = String::with_capacity(rest.len());
    let mut segments = crate::text::split(rest, b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            return Err(if last {
                PathError::NotServed("directory")
            } else {
                PathError::Malformed("empty path segment")
            });
        }
        // Most segments are printable ASCII without escapes: they are their own decoding.
        let decoded;
        let text = if plain(seg) {
            seg
        } else {
            decoded = decode_segment(seg)?;
            decoded.as_str()
        };
        if text == "." || text == ".." {
            return Err(PathError::Malformed("dot segment in path"));
        }
        if text.starts_with('.') {
            return Err(PathError::NotServed("dot-file"));
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(text);
    }
    Ok(RelPath(out))
}

/// Whether a raw path segment is printable ASCII with no escape and no backslash: its own
/// decoding, with nothing [`decode_segment`] refuses.
fn plain(seg: &str) -> bool {
    seg.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\')
}

/// One raw path segment, percent-decoded once and checked (rule 3 but the dot segments).
fn decode_segment(seg: &str) -> Result<String, PathError> {
    let bytes =
        percent_decode(seg.as_bytes()).ok_or(PathError::Malformed("invalid percent-escape"))?;
    let text = String::from_utf8(bytes).map_err(|_| PathError::Malformed("path is not UTF-8"))?;
    if text.chars().any(|c| c.is_control()) {
        return Err(PathError::Malformed("control character in path"));
    }
    if text.contains('/') || text.contains('\\') {
        return Err(PathError::Malformed("encoded separator in path"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_media_paths() {
        let p = sanitize("/vod/t1/128k/seg_00001.ts").expect("valid");
        assert_eq!(p.as_str(), "vod/t1/128k/seg_00001.ts");
        assert_eq!(p.extension(), Some("ts"));
        assert_eq!(p.asset_key(), "vod/t1");
        assert_eq!(sanitize("/a%20b/c.ts").expect("valid").as_str(), "a b/c.ts");
        assert_eq!(sanitize("/x/y.m3u8").expect("valid").asset_key(), "x");
        assert_eq!(sanitize("/y.m3u8").expect("valid").asset_key(), "");
    }

    #[test]
    fn rejects_traversal_and_oddities() {
        use PathError::*;
        for (raw, malformed) in [
            ("/../etc/passwd", true),
            ("/vod/../../etc/passwd", true),
            ("/vod/%2e%2e/x.ts", true),
            ("/vod/%2E%2E/x.ts", true),
            ("/vod/.%2e/x.ts", true),
            ("/vod/%2f/x.ts", true),
            ("/vod%2Fx.ts", true),
            ("/vod/%5cx.ts", true),
            ("/vod/a\\b.ts", true),
            ("/vod/%00.ts", true),
            ("/vod/%0a.ts", true),
            ("/vod/%c0%ae%c0%ae/x.ts", true),
            ("/vod/%zz.ts", true),
            ("/vod/%4", true),
            ("//etc/passwd", true),
            ("/vod//x.ts", true),
            ("vod/x.ts", true),
            ("/./x.ts", true),
            ("/vod/.git/config", false),
            ("/.segd-volume", false),
            ("/vod/", false),
            ("/", false),
        ] {
            let got = sanitize(raw);
            match got {
                Err(Malformed(_)) if malformed => {}
                Err(NotServed(_)) if !malformed => {}
                other => panic!("{raw}: unexpected {other:?}"),
            }
        }
        // Double-encoding decodes once: `%252e%252e` is the literal name `%2e%2e`, a harmless file name.
        assert_eq!(
            sanitize("/vod/%252e%252e/x.ts").expect("ok").as_str(),
            "vod/%2e%2e/x.ts"
        );
    }

    #[test]
    fn extension_rules() {
        assert_eq!(sanitize("/a/b").expect("ok").extension(), None);
        assert_eq!(sanitize("/a.d/b").expect("ok").extension(), None);
        assert_eq!(sanitize("/a/b.tar.ts").expect("ok").extension(), Some("ts"));
    }

    #[test]
    fn encoded_paths_are_url_paths() {
        for (raw, url) in [
            ("/vod/t1/seg_1.ts", "/vod/t1/seg_1.ts"),
            ("/live/a%20b.ts", "/live/a%20b.ts"),
            ("/live/%C3%A9.ts", "/live/%C3%A9.ts"),
            ("/live/a%3Fq.ts", "/live/a%3Fq.ts"),
            ("/live/a%23f.ts", "/live/a%23f.ts"),
            ("/live/a%25b.ts", "/live/a%25b.ts"),
            ("/live/a%22b;c.ts", "/live/a%22b;c.ts"),
        ] {
            assert_eq!(sanitize(raw).expect("valid").encoded(), url, "{raw}");
        }
    }

    proptest! {
        /// A segment [`sanitize`] takes as it is, without decoding it, is its own decoding.
        #[test]
        fn plain_segments_are_their_own_decoding(seg in r#"[a-zA-Z0-9 .%\\~_!*'()é\x01\x7f-]{1,6}|%2[eEfF]|%5[cC]|%00|%41|%C3%A9|%c0%ae"#) {
            if plain(&seg) {
                prop_assert_eq!(decode_segment(&seg), Ok(seg.clone()));
            }
        }

        /// An encoded path is one sanitize accepts, and names the same path.
        #[test]
        fn encoded_round_trips(raw in r#"(/[a-zA-Z0-9 ?#;:@&=+$,!*'()"<>^`{|}é~%_-]{1,8}){1,4}"#) {
            if let Ok(p) = sanitize(&raw) {
                let url = p.encoded();
                prop_assert!(url.bytes().all(|b| b.is_ascii_graphic()), "{url}");
                prop_assert!(!url.contains('?') && !url.contains('#'), "{url}");
                prop_assert_eq!(sanitize(&url).map(|q| q.as_str().to_owned()), Ok(p.as_str().to_owned()));
            }
        }

        /// Whatever the input, an accepted path joined under a root stays under that root:
        /// no absolute part, no `.`/`..`/empty segment, no backslash, no NUL.
        #[test]
        fn sanitized_never_escapes(raw in "(/|%2[eEfF]|%5[cC]|%00|%25|\\.|\\.\\.|[a-z0-9_]|\\\\|%c0%ae){0,24}") {
            if let Ok(p) = sanitize(&raw) {
                let s = p.as_str();
                prop_assert!(!s.starts_with('/'));
                prop_assert!(!s.contains('\\') && !s.contains('\0'));
                for seg in crate::text::split(s, b'/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('.'));
                }
                let root = std::path::Path::new("/srv/vol");
                let joined = root.join(s);
                prop_assert!(joined.starts_with(root));
                let mut depth: i64 = 0;
                for c in std::path::Path::new(s).components() {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        _ => prop_assert!(false, "non-normal component in {s}"),
                    }
                }
                prop_assert!(depth >= 1);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(raw in "\\PC{0,64}") {
            let _ = sanitize(&raw);
        }
    }
}
