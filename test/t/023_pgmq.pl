# 023_pgmq.pl: broker_pgmq, the PGMQ-compatible interface (pgmq/,
# docs/pgmq.md), on a running server, with a real PGMQ client.
#
#  1. broker_pgmq installs on broker (CREATE EXTENSION ... CASCADE); if the
#     installation under test lacks it, the test installs it first
#     (make -C pgmq install, with the pg_config on PATH);
#  2. read_with_poll sleeps on broker's event-driven wait: it holds no
#     snapshot (backend_xmin NULL) and a send by another session wakes it
#     at once, long before max_poll_seconds;
#  3. concurrent consumers through pgmq (pgbench -M extended, 4 clients):
#     pop, and read then archive, take every message exactly once;
#  4. pg_dump and pg_restore carry the per-queue views (not extension
#     members), their grants, the archive and the messages;
#  5. migration from PGMQ with pgmq/migrate_from_pgmq.sql: from a PGMQ 1.11
#     schema renamed in the same database, and from a PGMQ 1.5 schema of
#     another database imported with postgres_fdw;
#  6. pgmq-js 1.3.1 from the npm registry (pgmq/test/node/pgmq_js_test.js):
#     create, send, read, set_vt, archive, delete, pop, metrics, the queue
#     list; untyped parameters through node-postgres; pgmq-js's defaults
#     (SSL on, CREATE EXTENSION pgmq) and the settings that replace them,
#     over a unix socket and over TCP with SSL (a certificate made here with
#     openssl).  Node.js and npm come from Debian (installed when the test
#     runs as root or with password-less sudo); without them, or without
#     the npm registry, this part is skipped with the reason.
use strict;
use warnings;

use lib 'test/perl';
use BrokerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use File::Temp ();
use File::Copy ();
use Time::HiRes qw(time usleep);

my $src = $ENV{TESTDIR} // '.';

# --- 1. broker_pgmq in the installation under test ---------------------------

my $pg_config = `pg_config --bindir`;
chomp $pg_config;
$pg_config .= '/pg_config';
my $sharedir = `$pg_config --sharedir`;
chomp $sharedir;
if (!-f "$sharedir/extension/broker_pgmq.control")
{
	note "broker_pgmq is not installed in $sharedir: make -C pgmq install";
	system('make', '-s', '-C', "$src/pgmq", "PG_CONFIG=$pg_config", 'install') == 0
	  or BAIL_OUT("cannot install broker_pgmq from $src/pgmq");
}

# A certificate for the SSL part of the client test, when openssl is here.
my $openssl = (grep { -x "$_/openssl" } split(/:/, $ENV{PATH}), '/usr/bin')[0];

my $node = PostgreSQL::Test::Cluster->new('pgmq');
$node->init;
my @conf = (
	"shared_preload_libraries = 'broker'",
	'max_connections = 60',
	"broker.reaper_interval = '200ms'");
my $ssl_ca;
if (defined $openssl)
{
	my $dir = $node->data_dir;
	my ($o, $e) = ('', '');
	my $made = IPC::Run::run(
		[
			"$openssl/openssl", 'req', '-x509', '-newkey', 'rsa:2048',
			'-nodes', '-days', '2', '-subj', '/CN=localhost',
			'-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
			'-keyout', "$dir/server.key", '-out', "$dir/server.crt"
		],
		'<', \undef, '>', \$o, '2>', \$e);
	note "openssl could not make a certificate: $e" unless $made;
	if ($made)
	{
		chmod 0600, "$dir/server.key";
		$ssl_ca = "$dir/server.crt";
		push @conf, 'ssl = on', "ssl_cert_file = 'server.crt'",
		  "ssl_key_file = 'server.key'", "listen_addresses = '127.0.0.1'";
	}
}
$node->append_conf('postgresql.conf', join("\n", @conf) . "\n");
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION broker_pgmq CASCADE');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname)
		   FROM pg_extension WHERE extname LIKE 'broker%'"),
	'broker 0.2.0, broker_pgmq 0.1.0',
	'broker_pgmq installs on broker');

# --- 2. read_with_poll: broker's wait --------------------------------------------

$node->safe_psql('postgres', "SELECT pgmq.create('w')");
my $waiter = BrokerTest::Session->new($node, 'waiter');
my $pid = $waiter->safe('SELECT pg_backend_pid()');
my $t0 = time;
$waiter->start("SELECT message FROM pgmq.read_with_poll('w', 30, 1, 60, 100)");
ok( poll(
		$node, 'postgres',
		"SELECT wait_event_type || '/' || wait_event || '/' || (backend_xmin IS NULL)
		   FROM pg_stat_activity WHERE pid = $pid",
		'Extension/Extension/true', 30),
	'read_with_poll waits in broker (wait event Extension), holding no snapshot');
is($node->safe_psql('postgres', "SELECT waiting FROM broker.waiters('w')"),
	'1', 'broker.waiters counts it');
$node->safe_psql('postgres', q{SELECT pgmq.send('w', '{"wake": 1}')});
my ($out, $err) = $waiter->finish;
my $waited = time - $t0;
is($out, '{"wake": 1}', 'a send by another session wakes read_with_poll');
cmp_ok($waited, '<', 20, "it returned at once, not after max_poll_seconds ($waited s)");
$waiter->quit;

# --- 3. concurrent consumers through pgmq ---------------------------------------

$node->safe_psql(
	'postgres', q{
SELECT pgmq.create('c_pop'), pgmq.create('c_arch');
SELECT count(*) FROM pgmq.send_batch('c_pop',
    ARRAY(SELECT jsonb_build_object('n', n) FROM generate_series(1, 2000) n));
SELECT count(*) FROM pgmq.send_batch('c_arch',
    ARRAY(SELECT jsonb_build_object('n', n) FROM generate_series(1, 1000) n));
CREATE TABLE popped (msg_id bigint, n int);
CREATE TABLE archived_ids (msg_id bigint);
});
my $tmp = File::Temp->newdir();
my $pop_script = "$tmp/pop.sql";
append_to_file($pop_script,
	"INSERT INTO popped SELECT msg_id, (message->>'n')::int FROM pgmq.pop('c_pop', 5);\n");
my $arch_script = "$tmp/arch.sql";
append_to_file($arch_script,
	"INSERT INTO archived_ids SELECT * FROM pgmq.archive('c_arch', "
	  . "ARRAY(SELECT msg_id FROM pgmq.read('c_arch', 30, 3)));\n");
my @benches;
for my $b ([ $pop_script, 140 ], [ $arch_script, 120 ])
{
	my ($bout, $berr) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-M', 'extended', '-c', '4', '-j', '4',
			'-t', $b->[1], '-f', $b->[0],
			'-h', $node->host, '-p', $node->port, 'postgres'
		],
		'<', \undef, '>', \$bout, '2>', \$berr);
	push @benches, [ $h, \$bout, \$berr ];
}
for my $b (@benches)
{
	$b->[0]->finish;
	is($? >> 8, 0, 'pgbench through pgmq ran without error')
	  or diag ${ $b->[1] } . ${ $b->[2] };
}
is( $node->safe_psql(
		'postgres',
		'SELECT count(*), count(DISTINCT msg_id), count(DISTINCT n), min(n), max(n) FROM popped'),
	'2000|2000|2000|1|2000',
	'pop by 4 concurrent clients: every message exactly once');
is( $node->safe_psql(
		'postgres',
		"SELECT (SELECT count(*) FROM archived_ids), (SELECT count(DISTINCT msg_id) FROM archived_ids),
		        (SELECT count(*) FROM pgmq.a_c_arch), (SELECT count(*) FROM pgmq.q_c_arch),
		        (SELECT count(*) FROM pgmq.a_c_arch a JOIN archived_ids i USING (msg_id))"),
	'1000|1000|1000|0|1000',
	'read then archive by 4 concurrent clients: every message archived exactly once');

# --- 4. pg_dump and pg_restore ----------------------------------------------------

$node->safe_psql('postgres', 'CREATE DATABASE dumpsrc');
$node->safe_psql('postgres', 'CREATE DATABASE dumpdst');
$node->safe_psql(
	'dumpsrc', q{
CREATE EXTENSION broker_pgmq CASCADE;
SELECT pgmq.create('kept');
SELECT count(*) FROM pgmq.send_batch('kept', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[]);
SELECT pgmq.archive('kept', (SELECT min(msg_id) FROM pgmq.q_kept));
SELECT pgmq.bind_topic('kept.#', 'kept');
});
my $dump = "$tmp/dump.custom";
$node->command_ok(
	[ 'pg_dump', '-Fc', '-f', $dump, '-h', $node->host, '-p', $node->port, 'dumpsrc' ],
	'pg_dump of a database with broker_pgmq');
$node->command_ok(
	[ 'pg_restore', '-d', 'dumpdst', '-h', $node->host, '-p', $node->port, $dump ],
	'pg_restore into another database');
is( $node->safe_psql(
		'dumpdst', q{
SELECT (SELECT string_agg(message->>'n', ',' ORDER BY msg_id) FROM pgmq.q_kept),
       (SELECT string_agg(message->>'n', ',') FROM pgmq.a_kept),
       (SELECT string_agg(queue_name, ',') FROM pgmq.list_queues()),
       has_table_privilege('public', 'pgmq.q_kept', 'SELECT'),
       has_table_privilege('public', 'pgmq.a_kept', 'DELETE'),
       (SELECT count(*) FROM broker.subscriptions WHERE queue = 'kept')}),
	'2,3|1|kept|t|t|1',
	'the views, their grants, the archive, messages and bindings are restored');
is( $node->safe_psql(
		'dumpdst', q{
SELECT pgmq.send_topic('kept.x', '{"n": 4}');
SELECT count(*) FROM pgmq.read('kept', 30, 10);
SELECT pgmq.archive('kept', (SELECT max(msg_id) FROM pgmq.q_kept));
SELECT count(*) FROM pgmq.a_kept;}),
	"1\n3\nt\n2",
	'and the restored queue works');

# --- 5. migration from PGMQ ---------------------------------------------------------

# PGMQ's tables (the shape of PGMQ 1.11, or 1.5 without last_read_at and
# topic bindings), with messages and archives, in schema $schema.
sub fake_pgmq
{
	my ($db, $schema, $version) = @_;
	my $last_read = $version eq '1.11' ? 'last_read_at timestamptz,' : '';
	my $sql = qq{
CREATE SCHEMA $schema;
CREATE TABLE $schema.meta (queue_name varchar UNIQUE NOT NULL, is_partitioned boolean NOT NULL,
                           is_unlogged boolean NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
};
	for my $q ('Orders', 'audit')
	{
		my $l = lc $q;
		$sql .= qq{
INSERT INTO $schema.meta VALUES ('$q', false, false, now());
CREATE TABLE $schema.q_$l (msg_id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    read_ct int NOT NULL DEFAULT 0, enqueued_at timestamptz NOT NULL DEFAULT now(),
    $last_read vt timestamptz NOT NULL, message jsonb, headers jsonb);
CREATE TABLE $schema.a_$l (msg_id bigint PRIMARY KEY, read_ct int NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(), $last_read
    archived_at timestamptz NOT NULL DEFAULT now(), vt timestamptz NOT NULL, message jsonb, headers jsonb);
INSERT INTO $schema.q_$l (vt, message, headers, read_ct) VALUES
    (now() - interval '1 minute', '{"q": "$l", "n": 1}', '{"h": 1}', 0),
    (now() + interval '1 hour', '{"q": "$l", "n": 2}', NULL, 1),
    (now(), '{"q": "$l", "n": 3}', NULL, 0);
INSERT INTO $schema.a_$l (msg_id, read_ct, vt, message) VALUES
    (1, 2, now(), '{"q": "$l", "archived": 1}'), (2, 1, now(), '{"q": "$l", "archived": 2}');
};
	}
	if ($version eq '1.11')
	{
		$sql .= qq{
CREATE TABLE $schema.topic_bindings (pattern text NOT NULL, queue_name text NOT NULL);
INSERT INTO $schema.topic_bindings VALUES ('orders.*', 'Orders'), ('#', 'audit');
};
	}
	$node->safe_psql($db, $sql);
	return;
}

sub migrate
{
	my ($db, $schema) = @_;
	my ($ret, $stdout, $stderr) = $node->psql($db, undef,
		extra_params => [ '-v', "old_schema=$schema", '-f', "$src/pgmq/migrate_from_pgmq.sql" ],
		on_error_stop => 1);
	is($ret, 0, "migrate_from_pgmq.sql from schema $schema in $db") or diag $stderr;
	return $stderr;
}

sub check_migrated
{
	my ($db, $label, $bindings) = @_;
	is( $node->safe_psql(
			$db, q{
SELECT string_agg(queue_name, ',' ORDER BY queue_name) FROM pgmq.list_queues();
SELECT string_agg(format('%s:%s:%s:%s', message->>'n', headers, read_ct, vt > clock_timestamp() + interval '50 minutes'),
                  ' ' ORDER BY msg_id) FROM pgmq.q_orders;
SELECT string_agg(format('%s:%s', msg_id, read_ct), ' ' ORDER BY msg_id) FROM pgmq.a_orders;
SELECT count(*) FROM pgmq.q_audit;
SELECT count(*) FROM pgmq.a_audit;}),
		"audit,orders\n1:{\"h\": 1}:0:f 2::0:t 3::0:f\n1:2 2:1\n3\n2",
		"$label: queues, live messages (a future vt became a delay), archives");
	is( $node->safe_psql($db,
			"SELECT string_agg(queue || ' ' || pattern, ',' ORDER BY queue) FROM broker.subscriptions"),
		$bindings, "$label: topic bindings");
	# new ids start past the old ones: archiving a new message does not collide
	is( $node->safe_psql(
			$db, q{
SELECT count(*) FROM pgmq.send('orders', '{"n": 4}');
SELECT count(*) FROM pgmq.archive('orders', ARRAY(SELECT msg_id FROM pgmq.q_orders));
SELECT count(*) FROM pgmq.a_orders;}),
		"1\n4\n6", "$label: ids of new messages do not collide with archived ones");
	return;
}

# in the same database: PGMQ's schema renamed, then the script
$node->safe_psql('postgres', 'CREATE DATABASE mig_same');
fake_pgmq('mig_same', 'pgmq', '1.11');
$node->safe_psql('mig_same', 'ALTER SCHEMA pgmq RENAME TO pgmq_old');
my $notices = migrate('mig_same', 'pgmq_old');
like($notices, qr/queue orders: 3 messages, 2 archived/, 'the script reports what it copied');
check_migrated('mig_same', 'same database', 'audit #,orders orders.*');

# from another database through postgres_fdw (an older PGMQ: no
# last_read_at, no topic bindings)
$node->safe_psql('postgres', 'CREATE DATABASE mig_src');
$node->safe_psql('postgres', 'CREATE DATABASE mig_dst');
fake_pgmq('mig_src', 'pgmq', '1.5');
my $host = $node->host;
my $port = $node->port;
$node->safe_psql(
	'mig_dst', qq{
CREATE EXTENSION postgres_fdw;
CREATE SERVER pgmq_src FOREIGN DATA WRAPPER postgres_fdw
    OPTIONS (host '$host', port '$port', dbname 'mig_src');
CREATE USER MAPPING FOR CURRENT_USER SERVER pgmq_src;
CREATE SCHEMA pgmq_old;
IMPORT FOREIGN SCHEMA pgmq FROM SERVER pgmq_src INTO pgmq_old;
});
migrate('mig_dst', 'pgmq_old');
check_migrated('mig_dst', 'postgres_fdw', '');

# --- 6. pgmq-js ------------------------------------------------------------------------

SKIP:
{
	my $why = prepare_node_client();
	skip "pgmq-js: $why", 1 if $why ne '';
	my $modules = "$tmp/npm/node_modules";
	my ($nout, $nerr) = ('', '');
	my %env = (
		%ENV,
		NODE_PATH => $modules,
		PGHOST => $node->host,
		PGPORT => $node->port,
		PGUSER => $node->safe_psql('postgres', 'SELECT current_user'),
		PGDATABASE => 'postgres');
	if (defined $ssl_ca)
	{
		$env{PGMQ_SSL_PORT} = $node->port;
		$env{PGMQ_SSL_CA} = $ssl_ca;
	}
	else
	{
		note 'openssl not found: the SSL part of the pgmq-js test is left out';
	}
	local %ENV = %env;
	IPC::Run::run([ 'node', "$src/pgmq/test/node/pgmq_js_test.js" ],
		'<', \undef, '>', \$nout, '2>', \$nerr,
		IPC::Run::timeout(180));
	my $status = $? >> 8;
	for my $line (split /\n/, $nout)
	{
		if ($line =~ /^ok - (.*)/) { pass("pgmq-js: $1"); }
		elsif ($line =~ /^not ok - (.*)/) { fail("pgmq-js: $1"); }
		elsif ($line =~ /^#/) { diag $line; }
	}
	is($status, 0, 'pgmq-js driver: all checks passed') or diag "$nout\n$nerr";
	like($nout, qr/^ok - pgmq-js over SSL/m, 'pgmq-js over SSL ran') if defined $ssl_ca;
}

# Node.js and npm (Debian's packages, installed when we can), and pgmq-js
# from the npm registry into a temporary directory.  Returns '' when ready,
# else why not.
sub prepare_node_client
{
	my $have = sub { system("command -v $_[0] >/dev/null 2>&1") == 0 };
	if (!$have->('node') || !$have->('npm'))
	{
		my @root = $> == 0 ? () : ('sudo', '-n');
		if ($> == 0 || system('sudo -n true >/dev/null 2>&1') == 0)
		{
			note 'node or npm missing: installing the Debian packages nodejs and npm';
			system(@root, 'apt-get', 'update', '-qq');
			system(@root, 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get',
				'install', '-y', '-qq', 'nodejs', 'npm');
		}
		return 'node and npm are not installed and this user cannot install them '
		  . '(as root: apt-get install -y nodejs npm)'
		  unless $have->('node') && $have->('npm');
	}
	mkdir "$tmp/npm";
	File::Copy::copy("$src/pgmq/test/node/package.json", "$tmp/npm/package.json")
	  or return "cannot copy package.json: $!";
	my ($o, $e) = ('', '');
	local $ENV{npm_config_cache} = "$tmp/npm-cache";
	my $ok = eval {
		IPC::Run::run(
			[
				'npm', 'install', '--no-audit', '--no-fund', '--no-package-lock',
				'--no-update-notifier', '--prefix', "$tmp/npm"
			],
			'<', \undef, '>', \$o, '2>', \$e,
			IPC::Run::timeout(300));
	};
	if (!$ok || !-f "$tmp/npm/node_modules/pgmq-js/package.json")
	{
		my @lines = split /\n/, $e . ($@ // '');
		my ($first) = grep { /\b(code|errno|ERR|error)\b/ && !/complete log/ } @lines;
		return 'npm install pgmq-js failed (no access to the npm registry?): '
		  . ($first // $lines[-1] // 'no output');
	}
	note 'pgmq-js ' . `node -p "require('$tmp/npm/node_modules/pgmq-js/package.json').version"`;
	return '';
}

$node->stop;
done_testing();
