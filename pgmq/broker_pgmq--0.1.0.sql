-- broker_pgmq 0.1.0: the SQL interface of PGMQ 1.5 to 1.11, on broker.
--
-- Every pgmq.* function is SECURITY INVOKER and calls broker's functions,
-- so broker checks the caller's privileges on the queue (produce, consume,
-- admin) as for any direct call.  What maps to what, and what differs from
-- PGMQ, is in docs/pgmq.md.
--
-- Every function pins search_path = pg_catalog, pg_temp and every name it
-- uses is schema-qualified.
\echo Use "CREATE EXTENSION broker_pgmq" to load this file. \quit

-- The schema pgmq: CREATE EXTENSION made it (owned by the installing
-- superuser) unless it existed.  A schema that another role owns or may
-- create in, or that holds objects already (a PGMQ installation), is not
-- used: its owner could put look-alike objects beside ours.
DO $check$
DECLARE
    nsp oid := 'pgmq'::pg_catalog.regnamespace;
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_namespace n
              JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
             WHERE n.oid OPERATOR(pg_catalog.=) nsp) THEN
        RAISE EXCEPTION 'schema "pgmq" is owned by a role that is not a superuser'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Drop or rename that schema, then run CREATE EXTENSION broker_pgmq again.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) nsp)
       OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) nsp)
       OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) nsp) THEN
        RAISE EXCEPTION 'schema "pgmq" is not empty'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'broker_pgmq creates the PGMQ interface in schema pgmq; another extension (PGMQ itself?) or other objects are there.',
                  HINT = 'Drop or rename that schema (see docs/pgmq.md, "Migrating from PGMQ"), then run CREATE EXTENSION broker_pgmq again.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace n,
                      LATERAL pg_catalog.aclexplode(n.nspacl) a
                WHERE n.oid OPERATOR(pg_catalog.=) nsp
                  AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                  AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner) THEN
        RAISE EXCEPTION 'schema "pgmq" grants CREATE to roles other than its owner'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$check$;

GRANT USAGE ON SCHEMA pgmq TO PUBLIC;

------------------------------------------------------------------------------
-- Types, as in PGMQ 1.11
------------------------------------------------------------------------------

CREATE TYPE pgmq.message_record AS (
    msg_id       bigint,
    read_ct      integer,
    enqueued_at  timestamp with time zone,
    last_read_at timestamp with time zone,
    vt           timestamp with time zone,
    message      jsonb,
    headers      jsonb
);

CREATE TYPE pgmq.queue_record AS (
    queue_name     varchar,
    is_partitioned boolean,
    is_unlogged    boolean,
    created_at     timestamp with time zone
);

CREATE TYPE pgmq.metrics_result AS (
    queue_name           text,
    queue_length         bigint,
    newest_msg_age_sec   integer,
    oldest_msg_age_sec   integer,
    total_messages       bigint,
    scrape_time          timestamp with time zone,
    queue_visible_length bigint
);

------------------------------------------------------------------------------
-- Internal: who may read a queue's messages, and the messages themselves
------------------------------------------------------------------------------

-- True when the calling role has broker's consume privilege on the queue
-- (broker decides: the check is a call of broker.status, which needs
-- consume and reads two index entries).  False for a queue that does not
-- exist or a malformed name.
CREATE FUNCTION pgmq._may_consume(queue_name text)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM FROM broker.status(queue_name, 0::bigint);
    RETURN true;
EXCEPTION WHEN insufficient_privilege OR undefined_object OR invalid_name
               OR null_value_not_allowed THEN
    RETURN false;
END
$$;

-- The live messages of every queue, for the roles that may consume from
-- it: the view's owner (the superuser that created the extension) reads
-- broker's tables, and the security barrier lets a row through only when
-- the querying role has consume on its queue (checked once per queue).
-- Expired messages (still on disk until the reaper removes them) are left
-- out, as broker leaves them out of everything.
CREATE VIEW pgmq._messages WITH (security_barrier) AS
    SELECT d.name             AS queue_name,
           m.id               AS msg_id,
           m.delivery_count   AS read_ct,
           m.enqueued_at,
           m.vt,
           m.payload          AS message,
           m.headers,
           m.receipt,
           m.expires_at
      FROM broker.queue_defs d
      JOIN broker.messages m
        ON m.queue_id OPERATOR(pg_catalog.=) d.queue_id
           OR m.queue_id OPERATOR(pg_catalog.=) OPERATOR(pg_catalog.-) d.queue_id
     WHERE d.kind OPERATOR(pg_catalog.=) 'q'
       AND pgmq._may_consume(d.name)
       AND (m.expires_at IS NULL
            OR m.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp());
GRANT SELECT ON pgmq._messages TO PUBLIC;

------------------------------------------------------------------------------
-- The archive (pgmq.archive moves messages here; pgmq.a_<queue> shows them)
------------------------------------------------------------------------------

CREATE TABLE pgmq.archived (
    queue_name   text        NOT NULL,
    msg_id       bigint      NOT NULL,
    read_ct      integer     NOT NULL DEFAULT 0,
    enqueued_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_read_at timestamptz,
    archived_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    vt           timestamptz NOT NULL,
    message      jsonb,
    headers      jsonb,
    PRIMARY KEY (queue_name, msg_id)
);
CREATE INDEX archived_archived_at ON pgmq.archived (queue_name, archived_at);
-- archived messages are user data: pg_dump dumps them
SELECT pg_catalog.pg_extension_config_dump('pgmq.archived', '');

-- Nobody reads or deletes the table directly but its owner: the views
-- pgmq.a_<queue> do, for the roles with consume on the queue.  Any role may
-- insert, but row security lets a row in only for a queue it may consume
-- from (pgmq.archive inserts as its caller).
REVOKE ALL ON pgmq.archived FROM PUBLIC;
GRANT INSERT ON pgmq.archived TO PUBLIC;
ALTER TABLE pgmq.archived ENABLE ROW LEVEL SECURITY;
CREATE POLICY archived_insert ON pgmq.archived FOR INSERT TO PUBLIC
    WITH CHECK (pgmq._may_consume(queue_name));

------------------------------------------------------------------------------
-- Per-queue views pgmq.q_<queue> and pgmq.a_<queue>
------------------------------------------------------------------------------

-- Creates (or replaces) the two views of an existing queue, owned by the
-- extension's owner, readable by every role (they show rows only to roles
-- with consume on the queue).  SECURITY DEFINER because the caller of
-- pgmq.create may not create objects in schema pgmq; it does nothing but
-- that, for a queue that exists, with a fixed definition.
CREATE FUNCTION pgmq._create_views(queue_name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := _create_views.queue_name;
    qid integer;
BEGIN
    SELECT d.queue_id INTO qid FROM broker.queue_defs d
     WHERE d.name OPERATOR(pg_catalog.=) q AND d.kind OPERATOR(pg_catalog.=) 'q';
    IF qid IS NULL THEN
        RETURN;
    END IF;
    -- one creator of a queue's views at a time
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('broker_pgmq.views'), qid);
    -- The queue's id is written in (a queue made again under the same name
    -- is another queue: pgmq.create replaces the views), so that the
    -- planner sees which queue is read and uses the primary key of the
    -- segments for a small queue beside a big one.
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE VIEW pgmq.%I WITH (security_barrier) AS
             SELECT m.id AS msg_id, m.delivery_count AS read_ct, m.enqueued_at,
                    NULL::timestamptz AS last_read_at, m.vt, m.payload AS message, m.headers
               FROM broker.messages m
              WHERE m.queue_id OPERATOR(pg_catalog.=) ANY (ARRAY[%s, %s]::integer[])
                AND (m.expires_at IS NULL
                     OR m.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp())
                AND (SELECT pgmq._may_consume(%L))',
        'q_' OPERATOR(pg_catalog.||) q, qid, OPERATOR(pg_catalog.-) qid, q);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE VIEW pgmq.%I WITH (security_barrier) AS
             SELECT msg_id, read_ct, enqueued_at, last_read_at, archived_at,
                    vt, message, headers
               FROM pgmq.archived
              WHERE queue_name OPERATOR(pg_catalog.=) %L
                AND (SELECT pgmq._may_consume(%L))',
        'a_' OPERATOR(pg_catalog.||) q, q, q);
    EXECUTE pg_catalog.format('GRANT SELECT ON pgmq.%I TO PUBLIC',
                              'q_' OPERATOR(pg_catalog.||) q);
    EXECUTE pg_catalog.format('GRANT SELECT, DELETE ON pgmq.%I TO PUBLIC',
                              'a_' OPERATOR(pg_catalog.||) q);
END
$$;

-- Drops the views and the archive of a queue that no longer exists (as the
-- caller's transaction sees it: pgmq.drop_queue calls it after
-- broker.drop_queue).  Does nothing for a queue that exists.
CREATE FUNCTION pgmq._drop_views(queue_name text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := _drop_views.queue_name;
BEGIN
    IF q IS NULL OR EXISTS (SELECT FROM broker.queues b WHERE b.queue OPERATOR(pg_catalog.=) q) THEN
        RETURN;
    END IF;
    IF pg_catalog.to_regclass(pg_catalog.format('pgmq.%I', 'q_' OPERATOR(pg_catalog.||) q)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP VIEW pgmq.%I', 'q_' OPERATOR(pg_catalog.||) q);
    END IF;
    IF pg_catalog.to_regclass(pg_catalog.format('pgmq.%I', 'a_' OPERATOR(pg_catalog.||) q)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP VIEW pgmq.%I', 'a_' OPERATOR(pg_catalog.||) q);
    END IF;
    DELETE FROM pgmq.archived a WHERE a.queue_name OPERATOR(pg_catalog.=) q;
END
$$;

------------------------------------------------------------------------------
-- Internal: arguments
------------------------------------------------------------------------------

-- A delay given as text (an untyped parameter): integer seconds, or a
-- timestamp with time zone.  Negative delays and past times mean "now",
-- as in PGMQ (broker refuses a negative delay).
CREATE FUNCTION pgmq._delay(delay text)
RETURNS interval
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF delay IS NULL THEN
        RETURN NULL;
    ELSIF delay OPERATOR(pg_catalog.~) '^\s*[+-]?[0-9]+\s*$' THEN
        RETURN pg_catalog.make_interval(secs => GREATEST(delay::bigint, 0));
    END IF;
    RETURN GREATEST(delay::timestamptz OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp(),
                               '0'::interval);
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
    RAISE EXCEPTION 'invalid delay "%"', pg_catalog.left(delay, 64)
        USING ERRCODE = 'invalid_parameter_value',
              DETAIL = 'A delay is a number of seconds or a timestamp with time zone.';
END
$$;

-- A message id, or an array of ids, given as text (an untyped parameter).
CREATE FUNCTION pgmq._ids(msg_id text)
RETURNS bigint[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN msg_id OPERATOR(pg_catalog.~) '^\s*\{' THEN msg_id::bigint[]
                ELSE ARRAY[msg_id::bigint] END
$$;

-- One message id given as text: an array is refused with a hint.
CREATE FUNCTION pgmq._id(msg_id text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF msg_id OPERATOR(pg_catalog.~) '^\s*\{' THEN
        RAISE EXCEPTION 'an array of message ids must be typed'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An untyped argument resolves to the one-id form, which returns a boolean.',
                  HINT = 'Cast it: pgmq.delete($1, $2::bigint[]) or pgmq.archive($1, $2::bigint[]).';
    END IF;
    RETURN msg_id::bigint;
END
$$;

------------------------------------------------------------------------------
-- Queues
------------------------------------------------------------------------------

-- pgmq.create: a broker queue (broker.create_queue, which needs EXECUTE
-- granted by broker's owner) and its two views.  Idempotent, as in PGMQ:
-- an existing queue only gets its views (no EXECUTE needed for that).
CREATE FUNCTION pgmq.create(queue_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower($1);
BEGIN
    IF q IS NULL OR NOT EXISTS (SELECT FROM broker.queues b WHERE b.queue OPERATOR(pg_catalog.=) q) THEN
        PERFORM broker.create_queue(q, max_lease => '7 days', if_not_exists => true);
    END IF;
    PERFORM pgmq._create_views(q);
END
$$;

CREATE FUNCTION pgmq.create_non_partitioned(queue_name text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgmq.create(queue_name) $$;

-- broker's messages are always WAL-logged: an "unlogged" queue is a queue.
CREATE FUNCTION pgmq.create_unlogged(queue_name text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgmq.create(queue_name) $$;

-- broker's store is segmented already (no pg_partman): a partitioned queue
-- is a queue; the intervals are ignored.
CREATE FUNCTION pgmq.create_partitioned(queue_name text,
                                        partition_interval text DEFAULT '10000',
                                        retention_interval text DEFAULT '100000')
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgmq.create(queue_name) $$;

CREATE FUNCTION pgmq.drop_queue(queue_name text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(drop_queue.queue_name);
    dropped boolean;
BEGIN
    dropped := broker.drop_queue(q, if_exists => true);
    PERFORM pgmq._drop_views(q);
    RETURN dropped;
END
$$;

-- deprecated in PGMQ 1.11, kept for old clients
CREATE FUNCTION pgmq.drop_queue(queue_name text, partitioned boolean)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgmq.drop_queue(queue_name) $$;

CREATE FUNCTION pgmq.purge_queue(queue_name text)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.purge_queue(pg_catalog.lower(queue_name)) $$;

-- a no-op in PGMQ 1.11 too (archives are not extension members)
CREATE FUNCTION pgmq.detach_archive(queue_name text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT $$;

CREATE FUNCTION pgmq.list_queues()
RETURNS SETOF pgmq.queue_record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.queue::varchar, false, false, b.created_at
      FROM broker.queues b
     ORDER BY b.created_at, b.queue
$$;

-- PGMQ's queue table, for tools that read it
CREATE VIEW pgmq.meta AS
    SELECT queue_name, is_partitioned, is_unlogged, created_at
      FROM pgmq.list_queues();
GRANT SELECT ON pgmq.meta TO PUBLIC;

------------------------------------------------------------------------------
-- Sending
------------------------------------------------------------------------------

-- The overloads of PGMQ, plus one whose last argument is text: an untyped
-- argument (a driver's $3, a quoted literal) resolves to it, because
-- PostgreSQL prefers the string category for an unknown argument when a
-- candidate takes text there; it then reads the value as seconds, a
-- timestamp or (for send and send_batch with three arguments) headers.

CREATE FUNCTION pgmq.send(queue_name text, msg jsonb)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.enqueue(pg_catalog.lower(queue_name), msg) $$;

CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, headers jsonb)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.enqueue(pg_catalog.lower(queue_name), msg, headers => headers) $$;

CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, delay integer)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT broker.enqueue(pg_catalog.lower(queue_name), msg,
                          delay => pg_catalog.make_interval(secs => GREATEST(delay, 0)))
$$;

CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, delay timestamp with time zone)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT broker.enqueue(pg_catalog.lower(queue_name), msg,
                          delay => GREATEST(delay OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp(),
                                                       '0'::interval))
$$;

-- untyped third argument: headers (JSON) or a delay (seconds, timestamp)
CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, delay text)
RETURNS SETOF bigint
LANGUAGE plpgsql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF delay OPERATOR(pg_catalog.~) '^\s*[[{"]' THEN
        RETURN NEXT broker.enqueue(pg_catalog.lower(queue_name), msg, headers => delay::jsonb);
    ELSIF pg_catalog.btrim(delay) OPERATOR(pg_catalog.=) 'null' THEN
        RETURN NEXT broker.enqueue(pg_catalog.lower(queue_name), msg);
    ELSE
        RETURN NEXT broker.enqueue(pg_catalog.lower(queue_name), msg, delay => pgmq._delay(delay));
    END IF;
END
$$;

CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, headers jsonb, delay integer)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT broker.enqueue(pg_catalog.lower(queue_name), msg,
                          delay => pg_catalog.make_interval(secs => GREATEST(delay, 0)),
                          headers => headers)
$$;

CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, headers jsonb,
                          delay timestamp with time zone)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT broker.enqueue(pg_catalog.lower(queue_name), msg,
                          delay => GREATEST(delay OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp(),
                                                       '0'::interval),
                          headers => headers)
$$;

-- untyped fourth argument: a delay (seconds or a timestamp)
CREATE FUNCTION pgmq.send(queue_name text, msg jsonb, headers jsonb, delay text)
RETURNS SETOF bigint
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT broker.enqueue(pg_catalog.lower(queue_name), msg, delay => pgmq._delay(delay),
                          headers => headers)
$$;

-- The batch: broker.enqueue_batch when every message has the same headers
-- (or none), else one broker.enqueue per message (broker's batch takes one
-- set of headers); ids in array order either way.
CREATE FUNCTION pgmq._send_batch(queue_name text, msgs jsonb[], headers jsonb[], delay interval)
RETURNS SETOF bigint
LANGUAGE plpgsql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(queue_name);
    n integer := pg_catalog.cardinality(msgs);
BEGIN
    IF headers IS NOT NULL AND pg_catalog.cardinality(headers) OPERATOR(pg_catalog.<>) n THEN
        RAISE EXCEPTION 'headers array length (%) must match msgs array length (%)',
                        pg_catalog.cardinality(headers), n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF headers IS NULL
       OR NOT EXISTS (SELECT FROM pg_catalog.unnest(headers) h
                       WHERE h IS DISTINCT FROM headers[pg_catalog.array_lower(headers, 1)]) THEN
        RETURN QUERY SELECT * FROM broker.enqueue_batch(q, msgs, delay => delay,
                                                        headers => headers[pg_catalog.array_lower(headers, 1)]);
    ELSE
        RETURN QUERY SELECT broker.enqueue(q, m.msg, delay => delay, headers => m.hdr)
                       FROM ROWS FROM (pg_catalog.unnest(msgs), pg_catalog.unnest(headers)) WITH ORDINALITY AS m(msg, hdr, i)
                      ORDER BY m.i;
    END IF;
END
$$;

CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[])
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._send_batch(queue_name, msgs, NULL, NULL) $$;

CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], headers jsonb[])
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._send_batch(queue_name, msgs, headers, NULL) $$;

CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], delay integer)
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._send_batch(queue_name, msgs, NULL,
                                   pg_catalog.make_interval(secs => GREATEST(delay, 0)))
$$;

CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], delay timestamp with time zone)
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._send_batch(queue_name, msgs, NULL,
                                   GREATEST(delay OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp(),
                                                       '0'::interval))
$$;

-- untyped third argument: headers (an array literal '{...}' or a JSON
-- array '[...]') or a delay (seconds, timestamp)
CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], delay text)
RETURNS SETOF bigint
LANGUAGE plpgsql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF delay OPERATOR(pg_catalog.~) '^\s*\{' THEN
        RETURN QUERY SELECT * FROM pgmq._send_batch(queue_name, msgs, delay::jsonb[], NULL);
    ELSIF delay OPERATOR(pg_catalog.~) '^\s*\[' THEN
        RETURN QUERY SELECT * FROM pgmq._send_batch(queue_name, msgs,
            ARRAY(SELECT e FROM pg_catalog.jsonb_array_elements(delay::jsonb) WITH ORDINALITY AS x(e, i)
                   ORDER BY x.i),
            NULL);
    ELSE
        RETURN QUERY SELECT * FROM pgmq._send_batch(queue_name, msgs, NULL, pgmq._delay(delay));
    END IF;
END
$$;

CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], headers jsonb[], delay integer)
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._send_batch(queue_name, msgs, headers,
                                   pg_catalog.make_interval(secs => GREATEST(delay, 0)))
$$;

CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], headers jsonb[],
                                delay timestamp with time zone)
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._send_batch(queue_name, msgs, headers,
                                   GREATEST(delay OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp(),
                                                       '0'::interval))
$$;

-- untyped fourth argument: a delay
CREATE FUNCTION pgmq.send_batch(queue_name text, msgs jsonb[], headers jsonb[], delay text)
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._send_batch(queue_name, msgs, headers, pgmq._delay(delay)) $$;

------------------------------------------------------------------------------
-- Reading
------------------------------------------------------------------------------

-- read and read_with_poll: broker.dequeue with a lease of vt seconds (a
-- zero or negative vt: a lease of one microsecond, so the message is
-- visible again at once, as in PGMQ), waiting up to `wait` for a message
-- (event-driven: broker wakes the call when a message commits or a lease
-- or delay runs out).  The receipts of the messages taken are kept for the
-- rest of the transaction in the setting broker_pgmq.receipts, so that
-- set_vt in the same transaction acts on the lease the transaction holds
-- (broker writes it only at commit).
CREATE FUNCTION pgmq._read(queue_name text, vt integer, qty integer, conditional jsonb,
                           wait interval)
RETURNS SETOF pgmq.message_record
LANGUAGE plpgsql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(queue_name);
    lease interval := CASE WHEN vt IS NULL THEN NULL
                           WHEN vt OPERATOR(pg_catalog.>) 0 THEN pg_catalog.make_interval(secs => vt)
                           ELSE '1 microsecond'::interval END;
    called timestamptz := pg_catalog.clock_timestamp();
    m broker.message;
    keys text[] := '{}';
    receipts bigint[] := '{}';
    prior text;
BEGIN
    IF conditional IS NOT NULL AND conditional OPERATOR(pg_catalog.<>) '{}'::jsonb THEN
        RAISE EXCEPTION 'pgmq.read with a conditional is not supported by broker_pgmq'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'broker takes the first deliverable messages of a queue; it does not filter them by content.',
                  HINT = 'Route messages to separate queues (pgmq.bind_topic, pgmq.send_topic) and read the queue you need.';
    END IF;
    FOR m IN SELECT * FROM broker.dequeue(q, qty, lease, wait) LOOP
        keys := keys OPERATOR(pg_catalog.||) (q OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) m.id::text);
        receipts := receipts OPERATOR(pg_catalog.||) m.receipt;
        RETURN NEXT ROW(m.id, m.delivery_count, m.enqueued_at,
                        CASE WHEN lease IS NULL THEN called
                             ELSE m.lease_until OPERATOR(pg_catalog.-) lease END,
                        m.lease_until, m.payload, m.headers)::pgmq.message_record;
    END LOOP;
    IF pg_catalog.cardinality(keys) OPERATOR(pg_catalog.>) 0 THEN
        prior := pg_catalog.current_setting('broker_pgmq.receipts', true);
        PERFORM pg_catalog.set_config('broker_pgmq.receipts',
            (coalesce(nullif(prior, '')::jsonb, '{}'::jsonb)
             OPERATOR(pg_catalog.||) pg_catalog.jsonb_object(keys, receipts::text[]))::text,
            true);
    END IF;
END
$$;

CREATE FUNCTION pgmq.read(queue_name text, vt integer, qty integer,
                          conditional jsonb DEFAULT '{}')
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._read(queue_name, vt, qty, conditional, '0') $$;

-- poll_interval_ms is accepted and ignored: broker wakes the call itself.
CREATE FUNCTION pgmq.read_with_poll(queue_name text, vt integer, qty integer,
                                    max_poll_seconds integer DEFAULT 5,
                                    poll_interval_ms integer DEFAULT 100,
                                    conditional jsonb DEFAULT '{}')
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._read(queue_name, vt, qty, conditional,
                             pg_catalog.make_interval(secs => GREATEST(max_poll_seconds, 0)))
$$;

-- pop: take and delete in one transaction (no lease is ever written).
-- read_ct is the count before this delivery, as PGMQ returns the row it
-- deletes; vt is the time of the pop.
CREATE FUNCTION pgmq.pop(queue_name text, qty integer DEFAULT 1)
RETURNS SETOF pgmq.message_record
LANGUAGE plpgsql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(queue_name);
    m broker.message;
BEGIN
    FOR m IN SELECT * FROM broker.dequeue(q, qty) LOOP
        IF broker.delete(q, m.id, m.receipt) THEN
            RETURN NEXT ROW(m.id, m.delivery_count OPERATOR(pg_catalog.-) 1, m.enqueued_at,
                            NULL::timestamptz, pg_catalog.clock_timestamp(),
                            m.payload, m.headers)::pgmq.message_record;
        END IF;
    END LOOP;
END
$$;

------------------------------------------------------------------------------
-- Deleting and archiving
------------------------------------------------------------------------------

-- delete takes no receipt, as in PGMQ: broker.delete without one removes
-- the message whatever its state.
CREATE FUNCTION pgmq.delete(queue_name text, msg_id bigint)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.delete(pg_catalog.lower(queue_name), msg_id) $$;

CREATE FUNCTION pgmq.delete(queue_name text, msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM broker.delete(pg_catalog.lower(queue_name), msg_ids) $$;

-- untyped id: one message (an array must be typed, see pgmq._id)
CREATE FUNCTION pgmq.delete(queue_name text, msg_id text)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.delete(pg_catalog.lower(queue_name), pgmq._id(msg_id)) $$;

-- archive: the message leaves the queue (broker.delete, no receipt) and
-- its row goes to pgmq.archived, in one statement.  Returns the ids moved.
CREATE FUNCTION pgmq.archive(queue_name text, msg_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(queue_name);
BEGIN
    -- The statement's snapshot still sees the rows that broker.delete
    -- removes during the statement.
    RETURN QUERY
    WITH live AS MATERIALIZED (
        SELECT l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers
          FROM pgmq._messages l
         WHERE l.queue_name OPERATOR(pg_catalog.=) q
           AND l.msg_id OPERATOR(pg_catalog.=) ANY (msg_ids)
    ), gone AS MATERIALIZED (
        SELECT d.id FROM broker.delete(q, msg_ids) AS d(id)
    ), moved AS (
        INSERT INTO pgmq.archived (queue_name, msg_id, read_ct, enqueued_at, vt, message, headers)
        SELECT q, l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers
          FROM live l JOIN gone g ON g.id OPERATOR(pg_catalog.=) l.msg_id
    )
    SELECT g.id FROM gone g ORDER BY g.id;
END
$$;

CREATE FUNCTION pgmq.archive(queue_name text, msg_id bigint)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT FROM pgmq.archive(queue_name, ARRAY[msg_id])) $$;

-- untyped id: one message
CREATE FUNCTION pgmq.archive(queue_name text, msg_id text)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT FROM pgmq.archive(queue_name, ARRAY[pgmq._id(msg_id)])) $$;

------------------------------------------------------------------------------
-- Visibility timeout
------------------------------------------------------------------------------

-- set_vt: broker changes the visibility of a message only under a lease,
-- with the lease's receipt.  The receipt is the one a read in this
-- transaction took (broker_pgmq.receipts), else the one in the message's
-- row (the last committed delivery).  A later time extends the lease
-- (broker.extend_lease: vt = now + the interval); now or a past time
-- releases it (broker.release: visible at once).  A message under no lease
-- that is visible already and asked to be visible now is returned as it
-- is; any other message under no lease (never read, released, or delayed)
-- is refused with 55000.  A message whose lease another consumer took in
-- the meantime is left out of the result.
CREATE FUNCTION pgmq._set_vt(queue_name text, msg_ids bigint[], vt timestamp with time zone)
RETURNS SETOF pgmq.message_record
LANGUAGE plpgsql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(queue_name);
    pending jsonb;
    m record;
    receipt bigint;
    lease interval;
    new_vt timestamptz;
BEGIN
    IF vt IS NULL THEN
        RAISE EXCEPTION 'vt must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- the queue's errors (name, existence, consume privilege) from broker
    PERFORM FROM broker.status(q, 0::bigint);
    pending := nullif(pg_catalog.current_setting('broker_pgmq.receipts', true), '')::jsonb;
    FOR m IN SELECT l.msg_id, l.read_ct, l.enqueued_at, l.vt, l.message, l.headers, l.receipt
               FROM pgmq._messages l
              WHERE l.queue_name OPERATOR(pg_catalog.=) q
                AND l.msg_id OPERATOR(pg_catalog.=) ANY (msg_ids)
              ORDER BY l.msg_id LOOP
        receipt := coalesce((pending OPERATOR(pg_catalog.->>) (q OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) m.msg_id::text))::bigint,
                            m.receipt);
        lease := vt OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp();
        IF receipt IS NULL THEN
            IF lease OPERATOR(pg_catalog.<=) '0'::interval
               AND m.vt OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() THEN
                RETURN NEXT ROW(m.msg_id, m.read_ct, m.enqueued_at, NULL::timestamptz, m.vt,
                                m.message, m.headers)::pgmq.message_record;
                CONTINUE;
            END IF;
            RAISE EXCEPTION 'cannot set the visibility timeout of a message that is not leased'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = pg_catalog.format('Message %s of queue "%s" has not been read, or was released; broker changes the visibility of a message only under the lease of a read.', m.msg_id, q),
                      HINT = 'Read it first (pgmq.read), or send it with a delay.';
        END IF;
        IF lease OPERATOR(pg_catalog.>) '0'::interval THEN
            new_vt := broker.extend_lease(q, m.msg_id, receipt, lease);
        ELSIF broker.release(q, m.msg_id, receipt) THEN
            new_vt := pg_catalog.clock_timestamp();
        ELSE
            new_vt := NULL;
        END IF;
        IF new_vt IS NOT NULL THEN
            RETURN NEXT ROW(m.msg_id, m.read_ct, m.enqueued_at, NULL::timestamptz, new_vt,
                            m.message, m.headers)::pgmq.message_record;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_id bigint, vt integer)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._set_vt(queue_name, ARRAY[msg_id],
                               pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => vt))
$$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_id bigint, vt timestamp with time zone)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._set_vt(queue_name, ARRAY[msg_id], vt) $$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_ids bigint[], vt integer)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._set_vt(queue_name, msg_ids,
                               pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => vt))
$$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_ids bigint[], vt timestamp with time zone)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._set_vt(queue_name, msg_ids, vt) $$;

-- The forms untyped arguments resolve to: a text id (one id, or an array
-- literal '{1,2}') and/or a text vt (seconds, or a timestamp).
CREATE FUNCTION pgmq._vt(vt text)
RETURNS timestamp with time zone
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF vt OPERATOR(pg_catalog.~) '^\s*[+-]?[0-9]+\s*$' THEN
        RETURN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => vt::bigint);
    END IF;
    RETURN vt::timestamptz;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
    RAISE EXCEPTION 'invalid vt "%"', pg_catalog.left(vt, 64)
        USING ERRCODE = 'invalid_parameter_value',
              DETAIL = 'A visibility timeout is a number of seconds or a timestamp with time zone.';
END
$$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_id bigint, vt text)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._set_vt(queue_name, ARRAY[msg_id], pgmq._vt(vt)) $$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_ids bigint[], vt text)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 10
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._set_vt(queue_name, msg_ids, pgmq._vt(vt)) $$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_id text, vt text)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._set_vt(queue_name, pgmq._ids(msg_id), pgmq._vt(vt)) $$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_id text, vt integer)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM pgmq._set_vt(queue_name, pgmq._ids(msg_id),
                               pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => vt))
$$;

CREATE FUNCTION pgmq.set_vt(queue_name text, msg_id text, vt timestamp with time zone)
RETURNS SETOF pgmq.message_record
LANGUAGE sql ROWS 1
SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM pgmq._set_vt(queue_name, pgmq._ids(msg_id), vt) $$;

------------------------------------------------------------------------------
-- Metrics
------------------------------------------------------------------------------

-- broker.metrics (any privilege on the queue) gives the depths and the
-- enqueued count; the ages of the newest and oldest messages come from
-- the messages themselves for a role with consume (else the oldest is that
-- of the oldest ready message, and the newest is NULL).
CREATE FUNCTION pgmq.metrics(queue_name text)
RETURNS pgmq.metrics_result
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q text := pg_catalog.lower(queue_name);
    b record;
    oldest timestamptz;
    newest timestamptz;
    now timestamptz;
BEGIN
    SELECT * INTO b FROM broker.metrics(q);
    IF pg_catalog.to_regclass(pg_catalog.format('pgmq.%I', 'q_' OPERATOR(pg_catalog.||) q)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT pg_catalog.min(enqueued_at), pg_catalog.max(enqueued_at) FROM pgmq.%I',
                                  'q_' OPERATOR(pg_catalog.||) q)
           INTO oldest, newest;
    ELSE
        SELECT pg_catalog.min(l.enqueued_at), pg_catalog.max(l.enqueued_at) INTO oldest, newest
          FROM pgmq._messages l WHERE l.queue_name OPERATOR(pg_catalog.=) q;
    END IF;
    now := pg_catalog.clock_timestamp();
    RETURN ROW(b.queue, b.total,
               pg_catalog.date_part('epoch', now OPERATOR(pg_catalog.-) newest)::integer,
               coalesce(pg_catalog.date_part('epoch', now OPERATOR(pg_catalog.-) oldest),
                        pg_catalog.date_part('epoch', b.oldest_ready_age))::integer,
               coalesce(b.enqueued_total, b.total), now, b.ready)::pgmq.metrics_result;
END
$$;

CREATE FUNCTION pgmq.metrics_all()
RETURNS SETOF pgmq.metrics_result
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT b.queue, b.total,
           pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.newest)::integer,
           coalesce(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) a.oldest),
                    pg_catalog.date_part('epoch', b.oldest_ready_age))::integer,
           coalesce(b.enqueued_total, b.total), pg_catalog.clock_timestamp(), b.ready
      FROM broker.metrics() b
      LEFT JOIN (SELECT l.queue_name, pg_catalog.min(l.enqueued_at) AS oldest,
                        pg_catalog.max(l.enqueued_at) AS newest
                   FROM pgmq._messages l GROUP BY l.queue_name) a
        ON a.queue_name OPERATOR(pg_catalog.=) b.queue
     ORDER BY b.queue
$$;

------------------------------------------------------------------------------
-- Topics, on broker's publish/subscribe
------------------------------------------------------------------------------

CREATE FUNCTION pgmq.bind_topic(pattern text, queue_name text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.subscribe(pg_catalog.lower(queue_name), pattern) $$;

CREATE FUNCTION pgmq.unbind_topic(pattern text, queue_name text)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.unsubscribe(pg_catalog.lower(queue_name), pattern) $$;

CREATE FUNCTION pgmq.send_topic(routing_key text, msg jsonb, headers jsonb, delay integer)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT broker.publish(routing_key, msg, delay => pg_catalog.make_interval(secs => delay),
                          headers => headers)
$$;

CREATE FUNCTION pgmq.send_topic(routing_key text, msg jsonb)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.publish(routing_key, msg) $$;

CREATE FUNCTION pgmq.send_topic(routing_key text, msg jsonb, delay integer)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT broker.publish(routing_key, msg, delay => pg_catalog.make_interval(secs => delay)) $$;
