-- W8: dequeue 1 + delete from the queue with 10 priorities in use
BEGIN;
\set id 0
SELECT id FROM broker.dequeue('bench_p') \aset
SELECT broker.delete('bench_p', :id);
END;
