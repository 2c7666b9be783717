# 003_many_clients.pl: 8 producers and 8 consumers; every message is
# delivered and deleted exactly once.
#
# Two concurrent pgbench processes, 8 clients each: the producers enqueue
# exactly N messages (recording each id in `produced` in the enqueuing
# transaction), the consumers run for a while; what they leave is drained
# afterwards.  Then every produced id was consumed exactly once, the queue
# is empty and the counters agree.
#
# Phase 1: a consumer takes one message and deletes it with its receipt in
# one transaction that also records the id.
# Phase 2: the lease and the delete are separate transactions (the dequeue
# commits first, recording the delivery; the delete with the receipt comes
# in a later transaction, recording the id), with a long lease, so no
# message may be delivered twice.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use lib 'test/perl';
use BrokerTest;

my $producers = 8;
my $consumers = 8;
my $per_producer = 2500;                       # phase 1: 20,000 messages
my $per_producer2 = 1250;                      # phase 2: 10,000 messages
my $consume_secs = 6;

my $node = PostgreSQL::Test::Cluster->new('many');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'broker'
log_statement = none
synchronous_commit = off
max_connections = 60
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION broker;
SELECT broker.create_queue('q1');
SELECT broker.create_queue('q2', lease => '10 minutes');
CREATE TABLE produced (q text NOT NULL, id bigint NOT NULL, client int);
-- no unique constraints: duplicates must be recorded, not refused
CREATE TABLE delivered (q text NOT NULL, id bigint NOT NULL,
                        delivery_count int);
CREATE TABLE consumed (q text NOT NULL, id bigint NOT NULL,
                       delivery_count int, ok boolean);
});

sub script { return pgbench_script($node->basedir, $_[0]); }

# Run pgbench in the background; returns a handle for finish_pgbench.
sub start_pgbench
{
	my ($name, $script, $clients, @limit) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-j', $clients, @limit,
			'-f', $script, '-h', $node->host, '-p', $node->port, 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $name };
}

sub finish_pgbench
{
	my ($b) = @_;
	ok($b->{h}->finish, "$b->{name}: pgbench exited cleanly")
	  or diag ${ $b->{err} };
	my ($tx) = ${ $b->{out} } =~ /number of transactions actually processed: (\d+)/;
	my ($tps) = ${ $b->{out} } =~ /tps = ([\d.]+)/;
	note "$b->{name}: " . ($tx // '?') . ' transactions, ' . ($tps // '?') . ' tps';
	return $tx;
}

# Drain a queue with big batches, deleting by receipt; returns the count.
sub drain
{
	my ($q) = @_;
	my $total = 0;
	for (my $i = 0; $i < 10_000; $i++)
	{
		my $n = $node->safe_psql(
			'postgres', qq{
WITH d AS (SELECT * FROM broker.dequeue('$q', 500)),
     l AS (INSERT INTO delivered SELECT '$q', id, delivery_count FROM d),
     x AS (SELECT d.id, d.delivery_count,
                  broker.delete('$q', d.id, d.receipt) AS ok FROM d),
     i AS (INSERT INTO consumed SELECT '$q', id, delivery_count, ok FROM x
           RETURNING 1)
SELECT count(*) FROM i});
		last if $n == 0;
		$total += $n;
	}
	return $total;
}

sub check_exactly_once
{
	my ($q, $n, $what) = @_;

	is($node->safe_psql('postgres',
			"SELECT count(*), count(DISTINCT id) FROM produced WHERE q = '$q'"),
		"$n|$n", "$what: $n messages enqueued, all ids distinct");

	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*), count(DISTINCT id) FROM consumed WHERE q = '$q'}),
		"$n|$n",
		"$what: count(consumed) = count(distinct consumed) = $n");

	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*), count(DISTINCT id) FROM delivered WHERE q = '$q'}),
		"$n|$n",
		"$what: every message delivered exactly once");

	is( $node->safe_psql(
			'postgres', qq{
SELECT (SELECT count(*) FROM (SELECT id FROM produced WHERE q = '$q'
                              EXCEPT SELECT id FROM consumed WHERE q = '$q') a),
       (SELECT count(*) FROM (SELECT id FROM consumed WHERE q = '$q'
                              EXCEPT SELECT id FROM produced WHERE q = '$q') b)}),
		'0|0',
		"$what: the consumed ids are exactly the produced ids");

	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM consumed
 WHERE q = '$q' AND (NOT ok OR delivery_count <> 1)}),
		'0',
		"$what: every delete by receipt succeeded on the first delivery");

	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
 WHERE d.name = '$q'}),
		'0',
		"$what: the queue is empty");

	is( $node->safe_psql(
			'postgres', qq{
SELECT ready, leased, delayed, total, enqueued_total, deleted_total,
       expired_total, dead_lettered_total
  FROM broker.metrics('$q')}),
		"0|0|0|0|$n|$n|0|0",
		"$what: metrics total 0, enqueued_total = deleted_total = $n");
}

# --- phase 1: lease + delete in one transaction -----------------------------
my $prod1 = script(q{
INSERT INTO produced (q, id, client)
SELECT 'q1', broker.enqueue('q1', jsonb_build_object('c', :client_id)), :client_id;
});
my $cons1 = script(q{
BEGIN;
SELECT coalesce(max(id), 0) AS mid, coalesce(max(receipt), 0) AS rcpt,
       coalesce(max(delivery_count), 0) AS dc
  FROM broker.dequeue('q1', 1) \gset
\if :mid > 0
INSERT INTO delivered VALUES ('q1', :mid, :dc);
INSERT INTO consumed VALUES ('q1', :mid, :dc, broker.delete('q1', :mid, :rcpt));
\endif
COMMIT;
});

my $n1 = $producers * $per_producer;
my $p = start_pgbench('phase 1 producers', $prod1, $producers, '-t', $per_producer);
my $c = start_pgbench('phase 1 consumers', $cons1, $consumers, '-T', $consume_secs);
is(finish_pgbench($p), $n1, "phase 1: $producers producers enqueued $n1 messages");
finish_pgbench($c);
my $left = drain('q1');
my $during = $n1 - $left;
note "phase 1: $during consumed by the consumers, $left drained afterwards";
cmp_ok($during, '>=', 1000,
	'phase 1: the concurrent consumers did a real share of the work');
check_exactly_once('q1', $n1, 'phase 1');

# --- phase 2: lease and delete in separate transactions ---------------------
my $prod2 = script(q{
INSERT INTO produced (q, id, client)
SELECT 'q2', broker.enqueue('q2', jsonb_build_object('c', :client_id)), :client_id;
});
my $cons2 = script(q{
WITH d AS (SELECT * FROM broker.dequeue('q2', 1)),
     l AS (INSERT INTO delivered SELECT 'q2', id, delivery_count FROM d)
SELECT coalesce(max(id), 0) AS mid, coalesce(max(receipt), 0) AS rcpt,
       coalesce(max(delivery_count), 0) AS dc
  FROM d \gset
\if :mid > 0
INSERT INTO consumed VALUES ('q2', :mid, :dc, broker.delete('q2', :mid, :rcpt));
\endif
});

my $n2 = $producers * $per_producer2;
$p = start_pgbench('phase 2 producers', $prod2, $producers, '-t', $per_producer2);
$c = start_pgbench('phase 2 consumers', $cons2, $consumers, '-T', $consume_secs);
is(finish_pgbench($p), $n2, "phase 2: $producers producers enqueued $n2 messages");
finish_pgbench($c);

# Nothing is left leased: every consumer deleted what it took.
is( $node->safe_psql(
		'postgres', q{SELECT leased FROM broker.metrics('q2')}),
	'0',
	'phase 2: no message left under a lease');
$left = drain('q2');
$during = $n2 - $left;
note "phase 2: $during consumed by the consumers, $left drained afterwards";
cmp_ok($during, '>=', 1000,
	'phase 2: the concurrent consumers did a real share of the work');
check_exactly_once('q2', $n2, 'phase 2');

# The two queues did not disturb each other.
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(queue || ':' || enqueued_total, ',' ORDER BY queue)
		    FROM broker.metrics()}),
	"q1:$n1,q2:$n2",
	'per-queue counters are separate');

$node->stop;

done_testing();
