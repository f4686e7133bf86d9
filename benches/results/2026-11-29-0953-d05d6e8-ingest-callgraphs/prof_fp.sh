#!/bin/bash
# usage: prof_fp.sh SEGD_BIN OUTDIR [prefix]  (segd only, frame-pointer call graphs)
set -e
bin=$1; out=$2; prefix=${3:-/live/}
mkdir -p $out
cd /work/main
s=segd-nofsync
python3 benches/ingest.py --segd $bin --servers $s --rounds 1 --duration 20 --quiet-wait 0 --prefix $prefix --out $out/$s > $out/$s.log 2>&1 &
py=$!
for i in $(seq 1 60); do grep -q "warm" $out/$s.log 2>/dev/null && break; sleep 0.5; done
sleep 6
perf record -C 0 -F 1999 --call-graph fp -o $out/perf-$s.data -- sleep 8 > /dev/null 2>&1
wait $py
