-- The extension as a whole: drop and create again while the server runs,
-- privileges of an ordinary role.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('ext_q');
SELECT broker.enqueue('ext_q', '{"before": "drop"}') > 0 AS enqueued;
SELECT count(*) FROM broker.dequeue('ext_q');
SELECT enqueued_total FROM broker.metrics('ext_q');

-- queue ids and message ids start again in the new installation; the
-- shared state of the old one must not be taken for the new one's
DROP EXTENSION broker;
CREATE EXTENSION broker;
SELECT broker.create_queue('ext_q');
SELECT * FROM broker.metrics('ext_q');
SELECT broker.enqueue('ext_q', '{"after": "create"}') > 0 AS enqueued;
SELECT payload, delivery_count FROM broker.dequeue('ext_q');
SELECT enqueued_total FROM broker.metrics('ext_q');

-- an ordinary role: produce, consume and look, but not administer
CREATE ROLE broker_app LOGIN;
SET ROLE broker_app;
SELECT broker.enqueue('ext_q', '{"by": "app"}') > 0 AS enqueued;
SELECT payload FROM broker.dequeue('ext_q');
SELECT queue FROM broker.queues WHERE queue = 'ext_q';
SELECT count(*) FROM broker.messages;
SELECT broker.create_queue('app_q');
SELECT broker.purge_queue('ext_q');
RESET ROLE;
GRANT EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean) TO broker_app;
SET ROLE broker_app;
SELECT broker.create_queue('app_q');
RESET ROLE;
SELECT broker.drop_queue('app_q');
SELECT broker.drop_queue('ext_q');
REVOKE EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean) FROM broker_app;
DROP ROLE broker_app;
