\set n random(1, 1000000000)
INSERT INTO pgmq_q (message) VALUES (jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'));
