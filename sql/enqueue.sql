-- Producing: enqueue and enqueue_batch.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('eq');

-- ids are unique and increase in enqueue order within a session
CREATE TEMP TABLE ids AS
SELECT n, broker.enqueue('eq', jsonb_build_object('n', n)) AS id
  FROM generate_series(1, 50) AS n;
SELECT count(DISTINCT id) = 50 AS unique_ids,
       bool_and(id > prev) AS increasing
  FROM (SELECT id, lag(id, 1, 0::bigint) OVER (ORDER BY n) AS prev FROM ids) s;
SELECT broker.purge_queue('eq');

-- what is stored is what was given
SELECT broker.enqueue('eq', '{"k": [1, 2, {"x": null}]}', headers => '{"trace": "abc"}') AS id \gset
SELECT id = :id AS same_id, payload, headers, delivery_count, expires_at IS NULL AS no_expiry
  FROM broker.dequeue('eq');
SELECT broker.purge_queue('eq');

-- a NULL payload: 22004
SELECT regress.err($$SELECT broker.enqueue('eq', NULL)$$);
SELECT regress.err($$SELECT broker.enqueue('eq', 'null'::jsonb)$$);  -- JSON null is a value
SELECT broker.purge_queue('eq');

-- delay and ttl
SELECT regress.err($$SELECT broker.enqueue('eq', '{}', delay => '-1 second')$$);
SELECT regress.err($$SELECT broker.enqueue('eq', '{}', ttl => '0')$$);
SELECT regress.err($$SELECT broker.enqueue('eq', '{}', ttl => '-5 minutes')$$);
SELECT broker.enqueue('eq', '{"delayed": true}', delay => '1 hour') > 0 AS enqueued;
SELECT count(*) AS delivered FROM broker.dequeue('eq');
SELECT ready, delayed, total FROM broker.metrics('eq');
SELECT broker.purge_queue('eq');
SELECT broker.enqueue('eq', '{"soon": true}', delay => '300 ms') > 0 AS enqueued;
SELECT count(*) AS delivered_before FROM broker.dequeue('eq');
SELECT regress.wait_due('eq');
SELECT payload AS delivered_after FROM broker.dequeue('eq');
SELECT broker.purge_queue('eq');

-- ttl: expires_at = enqueued_at + ttl; else the queue's default_ttl; else never
SELECT broker.enqueue('eq', '{}', ttl => '10 minutes') > 0 AS enqueued;
SELECT expires_at - enqueued_at AS ttl FROM broker.dequeue('eq');
SELECT broker.create_queue('eq_ttl', default_ttl => '2 hours');
SELECT broker.enqueue('eq_ttl', '{}') > 0 AS enqueued;
SELECT broker.enqueue('eq_ttl', '{}', ttl => '1 minute') > 0 AS enqueued;
SELECT expires_at - enqueued_at AS ttl FROM broker.dequeue('eq_ttl', 10) ORDER BY id;
SELECT broker.purge_queue('eq');

-- size: the bytes of the payload's jsonb binary form (pg_column_size - 4)
SELECT pg_column_size('{"data": "0123456789"}'::jsonb) - 4 AS size \gset
SELECT broker.create_queue('eq_small', max_message_size => :size);
SELECT broker.enqueue('eq_small', '{"data": "0123456789"}') > 0 AS exactly_the_limit_fits;
SELECT regress.err($$SELECT broker.enqueue('eq_small', '{"data": "0123456789!"}')$$);
\set VERBOSITY default
SELECT broker.enqueue('eq_small', '{"data": "0123456789!"}');

-- transactional: a rolled-back enqueue is never delivered
BEGIN;
SELECT broker.enqueue('eq', '{"rolled": "back"}') > 0 AS enqueued;
ROLLBACK;
BEGIN;
SELECT broker.enqueue('eq', '{"committed": true}') > 0 AS enqueued;
SAVEPOINT s;
SELECT broker.enqueue('eq', '{"savepoint": "rolled back"}') > 0 AS enqueued;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT payload FROM broker.dequeue('eq', 10);
SELECT broker.purge_queue('eq');

-- batches: ids in array order, all or nothing
SELECT array_agg(id) AS ids FROM broker.enqueue_batch('eq',
    ARRAY['{"i": 1}', '{"i": 2}', '{"i": 3}']::jsonb[], headers => '{"b": 1}') AS id \gset
SELECT (SELECT array_agg(x ORDER BY x) FROM unnest(:'ids'::bigint[]) AS x) = :'ids'::bigint[] AS in_order;
SELECT payload, headers FROM broker.dequeue('eq', 10) ORDER BY id;
SELECT broker.purge_queue('eq');
SELECT regress.err($$SELECT broker.enqueue_batch('eq', ARRAY['{"i": 1}', NULL, '{"i": 3}']::jsonb[])$$);
SELECT regress.err($$SELECT broker.enqueue_batch('eq_small', ARRAY['{"a": 1}', '{"data": "0123456789!"}']::jsonb[])$$);
SELECT regress.err($$SELECT broker.enqueue_batch('eq', NULL)$$);
SELECT regress.err($$SELECT broker.enqueue_batch('eq', ARRAY['{}']::jsonb[], delay => '-1 s')$$);
SELECT total FROM broker.metrics('eq');
SELECT total FROM broker.metrics('eq_small');
SELECT count(*) FROM broker.enqueue_batch('eq', ARRAY[]::jsonb[]);
SELECT count(*) FROM broker.enqueue_batch('eq', (SELECT array_agg(jsonb_build_object('n', n)) FROM generate_series(1, 1000) n));
SELECT count(*), min((payload->>'n')::int), max((payload->>'n')::int) FROM broker.dequeue('eq', 1000);
SELECT broker.enqueue_batch('eq', ARRAY['{}']::jsonb[], delay => '1 hour', ttl => '2 hours') > 0 AS enqueued;
SELECT ready, delayed FROM broker.metrics('eq');

-- the ids a batch returns are the ids it stored, for any size (they were
-- read after SPI_finish had freed them: 357 distinct ids of 1000, then a
-- crash with a 100,000 then a 1,000,000 batch)
SELECT broker.purge_queue('eq');
CREATE TEMP TABLE batch_ids AS
    SELECT x AS id FROM broker.enqueue_batch('eq', array_fill('{}'::jsonb, ARRAY[1000])) x;
SELECT count(*), count(DISTINCT id) FROM batch_ids;
SELECT (SELECT array_agg(id ORDER BY id) FROM batch_ids)
     = (SELECT array_agg(m.id ORDER BY m.id) FROM broker.messages m
          JOIN broker.queue_defs d USING (queue_id) WHERE d.name = 'eq') AS ids_are_stored_ids;
SELECT count(DISTINCT x) FROM broker.enqueue_batch('eq', array_fill('{}'::jsonb, ARRAY[100000])) x;
SELECT count(DISTINCT x) FROM broker.enqueue_batch('eq', array_fill('{}'::jsonb, ARRAY[300000])) x;
SELECT total FROM broker.metrics('eq');
SELECT broker.purge_queue('eq');

-- headers count against max_message_size (a 50 MB header was accepted by a
-- queue with a 100-byte limit): the limit covers payload and headers
SELECT regress.err($$SELECT broker.enqueue('eq_small', '{}', headers => jsonb_build_object('h', repeat('x', 100)))$$);
SELECT regress.err($$SELECT broker.enqueue('eq_small', '{}', headers => jsonb_build_object('h', repeat('x', 50000000)))$$);
SELECT regress.err($$SELECT broker.enqueue_batch('eq_small', ARRAY['{}', '{}']::jsonb[], headers => jsonb_build_object('h', repeat('x', 100)))$$);
SELECT broker.enqueue('eq_small', '{}', headers => '{}') > 0 AS fits;
SELECT total FROM broker.metrics('eq_small');

SELECT broker.drop_queue(q) FROM unnest(ARRAY['eq', 'eq_ttl', 'eq_small']) AS q;
