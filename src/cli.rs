//! Command-line interface (clap derive). `main` maps the parsed command to library calls.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// segd: origin server for HLS and DASH audio segments from local disks.
///
/// Serves playlists and segments with exact HTTP semantics (Range, ETag/304, Cache-Control per
/// object class, CORS) to CDNs and players. See README.md and config/segd.production.toml.
#[derive(Debug, Parser)]
#[command(name = "segd", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    ///
    /// Binds every listener in [server] and [admin], opens the volumes, prints the bound
    /// addresses, then serves until SIGTERM or SIGINT, when it stops accepting and lets in-flight
    /// responses finish (up to server.drain_timeout). Exit status: 0 after a clean stop, 64 when
    /// the config is invalid, 1 on a start-up failure (e.g. an address already in use).
    Serve {
        /// Config file (TOML). Relative paths inside it resolve against its directory.
        #[arg(long, short, default_value = "config/segd.toml")]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    ///
    /// Prints every problem as `FILE:LINE: KEY: PROBLEM (allowed: ...)`, one per line, and exits 64;
    /// prints `FILE: ok` and exits 0 when the file is valid. Also checks that volume directories
    /// exist and that marker files are present.
    CheckConfig {
        /// Config file (TOML).
        #[arg(long, short, default_value = "config/segd.toml")]
        config: PathBuf,
        /// Check what a reload (SIGHUP) checks: a volume root that is missing or unreadable
        /// (a disk that is down) is a warning, not an error, since segd takes it as an
        /// unhealthy volume. The systemd unit's ExecReload= runs this.
        #[arg(long)]
        reload: bool,
    },
    /// Mint an EdgeAuth v2 token with a configured key and print it with ready URLs
    /// (`--upload`: an upload token for PUT/POST/DELETE, with ffmpeg and curl commands).
    ///
    /// Uses [token] algorithm, salt and keys from the config. Prints the token, then the same
    /// request in each location segd accepts: query parameter, cookie (percent-encoded when
    /// the token holds what a cookie value cannot, such as `;`), and path-embedded
    /// (`/__token__=<token>/path`, which survives relative-URL resolution in players).
    Sign {
        /// Config file (TOML).
        #[arg(long, short, default_value = "config/segd.toml")]
        config: PathBuf,
        /// ACL pattern (`*` any run, `?` one character); repeat for several (joined with `!`).
        #[arg(long, required_unless_present = "url", conflicts_with = "url")]
        acl: Vec<String>,
        /// Make a URL token bound to this exact path instead of an ACL token.
        #[arg(long)]
        url: Option<String>,
        /// Lifetime, e.g. 30s, 10m, 1h, 1d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Start time: `now` or Unix seconds; omitted means no `st=` field.
        #[arg(long)]
        start: Option<String>,
        /// Key id to sign with (default: the first key active now).
        #[arg(long)]
        key_id: Option<String>,
        /// Bind the token to a client IP (`ip=`).
        #[arg(long)]
        ip: Option<String>,
        /// Session id (`id=`).
        #[arg(long)]
        id: Option<String>,
        /// Opaque payload (`data=`).
        #[arg(long)]
        data: Option<String>,
        /// Path used in the printed URLs (default: the URL token's path, or the ACL's fixed prefix).
        #[arg(long)]
        path: Option<String>,
        /// Mint an upload token with an [[ingest.keys]] key, printed with ffmpeg and curl commands.
        #[arg(long)]
        upload: bool,
    },
    /// Print the volume each URL path is placed on by the placement rule.
    ///
    /// The placement rule hashes the first two path segments (the asset directory, e.g.
    /// /vod/t1) with FNV-1a 64 and takes it modulo the number of volumes, in config order. Lay out
    /// files this way and each request costs one open on the right disk.
    Place {
        /// Config file (TOML).
        #[arg(long, short, default_value = "config/segd.toml")]
        config: PathBuf,
        /// URL paths such as /vod/t1/128k/seg_00001.ts.
        #[arg(required = true)]
        paths: Vec<String>,
    },
}
