#!/usr/bin/env bash
# proxy/bench/measure.sh: what broker_proxy costs per call, and throughput
# through it with one, two and three broker nodes (docs/scale-out.md).
#
# Starts three broker clusters and a proxy cluster on this machine (ports
# PORT_BASE .. PORT_BASE+3, default 5700), runs pgbench (-M prepared) and
# removes everything at the end.
#
#  1. cost per call, same clients, same node, same run of the script:
#     enqueue, and dequeue then delete (two statements, as a client does),
#     directly on node n1 and through the proxy;
#  2. throughput of enqueue through the proxy with 1, 2 and 3 nodes (one
#     queue per node, each call to a random one of them), and directly on
#     one node for comparison.
#
# Usage: bash proxy/bench/measure.sh [seconds per run (10)] [clients (4)]
# Needs broker and broker_proxy installed for the pg_config found on PATH
# (or $PG_CONFIG): make install && make -C proxy install; and PL/Proxy
# (Debian: postgresql-15-plproxy).  Run as root (the clusters run as
# postgres) or as a user who can run clusters.
set -euo pipefail
secs=${1:-10}
clients=${2:-4}
base=${PORT_BASE:-5700}
PG_CONFIG=${PG_CONFIG:-pg_config}
bin=$("$PG_CONFIG" --bindir)

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

dir=$(mktemp -d /tmp/broker-proxy-bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
cleanup() {
    for d in "$dir"/*/; do
        [ -f "$d/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

start() {   # name port preload
    local name=$1 port=$2 preload=$3
    as_pg "$bin/initdb" -D "$dir/$name" -A trust -U postgres >/dev/null
    {
        [ "$preload" = yes ] && echo "shared_preload_libraries = 'broker'"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "port = $port"
        echo "max_connections = 50"
        echo "shared_buffers = 128MB"
        echo "synchronous_commit = on"
    } >> "$dir/$name/postgresql.conf"
    as_pg "$bin/pg_ctl" -D "$dir/$name" -l "$dir/$name.log" -w start >/dev/null
}
sql() {     # port sql
    as_pg "$bin/psql" -h "$dir" -p "$1" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$2"
}
# pgbench: port script-file -> transactions per second
bench() {
    local port=$1 script=$2 out
    out=$(as_pg "$bin/pgbench" -h "$dir" -p "$port" -U postgres -n -M prepared -c "$clients" \
            -j "$clients" -T "$secs" -f "$script" postgres 2>&1) || { echo "$out" >&2; return 1; }
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -1
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

echo "== starting 3 broker nodes and a proxy in $dir (ports $base-$((base + 3)))" >&2
for i in 1 2 3; do
    start "n$i" $((base + i)) yes
    sql $((base + i)) "CREATE EXTENSION broker"
done
start proxy "$base" no
sql "$base" "CREATE EXTENSION broker_proxy CASCADE" 2>/dev/null
sql "$base" "SELECT broker_proxy.add_node('n1', 'host=$dir port=$((base + 1)) dbname=postgres')" >/dev/null

# scripts (queue names are substituted per run)
cat > "$dir/enq.sql" <<'EOF'
SELECT broker.enqueue('cq', '{"order": 12345, "note": "a small payload"}');
EOF
cat > "$dir/deq.sql" <<'EOF'
SELECT id, receipt FROM broker.dequeue('cq') \gset
SELECT broker.delete('cq', :id, :receipt);
EOF
chmod 644 "$dir"/*.sql

# the queue cq on n1, known to the proxy; a backlog for the consumers
sql $((base + 1)) "SELECT broker.create_queue('cq')" >/dev/null
sql "$base" "SELECT broker_proxy.place_queue('cq', 'n1')" >/dev/null
fill() {
    sql $((base + 1)) "SELECT broker.purge_queue('cq')" >/dev/null
    sql $((base + 1)) "SELECT count(*) FROM (SELECT broker.enqueue_batch('cq', array_agg('{\"order\": 1}'::jsonb))
                         FROM generate_series(1, $1) i GROUP BY i / 1000) s" >/dev/null
    sql $((base + 1)) "VACUUM ANALYZE" && sql $((base + 1)) "CHECKPOINT"
}

echo "== 1. cost per call (${secs} s per run, $clients clients)" >&2
fill 1000
e_direct=$(bench $((base + 1)) "$dir/enq.sql")
e_proxy=$(bench "$base" "$dir/enq.sql")
fill 400000
d_direct=$(bench $((base + 1)) "$dir/deq.sql")
fill 400000
d_proxy=$(bench "$base" "$dir/deq.sql")
lat() { awk -v c="$clients" -v t="$1" 'BEGIN { printf "%.3f", (t > 0 ? 1000 * c / t : 0) }'; }

echo "== 2. enqueue throughput through the proxy with 1, 2, 3 nodes" >&2
for i in 2 3; do
    sql "$base" "SELECT broker_proxy.add_node('n$i', 'host=$dir port=$((base + i)) dbname=postgres')" >/dev/null
done
for i in 1 2 3; do
    sql $((base + i)) "SELECT broker.create_queue('tq_$((i - 1))')" >/dev/null
    sql "$base" "SELECT broker_proxy.place_queue('tq_$((i - 1))', 'n$i')" >/dev/null
done
declare -A tp
for n in 1 2 3; do
    cat > "$dir/tq$n.sql" <<EOF
\set k random(0, $((n - 1)))
SELECT broker.enqueue('tq_' || :k, '{"order": 12345, "note": "a small payload"}');
EOF
    chmod 644 "$dir/tq$n.sql"
    tp[$n]=$(bench "$base" "$dir/tq$n.sql")
done
sed 's/cq/tq_0/' "$dir/enq.sql" > "$dir/tqd.sql"
chmod 644 "$dir/tqd.sql"
tp_direct=$(bench $((base + 1)) "$dir/tqd.sql")
ncpu=$(nproc)

cat <<EOF

broker_proxy measurements: $clients pgbench clients (-M prepared), $secs s per run,
$ncpu CPUs, every cluster and pgbench on this one machine.

1. Cost per call (node n1, queue cq; ms per call = clients / tps)
                              direct        through proxy   proxy/direct
   enqueue (tps)           $(printf '%10.0f' "$e_direct")        $(printf '%10.0f' "$e_proxy")        $(ratio "$e_proxy" "$e_direct")
   enqueue (ms per call)   $(printf '%10s' "$(lat "$e_direct")")        $(printf '%10s' "$(lat "$e_proxy")")
   dequeue+delete (tps)    $(printf '%10.0f' "$d_direct")        $(printf '%10.0f' "$d_proxy")        $(ratio "$d_proxy" "$d_direct")
   dequeue+delete (ms)     $(printf '%10s' "$(lat "$d_direct")")        $(printf '%10s' "$(lat "$d_proxy")")

2. Enqueue throughput (tps), each call to a random queue of the nodes used
   directly on one node          $(printf '%10.0f' "$tp_direct")
   through the proxy, 1 node     $(printf '%10.0f' "${tp[1]}")
   through the proxy, 2 nodes    $(printf '%10.0f' "${tp[2]}")
   through the proxy, 3 nodes    $(printf '%10.0f' "${tp[3]}")
EOF
