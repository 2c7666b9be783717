# 020_upgrade.pl: ALTER EXTENSION broker UPDATE from 0.1.0 to 0.2.0 on an
# installation that holds queues, messages in every state and privileges.
#
# The 0.2.0 library refuses a 0.1.0 installation (55000) until it is
# updated, so the 0.1.0 tables are filled here the way 0.1.0 left them:
# plain INSERTs into broker.queue_defs, broker.messages_N and
# broker.segments (segment 1 current after one rotation), setval on the
# sequences.  After the update:
#
# - every message is intact, column by column and in its segment, with the
#   new columns at their defaults; every queue setting too, the new ones
#   at their defaults, and the segments and sequences;
# - a leased message is not delivered before its lease ends and is deleted,
#   extended or released with its 0.1.0 receipt; the delayed one comes when
#   due, the one whose lease ends soon comes again then; expired ones are
#   not delivered and the worker removes them; exhausted ones go to the
#   dead-letter queue;
# - privileges given on functions (grants, a REVOKE from PUBLIC, a grant
#   option) hold on the new signatures; new functions get their defaults;
#   the update gives no queue privilege (broker.grant): until granted, only
#   the owner and superusers use the queues;
# - a queue whose 0.1.0 lease is longer than 0.2.0's default max_lease
#   still works with its own lease;
# - everything new works on the upgraded queues and on new ones;
# - the objects are those of a fresh 0.2.0 installation;
# - a second update is a no-op; pg_extension says 0.2.0.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use lib 'test/perl';
use BrokerTest;

my $node = broker_node('upgrade',
	conf => [ "broker.reaper_interval = '100ms'", 'log_statement = none' ]);
my $db = 'app';
$node->safe_psql('postgres', "CREATE DATABASE $db");
my $sql = sub { $node->safe_psql($db, @_) };

# --- a 0.1.0 installation ------------------------------------------------------
$sql->(q{CREATE EXTENSION broker VERSION '0.1.0'});
is($sql->(q{SELECT extversion FROM pg_extension WHERE extname = 'broker'}),
	'0.1.0', 'installed at 0.1.0');
for my $call (
	q{SELECT broker.create_queue('x')},
	q{SELECT broker.enqueue('x', '{}')},
	q{SELECT count(*) FROM broker.dequeue('x')},
	q{SELECT broker.delete('x', 1)},
	q{SELECT count(*) FROM broker.metrics()})
{
	is(sqlstate($node, $call, $db), '55000', "0.2.0 library, 0.1.0 installation: $call fails with 55000");
}
is($sql->(q{SELECT DISTINCT library_version || ' ' || extension_version FROM broker.health()}),
	'0.2.0 0.1.0', 'health() works and shows both versions');

# Queues with every setting, a dead-letter link; messages ready, released,
# leased (for an hour, and one ending soon), exhausted, delayed, expiring,
# expired, with and without headers, in segments 0 and 1.  $soon: when the
# delayed message is due and the short lease ends (both in queue "later",
# looked at again at the end).
my $soon = 20;
$sql->(qq{
CREATE ROLE app_admin;
CREATE ROLE app_producer;
CREATE ROLE app_consumer;
CREATE ROLE app_other;
BEGIN;
INSERT INTO broker.queue_defs (queue_id, name, kind, lease, max_message_size, default_ttl,
                               max_deliveries, dead_letter_id, created_at) VALUES
  (1, 'dead',   'q', '30 seconds', 4096,    NULL,     NULL, NULL, '2024-01-01 10:00:00+00'),
  (2, 'orders', 'q', '1 hour',     2000,    '7 days', 3,    1,    '2024-01-02 11:00:00+00'),
  (3, 'other',  'q', '45 seconds', 1048576, '1 day',  NULL, NULL, '2024-01-03 12:00:00+00'),
  (4, 'doomed', 'q', '30 seconds', 4096,    NULL,     1,    1,    '2024-01-04 13:00:00+00'),
  (5, 'later',  'q', '2 minutes',  4096,    NULL,     5,    NULL, '2024-01-05 14:00:00+00'),
  -- a lease longer than 0.2.0's default max_lease (12 hours)
  (6, 'long',   'q', '1 day',      4096,    NULL,     NULL, NULL, '2024-01-06 15:00:00+00');
INSERT INTO broker.messages_0 (queue_id, id, vt, enqueued_at, expires_at, delivery_count,
                               receipt, payload, headers) VALUES
  -- released after one delivery: ready
  (2, 1, now() - interval '10 minutes', now() - interval '1 hour', now() + interval '7 days', 1, NULL, '{"n": 1}', '{"h": "one"}'),
  -- leased for an hour
  (2, 2, now() + interval '1 hour', now() - interval '50 minutes', now() + interval '7 days', 1, 1111111111111111111, '{"n": 2}', NULL),
  (2, 3, now() + interval '1 hour', now() - interval '40 minutes', now() + interval '7 days', 2, 2222222222222222222, '{"n": 3}', '{"h": "three"}'),
  -- delivered max_deliveries times, lease ran out: dead-lettered next
  (2, 4, now() - interval '1 minute', now() - interval '30 minutes', now() + interval '7 days', 3, 3333333333333333333, '{"n": 4}', '{"h": "four"}'),
  (2, 5, now() - interval '20 minutes', now() - interval '20 minutes', now() + interval '7 days', 0, NULL, '{"n": 5}', NULL),
  (1, 6, now() - interval '15 minutes', now() - interval '15 minutes', NULL, 0, NULL, '{"n": "dead"}', '{"from": "orders"}'),
  (4, 7, now() - interval '5 minutes', now() - interval '10 minutes', NULL, 1, 4444444444444444444, '{"n": 7}', '{"h": "seven"}'),
  (6, 8, now() - interval '1 minute', now() - interval '1 minute', NULL, 0, NULL, '{"long": 8}', NULL);
INSERT INTO broker.messages_1 (queue_id, id, vt, enqueued_at, expires_at, delivery_count,
                               receipt, payload, headers) VALUES
  (2, 101, now() - interval '5 minutes', now() - interval '5 minutes', now() + interval '7 days', 0, NULL, '{"n": 101}', NULL),
  -- delayed
  (5, 102, now() + interval '$soon seconds', now(), now() + interval '7 days', 0, NULL, '{"n": 102, "delayed": true}', '{"d": 1}'),
  (3, 103, now(), now(), now() + interval '1 day', 0, NULL, '{"o": 103}', '{"k": [1, 2]}'),
  -- expired
  (3, 104, now() - interval '2 minutes', now() - interval '2 minutes', now() - interval '1 second', 0, NULL, '{"o": 104, "expired": true}', NULL),
  -- leased, the lease ends soon
  (5, 105, now() + interval '$soon seconds', now() - interval '1 minute', now() + interval '1 day', 1, 5555555555555555555, '{"o": 105}', NULL);
INSERT INTO broker.messages_1 (queue_id, id, vt, enqueued_at, expires_at, payload)
  SELECT 3, g, now(), now(), now() + interval '1 day', jsonb_build_object('o', g) FROM generate_series(106, 110) g;
UPDATE broker.segments SET current = (segment = 1), first_id = CASE WHEN segment = 1 THEN 101 ELSE 0 END;
SELECT setval('broker.message_id_seq', 110);
SELECT setval('broker.queue_id_seq', 6);
COMMIT;

GRANT EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean) TO app_admin;
GRANT EXECUTE ON FUNCTION broker.purge_queue(text) TO app_admin;
REVOKE EXECUTE ON FUNCTION broker.metrics(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker.metrics(text) TO app_admin;
REVOKE EXECUTE ON FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb) TO app_producer WITH GRANT OPTION;
REVOKE EXECUTE ON FUNCTION broker.enqueue_batch(text, jsonb[], interval, interval, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker.enqueue_batch(text, jsonb[], interval, interval, jsonb) TO app_producer;
REVOKE EXECUTE ON FUNCTION broker.dequeue(text, integer, interval, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker.dequeue(text, integer, interval, interval) TO app_consumer;
GRANT SELECT ON broker.messages TO app_admin;
SET ROLE app_producer;
GRANT EXECUTE ON FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb) TO app_other;
RESET ROLE;
});

# What the update must keep, column by column, each message in its segment.
my $old_columns = 'queue_id, id, vt, enqueued_at, expires_at, delivery_count, receipt, payload, headers';
my $messages_as_table = join(' UNION ALL ',
	map { "SELECT 'messages_$_' AS seg, $old_columns FROM broker.messages_$_" } 0 .. 3);
my $defs_columns = 'queue_id, name, kind, lease, max_message_size, default_ttl, max_deliveries, '
  . 'dead_letter_id, created_at';
my $state = q{SELECT (SELECT last_value FROM broker.message_id_seq) || ' ' ||
                     (SELECT last_value FROM broker.queue_id_seq) || ' ' ||
                     (SELECT string_agg(segment || ':' || current || ':' || first_id, ',' ORDER BY segment)
                        FROM broker.segments)};
$sql->(qq{
CREATE TABLE before_msgs AS $messages_as_table;
CREATE TABLE before_defs AS SELECT $defs_columns FROM broker.queue_defs;
});
is($sql->('SELECT count(*) FROM before_msgs'), '18', '18 messages before the update');
is($sql->(q{SELECT string_agg(DISTINCT seg, ',') FROM before_msgs}),
	'messages_0,messages_1', 'in two segments');
my $want_state = '110 6 0:false:0,1:true:101,2:false:0,3:false:0';
is($sql->($state), $want_state, 'segment 1 current from id 101, sequences set');

# The 0.2.0 worker leaves the 0.1.0 installation alone: the expired message
# stays until the update.
my $log_offset = -s $node->logfile;
usleep(600_000);
is($sql->('SELECT count(*) FROM broker.messages WHERE id = 104'), '1',
	'the worker does not touch a 0.1.0 installation');

# A session that used the library before the update: it must see the update.
my $early = BrokerTest::Session->new($node, 'early', $db);
my ($out, $err) = $early->query(q{SELECT total FROM broker.metrics('orders')});
like($err, qr/extension "broker" is at version 0.1.0, the library loaded is 0.2.0/,
	'a session is refused before the update');

# --- the update ------------------------------------------------------------------
# Snapshot in the updating transaction: the worker can remove nothing before.
$sql->(qq{
BEGIN;
ALTER EXTENSION broker UPDATE;
CREATE TABLE after_msgs AS $messages_as_table;
CREATE TABLE after_defs AS SELECT $defs_columns FROM broker.queue_defs;
CREATE TABLE after_new AS SELECT id, group_key, priority FROM broker.messages;
COMMIT;
});
is($sql->(q{SELECT extversion FROM pg_extension WHERE extname = 'broker'}),
	'0.2.0', 'pg_extension: 0.2.0');
is($sql->(q{SELECT DISTINCT library_version || ' ' || extension_version FROM broker.health()}),
	'0.2.0 0.2.0', 'health(): library and extension at 0.2.0');
is($sql->(q{SELECT count(*) FROM (
	(SELECT * FROM before_msgs EXCEPT ALL SELECT * FROM after_msgs)
	UNION ALL (SELECT * FROM after_msgs EXCEPT ALL SELECT * FROM before_msgs)) d}),
	'0', 'every message intact: ids, segments, vt, receipts, delivery counts, payloads, headers, expiry');
is($sql->(q{SELECT count(*) FROM after_msgs}), '18', 'all 18 of them');
is($sql->(q{SELECT count(*) FROM after_new WHERE group_key IS NULL AND priority = 0}),
	'18', 'the new message columns at their defaults (no group, priority 0)');
is($sql->(q{SELECT count(*) FROM (
	(SELECT * FROM before_defs EXCEPT ALL SELECT * FROM after_defs)
	UNION ALL (SELECT * FROM after_defs EXCEPT ALL SELECT * FROM before_defs)) d}),
	'0', 'every queue definition intact');
is($sql->($state), $want_state, 'segments and sequences intact');
is($sql->(q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', queue, lease, max_message_size,
                   default_ttl, max_deliveries, dead_letter_queue, created_at AT TIME ZONE 'UTC',
                   dedup_window, retention, max_lease), E'\n' ORDER BY queue)
              FROM broker.queues WHERE queue <> 'long'}),
	join("\n",
		'dead|00:00:30|4096||||2024-01-01 10:00:00|00:05:00||12:00:00',
		'doomed|00:00:30|4096||1|dead|2024-01-04 13:00:00|00:05:00||12:00:00',
		'later|00:02:00|4096||5||2024-01-05 14:00:00|00:05:00||12:00:00',
		'orders|01:00:00|2000|7 days|3|dead|2024-01-02 11:00:00|00:05:00||12:00:00',
		'other|00:00:45|1048576|1 day|||2024-01-03 12:00:00|00:05:00||12:00:00'),
	'broker.queues: every setting, the dead-letter links, the new columns at their defaults');
is($sql->(q{SELECT format('%s|%s|%s', lease, dedup_window, retention) FROM broker.queues WHERE queue = 'long'}),
	'1 day|00:05:00|', 'broker.queues: the queue with a 1-day lease keeps it');
# 0.1.0 took any lease up to 10000 years; a queue's own lease must still be
# one that dequeue accepts after the update (the update keeps "every
# setting"): its max_lease must not be below it.
is($sql->(q{SELECT max_lease >= lease FROM broker.queues WHERE queue = 'long'}), 't',
	'the queue with a 1-day lease: max_lease is not below its lease');
is(sqlstate($node, q{SELECT count(*) FROM broker.dequeue('long')}, $db), 'no error: ',
	'the queue with a 1-day lease: dequeue with its default lease still works after the update');
is($sql->(q{SELECT count(*) FROM broker.grants}), '0', 'the update grants no queue privilege');
is($sql->('SELECT count(*) FROM broker.subscriptions'), '0', 'broker.subscriptions exists, empty');

# The session that was refused works now, without reconnecting.
($out, $err) = $early->query(q{SELECT total FROM broker.metrics('orders')});
is("$out$err", '6', 'the session refused before the update works after it');
$early->quit;

# --- function privileges carried over to the new signatures --------------------
# EXECUTE of every broker function for each role: what a fresh 0.2.0
# installation gives (every role has PUBLIC's), but the REVOKEs from PUBLIC
# and the grants made on 0.1.0, carried over to the new signatures.
my $function_privileges = q{
SELECT string_agg(format('%s %s %s/%s', r.rolname, p.oid::regprocedure,
                         has_function_privilege(r.rolname, p.oid, 'EXECUTE'),
                         has_function_privilege(r.rolname, p.oid, 'EXECUTE WITH GRANT OPTION')),
                  E'\n' ORDER BY r.rolname COLLATE "C", p.oid::regprocedure::text COLLATE "C")
  FROM pg_proc p,
       (VALUES ('app_admin'), ('app_producer'), ('app_consumer'), ('app_other'), ('public')) r(rolname)
 WHERE p.pronamespace = 'broker'::regnamespace};
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION broker');
my %revoked_from_public = map { $_ => 1 } qw(enqueue enqueue_batch dequeue metrics);
my %granted = (
	'app_admin create_queue' => 't/f',
	'app_admin purge_queue' => 't/f',
	'app_admin metrics' => 't/f',
	'app_producer enqueue' => 't/t',
	'app_producer enqueue_batch' => 't/f',
	'app_consumer dequeue' => 't/f',
	'app_other enqueue' => 't/f');
my @want_privileges;
for my $line (split /\n/, $node->safe_psql('fresh', $function_privileges))
{
	my ($role, $fn, $privs) = $line =~ /^(\S+) broker\.(\S+?\(.*\)) (\S+)$/
	  or die "unexpected line: $line";
	(my $name = $fn) =~ s/\(.*//;
	$privs = 'f/f' if $revoked_from_public{$name};
	$privs = $granted{"$role $name"} if exists $granted{"$role $name"};
	push @want_privileges, "$role broker.$fn $privs";
}
is($sql->($function_privileges), join("\n", @want_privileges),
	'function privileges: grants, grant options and REVOKEs from PUBLIC carried over to the new signatures; '
	  . 'the rest as in a fresh installation');
is($sql->(q{SELECT has_table_privilege('app_admin', 'broker.messages', 'SELECT')}),
	't', 'a grant on the view broker.messages (replaced by the update) kept');
is($sql->(q{SELECT count(*) FROM pg_proc WHERE proname = 'upgrade_keep_acl'}),
	'0', 'no upgrade helper left behind');

# --- the messages behave as they did -------------------------------------------
# Queue "later": the delayed message and the one whose lease ends soon are
# not delivered yet (unless the machine was so slow that they are due:
# then that check is skipped, and so is the one at the end).
my $later_got = $sql->(q{SELECT count(*) FROM broker.dequeue('later', 10)});
my $later_ahead = $sql->(q{SELECT bool_and(vt > clock_timestamp()) FROM before_msgs WHERE id IN (102, 105)}) eq 't';
SKIP:
{
	skip 'the delay and the lease ended before the check (slow machine)', 1 unless $later_ahead;
	is($later_got, '0', 'later: neither the delayed message nor the leased one is delivered before its time');
}

is($sql->(q{SELECT state || ' ' || delivery_count || ' ' || payload::text FROM broker.status('orders', 2)}),
	'leased 1 {"n": 2}', 'status() of a message leased under 0.1.0');
is($sql->(q{
SELECT string_agg(format('%s dc=%s %s %s enq=%s exp=%s', d.id, d.delivery_count, d.payload, d.headers,
                         d.enqueued_at = b.enqueued_at, d.expires_at = b.expires_at), E'\n' ORDER BY d.id)
  FROM broker.dequeue('orders', 100, lease => '1 hour') d JOIN before_msgs b USING (id)}),
	join("\n",
		'1 dc=2 {"n": 1} {"h": "one"} enq=t exp=t',
		'5 dc=1 {"n": 5}  enq=t exp=t',
		'101 dc=1 {"n": 101}  enq=t exp=t'),
	'orders: the ready messages, in id order across segments, not the leased or exhausted ones');
is($sql->(q{SELECT count(*) FROM broker.messages WHERE id = 4}), '0',
	'the exhausted message left orders');
is($sql->(q{SELECT dead_lettered_total FROM broker.metrics('orders')}), '1', 'counted as dead-lettered');

# The leased ones: wrong receipt refused, right one works (both delete forms).
is($sql->(q{SELECT broker.delete('orders', 2, 42)}), 'f', 'a wrong receipt does not delete');
is($sql->(q{SELECT broker.extend_lease('orders', 2, 1111111111111111111, '2 hours') > now() + interval '119 minutes'}),
	't', 'the 0.1.0 receipt extends the lease');
is($sql->(q{SELECT count(*) FROM broker.dequeue('orders', 10)}), '0',
	'nothing else is deliverable in orders: the leased ones stay leased');
is($sql->(q{SELECT broker.delete('orders', '2', '1111111111111111111')}),
	't', 'the 0.1.0 receipt deletes (the text form new in 0.2.0)');
is($sql->(q{SELECT broker.release('orders', 3, 2222222222222222222)}), 't',
	'the 0.1.0 receipt releases');
my ($id3, $dc3, $receipt3, $pl3) = split /\|/, $sql->(q{
	SELECT id, delivery_count, receipt, payload::text || headers::text FROM broker.dequeue('orders', 10)});
is("$id3 $dc3 $pl3", '3 3 {"n": 3}{"h": "three"}', 'the released message comes next, once more delivered');
is($sql->("SELECT broker.delete('orders', 3, $receipt3)"), 't', 'and is deleted with its new receipt');

# dead-letter queue: the 0.1.0 message and the copies of the exhausted ones
is($sql->(q{SELECT count(*) FROM broker.dequeue('doomed')}), '0',
	'doomed: its exhausted message is not delivered');
is($sql->(q{SELECT string_agg(format('%s %s %s %s', id > 110, payload, headers, del), E'\n'
                             ORDER BY payload::text COLLATE "C")
              FROM (SELECT d.*, broker.delete('dead', d.id) AS del FROM broker.dequeue('dead', 10) d) x}),
	join("\n",
		'f {"n": "dead"} {"from": "orders"} t',
		't {"n": 4} {"h": "four"} t',
		't {"n": 7} {"h": "seven"} t'),
	'dead: its 0.1.0 message and both dead-lettered copies (new ids, payload and headers kept)');
is($sql->(q{SELECT dead_lettered_total FROM broker.metrics('doomed')}), '1', 'counted as dead-lettered');

# A new message goes the same way.
$sql->(q{SELECT broker.enqueue('doomed', '{"new": 1}')});
is($sql->(q{SELECT delivery_count FROM broker.dequeue('doomed', 1, lease => '100 ms')}), '1',
	'a new message on an upgraded queue, delivered once');
ok(poll($node, $db,
		q{SELECT count(*) FROM broker.dequeue('doomed');
		  SELECT count(*) FROM broker.dequeue('dead') WHERE payload = '{"new": 1}'},
		"0\n1", 30),
	'after max_deliveries it is moved to the dead-letter queue');

# other: ready ones only; the expired one never delivered, then removed
is($sql->(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM broker.dequeue('other', 100, lease => '1 hour')}),
	'103,106,107,108,109,110', 'other: the ready messages, not the expired one');
ok(poll($node, $db, 'SELECT count(*) FROM broker.messages WHERE id = 104', '0', 30),
	'the worker removes the expired message once the installation is updated');
is($sql->(q{SELECT expired_total FROM broker.metrics('other')}), '1', 'counted as expired');
is($sql->(q{SELECT count(*) FROM broker.delete('orders', ARRAY(SELECT id FROM broker.messages m
              JOIN broker.queue_defs q USING (queue_id) WHERE q.name = 'orders'))}),
	'3', 'orders: the rest deleted by id');

# --- everything new, on the upgraded installation -------------------------------
my $k1 = $sql->(q{SELECT broker.enqueue('orders', '{"d": 1}', dedup_key => 'order-1')});
cmp_ok($k1, '>', 110, 'enqueue with a dedup key: a new id');
is($sql->(q{SELECT broker.enqueue('orders', '{"d": 2}', dedup_key => 'order-1')}), $k1,
	'a duplicate within the default window returns the first id');
$sql->(q{
SELECT broker.enqueue('orders', '{"g": "a1"}', group_key => 'acct-1');
SELECT broker.enqueue('orders', '{"g": "a2"}', group_key => 'acct-1');
SELECT broker.enqueue('orders', '{"p": 9}', priority => 9);
SELECT count(*) FROM broker.enqueue_batch('orders', ARRAY['{"b": 1}', '{"b": 2}']::jsonb[],
                                          group_keys => ARRAY['acct-2', 'acct-2'],
                                          dedup_keys => ARRAY['b-1', 'b-2'], priority => 1);
});
is($sql->(q{SELECT string_agg(payload::text, ' ' ORDER BY ord)
              FROM broker.dequeue('orders', 10) WITH ORDINALITY AS d(id, payload, h, e, dc, l, x, r, ord)}),
	'{"p": 9} {"b": 1} {"d": 1} {"g": "a1"}',
	'priorities first, one message per group');
is($sql->(q{SELECT count(*) FROM broker.dequeue('orders', 10)}), '0', 'the groups wait for their heads');
$sql->(q{SELECT count(*) FROM broker.delete('orders', ARRAY(SELECT id FROM broker.messages m
          WHERE m.payload IN ('{"g": "a1"}', '{"b": 1}')))});
is($sql->(q{SELECT string_agg(payload::text, ' ' ORDER BY payload::text COLLATE "C") FROM broker.dequeue('orders', 10)}),
	'{"b": 2} {"g": "a2"}', 'the next of each group once the head is deleted');

is($sql->(q{SELECT broker.subscribe('other', 'shop.*.created')}), 't', 'subscribe an upgraded queue');
is($sql->(q{SELECT broker.subscribe('orders', 'shop.#')}), 't', 'and another');
is($sql->(q{SELECT broker.publish('shop.eu.created', '{"pub": 1}')}), '2', 'publish reaches both');
is($sql->(q{SELECT broker.publish('shop.eu', '{"pub": 2}')}), '1', 'publish reaches the matching one');
is($sql->(q{SELECT string_agg(queue || ' ' || pattern, ',' ORDER BY queue) FROM broker.subscriptions}),
	'orders shop.#,other shop.*.created', 'broker.subscriptions');
is($sql->(q{SELECT string_agg(payload::text || headers::text, ' ' ORDER BY id) FROM broker.dequeue('other', 10)}),
	'{"pub": 1}{"topic": "shop.eu.created"}', 'other got its copy');
is($sql->(q{SELECT string_agg(payload::text, ' ' ORDER BY id) FROM broker.dequeue('orders', 10)}),
	'{"pub": 1} {"pub": 2}', 'orders got both');

$sql->(q{SELECT broker.create_queue('jobs', lease => '1 minute', retention => '1 day',
                                    dedup_window => '1 hour')});
is($sql->(q{SELECT format('%s %s %s', lease, dedup_window, retention)
              FROM broker.queues WHERE queue = 'jobs'}),
	'00:01:00 01:00:00 1 day', 'create_queue with retention and a dedup window');
my @jobs = split /\n/, $sql->(q{
	SELECT broker.enqueue('jobs', jsonb_build_object('job', g)) FROM generate_series(1, 3) g});
$sql->(q{
SELECT count(broker.complete('jobs', d.id, d.receipt, '{"ok": true}'))
  FROM broker.dequeue('jobs', 1) d;
SELECT count(broker.fail('jobs', d.id, d.receipt, '{"err": "x"}'))
  FROM broker.dequeue('jobs', 1) d;
});
is($sql->(qq{SELECT string_agg(s.state || ' ' || coalesce(s.result::text, '-'), ',' ORDER BY s.id)
               FROM broker.status('jobs', ARRAY[$jobs[0], $jobs[1], $jobs[2]]) s}),
	'done {"ok": true},failed {"err": "x"},ready -', 'complete, fail and status');
is($sql->(q{SELECT count(*) FROM broker.archive('jobs')}), '2', 'archive');
is($sql->(q{SELECT completed_total || ' ' || failed_total FROM broker.metrics('jobs')}),
	'1 1', 'metrics: the new counters');
cmp_ok($sql->(q{SELECT count(*) FROM broker.maintain_segments()}), '==', 4, 'maintain_segments');

# roles: EXECUTE as carried over, and queue privileges (none after the
# update: a role with EXECUTE may not use a queue until granted)
is(sqlstate($node, q{SET ROLE app_producer; SELECT broker.enqueue('other', '{}')}, $db),
	'42501', 'app_producer may not enqueue before a queue privilege is granted');
$sql->(q{SELECT broker.grant('other', 'app_producer', 'produce'), broker.grant('other', 'app_consumer', 'consume')});
is($sql->(q{SELECT string_agg(queue || ' ' || role || ' ' || privilege, ',' ORDER BY role) FROM broker.grants}),
	'other app_consumer consume,other app_producer produce', 'broker.grants');
is($sql->(q{SET ROLE app_producer; SELECT broker.enqueue('other', '{"by": "producer"}', priority => 2) > 0}),
	't', 'app_producer enqueues once granted, with the new arguments');
is($sql->(q{SET ROLE app_consumer; SELECT payload FROM broker.dequeue('other')}),
	'{"by": "producer"}', 'app_consumer dequeues once granted');
is(sqlstate($node, q{SET ROLE app_consumer; SELECT broker.enqueue('other', '{}')}, $db),
	'42501', 'app_consumer still may not call enqueue (EXECUTE revoked on 0.1.0)');
is(sqlstate($node, q{SET ROLE app_other; SELECT broker.enqueue('orders', '{}')}, $db),
	'42501', 'app_other, with EXECUTE on enqueue, not on a queue it was not granted');
is($sql->(q{SET ROLE app_admin; SELECT broker.create_queue('by_admin', retention => '1 hour');
            SELECT count(*) FROM broker.metrics('by_admin')}),
	"\n1", 'app_admin creates queues with the new arguments and reads their metrics');
is(sqlstate($node, q{SET ROLE app_other; SELECT count(*) FROM broker.metrics()}, $db),
	'42501', 'app_other still may not call metrics');

# --- queue "later": the delayed message comes when due, the lease ends ----------
SKIP:
{
	skip 'the delay and the lease ended before the first check (slow machine)', 1 unless $later_ahead;
	ok(poll($node, $db,
			q{SELECT string_agg(format('%s %s %s', id, delivery_count, headers), ',' ORDER BY id)
			    FROM broker.dequeue('later', 10)},
			'102 1 {"d": 1},105 2 ', 60),
		'later: the delayed message comes when due, the leased one once its 0.1.0 lease ends');
}

# --- the objects are those of a fresh installation -----------------------------
# Everything the extension consists of, as text: members, columns,
# constraints, indexes, views, functions, types, sequences, dumped tables,
# privileges and constraint names separately (the upgraded database has
# grants of its own).
my $objects = q{
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'broker'),
nsp AS (SELECT 'broker'::regnamespace AS oid)
SELECT line FROM (
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid) AS line
    FROM pg_depend d, ext
   WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL
  SELECT format('relation %s kind=%s options=%s', c.oid::regclass, c.relkind, c.reloptions)
    FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid
  UNION ALL
  SELECT format('column %s %s %s %s notnull=%s collation=%s', a.attrelid::regclass,
                a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                a.attcollation::regcollation)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid, nsp
   WHERE c.relnamespace = nsp.oid AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT format('default %s.%s %s', ad.adrelid::regclass, a.attname, pg_get_expr(ad.adbin, ad.adrelid))
    FROM pg_attrdef ad JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    JOIN pg_class c ON c.oid = ad.adrelid, nsp WHERE c.relnamespace = nsp.oid
  UNION ALL
  SELECT format('constraint %s %s', co.conrelid::regclass, pg_get_constraintdef(co.oid))
    FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid, nsp WHERE c.relnamespace = nsp.oid
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid, nsp WHERE c.relnamespace = nsp.oid
  UNION ALL
  SELECT format('view %s %s', c.oid::regclass, pg_get_viewdef(c.oid))
    FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid AND c.relkind = 'v'
  UNION ALL
  SELECT format('sequence %s %s %s %s %s %s', s.seqrelid::regclass, s.seqtypid::regtype,
                s.seqstart, s.seqincrement, s.seqmax, s.seqmin)
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid, nsp WHERE c.relnamespace = nsp.oid
  UNION ALL
  SELECT format('function %s (%s) returns %s language=%s secdef=%s config=%s volatile=%s parallel=%s strict=%s rows=%s cost=%s symbol=%s library=%s',
                p.oid::regprocedure, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                l.lanname, p.prosecdef, p.proconfig, p.provolatile, p.proparallel, p.proisstrict,
                p.prorows, p.procost, CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END,
                p.probin)
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, nsp WHERE p.pronamespace = nsp.oid
  UNION ALL
  SELECT format('type %s type=%s', t.oid::regtype, t.typtype)
    FROM pg_type t, nsp WHERE t.typnamespace = nsp.oid
  UNION ALL
  SELECT format('dumped %s %s', x.rel::regclass, x.cond)
    FROM ext, unnest(ext.extconfig, ext.extcondition) AS x(rel, cond)
) o ORDER BY line COLLATE "C"};
# (the effective ACLs: NULL means the default; items sorted)
my $privileges = q{
WITH acls AS (
  SELECT format('relation %s', c.oid::regclass) AS obj,
         coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner)) AS acl
    FROM pg_class c WHERE c.relnamespace = 'broker'::regnamespace
  UNION ALL
  SELECT format('function %s', p.oid::regprocedure), coalesce(p.proacl, acldefault('f', p.proowner))
    FROM pg_proc p WHERE p.pronamespace = 'broker'::regnamespace
  UNION ALL
  SELECT 'schema', coalesce(n.nspacl, acldefault('n', n.nspowner)) FROM pg_namespace n WHERE n.nspname = 'broker'
  UNION ALL
  SELECT format('type %s', t.oid::regtype), coalesce(t.typacl, acldefault('T', t.typowner))
    FROM pg_type t WHERE t.typnamespace = 'broker'::regnamespace
)
SELECT line FROM (
  SELECT obj || ' ' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text COLLATE "C") FROM unnest(acl) a), '') AS line
    FROM acls) o
 ORDER BY line COLLATE "C"};

$node->safe_psql('postgres', 'CREATE DATABASE bare');
$node->safe_psql('bare', q{CREATE EXTENSION broker VERSION '0.1.0'; ALTER EXTENSION broker UPDATE});
my $fresh = $node->safe_psql('fresh', $objects);
my @fresh_lines = split /\n/, $fresh;
cmp_ok(scalar(@fresh_lines), '>', 100, 'the description of a fresh installation is not empty');
my $diff = sub {
	my ($x, $y) = @_;
	my %in_a = map { $_ => 1 } split /\n/, $x;
	my %in_b = map { $_ => 1 } split /\n/, $y;
	return join("\n", (map { "- $_" } grep { !$in_b{$_} } sort keys %in_a),
		(map { "+ $_" } grep { !$in_a{$_} } sort keys %in_b));
};
is($diff->($fresh, $node->safe_psql('bare', $objects)), '',
	'an updated empty installation has the objects of a fresh 0.2.0 one');
is($diff->($fresh, $sql->($objects)), '',
	'so has the updated installation with data');
is($diff->($node->safe_psql('fresh', $privileges), $node->safe_psql('bare', $privileges)), '',
	'and the privileges of a fresh one, when none were changed');
# Names matter to later upgrade scripts (ALTER TABLE ... DROP CONSTRAINT).
my $constraint_names = q{SELECT string_agg(conrelid::regclass || ' ' || conname, E'\n'
                                           ORDER BY conrelid::regclass::text COLLATE "C", conname COLLATE "C")
                           FROM pg_constraint WHERE connamespace = 'broker'::regnamespace};
is($diff->($node->safe_psql('fresh', $constraint_names), $node->safe_psql('bare', $constraint_names)), '',
	'and the constraint names of a fresh one');

# --- a second update is a no-op -------------------------------------------------
my $everything = qq{$objects; $privileges; $messages_as_table ORDER BY 2, 3;
	SELECT * FROM broker.queue_defs ORDER BY queue_id; $state;
	SELECT * FROM broker.subscription_defs ORDER BY 1, 2;
	SELECT * FROM broker.grant_defs ORDER BY 1, 2, 3};
my $before = $sql->($everything);
my ($ret, $stdout, $stderr) = $node->psql($db, 'ALTER EXTENSION broker UPDATE');
is($ret, 0, 'a second ALTER EXTENSION UPDATE succeeds');
like($stderr, qr/version "0.2.0" of extension "broker" is already installed/, 'and says there is nothing to do');
($ret, $stdout, $stderr) = $node->psql($db, q{ALTER EXTENSION broker UPDATE TO '0.2.0'});
is($ret, 0, 'so does UPDATE TO 0.2.0');
is($sql->($everything), $before, 'nothing changed: objects, privileges, messages, queues, segments');
is($sql->(q{SELECT extversion FROM pg_extension WHERE extname = 'broker'}), '0.2.0', 'still 0.2.0');
is(sqlstate($node, q{ALTER EXTENSION broker UPDATE TO '0.1.0'}, $db), '22023',
	'there is no way down to 0.1.0');

# The worker complained about the 0.1.0 installation at most now and then.
my @version_errors = grep { /is at version 0.1.0/ } split /\n/, log_errors($node, $log_offset);
note scalar(@version_errors) . ' log lines about the 0.1.0 installation while it was not updated';
unlike(slurp_file($node->logfile, $log_offset), qr/PANIC|TRAP|terminated by signal/,
	'no crash');

$node->stop;
done_testing();
