-- W8: the same 10 copies as 10 enqueues in one transaction
\set n random(1, 1000000000)
BEGIN;
SELECT broker.enqueue('bench_t0', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t1', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t2', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t3', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t4', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t5', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t6', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t7', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t8', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
SELECT broker.enqueue('bench_t9', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
END;
