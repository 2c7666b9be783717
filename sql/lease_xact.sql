-- A lease taken and used in the same transaction.  A lease is written at
-- commit, and not at all when the transaction deletes the message; what
-- every case sees must be what a lease written at once would give.
CREATE EXTENSION IF NOT EXISTS broker;
SELECT broker.create_queue('lx', lease => '1 hour');

CREATE FUNCTION pg_temp.cases() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    m broker.message;
    m2 broker.message;
    n bigint;
    ok boolean;
    t timestamptz;
BEGIN
    PERFORM broker.purge_queue('lx');

    -- dequeue + delete with the receipt: deleted; a wrong receipt: not
    PERFORM broker.enqueue('lx', '{"c": 1}');
    SELECT * INTO m FROM broker.dequeue('lx');
    ok := broker.delete('lx', m.id, m.receipt + 1);
    RETURN NEXT 'wrong receipt deletes: ' || ok;
    ok := broker.delete('lx', m.id, m.receipt);
    RETURN NEXT 'right receipt deletes: ' || ok;
    ok := broker.delete('lx', m.id, m.receipt);
    RETURN NEXT 'again: ' || ok;

    -- dequeue twice in one transaction: never the same message
    PERFORM broker.enqueue_batch('lx', ARRAY['{"c": 2}', '{"c": 3}']::jsonb[]);
    SELECT * INTO m FROM broker.dequeue('lx');
    SELECT * INTO m2 FROM broker.dequeue('lx');
    RETURN NEXT 'second dequeue, other message: ' || (m.id <> m2.id);
    SELECT count(*) INTO n FROM broker.dequeue('lx', 10);
    RETURN NEXT 'third dequeue finds: ' || n;

    -- release in the same transaction: the lease given back
    ok := broker.release('lx', m.id, m.receipt, '1 hour');
    RETURN NEXT 'release: ' || ok;
    ok := broker.release('lx', m.id, m.receipt);
    RETURN NEXT 'release twice: ' || ok;
    ok := broker.delete('lx', m.id, m.receipt);
    RETURN NEXT 'delete with the released receipt: ' || ok;

    -- extend in the same transaction
    t := broker.extend_lease('lx', m2.id, m2.receipt, '2 hours');
    RETURN NEXT 'extended: ' || (t > now() + '119 minutes');
    RETURN NEXT 'extend with a wrong receipt is null: ' ||
        (broker.extend_lease('lx', m2.id, m2.receipt + 1, '2 hours') IS NULL);

    -- a savepoint that deletes, then rolls back: the lease stays
    PERFORM broker.enqueue('lx', '{"c": 4}');
    SELECT * INTO m FROM broker.dequeue('lx');
    BEGIN
        PERFORM broker.delete('lx', m.id, m.receipt);
        PERFORM broker.extend_lease('lx', m2.id, m2.receipt, '3 hours');
        RAISE EXCEPTION 'roll back';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    ok := broker.delete('lx', m.id, m.receipt + 1);
    RETURN NEXT 'after rollback to savepoint, a wrong receipt still fails: ' || ok;

    -- a dequeue inside a savepoint that rolls back: the message is free
    PERFORM broker.enqueue('lx', '{"c": 5}');
    BEGIN
        PERFORM broker.dequeue('lx');
        RAISE EXCEPTION 'roll back';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    SELECT * INTO m2 FROM broker.dequeue('lx');
    RETURN NEXT 'taken again after the savepoint rolled back: ' || (m2.payload->>'c') ||
        ', delivery ' || m2.delivery_count;
    PERFORM broker.delete('lx', m2.id);
END $$;

-- what the transaction left behind, as other sessions see it after commit
CREATE FUNCTION pg_temp.after() RETURNS TABLE(c text, delivery_count int, leased text, receipt boolean)
LANGUAGE sql AS $$
    SELECT payload->>'c', delivery_count,
           CASE WHEN vt > now() + '170 minutes' THEN '3h'
                WHEN vt > now() + '110 minutes' THEN '2h'
                WHEN vt > now() + '50 minutes' THEN '1h'
                WHEN vt > now() THEN 'some' ELSE 'none' END,
           receipt IS NOT NULL
      FROM broker.messages WHERE queue_id = (SELECT queue_id FROM broker.queue_defs WHERE name = 'lx')
     ORDER BY id
$$;

SELECT * FROM pg_temp.cases();
SELECT * FROM pg_temp.after();
SELECT ready, leased, delayed FROM broker.metrics('lx');

-- PREPARE TRANSACTION writes the leases first
SELECT broker.purge_queue('lx');
SELECT broker.enqueue('lx', '{"c": "prepared"}') > 0 AS enqueued;
BEGIN;
SELECT payload FROM broker.dequeue('lx');
PREPARE TRANSACTION 'lx_dequeue';
COMMIT PREPARED 'lx_dequeue';
SELECT * FROM pg_temp.after();

-- a lease written at commit survives as any other
BEGIN;
SELECT broker.enqueue('lx', '{"c": "later"}') > 0 AS enqueued;
COMMIT;
BEGIN;
SELECT payload, delivery_count FROM broker.dequeue('lx');
COMMIT;
SELECT * FROM pg_temp.after();
SELECT count(*) AS none_left FROM broker.dequeue('lx');

SELECT broker.drop_queue('lx');
