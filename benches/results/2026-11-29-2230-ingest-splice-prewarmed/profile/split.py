#!/usr/bin/env python3
# usage: split.py script.txt UPLOADS_PER_S KEY -> microseconds per upload under syscall KEY,
# by leaf function (a 5 s perf window on the server's CPU: share x 1e6 / uploads per second)
import re, collections, sys
path, rate, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sub = collections.Counter(); tot = 0; n = 0
for s in open(path).read().split('\n\n'):
    lines = s.strip().split('\n')
    if len(lines) < 2:
        continue
    tot += 1
    frames = [re.sub(r'\+0x[0-9a-f]+', '', l.strip().split(' ', 1)[1] if ' ' in l.strip() else l).split(' (')[0] for l in lines[1:]]
    if key not in frames:
        continue
    n += 1
    kind = 'socket->pipe' if 'tcp_splice_read' in frames else ('pipe->file' if any('iter_file_splice_write' in f for f in frames) else '')
    sub[(kind, frames[0])] += 1
per = 1e6 / rate / tot
print(f'{key}: {n * per:.1f} us per upload')
for (k, f), v in sub.most_common(12):
    print(f'  {v * per:6.1f}  {k:13s} {f}')
