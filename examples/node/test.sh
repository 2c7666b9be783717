#!/bin/bash
# Test of the Node examples: against the server of PGHOST/PGPORT/PGDATABASE
# as a superuser (see ../testlib.sh).  Needs node and npm (Debian's nodejs
# and npm) and node-postgres (pg) from the npm registry, installed into a
# scratch directory.
set -u
. "$(dirname "$0")/../testlib.sh"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm ||
        skip "node and npm are not installed and this user cannot install them (as root: apt-get install nodejs npm)"
    command -v node >/dev/null && command -v npm >/dev/null || skip "installing nodejs and npm failed"
fi
# pg into $WORK (not into the examples' directory), found through NODE_PATH
cp "$HERE/package.json" "$WORK/"
if ! npm_config_cache="$WORK/npm-cache" npm install --prefix "$WORK" --no-audit --no-fund \
        --no-package-lock --no-update-notifier --loglevel=error >"$WORK/npm.log" 2>&1; then
    sed 's/^/# /' "$WORK/npm.log"
    skip "npm install pg failed (no access to the npm registry?)"
fi
export NODE_PATH="$WORK/node_modules"
echo "# node $(node --version), pg $(node -p "require('$WORK/node_modules/pg/package.json').version")"

create_role shop_app && create_role shop_worker &&
    sql -f "$HERE/setup.sql" >/dev/null && sql -f "$HERE/grants.sql" >/dev/null ||
    { notok "setup.sql and grants.sql"; finish; }
ok "setup.sql and grants.sql"

cd "$HERE" && node test.js || FAILED=1
finish
