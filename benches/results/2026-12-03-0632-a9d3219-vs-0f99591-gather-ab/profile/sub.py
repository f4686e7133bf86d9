import sys,re,collections
comm_filter, target, mode = sys.argv[1], sys.argv[2], sys.argv[3]
data=sys.stdin.read().split('\n\n')
c=collections.Counter(); n=0
for s in data:
    lines=s.strip().split('\n')
    if not lines or not lines[0].strip().startswith(comm_filter): continue
    frames=[]
    for l in lines[1:]:
        p=l.strip().split(' ',1)
        if len(p)<2: continue
        frames.append((p[0],re.sub(r'::h[0-9a-f]{16}$','',re.sub(r'\+0x[0-9a-f]+$','',p[1].split(' (')[0]))))
    if not frames or frames[0][0].startswith('ffffffff'): continue
    idx=[i for i,(a,f) in enumerate(frames) if target in f]
    if not idx: continue
    n+=1
    i=idx[-1] if mode=='callee' else idx[0]
    if mode=='callee':
        key=frames[i-1][1] if i>0 else '(self)'
    else:
        key=frames[i+1][1] if i+1<len(frames) else '(top)'
    c[key]+=1
print(target,n)
for k,v in c.most_common(25): print(f'{v:5d} {k[:160]}')
