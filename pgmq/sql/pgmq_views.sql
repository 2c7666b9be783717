-- broker_pgmq: the per-queue views pgmq.q_<queue> and pgmq.a_<queue>
\set SHOW_CONTEXT never
SELECT pgmq.create('v');
SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) = current_user AS owned_by_extension_owner,
       (SELECT array_agg(a.privilege_type ORDER BY 1) FROM aclexplode(c.relacl) a
         WHERE a.grantee = 0) AS granted_to_public
  FROM pg_class c WHERE c.relnamespace = 'pgmq'::regnamespace AND c.relname LIKE '_\_v'
 ORDER BY 1;
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'pgmq.q_v'::regclass AND attnum > 0 ORDER BY attnum;
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'pgmq.a_v'::regclass AND attnum > 0 ORDER BY attnum;

-- q_: the live messages, in every state; expired ones are left out
SELECT count(*) FROM pgmq.send('v', '{"n": 1}');
SELECT count(*) FROM pgmq.send('v', '{"n": 2}', 3600);
SELECT broker.enqueue('v', '{"n": 3}', ttl => '1 millisecond') > 0 AS enqueued;
SELECT pg_sleep(0.01);
SELECT count(*) FROM pgmq.read('v', 30, 1);
SELECT message, read_ct, vt > clock_timestamp() AS invisible FROM pgmq.q_v ORDER BY msg_id;
-- the view follows the queue, also a message of an ordered group that
-- waits behind its head (broker stores it under the negated queue id)
SELECT broker.enqueue('v', '{"n": 4}', group_key => 'g') > 0, broker.enqueue('v', '{"n": 5}', group_key => 'g') > 0;
SELECT message FROM pgmq.q_v ORDER BY msg_id;

-- a queue made with broker.create_queue gets its views from pgmq.create
-- (which then creates nothing else, and needs no EXECUTE on create_queue)
SELECT broker.create_queue('native', lease => '5 minutes');
SELECT to_regclass('pgmq.q_native') IS NULL AS no_view_yet;
SELECT pgmq.create('native');
SELECT to_regclass('pgmq.q_native') IS NOT NULL AS view_now, lease FROM broker.queues WHERE queue = 'native';

-- drop_queue drops the views and the queue's archive
SELECT count(*) FROM pgmq.send('native', '{"n": 1}');
SELECT count(*) FROM pgmq.archive('native', ARRAY(SELECT msg_id FROM pgmq.q_native));
SELECT count(*) AS archived FROM pgmq.a_native;
SELECT pgmq.drop_queue('native');
SELECT to_regclass('pgmq.q_native') IS NULL AS q_gone, to_regclass('pgmq.a_native') IS NULL AS a_gone;
SELECT count(*) AS archive_rows_left FROM pgmq.archived WHERE queue_name = 'native';

-- a queue dropped and made again with broker's own functions is another
-- queue: its old views show nothing until pgmq.create replaces them, and
-- pgmq.drop_queue removes what is left of a queue broker dropped
SELECT pgmq.create('again');
SELECT count(*) FROM pgmq.send('again', '{"old": true}');
SELECT count(*) FROM pgmq.archive('again', ARRAY(SELECT msg_id FROM pgmq.q_again));
SELECT broker.drop_queue('again'), broker.create_queue('again');
SELECT count(*) FROM pgmq.send('again', '{"new": true}');
SELECT count(*) AS q_rows_before FROM pgmq.q_again;
SELECT count(*) AS a_rows_before FROM pgmq.a_again;
SELECT pgmq.create('again');
SELECT message FROM pgmq.q_again;
SELECT broker.drop_queue('again');
SELECT pgmq.drop_queue('again');
SELECT to_regclass('pgmq.q_again') IS NULL AS q_gone, count(*) AS archive_rows_left
  FROM pgmq.archived WHERE queue_name = 'again';

-- the helper that drops views does nothing for a queue that exists
SELECT pgmq._drop_views('v');
SELECT to_regclass('pgmq.q_v') IS NOT NULL AS still_there;
-- nor does the one that creates them for a queue that does not
SELECT pgmq._create_views('nosuch');
SELECT to_regclass('pgmq.q_nosuch') IS NULL AS not_created;

-- DROP EXTENSION broker_pgmq needs CASCADE while queue views exist
-- (they are not members of the extension, so pg_dump dumps them)
SELECT count(*) AS member_views FROM pg_depend d
  JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'broker_pgmq')
   AND d.deptype = 'e' AND c.relname IN ('q_v', 'a_v');
SELECT pgmq.drop_queue('v');
