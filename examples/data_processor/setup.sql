-- The queues of the async data processor: ingest_0 .. ingest_<shards-1>.
-- Run once, as the owner of the broker extension (or a role granted EXECUTE
-- on broker.create_queue), with as many shards as the processor's --shards:
--     psql -v shards=4 -f setup.sql && psql -v shards=4 -f grants.sql
--
-- dedup_window: how long a queue remembers the dedup key of a message that
-- POST /message enqueued ("<request id>#<k>", see http.c).  A transaction
-- that the endpoint makes again after losing its connection in a COMMIT
-- comes within seconds; a client that sends a request again with the same
-- Idempotency-Key must do so within this window.  It cannot be changed
-- later: a queue that exists already keeps its own (5 minutes by default).
\if :{?shards}
\else
\set shards 4
\endif
SELECT broker.create_queue('ingest_' || n, dedup_window => '15 minutes', if_not_exists => true)
  FROM generate_series(0, :shards - 1) AS n;
