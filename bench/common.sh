# What every bench script does first, sourced by each after it set REPO and
# defined `log`: install the tools it needs, build umbra. It runs nothing
# itself.

# install_missing CMD:PACKAGE...: installs with apt-get the packages whose
# command is not on PATH.
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# build_umbra: builds umbra in release (unless BENCH_NO_BUILD=1) under
# CARGO_TARGET_DIR (default REPO/target) and sets UMBRA to the binary.
build_umbra() {
  if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "building umbra (release)"
    (cd "$REPO" && cargo build --release --quiet --bin umbra)
  fi
  UMBRA="${CARGO_TARGET_DIR:-$REPO/target}/release/umbra"
  [ -x "$UMBRA" ] || { log "error: no umbra binary at $UMBRA"; exit 1; }
}
