#!/usr/bin/env bash
# crash_loop.sh: kill -9 the server again and again under a mixed load,
# then prove that nothing was lost, deleted messages stayed deleted, no
# message was held under two valid leases, nothing is stuck and the gauges
# match the rows; that ordered groups were delivered one message at a time
# in id order, dedup keys were stored once per window and retries got the
# stored id back, publishes reached every subscribed queue or none, and
# completes and fails left their records (test/crash/README.md).
#
# Builds and installs the extension into a private installation as
# test/run_all.sh does, starts a cluster with small segments and a fast
# reaper, runs test/crash/load.py, and N times waits a random A-B seconds
# and crashes the server: a kill -9 of the postmaster (and of every process
# left of it) followed by pg_ctl start; or a kill -9 of a client backend
# inside broker.dequeue, or of a broker background worker, after which the
# postmaster restarts every backend itself.  Before and after each crash
# check.py --probe checks the gauges, the low-water marks, the heads of
# the ordered groups and the job records under load.
# Then it stops the load, runs test/crash/check.py and exits non-zero on
# any violation.
#
# Usage: bash test/crash/crash_loop.sh [--crashes N] [--segment-size S]
#            [--seconds-between A-B] [--final-seconds F] [--keep-logs]
# F (default 20): seconds of load after the last crash, before the check.
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"
PY=/usr/bin/python3

crashes=20
segment_size=500
between=2-6
final=20
keep_logs=0
while [ $# -gt 0 ]; do
    case $1 in
        --crashes) crashes=$2; shift 2 ;;
        --segment-size) segment_size=$2; shift 2 ;;
        --seconds-between) between=$2; shift 2 ;;
        --final-seconds) final=$2; shift 2 ;;
        --keep-logs) keep_logs=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
wait_min=${between%-*}
wait_max=${between#*-}

ensure_deps || exit 1
if ! $PY -c 'import psycopg' 2>/dev/null; then
    log "installing python3-psycopg"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-psycopg >/dev/null || exit 1
fi

tree=$(make_build_tree "$here")
logdir=$(mktemp -d /tmp/broker-crashlog.XXXXXX)
load_pid=
# Stop the load and the cluster, remove the build tree (and the logs if all went well).
cleanup() {
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
    [ -n "${CLUSTER_DIR:-}" ] && [ -d "$logdir" ] && cp "$CLUSTER_DIR/log" "$logdir/server.log"
    stop_cluster
    rm -rf "$tree"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
build_install "$tree" || exit 1

start_cluster "broker.segment_size = $segment_size" "broker.reaper_interval = 100ms" \
    "restart_after_crash = on" "log_min_messages = warning"
datadir=$(cd "$CLUSTER_DIR/data" && pwd -P)
as_pg psql -X -q -c "CREATE EXTENSION broker" >/dev/null || exit 1
check_loaded_library "$tree/.install" "$CLUSTER_DIR/data" || exit 1
$PY "$here/test/crash/load.py" --setup || exit 1

# A random number of seconds between $1 and $2.
rand_between() { awk -v a="$1" -v b="$2" -v r=$RANDOM 'BEGIN { printf "%.2f", a + (b - a) * r / 32767 }'; }

# One value from the server, or nothing while it is down.
q() { as_pg psql -X -A -t -q -c "$1" 2>/dev/null; }

# The pid of the checkpointer: a new one after every crash restart.
generation() { q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"; }

# Wait until the server runs a generation other than $1 and has left recovery.
wait_up() {
    local i g old=${1:-}
    for i in $(seq 1 600); do
        g=$(generation)
        [ -n "$g" ] && [ "$g" != "$old" ] && [ "$(q 'SELECT NOT pg_is_in_recovery()')" = t ] && return 0
        sleep 0.1
    done
    echo "the server did not come back" >&2; return 1
}

# Pids of every process of the cluster (working directory = data directory).
cluster_pids() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/cwd" 2>/dev/null)" = "$datadir" ] && echo "${p#/proc/}"
    done
}

# kill -9 of the postmaster and then of every process left of it, then start.
crash_postmaster() {
    local pm left i
    pm=$(head -1 "$datadir/postmaster.pid")
    kill -9 "$pm"
    for i in $(seq 1 300); do
        left=$(cluster_pids)
        [ -z "$left" ] && ! kill -0 "$pm" 2>/dev/null && break
        [ -n "$left" ] && kill -9 $left 2>/dev/null
        sleep 0.1
    done
    # (the lock file of the killed postmaster is still there)
    as_pg pg_ctl -D "$datadir" -l "$CLUSTER_DIR/log" -w start 2>&1 >/dev/null |
        grep -v 'another server might be running' >&2
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    echo "postmaster $pm"
}

# kill -9 of a client backend in broker.dequeue (active if one is, else one
# whose transaction holds a dequeue); the postmaster restarts all backends.
crash_backend() {
    local pid i
    for i in $(seq 1 40); do
        pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'
                   AND query LIKE '%broker.dequeue%' AND pid <> pg_backend_pid()
                 ORDER BY state = 'active' DESC, random() LIMIT 1")
        [ -n "$pid" ] && break
        sleep 0.05
    done
    [ -n "$pid" ] || { crash_postmaster; return; }
    kill -9 "$pid"
    echo "backend $pid in broker.dequeue"
}

# kill -9 of the broker reaper or the broker launcher.
crash_worker() {
    local kind pid
    kind=$([ $((RANDOM % 2)) = 0 ] && echo 'broker reaper' || echo 'broker launcher')
    pid=$(q "SELECT pid FROM pg_stat_activity WHERE backend_type = '$kind' LIMIT 1")
    [ -n "$pid" ] || { crash_postmaster; return; }
    kill -9 "$pid"
    echo "$kind $pid"
}

log "load: $PY test/crash/load.py, logs in $logdir"
$PY "$here/test/crash/load.py" --logdir "$logdir" 2>"$logdir/load.err" &
load_pid=$!
sleep 3

log "$crashes crashes, $between s apart, broker.segment_size = $segment_size"
# Check the gauges and the low-water marks under load (check.py --probe);
# what it finds goes to $logdir/probe.jsonl and into the final check.
probe() {
    if ! $PY "$here/test/crash/check.py" --probe --logdir "$logdir" >"$logdir/probe.out" 2>&1; then
        echo "  $1: $(wc -l <"$logdir/probe.out") findings"
        head -3 "$logdir/probe.out" | sed 's/^/    /'
    fi
}

done_crashes=0
for i in $(seq 1 "$crashes"); do
    sleep "$(rand_between "$wait_min" "$wait_max")"
    probe "before crash $i"
    gen=$(generation)
    case $((i % 5)) in
        3) what=$(crash_backend) ;;
        0) what=$(crash_worker) ;;
        *) what=$(crash_postmaster) ;;
    esac
    wait_up "$gen" || exit 1
    done_crashes=$i
    echo "crash $i: kill -9 of the $what"
    probe "after crash $i"
done
# Load without crashes, so that what a restart would hide can show.
end=$((SECONDS + final))
while [ "$SECONDS" -lt "$end" ]; do
    sleep 5
    probe "during the final load"
done

log "stopping the load"
kill "$load_pid"
wait "$load_pid"
load_pid=
sed 's/^/    /' "$logdir/load.err"

log "checking"
$PY "$here/test/crash/check.py" --logdir "$logdir" --crashes "$done_crashes" | tee "$logdir/check.out"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ]; then
    log "after a restart (which rebuilds the low-water marks), a second drain:"
    as_pg pg_ctl -D "$datadir" -m fast -w restart >/dev/null && wait_up &&
        $PY "$here/test/crash/check.py" --logdir "$logdir" --redrain | tee -a "$logdir/check.out"
    echo
    grep '^crash loop:' "$logdir/check.out" | tail -1
fi
if [ "$rc" != 0 ] || [ "$keep_logs" = 1 ]; then
    cp "$CLUSTER_DIR/log" "$logdir/server.log"
    echo "logs kept in $logdir"
else
    rm -rf "$logdir"
fi
exit "$rc"
