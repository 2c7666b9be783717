-- migrate_from_pgmq.sql: copy a PGMQ installation's queues, messages,
-- archives and topic bindings into broker, through broker_pgmq.
--
--   psql -v ON_ERROR_STOP=1 -v old_schema=pgmq_old -d DB -f pgmq/migrate_from_pgmq.sql
--
-- Run it as a superuser.  PGMQ's tables (meta, q_<queue>, a_<queue>, and
-- topic_bindings from PGMQ 1.11) must be readable in schema :old_schema
-- (default pgmq_old):
--   * in the same database, rename PGMQ's schema first:
--       ALTER SCHEMA pgmq RENAME TO pgmq_old;
--   * from another database or server, import them with postgres_fdw:
--       CREATE EXTENSION postgres_fdw;
--       CREATE SERVER pgmq_src FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'old', ...);
--       CREATE USER MAPPING FOR CURRENT_USER SERVER pgmq_src OPTIONS (...);
--       CREATE SCHEMA pgmq_old;
--       IMPORT FOREIGN SCHEMA pgmq FROM SERVER pgmq_src INTO pgmq_old;
-- Stop the producers and consumers of the old queues first: what they do
-- after the copy is not copied.
--
-- What it does, in one transaction (see docs/pgmq.md, "Migrating from PGMQ"):
--   1. CREATE EXTENSION broker_pgmq (and broker) if they are not there;
--   2. moves broker's message id sequence past every PGMQ message id, so
--      that the ids of messages archived later never collide with the
--      archived ones copied here;
--   3. per queue of :old_schema.meta, oldest first: pgmq.create; every live
--      message, in msg_id order, with broker.enqueue: same message and
--      headers, a delay up to its vt (a message read and still invisible
--      becomes delayed until its vt: broker has no lease without a read);
--      new id, enqueued_at now, read_ct 0; every archived row into
--      pgmq.archived as it is (its old msg_id kept);
--   4. the topic bindings (pgmq.bind_topic).
-- It prints one line per queue.  The old schema is left as it was: drop it
-- (DROP EXTENSION pgmq; DROP SCHEMA pgmq_old CASCADE) once the copy is checked.
\set ON_ERROR_STOP 1
\if :{?old_schema}
\else
\set old_schema pgmq_old
\endif

BEGIN;
CREATE EXTENSION IF NOT EXISTS broker_pgmq CASCADE;
SELECT pg_catalog.set_config('broker_pgmq.migrate_from', :'old_schema', true) AS migrating_from;

DO $migrate$
DECLARE
    old text := pg_catalog.current_setting('broker_pgmq.migrate_from');
    q record;
    qname text;
    top bigint := 0;
    m bigint;
    moved bigint;
    archived bigint;
    bindings bigint := 0;
    -- a column of an old table, or NULL when that PGMQ version has none
    col text;
BEGIN
    IF pg_catalog.to_regclass(pg_catalog.format('%I.meta', old)) IS NULL THEN
        RAISE EXCEPTION 'no PGMQ table %.meta', old
            USING HINT = 'Rename PGMQ''s schema (ALTER SCHEMA pgmq RENAME TO pgmq_old) or import it with postgres_fdw, and pass -v old_schema=NAME.';
    END IF;

    -- 2. broker's ids past PGMQ's
    FOR q IN EXECUTE pg_catalog.format('SELECT queue_name::text AS queue_name FROM %I.meta', old) LOOP
        qname := pg_catalog.lower(q.queue_name);
        FOREACH col IN ARRAY ARRAY['q_', 'a_'] LOOP
            IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', old, col || qname)) IS NOT NULL THEN
                EXECUTE pg_catalog.format('SELECT coalesce(max(msg_id), 0) FROM %I.%I', old, col || qname) INTO m;
                top := GREATEST(top, m);
            END IF;
        END LOOP;
    END LOOP;
    IF top > 0 AND top >= (SELECT s.last_value FROM broker.message_id_seq s) THEN
        PERFORM pg_catalog.setval('broker.message_id_seq', top);
    END IF;

    -- 3. queues, live messages, archives
    FOR q IN EXECUTE pg_catalog.format(
            'SELECT queue_name::text AS queue_name FROM %I.meta ORDER BY created_at, queue_name', old) LOOP
        qname := pg_catalog.lower(q.queue_name);
        PERFORM pgmq.create(qname);
        moved := 0;
        archived := 0;
        IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', old, 'q_' || qname)) IS NOT NULL THEN
            col := CASE WHEN EXISTS (SELECT FROM information_schema.columns c
                                      WHERE c.table_schema = old AND c.table_name = 'q_' || qname
                                        AND c.column_name = 'headers')
                        THEN 'headers' ELSE 'NULL::jsonb' END;
            EXECUTE pg_catalog.format(
                $f$SELECT count(broker.enqueue(%L, coalesce(o.message, 'null'::jsonb),
                                              delay => GREATEST(o.vt - pg_catalog.clock_timestamp(), '0'::interval),
                                              headers => o.headers))
                     FROM (SELECT msg_id, message, vt, %s AS headers FROM %I.%I
                            ORDER BY msg_id OFFSET 0) o$f$,
                qname, col, old, 'q_' || qname) INTO moved;
        END IF;
        IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', old, 'a_' || qname)) IS NOT NULL THEN
            col := CASE WHEN EXISTS (SELECT FROM information_schema.columns c
                                      WHERE c.table_schema = old AND c.table_name = 'a_' || qname
                                        AND c.column_name = 'last_read_at')
                        THEN 'last_read_at' ELSE 'NULL::timestamptz' END;
            EXECUTE pg_catalog.format(
                $f$INSERT INTO pgmq.archived (queue_name, msg_id, read_ct, enqueued_at, last_read_at,
                                              archived_at, vt, message, headers)
                   SELECT %L, msg_id, read_ct, enqueued_at, %s, archived_at, vt, message, %s
                     FROM %I.%I$f$,
                qname, col,
                CASE WHEN EXISTS (SELECT FROM information_schema.columns c
                                   WHERE c.table_schema = old AND c.table_name = 'a_' || qname
                                     AND c.column_name = 'headers')
                     THEN 'headers' ELSE 'NULL::jsonb' END,
                old, 'a_' || qname);
            GET DIAGNOSTICS archived = ROW_COUNT;
        END IF;
        RAISE NOTICE 'queue %: % messages, % archived', qname, moved, archived;
    END LOOP;

    -- 4. topic bindings (PGMQ 1.11)
    IF pg_catalog.to_regclass(pg_catalog.format('%I.topic_bindings', old)) IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'SELECT count(*) FROM (SELECT pgmq.bind_topic(pattern, pg_catalog.lower(queue_name)) FROM %I.topic_bindings) s', old)
            INTO bindings;
        RAISE NOTICE '% topic bindings', bindings;
    END IF;
END
$migrate$;
COMMIT;
