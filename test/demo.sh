#!/usr/bin/env bash
# The main job: install what is missing, build, install, start a throw-away
# cluster with broker preloaded, run the producer/consumer simulator for
# about 20 seconds with a live progress line, print its summary, clean up.
# Usage: bash test/demo.sh [broker_sim options, e.g. -p 8 -c 8 -b 10]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/test/lib.sh"

ensure_deps
tree=$(make_build_tree "$here")
trap 'stop_cluster; rm -rf "$tree"' EXIT
build_install "$tree"
sim=$(build_sim "$tree")
start_cluster "shared_buffers = 512MB" "max_wal_size = 4GB"
as_pg psql -X -q -c "CREATE EXTENSION broker" >/dev/null
log "running the simulator (4 producers, 4 consumers, 20 s)"
as_pg env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres PGDATABASE=postgres \
    "$sim" -t 20 -p 4 -c 4 "$@"
