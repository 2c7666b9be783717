// Consume with long-poll and receipts.
//
// Each batch is taken under a lease in its own transaction (autocommit), the
// work runs outside any transaction, and each message is deleted with its
// receipt afterwards.  While a handler works, a timer extends the lease
// every third of it (a heartbeat).  A handler that throws hands its message
// back with a delay (release); after max_deliveries the queue moves it to
// its dead-letter queue.
//
//     node consume.js              # print the order events, until Ctrl-C
'use strict';
const { Client } = require('pg');

// Take messages from `queue` and await handle(payload) for each, until
// `signal` is aborted (checked after each wait of at most `wait` seconds).
// `client` is a connected pg.Client of its own: a long-poll holds it.
// Ids and receipts are bigints, which node-postgres returns as strings:
// pass them back as they are.
async function consume(client, queue, handle,
  { batch = 10, lease = 30, wait = 20, retryDelay = 10, signal } = {}) {
  while (!signal?.aborted) {
    const { rows } = await client.query(
      `SELECT id, receipt, payload FROM broker.dequeue($1, $2, lease => $3, wait => $4)`,
      [queue, batch, `${lease} s`, `${wait} s`]);
    for (const { id, receipt, payload } of rows) {
      let lost = false;
      const heartbeat = setInterval(() => {
        client.query('SELECT broker.extend_lease($1, $2, $3, $4) AS until',
          [queue, id, receipt, `${lease} s`])
          .then(({ rows: [r] }) => { if (r.until === null) lost = true; }) // someone else has it
          .catch(() => { lost = true; });
      }, (lease * 1000) / 3);
      try {
        await handle(payload);
      } catch (err) {
        console.error(`message ${id} failed (${err.message}); retrying in ${retryDelay} s`);
        await client.query('SELECT broker.release($1, $2, $3, delay => $4)',
          [queue, id, receipt, `${retryDelay} s`]);
        continue;
      } finally {
        clearInterval(heartbeat);
      }
      // done: acknowledge (false: the lease was lost and the message
      // delivered again meanwhile; its new holder acknowledges it)
      if (!lost) await client.query('SELECT broker.delete($1, $2, $3)', [queue, id, receipt]);
    }
  }
}

module.exports = { consume };

if (require.main === module) {
  // name this consumer in broker.consumers
  const client = new Client({ options: '-c broker.consumer=orders-printer' });
  const stop = new AbortController();
  process.on('SIGINT', () => stop.abort());
  client.connect()
    .then(() => consume(client, 'orders',
      async (order) => console.log(`order ${order.order_id} for ${order.customer} ${order.total}`),
      { wait: 5, signal: stop.signal }))
    .finally(() => client.end());
}
