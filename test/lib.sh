# test/lib.sh: shared by test/demo.sh, test/run_all.sh and test/bench/run.
# Installs what is missing, builds in a tree the postgres user owns, and
# runs throw-away clusters.  Source it; it defines functions only.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PATH="$PGBIN:$PATH"

log() { printf '\n== %s\n' "$*" >&2; }

# Run a command as root (sudo when not root).
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Run a command as the user that owns clusters (postgres when we are root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Install the packages the build and the tests need, if any is missing.
ensure_deps() {
    local missing=()
    [ -x "$PGBIN/postgres" ] || missing+=(postgresql-15)
    [ -f /usr/include/postgresql/15/server/postgres.h ] || missing+=(postgresql-server-dev-15)
    [ -f /usr/include/postgresql/libpq-fe.h ] || missing+=(libpq-dev)
    perl -MIPC::Run -e 1 2>/dev/null || missing+=(libipc-run-perl)
    command -v make >/dev/null && command -v gcc >/dev/null || missing+=(build-essential)
    command -v prove >/dev/null || missing+=(perl)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Installing the headers can upgrade the server binaries: nothing of
    # ours is running yet, so there is nothing to restart.
}

# Copy the source tree to a fresh directory the cluster user can write.
make_build_tree() {
    local src=$1 dst
    dst=$(mktemp -d /tmp/broker-build.XXXXXX)
    (cd "$src" && tar --exclude=./.git --exclude='./tmp_check*' --exclude=./results \
        --exclude=./output_iso -cf - .) | (cd "$dst" && tar -xf -)
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dst"; fi
    chmod 755 "$dst"
    echo "$dst"
}

# Build (with the given extra CFLAGS) and install the extension from a tree.
build_install() {
    local tree=$1 cflags=${2:-}
    log "building broker in $tree"
    as_pg make -C "$tree" -s clean >/dev/null
    as_pg make -C "$tree" -s ${cflags:+PG_CFLAGS="$cflags"} >/dev/null
    as_root make -C "$tree" -s install >/dev/null
    as_pg make -C "$tree" -s check-version
}

# Start a throw-away cluster with broker preloaded; sets CLUSTER_DIR, PGHOST, PGPORT.
# Extra postgresql.conf lines may be passed as arguments.
start_cluster() {
    CLUSTER_DIR=$(mktemp -d /tmp/broker-cluster.XXXXXX)
    if [ "$(id -u)" = 0 ]; then chown postgres: "$CLUSTER_DIR"; fi
    as_pg initdb -D "$CLUSTER_DIR/data" -A trust -U postgres >/dev/null
    PGPORT=$(( 20000 + RANDOM % 30000 ))
    {
        echo "shared_preload_libraries = 'broker'"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$CLUSTER_DIR'"
        echo "port = $PGPORT"
        echo "max_connections = 200"
        for line in "$@"; do echo "$line"; done
    } >> "$CLUSTER_DIR/data/postgresql.conf"
    as_pg pg_ctl -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/log" -w start >/dev/null
    export PGHOST=$CLUSTER_DIR PGPORT PGUSER=postgres PGDATABASE=postgres
}

# Stop the cluster started by start_cluster and remove it.
stop_cluster() {
    [ -n "${CLUSTER_DIR:-}" ] || return 0
    as_pg pg_ctl -D "$CLUSTER_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$CLUSTER_DIR"
    CLUSTER_DIR=
}

# Build the libpq load simulator of a tree.
build_sim() {
    local tree=$1
    as_pg make -C "$tree/test/tools" -s >/dev/null
    echo "$tree/test/tools/broker_sim"
}
