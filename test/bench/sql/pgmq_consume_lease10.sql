-- W2b, 10 per read: set the visibility timeout of 10 in one transaction,
-- delete them in the next
WITH r AS (
  UPDATE pgmq_q SET vt = clock_timestamp() + interval '30 seconds', read_ct = read_ct + 1
   WHERE msg_id IN (SELECT msg_id FROM pgmq_q WHERE vt <= clock_timestamp()
                     ORDER BY msg_id LIMIT 10 FOR UPDATE SKIP LOCKED)
  RETURNING msg_id)
SELECT COALESCE(array_agg(msg_id), '{}') AS ids FROM r \gset
DELETE FROM pgmq_q WHERE msg_id = ANY (':ids'::bigint[]);
