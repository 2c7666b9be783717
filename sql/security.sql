-- What the extension runs cannot be changed by a caller, a database owner
-- or a role with CREATE somewhere: search_path, look-alike schemas and
-- tables, untyped parameters.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('sec_q');

-- no function is SECURITY DEFINER (they check the caller's privileges per
-- queue and run their statements as the owner); the ones that run
-- statements pin their search_path
SELECT count(*) AS security_definer FROM pg_proc p
 WHERE p.pronamespace = 'broker'::regnamespace AND p.prosecdef;
SELECT p.proname, p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'broker'::regnamespace
   AND p.proconfig IS DISTINCT FROM '{"search_path=pg_catalog, pg_temp"}'
 ORDER BY 1;

-- a role that may produce and consume on a queue and puts its own
-- count(*), nextval and = first in search_path: none of them ever runs,
-- neither in its calls nor in a superuser's maintenance run with that
-- search_path (maintain_segments once ran an unqualified count(*) as the
-- extension's owner: a superuser, so the role became one)
CREATE ROLE sec_evil LOGIN;
SELECT broker.grant('sec_q', 'sec_evil', 'produce'), broker.grant('sec_q', 'sec_evil', 'consume');
GRANT USAGE ON SCHEMA regress TO sec_evil;
CREATE SCHEMA sec_evil AUTHORIZATION sec_evil;
CREATE TABLE public.sec_stolen (who text, super boolean);
GRANT INSERT ON public.sec_stolen TO PUBLIC;
GRANT EXECUTE ON FUNCTION broker.maintain_segments() TO sec_evil;
SET ROLE sec_evil;
CREATE FUNCTION sec_evil.steal(int8) RETURNS int8 LANGUAGE sql AS $$
    INSERT INTO public.sec_stolen
        SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    SELECT $1 + 1
$$;
CREATE AGGREGATE sec_evil.count(*) (sfunc = sec_evil.steal, stype = int8, initcond = '0');
CREATE FUNCTION sec_evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO public.sec_stolen
        SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    SELECT 1::bigint
$$;
CREATE FUNCTION sec_evil.eq(int, int) RETURNS boolean LANGUAGE sql AS $$
    INSERT INTO public.sec_stolen
        SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    SELECT $1 OPERATOR(pg_catalog.=) $2
$$;
CREATE OPERATOR sec_evil.= (leftarg = int, rightarg = int, function = sec_evil.eq);
SET search_path = sec_evil, pg_catalog;
-- EXECUTE on maintain_segments is not enough: it is the owner's
SELECT regress.err('SELECT pg_catalog.count(*) FROM broker.maintain_segments()');
SELECT broker.enqueue('sec_q', '{"n": 1}') OPERATOR(pg_catalog.>) 0 AS enqueued;
SELECT pg_catalog.count(*) FROM broker.dequeue('sec_q', 1);
SELECT pg_catalog.count(*) FROM broker.metrics('sec_q');
RESET search_path;
RESET ROLE;
SET search_path = sec_evil, pg_catalog;
SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>=) 4 AS segments FROM broker.maintain_segments();
RESET search_path;
SELECT count(*) AS attacker_code_ran FROM public.sec_stolen;

-- a schema "broker" that another role created first is refused
DROP EXTENSION broker;
DROP SCHEMA broker;
CREATE SCHEMA broker AUTHORIZATION sec_evil;
SELECT regress.err('CREATE EXTENSION broker');
DROP SCHEMA broker;
-- so is one that grants CREATE to others, or that is not empty
CREATE SCHEMA broker;
GRANT CREATE ON SCHEMA broker TO sec_evil;
SELECT regress.err('CREATE EXTENSION broker');
DROP SCHEMA broker;
CREATE SCHEMA broker;
CREATE TABLE broker.messages_0 (x int);
SELECT regress.err('CREATE EXTENSION broker');
DROP SCHEMA broker CASCADE;
-- the schema left by DROP EXTENSION is the installing superuser's: reused
CREATE EXTENSION broker;
DROP EXTENSION broker;
CREATE EXTENSION broker;
SELECT broker.create_queue('sec_q');

-- the extension finds its relations through itself, never by a name: a
-- schema "broker" that is not the extension's, or relations that are not
-- its members, are refused (55000) instead of used
ALTER SCHEMA broker RENAME TO broker_real;
CREATE SCHEMA broker;
CREATE TABLE broker.queue_defs (LIKE broker_real.queue_defs);
CREATE TABLE broker.messages_0 (LIKE broker_real.messages_0);
SELECT regress.err($$SELECT broker_real.enqueue('sec_q', '{}')$$);
SELECT regress.err($$SELECT broker_real.create_queue('sec_q2')$$);
SELECT regress.err($$SELECT broker_real.reap()$$);
SELECT count(*) AS lookalikes_untouched FROM broker.queue_defs;
DROP SCHEMA broker CASCADE;
ALTER SCHEMA broker_real RENAME TO broker;
SELECT broker.enqueue('sec_q', '{}') > 0 AS works_again;
-- a schema handed to another owner is no longer trusted
ALTER SCHEMA broker OWNER TO sec_evil;
SELECT regress.err($$SELECT * FROM broker.metrics('sec_q')$$);
ALTER SCHEMA broker OWNER TO CURRENT_USER;
SELECT total FROM broker.metrics('sec_q');

-- every function resolves to exactly one when its arguments are untyped
-- parameters, as drivers and pgbench -M extended send them (delete($1, $2)
-- was ambiguous between its two forms: 42725)
PREPARE u_create(unknown) AS SELECT broker.create_queue($1);
PREPARE u_create7 AS SELECT broker.create_queue($1, $2, $3, $4, $5, $6, $7);
PREPARE u_enqueue AS SELECT broker.enqueue($1, $2) > 0;
PREPARE u_enqueue5 AS SELECT broker.enqueue($1, $2, $3, $4, $5) > 0;
PREPARE u_batch AS SELECT count(*) FROM broker.enqueue_batch($1, $2);
PREPARE u_batch5 AS SELECT count(*) FROM broker.enqueue_batch($1, $2, $3, $4, $5);
PREPARE u_dequeue AS SELECT id, receipt FROM broker.dequeue($1, $2, $3, $4);
PREPARE u_dequeue1 AS SELECT id FROM broker.dequeue($1);
PREPARE u_delete2 AS SELECT broker.delete($1, $2);
PREPARE u_delete3 AS SELECT broker.delete($1, $2, $3);
PREPARE u_release AS SELECT broker.release($1, $2, $3, $4);
PREPARE u_extend AS SELECT broker.extend_lease($1, $2, $3, $4) IS NOT NULL;
PREPARE u_metrics AS SELECT total FROM broker.metrics($1);
PREPARE u_waiters AS SELECT waiting FROM broker.waiters($1);
PREPARE u_reap AS SELECT broker.reap($1);
PREPARE u_purge AS SELECT broker.purge_queue($1);
PREPARE u_drop AS SELECT broker.drop_queue($1, $2);
EXECUTE u_create('sec_u');
EXECUTE u_create7('sec_u2', '1 minute', '1000', NULL, '3', 'sec_u', 'false');
EXECUTE u_enqueue('sec_u', '{"a": 1}');
EXECUTE u_enqueue5('sec_u', '{"a": 2}', '0', '1 hour', '{"h": 1}');
EXECUTE u_batch('sec_u', '{"{\"b\": 1}","{\"b\": 2}"}');
EXECUTE u_batch5('sec_u', '{"{\"b\": 3}"}', '0', NULL, NULL);
CREATE TEMP TABLE u_got AS EXECUTE u_dequeue('sec_u', '3', '1 minute', '0');
SELECT count(*) FROM u_got;
SELECT id AS u_id, receipt AS u_receipt FROM u_got ORDER BY id LIMIT 1 \gset
EXECUTE u_delete3('sec_u', :'u_id', :'u_receipt');
SELECT id AS u_id, receipt AS u_receipt FROM u_got ORDER BY id OFFSET 1 LIMIT 1 \gset
EXECUTE u_extend('sec_u', :'u_id', :'u_receipt', '2 minutes');
EXECUTE u_release('sec_u', :'u_id', :'u_receipt', '0');
SELECT id AS u_id FROM u_got ORDER BY id OFFSET 2 LIMIT 1 \gset
EXECUTE u_delete2('sec_u', :'u_id');
SELECT regress.err($$EXECUTE u_delete2('sec_u', 'not a number')$$);
EXECUTE u_dequeue1('sec_u');
EXECUTE u_metrics('sec_u');
EXECUTE u_waiters('sec_u');
EXECUTE u_reap('sec_u');
EXECUTE u_purge('sec_u');
EXECUTE u_drop('sec_u2', 'false');
EXECUTE u_drop('sec_u', 'false');
DEALLOCATE ALL;

SELECT broker.drop_queue('sec_q');
REVOKE EXECUTE ON FUNCTION broker.maintain_segments() FROM sec_evil;
REVOKE USAGE ON SCHEMA regress FROM sec_evil;
DROP SCHEMA sec_evil CASCADE;
DROP TABLE public.sec_stolen;
DROP ROLE sec_evil;
