# 005_longpoll.pl: dequeue(..., wait => ...) sleeps until a producer's
# commit, a delay or a lease running out wakes it; one message wakes about
# one waiter; a rolled-back enqueue wakes nobody; statement_timeout ends
# the wait with 57014; a waiter does not hold back the xmin horizon; a
# commit between a waiter's look and its sleep still wakes it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);
use lib 'test/perl';
use BrokerTest;

my $node = PostgreSQL::Test::Cluster->new('longpoll');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'broker'\nmax_connections = 60\nautovacuum = off");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION broker;
	SELECT broker.create_queue('lp');
	SELECT broker.create_queue('herd');
	CREATE TABLE churn (id int PRIMARY KEY, v int);
	INSERT INTO churn SELECT g, 0 FROM generate_series(1, 1000) g;
});

# Start a psql running one statement in the background; returns the handle
# and references to its output.
sub background
{
	my ($sql, $appname) = @_;
	my ($out, $err) = ('', '');
	local $ENV{PGAPPNAME} = $appname;
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-h', $node->host, '-p', $node->port, '-c', $sql, 'postgres' ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, started => time };
}

# Wait until n sessions with this application_name wait in the broker.
sub wait_for_waiters
{
	my ($appname, $n) = @_;
	$node->poll_query_until('postgres', qq{
		SELECT count(*) = $n FROM pg_stat_activity
		 WHERE application_name = '$appname' AND wait_event_type = 'Extension'})
	  or die "waiters $appname did not start";
}

# --- wakes on commit, before the wait ends ---------------------------------
my $w = background(q{SELECT payload->>'n' FROM broker.dequeue('lp', 1, wait => '30 s')}, 'w1');
wait_for_waiters('w1', 1);
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE application_name = 'w1'");
is($node->safe_psql('postgres', "SELECT backend_xmin IS NULL AND backend_xid IS NULL FROM pg_stat_activity WHERE pid = $pid"),
	't', 'a waiting dequeue holds neither an xmin nor an xid');

# rows that die while it waits can be vacuumed
$node->safe_psql('postgres', 'UPDATE churn SET v = v + 1');
my ($rc, $vout, $verr) = $node->psql('postgres', 'VACUUM (VERBOSE) churn');
like($verr, qr/tuples: 1000 removed, 1000 remain, 0 are dead but not yet removable/,
	'VACUUM removes the rows that died during the wait');

# a rolled-back enqueue wakes nobody for nothing
my $wk0 = $node->safe_psql('postgres', "SELECT wakeups FROM broker.waiters('lp')");
$node->safe_psql('postgres', q{BEGIN; SELECT broker.enqueue('lp', '{"n": 0}'); ROLLBACK;});
usleep(300_000);
is($node->safe_psql('postgres', "SELECT wakeups FROM broker.waiters('lp')"), $wk0,
	'a rolled-back enqueue wakes no waiter');
ok($w->{h}->pumpable, 'the waiter still waits after a rollback');

my $t0 = time;
$node->safe_psql('postgres', q{SELECT broker.enqueue('lp', '{"n": 1}')});
$w->{h}->finish;
my $took = time - $t0;
is(${ $w->{out} }, "1\n", 'the waiter got the committed message');
cmp_ok($took, '<', 5, "woken by the commit long before its 30 s wait ended (${took}s)");

# --- returns empty at the end of the wait -----------------------------------
$t0 = time;
is($node->safe_psql('postgres', q{SELECT count(*) FROM broker.dequeue('lp', 1, wait => '700 ms')}),
	'0', 'empty after the wait');
cmp_ok(time - $t0, '>=', 0.69, 'and it waited the whole wait');

# --- wakes when a delay or a lease runs out ---------------------------------
$node->safe_psql('postgres', q{SELECT broker.enqueue('lp', '{"n": 2}', delay => '1 s')});
$t0 = time;
is($node->safe_psql('postgres', q{SELECT payload->>'n' FROM broker.dequeue('lp', 1, wait => '20 s')}),
	'2', 'a delayed message is delivered to a waiter when it becomes due');
$took = time - $t0;
cmp_ok($took, '<', 3, "woken when the delay ran out (${took}s)");

$node->safe_psql('postgres', q{SELECT broker.enqueue('lp', '{"n": 3}')});
$node->safe_psql('postgres', q{SELECT count(*) FROM broker.dequeue('lp', 1, lease => '1 s')});
$t0 = time;
is($node->safe_psql('postgres', q{SELECT delivery_count FROM broker.dequeue('lp', 1, wait => '20 s')}),
	'2', 'a message whose lease ran out is redelivered to a waiter');
$took = time - $t0;
cmp_ok($took, '<', 3, "woken when the lease ran out (${took}s)");

# an aborted dequeue gives the message back to a waiter at once
$node->safe_psql('postgres', q{SELECT broker.purge_queue('lp'); SELECT broker.enqueue('lp', '{"n": 4}')});
my $holder = background(q{BEGIN; SELECT count(*) FROM broker.dequeue('lp'); SELECT pg_sleep(1.5); ROLLBACK;}, 'holder');
usleep(500_000);
$t0 = time;
is($node->safe_psql('postgres', q{SELECT payload->>'n' FROM broker.dequeue('lp', 1, wait => '20 s')}),
	'4', 'a message given back by an aborted dequeue reaches a waiter');
$took = time - $t0;
cmp_ok($took, '<', 4, "woken by the rollback (${took}s)");
$holder->{h}->finish;

# --- one message wakes about one waiter -------------------------------------
my @herd = map { background(q{SELECT payload->>'n' FROM broker.dequeue('herd', 1, wait => '30 s')}, 'herd') } 1 .. 8;
wait_for_waiters('herd', 8);
my $empty0 = $node->safe_psql('postgres', "SELECT empty_wakeups FROM broker.waiters('herd')");
$node->safe_psql('postgres', q{SELECT broker.enqueue('herd', '{"n": 1}')});
$node->poll_query_until('postgres', q{
	SELECT count(*) = 7 FROM pg_stat_activity
	 WHERE application_name = 'herd' AND wait_event_type = 'Extension'})
  or die 'no waiter returned';
usleep(300_000);
is($node->safe_psql('postgres', "SELECT waiting FROM broker.waiters('herd')"), '7',
	'one message: one waiter returned, seven still wait');
my $empty = $node->safe_psql('postgres', "SELECT empty_wakeups FROM broker.waiters('herd')") - $empty0;
cmp_ok($empty, '<=', 1, "no herd: $empty waiters woke for nothing");
$node->safe_psql('postgres', q{SELECT broker.enqueue_batch('herd', array_fill('{"n": 2}'::jsonb, ARRAY[7]))});
$_->{h}->finish for @herd;
is(join('', sort map { ${ $_->{out} } } @herd), "1\n" . ("2\n" x 7), 'a batch of seven wakes the other seven');

# --- statement_timeout cancels a wait ---------------------------------------
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SET statement_timeout = '300ms'; SELECT * FROM broker.dequeue('lp', 1, wait => '30 s')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/57014/, 'statement_timeout ends the wait with 57014');

# --- pg_cancel_backend cancels a wait ---------------------------------------
$w = background(q{SELECT * FROM broker.dequeue('lp', 1, wait => '30 s')}, 'w2');
wait_for_waiters('w2', 1);
$node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'w2'");
$w->{h}->finish;
like(${ $w->{err} }, qr/canceling statement due to user request/, 'pg_cancel_backend ends the wait');
is($node->safe_psql('postgres', "SELECT waiting FROM broker.waiters('lp')"), '0', 'no waiter left behind');

# --- no wake-up lost between a waiter's look and its sleep -------------------
# A commit that lands after a waiter looked but before it slept must wake it:
# the waiter is counted before its first look (wait.c).  One consumer and no
# pause between messages, so each commit races the consumer's next look.  A
# lost wake-up costs the whole wait (30 s): counting the waiter only when it
# went to sleep lost about one in a thousand.
my ($tool_rc, $out) = client_tool($node, 'wake_latency', '-c', '1', '-i', '0',
	'-n', '5000', '--wait', '30', '--sync-commit', 'off');
is($tool_rc, 0, 'wake_latency ran') or diag($out);
my ($max) = $out =~ /COMMIT sent to dequeue returned \(ms\):.*max ([0-9.]+)/;
ok(defined $max && $max < 10_000,
	'no lost wake-up: the slowest of 5,000 messages took ' . ($max // '?') . ' ms')
  or diag($out);

$node->stop;
done_testing();
