//! Operational logging via `tracing` to stderr; the filter comes from `RUST_LOG`, else `[log] level`.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// A directive added to the filter unless it names rustls itself: rustls warns once per
/// handshake of a client that puts an IP address in SNI (wrk, some libraries), a line any
/// client can have written at will, so only its errors are logged.
const QUIET: &str = "rustls=error";

/// `spec` with [`QUIET`] added, unless it says something of rustls itself.
fn quieted(spec: &str) -> String {
    if spec.contains("rustls") {
        spec.to_string()
    } else if spec.trim().is_empty() {
        QUIET.to_string()
    } else {
        format!("{spec},{QUIET}")
    }
}

pub fn init(cfg: &LogConfig) {
    // `RUST_LOG` is held to the rules of `[log] level`: a bare word that is not a level
    // (`verbose`) would be a target name and silence every line. Such a value is named on
    // stderr and `[log] level` is used instead.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .filter(|s| match crate::config::log::filter_problem(s) {
            Some(problem) => {
                eprintln!(
                    "segd: RUST_LOG ignored: {problem}; using [log] level {:?}",
                    cfg.level
                );
                false
            }
            None => true,
        })
        .and_then(|s| EnvFilter::try_new(quieted(&s)).ok());
    let filter = from_env
        .or_else(|| EnvFilter::try_new(quieted(&cfg.level)).ok())
        .unwrap_or_else(|| EnvFilter::new(quieted("info")));
    if to_journald() {
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .with_ansi(false);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .event_format(Prioritised(format))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to its device and
/// inode (`DEV:INO`) for a service whose output goes to the journal (systemd.exec(5)).
fn to_journald() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

/// A line format that starts each line with its syslog priority (`<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug), which journald takes from a service's stderr (sd-daemon(3)), so
/// `journalctl -p warning` shows segd's warnings and errors (every line was info).
struct Prioritised<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Prioritised<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Lines of one kind written at most once a second, for lines a flood of requests would
/// otherwise repeat (a refusal per request while a volume is down, a token rejected per
/// request): the first of a second is written, with how many were left out since the last.
pub struct Throttle {
    last: std::sync::Mutex<std::collections::HashMap<Kind, (std::time::Instant, u64)>>,
}

/// A kind of line for [`Throttle`]: its message, and what it is about.
pub type Kind = (&'static str, &'static str);

impl Throttle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new() -> Throttle {
        Throttle {
            last: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether a line of `kind` (a message, and what it is about) may be written now; if so,
    /// `Some` of the lines of that kind left out since the last one written.
    pub fn allow(&self, kind: Kind) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&kind) {
            Some((at, left_out)) if now.duration_since(*at) < Self::EVERY => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_per_kind_with_the_count_left_out() {
        let t = Throttle::new();
        let (a, b) = (("refused", "a"), ("refused", "b"));
        assert_eq!(t.allow(a), Some(0));
        assert_eq!(t.allow(a), None);
        assert_eq!(t.allow(a), None);
        assert_eq!(t.allow(b), Some(0), "kinds are apart");
        std::thread::sleep(Throttle::EVERY);
        assert_eq!(t.allow(a), Some(2));
        assert_eq!(t.allow(a), None);
    }
}
