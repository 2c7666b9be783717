-- W4: one PgQ batch (the events between two ticks), in one transaction
BEGIN;
SELECT coalesce(pgq.next_batch('bench_pgq', 'bench'), 0) AS batch_id \gset
\if :batch_id > 0
SELECT count(*) FROM pgq.get_batch_events(:batch_id);
SELECT pgq.finish_batch(:batch_id);
\endif
END;
