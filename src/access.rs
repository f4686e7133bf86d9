//! The access log: one line per request, written off the request path.
//!
//! Requests format their line and hand it to a bounded channel; one writer thread owns the file
//! (or stdout), buffers, and flushes at least every 200 ms. When the channel is full the line is
//! dropped and counted (`segd_access_log_dropped_total`): a slow log disk must never slow a
//! response. A reload opens a new writer, which also reopens the file (log rotation); so does
//! [`AccessLog::reopen`] (SIGUSR1, as nginx: the same writer, the file opened anew by its path,
//! nothing else re-read).
//!
//! Fields: time, client address (the trusted client-IP header when the request passed origin
//! auth), peer, method, path (never the token: the path-embedded token segment and the query are
//! left out), status, body bytes, duration, protocol, cache status (`hit`, `miss`, `bypass` for
//! sendfile bodies, `none` when no body), token key id, request id.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{AccessLog as Target, LogConfig, LogFormat};

/// The longest a line waits in the writer's buffer before it reaches the file.
const FLUSH: Duration = Duration::from_millis(200);

/// Everything one line says.
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: IpAddr,
    pub peer: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub proto: &'a str,
    /// TLS version, when the connection was TLS.
    pub tls: Option<&'a str>,
    pub cache: &'a str,
    pub key_id: Option<&'a str>,
    pub request_id: &'a str,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    /// False when the body did not reach its end (failed mid-way, client gone, timed out).
    pub complete: bool,
}

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    /// Set by [`AccessLog::reopen`]; the writer thread reopens its file before its next write.
    reopen: Arc<AtomicBool>,
    format: LogFormat,
    /// `segd_access_log_dropped_total`: shared by every log a reload opens.
    dropped: prometheus::IntCounter,
}

fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, da, h, mi, s) = civil(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, da, h, mi, s) = civil(d.as_secs() as i64);
    format!(
        "{da:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

/// JSON string escaping (RFC 8259) for the few free-text fields.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Quotes for the combined format: no raw quotes or control characters can break the line.
fn clf_str(s: &str) -> String {
    s.chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect()
}

impl Entry<'_> {
    pub fn format(&self, format: LogFormat) -> String {
        let ms = self.duration.as_secs_f64() * 1000.0;
        match format {
            LogFormat::Json => {
                let mut o = String::with_capacity(320);
                o.push_str("{\"time\":\"");
                o.push_str(&rfc3339(self.time));
                o.push_str("\",\"client\":\"");
                o.push_str(&self.client.to_string());
                o.push_str("\",\"peer\":\"");
                o.push_str(&self.peer.to_string());
                o.push_str("\",\"method\":");
                json_str(&mut o, self.method);
                o.push_str(",\"path\":");
                json_str(&mut o, self.path);
                o.push_str(&format!(
                    ",\"status\":{},\"bytes\":{},\"duration_ms\":{ms:.3},\"proto\":\"{}\",\"tls\":{},\"cache\":\"{}\",\"key_id\":",
                    self.status,
                    self.bytes,
                    self.proto,
                    self.tls.map_or("null".to_string(), |v| format!("\"{v}\"")),
                    self.cache
                ));
                match self.key_id {
                    Some(k) => json_str(&mut o, k),
                    None => o.push_str("null"),
                }
                o.push_str(",\"request_id\":");
                json_str(&mut o, self.request_id);
                o.push_str(",\"user_agent\":");
                match self.user_agent {
                    Some(u) => json_str(&mut o, u),
                    None => o.push_str("null"),
                }
                o.push_str(if self.complete {
                    ",\"complete\":true}"
                } else {
                    ",\"complete\":false}"
                });
                o
            }
            LogFormat::Combined => format!(
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" rt={ms:.3} tls={} cache={} key={} rid={} peer={} complete={}",
                self.client,
                clf_time(self.time),
                clf_str(self.method),
                clf_str(self.path),
                match self.proto {
                    "h2" => "HTTP/2.0",
                    "h3" => "HTTP/3.0",
                    _ => "HTTP/1.1",
                },
                self.status,
                self.bytes,
                clf_str(self.referer.unwrap_or("-")),
                clf_str(self.user_agent.unwrap_or("-")),
                self.tls.unwrap_or("-"),
                self.cache,
                self.key_id.unwrap_or("-"),
                clf_str(self.request_id),
                self.peer,
                if self.complete { "yes" } else { "no" },
            ),
        }
    }
}

impl AccessLog {
    /// Opens the target and starts its writer thread (no thread when the log is off).
    pub fn open(cfg: &LogConfig, dropped: prometheus::IntCounter) -> std::io::Result<AccessLog> {
        let reopen = Arc::new(AtomicBool::new(false));
        let sink: Box<dyn Write + Send> = match &cfg.access {
            Target::Off => {
                return Ok(AccessLog {
                    tx: None,
                    reopen,
                    format: cfg.format,
                    dropped,
                })
            }
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(append(p)?),
        };
        let (tx, rx) = sync_channel::<String>(16_384);
        let path = match &cfg.access {
            Target::File(p) => Some(p.clone()),
            _ => None,
        };
        let asked = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("segd-access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, sink);
                // When the oldest line not yet flushed was written: no line waits in the
                // buffer longer than FLUSH, however steadily lines come.
                let mut oldest: Option<Instant> = None;
                loop {
                    if asked.swap(false, Ordering::Relaxed) {
                        // Lines queued before the signal go to the old file (logrotate has
                        // renamed it); the next ones to a new file at the configured path.
                        let _ = w.flush();
                        if let Some(p) = &path {
                            match append(p) {
                                Ok(f) => {
                                    w = std::io::BufWriter::with_capacity(64 * 1024, Box::new(f));
                                    tracing::info!(path = %p.display(), "access log reopened");
                                }
                                Err(e) => tracing::error!(
                                    path = %p.display(),
                                    error = %e,
                                    "cannot reopen the access log; still writing to the old file"
                                ),
                            }
                        }
                    }
                    let wait = oldest.map_or(FLUSH, |t| FLUSH.saturating_sub(t.elapsed()));
                    match rx.recv_timeout(wait) {
                        Ok(line) => {
                            let _ = w.write_all(line.as_bytes());
                            let _ = w.write_all(b"\n");
                            let first = *oldest.get_or_insert_with(Instant::now);
                            if first.elapsed() >= FLUSH {
                                let _ = w.flush();
                                oldest = None;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = w.flush();
                            oldest = None;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                let _ = w.flush();
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            reopen,
            format: cfg.format,
            dropped,
        })
    }

    /// Reopens the log file by its path (after log rotation renamed it), within the writer's
    /// 200 ms tick; lines already queued still go to the old file. Nothing for stdout or off.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line; never blocks.
    pub fn log(&self, e: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(e.format(self.format)) {
            self.dropped.inc();
        }
    }
}

/// The log file, opened for appending (created if missing).
fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The request's id: a well-formed incoming `X-Request-Id` (a CDN's), else a new one.
pub fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return v.to_string();
        }
    }
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
    });
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}",
        seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let e = Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "203.0.113.9".parse().expect("ip"),
            peer: "127.0.0.1:5000".parse().expect("addr"),
            method: "GET",
            path: "/vod/t1/a \"b\".ts",
            status: 206,
            bytes: 1234,
            duration: Duration::from_micros(1500),
            proto: "h1",
            tls: None,
            cache: "bypass",
            key_id: Some("k1"),
            request_id: "abc",
            user_agent: Some("ffplay\n"),
            referer: None,
            complete: true,
        };
        let j = e.format(LogFormat::Json);
        assert!(
            j.starts_with("{\"time\":\"2023-11-14T22:13:20.123Z\",\"client\":\"203.0.113.9\""),
            "{j}"
        );
        assert!(j.contains("\"path\":\"/vod/t1/a \\\"b\\\".ts\""), "{j}");
        assert!(j.contains("\"status\":206,\"bytes\":1234,\"duration_ms\":1.500,\"proto\":\"h1\",\"tls\":null,\"cache\":\"bypass\",\"key_id\":\"k1\",\"request_id\":\"abc\",\"user_agent\":\"ffplay\\u000a\",\"complete\":true}"), "{j}");
        let c = e.format(LogFormat::Combined);
        assert!(c.starts_with("203.0.113.9 - - [14/Nov/2023:22:13:20 +0000] \"GET /vod/t1/a _b_.ts HTTP/1.1\" 206 1234 \"-\" \"ffplay_\""), "{c}");
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn request_ids() {
        let mut h = http::HeaderMap::new();
        assert_ne!(request_id(&h), request_id(&h));
        h.insert("x-request-id", http::HeaderValue::from_static("cdn-1234"));
        assert_eq!(request_id(&h), "cdn-1234");
        h.insert(
            "x-request-id",
            http::HeaderValue::from_static("bad id with spaces"),
        );
        assert_eq!(request_id(&h).len(), 16);
    }
}
