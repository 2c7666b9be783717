# 015_shared_state.pl: the shared state of an installation is freed when
# the extension or its database is dropped, and the reaper cannot be made
# to run anything of a database owner's.
#
# Queue states, segment states and consumer history used to stay in shared
# memory until a restart: after broker.max_queues queues, or 256
# installations, every new one failed with 53200.  A database owner who
# set the database's search_path got the reaper (a superuser) to run an
# unqualified count(*) of theirs every second.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $node = PostgreSQL::Test::Cluster->new('shared');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'broker'
broker.max_queues = 16
broker.max_consumers = 16
broker.reaper_interval = '100ms'
broker.segment_size = 100
log_statement = none
});
$node->start;

# --- the reaper under a database owner's search_path ---------------------------
$node->safe_psql('postgres', q{
CREATE ROLE owner_evil LOGIN;
CREATE DATABASE evil_db OWNER owner_evil;
});
$node->safe_psql('evil_db', q{CREATE EXTENSION broker});
$node->safe_psql('evil_db', q{
SET ROLE owner_evil;
CREATE SCHEMA evil;
CREATE TABLE evil.ran (who text, backend text);
CREATE FUNCTION evil.note() RETURNS void LANGUAGE sql AS $$
    INSERT INTO evil.ran SELECT current_user,
        (SELECT a.backend_type FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())
$$;
CREATE FUNCTION evil.sf(int8) RETURNS int8 LANGUAGE sql AS $$ SELECT evil.note(); SELECT $1 + 1 $$;
CREATE AGGREGATE evil.count(*) (sfunc = evil.sf, stype = int8, initcond = '0');
CREATE FUNCTION evil.min(timestamptz) RETURNS timestamptz LANGUAGE sql AS $$ SELECT evil.note(); SELECT $1 $$;
CREATE FUNCTION evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS $$ SELECT evil.note(); SELECT 1::bigint $$;
CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE sql AS $$ SELECT evil.note(); SELECT * FROM pg_catalog.unnest($1) $$;
GRANT ALL ON SCHEMA evil TO PUBLIC;
GRANT ALL ON evil.ran TO PUBLIC;
ALTER DATABASE evil_db SET search_path = evil, pg_catalog;
});
# the reaper of evil_db starts with the new setting: make it restart
$node->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	   WHERE backend_type = 'broker reaper' AND datname = 'evil_db'});
$node->safe_psql('evil_db', q{
SELECT broker.create_queue('eq');
SELECT broker.create_queue('stays');
SELECT broker.enqueue('stays', '{}', delay => '1 hour');
SELECT broker.enqueue('eq', '{}', ttl => '200 ms') FROM pg_catalog.generate_series(1, 300);
});
my $deadline = time + 20;
my $left;
while (time < $deadline)
{
	$left = $node->safe_psql('evil_db', q{SELECT pg_catalog.count(*) FROM broker.messages});
	last if $left eq '1';
	usleep(200_000);
}
is($left, '1', 'the reaper of a database with a hostile search_path removed the expired messages');
usleep(1_000_000);
isnt($node->safe_psql('evil_db', q{SELECT pg_catalog.max(first_id) FROM broker.segments}),
	'', 'and rotated the segments (its maintenance ran there)');
is($node->safe_psql('evil_db', q{SELECT pg_catalog.count(*) FROM evil.ran}),
	'0', 'and ran none of the database owner\'s functions');

# One installation: a queue used by a named consumer.
my $use = q{
CREATE EXTENSION broker;
SELECT broker.create_queue('q');
SELECT broker.enqueue('q', '{}');
SET broker.consumer = 'c';
SELECT broker.delete('q', m.id) FROM broker.dequeue('q') m;
};

# DROP EXTENSION and CREATE EXTENSION, 300 times, in one database: more
# installations than there are segment-state slots (256), more queues
# than broker.max_queues, more consumers than broker.max_consumers.
my $script = '';
$script .= "DROP EXTENSION IF EXISTS broker;\n$use" for 1 .. 300;
my ($ret, $out, $err) = $node->psql('postgres', $script);
is($ret, 0, 'DROP/CREATE EXTENSION 300 times: no error');
unlike($err, qr/ERROR/, 'no "too many" error');
is($node->safe_psql('postgres',
	q{SELECT count(*) FROM broker.consumers WHERE consumer LIKE '(evicted%'}),
	'0', 'no consumer history had to be evicted');

# DROP SCHEMA broker CASCADE drops the extension too.
($ret, $out, $err) = $node->psql('postgres',
	"DROP SCHEMA broker CASCADE;\n$use" x 20);
is($ret, 0, 'DROP SCHEMA broker CASCADE and CREATE EXTENSION 20 times: no error');

# CREATE DATABASE, use broker there, DROP DATABASE, 20 times.
my $failed = 0;
for my $i (1 .. 20)
{
	$node->safe_psql('postgres', "CREATE DATABASE tmp_$i");
	($ret, $out, $err) = $node->psql("tmp_$i", $use);
	$failed++ if $ret != 0;
	$node->safe_psql('postgres', "DROP DATABASE tmp_$i");
}
is($failed, 0, 'CREATE DATABASE, use, DROP DATABASE 20 times: no error');

# An aborted DROP EXTENSION forgets nothing: counters go on.
$node->safe_psql('postgres', q{SELECT broker.enqueue('q', '{}')});
$node->safe_psql('postgres', q{BEGIN; DROP EXTENSION broker; ROLLBACK;});
is($node->safe_psql('postgres', q{SELECT enqueued_total FROM broker.metrics('q')}),
	'2', 'a rolled-back DROP EXTENSION keeps the counters');

$node->stop;
done_testing();
