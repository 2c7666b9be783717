# 024_failover.pl: automatic failover with pg_auto_failover, under load.
#
# test/ha/pgaf.sh sets up a formation on this machine: a monitor and two
# data nodes (node1 the primary, node2 its synchronous secondary), each data
# node preloading broker, with PGAF_FAST health checks (a silent primary is
# declared unhealthy after about 2 s).  Then:
#
#  1. Load through the multi-host conninfo (target_session_attrs=read-write)
#     with the simulator's --retry (reconnect, retry; enqueues carry dedup
#     keys): "sim" produces and consumes (short leases, receipts) from start
#     to end; around each failover "keep1", "keep2" only produce, each into
#     a queue of its own that nobody consumes.  Each writes a --record file
#     of acknowledged enqueues, deliveries and deletes.
#  2. Before the failover, on the primary: 200 messages leased for 10
#     minutes, 100 of them deleted with their receipts.
#  3. kill -9 of node1's postmaster and pg_autoctl (the machine is lost);
#     pg_auto_failover promotes node2.  On node2: the 100 deleted messages
#     stay deleted, the 100 others are still leased (not delivered again)
#     and their receipts, taken before the failover, delete them; the
#     clients carry on (acknowledged enqueues after the kill); every
#     enqueue the producer-only load was told of is in its queue, with the
#     id it was told, once, and nothing else (then the queue is purged: an
#     unconsumed backlog would hold up segment rotation); the broker worker
#     runs there: a recent pass in broker.health(), a message with a ttl is
#     removed, the message segments rotate, a long-poll dequeue is woken by
#     an enqueue.
#  4. node1 is started again and rejoins as the secondary.
#  5. The second failover, back to node1, with the same checks there.
#  6. The load stops (SIGINT: the simulator drains and reports).  The
#     simulator found no loss and no duplicate; from its record files: every
#     acknowledged enqueue of "sim" was deleted, no message was delivered
#     after an acknowledged delete, a message was delivered again only after
#     a lease that was not acknowledged (its delete failed, or the answer of
#     its dequeue was lost).
#
# The write unavailability of each failover (kill to the first acknowledged
# enqueue after the outage) is noted, not asserted; test/ha/measure.sh
# measures it.
#
# Needs Debian's postgresql-15-auto-failover (pg_autoctl, and the
# pgautofailover extension for the monitor); installed when this runs as
# root or with password-less sudo, else the test is skipped.
use strict;
use warnings;

use lib 'test/perl';
use BrokerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd ();
use File::Basename ();
use File::Path ();
use IPC::Run;
use Time::HiRes qw(time usleep);

my $here = Cwd::abs_path(File::Basename::dirname(__FILE__));
my $pgaf = "$here/../ha/pgaf.sh";
my $sim = "$here/../tools/broker_sim";

# --- pg_auto_failover: find it, or install it, or skip ----------------------

sub have_autoctl
{
	return system('command -v pg_autoctl >/dev/null 2>&1') == 0;
}

# The share directory of the installation whose pg_ctl is $bindir/pg_ctl.
sub sharedir
{
	my ($bindir) = @_;
	my $dir = `'$bindir/pg_config' --sharedir 2>/dev/null` // '';
	chomp $dir;
	return $dir;
}

if (!have_autoctl())
{
	my @root = $> == 0 ? () : ('sudo', '-n');
	if ($> == 0 || system('sudo -n true >/dev/null 2>&1') == 0)
	{
		note 'pg_autoctl not found: installing postgresql-15-auto-failover';
		system(@root, 'bash', $pgaf, 'install');
	}
}
plan skip_all => 'pg_autoctl is not installed and this user cannot install it '
  . '(as root: apt-get install postgresql-15-auto-failover)'
  unless have_autoctl();

# The data nodes run the installation under test (first in PATH).  The
# monitor needs the pgautofailover extension: a private installation has
# it if the package was installed before the installation was made; else
# the system's server runs the monitor.
my $bindir = `pg_config --bindir`;
chomp $bindir;
if (!-f sharedir($bindir) . '/extension/pgautofailover.control')
{
	my $sys = $ENV{SYSTEM_PGBIN} // '/usr/lib/postgresql/15/bin';
	plan skip_all => 'the pgautofailover extension is not installed '
	  . '(apt-get install postgresql-15-auto-failover)'
	  unless -f sharedir($sys) . '/extension/pgautofailover.control';
	$ENV{PGAF_MONITOR_PGCTL} = "$sys/pg_ctl";
	note "the monitor runs $sys/pg_ctl";
}

system('make', '-s', '-C', "$here/../tools", 'broker_sim') == 0
  or BAIL_OUT('cannot build the simulator');

# --- the formation ------------------------------------------------------------

my $base = PostgreSQL::Test::Utils::tempdir('pgaf');
my $dir = "$base/f";
my @ports = map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. 3;
$ENV{PGAF_FAST} = 1;
# processes are killed, not the machine: what was written survives in the
# page cache
$ENV{PGAF_FSYNC} = 'off';
$ENV{PGAF_NODE_CONF} = join("\n",
	q{broker.reaper_interval = '200ms'},
	q{broker.segment_size = 1000},
	q{log_statement = none});

my $formation_up = 0;

my %load;

# Run pgaf.sh: (success, stdout).
sub pgaf_run
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'bash', $pgaf, @args ], '>', \$out, '2>', \$err);
	note $err if $err ne '';
	chomp $out;
	return ($ok, $out);
}

# Run pgaf.sh; its stdout; dies if it fails.
sub pgaf
{
	my ($ok, $out) = pgaf_run(@_);
	die "pgaf.sh @_ failed" unless $ok;
	return $out;
}

# Run pgaf.sh; whether it succeeded.
sub pgaf_ok
{
	my ($ok) = pgaf_run(@_);
	return $ok;
}

END
{
	for my $name (keys %load)
	{
		$load{$name}{h}->kill_kill if $load{$name}{h} && $load{$name}{h}->pumpable;
	}
	if ($formation_up)
	{
		# keep the logs of a failed run
		if (!Test::More->builder->is_passing)
		{
			my $keep = "$PostgreSQL::Test::Utils::log_path/024_pgaf";
			File::Path::make_path($keep);
			system("cp -r '$dir'/*.log '$keep'/ 2>/dev/null");
			for my $n ('monitor', 'node1', 'node2')
			{
				system("cp -r '$dir/$n/log' '$keep/$n.pglog' 2>/dev/null");
			}
		}
		system('bash', $pgaf, 'down', $dir);
	}
}

# A data node (or the monitor): enough of PostgreSQL::Test::Cluster for
# BrokerTest's poll and Session.
package HaNode
{
	sub new
	{
		my ($class, $name, $port) = @_;
		return bless { name => $name, port => $port }, $class;
	}
	sub name { return $_[0]{name} }
	sub host { return '127.0.0.1' }
	sub port { return $_[0]{port} }

	# ($ret, $stdout, $stderr) in list context, $stdout in scalar context
	sub psql
	{
		my ($self, $db, $sql) = @_;
		my ($out, $err) = ('', '');
		my $ok = IPC::Run::run(
			[
				'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
				'-p', $self->{port}, '-U', 'postgres', '-d', $db, '-f', '-'
			],
			'<', \$sql, '>', \$out, '2>', \$err,
			IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
		chomp $out;
		return wantarray ? ($ok ? 0 : ($? >> 8 || 1), $out, $err) : $out;
	}

	sub safe_psql
	{
		my ($self, $db, $sql) = @_;
		my ($ret, $out, $err) = $self->psql($db, $sql);
		die "$self->{name}: psql failed: $err\nin: $sql" if $ret != 0;
		return $out;
	}
}
package main;

$formation_up = 1;
pgaf('up', $dir, @ports);
my %node = (node1 => HaNode->new('node1', $ports[1]),
	node2 => HaNode->new('node2', $ports[2]));
my $dsn = pgaf('dsn', $dir);
note "formation up: monitor $ports[0], node1 $ports[1], node2 $ports[2]; $dsn";

sub states { return pgaf('nodes', $dir) =~ s/\n/; /gr }
like(states(), qr/^node1 \d+ primary primary; node2 \d+ secondary secondary$/,
	'node1 is the primary, node2 its secondary');
my $primary = $node{node1};
is($primary->safe_psql('postgres',
	q{SELECT current_setting('synchronous_standby_names') <> ''
	     AND current_setting('synchronous_commit') = 'on'}),
	't', 'the primary replicates synchronously');
like($primary->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	qr/\bbroker\b/, 'the data nodes preload broker');

$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION broker;
SELECT broker.create_queue(q)
  FROM unnest(ARRAY['ha_lease', 'ha_exp', 'ha_seg', 'ha_lp', 'ha_keep1', 'ha_keep2']) q;
});

# --- the load -------------------------------------------------------------------

my $logdir = "$base/sim";
mkdir $logdir or die "mkdir $logdir: $!";
# Start a load: the simulator until stop_load.
sub start_load
{
	my ($name, @args) = @_;
	$load{$name}{record} = "$logdir/$name.rec";
	$load{$name}{out} = "$logdir/$name.out";
	$load{$name}{h} = IPC::Run::start(
		[
			$sim, '-d', $dsn, '--quiet', '--retry', '--retry-timeout', 120,
			'-t', 100000, '--record', $load{$name}{record}, @args
		],
		'>', $load{$name}{out}, '2>&1');
}

# Stop a load (SIGINT: it stops producing, drains, reports); its exit
# status and output.
sub stop_load
{
	my ($name) = @_;
	$load{$name}{h}->signal('INT');
	$load{$name}{h}->finish;
	my $rc = $? >> 8;
	my $out = slurp_file($load{$name}{out});
	note "load $name:\n$out";
	delete $load{$name}{h};
	return ($rc, $out);
}

start_load('sim', '-q', 'ha', '-p', 2, '-c', 2, '-r', 100, '-l', 4, '--drain-timeout', 120);

# Lines of a record file, as array refs, of the given kinds.
sub record_lines
{
	my ($name, $kinds) = @_;
	open my $fh, '<', $load{$name}{record} or return ();
	my @lines;
	while (my $line = <$fh>)
	{
		next unless $line =~ /\n\z/ && index($kinds, substr($line, 0, 1)) >= 0;
		chomp $line;
		push @lines, [ split / /, $line, 8 ];
	}
	return @lines;
}

# Acknowledged enqueues of a load after a time (seconds since the epoch):
# (count, time of the first).
sub acked_after
{
	my ($name, $t) = @_;
	my @after = sort { $a <=> $b } grep { $_ > $t * 1e6 }
	  map { $_->[4] } record_lines($name, 'E');
	return (scalar @after, @after ? $after[0] / 1e6 : undef);
}

# The end of the write outage after time $t: the first acknowledged enqueue
# of a load after $t that came more than a second after the one before it
# (an answer sent before the kill may still arrive just after it).
sub first_write_after
{
	my ($name, $t) = @_;
	my @acks = sort { $a <=> $b } map { $_->[4] / 1e6 } record_lines($name, 'E');
	for my $i (1 .. $#acks)
	{
		return $acks[$i] if $acks[$i] > $t && $acks[$i] - $acks[ $i - 1 ] > 1;
	}
	return undef;
}

# Wait until each running load has acknowledged $n enqueues after time
# $t; false (with a diagnostic) if not within $secs seconds.
sub wait_progress
{
	my ($t, $n, $secs) = @_;
	my $deadline = time + $secs;
	for my $name (sort grep { $load{$_}{h} } keys %load)
	{
		while ((acked_after($name, $t))[0] < $n)
		{
			if (time > $deadline || !$load{$name}{h}->pumpable)
			{
				diag "load $name: " . (acked_after($name, $t))[0]
				  . " acknowledged enqueues since $t, not $n; its output:\n"
				  . (-f $load{$name}{out} ? slurp_file($load{$name}{out}) : '');
				return 0;
			}
			usleep(100_000);
		}
	}
	return 1;
}

ok(wait_progress(0, 100, 120), 'the load runs through the multi-host conninfo');

# --- what is checked before and after each failover -----------------------------

my $round = 0;

# On the primary before a failover: 200 messages leased for 10 minutes,
# 100 of them deleted with their receipts.  Returns what was done.
sub lease_before
{
	my ($node) = @_;
	$round++;
	$node->safe_psql('postgres',
		qq{SELECT count(*) FROM broker.enqueue_batch('ha_lease',
		     (SELECT array_agg(jsonb_build_object('round', $round, 'n', i))
		        FROM generate_series(1, 200) i))});
	my @leased = map { [ split /\|/ ] } split /\n/, $node->safe_psql('postgres',
		q{SELECT id, receipt FROM broker.dequeue('ha_lease', 200, lease => '10 minutes')});
	is(scalar @leased, 200, "round $round: 200 messages leased before the failover");
	my @del = @leased[ 0 .. 99 ];
	my $values = join(',', map { "($_->[0], $_->[1])" } @del);
	is($node->safe_psql('postgres',
		qq{SELECT count(*) FILTER (WHERE broker.delete('ha_lease', id, receipt))
		     FROM (VALUES $values) v(id, receipt)}),
		'100', "round $round: 100 of them deleted with their receipts");
	return { deleted => [ map { $_->[0] } @del ], held => [ @leased[ 100 .. 199 ] ] };
}

# On the new primary after it.
sub lease_after
{
	my ($node, $l) = @_;
	my $name = $node->name;
	my $deleted = join(',', @{ $l->{deleted} });
	is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM broker.messages WHERE id IN ($deleted)}),
		'0', "round $round: on $name, the messages deleted before the failover stay deleted");
	my $held = join(',', map { "($_->[0], $_->[1])" } @{ $l->{held} });
	is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM broker.messages m JOIN (VALUES $held) v(id, receipt)
		     ON m.id = v.id AND m.receipt = v.receipt AND m.delivery_count = 1}),
		'100', "round $round: on $name, the leased messages are there, with their receipts");
	is($node->safe_psql('postgres',
		q{SELECT count(*) FROM broker.dequeue('ha_lease', 200)}),
		'0', "round $round: on $name, their leases hold: none is delivered again");
	is($node->safe_psql('postgres',
		qq{SELECT count(*) FILTER (WHERE broker.delete('ha_lease', id, receipt))
		     FROM (VALUES $held) v(id, receipt)}),
		'100', "round $round: on $name, receipts taken before the failover delete after it");
	is($node->safe_psql('postgres', q{SELECT total FROM broker.metrics('ha_lease')}),
		'0', "round $round: the queue is empty");
}

# The broker's worker on the new primary.
sub worker_after
{
	my ($node) = @_;
	my $name = $node->name;
	ok( poll(
			$node, 'postgres',
			q{SELECT count(*) FROM broker.health()
			   WHERE database = 'postgres' AND state IN ('idle', 'reaping')
			     AND last_pass_at > now() - interval '5 seconds'},
			'1', 60),
		"on $name, broker.health() shows a recent pass of the reaper");
	my $seg0 = $node->safe_psql('postgres',
		q{SELECT segment || ':' || first_id FROM broker.segments WHERE current});

	# expiry: only the reaper removes these (nobody calls reap())
	my $removed0 = $node->safe_psql('postgres',
		q{SELECT removed_total FROM broker.health() WHERE database = 'postgres'});
	$node->safe_psql('postgres',
		q{SELECT broker.enqueue('ha_exp', '{}', ttl => '300 ms') FROM generate_series(1, 20)});
	ok( poll(
			$node, 'postgres',
			q{SELECT count(*) FROM broker.messages
			   WHERE queue_id = (SELECT queue_id FROM broker.queue_defs WHERE name = 'ha_exp')},
			'0', 60)
		  && poll(
			$node, 'postgres',
			qq{SELECT removed_total >= $removed0 + 20 FROM broker.health()
			    WHERE database = 'postgres'},
			't', 60),
		"on $name, the reaper removes expired messages");

	# segment rotation: 1500 more ids than the segment size of 1000
	$node->safe_psql('postgres',
		q{SELECT count(*) FROM broker.enqueue_batch('ha_seg',
		     (SELECT array_agg('{}'::jsonb) FROM generate_series(1, 1500)));
		  SELECT broker.purge_queue('ha_seg')});
	ok( poll(
			$node, 'postgres',
			qq{SELECT segment || ':' || first_id <> '$seg0' FROM broker.segments WHERE current},
			't', 60),
		"on $name, the worker rotates the message segments (was $seg0)");

	# long poll: a waiting dequeue is woken by an enqueue
	is($node->safe_psql('postgres', q{SELECT total FROM broker.metrics('ha_lp')}),
		'0', "on $name, nothing waits in the long-poll queue");
	my $waiter = BrokerTest::Session->new($node, "waiter on $name");
	$waiter->start(
		q{SELECT d.payload->>'on' || ':' || broker.delete('ha_lp', d.id, d.receipt)
		    FROM broker.dequeue('ha_lp', 1, wait => '120 seconds') d});
	ok(poll($node, 'postgres', q{SELECT waiting FROM broker.waiters('ha_lp')}, '1', 60),
		"on $name, a dequeue waits");
	my $t0 = time;
	$node->safe_psql('postgres',
		qq{SELECT broker.enqueue('ha_lp', jsonb_build_object('on', '$name'))});
	my ($got) = $waiter->finish;
	my $took = time - $t0;
	is($got, "$name:true", "on $name, the waiting dequeue got the message (and deleted it)");
	cmp_ok($took, '<', 60, "on $name, it was woken by the enqueue, not by the end of "
		  . "its 120 s wait (after ${took} s)");
	$waiter->quit;
}

# Kill the primary's machine and wait for the promotion of the other node.
# Returns the time of the kill.
sub failover
{
	my ($from, $to) = @_;
	my $killed_at = pgaf('kill', $dir, $from);
	note "killed $from at $killed_at";
	ok(pgaf_ok('wait', $dir, $to, 'wait_primary', 120)
		  && states() =~ /\b$to \d+ wait_primary wait_primary\b/,
		"pg_auto_failover promoted $to: " . states());
	return $killed_at;
}

# Stop the producer-only load of round $r and check its queue on $node:
# every enqueue it was told of is there with the id it was told, once, and
# nothing else.  Then empty the queue.
sub check_keep
{
	my ($node, $r) = @_;
	my ($rc, $out) = stop_load("keep$r");
	is($rc, 0, "keep$r: exit status 0") or diag $out;
	my %kept;
	$kept{"$_->[1]:$_->[2]"} = $_->[3] for record_lines("keep$r", 'E');
	my (%stored, $dups);
	$dups = 0;
	for (split /\n/, $node->safe_psql('postgres',
		qq{SELECT payload->>'p', payload->>'n', id FROM broker.messages
		  WHERE queue_id = (SELECT queue_id FROM broker.queue_defs
		                     WHERE name = 'ha_keep$r')}))
	{
		my ($p, $n, $id) = split /\|/;
		$dups++ if exists $stored{"$p:$n"};
		$stored{"$p:$n"} = $id;
	}
	my $missing = grep { ($stored{$_} // -1) != $kept{$_} } keys %kept;
	my $extra = grep { !exists $kept{$_} } keys %stored;
	note scalar(keys %kept) . " acknowledged enqueues of keep$r, "
	  . scalar(keys %stored) . ' messages in its queue';
	cmp_ok(scalar keys %kept, '>', 100, "keep$r: enough messages went through");
	is($missing, 0,
		"keep$r: every acknowledged enqueue is in the queue, with the id it was given");
	is($dups, 0, "keep$r: no message is stored twice");
	is($extra, 0, "keep$r: no message the client was not told of");
	$node->safe_psql('postgres', qq{SELECT broker.purge_queue('ha_keep$r')});
}

# --- first failover: node1 -> node2 ------------------------------------------

start_load('keep1', '-q', 'ha_keep1', '-p', 1, '-c', 0, '-r', 40);
my $l = lease_before($node{node1});
ok(wait_progress(0, 60, 120), 'the producer-only load runs');
my $t_kill1 = failover('node1', 'node2');
$primary = $node{node2};
is($primary->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 'f',
	'node2 is out of recovery');
lease_after($primary, $l);
ok(wait_progress($t_kill1, 50, 120), 'the clients carry on after the failover');
my $w1 = first_write_after('keep1', $t_kill1);
note 'first failover: writes again '
  . (defined $w1 ? sprintf('%.2f s', $w1 - $t_kill1) : '(not seen)') . ' after the kill';
check_keep($primary, 1);
worker_after($primary);

# --- the old primary rejoins ---------------------------------------------------

pgaf('start', $dir, 'node1');
ok(pgaf_ok('wait', $dir, 'node1', 'secondary', 180)
	  && pgaf_ok('wait', $dir, 'node2', 'primary', 60)
	  && states() =~ /^node1 \d+ secondary secondary; node2 \d+ primary primary$/,
	'node1 rejoined as the secondary: ' . states());
is($node{node1}->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't',
	'node1 is in recovery');
is($primary->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')}),
	'1', 'node2 replicates synchronously to node1');

# --- second failover: node2 -> node1 -----------------------------------------

start_load('keep2', '-q', 'ha_keep2', '-p', 1, '-c', 0, '-r', 40);
$l = lease_before($node{node2});
ok(wait_progress(time - 1, 20, 60), 'the load runs before the second failover');
my $t_kill2 = failover('node2', 'node1');
$primary = $node{node1};
lease_after($primary, $l);
ok(wait_progress($t_kill2, 50, 120), 'the clients carry on after the second failover');
my $w2 = first_write_after('keep2', $t_kill2);
note 'second failover: writes again '
  . (defined $w2 ? sprintf('%.2f s', $w2 - $t_kill2) : '(not seen)') . ' after the kill';
check_keep($primary, 2);
worker_after($primary);

# --- the load stops: what the clients saw -------------------------------------

my ($sim_rc, $sim_out) = stop_load('sim');
is($sim_rc, 0, 'simulator: exit status 0') or diag $sim_out;
like($sim_out,
	qr/duplicates\s+0 .*\n\s+lost\s+0\n.*errors\s+0\n\s+result\s+OK/s,
	'simulator: no duplicate, no loss, no error');
my ($retried) = $sim_out =~ /retried calls\s+(\d+)/;
cmp_ok($retried // 0, '>', 0, 'simulator: calls were retried (it saw the failovers)');

# "sim": from its record, message by message (producer:seq).
my (%acked, %deliv, %dels);
$acked{"$_->[1]:$_->[2]"} = $_->[3] for record_lines('sim', 'E');
push @{ $deliv{"$_->[1]:$_->[2]"} }, $_ for record_lines('sim', 'L');
push @{ $dels{"$_->[1]:$_->[2]"} }, $_ for record_lines('sim', 'D');
my ($lost, $undone, $unexplained, $redelivered, $twice) = (0, 0, 0, 0, 0);
for my $k (sort keys %acked)
{
	my @l = sort { $a->[4] <=> $b->[4] } @{ $deliv{$k} // [] };
	my @d = @{ $dels{$k} // [] };
	my @ok = grep { $_->[6] eq 't' } @d;
	my $last_dc = @l ? $l[-1][4] : 0;
	# gone: an acknowledged delete, or one of unknown outcome of the last delivery
	$lost++ unless @ok || grep { $_->[6] eq 'u' && $_->[4] == $last_dc } @d;
	$twice++ if grep { $_->[3] != $acked{$k} } @l;
	for my $okd (@ok)
	{
		$undone++ if grep { $_->[4] > $okd->[4] } @l;
	}
	# every delivery but the last: its lease was not acknowledged
	for my $i (0 .. $#l - 1)
	{
		$redelivered++;
		$unexplained++ if $l[$i][4] == $l[ $i + 1 ][4]
		  || grep { $_->[4] == $l[$i][4] && $_->[6] eq 't' } @d;
	}
	# a first delivery with delivery_count > 1: earlier leases whose
	# dequeue's answer was lost
	$redelivered += $l[0][4] - 1 if @l;
}
note scalar(keys %acked) . " acknowledged enqueues of sim, $redelivered deliveries again";
cmp_ok(scalar keys %acked, '>', 500, 'sim: enough messages went through');
is($lost, 0, 'sim: every acknowledged enqueue was deleted (none lost)');
is($undone, 0, 'sim: no message delivered after an acknowledged delete');
is($unexplained, 0,
	'sim: a message was delivered again only after a lease that was not acknowledged');
is($twice, 0, 'sim: no message stored twice (a retry with its dedup key stores nothing)');
is($primary->safe_psql('postgres', q{SELECT total FROM broker.metrics('ha')}),
	'0', 'sim: its queue is empty');

done_testing();
