#!/usr/bin/env bash
# The providers benchmark (issue 12): umbra's btrfs provider against the same
# btrfs subvolume used without umbra, the hold of a set per provider, and
# snapshot reads of a btrfs set against the snapshot read natively. Everything
# runs on a btrfs made on a loop device whose image lives in BENCH_DIR (the
# same disk as bench/run.sh's targets), and a cow volume beside it in
# BENCH_DIR itself, all in one run.
#
# Run as root:          bench/providers.sh
# A quick look:         BENCH_SCALE=0.1 bench/providers.sh
#
# Environment (all optional):
#   BENCH_SCALE=1       multiplies sizes and counts
#   BENCH_REPS=3        runs of each live workload (median reported)
#   BENCH_HOLDS=30      sets per hold measurement
#   BENCH_DIR=/var/tmp  where the image and directories go
#   BENCH_OUT=FILE      the Markdown report (default BENCHMARKS-providers-latest.md)
#   BENCH_NO_BUILD=1    use the umbra binary already built
#
# Benchmarks are never pass/fail: this prints numbers and exits 0 unless the
# harness itself broke. Everything it mounts or starts is undone on exit.
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${BENCH_SCALE:-1}
REPS=${BENCH_REPS:-3}
HOLDS=${BENCH_HOLDS:-30}
OUT=${BENCH_OUT:-$REPO/BENCHMARKS-providers-latest.md}

log() { printf '[providers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
scaled() { awk -v n="$1" -v s="$SCALE" -v m="${2:-1}" 'BEGIN { x = int(n * s); print (x < m ? m : x) }'; }
us() { echo "${EPOCHREALTIME/./}"; }

[ "$(id -u)" = 0 ] || die "run as root: the harness makes a loop btrfs, mounts FUSE and drops caches"

. "$REPO/bench/common.sh"
install_missing fio:fio jq:jq mkfs.btrfs:btrfs-progs fusermount3:fuse3
build_umbra

R=$(mktemp -d "${BENCH_DIR:-/var/tmp}/umbra-providers.XXXXXX")
B="$R/btrfs"
VAULT="$B/vault"
CONF="$R/umbra.toml"
SNAPS="$R/snapshots"
RESULTS="$R/results.tsv"
: > "$RESULTS"
export UMBRA_SOCKET="$R/state/control.sock"
UMBRA_PID=""
LOAD_PIDS=()

cleanup() {
  set +e
  trap - ERR
  for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  stop_umbra
  for m in $(awk -v r="$R/" 'index($2 "/", r) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  if [ -z "$(awk -v r="$R/" 'index($2 "/", r) == 1' /proc/self/mounts)" ]; then
    rm -rf "$R"
  else
    log "mounts remain under $R; not removing it"
  fi
}
trap cleanup EXIT
trap 'die "line $LINENO: $BASH_COMMAND"' ERR

start_umbra() {
  [ -z "$UMBRA_PID" ] || return 0
  "$UMBRA" up --config "$CONF" > "$R/up.out" 2>> "$R/up.err" &
  UMBRA_PID=$!
  for _ in $(seq 200); do
    grep -q '^umbra: ready' "$R/up.out" 2>/dev/null && return 0
    kill -0 "$UMBRA_PID" 2>/dev/null || die "umbra up exited: $(tail -3 "$R/up.err")"
    sleep 0.05
  done
  die "umbra up was not ready in 10 s"
}

stop_umbra() {
  [ -n "$UMBRA_PID" ] || return 0
  kill -TERM "$UMBRA_PID" 2>/dev/null
  wait "$UMBRA_PID" 2>/dev/null
  UMBRA_PID=""
}

rec() { printf '%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; log "$1 / $2 [$3] = $4"; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
p99() { sort -g | awk '{ a[NR] = $1 } END { i = int(NR * 0.99 + 0.999); if (i < 1) i = 1; print a[i] }'; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# ------------------------------------------------------------ the machine
log "making a btrfs on a loop device in $R"
IMG_GB=$(scaled 40 4)
truncate -s "${IMG_GB}G" "$R/btrfs.img"
mkfs.btrfs -q "$R/btrfs.img"
mkdir -p "$B" "$R/data" "$SNAPS"
mount -o loop "$R/btrfs.img" "$B"
btrfs -q subvolume create "$VAULT"
cat > "$CONF" <<CONF
state_dir = "$R/state"
snapshots = "$SNAPS"
max_sets = 512

[[volume]]
name = "data"
backing = "$R/data"

[[volume]]
name = "vault"
backing = "$VAULT"
provider = "btrfs"
CONF

SEQ_MB=$(scaled 1024 64)
RAND_MB=$(scaled 512 32)
RT=${BENCH_FIO_RUNTIME:-8}

fio_seq() {
  fio --name=seq --directory="$1" --filename=seq.$2 --rw=write --bs=1M --size="${SEQ_MB}M" \
    --ioengine=psync --end_fsync=1 --runtime="$RT" --output-format=json 2>/dev/null |
    jq '.jobs[0].write.bw_bytes / 1048576 * 10 | round / 10'
}
fio_rand() {
  fio --name=rand --directory="$1" --filename=rand.$2 --rw=randwrite --bs=4k --size="${RAND_MB}M" \
    --ioengine=psync --end_fsync=1 --runtime="$RT" --time_based=0 --output-format=json 2>/dev/null |
    jq '.jobs[0].write.bw_bytes / 1048576 * 10 | round / 10'
}
# The input of the untar: crates from the local cargo registry, as bench/run.sh.
TARBALLS=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/*.crate 2>/dev/null | head -n "$(scaled 300 20)" || true)
[ -n "$TARBALLS" ] || die "no crates in the cargo registry cache to untar"
untar() { mkdir -p "$1"; for t in $TARBALLS; do tar xzf "$t" -C "$1"; done; sync -f "$1"; }

# One step of a live workload on the subvolume, after a copy of it was made
# just before: by umbra (`umbra create vault`, umbra running) or by btrfs
# alone (`btrfs subvolume snapshot -r`, umbra stopped).
run_live() {
  local target=$1 rep=$2 t0 v
  copy() {
    if [ "$target" = umbra ]; then "$UMBRA" create vault > /dev/null
    else btrfs -q subvolume snapshot -r "$VAULT" "$B/plain.$rep.$1"; fi
  }
  # Each input laid before the step, untimed, then a set, then the step.
  dd if=/dev/zero of="$VAULT/seq.$rep" bs=1M count="$SEQ_MB" status=none; sync
  copy seq
  rec live "seq write 1 MiB, first overwrite (MiB/s)" "$target" "$(fio_seq "$VAULT" "$rep")"
  dd if=/dev/urandom of="$VAULT/rand.$rep" bs=1M count="$RAND_MB" status=none; sync
  copy rand
  rec live "4 KiB random write, first overwrite (MiB/s)" "$target" "$(fio_rand "$VAULT" "$rep")"
  copy untar
  t0=$(us); untar "$VAULT/src.$rep"; v=$(( $(us) - t0 ))
  rec live "untar (s)" "$target" "$(awk -v u="$v" 'BEGIN { printf "%.3f", u / 1e6 }')"
  copy rm
  t0=$(us); rm -rf "$VAULT/src.$rep"; sync -f "$VAULT"; v=$(( $(us) - t0 ))
  rec live "rm -rf of the tree (s)" "$target" "$(awk -v u="$v" 'BEGIN { printf "%.3f", u / 1e6 }')"
  rm -f "$VAULT/seq.$rep" "$VAULT/rand.$rep"
  # The copies of this run go, or the snapshots would fill the filesystem.
  if [ "$target" = umbra ]; then "$UMBRA" delete --all > /dev/null
  else for p in "$B"/plain.*; do btrfs -q subvolume delete "$p" > /dev/null; done; fi
  # ... and btrfs's cleaner has finished with them before the next target
  # runs, so that neither target pays for the other's deletions.
  btrfs subvolume sync "$B" > /dev/null
  btrfs filesystem sync "$B" > /dev/null
}

log "live workloads on the subvolume, with and without umbra, $REPS runs each"
# The order alternates (plain first on odd runs, umbra first on even ones),
# so that a drift of the loop device over the run favours neither.
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="plain umbra"; else order="umbra plain"; fi
  for target in $order; do
    if [ "$target" = plain ]; then stop_umbra; else start_umbra; fi
    run_live "$target" "$rep"
  done
done
start_umbra

# ------------------------------------------------------------------ holds
holds() {
  local what=$1 load=$2; shift 2
  local i
  for i in $(seq "$HOLDS"); do
    "$UMBRA" create --json "$@" > "$R/created.json"
    rec hold "$what" "$load" "$(jq '.hold_ms' "$R/created.json")"
    jq -r '.holds[] | "\(.provider)\t\(.hold_ms)"' "$R/created.json" |
      while IFS=$'\t' read -r p h; do rec part "$what: $p" "$load" "$h"; done
    "$UMBRA" delete --oldest 1 > /dev/null
  done
}
# The same copy made by btrfs alone, timed around the command (its spawn
# included, about a millisecond): what snapper or a cron job pays.
plain_snapshots() {
  local load=$1 i t0
  for i in $(seq "$HOLDS"); do
    t0=$(us)
    btrfs -q subvolume snapshot -r "$VAULT" "$B/base.$i"
    rec hold "btrfs alone (no umbra)" "$load" "$(awk -v u="$(( $(us) - t0 ))" 'BEGIN { printf "%.3f", u / 1000 }')"
    btrfs -q subvolume delete "$B/base.$i" > /dev/null
  done
}
log "holds, idle"
"$UMBRA" delete --all > /dev/null || true
for p in "$B"/plain.*; do [ -e "$p" ] && btrfs -q subvolume delete "$p" > /dev/null; done
holds "cow volume" idle data
holds "btrfs volume" idle vault
holds "both (one set)" idle
plain_snapshots idle
log "holds, under a 4 KiB random write load on both volumes"
for dir in "$R/data" "$VAULT"; do
  fio --name=load --directory="$dir" --filename=load --rw=randwrite --bs=4k --size=256M \
    --ioengine=psync --time_based=1 --runtime=3600 > /dev/null 2>&1 &
  LOAD_PIDS+=($!)
done
sleep 2
holds "cow volume" load data
holds "btrfs volume" load vault
holds "both (one set)" load
plain_snapshots load
for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
LOAD_PIDS=()

# ---------------------------------------------------------- snapshot reads
log "snapshot reads of a btrfs set: through /snapshots and natively"
READ_MB=$(scaled 1024 64)
dd if=/dev/urandom of="$VAULT/big" bs=1M count="$READ_MB" status=none; sync
SET_ID=$("$UMBRA" create --json vault | jq -r '.id')
SET_NAME=$("$UMBRA" list --json | jq -r --argjson id "$SET_ID" '.[] | select(.id == $id) | .name')
read_mbs() { local t0 v; t0=$(us); dd if="$1" of=/dev/null bs=1M status=none; v=$(( $(us) - t0 )); awk -v u="$v" -v m="$READ_MB" 'BEGIN { printf "%.1f", m / (u / 1e6) }'; }
for rep in $(seq "$REPS"); do
  for target in native umbra; do
    if [ "$target" = native ]; then f="$VAULT/.umbra/$SET_ID/big"; else f="$SNAPS/$SET_NAME/vault/big"; fi
    cold; rec read "cold (MiB/s)" "$target" "$(read_mbs "$f")"
    rec read "warm (MiB/s)" "$target" "$(read_mbs "$f")"
  done
done
stop_umbra

# ------------------------------------------------------------------ report
{
  echo "## btrfs provider ($(date -u +%Y-%m-%d), $(nproc) cores, kernel $(uname -r), scale $SCALE)"
  echo
  echo "Live workloads on one btrfs subvolume (loop device, image in ${BENCH_DIR:-/var/tmp}), median of $REPS; a copy taken right before each step: by \`umbra create\` with umbra running (umbra), or by \`btrfs subvolume snapshot -r\` with umbra stopped (plain)."
  echo
  echo "| workload | plain | umbra | umbra / plain |"
  echo "| --- | --- | --- | --- |"
  for w in "seq write 1 MiB, first overwrite (MiB/s)" "4 KiB random write, first overwrite (MiB/s)" "untar (s)" "rm -rf of the tree (s)"; do
    p=$(awk -F'\t' -v w="$w" '$1 == "live" && $2 == w && $3 == "plain" { print $4 }' "$RESULTS" | median)
    u=$(awk -F'\t' -v w="$w" '$1 == "live" && $2 == w && $3 == "umbra" { print $4 }' "$RESULTS" | median)
    case $w in *"(s)") r=$(awk -v p="$p" -v u="$u" 'BEGIN { printf "%.2f", p / u }') ;; *) r=$(awk -v p="$p" -v u="$u" 'BEGIN { printf "%.2f", u / p }') ;; esac
    echo "| $w | $p | $u | ${r}× |"
  done
  echo
  echo "Hold of a set (ms, $HOLDS sets each; \`hold_ms\` of \`create --json\`), idle and under a 4 KiB random write load on both volumes; for the set of both, each provider's part:"
  echo
  echo "| set | idle median | idle p99 | load median | load p99 |"
  echo "| --- | --- | --- | --- | --- |"
  for w in "cow volume" "btrfs volume" "both (one set)" "btrfs alone (no umbra)"; do
    row="| $w"
    for l in idle load; do
      vals=$(awk -F'\t' -v w="$w" -v l="$l" '$1 == "hold" && $2 == w && $3 == l { print $4 }' "$RESULTS")
      row="$row | $(echo "$vals" | median) | $(echo "$vals" | p99)"
    done
    echo "$row |"
  done
  for p in cow btrfs; do
    row="| both: the $p part"
    for l in idle load; do
      vals=$(awk -F'\t' -v w="both (one set): $p" -v l="$l" '$1 == "part" && $2 == w && $3 == l { print $4 }' "$RESULTS")
      row="$row | $(echo "$vals" | median) | $(echo "$vals" | p99)"
    done
    echo "$row |"
  done
  echo
  echo "Snapshot reads of a btrfs set, a ${READ_MB} MiB file (dd bs=1M), median of $REPS: through \`/snapshots/<set>/vault/\` (umbra) and from the snapshot itself (native):"
  echo
  echo "| read | native | umbra | umbra / native |"
  echo "| --- | --- | --- | --- |"
  for w in "cold (MiB/s)" "warm (MiB/s)"; do
    n=$(awk -F'\t' -v w="$w" '$1 == "read" && $2 == w && $3 == "native" { print $4 }' "$RESULTS" | median)
    u=$(awk -F'\t' -v w="$w" '$1 == "read" && $2 == w && $3 == "umbra" { print $4 }' "$RESULTS" | median)
    echo "| $w | $n | $u | $(awk -v n="$n" -v u="$u" 'BEGIN { printf "%.2f", u / n }')× |"
  done
} | tee "$OUT"
log "report in $OUT"
