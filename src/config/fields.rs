//! A small reader over a parsed TOML table that records every problem instead of stopping at the
//! first one (serde's `deny_unknown_fields` stops at the first unknown key and cannot say which
//! keys would have been allowed).
//!
//! Each [`Section`] knows its dotted prefix and the keys it accepts; `finish` reports the keys
//! nobody asked for as unknown, listing the allowed ones.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ConfigErrors;

/// Shared state of one load: which file, and the problems found so far.
pub(crate) struct Ctx {
    pub file: PathBuf,
    pub errors: RefCell<ConfigErrors>,
    /// Every secret read: its key, and the file it came from (`None`: inline in the config).
    pub secrets: RefCell<Vec<SecretSource>>,
}

/// Where one secret of the config came from (see [`super::Config::exposed_secrets`]).
#[derive(Clone, Debug)]
pub struct SecretSource {
    /// Its dotted key (`token.keys[0].secret`, `ingest.keys[1].secret_file`).
    pub key: String,
    /// The file named by a `…_file` key; `None` when written inline in the config.
    pub file: Option<PathBuf>,
    /// It is one of the secrets segd's repository publishes ([`PUBLISHED_SECRETS`]).
    pub published: bool,
}

/// The secrets written in the configs segd ships (`config/segd.toml`'s demo keys,
/// `config/segd.production.toml`'s examples): anyone can mint tokens with them.
pub const PUBLISHED_SECRETS: &[&str] = &[
    "52a152a152a152a152a152a152a1",
    "7e57a9e57a9e57a9e57a9e57a9e57a9e",
    "0123456789abcdef0123456789abcdef",
];

impl Ctx {
    pub fn new(file: &Path) -> Self {
        Ctx {
            file: file.to_path_buf(),
            errors: RefCell::new(ConfigErrors::default()),
            secrets: RefCell::new(Vec::new()),
        }
    }

    pub fn error(&self, key: &str, problem: impl Into<String>, allowed: impl Into<String>) {
        self.errors
            .borrow_mut()
            .push(&self.file, key, problem, allowed);
    }
}

/// One TOML table being read, e.g. `[server]` or `[[volumes]]` number 2.
pub(crate) struct Section<'a> {
    ctx: &'a Ctx,
    prefix: String,
    table: Option<&'a toml::Table>,
    known: &'static [&'static str],
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the datetime {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

impl<'a> Section<'a> {
    pub fn new(
        ctx: &'a Ctx,
        prefix: impl Into<String>,
        table: Option<&'a toml::Table>,
        known: &'static [&'static str],
    ) -> Self {
        Section {
            ctx,
            prefix: prefix.into(),
            table,
            known,
        }
    }

    pub fn ctx(&self) -> &'a Ctx {
        self.ctx
    }

    /// The dotted path of `key` in this section.
    pub fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.prefix, key)
        }
    }

    pub fn error(&self, key: &str, problem: impl Into<String>, allowed: impl Into<String>) {
        self.ctx.error(&self.key(key), problem, allowed);
    }

    pub fn raw(&self, key: &str) -> Option<&'a toml::Value> {
        debug_assert!(self.known.contains(&key), "undeclared key {key}");
        self.table.and_then(|t| t.get(key))
    }

    /// Reports every key present in the table that this section does not declare.
    pub fn finish(&self) {
        let Some(table) = self.table else { return };
        for k in table.keys() {
            if !self.known.contains(&k.as_str()) {
                self.error(k, "unknown key", self.known.join(", "));
            }
        }
    }

    pub fn string(&self, key: &str, allowed: &str) -> Option<String> {
        match self.raw(key)? {
            toml::Value::String(s) => Some(s.clone()),
            other => {
                self.error(
                    key,
                    format!("expected a string, got {}", describe(other)),
                    allowed,
                );
                None
            }
        }
    }

    /// A secret written inline (`key`) or kept in a file of its own (`file_key`, relative to
    /// the config's directory; its text without surrounding white space), never both. The file
    /// is read at every load, so a reload takes a rotated secret. Where it came from is noted
    /// (see [`super::Config::exposed_secrets`]).
    pub fn secret(&self, key: &str, file_key: &str, base: &Path, allowed: &str) -> Option<String> {
        let inline = self.string(key, allowed);
        let file_allowed = format!("a file holding {allowed}, readable by segd's user");
        let file = self.string(file_key, &file_allowed);
        let (text, file) = match (inline, file) {
            (Some(_), Some(_)) => {
                self.error(
                    file_key,
                    format!("set together with {key}"),
                    format!("either {key} or {file_key}"),
                );
                return None;
            }
            (None, None) => return None,
            (Some(s), None) => (s, None),
            (None, Some(f)) => {
                let path = base.join(&f);
                match std::fs::read_to_string(&path) {
                    Ok(s) if !s.trim().is_empty() => (s.trim().to_owned(), Some(path)),
                    Ok(_) => {
                        self.error(file_key, format!("{f} is empty"), file_allowed);
                        return None;
                    }
                    Err(e) => {
                        self.error(file_key, format!("cannot read {f}: {e}"), file_allowed);
                        return None;
                    }
                }
            }
        };
        let key = self.key(if file.is_some() { file_key } else { key });
        let published = PUBLISHED_SECRETS.contains(&text.as_str());
        self.ctx.secrets.borrow_mut().push(SecretSource {
            key,
            file,
            published,
        });
        Some(text)
    }

    /// Notes a secret read from `file` by the section's own code (see [`Section::secret`]).
    pub fn note_secret_file(&self, file_key: &str, file: PathBuf) {
        let key = self.key(file_key);
        let file = Some(file);
        self.ctx.secrets.borrow_mut().push(SecretSource {
            key,
            file,
            published: false,
        });
    }

    /// Whether the secret `key` or its `file_key` is given at all (even if unusable).
    pub fn has_secret(&self, key: &str, file_key: &str) -> bool {
        self.raw(key).is_some() || self.raw(file_key).is_some()
    }

    pub fn bool(&self, key: &str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.error(
                    key,
                    format!("expected a boolean, got {}", describe(other)),
                    "true, false",
                );
                default
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(&self, key: &str, default: i64, min: i64, max: i64, allowed: &str) -> i64 {
        match self.raw(key) {
            None => default,
            Some(toml::Value::Integer(i)) if (min..=max).contains(i) => *i,
            Some(toml::Value::Integer(i)) => {
                self.error(key, format!("{i} is out of range"), allowed);
                default
            }
            Some(other) => {
                self.error(
                    key,
                    format!("expected an integer, got {}", describe(other)),
                    allowed,
                );
                default
            }
        }
    }

    pub fn duration(&self, key: &str, default: Duration, min: Duration, max: Duration) -> Duration {
        let allowed = format!(
            "a duration such as \"500ms\", \"10s\", \"5m\", \"1h\" between {} and {}",
            fmt_duration(min),
            fmt_duration(max)
        );
        let Some(s) = self.string(key, &allowed) else {
            return default;
        };
        match parse_duration(&s) {
            Some(d) if d >= min && d <= max => d,
            Some(_) => {
                self.error(key, format!("{s:?} is out of range"), allowed);
                default
            }
            None => {
                self.error(key, format!("{s:?} is not a duration"), allowed);
                default
            }
        }
    }

    pub fn size(&self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        let allowed = format!(
            "a size such as \"512KiB\", \"8MiB\", \"1GiB\" (units B, KiB, MiB, GiB, TiB) between {} and {}",
            fmt_size(min),
            fmt_size(max)
        );
        let parsed = match self.raw(key) {
            None => return default,
            Some(toml::Value::Integer(i)) if *i >= 0 => Some(*i as u64),
            Some(toml::Value::String(s)) => parse_size(s),
            Some(other) => {
                self.error(
                    key,
                    format!("expected a size, got {}", describe(other)),
                    allowed,
                );
                return default;
            }
        };
        match parsed {
            Some(n) if n >= min && n <= max => n,
            Some(n) => {
                self.error(key, format!("{} is out of range", fmt_size(n)), allowed);
                default
            }
            None => {
                self.error(
                    key,
                    format!(
                        "{} is not a size",
                        self.raw(key).map(describe).unwrap_or_default()
                    ),
                    allowed,
                );
                default
            }
        }
    }

    /// An array of strings; each element is reported on its own (`key[i]`).
    pub fn string_list(&self, key: &str, allowed: &str) -> Option<Vec<String>> {
        match self.raw(key)? {
            toml::Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        other => self.error(
                            &format!("{key}[{i}]"),
                            format!("expected a string, got {}", describe(other)),
                            allowed,
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("expected an array of strings, got {}", describe(other)),
                    allowed,
                );
                None
            }
        }
    }

    /// A sub-table such as `[token]`; absent means all defaults.
    pub fn table(&self, key: &str, known: &'static [&'static str]) -> Section<'a> {
        let table = match self.raw(key) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(other) => {
                self.error(
                    key,
                    format!("expected a table, got {}", describe(other)),
                    format!("a table with keys {}", known.join(", ")),
                );
                None
            }
        };
        Section::new(self.ctx, self.key(key), table, known)
    }

    /// An array of tables such as `[[volumes]]`.
    pub fn tables(&self, key: &str, known: &'static [&'static str]) -> Vec<Section<'a>> {
        match self.raw(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let k = format!("{key}[{i}]");
                    match item {
                        toml::Value::Table(t) => {
                            Some(Section::new(self.ctx, self.key(&k), Some(t), known))
                        }
                        other => {
                            self.error(
                                &k,
                                format!("expected a table, got {}", describe(other)),
                                format!("[[{key}]] tables with keys {}", known.join(", ")),
                            );
                            None
                        }
                    }
                })
                .collect(),
            Some(other) => {
                self.error(
                    key,
                    format!("expected an array of tables, got {}", describe(other)),
                    format!("[[{key}]] tables with keys {}", known.join(", ")),
                );
                Vec::new()
            }
        }
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h`, `1d` (an integer and a unit, no spaces needed).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs);
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => None,
    }
}

/// Parses `123`, `123B`, `512KiB`, `8MiB`, `1GiB`, `2TiB` (binary units only: a cache size in
/// "MB" is ambiguous, and ambiguity in a memory limit is a bug).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mul)
}

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

pub fn fmt_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("8MiB"), Some(8 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("42B"), Some(42));
        assert_eq!(parse_size("42"), Some(42));
        assert_eq!(parse_size("1GB"), None);
        assert_eq!(parse_size("-1KiB"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
        assert_eq!(fmt_size(8 << 20), "8MiB");
        assert_eq!(fmt_size(1000), "1000B");
    }
}
