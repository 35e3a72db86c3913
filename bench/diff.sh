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
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
UMBRA=$TARGET/release/umbra
log() { printf '[diff-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building umbra (release)"
    (cd "$REPO" && cargo build --release --bin umbra -q)
fi

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/umbra-diff-bench.XXXXXX")
DAEMON=
cleanup() {
    if [[ -n $DAEMON ]] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON"
        wait "$DAEMON" 2>/dev/null || true
    fi
    for m in "$WORK/live" "$WORK/snapshots" "$WORK/btrfs"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

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
log "making $FILES files natively in $BACKING"
python3 - "$BACKING" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i % 1000:03d}"), "w") as f:
        f.write(f"file {i}\n")
PY
mkdir -p "$WORK/live" "$WORK/snapshots" "$WORK/state"
if [[ $PROVIDER == btrfs ]]; then
    volume="backing = \"$BACKING\"
provider = \"btrfs\""
else
    volume="backing = \"$BACKING\"
mount = \"$WORK/live\""
fi
cat > "$WORK/umbra.toml" <<TOML
state_dir = "$WORK/state"
snapshots = "$WORK/snapshots"
[[volume]]
name = "data"
$volume
TOML
"$UMBRA" up --config "$WORK/umbra.toml" > "$WORK/up.log" 2>&1 &
DAEMON=$!
for _ in $(seq 200); do grep -q "umbra: ready" "$WORK/up.log" && break; sleep 0.1; done
U=("$UMBRA" --config "$WORK/umbra.toml")
set_of() { python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["name"], s["id"])'; }
read -r A A_ID < <("${U[@]}" create --json | set_of)

log "making $CHANGES changes to the live volume"
L=$WORK/live
[[ $PROVIDER == btrfs ]] && L=$BACKING
for i in $(seq 0 $((CHANGES - 1))); do
    # A distinct file for each change (7919 is prime: coprime with the
    # file count as long as that is not a multiple of it).
    n=$(( (i * 7919) % FILES ))
    d=$(printf 'd%04d' $(( n / 1000 )))
    f=$(printf 'f%03d' $(( n % 1000 )))
    case $(( i % 10 )) in
        0|1|2|3) echo "changed $i" >> "$L/$d/$f" ;;
        4|5) echo "new $i" > "$L/$d/new$i" ;;
        6|7) rm -f "$L/$d/$f" ;;
        8) mv "$L/$d/$f" "$L/$d/renamed$i" 2>/dev/null || true ;;
        9) chmod 600 "$L/$d/$f" 2>/dev/null || true ;;
    esac
done
read -r B B_ID < <("${U[@]}" create --json | set_of)

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
