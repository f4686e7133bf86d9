#!/usr/bin/env bash
# Runs every fuzz target for a fixed time from the committed seeds (fuzz/seeds/<target>).
#   fuzz/run.sh [SECONDS_PER_TARGET=60] [TARGET...]
# Findings land in fuzz/artifacts/<target>/; each one fixed gets a regression test.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(path token range playlist config)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes flags that need a nightly compiler; on a stable toolchain allow them.
rustc --version | grep -q nightly || export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
  echo "== fuzz $t for ${secs}s"
  log=$(mktemp)
  if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -v '^#[0-9]' "$log" | grep -B2 -A25 -m1 -E "panicked|ERROR|SUMMARY" || tail -n 60 "$log"
    echo "== fuzz $t: FINDING (input saved under fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E "^Done|stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$log"
  rm -f "$log"
done
