#!/usr/bin/env python3
"""segd's HTTP/3 against Caddy's HTTP/3 (quic-go) and against segd's own HTTP/2 over TLS: same
corpus, same certificate, same connection and stream counts, in one run of interleaved rounds.

nginx 1.22 (Debian's) has no QUIC and Debian's h2load is built without it; Caddy 2.6 (Debian
package `caddy`, installed with apt-get if missing) serves HTTP/3 with quic-go and is the QUIC
peer. The h2-over-TLS rows (h2load) give segd's h3 ÷ h2tls ratio from the same rounds; Caddy's
own h2-over-TLS row shows how much of that ratio any QUIC server pays here.

Every server is pinned to CPU 0 (segd with one worker; Caddy's Go runtime sees one CPU), the load
generators to CPU 1: benches/h3load.rs (quinn + h3, authority and SNI `localhost`, every body's
length checked against the file) for HTTP/3, h2load for h2 over TLS. The order of the servers
rotates by round. Figure: server CPU time per request (utime+stime of every server process from
/proc). Fails loudly on a bind error, a port another process serves, a transport error, a
non-2xx or a body of the wrong length. Writes raw.csv and summary.md under
benches/results/<date>-<commit>-h3[-TAG]/.

Take the shared lock and check the load first (see README, Benchmarks):
  flock /work/bench.lock benches/h3_vs_tls.py [--rounds 5] [--duration 8] [--conns 32] [--streams 10]
      [--segd BIN] [--h3load BIN] [--baseline BIN] [--configs segd-h3,caddy-h3,segd-h2tls,caddy-h2tls]
      [--segd-env 'K=V ...'] [--client-max-udp-payload N] [--tag TAG]
"""
import argparse
import csv
import datetime
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "vs_nginx"))
import run  # noqa: E402
from run import (Segd, Server, cpu_times, die, ensure_free, proc_cpu, proc_rss_mb,  # noqa: E402
                 raise_nofile, run_h2load, wait_port)

# Below 32768, next to run.py's ports (18443 segd TLS, 18444 nginx TLS).
CADDY_TLS, CADDY_HTTP = 18445, 18446


def set_ports(base):
    """Moves every port as `vs_nginx/run.py --port-base` does (segd TLS on base + 363), Caddy's
    next to it (base + 365, + 366), for machines where others run servers."""
    global CADDY_TLS, CADDY_HTTP
    if not 1024 < base <= 32767 - 366:
        die(f"--port-base {base}: give a port between 1025 and {32767 - 366}")
    run.set_ports(base)
    CADDY_TLS, CADDY_HTTP = base + 365, base + 366


def udp_free(port):
    """A QUIC server on the port (with SO_REUSEPORT) would silently take part of the load."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        die(f"UDP port {port} is taken ({e}): ss -lunp")
    finally:
        s.close()


def target_dir(repo):
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["target_directory"]


def h3load_binary(repo):
    out = subprocess.run(["nice", "-n", "19", "cargo", "bench", "--bench", "h3load", "--no-run", "--message-format=json"],
                         cwd=repo, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "h3load" and msg.get("executable"):
            return msg["executable"]
    die("cannot find the h3load bench executable")


def run_h3(binary, port, paths_file, conns, streams, duration, max_udp_payload=None, default_rcvbuf=False):
    env = dict(os.environ)
    if max_udp_payload:
        env["H3LOAD_MAX_UDP_PAYLOAD"] = str(max_udp_payload)
    if default_rcvbuf:
        env["H3LOAD_DEFAULT_RCVBUF"] = "1"
    out = subprocess.run(["taskset", "-c", "1", binary, f"127.0.0.1:{port}", paths_file, str(conns), str(streams), str(duration)],
                         capture_output=True, text=True, env=env, preexec_fn=raise_nofile)
    if out.returncode != 0:
        die(f"h3load failed on port {port}: {out.stderr}")
    res = dict(kv.split("=") for kv in out.stdout.split())
    if int(res["errors"]) or int(res["non2xx"]) or int(res["badlen"]):
        die(f"h3load saw errors, non-2xx or bodies of the wrong length on port {port}: {out.stdout}")
    secs, reqs = float(res["seconds"]), int(res["requests"])
    return dict(requests=reqs, rps=reqs / secs, mbps=int(res["bytes"]) / secs / 1e6,
                p50_ms=float(res["p50_ms"]), p99_ms=float(res["p99_ms"]), errors=0,
                dgrams_per_req=int(res["rx_datagrams"]) / max(reqs, 1), rx_ios_per_req=int(res["rx_ios"]) / max(reqs, 1),
                acks_per_req=int(res["tx_datagrams"]) / max(reqs, 1), mtu=int(res["mtu"]))


class Caddy(Server):
    """Caddy serving the corpus over HTTPS (h1, h2) and HTTP/3 on one port, with the benchmark's
    certificate: no admin API, no automatic HTTPS (no ACME, no redirect listener), its state
    under the run directory, warnings only."""
    name = "caddy"

    def __init__(self, root, run):
        self.root, self.run = root, run

    def start(self):
        ensure_free([CADDY_TLS, CADDY_HTTP])
        conf = os.path.join(self.run, "Caddyfile")
        with open(conf, "w") as f:
            f.write(f"""{{
	admin off
	auto_https off
	http_port {CADDY_HTTP}
	https_port {CADDY_TLS}
	default_sni localhost
	log default {{
		output stderr
		level WARN
	}}
	servers {{
		protocols h1 h2 h3
	}}
}}
https://:{CADDY_TLS} {{
	bind 127.0.0.1
	tls {self.run}/cert.pem {self.run}/key.pem
	root * {self.root}
	file_server
}}
""")
        self.log = os.path.join(self.run, "caddy.log")
        home = os.path.join(self.run, "caddy-home")
        env = dict(os.environ, HOME=home, XDG_DATA_HOME=os.path.join(home, "data"), XDG_CONFIG_HOME=os.path.join(home, "config"))
        self.proc = subprocess.Popen(["taskset", "-c", "0", "caddy", "run", "--config", conf, "--adapter", "caddyfile"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env, preexec_fn=raise_nofile)
        wait_port(CADDY_TLS, self.proc, self.log)

    def pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid] + [int(p) for p in out]


def check_body(port, path, size):
    """One h2-over-TLS GET with curl: the server answers this authority with the file."""
    out = subprocess.run(["curl", "-sk", "--http2", f"https://localhost:{port}{path}", "-o", "/dev/null",
                          "-w", "%{http_code} %{size_download} %{http_version}"], capture_output=True, text=True).stdout.split()
    if out != ["200", str(size), "2"]:
        die(f"port {port}: GET {path} over h2 answered {out}, expected 200 with {size} bytes")


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.environ.get("SEGD_BENCH_DIR", "/var/tmp/segd-bench") + "/root")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--segd", help="segd binary (default: build this checkout in release)")
    ap.add_argument("--h3load", help="h3load binary (default: build it)")
    ap.add_argument("--baseline", help="another segd binary, run in the same rounds as base-h3 and base-h2tls")
    ap.add_argument("--configs", default="segd-h3,caddy-h3,segd-h2tls,caddy-h2tls")
    ap.add_argument("--segd-server", default="", help="extra [server] lines for segd (not the baseline)")
    ap.add_argument("--segd-env", default="", help="environment K=V pairs (space-separated) for segd (not the baseline)")
    ap.add_argument("--tag", default="", help="suffix of the results directory")
    ap.add_argument("--port-base", type=int, default=18080,
                    help="move every port as vs_nginx/run.py does: segd TLS on base + 363, Caddy on + 365 and + 366 (default %(default)s)")
    ap.add_argument("--client-max-udp-payload", type=int, default=None,
                    help="h3load's max_udp_payload_size transport parameter (default quinn's 1472; "
                         "larger lets a server send bigger packets on loopback, which no internet path carries)")
    ap.add_argument("--client-default-rcvbuf", action="store_true",
                    help="h3load keeps the kernel's default UDP receive buffer (it overflows: ~5 %% loss on loopback)")
    ap.add_argument("--summarize", metavar="DIR", help="only rewrite DIR/summary.md from its raw.csv and meta.json")
    args = ap.parse_args()
    set_ports(args.port_base)
    if args.summarize:
        summarize(args.summarize)
        return
    repo = os.path.dirname(HERE)
    raise_nofile()
    configs = args.configs.split(",")
    if args.baseline and not any(c.startswith("base-") for c in configs):
        configs += ["base-h3", "base-h2tls"]
    if any(c.startswith("caddy") for c in configs) and not shutil.which("caddy"):
        subprocess.run(["apt-get", "install", "-y", "caddy"], check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if args.segd:
        segd_bin = os.path.abspath(args.segd)
    else:
        subprocess.run(["nice", "-n", "19", "cargo", "build", "--release", "-q", "--bin", "segd"], cwd=repo, check=True)
        segd_bin = os.path.join(target_dir(repo), "release", "segd")
    h3 = os.path.abspath(args.h3load) if args.h3load else h3load_binary(repo)
    root = os.path.abspath(args.corpus)
    if not os.path.isdir(root):
        die(f"no corpus at {root}: run benches/corpus.sh {os.path.dirname(root)} small")
    files = sorted("/" + os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    small = [p for p in files if "/hls/320k/" in p and p.endswith(".ts")]
    hot = random.Random(42).sample(small, min(500, len(small)))
    sizes = {p: os.path.getsize(root + p) for p in hot}
    run = tempfile.mkdtemp(prefix="segd-h3-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", os.path.join(run, "key.pem"), "-out", os.path.join(run, "cert.pem"), "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    paths_file = os.path.join(run, "hot.txt")
    with open(paths_file, "w") as f:
        f.write("".join(f"{p}\t{sizes[p]}\n" for p in hot))
    uris = {}
    for name, port in (("segd", run.SEGD_TLS), ("caddy", CADDY_TLS)):
        uris[name] = os.path.join(run, f"uris-{name}.txt")
        with open(uris[name], "w") as f:
            f.write("".join(f"https://127.0.0.1:{port}{p}\n" for p in hot))
    print(f"h3: load average {loadavg():.2f} at start; {len(hot)} hot segments, mean {statistics.mean(sizes.values()) / 1024:.0f} KiB")

    def server(config):
        who = config.split("-")[0]
        if who == "caddy":
            return Caddy(root, run), CADDY_TLS
        srv = Segd(args.baseline if who == "base" else segd_bin, root, run, True, name=who)
        srv.extra_tls = "http3 = true"
        if who == "segd":
            srv.extra_server = args.segd_server
        return srv, run.SEGD_TLS

    rows = []
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for config in order:
            srv, port = server(config)
            load_before = loadavg()
            udp_free(port)
            saved = dict(os.environ)
            if config.startswith("segd-"):
                os.environ.update(kv.split("=", 1) for kv in args.segd_env.split())
            try:
                srv.start()
            finally:
                os.environ.clear()
                os.environ.update(saved)
            try:
                if config.endswith("-h3"):
                    load = lambda d: run_h3(h3, port, paths_file, args.conns, args.streams, d, args.client_max_udp_payload,
                                            args.client_default_rcvbuf)
                else:
                    load = lambda d: run_h2load(port, uris["caddy" if config.startswith("caddy") else "segd"], args.conns, args.streams, d, True)
                if r == 0:
                    probe = hot[0]
                    check_body(port, probe, sizes[probe])
                load(2)
                c0 = proc_cpu(srv.pids())
                busy0, steal0 = cpu_times()
                res = load(args.duration)
                c1 = proc_cpu(srv.pids())
                busy1, steal1 = cpu_times()
                res["rss_mb"] = proc_rss_mb(srv.pids())
            finally:
                srv.stop()
            res.pop("raw", None)
            res["cpu_us_per_req"] = (c1 - c0) / max(res["requests"], 1) * 1e6
            # What else ran on the server's core, and the load average before the round.
            res["cpu0_other_pct"] = max(0.0, (busy1 - busy0) - (c1 - c0)) / args.duration * 100
            res["steal_pct"] = (steal1 - steal0) / args.duration * 100
            res["load1"] = load_before
            rows.append(dict(round=r + 1, config=config, **res))
            extra = f"  {res['dgrams_per_req']:6.1f} dgrams/req mtu {res['mtu']}" if "mtu" in res else ""
            print(f"h3: round {r + 1} {config:12}: {res['rps']:8.0f} req/s {res['mbps']:7.1f} MB/s  p50 {res['p50_ms']:6.2f} ms  "
                  f"p99 {res['p99_ms']:6.2f} ms  cpu {res['cpu_us_per_req']:7.1f} us/req  cpu0 other {res['cpu0_other_pct']:4.1f} %  "
                  f"load {load_before:.2f}{extra}", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    out = os.path.join(repo, "benches/results", f"{now.strftime('%Y-%m-%d-%H%M')}-{commit}-h3" + (f"-{args.tag}" if args.tag else ""))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "raw.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    meta = dict(when=now.strftime('%Y-%m-%d %H:%M UTC'), commit=commit, rounds=args.rounds, duration=args.duration, conns=args.conns,
                streams=args.streams, hot=len(hot), mean_kib=statistics.mean(sizes.values()) / 1024,
                client_max_udp_payload=args.client_max_udp_payload, client_default_rcvbuf=args.client_default_rcvbuf, segd_env=args.segd_env, segd_server=args.segd_server,
                segd=segd_bin, baseline=args.baseline,
                caddy=subprocess.run(["caddy", "version"], capture_output=True, text=True).stdout.strip() if shutil.which("caddy") else "not run")
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    summarize(out)
    shutil.rmtree(run, ignore_errors=True)


KEYS = ["round", "config", "requests", "rps", "mbps", "p50_ms", "p99_ms", "cpu_us_per_req", "rss_mb", "dgrams_per_req",
        "rx_ios_per_req", "acks_per_req", "mtu", "cpu0_other_pct", "steal_pct", "load1"]


def summarize(out):
    """summary.md from a results directory's raw.csv and meta.json."""
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    rows = []
    with open(os.path.join(out, "raw.csv")) as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "config" else (int(v) if k == "round" else float(v))) for k, v in r.items() if v != ""})

    def med(config, k):
        vals = [x[k] for x in rows if x["config"] == config and k in x]
        return statistics.median(vals) if vals else float("nan")

    def per_round(a, b, k="cpu_us_per_req"):
        by = {(x["round"], x["config"]): x[k] for x in rows}
        vals = [by[(n, a)] / by[(n, b)] for n in range(1, meta["rounds"] + 1) if (n, a) in by and (n, b) in by and by[(n, b)]]
        if not vals:
            return "—"
        return f"**{statistics.median(vals):.2f}** ({min(vals):.2f}–{max(vals):.2f})"

    present = list(dict.fromkeys(x["config"] for x in rows))
    lines = [f"# segd HTTP/3 vs Caddy HTTP/3 and segd HTTP/2 over TLS — {meta['when']}, commit {meta['commit']}", "",
             f"Medians of {meta['rounds']} rounds (server order rotating), {meta['duration']} s each, {meta['conns']} connections x {meta['streams']} streams, "
             f"hot set of {meta['hot']} small segments (mean {meta['mean_kib']:.0f} KiB), one certificate (P-256); "
             "servers pinned to CPU 0 (segd one worker, Caddy GOMAXPROCS 1 from its affinity), load generator on CPU 1 "
             f"(h3: benches/h3load.rs, quinn client, max_udp_payload_size {meta['client_max_udp_payload'] or '1472 (default)'}, "
             f"UDP receive buffer {'kernel default' if meta.get('client_default_rcvbuf') else '4 MiB'}, "
             "every body length checked; h2 over TLS: h2load). "
             f"Caddy {meta['caddy']}. segd: `{os.path.basename(meta['segd'])}`" +
             (f", baseline: `{os.path.basename(meta['baseline'])}`" if meta.get("baseline") else "") +
             (f", segd environment `{meta['segd_env']}`" if meta.get("segd_env") else "") +
             (f", segd [server] `{meta['segd_server']}`" if meta.get("segd_server") else "") + ". "
             f"Load average before each round: {min(x['load1'] for x in rows):.2f}–{max(x['load1'] for x in rows):.2f}.", "",
             "| config | req/s | MB/s | p50 ms | p99 ms | CPU µs/req | server datagrams/req | client ACK datagrams/req | path MTU | cpu0 other % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in present:
        lines.append(f"| {c} | {med(c, 'rps'):.0f} | {med(c, 'mbps'):.1f} | {med(c, 'p50_ms'):.2f} | {med(c, 'p99_ms'):.2f} | "
                     f"{med(c, 'cpu_us_per_req'):.1f} | {med(c, 'dgrams_per_req'):.1f} | {med(c, 'acks_per_req'):.1f} | "
                     f"{med(c, 'mtu'):.0f} | {med(c, 'cpu0_other_pct'):.1f} |".replace("| nan ", "| — "))
    lines += ["", "Ratios of CPU per request, median of the per-round ratios (min–max); the two halves of a ratio ran in the same round:", ""]
    pairs = [("segd-h3", "caddy-h3", "segd h3 ÷ Caddy h3"), ("segd-h3", "segd-h2tls", "segd h3 ÷ segd h2 over TLS (goal ≤ 2.0)"),
             ("caddy-h3", "caddy-h2tls", "Caddy h3 ÷ Caddy h2 over TLS"), ("segd-h2tls", "caddy-h2tls", "segd h2tls ÷ Caddy h2tls"),
             ("segd-h3", "base-h3", "segd h3 ÷ baseline h3"), ("base-h3", "base-h2tls", "baseline h3 ÷ baseline h2 over TLS")]
    if "base-h2tls" not in present:
        pairs.append(("base-h3", "segd-h2tls", "baseline h3 ÷ segd h2 over TLS (the h2 path is the same code in both)"))
    for a, b, what in pairs:
        if a in present and b in present:
            lines.append(f"- {what}: {per_round(a, b)}; req/s {per_round(a, b, 'rps')}; p50 {per_round(a, b, 'p50_ms')}; p99 {per_round(a, b, 'p99_ms')}")
    lines += ["", "Raw rounds: raw.csv; run parameters: meta.json."]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"h3: results in {out}")


if __name__ == "__main__":
    main()
