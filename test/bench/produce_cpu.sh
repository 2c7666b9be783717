#!/usr/bin/env bash
# CPU per produced message, broker against the floor (a plain table with a
# bigserial key), in one session on one throw-away cluster: 20,000 single
# enqueues (one call each) and 500 batches of 100, each run as one DO block
# so that no commit, fsync or client round trip is in the figure (what a
# produce costs the server's CPU, which is what broker's own code changes;
# pgbench's W1/W4 include the WAL flush of every commit as well).  The
# storage is emptied and checkpointed before each measurement; the fastest
# of the rounds counts, which keeps most of a noisy machine's noise out.
# Prints microseconds per message and the ratio of the rates (broker /
# floor; above 1.0 broker is faster); and an enqueue with a (new) dedup
# key against a plain one (W8's ratio, without the commits).
# Usage: bash test/bench/produce_cpu.sh [rounds, default 5] [--installed]
#   --installed: measure the broker installed in the system's PostgreSQL
#                (as test/bench/run does) instead of building this tree
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"
rounds=${1:-5}

ensure_deps
tree=$(make_build_tree "$here")
trap 'stop_cluster; rm -rf "$tree"' EXIT
[ "${2:-}" = --installed ] || build_install "$tree" >/dev/null
start_cluster "shared_buffers = 512MB" "max_wal_size = 4GB"
as_pg psql -X -q -c "CREATE EXTENSION broker" -c "SELECT broker.create_queue('bench')" \
    -c "CREATE TABLE floor_q (id bigserial PRIMARY KEY, payload jsonb NOT NULL)" >/dev/null

pay="jsonb_build_object('n', g, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx')"
declare -A sql=(
    [broker1]="DO \$\$ BEGIN FOR g IN 1..20000 LOOP PERFORM broker.enqueue('bench', $pay); END LOOP; END \$\$"
    [dedup1]="DO \$\$ BEGIN FOR g IN 1..20000 LOOP PERFORM broker.enqueue('bench', $pay, dedup_key => 'k' || g || '-' || pg_catalog.random()); END LOOP; END \$\$"
    [floor1]="DO \$\$ BEGIN FOR g IN 1..20000 LOOP INSERT INTO floor_q (payload) VALUES ($pay); END LOOP; END \$\$"
    [broker100]="DO \$\$ BEGIN FOR i IN 1..500 LOOP PERFORM pg_catalog.count(*) FROM broker.enqueue_batch('bench', ARRAY(SELECT $pay FROM generate_series(1, 100) g)); END LOOP; END \$\$"
    [floor100]="DO \$\$ BEGIN FOR i IN 1..500 LOOP INSERT INTO floor_q (payload) SELECT $pay FROM generate_series(1, 100) g; END LOOP; END \$\$"
)
ms() {
    as_pg psql -X -q -At -c "SELECT broker.purge_queue('bench')" -c "TRUNCATE floor_q" \
        -c "CHECKPOINT" -c "\\timing on" -c "$1" 2>&1 |
        sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1
}
declare -A best
for r in $(seq 1 "$rounds"); do
    for k in broker1 dedup1 floor1 broker100 floor100; do
        t=$(ms "${sql[$k]}")
        echo "round $r: $k $t ms"
        if [ -z "${best[$k]:-}" ] || awk -v a="$t" -v b="${best[$k]}" 'BEGIN {exit !(a < b)}'; then
            best[$k]=$t
        fi
    done
done
awk -v b1="${best[broker1]}" -v f1="${best[floor1]}" -v b100="${best[broker100]}" \
    -v f100="${best[floor100]}" -v d1="${best[dedup1]}" 'BEGIN {
    printf "1 per call:   broker %.2f us/msg, floor %.2f us/msg, broker/floor rate %.2f\n",
           b1 * 1000 / 20000, f1 * 1000 / 20000, f1 / b1
    printf "dedup key:    broker %.2f us/msg, rate / plain enqueue %.2f\n",
           d1 * 1000 / 20000, b1 / d1
    printf "100 per call: broker %.2f us/msg, floor %.2f us/msg, broker/floor rate %.2f\n",
           b100 * 1000 / 50000, f100 * 1000 / 50000, f100 / b100 }'
