-- Segments: producers insert into the current segment; maintenance
-- rotates when it is full and empties drained segments with TRUNCATE;
-- messages are found, in order, whatever their segment.
CREATE EXTENSION IF NOT EXISTS broker;
SET broker.segment_size = 100;
SELECT broker.create_queue('sg', lease => '1 hour');

CREATE FUNCTION pg_temp.seg() RETURNS TABLE(segment int, current boolean, drained boolean, small boolean)
LANGUAGE sql AS $$
    SELECT segment, current, drained, bytes <= 5 * 8192 FROM broker.maintain_segments() ORDER BY segment
$$;
CREATE FUNCTION pg_temp.rows() RETURNS TABLE(s0 bigint, s1 bigint, s2 bigint, s3 bigint)
LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM broker.messages_0), (SELECT count(*) FROM broker.messages_1),
           (SELECT count(*) FROM broker.messages_2), (SELECT count(*) FROM broker.messages_3)
$$;

-- empty segments that are not current are drained
SELECT broker.purge_queue('sg');
SELECT * FROM pg_temp.seg();
SELECT * FROM pg_temp.seg();

-- fill the current segment past broker.segment_size: the next one takes over
SELECT count(*) FROM broker.enqueue_batch('sg', (SELECT array_agg(jsonb_build_object('n', g) ORDER BY g) FROM generate_series(1, 150) g));
SELECT segment, current FROM pg_temp.seg() WHERE current;
SELECT broker.enqueue('sg', '{"n": 151}') > 0 AS enqueued;
SELECT * FROM pg_temp.rows();

-- dequeue takes the oldest first, across segments
SELECT min((payload->>'n')::int), max((payload->>'n')::int), count(*) FROM broker.dequeue('sg', 140);
SELECT array_agg((payload->>'n')::int ORDER BY id) FROM broker.dequeue('sg', 5);
SELECT array_agg((payload->>'n')::int ORDER BY id) FROM broker.dequeue('sg', 20);

-- acknowledgements find the message in its segment
SELECT count(*) FROM broker.delete('sg', ARRAY(SELECT id FROM broker.messages WHERE (payload->>'n')::int <= 140));
SELECT count(*) FROM broker.delete('sg', ARRAY(SELECT id FROM broker.messages WHERE (payload->>'n')::int BETWEEN 141 AND 149));
SELECT broker.release('sg', id, receipt) FROM broker.messages WHERE payload->>'n' = '150';
SELECT broker.extend_lease('sg', id, receipt, '2 hours') > now() FROM broker.messages WHERE payload->>'n' = '151';
SELECT * FROM pg_temp.rows();

-- segment 0 holds one released message: not drained; when it is gone, it is
SELECT * FROM pg_temp.seg();
SELECT broker.delete('sg', id) FROM broker.messages WHERE payload->>'n' = '150';
SELECT * FROM pg_temp.seg();
SELECT * FROM pg_temp.rows();

-- a message under a long lease in the segment that must become current
-- next is moved, with its lease, receipt and delivery count
SELECT broker.enqueue('sg', '{"n": "stuck"}') > 0 AS enqueued;
CREATE TEMP TABLE stuck AS SELECT id, receipt, delivery_count FROM broker.dequeue('sg', 1) WHERE payload->>'n' = 'stuck';
SELECT broker.delete('sg', id) FROM broker.messages WHERE payload->>'n' = '151';
DO $$
BEGIN
    -- go round: every segment becomes current once more
    FOR i IN 1 .. 4 LOOP
        PERFORM broker.enqueue_batch('sg', (SELECT array_agg(jsonb_build_object('round', i)) FROM generate_series(1, 120)));
        PERFORM broker.delete('sg', ARRAY(SELECT id FROM broker.dequeue('sg', 1000)));
        PERFORM broker.maintain_segments();
        PERFORM broker.maintain_segments();
    END LOOP;
END $$;
SELECT count(*) AS left_over FROM broker.messages WHERE payload ? 'round';
-- it was in segment 1, and now lives in segment 0
SELECT * FROM pg_temp.rows();
SELECT m.id = s.id AS same_id, m.receipt = s.receipt AS same_receipt,
       m.delivery_count = s.delivery_count AS same_count, m.vt > now() AS still_leased
  FROM broker.messages m, stuck s WHERE m.payload->>'n' = 'stuck';
SELECT count(*) AS not_redelivered FROM broker.dequeue('sg', 10);
SELECT broker.delete('sg', s.id, s.receipt) AS deleted_with_its_receipt FROM stuck s;
SELECT total FROM broker.metrics('sg');

SELECT broker.drop_queue('sg');

-- expiry removes the expired messages of every segment and nothing else
-- (the expiry statement names its segment twice)
SELECT broker.create_queue('sg_live');
SELECT broker.create_queue('sg_ttl');
SELECT broker.create_queue('sg_fill');
DO $$
BEGIN
    FOR i IN 1 .. 4 LOOP
        -- at other places in each segment: i live, two expiring, 4 - i live
        PERFORM broker.enqueue('sg_live', jsonb_build_object('seg', i)) FROM generate_series(1, i);
        PERFORM broker.enqueue('sg_ttl', jsonb_build_object('seg', i), ttl => '1 millisecond') FROM generate_series(1, 2);
        PERFORM broker.enqueue('sg_live', jsonb_build_object('seg', i)) FROM generate_series(i + 1, 4);
        IF i < 4 THEN
            PERFORM broker.enqueue_batch('sg_fill', (SELECT array_agg(jsonb_build_object('f', g)) FROM generate_series(1, 110) g));
            PERFORM broker.purge_queue('sg_fill');
            PERFORM broker.maintain_segments();
            PERFORM broker.maintain_segments();
        END IF;
    END LOOP;
END $$;
-- four live and two expiring messages in each of the four segments
SELECT * FROM pg_temp.rows();
SELECT regress.wait_expired('sg_ttl');
SELECT broker.reap() AS expired;
SELECT * FROM pg_temp.rows();
SELECT queue, total, expired_total FROM broker.metrics() WHERE queue IN ('sg_live', 'sg_ttl') ORDER BY queue;
SELECT count(*) AS live_left FROM broker.dequeue('sg_live', 100);
SELECT broker.drop_queue(q) FROM unnest(ARRAY['sg_live', 'sg_ttl', 'sg_fill']) q;
RESET broker.segment_size;
