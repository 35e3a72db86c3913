#!/usr/bin/env bash
# A soak for a rare hang: pjdfstest through umbra's live mount while sets
# are taken throughout (as tests/posix.rs does), RUNS times, each with a
# fresh daemon. The kernel's fuse tracepoints of the daemon's own two
# connections are recorded in a tracing instance of their own; a run that
# outlives TIMEOUT seconds is a hang, and then the requests sent and never
# answered, fusectl's `waiting` counts, every daemon thread's kernel stack
# and the stuck processes' stacks are saved under OUT/run-N before the
# connections are aborted.
#
#   tests/pjdfstest_loop.sh [RUNS] [TIMEOUT]    (root; pjdfstest, nobody, tests)
#
# UMBRA_BIN picks the binary (default target/debug/umbra), OUT the report
# directory (default /tmp/umbra-pjdfstest-loop). NOSET_FIRST=1 first runs
# pjdfstest once with no set on the same daemon, as tests/posix.rs does.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-50}
timeout=${2:-120}
bin=${UMBRA_BIN:-$PWD/target/debug/umbra}
pjd=${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}
out=${OUT:-/tmp/umbra-pjdfstest-loop}
mkdir -p "$out"

tracing=/sys/kernel/tracing
mountpoint -q "$tracing" || mount -t tracefs nodev "$tracing"
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections
inst=$tracing/instances/umbra-loop-$$
mkdir "$inst"
echo 65536 >"$inst/buffer_size_kb"

cleanup() {
  echo 0 >"$inst/events/fuse/enable" 2>/dev/null
  rmdir "$inst" 2>/dev/null
}
trap cleanup EXIT

# The fusectl connection number of a FUSE mount is its device's minor.
conn_of() { stat -c %d "$1" | awk '{ print $1 % 256 + int($1 / 1048576) * 256 }'; }

hangs=0
for ((i = 1; i <= runs; i++)); do
  root=$(mktemp -d /tmp/umbra-loop-XXXXXX)
  chmod 755 "$root"
  mkdir -p "$root/backing/data" "$root/live/data" "$root/snapshots"
  cat >"$root/umbra.toml" <<EOF
state_dir = "$root/state"
socket = "$root/umbra.sock"
snapshots = "$root/snapshots"

[[volume]]
name = "data"
backing = "$root/backing/data"
mount = "$root/live/data"
EOF
  printf '[features]\nposix_fallocate = {}\nrename_ctime = {}\nutime_now = {}\nutimensat = {}\n[settings]\nnaptime = 0.02\nallow_remount = false\n' >"$root/pjdfstest.toml"
  "$bin" up --config "$root/umbra.toml" >"$root/daemon.out" 2>"$root/daemon.err" &
  daemon=$!
  for _ in $(seq 100); do grep -q '^umbra: ready' "$root/daemon.out" && break; sleep 0.1; done
  live_conn=$(conn_of "$root/live/data")
  snap_conn=$(conn_of "$root/snapshots")
  echo 0 >"$inst/events/fuse/enable"
  echo "connection == $live_conn || connection == $snap_conn" >"$inst/events/fuse/filter"
  : >"$inst/trace"
  echo 1 >"$inst/events/fuse/enable"

  if [ "${NOSET_FIRST:-0}" = 1 ]; then
    mkdir -p "$root/live/data/no-set"
    (cd "$root/live/data/no-set" && NO_COLOR=1 timeout "$timeout" "$pjd" -c "$root/pjdfstest.toml" \
       -p "$root/live/data/no-set" -s /dev/shm >"$root/pjdfstest-no-set.out" 2>&1) ||
      echo "run $i: the run with no set failed or timed out"
  fi
  "$bin" create --socket "$root/umbra.sock" >/dev/null
  (while [ ! -e "$root/stop" ]; do "$bin" create --socket "$root/umbra.sock" >/dev/null || break; done) &
  taker=$!
  mkdir -p "$root/live/data/with-sets"
  start=$(date +%s)
  (cd "$root/live/data/with-sets" && NO_COLOR=1 "$pjd" -c "$root/pjdfstest.toml" -p "$root/live/data/with-sets" \
     -s /dev/shm >"$root/pjdfstest.out" 2>&1) &
  pjdpid=$!
  hung=0
  while kill -0 "$pjdpid" 2>/dev/null; do
    if (($(date +%s) - start > timeout)); then hung=1; break; fi
    sleep 1
  done
  if ((hung)); then
    hangs=$((hangs + 1))
    dir=$out/run-$i
    mkdir -p "$dir"
    echo 0 >"$inst/events/fuse/enable"
    cp "$inst/trace" "$dir/trace"
    for c in "$live_conn" "$snap_conn"; do
      echo "connection $c waiting $(cat /sys/fs/fuse/connections/$c/waiting)" >>"$dir/fusectl"
    done
    for t in /proc/$daemon/task/*; do
      { echo "== $t $(cat "$t/comm") wchan=$(cat "$t/wchan")"; cat "$t/stack"; } >>"$dir/daemon-stacks" 2>&1
    done
    for p in $(pgrep -P "$pjdpid") $pjdpid $(pgrep -f "^$pjd" ); do
      for t in /proc/$p/task/*; do
        { echo "== $t $(tr '\0' ' ' <"/proc/$p/cmdline") wchan=$(cat "$t/wchan")"; cat "$t/stack"; } >>"$dir/stuck-stacks" 2>&1
      done
    done
    # Requests sent on our connections and never ended.
    awk '/fuse_request_send/ { for (k = 1; k <= NF; k++) if ($k == "req") u = $(k + 1); sent[u] = $0 }
         /fuse_request_end/  { for (k = 1; k <= NF; k++) if ($k == "req") u = $(k + 1); delete sent[u] }
         END { for (u in sent) print sent[u] }' "$dir/trace" >"$dir/unanswered"
    cp "$root/daemon.err" "$root/pjdfstest.out" "$dir/" 2>/dev/null
    echo "run $i: HUNG after ${timeout}s; see $dir"
    for c in "$live_conn" "$snap_conn"; do echo 1 >"/sys/fs/fuse/connections/$c/abort" 2>/dev/null; done
    kill "$pjdpid" 2>/dev/null
  fi
  wait "$pjdpid" 2>/dev/null
  touch "$root/stop"
  wait "$taker" 2>/dev/null
  sets=$(ls "$root/snapshots" 2>/dev/null | grep -vc latest)
  kill -TERM "$daemon" 2>/dev/null
  wait "$daemon" 2>/dev/null
  umount -l "$root/live/data" "$root/snapshots" 2>/dev/null
  summary=$(grep -c ' ok$' "$root/pjdfstest.out")
  failed=$(grep -c ' FAILED$' "$root/pjdfstest.out")
  traced=$(grep -c fuse_request_send "$inst/trace")
  echo "run $i: $(($(date +%s) - start))s, $summary ok, $failed failed, $sets sets, $traced requests traced, hung=$hung"
  rm -rf "$root"
done
echo "$runs runs, $hangs hung"
