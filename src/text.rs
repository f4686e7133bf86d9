//! Splitting text at an ASCII byte with `memchr`. `str::split(char)` and `str::find(char)` run
//! core's generic char searcher, about 140 instructions per piece on the short paths and
//! tokens every request takes apart (callgrind, `benches/ingest_instructions.py`); an ASCII
//! byte never occurs inside a multi-byte UTF-8 sequence, so a byte search finds the same places.

/// The pieces of `s` between occurrences of `sep`, as `s.split(sep as char)` gives them.
pub fn split(s: &str, sep: u8) -> Split<'_> {
    debug_assert!(sep.is_ascii());
    Split { rest: Some(s), sep }
}

/// The non-empty pieces of a `/`-separated path (`a//b/` → `a`, `b`): its components.
pub fn components(s: &str) -> impl Iterator<Item = &str> {
    split(s, b'/').filter(|c| !c.is_empty())
}

/// See [`split`].
pub struct Split<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match memchr::memchr(self.sep, s.as_bytes()) {
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some(&s[..i])
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// Where `b` (ASCII) first occurs in `s`, as `s.find(b as char)`.
pub fn find(s: &str, b: u8) -> Option<usize> {
    debug_assert!(b.is_ascii());
    memchr::memchr(b, s.as_bytes())
}

/// Where `b` (ASCII) last occurs in `s`, as `s.rfind(b as char)`.
pub fn rfind(s: &str, b: u8) -> Option<usize> {
    debug_assert!(b.is_ascii());
    memchr::memrchr(b, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_places_are_the_ones_str_gives() {
        for s in [
            "",
            "/",
            "//",
            "a",
            "/vod/t1/seg.ts",
            "vod/t1/",
            "é/ü/√.ts",
            "exp=1~acl=/*~hmac=ab",
            "~~",
            "日本/語",
        ] {
            for sep in [b'/', b'~', b'.', b'!'] {
                let ours: Vec<&str> = split(s, sep).collect();
                let std: Vec<&str> = s.split(sep as char).collect();
                assert_eq!(ours, std, "{s:?} {}", sep as char);
                assert_eq!(find(s, sep), s.find(sep as char), "{s:?}");
                assert_eq!(rfind(s, sep), s.rfind(sep as char), "{s:?}");
            }
            let ours: Vec<&str> = components(s).collect();
            let std: Vec<&str> = s.split('/').filter(|c| !c.is_empty()).collect();
            assert_eq!(ours, std, "{s:?}");
        }
    }
}
