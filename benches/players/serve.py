#!/usr/bin/env python3
"""Static server for the player harness: serves this directory (player.html, player.mjs and the
hls.js/dash.js bundles under node_modules/) and `/time`, the current UTC time in ISO 8601 with
milliseconds (the MPD's UTCTiming source, scheme urn:mpeg:dash:utc:http-iso:2014).

    serve.py --port N [--bind 127.0.0.1]

Binds exactly the port given (no fallback) and prints `serving http://HOST:PORT` once listening;
a bind error exits 3 with the reason on stderr, so the caller fails loudly.
"""
import argparse
import datetime
import functools
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".map": "application/json",
    }

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/time":
            now = datetime.datetime.now(datetime.timezone.utc)
            body = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
            body = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_HEAD(self):
        if self.path.split("?", 1)[0] == "/time":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            return
        super().do_HEAD()

    def log_message(self, fmt, *args):
        if os.environ.get("SERVE_LOG"):
            sys.stderr.write("serve.py: " + (fmt % args) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    handler = functools.partial(Handler, directory=a.dir)
    try:
        srv = http.server.ThreadingHTTPServer((a.bind, a.port), handler)
    except OSError as e:
        print(f"serve.py: cannot bind {a.bind}:{a.port}: {e}", file=sys.stderr)
        sys.exit(3)
    srv.daemon_threads = True
    print(f"serving http://{a.bind}:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
