-- broker_pgmq: topics on broker's publish/subscribe
\set SHOW_CONTEXT never
SELECT pgmq.create('t_all'), pgmq.create('t_logs'), pgmq.create('t_errors');
SELECT pgmq.bind_topic('#', 't_all');
SELECT pgmq.bind_topic('logs.*', 't_logs');
SELECT pgmq.bind_topic('logs.*', 't_logs');     -- again: nothing changes
SELECT pgmq.bind_topic('*.error', 't_errors');
SELECT queue, pattern FROM broker.subscriptions ORDER BY queue, pattern;

-- send_topic returns the number of queues that got a copy
SELECT pgmq.send_topic('logs.error', '{"m": 1}');
SELECT pgmq.send_topic('logs.info', '{"m": 2}', 0);
SELECT pgmq.send_topic('app.error', '{"m": 3}', '{"trace": "x"}', 0);
SELECT pgmq.send_topic('nothing', '{"m": 4}', 3600);
SELECT pgmq.send_topic('logs.error', '{"m": 5}', -1);    -- broker refuses a negative delay
SELECT pgmq.send_topic('logs.*', '{"m": 6}');             -- wildcards are not topics
SELECT pgmq.bind_topic('Logs.*', 't_logs');               -- broker: lower case only
SELECT pgmq.bind_topic('logs.*', 'nosuch');
-- the copies carry the topic in their headers (broker's publish)
SELECT * FROM (SELECT 'all' AS q, message, headers FROM pgmq.q_t_all
               UNION ALL SELECT 'logs', message, headers FROM pgmq.q_t_logs
               UNION ALL SELECT 'errors', message, headers FROM pgmq.q_t_errors) c
 ORDER BY q, message::text;

SELECT pgmq.unbind_topic('logs.*', 't_logs');
SELECT pgmq.unbind_topic('logs.*', 't_logs');
SELECT pgmq.send_topic('logs.warn', '{"m": 7}');
SELECT pgmq.drop_queue('t_all'), pgmq.drop_queue('t_logs'), pgmq.drop_queue('t_errors');
SELECT count(*) AS subscriptions_left FROM broker.subscriptions;
