-- dequeue 1 + delete in one statement
SELECT broker.delete('bench', d.id) FROM broker.dequeue('bench') d;
