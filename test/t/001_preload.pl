# 001_preload.pl: the library with and without shared_preload_libraries.
#
# With broker preloaded: the library is loaded, its shared memory exists,
# CREATE EXTENSION works, an enqueue / dequeue / delete round trip works and
# the broker.metrics() counters are non-NULL and move.
#
# Without preload: CREATE EXTENSION and create_queue still work, everything
# that needs shared memory (enqueue, enqueue_batch, dequeue) fails with
# SQLSTATE 55000 and a hint naming shared_preload_libraries, and
# broker.metrics() works with NULL counters.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# Run SQL that must fail inside a DO block that catches the error and
# reports it as a NOTICE; return "sqlstate|hint" (or "no error").
sub caught
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql(
		'postgres', qq{
DO \$\$
DECLARE h text;
BEGIN
	$sql;
	RAISE NOTICE 'caught=no error';
EXCEPTION WHEN others THEN
	GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
	RAISE NOTICE 'caught=%|%', SQLSTATE, h;
END \$\$;});
	return "psql failed: $err" if $ret != 0;
	return $err =~ /caught=(.*)/ ? $1 : "no notice: $err";
}

# ---------------------------------------------------------------------------
# 1. With shared_preload_libraries = 'broker'
# ---------------------------------------------------------------------------
my $node = PostgreSQL::Test::Cluster->new('preload');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'broker'");
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'broker', 'shared_preload_libraries is broker');

# The shared structures were allocated at postmaster start.
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(name, ',' ORDER BY name) FROM pg_shmem_allocations
		   WHERE name LIKE 'broker %'}),
	'broker consumer history,broker consumers,broker in-flight registry,broker queue states,broker segments,broker worker state',
	'broker shared memory segments exist');

# The module's GUCs are registered by the preloaded library.
is($node->safe_psql('postgres', 'SHOW broker.max_queues'),
	'4096', 'broker.max_queues GUC is defined');

$node->safe_psql('postgres', 'CREATE EXTENSION broker');
is( $node->safe_psql(
		'postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'broker'}),
	'0.2.0',
	'CREATE EXTENSION broker works with preload');

$node->safe_psql('postgres', q{SELECT broker.create_queue('q')});

my $m = $node->safe_psql('postgres',
	q{SELECT ready, leased, total, enqueued_total, deleted_total,
	         expired_total, dead_lettered_total
	    FROM broker.metrics('q')});
is($m, '0|0|0|0|0|0|0', 'metrics of a fresh queue: zero, counters not NULL');

my $id = $node->safe_psql('postgres',
	q{SELECT broker.enqueue('q', '{"hello":"world"}')});
like($id, qr/^\d+$/, 'enqueue returns an id');

is( $node->safe_psql(
		'postgres',
		q{SELECT ready, leased, total, enqueued_total, deleted_total
		    FROM broker.metrics('q')}),
	'1|0|1|1|0',
	'after enqueue: one ready message, enqueued_total = 1');

my $got = $node->safe_psql('postgres',
	q{SELECT id, payload->>'hello', delivery_count, receipt IS NOT NULL,
	         lease_until > now()
	    FROM broker.dequeue('q')});
is($got, "$id|world|1|t|t", 'dequeue returns the message under a lease');
my $receipt = $node->safe_psql('postgres',
	qq{SELECT receipt FROM broker.messages WHERE id = $id});

is( $node->safe_psql(
		'postgres',
		q{SELECT ready, leased, total FROM broker.metrics('q')}),
	'0|1|1',
	'after dequeue: the message is leased');

is($node->safe_psql('postgres', qq{SELECT broker.delete('q', $id, $receipt)}),
	't', 'delete with the receipt returns true');

is( $node->safe_psql(
		'postgres',
		q{SELECT ready, leased, total, enqueued_total, deleted_total,
		         expired_total IS NOT NULL, dead_lettered_total IS NOT NULL
		    FROM broker.metrics('q')}),
	'0|0|0|1|1|t|t',
	'after delete: queue empty, deleted_total = 1, counters not NULL');

is($node->safe_psql('postgres', q{SELECT count(*) FROM broker.dequeue('q')}),
	'0', 'a deleted message is not delivered again');

# Counters move only on commit: a rolled-back enqueue counts nothing.
$node->safe_psql('postgres',
	q{BEGIN; SELECT broker.enqueue('q', '{}'); ROLLBACK;});
is( $node->safe_psql(
		'postgres', q{SELECT enqueued_total, total FROM broker.metrics('q')}),
	'1|0',
	'a rolled-back enqueue moves no counter');

# A batch moves enqueued_total by its size, a multi-delete deleted_total.
$node->safe_psql('postgres',
	q{SELECT broker.enqueue_batch('q', ARRAY['{"a":1}','{"a":2}','{"a":3}']::jsonb[])});
$node->safe_psql('postgres',
	q{SELECT broker.delete('q', array_agg(id)) FROM broker.dequeue('q', 10)});
is( $node->safe_psql(
		'postgres',
		q{SELECT enqueued_total, deleted_total, total FROM broker.metrics('q')}),
	'4|4|0',
	'enqueue_batch and delete(ids[]) move the counters');

$node->stop;

# ---------------------------------------------------------------------------
# 2. Without shared_preload_libraries
#
# Here every statement goes through sql() rather than safe_psql, so that a
# failure (the backend dying while loading the library, say) shows up as a
# failed assertion and the remaining checks still run.
# ---------------------------------------------------------------------------

# Run SQL; return its output, or "ERROR: <stderr>" when psql failed.
sub sql
{
	my ($node, $query) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $query);
	return $ret == 0 ? $out : "ERROR($ret): $err";
}

my $plain = PostgreSQL::Test::Cluster->new('no_preload');
$plain->init;
$plain->start;

is(sql($plain, 'SHOW shared_preload_libraries'),
	'', 'second node: no shared_preload_libraries');

is(sql($plain, 'CREATE EXTENSION broker'),
	'', 'CREATE EXTENSION broker works without preload');
is( sql($plain,
		q{SELECT extversion FROM pg_extension WHERE extname = 'broker'}),
	'0.2.0',
	'the extension is installed without preload');

is(sql($plain, q{SELECT broker.create_queue('q')}),
	'', 'create_queue works without preload');
is(sql($plain, q{SELECT queue, lease FROM broker.queues}),
	'q|00:00:30', 'the queue is listed in broker.queues');

# SQLSTATE and hint as psql reports them with VERBOSITY verbose.
my ($ret, $out, $err) = $plain->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT broker.enqueue('q', '{}');");
isnt($ret, 0, 'enqueue fails without preload');
like($err, qr/ERROR:\s+55000:/, 'enqueue: SQLSTATE 55000 (psql verbose)');
like($err, qr/HINT:.*shared_preload_libraries/,
	'enqueue: hint names shared_preload_libraries (psql verbose)');

($ret, $out, $err) = $plain->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT * FROM broker.dequeue('q');");
isnt($ret, 0, 'dequeue fails without preload');
like($err, qr/ERROR:\s+55000:/, 'dequeue: SQLSTATE 55000 (psql verbose)');
like($err, qr/HINT:.*shared_preload_libraries/,
	'dequeue: hint names shared_preload_libraries (psql verbose)');

# The same, caught in PL/pgSQL.
like(caught($plain, q{PERFORM broker.enqueue('q', '{}')}),
	qr/^55000\|.*shared_preload_libraries/,
	'enqueue: SQLSTATE 55000 and hint (caught in a DO block)');
like(caught($plain, q{PERFORM broker.dequeue('q')}),
	qr/^55000\|.*shared_preload_libraries/,
	'dequeue: SQLSTATE 55000 and hint (caught in a DO block)');
like(caught($plain, q{PERFORM broker.dequeue('q', 5, '1 minute', '1 second')}),
	qr/^55000\|.*shared_preload_libraries/,
	'dequeue with wait: SQLSTATE 55000 and hint (caught in a DO block)');
like(
	caught(
		$plain, q{PERFORM broker.enqueue_batch('q', ARRAY['{}']::jsonb[])}),
	qr/^55000\|.*shared_preload_libraries/,
	'enqueue_batch: SQLSTATE 55000 and hint (caught in a DO block)');

is(sql($plain, 'SELECT count(*) FROM broker.messages'),
	'0', 'nothing was stored by the failed calls');

is( sql($plain,
		q{SELECT queue, ready, leased, delayed, total,
		         enqueued_total IS NULL, deleted_total IS NULL,
		         expired_total IS NULL, dead_lettered_total IS NULL
		    FROM broker.metrics()}),
	'q|0|0|0|0|t|t|t|t',
	'metrics() works without preload, counters NULL');
is( sql($plain,
		q{SELECT count(*) FROM broker.metrics('q') WHERE enqueued_total IS NULL}),
	'1',
	'metrics(queue) works without preload, counters NULL');

is( sql($plain,
		q{SELECT count(*) FROM pg_shmem_allocations WHERE name LIKE 'broker%'}),
	'0',
	'no broker shared memory without preload');

is(sql($plain, q{SELECT broker.drop_queue('q')}),
	't', 'drop_queue works without preload');

$plain->stop;

done_testing();
