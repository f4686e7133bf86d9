#!/usr/bin/env python3
"""segd's pull-through edge tier (docs/edge.md) vs nginx proxy_cache, same upstream, in one run.

    python3 benches/edge_vs_nginx.py --segd /path/to/release/segd [--out DIR] [--scenarios stampede,hits,misses]

The upstream is this script in `upstream` mode: a Python asyncio HTTP/1.1 origin (keep-alive,
Content-Length) serving a 200 KiB object for every /vod/...ts path, each object's bytes its own,
50 ms after each request head, with the bodies of all its responses paced together to
125 MB/s (~1 Gbit/s). It counts the requests it gets per path (GET /__stats?prefix=...).

nginx: proxy_cache (proxy_cache_lock on, proxy_cache_valid 200 1h, proxy_http_version 1.1 with a
keepalive upstream, cache files on the same filesystem as segd's cache_path, use_temp_path=off),
otherwise tuned as benches/vs_nginx/nginx.conf.in (sendfile, tcp_nopush, aio threads,
open_file_cache). segd: one worker, [pull] with the same upstream.

Scenarios (servers pinned to CPU 0 with one worker each; the load generators and the upstream on
CPU 1; the server's CPU = utime+stime of all its processes from /proc):
1. stampede: both servers up (access logs on, for the cache result of each request); 8 rounds,
   A/B order alternating; each round, 200 connections (opened and accepted first) send a GET for
   the same cold object at once (a fresh object per round and server). Reported: upstream
   requests per round (1 if the lock/single flight works), time to first byte of all 200 (kernel
   receive timestamp of the first segment, SO_TIMESTAMPNS, minus the send time), complete and
   byte-exact bodies, when the upstream was asked and answered.
2. hits: each round each server fresh (A/B order alternating): 100 objects pulled once
   (verified byte-exact, one upstream request each), a 2 s wrk warm-up, then wrk -c64 for 10 s
   over the hot set (random paths, Lua): server CPU µs/request. No upstream request may follow.
3. misses: each round each server fresh: wrk -c64 for 10 s, every request a distinct cold object
   (Lua counter): objects/s, server CPU µs/object, latency; then 20 of those objects are fetched
   again and compared byte for byte.

Every round also records how busy CPU 0 was with anything but the server (other jobs on a shared
machine, softirq, steal) and the 1-minute load average. Ports 21070 (upstream), 21080 (segd),
21081 (nginx), 21090 (segd admin); caches under --workdir (default /var/tmp/segd-edge-bench).
Bind errors stop the run at once. Non-2xx, socket errors, truncated or wrong bodies, and more
than one upstream request per object are recorded, the servers' logs are kept in the results
dir (failures/), and the run exits 1 after writing raw.csv and summary.md.
"""
import argparse
import asyncio
import collections
import concurrent.futures
import csv
import datetime
import email.utils
import hashlib
import http.client
import json
import os
import random
import re
import resource
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
CLK = os.sysconf("SC_CLK_TCK")
UP_PORT, SEGD_PORT, NGINX_PORT, SEGD_ADMIN = 21070, 21080, 21081, 21090


def set_ports(base):
    """Moves every port (--port-base): the paced upstream on base, segd on base + 10, nginx on
    + 11, segd's admin on + 20; for machines where others run servers."""
    global UP_PORT, SEGD_PORT, NGINX_PORT, SEGD_ADMIN
    if not 1024 < base <= 32767 - 20:
        sys.exit(f"edge-bench: --port-base {base}: give a port between 1025 and {32767 - 20}")
    UP_PORT, SEGD_PORT, NGINX_PORT, SEGD_ADMIN = base, base + 10, base + 11, base + 20
SIZE = 200 * 1024
SERVER_CPU, CLIENT_CPU = "0", "1"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS


def log(msg):
    print(f"edge-bench: {msg}", flush=True)


def die(msg):
    print(f"edge-bench: FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------------
# Objects: 200 KiB each, the same random base with the path's hash at both ends.

_BASE = random.Random(20261128).randbytes(SIZE)


def body_for(path):
    tag = hashlib.sha256(path.encode()).digest()
    return tag + _BASE[len(tag):SIZE - len(tag)] + tag


def etag_for(path):
    return '"' + hashlib.sha256(path.encode()).hexdigest()[:16] + '"'


# ---------------------------------------------------------------------------------------------
# The upstream (run as `edge_vs_nginx.py upstream ...`, its own process)

class Upstream:
    def __init__(self, latency, rate, chunk=64 * 1024):
        self.latency, self.rate, self.chunk = latency, rate, chunk
        self.counts = collections.Counter()
        self.arrived = {}  # path -> wall time its first request's head arrived
        self.answered = {}  # path -> wall time the first response head was written
        self.conns = 0
        self.next_t = 0.0
        self.last_modified = email.utils.formatdate(time.time() - 86400, usegmt=True)

    async def paced(self, writer, data):
        """Writes `data` in chunks, all responses together at most `rate` bytes/s."""
        loop = asyncio.get_running_loop()
        for off in range(0, len(data), self.chunk):
            piece = data[off:off + self.chunk]
            if self.rate > 0:
                now = loop.time()
                t = max(now, self.next_t)
                self.next_t = t + len(piece) / self.rate
                if t > now:
                    await asyncio.sleep(t - now)
            writer.write(piece)
            await writer.drain()

    def stats(self, prefix):
        sel = {p: n for p, n in self.counts.items() if p.startswith(prefix)}
        return dict(requests=sum(sel.values()), paths=len(sel), max_per_path=max(sel.values(), default=0),
                    conns=self.conns, first_arrival=min((self.arrived[p] for p in sel), default=None),
                    first_answer=min((self.answered[p] for p in sel if p in self.answered), default=None))

    async def handle(self, reader, writer):
        self.conns += 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target, _ = line.split(" ", 2)
                url = urllib.parse.urlsplit(target)
                path = url.path
                close = b"\r\nconnection: close" in head.lower()
                if path == "/__stats":
                    prefix = urllib.parse.parse_qs(url.query).get("prefix", [""])[0]
                    body = json.dumps(self.stats(prefix)).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                self.counts[path] += 1
                self.arrived.setdefault(path, time.time())
                await asyncio.sleep(self.latency)
                if method not in ("GET", "HEAD") or not path.startswith("/vod/") or not path.endswith(".ts"):
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                hdr = ("HTTP/1.1 200 OK\r\n"
                       f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
                       "Content-Type: video/mp2t\r\n"
                       f"Content-Length: {SIZE}\r\n"
                       f"ETag: {etag_for(path)}\r\n"
                       f"Last-Modified: {self.last_modified}\r\n"
                       f"{'Connection: close' + chr(13) + chr(10) if close else ''}"
                       "\r\n").encode()
                self.answered.setdefault(path, time.time())
                await self.paced(writer, hdr if method == "HEAD" else hdr + body_for(path))
                if close:
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()


def upstream_main(argv):
    ap = argparse.ArgumentParser(prog="edge_vs_nginx.py upstream")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--rate-mbps", type=float, default=125, help="MB/s for all bodies together (0: unpaced)")
    args = ap.parse_args(argv)
    raise_nofile()
    up = Upstream(args.latency_ms / 1000, args.rate_mbps * 1e6)

    async def serve():
        srv = await asyncio.start_server(up.handle, "127.0.0.1", args.port, backlog=4096, reuse_address=True)
        print("upstream: listening", flush=True)
        async with srv:
            await srv.serve_forever()

    asyncio.run(serve())


# ---------------------------------------------------------------------------------------------
# Process helpers

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


def cpu_busy_ms(cpu):
    """Busy time of one CPU so far (/proc/stat: all but idle and iowait; steal included), in ms."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK * 1000
    return float("nan")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, proc, logpath):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"process on port {port} exited at start (bind error?): {open(logpath, errors='replace').read()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"nothing listening on {port}: {open(logpath, errors='replace').read()[-3000:]}")


def get(port, path, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"User-Agent": "edge-bench"})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def upstream_stats(prefix):
    st, _, body = get(UP_PORT, "/__stats?" + urllib.parse.urlencode(dict(prefix=prefix)))
    if st != 200:
        die(f"upstream stats: {st}")
    return json.loads(body)


class Server:
    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Segd(Server):
    name = "segd"
    @property
    def port(self):
        return SEGD_PORT  # read when used: --port-base moves it after the class is made

    def __init__(self, binary, run, cache_dir, access_log):
        self.binary, self.run, self.cache_dir, self.access_log = binary, run, cache_dir, access_log

    def start(self):
        vol = os.path.join(self.run, "segd-volume")
        os.makedirs(vol, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.access = os.path.join(self.run, "segd-access.log") if self.access_log else None
        cfg = os.path.join(self.run, "segd.toml")
        with open(cfg, "w") as f:
            f.write(f"""[server]
listen = ["127.0.0.1:{SEGD_PORT}"]
workers = 1
[admin]
listen = "127.0.0.1:{SEGD_ADMIN}"
[[volumes]]
name = "edge"
path = "{vol}"
[cache]
max_bytes = "1GiB"
open_files = 10000
[log]
access = "{self.access if self.access else 'off'}"
format = "json"
level = "warn"
[pull]
cache_path = "{self.cache_dir}"
max_bytes = "8GiB"
negative_ttl = "5s"
stale_if_error = "1h"
connect_timeout = "2s"
first_byte_timeout = "10s"
idle_timeout = "10s"
[[pull.upstreams]]
name = "origin"
url = "http://127.0.0.1:{UP_PORT}"
prefixes = ["/vod/"]
""")
        self.log = os.path.join(self.run, "segd.stderr")
        cmd = ["taskset", "-c", SERVER_CPU, self.binary, "serve", "--config", cfg]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), preexec_fn=raise_nofile)
        wait_port(SEGD_PORT, self.proc, self.log)
        wait_port(SEGD_ADMIN, self.proc, self.log)

    def pids(self):
        return [self.proc.pid]

    def pull_counts(self):
        st, _, body = get(SEGD_ADMIN, "/metrics")
        out = collections.Counter()
        for m in re.finditer(r'^segd_pull_requests_total\{result="(\w+)"\} (\d+)', body.decode(), re.M):
            out[m.group(1)] = int(m.group(2))
        return out

    def logs(self):
        return [p for p in (self.log, self.access) if p]


NGINX_CONF = """
user root;
worker_processes 1;
worker_cpu_affinity 01;
pid @RUN@/nginx.pid;
error_log @RUN@/nginx-error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 16384; multi_accept on; }
thread_pool default threads=32 max_queue=65536;
http {
    default_type application/octet-stream;
    log_format edge '$request_uri $status $upstream_cache_status $body_bytes_sent $request_time $upstream_response_time';
    @ACCESS@
    client_body_temp_path @RUN@/nginx-body;
    proxy_temp_path @RUN@/nginx-proxy-temp;
    fastcgi_temp_path @RUN@/nginx-fastcgi;
    uwsgi_temp_path @RUN@/nginx-uwsgi;
    scgi_temp_path @RUN@/nginx-scgi;
    sendfile on;
    sendfile_max_chunk 2m;
    tcp_nopush on;
    tcp_nodelay on;
    aio threads;
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 10s;
    open_file_cache_min_uses 1;
    open_file_cache_errors on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    proxy_cache_path @CACHE@ levels=1:2 keys_zone=edge:64m max_size=8g inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:@UPPORT@;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:@PORT@ reuseport backlog=4096;
        location /vod/ {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_key $uri;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_valid 200 1h;
            proxy_buffers 16 16k;
            add_header X-Cache-Status $upstream_cache_status;
        }
    }
}
"""


class Nginx(Server):
    name = "nginx"
    @property
    def port(self):
        return NGINX_PORT  # read when used: --port-base moves it after the class is made

    def __init__(self, run, cache_dir, access_log):
        self.run, self.cache_dir, self.access_log = run, cache_dir, access_log

    def start(self):
        os.makedirs(self.cache_dir, exist_ok=True)
        self.access = os.path.join(self.run, "nginx-access.log") if self.access_log else None
        conf = (NGINX_CONF.replace("@RUN@", self.run).replace("@CACHE@", self.cache_dir)
                .replace("@UPPORT@", str(UP_PORT)).replace("@PORT@", str(NGINX_PORT))
                .replace("@ACCESS@", f"access_log {self.access} edge;" if self.access else "access_log off;"))
        path = os.path.join(self.run, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.log = os.path.join(self.run, "nginx.stderr")
        cmd = ["taskset", "-c", SERVER_CPU, "nginx", "-c", path, "-p", self.run, "-e", os.path.join(self.run, "nginx-error.log"), "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), preexec_fn=raise_nofile)
        wait_port(NGINX_PORT, self.proc, self.log)

    def pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid] + [int(p) for p in out]

    def logs(self):
        return [p for p in (self.log, os.path.join(self.run, "nginx-error.log"), self.access) if p]


# ---------------------------------------------------------------------------------------------
# Clients

def pct(vals, p):
    """Nearest-rank percentile."""
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))]


def stampede(port, path, n, timeout=30):
    """n connections, accepted first, then one GET each for `path`, sent back to back. Returns
    per-connection (ttfb_ms kernel timestamp, ttfb_ms user timestamp, status, complete, exact)."""
    expected = body_for(path)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        socks.append(s)
    time.sleep(0.3)  # let the server accept them all before the burst
    req = f"GET {path} HTTP/1.1\r\nHost: edge\r\nUser-Agent: edge-bench-stampede\r\n\r\n".encode()
    sel = selectors.EpollSelector()
    st = {}
    for s in socks:
        t = time.time()
        s.send(req)
        st[s] = dict(sent=t, first_k=None, first_u=None, buf=bytearray(), status=None, cl=None, hlen=None, done=False, closed=False)
        sel.register(s, selectors.EVENT_READ)
    left = n
    deadline = time.time() + timeout
    cmsg_space = socket.CMSG_SPACE(16)
    while left and time.time() < deadline:
        events = sel.select(timeout=1)
        now = time.time()
        for key, _ in events:
            s = key.fileobj
            x = st[s]
            try:
                data, anc, _, _ = s.recvmsg(65536, cmsg_space)
            except BlockingIOError:
                continue
            except OSError:
                data, anc = b"", []
            if x["first_u"] is None and data:
                x["first_u"] = now
                for lvl, typ, cd in anc:
                    if lvl == socket.SOL_SOCKET and typ == SCM_TIMESTAMPNS and len(cd) >= 16:
                        sec, nsec = struct.unpack("qq", cd[:16])
                        x["first_k"] = sec + nsec / 1e9
            if not data:
                x["closed"] = True
                sel.unregister(s)
                left -= 1
                continue
            x["buf"] += data
            if x["hlen"] is None:
                i = x["buf"].find(b"\r\n\r\n")
                if i >= 0:
                    head = bytes(x["buf"][:i]).decode("latin-1")
                    x["hlen"] = i + 4
                    x["status"] = int(head.split(" ", 2)[1])
                    m = re.search(r"\r\ncontent-length:\s*(\d+)", head, re.I)
                    x["cl"] = int(m.group(1)) if m else None
                    x["head"] = head
            if x["hlen"] is not None and x["cl"] is not None and len(x["buf"]) - x["hlen"] >= x["cl"]:
                x["done"] = True
                sel.unregister(s)
                left -= 1
    out = []
    for s in socks:
        x = st[s]
        body = bytes(x["buf"][x["hlen"]:]) if x["hlen"] is not None else b""
        out.append(dict(
            ttfb_k=(x["first_k"] - x["sent"]) * 1000 if x["first_k"] else float("nan"),
            ttfb_u=(x["first_u"] - x["sent"]) * 1000 if x["first_u"] else float("nan"),
            sent=x["sent"], status=x["status"], complete=x["done"], exact=x["done"] and body == expected,
            head=x.get("head", ""), got=len(body)))
        s.close()
    sel.close()
    return out


def fetch_many(port, paths, threads=16):
    """GETs each path (concurrently); returns the paths whose answer is not a byte-exact 200."""
    def one(p):
        try:
            st, h, body = get(port, p)
        except OSError as e:
            return (p, f"error {e}")
        if st != 200:
            return (p, f"status {st}")
        if body != body_for(p):
            return (p, f"body differs ({len(body)} bytes)")
        return None
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return [r for r in ex.map(one, paths) if r]


WRK_HOT_LUA = """
local paths = {}
for line in io.lines(os.getenv("EDGE_BENCH_PATHS")) do paths[#paths + 1] = line end
math.randomseed(tonumber(os.getenv("EDGE_BENCH_SEED") or "1"))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""

WRK_MISS_LUA = """
local prefix = os.getenv("EDGE_BENCH_PREFIX")
local n = 0
request = function() n = n + 1; return wrk.format("GET", prefix .. n .. ".ts") end
"""


def unit_ms(s):
    m = re.match(r"([\d.]+)(\w+)", s or "")
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def run_wrk(port, lua, conns, duration, env):
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "--latency",
           "-s", lua, f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env), preexec_fn=raise_nofile).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not m:
        die(f"cannot parse wrk output:\n{out}")
    reqs = int(m.group(1))
    secs = float(m.group(2)) * {"s": 1, "m": 60, "ms": 0.001}[m.group(3)]
    unit = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(5)]
    nbytes = float(m.group(4)) * unit
    decimals = len(m.group(4).split(".")[1]) if "." in m.group(4) else 0
    bytes_tol = 0.5 * 10 ** -decimals * unit  # wrk prints 2 decimals
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(requests=reqs, secs=secs, rps=reqs / secs, mbps=nbytes / secs / 1e6, bytes_per_req=nbytes / max(reqs, 1), bytes_total=nbytes, bytes_tol=bytes_tol,
                p50_ms=unit_ms(lat.get("50")), p99_ms=unit_ms(lat.get("99")),
                socket_errors=sum(int(x) for x in err.groups()) if err else 0,
                non2xx=int(non2xx.group(1)) if non2xx else 0, raw=out)


# ---------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        return upstream_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--segd", required=True)
    ap.add_argument("--out", help="results dir (default benches/results/<date>-<commit>-edge)")
    ap.add_argument("--workdir", default="/var/tmp/segd-edge-bench", help="both caches live here (one filesystem)")
    ap.add_argument("--scenarios", default="stampede,hits,misses")
    ap.add_argument("--stampede-rounds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--hot", type=int, default=100)
    ap.add_argument("--hit-conns", type=int, default=64)
    ap.add_argument("--miss-conns", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--rate-mbps", type=float, default=125)
    ap.add_argument("--port-base", type=int, default=UP_PORT,
                    help="the upstream's port; segd takes base + 10, nginx + 11, segd's admin + 20 (default %(default)s)")
    args = ap.parse_args()
    set_ports(args.port_base)
    raise_nofile()
    t_start = time.time()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip() or "nogit"
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True, text=True).stdout.strip())
    out = args.out or os.path.join(HERE, "results", f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d-%H%M')}-{commit}-edge")
    os.makedirs(out, exist_ok=True)
    for p in (UP_PORT, SEGD_PORT, NGINX_PORT, SEGD_ADMIN):
        if not port_free(p):
            die(f"port {p} is in use (bind would fail)")
    shutil.rmtree(args.workdir, ignore_errors=True)
    run = os.path.join(args.workdir, "run")
    os.makedirs(run)
    segd_cache, nginx_cache = os.path.join(args.workdir, "segd-cache"), os.path.join(args.workdir, "nginx-cache")
    fs = {os.stat(args.workdir).st_dev}
    lua_hot, lua_miss = os.path.join(run, "hot.lua"), os.path.join(run, "miss.lua")
    with open(lua_hot, "w") as f:
        f.write(WRK_HOT_LUA)
    with open(lua_miss, "w") as f:
        f.write(WRK_MISS_LUA)

    rows, failures, notes = [], [], []
    load = {"start": loadavg()}
    nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    log(f"segd {commit}{' (dirty tree)' if dirty else ''}, {nginx_version}, load {load['start']}, results in {out}")

    up_log = os.path.join(run, "upstream.log")
    up = subprocess.Popen(["taskset", "-c", CLIENT_CPU, sys.executable, os.path.abspath(__file__), "upstream", "--port", str(UP_PORT),
                           "--latency-ms", str(args.latency_ms), "--rate-mbps", str(args.rate_mbps)],
                          stdout=open(up_log, "w"), stderr=subprocess.STDOUT)
    wait_port(UP_PORT, up, up_log)
    servers_up = []

    def keep_logs(srv, tag, what):
        d = os.path.join(out, "failures", tag)
        os.makedirs(d, exist_ok=True)
        for p in srv.logs():
            if os.path.exists(p):
                shutil.copy(p, os.path.join(d, os.path.basename(p)))
        failures.append(f"{tag}: {what} (logs in failures/{tag}/)")
        log(f"!! {tag}: {what}")

    def fresh(path):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)

    try:
        # The upstream's own time to first byte (what "upstream latency" means below).
        direct = stampede(UP_PORT, "/vod/direct/probe.ts", 1)
        base = []
        for i in range(5):
            base += [r["ttfb_k"] for r in stampede(UP_PORT, f"/vod/direct/p{i}.ts", 1)]
        up_ttfb = statistics.median(base)
        log(f"upstream alone: time to first byte {up_ttfb:.1f} ms (median of 5), {direct[0]['got']} bytes")

        for sname in args.scenarios.split(","):
            load[f"{sname} before"] = loadavg()
            if sname == "stampede":
                log(f"== stampede: {args.clients} clients, one cold {SIZE // 1024} KiB object per round, {args.stampede_rounds} rounds per server")
                fresh(segd_cache)
                fresh(nginx_cache)
                segd, ngx = Segd(args.segd, run, segd_cache, True), Nginx(run, nginx_cache, True)
                for srv in (segd, ngx):
                    srv.start()
                    servers_up.append(srv)
                fs |= {os.stat(segd_cache).st_dev, os.stat(nginx_cache).st_dev}
                for r in range(args.stampede_rounds):
                    for srv in ((segd, ngx) if r % 2 == 0 else (ngx, segd)):
                        path = f"/vod/stampede/{srv.name}/r{r + 1}.ts"
                        before = segd.pull_counts() if srv is segd else None
                        c0, q0 = proc_cpu(srv.pids()), cpu_busy_ms(SERVER_CPU)
                        res = stampede(srv.port, path, args.clients)
                        c1, q1 = proc_cpu(srv.pids()), cpu_busy_ms(SERVER_CPU)
                        time.sleep(0.6)  # segd flushes its access log every 200 ms
                        ups = upstream_stats(path)
                        ttfb = [x["ttfb_k"] for x in res]
                        if any(t != t for t in ttfb):
                            ttfb = [x["ttfb_u"] for x in res]
                            notes.append("stampede: no kernel receive timestamps; user-space timestamps used")
                        ok = sum(1 for x in res if x["status"] == 200 and x["exact"])
                        bad = [x for x in res if not (x["status"] == 200 and x["exact"])]
                        if srv is segd:
                            after = segd.pull_counts()
                            cache = {k: after[k] - before[k] for k in after if after[k] - before[k]}
                        else:
                            cache = collections.Counter(l.split()[2] for l in open(ngx.access) if l.split()[0] == path)
                        row = dict(scenario="stampede", round=r + 1, server=srv.name, requests=args.clients, ok=ok,
                                   errors=len(bad), upstream_requests=ups["requests"],
                                   ttfb_min_ms=min(ttfb), ttfb_p50_ms=pct(ttfb, 50), ttfb_p90_ms=pct(ttfb, 90),
                                   ttfb_p99_ms=pct(ttfb, 99), ttfb_max_ms=max(ttfb),
                                   ttfb_user_p99_ms=pct([x["ttfb_u"] for x in res], 99),
                                   upstream_asked_ms=(ups["first_arrival"] - min(x["sent"] for x in res)) * 1000 if ups["first_arrival"] else float("nan"),
                                   upstream_answered_ms=(ups["first_answer"] - min(x["sent"] for x in res)) * 1000 if ups["first_answer"] else float("nan"),
                                   cpu_s=c1 - c0, cpu0_other_ms=max(0.0, (q1 - q0) - (c1 - c0) * 1000),
                                   cpu_us_per_req=(c1 - c0) / args.clients * 1e6,
                                   cache_results=" ".join(f"{k}={v}" for k, v in sorted(cache.items())), load1=loadavg().split()[0])
                        rows.append(row)
                        log(f"  round {r + 1} {srv.name:5}: upstream requests {ups['requests']}, ok {ok}/{args.clients}, "
                            f"upstream asked/answered after {row['upstream_asked_ms']:.1f}/{row['upstream_answered_ms']:.1f} ms, CPU 0 busy with others {row['cpu0_other_ms']:.0f} ms, ttfb min {row['ttfb_min_ms']:.1f} p50 {row['ttfb_p50_ms']:.1f} p99 {row['ttfb_p99_ms']:.1f} max {row['ttfb_max_ms']:.1f} ms, [{row['cache_results']}]")
                        if bad:
                            ex = bad[0]
                            keep_logs(srv, f"stampede-r{r + 1}-{srv.name}", f"{len(bad)} of {args.clients} responses not a byte-exact 200 "
                                      f"(first: status {ex['status']}, complete {ex['complete']}, {ex['got']} body bytes, head {ex['head'][:300]!r})")
                        if ups["requests"] != 1:
                            keep_logs(srv, f"stampede-r{r + 1}-{srv.name}", f"{ups['requests']} upstream requests for one object")
                for srv in (segd, ngx):
                    srv.stop()
                    servers_up.remove(srv)
                    for p in srv.logs():
                        if p and os.path.exists(p) and os.path.getsize(p) and ("stderr" in p or "error" in p):
                            txt = open(p, errors="replace").read().strip()
                            if txt:
                                notes.append(f"stampede: {srv.name} {os.path.basename(p)}: {txt[-600:]}")

            elif sname == "hits":
                log(f"== hits: {args.hot} cached objects, wrk -c{args.hit_conns} {args.duration} s, {args.rounds} rounds")
                for r in range(args.rounds):
                    order = ("segd", "nginx") if r % 2 == 0 else ("nginx", "segd")
                    for name in order:
                        cache = segd_cache if name == "segd" else nginx_cache
                        fresh(cache)
                        srv = Segd(args.segd, run, cache, False) if name == "segd" else Nginx(run, cache, False)
                        srv.start()
                        servers_up.append(srv)
                        try:
                            prefix = f"/vod/hot/r{r + 1}-{name}/"
                            hot = [f"{prefix}seg_{i:04d}.ts" for i in range(args.hot)]
                            bad = fetch_many(srv.port, hot)
                            bad += fetch_many(srv.port, hot)
                            paths_file = os.path.join(run, "hot.txt")
                            with open(paths_file, "w") as f:
                                f.write("\n".join(hot) + "\n")
                            env = dict(EDGE_BENCH_PATHS=paths_file, EDGE_BENCH_SEED=str(r + 1))
                            warm = run_wrk(srv.port, lua_hot, args.hit_conns, 2, env)
                            ups0 = upstream_stats(prefix)
                            c0, q0 = proc_cpu(srv.pids()), cpu_busy_ms(SERVER_CPU)
                            res = run_wrk(srv.port, lua_hot, args.hit_conns, args.duration, env)
                            c1, q1 = proc_cpu(srv.pids()), cpu_busy_ms(SERVER_CPU)
                            ups1 = upstream_stats(prefix)
                        finally:
                            srv.stop()
                            servers_up.remove(srv)
                        row = dict(scenario="hits", round=r + 1, server=name, requests=res["requests"], rps=res["rps"], mbps=res["mbps"],
                                   p50_ms=res["p50_ms"], p99_ms=res["p99_ms"], cpu_us_per_req=(c1 - c0) / max(res["requests"], 1) * 1e6,
                                   bytes_per_req=res["bytes_per_req"], errors=res["socket_errors"] + res["non2xx"] + warm["socket_errors"] + warm["non2xx"] + len(bad),
                                   upstream_requests=ups1["requests"], cpu0_other_ms=max(0.0, (q1 - q0) - (c1 - c0) * 1000), load1=loadavg().split()[0])
                        rows.append(row)
                        log(f"  round {r + 1} {name:5}: {row['rps']:8.0f} req/s {row['mbps']:7.0f} MB/s  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                            f"cpu {row['cpu_us_per_req']:6.2f} us/req  cpu0-others {row['cpu0_other_ms']:5.0f} ms  upstream requests {ups1['requests']} for {args.hot} objects  errors {row['errors']}")
                        what = []
                        if bad:
                            what.append(f"{len(bad)} fetches not byte-exact 200 (first: {bad[0]})")
                        if res["non2xx"] or warm["non2xx"] or res["socket_errors"] or warm["socket_errors"]:
                            what.append(f"wrk: non-2xx {res['non2xx'] + warm['non2xx']}, socket errors {res['socket_errors'] + warm['socket_errors']}:\n{res['raw']}")
                        if ups0["requests"] != args.hot or ups1["requests"] != args.hot or ups1["max_per_path"] != 1:
                            what.append(f"upstream saw {ups1['requests']} requests ({ups0['requests']} before the measurement, max {ups1['max_per_path']} per path) for {args.hot} objects")
                        if not (SIZE * res["requests"] <= res["bytes_total"] + res["bytes_tol"] and res["bytes_total"] - res["bytes_tol"] < (SIZE + 1024) * (res["requests"] + args.hit_conns)):
                            what.append(f"{res['bytes_total']:.0f} bytes read for {res['requests']} responses of {SIZE}")
                        if what:
                            keep_logs(srv, f"hits-r{r + 1}-{name}", "; ".join(what))
                        shutil.rmtree(cache, ignore_errors=True)

            elif sname == "misses":
                log(f"== misses: wrk -c{args.miss_conns} {args.duration} s, every request a distinct cold object, upstream paced to {args.rate_mbps:.0f} MB/s, {args.rounds} rounds")
                for r in range(args.rounds):
                    order = ("segd", "nginx") if r % 2 == 0 else ("nginx", "segd")
                    for name in order:
                        cache = segd_cache if name == "segd" else nginx_cache
                        fresh(cache)
                        os.sync()
                        srv = Segd(args.segd, run, cache, False) if name == "segd" else Nginx(run, cache, False)
                        srv.start()
                        servers_up.append(srv)
                        try:
                            prefix = f"/vod/miss/r{r + 1}-{name}/"
                            c0, q0 = proc_cpu(srv.pids()), cpu_busy_ms(SERVER_CPU)
                            res = run_wrk(srv.port, lua_miss, args.miss_conns, args.duration, dict(EDGE_BENCH_PREFIX=prefix))
                            c1, q1 = proc_cpu(srv.pids()), cpu_busy_ms(SERVER_CPU)
                            time.sleep(1.0)  # fills in flight when wrk stopped
                            ups = upstream_stats(prefix)
                            sample = [f"{prefix}{i}.ts" for i in random.Random(r).sample(range(1, res["requests"] + 1), min(20, res["requests"]))]
                            bad = fetch_many(srv.port, sample, threads=4)
                            ups2 = upstream_stats(prefix)
                        finally:
                            srv.stop()
                            servers_up.remove(srv)
                        row = dict(scenario="misses", round=r + 1, server=name, requests=res["requests"], rps=res["rps"], mbps=res["mbps"],
                                   p50_ms=res["p50_ms"], p99_ms=res["p99_ms"], cpu_us_per_req=(c1 - c0) / max(res["requests"], 1) * 1e6,
                                   bytes_per_req=res["bytes_per_req"], errors=res["socket_errors"] + res["non2xx"] + len(bad),
                                   upstream_requests=ups["requests"], upstream_max_per_path=ups["max_per_path"], cpu0_other_ms=max(0.0, (q1 - q0) - (c1 - c0) * 1000), load1=loadavg().split()[0])
                        rows.append(row)
                        log(f"  round {r + 1} {name:5}: {row['rps']:6.0f} objects/s {row['mbps']:6.1f} MB/s  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                            f"cpu {row['cpu_us_per_req']:6.1f} us/object  cpu0-others {row['cpu0_other_ms']:5.0f} ms  upstream requests {ups['requests']} ({ups['paths']} paths, max {ups['max_per_path']}/path) errors {row['errors']}")
                        what = []
                        if bad:
                            what.append(f"{len(bad)} of {len(sample)} re-fetched objects not byte-exact 200 (first: {bad[0]})")
                        if ups2["requests"] != ups["requests"]:
                            what.append(f"re-fetching {len(sample)} stored objects caused {ups2['requests'] - ups['requests']} upstream requests")
                        if res["non2xx"] or res["socket_errors"]:
                            what.append(f"wrk: non-2xx {res['non2xx']}, socket errors {res['socket_errors']}:\n{res['raw']}")
                        if ups["max_per_path"] > 1:
                            what.append(f"an object was requested {ups['max_per_path']} times upstream")
                        # wrk also counts the bytes of the responses in flight when it stops.
                        total, tol = res["bytes_total"], res["bytes_tol"]
                        if not (SIZE * res["requests"] <= total + tol and total - tol < (SIZE + 1024) * (res["requests"] + args.miss_conns)):
                            what.append(f"{total:.0f} bytes read for {res['requests']} responses of {SIZE}")
                        if what:
                            keep_logs(srv, f"misses-r{r + 1}-{name}", "; ".join(what))
                        shutil.rmtree(cache, ignore_errors=True)
            else:
                die(f"unknown scenario {sname}")
            load[f"{sname} after"] = loadavg()
    finally:
        for srv in servers_up:
            srv.stop()
        up.terminate()
        up.wait()

    load["end"] = loadavg()
    elapsed = time.time() - t_start
    keys = ["scenario", "round", "server", "requests", "ok", "errors", "upstream_requests", "upstream_max_per_path",
            "upstream_asked_ms", "upstream_answered_ms", "ttfb_min_ms", "ttfb_p50_ms", "ttfb_p90_ms", "ttfb_p99_ms", "ttfb_max_ms", "ttfb_user_p99_ms", "cache_results",
            "rps", "mbps", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu0_other_ms", "bytes_per_req", "load1"]
    with open(os.path.join(out, "raw.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})

    def sel(sc, server):
        return [r for r in rows if r["scenario"] == sc and r["server"] == server]

    def med(sc, server, key):
        vals = [r[key] for r in sel(sc, server) if r.get(key) == r.get(key) and r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    def ratio(a, b):
        return a / b if b else float("nan")

    L = [f"# segd pull tier vs nginx proxy_cache — {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", "",
         f"segd {commit}{' (uncommitted changes in the tree)' if dirty else ''}; {nginx_version}; `benches/edge_vs_nginx.py` "
         f"({elapsed:.0f} s). Upstream: Python asyncio HTTP/1.1 origin, {SIZE // 1024} KiB objects, {args.latency_ms:.0f} ms before each "
         f"response head (measured alone: {up_ttfb:.1f} ms to first byte), bodies paced together to {args.rate_mbps:.0f} MB/s (~1 Gbit/s). "
         f"Servers pinned to CPU 0 with one worker each; clients, wrk and the upstream on CPU 1. Both caches on one filesystem "
         f"({args.workdir}, {'same device' if len(fs) == 1 else 'DIFFERENT devices'}). CPU = utime+stime of the server's processes.", ""]
    if "stampede" in args.scenarios:
        goal = up_ttfb + 10
        L += [f"## 1. Stampede: {args.clients} clients, one cold object at once ({args.stampede_rounds} rounds each)", "",
              "Time to first byte (TTFB) of all clients, from each request's send to the kernel receive timestamp of its first "
              "response segment (the one request that went upstream included).", "",
              "| server | upstream requests per round | ok responses | TTFB p50 ms | TTFB p90 ms | TTFB p99 ms | TTFB max ms | server CPU µs/req | rounds with p99 ≤ goal |",
              "|---|---|---|---|---|---|---|---|---|"]
        for s in ("segd", "nginx"):
            rs = sel("stampede", s)
            if rs:
                L.append(f"| {s} | {', '.join(str(r['upstream_requests']) for r in rs)} | {sum(r['ok'] for r in rs)}/{sum(r['requests'] for r in rs)} | "
                         f"{med('stampede', s, 'ttfb_p50_ms'):.1f} | {med('stampede', s, 'ttfb_p90_ms'):.1f} | {med('stampede', s, 'ttfb_p99_ms'):.1f} | "
                         f"{max(r['ttfb_max_ms'] for r in rs):.1f} | {sum(r['cpu_s'] for r in rs) / sum(r['requests'] for r in rs) * 1e6:.0f} | "
                         f"{sum(1 for r in rs if r['ttfb_p99_ms'] <= goal)}/{len(rs)} |")
        sp99 = med("stampede", "segd", "ttfb_p99_ms")
        L += ["", f"TTFB columns: median over rounds (max: worst single client of all rounds); CPU: all rounds together (clock ticks of 10 ms, "
              f"so ±{0.01 / args.clients * 1e6:.0f} µs per round). Goal for segd: p99 ≤ upstream latency + 10 ms = {goal:.1f} ms "
              f"(upstream measured alone: {up_ttfb:.1f} ms). segd median p99 {sp99:.1f} ms → **{'met' if sp99 <= goal else 'NOT met'}** "
              f"(median of rounds). nginx's proxy_cache_lock waiters poll every 500 ms.", "",
              "Per round (upstream asked/answered: when the upstream got the request / wrote its head, from the burst; "
              "CPU 0 busy with others: busy time of the server's CPU minus the server's own CPU time over the round — "
              "other jobs on the shared machine, interrupts/softirq (loopback traffic included) and hypervisor steal):", "",
              "| round | server | upstream asked ms | upstream answered ms | TTFB min | p50 | p99 | max ms | CPU 0 busy with others ms | cache results |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel("stampede", "segd") + sel("stampede", "nginx"):
            L.append(f"| {r['round']} | {r['server']} | {r['upstream_asked_ms']:.1f} | {r['upstream_answered_ms']:.1f} | {r['ttfb_min_ms']:.1f} | "
                     f"{r['ttfb_p50_ms']:.1f} | {r['ttfb_p99_ms']:.1f} | {r['ttfb_max_ms']:.1f} | {r['cpu0_other_ms']:.0f} | {r['cache_results']} |")
        L.append("")
    for sc, title, unit in (("hits", f"## 2. Hits: {args.hot} cached objects, wrk -c{args.hit_conns}, {args.duration} s, {args.rounds} rounds", "req"),
                            ("misses", f"## 3. Misses: every request a distinct cold object, wrk -c{args.miss_conns}, {args.duration} s, upstream at {args.rate_mbps:.0f} MB/s, {args.rounds} rounds", "object")):
        if sc not in args.scenarios:
            continue
        L += [title, "", f"| server | {unit}s/s | MB/s | p50 ms | p99 ms | CPU µs/{unit} (per round) | CPU µs/{unit} median | {'upstream requests / objects completed' if unit == 'object' else 'upstream requests / objects pulled'} | CPU 0 busy with others ms (per round) | errors |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for s in ("segd", "nginx"):
            rs = sel(sc, s)
            if rs:
                L.append(f"| {s} | {med(sc, s, 'rps'):.0f} | {med(sc, s, 'mbps'):.0f} | {med(sc, s, 'p50_ms'):.2f} | {med(sc, s, 'p99_ms'):.2f} | "
                         f"{', '.join('%.1f' % r['cpu_us_per_req'] for r in rs)} | {med(sc, s, 'cpu_us_per_req'):.1f} | "
                         f"{sum(r['upstream_requests'] for r in rs)} / {sum(r['requests'] for r in rs) if sc == 'misses' else args.hot * len(rs)} | "
                         f"{', '.join('%.0f' % r['cpu0_other_ms'] for r in rs)} | {sum(r['errors'] for r in rs)} |")
        rr = ratio(med(sc, "segd", "cpu_us_per_req"), med(sc, "nginx", "cpu_us_per_req"))
        per_round = [ratio(a["cpu_us_per_req"], b["cpu_us_per_req"]) for a, b in zip(sel(sc, "segd"), sel(sc, "nginx"))]
        L += ["", f"**CPU/{unit} ratio segd/nginx: {rr:.2f}** (medians; per round {', '.join(f'{x:.2f}' for x in per_round)}); "
              f"{unit}s/s ratio {ratio(med(sc, 'segd', 'rps'), med(sc, 'nginx', 'rps')):.2f}." + (" Goal ≤ 1.0." if sc == "hits" else ""), ""]
    L += ["## Caveats", "",
          "- Shared 2-core VM: other jobs run beside the bench. Load average (1/5/15 min): " +
          "; ".join(f"{k}: {v}" for k, v in load.items()) + ". Per-round load in raw.csv (load1).",
          "- CPU per request is the stable figure; rates and latencies move with the neighbours. Client, wrk and upstream "
          "share CPU 1, so rates may be bounded by the load generator rather than the server.",
          "- Stampede TTFB uses SO_TIMESTAMPNS (kernel receive time of the first segment), so the Python client's own "
          "scheduling does not inflate it; send times are taken just before each send() in a tight loop.",
          "- Misses: wrk stops after the duration with up to N requests in flight; CPU is measured over wrk's run and "
          "divided by completed objects. The upstream counts requests that wrk never saw completed, so upstream "
          "requests can exceed completed objects by up to the connection count.",
          "- nginx serves hits from its cache files (with its own header in front of the body) with sendfile; "
          "segd from its cache directory through its usual volume path (hot-body cache, sendfile).",
          "- Cache layout: nginx hashes its files into levels=1:2 directories; segd mirrors URL paths, and the misses "
          "scenario puts all of a round's objects (~5,000) in one directory, more than an HLS rendition directory holds.",
          "- segd's CPU includes all its threads (the blocking pool that reads and writes cache files); nginx's includes "
          "its worker, thread pool, cache manager and loader.", ""]
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    L += ["## Failures", ""] + ([f"- {f}" for f in failures] if failures else ["None: every response a 200 of the right length "
                                                                               "(byte-exact where checked), one upstream request per object."]) + [""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L))
    print("\n".join(L))
    shutil.rmtree(args.workdir, ignore_errors=True)
    log(f"results in {out} ({elapsed:.0f} s)")
    if failures:
        die(f"{len(failures)} problem(s):\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
