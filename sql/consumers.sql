-- Consumer history: broker.consumers, attributed by broker.consumer or
-- application_name, counted at commit.
CREATE EXTENSION IF NOT EXISTS broker;
SELECT broker.create_queue('cq');
SELECT count(*) FROM broker.enqueue_batch('cq', array_fill('{"n": 1}'::jsonb, ARRAY[10]));

SET broker.consumer = 'worker_a';
SELECT count(*) FROM broker.delete('cq', ARRAY(SELECT id FROM broker.dequeue('cq', 3)));
SELECT consumer, queue, delivered, deleted, last_seen <= clock_timestamp() AS seen
  FROM broker.consumers WHERE queue = 'cq' ORDER BY consumer;

-- rolled back: not counted
BEGIN;
SELECT count(*) FROM broker.dequeue('cq', 2);
ROLLBACK;
SELECT consumer, delivered, deleted FROM broker.consumers WHERE queue = 'cq' ORDER BY consumer;

-- another name; application_name when broker.consumer is empty
SET broker.consumer = 'worker_b';
SELECT count(*) FROM broker.dequeue('cq', 4);
RESET broker.consumer;
SET application_name = 'app_c';
SELECT count(*) FROM broker.delete('cq', ARRAY(SELECT id FROM broker.messages WHERE receipt IS NOT NULL ORDER BY id LIMIT 2));
SELECT consumer, queue, delivered, deleted FROM broker.consumers WHERE queue = 'cq' ORDER BY consumer;

-- a long name is cut at 63 bytes on a character boundary, never inside a
-- UTF-8 character (strlcpy cut 'é' in half: invalid text in the view)
RESET application_name;
SET broker.consumer = 'ééééééééééééééééééééééééééééééééééééééééééééééééééééé';
SELECT count(*) FROM broker.dequeue('cq', 1);
RESET broker.consumer;
SELECT consumer, octet_length(consumer), length(consumer) FROM broker.consumers
 WHERE queue = 'cq' AND consumer LIKE 'é%';

-- a dropped queue's history goes with it
SELECT broker.drop_queue('cq');
SELECT count(*) FROM broker._consumers() c
 WHERE NOT EXISTS (SELECT 1 FROM broker.queue_defs q WHERE q.queue_id = c.queue_id);
