#!/usr/bin/env bash
# The held-snapshot soak (issue 11), outside CI: 30 minutes at a fixed
# produce rate (1,500 msg/s over 4 producers) with 4 consumers and a
# REPEATABLE READ snapshot held from the end of minute 1 on; per minute,
# the throughput, the consumers' p99 latency and the size of the tables.
# Builds this tree into a private installation first (test/lib.sh), then
# runs the benchmark's W5 for broker (and, with --baselines, for the
# plain-SQL baselines too).
# Usage: bash test/soak/run.sh [--minutes N] [--baselines]
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
. "$here/test/lib.sh"

minutes=30
variants=broker
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) minutes=$2; shift 2 ;;
        --baselines) variants=broker,floor,pgmq-style; shift ;;
        *) echo "usage: $0 [--minutes N] [--baselines]" >&2; exit 2 ;;
    esac
done

ensure_deps || exit 1
tree=$(make_build_tree "$here")
trap 'rm -rf "$tree"' EXIT
build_install "$tree" || { echo "build failed"; exit 1; }
PGBIN=$PGBIN python3 "$here/test/bench/run" --workloads W5 --w5-minutes "$minutes" \
    --variants "$variants"
