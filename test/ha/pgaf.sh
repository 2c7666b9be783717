#!/bin/bash
# test/ha/pgaf.sh: a pg_auto_failover formation on this machine, for tests.
#
# A monitor and two data nodes (node1, node2), each a PostgreSQL cluster
# under one directory, listening on 127.0.0.1 only, with synchronous
# replication (pg_auto_failover's default for a primary and one secondary)
# and broker preloaded on the data nodes.  Every pg_autoctl file (config,
# state, pid) lives under that directory too (XDG_* point there), so a
# formation is removed with the directory and two formations never meet.
#
#   pgaf.sh install                  apt-get install postgresql-15-auto-failover
#                                    (as root; nothing if pg_autoctl exists)
#   pgaf.sh up DIR MPORT PORT1 PORT2 create and start the monitor on MPORT,
#                                    node1 on PORT1 (the primary) and node2
#                                    on PORT2 (the secondary); wait until
#                                    node1 is primary and node2 secondary
#   pgaf.sh down DIR                 stop every process of the formation
#                                    (pg_autoctl and postgres), remove DIR
#   pgaf.sh kill DIR NODE            kill -9 the node's postmaster and, in
#                                    the same call, its pg_autoctl processes
#                                    (the machine is lost: nothing restarts
#                                    it, and pg_auto_failover fails over);
#                                    then every leftover process of the node;
#                                    prints the time of the kill (seconds
#                                    since the epoch, to the microsecond)
#   pgaf.sh kill-postmaster DIR NODE kill -9 the postmaster only: the node's
#                                    pg_autoctl restarts it in place (prints
#                                    the time, as kill does)
#   pgaf.sh start DIR NODE           start the node's pg_autoctl again (a
#                                    killed node rejoins, as secondary)
#   pgaf.sh wait DIR NODE STATE [SECS]
#                                    wait until the monitor reports NODE in
#                                    STATE (reported and goal); default 60 s
#   pgaf.sh state DIR                pg_autoctl show state
#   pgaf.sh nodes DIR                "name port reported goal" per data node
#   pgaf.sh dsn DIR                  a libpq conninfo naming both data nodes,
#                                    target_session_attrs=read-write
#   pgaf.sh monitor-dsn DIR          the monitor's conninfo
#
# The data nodes run the pg_ctl found in PATH (PGAF_PGCTL overrides it): in
# the tests, the private installation of the broker build under test (see
# use_private_install in test/lib.sh).  The monitor needs no broker: it runs
# the pg_ctl of PGAF_MONITOR_PGCTL, by default the same one (its
# installation must have the pgautofailover extension: the package's files;
# a private installation links them if they were there when it was made).
# Settings:
#   PGAF_NODE_CONF      extra postgresql.conf lines for the data nodes
#                       (newline-separated)
#   PGAF_FSYNC          fsync of the data nodes, "on" (default) or "off"
#   PGAF_FAST           1 (default): the monitor checks health every 500 ms
#                       and declares a silent node unhealthy after 2 s; 0:
#                       pg_auto_failover's defaults (about 20-30 s)
# Run it as the clusters' user; as root it runs itself as postgres.
set -euo pipefail

if [ "$(id -u)" = 0 ] && [ "${1:-}" != install ]; then
    exec runuser -u postgres -- env PATH="$PATH" bash "$0" "$@"
fi

die() { echo "pgaf.sh: $*" >&2; exit 1; }
say() { echo "pgaf.sh: [$(date +%T.%3N)] $*" >&2; }

cmd=${1:-}
[ -n "$cmd" ] || die "usage: pgaf.sh install|up|down|kill|kill-postmaster|start|wait|state|nodes|dsn|monitor-dsn ..."
shift

if [ "$cmd" = install ]; then
    command -v pg_autoctl >/dev/null && exit 0
    [ "$(id -u)" = 0 ] || die "pg_autoctl is missing; installing postgresql-15-auto-failover needs root"
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        postgresql-15-auto-failover >/dev/null
    command -v pg_autoctl >/dev/null || die "pg_autoctl still missing after the install"
    exit 0
fi

command -v pg_autoctl >/dev/null || die "pg_autoctl not found (pgaf.sh install, as root)"

DIR=${1:?pgaf.sh $cmd: DIR missing}
shift
case "$DIR" in /*) ;; *) DIR=$(pwd)/$DIR ;; esac
export XDG_CONFIG_HOME=$DIR/xdg/config XDG_DATA_HOME=$DIR/xdg/data XDG_RUNTIME_DIR=$DIR/xdg/run
export HOME=$DIR
# no stray PG* variable of the caller decides where pg_autoctl connects
unset PGDATA PGHOST PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS PG_AUTOCTL_MONITOR

# port of a component, recorded by up
port_of() { cat "$DIR/$1.port"; }
monitor_dsn() { echo "postgres://autoctl_node@127.0.0.1:$(port_of monitor)/pg_auto_failover?sslmode=disable"; }
mpsql() { psql -XAtq -d "$(monitor_dsn)" -c "$1"; }

# Start pg_autoctl for a component in the background, in a session of its
# own (no signal of the caller's terminal reaches it); pid in NAME.pid.
start_keeper() {
    local name=$1; shift
    setsid pg_autoctl "$@" >>"$DIR/$name.keeper.log" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
}

# Every process that descends from pid $1 (itself included): one ps, so
# that it is quick on a loaded machine (a fork there can take 100 ms).
descendants() {
    ps -e -o pid=,ppid= 2>/dev/null | awk -v root="$1" '
        { kids[$2] = kids[$2] " " $1 }
        END {
            todo[1] = root; n = 1; print root
            while (n > 0) {
                p = todo[n--]; k = split(kids[p], c, " ")
                for (i = 1; i <= k; i++) { print c[i]; todo[++n] = c[i] }
            }
        }'
}

# Processes whose working directory is $1 (a postmaster and its children),
# in one find (no readlink per process).
procs_in() {
    find /proc -mindepth 2 -maxdepth 2 -name cwd -lname "$1" -printf '%h\n' 2>/dev/null |
        sed 's|^/proc/||'
    return 0
}

# The pids of a component: its pg_autoctl tree and its postgres processes.
component_pids() {
    local name=$1 pid
    if [ -f "$DIR/$name.pid" ]; then
        pid=$(cat "$DIR/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then descendants "$pid"; fi
    fi
    procs_in "$DIR/$name"
}

# Wait until none of the given pids exists; false after $1 seconds.
wait_gone() {
    local secs=$1 deadline p left; shift
    deadline=$(( $(date +%s) + secs ))
    while :; do
        left=
        for p in "$@"; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
        [ -z "$left" ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && { echo "$left"; return 1; }
        sleep 0.05
    done
}

# Reported and goal state of a data node ("" if unknown).
node_state() {
    mpsql "SELECT reportedstate || ' ' || goalstate FROM pgautofailover.node WHERE nodename = '$1'" 2>/dev/null || true
}

wait_state() {
    local node=$1 state=$2 secs=${3:-60} deadline got
    deadline=$(( $(date +%s) + secs ))
    while :; do
        got=$(node_state "$node")
        [ "$got" = "$state $state" ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "$node is '$got' after $secs s, not '$state'"
            pg_autoctl show state --pgdata "$DIR/monitor" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# initdb for node1 (no fsync: -N), with broker's settings in place before
# the first start: pg_auto_failover adopts an existing, stopped PGDATA for
# the first node; the second is a base backup of the primary's,
# postgresql.conf included.
init_node1() {
    local pgctl=$1
    "$(dirname "$pgctl")/initdb" -N -A trust -U postgres -D "$DIR/node1" >"$DIR/node1.initdb.log"
    {
        echo "# test/ha/pgaf.sh: after pg_auto_failover's include (line 1), so these win"
        # pg_auto_failover's own default is pg_stat_statements: kept
        echo "shared_preload_libraries = 'pg_stat_statements,broker'"
        echo "unix_socket_directories = '$DIR/sock'"
        echo "fsync = ${PGAF_FSYNC:-on}"
        echo "max_connections = 200"
        printf '%s\n' "${PGAF_NODE_CONF:-}"
    } >>"$DIR/node1/postgresql.conf"
}

create_node() {
    local name=$1 port=$2 pgctl=$3
    start_keeper "$name" create postgres --pgdata "$DIR/$name" --pgctl "$pgctl" \
        --pgport "$port" --pghost "$DIR/sock" --listen 127.0.0.1 --hostname 127.0.0.1 \
        --name "$name" --username postgres --dbname postgres \
        --monitor "$(monitor_dsn)" --auth trust --no-ssl --run
}

case "$cmd" in
up)
    [ $# -eq 3 ] || die "usage: pgaf.sh up DIR MPORT PORT1 PORT2"
    [ -e "$DIR/monitor" ] && die "$DIR already holds a formation"
    mkdir -p "$DIR/sock" "$XDG_CONFIG_HOME" "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
    echo "$1" >"$DIR/monitor.port"; echo "$2" >"$DIR/node1.port"; echo "$3" >"$DIR/node2.port"
    pgctl=${PGAF_PGCTL:-$(command -v pg_ctl)}
    mpgctl=${PGAF_MONITOR_PGCTL:-$pgctl}
    [ -x "$pgctl" ] || die "no pg_ctl ($pgctl)"
    [ -f "$("$(dirname "$mpgctl")/pg_config" --sharedir)/extension/pgautofailover.control" ] ||
        die "the installation of $mpgctl has no pgautofailover extension"

    init_node1 "$pgctl" &
    initpid=$!
    say "monitor on 127.0.0.1:$1"
    "$(dirname "$mpgctl")/initdb" -N -A trust -U postgres -D "$DIR/monitor" >"$DIR/monitor.initdb.log"
    {
        echo "shared_preload_libraries = 'pgautofailover'"
        echo "unix_socket_directories = '$DIR/sock'"
        echo "fsync = off"
    } >>"$DIR/monitor/postgresql.conf"
    # the monitor's pg_autoctl connects to it on its socket directory
    PGHOST=$DIR/sock pg_autoctl create monitor --pgdata "$DIR/monitor" --pgctl "$mpgctl" --pgport "$1" \
        --hostname 127.0.0.1 --listen 127.0.0.1 --auth trust --no-ssl \
        >>"$DIR/monitor.keeper.log" 2>&1 || { tail -20 "$DIR/monitor.keeper.log" >&2; die "create monitor failed"; }
    PGHOST=$DIR/sock start_keeper monitor run --pgdata "$DIR/monitor"
    for _ in $(seq 1 300); do mpsql "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
    mpsql "SELECT 1" >/dev/null || die "the monitor does not answer"
    if [ "${PGAF_FAST:-1}" = 1 ]; then
        # how soon a silent primary is declared unhealthy (the defaults:
        # checks every 5 s, 2 retries 2 s apart, unhealthy after 20 s), and
        # how long the promotion waits for the old primary to confirm its
        # demotion before it goes on without (default 30 s; the promoted
        # node refuses writes meanwhile, default_transaction_read_only)
        psql -XAtq -d "$(monitor_dsn | sed 's/autoctl_node/postgres/')" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_period = 500" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_timeout = 500" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 200" \
            -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 2000" \
            -c "ALTER SYSTEM SET pgautofailover.startup_grace_period = 1000" \
            -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 2000" \
            -c "SELECT pg_reload_conf()" >/dev/null
    fi

    wait $initpid || die "initdb of node1 failed (see $DIR/node1.initdb.log)"
    say "node1 on 127.0.0.1:$2"
    create_node node1 "$2" "$pgctl"
    wait_state node1 single 90 || { tail -30 "$DIR/node1.keeper.log" >&2; exit 1; }
    # the base backup of node2 starts with a spread checkpoint, which paces
    # the writes of a fresh cluster's dirty buffers over seconds: flush now
    psql -XAtq -h 127.0.0.1 -p "$2" -U postgres -d postgres -c CHECKPOINT
    say "node2 on 127.0.0.1:$3"
    create_node node2 "$3" "$pgctl"
    wait_state node2 secondary 120 || { tail -30 "$DIR/node2.keeper.log" >&2; exit 1; }
    wait_state node1 primary 60 || { tail -30 "$DIR/node1.keeper.log" >&2; exit 1; }
    ;;
down)
    [ -d "$DIR" ] || exit 0
    [ -f "$DIR/monitor.port" ] || die "$DIR is not a formation of pgaf.sh"
    # data nodes first (a stopping monitor would make them wait), then the
    # monitor: SIGTERM to pg_autoctl stops its postgres in fast mode
    for name in node2 node1 monitor; do
        [ -f "$DIR/$name.pid" ] && kill -TERM "$(cat "$DIR/$name.pid")" 2>/dev/null || true
    done
    pids=$(for name in node2 node1 monitor; do component_pids "$name"; done | sort -u)
    if [ -n "$pids" ] && ! left=$(wait_gone 30 $pids); then
        say "still running after SIGTERM, killed:$left"
        kill -KILL $left 2>/dev/null || true
        wait_gone 30 $left >/dev/null || die "processes survive: $left"
    fi
    # a postgres left behind by a killed pg_autoctl (none expected)
    for name in node2 node1 monitor; do
        left=$(procs_in "$DIR/$name")
        [ -z "$left" ] || { kill -KILL $left 2>/dev/null || true; wait_gone 30 $left >/dev/null || true; }
    done
    rm -rf "$DIR"
    ;;
kill|kill-postmaster)
    node=${1:?pgaf.sh $cmd: NODE missing}
    pm=$(head -1 "$DIR/$node/postmaster.pid" 2>/dev/null) || die "$node has no postmaster.pid"
    kill -0 "$pm" 2>/dev/null || die "$node's postmaster ($pm) is not running"
    if [ "$cmd" = kill-postmaster ]; then
        echo "$EPOCHREALTIME"
        kill -KILL "$pm"
        say "killed $node's postmaster $pm"
        exit 0
    fi
    keeper=
    [ -f "$DIR/$node.pid" ] && keeper=$(descendants "$(cat "$DIR/$node.pid")" | grep -vx "$pm" || true)
    # one call: the postmaster and every pg_autoctl process of the node;
    # its time (seconds since the epoch) on stdout, for measurements
    killed_at=$EPOCHREALTIME
    kill -KILL "$pm" $keeper 2>/dev/null || true
    echo "$killed_at"
    # then the backends, which would exit by themselves on noticing the
    # postmaster gone: now, so that the node can be started again at once
    all="$pm $keeper $(procs_in "$DIR/$node")"
    kill -KILL $(procs_in "$DIR/$node") 2>/dev/null || true
    left=$(wait_gone 30 $all) || die "processes of $node survive: $left"
    say "killed $node: postmaster $pm, pg_autoctl ${keeper//$'\n'/ }"
    ;;
start)
    node=${1:?pgaf.sh start: NODE missing}
    [ -f "$DIR/$node.pid" ] && kill -0 "$(cat "$DIR/$node.pid")" 2>/dev/null &&
        die "$node's pg_autoctl is running"
    start_keeper "$node" run --pgdata "$DIR/$node"
    ;;
wait)
    [ $# -ge 2 ] || die "usage: pgaf.sh wait DIR NODE STATE [SECS]"
    wait_state "$1" "$2" "${3:-60}"
    ;;
state)
    pg_autoctl show state --pgdata "$DIR/monitor"
    ;;
nodes)
    mpsql "SELECT nodename, nodeport, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid" |
        tr '|' ' '
    ;;
dsn)
    echo "host=127.0.0.1,127.0.0.1 port=$(port_of node1),$(port_of node2) dbname=postgres user=postgres target_session_attrs=read-write connect_timeout=2"
    ;;
monitor-dsn)
    monitor_dsn
    ;;
*)
    die "unknown command $cmd"
    ;;
esac
