-- Topics: queues subscribe to patterns; publish puts one copy into every
-- queue with a matching pattern.
SELECT broker.create_queue(q) FROM unnest(ARRAY['t_all', 't_orders', 't_eu', 't_star', 't_none']) q;

-- patterns: words of [a-z0-9_-], '*' (one word) or '#' (zero or more)
SELECT left(p, 12) AS p, regress.err(format('SELECT broker.subscribe(%L, %L)', 't_none', p))
  FROM unnest(ARRAY['', 'a..b', '.a', 'a.', 'A', 'a b', '#a', 'a*', '**', 'é', 'a.#b',
                    repeat('a', 256), 'a/b', 'a,b']) p;
SELECT regress.err($$SELECT broker.subscribe('t_none', NULL)$$);
SELECT regress.err($$SELECT broker.subscribe('no_such_queue', 'a')$$);
SELECT regress.err($$SELECT broker.subscribe('Bad Name', 'a')$$);
SELECT broker.subscribe('t_none', repeat('a', 255));
SELECT broker.unsubscribe('t_none', repeat('a', 255));

SELECT broker.subscribe('t_all', '#');
SELECT broker.subscribe('t_orders', 'orders.#');
SELECT broker.subscribe('t_orders', 'orders.#');   -- already there
SELECT broker.subscribe('t_eu', 'orders.*.eu');
SELECT broker.subscribe('t_eu', '*.created.eu');   -- a second pattern: still one copy
SELECT broker.subscribe('t_star', '*');
SELECT broker.subscribe('t_star', 'a.#.b.#.c');
SELECT queue, pattern FROM broker.subscriptions ORDER BY queue, pattern;

-- topics: words without wildcards
SELECT left(t, 12) AS t, regress.err(format('SELECT broker.publish(%L, %L)', t, '{}'))
  FROM unnest(ARRAY['', 'a.*', '#', 'a..b', 'A', 'a.', repeat('a', 256)]) t;
SELECT regress.err($$SELECT broker.publish(NULL, '{}')$$);
SELECT regress.err($$SELECT broker.publish('orders', NULL)$$);
SELECT regress.err($$SELECT broker.publish('orders', '{}', headers => '[1]')$$);
SELECT regress.err($$SELECT broker.publish('orders', '{}', priority => 10)$$);
SELECT regress.err($$SELECT broker.publish('orders', '{}', dedup_key => '')$$);

-- who gets what
CREATE FUNCTION pg_temp.got() RETURNS TABLE(queue text, n text, topic text) LANGUAGE sql AS $$
    SELECT d.name, m.payload->>'n', m.headers->>'topic'
      FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = abs(m.queue_id)
     WHERE d.name LIKE 't\_%' ORDER BY m.id
$$;
SELECT broker.publish('orders.created.eu', '{"n": 1}');
SELECT broker.publish('orders', '{"n": 2}');
SELECT broker.publish('x', '{"n": 3}');
SELECT broker.publish('a.b.c', '{"n": 4}');
SELECT broker.publish('a.x.y.b.c', '{"n": 5}');
SELECT broker.publish('a.b.x.c', '{"n": 6}');
SELECT broker.publish('a.c.b', '{"n": 7}');
SELECT broker.publish(repeat('a.', 127) || 'a', '{"n": 8}');
SELECT queue, n, left(topic, 20) AS topic FROM pg_temp.got();
SELECT broker.purge_queue(q) FROM unnest(ARRAY['t_all', 't_orders', 't_eu', 't_star']) q;

-- headers: the given ones with "topic" set (a given "topic" is replaced)
SELECT broker.publish('orders.paid', '{"n": 9}', headers => '{"trace": "x", "topic": "mine"}');
SELECT d.name, m.headers FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
 WHERE m.payload->>'n' = '9' ORDER BY d.name;
SELECT broker.purge_queue(q) FROM unnest(ARRAY['t_all', 't_orders']) q;

-- each queue's own rules: its default_ttl; its size limit for all or nothing
SELECT broker.create_queue('t_small', max_message_size => 64, default_ttl => '1 hour');
SELECT broker.subscribe('t_small', 'sized');
SELECT broker.publish('sized', '{"n": 10}');
SELECT d.name, m.expires_at IS NOT NULL AS expires FROM broker.messages m
  JOIN broker.queue_defs d USING (queue_id) WHERE m.payload->>'n' = '10' ORDER BY d.name;
SELECT regress.err($$SELECT broker.publish('sized', jsonb_build_object('n', 11, 'pad', repeat('x', 100)))$$);
SELECT count(*) AS copies_of_11 FROM broker.messages WHERE payload->>'n' = '11';
-- ttl and delay of the call apply to every copy
SELECT broker.publish('sized', '{"n": 12}', delay => '1 hour', ttl => '2 hours');
SELECT count(*) FROM broker.messages WHERE payload->>'n' = '12' AND vt > now() + '50 minutes'
   AND expires_at > now() + '110 minutes';

-- all copies or none: in the caller's transaction
BEGIN;
SELECT broker.publish('orders.rolled', '{"n": 13}');
ROLLBACK;
SELECT count(*) AS copies_of_13 FROM broker.messages WHERE payload->>'n' = '13';

-- dedup per queue: a queue that has the key gets no copy and is not counted
SELECT broker.enqueue('t_orders', '{"n": "direct"}', dedup_key => 'once') > 0 AS ok;
SELECT broker.publish('orders.dup', '{"n": 14}', dedup_key => 'once');
SELECT broker.publish('orders.dup', '{"n": 15}', dedup_key => 'once');
SELECT d.name, m.payload->>'n' AS n FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)
 WHERE m.payload->>'n' IN ('direct', '14', '15') ORDER BY d.name, n;

-- groups and priorities go with every copy
SELECT broker.purge_queue(q) FROM unnest(ARRAY['t_all', 't_orders', 't_eu', 't_star', 't_small']) q;
SELECT broker.publish('orders.g', '{"n": "g1"}', group_key => 'g') AS copies;
SELECT broker.publish('orders.g', '{"n": "g2"}', group_key => 'g') AS copies;
SELECT broker.publish('orders.g', '{"n": "hi"}', priority => 9) AS copies;
SELECT string_agg(payload->>'n', ' ' ORDER BY id) FROM broker.dequeue('t_orders', 10);
SELECT string_agg(payload->>'n', ' ' ORDER BY id) FROM broker.dequeue('t_all', 10);

-- unsubscribe; no match is not an error
SELECT broker.unsubscribe('t_all', '#');
SELECT broker.unsubscribe('t_all', '#');
SELECT broker.unsubscribe('t_all', 'never');
SELECT regress.err($$SELECT broker.unsubscribe('t_all', 'a..b')$$);
SELECT broker.publish('nobody.listens', '{}');

-- drop_queue removes a queue's subscriptions
SELECT broker.drop_queue('t_eu');
SELECT queue, pattern FROM broker.subscriptions ORDER BY queue, pattern;
SELECT count(*) FROM broker.subscription_defs s WHERE NOT EXISTS
    (SELECT FROM broker.queue_defs d WHERE d.queue_id = s.queue_id);
SELECT broker.publish('orders.created.eu', '{"n": 16}');

-- many subscriptions: matching does not scan them all (correctness here;
-- the cost is in the benchmark)
SELECT count(broker.subscribe('t_none', 'bulk.' || g || '.#')) FROM generate_series(1, 2000) g;
SELECT broker.publish('bulk.1999.x', '{"n": 17}');
SELECT broker.publish('bulk.2001.x', '{"n": 18}');

-- privileges: subscribe and unsubscribe need admin on the queue
CREATE ROLE broker_topic_user;
GRANT USAGE ON SCHEMA regress TO broker_topic_user;
SET ROLE broker_topic_user;
SELECT regress.err($$SELECT broker.subscribe('t_all', 'x')$$);
-- publish needs produce on every queue it reaches, or is refused as a whole
SELECT regress.err($$SELECT broker.publish('sized', '{"n": 19}')$$);
RESET ROLE;
SELECT broker.grant('t_star', 'broker_topic_user', 'produce');
SET ROLE broker_topic_user;
-- it reaches t_star and t_small: produce on one is not enough
SELECT regress.err($$SELECT broker.publish('sized', '{"n": 19}')$$);
RESET ROLE;
SELECT broker.grant('*', 'broker_topic_user', 'produce');
SET ROLE broker_topic_user;
SELECT broker.publish('sized', '{"n": 19}');
SELECT queue, pattern FROM broker.subscriptions WHERE queue = 't_star' ORDER BY pattern;
RESET ROLE;
SELECT broker.revoke('*', 'broker_topic_user', 'produce');
SELECT broker.revoke('t_star', 'broker_topic_user', 'produce');
SELECT count(*) AS copies_of_19 FROM broker.messages WHERE payload->>'n' = '19';
REVOKE USAGE ON SCHEMA regress FROM broker_topic_user;
DROP ROLE broker_topic_user;

SELECT broker.drop_queue(q) FROM unnest(ARRAY['t_all', 't_orders', 't_star', 't_none', 't_small']) q;
SELECT count(*) FROM broker.subscription_defs;
