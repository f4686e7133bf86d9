//! segd's integration tests: one binary (ripgrep style). Every test starts the real `segd` on an
//! ephemeral loopback port with temp volumes and talks to it over TCP (and UDP for HTTP/3).

mod util;

mod cache;
mod cluster;
mod config;
mod demo;
mod edge;
mod h1;
mod h3;
mod http_semantics;
mod ingest;
mod lifecycle;
mod limits;
mod live;
mod midbody;
mod ops;
mod proxy_protocol;
mod regression;
mod tls;
mod token;
mod volumes;
