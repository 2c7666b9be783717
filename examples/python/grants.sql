-- What the two roles of the Python examples may do (run after setup.sql, as
-- the extension's owner or an admin of these queues).  The roles must exist:
--     CREATE ROLE shop_app LOGIN;      -- the web application
--     CREATE ROLE shop_worker LOGIN;   -- the background workers

-- the application writes orders and their events in one transaction
GRANT SELECT, INSERT ON shop_orders TO shop_app;
GRANT USAGE ON SEQUENCE shop_orders_id_seq TO shop_app;
GRANT SELECT, UPDATE ON shop_stock TO shop_app;
SELECT broker.grant('orders', 'shop_app', 'produce');
-- publish needs produce on every queue the topic reaches
SELECT broker.grant('billing', 'shop_app', 'produce');
SELECT broker.grant('audit', 'shop_app', 'produce');
-- submitting a job is an enqueue; polling its status needs consume
SELECT broker.grant('thumbnails', 'shop_app', 'produce');
SELECT broker.grant('thumbnails', 'shop_app', 'consume');

-- the workers take, acknowledge and complete
SELECT broker.grant('orders', 'shop_worker', 'consume');
SELECT broker.grant('orders_dead', 'shop_worker', 'consume');
SELECT broker.grant('billing', 'shop_worker', 'consume');
SELECT broker.grant('audit', 'shop_worker', 'consume');
SELECT broker.grant('thumbnails', 'shop_worker', 'consume');
