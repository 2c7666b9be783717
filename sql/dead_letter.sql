-- Dead-lettering: max_deliveries and dead_letter_queue.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('dlq');
SELECT broker.create_queue('work', max_deliveries => 2, dead_letter_queue => 'dlq');
SELECT broker.enqueue('work', '{"job": 1}', headers => '{"h": "v"}') AS id \gset

SELECT delivery_count FROM broker.dequeue('work', 1, lease => '50 ms');
SELECT regress.wait_due('work');
SELECT delivery_count FROM broker.dequeue('work', 1, lease => '50 ms');
SELECT regress.wait_due('work');
-- delivered max_deliveries times: not delivered again, moved to the DLQ
SELECT count(*) AS third_delivery FROM broker.dequeue('work');
SELECT total FROM broker.metrics('work');
SELECT id <> :id AS new_id, payload, headers, delivery_count FROM broker.dequeue('dlq');
SELECT dead_lettered_total FROM broker.metrics('work');
SELECT broker.purge_queue('dlq');

-- a dead-lettered message does not take a place in the batch
SELECT broker.enqueue('work', '{"job": "old"}') > 0 AS enqueued;
SELECT count(*) FROM broker.dequeue('work', 1, lease => '50 ms');
SELECT regress.wait_due('work');
SELECT count(*) FROM broker.dequeue('work', 1, lease => '50 ms');
SELECT regress.wait_due('work');
SELECT broker.enqueue('work', '{"job": "new"}') > 0 AS enqueued;
SELECT payload, delivery_count FROM broker.dequeue('work', 1);
SELECT payload FROM broker.dequeue('dlq');

-- dead-lettering is part of the transaction
SELECT broker.purge_queue('work');
SELECT broker.purge_queue('dlq');
SELECT broker.enqueue('work', '{"job": "abort"}') > 0 AS enqueued;
SELECT count(*) FROM broker.dequeue('work', 1, lease => '10 ms');
SELECT regress.wait_due('work');
SELECT count(*) FROM broker.dequeue('work', 1, lease => '10 ms');
SELECT regress.wait_due('work');
BEGIN;
SELECT count(*) AS delivered FROM broker.dequeue('work');
SELECT total FROM broker.metrics('dlq');
ROLLBACK;
SELECT total AS still_in_work FROM broker.metrics('work');
SELECT total AS not_in_dlq FROM broker.metrics('dlq');

-- without a dead-letter queue an exhausted message is dropped
SELECT broker.create_queue('once', max_deliveries => 1);
SELECT broker.enqueue('once', '{"job": "x"}') > 0 AS enqueued;
SELECT delivery_count FROM broker.dequeue('once', 1, lease => '10 ms');
SELECT regress.wait_due('once');
SELECT count(*) FROM broker.dequeue('once');
SELECT total, dead_lettered_total FROM broker.metrics('once');

SELECT broker.drop_queue(q) FROM unnest(ARRAY['work', 'dlq', 'once']) AS q;
