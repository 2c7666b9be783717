#!/bin/bash
# Test of the word-count web-queue-worker: against the server of
# PGHOST/PGPORT/PGDATABASE as a superuser (see ../testlib.sh).  Needs
# Debian's python3-psycopg; the HTTP side is Python's standard library.
set -u
. "$(dirname "$0")/../testlib.sh"

PYTHON=/usr/bin/python3
if ! $PYTHON -c 'import psycopg' 2>/dev/null; then
    apt_install python3-psycopg ||
        skip "$PYTHON cannot import psycopg and this user cannot install it (as root: apt-get install python3-psycopg)"
    $PYTHON -c 'import psycopg' 2>/dev/null || skip "installing python3-psycopg failed"
fi

# a new queue each time: broker.consumers (checked by the test) forgets a dropped queue's rows
sql -c "SELECT broker.drop_queue('wordcount', if_exists => true)" >/dev/null
create_role wordcount_api && create_role wordcount_worker &&
    sql -f "$HERE/setup.sql" >/dev/null && sql -f "$HERE/grants.sql" >/dev/null ||
    { notok "setup.sql and grants.sql"; finish; }
ok "setup.sql and grants.sql"

PYTHONDONTWRITEBYTECODE=1 $PYTHON "$HERE/test_wordcount.py" || FAILED=1
finish
