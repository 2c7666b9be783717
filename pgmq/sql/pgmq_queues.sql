-- broker_pgmq: queues (create*, drop_queue, purge_queue, list_queues,
\set SHOW_CONTEXT never
-- metrics, metrics_all)

-- create is idempotent, as in PGMQ; every form makes a broker queue
SELECT pgmq.create('q_plain');
SELECT pgmq.create('q_plain');
SELECT pgmq.create_non_partitioned('q_nonpart');
SELECT pgmq.create_unlogged('q_unlogged');
SELECT pgmq.create_partitioned('q_part', '10000', '100000');
SELECT pgmq.create('MixedCase');   -- names are lowercased, as PGMQ's tables are
SELECT queue, lease, max_lease, retention FROM broker.queues ORDER BY queue;

-- the columns clients read (pgmq-js: the first four of list_queues)
SELECT queue_name, is_partitioned, is_unlogged, created_at IS NOT NULL AS has_created_at
  FROM pgmq.list_queues() ORDER BY queue_name;
SELECT pg_typeof(l) AS list_queues_type, pg_typeof(l.queue_name) AS name_type
  FROM pgmq.list_queues() l LIMIT 1;
SELECT queue_name FROM pgmq.meta ORDER BY 1;

-- broker's name rule: a-z, 0-9 and _, at most 48, no leading digit
SELECT pgmq.create('my-queue');
SELECT pgmq.create('1queue');
SELECT pgmq.create(NULL);

-- metrics: one row of pgmq.metrics_result
SELECT * FROM pgmq.send_batch('q_plain', ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[]);
SELECT * FROM pgmq.send('q_plain', '{"n": 4}', 3600);
SELECT count(*) FROM pgmq.read('q_plain', 60, 1);
SELECT queue_name, queue_length, queue_visible_length, total_messages,
       newest_msg_age_sec BETWEEN 0 AND 5 AS newest_ok,
       oldest_msg_age_sec BETWEEN 0 AND 5 AS oldest_ok,
       scrape_time BETWEEN now() AND clock_timestamp() AS scrape_ok
  FROM pgmq.metrics('q_plain');
SELECT pg_typeof(m) FROM pgmq.metrics('q_plain') m;
SELECT queue_name, queue_length, queue_visible_length, total_messages
  FROM pgmq.metrics_all() ORDER BY queue_name;
SELECT * FROM pgmq.metrics('nosuch');

-- purge: the messages go, the queue stays
SELECT pgmq.purge_queue('q_plain');
SELECT queue_length FROM pgmq.metrics('q_plain');

-- drop: true, then false with a notice (PGMQ returns false too)
SELECT pgmq.drop_queue('q_nonpart');
SELECT pgmq.drop_queue('q_nonpart');
SELECT pgmq.drop_queue('q_part', true);   -- deprecated form
SELECT pgmq.detach_archive('q_plain');    -- a no-op, as in PGMQ 1.11
SELECT queue_name FROM pgmq.list_queues() ORDER BY 1;
SELECT pgmq.drop_queue('mixedcase'), pgmq.drop_queue('q_unlogged'), pgmq.drop_queue('q_plain');
