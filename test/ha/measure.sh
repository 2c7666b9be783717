#!/bin/bash
# test/ha/measure.sh: what a client sees of a failover, measured.
#
#   bash test/ha/measure.sh [RUNS]        (default 3 runs)
#
# Each run sets up a formation with pgaf.sh (monitor and two data nodes on
# 127.0.0.1, synchronous replication, broker preloaded), runs the load
# simulator through the multi-host conninfo with --retry (producers and
# consumers, no rate limit, --record), and:
#   1. before: on the primary, 100 messages leased for 10 minutes (their
#      receipts kept) and a snapshot of what broker keeps in shared memory;
#   2. kill -9 of the primary's postmaster and pg_autoctl (pgaf.sh kill,
#      the machine-lost variant) after WARMUP + WINDOW seconds of load;
#   3. after the promotion: the same snapshot on the new primary, and what
#      became of the 100 leases (still leased? deliverable? do the receipts
#      delete?);
#   4. node1 is started again and rejoins as the secondary; WINDOW seconds
#      more of load; the simulator is stopped (SIGINT: it drains).
# From the simulator's record: write unavailability (kill to the first
# acknowledged enqueue), read unavailability (kill to the first delivery),
# and throughput (acknowledged enqueues per second) in the WINDOW seconds
# before the kill, after the first write (the new primary alone: no
# standby, pg_auto_failover's wait_primary, commits do not wait for one),
# and after the rejoin (synchronous again).  One line per run, then min /
# median / max.
#
# Run it as root or as the clusters' user, with the installation under test
# first in PATH (use_private_install in test/lib.sh), from a tree where the
# simulator is built (build_sim).  Settings (environment):
#   PGAF_PORTS   "MPORT PORT1 PORT2", default "5600 5601 5602"
#   PGAF_FAST    1 (default): health checks every 500 ms, a silent node is
#                unhealthy after 2 s; 0: pg_auto_failover's defaults
#   PGAF_FSYNC   on (default) or off
#   SIM_ARGS     simulator options, default "-p 2 -c 2 -l 5"
#   WARMUP, WINDOW  seconds, default 5 and 10
set -euo pipefail

if [ "$(id -u)" = 0 ]; then
    exec runuser -u postgres -- env PATH="$PATH" bash "$0" "$@"
fi

here=$(cd "$(dirname "$0")" && pwd)
pgaf="$here/pgaf.sh"
sim=${SIM:-$here/../tools/broker_sim}
runs=${1:-3}
read -r MPORT PORT1 PORT2 <<<"${PGAF_PORTS:-5600 5601 5602}"
WARMUP=${WARMUP:-5}
WINDOW=${WINDOW:-10}
SIM_ARGS=${SIM_ARGS:--p 2 -c 2 -l 5}
[ -x "$sim" ] || { echo "measure.sh: no simulator at $sim (build_sim)" >&2; exit 1; }

work=$(mktemp -d /tmp/pgaf-measure.XXXXXX)
dir=$work/f
simpid=
cleanup() {
    [ -n "$simpid" ] && kill -KILL "$simpid" 2>/dev/null || true
    bash "$pgaf" down "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT

calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
psql_at() { psql -XAtq -h 127.0.0.1 -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2"; }

# What broker keeps in shared memory, as seen through its functions.
SHMEM_SQL="SELECT concat_ws(' ',
  'enqueued_total=' || (SELECT enqueued_total FROM broker.metrics('mq')),
  'deleted_total=' || (SELECT deleted_total FROM broker.metrics('mq')),
  'lp_empty_wakeups=' || (SELECT empty_wakeups FROM broker.waiters('lp')),
  'low_water_mark=' || coalesce((SELECT low_water_mark FROM broker.waiters('mq'))::text, 'null'),
  'consumers=' || (SELECT count(*) FROM broker.consumers WHERE queue = 'mq'),
  'reaper_removed_total=' || coalesce((SELECT removed_total FROM broker.health()
                                        WHERE database = 'postgres')::text, 'none'),
  'reaper_started=' || coalesce((SELECT backend_start::time(0)::text FROM pg_stat_activity
                                  WHERE backend_type = 'broker reaper' AND datname = 'postgres'), 'none'))"

# Acknowledged enqueues (E lines) per second in [from, to) (seconds since
# the epoch), from a record file.
rate() {
    awk -v a="$2" -v b="$3" '$1 == "E" && $5 >= a * 1e6 && $5 < b * 1e6 { n++ }
        END { printf "%.0f", n / (b - a) }' "$1"
}
# The end of the outage that follows time $2 (seconds since the epoch): the
# first line of kind $3 (field $4 holds the time) after $2 that comes more
# than a second after the one before it (an answer sent before the kill may
# still arrive just after it), from a record file; empty if none.
first_after() {
    awk -v k="$3" -v f="$4" '$1 == k { print $f }' "$1" | sort -n |
        awk -v t="$2" '{ v = $1 / 1e6 }
            !done && v > t && prev != "" && v - prev > 1 { printf "%.3f", v; done = 1 }
            { prev = v }'
}

results=()
for run in $(seq 1 "$runs"); do
    echo "== run $run of $runs ($(date +%T))" >&2
    bash "$pgaf" up "$dir" "$MPORT" "$PORT1" "$PORT2" 2>/dev/null
    dsn=$(bash "$pgaf" dsn "$dir")
    psql_at "$PORT1" "CREATE EXTENSION broker" >/dev/null
    psql_at "$PORT1" "SELECT broker.create_queue(q) FROM unnest(ARRAY['probe', 'lp', 'exp']) q" >/dev/null
    rec=$work/run$run.rec
    # shellcheck disable=SC2086
    "$sim" -d "$dsn" -q mq --quiet --retry --retry-timeout 300 -t 100000 --drain-timeout 120 \
        --record "$rec" $SIM_ARGS >"$work/run$run.out" 2>&1 &
    simpid=$!
    sleep "$WARMUP"
    # a long-poll wait that ends empty (counted in empty_wakeups), and
    # messages that expire (removed by the reaper: removed_total)
    psql_at "$PORT1" "SELECT count(*) FROM broker.dequeue('lp', 1, wait => '200 ms')" >/dev/null
    psql_at "$PORT1" "SELECT broker.enqueue('exp', '{}', ttl => '100 ms') FROM generate_series(1, 10)" >/dev/null
    psql_at "$PORT1" "SELECT broker.enqueue('probe', '{}') FROM generate_series(1, 100)" >/dev/null
    psql_at "$PORT1" "CREATE TABLE probe_leases AS
        SELECT id, receipt FROM broker.dequeue('probe', 100, lease => '10 minutes')" >/dev/null
    sleep "$WINDOW"
    before=$(psql_at "$PORT1" "$SHMEM_SQL")
    killed_at=$(bash "$pgaf" kill "$dir" node1 2>/dev/null)
    bash "$pgaf" wait "$dir" node2 wait_primary 300 2>/dev/null
    promoted_at=$EPOCHREALTIME
    after=$(psql_at "$PORT2" "$SHMEM_SQL")
    leases=$(psql_at "$PORT2" "SELECT concat_ws(' ',
        'still_leased=' || (SELECT count(*) FROM broker.messages m JOIN probe_leases p USING (id)
                             WHERE m.receipt = p.receipt AND m.vt > now()),
        'redelivered=' || (SELECT count(*) FROM broker.dequeue('probe', 100)),
        'receipts_delete=' || (SELECT count(*) FILTER (WHERE broker.delete('probe', id, receipt))
                                FROM probe_leases))")
    sleep $((WINDOW + 3))
    bash "$pgaf" start "$dir" node1
    bash "$pgaf" wait "$dir" node1 secondary 300 2>/dev/null
    bash "$pgaf" wait "$dir" node2 primary 60 2>/dev/null
    rejoined_at=$EPOCHREALTIME
    sleep "$WINDOW"
    kill -INT "$simpid"
    wait "$simpid" || echo "run $run: the simulator failed" >&2
    simpid=

    first_write=$(first_after "$rec" "$killed_at" E 5)
    first_read=$(first_after "$rec" "$killed_at" L 6)
    summary=$(grep -E "result|retried calls|unknown outcomes|longest outage|lost|duplicates" "$work/run$run.out" |
        sed 's/^ *//' | tr -s ' ' | paste -sd ';' -)
    line=$(awk -v k="$killed_at" -v p="$promoted_at" -v w="$first_write" -v r="$first_read" \
        'BEGIN { printf "promoted %.1f s, first write %.1f s, first read %.1f s", p - k, w - k, r - k }')
    line="$line; enqueues/s before $(rate "$rec" "$(calc "$killed_at - $WINDOW")" "$killed_at")"
    line="$line, alone $(rate "$rec" "$(calc "$first_write + 2")" "$(calc "$first_write + 2 + $WINDOW")")"
    line="$line, after rejoin $(rate "$rec" "$rejoined_at" "$(calc "$rejoined_at + $WINDOW")")"
    results+=("$(awk -v k="$killed_at" -v w="$first_write" 'BEGIN { printf "%.2f", w - k }')")
    echo "run $run: $line"
    echo "run $run: leases taken before: $leases"
    echo "run $run: shared memory before: $before"
    echo "run $run: shared memory after:  $after"
    echo "run $run: simulator: $summary"
    bash "$pgaf" down "$dir" 2>/dev/null
done
printf '%s\n' "${results[@]}" | sort -n |
    awk '{ v[NR] = $1 } END { printf "write unavailability over %d runs: min %.2f s, median %.2f s, max %.2f s\n",
        NR, v[1], v[int((NR + 1) / 2)], v[NR] }'
rm -rf "$work"
