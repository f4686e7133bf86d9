//! `[live]`: where live rules apply (LL-HLS blocking reload, delta updates, preload hints,
//! read-while-write, live cache headers) and the limits on parked requests. See `docs/live.md`.
//!
//! `prefixes` is the one list of live prefixes: `cache_control.live_prefixes` is an older name
//! for the same list (setting both is an error; setting either sets both).

use super::fields::Section;

#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// URL prefixes that are live.
    pub prefixes: Vec<String>,
    /// Requests parked across all playlists; beyond: 503 with Retry-After.
    pub max_blocked_requests: usize,
    /// A blocking request waits at most this × EXT-X-TARGETDURATION.
    pub block_timeout_factor: u32,
    /// A read for a live stream this node has no trace of is answered 503 with this
    /// `Retry-After` (whole seconds) instead of 404: in a cluster, the balancer moved the
    /// request here from the stream's node (docs/cluster.md). So is a live playlist nobody
    /// wrote for 3 target durations ([`crate::live::Registry::held_back`]). `None` ("0s", the default): 404, and
    /// nothing held back.
    pub unknown_stream_retry_after: Option<std::time::Duration>,
    /// The largest live playlist (HLS) or manifest (DASH) followed: a larger upload is 413; a
    /// larger one a local packager writes is served as it is, without LL-HLS.
    pub max_playlist_bytes: u64,
}

/// The default of `[live] max_playlist_bytes`: a day of 2 s segments with dates and titles is
/// about 5 MB.
pub const DEFAULT_MAX_PLAYLIST_BYTES: u64 = 16 << 20;

impl LiveConfig {
    /// Whether `canonical` (a decoded path with a leading `/`) is under a live prefix.
    pub fn covers(&self, canonical: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| canonical.starts_with(p.as_str()))
    }

    /// The stream `canonical` belongs to: its live prefix and the path segment after it
    /// (`/live/show1` for `/live/show1/hls/index.m3u8`), or the prefix itself for a file
    /// directly under it; `None` outside the live prefixes.
    pub fn stream_of<'c>(&self, canonical: &'c str) -> Option<&'c str> {
        let prefix = self
            .prefixes
            .iter()
            .find(|p| canonical.starts_with(p.as_str()))?;
        let rest = &canonical[prefix.len()..];
        Some(match rest.find('/') {
            Some(i) => &canonical[..prefix.len() + i],
            None => &canonical[..prefix.trim_end_matches('/').len()],
        })
    }
}

pub(super) const LIVE_KEYS: &[&str] = &[
    "prefixes",
    "max_blocked_requests",
    "block_timeout_factor",
    "unknown_stream_retry_after",
    "max_playlist_bytes",
];

/// Parses `[live]`; `fallback` is `cache_control.live_prefixes` (used when `prefixes` is absent).
pub(super) fn parse_live(s: &Section, fallback: &[String], fallback_set: bool) -> LiveConfig {
    let prefix_allowed = "URL path prefixes starting with \"/\", e.g. \"/live/\"";
    let prefixes = match s.string_list("prefixes", prefix_allowed) {
        Some(p) => {
            if fallback_set {
                s.error(
                    "prefixes",
                    "cache_control.live_prefixes is set too; they are one list",
                    "set [live] prefixes and remove cache_control.live_prefixes",
                );
            }
            for (i, x) in p.iter().enumerate() {
                if !x.starts_with('/') {
                    s.error(
                        &format!("prefixes[{i}]"),
                        format!("{x:?} does not start with \"/\""),
                        prefix_allowed,
                    );
                }
            }
            p
        }
        None => fallback.to_vec(),
    };
    let max_blocked_requests = s.int(
        "max_blocked_requests",
        20_000,
        0,
        10_000_000,
        "parked requests across all playlists, 0 to 10000000",
    ) as usize;
    let block_timeout_factor = s.int(
        "block_timeout_factor",
        3,
        1,
        100,
        "a multiple of the target duration, 1 to 100",
    ) as u32;
    let retry = s.duration(
        "unknown_stream_retry_after",
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(60),
    );
    let max_playlist_bytes = s.size(
        "max_playlist_bytes",
        DEFAULT_MAX_PLAYLIST_BYTES,
        64 << 10,
        1 << 30,
    );
    s.finish();
    LiveConfig {
        prefixes,
        max_blocked_requests,
        block_timeout_factor,
        unknown_stream_retry_after: (!retry.is_zero()).then_some(retry),
        max_playlist_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::LiveConfig;

    #[test]
    fn stream_of_is_the_prefix_and_the_next_segment() {
        let live = LiveConfig {
            prefixes: vec!["/live/".into(), "/a/ll/".into()],
            max_blocked_requests: 1,
            block_timeout_factor: 1,
            unknown_stream_retry_after: None,
            max_playlist_bytes: super::DEFAULT_MAX_PLAYLIST_BYTES,
        };
        assert_eq!(live.stream_of("/live/s1/hls/index.m3u8"), Some("/live/s1"));
        assert_eq!(live.stream_of("/live/s1/seg0.ts"), Some("/live/s1"));
        assert_eq!(live.stream_of("/a/ll/x/y.m4s"), Some("/a/ll/x"));
        assert_eq!(live.stream_of("/live/index.m3u8"), Some("/live"));
        assert_eq!(live.stream_of("/vod/t1/a.ts"), None);
    }
}
