#!/bin/sh
# A requester: back up every volume of the running daemon with rsync from a
# consistent shadow copy set, which umbra deletes afterwards (auto-release).
#
#   examples/rsync-requester.sh /backup/host
#
# umbra backup makes the set through every writer's sequence, runs the
# command with UMBRA_SNAPSHOT set to the set's directory, tells the writers
# whether it succeeded, deletes the set, and exits with rsync's status.
set -eu
dest=${1:?usage: rsync-requester.sh DESTINATION}
exec umbra backup -- sh -c 'rsync -a --delete "$UMBRA_SNAPSHOT/" "$0/"' "$dest"
