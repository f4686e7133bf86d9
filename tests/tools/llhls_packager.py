#!/usr/bin/env python3
"""A small LL-HLS packager for segd's tests (Python 3, standard library only; needs ffmpeg).

It makes real fragmented-MP4 AAC audio with ffmpeg (a sine tone), splits it into the init
segment (ftyp+moov) and moof+mdat fragments (the parts, at most --part-target seconds each),
groups --parts-per-segment parts into a segment, and publishes the stream over HTTP PUT at the
pace of the media (or faster):

    init.mp4                      once, first
    <playlist>                    once, before the first part (no segment yet, a preload hint)
    for each part P of segment M:
        seg<M>.part<P>.m4s        the part
        seg<M>.m4s                after the segment's last part: the parts concatenated
        <playlist>                the playlist with that part (and segment) added

The playlist: EXT-X-VERSION 9, TARGETDURATION, PART-INF, SERVER-CONTROL (CAN-BLOCK-RELOAD,
PART-HOLD-BACK, CAN-SKIP-UNTIL), MEDIA-SEQUENCE, MAP, a sliding window of --window complete
segments with EXT-X-PART lines for the last --part-window of them and for the segment in
progress, and an EXT-X-PRELOAD-HINT for the next part (none after EXT-X-ENDLIST).

URL base: everything up to the directory, e.g. `http://127.0.0.1:8080/__token__=<t>/live/s1/`
(a path-embedded upload token). Names are appended to it.

One line per event on stdout, flushed, starting with time.monotonic() (CLOCK_MONOTONIC on
Linux, the clock Rust's Instant and clock_gettime(CLOCK_MONOTONIC) read), so tests can put the
packager's writes and their own observations on one time line:

    <t> put <name> <bytes>                         before sending a PUT
    <t> done <name> <status>                       after its answer arrived
    <t> state <name> msn=<M> part=<P> complete=<C> hint=<uri|->
                                                   after a playlist PUT: the last part in it
                                                   (segment M, part P), the last complete
                                                   segment C (-1: none), the preload hint
    <t> end                                        all published

Exit status: 0, or 1 with a message on stderr when ffmpeg fails or an upload is refused.
"""

import argparse
import http.client
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse


def log(*fields):
    print(f"{time.monotonic():.6f}", *fields, flush=True)


def fail(msg):
    print(f"llhls_packager: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ------------------------------------------------------------------------------------------
# MP4 boxes


def boxes(data, start=0, end=None):
    """Yields (type, offset, size, header_size) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
            header = 16
        elif size == 0:
            size = end - i
        if size < header or i + size > end:
            fail(f"bad box {kind!r} at {i} (size {size})")
        yield kind.decode("latin-1"), i, size, header
        i += size


def child(data, off, size, header, kind):
    """The first child box of `kind` inside the box at `off`, or None."""
    for k, o, s, h in boxes(data, off + header, off + size):
        if k == kind:
            return o, s, h
    return None


def path(data, off, size, header, kinds):
    for k in kinds:
        found = child(data, off, size, header, k)
        if found is None:
            return None
        off, size, header = found
    return off, size, header


def full_box(data, off, header):
    """(version, flags, payload offset) of a full box."""
    v = data[off + header]
    flags = int.from_bytes(data[off + header + 1 : off + header + 4], "big")
    return v, flags, off + header + 4


def init_info(data, moov):
    """(timescale, trex default_sample_duration) from the moov."""
    off, size, header = moov
    mdhd = path(data, off, size, header, ["trak", "mdia", "mdhd"])
    if mdhd is None:
        fail("no moov/trak/mdia/mdhd")
    v, _, p = full_box(data, mdhd[0], mdhd[2])
    timescale = struct.unpack(">I", data[p + (16 if v == 1 else 8) : p + (20 if v == 1 else 12)])[0]
    default_duration = 0
    trex = path(data, off, size, header, ["mvex", "trex"])
    if trex is not None:
        _, _, p = full_box(data, trex[0], trex[2])
        default_duration = struct.unpack(">I", data[p + 8 : p + 12])[0]
    return timescale, default_duration


def fragment_ticks(data, moof, trex_duration):
    """The duration of a moof's (single) track fragment in timescale ticks."""
    off, size, header = moof
    traf = child(data, off, size, header, "traf")
    if traf is None:
        fail("moof without traf")
    tfhd = child(data, *traf, "tfhd")
    default_duration = trex_duration
    if tfhd is not None:
        _, flags, p = full_box(data, tfhd[0], tfhd[2])
        p += 4  # track_ID
        if flags & 0x01:
            p += 8  # base_data_offset
        if flags & 0x02:
            p += 4  # sample_description_index
        if flags & 0x08:
            default_duration = struct.unpack(">I", data[p : p + 4])[0]
    total = 0
    for k, o, s, h in boxes(data, traf[0] + traf[2], traf[0] + traf[1]):
        if k != "trun":
            continue
        _, flags, p = full_box(data, o, h)
        count = struct.unpack(">I", data[p : p + 4])[0]
        p += 4
        if flags & 0x01:
            p += 4  # data_offset
        if flags & 0x04:
            p += 4  # first_sample_flags
        per_sample = 4 * bin(flags & 0xF00).count("1")
        if flags & 0x100:
            for n in range(count):
                total += struct.unpack(">I", data[p + n * per_sample : p + n * per_sample + 4])[0]
        else:
            total += count * default_duration
    return total


def split(data):
    """(init bytes, [(fragment bytes, seconds)]) of a fragmented MP4."""
    init = b""
    moov = None
    frags = []
    pending = None
    timescale, trex_duration = 0, 0
    for kind, off, size, header in boxes(data):
        if kind in ("ftyp", "moov"):
            init += data[off : off + size]
            if kind == "moov":
                moov = (off, size, header)
                timescale, trex_duration = init_info(data, moov)
        elif kind == "moof":
            pending = (off, size, header)
        elif kind == "mdat":
            if pending is None:
                fail("mdat without moof")
            ticks = fragment_ticks(data, pending, trex_duration)
            frags.append((data[pending[0] : off + size], ticks / timescale))
            pending = None
        # styp, sidx, mfra, free: not part of the stream we publish
    if moov is None or not frags:
        fail("no moov or no fragments in ffmpeg's output")
    return init, frags


def make_media(seconds, part_target, frequency):
    """Runs ffmpeg: `seconds` of AAC in fragments of at most `part_target` seconds."""
    # ffmpeg closes a fragment once it reaches -frag_duration: aim 4% below the target so a
    # fragment (a whole number of 1024-sample AAC frames) never exceeds it.
    frag_us = int(part_target * 1_000_000 * 0.96)
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
        "-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=48000",
        "-t", f"{seconds:.3f}",
        "-c:a", "aac", "-b:a", "64k",
        "-f", "mp4",
        "-movflags", "frag_keyframe+empty_moov+default_base_moof",
        "-frag_duration", str(frag_us),
        "pipe:1",
    ]
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except FileNotFoundError:
        fail("ffmpeg not found (Debian package ffmpeg)")
    if out.returncode != 0:
        fail(f"ffmpeg failed: {out.stderr.decode(errors='replace')}")
    return out.stdout


# ------------------------------------------------------------------------------------------
# Publishing


class Publisher:
    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        if u.scheme != "http":
            fail(f"only http:// bases are supported: {base}")
        self.host = u.hostname
        self.port = u.port or 80
        self.prefix = u.path if u.path.endswith("/") else u.path + "/"
        self.query = u.query
        self.conn = None

    def put(self, name, body):
        target = self.prefix + name + (f"?{self.query}" if self.query else "")
        log("put", name, len(body))
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.request("PUT", target, body=body, headers={"Content-Length": str(len(body))})
                resp = self.conn.getresponse()
                resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                # A keep-alive connection the server closed: retry on a new one.
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    fail(f"PUT {name}: {e}")
        log("done", name, resp.status)
        if resp.status not in (200, 201, 204):
            fail(f"PUT {name}: HTTP {resp.status}")


class Stream:
    """The state of the live playlist."""

    def __init__(self, args):
        self.args = args
        self.segments = []  # (msn, duration, [part durations])
        self.current = []  # part durations of the segment in progress
        self.msn = args.start_msn  # the segment in progress

    def part_name(self, msn, part):
        return f"seg{msn}.part{part}.m4s"

    def playlist(self, ended):
        a = self.args
        window = self.segments[-a.window :]
        first = window[0][0] if window else self.msn
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{a.target_duration}",
            f"#EXT-X-PART-INF:PART-TARGET={a.part_target:g}",
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
            f"PART-HOLD-BACK={a.part_hold_back:g},CAN-SKIP-UNTIL={a.can_skip_until:g}",
            f"#EXT-X-MEDIA-SEQUENCE:{first}",
            '#EXT-X-MAP:URI="init.mp4"',
        ]
        with_parts = {m for m, _, _ in window[-a.part_window :]} if a.part_window > 0 else set()
        for msn, duration, parts in window:
            if msn in with_parts:
                for p, d in enumerate(parts):
                    lines.append(
                        f'#EXT-X-PART:DURATION={d:.5f},URI="{self.part_name(msn, p)}",INDEPENDENT=YES'
                    )
            lines.append(f"#EXTINF:{duration:.5f},")
            lines.append(f"seg{msn}.m4s")
        for p, d in enumerate(self.current):
            lines.append(
                f'#EXT-X-PART:DURATION={d:.5f},URI="{self.part_name(self.msn, p)}",INDEPENDENT=YES'
            )
        hint = None
        if ended:
            lines.append("#EXT-X-ENDLIST")
        else:
            hint = self.part_name(self.msn, len(self.current))
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
        return ("\n".join(lines) + "\n").encode(), hint

    def last_part(self):
        if self.current:
            return self.msn, len(self.current) - 1
        if self.segments:
            return self.segments[-1][0], len(self.segments[-1][2]) - 1
        return -1, -1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="URL base (the stream's directory), e.g. http://h:p/__token__=T/live/s1/")
    ap.add_argument("--segments", type=int, default=6, help="complete segments to publish (default 6)")
    ap.add_argument("--speed", type=float, default=1.0,
                    help="pace: 1 = real time, 4 = four times faster, 0 = as fast as possible")
    ap.add_argument("--endlist", action="store_true", help="finish with EXT-X-ENDLIST")
    ap.add_argument("--playlist", default="index.m3u8", help="playlist name (default index.m3u8)")
    ap.add_argument("--window", type=int, default=10, help="complete segments in the playlist (default 10)")
    ap.add_argument("--part-window", type=int, default=3,
                    help="complete segments that keep their EXT-X-PART lines (default 3)")
    ap.add_argument("--parts-per-segment", type=int, default=4)
    ap.add_argument("--part-target", type=float, default=0.5)
    ap.add_argument("--target-duration", type=int, default=2)
    ap.add_argument("--part-hold-back", type=float, default=1.5)
    ap.add_argument("--can-skip-until", type=float, default=12)
    ap.add_argument("--start-msn", type=int, default=0, help="media sequence number of the first segment")
    ap.add_argument("--frequency", type=int, default=440, help="the tone's frequency in Hz")
    ap.add_argument("--media", help="use this fragmented MP4 instead of running ffmpeg")
    ap.add_argument("--save-media", help="also write ffmpeg's fragmented MP4 here (for --media)")
    args = ap.parse_args()

    if args.media:
        with open(args.media, "rb") as f:
            data = f.read()
    else:
        seconds = args.segments * args.parts_per_segment * args.part_target + 2 * args.part_target + 1
        data = make_media(seconds, args.part_target, args.frequency)
        if args.save_media:
            tmp = args.save_media + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, args.save_media)
    init, frags = split(data)
    need = args.segments * args.parts_per_segment
    if len(frags) < need:
        fail(f"{len(frags)} fragments, {need} needed")
    too_long = [d for _, d in frags[:need] if d > args.part_target + 1e-6]
    if too_long:
        fail(f"fragments longer than the part target {args.part_target}: {too_long}")

    pub = Publisher(args.base)
    stream = Stream(args)
    log("start", f"parts={need}", f"segments={args.segments}")
    pub.put("init.mp4", init)
    body, hint = stream.playlist(False)
    pub.put(args.playlist, body)
    log("state", args.playlist, "msn=-1", "part=-1", "complete=-1", f"hint={hint}")

    t0 = time.monotonic()
    media_end = 0.0
    seg_bytes = []
    for i in range(need):
        frag, duration = frags[i]
        media_end += duration
        if args.speed > 0:
            # A part exists once its last sample has been produced.
            delay = t0 + media_end / args.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        p = len(stream.current)
        pub.put(stream.part_name(stream.msn, p), frag)
        stream.current.append(duration)
        seg_bytes.append(frag)
        if len(stream.current) == args.parts_per_segment:
            pub.put(f"seg{stream.msn}.m4s", b"".join(seg_bytes))
            stream.segments.append((stream.msn, sum(stream.current), stream.current))
            stream.current = []
            seg_bytes = []
            stream.msn += 1
        ended = args.endlist and i == need - 1
        body, hint = stream.playlist(ended)
        pub.put(args.playlist, body)
        m, part = stream.last_part()
        complete = stream.segments[-1][0] if stream.segments else -1
        log("state", args.playlist, f"msn={m}", f"part={part}", f"complete={complete}",
            f"hint={hint or '-'}")
    log("end")


if __name__ == "__main__":
    main()
