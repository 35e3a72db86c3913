# The prologue bench/diff.sh and bench/replicate.sh share, sourced by both:
# a work directory cleaned up on exit, FILES small files laid natively (1,000
# to a directory), a daemon serving them as volume `data`, a set, CHANGES
# changes of every kind through the live volume, a second set. Keeping it in
# one place keeps the two benches measuring the same two sets.
#
# The sourcing script sets REPO, FILES, CHANGES and a `log` function first.
# This file sets WORK, DAEMON and U (the umbra command with the bench's
# config), brings in bench/common.sh (build_umbra sets UMBRA) and defines
# the functions below; it runs nothing itself.

. "$REPO/bench/common.sh"

# A fresh work directory under BENCH_DIR named after $1; on exit the daemon
# is stopped, everything mounted under the directory is unmounted (deepest
# first) and, unless BENCH_KEEP is set, the directory is removed.
make_workdir() {
    WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/umbra-$1-bench.XXXXXX")
    DAEMON=
    trap cleanup_workdir EXIT
}

cleanup_workdir() {
    if [[ -n $DAEMON ]] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON"
        wait "$DAEMON" 2>/dev/null || true
    fi
    local m
    while read -r m; do
        umount -l "$m" || true
    done < <(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
    [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$WORK"
}

# FILES files of one line each in directories of 1,000 under $1.
lay_files() {
    log "making $FILES files natively in $1"
    python3 - "$1" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i % 1000:03d}"), "w") as f:
        f.write(f"file {i}\n")
PY
}

# Starts the daemon with one volume `data` whose config lines are $1, and
# waits until it is ready.
start_umbra() {
    mkdir -p "$WORK/snapshots" "$WORK/state"
    cat > "$WORK/umbra.toml" <<TOML
state_dir = "$WORK/state"
snapshots = "$WORK/snapshots"
[[volume]]
name = "data"
$1
TOML
    "$UMBRA" up --config "$WORK/umbra.toml" > "$WORK/up.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 200); do grep -q "umbra: ready" "$WORK/up.log" && break; sleep 0.1; done
    grep -q "umbra: ready" "$WORK/up.log" || { log "the daemon did not start:"; cat "$WORK/up.log" >&2; exit 1; }
    U=("$UMBRA" --config "$WORK/umbra.toml")
}

# Starts the daemon with volume `data` over the backing directory $1,
# mounted live at $2.
start_live_volume() {
    mkdir -p "$2"
    start_umbra "backing = \"$1\"
mount = \"$2\""
}

# Takes a set; prints its name and id.
take_set() {
    "${U[@]}" create --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["name"], s["id"])'
}

# CHANGES changes to the volume seen at $1, each to a distinct file: 40 %
# appends, 20 % new files, 20 % removals, 10 % renames, 10 % chmods.
make_changes() {
    log "making $CHANGES changes to the live volume"
    local i n d f
    for i in $(seq 0 $((CHANGES - 1))); do
        # 7919 is prime: coprime with the file count as long as that is
        # not a multiple of it.
        n=$(( (i * 7919) % FILES ))
        d=$(printf 'd%04d' $(( n / 1000 )))
        f=$(printf 'f%03d' $(( n % 1000 )))
        case $(( i % 10 )) in
            0|1|2|3) echo "changed $i" >> "$1/$d/$f" ;;
            4|5) echo "new $i" > "$1/$d/new$i" ;;
            6|7) rm -f "$1/$d/$f" ;;
            8) mv "$1/$d/$f" "$1/$d/renamed$i" 2>/dev/null || true ;;
            9) chmod 600 "$1/$d/$f" 2>/dev/null || true ;;
        esac
    done
}
