#!/bin/bash
# usage: count.sh SEGD_BIN OUT : counts syscalls of the server during the measured run
bin=$1; out=$2; mkdir -p $out
cd /work/main
python3 benches/ingest.py --segd $bin --servers segd-nofsync --rounds 1 --duration 6 --quiet-wait 0 --prefix /vod/ --out $out/res > $out/log 2>&1 &
py=$!
seen=0
while kill -0 $py 2>/dev/null; do
  if pgrep -x wrk >/dev/null; then
    if [ $seen = 2 ]; then break; fi
    if [ $seen = 0 ]; then seen=1; fi
  else
    if [ $seen = 1 ]; then seen=2; fi
  fi
  sleep 0.05
done
sleep 1

perf stat -C 0 -a -e 'syscalls:sys_enter_splice,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_renameat2,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,context-switches' -- sleep 4 2> $out/stat.txt
wait $py
grep "round 1" $out/log | sed 's/(load.*MB\/s//'
