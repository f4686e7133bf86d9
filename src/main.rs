//! The `segd` binary: parse the command line, load the config, run. Exit codes live here only:
//! 0 success, 64 (EX_USAGE) invalid config, 1 runtime failure.

use std::process::ExitCode;

use clap::Parser;
use segd::cli::{Cli, Command};
use segd::config::Config;

/// jemalloc, not the C library's malloc: per-thread caches for every size a request allocates
/// (glibc's stop at 1 KiB, below a response's header map, and each larger request consolidates
/// its fast bins), and a purge that returns a burst's free pages from every arena at once
/// (`src/http/h1/trim.rs`). Measured in `benches/results/2026-11-29-*-alloc/`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const EX_CONFIG: u8 = 64;

/// Prints every config problem and the count; the exit code for an invalid config.
fn report(errs: &segd::config::ConfigErrors, path: &std::path::Path) -> ExitCode {
    // Problems found after parsing (paths, certificates) get their lines here.
    let mut errs = errs.clone();
    errs.locate();
    eprintln!("{errs}");
    eprintln!("segd: {} problem(s) in {}", errs.len(), path.display());
    ExitCode::from(EX_CONFIG)
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errs| report(&errs, path))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, reload } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let (mut errs, mut down) = if reload {
                (cfg.reload_checks(), cfg.volume_checks())
            } else {
                (cfg.check_paths(), Default::default())
            };
            errs.0.extend(segd::tls::validate(&cfg).0);
            if !errs.is_empty() {
                return report(&errs, &config);
            }
            down.locate();
            for e in &down.0 {
                eprintln!(
                    "warning: {e} (segd takes this volume as unhealthy: 503 for its objects)"
                );
            }
            for w in cfg.exposed_secrets() {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", config.display());
            ExitCode::SUCCESS
        }
        Command::Sign {
            config,
            acl,
            url,
            ttl,
            start,
            key_id,
            ip,
            id,
            data,
            path,
            upload,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let args = segd::sign::Args {
                acl,
                url,
                ttl,
                start,
                key_id,
                ip,
                id,
                data,
                path,
                upload,
            };
            match segd::sign::run(&cfg, &args) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("segd sign: {e}");
                    ExitCode::from(EX_CONFIG)
                }
            }
        }
        Command::Place { config, paths } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut status = ExitCode::SUCCESS;
            for p in paths {
                // A URL as a player, the banner or a CDN log has it: its path, without the
                // query and without a path-embedded token (the server strips it so too).
                let path = p
                    .strip_prefix("http://")
                    .or_else(|| p.strip_prefix("https://"))
                    .map_or(p.as_str(), |rest| {
                        rest.find('/').map_or("/", |i| &rest[i..])
                    });
                let path = path.split(['?', '#']).next().unwrap_or(path);
                let path = segd::auth::split_path_token(&cfg.token.name, path).path;
                match segd::volumes::sanitize(path) {
                    Ok(rel) => {
                        let i = segd::volumes::placement(&rel, cfg.volumes.len());
                        let v = &cfg.volumes[i];
                        println!("{p}\t{}\t{}", v.name, v.path.join(rel.as_str()).display());
                    }
                    Err(e) => {
                        eprintln!("{p}: not a servable path: {e}");
                        status = ExitCode::from(EX_CONFIG);
                    }
                }
            }
            status
        }
        Command::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut errs = cfg.distinct_volumes();
            errs.0.extend(segd::tls::validate(&cfg).0);
            if !errs.is_empty() {
                return report(&errs, &config);
            }
            segd::log::init(&cfg.log);
            // The example keys on a listener others can reach (the demo's are loopback only).
            if !cfg.loopback_only() {
                for w in cfg.published_secrets() {
                    tracing::warn!("{w}");
                }
            }
            match segd::server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("segd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
