//! `[log]`: the access log (off, stdout or a file) and its format, and the operational log filter.

use std::path::{Path, PathBuf};

use super::fields::Section;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: AccessLog,
    pub format: LogFormat,
    /// Operational log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub level: String,
}

pub(super) const LOG_KEYS: &[&str] = &["access", "format", "level"];

pub(super) fn parse_log(s: &Section, base: &Path) -> LogConfig {
    let access_allowed = "off, stdout, or a file path";
    let access = match s.string("access", access_allowed).as_deref() {
        None | Some("off") => AccessLog::Off,
        Some("stdout") => AccessLog::Stdout,
        Some("") => {
            s.error("access", "empty", access_allowed);
            AccessLog::Off
        }
        Some(p) => AccessLog::File(base.join(p)),
    };
    let fmt_allowed = "json, combined";
    let format = match s.string("format", fmt_allowed).as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("combined") => LogFormat::Combined,
        Some(other) => {
            s.error("format", format!("unknown format {other:?}"), fmt_allowed);
            LogFormat::Json
        }
    };
    let level_allowed =
        "error, warn, info, debug, trace, or a tracing filter such as \"segd=debug\"";
    let level = s
        .string("level", level_allowed)
        .unwrap_or_else(|| "info".into());
    if let Some(problem) = filter_problem(&level) {
        s.error("level", problem, level_allowed);
    }
    s.finish();
    LogConfig {
        access,
        format,
        level,
    }
}

/// What is wrong with an operational log filter, if anything. `EnvFilter` reads a bare word
/// that is not a level as a target name (`warning` means "everything from target `warning`"),
/// which silences every other log line without a word: so each bare directive must be a level,
/// and targets are named with `TARGET=LEVEL`.
pub fn filter_problem(level: &str) -> Option<String> {
    if tracing_subscriber::EnvFilter::try_new(level).is_err() {
        return Some(format!("{level:?} is not a log filter"));
    }
    let bare = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.contains(['=', '[']))
        .find(|d| d.parse::<tracing::level_filters::LevelFilter>().is_err())?;
    Some(format!(
        "{bare:?} is not a level (a bare word would be read as a target name and silence every other log line; write TARGET=LEVEL for a target)"
    ))
}

#[cfg(test)]
mod tests {
    use super::filter_problem;

    #[test]
    fn log_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "debug,hyper=info",
            "segd=debug",
            "info,segd::http=trace",
            "warn,",
        ] {
            assert_eq!(filter_problem(ok), None, "{ok}");
        }
        // Typos of a level are targets to EnvFilter, which would turn every log line off.
        for bad in ["warning", "information", "info,verbose", "segd"] {
            let p = filter_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(p.contains("is not a level"), "{bad}: {p}");
        }
        assert!(filter_problem("segd=loud").is_some());
    }
}
