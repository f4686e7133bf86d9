//! The live registry: the current parsed version of every live HLS media playlist, fed by the
//! writes that change them (ingest commits, and local packagers' renames seen through inotify),
//! and the requests parked on them (LL-HLS blocking reloads, preload hints).
//!
//! Waiting is a value, not a loop: each playlist has a `watch` channel that a write publishes
//! into; a parked request wakes on exactly the writes of its playlist and re-checks its
//! condition. Every wait is bounded (its timeout, the global `max_blocked_requests`), ends at
//! once on drain, and frees its slot when the request is dropped (client gone).

pub mod playlist;
pub mod watcher;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
pub use playlist::{BadDirective, Directives, Snapshot, Want};

type Slot = watch::Sender<Option<Arc<Snapshot>>>;

/// Why a wait ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// `max_blocked_requests` are parked already.
    TooMany,
    TimedOut,
    /// The playlist was deleted while the request waited: the stream was taken down.
    Gone,
}

pub struct Registry {
    playlists: Mutex<HashMap<String, Slot>>,
    /// Objects waited for by preload-hint requests: path → bumped when its upload starts.
    objects: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Current preload hints: object path → the playlist that announced it.
    hints: Mutex<HashMap<String, String>>,
    /// Numbered live segments whose uploads started: series → the newest ([`Registry::next_in`]).
    series: Mutex<HashMap<String, Series>>,
    blocked: AtomicUsize,
    stopping: watch::Sender<bool>,
    /// Live DASH manifests stored as `type="static"` (a stream's end), when, and the
    /// `availabilityStartTime` of the stream that ended (its last dynamic version's): a dynamic
    /// version of that stream arriving just after it lost a race with it
    /// ([`Registry::mpd_behind`]).
    ended_mpds: Mutex<HashMap<String, (std::time::Instant, Option<String>)>>,
    /// The `availabilityStartTime` of the last dynamic version of each live DASH manifest
    /// (a packager's run: a restarted one has another).
    mpd_starts: Mutex<HashMap<String, String>>,
    /// Live DASH manifests stored as `type="dynamic"` with a `minimumUpdatePeriod`: its
    /// seconds, which bound their `Cache-Control` as a target duration bounds a playlist's.
    mpd_periods: Mutex<HashMap<String, f64>>,
    /// Live playlist watchers started ([`watcher::spawn`]): the newest one runs.
    pub(crate) watchers: std::sync::atomic::AtomicU64,
    /// `[live] max_playlist_bytes` as the running config has it (for the watcher).
    pub(crate) max_playlist_bytes: std::sync::atomic::AtomicU64,
    m: LiveMetrics,
}

/// Whether an MPD is `type="static"` (a presentation that has ended, or VOD), from its root
/// element's start tag; `static` when it has no `type` (ISO/IEC 23009-1's default); `None`
/// when `text` has no `<MPD` start tag.
/// Live DASH manifests whose update period is remembered at most (the map is cleared when a new
/// one would go past it: a manifest then gets the configured `cache_control.live` until its
/// next version).
const MPD_PERIODS: usize = 4096;

/// The newest upload of a numbered series of live segments, and the time between it and the
/// one before (`None` until two consecutive numbers were seen).
struct Series {
    number: u64,
    at: std::time::Instant,
    interval: Option<Duration>,
}

/// Series remembered at most (the map is cleared when a new one would go past it).
const SERIES_MAX: usize = 4096;

/// The series a segment path belongs to and its number: the last run of digits in its file
/// name before the extension is the number; the rest of the path, and the run's width when it
/// is zero-padded, name the series (`a/chunk-stream0-00012.m4s` is 12 of
/// `a/chunk-stream0-{:05}.m4s`).
fn series_of(path: &str) -> Option<(String, u64)> {
    let name_at = path.rfind('/').map_or(0, |i| i + 1);
    let name = &path[name_at..];
    let stem = name.rfind('.').map_or(name, |dot| &name[..dot]);
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let digits = &name[start..end];
    if digits.len() > 18 {
        return None;
    }
    let number = digits.parse().ok()?;
    let width = if digits.len() > 1 && digits.starts_with('0') {
        digits.len()
    } else {
        0
    };
    // `{dir}{before}{:0width}{after}`, put together by hand: once per upload of a live
    // segment, where the formatting machinery cost more than the rest of this function.
    let mut key = String::with_capacity(path.len() + 6);
    key.push_str(&path[..name_at]);
    key.push_str(&name[..start]);
    key.push_str("{:0");
    if width >= 10 {
        key.push(char::from(b'0' + (width / 10) as u8));
    }
    key.push(char::from(b'0' + (width % 10) as u8));
    key.push('}');
    key.push_str(&name[end..]);
    Some((key, number))
}

pub fn mpd_is_static(text: &[u8]) -> Option<bool> {
    match mpd_attribute(text, "type") {
        Ok(Some(t)) => Some(t.trim() == "static"),
        Ok(None) => Some(true),
        Err(()) => None,
    }
}

/// A live DASH manifest's `availabilityStartTime` (one per run of its packager; ffmpeg's final
/// static manifest has none).
pub fn mpd_availability_start(text: &[u8]) -> Option<String> {
    Some(
        mpd_attribute(text, "availabilityStartTime")
            .ok()??
            .trim()
            .to_owned(),
    )
}

/// A live DASH manifest's `minimumUpdatePeriod` in seconds (how often players fetch it again),
/// when it has one that can be read (an `xs:duration` of days, hours, minutes and seconds).
pub fn mpd_update_period(text: &[u8]) -> Option<f64> {
    xs_duration(mpd_attribute(text, "minimumUpdatePeriod").ok()??)
}

/// The value of attribute `name` of an MPD's root start tag: `Ok(None)` when the tag has no
/// such attribute, `Err` when `text` has no readable `<MPD` start tag.
fn mpd_attribute<'a>(text: &'a [u8], name: &str) -> Result<Option<&'a str>, ()> {
    let text = std::str::from_utf8(text).map_err(|_| ())?;
    let start = text.find("<MPD").ok_or(())? + "<MPD".len();
    let tag = &text[start..];
    let tag = &tag[..tag.find('>').ok_or(())?];
    // Attributes `name = "value"` (either quote, spaces around `=` allowed, as XML has them).
    let mut rest = tag;
    loop {
        rest = rest.trim_start();
        let Some(eq) = rest.find('=') else {
            return Ok(None);
        };
        let attr = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let quote = after.chars().next().ok_or(())?;
        if quote != '"' && quote != '\'' {
            return Err(());
        }
        let value_end = after[1..].find(quote).ok_or(())? + 1;
        if attr == name {
            return Ok(Some(&after[1..value_end]));
        }
        rest = &after[value_end + 1..];
    }
}

/// An `xs:duration` of the form DASH uses (`PT2S`, `PT0.5S`, `PT1M30S`, `P1DT2H`) in seconds:
/// years and months (of no fixed length) and negative durations are `None`.
fn xs_duration(v: &str) -> Option<f64> {
    let v = v.trim().strip_prefix('P')?;
    let (date, time) = match v.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, t),
        Some(_) => return None,
        None => (v, ""),
    };
    let mut total = 0.0;
    let mut parts = 0;
    for (text, units) in [
        (date, &[('D', 86_400.0)][..]),
        (time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..]),
    ] {
        let mut rest = text;
        for &(unit, secs) in units {
            if let Some(i) = rest.find(unit) {
                let n: f64 = rest[..i].parse().ok()?;
                if !n.is_finite() || n < 0.0 {
                    return None;
                }
                total += n * secs;
                parts += 1;
                rest = &rest[i + 1..];
            }
        }
        if !rest.is_empty() {
            return None;
        }
    }
    (parts > 0 && total.is_finite()).then_some(total)
}

struct LiveMetrics {
    blocked: prometheus::IntGauge,
    wakeups: prometheus::IntCounter,
    timeouts: prometheus::IntCounter,
    playlists: prometheus::IntGauge,
    pub growing_reads: prometheus::IntCounter,
}

/// A parked request's slot in `max_blocked_requests`, given back when dropped.
struct Parked<'a>(&'a Registry);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.blocked.fetch_sub(1, Ordering::Relaxed);
        self.0.m.blocked.dec();
    }
}

/// The path (decoded, with a leading `/`, as requests name objects) that a URI in the playlist
/// at `playlist` (such a path too) names: a relative or an absolute-path reference, dot
/// segments removed (RFC 3986 §5.2), query and fragment dropped. An `http`/`https` URL (or a
/// network-path reference, `//host/path`) names its path: the host cannot be checked (viewers
/// reach this origin through CDNs under other names, and a packager writes one of those), and
/// its path is what a request for it here would ask for. `None` for another scheme, a URI that
/// climbs above the root, and names no request can have.
pub fn resolve(playlist: &str, uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let uri = match url_path(uri) {
        Some(path) => path,
        None if crate::playlist::is_foreign(uri) => return None,
        None => uri,
    };
    if uri.is_empty() {
        return None;
    }
    let (mut names, rest): (Vec<String>, &str) = match uri.strip_prefix('/') {
        Some(absolute) => (Vec::new(), absolute),
        None => {
            let dir = &playlist[..playlist.rfind('/').unwrap_or(0)];
            let names = dir
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            (names, uri)
        }
    };
    let mut segments = crate::text::split(rest, b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            // A directory is not an object.
            "." | ".." if last => return None,
            "." => {}
            ".." => {
                names.pop()?;
            }
            "" => return None,
            _ => {
                let bytes = crate::volumes::path::percent_decode(seg.as_bytes())?;
                let name = String::from_utf8(bytes).ok()?;
                if name.contains('/') || name.chars().any(char::is_control) {
                    return None;
                }
                names.push(name);
            }
        }
    }
    Some(format!("/{}", names.join("/")))
}

/// The path of an `http`/`https` URL or a network-path reference (`//host/path`), query and
/// fragment already gone: `""` when it has none.
fn url_path(uri: &str) -> Option<&str> {
    let scheme_len = uri.find("://").filter(|&i| {
        uri[..i].eq_ignore_ascii_case("http") || uri[..i].eq_ignore_ascii_case("https")
    });
    let after_authority = match scheme_len {
        Some(i) => &uri[i + 3..],
        None => uri.strip_prefix("//")?,
    };
    Some(
        after_authority
            .find('/')
            .map_or("", |i| &after_authority[i..]),
    )
}

impl Registry {
    pub fn new(metrics: &Metrics) -> Result<Registry, prometheus::Error> {
        let g = |n: &str, h: &str| -> Result<prometheus::IntGauge, prometheus::Error> {
            let g = prometheus::IntGauge::new(n, h)?;
            metrics.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let c = |n: &str, h: &str| -> Result<prometheus::IntCounter, prometheus::Error> {
            let c = prometheus::IntCounter::new(n, h)?;
            metrics.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Registry {
            playlists: Mutex::new(HashMap::new()),
            objects: Mutex::new(HashMap::new()),
            hints: Mutex::new(HashMap::new()),
            series: Mutex::new(HashMap::new()),
            blocked: AtomicUsize::new(0),
            stopping: watch::Sender::new(false),
            ended_mpds: Mutex::new(HashMap::new()),
            mpd_starts: Mutex::new(HashMap::new()),
            mpd_periods: Mutex::new(HashMap::new()),
            watchers: std::sync::atomic::AtomicU64::new(0),
            max_playlist_bytes: std::sync::atomic::AtomicU64::new(
                crate::config::DEFAULT_MAX_PLAYLIST_BYTES,
            ),
            m: LiveMetrics {
                blocked: g(
                    "segd_live_blocked_requests",
                    "Requests parked on a live playlist or a preload hint",
                )?,
                wakeups: c(
                    "segd_live_wakeups_total",
                    "Parked requests answered because a write satisfied them",
                )?,
                timeouts: c(
                    "segd_live_block_timeouts_total",
                    "Parked requests that timed out (503)",
                )?,
                playlists: g("segd_live_playlists", "Live playlists in the registry")?,
                growing_reads: c(
                    "segd_live_growing_reads_total",
                    "Responses served from an upload still in progress (read-while-write)",
                )?,
            },
        })
    }

    /// Publishes a new version of the playlist at `path` (a decoded path with a leading `/`):
    /// every request parked on it re-checks at once.
    pub fn publish(&self, path: &str, snap: Snapshot) {
        self.publish_over(path, snap, None);
    }

    /// [`Registry::publish`] of a version read from disk, only while `seen` (what the registry
    /// had before the file was read) is still the current version: one published meanwhile
    /// (an ingest commit's) is at least as new as what was read, and must not be replaced by
    /// it.
    pub fn publish_read(&self, path: &str, snap: Snapshot, seen: Option<Arc<Snapshot>>) {
        self.publish_over(path, snap, Some(seen));
    }

    fn publish_over(&self, path: &str, mut snap: Snapshot, seen: Option<Option<Arc<Snapshot>>>) {
        let same = |a: &Option<Arc<Snapshot>>, b: &Option<Arc<Snapshot>>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if seen.as_ref().is_some_and(|s| !same(&self.current(path), s)) {
            return;
        }
        let hints: Vec<String> = snap.hints.iter().filter_map(|u| resolve(path, u)).collect();
        self.withdraw_hints(path, &hints);
        snap.published = std::time::Instant::now();
        // What this version follows is worked out without the registry's lock (one for every
        // stream); if another version of the path came meanwhile, it is worked out again (or,
        // for a version read from disk, this one is dropped, as above).
        let mut followed: Option<Option<Arc<Snapshot>>> = None;
        loop {
            let previous = {
                let mut map = self.playlists.lock().unwrap_or_else(|p| p.into_inner());
                let previous = map.get(path).and_then(|slot| slot.borrow().clone());
                if seen.as_ref().is_some_and(|s| !same(&previous, s)) {
                    return;
                }
                let ready = match &followed {
                    Some(f) => same(f, &previous),
                    None => previous.is_none(),
                };
                if ready {
                    let slot = map.entry(path.to_owned()).or_insert_with(|| {
                        self.m.playlists.inc();
                        watch::Sender::new(None)
                    });
                    slot.send_replace(Some(Arc::new(snap)));
                    return;
                }
                previous
            };
            if let Some(p) = &previous {
                snap.follow(p, snap.published);
            }
            followed = Some(previous);
        }
    }

    /// Makes `hints` the preload hints of the playlist at `path`. Requests parked on a hint it
    /// no longer makes look again: a name the packager decided not to publish is 404 now, not
    /// a 503 at the end of the wait.
    fn withdraw_hints(&self, path: &str, hints: &[String]) {
        let mut withdrawn = Vec::new();
        let kept: std::collections::HashSet<&str> = hints.iter().map(String::as_str).collect();
        {
            let mut h = self.hints.lock().unwrap_or_else(|p| p.into_inner());
            h.retain(|x, pl| {
                if pl != path {
                    return true;
                }
                if !kept.contains(x.as_str()) {
                    withdrawn.push(x.clone());
                }
                false
            });
            for x in hints {
                h.insert(x.clone(), path.to_owned());
            }
        }
        if !withdrawn.is_empty() {
            let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
            for x in &withdrawn {
                if let Some(tx) = objects.get(x) {
                    tx.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Whether a live DASH manifest at `path` that is (`is_static`) or is not static, of the
    /// run that started at `start` (its `availabilityStartTime`), comes behind the version
    /// stored there: a dynamic one within `window` of a static one, the stream's end, which it
    /// lost a race with on another connection (ffmpeg's last dynamic manifest and its final
    /// static one, sent back to back). One of another run (a packager restarted under the same
    /// name at once) is no older version: taken. Call under the path's lock.
    pub fn mpd_behind(
        &self,
        path: &str,
        is_static: bool,
        start: Option<&str>,
        window: std::time::Duration,
    ) -> bool {
        let ended = self.ended_mpds.lock().unwrap_or_else(|p| p.into_inner());
        !is_static
            && ended.get(path).is_some_and(|(at, ended_start)| {
                let restarted = matches!((start, ended_start), (Some(a), Some(b)) if a != b);
                at.elapsed() < window && !restarted
            })
    }

    /// The `minimumUpdatePeriod` of the dynamic live DASH manifest last stored at `path`
    /// through segd, in seconds.
    pub fn mpd_update_period(&self, path: &str) -> Option<f64> {
        self.mpd_periods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied()
    }

    /// A live DASH manifest stored at `path` (under the path's lock): a static one is the
    /// stream's end ([`Registry::mpd_behind`]); a dynamic one's `period` (its
    /// `minimumUpdatePeriod`) bounds its `Cache-Control` ([`Registry::mpd_update_period`]).
    pub fn mpd_stored(
        &self,
        path: &str,
        is_static: bool,
        period: Option<f64>,
        start: Option<String>,
        window: std::time::Duration,
    ) {
        let run = {
            let mut starts = self.mpd_starts.lock().unwrap_or_else(|p| p.into_inner());
            match start.filter(|_| !is_static) {
                Some(s) => {
                    if starts.len() >= MPD_PERIODS && !starts.contains_key(path) {
                        starts.clear();
                    }
                    starts.insert(path.to_owned(), s.clone());
                    Some(s)
                }
                None => starts.get(path).cloned(),
            }
        };
        {
            let mut periods = self.mpd_periods.lock().unwrap_or_else(|p| p.into_inner());
            match period.filter(|_| !is_static) {
                Some(p) => {
                    if periods.len() >= MPD_PERIODS && !periods.contains_key(path) {
                        periods.clear();
                    }
                    periods.insert(path.to_owned(), p);
                }
                None => {
                    periods.remove(path);
                }
            }
        }
        let mut ended = self.ended_mpds.lock().unwrap_or_else(|p| p.into_inner());
        if is_static {
            if ended.len() >= 64 {
                ended.retain(|_, (at, _)| at.elapsed() < window);
            }
            ended.insert(path.to_owned(), (std::time::Instant::now(), run));
        } else {
            ended.remove(path);
        }
    }

    /// Forgets a deleted playlist: requests parked on it are told it is gone (as a request
    /// after the DELETE is told 404), and so are those parked on its preload hints, which no
    /// playlist announces any more (RFC 8216bis §6.2.6).
    pub fn forget(&self, path: &str) {
        self.withdraw_hints(path, &[]);
        self.ended_mpds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
        self.mpd_periods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
        let mut map = self.playlists.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = map.remove(path) {
            self.m.playlists.dec();
            // Requests parked on it see the version go (404), then the channel close.
            slot.send_replace(None);
        }
    }

    /// Whether a version of a live media playlist is held back: one not ended and written more
    /// than 3 target durations ago, so that its packager's uploads no longer come here. In a
    /// cluster they went to another node, whose newer versions players were given, and this
    /// one would take their media sequence back (RFC 8216 §6.2.1 forbids that): a node back
    /// from a crash, a restart or a hang holds its streams as they were when it went, and a
    /// neighbour that carried a stream while its node was out keeps the last version it got
    /// after the stream moved back (acceptance P2: served at the stream's next move, 11
    /// minutes and 332 segments behind). The packager's next upload, due within a target
    /// duration, replaces it.
    pub fn held_back(&self, snap: &Snapshot) -> bool {
        if snap.pulled || snap.endlist || snap.target <= 0.0 {
            return false;
        }
        let window = playlist::duration(3.0 * snap.target);
        let Some(written) = snap
            .last_modified
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok())
        else {
            return false;
        };
        // `Last-Modified` is whole seconds: a version written within the window's last second
        // is never taken for an older one.
        let age = std::time::SystemTime::now()
            .duration_since(written)
            .unwrap_or_default();
        age > window + Duration::from_secs(1)
    }

    /// The process did not run for `gap` (stopped, a hypervisor stall, a machine too loaded to
    /// schedule it): said in the log. Its playlists are as old as after a restart, and are held
    /// back as any not written for 3 target durations ([`Registry::held_back`]; acceptance P6:
    /// a node resumed after a hang served its pre-hang playlists, the media sequence going
    /// back, until the packager's next upload).
    pub fn resumed(&self, gap: std::time::Duration) {
        tracing::warn!(gap = ?gap, "this process did not run for a while: live playlists not written meanwhile are held back");
    }

    /// The current version of the playlist at `path`, if the registry has one.
    pub fn current(&self, path: &str) -> Option<Arc<Snapshot>> {
        let map = self.playlists.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).and_then(|s| s.borrow().clone())
    }

    fn park(&self, max: usize) -> Result<Parked<'_>, WaitError> {
        let n = self.blocked.fetch_add(1, Ordering::Relaxed);
        let parked = Parked(self);
        self.m.blocked.inc();
        if n >= max {
            return Err(WaitError::TooMany);
        }
        Ok(parked)
    }

    /// Waits until the playlist at `path` satisfies `want`, for at most `timeout`; a drain ends
    /// the wait at once with the current version.
    pub async fn wait(
        &self,
        path: &str,
        want: Want,
        timeout: Duration,
        max: usize,
    ) -> Result<Arc<Snapshot>, WaitError> {
        let _parked = self.park(max)?;
        // The request found a version before it parked: no entry now is a deletion (and
        // none is made: nothing would ever remove it).
        let mut rx = {
            let map = self.playlists.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(path) {
                Some(slot) => slot.subscribe(),
                None => return Err(WaitError::Gone),
            }
        };
        let mut stop = self.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = rx.borrow_and_update().clone();
            // The request found a version before it parked: none now is a DELETE.
            let Some(s) = &current else {
                return Err(WaitError::Gone);
            };
            if !s.blocks() || s.satisfies(want) || *stop.borrow() {
                if s.satisfies(want) {
                    self.m.wakeups.inc();
                }
                return Ok(Arc::clone(s));
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(WaitError::TimedOut) },
                _ = stop.changed() => {
                    if let Some(s) = rx.borrow().clone() {
                        return Ok(s);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.m.timeouts.inc();
                    return Err(WaitError::TimedOut);
                }
            }
        }
    }

    /// The playlist that currently announces `path` as a preload hint, if any.
    pub fn hinted(&self, path: &str) -> Option<String> {
        let h = self.hints.lock().unwrap_or_else(|p| p.into_inner());
        h.get(path).cloned()
    }

    /// An upload of `path` started: wakes requests waiting for it (preload hints, the next
    /// segment of a series). They are also woken when the hint that made them wait is withdrawn.
    pub fn object_started(&self, path: &str) {
        if let Some((key, number)) = series_of(path) {
            let now = std::time::Instant::now();
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if series.len() >= SERIES_MAX && !series.contains_key(&key) {
                series.clear();
            }
            let s = series.entry(key).or_insert(Series {
                number,
                at: now,
                interval: None,
            });
            if number == s.number + 1 {
                s.interval = Some(now.saturating_duration_since(s.at));
            } else if number != s.number {
                // A restart, a jump or a replacement: a new run of the series.
                s.interval = None;
            }
            s.number = number;
            s.at = now;
        }
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = objects.get(path) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Whether `path` is the next segment of a live series still being uploaded: the series'
    /// last two uploads started one number apart, `path` has the number after them, and its
    /// time is not long past (twice the interval between them, and a second). Gives that
    /// interval, what the packager takes per segment. A DASH player computes segment names from
    /// the clock (`SegmentTemplate`, `availabilityTimeOffset` in low-latency streams), so it
    /// may ask for the next one a moment before a packager that runs late starts uploading it.
    pub fn next_in(&self, path: &str) -> Option<Duration> {
        let (key, number) = series_of(path)?;
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series.get(&key)?;
        let interval = s.interval?;
        (number == s.number.checked_add(1)?
            && s.at.elapsed() <= interval.saturating_mul(2) + Duration::from_secs(1))
        .then_some(interval)
    }

    /// Parks a request waiting for an upload of `path` to start: check the condition, then
    /// [`ObjectWait::changed`], in a loop (subscribing first, so a start in between is not
    /// missed).
    pub fn watch_object(&self, path: &str, max: usize) -> Result<ObjectWait<'_>, WaitError> {
        let parked = self.park(max)?;
        let rx = {
            let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
            objects
                .entry(path.to_owned())
                .or_insert_with(|| watch::Sender::new(0))
                .subscribe()
        };
        Ok(ObjectWait {
            registry: self,
            path: path.to_owned(),
            rx: Some(rx),
            stop: self.stopping.subscribe(),
            _parked: parked,
        })
    }

    /// Counts a response served from a growing upload.
    pub fn growing_read(&self) {
        self.m.growing_reads.inc();
    }

    /// Drain: every parked request is answered now.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }
}

/// A request parked until an object's upload starts (see [`Registry::watch_object`]).
pub struct ObjectWait<'a> {
    registry: &'a Registry,
    path: String,
    rx: Option<watch::Receiver<u64>>,
    stop: watch::Receiver<bool>,
    _parked: Parked<'a>,
}

impl ObjectWait<'_> {
    /// Resolves at the next start of an upload of the path; fails at `deadline` or on drain.
    pub async fn changed(&mut self, deadline: tokio::time::Instant) -> Result<(), WaitError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(WaitError::TimedOut);
        };
        tokio::select! {
            r = rx.changed() => r.map_err(|_| WaitError::TimedOut),
            _ = self.stop.changed() => Err(WaitError::TimedOut),
            _ = tokio::time::sleep_until(deadline) => {
                self.registry.m.timeouts.inc();
                Err(WaitError::TimedOut)
            }
        }
    }

    /// The condition was met.
    pub fn woken(&self) {
        self.registry.m.wakeups.inc();
    }
}

impl Drop for ObjectWait<'_> {
    fn drop(&mut self) {
        self.rx = None;
        let mut objects = self
            .registry
            .objects
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if objects
            .get(&self.path)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            objects.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{mpd_is_static, mpd_update_period, resolve, series_of, Registry};

    #[test]
    fn series_are_named_by_the_last_number_in_the_file_name() {
        let key = |p: &str| series_of(p).map(|(k, _)| k);
        assert_eq!(
            series_of("/live/a/chunk-stream0-00012.m4s").map(|s| s.1),
            Some(12)
        );
        assert_eq!(
            key("/live/a/chunk-stream0-00012.m4s"),
            key("/live/a/chunk-stream0-00013.m4s")
        );
        assert_eq!(key("/live/a/seg9.ts"), key("/live/a/seg10.ts"));
        // The names, exactly (the zero-padded width is part of them, up to 18 digits).
        for (p, k) in [
            (
                "/live/a/chunk-stream0-00012.m4s",
                "/live/a/chunk-stream0-{:05}.m4s",
            ),
            ("/live/a/seg9.ts", "/live/a/seg{:00}.ts"),
            ("/live/a/seg0000000000012.ts", "/live/a/seg{:013}.ts"),
            ("/live/a/s5.p02.m4s", "/live/a/s5.p{:02}.m4s"),
            ("/live/seg3", "/live/seg{:00}"),
        ] {
            assert_eq!(key(p).as_deref(), Some(k), "{p}");
        }
        assert_eq!(series_of("/live/a/s5.p2.m4s").map(|s| s.1), Some(2));
        for (a, b) in [
            (
                "/live/a/chunk-stream0-00012.m4s",
                "/live/a/chunk-stream1-00012.m4s",
            ),
            (
                "/live/a/chunk-stream0-00012.m4s",
                "/live/b/chunk-stream0-00012.m4s",
            ),
            (
                "/live/a/chunk-stream0-00012.m4s",
                "/live/a/chunk-stream0-12.m4s",
            ),
            ("/live/a/seg1.ts", "/live/a/seg1.m4s"),
        ] {
            assert_ne!(key(a), key(b), "{a} {b}");
        }
        for p in [
            "/live/7/seg.ts",
            "/live/a/",
            "/live/a/s1234567890123456789.ts",
            "/live/a/seg.mp4",
        ] {
            assert_eq!(series_of(p), None, "{p}");
        }
    }

    /// Only the number after two consecutive ones is expected, and only while the series is
    /// recent.
    #[test]
    fn the_next_number_is_expected_after_two_consecutive_ones() {
        let r = Registry::new(&crate::metrics::Metrics::new().expect("metrics")).expect("registry");
        let seg = |n: u32| format!("/live/a/chunk-stream0-{n:05}.m4s");
        r.object_started(&seg(1));
        assert_eq!(r.next_in(&seg(2)), None, "one upload is no series yet");
        r.object_started(&seg(2));
        assert!(r.next_in(&seg(3)).is_some());
        for other in [
            seg(2),
            seg(4),
            seg(1),
            "/live/a/chunk-stream1-00003.m4s".into(),
        ] {
            assert_eq!(r.next_in(&other), None, "{other}");
        }
        // A jump starts a new run: no interval until the next consecutive number.
        r.object_started(&seg(7));
        assert_eq!(r.next_in(&seg(8)), None);
        r.object_started(&seg(8));
        assert!(r.next_in(&seg(9)).is_some());
    }

    /// `MPD@type` as a packager may write it: quoted either way, spaces around `=`, other
    /// attributes holding the word (`contentType` is on other elements), and absent (static,
    /// the standard's default).
    #[test]
    fn mpd_update_periods_are_xs_durations() {
        let mpd = |a: &str| format!("<MPD type=\"dynamic\" minimumUpdatePeriod=\"{a}\">");
        for (v, want) in [
            ("PT2S", Some(2.0)),
            ("PT0.5S", Some(0.5)),
            ("PT1M30S", Some(90.0)),
            ("PT1H", Some(3600.0)),
            ("P1DT1S", Some(86_401.0)),
            ("P1D", Some(86_400.0)),
            ("PT", None),
            ("P1M", None),
            ("PT-1S", None),
            ("2S", None),
            ("PT2", None),
            ("PTinfS", None),
        ] {
            assert_eq!(mpd_update_period(mpd(v).as_bytes()), want, "{v}");
        }
        assert_eq!(mpd_update_period(b"<MPD type=\"dynamic\">"), None);
        assert_eq!(mpd_update_period(b"no manifest"), None);
    }

    #[test]
    fn mpd_type_is_read_from_the_root_start_tag() {
        for (mpd, want) in [
            (
                "<MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"dynamic\">",
                Some(false),
            ),
            (
                "<?xml version=\"1.0\"?>\n<MPD\n\ttype=\"static\"\n>",
                Some(true),
            ),
            ("<MPD type = 'dynamic' profiles=\"x\">", Some(false)),
            (
                "<MPD profiles=\"urn:mpeg:dash:profile:isoff-live:2011\">",
                Some(true),
            ),
            ("<MPD mediaType=\"dynamic\" type=\"static\">", Some(true)),
            ("<MPD xmlns=\"a>b\" type=\"dynamic\">", None),
            ("not a manifest", None),
        ] {
            assert_eq!(mpd_is_static(mpd.as_bytes()), want, "{mpd}");
        }
    }

    #[test]
    fn hint_uris_resolve_like_a_player_resolves_them() {
        let pl = "/live/g/index.m3u8";
        for (uri, want) in [
            ("seg20.part1.m4s", Some("/live/g/seg20.part1.m4s")),
            ("./seg20.part1.m4s", Some("/live/g/seg20.part1.m4s")),
            ("/live/g/seg20.part1.m4s", Some("/live/g/seg20.part1.m4s")),
            ("../g2/seg20.part1.m4s", Some("/live/g2/seg20.part1.m4s")),
            ("seg20.part1.m4s?x=1", Some("/live/g/seg20.part1.m4s")),
            ("seg20.part1.m4s#t", Some("/live/g/seg20.part1.m4s")),
            ("a%20b/seg.m4s", Some("/live/g/a b/seg.m4s")),
            ("128k/./seg.m4s", Some("/live/g/128k/seg.m4s")),
            ("../../../../etc/x.m4s", None),
            // The host cannot be checked (a CDN's name): the path is what reaches here.
            (
                "https://cdn.example/live/g/seg.m4s",
                Some("/live/g/seg.m4s"),
            ),
            (
                "HTTP://127.0.0.1:8080/live/g/a%20b.m4s?t=1",
                Some("/live/g/a b.m4s"),
            ),
            ("//cdn.example/live/g/seg.m4s", Some("/live/g/seg.m4s")),
            ("https://cdn.example", None),
            ("https://cdn.example/", None),
            ("https://cdn.example/../x.m4s", None),
            ("skd://key-1", None),
            ("data:text/plain,x", None),
            ("a//b.m4s", None),
            ("a%2fb.m4s", None),
            ("..", None),
            ("", None),
            ("?x=1", None),
        ] {
            assert_eq!(resolve(pl, uri).as_deref(), want, "{uri}");
        }
    }
}
