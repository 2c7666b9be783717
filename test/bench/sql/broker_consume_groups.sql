-- W8: dequeue 1 + delete from the queue whose messages are in 1,000 groups
BEGIN;
\set id 0
SELECT id FROM broker.dequeue('bench_g') \aset
SELECT broker.delete('bench_g', :id);
END;
