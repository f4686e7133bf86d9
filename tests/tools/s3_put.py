#!/usr/bin/env python3
"""Uploads a directory tree into an S3 bucket (SigV4, path-style), for segd's edge tests.

    s3_put.py --endpoint URL --region R --access-key K --secret-file F --bucket B \
              [--prefix P] [--content-encoding CODING] SRC_DIR

Creates the bucket (retrying while a freshly started server is still coming up), then puts every
file under SRC_DIR as key P + its path relative to SRC_DIR ('/'-separated), and prints
`uploaded N`. Needs boto3 (`pip install boto3`; .ci/run installs it).
"""

import argparse
import mimetypes
import os
import sys
import time

import boto3
from botocore.config import Config

TYPES = {
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--content-encoding", help="stored with every object (the files are already coded)")
    ap.add_argument("src")
    a = ap.parse_args()
    with open(a.secret_file) as f:
        secret = f.read().strip()
    def client(attempts):
        return boto3.client(
            "s3",
            endpoint_url=a.endpoint,
            region_name=a.region,
            aws_access_key_id=a.access_key,
            aws_secret_access_key=secret,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    s3 = client(10)
    # One attempt per call here: this loop retries, and its deadline holds (boto's own backoff
    # would stretch a server that never comes up to minutes).
    once = client(1)
    deadline = time.time() + 30
    while True:
        try:
            once.create_bucket(Bucket=a.bucket)
            break
        except once.exceptions.BucketAlreadyOwnedByYou:
            break
        except once.exceptions.BucketAlreadyExists:
            break
        except Exception as e:  # the server may still be starting its filer
            if time.time() > deadline:
                print(f"create_bucket failed: {e}", file=sys.stderr)
                sys.exit(1)
            time.sleep(0.2)
    n = 0
    for root, _dirs, files in os.walk(a.src):
        for name in sorted(files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, a.src).replace(os.sep, "/")
            ext = os.path.splitext(name)[1]
            ctype = TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            extra = {"ContentEncoding": a.content_encoding} if a.content_encoding else {}
            with open(full, "rb") as f:
                s3.put_object(Bucket=a.bucket, Key=a.prefix + rel, Body=f.read(), ContentType=ctype, **extra)
            n += 1
    print(f"uploaded {n}")


if __name__ == "__main__":
    main()
