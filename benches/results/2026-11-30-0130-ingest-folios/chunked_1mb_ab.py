# Server CPU per chunked upload of a 1 MB body (16 KiB chunks, keep-alive), two builds alternately.
#   taskset -c 1 python3 chunked_1mb_ab.py SEGD_A SEGD_B ROUNDS UPLOADS_PER_ROUND
# Expects /tmp/tf/s.toml: one worker on 127.0.0.1:18080, one volume at /tmp/tf/mnt/vol (a fresh
# ext4 on a loop device), log access off, [ingest] prefixes ["/vod/"], fsync = false, one
# [[ingest.keys]]. Server CPU from /proc/PID/stat (clock ticks: about 3 % resolution at 300).
import os, socket, subprocess, sys, time, signal
bins = sys.argv[1:3]; rounds = int(sys.argv[3]); n = int(sys.argv[4])
body = os.urandom(1_000_000)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
res = {b: [] for b in bins}
for r in range(rounds):
    for b in (bins if r % 2 == 0 else bins[::-1]):
        subprocess.run("rm -rf /tmp/tf/mnt/vol/vod; sync; echo 3 > /proc/sys/vm/drop_caches", shell=True)
        p = subprocess.Popen(["taskset", "-c", "0", b, "serve", "--config", "/tmp/tf/s.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.8)
        tok = subprocess.run([b, "sign", "--config", "/tmp/tf/s.toml", "--upload", "--acl", "/vod/*"], capture_output=True, text=True).stdout
        q = [l for l in tok.splitlines() if l.startswith("query")][0].split("?", 1)[1]
        s = socket.create_connection(("127.0.0.1", 18080))
        c0 = cpu(p.pid)
        for i in range(n):
            s.sendall(f"PUT /vod/c/d{i//200}/s{i}.ts?{q} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for j in range(0, len(body), 16384):
                c = body[j:j+16384]; s.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            resp = s.recv(4096)
            assert resp.startswith(b"HTTP/1.1 201"), resp[:100]
        c1 = cpu(p.pid)
        s.close(); p.send_signal(signal.SIGTERM); p.wait()
        res[b].append((c1 - c0) / n * 1e6)
        print(f"round {r} {b}: {res[b][-1]:.0f} us/upload", flush=True)
import statistics
a, bb = (statistics.median(res[x]) for x in bins)
print(f"median {bins[0]} {a:.0f}, {bins[1]} {bb:.0f}, first/second {a/bb:.3f}")
