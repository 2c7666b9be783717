# 010_worker.pl: the background worker on a running primary.
#
# One node with broker preloaded and broker.reaper_interval = 200ms:
#   - the launcher and one reaper per database are in pg_stat_activity
#     (backend_type 'broker launcher' / 'broker reaper'), and a database
#     without the extension is shown "waiting for extension";
#   - messages with a ttl are removed with no client call, counted in
#     metrics.expired_total and in health().removed_total;
#   - broker.reap() removes exactly the expired messages, of one queue or
#     all, skips a row another session holds (never waits), and refuses bad
#     or missing queue names (42602, 42704);
#   - broker.reaper_interval is reloaded on SIGHUP (pass spacing in
#     health().last_pass_at);
#   - kill -TERM of a reaper: the launcher starts it again;
#   - DROP EXTENSION / CREATE EXTENSION while the reaper runs: no error in
#     the log, and expiry works again afterwards;
#   - a new database with the extension is served within seconds; DROP
#     DATABASE, CREATE DATABASE ... TEMPLATE and ALTER DATABASE RENAME of a
#     served database succeed at once;
#   - broker.databases narrows the databases served.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use lib 'test/perl';
use BrokerTest;

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.reaper_interval = '200ms'
log_statement = none
});
$node->start;

# --- the processes -----------------------------------------------------------
ok( poll(
		$node, 'postgres',
		q{SELECT count(*) FILTER (WHERE backend_type = 'broker launcher' AND datname IS NULL)
		      || '|' || count(*) FILTER (WHERE backend_type = 'broker reaper' AND datname = 'postgres')
		    FROM pg_stat_activity},
		'1|1', 10),
	'pg_stat_activity shows the broker launcher and a broker reaper in postgres');

$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('postgres', 'CREATE EXTENSION broker');

ok( poll(
		$node, 'postgres',
		q{SELECT string_agg(database || ':' || state || ':' || (pid > 0), ',' ORDER BY database)
		    FROM broker.health()},
		'other:waiting for extension:true,postgres:idle:true', 10),
	'health(): one row per database, "waiting for extension" where it is not installed');

is( $node->safe_psql(
		'postgres',
		q{SELECT library_version, extension_version, preloaded,
		         last_pass_at > now() - interval '5 s',
		         last_pass_duration < interval '5 s', removed_total
		    FROM broker.health() WHERE database = 'postgres'}),
	'0.2.0|0.2.0|t|t|t|0',
	'health(): versions, preloaded, a recent pass, removed_total 0');

# --- expiry without any client call ------------------------------------------
$node->safe_psql(
	'postgres', q{
SELECT broker.create_queue('q');
SELECT broker.create_queue('r', default_ttl => '300 ms');
SELECT broker.enqueue('q', '{"n": 1}', ttl => '300 ms') FROM generate_series(1, 5);
SELECT broker.enqueue('q', '{"keep": true}') FROM generate_series(1, 3);
SELECT broker.enqueue('r', '{"n": 2}') FROM generate_series(1, 4);
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM broker.messages'),
	'12', 'twelve messages enqueued, nine of them with a ttl of 300 ms');

my $t0 = time;
ok( poll(
		$node, 'postgres',
		'SELECT count(*) FROM broker.messages WHERE expires_at IS NOT NULL',
		'0', 10),
	'the reaper removes expired messages with no client call');
note sprintf('removed within %.2f s', time - $t0);
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(queue || ':' || total || ':' || expired_total, ',' ORDER BY queue)
		    FROM broker.metrics()}),
	'q:3:5,r:0:4',
	'messages without a ttl stay; expired_total counts the removed ones per queue');
is( $node->safe_psql(
		'postgres',
		q{SELECT removed_total FROM broker.health() WHERE database = 'postgres'}),
	'9', 'health().removed_total counts them too');

# --- broker.reap() -----------------------------------------------------------

# A long interval keeps the worker out of the way (this also shows that a
# reload changes the interval: no pass for a while).
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.reaper_interval = '1h'; SELECT pg_reload_conf()});
ok( poll(
		$node, 'postgres',
		q{SELECT setting FROM pg_settings WHERE name = 'broker.reaper_interval'},
		'3600000', 10),
	'the new interval is loaded');
sleep 1;    # the reaper has reloaded too (it is signalled at once)
my $last = $node->safe_psql('postgres',
	q{SELECT last_pass_at FROM broker.health() WHERE database = 'postgres'});
$node->safe_psql(
	'postgres', q{
SELECT broker.enqueue('q', '{}', ttl => '1 ms') FROM generate_series(1, 7);
SELECT broker.enqueue('r', '{}', ttl => '1 ms') FROM generate_series(1, 2500);
SELECT broker.enqueue('r', '{}', ttl => '1 hour') FROM generate_series(1, 2);
SELECT pg_sleep(0.05);
});
usleep(500_000);
is( $node->safe_psql(
		'postgres',
		q{SELECT last_pass_at FROM broker.health() WHERE database = 'postgres'}),
	$last,
	'with broker.reaper_interval = 1h (reloaded) no pass ran for 1.5 s');
is($node->safe_psql('postgres', q{SELECT broker.reap('q')}),
	'7', 'reap(q) removes exactly the 7 expired messages of q');
is($node->safe_psql('postgres', q{SELECT broker.reap('q')}),
	'0', 'reap(q) again: nothing left to remove');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM broker.messages m JOIN broker.queue_defs d
		               USING (queue_id) WHERE d.name = 'r'}),
	'2502', 'r was not touched by reap(q)');

# A row held by another transaction is skipped, not waited for.
my $holder = BrokerTest::Session->new($node, 'postgres', 'postgres');
$holder->safe(
	q{BEGIN; SELECT id FROM broker.messages_0   -- segment 0: far fewer than broker.segment_size ids so far
	   WHERE queue_id = (SELECT queue_id FROM broker.queue_defs WHERE name = 'r')
	     AND expires_at < now() ORDER BY id LIMIT 1 FOR UPDATE;});
$t0 = time;
is($node->safe_psql('postgres', q{SELECT broker.reap()}),
	'2499', 'reap() removes the expired messages in batches, skipping the locked row');
ok(time - $t0 < 5, 'reap() did not wait for the row lock');
$holder->safe('COMMIT');
$holder->quit;
is($node->safe_psql('postgres', q{SELECT broker.reap(NULL)}),
	'1', 'reap(NULL) removes it once it is released');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(queue || ':' || total || ':' || expired_total, ',' ORDER BY queue)
		    FROM broker.metrics()}),
	'q:3:12,r:2:2504',
	'reap() counts into expired_total exactly');
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT broker.enqueue('q', '{}', ttl => '1 ms');
SELECT pg_sleep(0.01);
SELECT broker.reap();
ROLLBACK;
});
is($node->safe_psql('postgres', q{SELECT expired_total FROM broker.metrics('q')}),
	'12', 'a rolled-back reap() counts nothing');

is(sqlstate($node, q{SELECT broker.reap('No such')}),
	'42602', 'reap(malformed name): 42602');
is(sqlstate($node, q{SELECT broker.reap('missing')}),
	'42704', 'reap(missing queue): 42704');

# --- SIGHUP changes the interval ---------------------------------------------

# Distinct last_pass_at values seen over $secs seconds; returns the gaps.
sub pass_gaps
{
	my ($secs) = @_;
	my @seen;
	my $end = time + $secs;
	while (time < $end)
	{
		my $t = $node->safe_psql('postgres',
			q{SELECT extract(epoch FROM last_pass_at) FROM broker.health()
			   WHERE database = 'postgres'});
		push @seen, $t if !@seen || $seen[-1] != $t;
		usleep(50_000);
	}
	return map { $seen[$_] - $seen[ $_ - 1 ] } 1 .. $#seen;
}

$node->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.reaper_interval = '2s'; SELECT pg_reload_conf()});
usleep(500_000);    # the reaper has the new value
my @gaps = pass_gaps(5.5);
note 'gaps at 2s: ' . join(' ', map { sprintf '%.3f', $_ } @gaps);
ok(@gaps >= 1 && @gaps <= 3 && !grep({ $_ < 1.8 || $_ > 2.6 } @gaps),
	'broker.reaper_interval = 2s after a reload: passes 2 s apart');

$node->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.reaper_interval = '200ms'; SELECT pg_reload_conf()});
sleep 1;
@gaps = pass_gaps(1.5);
note 'gaps at 200ms: ' . join(' ', map { sprintf '%.3f', $_ } @gaps);
ok(@gaps >= 3 && !grep({ $_ > 1.0 } @gaps),
	'broker.reaper_interval = 200ms after a reload: passes 200 ms apart');

# --- kill -TERM of the reaper ------------------------------------------------
my $reaper = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity
	   WHERE backend_type = 'broker reaper' AND datname = 'postgres'});
kill 'TERM', $reaper;
ok( poll(
		$node, 'postgres',
		qq{SELECT count(*) FROM pg_stat_activity
		    WHERE backend_type = 'broker reaper' AND datname = 'postgres'
		      AND pid <> $reaper},
		'1', 10),
	'after kill -TERM the launcher starts the reaper again');
$node->safe_psql('postgres',
	q{SELECT broker.enqueue('q', '{}', ttl => '300 ms')});
ok( poll(
		$node, 'postgres',
		q{SELECT count(*) FROM broker.messages m JOIN broker.queue_defs d
		   USING (queue_id) WHERE d.name = 'q'}, '3', 10),
	'and the new reaper removes expired messages');

# --- DROP EXTENSION / CREATE EXTENSION while the reaper runs -----------------
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.reaper_interval = '10ms'; SELECT pg_reload_conf()});
my $offset = -s $node->logfile;
for my $i (1 .. 15)
{
	$node->safe_psql(
		'postgres', q{
DROP EXTENSION broker;
CREATE EXTENSION broker;
SELECT broker.create_queue('q');
SELECT broker.enqueue('q', '{}', ttl => '1 ms') FROM generate_series(1, 50);
});
	usleep(20_000 * ($i % 3));
}
$node->safe_psql('postgres', 'DROP EXTENSION broker');
usleep(300_000);
$node->safe_psql('postgres', 'CREATE EXTENSION broker');
$node->safe_psql('postgres', q{SELECT broker.create_queue('q')});
$node->safe_psql('postgres',
	q{SELECT broker.enqueue('q', '{}', ttl => '300 ms') FROM generate_series(1, 10)});
ok(poll($node, 'postgres', 'SELECT count(*) FROM broker.messages', '0', 10),
	'after DROP and CREATE EXTENSION the reaper removes expired messages again');
is(log_errors($node, $offset), '',
	'no error in the log while the extension was dropped and created 16 times');
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.reaper_interval = '200ms'; SELECT pg_reload_conf()});

# --- a new database is served ------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE newdb');
$node->safe_psql(
	'newdb', q{
CREATE EXTENSION broker;
SELECT broker.create_queue('n');
SELECT broker.enqueue('n', '{}', ttl => '300 ms') FROM generate_series(1, 20);
});
$t0 = time;
ok(poll($node, 'newdb', 'SELECT count(*) FROM broker.messages', '0', 10),
	'a new database with the extension is served');
note sprintf('served within %.2f s of CREATE EXTENSION', time - $t0);
is( $node->safe_psql(
		'newdb',
		q{SELECT state || ':' || removed_total FROM broker.health() WHERE database = 'newdb'}),
	'idle:20', 'health() shows its reaper and what it removed');

# --- commands that need a database to themselves -----------------------------
$t0 = time;
$node->safe_psql('postgres', 'CREATE DATABASE copy TEMPLATE newdb');
$node->safe_psql('postgres', 'ALTER DATABASE other RENAME TO other2');
$node->safe_psql('postgres', 'DROP DATABASE newdb');
ok(time - $t0 < 4,
	'CREATE DATABASE TEMPLATE, ALTER DATABASE RENAME and DROP DATABASE of served databases succeed at once'
);
is($node->safe_psql('copy', 'SELECT count(*) FROM broker.queues'),
	'1', 'the copy has the template\'s queue');
ok( poll(
		$node, 'postgres',
		q{SELECT string_agg(database, ',' ORDER BY database) FROM broker.health()},
		'copy,other2,postgres', 15),
	'the copy and the renamed database are served; the dropped one is forgotten');

# --- broker.databases --------------------------------------------------------
$node->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.databases = 'postgres, nosuchdb'; SELECT pg_reload_conf()});
ok( poll(
		$node, 'postgres',
		q{SELECT string_agg(database, ',' ORDER BY database) FROM broker.health()},
		'postgres', 10),
	'broker.databases = postgres: only postgres is served');
ok($node->wait_for_log(qr/broker.databases names "nosuchdb"/, $offset),
	'a name that matches no database is reported in the log');
$node->safe_psql('postgres',
	q{ALTER SYSTEM RESET broker.databases; SELECT pg_reload_conf()});
ok( poll(
		$node, 'postgres',
		q{SELECT string_agg(database, ',' ORDER BY database) FROM broker.health()},
		'copy,other2,postgres', 10),
	'broker.databases reset: every database is served again');
is(sqlstate($node, q{ALTER SYSTEM SET broker.databases = 'a,,b'}),
	'22023', 'a malformed broker.databases is refused');

$node->stop;
done_testing();
