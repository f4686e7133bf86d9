//! `segd sign`: mint a token with a configured key and print ready URLs in each location form.

use crate::auth::{edgeauth::SignSpec, encode_target, ready_urls, Auth};
use crate::config::{parse_duration, Config};

pub struct Args {
    pub acl: Vec<String>,
    pub url: Option<String>,
    pub ttl: String,
    pub start: Option<String>,
    pub key_id: Option<String>,
    pub ip: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub path: Option<String>,
    /// Sign with an `[[ingest.keys]]` key: an upload token, printed with ffmpeg and curl commands.
    pub upload: bool,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `http://host:port` of the first plaintext listener (loopback when it binds every address).
pub fn base_url(cfg: &Config) -> String {
    match cfg.server.listen.first() {
        Some(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}", a.port()),
        Some(a) => format!("http://{a}"),
        None => "http://127.0.0.1".to_string(),
    }
}

/// Builds the printed text, or says what is wrong with the arguments.
pub fn run(cfg: &Config, a: &Args) -> Result<String, String> {
    let ttl = parse_duration(&a.ttl)
        .filter(|d| d.as_secs() > 0)
        .ok_or_else(|| {
            format!(
                "--ttl {:?} is not a duration (allowed: e.g. 30s, 10m, 1h, 1d)",
                a.ttl
            )
        })?;
    let now = now();
    let start = match a.start.as_deref() {
        None => None,
        Some("now") => Some(now),
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| format!("--start {s:?} is not `now` or Unix seconds"))?,
        ),
    };
    // An HTTP date, and so the printed expiry, ends with the year 9999.
    let exp = start
        .unwrap_or(now)
        .checked_add(ttl.as_secs())
        .filter(|e| *e <= crate::http::LAST_HTTP_DATE)
        .ok_or_else(|| {
            "--start and --ttl put the expiry past the year 9999 (allowed: an expiry before it)"
                .to_string()
        })?;
    let (keys, table) = if a.upload {
        (&cfg.ingest.keys, "ingest.keys")
    } else {
        (&cfg.token.keys, "token.keys")
    };
    if keys.is_empty() {
        return Err(format!(
            "{}: {table}: no key configured (allowed: at least one [[{table}]] with id and secret)",
            cfg.file.display()
        ));
    }
    // `~` separates a token's fields: a value holding one would split its field, and the
    // token would never verify (the reference generator makes such tokens too; refuse them).
    let fields = [
        ("--ip", a.ip.as_deref()),
        ("--id", a.id.as_deref()),
        ("--data", a.data.as_deref()),
    ];
    let acls = a.acl.iter().map(|p| ("--acl", Some(p.as_str())));
    for (flag, value) in fields.into_iter().chain(acls) {
        if let Some(v) = value.filter(|v| v.contains('~')) {
            return Err(format!(
                "{flag} {v:?} contains '~', which separates a token's fields (allowed: any text without '~')"
            ));
        }
    }
    // `ip=` is compared with the viewer's address: a value that is none never verifies.
    if let Some(ip) = a.ip.as_deref() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "--ip {ip:?} is not an IP address (allowed: an IPv4 or IPv6 address, the viewer's)"
            ));
        }
    }
    let acl = (!a.acl.is_empty()).then(|| a.acl.join("!"));
    if let Some(u) = &a.url {
        if !u.starts_with('/') {
            return Err(format!("--url {u:?} must be a path starting with /"));
        }
    }
    let spec = SignSpec {
        acl: acl.as_deref(),
        url: a.url.as_deref(),
        start,
        exp,
        ip: a.ip.as_deref(),
        id: a.id.as_deref(),
        data: a.data.as_deref(),
        // Both filled in by `Auth::sign` from `[token]`.
        salt: None,
        escape_early: false,
        as_sent: false,
    };
    let auth = if a.upload {
        Auth::for_uploads(&cfg.token, &cfg.ingest.keys)
    } else {
        Auth::new(&cfg.token)
    };
    let (key_id, token) =
        auth.sign(&spec, a.key_id.as_deref(), now)
            .ok_or_else(|| match &a.key_id {
                Some(k) => format!("no active key with id {k:?} in {}", cfg.file.display()),
                None => format!("no key in {} is active now", cfg.file.display()),
            })?;
    let path = a.path.clone().or_else(|| a.url.clone()).unwrap_or_else(|| {
        let first = a.acl.first().map(String::as_str).unwrap_or("/");
        if a.upload {
            return inside_acl(first);
        }
        let fixed = first.find(['*', '?']).map_or(first, |i| &first[..i]);
        fixed.to_string()
    });
    let (query, cookie, embedded) = ready_urls(&base_url(cfg), auth.name(), &token, &path);
    if a.upload {
        let urls = Urls {
            query: &query,
            cookie: &cookie,
            embedded: &embedded,
        };
        let mut text = upload_text(cfg, &token, &key_id, exp, &path, &urls);
        if a.acl.first().is_some_and(|acl| !acl.contains('*')) {
            text.push_str(
                "\n# note: this ACL has no '*': it covers one path, and the commands above write others\n",
            );
        }
        return Ok(text);
    }
    Ok(format!(
        "token:  {token}\nkey:    {key_id} ({}), expires {exp} ({})\nquery:  {query}\ncookie: curl -b '{cookie}' '{}{}'\npath:   {embedded}\n",
        cfg.token.algorithm.as_str(),
        crate::http::http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp)),
        base_url(cfg),
        encode_target(&path),
    ))
}

/// A path the upload commands can write under that `acl` covers: each `?` made an `x`, cut at
/// the first `*` (which matches the rest, `/` included), a `/` added if the cut left none.
/// `/live/show1*` is `/live/show1/`, `/live/show?/*` is `/live/showx/`. (The commands write
/// beside this path's last `/`: cut at the ACL's last `/`, they wrote outside `/live/show1*`,
/// and every upload was 403: acceptance P3.) An ACL without `*` covers its one path only.
fn inside_acl(acl: &str) -> String {
    let fixed: String = acl.replace('?', "x");
    match fixed.find('*') {
        Some(i) if fixed[..i].ends_with('/') => fixed[..i].to_string(),
        Some(i) => format!("{}/", &fixed[..i]),
        None => fixed,
    }
}

/// An upload token with the commands that use it: ffmpeg pushing live HLS and DASH (the token as
/// the first path segment, which every URI ffmpeg derives from the output URL inherits), and
/// curl for one file.
/// The token in each place segd looks for it, for `path`.
struct Urls<'a> {
    query: &'a str,
    /// The `Cookie` value (`name=token`).
    cookie: &'a str,
    embedded: &'a str,
}

fn upload_text(
    cfg: &Config,
    token: &str,
    key_id: &str,
    exp: u64,
    path: &str,
    urls: &Urls<'_>,
) -> String {
    let Urls {
        query,
        cookie,
        embedded,
    } = urls;
    let dir = embedded.trim_end_matches(|c| c != '/');
    let file = format!("{}example.ts", path.trim_end_matches(|c| c != '/'));

    let (_, _, put_url) = ready_urls(&base_url(cfg), cfg.token.name.as_str(), token, &file);
    format!(
        "token:  {token}\nkey:    {key_id} (upload, {}), expires {exp} ({})\nquery:  {query}\ncookie: curl -b '{cookie}' -T FILE '{}{}'\npath:   {embedded}\n\n\
# live HLS (MPEG-TS segments; add -hls_segment_type fmp4 for fMP4). Straight to one node you may\n\
# add -http_persistent 1; not through a load balancer (README: Pointing a packager at a cluster).\n\
# Give ffmpeg the path form above, not the query form: it drops the query from the URLs it builds\n\
# itself (an fMP4 init segment, a master playlist), which are then refused\n\
# The token must outlive the stream (--ttl): once it expires every upload is 403 and ffmpeg stops\n\
# publishing without a word\n\
ffmpeg -re -i INPUT -c:a aac -b:a 128k -f hls -hls_time 4 -hls_list_size 6 \\\n  -hls_flags delete_segments -method PUT '{dir}index.m3u8'\n\n\
# live DASH (low latency, 0.2 s chunks: add -streaming 1 -ldash 1 -frag_type duration -frag_duration 0.2);\n\
# no -http_persistent 1 for DASH: its muxer does not reconnect, and exits at segd's next upgrade\n\
ffmpeg -re -i INPUT -c:a aac -b:a 128k -f dash -seg_duration 4 -window_size 6 \\\n  -method PUT '{dir}manifest.mpd'\n\n\
# one file\n\
curl -T FILE '{put_url}'\n",
        cfg.token.algorithm.as_str(),
        crate::http::http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp)),
        base_url(cfg),
        encode_target(&file),
    )
}
