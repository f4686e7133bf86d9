//! What a volume knows about one object: its stat data ([`ObjectMeta`]), the validators clients
//! see, and the checks that tell whether a held descriptor still shows the same object.
//!
//! ## Validators depend on what the object is, never on where it lies
//! The `ETag` is `"<size hex>-<mtime ns hex>"` and `Last-Modified` is the mtime: the same file
//! on two disks or two nodes (copied with its mtime, as `cp -p`, `rsync -t` and segd's own
//! ingest and pull tiers keep it) has the same validators there, so a CDN revalidating against
//! another node gets a 304. Device and inode never enter a validator; they stay in the identity
//! used to detect change under an open descriptor ([`unchanged`], [`still_current`]) and to key the hot-body
//! cache, where "same bytes" must mean "same file".

use std::fs::File;
use std::io;
use std::time::{Duration, SystemTime};

/// Stat data of an opened object, from one `fstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    pub len: u64,
    pub dev: u64,
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, nanoseconds: moves on every write and truncation, even one that
    /// restores the old mtime.
    pub ctime_ns: i128,
}

impl ObjectMeta {
    /// From a `stat` result.
    pub fn from_stat(st: &rustix::fs::Stat) -> ObjectMeta {
        ObjectMeta {
            len: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        }
    }

    /// The modification time, whole seconds (what `Last-Modified` can carry).
    pub fn modified(&self) -> SystemTime {
        let secs = (self.mtime_ns / 1_000_000_000) as i64;
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    }

    /// Strong validator from size and modification time to the nanosecond: any rewrite of the
    /// file changes it; a copy that keeps the mtime keeps it (see the module doc).
    pub fn etag(&self) -> String {
        let mut buf = [0u8; ETAG_MAX];
        let n = self.write_etag(&mut buf);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// [`ObjectMeta::etag`] as a header value, without a `String` on the way.
    pub fn etag_value(&self) -> http::HeaderValue {
        let mut buf = [0u8; ETAG_MAX];
        let n = self.write_etag(&mut buf);
        http::HeaderValue::from_bytes(&buf[..n])
            .unwrap_or_else(|_| http::HeaderValue::from_static("\"\""))
    }

    /// Writes `"<len hex>-<mtime ns hex>"` (lower case, no leading zeros; a negative mtime as
    /// its 128-bit two's complement, as `{:x}` prints it) to `out`; returns its length.
    fn write_etag(&self, out: &mut [u8; ETAG_MAX]) -> usize {
        fn hex(v: u128, out: &mut [u8], at: usize) -> usize {
            // Digits from the highest non-zero one (one at least), each written in place; in
            // 64-bit halves (u128 shifts take two registers each).
            let (hi, lo) = ((v >> 64) as u64, v as u64);
            let digits = |x: u64| (16 - x.leading_zeros() as usize / 4).max(1);
            let mut at = at;
            let mut put = |x: u64, n: usize| {
                for i in 0..n {
                    out[at + i] = b"0123456789abcdef"[((x >> (4 * (n - 1 - i))) & 0xf) as usize];
                }
                at += n;
            };
            if hi != 0 {
                put(hi, digits(hi));
                put(lo, 16);
            } else {
                put(lo, digits(lo));
            }
            at
        }
        out[0] = b'"';
        let at = hex(u128::from(self.len), out, 1);
        out[at] = b'-';
        let at = hex(self.mtime_ns as u128, out, at + 1);
        out[at] = b'"';
        at + 1
    }
}

/// Whether the bytes behind an open descriptor are still those of the object `meta` describes:
/// the same size and mtime (to the nanosecond, as in the ETag). What a body checks while it is
/// sent, per span: an in-place rewrite or a truncation fails it. An unlink or a rename over the
/// file does not: the held inode keeps its bytes, and a reader that started before a replace or
/// a DELETE finishes with them. ctime is not compared: it also moves on every rename, unlink
/// and chmod, which leave the bytes alone. One `fstat` on a held descriptor: no path walk, no
/// disk I/O.
pub fn unchanged(file: &File, meta: &ObjectMeta) -> bool {
    linked_and_unchanged(file, meta).is_some()
}

/// Whether an open descriptor still shows the object `meta` describes *at its path's name*:
/// [`unchanged`], and not unlinked. What a new request may be served from (an open-file cache
/// hit): an unlinked file is gone for whoever asks next, even while earlier readers finish it.
pub fn still_current(file: &File, meta: &ObjectMeta) -> bool {
    linked_and_unchanged(file, meta).is_some_and(|linked| linked)
}

/// The longest ETag: two quotes, a `-`, 16 and 32 hex digits.
const ETAG_MAX: usize = 2 + 1 + 16 + 32;

/// `None` when the descriptor no longer shows `meta`'s bytes (or cannot be checked), else
/// whether the file is still linked.
fn linked_and_unchanged(file: &File, meta: &ObjectMeta) -> Option<bool> {
    let st = rustix::fs::fstat(file).ok()?;
    let now = ObjectMeta::from_stat(&st);
    (now.len == meta.len && now.mtime_ns == meta.mtime_ns).then_some(st.st_nlink > 0)
}

/// Whether an error from reading or sending a file is a device fault of its disk. Only these
/// errno values count: a peer reset, a shrunk file or a timeout must never mark a volume down.
pub fn is_device_fault(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EIO
                | libc::ENXIO
                | libc::ENODEV
                | libc::ESTALE
                | libc::ENOMEDIUM
                | libc::EREMOTEIO
                | libc::EUCLEAN
        )
    )
}

/// A copy of `e` that keeps what matters downstream: the OS error code (so a device fault is
/// still recognised as one after being shared between waiters), else its kind and message.
pub fn clone_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_device_errors_are_faults() {
        for errno in [libc::EIO, libc::ENXIO, libc::ENODEV, libc::ESTALE] {
            assert!(is_device_fault(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [
            libc::EPIPE,
            libc::ECONNRESET,
            libc::ENOTCONN,
            libc::EAGAIN,
            libc::ENOENT,
        ] {
            assert!(!is_device_fault(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_device_fault(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "shrank"
        )));
        assert!(!is_device_fault(&io::Error::from(io::ErrorKind::TimedOut)));
    }

    #[test]
    fn a_shared_device_error_stays_a_device_error() {
        let e = std::sync::Arc::new(io::Error::from_raw_os_error(libc::EIO));
        assert!(is_device_fault(&clone_error(&e)));
        let other = clone_error(&io::Error::new(io::ErrorKind::UnexpectedEof, "short"));
        assert_eq!(other.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A replace by rename and an unlink leave the held inode's bytes alone: a body being sent
    /// goes on (`unchanged`), a new request is not served from it (`still_current`). An in-place
    /// rewrite of the same size, or a truncation, changes both answers.
    #[test]
    fn unlinked_is_unchanged_but_not_current() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, q) = (dir.path().join("x.ts"), dir.path().join("new.ts"));
        let meta_of = |f: &File| ObjectMeta::from_stat(&rustix::fs::fstat(f).expect("fstat"));
        std::fs::write(&p, [1u8; 4096]).expect("write");
        let held = File::open(&p).expect("open");
        let meta = meta_of(&held);
        assert!(unchanged(&held, &meta) && still_current(&held, &meta));
        std::fs::write(&q, [2u8; 4096]).expect("write");
        std::fs::rename(&q, &p).expect("rename over");
        assert!(
            unchanged(&held, &meta),
            "renamed over: its bytes are intact"
        );
        assert!(
            !still_current(&held, &meta),
            "renamed over: not for new requests"
        );

        let held = File::open(&p).expect("open");
        let meta = meta_of(&held);
        std::fs::remove_file(&p).expect("unlink");
        assert!(
            unchanged(&held, &meta) && !still_current(&held, &meta),
            "unlinked"
        );

        std::fs::write(&p, [3u8; 4096]).expect("write");
        let held = File::open(&p).expect("open");
        let meta = meta_of(&held);
        // Past the coarse timestamp granularity, so the write moves the mtime.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open rw");
        w.write_all_at(&[4u8; 100], 1000).expect("write in place");
        assert!(
            !unchanged(&held, &meta) && !still_current(&held, &meta),
            "rewritten"
        );
        let meta = meta_of(&held);
        w.set_len(10).expect("truncate");
        assert!(
            !unchanged(&held, &meta) && !still_current(&held, &meta),
            "truncated"
        );
    }

    #[test]
    fn etag_is_len_and_mtime_in_hex_as_format_prints_them() {
        for (len, mtime_ns) in [
            (0, 0),
            (1, 1),
            (200_000, 1_796_396_866_465_925_617),
            (u64::MAX, i128::MAX),
            (15, -1),
            (16, i128::MIN),
            (0xabc, -1_000_000_000),
            (7, 1 << 64),
            (0x10, (1 << 64) + 5),
        ] {
            let m = ObjectMeta {
                len,
                dev: 0,
                ino: 0,
                mtime_ns,
                ctime_ns: 0,
            };
            let want = format!("\"{len:x}-{mtime_ns:x}\"");
            assert_eq!(m.etag(), want);
            assert_eq!(m.etag_value().as_bytes(), want.as_bytes());
        }
    }

    #[test]
    fn etag_ignores_device_and_inode() {
        let a = ObjectMeta {
            len: 10,
            dev: 1,
            ino: 2,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 5,
        };
        let b = ObjectMeta {
            dev: 9,
            ino: 77,
            ctime_ns: 6,
            ..a
        };
        assert_eq!(a.etag(), b.etag());
        let c = ObjectMeta {
            mtime_ns: a.mtime_ns + 1,
            ..a
        };
        assert_ne!(a.etag(), c.etag());
    }
}
