#!/usr/bin/env bash
# The main job: install what is missing, build, install, start a throw-away
# cluster with broker preloaded, and show a healthy broker under real
# at-least-once work (leases taken by dequeue and deleted with their
# receipts in separate transactions, long-poll consumers):
#   1. steady state: 4 producers at a rate the 4 consumers sustain (20 s);
#   2. a burst: producers unlimited for 3 s, in batches of 10, which the
#      consumers (batches of 10) drain;
# each with the simulator's live progress line and summary, the backlog
# sampled every half second, and at the end who processed how many
# (broker.consumers).  Cleans up after itself.
# Usage: bash test/demo.sh                 the two phases above
#        bash test/demo.sh [options]       one simulator run with these
#                                          broker_sim options (-p 8 -c 8 -b 10 ...)
# DEMO_RATE (default 400) sets the steady rate in messages per second.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/test/lib.sh"

ensure_deps
tree=$(make_build_tree "$here")
sampler=
trap '[ -n "$sampler" ] && kill "$sampler" 2>/dev/null; stop_cluster; rm -rf "$tree"' EXIT
build_install "$tree"
sim=$(build_sim "$tree")
start_cluster "shared_buffers = 512MB" "max_wal_size = 4GB"
as_pg psql -X -q -c "CREATE EXTENSION broker" >/dev/null
run_sim() { as_pg env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres PGDATABASE=postgres "$sim" "$@"; }

if [ $# -gt 0 ]; then
    log "running the simulator with: $*"
    run_sim "$@"
    exit
fi

# The backlog (messages in the queue: ready, leased or delayed), sampled.
samples="$tree/backlog"
as_pg touch "$samples"
# (a subshell of this script, so that the trap's kill ends it)
(while sleep 0.5; do
    as_pg psql -X -At -h "$PGHOST" -p "$PGPORT" -d postgres \
        -c "SELECT total FROM broker.metrics('sim')" 2>/dev/null
done >> "$samples") &
sampler=$!
backlog_max() { sort -n "$samples" | tail -1; : > "$samples"; }

rate=${DEMO_RATE:-400}
log "steady state: 4 producers at $rate msg/s in all, 4 consumers (dequeue 1 with a 30 s lease and a 1 s long-poll, delete with the receipt), 20 s"
run_sim -t 20 -p 4 -c 4 -r "$rate" -w 1000
echo "  backlog max (sampled every 0.5 s)  $(backlog_max)"

log "burst: 4 producers unlimited for 3 s in batches of 10; 4 consumers drain it in batches of 10"
run_sim -t 3 -p 4 -c 4 -b 10 -w 1000 --no-purge
echo "  backlog max (sampled every 0.5 s)  $(backlog_max)"
echo "  backlog at the end                 $(as_pg psql -X -At -h "$PGHOST" -p "$PGPORT" -d postgres -c "SELECT total FROM broker.metrics('sim')")"

log "who processed how many (broker.consumers)"
as_pg psql -X -h "$PGHOST" -p "$PGPORT" -d postgres -c "SELECT consumer, delivered, deleted, last_seen
                                FROM broker.consumers WHERE queue = 'sim' ORDER BY consumer"
