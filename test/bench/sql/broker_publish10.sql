-- W8: one publish that 10 queues subscribe to
\set n random(1, 1000000000)
SELECT broker.publish('bench.fanout', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
