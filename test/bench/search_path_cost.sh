#!/usr/bin/env bash
# What pinning search_path costs broker's hot path (issue 7): every
# broker function has SET search_path = pg_catalog, pg_temp, so
# each call saves, sets and restores one setting.  Measured side by side on
# one throw-away cluster, as CPU per call in one session (no commit, no
# fsync: the cost added is CPU, and timing many calls in one statement
# keeps the machine's noise out of the figure as much as anything can):
# 20,000 enqueues in one statement, and 20,000 dequeue + delete pairs in
# one statement, alternating rounds with the setting pinned (as installed)
# and removed (ALTER FUNCTION ... RESET search_path, for the measurement
# only); the fastest round of each kind counts.  Prints microseconds per
# call and the ratio pinned/unpinned.
# Usage: bash test/bench/search_path_cost.sh [rounds, default 7]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"
rounds=${1:-7}
n=20000

ensure_deps
tree=$(make_build_tree "$here")
trap 'stop_cluster; rm -rf "$tree"' EXIT
build_install "$tree" >/dev/null
start_cluster "shared_buffers = 512MB" "max_wal_size = 4GB"
as_pg psql -X -q -c "CREATE EXTENSION broker" -c "SELECT broker.create_queue('bench')" >/dev/null

pin() {
    local f
    for f in 'broker.enqueue(text, jsonb, interval, interval, jsonb, text, text, integer)' \
             'broker.dequeue(text, integer, interval, interval)' \
             'broker.delete(text, bigint, bigint)'; do
        if [ "$1" = on ]; then
            as_pg psql -X -q -c "ALTER FUNCTION $f SET search_path = pg_catalog, pg_temp" >/dev/null
        else
            as_pg psql -X -q -c "ALTER FUNCTION $f RESET search_path" >/dev/null
        fi
    done
}
# milliseconds of one statement, run in a transaction that is rolled back
ms() {
    as_pg psql -X -q -At -c "BEGIN" -c "\\timing on" -c "$1" -c "ROLLBACK" 2>&1 |
        sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | head -1
}
enq="SELECT count(broker.enqueue('bench', jsonb_build_object('n', g))) FROM generate_series(1, $n) g"
deq="SELECT count(x) FROM generate_series(1, $n) g, LATERAL (SELECT broker.delete('bench', d.id) AS x FROM broker.dequeue('bench', 1 + 0 * g) d) s"
as_pg psql -X -q -c "SELECT count(*) FROM broker.enqueue_batch('bench', array_fill('{}'::jsonb, ARRAY[$n]))" >/dev/null

declare -A best
for r in $(seq 1 "$rounds"); do
    for mode in on off; do
        pin $mode
        e=$(ms "$enq"); d=$(ms "$deq")
        echo "round $r, pinned=$mode: enqueue $e ms, dequeue+delete $d ms (for $n)"
        for k in enq:$e deq:$d; do
            key=$mode.${k%%:*}; v=${k#*:}
            if [ -z "${best[$key]:-}" ] || awk -v a="$v" -v b="${best[$key]}" 'BEGIN {exit !(a < b)}'; then
                best[$key]=$v
            fi
        done
    done
done
pin on
for w in enq deq; do
    awk -v on="${best[on.$w]}" -v off="${best[off.$w]}" -v n="$n" -v w="$w" 'BEGIN {
        printf "%s: pinned %.2f us/call, unpinned %.2f us/call, +%.2f us (%.1f%%)\n",
               (w == "enq" ? "enqueue" : "dequeue+delete"), on * 1000 / n, off * 1000 / n,
               (on - off) * 1000 / n, (on / off - 1) * 100 }'
done
