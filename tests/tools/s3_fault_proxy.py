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
that is slow to send a large object). The first PUT of a path containing a name of `FIRST_PUT_ERRORS`
is answered with that AWS error (status and XML body) and does not reach the upstream; later
ones pass: `request-timeout` (`400 RequestTimeout`: the upload's body did not arrive in time),
`wrong-region` (`400 AuthorizationQueryParametersError`: a signature for another region than
the bucket's, until the setting is fixed), `slow-down` (`503 SlowDown` with `Retry-After: 4`: a
bucket throttling its clients). Every GET of a path containing `slow-down` is answered the same
503 SlowDown, after 1 s, and does not reach the upstream. The answer to a request whose target contains
`stale-keepalive` keeps the client's connection open, and the next request on it is read and
dropped with the connection, unanswered and never passed on (a bucket closing an idle kept-alive
connection just as a new request went out on it). A HEAD of a path containing `slow-head` is
passed on after 1 s (a bucket slow to answer). The body of a PUT of a path containing
`slow-put` is read at 1 MiB/s (a bucket behind a slow link).

It exits when its stdin closes or it is killed.
"""

import argparse
import socket
import socketserver
import sys
import threading
import time

LOCK = threading.Lock()
# Paths (without their query) whose first PUT was answered with an error.
ANSWERED = set()


def aws_error(code, message, extra=b""):
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code + b"</Code><Message>"
        + message + b"</Message>" + extra + b"<RequestId>4442587FB7D0A2F9</RequestId></Error>"
    )


SLOW_DOWN = (
    b"503 Slow Down",
    aws_error(b"SlowDown", b"Please reduce your request rate."),
    b"Retry-After: 4\r\n",
)

# A target containing the name → the status line, body and extra header lines of the first
# PUT's answer.
FIRST_PUT_ERRORS = {
    "slow-down": SLOW_DOWN,
    "request-timeout": (
        b"400 Bad Request",
        aws_error(
            b"RequestTimeout",
            b"Your socket connection to the server was not read from or written to within "
            b"the timeout period. Idle connections will be closed.",
        ),
        b"",
    ),
    "wrong-region": (
        b"400 Bad Request",
        aws_error(
            b"AuthorizationQueryParametersError",
            b"Error parsing the X-Amz-Credential parameter; the region 'us-east-1' is wrong; "
            b"expecting 'eu-west-1'",
            b"<Region>eu-west-1</Region>",
        ),
        b"",
    ),
}


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
    # A PUT of a path containing `slow-put`: its body is taken at 1 MiB/s, through a small
    # receive buffer (a bucket behind a slow link).
    slow = head.startswith(b"PUT ") and b"slow-put" in head.split(b"\r\n")[0]
    if slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None, None, buf
        rest += chunk
        if slow:
            time.sleep(len(chunk) / (1 << 20))
    return head, rest[:length], rest[length:]


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        buf = b""
        stale = False
        while True:
            try:
                head, body, buf = read_message(client, buf)
            except (OSError, ValueError):
                return
            if head is None:
                return
            method, target = head.split(b" ")[0].decode(), head.split(b" ")[1].decode()
            if stale:
                say(f"dropped {method} {target}")
                return
            say(f"request {method} {target}")
            path = target.split("?")[0]
            injected = [e for name, e in FIRST_PUT_ERRORS.items() if name in path]
            first = False
            if method == "PUT" and injected:
                with LOCK:
                    first = path not in ANSWERED
                    ANSWERED.add(path)
            if first or (method == "GET" and "slow-down" in path):
                status, body, extra = injected[0] if first else SLOW_DOWN
                if not first:
                    time.sleep(1)
                client.sendall(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\n" + extra
                    + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                    + body
                )
                return
            if method == "HEAD" and "slow-head" in path:
                time.sleep(1)
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
            rhead, _, rbody = answer.partition(b"\r\n\r\n")
            rlines = [l for l in rhead.split(b"\r\n") if not l.lower().startswith(b"connection:")]
            if "stale-keepalive" in target:
                # Kept open, the body framed by its length (the upstream's ended with its
                # connection), for one more request.
                if method != "HEAD" and not any(l.lower().startswith(b"transfer-encoding:") for l in rlines):
                    rlines = [l for l in rlines if not l.lower().startswith(b"content-length:")]
                    rlines.append(b"Content-Length: %d" % len(rbody))
                client.sendall(b"\r\n".join(rlines) + b"\r\n\r\n" + rbody)
                stale = True
                continue
            # The client's connection ends with this answer too.
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
