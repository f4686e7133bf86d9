//! One written version of a live HLS media playlist, parsed once: media sequence numbers,
//! parts, preload hints, server control and end of list — what blocking reloads, delta updates
//! and preload-hint waits need. Pure code, no I/O.

use bytes::Bytes;

/// A parsed playlist version.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The playlist as written.
    pub text: Bytes,
    /// Validators of the written file.
    pub etag: http::HeaderValue,
    pub last_modified: http::HeaderValue,
    /// `EXT-X-TARGETDURATION`, seconds.
    pub target: f64,
    /// `EXT-X-PART-INF:PART-TARGET`, seconds.
    pub part_target: Option<f64>,
    pub can_block: bool,
    /// `CAN-SKIP-UNTIL`, seconds.
    pub can_skip_until: Option<f64>,
    pub can_skip_dateranges: bool,
    pub endlist: bool,
    /// Media sequence number of the first segment.
    pub first_msn: u64,
    /// The complete segments, in order.
    pub segments: Vec<Segment>,
    /// Parts listed for the segment after the last complete one (`next_msn`).
    pub next_parts: u64,
    /// `EXT-X-PRELOAD-HINT` URIs, as written (relative to the playlist).
    pub hints: Vec<String>,
    /// IDs of the `EXT-X-DATERANGE` tags.
    pub dateranges: Vec<String>,
    /// Each `EXT-X-DATERANGE` tag (its line, trimmed) and when it was added to the playlist:
    /// when the first version that had it was published (the registry carries it from version
    /// to version; tags of the first version it sees count as added then). A date range's
    /// closing tag (the same ID with an `END-DATE`) is a tag of its own.
    pub daterange_tags: Vec<(String, std::time::Instant)>,
    /// Date ranges earlier versions had and this one does not, with when they went: a delta
    /// update that skips date ranges lists those gone within CAN-SKIP-UNTIL (set by the
    /// registry, which knows the versions before).
    pub removed_dateranges: Vec<(String, std::time::Instant)>,
    /// When this version was parsed, and again when the registry published it.
    pub published: std::time::Instant,
    /// The version before this one has the same `Last-Modified` (both written in one second):
    /// that date cannot tell them apart, so date preconditions are not evaluated against it.
    pub date_shared: bool,
    /// A pulled copy: its upstream's version, never held back as this node's own
    /// ([`super::Registry::held_back`]).
    pub pulled: bool,
    /// Delta updates (`_HLS_skip=YES`, `v2`) with their ETags, built by the first request that
    /// asks for each: every player parked on this version gets the same one.
    deltas: [std::sync::OnceLock<Option<Delta>>; 2],
}

/// A delta update of one version, and its weak ETag (the version's, and a hash of the body).
#[derive(Debug, Clone)]
pub struct Delta {
    pub body: Bytes,
    pub etag: Option<http::HeaderValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub msn: u64,
    pub duration: f64,
    /// `EXT-X-PART` lines listed for it (0 once its parts left the playlist).
    pub parts: u64,
    /// Line indexes: the first line that belongs to this segment, and its URI line.
    pub first_line: usize,
    pub uri_line: usize,
}

/// What a blocking request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub msn: u64,
    pub part: Option<u64>,
}

/// Why LL-HLS directives are refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadDirective {
    PartWithoutMsn,
    NotANumber,
    TooFarAhead,
}

/// `s` with its percent-escapes decoded, when it has any and they decode to UTF-8.
fn unescaped(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    crate::volumes::path::percent_decode(s.as_bytes())
        .and_then(|b| String::from_utf8(b).ok())
        .map_or(std::borrow::Cow::Borrowed(s), std::borrow::Cow::Owned)
}

/// The LL-HLS directives of a query (`_HLS_msn`, `_HLS_part`, `_HLS_skip`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    pub want: Option<Want>,
    /// `_HLS_skip=YES` (1) or `v2` (2).
    pub skip: Option<u8>,
}

impl Directives {
    pub fn parse(query: Option<&str>) -> Result<Directives, BadDirective> {
        let mut msn = None;
        let mut part = None;
        let mut skip = None;
        for kv in query.unwrap_or("").split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            // `%33` is `3` (RFC 3986 §2.3: percent-encoded unreserved characters are the same
            // as the characters); a bad escape stays as it is, and is no directive.
            let (k, v) = (unescaped(k), unescaped(v));
            let (k, v) = (k.as_ref(), v.as_ref());
            let num = || {
                // Up to 2^64 − 1 (20 digits), an HLS decimal-integer's range.
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(BadDirective::NotANumber);
                }
                v.parse::<u64>().map_err(|_| BadDirective::NotANumber)
            };
            match k {
                "_HLS_msn" => msn = Some(num()?),
                "_HLS_part" => part = Some(num()?),
                "_HLS_skip" => {
                    skip = match v {
                        "YES" => Some(1),
                        "v2" => Some(2),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        if part.is_some() && msn.is_none() {
            return Err(BadDirective::PartWithoutMsn);
        }
        Ok(Directives {
            want: msn.map(|msn| Want { msn, part }),
            skip,
        })
    }

    pub fn any(&self) -> bool {
        self.want.is_some() || self.skip.is_some()
    }

    /// The directives alone, in one order (`_HLS_msn`, `_HLS_part`, `_HLS_skip`): what an
    /// upstream is asked, and the key identical requests share whatever else their queries hold.
    pub fn query(&self) -> String {
        let mut q = Vec::with_capacity(3);
        if let Some(w) = self.want {
            q.push(format!("_HLS_msn={}", w.msn));
            if let Some(p) = w.part {
                q.push(format!("_HLS_part={p}"));
            }
        }
        match self.skip {
            Some(2) => q.push("_HLS_skip=v2".to_owned()),
            Some(_) => q.push("_HLS_skip=YES".to_owned()),
            None => {}
        }
        q.join("&")
    }
}

/// `secs` as a `Duration`, within 0..=[`SECONDS_MAX`] (never a panic, whatever the float).
pub fn duration(secs: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(secs.clamp(0.0, SECONDS_MAX)).unwrap_or_default()
}

/// The longest time a playlist may state (a target or part duration, `CAN-SKIP-UNTIL`, a
/// segment's `EXTINF`): a day. Every wait and window segd derives from them is bounded by it.
const SECONDS_MAX: f64 = 86_400.0;

/// A playlist's decimal-floating-point seconds: `None` for anything but a number from 0 to
/// [`SECONDS_MAX`] (`NaN`, `inf`, `1e300`, negative), which is then taken as absent: such a
/// value would overflow the `Duration`s made of it, or park a request for ever.
fn seconds(v: &str) -> Option<f64> {
    let x: f64 = v.trim().parse().ok()?;
    (x.is_finite() && (0.0..=SECONDS_MAX).contains(&x)).then_some(x)
}

fn attr<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    // Attribute lists: NAME=value pairs separated by commas; quoted strings may hold commas.
    let mut rest = list;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            let tail = &q[end + 1..];
            (&q[..end], tail.find(',').map_or("", |c| &tail[c + 1..]))
        } else {
            match after.find(',') {
                Some(c) => (&after[..c], &after[c + 1..]),
                None => (after, ""),
            }
        };
        if key == name {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// The weak ETag of a body derived from a version with ETag `strong`: the version's tag and a
/// hash of the body, so two different derivations never share one.
pub fn variant_etag(strong: &http::HeaderValue, body: &[u8]) -> Option<http::HeaderValue> {
    let strong = strong.to_str().unwrap_or_default().trim_matches('"');
    let tag = crate::volumes::fnv1a64(body) as u32;
    http::HeaderValue::from_str(&format!("W/\"{strong}-{tag:08x}\"")).ok()
}

impl Snapshot {
    /// Parses `text` (an HLS media playlist).
    pub fn parse(
        text: Bytes,
        etag: http::HeaderValue,
        last_modified: http::HeaderValue,
    ) -> Snapshot {
        let s = String::from_utf8_lossy(&text).into_owned();
        let mut snap = Snapshot {
            text: text.clone(),
            etag,
            last_modified,
            target: 0.0,
            part_target: None,
            can_block: false,
            can_skip_until: None,
            can_skip_dateranges: false,
            endlist: false,
            first_msn: 0,
            segments: Vec::new(),
            next_parts: 0,
            hints: Vec::new(),
            dateranges: Vec::new(),
            daterange_tags: Vec::new(),
            removed_dateranges: Vec::new(),
            date_shared: false,
            pulled: false,
            published: std::time::Instant::now(),
            deltas: Default::default(),
        };
        let mut msn = None::<u64>;
        let mut duration = None::<f64>;
        let mut first_line = None::<usize>;
        let mut header_done = false;
        for (i, raw) in s.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
                snap.target = seconds(v).unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                snap.first_msn = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:") {
                snap.part_target = attr(v, "PART-TARGET").and_then(seconds);
            } else if let Some(v) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
                snap.can_block = attr(v, "CAN-BLOCK-RELOAD") == Some("YES");
                snap.can_skip_until = attr(v, "CAN-SKIP-UNTIL").and_then(seconds);
                snap.can_skip_dateranges = attr(v, "CAN-SKIP-DATERANGES") == Some("YES");
            } else if line == "#EXT-X-ENDLIST" {
                snap.endlist = true;
            } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
                if let Some(u) = attr(v, "URI") {
                    snap.hints.push(u.to_string());
                }
            } else if line.starts_with("#EXT-X-PART:") {
                header_done = true;
                first_line.get_or_insert(i);
                snap.next_parts += 1;
            } else if let Some(v) = line.strip_prefix("#EXTINF:") {
                header_done = true;
                first_line.get_or_insert(i);
                duration = v.split(',').next().and_then(seconds);
            } else if is_segment_tag(line) {
                let daterange = line.strip_prefix("#EXT-X-DATERANGE:");
                if let Some(id) = daterange.and_then(|v| attr(v, "ID")) {
                    snap.dateranges.push(id.to_string());
                }
                if daterange.is_some() {
                    snap.daterange_tags.push((line.to_string(), snap.published));
                }
                header_done = true;
                first_line.get_or_insert(i);
            } else if !line.starts_with('#') && header_done {
                // A URI line: the segment is complete.
                let n = *msn.get_or_insert(snap.first_msn);
                snap.segments.push(Segment {
                    msn: n,
                    duration: duration.take().unwrap_or(0.0),
                    parts: snap.next_parts,
                    first_line: first_line.take().unwrap_or(i),
                    uri_line: i,
                });
                // Past 2^64 − 1 (an invalid playlist) the numbers stop growing, never wrap.
                msn = Some(n.saturating_add(1));
                snap.next_parts = 0;
            }
        }
        snap
    }

    /// The MSN of the segment after the last complete one. Wider than an MSN: after segment
    /// 2^64 − 1, the largest an HLS decimal-integer allows, it is 2^64.
    pub fn next_msn(&self) -> u128 {
        self.segments
            .last()
            .map_or(u128::from(self.first_msn), |s| u128::from(s.msn) + 1)
    }

    /// How far the stream this version describes has come: the segment after the last complete
    /// one, the parts listed of it, and whether the list has ended. A later version of a
    /// running stream never comes before an earlier one.
    fn progress(&self) -> (u128, u64, bool) {
        (self.next_msn(), self.next_parts, self.endlist)
    }

    /// Whether this version is behind `stored`, the version just before it, by less than
    /// `window` since `stored` was published: an older version of the playlist that arrived
    /// late. A packager that sends two versions back to back on two connections (ffmpeg
    /// without `-http_persistent`, at exit: the last segment's playlist and the final one with
    /// `#EXT-X-ENDLIST`) has no order between them in HTTP, and through a balancer the older
    /// one can be written last, so the stream would never end.
    ///
    /// Only an earlier version of the same stream is behind: the segments both list (by media
    /// sequence number) are the same in both, URI and duration, and there is at least one. A
    /// packager that restarted its stream is taken at once as soon as its segments differ from
    /// the stored ones, and past `window` whatever they are.
    pub fn behind(&self, stored: &Snapshot, window: std::time::Duration) -> bool {
        self.progress() < stored.progress()
            && stored.published.elapsed() < window
            && self.same_segments_as(stored)
    }

    /// Whether every segment this version and `other` both list is the same in both (URI line
    /// and duration), and they share at least one.
    fn same_segments_as(&self, other: &Snapshot) -> bool {
        let mine = String::from_utf8_lossy(&self.text);
        let theirs = String::from_utf8_lossy(&other.text);
        let (mine, theirs): (Vec<&str>, Vec<&str>) =
            (mine.lines().collect(), theirs.lines().collect());
        let mut shared = 0;
        for seg in &self.segments {
            let Some(o) = seg
                .msn
                .checked_sub(other.first_msn)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| other.segments.get(i))
            else {
                continue;
            };
            let uri = |lines: &[&str], i: usize| lines.get(i).map(|l| l.trim().to_owned());
            if (seg.duration - o.duration).abs() > 0.0005
                || uri(&mine, seg.uri_line) != uri(&theirs, o.uri_line)
            {
                return false;
            }
            shared += 1;
        }
        shared > 0
    }

    /// Whether the directives block at all on this playlist (RFC 8216bis: only with
    /// CAN-BLOCK-RELOAD=YES, and never once the list has ended).
    pub fn blocks(&self) -> bool {
        self.can_block && !self.endlist
    }

    /// The Advance Part Limit: 3 parts, or 3 seconds' worth when parts are shorter than 1 s.
    fn advance_part_limit(&self) -> u64 {
        match self.part_target {
            Some(t) if t > 0.0 && t < 1.0 => (3.0 / t).ceil() as u64,
            _ => 3,
        }
    }

    /// How many parts a segment has: as many as the last complete one that listed its parts,
    /// else the target duration over the part target.
    fn parts_per_segment(&self) -> u64 {
        if let Some(s) = self.segments.iter().rev().find(|s| s.parts > 0) {
            return s.parts;
        }
        match self.part_target {
            Some(t) if t > 0.0 && self.target > 0.0 => (self.target / t).ceil() as u64,
            _ => 0,
        }
    }

    /// 400 for a request further ahead than a client may ask.
    pub fn check(&self, want: Want) -> Result<(), BadDirective> {
        let next = self.next_msn();
        let msn = u128::from(want.msn);
        if msn > next + 1 {
            return Err(BadDirective::TooFarAhead);
        }
        if let Some(p) = want.part {
            let limit = self.advance_part_limit();
            // RFC 8216bis §6.2.5.2: refused when it exceeds the last part in the playlist by the
            // Advance Part Limit. The last part is `next_parts - 1` of the segment in progress;
            // a part of the segment after that one also lies beyond the parts still to come in
            // the one in progress.
            let ahead = if msn == next {
                p.saturating_add(1)
            } else if msn == next + 1 {
                self.parts_per_segment().saturating_add(p).saturating_add(1)
            } else {
                0
            };
            if ahead >= self.next_parts.saturating_add(limit) {
                return Err(BadDirective::TooFarAhead);
            }
        }
        Ok(())
    }

    /// Whether this version satisfies `want`: segment M (or a later one) is complete, or part P
    /// of segment M is listed. A part index past the last part of a complete segment M means
    /// part 0 of segment M + 1 (RFC 8216bis §6.2.5.2).
    pub fn satisfies(&self, want: Want) -> bool {
        let next = self.next_msn();
        let msn = u128::from(want.msn);
        match want.part {
            None => msn < next,
            Some(p) if msn < next => {
                let parts = self
                    .segments
                    .iter()
                    .find(|s| s.msn == want.msn)
                    .map_or(0, |s| s.parts);
                if parts == 0 || p < parts {
                    true
                } else {
                    // Part 0 of the next segment; there is none after 2^64 − 1.
                    want.msn
                        .checked_add(1)
                        .is_some_and(|msn| self.satisfies(Want { msn, part: Some(0) }))
                }
            }
            Some(p) => msn == next && p < self.next_parts,
        }
    }

    /// [`Snapshot::skipped`] with its ETag, built once per version and `v2`.
    pub fn delta(&self, v2: bool) -> Option<&Delta> {
        self.deltas[usize::from(v2)]
            .get_or_init(|| {
                let body = self.skipped(v2)?;
                Some(Delta {
                    etag: variant_etag(&self.etag, &body),
                    body,
                })
            })
            .as_ref()
    }

    /// The delta update for `_HLS_skip` (`v2`: also skip date ranges when allowed), or `None`
    /// when the playlist does not advertise `CAN-SKIP-UNTIL` or nothing can be skipped.
    pub fn skipped(&self, v2: bool) -> Option<Bytes> {
        let until = self.can_skip_until?;
        if self.endlist {
            return None;
        }
        // The end is the end of the last complete segment; a segment is skipped when its start
        // lies more than CAN-SKIP-UNTIL seconds before it.
        let total: f64 = self.segments.iter().map(|s| s.duration).sum();
        let mut start = 0.0;
        let mut n = 0;
        for s in &self.segments {
            if total - start > until + 1e-9 {
                n += 1;
            } else {
                break;
            }
            start += s.duration;
        }
        if n == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&self.text);
        let lines: Vec<&str> = text.lines().collect();
        let skip_from = self.segments[0].first_line;
        let skip_to = self.segments[n - 1].uri_line; // inclusive
        let drop_dateranges = v2 && self.can_skip_dateranges;
        let need = if drop_dateranges { 10 } else { 9 };
        // `v2` skips the date ranges added more than CAN-SKIP-UNTIL seconds before this
        // version, wherever they are in the playlist, and only those (RFC 8216bis §6.2.5.1):
        // a date range is playlist metadata, not a tag of the segment it comes before, and a
        // packager may keep its newest "now playing" entry at the top.
        // (A set, not a search per line: a long DVR window holds tens of thousands.)
        let old: std::collections::HashSet<&str> = if drop_dateranges {
            (self.daterange_tags.iter())
                .filter(|(_, added)| {
                    self.published.saturating_duration_since(*added) > duration(until)
                })
                .map(|(tag, _)| tag.as_str())
                .collect()
        } else {
            Default::default()
        };
        let old_daterange = |t: &str| old.contains(t);
        // The first segment kept continues the range of a skipped one when its BYTERANGE has
        // no offset: the delta states it. (A part's BYTERANGE without offset continues the
        // part before it in the same Parent Segment, RFC 8216bis §4.4.4.9, and a skip drops
        // whole segments with all their parts: a kept part's previous one is always kept.)
        let stated = self.implied_byterange(&lines, n);
        let mut out = String::with_capacity(text.len() / 2);
        let mut carried: Vec<&str> = Vec::new();
        let versioned = lines
            .iter()
            .any(|l| l.trim().starts_with("#EXT-X-VERSION:"));
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if i == 0 && !versioned && t == "#EXTM3U" {
                // Delta updates need protocol version 9 (10 when date ranges are skipped).
                out.push_str(&format!("{line}\n#EXT-X-VERSION:{need}\n"));
                continue;
            }
            if (skip_from..=skip_to).contains(&i) {
                // Keep what the remaining segments still depend on: the last MAP and the KEYs
                // still in effect ([`still_applying`] picks them once all are seen).
                if t.starts_with("#EXT-X-MAP:") || t.starts_with("#EXT-X-KEY:") {
                    carried.push(line);
                } else if t.starts_with("#EXT-X-DATERANGE:") {
                    if !old_daterange(t) {
                        carried.push(line);
                    }
                } else if t.starts_with("#EXT") && !skippable(t) {
                    // A playlist tag among the skipped segments' lines (a date range or a MAP
                    // may come before the header ends): every tag not skipped stays
                    // (RFC 8216bis §6.2.5.1), where it was.
                    out.push_str(line);
                    out.push('\n');
                }
                if i == skip_to {
                    if drop_dateranges {
                        let recent = self.recently_removed_dateranges(until);
                        out.push_str(&format!(
                            "#EXT-X-SKIP:SKIPPED-SEGMENTS={n},RECENTLY-REMOVED-DATERANGES=\"{}\"\n",
                            recent.join("\t")
                        ));
                    } else {
                        out.push_str(&format!("#EXT-X-SKIP:SKIPPED-SEGMENTS={n}\n"));
                    }
                    for c in still_applying(&carried) {
                        out.push_str(c);
                        out.push('\n');
                    }
                }
                continue;
            }
            if let Some((at, range)) = &stated {
                if i == *at {
                    out.push_str(range);
                    out.push('\n');
                    continue;
                }
            }
            if let Some(v) = t.strip_prefix("#EXT-X-VERSION:") {
                let v: u32 = v.trim().parse().unwrap_or(0);
                out.push_str(&format!("#EXT-X-VERSION:{}\n", v.max(need)));
                continue;
            }
            if t.starts_with("#EXT-X-DATERANGE:") && old_daterange(t) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        Some(Bytes::from(out))
    }
}

impl Snapshot {
    /// When the BYTERANGE of segment `n` (the first one a delta update keeps) has no offset
    /// (RFC 8216bis §4.4.4.2: its sub-range begins at the next byte after the previous
    /// segment's, which the delta skips): its line index and the tag with the offset stated,
    /// found as a player does, following the ranges of each resource from the first segment
    /// (one whose offset cannot be known from the playlist starts at 0). `None` when it has an
    /// offset, or none can be computed.
    fn implied_byterange(&self, lines: &[&str], n: usize) -> Option<(usize, String)> {
        let range_of = |s: &Segment| {
            let at = (s.first_line..s.uri_line).rev().find(|&i| {
                lines
                    .get(i)
                    .is_some_and(|l| l.trim().starts_with("#EXT-X-BYTERANGE:"))
            })?;
            let v = lines
                .get(at)?
                .trim()
                .strip_prefix("#EXT-X-BYTERANGE:")?
                .trim();
            let (len, offset) = match v.split_once('@') {
                Some((len, o)) => (len, Some(o.trim().parse::<u64>().ok()?)),
                None => (v, None),
            };
            Some((at, len.trim().parse::<u64>().ok()?, offset))
        };
        let first_kept = self.segments.get(n)?;
        let (at, len, None) = range_of(first_kept)? else {
            return None;
        };
        let uri = |s: &Segment| lines.get(s.uri_line).map_or("", |l| l.trim());
        // Where the next sub-range of each resource begins.
        let mut next: std::collections::HashMap<&str, u64> = Default::default();
        for s in self.segments.get(..n)? {
            match range_of(s) {
                Some((_, len, offset)) => {
                    let start = offset.or_else(|| next.get(uri(s)).copied()).unwrap_or(0);
                    next.insert(uri(s), start.checked_add(len)?);
                }
                None => {
                    next.remove(uri(s));
                }
            }
        }
        let start = next.get(uri(first_kept)).copied().unwrap_or(0);
        Some((at, format!("#EXT-X-BYTERANGE:{len}@{start}")))
    }

    /// Whether this version, of the playlist at `path`, lists `object` (a decoded path) as a
    /// part or a segment.
    pub fn lists(&self, path: &str, object: &str) -> bool {
        String::from_utf8_lossy(&self.text).lines().any(|l| {
            let l = l.trim();
            let uri = match l.strip_prefix("#EXT-X-PART:") {
                Some(a) => attr(a, "URI"),
                None if !l.is_empty() && !l.starts_with('#') => Some(l),
                None => None,
            };
            uri.and_then(|u| super::resolve(path, u))
                .is_some_and(|p| p == object)
        })
    }

    /// Records what changed since `previous`: whether both have the same date, the date ranges
    /// this version lacks (gone now), and those that went before and are still recent enough
    /// to matter (CAN-SKIP-UNTIL).
    pub fn follow(&mut self, previous: &Snapshot, now: std::time::Instant) {
        // The same version published again (the live watcher sees the rename an ingest
        // commit made) keeps what its first publication knew; a new version shares its date
        // when the one before has the same.
        self.date_shared = if previous.etag == self.etag {
            previous.date_shared
        } else {
            previous.last_modified == self.last_modified
        };
        // Sets and maps, not searches per entry: the registry runs this for every version of
        // every live playlist, and a long DVR window holds tens of thousands of date ranges.
        use std::collections::{HashMap, HashSet};
        let keep = duration(self.can_skip_until.unwrap_or(0.0));
        let current: HashSet<&str> = self.dateranges.iter().map(String::as_str).collect();
        let mut removed: Vec<(String, std::time::Instant)> = previous
            .removed_dateranges
            .iter()
            .filter(|(id, at)| now.duration_since(*at) <= keep && !current.contains(id.as_str()))
            .cloned()
            .collect();
        let mut listed: HashSet<String> = removed.iter().map(|(r, _)| r.clone()).collect();
        for id in &previous.dateranges {
            if !current.contains(id.as_str()) && listed.insert(id.clone()) {
                removed.push((id.clone(), now));
            }
        }
        self.removed_dateranges = removed;
        let added: HashMap<&str, std::time::Instant> = (previous.daterange_tags.iter())
            .map(|(t, at)| (t.as_str(), *at))
            .rev() // the first of equal tags wins, as a search from the start found it
            .collect();
        for (tag, at) in &mut self.daterange_tags {
            *at = added.get(tag.as_str()).copied().unwrap_or(now);
        }
    }

    /// The IDs of the date ranges removed within the last `until` seconds.
    fn recently_removed_dateranges(&self, until: f64) -> Vec<&str> {
        let keep = duration(until);
        self.removed_dateranges
            .iter()
            .filter(|(_, at)| at.elapsed() <= keep)
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// Of the MAP, KEY and date range lines among the skipped segments' (in order), those a delta
/// update carries: every date range (the caller has left out those it skips), the last MAP, and
/// the KEYs in effect for the first segment kept, one for each KEYFORMAT, in their order (RFC
/// 8216bis §4.4.4.4: a KEY applies until the next KEY with the same KEYFORMAT, "identity" when
/// absent, or with a METHOD of NONE, which ends them all), and those in effect at that MAP (they
/// apply to its Media Initialization Section too): a player sees the same keys for every kept
/// segment and the MAP as in the full playlist.
fn still_applying<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let mut keep = vec![true; lines.len()];
    // The KEYs in effect: their indexes and KEYFORMATs.
    let mut keys: Vec<(usize, &str)> = Vec::new();
    let mut map = None;
    let mut at_map: Vec<(usize, &str)> = Vec::new();
    // The last METHOD=NONE after that MAP: it ends the KEYs carried for the MAP, so it is
    // carried too when there are any (a later KEY of its format replaces it in `keys`).
    let mut none_after_map = None;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("#EXT-X-KEY:") {
            keep[i] = false;
            let format = attr(v, "KEYFORMAT").unwrap_or("identity");
            if attr(v, "METHOD") == Some("NONE") {
                keys.clear();
                if map.is_some() {
                    none_after_map = Some(i);
                }
            } else {
                keys.retain(|(_, f)| *f != format);
            }
            keys.push((i, format));
        } else if t.starts_with("#EXT-X-MAP:") {
            keep[i] = false;
            map = Some(i);
            at_map.clone_from(&keys);
            none_after_map = None;
        }
    }
    let none = none_after_map.filter(|_| !at_map.is_empty());
    let applying = keys.into_iter().chain(at_map).map(|(i, _)| i);
    for i in applying.chain(map).chain(none) {
        if let Some(k) = keep.get_mut(i) {
            *k = true;
        }
    }
    (lines.iter().zip(keep))
        .filter_map(|(l, k)| k.then_some(*l))
        .collect()
}

/// Lines of a skipped segment that a delta update leaves out: its media segment tags
/// (RFC 8216bis §4.4.4) and its parts. MAP, KEY and DATERANGE are decided by the caller.
fn skippable(line: &str) -> bool {
    line.starts_with("#EXTINF:") || line.starts_with("#EXT-X-PART:") || is_segment_tag(line)
}

/// Media segment tags (RFC 8216bis §4.4.4) that start a segment's block of lines.
fn is_segment_tag(line: &str) -> bool {
    const TAGS: &[&str] = &[
        "#EXT-X-BYTERANGE",
        "#EXT-X-DISCONTINUITY",
        "#EXT-X-KEY",
        "#EXT-X-MAP",
        "#EXT-X-PROGRAM-DATE-TIME",
        "#EXT-X-GAP",
        "#EXT-X-BITRATE",
        "#EXT-X-DATERANGE",
        "#EXT-X-CUE",
    ];
    TAGS.iter().any(|t| line.starts_with(t)) && !line.starts_with("#EXT-X-DISCONTINUITY-SEQUENCE")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(
            Bytes::from(text.to_string()),
            http::HeaderValue::from_static("\"x\""),
            http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        )
    }

    const LL: &str = "#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:2
#EXT-X-PART-INF:PART-TARGET=0.5
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5,CAN-SKIP-UNTIL=4
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-MAP:URI=\"init.mp4\"
#EXTINF:2.0,
seg10.m4s
#EXTINF:2.0,
seg11.m4s
#EXTINF:2.0,
seg12.m4s
#EXT-X-PART:DURATION=0.5,URI=\"seg13.part0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.5,URI=\"seg13.part1.m4s\"
#EXTINF:2.0,
seg13.m4s
#EXT-X-PART:DURATION=0.5,URI=\"seg14.part0.m4s\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"seg14.part1.m4s\"
";

    #[test]
    fn parses_sequence_parts_and_hints() {
        let s = snap(LL);
        assert_eq!(s.first_msn, 10);
        assert_eq!(s.next_msn(), 14);
        assert_eq!(s.next_parts, 1);
        assert_eq!(s.hints, vec!["seg14.part1.m4s".to_string()]);
        assert!(s.blocks());
        assert_eq!(s.part_target, Some(0.5));
        assert_eq!(s.segments.len(), 4);
        assert_eq!(
            s.segments[0].first_line, 6,
            "the MAP belongs to the first segment"
        );
    }

    /// Media sequence numbers at the top of their range (RFC 8216bis §4.2: 0 to 2^64 − 1)
    /// neither wrap nor panic.
    #[test]
    fn the_largest_sequence_numbers() {
        let s = snap(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n\
             #EXT-X-MEDIA-SEQUENCE:18446744073709551614\n#EXTINF:2.0,\na.ts\n#EXTINF:2.0,\nb.ts\n",
        );
        assert_eq!(s.next_msn(), 1 << 64);
        let w = |msn, part| Want { msn, part };
        for msn in [0, 5, u64::MAX - 1, u64::MAX] {
            assert!(s.check(w(msn, None)).is_ok(), "{msn}: not too far ahead");
            assert!(s.satisfies(w(msn, None)), "{msn}: already listed");
        }
        assert!(
            s.satisfies(w(u64::MAX, Some(5))),
            "a complete segment has all its parts"
        );
        // With parts listed, a part index past the last one means part 0 of the next segment,
        // and there is none after 2^64 − 1.
        let parted = snap(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=1.0\n\
             #EXT-X-MEDIA-SEQUENCE:18446744073709551615\n\
             #EXT-X-PART:DURATION=1.0,URI=\"a.0.ts\"\n#EXT-X-PART:DURATION=1.0,URI=\"a.1.ts\"\n\
             #EXTINF:2.0,\na.ts\n",
        );
        assert!(parted.satisfies(w(u64::MAX, Some(1))));
        assert!(!parted.satisfies(w(u64::MAX, Some(2))));
        assert!(s.check(w(u64::MAX, Some(u64::MAX))).is_ok());
        let d = Directives::parse(Some("_HLS_msn=18446744073709551615")).expect("the largest");
        assert_eq!(d.want.map(|w| w.msn), Some(u64::MAX));
        assert!(Directives::parse(Some("_HLS_msn=18446744073709551616")).is_err());
        // A playlist numbered past the range (invalid) is read without a panic.
        let past = snap(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:18446744073709551615\n\
             #EXTINF:2.0,\na.ts\n#EXTINF:2.0,\nb.ts\n",
        );
        assert_eq!(past.next_msn(), 1 << 64);
    }

    #[test]
    fn satisfaction_and_limits() {
        let s = snap(LL);
        let w = |msn, part| Want { msn, part };
        assert!(s.satisfies(w(13, None)));
        assert!(
            s.satisfies(w(13, Some(9))),
            "a complete segment has all its parts"
        );
        assert!(s.satisfies(w(14, Some(0))));
        assert!(!s.satisfies(w(14, Some(1))));
        assert!(!s.satisfies(w(14, None)));
        assert_eq!(s.check(w(15, None)), Ok(()));
        assert_eq!(s.check(w(16, None)), Err(BadDirective::TooFarAhead));
        // Part target 0.5 s: the advance limit is 6 parts beyond the last listed (14, 0).
        assert_eq!(s.check(w(14, Some(5))), Ok(()));
        assert_eq!(s.check(w(14, Some(6))), Err(BadDirective::TooFarAhead));
        // Segment 13 had 2 parts: (15, 3) is part 6 counted from (14, 0), 5 beyond it; (15, 4)
        // is 6 beyond.
        assert_eq!(s.check(w(15, Some(3))), Ok(()));
        assert_eq!(s.check(w(15, Some(4))), Err(BadDirective::TooFarAhead));
        // With no complete segment listing parts: target ÷ part target (4) per segment.
        let fresh = snap(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n#EXT-X-MEDIA-SEQUENCE:20\n\
             #EXT-X-PART:DURATION=0.5,URI=\"seg20.part0.m4s\"\n",
        );
        assert_eq!(fresh.check(w(21, Some(1))), Ok(()));
        assert_eq!(fresh.check(w(21, Some(2))), Err(BadDirective::TooFarAhead));
    }

    #[test]
    fn directives() {
        assert_eq!(
            Directives::parse(Some("_HLS_part=1")),
            Err(BadDirective::PartWithoutMsn)
        );
        assert_eq!(
            Directives::parse(Some("_HLS_msn=x")),
            Err(BadDirective::NotANumber)
        );
        assert_eq!(
            Directives::parse(Some("_HLS_msn=-1")),
            Err(BadDirective::NotANumber)
        );
        let d = Directives::parse(Some("a=b&_HLS_msn=5&_HLS_part=2&_HLS_skip=YES")).expect("ok");
        assert_eq!(
            d.want,
            Some(Want {
                msn: 5,
                part: Some(2)
            })
        );
        assert_eq!(d.skip, Some(1));
        assert!(!Directives::parse(None).expect("ok").any());
        // Percent-encoded characters are the characters (RFC 3986 §2.3); a bad escape is none.
        let d =
            Directives::parse(Some("%5FHLS_msn=%3373&_HLS_part=%32&_HLS_skip=v%32")).expect("ok");
        assert_eq!(
            d.want,
            Some(Want {
                msn: 373,
                part: Some(2)
            })
        );
        assert_eq!(d.skip, Some(2));
        assert_eq!(
            Directives::parse(Some("_HLS_msn=%3")),
            Err(BadDirective::NotANumber)
        );
        assert_eq!(
            Directives::parse(Some("_HLS_msn=%2D1")),
            Err(BadDirective::NotANumber)
        );
    }

    #[test]
    fn delta_update() {
        let s = snap(LL);
        let d = String::from_utf8(s.skipped(false).expect("skip").to_vec()).expect("utf8");
        // 8 s of segments, CAN-SKIP-UNTIL=4: seg10 and seg11 start more than 4 s before the end.
        assert!(d.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n"), "{d}");
        assert!(!d.contains("seg10.m4s") && !d.contains("seg11.m4s"), "{d}");
        assert!(
            d.contains("seg12.m4s") && d.contains("seg14.part0.m4s"),
            "{d}"
        );
        assert!(d.contains("#EXT-X-MAP:URI=\"init.mp4\""), "{d}");
        assert!(d.contains("#EXT-X-VERSION:9"), "{d}");
        assert!(d.contains("#EXT-X-MEDIA-SEQUENCE:10"), "{d}");
        let plain = snap(&LL.replace(",CAN-SKIP-UNTIL=4", ""));
        assert!(plain.skipped(false).is_none());
    }

    /// Two versions in one second share their date; publishing the same version again (the
    /// live watcher after an ingest commit) does not forget it.
    #[test]
    fn a_shared_date_survives_a_second_publication_of_the_same_version() {
        let at = |etag: &'static str, lm: &'static str| {
            Snapshot::parse(
                Bytes::from(LL.to_string()),
                http::HeaderValue::from_static(etag),
                http::HeaderValue::from_static(lm),
            )
        };
        let now = std::time::Instant::now();
        let same_second = "Mon, 30 Nov 2026 07:00:00 GMT";
        let v1 = at("\"a\"", same_second);
        let mut v2 = at("\"b\"", same_second);
        v2.follow(&v1, now);
        assert!(v2.date_shared);
        let mut again = at("\"b\"", same_second);
        again.follow(&v2, now);
        assert!(again.date_shared, "the same version published twice");
        let mut v3 = at("\"c\"", "Mon, 30 Nov 2026 07:00:01 GMT");
        v3.follow(&again, now);
        assert!(!v3.date_shared, "a second of its own");
    }

    /// A delta update that skips date ranges lists the ones removed within CAN-SKIP-UNTIL.
    #[test]
    fn delta_update_lists_recently_removed_date_ranges() {
        let with = |ids: &[&str]| {
            let mut text = LL.replace(
                ",CAN-SKIP-UNTIL=4",
                ",CAN-SKIP-UNTIL=4,CAN-SKIP-DATERANGES=YES",
            );
            for id in ids {
                text = text.replace(
                    "#EXT-X-MAP:URI=\"init.mp4\"\n",
                    &format!(
                        "#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-DATERANGE:ID=\"{id}\",START-DATE=\"2026-11-30T00:00:00Z\"\n"
                    ),
                );
            }
            snap(&text)
        };
        let now = std::time::Instant::now();
        let v1 = with(&["ad-1", "ad-2", "ad-3"]);
        assert_eq!(v1.dateranges.len(), 3);
        let mut v2 = with(&["ad-2", "ad-3"]);
        v2.follow(&v1, now);
        let mut v3 = with(&["ad-3"]);
        v3.follow(&v2, now);
        let d = String::from_utf8(v3.skipped(true).expect("skip").to_vec()).expect("utf8");
        assert!(
            d.contains("RECENTLY-REMOVED-DATERANGES=\"ad-2\tad-1\"")
                || d.contains("RECENTLY-REMOVED-DATERANGES=\"ad-1\tad-2\""),
            "{d}"
        );
        // Older than CAN-SKIP-UNTIL (4 s): no longer listed.
        let mut v4 = with(&["ad-3"]);
        v4.follow(&v3, now + std::time::Duration::from_secs(5));
        assert!(
            v4.removed_dateranges.is_empty(),
            "{:?}",
            v4.removed_dateranges
        );
        // Without v2 nothing is listed and the date ranges stay.
        let d = String::from_utf8(v3.skipped(false).expect("skip").to_vec()).expect("utf8");
        assert!(!d.contains("RECENTLY-REMOVED"), "{d}");
    }

    /// `v2` skips a date range by when it was added, not by where it is: one added more than
    /// CAN-SKIP-UNTIL seconds before the version goes wherever it is; a newer one stays
    /// wherever it is, among the skipped segments' lines too (a radio packager keeping its
    /// "now playing" entries at the top); a date range's closing tag (same ID, `END-DATE`) is
    /// new of its own. `YES` keeps them all.
    #[test]
    fn delta_update_skips_date_ranges_by_age() {
        let with = |tags: &[&str]| {
            let mut text = LL.replace(
                ",CAN-SKIP-UNTIL=4",
                ",CAN-SKIP-UNTIL=4,CAN-SKIP-DATERANGES=YES",
            );
            let lines: String = tags.iter().map(|t| format!("{t}\n")).collect();
            text = text.replace(
                "#EXT-X-MAP:URI=\"init.mp4\"\n",
                &format!("#EXT-X-MAP:URI=\"init.mp4\"\n{lines}"),
            );
            snap(&text)
        };
        let old = "#EXT-X-DATERANGE:ID=\"song1\",START-DATE=\"2026-11-30T00:00:00Z\"";
        let ad = "#EXT-X-DATERANGE:ID=\"ad\",START-DATE=\"2026-11-30T00:00:01Z\"";
        let ad_end = "#EXT-X-DATERANGE:ID=\"ad\",END-DATE=\"2026-11-30T00:00:31Z\"";
        let new = "#EXT-X-DATERANGE:ID=\"song2\",START-DATE=\"2026-11-30T00:00:10Z\"";
        let t0 = std::time::Instant::now();
        let mut v1 = with(&[old, ad]);
        v1.published = t0;
        for t in &mut v1.daterange_tags {
            t.1 = t0;
        }
        // Ten seconds later (CAN-SKIP-UNTIL is 4): the ad's end and a new song at the top.
        let mut v2 = with(&[new, old, ad, ad_end]);
        v2.published = t0 + std::time::Duration::from_secs(10);
        v2.follow(&v1, v2.published);
        let d = String::from_utf8(v2.skipped(true).expect("skip").to_vec()).expect("utf8");
        assert!(d.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS="), "{d}");
        assert!(d.contains(new), "the new date range stays: {d}");
        assert!(d.contains(ad_end), "the ad's end is new: {d}");
        assert!(
            !d.contains(old) && !d.contains(&format!("{ad}\n")),
            "old ones go: {d}"
        );
        // The same old date range after the skip boundary goes too.
        let mut late = with(&[]);
        late.text = Bytes::from(String::from_utf8_lossy(&late.text).replace(
            "#EXTINF:2.0,\nseg13.m4s",
            &format!("{old}\n#EXTINF:2.0,\nseg13.m4s"),
        ));
        let mut late = Snapshot::parse(
            late.text.clone(),
            late.etag.clone(),
            late.last_modified.clone(),
        );
        late.published = t0 + std::time::Duration::from_secs(10);
        late.follow(&v1, late.published);
        let d = String::from_utf8(late.skipped(true).expect("skip").to_vec()).expect("utf8");
        assert!(!d.contains(old), "{d}");
        // `YES` skips no date range.
        let d = String::from_utf8(v2.skipped(false).expect("skip").to_vec()).expect("utf8");
        for tag in [old, ad, ad_end, new] {
            assert!(d.contains(tag), "{tag}: {d}");
        }
    }

    /// A date range or a MAP may come before the header's last tag: the header tags after it
    /// still stay in the delta (RFC 8216bis §6.2.5.1), and a playlist with no version gets one.
    #[test]
    fn delta_update_keeps_header_tags_after_an_early_segment_tag() {
        let early = LL.replace(
            "#EXT-X-VERSION:6\n",
            "#EXT-X-VERSION:6\n#EXT-X-DATERANGE:ID=\"splice-1\",START-DATE=\"2026-11-30T00:00:00Z\"\n",
        );
        let map_first = LL.replace("#EXT-X-MAP:URI=\"init.mp4\"\n", "").replace(
            "#EXT-X-TARGETDURATION:2\n",
            "#EXT-X-MAP:URI=\"init.mp4\"\n#EXT-X-TARGETDURATION:2\n",
        );
        for text in [early, map_first] {
            let d = String::from_utf8(snap(&text).skipped(false).expect("skip").to_vec())
                .expect("utf8");
            for tag in [
                "#EXT-X-TARGETDURATION:2",
                "#EXT-X-PART-INF:PART-TARGET=0.5",
                "#EXT-X-SERVER-CONTROL:",
                "#EXT-X-MEDIA-SEQUENCE:10",
                "#EXT-X-MAP:URI=\"init.mp4\"",
                "#EXT-X-SKIP:SKIPPED-SEGMENTS=2",
            ] {
                assert_eq!(d.matches(tag).count(), 1, "{tag} in\n{d}");
            }
            assert!(!d.contains("seg10.m4s") && !d.contains("seg11.m4s"), "{d}");
            let skip = d.find("#EXT-X-SKIP").expect("skip");
            assert!(d.find("#EXT-X-MEDIA-SEQUENCE").expect("seq") < skip, "{d}");
        }
        let unversioned = LL.replace("#EXT-X-VERSION:6\n", "");
        let d = String::from_utf8(snap(&unversioned).skipped(false).expect("skip").to_vec())
            .expect("utf8");
        assert!(d.starts_with("#EXTM3U\n#EXT-X-VERSION:9\n"), "{d}");
    }

    const FAIRPLAY: &str = "com.apple.streamingkeydelivery";
    const WIDEVINE: &str = "urn:uuid:edef8ba9-79d6-4ace-a3c8-27dcd51d21ed";

    fn key(format: &str, uri: &str) -> String {
        format!("#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"{uri}\",KEYFORMAT=\"{format}\",KEYFORMATVERSIONS=\"1\"")
    }

    /// [`LL`] with `first` before segment 10 (after its MAP) and `second` before segment 11:
    /// both skipped by a delta update (CAN-SKIP-UNTIL=4 skips 10 and 11).
    fn keyed(first: &[String], second: &[String]) -> String {
        let lines = |tags: &[String]| tags.iter().map(|t| format!("{t}\n")).collect::<String>();
        LL.replace(
            "#EXT-X-MAP:URI=\"init.mp4\"\n",
            &format!("#EXT-X-MAP:URI=\"init.mp4\"\n{}", lines(first)),
        )
        .replace(
            "#EXTINF:2.0,\nseg11.m4s",
            &format!("{}#EXTINF:2.0,\nseg11.m4s", lines(second)),
        )
    }

    /// What a player reads for each segment URI of `text`: the KEY tags in effect, in the order
    /// they appear (RFC 8216bis §4.4.4.4: a KEY applies until the next KEY with the same
    /// KEYFORMAT, absent meaning "identity", or a METHOD of NONE, which ends them all).
    fn keys_in_effect(text: &str) -> Vec<(String, Vec<String>)> {
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("#EXT-X-KEY:") {
                let format = attr(v, "KEYFORMAT").unwrap_or("identity").to_string();
                if attr(v, "METHOD") == Some("NONE") {
                    keys.clear();
                } else {
                    keys.retain(|(f, _)| *f != format);
                    keys.push((format, line.to_string()));
                }
            } else if !line.is_empty() && !line.starts_with('#') {
                let lines = keys.iter().map(|(_, l)| l.clone()).collect();
                out.push((line.to_string(), lines));
            }
        }
        out
    }

    /// The delta of `text` gives every remaining segment the keys the full playlist does.
    fn delta_keys(text: &str) -> (String, Vec<(String, Vec<String>)>) {
        let d = String::from_utf8(snap(text).skipped(false).expect("skip").to_vec()).expect("utf8");
        assert!(d.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n"), "{d}");
        let full = keys_in_effect(text);
        let delta = keys_in_effect(&d);
        assert_eq!(
            delta[..],
            full[full.len() - delta.len()..],
            "keys of the remaining segments:\n{d}\n--- full:\n{text}"
        );
        (d, delta)
    }

    /// Multi-DRM: a FairPlay and a Widevine KEY before the first (skipped) segment both stay,
    /// in their order; one format changing among the skipped segments leaves the other's KEY.
    #[test]
    fn delta_update_keeps_the_key_of_each_keyformat() {
        let fp1 = key(FAIRPLAY, "skd://fp-1");
        let wv1 = key(WIDEVINE, "data:wv-1");
        let (d, kept) = delta_keys(&keyed(&[fp1.clone(), wv1.clone()], &[]));
        assert_eq!(kept[0].1, vec![fp1.clone(), wv1.clone()], "{d}");
        assert_eq!(d.matches("#EXT-X-KEY:").count(), 2, "{d}");

        // FairPlay rotates at segment 11 (skipped): Widevine's first KEY still applies.
        let fp2 = key(FAIRPLAY, "skd://fp-2");
        let (d, kept) = delta_keys(&keyed(
            &[fp1.clone(), wv1.clone()],
            std::slice::from_ref(&fp2),
        ));
        assert_eq!(kept[0].1, vec![wv1.clone(), fp2.clone()], "{d}");
        assert!(!d.contains("skd://fp-1"), "the rotated key goes: {d}");
        let skip = d.find("#EXT-X-SKIP").expect("skip");
        let first_kept = d.find("seg12.m4s").expect("seg12");
        for k in [&wv1, &fp2] {
            let at = d.find(k.as_str()).expect("key");
            assert!(skip < at && at < first_kept, "{k} before seg12:\n{d}");
        }

        // A KEY without KEYFORMAT ("identity") is a format of its own.
        let aes = "#EXT-X-KEY:METHOD=AES-128,URI=\"k1.bin\"".to_string();
        let (d, kept) = delta_keys(&keyed(
            &[aes.clone(), wv1.clone()],
            std::slice::from_ref(&fp2),
        ));
        assert_eq!(kept[0].1, vec![aes, wv1.clone(), fp2.clone()], "{d}");
    }

    /// A KEY also applies to the Media Initialization Section of a MAP after it: rotated among
    /// the skipped segments, the one before the MAP stays before it, the new one after it.
    #[test]
    fn delta_update_keeps_the_key_of_the_map() {
        let aes = |uri: &str| format!("#EXT-X-KEY:METHOD=AES-128,URI=\"{uri}\",IV=0x1");
        let text = keyed(&[], &[aes("k2.bin")]).replace(
            "#EXT-X-MAP:URI=\"init.mp4\"\n",
            &format!("{}\n#EXT-X-MAP:URI=\"init.mp4\"\n", aes("k1.bin")),
        );
        let (d, kept) = delta_keys(&text);
        assert_eq!(kept[0].1, vec![aes("k2.bin")], "{d}");
        let skip = d.find("#EXT-X-SKIP").expect("skip");
        let order: Vec<usize> = [aes("k1.bin"), "#EXT-X-MAP:".into(), aes("k2.bin")]
            .iter()
            .map(|t| d.find(t.as_str()).expect("carried"))
            .collect();
        assert!(
            skip < order[0] && order[0] < order[1] && order[1] < order[2],
            "{d}"
        );
    }

    /// A KEY carried for the MAP (in effect at it) that a METHOD=NONE after the MAP ended: the
    /// NONE is carried too, or a player would apply that KEY to the kept segments beside the
    /// later one (review: FairPlay + AES where the full playlist gives AES alone).
    #[test]
    fn delta_update_carries_the_none_that_ends_the_keys_of_the_map() {
        let fp1 = key(FAIRPLAY, "skd://fp-1");
        let aes = "#EXT-X-KEY:METHOD=AES-128,URI=\"k2.bin\"".to_string();
        let none = "#EXT-X-KEY:METHOD=NONE".to_string();
        let text = keyed(&[], &[none, aes.clone()]).replace(
            "#EXT-X-MAP:URI=\"init.mp4\"\n",
            &format!("{fp1}\n#EXT-X-MAP:URI=\"init.mp4\"\n"),
        );
        let (d, kept) = delta_keys(&text);
        assert_eq!(kept[0].1, vec![aes], "{d}");
    }

    /// METHOD=NONE ends the KEYs of every format (RFC 8216bis §4.4.4.4): none of those before
    /// it is carried, the ones after it are.
    #[test]
    fn delta_update_ends_every_key_at_method_none() {
        let fp1 = key(FAIRPLAY, "skd://fp-1");
        let wv1 = key(WIDEVINE, "data:wv-1");
        let none = "#EXT-X-KEY:METHOD=NONE".to_string();
        let (d, kept) = delta_keys(&keyed(
            &[fp1.clone(), wv1.clone()],
            std::slice::from_ref(&none),
        ));
        assert!(kept[0].1.is_empty(), "{d}");
        assert!(!d.contains("fp-1") && !d.contains("wv-1"), "{d}");

        let fp2 = key(FAIRPLAY, "skd://fp-2");
        let wv2 = key(WIDEVINE, "data:wv-2");
        let (d, kept) = delta_keys(&keyed(
            &[fp1.clone(), wv1.clone()],
            &[none.clone(), fp2.clone(), wv2.clone()],
        ));
        assert_eq!(kept[0].1, vec![fp2, wv2], "{d}");
        assert!(!d.contains("fp-1") && !d.contains("wv-1"), "{d}");
    }

    /// A byte-range playlist: CAN-SKIP-UNTIL=4 skips segments 10 and 11; `seg11` is segment
    /// 11's BYTERANGE and URI lines, `seg12` segment 12's BYTERANGE line (in main.mp4, the first
    /// segment kept); segment 13 follows 12 and the segment in progress has parts.
    fn ranged(seg11: &str, seg12: &str) -> String {
        format!(
            "#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-PART-INF:PART-TARGET=1.0
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=3,CAN-SKIP-UNTIL=4
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-MAP:URI=\"main.mp4\",BYTERANGE=\"800@0\"
#EXTINF:2.0,
#EXT-X-BYTERANGE:1000@800
main.mp4
#EXTINF:2.0,
{seg11}
#EXTINF:2.0,
{seg12}
main.mp4
#EXTINF:2.0,
#EXT-X-BYTERANGE:1300
main.mp4
#EXT-X-PART:DURATION=1.0,URI=\"next.mp4\",BYTERANGE=\"600@0\",INDEPENDENT=YES
#EXT-X-PART:DURATION=1.0,URI=\"next.mp4\",BYTERANGE=\"700\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"next.mp4\",BYTERANGE-START=1300
"
        )
    }

    /// The SKIP of a [`ranged`] playlist, and the MAP it carries.
    const SKIP_AND_MAP: &str =
        "#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n#EXT-X-MAP:URI=\"main.mp4\",BYTERANGE=\"800@0\"\n";

    fn delta_of(text: &str) -> String {
        let d = String::from_utf8(snap(text).skipped(false).expect("skip").to_vec()).expect("utf8");
        assert!(d.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=2\n"), "{d}");
        d
    }

    /// A kept segment whose BYTERANGE has no offset continues the previous segment's range
    /// (RFC 8216bis §4.4.4.2): when that segment is skipped the delta states the offset, found
    /// as a player does by following each resource's ranges.
    #[test]
    fn delta_update_states_the_byte_offset_the_skipped_segment_implied() {
        let text = ranged("#EXT-X-BYTERANGE:1100\nmain.mp4", "#EXT-X-BYTERANGE:1200");
        let d = delta_of(&text);
        // 800 (MAP) + 1000 (segment 10) + 1100 (segment 11): segment 12 starts at 2900.
        assert!(
            d.contains(&format!(
                "{SKIP_AND_MAP}#EXTINF:2.0,\n#EXT-X-BYTERANGE:1200@2900\nmain.mp4\n"
            )),
            "{d}"
        );
        // Segment 13 follows segment 12, which is listed, and the parts follow each other in
        // their segment: as written.
        let tail = &text[text.find("#EXT-X-BYTERANGE:1300").expect("seg13")..];
        assert!(d.ends_with(tail), "{d}");

        // Each resource's ranges are followed on their own: a segment of another one between
        // them does not move main.mp4's.
        let d = delta_of(&ranged(
            "#EXT-X-BYTERANGE:500@0\nother.mp4",
            "#EXT-X-BYTERANGE:1200",
        ));
        assert!(d.contains("#EXT-X-BYTERANGE:1200@1800\nmain.mp4\n"), "{d}");
    }

    /// A kept segment with an explicit offset is left as written.
    #[test]
    fn delta_update_keeps_an_explicit_byte_offset_as_written() {
        let text = ranged(
            "#EXT-X-BYTERANGE:1100\nmain.mp4",
            "#EXT-X-BYTERANGE:1200@7000",
        );
        let d = delta_of(&text);
        let tail = &text[text.find("#EXT-X-BYTERANGE:1200@7000").expect("seg12")..];
        assert!(
            d.ends_with(&format!("{SKIP_AND_MAP}#EXTINF:2.0,\n{tail}")),
            "{d}"
        );
    }
}
