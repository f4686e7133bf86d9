#!/usr/bin/env python3
"""Soak: mixed load on segd for a fixed time, with aborted, reset and hostile clients mixed in.

Runs wrk in consecutive windows (p99 and errors per window) while a second thread keeps opening
connections that abort mid-body, reset, or send hostile requests. Samples segd's open
descriptors and RSS every window; both must end where they started (flat), errors must be 0.
"""
import argparse
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PORT, ADMIN = 18180, 18190


def set_ports(base):
    """Moves segd's ports (--port-base), for machines where others run servers."""
    global PORT, ADMIN
    if not 1024 < base < 32768 - 10:
        sys.exit(f"soak: --port-base {base}: give a port between 1025 and 32757")
    PORT, ADMIN = base, base + 10


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def metric(name):
    import urllib.request
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


HOSTILE = [
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: s\r\n\r\n",
    b"GET /vod/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: s\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /x.ts HTTP/1.1\r\nHost: s\r\nRange: bytes=" + b",".join(b"%d-%d" % (i, i + 1) for i in range(800)) + b"\r\n\r\n",
    b"GET /" + b"a" * 9000 + b".ts HTTP/1.1\r\nHost: s\r\n\r\n",
    b"GET /x.ts HTTP/1.1\r\nHost: s\r\nX: " + b"b" * 20000 + b"\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage",
]


def chaos(paths, stop, counts):
    rnd = random.Random(7)
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=2)
            kind = rnd.randrange(4)
            if kind == 0:  # abort mid-body
                s.sendall(f"GET {rnd.choice(paths)} HTTP/1.1\r\nHost: s\r\n\r\n".encode())
                s.recv(4096)
            elif kind == 1:  # reset
                s.sendall(f"GET {rnd.choice(paths)} HTTP/1.1\r\nHost: s\r\n\r\n".encode())
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif kind == 2:  # hostile request: must get a 4xx, never a 5xx
                s.sendall(rnd.choice(HOSTILE))
                data = s.recv(64)
                m = re.match(rb"HTTP/1.1 (\d+)", data)
                if m and m.group(1).startswith(b"5"):
                    counts["5xx"] += 1
            # kind 3: connect and vanish
            s.close()
            counts["chaos"] += 1
        except OSError:
            counts["chaos_errors"] += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--segd", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--port-base", type=int, default=PORT,
                    help="segd's port; its admin port is 10 above (default %(default)s; below 32768)")
    args = ap.parse_args()
    set_ports(args.port_base)
    for port in (PORT, ADMIN):
        # segd binds with SO_REUSEPORT: a server already there would silently take part of the load.
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            continue
        sys.exit(f"soak: port {port} is already served by another process (ss -ltnp); pass --port-base")
    run = tempfile.mkdtemp(prefix="segd-soak-")
    cfg = os.path.join(run, "segd.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{PORT}"]\n[admin]\nlisten = "127.0.0.1:{ADMIN}"\n[[volumes]]\npath = "{args.corpus}"\n[log]\nlevel = "warn"\n')
    files = []
    for d, _, fs in os.walk(args.corpus):
        files += ["/" + os.path.relpath(os.path.join(d, x), args.corpus) for x in fs if not x.startswith(".")]
    mix = [p for p in files if p.endswith((".m3u8", ".mpd"))] * 10 + random.Random(1).sample(files, min(2000, len(files)))
    plist = os.path.join(run, "paths.txt")
    with open(plist, "w") as f:
        f.write("\n".join(mix) + "\n")
    lua = os.path.join(run, "mix.lua")
    with open(lua, "w") as f:
        f.write(f'local p = {{}}\nfor l in io.lines("{plist}") do p[#p+1] = l end\nrequest = function() return wrk.format("GET", p[math.random(#p)]) end\n')
    raise_nofile()
    srv = subprocess.Popen([args.segd, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=open(os.path.join(run, "segd.log"), "w"), preexec_fn=raise_nofile)
    time.sleep(1)
    if srv.poll() is not None:
        sys.exit("soak: segd did not start: " + open(os.path.join(run, "segd.log")).read())
    stop = threading.Event()
    counts = {"chaos": 0, "chaos_errors": 0, "5xx": 0}
    t = threading.Thread(target=chaos, args=(files, stop, counts), daemon=True)
    t.start()
    start_fds, start_rss = fds(srv.pid), rss_mb(srv.pid)
    print(f"soak: {args.minutes} min, {args.conns} conns, windows of {args.window}s; start fds {start_fds}, RSS {start_rss:.1f} MB")
    print("| window | req/s | p99 ms | non-2xx | socket errors | fds | of which cached files | RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    rss_series = []
    end = time.time() + args.minutes * 60
    total_err = 0
    w = 0
    while time.time() < end:
        w += 1
        out = subprocess.run(["wrk", "-t1", f"-c{args.conns}", f"-d{args.window}s", "--timeout", "10s", "--latency", "-s", lua, f"http://127.0.0.1:{PORT}"], capture_output=True, text=True, preexec_fn=raise_nofile).stdout
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        n2 = int(non2xx.group(1)) if non2xx else 0
        se = sum(map(int, sock.groups())) if sock else 0
        total_err += n2
        p = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}.get(p99.group(2), 1) if p99 else float("nan")
        rss_series.append(rss_mb(srv.pid))
        print(f"| {w} | {float(rps.group(1)) if rps else 0:.0f} | {p:.2f} | {n2} | {se} | {fds(srv.pid)} | {metric('segd_open_files_cached')} | {rss_series[-1]:.1f} |", flush=True)
    stop.set()
    t.join(timeout=5)
    time.sleep(2)
    end_fds, end_rss = fds(srv.pid), rss_mb(srv.pid)
    # Descriptors the open-file cache holds on purpose (bounded by cache.open_files) are not leaks.
    cached = metric("segd_open_files_cached")
    conns = metric("segd_connections_open")
    srv.terminate()
    srv.wait(timeout=40)
    # Flat means: after warm-up, RSS does not climb past the first half's high-water mark (+5 %).
    # Allocators return and re-take memory, so the spread inside a half is not a leak signal.
    first, second = rss_series[: len(rss_series) // 2], rss_series[len(rss_series) // 2:]
    high = max(first) if first else start_rss
    growth = (max(second) - high) / max(high, 1) if second else 0.0
    print(f"soak: chaos connections {counts['chaos']} (errors {counts['chaos_errors']}), hostile 5xx {counts['5xx']}")
    print(f"soak: fds {start_fds} -> {end_fds} ({cached} cached files, {conns} open connections; other fds {end_fds - cached - conns})")
    print(f"soak: RSS {start_rss:.1f} -> {end_rss:.1f} MB; second half's peak vs first half's peak {growth * 100:+.1f} %; non-2xx {total_err}")
    ok = total_err == 0 and counts["5xx"] == 0 and end_fds - cached - conns <= start_fds + 2 and growth < 0.05
    print("soak: PASS" if ok else "soak: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
