#!/usr/bin/env bash
# What pinning search_path costs broker's hot path (issue 7): every
# SECURITY DEFINER function has SET search_path = pg_catalog, pg_temp, so
# each call saves, sets and restores one setting.  Measured side by side on
# one throw-away cluster: produce (enqueue, 1 per transaction) and consume
# (dequeue + delete in one statement), 4 pgbench clients, alternating
# rounds with the setting pinned (as installed) and removed (ALTER FUNCTION
# ... RESET search_path, for the measurement only).  Prints each round's
# tps and the ratio unpinned/pinned of the medians.
# Usage: bash test/bench/search_path_cost.sh [seconds per run, default 10] [rounds, default 3]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"
secs=${1:-10}
rounds=${2:-3}

ensure_deps
tree=$(make_build_tree "$here")
trap 'stop_cluster; rm -rf "$tree"' EXIT
build_install "$tree" >/dev/null
start_cluster "shared_buffers = 512MB" "max_wal_size = 4GB" "fsync = on" "synchronous_commit = on"
as_pg psql -X -q -c "CREATE EXTENSION broker" -c "SELECT broker.create_queue('bench')" >/dev/null

funcs="broker.enqueue(text, jsonb, interval, interval, jsonb), broker.dequeue(text, integer, interval, interval), broker.delete(text, bigint, bigint)"
pin() {
    for f in broker.enqueue'(text, jsonb, interval, interval, jsonb)' broker.dequeue'(text, integer, interval, interval)' broker.delete'(text, bigint, bigint)'; do
        if [ "$1" = on ]; then
            as_pg psql -X -q -c "ALTER FUNCTION $f SET search_path = pg_catalog, pg_temp" >/dev/null
        else
            as_pg psql -X -q -c "ALTER FUNCTION $f RESET search_path" >/dev/null
        fi
    done
}
run() {   # script -> tps
    as_pg pgbench -n -c 4 -j 2 -T "$secs" -f "$tree/test/bench/sql/$1" postgres 2>/dev/null |
        sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A res
for r in $(seq 1 "$rounds"); do
    for mode in on off; do
        pin $mode
        p=$(run broker_produce.sql)
        c=$(run broker_consume1.sql)
        res[$mode.produce]+="$p "
        res[$mode.consume]+="$c "
        echo "round $r, search_path pinned=$mode: produce $p tps, consume $c tps"
    done
done
pin on
for w in produce consume; do
    on=$(echo ${res[on.$w]} | tr ' ' '\n' | median)
    off=$(echo ${res[off.$w]} | tr ' ' '\n' | median)
    echo "$w: median pinned $on tps, unpinned $off tps, pinned/unpinned $(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.3f", a / b}')"
done
