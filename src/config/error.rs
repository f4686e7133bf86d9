//! Config errors: each one names the file, the key, what is wrong and what is allowed.
//!
//! Loading collects every problem into [`ConfigErrors`] before failing, so an operator fixes a
//! config in one pass instead of one error per restart. Each problem is printed as
//! `FILE:LINE: KEY: PROBLEM (allowed: …)`, the line being where the key is written (or, for a
//! missing key, its table's header), as compilers print theirs, so editors and CI annotations jump to it.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with one key of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the key was read from.
    pub file: PathBuf,
    /// Dotted key path, e.g. `server.listen[1]` or `volumes[0].path`; empty for file-level errors.
    pub key: String,
    /// The 1-based line of the key in the file ([`ConfigErrors::locate`]); `None` when unknown.
    pub line: Option<usize>,
    /// What is wrong with the value.
    pub problem: String,
    /// What would be accepted instead (may be empty when nothing more useful can be said).
    pub allowed: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.problem)?;
        if !self.allowed.is_empty() {
            write!(f, " (allowed: {})", self.allowed)?;
        }
        Ok(())
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn push(
        &mut self,
        file: &Path,
        key: impl Into<String>,
        problem: impl Into<String>,
        allowed: impl Into<String>,
    ) {
        self.0.push(ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            line: None,
            problem: problem.into(),
            allowed: allowed.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    /// Fills in the line of every problem that has none, from the file it names (read once per
    /// file; a file that cannot be read or parsed leaves the lines unknown).
    pub fn locate(&mut self) {
        let mut files: Vec<PathBuf> = self
            .0
            .iter()
            .filter(|e| e.line.is_none() && !e.key.is_empty())
            .map(|e| e.file.clone())
            .collect();
        files.dedup();
        for file in files {
            if let Ok(text) = std::fs::read_to_string(&file) {
                self.locate_in(&file, &text);
            }
        }
    }

    /// Fills in the line of every problem of `file` that has none, from its `text`.
    pub(crate) fn locate_in(&mut self, file: &Path, text: &str) {
        let Ok(doc) = toml::de::DeTable::parse(text) else {
            return;
        };
        for e in self
            .0
            .iter_mut()
            .filter(|e| e.line.is_none() && e.file == file)
        {
            e.line = offset_of(doc.get_ref(), &e.key).map(|at| line_at(text, at));
        }
    }
}

/// The 1-based line of byte offset `at` in `text`.
pub(super) fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where `key` (`a.b[2].c`, as in [`ConfigError::key`]) is written in `doc`: the offset of its
/// name, of an array element for an index, or of the deepest part that is written (a missing key:
/// its table). `None` for the empty key or a first part not in the file.
fn offset_of(doc: &toml::de::DeTable<'_>, key: &str) -> Option<usize> {
    use toml::de::DeValue;
    let mut at = None;
    let mut table = doc;
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, indices) = part.split_once('[').unwrap_or((part, ""));
        let Some((k, mut v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            return at;
        };
        at = Some(k.span().start);
        let indices = indices.split('[').filter(|i| !i.is_empty());
        for index in indices.map(|i| i.trim_end_matches(']')) {
            let el = match (v.get_ref(), index.parse::<usize>()) {
                (DeValue::Array(a), Ok(i)) => a.get(i),
                _ => None,
            };
            match el {
                Some(el) => {
                    at = Some(el.span().start);
                    v = el;
                }
                None => return at,
            }
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return at,
        }
    }
    at
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
