-- W7: dequeue 1 + delete from a random one of the queues bench_0 .. bench_99
\set q random(0, 99)
\set id 0
BEGIN;
SELECT id FROM broker.dequeue('bench_' || :q) \aset
SELECT broker.delete('bench_' || :q, :id);
END;
