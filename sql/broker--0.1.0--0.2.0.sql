/* broker--0.1.0--0.2.0.sql: ALTER EXTENSION broker UPDATE from 0.1.0.
 * Every message, lease, receipt and setting of 0.1.0 stays as it is. */

\echo Use "ALTER EXTENSION broker UPDATE" to load this file. \quit

-- Every SECURITY DEFINER function pins its search_path (issue #7: an
-- unqualified name run as the extension's owner let a caller's
-- search_path choose the function that ran).
ALTER FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.drop_queue(text, boolean) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.purge_queue(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.enqueue_batch(text, jsonb[], interval, interval, jsonb)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.dequeue(text, integer, interval, interval)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.delete(text, bigint, bigint) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.delete(text, bigint[]) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.release(text, bigint, bigint, interval) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.extend_lease(text, bigint, bigint, interval)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.metrics(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.waiters(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker._consumers() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.maintain_segments() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION broker.reap(text) SET search_path = pg_catalog, pg_temp;

-- The form of delete that untyped arguments resolve to.
CREATE FUNCTION broker.delete(queue text, id text, receipt text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_delete_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- broker.segments is no longer filled by the install script (a dump of it
-- restored into a new installation met a duplicate key); the rows a 0.1.0
-- installation has stay valid.

-- Routing (issue #9): ordered groups, priorities, deduplication, topics ------

ALTER TABLE broker.queue_defs
    ADD COLUMN dedup_window interval NOT NULL DEFAULT '5 minutes'
        CHECK (dedup_window OPERATOR(pg_catalog.>) '0'::interval),
    ADD COLUMN retention interval
        CHECK (retention OPERATOR(pg_catalog.>) '0'::interval),
    ADD COLUMN max_lease interval NOT NULL DEFAULT '12 hours'
        CHECK (max_lease OPERATOR(pg_catalog.>) '0'::interval);
-- a queue whose lease is longer keeps working: its maximum is its lease
UPDATE broker.queue_defs SET max_lease = lease
 WHERE lease OPERATOR(pg_catalog.>) max_lease;

ALTER TABLE broker.messages_0 ADD COLUMN group_key text COLLATE pg_catalog."C",
    ADD COLUMN priority smallint NOT NULL DEFAULT 0;
ALTER TABLE broker.messages_1 ADD COLUMN group_key text COLLATE pg_catalog."C",
    ADD COLUMN priority smallint NOT NULL DEFAULT 0;
ALTER TABLE broker.messages_2 ADD COLUMN group_key text COLLATE pg_catalog."C",
    ADD COLUMN priority smallint NOT NULL DEFAULT 0;
ALTER TABLE broker.messages_3 ADD COLUMN group_key text COLLATE pg_catalog."C",
    ADD COLUMN priority smallint NOT NULL DEFAULT 0;

CREATE INDEX messages_0_priority ON broker.messages_0 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_1_priority ON broker.messages_1 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_2_priority ON broker.messages_2 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_3_priority ON broker.messages_3 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_0_group ON broker.messages_0 (queue_id, group_key, id) WHERE group_key IS NOT NULL;
CREATE INDEX messages_1_group ON broker.messages_1 (queue_id, group_key, id) WHERE group_key IS NOT NULL;
CREATE INDEX messages_2_group ON broker.messages_2 (queue_id, group_key, id) WHERE group_key IS NOT NULL;
CREATE INDEX messages_3_group ON broker.messages_3 (queue_id, group_key, id) WHERE group_key IS NOT NULL;

-- the view takes the new columns
CREATE OR REPLACE VIEW broker.messages AS
          SELECT * FROM broker.messages_0
UNION ALL SELECT * FROM broker.messages_1
UNION ALL SELECT * FROM broker.messages_2
UNION ALL SELECT * FROM broker.messages_3;

CREATE TABLE broker.dedup_0 (
    queue_id     integer     NOT NULL,
    dedup_key    text COLLATE pg_catalog."C" NOT NULL,
    id           bigint      NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    PRIMARY KEY (queue_id, dedup_key)
);
CREATE TABLE broker.dedup_1 (LIKE broker.dedup_0 INCLUDING ALL);

CREATE TABLE broker.subscription_defs (
    queue_id  integer NOT NULL,
    pattern   text COLLATE pg_catalog."C" NOT NULL,
    PRIMARY KEY (queue_id, pattern)
);

CREATE VIEW broker.subscriptions AS
    SELECT q.name AS queue, s.pattern
      FROM broker.subscription_defs s
      JOIN broker.queue_defs q ON q.queue_id OPERATOR(pg_catalog.=) s.queue_id;

-- Jobs (issue #10): records of messages that left a queue with a retention
CREATE TABLE broker.records_0 (
    queue_id        integer     NOT NULL,
    id              bigint      NOT NULL,
    state           text        NOT NULL,
    delivery_count  integer     NOT NULL,
    enqueued_at     timestamptz NOT NULL,
    visible_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    payload         jsonb       NOT NULL,
    headers         jsonb,
    result          jsonb,
    PRIMARY KEY (queue_id, id)
);
CREATE TABLE broker.records_1 (LIKE broker.records_0 INCLUDING ALL);

CREATE TYPE broker.job AS (
    id              bigint,
    state           text,
    delivery_count  integer,
    enqueued_at     timestamptz,
    visible_at      timestamptz,
    finished_at     timestamptz,
    payload         jsonb,
    headers         jsonb,
    result          jsonb
);

CREATE OR REPLACE VIEW broker.queues AS
    SELECT q.name           AS queue,
           q.lease,
           q.max_message_size,
           q.default_ttl,
           q.max_deliveries,
           d.name           AS dead_letter_queue,
           q.created_at,
           q.dedup_window,
           q.retention,
           q.max_lease
      FROM broker.queue_defs q
      LEFT JOIN broker.queue_defs d
        ON d.queue_id OPERATOR(pg_catalog.=) q.dead_letter_id
     WHERE q.kind OPERATOR(pg_catalog.=) 'q';

SELECT pg_catalog.pg_extension_config_dump('broker.dedup_0', '');
SELECT pg_catalog.pg_extension_config_dump('broker.dedup_1', '');
SELECT pg_catalog.pg_extension_config_dump('broker.subscription_defs', '');
-- Privileges per queue (issue #11)
CREATE TABLE broker.grant_defs (
    queue_id   integer NOT NULL,
    grantee    name    NOT NULL,
    privilege  text    NOT NULL
               CHECK (privilege OPERATOR(pg_catalog.=) ANY (ARRAY['produce', 'consume', 'admin'])),
    PRIMARY KEY (queue_id, grantee, privilege)
);

CREATE VIEW broker.grants AS
    SELECT CASE WHEN g.queue_id OPERATOR(pg_catalog.=) 0 THEN '*' ELSE q.name END AS queue,
           g.grantee AS role,
           g.privilege
      FROM broker.grant_defs g
      LEFT JOIN broker.queue_defs q ON q.queue_id OPERATOR(pg_catalog.=) g.queue_id
     WHERE (g.queue_id OPERATOR(pg_catalog.=) 0 OR q.queue_id IS NOT NULL)
       AND (g.grantee OPERATOR(pg_catalog.=) 'public'
            OR EXISTS (SELECT FROM pg_catalog.pg_roles r
                        WHERE r.rolname OPERATOR(pg_catalog.=) g.grantee));
SELECT pg_catalog.pg_extension_config_dump('broker.grant_defs', '');
REVOKE ALL ON broker.grant_defs FROM PUBLIC;
GRANT SELECT ON broker.grants TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('broker.records_0', '');
SELECT pg_catalog.pg_extension_config_dump('broker.records_1', '');
REVOKE ALL ON broker.dedup_0, broker.dedup_1, broker.subscription_defs,
              broker.records_0, broker.records_1 FROM PUBLIC;
GRANT SELECT ON broker.subscriptions TO PUBLIC;

-- The new arguments come after the old ones, so every existing call works.
-- A function cannot gain arguments in place: each is dropped and created
-- again, and the privileges granted on the old one are carried over to
-- the new one exactly (a producer role keeps EXECUTE on enqueue; a
-- REVOKE from PUBLIC stays in force).
CREATE FUNCTION broker.upgrade_keep_acl(old_acl aclitem[], fn regprocedure)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    g record;
BEGIN
    IF old_acl IS NULL THEN
        RETURN;                 -- the old one had the default privileges
    END IF;
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    FOR g IN SELECT a.grantee, a.is_grantable
               FROM pg_catalog.aclexplode(old_acl) a
              WHERE a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', fn,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE g.grantee::regrole::text END,  -- regrole's text is quoted
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$fn$;

CREATE TEMPORARY TABLE broker_upgrade_acl ON COMMIT DROP AS
    SELECT p.proname::text AS name, p.proacl AS acl
      FROM pg_catalog.pg_proc p
     WHERE p.oid OPERATOR(pg_catalog.=) ANY (ARRAY[
           'broker.create_queue(text, interval, integer, interval, integer, text, boolean)'::pg_catalog.regprocedure,
           'broker.enqueue(text, jsonb, interval, interval, jsonb)'::pg_catalog.regprocedure,
           'broker.enqueue_batch(text, jsonb[], interval, interval, jsonb)'::pg_catalog.regprocedure,
           'broker.metrics(text)'::pg_catalog.regprocedure]);

DROP FUNCTION broker.create_queue(text, interval, integer, interval, integer, text, boolean);
CREATE FUNCTION broker.create_queue(
    queue text,
    lease interval DEFAULT '30 seconds',
    max_message_size integer DEFAULT 4096,
    default_ttl interval DEFAULT NULL,
    max_deliveries integer DEFAULT NULL,
    dead_letter_queue text DEFAULT NULL,
    if_not_exists boolean DEFAULT false,
    dedup_window interval DEFAULT '5 minutes',
    retention interval DEFAULT NULL,
    max_lease interval DEFAULT '12 hours')
RETURNS void
AS 'MODULE_PATHNAME', 'broker_create_queue'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

DROP FUNCTION broker.enqueue(text, jsonb, interval, interval, jsonb);
CREATE FUNCTION broker.enqueue(
    queue text,
    payload jsonb,
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    group_key text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    priority integer DEFAULT 0)
RETURNS bigint
AS 'MODULE_PATHNAME', 'broker_enqueue'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

DROP FUNCTION broker.enqueue_batch(text, jsonb[], interval, interval, jsonb);
CREATE FUNCTION broker.enqueue_batch(
    queue text,
    payloads jsonb[],
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    group_keys text[] DEFAULT NULL,
    dedup_keys text[] DEFAULT NULL,
    priority integer DEFAULT 0)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'broker_enqueue_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100
SET search_path = pg_catalog, pg_temp;

-- metrics gains completed_total and failed_total (a new result type)
DROP FUNCTION broker.metrics(text);
CREATE FUNCTION broker.metrics(queue text DEFAULT NULL)
RETURNS TABLE(queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint,
              dead_lettered_total bigint, completed_total bigint,
              failed_total bigint)
AS 'MODULE_PATHNAME', 'broker_metrics'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval,
                                               integer, text, boolean, interval,
                                               interval, interval) FROM PUBLIC;
SELECT broker.upgrade_keep_acl(a.acl, CASE a.name
           WHEN 'create_queue' THEN 'broker.create_queue(text, interval, integer, interval, integer, text, boolean, interval, interval, interval)'::pg_catalog.regprocedure
           WHEN 'metrics' THEN 'broker.metrics(text)'::pg_catalog.regprocedure
           WHEN 'enqueue' THEN 'broker.enqueue(text, jsonb, interval, interval, jsonb, text, text, integer)'::pg_catalog.regprocedure
           WHEN 'enqueue_batch' THEN 'broker.enqueue_batch(text, jsonb[], interval, interval, jsonb, text[], text[], integer)'::pg_catalog.regprocedure
       END)
  FROM pg_temp.broker_upgrade_acl a;
DROP FUNCTION broker.upgrade_keep_acl(aclitem[], regprocedure);
DROP TABLE pg_temp.broker_upgrade_acl;

CREATE FUNCTION broker.subscribe(queue text, pattern text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_subscribe'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.unsubscribe(queue text, pattern text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_unsubscribe'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.publish(
    topic text,
    payload jsonb,
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    group_key text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    priority integer DEFAULT 0)
RETURNS integer
AS 'MODULE_PATHNAME', 'broker_publish'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.complete(queue text, id bigint, receipt bigint DEFAULT NULL,
                                result jsonb DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_complete'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.fail(queue text, id bigint, receipt bigint DEFAULT NULL,
                            error jsonb DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_fail'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.status(queue text, id bigint)
RETURNS SETOF broker.job
AS 'MODULE_PATHNAME', 'broker_status'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1
SET search_path = pg_catalog, pg_temp;

-- the form a call with an untyped id resolves to (as for delete)
CREATE FUNCTION broker.status(queue text, id text)
RETURNS SETOF broker.job
AS 'MODULE_PATHNAME', 'broker_status_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.status(queue text, ids bigint[])
RETURNS SETOF broker.job
AS 'MODULE_PATHNAME', 'broker_status_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.archive(queue text, after_id bigint DEFAULT 0,
                               max_rows integer DEFAULT 100)
RETURNS SETOF broker.job
AS 'MODULE_PATHNAME', 'broker_archive'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.grant(queue text, role name, privilege text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_grant'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.revoke(queue text, role name, privilege text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_revoke'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- The functions run as their caller and check its privileges on the queue
-- (then run their statements as the owner): none is SECURITY DEFINER any
-- more.  Administration checks the admin privilege per queue, so drop and
-- purge are no longer withheld from PUBLIC at the function level.  Nobody
-- but the owner (and superusers) has any queue privilege until granted:
-- see docs/operations.md, "Upgrading from 0.1.0".
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'broker'::pg_catalog.regnamespace
                AND p.prosecdef
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY INVOKER', f);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION broker.drop_queue(text, boolean), broker.purge_queue(text) TO PUBLIC;
ALTER FUNCTION broker.health() SET search_path = pg_catalog, pg_temp;
