//! `[cors]`: allowed origins, credentials, and the preflight `Access-Control-Max-Age`, with the values the
//! handler sends derived here once (whether any origin is allowed, the max-age header, the
//! request headers a preflight allows: those segd reads, and the token header `[token] name`).

use std::time::Duration;

use http::HeaderValue;

use super::fields::Section;

#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// `["*"]` or a list of exact origins.
    pub allow_origins: Vec<String>,
    /// Whether `allow_origins` contains `"*"`.
    pub any_origin: bool,
    /// `Access-Control-Allow-Credentials: true` on the answers to allowed origins, so a page on
    /// another origin may send its cookies (a cookie token) with `credentials: 'include'` and
    /// read the response. Needs an explicit origin list: the Fetch standard refuses a
    /// credentialed response whose `Access-Control-Allow-Origin` is `*`, and echoing any
    /// origin would let every site read what a viewer's cookie unlocks.
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age` for preflight answers.
    pub max_age: Duration,
    /// `max_age` in whole seconds, as the `Access-Control-Max-Age` header value.
    pub max_age_header: HeaderValue,
    /// `Access-Control-Allow-Headers` for reads: the conditional and range headers segd
    /// honours, and the token's header location (a player that sends its token as a header
    /// is preflighted for it).
    pub allow_headers: HeaderValue,
    /// The same for paths that take writes (`Content-Type` too).
    pub allow_headers_write: HeaderValue,
}

/// Request headers segd reads that a browser preflights (before the token header's name).
const READ_HEADERS: &str =
    "Range, If-None-Match, If-Modified-Since, If-Range, If-Match, If-Unmodified-Since";

impl CorsConfig {
    /// Whether `allow_origins` contains `"*"` (the `any_origin` field).
    pub fn any_origin(&self) -> bool {
        self.any_origin
    }
}

pub(super) const CORS_KEYS: &[&str] = &["allow_origins", "allow_credentials", "max_age"];

/// An origin as a browser serialises it in `Origin` (the HTML standard's ASCII serialisation):
/// `scheme://host[:port]`, lower-case, no path, no default port. Entries are compared with the
/// header byte for byte, so any other spelling would never match; it is refused instead.
fn origin_problem(o: &str) -> Result<(), &'static str> {
    let (scheme, rest) = o.split_once("://").ok_or("is not an origin")?;
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return Err("is not an origin (scheme http or https, lower-case)"),
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || http::HeaderValue::from_str(o).is_err()
    {
        return Err("is not an origin (scheme://host[:port], no path)");
    }
    if rest.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("is not as browsers send it (hosts are lower-case in Origin)");
    }
    if rest.ends_with(default_port) {
        return Err("is not as browsers send it (the default port is left out of Origin)");
    }
    Ok(())
}

/// `token_name` is `[token] name` (checked there to be a header-name token).
pub(super) fn parse_cors(s: &Section, token_name: &str) -> CorsConfig {
    let allowed = "[\"*\"] or a list of origins such as \"https://player.example.com\"";
    let allow_origins = s
        .string_list("allow_origins", allowed)
        .unwrap_or_else(|| vec!["*".into()]);
    for (i, o) in allow_origins.iter().enumerate() {
        if o == "*" {
            continue;
        }
        if let Err(problem) = origin_problem(o) {
            s.error(
                &format!("allow_origins[{i}]"),
                format!("{o:?} {problem}"),
                allowed,
            );
        }
    }
    let allow_credentials = s.bool("allow_credentials", false);
    if allow_credentials && allow_origins.iter().any(|o| o == "*") {
        s.error(
            "allow_origins",
            "\"*\" cannot be used with allow_credentials = true (browsers refuse a credentialed answer to \"*\", and echoing every origin would let any site read what a viewer's cookie unlocks)",
            "a list of origins such as \"https://player.example.com\" (without \"*\"), or allow_credentials = false",
        );
    }
    let max_age = s.duration(
        "max_age",
        Duration::from_secs(86400),
        Duration::ZERO,
        Duration::from_secs(7 * 86400),
    );
    s.finish();
    // A token name that is no header value was reported under token.name; leave it out here.
    let header_list = |extra: &str| {
        HeaderValue::from_str(&format!("{READ_HEADERS}{extra}, {token_name}"))
            .or_else(|_| HeaderValue::from_str(&format!("{READ_HEADERS}{extra}")))
            .unwrap_or(HeaderValue::from_static(READ_HEADERS))
    };
    CorsConfig {
        any_origin: allow_origins.iter().any(|o| o == "*"),
        allow_origins,
        allow_credentials,
        max_age,
        max_age_header: HeaderValue::from(max_age.as_secs()),
        allow_headers: header_list(""),
        allow_headers_write: header_list(", Content-Type"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::HeaderValue;

    use crate::config::Config;

    fn cors(section: &str) -> super::CorsConfig {
        Config::parse(
            &format!("[[volumes]]\npath = \"v\"\n[cors]\n{section}"),
            Path::new("/etc/segd/t.toml"),
        )
        .expect("valid")
        .cors
    }

    #[test]
    fn origins_as_browsers_send_them() {
        use super::origin_problem;
        for ok in [
            "https://a.example",
            "http://127.0.0.1:8000",
            "https://[::1]:8443",
        ] {
            assert_eq!(origin_problem(ok), Ok(()), "{ok}");
        }
        for bad in [
            "a.example",
            "https://a.example/",
            "https://a.example/player",
            "https://A.example",
            "HTTPS://a.example",
            "https://a.example:443",
            "http://a.example:80",
            "ftp://a.example",
            "https://",
            "https://u@a.example",
        ] {
            assert!(origin_problem(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_values() {
        let c = cors("");
        assert!(c.any_origin && c.any_origin());
        assert_eq!(c.max_age_header, HeaderValue::from_static("86400"));
        let c = cors("allow_origins = [\"https://a.example\"]\nmax_age = \"10m\"\n");
        assert!(!c.any_origin && !c.any_origin());
        assert_eq!(c.max_age_header, HeaderValue::from_static("600"));
        let c = cors("allow_origins = [\"https://a.example\", \"*\"]\nmax_age = \"0s\"\n");
        assert!(c.any_origin);
        assert_eq!(c.max_age_header, HeaderValue::from_static("0"));
    }

    #[test]
    fn preflight_allows_the_token_header() {
        let c = cors("");
        assert_eq!(
            c.allow_headers,
            "Range, If-None-Match, If-Modified-Since, If-Range, If-Match, If-Unmodified-Since, __token__"
        );
        assert_eq!(
            c.allow_headers_write,
            "Range, If-None-Match, If-Modified-Since, If-Range, If-Match, If-Unmodified-Since, Content-Type, __token__"
        );
        let c = Config::parse(
            "[[volumes]]\npath = \"v\"\n[token]\nname = \"hdnts\"\n",
            Path::new("/etc/segd/t.toml"),
        )
        .expect("valid")
        .cors;
        assert!(c
            .allow_headers
            .to_str()
            .is_ok_and(|v| v.ends_with(", hdnts")));
    }
}
