/* broker--0.1.0.sql: types, tables, views and function declarations only.
 * Every code path that runs per message is in C (src/). */

\echo Use "CREATE EXTENSION broker" to load this file. \quit

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

-- Every message, whatever its segment (for reading: metrics, the
-- low-water mark probe, operators).
CREATE VIEW broker.messages AS
          SELECT * FROM broker.messages_0
UNION ALL SELECT * FROM broker.messages_1
UNION ALL SELECT * FROM broker.messages_2
UNION ALL SELECT * FROM broker.messages_3;

-- Which segment takes new messages, and from which id on.
CREATE TABLE broker.segments (
    segment   integer PRIMARY KEY CHECK (segment BETWEEN 0 AND 3),
    current   boolean NOT NULL,
    first_id  bigint  NOT NULL
);
INSERT INTO broker.segments VALUES (0, true, 0), (1, false, 0), (2, false, 0), (3, false, 0);

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

CREATE VIEW broker.queues AS
    SELECT q.name           AS queue,
           q.lease,
           q.max_message_size,
           q.default_ttl,
           q.max_deliveries,
           d.name           AS dead_letter_queue,
           q.created_at
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
SELECT pg_catalog.pg_extension_config_dump('broker.queue_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('broker.message_id_seq', '');

-- Only the broker's functions touch the tables; they run as the extension
-- owner (SECURITY DEFINER) and every statement they run is fully schema
-- qualified, operators included, so search_path cannot redirect them.
REVOKE ALL ON broker.queue_defs, broker.messages, broker.messages_0,
              broker.messages_1, broker.messages_2, broker.messages_3,
              broker.segments FROM PUBLIC;
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
    if_not_exists boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'broker_create_queue'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker.drop_queue(queue text, if_exists boolean DEFAULT false)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_drop_queue'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker.purge_queue(queue text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'broker_purge_queue'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

-- Producing ----------------------------------------------------------------

CREATE FUNCTION broker.enqueue(
    queue text,
    payload jsonb,
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'broker_enqueue'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker.enqueue_batch(
    queue text,
    payloads jsonb[],
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'broker_enqueue_batch'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER ROWS 100;

-- Consuming ----------------------------------------------------------------

CREATE FUNCTION broker.dequeue(
    queue text,
    max_messages integer DEFAULT 1,
    lease interval DEFAULT NULL,
    wait interval DEFAULT '0')
RETURNS SETOF broker.message
AS 'MODULE_PATHNAME', 'broker_dequeue'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER ROWS 1;

CREATE FUNCTION broker.delete(queue text, id bigint, receipt bigint DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_delete'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker.delete(queue text, ids bigint[])
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'broker_delete_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER ROWS 10;

CREATE FUNCTION broker.release(queue text, id bigint, receipt bigint,
                               delay interval DEFAULT '0')
RETURNS boolean
AS 'MODULE_PATHNAME', 'broker_release'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker.extend_lease(queue text, id bigint, receipt bigint,
                                    lease interval)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'broker_extend_lease'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

-- Observing ----------------------------------------------------------------

CREATE FUNCTION broker.metrics(queue text DEFAULT NULL)
RETURNS TABLE(queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint,
              dead_lettered_total bigint)
AS 'MODULE_PATHNAME', 'broker_metrics'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker.waiters(queue text DEFAULT NULL)
RETURNS TABLE(queue text, waiting integer, wakeups bigint, empty_wakeups bigint,
              low_water_mark bigint, next_due timestamptz)
AS 'MODULE_PATHNAME', 'broker_waiters'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

CREATE FUNCTION broker._consumers()
RETURNS TABLE(consumer text, queue_id integer, delivered bigint, deleted bigint,
              last_seen timestamptz)
AS 'MODULE_PATHNAME', 'broker_consumers'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

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
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

-- Administration is not for everyone: the owner grants it.
REVOKE EXECUTE ON FUNCTION broker.create_queue(text, interval, integer, interval,
                                               integer, text, boolean),
                           broker.drop_queue(text, boolean),
                           broker.purge_queue(text),
                           broker.maintain_segments()
    FROM PUBLIC;

-- Background worker (issue #3) ----------------------------------------------

-- One reaping pass now, in the caller's transaction: deletes the messages
-- of the queue (every queue when NULL) that have expired, skipping rows
-- other transactions hold, and returns how many it deleted.
CREATE FUNCTION broker.reap(queue text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'broker_reap'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER;

-- One row per running reaper (every database), or one row with NULL worker
-- columns when there is none; "preloaded" tells whether the library is in
-- shared_preload_libraries.
CREATE FUNCTION broker.health()
RETURNS TABLE(database name, pid integer, state text,
              last_pass_at timestamptz, last_pass_duration interval,
              removed_total bigint, library_version text,
              extension_version text, preloaded boolean)
AS 'MODULE_PATHNAME', 'broker_health'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
