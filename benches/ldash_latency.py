#!/usr/bin/env python3
"""LL-DASH latency through segd: fragments read while the segment is still being uploaded
(read-while-write, docs/live.md) against fetching complete segments only (what a server without
read-while-write, e.g. nginx, can offer).

    python3 benches/ldash_latency.py [--segd target/release/segd] [--duration 60] [--runs 2] [--out DIR]

Per run (segd started fresh, one temporary volume, `[ingest]` + `[live]` on /live/, fsync off
so the commit costs what nginx's does):

  ffmpeg -re -f lavfi -i sine=frequency=440:sample_rate=48000 -t <duration> -c:a aac -b:a 128k
         -f dash -seg_duration 2 -frag_type duration -frag_duration 0.2 -window_size 5
         -streaming 1 -ldash 1 -method PUT http://127.0.0.1:<proxy>/__token__=<token>/live/d/manifest.mpd

(ffmpeg 5.1 needs `-frag_type duration` for `-frag_duration` to count with `-streaming 1`;
without it every AAC frame, 21 ms, is its own fragment.) ffmpeg talks to segd through a small
TCP proxy in this script that forwards every byte at once and, for each media segment upload
(a chunked PUT), notes when each piece of the body had been handed to segd (after send()
returned: loopback delivers into segd's socket within the call), when the terminating chunk
went through, and when segd's 201/204 came back.

Two clients fetch every media segment from segd (not through the proxy):
  live      GETs the segment as soon as the proxy has seen the start of its upload (the moment
            an LL-DASH client computing the URL from the SegmentTemplate and the clock would ask
            for it; a 404 before segd has registered the upload is retried every 2 ms and
            counted), and streams it as segd sends it (chunked, while the upload grows).
  complete  GETs the segment when segd's 201/204 for its upload has come back: the earliest a
            client can have it from a server that only serves complete files (a lower bound for
            nginx: a real player also has to learn that the segment is complete).
Each response is read with kernel receive timestamps (SO_TIMESTAMPNS), so the client's own
delays are not counted. For every fragment (moof+mdat, located by parsing the uploaded bytes) the
delay is: arrival of its last byte at the client - the moment its last byte was handed to segd.
Both clients must receive exactly the bytes ffmpeg uploaded; any other status than 200, any
error, or a live response that was not streamed while growing is reported (and fails the run).

Writes raw.csv and summary.md under benches/results/<date>-<commit>-live/ (or --out), next to
benches/live_wakeup.py's section.
"""
import argparse
import datetime
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import live_wakeup as lw  # noqa: E402  (segd config, token, results helpers)

PORT, ADMIN, PROXY = 18380, 18390, 18381


def set_ports(base):
    """Moves every port (--port-base), for machines where others run servers."""
    global PORT, ADMIN, PROXY
    if not 1024 < base < 32768 - 10:
        die(f"--port-base {base}: give a port between 1025 and 32757")
    PORT, ADMIN, PROXY = base, base + 10, base + 1
SO_TIMESTAMPNS = lw.SO_TIMESTAMPNS
CMSG_TS = lw.CMSG_TS
now = lw.now


def die(msg):
    print(f"ldash_latency: FAIL: {msg}", file=sys.stderr, flush=True)
    os._exit(1)


def log(msg):
    print(f"ldash_latency: {msg}", flush=True)


class Dechunk:
    """Incremental HTTP/1.1 chunked decoder: feed raw bytes, get body bytes."""

    def __init__(self):
        self.state, self.line, self.left, self.done = "size", b"", 0, False

    def feed(self, data):
        out = bytearray()
        i = 0
        while i < len(data) and not self.done:
            if self.state in ("size", "trailer", "crlf"):
                j = data.find(b"\n", i)
                if j < 0:
                    self.line += data[i:]
                    break
                line, self.line, i = (self.line + data[i:j]).rstrip(b"\r"), b"", j + 1
                if self.state == "size":
                    self.left = int(line.split(b";")[0].strip() or b"0", 16)
                    self.state = "data" if self.left else "trailer"
                elif self.state == "crlf":
                    self.state = "size"
                elif line == b"":  # end of trailers
                    self.done = True
            else:
                take = min(self.left, len(data) - i)
                out += data[i:i + take]
                i += take
                self.left -= take
                if self.left == 0:
                    self.state = "crlf"
        return bytes(out), data[i:] if self.done else b""


class BodyReader:
    """Incremental HTTP message body: chunked, Content-Length, or none."""

    def __init__(self, headers):
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.cl = int(headers.get("content-length", "0")) if not self.chunked else None
        self.dec = Dechunk() if self.chunked else None
        self.got = 0
        self.done = not self.chunked and self.cl == 0

    def feed(self, data):
        """Returns (body bytes, leftover bytes after the end of this message)."""
        if self.chunked:
            body, rest = self.dec.feed(data)
            self.done = self.dec.done
        else:
            take = min(self.cl - self.got, len(data))
            body, rest = data[:take], data[take:]
            self.done = self.got + take >= self.cl
        self.got += len(body)
        return body, rest


def parse_head(buf):
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, end + 4


def canonical(path):
    """/__token__=…/live/d/x.m4s?… → /live/d/x.m4s"""
    path = path.split("?", 1)[0]
    return re.sub(r"^/__token__=[^/]*", "", path)


class Upload:
    def __init__(self, method, path, t_head):
        self.method, self.path, self.t_head = method, path, t_head
        self.body = bytearray()
        self.marks = []          # (body bytes handed to segd so far, time)
        self.t_end = None        # terminating chunk handed to segd
        self.t_resp = None       # segd's answer arrived at the proxy
        self.status = None


class Proxy:
    """ffmpeg → proxy → segd; records the timing of every request body."""

    def __init__(self, on_start, on_answer):
        self.on_start, self.on_answer = on_start, on_answer
        self.uploads = []
        self.lock = threading.Lock()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", PROXY))
        self.srv.listen(64)
        self.stopping = False
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def accept_loop(self):
        while not self.stopping:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self.conn, args=(c,), daemon=True).start()

    def conn(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        u = socket.create_connection(("127.0.0.1", PORT))
        u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = []  # requests in order, answered in order
        down = threading.Thread(target=self.downstream, args=(u, c, sent), daemon=True)
        down.start()
        buf, cur, reader = b"", None, None
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            # Parse first (a request is registered before segd can answer it), forward, then
            # stamp what this piece completed with the time it had been handed to segd.
            buf += data
            heads, marks, ends = [], [], []
            while buf:
                if reader is None:
                    h = parse_head(buf)
                    if h is None:
                        break
                    line, headers, n = h
                    method, path = line.split(" ")[:2]
                    cur = Upload(method, canonical(path), None)
                    reader = BodyReader(headers)
                    with self.lock:
                        self.uploads.append(cur)
                        sent.append(cur)
                    heads.append(cur)
                    buf = buf[n:]
                    if reader.done:
                        ends.append(cur)
                        reader = None
                    continue
                body, rest = reader.feed(buf)
                if body:
                    cur.body += body
                    marks.append((cur, len(cur.body)))
                buf = rest
                if reader.done:
                    ends.append(cur)
                    reader = None
                else:
                    break
            u.sendall(data)
            t = now()
            for r in heads:
                r.t_head = t
            for r, n in marks:
                r.marks.append((n, t))
            for r in ends:
                r.t_end = t
            for r in heads:
                if r.method == "PUT":
                    self.on_start(r)
        try:
            u.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        down.join(30)
        c.close()
        u.close()

    def downstream(self, u, c, sent):
        buf, k, reader = b"", 0, None
        while True:
            try:
                data = u.recv(65536)
            except OSError:
                data = b""
            if not data:
                return
            t = now()
            buf += data
            while buf:
                if reader is None:
                    h = parse_head(buf)
                    if h is None:
                        break
                    line, headers, n = h
                    if line.split(" ")[1].startswith("1"):  # 100 Continue
                        buf = buf[n:]
                        continue
                    with self.lock:
                        req = sent[k] if k < len(sent) else None
                    k += 1
                    if req is not None:
                        req.t_resp, req.status = t, int(line.split(" ")[1])
                        self.on_answer(req)
                    reader = BodyReader(headers)
                    buf = buf[n:]
                    if reader.done:
                        reader = None
                    continue
                _, buf = reader.feed(buf)
                if reader.done:
                    reader = None
                else:
                    break
            try:
                c.sendall(data)
            except OSError:
                pass

    def close(self):
        self.stopping = True
        try:
            self.srv.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.srv.close()
        self.thread.join(5)


class Fetch:
    """One GET from segd, with the kernel arrival time of every piece of the body."""

    def __init__(self, path, mode, t_trigger):
        self.path, self.mode, self.t_trigger = path, mode, t_trigger
        self.status, self.chunked, self.retries_404, self.error = None, None, 0, None
        self.body = bytearray()
        self.marks = []  # (body bytes received so far, kernel time, user time)
        self.t_first = None

    def run(self):
        deadline = time.time() + 10
        while True:
            try:
                self.once()
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.error = f"{type(e).__name__}: {e}"
                return
            if self.status == 404 and self.mode == "live" and time.time() < deadline:
                self.retries_404 += 1
                time.sleep(0.002)
                continue
            return

    def once(self):
        self.body, self.marks, self.t_first = bytearray(), [], None
        s = socket.create_connection(("127.0.0.1", PORT), timeout=15)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: ldash_latency/{self.mode}\r\nConnection: close\r\n\r\n".encode())
        buf, reader = b"", None
        try:
            while True:
                data, anc, _, _ = s.recvmsg(65536, CMSG_TS)
                if not data:
                    break
                tk, tu = lw.ts_of(anc), now()
                if self.t_first is None:
                    self.t_first = tk
                if reader is None:
                    buf += data
                    h = parse_head(buf)
                    if h is None:
                        continue
                    line, headers, n = h
                    self.status = int(line.split(" ")[1])
                    self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                    self.cache_control = headers.get("cache-control", "")
                    reader = BodyReader(headers)
                    data = buf[n:]
                body, _ = reader.feed(data)
                if body:
                    self.body += body
                    self.marks.append((len(self.body), tk, tu))
                if reader.done:
                    break
            if reader is None or not reader.done:
                raise IOError(f"response ended early ({len(self.body)} body bytes, status {self.status})")
        finally:
            s.close()


def fragment_ends(body):
    """Byte offsets at which each fragment (… moof, mdat) of a CMAF segment ends."""
    ends, i = [], 0
    while i + 8 <= len(body):
        size, typ = struct.unpack(">I4s", body[i:i + 8])
        if size < 8:
            break
        i += size
        if typ == b"mdat":
            ends.append(i)
    return ends


def first_at(marks, off, idx=1):
    for m in marks:
        if m[0] >= off:
            return m[idx]
    return None


def pct(v, p):
    return lw.pct(v, p)


def one_run(binary, run_dir, rnd, duration, token_path):
    # The wake-up bench's config (lw.PORT/ADMIN are set to this bench's ports in main), with
    # fsync off: the commit then costs what nginx's does (write, rename).
    segd = lw.Segd(binary, run_dir, pinned=False, fsync=False)
    fetches, threads = [], []
    lock = threading.Lock()

    def start(fetch):
        t = threading.Thread(target=fetch.run, daemon=True)
        with lock:
            fetches.append(fetch)
            threads.append(t)
        t.start()

    def on_start(up):
        if up.path.endswith(".m4s") and "/chunk-" in up.path:
            start(Fetch(up.path, "live", now()))

    def on_answer(up):
        if up.method == "PUT" and up.path.endswith(".m4s") and "/chunk-" in up.path and up.status in (201, 204):
            start(Fetch(up.path, "complete", now()))

    proxy = Proxy(on_start, on_answer)
    try:
        segd.start()
    except BaseException:
        proxy.close()
        raise
    ff_log = os.path.join(run_dir, f"ffmpeg-{rnd}.log")
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-f", "lavfi",
           "-i", "sine=frequency=440:sample_rate=48000", "-t", str(duration), "-c:a", "aac", "-b:a", "128k",
           "-f", "dash", "-seg_duration", "2", "-frag_type", "duration", "-frag_duration", "0.2",
           "-window_size", "5", "-streaming", "1", "-ldash", "1", "-method", "PUT",
           f"http://127.0.0.1:{PROXY}{token_path}"]
    try:
        m0 = segd.metrics()
        cpu0 = lw.proc_cpu(segd.pid)
        ff = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=open(ff_log, "w"), timeout=duration + 60)
        if ff.returncode != 0:
            die(f"ffmpeg exited {ff.returncode}: {lw.tail(ff_log)}")
        time.sleep(1)
        for t in list(threads):
            t.join(15)
        m1 = segd.metrics()
        cpu1 = lw.proc_cpu(segd.pid)
        # The MPD as segd serves it: names the segments the way the clients did.
        mpd = Fetch("/live/d/manifest.mpd", "mpd", now())
        mpd.run()
    finally:
        proxy.close()
        segd.stop()
    if mpd.status != 200 or b"chunk-stream$RepresentationID$-$Number%05d$.m4s" not in mpd.body:
        die(f"manifest from segd: status {mpd.status}, no expected SegmentTemplate: {bytes(mpd.body[:500])!r}")
    bad = [u for u in proxy.uploads if u.status not in (200, 201, 204)]
    if bad:
        die(f"segd refused uploads: {[(u.method, u.path, u.status) for u in bad][:5]}")

    ups = {u.path: u for u in proxy.uploads if u.method == "PUT" and "/chunk-" in u.path}
    errs, frag_rows, seg_rows = [], [], []
    by = {}
    for f in fetches:
        by.setdefault((f.path, f.mode), f)
        if f.error or f.status != 200:
            errs.append(f"{f.mode} {f.path}: status {f.status} {f.error or ''} ({f.retries_404} retries after 404)")
    last_path = max(ups) if ups else None
    final_not_streamed = 0
    for path, up in sorted(ups.items()):
        live, comp = by.get((path, "live")), by.get((path, "complete"))
        if live is None or comp is None:
            errs.append(f"{path}: missing fetch (live {live is not None}, complete {comp is not None})")
            continue
        if live.error or comp.error or live.status != 200 or comp.status != 200:
            continue
        body = bytes(up.body)
        if bytes(live.body) != body:
            errs.append(f"{path}: live body differs from the upload ({len(live.body)} vs {len(body)} bytes)")
            continue
        if bytes(comp.body) != body:
            errs.append(f"{path}: complete body differs from the upload ({len(comp.body)} vs {len(body)} bytes)")
            continue
        if not live.chunked and path == last_path:
            # ffmpeg writes the short final segment at exit in one go: nothing to stream.
            final_not_streamed += 1
            continue
        if not live.chunked:
            errs.append(f"{path}: live GET was not streamed from the growing upload (got the complete file)")
            continue
        ends = fragment_ends(body)
        for k, e in enumerate(ends):
            t_in = first_at(up.marks, e)
            t_live = first_at(live.marks, e)
            t_comp = first_at(comp.marks, e)
            t_live_u = first_at(live.marks, e, 2)
            if None in (t_in, t_live, t_comp, t_live_u):
                errs.append(f"{path} fragment {k}: no time (kernel receive timestamp missing?)")
                continue
            frag_rows.append(dict(run=rnd, segment=path.rsplit("/", 1)[1], frag=k,
                                  live_ms=(t_live - t_in) * 1000, complete_ms=(t_comp - t_in) * 1000,
                                  live_user_ms=(t_live_u - t_in) * 1000))
        seg_rows.append(dict(
            run=rnd, segment=path.rsplit("/", 1)[1], bytes=len(body), fragments=len(ends),
            upload_s=up.t_end - up.t_head,
            commit_ms=(up.t_resp - up.t_end) * 1000,
            # complete-only: from the end of the upload to the client's first byte of the segment
            complete_first_byte_ms=(comp.t_first - up.t_end) * 1000,
            # live: the segment's first fragment, from segd having it to the client having it
            live_first_frag_ms=frag_rows[-len(ends)]["live_ms"] if ends and frag_rows else float("nan"),
            retries_404=live.retries_404,
            live_no_store=live.cache_control == "no-store",
        ))
    if errs:
        die(f"{len(errs)} problems, e.g.: " + "; ".join(errs[:6]))
    if not frag_rows:
        die("no fragments measured")
    extra = dict(
        growing_reads=m1.get("segd_live_growing_reads_total", 0) - m0.get("segd_live_growing_reads_total", 0),
        segd_cpu_s=cpu1 - cpu0,
        uploads=len(proxy.uploads),
        final_not_streamed=final_not_streamed,
        ffmpeg_warnings=lw.tail(ff_log).strip().replace("\n", " | ")[:600],
    )
    return frag_rows, seg_rows, extra


def main():
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(lw.REPO, "target"))
    ap.add_argument("--segd", default=os.path.join(target, "release", "segd"))
    ap.add_argument("--duration", type=int, default=60, help="seconds of stream per run")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--port-base", type=int, default=PORT,
                    help="segd's port; the pacing proxy takes the next one, segd's admin port is 10 above (default %(default)s; below 32768)")
    ap.add_argument("--out")
    args = ap.parse_args()
    sys.setswitchinterval(0.0005)
    set_ports(args.port_base)
    lw.PORT, lw.ADMIN = PORT, ADMIN  # lw.Segd's config and start() use the module's ports
    if not os.access(args.segd, os.X_OK):
        die(f"no segd binary at {args.segd}")
    if not shutil.which("ffmpeg"):
        die("no ffmpeg")
    for p in (PORT, ADMIN, PROXY):
        lw.check_port_free(p)
    out = args.out or os.path.join(HERE, "results", f"{datetime.datetime.now().strftime('%Y-%m-%d-%H%M')}-{lw.git_rev()}-live")
    os.makedirs(out, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="segd-ldash-")
    seg = lw.Segd(args.segd, run_dir, False)
    token = lw.sign_token(args.segd, seg.cfg)
    lw.keep_timestamps()
    token_path = f"/__token__={urllib.parse.quote(token, safe='')}/live/d/manifest.mpd"
    ffv = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0].split(" Copyright")[0]
    load0 = os.getloadavg()
    log(f"segd {args.segd}; {ffv}; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    frags, segs, extras = [], [], []
    t0 = time.time()
    for rnd in range(1, args.runs + 1):
        f, s, x = one_run(args.segd, run_dir, rnd, args.duration, token_path)
        frags += f
        segs += s
        extras.append(x)
        lv = [r["live_ms"] for r in f]
        cp = [r["complete_ms"] for r in f]
        log(f"run {rnd}: {len(s)} segments, {len(f)} fragments; per-fragment delay live p50 {pct(lv, 50):.2f} ms "
            f"p99 {pct(lv, 99):.2f} ms max {max(lv):.2f} ms | complete-only p50 {pct(cp, 50):.0f} ms p99 {pct(cp, 99):.0f} ms | "
            f"growing reads {x['growing_reads']:.0f}, 404 retries {sum(r['retries_404'] for r in s)}, load {os.getloadavg()[0]:.2f}")
        if x["ffmpeg_warnings"]:
            log(f"run {rnd}: ffmpeg said: {x['ffmpeg_warnings']}")
    elapsed = time.time() - t0
    shutil.rmtree(run_dir, ignore_errors=True)

    write_raw(out, frags, segs)
    write_summary(out, frags, segs, extras, args, load0, elapsed, ffv)


def write_raw(out, frags, segs):
    import csv
    path = os.path.join(out, "raw.csv")
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = [r for r in csv.DictReader(f) if r["bench"] != "ldash_latency"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bench", "case", "run", "metric", "value"])
        w.writeheader()
        w.writerows(old)
        for r in frags:
            case = f"{r['segment']} frag {r['frag']}"
            for k in ("live_ms", "complete_ms", "live_user_ms"):
                w.writerow(dict(bench="ldash_latency", case=case, run=r["run"], metric=k, value=f"{r[k]:.3f}"))
        for r in segs:
            for k, v in r.items():
                if k in ("run", "segment"):
                    continue
                w.writerow(dict(bench="ldash_latency", case=r["segment"], run=r["run"], metric=k,
                                value=f"{v:.3f}" if isinstance(v, float) else v))


def write_summary(out, frags, segs, extras, args, load0, elapsed, ffv):
    lv = [r["live_ms"] for r in frags]
    cp = [r["complete_ms"] for r in frags]
    lu = [r["live_user_ms"] for r in frags]
    gain = [r["complete_ms"] - r["live_ms"] for r in frags]
    first_l = [r["live_ms"] for r in frags if r["frag"] == 0]
    first_c = [r["complete_ms"] for r in frags if r["frag"] == 0]
    nper = {(r["run"], r["segment"]): r["frag"] for r in frags}
    last_l = [r["live_ms"] for r in frags if r["frag"] == nper[(r["run"], r["segment"])]]
    cfb = [s["complete_first_byte_ms"] for s in segs]
    commit = [s["commit_ms"] for s in segs]
    up = [s["upload_s"] for s in segs]
    nfr = [s["fragments"] for s in segs]
    f2 = lambda v: f"{v:.2f}"
    f0 = lambda v: f"{v:.0f}"
    lines = [
        "## LL-DASH latency through segd (`benches/ldash_latency.py`)", "",
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {lw.git_rev()}, {ffv}. "
        f"{args.runs} runs × {args.duration} s of stream ({len(segs)} segments of 2 s, {len(frags)} fragments of "
        f"~0.2 s; {statistics.median(nfr):.0f} fragments per segment), segd fresh each run, fsync off. "
        f"Load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; bench took {elapsed:.0f} s.", "",
        "Per-fragment delay = arrival of the fragment's last byte at the client (kernel timestamp) − the moment "
        "the proxy in front of segd had handed that byte to segd. *live*: GET issued when the segment's upload "
        "starts, streamed by segd while it grows. *complete-only*: GET issued when segd's 201/204 for the "
        "segment's upload arrives (what a server without read-while-write can offer at best).", "",
        "| | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|",
        f"| live (read-while-write), all fragments | {f2(pct(lv, 50))} | {f2(pct(lv, 99))} | {f2(max(lv))} |",
        f"| live, same, client user-space clock | {f2(pct(lu, 50))} | {f2(pct(lu, 99))} | {f2(max(lu))} |",
        f"| complete-only, all fragments | {f0(pct(cp, 50))} | {f0(pct(cp, 99))} | {f0(max(cp))} |",
        f"| gain per fragment (complete-only − live) | {f0(pct(gain, 50))} | {f0(pct(gain, 99))} | {f0(max(gain))} |",
        f"| live, first fragment of each segment | {f2(pct(first_l, 50))} | {f2(pct(first_l, 99))} | {f2(max(first_l))} |",
        f"| live, last fragment of each segment (its upload's commit follows) | {f2(pct(last_l, 50))} | {f2(pct(last_l, 99))} | {f2(max(last_l))} |",
        f"| complete-only, first fragment of each segment | {f0(pct(first_c, 50))} | {f0(pct(first_c, 99))} | {f0(max(first_c))} |",
        f"| complete-only: upload finished (last chunk to segd) → client's first byte | {f2(pct(cfb, 50))} | {f2(pct(cfb, 99))} | {f2(max(cfb))} |",
        f"| segd commit: last chunk → 201/204 at the proxy | {f2(pct(commit, 50))} | {f2(pct(commit, 99))} | {f2(max(commit))} |",
        "",
        f"- Upload duration per segment (ffmpeg, -re): median {statistics.median(up):.3f} s. The gain is about "
        "the time from a fragment's arrival to the end of its segment (1.8 s for the first fragment, ~0 for "
        "the last, ~0.9 s on average) plus the commit and the extra request; the live path costs the per-fragment "
        "delay above.",
        f"- segd: growing reads {sum(x['growing_reads'] for x in extras):.0f} (segd_live_growing_reads_total), "
        f"live GETs answered 404 before segd had registered the upload and retried after 2 ms: "
        f"{sum(s['retries_404'] for s in segs)} over {len(segs)} segments; live responses with "
        f"`Cache-Control: no-store`: {sum(1 for s in segs if s['live_no_store'])}/{len(segs)}; "
        f"segd CPU {sum(x['segd_cpu_s'] for x in extras):.2f} s over the runs. Final segments (ffmpeg writes the "
        f"short last one at exit in one go) not measured: {sum(x['final_not_streamed'] for x in extras)}.",
        "- Complete-only is measured through segd itself (a GET of the committed file), so it is a lower bound "
        "for nginx: a real player would additionally have to discover that the segment is complete (MPD "
        "update or availability time) before asking.",
        "- Machine: shared 2-core VM, nothing pinned (ffmpeg, segd, the Python proxy and clients share both "
        "CPUs); other jobs may run (load average above).",
    ]
    fw = [x["ffmpeg_warnings"] for x in extras if x["ffmpeg_warnings"]]
    if fw:
        lines.append(f"- ffmpeg's warnings (run 1): `{fw[0]}`")
    lw.merge_summary(out, "ldash_latency", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
