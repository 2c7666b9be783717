-- broker_pgmq: broker's queue privileges apply to every pgmq call, and to
-- the views.  The roles come from pgmq_setup.
\set SHOW_CONTEXT never
SET ROLE regress_pgmq_nobody;
SELECT pgmq.create('p');            -- needs EXECUTE on broker.create_queue
RESET ROLE;

SET ROLE regress_pgmq_admin;
SELECT pgmq.create('p');            -- its creator becomes its admin
SELECT broker.grant('p', 'regress_pgmq_producer', 'produce'),
       broker.grant('p', 'regress_pgmq_consumer', 'consume');
SELECT count(*) FROM pgmq.send('p', '{"n": 1}');
RESET ROLE;
SELECT queue, role, privilege FROM broker.grants WHERE queue = 'p' ORDER BY role;
SELECT pgmq.create('other');        -- as the owner: nobody else may use it

-- a producer sends, and may not read, see or take anything
SET ROLE regress_pgmq_producer;
SELECT count(*) FROM pgmq.send('p', '{"n": 2}');
SELECT count(*) FROM pgmq.send_batch('p', ARRAY['{"n": 3}', '{"n": 4}']::jsonb[]);
SELECT * FROM pgmq.read('p', 30, 1);
SELECT * FROM pgmq.pop('p');
SELECT pgmq.delete('p', 1::bigint);
SELECT pgmq.archive('p', 1::bigint);
SELECT * FROM pgmq.set_vt('p', 1::bigint, 30);
SELECT pgmq.purge_queue('p');
SELECT pgmq.drop_queue('p');
SELECT count(*) FROM pgmq.send('other', '{}');
SELECT count(*) AS q_rows FROM pgmq.q_p;
SELECT count(*) AS a_rows FROM pgmq.a_p;
SELECT count(*) AS message_rows FROM pgmq._messages;
SELECT * FROM pgmq.archived;
INSERT INTO pgmq.archived (queue_name, msg_id, vt) VALUES ('p', 1, now());
-- metrics: any privilege (broker's rule); the ages need consume
SELECT queue_name, queue_length, newest_msg_age_sec, oldest_msg_age_sec IS NOT NULL AS oldest_ready
  FROM pgmq.metrics('p');
SELECT queue_name FROM pgmq.metrics_all();
SELECT * FROM pgmq.metrics('other');
RESET ROLE;

-- a consumer reads, sets vt, archives, deletes, pops; may not send
SET ROLE regress_pgmq_consumer;
SELECT count(*) FROM pgmq.send('p', '{"n": 5}');
SELECT message FROM pgmq.read('p', 30, 1);
SELECT message, vt > clock_timestamp() + interval '100 s' AS extended
  FROM pgmq.set_vt('p', (SELECT min(msg_id) FROM pgmq.q_p), 120);
SELECT pgmq.archive('p', (SELECT min(msg_id) FROM pgmq.q_p));
SELECT message FROM pgmq.a_p;
SELECT pgmq.delete('p', (SELECT min(msg_id) FROM pgmq.q_p));
SELECT message FROM pgmq.pop('p');
SELECT message FROM pgmq.q_p;
SELECT queue_name, queue_length, newest_msg_age_sec IS NOT NULL AS newest_known FROM pgmq.metrics('p');
-- it may add rows to the archive of its queue, and of no other
INSERT INTO pgmq.archived (queue_name, msg_id, vt, message) VALUES ('p', 1, now(), '{"by": "hand"}');
INSERT INTO pgmq.archived (queue_name, msg_id, vt) VALUES ('other', 1, now());
SELECT * FROM pgmq.a_other;
DELETE FROM pgmq.a_p WHERE message = '{"by": "hand"}';
SELECT pgmq.purge_queue('p');
SELECT * FROM pgmq.read('other', 30, 1);
RESET ROLE;

-- nobody: every queue call refused; the list of queues is public (as broker.queues)
SET ROLE regress_pgmq_nobody;
SELECT count(*) FROM pgmq.send('p', '{}');
SELECT * FROM pgmq.read('p', 30, 1);
SELECT * FROM pgmq.metrics('p');
SELECT count(*) FROM pgmq.metrics_all();
SELECT queue_name FROM pgmq.list_queues() ORDER BY 1;
SELECT count(*) FROM pgmq.q_p;
SELECT count(*) FROM pgmq.a_p;
DELETE FROM pgmq.a_p;
-- the helpers the functions use do nothing harmful when called directly
SELECT pgmq._create_views('p');
SELECT pgmq._drop_views('p');
SELECT to_regclass('pgmq.q_p') IS NOT NULL AS views_kept;
RESET ROLE;
SELECT count(*) AS archived_p FROM pgmq.archived WHERE queue_name = 'p';

-- a revoke applies at the next call, to the views as well
SELECT broker.revoke('p', 'regress_pgmq_consumer', 'consume');
SET ROLE regress_pgmq_consumer;
SELECT * FROM pgmq.read('p', 30, 1);
SELECT count(*) FROM pgmq.a_p;
RESET ROLE;

-- a grant to PUBLIC, or on '*', counts as broker counts it
SELECT broker.grant('p', 'public', 'consume');
SET ROLE regress_pgmq_nobody;
SELECT count(*) AS a_rows_with_public_grant FROM pgmq.a_p;
RESET ROLE;
SELECT broker.revoke('p', 'public', 'consume');

-- the admin purges and drops
SET ROLE regress_pgmq_admin;
SELECT pgmq.purge_queue('p');
SELECT pgmq.drop_queue('p');
RESET ROLE;
SELECT pgmq.drop_queue('other');
