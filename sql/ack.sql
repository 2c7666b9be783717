-- Acknowledging: delete (with and without receipt, many), release, extend_lease.
CREATE EXTENSION IF NOT EXISTS broker;

SELECT broker.create_queue('aq');

-- delete by id
SELECT broker.enqueue('aq', '{"n": 1}') AS id \gset
SELECT broker.delete('aq', :id);
SELECT broker.delete('aq', :id);
SELECT broker.delete('aq', 999999999);
SELECT count(*) AS never_again FROM broker.dequeue('aq');

-- delete with the receipt of the current delivery, and with a stale one
SELECT broker.enqueue('aq', '{"n": 2}') AS id \gset
SELECT receipt AS r1 FROM broker.dequeue('aq', 1, lease => '100 ms') \gset
SELECT regress.wait_due('aq');
SELECT receipt AS r2 FROM broker.dequeue('aq') \gset
SELECT broker.delete('aq', :id, :r1) AS stale_receipt;
SELECT broker.delete('aq', :id, :r2) AS current_receipt;
SELECT broker.delete('aq', :id, :r2) AS already_deleted;
SELECT regress.err($$SELECT broker.delete('aq', NULL)$$);

-- delete many: those that exist, returned
SELECT array_agg(id ORDER BY id) AS ids FROM broker.enqueue_batch('aq', ARRAY['{"a": 1}', '{"a": 2}', '{"a": 3}']::jsonb[]) AS id \gset
SELECT broker.delete('aq', (:'ids'::bigint[])[2]);
SELECT count(*) AS deleted, bool_and(x = ANY (:'ids'::bigint[])) AS only_those
  FROM broker.delete('aq', :'ids'::bigint[] || ARRAY[0, NULL, 999999999]::bigint[]) AS x;
SELECT count(*) FROM broker.delete('aq', ARRAY[]::bigint[]);
SELECT regress.err($$SELECT broker.delete('aq', NULL::bigint[])$$);
SELECT total FROM broker.metrics('aq');

-- release: deliverable again at once, or after a delay
SELECT broker.enqueue('aq', '{"n": "rel"}') AS id \gset
SELECT receipt AS r FROM broker.dequeue('aq') \gset
SELECT broker.release('aq', :id, :r + 1) AS wrong_receipt;
SELECT broker.release('aq', :id, :r) AS released;
SELECT broker.release('aq', :id, :r) AS released_twice;
SELECT broker.delete('aq', :id, :r) AS delete_after_release;
SELECT receipt AS r, delivery_count FROM broker.dequeue('aq') \gset
SELECT :delivery_count AS delivery_count_after_release;
SELECT broker.release('aq', :id, :r, delay => '1 hour') AS released_with_delay;
SELECT ready, leased, delayed FROM broker.metrics('aq');
SELECT count(*) AS not_before_delay FROM broker.dequeue('aq');
SELECT regress.err(format('SELECT broker.release(%L, %s, %s, delay => %L)', 'aq', :id, :r, '-1 s'));
SELECT regress.err(format('SELECT broker.release(%L, %s, NULL)', 'aq', :id));
SELECT broker.release('aq', 999999999, 1) AS no_message;
SELECT broker.purge_queue('aq');

-- extend_lease: a heartbeat
SELECT broker.enqueue('aq', '{"n": "ext"}') AS id \gset
SELECT receipt AS r, lease_until AS first_until FROM broker.dequeue('aq', 1, lease => '100 ms') \gset
SELECT broker.extend_lease('aq', :id, :r, '1 hour')
       BETWEEN now() + '1 hour' AND clock_timestamp() + '1 hour' AS extended;
SELECT regress.wait_until(format('SELECT clock_timestamp() > %L::timestamptz', :'first_until'));
SELECT count(*) AS still_held FROM broker.dequeue('aq');
SELECT vt > now() + '59 minutes' AS lease_until_moved FROM broker.messages WHERE id = :id;
SELECT broker.extend_lease('aq', :id, :r + 1, '1 hour') IS NULL AS stale_is_null;
SELECT broker.extend_lease('aq', 999999999, 1, '1 hour') IS NULL AS missing_is_null;
SELECT regress.err(format('SELECT broker.extend_lease(%L, %s, %s, %L)', 'aq', :id, :r, '0'));
SELECT regress.err(format('SELECT broker.extend_lease(%L, %s, %s, NULL)', 'aq', :id, :r));
SELECT broker.delete('aq', :id, :r) AS deleted_with_receipt;

-- delete(ids[]) in the transaction that leased them: held rows are deleted
-- where the lease says they are, the others by id; nulls and duplicates
-- match once or not at all; group heads move on; records keep the lease's
-- delivery count
SELECT broker.create_queue('ak_mix', lease => '1 hour', retention => '1 day');
CREATE TEMP TABLE ak_ids AS
SELECT g AS n, broker.enqueue('ak_mix', jsonb_build_object('n', g),
                              group_key => CASE WHEN g <= 2 THEN 'g' END) AS id
  FROM generate_series(1, 6) g;
BEGIN;
CREATE TEMP TABLE ak_leased AS SELECT id FROM broker.dequeue('ak_mix', 3);
SELECT count(*) AS leased FROM ak_leased;
SELECT n FROM broker.delete('ak_mix', ARRAY(
         SELECT id FROM ak_leased                      -- held (1, 3, 4)
         UNION ALL SELECT id FROM ak_ids WHERE n = 5    -- not held
         UNION ALL SELECT NULL                          -- matches nothing
         UNION ALL SELECT id FROM ak_ids WHERE n = 1    -- held, twice
       )) AS d(id) JOIN ak_ids USING (id) ORDER BY n;
COMMIT;
SELECT i.n, m.queue_id < 0 AS waiting FROM broker.messages m JOIN ak_ids i USING (id) ORDER BY 1;
SELECT i.n, s.state, s.delivery_count FROM ak_ids i, broker.status('ak_mix', i.id) s ORDER BY i.n;
SELECT broker.drop_queue('ak_mix');

SELECT broker.drop_queue('aq');
