// Checks the Node examples against a server (run by test.sh after setup.sql
// and grants.sql): the application connects as shop_app, the workers as
// shop_worker.  Prints "ok - ..." / "not ok - ..." lines; exits 1 if one failed.
'use strict';
const { execFile } = require('node:child_process');
const { promisify } = require('node:util');
const { Client, Pool } = require('pg');
const { placeOrder } = require('./produce');
const { consume } = require('./consume');
const { publish, receive } = require('./pubsub');
const jobs = require('./jobs');

let failed = false;
function check(cond, desc) {
  console.log(`${cond ? 'ok' : 'not ok'} - ${desc}`);
  if (!cond) failed = true;
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const until = async (cond, ms) => {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await sleep(10);
};
const untilAsync = async (cond, ms) => {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
};

const owner = new Pool();
const app = new Pool({ user: 'shop_app' });
const one = async (sql, args) => Object.values((await owner.query(sql, args)).rows[0])[0];

// consume() on a client of its own as shop_worker; resolves to { stop, done }
async function runConsumer(queue, handle, opts = {}) {
  const client = new Client({ user: 'shop_worker', options: '-c broker.consumer=test-consumer' });
  await client.connect();
  const stop = new AbortController();
  const done = consume(client, queue, handle, { wait: 0.5, signal: stop.signal, ...opts })
    .finally(() => client.end());
  return { stop: () => stop.abort(), done };
}

async function main() {
  // a clean slate (the test may run again on the same database)
  await owner.query('TRUNCATE shop_orders');
  for (const q of ['orders', 'orders_dead', 'billing', 'audit', 'thumbnails']) {
    await owner.query('SELECT broker.purge_queue($1)', [q]);
  }
  const total = (q) => one('SELECT total::int FROM broker.metrics($1)', [q]);

  // --- produce in a business transaction
  await owner.query(`INSERT INTO shop_stock VALUES ('widget', 1), ('gadget', 5)
                     ON CONFLICT (item) DO UPDATE SET quantity = excluded.quantity`);
  const orderId = await placeOrder(app, 'alice', 'widget', '19.90');
  const err = await placeOrder(app, 'bob', 'widget', '19.90').catch((e) => e);
  check(err?.code === '23514', 'produce: the second widget order fails (out of stock)');
  check(await one('SELECT count(*)::int FROM shop_orders') === 1,
    'produce: only the first order row exists');
  const worker = new Client({ user: 'shop_worker' });
  await worker.connect();
  const { rows } = await worker.query(
    "SELECT payload, broker.delete('orders', id) FROM broker.dequeue('orders', 10)");
  check(rows.length === 1 && rows[0].payload.order_id === orderId,
    "produce: exactly one event, the committed order's");

  // --- consume with long-poll and receipts
  const ackedBefore = await one(`SELECT coalesce(sum(deleted), 0)::int FROM broker.consumers
                                  WHERE consumer = 'test-consumer' AND queue = 'orders'`);
  const seen = [];
  const wakeups = async () => (await owner.query(
    "SELECT wakeups::int AS w, empty_wakeups::int AS e FROM broker.waiters('orders')")).rows[0];
  const wokenBefore = await wakeups();
  // a consumer that waits up to 20 s in one dequeue (the default of consume());
  // one message is enough: it leaves after that batch
  let c = await runConsumer('orders', async (order) => { seen.push([Date.now(), order]); c.stop(); },
    { wait: 20 });
  const waiting = await untilAsync(
    async () => (await one("SELECT waiting FROM broker.waiters('orders')")) === 1, 30000);
  const committed = Date.now();
  const id2 = await placeOrder(app, 'carol', 'gadget', '5.00');
  await until(() => seen.length > 0, 30000);
  c.stop();
  await c.done;
  const wokenAfter = await wakeups();
  const woken = [wokenAfter.w - wokenBefore.w, wokenAfter.e - wokenBefore.e];
  check(waiting && seen.length === 1 && seen[0][1].order_id === id2,
    'consume: the waiting consumer got the order committed during its wait');
  check(waiting && woken[0] === 1 && woken[1] === 0,
    'consume: long-poll: the commit woke the waiting dequeue, which took the message '
    + `(wake-ups ${woken[0]}, empty ${woken[1]}; `
    + `${seen.length ? seen[0][0] - committed : NaN} ms after the commit)`);
  check(await total('orders') === 0, 'consume: the message was deleted with its receipt');

  // long work: a 2 s lease, 4 s of work, kept alive by the heartbeat; a
  // second consumer runs meanwhile and must not get the message
  await placeOrder(app, 'dave', 'gadget', '5.00');
  const handled = [];
  const slow = async (order) => { handled.push(order.order_id); await sleep(4000); };
  const c1 = await runConsumer('orders', slow, { lease: 2 });
  await until(() => handled.length > 0, 30000);
  const c2 = await runConsumer('orders', slow, { lease: 2 });
  await sleep(4500);
  c1.stop(); c2.stop();
  await Promise.all([c1.done, c2.done]);
  check(handled.length === 1,
    'consume: extend_lease kept the 2 s lease through 4 s of work, a second consumer did not '
    + `get the message (handled ${handled.length} time(s))`);
  check(await total('orders') === 0, 'consume: and the message was deleted after the long work');

  // a failure: released with a delay, delivered again, then done
  await placeOrder(app, 'erin', 'gadget', '5.00');
  const attempts = [];
  c = await runConsumer('orders', async () => {
    attempts.push(Date.now());
    if (attempts.length === 1) throw new Error('payment service unavailable');
  }, { retryDelay: 1 });
  await until(() => attempts.length >= 2, 10000);
  await sleep(300);
  c.stop();
  await c.done;
  check(attempts.length === 2 && attempts[1] - attempts[0] >= 900,
    'consume: a failed message was released and delivered again after the retry delay');
  check(await total('orders') === 0, 'consume: the retried message was deleted');
  const acked = await one(`SELECT sum(deleted)::int FROM broker.consumers
                            WHERE consumer = 'test-consumer' AND queue = 'orders'`);
  check(acked - ackedBefore === 3,
    "consume: broker.consumers counts the three acknowledgements of 'test-consumer'");

  // --- publish/subscribe
  const copies = [await publish(app, 'orders.eu.paid', { order_id: 1 }),
    await publish(app, 'orders.us.created', { order_id: 2 }),
    await publish(app, 'orders', { order_id: 3 })];
  check(JSON.stringify(copies) === '[2,1,1]',
    `pubsub: copies per topic: paid 2, created 1, bare 'orders' 1 (audit's '#') (got ${copies})`);
  const billing = await receive(worker, 'billing');
  const audit = await receive(worker, 'audit');
  check(JSON.stringify(billing) === '[{"topic":"orders.eu.paid","payload":{"order_id":1}}]',
    'pubsub: billing got the paid order only');
  check(JSON.stringify(audit.map((m) => m.topic).sort())
      === '["orders","orders.eu.paid","orders.us.created"]',
    'pubsub: audit got every topic, with the topic in the headers');

  // --- jobs
  const good = await jobs.submit(app, { image: 'cat.png', width: 128 });
  const bad = await jobs.submit(app, { image: 'dog.png', width: 5000 });
  check((await jobs.status(app, good)).state === 'ready', 'jobs: a submitted job is ready');
  const working = (async () => { await jobs.workOne(worker, 5); await jobs.workOne(worker, 5); })();
  const done = await jobs.waitFor(app, good);
  const failedJob = await jobs.waitFor(app, bad);
  await working;
  check(done.state === 'done' && done.result.url === 'https://cdn.example/cat-128.png',
    `jobs: polled until done, with the result (${done.state} ${JSON.stringify(done.result)})`);
  check(failedJob.state === 'failed' && /width/.test(failedJob.result.error),
    `jobs: bad input ends failed, with the error (${JSON.stringify(failedJob.result)})`);
  check(await jobs.status(app, '999999999') === undefined, 'jobs: an unknown id has no status');
  await worker.end();

  // --- the scripts' command lines
  const run = (file, args, user) => promisify(execFile)(process.execPath, [file, ...args],
    { cwd: __dirname, env: { ...process.env, ...(user && { PGUSER: user }) } })
    .then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }), (e) => e);
  let r = await run('produce.js', ['frank', 'gadget', '7.50'], 'shop_app');
  check(r.code === 0 && /placed/.test(r.stdout), `produce.js: ${r.stdout.trim()}`);
  r = await run('produce.js', ['gina', 'widget', '7.50'], 'shop_app');
  check(r.code === 1 && /out of stock/.test(r.stderr), `produce.js: ${r.stderr.trim()}`);
  r = await run('jobs.js', ['bird.png', '64'], 'shop_worker');
  check(r.code === 1 && /permission denied for queue "thumbnails"/.test(r.stderr),
    'jobs.js as shop_worker: refused, it may not produce');
  r = await run('jobs.js', ['bird.png', '64']);
  check(r.code === 0 && r.stdout.includes('done {"url":"https://cdn.example/bird-64.png"}'),
    `jobs.js: ${r.stdout.trim().replace(/\n/g, ' / ')}`);
}

main()
  .catch((e) => { check(false, `the test ran to its end (${e.stack})`); })
  .finally(async () => {
    await Promise.all([owner.end(), app.end()]);
    process.exitCode = failed ? 1 : 0;
  });
