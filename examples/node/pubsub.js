// Publish/subscribe: setup.sql subscribed `billing` to 'orders.*.paid' and
// `audit` to '#'.  A publish puts one copy into every queue with a matching
// pattern, in the publisher's transaction; each copy's headers carry the topic.
//
//     node pubsub.js eu 42          # publish orders.eu.paid, then read both queues
'use strict';
const { Pool } = require('pg');

// Publish `payload` on `topic`; resolve to how many queues got a copy.
async function publish(db, topic, payload) {
  const { rows: [r] } = await db.query('SELECT broker.publish($1, $2) AS copies', [topic, payload]);
  return r.copies;
}

// Take what is in `queue` and acknowledge it in one statement (one
// transaction): resolve to [{ topic, payload }].
async function receive(db, queue, maxMessages = 100) {
  const { rows } = await db.query(
    `SELECT m.headers->>'topic' AS topic, m.payload, broker.delete($1, m.id)
       FROM broker.dequeue($1, $2) m`,
    [queue, maxMessages]);
  return rows.map(({ topic, payload }) => ({ topic, payload }));
}

module.exports = { publish, receive };

if (require.main === module) {
  const [region, orderId] = process.argv.slice(2);
  const pool = new Pool();
  (async () => {
    console.log('copies:', await publish(pool, `orders.${region}.paid`, { order_id: Number(orderId) }));
    for (const queue of ['billing', 'audit']) console.log(queue, await receive(pool, queue));
  })().finally(() => pool.end());
}
