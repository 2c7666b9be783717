-- Baselines, written in plain SQL (issue #4): the floor and a PGMQ-style queue.
CREATE EXTENSION IF NOT EXISTS broker;
CREATE TABLE IF NOT EXISTS floor_q (id bigserial PRIMARY KEY, payload jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS pgmq_q (
    msg_id      bigserial PRIMARY KEY,
    read_ct     integer NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    vt          timestamptz NOT NULL DEFAULT now(),
    message     jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS pgmq_q_vt ON pgmq_q (vt);
SELECT broker.create_queue('bench', if_not_exists => true);
-- W7: a hundred more queues
SELECT count(broker.create_queue('bench_' || g, if_not_exists => true)) FROM generate_series(0, 99) g;
