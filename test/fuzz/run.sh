#!/usr/bin/env bash
# test/fuzz/run.sh: the hostile-input generator against a throw-away cluster.
# Installs what is missing, builds and installs broker from this tree into a
# private installation (as test/run_all.sh does), starts a cluster whose log
# carries SQLSTATEs, runs test/fuzz/hostile.py, and stops the cluster.
# Ends with one line "hostile: N calls, M checks, K failures"; exits
# non-zero on any failure.
# Usage: bash test/fuzz/run.sh [--seconds N] [--sessions N] [--seed S] [--verbose]
#        (default 60 s and 4 sessions; --seconds 1800 is the long run)
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"

seconds=60
sessions=4
seed=$(( RANDOM * 32768 + RANDOM ))
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --sessions) sessions=$2; shift 2 ;;
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
tree=$(make_build_tree "$here")
trap 'stop_cluster; rm -rf "$tree"' EXIT
build_install "$tree" || fail_line

# SQLSTATEs in the log (for the XX000 scan); segments that rotate often and
# a busy reaper, so that maintenance runs under the calls.
start_cluster "log_error_verbosity = verbose" \
              "log_line_prefix = '%m [%p] %e %u@%d '" \
              "log_min_messages = warning" \
              "shared_buffers = 128MB" \
              "max_prepared_transactions = 4" \
              "broker.segment_size = 1000" \
              "broker.reaper_interval = 100" || fail_line
if ! as_pg psql -X -q -c "CREATE EXTENSION broker" >/dev/null; then
    fail_line
fi
check_loaded_library "$tree/.install" "$CLUSTER_DIR/data" || fail_line

out=$(mktemp)
"$PY" "$here/test/fuzz/hostile.py" --seconds "$seconds" --sessions "$sessions" \
    --seed "$seed" --server-log "$CLUSTER_DIR/log" ${extra[@]+"${extra[@]}"} | tee "$out"
rc=${PIPESTATUS[0]}
line=$(grep '^hostile: [0-9]* calls' "$out" | tail -1)
rm -f "$out"
if [ -z "$line" ]; then
    echo "hostile.py ended without a summary (exit $rc); server log tail:"
    tail -40 "$CLUSTER_DIR/log" | cut -c1-300
    fail_line
fi
if [ "$rc" -ne 0 ]; then
    echo "server log: last lines"
    tail -20 "$CLUSTER_DIR/log" | cut -c1-300
fi
echo
echo "$line"
[ "$rc" -eq 0 ]
