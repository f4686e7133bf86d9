#!/usr/bin/env python3
"""Upload benchmark: segd's ingest (docs/ingest.md) against nginx's WebDAV PUT, in one run.

    python3 benches/ingest.py [--segd target/release/segd] [--servers segd-nofsync,segd-inline,nginx,segd-fsync]
                              [--rounds 3] [--uploads 5000 | --duration S] [--conns 16] [--fs fresh|host]

Four servers, each started fresh for every round, their order rotated from round to round:
  segd-nofsync  segd with `[ingest] fsync = false`: the same durability as nginx (no fsync);
                the equal-footing comparison.
  segd-inline   the same with `inline_writes = true`: each upload's writes made on the worker that
                receives it, no hand-off to a writer thread (docs/tuning.md says when to choose it).
  segd-fsync    segd with `[ingest] fsync = true` (segd's default): fsync of the file and of its
                directory before the 201; more work than nginx does, reported separately.
  nginx         nginx (nginx-light, ngx_http_dav_module) with `dav_methods PUT DELETE`; writes the
                body to client_body_temp_path on the same filesystem and renames it; never fsyncs.
Load: wrk, one thread, N keep-alive connections, each request a PUT of a 200,000-byte body of
random bytes (one of a few fixed bodies) to a distinct path under /live/ (--prefix), for about --uploads
uploads (the duration is derived from the warm-up's rate) or a fixed --duration. Both roots (and
nginx's body temp dir) are on one filesystem: by default a fresh ext4 in a loop image under
/var/tmp (--fs fresh, needs root), or /var/tmp itself (--fs host).
Before each measured run: `sync`, caches dropped, memory compacted, then memory touched and freed
(--prewarm-gib) so the run's page cache lands on pages the VM's host backs (see settle_memory:
otherwise the host's first-touch cost is most of an upload's CPU and moves from run to run).
The server runs on one CPU (one worker), wrk on another (taskset). Measured per run: uploads/s,
MB/s, latency, and server CPU time (utime+stime from /proc/PID/stat of every server process, so
nginx's master and worker) per uploaded MB (10^6 bytes). Every acknowledged upload is checked on
disk (each one by its Location header, sizes of all, contents of a sample). Any non-2xx answer, socket error, bind error or missing
file stops the run loudly. Writes raw.csv and summary.md under
benches/results/<date>-<commit>-ingest/ (or --out).
"""
import argparse
import csv
import datetime
import hashlib
import hmac
import http.client
import math
import mmap
import os
import random
import re
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
SEGD_PORT, SEGD_ADMIN, NGINX_PORT = 18180, 18190, 18181
# madvise(2): fault every page in, writable (Linux 5.14; not in Python's mmap module before 3.13).
MADV_POPULATE_WRITE = 23
DEFAULT_SERVERS = ["segd-nofsync", "segd-inline", "nginx", "segd-fsync"]
ALL_SERVERS = DEFAULT_SERVERS + ["segd-b"]
# The URL prefix uploads go to (--prefix). /live/ is also a live prefix for segd by default
# (`cache_control.live_prefixes`): a media segment uploaded there can be read while it is written
# (each received chunk is handed to waiting readers from memory, and inotify watches the
# directories for local packagers). Both prefixes write the file in batches of 256 KiB.
PREFIX = "/live/"

NO_INGEST = (
    "this segd build has no ingest yet (docs/ingest.md, issue 12): {detail}\n"
    "  Build segd from a commit where `[ingest]` and PUT are implemented and pass it with --segd,\n"
    "  or run the nginx half alone with --servers nginx.")


def die(msg):
    print(f"ingest: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"ingest: {msg}", flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def proc_cpu(pids):
    """(utime, stime) in seconds and minor page faults, summed over pids (each /proc/PID/stat
    covers all its threads, io_uring workers included). A minor fault is a page of memory the
    server touched for the first time since it was mapped (a fresh buffer); in a VM whose host
    takes freed memory back, each one can cost a trip to the host."""
    user = system = 0.0
    faults = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            faults += int(fields[7])
            user += int(fields[11]) / CLK
            system += int(fields[12]) / CLK
        except OSError:
            pass
    return user, system, faults


def thread_status(pids):
    """(tid, fields of /proc/PID/task/TID/status) for every thread of pids that is still there."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    yield tid, dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            except OSError:
                continue


def proc_switches(pids):
    """(voluntary, involuntary) context switches so far, summed over every thread of pids (a
    thread that exits during the run takes its count with it)."""
    vol = invol = 0
    for _, st in thread_status(pids):
        vol += int(st.get("voluntary_ctxt_switches", 0))
        invol += int(st.get("nonvoluntary_ctxt_switches", 0))
    return vol, invol


def stray_threads(pids, cpu):
    """Threads of the server allowed on CPUs other than its own (an I/O thread pool that does not
    inherit the affinity would borrow the load generator's CPU)."""
    stray = []
    for tid, st in thread_status(pids):
        if st.get("Cpus_allowed_list", "").strip() != str(cpu):
            stray.append(f"{st.get('Name', tid).strip()}[{tid}] on {st.get('Cpus_allowed_list', '?').strip()}")
    return stray


def machine_busy():
    """(busy, kernel) CPU seconds so far: busy = the whole machine (all CPUs, /proc/stat, minus idle
    and iowait); kernel = interrupts and softirqs plus every kernel thread (writeback, loop, jbd2...)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy, irq = (sum(v) - v[3] - v[4]) / CLK, (v[5] + v[6]) / CLK
    kthreads = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & 0x00200000:  # PF_KTHREAD
            kthreads[pid] = (int(fields[11]) + int(fields[12])) / CLK
    return busy, irq, kthreads


def other_cpu(m0, m1, server, client):
    """CPU seconds between two machine_busy() samples not spent by the server or wrk, split into
    the kernel's (mostly caused by the run: writeback, loop device, softirqs) and other jobs'."""
    kernel = (m1[1] - m0[1]) + sum(t - m0[2].get(pid, 0.0) for pid, t in m1[2].items())
    return kernel, (m1[0] - m0[0]) - server - client - kernel


def settle_memory(prewarm_gib):
    """Before each measured run: drops clean caches (page cache, dentries, inodes, reclaimable
    slab) and compacts free memory, so every run takes its page-cache pages from the same state
    whatever ran before (as `benches/vs_nginx/run.py` does before `large`), then touches and frees
    `prewarm_gib` GiB of memory, so the run's page cache lands on pages the machine already
    backs. Returns what could not be done, or None. Needs root.

    Why the touch: in a VM whose host takes freed memory back (virtio-balloon free page
    reporting, on here), the first write to a page the host took costs a trip to the host: about
    10 µs a 4 KiB page, against about 2 µs for a page touched before (measured with this very
    step, MADV_POPULATE_WRITE of 4 GiB twice). A 200,000-byte upload fills 49 page-cache pages,
    so whether they were taken back decides most of an upload's CPU (150 against 500 µs), and
    how many were depends on what the host reclaimed since the last run, not on the server.
    Freed pages go to the head of the kernel's free lists (reported ones to the tail), so the
    run takes the touched ones first: on bare metal, where there is no host, every page is such
    a page."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        with open("/proc/sys/vm/compact_memory", "w") as f:
            f.write("1\n")
    except OSError as e:
        return str(e)
    if prewarm_gib > 0:
        try:
            m = mmap.mmap(-1, prewarm_gib << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                m.madvise(MADV_POPULATE_WRITE)
            finally:
                m.close()
        except (OSError, ValueError) as e:
            return f"cannot touch {prewarm_gib} GiB before the run: {e}"
    return None


def mem_available_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) >> 20
    return 0


def wait_quiet(max_wait, threshold=0.1):
    """Waits (up to max_wait seconds) for a second in which other jobs keep the machine busy less
    than `threshold` CPUs' worth: on a shared machine, other people's builds inflate CPU/MB."""
    deadline = time.time() + max_wait
    while True:
        m0 = machine_busy()
        time.sleep(1)
        load = other_cpu(m0, machine_busy(), 0.0, 0.0)[1]  # user processes, not kernel writeback
        if load < threshold or time.time() >= deadline:
            return load


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


def check_port_free(port):
    """A leftover server on our port would be measured instead of ours: refuse to start."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        die(f"port {port} is already in use ({e}); stop whatever listens there")
    finally:
        s.close()


def wait_port(port, proc, logfile):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"server exited at start (exit {proc.returncode}; bind error?): {tail(logfile)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"nothing listening on {port}: {tail(logfile)}")


def tail(path, n=2000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


def mint_token(secret_hex, acl, exp):
    """EdgeAuth v2 ACL token, field order as src/auth/edgeauth.rs `sign` (no st, ip, id, data, salt):
    HMAC-SHA256 keyed with the hex-decoded secret over `exp=<t>~acl=<acl>`."""
    signed = f"exp={exp}~acl={acl}"
    mac = hmac.new(bytes.fromhex(secret_hex), signed.encode(), hashlib.sha256).hexdigest()
    return f"{signed}~hmac={mac}"


def encode_token(token):
    """As src/auth/mod.rs `encode_token` (what `segd sign` prints): all but unreserved and `~*!` escaped."""
    return urllib.parse.quote(token, safe="~*!")


class Server:
    def stop(self):
        if self.proc.poll() is not None:
            die(f"{self.name} died during the run (exit {self.proc.returncode}): {tail(self.log)}")
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Segd(Server):
    @property
    def port(self):
        return SEGD_PORT

    def __init__(self, binary, root, run, fsync, cpu, secret, ingest_section=True, server_extra="", ingest_extra=""):
        self.binary, self.root, self.run, self.fsync, self.cpu = binary, root, run, fsync, cpu
        self.secret, self.ingest_section, self.server_extra = secret, ingest_section, server_extra
        self.ingest_extra = ingest_extra
        self.name = "segd-fsync" if fsync else "segd-nofsync"
        self.cfg = os.path.join(run, f"{self.name}.toml")
        self.log = os.path.join(run, f"{self.name}.log")

    def write_config(self):
        ingest = f"""[ingest]
prefixes = ["{PREFIX}"]
max_body_bytes = "512MiB"
fsync = {"true" if self.fsync else "false"}
{self.ingest_extra}[[ingest.keys]]
id = "bench"
secret = "{self.secret}"
""" if self.ingest_section else ""
        with open(self.cfg, "w") as f:
            f.write(f"""[server]
listen = ["127.0.0.1:{SEGD_PORT}"]
workers = 1
{self.server_extra}[admin]
listen = "127.0.0.1:{SEGD_ADMIN}"
[[volumes]]
path = "{self.root}"
[log]
access = "off"
level = "warn"
{ingest}""")

    def check_config(self):
        self.write_config()
        r = subprocess.run([self.binary, "check-config", "--config", self.cfg], capture_output=True, text=True)
        if r.returncode != 0:
            out = (r.stdout + r.stderr).strip()
            if re.search(r"\bingest\b", out):
                die(NO_INGEST.format(detail=f"`segd check-config` refuses the [ingest] section:\n  {out}"))
            die(f"segd check-config failed:\n{out}")

    def start(self):
        self.write_config()
        check_port_free(SEGD_PORT)
        check_port_free(SEGD_ADMIN)
        cmd = ["taskset", "-c", str(self.cpu), self.binary, "serve", "--config", self.cfg]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), preexec_fn=raise_nofile)
        wait_port(SEGD_PORT, self.proc, self.log)

    def pids(self):
        return [self.proc.pid]

    def leftover_temps(self):
        n = 0
        for _, _, fs in os.walk(self.root):
            n += sum(1 for f in fs if f.startswith(".segd-tmp-"))
        return n

    def explain(self, status, body):
        if status == 405:
            return NO_INGEST.format(detail=f"PUT answered 405 Method Not Allowed ({body!r})")
        if status == 403:
            return (f"segd refused the upload token with 403 ({body!r}): the token minted here "
                    "(EdgeAuth v2, HMAC-SHA256 over exp=..~acl={PREFIX}*) does not verify against [[ingest.keys]]")
        return None


class Nginx(Server):
    name = "nginx"

    @property
    def port(self):
        return NGINX_PORT

    def __init__(self, root, tmp, run, cpu, body_buffer):
        self.root, self.tmp, self.run, self.cpu, self.body_buffer = root, tmp, run, cpu, body_buffer
        self.log = os.path.join(run, "nginx.stderr")

    def start(self):
        with open(os.path.join(HERE, "ingest_nginx.conf.in")) as f:
            conf = f.read()
        conf = (conf.replace("@AFFINITY@", f"worker_cpu_affinity {1 << self.cpu:b};")
                .replace("@RUN@", self.run).replace("@ROOT@", self.root).replace("@TMP@", self.tmp)
                .replace("@PORT@", str(NGINX_PORT)).replace("@PREFIX@", PREFIX).replace("@BODY_BUFFER@", self.body_buffer))
        path = os.path.join(self.run, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        check_port_free(NGINX_PORT)
        cmd = ["taskset", "-c", str(self.cpu), "nginx", "-c", path, "-p", self.run, "-g", "daemon off;"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), preexec_fn=raise_nofile)
        wait_port(NGINX_PORT, self.proc, self.log)
        # The worker forks after the listener is up; wait for it so its CPU is counted.
        deadline = time.time() + 5
        while len(self.pids()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        if len(self.pids()) < 2:
            die(f"nginx started no worker: {tail(self.log)} {tail(os.path.join(self.run, 'nginx-error.log'))}")

    def pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid] + [int(p) for p in out]

    def leftover_temps(self):
        return sum(len(fs) for _, _, fs in os.walk(self.tmp))

    def explain(self, status, body):
        if status == 405:
            return f"nginx answered 405 to PUT: is the dav module missing (nginx -V | grep dav)? {tail(os.path.join(self.run, 'nginx-error.log'))}"
        return None


def request(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "video/mp2t"} if body is not None else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def preflight(srv, pre, qs, body):
    """One PUT, one GET of the same path, one DELETE, before any load: a refusal is explained."""
    path = f"{PREFIX}preflight/{srv.name}/probe.ts"
    status, resp = request(srv.port, "PUT", pre + path + qs, body)
    if status not in (201, 204):
        why = srv.explain(status, resp[:200])
        die(why or f"{srv.name}: preflight PUT {path} answered {status}: {resp[:300]!r}")
    disk = os.path.join(srv.root, path.lstrip("/"))
    if not os.path.isfile(disk) or os.path.getsize(disk) != len(body):
        die(f"{srv.name}: preflight PUT answered {status} but {disk} is missing or has the wrong size")
    gstatus, got = request(srv.port, "GET", path)
    if gstatus != 200 or got != body:
        die(f"{srv.name}: GET after PUT answered {gstatus} with {len(got)} bytes (expected 200, {len(body)} bytes)")
    dstatus, resp = request(srv.port, "DELETE", pre + path + qs)
    if dstatus not in (200, 204):
        die(f"{srv.name}: preflight DELETE answered {dstatus}: {resp[:300]!r}")
    return status


WRK_LUA = r"""
-- PUT bodies of random bytes to distinct paths <prefix>/dNNN/seg_NNNNNNN.ts (500 files a directory).
wrk.method = "PUT"
local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
   pre = os.getenv("INGEST_PRE") or ""   -- "/__token__=<token>" (path-embedded form) or ""
   prefix = os.getenv("INGEST_PREFIX")
   qs = os.getenv("INGEST_QS") or ""     -- "?__token__=<token>" or ""
   nbodies = tonumber(os.getenv("INGEST_NBODIES"))
   bodies = {}
   for i = 0, nbodies - 1 do
      local f = assert(io.open(os.getenv("INGEST_BODIES") .. "/body" .. i .. ".bin", "rb"))
      bodies[i] = f:read("*a")
      f:close()
   end
   headers = { ["Content-Type"] = "video/mp2t" }
   n, created, replaced, bad, first_bad, located = 0, 0, 0, 0, "", 0
   -- The index of every acknowledged upload, from its Location header, so that the harness can
   -- check each one on disk (a write per answer on wrk's core: cheap at these rates).
   acked = assert(io.open(os.getenv("INGEST_ACKED"), "w"))
   acked:setvbuf("line")
end

function request()
   local i = n
   n = n + 1
   local path = string.format("%s%s/d%03d/seg_%07d.ts%s", pre, prefix, math.floor(i / 500), i, qs)
   return wrk.format("PUT", path, headers, bodies[i % nbodies])
end

function response(status, hdrs, body)
   if status == 201 then
      created = created + 1
      local loc = hdrs["Location"] or hdrs["location"]
      local i = loc and string.match(loc, "seg_(%d+)%.ts")
      if i then
         located = located + 1
         acked:write(i, "\n")
      end
   elseif status == 204 then
      replaced = replaced + 1
   else
      bad = bad + 1
      if first_bad == "" then
         first_bad = status .. " " .. (string.gsub(string.sub(body or "", 1, 300), "[\r\n]", " "))
      end
   end
end

function done(summary, latency, requests)
   for _, t in ipairs(threads) do
      io.write(string.format("INGEST_COUNTS issued=%d created=%d replaced=%d bad=%d located=%d\n",
                             t:get("n"), t:get("created"), t:get("replaced"), t:get("bad"), t:get("located")))
      local fb = t:get("first_bad")
      if fb ~= "" then io.write("INGEST_FIRST_BAD " .. fb .. "\n") end
   end
end
"""


def to_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s or "")
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def run_wrk(srv, lua, env, conns, duration, cpu):
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "30s",
           "--latency", "-s", lua, f"http://127.0.0.1:{srv.port}"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env), preexec_fn=raise_nofile)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        die(f"wrk exited {p.returncode} against {srv.name}:\n{out}")
    counts = re.search(r"INGEST_COUNTS issued=(\d+) created=(\d+) replaced=(\d+) bad=(\d+) located=(\d+)", out)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not (counts and m):
        die(f"cannot parse wrk output against {srv.name}:\n{out}")
    issued, created, replaced, bad, located = (int(x) for x in counts.groups())
    if bad or "Non-2xx or 3xx responses" in out:
        fb = re.search(r"INGEST_FIRST_BAD (\d+) ?(.*)", out)
        why = srv.explain(int(fb.group(1)), fb.group(2)) if fb else None
        die((why + "\n" if why else "") + f"{srv.name}: {bad} non-2xx answers to PUT "
            f"(first: {fb.group(0) if fb else '?'}):\n{out}")
    if replaced:
        die(f"{srv.name}: {replaced} PUTs answered 204 (object existed): the paths were not distinct:\n{out}")
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if err and any(int(x) for x in err.groups()):
        die(f"{srv.name}: socket errors during the upload run:\n{out}")
    reqs = int(m.group(1))
    if reqs == 0 or reqs != created:
        die(f"{srv.name}: wrk counted {reqs} responses, the script {created} x 201:\n{out}")
    secs = float(m.group(2)) * {"s": 1, "m": 60, "ms": 0.001}[m.group(3)]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    acked = None
    if located == created:
        with open(env["INGEST_ACKED"]) as f:
            acked = {int(x) for x in f.read().split()}
        if len(acked) != created:
            die(f"{srv.name}: {created} answers 201 but {len(acked)} distinct Location headers")
    return dict(uploads=created, issued=issued, acked=acked, secs=secs, client_cpu_s=client_cpu, p50_ms=to_ms(lat.get("50")), p99_ms=to_ms(lat.get("99")), raw=out)


def verify_landed(srv, prefix, nacked, acked, issued, bodies, size):
    """Every acknowledged upload is a complete file at its final path (checked one by one when the
    201s carried a Location, by count otherwise). wrk stops mid-flight, so the uploads issued but
    not acknowledged (about one per connection) may or may not have landed."""
    top = os.path.join(srv.root, prefix.lstrip("/"))
    found = []
    for d, _, fs in os.walk(top):
        for fn in fs:
            m = re.fullmatch(r"seg_(\d+)\.ts", fn)
            if not m:
                continue  # temp files are counted separately
            p = os.path.join(d, fn)
            if os.path.getsize(p) != size:
                die(f"{srv.name}: {p} has {os.path.getsize(p)} bytes, expected {size} (a partial object at its final path)")
            found.append((int(m.group(1)), p))
    if not (nacked <= len(found) <= issued):
        die(f"{srv.name}: {nacked} uploads acknowledged, {issued} issued, but {len(found)} files under {top}")
    if acked is not None:
        missing = acked - {i for i, _ in found}
        if missing:
            die(f"{srv.name}: {len(missing)} acknowledged uploads are not on disk under {top}, e.g. seg_{min(missing):07d}.ts")
    if found and max(i for i, _ in found) >= issued:
        die(f"{srv.name}: seg_{max(i for i, _ in found)}.ts landed under {top}, but only {issued} uploads were issued")
    for i, p in random.Random(nacked).sample(found, min(16, len(found))):
        with open(p, "rb") as f:
            if f.read() != bodies[i % len(bodies)]:
                die(f"{srv.name}: {p} does not hold the bytes that were uploaded to it")
    return len(found)


def dir_size_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FreshFs:
    """A new ext4 (mkfs defaults: with a journal) in a sparse image under the temp dir, on a loop
    device with direct I/O (no second page cache for the image), mounted for this run only. Both
    servers then start from the same empty filesystem, whatever the host filesystem has been through."""

    def __init__(self, work):
        self.img, self.mnt, self.dev, self.mounted = os.path.join(work, "fs.img"), os.path.join(work, "fs"), None, False

    def setup(self, size):
        with open(self.img, "wb") as f:
            f.truncate(int(size))
        # Inode tables and journal written now, not by ext4lazyinit in the background during the runs.
        self._run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.img])
        self.dev = self._run(["losetup", "--find", "--show", "--direct-io=on", self.img]).strip()
        os.makedirs(self.mnt)
        self._run(["mount", self.dev, self.mnt])
        self.mounted = True

    @staticmethod
    def _run(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            die(f"{' '.join(cmd)} failed: {(r.stdout + r.stderr).strip()} (run as root, or use --fs host)")
        return r.stdout

    def close(self):
        if self.mounted:
            subprocess.run(["umount", self.mnt])
            self.mounted = False
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev])
            self.dev = None
        if os.path.exists(self.img):
            os.unlink(self.img)


def journal_note(path):
    """ext4 without a journal checks every candidate inode for a recent deletion (`recently_deleted`,
    60-300 s): allocating inodes right after many files were deleted costs several times more CPU.
    The benchmark therefore deletes nothing until it ends; say so when it matters."""
    src = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", path], capture_output=True, text=True).stdout.split()
    if len(src) == 2 and src[1] == "ext4":
        try:
            with open(f"/sys/fs/ext4/{os.path.basename(src[0])}/journal_task") as f:
                return "ext4 without a journal" if f.read().strip() == "<none>" else "ext4 with a journal"
        except OSError:
            pass
    return src[1] if len(src) == 2 else "?"


def main():
    global SEGD_PORT, NGINX_PORT, SEGD_ADMIN, PREFIX
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segd", default=os.path.join(REPO, "target/release/segd"), help="release binary (default target/release/segd)")
    ap.add_argument("--segd-b-server", default="", metavar="TOML",
                    help="extra [server] lines for segd-b, e.g. 'sched_policy = \"batch\"' (with --segd-b the same binary as --segd: an A/B of a setting)")
    ap.add_argument("--segd-ingest", default="", metavar="TOML",
                    help="extra [ingest] lines for segd-nofsync, e.g. 'inline_writes = true' (with --segd-b-ingest: an A/B of two builds with the same setting)")
    ap.add_argument("--segd-b-ingest", default="", metavar="TOML",
                    help="extra [ingest] lines for segd-b, e.g. 'inline_writes = true' (an A/B of a setting, as --segd-b-server)")
    ap.add_argument("--segd-b", help="a second segd build, run as server `segd-b` (`fsync = false`) in the same rounds: "
                                     "an A/B of two builds, each also against nginx")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help=f"subset of {','.join(ALL_SERVERS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--uploads", type=int, default=5000,
                    help="uploads per measured run, roughly: the run lasts uploads / (warm-up rate) seconds")
    ap.add_argument("--duration", type=int, default=0, help="fixed seconds per measured run instead of --uploads")
    ap.add_argument("--min-duration", type=int, default=5, help="floor of the derived duration")
    ap.add_argument("--max-duration", type=int, default=30, help="cap of the derived duration")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load before each measured run (not counted)")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--size", type=int, default=200_000, help="body bytes per upload")
    ap.add_argument("--bodies", type=int, default=4, help="distinct random bodies, used in turn")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--nginx-body-buffer", default="256k", help="nginx client_body_buffer_size (nginx default: 16k)")
    ap.add_argument("--quiet-wait", type=int, default=60,
                    help="before each run, wait up to this many seconds for the machine to be idle (0: don't)")
    ap.add_argument("--no-settle", dest="settle", action="store_false",
                    help="skip dropping caches and compacting memory before each measured run")
    ap.add_argument("--prewarm-gib", type=int, default=4, metavar="GIB",
                    help="after settling, touch and free at least this much memory, and 1.5 x what the run will write, so "
                         "the run's page cache lands on pages the VM's host backs (see settle_memory; 0: don't)")
    ap.add_argument("--tmp", default="/var/tmp", help="parent of the temp dir holding both roots")
    ap.add_argument("--fs", choices=["fresh", "host"], default="fresh",
                    help="fresh: both roots on a new ext4 in a loop image under --tmp (default; needs root); "
                         "host: directly on --tmp's filesystem")
    ap.add_argument("--out", help="default benches/results/<date>-<commit>-ingest")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--token-in", choices=["query", "path"], default="query",
                    help="segd's token as ?__token__= (default) or path-embedded /__token__=<token>/live/...; nginx always gets the query form")
    ap.add_argument("--ports", default=f"{SEGD_PORT},{NGINX_PORT},{SEGD_ADMIN}",
                    help="segd, nginx and segd admin ports (default %(default)s)")
    ap.add_argument("--prefix", default=PREFIX,
                    help="URL prefix of the uploads (default %(default)s, a live prefix for segd: read-while-write; "
                         "/vod/ for segd's buffered path)")
    ap.add_argument("--segd-without-ingest-section", action="store_true",
                    help="harness self-test on a segd without ingest: omit [ingest] so segd starts (PUT then gets 405)")
    args = ap.parse_args()
    try:
        SEGD_PORT, NGINX_PORT, SEGD_ADMIN = (int(x) for x in args.ports.split(","))
    except ValueError:
        die(f"--ports wants three port numbers, segd,nginx,admin: {args.ports!r}")
    if not re.fullmatch(r"/[a-z0-9_-]+/", args.prefix):
        die(f"--prefix wants one directory like /live/ or /vod/: {args.prefix!r}")
    PREFIX = args.prefix
    servers = args.servers.split(",")
    for s in servers:
        if s not in ALL_SERVERS:
            die(f"unknown server {s!r} (known: {', '.join(ALL_SERVERS)})")
    if ("segd-b" in servers) != bool(args.segd_b):
        die("server segd-b and --segd-b PATH go together")
    if args.server_cpu == args.client_cpu:
        die("--server-cpu and --client-cpu must differ")
    for tool in ("wrk", "taskset", "pgrep") + (("nginx",) if "nginx" in servers else ()):
        if not shutil.which(tool):
            die(f"{tool} not found (apt-get install wrk util-linux procps nginx-light)")
    if "nginx" in servers:
        v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
        if "--with-http_dav_module" not in v:
            die("this nginx has no dav module (nginx -V shows no --with-http_dav_module); install nginx-light")
    use_segd = any(s.startswith("segd") for s in servers)
    segd_bin = os.path.abspath(args.segd)
    if use_segd and not os.access(segd_bin, os.X_OK):
        die(f"no segd binary at {segd_bin}: cargo build --release, or pass --segd PATH (or --servers nginx)")
    raise_nofile()

    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "nogit"
    out = args.out or os.path.join(REPO, "benches/results", f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d-%H%M}-{commit}-ingest")
    work = tempfile.mkdtemp(prefix="segd-ingest-", dir=args.tmp)
    run, bodies_dir = os.path.join(work, "run"), os.path.join(work, "bodies")
    fresh, rows = None, []
    # Bytes one run may write (at up to 600 MB/s), and how many runs' worth stay on disk at once:
    # two when each run's uploads are deleted, all of them on ext4 without a journal (journal_note).
    per_run = (args.duration or max(args.min_duration, args.uploads * 1.3 / 1000)) * 600e6 + args.warmup * 600e6
    keep_all = args.fs == "host" and journal_note(work) == "ext4 without a journal"
    need = (len(servers) * args.rounds if keep_all else 2) * per_run + (3 << 30)
    try:
        if dir_size_free(work) < need:
            die(f"not enough free space under {work}: {dir_size_free(work) / 1e9:.1f} GB free, this run keeps up to "
                f"~{need / 1e9:.1f} GB until it ends (fewer --uploads or --rounds)")
        for d in (run, bodies_dir):
            os.makedirs(d)
        if args.fs == "fresh":
            fresh = FreshFs(work)
            fresh.setup(max(need * 1.2, 8e9))
            data = fresh.mnt
        else:
            data = work
        segd_root, nginx_root, nginx_tmp = (os.path.join(data, d) for d in ("segd-volume", "nginx-root", "nginx-body-temp"))
        for d in (segd_root, nginx_root, nginx_tmp):
            os.makedirs(d)
        # The three must share a filesystem, so that both servers finish with a rename.
        devs = {os.stat(d).st_dev for d in (segd_root, nginx_root, nginx_tmp)}
        if len(devs) != 1:
            die("segd's volume, nginx's root and nginx's body temp dir are not on one filesystem")
        fstype = journal_note(data)
        # Deleting is harmless with a journal; without one it would make the next run's inode
        # allocation dearer (journal_note), so then everything is kept until the end.
        delete_between = args.delete_between = fstype != "ext4 without a journal"
        fstype += (f" (fresh, on {fresh.dev} with direct I/O, image under {args.tmp})" if fresh else f" (host filesystem, {args.tmp})")

        rng = random.Random(12)
        bodies = []
        for i in range(args.bodies):
            b = rng.randbytes(args.size)
            bodies.append(b)
            with open(os.path.join(bodies_dir, f"body{i}.bin"), "wb") as f:
                f.write(b)
        lua = os.path.join(run, "put.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA)

        secret = secrets.token_hex(16)
        token = mint_token(secret, PREFIX + "*", int(time.time()) + 6 * 3600)
        # nginx ignores the query, but gets it too, so that both servers parse the same request line.
        token_qs, token_pre = f"?__token__={encode_token(token)}", f"/__token__={encode_token(token)}"

        def token_parts(name):
            if name.startswith("segd") and args.token_in == "path":
                return token_pre, ""
            return "", token_qs

        def make(name):
            if name == "nginx":
                return Nginx(nginx_root, nginx_tmp, run, args.server_cpu, args.nginx_body_buffer)
            # Extra [ingest] lines for each segd server.
            ingest_extra = {"segd-nofsync": args.segd_ingest, "segd-inline": "inline_writes = true",
                            "segd-b": args.segd_b_ingest}.get(name, "")
            srv = Segd(os.path.abspath(args.segd_b) if name == "segd-b" else segd_bin, segd_root, run,
                       name == "segd-fsync", args.server_cpu, secret,
                       ingest_section=not args.segd_without_ingest_section,
                       server_extra=(args.segd_b_server + "\n") if name == "segd-b" and args.segd_b_server else "",
                       ingest_extra=ingest_extra + "\n" if ingest_extra else "")
            srv.name = name
            srv.cfg, srv.log = os.path.join(run, f"{name}.toml"), os.path.join(run, f"{name}.log")
            return srv

        for name in servers:
            if name.startswith("segd"):
                make(name).check_config()
                break

        mb_per_upload = args.size / 1e6
        log(f"{', '.join(servers)}; {args.rounds} rounds x {f'{args.duration} s' if args.duration else f'~{args.uploads} uploads'} (+{args.warmup} s warm-up), "
            f"{args.conns} conns, {args.size} B bodies; server on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}; "
            f"roots under {data}: {fstype}")
        for rnd in range(args.rounds):
            k = rnd % len(servers)
            for name in servers[k:] + servers[:k]:
                if args.quiet_wait > 0:
                    load = wait_quiet(args.quiet_wait)
                    if load >= 0.1:
                        log(f"  machine still busy ({load:.2f} CPUs) after waiting {args.quiet_wait} s; running anyway")
                with open("/proc/loadavg") as f:
                    load_before = " ".join(f.read().split()[:3])
                srv = make(name)
                srv.start()
                try:
                    pre, qs = token_parts(name)
                    preflight(srv, pre, qs, bodies[0])
                    env = dict(INGEST_PRE=pre, INGEST_QS=qs, INGEST_BODIES=bodies_dir, INGEST_NBODIES=str(args.bodies))
                    duration = args.duration
                    rate = 8000  # uploads/s, above any rate seen here: the pre-touch's size when there is no warm-up
                    if args.warmup > 0:
                        w = run_wrk(srv, lua, dict(env, INGEST_PREFIX=f"{PREFIX}w{rnd + 1}-{name}", INGEST_ACKED=os.path.join(run, "acked-warmup.txt")), args.conns, args.warmup, args.client_cpu)
                        rate = w["uploads"] / w["secs"]
                        if not duration:
                            duration = min(args.max_duration, max(args.min_duration, round(args.uploads / rate)))
                    elif not duration:
                        duration = 10
                    if dir_size_free(data) < duration * 600e6 + (2 << 30) or dir_size_free(work) < (2 << 30):
                        die(f"free space under {data} is running out ({dir_size_free(data) / 1e9:.1f} GB left)")
                    os.sync()  # the warm-up's dirty pages are written back before the measurement
                    if args.settle:
                        # Half as much again as the run should write, at least --prewarm-gib.
                        prewarm = max(args.prewarm_gib, math.ceil(1.5 * duration * rate * args.size / (1 << 30))) if args.prewarm_gib else 0
                        failed = settle_memory(min(prewarm, max(0, mem_available_gib() - 4)))
                        if failed:
                            log(f"  memory not settled ({failed}): the run takes its pages from whatever state the last one left")
                    prefix = f"{PREFIX}m{rnd + 1}-{name}"
                    pids = srv.pids()
                    c0, m0, x0 = proc_cpu(pids), machine_busy(), proc_switches(pids)
                    res = run_wrk(srv, lua, dict(env, INGEST_PREFIX=prefix, INGEST_ACKED=os.path.join(run, "acked.txt")), args.conns, duration, args.client_cpu)
                    c1, m1, x1 = proc_cpu(pids), machine_busy(), proc_switches(pids)
                    rss = proc_rss_mb(pids)
                    stray = stray_threads(srv.pids(), args.server_cpu)
                    if stray:
                        log(f"  WARNING: {name} threads not pinned to CPU {args.server_cpu}: {', '.join(stray[:8])}")
                finally:
                    srv.stop()
                landed = verify_landed(srv, prefix, res["uploads"], res["acked"], res["issued"], bodies, args.size)
                checked = "each acked upload checked" if res["acked"] is not None else "no Location: checked by count"
                temps = srv.leftover_temps()
                if temps:
                    log(f"  WARNING: {temps} temp files left by {name} after a clean stop")
                cpu_user, cpu_sys = c1[0] - c0[0], c1[1] - c0[1]
                cpu = cpu_user + cpu_sys
                # Everything else the machine did meanwhile: the kernel's work caused by the run, and
                # other people's jobs, which slow both servers and inflate their CPU/MB.
                kernel, other = other_cpu(m0, m1, cpu, res["client_cpu_s"])
                if other > 0.15 * res["secs"]:
                    log(f"  WARNING: other jobs used {other:.1f} CPU s during this {res['secs']:.0f} s run: "
                        "the machine is not quiet, compare rounds with care")
                mb = landed * mb_per_upload
                row = dict(round=rnd + 1, server=name, fsync=("yes" if name == "segd-fsync" else "no"), loadavg_before=load_before,
                           uploads=res["uploads"], landed=landed, secs=round(res["secs"], 3),
                           uploads_per_s=res["uploads"] / res["secs"], mb_per_s=res["uploads"] * mb_per_upload / res["secs"],
                           cpu_s=cpu, cpu_user_s=cpu_user, cpu_sys_s=cpu_sys, client_cpu_s=res["client_cpu_s"], kernel_cpu_s=kernel, other_cpu_s=other, cpu_ms_per_mb=cpu / mb * 1e3 if mb else float("nan"),
                           cpu_us_per_upload=cpu / landed * 1e6 if landed else float("nan"),
                           user_us_per_upload=cpu_user / landed * 1e6 if landed else float("nan"),
                           sys_us_per_upload=cpu_sys / landed * 1e6 if landed else float("nan"),
                           switches_per_upload=(x1[0] - x0[0] + x1[1] - x0[1]) / landed if landed else float("nan"),
                           involuntary_per_upload=(x1[1] - x0[1]) / landed if landed else float("nan"),
                           faults_per_upload=(c1[2] - c0[2]) / landed if landed else float("nan"),
                           p50_ms=res["p50_ms"], p99_ms=res["p99_ms"], rss_mb=rss, leftover_temps=temps,
                           unpinned_threads=len(stray))
                rows.append(row)
                log(f"round {rnd + 1} {name:12} (load before {load_before}): {row['uploads_per_s']:7.0f} uploads/s {row['mb_per_s']:7.1f} MB/s  "
                    f"cpu {cpu:6.2f} s (user {cpu_user:5.2f}) = {row['cpu_ms_per_mb']:6.3f} ms/MB (wrk {res['client_cpu_s']:5.2f} s, kernel {kernel:5.2f} s, other jobs {other:5.2f} s)  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                    f"{row['switches_per_upload']:5.2f} switches/upload  {row['faults_per_upload']:6.1f} faults/upload  {res['uploads']} acked, {landed} on disk ({checked})")
                if delete_between:
                    # Every run starts from the same (empty) filesystem and page-cache footprint.
                    shutil.rmtree(os.path.join(srv.root, PREFIX.strip("/")), ignore_errors=True)
                os.sync()  # this run's dirty pages are not left for the next server to wait behind
    finally:
        if fresh:
            fresh.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            if not fresh:
                for d in ("segd-volume", "nginx-root"):
                    shutil.rmtree(os.path.join(work, d, PREFIX.strip("/")), ignore_errors=True)
            log(f"kept {work} (configs, logs; uploads removed)")

    os.makedirs(out, exist_ok=True)
    keys = ["round", "server", "fsync", "loadavg_before", "uploads", "landed", "secs", "uploads_per_s", "mb_per_s", "cpu_s", "cpu_user_s", "cpu_sys_s", "client_cpu_s", "kernel_cpu_s", "other_cpu_s",
            "cpu_ms_per_mb", "cpu_us_per_upload", "user_us_per_upload", "sys_us_per_upload", "switches_per_upload", "involuntary_per_upload", "faults_per_upload", "p50_ms", "p99_ms", "rss_mb", "leftover_temps", "unpinned_threads"]
    with open(os.path.join(out, "raw.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    write_summary(out, rows, servers, args, fstype, segd_bin if use_segd else None, commit)


def write_summary(out, rows, servers, args, fstype, segd_bin, commit):
    def vals(server, key):
        return [r[key] for r in rows if r["server"] == server and r[key] == r[key]]

    def med(server, key):
        v = vals(server, key)
        return statistics.median(v) if v else float("nan")

    def rng(server, key, fmt):
        v = vals(server, key)
        return f"{format(statistics.median(v), fmt)} ({format(min(v), fmt)}–{format(max(v), fmt)})" if v else "—"

    what = {"segd-nofsync": f"segd{' (' + args.segd_ingest + ')' if args.segd_ingest else ''}, `fsync = false` (same durability as nginx)",
            "segd-fsync": "segd, `fsync = true` (file + directory fsync before the answer: more durable than nginx)",
            "segd-inline": "segd, `fsync = false`, `inline_writes = true` (writes made on the worker)",
            "nginx": "nginx WebDAV PUT (no fsync)",
            "segd-b": f"segd build B (`{args.segd_b}`{', ' + args.segd_b_server if args.segd_b_server else ''}{', ' + args.segd_b_ingest if args.segd_b_ingest else ''}), `fsync = false`"}
    lines = ["| server | uploads/s | MB/s | **server CPU ms per MB** | CPU µs per upload | of which user / system µs | context switches per upload | minor faults per upload | p50 ms | p99 ms | RSS MB | run s | kernel threads+irq CPU s | other jobs CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in servers:
        if vals(s, "uploads"):
            lines.append(f"| {what[s]} | {rng(s, 'uploads_per_s', '.0f')} | {rng(s, 'mb_per_s', '.1f')} | **{rng(s, 'cpu_ms_per_mb', '.3f')}** | "
                         f"{rng(s, 'cpu_us_per_upload', '.0f')} | {med(s, 'user_us_per_upload'):.0f} / {med(s, 'sys_us_per_upload'):.0f} | {med(s, 'switches_per_upload'):.2f} | {med(s, 'faults_per_upload'):.1f} | {med(s, 'p50_ms'):.2f} | {med(s, 'p99_ms'):.2f} | {med(s, 'rss_mb'):.1f} | "
                         f"{med(s, 'secs'):.0f} | {rng(s, 'kernel_cpu_s', '.1f')} | {rng(s, 'other_cpu_s', '.1f')} |")
    ratios = []

    def ratio_row(s, base, label):
        if s not in servers or base not in servers or not vals(s, "uploads") or not vals(base, "uploads"):
            return
        per_round = []
        for r in sorted({r["round"] for r in rows}):
            a = [x for x in rows if x["round"] == r and x["server"] == s]
            b = [x for x in rows if x["round"] == r and x["server"] == base]
            if a and b:
                per_round.append(a[0]["cpu_ms_per_mb"] / b[0]["cpu_ms_per_mb"])
        ratios.append(f"| {label} | {med(s, 'cpu_ms_per_mb') / med(base, 'cpu_ms_per_mb'):.2f} | "
                      f"{statistics.median(per_round):.2f} ({min(per_round):.2f}–{max(per_round):.2f}) | "
                      f"{med(s, 'uploads_per_s') / med(base, 'uploads_per_s'):.2f} |")

    ratio_row("segd-nofsync", "nginx", "segd `fsync = false` / nginx — **equal durability, the comparison**")
    ratio_row("segd-inline", "nginx", "segd `fsync = false`, `inline_writes = true` / nginx — equal durability")
    ratio_row("segd-fsync", "nginx", "segd `fsync = true` / nginx — segd does more (fsync), not like for like")
    ratio_row("segd-b", "nginx", "segd build B / nginx (`fsync = false`)")
    ratio_row("segd-b", "segd-nofsync", "segd build B / segd (both `fsync = false`): the A/B")
    if ratios:
        ratios = ["", "| ratio | **CPU per MB** (ratio of medians) | CPU per MB, per-round ratios: median (min–max) | uploads/s (medians) |",
                  "|---|---|---|---|"] + ratios
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip() if "nginx" in servers else ""
    segd_v = subprocess.run([segd_bin, "--version"], capture_output=True, text=True).stdout.strip() if segd_bin else ""
    head = [f"# segd ingest vs nginx WebDAV — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
            f"`benches/ingest.py`, harness commit {commit}; {segd_v + f' (`{segd_bin}`)' if segd_v else 'segd not run'}; {nginx_v or 'nginx not run'}; "
            f"kernel {os.uname().release}, {fstype}, {os.cpu_count()} CPUs.", "",
            f"{args.rounds} rounds, server order rotated each round; each run: fresh server, preflight PUT/GET/DELETE, {args.warmup} s warm-up, "
            f"`sync`{', caches dropped, memory compacted' + (' and pre-touched (at least ' + str(args.prewarm_gib) + ' GiB, 1.5 × what the run writes: see settle_memory)' if args.prewarm_gib else '') if args.settle else ''}, then {f'{args.duration} s' if args.duration else f'uploads / (warm-up rate) seconds (about {args.uploads:,} uploads; min {args.min_duration}, max {args.max_duration})'} "
            f"of wrk (1 thread, {args.conns} keep-alive connections) PUTting {args.size:,}-byte random bodies "
            f"to distinct paths under {PREFIX} (500 per directory{', a live prefix for segd: read-while-write, each chunk handed to readers from memory, directories watched by inotify' if PREFIX == '/live/' else ', not a live prefix: no read-while-write, no inotify watch'}). Server on CPU {args.server_cpu} (1 worker), wrk on CPU {args.client_cpu}. "
            f"Server CPU = utime+stime of every server process (nginx: master + worker) over the measured run; "
            f"per MB = per 10^6 bytes that landed on disk (every acknowledged upload is checked: count, size, a sample of contents). "
            f"Cells: median (min–max). nginx `client_body_buffer_size {args.nginx_body_buffer}`, body temp dir and root on the same filesystem as segd's volume. "
            + ("Each run's uploads are deleted (then `sync`) before the next server starts. " if args.delete_between else
               "Uploads are kept until the end of the benchmark: on ext4 without a journal, deleting between runs would make the next run's inode allocation dearer. ") +
            f"Besides the server and wrk, the machine's busy time during the run is split into kernel threads + interrupts "
            f"(writeback, the loop device, jbd2, softirqs: mostly caused by the run, charged to nobody) and other jobs (anybody else's work: noise).", ""]
    notes = ["", "Not charged to either server: the kernel's background writeback of dirty pages (kworker threads), so "
             "`fsync = false` and nginx look cheaper than the disk work they cause; with `fsync = true` part of that work "
             "runs in segd's own context and is charged to it (and the journal commit, in jbd2, is not).",
             "", "Nearly all of either server's CPU is kernel time (socket receive copy, page-cache copy, ext4). It varies from run to run "
             "with the machine, not only the server: other jobs, and in a VM that returns freed memory to its host "
             "(virtio-balloon free page reporting) the first touch of new page-cache pages. Trust the per-round ratios of interleaved "
             "runs more than any single figure, and prefer a quiet machine."]
    per_run = ["", "Per run, in the order run (load average before the run, /proc/loadavg 1/5/15 min):", "",
               "| round | server | load avg before | uploads/s | CPU ms per MB | other jobs CPU s |", "|---|---|---|---|---|---|"]
    for r in rows:
        per_run.append(f"| {r['round']} | {r['server']} | {r['loadavg_before']} | {r['uploads_per_s']:.0f} | {r['cpu_ms_per_mb']:.3f} | {r['other_cpu_s']:.1f} |")
    summary = "\n".join(head + lines + ratios + per_run + notes) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    log(f"results in {out}")


if __name__ == "__main__":
    main()
