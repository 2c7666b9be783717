-- W2b, 10 per dequeue: lease 10 in one transaction, delete each with its
-- receipt in the next (one statement)
SELECT COALESCE(pg_catalog.array_agg(id), '{}') AS ids,
       COALESCE(pg_catalog.array_agg(receipt), '{}') AS receipts
  FROM broker.dequeue('bench', 10) \gset
SELECT pg_catalog.count(broker.delete('bench', m.id, m.receipt))
  FROM ROWS FROM (pg_catalog.unnest(':ids'::bigint[]), pg_catalog.unnest(':receipts'::bigint[])) AS m(id, receipt);
