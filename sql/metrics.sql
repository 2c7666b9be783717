-- Observing: broker.metrics.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('m1');
SELECT broker.create_queue('m2');

SELECT * FROM broker.metrics('m1');
SELECT queue FROM broker.metrics() WHERE queue IN ('m1', 'm2') ORDER BY queue;

SELECT count(*) FROM broker.enqueue_batch('m1', ARRAY['{}', '{}', '{}', '{}', '{}']::jsonb[]);
SELECT broker.enqueue('m1', '{}', delay => '1 hour') > 0 AS enqueued;
SELECT broker.enqueue('m1', '{}', ttl => '10 ms') > 0 AS enqueued;
SELECT regress.wait_expired('m1');
SELECT count(*) FROM broker.dequeue('m1', 2);
SELECT queue, ready, leased, delayed, total, oldest_ready_age > '0' AS has_age,
       enqueued_total, deleted_total, expired_total, dead_lettered_total
  FROM broker.metrics('m1');

-- counters move with committed work only
SELECT count(*) AS acked FROM broker.delete('m1', ARRAY(SELECT id FROM broker.messages WHERE receipt IS NOT NULL));
BEGIN;
SELECT broker.enqueue('m1', '{}') > 0 AS enqueued;
SELECT count(*) FROM broker.delete('m1', ARRAY(SELECT id FROM broker.messages ORDER BY id LIMIT 1));
ROLLBACK;
BEGIN;
SELECT broker.enqueue('m1', '{}') > 0 AS enqueued;
SAVEPOINT a;
SELECT broker.enqueue('m1', '{}') > 0 AS enqueued;
ROLLBACK TO SAVEPOINT a;
SAVEPOINT b;
SELECT broker.enqueue('m1', '{}') > 0 AS enqueued;
RELEASE SAVEPOINT b;
COMMIT;
SELECT ready, leased, delayed, total, enqueued_total, deleted_total FROM broker.metrics('m1');
SELECT ready, total, enqueued_total FROM broker.metrics('m2');
SELECT broker.purge_queue('m1');
SELECT ready, total, oldest_ready_age IS NULL AS no_age FROM broker.metrics('m1');

SELECT broker.drop_queue(q) FROM unnest(ARRAY['m1', 'm2']) AS q;
SELECT count(*) FROM broker.metrics() WHERE queue IN ('m1', 'm2');
