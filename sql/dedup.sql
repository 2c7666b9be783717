-- Deduplication keys: within the queue's dedup_window, an enqueue with a
-- key the queue accepted stores nothing and returns that message's id.
SELECT broker.create_queue('dq', lease => '1 hour');
SELECT dedup_window FROM broker.queues WHERE queue = 'dq';

-- dedup_window: positive, at most 10000 years
SELECT regress.err($$SELECT broker.create_queue('dq_bad', dedup_window => '0')$$);
SELECT regress.err($$SELECT broker.create_queue('dq_bad', dedup_window => '-1 second')$$);
SELECT regress.err($$SELECT broker.create_queue('dq_bad', dedup_window => NULL)$$);
SELECT regress.err($$SELECT broker.create_queue('dq_bad', dedup_window => '10001 years')$$);
SELECT broker.create_queue('dq_short', dedup_window => '200 milliseconds');
SELECT queue, dedup_window FROM broker.queues WHERE queue LIKE 'dq%' ORDER BY queue;

-- keys: 1 to 255 bytes
SELECT regress.err($$SELECT broker.enqueue('dq', '{}', dedup_key => '')$$);
SELECT regress.err($$SELECT broker.enqueue('dq', '{}', dedup_key => repeat('k', 256))$$);

CREATE TEMP TABLE first AS SELECT broker.enqueue('dq', '{"n": 1}', dedup_key => 'k1') AS id;
-- the same key: the same id, nothing stored
SELECT broker.enqueue('dq', '{"n": 2}', dedup_key => 'k1') = (SELECT id FROM first) AS same_id;
SELECT total, enqueued_total FROM broker.metrics('dq');
-- another key, or none: stored
SELECT broker.enqueue('dq', '{"n": 3}', dedup_key => 'k2') <> (SELECT id FROM first) AS new_id;
SELECT broker.enqueue('dq', '{"n": 4}') > 0 AS ok;
SELECT total, enqueued_total FROM broker.metrics('dq');

-- whatever became of the message: leased, deleted, purged
SELECT count(*) FROM broker.dequeue('dq', 10);
SELECT broker.enqueue('dq', '{"n": 5}', dedup_key => 'k1') = (SELECT id FROM first) AS same_while_leased;
SELECT broker.delete('dq', (SELECT id FROM first));
SELECT broker.enqueue('dq', '{"n": 6}', dedup_key => 'k1') = (SELECT id FROM first) AS same_after_delete;
SELECT broker.purge_queue('dq');
SELECT broker.enqueue('dq', '{"n": 7}', dedup_key => 'k1') = (SELECT id FROM first) AS same_after_purge;
SELECT total, enqueued_total FROM broker.metrics('dq');

-- the key is the queue's: another queue stores it
SELECT broker.enqueue('dq_short', '{"n": 8}', dedup_key => 'k1') <> (SELECT id FROM first) AS other_queue;

-- after the window the key is accepted again
CREATE TEMP TABLE short AS
SELECT a AS id, a = b AS within
  FROM (SELECT broker.enqueue('dq_short', '{"n": 9}', dedup_key => 'w') AS a,
               broker.enqueue('dq_short', '{"n": 10}', dedup_key => 'w') AS b) s;
SELECT within FROM short;
SELECT regress.wait_until($$SELECT clock_timestamp() > enqueued_at + '200 milliseconds'
                             FROM broker.messages WHERE payload->>'n' = '9'$$);
SELECT broker.enqueue('dq_short', '{"n": 11}', dedup_key => 'w') <> (SELECT id FROM short) AS after_window;
SELECT count(*) FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = m.queue_id
 WHERE d.name = 'dq_short';

-- a rolled-back enqueue leaves no key behind
BEGIN;
CREATE TEMP TABLE rolled AS SELECT broker.enqueue('dq', '{"n": 12}', dedup_key => 'rb') AS id;
ROLLBACK;
SELECT broker.enqueue('dq', '{"n": 13}', dedup_key => 'rb') > 0 AS stored;
SELECT count(*) FROM broker.messages WHERE payload->>'n' = '13';

-- a duplicate inside one transaction
BEGIN;
SELECT broker.enqueue('dq', '{"n": 14}', dedup_key => 'tx') = broker.enqueue('dq', '{"n": 15}', dedup_key => 'tx') AS same_in_tx;
COMMIT;
SELECT count(*) FROM broker.messages WHERE payload->>'n' IN ('14', '15');

-- batches: one key per payload; a repeated key gets its first occurrence's id
SELECT regress.err($$SELECT broker.enqueue_batch('dq', ARRAY['{}', '{}']::jsonb[], dedup_keys => ARRAY['a'])$$);
SELECT regress.err($$SELECT broker.enqueue_batch('dq', ARRAY['{}']::jsonb[], dedup_keys => ARRAY[repeat('x', 300)])$$);
SELECT broker.purge_queue('dq');
CREATE TEMP TABLE b AS
SELECT row_number() OVER () AS i, id FROM broker.enqueue_batch('dq',
    ARRAY['{"n": "b1"}', '{"n": "b2"}', '{"n": "b3"}', '{"n": "b4"}', '{"n": "b5"}']::jsonb[],
    dedup_keys => ARRAY['x', 'y', 'x', NULL, 'k1']) AS id;
SELECT count(*) AS ids, count(DISTINCT id) AS distinct_ids FROM b;
SELECT (SELECT id FROM b WHERE i = 1) = (SELECT id FROM b WHERE i = 3) AS repeat_same,
       (SELECT id FROM b WHERE i = 5) = (SELECT id FROM first) AS earlier_same;
SELECT string_agg(payload->>'n', ' ' ORDER BY id) AS stored FROM broker.messages
 WHERE payload->>'n' LIKE 'b%';
SELECT total FROM broker.metrics('dq');
-- the batch's keys were recorded: single enqueues see them
SELECT broker.enqueue('dq', '{"n": "y-again"}', dedup_key => 'y') = (SELECT id FROM b WHERE i = 2) AS batch_key_seen;
-- a batch that is all duplicates stores nothing and returns the ids
SELECT count(*), count(DISTINCT id) FROM broker.enqueue_batch('dq', ARRAY['{}', '{}']::jsonb[], dedup_keys => ARRAY['x', 'y']) AS id;
SELECT total FROM broker.metrics('dq');

-- dropping a queue forgets its keys: created again, it starts with none
SELECT broker.drop_queue('dq');
SELECT count(*) AS keys_left FROM (SELECT queue_id FROM broker.dedup_0 UNION ALL SELECT queue_id FROM broker.dedup_1) k
 WHERE k.queue_id NOT IN (SELECT queue_id FROM broker.queue_defs);
SELECT broker.create_queue('dq');
SELECT broker.enqueue('dq', '{"n": "new"}', dedup_key => 'k1') <> (SELECT id FROM first) AS fresh;
SELECT total, enqueued_total FROM broker.metrics('dq');

-- dead-lettered copies carry no key (the dead-letter queue accepts them all)
SELECT broker.create_queue('dq_dead');
SELECT broker.create_queue('dq_src', lease => '1 hour', max_deliveries => 1, dead_letter_queue => 'dq_dead');
SELECT broker.enqueue('dq_src', '{"n": "d"}', dedup_key => 'dk') > 0 AS ok;
SELECT count(*) FROM broker.dequeue('dq_src', 1, '1 millisecond');
SELECT regress.wait_due('dq_src');
SELECT count(*) FROM broker.dequeue('dq_src', 1);
SELECT payload FROM broker.dequeue('dq_dead', 1);
-- the source queue still has the key
SELECT broker.enqueue('dq_src', '{"n": "d2"}', dedup_key => 'dk') IS NOT NULL AS answered,
       (SELECT total FROM broker.metrics('dq_src')) AS src_total;

-- thousands of keys in one transaction take a bounded number of locks
-- (they share stripes), far from exhausting the lock table
BEGIN;
SELECT count(*) FROM broker.enqueue_batch('dq_src', array_fill('{}'::jsonb, ARRAY[10000]),
    group_keys => ARRAY(SELECT 'g' || g FROM generate_series(1, 10000) g),
    dedup_keys => ARRAY(SELECT 'many' || g FROM generate_series(1, 10000) g));
SELECT count(broker.enqueue('dq_src', '{}', dedup_key => 'one' || g, group_key => 'h' || g))
  FROM generate_series(1, 2000) g;
SELECT count(*) <= 2 * 256 AS bounded FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
COMMIT;
SELECT total FROM broker.metrics('dq_src');

-- expired, or dropped at max_deliveries without a dead-letter queue: the
-- key still answers with the first message's id, and nothing is stored
SELECT broker.create_queue('dq_gone', lease => '1 hour', max_deliveries => 1);
CREATE TEMP TABLE gone AS
SELECT 'expired' AS k, broker.enqueue('dq_gone', '{"n": "e"}', ttl => '1 millisecond', dedup_key => 'expired') AS id
UNION ALL
SELECT 'dropped', broker.enqueue('dq_gone', '{"n": "m"}', dedup_key => 'dropped');
SELECT regress.wait_expired('dq_gone');
SELECT count(*) FROM broker.dequeue('dq_gone', 10, '1 millisecond');
SELECT regress.wait_due('dq_gone');
SELECT count(*) FROM broker.dequeue('dq_gone', 10);
SELECT g.k, broker.enqueue('dq_gone', '{}', dedup_key => g.k) = g.id AS same_id
  FROM gone g ORDER BY g.k;
SELECT total, enqueued_total FROM broker.metrics('dq_gone');
SELECT broker.drop_queue('dq_gone');

-- a window longer than the time since the earliest timestamp (4714 BC) is
-- allowed (at most 10000 years) and covers every key, with no 22008
SELECT broker.create_queue('dq_long', dedup_window => '10000 years');
SELECT broker.enqueue('dq_long', '{"n": 1}', dedup_key => 'k') = broker.enqueue('dq_long', '{"n": 2}', dedup_key => 'k') AS same_id;
SELECT count(*) FROM broker.enqueue_batch('dq_long', ARRAY['{}', '{}']::jsonb[], dedup_keys => ARRAY['k', 'k2']);
SELECT total FROM broker.metrics('dq_long');
-- parts of opposite signs beyond the range of timestamps (a short length):
-- refused, like every interval setting and argument (22023)
SELECT regress.err($$SELECT broker.create_queue('dq_odd', dedup_window => '-71582788 months 2147483647 days')$$);
SELECT regress.err($$SELECT broker.create_queue('dq_odd', default_ttl => '-71582788 months 2147483647 days')$$);
SELECT regress.err($$SELECT broker.enqueue('dq_long', '{}', delay => '-71582788 months 2147483647 days')$$);
SELECT regress.err($$SELECT broker.enqueue('dq_long', '{}', ttl => '-2000 years 731000 days')$$);
-- a negative part within the bound is fine: 1 day - 1 hour
SELECT broker.enqueue('dq_long', '{}', ttl => '1 day -1 hour') > 0 AS ok;
SELECT broker.drop_queue('dq_long');

SELECT broker.drop_queue(q) FROM unnest(ARRAY['dq', 'dq_short', 'dq_src', 'dq_dead']) q;
