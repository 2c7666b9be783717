-- W8: the same on a queue without groups
BEGIN;
\set id 0
SELECT id FROM broker.dequeue('bench_ng') \aset
SELECT broker.delete('bench_ng', :id);
END;
