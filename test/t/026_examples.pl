# 026_examples.pl: the examples under examples/, each run by its own test.sh
# against a database of one server with broker preloaded.
#
#   python          python3-psycopg: produce in a business transaction,
#                   long-poll consume with receipts and extend_lease,
#                   publish/subscribe, jobs
#   node            node-postgres (pg from the npm registry): the same four
#   wordcount       the word-count web-queue-worker (http.server, jobs)
#   data_processor  the async data processor in C (libpq, libmicrohttpd,
#                   json-c): 10,000 messages, workers killed, exactly once
#
# A test.sh prints "ok - ..." and "not ok - ..." lines, each an assertion
# here, and exits 0, 1, or 77 after "SKIP: <reason>" when what it needs is
# missing and this user cannot install it (the examples' READMEs list the
# Debian packages; test/lib.sh's ensure_deps installs them).  The three
# light ones run at the same time, then the data processor on its own.
use strict;
use warnings;

use lib 'test/perl';
use BrokerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);

my $src = $ENV{TESTDIR} // '.';

my $node = broker_node('examples',
	conf => [ 'max_connections = 100', "broker.reaper_interval = '200ms'" ]);
my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

# Start examples/$name/test.sh in a database of its own.
sub start_example
{
	my ($name) = @_;
	my $db = "ex_$name";
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION broker');
	my %run = (name => $name, out => '', t0 => time);
	local %ENV = (
		%ENV,
		PGHOST => $node->host,
		PGPORT => $node->port,
		PGUSER => $superuser,
		PGDATABASE => $db);
	delete $ENV{$_} for qw(PGSERVICE PGOPTIONS PGPASSWORD);
	$run{timer} = IPC::Run::timeout(170);
	$run{h} = IPC::Run::start([ 'bash', "$src/examples/$name/test.sh" ],
		'<', \undef, '>&', \$run{out}, $run{timer});
	return \%run;
}

# Wait for it and turn its output into assertions.
sub finish_example
{
	my ($run) = @_;
	my $name = $run->{name};
	my $ok = eval { $run->{h}->finish; 1 };
	my $status = $ok ? $run->{h}->result : -1;
	my $secs = sprintf('%.0f', time - $run->{t0});
	my @lines = split /\n/, $run->{out};
	if (!$ok)
	{
		$run->{h}->kill_kill;
		diag "examples/$name: $@";
	}
	if ($ok && $status == 77)
	{
		my ($why) = map { /^SKIP: (.*)/ ? $1 : () } @lines;
	  SKIP: { skip "examples/$name: " . ($why // 'skipped'), 1; }
		return;
	}
	my $checks = 0;
	for (@lines)
	{
		if (/^(not )?ok - (.*)$/)
		{
			ok(!defined $1, "$name: $2");
			$checks++;
		}
		else
		{
			note "$name: $_";
		}
	}
	ok($ok && $status == 0 && $checks > 0,
		"examples/$name/test.sh passed ($checks checks, $secs s)")
	  or diag "exit status " . ($ok ? $status : 'none (timed out)') . "; output:\n$run->{out}";
	return;
}

my @light = map { start_example($_) } qw(python node wordcount);
finish_example($_) for @light;
finish_example(start_example('data_processor'));

$node->stop;
done_testing();
