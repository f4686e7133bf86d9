import sys,re,collections
comm_filter=sys.argv[1]
data=sys.stdin.read().split('\n\n')
incl=collections.Counter(); self_=collections.Counter(); tot=0; user=0
for s in data:
    lines=s.strip().split('\n')
    if not lines or not lines[0].strip(): continue
    if not lines[0].strip().startswith(comm_filter): continue
    tot+=1
    frames=[]
    for l in lines[1:]:
        p=l.strip().split(' ',1)
        if len(p)<2: continue
        addr,sym=p
        sym=re.sub(r'\+0x[0-9a-f]+$','',sym.split(' (')[0])
        frames.append((addr,sym))
    if not frames: continue
    if frames[0][0].startswith('ffffffff'):
        continue
    user+=1
    self_[frames[0][1]]+=1
    seen=set()
    for a,sym in frames:
        # shorten
        s2=re.sub(r'::h[0-9a-f]{16}$','',sym)
        s2=re.sub(r'<.*?>','<>',s2) if len(s2)>150 else s2
        if s2 in seen: continue
        seen.add(s2); incl[s2]+=1
print('samples',tot,'user',user)
for k,v in incl.most_common(int(sys.argv[2])):
    print(f'{v:6d} {100*v/user:5.1f}% {k[:170]}')
print('--- self')
for k,v in self_.most_common(40):
    print(f'{v:6d} {100*v/user:5.1f}% {k[:170]}')
