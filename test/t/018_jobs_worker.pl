# 018_jobs_worker.pl: job records are removed by the background worker
# after the retention, with no client call, and survive kill -9 of the
# postmaster.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;

my $node = broker_node('jobs',
	conf => [ "broker.reaper_interval = '100ms'", 'log_statement = none' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION broker');

# --- removed by the worker after the retention ------------------------------
# (The archive is read in the transaction that completed the messages, so
# at the same now(): on a loaded machine a later statement could come after
# the second of retention.)
my $archived = $node->safe_psql('postgres', q{
	SELECT broker.create_queue('jr', retention => '1 second');
	SELECT count(*) FROM broker.enqueue_batch('jr', array_fill('{}'::jsonb, ARRAY[500]));
	BEGIN;
	SELECT count(broker.complete('jr', m.id, m.receipt, '{"ok": 1}')) FROM broker.dequeue('jr', 500) m;
	SELECT 'archived ' || count(*) FROM broker.archive('jr', 0, 10000);
	SELECT 'records ' || count(*) FROM (SELECT queue_id FROM broker.records_0
	                                    UNION ALL SELECT queue_id FROM broker.records_1) r
	 WHERE r.queue_id = (SELECT queue_id FROM broker.queue_defs WHERE name = 'jr');
	COMMIT;
});
like($archived, qr/^records 500$/m, 'one record per completed message');
like($archived, qr/^archived 500$/m, 'all in the archive');

# An old snapshot held open meanwhile: TRUNCATE does not care.
my $holder = BrokerTest::Session->new($node, 'holder');
$holder->safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class');

ok(poll($node, 'postgres',
		q{SELECT count(*) FROM broker.archive('jr', 0, 10000)}, '0', 30),
	'records age out of lookups after the retention');
ok(poll($node, 'postgres',
		q{SELECT (SELECT count(*) FROM broker.records_0) + (SELECT count(*) FROM broker.records_1)},
		'0', 60),
	'the worker removed them, no client call, snapshot still held');
ok( $node->safe_psql('postgres',
		q{SELECT pg_relation_size('broker.records_0') + pg_relation_size('broker.records_1')})
	  <= 2 * 8192,
	'their storage given back (TRUNCATE)');
$holder->safe('COMMIT');
$holder->quit;
$node->safe_psql('postgres', q{SELECT broker.drop_queue('jr')});

# --- records survive kill -9 of the postmaster --------------------------------
$node->safe_psql('postgres', q{
	SELECT broker.create_queue('jk', retention => '1 day', max_deliveries => 2);
	CREATE TABLE submitted AS
	  SELECT broker.enqueue('jk', jsonb_build_object('n', g)) AS id, g FROM generate_series(1, 40) g;
	-- 1..10 done, 11..20 failed, 21..30 deleted, 31..40 still queued
	SELECT count(broker.complete('jk', s.id, NULL, jsonb_build_object('r', s.g))) FROM submitted s WHERE g <= 10;
	SELECT count(broker.fail('jk', s.id, NULL, '{"e": 1}')) FROM submitted s WHERE g BETWEEN 11 AND 20;
	SELECT count(broker.delete('jk', s.id)) FROM submitted s WHERE g BETWEEN 21 AND 30;
});
my $before = $node->safe_psql('postgres', q{
	SELECT string_agg(s.state || ':' || count, ' ' ORDER BY s.state)
	  FROM (SELECT j.state, count(*) FROM submitted s, broker.status('jk', s.id) j GROUP BY j.state) s});
is($before, 'deleted:10 done:10 failed:10 ready:10', 'states before the crash');

kill9_node($node);
$node->start;
ok($node->log_contains('database system was interrupted|was not properly shut down'),
	'the restart went through crash recovery');

is( $node->safe_psql('postgres', q{
	SELECT string_agg(s.state || ':' || count, ' ' ORDER BY s.state)
	  FROM (SELECT j.state, count(*) FROM submitted s, broker.status('jk', s.id) j GROUP BY j.state) s}),
	$before, 'every record and every message is there after kill -9');
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM submitted s, broker.status('jk', s.id) j
	 WHERE j.state = 'done' AND j.result = jsonb_build_object('r', s.g)}),
	'10', 'results kept');
is( $node->safe_psql('postgres', q{SELECT count(*) FROM broker.archive('jk', 0, 100)}),
	'30', 'archive after the restart');

$node->stop;
done_testing();
