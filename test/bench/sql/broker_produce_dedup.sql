-- W8: enqueue with a dedup key (random, so almost never a duplicate)
\set n random(1, 1000000000)
SELECT broker.enqueue('bench', jsonb_build_object('n', :n, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'), dedup_key => 'k' || :n);
