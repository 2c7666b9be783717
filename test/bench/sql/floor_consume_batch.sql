-- W4: delete the 100 oldest unlocked rows, returning them
WITH d AS (DELETE FROM floor_q
            WHERE id IN (SELECT id FROM floor_q ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
           RETURNING *)
SELECT count(*) FROM d;
