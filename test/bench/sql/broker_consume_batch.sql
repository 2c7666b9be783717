-- W4: dequeue 100 + delete them, one statement (one transaction)
SELECT count(*) FROM broker.delete('bench', ARRAY(SELECT id FROM broker.dequeue('bench', 100)));
