# 016_groups_many.pl: 8 consumers over 1,000 ordered groups (issue 9).
#
# One queue, 1,000 groups of 20 messages each, enqueued in a random order
# of groups (the payload carries the group g and the sequence number s
# within the group, s = 1..20 in enqueue order, so in id order).  Then 8
# consumer processes, each with its own connection, dequeue batches of 4
# to 8 messages and log every delivery in the table `deliveries`, in the
# dequeuing statement itself: client, batch, id, g, s, delivery_count,
# receipt, lease_until and t_start = clock_timestamp() taken after the
# claim.  After a few milliseconds of "work" each message is deleted with
# its receipt (most), released (about 3%), or -- by the two consumers
# with a 1.5 s lease -- abandoned to let its lease run out (about 3% of
# theirs); the delete or release updates its log row in the same
# statement: action, ok (what the call returned) and t_end =
# clock_timestamp(), before that statement commits.  The consumers stop
# when the queue is empty.
#
# Every delivery is thus known with a time window [t_start, t_stop]:
# t_stop is t_end for a delete or release that succeeded, else (abandoned,
# or a delete/release refused because the lease had run out and the
# message had been delivered again) lease_until.  A correct broker claims
# a group's next message only after the commit that deleted its head, and
# redelivers a message only after its release committed or its lease ran
# out, so these windows never overlap within a group (t_end is taken
# before the commit, t_start after the claim).
#
# Checked afterwards, from the log:
# - every message was deleted exactly once (a successful delete by
#   receipt), by its last delivery; every earlier delivery of it was
#   released, abandoned or refused; delivery_count counts 1, 2, ... in the
#   order of its deliveries; nothing else was delivered; the queue is
#   empty;
# - per group, the successful deletes come in sequence order (s = 1..20);
# - per group, no two delivery windows overlap (so no group ever had two
#   messages leased at once; a redelivery of the same message starts after
#   the earlier lease ran out or was released);
# - no dequeue returned two messages of one group;
# - the run did exercise concurrency: every consumer deleted a real share,
#   and there were releases, abandoned leases and redeliveries.
use strict;
use warnings;

use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use lib 'test/perl';
use BrokerTest;

my $groups = 1000;
my $per_group = 20;
my $total = $groups * $per_group;
my $consumers = 8;
my $short_lease = '1.5 seconds';    # consumers 7 and 8
my $consume_secs = 240;             # a liveness bound: the consumers give up after this

my $node = broker_node(
	'groups_many',
	conf => [
		'log_statement = none', 'synchronous_commit = off',
		'max_connections = 40', 'max_locks_per_transaction = 256'
	]);

$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION broker;
SELECT broker.create_queue('gq', lease => '30 seconds');
-- The enqueue order: slots of groups in random order, s numbered per group.
CREATE TABLE plan AS
SELECT ord, g, row_number() OVER (PARTITION BY g ORDER BY ord) AS s
  FROM (SELECT g, row_number() OVER (ORDER BY random()) AS ord
          FROM generate_series(1, $groups) g, generate_series(1, $per_group) x) t;
CREATE UNIQUE INDEX ON plan (ord);
CREATE TABLE produced (id bigint PRIMARY KEY, g int NOT NULL, s int NOT NULL);
CREATE TABLE deliveries (
    did            bigserial PRIMARY KEY,
    client         int NOT NULL,
    batch          int NOT NULL,
    id             bigint NOT NULL,
    g              int NOT NULL,
    s              int NOT NULL,
    delivery_count int NOT NULL,
    receipt        bigint NOT NULL,
    lease_until    timestamptz NOT NULL,
    t_start        timestamptz NOT NULL,
    action         text,          -- delete, release, abandon
    ok             boolean,       -- what delete or release returned
    t_end          timestamptz);  -- when (before its commit)
});

# --- enqueue: 5 batches of 4,000, in plan order ------------------------------
my $chunk = 4000;
for (my $lo = 0; $lo < $total; $lo += $chunk)
{
	my $hi = $lo + $chunk;
	$node->safe_psql(
		'postgres', qq{
INSERT INTO produced (id, g, s)
SELECT e.id, p.g, p.s
  FROM (SELECT array_agg(jsonb_build_object('g', g, 's', s) ORDER BY ord) AS pl,
               array_agg('g' || g ORDER BY ord) AS gk
          FROM plan WHERE ord > $lo AND ord <= $hi) x
 CROSS JOIN LATERAL broker.enqueue_batch('gq', x.pl, group_keys => x.gk)
       WITH ORDINALITY e(id, n)
  JOIN plan p ON p.ord = $lo + e.n});
}

is( $node->safe_psql(
		'postgres', q{SELECT count(*), count(DISTINCT id), count(DISTINCT g) FROM produced}),
	"$total|$total|$groups",
	"$total messages enqueued in $groups groups, ids distinct");
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (SELECT id, lag(id) OVER (PARTITION BY g ORDER BY s) AS prev
                        FROM produced) t WHERE prev >= id}),
	'0', 'within each group, ids grow with the sequence number');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM broker.messages m JOIN broker.queue_defs q ON m.queue_id = q.queue_id
 WHERE q.name = 'gq'}),
	$groups, "one head per group: $groups messages claimable, the others waiting");
is( $node->safe_psql('postgres', q{SELECT ready, leased, total FROM broker.metrics('gq')}),
	"$total|0|$total", 'metrics count the waiting messages as ready');

# --- 8 consumers ------------------------------------------------------------
# Consumer $i (1..8) in a child process with its own psql session.
sub consume
{
	my ($i, $deadline) = @_;
	my $s = BrokerTest::Session->new($node, "consumer $i");
	my $short = $i > $consumers - 2;
	my $lease = $short ? $short_lease : '30 seconds';
	my $max = 4 + $i % 5;
	srand($$ ^ int(time * 1000));
	my $batch = 0;
	while (time < $deadline)
	{
		$batch++;
		my $out = $s->safe(
			qq{WITH d AS (SELECT * FROM broker.dequeue('gq', $max, '$lease'))
INSERT INTO deliveries (client, batch, id, g, s, delivery_count, receipt, lease_until, t_start)
SELECT $i, $batch, d.id, (d.payload->>'g')::int, (d.payload->>'s')::int,
       d.delivery_count, d.receipt, d.lease_until, clock_timestamp()
  FROM d RETURNING did});
		my @dids = grep { /^\d+$/ } split /\n/, $out;
		if (!@dids)
		{
			last if $s->safe(q{SELECT total FROM broker.metrics('gq')}) eq '0';
			usleep(20_000);
			next;
		}
		my (@del, @rel, @abandon);
		for my $did (@dids)
		{
			my $r = rand;
			if ($short && $r < 0.03) { push @abandon, $did; }
			elsif ($r > 0.97) { push @rel, $did; }
			else { push @del, $did; }
		}
		usleep(int(rand(5_000)));    # the work
		my $sql = '';
		$sql .= "UPDATE deliveries SET action = 'abandon' WHERE did IN ("
		  . join(',', @abandon) . ");\n"
		  if @abandon;
		$sql .= "UPDATE deliveries SET action = 'release', t_end = clock_timestamp(),"
		  . " ok = broker.release('gq', id, receipt) WHERE did IN ("
		  . join(',', @rel) . ");\n"
		  if @rel;
		$sql .= "UPDATE deliveries SET action = 'delete', t_end = clock_timestamp(),"
		  . " ok = broker.delete('gq', id, receipt) WHERE did IN ("
		  . join(',', @del) . ");\n"
		  if @del;
		$s->safe($sql);
	}
	$s->quit;
	return;
}

my $t0 = time;
my $deadline = $t0 + $consume_secs;
my %kids;
for my $i (1 .. $consumers)
{
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $ok = eval { consume($i, $deadline); 1 };
		print STDERR "consumer $i: $@" unless $ok;
		POSIX::_exit($ok ? 0 : 1);
	}
	$kids{$pid} = $i;
}
my @failed;
while (%kids)
{
	my $pid = waitpid(-1, 0);
	last if $pid <= 0;
	push @failed, "consumer $kids{$pid} exited with " . ($? >> 8) if $?;
	delete $kids{$pid};
}
my $elapsed = time - $t0;
note sprintf('consumers ran %.1f s', $elapsed);
is(join('; ', @failed), '', 'every consumer ran without an error');
cmp_ok($elapsed, '<', $consume_secs, 'the consumers emptied the queue before their deadline');

# --- the queue afterwards ----------------------------------------------------
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM broker.messages m JOIN broker.queue_defs q
    ON m.queue_id IN (q.queue_id, -q.queue_id) WHERE q.name = 'gq'}),
	'0', 'the queue is empty: no message left stuck, leased or waiting');
is( $node->safe_psql(
		'postgres', q{SELECT total, enqueued_total, deleted_total FROM broker.metrics('gq')}),
	"0|$total|$total", "metrics: total 0, enqueued_total = deleted_total = $total");

# --- exactly once, redelivered correctly ------------------------------------
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM deliveries WHERE action IS NULL}),
	'0', 'every logged delivery was acted upon');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM deliveries d LEFT JOIN produced p USING (id)
 WHERE p.id IS NULL OR p.g <> d.g OR p.s <> d.s}),
	'0', 'every delivery is of a produced message, with its payload');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM produced p
  LEFT JOIN (SELECT id, count(*) AS n FROM deliveries
              WHERE action = 'delete' AND ok GROUP BY id) d USING (id)
 WHERE d.n IS DISTINCT FROM 1}),
	'0', 'every message deleted exactly once');

my $chain = $node->safe_psql(
	'postgres', q{
WITH x AS (SELECT d.*, row_number() OVER w AS k, count(*) OVER (PARTITION BY id) AS n
             FROM deliveries d WINDOW w AS (PARTITION BY id ORDER BY t_start))
SELECT count(*) FILTER (WHERE delivery_count <> k),
       count(*) FILTER (WHERE k < n AND action = 'delete' AND ok),
       count(*) FILTER (WHERE k = n AND NOT (action = 'delete' AND ok))
  FROM x});
is($chain, '0|0|0',
	'per message: delivery_count 1, 2, ... in delivery order; deleted by its last delivery only');

# --- per-group order and one lease at a time ---------------------------------
my $order = $node->safe_psql(
	'postgres', q{
SELECT count(*) FROM (SELECT s, row_number() OVER (PARTITION BY g ORDER BY t_end) AS r
                        FROM deliveries WHERE action = 'delete' AND ok) t
 WHERE r <> s});
is($order, '0', 'per group, the deletions come in sequence order');
if ($order ne '0')
{
	diag $node->safe_psql(
		'postgres', q{
SELECT string_agg(s::text, ',' ORDER BY t_end) FROM deliveries
 WHERE action = 'delete' AND ok
   AND g IN (SELECT g FROM (SELECT g, s, row_number() OVER (PARTITION BY g ORDER BY t_end) AS r
                              FROM deliveries WHERE action = 'delete' AND ok) t
              WHERE r <> s LIMIT 3)
 GROUP BY g});
}

my $overlap_sql = q{
WITH x AS (SELECT d.*, CASE WHEN ok AND action IN ('delete', 'release') THEN t_end
                            ELSE lease_until END AS t_stop
             FROM deliveries d),
     y AS (SELECT x.*, max(t_stop) OVER (PARTITION BY g ORDER BY t_start
                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_stop
             FROM x)
};
my $overlaps = $node->safe_psql('postgres',
	$overlap_sql . q{SELECT count(*) FROM y WHERE prev_stop > t_start});
is($overlaps, '0', 'no group ever had two deliveries under lease at once');
if ($overlaps ne '0')
{
	diag $node->safe_psql('postgres',
		$overlap_sql . q{
SELECT string_agg(format('g%s s%s id %s client %s dc %s %s..%s %s/%s', g, s, id, client,
                         delivery_count, t_start, t_stop, action, ok), E'\n' ORDER BY t_start)
  FROM x WHERE g IN (SELECT g FROM y WHERE prev_stop > t_start LIMIT 2)});
}

is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (SELECT 1 FROM deliveries GROUP BY client, batch
                       HAVING count(*) <> count(DISTINCT g)) t}),
	'0', 'no dequeue returned two messages of one group');

# --- the run exercised what it should ----------------------------------------
my ($min_share, $clients) = split /\|/, $node->safe_psql(
	'postgres', q{
SELECT min(n), count(*) FROM (SELECT client, count(*) AS n FROM deliveries
                               WHERE action = 'delete' AND ok GROUP BY client) t});
is($clients, $consumers, 'every consumer deleted messages');
cmp_ok($min_share, '>=', 200, 'every consumer did a real share of the work');
my ($released, $abandoned, $refused, $redelivered) = split /\|/, $node->safe_psql(
	'postgres', q{
SELECT count(*) FILTER (WHERE action = 'release' AND ok),
       count(*) FILTER (WHERE action = 'abandon'),
       count(*) FILTER (WHERE action IN ('delete', 'release') AND NOT ok),
       count(*) FILTER (WHERE delivery_count > 1)
  FROM deliveries});
note "released $released, abandoned $abandoned, refused (lease ran out) $refused, "
  . "redeliveries $redelivered";
cmp_ok($released, '>', 0, 'some leases were released');
cmp_ok($abandoned, '>', 0, 'some leases were left to run out');
is($redelivered, $released + $abandoned + $refused,
	'every released, abandoned or lost lease was followed by one redelivery');

$node->stop;

done_testing();
