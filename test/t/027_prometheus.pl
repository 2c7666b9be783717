# 027_prometheus.pl: broker's figures through Debian's
# prometheus-postgres-exporter with monitoring/queries.yaml, and the alerting
# rules of monitoring/alerts.yaml (docs/operations.md, "Prometheus").
#
# The test starts the exporter (the Debian package; installed when the test
# runs as root or with password-less sudo, else the test is skipped with the
# reason) on 127.0.0.1 and a free port, against the test node, as a role that
# has LOGIN and pg_monitor and nothing else, with --auto-discover-databases
# --include-databases=app (broker is installed in two databases, both with a
# queue "orders").  It reads /metrics over HTTP and checks the text:
#
#  1. every metric that queries.yaml defines is there, with its HELP and its
#     type (gauge or counter), and no broker metric it does not define; the
#     labels of each are its LABEL columns and `server`; the exporter loaded
#     the file and no query failed (pg_exporter_last_scrape_error 0);
#  2. broker.metrics(): after enqueue, dequeue, delete, complete, fail, a
#     dead-lettering dequeue, expiry by the reaper, leases and a delay, the
#     queue "orders" shows the figures that traffic makes, and every column
#     of every queue in both databases equals broker.metrics() (total as
#     broker_queue_messages, oldest_ready_age in seconds, between the values
#     read just before and just after the scrape); a queue with no ready
#     message has age 0; the same queue name in two databases gives two
#     series told apart by `database`;
#  3. broker.health(): pid, last pass (time and duration, in seconds),
#     removed_total of each database's reaper; the state one-hot (exactly one
#     of the states is 1, and it is idle or reaping); versions, preloaded,
#     standby, version_mismatch;
#  4. broker.waiters() (a consumer long-polling during the scrape, then woken)
#     and broker.consumers (the consumer's deliveries and deletes);
#  5. privileges: the role sees every queue through pg_monitor without any
#     grant of broker; without pg_monitor it sees no queue (and no scrape
#     fails), with a grant on one queue only that one, and with
#     pg_read_all_stats alone every queue again;
#  6. promtool (Debian's package prometheus, installed like the exporter when
#     missing and possible): `check metrics` finds nothing to say about the
#     broker metrics, `check rules` accepts alerts.yaml, and `test rules`
#     passes monitoring/alerts_test.yaml.  Without promtool these are skipped
#     with the reason; in any case the YAML files are parsed (CPAN::Meta::YAML,
#     in Perl's core), every rule has a severity, a summary and a description,
#     and every metric an alert uses is one the scrape has.
#  7. without shared_preload_libraries: the counters are NaN, preloaded 0,
#     the state is "not running", the waiters query returns nothing instead
#     of failing, and no query fails; the exporter logged no error but
#     those of the restart.
#
# PG_EXPORTER and PROMTOOL may name the programs to use (PROMTOOL naming no
# executable leaves promtool's checks out).
use strict;
use warnings;

use lib 'test/perl';
use BrokerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use HTTP::Tiny;
use CPAN::Meta::YAML;
use Time::HiRes qw(time usleep);

my $src = $ENV{TESTDIR} // '.';
my $queries_file = "$src/monitoring/queries.yaml";
my $alerts_file = "$src/monitoring/alerts.yaml";
my $alerts_test_file = "$src/monitoring/alerts_test.yaml";

# --- the exporter and promtool: find them, or install them, or skip ----------

sub find_program
{
	my ($name) = @_;
	for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/bin', '/usr/sbin',
		'/usr/local/bin')
	{
		return "$dir/$name" if $dir ne '' && -x "$dir/$name";
	}
	return undef;
}

# Install Debian packages when this user can (root, or password-less sudo;
# the TAP tests normally run as the cluster's user, which cannot).
sub apt_install
{
	my @packages = @_;
	my @root = $> == 0 ? () : ('sudo', '-n');
	return 0 unless $> == 0 || system('sudo -n true >/dev/null 2>&1') == 0;
	note "installing the Debian packages @packages";
	system(@root, 'apt-get', 'update', '-qq');
	system(@root, 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get',
		'install', '-y', '-qq', @packages);
	return 1;
}

my $install_hint = 'as root: apt-get update && apt-get install -y '
  . 'prometheus-postgres-exporter prometheus (test/lib.sh ensure_deps does)';
if (defined $ENV{PG_EXPORTER} && !-x $ENV{PG_EXPORTER})
{
	plan skip_all => "PG_EXPORTER=$ENV{PG_EXPORTER} is not an executable ($install_hint)";
}
my $exporter = $ENV{PG_EXPORTER} // find_program('prometheus-postgres-exporter');
if (!defined $exporter)
{
	apt_install('prometheus-postgres-exporter');
	$exporter = find_program('prometheus-postgres-exporter');
}
plan skip_all => 'prometheus-postgres-exporter is not installed and this user '
  . "cannot install it ($install_hint)"
  unless defined $exporter;
my $exporter_version = `'$exporter' --version 2>&1` // '';
($exporter_version) = $exporter_version =~ /version\s+(\S+)/;
plan skip_all => "$exporter --version does not answer"
  unless defined $exporter_version;
note "using $exporter, version $exporter_version";

# promtool: optional (PROMTOOL= empty leaves it out).
my $promtool = $ENV{PROMTOOL} // find_program('promtool');
if (!defined $promtool)
{
	apt_install('prometheus');
	$promtool = find_program('promtool');
}
undef $promtool if defined $promtool && !-x $promtool;
note defined $promtool
  ? "using $promtool"
  : 'promtool is not installed and this user cannot install it (or PROMTOOL names '
  . "no executable): its checks are skipped ($install_hint)";

# --- queries.yaml: what the scrape must show -----------------------------------

my $queries = CPAN::Meta::YAML->read($queries_file)
  or BAIL_OUT("cannot parse $queries_file: " . CPAN::Meta::YAML->errstr);
$queries = $queries->[0];

# metric name => { type, help, labels (sorted, with server), namespace, column }
my %defined;
for my $ns (sort keys %$queries)
{
	my @cols = map { my ($c) = keys %$_; [ $c, $_->{$c} ] } @{ $queries->{$ns}{metrics} };
	my @labels = sort('server', map { $_->[0] } grep { $_->[1]{usage} eq 'LABEL' } @cols);
	for my $col (grep { $_->[1]{usage} ne 'LABEL' } @cols)
	{
		$defined{"${ns}_$col->[0]"} = {
			type => lc $col->[1]{usage},
			help => $col->[1]{description},
			labels => join(',', @labels),
			namespace => $ns,
			column => $col->[0]
		};
	}
}
is_deeply(
	[ sort map { $defined{$_}{type} } keys %defined ],
	[ sort map { /_total$/ ? 'counter' : 'gauge' } keys %defined ],
	'queries.yaml: the counters are the metrics named *_total, the rest are gauges');

# --- the node ---------------------------------------------------------------------

my $node = broker_node(
	'prom',
	conf => [ "broker.reaper_interval = '100ms'", 'max_connections = 40' ]);
my $host = $node->host;
my $pgport = $node->port;
$node->safe_psql('postgres', 'CREATE DATABASE app');
for my $db ('postgres', 'app')
{
	$node->safe_psql($db, q{
CREATE EXTENSION broker;
SELECT broker.create_queue('orders_dead');
SELECT broker.create_queue('orders', max_deliveries => 1, dead_letter_queue => 'orders_dead');
SELECT broker.create_queue('secret');
SELECT broker.create_queue('idle');
});
}
# The role of the exporter: LOGIN and pg_monitor, nothing from broker.
$node->safe_psql('postgres', q{
CREATE ROLE broker_exporter LOGIN;
GRANT pg_monitor TO broker_exporter;
ALTER ROLE broker_exporter SET statement_timeout = '10s';
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM broker.grants WHERE role = 'broker_exporter'}),
	'0', 'the role of the exporter has no grant of broker');

# Traffic on "orders" of database postgres, by consumer "worker-a".
my $psql = sub { $node->safe_psql('postgres', "SET broker.consumer = 'worker-a';\n" . $_[0]) };
# A dead-lettering dequeue: a message delivered once (max_deliveries 1)
# whose lease ran out is moved to orders_dead by the next dequeue.
$psql->(q{SELECT broker.enqueue('orders', '{"n": 0}')});
$psql->(q{SELECT count(*) FROM broker.dequeue('orders', 1, lease => '100 ms')});
usleep(300_000);
is($psql->(q{SELECT count(*) FROM broker.dequeue('orders', 10)}), '0',
	'the exhausted message is dead-lettered, not delivered');
$psql->(q{
SELECT broker.enqueue_batch('orders', ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 12) g));
SELECT broker.enqueue('secret', '{"s": 1}');
SELECT broker.enqueue('secret', '{"s": 2}');
});
is($psql->(q{SELECT count(*) FROM broker.delete('orders', ARRAY(SELECT id FROM broker.dequeue('orders', 3)))}),
	'3', 'deleted 3');
is($psql->(q{SELECT count(*) FILTER (WHERE broker.complete('orders', id, receipt, '{"ok": true}')) FROM broker.dequeue('orders', 2)}),
	'2', 'completed 2');
is($psql->(q{SELECT broker.fail('orders', id, receipt, '{"error": "bad"}') FROM broker.dequeue('orders', 1)}),
	't', 'failed 1 (to the dead-letter queue)');
$psql->(q{SELECT broker.enqueue('orders', jsonb_build_object('ttl', g), ttl => '50 ms') FROM generate_series(1, 3) g});
ok(poll($node, 'postgres', q{SELECT expired_total FROM broker.metrics('orders')}, '3', 20),
	'the reaper removes the 3 expired messages');
$psql->(q{
SELECT count(*) FROM broker.dequeue('orders', 2, lease => '10 minutes');
SELECT broker.enqueue('orders', '{"later": 1}', delay => '1 hour');
});
$node->safe_psql('app', q{SELECT broker.enqueue('orders', jsonb_build_object('app', g)) FROM generate_series(1, 5) g});
is( $node->safe_psql('postgres', q{SELECT ready, leased, delayed, total, enqueued_total, deleted_total,
       expired_total, dead_lettered_total, completed_total, failed_total FROM broker.metrics('orders')}),
	'4|2|1|7|17|3|3|2|2|1',
	'broker.metrics(): the traffic on orders');
ok(poll($node, 'app', q{SELECT state IN ('idle', 'reaping') FROM broker.health() WHERE database = 'app'}, 't', 20),
	'database app has its reaper');

# --- start the exporter ---------------------------------------------------------------

my $http_port = PostgreSQL::Test::Cluster::get_free_port();
my $url = "http://127.0.0.1:$http_port/metrics";
my $exporter_log = "$PostgreSQL::Test::Utils::tmp_check/exporter.log";
my $exp;
{
	local $ENV{DATA_SOURCE_NAME} =
	  "host=$host port=$pgport user=broker_exporter dbname=postgres sslmode=disable";
	$exp = IPC::Run::start(
		[
			$exporter, "--web.listen-address=127.0.0.1:$http_port",
			"--extend.query-path=$queries_file", '--auto-discover-databases',
			'--include-databases=app'
		],
		'<', \undef, '>>', $exporter_log, '2>>', $exporter_log);
}
END { $exp->kill_kill if $exp && $exp->pumpable; }

my $http = HTTP::Tiny->new(timeout => 20);

# GET /metrics; returns { type, help, series => { name => [ { labels, value } ] }, text }.
sub scrape
{
	my $res = $http->get($url);
	return undef unless $res->{success};
	my (%type, %help, %series);
	for my $line (split /\n/, $res->{content})
	{
		if ($line =~ /^# TYPE (\S+) (\S+)$/) { $type{$1} = $2; next; }
		if ($line =~ /^# HELP (\S+) ?(.*)$/)
		{
			(my $h = $2) =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
			$help{$1} = $h;
			next;
		}
		next if $line =~ /^#/ || $line !~ /\S/;
		my ($name, $labels, $value) =
		  $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/
		  or die "cannot parse the line: $line";
		my %l;
		$labels //= '';
		while ($labels =~ /\G([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gc)
		{
			my ($k, $v) = ($1, $2);
			$v =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge;
			$l{$k} = $v;
		}
		die "cannot parse the labels of: $line" if (pos($labels) // 0) != length $labels;
		push @{ $series{$name} }, { labels => \%l, value => $value };
	}
	return { type => \%type, help => \%help, series => \%series, text => $res->{content} };
}

# Scrape until the exporter answers, has scraped PostgreSQL without error
# and $ready (a sub of the scrape) is true; at most $secs seconds.
sub scrape_until
{
	my ($secs, $ready) = @_;
	my $deadline = time + $secs;
	my $s;
	for (;;)
	{
		$s = scrape();
		return $s
		  if $s
		  && value($s, 'pg_up') eq '1'
		  && value($s, 'pg_exporter_last_scrape_error') eq '0'
		  && (!$ready || $ready->($s));
		last if time > $deadline;
		usleep(200_000);
	}
	diag 'the exporter did not answer as expected; its log: '
	  . (-f $exporter_log ? slurp_file($exporter_log) : '(none)');
	return $s;
}

# The series of a metric whose labels include %match.
sub series
{
	my ($s, $name, %match) = @_;
	return grep {
		my $l = $_->{labels};
		!grep { !defined $l->{$_} || $l->{$_} ne $match{$_} } keys %match
	} @{ $s->{series}{$name} // [] };
}

# The value of the one series of a metric whose labels include %match
# ('absent' when none, 'several' when more than one).
sub value
{
	my ($s, $name, %match) = @_;
	my @found = series($s, $name, %match);
	return @found == 1 ? $found[0]{value} : @found ? 'several' : 'absent';
}

# Rows of a query as arrays of columns.
sub rows
{
	my ($db, $sql) = @_;
	return map { [ split /\|/, $_, -1 ] } grep { $_ ne '' } split /\n/,
	  $node->safe_psql($db, $sql);
}

# --- 1. the metrics, their types, HELP and labels ------------------------------------

# A consumer long-polls on "idle" during the scrape.
my $waiter = BrokerTest::Session->new($node, 'waiter');
$waiter->start(q{SET broker.consumer = 'waiter-1';
SELECT count(*) FROM broker.dequeue('idle', 1, wait => '60 seconds')});
ok(poll($node, 'postgres', q{SELECT waiting FROM broker.waiters('idle')}, '1', 20),
	'a consumer long-polls on idle');

my $sql_queue = q{SELECT queue, ready, leased, delayed, total,
       COALESCE(extract(epoch FROM oldest_ready_age), 0),
       enqueued_total, deleted_total, expired_total, dead_lettered_total,
       completed_total, failed_total FROM broker.metrics() ORDER BY queue};
my $sql_health = q{SELECT database, pid, extract(epoch FROM last_pass_at),
       extract(epoch FROM last_pass_duration), removed_total
  FROM broker.health() WHERE pid IS NOT NULL ORDER BY database};
my (%before, %after);
$before{$_} = [ rows($_, $sql_queue) ] for 'postgres', 'app';
my @health_before = rows('postgres', $sql_health);
my $t0 = time;
my $s = scrape_until(30,
	sub { value($_[0], 'broker_waiters_waiting', database => 'postgres', queue => 'idle') eq '1' });
my $t1 = time;
$after{$_} = [ rows($_, $sql_queue) ] for 'postgres', 'app';
my @health_after = rows('postgres', $sql_health);
ok($s, "the exporter answers on $url") or BAIL_OUT('no scrape');
is(value($s, 'pg_up'), '1', 'pg_up 1');
is(value($s, 'pg_exporter_last_scrape_error'), '0', 'no query of the exporter failed');
is(value($s, 'pg_exporter_user_queries_load_error', filename => $queries_file), '0',
	'the exporter loaded queries.yaml');

my $server = "$host:$pgport";
for my $name (sort keys %defined)
{
	my $d = $defined{$name};
	is($s->{type}{$name}, $d->{type}, "$name: TYPE $d->{type}");
	is($s->{help}{$name}, $d->{help}, "$name: HELP is the description");
	my @all = series($s, $name);
	ok(@all > 0, "$name: scraped");
	my @bad = grep { join(',', sort keys %{ $_->{labels} }) ne $d->{labels} } @all;
	is(scalar @bad, 0, "$name: labels are $d->{labels}")
	  or diag explain $bad[0];
	is(scalar(grep { $_->{labels}{server} ne $server } @all), 0, "$name: server=\"$server\"");
}
my @undeclared = grep { /^broker/ && !$defined{$_} } sort keys %{ $s->{series} };
is("@undeclared", '', 'every broker metric scraped is declared in queries.yaml (none untyped)');

# --- 2. broker.metrics() ---------------------------------------------------------------

my %want_orders = (
	ready => 4, leased => 2, delayed => 1, messages => 7,
	enqueued_total => 17, deleted_total => 3, expired_total => 3,
	dead_lettered_total => 2, completed_total => 2, failed_total => 1);
for my $col (sort keys %want_orders)
{
	is(value($s, "broker_queue_$col", database => 'postgres', queue => 'orders'),
		$want_orders{$col}, "broker_queue_$col of orders: $want_orders{$col}");
}
cmp_ok(value($s, 'broker_queue_oldest_ready_age_seconds', database => 'postgres', queue => 'orders'),
	'>', 0, 'broker_queue_oldest_ready_age_seconds of orders > 0');
is(value($s, 'broker_queue_oldest_ready_age_seconds', database => 'postgres', queue => 'idle'),
	'0', 'broker_queue_oldest_ready_age_seconds is 0 for a queue with nothing ready');
is(value($s, 'broker_queue_enqueued_total', database => 'postgres', queue => 'orders_dead'), '2',
	'orders_dead: the 2 dead-lettered messages are enqueued there');
is(value($s, 'broker_queue_ready', database => 'app', queue => 'orders'), '5',
	'the queue orders of database app is a series of its own');
is(value($s, 'broker_queue_ready', database => 'postgres', queue => 'secret'), '2',
	'pg_monitor shows a queue the role has no privilege on');

# Every column of every queue, as broker.metrics() gives it before and
# after the scrape (the age only grows: between the two).
my @cols = qw(ready leased delayed messages oldest_ready_age_seconds enqueued_total
  deleted_total expired_total dead_lettered_total completed_total failed_total);
for my $db ('postgres', 'app')
{
	my @b = @{ $before{$db} };
	my @a = @{ $after{$db} };
	is(scalar(series($s, 'broker_queue_ready', database => $db)), scalar @a,
		"$db: one series per queue");
	for my $i (0 .. $#a)
	{
		my $queue = $a[$i][0];
		my @mismatch;
		for my $c (0 .. $#cols)
		{
			my $got = value($s, "broker_queue_$cols[$c]", database => $db, queue => $queue);
			my ($lo, $hi) = ($b[$i][ $c + 1 ], $a[$i][ $c + 1 ]);
			my $ok = $cols[$c] eq 'oldest_ready_age_seconds'
			  ? $got ne 'absent' && $got >= $lo - 0.001 && $got <= $hi + 0.001
			  : $got eq $hi && $lo eq $hi;
			push @mismatch, "$cols[$c]: scraped $got, broker.metrics() $lo .. $hi" unless $ok;
		}
		is("@mismatch", '', "$db.$queue: every column equals broker.metrics()");
	}
}

# --- 3. broker.health() ------------------------------------------------------------------

is(scalar @health_after, 2, 'two reapers (postgres and app)');
for my $i (0 .. $#health_after)
{
	my ($db, $pid, $at, $dur, $removed) = @{ $health_after[$i] };
	my (undef, undef, $at0) = @{ $health_before[$i] };
	is(value($s, 'broker_health_pid', database => $db), $pid, "$db: broker_health_pid");
	my $ts = value($s, 'broker_health_last_pass_timestamp_seconds', database => $db);
	ok($ts >= $at0 - 0.001 && $ts <= $at + 0.001,
		"$db: broker_health_last_pass_timestamp_seconds ($ts) between $at0 and $at");
	ok(abs($ts - $t0) < 5, "$db: the last pass is recent (unix time in seconds)");
	my $d = value($s, 'broker_health_last_pass_duration_seconds', database => $db);
	ok($d >= 0 && $d < 5, "$db: broker_health_last_pass_duration_seconds $d");
	is(value($s, 'broker_health_removed_total', database => $db), $removed,
		"$db: broker_health_removed_total $removed");
	my @states = series($s, 'broker_health_state', database => $db);
	is(join(',', sort map { $_->{labels}{state} } @states),
		'idle,not running,reaping,starting,waiting for extension', "$db: the five states");
	my @on = grep { $_->{value} eq '1' } @states;
	is(scalar @on, 1, "$db: one state is 1");
	like($on[0]{labels}{state}, qr/^(idle|reaping)$/, "$db: the reaper is idle or reaping");
	is(scalar(grep { $_->{value} ne '0' && $_->{value} ne '1' } @states), 0, "$db: states are 0 or 1");
	is(value($s, 'broker_server_info', database => $db, library_version => '0.2.0',
			extension_version => '0.2.0'), '1', "$db: broker_server_info with the versions");
	is(value($s, 'broker_server_preloaded', database => $db), '1', "$db: preloaded 1");
	is(value($s, 'broker_server_version_mismatch', database => $db), '0', "$db: version_mismatch 0");
	is(value($s, 'broker_server_standby', database => $db), '0', "$db: standby 0");
}
cmp_ok(value($s, 'broker_health_removed_total', database => 'postgres'), '>=', 3,
	'the reaper of postgres counts the 3 expired messages it removed');

# --- 4. waiters and consumers ------------------------------------------------------------

is(value($s, 'broker_waiters_waiting', database => 'postgres', queue => 'idle'), '1',
	'broker_waiters_waiting: the long-polling consumer');
is(value($s, 'broker_waiters_waiting', database => 'postgres', queue => 'orders'), '0',
	'broker_waiters_waiting: none on orders');
$node->safe_psql('postgres', q{SELECT broker.enqueue('idle', '{"wake": 1}')});
is(($waiter->finish)[0], '1', 'the long-polling consumer is woken with the message');
my ($wakeups) = map { $_->[0] } rows('postgres', q{SELECT wakeups FROM broker.waiters('idle')});
my ($consumer) = rows('postgres', q{SELECT sum(delivered), sum(deleted), extract(epoch FROM max(last_seen))
  FROM broker.consumers WHERE consumer = 'worker-a' AND queue = 'orders'});
$s = scrape_until(20,
	sub { value($_[0], 'broker_waiters_waiting', database => 'postgres', queue => 'idle') eq '0' });
is(value($s, 'broker_waiters_wakeups_total', database => 'postgres', queue => 'idle'), $wakeups,
	"broker_waiters_wakeups_total: $wakeups");
cmp_ok($wakeups, '>=', 1, 'the wake-up is counted');
is(value($s, 'broker_waiters_empty_wakeups_total', database => 'postgres', queue => 'idle'),
	$node->safe_psql('postgres', q{SELECT empty_wakeups FROM broker.waiters('idle')}),
	'broker_waiters_empty_wakeups_total');
is(value($s, 'broker_consumer_delivered_total', database => 'postgres', consumer => 'worker-a', queue => 'orders'),
	$consumer->[0], "broker_consumer_delivered_total of worker-a: $consumer->[0]");
is(value($s, 'broker_consumer_deleted_total', database => 'postgres', consumer => 'worker-a', queue => 'orders'),
	$consumer->[1], "broker_consumer_deleted_total of worker-a: $consumer->[1] (delete, complete, fail)");
ok(abs(value($s, 'broker_consumer_last_seen_timestamp_seconds', database => 'postgres',
			consumer => 'worker-a', queue => 'orders') - $consumer->[2]) < 0.001,
	'broker_consumer_last_seen_timestamp_seconds');
is(value($s, 'broker_consumer_delivered_total', database => 'postgres', consumer => 'waiter-1', queue => 'idle'),
	'1', 'broker_consumer_delivered_total of the woken consumer');
$waiter->quit;

# --- 5. privileges -----------------------------------------------------------------------

$node->safe_psql('postgres', 'REVOKE pg_monitor FROM broker_exporter');
$s = scrape_until(20, sub { !series($_[0], 'broker_queue_ready') });
is(scalar(series($s, 'broker_queue_ready')), 0,
	'without pg_monitor nor a grant: no queue is shown');
is(value($s, 'pg_exporter_last_scrape_error'), '0', '... and no query fails');
is(scalar(series($s, 'broker_consumer_delivered_total')), 0, '... nor other roles\' consumers');
is(value($s, 'broker_health_state', database => 'postgres', state => 'not running'), '0',
	'... but the reaper of the database is');
$node->safe_psql('postgres', q{SELECT broker.grant('orders', 'broker_exporter', 'produce')});
$s = scrape_until(20, sub { series($_[0], 'broker_queue_ready', database => 'postgres') });
is(join(',', map { $_->{labels}{queue} } series($s, 'broker_queue_ready', database => 'postgres')),
	'orders', 'with a grant on orders: only orders is shown');
$node->safe_psql('postgres', q{
SELECT broker.revoke('orders', 'broker_exporter', 'produce');
GRANT pg_read_all_stats TO broker_exporter;
});
$s = scrape_until(20, sub { series($_[0], 'broker_queue_ready', database => 'postgres') >= 4 });
is(join(',', sort map { $_->{labels}{queue} } series($s, 'broker_queue_ready', database => 'postgres')),
	'idle,orders,orders_dead,secret', 'pg_read_all_stats alone shows every queue');
is($node->safe_psql('postgres', q{SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls
  FROM pg_roles WHERE rolname = 'broker_exporter'}), 'f', 'the role has no other attribute');

# --- 6. promtool and the rules -------------------------------------------------------------

my @broker_text = grep { /^(# (HELP|TYPE) )?broker_/ } split /\n/, $s->{text};
SKIP:
{
	skip 'promtool is not installed', 4 unless defined $promtool;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ $promtool, 'check', 'metrics' ],
		'<', \(join("\n", @broker_text) . "\n"), '>', \$out, '2>', \$err);
	ok($ok, 'promtool check metrics: the broker metrics follow the naming rules')
	  or diag "$out$err";
	is("$out$err", '', '... with nothing to say');
	($out, $err) = ('', '');
	ok(IPC::Run::run([ $promtool, 'check', 'rules', $alerts_file ], '>', \$out, '2>', \$err),
		'promtool check rules monitoring/alerts.yaml')
	  or diag "$out$err";
	($out, $err) = ('', '');
	ok(IPC::Run::run([ $promtool, 'test', 'rules', $alerts_test_file ], '>', \$out, '2>', \$err),
		'promtool test rules monitoring/alerts_test.yaml')
	  or diag "$out$err";
}

my $alerts = CPAN::Meta::YAML->read($alerts_file)
  or BAIL_OUT("cannot parse $alerts_file: " . CPAN::Meta::YAML->errstr);
my @rules = map { @{ $_->{rules} } } @{ $alerts->[0]{groups} };
my %alert_names = map { $_->{alert} => 1 } @rules;
is(scalar(keys %alert_names), scalar @rules, 'alerts.yaml: ' . scalar(@rules) . ' rules, names unique');
for my $want (qw(BrokerOldestReadyMessageTooOld BrokerBacklogGrowing BrokerMessagesDeadLettered
	BrokerMessagesExpiring BrokerConsumersGone BrokerReaperDown BrokerReaperStalled
	BrokerNotPreloaded))
{
	ok($alert_names{$want}, "alerts.yaml has $want");
}
my %scraped = map { $_ => 1 } keys %{ $s->{series} };
for my $rule (@rules)
{
	ok( $rule->{labels}{severity} && $rule->{annotations}{summary}
		  && $rule->{annotations}{description},
		"$rule->{alert}: severity, summary and description");
	my @used = $rule->{expr} =~ /\b((?:broker|pg)_[a-z_]+)\b/g;
	my @unknown = grep { !$scraped{$_} } @used;
	is("@unknown", '', "$rule->{alert}: uses only scraped metrics (@used)");
}
my $alerts_test = CPAN::Meta::YAML->read($alerts_test_file);
my %tested = map { $_->{alertname} => 1 } map { @{ $_->{alert_rule_test} } } @{ $alerts_test->[0]{tests} };
is(join(',', grep { !$tested{$_} } sort keys %alert_names), '',
	'alerts_test.yaml tests every alert');

# --- 7. without shared_preload_libraries ------------------------------------------------

$node->adjust_conf('postgresql.conf', 'shared_preload_libraries', "''");
$node->restart;
$s = scrape_until(30, sub { value($_[0], 'broker_server_preloaded', database => 'postgres') eq '0' });
is(value($s, 'broker_server_preloaded', database => 'postgres'), '0', 'not preloaded: preloaded 0');
is(value($s, 'pg_exporter_last_scrape_error'), '0', 'not preloaded: no query fails');
is(value($s, 'broker_queue_messages', database => 'postgres', queue => 'orders'),
	$node->safe_psql('postgres', q{SELECT total FROM broker.metrics('orders')}),
	'not preloaded: the depth is still counted');
for my $c (grep { /_total$/ } @cols)
{
	is(value($s, "broker_queue_$c", database => 'postgres', queue => 'orders'), 'NaN',
		"not preloaded: broker_queue_$c is NaN");
}
is(value($s, 'broker_health_state', database => 'postgres', state => 'not running'), '1',
	'not preloaded: the state is "not running"');
is(scalar(series($s, 'broker_health_pid')), 0, 'not preloaded: no reaper series');
is(scalar(series($s, 'broker_waiters_waiting')), 0,
	'not preloaded: no waiters series (and no failed query)');
is(scalar(series($s, 'broker_consumer_delivered_total')), 0, 'not preloaded: no consumers series');

# --- the end ---------------------------------------------------------------------------------

$exp->signal('TERM');
$exp->finish;
$exp = undef;
my $log = slurp_file($exporter_log);
my @errors = grep { /level=error/ && !/bad connection|connection refused|terminating connection|shutting down|starting up|No such file/ }
  split /\n/, $log;
is("@errors", '', 'the exporter logged no error but those of the restart');
$node->stop;

done_testing();
