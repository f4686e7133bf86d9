//! Config errors: each one names the file, the key, what is wrong and what is allowed.
//!
//! Loading collects every problem into [`ConfigErrors`] before failing, so an operator fixes a
//! config in one pass instead of one error per restart.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with one key of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the key was read from.
    pub file: PathBuf,
    /// Dotted key path, e.g. `server.listen[1]` or `volumes[0].path`; empty for file-level errors.
    pub key: String,
    /// What is wrong with the value.
    pub problem: String,
    /// What would be accepted instead (may be empty when nothing more useful can be said).
    pub allowed: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
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
