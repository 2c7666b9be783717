# 029_async_ack.pl: broker.async_ack (off by default) lets a transaction
# that only consumed messages commit without waiting for its WAL flush.
# What a crash (kill -9) may then do, and what it must not:
#  - off: every acknowledgement that returned survives the crash;
#  - on: the last acknowledgements and leases may be lost, and their
#    messages come back (delivered again); over the rounds some must, or
#    the setting did nothing;
#  - no message is ever lost: every message never acknowledged is there;
#  - a transaction that also wrote something else -- an enqueue, a row of
#    another table, before or after its acknowledgement -- waits for the
#    flush: it survives, acknowledgements included.
# The WAL writer is slowed (wal_writer_delay = 10s), so that what a commit
# did not flush stays in the WAL buffers until the crash: each round ends
# with the transaction under test, then a few small acknowledgements that
# the crash may lose, then kill -9.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 'test/perl';
use BrokerTest;

my $node = broker_node('async_ack',
	conf => [ "wal_writer_delay = '10s'", 'autovacuum = off' ]);
my $total = 3000;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION broker;
	SELECT broker.create_queue('aa', lease => '1 hour');
	SELECT broker.create_queue('out');
	CREATE TABLE side (round int, k text);
	SELECT pg_catalog.count(*) FROM broker.enqueue_batch('aa',
		ARRAY(SELECT pg_catalog.jsonb_build_object('n', g) FROM pg_catalog.generate_series(1, $total) g));
});
is($node->safe_psql('postgres', 'SHOW broker.async_ack'), 'off', 'broker.async_ack is off by default');

my %acked;        # n of every message whose acknowledgement returned
my $came_back = 0;

# Acknowledge up to $k messages in one statement (dequeue and delete in one
# transaction); returns the n of those deleted.
sub ack
{
	my ($s, $k) = @_;
	my $out = $s->safe(qq{
		SELECT pg_catalog.string_agg(m.payload->>'n', ',')
		  FROM broker.dequeue('aa', $k) m, broker.delete('aa', m.id, m.receipt) d
		 WHERE d});
	return $out eq '' ? () : split(/,/, $out);
}

# The n of the messages of queue aa now.
sub present
{
	my %p = map { $_ => 1 } split /\n/, $node->safe_psql('postgres',
		q{SELECT payload->>'n' FROM broker.messages WHERE payload ? 'n'});
	return \%p;
}

# One round: acknowledgements, the transaction under test ($last, which
# returns the n it acknowledged), a few small acknowledgements, kill -9,
# restart; then the checks.  Returns what came back of this round's acks.
sub round
{
	my ($name, $async, $last, $check) = @_;
	my $s = BrokerTest::Session->new($node, $name);
	$s->safe('SET broker.async_ack = ' . ($async ? 'on' : 'off'));
	my %mine;
	$mine{$_} = 1 for map { ack($s, 20) } 1 .. 10;
	# a lease alone (its commit writes the lease): on, the crash may undo it
	$s->safe(q{SELECT pg_catalog.count(*) FROM broker.dequeue('aa', 5)});
	my @tested = $last->($s);
	$mine{$_} = 1 for map { ack($s, 3) } 1 .. 3;
	$mine{$_} = 1 for @tested;
	$acked{$_} = 1 for keys %mine;
	kill9_node($node);
	$node->start;

	my $p = present();
	my @lost = grep { !$acked{$_} && !$p->{$_} } 1 .. $total;
	is(scalar @lost, 0, "$name: no message lost (" . scalar(keys %$p) . ' left)')
	  or diag('lost: ' . join(',', @lost[ 0 .. ($#lost < 9 ? $#lost : 9) ]));
	my @back = grep { $p->{$_} } keys %mine;
	my @tested_back = grep { $p->{$_} } @tested;
	is(scalar @tested_back, 0,
		"$name: the acknowledgements of the transaction under test survived");
	$check->() if $check;
	return scalar @back;
}

# --- off: nothing acknowledged comes back ----------------------------------
my $back = round('off', 0, sub { return ack($_[0], 5) });
is($back, 0, 'off: every acknowledgement survived the crash');

# --- on: an acknowledgement with an enqueue --------------------------------
$came_back += round('enqueue', 1,
	sub {
		my ($s) = @_;
		$s->safe('BEGIN');
		my @n = ack($s, 5);
		$s->safe(q{SELECT broker.enqueue('out', '{"round": 1}')});
		$s->safe('COMMIT');
		return @n;
	},
	sub {
		is($node->safe_psql('postgres', q{SELECT pg_catalog.count(*) FROM broker.messages WHERE payload @> '{"round": 1}'}),
			'1', 'enqueue: the message enqueued with an acknowledgement survived');
	});

# --- on: an acknowledgement, then a row of another table --------------------
$came_back += round('row after', 1,
	sub {
		my ($s) = @_;
		$s->safe('BEGIN');
		my @n = ack($s, 5);
		$s->safe(q{INSERT INTO side VALUES (2, 'after')});
		$s->safe('COMMIT');
		return @n;
	},
	sub {
		is($node->safe_psql('postgres', q{SELECT pg_catalog.count(*) FROM side WHERE round = 2}),
			'1', 'row after: the row written after an acknowledgement survived');
	});

# --- on: a row of another table, then an acknowledgement --------------------
$came_back += round('row before', 1,
	sub {
		my ($s) = @_;
		$s->safe('BEGIN');
		$s->safe(q{INSERT INTO side VALUES (3, 'before')});
		my @n = ack($s, 5);
		$s->safe('COMMIT');
		return @n;
	},
	sub {
		is($node->safe_psql('postgres', q{SELECT pg_catalog.count(*) FROM side WHERE round = 3}),
			'1', 'row before: the row written before an acknowledgement survived');
	});

cmp_ok($came_back, '>', 0,
	"on: acknowledgements lost in the crashes came back ($came_back over three rounds)");

$node->stop;
done_testing();
