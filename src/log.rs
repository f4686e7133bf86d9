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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
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
