-- Queues: create_queue, drop_queue, purge_queue, the queues view, names.
CREATE EXTENSION IF NOT EXISTS broker;

-- defaults
SELECT broker.create_queue('orders');
SELECT queue, lease, max_message_size, default_ttl, max_deliveries, dead_letter_queue,
       created_at <= now() AS created
  FROM broker.queues WHERE queue = 'orders';
SELECT broker.create_queue('jobs', lease => '5 minutes', max_message_size => 100,
                           default_ttl => '1 day', max_deliveries => 3,
                           dead_letter_queue => 'orders');
SELECT queue, lease, max_message_size, default_ttl, max_deliveries, dead_letter_queue
  FROM broker.queues ORDER BY queue;

-- names: 1 to 48 of [a-z0-9_], not starting with a digit
SELECT broker.create_queue('Orders');
SELECT n, regress.err(format('SELECT broker.create_queue(%L)', n))
  FROM unnest(ARRAY['Upper', 'with space', 'quo''te', 'semi;colon', '',
                    '1abc', 'tab	x', 'dash-x', 'ünï', repeat('a', 49)]) AS n;
SELECT regress.err('SELECT broker.create_queue(NULL)');
-- a long invalid name is clipped in the message (a 10 MB name was echoed
-- whole into the error and the log), on a character boundary
SELECT regress.err(format('SELECT broker.create_queue(%L)', repeat('X', 10000000)));
SELECT length(regress.err(format('SELECT broker.enqueue(%L, %L)', repeat('é', 1000), '{}'))) < 120 AS clipped;
SELECT regress.err(format('SELECT broker.enqueue(%L, %L)', repeat('é', 100), '{}'));
SELECT broker.create_queue(repeat('a', 48));
SELECT broker.create_queue('_x9');
SELECT broker.create_queue('a');
SELECT count(*) FROM broker.queues WHERE queue IN (repeat('a', 48), '_x9', 'a');

-- injection attempts are names like any other: refused, nothing runs
SELECT regress.err($q$SELECT broker.create_queue('x''); DROP TABLE broker.messages; --')$q$);
SELECT regress.err($q$SELECT broker.enqueue('orders; DROP TABLE broker.messages', '{}')$q$);
SELECT regress.err($q$SELECT broker.dequeue('orders'' OR 1=1 --')$q$);
SELECT to_regclass('broker.messages') IS NOT NULL AS messages_table_still_there;

-- an existing name
SELECT regress.err($$SELECT broker.create_queue('orders')$$);
SELECT broker.create_queue('orders', if_not_exists => true);

-- settings out of range: 22023
SELECT regress.err($$SELECT broker.create_queue('bad', lease => '0')$$);
SELECT regress.err($$SELECT broker.create_queue('bad', lease => '-1 second')$$);
SELECT regress.err($$SELECT broker.create_queue('bad', max_message_size => 0)$$);
SELECT regress.err($$SELECT broker.create_queue('bad', max_message_size => 1048577)$$);
SELECT regress.err($$SELECT broker.create_queue('bad', default_ttl => '0')$$);
SELECT regress.err($$SELECT broker.create_queue('bad', default_ttl => '-1 day')$$);
SELECT regress.err($$SELECT broker.create_queue('bad', max_deliveries => 0)$$);
SELECT regress.err($$SELECT broker.create_queue('bad', dead_letter_queue => 'nosuch')$$);
SELECT regress.err($$SELECT broker.create_queue('bad', dead_letter_queue => 'bad')$$);
SELECT regress.err($$SELECT broker.create_queue('bad', lease => NULL)$$);
SELECT count(*) FROM broker.queues WHERE queue = 'bad';
-- the limits themselves are fine
SELECT broker.create_queue('tiny', max_message_size => 1);
SELECT broker.create_queue('huge', max_message_size => 1048576);

-- purge
SELECT broker.enqueue('orders', '{"n": 1}') > 0 AS enqueued;
SELECT broker.enqueue('orders', '{"n": 2}') > 0 AS enqueued;
SELECT broker.purge_queue('orders');
SELECT broker.purge_queue('orders');
SELECT total FROM broker.metrics('orders');

-- drop: a dead-letter queue in use is kept
SELECT regress.err($$SELECT broker.drop_queue('orders')$$);
\set VERBOSITY default
SELECT broker.drop_queue('orders');
SELECT broker.drop_queue('jobs');
SELECT broker.enqueue('orders', '{"n": 3}') > 0 AS enqueued;
SELECT broker.drop_queue('orders');
SELECT count(*) AS orphans FROM broker.messages m
 WHERE NOT EXISTS (SELECT 1 FROM broker.queue_defs q WHERE q.queue_id = m.queue_id);
SELECT regress.err($$SELECT broker.drop_queue('orders')$$);
SELECT broker.drop_queue('orders', if_exists => true);
-- dropped and created again: a new, empty queue
SELECT broker.create_queue('orders');
SELECT total FROM broker.metrics('orders');

-- every function on a queue that does not exist: 42704
SELECT f, regress.err(f) FROM unnest(ARRAY[
  $$SELECT broker.purge_queue('nosuch')$$,
  $$SELECT broker.enqueue('nosuch', '{}')$$,
  $$SELECT broker.enqueue_batch('nosuch', ARRAY['{}'::jsonb])$$,
  $$SELECT broker.dequeue('nosuch')$$,
  $$SELECT broker.delete('nosuch', 1)$$,
  $$SELECT broker.delete('nosuch', 1, 2)$$,
  $$SELECT broker.delete('nosuch', ARRAY[1]::bigint[])$$,
  $$SELECT broker.release('nosuch', 1, 2)$$,
  $$SELECT broker.extend_lease('nosuch', 1, 2, '1 minute')$$,
  $$SELECT broker.metrics('nosuch')$$]) AS f;

-- a transaction that drops a queue and rolls back leaves it intact
BEGIN;
SELECT broker.drop_queue('orders');
ROLLBACK;
SELECT queue FROM broker.queues WHERE queue = 'orders';

-- intervals too long to add to now are refused up front (a queue created
-- with lease => '178000000 years' or such a default_ttl made every later
-- dequeue or enqueue of it fail with 22008)
SELECT regress.err($$SELECT broker.create_queue('long1', lease => '178000000 years')$$);
SELECT regress.err($$SELECT broker.create_queue('long2', default_ttl => '178000000 years')$$);
SELECT broker.create_queue('long3', lease => '9999 years', default_ttl => '9999 years', max_lease => '9999 years');
SELECT broker.enqueue('long3', '{}') > 0 AS enqueued;
SELECT count(*) FROM broker.dequeue('long3');
SELECT regress.err($$SELECT broker.enqueue('long3', '{}', delay => '20000 years')$$);
SELECT regress.err($$SELECT broker.enqueue('long3', '{}', ttl => '20000 years')$$);
SELECT regress.err($$SELECT * FROM broker.dequeue('long3', 1, '20000 years')$$);
SELECT regress.err($$SELECT * FROM broker.dequeue('long3', 1, NULL, '20000 years')$$);
SELECT regress.err($$SELECT broker.extend_lease('long3', 1, 1, '20000 years')$$);
SELECT regress.err($$SELECT broker.release('long3', 1, 1, '20000 years')$$);
SELECT broker.drop_queue('long3');

SELECT broker.drop_queue(q) FROM unnest(ARRAY['orders', repeat('a', 48), '_x9', 'a', 'tiny', 'huge']) AS q;
SELECT count(*) FROM broker.queues;
