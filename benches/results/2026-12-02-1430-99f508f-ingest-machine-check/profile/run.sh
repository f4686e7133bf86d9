#!/bin/bash
s=$1; bin=$2; out=$3
mkdir -p $out
cd /work/main
perf record -C 0 -F 999 -g -o $out/perf-$s.data -- python3 benches/ingest.py --segd $bin --servers $s --rounds 1 --duration 10 --quiet-wait 0 --prefix /vod/ --out $out/$s > $out/$s.log 2>&1
