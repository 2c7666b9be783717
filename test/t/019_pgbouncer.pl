# 019_pgbouncer.pl: broker through PgBouncer in transaction mode.
#
# The test starts its own PgBouncer (Debian's package `pgbouncer`; the test
# installs it when it runs as root or with password-less sudo, else it is
# skipped with a message) on 127.0.0.1, on a free port, in front of the
# test node's unix socket, with pool_mode = transaction and four database
# aliases of the same database:
#
#   postgres  pool_size 4   producers, the simulator
#   duo       pool_size 2   pgbench: 4 to 8 clients share 2 server
#                           connections, so consecutive transactions of one
#                           client run on different backends
#   single    pool_size 1   every client gets the same backend: what one
#                           client leaves in a session, the next one finds
#   waiters   pool_size 4   long-poll consumers (the recommended set-up:
#                           waiting consumers do not hold producers' pool)
#
# What it checks, each through the pooler:
#  1. enqueue, dequeue and delete in one transaction (also a consume-and-
#     produce step), and lease and delete in separate transactions with
#     receipts, on two different backends (RECONNECT between them);
#  2. long-poll: a waiting dequeue is woken by an enqueue of another client;
#     a wait with nothing to take returns empty after its wait;
#  3. enqueue_batch and batch dequeue/delete;
#  4. SET LOCAL broker.consumer per transaction: four pgbench processes
#     (two with -M simple, two with -M extended) on 2 server connections,
#     three naming themselves with SET LOCAL and one by application_name:
#     broker.consumers attributes every delivery and delete to the right
#     name;
#  5. no per-session state of the extension reaches the next client on the
#     same backend (pool `single`):
#     - a session-level SET broker.consumer DOES reach the next client
#       (PgBouncer runs no reset query in transaction mode and cannot track
#       the setting); with server_reset_query_always = 1 (DISCARD ALL after
#       every transaction) it does not, and the extension works across the
#       DISCARD ALL; SET LOCAL never does;
#     - leases of a rolled-back transaction (ROLLBACK, an error, a client
#       that disconnects mid-transaction) are not written by the next
#       client's commit on that backend, and are not counted;
#     - the queue-definition cache of the backend follows a drop_queue and
#       create_queue by another client (on another backend, and on the same
#       one), and so does the subscription cache;
#  6. pgbench -M simple and -M extended, producers (enqueue_batch) and
#     consumers (lease, then delete with the receipt in a later
#     transaction): no failure, every message delivered and deleted exactly
#     once, deletes done on another backend than their dequeue;
#  7. the load simulator with --pooler (producers and consumers on one pool,
#     then consumers on their own alias with --consumer-dsn): every message
#     delivered once;
#  8. a long-poll consumer whose client disconnects during its wait (with
#     client_connection_check_interval): its backend ends, takes no message,
#     and no longer counts as a waiter or keeps time;
#  9. DROP/CREATE EXTENSION by another client: a pooled backend that used
#     the old installation uses the new one.
# 10. a client's committed enqueue is there for its next dequeue on another
#     backend, while segments rotate (10,000 cycles).
use strict;
use warnings;

use lib 'test/perl';
use BrokerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

# --- PgBouncer: find it, or install it, or skip ------------------------------

sub find_pgbouncer
{
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/bin',
		'/usr/local/sbin', '/usr/local/bin')
	{
		return "$dir/pgbouncer" if $dir ne '' && -x "$dir/pgbouncer";
	}
	return undef;
}

my $install_hint = 'install it as root: apt-get update && apt-get install -y '
  . 'pgbouncer; or set PGBOUNCER to its path';
if (defined $ENV{PGBOUNCER} && !-x $ENV{PGBOUNCER})
{
	plan skip_all => "PGBOUNCER=$ENV{PGBOUNCER} is not an executable ($install_hint)";
}
my $pgbouncer = $ENV{PGBOUNCER} // find_pgbouncer();
if (!defined $pgbouncer)
{
	# The TAP tests run as the cluster's user, which can install only
	# through password-less sudo (or when it is root, which PostgreSQL
	# refuses anyway).
	my @root = $> == 0 ? () : ('sudo', '-n');
	if ($> == 0 || system('sudo -n true >/dev/null 2>&1') == 0)
	{
		note 'pgbouncer not found: installing the Debian package pgbouncer';
		system(@root, 'apt-get', 'update', '-qq');
		system(@root, 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get',
			'install', '-y', '-qq', 'pgbouncer');
		$pgbouncer = find_pgbouncer();
	}
}
plan skip_all => "pgbouncer is not installed and this user cannot install it "
  . "($install_hint)"
  unless defined $pgbouncer;
my $version_text = `'$pgbouncer' --version 2>&1` // '';
my ($pgb_version) = $version_text =~ /PgBouncer\s+(\S+)/;
plan skip_all => "$pgbouncer --version does not answer: $version_text"
  unless defined $pgb_version;
note "using $pgbouncer, PgBouncer $pgb_version";

# --- the node and the pooler --------------------------------------------------

my $node = broker_node(
	'pgb',
	conf => [
		'max_connections = 40', 'log_statement = none',
		'synchronous_commit = off'
	]);
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION broker;
SELECT broker.create_queue(q) FROM unnest(ARRAY['tx_in', 'tx_out', 'lp', 'bt',
       'sl', 'lk', 'rb', 'rb_other', 'qd', 'sub1', 'pb_simple', 'pb_extended']) q;
SELECT broker.create_queue('rcpt', lease => '10 minutes');
CREATE TABLE produced (q text NOT NULL, id bigint NOT NULL);
CREATE TABLE delivered (q text NOT NULL, id bigint NOT NULL, dc int,
                        pid int);
CREATE TABLE pending (q text NOT NULL, client int NOT NULL, id bigint NOT NULL,
                      receipt bigint, pid int);
CREATE TABLE consumed (q text NOT NULL, id bigint NOT NULL, ok boolean,
                       lease_pid int, delete_pid int);
});

my $user = $node->safe_psql('postgres', 'SELECT current_user');
my $dir = $node->basedir . '/pgbouncer';
mkdir $dir or die "mkdir $dir: $!";
my $pgb_port = PostgreSQL::Test::Cluster::get_free_port();
my $server = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres';
my $ini = "$dir/pgbouncer.ini";

# Write the configuration; extra lines go to the [pgbouncer] section.
sub write_ini
{
	my (@extra) = @_;
	open my $fh, '>', $ini or die "$ini: $!";
	print $fh <<"EOF";
[databases]
postgres = $server
duo = $server pool_size=2
single = $server pool_size=1
waiters = $server pool_size=4

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgb_port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $user
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
	print $fh "$_\n" for @extra;
	close $fh;
	return;
}

append_to_file("$dir/userlist.txt", qq{"$user" ""\n});
write_ini();
# in the foreground, so that the test owns it; -q: log only to the logfile
# (a pipe nobody reads would fill up)
my $pgb = IPC::Run::start([ $pgbouncer, '-q', $ini ],
	'<', \undef, '>&', "$dir/pgbouncer.out");
END { $pgb->kill_kill if $pgb && $pgb->pumpable; }

# Run SQL (psql's stdin: several statements, \gset ...) through the pooler
# on database alias $db (a name or a conninfo string); returns (exit code,
# stdout, stderr).
sub pq
{
	my ($db, $sql, @opts) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', @opts,
			'-h', '127.0.0.1', '-p', $pgb_port, '-d', $db
		],
		'<', \$sql, '>', \$out, '2>', \$err);
	chomp $out;
	return ($? >> 8, $out, $err);
}

# The same, failing the test on an error; returns stdout.
sub spq
{
	my ($db, $sql) = @_;
	my ($rc, $out, $err) = pq($db, $sql);
	if ($rc != 0)
	{
		fail("through pgbouncer ($db): $sql");
		diag $err;
	}
	return $out;
}

# The admin console.
sub admin { return spq('pgbouncer', $_[0]); }

my $up = 0;
for (my $t = time; time < $t + 20; usleep(100_000))
{
	last if ($up = (pq('postgres', 'SELECT 1'))[0] == 0);
}
ok($up, "pgbouncer $pgb_version listens on 127.0.0.1:$pgb_port")
  or BAIL_OUT("pgbouncer did not start:\n"
	  . join('', map { -f $_ ? slurp_file($_) : '' }
		  "$dir/pgbouncer.out", "$dir/pgbouncer.log"));

# A stand-in node for BrokerTest::Session and BrokerTest::simulator.
package PgbEndpoint
{
	sub new { my ($c, $port) = @_; return bless { port => $port }, $c; }
	sub host { return '127.0.0.1'; }
	sub port { return $_[0]{port}; }
}
my $ep = PgbEndpoint->new($pgb_port);

# --- 1. one transaction; lease and delete with receipts across backends -------

spq('postgres', q{
SELECT broker.enqueue('tx_in', jsonb_build_object('n', n)) FROM generate_series(1, 5) n;
});
spq('postgres', join('', map { q{
BEGIN;
SELECT id AS mid, payload->>'n' AS n FROM broker.dequeue('tx_in', 1) \gset
SELECT broker.enqueue('tx_out', jsonb_build_object('from', :mid::bigint, 'n', :n::int));
SELECT broker.delete('tx_in', :mid::bigint);
COMMIT;
} } 1 .. 5));
is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT total || '/' || deleted_total FROM broker.metrics('tx_in')),
       (SELECT string_agg(payload->>'n', ',' ORDER BY (payload->>'n')::int)
          FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
         WHERE d.name = 'tx_out')}),
	'0/5|1,2,3,4,5',
	'dequeue, enqueue and delete in one transaction: 5 consumed, 5 produced');

is( spq('postgres', q{
BEGIN;
SELECT broker.enqueue('tx_in', '{"self": 1}') AS mid \gset
SELECT count(*) FROM broker.dequeue('tx_in', 1) WHERE id = :mid;
SELECT broker.delete('tx_in', :mid);
COMMIT;
SELECT total FROM broker.metrics('tx_in');
}),
	"1\nt\n0",
	'enqueue, dequeue and delete of one message in one transaction');

spq('postgres',
	q{SELECT broker.enqueue('rcpt', jsonb_build_object('n', n)) FROM generate_series(1, 3) n});
my $leases = spq('single', q{
SELECT id || ' ' || receipt || ' ' || pg_backend_pid() FROM broker.dequeue('rcpt', 3)});
my @leases = map { [ split / / ] } split /\n/, $leases;
is(scalar @leases, 3, 'lease: three messages taken in one autocommit transaction');
is( $node->safe_psql('postgres', q{SELECT leased FROM broker.metrics('rcpt')}),
	'3', 'lease: the three leases are committed');
# RECONNECT closes the server connection once released: the next
# transaction of pool "single" runs on a new backend.
admin('RECONNECT single');
my $pid1 = $leases[0][2];
my $pid2;
for (my $t = time; time < $t + 10; usleep(50_000))
{
	$pid2 = spq('single', 'SELECT pg_backend_pid()');
	last if $pid2 ne $pid1;
}
isnt($pid2, $pid1, 'lease: pool "single" moved to a new backend');
is( spq('single', qq{
SELECT broker.extend_lease('rcpt', $leases[0][0], $leases[0][1], '20 minutes') IS NOT NULL;
SELECT broker.delete('rcpt', $leases[0][0], $leases[0][1]);
SELECT broker.delete('rcpt', $leases[1][0], $leases[1][1] # 1);
SELECT broker.release('rcpt', $leases[1][0], $leases[1][1]);
SELECT broker.delete('rcpt', $leases[2][0], $leases[2][1]);
SELECT pg_backend_pid() <> $pid1;
}),
	"t\nt\nf\nt\nt\nt",
	'receipts of a lease taken on one backend work on another: extend, delete, '
	  . 'release; a wrong receipt is refused');
is( $node->safe_psql('postgres',
		q{SELECT ready || '/' || leased || '/' || total FROM broker.metrics('rcpt')}),
	'1/0/1', 'lease: the released message is ready again, the others deleted');

# --- 2. long-poll ---------------------------------------------------------------

my $waiter = BrokerTest::Session->new($ep, 'waiter', 'dbname=waiters application_name=lp_waiter');
$waiter->start(
	q{SELECT payload->>'n' FROM broker.dequeue('lp', 1, wait => '20 seconds')});
ok( poll(
		$node, 'postgres',
		q{SELECT waiting FROM broker.waiters('lp')}, '1', 20),
	'long-poll: a consumer through pool "waiters" is waiting');
my $t0 = time;
spq('postgres', q{SELECT broker.enqueue('lp', '{"n": "wake"}')});
my ($got) = $waiter->finish;
my $woke = time - $t0;
is($got, 'wake', 'long-poll: the waiting consumer got the message of another client');
cmp_ok($woke, '<', 5, 'long-poll: woken by the enqueue, not by the end of its wait');
note sprintf('long-poll: woken %.1f ms after the enqueue was sent', $woke * 1000);
$t0 = time;
is( $waiter->query(
		q{SELECT count(*) FROM broker.dequeue('lp', 1, wait => '1 second')}),
	'0', 'long-poll: a wait with nothing to take returns no row');
cmp_ok(time - $t0, '>=', 0.9, 'long-poll: ... after its wait');
$waiter->quit;

# --- 3. batches -------------------------------------------------------------------

is( spq('duo', q{
SELECT count(*) FROM broker.enqueue_batch('bt',
    ARRAY(SELECT jsonb_build_object('n', n) FROM generate_series(1, 100) n));
}),
	'100', 'enqueue_batch: 100 messages in one statement');
is( spq('duo', join('', map { q{
SELECT count(*) FROM broker.delete('bt', ARRAY(SELECT id FROM broker.dequeue('bt', 30)));
} } 1 .. 5)),
	"30\n30\n30\n10\n0",
	'dequeue batches of 30 deleted with the ids[] form: 30, 30, 30, 10, 0');
is( spq('duo', q{
SELECT count(*) FROM broker.enqueue_batch('bt',
    ARRAY(SELECT jsonb_build_object('n', n) FROM generate_series(1, 50) n));
BEGIN;
CREATE TEMP TABLE batch ON COMMIT DROP AS
    SELECT id, receipt FROM broker.dequeue('bt', 40);
SELECT count(*) FILTER (WHERE broker.delete('bt', id, receipt)) FROM batch;
COMMIT;
SELECT total FROM broker.metrics('bt');
}),
	"50\n40\n10",
	'batch in a transaction with a temporary table (ON COMMIT DROP), receipts checked');

# --- 4. SET LOCAL broker.consumer per transaction, concurrent pgbench ------------

sub script { return pgbench_script($dir, $_[0]); }

# Run pgbench through the pooler in the background; returns a handle.
sub start_pgbench
{
	my ($name, $db, $script, $clients, $appname, @args) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PGAPPNAME} = $appname;
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-j', 1, @args, '-f', $script,
			'-h', '127.0.0.1', '-p', $pgb_port, $db
		],
		'<', \undef, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $name };
}

# Wait for it; checks that no transaction failed; returns the number done.
sub finish_pgbench
{
	my ($b) = @_;
	my $ok = $b->{h}->finish;
	my ($tx) = ${ $b->{out} } =~ /number of transactions actually processed: (\d+)/;
	my ($failed) = ${ $b->{out} } =~ /number of failed transactions: (\d+)/;
	ok($ok && ${ $b->{err} } !~ /error/i && defined $tx && ($failed // 0) == 0,
		"$b->{name}: pgbench exited cleanly, no failed transaction")
	  or diag ${ $b->{out} } . ${ $b->{err} };
	my ($tps) = ${ $b->{out} } =~ /tps = ([\d.]+)/;
	note "$b->{name}: " . ($tx // '?') . ' transactions, ' . ($tps // '?') . ' tps';
	return $tx // 0;
}

my $per_client = 25;
spq('postgres', q{
SELECT count(*) FROM broker.enqueue_batch('sl', array_fill('{}'::jsonb, ARRAY[250]));
});
my @sl;
for my $i (1 .. 3)
{
	my $mode = $i == 2 ? 'extended' : 'simple';
	push @sl,
	  start_pgbench("SET LOCAL slw$i (-M $mode)", 'duo', script(qq{
BEGIN;
SET LOCAL broker.consumer = 'slw$i';
SELECT count(*) FROM broker.delete('sl', ARRAY(SELECT id FROM broker.dequeue('sl', 1)));
COMMIT;
}), 2, 'pgbench_sl', '-M', $mode, '-t', $per_client);
}
# one more: no SET at all, named by its application_name
push @sl, start_pgbench("application_name sl_app (-M extended)", 'duo', script(q{
BEGIN;
SELECT id FROM broker.dequeue('sl', 1) \gset
SELECT broker.delete('sl', :id);
COMMIT;
}), 2, 'sl_app', '-M', 'extended', '-t', $per_client);
finish_pgbench($_) for @sl;
my $n = 2 * $per_client;
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(consumer || ':' || delivered || '/' || deleted, ',' ORDER BY consumer)
  FROM broker.consumers WHERE queue = 'sl'}),
	"sl_app:$n/$n,slw1:$n/$n,slw2:$n/$n,slw3:$n/$n",
	'SET LOCAL broker.consumer: 8 clients on 2 server connections, every '
	  . 'delivery and delete attributed to its own name');
is( $node->safe_psql('postgres', q{SELECT total FROM broker.metrics('sl')}),
	250 - 4 * $n, 'SET LOCAL: each transaction took and deleted one message');

# --- 5. per-session state and the next client on the same backend ---------------

spq('postgres', q{
SELECT count(*) FROM broker.enqueue_batch('lk', array_fill('{}'::jsonb, ARRAY[20]));
});

# Who the next dequeue of pool "single" is attributed to: run by a client
# named $app; returns "backend pid|consumer names of lk that grew".
sub attributed
{
	my ($app, $sql) = @_;
	my $before = $node->safe_psql('postgres',
		q{SELECT coalesce(jsonb_object_agg(consumer, delivered), '{}') FROM broker.consumers WHERE queue = 'lk'});
	my $pid = spq("dbname=single application_name=$app",
		($sql // '') . q{
SELECT count(*) FROM broker.dequeue('lk', 1) \gset
SELECT pg_backend_pid();});
	my $grew = $node->safe_psql(
		'postgres', qq{
SELECT string_agg(consumer, ',' ORDER BY consumer) FROM broker.consumers
 WHERE queue = 'lk'
   AND delivered > coalesce(('$before'::jsonb ->> consumer)::bigint, 0)});
	return ($pid, $grew);
}

my ($pid_a) = spq('dbname=single application_name=client_a',
	q{SET broker.consumer = 'leaky'; SELECT pg_backend_pid()});
my ($pid_b, $who) = attributed('client_b');
is($pid_b, $pid_a, 'pool "single": the next client gets the same backend');
is($who, 'leaky',
	'session-level SET broker.consumer of one client DOES reach the next client '
	  . '(transaction mode, no reset query: documented, use SET LOCAL)');
spq('single', 'RESET broker.consumer');
($pid_b, $who) = attributed('client_b');
is($who, 'client_b', 'after RESET the next client is named by its application_name');

spq('dbname=single application_name=client_a', q{
BEGIN;
SET LOCAL broker.consumer = 'local_a';
SELECT count(*) FROM broker.dequeue('lk', 1);
COMMIT;
});
($pid_b, $who) = attributed('client_b');
is($pid_b, $pid_a, 'pool "single": still the same backend');
is($who, 'client_b', 'SET LOCAL broker.consumer does not reach the next client');
is( $node->safe_psql('postgres',
		q{SELECT delivered FROM broker.consumers WHERE queue = 'lk' AND consumer = 'local_a'}),
	'1', 'SET LOCAL: the transaction itself was attributed to its name');

# server_reset_query_always = 1: DISCARD ALL after every transaction.
write_ini('server_reset_query_always = 1');
admin('RELOAD');
is( spq('dbname=single application_name=client_a', q{
SET broker.consumer = 'leaky2';
SHOW broker.consumer;
}),
	'', 'server_reset_query_always: a session-level SET is gone at the next transaction');
($pid_b, $who) = attributed('client_b');
is($who, 'client_b',
	'server_reset_query_always: a session-level SET does not reach the next client');
is( spq('single', q{
SELECT broker.enqueue('lk', '{"after": "discard"}') > 0;
SELECT count(*) FROM broker.delete('lk', ARRAY(SELECT id FROM broker.dequeue('lk', 2)));
SELECT count(*) FROM broker.enqueue_batch('lk', array_fill('{}'::jsonb, ARRAY[2]));
}),
	"t\n2\n2",
	'server_reset_query_always: the extension works across DISCARD ALL');
write_ini();
admin('RELOAD');

# Leases of a rolled-back transaction.
spq('postgres', q{SELECT broker.enqueue('rb', jsonb_build_object('n', n)) FROM generate_series(1, 3) n});
my ($rc, $out, $err) = pq('dbname=single application_name=rb_a', q{
BEGIN;
SET LOCAL broker.consumer = 'rbx_rolled_back';
SELECT count(*) FROM broker.dequeue('rb', 2);
ROLLBACK;
BEGIN;
SET LOCAL broker.consumer = 'rbx_failed';
SELECT count(*) FROM broker.dequeue('rb', 3);
SELECT 1 / 0;
ROLLBACK;
}, '-v', 'ON_ERROR_STOP=0');
like($err, qr/division by zero/, 'rollback: the second transaction failed');
is( spq('dbname=single application_name=rb_b', q{
BEGIN;
SELECT broker.enqueue('rb_other', '{}') > 0;
SELECT count(*) FROM broker.delete('rb_other', ARRAY(SELECT id FROM broker.dequeue('rb_other', 1)));
COMMIT;
SELECT pg_backend_pid();
}),
	"t\n1\n$pid_a",
	'rollback: the next client commits broker work on the same backend');
is( $node->safe_psql('postgres',
		q{SELECT ready || '/' || leased FROM broker.metrics('rb')}),
	'3/0',
	'rollback: no lease of the rolled-back transactions was written by that commit');
is( spq('dbname=single application_name=rb_b', q{
SELECT string_agg(payload->>'n' || ':' || delivery_count, ',' ORDER BY id)
  FROM broker.dequeue('rb', 3);
}),
	'1:1,2:1,3:1',
	'rollback: the messages come again with delivery_count 1');
is( $node->safe_psql('postgres', q{
SELECT (SELECT leased FROM broker.metrics('rb')),
       (SELECT count(*) FROM broker.consumers WHERE consumer LIKE 'rbx%')}),
	'3|0', 'rollback: rolled-back deliveries are not counted in broker.consumers; '
	  . 'the committed ones are leased');

# A client that disconnects in the middle of a transaction.
spq('postgres', q{SELECT broker.enqueue('rb', '{"n": "gone"}')});
my $gone = BrokerTest::Session->new($ep, 'gone', 'dbname=single application_name=rb_gone');
is($gone->query(q{BEGIN; SELECT payload->>'n' FROM broker.dequeue('rb', 1);}),
	'gone', 'disconnect: a client takes a message in an open transaction');
$gone->quit;
ok( poll(
		$node, 'postgres',
		q{SELECT ready || '/' || leased FROM broker.metrics('rb')}, '1/3', 10),
	'disconnect: the message is deliverable again once the client is gone');
is( spq('single', q{SELECT payload->>'n' || ':' || delivery_count FROM broker.dequeue('rb', 1)}),
	'gone:1', 'disconnect: the next client takes it with delivery_count 1');

# The queue-definition cache of a pooled backend (pool "single" has a new
# one since the disconnect).
my ($pid_c) = spq('single', q{
SELECT broker.enqueue('qd', '{"v": 1}') > 0 AS enqueued \gset
SELECT count(*) AS taken FROM broker.dequeue('qd', 1) \gset
SELECT pg_backend_pid();
});
ok($pid_c, 'cache: the backend of "single" has used queue qd');
# another client, on another backend, drops and creates qd with other settings
$node->safe_psql('postgres', q{
SELECT broker.drop_queue('qd');
SELECT broker.create_queue('qd', lease => '1 hour', max_message_size => 64);
});
($rc, $out, $err) = pq('single',
	q{SELECT broker.enqueue('qd', jsonb_build_object('pad', repeat('x', 100)))});
like($err, qr/message too large.*accepts at most 64 bytes/,
	'cache: after drop/create by another client, the pooled backend applies the '
	  . 'new max_message_size');
is( spq('dbname=single application_name=qd_c', q{
SELECT broker.enqueue('qd', '{"v": 2}') > 0;
SELECT payload->>'v', lease_until > clock_timestamp() + interval '50 minutes'
  FROM broker.dequeue('qd', 5);
SELECT pg_backend_pid();
}),
	"t\n2|t\n$pid_c",
	'cache: ... enqueues into the new queue and dequeues with its 1-hour lease');
is( $node->safe_psql('postgres', q{
SELECT total || '/' || enqueued_total || '/' || leased FROM broker.metrics('qd')}),
	'1/1/1', 'cache: the new queue has exactly the one new message');
# the same through the pooled backend itself, by another client
spq('dbname=single application_name=qd_admin', q{
SELECT broker.drop_queue('qd');
SELECT broker.create_queue('qd', lease => '2 hours');
});
is( spq('dbname=single application_name=qd_d', q{
SELECT broker.enqueue('qd', jsonb_build_object('pad', repeat('x', 100))) > 0;
SELECT lease_until > clock_timestamp() + interval '110 minutes' FROM broker.dequeue('qd', 5);
}),
	"t\nt",
	'cache: drop/create by another client on the same backend is seen too');
# subscriptions
spq('single', q{SELECT broker.publish('top.a', '{}')});
$node->safe_psql('postgres', q{SELECT broker.subscribe('sub1', 'top.#')});
is(spq('single', q{SELECT broker.publish('top.a', '{}')}),
	'1', 'cache: a subscription made by another client is seen by the pooled backend');
$node->safe_psql('postgres', q{SELECT broker.unsubscribe('sub1', 'top.#')});
is(spq('single', q{SELECT broker.publish('top.a', '{}')}),
	'0', 'cache: ... and so is its removal');

# --- 6. pgbench -M simple and -M extended: exactly once ---------------------------

my @backend_switches;
for my $mode ('simple', 'extended')
{
	my $q = "pb_$mode";
	my $prod = script(qq{
INSERT INTO produced
SELECT '$q', e.id FROM broker.enqueue_batch('$q',
    ARRAY[jsonb_build_object('c', (:client_id)::int), jsonb_build_object('c', (:client_id)::int)]) AS e(id);
});
	# lease (a transaction of its own), then delete each with its receipt
	my $cons = script(qq{
WITH d AS (SELECT id, receipt, delivery_count FROM broker.dequeue('$q', 5)),
     l AS (INSERT INTO delivered SELECT '$q', id, delivery_count, pg_backend_pid() FROM d)
INSERT INTO pending SELECT '$q', (:client_id)::int, id, receipt, pg_backend_pid() FROM d;
WITH mine AS (DELETE FROM pending WHERE q = '$q' AND client = (:client_id)::int
              RETURNING id, receipt, pid)
INSERT INTO consumed
SELECT '$q', id, broker.delete('$q', id, receipt), pid, pg_backend_pid() FROM mine;
});
	my $p = start_pgbench("-M $mode producers", 'duo', $prod, 2, 'pb_prod',
		'-M', $mode, '-t', 150);
	my $c = start_pgbench("-M $mode consumers", 'duo', $cons, 2, 'pb_cons',
		'-M', $mode, '-T', 2);
	is(finish_pgbench($p), 300, "-M $mode: 300 transactions enqueued 600 messages");
	finish_pgbench($c);
	is($node->safe_psql('postgres', "SELECT count(*) FROM pending WHERE q = '$q'"),
		'0', "-M $mode: every consumer transaction's lease was deleted by the next");
	# drain what is left, the same way, directly
	$node->safe_psql('postgres', qq{
WITH d AS (SELECT id, receipt, delivery_count FROM broker.dequeue('$q', 10000)),
     l AS (INSERT INTO delivered SELECT '$q', id, delivery_count, pg_backend_pid() FROM d)
INSERT INTO consumed SELECT '$q', id, broker.delete('$q', id, receipt), 0, 0 FROM d});
	is( $node->safe_psql(
			'postgres', qq{
SELECT (SELECT count(*) || '/' || count(DISTINCT id) FROM produced WHERE q = '$q'),
       (SELECT count(*) || '/' || count(DISTINCT id) FROM delivered WHERE q = '$q'),
       (SELECT count(*) || '/' || count(DISTINCT id) || '/' || count(*) FILTER (WHERE ok)
          FROM consumed WHERE q = '$q'),
       (SELECT count(*) FROM (SELECT id FROM produced WHERE q = '$q'
                              EXCEPT SELECT id FROM consumed WHERE q = '$q') x),
       (SELECT count(*) FROM delivered WHERE q = '$q' AND dc <> 1),
       (SELECT total FROM broker.metrics('$q'))}),
		'600/600|600/600|600/600/600|0|0|0',
		"-M $mode: 600 produced, each delivered once and deleted once by its receipt");
	my ($during, $switched) = split /\|/, $node->safe_psql(
		'postgres', qq{
SELECT count(*) FILTER (WHERE lease_pid <> 0),
       count(*) FILTER (WHERE lease_pid <> 0 AND lease_pid <> delete_pid)
  FROM consumed WHERE q = '$q'});
	note "-M $mode: $during consumed by pgbench, $switched deleted on another backend "
	  . 'than the one that leased them';
	cmp_ok($during, '>=', 100, "-M $mode: the pgbench consumers did a real share");
	push @backend_switches, $switched;
}
cmp_ok($backend_switches[0] + $backend_switches[1], '>', 0,
	'pgbench: some deletes ran on another backend than their lease (2 server '
	  . 'connections for 4 clients)');

# --- 7. the simulator with --pooler -------------------------------------------------

my ($sim_rc, $sim_out) = simulator($ep, '--pooler', '--quiet', '-q', 'sim_pool',
	'-p', 2, '-c', 2, '-t', 2, '-w', 200, '-r', 1000);
is($sim_rc, 0, 'simulator --pooler: exit status 0') or diag $sim_out;
note $sim_out;
like($sim_out, qr/duplicates\s+0 .*lost\s+0\n.*errors\s+0\n\s+result\s+OK/s,
	'simulator --pooler: no duplicate, no loss, no error');
my ($sim_n) = $sim_out =~ /consumed\s+(\d+)/;
cmp_ok($sim_n // 0, '>', 50, 'simulator --pooler: messages went through');

($sim_rc, $sim_out) = simulator(
	$ep, '--pooler', '--quiet', '-q', 'sim_pool2', '-p', 2, '-c', 3, '-b', 10,
	'-t', 2, '-w', 1000, '-r', 2000,
	'--consumer-dsn', "host=127.0.0.1 port=$pgb_port dbname=waiters");
is($sim_rc, 0,
	'simulator --pooler, batches of 10, long-poll consumers on their own pool: exit status 0')
  or diag $sim_out;
note $sim_out;
like($sim_out, qr/duplicates\s+0 .*lost\s+0\n.*errors\s+0\n\s+result\s+OK/s,
	'simulator --pooler --consumer-dsn: no duplicate, no loss, no error');

# --- 8. a long-poll consumer whose client goes away ------------------------------
#
# PgBouncer closes the server connection of a client that disconnects in
# the middle of a query; the backend notices only with
# client_connection_check_interval (else it waits on, and may take a
# message for nobody).  The backend then exits with FATAL in the middle of
# its wait.

$node->append_conf('postgresql.conf', "client_connection_check_interval = '500ms'\n");
$node->reload;
$node->safe_psql('postgres', q{SELECT broker.create_queue('lp_gone')});
spq('postgres', q{SELECT broker.enqueue('lp_gone', '{"n": "delayed"}', delay => '3 seconds')});
my $t_enq = time;
my $vanish = BrokerTest::Session->new($ep, 'vanishing waiter',
	'dbname=waiters application_name=lp_gone');
# it sleeps until the delayed message is due: the queue's timekeeper
$vanish->start(q{SELECT id FROM broker.dequeue('lp_gone', 1, wait => '30 seconds')});
ok(poll($node, 'postgres', q{SELECT waiting FROM broker.waiters('lp_gone')}, '1', 10),
	'vanishing client: its consumer waits through pool "waiters"');
$vanish->{h}->kill_kill;
ok( poll(
		$node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lp_gone'},
		'0', 10),
	'vanishing client: its backend ends (client_connection_check_interval)');
is( $node->safe_psql('postgres',
		q{SELECT total || '/' || leased FROM broker.metrics('lp_gone')}),
	'1/0', 'vanishing client: the delayed message was not taken for nobody');
my $after = BrokerTest::Session->new($ep, 'next waiter', 'dbname=waiters application_name=lp_next');
my ($next_got) = $after->query(
	q{SELECT payload->>'n' FROM broker.dequeue('lp_gone', 1, wait => '4 seconds')});
my $took = time - $t_enq;
$after->quit;
is($next_got, 'delayed', 'vanishing client: the next waiter gets the delayed message');
note sprintf('vanishing client: the next waiter got the message %.1f s after the '
	  . 'enqueue (due after 3 s)', $took);
# A backend that exits with FATAL while it waits (client gone,
# pg_terminate_backend) no longer counts as a waiter nor keeps time (it did,
# until the cleanup also ran at process exit).
is($node->safe_psql('postgres', q{SELECT waiting FROM broker.waiters('lp_gone')}),
	'0', 'vanishing client: broker.waiters no longer counts it');

# --- 9. DROP and CREATE EXTENSION by another client ----------------------------------

my $pid_e = spq('single', q{
SELECT broker.enqueue('tx_out', '{}') > 0 AS enqueued \gset
SELECT pg_backend_pid();
});
$node->safe_psql('postgres', q{
DROP EXTENSION broker;
CREATE EXTENSION broker;
SELECT broker.create_queue('tx_out', lease => '3 hours');
});
is( spq('single', q{
SELECT broker.enqueue('tx_out', '{"new": 1}') > 0;
SELECT payload->>'new', lease_until > clock_timestamp() + interval '170 minutes'
  FROM broker.dequeue('tx_out', 5);
SELECT pg_backend_pid();
}),
	"t\n1|t\n$pid_e",
	'DROP/CREATE EXTENSION by another client: the pooled backend uses the new installation');

# --- 10. a client's committed enqueue is there for its next dequeue -------------------
# Seen through a pooler before the segment fixes: about 3 in 5,000 dequeues
# returned nothing although the client's own enqueue had committed just
# before and nothing else held the message.  Here two clients, each on a
# queue of its own, enqueue (committed) and then dequeue and delete in the
# next transaction, 5,000 times each, while a third client runs segment
# maintenance with broker.segment_size = 200, so that segments rotate and
# their stragglers move under the cycles; three clients on two server
# connections, so the two transactions of a cycle often run on different
# backends.  Every dequeue must find the message.
$node->append_conf('postgresql.conf', 'broker.segment_size = 200');
$node->reload;
my $first_before = $node->safe_psql('postgres', q{
SELECT broker.create_queue('cyc0'); SELECT broker.create_queue('cyc1');
CREATE TABLE cyc_miss (client int, id bigint);
SELECT max(first_id) FROM broker.maintain_segments()});
my $cyc = start_pgbench('own enqueue, then dequeue (2 x 5,000 cycles)', 'duo', script(q{
SELECT broker.enqueue('cyc' || :client_id, '{}') AS id \gset
SELECT count(*) AS got FROM broker.dequeue('cyc' || :client_id, 1) d
 WHERE broker.delete('cyc' || :client_id, d.id, d.receipt) \gset
INSERT INTO cyc_miss SELECT :client_id, :id WHERE :got = 0;
}), 2, 'pb_cyc', '-t', 5000);
my $mnt = start_pgbench('segment maintenance beside them', 'duo', script(q{
BEGIN;
SET LOCAL broker.segment_size = 200;
SELECT count(*) FROM broker.maintain_segments();
COMMIT;
}), 1, 'pb_maint', '-T', 8, '-R', 20);
is(finish_pgbench($cyc), 10000, '10,000 cycles done');
finish_pgbench($mnt);
is( $node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM cyc_miss) || ' missed, ' ||
       (SELECT sum(total) FROM broker.metrics() WHERE queue IN ('cyc0', 'cyc1')) || ' left'}),
	'0 missed, 0 left',
	'every dequeue found the message its client had just enqueued (segments rotating)');
cmp_ok($node->safe_psql('postgres', q{SELECT max(first_id) FROM broker.maintain_segments()}),
	'>', $first_before, 'segments rotated during the cycles');

# --- the end ---------------------------------------------------------------------------

my $pools = admin('SHOW POOLS');
note "pgbouncer pools at the end:\n$pools";
$pgb->signal('INT');    # safe shutdown: when the clients are gone
$pgb->finish;
$pgb = undef;
my $log = slurp_file("$dir/pgbouncer.log");
unlike($log, qr/\b(?:ERROR|FATAL|WARNING)\b(?!.*(?:division by zero|message too large|client_idle_timeout))/,
	'pgbouncer logged no error but the expected ones')
  or diag join("\n", grep { /ERROR|FATAL|WARNING/ } split /\n/, $log);
$node->stop;

done_testing();
