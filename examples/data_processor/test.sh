#!/bin/bash
# Test of the async data processor: builds it, then runs test_processor.py
# against the server of PGHOST/PGPORT/PGDATABASE as a superuser (see
# ../testlib.sh).  Needs gcc, make, pkg-config, libpq-dev, and Debian's
# libmicrohttpd-dev and libjson-c-dev; python3 (standard library only).
set -u
. "$(dirname "$0")/../testlib.sh"

have_libs() { pkg-config --exists libmicrohttpd json-c 2>/dev/null; }
if ! have_libs || ! command -v cc >/dev/null || ! command -v make >/dev/null; then
    apt_install pkg-config libmicrohttpd-dev libjson-c-dev build-essential ||
        skip "libmicrohttpd-dev and libjson-c-dev (or pkg-config, gcc, make) are missing and this user cannot install them (as root: apt-get install libmicrohttpd-dev libjson-c-dev pkg-config)"
    have_libs || skip "installing libmicrohttpd-dev and libjson-c-dev failed"
fi
command -v python3 >/dev/null || skip "python3 is missing"

check "the processor builds without warnings" \
    bash -c "make -s -C '$HERE' OUT='$WORK' CFLAGS='-O2 -g -Wall -Wextra -Werror' >'$WORK/build.log' 2>&1"
[ -x "$WORK/processor" ] || { sed 's/^/# /' "$WORK/build.log"; finish; }

# start from new queues: dropping a queue also forgets its broker.consumers
# rows, which the history reads (worker names repeat from one run to the next)
sql -c "SELECT broker.drop_queue('ingest_' || n, if_exists => true) FROM generate_series(0, 3) n" >/dev/null
create_role processor &&
    sql -v shards=4 -f "$HERE/setup.sql" >/dev/null && sql -v shards=4 -f "$HERE/grants.sql" >/dev/null ||
    { notok "setup.sql and grants.sql"; finish; }
ok "setup.sql and grants.sql"

# The restart case of test_processor.py restarts the server (pg_ctl restart
# -m fast) in the middle of a run.  It can when the server runs on this
# machine as this user, as the one of test/t/026_examples.pl does: its data
# directory, its pg_ctl (next to the postgres of postmaster.opts), and the
# log its postmaster writes to (pg_ctl appends to it).  PROCESSOR_TEST_RESTART=no
# skips it, against a server of your own that must not be restarted.
RESTART_PG_CTL= RESTART_PGDATA= RESTART_LOG= RESTART_WHY=
if [ "${PROCESSOR_TEST_RESTART:-}" = no ]; then
    RESTART_WHY="PROCESSOR_TEST_RESTART=no"
else
    RESTART_PGDATA=$(sql -Atc "SELECT current_setting('data_directory')" 2>/dev/null)
    if [ -z "$RESTART_PGDATA" ] || [ ! -O "$RESTART_PGDATA" ] || [ ! -r "$RESTART_PGDATA/postmaster.opts" ]; then
        RESTART_WHY="the server's data directory ($RESTART_PGDATA) is not this user's on this machine"
    else
        RESTART_PG_CTL="$(dirname "$(sed -n '1s/ .*//p' "$RESTART_PGDATA/postmaster.opts")")/pg_ctl"
        [ -x "$RESTART_PG_CTL" ] || RESTART_PG_CTL=$(command -v pg_ctl)
        [ -n "$RESTART_PG_CTL" ] || RESTART_WHY="no pg_ctl"
        pid=$(head -1 "$RESTART_PGDATA/postmaster.pid" 2>/dev/null)
        RESTART_LOG=$(readlink "/proc/$pid/fd/2" 2>/dev/null)
        case $RESTART_LOG in
            /*) [ -f "$RESTART_LOG" ] && [ -w "$RESTART_LOG" ] || RESTART_LOG= ;;
            *) RESTART_LOG= ;;
        esac
        [ -n "$RESTART_LOG" ] || RESTART_LOG="$WORK/postgres.log"
    fi
fi
[ -n "$RESTART_WHY" ] && RESTART_PG_CTL=
export RESTART_PG_CTL RESTART_PGDATA RESTART_LOG RESTART_WHY

python3 "$HERE/test_processor.py" "$WORK/processor" "$WORK" || FAILED=1
if [ "$FAILED" != 0 ]; then
    for f in "$WORK"/*.log; do echo "# --- $f"; tail -40 "$f" | sed 's/^/# /'; done
fi
finish
