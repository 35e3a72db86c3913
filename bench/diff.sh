#!/usr/bin/env bash
# `umbra diff` against a tree walk (issue 11): a volume of BENCH_FILES files
# (default 1,000,000, in directories of 1,000), a set, BENCH_CHANGES changes
# through the live mount (default 100: content, creates, removes, renames,
# chmods), a second set; then the wall time of `umbra diff A B` and `umbra
# diff A` (to the live volume) against `diff -rq` and `rsync -n -a -i
# --delete` over the two sets' trees (BENCH_SKIP_DIFFR=1 leaves out diff -rq,
# which reads every byte of both trees) in the snapshot mount (the tree walk a
# user would otherwise run), all in the same run. Prints a Markdown table;
# never pass/fail.
#
# With BENCH_PROVIDER=btrfs the volume is a subvolume of a loop-mounted
# btrfs the script makes (BENCH_BTRFS_GB, default 8, sparse), changed
# directly, and the tree walks run over the sets' snapshots in its .umbra.
#
# Run as root:                  bench/diff.sh
# A quicker run:                BENCH_FILES=100000 bench/diff.sh
# The btrfs provider:           BENCH_PROVIDER=btrfs BENCH_FILES=200000 bench/diff.sh
# Environment: BENCH_FILES, BENCH_CHANGES, BENCH_REPS (runs of each umbra
# diff, median; default 3), BENCH_DIR (default /var/tmp), BENCH_NO_BUILD=1,
# BENCH_KEEP=1, BENCH_PROVIDER (cow or btrfs), BENCH_BTRFS_GB, CARGO_TARGET_DIR.
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FILES=${BENCH_FILES:-1000000}
CHANGES=${BENCH_CHANGES:-100}
PROVIDER=${BENCH_PROVIDER:-cow}
REPS=${BENCH_REPS:-3}
log() { printf '[diff-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

. "$REPO/bench/two-sets.sh"
build_umbra
make_workdir diff

BACKING=$WORK/backing
if [[ $PROVIDER == btrfs ]]; then
    log "making a loop-mounted btrfs in $WORK/btrfs"
    truncate -s "${BENCH_BTRFS_GB:-8}G" "$WORK/btrfs.img"
    mkfs.btrfs -q "$WORK/btrfs.img"
    mkdir -p "$WORK/btrfs"
    mount -o loop "$WORK/btrfs.img" "$WORK/btrfs"
    BACKING=$WORK/btrfs/data
    btrfs -q subvolume create "$BACKING"
fi
lay_files "$BACKING"
if [[ $PROVIDER == btrfs ]]; then
    L=$BACKING
    start_umbra "backing = \"$BACKING\"
provider = \"btrfs\""
else
    L=$WORK/live
    start_live_volume "$BACKING" "$L"
fi
read -r A A_ID < <(take_set)
make_changes "$L"
read -r B B_ID < <(take_set)

# Median wall seconds of REPS runs of a command.
timed() {
    local runs=() t0 t1
    for _ in $(seq "$1"); do
        t0=$(date +%s.%N)
        "${@:2}" > "$WORK/out" 2>/dev/null || true
        t1=$(date +%s.%N)
        runs+=("$(echo "$t1 - $t0" | bc)")
    done
    printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(( ($1 + 1) / 2 ))p"
}

log "timing umbra diff"
t_sets=$(timed "$REPS" "${U[@]}" diff "$A" "$B")
lines=$(wc -l < "$WORK/out")
"${U[@]}" diff "$A" "$B" --json > "$WORK/diff.json"
examined=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["examined"], d["searched"])' "$WORK/diff.json")
t_live=$(timed "$REPS" "${U[@]}" diff "$A")
log "timing the tree walks (once each)"
SA=$WORK/snapshots/$A/data
SB=$WORK/snapshots/$B/data
if [[ $PROVIDER == btrfs ]]; then
    SA=$BACKING/.umbra/$A_ID
    SB=$BACKING/.umbra/$B_ID
fi
if [[ -z ${BENCH_SKIP_DIFFR:-} ]]; then
    sync; echo 3 > /proc/sys/vm/drop_caches
    t_diffr=$(timed 1 diff -rq "$SA" "$SB")
    diff_lines=$(wc -l < "$WORK/out")
fi
sync; echo 3 > /proc/sys/vm/drop_caches
t_rsync=$(timed 1 rsync -n -a -i --delete "$SA/" "$SB/")
rsync_lines=$(wc -l < "$WORK/out")

ratio() { echo "scale=0; $1 / $2" | bc; }
row_diffr=
if [[ -n ${t_diffr:-} ]]; then
    row_diffr="| \`diff -rq\` over the two sets (cold cache) | $t_diffr | $diff_lines | $(ratio "$t_diffr" "$t_sets")× |
"
fi
cat <<MD
### \`umbra diff\` against a tree walk: $FILES files, $CHANGES changes, provider $PROVIDER ($(date -u +%Y-%m-%dT%H:%MZ), commit $(cd "$REPO" && git rev-parse --short HEAD))

| what | wall time, s | lines | tree walk / umbra diff |
| --- | --- | --- | --- |
| \`umbra diff A B\` (median of $REPS) | $t_sets | $lines | 1 |
| \`umbra diff A\` (to the live volume, median of $REPS) | $t_live | | |
${row_diffr}| \`rsync -n -a -i --delete\` over the two sets (cold cache) | $t_rsync | $rsync_lines | $(ratio "$t_rsync" "$t_sets")× |

Objects the catalog named as possibly changed, and whether a walk was needed: $examined.
MD
