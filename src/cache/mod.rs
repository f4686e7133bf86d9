//! In-memory caches, both moka (TinyLFU admission, so one sweep over a cold catalogue cannot
//! flush what is hot):
//! - [`files`]: open descriptors and metadata per path, like nginx's `open_file_cache`, for the
//!   sendfile path (which needs no body bytes in memory at all);
//! - [`bodies`]: whole-object `Bytes`, byte-weighted, for the paths that must copy anyway
//!   (HTTP/2, later TLS and HTTP/3), with single-flight fills.
//!
//! Neither knows HTTP or disks: callers hand them what to store.

pub mod bodies;
pub mod files;
