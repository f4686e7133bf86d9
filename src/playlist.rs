//! Token propagation into playlists: append a query parameter (`__token__=…`) to every relative
//! URI of an HLS playlist or a DASH MPD (replacing one of that name the URI has already), or put
//! a token's path segment before every root-relative one, in one pass over the text. Pure
//! code, no I/O.
//!
//! Players resolve segment URIs against the playlist URL and drop its query string, so a query
//! token reaches segments only if the playlist carries it.
//!
//! HLS: URI lines, and the `URI="…"` attribute of `EXT-X-MAP`, `EXT-X-KEY`, `EXT-X-SESSION-KEY`,
//! `EXT-X-MEDIA`, `EXT-X-I-FRAME-STREAM-INF`, `EXT-X-PART`, `EXT-X-PRELOAD-HINT`,
//! `EXT-X-RENDITION-REPORT` and `EXT-X-SESSION-DATA`.
//! DASH: `BaseURL` text, `SegmentTemplate@media/@initialization/@index`, `SegmentURL@media/@index`,
//! `Initialization@sourceURL`, `RepresentationIndex@sourceURL`.
//! Absolute URLs (any `scheme:` or `//host`) are left alone: they are someone else's.

const HLS_URI_TAGS: &[&str] = &[
    "#EXT-X-MAP:",
    "#EXT-X-KEY:",
    "#EXT-X-SESSION-KEY:",
    "#EXT-X-MEDIA:",
    "#EXT-X-I-FRAME-STREAM-INF:",
    "#EXT-X-PART:",
    "#EXT-X-PRELOAD-HINT:",
    "#EXT-X-RENDITION-REPORT:",
    "#EXT-X-SESSION-DATA:",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hls,
    Dash,
}

impl Kind {
    pub fn of(ext: &str) -> Option<Kind> {
        match ext {
            "m3u8" => Some(Kind::Hls),
            "mpd" => Some(Kind::Dash),
            _ => None,
        }
    }
}

/// What a rewrite adds to a playlist's URIs.
#[derive(Debug, Clone, Copy)]
pub enum Add<'a> {
    /// `name=value` (already encoded) to the query of every relative URI.
    Query(&'a str),
    /// `/name=value` (the path segment the request's token came in, as received) before every
    /// root-relative URI (`/…`): a path-relative one keeps the segment by itself when a player
    /// resolves it against the playlist's URL, a root-relative one loses it.
    PathSegment(&'a str),
}

impl Add<'_> {
    fn len(&self) -> usize {
        match self {
            Add::Query(p) | Add::PathSegment(p) => p.len(),
        }
    }
}

/// Whether `uri` points elsewhere (has a scheme or is network-path `//host/...`).
pub fn is_foreign(uri: &str) -> bool {
    if uri.starts_with("//") {
        return true;
    }
    let Some(colon) = uri.find(':') else {
        return false;
    };
    let scheme = &uri[..colon];
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        && !scheme.contains('/')
}

/// Adds `param` (`name=value`, already encoded) to the query of `uri`, before any
/// `#fragment`: in place of the first parameter of that name the URI already has (a packager's
/// own, stale token: segd and CDNs read the first one, so one appended after it would never
/// count), the others of that name dropped; else at the end. `amp` is the query's separator
/// (`&`, or `&amp;` inside XML).
fn append(uri: &str, add: Add<'_>, amp: &str, out: &mut String) {
    if uri.is_empty() || is_foreign(uri) {
        out.push_str(uri);
        return;
    }
    let param = match add {
        Add::Query(param) => param,
        Add::PathSegment(segment) => {
            let Some(rest) = uri.strip_prefix('/') else {
                out.push_str(uri);
                return;
            };
            out.push('/');
            out.push_str(segment);
            // A token segment the URI has already (a packager's own) is replaced.
            let name = segment.split_once('=').map_or(segment, |(n, _)| n);
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let first = &rest[..end];
            let is_token = first.strip_prefix(name).is_some_and(|r| r.starts_with('='));
            if is_token {
                out.push_str(&rest[end..]);
            } else {
                out.push('/');
                out.push_str(rest);
            }
            return;
        }
    };
    let (base, frag) = match uri.find('#') {
        Some(i) => (&uri[..i], &uri[i..]),
        None => (uri, ""),
    };
    let name = param.split_once('=').map_or(param, |(n, _)| n);
    match base.split_once('?') {
        None => {
            out.push_str(base);
            out.push('?');
            out.push_str(param);
        }
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let mut placed = false;
            for (i, pair) in query.split(amp).enumerate() {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                let same = key == name;
                if same && placed {
                    continue;
                }
                if i > 0 {
                    out.push_str(amp);
                }
                out.push_str(if same { param } else { pair });
                placed |= same;
            }
            if !placed {
                out.push_str(amp);
                out.push_str(param);
            }
        }
    }
    out.push_str(frag);
}

/// Rewrites a playlist. Non-UTF-8 input is returned unchanged.
pub fn rewrite(kind: Kind, body: &[u8], add: Add<'_>) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(body) else {
        return body.to_vec();
    };
    match kind {
        Kind::Hls => rewrite_hls(text, add).into_bytes(),
        Kind::Dash => rewrite_dash(text, add).into_bytes(),
    }
}

fn rewrite_hls(text: &str, param: Add<'_>) -> String {
    let mut out = String::with_capacity(text.len() + 64 * param.len().min(256));
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let eol = &line[body.len()..];
        let trimmed = body.trim();
        if trimmed.is_empty() {
            out.push_str(line);
        } else if !trimmed.starts_with('#') {
            // Keep whatever surrounds the URI (indentation, trailing blanks) byte for byte.
            let lead = &body[..body.len() - body.trim_start().len()];
            let tail = &body[lead.len() + trimmed.len()..];
            out.push_str(lead);
            append(trimmed, param, "&", &mut out);
            out.push_str(tail);
            out.push_str(eol);
        } else if HLS_URI_TAGS.iter().any(|t| trimmed.starts_with(t)) {
            rewrite_uri_attrs(body, param, &mut out);
            out.push_str(eol);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Rewrites every `URI="…"` attribute (at an attribute boundary) of one tag line.
fn rewrite_uri_attrs(line: &str, param: Add<'_>, out: &mut String) {
    let mut rest = line;
    while let Some(i) = rest.find("URI=\"") {
        let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b':' | b',' | b' ');
        let value_start = i + 5;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..value_start + len];
        if boundary {
            append(value, param, "&", out);
        } else {
            out.push_str(value);
        }
        out.push('"');
        rest = &rest[value_start + len + 1..];
    }
    out.push_str(rest);
}

fn local_name(tag: &str) -> &str {
    let name = tag
        .trim_start_matches('<')
        .split(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .next()
        .unwrap_or("");
    name.rsplit(':').next().unwrap_or(name)
}

/// End index (inclusive) of the tag starting at `s[0] == '<'`, skipping quoted values.
fn tag_end(s: &str) -> Option<usize> {
    if s.starts_with("<!--") {
        return s.find("-->").map(|i| i + 2);
    }
    let mut quote: Option<u8> = None;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Rewrites the named attributes of one start tag.
fn rewrite_xml_attrs(tag: &str, names: &[&str], param: Add<'_>, out: &mut String) {
    let bytes = tag.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' {
            // A quoted value: find which attribute it belongs to.
            let Some(len) = tag[i + 1..].find(b as char) else {
                break;
            };
            let before = tag[..i].trim_end();
            let attr = before
                .strip_suffix('=')
                .map(|s| s.trim_end())
                .and_then(|s| s.rsplit(|c: char| c.is_whitespace()).next())
                .unwrap_or("");
            let attr = attr.rsplit(':').next().unwrap_or(attr);
            if names.contains(&attr) {
                out.push_str(&tag[copied..=i]);
                append(&tag[i + 1..i + 1 + len], param, "&amp;", out);
                copied = i + 1 + len;
            }
            i += len + 2;
        } else {
            i += 1;
        }
    }
    out.push_str(&tag[copied..]);
}

fn rewrite_dash(text: &str, param: Add<'_>) -> String {
    let mut out = String::with_capacity(text.len() + 16 * param.len().min(256));
    let mut rest = text;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        rest = &rest[lt..];
        let Some(end) = tag_end(rest) else { break };
        let tag = &rest[..=end];
        rest = &rest[end + 1..];
        if tag.starts_with("</") || tag.starts_with("<!") || tag.starts_with("<?") {
            out.push_str(tag);
            continue;
        }
        match local_name(tag) {
            "SegmentTemplate" => {
                rewrite_xml_attrs(tag, &["media", "initialization", "index"], param, &mut out)
            }
            "SegmentURL" => rewrite_xml_attrs(tag, &["media", "index"], param, &mut out),
            "Initialization" | "RepresentationIndex" => {
                rewrite_xml_attrs(tag, &["sourceURL"], param, &mut out)
            }
            "BaseURL" if !tag.ends_with("/>") => {
                out.push_str(tag);
                let text_end = rest.find('<').unwrap_or(rest.len());
                let content = &rest[..text_end];
                let trimmed = content.trim();
                let lead = &content[..content.len() - content.trim_start().len()];
                let tail = &content[lead.len() + trimmed.len()..];
                out.push_str(lead);
                append(trimmed, param, "&amp;", &mut out);
                out.push_str(tail);
                rest = &rest[text_end..];
            }
            _ => out.push_str(tag),
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "__token__=exp%3D9~hmac%3Dab";

    #[test]
    fn hls_every_uri_place() {
        let src = "#EXTM3U\r\n#EXT-X-VERSION:7\r\n#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"10@0\"\r\n#EXT-X-KEY:METHOD=AES-128,URI=\"key.key\",IV=0x1\r\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"skd://keyserver/1\"\r\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"en\",URI=\"en/index.m3u8\"\r\n#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,URI=\"iframe.m3u8?x=1\"\r\n#EXT-X-PART:DURATION=1,URI=\"p1.m4s\"\r\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"p2.m4s\"\r\n#EXT-X-RENDITION-REPORT:URI=\"../hi/index.m3u8\",LAST-MSN=1\r\n#EXT-X-SESSION-KEY:METHOD=AES-128,URI=\"/keys/k.key\"\r\n#EXTINF:4,\r\nseg_1.ts\r\n#EXTINF:4,\r\nhttps://cdn.example/seg_2.ts\r\n  seg_3.ts#frag\r\n#EXT-X-ENDLIST\r\n";
        let out =
            String::from_utf8(rewrite(Kind::Hls, src.as_bytes(), Add::Query(P))).expect("utf8");
        for want in [
            "URI=\"init.mp4?__token__=exp%3D9~hmac%3Dab\",BYTERANGE=\"10@0\"",
            "URI=\"key.key?__token__=",
            "URI=\"skd://keyserver/1\"",
            "URI=\"en/index.m3u8?__token__=",
            "URI=\"iframe.m3u8?x=1&__token__=",
            "URI=\"p1.m4s?__token__=",
            "URI=\"p2.m4s?__token__=",
            "URI=\"../hi/index.m3u8?__token__=",
            "URI=\"/keys/k.key?__token__=",
            "\r\nseg_1.ts?__token__=exp%3D9~hmac%3Dab\r\n",
            "\r\nhttps://cdn.example/seg_2.ts\r\n",
            "  seg_3.ts?__token__=exp%3D9~hmac%3Dab#frag\r\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert!(out.starts_with("#EXTM3U\r\n#EXT-X-VERSION:7\r\n"));
        assert!(out.ends_with("#EXT-X-ENDLIST\r\n"));
        assert_eq!(out.matches("__token__").count(), 10);
    }

    /// A path segment goes before root-relative URIs only (replacing a token segment one has
    /// already), in HLS lines, `URI="…"` attributes and DASH attributes and `BaseURL`.
    #[test]
    fn a_path_segment_goes_before_root_relative_uris_only() {
        let seg = Add::PathSegment("__token__=exp%3D9~hmac%3Dab");
        let hls = "#EXTM3U\n#EXT-X-MAP:URI=\"/v/init.mp4\"\n#EXTINF:4,\n/v/a.ts?x=1\n#EXTINF:4,\nb.ts\n#EXTINF:4,\n//cdn.example/c.ts\n#EXTINF:4,\n/__token__=old/v/d.ts\n";
        let out = String::from_utf8(rewrite(Kind::Hls, hls.as_bytes(), seg)).expect("utf8");
        assert_eq!(
            out,
            "#EXTM3U\n#EXT-X-MAP:URI=\"/__token__=exp%3D9~hmac%3Dab/v/init.mp4\"\n#EXTINF:4,\n/__token__=exp%3D9~hmac%3Dab/v/a.ts?x=1\n#EXTINF:4,\nb.ts\n#EXTINF:4,\n//cdn.example/c.ts\n#EXTINF:4,\n/__token__=exp%3D9~hmac%3Dab/v/d.ts\n"
        );
        let mpd = r#"<MPD><BaseURL>/v/</BaseURL><SegmentTemplate media="/v/$Number$.m4s" initialization="init.m4s"/></MPD>"#;
        let out = String::from_utf8(rewrite(Kind::Dash, mpd.as_bytes(), seg)).expect("utf8");
        assert_eq!(
            out,
            r#"<MPD><BaseURL>/__token__=exp%3D9~hmac%3Dab/v/</BaseURL><SegmentTemplate media="/__token__=exp%3D9~hmac%3Dab/v/$Number$.m4s" initialization="init.m4s"/></MPD>"#
        );
        // Nothing root-relative: nothing changes.
        let plain = "#EXTM3U\n#EXTINF:4,\na.ts\n";
        assert_eq!(rewrite(Kind::Hls, plain.as_bytes(), seg), plain.as_bytes());
    }

    #[test]
    fn dash_every_uri_place() {
        let src = r#"<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><!-- a <comment> with media="x" -->
 <BaseURL> media/ </BaseURL>
 <Period><BaseURL>https://other.example/p/</BaseURL>
  <AdaptationSet><SegmentTemplate timescale="1000" initialization="init-$RepresentationID$.m4s" media='chunk-$RepresentationID$-$Number%05d$.m4s?v=1' startNumber="1"/>
   <Representation id="0"><SegmentList><Initialization sourceURL="init.mp4"/><SegmentURL media="s1.m4s"/><SegmentURL media="http://x/s2.m4s"/></SegmentList>
   <SegmentBase><RepresentationIndex sourceURL="idx.sidx"/></SegmentBase></Representation>
 </AdaptationSet></Period></MPD>"#;
        let out =
            String::from_utf8(rewrite(Kind::Dash, src.as_bytes(), Add::Query(P))).expect("utf8");
        for want in [
            "<BaseURL> media/?__token__=exp%3D9~hmac%3Dab </BaseURL>",
            "<BaseURL>https://other.example/p/</BaseURL>",
            "initialization=\"init-$RepresentationID$.m4s?__token__=",
            "media='chunk-$RepresentationID$-$Number%05d$.m4s?v=1&amp;__token__=exp%3D9~hmac%3Dab'",
            "sourceURL=\"init.mp4?__token__=",
            "media=\"s1.m4s?__token__=",
            "media=\"http://x/s2.m4s\"",
            "sourceURL=\"idx.sidx?__token__=",
            "<!-- a <comment> with media=\"x\" -->",
            "timescale=\"1000\"",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert_eq!(out.matches("__token__").count(), 6);
    }

    /// Found by the `playlist` fuzz target (issue 7): trailing blanks after a URI were dropped.
    #[test]
    fn regression_issue7_uri_line_keeps_trailing_whitespace() {
        let out = rewrite(Kind::Hls, b"\x03\t\n seg.ts \r\n", Add::Query(P));
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("\x03?{P}\t\n seg.ts?{P} \r\n")
        );
    }

    /// A URI that has the parameter already gets it replaced, not a second one after it that
    /// nobody reads (acceptance F9); other parameters stay where they were.
    #[test]
    fn an_existing_token_parameter_is_replaced() {
        for (uri, want) in [
            ("seg8.ts?__token__=old", format!("seg8.ts?{P}")),
            (
                "seg8.ts?a=1&__token__=old&b=2",
                format!("seg8.ts?a=1&{P}&b=2"),
            ),
            (
                "seg8.ts?__token__=old&__token__=x#f",
                format!("seg8.ts?{P}#f"),
            ),
            ("seg8.ts?__token__", format!("seg8.ts?{P}")),
            ("seg8.ts?__token__x=1", format!("seg8.ts?__token__x=1&{P}")),
            ("seg8.ts?", format!("seg8.ts?&{P}")),
        ] {
            let out = rewrite(Kind::Hls, format!("{uri}\n").as_bytes(), Add::Query(P));
            assert_eq!(String::from_utf8(out).expect("utf8"), format!("{want}\n"));
        }
        let out = rewrite(
            Kind::Dash,
            b"<SegmentURL media=\"s.m4s?v=1&amp;__token__=old&amp;w=2\"/>",
            Add::Query(P),
        );
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("<SegmentURL media=\"s.m4s?v=1&amp;{P}&amp;w=2\"/>")
        );
        // Not UTF-8 (RFC 8216 requires it): served as it is, never a panic.
        let bad = b"#EXTM3U\nseg1.ts\n#EXT-X-PART:URI=\"\xff\xfe.ts\"\n";
        assert_eq!(rewrite(Kind::Hls, bad, Add::Query(P)), bad.to_vec());
    }

    #[test]
    fn foreign_detection() {
        assert!(is_foreign("https://a/b"));
        assert!(is_foreign("skd://x"));
        assert!(is_foreign("data:text/plain,hi"));
        assert!(is_foreign("//cdn/x.ts"));
        assert!(!is_foreign("seg.ts"));
        assert!(!is_foreign("/vod/seg.ts"));
        assert!(!is_foreign("a/b:c.ts"));
        assert!(!is_foreign("../x.ts"));
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "<",
            "<a",
            "<SegmentTemplate media=\"",
            "#EXT-X-MAP:URI=\"",
            "<BaseURL>",
            "\u{0}<x>",
            "<SegmentURL media=x>",
        ] {
            let _ = rewrite(Kind::Dash, s.as_bytes(), Add::Query(P));
            let _ = rewrite(Kind::Hls, s.as_bytes(), Add::Query(P));
        }
    }
}
