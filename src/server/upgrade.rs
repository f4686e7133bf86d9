//! Zero-downtime upgrade by passing the listening sockets to a new process (SIGUSR2).
//!
//! The old process keeps a spare copy of every socket it serves on (public TCP, TLS TCP, QUIC
//! UDP, admin) and, on SIGUSR2, starts the program it was started as — the path resolved at
//! start, so a binary newly installed there (by rename) is what runs — with the same arguments.
//! The copies are inherited (not close-on-exec in the child only) and named in
//! `SEGD_INHERITED_FDS` as `fd:config-key` pairs; the child matches them to its own config by
//! local address (see `listener`) and binds fresh for anything not passed. Nothing is ever
//! closed or re-bound, so the kernel's accept queues carry over: no connection is refused.
//!
//! Readiness: the child inherits the write end of a pipe (`SEGD_UPGRADE_READY_FD`) and writes to
//! it once it is serving (after its banner, pid file and sd_notify `MAINPID=`/`READY=1`). The old
//! process waits up to [`READY_TIMEOUT`]; on success it stops accepting (dropping its copies; the
//! sockets live on in the child) and drains its connections. If the child exits first, or does
//! not become ready in time (it is then stopped), the old process logs why and keeps serving, and
//! a later SIGUSR2 tries again. One upgrade at a time.
//!
//! HTTP/3: the UDP socket cannot be split, so both processes read it while the old one drains;
//! a `SOCK_SEQPACKET` pair per QUIC socket (`SEGD_QUIC_LINKS`) carries each datagram to the
//! process whose connection it is (`quic_share`).
//!
//! The QUIC token key (`tls::QuicTokenKey`) goes through a pipe of its own
//! (`SEGD_QUIC_TOKEN_KEY_FD`), so tokens either process issued are accepted by the other.
//!
//! The child only believes the variables when `SEGD_UPGRADE_PARENT` is its parent's pid, so a
//! stray copy of the environment in some other process is ignored.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::listener::{classify, Passed, Source};
use super::quic_share::{Link, Share};
use crate::tls::QuicTokenKey;

const ENV_FDS: &str = "SEGD_INHERITED_FDS";
const ENV_READY: &str = "SEGD_UPGRADE_READY_FD";
const ENV_PARENT: &str = "SEGD_UPGRADE_PARENT";
/// `fd/local-address/tag` for each QUIC socket's link to the old process (`quic_share`).
const ENV_QUIC_LINKS: &str = "SEGD_QUIC_LINKS";
/// A pipe holding the QUIC token key (`tls::QuicTokenKey`), so tokens stay valid across the
/// upgrade.
const ENV_QUIC_KEY: &str = "SEGD_QUIC_TOKEN_KEY_FD";

/// How long the old process waits for the new one to say it is serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new process that failed is given to exit before it is killed.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

// === impl Exec ===

/// The program and arguments this process was started with, resolved at start (before a new
/// binary may be renamed over the path).
#[derive(Debug)]
pub struct Exec {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Exec {
    /// `argv[0]` made absolute when it names a path; else the `PATH` entry it was found in; else
    /// the running executable. Symbolic links are not resolved: a link re-pointed at a new
    /// version is followed at upgrade time.
    pub fn capture() -> Result<Exec, String> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_default();
        let args: Vec<OsString> = argv.collect();
        let program = if argv0.as_bytes().contains(&b'/') {
            std::path::absolute(&argv0)
                .map_err(|e| format!("{}: {e}", Path::new(&argv0).display()))?
        } else {
            let found = std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(&argv0))
                    .find(|c| !argv0.is_empty() && is_executable(c))
            });
            match found {
                Some(p) => std::path::absolute(&p).unwrap_or(p),
                None => std::env::current_exe().map_err(|e| format!("current executable: {e}"))?,
            }
        };
        Ok(Exec { program, args })
    }

    pub fn program(&self) -> &Path {
        &self.program
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// === impl Handover (the new process's side) ===

/// What a process started by an upgrade was given besides its sockets: the pipe on which it
/// says it is serving, and the old process's pid.
#[derive(Debug)]
pub struct Handover {
    ready: OwnedFd,
    parent: u32,
    quic_links: Vec<QuicLink>,
    quic_token_key: Option<QuicTokenKey>,
}

/// The old process's end of a QUIC socket's link (`quic_share`), and its connection-ID tag.
#[derive(Debug)]
struct QuicLink {
    addr: std::net::SocketAddr,
    tag: u8,
    fd: OwnedFd,
}

/// Reads and removes the upgrade variables: the passed sockets, and the handover when this
/// process was started by an upgrade. Call before any thread exists (it edits the environment).
pub fn take_handover() -> (Vec<Passed>, Option<Handover>) {
    let fds = std::env::var(ENV_FDS).ok();
    let ready = std::env::var(ENV_READY).ok();
    let parent = std::env::var(ENV_PARENT).ok();
    let quic_links = std::env::var(ENV_QUIC_LINKS).ok();
    let quic_key = std::env::var(ENV_QUIC_KEY).ok();
    // SAFETY: called at start, before the runtime spawns threads (nothing reads the environment
    // concurrently).
    unsafe {
        std::env::remove_var(ENV_FDS);
        std::env::remove_var(ENV_READY);
        std::env::remove_var(ENV_PARENT);
        std::env::remove_var(ENV_QUIC_LINKS);
        std::env::remove_var(ENV_QUIC_KEY);
    }
    if fds.is_none() && ready.is_none() && parent.is_none() {
        return (Vec::new(), None);
    }
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    let parent = parent.and_then(|p| p.parse::<u32>().ok());
    let Some(parent) = parent.filter(|p| *p == ppid) else {
        tracing::warn!(
            "{ENV_PARENT} does not name this process's parent: inherited sockets ignored"
        );
        return (Vec::new(), None);
    };
    // Each number is owned once, whatever the variables say (a number named twice would be
    // closed twice).
    let mut claimed = std::collections::HashSet::new();
    let mut claim = |fd: RawFd| {
        let new = fd > 2 && claimed.insert(fd);
        if !new {
            tracing::warn!(
                fd,
                "an upgrade variable names a descriptor already taken, or 0-2; ignored"
            );
        }
        new
    };
    let mut passed = Vec::new();
    for item in fds
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (fd, key) = item.split_once(':').unwrap_or((item, ""));
        let Some(fd) = fd.parse::<RawFd>().ok() else {
            tracing::warn!(item, "{ENV_FDS}: not a descriptor number; ignored");
            continue;
        };
        if !claim(fd) {
            continue;
        }
        let Some(owned) = own_socket(fd) else {
            tracing::warn!(fd, "{ENV_FDS}: not a socket; ignored");
            continue;
        };
        match classify(owned) {
            Ok((addr, socket)) => passed.push(Passed {
                addr,
                key: (!key.is_empty()).then(|| key.to_string()),
                source: Source::Upgrade,
                socket,
            }),
            Err(e) => tracing::warn!(fd, problem = %e, "inherited socket ignored"),
        }
    }
    let ready = ready
        .and_then(|r| r.parse::<RawFd>().ok())
        .filter(|fd| claim(*fd))
        .and_then(own_pipe);
    let quic_links = quic_links
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            let link = parse_quic_link(item, &mut claim);
            if link.is_none() {
                tracing::warn!(
                    item,
                    "{ENV_QUIC_LINKS}: not fd/address/tag of a socket pair; ignored"
                );
            }
            link
        })
        .collect();
    let quic_token_key = quic_key.and_then(|fd| {
        let key = fd
            .parse::<RawFd>()
            .ok()
            .filter(|fd| claim(*fd))
            .and_then(read_quic_key);
        if key.is_none() {
            tracing::warn!(fd, "{ENV_QUIC_KEY}: not a pipe holding a key; QUIC tokens of the old process will be refused");
        }
        key
    });
    match ready {
        Some(ready) => (
            passed,
            Some(Handover {
                ready,
                parent,
                quic_links,
                quic_token_key,
            }),
        ),
        None => {
            tracing::warn!("{ENV_READY} does not name a pipe: the old process cannot be told");
            (passed, None)
        }
    }
}

/// Owns `fd` if it is an open socket (checked before taking ownership).
fn own_socket(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: the number was passed by our parent (checked above) and stays open for this call;
    // a closed or foreign number just makes getsockopt fail.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::net::sockopt::socket_type(borrowed).ok()?;
    // SAFETY: an open socket our parent passed to us, named once in the variable; nothing else
    // in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One `fd/address/tag` item of the QUIC links variable, owning the descriptor if it is a
/// `SOCK_SEQPACKET` socket.
fn parse_quic_link(item: &str, claim: &mut impl FnMut(RawFd) -> bool) -> Option<QuicLink> {
    let mut parts = item.splitn(3, '/');
    let fd = parts.next()?.parse::<RawFd>().ok()?;
    let addr = parts.next()?.parse().ok()?;
    let tag = parts.next()?.parse::<u8>().ok()?;
    if !claim(fd) {
        return None;
    }
    // SAFETY: as in `own_socket`: getsockopt on a closed number fails harmlessly.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if rustix::net::sockopt::socket_type(borrowed).ok()? != rustix::net::SocketType::SEQPACKET {
        return None;
    }
    // SAFETY: a socket our parent passed to us, named once in the variable.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Some(QuicLink { addr, tag, fd })
}

/// The QUIC token key from the pipe numbered `fd` (closed after).
fn read_quic_key(fd: RawFd) -> Option<QuicTokenKey> {
    let pipe = own_pipe(fd)?;
    let mut bytes = [0u8; QuicTokenKey::LEN];
    let mut got = 0;
    while got < bytes.len() {
        match rustix::io::read(&pipe, &mut bytes[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(QuicTokenKey::from_bytes(bytes))
}

/// Owns `fd` if it is a pipe (the readiness pipe's write end, the key pipe's read end), made
/// close-on-exec.
fn own_pipe(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: as in `own_socket`: fstat on a closed number fails harmlessly.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = rustix::fs::fstat(borrowed).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
        return None;
    }
    // SAFETY: a pipe our parent passed to us; nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(owned.as_fd(), rustix::io::FdFlags::CLOEXEC).ok()?;
    Some(owned)
}

impl Handover {
    /// The old process's pid.
    pub fn parent(&self) -> u32 {
        self.parent
    }

    /// The old process's connection-ID tag, if it passed QUIC sockets.
    pub fn quic_tag(&self) -> Option<u8> {
        self.quic_links.first().map(|l| l.tag)
    }

    /// The old process's QUIC token key, if it passed one.
    pub fn take_quic_token_key(&mut self) -> Option<QuicTokenKey> {
        self.quic_token_key.take()
    }

    /// The link to the old process for the QUIC socket bound to `addr`.
    pub fn take_quic_link(&mut self, addr: std::net::SocketAddr) -> Option<OwnedFd> {
        let i = self.quic_links.iter().position(|l| l.addr == addr)?;
        Some(self.quic_links.swap_remove(i).fd)
    }

    /// Tells the old process this one is serving (it then stops accepting and drains).
    pub fn ready(self) {
        let msg = format!("ready {}\n", std::process::id());
        // The old process may have given up on us (its timeout, or a SIGTERM): nothing to do then.
        if let Err(e) = rustix::io::write(&self.ready, msg.as_bytes()) {
            tracing::warn!(error = %e, "cannot tell the old process this one is serving");
        }
    }
}

/// Resolves once the old process has exited (this process is then re-parented).
pub async fn parent_exited(parent: u32) {
    loop {
        let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        if ppid != parent {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// === impl Upgrader (the old process's side) ===

/// Spare copies of the sockets to pass on, and how to start the new process.
pub struct Upgrader {
    exec: Result<Exec, String>,
    fds: Vec<(OwnedFd, String)>,
    quic: Vec<(std::net::SocketAddr, Arc<Share>)>,
    quic_token_key: Option<QuicTokenKey>,
}

impl Upgrader {
    pub fn new(exec: Result<Exec, String>) -> Upgrader {
        Upgrader {
            exec,
            fds: Vec::new(),
            quic: Vec::new(),
            quic_token_key: None,
        }
    }

    /// Keeps a copy (close-on-exec) of `sock`, bound for config key `key`, to pass on.
    pub fn keep(&mut self, sock: &impl AsFd, key: &str) -> io::Result<()> {
        let fd = sock.as_fd().try_clone_to_owned()?;
        self.fds.push((fd, key.to_string()));
        Ok(())
    }

    /// Joins the QUIC socket bound to `addr` (kept with `keep`) to the next process's endpoint
    /// on it, once one is started (`quic_share`).
    pub fn share_quic(&mut self, addr: std::net::SocketAddr, share: Arc<Share>) {
        self.quic.push((addr, share));
    }

    /// Hands `key` to the next process (with its QUIC sockets).
    pub fn pass_quic_token_key(&mut self, key: QuicTokenKey) {
        self.quic_token_key = Some(key);
    }

    /// Starts the new process with every kept socket, a link per QUIC socket, the QUIC token key
    /// and the readiness pipe.
    pub fn start(&self) -> io::Result<Pending> {
        let exec = self
            .exec
            .as_ref()
            .map_err(|e| io::Error::other(format!("the program path is unknown ({e})")))?;
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let spec = self
            .fds
            .iter()
            .map(|(fd, key)| format!("{}:{key}", fd.as_raw_fd()))
            .collect::<Vec<_>>()
            .join(",");
        let mut pass: Vec<RawFd> = self.fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        pass.push(tx.as_raw_fd());
        // Their ends stay open here until the child has its copies, then close (so a link whose
        // child is gone reads as closed).
        let mut theirs = Vec::new();
        let mut links = Vec::new();
        let mut cmd_env = Vec::new();
        for (addr, share) in &self.quic {
            let (ours, their) = Link::pair()?;
            share.set_successor(ours);
            links.push(format!("{}/{addr}/{}", their.as_raw_fd(), share.tag()));
            pass.push(their.as_raw_fd());
            theirs.push(their);
        }
        if let Some(key) = &self.quic_token_key {
            // 64 bytes fit in any pipe's buffer: written whole before the child exists.
            let (key_rx, key_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let mut left = &key.bytes()[..];
            while !left.is_empty() {
                let n = rustix::io::write(&key_tx, left)?;
                left = &left[n..];
            }
            cmd_env.push((ENV_QUIC_KEY, key_rx.as_raw_fd().to_string()));
            pass.push(key_rx.as_raw_fd());
            theirs.push(key_rx);
        }
        let mut cmd = Command::new(&exec.program);
        cmd.args(&exec.args)
            .env(ENV_FDS, spec)
            .env(ENV_READY, tx.as_raw_fd().to_string())
            .env(ENV_PARENT, std::process::id().to_string())
            .env(ENV_QUIC_LINKS, links.join(","))
            .envs(cmd_env);
        // SAFETY: between fork and exec only fcntl(2), which is async-signal-safe, on descriptor
        // numbers this process holds open (`self.fds`, `tx`, `theirs`) until `spawn` returns; clearing
        // FD_CLOEXEC in the child makes exactly these survive the exec.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &pass {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(tx);
        drop(theirs);
        let ready = tokio::net::unix::pipe::Receiver::from_owned_fd(rx)?;
        tracing::info!(pid = child.id(), program = %exec.program.display(), "new process started; waiting for it to serve");
        Ok(Pending { child, ready })
    }
}

/// A new process started, not yet serving.
pub struct Pending {
    child: Child,
    ready: tokio::net::unix::pipe::Receiver,
}

impl Pending {
    /// Resolves with the new process's pid once it is serving, or with why not. A new process
    /// that failed has exited (or been stopped) by the time this returns.
    pub async fn wait(mut self, timeout: Duration) -> Result<u32, String> {
        let pid = self.child.id();
        let mut buf = [0u8; 64];
        match tokio::time::timeout(timeout, self.ready.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(pid),
            Ok(Ok(_)) => {
                let status = reap(self.child, false).await;
                Err(format!(
                    "the new process (pid {pid}) ended before it was serving: {status}"
                ))
            }
            Ok(Err(e)) => {
                let status = reap(self.child, true).await;
                Err(format!(
                    "cannot read the new process's readiness ({e}); stopped it: {status}"
                ))
            }
            Err(_) => {
                let status = reap(self.child, true).await;
                Err(format!(
                    "the new process (pid {pid}) was not serving within {}s; stopped it: {status}",
                    timeout.as_secs()
                ))
            }
        }
    }
}

/// Waits for a failed new process to exit (after SIGTERM when `terminate`), killing it after
/// [`REAP_TIMEOUT`]; describes how it ended.
async fn reap(mut child: Child, terminate: bool) -> String {
    let pid = child.id();
    let waited = tokio::task::spawn_blocking(move || {
        if terminate {
            // SAFETY: kill(2) on our own child, which has not been reaped (so the pid is still
            // its); no memory is involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + REAP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return describe(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    return match child.wait() {
                        Ok(st) => format!("{} (killed)", describe(st)),
                        Err(e) => format!("killed; cannot wait for it: {e}"),
                    };
                }
                Err(e) => return format!("cannot wait for it: {e}"),
            }
        }
    })
    .await;
    waited.unwrap_or_else(|e| format!("cannot wait for it: {e}"))
}

fn describe(st: ExitStatus) -> String {
    st.to_string()
}
