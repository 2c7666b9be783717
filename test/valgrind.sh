#!/usr/bin/env bash
# Run the pg_regress, isolation and (optionally) TAP suites with every server
# process under valgrind's memcheck, and report the errors whose stack goes
# through broker.so (PostgreSQL itself is not built for valgrind here, so
# its own noise is left out).  Use-after-free of memory freed by
# SPI_finish or a memory-context reset shows up as "Invalid read".
# On demand, not in the test command (slow).
# Usage: bash test/valgrind.sh [--tap]
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/test/lib.sh"

ensure_deps || exit 1
command -v valgrind >/dev/null || { as_root apt-get update -qq; as_root apt-get install -y -qq valgrind >/dev/null; }
tree=$(make_build_tree "$here")
trap 'rm -rf "$tree"' EXIT
build_install "$tree" "-Wall -Wextra -Werror -O0 -g" || exit 1

# The private installation's postgres becomes a wrapper: the server (not
# initdb's bootstrap) runs under valgrind, one log per process.
vglogs="$tree/valgrind"
as_pg mkdir -p "$vglogs"
as_pg mv "$PGBIN/postgres" "$PGBIN/postgres.real"
as_pg tee "$PGBIN/postgres" >/dev/null <<WRAP
#!/bin/sh
case " \$* " in
  *" --boot "*|*" --single "*|*" -V "*|*" --version "*|*" -C "*|*" --describe-config "*)
    exec "$PGBIN/postgres.real" "\$@" ;;
esac
exec valgrind --quiet --trace-children=no --leak-check=no --error-limit=no \\
    --num-callers=30 --log-file="$vglogs/%p.log" "$PGBIN/postgres.real" "\$@"
WRAP
as_pg chmod 755 "$PGBIN/postgres"

export PGCTLTIMEOUT=600
mk=(as_pg env PGCTLTIMEOUT=600 make -C "$tree" PG_CONFIG="$PG_CONFIG")
log "pg_regress under valgrind"
"${mk[@]}" installcheck ISOLATION= TAP_TESTS= 2>&1 | grep -E "^(test|ok|not ok)|tests (passed|failed)"
log "isolation under valgrind"
"${mk[@]}" installcheck REGRESS= TAP_TESTS= 2>&1 | grep -E "^(test|ok|not ok)|tests (passed|failed)"
if [ "${1:-}" = --tap ]; then
    log "TAP under valgrind"
    "${mk[@]}" installcheck REGRESS= ISOLATION= PROVE_FLAGS=--timer 2>&1 | grep -E "^\[|Result"
fi

# Errors with broker.so in their stack.
total=$(cat "$vglogs"/*.log 2>/dev/null | grep -c "^==[0-9]*== [A-Z].*\(Invalid\|uninitialised\|Mismatched\|overlap\|Syscall\)")
ours=0
for f in "$vglogs"/*.log; do
    [ -s "$f" ] || continue
    awk '/^==[0-9]+== [A-Z]/ {if (blk ~ /broker\.so/) print blk; blk=$0 "\n"; next}
         /^==[0-9]+==/ {blk = blk $0 "\n"}
         END {if (blk ~ /broker\.so/) print blk}' "$f"
done > "$tree/ours.txt"
ours=$(grep -c "^==[0-9]*== [A-Z]" "$tree/ours.txt")
echo
echo "valgrind: $(ls "$vglogs" | wc -l) server processes, $total errors in all, $ours with broker.so in the stack"
[ "$ours" -gt 0 ] && head -100 "$tree/ours.txt"
[ "$ours" -eq 0 ]
