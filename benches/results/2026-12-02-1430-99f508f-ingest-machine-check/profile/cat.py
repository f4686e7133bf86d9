import re,collections,sys
txt=sys.stdin.read().split('\n\n')
up=float(sys.argv[1])
c=collections.Counter(); tot=0
for s in txt:
    lines=[l for l in s.strip().split('\n') if l.strip()]
    if len(lines)<1: continue
    tot+=1
    frames=[l.strip().split(' ',1)[1] if ' ' in l.strip() else l for l in lines]
    frames=[re.sub(r'\+0x[0-9a-f]+','',f).split(' (')[0] for f in frames]
    cat=None
    if 'do_syscall_64' in frames:
        i=frames.index('do_syscall_64')
        cat='sys:'+(frames[i-1] if i>0 else '?')
    if cat is None:
        if any('asm_sysvec' in f or 'asm_common_interrupt' in f or 'irq' in f for f in frames): cat='irq'
        elif lines[0].strip().startswith('ffffffff'): cat='kernel(other)'
        else: cat='user'
    c[cat]+=1
print('samples',tot)
for k,v in c.most_common(25):
    print(f'{k:34s} {v:6d}  {v*1000/up:7.1f} us/upload')
