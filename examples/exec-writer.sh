#!/bin/sh
# An exec writer: umbra runs it as `exec-writer.sh EVENT` for every event of
# every set of its volumes (see umbra-writer(7)). Configure it with
#
#   [[writer]]
#   name = "myapp"
#   volumes = ["data"]
#   exec = "/path/to/exec-writer.sh"
#
# Exit 0 is success, 75 a retryable failure, anything else a failure. This
# one pauses a process named by $UMBRA_EXAMPLE_PIDFILE (if set) from freeze
# to thaw, and logs every event to $UMBRA_EXAMPLE_LOG (if set).

log() { [ -n "$UMBRA_EXAMPLE_LOG" ] && echo "$*" >> "$UMBRA_EXAMPLE_LOG"; return 0; }
log "$1 $UMBRA_SET_ID $UMBRA_SET_NAME $UMBRA_VOLUMES"

pid=
[ -n "$UMBRA_EXAMPLE_PIDFILE" ] && [ -f "$UMBRA_EXAMPLE_PIDFILE" ] && pid=$(cat "$UMBRA_EXAMPLE_PIDFILE")

case "$1" in
freeze)
  if [ -n "$pid" ]; then
    kill -STOP "$pid" || { echo "cannot pause $pid" >&2; exit 75; }
  fi ;;
thaw|abort)
  # abort may come twice, or when nothing was paused: harmless.
  [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null ;;
esac
exit 0
