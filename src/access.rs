//! The access log: one line per request, written off the request path.
//!
//! Requests format their line and hand it to a bounded channel; one writer thread owns the file
//! (or stdout), buffers, and flushes at least every 200 ms. When the channel is full the line is
//! dropped and counted (`segd_access_log_dropped_total`): a slow log disk must never slow a
//! response. A write that fails (a full log disk, a device error) drops the lines it could not
//! write whole, counts them the same way and warns (at most once a minute, naming the file and
//! the error); the bytes of a line written only in part are cut off the file again, so the file
//! only ever holds whole lines. A reload opens a new writer, which also reopens the file (log rotation); so does
//! [`AccessLog::reopen`] (SIGUSR1, as nginx: the same writer, the file opened anew by its path,
//! nothing else re-read).
//!
//! Fields: time, client address (the trusted client-IP header when the request passed origin
//! auth), peer, method, path (never the token: the path-embedded token segment and the query are
//! left out, and a `<name>=` segment anywhere else is cut to [`REDACTED`] by [`redact_path`]),
//! status, body bytes, duration, protocol, cache status (`hit`, `miss`, `bypass` for sendfile
//! bodies, `none` when no body), token key id, request id; the combined format adds the
//! `Referer` (its token segments and query parameters cut the same way, [`redact_url`]) and the
//! `User-Agent`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{AccessLog as Target, LogConfig, LogFormat};

/// What a token's value becomes in a logged path or Referer: `__token__=<redacted>`.
pub const REDACTED: &str = "<redacted>";

/// Percent-decodes leniently (a malformed escape stays as it is): only to recognise a token.
fn lenient_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            if let (Some(h), Some(l)) = (
                raw.get(i + 1).and_then(|&b| hex(b)),
                raw.get(i + 2).and_then(|&b| hex(b)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// What the log may show of `piece` (a path segment or a query parameter, raw), looked at
/// decoded however often it was percent-encoded (up to three times), in any letter case:
/// `<name>=…` is a client's token, shown as `<name>=<redacted>`; a piece holding `hmac=` is
/// the end of one whose other fields a `/` or `&` inside it split off (`acl=/vod/*` raw),
/// shown as `<redacted>`; anything else as it is.
fn redacted(name: &str, piece: &str) -> Option<String> {
    let mut bytes = piece.as_bytes().to_vec();
    for _ in 0..4 {
        if bytes.len() > name.len()
            && bytes[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && bytes[name.len()] == b'='
        {
            return Some(format!("{name}={REDACTED}"));
        }
        if bytes.windows(5).any(|w| w.eq_ignore_ascii_case(b"hmac=")) {
            return Some(REDACTED.to_string());
        }
        if !bytes.contains(&b'%') {
            return None;
        }
        bytes = lenient_decode(&bytes);
    }
    None
}

/// `s` split at each of `seps`, every piece that holds a token (or its `hmac=`) redacted.
fn redact_pieces(name: &str, s: &str, seps: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let (piece, tail) = match rest.find(seps) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        match redacted(name, piece) {
            Some(r) => out.push_str(&r),
            None => out.push_str(piece),
        }
        match tail {
            Some(t) => {
                let sep = t.chars().next().map_or(1, char::len_utf8);
                out.push_str(&t[..sep]);
                rest = &t[sep..];
            }
            None => return out,
        }
    }
}

/// A path for the log: a token segment (`<name>=…`, any segment, any encoding) redacted. The
/// handler already splits off a leading one; this catches the others (a 400 for a token
/// segment after the first, a file named so).
pub fn redact_path(name: &str, path: &str) -> String {
    redact_pieces(name, path, &['/'])
}

/// A URL for the log (the `Referer`): its token path segments and query or fragment
/// parameters redacted.
pub fn redact_url(name: &str, url: &str) -> String {
    redact_pieces(name, url, &['/', '?', '&', '#'])
}

/// The longest a line waits in the writer's buffer before it reaches the file.
const FLUSH: Duration = Duration::from_millis(200);

/// How much the writer batches before it writes (as the `BufWriter` it replaced).
const BATCH: usize = 64 * 1024;

/// The least time between two warnings about failed writes.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where the writer thread puts lines.
enum Sink {
    Stdout,
    File { file: std::fs::File, path: PathBuf },
}

/// The writer thread's batch: whole lines, written together at most every [`FLUSH`] or
/// [`BATCH`] bytes. A write that fails part-way keeps the lines that reached the file whole,
/// truncates a torn one off (when the file is still as this writer left it: no other writer
/// appended meanwhile), and counts the rest as dropped.
struct Batch {
    sink: Sink,
    buf: Vec<u8>,
    dropped: prometheus::IntCounter,
    /// Lines lost to failed writes since the last warning, and when that was.
    lost: u64,
    warned: Option<Instant>,
    failing: bool,
}

impl Batch {
    fn push(&mut self, line: &str) {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    fn name(&self) -> String {
        match &self.sink {
            Sink::Stdout => "stdout".into(),
            Sink::File { path, .. } => path.display().to_string(),
        }
    }

    /// Writes the batch out; on an error, see the type's doc.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let start = match &self.sink {
            Sink::File { file, .. } => file.metadata().ok().map(|m| m.len()),
            Sink::Stdout => None,
        };
        let mut done = 0;
        let failed = loop {
            if done == self.buf.len() {
                break None;
            }
            let wrote = match &mut self.sink {
                Sink::File { file, .. } => file.write(&self.buf[done..]),
                Sink::Stdout => std::io::stdout().lock().write(&self.buf[done..]),
            };
            match wrote {
                Ok(0) => break Some(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        match failed {
            None => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!(file = %self.name(), "access log writes succeed again");
                }
            }
            Some(e) => self.failed(start, done, &e),
        }
        self.buf.clear();
    }

    fn failed(&mut self, start: Option<u64>, done: usize, e: &std::io::Error) {
        // The whole lines among the bytes that reached the file stay.
        let keep = self.buf[..done]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        if let (Sink::File { file, .. }, Some(start)) = (&self.sink, start) {
            let end = file.metadata().map(|m| m.len()).ok();
            if done > keep && end == Some(start + done as u64) {
                if let Err(t) = file.set_len(start + keep as u64) {
                    tracing::error!(file = %self.name(), error = %t, "cannot cut a torn access-log line off");
                }
            }
        }
        let lost = self.buf[keep..].iter().filter(|&&b| b == b'\n').count() as u64;
        self.dropped.inc_by(lost);
        self.lost += lost;
        self.failing = true;
        if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                file = %self.name(),
                error = %e,
                lines_dropped = self.lost,
                "access log write failed; lines dropped (counted in segd_access_log_dropped_total; warned at most once a minute)"
            );
            self.warned = Some(Instant::now());
            self.lost = 0;
        }
    }
}

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
    /// An HTTP/1.0 request: the combined format's request line says `HTTP/1.0` (`proto` is
    /// `h1` for both versions).
    pub http10: bool,
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

/// A header's value as text for the log: UTF-8 as it is (a `User-Agent` with `é` in it), any
/// byte that is not UTF-8 as `\xHH` (as nginx logs it), so no client's field is lost.
pub fn header_text(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for chunk in v.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
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
                    _ if self.http10 => "HTTP/1.0",
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
        let sink = match &cfg.access {
            Target::Off => {
                return Ok(AccessLog {
                    tx: None,
                    reopen,
                    format: cfg.format,
                    dropped,
                })
            }
            Target::Stdout => Sink::Stdout,
            Target::File(p) => Sink::File {
                file: append(p)?,
                path: p.clone(),
            },
        };
        let (tx, rx) = sync_channel::<String>(16_384);
        let asked = Arc::clone(&reopen);
        let mut batch = Batch {
            sink,
            buf: Vec::with_capacity(BATCH),
            dropped: dropped.clone(),
            lost: 0,
            warned: None,
            failing: false,
        };
        std::thread::Builder::new()
            .name("segd-access-log".into())
            .spawn(move || {
                // When the oldest line not yet written was queued: no line waits in the batch
                // longer than FLUSH, however steadily lines come.
                let mut oldest: Option<Instant> = None;
                loop {
                    if asked.swap(false, Ordering::Relaxed) {
                        // Lines queued before the signal go to the old file (logrotate has
                        // renamed it); the next ones to a new file at the configured path.
                        batch.flush();
                        if let Sink::File { file, path } = &mut batch.sink {
                            match append(path) {
                                Ok(f) => {
                                    *file = f;
                                    tracing::info!(path = %path.display(), "access log reopened");
                                }
                                Err(e) => tracing::error!(
                                    path = %path.display(),
                                    error = %e,
                                    "cannot reopen the access log; still writing to the old file"
                                ),
                            }
                        }
                    }
                    let wait = oldest.map_or(FLUSH, |t| FLUSH.saturating_sub(t.elapsed()));
                    match rx.recv_timeout(wait) {
                        Ok(line) => {
                            batch.push(&line);
                            let first = *oldest.get_or_insert_with(Instant::now);
                            if first.elapsed() >= FLUSH || batch.buf.len() >= BATCH {
                                batch.flush();
                                oldest = None;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            batch.flush();
                            oldest = None;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                batch.flush();
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
    fn header_text_keeps_utf8_and_escapes_other_bytes() {
        assert_eq!(
            header_text("Mozilla/5.0 \"q\" é".as_bytes()),
            "Mozilla/5.0 \"q\" é"
        );
        assert_eq!(header_text(b"caf\xe9 \xff"), "caf\\xE9 \\xFF");
        let ua = header_text(b"a\xe9");
        let e = sample(Some(&ua));
        assert!(e
            .format(LogFormat::Json)
            .contains("\"user_agent\":\"a\\\\xE9\""));
        assert!(e.format(LogFormat::Combined).contains("\"a\\xE9\""));
    }

    /// A line's facts, with `user_agent`.
    fn sample(user_agent: Option<&str>) -> Entry<'_> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "203.0.113.9".parse().expect("ip"),
            peer: "127.0.0.1:5000".parse().expect("addr"),
            method: "GET",
            path: "/vod/t1/a \"b\".ts",
            status: 206,
            bytes: 1234,
            duration: Duration::from_micros(1500),
            proto: "h1",
            http10: false,
            tls: None,
            cache: "bypass",
            key_id: Some("k1"),
            request_id: "abc",
            user_agent,
            referer: None,
            complete: true,
        }
    }

    #[test]
    fn formats() {
        let e = sample(Some("ffplay\n"));
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
    fn tokens_are_redacted() {
        let n = "__token__";
        let r = "__token__=<redacted>";
        assert_eq!(
            redact_path(
                n,
                "/vod/__token__=exp%3D1~acl%3D%2Fvod%2F%2A~hmac%3Dab12/t1/a.m3u8"
            ),
            format!("/vod/{r}/t1/a.m3u8")
        );
        assert_eq!(
            redact_path(n, "/vod/t1/__TOKEN__%3Dx"),
            format!("/vod/t1/{r}")
        );
        assert_eq!(
            redact_path(n, "/vod/%255F_token__%253Dx/a"),
            format!("/vod/{r}/a")
        );
        assert_eq!(
            redact_path(n, "/vod/__token__=x%zz/a"),
            format!("/vod/{r}/a")
        );
        assert_eq!(redact_path("tk", "/a/tk=1/b"), "/a/tk=<redacted>/b");
        // A raw `/` inside the token's acl splits it: its hmac goes too.
        assert_eq!(
            redact_path(n, "/vod/*~hmac=ab12/t1/a.ts"),
            "/vod/<redacted>/t1/a.ts"
        );
        // Everything else stays.
        for p in [
            "/vod/t1/a.ts",
            "/vod/__token__/a.ts",
            "/vod/token=1/a",
            "/",
            "",
        ] {
            assert_eq!(redact_path(n, p), p);
        }
        assert_eq!(
            redact_url(n, "https://h.example/__token__=exp%3D1~hmac%3Dab/vod/m.m3u8?x=1&__token__=exp=1~acl=/vod/*~hmac=cd&y=2#f"),
            format!("https://h.example/{r}/vod/m.m3u8?x=1&{r}/vod/<redacted>&y=2#f")
        );
        assert_eq!(
            redact_url(n, "https://h.example/vod/é?x=1"),
            "https://h.example/vod/é?x=1"
        );
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
