#!/usr/bin/env python3
"""An HTTP/1.1 proxy in front of a real S3 server that loses answers, for segd's write-through
tests (tests/edge.rs). Standard library only.

    s3_fault_proxy.py --upstream HOST:PORT

Listens on 127.0.0.1 on a free port and prints `listening 127.0.0.1:PORT` first, then one line
`request METHOD TARGET` per request, flushed. Every request is passed to the upstream on a
connection of its own and its answer passed back (one request per client connection), except a PUT or DELETE whose target contains
`lost-answer`: the upstream gets it and answers, and the proxy then closes the client's
connection without a byte of that answer (a bucket that stored the object while the answer was
lost on the way, as a gateway timeout or a reset does). A GET whose target contains `slow-body`
gets its answer's head and the first half of its body at once, the rest 3 s later (a bucket
that is slow to send a large object). The first PUT of a path containing `request-timeout` is
answered `400 RequestTimeout` with AWS's error body and does not reach the upstream (what AWS
answers when an upload's body does not arrive in time); later ones pass.

It exits when its stdin closes or it is killed.
"""

import argparse
import socket
import socketserver
import sys
import threading
import time

LOCK = threading.Lock()
# Paths (without their query) already answered `400 RequestTimeout`.
TIMED_OUT = set()

REQUEST_TIMEOUT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>RequestTimeout</Code><Message>Your '
    b"socket connection to the server was not read from or written to within the timeout "
    b"period. Idle connections will be closed.</Message><RequestId>4442587FB7D0A2F9</RequestId>"
    b"</Error>"
)


def say(line):
    with LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_message(sock, buf, head_only_body=False):
    """Reads one HTTP/1.1 message with a Content-Length body (or none). Returns (head, body,
    rest) or (None, None, buf) at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, None, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if head_only_body:
        length = 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None, None, buf
        rest += chunk
    return head, rest[:length], rest[length:]


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        buf = b""
        while True:
            try:
                head, body, buf = read_message(client, buf)
            except (OSError, ValueError):
                return
            if head is None:
                return
            method, target = head.split(b" ")[0].decode(), head.split(b" ")[1].decode()
            say(f"request {method} {target}")
            path = target.split("?")[0]
            if method == "PUT" and "request-timeout" in path:
                with LOCK:
                    first = path not in TIMED_OUT
                    TIMED_OUT.add(path)
                if first:
                    client.sendall(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(REQUEST_TIMEOUT)
                        + REQUEST_TIMEOUT
                    )
                    return
            # One request per upstream connection, read to its end: whatever its framing.
            lines = [l for l in head.split(b"\r\n") if not l.lower().startswith(b"connection:")]
            head = b"\r\n".join(lines + [b"Connection: close"])
            host, port = self.server.upstream
            answer = b""
            with socket.create_connection((host, port), timeout=30) as up:
                up.sendall(head + b"\r\n\r\n" + body)
                while True:
                    chunk = up.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            if not answer:
                return
            if method in ("PUT", "DELETE") and "lost-answer" in target:
                return  # the upstream applied it; the answer is lost
            # The client's connection ends with this answer too.
            rhead, _, rbody = answer.partition(b"\r\n\r\n")
            rlines = [l for l in rhead.split(b"\r\n") if not l.lower().startswith(b"connection:")]
            head = b"\r\n".join(rlines + [b"Connection: close"]) + b"\r\n\r\n"
            if method == "GET" and "slow-body" in target:
                half = len(rbody) // 2
                client.sendall(head + rbody[:half])
                time.sleep(3)
                client.sendall(rbody[half:])
                return
            client.sendall(head + rbody)
            return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    srv = Server(("127.0.0.1", 0), Handler)
    srv.upstream = (host, int(port))
    say("listening %s:%d" % srv.server_address[:2])
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sys.stdin.read()
    except (OSError, KeyboardInterrupt):
        pass
    srv.shutdown()


if __name__ == "__main__":
    main()
