//! `[admin]`: the admin listener (`/metrics`, `/healthz`, `/readyz`) address, or `off`.

use std::net::SocketAddr;

use super::fields::Section;
use super::server::parse_addr;

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when the admin listener is off.
    pub listen: Option<SocketAddr>,
}

pub(super) const ADMIN_KEYS: &[&str] = &["listen"];

pub(super) fn parse_admin(s: &Section) -> AdminConfig {
    let allowed = "IP:PORT such as \"127.0.0.1:9090\", or \"off\"";
    let listen = match s.string("listen", allowed).as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        Some("off") | Some("") => None,
        Some(v) => parse_addr(s, "listen", v),
    };
    s.finish();
    AdminConfig { listen }
}
