-- W4: 100 messages in one call
SELECT count(*) FROM broker.enqueue_batch('bench', ARRAY(SELECT jsonb_build_object('n', g, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') FROM generate_series(1, 100) g));
