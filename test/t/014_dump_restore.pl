# 014_dump_restore.pl: pg_dump and pg_restore round trips keep every queue,
# message, lease, delay, header and dead-letter link, in plain, custom and
# single-transaction modes, and the restored broker works.
#
# broker.segments used to be filled by the install script and dumped too,
# so a restore into the new installation hit a duplicate key: a
# transactional restore stopped, a default one exited 1.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'broker'
log_statement = none
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE src');

# Queues with every setting; messages in several segments: ready, leased,
# delayed, released, with headers and ttl, and one dead-lettered.
$node->safe_psql('src', q{
SET broker.segment_size = 100;
CREATE EXTENSION broker;
SELECT broker.create_queue('dead');
SELECT broker.create_queue('orders', lease => '1 hour', max_deliveries => 1,
                           dead_letter_queue => 'dead');
SELECT broker.create_queue('other', max_message_size => 2000, default_ttl => '1 day');
SELECT broker.create_queue('doomed', max_deliveries => 1, dead_letter_queue => 'dead');
SELECT broker.enqueue('doomed', '{"to": "dead"}', headers => '{"trace": "x"}');
SELECT broker.enqueue('orders', jsonb_build_object('n', g), headers => '{"h": 1}')
  FROM generate_series(1, 50) g;
SELECT count(*) FROM broker.delete('orders', ARRAY(SELECT id FROM broker.dequeue('orders', 40)));
SELECT count(*) FROM broker.enqueue_batch('other',
    (SELECT array_agg(jsonb_build_object('o', g)) FROM generate_series(1, 150) g));
SELECT count(*) FROM broker.maintain_segments();
SELECT count(*) FROM broker.maintain_segments();
SELECT broker.enqueue('orders', '{"delayed": true}', delay => '1 hour', ttl => '2 hours');
SELECT broker.enqueue('other', jsonb_build_object('o', g)) FROM generate_series(151, 170) g;
});
# a leased message (lease written at commit), one that goes to the
# dead-letter queue on its next delivery, a released one
$node->safe_psql('src', q{SELECT id FROM broker.dequeue('orders', 3)});
$node->safe_psql('src', q{
SELECT broker.release('orders', m.id, m.receipt, '30 minutes')
  FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
 WHERE d.name = 'orders' AND m.receipt IS NOT NULL
 ORDER BY m.id LIMIT 1;
});
$node->safe_psql('src', q{SELECT count(*) FROM broker.dequeue('doomed', 1, lease => '100 ms')});
$node->safe_psql('src', q{SELECT pg_sleep(0.2); SELECT count(*) FROM broker.dequeue('doomed')});

my $snapshot = q{
SELECT d.name, m.id, m.vt, m.enqueued_at, m.expires_at, m.delivery_count,
       m.receipt, m.payload, m.headers
  FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
 ORDER BY m.id};
my $queues = q{SELECT * FROM broker.queues ORDER BY queue};
my $state = q{SELECT (SELECT last_value FROM broker.message_id_seq),
                     (SELECT string_agg(segment || ':' || current || ':' || first_id, ',' ORDER BY segment)
                        FROM broker.segments)};
my $segments_used = q{SELECT (SELECT count(*) > 0 FROM broker.messages_0)::int + (SELECT count(*) > 0 FROM broker.messages_1)::int
                           + (SELECT count(*) > 0 FROM broker.messages_2)::int + (SELECT count(*) > 0 FROM broker.messages_3)::int};

my $want = $node->safe_psql('src', $snapshot);
my $want_queues = $node->safe_psql('src', $queues);
my $want_state = $node->safe_psql('src', $state);
my $want_ready = $node->safe_psql('src', q{SELECT ready FROM broker.metrics('orders')});
cmp_ok($node->safe_psql('src', q{SELECT leased + delayed FROM broker.metrics('orders')}),
	'>=', 3, 'the source has leased and delayed messages');
cmp_ok($node->safe_psql('src', $segments_used), '>=', 2,
	'the source has messages in at least two segments');
like($want, qr/\|1\|\d+\|/, 'the source has a leased message with a receipt');
like($want, qr/dead\|\d+\|.*"to": "dead"/, 'the source has a dead-lettered message');

my $dir = PostgreSQL::Test::Utils::tempdir;
my ($host, $port) = ($node->host, $node->port);
command_ok([ 'pg_dump', '-h', $host, '-p', $port, '-f', "$dir/plain.sql", 'src' ],
	'pg_dump, plain');
command_ok([ 'pg_dump', '-h', $host, '-p', $port, '-Fc', '-f', "$dir/custom.dump", 'src' ],
	'pg_dump, custom');

# Restore one way, then check everything came back and works.
sub check_restored
{
	my ($db, $how) = @_;
	is($node->safe_psql($db, $snapshot), $want, "$how: every message with every column");
	is($node->safe_psql($db, $queues), $want_queues, "$how: every queue and its settings");
	is($node->safe_psql($db, $state), $want_state, "$how: id sequence and segments");

	my $max = $node->safe_psql($db, 'SELECT max(id) FROM broker.messages');
	cmp_ok($node->safe_psql($db, q{SELECT broker.enqueue('other', '{"new": true}')}),
		'>', $max, "$how: a new message gets a new id");
	my ($leased_id, $receipt) = split /\|/, $node->safe_psql($db, q{
		SELECT m.id, m.receipt FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
		 WHERE d.name = 'orders' AND m.receipt IS NOT NULL AND m.vt > now() + '10 minutes'
		 ORDER BY m.id LIMIT 1});
	is($node->safe_psql($db, "SELECT broker.delete('orders', $leased_id, $receipt)"),
		't', "$how: a receipt taken before the dump deletes after the restore");
	is($node->safe_psql($db, q{SELECT count(*) FROM broker.dequeue('other', 1000)}),
		'171', "$how: every ready message of a queue is delivered");
	is($node->safe_psql($db, q{SELECT count(*) FROM broker.dequeue('orders', 1000)}),
		$want_ready, "$how: of a queue with leased, released and delayed messages, only the ready ones");
}

$node->safe_psql('postgres', 'CREATE DATABASE plain_1x');
command_ok([ 'psql', '-X', '-q', '-h', $host, '-p', $port, '-v', 'ON_ERROR_STOP=1',
	'--single-transaction', '-f', "$dir/plain.sql", 'plain_1x' ],
	'plain dump restored by psql in one transaction, stopping at the first error');
check_restored('plain_1x', 'plain, one transaction');

$node->safe_psql('postgres', 'CREATE DATABASE custom_1x');
command_ok([ 'pg_restore', '-h', $host, '-p', $port, '--single-transaction',
	'--exit-on-error', '-d', 'custom_1x', "$dir/custom.dump" ],
	'custom dump restored by pg_restore --single-transaction --exit-on-error');
check_restored('custom_1x', 'custom, one transaction');

$node->safe_psql('postgres', 'CREATE DATABASE custom_n');
command_ok([ 'pg_restore', '-h', $host, '-p', $port, '-d', 'custom_n', "$dir/custom.dump" ],
	'custom dump restored by a default pg_restore, exit status 0');
check_restored('custom_n', 'custom, default');

$node->stop;
done_testing();
