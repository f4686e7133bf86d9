//! `Range` header → which bytes to send (RFC 9110 §14).
//!
//! Policy, chosen for an origin behind CDNs:
//! - One range (`a-b`, `a-`, `-n`) → 206 with that range, the end clamped to the object.
//! - An unsatisfiable single range (start at or past the end, `-0`) → 416 with
//!   `Content-Range: bytes */LEN`.
//! - A suffix range (`-n`, n > 0) of an empty object → the whole (empty) object with 200: it is
//!   satisfiable (RFC 9110 §14.1.2: "the only satisfiable form of range-spec" for a zero-length
//!   representation), so not 416, and no `Content-Range` can describe an empty part, so not
//!   206; a server may ignore `Range` on a representation with no content (§14.2).
//! - Several ranges → the whole object with 200. RFC 9110 lets a server ignore `Range`; CDNs and
//!   players only send single ranges, and answering thousands of tiny ranges is an amplification
//!   vector. segd never produces `multipart/byteranges`.
//! - A header that is not a valid `bytes=` range set (unknown unit, `5-3`, garbage) is ignored
//!   (200), as RFC 9110 §14.2 requires.
//! - Numbers too large for u64 saturate: a start that large is unsatisfiable, a suffix that
//!   large means the whole object.

/// What to send for a GET of an object of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole object.
    Full,
    /// 206 with bytes `start..=end` (inclusive, `end < len`).
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `a-` or `a-b`
    From(u64, Option<u64>),
    /// `-n`
    Suffix(u64),
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Saturate instead of failing: `bytes=99999999999999999999999-` is a valid, unsatisfiable range.
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

fn parse_spec(s: &str) -> Option<Spec> {
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    let (a, b) = s.split_once('-')?;
    if a.is_empty() {
        return number(b).map(Spec::Suffix);
    }
    let start = number(a)?;
    if b.is_empty() {
        return Some(Spec::From(start, None));
    }
    let end = number(b)?;
    (end >= start).then_some(Spec::From(start, Some(end)))
}

/// Decides the response range for a request's `Range` field lines and `len`. Two or more
/// lines are one list (RFC 9110 §5.3), `bytes=a-b, bytes=c-d`, which is no valid range set:
/// ignored, the whole object.
pub fn resolve_fields(
    fields: http::header::GetAll<'_, http::HeaderValue>,
    len: u64,
) -> RangeDecision {
    let mut fields = fields.iter();
    match (fields.next(), fields.next()) {
        (None, _) => RangeDecision::Full,
        (Some(v), None) => resolve(Some(v.as_bytes()), len),
        (Some(_), Some(_)) => RangeDecision::Full,
    }
}

/// Decides the response range for `header` (the raw `Range` value, if any) and `len`.
pub fn resolve(header: Option<&[u8]>, len: u64) -> RangeDecision {
    let Some(raw) = header else {
        return RangeDecision::Full;
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return RangeDecision::Full;
    };
    // The unit is case-insensitive (RFC 9110 §14.1).
    let text = text.trim();
    let Some(set) = text
        .split_once('=')
        .filter(|(unit, _)| unit.eq_ignore_ascii_case("bytes"))
        .map(|(_, set)| set)
    else {
        return RangeDecision::Full;
    };
    // A list may hold empty elements, which a recipient ignores (RFC 9110 §5.6.1.2):
    // `bytes=0-9,` is one range.
    let mut specs = set
        .split(',')
        .filter(|e| !e.trim_matches(|c| c == ' ' || c == '\t').is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        // Several ranges (or none): the whole object, see the module doc.
        return RangeDecision::Full;
    };
    match parse_spec(spec) {
        None => RangeDecision::Full,
        Some(Spec::From(start, end)) => {
            if start >= len {
                RangeDecision::Unsatisfiable
            } else {
                let end = end.map_or(len - 1, |e| e.min(len - 1));
                RangeDecision::Partial { start, end }
            }
        }
        Some(Spec::Suffix(n)) => {
            if n == 0 {
                RangeDecision::Unsatisfiable
            } else if len == 0 {
                RangeDecision::Full
            } else {
                RangeDecision::Partial {
                    start: len - n.min(len),
                    end: len - 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeDecision::*;

    fn r(h: &str, len: u64) -> RangeDecision {
        resolve(Some(h.as_bytes()), len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(r("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            r("Bytes=0-9", 100),
            Partial { start: 0, end: 9 },
            "the unit's case"
        );
        assert_eq!(
            r("bytes=0-9,", 100),
            Partial { start: 0, end: 9 },
            "an empty element"
        );
        assert_eq!(r("bytes=, 0-9 ,,", 100), Partial { start: 0, end: 9 });
        assert_eq!(r("bytes=,", 100), Full, "no range at all");
        assert_eq!(r("bytes=0-1,5-6", 100), Full, "several ranges");
        assert_eq!(r("bites=0-9", 100), Full, "another unit");
        assert_eq!(r("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=10-", 100), Partial { start: 10, end: 99 });
        assert_eq!(r("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(r("bytes=99-99", 100), Partial { start: 99, end: 99 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(r("bytes=100-", 100), Unsatisfiable);
        assert_eq!(r("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=-0", 0), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-", 100), Unsatisfiable);
    }

    #[test]
    fn ignored() {
        assert_eq!(resolve(None, 100), Full);
        assert_eq!(r("bytes=5-3", 100), Full);
        assert_eq!(r("items=0-5", 100), Full);
        assert_eq!(r("bytes=abc", 100), Full);
        assert_eq!(r("bytes=-", 100), Full);
        assert_eq!(r("bytes=--5", 100), Full);
        assert_eq!(r("bytes=+5-6", 100), Full);
        assert_eq!(r("bytes=0-1,5-6", 100), Full);
        assert_eq!(r("bytes=0-", 100), Partial { start: 0, end: 99 });
        assert_eq!(
            r("bytes=-99999999999999999999999", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(resolve(Some(b"bytes=\xff-1"), 100), Full);
    }

    #[test]
    fn two_field_lines_are_ignored() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::RANGE,
            http::HeaderValue::from_static("bytes=0-9"),
        );
        assert_eq!(
            resolve_fields(h.get_all(http::header::RANGE), 100),
            Partial { start: 0, end: 9 }
        );
        h.append(
            http::header::RANGE,
            http::HeaderValue::from_static("bytes=20-29"),
        );
        assert_eq!(resolve_fields(h.get_all(http::header::RANGE), 100), Full);
        assert_eq!(resolve_fields(h.get_all(http::header::IF_RANGE), 100), Full);
    }

    /// RFC 9110 §14.1.2: of an empty object, a non-zero suffix is the one satisfiable range;
    /// it cannot be a 206 (no `Content-Range` spells an empty part), so the whole object.
    #[test]
    fn suffix_of_an_empty_object() {
        assert_eq!(r("bytes=-5", 0), Full);
        assert_eq!(r("bytes=-99999999999999999999999", 0), Full);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), Unsatisfiable);
    }

    proptest! {
        /// A partial answer always lies within the object and is non-empty.
        #[test]
        fn partial_is_within_object(h in "(bytes=)?[-0-9, ]{0,30}", len in 0u64..10_000) {
            if let Partial { start, end } = r(&h, len) {
                prop_assert!(start <= end && end < len);
            }
        }

        #[test]
        fn never_panics(h in proptest::collection::vec(any::<u8>(), 0..64), len in any::<u64>()) {
            let _ = resolve(Some(&h), len);
        }
    }
}
