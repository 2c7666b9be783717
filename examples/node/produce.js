// Produce in a business transaction: the order row, the stock reservation and
// the order's event commit together, or none of them does.
//
//     node produce.js alice widget 19.90
'use strict';
const { Pool } = require('pg');

// Store an order, reserve its item and enqueue its event; resolve to the
// order id.  Rejects with err.code '23514' (check_violation) when the item
// is out of stock: the transaction rolls back, no order and no event.
async function placeOrder(pool, customer, item, total) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows: [order] } = await client.query(
      'INSERT INTO shop_orders (customer, item, total) VALUES ($1, $2, $3) RETURNING id',
      [customer, item, total]);
    // node-postgres sends a plain object as JSON text: it becomes the jsonb payload
    await client.query("SELECT broker.enqueue('orders', $1)",
      [{ order_id: Number(order.id), customer, item, total }]);
    // quantity has CHECK (quantity >= 0): out of stock throws, and the
    // INSERT and the enqueue above roll back with it
    await client.query('UPDATE shop_stock SET quantity = quantity - 1 WHERE item = $1', [item]);
    await client.query('COMMIT');
    return Number(order.id);
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
  }
}

module.exports = { placeOrder };

if (require.main === module) {
  const [customer, item, total] = process.argv.slice(2);
  const pool = new Pool(); // PGHOST, PGPORT, PGUSER, PGDATABASE from the environment
  placeOrder(pool, customer, item, total)
    .then((id) => console.log(`order ${id} placed`))
    .catch((err) => {
      if (err.code !== '23514') throw err;
      console.error(`${item} is out of stock: no order, no event`);
      process.exitCode = 1;
    })
    .finally(() => pool.end());
}
