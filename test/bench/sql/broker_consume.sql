-- dequeue 1 + delete, one transaction, the two calls a client makes
BEGIN;
\set id 0
SELECT id FROM broker.dequeue('bench') \aset
SELECT broker.delete('bench', :id);
END;
