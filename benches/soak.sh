#!/usr/bin/env bash
# Soak test (a benchmark, not a CI test): mixed load for a fixed time with thousands of
# connections, random aborts, resets and hostile requests mixed in; reports error rate, p99 per
# window, and segd's descriptor count and RSS at start and end (must be flat).
#   benches/soak.sh [--minutes 10] [--conns 2000] [--window 30]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q
corpus=${SEGD_BENCH_DIR:-/var/tmp/segd-bench}
benches/corpus.sh "$corpus" small
exec python3 benches/soak.py --segd target/release/segd --corpus "$corpus/root" "$@"
