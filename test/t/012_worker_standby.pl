# 012_worker_standby.pl: the background worker does nothing on a standby
# and starts working after promotion.
#
#   - a streaming standby of a primary with broker preloaded runs neither
#     the launcher nor a reaper;
#   - messages that expire on the primary are removed by the primary's
#     reaper, and the deletions replicate;
#   - with the primary's reaper kept away (broker.databases names no
#     database), expired messages replicate to the standby and stay there;
#     after the promotion the standby's launcher and reaper start and
#     remove them.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;
use Time::HiRes qw(usleep time);


my $workers = q{SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type IN ('broker launcher', 'broker reaper')};

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.reaper_interval = '200ms'
log_statement = none
});
$primary->start;
$primary->safe_psql('postgres',
	q{CREATE EXTENSION broker; SELECT broker.create_queue('q');});
ok(poll($primary, 'postgres', $workers, '2', 10),
	'the primary runs the launcher and a reaper');

$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'),
	't', 'the standby is in recovery');

# --- the primary's reaper removes, the deletions replicate -------------------
$primary->safe_psql('postgres',
	q{SELECT broker.enqueue('q', '{}', ttl => '300 ms') FROM generate_series(1, 25)});
$primary->wait_for_catchup($standby);
ok( poll(
		$primary, 'postgres', 'SELECT count(*) FROM broker.messages', '0', 10),
	'the primary\'s reaper removes the expired messages');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT count(*) FROM broker.messages'),
	'0', 'the deletions reached the standby');

# A standby cannot consume: 25006 with a message that says so (it was
# "cannot execute nextval() in a read-only transaction"), and it can look.
my ($ret, $out, $err) = $standby->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT * FROM broker.dequeue('q')");
like($err, qr/ERROR:\s+25006: cannot dequeue on a standby/,
	'dequeue on a standby: 25006, "cannot dequeue on a standby"');
($ret, $out, $err) = $standby->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT broker.enqueue('q', '{}')");
like($err, qr/ERROR:\s+25006: cannot enqueue on a standby/,
	'enqueue on a standby: 25006');
is($standby->safe_psql('postgres', q{SELECT count(*) FROM broker.metrics('q')}),
	'1', 'metrics on a standby');

# After several seconds the standby still runs no worker of ours.
is($standby->safe_psql('postgres', $workers),
	'0', 'no broker launcher or reaper on the standby');

# --- the primary's reaper kept away: expired messages reach the standby ------
$primary->safe_psql('postgres',
	q{ALTER SYSTEM SET broker.databases = 'nosuchdb'; SELECT pg_reload_conf()});
ok(poll($primary, 'postgres', $workers, '1', 10),
	'broker.databases = nosuchdb: the primary\'s reaper stops');
$primary->safe_psql(
	'postgres', q{
SELECT broker.enqueue('q', '{}', ttl => '300 ms') FROM generate_series(1, 30);
SELECT broker.enqueue('q', '{}') FROM generate_series(1, 2);
});
$primary->wait_for_catchup($standby);
sleep 1;
is($standby->safe_psql('postgres', 'SELECT count(*) FROM broker.messages'),
	'32', 'the standby holds the expired messages (nothing removes them there)');
is($standby->safe_psql('postgres', $workers),
	'0', 'still no worker on the standby');

# --- promotion ---------------------------------------------------------------
$primary->stop;
$standby->promote;
ok(poll($standby, 'postgres', $workers, '2', 15),
	'after promotion the standby runs the launcher and a reaper');
ok(poll($standby, 'postgres', 'SELECT count(*) FROM broker.messages', '2', 10),
	'after promotion the reaper removes the expired messages');
is( $standby->safe_psql(
		'postgres',
		q{SELECT state || ':' || removed_total FROM broker.health() WHERE database = 'postgres'}),
	'idle:30', 'health() on the promoted node');

# --- a read-only primary (pg_auto_failover keeps a node being promoted
# read-only for a few seconds): the reaper waits, quietly ----------------------
$standby->safe_psql('postgres', q{
SELECT broker.enqueue('q', '{}', ttl => '100 ms') FROM generate_series(1, 5);
ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();});
my $ro_from = -s $standby->logfile;
sleep 2;
is($standby->safe_psql('postgres', 'SELECT count(*) FROM broker.messages'),
	'7', 'while the server is read-only the reaper removes nothing');
is(log_errors($standby, $ro_from), '',
	'and logs no error (it does not try)');
$standby->safe_psql('postgres', q{
SET default_transaction_read_only = off;
ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf();});
ok(poll($standby, 'postgres', 'SELECT count(*) FROM broker.messages', '2', 10),
	'writable again: the reaper removes the expired messages');

$standby->stop;
done_testing();
