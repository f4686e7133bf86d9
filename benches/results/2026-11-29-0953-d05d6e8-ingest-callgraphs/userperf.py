import re,collections,sys
txt=open(sys.argv[1]).read().split('\n\n')
up=float(sys.argv[2])
self_c=collections.Counter(); incl=collections.Counter(); tot=0; n=0
for s in txt:
    lines=s.strip().split('\n')
    if len(lines)<2: continue
    tot+=1
    if lines[1].strip().startswith('ffffffff'): continue
    n+=1
    frames=[re.sub(r'\+0x[0-9a-f]+','',l.strip().split(' ',1)[1]).split(' (')[0] for l in lines[1:]]
    self_c[frames[0]]+=1
    for f in set(frames): incl[f]+=1
k=8e6/up/tot
print('user samples',n, f'{n*k:.1f} us/upload')
print('--- inclusive')
for f,v in incl.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 60): print(f'{v*k:6.2f} {f[:150]}')
