#!/usr/bin/env bash
# test/fuzz/run.sh: the hostile-input generator against a throw-away cluster.
# Installs what is missing, builds and installs broker from this tree into a
# private installation (as test/run_all.sh does), starts a cluster whose log
# carries SQLSTATEs, runs test/fuzz/hostile.py, and stops the cluster.
# Ends with one line "hostile: N calls, M checks, K failures"; exits
# non-zero on any failure.
# Usage: bash test/fuzz/run.sh [--seconds N] [--sessions N] [--seed S] [--verbose]
#                              [--standby-sessions N] [--built TREE]
#        (default 60 s and 4 sessions; --seconds 1800 is the long run;
#        --built: use the private installation test/run_all.sh made in TREE
#        instead of building again)
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"

seconds=60
sessions=4
seed=$(( RANDOM * 32768 + RANDOM ))
extra=()
built=
while [ $# -gt 0 ]; do
    case "$1" in
        --built) built=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
        --standby-sessions) extra+=(--standby-sessions "$2"); shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --verbose) extra+=(--verbose); shift ;;
        *) echo "usage: $0 [--seconds N] [--sessions N] [--seed S] [--verbose]" >&2; exit 2 ;;
    esac
done

# Debian's python3 and psycopg 3 (a pyenv python3 on PATH would not see it).
PY=/usr/bin/python3
ensure_fuzz_deps() {
    [ -x "$PY" ] && "$PY" -c 'import psycopg' 2>/dev/null && return 0
    log "installing python3-psycopg"
    as_root apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-psycopg >/dev/null
}

fail_line() { echo "hostile: 0 calls, 0 checks, 1 failures"; exit 1; }

ensure_deps || fail_line
ensure_fuzz_deps || fail_line
# A hot standby of the cluster started by start_cluster, for the calls that
# must be refused there; sets STANDBY_DIR and STANDBY_PORT.
start_standby() {
    STANDBY_DIR=$(mktemp -d /tmp/broker-standby.XXXXXX)
    if [ "$(id -u)" = 0 ]; then chown postgres: "$STANDBY_DIR"; fi
    STANDBY_PORT=$(( PGPORT == 49999 ? 20000 : PGPORT + 1 ))
    as_pg pg_basebackup -h "$PGHOST" -p "$PGPORT" -U postgres -D "$STANDBY_DIR/data" -R -X stream ||
        return 1
    {
        echo "port = $STANDBY_PORT"
        echo "unix_socket_directories = '$STANDBY_DIR'"
        echo "hot_standby = on"
    } >> "$STANDBY_DIR/data/postgresql.conf"
    as_pg pg_ctl -D "$STANDBY_DIR/data" -l "$STANDBY_DIR/log" -w start >/dev/null
}

# Stop the standby and remove it.
stop_standby() {
    [ -n "${STANDBY_DIR:-}" ] || return 0
    as_pg pg_ctl -D "$STANDBY_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$STANDBY_DIR"
    STANDBY_DIR=
}

if [ -n "$built" ]; then
    tree=$built
    use_private_install "$tree/.install"
    trap 'stop_standby; stop_cluster' EXIT
else
    tree=$(make_build_tree "$here")
    trap 'stop_standby; stop_cluster; rm -rf "$tree"' EXIT
    build_install "$tree" || fail_line
fi

# SQLSTATEs in the log (for the XX000 scan); segments that rotate often and
# a busy reaper, so that maintenance runs under the calls.
start_cluster "log_error_verbosity = verbose" \
              "log_line_prefix = '%m [%p] %e %u@%d '" \
              "log_min_messages = warning" \
              "log_min_error_statement = panic" \
              "shared_buffers = 128MB" \
              "max_prepared_transactions = 4" \
              "broker.segment_size = 1000" \
              "broker.reaper_interval = 100" || fail_line
if ! as_pg psql -X -q -c "CREATE EXTENSION broker" >/dev/null; then
    fail_line
fi
check_loaded_library "$tree/.install" "$CLUSTER_DIR/data" || fail_line
start_standby || fail_line

out=$(mktemp)
"$PY" "$here/test/fuzz/hostile.py" --seconds "$seconds" --sessions "$sessions" \
    --seed "$seed" --server-log "$CLUSTER_DIR/log" --server-log "$STANDBY_DIR/log" \
    --standby-dsn "host=$STANDBY_DIR port=$STANDBY_PORT user=postgres dbname=postgres" \
    ${extra[@]+"${extra[@]}"} | tee "$out"
rc=${PIPESTATUS[0]}
line=$(grep -a '^hostile: [0-9]* calls' "$out" | tail -1)
if [ -z "$line" ]; then
    rm -f "$out"
    echo "hostile.py ended without a summary (exit $rc); server log tail:"
    tail -40 "$CLUSTER_DIR/log" | cut -c1-300
    fail_line
fi
if [ "$rc" -ne 0 ]; then
    echo "server log: last lines"
    tail -10 "$CLUSTER_DIR/log" | cut -c1-300
    # a crash: what ran before it, from either server's log
    for l in "$CLUSTER_DIR/log" "$STANDBY_DIR/log"; do
        [ -f "$l" ] && grep -a -B8 -A2 'terminated by signal' "$l" | cut -c1-300 | tail -24
    done
    # The failures again, last: a caller that keeps only the tail of this
    # output (test/run_all.sh keeps 40 lines) still sees what failed.
    echo "seed $seed; what failed:"
    sed -n '/^FAILURES (/,/^hostile: [0-9]* calls/p' "$out" | grep -av '^hostile: ' | cut -c1-600
fi
rm -f "$out"
echo
echo "$line"
[ "$rc" -eq 0 ]
