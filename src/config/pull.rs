//! `[pull]` and `[[pull.upstreams]]`: the edge tier — where fetched objects are cached, how
//! long 404s and stale copies are kept, the timeouts of upstream requests, and the upstreams
//! (HTTP origins or S3-compatible buckets) with the path prefixes each serves. See
//! `docs/edge.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fields::Section;

#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Where fetched objects are kept; `None`: no pull tier.
    pub cache_path: Option<PathBuf>,
    pub max_bytes: u64,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    /// `stale_if_error` for playlists and manifests under the live prefixes: a live playlist
    /// minutes old hides an outage from players (they wait for segments instead of failing
    /// over), so it stands in for a short blip only.
    pub live_stale_if_error: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstreams: Vec<UpstreamConfig>,
    /// CA certificates trusted for https upstreams besides the system's (`tls_ca_file`).
    pub tls_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// A secret that never appears in a log or a `Debug` print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub prefixes: Vec<String>,
    pub kind: UpstreamKind,
    /// Header and secret sent with every request (an upstream segd's origin auth).
    pub origin_auth: Option<(String, Secret)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamKind {
    /// An HTTP origin: `url` + the request path.
    Http { url: String },
    /// An S3-compatible bucket (SigV4).
    S3 {
        endpoint: String,
        bucket: String,
        region: String,
        key_prefix: String,
        access_key_id: String,
        secret_access_key: Secret,
        /// The session token of temporary credentials (STS, an IAM role), signed into every
        /// request as `X-Amz-Security-Token`.
        session_token: Option<Secret>,
    },
}

impl PullConfig {
    /// The upstreams serving `canonical`, in order.
    pub fn upstreams_for<'a>(
        &'a self,
        canonical: &'a str,
    ) -> impl Iterator<Item = &'a UpstreamConfig> {
        self.upstreams
            .iter()
            .filter(move |u| u.prefixes.iter().any(|p| canonical.starts_with(p.as_str())))
    }
}

pub(super) const PULL_KEYS: &[&str] = &[
    "cache_path",
    "max_bytes",
    "negative_ttl",
    "stale_if_error",
    "live_stale_if_error",
    "connect_timeout",
    "first_byte_timeout",
    "idle_timeout",
    "upstreams",
    "tls_ca_file",
];

const UPSTREAM_KEYS: &[&str] = &[
    "name",
    "url",
    "prefixes",
    "origin_auth_header",
    "origin_auth_secret",
    "origin_auth_secret_file",
    "s3_endpoint",
    "bucket",
    "region",
    "key_prefix",
    "access_key_id",
    "secret_access_key_file",
    "session_token_file",
];

pub(super) fn parse_pull(s: &Section, base: &Path) -> PullConfig {
    let cache_path = s
        .string("cache_path", "a directory on a local disk")
        .map(|p| base.join(p));
    let secs = Duration::from_secs;
    let max_bytes = s.size("max_bytes", 10 << 30, 1, u64::MAX >> 1);
    let negative_ttl = s.duration("negative_ttl", secs(5), Duration::ZERO, secs(86_400));
    let stale_if_error = s.duration(
        "stale_if_error",
        secs(3600),
        Duration::ZERO,
        secs(30 * 86_400),
    );
    let live_stale_if_error =
        s.duration("live_stale_if_error", secs(6), Duration::ZERO, secs(3600));
    let connect_timeout = s.duration(
        "connect_timeout",
        secs(2),
        Duration::from_millis(10),
        secs(60),
    );
    let first_byte_timeout = s.duration(
        "first_byte_timeout",
        secs(10),
        Duration::from_millis(10),
        secs(600),
    );
    let idle_timeout = s.duration(
        "idle_timeout",
        secs(10),
        Duration::from_millis(10),
        secs(600),
    );
    let mut upstreams = Vec::new();
    for u in s.tables("upstreams", UPSTREAM_KEYS) {
        if let Some(x) = parse_upstream(&u, base) {
            if upstreams.iter().any(|o: &UpstreamConfig| o.name == x.name) {
                u.error(
                    "name",
                    format!("{:?} is used twice", x.name),
                    "unique upstream names",
                );
            }
            upstreams.push(x);
        }
        u.finish();
    }
    if cache_path.is_none() && !upstreams.is_empty() {
        s.error(
            "cache_path",
            "upstreams are configured but no cache_path",
            "a directory on a local disk for fetched objects",
        );
    }
    s.finish();
    let tls_ca = parse_ca_file(s, base);
    PullConfig {
        tls_ca,
        cache_path,
        max_bytes,
        negative_ttl,
        stale_if_error,
        live_stale_if_error,
        connect_timeout,
        first_byte_timeout,
        idle_timeout,
        upstreams,
    }
}

/// `tls_ca_file`: PEM certificates of a private CA (an S3 store or origin on owned hardware).
fn parse_ca_file(s: &Section, base: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let allowed = "a PEM file with one or more CA certificates";
    let Some(f) = s.string("tls_ca_file", allowed) else {
        return Vec::new();
    };
    let path = base.join(&f);
    let certs: Result<Vec<_>, _> = match rustls::pki_types::CertificateDer::pem_file_iter(&path) {
        Ok(it) => it.collect(),
        Err(e) => Err(e),
    };
    match certs {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            s.error(
                "tls_ca_file",
                format!("{} holds no certificate", path.display()),
                allowed,
            );
            Vec::new()
        }
        Err(e) => {
            s.error(
                "tls_ca_file",
                format!("cannot read {}: {e}", path.display()),
                allowed,
            );
            Vec::new()
        }
    }
}

fn parse_upstream(u: &Section, base: &Path) -> Option<UpstreamConfig> {
    let name = u.string("name", "a short label for logs and metrics");
    if name.is_none() && u.raw("name").is_none() {
        u.error("name", "missing", "a short label for logs and metrics");
    }
    let prefix_allowed = "URL path prefixes starting with \"/\", e.g. \"/vod/\"";
    let prefixes = u
        .string_list("prefixes", prefix_allowed)
        .unwrap_or_default();
    if prefixes.is_empty() || prefixes.iter().any(|p| !p.starts_with('/')) {
        u.error("prefixes", "missing or not a path prefix", prefix_allowed);
    }
    let origin_auth = match (
        u.string("origin_auth_header", "a header name"),
        u.secret(
            "origin_auth_secret",
            "origin_auth_secret_file",
            base,
            "a shared secret",
        ),
    ) {
        (Some(h), Some(v)) => Some((h.to_ascii_lowercase(), Secret(v))),
        (None, None) => None,
        _ => {
            u.error(
                "origin_auth_header",
                "origin_auth_header and origin_auth_secret (or origin_auth_secret_file) go together",
                "both, or neither",
            );
            None
        }
    };
    let url = u.string("url", "http://host:port or https://host:port");
    let endpoint = u.string("s3_endpoint", "http(s)://host:port of an S3-compatible API");
    let kind = match (url, endpoint) {
        (Some(url), None) => {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                u.error(
                    "url",
                    format!("{url:?} is not an http:// or https:// URL"),
                    "http://host:port or https://host:port",
                );
                return None;
            }
            UpstreamKind::Http {
                url: url.trim_end_matches('/').to_owned(),
            }
        }
        (None, Some(endpoint)) => {
            let bucket = u.string("bucket", "a bucket name");
            if bucket.is_none() {
                u.error("bucket", "missing", "a bucket name");
            }
            let key_id = u
                .string("access_key_id", "an access key id")
                .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
            let secret_file = u.string("secret_access_key_file", "a file holding the secret key");
            let from_env = secret_file.is_none();
            let secret = match secret_file {
                Some(f) => match std::fs::read_to_string(base.join(&f)) {
                    Ok(s) => {
                        u.note_secret_file("secret_access_key_file", base.join(&f));
                        Some(s.trim().to_owned())
                    }
                    Err(e) => {
                        u.error(
                            "secret_access_key_file",
                            format!("cannot read {f}: {e}"),
                            "a readable file holding the secret key",
                        );
                        None
                    }
                },
                None => std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            };
            // Temporary credentials come as a set: a token from the environment goes with a
            // secret from the environment only (never with a secret_access_key_file).
            let token_allowed = "a readable file holding the session token (temporary credentials)";
            let session_token = match u.string("session_token_file", token_allowed) {
                Some(f) => match std::fs::read_to_string(base.join(&f)) {
                    Ok(s) if !s.trim().is_empty() => {
                        u.note_secret_file("session_token_file", base.join(&f));
                        Some(Secret(s.trim().to_owned()))
                    }
                    Ok(_) => {
                        u.error("session_token_file", format!("{f} is empty"), token_allowed);
                        None
                    }
                    Err(e) => {
                        u.error(
                            "session_token_file",
                            format!("cannot read {f}: {e}"),
                            token_allowed,
                        );
                        None
                    }
                },
                None if from_env => std::env::var("AWS_SESSION_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| Secret(t.trim().to_owned())),
                None => None,
            };
            if key_id.is_none() || secret.is_none() {
                u.error(
                    "access_key_id",
                    "credentials missing",
                    "access_key_id and secret_access_key_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                );
            }
            UpstreamKind::S3 {
                endpoint: endpoint.trim_end_matches('/').to_owned(),
                bucket: bucket?,
                region: u
                    .string("region", "a region such as us-east-1")
                    .unwrap_or_else(|| "us-east-1".into()),
                key_prefix: u.string("key_prefix", "a key prefix").unwrap_or_default(),
                access_key_id: key_id?,
                secret_access_key: Secret(secret?),
                session_token,
            }
        }
        _ => {
            u.error(
                "url",
                "an upstream needs exactly one of url and s3_endpoint",
                "url = \"http://…\", or s3_endpoint with bucket and credentials",
            );
            return None;
        }
    };
    Some(UpstreamConfig {
        name: name?,
        prefixes,
        kind,
        origin_auth,
    })
}
