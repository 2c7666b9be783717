# 025_proxy.pl: broker_proxy (proxy/, docs/scale-out.md), broker's
# functions on a PL/Proxy database routed to three broker nodes.
#
#  0. broker_proxy in the installation under test: installed from proxy/
#     (make -C proxy install, with the pg_config on PATH) when it is missing
#     there or differs from the source; PL/Proxy (postgresql-15-plproxy)
#     must be installed;
#  1. three broker nodes and a proxy; broker_proxy refuses a database that
#     has broker; add_node gives each node its id range;
#  2. placement: queues created through the proxy exist on the node the
#     directory names and nowhere else, spread over the three nodes by the
#     hash of their names; a queue goes to its dead-letter queue's node;
#     per-node message counts match the directory; broker.metrics() and
#     the views of the proxy are the sums and unions of the nodes';
#  3. what a proxied call cannot do: a call that changes messages inside a
#     transaction block is refused (25001) with node_for() in the hint; a
#     transactional enqueue is made on the node node_for() names, and a
#     rollback there undoes it; with the refusal switched off a rollback on
#     the proxy does not;
#  4. publish reaches subscriptions on every node;
#  5. many producers and consumers through the proxy: three simulators at
#     once, one per node's queue (single calls, and batches with
#     enqueue_batch and delete(ids[])): every message delivered and deleted
#     exactly once, and each node's counters match what its simulator did;
#  6. moving a queue with 10,000 waiting messages while a producer and a
#     consumer go on through the proxy: none lost, none duplicated; leases
#     taken on the old node before the move are acknowledged there by id,
#     a released one is drained to the new node;
#  7. one node stopped: calls for its queues fail at once with 08006 and a
#     message naming the node and the queue, the other nodes' queues carry
#     on; node_metrics() reports it; check_nodes() marks it down (08006
#     without a connection attempt) and up again after a restart, with its
#     messages intact.
use strict;
use warnings;

use lib 'test/perl';
use BrokerTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $src = $ENV{TESTDIR} // '.';

# --- 0. broker_proxy in the installation under test ---------------------------

my $bindir = `pg_config --bindir`;
chomp $bindir;
my $pg_config = "$bindir/pg_config";
my $sharedir = `$pg_config --sharedir`;
chomp $sharedir;
die "PL/Proxy is not installed in $sharedir (Debian: apt-get install postgresql-15-plproxy)"
  unless -f "$sharedir/extension/plproxy.control";
my $sqlfile = 'broker_proxy--0.1.0.sql';
if (!-f "$sharedir/extension/$sqlfile"
	|| slurp_file("$sharedir/extension/$sqlfile") ne slurp_file("$src/proxy/$sqlfile"))
{
	note "installing broker_proxy from $src/proxy into $sharedir";
	system('make', '-s', '-C', "$src/proxy", "PG_CONFIG=$pg_config", 'install') == 0
	  or BAIL_OUT("cannot install broker_proxy from $src/proxy");
}

# --- 1. three nodes and a proxy -------------------------------------------------

my @conf = ('max_connections = 60', 'broker.reaper_interval = 1s');
my @nodes = map { broker_node("n$_", conf => \@conf) } 1 .. 3;
$_->safe_psql('postgres', 'CREATE EXTENSION broker') for @nodes;
my %node_of = map { ("n$_" => $nodes[ $_ - 1 ]) } 1 .. 3;
sub conninfo { my ($n) = @_; return 'host=' . $n->host . ' port=' . $n->port . ' dbname=postgres'; }

is(sqlstate($nodes[0], 'CREATE EXTENSION broker_proxy CASCADE'),
	'55000', 'broker_proxy refuses a database that has broker');

my $proxy = PostgreSQL::Test::Cluster->new('proxy');
$proxy->init;
$proxy->append_conf('postgresql.conf', "max_connections = 60\n");
$proxy->start;
$proxy->safe_psql('postgres', 'CREATE EXTENSION broker_proxy CASCADE');
for my $i (1 .. 3)
{
	is($proxy->safe_psql('postgres',
			"SELECT broker_proxy.add_node('n$i', '" . conninfo($nodes[ $i - 1 ]) . "')"),
		$i - 1, "add_node n$i: partition " . ($i - 1));
	is($nodes[ $i - 1 ]->safe_psql('postgres',
			'SELECT nextval(\'broker.message_id_seq\')'),
		"${i}000000000000000", "n$i hands out ids from ${i} * 10^15");
}
like(($proxy->psql('postgres',
	  "SELECT broker_proxy.add_node('again', '" . conninfo($nodes[0]) . "')"))[2],
	qr/already node "n1"/, 'the same database cannot be added twice');

sub px { return $proxy->safe_psql('postgres', $_[0]); }
sub directory
{
	my %d = map { split /\|/ } split /\n/,
	  px('SELECT queue, node FROM broker_proxy.placement');
	return \%d;
}

# --- 2. placement, per-node counts, metrics and views ---------------------------

px("SELECT broker.create_queue('pq_' || i) FROM generate_series(0, 11) i");
px("SELECT broker.enqueue_batch('pq_' || i, array_agg(jsonb_build_object('k', j)))
      FROM generate_series(0, 11) i, generate_series(0, i) j GROUP BY i");
my $dir = directory();
my %per_node;
$per_node{ $dir->{"pq_$_"} }{"pq_$_"} = $_ + 1 for 0 .. 11;
is(scalar(keys %per_node), 3, 'twelve new queues are spread over the three nodes')
  or diag explain $dir;
for my $name (sort keys %node_of)
{
	my $n = $node_of{$name};
	my @want = sort keys %{ $per_node{$name} // {} };
	is($n->safe_psql('postgres',
			"SELECT string_agg(queue, ',' ORDER BY queue) FROM broker.queues WHERE queue LIKE 'pq\\_%'"),
		join(',', @want), "$name has exactly the pq_ queues the directory places there");
	my $want_total = 0;
	$want_total += $_ for values %{ $per_node{$name} // {} };
	is($n->safe_psql('postgres',
			"SELECT coalesce(sum(total), 0) FROM broker.metrics() WHERE queue LIKE 'pq\\_%'"),
		$want_total, "$name holds the messages of its queues ($want_total)");
}

# a queue goes to its dead-letter queue's node
px("SELECT broker.create_queue('dlq_target')");
px("SELECT broker.create_queue('with_dlq', max_deliveries => 2, dead_letter_queue => 'dlq_target')");
$dir = directory();
is($dir->{with_dlq}, $dir->{dlq_target}, 'a queue is placed on its dead-letter queue\'s node');

# metrics and views of the proxy: the nodes' together
my $direct = join("\n", sort map {
	split /\n/, $_->safe_psql('postgres',
		'SELECT queue, ready, leased, total, enqueued_total FROM broker.metrics()')
} @nodes);
is(join("\n", sort split /\n/, px('SELECT queue, ready, leased, total, enqueued_total FROM broker.metrics()')),
	$direct, 'broker.metrics() on the proxy: every node\'s queues, same counts');
is(px('SELECT sum(total) FROM broker.metrics()'),
	78, 'metrics totals: 1 + 2 + ... + 12 messages');
is(px("SELECT total FROM broker.metrics('pq_11')"), 12, 'metrics of one queue');
is(px("SELECT count(*) FROM broker.queues q JOIN broker_proxy.placement p USING (queue)
        WHERE q.node = p.node"),
	px('SELECT count(*) FROM broker_proxy.directory'),
	'broker.queues: every queue once, on the node the directory names');
is(sqlstate($proxy, "SELECT broker.enqueue('nosuch', '{}')"), '42704', 'unknown queue: 42704');

# --- 3. what a proxied call cannot do -------------------------------------------

my ($ret, $out, $err) = $proxy->psql('postgres',
	"\\set VERBOSITY verbose\nBEGIN;\nSELECT broker.enqueue('pq_0', '{}');\nCOMMIT;");
like($err, qr/25001: broker\.enqueue through broker_proxy cannot run inside a transaction block/,
	'enqueue in a transaction block through the proxy: 25001');
like($err, qr/broker_proxy\.node_for\('pq_0'\)/, 'the hint names node_for()');
for my $call ("broker.dequeue('pq_0')", "broker.delete('pq_0', 1000000000000000)",
	"broker.enqueue_batch('pq_0', ARRAY['{}'::jsonb])", "broker.publish('t', '{}')")
{
	is(sqlstate($proxy, "BEGIN; SELECT * FROM $call; COMMIT;"),
		'25001', "$call in a transaction block: 25001");
}
is(px("BEGIN; SELECT count(*) FROM broker.archive('pq_0'); COMMIT;"), 0,
	'a lookup (archive) may run in a transaction block');

my ($for_node, $for_conninfo) = split /\|/, px("SELECT * FROM broker_proxy.node_for('pq_0')");
is($for_node, $dir->{pq_0}, 'node_for() names the queue\'s node');
is($for_conninfo, conninfo($node_of{$for_node}), 'node_for() gives its connection string');
my $owner = $node_of{$for_node};
$owner->safe_psql('postgres', 'CREATE TABLE orders (id int)');
$owner->safe_psql('postgres', "BEGIN; INSERT INTO orders VALUES (1);
    SELECT broker.enqueue('pq_0', '{\"order\": 1}'); ROLLBACK;");
$owner->safe_psql('postgres', "BEGIN; INSERT INTO orders VALUES (2);
    SELECT broker.enqueue('pq_0', '{\"order\": 2}'); COMMIT;");
is(px("SELECT string_agg(payload->>'order', ',') FROM broker.dequeue('pq_0', 10) WHERE payload ? 'order'"),
	'2', 'transactional enqueue on the owning node: the rollback undid one, the proxy delivers the other');
is(px("SET broker_proxy.allow_transaction_block = on; BEGIN;
       SELECT broker.enqueue('pq_1', '{\"undone\": false}') > 0; ROLLBACK;
       SELECT count(*) FROM broker.dequeue('pq_1', 10) WHERE payload ? 'undone'"),
	"t\n1", 'with allow_transaction_block, a rollback on the proxy does not undo the enqueue');

# --- 4. publish reaches every node -----------------------------------------------

my %first;
for my $i (0 .. 11) { $first{ $dir->{"pq_$i"} } //= "pq_$i"; }
my @subs = map { $first{$_} } sort keys %first;
px("SELECT broker.subscribe('$_', 'ev.#')") for @subs;
is(px("SELECT string_agg(node, ',' ORDER BY node) FROM broker.subscriptions WHERE pattern = 'ev.#'"),
	'n1,n2,n3', 'broker.subscriptions: one subscribed queue on each node');
is(px("SELECT broker.publish('ev.x', '{\"ev\": 1}')"), 3, 'publish through the proxy: 3 copies');
for my $q (@subs)
{
	is(px("SELECT count(*) FROM broker.dequeue('$q', 100) WHERE payload ? 'ev'"),
		1, "the copy reached $q on node $dir->{$q}");
}

# --- 5. many producers and consumers through the proxy ----------------------------

system('make', '-s', '-C', "$src/test/tools") == 0 or BAIL_OUT('cannot build the simulator');
my @sims;
for my $name (sort keys %node_of)
{
	# a queue name the hash places on this node
	my $q;
	for my $i (0 .. 200)
	{
		my $cand = "sim_$i";
		next if grep { $_->{q} eq $cand } @sims;
		px("SELECT broker.create_queue('$cand')");
		if (directory()->{$cand} eq $name) { $q = $cand; last; }
		px("SELECT broker.drop_queue('$cand')");
	}
	die "no queue name for $name" unless defined $q;
	my @args = ('-q', $q, '-p', 2, '-c', 2, '-t', 4, '--quiet', '--drain-timeout', 120);
	push @args, '-b', 10 if $name eq 'n2';
	my %s = (q => $q, node => $name, out => '', args => \@args);
	$s{h} = IPC::Run::start(
		[ "$src/test/tools/broker_sim", '-d', 'host=' . $proxy->host . ' port=' . $proxy->port . ' dbname=postgres', @args ],
		'>', \$s{out}, '2>&1');
	push @sims, \%s;
}
for my $s (@sims)
{
	$s->{h}->finish;
	my $rc = $? >> 8;
	is($rc, 0, "simulator on $s->{q} (node $s->{node}, @{$s->{args}}): exit status 0")
	  or diag $s->{out};
	like($s->{out}, qr/duplicates\s+0 .*lost\s+0\n.*errors\s+0\n\s+result\s+OK/s,
		"simulator on $s->{q}: every message delivered and deleted once");
	my ($produced) = $s->{out} =~ /produced\s+(\d+)/;
	my ($consumed) = $s->{out} =~ /consumed\s+(\d+)/;
	cmp_ok($produced // 0, '>', 100, "simulator on $s->{q}: $produced messages went through");
	my $n = $node_of{ $s->{node} };
	is($n->safe_psql('postgres',
			"SELECT enqueued_total || '/' || deleted_total || '/' || total FROM broker.metrics('$s->{q}')"),
		"$produced/$consumed/0", "node $s->{node}: its counters of $s->{q} are the simulator's");
	for my $other (grep { $_ ne $s->{node} } sort keys %node_of)
	{
		is($node_of{$other}->safe_psql('postgres',
				"SELECT count(*) FROM broker.queues WHERE queue = '$s->{q}'"),
			0, "$s->{q} is not on $other");
	}
}
my $sim_total = 0;
$sim_total += ($_->{out} =~ /produced\s+(\d+)/)[0] // 0 for @sims;
is(px("SELECT sum(enqueued_total) FROM broker.metrics() WHERE queue LIKE 'sim\\_%'"),
	$sim_total, "metrics on the proxy: enqueued totals of the three queues together ($sim_total)");

# --- 6. moving a queue with 10,000 waiting messages --------------------------------

px("SELECT broker.create_queue('big', lease => '1 hour')");
my $from = directory()->{big};
my ($to) = grep { $_ ne $from } sort keys %node_of;
px("SELECT count(*) FROM (SELECT broker.enqueue_batch('big', array_agg(jsonb_build_object('i', i) ORDER BY i))
      FROM generate_series(1, 10000) i GROUP BY i / 1000) s");
is(px("SELECT total FROM broker.metrics('big')"), 10000, "big: 10,000 messages on $from");
# three leases taken on the old node before the move
my @leased = map { [ split /\|/ ] } split /\n/,
  px("SELECT id, receipt, payload->>'i' FROM broker.dequeue('big', 3)");
is(scalar(@leased), 3, 'three messages leased before the move');

# a producer and a consumer through the proxy during the move
my $prod_sql = join('', map { "SELECT broker.enqueue('big', '{\"c\": $_}');\n" } 1 .. 300);
my $cons_sql = join('', map {
	"SELECT coalesce(m.payload->>'i', 'c' || (m.payload->>'c')), broker.delete('big', m.id, m.receipt)"
	  . " FROM broker.dequeue('big', 5, '1 hour') m;\n" } 1 .. 150);
my ($prod_out, $prod_err, $cons_out, $cons_err) = ('', '', '', '');
my @psql = ('psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $proxy->connstr('postgres'));
my $ph = IPC::Run::start(\@psql, '<', \$prod_sql, '>', \$prod_out, '2>', \$prod_err);
my $ch = IPC::Run::start(\@psql, '<', \$cons_sql, '>', \$cons_out, '2>', \$cons_err);
my ($mret, $mout, $merr) = $proxy->psql('postgres',
	"CALL broker_proxy.move_queue('big', '$to', 1000, '2 seconds')");
is($mret, 0, "move_queue big $from -> $to") or diag $merr;
like($merr, qr/still has messages on its previous node/, 'the leased messages keep the move draining');
$ph->finish;
is($?, 0, 'the producer through the proxy had no error during the move') or diag $prod_err;
$ch->finish;
is($?, 0, 'the consumer through the proxy had no error during the move') or diag $cons_err;
is(px("SELECT node || '/' || state || '/' || other_node FROM broker_proxy.placement WHERE queue = 'big'"),
	"$to/draining/$from", 'directory: big is on the new node, draining from the old one');

# leases of the old node: acknowledged there by id, or released and drained
is(px("SELECT broker.delete('big', $leased[0][0], $leased[0][1])"), 't',
	'a lease taken before the move is deleted with its receipt afterwards');
isnt(px("SELECT broker.extend_lease('big', $leased[1][0], $leased[1][1], '10 minutes')"), '',
	'a lease taken before the move is extended afterwards');
is(px("SELECT broker.release('big', $leased[1][0], $leased[1][1])"), 't',
	'a lease taken before the move is released afterwards');
is(px("SELECT broker.delete('big', ARRAY[$leased[2][0]]::bigint[])"), $leased[2][0],
	'delete(ids[]) reaches the old node by id');
px("CALL broker_proxy.drain_queue('big', '60 seconds')");
is(px("SELECT node || '/' || state FROM broker_proxy.placement WHERE queue = 'big'"),
	"$to/ready", 'drained: big is ready on the new node');
is($node_of{$from}->safe_psql('postgres', "SELECT count(*) FROM broker.queues WHERE queue = 'big'"),
	0, "big is dropped on $from");

# everything left, through the proxy
my %seen;
my $dups = 0;
my $count = sub { my ($k) = @_; $dups++ if $seen{$k}++; };
for my $line (split /\n/, $cons_out)
{
	my ($k, $deleted) = split /\|/, $line;
	$count->($k) if $deleted eq 't';
}
my $during = scalar(keys %seen);
$count->($leased[0][2]);
$count->($leased[2][2]);
for (;;)
{
	my $rows = px("WITH m AS (SELECT * FROM broker.dequeue('big', 1000)),
             d AS (SELECT broker.delete('big', x.ids) AS id
                     FROM (SELECT array_agg(m.id) AS ids FROM m) x WHERE x.ids IS NOT NULL)
        SELECT coalesce(m.payload->>'i', 'c' || (m.payload->>'c')) FROM m JOIN d USING (id)");
	last if $rows eq '';
	$count->($_) for split /\n/, $rows;
}
note "big: $during consumed during the move";
cmp_ok($during, '>', 0, 'the consumer took messages during the move');
is($dups, 0, 'no message of big delivered and deleted twice');
is(scalar(grep { /^\d+$/ } keys %seen), 10000, 'all 10,000 moved messages consumed');
is(scalar(grep { /^c\d+$/ } keys %seen), 300, 'all 300 messages enqueued during the move consumed');
is(px("SELECT total FROM broker.metrics('big')"), 0, 'big is empty');

# --- 7. one node stopped ---------------------------------------------------------

my $down = 'n2';
my ($down_q) = map { $_->{q} } grep { $_->{node} eq $down } @sims;
my ($up_q) = map { $_->{q} } grep { $_->{node} ne $down } @sims;
px("SELECT broker.enqueue('$down_q', '{\"keep\": 1}')");
$node_of{$down}->stop('fast');
my $t0 = time;
($ret, $out, $err) = $proxy->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT broker.enqueue('$down_q', '{}')");
note sprintf('a call for a queue of the stopped node failed after %.3f s', time - $t0);
like($err, qr/ERROR:\s+08006: broker\.enqueue through broker_proxy: broker node "$down" of queue "$down_q" cannot be reached/,
	'stopped node: enqueue fails with 08006 naming the node and the queue');
like($err, qr/The call did not run there/, 'and says the call did not run');
is(sqlstate($proxy, "SELECT * FROM broker.dequeue('$down_q')"), '08006', 'dequeue: 08006');
px("SELECT broker.enqueue('$up_q', '{\"x\": 1}')");
is(px("SELECT broker.delete('$up_q', id, receipt) FROM broker.dequeue('$up_q')"), 't',
	'a queue of another node carries on (enqueue, dequeue, delete)');
is(sqlstate($proxy, 'SELECT * FROM broker.metrics()'), '08006', 'metrics() of every node: 08006');
is(px("SELECT string_agg(DISTINCT node, ',' ORDER BY node) FILTER (WHERE error IS NOT NULL) || '/' ||
              string_agg(DISTINCT node, ',' ORDER BY node) FILTER (WHERE error IS NULL)
         FROM broker_proxy.node_metrics()"),
	join(',', $down) . '/' . join(',', grep { $_ ne $down } sort keys %node_of),
	'node_metrics(): an error row for the stopped node, the others\' metrics');
is(px("SELECT string_agg(node || '=' || up, ',' ORDER BY node) FROM broker_proxy.check_nodes()"),
	join(',', map { "$_=" . ($_ eq $down ? 'false' : 'true') } sort keys %node_of),
	'check_nodes() finds the stopped node');
($ret, $out, $err) = $proxy->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT broker.enqueue('$down_q', '{}')");
like($err, qr/08006: broker node "$down" of queue "$down_q" is marked down/,
	'marked down: 08006 without a connection attempt');
is(sqlstate($proxy, "SELECT broker.publish('ev.y', '{}')"), '08006',
	'publish is refused while a node is down (it would not reach its subscriptions)');
is(px("SELECT count(*) FROM broker.dequeue('$up_q', 10)"), 0, 'other nodes still answer');
$node_of{$down}->start;
is(px("SELECT string_agg(node || '=' || up, ',' ORDER BY node) FROM broker_proxy.check_nodes()"),
	'n1=true,n2=true,n3=true', 'check_nodes() after the restart: every node up');
is(px("SELECT payload FROM broker.dequeue('$down_q')"), '{"keep": 1}',
	'the restarted node\'s queue answers again, with the message it had');
is(px("SELECT sum(total) FROM broker.metrics() WHERE queue LIKE 'pq\\_%'"),
	px("SELECT sum(total) FROM broker_proxy.node_metrics() WHERE queue LIKE 'pq\\_%'"),
	'metrics() and node_metrics() agree again');

$proxy->stop;
$_->stop for @nodes;
done_testing();
