#!/bin/bash
# usage: prof.sh SERVER(segd-nofsync|nginx) SEGD_BIN OUT
s=$1; bin=$2; out=$3; mkdir -p $out
cd /work/main
python3 benches/ingest.py --segd $bin --servers $s --rounds 1 --duration 8 --quiet-wait 0 --prefix /vod/ --out $out/res > $out/log 2>&1 &
py=$!
# the first wrk is the warm-up; the second the measured run
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
perf record -C 0 -F 1999 -g -o $out/perf.data -- sleep 5 > /dev/null 2>&1
wait $py
perf script -i $out/perf.data -F comm,ip,sym 2>/dev/null > $out/script.txt
grep "round 1" $out/log | sed 's/(load.*MB\/s//'
