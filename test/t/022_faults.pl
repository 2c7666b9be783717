# 022_faults.pl: faults the broker must survive.  Each case checks that
# the failing call raises a clear error (the right SQLSTATE, never XX000 or
# a crash), that nothing of it is half done, and that the broker works
# again afterwards, in that session and in others.
#
# 1. A full disk: the message segments and their indexes are moved to a
#    tablespace on a small filesystem, which enqueue_batch fills.  Needs
#    BROKER_TEST_SMALLFS: a directory the cluster user may write, on a
#    filesystem of at most 64 MB that the test may fill (PostgreSQL runs as
#    an unprivileged user and cannot mount one).  As root, for example:
#      mkdir -p /tmp/broker-smallfs
#      mount -t tmpfs -o size=16m,mode=0700,uid=postgres,gid=postgres \
#            tmpfs /tmp/broker-smallfs
#      BROKER_TEST_SMALLFS=/tmp/broker-smallfs make installcheck ...
#      umount /tmp/broker-smallfs
#    Without it the case is skipped with that reason.
# 2. Shared-memory slots run out (broker.max_queues = 16): the first use of
#    one queue too many fails with 53200 and stores nothing; the queues that
#    have a slot keep working; drop_queue gives slots back.  A full consumer
#    history (broker.max_consumers = 16) recycles the pair seen longest ago
#    into the "(evicted, all databases)" row.
# 3. statement_timeout and pg_cancel_backend in the middle of a big
#    enqueue_batch (10,000 messages with dedup and group keys), of a big
#    delete(queue, ids[]), of a waiting dequeue, and of maintain_segments():
#    57014, nothing stored or deleted, no lock left, the session usable.
# 4. kill -9 of a backend that holds leases in an open transaction, while
#    another commits leases in a loop: after the restart every message is
#    there exactly once, ready or leased as committed.
#
# autovacuum is off so that what a full disk does to a lease is the same at
# every run (a vacuumed segment has a free space map that lets a lease move
# to another page; see case 1).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Path ();
use Time::HiRes qw(time usleep);
use lib 'test/perl';
use BrokerTest;

my $node = broker_node(
	'faults',
	conf => [
		'broker.max_queues = 16',
		'broker.max_consumers = 16',
		"broker.reaper_interval = '200ms'",
		'restart_after_crash = on',
		'autovacuum = off',
		'log_statement = none',
		'max_connections = 40'
	]);
$node->safe_psql('postgres', 'CREATE EXTENSION broker');
my $launcher_pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'broker launcher'});

my ($out, $err, $t0);

# SQLSTATE of the first error in a psql stderr (VERBOSITY verbose), or 'none'.
sub state_of
{
	my ($err) = @_;
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : 'none';
}

# A session with verbose errors; returns it and its backend pid.
sub session
{
	my ($name) = @_;
	my $s = BrokerTest::Session->new($node, $name);
	$s->safe('\set VERBOSITY verbose');
	return ($s, $s->safe('SELECT pg_backend_pid()'));
}

# Most statements run in one held session ("admin"): starting a psql per
# statement costs seconds on a loaded machine.  q1 dies on an error;
# sqlstate_of returns the SQLSTATE of a statement that must fail ('none'
# if it did not).
my $admin;

sub admin
{
	($admin) = session('admin') unless defined $admin;
	return $admin;
}
sub q1 { return admin()->safe($_[0]); }

sub sqlstate_of
{
	my (undef, $e) = admin()->query($_[0]);
	return state_of($e);
}

# Locks held by a backend (it must be idle, out of any transaction).
sub locks_of
{
	my ($pid) = @_;
	return q1(qq{SELECT count(*) FROM pg_locks WHERE pid = $pid});
}

# Start, in session $cs, a canceller of backend $pid: once a statement
# matching $like that started after now has run for $ms ms, it is
# cancelled (polled in the server every 2 ms, for at most 30 s); if it
# finishes first, nothing is done.  $cs->finish waits for the canceller.
sub start_canceller
{
	my ($cs, $pid, $like, $ms) = @_;
	my $since = $cs->safe('SELECT clock_timestamp()');
	$cs->start(qq{
DO \$\$
BEGIN
  LOOP
    PERFORM pg_stat_clear_snapshot();
    IF EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE pid = $pid AND state = 'active' AND query LIKE '$like'
                  AND query_start >= '$since'
                  AND clock_timestamp() - query_start > interval '$ms ms') THEN
      PERFORM pg_cancel_backend($pid);
      RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE pid = $pid AND state <> 'active' AND query LIKE '$like'
                  AND query_start >= '$since') THEN
      RETURN;
    END IF;
    IF clock_timestamp() - '$since'::timestamptz > interval '30 s' THEN
      RAISE EXCEPTION 'backend % never ran its statement', $pid;
    END IF;
    PERFORM pg_sleep(0.002);
  END LOOP;
END \$\$});
	return;
}

# ============================================================================
# 1. A full disk (first: the segments are empty, the figures clean)
# ============================================================================
my $smallfs = $ENV{BROKER_TEST_SMALLFS};
my ($skip_disk, $tsdir);
my $fs_kb = 0;
# whatever happens, leave nothing of ours on the small filesystem
END { File::Path::remove_tree($tsdir) if defined $tsdir && -d $tsdir; }
if (!defined $smallfs || $smallfs eq '')
{
	$skip_disk = 'BROKER_TEST_SMALLFS is not set (as root: mount -t tmpfs -o size=16m,'
	  . 'uid=postgres,gid=postgres tmpfs DIR; BROKER_TEST_SMALLFS=DIR make installcheck)';
}
elsif (!-d $smallfs || !-w $smallfs)
{
	$skip_disk = "BROKER_TEST_SMALLFS=$smallfs is not a directory this user ($<) may write";
}
else
{
	my @df = split /\s+/, (split /\n/, `df -Pk '$smallfs'`)[1] // '';
	$fs_kb = $df[1] // 0;
	$skip_disk = "BROKER_TEST_SMALLFS=$smallfs is on a filesystem of ${fs_kb} kB: "
	  . 'the test fills it, and refuses one over 64 MB'
	  if !$fs_kb || $fs_kb > 65536;
}

SKIP:
{
	skip "full disk: $skip_disk", 1 if $skip_disk;

	my $avail = sub {
		my @df = split /\s+/, (split /\n/, `df -Pk '$smallfs'`)[1];
		return $df[3];
	};
	$tsdir = "$smallfs/broker_faults_$$";
	mkdir $tsdir or die "mkdir $tsdir: $!";
	my $move = sub {
		my ($ts) = @_;
		q1(qq{
DO \$\$ DECLARE r record; BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'broker' AND c.relname ~ '^messages_[0-9]' AND c.relkind IN ('r', 'i')
            ORDER BY c.relkind DESC LOOP
    EXECUTE format('ALTER %s broker.%I SET TABLESPACE $ts',
                   CASE r.relkind WHEN 'r' THEN 'TABLE' ELSE 'INDEX' END, r.relname);
  END LOOP;
END \$\$});
	};
	q1(qq{CREATE TABLESPACE small LOCATION '$tsdir'});
	$move->('small');
	is( q1(q{SELECT count(*) FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace
	          WHERE t.spcname = 'small' AND c.relnamespace = 'broker'::regnamespace}),
		'20', 'the 4 segment tables and their 16 indexes are on the small filesystem');
	# 512 kB to free later, as an operator would find something to delete
	q1(q{CREATE TABLE filler (x text) TABLESPACE small;
	     INSERT INTO filler SELECT repeat('f', 1000) FROM generate_series(1, 450)});
	q1(q{SELECT broker.create_queue('full', lease => '1 hour')});
	my $metrics = sub {
		q1(q{SELECT total || ' total, ' || ready || ' ready, ' || leased || ' leased, '
		          || enqueued_total || ' enq, ' || deleted_total || ' del'
		     FROM broker.metrics('full')});
	};

	# --- fill it -----------------------------------------------------------
	my ($p, $ppid) = session('producer');
	my $batch = q{SELECT count(*) FROM broker.enqueue_batch('full',
	    ARRAY(SELECT jsonb_build_object('n', g, 'pad', repeat('x', 400)) FROM generate_series(1, 1000) g))};
	my $keyed_full = q{SELECT count(*) FROM broker.enqueue_batch('full',
	    ARRAY(SELECT jsonb_build_object('n', g, 'pad', repeat('x', 400)) FROM generate_series(1, 1000) g),
	    group_keys => ARRAY(SELECT 'g' || (g % 10) FROM generate_series(1, 1000) g),
	    dedup_keys => ARRAY(SELECT 'full-' || g FROM generate_series(1, 1000) g))};
	my ($nbatches, $fill_state, $fill_err) = (0, 'none', '');
	$t0 = time;
	for (1 .. 200)
	{
		my ($o, $e) = $p->query($batch);
		$fill_state = state_of($e);
		if ($fill_state ne 'none') { $fill_err = $e; last; }
		$nbatches++;
	}
	my $stored = $nbatches * 1000;
	note sprintf('%d batches of 1000 stored before the disk was full (%.1f s), %s kB left',
		$nbatches, time - $t0, $avail->());
	note 'at full: ' . q1(q{
SELECT 'segment tables ' || (sum(pg_relation_size(c.oid)) FILTER (WHERE c.relkind = 'r') / 1024)::bigint
    || ' kB, primary keys ' || (sum(pg_relation_size(c.oid)) FILTER (WHERE c.relname ~ '_pkey$') / 1024)::bigint
    || ' kB, other indexes ' || (sum(pg_relation_size(c.oid)) FILTER (WHERE c.relkind = 'i' AND c.relname !~ '_pkey$') / 1024)::bigint
    || ' kB, tablespace ' || pg_tablespace_size('small') / 1024 || ' kB'
  FROM pg_class c WHERE c.relnamespace = 'broker'::regnamespace AND c.relname ~ '^messages_[0-9]'});
	is($fill_state, '53100', "the batch that does not fit fails with 53100 (after $stored messages)");
	like($fill_err, qr/could not extend file .*No space left on device.*\n.*HINT:\s+Check free disk space/s,
		'... "could not extend file": No space left on device, hint: check free disk space');
	is($metrics->(), "$stored total, $stored ready, 0 leased, $stored enq, 0 del",
		'... nothing of it stored or counted');
	is(locks_of($ppid), '0', '... no lock left');

	($out, $err) = $p->query($keyed_full);
	is(state_of($err), '53100', 'a batch with dedup and group keys fails too: 53100');
	is($metrics->(), "$stored total, $stored ready, 0 leased, $stored enq, 0 del", '... nothing of it stored');

	# --- consuming on a full disk ------------------------------------------
	is( $p->safe(q{BEGIN;
	        SELECT count(*) FROM broker.delete('full', ARRAY(SELECT id FROM broker.dequeue('full', 100)));
	        COMMIT}),
		'100', 'dequeue + delete in one transaction works on the full disk (no lease written)');
	$stored -= 100;
	is($metrics->(), "$stored total, $stored ready, 0 leased, " . ($stored + 100) . " enq, 100 del",
		'... 100 gone, counted');

	# A lease is written at pre-commit, as a new row version: one message's
	# fits in its page (fillfactor 70), 2000 do not.
	my @one = split /\|/, $p->safe(q{SELECT id || '|' || receipt FROM broker.dequeue('full', 1, lease => '1 hour')});
	is( q1(qq{SELECT delivery_count || ' ' || (receipt = $one[1]) || ' ' || (vt > now()) FROM broker.messages WHERE id = $one[0]}),
		'1 true true', 'one lease committed on the full disk (its new version fits in its page)');
	my $leased_ids = $p->safe(q{BEGIN; SELECT count(*) FROM broker.dequeue('full', 2000, lease => '1 hour')});
	is($leased_ids, '2000', '2000 more taken in a transaction (the leases pending)');
	($out, $err) = $p->query('COMMIT');
	is(state_of($err), '53100', '... its COMMIT fails with 53100: the leases need new pages');
	is($metrics->(), "$stored total, " . ($stored - 1) . " ready, 1 leased, " . ($stored + 100) . " enq, 100 del",
		'... nothing of it written: the 2000 are ready again');
	is( q1(q{SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || max(delivery_count) FILTER (WHERE receipt IS NULL)
	          FROM broker.messages WHERE queue_id = (SELECT queue_id FROM broker.queue_defs WHERE name = 'full')}),
		"$stored $stored 0", '... every message once, and no delivery counted');
	is(locks_of($ppid), '0', '... no lock left');

	# --- segment maintenance on the full disk ------------------------------
	# drain (works: deletes need no new space), then rotate so that the
	# segment holding them can be emptied with TRUNCATE
	my $drained = 0;
	for (1 .. 20)
	{
		my $n = $p->safe(q{SELECT count(*) FROM broker.delete('full', ARRAY(SELECT id FROM broker.dequeue('full', 10000)))});
		last if $n == 0;
		$drained += $n;
	}
	is($p->safe(qq{SELECT broker.delete('full', $one[0], $one[1])}), 't', 'the leased one deleted with its receipt');
	is($drained + 1, $stored, 'the queue drained on the full disk: every message delivered once');
	is(q1(q{SELECT count(*) FROM broker.messages}), '0', '... none left');
	my ($mt, $mtpid) = session('maintainer');
	$mt->safe('SET broker.segment_size = 100');
	# (a step that finds the lock taken by the reaper's step skips: retry)
	my $mstate = 'none';
	for (1 .. 20)
	{
		($out, $err) = $mt->query('SELECT count(*) FROM broker.maintain_segments()');
		$mstate = state_of($err);
		last if $mstate ne 'none';
		usleep(50_000);
	}
	note "maintain_segments() on the full disk: $mstate";
	is($mstate, '53100', 'maintain_segments() on the full disk: the TRUNCATE needs new files, 53100');
	($out, $err) = $mt->query(q{SELECT 'usable'});
	is($out . state_of($err), 'usablenone', '... and its session is usable at once');
	$mt->quit;

	# --- free some space: maintenance gives the rest back ------------------
	q1('DROP TABLE filler');
	ok( poll($node, 'postgres', q{SET broker.segment_size = 100;
	        SELECT sum(bytes) < 1048576 FROM broker.maintain_segments()}, 't', 30),
		'after dropping a 512 kB table, segment maintenance truncates the drained segment');
	my $free = $avail->();
	note "$free kB free after the TRUNCATE";
	ok($free > $fs_kb / 2, "the filesystem has room again ($free kB free)");
	is($p->safe($batch), '1000', 'enqueue_batch works again');
	is($p->safe($keyed_full), '1000', 'the keyed batch that failed works now');
	is( q1(q{SELECT count(*) FROM broker.messages WHERE group_key IS NOT NULL}),
		'1000', '... and stores all 1000: none of its dedup keys had been kept');
	is( $p->safe(q{SELECT count(*) FROM broker.delete('full', ARRAY(SELECT id FROM broker.dequeue('full', 10000)))}),
		'1010', 'the queue delivers them (1000 + the heads of the 10 groups)');
	$p->quit;

	q1(q{SELECT broker.drop_queue('full')});
	$move->('pg_default');
	q1('DROP TABLESPACE small');
	rmdir $tsdir;
	ok(!-e $tsdir, 'tablespace removed from the small filesystem');
}

# ============================================================================
# 2. Shared-memory slots
# ============================================================================

# --- the consumer history: 20 (consumer, queue) pairs for 16 entries ---------
q1(q{SELECT broker.create_queue('cq');
      SELECT count(*) FROM broker.enqueue_batch('cq', array_fill('{}'::jsonb, ARRAY[20]))});
my ($cons) = session('consumers');
for my $i (1 .. 20)
{
	$cons->safe(qq{SET broker.consumer = 'c$i';
	      SELECT broker.delete('cq', d.id, d.receipt) FROM broker.dequeue('cq', 1) d});
	usleep(2_000);    # distinct last_seen
}
$cons->quit;
is( q1(q{SELECT count(*) FILTER (WHERE queue = 'cq') || ' '
              || string_agg(consumer, ',' ORDER BY consumer) FILTER (WHERE consumer IN ('c1', 'c2', 'c3', 'c4', 'c5'))
              || ' ' || sum(delivered) || '/' || sum(deleted)
           FROM broker.consumers}),
	'16 c5 20/20',
	'consumer history full: 16 pairs kept, the 4 seen longest ago recycled, every count kept');
is( q1(q{SELECT delivered || '/' || deleted || ' ' || (queue IS NULL)
           FROM broker.consumers WHERE consumer = '(evicted, all databases)'}),
	'4/4 true', 'the recycled counts are in the (evicted, all databases) row');
q1(q{SELECT broker.drop_queue('cq')});

# --- queue states: one queue more than broker.max_queues ---------------------
q1(q{SELECT broker.create_queue('s' || g) FROM generate_series(1, 20) g;
     SELECT broker.create_queue('sd')});
my @got;
for my $i (1 .. 20)
{
	push @got, sqlstate_of(qq{SELECT broker.enqueue('s$i', '{"i": $i}')});
}
is(join(' ', map { $_ eq 'none' ? 'ok' : $_ } @got),
	join(' ', ('ok') x 16, ('53200') x 4),
	'16 queues get a slot; the first use of each further queue fails with 53200');

my ($s, $spid) = session('slots');
($out, $err) = $s->query(q{SELECT count(*) FROM broker.enqueue_batch('s17', array_fill('{}'::jsonb, ARRAY[100]))});
is(state_of($err), '53200', 'enqueue_batch into a queue without a slot: 53200');
like($err, qr/too many broker queues in use.*\n.*DETAIL:.*at most 16 queues.*\n.*HINT:.*Raise broker.max_queues/s,
	'... with the limit in the detail and the setting to raise in the hint');
$t0 = time;
($out, $err) = $s->query(q{SELECT count(*) FROM broker.dequeue('s18', 1, wait => '30 s')});
is(state_of($err), '53200', 'dequeue (waiting) from a queue without a slot: 53200');
ok(time - $t0 < 10, '... at once, not after its wait');
q1(q{SELECT broker.subscribe('s1', 'slot.#'); SELECT broker.subscribe('s19', 'slot.#')});
($out, $err) = $s->query(q{SELECT broker.publish('slot.x', '{"p": 1}')});
is(state_of($err), '53200', 'publish reaching a queue without a slot: 53200');
is( q1(q{SELECT count(*) FROM broker.messages WHERE payload ? 'p'}),
	'0', '... and no copy stored in the queue that has a slot');
is( $s->safe(q{SELECT broker.enqueue('s1', '{"after": 1}') > 0;
               SELECT count(*) FROM broker.delete('s1', ARRAY(SELECT id FROM broker.dequeue('s1', 10)))}),
	"t\n2", 'the same session: queues with a slot work (enqueue, dequeue, delete)');
is( q1(q{SELECT string_agg(queue || ':' || total || ':' || coalesce(enqueued_total::text, 'null'), ' ' ORDER BY queue)
           FROM broker.metrics() WHERE queue IN ('s2', 's17', 's20')}),
	's17:0:0 s2:1:1 s20:0:0', 'metrics() reads every queue, with or without a slot');
is(q1(q{SELECT broker.drop_queue('s20')}), 't', 'drop_queue of a queue without a slot works');
q1(q{SELECT broker.drop_queue('s' || g) FROM generate_series(1, 3) g});
is( $s->safe(q{SELECT count(*) FROM broker.enqueue_batch('s17', array_fill('{}'::jsonb, ARRAY[100]));
               SELECT broker.enqueue('s18', '{}') > 0;
               SELECT broker.publish('slot.y', '{"p": 2}')}),
	"100\nt\n1", 'dropping 3 queues gave their slots back: 3 more queues work');
is(sqlstate_of(q{SELECT broker.enqueue('sd', '{}')}),
	'53200', 'and the table is full again after them');
$s->quit;
is(q1(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'broker launcher'}),
	$launcher_pid, 'no crash: the launcher started at the beginning still runs');
q1(q{SELECT broker.drop_queue(queue) FROM broker.queues WHERE queue ~ '^s'});

# ============================================================================
# 3. statement_timeout and cancel
# ============================================================================
q1(q{SELECT broker.create_queue('cx'); SELECT broker.create_queue('w')});
my $cx = q1(q{SELECT queue_id FROM broker.queue_defs WHERE name = 'cx'});
my $keyed = sub {
	my ($tag) = @_;
	return qq{SELECT count(*) FROM broker.enqueue_batch('cx',
	   ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 10000) g),
	   group_keys => ARRAY(SELECT 'g' || (g % 100) FROM generate_series(1, 10000) g),
	   dedup_keys => ARRAY(SELECT '$tag' || g FROM generate_series(1, 10000) g))};
};
# What must not change when a call is cancelled.
my $cx_state = sub {
	return q1(qq{
SELECT (SELECT count(*) FROM broker.messages WHERE abs(queue_id) = $cx) || ' msgs, '
    || (SELECT count(*) FROM broker.messages WHERE queue_id = $cx) || ' claimable, '
    || (SELECT count(*) FROM broker.dedup_0 WHERE queue_id = $cx)
     + (SELECT count(*) FROM broker.dedup_1 WHERE queue_id = $cx) || ' keys, '
    || (SELECT enqueued_total || ' enq, ' || deleted_total || ' del, '
            || ready || ' ready' FROM broker.metrics('cx'))});
};

# Run $sql in a transaction block of $sess, after $setup->($try) (a SET
# LOCAL statement_timeout), or cancelled by the canceller $cancel->($try)
# starts; tried again, sooner, if the statement finished first.  Returns
# the SQLSTATE seen.
my ($canceller) = session('canceller');

sub interrupted
{
	my ($sess, $sql, $setup, $cancel, $tries) = @_;
	my $state = 'none';
	for my $try (1 .. $tries)
	{
		$cancel->($try) if $cancel;
		$sess->start("BEGIN;\n" . $setup->($try) . "\n$sql");
		$canceller->finish if $cancel;
		my ($o, $e) = $sess->finish;
		$state = state_of($e);
		# The ROLLBACK runs under the SET LOCAL statement_timeout too: on a
		# loaded machine even it can be cancelled (57014), which leaves the
		# transaction open; roll back until it is gone.
		for my $r (1 .. 5)
		{
			my (undef, $re) = $sess->query('ROLLBACK');
			last if $re !~ /ERROR/;
			die "ROLLBACK failed: $re" if $r == 5;
		}
		last if $state ne 'none';
		note "try $try: the statement finished before it was interrupted";
	}
	return $state;
}

my ($c, $cpid) = session('cancelled');
$t0 = time;
$c->safe("BEGIN; " . $keyed->('warm') . "; ROLLBACK");
my $dur = time - $t0;
note sprintf('a keyed batch of 10,000 takes %.0f ms', $dur * 1000);
my $before = $cx_state->();
is($before, '0 msgs, 0 claimable, 0 keys, 0 enq, 0 del, 0 ready', 'cx is empty');

# --- enqueue_batch: statement_timeout ---------------------------------------
my $state = interrupted($c, $keyed->('k'),
	sub { my $ms = int($dur * 1000 / 3 / $_[0]) || 1; "SET LOCAL statement_timeout = '${ms}ms';" },
	undef, 6);
is($state, '57014', 'statement_timeout in the middle of enqueue_batch (10,000 keyed): 57014');
is($cx_state->(), $before, '... nothing of the batch stored: no message, no dedup key, no count');
is(locks_of($cpid), '0', '... no lock left after ROLLBACK (group and dedup key locks included)');

# --- enqueue_batch: pg_cancel_backend ---------------------------------------
$state = interrupted($c, $keyed->('k'), sub { '' },
	sub { start_canceller($canceller, $cpid, '%enqueue_batch%', int($dur * 1000 / 4 / $_[0])) }, 6);
is($state, '57014', 'pg_cancel_backend in the middle of enqueue_batch: 57014');
is($cx_state->(), $before, '... nothing of the batch stored');
is(locks_of($cpid), '0', '... no lock left');

# the same session and others work; the keys were never taken
is($c->safe($keyed->('k')), '10000', 'the same batch in the same session: all 10,000 stored');
is( q1(q{SELECT count(*) FROM broker.enqueue_batch('cx', ARRAY['{}', '{}']::jsonb[],
                                                   dedup_keys => ARRAY['k1', 'k2']) AS e(id)
           JOIN broker.messages m USING (id)}),
	'2', 'another session: its keys are duplicates of the stored batch (the ids stored before)');
is( q1(qq{SELECT count(*) FROM broker.messages WHERE queue_id = $cx}),
	'100', 'one claimable head per group (100 groups)');
q1(q{SELECT count(*) FROM broker.enqueue_batch('cx', array_fill('{}'::jsonb, ARRAY[20000]))});
$before = $cx_state->();
is($before, '30000 msgs, 20100 claimable, 10000 keys, 30000 enq, 0 del, 30000 ready', '30,000 in cx');

# --- delete(queue, ids[]) of 30,000: statement_timeout and cancel ------------
my ($lo, $hi) = split /\|/, q1(qq{SELECT min(id) || '|' || max(id) FROM broker.messages WHERE abs(queue_id) = $cx});
my $del = qq{SELECT count(*) FROM broker.delete('cx', ARRAY(SELECT g FROM generate_series(${lo}::bigint, $hi) g))};
$t0 = time;
is($c->safe("BEGIN; $del; ROLLBACK"), '30000', 'delete of 30,000 ids (rolled back)');
$dur = time - $t0;
note sprintf('a delete of 30,000 ids takes %.0f ms', $dur * 1000);
$state = interrupted($c, $del,
	sub { my $ms = int($dur * 1000 / 3 / $_[0]) || 1; "SET LOCAL statement_timeout = '${ms}ms';" },
	undef, 6);
is($state, '57014', 'statement_timeout in the middle of delete(ids[]): 57014');
is($cx_state->(), $before, '... nothing deleted, no group handed on, no count');
is(locks_of($cpid), '0', '... no lock left');
$state = interrupted($c, $del, sub { '' },
	sub { start_canceller($canceller, $cpid, '%broker.delete%', int($dur * 1000 / 4 / $_[0])) }, 6);
is($state, '57014', 'pg_cancel_backend in the middle of delete(ids[]): 57014');
is($cx_state->(), $before, '... nothing deleted');
is(locks_of($cpid), '0', '... no lock left');
is( $c->safe(q{SELECT count(*) FROM broker.delete('cx', ARRAY(SELECT id FROM broker.dequeue('cx', 100)))}),
	'100', 'the same session: dequeue + delete work');

# --- a waiting dequeue: statement_timeout, cancel, with leases held ----------
$t0 = time;
my ($o2, $e2) = $c->query(q{SET statement_timeout = '300ms';
	SELECT count(*) FROM broker.dequeue('w', 1, wait => '30 s');
	RESET statement_timeout});
is(state_of($e2), '57014', 'statement_timeout ends a waiting dequeue: 57014');
ok(time - $t0 < 10, '... at the timeout, not at the end of the wait');
is(locks_of($cpid), '0', '... no lock left');

# a transaction that holds 5 leases of cx, then waits on w and is cancelled
my @held = split /\n/, $c->safe(q{BEGIN; SELECT id FROM broker.dequeue('cx', 5, lease => '1 hour') ORDER BY id});
is(scalar(@held), 5, 'a transaction holds 5 leases');
$c->start(q{SELECT count(*) FROM broker.dequeue('w', 1, wait => '30 s')});
ok(poll($node, 'postgres', q{SELECT waiting FROM broker.waiters('w')}, '1', 20), '... and waits on another queue');
q1(qq{SELECT pg_cancel_backend($cpid)});
(undef, $e2) = $c->finish;
is(state_of($e2), '57014', 'pg_cancel_backend ends the wait: 57014');
$c->safe('ROLLBACK');
is(locks_of($cpid), '0', '... no lock left after ROLLBACK');
is( q1(q{SELECT waiting FROM broker.waiters('w')}), '0', '... no waiter counted any more');
my $held = join(',', @held);
is( q1(qq{SELECT count(*) FILTER (WHERE delivery_count = 0 AND receipt IS NULL AND vt <= now())
            FROM broker.messages WHERE id IN ($held)}),
	'5', '... its 5 leases were never written: ready, delivery_count unchanged');

# the next waits work and are woken by a commit
$c->start(q{SELECT payload->>'n' FROM broker.dequeue('w', 1, wait => '30 s')});
ok(poll($node, 'postgres', q{SELECT waiting FROM broker.waiters('w')}, '1', 20), 'a new wait in the same session');
$t0 = time;
q1(q{SELECT broker.enqueue('w', '{"n": "wake"}')});
($o2, $e2) = $c->finish;
is($o2, 'wake', '... is woken by the next commit');
ok(time - $t0 < 10, '... at once, not at the end of its wait');

# --- maintain_segments() cancelled while it waits for its lock ----------------
# It waits at most 50 ms (lock_timeout) for each lock, in a subtransaction;
# a statement_timeout of 45 ms fires during that wait.
my ($holder) = session('holder');
$holder->safe('BEGIN; LOCK TABLE broker.segments IN ROW SHARE MODE');
$c->safe('SELECT count(*) FROM broker.maintain_segments()');    # warm: skips the step
my ($m_state, $m_out, $m_err) = ('none');
for my $try (1 .. 5)
{
	($m_out, $m_err) = $c->query(q{SET statement_timeout = '45ms';
		SELECT count(*) FROM broker.maintain_segments()});
	$m_state = state_of($m_err);
	last if $m_state ne 'none';
	$c->safe('RESET statement_timeout');
}
is($m_state, '57014', 'statement_timeout while maintain_segments() waits for its lock: 57014');
($m_out, $m_err) = $c->query(q{SELECT 'usable'});
is($m_out . state_of($m_err), 'usablenone',
	'... and the session is usable at once (not left inside an aborted subtransaction)');
$holder->safe('COMMIT');
$holder->quit;
$c->quit;
($c, $cpid) = session('after');
is($c->safe(q{SELECT count(*) FROM broker.maintain_segments()}), '4', 'maintain_segments() works again');
$c->quit;
q1(q{SELECT broker.drop_queue('cx'); SELECT broker.drop_queue('w')});

# ============================================================================
# 4. kill -9 of a backend that holds leases
# ============================================================================
q1(q{SELECT broker.create_queue('k', lease => '1 hour');
     SELECT count(*) FROM broker.enqueue_batch('k',
       ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, 1000) g))});
my $kq = q1(q{SELECT queue_id FROM broker.queue_defs WHERE name = 'k'});
my $all = q1(q{SELECT string_agg(id::text, ',' ORDER BY id) FROM broker.messages});
# committed before the crash: 100 leases, 50 deletes
my %lease = map { split /\|/ } split /\n/,
  q1(q{SELECT id || '|' || receipt FROM broker.dequeue('k', 100)});
my $gone = q1(q{SELECT string_agg(d::text, ',' ORDER BY d)
                  FROM broker.delete('k', ARRAY(SELECT id FROM broker.dequeue('k', 50))) d});
is(scalar(keys %lease) . ' ' . scalar(split /,/, $gone), '100 50', '100 leases and 50 deletes committed');

# the victim: 200 leases pending in an open transaction, 20 of them deleted
my ($v, $vpid) = session('victim');
my @vids = split /\n/, $v->safe(q{BEGIN; SELECT id FROM broker.dequeue('k', 200) ORDER BY id});
$v->safe(q{SELECT count(*) FROM broker.delete('k', ARRAY[} . join(',', @vids[0 .. 19]) . q{]::bigint[])});
$v->start(q{SELECT count(*) FROM broker.dequeue('k', 100); SELECT pg_sleep(60)});
# and a consumer that commits leases one at a time meanwhile
my ($busy, $bpid) = session('busy');
$busy->start(q{DO $$ BEGIN LOOP PERFORM broker.dequeue('k', 1); COMMIT; PERFORM pg_sleep(0.001); END LOOP; END $$});
ok( poll($node, 'postgres', qq{SELECT count(*) FROM pg_stat_activity WHERE pid IN ($vpid, $bpid) AND state = 'active'},
		'2', 20),
	'the victim holds 300 leases in an open transaction, another consumer commits leases');
usleep(300_000);
my $offset = -s $node->logfile;
kill 'KILL', $vpid;
ok($node->wait_for_log(qr/all server processes terminated; reinitializing/, $offset),
	'kill -9 of the victim: the postmaster restarts all processes');
eval { $_->{h}->kill_kill } for ($v, $busy, $admin, $canceller);
$admin = undef;
ok(poll($node, 'postgres', 'SELECT 1', '1', 60), 'the server accepts connections again');

my $exp = join(',', grep { my $i = $_; !grep { $_ == $i } split /,/, $gone } split /,/, $all);
is( q1(qq{SELECT string_agg(id::text, ',' ORDER BY id) FROM broker.messages WHERE abs(queue_id) = $kq}),
	$exp, 'every message is there exactly once: all enqueued minus the 50 committed deletes');
is( q1(qq{SELECT count(*) FROM broker.messages WHERE abs(queue_id) = $kq
            AND NOT ((delivery_count = 0 AND receipt IS NULL AND vt <= now())
                  OR (delivery_count = 1 AND receipt IS NOT NULL AND vt > now()))}),
	'0', 'each one ready and never delivered, or leased once (as committed)');
my $lease_list = join(' OR ', map { "(id = $_ AND receipt = $lease{$_})" } sort keys %lease);
is( q1(qq{SELECT count(*) FROM broker.messages WHERE ($lease_list) AND delivery_count = 1 AND vt > now()}),
	'100', 'the 100 leases committed before the crash are there with their receipts');
my $vlist = join(',', @vids);
is( q1(qq{SELECT count(*) FROM broker.messages WHERE id IN ($vlist) AND delivery_count = 0 AND receipt IS NULL}),
	'200', "the victim's 200 pending leases and 20 deletes never happened: all 200 ready");
my $left = q1(qq{SELECT count(*) FROM broker.messages WHERE abs(queue_id) = $kq});
note 'leased by the busy consumer before the crash: '
  . q1(qq{SELECT count(*) FROM broker.messages WHERE abs(queue_id) = $kq AND receipt IS NOT NULL}) . ' (100 of them before)';

# the broker works after the restart: drain everything, exactly once
my $taken = q1(q{SELECT count(*) FROM broker.delete('k', ARRAY(SELECT id FROM broker.dequeue('k', 10000)))});
my $rest = q1(qq{SELECT count(*) FROM broker.delete('k', ARRAY(SELECT id FROM broker.messages WHERE abs(queue_id) = $kq))});
is($taken + $rest, $left, "after the restart: $taken ready ones dequeued and deleted, $rest leased ones deleted by id");
q1(q{SELECT broker.enqueue('k', '{"after": "crash"}')});
is( q1(q{SELECT payload->>'after' FROM broker.dequeue('k', 1, wait => '5 s')}),
	'crash', 'enqueue and dequeue work after the restart');
is(q1(q{SELECT count(*) FROM broker.messages}), '1', 'nothing else is left');
unlike(log_errors($node, $offset), qr/PANIC|XX000|TRAP/, 'no PANIC or internal error logged');

$admin->quit;
$node->stop;
done_testing();
