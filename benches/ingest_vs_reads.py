#!/usr/bin/env python3
"""Read starvation under upload traffic: p99 of hot GETs with and without 16 concurrent uploaders.

    python3 benches/ingest_vs_reads.py [--segd target/release/segd] [--rounds 3] [--duration 10]
                                       [--fsync true|false] [--uploaders 16] [--get-conns 64]

One segd (one worker, pinned to CPU 0) serves one volume holding a hot set of --hot-files random
segments of --hot-size bytes under /vod/hot/ (in segd's cache after a warm-up) and accepts uploads
under /live/ (`[ingest]`, fsync as --fsync; segd's default is true). It listens on two ports of
the same process: hot GETs on one, uploads on the other, so the two load generators never share a
connection. Two conditions, interleaved round by round (the order alternates), each on a freshly
started segd:
  alone        wrk, 1 thread, --get-conns keep-alive connections, random GETs over the hot set,
               --duration seconds, --latency.
  uploading    the same GET wrk, while a second wrk (1 thread, --uploaders connections, the PUT
               Lua script of benches/ingest.py) PUTs --size-byte random bodies to distinct paths
               continuously: it starts --upload-lead seconds before the GET run and ends after it.
Both wrk processes run on CPU 1 (they share it while uploading: the client's CPU is recorded).
Per run: GET req/s, MB/s, p50/p99 (wrk's --latency), segd's CPU use, and, while uploading, the
uploads acknowledged during the GET window (from the Location of each 201) per second. Every GET
must be a 200 and every PUT a 201; any other answer or socket error stops the run loudly, with the
tail of segd's stderr (kept under the run dir with --keep; --access-log adds an access log per run).
--get-rate N paces the GETs (wrk's delay(), per connection) so that neither wrk nor segd is
saturated: unpaced, on loopback, the GET wrk is usually the bottleneck, and the uploader wrk sharing
its CPU then slows the GETs whatever segd does (the summary prints both wrk CPU figures).
The report: p99 with / without uploaders (the starvation ratio), GET throughput with / without,
upload rate; medians and per-round ranges. The load average is recorded before each run.
Volume on a fresh ext4 in a loop image (--fs fresh, needs root; like benches/ingest.py) or on
--tmp itself (--fs host). Writes raw.csv and summary.md under
benches/results/<date>-<commit>-ingest-vs-reads/ (or --out).
"""
import argparse
import csv
import datetime
import os
import random
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import ingest  # noqa: E402  (shared helpers: token minting, CPU accounting, the PUT Lua script, FreshFs)

GET_PORT, PUT_PORT, ADMIN_PORT = 18630, 18631, 18632  # not used by the other benches (18280 is live_wakeup.py's)

GET_LUA = r"""
-- Random GETs over the hot set; counts non-200 answers (wrk's own count includes 3xx).
local paths = {}
for line in io.lines(os.getenv("HOT_PATHS")) do paths[#paths + 1] = line end
local threads = {}
-- Paced (--get-rate): each connection waits HOT_DELAY_MS between its requests, so that neither the
-- load generator nor segd is saturated and the latency is segd's, not a queue's.
local pace = tonumber(os.getenv("HOT_DELAY_MS") or "0")
if pace > 0 then function delay() return pace end end
function setup(thread) table.insert(threads, thread) end
function init(args)
   math.randomseed(tonumber(os.getenv("HOT_SEED") or "1"))
   bad, first_bad = 0, ""
end
function request() return wrk.format("GET", paths[math.random(#paths)]) end
function response(status, hdrs, body)
   if status ~= 200 then
      bad = bad + 1
      if first_bad == "" then first_bad = tostring(status) end
   end
end
function done(summary, latency, requests)
   for _, t in ipairs(threads) do
      io.write(string.format("HOT_COUNTS bad=%d first=%s\n", t:get("bad"), t:get("first_bad")))
   end
end
"""


def die(msg):
    print(f"ingest_vs_reads: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"ingest_vs_reads: {msg}", flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Segd:
    def __init__(self, binary, root, run, fsync, cpu, secret, access_log, sched_policy):
        self.binary, self.root, self.run, self.fsync, self.cpu, self.secret = binary, root, run, fsync, cpu, secret
        self.access_log, self.sched_policy = access_log, sched_policy
        self.cfg = os.path.join(run, "segd.toml")
        self.log = os.path.join(run, "segd.stderr")

    def start(self, tag):
        # The access log, when asked for, goes to a file per run (a record of what segd answered).
        access = f'"{os.path.join(self.run, f"access-{tag}.log")}"' if self.access_log else '"off"'
        with open(self.cfg, "w") as f:
            f.write(f"""[server]
listen = ["127.0.0.1:{GET_PORT}", "127.0.0.1:{PUT_PORT}"]
workers = 1
sched_policy = "{self.sched_policy}"
[admin]
listen = "127.0.0.1:{ADMIN_PORT}"
[[volumes]]
path = "{self.root}"
[cache]
max_bytes = "1GiB"
open_files = 10000
[log]
access = {access}
level = "warn"
[ingest]
prefixes = ["/live/"]
max_body_bytes = "512MiB"
fsync = {"true" if self.fsync else "false"}
[[ingest.keys]]
id = "bench"
secret = "{self.secret}"
""")
        for p in (GET_PORT, PUT_PORT, ADMIN_PORT):
            ingest.check_port_free(p)
        self.log = os.path.join(self.run, f"segd-{tag}.stderr")
        cmd = ["taskset", "-c", str(self.cpu), self.binary, "serve", "--config", self.cfg]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), preexec_fn=ingest.raise_nofile)
        ingest.wait_port(GET_PORT, self.proc, self.log)
        ingest.wait_port(PUT_PORT, self.proc, self.log)

    def stop(self):
        if self.proc.poll() is not None:
            die(f"segd died during the run (exit {self.proc.returncode}): {ingest.tail(self.log)}")
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wrk_cmd(cpu, conns, duration, lua, port):
    return ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "10s",
            "--latency", "-s", lua, f"http://127.0.0.1:{port}"]


def parse_wrk(out, what, srv):
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not m:
        die(f"cannot parse wrk output ({what}):\n{out}\nsegd stderr: {ingest.tail(srv.log)}")
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if err and any(int(x) for x in err.groups()):
        die(f"{what}: socket errors:\n{out}\nsegd stderr ({srv.log}): {ingest.tail(srv.log)}")
    secs = float(m.group(2)) * {"s": 1, "m": 60, "ms": 0.001}[m.group(3)]
    mb = float(m.group(4)) * {"B": 1e-6, "KB": 1.024e-3, "MB": 1.048576, "GB": 1073.741824}[m.group(5)]
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+([\d.]+\w+)", out, re.M))
    return dict(requests=int(m.group(1)), secs=secs, mb=mb, p50_ms=ingest.to_ms(lat.get("50")),
                p90_ms=ingest.to_ms(lat.get("90")), p99_ms=ingest.to_ms(lat.get("99")))


def run_get(srv, lua, env, conns, duration, cpu):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(wrk_cmd(cpu, conns, duration, lua, GET_PORT), capture_output=True, text=True,
                       env=dict(os.environ, **env), preexec_fn=ingest.raise_nofile)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        die(f"GET wrk exited {p.returncode}:\n{out}")
    c = re.search(r"HOT_COUNTS bad=(\d+) first=(\S*)", out)
    if not c or int(c.group(1)) or "Non-2xx or 3xx responses" in out:
        die(f"hot GETs: {c.group(1) if c else '?'} answers other than 200 (first: {c.group(2) if c else '?'}):\n{out}\n"
            f"segd stderr ({srv.log}): {ingest.tail(srv.log)}")
    res = parse_wrk(out, "hot GETs", srv)
    res["client_cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    res["raw"] = out
    return res


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def main():
    global GET_PORT, PUT_PORT, ADMIN_PORT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segd", default=os.path.join(REPO, "target/release/segd"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each measured GET run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of GETs before each measured run (fills segd's cache)")
    ap.add_argument("--upload-lead", type=int, default=2, help="seconds the uploaders run before the measured GETs start")
    ap.add_argument("--get-conns", type=int, default=64)
    ap.add_argument("--get-rate", type=int, default=0,
                    help="pace the GETs to about this many req/s in all (wrk delay() per connection); 0: as fast as they go "
                         "(then wrk itself is usually the bottleneck on loopback)")
    ap.add_argument("--uploaders", type=int, default=16, help="concurrent uploading connections")
    ap.add_argument("--hot-files", type=int, default=100)
    ap.add_argument("--hot-size", type=int, default=150 * 1024, help="bytes per hot segment")
    ap.add_argument("--size", type=int, default=200_000, help="bytes per upload")
    ap.add_argument("--bodies", type=int, default=4)
    ap.add_argument("--fsync", choices=["true", "false"], default="true", help="[ingest] fsync (segd's default: true)")
    ap.add_argument("--sched-policy", choices=["other", "batch"], default="other", help="[server] sched_policy (segd's default: other)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--quiet-wait", type=int, default=30, help="before each run, wait up to this many seconds for an idle machine")
    ap.add_argument("--tmp", default="/var/tmp")
    ap.add_argument("--fs", choices=["fresh", "host"], default="fresh")
    ap.add_argument("--access-log", action="store_true", help="segd access log to a file per run (costs CPU; off by default)")
    ap.add_argument("--ports", default=f"{GET_PORT},{PUT_PORT},{ADMIN_PORT}", help="GET, upload and admin ports of segd (default %(default)s)")
    ap.add_argument("--out")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    try:
        GET_PORT, PUT_PORT, ADMIN_PORT = (int(x) for x in args.ports.split(","))
    except ValueError:
        die(f"--ports wants three port numbers: {args.ports!r}")
    if args.server_cpu == args.client_cpu:
        die("--server-cpu and --client-cpu must differ")
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            die(f"{tool} not found")
    segd_bin = os.path.abspath(args.segd)
    if not os.access(segd_bin, os.X_OK):
        die(f"no segd binary at {segd_bin}")
    ingest.raise_nofile()

    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "nogit"
    out = args.out or os.path.join(REPO, "benches/results", f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d-%H%M}-{commit}-ingest-vs-reads" + (f"-paced{args.get_rate}" if args.get_rate else "") + ("" if args.fsync == "true" else "-nofsync"))
    work = tempfile.mkdtemp(prefix="segd-ingest-reads-", dir=args.tmp)
    run, bodies_dir = os.path.join(work, "run"), os.path.join(work, "bodies")
    os.makedirs(run)
    os.makedirs(bodies_dir)
    fresh, rows = None, []
    # Uploads in one run: at most ~600 MB/s for lead + duration + a second; deleted after each run.
    per_run = (args.upload_lead + args.duration + 2) * 600e6
    try:
        if args.fs == "fresh":
            fresh = ingest.FreshFs(work)
            fresh.setup(max(2 * per_run + (2 << 30), 8e9))
            data = fresh.mnt
        else:
            data = work
        root = os.path.join(data, "volume")
        hot_dir = os.path.join(root, "vod", "hot")
        os.makedirs(hot_dir)
        fstype = ingest.journal_note(data) + (f" (fresh, on {fresh.dev} with direct I/O, image under {args.tmp})" if fresh else f" (host filesystem, {args.tmp})")
        rng = random.Random(7)
        hot = []
        for i in range(args.hot_files):
            p = f"/vod/hot/seg_{i:05d}.ts"
            with open(os.path.join(root, p.lstrip("/")), "wb") as f:
                f.write(rng.randbytes(args.hot_size))
            hot.append(p)
        hot_list = os.path.join(run, "hot.txt")
        with open(hot_list, "w") as f:
            f.write("\n".join(hot) + "\n")
        bodies = []
        for i in range(args.bodies):
            b = rng.randbytes(args.size)
            bodies.append(b)
            with open(os.path.join(bodies_dir, f"body{i}.bin"), "wb") as f:
                f.write(b)
        get_lua, put_lua = os.path.join(run, "get.lua"), os.path.join(run, "put.lua")
        with open(get_lua, "w") as f:
            f.write(GET_LUA)
        with open(put_lua, "w") as f:
            f.write(ingest.WRK_LUA)
        os.sync()

        secret = secrets.token_hex(16)
        token = ingest.mint_token(secret, "/live/*", int(time.time()) + 6 * 3600)
        qs = f"?__token__={ingest.encode_token(token)}"
        srv = Segd(segd_bin, root, run, args.fsync == "true", args.server_cpu, secret, args.access_log, args.sched_policy)

        log(f"{args.rounds} rounds x (alone, uploading); GETs: {args.get_conns} conns over {len(hot)} x {args.hot_size} B, "
            f"{args.duration} s; uploads: {args.uploaders} conns x {args.size} B, fsync={args.fsync}; segd (1 worker) on CPU {args.server_cpu}, "
            f"both wrk on CPU {args.client_cpu}; volume: {fstype}")
        for rnd in range(args.rounds):
            order = ["alone", "uploading"] if rnd % 2 == 0 else ["uploading", "alone"]
            for cond in order:
                if args.quiet_wait > 0:
                    busy = ingest.wait_quiet(args.quiet_wait)
                    if busy >= 0.1:
                        log(f"  machine still busy ({busy:.2f} CPUs of other jobs) after waiting {args.quiet_wait} s; running anyway")
                la = loadavg()
                tag = f"r{rnd + 1}-{cond}"
                srv.start(tag)
                put = None
                try:
                    # Preflight: one hot GET and one upload, each answered as expected.
                    st, got = ingest.request(GET_PORT, "GET", hot[0])
                    if st != 200 or len(got) != args.hot_size:
                        die(f"preflight GET {hot[0]} answered {st} with {len(got)} bytes")
                    st, resp = ingest.request(PUT_PORT, "PUT", f"/live/preflight/{tag}.ts{qs}", bodies[0])
                    if st != 201:
                        die(f"preflight PUT answered {st}: {resp[:300]!r}\nsegd stderr: {ingest.tail(srv.log)}")
                    env = dict(HOT_PATHS=hot_list, HOT_SEED=str(rnd + 1),
                               HOT_DELAY_MS=str(round(args.get_conns * 1000 / args.get_rate)) if args.get_rate else "0")
                    run_get(srv, get_lua, env, args.get_conns, args.warmup, args.client_cpu)  # fills the cache
                    acked = os.path.join(run, f"acked-{tag}.txt")
                    if cond == "uploading":
                        put_env = dict(os.environ, INGEST_PRE="", INGEST_QS=qs, INGEST_BODIES=bodies_dir,
                                       INGEST_NBODIES=str(args.bodies), INGEST_PREFIX=f"/live/{tag}", INGEST_ACKED=acked)
                        put_secs = args.upload_lead + args.duration + 2
                        put = subprocess.Popen(wrk_cmd(args.client_cpu, args.uploaders, put_secs, put_lua, PUT_PORT),
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=put_env,
                                               preexec_fn=ingest.raise_nofile)
                        time.sleep(args.upload_lead)
                        if put.poll() is not None:
                            die(f"upload wrk ended early:\n{put.stdout.read()}\nsegd stderr: {ingest.tail(srv.log)}")
                    pids = [srv.proc.pid]
                    a0, c0, m0, t0 = count_lines(acked), ingest.proc_cpu(pids), ingest.machine_busy(), time.time()
                    res = run_get(srv, get_lua, env, args.get_conns, args.duration, args.client_cpu)
                    a1, c1, m1, t1 = count_lines(acked), ingest.proc_cpu(pids), ingest.machine_busy(), time.time()
                    up = dict(uploads=0, up_per_s=0.0, up_mb_per_s=0.0, up_p50_ms=float("nan"), up_p99_ms=float("nan"), put_client_cpu_s=0.0)
                    if put:
                        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        pout, _ = put.communicate(timeout=put_secs + 60)
                        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        put_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                        if put.returncode != 0:
                            die(f"upload wrk exited {put.returncode}:\n{pout}\nsegd stderr: {ingest.tail(srv.log)}")
                        cnt = re.search(r"INGEST_COUNTS issued=(\d+) created=(\d+) replaced=(\d+) bad=(\d+) located=(\d+)", pout)
                        if not cnt or int(cnt.group(4)) or int(cnt.group(3)) or "Non-2xx or 3xx responses" in pout:
                            fb = re.search(r"INGEST_FIRST_BAD .*", pout)
                            die(f"uploads: answers other than 201 ({fb.group(0) if fb else '?'}):\n{pout}\n"
                                f"segd stderr ({srv.log}): {ingest.tail(srv.log)}")
                        pres = parse_wrk(pout, "uploads", srv)
                        n = a1 - a0
                        up = dict(uploads=n, up_per_s=n / (t1 - t0), up_mb_per_s=n * args.size / 1e6 / (t1 - t0),
                                  up_p50_ms=pres["p50_ms"], up_p99_ms=pres["p99_ms"], put_client_cpu_s=put_cpu)
                        if int(cnt.group(5)) != int(cnt.group(2)):
                            die(f"uploads: {cnt.group(2)} answers 201 but {cnt.group(5)} with a Location")
                finally:
                    if put and put.poll() is None:
                        put.kill()
                        put.wait()
                    srv.stop()
                cpu = sum(c1) - sum(c0)
                kernel, other = ingest.other_cpu(m0, m1, cpu, res["client_cpu_s"] + up["put_client_cpu_s"] * (t1 - t0) / max(1, args.upload_lead + args.duration + 2))
                row = dict(round=rnd + 1, condition=cond, loadavg_before=la, gets=res["requests"], get_rps=res["requests"] / res["secs"],
                           get_mb_per_s=res["mb"] / res["secs"], get_p50_ms=res["p50_ms"], get_p90_ms=res["p90_ms"], get_p99_ms=res["p99_ms"],
                           uploads=up["uploads"], uploads_per_s=up["up_per_s"], upload_mb_per_s=up["up_mb_per_s"],
                           upload_p50_ms=up["up_p50_ms"], upload_p99_ms=up["up_p99_ms"],
                           server_cpu_util=cpu / (t1 - t0), get_client_cpu_s=res["client_cpu_s"], get_wrk_cpu=res["client_cpu_s"] / (t1 - t0), put_client_cpu_s=up["put_client_cpu_s"],
                           other_cpu_s=other)
                rows.append(row)
                log(f"round {rnd + 1} {cond:9} (load {la}): GET {row['get_rps']:7.0f} req/s {row['get_mb_per_s']:6.0f} MB/s "
                    f"p50 {row['get_p50_ms']:6.2f} ms p99 {row['get_p99_ms']:7.2f} ms; uploads {row['uploads_per_s']:6.0f}/s "
                    f"({row['upload_mb_per_s']:5.0f} MB/s, p99 {row['upload_p99_ms']:.1f} ms); segd CPU {row['server_cpu_util']:.2f}, "
                    f"GET wrk CPU {res['client_cpu_s'] / (t1 - t0):.2f}, other jobs {other:.1f} CPU s")
                shutil.rmtree(os.path.join(root, "live"), ignore_errors=True)
                os.sync()
    finally:
        if fresh:
            fresh.close()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    os.makedirs(out, exist_ok=True)
    keys = list(rows[0].keys())
    with open(os.path.join(out, "raw.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    write_summary(out, rows, args, fstype, segd_bin, commit)


def write_summary(out, rows, args, fstype, segd_bin, commit):
    def vals(cond, key):
        return [r[key] for r in rows if r["condition"] == cond and r[key] == r[key]]

    def cell(cond, key, fmt):
        v = vals(cond, key)
        return f"{format(statistics.median(v), fmt)} ({format(min(v), fmt)}–{format(max(v), fmt)})" if v else "—"

    def per_round(key):
        out = []
        for r in sorted({x["round"] for x in rows}):
            a = [x[key] for x in rows if x["round"] == r and x["condition"] == "uploading"]
            b = [x[key] for x in rows if x["round"] == r and x["condition"] == "alone"]
            if a and b and b[0]:
                out.append(a[0] / b[0])
        return out

    def ratio(key):
        pr = per_round(key)
        med = statistics.median(vals("uploading", key)) / statistics.median(vals("alone", key))
        return f"{med:.2f} (per round {min(pr):.2f}–{max(pr):.2f})"

    segd_v = subprocess.run([segd_bin, "--version"], capture_output=True, text=True).stdout.strip()
    lines = [f"# Hot GETs with and without {args.uploaders} uploaders — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
             f"`benches/ingest_vs_reads.py`, harness commit {commit}; {segd_v} (`{segd_bin}`); kernel {os.uname().release}, {fstype}, {os.cpu_count()} CPUs.", "",
             f"One segd, 1 worker, pinned to CPU {args.server_cpu}, started fresh for every run; two listeners of the same process (GETs on :{GET_PORT}, "
             f"uploads on :{PUT_PORT}); `[cache] max_bytes = 1GiB`; `[ingest] fsync = {args.fsync}`. Hot set: {args.hot_files} random files of "
             f"{args.hot_size:,} bytes under /vod/hot/. GETs: wrk, 1 thread, {args.get_conns} keep-alive connections, random paths of the hot set, "
             f"{f'paced to about {args.get_rate} req/s (each connection waits {round(args.get_conns * 1000 / args.get_rate)} ms between requests), ' if args.get_rate else 'unpaced (closed loop, as fast as they go), '}"
             f"{args.warmup} s warm-up then {args.duration} s measured (`--latency`). Uploads (\"uploading\" rows): a second wrk, 1 thread, "
             f"{args.uploaders} keep-alive connections, each request a PUT of a {args.size:,}-byte random body to a distinct path under /live/ "
             f"(201 each, with an upload token), started {args.upload_lead} s before the measured GETs and running until after them; "
             f"the upload rate is the 201s received during the GET window. Both wrk processes on CPU {args.client_cpu} (they share it while uploading). "
             f"{args.rounds} rounds, the order of the two conditions alternating; uploads deleted and `sync` after each run. "
             "Cells: median (min–max over rounds).", "",
             "", f"CPU use during the measured window, median: GET wrk {statistics.median(r['get_wrk_cpu'] for r in rows if r['condition'] == 'alone'):.2f} "
             f"of a CPU alone, {statistics.median(r['get_wrk_cpu'] for r in rows if r['condition'] == 'uploading'):.2f} with the uploader wrk beside it on CPU {args.client_cpu}; "
             "when the GET wrk is near 1.0 alone, it (not segd) limits the GETs, and the uploader wrk taking part of its CPU "
             "slows the GETs down whatever segd does.", "",
             "| condition | GET req/s | GET MB/s | GET p50 ms | GET p90 ms | **GET p99 ms** | uploads/s | upload MB/s | upload p99 ms | segd CPU (of 1) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cond in ("alone", "uploading"):
        up = cond == "uploading"
        lines.append(f"| {'GETs alone' if not up else f'GETs + {args.uploaders} uploaders'} | {cell(cond, 'get_rps', '.0f')} | {cell(cond, 'get_mb_per_s', '.0f')} | "
                     f"{cell(cond, 'get_p50_ms', '.2f')} | {cell(cond, 'get_p90_ms', '.2f')} | **{cell(cond, 'get_p99_ms', '.2f')}** | "
                     f"{cell(cond, 'uploads_per_s', '.0f') if up else '—'} | {cell(cond, 'upload_mb_per_s', '.0f') if up else '—'} | "
                     f"{cell(cond, 'upload_p99_ms', '.1f') if up else '—'} | {cell(cond, 'server_cpu_util', '.2f')} |")
    lines += ["", "| with uploaders / alone | ratio (medians; per-round range) |", "|---|---|",
              f"| **GET p99** | **{ratio('get_p99_ms')}** |",
              f"| GET p50 | {ratio('get_p50_ms')} |",
              f"| GET req/s | {ratio('get_rps')} |", "",
              "Per run (load average before the run, from /proc/loadavg: 1, 5, 15 min):", "",
              "| round | condition | load avg before | GET req/s | GET p99 ms | uploads/s | other jobs CPU s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {r['condition']} | {r['loadavg_before']} | {r['get_rps']:.0f} | {r['get_p99_ms']:.2f} | "
                     f"{r['uploads_per_s']:.0f} | {r['other_cpu_s']:.1f} |")
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    log(f"results in {out}")


if __name__ == "__main__":
    main()
