# Who a function calls, or who calls it, in the user-space samples of one thread name.
#   perf script -F comm,ip,sym | python3 sub.py segd-worker Upload::committed callee
#   ... | python3 sub.py segd-worker clock_gettime path 3    (the 3 frames above it)
import sys, re, collections
comm_filter, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
depth = int(sys.argv[4]) if len(sys.argv) > 4 else 1
c = collections.Counter(); n = 0
for s in sys.stdin.read().split('\n\n'):
    lines = s.strip().split('\n')
    if not lines or not lines[0].strip().startswith(comm_filter): continue
    frames = []
    for l in lines[1:]:
        p = l.strip().split(' ', 1)
        if len(p) < 2: continue
        frames.append((p[0], re.sub(r'::h[0-9a-f]{16}$', '', re.sub(r'\+0x[0-9a-f]+$', '', p[1].split(' (')[0]))))
    if not frames or (mode != 'path' and frames[0][0].startswith('ffffffff')): continue
    idx = [i for i, (a, f) in enumerate(frames) if target in f]
    if not idx: continue
    n += 1
    if mode == 'callee':
        i = idx[-1]; key = frames[i - 1][1] if i > 0 else '(self)'
    elif mode == 'caller':
        i = idx[0]; key = frames[i + 1][1] if i + 1 < len(frames) else '(top)'
    else:
        i = idx[0]; key = ' <- '.join(f[1][:60] for f in frames[i + 1:i + 1 + depth])
    c[key] += 1
print(target, n)
for k, v in c.most_common(25): print(f'{v:5d} {k[:160]}')
