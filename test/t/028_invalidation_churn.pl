# 028_invalidation_churn.pl: broker's backend caches under a storm of
# invalidations.  One pgbench creates a role, grants it a privilege on a
# queue and drops it, over and over (role and grant invalidations, and a
# relcache invalidation of broker's grant table at every grant); the others
# meanwhile read broker.metrics (as the owner and as a granted role) and
# produce and consume as a granted role.  Every one of those calls looks up
# the privilege cache, which a role change empties.
#
# The bug this guards against: the role callback freed the privilege cache
# while a call was between taking the table and using it (invalidations are
# processed wherever a lock is taken), and the call went on with a NULL
# table: a segmentation fault within seconds here, found first on a hot
# standby by the hostile-input generator, where replayed role changes
# arrive at any moment.  Afterwards: no backend crashed, every pgbench
# finished without an error, and the server answers.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use lib 'test/perl';
use BrokerTest;

my $secs = 15;

my $node = broker_node('churn', conf => ['max_connections = 40']);
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION broker;
SELECT broker.create_queue('churn_q');
CREATE ROLE churn_worker LOGIN;
GRANT USAGE ON SCHEMA broker TO churn_worker;
SELECT broker.grant('churn_q', 'churn_worker', 'produce');
SELECT broker.grant('churn_q', 'churn_worker', 'consume');
});
my $log_offset = -s $node->logfile;

sub script { return pgbench_script($node->basedir, $_[0]); }

sub start_pgbench
{
	my ($name, $script, $clients, $user) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-j', $clients, '-T', $secs,
			'-f', $script, '-h', $node->host, '-p', $node->port,
			'-U', $user, 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $name };
}

my @runs = (
	start_pgbench(
		'role churn', script(q{
CREATE ROLE churn_r:client_id;
SELECT broker.grant('churn_q', 'churn_r' || :client_id, 'consume');
DROP ROLE churn_r:client_id;
}), 2, $node->safe_psql('postgres', 'SELECT current_user')),
	start_pgbench(
		'metrics as the owner',
		script("SELECT count(*) FROM broker.metrics(NULL::text);\n"),
		2, $node->safe_psql('postgres', 'SELECT current_user')),
	start_pgbench(
		'granted role', script(q{
SELECT count(*) FROM broker.metrics('churn_q');
SELECT broker.enqueue('churn_q', '{"n": 1}');
SELECT count(broker.delete('churn_q', d.id, d.receipt)) FROM broker.dequeue('churn_q', 5) d;
}), 2, 'churn_worker'));

for my $r (@runs)
{
	ok($r->{h}->finish, "$r->{name}: pgbench finished without an error")
	  or diag ${ $r->{err} };
	my ($tx) = ${ $r->{out} } =~ /number of transactions actually processed: (\d+)/;
	note "$r->{name}: " . ($tx // '?') . ' transactions';
	cmp_ok($tx // 0, '>', 0, "$r->{name}: ran transactions");
}

my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/terminated by signal/, 'no backend crashed');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server answers');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_roles WHERE rolname LIKE 'churn_r%'"),
	'0',
	'every churned role is gone');

$node->stop('fast', fail_ok => 1);
done_testing();
