# test/lib.sh: shared by test/demo.sh, test/run_all.sh and test/bench/run.
# Installs what is missing, builds in a tree the postgres user owns, and
# runs throw-away clusters.  Source it; it defines functions only.

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
# The system's server, which private installations are made from (kept
# across scripts that call each other after one chose a private one).
SYSTEM_PGBIN=${SYSTEM_PGBIN:-$PGBIN}
export SYSTEM_PGBIN
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
    # for the tests of poolers (019), the crash loop and the fuzz generator
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    /usr/bin/python3 -c 'import psycopg' 2>/dev/null || missing+=(python3-psycopg)
    # for the PGMQ interface's real client (pgmq-js, 023)
    command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
    # for broker_proxy, the scale-out proxy (proxy/, 025): PL/Proxy.  Before
    # make_private_install, which links the system's lib and share files.
    [ -f /usr/share/postgresql/15/extension/plproxy.control ] || missing+=(postgresql-15-plproxy)
    # for the failover test (024): pg_autoctl, and the pgautofailover
    # extension of the monitor (before make_private_install links share/)
    command -v pg_autoctl >/dev/null &&
        [ -f /usr/share/postgresql/15/extension/pgautofailover.control ] ||
        missing+=(postgresql-15-auto-failover)
    # for the examples (026): the data processor in C (libpq-dev and build-essential are above)
    pkg-config --exists libmicrohttpd json-c 2>/dev/null ||
        missing+=(pkg-config libmicrohttpd-dev libjson-c-dev)
    # for the Prometheus test (027): the exporter, and promtool (in the package prometheus)
    [ -x /usr/bin/prometheus-postgres-exporter ] || missing+=(prometheus-postgres-exporter)
    command -v promtool >/dev/null || [ -x /usr/bin/promtool ] || missing+=(prometheus)
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
    (cd "$src" && tar --exclude=./.git --exclude=./.install --exclude='./tmp_check*' --exclude=./results \
        --exclude=./output_iso -cf - .) | (cd "$dst" && tar -xf -)
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dst"; fi
    chmod 755 "$dst"
    echo "$dst"
}

# A private installation of the server under $1: its binaries copied, its
# libraries and shared files linked.  PostgreSQL finds its lib and share
# directories relative to its binaries, so a server started from there loads
# the broker installed there, and `make install` with its pg_config puts the
# broker there and nowhere else: two runs on one machine never replace each
# other's files, and the system's installation is not touched.
make_private_install() {
    local root=$1 sys_config=$2 bin lib share d f
    bin=$("$sys_config" --bindir)
    lib=$("$sys_config" --pkglibdir)
    share=$("$sys_config" --sharedir)
    mkdir -p "$root$bin" "$root$lib" "$root$share/extension"
    # copied, not linked: a linked binary resolves to the system's directory
    cp -a "$bin/." "$root$bin/"
    for f in "$lib"/*; do
        case "$(basename "$f")" in broker*|bitcode) ;; *) ln -s "$f" "$root$lib/" ;; esac
    done
    if [ -d "$lib/bitcode" ]; then
        mkdir -p "$root$lib/bitcode"
        for f in "$lib/bitcode"/*; do
            case "$(basename "$f")" in broker*) ;; *) ln -s "$f" "$root$lib/bitcode/" ;; esac
        done
    fi
    for f in "$share"/*; do
        [ "$(basename "$f")" = extension ] || ln -s "$f" "$root$share/"
    done
    for f in "$share/extension"/*; do
        case "$(basename "$f")" in broker*) ;; *) ln -s "$f" "$root$share/extension/" ;; esac
    done
    # headers and libpq stay the system's
    for d in $("$sys_config" --includedir) $("$sys_config" --pkgincludedir) \
             $("$sys_config" --includedir-server) $("$sys_config" --libdir); do
        [ -e "$root$d" ] && continue
        mkdir -p "$(dirname "$root$d")"
        ln -s "$d" "$root$d"
    done
}

# Use the private installation under $1: sets PGBIN and PG_CONFIG and puts
# PGBIN first in PATH.
use_private_install() {
    local root=$1
    PGBIN="$root$("$SYSTEM_PGBIN/pg_config" --bindir)"
    PG_CONFIG="$PGBIN/pg_config"
    export PGBIN PG_CONFIG PATH="$PGBIN:$PATH"
}

# Build (with the given extra CFLAGS) and install the extension from a tree
# into a private installation inside the tree (see make_private_install).
build_install() {
    local tree=$1 cflags=${2:-}
    log "building broker in $tree"
    as_pg bash -c "$(declare -f make_private_install); make_private_install '$tree/.install' '$SYSTEM_PGBIN/pg_config'" ||
        return 1
    use_private_install "$tree/.install"
    as_pg make -C "$tree" -s PG_CONFIG="$PG_CONFIG" clean >/dev/null &&
    as_pg make -C "$tree" -s PG_CONFIG="$PG_CONFIG" ${cflags:+PG_CFLAGS="$cflags"} >/dev/null &&
    as_pg make -C "$tree" -s PG_CONFIG="$PG_CONFIG" install >/dev/null &&
    # broker_proxy (proxy/), where the tree has it (compare.sh builds older revisions)
    { [ ! -d "$tree/proxy" ] ||
      { as_pg make -C "$tree/proxy" -s PG_CONFIG="$PG_CONFIG" clean >/dev/null &&
        as_pg make -C "$tree/proxy" -s PG_CONFIG="$PG_CONFIG" ${cflags:+PG_CFLAGS="$cflags"} install >/dev/null; }; } &&
    as_pg make -C "$tree" -s PG_CONFIG="$PG_CONFIG" check-version
}

# Check that a running server loaded the broker library of the private
# installation under $1 (its postmaster maps that file) and reports the
# version of broker.control.
check_loaded_library() {
    local root=$1 datadir=$2 want lib pid
    want=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$root/../broker.control")
    lib="$root$("$SYSTEM_PGBIN/pg_config" --pkglibdir)/broker.so"
    pid=$(head -1 "$datadir/postmaster.pid")
    if ! grep -qF "$lib" "/proc/$pid/maps"; then
        echo "the server did not load $lib" >&2; return 1
    fi
    if [ "$(as_pg psql -XAtq -c "SELECT library_version FROM broker.health() LIMIT 1")" != "$want" ]; then
        echo "the server's broker library is not version $want" >&2; return 1
    fi
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
