#!/usr/bin/env python3
"""Counts system calls and context switches per upload, for segd or nginx, under benches/ingest.py's
load (16 wrk connections PUTting 200,000-byte bodies; server on CPU 0, wrk on CPU 1), with
`perf stat` on the server's threads over a 5-s run after a 2-s warm-up. Counts, not times: the
system calls do not depend on how busy the machine is (context switches do, less than CPU).

    python3 sysc.py segd [path/to/segd]      python3 sysc.py nginx
"""
import importlib.util, os, sys, subprocess, time, shutil, random, secrets, re
spec = importlib.util.spec_from_file_location("ingest", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../ingest.py"))
ing = importlib.util.module_from_spec(spec); spec.loader.exec_module(ing)
which = sys.argv[1]; binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/segd"
extra = sys.argv[3] if len(sys.argv) > 3 else ""
base = "/var/tmp/sysc"; shutil.rmtree(base, ignore_errors=True)
root, tmp, run = f"{base}/root", f"{base}/tmp", f"{base}/run"
for d in (root, tmp, run, f"{base}/bodies"): os.makedirs(d)
rng = random.Random(12)
for i in range(4):
    open(f"{base}/bodies/body{i}.bin", "wb").write(rng.randbytes(200000))
lua = f"{run}/put.lua"; open(lua, "w").write(ing.WRK_LUA)
sec = secrets.token_hex(16)
tok = ing.mint_token(sec, ing.PREFIX + "*", int(time.time()) + 3600)
qs = f"?__token__={ing.encode_token(tok)}"
if which == "nginx":
    srv = ing.Nginx(root, tmp, run, 0, "256k")
else:
    srv = ing.Segd(binary, root, run, False, 0, sec, server_extra=extra + "\n" if extra else "")
srv.start()
try:
    env = dict(INGEST_PRE="", INGEST_QS=qs, INGEST_BODIES=f"{base}/bodies", INGEST_NBODIES="4")
    ing.run_wrk(srv, lua, dict(env, INGEST_PREFIX=ing.PREFIX + "w", INGEST_ACKED=f"{run}/a0"), 16, 2, 1)
    sc = ['read', 'recvfrom', 'write', 'writev', 'sendto', 'splice', 'epoll_wait', 'epoll_pwait', 'epoll_ctl', 'futex', 'openat', 'openat2', 'renameat2', 'rename', 'close', 'statx', 'newfstatat', 'mkdirat', 'pwrite64', 'pwritev', 'pwritev2', 'fsync', 'ioctl', 'setsockopt', 'getsockopt', 'fcntl', 'sched_yield', 'io_uring_enter', 'statfs', 'fstatfs', 'mmap', 'munmap', 'madvise', 'accept4', 'recvmsg', 'sendmsg', 'pipe2', 'fallocate', 'linkat', 'unlinkat', 'fchmod', 'fchown', 'fchownat', 'getdents64', 'lseek', 'getrandom', 'rt_sigprocmask', 'mprotect', 'brk', 'utimensat', 'fadvise64', 'ftruncate', 'fgetxattr', 'getpid', 'gettid', 'tgkill', 'nanosleep', 'clock_nanosleep', 'sendfile64', 'readv', 'recvmmsg', 'poll', 'ppoll', 'pread64', 'preadv']
    ev = ",".join(["context-switches", "raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{s}" for s in sc])
    pids = ",".join(str(p) for p in srv.pids())
    perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ev, "-p", pids, "-o", f"{run}/perf.txt"])
    time.sleep(0.3)
    res = ing.run_wrk(srv, lua, dict(env, INGEST_PREFIX=ing.PREFIX + "m", INGEST_ACKED=f"{run}/a1"), 16, 5, 1)
    perf.send_signal(2); perf.wait()
    n = sum(1 for _ in open(f"{run}/a1")) if which != "nginx" else None
    print(which, "uploads", res["uploads"])
    out = open(f"{run}/perf.txt").read()
    rows = []
    for line in out.splitlines():
        p = line.split(",")
        if len(p) > 3 and p[0].replace(".", "").isdigit():
            rows.append((p[2], float(p[0])))
    open(f"{base}/../sysc-{which}.txt", "w").write(repr(rows) + "\n" + repr(res))
    for name, v in rows:
        if v: print(f"{name:45s} {v:12.0f}")
finally:
    srv.proc.terminate(); srv.proc.wait()
