# examples/testlib.sh: what the examples' test.sh scripts share.  Source it.
#
# A test.sh runs against a server with broker preloaded, reached through the
# usual libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE) as a superuser
# that may create roles, queues and tables in that database.  It prints one
# line per check, "ok - ..." or "not ok - ...", which test/t/026_examples.pl
# turns into TAP assertions; it exits 0 when every check passed, 1 when one
# failed, and 77 after "SKIP: <reason>" when something it needs is missing
# and cannot be installed.

FAILED=0
ok()    { echo "ok - $*"; }
notok() { echo "not ok - $*"; FAILED=1; }
# check DESCRIPTION COMMAND...: ok when the command succeeds
check() { local desc=$1; shift; if "$@"; then ok "$desc"; else notok "$desc"; fi; }
skip()  { echo "SKIP: $*"; exit 77; }
finish() { exit "$FAILED"; }

# May this user install Debian packages (root, or password-less sudo)?
can_install() { [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; }
# apt_install PACKAGE...: install Debian packages if we may; false if we may not.
apt_install() {
    can_install || return 1
    local sudo=; [ "$(id -u)" = 0 ] || sudo='sudo -n'
    echo "# installing $* with apt-get" >&2
    $sudo apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null 2>&1
}

# A scratch directory removed at exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/broker-example.XXXXXX")
cleanup_work() { rm -rf "$WORK"; }
trap cleanup_work EXIT

# The directory of the example being tested (the caller's directory).
HERE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)

# Run SQL as the superuser of the test (stops on the first error).
sql() { PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# The example roles are cluster-wide; created once, reused by every database.
# grants.sql of each example grants them what they need in this database.
create_role() {
    sql -c "DO \$\$BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$1') THEN
                CREATE ROLE $1 LOGIN;
              END IF;
            END\$\$"
}
