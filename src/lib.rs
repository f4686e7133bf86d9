//! segd: an origin server for HLS/DASH audio segments from several local disks.
//!
//! The request path, top to bottom:
//! 1. `server` binds listeners and accepts; `http::service` runs hyper (HTTP/1.1, h2c).
//! 2. `http::handler::handle` decides everything: method, path (`volumes::path`), type and
//!    class, token, lookup (`volumes`), preconditions (`http::conditional`), range
//!    (`http::range`), headers.
//! 3. A body writer per protocol sends what the handler named (`http::body` for hyper).
//! 4. `metrics` counts at one exit; `admin` serves `/metrics`, `/healthz`, `/readyz`.
//!
//! Leaf modules (`volumes`, `http::range`, `http::conditional`, `config`) know nothing of each
//! other or of hyper; only the handler composes them.

pub mod access;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod http;
pub mod io;
pub mod log;
pub mod metrics;
pub mod playlist;
pub mod server;
pub mod sign;
pub mod state;
pub mod tls;
pub mod volumes;
