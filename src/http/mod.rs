//! HTTP front ends. `handler` decides every response; the modules here only move bytes:
//! `service` adapts hyper (HTTP/1.1 and h2c on the plaintext listeners) and `body` writes file
//! bodies for hyper.

pub mod body;
pub mod conditional;
pub mod handler;
pub mod range;
pub mod service;
