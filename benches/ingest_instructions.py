#!/usr/bin/env python3
"""User-space instructions per upload, segd against nginx WebDAV, counted by callgrind.

benches/ingest.py measures CPU time, which on a shared 2-core machine moves with everything else
running. Instructions executed in user space do not: callgrind counts them the same whatever the
machine is doing. This script runs each server under `valgrind --tool=callgrind` twice, once with
--small and once with --large uploads (same bodies and paths as ingest.py: 200,000 random bytes,
500 files a directory, one keep-alive connection, segd's token in the query), and divides the
difference of the two runs' totals by the difference of the upload counts: start-up, warm-up and
shutdown cancel out. Kernel work (the socket copy, the page cache, ext4) is not counted at all:
this is the user-space share of ingest.py's figure, the one segd spends four times nginx's on
(benches/results/2026-12-03-0800-e07c068-user-vs-system/).

    python3 benches/ingest_instructions.py --segd target/release/segd [--segd-b OTHER] --out DIR

Writes DIR/summary.md (instructions per upload per server, and segd's heaviest functions per
upload, inclusive, from the difference of the two runs) and keeps the callgrind files.
Needs valgrind (callgrind_annotate) and nginx with the dav module (Debian's nginx-light).
"""
import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ingest  # noqa: E402  (mint_token, encode_token, the nginx config template)

SEGD_PORT, SEGD_ADMIN, NGINX_PORT = 18431, 18432, 18433
PREFIX = "/vod/"
BODY = 200_000
SECRET = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def die(msg):
    sys.exit(f"ingest_instructions: {msg}")


def wait_port(port, proc, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            c.getresponse().read()
            c.close()
            return
        except OSError:
            time.sleep(0.2)
    die(f"{what} did not listen on {port} within {timeout} s")


def upload(port, n, tag, qs, bodies):
    """n PUTs on one keep-alive connection; every answer must be 201 (a new object)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(n):
        path = f"{PREFIX}{tag}/d{i // 500:03d}/seg_{i:07d}.ts{qs}"
        c.request("PUT", path, body=bodies[i % len(bodies)], headers={"Content-Type": "video/mp2t"})
        r = c.getresponse()
        r.read()
        if r.status != 201:
            die(f"PUT {path} answered {r.status}")
    c.close()


def callgrind(out_prefix, cmd):
    return ["valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=no",
            f"--callgrind-out-file={out_prefix}.%p", "--quiet"] + cmd


def run_segd(binary, work, tag, n, bodies, server_extra, ingest_extra=""):
    root = os.path.join(work, f"root-{tag}")
    os.makedirs(root)
    cfg = os.path.join(work, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[server]
listen = ["127.0.0.1:{SEGD_PORT}"]
workers = 1
{server_extra}
[admin]
listen = "127.0.0.1:{SEGD_ADMIN}"
[[volumes]]
path = "{root}"
[log]
access = "off"
level = "warn"
[ingest]
prefixes = ["{PREFIX}"]
max_body_bytes = "512MiB"
fsync = false
{ingest_extra}
[[ingest.keys]]
id = "bench"
secret = "{SECRET}"
""")
    token = ingest.mint_token(SECRET, f"{PREFIX}*", int(time.time()) + 86400)
    qs = f"?__token__={ingest.encode_token(token)}"
    out = os.path.join(work, f"callgrind-{tag}")
    log = open(os.path.join(work, f"{tag}.log"), "w")
    proc = subprocess.Popen(callgrind(out, [binary, "serve", "--config", cfg]), stdout=log, stderr=log)
    try:
        wait_port(SEGD_PORT, proc, "segd")
        upload(SEGD_PORT, 20, f"{tag}-warm", qs, bodies)
        upload(SEGD_PORT, n, tag, qs, bodies)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    shutil.rmtree(root)
    return [p for p in os.listdir(work) if p.startswith(f"callgrind-{tag}.")]


def run_nginx(work, tag, n, bodies):
    root, tmp, run = (os.path.join(work, f"{d}-{tag}") for d in ("root", "tmp", "run"))
    for d in (root, tmp, run):
        os.makedirs(d)
    with open(os.path.join(HERE, "ingest_nginx.conf.in")) as f:
        conf = f.read()
    conf = (conf.replace("@AFFINITY@", "").replace("@RUN@", run).replace("@ROOT@", root)
            .replace("@TMP@", tmp).replace("@PORT@", str(NGINX_PORT)).replace("@PREFIX@", PREFIX)
            .replace("@BODY_BUFFER@", "256k"))
    path = os.path.join(run, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    out = os.path.join(work, f"callgrind-{tag}")
    log = open(os.path.join(work, f"{tag}.log"), "w")
    proc = subprocess.Popen(callgrind(out, ["nginx", "-c", path, "-p", run, "-g", "daemon off;"]),
                            stdout=log, stderr=log)
    try:
        wait_port(NGINX_PORT, proc, "nginx")
        upload(NGINX_PORT, 20, f"{tag}-warm", "", bodies)
        upload(NGINX_PORT, n, tag, "", bodies)
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: the worker exits and callgrind dumps it
        proc.wait(timeout=300)
    shutil.rmtree(root)
    return [p for p in os.listdir(work) if p.startswith(f"callgrind-{tag}.")]


def totals(work, files):
    """Total Ir over the files, and inclusive Ir per function (summed over the files)."""
    total, funcs = 0, {}
    for name in files:
        path = os.path.join(work, name)
        with open(path) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
        out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99.99", path],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line) or re.match(r"\s*([\d,]+)\s+(\S.*)$", line)
            if not m or ":" not in m.group(2):
                continue
            ir = int(m.group(1).replace(",", ""))
            fn = m.group(2).split(":", 1)[1].split(" [")[0].strip()
            funcs[fn] = funcs.get(fn, 0) + ir
    return total, funcs


def main():
    global PREFIX
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segd", required=True, help="segd binary (A)")
    ap.add_argument("--segd-b", help="a second segd binary (B), measured the same way")
    ap.add_argument("--segd-server", default="", help="extra [server] lines for segd (both builds)")
    ap.add_argument("--segd-ingest", default="", help="extra [ingest] lines for segd (both builds), e.g. 'inline_writes = true'")
    ap.add_argument("--prefix", default=PREFIX, help=f"URL prefix uploads go to (default {PREFIX}; /live/ is also a live "
                    "prefix for segd: read-while-write registry and directory watches)")
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=1200)
    ap.add_argument("--top", type=int, default=40, help="functions listed per segd build")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not (args.prefix.startswith("/") and args.prefix.endswith("/")):
        die(f"--prefix {args.prefix!r}: must start and end with /")
    PREFIX = args.prefix
    if args.large <= args.small:
        die("--large must be above --small")
    for tool in ("valgrind", "callgrind_annotate") + (() if args.no_nginx else ("nginx",)):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            die(f"{tool} not found (apt-get install valgrind nginx-light)")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ingest-instr-", dir="/var/tmp")
    bodies = [os.urandom(BODY) for _ in range(4)]
    servers = [("segd", lambda t, n: run_segd(args.segd, work, t, n, bodies, args.segd_server, args.segd_ingest))]
    if args.segd_b:
        servers.append(("segd-b", lambda t, n: run_segd(args.segd_b, work, t, n, bodies, args.segd_server, args.segd_ingest)))
    if not args.no_nginx:
        servers.append(("nginx", lambda t, n: run_nginx(work, t, n, bodies)))
    results = {}
    for name, run in servers:
        per = {}
        for n in (args.small, args.large):
            files = run(f"{name}-{n}", n)
            per[n] = totals(work, files)
            print(f"{name}, {n} uploads: {per[n][0]:,} instructions", flush=True)
        d = args.large - args.small
        (ta, fa), (tb, fb) = per[args.small], per[args.large]
        funcs = {fn: (fb.get(fn, 0) - fa.get(fn, 0)) / d for fn in set(fa) | set(fb)}
        results[name] = ((tb - ta) / d, funcs)
    for f in os.listdir(work):
        if f.startswith("callgrind-"):
            shutil.move(os.path.join(work, f), os.path.join(args.out, f))
    shutil.rmtree(work)
    lines = [f"# User-space instructions per upload (callgrind), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", f"`benches/ingest_instructions.py`, {args.small} and {args.large} uploads of {BODY:,} bytes per server, "
             f"one keep-alive connection, under {PREFIX}"
             + (f", segd's [ingest] adds `{args.segd_ingest}`" if args.segd_ingest else "")
             + f"; per upload = difference of the two runs' totals ÷ {args.large - args.small}.", "", "| server | instructions per upload | ÷ nginx |", "|---|---|---|"]
    base = results.get("nginx", (None,))[0]
    for name, (ir, _) in results.items():
        lines.append(f"| {name} | {ir:,.0f} | {ir / base:.2f} |" if base else f"| {name} | {ir:,.0f} | |")
    for name, (ir, funcs) in results.items():
        if not name.startswith("segd"):
            continue
        lines += ["", f"## {name}: heaviest functions per upload (inclusive)", "", "| instructions | % | function |", "|---|---|---|"]
        for fn, v in sorted(funcs.items(), key=lambda kv: -kv[1])[:args.top]:
            lines.append(f"| {v:,.0f} | {100 * v / ir:.1f} | `{fn[:140]}` |")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
