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

-- an ordinary role: nothing until granted; then produce, consume and look,
-- but not administer
CREATE ROLE broker_app LOGIN;
GRANT USAGE ON SCHEMA regress TO broker_app;
SET ROLE broker_app;
SELECT regress.err($$SELECT broker.enqueue('ext_q', '{"by": "app"}')$$);
RESET ROLE;
SELECT broker.grant('ext_q', 'broker_app', 'produce'), broker.grant('ext_q', 'broker_app', 'consume');
SET ROLE broker_app;
SELECT broker.enqueue('ext_q', '{"by": "app"}') > 0 AS enqueued;
SELECT payload FROM broker.dequeue('ext_q');
SELECT queue FROM broker.queues WHERE queue = 'ext_q';
SELECT count(*) FROM broker.messages;
SELECT broker.create_queue('app_q');
SELECT broker.purge_queue('ext_q');
RESET ROLE;
GRANT EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean, interval, interval, interval) TO broker_app;
SET ROLE broker_app;
-- whoever creates a queue administers it
SELECT broker.create_queue('app_q');
SELECT queue, role, privilege FROM broker.grants WHERE queue = 'app_q';
SELECT broker.purge_queue('app_q');
SELECT broker.drop_queue('app_q');
RESET ROLE;
SELECT broker.drop_queue('ext_q');
REVOKE EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean, interval, interval, interval) FROM broker_app;
REVOKE USAGE ON SCHEMA regress FROM broker_app;
DROP ROLE broker_app;

-- an installation of an older version is refused by this library until it
-- is updated; the update keeps what it holds
DROP EXTENSION broker;
CREATE EXTENSION broker VERSION '0.1.0';
SELECT extversion FROM pg_extension WHERE extname = 'broker';
SELECT regress.err($$SELECT broker.create_queue('old_q')$$);
INSERT INTO broker.queue_defs (queue_id, name, lease, max_message_size)
VALUES (1, 'old_q', '30 seconds', 4096);
INSERT INTO broker.messages_0 (queue_id, id, vt, enqueued_at, payload)
VALUES (1, 1, now(), now(), '{"from": "0.1.0"}');
SELECT setval('broker.message_id_seq', 1);
SELECT setval('broker.queue_id_seq', 1);
-- privileges given on functions whose arguments change are carried over
CREATE ROLE broker_old_admin;
CREATE ROLE broker_old_producer;
GRANT EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean) TO broker_old_admin;
REVOKE EXECUTE ON FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION broker.metrics(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker.metrics(text) TO broker_old_admin;
GRANT EXECUTE ON FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb) TO broker_old_producer WITH GRANT OPTION;
ALTER EXTENSION broker UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'broker';
SELECT r.rolname, f.fn, has_function_privilege(r.rolname, f.fn, 'EXECUTE') AS can,
       has_function_privilege(r.rolname, f.fn, 'EXECUTE WITH GRANT OPTION') AS can_grant
  FROM (VALUES ('broker_old_admin'), ('broker_old_producer'), ('public')) r(rolname)
  CROSS JOIN (VALUES ('broker.create_queue(text, interval, integer, interval, integer, text, boolean, interval, interval, interval)'),
                     ('broker.enqueue(text, jsonb, interval, interval, jsonb, text, text, integer)'),
                     ('broker.enqueue_batch(text, jsonb[], interval, interval, jsonb, text[], text[], integer)'),
                     ('broker.metrics(text)')) f(fn)
 ORDER BY 1, 2;
SELECT count(*) AS upgrade_helpers_left FROM pg_proc WHERE proname = 'upgrade_keep_acl';
REASSIGN OWNED BY broker_old_admin, broker_old_producer TO CURRENT_USER;
DROP OWNED BY broker_old_admin, broker_old_producer;
DROP ROLE broker_old_admin, broker_old_producer;
SELECT payload FROM broker.dequeue('old_q');
SELECT broker.enqueue('old_q', '{"after": "update"}') > 1 AS new_id;
SELECT count(*) AS security_definer FROM pg_proc p
 WHERE p.pronamespace = 'broker'::regnamespace AND p.prosecdef;
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'broker'::regnamespace
   AND p.proconfig IS DISTINCT FROM '{"search_path=pg_catalog, pg_temp"}'
 ORDER BY 1;
DROP EXTENSION broker;
CREATE EXTENSION broker;
