//! `[cors]`: allowed origins and the preflight `Access-Control-Max-Age`.

use std::time::Duration;

use super::fields::Section;

#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// `["*"]` or a list of exact origins.
    pub allow_origins: Vec<String>,
    /// `Access-Control-Max-Age` for preflight answers.
    pub max_age: Duration,
}

impl CorsConfig {
    pub fn any_origin(&self) -> bool {
        self.allow_origins.iter().any(|o| o == "*")
    }
}

pub(super) const CORS_KEYS: &[&str] = &["allow_origins", "max_age"];

pub(super) fn parse_cors(s: &Section) -> CorsConfig {
    let allowed = "[\"*\"] or a list of origins such as \"https://player.example.com\"";
    let allow_origins = s
        .string_list("allow_origins", allowed)
        .unwrap_or_else(|| vec!["*".into()]);
    for (i, o) in allow_origins.iter().enumerate() {
        let ok = o == "*"
            || ((o.starts_with("https://") || o.starts_with("http://"))
                && !o.ends_with('/')
                && http::HeaderValue::from_str(o).is_ok());
        if !ok {
            s.error(
                &format!("allow_origins[{i}]"),
                format!("{o:?} is not an origin"),
                allowed,
            );
        }
    }
    let max_age = s.duration(
        "max_age",
        Duration::from_secs(86400),
        Duration::ZERO,
        Duration::from_secs(7 * 86400),
    );
    s.finish();
    CorsConfig {
        allow_origins,
        max_age,
    }
}
