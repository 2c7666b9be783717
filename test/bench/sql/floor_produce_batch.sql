-- W4: INSERT ... SELECT of 100 rows
INSERT INTO floor_q (payload) SELECT jsonb_build_object('n', g, 'ts', 1700000000000000, 'pad', 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') FROM generate_series(1, 100) g;
