/* broker--0.2.0.sql: types, tables, views and function declarations only.
 * Every code path that runs per message is in C (src/). */

\echo Use "CREATE EXTENSION broker" to load this file. \quit

-- The extension's schema must be one no other role can change: owned by a
-- superuser, empty, with CREATE granted to nobody else.  CREATE EXTENSION
-- creates it owned by the installing superuser when it does not exist; a
-- schema "broker" that someone else created first is refused, since its
-- owner could rename it and put look-alike objects in its place.
DO $check$
DECLARE
    n record;
BEGIN
    SELECT s.oid, s.nspacl, s.nspowner, r.rolname, r.rolsuper
      INTO n
      FROM pg_catalog.pg_namespace s
      JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.nspowner
     WHERE s.nspname OPERATOR(pg_catalog.=) 'broker';
    IF NOT n.rolsuper THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('schema "broker" is owned by role %I, which is not a superuser', n.rolname),
            DETAIL = 'The broker extension runs its functions with a superuser''s rights on the objects of its schema; another owner could replace them.',
            HINT = 'Drop or rename that schema, then run CREATE EXTENSION broker again; the extension creates its own.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_proc f WHERE f.pronamespace OPERATOR(pg_catalog.=) n.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_type t WHERE t.typnamespace OPERATOR(pg_catalog.=) n.oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_operator o WHERE o.oprnamespace OPERATOR(pg_catalog.=) n.oid) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'schema "broker" is not empty',
            HINT = 'Drop or rename that schema, then run CREATE EXTENSION broker again; the extension creates its own.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.aclexplode(n.nspacl) a
                WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                  AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'schema "broker" grants CREATE to roles other than its owner',
            HINT = 'Revoke CREATE on schema broker from them, then run CREATE EXTENSION broker again.';
    END IF;
END
$check$;

-- Queue definitions.  queue_id values come from a sequence and are never
-- reused, so shared-memory state keyed by (database, queue_id) can never be
-- confused with a dropped queue of the same name.
CREATE TABLE broker.queue_defs (
    queue_id          integer PRIMARY KEY,
    name              text NOT NULL UNIQUE
                      CHECK (name OPERATOR(pg_catalog.~) '^[a-z_][a-z0-9_]{0,47}$'),
    kind              "char" NOT NULL DEFAULT 'q',      -- 'q' queue; room for 't' topic
    lease             interval NOT NULL CHECK (lease OPERATOR(pg_catalog.>) '0'::interval),
    max_message_size  integer NOT NULL
                      CHECK (max_message_size BETWEEN 1 AND 1048576),
    default_ttl       interval CHECK (default_ttl OPERATOR(pg_catalog.>) '0'::interval),
    max_deliveries    integer CHECK (max_deliveries OPERATOR(pg_catalog.>=) 1),
    -- Kept valid by create_queue/drop_queue under the queues' locks (a
    -- foreign key here would make pg_dump warn about a circular reference).
    dead_letter_id    integer,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- how long an accepted dedup key is remembered
    dedup_window      interval NOT NULL DEFAULT '5 minutes'
                      CHECK (dedup_window OPERATOR(pg_catalog.>) '0'::interval),
    -- how long the record of a message that left the queue is kept (NULL: none)
    retention         interval
                      CHECK (retention OPERATOR(pg_catalog.>) '0'::interval),
    -- the longest lease a consumer may take or extend to
    max_lease         interval NOT NULL DEFAULT '12 hours'
                      CHECK (max_lease OPERATOR(pg_catalog.>) '0'::interval),
    CHECK (dead_letter_id OPERATOR(pg_catalog.<>) queue_id)
);

CREATE SEQUENCE broker.queue_id_seq AS integer;

-- Message ids for every queue of this database: unique, and increasing in
-- the order a session enqueues.  Sequences are non-transactional and WAL
-- logged, so an id is never handed out twice, even across a crash.
CREATE SEQUENCE broker.message_id_seq AS bigint;

-- The messages of every queue, in BROKER_SEGMENTS (4) segment tables of
-- the same shape.  Producers insert into the current segment; the
-- background worker rotates to the next one when the current has taken
-- broker.segment_size ids, and empties a drained segment with TRUNCATE,
-- which needs no VACUUM and no waiting for old snapshots (docs/design.md,
-- "Reclaiming space").  The only index of a segment is its primary key
-- (queue_id, id), plus a partial expiry index: taking, extending or
-- releasing a lease updates only vt, delivery_count and receipt, none of
-- them indexed, so every lease is a HOT update when the page has room
-- (hence the fillfactor).
CREATE TABLE broker.messages_0 (
    queue_id        integer     NOT NULL,
    id              bigint      NOT NULL,
    vt              timestamptz NOT NULL,    -- not deliverable before vt
    enqueued_at     timestamptz NOT NULL,
    expires_at      timestamptz,             -- NULL: never expires
    delivery_count  integer     NOT NULL DEFAULT 0,
    receipt         bigint,                  -- NULL until delivered, or after release
    payload         jsonb       NOT NULL,
    headers         jsonb,
    group_key       text COLLATE pg_catalog."C",        -- ordered group, or NULL (bytes, as keys are)
    -- 0 to 9, checked by enqueue (a CHECK here would be evaluated, from its
    -- stored form, at every insert: the functions are the only writers)
    priority        smallint    NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_id, id)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.01);
CREATE TABLE broker.messages_1 (LIKE broker.messages_0 INCLUDING ALL)
    WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
          autovacuum_vacuum_insert_scale_factor = 0.01);
CREATE TABLE broker.messages_2 (LIKE broker.messages_0 INCLUDING ALL)
    WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
          autovacuum_vacuum_insert_scale_factor = 0.01);
CREATE TABLE broker.messages_3 (LIKE broker.messages_0 INCLUDING ALL)
    WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01,
          autovacuum_vacuum_insert_scale_factor = 0.01);

-- The background worker finds expired messages through these indexes.
-- They are partial (messages without a ttl are not in them), and
-- expires_at is never updated after the insert, so leases stay HOT.
CREATE INDEX messages_0_expiry ON broker.messages_0 (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX messages_1_expiry ON broker.messages_1 (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX messages_2_expiry ON broker.messages_2 (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX messages_3_expiry ON broker.messages_3 (expires_at) WHERE expires_at IS NOT NULL;

-- Messages of a priority above 0, per queue and priority in id order: a
-- dequeue takes the highest priority first from that priority's low-water
-- mark.  Partial, so a queue that uses no priority pays nothing for it.
CREATE INDEX messages_0_priority ON broker.messages_0 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_1_priority ON broker.messages_1 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_2_priority ON broker.messages_2 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;
CREATE INDEX messages_3_priority ON broker.messages_3 (queue_id, priority, id) WHERE priority OPERATOR(pg_catalog.>) 0;

-- Messages of ordered groups, per queue and group in id order: a group's
-- head (the one message of the group that may be delivered) has the queue's
-- id, the others wait behind it with the queue id negated (so dequeue never
-- scans them); this finds the head, and the next one when the head leaves.
CREATE INDEX messages_0_group ON broker.messages_0 (queue_id, group_key, id) WHERE group_key IS NOT NULL;
CREATE INDEX messages_1_group ON broker.messages_1 (queue_id, group_key, id) WHERE group_key IS NOT NULL;
CREATE INDEX messages_2_group ON broker.messages_2 (queue_id, group_key, id) WHERE group_key IS NOT NULL;
CREATE INDEX messages_3_group ON broker.messages_3 (queue_id, group_key, id) WHERE group_key IS NOT NULL;

-- Every message, whatever its segment (for reading: metrics, operators).
-- A message waiting behind its ordered group's head shows its queue's id
-- negated.
CREATE VIEW broker.messages AS
          SELECT * FROM broker.messages_0
UNION ALL SELECT * FROM broker.messages_1
UNION ALL SELECT * FROM broker.messages_2
UNION ALL SELECT * FROM broker.messages_3;

-- Which segment takes new messages, and from which id on.  Empty until
-- the first rotation (segment 0 is current and every first id is 0 until
-- then), so that pg_dump's copy of its rows restores into a new
-- installation without a duplicate key.
CREATE TABLE broker.segments (
    segment   integer PRIMARY KEY CHECK (segment BETWEEN 0 AND 3),
    current   boolean NOT NULL,
    first_id  bigint  NOT NULL
);

-- Deduplication keys a queue accepted, with the id of the message each
-- one came with: two tables, one taking new keys while the other only
-- answers lookups; the background worker empties the older one with
-- TRUNCATE once every key in it is older than its queue's dedup_window,
-- and it takes the new keys next (space back whatever snapshot is held,
-- as with the message segments).
CREATE TABLE broker.dedup_0 (
    queue_id     integer     NOT NULL,
    dedup_key    text COLLATE pg_catalog."C" NOT NULL,
    id           bigint      NOT NULL,
    enqueued_at  timestamptz NOT NULL,
    PRIMARY KEY (queue_id, dedup_key)
);
CREATE TABLE broker.dedup_1 (LIKE broker.dedup_0 INCLUDING ALL);

-- Records of the messages that left a queue with a retention (jobs): the
-- same two-table rotation as the dedup keys, emptied with TRUNCATE once
-- every record in the older one is older than the longest retention.
CREATE TABLE broker.records_0 (
    queue_id        integer     NOT NULL,
    id              bigint      NOT NULL,
    state           text        NOT NULL,   -- done, failed, deleted, dead_lettered, expired
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

-- Who may do what with a queue (acl.c): privilege produce, consume or
-- admin, on a queue or on every queue (queue_id 0), to a role or to PUBLIC
-- (grantee 'public'), by name: a dump restored into another cluster gives
-- the grants to the roles of the same names there.
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

-- Topic subscriptions: the queue receives every message published to a
-- topic that matches the pattern.
CREATE TABLE broker.subscription_defs (
    queue_id  integer NOT NULL,
    pattern   text COLLATE pg_catalog."C" NOT NULL,
    PRIMARY KEY (queue_id, pattern)
);

CREATE VIEW broker.subscriptions AS
    SELECT q.name AS queue, s.pattern
      FROM broker.subscription_defs s
      JOIN broker.queue_defs q ON q.queue_id OPERATOR(pg_catalog.=) s.queue_id;

CREATE TYPE broker.message AS (
    id              bigint,
    payload         jsonb,
    headers         jsonb,
    enqueued_at     timestamptz,
    delivery_count  integer,
    lease_until     timestamptz,
    expires_at      timestamptz,
    receipt         bigint
);

-- A job: a message in its queue, or the record of one that left it.
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

CREATE VIEW broker.queues AS
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

-- Queues and messages are user data: pg_dump dumps them.
SELECT pg_catalog.pg_extension_config_dump('broker.queue_defs', '');
SELECT pg_catalog.pg_extension_config_dump('broker.messages_0', '');
SELECT pg_catalog.pg_extension_config_dump('broker.messages_1', '');
SELECT pg_catalog.pg_extension_config_dump('broker.messages_2', '');
SELECT pg_catalog.pg_extension_config_dump('broker.messages_3', '');
SELECT pg_catalog.pg_extension_config_dump('broker.segments', '');
SELECT pg_catalog.pg_extension_config_dump('broker.dedup_0', '');
SELECT pg_catalog.pg_extension_config_dump('broker.dedup_1', '');
SELECT pg_catalog.pg_extension_config_dump('broker.subscription_defs', '');
SELECT pg_catalog.pg_extension_config_dump('broker.records_0', '');
SELECT pg_catalog.pg_extension_config_dump('broker.records_1', '');
SELECT pg_catalog.pg_extension_config_dump('broker.grant_defs', '');
SELECT pg_catalog.pg_extension_config_dump('broker.queue_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('broker.message_id_seq', '');

-- Only the broker's functions touch the tables.  They run as their caller
-- (SECURITY INVOKER), check the caller's privileges on the queue (see
-- broker.grant), then run their statements as the extension's owner, with
-- search_path pinned to pg_catalog, pg_temp; every name in the statements
-- they run is schema-qualified, functions, aggregates and operators
-- included, so no search_path can redirect them.
REVOKE ALL ON broker.queue_defs, broker.messages, broker.messages_0,
              broker.messages_1, broker.messages_2, broker.messages_3,
              broker.segments, broker.dedup_0, broker.dedup_1,
              broker.subscription_defs, broker.records_0, broker.records_1,
              broker.grant_defs
    FROM PUBLIC;
GRANT SELECT ON broker.subscriptions, broker.grants TO PUBLIC;
REVOKE ALL ON SEQUENCE broker.queue_id_seq, broker.message_id_seq FROM PUBLIC;
GRANT USAGE ON SCHEMA broker TO PUBLIC;
GRANT SELECT ON broker.queues TO PUBLIC;

-- Queues -------------------------------------------------------------------

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

CREATE FUNCTION broker.drop_queue(queue text, if_exists boolean DEFAULT false)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_drop_queue'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.purge_queue(queue text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'broker_purge_queue'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- Producing ----------------------------------------------------------------

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

-- Topics: a queue subscribes to topic patterns; publish puts one copy of a
-- message into every queue with a matching pattern.
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

-- Consuming ----------------------------------------------------------------

CREATE FUNCTION broker.dequeue(
    queue text,
    max_messages integer DEFAULT 1,
    lease interval DEFAULT NULL,
    wait interval DEFAULT '0')
RETURNS SETOF broker.message
AS 'MODULE_PATHNAME', 'broker_dequeue'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 1
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.delete(queue text, id bigint, receipt bigint DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_delete'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- The same, for calls whose arguments are untyped parameters or literals
-- (drivers, pgbench -M extended): PostgreSQL resolves an unknown argument
-- to text when a candidate takes text, so delete($1, $2) is this one, not
-- ambiguous between the two forms above and below.
CREATE FUNCTION broker.delete(queue text, id text, receipt text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_delete_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.delete(queue text, ids bigint[])
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'broker_delete_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.release(queue text, id bigint, receipt bigint,
                               delay interval DEFAULT '0')
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.extend_lease(queue text, id bigint, receipt bigint,
                                    lease interval)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'broker_extend_lease'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- Jobs: outcomes and lookups -----------------------------------------------

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

-- Observing ----------------------------------------------------------------

CREATE FUNCTION broker.metrics(queue text DEFAULT NULL)
RETURNS TABLE(queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint,
              dead_lettered_total bigint, completed_total bigint,
              failed_total bigint)
AS 'MODULE_PATHNAME', 'broker_metrics'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker.waiters(queue text DEFAULT NULL)
RETURNS TABLE(queue text, waiting integer, wakeups bigint, empty_wakeups bigint,
              low_water_mark bigint, next_due timestamptz)
AS 'MODULE_PATHNAME', 'broker_waiters'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION broker._consumers()
RETURNS TABLE(consumer text, queue_id integer, delivered bigint, deleted bigint,
              last_seen timestamptz)
AS 'MODULE_PATHNAME', 'broker_consumers'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- Per-consumer history since server start (shared memory, bounded by
-- broker.max_consumers; see docs/api.md).
CREATE VIEW broker.consumers AS
    SELECT c.consumer, q.name AS queue, c.delivered, c.deleted, c.last_seen
      FROM broker._consumers() c
      LEFT JOIN broker.queue_defs q ON q.queue_id OPERATOR(pg_catalog.=) c.queue_id
     WHERE q.queue_id IS NOT NULL OR c.queue_id IS NULL;
GRANT SELECT ON broker.consumers TO PUBLIC;

-- One step of segment maintenance now (the worker does it every
-- broker.reaper_interval): truncate drained segments, rotate when the
-- current one is full.  Returns the state of every segment.
CREATE FUNCTION broker.maintain_segments()
RETURNS TABLE(segment integer, current boolean, first_id bigint, drained boolean,
              bytes bigint)
AS 'MODULE_PATHNAME', 'broker_maintain_segments'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- Privileges per queue: produce, consume or admin, on a queue or on '*'
-- (every queue, present and future), to a role or to 'public'.
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

-- Creating queues and maintaining the store are for whom the owner grants
-- them; everything else checks the caller's privileges on the queue.
REVOKE EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval,
                                               integer, text, boolean, interval,
                                               interval, interval),
                           broker.maintain_segments()
    FROM PUBLIC;

-- Background worker (issue #3) ----------------------------------------------

-- One reaping pass now, in the caller's transaction: deletes the messages
-- of the queue (every queue when NULL) that have expired, skipping rows
-- other transactions hold, and returns how many it deleted.
CREATE FUNCTION broker.reap(queue text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'broker_reap'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

-- One row per running reaper (every database), or one row with NULL worker
-- columns when there is none; "preloaded" tells whether the library is in
-- shared_preload_libraries.
CREATE FUNCTION broker.health()
RETURNS TABLE(database name, pid integer, state text,
              last_pass_at timestamptz, last_pass_duration interval,
              removed_total bigint, library_version text,
              extension_version text, preloaded boolean)
AS 'MODULE_PATHNAME', 'broker_health'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;
