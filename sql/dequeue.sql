-- Consuming: dequeue, leases, redelivery, waiting.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('dq', lease => '1 minute');
SELECT count(*) FROM broker.enqueue_batch('dq',
    (SELECT array_agg(jsonb_build_object('n', n) ORDER BY n) FROM generate_series(1, 5) n));

-- lowest id first, at most max_messages, leased for the queue's lease
CREATE TEMP TABLE got AS
SELECT *, now() AS t_now, clock_timestamp() AS taken_by FROM broker.dequeue('dq', 2);
SELECT payload, delivery_count, receipt > 0 AS has_receipt,
       lease_until BETWEEN t_now + '1 minute' AND taken_by + '1 minute' AS queue_lease
  FROM got ORDER BY id;
-- an explicit lease
SELECT payload, lease_until BETWEEN now() + '10 minutes' AND clock_timestamp() + '10 minutes' AS lease_10min
  FROM broker.dequeue('dq', 1, lease => '10 minutes');
-- leased messages are not delivered again while the lease holds
SELECT array_agg(payload->>'n' ORDER BY id) AS rest FROM broker.dequeue('dq', 10);
SELECT count(*) AS nothing_left FROM broker.dequeue('dq', 10);
SELECT ready, leased, delayed, total FROM broker.metrics('dq');
SELECT broker.purge_queue('dq');

-- arguments
SELECT regress.err($$SELECT broker.dequeue('dq', 0)$$);
SELECT regress.err($$SELECT broker.dequeue('dq', 10001)$$);
SELECT regress.err($$SELECT broker.dequeue('dq', -1)$$);
SELECT regress.err($$SELECT broker.dequeue('dq', NULL)$$);
SELECT regress.err($$SELECT broker.dequeue('dq', 1, lease => '0')$$);
SELECT regress.err($$SELECT broker.dequeue('dq', 1, lease => '-1 s')$$);
SELECT regress.err($$SELECT broker.dequeue('dq', 1, wait => '-1 s')$$);
SELECT regress.err($$SELECT broker.dequeue('dq', 10000)$$);

-- a lease that runs out makes the message deliverable again, with a new receipt
SELECT broker.enqueue('dq', '{"m": "lease"}') AS id \gset
SELECT receipt AS r1, delivery_count AS c1 FROM broker.dequeue('dq', 1, lease => '1 second') \gset
SELECT count(*) AS while_leased FROM broker.dequeue('dq');
SELECT regress.wait_due('dq');
SELECT id = :id AS same, delivery_count, receipt <> :r1 AS new_receipt
  FROM broker.dequeue('dq', 1, lease => '100 ms');
SELECT regress.wait_due('dq');
SELECT delivery_count FROM broker.dequeue('dq');
SELECT broker.purge_queue('dq');

-- an aborted dequeue: deliverable again at once, delivery_count unchanged
SELECT broker.enqueue('dq', '{"m": "abort"}') > 0 AS enqueued;
BEGIN;
SELECT payload, delivery_count FROM broker.dequeue('dq');
ROLLBACK;
SELECT payload, delivery_count FROM broker.dequeue('dq');
SELECT broker.purge_queue('dq');
SELECT broker.enqueue('dq', '{"m": "savepoint"}') > 0 AS enqueued;
BEGIN;
SAVEPOINT s;
SELECT payload, delivery_count FROM broker.dequeue('dq');
ROLLBACK TO SAVEPOINT s;
SELECT payload, delivery_count FROM broker.dequeue('dq');
COMMIT;
SELECT count(*) AS held_after_commit FROM broker.dequeue('dq');
SELECT broker.purge_queue('dq');

-- expired messages are never delivered nor counted as ready
SELECT broker.enqueue('dq', '{"m": "expires"}', ttl => '100 ms') > 0 AS enqueued;
SELECT broker.enqueue('dq', '{"m": "stays"}') > 0 AS enqueued;
SELECT regress.wait_expired('dq');
SELECT ready, total FROM broker.metrics('dq');
SELECT payload FROM broker.dequeue('dq', 10);
SELECT broker.purge_queue('dq');

-- wait: returns empty at the end of the wait
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) FROM broker.dequeue('dq', 1, wait => '300 ms');
SELECT clock_timestamp() - :'t0'::timestamptz >= '300 ms' AS waited_it_out;
-- wait: a delayed message that becomes due during the wait is returned
SELECT broker.enqueue('dq', '{"m": "due"}', delay => '400 ms') > 0 AS enqueued;
SELECT clock_timestamp() AS t0 \gset
SELECT payload FROM broker.dequeue('dq', 1, wait => '5 s');
SELECT clock_timestamp() - :'t0'::timestamptz BETWEEN '300 ms' AND '3 s' AS woke_when_due;
-- wait: a message that is there is returned at once
SELECT broker.enqueue('dq', '{"m": "there"}') > 0 AS enqueued;
SELECT clock_timestamp() AS t0 \gset
SELECT payload FROM broker.dequeue('dq', 1, wait => '5 s');
SELECT clock_timestamp() - :'t0'::timestamptz < '1 s' AS at_once;
-- statement_timeout cancels a wait
SET statement_timeout = '200ms';
SELECT * FROM broker.dequeue('dq', 1, wait => '10 s');
RESET statement_timeout;

-- a queue's messages are its own
SELECT broker.create_queue('dq_other');
SELECT broker.enqueue('dq_other', '{"q": "other"}') > 0 AS enqueued;
SELECT count(*) AS from_dq FROM broker.dequeue('dq', 10);
SELECT payload FROM broker.dequeue('dq_other', 10);

-- a wait longer than WaitLatch's 24.8 days does not overflow into a
-- zero or negative timeout (a busy loop): the waiter sleeps, woken once
SELECT broker.purge_queue('dq');
SELECT wakeups AS w0 FROM broker.waiters('dq') \gset
SET statement_timeout = '300ms';
SELECT * FROM broker.dequeue('dq', 1, wait => '49 days 17:02:47.296');
SELECT * FROM broker.dequeue('dq', 1, wait => '30 days');
RESET statement_timeout;
SELECT wakeups - :w0 <= 4 AS slept FROM broker.waiters('dq');

-- repeated large dequeues in one transaction cost what they take, not
-- what the transaction already took (NOT (id = ANY(all leases so far))
-- made the eighth dequeue(q, 10000) take 34 s against 24 ms for the first)
SELECT count(*) FROM broker.enqueue_batch('dq', array_fill('{}'::jsonb, ARRAY[40000]));
BEGIN;
CREATE TEMP TABLE dq_times (n int, ms float8);
DO $$
DECLARE
    t timestamptz;
    got bigint;
BEGIN
    FOR i IN 1 .. 4 LOOP
        t := clock_timestamp();
        SELECT count(*) INTO got FROM broker.dequeue('dq', 10000);
        INSERT INTO dq_times VALUES (i, extract(epoch FROM clock_timestamp() - t) * 1000);
        IF got <> 10000 THEN RAISE EXCEPTION 'dequeue % got %', i, got; END IF;
    END LOOP;
END $$;
SELECT (SELECT ms FROM dq_times WHERE n = 4) < 20 * greatest((SELECT ms FROM dq_times WHERE n = 1), 5) AS linear;
SELECT count(*) AS none_left FROM broker.dequeue('dq', 10);
ROLLBACK;
SELECT ready FROM broker.metrics('dq');
SELECT broker.purge_queue('dq');

-- a read-only transaction (and a standby, see test/t/012) cannot consume:
-- 25006 with a message that says so, before anything is attempted
BEGIN TRANSACTION READ ONLY;
SELECT regress.err($$SELECT * FROM broker.dequeue('dq')$$);
SELECT regress.err($$SELECT broker.enqueue('dq', '{}')$$);
SELECT regress.err($$SELECT broker.delete('dq', 1)$$);
ROLLBACK;

SELECT broker.drop_queue(q) FROM unnest(ARRAY['dq', 'dq_other']) AS q;
