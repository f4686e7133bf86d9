#!/usr/bin/env python3
"""segd vs nginx on the same corpus, same load generator, same connection counts, in one run.

Called by benches/compare.sh. For every scenario and round, each server is started fresh (A/B order
alternating by round), warmed up (except the cold scenario), loaded, and measured:
req/s, MB/s, p50/p99 latency, server CPU seconds per request (utime+stime of every server
process from /proc, the stable figure on shared machines), RSS, and errors. Any non-2xx
response, failed bind or port already served by another process stops the run loudly. Writes
raw.csv and summary.md: medians, and for every scenario the spread across rounds (min/median/max of
each server's CPU per request and RSS, and of the per-round segd/nginx ratio), with the CPU time
that other processes took on the server's core and the VM's steal time in each round, so a noisy
round can be told from a real difference.
"""
import argparse
import csv
import datetime
import os
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK = os.sysconf("SC_CLK_TCK")
SEGD_PORT, SEGD_ADMIN, NGINX_PORT, NGINX_H2 = 18080, 18090, 18081, 18082
SEGD_TLS, NGINX_TLS = 18443, 18444


def set_ports(base):
    """Moves every port by the same offset (--port-base), for machines where others run servers."""
    global SEGD_PORT, SEGD_ADMIN, NGINX_PORT, NGINX_H2, SEGD_TLS, NGINX_TLS
    SEGD_PORT, NGINX_PORT, NGINX_H2, SEGD_ADMIN = base, base + 1, base + 2, base + 10
    SEGD_TLS, NGINX_TLS = base + 363, base + 364


def ensure_free(ports):
    """Both servers bind with SO_REUSEPORT, so a stray server on the same port would silently
    take part of the load (and its requests would count against ours): refuse to start."""
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            continue
        die(f"port {port} is already served by another process (ss -ltnp); pass --port-base")


def cpu_times():
    """(busy seconds of CPU 0, steal seconds of all CPUs) from /proc/stat."""
    busy0 = steal = 0.0
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts[0] == "cpu0":
                v = [int(x) for x in parts[1:]]
                busy0 = (sum(v[:8]) - v[3] - v[4]) / CLK
            elif parts[0] == "cpu":
                steal = int(parts[8]) / CLK
    return busy0, steal


RUN_DIR = None


def die(msg):
    print(f"compare: FAIL: {msg}", file=sys.stderr)
    if RUN_DIR:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    sys.exit(1)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


IDLE_CONNECTIONS = 10000


def segd_open_files():
    """segd's `cache.open_files` (10000, as nginx's open_file_cache), lowered where the descriptor
    limit could not also hold the idle scenario's connections: segd fits `max_connections` to
    the limit left after the cache and a headroom of limit/8 (at most 1024, docs/tuning.md) and
    resets connections beyond it, so with a hard limit of 20000 idle10k could never pass."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 10000
    headroom = min(1024, max(16, hard // 8))
    return max(1000, min(10000, hard - IDLE_CONNECTIONS - headroom - 100))


def proc_cpu(pids):
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except OSError:
            pass
    return total


def proc_rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def wait_port(port, proc, log):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"server exited at start (bind error?): {open(log).read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"nothing listening on {port}: {open(log).read()[-2000:]}")


class Server:
    """What both servers share: stopping (SIGTERM, then SIGKILL after 15 s)."""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Segd(Server):
    name = "segd"

    def __init__(self, binary, root, run, pinned, name="segd"):
        self.binary, self.root, self.run, self.pinned, self.name = binary, root, run, pinned, name
        self.port, self.h2port, self.tlsport = SEGD_PORT, SEGD_PORT, SEGD_TLS
        # Per-scenario settings: (server, cache) TOML lines.
        self.extra_server, self.extra_cache, self.extra_tls = "", "", ""

    def start(self):
        ensure_free([SEGD_PORT, SEGD_ADMIN, SEGD_TLS])
        cfg = os.path.join(self.run, "segd.toml")
        with open(cfg, "w") as f:
            f.write(f"""[server]
listen = ["127.0.0.1:{SEGD_PORT}"]
workers = {1 if self.pinned else 2}
{self.extra_server}
[admin]
listen = "127.0.0.1:{SEGD_ADMIN}"
[[volumes]]
path = "{self.root}"
[cache]
max_bytes = "1GiB"
open_files = {segd_open_files()}
{self.extra_cache}
[tls]
listen = ["127.0.0.1:{SEGD_TLS}"]
cert = "{self.run}/cert.pem"
key = "{self.run}/key.pem"
{self.extra_tls}
[log]
access = "off"
level = "warn"
""")
        self.log = os.path.join(self.run, "segd.log")
        cmd = ([ "taskset", "-c", "0"] if self.pinned else []) + [self.binary, "serve", "--config", cfg]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), preexec_fn=raise_nofile)
        wait_port(SEGD_PORT, self.proc, self.log)

    def pids(self):
        return [self.proc.pid]



class Nginx(Server):
    name = "nginx"

    def __init__(self, root, run, pinned):
        self.root, self.run, self.pinned = root, run, pinned
        self.port, self.h2port, self.tlsport = NGINX_PORT, NGINX_H2, NGINX_TLS

    def start(self):
        ensure_free([NGINX_PORT, NGINX_H2, NGINX_TLS])
        with open(os.path.join(HERE, "nginx.conf.in")) as f:
            conf = f.read()
        conf = (conf.replace("@WORKERS@", "1" if self.pinned else "2")
                .replace("@AFFINITY@", "worker_cpu_affinity 01;" if self.pinned else "")
                .replace("@RUN@", self.run).replace("@ROOT@", self.root)
                .replace("@PORT@", str(NGINX_PORT)).replace("@H2PORT@", str(NGINX_H2))
                .replace("@TLSPORT@", str(NGINX_TLS)))
        path = os.path.join(self.run, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.log = os.path.join(self.run, "nginx-error.log")
        open(self.log, "a").close()
        cmd = ([ "taskset", "-c", "0"] if self.pinned else []) + ["nginx", "-c", path, "-p", self.run, "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.run, "nginx.stderr"), "w"), preexec_fn=raise_nofile)
        wait_port(NGINX_PORT, self.proc, os.path.join(self.run, "nginx.stderr"))
        wait_port(NGINX_H2, self.proc, os.path.join(self.run, "nginx.stderr"))
        wait_port(NGINX_TLS, self.proc, os.path.join(self.run, "nginx.stderr"))

    def pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid] + [int(p) for p in out]



WRK_LUA = """
local paths = {}
for line in io.lines(os.getenv("SEGD_BENCH_PATHS")) do paths[#paths + 1] = line end
math.randomseed(tonumber(os.getenv("SEGD_BENCH_SEED") or "1"))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


def drop_caches(what):
    """Writes back dirty pages, then drops clean caches (`what`: 1 the page cache, 3 also the
    dentries and inodes). Needs root."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(what + "\n")


def settle_cache(root, list_file):
    """Puts a scenario's files into the page cache in a known state: clean caches are dropped
    (page cache, dentries, inodes and reclaimable slab), free memory is compacted, and the files
    are read once, sequentially. Without it, `large` measures whatever folio layout and residency
    the runs before it left (benches/results/2026-11-29-0250-large-variance/notes.md): the
    kernel's page-cache lookup is a large, state-dependent share of a zero-copy send. Dropping only
    the page cache was not enough: after 2,000 connections `large` ran ~10 % cheaper for segd
    (benches/results/2026-11-29-0629-0cc0206-large-compact-settle/notes.md)."""
    try:
        drop_caches("3")
    except OSError as e:
        print(f"compare: page cache not settled (cannot drop caches: {e}); results depend on what ran before")
        return
    try:
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1\n")
    except OSError as e:
        print(f"compare: memory not compacted ({e}); folio sizes depend on what ran before")
    for p in open(list_file).read().split():
        with open(root + p, "rb") as f:
            while f.read(1 << 20):
                pass
    print("compare: page cache settled: caches dropped, memory compacted, then the scenario's files read once")


def unit_ms(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def run_wrk(port, paths_file, conns, duration, pinned, lua, scheme="http"):
    cmd = (["taskset", "-c", "1"] if pinned else []) + [
        "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "--latency", "-s", lua, f"{scheme}://127.0.0.1:{port}"]
    env = dict(os.environ, SEGD_BENCH_PATHS=paths_file)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=raise_nofile).stdout
    if "Non-2xx or 3xx responses" in out:
        die(f"non-2xx responses from port {port}:\n{out}")
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not m:
        die(f"cannot parse wrk output:\n{out}")
    reqs = int(m.group(1))
    secs = float(m.group(2)) * {"s": 1, "m": 60, "ms": 0.001}[m.group(3)]
    # wrk's units are powers of 1024; MB/s here are 10^6 bytes a second.
    mb = float(m.group(4)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(5)] / 1e6
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))

    def ms(s):
        mm = re.match(r"([\d.]+)(\w+)", s)
        return unit_ms(mm.group(1), mm.group(2)) if mm else float("nan")

    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in err.groups()) if err else 0
    return dict(requests=reqs, rps=reqs / secs, mbps=mb / secs, p50_ms=ms(lat.get("50", "")), p99_ms=ms(lat.get("99", "")), errors=errors, raw=out)


def run_h2load(port, uris_file, conns, streams, duration, pinned):
    # h2load prints min/max/mean/sd latencies only; its per-request log gives the percentiles.
    # (Until session 29 the max was reported as "p99" and the mean as "p50".)
    log = tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".tsv", delete=False)
    log.close()
    cmd = (["taskset", "-c", "1"] if pinned else []) + [
        "h2load", "-c", str(conns), "-m", str(streams), "-D", str(duration), "-i", uris_file,
        f"--log-file={log.name}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=raise_nofile).stdout
        lat = sorted(int(f[2]) for f in (l.split("\t") for l in open(log.name)) if len(f) >= 3 and f[1] != "-1")
    finally:
        os.unlink(log.name)
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    rq = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", out)
    if not (st and rq and fin):
        die(f"cannot parse h2load output:\n{out}")
    if int(st.group(3)) + int(st.group(4)) > 0 or int(rq.group(5)) > 0:
        die(f"h2load saw errors on port {port}:\n{out}")

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0 if lat else float("nan")

    # h2load's units are powers of 1024; MB/s here are 10^6 bytes a second.
    mb = float(fin.group(3)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[fin.group(4)] / 1e6
    return dict(requests=int(rq.group(4)), rps=float(fin.group(2)), mbps=mb, p50_ms=pct(0.50),
                p99_ms=pct(0.99), errors=int(rq.group(6)), raw=out)


def idle_connections(server, port, path, n):
    """Opens n keep-alive connections, makes one request on each, and leaves them idle."""
    raise_nofile()
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    pending = {s: b"" for s in socks}
    reset = 0
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        for key, ev in sel.select(timeout=1):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE:
                try:
                    s.send(req)
                except OSError:
                    # Refused or reset before the request went out: counted, not retried (it
                    # was retried at once, forever, until the deadline).
                    reset += 1
                    sel.unregister(s)
                    del pending[s]
                    continue
                sel.modify(s, selectors.EVENT_READ)
            elif ev & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                pending[s] += data
                if b"\r\n\r\n" in pending[s] or not data:
                    if not data and not pending[s]:
                        reset += 1
                        sel.unregister(s)
                        del pending[s]
                        continue
                    if not pending[s].startswith(b"HTTP/1.1 200"):
                        die(f"idle scenario: bad response from {server} on port {port} ({len(socks) - len(pending)} of {n} answered): {pending[s][:100]!r}")
                    sel.unregister(s)
                    del pending[s]
    if reset or pending:
        die(f"idle scenario: {server} on port {port}: {reset} of {n} connections closed or reset "
            f"before an answer, {len(pending)} unanswered in 60 s (a server refuses connections "
            f"beyond its connection limit: see its log and metrics; ulimit -Hn is "
            f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]})")
    return socks


def spread_table(rows):
    """Per scenario: min / median / max across rounds of each server's CPU per request (or RSS for
    idle10k), and of the per-round segd/nginx ratio (the rounds are A/B pairs run back to back,
    so a co-tenant's load hits both halves of a pair more alike than two rounds apart)."""
    out = ["Spread across rounds (min / median / max). Per-round ratio: segd ÷ nginx within each A/B pair. "
           "cpu0 other: CPU time other processes took on the server's core during the round (median, max).", "",
           "With --baseline, base is the other segd binary, run in the same rounds.", "",
           "| scenario | figure | segd | nginx | per-round ratio | base | base per-round ratio | segd ÷ base per round | rounds | cpu0 other % | steal % |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]

    def mmm(vals, fmt):
        vals = [v for v in vals if v == v]
        if not vals:
            return "—"
        return " / ".join(fmt.format(v) for v in (min(vals), statistics.median(vals), max(vals)))

    figures = []
    for sname in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == sname]
        if all(r["cpu_us_per_req"] != r["cpu_us_per_req"] for r in rs):
            figures.append((sname, rs, "rss_mb", "RSS MB"))
        else:
            figures.append((sname, rs, "cpu_us_per_req", "CPU µs/req"))
            figures.append((sname, rs, "p99_ms", "p99 ms"))
            figures.append((sname, rs, "p99_norm", "p99 ÷ mean latency"))
    for sname, rs, key, label in figures:
        by = {(r["round"], r["server"]): r.get(key, float("nan")) for r in rs}
        def per_round(a, b):
            return [by[(n, a)] / by[(n, b)] for n in sorted({r["round"] for r in rs})
                    if (n, a) in by and (n, b) in by and by[(n, b)]]
        ratios = per_round("segd", "nginx")
        other = [r.get("cpu0_other_pct", float("nan")) for r in rs]
        other = [v for v in other if v == v]
        steal = [r.get("steal_pct", float("nan")) for r in rs]
        steal = [v for v in steal if v == v]
        oth = f"{statistics.median(other):.0f}, {max(other):.0f}" if other else "—"
        stl = f"{statistics.median(steal):.1f}, {max(steal):.1f}" if steal else "—"
        fmt = "{:.2f}" if key == "p99_norm" else "{:.1f}"
        out.append(f"| {sname} | {label} | {mmm([r.get(key, float('nan')) for r in rs if r['server'] == 'segd'], fmt)} | "
                   f"{mmm([r.get(key, float('nan')) for r in rs if r['server'] == 'nginx'], fmt)} | {mmm(ratios, '{:.2f}')} | "
                   f"{mmm([r.get(key, float('nan')) for r in rs if r['server'] == 'base'], fmt)} | {mmm(per_round('base', 'nginx'), '{:.2f}')} | "
                   f"{mmm(per_round('segd', 'base'), '{:.2f}')} | {len(ratios)} | {oth} | {stl} |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--segd", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per scenario (default: 3, 25 for large, 7 for download5m, c2000, c10k and idle10k)")
    ap.add_argument("--duration", type=int, default=None,
                    help="seconds per round for every scenario (default: 10, 4 for large)")
    ap.add_argument("--baseline", default=None,
                    help="a second segd binary (say, the previous commit's) run in the same rounds as 'base'")
    ap.add_argument("--port-base", type=int, default=18080,
                    help="first port (segd); the others follow it as 18081-18090, 18443-18444 follow 18080")
    ap.add_argument("--no-settle", action="store_true",
                    help="leave the page cache as the run before left it (default: before `large`, drop it and re-read the scenario's files)")
    ap.add_argument("--scenarios", default="hot,large,download5m,c2000,c10k,h2c,playlists,cold,idle10k,hot-unpinned,https,h2tls,https-large,https-large-read")
    args = ap.parse_args()
    set_ports(args.port_base)
    raise_nofile()
    root = os.path.abspath(args.corpus)
    os.makedirs(args.out, exist_ok=True)
    global RUN_DIR
    run = RUN_DIR = tempfile.mkdtemp(prefix="segd-bench-")
    lua = os.path.join(run, "random.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)

    files = []
    for d, _, fs in os.walk(root):
        for fn in fs:
            files.append("/" + os.path.relpath(os.path.join(d, fn), root))
    files.sort()
    rnd = __import__("random").Random(42)
    small = [p for p in files if "/hls/320k/" in p and p.endswith(".ts")]
    hot = rnd.sample(small, min(500, len(small)))
    large = [p for p in files if "/hls-long/" in p and p.endswith(".ts")]
    downloads = [p for p in files if "/download/" in p and p.endswith(".m4a")]
    playlists = [p for p in files if p.endswith((".m3u8", ".mpd"))]
    segments = [p for p in files if not p.endswith((".m3u8", ".mpd"))]
    lists = {}
    if not downloads:
        die(f"no progressive downloads (download/*.m4a) in {root}: regenerate the corpus (benches/corpus.sh)")
    for name, paths in dict(hot=hot, large=large, downloads=downloads, playlists=playlists, all=segments).items():
        lists[name] = os.path.join(run, f"{name}.txt")
        with open(lists[name], "w") as f:
            f.write("\n".join(paths) + "\n")
    sizes = {n: statistics.mean(os.path.getsize(root + p) for p in ps) for n, ps in dict(hot=hot, large=large, downloads=downloads, playlists=playlists).items()}
    print(f"compare: corpus {len(files)} files; hot set {len(hot)} x {sizes['hot']/1024:.0f} KiB, large {len(large)} x {sizes['large']/1024/1024:.2f} MiB, {len(playlists)} playlists")

    scenarios = {
        "hot": dict(kind="wrk", paths="hot", conns=128, desc=f"hot small segments (~{sizes['hot']/1024:.0f} KiB, random over {len(hot)}), 128 conns"),
        "large": dict(kind="wrk", paths="large", conns=32, rounds=25, duration=4, settle=True, desc=f"large segments (~{sizes['large']/1024/1024:.1f} MiB), 32 conns"),
        "c2000": dict(kind="wrk", paths="hot", conns=2000, rounds=7, desc="hot small segments, 2,000 concurrent connections"),
        "c10k": dict(kind="wrk", paths="hot", conns=10000, rounds=7, desc="hot small segments, 10,000 concurrent active connections"),
        "download5m": dict(kind="wrk", paths="downloads", conns=32, rounds=7,
                           desc=f"progressive downloads (whole tracks, ~{sizes['downloads']/1024/1024:.1f} MiB), 32 conns"),
        "h2c": dict(kind="h2load", paths="hot", conns=32, streams=10, desc="HTTP/2 prior knowledge (h2load), 32 conns x 10 streams"),
        "playlists": dict(kind="wrk", paths="playlists", conns=128, desc="playlists only, 128 conns"),
        "cold": dict(kind="wrk", paths="all", conns=128, cold=True, desc="cold: page cache dropped, random over the whole corpus, 128 conns"),
        "idle10k": dict(kind="idle", rounds=7, desc="10,000 idle keep-alive connections: server RSS"),
        "hot-unpinned": dict(kind="wrk", paths="hot", conns=128, pinned=False, desc="hot small segments, unpinned, 2 workers each"),
        "https": dict(kind="wrk", paths="hot", conns=128, tls=True, desc="HTTPS/1.1 (TLS 1.3, same certificate), hot small segments, 128 conns"),
        "h2tls": dict(kind="h2load", paths="hot", conns=32, streams=10, tls=True, desc="HTTP/2 over TLS (h2load, ALPN h2), 32 conns x 10 streams"),
        # Bodies above cache.max_item_bytes over TLS: segd encrypts from a memory map (default) or
        # from read buffers (mmap = false); nginx reads into its buffers either way.
        "https-large": dict(kind="wrk", paths="large", conns=32, tls=True, segd_cache='max_item_bytes = "1MiB"',
                            desc=f"HTTPS/1.1, large segments (~{sizes['large']/1024/1024:.1f} MiB) above segd's cache item limit: sent from a memory map, 32 conns"),
        "https-large-read": dict(kind="wrk", paths="large", conns=32, tls=True, segd_cache='max_item_bytes = "1MiB"', segd_server="mmap = false",
                                 desc="as https-large with segd's mmap off (chunked reads through the I/O backend)"),
    }
    # One self-signed certificate for both servers.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(run, "key.pem"), "-out", os.path.join(run, "cert.pem"), "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    rows = []
    for sname in args.scenarios.split(","):
        sc = scenarios.get(sname)
        if sc is None:
            die(f"unknown scenario {sname}")
        pinned = sc.get("pinned", True)
        if sc.get("cold"):
            try:
                drop_caches("3")
            except OSError as e:
                print(f"compare: skipping cold scenario: cannot drop caches ({e})")
                continue
        if sc.get("settle") and not args.no_settle:
            settle_cache(root, lists[sc["paths"]])
        print(f"compare: == {sname}: {sc['desc']}")
        rounds = args.rounds or sc.get("rounds", 3)
        duration = args.duration or sc.get("duration", 10)
        for rnd_i in range(rounds):
            servers = [Segd(args.segd, root, run, pinned)]
            if args.baseline:
                servers.append(Segd(args.baseline, root, run, pinned, name="base"))
            for srv in servers:
                srv.extra_server, srv.extra_cache = sc.get("segd_server", ""), sc.get("segd_cache", "")
            servers.append(Nginx(root, run, pinned))
            # A/B (or A/B/C) order rotates by round, so no server always runs first or last.
            servers = servers[rnd_i % len(servers):] + servers[:rnd_i % len(servers)]
            for srv in servers:
                if sc.get("cold"):
                    drop_caches("3")
                srv.start()
                try:
                    if sc["kind"] == "idle":
                        base_rss = proc_rss_mb(srv.pids())
                        socks = idle_connections(srv.name, srv.port, playlists[0], IDLE_CONNECTIONS)
                        time.sleep(1)
                        rss = proc_rss_mb(srv.pids())
                        for s in socks:
                            s.close()
                        res = dict(requests=10000, rps=float("nan"), mbps=float("nan"), p50_ms=float("nan"), p99_ms=float("nan"), errors=0, cpu_us_per_req=float("nan"), rss_mb=rss, rss_base_mb=base_rss,
                                   cpu0_other_pct=float("nan"), steal_pct=float("nan"), p99_norm=float("nan"))
                    else:
                        tls = sc.get("tls", False)
                        port = srv.tlsport if tls else srv.port
                        scheme = "https" if tls else "http"
                        if not sc.get("cold"):
                            warm = run_wrk(port, lists[sc["paths"]], min(sc["conns"], 64), 2, pinned, lua, scheme) if sc["kind"] == "wrk" else None
                        c0 = proc_cpu(srv.pids())
                        busy0, steal0 = cpu_times()
                        if sc["kind"] == "wrk":
                            res = run_wrk(port, lists[sc["paths"]], sc["conns"], duration, pinned, lua, scheme)
                        else:
                            h2port = srv.tlsport if tls else srv.h2port
                            uris = os.path.join(run, f"uris-{srv.name}.txt")
                            with open(uris, "w") as f:
                                f.write("\n".join(f"{scheme}://127.0.0.1:{h2port}{p}" for p in hot) + "\n")
                            res = run_h2load(h2port, uris, sc["conns"], sc["streams"], duration, pinned)
                        c1 = proc_cpu(srv.pids())
                        busy1, steal1 = cpu_times()
                        res["cpu_us_per_req"] = (c1 - c0) / max(res["requests"], 1) * 1e6
                        # p99 in units of the mean latency (connections ÷ req/s, Little's law): the
                        # load generator's own speed, which co-tenants move by 2x between rounds,
                        # sets the mean; what is left is how fairly the server orders connections.
                        conc = sc["conns"] * sc.get("streams", 1)
                        res["p99_norm"] = res["p99_ms"] / (conc / res["rps"] * 1000) if res["rps"] else float("nan")
                        # What else ran on the server's core (compilers, other benches) and what
                        # the hypervisor took: the evidence for a noisy round.
                        res["cpu0_other_pct"] = max(0.0, (busy1 - busy0) - (c1 - c0)) / duration * 100 if pinned else float("nan")
                        res["steal_pct"] = (steal1 - steal0) / duration * 100
                        res["rss_mb"] = proc_rss_mb(srv.pids())
                finally:
                    srv.stop()
                res.pop("raw", None)
                row = dict(scenario=sname, round=rnd_i + 1, server=srv.name, **res)
                rows.append(row)
                print(f"compare:   round {rnd_i + 1} {srv.name:5}: {res['rps']:10.0f} req/s {res['mbps']:9.1f} MB/s  p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  cpu {res['cpu_us_per_req']:7.2f} us/req  rss {res['rss_mb']:7.1f} MB  errors {res['errors']}  cpu0 other {res['cpu0_other_pct']:5.1f} %  steal {res['steal_pct']:4.1f} %")

    keys = ["scenario", "round", "server", "requests", "rps", "mbps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_mb", "errors", "cpu0_other_pct", "steal_pct", "p99_norm"]
    with open(os.path.join(args.out, "raw.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def med(sname, server, key):
        vals = [r[key] for r in rows if r["scenario"] == sname and r["server"] == server and r[key] == r[key]]
        return statistics.median(vals) if vals else float("nan")

    lines = ["| scenario | segd req/s | nginx req/s | req/s ratio | segd CPU µs/req | nginx CPU µs/req | **CPU/req ratio** | segd p99 ms | nginx p99 ms | p99 ratio | segd RSS MB | nginx RSS MB | errors segd/nginx |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for sname in dict.fromkeys(r["scenario"] for r in rows):
        g = lambda s, k: med(sname, s, k)
        ratio = lambda k: g("segd", k) / g("nginx", k) if g("nginx", k) else float("nan")
        errs = f"{sum(r['errors'] for r in rows if r['scenario']==sname and r['server']=='segd')}/{sum(r['errors'] for r in rows if r['scenario']==sname and r['server']=='nginx')}"
        lines.append(f"| {sname} | {g('segd','rps'):.0f} | {g('nginx','rps'):.0f} | {ratio('rps'):.2f} | {g('segd','cpu_us_per_req'):.1f} | {g('nginx','cpu_us_per_req'):.1f} | **{ratio('cpu_us_per_req'):.2f}** | {g('segd','p99_ms'):.2f} | {g('nginx','p99_ms'):.2f} | {ratio('p99_ms'):.2f} | {g('segd','rss_mb'):.1f} | {g('nginx','rss_mb'):.1f} | {errs} |")
    # From the scenarios themselves, so the header cannot drift from what ran.
    ran = [k for k in args.scenarios.split(",") if k in scenarios]
    own = [f"{k} {scenarios[k]['duration']} s" for k in ran if "duration" in scenarios[k]]
    round_length = f"{args.duration} s" if args.duration else "10 s" + (f" ({', '.join(own)})" if own else "")
    head = [f"# segd vs nginx — {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", "",
            f"Medians of A/B-alternating rounds ({args.rounds or 'default'} per scenario), {round_length} each. Pinned scenarios: server on CPU 0 (1 worker), load generator on CPU 1. "
            "CPU/req = server utime+stime per request (lower is better; ratio < 1 means segd is cheaper). nginx: " +
            subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip() + ".", "",
            "Scenarios: " + "; ".join(f"**{k}**: {v['desc']}" for k, v in scenarios.items() if k in args.scenarios.split(",")), ""]
    summary = "\n".join(head + lines + [""] + spread_table(rows)) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
