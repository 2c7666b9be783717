/* broker_proxy--0.1.0.sql: broker's SQL interface on a proxy database.
 *
 * The proxy database has no queues.  Its functions have the names and
 * arguments of broker 0.2.0's; each call runs on the broker node that owns
 * the queue, through PL/Proxy (cluster 'broker'), in a transaction of its
 * own there.  Where a queue lives is the directory broker_proxy.directory
 * (queue -> node); a new queue goes to a node chosen by the hash of its
 * name (or to its dead-letter queue's node).  Acknowledgements and lookups
 * by message id are routed by the id itself: add_node gives each node its
 * own range of message ids, (part + 1) * 10^15 on, so an id names its node
 * even after its queue has moved.  See docs/scale-out.md.
 */

\echo Use "CREATE EXTENSION broker_proxy CASCADE" to load this file. \quit

-- The proxy is a database of its own, without broker, and the schemas that
-- hold code it runs as a superuser must be ones no other role can change
-- (the rule broker itself keeps for its schema).
DO $check$
DECLARE
    n record;
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_extension e
                WHERE e.extname OPERATOR(pg_catalog.=) 'broker') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'broker_proxy cannot be installed in a database that has the broker extension',
            DETAIL = 'broker_proxy defines functions of the same names as broker''s in schema broker; the proxy is a database of its own.',
            HINT = 'Create a database for the proxy (CREATE DATABASE broker_proxy) and install broker_proxy there.';
    END IF;
    FOR n IN
        SELECT s.nspname, r.rolname, r.rolsuper, s.nspacl, s.nspowner
          FROM pg_catalog.pg_namespace s
          JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.nspowner
         WHERE s.nspname OPERATOR(pg_catalog.=) ANY (ARRAY['broker', 'plproxy'])
    LOOP
        IF NOT n.rolsuper THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = pg_catalog.format('schema "%s" is owned by role %I, which is not a superuser', n.nspname, n.rolname),
                DETAIL = 'broker_proxy keeps code that runs with a superuser''s rights in it; another owner could replace it.',
                HINT = 'Drop or rename that schema, then run CREATE EXTENSION broker_proxy again.';
        END IF;
        IF EXISTS (SELECT FROM pg_catalog.aclexplode(n.nspacl) a
                    WHERE a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                      AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = pg_catalog.format('schema "%s" grants CREATE to roles other than its owner', n.nspname),
                HINT = pg_catalog.format('Revoke CREATE on schema %s from them, then run CREATE EXTENSION broker_proxy again.', n.nspname);
        END IF;
    END LOOP;
END
$check$;

CREATE SCHEMA broker_proxy;
-- PL/Proxy reads the cluster configuration from functions of this schema.
CREATE SCHEMA IF NOT EXISTS plproxy;
GRANT USAGE ON SCHEMA broker, broker_proxy, plproxy TO PUBLIC;

-- The directory -----------------------------------------------------------

-- The broker nodes: part is the node's PL/Proxy partition number (0, 1, ...
-- in the order they were added, never reused) and fixes its message-id
-- range, (part + 1) * 10^15 to (part + 2) * 10^15 - 1.
CREATE TABLE broker_proxy.nodes (
    part         integer PRIMARY KEY CHECK (part BETWEEN 0 AND 8999),
    name         text NOT NULL UNIQUE
                 CHECK (name OPERATOR(pg_catalog.~) '^[a-z_][a-z0-9_]{0,47}$'),
    conninfo     text NOT NULL,
    identity     text NOT NULL UNIQUE,       -- system identifier/database: one entry per node
    accepting    boolean NOT NULL DEFAULT true,   -- new queues may be placed here
    down         boolean NOT NULL DEFAULT false,  -- marked unreachable: calls fail at once
    down_reason  text,
    added_at     timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Where each queue is.  part: the node that takes its new messages and its
-- consumers.  While it moves (broker_proxy.move_queue), state is 'moving'
-- (other_part: the node it goes to) and then 'draining' (part is the new
-- node, other_part the old one, which still has the messages that were
-- leased when it moved).
CREATE TABLE broker_proxy.directory (
    queue          text PRIMARY KEY
                   CHECK (queue OPERATOR(pg_catalog.~) '^[a-z_][a-z0-9_]{0,47}$'),
    part           integer NOT NULL REFERENCES broker_proxy.nodes (part),
    state          text NOT NULL DEFAULT 'ready'
                   CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['ready', 'moving', 'draining'])),
    other_part     integer REFERENCES broker_proxy.nodes (part),
    subscriptions  text[],           -- the queue's topic patterns, kept during a move
    placed_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK ((state OPERATOR(pg_catalog.=) 'ready') OPERATOR(pg_catalog.=) (other_part IS NULL))
);
CREATE INDEX directory_part ON broker_proxy.directory (part);

-- PL/Proxy settings of the cluster (plproxy.get_cluster_config): query_timeout,
-- connection_lifetime, disable_binary, default_user (modular_mapping is set).
CREATE TABLE broker_proxy.settings (
    key    text PRIMARY KEY
           CHECK (key OPERATOR(pg_catalog.=) ANY (ARRAY['query_timeout', 'connection_lifetime',
                                                        'disable_binary', 'default_user'])),
    value  text NOT NULL
);

-- Bumped whenever the nodes or the settings change: PL/Proxy reloads the
-- cluster when it sees a new version (it asks on every call).
CREATE TABLE broker_proxy.config_version (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    version  integer NOT NULL
);
INSERT INTO broker_proxy.config_version VALUES (true, 1);

CREATE FUNCTION broker_proxy._bump_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE broker_proxy.config_version SET version = version + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER nodes_version AFTER INSERT OR DELETE OR UPDATE OF part, conninfo
    ON broker_proxy.nodes FOR EACH STATEMENT EXECUTE FUNCTION broker_proxy._bump_version();
CREATE TRIGGER settings_version AFTER INSERT OR DELETE OR UPDATE
    ON broker_proxy.settings FOR EACH STATEMENT EXECUTE FUNCTION broker_proxy._bump_version();

SELECT pg_catalog.pg_extension_config_dump('broker_proxy.nodes', '');
SELECT pg_catalog.pg_extension_config_dump('broker_proxy.directory', '');
SELECT pg_catalog.pg_extension_config_dump('broker_proxy.settings', '');
SELECT pg_catalog.pg_extension_config_dump('broker_proxy.config_version', '');

-- Placement is public, as broker.queues is on a node; connection strings
-- (which may hold passwords) are not.
REVOKE ALL ON broker_proxy.nodes, broker_proxy.directory, broker_proxy.settings,
              broker_proxy.config_version FROM PUBLIC;
GRANT SELECT ON broker_proxy.directory, broker_proxy.config_version TO PUBLIC;
GRANT SELECT (part, name, accepting, down, down_reason, added_at) ON broker_proxy.nodes TO PUBLIC;

CREATE VIEW broker_proxy.placement AS
    SELECT d.queue, n.name AS node, d.state, o.name AS other_node, d.placed_at
      FROM broker_proxy.directory d
      JOIN broker_proxy.nodes n ON n.part OPERATOR(pg_catalog.=) d.part
      LEFT JOIN broker_proxy.nodes o ON o.part OPERATOR(pg_catalog.=) d.other_part;
GRANT SELECT ON broker_proxy.placement TO PUBLIC;

-- PL/Proxy's cluster configuration (cluster 'broker') -------------------------

-- Asked on every proxied call: kept to one indexed read.
CREATE FUNCTION plproxy.get_cluster_version(cluster_name text)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN $1 OPERATOR(pg_catalog.=) 'broker'
                THEN (SELECT v.version FROM broker_proxy.config_version v)
                ELSE broker_proxy._unknown_cluster($1) END
$$;

CREATE FUNCTION broker_proxy._unknown_cluster(cluster_name text)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'undefined_object',
        MESSAGE = pg_catalog.format('PL/Proxy cluster "%s" is not defined', cluster_name),
        DETAIL = 'The cluster configuration functions of this database serve broker_proxy''s cluster "broker" only.',
        HINT = 'Define other clusters with SQL/MED (CREATE SERVER ... FOREIGN DATA WRAPPER plproxy).';
END
$$;

-- The nodes' connection strings in partition order; PL/Proxy adds
-- user=<current user> when there is no user= (so a node checks the same
-- role's privileges as broker does).
CREATE FUNCTION plproxy.get_cluster_partitions(cluster_name text)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    expect integer := 0;
    r record;
BEGIN
    IF cluster_name <> 'broker' THEN
        PERFORM broker_proxy._unknown_cluster(cluster_name);
    END IF;
    FOR r IN SELECT n.part, n.conninfo FROM broker_proxy.nodes n ORDER BY n.part LOOP
        IF r.part <> expect THEN
            RAISE EXCEPTION 'broker_proxy: node partitions are not numbered 0, 1, ...: % follows %',
                r.part, expect - 1;
        END IF;
        expect := expect + 1;
        RETURN NEXT r.conninfo || ' fallback_application_name=broker_proxy';
    END LOOP;
    IF expect = 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'broker_proxy has no nodes',
            HINT = 'Add the broker nodes with broker_proxy.add_node(name, conninfo).';
    END IF;
END
$$;

CREATE FUNCTION plproxy.get_cluster_config(IN cluster_name text, OUT key text, OUT val text)
RETURNS SETOF record LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cluster_name <> 'broker' THEN
        PERFORM broker_proxy._unknown_cluster(cluster_name);
    END IF;
    -- partition = the number the routing functions return, any node count
    key := 'modular_mapping'; val := '1'; RETURN NEXT;
    FOR key, val IN SELECT s.key, s.value FROM broker_proxy.settings s LOOP
        RETURN NEXT;
    END LOOP;
END
$$;

-- Routing ---------------------------------------------------------------------

-- Advisory lock classes (first key): producers of a queue hold the pause
-- lock shared while they route and call, move_queue takes it exclusive to
-- pause them; likewise publish and the publish lock (second key 0); one
-- mover per queue.
CREATE FUNCTION broker_proxy._lock_class(kind text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE $1 WHEN 'pause' THEN 1651663216 WHEN 'publish' THEN 1651663217
                   WHEN 'mover' THEN 1651663218 END
$$;

-- The transaction check (C): 25001 inside a transaction block or (writes)
-- after this transaction wrote, unless broker_proxy.allow_transaction_block.
CREATE FUNCTION broker_proxy._check_autocommit(fn text, queue text, writes boolean DEFAULT true)
RETURNS void AS 'MODULE_PATHNAME', 'broker_proxy_check_autocommit'
LANGUAGE C VOLATILE;

CREATE FUNCTION broker_proxy._check_name(queue text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF queue IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_name', MESSAGE = 'queue name must not be null',
            DETAIL = 'A queue name is 1 to 48 characters of a-z, 0-9 and _, and does not start with a digit.';
    END IF;
    IF queue !~ '^[a-z_][a-z0-9_]{0,47}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_name',
            MESSAGE = pg_catalog.format('invalid queue name "%s"', pg_catalog.left(queue, 64)),
            DETAIL = 'A queue name is 1 to 48 characters of a-z, 0-9 and _, and does not start with a digit.';
    END IF;
END
$$;

CREATE FUNCTION broker_proxy._node_down(part integer, queue text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    n record;
BEGIN
    SELECT x.name, x.down_reason INTO n FROM broker_proxy.nodes x WHERE x.part = $1;
    RAISE EXCEPTION USING
        ERRCODE = 'connection_failure',
        MESSAGE = CASE WHEN queue IS NULL
                       THEN pg_catalog.format('broker node "%s" is marked down', n.name)
                       ELSE pg_catalog.format('broker node "%s" of queue "%s" is marked down', n.name, queue) END,
        DETAIL = pg_catalog.format('broker_proxy.check_nodes() could not reach it: %s',
                                   coalesce(n.down_reason, 'marked by hand')),
        HINT = 'Calls for its queues fail at once until it is up again: SELECT * FROM broker_proxy.check_nodes();';
END
$$;

-- The node of a queue, for a call of broker.<fn> (PL/Proxy's RUN ON).
-- Calls that change messages are refused in a transaction block, and
-- producers (enqueue, enqueue_batch) hold the queue's pause lock shared
-- until their call has committed on the node, so a move can pause them.
CREATE FUNCTION broker_proxy._route(queue text, fn text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    d record;
BEGIN
    IF fn IN ('enqueue', 'enqueue_batch') THEN
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(broker_proxy._lock_class('pause'),
                                                        pg_catalog.hashtext(queue));
    END IF;
    -- (a new statement: after the lock, the directory as a move left it)
    SELECT x.part, x.state, n.down INTO d
      FROM broker_proxy.directory x JOIN broker_proxy.nodes n USING (part)
     WHERE x.queue = $1;
    IF NOT FOUND THEN
        PERFORM broker_proxy._check_name(queue);
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('queue "%s" does not exist', queue),
            DETAIL = 'The proxy''s directory (broker_proxy.directory) has no queue of that name.';
    END IF;
    IF d.state <> 'ready' AND fn IN ('purge_queue', 'subscribe', 'unsubscribe', 'grant', 'revoke') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_in_use',
            MESSAGE = pg_catalog.format('queue "%s" is being moved', queue),
            DETAIL = pg_catalog.format('broker.%s waits until the move (state %s) has ended.', fn, d.state),
            HINT = 'See broker_proxy.placement; a move that stopped is finished with CALL broker_proxy.move_queue or broker_proxy.drain_queue.';
    END IF;
    IF d.down THEN
        PERFORM broker_proxy._node_down(d.part, queue);
    END IF;
    RETURN d.part;
END
$$;

-- The node of a message id: its id range (see add_node); an id below every
-- range (a message enqueued before the node was added) goes to the queue's
-- node.
CREATE FUNCTION broker_proxy._route_id(queue text, id bigint, fn text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    p integer;
    d boolean;
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed', MESSAGE = 'id must not be null';
    END IF;
    IF id < 1000000000000000 THEN
        RETURN broker_proxy._route(queue, fn);
    END IF;
    p := (id / 1000000000000000)::integer - 1;
    SELECT n.down INTO d FROM broker_proxy.nodes n WHERE n.part = p;
    IF NOT FOUND THEN
        PERFORM broker_proxy._check_name(queue);
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('message id %s belongs to no broker node', id),
            DETAIL = pg_catalog.format('Its id range is that of node partition %s, which the proxy does not have.', p);
    END IF;
    IF d THEN
        PERFORM broker_proxy._node_down(p, queue);
    END IF;
    RETURN p;
END
$$;

CREATE FUNCTION broker_proxy._route_id(queue text, id text, fn text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN broker_proxy._route_id(queue, id::bigint, fn);
END
$$;

-- Every node, for a call that must reach all of them (publish, grants on
-- '*'): refused when one is marked down, as the call would not reach it.
CREATE FUNCTION broker_proxy._route_all(fn text) RETURNS SETOF integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
BEGIN
    IF fn = 'publish' THEN
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(broker_proxy._lock_class('publish'), 0);
    END IF;
    FOR r IN SELECT n.part, n.down FROM broker_proxy.nodes n ORDER BY n.part LOOP
        IF r.down THEN
            PERFORM broker_proxy._node_down(r.part, NULL);
        END IF;
        RETURN NEXT r.part;
    END LOOP;
END
$$;

-- The nodes that hold a queue's messages (two while it drains), or every
-- node for NULL: for metrics and waiters.
CREATE FUNCTION broker_proxy._parts_of(queue text) RETURNS SETOF integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d record;
BEGIN
    IF queue IS NULL THEN
        RETURN QUERY SELECT n.part FROM broker_proxy.nodes n ORDER BY n.part;
        RETURN;
    END IF;
    SELECT x.part, x.other_part INTO d FROM broker_proxy.directory x WHERE x.queue = $1;
    IF NOT FOUND THEN
        PERFORM broker_proxy._route(queue, 'metrics');    -- raises the errors of an unknown queue
    END IF;
    RETURN NEXT d.part;
    IF d.other_part IS NOT NULL THEN
        RETURN NEXT d.other_part;
    END IF;
END
$$;

-- Where a client makes a transactional enqueue: the node that takes the
-- queue's new messages, and how to reach it (the proxy's connection string
-- without its password).
CREATE FUNCTION broker_proxy.node_for(queue text)
RETURNS TABLE (node text, conninfo text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
        SELECT n.name,
               pg_catalog.btrim(pg_catalog.regexp_replace(n.conninfo,
                   '\s*password\s*=\s*(''([^''\\]|\\.)*''|\S+)', '', 'g'))
          FROM broker_proxy.directory d JOIN broker_proxy.nodes n USING (part)
         WHERE d.queue = $1;
    IF NOT FOUND THEN
        PERFORM broker_proxy._route(queue, 'metrics');
    END IF;
END
$$;

-- The types of broker 0.2.0 ---------------------------------------------------

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

-- Calls on one given node (internal) --------------------------------------------

CREATE FUNCTION broker_proxy._create_queue_on(p integer, queue text, lease interval,
    max_message_size integer, default_ttl interval, max_deliveries integer,
    dead_letter_queue text, if_not_exists boolean, dedup_window interval,
    retention interval, max_lease interval)
RETURNS void LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT broker.create_queue(queue, lease, max_message_size, default_ttl, max_deliveries,
                               dead_letter_queue, if_not_exists, dedup_window, retention,
                               max_lease) AS r;
$$;

CREATE FUNCTION broker_proxy._drop_queue_on(p integer, queue text, if_exists boolean)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT broker.drop_queue(queue, if_exists) AS r;
$$;

CREATE FUNCTION broker_proxy._queue_exists_on(p integer, queue text)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT EXISTS (SELECT FROM broker.queues x WHERE x.queue = queue) AS r;
$$;

-- The move's copy: one transaction on the node, messages in the order given.
CREATE FUNCTION broker_proxy._copy_into(p integer, q text, payloads jsonb[], delays interval[],
    ttls interval[], hdrs jsonb[], gkeys text[], dkeys text[], prios integer[])
RETURNS SETOF bigint LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT broker.enqueue(q, u.payload, u.delay, u.ttl, u.headers, u.group_key, u.dedup_key,
                          u.priority) AS r
      FROM unnest(payloads, delays, ttls, hdrs, gkeys, dkeys, prios)
           WITH ORDINALITY AS u(payload, delay, ttl, headers, group_key, dedup_key, priority, n)
     ORDER BY u.n;
$$;

CREATE FUNCTION broker_proxy._metrics_on(p integer, queue text)
RETURNS TABLE(queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint,
              dead_lettered_total bigint, completed_total bigint,
              failed_total bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT m.queue, m.ready, m.leased, m.delayed, m.total, m.oldest_ready_age,
           m.enqueued_total, m.deleted_total, m.expired_total, m.dead_lettered_total,
           m.completed_total, m.failed_total
      FROM broker.metrics(queue) m;
$$;

CREATE FUNCTION broker_proxy._waiters_on(p integer, queue text)
RETURNS TABLE(queue text, waiting integer, wakeups bigint, empty_wakeups bigint,
              low_water_mark bigint, next_due timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT w.queue, w.waiting, w.wakeups, w.empty_wakeups, w.low_water_mark, w.next_due
      FROM broker.waiters(queue) w;
$$;

CREATE FUNCTION broker_proxy._queues_on(p integer)
RETURNS TABLE(queue text, lease interval, max_message_size integer, default_ttl interval,
              max_deliveries integer, dead_letter_queue text, created_at timestamptz,
              dedup_window interval, retention interval, max_lease interval)
LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT q.queue, q.lease, q.max_message_size, q.default_ttl, q.max_deliveries,
           q.dead_letter_queue, q.created_at, q.dedup_window, q.retention, q.max_lease
      FROM broker.queues q;
$$;

CREATE FUNCTION broker_proxy._subscriptions_on(p integer)
RETURNS TABLE(queue text, pattern text)
LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT s.queue, s.pattern FROM broker.subscriptions s;
$$;

CREATE FUNCTION broker_proxy._grants_on(p integer)
RETURNS TABLE(queue text, role name, privilege text)
LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT g.queue, g.role, g.privilege FROM broker.grants g;
$$;

CREATE FUNCTION broker_proxy._consumers_on(p integer)
RETURNS TABLE(consumer text, queue text, delivered bigint, deleted bigint, last_seen timestamptz)
LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON p;
    SELECT c.consumer, c.queue, c.delivered, c.deleted, c.last_seen FROM broker.consumers c;
$$;

-- Directory changes made by create_queue and drop_queue, which run as their
-- caller (the node checks the caller's privileges): these run as the
-- extension's owner and write only what the node confirms.
CREATE FUNCTION broker_proxy._place(queue text, p integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cur integer;
BEGIN
    SELECT d.part INTO cur FROM broker_proxy.directory d WHERE d.queue = $1;
    IF FOUND THEN
        IF cur <> p THEN
            RAISE EXCEPTION 'broker_proxy: queue "%" is placed on partition %, not %', queue, cur, p;
        END IF;
        RETURN;
    END IF;
    IF NOT broker_proxy._queue_exists_on(p, queue) THEN
        RAISE EXCEPTION 'broker_proxy: queue "%" is not on node partition %', queue, p;
    END IF;
    INSERT INTO broker_proxy.directory (queue, part) VALUES ($1, p) ON CONFLICT DO NOTHING;
END
$$;

CREATE FUNCTION broker_proxy._unplace(queue text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p integer;
BEGIN
    SELECT d.part INTO p FROM broker_proxy.directory d WHERE d.queue = $1 AND d.state = 'ready';
    IF FOUND AND NOT broker_proxy._queue_exists_on(p, queue) THEN
        DELETE FROM broker_proxy.directory d WHERE d.queue = $1;
    END IF;
END
$$;

-- Where a new queue goes: its dead-letter queue's node, else the hash of its
-- name over the nodes that accept new queues.
CREATE FUNCTION broker_proxy._placement_for(queue text, dead_letter_queue text) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    p integer;
    n integer;
BEGIN
    SELECT d.part INTO p FROM broker_proxy.directory d WHERE d.queue = $1;
    IF FOUND THEN
        RETURN p;
    END IF;
    IF dead_letter_queue IS NOT NULL THEN
        SELECT d.part INTO p FROM broker_proxy.directory d WHERE d.queue = $2;
        IF FOUND THEN
            RETURN p;
        END IF;
    END IF;
    SELECT pg_catalog.count(*) INTO n FROM broker_proxy.nodes x WHERE x.accepting AND NOT x.down;
    IF n = 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'no broker node accepts new queues',
            HINT = 'Add a node (broker_proxy.add_node) or let one accept queues (broker_proxy.set_node).';
    END IF;
    SELECT x.part INTO p FROM broker_proxy.nodes x WHERE x.accepting AND NOT x.down
     ORDER BY x.part OFFSET ((pg_catalog.hashtext(queue)::bigint % n) + n) % n LIMIT 1;
    RETURN p;
END
$$;

-- broker's functions, routed ----------------------------------------------------

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
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    p integer;
BEGIN
    -- (not the check for writes: the directory row of a create_queue earlier in
    -- the same statement is one)
    PERFORM broker_proxy._check_autocommit('create_queue', queue, false);
    PERFORM broker_proxy._check_name(queue);
    p := broker_proxy._placement_for(queue, dead_letter_queue);
    IF (SELECT n.down FROM broker_proxy.nodes n WHERE n.part = p) THEN
        PERFORM broker_proxy._node_down(p, queue);
    END IF;
    -- on the node first (as the caller: the node checks the privilege),
    -- then in the directory, once the node has it
    BEGIN
        PERFORM broker_proxy._create_queue_on(p, queue, lease, max_message_size, default_ttl,
                                              max_deliveries, dead_letter_queue, if_not_exists,
                                              dedup_window, retention, max_lease);
        PERFORM broker_proxy._place(queue, p);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'create_queue', queue,
                                          (p::bigint + 1) * 1000000000000000);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker.drop_queue(queue text, if_exists boolean DEFAULT false)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    p integer;
    dropped boolean;
BEGIN
    PERFORM broker_proxy._check_autocommit('drop_queue', queue, false);
    PERFORM broker_proxy._check_name(queue);
    IF NOT EXISTS (SELECT FROM broker_proxy.directory d WHERE d.queue = $1) AND if_exists THEN
        RAISE NOTICE 'queue "%" does not exist, skipping', queue;
        RETURN false;
    END IF;
    p := broker_proxy._route(queue, 'drop_queue');
    IF (SELECT d.state FROM broker_proxy.directory d WHERE d.queue = $1) <> 'ready' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = pg_catalog.format('queue "%s" is being moved', queue),
            HINT = 'Drop it when the move has ended (broker_proxy.placement).';
    END IF;
    BEGIN
        dropped := broker_proxy._drop_queue_on(p, queue, if_exists);
        PERFORM broker_proxy._unplace(queue);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'drop_queue', queue, NULL);
        RAISE;
    END;
    RETURN dropped;
END
$$;

-- A message id given as text, or NULL if it is not one (the node then says
-- what is wrong with it).
CREATE FUNCTION broker_proxy._id_or_null(id text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN id::bigint;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

-- PL/Proxy reports a node it cannot reach, or a connection lost in the
-- middle of a call, as an internal error (XX000) naming the node's
-- database only.  broker's functions on the proxy turn it into 08006
-- (connection_failure) naming the node and the queue; other internal errors
-- pass unchanged (the caller re-raises them).  The node: by the message id
-- (its range), else the queue's, else unknown (a call to every node).
CREATE FUNCTION broker_proxy._unreachable(err text, fn text, queue text, id bigint)
RETURNS void LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    node text;
    p integer;
    what text;
BEGIN
    IF err !~ '^PL/Proxy function ' THEN
        RETURN;
    END IF;
    IF err ~ '\] (PQconnectStart|PQconnectPoll): ' OR err ~ ': connect timeout to: ' THEN
        what := 'cannot be reached';
    ELSIF err ~ '\] (PQconsumeInput|PQsendQuery|PQsendQueryParams|PQflush|PQsendPrepare|PQsendQueryPrepared): '
          OR err ~ ': (Lost result|Unfinished connection)' THEN
        what := 'lost';
    ELSIF err ~ ': query timeout$' THEN
        what := 'timeout';
    ELSE
        RETURN;
    END IF;
    IF id IS NOT NULL AND id >= 1000000000000000 THEN
        p := (id / 1000000000000000)::integer - 1;
    ELSIF queue IS NOT NULL THEN
        SELECT d.part INTO p FROM broker_proxy.directory d WHERE d.queue = $3;
    END IF;
    SELECT n.name INTO node FROM broker_proxy.nodes n WHERE n.part = p;
    node := CASE WHEN node IS NULL THEN 'a broker node' ELSE format('broker node "%s"', node) END;
    IF what = 'cannot be reached' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'connection_failure',
            MESSAGE = CASE WHEN queue IS NULL
                           THEN format('broker.%s through broker_proxy: %s cannot be reached', fn, node)
                           ELSE format('broker.%s through broker_proxy: %s of queue "%s" cannot be reached', fn, node, queue) END,
            DETAIL = err || CASE WHEN fn IN ('publish', 'grant', 'revoke') AND p IS NULL
                                 THEN E'\nA call to every node is not atomic across them: it may have run on the others.'
                                 ELSE E'\nThe call did not run there.' END,
            HINT = 'Queues on the other nodes are not affected.  SELECT * FROM broker_proxy.check_nodes() marks the node down, so that calls for its queues fail at once without a connection attempt.';
    ELSIF what = 'lost' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'connection_failure',
            MESSAGE = CASE WHEN queue IS NULL
                           THEN format('broker.%s through broker_proxy: the connection to %s was lost during the call', fn, node)
                           ELSE format('broker.%s through broker_proxy: the connection to %s of queue "%s" was lost during the call', fn, node, queue) END,
            DETAIL = err || E'\nWhether the call took effect there is not known: a retried enqueue should carry a dedup key.',
            HINT = 'SELECT * FROM broker_proxy.check_nodes() tells whether the node is up.';
    ELSE
        RAISE EXCEPTION USING
            ERRCODE = 'query_canceled',
            MESSAGE = format('broker.%s through broker_proxy: %s did not answer within the query_timeout of the proxy', fn, node),
            DETAIL = err || E'\nWhether the call took effect there is not known.';
    END IF;
END
$$;

CREATE FUNCTION broker_proxy._purge_queue(queue text)
RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'purge_queue');
    TARGET broker.purge_queue;
$$;

CREATE FUNCTION broker.purge_queue(
    queue text)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('purge_queue', $1);
    BEGIN
        RETURN broker_proxy._purge_queue($1);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'purge_queue', $1, NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._enqueue(queue text, payload jsonb, delay interval, ttl interval, headers jsonb, group_key text, dedup_key text, priority integer)
RETURNS bigint LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'enqueue');
    TARGET broker.enqueue;
$$;

CREATE FUNCTION broker.enqueue(
    queue text,
    payload jsonb,
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    group_key text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    priority integer DEFAULT 0)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('enqueue', $1);
    BEGIN
        RETURN broker_proxy._enqueue($1, $2, $3, $4, $5, $6, $7, $8);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'enqueue', $1, NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._enqueue_batch(queue text, payloads jsonb[], delay interval, ttl interval, headers jsonb, group_keys text[], dedup_keys text[], priority integer)
RETURNS SETOF bigint LANGUAGE plproxy ROWS 100 AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'enqueue_batch');
    TARGET broker.enqueue_batch;
$$;

CREATE FUNCTION broker.enqueue_batch(
    queue text,
    payloads jsonb[],
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    group_keys text[] DEFAULT NULL,
    dedup_keys text[] DEFAULT NULL,
    priority integer DEFAULT 0)
RETURNS SETOF bigint LANGUAGE plpgsql ROWS 100 AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('enqueue_batch', $1);
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._enqueue_batch($1, $2, $3, $4, $5, $6, $7, $8);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'enqueue_batch', $1, NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._subscribe(queue text, pattern text)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'subscribe');
    TARGET broker.subscribe;
$$;

CREATE FUNCTION broker.subscribe(
    queue text,
    pattern text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('subscribe', $1);
    BEGIN
        RETURN broker_proxy._subscribe($1, $2);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'subscribe', $1, NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._unsubscribe(queue text, pattern text)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'unsubscribe');
    TARGET broker.unsubscribe;
$$;

CREATE FUNCTION broker.unsubscribe(
    queue text,
    pattern text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('unsubscribe', $1);
    BEGIN
        RETURN broker_proxy._unsubscribe($1, $2);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'unsubscribe', $1, NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._dequeue(queue text, max_messages integer, lease interval, wait interval)
RETURNS SETOF broker.message LANGUAGE plproxy ROWS 1 AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'dequeue');
    TARGET broker.dequeue;
$$;

CREATE FUNCTION broker.dequeue(
    queue text,
    max_messages integer DEFAULT 1,
    lease interval DEFAULT NULL,
    wait interval DEFAULT '0')
RETURNS SETOF broker.message LANGUAGE plpgsql ROWS 1 AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('dequeue', $1);
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._dequeue($1, $2, $3, $4);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'dequeue', $1, NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._delete(queue text, id bigint, receipt bigint)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'delete');
    TARGET broker.delete;
$$;

CREATE FUNCTION broker.delete(
    queue text,
    id bigint,
    receipt bigint DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('delete', $1);
    BEGIN
        RETURN broker_proxy._delete($1, $2, $3);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'delete', $1, $2);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._delete_text(queue text, id text, receipt text)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'delete');
    TARGET broker.delete;
$$;

CREATE FUNCTION broker.delete(
    queue text,
    id text,
    receipt text DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('delete', $1);
    BEGIN
        RETURN broker_proxy._delete_text($1, $2, $3);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'delete', $1, broker_proxy._id_or_null($2));
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._delete_many(queue text, ids bigint[])
RETURNS SETOF bigint LANGUAGE plproxy ROWS 10 AS $$
    CLUSTER 'broker';
    SPLIT ids;
    RUN ON broker_proxy._route_id(queue, ids, 'delete');
    TARGET broker.delete;
$$;

CREATE FUNCTION broker.delete(
    queue text,
    ids bigint[])
RETURNS SETOF bigint LANGUAGE plpgsql ROWS 10 AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('delete', $1);
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._delete_many($1, $2);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'delete', $1, $2[1]);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._release(queue text, id bigint, receipt bigint, delay interval)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'release');
    TARGET broker.release;
$$;

CREATE FUNCTION broker.release(
    queue text,
    id bigint,
    receipt bigint,
    delay interval DEFAULT '0')
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('release', $1);
    BEGIN
        RETURN broker_proxy._release($1, $2, $3, $4);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'release', $1, $2);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._extend_lease(queue text, id bigint, receipt bigint, lease interval)
RETURNS timestamptz LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'extend_lease');
    TARGET broker.extend_lease;
$$;

CREATE FUNCTION broker.extend_lease(
    queue text,
    id bigint,
    receipt bigint,
    lease interval)
RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('extend_lease', $1);
    BEGIN
        RETURN broker_proxy._extend_lease($1, $2, $3, $4);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'extend_lease', $1, $2);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._complete(queue text, id bigint, receipt bigint, result jsonb)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'complete');
    TARGET broker.complete;
$$;

CREATE FUNCTION broker.complete(
    queue text,
    id bigint,
    receipt bigint DEFAULT NULL,
    result jsonb DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('complete', $1);
    BEGIN
        RETURN broker_proxy._complete($1, $2, $3, $4);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'complete', $1, $2);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._fail(queue text, id bigint, receipt bigint, error jsonb)
RETURNS boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'fail');
    TARGET broker.fail;
$$;

CREATE FUNCTION broker.fail(
    queue text,
    id bigint,
    receipt bigint DEFAULT NULL,
    error jsonb DEFAULT NULL)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('fail', $1);
    BEGIN
        RETURN broker_proxy._fail($1, $2, $3, $4);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'fail', $1, $2);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._status(queue text, id bigint)
RETURNS SETOF broker.job LANGUAGE plproxy ROWS 1 AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'status');
    TARGET broker.status;
$$;

CREATE FUNCTION broker.status(
    queue text,
    id bigint)
RETURNS SETOF broker.job LANGUAGE plpgsql ROWS 1 AS $$
BEGIN
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._status($1, $2);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'status', $1, $2);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._status_text(queue text, id text)
RETURNS SETOF broker.job LANGUAGE plproxy ROWS 1 AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_id(queue, id, 'status');
    TARGET broker.status;
$$;

CREATE FUNCTION broker.status(
    queue text,
    id text)
RETURNS SETOF broker.job LANGUAGE plpgsql ROWS 1 AS $$
BEGIN
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._status_text($1, $2);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'status', $1, broker_proxy._id_or_null($2));
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._status_many(queue text, ids bigint[])
RETURNS SETOF broker.job LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    SPLIT ids;
    RUN ON broker_proxy._route_id(queue, ids, 'status');
    TARGET broker.status;
$$;

CREATE FUNCTION broker.status(
    queue text,
    ids bigint[])
RETURNS SETOF broker.job LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._status_many($1, $2);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'status', $1, $2[1]);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker_proxy._archive(queue text, after_id bigint, max_rows integer)
RETURNS SETOF broker.job LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route(queue, 'archive');
    TARGET broker.archive;
$$;

CREATE FUNCTION broker.archive(
    queue text,
    after_id bigint DEFAULT 0,
    max_rows integer DEFAULT 100)
RETURNS SETOF broker.job LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        RETURN QUERY SELECT * FROM broker_proxy._archive($1, $2, $3);
        RETURN;
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'archive', $1, NULL);
        RAISE;
    END;
END
$$;

-- publish: on every node (each has its own subscriptions), in parallel; one
-- node's commit does not wait for the others', and the fan-out is not
-- atomic across them (a node that fails leaves the others' copies).
CREATE FUNCTION broker_proxy._publish_all(
    topic text, payload jsonb, delay interval, ttl interval, headers jsonb,
    group_key text, dedup_key text, priority integer)
RETURNS SETOF integer LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_all('publish');
    TARGET broker.publish;
$$;

CREATE FUNCTION broker.publish(
    topic text,
    payload jsonb,
    delay interval DEFAULT '0',
    ttl interval DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    group_key text DEFAULT NULL,
    dedup_key text DEFAULT NULL,
    priority integer DEFAULT 0)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('publish', NULL);
    BEGIN
        RETURN (SELECT coalesce(pg_catalog.sum(n), 0)::integer
                  FROM broker_proxy._publish_all($1, $2, $3, $4, $5, $6, $7, $8) AS n);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'publish', NULL, NULL);
        RAISE;
    END;
END
$$;

-- grant and revoke: on the queue's node, or on every node for '*'
CREATE FUNCTION broker_proxy._route_grant(queue text, fn text) RETURNS SETOF integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF queue = '*' THEN
        RETURN QUERY SELECT broker_proxy._route_all(fn);
    ELSE
        RETURN NEXT broker_proxy._route(queue, fn);
    END IF;
END
$$;

CREATE FUNCTION broker_proxy._grant_all(queue text, role name, privilege text)
RETURNS SETOF boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_grant(queue, 'grant');
    TARGET broker.grant;
$$;

CREATE FUNCTION broker_proxy._revoke_all(queue text, role name, privilege text)
RETURNS SETOF boolean LANGUAGE plproxy AS $$
    CLUSTER 'broker';
    RUN ON broker_proxy._route_grant(queue, 'revoke');
    TARGET broker.revoke;
$$;

CREATE FUNCTION broker.grant(queue text, role name, privilege text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('grant', $1);
    BEGIN
        RETURN (SELECT pg_catalog.bool_or(g) FROM broker_proxy._grant_all($1, $2, $3) AS g);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'grant', nullif($1, '*'), NULL);
        RAISE;
    END;
END
$$;

CREATE FUNCTION broker.revoke(queue text, role name, privilege text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_proxy._check_autocommit('revoke', $1);
    BEGIN
        RETURN (SELECT pg_catalog.bool_or(g) FROM broker_proxy._revoke_all($1, $2, $3) AS g);
    EXCEPTION WHEN internal_error THEN
        PERFORM broker_proxy._unreachable(SQLERRM, 'revoke', nullif($1, '*'), NULL);
        RAISE;
    END;
END
$$;

-- Observing: from every node ------------------------------------------------------

-- One row per queue, summed over the nodes that hold its messages (two
-- while it drains after a move).  Fails (08006) if a node cannot be
-- reached: broker_proxy.node_metrics() tells what the others say then.
CREATE FUNCTION broker_proxy._metrics(q text)
RETURNS TABLE(queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint,
              dead_lettered_total bigint, completed_total bigint,
              failed_total bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT m.queue, pg_catalog.sum(m.ready)::bigint, pg_catalog.sum(m.leased)::bigint,
           pg_catalog.sum(m.delayed)::bigint, pg_catalog.sum(m.total)::bigint,
           pg_catalog.max(m.oldest_ready_age), pg_catalog.sum(m.enqueued_total)::bigint,
           pg_catalog.sum(m.deleted_total)::bigint, pg_catalog.sum(m.expired_total)::bigint,
           pg_catalog.sum(m.dead_lettered_total)::bigint,
           pg_catalog.sum(m.completed_total)::bigint, pg_catalog.sum(m.failed_total)::bigint
      FROM broker_proxy._parts_of($1) AS p(part)
     CROSS JOIN LATERAL broker_proxy._metrics_on(p.part, $1) AS m
     GROUP BY m.queue
     ORDER BY m.queue;
EXCEPTION WHEN internal_error THEN
    PERFORM broker_proxy._unreachable(SQLERRM, 'metrics', $1, NULL);
    RAISE;
END
$$;

CREATE FUNCTION broker.metrics(queue text DEFAULT NULL)
RETURNS TABLE(queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint,
              dead_lettered_total bigint, completed_total bigint,
              failed_total bigint)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM broker_proxy._metrics($1)
$$;

CREATE FUNCTION broker_proxy._waiters(q text)
RETURNS TABLE(queue text, waiting integer, wakeups bigint, empty_wakeups bigint,
              low_water_mark bigint, next_due timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT w.queue, pg_catalog.sum(w.waiting)::integer, pg_catalog.sum(w.wakeups)::bigint,
           pg_catalog.sum(w.empty_wakeups)::bigint, pg_catalog.min(w.low_water_mark),
           pg_catalog.min(w.next_due)
      FROM broker_proxy._parts_of($1) AS p(part)
     CROSS JOIN LATERAL broker_proxy._waiters_on(p.part, $1) AS w
     GROUP BY w.queue
     ORDER BY w.queue;
EXCEPTION WHEN internal_error THEN
    PERFORM broker_proxy._unreachable(SQLERRM, 'waiters', $1, NULL);
    RAISE;
END
$$;

CREATE FUNCTION broker.waiters(queue text DEFAULT NULL)
RETURNS TABLE(queue text, waiting integer, wakeups bigint, empty_wakeups bigint,
              low_water_mark bigint, next_due timestamptz)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM broker_proxy._waiters($1)
$$;

-- Per node, never failing: a node that cannot be reached (or is marked
-- down) is a row with its error, for monitoring while a node is down.
CREATE FUNCTION broker_proxy.node_metrics()
RETURNS TABLE(node text, error text, queue text, ready bigint, leased bigint, delayed bigint,
              total bigint, oldest_ready_age interval, enqueued_total bigint,
              deleted_total bigint, expired_total bigint, dead_lettered_total bigint,
              completed_total bigint, failed_total bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n record;
BEGIN
    FOR n IN SELECT x.part, x.name, x.down, x.down_reason FROM broker_proxy.nodes x ORDER BY x.part LOOP
        IF n.down THEN
            RETURN QUERY SELECT n.name, 'marked down: ' || coalesce(n.down_reason, 'by hand'),
                                NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::interval, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::bigint;
            CONTINUE;
        END IF;
        BEGIN
            RETURN QUERY SELECT n.name, NULL::text, m.* FROM broker_proxy._metrics_on(n.part, NULL) m;
        EXCEPTION WHEN OTHERS THEN
            RETURN QUERY SELECT n.name, SQLERRM, NULL::text, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::interval, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint;
        END;
    END LOOP;
END
$$;

-- broker's views, from every node, with the node each row comes from (a
-- node that cannot be reached: 08006, as for metrics).
CREATE FUNCTION broker_proxy._all_queues()
RETURNS TABLE(queue text, lease interval, max_message_size integer, default_ttl interval,
              max_deliveries integer, dead_letter_queue text, created_at timestamptz,
              dedup_window interval, retention interval, max_lease interval, node text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT q.*, n.name
      FROM broker_proxy.nodes n CROSS JOIN LATERAL broker_proxy._queues_on(n.part) q ORDER BY n.part;
EXCEPTION WHEN internal_error THEN
    PERFORM broker_proxy._unreachable(SQLERRM, 'queues', NULL, NULL);
    RAISE;
END
$$;
CREATE FUNCTION broker_proxy._all_subscriptions()
RETURNS TABLE(queue text, pattern text, node text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT s.*, n.name
      FROM broker_proxy.nodes n CROSS JOIN LATERAL broker_proxy._subscriptions_on(n.part) s ORDER BY n.part;
EXCEPTION WHEN internal_error THEN
    PERFORM broker_proxy._unreachable(SQLERRM, 'subscriptions', NULL, NULL);
    RAISE;
END
$$;
CREATE FUNCTION broker_proxy._all_grants()
RETURNS TABLE(queue text, role name, privilege text, node text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT g.*, n.name
      FROM broker_proxy.nodes n CROSS JOIN LATERAL broker_proxy._grants_on(n.part) g ORDER BY n.part;
EXCEPTION WHEN internal_error THEN
    PERFORM broker_proxy._unreachable(SQLERRM, 'grants', NULL, NULL);
    RAISE;
END
$$;
CREATE FUNCTION broker_proxy._all_consumers()
RETURNS TABLE(consumer text, queue text, delivered bigint, deleted bigint, last_seen timestamptz,
              node text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT c.*, n.name
      FROM broker_proxy.nodes n CROSS JOIN LATERAL broker_proxy._consumers_on(n.part) c ORDER BY n.part;
EXCEPTION WHEN internal_error THEN
    PERFORM broker_proxy._unreachable(SQLERRM, 'consumers', NULL, NULL);
    RAISE;
END
$$;
CREATE VIEW broker.queues AS SELECT * FROM broker_proxy._all_queues();
CREATE VIEW broker.subscriptions AS SELECT * FROM broker_proxy._all_subscriptions();
CREATE VIEW broker.grants AS SELECT * FROM broker_proxy._all_grants();
CREATE VIEW broker.consumers AS SELECT * FROM broker_proxy._all_consumers();
GRANT SELECT ON broker.queues, broker.subscriptions, broker.grants, broker.consumers TO PUBLIC;

-- Administration (superusers) ---------------------------------------------------------

-- dblink is relocatable: its functions are called in the schema it is in.
CREATE FUNCTION broker_proxy._dblink() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.quote_ident(s.nspname::text)
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace s ON s.oid OPERATOR(pg_catalog.=) e.extnamespace
     WHERE e.extname OPERATOR(pg_catalog.=) 'dblink'
$$;

-- A dblink connection named cname to a node (replacing one left behind by
-- an earlier error), with bounded waits.
CREATE FUNCTION broker_proxy._connect(cname text, conninfo text, timeout integer DEFAULT 5)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := broker_proxy._dblink();
BEGIN
    EXECUTE format('SELECT %s.dblink_disconnect($1) WHERE $1 = ANY (%s.dblink_get_connections())', s, s)
      USING cname;
    EXECUTE format('SELECT %s.dblink_connect($1, $2)', s)
      USING cname, conninfo || ' connect_timeout=' || greatest(timeout, 2)
                   || ' application_name=broker_proxy_admin';
    EXECUTE format('SELECT %s.dblink_exec($1, $2)', s)
      USING cname, 'SET lock_timeout = ''2s''; SET statement_timeout = ''5min''';
END
$$;

CREATE FUNCTION broker_proxy._exec(cname text, sql text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r text;
BEGIN
    EXECUTE format('SELECT %s.dblink_exec($1, $2)', broker_proxy._dblink()) INTO r USING cname, sql;
    RETURN r;
END
$$;

-- One value (as text) from a query on a dblink connection.
CREATE FUNCTION broker_proxy._value(cname text, sql text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r text;
BEGIN
    EXECUTE format('SELECT t.v FROM %s.dblink($1, $2) AS t(v text)', broker_proxy._dblink())
      INTO r USING cname, sql;
    RETURN r;
END
$$;

CREATE FUNCTION broker_proxy._disconnect(cname text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := broker_proxy._dblink();
BEGIN
    EXECUTE format('SELECT %s.dblink_disconnect($1) WHERE $1 = ANY (%s.dblink_get_connections())', s, s)
      USING cname;
END
$$;

CREATE FUNCTION broker_proxy._conninfo(p integer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT n.conninfo FROM broker_proxy.nodes n WHERE n.part OPERATOR(pg_catalog.=) $1
$$;

CREATE FUNCTION broker_proxy._require_superuser(what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('permission denied to %s', what),
            DETAIL = 'broker_proxy''s administration functions are for superusers (they connect to the nodes with dblink).';
    END IF;
END
$$;

-- Add a broker node.  Checks that broker 0.2.0 is installed there and not
-- already a node, and gives it its message-id range: the next id it hands
-- out is (part + 1) * 10^15 (ids it handed out before stay, and are routed
-- by their queue).
CREATE FUNCTION broker_proxy.add_node(name text, conninfo text, accepting boolean DEFAULT true)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p integer;
    base bigint;
    ver text;
    ident text;
    last bigint;
BEGIN
    PERFORM broker_proxy._require_superuser('add a broker node');
    IF name !~ '^[a-z_][a-z0-9_]{0,47}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_name',
            MESSAGE = pg_catalog.format('invalid node name "%s"', name),
            DETAIL = 'A node name is 1 to 48 characters of a-z, 0-9 and _, and does not start with a digit.';
    END IF;
    IF conninfo ~ '(^|\s)user\s*=' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the connection string of a node must not name a user',
            DETAIL = 'PL/Proxy connects as the user calling the proxy, so that the node checks that role''s privileges on its queues.';
    END IF;
    LOCK TABLE broker_proxy.nodes IN EXCLUSIVE MODE;
    SELECT coalesce(max(x.part) + 1, 0) INTO p FROM broker_proxy.nodes x;
    base := (p + 1)::bigint * 1000000000000000;
    PERFORM broker_proxy._connect('broker_proxy_add', conninfo);
    BEGIN
        ver := broker_proxy._value('broker_proxy_add',
            'SELECT extversion FROM pg_catalog.pg_extension WHERE extname = ''broker''');
        IF ver IS NULL THEN
            RAISE EXCEPTION 'broker is not installed in that database';
        ELSIF ver <> '0.2.0' THEN
            RAISE EXCEPTION 'broker % is installed there; broker_proxy 0.1.0 works with broker 0.2.0', ver;
        END IF;
        ident := broker_proxy._value('broker_proxy_add',
            'SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text || ''/'' || pg_catalog.current_database()');
        IF EXISTS (SELECT FROM broker_proxy.nodes x WHERE x.identity = ident) THEN
            RAISE EXCEPTION 'that database is already node "%"',
                (SELECT x.name FROM broker_proxy.nodes x WHERE x.identity = ident);
        END IF;
        last := broker_proxy._value('broker_proxy_add',
            'SELECT last_value FROM broker.message_id_seq')::bigint;
        IF last >= base + 1000000000000000 OR (last >= 1000000000000000 AND last < base) THEN
            RAISE EXCEPTION 'its message ids (last %) are in the range of another node', last;
        END IF;
        IF last < base THEN
            PERFORM broker_proxy._value('broker_proxy_add',
                pg_catalog.format('SELECT pg_catalog.setval(''broker.message_id_seq'', %s, false)', base));
        END IF;
        PERFORM broker_proxy._disconnect('broker_proxy_add');
    EXCEPTION WHEN OTHERS THEN
        PERFORM broker_proxy._disconnect('broker_proxy_add');
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('cannot add node "%s": %s', name, SQLERRM);
    END;
    INSERT INTO broker_proxy.nodes (part, name, conninfo, identity, accepting)
    VALUES (p, name, conninfo, ident, accepting);
    RETURN p;
END
$$;

-- Change a node: whether new queues are placed on it, its connection
-- string, or its down mark (check_nodes sets it from what it finds).
CREATE FUNCTION broker_proxy.set_node(name text, accepting boolean DEFAULT NULL,
                                      conninfo text DEFAULT NULL, down boolean DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM broker_proxy._require_superuser('change a broker node');
    UPDATE broker_proxy.nodes n
       SET accepting = coalesce($2, n.accepting),
           conninfo = coalesce($3, n.conninfo),
           down = coalesce($4, n.down),
           down_reason = CASE WHEN $4 THEN 'marked by hand' WHEN NOT $4 THEN NULL
                              ELSE n.down_reason END
     WHERE n.name = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('broker node "%s" does not exist', name);
    END IF;
END
$$;

-- A PL/Proxy setting of the cluster (NULL value: remove it).
CREATE FUNCTION broker_proxy.set_setting(key text, value text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM broker_proxy._require_superuser('change broker_proxy settings');
    IF value IS NULL THEN
        DELETE FROM broker_proxy.settings s WHERE s.key = $1;
    ELSE
        INSERT INTO broker_proxy.settings AS s VALUES ($1, $2)
            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
    END IF;
END
$$;

-- Connect to every node (connect_timeout seconds at most: PL/Proxy itself
-- has no connect timeout, see docs/scale-out.md) and mark it down or up;
-- calls for the queues of a node marked down fail at once (08006).
CREATE FUNCTION broker_proxy.check_nodes(connect_timeout integer DEFAULT 2)
RETURNS TABLE (node text, up boolean, error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n record;
    detail text;
BEGIN
    PERFORM broker_proxy._require_superuser('check the broker nodes');
    FOR n IN SELECT x.part, x.name, x.conninfo FROM broker_proxy.nodes x ORDER BY x.part LOOP
        node := n.name;
        BEGIN
            PERFORM broker_proxy._connect('broker_proxy_check', n.conninfo, connect_timeout);
            PERFORM broker_proxy._value('broker_proxy_check', 'SELECT 1');
            PERFORM broker_proxy._disconnect('broker_proxy_check');
            up := true;
            error := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            PERFORM broker_proxy._disconnect('broker_proxy_check');
            up := false;
            error := SQLERRM || coalesce(': ' || pg_catalog.btrim(detail, E' \n'), '');
        END;
        UPDATE broker_proxy.nodes x SET down = NOT up, down_reason = error
         WHERE x.part = n.part AND (x.down, x.down_reason) IS DISTINCT FROM (NOT up, error);
        RETURN NEXT;
    END LOOP;
END
$$;

-- Register a queue that already exists on a node (a broker database brought
-- under the proxy), or forget one (the directory entry only).
CREATE FUNCTION broker_proxy.place_queue(queue text, node text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p integer;
BEGIN
    PERFORM broker_proxy._require_superuser('place a queue');
    PERFORM broker_proxy._check_name(queue);
    SELECT n.part INTO p FROM broker_proxy.nodes n WHERE n.name = $2;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('broker node "%s" does not exist', node);
    END IF;
    IF EXISTS (SELECT FROM broker_proxy.directory d WHERE d.queue = $1) THEN
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = pg_catalog.format('queue "%s" is already in the directory', queue),
            HINT = 'Move it with CALL broker_proxy.move_queue.';
    END IF;
    IF NOT broker_proxy._queue_exists_on(p, queue) THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('queue "%s" does not exist on node "%s"', queue, node);
    END IF;
    INSERT INTO broker_proxy.directory (queue, part) VALUES ($1, p);
END
$$;

-- Moving a queue ----------------------------------------------------------------------
--
-- CALL broker_proxy.move_queue('orders', 'n3');
--
--  1. begin: the queue is created on the target with the source's settings
--     and grants; state 'moving' (producers and consumers still use the
--     source).
--  2. copy, producers going on: waiting messages outside ordered groups, in
--     batches.  A batch is one transaction on the source that locks the
--     messages (FOR UPDATE SKIP LOCKED: consumers take others meanwhile),
--     one transaction on the target that enqueues copies of them in id
--     order, each with a dedup key (the message's own, else
--     'broker_proxy:move:<id>'), then the delete of the originals and the
--     source's commit.
--  3. pause and switch (one proxy transaction): the queue's pause lock
--     waits for the proxied producers in flight and holds new ones; the rest
--     is copied, ordered groups whole (a group whose head is leased stays);
--     the subscriptions move with publish paused; the directory points to
--     the target, state 'draining'.  The commit lets producers go on, to the
--     target.
--  4. drain: what is left on the source (messages leased at the switch that
--     come back, a message a client enqueued there directly) is copied the
--     same way until the source's queue is empty; then it is dropped there
--     (atomically with the check) and the state is 'ready'.  Acknowledgements
--     of messages leased on the source reach it by their id all along.
--
-- A move that stops (an error, the proxy's crash) is resumed by calling it
-- again: the dedup keys make a batch copied twice count once, and before the
-- switch, copies whose original was consumed meanwhile on the source are
-- deleted from the target (see _move_reconcile).

-- Read a batch of movable messages of queue qid on connection cname (in its
-- open transaction, locking them) into pg_temp.broker_proxy_rows: outside
-- groups, or (with_groups) also whole ordered groups whose head is waiting;
-- with the messages' own dedup keys.  Returns how many.
CREATE FUNCTION broker_proxy._move_rows(cname text, qid integer, lim integer, with_groups boolean)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := broker_proxy._dblink();
    cols text := 'm.id, m.payload, m.headers, m.group_key, m.priority::integer,'
                 ' CASE WHEN m.vt > pg_catalog.now() THEN m.vt - pg_catalog.now() ELSE ''0''::interval END,'
                 ' m.expires_at - pg_catalog.clock_timestamp(),'
                 ' COALESCE(m.expires_at <= pg_catalog.clock_timestamp() + ''10 milliseconds''::interval, false)';
    waiting text := '(m.receipt IS NULL OR m.vt <= pg_catalog.now())'
                    ' AND (m.expires_at IS NULL OR m.expires_at > pg_catalog.now() + ''1 second''::interval)';
    ins text;
    keys text[];
    n integer;
BEGIN
    IF to_regclass('pg_temp.broker_proxy_rows') IS NULL THEN
        CREATE TEMP TABLE broker_proxy_rows (
            id bigint, payload jsonb, headers jsonb, group_key text, priority integer,
            delay interval, ttl interval, expired boolean, dedup_key text) ON COMMIT DROP;
    END IF;
    TRUNCATE pg_temp.broker_proxy_rows;
    ins := format('INSERT INTO pg_temp.broker_proxy_rows SELECT t.*, NULL FROM %s.dblink($1, $2)'
                  ' AS t(id bigint, payload jsonb, headers jsonb, group_key text, priority integer,'
                  ' delay interval, ttl interval, expired boolean)', s);
    FOR seg IN 0..3 LOOP
        EXECUTE ins USING cname,
            format('SELECT %s FROM broker.messages_%s m WHERE m.queue_id = %s AND m.group_key IS NULL'
                   ' AND %s ORDER BY m.id LIMIT %s FOR UPDATE SKIP LOCKED', cols, seg, qid, waiting, lim);
    END LOOP;
    IF with_groups THEN
        -- heads that are waiting, then every other message of their groups
        FOR seg IN 0..3 LOOP
            EXECUTE ins USING cname,
                format('SELECT %s FROM broker.messages_%s m WHERE m.queue_id = %s AND m.group_key IS NOT NULL'
                       ' AND %s ORDER BY m.id LIMIT %s FOR UPDATE SKIP LOCKED', cols, seg, qid, waiting, lim);
        END LOOP;
        SELECT array_agg(DISTINCT r.group_key) INTO keys
          FROM pg_temp.broker_proxy_rows r WHERE r.group_key IS NOT NULL;
        IF keys IS NOT NULL THEN
            FOR seg IN 0..3 LOOP
                EXECUTE ins USING cname,
                    format('SELECT %s FROM broker.messages_%s m WHERE m.queue_id = %s'
                           ' AND m.group_key = ANY (%L::text[]) ORDER BY m.id FOR UPDATE',
                           cols, seg, -qid, keys);
            END LOOP;
        END IF;
    END IF;
    SELECT count(*) INTO n FROM pg_temp.broker_proxy_rows;
    IF n > 0 THEN
        -- the messages' own dedup keys, carried to the target
        EXECUTE format('UPDATE pg_temp.broker_proxy_rows r SET dedup_key = k.key'
                       '  FROM %s.dblink($1, $2) AS k(id bigint, key text) WHERE k.id = r.id', s)
          USING cname,
                format('SELECT d.id, d.dedup_key FROM broker.dedup_0 d WHERE d.queue_id = %s'
                       '   AND d.id = ANY (%L::bigint[])'
                       ' UNION ALL SELECT d.id, d.dedup_key FROM broker.dedup_1 d WHERE d.queue_id = %s'
                       '   AND d.id = ANY (%L::bigint[])',
                       qid, (SELECT array_agg(r.id) FROM pg_temp.broker_proxy_rows r),
                       qid, (SELECT array_agg(r.id) FROM pg_temp.broker_proxy_rows r));
    END IF;
    RETURN n;
END
$$;

-- The two ends of a move in progress: source, target, and the queue's id on
-- the source.
CREATE FUNCTION broker_proxy._move_ends(queue text, OUT src integer, OUT dst integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d record;
BEGIN
    SELECT x.part, x.state, x.other_part INTO d FROM broker_proxy.directory x WHERE x.queue = $1;
    IF NOT FOUND OR d.state = 'ready' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('queue "%s" is not being moved', queue);
    END IF;
    IF d.state = 'moving' THEN
        src := d.part; dst := d.other_part;
    ELSE
        src := d.other_part; dst := d.part;
    END IF;
END
$$;

-- Copy one batch from the source to the target; returns how many messages
-- left the source (copied, or expired and dropped with their group).
CREATE FUNCTION broker_proxy._move_batch(queue text, lim integer, with_groups boolean)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
    qid integer;
    n integer;
    c record;
    copied integer;
    deleted integer;
BEGIN
    e := broker_proxy._move_ends(queue);
    PERFORM broker_proxy._connect('broker_proxy_src', broker_proxy._conninfo(e.src));
    BEGIN
        qid := broker_proxy._value('broker_proxy_src',
            format('SELECT queue_id FROM broker.queue_defs WHERE name = %L', queue))::integer;
        IF qid IS NULL THEN
            PERFORM broker_proxy._disconnect('broker_proxy_src');
            RETURN 0;       -- the source has no such queue (any more)
        END IF;
        PERFORM broker_proxy._exec('broker_proxy_src', 'BEGIN');
        n := broker_proxy._move_rows('broker_proxy_src', qid, lim, with_groups);
        IF n = 0 THEN
            PERFORM broker_proxy._exec('broker_proxy_src', 'ROLLBACK');
            PERFORM broker_proxy._disconnect('broker_proxy_src');
            RETURN 0;
        END IF;
        -- the copies, in id order (an expired member of a group is dropped, not copied)
        SELECT array_agg(r.payload ORDER BY r.id) AS payloads,
               array_agg(r.delay ORDER BY r.id) AS delays,
               array_agg(r.ttl ORDER BY r.id) AS ttls,
               array_agg(r.headers ORDER BY r.id) AS hdrs,
               array_agg(r.group_key ORDER BY r.id) AS gkeys,
               array_agg(coalesce(r.dedup_key, 'broker_proxy:move:' || r.id) ORDER BY r.id) AS dkeys,
               array_agg(r.priority ORDER BY r.id) AS prios,
               count(*) AS n
          INTO c FROM pg_temp.broker_proxy_rows r WHERE NOT r.expired;
        IF c.n > 0 THEN
            SELECT count(*) INTO copied
              FROM broker_proxy._copy_into(e.dst, queue, c.payloads, c.delays, c.ttls, c.hdrs,
                                           c.gkeys, c.dkeys, c.prios);
            IF copied <> c.n THEN
                RAISE EXCEPTION 'broker_proxy: % copies of % messages', copied, c.n;
            END IF;
        END IF;
        -- (tests: the proxy stopping between the target's and the source's commits)
        IF current_setting('broker_proxy.test_stop_after_copy', true) = 'on' THEN
            RAISE EXCEPTION 'broker_proxy: stopped after the copy (test)';
        END IF;
        deleted := broker_proxy._value('broker_proxy_src',
            format('SELECT pg_catalog.count(*) FROM broker.delete(%L, %L::bigint[])', queue,
                   (SELECT array_agg(r.id) FROM pg_temp.broker_proxy_rows r)))::integer;
        IF deleted <> n THEN
            RAISE EXCEPTION 'broker_proxy: deleted % of % moved messages on the source', deleted, n;
        END IF;
        PERFORM broker_proxy._exec('broker_proxy_src', 'COMMIT');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
    EXCEPTION WHEN OTHERS THEN
        -- the source's transaction ends with the connection: its locks go
        PERFORM broker_proxy._disconnect('broker_proxy_src');
        RAISE;
    END;
    RETURN n;
END
$$;

-- Start a move (or check that the move to resume is this one).
CREATE FUNCTION broker_proxy._move_begin(queue text, to_node text)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d record;
    t record;
    qs record;
    created boolean := false;
    g record;
    subs text[];
BEGIN
    PERFORM broker_proxy._require_superuser('move a queue');
    SELECT x.* INTO d FROM broker_proxy.directory x WHERE x.queue = $1 FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM broker_proxy._route(queue, 'metrics');
    END IF;
    SELECT n.* INTO t FROM broker_proxy.nodes n WHERE n.name = to_node;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('broker node "%s" does not exist', to_node);
    END IF;
    IF d.state = 'moving' THEN
        IF d.other_part <> t.part THEN
            RAISE EXCEPTION USING ERRCODE = 'object_in_use',
                MESSAGE = pg_catalog.format('queue "%s" is being moved to another node', queue);
        END IF;
        RETURN 'resume';
    ELSIF d.state = 'draining' THEN
        IF d.part <> t.part THEN
            RAISE EXCEPTION USING ERRCODE = 'object_in_use',
                MESSAGE = pg_catalog.format('queue "%s" is still draining from its previous node', queue),
                HINT = pg_catalog.format('CALL broker_proxy.drain_queue(%L) first.', queue);
        END IF;
        RETURN 'drain';
    ELSIF d.part = t.part THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('queue "%s" is already on node "%s"', queue, to_node);
    END IF;
    IF t.down OR (SELECT n.down FROM broker_proxy.nodes n WHERE n.part = d.part) THEN
        RAISE EXCEPTION USING ERRCODE = 'connection_failure',
            MESSAGE = 'a node of the move is marked down';
    END IF;

    BEGIN
        SELECT * INTO qs FROM broker_proxy._queues_on(d.part) q WHERE q.queue = $1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'queue "%" is not on its node', queue;
        END IF;
        IF qs.dead_letter_queue IS NOT NULL
           OR EXISTS (SELECT FROM broker_proxy._queues_on(d.part) q WHERE q.dead_letter_queue = $1) THEN
            RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
                MESSAGE = pg_catalog.format('queue "%s" has or is a dead-letter queue', queue),
                DETAIL = 'A queue and its dead-letter queue live on one node; broker_proxy 0.1.0 does not move them.';
        END IF;
        SELECT array_agg(s.pattern ORDER BY s.pattern) INTO subs
          FROM broker_proxy._subscriptions_on(d.part) s WHERE s.queue = $1;
        -- the queue on the target, with the same settings and grants
        IF broker_proxy._queue_exists_on(t.part, queue) THEN
            RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
                MESSAGE = pg_catalog.format('queue "%s" already exists on node "%s"', queue, to_node),
                HINT = 'Drop it there first, or choose another node.';
        END IF;
        PERFORM broker_proxy._create_queue_on(t.part, queue, qs.lease, qs.max_message_size,
                                              qs.default_ttl, qs.max_deliveries, NULL, false,
                                              qs.dedup_window, qs.retention, qs.max_lease);
        created := true;
        PERFORM broker_proxy._connect('broker_proxy_dst', t.conninfo);
        FOR g IN SELECT x.role, x.privilege FROM broker_proxy._grants_on(d.part) x WHERE x.queue = $1 LOOP
            PERFORM broker_proxy._value('broker_proxy_dst',
                format('SELECT broker.grant(%L, %L, %L)::text', queue, g.role, g.privilege));
        END LOOP;
        -- create_queue made the mover the queue's admin on the target
        IF NOT EXISTS (SELECT FROM broker_proxy._grants_on(d.part) x
                        WHERE x.queue = $1 AND x.role = current_user AND x.privilege = 'admin') THEN
            PERFORM broker_proxy._value('broker_proxy_dst',
                format('SELECT broker.revoke(%L, %L, ''admin'')::text', queue, current_user));
        END IF;
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
    EXCEPTION WHEN OTHERS THEN
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        IF created THEN
            -- (the queue made on the target is empty: nothing was copied yet)
            PERFORM broker_proxy._drop_queue_on(t.part, queue, true);
        END IF;
        RAISE;
    END;
    UPDATE broker_proxy.directory x SET state = 'moving', other_part = t.part, subscriptions = subs
     WHERE x.queue = $1;
    RETURN 'begin';
END
$$;

-- Before the switch, after an interrupted move: every message of the queue
-- on the target is a copy (no consumer reaches it yet), found by its dedup
-- key.  A copy whose original is still on the source and waiting: the
-- original is deleted there.  A copy whose original is gone from the source
-- (consumed, expired): the copy is deleted.  A copy whose original is
-- leased on the source now: left for later (returns how many such).
CREATE FUNCTION broker_proxy._move_reconcile(queue text)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
    s text := broker_proxy._dblink();
    sqid integer;
    tqid integer;
    pending integer;
    unknown integer;
BEGIN
    e := broker_proxy._move_ends(queue);
    PERFORM broker_proxy._connect('broker_proxy_src', broker_proxy._conninfo(e.src));
    PERFORM broker_proxy._connect('broker_proxy_dst', broker_proxy._conninfo(e.dst));
    BEGIN
        sqid := broker_proxy._value('broker_proxy_src',
            format('SELECT queue_id FROM broker.queue_defs WHERE name = %L', queue))::integer;
        tqid := broker_proxy._value('broker_proxy_dst',
            format('SELECT queue_id FROM broker.queue_defs WHERE name = %L', queue))::integer;
        IF to_regclass('pg_temp.broker_proxy_copies') IS NULL THEN
            CREATE TEMP TABLE broker_proxy_copies (tid bigint, key text, sid bigint, state text)
                ON COMMIT DROP;
        END IF;
        TRUNCATE pg_temp.broker_proxy_copies;
        -- the copies on the target, by their keys
        EXECUTE format('INSERT INTO pg_temp.broker_proxy_copies (tid, key)'
                       ' SELECT k.id, k.key FROM %s.dblink($1, $2) AS k(id bigint, key text)', s)
          USING 'broker_proxy_dst',
                format('SELECT d.id, d.dedup_key FROM broker.dedup_0 d WHERE d.queue_id = %s'
                       ' UNION ALL SELECT d.id, d.dedup_key FROM broker.dedup_1 d WHERE d.queue_id = %s',
                       tqid, tqid);
        -- (keys of messages already deleted from the target: not copies any more)
        EXECUTE format('DELETE FROM pg_temp.broker_proxy_copies c WHERE c.tid NOT IN'
                       ' (SELECT m.id FROM %s.dblink($1, $2) AS m(id bigint))', s)
          USING 'broker_proxy_dst',
                format('SELECT m.id FROM broker.messages m WHERE m.queue_id IN (%s, %s)', tqid, -tqid);
        UPDATE pg_temp.broker_proxy_copies c SET sid = substr(c.key, 19)::bigint
         WHERE c.key LIKE 'broker_proxy:move:%';
        EXECUTE format('UPDATE pg_temp.broker_proxy_copies c SET sid = k.id'
                       '  FROM %s.dblink($1, $2) AS k(id bigint, key text)'
                       ' WHERE c.sid IS NULL AND k.key = c.key', s)
          USING 'broker_proxy_src',
                format('SELECT d.id, d.dedup_key FROM broker.dedup_0 d WHERE d.queue_id = %s'
                       ' UNION ALL SELECT d.id, d.dedup_key FROM broker.dedup_1 d WHERE d.queue_id = %s',
                       sqid, sqid);
        -- the originals' states on the source
        EXECUTE format('UPDATE pg_temp.broker_proxy_copies c SET state = m.state'
                       '  FROM %s.dblink($1, $2) AS m(id bigint, state text) WHERE m.id = c.sid', s)
          USING 'broker_proxy_src',
                format('SELECT m.id, CASE WHEN m.receipt IS NOT NULL AND m.vt > pg_catalog.now()'
                       ' THEN ''leased'' ELSE ''waiting'' END FROM broker.messages m'
                       ' WHERE m.queue_id IN (%s, %s) AND m.id = ANY (%L::bigint[])',
                       sqid, -sqid,
                       (SELECT coalesce(array_agg(c.sid), '{}') FROM pg_temp.broker_proxy_copies c
                         WHERE c.sid IS NOT NULL)));
        -- gone from the source: the copy goes
        IF EXISTS (SELECT FROM pg_temp.broker_proxy_copies c WHERE c.sid IS NOT NULL AND c.state IS NULL) THEN
            PERFORM broker_proxy._value('broker_proxy_dst',
                format('SELECT pg_catalog.count(*) FROM broker.delete(%L, %L::bigint[])', queue,
                       (SELECT array_agg(c.tid) FROM pg_temp.broker_proxy_copies c
                         WHERE c.sid IS NOT NULL AND c.state IS NULL)));
        END IF;
        -- waiting on the source: the original goes (if no one takes it first)
        IF EXISTS (SELECT FROM pg_temp.broker_proxy_copies c WHERE c.state = 'waiting') THEN
            PERFORM broker_proxy._exec('broker_proxy_src', 'BEGIN');
            PERFORM broker_proxy._value('broker_proxy_src',
                format('SELECT pg_catalog.count(*) FROM broker.delete(%L, ARRAY('
                       ' SELECT m.id FROM broker.messages_0 m WHERE m.queue_id IN (%s, %s) AND m.id = ANY (%L::bigint[])'
                       ' AND (m.receipt IS NULL OR m.vt <= pg_catalog.now()) FOR UPDATE SKIP LOCKED'
                       ' UNION ALL SELECT m.id FROM broker.messages_1 m WHERE m.queue_id IN (%s, %s) AND m.id = ANY (%L::bigint[])'
                       ' AND (m.receipt IS NULL OR m.vt <= pg_catalog.now()) FOR UPDATE SKIP LOCKED'
                       ' UNION ALL SELECT m.id FROM broker.messages_2 m WHERE m.queue_id IN (%s, %s) AND m.id = ANY (%L::bigint[])'
                       ' AND (m.receipt IS NULL OR m.vt <= pg_catalog.now()) FOR UPDATE SKIP LOCKED'
                       ' UNION ALL SELECT m.id FROM broker.messages_3 m WHERE m.queue_id IN (%s, %s) AND m.id = ANY (%L::bigint[])'
                       ' AND (m.receipt IS NULL OR m.vt <= pg_catalog.now()) FOR UPDATE SKIP LOCKED))',
                       queue,
                       sqid, -sqid, (SELECT array_agg(c.sid) FROM pg_temp.broker_proxy_copies c WHERE c.state = 'waiting'),
                       sqid, -sqid, (SELECT array_agg(c.sid) FROM pg_temp.broker_proxy_copies c WHERE c.state = 'waiting'),
                       sqid, -sqid, (SELECT array_agg(c.sid) FROM pg_temp.broker_proxy_copies c WHERE c.state = 'waiting'),
                       sqid, -sqid, (SELECT array_agg(c.sid) FROM pg_temp.broker_proxy_copies c WHERE c.state = 'waiting')));
            PERFORM broker_proxy._exec('broker_proxy_src', 'COMMIT');
        END IF;
        SELECT count(*) FILTER (WHERE c.state = 'leased'), count(*) FILTER (WHERE c.sid IS NULL)
          INTO pending, unknown FROM pg_temp.broker_proxy_copies c;
        IF unknown > 0 THEN
            RAISE WARNING 'broker_proxy: % messages on node partition % cannot be matched with the source''s (their keys are older than the queue''s dedup_window): kept', unknown, e.dst;
        END IF;
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
    EXCEPTION WHEN OTHERS THEN
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
        RAISE;
    END;
    RETURN pending;
END
$$;

-- Pause the queue's producers, copy the rest, move the subscriptions, and
-- point the directory at the target.  The pause lasts until the caller
-- commits.
CREATE FUNCTION broker_proxy._move_switch(queue text, lim integer)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
    total integer := 0;
    n integer;
    pat text;
BEGIN
    e := broker_proxy._move_ends(queue);
    PERFORM pg_catalog.pg_advisory_xact_lock(broker_proxy._lock_class('pause'), pg_catalog.hashtext(queue));
    LOOP
        n := broker_proxy._move_batch(queue, lim, true);
        total := total + n;
        EXIT WHEN n = 0;
    END LOOP;
    PERFORM pg_catalog.pg_advisory_xact_lock(broker_proxy._lock_class('publish'), 0);
    PERFORM broker_proxy._connect('broker_proxy_src', broker_proxy._conninfo(e.src));
    PERFORM broker_proxy._connect('broker_proxy_dst', broker_proxy._conninfo(e.dst));
    BEGIN
        FOR pat IN SELECT unnest(d.subscriptions) FROM broker_proxy.directory d WHERE d.queue = $1 LOOP
            PERFORM broker_proxy._value('broker_proxy_dst',
                format('SELECT broker.subscribe(%L, %L)::text', queue, pat));
            PERFORM broker_proxy._value('broker_proxy_src',
                format('SELECT broker.unsubscribe(%L, %L)::text', queue, pat));
        END LOOP;
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
    EXCEPTION WHEN OTHERS THEN
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
        RAISE;
    END;
    UPDATE broker_proxy.directory x
       SET part = e.dst, other_part = e.src, state = 'draining', placed_at = pg_catalog.now()
     WHERE x.queue = $1;
    RETURN total;
END
$$;

-- Before the switch of a resumed move: the subscriptions are the source's
-- (a switch that stopped half way may have moved some).
CREATE FUNCTION broker_proxy._move_restore_subscriptions(queue text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
    pat text;
BEGIN
    e := broker_proxy._move_ends(queue);
    PERFORM pg_catalog.pg_advisory_xact_lock(broker_proxy._lock_class('publish'), 0);
    PERFORM broker_proxy._connect('broker_proxy_src', broker_proxy._conninfo(e.src));
    PERFORM broker_proxy._connect('broker_proxy_dst', broker_proxy._conninfo(e.dst));
    BEGIN
        FOR pat IN SELECT unnest(d.subscriptions) FROM broker_proxy.directory d WHERE d.queue = $1 LOOP
            PERFORM broker_proxy._value('broker_proxy_src',
                format('SELECT broker.subscribe(%L, %L)::text', queue, pat));
            PERFORM broker_proxy._value('broker_proxy_dst',
                format('SELECT broker.unsubscribe(%L, %L)::text', queue, pat));
        END LOOP;
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
    EXCEPTION WHEN OTHERS THEN
        PERFORM broker_proxy._disconnect('broker_proxy_dst');
        PERFORM broker_proxy._disconnect('broker_proxy_src');
        RAISE;
    END;
END
$$;

-- The end of a drain: drop the queue on the source if it has no message at
-- all (purge_queue's count and drop_queue in one transaction there, under
-- the queue's lock, so nothing enqueued meanwhile is lost), and mark the
-- queue ready.  False if messages are left (leased ones come back or are
-- deleted; a lock wait over 2 s counts as not yet).
CREATE FUNCTION broker_proxy._move_finish(queue text)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e record;
    left_over bigint;
BEGIN
    e := broker_proxy._move_ends(queue);
    IF (SELECT d.state FROM broker_proxy.directory d WHERE d.queue = $1) <> 'draining' THEN
        RETURN false;
    END IF;
    PERFORM broker_proxy._connect('broker_proxy_src', broker_proxy._conninfo(e.src));
    BEGIN
        IF broker_proxy._value('broker_proxy_src',
               format('SELECT count(*) FROM broker.queue_defs WHERE name = %L', queue)) = '1' THEN
            PERFORM broker_proxy._exec('broker_proxy_src', 'BEGIN');
            left_over := broker_proxy._value('broker_proxy_src',
                format('SELECT broker.purge_queue(%L)', queue))::bigint;
            IF left_over > 0 THEN
                PERFORM broker_proxy._exec('broker_proxy_src', 'ROLLBACK');
                PERFORM broker_proxy._disconnect('broker_proxy_src');
                RETURN false;
            END IF;
            PERFORM broker_proxy._value('broker_proxy_src',
                format('SELECT broker.drop_queue(%L)::text', queue));
            PERFORM broker_proxy._exec('broker_proxy_src', 'COMMIT');
        END IF;
        PERFORM broker_proxy._disconnect('broker_proxy_src');
    EXCEPTION
        WHEN lock_not_available THEN
            PERFORM broker_proxy._disconnect('broker_proxy_src');
            RETURN false;
        WHEN OTHERS THEN
            IF SQLERRM LIKE '%lock timeout%' THEN
                PERFORM broker_proxy._disconnect('broker_proxy_src');
                RETURN false;
            END IF;
            PERFORM broker_proxy._disconnect('broker_proxy_src');
            RAISE;
    END;
    UPDATE broker_proxy.directory x SET state = 'ready', other_part = NULL, subscriptions = NULL
     WHERE x.queue = $1;
    RETURN true;
END
$$;

-- Finish a move: copy what comes back on the old node until its queue is
-- empty, then drop it there.  Gives up (with a NOTICE, state still
-- 'draining') after timeout; call it again later.
CREATE PROCEDURE broker_proxy.drain_queue(queue text, timeout interval DEFAULT '1 minute',
                                          batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) timeout;
    n integer;
BEGIN
    PERFORM broker_proxy._require_superuser('drain a queue');
    LOOP
        n := broker_proxy._move_batch(queue, batch_size, true);
        COMMIT;
        IF n = 0 THEN
            IF broker_proxy._move_finish(queue) THEN
                COMMIT;
                RETURN;
            END IF;
            COMMIT;
            IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
                RAISE NOTICE 'queue "%" still has messages on its previous node (leased there): CALL broker_proxy.drain_queue(%) again later',
                    queue, pg_catalog.quote_literal(queue);
                RETURN;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.2);
        END IF;
    END LOOP;
END
$$;

-- The session's mover lock on a queue (kept by a move that stopped with an
-- error until the session ends or moves that queue again).
CREATE FUNCTION broker_proxy._mover_lock(queue text, take boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k1 integer := broker_proxy._lock_class('mover');
    k2 integer := hashtext(queue);
    held integer;
BEGIN
    SELECT count(*) INTO held FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
       AND l.classid = k1::oid AND l.objid = k2::oid AND l.objsubid = 2;
    IF take THEN
        IF held = 0 AND NOT pg_try_advisory_lock(k1, k2) THEN
            RAISE EXCEPTION USING ERRCODE = 'object_in_use',
                MESSAGE = format('queue "%s" is being moved by another session', queue);
        END IF;
    ELSIF held > 0 THEN
        PERFORM pg_advisory_unlock(k1, k2);
    END IF;
END
$$;

CREATE PROCEDURE broker_proxy.move_queue(queue text, to_node text, batch_size integer DEFAULT 1000,
                                         drain_timeout interval DEFAULT '1 minute')
LANGUAGE plpgsql AS $$
DECLARE
    how text;
    n integer;
    pending integer;
    deadline timestamptz;
BEGIN
    PERFORM broker_proxy._mover_lock(queue, true);
    how := broker_proxy._move_begin(queue, to_node);
    COMMIT;
    IF how = 'resume' THEN
        -- copies made before the stop: one of each pair goes (see _move_reconcile)
        deadline := pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) drain_timeout;
        LOOP
            pending := broker_proxy._move_reconcile(queue);
            COMMIT;
            EXIT WHEN pending = 0;
            IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
                PERFORM broker_proxy._mover_lock(queue, false);
                RAISE EXCEPTION USING ERRCODE = 'object_in_use',
                    MESSAGE = pg_catalog.format('%s messages of queue "%s" copied before the move stopped are leased on the source', pending, queue),
                    HINT = 'Call move_queue again when their leases have ended.';
            END IF;
            PERFORM pg_catalog.pg_sleep(0.2);
        END LOOP;
        PERFORM broker_proxy._move_restore_subscriptions(queue);
        COMMIT;
    END IF;
    IF how IN ('begin', 'resume') THEN
        -- copy while producers go on (not ordered groups)
        LOOP
            n := broker_proxy._move_batch(queue, batch_size, false);
            COMMIT;
            EXIT WHEN n < batch_size;
        END LOOP;
        -- pause producers, copy the rest, switch
        PERFORM broker_proxy._move_switch(queue, batch_size);
        COMMIT;
    END IF;
    CALL broker_proxy.drain_queue(queue, drain_timeout, batch_size);
    PERFORM broker_proxy._mover_lock(queue, false);
END
$$;

-- Privileges: broker's functions for everyone (the nodes check who may do
-- what), administration for superusers.
REVOKE EXECUTE ON FUNCTION
    broker_proxy.add_node(text, text, boolean),
    broker_proxy.set_node(text, boolean, text, boolean),
    broker_proxy.set_setting(text, text),
    broker_proxy.check_nodes(integer),
    broker_proxy.place_queue(text, text),
    broker_proxy._move_rows(text, integer, integer, boolean),
    broker_proxy._move_batch(text, integer, boolean),
    broker_proxy._move_begin(text, text),
    broker_proxy._move_reconcile(text),
    broker_proxy._move_switch(text, integer),
    broker_proxy._move_restore_subscriptions(text),
    broker_proxy._move_finish(text),
    broker_proxy._mover_lock(text, boolean),
    broker_proxy._connect(text, text, integer),
    broker_proxy._exec(text, text),
    broker_proxy._value(text, text),
    broker_proxy._disconnect(text),
    broker_proxy._conninfo(integer),
    broker_proxy._copy_into(integer, text, jsonb[], interval[], interval[], jsonb[], text[], text[], integer[])
  FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE broker_proxy.move_queue(text, text, integer, interval),
                            broker_proxy.drain_queue(text, interval, integer) FROM PUBLIC;
