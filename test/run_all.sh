#!/usr/bin/env bash
# Every test: install what is missing, build with -Wall -Wextra -Werror,
# install into a private installation, then run pg_regress, the isolation
# specs and the TAP tests (each on temporary instances they start
# themselves), short simulator runs, and a short run of the hostile-input
# generator (test/fuzz).
# Ends with one line "N passed, M failed"; exits non-zero on any failure.
# Usage: bash test/run_all.sh
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/test/lib.sh"

ensure_deps || exit 1
tree=$(make_build_tree "$here")
trap 'stop_cluster; rm -rf "$tree"' EXIT
build_install "$tree" "-Wall -Wextra -Werror" || { echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
out=$(mktemp)

# Count "... ok" / "... FAILED|not ok" result lines of one stage.
tally() {
    local ok bad
    ok=$(grep -cE '(\.\.\. +ok|\.\. ok( |$))' "$out")
    bad=$(grep -cE '(\.\.\. +FAILED|\.\. (Dubious|Failed)|not ok )' "$out")
    passed=$((passed + ok))
    failed=$((failed + bad))
}

# Run one stage; on failure show what the framework left behind.
stage() {
    local name=$1; shift
    log "$name"
    if "$@" 2>&1 | tee "$out"; then
        tally
    else
        tally
        [ "$(grep -cE '(\.\.\. +FAILED|\.\. (Dubious|Failed)|not ok )' "$out")" -gt 0 ] || failed=$((failed + 1))
        for f in "$tree/regression.diffs" "$tree/output_iso/regression.diffs" \
                 "$tree/pgmq/regression.diffs"; do
            [ -f "$f" ] && { echo "---- $f"; head -200 "$f"; }
        done
        for f in "$tree"/tmp_check/log/regress_log_*; do
            [ -f "$f" ] && { echo "---- $f (tail)"; tail -60 "$f"; }
        done
        return 1
    fi
}

# A small filesystem for the disk-full case of the fault tests (022): only
# it may fill, never the real disk.  Needs root; skipped otherwise.
smallfs=
if [ "$(id -u)" = 0 ]; then
    smallfs=$(mktemp -d /tmp/broker-smallfs.XXXXXX)
    if mount -t tmpfs -o size=16m,mode=0700,uid=postgres,gid=postgres tmpfs "$smallfs"; then
        trap 'stop_cluster; umount "$smallfs" 2>/dev/null; rmdir "$smallfs"; rm -rf "$tree"' EXIT
    else
        rmdir "$smallfs"; smallfs=
    fi
fi

mk=(as_pg env ${smallfs:+BROKER_TEST_SMALLFS=$smallfs} make -C "$tree" PG_CONFIG="$PG_CONFIG")
stage "pg_regress" "${mk[@]}" installcheck ISOLATION= TAP_TESTS=
stage "isolation" "${mk[@]}" installcheck REGRESS= TAP_TESTS=
stage "TAP" "${mk[@]}" installcheck REGRESS= ISOLATION= PROVE_FLAGS=--timer

log "simulator"
if sim=$(build_sim "$tree"); then
    start_cluster "shared_buffers = 256MB"
    as_pg psql -X -q -c "CREATE EXTENSION broker" >/dev/null
    if check_loaded_library "$tree/.install" "$CLUSTER_DIR/data"; then
        echo "server loaded the library built here ... ok"; passed=$((passed + 1))
    else
        echo "server loaded the library built here ... FAILED"; failed=$((failed + 1))
    fi
    for args in "-p 4 -c 4 -t 5" "-p 2 -c 4 -b 10 -t 5" "-p 2 -c 4 -w 200 -t 5"; do
        if as_pg env PGHOST="$PGHOST" PGPORT="$PGPORT" "$sim" --quiet $args; then
            echo "simulator $args ... ok"; passed=$((passed + 1))
        else
            echo "simulator $args ... FAILED"; failed=$((failed + 1))
        fi
    done
    stop_cluster
else
    echo "simulator build ... FAILED"; failed=$((failed + 1))
fi

log "hostile-input generator (45 s)"
if bash "$here/test/fuzz/run.sh" --seconds 45 --built "$tree" 2>&1 | tee "$out" | tail -40; then
    echo "hostile-input generator ... ok"; passed=$((passed + 1))
else
    echo "hostile-input generator ... FAILED"; failed=$((failed + 1))
fi

rm -f "$out"
echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
