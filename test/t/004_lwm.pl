# 004_lwm.pl: the low-water mark never skips a message.
#
# Dequeue scans a queue from its low-water mark, which consumers advance
# (at most every 10 ms per queue) while they dequeue.  Each case below
# holds back a message with a low id in some way -- an enqueue that commits
# late, a delete that aborts, a delay, a release -- while other sessions
# enqueue, dequeue and delete many messages with higher ids, sleeping 20 ms
# between dequeues so that the mark is refreshed each time.  Then the held
# message must be delivered.
#
# Open transactions are held by psql processes driven through pipes
# (IPC::Run), which works with every PostgreSQL 15 minor release.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;


my $node = broker_node('lwm',
	conf => [ 'max_prepared_transactions = 4', 'log_statement = none' ]);

my $slow = BrokerTest::Session->new($node, 'slow');       # holds transactions open
my $prod = BrokerTest::Session->new($node, 'producer');
my $cons = BrokerTest::Session->new($node, 'consumer');

$slow->safe('CREATE EXTENSION broker');

# $n rounds of: enqueue a message, sleep 20 ms, take one message and delete
# it with its receipt (each statement its own transaction, so the consumer
# refreshes the mark at every dequeue).  Returns the ids consumed.
sub churn
{
	my ($q, $n) = @_;
	my @consumed;
	for (1 .. $n)
	{
		$prod->safe(qq{SELECT broker.enqueue('$q', '{"filler": true}')});
		my $out = $cons->safe(
			qq{SELECT pg_sleep(0.02);
SELECT 'took:' || m.id || ':' || broker.delete('$q', m.id, m.receipt)
  FROM broker.dequeue('$q') m;});
		push @consumed, $1 while $out =~ /took:(\d+):t/g;
	}
	return @consumed;
}

# Fill a queue with $n messages.
sub fill
{
	my ($q, $n) = @_;
	$prod->safe(
		qq{SELECT broker.enqueue_batch('$q',
		       array_fill('{"filler": true}'::jsonb, ARRAY[$n]))});
}

# Dequeue one message (with receipt) as a fresh transaction.
sub take
{
	my ($q, $session) = @_;
	$session //= $cons;
	my $out = $session->safe(
		qq{SELECT pg_sleep(0.02);
SELECT id || '|' || delivery_count || '|' || receipt FROM broker.dequeue('$q')});
	$out =~ s/^\s+//;    # the empty line of pg_sleep
	return $out;
}

# The same with a given lease.
sub take_leased
{
	my ($q, $lease) = @_;
	my $out = $cons->safe(
		qq{SELECT pg_sleep(0.02);
SELECT id || '|' || delivery_count || '|' || receipt
  FROM broker.dequeue('$q', 1, '$lease')});
	$out =~ s/^\s+//;
	return $out;
}

# Sleep until the message's vt (lease end or delay) has passed.
sub wait_vt
{
	my ($q, $id) = @_;
	$cons->safe(
		qq{SELECT pg_sleep(greatest(0, extract(epoch FROM
		     (SELECT vt FROM broker.messages WHERE id = $id)
		     - clock_timestamp())) + 0.05)});
}

# Delete everything left, by receipt; returns the ids.
sub drain
{
	my ($q) = @_;
	my $out = $cons->safe(
		qq{SELECT pg_sleep(0.02);
SELECT m.id FROM broker.dequeue('$q', 10000) m
 WHERE broker.delete('$q', m.id, m.receipt) ORDER BY m.id});
	return grep { /^\d+$/ } split /\n/, $out;
}

# ---------------------------------------------------------------------------
# 1. A producer that got a low id but commits late.
# ---------------------------------------------------------------------------
$prod->safe(q{SELECT broker.create_queue('late', lease => '1 hour')});
fill('late', 5);

$slow->safe('BEGIN');
my $low = $slow->safe(q{SELECT broker.enqueue('late', '{"slow": true}')});
like($low, qr/^\d+$/, 'late producer: got an id in an open transaction');

fill('late', 5);
my @got = churn('late', 40);
is(scalar(@got), 40, 'late producer: 40 other messages consumed meanwhile');
ok(!grep({ $_ == $low } @got),
	'late producer: the uncommitted message was not delivered');
cmp_ok((sort { $a <=> $b } @got)[0], '<', $low,
	'late producer: messages below its id were consumed meanwhile');
cmp_ok((sort { $a <=> $b } @got)[-1], '>', $low,
	'late producer: messages above its id were consumed meanwhile');

$slow->safe('COMMIT');
my @rest = drain('late');
is_deeply([ grep { $_ == $low } @rest ], [$low],
	'late producer: the late-committed low id is delivered after COMMIT');
is($node->safe_psql('postgres', q{SELECT total FROM broker.metrics('late')}),
	'0', 'late producer: queue empty afterwards');

# The same with a batch, and with a savepoint rolled back before the
# enqueue that commits.
$slow->safe('BEGIN');
$slow->safe(q{SAVEPOINT s1});
my $gone = $slow->safe(q{SELECT broker.enqueue('late', '{"gone": true}')});
$slow->safe(q{ROLLBACK TO SAVEPOINT s1});
my @batch = split /\n/,
  $slow->safe(
	q{SELECT broker.enqueue_batch('late', ARRAY['{"b":1}','{"b":2}','{"b":3}']::jsonb[])}
  );
is(scalar(@batch), 3, 'late batch: three ids');
@got = churn('late', 30);
ok(!grep({ my $g = $_; grep { $_ == $g } (@batch, $gone) } @got),
	'late batch: nothing of the open transaction delivered');
$slow->safe('COMMIT');
@rest = drain('late');
is_deeply([ grep { my $r = $_; grep { $_ == $r } @batch } @rest ], \@batch,
	'late batch: all three late-committed ids delivered, in order');
ok(!grep({ $_ == $gone } @rest),
	'late batch: the rolled-back enqueue is never delivered');

# ---------------------------------------------------------------------------
# 2. A late producer that enqueued into many queues in one transaction.
# ---------------------------------------------------------------------------
my @many = map { "many_$_" } 1 .. 10;
$prod->safe(join "\n",
	map { qq{SELECT broker.create_queue('$_', lease => '1 hour');} } @many);
fill($_, 3) for @many;
$slow->safe('BEGIN');
my %lowid;
$lowid{$_} = $slow->safe(qq{SELECT broker.enqueue('$_', '{"slow": true}')})
  for @many;
fill($_, 3) for @many;
my $leak = 0;
for my $q ($many[0], $many[-1])
{
	@got = churn($q, 12);
	$leak++ if grep { $_ == $lowid{$q} } @got;
}
is($leak, 0, 'many queues: no uncommitted message delivered');
# The marks go on moving meanwhile (a transaction that enqueued into more
# than 8 queues used to stop every mark of the database until it ended):
# in a queue it did not touch past everything, in one it touched up to
# its id and no further.
$prod->safe(q{SELECT broker.create_queue('bystander', lease => '1 hour')});
fill('bystander', 3);
@got = churn('bystander', 12);
my $mark = $cons->safe(
	q{SELECT low_water_mark FROM broker.waiters('bystander')});
cmp_ok($mark, '>', (sort { $a <=> $b } @got)[0],
	'many queues: the mark of an untouched queue moves on meanwhile');
$mark = $cons->safe(qq{SELECT low_water_mark FROM broker.waiters('$many[0]')});
cmp_ok($mark, '<=', $lowid{$many[0]},
	'many queues: the mark of a touched queue stays at or below its open id');
cmp_ok($mark, '>', 0, 'many queues: ... and it moved up to there');
drain('bystander');
$slow->safe('COMMIT');
my $missing = 0;
for my $q (@many)
{
	@rest = drain($q);
	$missing++ unless grep { $_ == $lowid{$q} } @rest;
}
is($missing, 0,
	'many queues: the late-committed message of each of 10 queues is delivered');

# ---------------------------------------------------------------------------
# 3. A consumer that deleted a message and then aborts.
# ---------------------------------------------------------------------------
$prod->safe(q{SELECT broker.create_queue('abort', lease => '1 hour')});
fill('abort', 10);

# 3a. Dequeue and delete in the transaction that aborts.
$slow->safe('BEGIN');
my ($x, $xdc, $xr) = split /\|/, take('abort', $slow);
is($slow->safe(qq{SELECT broker.delete('abort', $x, $xr)}),
	't', 'aborted delete: the consumer deleted the lowest message');
# The deleting transaction itself dequeues more (it must not let the mark
# pass the row it deleted: the delete may still roll back).
my $own = '';
$own .= $slow->safe(
	q{SELECT pg_sleep(0.02); SELECT id FROM broker.dequeue('abort')}) . ','
  for 1 .. 3;
unlike(",$own", qr/,$x,/, 'aborted delete: its own transaction does not get it back');
@got = churn('abort', 40);
is(scalar(@got), 40, 'aborted delete: other consumers went on meanwhile');
ok(!grep({ $_ == $x } @got), 'aborted delete: the message was not delivered meanwhile');
$slow->safe('ROLLBACK');
my ($y, $ydc) = split /\|/, take('abort');
is("$y|$ydc", "$x|1",
	'aborted delete: the message is delivered next, delivery_count unchanged');
$cons->safe(q{SELECT broker.delete('abort', ARRAY[} . $y . q{]::bigint[])});

# 3b. The lease committed earlier; only the delete aborts.  The message is
# delivered again once its lease runs out.
fill('abort', 1);
($x, $xdc, $xr) = split /\|/, take_leased('abort', '2 seconds');
$slow->safe('BEGIN');
is($slow->safe(qq{SELECT broker.delete('abort', $x, $xr)}),
	't', 'aborted delete of an earlier lease: deleted in an open transaction');
@got = churn('abort', 30);
ok(!grep({ $_ == $x } @got), 'aborted delete of an earlier lease: not delivered meanwhile');
$slow->safe('ROLLBACK');
wait_vt('abort', $x);
($y, $ydc) = split /\|/, take('abort');
is("$y|$ydc", "$x|2",
	'aborted delete of an earlier lease: redelivered after the lease, delivery_count 2');
$cons->safe(q{SELECT broker.delete('abort', ARRAY[} . $y . q{]::bigint[])});

# 3c. The delete is in a prepared transaction, rolled back later.
fill('abort', 1);
($x, $xdc, $xr) = split /\|/, take_leased('abort', '2 seconds');
$slow->safe(qq{BEGIN; SELECT broker.delete('abort', $x, $xr); PREPARE TRANSACTION 'del'});
@got = churn('abort', 30);
# The session that prepared goes on dequeuing too (refreshing the mark).
$slow->safe(qq{SELECT pg_sleep(0.02);
SELECT broker.delete('abort', m.id, m.receipt) FROM broker.dequeue('abort') m});
ok(!grep({ $_ == $x } @got), 'prepared delete: not delivered while prepared');
$slow->safe(q{ROLLBACK PREPARED 'del'});
wait_vt('abort', $x);
($y, $ydc) = split /\|/, take('abort');
is("$y|$ydc", "$x|2",
	'prepared delete rolled back: redelivered after the lease');
$cons->safe(q{SELECT broker.delete('abort', ARRAY[} . $y . q{]::bigint[])});

drain('abort');

# An enqueue cannot be prepared (it would commit behind the mark).
my ($out, $err) = $slow->query(
	qq{\\set VERBOSITY verbose
BEGIN; SELECT broker.enqueue('abort', '{"prepared": true}'); PREPARE TRANSACTION 'enq';
\\set VERBOSITY default});
like($err, qr/ERROR:\s+0A000:/, 'PREPARE of an enqueue is refused with 0A000');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_prepared_xacts}),
	'0', 'no prepared transaction left');
$slow->query('ROLLBACK');

# ---------------------------------------------------------------------------
# 4. A delayed and a released message below the mark.
# ---------------------------------------------------------------------------
$prod->safe(q{SELECT broker.create_queue('later', lease => '1 hour')});
my $delayed = $prod->safe(
	q{SELECT broker.enqueue('later', '{"delayed": true}', delay => '3 seconds')});
fill('later', 2);
($x, $xdc, $xr) = split /\|/, take('later');
is($cons->safe(qq{SELECT broker.release('later', $x, $xr, '3 seconds')}),
	't', 'released a lease with a delay');
@got = churn('later', 30);
ok(!grep({ $_ == $delayed || $_ == $x } @got),
	'delayed and released messages not delivered before their time');
wait_vt('later', $delayed);
wait_vt('later', $x);
@rest = drain('later');
ok((grep { $_ == $delayed } @rest), 'the delayed message is delivered after its delay');
ok((grep { $_ == $x } @rest), 'the released message is delivered after its delay');

# ---------------------------------------------------------------------------
# 5. Rows that segment maintenance moves, or a COPY loads, have ids far
#    below the mark's fence: a refresh must never pass them.
# ---------------------------------------------------------------------------
my $maint = BrokerTest::Session->new($node, 'maintainer');
$_->safe('SET broker.segment_size = 100') for ($cons, $slow, $maint);
$prod->safe(q{SELECT broker.create_queue('moved', lease => '1 hour')});

# Make the segment that holds $id the next to become current, and the
# current one full, so that the next maintenance moves $id.
sub make_next
{
	my ($id) = @_;
	for (1 .. 12)
	{
		my $seg = $cons->safe(qq{SELECT s FROM (VALUES
			((SELECT 0 FROM broker.messages_0 WHERE id = $id)),
			((SELECT 1 FROM broker.messages_1 WHERE id = $id)),
			((SELECT 2 FROM broker.messages_2 WHERE id = $id)),
			((SELECT 3 FROM broker.messages_3 WHERE id = $id))) v(s) WHERE s IS NOT NULL});
		my $cur = $cons->safe(
			q{SELECT segment FROM broker.maintain_segments() WHERE current});
		fill('moved', 120);
		drain('moved') if $cur != ($seg + 3) % 4;
		return 1 if $cur == ($seg + 3) % 4;
		$cons->safe(q{SELECT count(*) FROM broker.maintain_segments()});
	}
	return 0;
}

# 5a. Maintenance that cannot finish (broker.segments is locked by another
# session) and rolls back on statement_timeout, while consumers refresh.
my $m1 = $prod->safe(
	q{SELECT broker.enqueue('moved', '{"m": 1}', delay => '5 seconds')});
ok(make_next($m1), 'moved: the delayed message is in the segment to become current next');
my $filled = $cons->safe(q{SELECT ready FROM broker.metrics('moved')});
$slow->safe('BEGIN; SELECT segment FROM broker.segments FOR UPDATE');
$maint->start(q{SET statement_timeout = '2s';
SELECT count(*) FROM broker.maintain_segments();});
@got = churn('moved', 40);
my ($mout, $merr) = $maint->finish;
$maint->safe('RESET statement_timeout');
$slow->safe('COMMIT');
ok(!grep({ $_ == $m1 } @got), 'moved: the delayed message is not delivered early');
note("maintenance under a locked broker.segments: $merr");

# 5b. Maintenance that moves it and is rolled back.
$maint->safe(q{BEGIN; SELECT count(*) FROM broker.maintain_segments(); ROLLBACK});
# 5c. Maintenance that moves it and commits.
$maint->safe(q{SELECT count(*) FROM broker.maintain_segments()});
@got = churn('moved', 20);
wait_vt('moved', $m1);
@rest = drain('moved');
ok((grep { $_ == $m1 } @rest),
	'moved: the delayed message is delivered after its delay, wherever it was moved');

# 5d. A COPY into a segment (as a restore does) of a message whose id is
# older than everything, held open while consumers refresh the mark.
my $old_id = $cons->safe(q{SELECT nextval('broker.message_id_seq')});
my $qid = $cons->safe(q{SELECT queue_id FROM broker.queue_defs WHERE name = 'moved'});
my $cur = $cons->safe(q{SELECT segment FROM broker.maintain_segments() WHERE current});
fill('moved', 3);
@got = churn('moved', 5);
$slow->safe(qq{BEGIN;
COPY broker.messages_$cur (queue_id, id, vt, enqueued_at, payload) FROM STDIN;
$qid	$old_id	2000-01-01 00:00:00+00	2000-01-01 00:00:00+00	{"copied": true}
\\.
SELECT 'copied'});
@got = churn('moved', 30);
is(scalar(@got), 30, 'copied: other messages consumed while the COPY is open');
$slow->safe('COMMIT');
@rest = drain('moved');
is_deeply([ grep { $_ == $old_id } @rest ], [$old_id],
	'copied: the message a COPY loaded below the mark is delivered after its commit');
$maint->quit;

# ---------------------------------------------------------------------------
# Every message of every queue was delivered and deleted: nothing stuck.
# ---------------------------------------------------------------------------
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(queue || ':' || total, ',') FROM broker.metrics()
		   WHERE total <> 0}),
	'', 'every queue drained: no message left stuck anywhere');

$_->quit for ($slow, $prod, $cons);
$node->stop;

done_testing();
