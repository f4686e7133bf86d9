//! The operators' files under `config/` checked against the tools that read them and against
//! the running server (docs/cluster.md, "Monitoring"):
//! - `promtool check rules` and `promtool test rules` pass on `config/prometheus/segd-rules.yml`
//!   and its unit tests (promtool from Debian's `prometheus` package; with `CI` set a missing
//!   promtool fails the test, elsewhere the promtool checks are skipped with a note)
//! - `config/grafana/segd-dashboard.json` is a dashboard Grafana imports: schema version, the
//!   `datasource`, `job` and `instance` variables, every panel and query on `${datasource}`,
//!   every query filtered by `$instance`, unique panel ids; and every query parses as PromQL
//!   (promtool checks them as recording rules)
//! - every metric name in the rules' expressions and the dashboard's queries (`segd_*` and
//!   `process_*`; `_bucket`/`_sum`/`_count` of a histogram count as the histogram) is in the
//!   `/metrics` output of a running segd with TLS, ingest with write-through to a bucket
//!   (durability "local"), the pull tier (an upstream segd and an S3 upstream) and live prefixes,
//!   and that output passes `promtool check metrics`
//! - `process_start_time_seconds` is right where `/proc/stat` is hidden (`ProcSubset=pid`)
//! - the shipped `systemd/segd.service` and `segd.socket` run under a real systemd as PID 1 (a
//!   `systemd-nspawn` container, `tests/tools/nspawn.sh`; root and `systemd-container` needed,
//!   skipped with a note elsewhere, a failure under `CI`): start, every protocol through the
//!   hardening, reload, rejected reload, restart under load, stop, uploads with the unit's writer
//!   change, a rejected config at start (docs/systemd-verified.md)
//! - the access log on a full disk: lines that do not fit are counted and warned about, and the
//!   file keeps whole lines only (a tmpfs; root needed, skipped with a note elsewhere)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

const RULES: &str = "config/prometheus/segd-rules.yml";
const RULE_TESTS: &str = "config/prometheus/segd-rules.test.yml";
const DASHBOARD: &str = "config/grafana/segd-dashboard.json";

/// The `[[ingest.keys]]` secret the server under test accepts (also
/// `config/segd.production.toml`'s).
const UP_KEY: &str = "0123456789abcdef0123456789abcdef";
/// `config/segd.production.toml`'s `[[token.keys]]` secret.
const PLAY_KEY: &str = "52a152a152a152a152a152a152a1";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// promtool, or `None` (with a note) outside CI; under CI its absence is a failure.
fn promtool() -> Option<PathBuf> {
    let found = find_program("promtool", &[PathBuf::from("/usr/bin/promtool")]);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed (Debian package `prometheus`; .ci/run installs it)"
        );
        eprintln!("promtool not installed (apt-get install prometheus): promtool checks skipped");
    }
    found
}

/// Runs promtool with `args`; panics with its output unless it exits 0.
fn run_promtool(bin: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------------
// Metric names in PromQL, roughly: identifiers that start with `segd_` or `process_`.

fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let b = expr.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < b.len() {
        match b[i] {
            // Label values and regexes are not names.
            b'\\' if quoted => i += 2,
            b'"' => {
                quoted = !quoted;
                i += 1;
            }
            c if !quoted && ident(c) => {
                let end = (i..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
                let word = &expr[i..end];
                if word.starts_with("segd_") || word.starts_with("process_") {
                    into.insert(word.to_string());
                }
                i = end;
            }
            _ => i += 1,
        }
    }
}

/// The `expr:` values of a rules file (one line, or a `|`/`>` block), without a YAML parser.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            i += 1;
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = String::new();
            i += 1;
            while i < lines.len() {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && ind <= indent {
                    break;
                }
                block.push_str(l.trim());
                block.push('\n');
                i += 1;
            }
            out.push(block);
        } else {
            out.push(value.trim_matches(|c| c == '\'' || c == '"').to_string());
            i += 1;
        }
    }
    out
}

/// Every query string of a dashboard: targets' `expr`, and variables' `query`/`definition`.
fn dashboard_queries(v: &serde_json::Value, into: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        into.push(s.clone())
                    }
                    _ => dashboard_queries(x, into),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, into)),
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON")
}

/// Every panel, those nested in collapsed rows included.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Metric names the rules and the dashboard use, with where each is used.
fn used_metrics() -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut used: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let mut add = |exprs: Vec<String>, file: &'static str| {
        let mut names = BTreeSet::new();
        for e in &exprs {
            metric_names(e, &mut names);
        }
        for n in names {
            used.entry(n).or_default().insert(file);
        }
    };
    let rules = rule_exprs(&read(RULES));
    assert!(
        rules.len() >= 20,
        "found only {} rule expressions",
        rules.len()
    );
    add(rules, RULES);
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    assert!(
        queries.len() >= 40,
        "found only {} dashboard queries",
        queries.len()
    );
    add(queries, DASHBOARD);
    used
}

/// Metric families (`# TYPE` lines: name → type) and sample names of a `/metrics` text.
fn exported(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut families = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                families.insert(n.to_string(), t.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (families, samples)
}

/// Whether `/metrics` has `name`, as a family, a sample, or a histogram's series.
fn is_exported(
    name: &str,
    families: &BTreeMap<String, String>,
    samples: &BTreeSet<String>,
) -> bool {
    if samples.contains(name) || families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|s| {
        name.strip_suffix(s).is_some_and(|base| {
            families
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        })
    })
}

// ---------------------------------------------------------------------------------------------
// 1. promtool on the rules and their unit tests

#[test]
fn ops_prometheus_rules_pass_promtool() {
    let Some(bin) = promtool() else { return };
    let dir = repo("config/prometheus");
    let out = run_promtool(&bin, &["check", "rules", "segd-rules.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_promtool(&bin, &["test", "rules", "segd-rules.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert says how bad it is and what to do, and waits a stated time.
    let text = read(RULES);
    let alerts = text.matches("- alert: ").count();
    assert!(alerts >= 15, "{alerts} alerts");
    for key in ["for: ", "severity: ", "summary: ", "description: "] {
        assert_eq!(text.matches(key).count(), alerts, "every alert has `{key}`");
    }
    let tests = read(RULE_TESTS);
    assert!(
        tests.contains("- segd-rules.yml"),
        "the tests load the shipped rules"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The dashboard: shape and PromQL

#[test]
fn ops_grafana_dashboard_is_well_formed() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["id"].is_null(), "no database id in a shipped dashboard");

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");
    assert_eq!(var("job")["type"], "query");

    let ds = |v: &serde_json::Value, what: &str| {
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "{what}: datasource"
        );
        assert_eq!(v["datasource"]["type"], "prometheus", "{what}: datasource");
    };
    ds(var("instance"), "variable instance");
    ds(var("job"), "variable job");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        let w = p["gridPos"]["w"].as_u64().expect("gridPos.w");
        let x = p["gridPos"]["x"].as_u64().expect("gridPos.x");
        assert!(x + w <= 24, "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        ds(p, title);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            ds(t, title);
            let e = t["expr"].as_str().expect("expr").to_string();
            if e.contains("segd_") {
                assert!(e.contains("instance=~\"$instance\""), "{title}: {e}");
            }
            exprs.push(e);
        }
    }
    assert!(exprs.len() >= 40, "{} queries", exprs.len());

    // Every query parses as PromQL: promtool checks them as recording rules, with Grafana's
    // variables replaced by values.
    let Some(bin) = promtool() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$job", "segd")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&e).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).expect("write");
    let out = run_promtool(&bin, &["check", "rules", "dashboard.yml"], dir.path());
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Only metrics segd exports

#[test]
fn ops_metric_extraction_is_rough_but_right() {
    let mut n = BTreeSet::new();
    metric_names(
        "sum by (le) (rate(segd_x_bucket{a=\"segd_label_value\"}[5m])) / process_cpu_seconds_total + my_segd_y + segd:rec:ratio",
        &mut n,
    );
    let got: Vec<&str> = n.iter().map(String::as_str).collect();
    assert_eq!(got, ["process_cpu_seconds_total", "segd_x_bucket"]);
    let yaml = "      - alert: A\n        expr: up{job=\"segd\"} == 0\n      - alert: B\n        expr: |\n          sum(rate(segd_a[5m]))\n            > 1\n        for: 1m\n";
    assert_eq!(
        rule_exprs(yaml),
        ["up{job=\"segd\"} == 0", "sum(rate(segd_a[5m]))\n> 1\n"]
    );
    let (f, s) = exported(
        "# TYPE segd_h histogram\nsegd_h_bucket{le=\"1\"} 0\nsegd_h_sum 0\n# TYPE segd_c counter\nsegd_c 1\n",
    );
    assert!(is_exported("segd_h_count", &f, &s) && is_exported("segd_h_bucket", &f, &s));
    assert!(is_exported("segd_c", &f, &s) && !is_exported("segd_c_count", &f, &s));
}

#[tokio::test]
async fn ops_rules_and_dashboard_name_only_exported_metrics() {
    let used = used_metrics();

    // An upstream segd with the demo corpus (the pull tier's HTTP origin).
    let origin_vols = demo_volumes();
    let origin = Server::start(&config_for(
        &[
            &origin_vols.path().join("disk1"),
            &origin_vols.path().join("disk2"),
        ],
        "",
    ));

    // The node: one empty volume, TLS, ingest with write-through to an S3 bucket that does not
    // answer (durability "local": the upload is queued and its copy fails, so the queue's
    // metrics move), the pull tier, live prefixes.
    let dir = tempfile::tempdir().expect("tempdir");
    let vol = dir.path().join("disk1");
    std::fs::create_dir_all(&vol).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("pull-cache")).expect("mkdir");
    std::fs::write(dir.path().join("s3-secret"), "ops-test-secret\n").expect("secret");
    // A port nobody listens on (the listener is dropped at once).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-ops");
    let tls = crate::tls::tls_config(dir.path(), &cert, &key);
    let extra = format!(
        r#"{tls}
[ingest]
prefixes = ["/live/", "/up/"]
reserve = "1MiB"
write_through = "bucket"
durability = "local"
[[ingest.keys]]
id = "up1"
secret = "{UP_KEY}"

[live]
prefixes = ["/live/"]

[pull]
cache_path = "{cache}"
max_bytes = "64MiB"
connect_timeout = "200ms"
stale_if_error = "0s"
[[pull.upstreams]]
name = "origin"
url = "http://{origin}"
prefixes = ["/vod/"]
[[pull.upstreams]]
name = "bucket"
s3_endpoint = "http://{closed}"
bucket = "media"
region = "us-east-1"
access_key_id = "ops-test"
secret_access_key_file = "{secret}"
prefixes = ["/up/"]
"#,
        cache = dir.path().join("pull-cache").display(),
        origin = origin.addr,
        secret = dir.path().join("s3-secret").display(),
    );
    let cfg = config_for(&[&vol], &extra);
    // A config segd refuses would only show as a missing banner: say why instead.
    std::fs::write(dir.path().join("segd.toml"), &cfg).expect("write config");
    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(dir.path().join("segd.toml"))
        .output()
        .expect("run segd check-config");
    assert!(
        check.status.success(),
        "segd refuses the node's config (write-through as in docs/cluster.md):\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let node = Server::start(&cfg);

    // Traffic that makes the labelled series appear: a pull miss then a hit, an upstream 404,
    // a bucket that does not answer (502), a refusal, a TLS request, an upload.
    let seg = "/vod/t1/hls/64k/seg_00001.ts";
    assert_eq!(get(&node.url(seg), &[]).await.status, 200);
    assert_eq!(get(&node.url(seg), &[]).await.status, 200);
    assert_eq!(get(&node.url("/vod/t1/none.ts"), &[]).await.status, 404);
    assert_eq!(get(&node.url("/up/a/none.ts"), &[]).await.status, 502);
    let r = crate::tls::send(
        crate::tls::connect(
            &node,
            &pki.client(&[&rustls::version::TLS13], &[b"http/1.1"]),
        )
        .await,
        "GET",
        seg,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let tok = token_with_key(UP_KEY, "/up/*");
    let put = send("PUT", &node.url(&q("/up/a/x.ts", &tok)), &[], b"ops", false).await;
    assert_eq!(put.status, 201, "{}", put.text());

    // Wait for the write-through attempt (and anything else that appears late), then compare.
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let text = get(&node.admin_url("/metrics"), &[]).await.text();
        let (families, samples) = exported(&text);
        let missing: Vec<String> = used
            .iter()
            .filter(|(n, _)| !is_exported(n, &families, &samples))
            .map(|(n, files)| format!("{n} (used in {files:?})"))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "metrics used by the rules or the dashboard that segd does not export:\n{}",
        missing.join("\n")
    );
    // Every family this traffic made appear passes promtool's lint (names, HELP/TYPE, units,
    // counters ending in _total, histogram series).
    if let Some(bin) = promtool() {
        let text = get(&node.admin_url("/metrics"), &[]).await.text();
        let file = dir.path().join("metrics.txt");
        std::fs::write(&file, &text).expect("write metrics");
        let out = Command::new(&bin)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).expect("metrics file"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The admin listener is read-only: GET and HEAD are answered, the other methods RFC 9110
/// defines are 405 with `Allow: GET, HEAD` (a probe configured with POST fails instead of
/// passing), and a method segd implements nowhere is 501, as on the media listeners.
#[tokio::test]
async fn ops_admin_paths_answer_get_and_head_only() {
    let vols = demo_volumes();
    let srv = Server::start(&config_for(&[&vols.path().join("disk1")], ""));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let url = srv.admin_url(path);
        assert_eq!(request("GET", &url, &[], false).await.status, 200, "{path}");
        let head = request("HEAD", &url, &[], false).await;
        assert_eq!(head.status, 200, "{path}");
        assert!(head.body.is_empty(), "{path}: HEAD has no body");
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let r = request(method, &url, &[], false).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
        for method in ["PATCH", "BREW", "PROPFIND", "TRACE"] {
            let r = request(method, &url, &[], false).await;
            assert_eq!(r.status, 501, "{method} {path}");
        }
    }
}

/// `process_cpu_seconds_total` is fractional (prometheus 0.13.4's own collector counted whole
/// seconds): scrapes taken while segd works show it rising in clock ticks, not whole seconds,
/// still a counter with the conventional help; `promtool check metrics` accepts the family.
#[tokio::test]
async fn process_cpu_seconds_are_fractional() {
    let dir = demo_volumes();
    let srv = Server::start(&config_for(&[&dir.path().join("disk1")], ""));
    let cpu = |text: &str| metric(text, "process_cpu_seconds_total");
    let first = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert!(
        first.contains("# TYPE process_cpu_seconds_total counter")
            && first.contains(
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
            ),
        "{first}"
    );
    let mut seen = vec![cpu(&first).expect("process_cpu_seconds_total")];
    // Work until the counter has moved a few times (each scrape reads the kernel's ticks).
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 6 && Instant::now() < deadline {
        for _ in 0..50 {
            let r = get(&srv.url("/vod/t1/hls/64k/seg_00001.ts"), &[]).await;
            assert_eq!(r.status, 200);
        }
        let v = cpu(&get(&srv.admin_url("/metrics"), &[]).await.text()).expect("cpu");
        let last = seen.last().copied().unwrap_or_default();
        assert!(v >= last, "a counter never goes down: {seen:?} then {v}");
        if v > last {
            seen.push(v);
        }
    }
    assert!(seen.len() >= 6, "the CPU counter did not move: {seen:?}");
    assert!(
        seen.iter().any(|v| v.fract() != 0.0),
        "whole seconds only: {seen:?}"
    );
    if let Some(bin) = promtool() {
        let text = get(&srv.admin_url("/metrics"), &[]).await.text();
        let mut child = Command::new(&bin)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).expect("write metrics");
        }
        let out = child.wait_with_output().expect("promtool");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // promtool's lint names each series it objects to; none may be the CPU counter, and
        // the text must parse (a parse error is reported without a series name).
        assert!(
            !report.contains("process_cpu_seconds_total") && !report.contains("error while"),
            "promtool check metrics:\n{report}"
        );
    }
}

/// `process_start_time_seconds` is when segd started, also where `/proc/stat` cannot be read:
/// the shipped unit's `ProcSubset=pid` hides it, and the prometheus crate took the boot time from
/// there, so the gauge said 0 (1970). Here `/proc/stat` is hidden by a bind mount (`/dev/null`
/// over it, in a mount namespace of segd's own).
#[tokio::test]
async fn process_start_time_without_proc_stat() {
    let dir = demo_volumes();
    let before = now() as f64;
    let srv = Server::start_with(&config_for(&[&dir.path().join("disk1")], ""), |c| {
        let program = c.get_program().to_owned();
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        let mut sh = Command::new("unshare");
        sh.args(["-m", "sh", "-c"])
            .arg("mount --bind /dev/null /proc/stat && exec \"$0\" \"$@\"")
            .arg(program)
            .args(args);
        *c = sh;
        c.env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
    });
    let text = get(&srv.admin_url("/metrics"), &[]).await.text();
    let start = metric(&text, "process_start_time_seconds").expect("process_start_time_seconds");
    let after = now() as f64;
    assert!(
        start >= before - 2.0 && start <= after + 1.0,
        "started at {start}, between {before} and {after}?"
    );
    assert!(
        text.contains("# TYPE process_start_time_seconds gauge"),
        "{text}"
    );
}

/// A disk that is down (its marker gone) does not stop reloads: `serve` starts with such a
/// volume unhealthy, and a reload of the same file is applied the same way (it was rejected
/// while the disk was down). The pid file's directory is made when missing (`/run/segd` exists
/// only while the unit runs), and `check-config` does not call it an error.
#[tokio::test]
async fn ops_reload_goes_on_while_a_disk_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d1, d2) = (dir.path().join("disk1"), dir.path().join("disk2"));
    for d in [&d1, &d2] {
        std::fs::create_dir_all(d.join("vod")).expect("mkdir");
        std::fs::write(d.join(".segd-volume"), b"").expect("marker");
    }
    let pid_file = dir.path().join("run/segd/segd.pid");
    let volumes: String = [&d1, &d2]
        .iter()
        .map(|d| {
            format!(
                "[[volumes]]\nname = \"{}\"\npath = \"{}\"\nmarker = \".segd-volume\"\n",
                d.file_name().and_then(|n| n.to_str()).unwrap_or("v"),
                d.display()
            )
        })
        .collect();
    let config = config_for(&[], &volumes).replace(
        "[admin]",
        &format!("pid_file = \"{}\"\n\n[admin]", pid_file.display()),
    );
    let file = dir.path().join("segd.toml");
    std::fs::write(&file, &config).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let srv = Server::start(&config);
    let pid =
        std::fs::read_to_string(&pid_file).expect("the pid file, in the directory made for it");
    assert_eq!(pid.trim(), srv.child.id().to_string());
    std::fs::remove_file(d2.join(".segd-volume")).expect("the disk goes down");
    let scrape = async || get(&srv.admin_url("/metrics"), &[]).await.text();
    assert!(
        eventually(Duration::from_secs(5), async || {
            metric_with(
                &scrape().await,
                "segd_volume_healthy",
                &[("volume", "disk2")],
            ) == Some(0.0)
        })
        .await,
        "disk2 marked down"
    );
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), async || srv
            .stderr()
            .contains("configuration reloaded"))
        .await,
        "{}",
        srv.stderr()
    );
    let text = scrape().await;
    assert_eq!(
        metric(&text, "segd_config_last_reload_successful"),
        Some(1.0),
        "{text}"
    );
}

/// Keys a reload does not apply are named, never dropped in silence: the HTTP/2 settings (built
/// into the connection builder at start), the health checks' interval and `mmap` (acceptance
/// I-F1: a reload of them said "configuration reloaded" and nothing else).
#[tokio::test]
async fn ops_reload_names_the_http2_settings_it_does_not_apply() {
    let dir = demo_volumes();
    let good = config_for(&[&dir.path().join("disk1")], "");
    let srv = Server::start(&good);
    let changed = good.replace(
        "volume_check_interval = \"200ms\"",
        "volume_check_interval = \"1s\"\nh2_max_concurrent_streams = 7\nmmap = false",
    );
    assert_ne!(changed, good);
    std::fs::write(&srv.config, &changed).expect("write");
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), async || srv
            .stderr()
            .contains("configuration reloaded"))
        .await,
        "{}",
        srv.stderr()
    );
    let log = srv.stderr();
    let warned = log
        .lines()
        .find(|l| l.contains("change only on restart"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    for key in [
        "server.h2_max_concurrent_streams",
        "server.volume_check_interval",
        "server.mmap",
    ] {
        assert!(warned.contains(key), "{key}: {warned}");
    }
    let m = get(&srv.admin_url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, "segd_config_restart_pending"), Some(1.0), "{m}");
}

/// Under systemd, stderr is the journal's stream (`JOURNAL_STREAM` names its device and
/// inode): each line starts with its syslog priority, which journald takes, so `journalctl -p
/// warning` shows segd's warnings (every line reached the journal as info: acceptance I-F13).
/// Elsewhere lines have no prefix.
#[test]
fn log_lines_carry_their_priority_to_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("disk1")).expect("mkdir");
    let config = dir.path().join("segd.toml");
    // disk2 does not exist: a warning at start.
    std::fs::write(
        &config,
        config_for(&[&dir.path().join("disk1"), &dir.path().join("disk2")], ""),
    )
    .expect("write");
    for journal in [true, false] {
        let err_path = dir.path().join(format!("stderr-{journal}"));
        let err = std::fs::File::create(&err_path).expect("create");
        let meta = err.metadata().expect("stat");
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(err);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let mut child = cmd.spawn().expect("spawn");
        let read = || std::fs::read_to_string(&err_path).unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(read().contains("unavailable at start") && read().contains("volume surveyed"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = read();
        let warn = log
            .lines()
            .find(|l| l.contains("unavailable at start"))
            .unwrap_or_else(|| panic!("no warning: {log}"));
        let info = log
            .lines()
            .find(|l| l.contains("volume surveyed"))
            .unwrap_or_else(|| panic!("no info line: {log}"));
        if journal {
            assert!(warn.starts_with("<4>"), "{warn}");
            assert!(info.starts_with("<6>"), "{info}");
        } else {
            assert!(!warn.starts_with('<') && !info.starts_with('<'), "{log}");
        }
    }
}

/// A reload's outcome is in the metrics, named as Prometheus names its own
/// (`segd_config_last_reload_successful`, `..._success_timestamp_seconds`), and a reload that
/// changes keys only a restart applies says which in the log and sets
/// `segd_config_restart_pending` until a reload brings them back to the running values. The
/// comparison is against the values the process started with: reloading the same file twice
/// still names them (the first reload must not make them look applied).
#[tokio::test]
async fn ops_reload_outcome_is_in_metrics_and_names_restart_only_keys() {
    let dir = demo_volumes();
    let vol = dir.path().join("disk1");
    let good = config_for(&[&vol], "");
    let srv = Server::start(&good);
    let scrape = async || get(&srv.admin_url("/metrics"), &[]).await.text();
    let ok = "segd_config_last_reload_successful";
    let at = "segd_config_last_reload_success_timestamp_seconds";
    let pending = "segd_config_restart_pending";
    let text = scrape().await;
    assert_eq!(metric(&text, ok), Some(1.0), "{text}");
    assert_eq!(metric(&text, pending), Some(0.0), "{text}");
    let started = metric(&text, at).expect("load timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((now - started).abs() < 120.0, "{started} vs now {now}");

    // A broken file: rejected, and the gauge says so; the timestamp stays.
    std::fs::write(&srv.config, format!("{good}bogus_key = 1\n")).expect("write");
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), async || metric(&scrape().await, ok)
            == Some(0.0))
        .await,
        "{}",
        srv.stderr()
    );
    srv.log_with(&["bogus_key: unknown key", "reload rejected"]);
    assert_eq!(metric(&scrape().await, at), Some(started));

    // A good file that changes restart-only keys: applied, and the keys are named.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let restart = good.replace("workers = 2", "workers = 1")
        + "[log]\nlevel = \"debug\"\n[cache]\nmax_bytes = \"32MiB\"\n";
    assert_ne!(restart, good);
    std::fs::write(&srv.config, &restart).expect("write");
    for round in 1..=2 {
        srv.signal(libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(5), async || srv
                .stderr()
                .matches("configuration reloaded")
                .count()
                == round)
            .await,
            "{}",
            srv.stderr()
        );
        let text = scrape().await;
        assert_eq!(metric(&text, ok), Some(1.0), "round {round}: {text}");
        assert_eq!(metric(&text, pending), Some(1.0), "round {round}: {text}");
        assert!(metric(&text, at).expect("timestamp") > started, "{text}");
        let log = srv.stderr();
        let warned = log
            .lines()
            .filter(|l| l.contains("change only on restart"))
            .collect::<Vec<_>>();
        assert_eq!(warned.len(), round, "{log}");
        let last = warned[round - 1];
        assert!(
            last.contains("server.workers, log.level") && !last.contains("cache"),
            "the restart-only keys that changed, and only those: {last}"
        );
    }

    // Back to the running values: nothing pending.
    std::fs::write(&srv.config, &good).expect("write");
    srv.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), async || metric(
            &scrape().await,
            pending
        ) == Some(0.0))
        .await,
        "{}",
        srv.stderr()
    );
    assert_eq!(srv.stderr().matches("change only on restart").count(), 2);
}

/// The accept queue of segd's listeners follows `net.core.somaxconn`, as docs/tuning.md and
/// `config/sysctl.d/90-segd.conf` promise (a CDN reconnecting thousands of connections at once
/// needs more than the default 4096): in a network namespace of its own (so the host's sysctl
/// is untouched) with `somaxconn` raised above 4096, `ss -ltn` shows that depth (its Send-Q)
/// for the plaintext and the admin listener. (segd asked for a fixed 4096, so the sysctl
/// changed nothing.)
#[test]
fn ops_listen_backlog_follows_somaxconn() {
    const DEPTH: u32 = 12345;
    let vols = demo_volumes();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("segd.toml");
    // Fixed ports: nothing else lives in the new namespace. 0.0.0.0 needs no `lo` up.
    let text = config_for(&[&vols.path().join("disk1")], "")
        .replacen("127.0.0.1:0", "0.0.0.0:24680", 1)
        .replacen("127.0.0.1:0", "0.0.0.0:24681", 1);
    std::fs::write(&cfg, text).expect("write config");
    let script = format!(
        r#"echo {DEPTH} > /proc/sys/net/core/somaxconn || exit 3
"$0" serve --config "$1" >/dev/null 2>"$2" & pid=$!
i=0
until [ "$(ss -ltnH 'sport = :24680 or sport = :24681' | wc -l)" -ge 2 ] || [ $i -ge 300 ]; do
  sleep 0.05; i=$((i+1))
done
ss -ltnH 'sport = :24680 or sport = :24681'
kill $pid; wait $pid"#
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script, BIN])
        .arg(&cfg)
        .arg(dir.path().join("stderr"))
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stdout.is_empty() && std::env::var_os("CI").is_none() {
        eprintln!("note: no network namespace here (unshare -n: {stderr}); backlog not checked");
        return;
    }
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    // `State Recv-Q Send-Q Local Peer`: Send-Q of a listening socket is its backlog.
    let depths: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[3].to_string(), f[2].to_string()))
        })
        .collect();
    assert_eq!(
        depths.len(),
        2,
        "both listeners:\n{stdout}{stderr}\nsegd's log:\n{log}"
    );
    for (addr, depth) in &depths {
        assert_eq!(
            depth,
            &DEPTH.to_string(),
            "{addr}: the accept queue is not somaxconn's {DEPTH}:\n{stdout}"
        );
    }
}

/// The access log's `complete` is true for every response whose body went out whole, on every
/// protocol: plain HTTP/1.1, HTTP/1.1 and HTTP/2 over TLS (hyper stops polling a body of known
/// length once it has its `Content-Length` of bytes, so the end was never seen and every such
/// line said `"complete":false`, as a failed download would), whole and ranged, with `bytes`
/// the body length.
#[tokio::test]
async fn ops_access_log_marks_whole_bodies_complete() {
    let vols = demo_volumes();
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd-ops");
    let log = vols.path().join("access.log");
    let extra = format!(
        "{}[log]\naccess = \"{}\"\nformat = \"json\"\n",
        crate::tls::tls_config(vols.path(), &cert, &key),
        log.display()
    );
    let srv = Server::start(&config_for(&[&vols.path().join("disk1")], &extra));
    let seg = "/vod/t1/hls/128k/seg_00001.ts";
    let len = std::fs::metadata(vols.path().join("disk1").join(&seg[1..]))
        .expect("segment")
        .len();
    let mut expect: Vec<(String, u64)> = Vec::new();
    let rid = |name: &str| format!("ops-complete-{name}");

    let r = get(&srv.url(seg), &[("x-request-id", &rid("h1"))]).await;
    assert_eq!(r.body.len() as u64, len);
    expect.push((rid("h1"), len));
    for (name, alpn) in [("tls-h1", &b"http/1.1"[..]), ("tls-h2", &b"h2"[..])] {
        for (what, range, want) in [
            ("whole", None, len),
            ("range", Some("bytes=100-1099"), 1000),
        ] {
            let id = rid(&format!("{name}-{what}"));
            let mut headers = vec![("x-request-id", id.as_str())];
            if let Some(r) = range {
                headers.push(("range", r));
            }
            let client = pki.client(&[&rustls::version::TLS13], &[alpn]);
            let r = crate::tls::send(
                crate::tls::connect(&srv, &client).await,
                "GET",
                seg,
                &headers,
            )
            .await;
            assert_eq!(r.body.len() as u64, want, "{id}: status {}", r.status);
            expect.push((id, want));
        }
    }

    for (id, bytes) in expect {
        let line = crate::regression::access_line(&log, &id).await;
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(v["bytes"].as_u64(), Some(bytes), "{line}");
        assert_eq!(
            v["complete"].as_bool(),
            Some(true),
            "the whole body went out: {line}"
        );
    }
}

/// The shipped `systemd/segd.service`'s `ExecReload=` commands, run in order as systemd runs
/// them (the first that fails ends the reload and fails `systemctl reload`), with the unit's
/// paths pointed at this build and a running segd as `$MAINPID`: a config segd rejects fails
/// the reload and the process is never signalled; a good one reloads it. (systemd is not PID 1
/// here, so the unit's own commands are run, not the unit.)
#[tokio::test]
async fn ops_systemd_reload_checks_the_config_first() {
    let unit = read("systemd/segd.service");
    let reload: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecReload="))
        .collect();
    assert!(!reload.is_empty(), "segd.service has no ExecReload=");
    let vols = demo_volumes();
    let good = config_for(&[&vols.path().join("disk1")], "");
    let srv = Server::start(&good);
    let run = |cmd_lines: &[&str]| -> Result<(), String> {
        for line in cmd_lines {
            // A leading `-` lets a command fail without failing the reload.
            let (may_fail, line) = match line.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, *line),
            };
            let cmd = line
                .replace("/usr/local/bin/segd", BIN)
                .replace("/etc/segd/segd.toml", &srv.config.display().to_string())
                .replace("$MAINPID", &srv.child.id().to_string());
            let out = Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .expect("run ExecReload");
            if !out.status.success() && !may_fail {
                return Err(format!(
                    "{cmd}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    };

    std::fs::write(&srv.config, format!("{good}[cache]\nmax_bytes = \"1GB\"\n")).expect("write");
    let failed = run(&reload).expect_err("a rejected config must fail `systemctl reload`");
    assert!(failed.contains("cache.max_bytes"), "{failed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !srv.stderr().contains("SIGHUP received"),
        "segd was signalled for a config check-config rejects:\n{}",
        srv.stderr()
    );

    std::fs::write(
        &srv.config,
        format!("{good}[cache]\nmax_bytes = \"1GiB\"\n"),
    )
    .expect("write");
    run(&reload).expect("a good config reloads");
    srv.log_with(&["SIGHUP received", "configuration reloaded"]);
}

/// Log rotation as logrotate does it for nginx: rename the access log, send SIGUSR1; segd keeps
/// serving (SIGUSR1's default action killed it, silently, mid-request for whoever was
/// connected), lines before the signal are in the renamed file and lines after it in a new file
/// at the configured path.
#[tokio::test]
async fn ops_sigusr1_reopens_the_access_log() {
    let vols = demo_volumes();
    let log = vols.path().join("access.log");
    let srv = Server::start(&config_for(
        &[&vols.path().join("disk1")],
        &format!("[log]\naccess = \"{}\"\nformat = \"json\"\n", log.display()),
    ));
    let seg = "/vod/t1/hls/64k/seg_00001.ts";
    let logged = async |file: &Path, rid: &str| {
        let needle = format!("\"request_id\":\"{rid}\"");
        eventually(Duration::from_secs(5), async || {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .contains(&needle)
        })
        .await
    };
    let r = get(&srv.url(seg), &[("x-request-id", "ops-rotate-before")]).await;
    assert_eq!(r.status, 200);
    assert!(logged(&log, "ops-rotate-before").await, "{}", srv.stderr());

    let rotated = vols.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    srv.signal(libc::SIGUSR1);
    srv.log_with(&["access log reopened"]);
    let r = get(&srv.url(seg), &[("x-request-id", "ops-rotate-after")]).await;
    assert_eq!(r.status, 200, "segd still serves after SIGUSR1");
    assert!(
        logged(&log, "ops-rotate-after").await,
        "the new file gets the lines after the signal:\n{}",
        srv.stderr()
    );
    let old = std::fs::read_to_string(&rotated).expect("rotated log");
    assert!(
        old.contains("ops-rotate-before") && !old.contains("ops-rotate-after"),
        "{old}"
    );
}

/// The access log on a full filesystem (a small tmpfs filled but for one page; root needed,
/// skipped with a note elsewhere): the lines that do not fit are counted in
/// `segd_access_log_dropped_total` (lines in the file + dropped = requests), a warning names
/// the file and the error, and the file holds whole JSON lines only. (The writer ignored its
/// write errors: nothing counted, nothing said, and a half-written line left at the end.)
#[tokio::test]
async fn ops_access_log_on_a_full_disk_counts_what_it_drops() {
    use std::io::Write;
    if !may_mount() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let vols = demo_volumes();
    let dir = vols.path().join("logs");
    std::fs::create_dir(&dir).expect("mkdir");
    let _m = Mount::tmpfs(&dir, "64k").expect("mount a tmpfs (root)");
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    while f.write_all(&[0u8; 4096]).is_ok() {}
    let full = f.metadata().expect("stat").len() / 4096 * 4096;
    f.set_len(full - 4096).expect("free one page");
    drop(f);
    let log = dir.join("access.log");
    let srv = Server::start(&config_for(
        &[&vols.path().join("disk1")],
        &format!("[log]\naccess = \"{}\"\nformat = \"json\"\n", log.display()),
    ));
    let n = 60;
    for i in 0..n {
        let r = get(
            &srv.url("/vod/t1/hls/64k/seg_00001.ts"),
            &[("x-request-id", &format!("ops-full-{i}"))],
        )
        .await;
        assert_eq!(r.status, 200, "serving is unaffected");
    }
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count() as f64
    };
    let dropped = async || {
        let m = get(&srv.admin_url("/metrics"), &[]).await.text();
        metric(&m, "segd_access_log_dropped_total").unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(5), async || lines() + dropped().await
            == f64::from(n))
        .await,
        "{} lines in the file, {} counted as dropped, of {n}:\n{}",
        lines(),
        dropped().await,
        srv.stderr()
    );
    assert!(dropped().await > 0.0, "the disk was full");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(lines() >= 1.0, "the lines that fit were written");
    assert!(text.ends_with('\n'), "no torn line at the end: {text:?}");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("a whole JSON line ({e}): {line:?}"));
    }
    let err = srv.log_with(&["access log write failed", "No space left on device"]);
    assert!(err.contains(&log.display().to_string()), "{err}");
    assert_eq!(
        err.matches("access log write failed").count(),
        1,
        "warned once a minute at most:\n{err}"
    );
}

/// systemd's watchdog (`WatchdogSec=` in `systemd/segd.service`): with `WATCHDOG_USEC` set,
/// segd sends `WATCHDOG=1` at half that interval after `READY=1` (it sent none, so a unit with
/// `WatchdogSec=` killed a healthy segd), and none when `WATCHDOG_PID` names another process.
#[test]
fn ops_systemd_watchdog_is_fed() {
    use std::os::unix::net::UnixDatagram;
    let unit = read("systemd/segd.service");
    assert!(
        unit.lines().any(|l| l.starts_with("WatchdogSec=")),
        "the shipped unit uses the watchdog"
    );
    let vols = demo_volumes();
    for (pid, fed) in [(None, true), (Some("1"), false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let srv = Server::start_with(&config_for(&[&vols.path().join("disk1")], ""), |c| {
            c.env("NOTIFY_SOCKET", &sock_path)
                .env("WATCHDOG_USEC", "300000");
            match pid {
                Some(p) => c.env("WATCHDOG_PID", p),
                None => c.env_remove("WATCHDOG_PID"),
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        }
        let pings = got.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
        assert!(
            got.iter().any(|m| m.starts_with("READY=1")),
            "{got:?}\n{}",
            srv.stderr()
        );
        if fed {
            // 1.5 s at one per 150 ms: about 10; allow a slow start.
            assert!(pings >= 4, "WATCHDOG=1 every 150 ms: {got:?}");
        } else {
            assert_eq!(pings, 0, "WATCHDOG_PID is another process: {got:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shipped units under a real systemd (PID 1 of a systemd-nspawn container)

/// A machine booted by `tests/tools/nspawn.sh`: systemd is its PID 1; its root is an overlay of
/// this one's, its network its own. Powered off and removed when dropped.
struct Machine {
    dir: tempfile::TempDir,
    /// Host pid of its PID 1.
    leader: u32,
}

impl Machine {
    /// Boots one, or `None` (with a note) where this cannot run outside CI: not root, or no
    /// systemd-nspawn. Under CI (which installs systemd-container) their absence fails the
    /// test, and so does a boot that fails anywhere.
    fn boot() -> Option<Machine> {
        let why = if rustix::process::geteuid().as_raw() != 0 {
            Some("not root")
        } else if find_program("systemd-nspawn", &[]).is_none() {
            Some("no systemd-nspawn (Debian package systemd-container)")
        } else {
            None
        };
        if let Some(why) = why {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the units under systemd: {why}"
            );
            eprintln!("note: {why}; the units were not run under systemd");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(repo("tests/tools/nspawn.sh"))
            .arg("up")
            .arg(dir.path().join("m"))
            .output()
            .expect("run nspawn.sh");
        let leader = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        let Some(leader) = leader.filter(|_| out.status.success()) else {
            let _ = Command::new(repo("tests/tools/nspawn.sh"))
                .arg("down")
                .arg(dir.path().join("m"))
                .status();
            panic!(
                "systemd did not boot in a container:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Some(Machine { dir, leader })
    }

    /// A path inside the machine, as seen from here (its root is writable from outside).
    fn path(&self, inside: &str) -> PathBuf {
        self.dir
            .path()
            .join("m/root")
            .join(inside.trim_start_matches('/'))
    }

    /// Runs `script` with sh inside the machine (its namespaces, as root).
    fn sh(&self, script: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "sh", "-c", script])
            .output()
            .expect("nsenter")
    }

    /// [`Machine::sh`] that must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` failed:\n{}{}\njournal:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// segd.service's properties `names` (`systemctl show`).
    fn show(&self, names: &str) -> BTreeMap<String, String> {
        self.ok(&format!("systemctl show segd.service -p {names}"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The units' journal (systemd's lines about them and segd's own).
    fn journal(&self) -> String {
        let out = self.sh("journalctl -b --no-pager -o cat -u segd.service -u segd.socket");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread in the machine's network namespace (network namespaces are per
    /// thread), on a runtime of that thread's own.
    fn net<T: Send + 'static, Fut: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> T {
        let leader = self.leader;
        std::thread::spawn(move || {
            enter_netns(leader);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new(repo("tests/tools/nspawn.sh"))
            .arg("down")
            .arg(self.dir.path().join("m"))
            .status();
    }
}

/// Moves this thread into the network namespace of process `pid`.
fn enter_netns(pid: u32) {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open netns");
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// One `GET target` over a new connection to `addr` (`Connection: close`): status and body
/// length, or what went wrong.
fn get_once(addr: &str, target: &str) -> Result<(u16, usize), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: segd\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let status = raw_status(&buf);
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| buf.len() - i - 4);
    if status == 0 {
        return Err(format!("no response ({} bytes)", buf.len()));
    }
    Ok((status, body))
}

/// Whether this kernel lets a process set up an io_uring (segd then uses it, `io_backend =
/// "auto"`).
fn io_uring_available() -> bool {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(2) with one entry and a zeroed `struct io_uring_params` (120 bytes);
    // the descriptor it returns is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: a descriptor io_uring_setup just returned, owned by nobody else.
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}

/// The shipped `systemd/segd.service` and `segd.socket`, unmodified, installed as the unit's
/// header says (binary, `config/segd.production.toml` as `/etc/segd/segd.toml`, volumes under
/// `/srv/segd`, a TLS key readable by group `ssl-cert` with `SupplementaryGroups=ssl-cert` in a
/// drop-in), run by a real systemd as PID 1 (`tests/tools/nspawn.sh`):
/// - `systemctl enable --now segd.socket segd.service` starts it: `Type=notify` reaches READY
///   (status "serving"), every address comes from the socket unit, and systemd reports no
///   problem with either unit file;
/// - it serves through the hardening (`SystemCallFilter=`, `ProtectProc=invisible`,
///   `ProcSubset=pid`, `MemoryDenyWriteExecute=`, `RestrictAddressFamilies=`, `DynamicUser=`):
///   HTTP/1.1 over IPv4 and IPv6 with sendfile, h2c, TLS with HTTP/2, HTTP/3 over the passed
///   UDP socket, io_uring reads, `/metrics` with `process_start_time_seconds` (was 0 under
///   `ProcSubset=pid`), and a symlink out of a volume is 404 while one inside is followed
///   (openat2 is refused by systemd's filter there, so segd walks paths itself);
/// - `systemctl reload` applies a config; one segd rejects fails the reload, names the problem,
///   and leaves the process serving;
/// - `systemctl restart` twice under a load of new connections fails none (the socket unit
///   had `PartOf=segd.service`, so a restart closed the sockets: resets and refusals);
/// - `systemctl stop segd.socket segd.service` lets a download in flight finish, then exits 0;
/// - with the unit's writer change (a system user, `ReadWritePaths=/srv/segd`) an upload is
///   201 and reads back (every write failed with ENOSYS: openat2 is refused there);
/// - a config segd rejects at start fails the unit with status 64 and no restart loop (the
///   check in `ExecStartPre=` exited 64 too, which `RestartPreventExitStatus=` does not cover).
#[test]
fn ops_systemd_units_run_under_real_systemd() {
    let Some(m) = Machine::boot() else { return };
    let started = Instant::now();
    // === install, as the unit's header says
    let install = |from: &Path, to: &str, mode: u32| {
        let dest = m.path(to);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, &dest).expect("install");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    install(Path::new(BIN), "/usr/local/bin/segd", 0o755);
    install(
        &repo("config/segd.production.toml"),
        "/etc/segd/segd.toml",
        0o644,
    );
    install(
        &repo("systemd/segd.service"),
        "/etc/systemd/system/segd.service",
        0o644,
    );
    install(
        &repo("systemd/segd.socket"),
        "/etc/systemd/system/segd.socket",
        0o644,
    );
    for disk in ["disk1", "disk2"] {
        copy_tree(
            &demo_dir().join(disk),
            &m.path(&format!("/srv/segd/{disk}")),
        );
        std::fs::write(m.path(&format!("/srv/segd/{disk}/.segd-volume")), "").expect("marker");
    }
    let pki = crate::tls::Pki::new();
    let (cert, key, _) = pki.leaf("segd");
    std::fs::create_dir_all(m.path("/etc/segd/tls")).expect("mkdir");
    std::fs::write(m.path("/etc/segd/tls/fullchain.pem"), cert).expect("cert");
    std::fs::write(m.path("/etc/segd/tls/privkey.pem"), key).expect("key");
    std::fs::create_dir_all(m.path("/etc/systemd/system/segd.service.d")).expect("mkdir");
    std::fs::write(
        m.path("/etc/systemd/system/segd.service.d/tls.conf"),
        "[Service]\nSupplementaryGroups=ssl-cert\n",
    )
    .expect("drop-in");
    // Symlinks in a volume: one to a segment beside it, one out of the volume.
    std::os::unix::fs::symlink(
        "hls/64k/seg_00001.ts",
        m.path("/srv/segd/disk1/vod/t1/in.ts"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink(
        "../../../../etc/passwd",
        m.path("/srv/segd/disk1/vod/t1/out.ts"),
    )
    .expect("symlink");
    // A large file for the drain (not under a token-protected prefix).
    std::fs::create_dir_all(m.path("/srv/segd/disk1/open")).expect("mkdir");
    const BIG: usize = 48 << 20;
    std::fs::write(m.path("/srv/segd/disk1/open/big.ts"), vec![7u8; BIG]).expect("big file");
    m.ok("chgrp ssl-cert /etc/segd/tls/privkey.pem && chmod 640 /etc/segd/tls/privkey.pem");

    // === start
    m.ok("systemctl daemon-reload && systemctl enable --now segd.socket segd.service");
    let props = m.show("ActiveState,SubState,StatusText,MainPID,NRestarts");
    assert_eq!(props["ActiveState"], "active", "{props:?}\n{}", m.journal());
    assert_eq!(
        props["StatusText"], "serving",
        "READY=1 reached systemd: {props:?}"
    );
    let first_pid = props["MainPID"].clone();
    let pid1 = m.ok("journalctl -b --no-pager -o cat _PID=1");
    let complaints: Vec<&str> = pid1
        .lines()
        .filter(|l| {
            l.starts_with("/etc/systemd/system/segd.")
                || (l.starts_with("segd.socket: ") && l.contains("failed"))
        })
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd about the units: {complaints:#?}"
    );
    let journal = m.journal();
    for addr in [
        "0.0.0.0:80",
        "[::]:80",
        "0.0.0.0:443",
        "[::]:443",
        "127.0.0.1:9090",
    ] {
        assert!(
            journal.contains(&format!("using the socket passed by systemd addr={addr}")),
            "{addr} from segd.socket:\n{journal}"
        );
    }
    for addr in ["0.0.0.0:443", "[::]:443"] {
        assert!(
            journal.contains(&format!(
                "using the UDP socket passed by systemd addr={addr}"
            )),
            "UDP {addr} from segd.socket:\n{journal}"
        );
    }

    // === serve, through the hardening
    let seg = "/vod/t1/hls/64k/seg_00001.ts";
    let seg_len = std::fs::metadata(demo_dir().join("disk1").join(&seg[1..]))
        .expect("demo segment")
        .len() as usize;
    let tok = token_with_key(PLAY_KEY, "/vod/*");
    let uring = io_uring_available();
    let metrics = {
        let (seg, tok) = (seg.to_string(), tok.clone());
        m.net(move || async move {
            for host in ["127.0.0.1", "[::1]"] {
                let r = get(&format!("http://{host}{}", q(&seg, &tok)), &[]).await;
                assert_eq!(
                    (r.status, r.body.len()),
                    (200, seg_len),
                    "HTTP/1.1 via {host}"
                );
            }
            let r = request(
                "GET",
                &format!("http://127.0.0.1{}", q(&seg, &tok)),
                &[],
                true,
            )
            .await;
            assert_eq!((r.status, r.version), (200, http::Version::HTTP_2), "h2c");
            for (f, want) in [("in.ts", 200), ("out.ts", 404)] {
                let r = get(
                    &format!("http://127.0.0.1{}", q(&format!("/vod/t1/{f}"), &tok)),
                    &[],
                )
                .await;
                assert_eq!(r.status, want, "symlink {f}");
            }
            for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
                let c = pki.client(&[&rustls::version::TLS13], &[alpn]);
                let tcp = tokio::net::TcpStream::connect("127.0.0.1:443")
                    .await
                    .expect("tcp 443");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let tls = c.connect(name, tcp).await.expect("TLS handshake");
                let r = crate::tls::send(tls, "GET", &q(&seg, &tok), &[]).await;
                assert_eq!((r.status, r.body.len()), (200, seg_len), "TLS {alpn:?}");
                assert!(r
                    .header("alt-svc")
                    .is_some_and(|v| v.contains("h3=\":443\"")));
            }
            let mut h3 = crate::h3::h3_connect("127.0.0.1:443".parse().expect("addr"), &pki).await;
            let r = h3.request("GET", &q(&seg, &tok), &[]).await;
            assert_eq!((r.status, r.body.len()), (200, seg_len), "HTTP/3");
            get("http://127.0.0.1:9090/metrics", &[]).await.text()
        })
    };
    let start = metric(&metrics, "process_start_time_seconds").expect("start time");
    let age = now() as f64 - start;
    assert!(
        (-2.0..600.0).contains(&age),
        "process_start_time_seconds {start}"
    );
    assert!(
        metric(&metrics, "segd_zero_copy_bytes_total").is_some_and(|v| v > 0.0),
        "sendfile"
    );
    assert!(
        metric(&metrics, "process_open_fds").is_some_and(|v| v > 0.0),
        "/proc/self/fd"
    );
    if uring {
        assert_eq!(
            metric_with(&metrics, "segd_io_backend", &[("backend", "io_uring")]),
            Some(1.0),
            "io_uring under SystemCallFilter="
        );
    }
    assert!(
        m.journal()
            .contains("listening https://[::]:443 over QUIC/UDP"),
        "segd's own lines reach the journal"
    );

    // === reload, and a reload of a config segd rejects
    m.ok("systemctl reload segd");
    assert!(
        m.journal().contains("configuration reloaded"),
        "{}",
        m.journal()
    );
    let good = std::fs::read_to_string(m.path("/etc/segd/segd.toml")).expect("config");
    let bad = good.replacen("workers = 0", "workers = \"many\"", 1);
    assert_ne!(bad, good);
    std::fs::write(m.path("/etc/segd/segd.toml"), &bad).expect("bad config");
    let out = m.sh("systemctl reload segd");
    assert!(!out.status.success(), "a rejected config fails the reload");
    assert!(
        m.journal().contains("server.workers: expected an integer"),
        "{}",
        m.journal()
    );
    let props = m.show("ActiveState,MainPID");
    assert_eq!(
        (props["ActiveState"].as_str(), &props["MainPID"]),
        ("active", &first_pid),
        "still serving after a rejected reload"
    );
    std::fs::write(m.path("/etc/segd/segd.toml"), &good).expect("config");

    // === restart under load: no connection fails
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, target) = (Arc::clone(&stop), q(seg, &tok));
        let leader = m.leader;
        std::thread::spawn(move || {
            enter_netns(leader);
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for addr in ["127.0.0.1:80", "[::1]:80"] {
                    match get_once(addr, &target) {
                        Ok((200, n)) if n == seg_len => ok += 1,
                        other => failed.push(format!("{addr}: {other:?}")),
                    }
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        m.ok("systemctl restart segd");
        // Spaced: systemd allows 5 starts in 10 s (StartLimitBurst=), then fails the socket too.
        std::thread::sleep(Duration::from_millis(2500));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load");
    assert!(ok > 20 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
    let props = m.show("ActiveState,MainPID,NRestarts");
    assert_ne!(props["MainPID"], first_pid, "restarted");
    assert_eq!(props["NRestarts"], "0");

    // === stop: a download in flight finishes first
    let download = {
        let leader = m.leader;
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            enter_netns(leader);
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let _ = s.set_recv_buffer_size(64 << 10);
            let addr: std::net::SocketAddr = "127.0.0.1:80".parse().expect("addr");
            s.connect(&addr.into()).expect("connect");
            let mut s = std::net::TcpStream::from(s);
            s.write_all(b"GET /open/big.ts HTTP/1.1\r\nHost: segd\r\nConnection: close\r\n\r\n")
                .expect("request");
            let (mut buf, mut all) = (vec![0u8; 256 << 10], Vec::new());
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("download failed after {} bytes: {e}", all.len()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (raw_status(&all), all.len(), Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    m.ok("systemctl stop segd.socket segd.service");
    let stopped = Instant::now();
    let (status, got, done) = download.join().expect("download");
    assert_eq!(status, 200);
    assert!(got > BIG, "the whole body: {got} of {BIG} bytes");
    // Still downloading when the stop began; segd exits once the last bytes are with the kernel,
    // so the client may read its tail after that.
    assert!(done > t0, "the download was in flight at the stop");
    assert!(
        stopped - t0 < Duration::from_secs(45),
        "within TimeoutStopSec=45s"
    );
    let props = m.show("ActiveState,Result,ExecMainStatus");
    assert_eq!(
        (
            props["ActiveState"].as_str(),
            props["Result"].as_str(),
            props["ExecMainStatus"].as_str()
        ),
        ("inactive", "success", "0"),
        "{props:?}"
    );

    // === the writer change the unit's header describes: uploads land
    std::fs::write(
        m.path("/etc/systemd/system/segd.service.d/writer.conf"),
        "[Service]\nDynamicUser=no\nReadOnlyPaths=\nReadWritePaths=/srv/segd\n",
    )
    .expect("drop-in");
    m.ok("id -u segd >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin segd; \
          chown -R segd: /srv/segd && systemctl daemon-reload && systemctl start segd.socket segd.service");
    let up = token_with_key(UP_KEY, "/live/*");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let read = token_with_key(PLAY_KEY, "/live/*");
    let got = {
        let body = body.clone();
        m.net(move || async move {
            let url = |t: &str| format!("http://127.0.0.1{}", q("/live/s1/a.ts", t));
            let put = send("PUT", &url(&up), &[], &body, false).await;
            let back = get(&url(&read), &[]).await;
            (put.status, back.status, back.body.to_vec())
        })
    };
    assert_eq!(got.0, 201, "upload under ReadWritePaths=:\n{}", m.journal());
    assert_eq!((got.1, got.2.len()), (200, body.len()));
    assert_eq!(got.2, body);

    // === a config segd rejects at start: failed with 64, not restarted
    std::fs::write(m.path("/etc/segd/segd.toml"), &bad).expect("bad config");
    let out = m.sh("systemctl restart segd");
    assert!(!out.status.success(), "a rejected config fails the start");
    std::thread::sleep(Duration::from_secs(3)); // past RestartSec=2s
    let props = m.show("ActiveState,ExecMainStatus,NRestarts");
    assert_eq!(
        (
            props["ActiveState"].as_str(),
            props["ExecMainStatus"].as_str(),
            props["NRestarts"].as_str()
        ),
        ("failed", "64", "0"),
        "{props:?}"
    );
    eprintln!("systemd checks took {:?}", started.elapsed());
}
