-- W9: the same cycle ending in delete, on a queue without retention
BEGIN;
\set id 0
SELECT id, receipt FROM broker.dequeue('bench_jp') \aset
SELECT broker.delete('bench_jp', :id, :receipt);
END;
