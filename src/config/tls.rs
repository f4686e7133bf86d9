//! `[tls]` and `[[tls.certs]]`: TLS listeners, the default certificate and key, SNI
//! certificates, and HTTP/3 (QUIC) with its Retry policy. Paths resolve against the config
//! file's directory; the files themselves are loaded and checked by `crate::tls`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::fields::Section;
use super::server::parse_addr;

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// TCP listeners speaking TLS 1.2/1.3 with ALPN h2 and http/1.1.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first) and private key (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// HTTP/3 over QUIC on UDP at the same addresses; TCP responses on these listeners then
    /// advertise it with `Alt-Svc`.
    pub http3: bool,
    /// When a new QUIC connection must first prove its address with a Retry round trip.
    pub quic_retry: QuicRetry,
    /// Extra certificates chosen by SNI (`[[tls.certs]]`); `cert`/`key` above serve every other
    /// name and clients that send no SNI.
    pub certs: Vec<SniCert>,
}

/// Stateless Retry (address validation) for new QUIC connections: protects against spoofed-source
/// floods at the cost of one round trip for the clients it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicRetry {
    /// Only while more than half of `server.max_connections` are open.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct SniCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Exact DNS names (lowercase) this certificate is served for; each must be in the certificate.
    pub server_names: Vec<String>,
}

pub(super) const TLS_KEYS: &[&str] = &["listen", "cert", "key", "http3", "quic_retry", "certs"];

const TLS_CERT_KEYS: &[&str] = &["cert", "key", "server_names"];

pub(super) fn parse_tls(s: &Section, base: &Path) -> Option<TlsConfig> {
    let listen_allowed = "a list of IP:PORT strings, e.g. [\"0.0.0.0:443\"]";
    let listen: Vec<SocketAddr> = s
        .string_list("listen", listen_allowed)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, a)| parse_addr(s, &format!("listen[{i}]"), a))
        .collect();
    let cert = tls_file(s, base, "cert", "a PEM certificate chain file, leaf first");
    let key = tls_file(
        s,
        base,
        "key",
        "a PEM private key file (PKCS#8, PKCS#1 or SEC1)",
    );
    let http3 = s.bool("http3", false);
    let retry_allowed = "auto, always, never";
    let quic_retry = match s.string("quic_retry", retry_allowed).as_deref() {
        None | Some("auto") => QuicRetry::Auto,
        Some("always") => QuicRetry::Always,
        Some("never") => QuicRetry::Never,
        Some(other) => {
            s.error(
                "quic_retry",
                format!("unknown mode {other:?}"),
                retry_allowed,
            );
            QuicRetry::Auto
        }
    };
    let certs = s
        .tables("certs", TLS_CERT_KEYS)
        .iter()
        .filter_map(|c| parse_sni_cert(c, base))
        .collect();
    s.finish();
    if listen.is_empty() {
        // A `[tls]` with a certificate and no `listen` key is a TLS listener forgotten, not one
        // turned off (an empty list says that): it started without one, and said nothing.
        if s.raw("listen").is_none() && (s.raw("cert").is_some() || s.raw("key").is_some()) {
            s.error(
                "listen",
                "missing: [tls] has a certificate but no listener, so no TLS would be served",
                "a list of IP:PORT strings, e.g. [\"0.0.0.0:443\"] (listen = [] keeps TLS off)",
            );
        }
        return None;
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            listen,
            cert,
            key,
            http3,
            quic_retry,
            certs,
        }),
        (c, k) => {
            if c.is_none() && s.raw("cert").is_none() {
                s.error(
                    "cert",
                    "missing while tls.listen is set",
                    "a PEM certificate chain file",
                );
            }
            if k.is_none() && s.raw("key").is_none() {
                s.error(
                    "key",
                    "missing while tls.listen is set",
                    "a PEM private key file",
                );
            }
            None
        }
    }
}

/// A certificate or key path, relative to the config file's directory.
fn tls_file(s: &Section, base: &Path, key: &str, what: &str) -> Option<PathBuf> {
    match s.string(key, what) {
        Some(p) if !p.is_empty() => Some(base.join(p)),
        Some(_) => {
            s.error(key, "empty path", what);
            None
        }
        None => None,
    }
}

/// One `[[tls.certs]]` entry: all three keys are required.
fn parse_sni_cert(s: &Section, base: &Path) -> Option<SniCert> {
    let names_allowed = "a non-empty list of exact DNS names, e.g. [\"media.example.com\"]";
    let cert = tls_file(s, base, "cert", "a PEM certificate chain file, leaf first");
    let key = tls_file(
        s,
        base,
        "key",
        "a PEM private key file (PKCS#8, PKCS#1 or SEC1)",
    );
    let names = s.string_list("server_names", names_allowed);
    let mut server_names = Vec::new();
    for (i, n) in names.iter().flatten().enumerate() {
        let lower = n.to_ascii_lowercase();
        if rustls::pki_types::DnsName::try_from(lower.as_str()).is_err() || lower.contains('*') {
            s.error(
                &format!("server_names[{i}]"),
                format!("{n:?} is not a DNS name (wildcards are not supported)"),
                names_allowed,
            );
        } else {
            server_names.push(lower);
        }
    }
    s.finish();
    for (k, v) in [("cert", cert.is_some()), ("key", key.is_some())] {
        if !v && s.raw(k).is_none() {
            s.error(
                k,
                "missing",
                "every [[tls.certs]] entry needs cert, key and server_names",
            );
        }
    }
    if names.as_ref().is_some_and(|n| n.is_empty()) || s.raw("server_names").is_none() {
        s.error("server_names", "missing or empty", names_allowed);
        return None;
    }
    Some(SniCert {
        cert: cert?,
        key: key?,
        server_names,
    })
}
