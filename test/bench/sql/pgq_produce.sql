-- W1: one event per transaction
\set g random(1, 1000000000)
SELECT pgq.insert_event('bench_pgq', 'ev', (jsonb_build_object('n', :g, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'))::text);
