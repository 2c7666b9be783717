# BrokerTest.pm: what the TAP tests of broker share.
#
#   use lib 'test/perl';
#   use BrokerTest;
#
# broker_node   a started cluster with broker preloaded (and extra settings)
# poll          run a query until it returns what is expected, boundedly
# sqlstate      the SQLSTATE of a statement that must fail
# log_errors    the ERROR, FATAL and PANIC lines of a server log since a point
# queue_total   messages of a queue (broker.metrics)
# simulator     run the libpq load simulator (test/tools/broker_sim)
# client_tool   run another libpq tool of test/tools (wake_latency)
# BrokerTest::Session
#               a psql session held open on a pipe: run SQL in it and wait,
#               or send SQL and wait later, while other sessions go on
package BrokerTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd ();
use Time::HiRes qw(usleep time);

our @EXPORT = qw(broker_node poll sqlstate log_errors queue_total simulator client_tool kill9_node
  pgbench_script);

# A cluster named $name with broker preloaded, started.  Options:
# conf => [lines for postgresql.conf], init => {arguments of init},
# preload => 0 to leave broker out of shared_preload_libraries.
sub broker_node
{
	my ($name, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	my @conf = @{ $opt{conf} // [] };
	unshift @conf, "shared_preload_libraries = 'broker'"
	  unless defined $opt{preload} && !$opt{preload};
	$node->append_conf('postgresql.conf', join("\n", @conf) . "\n");
	$node->start;
	return $node;
}

# Write a pgbench script into a new file of $dir; returns its path.
my $script_seq = 0;

sub pgbench_script
{
	my ($dir, $text) = @_;
	my $file = "$dir/script" . $script_seq++ . '.sql';
	PostgreSQL::Test::Utils::append_to_file($file, $text);
	return $file;
}

# Run a query until it returns $expect, for at most $secs seconds; true if
# it did (and a diagnostic with the last answer if not).  A failed
# connection (a server restarting) counts as another answer.
sub poll
{
	my ($node, $db, $sql, $expect, $secs) = @_;
	my $deadline = time + $secs;
	my $got;
	for (;;)
	{
		my ($ret, $out) = $node->psql($db, $sql);
		$got = $ret == 0 ? $out : "psql failed ($ret)";
		return 1 if $got eq $expect;
		last if time > $deadline;
		usleep(50_000);
	}
	diag "poll: '$sql' returned '$got', expected '$expect'";
	return 0;
}

# SQLSTATE of a statement that must fail ("no error" otherwise).
sub sqlstate
{
	my ($node, $sql, $db) = @_;
	my ($ret, $out, $err) =
	  $node->psql($db // 'postgres', "\\set VERBOSITY verbose\n$sql");
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : "no error: $err";
}

# ERROR, FATAL and PANIC lines of the log since a position.
sub log_errors
{
	my ($node, $offset) = @_;
	return join("\n",
		grep { /\b(ERROR|FATAL|PANIC)\b/ }
		  split /\n/, slurp_file($node->logfile, $offset));
}

# Messages of a queue, in every state.
sub queue_total
{
	my ($node, $queue, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		"SELECT total FROM broker.metrics('$queue')");
}

# Run one of the libpq tools of test/tools (built first if needed) against a
# node; returns (exit status, output).
sub client_tool
{
	my ($node, $tool, @args) = @_;
	my $dir = "$ENV{TESTDIR}/test/tools";
	system('make', '-s', '-C', $dir) == 0 or return (1, "cannot build the tools");
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[ "$dir/$tool", '-d',
		  'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres', @args ],
		'>', \$out, '2>', \$err);
	return ($? >> 8, $out . $err);
}

# Run the load simulator against a node; returns (exit status, output).
sub simulator
{
	my ($node, @args) = @_;
	return client_tool($node, 'broker_sim', @args);
}

# kill -9 the postmaster, then at once every other process of the node (no
# orphan keeps committing or holds the old shared memory), and wait until
# all are gone: the node can be started again.
sub kill9_node
{
	my ($node) = @_;
	my $datadir = Cwd::abs_path($node->data_dir);
	my $pids = sub {
		my @pids;
		opendir(my $dh, '/proc') or die "cannot read /proc: $!";
		for my $pid (grep { /^\d+$/ } readdir $dh)
		{
			my $cwd = readlink("/proc/$pid/cwd");
			push @pids, $pid if defined $cwd && $cwd eq $datadir;
		}
		closedir $dh;
		return @pids;
	};
	my @before = $pids->();
	$node->kill9;
	my $deadline = time + 60;
	while (my @left = $pids->())
	{
		kill 'KILL', @left;
		die 'processes of the killed node survive: ' . join(' ', @left)
		  if time > $deadline;
		usleep(50_000);
	}
	while (my @left = grep { kill 0, $_ } @before)
	{
		die 'processes of the killed node not reaped: ' . join(' ', @left)
		  if time > $deadline;
		usleep(50_000);
	}
	return;
}

# --- a psql session held open on a pipe --------------------------------------
package BrokerTest::Session;

my $nmark = 0;

# Open a session on $node's database $db (default postgres); $name appears
# in error messages.
sub new
{
	my ($class, $node, $name, $db) = @_;
	my $self = bless { in => '', out => '', err => '', name => $name // 'session' },
	  $class;
	$self->{timeout} =
	  IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default);
	$self->{h} = IPC::Run::start(
		[
			'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0',
			'-h', $node->host, '-p', $node->port, $db // 'postgres'
		],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err},
		$self->{timeout});
	return $self;
}

# Send SQL without waiting for its answer (see finish).
sub start
{
	my ($self, $sql) = @_;
	$self->{pending} = '__done_' . $nmark++ . '__';
	$self->{out} = '';
	$self->{err} = '';
	$self->{in} .= "$sql\n;\n\\echo $self->{pending}\n\\warn $self->{pending}\n";
	$self->{h}->pump_nb;
	return;
}

# Wait for the answer of what start sent; returns (stdout, stderr).
sub finish
{
	my ($self) = @_;
	my $mark = $self->{pending};
	$self->{timeout}->start($PostgreSQL::Test::Utils::timeout_default);
	PostgreSQL::Test::Utils::pump_until($self->{h}, $self->{timeout},
		\$self->{out}, qr/$mark\n/)
	  && PostgreSQL::Test::Utils::pump_until($self->{h}, $self->{timeout},
		\$self->{err}, qr/$mark\n/)
	  or die "session $self->{name}: no answer";
	(my $out = $self->{out}) =~ s/$mark\n//;
	(my $err = $self->{err}) =~ s/$mark\n//;
	chomp $out;
	return ($out, $err);
}

# Run SQL (one or more statements) and wait for it; returns (stdout,
# stderr) in list context, stdout in scalar context.
sub query
{
	my ($self, $sql) = @_;
	$self->start($sql);
	my ($out, $err) = $self->finish;
	return wantarray ? ($out, $err) : $out;
}

# Like query, but dies on any error.
sub safe
{
	my ($self, $sql) = @_;
	my ($out, $err) = $self->query($sql);
	die "session $self->{name}: error in: $sql\n$err" if $err =~ /ERROR/;
	return $out;
}

# End the session.
sub quit
{
	my ($self) = @_;
	$self->{in} .= "\\q\n";
	$self->{h}->finish;
}

1;
