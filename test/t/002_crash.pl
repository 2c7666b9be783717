# 002_crash.pl: kill -9 of the postmaster under load loses no committed
# message and brings back no deleted one.
#
# Producers (pgbench) enqueue and, in the same transaction, record the new
# id and the payload's key in the side table `committed`.  Consumers
# (pgbench) dequeue, delete with the receipt and record the id in
# `consumed`, all in one transaction.  So `committed` is exactly the set of
# committed enqueues and `consumed` exactly the set of committed deletes.
#
# After a few seconds of load the postmaster and all its children are
# killed with SIGKILL (fsync and synchronous_commit on), the node is
# restarted (crash recovery), and:
#   - every committed id is either still in broker.messages or consumed;
#   - no consumed id is back in broker.messages;
#   - no id was consumed twice;
#   - nothing is in the queue that was not committed, payloads intact.
# Then the queue is drained and committed = consumed exactly.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd ();
use IPC::Run;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'broker'
fsync = on
synchronous_commit = on
full_page_writes = on
log_statement = none
max_connections = 40
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION broker;
SELECT broker.create_queue('q');
CREATE TABLE committed (id bigint PRIMARY KEY, k bigint NOT NULL);
-- no unique constraint: a duplicate delivery must be recorded, not refused
CREATE TABLE consumed (id bigint NOT NULL, k bigint, delivery_count int,
                       ok boolean);
});

# --- load -------------------------------------------------------------------
my $producer = $node->basedir . '/producer.sql';
my $consumer = $node->basedir . '/consumer.sql';
append_to_file(
	$producer, q{
\set k random(1, 1000000000000)
INSERT INTO committed (id, k)
SELECT broker.enqueue('q', jsonb_build_object('k', :k)), :k;
});
append_to_file(
	$consumer, q{
WITH d AS (SELECT * FROM broker.dequeue('q', 1)),
     x AS (SELECT d.id, (d.payload->>'k')::bigint AS k, d.delivery_count,
                  broker.delete('q', d.id, d.receipt) AS ok
             FROM d)
INSERT INTO consumed (id, k, delivery_count, ok)
SELECT id, k, delivery_count, ok FROM x;
});

sub start_pgbench
{
	my ($script, $clients, $name) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-j', $clients,
			'-T', '120', '-f', $script,
			'-h', $node->host, '-p', $node->port, 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $name };
}

# Consumers are fewer than producers, so the queue holds messages at the
# crash and both outcomes (still queued, consumed) occur.
my @benches = (
	start_pgbench($producer, 4, 'producers'),
	start_pgbench($consumer, 2, 'consumers'));

# At least 4 s of load, and enough traffic to make the checks meaningful.
# A checkpoint in the middle of the load, so that recovery starts from a
# checkpoint taken while transactions were in flight.
my $t0 = time;
my $checkpointed = 0;
for (;;)
{
	if (!$checkpointed && time - $t0 >= 2)
	{
		$node->safe_psql('postgres', 'CHECKPOINT');
		$checkpointed = 1;
	}
	my $c = $node->safe_psql('postgres',
		q{SELECT (SELECT count(*) FROM committed) >= 300
		     AND (SELECT count(*) FROM consumed) >= 100});
	last if $c eq 't' && time - $t0 >= 4;
	die 'not enough load after 60 s' if time - $t0 > 60;
	usleep(200_000);
}

# --- crash ------------------------------------------------------------------

# The processes of this node: every process whose working directory is its
# data directory (the postmaster and all its children, and nothing else).
sub node_pids
{
	my $datadir = Cwd::abs_path($node->data_dir);
	my @pids;
	opendir(my $dh, '/proc') or die "cannot read /proc: $!";
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		my $cwd = readlink("/proc/$pid/cwd");
		push @pids, $pid if defined $cwd && $cwd eq $datadir;
	}
	closedir $dh;
	return @pids;
}

my $pm_pid = $node->{_pid};
my @before = node_pids();
ok((grep { $_ == $pm_pid } @before) && @before > 6,
	'found the postmaster and its children (' . scalar(@before) . ' processes)');

# SIGKILL the postmaster, then at once every remaining process of the node,
# so that no orphaned backend goes on committing or keeps the old shared
# memory attached.
$node->kill9;
my $deadline = time + 30;
while (my @left = node_pids())
{
	kill 'KILL', @left;
	die 'processes of the killed node survive: ' . join(' ', @left)
	  if time > $deadline;
	usleep(50_000);
}
# Wait until they are reaped too: a zombie postmaster would still own the
# lock file.
while (my @left = grep { kill 0, $_ } @before)
{
	die 'processes of the killed node not reaped: ' . join(' ', @left)
	  if time > $deadline;
	usleep(50_000);
}
pass('postmaster and all its children killed with SIGKILL');

# The clients lose their connections and exit.
for my $b (@benches)
{
	$b->{h}->finish;
	note "$b->{name}: " . ${ $b->{err} };
}

$node->start;
ok( $node->log_contains(
		'database system was interrupted|was not properly shut down'),
	'the restart went through crash recovery');

my $ncommitted = $node->safe_psql('postgres', 'SELECT count(*) FROM committed');
my $nconsumed = $node->safe_psql('postgres', 'SELECT count(*) FROM consumed');
my $nqueued = $node->safe_psql('postgres',
	q{SELECT total FROM broker.metrics('q')});
note "after the crash: $ncommitted committed, $nconsumed consumed, "
  . "$nqueued in the queue";
ok($ncommitted >= 300 && $nconsumed >= 100 && $nqueued > 0,
	'the crash hit a busy queue (messages both consumed and waiting)');

# --- checks after recovery --------------------------------------------------

sub check_invariants
{
	my ($when) = @_;

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM committed c
 WHERE NOT EXISTS (SELECT 1 FROM broker.messages m WHERE m.id = c.id)
   AND NOT EXISTS (SELECT 1 FROM consumed x WHERE x.id = c.id)}),
		'0',
		"$when: every committed message is queued or consumed (none lost)");

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM consumed x
 WHERE EXISTS (SELECT 1 FROM broker.messages m WHERE m.id = x.id)}),
		'0',
		"$when: no consumed (deleted) message is back in the queue");

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) - count(DISTINCT id) FROM consumed}),
		'0',
		"$when: no message consumed twice");

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM consumed x
 WHERE NOT x.ok OR x.delivery_count <> 1
    OR NOT EXISTS (SELECT 1 FROM committed c WHERE c.id = x.id AND c.k = x.k)}),
		'0',
		"$when: every consumed message was committed, delivered once, deleted by its receipt, payload intact"
	);

	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM broker.messages m
 WHERE NOT EXISTS (SELECT 1 FROM committed c
                    WHERE c.id = m.id AND c.k = (m.payload->>'k')::bigint)}),
		'0',
		"$when: every queued message was committed, payload intact");
}

check_invariants('after the crash');

# A consumer's dequeue and delete commit together, so no lease survives
# the crash: the waiting messages were never delivered.
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM broker.messages
 WHERE delivery_count <> 0 OR receipt IS NOT NULL}),
	'0',
	'after the crash: no queued message carries a delivery');

# Counters count since server start.
is( $node->safe_psql(
		'postgres',
		q{SELECT enqueued_total, deleted_total FROM broker.metrics('q')}),
	'0|0',
	'after the crash: counters restart from zero');

# The broker still works after recovery: new messages get new ids.
my $maxid = $node->safe_psql('postgres',
	q{SELECT greatest((SELECT max(id) FROM committed), 0)});
my $newid = $node->safe_psql(
	'postgres', q{
INSERT INTO committed (id, k)
SELECT broker.enqueue('q', '{"k": 0}'), 0 RETURNING id});
cmp_ok($newid, '>', $maxid, 'after the crash: a new enqueue gets a new, higher id');

# --- drain ------------------------------------------------------------------
my $drain = q{
WITH d AS (SELECT * FROM broker.dequeue('q', 500)),
     x AS (SELECT d.id, (d.payload->>'k')::bigint AS k, d.delivery_count,
                  broker.delete('q', d.id, d.receipt) AS ok
             FROM d),
     i AS (INSERT INTO consumed (id, k, delivery_count, ok)
           SELECT id, k, delivery_count, ok FROM x RETURNING 1)
SELECT count(*) FROM i};
my $drained = 0;
for (my $i = 0; $i < 10_000; $i++)
{
	my $n = $node->safe_psql('postgres', $drain);
	last if $n == 0;
	$drained += $n;
}
note "drained $drained messages";

check_invariants('after draining');

is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM committed), (SELECT count(*) FROM consumed),
       (SELECT count(*) FROM (SELECT id FROM committed
                              EXCEPT SELECT id FROM consumed) a),
       (SELECT count(*) FROM (SELECT id FROM consumed
                              EXCEPT SELECT id FROM committed) b)}),
	join('|', $ncommitted + 1, $ncommitted + 1, 0, 0),
	'after draining: committed = consumed exactly');

is( $node->safe_psql(
		'postgres',
		q{SELECT total, enqueued_total, deleted_total FROM broker.metrics('q')}),
	join('|', 0, 1, $drained),
	'after draining: queue empty, counters match the work since restart');
is($node->safe_psql('postgres', 'SELECT count(*) FROM broker.messages'),
	'0', 'after draining: broker.messages is empty');

$node->stop;

done_testing();
