#!/usr/bin/env bash
# segd vs a tuned nginx on the same corpus, with the same load generators, in one run.
#   benches/compare.sh [--preset small|full] [--rounds N] [--duration S] [--scenarios a,b,...] [--port-base P]
#                      [--baseline OTHER_SEGD_BINARY]   (runs it as 'base' in the same rounds: before/after)
# Installs what it needs (nginx, wrk, nghttp2-client, ffmpeg), builds segd in release, generates
# the corpus (benches/corpus.sh), and writes raw.csv + summary.md under benches/results/<date>-<commit>/.
# Scenarios: hot, large, download5m, c2000, c10k, h2c, playlists, cold, idle10k, hot-unpinned, https, h2tls,
# https-large, https-large-read (HTTP/3 has its own: benches/h3_vs_tls.py).
# Rounds: 3 per scenario of 10 s; 25 of 4 s for large, 7 for download5m, c2000, c10k and idle10k (the noisiest);
# --rounds N sets all. The summary gives each figure's spread across rounds.
# Ports 18080-18090 and 18443-18444 (--port-base moves them all; a port someone else already
# serves stops the run, since both servers bind with SO_REUSEPORT and would share it silently).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=small; pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done
need=()
for t in nginx:nginx-light wrk:wrk h2load:nghttp2-client ffmpeg:ffmpeg taskset:util-linux; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q
corpus=${SEGD_BENCH_DIR:-/var/tmp/segd-bench}
benches/corpus.sh "$corpus" "$preset"
out="benches/results/$(date -u +%Y-%m-%d-%H%M)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)"
python3 benches/vs_nginx/run.py --corpus "$corpus/root" --segd "${CARGO_TARGET_DIR:-target}/release/segd" --out "$out" "${pass[@]}"
echo "compare: results in $out"
