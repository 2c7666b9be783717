# 014_dump_restore.pl: pg_dump and pg_restore round trips keep every queue,
# message, lease, delay, header, group, priority, dead-letter link, dedup
# key, subscription, job record and queue privilege, in plain (psql),
# custom (pg_restore) and custom single-transaction modes, each into a
# fresh database, and the restored broker works: a restored lease is
# honoured and its receipt works, dequeue finds every restored ready
# message (the low-water mark) in order, dedup keys and subscriptions hold,
# job records are found, granted roles may use their queues.  A restore
# into another cluster, whose roles have other oids, keeps the privileges
# with their roles.
#
# broker.segments used to be filled by the install script and dumped too,
# so a restore into the new installation hit a duplicate key: a
# transactional restore stopped, a default one exited 1.
#
# A default pg_restore commits item by item, so consumers and the reaper's
# segment maintenance can run between its items.  The last case restores a
# custom dump in two steps with a consumer and a maintenance step in
# between: the message segment with the lowest ids, and the dedup key and
# job record tables that took rows last in the source (its pairs of
# rotated tables had turned), come in the second step.
#
# The reapers serve only "postgres" (broker.databases), so that nothing
# but the test changes the sources and the restored databases.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use lib 'test/perl';
use BrokerTest;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.databases = 'postgres'
log_statement = none
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE src');

# Queues with every setting; messages in several segments: ready, leased,
# delayed, released, with headers and ttl, and one dead-lettered; a group
# with a waiting message, a priority, a dedup key, subscriptions and a
# published message, job records (done, failed, deleted).
$node->safe_psql('src', q{
SET broker.segment_size = 100;
CREATE EXTENSION broker;
SELECT broker.create_queue('dead');
SELECT broker.create_queue('orders', lease => '1 hour', max_deliveries => 1,
                           dead_letter_queue => 'dead');
SELECT broker.create_queue('other', max_message_size => 2000, default_ttl => '1 day');
SELECT broker.create_queue('doomed', max_deliveries => 1, dead_letter_queue => 'dead');
SELECT broker.create_queue('jobs', lease => '1 hour', retention => '1 day', dedup_window => '1 hour');
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
SELECT broker.subscribe('orders', 'shop.#');
SELECT broker.subscribe('other', 'shop.*.created');
SELECT broker.publish('shop.eu.created', '{"pub": 1}');
SELECT broker.enqueue('orders', '{"dedup": 1}', dedup_key => 'order-1');
SELECT broker.enqueue('orders', '{"g": "a1"}', group_key => 'acct-1');
SELECT broker.enqueue('orders', '{"g": "a2"}', group_key => 'acct-1');
SELECT broker.enqueue('other', '{"p": 7}', priority => 7);
CREATE TABLE job_ids AS
  SELECT g, broker.enqueue('jobs', jsonb_build_object('job', g), dedup_key => 'job-' || g) AS id
    FROM generate_series(1, 4) g;
SELECT broker.complete('jobs', id, NULL, '{"ok": 1}') FROM job_ids WHERE g = 1;
SELECT broker.fail('jobs', id, NULL, '{"err": 2}') FROM job_ids WHERE g = 2;
SELECT broker.delete('jobs', id) FROM job_ids WHERE g = 3;
CREATE ROLE app_worker;
CREATE ROLE app_feeder;
SELECT broker.grant('orders', 'app_worker', 'consume');
SELECT broker.grant('*', 'app_feeder', 'produce');
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

# Every message with every column (a message waiting in its group has its
# queue's id negated: "waiting"), the queues, the sequences and segments,
# the dedup keys, subscriptions and job records, each in its table.
my $snapshot = q{
SELECT d.name, m.queue_id < 0 AS waiting, m.id, m.vt, m.enqueued_at, m.expires_at, m.delivery_count,
       m.receipt, m.payload, m.headers, m.group_key, m.priority
  FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = abs(m.queue_id)
 ORDER BY m.id};
my $queues = q{SELECT * FROM broker.queues ORDER BY queue};
my $state = q{SELECT (SELECT last_value FROM broker.message_id_seq),
                     (SELECT last_value FROM broker.queue_id_seq),
                     (SELECT string_agg(segment || ':' || current || ':' || first_id, ',' ORDER BY segment)
                        FROM broker.segments)};
my $tables = q{
SELECT 'dedup_0', q.name, k.dedup_key, k.id, k.enqueued_at FROM broker.dedup_0 k JOIN broker.queue_defs q USING (queue_id)
UNION ALL
SELECT 'dedup_1', q.name, k.dedup_key, k.id, k.enqueued_at FROM broker.dedup_1 k JOIN broker.queue_defs q USING (queue_id)
ORDER BY 1, 2, 3;
SELECT 'records_0', q.name, r.id, r.state, r.delivery_count, r.enqueued_at, r.visible_at, r.finished_at,
       r.payload, r.headers, r.result
  FROM broker.records_0 r JOIN broker.queue_defs q USING (queue_id)
UNION ALL
SELECT 'records_1', q.name, r.id, r.state, r.delivery_count, r.enqueued_at, r.visible_at, r.finished_at,
       r.payload, r.headers, r.result
  FROM broker.records_1 r JOIN broker.queue_defs q USING (queue_id)
ORDER BY 1, 2, 3;
SELECT queue, pattern FROM broker.subscriptions ORDER BY 1, 2;
SELECT queue, role, privilege FROM broker.grants ORDER BY 1, 2, 3};
my $segments_used = q{SELECT (SELECT count(*) > 0 FROM broker.messages_0)::int + (SELECT count(*) > 0 FROM broker.messages_1)::int
                           + (SELECT count(*) > 0 FROM broker.messages_2)::int + (SELECT count(*) > 0 FROM broker.messages_3)::int};
# Deliverable now, in dequeue's order: heads and ungrouped messages that
# are due and not expired, highest priority first.
my $deliverable = q{
SELECT coalesce(string_agg(m.id::text, ',' ORDER BY m.priority DESC, m.id), '')
  FROM broker.messages m JOIN broker.queue_defs q ON q.queue_id = m.queue_id
 WHERE q.name = '%s' AND m.vt <= now() AND (m.expires_at IS NULL OR m.expires_at > now())};
my $delivered = q{
SELECT coalesce(string_agg(d.id::text, ',' ORDER BY d.ord), '')
  FROM broker.dequeue('%s', 1000, lease => '1 hour') WITH ORDINALITY AS d(id, p, h, e, dc, l, x, r, ord)};
my @queue_names = qw(dead orders other doomed jobs);

my $want = $node->safe_psql('src', $snapshot);
my $want_queues = $node->safe_psql('src', $queues);
my $want_state = $node->safe_psql('src', $state);
my $want_tables = $node->safe_psql('src', $tables);
my %want_ready = map { $_ => $node->safe_psql('src', sprintf($deliverable, $_)) } @queue_names;
my ($leased_id, $leased_receipt) = split /\|/, $node->safe_psql('src', q{
	SELECT m.id, m.receipt FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
	 WHERE d.name = 'orders' AND m.receipt IS NOT NULL AND m.vt > now() + '10 minutes'
	 ORDER BY m.id LIMIT 1});
my $dedup_id = $node->safe_psql('src', q{SELECT id FROM broker.messages WHERE payload = '{"dedup": 1}'});

cmp_ok($node->safe_psql('src', q{SELECT leased + delayed FROM broker.metrics('orders')}),
	'>=', 3, 'the source has leased and delayed messages');
cmp_ok($node->safe_psql('src', $segments_used), '>=', 2,
	'the source has messages in at least two segments');
like($want, qr/\|1\|\d+\|/, 'the source has a leased message with a receipt');
like($want, qr/dead\|f\|\d+\|.*"to": "dead"/, 'the source has a dead-lettered message');
like($want, qr/^orders\|t\|\d+\|.*"a2".*\|acct-1\|0$/m, 'the source has a message waiting in its group');
like($want_tables, qr/^dedup_\d\|orders\|order-1\|$dedup_id\|/m, 'the source has a dedup key');
like($want_tables, qr/^records_\d\|jobs\|\d+\|done\|.*\{"ok": 1\}$/m, 'the source has job records');
like($want_tables, qr/^other\|shop\.\*\.created$/m, 'the source has subscriptions');
like($want_tables, qr/^orders\|app_worker\|consume$/m, 'the source has queue privileges');
like($want_ready{other}, qr/^\d+(,\d+){170,}$/, 'the source has ready messages in "other"');
unlike(",$want_ready{orders},", qr/,$leased_id,/, 'the leased message is not among the ready ones');

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
	my $sql = sub { $node->safe_psql($db, @_) };
	is($sql->($snapshot), $want, "$how: every message with every column");
	is($sql->($queues), $want_queues, "$how: every queue and its settings");
	is($sql->($state), $want_state, "$how: id sequence and segments");
	is($sql->($tables), $want_tables, "$how: dedup keys, job records and subscriptions, each in its table");

	# The low-water mark: every ready message is found; the leased,
	# delayed, released and waiting ones are not delivered.  And in
	# dequeue's order: highest priority first, then lowest id.
	for my $q (@queue_names)
	{
		my $got = $sql->(sprintf($delivered, $q));
		is(join(',', sort { $a <=> $b } split /,/, $got),
			join(',', sort { $a <=> $b } split /,/, $want_ready{$q}),
			"$how: $q: dequeue delivers every ready message and no other");
		is($got, $want_ready{$q}, "$how: $q: in priority and id order");
	}
	is($sql->("SELECT vt > now() + '10 minutes' FROM broker.messages WHERE id = $leased_id"), 't',
		"$how: the restored lease still runs");
	is($sql->("SELECT broker.delete('orders', $leased_id, 42)"), 'f',
		"$how: a wrong receipt deletes nothing");
	is($sql->("SELECT broker.delete('orders', $leased_id, $leased_receipt)"),
		't', "$how: a receipt taken before the dump deletes after the restore");

	my $max = $sql->('SELECT max(id) FROM broker.messages');
	my $new = $sql->(q{SELECT broker.enqueue('other', '{"new": true}')});
	cmp_ok($new, '>', $max, "$how: a new message gets a new id");
	is($sql->(sprintf($delivered, 'other')), $new, "$how: and is delivered");

	# the group moves on when its head leaves
	$sql->(q{SELECT broker.delete('orders', id) FROM broker.messages WHERE payload = '{"g": "a1"}'});
	is($sql->(q{SELECT payload FROM broker.dequeue('orders')}), '{"g": "a2"}',
		"$how: the group's next message once its head is deleted");

	is($sql->(q{SELECT broker.enqueue('orders', '{"dedup": 2}', dedup_key => 'order-1')}), $dedup_id,
		"$how: a dedup key from before the dump: the same id");
	is($sql->(q{SELECT count(*) FROM broker.messages WHERE payload = '{"dedup": 2}'}), '0',
		"$how: and nothing stored");
	is($sql->(q{SELECT broker.publish('shop.us.created', '{"pub": 2}')}), '2',
		"$how: subscriptions: publish reaches both queues");
	is($sql->(q{SELECT string_agg(s.state || ' ' || coalesce(s.result::text, '-'), ',' ORDER BY j.g)
	              FROM job_ids j, broker.status('jobs', j.id) s}),
		'done {"ok": 1},failed {"err": 2},deleted -,leased -',
		"$how: job records found by status, and the live job");
	is($sql->(q{SELECT count(*) FROM broker.archive('jobs')}), '3', "$how: archive");

	# queue privileges
	is($sql->(q{SET ROLE app_feeder; SELECT broker.enqueue('doomed', '{"by": "feeder"}') > 0}), 't',
		"$how: a role granted produce on every queue produces");
	is($sql->(q{SET ROLE app_worker; SELECT payload FROM broker.dequeue('orders', 1, lease => '1 minute')}),
		'{"pub": 2}', "$how: a role granted consume on orders consumes");
	is(sqlstate($node, q{SET ROLE app_worker; SELECT count(*) FROM broker.dequeue('other')}, $db),
		'42501', "$how: and not from another queue");

	# The installation's shared state takes new messages into the segment
	# broker.segments names as current (what the reaper's maintenance and
	# every producer go by).
	is($sql->(q{SELECT string_agg(segment::text, ',') FROM broker.maintain_segments() WHERE current}),
		$sql->(q{SELECT string_agg(segment::text, ',') FROM broker.segments WHERE current}),
		"$how: the current segment is the restored one");
}

$node->safe_psql('postgres', 'CREATE DATABASE plain_1x');
command_ok([ 'psql', '-X', '-q', '-h', $host, '-p', $port, '-v', 'ON_ERROR_STOP=1',
	'--single-transaction', '-f', "$dir/plain.sql", 'plain_1x' ],
	'plain dump restored by psql in one transaction, stopping at the first error');
check_restored('plain_1x', 'plain, one transaction');

$node->safe_psql('postgres', 'CREATE DATABASE custom_n');
command_ok([ 'pg_restore', '-h', $host, '-p', $port, '-d', 'custom_n', "$dir/custom.dump" ],
	'custom dump restored by a default pg_restore, exit status 0');
check_restored('custom_n', 'custom, default');

$node->safe_psql('postgres', 'CREATE DATABASE custom_1x');
command_ok([ 'pg_restore', '-h', $host, '-p', $port, '--single-transaction',
	'--exit-on-error', '-d', 'custom_1x', "$dir/custom.dump" ],
	'custom dump restored by pg_restore --single-transaction --exit-on-error');
check_restored('custom_1x', 'custom, one transaction');

# --- into another cluster ---------------------------------------------------------
# Its roles exist (as pg_dumpall --globals-only would create them) but were
# created in another order, after others: their oids differ from the
# source's.
my $node2 = PostgreSQL::Test::Cluster->new('dump_target');
$node2->init;
$node2->append_conf('postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.databases = 'postgres'
log_statement = none
});
$node2->start;
$node2->safe_psql('postgres', q{
CREATE ROLE decoy_1; CREATE ROLE app_feeder; CREATE ROLE decoy_2; CREATE ROLE app_worker;
CREATE DATABASE moved});
command_ok([ 'pg_restore', '-h', $node2->host, '-p', $node2->port, '-d', 'moved', "$dir/custom.dump" ],
	'another cluster: custom dump restored');
is($node2->safe_psql('moved', $snapshot), $want, 'another cluster: every message with every column');
is($node2->safe_psql('moved', $tables), $want_tables,
	'another cluster: dedup keys, job records, subscriptions, and the queue privileges of the same roles');
is(sqlstate($node2, q{SET ROLE app_worker; SELECT count(*) FROM broker.dequeue('orders', 1, lease => '1 minute')}, 'moved'),
	'no error: ', 'another cluster: the role granted consume on orders consumes');
is(sqlstate($node2, q{SET ROLE decoy_1; SELECT count(*) FROM broker.dequeue('orders')}, 'moved'), '42501',
	'another cluster: no other role got its privilege');
is(sqlstate($node2, q{SET ROLE decoy_2; SELECT broker.enqueue('orders', '{}')}, 'moved'), '42501',
	'another cluster: nor the other one');
$node2->stop;

# --- a restore in steps, consumers and maintenance in between ----------------
# The source: its pairs of rotated tables (dedup keys, job records) turn
# once their longest window has passed since the start; here the first
# queue's windows are 1 second, and the queue created right after the turn
# (with long ones: no further turn) puts its keys and records into
# dedup_1 and records_1.  Its messages: the first 150 in segment 0, the
# last 20 in segment 1.
$node->safe_psql('postgres', 'CREATE DATABASE src2');
$node->safe_psql('src2', q{
CREATE EXTENSION broker;
SELECT broker.create_queue('tick', dedup_window => '1 second', retention => '1 second');
SELECT count(*) FROM broker.maintain_segments();
});
my $turned;
for (1 .. 100)
{
	usleep(100_000);
	$turned = $node->safe_psql('src2', q{
SELECT count(*) FROM broker.maintain_segments();
SELECT broker.create_queue('steps', lease => '1 hour', dedup_window => '1 hour', retention => '1 day');
SELECT broker.enqueue('steps', '{"probe": true}', dedup_key => 'probe');
SELECT broker.complete('steps', id) FROM broker.messages WHERE payload = '{"probe": true}';
SELECT (SELECT count(*) FROM broker.dedup_1) || ' ' || (SELECT count(*) FROM broker.records_1);
});
	last if $turned =~ /\n1 1$/;
	$node->safe_psql('src2', q{SELECT broker.drop_queue('steps')});
}
like($turned, qr/\n1 1$/, 'source 2: the key and record tables turned, the new queue writes to dedup_1 and records_1');
$node->safe_psql('src2', q{
SET broker.segment_size = 100;
SELECT count(*) FROM broker.enqueue_batch('steps',
    (SELECT array_agg(jsonb_build_object('s', g)) FROM generate_series(1, 150) g),
    dedup_keys => (SELECT array_agg('key-' || g) FROM generate_series(1, 150) g));
SELECT count(*) FROM broker.maintain_segments();
SELECT count(*) FROM broker.enqueue_batch('steps',
    (SELECT array_agg(jsonb_build_object('s', g)) FROM generate_series(151, 170) g));
SELECT count(broker.complete('steps', id, NULL, jsonb_build_object('done', payload->'s')))
  FROM broker.messages WHERE (payload->>'s')::int % 50 = 0;
});
my $want2_tables = $node->safe_psql('src2', $tables);
my $want2_ready = $node->safe_psql('src2', sprintf($deliverable, 'steps'));
my $key7 = $node->safe_psql('src2', q{SELECT id FROM broker.dedup_1 WHERE dedup_key = 'key-7'});
my $done50 = $node->safe_psql('src2', q{SELECT id FROM broker.records_1 WHERE result = '{"done": 50}'});
like($want2_tables, qr/^dedup_1\|steps\|key-7\|$key7\|/m, 'source 2: its keys are in dedup_1');
like($want2_tables, qr/^records_1\|steps\|$done50\|done\|/m, 'source 2: its records are in records_1');
is($node->safe_psql('src2', q{SELECT min(id) < 100 AND max(id) > 150 FROM broker.messages}), 't',
	'source 2: ids below and above 150');
isnt($node->safe_psql('src2', q{SELECT count(*) FROM broker.messages_0}), '0', 'source 2: segment 0 in use');
isnt($node->safe_psql('src2', q{SELECT count(*) FROM broker.messages_1}), '0', 'source 2: segment 1 in use');

command_ok([ 'pg_dump', '-h', $host, '-p', $port, '-Fc', '-f', "$dir/src2.dump", 'src2' ],
	'pg_dump of source 2, custom');
my ($toc) = run_command([ 'pg_restore', '-l', "$dir/src2.dump" ]);
my $late = qr/ TABLE DATA broker (messages_0|dedup_1|records_1) /;
my @first = grep { !/$late/ } split /\n/, $toc;
my @second = grep { /$late/ } split /\n/, $toc;
is(scalar(@second), 3, 'three items for the second step');
open(my $fh, '>', "$dir/first.list") or die; print $fh join("\n", @first), "\n"; close $fh;
open($fh, '>', "$dir/second.list") or die; print $fh join("\n", @second), "\n"; close $fh;

$node->safe_psql('postgres', 'CREATE DATABASE steps');
command_ok([ 'pg_restore', '-h', $host, '-p', $port, '-L', "$dir/first.list", '-d', 'steps', "$dir/src2.dump" ],
	'steps: everything but segment 0, dedup_1 and records_1 restored');
# a consumer takes what is there, and segment maintenance runs (what the
# reaper does every broker.reaper_interval)
my $early = $node->safe_psql('steps', sprintf($delivered, 'steps'));
like($early, qr/^\d+(,\d+)*$/, 'steps: a consumer took the messages of segment 1 meanwhile');
$node->safe_psql('steps', q{SELECT count(*) FROM broker.maintain_segments()});
command_ok([ 'pg_restore', '-h', $host, '-p', $port, '-L', "$dir/second.list", '-d', 'steps', "$dir/src2.dump" ],
	'steps: segment 0, dedup_1 and records_1 restored');
my $ids = q{SELECT string_agg(id::text, ',' ORDER BY id) FROM broker.messages};
is($node->safe_psql('steps', $ids), $node->safe_psql('src2', $ids), 'steps: every message restored');
is($node->safe_psql('steps', $tables), $want2_tables, 'steps: dedup keys, records, subscriptions restored');
my $late_ready = $node->safe_psql('steps', sprintf($delivered, 'steps'));
is(join(',', sort { $a <=> $b } split(/,/, "$early,$late_ready")),
	join(',', sort { $a <=> $b } split(/,/, $want2_ready)),
	'steps: dequeue finds the messages restored behind the low-water mark');
is($node->safe_psql('steps', q{SELECT broker.enqueue('steps', '{"again": 7}', dedup_key => 'key-7')}), $key7,
	'steps: a dedup key restored into dedup_1 holds');
is($node->safe_psql('steps', qq{SELECT state || ' ' || result FROM broker.status('steps', $done50)}),
	'done {"done": 50}', 'steps: a job record restored into records_1 is found');

$node->stop;
done_testing();
