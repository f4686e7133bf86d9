//! Pipes that carry upload bodies from the socket to their file without passing through user
//! space: `splice(2)` moves the socket's received pages into the pipe by reference (on the
//! request thread: it never waits), and a writer thread splices them on into the temporary file,
//! the one copy a body needs (into the page cache). Reading into a buffer and writing it out costs
//! a second copy, and a large buffer per upload.
//!
//! A pipe holds [`CAPACITY`] bytes in 256 slots. A slot takes one received piece, up to a page:
//! a network that delivers 1,448-byte segments fills the slots at about 370 KB, more than most
//! segments, and [`Pipe::fill_from`] reports a pipe whose slots are taken as full. Idle pipes
//! are kept for the next upload, up to [`POOL`]; one that may hold bytes is closed instead.
//! Where pipes of that size cannot be had (the user's pipe quota, `fs.pipe-user-pages-soft`,
//! 16,384 pages by default, is spent), [`Pipe::take`] says so and the upload reads into buffers
//! as before; after a refusal no pipe is made for [`BACKOFF`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::pipe::{PipeFlags, SpliceFlags};

/// Bytes one pipe holds (256 pages: `fs.pipe-max-size`'s default, the most an unprivileged
/// process may ask for).
pub const CAPACITY: usize = 1 << 20;

/// Idle pipes kept at most (each is 256 pages of the user's pipe quota while it exists: 16 are
/// a quarter of the default quota).
const POOL: usize = 16;

/// After a pipe could not be made, uploads read into buffers for this long before the next try.
const BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// When a pipe could last not be made.
static REFUSED: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// Idle pipes, for the next upload.
struct Idle(Mutex<Vec<Pipe>>);

static IDLE: Idle = Idle(Mutex::new(Vec::new()));

impl Idle {
    fn pop(&self) -> Option<Pipe> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `p` if it is empty and there is room.
    fn keep(&self, p: Pipe) {
        if p.len == 0 {
            let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < POOL {
                idle.push(p);
            }
        }
    }
}

/// A pipe and how many bytes it holds.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    len: usize,
    cap: usize,
}

/// What [`Pipe::fill_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Moved this many bytes (0: the peer closed the connection).
    Moved(usize),
    /// The socket has bytes, but the pipe has no room for them: drain it first.
    Full,
}

impl Pipe {
    /// An idle pipe, else a new one of [`CAPACITY`]; `None` when none of that size can be made
    /// (nor was, within [`BACKOFF`]).
    pub fn take() -> Option<Pipe> {
        if let Some(p) = IDLE.pop() {
            return Some(p);
        }
        let refused = || REFUSED.lock().unwrap_or_else(|p| p.into_inner());
        if refused().is_some_and(|t| t.elapsed() < BACKOFF) {
            return None;
        }
        // Made without the lock held: other threads' uploads do not wait on these syscalls.
        match Pipe::new() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for uploads: reading them into buffers");
                *refused() = Some(std::time::Instant::now());
                None
            }
        }
    }

    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let cap = rustix::pipe::fcntl_setpipe_size(&write, CAPACITY)?;
        Ok(Pipe {
            read,
            write,
            len: 0,
            cap,
        })
    }

    /// Keeps an empty pipe for the next upload; one that may still hold bytes is closed.
    pub fn recycle(self) {
        IDLE.keep(self);
    }

    /// Bytes in the pipe.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that may still go in (if the pieces are whole pages).
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.len)
    }

    /// Moves up to `max` bytes the socket has received into the pipe, without waiting (the
    /// socket must be non-blocking): `WouldBlock` when it has none.
    pub fn fill_from(&mut self, socket: BorrowedFd<'_>, max: usize) -> io::Result<Filled> {
        let max = max.min(self.room());
        if max == 0 {
            return Ok(Filled::Full);
        }
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        match rustix::pipe::splice(socket, None, &self.write, None, max, flags) {
            Ok(n) => {
                self.len += n;
                Ok(Filled::Moved(n))
            }
            // Nothing moved: either the socket has nothing, or the pipe has no free slot.
            Err(rustix::io::Errno::AGAIN) => {
                if self.len > 0 && rustix::io::ioctl_fionread(socket)? > 0 {
                    Ok(Filled::Full)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Copies `chunks` into the pipe (without waiting), ahead of what is spliced in after them.
    /// All of them go in, or the pipe is spoiled: an error, and the pipe keeps count of what
    /// did go in (so it is closed, not kept for another upload). Meant for an empty pipe and a
    /// few KiB, which a pipe of [`CAPACITY`] always has room for.
    pub fn push(&mut self, chunks: &[bytes::Bytes]) -> io::Result<()> {
        let total: usize = chunks.iter().map(bytes::Bytes::len).sum();
        if total > self.room() || chunks.len() > 256 {
            return Err(io::Error::other("more bytes than the pipe has room for"));
        }
        let slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
        let n = loop {
            match rustix::io::writev(&self.write, &slices) {
                Err(rustix::io::Errno::INTR) => {}
                r => break r?,
            }
        };
        self.len += n;
        match n == total {
            true => Ok(()),
            false => Err(io::Error::other(format!(
                "the pipe took {n} of {total} bytes"
            ))),
        }
    }

    /// Moves everything in the pipe to the end of `file` (blocking: call it off the request
    /// threads). A filesystem that cannot take spliced pages gets them copied.
    pub fn drain_into(&mut self, file: &mut File) -> io::Result<()> {
        while self.len > 0 {
            // Non-blocking: the pipe holds `len` bytes, and a shortfall is an error, not a wait.
            let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
            match rustix::pipe::splice(&self.read, None, file.as_fd(), None, self.len, flags) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.len -= n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::INVAL) => return self.copy_into(file),
                Err(rustix::io::Errno::AGAIN) => return Err(short()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// [`Pipe::drain_into`] for a file that takes no splice: through a buffer.
    fn copy_into(&mut self, file: &mut File) -> io::Result<()> {
        let mut buf = vec![0; self.len.min(64 * 1024)];
        let mut read = File::from(self.read.try_clone()?);
        while self.len > 0 {
            let want = self.len.min(buf.len());
            let n = match read.read(&mut buf[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(short()),
                Err(e) => return Err(e),
            };
            file.write_all(&buf[..n])?;
            self.len -= n;
        }
        Ok(())
    }
}

/// A pipe that holds fewer bytes than were counted into it: an error, never a wait.
fn short() -> io::Error {
    io::Error::other("the pipe holds fewer bytes than it was given")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::net::{TcpListener, TcpStream};

    fn connected() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        s.set_nonblocking(true).expect("nonblocking");
        (c, s)
    }

    /// Fills from the socket until `want` bytes are in the pipe.
    fn fill(p: &mut Pipe, s: &TcpStream, want: usize) {
        while p.len() < want {
            match p.fill_from(s.as_fd(), want - p.len()) {
                Ok(Filled::Moved(n)) => assert!(n > 0, "closed early"),
                Ok(Filled::Full) => panic!("full at {} bytes", p.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn moves_socket_bytes_into_a_file_in_order() {
        let (mut c, s) = connected();
        let mut p = Pipe::new().expect("pipe");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&body).expect("send");
        let mut f = tempfile::tempfile().expect("file");
        f.write_all(b"head:").expect("write");
        fill(&mut p, &s, 150_000);
        p.drain_into(&mut f).expect("drain");
        assert!(p.is_empty());
        fill(&mut p, &s, 50_000);
        p.drain_into(&mut f).expect("drain");
        f.rewind().expect("rewind");
        let mut got = Vec::new();
        f.read_to_end(&mut got).expect("read");
        assert_eq!(&got[..5], b"head:");
        assert!(got[5..] == body[..], "bytes differ");
        // Nothing more in the socket: would block, not "full".
        let e = p.fill_from(s.as_fd(), 10).expect_err("nothing to move");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // The peer closes: zero bytes moved.
        drop(c);
        let mut closed = None;
        for _ in 0..1000 {
            match p.fill_from(s.as_fd(), 10) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                r => {
                    closed = Some(r.expect("fill"));
                    break;
                }
            }
        }
        assert_eq!(closed, Some(Filled::Moved(0)));
    }

    #[test]
    fn pushed_bytes_come_before_the_spliced_ones_in_one_write() {
        let (mut c, s) = connected();
        let mut p = Pipe::new().expect("pipe");
        let head = [
            bytes::Bytes::from_static(b"first "),
            bytes::Bytes::from(vec![b'x'; 3000]),
        ];
        p.push(&head).expect("push");
        assert_eq!(p.len(), 3006);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
        c.write_all(&body).expect("send");
        fill(&mut p, &s, 3006 + body.len());
        let mut f = tempfile::tempfile().expect("file");
        p.drain_into(&mut f).expect("drain");
        f.rewind().expect("rewind");
        let mut got = Vec::new();
        f.read_to_end(&mut got).expect("read");
        assert_eq!(&got[..6], b"first ");
        assert!(got[6..3006].iter().all(|&b| b == b'x'));
        assert!(got[3006..] == body[..], "bytes differ");
        // More than the pipe has room for: refused, nothing counted in.
        let cap = p.room();
        let e = p
            .push(&[bytes::Bytes::from(vec![0; cap + 1])])
            .expect_err("too much");
        assert!(e.to_string().contains("room"), "{e}");
        assert!(p.is_empty());
    }

    #[test]
    fn a_full_pipe_says_so_while_the_socket_has_more() {
        let (mut c, s) = connected();
        let mut p = Pipe::new().expect("pipe");
        let body = vec![7u8; p.room() + 100_000];
        let sender = std::thread::spawn(move || c.write_all(&body).map(|()| c));
        let cap = p.room();
        fill(&mut p, &s, cap);
        assert_eq!(p.fill_from(s.as_fd(), 1000).expect("fill"), Filled::Full);
        let mut f = tempfile::tempfile().expect("file");
        p.drain_into(&mut f).expect("drain");
        fill(&mut p, &s, 100_000);
        p.drain_into(&mut f).expect("drain");
        assert_eq!(f.metadata().expect("stat").len(), (cap + 100_000) as u64);
        drop(sender.join().expect("sender").expect("sent"));
    }

    #[test]
    fn a_file_that_takes_no_splice_gets_a_copy() {
        // splice(2) refuses a file opened for appending (EINVAL), as some filesystems refuse any.
        let (mut c, s) = connected();
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("file");
        let mut p = Pipe::new().expect("pipe");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        c.write_all(&body).expect("send");
        fill(&mut p, &s, body.len());
        p.drain_into(&mut f).expect("drain");
        assert!(p.is_empty());
        assert!(std::fs::read(&path).expect("read") == body, "bytes differ");
    }

    #[test]
    fn a_pipe_holding_less_than_counted_fails_instead_of_waiting() {
        let mut p = Pipe::new().expect("pipe");
        p.len = 10;
        let mut f = tempfile::tempfile().expect("file");
        assert!(p.drain_into(&mut f).is_err());
    }

    #[test]
    fn only_empty_pipes_are_kept() {
        let idle = Idle(Mutex::new(Vec::new()));
        let mut used = Pipe::new().expect("pipe");
        used.len = 1;
        idle.keep(used);
        assert!(idle.pop().is_none(), "a pipe that may hold bytes is closed");
        idle.keep(Pipe::new().expect("pipe"));
        let again = idle.pop().expect("kept");
        assert!(again.is_empty());
        assert_eq!(again.room(), again.cap);
        for _ in 0..POOL + 3 {
            idle.keep(Pipe::new().expect("pipe"));
        }
        assert_eq!(idle.0.lock().expect("lock").len(), POOL);
    }
}
