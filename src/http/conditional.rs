//! Conditional requests (RFC 9110 §13): `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
//! `If-Modified-Since` and `If-Range`, evaluated in the order §13.2.2 prescribes.

use std::time::{Duration, SystemTime};

use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve normally (200/206).
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

/// Whole seconds since the epoch: HTTP dates have one-second resolution.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A date condition's value, or `None` when it is to be ignored: not a valid HTTP-date, or more
/// than one member (RFC 9110 §13.1.3, §13.1.4), which is also what two field lines make (§5.3).
fn http_date(h: &HeaderMap, name: http::HeaderName) -> Option<u64> {
    let mut fields = h.get_all(name).iter();
    let (Some(v), None) = (fields.next(), fields.next()) else {
        return None;
    };
    httpdate::parse_http_date(v.to_str().ok()?.trim())
        .ok()
        .map(secs)
}

/// Does an `If-Match`/`If-None-Match` list match `etag`? `weak` selects weak comparison
/// (ignore `W/`), as If-None-Match requires; If-Match uses strong comparison.
fn list_matches(h: &HeaderMap, name: http::HeaderName, etag: &str, weak: bool) -> Option<bool> {
    let (ours_weak, ours) = match etag.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, etag),
    };
    let mut present = false;
    for v in h.get_all(name) {
        present = true;
        let Ok(v) = v.to_str() else { continue };
        let hit = any_member(v, |tag| {
            if tag == "*" {
                return true;
            }
            let (is_weak, opaque) = match tag.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, tag),
            };
            opaque == ours && (weak || (!is_weak && !ours_weak))
        });
        if hit {
            return Some(true);
        }
    }
    present.then_some(false)
}

/// Whether `pred` holds for a member of an entity-tag list (`*`, or `[W/]"opaque"` separated
/// by commas, RFC 9110 §13.1.1/§8.8.3). A comma inside the quotes is part of the tag (etagc
/// allows it, and an upstream's ETag kept by the pull tier may hold one), so the list is not
/// split on every comma. A member that is no entity-tag runs to the next comma.
fn any_member(list: &str, mut pred: impl FnMut(&str) -> bool) -> bool {
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let prefix = if rest.starts_with("W/") { 2 } else { 0 };
        let end = match rest[prefix..].strip_prefix('"') {
            // Through the closing quote (or to the end if there is none).
            Some(inner) => inner.find('"').map_or(rest.len(), |i| prefix + 1 + i + 1),
            None => rest.find(',').unwrap_or(rest.len()),
        };
        let (member, tail) = rest.split_at(end);
        if pred(member.trim_end_matches([' ', '\t'])) {
            return true;
        }
        rest = tail;
    }
}

/// Evaluates the preconditions of a GET/HEAD for an object with `etag` and `modified`.
/// `modified` is `None` when the object's date cannot tell its versions apart (two versions
/// of a live playlist written in the same second carry the same `Last-Modified`): the date
/// conditions are then ignored, as for a resource with no modification date (RFC 9110
/// §13.1.3, §13.1.4), and only the entity-tag decides.
pub fn evaluate(h: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> Outcome {
    let mtime = modified.map(secs);
    // Step 1/2: If-Match, else If-Unmodified-Since.
    match list_matches(h, IF_MATCH, etag, false) {
        Some(false) => return Outcome::PreconditionFailed,
        Some(true) => {}
        None => {
            if let (Some(since), Some(mtime)) = (http_date(h, IF_UNMODIFIED_SINCE), mtime) {
                if mtime > since {
                    return Outcome::PreconditionFailed;
                }
            }
        }
    }
    // Step 3/4: If-None-Match, else If-Modified-Since.
    match list_matches(h, IF_NONE_MATCH, etag, true) {
        Some(true) => Outcome::NotModified,
        Some(false) => Outcome::Proceed,
        None => match (http_date(h, IF_MODIFIED_SINCE), mtime) {
            (Some(since), Some(mtime)) if mtime <= since => Outcome::NotModified,
            _ => Outcome::Proceed,
        },
    }
}

/// Evaluates the preconditions of a write (PUT, POST, DELETE) against the object as it is now:
/// `current` is its ETag and modification time, `None` when it does not exist. True when the
/// write may proceed; false means 412. (`If-None-Match: *` is "create only"; `If-Match` needs an
/// existing object with a strongly matching ETag; `If-Unmodified-Since` an object not modified
/// since.)
pub fn write_allowed(h: &HeaderMap, current: Option<(&str, SystemTime)>) -> bool {
    match current {
        None => {
            // Nothing matches an absent object, not even `If-Match: *`.
            !h.contains_key(IF_MATCH)
        }
        Some((etag, modified)) => {
            match list_matches(h, IF_MATCH, etag, false) {
                Some(false) => return false,
                Some(true) => {}
                None => {
                    if let Some(since) = http_date(h, IF_UNMODIFIED_SINCE) {
                        if secs(modified) > since {
                            return false;
                        }
                    }
                }
            }
            list_matches(h, IF_NONE_MATCH, etag, true) != Some(true)
        }
    }
}

/// Whether a `Range` should be honoured given `If-Range` (absent → yes). An entity-tag must
/// match strongly; a date must equal `Last-Modified` exactly.
/// Two field lines make no one validator: the condition is false (the whole object is sent).
pub fn if_range_allows(h: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let mut fields = h.get_all(IF_RANGE).iter();
    let v = match (fields.next(), fields.next()) {
        (None, _) => return true,
        (Some(v), None) => v,
        (Some(_), Some(_)) => return false,
    };
    let Ok(v) = v.to_str() else {
        return false;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return v == etag;
    }
    if v.starts_with("W/") {
        return false;
    }
    httpdate::parse_http_date(v).is_ok_and(|d| modified.is_some_and(|m| secs(d) == secs(m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hm(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    const TAG: &str = "\"abc\"";

    /// An entity-tag may hold a comma (an upstream's, kept by the pull tier): lists are split
    /// between tags, not inside one.
    #[test]
    fn commas_inside_entity_tags() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tag = "\"v1,2\"";
        use Outcome::*;
        for inm in [
            "\"v1,2\"",
            "\"x\", \"v1,2\"",
            "W/\"v1,2\",\"y\"",
            " ,\"v1,2\" ,",
        ] {
            assert_eq!(
                evaluate(&hm(&[(IF_NONE_MATCH, inm)]), tag, Some(t)),
                NotModified,
                "{inm}"
            );
        }
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "\"v1\", \"2\"")]), tag, Some(t)),
            Proceed
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MATCH, "\"v1,2\"")]), tag, Some(t)),
            Proceed
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MATCH, "\"v1\"")]), tag, Some(t)),
            PreconditionFailed
        );
        assert!(write_allowed(
            &hm(&[(IF_MATCH, "\"a\", \"v1,2\"")]),
            Some((tag, t))
        ));
        // Garbage members are skipped, not matched; an unterminated tag matches nothing.
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "junk, \"abc\"")]), TAG, Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "\"abc")]), TAG, Some(t)),
            Proceed
        );
    }

    #[test]
    fn order_and_comparisons() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(t);
        let later = httpdate::fmt_http_date(t + Duration::from_secs(5));
        let earlier = httpdate::fmt_http_date(t - Duration::from_secs(5));
        use Outcome::*;
        assert_eq!(evaluate(&hm(&[]), TAG, Some(t)), Proceed);
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, TAG)]), TAG, Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "W/\"abc\"")]), TAG, Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "\"x\", \"abc\"")]), TAG, Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "*")]), TAG, Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "\"x\"")]), TAG, Some(t)),
            Proceed
        );
        // If-None-Match present: If-Modified-Since is ignored.
        assert_eq!(
            evaluate(
                &hm(&[(IF_NONE_MATCH, "\"x\""), (IF_MODIFIED_SINCE, &later)]),
                TAG,
                Some(t)
            ),
            Proceed
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MODIFIED_SINCE, &date)]), TAG, Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MODIFIED_SINCE, &earlier)]), TAG, Some(t)),
            Proceed
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MODIFIED_SINCE, "garbage")]), TAG, Some(t)),
            Proceed
        );
        // Two dates (two field lines are one list): ignored, whichever comes first.
        for pair in [[&date, &earlier], [&earlier, &date]] {
            let two = hm(&[(IF_MODIFIED_SINCE, pair[0]), (IF_MODIFIED_SINCE, pair[1])]);
            assert_eq!(evaluate(&two, TAG, Some(t)), Proceed);
            let two = hm(&[
                (IF_UNMODIFIED_SINCE, pair[0]),
                (IF_UNMODIFIED_SINCE, pair[1]),
            ]);
            assert_eq!(evaluate(&two, TAG, Some(t)), Proceed);
        }
        assert_eq!(
            evaluate(&hm(&[(IF_MATCH, "\"x\"")]), TAG, Some(t)),
            PreconditionFailed
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MATCH, "W/\"abc\"")]), TAG, Some(t)),
            PreconditionFailed
        );
        assert_eq!(evaluate(&hm(&[(IF_MATCH, TAG)]), TAG, Some(t)), Proceed);
        assert_eq!(
            evaluate(&hm(&[(IF_UNMODIFIED_SINCE, &earlier)]), TAG, Some(t)),
            PreconditionFailed
        );
        assert_eq!(
            evaluate(&hm(&[(IF_UNMODIFIED_SINCE, &date)]), TAG, Some(t)),
            Proceed
        );

        // Our own weak validator: weak comparison matches, strong never does.
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, "W/\"abc\"")]), "W/\"abc\"", Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_NONE_MATCH, TAG)]), "W/\"abc\"", Some(t)),
            NotModified
        );
        assert_eq!(
            evaluate(&hm(&[(IF_MATCH, "W/\"abc\"")]), "W/\"abc\"", Some(t)),
            PreconditionFailed
        );
        assert!(!if_range_allows(
            &hm(&[(IF_RANGE, "W/\"abc\"")]),
            "W/\"abc\"",
            Some(t)
        ));
        assert!(if_range_allows(&hm(&[]), TAG, Some(t)));
        assert!(if_range_allows(&hm(&[(IF_RANGE, TAG)]), TAG, Some(t)));
        assert!(!if_range_allows(&hm(&[(IF_RANGE, "\"x\"")]), TAG, Some(t)));
        assert!(!if_range_allows(
            &hm(&[(IF_RANGE, "W/\"abc\"")]),
            TAG,
            Some(t)
        ));
        assert!(if_range_allows(&hm(&[(IF_RANGE, &date)]), TAG, Some(t)));
        assert!(!if_range_allows(
            &hm(&[(IF_RANGE, TAG), (IF_RANGE, TAG)]),
            TAG,
            Some(t)
        ));
        assert!(!if_range_allows(&hm(&[(IF_RANGE, &earlier)]), TAG, Some(t)));
        // An object without a date matches no date.
        assert!(!if_range_allows(&hm(&[(IF_RANGE, &date)]), TAG, None));
        assert!(if_range_allows(&hm(&[(IF_RANGE, TAG)]), TAG, None));
    }

    #[test]
    fn write_preconditions() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |k: http::HeaderName, v: &str| {
            let mut m = HeaderMap::new();
            m.insert(k, http::HeaderValue::from_str(v).expect("value"));
            m
        };
        let none = HeaderMap::new();
        assert!(write_allowed(&none, None));
        assert!(write_allowed(&none, Some(("\"a\"", t))));
        let create_only = h(IF_NONE_MATCH, "*");
        assert!(write_allowed(&create_only, None));
        assert!(!write_allowed(&create_only, Some(("\"a\"", t))));
        let if_match = h(IF_MATCH, "\"a\"");
        assert!(write_allowed(&if_match, Some(("\"a\"", t))));
        assert!(!write_allowed(&if_match, Some(("\"b\"", t))));
        assert!(!write_allowed(&if_match, None));
        assert!(!write_allowed(&h(IF_MATCH, "*"), None));
        assert!(!write_allowed(&h(IF_MATCH, "W/\"a\""), Some(("\"a\"", t))));
    }
}
