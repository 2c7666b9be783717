-- W4: PGMQ's send_batch: one INSERT of unnest(messages) returning the ids
WITH i AS (INSERT INTO pgmq_q (vt, message)
           SELECT clock_timestamp(), unnest(ARRAY(SELECT jsonb_build_object('n', g, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') FROM generate_series(1, 100) g))
           RETURNING msg_id)
SELECT count(*) FROM i;
