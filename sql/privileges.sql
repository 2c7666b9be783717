-- Privileges per queue: produce, consume, admin; '*' for every queue;
-- group roles; PUBLIC; what each function needs; max_lease.
SELECT broker.create_queue('pv_a', lease => '1 minute');
SELECT broker.create_queue('pv_b');
CREATE ROLE pv_prod;
CREATE ROLE pv_cons;
CREATE ROLE pv_admin;
CREATE ROLE pv_group;
CREATE ROLE pv_member IN ROLE pv_group;
CREATE ROLE pv_nobody;
GRANT USAGE ON SCHEMA regress TO pv_prod, pv_cons, pv_admin, pv_member, pv_nobody;

-- calls as a role, each its own statement; the SQLSTATE or ok
CREATE FUNCTION regress.as_role(r text, cmd text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    res text;
BEGIN
    EXECUTE format('SET LOCAL ROLE %I', r);
    res := regress.err(cmd);
    RESET ROLE;
    RETURN res;
END $$;

-- nothing by default
SELECT regress.as_role('pv_nobody', $$SELECT broker.enqueue('pv_a', '{}')$$);
SELECT regress.as_role('pv_nobody', $$SELECT broker.dequeue('pv_a')$$);
SELECT regress.as_role('pv_nobody', $$SELECT broker.purge_queue('pv_a')$$);
SELECT regress.as_role('pv_nobody', $$SELECT broker.grant('pv_a', 'pv_nobody', 'consume')$$);

-- the message names the queue and the privilege
SET ROLE pv_nobody;
SELECT broker.enqueue('pv_a', '{}');
RESET ROLE;

-- grant: produce, consume, admin; bad input
SELECT broker.grant('pv_a', 'pv_prod', 'produce');
SELECT broker.grant('pv_a', 'pv_prod', 'produce');   -- already there
SELECT broker.grant('pv_a', 'pv_cons', 'consume');
SELECT broker.grant('pv_a', 'pv_admin', 'admin');
SELECT broker.grant('pv_b', 'pv_group', 'produce');
SELECT regress.err($$SELECT broker.grant('pv_a', 'pv_prod', 'read')$$);
SELECT regress.err($$SELECT broker.grant('pv_a', 'no_such_role', 'produce')$$);
SELECT regress.err($$SELECT broker.grant('no_such', 'pv_prod', 'produce')$$);
SELECT regress.err($$SELECT broker.grant('pv_a', NULL, 'produce')$$);
SELECT queue, role, privilege FROM broker.grants ORDER BY 1, 2, 3;

-- produce
SELECT regress.as_role('pv_prod', $$SELECT broker.enqueue('pv_a', '{"by": "prod"}')$$);
SELECT regress.as_role('pv_prod', $$SELECT broker.enqueue_batch('pv_a', ARRAY['{}']::jsonb[])$$);
SELECT regress.as_role('pv_prod', $$SELECT broker.dequeue('pv_a')$$);
SELECT regress.as_role('pv_prod', $$SELECT broker.status('pv_a', 1)$$);
SELECT regress.as_role('pv_prod', $$SELECT broker.enqueue('pv_b', '{}')$$);
-- consume
SELECT regress.as_role('pv_cons', $$SELECT broker.enqueue('pv_a', '{}')$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.dequeue('pv_a', 10, '10 seconds')$$);
SELECT regress.as_role('pv_cons', format($$SELECT broker.delete('pv_a', %s)$$,
    (SELECT min(id) FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = m.queue_id WHERE d.name = 'pv_a')));
SELECT regress.as_role('pv_cons', $$SELECT broker.delete('pv_a', ARRAY[1, 2])$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.release('pv_a', 1, 1)$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.extend_lease('pv_a', 1, 1, '10 seconds')$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.complete('pv_a', 1)$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.fail('pv_a', 1)$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.status('pv_a', ARRAY[1])$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.archive('pv_a')$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.purge_queue('pv_a')$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.subscribe('pv_a', 'x')$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.reap('pv_a')$$);
SELECT regress.as_role('pv_cons', $$SELECT broker.dequeue('pv_b')$$);
-- admin: both others, and administration of that queue only
SELECT regress.as_role('pv_admin', $$SELECT broker.enqueue('pv_a', '{}')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.dequeue('pv_a')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.subscribe('pv_a', 'pv.#')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.unsubscribe('pv_a', 'pv.#')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.reap('pv_a')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.grant('pv_a', 'pv_nobody', 'consume')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.revoke('pv_a', 'pv_nobody', 'consume')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.grant('pv_b', 'pv_nobody', 'consume')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.grant('*', 'pv_nobody', 'consume')$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.purge_queue('pv_a')$$);
-- owner-only: reap of every queue, maintenance; create_queue by EXECUTE grant
SELECT regress.as_role('pv_admin', $$SELECT broker.reap()$$);
SELECT regress.as_role('pv_admin', $$SELECT broker.create_queue('pv_c')$$);
-- a group role's grant holds for its members
SELECT regress.as_role('pv_member', $$SELECT broker.enqueue('pv_b', '{}')$$);
SELECT regress.as_role('pv_member', $$SELECT broker.dequeue('pv_b')$$);

-- '*': every queue, present and future
SELECT broker.grant('*', 'pv_nobody', 'consume');
SELECT regress.as_role('pv_nobody', $$SELECT broker.dequeue('pv_a')$$);
SELECT regress.as_role('pv_nobody', $$SELECT broker.dequeue('pv_b')$$);
SELECT broker.create_queue('pv_later');
SELECT regress.as_role('pv_nobody', $$SELECT broker.dequeue('pv_later')$$);
SELECT regress.as_role('pv_nobody', $$SELECT broker.enqueue('pv_later', '{}')$$);
SELECT broker.revoke('*', 'pv_nobody', 'consume');
SELECT regress.as_role('pv_nobody', $$SELECT broker.dequeue('pv_later')$$);

-- PUBLIC
SELECT broker.grant('pv_later', 'public', 'produce');
SELECT regress.as_role('pv_nobody', $$SELECT broker.enqueue('pv_later', '{}')$$);
SELECT queue, role, privilege FROM broker.grants WHERE queue = 'pv_later';
SELECT broker.revoke('pv_later', 'public', 'produce');
SELECT regress.as_role('pv_nobody', $$SELECT broker.enqueue('pv_later', '{}')$$);

-- a revoke takes effect at the next call, also after the grant was used
SET ROLE pv_prod;
SELECT broker.enqueue('pv_a', '{}') > 0 AS ok;
RESET ROLE;
SELECT broker.revoke('pv_a', 'pv_prod', 'produce');
SELECT regress.as_role('pv_prod', $$SELECT broker.enqueue('pv_a', '{}')$$);
-- so does a membership change
REVOKE pv_group FROM pv_member;
SELECT regress.as_role('pv_member', $$SELECT broker.enqueue('pv_b', '{}')$$);
GRANT pv_group TO pv_member;
SELECT regress.as_role('pv_member', $$SELECT broker.enqueue('pv_b', '{}')$$);

-- publish: produce on every queue it reaches
SELECT broker.subscribe('pv_a', 'pv.#'), broker.subscribe('pv_b', 'pv.#');
SELECT regress.as_role('pv_member', $$SELECT broker.publish('pv.x', '{}')$$);
SELECT broker.grant('pv_a', 'pv_group', 'produce');
SELECT regress.as_role('pv_member', $$SELECT broker.publish('pv.x', '{}')$$);

-- figures: only for queues one has a privilege on
SET ROLE pv_cons;
SELECT queue FROM broker.metrics() ORDER BY 1;
SELECT queue FROM broker.waiters() ORDER BY 1;
SELECT regress.err($$SELECT * FROM broker.metrics('pv_b')$$);
RESET ROLE;
SET ROLE pv_nobody;
SELECT count(*) FROM broker.metrics();
SELECT count(*) AS other_databases FROM broker.health() WHERE database IS DISTINCT FROM current_database() AND database IS NOT NULL;
RESET ROLE;

-- a consumer's history is shown to its own role (and to those who may see it)
SET ROLE pv_cons;
SET broker.consumer = 'pv-worker';
SELECT count(*) FROM broker.dequeue('pv_a', 1);
RESET broker.consumer;
SELECT consumer FROM broker.consumers WHERE consumer = 'pv-worker';
RESET ROLE;
SET ROLE pv_nobody;
SELECT count(*) AS seen_by_others FROM broker.consumers WHERE consumer = 'pv-worker';
RESET ROLE;
SELECT count(*) AS seen_by_superuser FROM broker.consumers WHERE consumer = 'pv-worker';

-- max_lease: a lease longer than the queue allows is refused
SELECT broker.create_queue('pv_lease', lease => '1 minute', max_lease => '1 hour');
SELECT queue, lease, max_lease FROM broker.queues WHERE queue = 'pv_lease';
SELECT regress.err($$SELECT broker.create_queue('pv_bad', lease => '2 hours', max_lease => '1 hour')$$);
SELECT regress.err($$SELECT broker.create_queue('pv_bad', max_lease => '0')$$);
SELECT broker.enqueue('pv_lease', '{}') > 0 AS ok;
SELECT regress.err($$SELECT broker.dequeue('pv_lease', 1, '100000 years')$$);
SELECT regress.err($$SELECT broker.dequeue('pv_lease', 1, '61 minutes')$$);
CREATE TEMP TABLE pl AS SELECT id, receipt FROM broker.dequeue('pv_lease', 1, '1 hour');
SELECT count(*) FROM pl;
SELECT regress.err(format($$SELECT broker.extend_lease('pv_lease', %s, %s, '2 hours')$$, id, receipt)) FROM pl;
SELECT broker.extend_lease('pv_lease', id, receipt, '30 minutes') IS NOT NULL AS extended FROM pl;
SELECT queue, max_lease FROM broker.queues WHERE queue = 'pv_a';

-- dropping a queue drops its grants; a dropped role's grants are not shown
SELECT broker.drop_queue('pv_later');
SELECT count(*) FROM broker.grants WHERE queue = 'pv_later';
SELECT broker.grant('pv_a', 'pv_nobody', 'consume');
DROP OWNED BY pv_nobody;
REVOKE USAGE ON SCHEMA regress FROM pv_nobody;
DROP ROLE pv_nobody;
SELECT count(*) FROM broker.grants WHERE role = 'pv_nobody';

SELECT broker.drop_queue(q) FROM unnest(ARRAY['pv_a', 'pv_b', 'pv_lease']) q;
DROP FUNCTION regress.as_role(text, text);
REVOKE USAGE ON SCHEMA regress FROM pv_prod, pv_cons, pv_admin, pv_member;
DROP ROLE pv_prod, pv_cons, pv_admin, pv_member, pv_group;
