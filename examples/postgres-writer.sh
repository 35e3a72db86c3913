#!/bin/sh
# An exec writer for PostgreSQL (umbra-writer(7), RECIPES). umbra's set is
# one atomic instant of every volume in it, so a set that holds the whole
# data directory (pg_wal and every tablespace included) is what a power cut
# would leave: PostgreSQL starts from it by crash recovery, with every
# transaction committed before the freeze. This writer makes that recovery
# short: a CHECKPOINT at prepare-snapshot, before the freeze (it can take a
# while, and the freeze window is short), and refuses the set (retryable)
# if the server cannot be reached. Configure it with
#
#   [[writer]]
#   name = "postgres"
#   volumes = ["pgdata"]
#   exec = "/usr/local/lib/umbra/postgres-writer.sh"
#
# and tell it the server in the daemon's environment (systemctl edit umbra):
#
#   [Service]
#   Environment=PGHOST=/var/run/postgresql PGPORT=5432 PGUSER=postgres
#
# A server started from a copy of the set's data directory needs its
# postmaster.pid removed first (the set holds the running server's).
case "$1" in
prepare-snapshot)
  if ! out=$(psql -X -q -v ON_ERROR_STOP=1 -d "${PGDATABASE:-postgres}" -c CHECKPOINT 2>&1); then
    echo "CHECKPOINT failed: $(echo "$out" | tail -n 1)" >&2
    exit 75
  fi ;;
esac
exit 0
