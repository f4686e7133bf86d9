#!/usr/bin/env python3
# usage: catperf.py script.txt [uploads]  -> CPU share by syscall / user area
import re,collections,sys
txt=open(sys.argv[1]).read().split('\n\n')
up=float(sys.argv[2]) if len(sys.argv)>2 else 0
c=collections.Counter(); tot=0
for s in txt:
    lines=s.strip().split('\n')
    if len(lines)<2: continue
    tot+=1
    frames=[l.strip().split(' ',1)[1] if ' ' in l.strip() else l for l in lines[1:]]
    frames=[re.sub(r'\+0x[0-9a-f]+','',f).split(' (')[0] for f in frames]
    cat=None
    if 'do_syscall_64' in frames:
        i=frames.index('do_syscall_64')
        cat='sys:'+(frames[i-1] if i>0 else '?')
    if cat is None:
        top=frames[0]
        if any(k in top for k in ('asm_','irq','softirq','sysvec')) or any('asm_sysvec' in f or 'asm_common_interrupt' in f for f in frames): cat='irq'
        elif 'pv_native_safe_halt' in ' '.join(frames) or 'do_idle' in ' '.join(frames): cat='idle'
        elif lines[1].strip().startswith('ffffffff') and any(f in ('schedule','__schedule','finish_task_switch.isra.0') for f in frames): cat='sched(other)'
        elif lines[1].strip().startswith('ffffffff'): cat='kernel(other)'
        else: cat='user'
    c[cat]+=1
print('samples',tot)
for k,v in c.most_common(30):
    print(f'{k:28s} {100*v/tot:6.2f}%' + (f'  {v/tot*8e6/up:7.1f} us/upload' if up else ''))
