//! Path sanitising: whatever the request path, an accepted result joined under a root stays
//! under it — only normal components, no `.`/`..`/empty segments, no separators or NUL inside a
//! segment, no dot-files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Ok(p) = segd::volumes::sanitize(raw) {
        let s = p.as_str();
        assert!(!s.is_empty() && !s.starts_with('/'), "{s:?}");
        assert!(!s.contains('\\') && !s.contains('\0'), "{s:?}");
        for seg in s.split('/') {
            assert!(!seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('.'), "{s:?}");
            assert!(!seg.chars().any(char::is_control), "{s:?}");
        }
        let root = std::path::Path::new("/srv/segd/disk1");
        let joined = root.join(s);
        assert!(joined.starts_with(root));
        assert!(std::path::Path::new(s)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))));
    }
});
