//! Debug builds only (what `cargo test` runs; in release builds [`wrap`] always returns `None`):
//! while a file named `.segd-test-stream` exists at a volume's root, segments on that volume are
//! served as a [`Stream`](super::body::Stream) of unknown length built from the file's bytes, so
//! the tests can drive every protocol's writer with a body that ends cleanly or fails mid-way
//! before any tier produces such bodies in production. The trigger holds `key=value` lines:
//! `chunk` (bytes per chunk, default 16384), `delay_ms` (pause between chunks, default 2) and
//! `fail_after` (the stream fails once that many bytes were yielded).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::{Object, Source};

pub(super) fn wrap(object: &Object) -> Option<Object> {
    let Source::File { open, disk, .. } = &object.source else {
        return None;
    };
    let spec = disk.test_trigger(".segd-test-stream")?;
    let value = |key: &str| {
        spec.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    let chunk = value("chunk").unwrap_or(16384).max(1);
    let delay = Duration::from_millis(value("delay_ms").unwrap_or(2));
    let fail_after = value("fail_after");
    let (file, disk, total) = (Arc::clone(&open.file), disk.clone(), open.meta.len);
    let stream = futures_util::stream::unfold(0u64, move |pos| {
        let (file, disk) = (Arc::clone(&file), disk.clone());
        async move {
            if pos == u64::MAX {
                return None; // after an error
            }
            if fail_after.is_some_and(|f| pos >= f) {
                let e = io::Error::other("test stream failed as asked");
                return Some((Err(e), u64::MAX));
            }
            if pos >= total {
                return None;
            }
            if pos > 0 {
                tokio::time::sleep(delay).await;
            }
            let end = (pos + chunk).min(total).min(fail_after.unwrap_or(u64::MAX));
            match disk.read(file, pos, (end - pos) as usize).await {
                Ok(b) => Some((Ok(b), end)),
                Err(e) => Some((Err(e), u64::MAX)),
            }
        }
    });
    Some(Object {
        len: None,
        meta: object.meta,
        etag: object.etag.clone(),
        last_modified: object.last_modified.clone(),
        undated: object.undated,
        growing: false,
        content_type: None,
        cache_control: None,
        extra: None,
        cache_status: None,
        source: Source::Stream(std::sync::Mutex::new(Box::pin(stream))),
    })
}
