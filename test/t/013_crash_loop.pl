# 013_crash_loop.pl: a short crash loop (test/crash/README.md).
#
# test/crash/load.py runs a mixed load (producers with enqueue,
# enqueue_batch and publish, ttl, delay and priorities, group keys into a
# queue of ordered groups, dedup keys on some calls, retried after a crash
# and now and then after a confirmed COMMIT; consumers that remove in the
# dequeuing transaction or later with the receipt, extend, release, or
# leave leases to run out, and complete or fail the messages of a queue
# with a retention) on queues with short leases, dead-letter queues, a
# default ttl, a 10 s dedup window and three queues subscribed to the
# topics, with broker.segment_size = 200 so that segments rotate.
# Meanwhile the server is crashed five times: three kill -9 of the
# postmaster (and of every process left of it) followed by a start, one
# kill -9 of a client backend in broker.dequeue and one of a broker
# background worker (after which the postmaster restarts every backend).
# Before each crash, and twice after the last one, check.py checks under
# load that the gauges match the rows, that no message is below its
# queue's low-water mark, that every message waiting in an ordered group
# has a head, and that no message is both queued and recorded.  Then
# test/crash/check.py proves from the clients' logs that no committed
# message was lost, no removed one came back, no message was held under two
# valid leases, no ready message is stuck, the gauges of broker.metrics()
# match the rows, groups were delivered one message at a time in id order,
# no dedup key was stored twice within its window and every retry got the
# stored id back, every publish put a copy into each subscribed queue or
# none, every complete and fail left its record (broker.status), and
# dequeue returned higher priorities first.
#
# Needs /usr/bin/python3 with psycopg 3 (Debian: python3-psycopg); skipped
# without it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd ();
use File::Basename ();
use IPC::Run;
use Time::HiRes qw(usleep time);

my $python = '/usr/bin/python3';
if (system("$python -c 'import psycopg' >/dev/null 2>&1") != 0)
{
	plan skip_all =>
	  "$python cannot import psycopg (install python3-psycopg to run the crash loop)";
}
my $dir = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../crash');

my $node = PostgreSQL::Test::Cluster->new('crash_loop');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.segment_size = 200
broker.reaper_interval = 100ms
restart_after_crash = on
# Only processes are killed: what was written survives in the page cache,
# and recovery is faster without fsync.
fsync = off
synchronous_commit = on
log_statement = none
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION broker');

my $dsn = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres';
my $logdir = $node->basedir . '/crash_logs';
mkdir $logdir or die "mkdir $logdir: $!";

ok(run_log([ $python, "$dir/load.py", '--dsn', $dsn, '--setup' ]),
	'load.py created the queues');

# The pid of the checkpointer, or '' while the server is down: a new one
# after every crash restart.
sub generation
{
	my ($ret, $out) = $node->psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'
		    AND NOT pg_is_in_recovery()});
	return $ret == 0 ? $out : '';
}

# Wait until the server runs a generation other than $old.
sub wait_up
{
	my ($old) = @_;
	my $deadline = time + 90;
	while (time < $deadline)
	{
		my $g = generation();
		return 1 if $g ne '' && $g ne $old;
		usleep(100_000);
	}
	return 0;
}

# The processes of this node: every process whose working directory is its
# data directory.
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

# kill -9 of the postmaster and of every process left of it, then a start.
sub crash_postmaster
{
	my @before = node_pids();
	$node->kill9;
	my $deadline = time + 30;
	while (my @left = grep { kill 0, $_ } @before)
	{
		kill 'KILL', @left;
		die 'processes of the killed node survive: ' . join(' ', @left)
		  if time > $deadline;
		usleep(50_000);
	}
	$node->start;
	return 'postmaster';
}

# kill -9 of the first process that $sql names (retried for a while).
sub crash_one
{
	my ($what, $sql) = @_;
	my $pid = '';
	for (my $i = 0; $i < 100 && $pid eq ''; $i++)
	{
		$pid = $node->safe_psql('postgres', $sql);
		usleep(20_000) if $pid eq '';
	}
	die "found no $what to kill" if $pid eq '';
	kill 'KILL', $pid;
	return "$what $pid";
}

# check.py --probe-loop: one process that probes (the gauges, the
# low-water marks, the groups' heads, the records) each time it reads a
# line, under load; what it finds goes to $logdir/probe.jsonl and into the
# final check.
my ($probe_in, $probe_out, $probe_err) = ('', '', '');
my $probe_timer = IPC::Run::timeout(120);
my $prober = IPC::Run::start(
	[
		$python, "$dir/check.py", '--probe-loop', '--dsn', $dsn,
		'--logdir', $logdir
	],
	'<', \$probe_in, '>', \$probe_out, '2>', \$probe_err, $probe_timer);

sub probe
{
	my ($when) = @_;
	$probe_out = '';
	$probe_in .= "probe\n";
	$probe_timer->start(120);
	$prober->pump until $probe_out =~ /^probe done (-?\d+)$/m;
	diag "probe $when:\n$probe_out$probe_err" if $1 ne '0';
	$probe_err = '';
}

my ($load_out, $load_err) = ('', '');
my $load = IPC::Run::start(
	[
		$python, "$dir/load.py", '--dsn', $dsn, '--logdir', $logdir,
		'--long-delays', '2-6'
	],
	'<', \undef, '>', \$load_out, '2>', \$load_err);
sleep 3;

my @crashes = qw(postmaster backend postmaster worker postmaster);
for my $kind (@crashes)
{
	usleep(1_000_000 + int(rand(1_000_000)));
	probe("before the $kind crash");
	my $gen = generation();
	my $what =
	    $kind eq 'postmaster' ? crash_postmaster()
	  : $kind eq 'backend' ? crash_one(
		'client backend in broker.dequeue', q{
SELECT pid FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND query LIKE '%broker.dequeue%'
   AND pid <> pg_backend_pid()
 ORDER BY state = 'active' DESC, random() LIMIT 1})
	  : crash_one('broker worker', q{
SELECT pid FROM pg_stat_activity
 WHERE backend_type IN ('broker reaper', 'broker launcher')
 ORDER BY random() LIMIT 1});
	ok(wait_up($gen), "kill -9 of the $what: the server is back");
}
ok( $node->log_contains('was terminated by signal 9: Killed'),
	'the postmaster saw the killed backend and worker');

# Load without crashes, so that what a restart would hide can show.
for (1 .. 2)
{
	sleep 2;
	probe('after the last crash');
}
$load->signal('TERM');
$load->finish;
note $load_err;
$probe_in .= "quit\n";
$probe_timer->start(60);
$prober->finish;

my ($out, $err) = ('', '');
my $checked = IPC::Run::run(
	[
		$python, "$dir/check.py", '--dsn', $dsn, '--logdir', $logdir,
		'--crashes', scalar(@crashes)
	],
	'>', \$out, '2>', \$err);
note $out;
diag $err if $err ne '';
ok($checked, 'check.py found no violation') or diag $out;
like(
	$out,
	qr/^crash loop: 5 crashes, \d+ messages checked, 0 lost, 0 back, 0 double, 0 stuck, 0 gauge mismatches, 0 group, 0 dedup, 0 publish, 0 records, 0 priority$/m,
	'summary: 0 lost, 0 back, 0 double, 0 stuck, 0 gauge mismatches, 0 group, 0 dedup, 0 publish, 0 records, 0 priority'
);
my ($n) = $out =~ /(\d+) messages checked/;
cmp_ok($n // 0, '>=', 300, 'the load produced enough messages to check');
# The new parts were exercised: ordered groups, dedup retries that got the
# stored id back, publishes, and job records of completes and fails.
my @covered = $out =~
  /^covered: (\d+) group deliveries, (\d+) dedup hits, (\d+) publishes, (\d+) done, (\d+) failed$/m;
is(scalar(@covered), 5, 'check.py says what the load covered');
my @what = ('group deliveries', 'dedup hits', 'publishes', 'done records',
	'failed records');
for my $i (0 .. $#what)
{
	cmp_ok($covered[$i] // 0, '>', 0, "the load covered $what[$i]");
}

$node->stop;

done_testing();
