#!/bin/bash
# Test of the Python examples: against the server of PGHOST/PGPORT/PGDATABASE
# as a superuser (see ../testlib.sh).  Needs Debian's python3-psycopg.
set -u
. "$(dirname "$0")/../testlib.sh"

PYTHON=/usr/bin/python3
if ! $PYTHON -c 'import psycopg' 2>/dev/null; then
    apt_install python3-psycopg ||
        skip "$PYTHON cannot import psycopg and this user cannot install it (as root: apt-get install python3-psycopg)"
    $PYTHON -c 'import psycopg' 2>/dev/null || skip "installing python3-psycopg failed"
fi

create_role shop_app && create_role shop_worker &&
    sql -f "$HERE/setup.sql" >/dev/null && sql -f "$HERE/grants.sql" >/dev/null ||
    { notok "setup.sql and grants.sql"; finish; }
ok "setup.sql and grants.sql"

cd "$HERE" && PYTHONDONTWRITEBYTECODE=1 $PYTHON test_examples.py || FAILED=1
finish
