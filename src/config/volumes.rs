//! `[[volumes]]`: the disk roots segments are served from, each with a label and an optional
//! marker file. Paths are resolved against the config file's directory here; whether they exist
//! is checked later, in [`Config::check_paths`](super::Config::check_paths).

use std::path::{Path, PathBuf};

use super::fields::Section;

#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Label used in logs and metrics (defaults to the path as written).
    pub name: String,
    /// Absolute (or config-relative, resolved) root directory.
    pub path: PathBuf,
    /// If set, a file that must exist in the root for the volume to count as mounted and healthy.
    pub marker: Option<String>,
}

pub(super) const VOLUME_KEYS: &[&str] = &["path", "name", "marker"];

pub(super) fn parse_volumes(top: &Section, base: &Path) -> Vec<VolumeConfig> {
    let sections = top.tables("volumes", VOLUME_KEYS);
    if sections.is_empty() && top.raw("volumes").is_none() {
        top.error(
            "volumes",
            "no volume configured",
            "at least one [[volumes]] table with a path",
        );
    }
    let mut out: Vec<VolumeConfig> = Vec::new();
    for v in sections {
        let path = match v.string("path", "a directory path") {
            Some(p) if !p.is_empty() => Some(base.join(p)),
            Some(_) => {
                v.error("path", "empty path", "a directory path");
                None
            }
            None => {
                if v.raw("path").is_none() {
                    v.error("path", "missing", "a directory path");
                }
                None
            }
        };
        let name = v.string("name", "a short label for logs and metrics");
        let marker = v.string(
            "marker",
            "a file name at the volume root, e.g. \".segd-volume\"",
        );
        if let Some(m) = &marker {
            if m.is_empty() || m.contains('/') || m == "." || m == ".." {
                v.error(
                    "marker",
                    format!("{m:?} is not a plain file name"),
                    "a file name at the volume root, e.g. \".segd-volume\"",
                );
            }
        }
        if let Some(path) = path {
            let name = name.unwrap_or_else(|| {
                v.raw("path")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default()
                    .to_string()
            });
            if out.iter().any(|o| o.path == path) {
                v.error(
                    "path",
                    format!("{} is listed twice", path.display()),
                    "distinct directories",
                );
            }
            if out.iter().any(|o| o.name == name) {
                v.error(
                    "name",
                    format!("volume name {name:?} is used twice"),
                    "a unique label per volume",
                );
            }
            out.push(VolumeConfig { name, path, marker });
        }
        v.finish();
    }
    out
}
