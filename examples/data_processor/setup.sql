-- The queues of the async data processor: ingest_0 .. ingest_<shards-1>.
-- Run once, as the owner of the broker extension (or a role granted EXECUTE
-- on broker.create_queue), with as many shards as the processor's --shards:
--     psql -v shards=4 -f setup.sql && psql -v shards=4 -f grants.sql
\if :{?shards}
\else
\set shards 4
\endif
SELECT broker.create_queue('ingest_' || n, if_not_exists => true)
  FROM generate_series(0, :shards - 1) AS n;
