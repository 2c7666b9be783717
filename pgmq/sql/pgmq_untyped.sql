-- broker_pgmq: calls whose arguments are untyped parameters, as drivers
-- send them ($1, $2, ... with no type), resolve to one function each.
-- PREPARE without types leaves every parameter unknown; the types each one
-- got (pg_prepared_statements.parameter_types) show the function chosen.
\set SHOW_CONTEXT never
SELECT pgmq.create('u');

PREPARE create_q AS SELECT pgmq.create($1);
PREPARE create_unlogged AS SELECT pgmq.create_unlogged($1);
PREPARE create_np AS SELECT pgmq.create_non_partitioned($1);
PREPARE create_part AS SELECT pgmq.create_partitioned($1);
PREPARE drop_q AS SELECT pgmq.drop_queue($1);
PREPARE drop_q2 AS SELECT pgmq.drop_queue($1, $2);
PREPARE purge AS SELECT pgmq.purge_queue($1);
PREPARE detach AS SELECT pgmq.detach_archive($1);
PREPARE send2 AS SELECT * FROM pgmq.send($1, $2);
PREPARE send3 AS SELECT * FROM pgmq.send($1, $2, $3);
PREPARE send4 AS SELECT * FROM pgmq.send($1, $2, $3, $4);
PREPARE send_batch2 AS SELECT * FROM pgmq.send_batch($1, $2);
PREPARE send_batch3 AS SELECT * FROM pgmq.send_batch($1, $2, $3);
PREPARE send_batch3_js AS SELECT * FROM pgmq.send_batch($1, $2::jsonb[], $3);   -- pgmq-js
PREPARE send_batch4 AS SELECT * FROM pgmq.send_batch($1, $2, $3, $4);
PREPARE read3 AS SELECT * FROM pgmq.read($1, $2, $3);
PREPARE read4 AS SELECT * FROM pgmq.read($1, $2, $3, $4);
PREPARE read_poll AS SELECT * FROM pgmq.read_with_poll($1, $2, $3, $4, $5);
PREPARE pop1 AS SELECT * FROM pgmq.pop($1);
PREPARE pop2 AS SELECT * FROM pgmq.pop($1, $2);
PREPARE delete2 AS SELECT pgmq.delete($1, $2);
PREPARE delete_js AS SELECT pgmq.delete($1, $2::bigint);                 -- pgmq-js
PREPARE delete_many_js AS SELECT pgmq.delete($1, $2::bigint[]);          -- pgmq-js
PREPARE archive2 AS SELECT pgmq.archive($1, $2);
PREPARE archive_js AS SELECT pgmq.archive($1, $2::bigint);
PREPARE set_vt3 AS SELECT * FROM pgmq.set_vt($1, $2, $3);
PREPARE set_vt_id AS SELECT * FROM pgmq.set_vt($1, $2::bigint, $3);
PREPARE set_vt_ids AS SELECT * FROM pgmq.set_vt($1, $2::bigint[], $3);
PREPARE set_vt_int AS SELECT * FROM pgmq.set_vt($1, $2, $3::integer);
PREPARE set_vt_ts AS SELECT * FROM pgmq.set_vt($1, $2, $3::timestamptz);
PREPARE metrics1 AS SELECT * FROM pgmq.metrics($1);
PREPARE bind AS SELECT pgmq.bind_topic($1, $2);
PREPARE unbind AS SELECT pgmq.unbind_topic($1, $2);
PREPARE send_topic2 AS SELECT pgmq.send_topic($1, $2);
PREPARE send_topic3 AS SELECT pgmq.send_topic($1, $2, $3);
PREPARE send_topic4 AS SELECT pgmq.send_topic($1, $2, $3, $4);
SELECT name, parameter_types FROM pg_prepared_statements ORDER BY name COLLATE "C";

-- and they run (results kept in a table, shown without ids and times)
EXECUTE create_q('u2');
EXECUTE send2('u2', '{"n": 1}') \gset sent1_
EXECUTE send3('u2', '{"n": 2}', '{"h": 2}') \gset sent2_
EXECUTE send3('u2', '{"n": 3}', '0') \gset
EXECUTE send4('u2', '{"n": 4}', '{"h": 4}', '0') \gset
EXECUTE send_batch3('u2', '{"{\"n\": 5}","{\"n\": 6}"}', '0') \g /dev/null
SELECT count(*) AS in_queue FROM pgmq.q_u2;
CREATE TEMP TABLE r AS EXECUTE read3('u2', '30', '2');
SELECT msg_id - :sent1_send AS n, read_ct, message, headers FROM r ORDER BY msg_id;
DROP TABLE r;
CREATE TEMP TABLE r AS EXECUTE set_vt3('u2', :sent2_send, '0');
SELECT msg_id - :sent1_send AS n, vt <= clock_timestamp() AS visible FROM r;
DROP TABLE r;
CREATE TEMP TABLE r AS EXECUTE set_vt3('u2', '{' || :sent1_send || '}', '60');
SELECT msg_id - :sent1_send AS n, vt > clock_timestamp() AS leased FROM r;
DROP TABLE r;
CREATE TEMP TABLE r AS EXECUTE pop2('u2', '1');
SELECT msg_id - :sent1_send AS n, message FROM r;
DROP TABLE r;
EXECUTE delete2('u2', :sent1_send);
EXECUTE archive2('u2', :sent1_send);
SELECT message, headers FROM pgmq.q_u2 ORDER BY msg_id;
EXECUTE purge('u2');
EXECUTE drop_q('u2');
DEALLOCATE ALL;

-- quoted literals are untyped too (PGMQ's own overloads make these
-- ambiguous)
SELECT count(*) FROM pgmq.send('u', '{"x": 1}', '{"h": 1}');
SELECT count(*) FROM pgmq.send_batch('u', '{"{\"x\": 2}"}', '5');
SELECT pgmq.delete('u', '0'), pgmq.archive('u', '0');
SELECT count(*) FROM pgmq.set_vt('u', '{}', '0');
SELECT pgmq.drop_queue('u');
