-- What the processor's role may do (run after setup.sql, as the extension's
-- owner or an admin of the queues).  The role must exist:
--     CREATE ROLE processor LOGIN;
-- The HTTP endpoint enqueues (produce); the workers dequeue, release and
-- delete (consume).  Either privilege lets the supervisor read the queues'
-- broker.metrics, and broker.consumers shows it its own workers.
\if :{?shards}
\else
\set shards 4
\endif
SELECT broker.grant('ingest_' || n, 'processor', 'produce'),
       broker.grant('ingest_' || n, 'processor', 'consume')
  FROM generate_series(0, :shards - 1) AS n;
