-- W9: dequeue 1 + complete with a result, one transaction, on a queue that keeps records
BEGIN;
\set id 0
SELECT id, receipt FROM broker.dequeue('bench_j') \aset
SELECT broker.complete('bench_j', :id, :receipt, '{"ok": true}');
END;
