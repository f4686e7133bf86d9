#!/usr/bin/env python3
"""A misbehaving HTTP/1.1 upstream for segd's edge tests (tests/edge.rs). Standard library only.

    bad_upstream.py --root DIR --mode MODE [--stall SECONDS]

Listens on 127.0.0.1 on a free port and prints `listening 127.0.0.1:PORT` first, then one line
`request METHOD TARGET` per request head received (before answering), flushed, so a test can
count upstream requests exactly. Files come from DIR (URL path without its leading '/'); a
missing file is a normal 404 in every mode. For a file that exists, MODE decides:

- ok          200 with Content-Length and the whole body (keep-alive unless `Connection: close`)
- die         200 with the full Content-Length, half of the body, then the connection is closed
- stall-head  reads the request and sends nothing for --stall seconds, then closes
- stall-body  200 with the full Content-Length and half of the body, then nothing for --stall
              seconds, then closes
- mixed       no files: every GET is answered from its path, which picks what an origin may
              lawfully send. The body is `pattern(path)` (below). By the path's second segment:
              /vod/gzip/…     gzip-coded body with `Content-Encoding: gzip`, whatever was asked
              /vod/chunked/…  `Transfer-Encoding: chunked`, no Content-Length, three chunks
              /vod/chunkedpl/… the same, with an HLS media playlist for a body (`playlist()`)
                              and `Cache-Control: max-age=1`
              /vod/eof/…      neither Content-Length nor chunked: the body ends with the
                              connection (`Connection: close`), whole
              /vod/clte/…     both `Content-Length: 50` and `Transfer-Encoding: chunked`, with
                              one chunk of the first 100 bytes of the body
              /vod/gzipte/…   `Transfer-Encoding: gzip, chunked` (a transfer coding the request's
                              missing `TE` did not allow): the body gzipped, then chunked
              /X/status/N/…   status N with `playlist()` for a body, `Cache-Control:
                              max-age=600` and, for a 3xx, a `Location` (any first segment:
                              /live/… for LL-HLS requests passed through)
              /vod/badetag/…  `ETag: no-quotes` (not an entity-tag)
              /vod/octet/…    `Content-Type: binary/octet-stream` (what S3 stores when the
                              uploader set no type)
              /vod/linguist/… `Content-Type: text/vnd.trolltech.linguist` (what `aws s3 cp`
                              on Debian stores for a `.ts`, from /etc/mime.types) and
                              `Last-Modified: yesterday` (not a date)
              /vod/sniffed/…  the body gzipped, `Content-Encoding: gzip` and
                              `Content-Type: application/x-gzip` (what SeaweedFS stores for
                              a gzipped object uploaded without a type: it sniffs the bytes)
              /vod/cc/CC/…    `Cache-Control: CC` (`~` in the path for `,`, `_` for a space)
                              and `ETag: "cc1"`; a request with `If-None-Match: "cc1"` gets a
                              304 with the same two fields
              /vod/expires/…  no Cache-Control, `Expires` in the past
              /vod/vary/…     `Vary: *`
              /vod/gone/…     410 Gone
              /vod/fickle/…   a new version of the object for every request: ETag "fN" and
                              the body `pattern(path + N)` (N = 1, 2, … per path), always a 200
                              of the whole body, whatever Range or If-Match asked
              /vod/moved/…    a new version for every request, `Cache-Control: max-age=1`: a
                              conditional GET (`If-None-Match`) gets a 304 whose ETag names
                              the new version ("mN"), an unconditional one a 200 with ETag
                              "mN" and the body `pattern(path + N)` (an origin that answers
                              304 for another version than the one asked about)
              /vod/retry/C-N/… status C (503 or 429) with `Retry-After: N` for every GET (an
                              origin that is overloaded or rate-limits, and says for how long)
              /vod/busy/C-N/… the first GET of a path is a 200 (as "anything else" below, with
                              `ETag: "b1"`); every later one status C with `Retry-After: N`
              /vod/race/…     keep-alive, then the next request on that connection is read and
                              the connection closed with no answer (a keep-alive timeout firing
                              as the request arrives)
              /vod/reset/…    the same, but the connection is reset (RST, not FIN): an
                              origin that closed its end while the request was on its way
              anything else   200 with Content-Length, no validators; playlists
                              `Cache-Control: max-age=30`
              In this mode each request also logs `accept-encoding TARGET VALUE` (`-`: none).

It exits when its stdin closes or it is killed, so a test that dies leaves nothing behind.
"""

import argparse
import os
import socket
import socketserver
import struct
import sys
import threading
import time

TYPES = {
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
}

LOCK = threading.Lock()
# /vod/fickle/ paths → the version last served.
FICKLE = {}
# /vod/busy/ paths already answered once.
BUSY = set()
# Per path of /vod/moved/: the last version answered.
MOVED = {}


def pattern(path):
    """The mixed mode's body for `path`: 20,000 bytes any test can compute."""
    seed = sum(path.encode()) % 251
    return bytes((i * 7 + seed) % 251 for i in range(20000))


def playlist(path):
    """The mixed mode's HLS media playlist for `path`: relative segment URIs, more than 4 MiB
    when the file name starts with `big` (past what segd rewrites for tokens)."""
    n = 200000 if os.path.basename(path).startswith("big") else 5
    return ("#EXTM3U\n#EXT-X-TARGETDURATION:4\n"
            + "".join(f"#EXTINF:4,\nseg{i}.ts\n" for i in range(n))
            + "#EXT-X-ENDLIST\n").encode()


def mixed(sock, method, target, lines, state):
    """Answers one request in mixed mode; returns False when the connection must close."""
    import gzip

    path = target.split("?", 1)[0]
    ae = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("accept-encoding:")), "-")
    say(f"accept-encoding {target} {ae}")
    kind = path.split("/")[2] if path.count("/") >= 3 else ""
    if kind == "race" and state.get("served"):
        return False  # the request was read: close without a byte of answer
    if kind == "reset" and state.get("served"):
        # Reset, not closed: SO_LINGER 0 makes close() send RST (the server's shutdown of the
        # closed socket after this fails quietly).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return False
    if kind == "cc":
        cc = path.split("/")[3].replace("~", ",").replace("_", " ")
        inm = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("if-none-match:")), None)
        if inm == '"cc1"':
            sock.sendall(f'HTTP/1.1 304 Not Modified\r\nETag: "cc1"\r\nCache-Control: {cc}\r\n\r\n'.encode())
            state["served"] = True
            return True
    if kind == "moved":
        inm = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("if-none-match:")), None)
        with LOCK:
            version = MOVED[path] = MOVED.get(path, 0) + 1
        if inm is not None:
            sock.sendall(f'HTTP/1.1 304 Not Modified\r\nETag: "m{version}"\r\nCache-Control: max-age=1\r\n\r\n'.encode())
            state["served"] = True
            return True
        body = pattern(path + str(version))
        head = ["HTTP/1.1 200 OK", "Content-Type: video/iso.segment", f'ETag: "m{version}"',
                "Cache-Control: max-age=1", f"Content-Length: {len(body)}"]
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + (body if method != "HEAD" else b""))
        state["served"] = True
        return True
    if kind in ("retry", "busy"):
        code, secs = path.split("/")[3].split("-", 1)
        with LOCK:
            first = kind == "busy" and path not in BUSY
            BUSY.add(path)
        if not first:
            reason = "Too Many Requests" if code == "429" else "Service Unavailable"
            sock.sendall(f"HTTP/1.1 {code} {reason}\r\nRetry-After: {secs}\r\nContent-Type: text/plain\r\n"
                         "Content-Length: 5\r\n\r\nbusy\n".encode())
            state["served"] = True
            return True
    if kind == "gone":
        sock.sendall(b"HTTP/1.1 410 Gone\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\ngone\n")
        state["served"] = True
        return True
    body = pattern(path)
    version = None
    if kind == "fickle":
        with LOCK:
            version = FICKLE[path] = FICKLE.get(path, 0) + 1
        body = pattern(path + str(version))
    ext = os.path.splitext(path)[1]
    ctype = "binary/octet-stream" if kind == "octet" else TYPES.get(ext, "application/octet-stream")
    if kind == "sniffed":
        ctype = "application/x-gzip"
    if kind == "linguist":
        ctype = "text/vnd.trolltech.linguist"
    head = ["HTTP/1.1 200 OK", f"Content-Type: {ctype}"]
    if kind in ("gzip", "sniffed"):
        body = gzip.compress(body, mtime=0)
        head.append("Content-Encoding: gzip")
    elif kind == "expires":
        head.append("Expires: Thu, 01 Jan 1970 00:00:00 GMT")
    elif kind == "vary":
        head.append("Vary: *")
    elif kind == "fickle":
        head.append(f'ETag: "f{version}"')
    elif kind == "busy":
        head.append('ETag: "b1"')
    elif kind == "badetag":
        head.append("ETag: no-quotes")
    elif kind == "linguist":
        head.append("Last-Modified: yesterday")
    elif kind == "cc":
        head.append(f"Cache-Control: {cc}")
        head.append('ETag: "cc1"')
    elif kind == "chunkedpl":
        body = playlist(path)
        head.append("Cache-Control: max-age=1")
    elif ext in (".m3u8", ".mpd"):
        head.append("Cache-Control: max-age=30")
    if kind == "status":
        code = int(path.split("/")[3])
        pl = playlist(path)
        out = [f"HTTP/1.1 {code} Status", "Content-Type: application/vnd.apple.mpegurl",
               "Cache-Control: max-age=600", f"Content-Length: {len(pl)}"]
        if 300 <= code < 400:
            out.append("Location: /elsewhere.m3u8")
        sock.sendall("\r\n".join(out).encode() + b"\r\n\r\n" + (pl if method != "HEAD" else b""))
        state["served"] = True
        return True
    if kind == "clte":
        head += ["Content-Length: 50", "Transfer-Encoding: chunked"]
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + b"64\r\n" + body[:100] + b"\r\n0\r\n\r\n")
        state["served"] = True
        return True
    if kind == "gzipte":
        head.append("Transfer-Encoding: gzip, chunked")
        coded = gzip.compress(body) if method != "HEAD" else b""
        tail = f"{len(coded):x}\r\n".encode() + coded + b"\r\n0\r\n\r\n" if coded else b"0\r\n\r\n"
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + tail)
        state["served"] = True
        return True
    if kind == "eof":
        head.append("Connection: close")
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + (body if method != "HEAD" else b""))
        return False
    if kind in ("chunked", "chunkedpl"):
        head.append("Transfer-Encoding: chunked")
        out = "\r\n".join(head).encode() + b"\r\n\r\n"
        if method != "HEAD":
            third = len(body) // 3
            for part in (body[:third], body[third : 2 * third], body[2 * third :]):
                out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
            out += b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        out = "\r\n".join(head).encode() + b"\r\n\r\n" + (body if method != "HEAD" else b"")
    sock.sendall(out)
    state["served"] = True
    return True


def say(line):
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_head(sock, buf):
    """Returns (head bytes, rest) or (None, buf) at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        cfg = self.server.cfg
        buf = b""
        state = {}
        while True:
            try:
                head, buf = read_head(sock, buf)
            except OSError:
                return
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            method, target, _ = parts
            say(f"request {method} {target}")
            close = any(
                l.lower().startswith("connection:") and "close" in l.lower() for l in lines[1:]
            )
            if cfg.mode == "mixed":
                if not mixed(sock, method, target, lines, state) or close:
                    return
                continue
            path = target.split("?", 1)[0]
            full = os.path.normpath(os.path.join(cfg.root, path.lstrip("/")))
            if not full.startswith(cfg.root + os.sep) or not os.path.isfile(full):
                body = b"not found\n"
                sock.sendall(
                    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + (body if method != "HEAD" else b"")
                )
                if close:
                    return
                continue
            with open(full, "rb") as f:
                data = f.read()
            ctype = TYPES.get(os.path.splitext(full)[1], "application/octet-stream")
            st = os.stat(full)
            head_out = (
                "HTTP/1.1 200 OK\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\n"
                f'ETag: "bad-{len(data):x}-{st.st_mtime_ns:x}"\r\n'
                "Cache-Control: public, max-age=31536000, immutable\r\n"
                "\r\n"
            ).encode()
            if cfg.mode == "stall-head":
                time.sleep(cfg.stall)
                return
            if method == "HEAD" or cfg.mode == "ok":
                sock.sendall(head_out + (data if method != "HEAD" else b""))
                if close:
                    return
                continue
            sock.sendall(head_out + data[: len(data) // 2])
            if cfg.mode == "stall-body":
                time.sleep(cfg.stall)
            return  # die (or the stall is over): close with the body half sent


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--mode", required=True, choices=["ok", "die", "stall-head", "stall-body", "mixed"])
    ap.add_argument("--stall", type=float, default=30.0)
    cfg = ap.parse_args()
    cfg.root = os.path.abspath(cfg.root)
    srv = Server(("127.0.0.1", 0), Handler)
    srv.cfg = cfg
    host, port = srv.server_address[:2]
    say(f"listening {host}:{port}")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    # Lives as long as the test holds our stdin.
    try:
        sys.stdin.read()
    except (OSError, KeyboardInterrupt):
        pass
    srv.shutdown()


if __name__ == "__main__":
    main()
