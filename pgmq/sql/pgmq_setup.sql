-- broker_pgmq: installation.  The later files use the roles made here.
\set SHOW_CONTEXT never
SET client_min_messages = warning;

-- A schema pgmq that exists already and is not empty (PGMQ, or anything
-- else) is refused: its owner could have put look-alike objects there.
CREATE SCHEMA pgmq;
CREATE TABLE pgmq.meta (queue_name varchar);
CREATE EXTENSION broker_pgmq CASCADE;
DROP SCHEMA pgmq CASCADE;

-- one owned by a role that is not a superuser
CREATE ROLE regress_pgmq_schema_owner;
CREATE SCHEMA pgmq AUTHORIZATION regress_pgmq_schema_owner;
CREATE EXTENSION broker_pgmq CASCADE;
DROP SCHEMA pgmq;
DROP ROLE regress_pgmq_schema_owner;
SELECT count(*) AS broker_installed FROM pg_extension WHERE extname = 'broker';

-- CASCADE installs broker, which broker_pgmq requires
CREATE EXTENSION broker_pgmq CASCADE;
SELECT extname, extversion, extnamespace::regnamespace AS schema
  FROM pg_extension WHERE extname IN ('broker', 'broker_pgmq') ORDER BY extname;

-- Every function runs as its caller (broker checks the caller's queue
-- privileges) but the two that create and drop the per-queue views, and
-- every function pins its search_path.
SELECT p.oid::regprocedure AS security_definer
  FROM pg_proc p WHERE p.pronamespace = 'pgmq'::regnamespace AND p.prosecdef
 ORDER BY 1::text;
SELECT count(*) AS functions_without_pinned_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'pgmq'::regnamespace
   AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false);

-- The roles of the tests: an administrator that may create queues, a
-- producer, a consumer and a role that was granted nothing.
CREATE ROLE regress_pgmq_admin;
CREATE ROLE regress_pgmq_producer;
CREATE ROLE regress_pgmq_consumer;
CREATE ROLE regress_pgmq_nobody;
GRANT EXECUTE ON FUNCTION broker.create_queue TO regress_pgmq_admin;
