# 011_worker_crash.pl: the background worker after crashes, and without
# preload.
#
#   - kill -9 of the reaper: the postmaster restarts every process (crash
#     restart); the launcher and the reaper come back and expire messages;
#   - kill -9 of the postmaster (a crash of the server), then a start: the
#     same;
#   - kill -TERM of the launcher: the postmaster starts it again (its
#     bgw_restart_time) and it starts its reapers again;
#   - without shared_preload_libraries: no worker, health() returns one row
#     saying preloaded = false with both versions, and reap() works.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;
use Time::HiRes qw(usleep time);


# pids of the launcher and of the reaper of postgres, "launcher|reaper".
sub worker_pids
{
	my ($node) = @_;
	return $node->safe_psql(
		'postgres', q{
SELECT coalesce(max(pid) FILTER (WHERE backend_type = 'broker launcher'), 0) || '|' ||
       coalesce(max(pid) FILTER (WHERE backend_type = 'broker reaper'
                                   AND datname = 'postgres'), 0)
  FROM pg_stat_activity});
}

# Wait until both workers run, with pids other than $old; return the new ones.
sub workers_back
{
	my ($node, $old, $what) = @_;
	my ($ol, $or) = split /\|/, $old;
	my $ok = poll(
		$node, 'postgres', qq{
SELECT count(*) FILTER (WHERE backend_type = 'broker launcher' AND pid <> $ol)
       || '|' ||
       count(*) FILTER (WHERE backend_type = 'broker reaper' AND datname = 'postgres'
                          AND pid <> $or)
  FROM pg_stat_activity}, '1|1', 30);
	ok($ok, "$what: the launcher and the reaper are back (new pids)");
	return worker_pids($node);
}

# Enqueue messages that expire at once and wait until the reaper removed them.
sub expiry_works
{
	my ($node, $what) = @_;
	$node->safe_psql('postgres',
		q{SELECT broker.enqueue('q', '{}', ttl => '300 ms') FROM generate_series(1, 10)});
	ok( poll(
			$node, 'postgres',
			'SELECT count(*) FROM broker.messages WHERE expires_at IS NOT NULL',
			'0', 10),
		"$what: expired messages are removed again");
}

my $node = PostgreSQL::Test::Cluster->new('worker_crash');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.reaper_interval = '200ms'
restart_after_crash = on
log_statement = none
});
$node->start;
$node->safe_psql('postgres',
	q{CREATE EXTENSION broker; SELECT broker.create_queue('q');});
ok(poll($node, 'postgres', q{SELECT count(*) FROM broker.health() WHERE pid > 0}, '1', 10),
	'the reaper runs');
my $pids = worker_pids($node);
expiry_works($node, 'at start');

# --- kill -9 of the reaper ---------------------------------------------------
my ($launcher, $reaper) = split /\|/, $pids;
my $offset = -s $node->logfile;
kill 'KILL', $reaper;
ok( $node->wait_for_log(
		qr/all server processes terminated; reinitializing/, $offset),
	'kill -9 of the reaper: the postmaster restarts all processes');
$pids = workers_back($node, $pids, 'after kill -9 of the reaper');
expiry_works($node, 'after kill -9 of the reaper');

# --- kill -9 of the postmaster (a crash of the server) -----------------------
$offset = -s $node->logfile;
$node->kill9;
# The children notice the postmaster's death; wait until the old ones left.
for my $pid (split /\|/, $pids)
{
	my $deadline = time + 30;
	usleep(50_000) while kill(0, $pid) && time < $deadline;
}
# Old children may still hold the shared memory for a moment: retry.
my $started = 0;
for (1 .. 20)
{
	last if ($started = $node->start(fail_ok => 1));
	sleep 1;
}
ok($started, 'the server starts again after the crash');
ok( $node->log_contains(
		'database system was interrupted|was not properly shut down', $offset),
	'the server went through crash recovery');
$pids = workers_back($node, $pids, 'after a crash of the server');
expiry_works($node, 'after a crash of the server');

# --- kill -TERM of the launcher ----------------------------------------------
($launcher, $reaper) = split /\|/, $pids;
kill 'TERM', $launcher;
ok( poll(
		$node, 'postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE pid IN ($launcher, $reaper)},
		'0', 10),
	'kill -TERM of the launcher: it ends, and its reapers with it');
$pids = workers_back($node, $pids, 'after kill -TERM of the launcher');
expiry_works($node, 'after kill -TERM of the launcher');

is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_stat_activity
		   WHERE backend_type IN ('broker launcher', 'broker reaper')}),
	'2', 'exactly one launcher and one reaper (postgres is the only database)');

$node->stop;

# --- without shared_preload_libraries ----------------------------------------
my $plain = PostgreSQL::Test::Cluster->new('worker_plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres',
	q{CREATE EXTENSION broker; SELECT broker.create_queue('q');});
is( $plain->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'broker%'}),
	'0', 'without preload: no worker');
is( $plain->safe_psql(
		'postgres',
		q{SELECT database IS NULL, pid IS NULL, state IS NULL, last_pass_at IS NULL,
		         last_pass_duration IS NULL, removed_total IS NULL,
		         library_version, extension_version, preloaded
		    FROM broker.health()}),
	't|t|t|t|t|t|0.2.0|0.2.0|f',
	'without preload: health() is one row saying preloaded = false');

# enqueue needs shared memory; write expired messages directly.
$plain->safe_psql(
	'postgres', q{
INSERT INTO broker.messages_0 (queue_id, id, vt, enqueued_at, expires_at, payload)
SELECT 1, i, now(), now() - interval '1 min', now() - interval '1 s', '{}'
  FROM generate_series(1, 1500) i;
INSERT INTO broker.messages_0 (queue_id, id, vt, enqueued_at, expires_at, payload)
VALUES (1, 2000, now(), now(), NULL, '{}');
});
is($plain->safe_psql('postgres', q{SELECT broker.reap('q')}),
	'1500', 'without preload: reap() removes the expired messages');
is($plain->safe_psql('postgres', q{SELECT count(*) FROM broker.messages}),
	'1', 'and only those');
$plain->stop;

done_testing();
