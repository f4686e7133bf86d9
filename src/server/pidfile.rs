//! `server.pid_file`: this process's pid, written atomically (a temporary file renamed over the
//! path, so a reader sees the old pid or the new one, never a partial write). An upgraded process
//! writes it before it tells the old one it is serving; a process removes it at a clean exit only
//! if it still holds its own pid (after an upgrade it names the new process).

use std::io;
use std::path::Path;

/// Writes this process's pid to `path`, making its directory when missing (`/run/segd` is made
/// by systemd only for the unit's run; a `segd serve` by hand finds none).
pub fn write(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let pid = std::process::id();
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = path.with_file_name(format!(".{}.{pid}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes `path` if it names this process.
pub fn remove_if_ours(path: &Path) {
    let ours =
        std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string());
    if ours {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the pid file");
        }
    }
}
