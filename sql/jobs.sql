-- Jobs: records of the messages that leave a queue with a retention,
-- status lookups by id, complete and fail, the archive.
SELECT broker.create_queue('jq', lease => '1 hour', retention => '1 day');
SELECT broker.create_queue('jq_plain', lease => '1 hour');
SELECT queue, retention FROM broker.queues WHERE queue LIKE 'jq%' ORDER BY queue;

-- retention: positive, at most 10000 years, NULL keeps none
SELECT regress.err($$SELECT broker.create_queue('jq_bad', retention => '0')$$);
SELECT regress.err($$SELECT broker.create_queue('jq_bad', retention => '-1 day')$$);
SELECT regress.err($$SELECT broker.create_queue('jq_bad', retention => '10001 years')$$);

CREATE FUNCTION pg_temp.st(q text, i bigint) RETURNS TABLE(state text, delivery_count int,
    visible_is text, finished boolean, payload jsonb, headers jsonb, result jsonb)
LANGUAGE sql AS $$
    SELECT s.state, s.delivery_count,
           CASE WHEN s.visible_at = s.enqueued_at THEN 'enqueued_at'
                WHEN s.visible_at > now() THEN 'future' ELSE 'past' END,
           s.finished_at IS NOT NULL, s.payload, s.headers, s.result
      FROM broker.status(q, i) s
$$;
CREATE TEMP TABLE ids (name text PRIMARY KEY, id bigint);
CREATE FUNCTION pg_temp.id(n text) RETURNS bigint LANGUAGE sql AS $$ SELECT id FROM ids WHERE name = n $$;

-- ready, delayed, leased, expired: while in the queue
INSERT INTO ids VALUES ('ready', broker.enqueue('jq', '{"job": "ready"}'));
INSERT INTO ids VALUES ('delayed', broker.enqueue('jq', '{"job": "delayed"}', delay => '1 hour'));
INSERT INTO ids VALUES ('expiring', broker.enqueue('jq', '{"job": "expiring"}', ttl => '1 millisecond'));
SELECT * FROM pg_temp.st('jq', pg_temp.id('ready'));
SELECT * FROM pg_temp.st('jq', pg_temp.id('delayed'));
SELECT regress.wait_until($$SELECT expires_at < clock_timestamp() FROM broker.messages WHERE payload->>'job' = 'expiring'$$);
SELECT state, finished_at = (SELECT expires_at FROM broker.messages WHERE payload->>'job' = 'expiring') AS at_expiry
  FROM broker.status('jq', pg_temp.id('expiring'));
CREATE TEMP TABLE lease AS SELECT id, receipt FROM broker.dequeue('jq', 1);
SELECT (SELECT id FROM lease) = pg_temp.id('ready') AS took_ready;
SELECT * FROM pg_temp.st('jq', pg_temp.id('ready'));

-- unknown ids, and ids of another queue: no row
SELECT count(*) FROM broker.status('jq', -1);
SELECT count(*) FROM broker.status('jq_plain', pg_temp.id('ready'));
SELECT regress.err($$SELECT * FROM broker.status('no_such', 1)$$);
SELECT regress.err($$SELECT * FROM broker.status('jq', NULL::bigint)$$);

-- complete: removes like delete (receipt rule), records done with the result
SELECT broker.complete('jq', pg_temp.id('ready'), 12345, '{"x": 1}');
SELECT broker.complete('jq', pg_temp.id('ready'), (SELECT receipt FROM lease), '{"answer": 42}');
SELECT broker.complete('jq', pg_temp.id('ready'), (SELECT receipt FROM lease), '{"again": true}');
SELECT * FROM pg_temp.st('jq', pg_temp.id('ready'));

-- a result over max_message_size: 54000, nothing changes
SELECT broker.create_queue('jq_small', max_message_size => 64, retention => '1 day');
INSERT INTO ids VALUES ('small', broker.enqueue('jq_small', '{}'));
SELECT regress.err(format($$SELECT broker.complete('jq_small', %s, NULL, jsonb_build_object('pad', repeat('x', 100)))$$, pg_temp.id('small')));
SELECT regress.err(format($$SELECT broker.fail('jq_small', %s, NULL, jsonb_build_object('pad', repeat('x', 100)))$$, pg_temp.id('small')));
SELECT regress.err(format($$SELECT broker.complete('jq_plain', %s, NULL, jsonb_build_object('pad', repeat('x', 5000)))$$, pg_temp.id('small')));
SELECT state FROM broker.status('jq_small', pg_temp.id('small'));

-- fail without a dead-letter queue: failed, error kept as the result
INSERT INTO ids VALUES ('failing', broker.enqueue('jq', '{"job": "failing"}'));
SELECT broker.fail('jq', pg_temp.id('failing'), NULL, '{"error": "boom"}');
SELECT * FROM pg_temp.st('jq', pg_temp.id('failing'));

-- delete: deleted
INSERT INTO ids VALUES ('deleted', broker.enqueue('jq', '{"job": "deleted"}', headers => '{"h": 1}'));
SELECT broker.delete('jq', pg_temp.id('deleted'));
SELECT * FROM pg_temp.st('jq', pg_temp.id('deleted'));

-- delete many: deleted
INSERT INTO ids VALUES ('many1', broker.enqueue('jq', '{"job": "many1"}'));
INSERT INTO ids VALUES ('many2', broker.enqueue('jq', '{"job": "many2"}'));
SELECT count(*) FROM broker.delete('jq', ARRAY[pg_temp.id('many1'), pg_temp.id('many2')]);
-- in id order, whatever the order asked
SELECT CASE id WHEN pg_temp.id('many1') THEN 'many1' WHEN pg_temp.id('many2') THEN 'many2' END AS which, state
  FROM broker.status('jq', ARRAY[pg_temp.id('many2'), pg_temp.id('many1'), -5]);

-- expired messages removed by expiry: expired, finished at their expires_at
SELECT broker.reap('jq') >= 1 AS reaped;
SELECT state, finished_at IS NOT NULL AS finished FROM broker.status('jq', pg_temp.id('expiring'));

-- dead-lettering after max_deliveries, with and without a dead-letter queue
SELECT broker.create_queue('jq_dead', retention => '1 day');
SELECT broker.create_queue('jq_md', max_deliveries => 1, dead_letter_queue => 'jq_dead', retention => '1 day');
SELECT broker.create_queue('jq_drop', max_deliveries => 1, retention => '1 day');
INSERT INTO ids VALUES ('md', broker.enqueue('jq_md', '{"job": "md"}', headers => '{"h": "kept"}'));
INSERT INTO ids VALUES ('drop', broker.enqueue('jq_drop', '{"job": "drop"}'));
SELECT count(*) FROM broker.dequeue('jq_md', 1, '1 millisecond');
SELECT count(*) FROM broker.dequeue('jq_drop', 1, '1 millisecond');
SELECT regress.wait_due('jq_md') AND regress.wait_due('jq_drop') AS due;
SELECT count(*) FROM broker.dequeue('jq_md', 1);
SELECT count(*) FROM broker.dequeue('jq_drop', 1);
SELECT state, delivery_count, headers->>'h' AS h,
       (headers->>'dead_letter_id')::bigint = (SELECT id FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = m.queue_id WHERE d.name = 'jq_dead') AS new_id_given
  FROM broker.status('jq_md', pg_temp.id('md'));
SELECT state, delivery_count FROM broker.status('jq_drop', pg_temp.id('drop'));

-- fail with a dead-letter queue: moved there, dead_lettered, error kept
INSERT INTO ids VALUES ('fail_dlq', broker.enqueue('jq_md', '{"job": "fail_dlq"}', priority => 4));
SELECT broker.fail('jq_md', pg_temp.id('fail_dlq'), NULL, '{"error": "bad input"}');
SELECT state, result, headers ? 'dead_letter_id' AS has_new_id FROM broker.status('jq_md', pg_temp.id('fail_dlq'));
SELECT payload->>'job' AS job, priority FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = m.queue_id
 WHERE d.name = 'jq_dead' ORDER BY id;

-- counters: completed_total, failed_total (not in deleted_total)
SELECT queue, deleted_total, completed_total, failed_total, dead_lettered_total
  FROM broker.metrics() WHERE queue IN ('jq', 'jq_md', 'jq_drop') ORDER BY queue;

-- in one transaction with the lease: the record has the lease's count
INSERT INTO ids VALUES ('tx', broker.enqueue('jq', '{"job": "tx"}'));
BEGIN;
SELECT broker.complete('jq', id, receipt, '{"in": "tx"}') FROM broker.dequeue('jq', 1);
SELECT state, delivery_count, visible_at > now() AS lease_end FROM broker.status('jq', pg_temp.id('tx'));
COMMIT;

-- a rolled-back complete leaves the message and no record
INSERT INTO ids VALUES ('rb', broker.enqueue('jq', '{"job": "rb"}'));
BEGIN;
SELECT broker.complete('jq', pg_temp.id('rb'));
ROLLBACK;
SELECT state FROM broker.status('jq', pg_temp.id('rb'));

-- without retention: the same calls, no records
INSERT INTO ids VALUES ('plain', broker.enqueue('jq_plain', '{"job": "plain"}'));
SELECT state FROM broker.status('jq_plain', pg_temp.id('plain'));
SELECT broker.complete('jq_plain', pg_temp.id('plain'), NULL, '{"r": 1}');
SELECT count(*) FROM broker.status('jq_plain', pg_temp.id('plain'));
SELECT count(*) FROM broker.archive('jq_plain');
SELECT completed_total FROM broker.metrics('jq_plain');

-- ordered groups: waiting messages are ready (also one with a delay of its own)
INSERT INTO ids VALUES ('g1', broker.enqueue('jq', '{"job": "g1"}', group_key => 'g'));
INSERT INTO ids VALUES ('g2', broker.enqueue('jq', '{"job": "g2"}', group_key => 'g'));
INSERT INTO ids VALUES ('g3', broker.enqueue('jq', '{"job": "g3"}', group_key => 'g', delay => '1 hour'));
SELECT state FROM broker.status('jq', pg_temp.id('g2'));
SELECT state FROM broker.status('jq', pg_temp.id('g3'));

-- released without a delay: ready, visible since its enqueue
INSERT INTO ids VALUES ('rel', broker.enqueue('jq_plain', '{"job": "rel"}'));
SELECT broker.release('jq_plain', id, receipt) FROM broker.dequeue('jq_plain', 1);
SELECT * FROM pg_temp.st('jq_plain', pg_temp.id('rel'));

-- an untyped id resolves to one function
PREPARE st_untyped AS SELECT state FROM broker.status('jq_plain', $1);
EXECUTE st_untyped(pg_temp.id('rel')::text);
DEALLOCATE st_untyped;

-- the archive: records in id order, paged
SELECT payload->>'job' AS job, state FROM broker.archive('jq');
SELECT count(*) FROM broker.archive('jq', pg_temp.id('deleted'));
SELECT payload->>'job' AS job FROM broker.archive('jq', 0, 2);
SELECT regress.err($$SELECT * FROM broker.archive('jq', 0, 0)$$);
SELECT regress.err($$SELECT * FROM broker.archive('jq', 0, 10001)$$);

-- purge and drop remove records; purge returns messages, not records
SELECT broker.purge_queue('jq');
SELECT count(*) FROM broker.archive('jq');
SELECT count(*) FROM broker.status('jq', pg_temp.id('ready'));
SELECT broker.drop_queue(q) FROM unnest(ARRAY['jq_md', 'jq_dead', 'jq_drop', 'jq_small']) q;
SELECT count(*) AS orphan_records FROM (SELECT queue_id FROM broker.records_0 UNION ALL SELECT queue_id FROM broker.records_1) r
 WHERE r.queue_id NOT IN (SELECT queue_id FROM broker.queue_defs);

-- a record ages out of lookups after the retention (the worker removes it later)
SELECT broker.create_queue('jq_short', retention => '200 milliseconds');
INSERT INTO ids VALUES ('short', broker.enqueue('jq_short', '{}'));
SELECT broker.complete('jq_short', pg_temp.id('short'));
SELECT state FROM broker.status('jq_short', pg_temp.id('short'));
SELECT regress.wait_until(format($$SELECT NOT EXISTS (SELECT FROM broker.status('jq_short', %s))$$, pg_temp.id('short')));

-- who may: status and archive are for everyone who may read, complete and
-- fail for everyone who may delete
SELECT has_function_privilege('public', 'broker.status(text, bigint)', 'EXECUTE') AS status_public,
       has_function_privilege('public', 'broker.complete(text, bigint, bigint, jsonb)', 'EXECUTE') AS complete_public;

-- a retention reaching back before the earliest timestamp: no 22008
SELECT broker.create_queue('jq_long', retention => '10000 years');
INSERT INTO ids VALUES ('long', broker.enqueue('jq_long', '{"job": "long"}'));
SELECT broker.delete('jq_long', pg_temp.id('long'));
SELECT state FROM broker.status('jq_long', pg_temp.id('long'));
SELECT broker.drop_queue('jq_long');

SELECT broker.drop_queue(q) FROM unnest(ARRAY['jq', 'jq_plain', 'jq_short']) q;
