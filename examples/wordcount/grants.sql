-- What the two roles of the word-count example may do (run after setup.sql,
-- as the extension's owner or an admin of the queue).  The roles must exist:
--     CREATE ROLE wordcount_api LOGIN;
--     CREATE ROLE wordcount_worker LOGIN;

-- the web API submits jobs (produce) and reads their status, which needs consume
SELECT broker.grant('wordcount', 'wordcount_api', 'produce');
SELECT broker.grant('wordcount', 'wordcount_api', 'consume');
-- the workers take jobs and complete or fail them
SELECT broker.grant('wordcount', 'wordcount_worker', 'consume');
