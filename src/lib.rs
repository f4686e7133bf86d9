//! segd: an origin server for HLS/DASH audio segments from several local disks.
//!
//! The request path, top to bottom:
//! 1. `server` binds listeners and accepts; `http::h1` (plaintext HTTP/1.1 with sendfile),
//!    `http::service` (hyper: TLS, h2c, request bodies) and `http::h3` (HTTP/3) parse requests.
//! 2. `http::handler::handle` decides everything: method, path (`volumes::path`), type and
//!    class, token (`auth`), the object (`store`: every tier behind one lookup), preconditions
//!    (`http::conditional`), range (`http::range`), headers. Refusals come from one table
//!    (`http::refusal`).
//! 3. A body writer per protocol sends the `store::Body` the handler named.
//! 4. `http::Record` counts each request once, after its body; `admin` serves `/metrics`,
//!    `/healthz`, `/readyz`.
//!
//! State is split in two: the long-lived `runtime` (metrics, store) and the per-config `policy`
//! (config, auth, access log, TLS) that a reload swaps (`state::Shared`). Imports point one way:
//! `server` → `http` → `store` → `volumes`/`cache`/`io` → `config`; `drain` and `metrics` are
//! leaves.

pub mod access;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod drain;
pub mod http;
pub mod io;
pub mod live;
pub mod log;
pub mod metrics;
pub mod playlist;
pub mod policy;
pub mod runtime;
pub mod server;
pub mod sign;
pub mod state;
pub mod store;
pub mod text;
pub mod tls;
pub mod volumes;
