-- Ordered groups: messages that share a group key are delivered one at a
-- time, in id order; other groups and ungrouped messages in parallel.
SELECT broker.create_queue('gq', lease => '1 hour');

-- helper: the payloads' "n" of what one dequeue returns, in order
CREATE FUNCTION pg_temp.take(q text, n int, l interval DEFAULT NULL)
RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(payload->>'n', ' ' ORDER BY id), '-')
      FROM broker.dequeue(q, n, l)
$$;
-- helper: delete the message whose payload "n" is this
CREATE FUNCTION pg_temp.done(q text, n text) RETURNS boolean LANGUAGE sql AS $$
    SELECT broker.delete(q, id) FROM broker.messages m
     WHERE m.payload->>'n' = n AND abs(m.queue_id) = (SELECT queue_id FROM broker.queue_defs WHERE name = q)
$$;

-- keys: 1 to 255 bytes
SELECT regress.err($$SELECT broker.enqueue('gq', '{}', group_key => '')$$);
SELECT regress.err($$SELECT broker.enqueue('gq', '{}', group_key => repeat('g', 256))$$);
SELECT regress.err($$SELECT broker.enqueue('gq', '{}', group_key => repeat('é', 128))$$);
SELECT broker.enqueue('gq', '{"n": "max"}', group_key => repeat('g', 255)) > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "max2"}', group_key => repeat('é', 127)) > 0 AS ok;
SELECT broker.purge_queue('gq');

-- group a: a1 a2 a3, group b: b1 b2, and two ungrouped
SELECT broker.enqueue('gq', '{"n": "a1"}', group_key => 'a') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "b1"}', group_key => 'b') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "u1"}') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "a2"}', group_key => 'a') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "b2"}', group_key => 'b') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "a3"}', group_key => 'a') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "u2"}') > 0 AS ok;

-- the heads are the claimable rows, the others wait (queue id negated)
SELECT payload->>'n' AS n, sign(queue_id) AS s FROM broker.messages
 WHERE abs(queue_id) = (SELECT queue_id FROM broker.queue_defs WHERE name = 'gq') ORDER BY id;

-- waiting messages count as ready
SELECT ready, leased, delayed, total FROM broker.metrics('gq');

-- one dequeue returns at most one message per group
SELECT pg_temp.take('gq', 10);
-- while a1 and b1 are leased, nothing of a or b is deliverable
SELECT pg_temp.take('gq', 10);
SELECT ready, leased, total FROM broker.metrics('gq');

-- b1 leaves: b2 is next; a1 still holds a
SELECT pg_temp.done('gq', 'b1');
SELECT pg_temp.take('gq', 10);

-- a1 is released: a1 itself is a's next delivery, not a2
SELECT broker.release('gq', id, receipt) FROM broker.messages WHERE payload->>'n' = 'a1';
SELECT pg_temp.take('gq', 10);

-- a lease that runs out: the same message again
SELECT broker.extend_lease('gq', id, receipt, '10 milliseconds') IS NOT NULL AS shortened
  FROM broker.messages WHERE payload->>'n' = 'a1';
SELECT regress.wait_until($$SELECT vt < clock_timestamp() FROM broker.messages WHERE payload->>'n' = 'a1'$$);
SELECT pg_temp.take('gq', 10);

-- a rolled-back dequeue leaves the group as it was
SELECT pg_temp.done('gq', 'a1');
BEGIN;
SELECT pg_temp.take('gq', 10);
ROLLBACK;
SELECT pg_temp.take('gq', 10);
-- deleted with its receipt: the next one follows
SELECT broker.delete('gq', id, receipt) FROM broker.messages WHERE payload->>'n' = 'a2';
SELECT pg_temp.done('gq', 'b2');
SELECT pg_temp.take('gq', 10);
SELECT pg_temp.done('gq', 'a3');
SELECT total FROM broker.metrics('gq');

-- id order wins over priority within a group
SELECT broker.enqueue('gq', '{"n": "low"}', group_key => 'p', priority => 0) > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "high"}', group_key => 'p', priority => 9) > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "other"}', priority => 5) > 0 AS ok;
SELECT pg_temp.take('gq', 1);
SELECT pg_temp.take('gq', 1);
SELECT pg_temp.take('gq', 1);
SELECT pg_temp.done('gq', 'low');
SELECT pg_temp.take('gq', 1);
SELECT broker.purge_queue('gq');

-- a group whose oldest message is delayed waits for it
SELECT broker.enqueue('gq', '{"n": "d1"}', group_key => 'd', delay => '1 hour') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "d2"}', group_key => 'd') > 0 AS ok;
SELECT pg_temp.take('gq', 10);
SELECT ready, delayed, total FROM broker.metrics('gq');
SELECT broker.purge_queue('gq');

-- the head leaves in every way; the next one follows each time
SELECT broker.create_queue('gq_dlq');
SELECT broker.create_queue('gq_md', lease => '1 hour', max_deliveries => 1, dead_letter_queue => 'gq_dlq');
SELECT broker.enqueue('gq_md', jsonb_build_object('n', 'm' || g), group_key => 'm') > 0 AS ok
  FROM generate_series(1, 3) g;
SELECT pg_temp.take('gq_md', 10, '10 milliseconds');
SELECT regress.wait_due('gq_md');
-- m1 was delivered max_deliveries times: dead-lettered by this dequeue, m2 delivered
SELECT pg_temp.take('gq_md', 10);
SELECT payload->>'n' AS n, headers FROM broker.dequeue('gq_dlq', 10);
-- delete by ids[] (the head among them)
SELECT count(*) FROM broker.delete('gq_md', ARRAY(SELECT id FROM broker.messages WHERE payload->>'n' = 'm2'));
SELECT pg_temp.take('gq_md', 10);
SELECT broker.drop_queue('gq_md');
SELECT broker.drop_queue('gq_dlq');

-- expiry of a head hands the group on; waiting messages that expired on
-- the way are removed in the same pass
SELECT broker.enqueue('gq', '{"n": "e1"}', group_key => 'e', ttl => '1 millisecond') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "e2"}', group_key => 'e', ttl => '1 millisecond') > 0 AS ok;
SELECT broker.enqueue('gq', '{"n": "e3"}', group_key => 'e') > 0 AS ok;
SELECT regress.wait_until($$SELECT count(*) = 2 FROM broker.messages WHERE expires_at < clock_timestamp() AND group_key = 'e'$$);
SELECT broker.reap('gq') AS expired;
SELECT pg_temp.take('gq', 10);
SELECT expired_total FROM broker.metrics('gq');
SELECT broker.purge_queue('gq');

-- deleting a waiting message by id leaves the head alone
SELECT broker.enqueue('gq', jsonb_build_object('n', 'w' || g), group_key => 'w') > 0 AS ok
  FROM generate_series(1, 3) g;
SELECT pg_temp.done('gq', 'w2');
SELECT pg_temp.take('gq', 10);
SELECT pg_temp.done('gq', 'w1');
SELECT pg_temp.take('gq', 10);
SELECT broker.purge_queue('gq');

-- batches: group_keys has one key per payload (NULL: none)
SELECT regress.err($$SELECT broker.enqueue_batch('gq', ARRAY['{}', '{}']::jsonb[], group_keys => ARRAY['a'])$$);
SELECT regress.err($$SELECT broker.enqueue_batch('gq', ARRAY['{}']::jsonb[], group_keys => ARRAY['a', 'b'])$$);
SELECT regress.err($$SELECT broker.enqueue_batch('gq', ARRAY['{}']::jsonb[], group_keys => ARRAY[''])$$);
SELECT regress.err($$SELECT broker.enqueue_batch('gq', ARRAY['{}', '{}']::jsonb[], group_keys => ARRAY[['a'], ['b']])$$);
SELECT count(*) FROM broker.enqueue_batch('gq',
    ARRAY['{"n": "x1"}', '{"n": "y1"}', '{"n": "x2"}', '{"n": "n1"}', '{"n": "y2"}', '{"n": "x3"}']::jsonb[],
    group_keys => ARRAY['x', 'y', 'x', NULL, 'y', 'x']);
SELECT pg_temp.take('gq', 10);
-- a batch adds behind an existing head
SELECT count(*) FROM broker.enqueue_batch('gq', ARRAY['{"n": "x4"}', '{"n": "z1"}']::jsonb[],
    group_keys => ARRAY['x', 'z']);
SELECT pg_temp.take('gq', 10);
SELECT pg_temp.done('gq', 'x1');
SELECT pg_temp.take('gq', 10);
SELECT broker.purge_queue('gq');

-- purge empties groups; a new message starts a group afresh
SELECT broker.enqueue('gq', '{"n": "after"}', group_key => 'x') > 0 AS ok;
SELECT pg_temp.take('gq', 10);

-- the same key in another queue is another group
SELECT broker.create_queue('gq2');
SELECT broker.enqueue('gq2', '{"n": "other-queue"}', group_key => 'x') > 0 AS ok;
SELECT pg_temp.take('gq2', 10);
SELECT broker.drop_queue('gq2');
SELECT broker.drop_queue('gq');

-- the head hands on however it leaves: complete, fail (a queue with
-- retention), and a drop at max_deliveries without a dead-letter queue
SELECT broker.create_queue('gq_jobs', retention => '1 hour');
SELECT count(broker.enqueue('gq_jobs', jsonb_build_object('n', 'j' || g), group_key => 'j'))
  FROM generate_series(1, 3) g;
SELECT bool_and(broker.complete('gq_jobs', d.id, d.receipt, '{"ok": true}')) AS completed,
       count(*) AS taken
  FROM broker.dequeue('gq_jobs', 10) d;
SELECT bool_and(broker.fail('gq_jobs', d.id, d.receipt, '{"error": "x"}')) AS failed,
       string_agg(d.payload->>'n', ' ') AS taken
  FROM broker.dequeue('gq_jobs', 10) d;
SELECT pg_temp.take('gq_jobs', 10);
SELECT broker.drop_queue('gq_jobs');

SELECT broker.create_queue('gq_max', lease => '1 hour', max_deliveries => 1);
SELECT count(broker.enqueue('gq_max', jsonb_build_object('n', 'm' || g), group_key => 'm'))
  FROM generate_series(1, 2) g;
SELECT pg_temp.take('gq_max', 10, '1 millisecond');
SELECT regress.wait_due('gq_max');
-- m1 is dropped by the next dequeue; m2 comes in that call or the next
CREATE TEMP TABLE gm AS SELECT payload->>'n' AS n FROM broker.dequeue('gq_max', 10);
INSERT INTO gm SELECT payload->>'n' FROM broker.dequeue('gq_max', 10);
SELECT string_agg(n, ' ' ORDER BY n) FROM gm;
SELECT total FROM broker.metrics('gq_max');
SELECT broker.drop_queue('gq_max');
