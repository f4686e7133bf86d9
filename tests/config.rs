//! Config and CLI contract:
//! - `check-config` prints every problem (file, line, key, problem, allowed) and exits 64
//! - a missing config file names the path (check-config and serve)
//! - unknown keys are errors listing the allowed keys
//! - CORS credentials with a wildcard origin are refused (file, key, allowed values), and so
//!   are origins no browser sends (upper-case host, default port, a path)
//! - two volumes on one directory (however spelt) are an error for check-config and serve
//! - a misspelt `[log] level` (a target name to tracing's filter) is an error, not silence
//! - `--help` of every command describes it
//! - a listen address already in use fails start-up with exit 1 and the key

use std::process::Command;

use crate::util::*;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("vol")).expect("mkdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
        path.display().to_string(),
    )
}

#[test]
fn every_problem_is_reported() {
    let (code, err, path) = check(
        r#"
[server]
listen = ["127.0.0.1:8080", "not-an-address"]
workers = -3
blocking_threads = 0
drain_timeout = "forever"
sched_policy = "fifo"
lisen = ["typo"]

[admin]
listen = "127.0.0.1:8080"

[[volumes]]
path = "vol"
[[volumes]]
name = "x"

[cache]
max_bytes = "1GB"
max_item_bytes = "8MiB"

[token]
algorithm = "sha512"
protect = ["vod/"]
leeway = "10s"
[[token.keys]]
id = "k1"
secret = "not-hex"

[cors]
allow_origins = ["example.com"]

[log]
access = "stdout"
format = "xml"

[bogus]
"#,
    );
    assert_eq!(code, 64, "{err}");
    // Each with the line it is written on (a missing key: its table's header), as
    // `FILE:LINE: KEY: ...`.
    let expect = [
        ("server.listen[1]", 3, "IP:PORT"),
        ("server.workers", 4, "0 (one per CPU core)"),
        ("server.blocking_threads", 5, "1..=1024"),
        ("server.drain_timeout", 6, "duration"),
        ("server.sched_policy", 7, "other, batch"),
        ("server.lisen", 8, "unknown key"),
        ("admin.listen", 11, "used twice"),
        ("volumes[1].path", 15, "missing"),
        ("cache.max_bytes", 19, "KiB, MiB, GiB"),
        ("token.algorithm", 23, "sha256, sha1, md5"),
        ("token.protect[0]", 24, "start with"),
        ("token.keys[0].secret", 28, "hex"),
        ("cors.allow_origins[0]", 31, "not an origin"),
        ("log.format", 35, "json, combined"),
        ("bogus", 37, "unknown key"),
    ];
    for (key, at, needle) in expect {
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("no error for {key} in:\n{err}"));
        assert!(
            line.starts_with(&format!("{path}:{at}: {key}: ")),
            "names the file and the line ({at}): {line}"
        );
        assert!(line.contains(needle), "{key}: {line}");
    }
    // Unknown keys list what is allowed.
    let typo = err
        .lines()
        .find(|l| l.contains("server.lisen"))
        .expect("typo line");
    assert!(
        typo.contains("allowed: listen, workers, blocking_threads"),
        "{typo}"
    );
    assert!(err.contains("problem(s)"));
}

/// Problems found after parsing (a volume directory that does not exist, checked by
/// `check-config` and by a reload) and TOML syntax errors (a table written twice) name their
/// line too.
#[test]
fn path_and_syntax_problems_name_their_line() {
    let (code, err, path) = check(
        "[server]\nworkers = 1\n\n[[volumes]]\nname = \"a\"\npath = \"/nonexistent/segd-vol\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.starts_with(&format!(
            "{path}:6: volumes[0].path: /nonexistent/segd-vol: "
        )),
        "{err}"
    );
    let (code, err, path) = check("[server]\nworkers = 1\n\n[server]\nworkers = 2\n");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.starts_with(&format!("{path}:4: invalid TOML: ")) && err.contains("duplicate key"),
        "{err}"
    );
}

#[test]
fn missing_file_names_the_path() {
    for cmd in ["check-config", "serve"] {
        let out = Command::new(BIN)
            .args([cmd, "--config", "/nonexistent/segd.toml"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/nonexistent/segd.toml") && err.contains("cannot read config file"),
            "{cmd}: {err}"
        );
    }
    // serve without --config looks for config/segd.toml relative to the working directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config/segd.toml"));
}

#[test]
fn invalid_toml_and_missing_volume_dir() {
    let (code, err, _) = check("[server\nlisten = 1");
    assert_eq!(code, 64);
    assert!(err.contains("invalid TOML"), "{err}");
    let (code, err, _) = check("[[volumes]]\npath = \"does-not-exist\"\n");
    assert_eq!(code, 64);
    assert!(
        err.contains("volumes[0].path") && err.contains("existing, readable directory"),
        "{err}"
    );
    // What a reload checks (the unit's ExecReload=): a volume whose disk is down is a
    // warning, as segd takes it as unhealthy; `systemctl reload` failed during a disk outage
    // (acceptance M2).
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("segd.toml");
    std::fs::write(&cfg, "[[volumes]]\npath = \"does-not-exist\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--reload", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("volumes[0].path") && err.contains("unhealthy"),
        "{err}"
    );
    let (code, err, _) = check("[server]\nlisten = [\"127.0.0.1:0\"]\n");
    assert_eq!(code, 64);
    assert!(err.contains("volumes: no volume configured"), "{err}");
    let (code, err, _) = check("[[volumes]]\npath = \"vol\"\n");
    assert_eq!(code, 0, "{err}");
}

/// `[log] level` takes levels and `TARGET=LEVEL` directives. A misspelt level (`warning`) is
/// a target name to tracing's filter, which would start segd with every log line silenced.
#[test]
fn misspelt_log_level_is_an_error() {
    for bad in ["warning", "information", "info,verbose"] {
        let (code, err, path) = check(&format!(
            "[[volumes]]\npath = \"vol\"\n[log]\nlevel = \"{bad}\"\n"
        ));
        assert_eq!(code, 64, "{bad}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(": log.level: "))
            .unwrap_or_else(|| panic!("no log.level error for {bad}:\n{err}"));
        assert!(line.starts_with(&path), "names the file: {line}");
        assert!(line.contains("is not a level"), "{line}");
        assert!(
            line.contains("allowed: error, warn, info, debug, trace"),
            "{line}"
        );
    }
    for good in ["warn", "debug,hyper=info"] {
        let (code, err, _) = check(&format!(
            "[[volumes]]\npath = \"vol\"\n[log]\nlevel = \"{good}\"\n"
        ));
        assert_eq!(code, 0, "{good}: {err}");
    }
}

/// `RUST_LOG` is held to the same rule: a bare word that is not a level (`verbose`) would be a
/// target name and silence every log line, errors included (acceptance I-F8). It is named and
/// `[log] level` is used instead.
#[test]
fn a_misspelt_rust_log_is_named_not_silence() {
    let dir = demo_volumes();
    let srv = Server::start_with(&config_for(&[&dir.path().join("disk1")], ""), |c| {
        c.env("RUST_LOG", "verbose")
    });
    let log = srv.log_with(&["RUST_LOG ignored", "volume surveyed"]);
    let line = log
        .lines()
        .find(|l| l.contains("RUST_LOG ignored"))
        .unwrap_or_default();
    assert!(line.contains("\"verbose\" is not a level"), "{line}");
}

/// Two volumes on one directory, spelt differently (`./vol/`, an absolute path, a symlink):
/// check-config and serve refuse them as they refuse the same path written twice.
#[test]
fn one_directory_is_one_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).expect("mkdir");
    std::os::unix::fs::symlink(&vol, dir.path().join("link")).expect("symlink");
    std::fs::create_dir(dir.path().join("other")).expect("mkdir");
    let path = dir.path().join("segd.toml");
    let run = |cmd: &str| {
        // A relative --config, as an operator types it: paths resolve against "".
        let out = Command::new(BIN)
            .args([cmd, "--config", "segd.toml"])
            .current_dir(dir.path())
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for second in [
        "./vol/".to_string(),
        vol.display().to_string(),
        "link".to_string(),
    ] {
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [[volumes]]\nname = \"a\"\npath = \"vol\"\n\
                 [[volumes]]\nname = \"b\"\npath = \"{second}\"\n"
            ),
        )
        .expect("write");
        for cmd in ["check-config", "serve"] {
            let (code, err) = run(cmd);
            assert_eq!(code, 64, "{cmd} with {second}: {err}");
            let line = err
                .lines()
                .find(|l| l.contains(": volumes[1].path: "))
                .unwrap_or_else(|| panic!("{cmd} with {second}: no volumes[1].path error:\n{err}"));
            assert!(line.starts_with("segd.toml:10: "), "{line}");
            assert!(
                line.contains("is the same directory as volumes[0].path")
                    && line.contains("allowed: distinct directories"),
                "{line}"
            );
        }
    }
    std::fs::write(
        &path,
        "[[volumes]]\npath = \"vol\"\n[[volumes]]\npath = \"other\"\n",
    )
    .expect("write");
    let (code, err) = run("check-config");
    assert_eq!(code, 0, "{err}");
}

/// The directories segd writes on its own are apart from each other: a `pull.cache_path` (or an
/// `ingest.queue_path`) that is a volume, contains one or lies inside one is refused by
/// `check-config` and `serve`, with the key and both paths. (The pull cache's start removes
/// every file in its tree it did not write: it deleted the volume's media, or the queue's
/// acknowledged uploads; a cache inside a volume served pulled objects past their tokens.)
#[test]
fn the_directories_segd_writes_are_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("srv/vol")).expect("mkdir");
    std::fs::write(dir.path().join("srv/vol/keep.ts"), b"media").expect("write");
    std::fs::write(dir.path().join("secret"), "0123456789abcdef0123").expect("write");
    let path = dir.path().join("segd.toml");
    let run = |cmd: &str| {
        let out = Command::new(BIN)
            .args([cmd, "--config", "segd.toml"])
            .current_dir(dir.path())
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let upstream = "[[pull.upstreams]]\nname = \"bucket\"\ns3_endpoint = \"http://127.0.0.1:9\"\n\
                    bucket = \"b\"\nregion = \"us-east-1\"\naccess_key_id = \"k\"\n\
                    secret_access_key_file = \"secret\"\nprefixes = [\"/vod/\"]\n";
    let write_through = |queue: &str| {
        format!(
            "[ingest]\nprefixes = [\"/vod/\"]\nwrite_through = \"bucket\"\ndurability = \"local\"\n\
             queue_path = \"{queue}\"\n[[ingest.keys]]\nid = \"up1\"\n\
             secret = \"0123456789abcdef0123456789abcdef\"\n"
        )
    };
    for (cache, ingest, key, how) in [
        (
            "srv/vol",
            String::new(),
            "pull.cache_path",
            "is the same directory as volumes[0].path",
        ),
        (
            "./srv/vol/",
            String::new(),
            "pull.cache_path",
            "is the same directory as volumes[0].path",
        ),
        (
            "srv",
            String::new(),
            "pull.cache_path",
            "contains volumes[0].path",
        ),
        (
            "srv/vol/pc",
            String::new(),
            "pull.cache_path",
            "lies inside volumes[0].path",
        ),
        (
            "cache",
            write_through("cache"),
            "ingest.queue_path",
            "is the same directory as pull.cache_path",
        ),
        (
            "cache",
            write_through("srv/vol/q"),
            "ingest.queue_path",
            "lies inside volumes[0].path",
        ),
    ] {
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [[volumes]]\nname = \"a\"\npath = \"srv/vol\"\n\
                 [pull]\ncache_path = \"{cache}\"\n{upstream}{ingest}"
            ),
        )
        .expect("write");
        for cmd in ["check-config", "serve"] {
            let (code, err) = run(cmd);
            assert_eq!(code, 64, "{cmd} with cache {cache}: {err}");
            let line = err
                .lines()
                .find(|l| l.contains(&format!(": {key}: ")))
                .unwrap_or_else(|| panic!("{cmd} with {cache}: no {key} error:\n{err}"));
            assert!(line.contains(how), "{line}");
            assert!(
                line.contains("allowed: a directory apart from every volume"),
                "{line}"
            );
        }
        assert!(
            dir.path().join("srv/vol/keep.ts").is_file(),
            "the volume's media is still there"
        );
    }
    // Apart, or in a dot-directory of a volume (never served; the queue's default): fine.
    for (cache, queue) in [("cache", "queue"), ("srv/vol/.pull", "srv/vol/.segd-queue")] {
        std::fs::write(
            &path,
            format!(
                "[[volumes]]\npath = \"srv/vol\"\n[pull]\ncache_path = \"{cache}\"\n{upstream}{}",
                write_through(queue)
            ),
        )
        .expect("write");
        let (code, err) = run("check-config");
        assert_eq!(code, 0, "{cache}, {queue}: {err}");
    }
}

/// A key secret's error states the limit that is checked: 16 hex digits (8 bytes). It said
/// "at least 16 bytes' worth" while accepting 8 bytes (and the demo's 14-byte key).
#[test]
fn short_secret_names_the_checked_limit() {
    let keys = |secret: &str| {
        format!("[[volumes]]\npath = \"vol\"\n[[token.keys]]\nid = \"k\"\nsecret = \"{secret}\"\n")
    };
    let (code, err, _) = check(&keys("00112233445566"));
    assert_eq!(code, 64, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains(": token.keys[0].secret: "))
        .unwrap_or_else(|| panic!("no secret error:\n{err}"));
    assert!(line.contains("too short"), "{line}");
    assert!(line.contains("at least 16 (8 bytes)"), "{line}");
    let (code, err, _) = check(&keys("0011223344556677"));
    assert_eq!(code, 0, "16 digits are enough: {err}");
}

/// `[cors] allow_credentials = true` with `"*"` (the default) cannot work in a browser and is
/// refused, naming the key and what is allowed; `allow_credentials` and `[token] escape_early`
/// take booleans; credentials with an origin list are fine.
#[test]
fn cors_credentials_need_an_origin_list() {
    let vol = "[[volumes]]\npath = \"vol\"\n";
    let (code, err, file) = check(&format!("{vol}[cors]\nallow_credentials = true\n"));
    assert_eq!(code, 64, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains(": cors.allow_origins: "))
        .unwrap_or_else(|| panic!("no allow_origins error:\n{err}"));
    assert!(line.contains(&file), "{line}");
    assert!(line.contains("allow_credentials"), "{line}");
    assert!(line.contains("https://player.example.com"), "{line}");
    let (code, err, _) = check(&format!(
        "{vol}[cors]\nallow_origins = [\"https://a.example\", \"*\"]\nallow_credentials = true\n"
    ));
    assert_eq!(code, 64, "a \"*\" among others: {err}");
    let (code, err, _) = check(&format!(
        "{vol}[cors]\nallow_credentials = \"yes\"\n[token]\nescape_early = 1\n"
    ));
    assert_eq!(code, 64, "{err}");
    for key in ["cors.allow_credentials", "token.escape_early"] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("no {key} error:\n{err}"));
        assert!(line.contains("true, false"), "{line}");
    }
    let (code, err, _) = check(&format!(
        "{vol}[cors]\nallow_origins = [\"https://a.example\"]\nallow_credentials = true\n[token]\nescape_early = true\n"
    ));
    assert_eq!(code, 0, "{err}");
}

/// An origin the browser never sends (upper-case host, default port, a path) could never match
/// the `Origin` header byte for byte: refused, naming the entry and why.
#[test]
fn origins_must_be_as_browsers_send_them() {
    let (code, err, _) = check(
        "[[volumes]]\npath = \"vol\"\n[cors]\nallow_origins = [\"https://Player.example\", \"https://a.example:443\", \"https://b.example/app\", \"https://ok.example\"]\n",
    );
    assert_eq!(code, 64, "{err}");
    for (key, why) in [
        ("cors.allow_origins[0]", "lower-case"),
        ("cors.allow_origins[1]", "default port"),
        ("cors.allow_origins[2]", "no path"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("no {key} error:\n{err}"));
        assert!(line.contains(why), "{line}");
    }
    assert!(!err.contains("allow_origins[3]"), "{err}");
}

/// Origin auth with a bad header name and a short secret: both are reported at once, and a
/// short secret without a header names both problems too.
#[test]
fn origin_auth_problems_are_all_reported() {
    let (code, err, _) = check(
        "[[volumes]]\npath = \"vol\"\n[token]\norigin_auth_header = \"X Bad\"\norigin_auth_secret = \"short\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(": token.origin_auth_header: "), "{err}");
    assert!(
        err.contains(": token.origin_auth_secret: shorter than 16 characters"),
        "{err}"
    );
    let (code, err, _) =
        check("[[volumes]]\npath = \"vol\"\n[token]\norigin_auth_secret = \"short\"\n");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(": token.origin_auth_header: missing while origin_auth_secret is set"),
        "{err}"
    );
    assert!(
        err.contains(": token.origin_auth_secret: shorter than 16"),
        "{err}"
    );
    let (code, err, _) =
        check("[[volumes]]\npath = \"vol\"\n[token]\norigin_auth_header = \"X-Origin-Auth\"\n");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(": token.origin_auth_secret: missing"), "{err}");
    let (code, err, _) = check(
        "[[volumes]]\npath = \"vol\"\n[token]\norigin_auth_header = \"X-Origin-Auth\"\norigin_auth_secret = \"0123456789abcdef\"\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn help_is_complete() {
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "check-config", "place"] {
        assert!(text.contains(cmd), "--help lists {cmd}:\n{text}");
        let out = Command::new(BIN)
            .args([cmd, "--help"])
            .output()
            .expect("run");
        assert!(out.status.success());
        let sub = String::from_utf8_lossy(&out.stdout);
        assert!(sub.contains("--config"), "{cmd} --help:\n{sub}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SIGTERM") && text.contains("64"), "{text}");
}

#[test]
fn bind_conflict_fails_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "[server]\nlisten = [\"{addr}\"]\n[admin]\nlisten = \"off\"\n[[volumes]]\npath = \"{}\"\n",
        dir.path().display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, cfg).expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot bind server.listen[0] = {addr}")),
        "{err}"
    );
}

/// `sched_policy = "batch"` puts the worker and blocking threads under SCHED_BATCH (policy 3 in
/// `/proc/PID/task/TID/stat`); the default leaves them under SCHED_OTHER (0).
#[test]
fn sched_policy_reaches_the_worker_threads() {
    let vols = demo_volumes();
    let disk = vols.path().join("disk1");
    for (setting, want) in [("", 0), ("sched_policy = \"batch\"\n", 3)] {
        let cfg =
            config_for(&[&disk], "").replace("workers = 2\n", &format!("workers = 2\n{setting}"));
        let srv = Server::start(&cfg);
        let pid = srv.child.id();
        let mut workers = 0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
            let t = t.expect("task").path();
            let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            if comm.trim() != "segd-worker" {
                continue;
            }
            let stat = std::fs::read_to_string(t.join("stat")).expect("stat");
            // Fields after "(comm)": state is field 3, policy field 41.
            let after = stat.rsplit_once(')').expect("comm").1;
            let policy: u32 = after
                .split_whitespace()
                .nth(41 - 3)
                .and_then(|f| f.parse().ok())
                .expect("policy field");
            assert_eq!(policy, want, "{setting:?}: {}", t.display());
            workers += 1;
        }
        assert!(workers >= 2, "{setting:?}: {workers} worker threads seen");
    }
}

/// A `[cache_control]` value that is a valid header but not valid Cache-Control (RFC 9111 §5.2)
/// is an error naming file and key: `max-age=abc` would reach every CDN as a directive it
/// ignores, leaving the object with no freshness at all.
#[test]
fn malformed_cache_control_is_an_error() {
    for (key, bad) in [
        ("segments", "public, max-age=abc"),
        ("live", "public; max-age=1"),
        ("playlists", "max-age"),
    ] {
        let (code, err, path) = check(&format!(
            "[[volumes]]\npath = \"vol\"\n[cache_control]\n{key} = \"{bad}\"\n"
        ));
        assert_eq!(code, 64, "{key} = {bad}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": cache_control.{key}: ")))
            .unwrap_or_else(|| panic!("no cache_control.{key} error for {bad}:\n{err}"));
        assert!(line.starts_with(&path), "names the file: {line}");
        assert!(
            line.contains("(allowed: a Cache-Control header value"),
            "{line}"
        );
    }
    let (code, err, _) = check(
        "[[volumes]]\npath = \"vol\"\n[cache_control]\nsegments = \"public, max-age=60, stale-if-error=600\"\n",
    );
    assert_eq!(code, 0, "{err}");
}

/// `config/segd.production.toml` documents every key segd accepts ("every key with its meaning,
/// default and allowed values", README): the keys are read from segd itself, from the
/// `allowed:` list of the unknown-key error of every section and array-of-tables entry, and each
/// must appear in the file as `key = …` (set or commented out), as a `[[section.key]]` table,
/// or as `section.key` in a comment (an older name). (`[pull] tls_ca_file` was missing.)
#[test]
fn production_config_documents_every_key() {
    let sections = [
        "server",
        "admin",
        "cache",
        "token",
        "[token.keys]",
        "cors",
        "cache_control",
        "log",
        "tls",
        "[tls.certs]",
        "ingest",
        "[ingest.keys]",
        "live",
        "pull",
        "[pull.upstreams]",
        "[volumes]",
    ];
    let text: String = sections
        .iter()
        .map(|s| format!("[{s}]\nzz_unknown = 1\n"))
        .collect();
    let (code, err, _) = check(&text);
    assert_eq!(code, 64, "{err}");
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/segd.production.toml"),
    )
    .expect("config/segd.production.toml");
    let mut missing = Vec::new();
    for s in sections {
        let name = s.trim_matches(|c| c == '[' || c == ']');
        let line = err
            .lines()
            .find(|l| {
                l.contains(&format!(": {name}.zz_unknown: "))
                    || l.contains(&format!(": {name}[0].zz_unknown: "))
            })
            .unwrap_or_else(|| panic!("no unknown-key error for [{s}]:\n{err}"));
        let allowed = line
            .split("(allowed: ")
            .nth(1)
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no allowed list: {line}"));
        for key in allowed.split(", ") {
            let documented = doc.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.split('=').next().is_some_and(|k| k.trim() == key) && l.contains('=')
                    || l.starts_with(&format!("[[{name}.{key}]]"))
                    || l.starts_with(&format!("[{name}.{key}]"))
            }) || doc.contains(&format!("{name}.{key}"));
            if !documented {
                missing.push(format!("{name}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys segd accepts that config/segd.production.toml does not document: {missing:?}"
    );
}

/// A `[tls]` with a certificate and no `listen` key is an error naming `tls.listen` (it started
/// with no TLS listener and said nothing); `listen = []` keeps TLS off, as documented.
#[test]
fn tls_certificate_without_listener_is_an_error() {
    let (code, err, path) = check(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[volumes]]\npath = \"vol\"\n\n\
         [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&path) && err.contains("tls.listen: missing"),
        "{err}"
    );
    assert!(err.contains("listen = [] keeps TLS off"), "{err}");
    let (code, err, _) = check(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[volumes]]\npath = \"vol\"\n\n\
         [tls]\nlisten = []\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    assert_eq!(code, 0, "an empty list turns TLS off: {err}");
}

/// A listen address repeated across sections is reported at the key that repeats it, with its
/// line, naming the first use (it was always `server.listen`, even for a `[tls] listen` entry,
/// and pointed at the wrong line).
#[test]
fn repeated_listen_address_names_both_keys() {
    let (code, err, path) = check(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\n\n[[volumes]]\npath = \"vol\"\n\n\
         [tls]\nlisten = [\"127.0.0.1:9443\", \"127.0.0.1:8443\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
    );
    assert_eq!(code, 64, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("used twice"))
        .unwrap_or_else(|| panic!("no repeated-address error:\n{err}"));
    assert!(
        line.starts_with(&format!(
            "{path}:8: tls.listen[1]: address 127.0.0.1:8443 is used twice (also server.listen[0])"
        )),
        "{line}"
    );
}

/// `session_token_file` (temporary credentials) is read like `secret_access_key_file`: one that
/// cannot be read, or holds nothing, is an error naming the key; a readable one is taken.
#[test]
fn s3_session_token_file_problems_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s\n").expect("write");
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").expect("write");
    let good = dir.path().join("token");
    std::fs::write(&good, "FwoGZXIvYXdzE\n").expect("write");
    let conf = |token: &std::path::Path| {
        format!(
            "[[volumes]]\npath = \"vol\"\n[pull]\ncache_path = \"pull-cache\"\n[[pull.upstreams]]\nname = \"archive\"\ns3_endpoint = \"http://127.0.0.1:9\"\nbucket = \"b\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"{}\"\nsession_token_file = \"{}\"\nprefixes = [\"/vod/\"]\n",
            secret.display(),
            token.display()
        )
    };
    let (code, err, path) = check(&conf(&dir.path().join("missing")));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!(
            "{path}:11: pull.upstreams[0].session_token_file: cannot read "
        )) && err.contains("(allowed: a readable file holding the session token"),
        "{err}"
    );
    let (code, err, path) = check(&conf(&empty));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!(
            "{path}:11: pull.upstreams[0].session_token_file: "
        )) && err.contains("is empty (allowed: "),
        "{err}"
    );
    let (code, err, _) = check(&conf(&good));
    assert_eq!(code, 0, "{err}");
}

/// IPv6 listeners are IPv6-only, so an IPv4-mapped address (`[::ffff:127.0.0.1]:PORT`) can
/// never be listened on (Linux refuses the bind): `check-config` and `serve` refuse it at the
/// key, with its value and the IPv4 address to write instead, in every section that listens.
#[test]
fn ipv4_mapped_listen_addresses_are_refused() {
    let text = "[server]\nlisten = [\"127.0.0.1:0\", \"[::ffff:127.0.0.1]:8080\"]\n\n\
         [admin]\nlisten = \"[::FFFF:7f00:1]:9090\"\n\n[[volumes]]\npath = \"vol\"\n\n\
         [tls]\nlisten = [\"[::ffff:0.0.0.0]:8443\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let (code, err, path) = check(text);
    assert_eq!(code, 64, "{err}");
    for (at, key, value, v4) in [
        (
            2,
            "server.listen[1]",
            "[::ffff:127.0.0.1]:8080",
            "127.0.0.1:8080",
        ),
        (5, "admin.listen", "[::FFFF:7f00:1]:9090", "127.0.0.1:9090"),
        (11, "tls.listen[0]", "[::ffff:0.0.0.0]:8443", "0.0.0.0:8443"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("no error for {key} in:\n{err}"));
        assert!(
            line.starts_with(&format!(
                "{path}:{at}: {key}: \"{value}\" is an IPv4-mapped IPv6 address"
            )),
            "{line}"
        );
        assert!(
            line.contains(&format!("write the IPv4 address \"{v4}\" instead")),
            "{line}"
        );
    }
    // `serve` reads the same file the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("vol")).expect("mkdir");
    let cfg = dir.path().join("segd.toml");
    std::fs::write(&cfg, text).expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("server.listen[1]: \"[::ffff:127.0.0.1]:8080\" is an IPv4-mapped"),
        "{err}"
    );
}

/// A secret is written inline or kept in a file (`secret_file`, `origin_auth_secret_file`),
/// never both; an unreadable or empty file is named. `check-config` warns (exit 0) about a
/// secret every user can read: inline in a world-readable config, or in a world-readable file.
#[test]
fn secrets_inline_or_in_files_and_who_can_read_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("vol")).expect("mkdir");
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let key = dir.path().join("k1.key");
    std::fs::write(&key, "9f3c1e7a5b2d4f6e8a0c1b3d5f7e9a2c\n").expect("write");
    chmod(&key, 0o600);
    let path = dir.path().join("segd.toml");
    let run = |text: &str, mode: u32| {
        std::fs::write(&path, text).expect("write");
        chmod(&path, mode);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code().unwrap_or(-1), err)
    };
    let vol = "[[volumes]]\npath = \"vol\"\n";
    let in_file = format!("{vol}[[token.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"\n");
    let (code, err) = run(&in_file, 0o644);
    assert_eq!(
        (code, err.as_str()),
        (0, ""),
        "a 0600 secret file: no warning"
    );
    chmod(&key, 0o644);
    let (code, err) = run(&in_file, 0o644);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: ")
            && err.contains("token.keys[0].secret_file")
            && err.contains("k1.key is readable by every user (mode 0644)"),
        "{err}"
    );
    let inline = format!(
        "{vol}[[token.keys]]\nid = \"k1\"\nsecret = \"0123456789abcdef\"\n\
         [token]\norigin_auth_header = \"X-A\"\norigin_auth_secret = \"0123456789abcdefgh\"\n"
    );
    let (code, err) = run(&inline, 0o600);
    assert_eq!((code, err.as_str()), (0, ""), "a 0600 config: no warning");
    let (code, err) = run(&inline, 0o644);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("token.keys[0].secret, token.origin_auth_secret")
            && err.contains("every user can read (mode 0644)"),
        "{err}"
    );
    let both = format!(
        "{vol}[[token.keys]]\nid = \"k1\"\nsecret = \"0123456789abcdef\"\nsecret_file = \"k1.key\"\n"
    );
    let (code, err) = run(&both, 0o600);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(": token.keys[0].secret_file: set together with secret"),
        "{err}"
    );
    // A secret segd's own example configs publish: a warning in a 0600 file too (acceptance
    // H1: the production template's upload key let anyone write).
    let published = format!(
        "{vol}[ingest]\nprefixes = [\"/up/\"]\n[[ingest.keys]]\nid = \"u\"\n\
         secret = \"0123456789abcdef0123456789abcdef\"\n"
    );
    let (code, err) = run(&published, 0o600);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: ")
            && err.contains("ingest.keys[0].secret is a secret published in segd's repository")
            && err.contains("upload or delete media"),
        "{err}"
    );
    let missing = format!("{vol}[ingest]\nprefixes = [\"/up/\"]\n[[ingest.keys]]\nid = \"u\"\nsecret_file = \"nope\"\n");
    let (code, err) = run(&missing, 0o600);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(": ingest.keys[0].secret_file: cannot read nope: "),
        "{err}"
    );
    std::fs::write(&key, "\n").expect("write");
    let (code, err) = run(&in_file, 0o600);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("k1.key is empty"), "{err}");
    let origin =
        format!("{vol}[token]\norigin_auth_header = \"X-A\"\norigin_auth_secret_file = \"nope\"\n");
    let (code, err) = run(&origin, 0o600);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(": token.origin_auth_secret_file: cannot read nope")
            && !err.contains("missing while"),
        "one problem, named once: {err}"
    );
}

/// `[server] proxy_protocol`: each entry a network (CIDR) or an address; the others named by
/// index with what is allowed, and a list of good ones passes.
#[test]
fn proxy_protocol_networks_are_checked() {
    let (code, err, path) = check(
        "[server]\nproxy_protocol = [\"10.0.0.0/8\", \"10.0.0.0/33\", \"balancer.example\", \"::1\"]\n[[volumes]]\npath = \"vol\"\n",
    );
    assert_eq!(code, 64, "{err}");
    for key in ["server.proxy_protocol[1]", "server.proxy_protocol[2]"] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("no error for {key} in:\n{err}"));
        assert!(line.starts_with(&format!("{path}:2: {key}: ")), "{line}");
        assert!(
            line.contains("is not a network or an address") && line.contains("10.0.0.0/8"),
            "{line}"
        );
    }
    assert!(
        !err.contains("proxy_protocol[0]") && !err.contains("proxy_protocol[3]"),
        "{err}"
    );
    let (code, err, _) = check(
        "[server]\nproxy_protocol = [\"10.0.0.0/8\", \"127.0.0.1\", \"fd00::/8\"]\n[[volumes]]\npath = \"vol\"\n",
    );
    assert_eq!(code, 0, "{err}");
}

/// `ingest.inline_writes` needs `fsync = false` (a durable upload waits on its disk, never on a
/// worker): refused with the key, the reason and what is allowed; accepted with `fsync = false`.
#[test]
fn inline_writes_need_fsync_off() {
    let base = "[[volumes]]\npath = \"vol\"\n[ingest]\nprefixes = [\"/live/\"]\n[[ingest.keys]]\nid = \"k\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    let (code, err, file) = check(&base.replace("[ingest]\n", "[ingest]\ninline_writes = true\n"));
    assert_eq!(code, 64, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains(": ingest.inline_writes: "))
        .unwrap_or_else(|| panic!("no inline_writes error:\n{err}"));
    assert!(line.contains(&file), "{line}");
    assert!(line.contains("fsync = false"), "{line}");
    let (code, err, _) = check(&base.replace(
        "[ingest]\n",
        "[ingest]\nfsync = false\ninline_writes = true\n",
    ));
    assert_eq!(code, 0, "{err}");
}
