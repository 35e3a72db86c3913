#!/bin/sh
# A requester: backs up a consistent shadow copy set of the running daemon's
# volumes into a restic repository, then umbra deletes the set (auto-release).
# restic reads its repository and password from the environment:
#
#   export RESTIC_REPOSITORY=/srv/restic RESTIC_PASSWORD_FILE=/etc/umbra/restic.pass
#   restic init                                   # once
#   examples/restic-requester.sh                  # each backup
#   restic restore latest --target /srv/restore   # the set, under its own path
#
# Arguments go to umbra backup (volumes, --label, --keep). umbra backup makes
# the set through every writer's sequence, runs restic over it with
# UMBRA_SNAPSHOT set to the set's directory (<snapshots>/<set name>), tells the
# writers whether restic succeeded, and exits with restic's status. Each set
# has a path of its own, so restic finds no parent snapshot and reads every
# file again; it still stores only the chunks it has not seen.
set -eu
exec umbra backup "$@" -- sh -c 'exec restic backup --quiet --tag umbra "$UMBRA_SNAPSHOT"'
