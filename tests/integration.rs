//! segd's integration tests: one binary (ripgrep style). Every test starts the real `segd` on an
//! ephemeral loopback port with temp volumes and talks to it over TCP.

mod util;

mod cache;
mod config;
mod demo;
mod h1;
mod http_semantics;
mod lifecycle;
mod limits;
mod tls;
mod token;
mod volumes;
