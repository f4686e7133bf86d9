#!/usr/bin/env python3
"""segd's `large` rounds with per-round system-call and event counts (perf stat on the server)."""
import os, re, subprocess, sys, tempfile, time
root = "/var/tmp/segd-bench/root"
binary = sys.argv[1]; rounds = int(sys.argv[2]); tag = sys.argv[3]
server = sys.argv[4] if len(sys.argv) > 4 else "segd"
CLK = os.sysconf("SC_CLK_TCK")
files = []
for d, _, fs in os.walk(root):
    for fn in fs:
        p = "/" + os.path.relpath(os.path.join(d, fn), root)
        if "/hls-long/" in p and p.endswith(".ts"):
            files.append(p)
files.sort()
run = tempfile.mkdtemp(prefix="probe-")
paths = os.path.join(run, "paths"); open(paths, "w").write("\n".join(files) + "\n")
lua = os.path.join(run, "r.lua")
open(lua, "w").write('''local paths = {}
for line in io.lines(os.getenv("SEGD_BENCH_PATHS")) do paths[#paths + 1] = line end
math.randomseed(tonumber(os.getenv("SEGD_BENCH_SEED") or "1"))
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
''')
cfg = os.path.join(run, "segd.toml")
open(cfg, "w").write(f'''[server]
listen = ["127.0.0.1:18380"]
workers = 1
[admin]
listen = "127.0.0.1:18390"
[[volumes]]
path = "{root}"
[cache]
max_bytes = "1GiB"
open_files = 10000
[log]
access = "off"
level = "warn"
''')
ncfg = os.path.join(run, "nginx.conf")
open(ncfg, "w").write(f'''worker_processes 1; daemon off; pid {run}/nginx.pid; error_log {run}/err.log;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; open_file_cache max=10000;
server {{ listen 127.0.0.1:18380; root {root}; }} }}
''')
EV = ["context-switches", "syscalls:sys_enter_sendfile64", "syscalls:sys_enter_epoll_wait",
      "syscalls:sys_enter_preadv2", "syscalls:sys_enter_newfstat", "syscalls:sys_enter_writev",
      "syscalls:sys_enter_sendto", "syscalls:sys_enter_recvfrom", "net:net_dev_xmit", "tcp:tcp_probe",
      "skb:consume_skb", "irq:softirq_entry"]
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK
print("round,us_per_req,req_s," + ",".join(e.split(":")[-1] for e in EV) + ",meminfo_free_mb")
for r in range(rounds):
    if server == "segd":
        p = subprocess.Popen(["taskset", "-c", "0", binary, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = p.pid
    else:
        p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", ncfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        pid = int(subprocess.check_output(["pgrep", "-f", "nginx: worker"]).split()[-1])
    time.sleep(0.7)
    env = dict(os.environ, SEGD_BENCH_PATHS=paths, SEGD_BENCH_SEED=str(r + 1))
    wrk = lambda d: subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{d}s", "--timeout", "10s", "-s", lua, "http://127.0.0.1:18380"], capture_output=True, text=True, env=env).stdout
    wrk(2)
    c0 = cpu(pid)
    mode = os.environ.get("PROBE", "stat")
    if mode == "plain":
        st = subprocess.Popen(["sleep", "1000"])
    elif mode == "stat":
        st = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(EV), "-p", str(pid), "-o", f"{run}/stat{r}"])
    else:
        st = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-p", str(pid), "-o", f"/work/prof/rec-{tag}-{r}.data"], stderr=subprocess.DEVNULL)
    def cpu0():
        l = open("/proc/stat").read().split("\n")[1].split()
        return [int(x) for x in l[1:8]]
    s0 = cpu0()
    time.sleep(0.3)
    out = wrk(10)
    st.send_signal(2); st.wait()
    c1 = cpu(pid)
    s1 = cpu0()
    d = [b - a for a, b in zip(s0, s1)]
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    n = int(m.group(1)); secs = float(m.group(2))
    if "Non-2xx" in out: sys.exit("non-2xx")
    counts = {}
    for line in (open(f"{run}/stat{r}") if mode == "stat" else []):
        parts = line.strip().split(",")
        if len(parts) > 3 and parts[2] in EV:
            try: counts[parts[2]] = float(parts[0])
            except ValueError: counts[parts[2]] = float("nan")
    if mode != "stat": counts = {}
    free = int(re.search(r"MemFree:\s+(\d+)", open("/proc/meminfo").read()).group(1)) // 1024
    print(f"{r},{(c1-c0)/n*1e6:.1f},{n/secs:.0f}," + ",".join(f"{counts.get(e, float('nan'))/n:.2f}" for e in EV) + f",{free},cpu0 user/sys/irq/softirq ticks {d[0]}/{d[2]}/{d[5]}/{d[6]}", flush=True)
    if server == "segd":
        p.terminate(); p.wait()
    else:
        subprocess.run(["nginx", "-c", ncfg, "-s", "stop"]); p.wait()
    time.sleep(0.5)
