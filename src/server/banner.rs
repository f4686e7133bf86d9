//! The start-up banner on stdout: every bound address and volume, then the URLs to open.
//! Tests and scripts read the `listening` lines to learn ephemeral ports.

use std::net::SocketAddr;

use crate::policy::Policy;
use crate::volumes::Volumes;

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The start-up banner on stdout: every bound address and volume, then the URLs to open.
/// Tests and scripts read the `listening` lines to learn ephemeral ports.
pub(super) fn banner(
    policy: &Policy,
    volumes: &Volumes,
    addrs: &[SocketAddr],
    tls: &[SocketAddr],
    http3: bool,
    admin: Option<SocketAddr>,
) {
    let version = env!("CARGO_PKG_VERSION");
    let mut out = String::new();
    for a in addrs {
        out.push_str(&format!(
            "segd {version}: listening http://{a} (HTTP/1.1, h2c)\n"
        ));
    }
    for a in tls {
        out.push_str(&format!(
            "segd {version}: listening https://{a} (TLS 1.3/1.2; HTTP/1.1 and h2 by ALPN)\n"
        ));
        if http3 {
            out.push_str(&format!(
                "segd {version}: listening https://{a} over QUIC/UDP (HTTP/3, TLS 1.3)\n"
            ));
        }
    }
    if let Some(a) = admin {
        out.push_str(&format!(
            "segd {version}: admin http://{a} (/metrics /healthz /readyz)\n"
        ));
    }
    for v in volumes.iter() {
        let fs = rustix::fs::statvfs(&v.path)
            .map(|s| {
                let total = s.f_blocks * s.f_frsize;
                let free = s.f_bavail * s.f_frsize;
                format!("filesystem {} ({} free)", human(total), human(free))
            })
            .unwrap_or_else(|e| format!("filesystem unavailable: {e}"));
        out.push_str(&format!(
            "segd {version}: volume {} at {}: {}, {}\n",
            v.name,
            v.path.display(),
            if v.is_healthy() {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            fs
        ));
    }
    if let Some(a) = addrs.first() {
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            match a {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            }
        };
        let base = format!("http://{host}:{}", a.port());
        for p in &policy.config.server.print_urls {
            out.push_str(&format!(
                "segd {version}: open {}\n",
                signed_url(policy, &base, p)
            ));
        }
    }
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// `base + path`, or for a protected path the path-embedded form with a token for the path's
/// directory (valid for `token.mint_ttl`), which players carry to every relative URI.
fn signed_url(policy: &Policy, base: &str, path: &str) -> String {
    if !policy.auth.is_protected(path) {
        return format!("{base}{}", crate::auth::encode_target(path));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = &path[..path.rfind('/').unwrap_or(0)];
    let acl = format!("{dir}/*");
    let spec = crate::auth::edgeauth::SignSpec {
        acl: Some(&acl),
        exp: now + policy.config.token.mint_ttl.as_secs(),
        ..Default::default()
    };
    match policy.auth.sign(&spec, None, now) {
        Some((_, token)) => crate::auth::ready_urls(base, policy.auth.name(), &token, path).2,
        None => format!("{base}{path} (protected, but no signing key is active)"),
    }
}
