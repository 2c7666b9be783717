#!/usr/bin/env bash
# Two builds of broker side by side: each git revision is built into a
# private installation of its own, and this tree's test/bench/run runs
# against one and then the other, round after round (A B A B ...), on
# fresh clusters, so that both see the same machine at about the same
# time.  Prints, for every workload and case, broker's median rate with
# each build and the ratio after/before; the baselines' figures (same SQL
# in both) show how much the machine itself moved between the runs.
# Usage: bash test/bench/compare.sh REV_BEFORE REV_AFTER [ROUNDS] [-- run options]
#        e.g. bash test/bench/compare.sh HEAD~3 HEAD 2 -- --quick --workloads W1,W2,W3,W4
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"

[ $# -ge 2 ] || { echo "usage: $0 REV_BEFORE REV_AFTER [ROUNDS] [-- run options]" >&2; exit 2; }
revs=("$1" "$2"); shift 2
rounds=2
if [ $# -gt 0 ] && [ "$1" != -- ]; then rounds=$1; shift; fi
[ "${1:-}" = -- ] && shift
runargs=("$@")
[ ${#runargs[@]} -gt 0 ] || runargs=(--quick)

ensure_deps || exit 1
# PgQ first, so that the private installations link its files too
if [ ! -f "$("$SYSTEM_PGBIN/pg_config" --sharedir)/extension/pgq.control" ]; then
    as_root apt-get update -qq && as_root apt-get install -y -qq postgresql-15-pgq3 pgqd >/dev/null
fi

work=$(mktemp -d /tmp/broker-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
pgbins=()
for i in 0 1; do
    src="$work/src$i"
    mkdir -p "$src"
    git -C "$here" archive "${revs[$i]}" | tar -x -C "$src" || exit 1
    tree=$(make_build_tree "$src")
    mv "$tree" "$work/tree$i"
    tree="$work/tree$i"
    (SYSTEM_PGBIN=$SYSTEM_PGBIN; build_install "$tree" >/dev/null) || { echo "build of ${revs[$i]} failed"; exit 1; }
    pgbins+=("$tree/.install$("$SYSTEM_PGBIN/pg_config" --bindir)")
done

for r in $(seq 1 "$rounds"); do
    for i in 0 1; do
        log "round $r, ${revs[$i]}"
        PGBIN="${pgbins[$i]}" python3 "$here/test/bench/run" "${runargs[@]}" 2>&1 >/dev/null |
            grep -E '^W[0-9a-z]+ ' | sed "s/^/$i /" >> "$work/rates"
    done
done

python3 - "$work/rates" "${revs[0]}" "${revs[1]}" <<'PY'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\d) (W\w+)\s+(.+?)\s{2,}(broker|floor|pgmq-style|pgq)\s+([\d.]+) msg/s", line)
    if m:
        rates.setdefault((m.group(2), m.group(3).strip(), m.group(4)), {}).setdefault(int(m.group(1)), []).append(float(m.group(5)))
print(f"| workload | case | variant | {sys.argv[2]} msg/s | {sys.argv[3]} msg/s | after/before |")
print("|---|---|---|---:|---:|---:|")
for (w, case, v), by in sorted(rates.items()):
    if 0 in by and 1 in by:
        a, b = statistics.median(by[0]), statistics.median(by[1])
        print(f"| {w} | {case} | {v} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
PY
