#!/usr/bin/env bash
# Enqueue wait beside long-poll consumers through PgBouncer (transaction mode).
set -eu
SIM=$1
DIR=$(mktemp -d /tmp/pgb-measure.XXXXXX)
PORT=26433
BOUNCER="host=127.0.0.1 port=$PORT"
write_ini() {       # $1: extra [pgbouncer] lines
    cat > "$DIR/pgbouncer.ini" <<EOI
[databases]
; producers and short transactions
app      = host=$PGHOST port=$PGPORT dbname=postgres pool_size=4
; long-poll consumers: a pool of their own
app_wait = host=$PGHOST port=$PGPORT dbname=postgres pool_size=4

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = trust
auth_file = $DIR/userlist.txt
admin_users = $(whoami)
pool_mode = transaction
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
$1
EOI
}
echo "\"$(whoami)\" \"\"" > "$DIR/userlist.txt"
write_ini ""
pgbouncer -d "$DIR/pgbouncer.ini"
sleep 0.5
psql -XAtq -h 127.0.0.1 -p $PORT -d pgbouncer -c "SHOW VERSION"

# 1 producer at 2 msg/s, 4 consumers long-polling, 30 s
sim() { "$SIM" --pooler --quiet -q pgb_measure -p 1 -c 4 -r 2 -t 30 --drain-timeout 30 "$@" |
        grep -E "produced|consumed|latency|enqueue call|errors|result"; }

echo "== A: one pool of 4 for all, consumers wait 10 s"
sim -d "$BOUNCER dbname=app" -w 10000
echo "== B: consumers on their own pool (app_wait), wait 10 s"
sim -d "$BOUNCER dbname=app" --consumer-dsn "$BOUNCER dbname=app_wait" -w 10000
echo "== C: one pool of 4 for all, consumers wait 1 s"
sim -d "$BOUNCER dbname=app" -w 1000

# psql: 4 consumers that long-poll (wait 10 s) in a loop; one psql session
# that enqueues once a second, 6 times, with \timing (the time includes
# the wait for a server connection in PgBouncer).
purge() { psql -XAtq -c "SELECT broker.purge_queue('pgb_measure')" >/dev/null; }
psql_run() {    # $1: database of the consumers
    purge
    rm -f "$DIR/stop"
    for i in 1 2 3 4; do
        ( while [ ! -e "$DIR/stop" ]; do
            psql -XAtq -h 127.0.0.1 -p $PORT -d "$1" -c \
              "SELECT count(*) FROM broker.delete('pgb_measure', ARRAY(SELECT id FROM broker.dequeue('pgb_measure', 1, wait => '10 seconds')))" >/dev/null
          done ) &
    done
    sleep 1
    for k in $(seq 1 6); do
        printf '%s\n' "SELECT broker.enqueue('pgb_measure', '{}');" '\! sleep 1'
    done | psql -Xq -h 127.0.0.1 -p $PORT -d app -v ON_ERROR_STOP=1 -c '\timing on' -f - |
        grep '^Time' | tr '\n' ' '; echo
    touch "$DIR/stop"
    wait
}
echo "== D (psql): one pool of 4 for all, consumers wait 10 s"
psql_run app
echo "== E (psql): consumers on app_wait, wait 10 s"
psql_run app_wait

echo "== F: query_wait_timeout = 5 s (below the 10 s waits), one pool of 4"
write_ini "query_wait_timeout = 5"
psql -XAtq -h 127.0.0.1 -p $PORT -d pgbouncer -c "RELOAD"
purge
for i in 1 2 3 4; do
    psql -XAtq -h 127.0.0.1 -p $PORT -d app -c \
      "SELECT count(*) FROM broker.dequeue('pgb_measure', 1, wait => '10 seconds')" >/dev/null &
done
sleep 1
t0=$(date +%s%N)
psql -XAtq -h 127.0.0.1 -p $PORT -d app -c "SELECT broker.enqueue('pgb_measure', '{}')" 2>&1 || true
echo "enqueue: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
wait

echo "== G: pgbench -M prepared through transaction pooling"
echo "SELECT broker.enqueue('pgb_measure', '{}');" > "$DIR/enq.sql"
pgbench -n -M prepared -c 8 -j 2 -t 100 -f "$DIR/enq.sql" -h 127.0.0.1 -p $PORT app 2>&1 |
    grep -E "error|processed|failed" | head -4 || true

psql -XAtq -h 127.0.0.1 -p $PORT -d pgbouncer -c "SHUTDOWN" 2>/dev/null || true
rm -rf "$DIR"
