-- W2b: lease in one transaction, delete with the receipt in the next
\set id 0
\set receipt 0
SELECT id, receipt FROM broker.dequeue('bench') \aset
SELECT broker.delete('bench', :id, :receipt);
