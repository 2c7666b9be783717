-- W9: status of a random job of the preload
\set id random(:lo, :hi)
SELECT state FROM broker.status('bench_j', :id);
