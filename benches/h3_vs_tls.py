#!/usr/bin/env python3
"""segd's HTTP/3 path against its HTTP/2-over-TLS path, same corpus, same connection and stream
counts, in one run.

nginx 1.22 (Debian's) has no QUIC and Debian's h2load is built without it, so HTTP/3 cannot be
compared with nginx on this machine. What can be measured is what QUIC costs segd relative to
the TLS-over-TCP path that *is* compared with nginx (benches/compare.sh, scenario h2tls).
Load generators: benches/h3load.rs (quinn + h3) for HTTP/3, h2load for h2 over TLS; both pinned
to CPU 1, segd to CPU 0 with one worker, A/B order alternating by round. Figure: server CPU
time per request from /proc (utime+stime). Fails loudly on a bind error, an error or a non-2xx.

  benches/h3_vs_tls.py [--rounds 3] [--duration 8] [--conns 32] [--streams 10]
"""
import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "vs_nginx"))
from run import Segd, SEGD_TLS, die, proc_cpu, raise_nofile, run_h2load  # noqa: E402


def h3load_binary(repo):
    out = subprocess.run(["cargo", "bench", "--bench", "h3load", "--no-run", "--message-format=json"],
                         cwd=repo, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "h3load" and msg.get("executable"):
            return msg["executable"]
    die("cannot find the h3load bench executable")


def run_h3(binary, paths_file, conns, streams, duration):
    out = subprocess.run(["taskset", "-c", "1", binary, f"127.0.0.1:{SEGD_TLS}", paths_file, str(conns), str(streams), str(duration)],
                         capture_output=True, text=True, preexec_fn=raise_nofile)
    if out.returncode != 0:
        die(f"h3load failed: {out.stderr}")
    res = dict(kv.split("=") for kv in out.stdout.split())
    if int(res["errors"]) or int(res["non2xx"]):
        die(f"h3load saw errors: {out.stdout}")
    secs = float(res["seconds"])
    return dict(requests=int(res["requests"]), rps=int(res["requests"]) / secs, mbps=int(res["bytes"]) / secs / 1e6,
                p50_ms=float(res["p50_ms"]), p99_ms=float(res["p99_ms"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.environ.get("SEGD_BENCH_DIR", "/var/tmp/segd-bench") + "/root")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--streams", type=int, default=10)
    args = ap.parse_args()
    repo = os.path.dirname(HERE)
    raise_nofile()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=repo, check=True)
    segd_bin = os.path.join(repo, "target/release/segd")
    h3 = h3load_binary(repo)
    root = os.path.abspath(args.corpus)
    if not os.path.isdir(root):
        die(f"no corpus at {root}: run benches/corpus.sh {os.path.dirname(root)} small")
    files = sorted("/" + os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    small = [p for p in files if "/hls/320k/" in p and p.endswith(".ts")]
    hot = random.Random(42).sample(small, min(500, len(small)))
    run = tempfile.mkdtemp(prefix="segd-h3-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(run, "key.pem"), "-out", os.path.join(run, "cert.pem"), "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    paths_file = os.path.join(run, "hot.txt")
    with open(paths_file, "w") as f:
        f.write("\n".join(hot) + "\n")
    uris = os.path.join(run, "uris.txt")
    with open(uris, "w") as f:
        f.write("\n".join(f"https://127.0.0.1:{SEGD_TLS}{p}" for p in hot) + "\n")

    rows = []
    for r in range(args.rounds):
        order = ["h3", "h2tls"] if r % 2 == 0 else ["h2tls", "h3"]
        for proto in order:
            srv = Segd(segd_bin, root, run, True)
            srv.extra_tls = "http3 = true"
            srv.start()
            try:
                load = (lambda d: run_h3(h3, paths_file, args.conns, args.streams, d)) if proto == "h3" else \
                       (lambda d: run_h2load(SEGD_TLS, uris, args.conns, args.streams, d, True))
                load(2)
                c0 = proc_cpu(srv.pids())
                res = load(args.duration)
                c1 = proc_cpu(srv.pids())
            finally:
                srv.stop()
            res.pop("raw", None)
            res["cpu_us_per_req"] = (c1 - c0) / max(res["requests"], 1) * 1e6
            rows.append(dict(round=r + 1, proto=proto, **res))
            print(f"h3_vs_tls: round {r + 1} {proto:5}: {res['rps']:9.0f} req/s {res['mbps']:8.1f} MB/s  p50 {res['p50_ms']:7.2f} ms  "
                  f"p99 {res['p99_ms']:7.2f} ms  cpu {res['cpu_us_per_req']:7.2f} us/req")

    med = lambda proto, k: statistics.median(x[k] for x in rows if x["proto"] == proto)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    out = os.path.join(repo, "benches/results", f"{now.strftime('%Y-%m-%d-%H%M')}-{commit}-h3")
    os.makedirs(out, exist_ok=True)
    lines = [f"# segd HTTP/3 vs segd HTTP/2 over TLS — {now.strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}", "",
             f"Medians of {args.rounds} alternating rounds, {args.duration} s each, {args.conns} connections x {args.streams} streams, "
             f"hot set of {len(hot)} small segments; segd pinned to CPU 0 (1 worker), load generator to CPU 1 "
             "(h3: benches/h3load.rs; h2 over TLS: h2load). No nginx row: nginx 1.22 has no QUIC.", "",
             "| protocol | req/s | MB/s | p50 ms | p99 ms | CPU µs/req |", "|---|---|---|---|---|---|"]
    for proto in ["h3", "h2tls"]:
        lines.append(f"| {proto} | {med(proto, 'rps'):.0f} | {med(proto, 'mbps'):.1f} | {med(proto, 'p50_ms'):.2f} | "
                     f"{med(proto, 'p99_ms'):.2f} | {med(proto, 'cpu_us_per_req'):.1f} |")
    lines += ["", f"**CPU/req h3 / h2-over-TLS: {med('h3', 'cpu_us_per_req') / med('h2tls', 'cpu_us_per_req'):.2f}**", "",
              "Raw rounds:", ""] + [f"- round {x['round']} {x['proto']}: {x['rps']:.0f} req/s, {x['cpu_us_per_req']:.1f} µs/req, p99 {x['p99_ms']:.2f} ms" for x in rows]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
