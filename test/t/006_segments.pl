# 006_segments.pl: space comes back while an old snapshot is held.
#
# A REPEATABLE READ transaction stays open while producers and consumers
# move many messages through a queue.  VACUUM can remove none of the dead
# rows, but the background worker rotates the segments and TRUNCATEs the
# drained ones, so the message tables stay small; nothing is lost.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('segments');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'broker'
broker.segment_size = 3000
broker.reaper_interval = '100ms'
autovacuum = off
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION broker;
	SELECT broker.create_queue('churn');
	CREATE TABLE consumed (id bigint);
});

my $size_sql = q{SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
                  WHERE c.relname IN ('messages_0', 'messages_1', 'messages_2', 'messages_3')
                    AND c.relnamespace = 'broker'::regnamespace};

# One round: 1000 messages in, all of them out (dequeue + delete).
sub round
{
	$node->safe_psql('postgres', q{
		SELECT count(*) FROM broker.enqueue_batch('churn',
			(SELECT array_agg(jsonb_build_object('pad', repeat('x', 200))) FROM generate_series(1, 1000)));
		INSERT INTO consumed
		SELECT * FROM broker.delete('churn', ARRAY(SELECT id FROM broker.dequeue('churn', 1000)));
	});
}

# warm up: two rounds, then let maintenance settle
round() for 1 .. 2;
usleep(500_000);
my $base = $node->safe_psql('postgres', $size_sql);

# an old snapshot from now on
my ($in, $out, $err) = ('', '', '');
my $holder = IPC::Run::start(
	[ 'psql', '-XAtq', '-h', $node->host, '-p', $node->port, 'postgres' ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM consumed;\n";
$holder->pump until $out =~ /\d+\n/;
my $seen_before = $out;

for my $i (1 .. 30)
{
	round();
	usleep(150_000) if $i % 3 == 0;    # let the worker run now and then
}
usleep(1_000_000);

my $end = $node->safe_psql('postgres', $size_sql);
my $xmin_held = $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND state = 'idle in transaction'});
is($xmin_held, '1', 'the old snapshot is still held');

note("segment tables: $base bytes after warm-up, $end bytes after 30,000 more messages");
cmp_ok($end, '<=', 2 * $base + 2 * 1024 * 1024,
	'the message tables did not grow with the dead rows the old snapshot pins');
my $rotations = $node->safe_psql('postgres',
	q{SELECT max(first_id) > 20000 FROM broker.segments});
is($rotations, 't', 'the segments rotated');

is($node->safe_psql('postgres', q{SELECT count(*), count(DISTINCT id) FROM consumed}),
	'32000|32000', 'every message was consumed exactly once');
is($node->safe_psql('postgres', q{SELECT total FROM broker.metrics('churn')}), '0', 'nothing left');

# the old snapshot still works (it sees the table as it was)
$out = '';
$in .= "SELECT count(*) FROM consumed; COMMIT;\n";
$holder->pump until $out =~ /\d+\n/;
is($out, $seen_before, 'the REPEATABLE READ transaction still sees its snapshot of other tables');
$in .= "\\q\n";
$holder->finish;

# and with nothing held, everything drained is truncated
usleep(500_000);
my $after = $node->safe_psql('postgres', $size_sql);
cmp_ok($after, '<=', $end, 'no growth once the snapshot is gone');

$node->stop;
done_testing();
