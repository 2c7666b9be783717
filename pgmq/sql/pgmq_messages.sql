-- broker_pgmq: sending, reading, deleting, archiving, visibility timeouts
\set SHOW_CONTEXT never
SELECT pgmq.create('m');

-- send: every PGMQ form; the result column is named send
SELECT send > 0 AS sent FROM pgmq.send('m', '{"form": "msg"}');
SELECT send AS first FROM pgmq.send('m', '{"form": "headers"}', '{"trace": "t1"}'::jsonb) \gset
SELECT send = :first + 1 AS next_id FROM pgmq.send('m', '{"form": "delay int"}', 3600);
SELECT count(*) FROM pgmq.send('m', '{"form": "delay timestamptz"}', now() + interval '2 hours');
SELECT count(*) FROM pgmq.send('m', '{"form": "headers, delay int"}', '{"trace": "t2"}', 3600);
SELECT count(*) FROM pgmq.send('m', '{"form": "headers, delay ts"}', '{"trace": "t3"}', now() + interval '2 hours');
-- untyped third argument: headers (JSON), or a delay (seconds or a timestamp)
SELECT count(*) FROM pgmq.send('m', '{"form": "text headers"}', '{"trace": "t4"}');
SELECT count(*) FROM pgmq.send('m', '{"form": "text delay"}', '3600');
SELECT count(*) FROM pgmq.send('m', '{"form": "text ts"}', '2999-01-01 00:00:00+00');
SELECT count(*) FROM pgmq.send('m', '{"form": "text delay, headers"}', '{"trace": "t5"}', '3600');
-- a negative delay or a past time means now (PGMQ sets vt in the past)
SELECT count(*) FROM pgmq.send('m', '{"form": "negative"}', -5);
SELECT count(*) FROM pgmq.send('m', '{"form": "past"}', now() - interval '1 day');
SELECT pgmq.send('m', '{}', 'soon');
SELECT pgmq.send('m', NULL);   -- broker refuses a NULL message (PGMQ stores it)
SELECT message ->> 'form' AS form, headers,
       vt > clock_timestamp() + interval '50 minutes' AS delayed
  FROM pgmq.q_m ORDER BY msg_id;

-- send_batch: every form; ids in array order
SELECT pgmq.purge_queue('m');
SELECT array_agg(send_batch ORDER BY send_batch) = array_agg(send_batch) AS in_order, count(*)
  FROM pgmq.send_batch('m', ARRAY['{"b": 1}', '{"b": 2}', '{"b": 3}']::jsonb[]);
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 4}', '{"b": 5}']::jsonb[],
                                     ARRAY['{"h": 4}', '{"h": 5}']::jsonb[]);
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 6}']::jsonb[], 3600);
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 7}']::jsonb[], now() + interval '2 hours');
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 8}', '{"b": 9}']::jsonb[],
                                     ARRAY['{"h": 8}', '{"h": 8}']::jsonb[], 3600);
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 10}']::jsonb[],
                                     ARRAY['{"h": 10}']::jsonb[], now() + interval '2 hours');
-- untyped third argument: an array literal or a JSON array of headers, or a delay
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 11}', '{"b": 12}']::jsonb[],
                                     '{"{\"h\": 11}","{\"h\": 12}"}');
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 13}', '{"b": 14}']::jsonb[],
                                     '[{"h": 13}, {"h": 14}]');
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 15}']::jsonb[], '3600');
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"b": 16}']::jsonb[], ARRAY['{"h": 16}']::jsonb[], '3600');
SELECT pgmq.send_batch('m', ARRAY['{"b": 0}', '{"b": 0}']::jsonb[], ARRAY['{"h": 0}']::jsonb[]);
SELECT count(*) FROM pgmq.send_batch('m', ARRAY[]::jsonb[]);
SELECT message ->> 'b' AS b, headers,
       vt > clock_timestamp() + interval '50 minutes' AS delayed
  FROM pgmq.q_m ORDER BY msg_id;

-- read: a lease of vt seconds (broker.dequeue); message_record as in 1.11
SELECT pgmq.purge_queue('m');
SELECT send AS first FROM pgmq.send('m', '{"r": 1}', '{"k": 1}'::jsonb) \gset
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"r": 2}', '{"r": 3}', '{"r": 4}']::jsonb[]);
SELECT msg_id - :first AS n, read_ct, message, headers,
       vt BETWEEN clock_timestamp() + interval '25 seconds' AND clock_timestamp() + interval '30 seconds' AS vt_30s,
       last_read_at BETWEEN now() AND clock_timestamp() AS read_now,
       enqueued_at < last_read_at AS enqueued_before
  FROM pgmq.read('m', 30, 2);
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'pgmq.message_record'::regclass AND attnum > 0 ORDER BY attnum;
-- vt 0: visible again at once, read_ct counts
SELECT msg_id - :first AS n, read_ct, vt <= clock_timestamp() AS visible FROM pgmq.read('m', 0, 1);
SELECT msg_id - :first AS n, read_ct FROM pgmq.read('m', 0, 1);
-- a conditional is not supported
SELECT * FROM pgmq.read('m', 30, 1, '{"r": 4}');
SELECT count(*) FROM pgmq.read('m', 30, 1, '{}');
SELECT * FROM pgmq.read('m', 30, 0);
-- a vt longer than the queue's max_lease (7 days for queues made by pgmq.create)
SELECT * FROM pgmq.read('m', 8 * 86400, 1);
SELECT msg_id - :first AS n, read_ct, vt > clock_timestamp() AS leased FROM pgmq.q_m ORDER BY msg_id;

-- read_with_poll: waits for a message (broker's event-driven wait); the
-- delayed message becomes visible after about one second
SELECT pgmq.purge_queue('m');
SELECT count(*) FROM pgmq.send('m', '{"p": 1}', 1);
SELECT clock_timestamp() AS t0 \gset
SELECT message FROM pgmq.read_with_poll('m', 30, 5, 10, 100);
SELECT clock_timestamp() - :'t0' BETWEEN interval '0.5 s' AND interval '8 s' AS waited_for_the_delay;
-- nothing comes: empty after max_poll_seconds
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) FROM pgmq.read_with_poll('m', 30, 1, 1);
SELECT clock_timestamp() - :'t0' BETWEEN interval '0.9 s' AND interval '8 s' AS waited_one_second;
-- a send by another session wakes the waiter: see test/t/023_pgmq.pl

-- pop: taken and deleted at once; read_ct as stored
SELECT pgmq.purge_queue('m');
SELECT send AS first FROM pgmq.send('m', '{"o": 1}') \gset
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"o": 2}', '{"o": 3}', '{"o": 4}']::jsonb[]);
SELECT msg_id - :first AS n, read_ct, message, last_read_at FROM pgmq.pop('m');
SELECT msg_id - :first AS n, read_ct, message FROM pgmq.pop('m', 2);
SELECT count(*) AS left FROM pgmq.q_m;
SELECT count(*) FROM pgmq.read('m', 0, 1);
SELECT msg_id - :first AS n, read_ct FROM pgmq.pop('m');
SELECT count(*) FROM pgmq.pop('m');

-- delete: by id, without a receipt; the result columns are named delete
SELECT send AS first FROM pgmq.send('m', '{"d": 1}') \gset
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"d": 2}', '{"d": 3}', '{"d": 4}']::jsonb[]);
SELECT count(*) FROM pgmq.read('m', 30, 1);      -- leased: delete still removes it
SELECT pgmq.delete('m', :first::bigint);
SELECT pgmq.delete('m', :first::bigint);
SELECT delete - :first AS n FROM pgmq.delete('m', ARRAY[:first + 1, :first + 2, 999999999]::bigint[]) ORDER BY 1;
SELECT pgmq.delete('m', (:first + 3)::text);     -- the form an untyped id resolves to
SELECT pgmq.delete('m', '{1,2}');
SELECT pgmq.delete('m', NULL::bigint);           -- broker refuses a NULL id
SELECT pgmq.delete('nosuch', 1::bigint);

-- archive: out of the queue, into pgmq.a_<queue>
SELECT send AS first FROM pgmq.send('m', '{"a": 1}', '{"k": "v"}'::jsonb) \gset
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"a": 2}', '{"a": 3}', '{"a": 4}']::jsonb[]);
SELECT count(*) FROM pgmq.read('m', 0, 1);
SELECT pgmq.archive('m', :first::bigint);
SELECT pgmq.archive('m', :first::bigint);
SELECT archive - :first AS n FROM pgmq.archive('m', ARRAY[:first + 1, :first + 2, 999999999]::bigint[]) ORDER BY 1;
SELECT pgmq.archive('m', (:first + 3)::text);
SELECT msg_id - :first AS n, read_ct, message, headers, last_read_at,
       archived_at > clock_timestamp() - interval '1 minute' AS archived_now
  FROM pgmq.a_m ORDER BY msg_id;
SELECT count(*) AS left FROM pgmq.q_m;
-- archive in a transaction that rolls back: the message stays, no archive row
BEGIN;
SELECT send AS first FROM pgmq.send('m', '{"a": 5}') \gset
COMMIT;
BEGIN;
SELECT pgmq.archive('m', :first::bigint);
ROLLBACK;
SELECT count(*) AS in_queue FROM pgmq.q_m;
SELECT count(*) AS archived FROM pgmq.a_m;
-- users may clean their archive through the view
DELETE FROM pgmq.a_m WHERE message = '{"a": 1}';
SELECT count(*) AS archived FROM pgmq.a_m;

-- set_vt: on a message under a read's lease
SELECT pgmq.purge_queue('m');
SELECT send AS first FROM pgmq.send('m', '{"v": 1}') \gset
SELECT count(*) FROM pgmq.send_batch('m', ARRAY['{"v": 2}', '{"v": 3}']::jsonb[]);
SELECT count(*) FROM pgmq.read('m', 30, 3);
SELECT msg_id - :first AS n, read_ct, message,
       vt BETWEEN clock_timestamp() + interval '55 s' AND clock_timestamp() + interval '60 s' AS vt_60s
  FROM pgmq.set_vt('m', :first::bigint, 60);
SELECT msg_id - :first AS n, vt BETWEEN now() + interval '1 hour' AND clock_timestamp() + interval '1 hour' AS vt_1h
  FROM pgmq.set_vt('m', (:first + 1)::bigint, now() + interval '1 hour');
-- 0 (or a past time): visible at once (broker.release)
SELECT msg_id - :first AS n, vt <= clock_timestamp() AS visible FROM pgmq.set_vt('m', (:first + 2)::bigint, 0);
SELECT msg_id - :first AS n, vt > clock_timestamp() AS leased FROM pgmq.q_m ORDER BY msg_id;
-- released: no lease any more; visible already and asked for now: returned as is
SELECT msg_id - :first AS n FROM pgmq.set_vt('m', (:first + 2)::bigint, 0);
\set VERBOSITY terse
SELECT * FROM pgmq.set_vt('m', (:first + 2)::bigint, 30);
\set VERBOSITY default
-- arrays
SELECT msg_id - :first AS n FROM pgmq.set_vt('m', ARRAY[:first, :first + 1]::bigint[], 120) ORDER BY 1;
SELECT msg_id - :first AS n FROM pgmq.set_vt('m', ARRAY[:first, :first + 1]::bigint[], now() + interval '3 minutes') ORDER BY 1;
-- untyped vt and ids
SELECT msg_id - :first AS n FROM pgmq.set_vt('m', :first::bigint, '30');
SELECT msg_id - :first AS n FROM pgmq.set_vt('m', (:first)::text, (now() + interval '5 minutes')::text);
SELECT * FROM pgmq.set_vt('m', :first::bigint, 'later');
SELECT * FROM pgmq.set_vt('m', 999999999::bigint, 30);
SELECT * FROM pgmq.set_vt('m', :first::bigint, NULL::integer);
-- a vt longer than the queue's max_lease
SELECT * FROM pgmq.set_vt('m', :first::bigint, 8 * 86400);
-- in the transaction that read the message (broker writes the lease at
-- commit): set_vt uses the receipt of that read
SELECT pgmq.purge_queue('m');
SELECT send AS first FROM pgmq.send('m', '{"v": 4}') \gset
BEGIN;
SELECT msg_id - :first AS n, read_ct FROM pgmq.read('m', 10, 1);
SELECT msg_id - :first AS n, vt > clock_timestamp() + interval '50 s' AS vt_60s FROM pgmq.set_vt('m', :first::bigint, 60);
COMMIT;
SELECT msg_id - :first AS n, read_ct, vt > clock_timestamp() + interval '50 s' AS vt_60s FROM pgmq.q_m;
SELECT current_setting('broker_pgmq.receipts', true) AS receipts_after_commit;

-- transactional send: a rollback sends nothing
BEGIN;
SELECT count(*) FROM pgmq.send('m', '{"rolled": "back"}');
ROLLBACK;
SELECT count(*) FROM pgmq.q_m WHERE message ? 'rolled';
SELECT pgmq.drop_queue('m');
