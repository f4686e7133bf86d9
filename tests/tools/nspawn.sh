#!/usr/bin/env bash
# A throwaway machine with a real systemd as PID 1, for checking segd's units as operators run
# them (tests/ops.rs, docs/systemd-verified.md). Needs root and systemd-nspawn (Debian package
# systemd-container); works where PID 1 is not systemd.
#
#   nspawn.sh up DIR     boots it; prints the host pid of its PID 1 (enter with nsenter -t PID -a)
#   nspawn.sh down DIR   powers it off and removes DIR's mounts and DIR
#
# Its root (DIR/root) is an overlay of this machine's / with a tmpfs on top (DIR/rw): everything
# installed here (and the segd being tested, under /work or wherever) is visible, and nothing it
# writes reaches the host. It has its own network namespace (loopback only), so ports 80, 443
# and 9090 are free in it. The host's enabled services are left out (nothing but systemd's own
# units starts), and it gets a machine id of its own. cgroup v2, as Debian 12 and Ubuntu 22.04 use.
set -euo pipefail
cmd=${1:?up|down}
dir=${2:?DIR}
root=$dir/root

case $cmd in
up)
  command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn missing (apt-get install systemd-container)" >&2; exit 2; }
  mkdir -p "$dir/rw" "$root"
  mountpoint -q "$dir/rw" || mount -t tmpfs -o mode=755 tmpfs "$dir/rw"
  mkdir -p "$dir/rw/upper" "$dir/rw/work"
  mountpoint -q "$root" || mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$dir/rw/upper,workdir=$dir/rw/work" "$root"
  rm -f "$root"/etc/systemd/system/*.target.wants/*.service
  rm -f "$root"/etc/systemd/system/*.target.wants/*.timer
  systemd-id128 new >"$root/etc/machine-id"
  # --keep-unit and --register=no: no systemd (machined, a bus) on this side is needed.
  SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn -D "$root" --private-network \
    --register=no --keep-unit --link-journal=no -M "segd-$(basename "$dir")" \
    --console=passive -b >"$dir/console.log" 2>&1 </dev/null &
  echo $! >"$dir/nspawn.pid"
  # One deadline for the whole boot, however the waits below go.
  end=$((SECONDS + 60))
  while [ $SECONDS -lt $end ]; do
    leader=$(pgrep -P "$(cat "$dir/nspawn.pid")" 2>/dev/null | head -1 || true)
    state=""
    left=$((end - SECONDS))
    [ -n "$leader" ] && [ $left -gt 0 ] && state=$(timeout "$left" nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null || true)
    if [ "$state" = running ] || [ "$state" = degraded ]; then
      # degraded: one of the host's own units failed in here; segd's are what is tested.
      [ "$state" = degraded ] && nsenter -t "$leader" -a systemctl --failed --no-legend >&2
      echo "$leader" >"$dir/leader.pid"
      echo "$leader"
      exit 0
    fi
    kill -0 "$(cat "$dir/nspawn.pid")" 2>/dev/null || break
    sleep 0.1
  done
  echo "the container did not boot; its console:" >&2
  cat "$dir/console.log" >&2
  exit 1
  ;;
down)
  pid=$(cat "$dir/nspawn.pid" 2>/dev/null || true)
  # Only the nspawn this script started: a pid that was reused since is someone else's.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd-nspawn ]; then
    kill -TERM "$pid" # nspawn asks the container's systemd to power off
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  # Only once the mounts are gone is anything removed (never through the overlay).
  if mountpoint -q "$root"; then umount "$root" || umount -l "$root"; fi
  if mountpoint -q "$dir/rw"; then umount "$dir/rw" || umount -l "$dir/rw"; fi
  mountpoint -q "$root" || mountpoint -q "$dir/rw" || rm -rf "$dir"
  ;;
*)
  echo "usage: $0 up|down DIR" >&2
  exit 2
  ;;
esac
