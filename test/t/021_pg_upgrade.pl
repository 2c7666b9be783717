# 021_pg_upgrade.pl: pg_upgrade (15 to 15, the binaries of the build under
# test) of a cluster where broker holds queues, ready, leased, delayed,
# grouped, prioritised and expired messages in several segments, dedup
# keys, subscriptions, job records and queue privileges, to a new cluster
# with broker preloaded.
#
# - pg_upgrade --check, then the upgrade, succeed;
# - the broker's background workers do not run while pg_upgrade runs the
#   servers in binary-upgrade mode (-b): no launcher or reaper in the
#   servers' log (kept with --retain, at log level debug1, where the
#   postmaster logs every background worker it registers and starts), and
#   an expired message that a reaper would remove is still there after the
#   upgrade;
# - every row of every broker table, sequence and setting is as it was
#   (and pg_dump of the database is the same);
# - on the new cluster, leases are honoured and their receipts work,
#   delayed messages wait, dequeue finds every ready message (the
#   low-water mark is found again), groups keep their order, dedup keys
#   and subscriptions hold, job records are found, queue privileges hold
#   for their roles, and the worker removes the expired message once it
#   serves the database.
use strict;
use warnings;

use Cwd;
use File::Find;
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;

my $db = 'app';

# The old cluster's reaper does not serve "app" (broker.databases), so the
# expired message stays there as a witness: a worker running during the
# upgrade, where "app" is served (see -o below), would remove it.
my $old = broker_node('old',
	conf => [
		"broker.databases = 'postgres'", "broker.reaper_interval = '100ms'",
		'log_min_messages = debug1', 'log_statement = none'
	]);
like(slurp_file($old->logfile), qr/registering background worker "broker launcher"/,
	'control: at debug1 the log shows the broker launcher registered in normal operation');

$old->safe_psql('postgres', "CREATE DATABASE $db");
my $osql = sub { $old->safe_psql($db, @_) };
$osql->(q{
SET broker.segment_size = 100;
CREATE EXTENSION broker;
SELECT broker.create_queue('dead');
SELECT broker.create_queue('orders', lease => '1 hour', max_message_size => 2000,
                           default_ttl => '7 days', max_deliveries => 3,
                           dead_letter_queue => 'dead', dedup_window => '1 hour');
SELECT broker.create_queue('other', lease => '45 seconds', default_ttl => '1 day');
SELECT broker.create_queue('jobs', lease => '1 minute', retention => '1 day');
SELECT broker.subscribe('orders', 'shop.#');
SELECT broker.subscribe('other', 'shop.*.created');
-- ids past the first segment: consumed ones, a rotation
SELECT count(*) FROM (SELECT broker.enqueue('orders', jsonb_build_object('n', g), headers => '{"h": 1}')
                        FROM generate_series(1, 50) g) e;
SELECT count(*) FROM broker.delete('orders', ARRAY(SELECT id FROM broker.dequeue('orders', 40)));
SELECT count(*) FROM broker.enqueue_batch('other',
    (SELECT array_agg(jsonb_build_object('o', g)) FROM generate_series(1, 150) g));
SELECT count(*) FROM broker.maintain_segments();
SELECT count(*) FROM broker.maintain_segments();
-- routing: a dedup key, a group with a waiting message, a priority, topics
SELECT broker.enqueue('orders', '{"dedup": 1}', dedup_key => 'order-1');
SELECT broker.enqueue('orders', '{"g": "a1"}', group_key => 'acct-1');
SELECT broker.enqueue('orders', '{"g": "a2"}', group_key => 'acct-1');
SELECT broker.enqueue('orders', '{"p": 9}', priority => 9, headers => '{"urgent": true}');
SELECT broker.publish('shop.eu.created', '{"pub": 1}');
SELECT broker.enqueue('orders', '{"delayed": true}', delay => '1 hour');
SELECT broker.enqueue('other', '{"witness": true}', ttl => '1 second');
-- jobs: done, failed, deleted, and one still queued
CREATE TABLE job_ids AS
  SELECT g, broker.enqueue('jobs', jsonb_build_object('job', g)) AS id FROM generate_series(1, 4) g;
SELECT broker.complete('jobs', id, NULL, '{"ok": 1}') FROM job_ids WHERE g = 1;
SELECT broker.fail('jobs', id, NULL, '{"err": 2}') FROM job_ids WHERE g = 2;
SELECT broker.delete('jobs', id) FROM job_ids WHERE g = 3;
-- queue privileges (kept by role oid)
CREATE ROLE app_worker;
CREATE ROLE app_feeder;
SELECT broker.grant('orders', 'app_worker', 'consume');
SELECT broker.grant('*', 'app_feeder', 'produce');
});
# committed leases: the priority-9 message and the two lowest ready ones
is($osql->(q{SELECT count(*) FROM broker.dequeue('orders', 3)}), '3', 'three leases taken');
# one in other, and one released there with a delay
is($osql->(q{SELECT count(*) FROM broker.dequeue('other', 1, lease => '1 hour')}), '1', 'a lease in other');
is($osql->(q{SELECT broker.release('other', d.id, d.receipt, '1 hour') FROM broker.dequeue('other') d}),
	't', 'a release with a delay');
ok(poll($old, $db, q{SELECT count(*) FROM broker.messages WHERE payload = '{"witness": true}' AND expires_at < now()},
		'1', 30),
	'the witness has expired and is still there');

# What must come through, row by row.
my $snapshot = join(";\n",
	(map { "SELECT 'messages_$_', m.* FROM broker.messages_$_ m ORDER BY m.id" } 0 .. 3),
	'SELECT * FROM broker.queue_defs ORDER BY queue_id',
	'SELECT * FROM broker.segments ORDER BY segment',
	(map { "SELECT 'dedup_$_', d.* FROM broker.dedup_$_ d ORDER BY 2, 3" } 0 .. 1),
	(map { "SELECT 'records_$_', r.* FROM broker.records_$_ r ORDER BY 2, 3" } 0 .. 1),
	'SELECT * FROM broker.subscription_defs ORDER BY 1, 2',
	'SELECT last_value, is_called FROM broker.message_id_seq',
	'SELECT last_value, is_called FROM broker.queue_id_seq',
	'SELECT * FROM broker.queues ORDER BY queue',
	'SELECT * FROM broker.subscriptions ORDER BY 1, 2',
	'SELECT * FROM broker.grant_defs ORDER BY 1, 2, 3',
	'SELECT * FROM broker.grants ORDER BY 1, 2, 3',
	'SELECT queue, ready, leased, delayed, total FROM broker.metrics() ORDER BY queue',
	q{SELECT extversion FROM pg_extension WHERE extname = 'broker'});
my $want = $osql->($snapshot);
# Deliverable now: heads and ungrouped messages, due, not expired.
my $deliverable = q{
	SELECT string_agg(m.id::text, ',' ORDER BY m.priority DESC, m.id)
	  FROM broker.messages m JOIN broker.queue_defs q ON q.queue_id = m.queue_id
	 WHERE q.name = '%s' AND m.vt <= now() AND (m.expires_at IS NULL OR m.expires_at > now())};
my %want_ready = map { $_ => $osql->(sprintf($deliverable, $_)) } qw(orders other jobs);
my $want_leases = $osql->(q{
	SELECT string_agg(m.id || ':' || m.receipt || ':' || m.delivery_count, ',' ORDER BY m.id)
	  FROM broker.messages m WHERE m.receipt IS NOT NULL AND m.vt > now()});
my $dir = PostgreSQL::Test::Utils::tempdir;
command_ok([ 'pg_dump', '-h', $old->host, '-p', $old->port, '-f', "$dir/before.sql", $db ],
	'pg_dump before the upgrade');

# the source has what the test is about
like($want, qr/^messages_0\|/m, 'messages in segment 0');
like($want, qr/^messages_1\|/m, 'and in segment 1');
like($want, qr/^dedup_[01]\|\d+\|order-1\|/m, 'a dedup key');
like($want, qr/^records_[01]\|\d+\|\d+\|done\|/m, 'job records');
like($want, qr/^\d+\|shop\.\*\.created$/m, 'subscriptions');
like($want, qr/^orders\|app_worker\|consume$/m, 'queue privileges');
like($want, qr/^messages_\d\|-\d+\|\d+\|/m, 'a message waiting in its group');
my @want_leases = split /,/, $want_leases;
is(scalar(@want_leases), 4, 'four committed leases');
like($want_ready{orders}, qr/^\d+(,\d+){8,}$/, 'ready messages in orders');

$old->stop;

# --- the upgrade -------------------------------------------------------------------
my $new = PostgreSQL::Test::Cluster->new('new');
$new->init;
$new->append_conf('postgresql.conf', join("\n",
	"shared_preload_libraries = 'broker'",
	"broker.databases = 'postgres'",        # the witness stays until checked
	"broker.reaper_interval = '100ms'",
	'log_min_messages = debug1',
	'log_statement = none', ''));

my $oldbindir = $old->config_data('--bindir');
my $newbindir = $new->config_data('--bindir');
my $upgrade_dir = "$dir/upgrade";
mkdir $upgrade_dir or die "mkdir $upgrade_dir: $!";
my $cwd = getcwd();
chdir $upgrade_dir or die "chdir $upgrade_dir: $!";
my @pg_upgrade = (
	'pg_upgrade', '--no-sync', '--retain',
	'-d', $old->data_dir, '-D', $new->data_dir,
	'-b', $oldbindir, '-B', $newbindir,
	'-s', $new->host, '-p', $old->port, '-P', $new->port,
	# a worker that ran anyway would serve "app" in the old cluster
	'-o', '-c broker.databases=app -c log_min_messages=debug1',
	'-O', '-c log_min_messages=debug1');

my $output_dir = $new->data_dir . '/pg_upgrade_output.d';
my $server_logs = sub {
	my @logs;
	find(sub { push @logs, $File::Find::name if /^pg_upgrade_server.*\.log$/ }, $output_dir)
	  if -d $output_dir;
	return join('', map { slurp_file($_) } sort @logs);
};
my $dump_logs = sub {
	return unless -d $output_dir;
	find(sub {
			if (/\.log$/) { diag "=== $File::Find::name ===\n" . slurp_file($_); }
		},
		$output_dir);
};

command_ok([ @pg_upgrade, '--check' ], 'pg_upgrade --check') or $dump_logs->();
my $check_log = $server_logs->();
like($check_log, qr/DEBUG:/, '--check: the servers logged at debug1');
unlike($check_log, qr/broker (launcher|reaper)/, '--check: no broker worker in the servers\' log');
rmtree($output_dir);

command_ok(\@pg_upgrade, 'pg_upgrade') or $dump_logs->();
my $upgrade_log = $server_logs->();
like($upgrade_log, qr/DEBUG:/, 'the servers logged at debug1');
like($upgrade_log, qr/database system is ready to accept connections/, 'servers were started');
unlike($upgrade_log, qr/broker (launcher|reaper)/,
	'no broker worker registered, started or logging in binary-upgrade mode');
unlike($upgrade_log, qr/\b(ERROR|FATAL|PANIC)\b/, 'no error in the servers\' log');
rmtree($output_dir);
chdir $cwd;

# --- the new cluster ------------------------------------------------------------
$new->start;
my $sql = sub { $new->safe_psql($db, @_) };
like(slurp_file($new->logfile), qr/starting background worker process "broker launcher"/,
	'control: in normal operation the launcher starts and is logged');
is($sql->($snapshot), $want,
	'every message (with its segment, lease, receipt, group, priority), queue, setting, segment, '
	  . 'dedup key, subscription, job record and sequence as before; the expired witness too');
command_ok([ 'pg_dump', '-h', $new->host, '-p', $new->port, '-f', "$dir/after.sql", $db ],
	'pg_dump after the upgrade');
# (\restrict and \unrestrict carry a random key, different in every dump)
my $dump_text = sub { slurp_file($_[0]) =~ s/^\\(un)?restrict .*$//mgr };
is($dump_text->("$dir/after.sql"), $dump_text->("$dir/before.sql"), 'pg_dump: the same database');
is($sql->(q{SELECT DISTINCT library_version || ' ' || extension_version FROM broker.health()}),
	'0.2.0 0.2.0', 'health(): library and extension versions');

# leases: not delivered; their receipts work
my %leases = map { my ($id, $r, $dc) = split /:/; ($id => [ $r, $dc ]) } split /,/, $want_leases;
is($sql->(sprintf(q{SELECT count(*) FROM broker.messages WHERE id IN (%s) AND vt > now()},
			join(',', keys %leases))),
	'4', 'the leases still run');

# dequeue finds every ready message, in priority and id order, and only them
for my $q (qw(orders other jobs))
{
	is($sql->(qq{SELECT string_agg(id::text, ',' ORDER BY ord)
	               FROM broker.dequeue('$q', 1000, lease => '1 hour') WITH ORDINALITY AS d(id, p, h, e, dc, l, x, r, ord)}),
		$want_ready{$q}, "$q: dequeue delivers every ready message and no leased, delayed, waiting or expired one");
}
my ($orders_lease) = grep { $sql->("SELECT count(*) FROM broker.messages m JOIN broker.queue_defs q USING (queue_id)
                                     WHERE q.name = 'orders' AND m.id = $_") } sort keys %leases;
is($sql->("SELECT broker.delete('orders', $orders_lease, 1)"), 'f', 'a wrong receipt deletes nothing');
is($sql->("SELECT broker.delete('orders', $orders_lease, $leases{$orders_lease}[0])"), 't',
	'a receipt from before the upgrade deletes');
my ($other_lease) = grep { $sql->("SELECT count(*) FROM broker.messages m JOIN broker.queue_defs q USING (queue_id)
                                    WHERE q.name = 'other' AND m.id = $_") } sort keys %leases;
is($sql->("SELECT broker.extend_lease('other', $other_lease, $leases{$other_lease}[0], '1 minute') IS NOT NULL"),
	't', 'a receipt from before the upgrade extends');
is($sql->("SELECT broker.release('other', $other_lease, $leases{$other_lease}[0])"), 't',
	'and releases');
is($sql->(q{SELECT id || ' ' || delivery_count FROM broker.dequeue('other')}),
	"$other_lease " . ($leases{$other_lease}[1] + 1), 'the released message comes again');

# the group moves on when its head leaves
my $a2 = $sql->(q{SELECT id FROM broker.messages WHERE payload = '{"g": "a2"}'});
$sql->(q{SELECT broker.delete('orders', id) FROM broker.messages WHERE payload = '{"g": "a1"}'});
is($sql->(q{SELECT id FROM broker.dequeue('orders')}), $a2, 'the group: the next message after its head');

# dedup keys and subscriptions hold
my $dedup_id = $sql->(q{SELECT id FROM broker.messages WHERE payload = '{"dedup": 1}'});
is($sql->(q{SELECT broker.enqueue('orders', '{"dedup": 2}', dedup_key => 'order-1')}), $dedup_id,
	'a dedup key from before the upgrade: the same id, nothing stored');
is($sql->(q{SELECT count(*) FROM broker.messages WHERE payload = '{"dedup": 2}'}), '0', 'nothing stored');
is($sql->(q{SELECT broker.publish('shop.us.created', '{"pub": 2}')}), '2', 'subscriptions: both queues');
is($sql->(q{SELECT broker.publish('shop.us', '{"pub": 3}')}), '1', 'subscriptions: the matching one');

# job records
is($sql->(q{SELECT string_agg(s.state || ' ' || coalesce(s.result::text, '-'), ',' ORDER BY s.id)
              FROM broker.status('jobs', ARRAY(SELECT id FROM job_ids ORDER BY g)) s}),
	'done {"ok": 1},failed {"err": 2},deleted -,leased -', 'status: the records and the leased job');
is($sql->(q{SELECT count(*) FROM broker.archive('jobs')}), '3', 'archive: three records');
is($sql->(q{SELECT broker.complete('jobs', id, NULL, '{"ok": 4}') FROM job_ids WHERE g = 4}), 't',
	'a job from before the upgrade completes');
is($sql->(q{SELECT s.state || ' ' || s.result FROM job_ids j, broker.status('jobs', j.id) s WHERE j.g = 4}),
	'done {"ok": 4}', 'and has its record');

# queue privileges
is($sql->(q{SET ROLE app_feeder; SELECT broker.enqueue('orders', '{"by": "feeder"}', priority => 8) > 0}),
	't', 'a role granted produce on every queue before the upgrade produces');
is($sql->(q{SET ROLE app_worker; SELECT payload FROM broker.dequeue('orders')}), '{"by": "feeder"}',
	'a role granted consume before the upgrade consumes');
is(sqlstate($new, q{SET ROLE app_worker; SELECT count(*) FROM broker.dequeue('other')}, $db), '42501',
	'but not from a queue it was not granted');
is(sqlstate($new, q{SET ROLE app_feeder; SELECT count(*) FROM broker.dequeue('orders')}, $db), '42501',
	'and a producer does not consume');

# new work
my $new_id = $sql->(q{SELECT broker.enqueue('other', '{"new": true}', priority => 5)});
cmp_ok($new_id, '>', $sql->(q{SELECT max(id) FROM broker.messages WHERE id <> }.$new_id),
	'a new message gets a new id');
is($sql->(q{SELECT id FROM broker.dequeue('other')}), $new_id, 'and is delivered');
$sql->(q{SELECT broker.create_queue('fresh_q', retention => '1 hour')});
is($sql->(q{SELECT count(*) FROM broker.dequeue('fresh_q')}), '0', 'a new queue works');

# the worker: once it serves the database, it removes the expired witness
is($sql->(q{SELECT count(*) FROM broker.messages WHERE payload = '{"witness": true}'}), '1',
	'the witness is still there');
$new->safe_psql('postgres', q{ALTER SYSTEM SET broker.databases = ''; SELECT pg_reload_conf()});
ok(poll($new, $db, q{SELECT count(*) FROM broker.messages WHERE payload = '{"witness": true}'}, '0', 60),
	'the worker removes the expired message after the upgrade');

$new->stop;
done_testing();
