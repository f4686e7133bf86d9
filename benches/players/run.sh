#!/usr/bin/env bash
# Player harness: live streams pushed into segd by ffmpeg, played in headless Chromium with
# hls.js (lowLatencyMode) and dash.js (low-latency, catch-up on); reports stalls and live latency.
#
#   benches/players/run.sh SEGD_BINARY [--seconds 30] [--source hls,dash,dash-number[,llhls]]
#                          [--out DIR] [--hls-live-delay S] [--dash-live-delay 3]
#                          [--max-stalls N] [--max-latency-p95 S] [--verbose] [--keep-tmp]
#
# Sources (each pushes into its own directory under /live/ with an upload token in the path):
#   hls          ffmpeg HLS, MPEG-TS, 2 s segments, 6 in the playlist (the non-LL baseline)
#   dash         ffmpeg LL-DASH, chunked CMAF (-streaming 1 -ldash 1), 2 s segments of 0.5 s
#                chunks, SegmentTimeline (ffmpeg's default: a segment is listed once complete)
#   dash-number  the same with -use_timeline 0: SegmentTemplate@duration with
#                availabilityTimeOffset, so dash.js asks for a segment while it is being written
#                (the case read-while-write is for)
#   llhls        tests/tools/llhls_packager.py if present (see README.md), else skipped
#
# Environment:
#   SEGD_PLAYERS_LIVE=auto|1|0  add `[live] prefixes = ["/live/"]` to segd's config: auto (default)
#                               adds it when `segd check-config` accepts it, 1 requires it, 0 never
#   PLAYERS_PORT_BASE=N         fixed ports N (segd), N+1 (admin), N+2 (page server); default:
#                               free ports picked at random in 20000-32767
#   CHROMIUM=/usr/bin/chromium  the browser (playwright-core drives it; never downloaded)
#   LLHLS_PACKAGER, LLHLS_ARGS  the LL-HLS source hook (README.md)
#   INGEST_FSYNC=true|false     segd's [ingest] fsync (default true, as in production)
#
# Writes DIR/summary.md and DIR/raw/<source>.json (default
# benches/results/<date>-<commit>-players/), logs in DIR/logs/ (not committed).
# Exit status: 0 every stream played and met the thresholds; 1 a stream did not; 2 the harness
# could not run (missing tool, bind error, a source that never published). Every process it
# starts is stopped on exit, also on SIGINT/SIGTERM.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { echo "run.sh: $*" >&2; exit 2; }
say() { echo "== $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 SEGD_BINARY [--seconds N] [--source LIST] [--out DIR] ..."
segd=$1; shift
case $segd in /*) ;; *) segd=$PWD/$segd ;; esac
[ -x "$segd" ] || die "$segd is not an executable (build it: cargo build --release)"

seconds=30
sources=""
outdir=""
hls_live_delay=""
dash_live_delay=3
max_stalls=""
max_p95=""
verbose=0
keep_tmp=0
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --source|--sources) sources="${sources:+$sources,}$2"; shift 2 ;;
    --out) outdir=$2; shift 2 ;;
    --hls-live-delay) hls_live_delay=$2; shift 2 ;;
    --dash-live-delay) dash_live_delay=$2; shift 2 ;;
    --max-stalls) max_stalls=$2; shift 2 ;;
    --max-latency-p95) max_p95=$2; shift 2 ;;
    --verbose) verbose=1; shift ;;
    --keep-tmp) keep_tmp=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
sources=${sources:-hls,dash,dash-number}
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -ge 5 ] || die "--seconds must be an integer >= 5"
IFS=, read -r -a source_list <<<"$sources"
for s in "${source_list[@]}"; do
  case $s in hls|dash|dash-number|llhls) ;; *) die "unknown source $s (hls, dash, dash-number, llhls)" ;; esac
done

# --- tools ----------------------------------------------------------------------------------
chromium_bin=${CHROMIUM:-/usr/bin/chromium}
for t in ffmpeg node python3 curl; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install ffmpeg nodejs python3 curl)"
done
[ -x "$chromium_bin" ] || die "$chromium_bin not found (apt-get install chromium)"
[ -d "$here/node_modules/playwright-core" ] && [ -d "$here/node_modules/hls.js" ] && [ -d "$here/node_modules/dashjs" ] \
  || die "node_modules missing: (cd benches/players && npm ci)"

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo nogit)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit-dirty"; fi
stamp=$(date +%Y-%m-%d-%H%M)
outdir=${outdir:-$repo/benches/results/$stamp-$commit-players}
mkdir -p "$outdir/raw" "$outdir/logs"
outdir=$(cd "$outdir" && pwd)
logs=$outdir/logs

# --- processes: every one started is recorded and stopped on exit ---------------------------
work=$(mktemp -d /tmp/segd-players.XXXXXX)
declare -A pid_of=()
play_pid=""

stop_pid() { # pid name: TERM, up to 5 s, then KILL
  local pid=$1 name=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run.sh: $name ($pid) ignored SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "${watchdog_pid:-}" ]; then kill "$watchdog_pid" 2>/dev/null || true; wait "$watchdog_pid" 2>/dev/null || true; fi
  [ -n "$play_pid" ] && stop_pid "$play_pid" "play.mjs"
  local name
  for name in "${!pid_of[@]}"; do
    case $name in ffmpeg-*|llhls) stop_pid "${pid_of[$name]}" "$name" ;; esac
  done
  for name in "${!pid_of[@]}"; do
    case $name in ffmpeg-*|llhls) ;; *) stop_pid "${pid_of[$name]}" "$name" ;; esac
  done
  if [ "$keep_tmp" = 1 ]; then echo "run.sh: temp dir kept: $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM HUP

# spawn NAME LOG CMD...: start CMD in the background with stdout+stderr to LOG.
spawn() {
  local name=$1 log=$2; shift 2
  "$@" >"$log" 2>&1 </dev/null &
  pid_of[$name]=$!
  echo "$!" >>"$work/pids"
}

# If this script is killed with SIGKILL (no trap runs), a watchdog stops what it started.
# ffmpeg also stops by itself (-t), play.mjs has its own hard timeout.
touch "$work/pids"
(
  trap - EXIT INT TERM HUP
  set +e
  parent=$$
  while kill -0 "$parent" 2>/dev/null; do sleep 1; done
  while read -r p; do kill -TERM "$p" 2>/dev/null; done <"$work/pids"
  sleep 5
  while read -r p; do kill -KILL "$p" 2>/dev/null; done <"$work/pids"
  rm -rf "$work"
) >/dev/null 2>&1 </dev/null &
watchdog_pid=$!

# wait_line NAME LOG PATTERN SECONDS: until LOG has PATTERN; fails loudly if NAME exits first.
wait_line() {
  local name=$1 log=$2 pat=$3 secs=$4 i
  for i in $(seq $((secs * 10))); do
    grep -q -- "$pat" "$log" 2>/dev/null && return 0
    if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
      echo "run.sh: $name exited before it was ready:" >&2
      tail -n 30 "$log" >&2
      exit 2
    fi
    sleep 0.1
  done
  echo "run.sh: $name not ready after $secs s:" >&2
  tail -n 30 "$log" >&2
  exit 2
}

# --- ports (below 32768, clear of the ephemeral range) -------------------------------------
if [ -n "${PLAYERS_PORT_BASE:-}" ]; then
  read -r segd_port admin_port web_port <<<"$PLAYERS_PORT_BASE $((PLAYERS_PORT_BASE + 1)) $((PLAYERS_PORT_BASE + 2))"
else
  read -r segd_port admin_port web_port < <(python3 - <<'EOF'
import random, socket
got = []
cands = list(range(20000, 32768))
random.shuffle(cands)
for p in cands:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    got.append(p)
    if len(got) == 3:
        break
print(*got)
EOF
)
fi
for p in "$segd_port" "$admin_port" "$web_port"; do
  [[ $p =~ ^[0-9]+$ ]] && [ "$p" -gt 1024 ] && [ "$p" -lt 32768 ] || die "port $p not in 1025-32767"
done

# --- segd config ------------------------------------------------------------------------------
mkdir -p "$work/disk1"
up_secret=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
write_config() { # with_live(0|1)
  cat >"$work/segd.toml" <<EOF
[server]
listen = ["127.0.0.1:$segd_port"]
workers = 2
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:$admin_port"

[[volumes]]
name = "disk1"
path = "$work/disk1"

[log]
access = "$logs/segd-access.log"

[cors]
allow_origins = ["*"]

[ingest]
prefixes = ["/live/"]
fsync = ${INGEST_FSYNC:-true}

[[ingest.keys]]
id = "players"
secret = "$up_secret"
EOF
  if [ "$1" = 1 ]; then
    printf '\n[live]\nprefixes = ["/live/"]\n' >>"$work/segd.toml"
  fi
}

live_mode=${SEGD_PLAYERS_LIVE:-auto}
case $live_mode in
  0|off) write_config 0; live_state="off (SEGD_PLAYERS_LIVE=0)" ;;
  1|on)
    write_config 1
    "$segd" check-config --config "$work/segd.toml" >"$work/check.log" 2>&1 \
      || { cat "$work/check.log" >&2; die "SEGD_PLAYERS_LIVE=1 but segd refuses [live]"; }
    live_state="on" ;;
  auto)
    write_config 1
    if "$segd" check-config --config "$work/segd.toml" >"$work/check.log" 2>&1; then
      live_state="on (auto)"
    elif grep -q 'live' "$work/check.log"; then
      write_config 0
      live_state="off (auto: this segd does not know [live]: $(grep -m1 'live' "$work/check.log" | sed 's/^[^:]*: //'))"
    else
      cat "$work/check.log" >&2; die "segd check-config failed"
    fi ;;
  *) die "SEGD_PLAYERS_LIVE must be auto, 1 or 0" ;;
esac
"$segd" check-config --config "$work/segd.toml" >"$work/check.log" 2>&1 \
  || { cat "$work/check.log" >&2; die "segd check-config failed"; }
cp "$work/segd.toml" "$logs/segd.toml"
say "segd $("$segd" --version 2>/dev/null | head -1), [live] $live_state"

# --- servers ----------------------------------------------------------------------------------
spawn segd "$logs/segd.log" env RUST_LOG=info "$segd" serve --config "$work/segd.toml"
wait_line segd "$logs/segd.log" "admin http://" 20
grep -q "listening http://127.0.0.1:$segd_port" "$logs/segd.log" || die "segd is not on port $segd_port: $(cat "$logs/segd.log")"
spawn web "$logs/serve.log" python3 "$here/serve.py" --port "$web_port"
wait_line web "$logs/serve.log" "serving http://" 10
media=http://127.0.0.1:$segd_port
page=http://127.0.0.1:$web_port/player.html
say "segd $media (admin :$admin_port), player page $page"

base=$("$segd" sign --config "$work/segd.toml" --upload --acl '/live/*' --ttl 6h | sed -n 's/^path: *//p')
[[ $base == http://127.0.0.1:$segd_port/__token__=*/live/ ]] || die "cannot parse the upload URL from segd sign: '$base'"

# --- sources ----------------------------------------------------------------------------------
n=${#source_list[@]}
src_limit=$((90 + n * (seconds + 60))) # ffmpeg stops by itself even if this script is killed -9
lavfi=(-hide_banner -nostdin -loglevel warning -re -f lavfi -i sine=frequency=440:sample_rate=48000
  -t "$src_limit" -c:a aac -b:a 128k)
dash_common=(-f dash -seg_duration 2 -frag_duration 0.5 -window_size 10 -streaming 1 -ldash 1
  -utc_timing_url "http://127.0.0.1:$web_port/time" -method PUT)
declare -A play_url=() engine_of=() live_delay_of=() skipped=() cmd_of=()

start_source() {
  local s=$1 cmd
  case $s in
    hls)
      cmd=(ffmpeg "${lavfi[@]}" -f hls -hls_time 2 -hls_list_size 6 -hls_flags delete_segments -method PUT "${base}hls1/index.m3u8")
      play_url[$s]=$media/live/hls1/index.m3u8; engine_of[$s]=hls; live_delay_of[$s]=$hls_live_delay ;;
    dash)
      cmd=(ffmpeg "${lavfi[@]}" "${dash_common[@]}" "${base}dash1/manifest.mpd")
      play_url[$s]=$media/live/dash1/manifest.mpd; engine_of[$s]=dash; live_delay_of[$s]=$dash_live_delay ;;
    dash-number)
      cmd=(ffmpeg "${lavfi[@]}" "${dash_common[@]}" -use_timeline 0 -use_template 1 "${base}dash2/manifest.mpd")
      play_url[$s]=$media/live/dash2/manifest.mpd; engine_of[$s]=dash; live_delay_of[$s]=$dash_live_delay ;;
    llhls)
      local script=${LLHLS_PACKAGER:-$repo/tests/tools/llhls_packager.py}
      if [ ! -f "$script" ]; then
        skipped[$s]="$script not present"
        echo "run.sh: llhls skipped: $script not present" >&2
        return 0
      fi
      # 2 s segments (the packager's default target duration) for as long as ffmpeg's sources run
      local args=${LLHLS_ARGS:-"{base} --segments {segments}"}
      args=${args//\{url\}/${base}llhls1/index.m3u8}
      args=${args//\{base\}/${base}llhls1/}
      args=${args//\{time\}/http://127.0.0.1:$web_port/time}
      args=${args//\{seconds\}/$src_limit}
      args=${args//\{segments\}/$((src_limit / 2))}
      # shellcheck disable=SC2206 # word splitting of the argument template is intended
      cmd=(python3 "$script" $args)
      play_url[$s]=$media${LLHLS_PLAYLIST:-/live/llhls1/index.m3u8}; engine_of[$s]=hls; live_delay_of[$s]=$hls_live_delay ;;
  esac
  cmd_of[$s]=$(printf '%q ' "${cmd[@]}" | sed 's/__token__=[^/]*/__token__=TOKEN/g')
  if [ "$s" = llhls ]; then spawn llhls "$logs/source-$s.log" "${cmd[@]}"
  else spawn "ffmpeg-$s" "$logs/source-$s.log" "${cmd[@]}"; fi
}

source_pid() { if [ "$1" = llhls ]; then echo "${pid_of[llhls]:-}"; else echo "${pid_of[ffmpeg-$1]:-}"; fi; }

# ready SOURCE: the stream has at least 3 segments (HLS) / 2 complete segments (DASH).
ready() {
  local s=$1 body code
  body=$(curl -s --max-time 3 "${play_url[$s]}" || true)
  case ${engine_of[$s]} in
    hls) [ "$(grep -c '^#EXTINF' <<<"$body")" -ge 3 ] ;;
    dash)
      grep -q 'type="dynamic"' <<<"$body" || return 1
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "${play_url[$s]%/*}/chunk-stream0-00002.m4s" || true)
      [ "$code" = 200 ] ;;
  esac
}

for s in "${source_list[@]}"; do start_source "$s"; done
for s in "${source_list[@]}"; do
  [ -n "${skipped[$s]:-}" ] && continue
  say "waiting for source $s"
  ok=0
  for i in $(seq 150); do
    if ready "$s"; then ok=1; break; fi
    pid=$(source_pid "$s")
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logs/source-$s.log" >&2; die "source $s exited"; }
    sleep 0.2
  done
  [ "$ok" = 1 ] || { tail -n 30 "$logs/source-$s.log" >&2; die "source $s did not publish within 30 s"; }
done

# --- play -------------------------------------------------------------------------------------
worst=0
declare -A rc_of=()
for s in "${source_list[@]}"; do
  [ -n "${skipped[$s]:-}" ] && continue
  pid=$(source_pid "$s")
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "run.sh: source $s is no longer running:" >&2; tail -n 30 "$logs/source-$s.log" >&2
    rc_of[$s]=2; worst=2; continue
  fi
  say "playing $s (${engine_of[$s]}) for $seconds s: ${play_url[$s]}"
  args=(--engine "${engine_of[$s]}" --url "${play_url[$s]}" --page "$page" --seconds "$seconds"
    --label "$s" --out "$outdir/raw/$s.json")
  [ -n "${live_delay_of[$s]}" ] && args+=(--live-delay "${live_delay_of[$s]}")
  [ -n "$max_stalls" ] && args+=(--max-stalls "$max_stalls")
  [ -n "$max_p95" ] && args+=(--max-latency-p95 "$max_p95")
  [ "$verbose" = 1 ] && args+=(--verbose)
  set +e
  timeout --kill-after=10 $((seconds + 120)) env CHROMIUM="$chromium_bin" node "$here/play.mjs" "${args[@]}" \
    >"$logs/play-$s.json" 2>"$logs/play-$s.log" &
  play_pid=$!
  echo "$play_pid" >>"$work/pids"
  wait "$play_pid"
  rc=$?
  play_pid=""
  set -e
  [ "$verbose" = 1 ] && cat "$logs/play-$s.log" >&2
  rc_of[$s]=$rc
  if [ "$rc" -ge 2 ]; then
    echo "run.sh: play.mjs failed for $s (exit $rc):" >&2; tail -n 20 "$logs/play-$s.log" >&2
    worst=2
  elif [ "$rc" = 1 ] && [ "$worst" = 0 ]; then
    worst=1
  fi
  [ "$rc" -lt 2 ] && node -e '
    const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const r = s.requests.segment || { status: {} };
    console.log(`   ${s.label}: ${s.ok ? "ok" : "NOT OK (" + s.reasons.join("; ") + ")"}, start ${s.startupSeconds} s, ` +
      `stalls ${s.stalls} (${s.stallSeconds} s), latency p50 ${s.latency.p50} s p95 ${s.latency.p95} s, ` +
      `errors ${s.errors.fatal}/${s.errors.nonFatal}, segments ${JSON.stringify(r.status)}`);
  ' "$logs/play-$s.json" >&2 2>/dev/null || true
done

curl -s --max-time 5 "http://127.0.0.1:$admin_port/metrics" >"$logs/segd-metrics.txt" || true

# --- report -----------------------------------------------------------------------------------
{
  echo "{"
  echo "\"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "\"commit\": \"$commit\","
  echo "\"segd\": $(printf '%s' "$segd" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),"
  echo "\"segdVersion\": \"$("$segd" --version 2>/dev/null | head -1)\","
  echo "\"live\": $(printf '%s' "$live_state" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'),"
  echo "\"seconds\": $seconds,"
  echo "\"ffmpeg\": \"$(ffmpeg -version | head -1 | cut -d' ' -f1-3)\","
  echo "\"machine\": \"$(uname -sr), $(nproc) cores\","
  echo "\"sources\": {"
  first=1
  for s in "${source_list[@]}"; do
    [ $first = 1 ] || echo ","
    first=0
    printf '"%s": {"command": %s, "skipped": %s, "exit": %s}' "$s" \
      "$(printf '%s' "${cmd_of[$s]:-}" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')" \
      "$(printf '%s' "${skipped[$s]:-}" | python3 -c 'import json,sys; s=sys.stdin.read(); print(json.dumps(s) if s else "null")')" \
      "${rc_of[$s]:-null}"
  done
  echo "}}"
} >"$outdir/raw/meta.json"
node "$here/report.mjs" "$outdir/raw/meta.json" "$outdir/raw" >"$outdir/summary.md" \
  || echo "run.sh: report.mjs failed" >&2
say "summary: $outdir/summary.md"
exit "$worst"
