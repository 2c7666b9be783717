# 017_routing_worker.pl: what the routing features leave to the worker
# and to a restart.
#
# - Dedup keys are forgotten after the window by the background worker:
#   the key tables are emptied with TRUNCATE, so their storage stays
#   bounded while another session holds an old snapshot open.
# - Priorities in use are found again after a restart (the shared state
#   that says which priorities a queue uses starts empty).
# - A group whose head's lease runs out while the server restarts keeps
#   its order.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;

my $node = broker_node('routing',
	conf => [ "broker.reaper_interval = '100ms'", 'log_statement = none' ]);
$node->safe_psql('postgres', 'CREATE EXTENSION broker');

# --- dedup keys: forgotten after the window, storage bounded ------------------
$node->safe_psql('postgres',
	q{SELECT broker.create_queue('dk', dedup_window => '1 second')});

# An old snapshot held open for the whole case (it reads another table).
my $holder = BrokerTest::Session->new($node, 'holder');
$holder->safe('CREATE TABLE other (x int); INSERT INTO other VALUES (1)');
$holder->safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM other');

my $keys = sub {
	$node->safe_psql('postgres',
		'SELECT (SELECT count(*) FROM broker.dedup_0) + (SELECT count(*) FROM broker.dedup_1)');
};
my $size = sub {
	$node->safe_psql('postgres',
		q{SELECT pg_relation_size('broker.dedup_0') + pg_relation_size('broker.dedup_1')});
};

my $first = $node->safe_psql('postgres',
	q{SELECT broker.enqueue('dk', '{}', dedup_key => 'k')});
is( $node->safe_psql('postgres',
		q{SELECT broker.enqueue('dk', '{}', dedup_key => 'k')}),
	$first, 'within the window: the same id');

# 6 rounds of 5000 keys, 0.5 s apart: without truncation the tables would
# hold all 30000 keys (the held snapshot keeps deleted rows from vacuum).
my $max_keys = 0;
for my $round (1 .. 6)
{
	$node->safe_psql('postgres',
		qq{SELECT count(*) FROM broker.enqueue_batch('dk',
		     array_fill('{}'::jsonb, ARRAY[5000]),
		     dedup_keys => ARRAY(SELECT 'r$round-' || g FROM generate_series(1, 5000) g))});
	my $k = $keys->();
	$max_keys = $k if $k > $max_keys;
	$node->safe_psql('postgres', 'SELECT pg_sleep(0.5)');
}
ok($max_keys < 30000, "key tables emptied while keys were added (at most $max_keys keys held)");
ok(poll($node, 'postgres',
		'SELECT (SELECT count(*) FROM broker.dedup_0) + (SELECT count(*) FROM broker.dedup_1)',
		'0', 30),
	'every key forgotten after the window, snapshot still held');
ok($size->() <= 2 * 8192, 'key tables truncated (their storage given back)');
isnt( $node->safe_psql('postgres',
		q{SELECT broker.enqueue('dk', '{}', dedup_key => 'k')}),
	$first, 'after the window the key is accepted again');
$holder->safe('COMMIT');
$holder->quit;

# --- priorities after a restart -------------------------------------------
$node->safe_psql('postgres', q{
	SELECT broker.create_queue('pr', lease => '1 hour');
	SELECT count(*) FROM broker.enqueue_batch('pr', ARRAY['{"n": "low1"}', '{"n": "low2"}']::jsonb[]);
	SELECT count(*) FROM broker.enqueue_batch('pr', ARRAY['{"n": "high1"}', '{"n": "high2"}']::jsonb[], priority => 6);
	SELECT broker.enqueue('pr', '{"n": "mid"}', priority => 3);
});
$node->restart;
is( $node->safe_psql('postgres',
		q{SELECT string_agg(payload->>'n', ' ') FROM broker.dequeue('pr', 10)}),
	'high1 high2 mid low1 low2',
	'after a restart the priorities in use are found: highest first');

# --- a group across a restart ---------------------------------------------
$node->safe_psql('postgres', q{
	SELECT broker.create_queue('gr', lease => '1 second');
	SELECT count(*) FROM broker.enqueue_batch('gr',
	    ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[], group_keys => ARRAY['g', 'g', 'g']);
});
is( $node->safe_psql('postgres',
		q{SELECT string_agg(payload->>'n', ' ') FROM broker.dequeue('gr', 10)}),
	'1', 'one message of the group delivered');
$node->restart;
ok(poll($node, 'postgres',
		q{SELECT string_agg(payload->>'n', ' ') FROM broker.dequeue('gr', 10, '1 hour')},
		'1', 30),
	'after a restart and the lease running out, the same head again');
is( $node->safe_psql('postgres',
		q{SELECT broker.delete('gr', id) FROM broker.messages WHERE payload->>'n' = '1'}),
	't', 'head deleted');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(payload->>'n', ' ') FROM broker.dequeue('gr', 10, '1 hour')}),
	'2', 'then the next in order');

$node->stop;
done_testing();
