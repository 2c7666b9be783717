\set msg_id 0
UPDATE pgmq_q SET vt = clock_timestamp() + interval '30 seconds', read_ct = read_ct + 1
 WHERE msg_id = (SELECT msg_id FROM pgmq_q WHERE vt <= clock_timestamp()
                  ORDER BY msg_id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING msg_id, message \aset
DELETE FROM pgmq_q WHERE msg_id = :msg_id;
