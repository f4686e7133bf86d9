//! systemd integration without libsystemd: readiness notifications (`sd_notify` protocol) and
//! socket activation (`LISTEN_FDS`).
//!
//! Notify: when `NOTIFY_SOCKET` is set, datagrams `READY=1` (after every listener is bound and the
//! volumes are checked), `RELOADING=1` + `MONOTONIC_USEC=…` / `READY=1` around a reload (as
//! `Type=notify-reload` expects), `STOPPING=1` when a drain starts, and `STATUS=…` lines; with
//! `WatchdogSec=` in the unit, `WATCHDOG=1` at half the interval from a task on the serving
//! runtime, so a process whose runtime no longer runs tasks is killed and restarted by systemd.
//! Socket activation: when `LISTEN_PID` is this process, descriptors 3.. are sockets passed by
//! systemd (`segd.socket`: listening TCP sockets, and UDP ones for HTTP/3); each is matched to a
//! configured listen address by its local address and used instead of binding, so
//! `systemctl restart` never refuses a connection.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use super::listener::{classify, Passed, Source};

/// Sends one notification; silently nothing when not run by systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The systemd watchdog interval (`WATCHDOG_USEC`, set by `WatchdogSec=`), when it applies to
/// this process: `WATCHDOG_PID` unset or this pid, or `upgraded` (a process started by SIGUSR2
/// inherits the old main pid there and becomes the main process with `MAINPID=`).
pub fn watchdog_interval(upgraded: bool) -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let ours = match std::env::var("WATCHDOG_PID") {
        Ok(p) => upgraded || p.parse::<u32>().is_ok_and(|p| p == std::process::id()),
        Err(_) => true,
    };
    (ours && usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half `interval` for as long as the runtime runs this task.
pub async fn keep_watchdog_fed(interval: std::time::Duration) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}

/// `RELOADING=1` with the monotonic timestamp `Type=notify-reload` requires.
pub fn notify_reloading() {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading configuration"
    ));
}

/// Sockets passed by systemd (listening TCP sockets and, for HTTP/3, UDP sockets), with their
/// local addresses. Takes them once: the environment variables are removed so children do not
/// inherit the claim, and the descriptors are made close-on-exec.
pub fn take_listeners() -> Vec<Passed> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // SAFETY: removing variables before any other thread reads the environment (called at start,
    // before the runtime spawns threads).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // Only sockets are ours to take: check before owning the descriptor.
        // SAFETY: the descriptor number was passed by systemd and stays open for this call; an
        // invalid one just makes getsockopt fail.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if rustix::net::sockopt::socket_type(borrowed).is_err() {
            tracing::warn!(fd, "inherited descriptor is not a socket; ignored");
            continue;
        }
        // SAFETY: systemd passed this descriptor to us and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match classify(owned) {
            Ok((addr, socket)) => out.push(Passed {
                addr,
                key: None,
                source: Source::Systemd,
                socket,
            }),
            Err(e) => tracing::warn!(fd, problem = %e, "inherited socket ignored"),
        }
    }
    out
}
