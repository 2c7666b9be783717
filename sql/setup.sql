-- Set-up for the other regress files (run first, see REGRESS in the
-- Makefile): the extension, and helpers in a schema of their own.
CREATE EXTENSION IF NOT EXISTS broker;

-- the server loaded the library of this build's version
SELECT library_version = extension_version AS library_matches, preloaded
  FROM broker.health() LIMIT 1;

CREATE SCHEMA regress;

-- The SQLSTATE and message of a statement that must fail ('ok' if not).
CREATE FUNCTION regress.err(cmd text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- Wait until a query returns true, polling every 10 ms, for at most
-- "timeout"; returns whether it did.  Tests wait for a condition, never
-- for a fixed time against a short lease.
CREATE FUNCTION regress.wait_until(cond text, timeout interval DEFAULT '60 seconds')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
    deadline timestamptz := clock_timestamp() + timeout;
BEGIN
    LOOP
        EXECUTE cond INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;

-- Wait until no message of a queue is leased or delayed any more: every
-- lease or delay that was running has run out.
CREATE FUNCTION regress.wait_due(queue text) RETURNS boolean LANGUAGE sql AS $$
    SELECT regress.wait_until(format(
        'SELECT NOT EXISTS (SELECT FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = abs(m.queue_id)'
        ' WHERE d.name = %L AND m.vt > clock_timestamp())', queue))
$$;

-- Wait until every message of a queue that has a ttl has expired.
CREATE FUNCTION regress.wait_expired(queue text) RETURNS boolean LANGUAGE sql AS $$
    SELECT regress.wait_until(format(
        'SELECT NOT EXISTS (SELECT FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = abs(m.queue_id)'
        ' WHERE d.name = %L AND m.expires_at > clock_timestamp())', queue))
$$;
