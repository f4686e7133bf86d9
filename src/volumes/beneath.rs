//! Opening a path beneath a directory descriptor without ever leaving it: the one place reads
//! (`Volume::open`) and writes (`store::write`) resolve paths in a volume.
//!
//! `openat2(RESOLVE_BENEATH)` does it in the kernel. Where that call is refused with ENOSYS the
//! same walk runs here, one component at a time. That is not only old kernels: under the shipped
//! `systemd/segd.service` openat2 is always ENOSYS, because `DynamicUser=` implies
//! `RestrictSUIDSGID=`, whose seccomp filter cannot look inside openat2's `struct open_how` for
//! a set-uid mode and so refuses the whole call (systemd answers ENOSYS so that callers fall
//! back, as this module does). The walk gives the same answers:
//! - each component is opened with `O_PATH | O_NOFOLLOW` relative to the descriptor of the
//!   directory before it, and every directory passed stays open, so `..` drops the last one
//!   (the filesystem is never asked for `..`) and `..` past the start is EXDEV;
//! - a symlink is followed by walking its target's components in its place (with
//!   [`Symlinks::Follow`]; more than 40 is ELOOP, an absolute target is EXDEV), or refused with
//!   ELOOP (with [`Symlinks::Refuse`], as `RESOLVE_NO_SYMLINKS`);
//! - the last component is opened with the caller's flags and `O_NOFOLLOW`, so a symlink put
//!   there after it was looked at is ELOOP, never followed;
//! - a caller's `O_NOFOLLOW` holds for a symlink in the last component, whatever the policy:
//!   it is opened as open(2) would (ELOOP; ENOTDIR with `O_DIRECTORY`; the link itself with
//!   `O_PATH`), as openat2 answers;
//! - a trailing `/` (or a last `.`) asks for a directory: the component before it is followed
//!   if it is a symlink (even with `O_NOFOLLOW`, as the kernel does), and a file there is
//!   ENOTDIR (`file/` never opens `file`).
//!
//! `O_CREAT` is refused with EINVAL, by both ways (no caller creates through here: the write
//! path opens directories and creates with `openat` relative to them, `store::write`). The
//! walk could not create the last component as the kernel does (its mode, its `O_EXCL` check
//! against a symlink put there), and one call must not mean two things by kernel.
//!
//! No magic links: they live in procfs, which no walk from a volume reaches without an absolute
//! symlink (refused).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// What a symlink on the way means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symlinks {
    /// Followed while it stays beneath the start (`RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`).
    Follow,
    /// Refused with ELOOP (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
    Refuse,
}

/// Set once openat2 has answered ENOSYS: from then on every open walks.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// The most symlinks one walk follows (the kernel's limit too).
const MAX_LINKS: usize = 40;

/// Opens `path` (relative; `..` allowed as long as it stays beneath) beneath `at` with `flags`
/// (`O_CREAT` is EINVAL: see the module doc).
pub fn open(
    at: impl AsFd,
    path: &str,
    flags: OFlags,
    symlinks: Symlinks,
) -> rustix::io::Result<OwnedFd> {
    if flags.contains(OFlags::CREATE) {
        return Err(Errno::INVAL);
    }
    let at = at.as_fd();
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        let resolve = match symlinks {
            Symlinks::Follow => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            Symlinks::Refuse => ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        };
        // EAGAIN: a `..` on the way raced a rename or mount elsewhere (the kernel's
        // RESOLVE_BENEATH check); asked again, then walked.
        for _ in 0..3 {
            match rustix::fs::openat2(at, path, flags, Mode::empty(), resolve) {
                // ENOSYS as above; EPERM is what a seccomp filter that does not know openat2
                // answers (systemd before 246 with the unit's `SystemCallErrorNumber=EPERM`):
                // no permission problem gives it for these flags (that is EACCES).
                Err(e @ (Errno::NOSYS | Errno::PERM)) => {
                    if !OPENAT2_MISSING.swap(true, Ordering::Relaxed) {
                        tracing::info!(error = %e, "openat2 is refused (systemd's RestrictSUIDSGID=, implied by DynamicUser=, an older seccomp filter, or an old kernel); paths in volumes are resolved one component at a time");
                    }
                    break;
                }
                Err(Errno::AGAIN) => continue,
                r => return r,
            }
        }
    }
    walk(at, path.as_bytes(), flags, symlinks)
}

/// The components of a path, without empty ones, and ending with `.` where the path ends with
/// `/` or `.`: a `.` the walk meets needs a directory before it, so `file/` is ENOTDIR.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if path.last() == Some(&b'/') && !out.is_empty() {
        out.push(b".".to_vec());
    }
    out
}

/// [`open`] without openat2 (see the module doc).
pub(crate) fn walk(
    at: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    symlinks: Symlinks,
) -> rustix::io::Result<OwnedFd> {
    match path.first() {
        None => return Err(Errno::NOENT),
        Some(b'/') => return Err(Errno::XDEV),
        Some(_) => {}
    }
    if flags.contains(OFlags::CREATE) {
        return Err(Errno::INVAL);
    }
    let flags = flags | OFlags::CLOEXEC;
    // Directories passed, innermost last; empty: at `at` itself.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut todo: VecDeque<Vec<u8>> = components(path).into();
    let mut links = 0;
    loop {
        let dir = dirs.last().map_or(at, |d| d.as_fd());
        let Some(name) = todo.pop_front() else {
            // The path names a directory ("", "a/.."): open it as asked.
            return rustix::fs::openat(dir, ".", flags, Mode::empty());
        };
        if name == b".." {
            dirs.pop().ok_or(Errno::XDEV)?;
            continue;
        }
        if name == b"." {
            // Where the walk stands is a directory already (a file before `.` was ENOTDIR).
            continue;
        }
        let node = rustix::fs::openat(
            dir,
            name.as_slice(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let kind = FileType::from_raw_mode(rustix::fs::fstat(&node)?.st_mode);
        // A symlink last, with the caller's O_NOFOLLOW, is not followed: it is opened as
        // open(2) takes it (below: ELOOP, ENOTDIR with O_DIRECTORY, the link with O_PATH).
        let nofollow = todo.is_empty() && flags.contains(OFlags::NOFOLLOW);
        if kind == FileType::Symlink && !nofollow {
            links += 1;
            if symlinks == Symlinks::Refuse || links > MAX_LINKS {
                return Err(Errno::LOOP);
            }
            let target = rustix::fs::readlinkat(&node, "", Vec::new())?;
            let target = target.as_bytes();
            if target.first() == Some(&b'/') {
                return Err(Errno::XDEV);
            }
            for c in components(target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if todo.is_empty() {
            // The caller's open of what was just looked at; a symlink swapped in since is ELOOP.
            return rustix::fs::openat(
                dir,
                name.as_slice(),
                flags | OFlags::NOFOLLOW,
                Mode::empty(),
            );
        }
        if kind != FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        dirs.push(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A volume with files, directories and symlinks of every kind, next to a secret outside it.
    fn fixture() -> (tempfile::TempDir, OwnedFd) {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("vol");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(top.path().join("secret"), b"outside").expect("write");
        std::fs::write(root.join("a/b/f.ts"), b"inside").expect("write");
        std::fs::write(root.join("top.ts"), b"top").expect("write");
        symlink("b/f.ts", root.join("a/rel")).expect("symlink");
        symlink("../top.ts", root.join("a/up")).expect("symlink");
        symlink("b", root.join("a/dirlink")).expect("symlink");
        symlink("../secret", root.join("escape")).expect("symlink");
        symlink("../../../secret", root.join("a/b/deep_escape")).expect("symlink");
        symlink(top.path().join("secret"), root.join("absolute")).expect("symlink");
        symlink("/etc", root.join("etc")).expect("symlink");
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("loop1", root.join("loop2")).expect("symlink");
        symlink("a/dirlink/../../a/b/f.ts", root.join("winding")).expect("symlink");
        symlink("top.ts/", root.join("slash")).expect("symlink");
        symlink("a/b/", root.join("dirslash")).expect("symlink");
        let fd = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open root");
        (top, fd)
    }

    const PATHS: &[&str] = &[
        "top.ts",
        "a/b/f.ts",
        "./a//b/./f.ts",
        "a/rel",
        "a/up",
        "a/dirlink/f.ts",
        "a/b/../../top.ts",
        "a/dirlink/../b/f.ts",
        "winding",
        "a",
        "",
        "..",
        "../secret",
        "a/../../secret",
        "escape",
        "a/b/deep_escape",
        "absolute",
        "etc/passwd",
        "/etc/passwd",
        "loop1",
        "missing",
        "top.ts/x",
        "a/b/f.ts/..",
        // A trailing `/` or `.` asks for a directory: ENOTDIR for a file, a symlink before
        // it followed (even with O_NOFOLLOW), ELOOP with NO_SYMLINKS.
        "top.ts/",
        "top.ts//",
        "top.ts/.",
        "a/b/f.ts/",
        "a/",
        "a/.",
        "./",
        "a/b/../",
        "a/rel/",
        "a/dirlink/",
        "a/dirlink/.",
        "a/up/",
        "slash",
        "dirslash",
        "dirslash/",
        "dirslash/f.ts",
        "escape/",
    ];

    /// Every flag set a caller could pass that changes how the last component is taken.
    fn flag_sets() -> [OFlags; 5] {
        let c = OFlags::CLOEXEC;
        [
            OFlags::RDONLY | c,
            OFlags::RDONLY | OFlags::NOFOLLOW | c,
            OFlags::PATH | OFlags::NOFOLLOW | c,
            OFlags::PATH | c,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | c,
        ]
    }

    /// What an open gave: the inode opened (a symlink itself, with O_PATH | O_NOFOLLOW).
    fn ident(fd: OwnedFd) -> (u64, u64) {
        let st = rustix::fs::fstat(&fd).expect("fstat");
        (st.st_dev as u64, st.st_ino as u64)
    }

    fn read(fd: OwnedFd) -> String {
        let mut f = std::fs::File::from(fd);
        let mut s = String::new();
        use std::io::Read;
        f.read_to_string(&mut s).map(|_| s).unwrap_or_default()
    }

    /// The walk answers exactly as openat2 does (the same inode, or the same errno), for every
    /// path of the fixture, both symlink policies, and every flag set that changes how the last
    /// component is taken (the caller's O_NOFOLLOW, O_PATH, O_DIRECTORY).
    #[test]
    fn walk_answers_as_openat2_does() {
        let (top, root) = fixture();
        let secret = ident(
            rustix::fs::open(
                top.path().join("secret"),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .expect("open secret"),
        );
        for symlinks in [Symlinks::Follow, Symlinks::Refuse] {
            let resolve = match symlinks {
                Symlinks::Follow => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
                Symlinks::Refuse => ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            };
            for flags in flag_sets() {
                for path in PATHS {
                    let kernel =
                        match rustix::fs::openat2(&root, *path, flags, Mode::empty(), resolve) {
                            Err(Errno::NOSYS) => return, // nothing to compare with here
                            r => r.map(ident),
                        };
                    let ours = walk(root.as_fd(), path.as_bytes(), flags, symlinks).map(ident);
                    assert_eq!(ours, kernel, "{path:?} with {symlinks:?} and {flags:?}");
                    assert_ne!(ours, Ok(secret), "{path:?} escaped");
                }
            }
        }
    }

    /// O_CREAT is refused by both ways of opening, before anything is looked up or made.
    #[test]
    fn create_is_refused() {
        let (top, root) = fixture();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC;
        for symlinks in [Symlinks::Follow, Symlinks::Refuse] {
            assert_eq!(
                open(&root, "new.ts", flags, symlinks).err(),
                Some(Errno::INVAL)
            );
            assert_eq!(
                walk(root.as_fd(), b"new.ts", flags, symlinks).err(),
                Some(Errno::INVAL)
            );
        }
        assert!(!top.path().join("vol/new.ts").exists());
    }

    #[test]
    fn walk_follows_inside_and_refuses_out() {
        let (_top, root) = fixture();
        let flags = OFlags::RDONLY;
        let get = |p: &str, s| walk(root.as_fd(), p.as_bytes(), flags, s).map(read);
        assert_eq!(get("a/rel", Symlinks::Follow), Ok("inside".into()));
        assert_eq!(get("a/up", Symlinks::Follow), Ok("top".into()));
        assert_eq!(get("winding", Symlinks::Follow), Ok("inside".into()));
        assert_eq!(get("a/rel", Symlinks::Refuse), Err(Errno::LOOP));
        assert_eq!(get("escape", Symlinks::Follow), Err(Errno::XDEV));
        assert_eq!(get("a/b/deep_escape", Symlinks::Follow), Err(Errno::XDEV));
        assert_eq!(get("absolute", Symlinks::Follow), Err(Errno::XDEV));
        assert_eq!(get("../secret", Symlinks::Follow), Err(Errno::XDEV));
        assert_eq!(get("loop1", Symlinks::Follow), Err(Errno::LOOP));
        assert_eq!(get("top.ts/x", Symlinks::Follow), Err(Errno::NOTDIR));
        assert_eq!(get("missing", Symlinks::Follow), Err(Errno::NOENT));
        // A directory, for the write path.
        let d = walk(
            root.as_fd(),
            b"a/b",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            Symlinks::Refuse,
        );
        assert!(d.is_ok());
        assert_eq!(
            walk(
                root.as_fd(),
                b"a/dirlink",
                OFlags::RDONLY | OFlags::DIRECTORY,
                Symlinks::Refuse
            )
            .err(),
            Some(Errno::LOOP)
        );
    }
}
