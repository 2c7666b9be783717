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
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

-- broker.segments is no longer filled by the install script (a dump of it
-- restored into a new installation met a duplicate key); the rows a 0.1.0
-- installation has stay valid.
