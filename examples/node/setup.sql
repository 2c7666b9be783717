-- The queues and tables of the Node examples.  Run once, as the owner of
-- the broker extension (or a role granted EXECUTE on broker.create_queue),
-- then grants.sql:
--     psql -f setup.sql && psql -f grants.sql

-- the shop's business tables
CREATE TABLE IF NOT EXISTS shop_orders (
    id         bigserial PRIMARY KEY,
    customer   text NOT NULL,
    item       text NOT NULL,
    total      numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shop_stock (
    item     text PRIMARY KEY,
    quantity integer NOT NULL CHECK (quantity >= 0)
);

-- order events: 30 s leases; a message that fails 5 deliveries goes to orders_dead
SELECT broker.create_queue('orders_dead', if_not_exists => true);
SELECT broker.create_queue('orders', lease => '30 seconds', max_deliveries => 5,
                           dead_letter_queue => 'orders_dead', if_not_exists => true);

-- publish/subscribe: billing gets the paid orders of every region, audit gets everything
SELECT broker.create_queue('billing', if_not_exists => true);
SELECT broker.create_queue('audit', if_not_exists => true);
SELECT broker.subscribe('billing', 'orders.*.paid');
SELECT broker.subscribe('audit', '#');

-- jobs: the outcome of every thumbnail job is kept for a day
SELECT broker.create_queue('thumbnails', lease => '1 minute', retention => '1 day',
                           if_not_exists => true);
