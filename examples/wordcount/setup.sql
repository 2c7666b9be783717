-- The queue of the word-count web-queue-worker.  Run once, as the owner of
-- the broker extension (or a role granted EXECUTE on broker.create_queue),
-- then grants.sql:
--     psql -f setup.sql && psql -f grants.sql
--
-- Jobs of up to 1 MB of text, whose outcome (the counts, or the error) is
-- kept for a day after they finish; a job whose worker dies three times
-- (its lease running out each time) ends failed.
SELECT broker.create_queue('wordcount', lease => '30 seconds', max_message_size => 1048576,
                           max_deliveries => 3, retention => '1 day', if_not_exists => true);
