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
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        s.error(
            "level",
            format!("{level:?} is not a log filter"),
            level_allowed,
        );
    }
    s.finish();
    LogConfig {
        access,
        format,
        level,
    }
}
