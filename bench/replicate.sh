#!/usr/bin/env bash
# `umbra replicate` full against incremental (issue 14): a volume of
# BENCH_FILES files (default 1,000,000, in directories of 1,000), a set,
# BENCH_CHANGES changes through the live mount (default 100: contents,
# creates, removes, renames, chmods), a second set; then the wall time,
# files opened and entries stat'ed of replicating the first set (full) and
# the second (incremental: the first's snapshot is the parent, umbra's diff
# says what to read) into a local restic repository; and, for comparison,
# restic's own incremental backup of the second set's tree in the snapshot
# mount with the first's as parent (BENCH_SKIP_RESTIC=1 leaves it out).
# Prints a Markdown table; never pass/fail.
#
# Run as root:        bench/replicate.sh
# A quicker run:      BENCH_FILES=100000 bench/replicate.sh
# Environment: BENCH_FILES, BENCH_CHANGES, BENCH_DIR (default /var/tmp),
# BENCH_NO_BUILD=1, BENCH_KEEP=1, BENCH_SKIP_RESTIC=1, CARGO_TARGET_DIR.
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FILES=${BENCH_FILES:-1000000}
CHANGES=${BENCH_CHANGES:-100}
log() { printf '[replicate-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v restic >/dev/null || { log "restic is needed (apt-get install restic)"; exit 1; }
. "$REPO/bench/two-sets.sh"
build_umbra
make_workdir replicate

BACKING=$WORK/backing
lay_files "$BACKING"
start_live_volume "$BACKING" "$WORK/live"
read -r A _ < <(take_set)
make_changes "$WORK/live"
read -r B _ < <(take_set)

REPOSITORY=$WORK/repo
echo bench > "$WORK/password"
export RESTIC_PASSWORD_FILE=$WORK/password RESTIC_CACHE_DIR=$WORK/restic-cache

# One replication: "seconds opened stats entries" from its --json.
replicate() {
    local t0 t1
    t0=$(date +%s.%N)
    "${U[@]}" replicate "$1" --to "$REPOSITORY" --json > "$WORK/$1.json"
    t1=$(date +%s.%N)
    python3 - "$WORK/$1.json" "$(echo "$t1 - $t0" | bc)" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["snapshots"][0]
print(f'{float(sys.argv[2]):.1f} {s["opened"]} {s["stats"]} {s["entries"]} {s.get("parent_set") or "-"}')
PY
}
sync; echo 3 > /proc/sys/vm/drop_caches
log "replicating $A (full)"
read -r full_s full_opened full_stats full_entries _ < <(replicate "$A")
sync; echo 3 > /proc/sys/vm/drop_caches
log "replicating $B (incremental)"
read -r inc_s inc_opened inc_stats inc_entries inc_parent < <(replicate "$B")

row_restic=
if [[ -z ${BENCH_SKIP_RESTIC:-} ]]; then
    log "restic backup of $B's tree with $A's as parent (its own incremental)"
    RR=$WORK/restic-repo
    # restic finds a parent by path: both sets are backed up through one
    # bind mount, so the second run's parent is the first.
    mkdir -p "$WORK/view"
    restic -q -r "$RR" init > /dev/null
    mount --bind "$WORK/snapshots/$A/data" "$WORK/view"
    restic -q -r "$RR" backup "$WORK/view" > /dev/null
    umount "$WORK/view"
    mount --bind "$WORK/snapshots/$B/data" "$WORK/view"
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    # A set's inode numbers are its own (the browser composes them with
    # the set's view): without --ignore-inode restic would read every file.
    restic -q -r "$RR" backup "$WORK/view" --ignore-inode --json > "$WORK/restic.json"
    t1=$(date +%s.%N)
    umount "$WORK/view"
    restic_s=$(echo "$t1 - $t0" | bc)
    restic_changed=$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("message_type") == "summary":
        print(d["files_new"] + d["files_changed"])' "$WORK/restic.json")
    row_restic=$(printf '| restic backup --ignore-inode of %s (its parent: %s) | %.1f | %s (new or changed) | every one (lstat through FUSE) |' "$B" "$A" "$restic_s" "$restic_changed")
fi

cat <<MD
### $FILES files, $CHANGES changes ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$REPO" rev-parse --short HEAD), release, load $(cut -d' ' -f1 /proc/loadavg))

| run | wall s | files opened | entries stat'ed |
| --- | ---: | ---: | ---: |
| umbra replicate $A (full) | $full_s | $full_opened | $full_stats of $full_entries |
| umbra replicate $B (incremental from $inc_parent) | $inc_s | $inc_opened | $inc_stats of $inc_entries |
$row_restic

Incremental against full: $(echo "scale=1; $full_s / $inc_s" | bc)x less wall time, $(echo "scale=0; $full_opened / ($inc_opened + 1)" | bc)x fewer files opened.
MD
