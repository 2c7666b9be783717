-- Priorities: 0 to 9, higher first, then lowest id first.
SELECT broker.create_queue('pq', lease => '1 hour');
CREATE FUNCTION pg_temp.take(q text, n int) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(payload->>'n', ' ' ORDER BY ord), '-')
      FROM broker.dequeue(q, n) WITH ORDINALITY AS d(id, payload, headers, enqueued_at,
                                                   delivery_count, vt, expires_at, receipt, ord)
$$;

SELECT regress.err($$SELECT broker.enqueue('pq', '{}', priority => -1)$$);
SELECT regress.err($$SELECT broker.enqueue('pq', '{}', priority => 10)$$);
SELECT regress.err($$SELECT broker.enqueue_batch('pq', ARRAY['{}']::jsonb[], priority => 2147483647)$$);
-- NULL is the default, 0
SELECT broker.enqueue('pq', '{"n": "null"}', priority => NULL) > 0 AS ok;
SELECT priority FROM broker.messages WHERE payload->>'n' = 'null';
SELECT broker.purge_queue('pq');

-- in this order: p0-1 p5-1 p9-1 p0-2 p5-2 p1-1 p9-2
SELECT count(broker.enqueue('pq', jsonb_build_object('n', 'p' || p || '-' || i), priority => p))
  FROM (VALUES (1, 0, 1), (2, 5, 1), (3, 9, 1), (4, 0, 2), (5, 5, 2), (6, 1, 1), (7, 9, 2)) v(o, p, i);
SELECT string_agg(payload->>'n', ' ' ORDER BY id) FROM broker.messages WHERE payload->>'n' LIKE 'p%';
SELECT pg_temp.take('pq', 3);
SELECT pg_temp.take('pq', 10);
SELECT broker.purge_queue('pq');

-- dequeue order is returned in priority order within one call
SELECT count(*) FROM broker.enqueue_batch('pq', ARRAY['{"n": "b0-1"}', '{"n": "b0-2"}']::jsonb[]);
SELECT count(*) FROM broker.enqueue_batch('pq', ARRAY['{"n": "b7-1"}', '{"n": "b7-2"}']::jsonb[], priority => 7);
SELECT broker.enqueue('pq', '{"n": "s3"}', priority => 3) > 0 AS ok;
SELECT pg_temp.take('pq', 10);

-- a released high-priority message comes first again
SELECT broker.release('pq', id, receipt) FROM broker.messages WHERE payload->>'n' = 'b7-2';
SELECT broker.release('pq', id, receipt) FROM broker.messages WHERE payload->>'n' = 'b0-1';
SELECT pg_temp.take('pq', 10);
SELECT ready, leased, total FROM broker.metrics('pq');
SELECT broker.purge_queue('pq');

-- delayed high priority does not block lower ones that are ready
SELECT broker.enqueue('pq', '{"n": "later9"}', priority => 9, delay => '1 hour') > 0 AS ok;
SELECT broker.enqueue('pq', '{"n": "now1"}', priority => 1) > 0 AS ok;
SELECT pg_temp.take('pq', 10);
SELECT broker.purge_queue('pq');

-- dead-lettered messages keep their priority
SELECT broker.create_queue('pq_dead');
SELECT broker.create_queue('pq_src', max_deliveries => 1, dead_letter_queue => 'pq_dead');
SELECT broker.enqueue('pq_src', '{"n": "hi"}', priority => 8) > 0 AS ok;
SELECT broker.enqueue('pq_src', '{"n": "lo"}') > 0 AS ok;
SELECT count(*) FROM broker.dequeue('pq_src', 10, '1 millisecond');
SELECT regress.wait_due('pq_src');
SELECT count(*) FROM broker.dequeue('pq_src', 10);
SELECT payload->>'n' AS n, priority FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = m.queue_id
 WHERE d.name = 'pq_dead' ORDER BY id;
SELECT pg_temp.take('pq_dead', 10);
SELECT broker.drop_queue('pq_src');
SELECT broker.drop_queue('pq_dead');

-- a high-priority message behind many deleted low ones
SELECT count(*) FROM broker.enqueue_batch('pq', (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, 200) g));
SELECT count(*) FROM broker.delete('pq', ARRAY(SELECT id FROM broker.dequeue('pq', 200)));
SELECT broker.enqueue('pq', '{"n": "top"}', priority => 9) > 0 AS ok;
SELECT pg_temp.take('pq', 10);
SELECT broker.drop_queue('pq');
