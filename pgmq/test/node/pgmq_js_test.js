// Drives broker_pgmq through pgmq-js 1.3.1, the PGMQ client from npm, and
// through node-postgres directly (whose parameters are untyped).  Run by
// test/t/023_pgmq.pl, which starts the server and installs the modules.
//
// Environment: PGHOST (a socket directory), PGPORT, PGUSER, PGDATABASE;
// optionally PGMQ_SSL_PORT and PGMQ_SSL_CA: a TCP port on 127.0.0.1 where
// the server has SSL on with a certificate signed by that CA file.
//
// Prints one line per check, "ok - name" or "not ok - name: why", and
// exits 1 if any check failed.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const { Pgmq } = require('pgmq-js');
const pg = require('pg');

const conn = {
  host: process.env.PGHOST,
  port: Number(process.env.PGPORT),
  user: process.env.PGUSER || 'postgres',
  database: process.env.PGDATABASE || 'postgres',
  password: '',
  idleTimeoutMillis: 1000,
  connectionTimeoutMillis: 10000,
  max: 4,
};

let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok - ${name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}: ${(e && e.stack) || e}`.split('\n').join('\n# '));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const near = (date, secondsFromNow, slack = 5) => {
  const d = (date.getTime() - Date.now()) / 1000;
  return d > secondsFromNow - slack && d <= secondsFromNow + 1;
};

async function main() {
  // What pgmq-js does by default, and what a user of broker_pgmq changes.
  await check('default config: SSL is on, and refused by a server without SSL', async () => {
    await assert.rejects(Pgmq.new({ ...conn, ssl: undefined }),
      /does not support SSL/);
  });
  await check('default config: CREATE EXTENSION pgmq fails (the extension is broker_pgmq)', async () => {
    await assert.rejects(Pgmq.new({ ...conn, ssl: false }),
      /extension "pgmq" is not available|could not open extension control file/);
  });

  const pgmq = await Pgmq.new({ ...conn, ssl: false }, { skipExtensionCreation: true });
  const q = 'js_orders';

  await check('queue.create, queue.createUnlogged, queue.list', async () => {
    await pgmq.queue.create(q);
    await pgmq.queue.create(q);                      // idempotent
    await pgmq.queue.createUnlogged('js_unlogged');
    const list = await pgmq.queue.list();
    const mine = list.filter((x) => x.name === q || x.name === 'js_unlogged');
    assert.equal(mine.length, 2);
    for (const x of mine) {
      assert.equal(x.isPartitioned, false);
      assert.equal(x.isUnlogged, false);              // broker's messages are always logged
      assert.ok(!Number.isNaN(x.createdAt.getTime()), 'createdAt parses');
    }
  });

  let id1, id2, batch;
  await check('msg.send, msg.send with a delay, msg.sendBatch', async () => {
    id1 = await pgmq.msg.send(q, { order: 1 });
    id2 = await pgmq.msg.send(q, { order: 2 });
    const delayed = await pgmq.msg.send(q, { order: 'later' }, 3600);
    assert.ok(id1 > 0 && id2 > id1 && delayed > id2);
    batch = await pgmq.msg.sendBatch(q, [{ order: 3 }, { order: 4 }, { order: 5 }, { order: 6 }]);
    assert.equal(batch.length, 4);
    assert.deepEqual([...batch].sort((a, b) => a - b), batch);
  });

  let read;
  await check('msg.read: a message under a visibility timeout', async () => {
    read = await pgmq.msg.read(q, 30);
    assert.equal(read.msgId, id1);
    assert.deepEqual(read.message, { order: 1 });
    assert.equal(read.readCount, 1);
    assert.ok(near(read.vt, 30), `vt ${read.vt.toISOString()}`);
    assert.ok(read.enqueuedAt <= new Date());
    const next = await pgmq.msg.read(q, 30);       // the first one is invisible now
    assert.equal(next.msgId, id2);
  });

  await check('msg.readBatch, and vt 0 (pgmq-js default) leaves messages visible', async () => {
    const peek = await pgmq.msg.readBatch(q, 0, 2);
    assert.deepEqual(peek.map((m) => m.msgId), batch.slice(0, 2));
    const again = await pgmq.msg.readBatch(q, 0, 2);
    assert.deepEqual(again.map((m) => m.msgId), batch.slice(0, 2));
    assert.deepEqual(again.map((m) => m.readCount), [2, 2]);
  });

  await check('msg.setVt: extends the visibility timeout (untyped parameters)', async () => {
    const m = await pgmq.msg.setVt(q, id1, 120);
    assert.equal(m.msgId, id1);
    assert.ok(near(m.vt, 120), `vt ${m.vt.toISOString()}`);
    const back = await pgmq.msg.setVt(q, id2, 0);   // visible again at once
    assert.equal(back.msgId, id2);
    assert.ok(back.vt <= new Date(Date.now() + 1000));
    const again = await pgmq.msg.read(q, 30);
    assert.equal(again.msgId, id2);
    assert.equal(again.readCount, 2);
  });

  await check('msg.archive and msg.archiveBatch; the rows are in pgmq.a_<queue>', async () => {
    assert.equal(await pgmq.msg.archive(q, id1), true);
    assert.equal(await pgmq.msg.archive(q, id1), false);
    const moved = await pgmq.msg.archiveBatch(q, [batch[0], batch[1], 999999999]);
    assert.deepEqual(moved.sort((a, b) => a - b), [batch[0], batch[1]]);
    const c = new pg.Client({ ...conn, ssl: false });
    await c.connect();
    const r = await c.query(`SELECT msg_id, message FROM pgmq.a_${q} ORDER BY msg_id`);
    await c.end();
    assert.deepEqual(r.rows.map((x) => Number(x.msg_id)), [id1, batch[0], batch[1]]);
    assert.deepEqual(r.rows[0].message, { order: 1 });
  });

  await check('msg.delete and msg.deleteBatch (no receipt, as in PGMQ)', async () => {
    assert.equal(await pgmq.msg.delete(q, id2), true);    // leased by the read above
    assert.equal(await pgmq.msg.delete(q, id2), false);
    const gone = await pgmq.msg.deleteBatch(q, [batch[2], 999999999]);
    assert.deepEqual(gone, [batch[2]]);
  });

  await check('msg.pop', async () => {
    const m = await pgmq.msg.pop(q);
    assert.equal(m.msgId, batch[3]);
    assert.deepEqual(m.message, { order: 6 });
    assert.equal(await pgmq.msg.pop(q), undefined);       // the delayed one is not visible
  });

  await check('queue.getMetrics and queue.getAllMetrics', async () => {
    const m = await pgmq.queue.getMetrics(q);
    assert.equal(m.queueName, q);
    assert.equal(m.queueLength, 1);                         // the delayed message
    assert.equal(m.totalMessages, 7);
    assert.ok(m.newestMsgAgeSec >= 0 && m.oldestMsgAgeSec >= m.newestMsgAgeSec);
    assert.ok(Math.abs(m.scrapeTime.getTime() - Date.now()) < 60000);
    const all = await pgmq.queue.getAllMetrics();
    assert.deepEqual(all.filter((x) => x.queueName === q).map((x) => x.queueLength), [1]);
  });

  await check('queue.purge, queue.detachArchive, queue.drop', async () => {
    await pgmq.queue.purge(q);
    assert.equal((await pgmq.queue.getMetrics(q)).queueLength, 0);
    await pgmq.queue.detachArchive(q);
    await pgmq.queue.drop(q);
    await pgmq.queue.drop('js_unlogged');
    const left = (await pgmq.queue.list()).filter((x) => x.name === q || x.name === 'js_unlogged');
    assert.equal(left.length, 0);
  });
  await pgmq.close();

  // node-postgres sends untyped parameters: every call resolves to one function.
  const c = new pg.Client({ ...conn, ssl: false });
  await c.connect();
  await check('untyped parameters resolve (node-postgres)', async () => {
    await c.query('SELECT pgmq.create($1)', ['js_untyped']);
    const s1 = await c.query('SELECT * FROM pgmq.send($1, $2, $3)', ['js_untyped', { a: 1 }, { trace: 'x' }]);
    const s2 = await c.query('SELECT * FROM pgmq.send($1, $2, $3)', ['js_untyped', { a: 2 }, 0]);
    const s3 = await c.query('SELECT * FROM pgmq.send($1, $2, $3, $4)', ['js_untyped', { a: 3 }, { t: 3 }, new Date()]);
    const b = await c.query('SELECT * FROM pgmq.send_batch($1, $2, $3)',
      ['js_untyped', [JSON.stringify({ a: 4 }), JSON.stringify({ a: 5 })], JSON.stringify([{ h: 4 }, { h: 5 }])]);
    assert.equal(b.rows.length, 2);
    const r = await c.query('SELECT * FROM pgmq.read($1, $2, $3)', ['js_untyped', 30, 10]);
    assert.deepEqual(r.rows.map((x) => x.message.a), [1, 2, 3, 4, 5]);
    assert.deepEqual(r.rows.map((x) => x.headers), [{ trace: 'x' }, null, { t: 3 }, { h: 4 }, { h: 5 }]);
    const ids = r.rows.map((x) => x.msg_id);
    const v = await c.query('SELECT * FROM pgmq.set_vt($1, $2, $3)', ['js_untyped', ids[0], 60]);
    assert.equal(v.rows.length, 1);
    const va = await c.query('SELECT * FROM pgmq.set_vt($1, $2, $3)', ['js_untyped', ids.slice(1, 3), new Date(Date.now() + 60000)]);
    assert.equal(va.rows.length, 2);
    const d = await c.query('SELECT pgmq.delete($1, $2)', ['js_untyped', s1.rows[0].send]);
    assert.equal(d.rows[0].delete, true);
    const a = await c.query('SELECT pgmq.archive($1, $2)', ['js_untyped', s2.rows[0].send]);
    assert.equal(a.rows[0].archive, true);
    const p = await c.query('SELECT * FROM pgmq.pop($1)', ['js_untyped']);
    assert.equal(p.rows.length, 0);                      // the others are leased
    const m = await c.query('SELECT * FROM pgmq.metrics($1)', ['js_untyped']);
    assert.equal(Number(m.rows[0].queue_length), 3);
    assert.equal(s3.rows.length, 1);
    await c.query('SELECT pgmq.purge_queue($1)', ['js_untyped']);
    await c.query('SELECT pgmq.drop_queue($1)', ['js_untyped']);
  });

  // read_with_poll sleeps on broker's wait: a send by another connection
  // wakes it at once, long before max_poll_seconds.
  await check('read_with_poll is woken by a send from another connection', async () => {
    await c.query('SELECT pgmq.create($1)', ['js_poll']);
    const waiter = new pg.Client({ ...conn, ssl: false });
    await waiter.connect();
    const t0 = Date.now();
    const pending = waiter.query('SELECT * FROM pgmq.read_with_poll($1, $2, $3, $4, $5)', ['js_poll', 30, 1, 20, 100]);
    await sleep(500);
    await c.query('SELECT pgmq.send($1, $2)', ['js_poll', { wake: true }]);
    const r = await pending;
    const waited = Date.now() - t0;
    await waiter.end();
    assert.equal(r.rows.length, 1);
    assert.deepEqual(r.rows[0].message, { wake: true });
    assert.ok(waited >= 400 && waited < 10000, `waited ${waited} ms`);
    await c.query('SELECT pgmq.drop_queue($1)', ['js_poll']);
  });
  await c.end();

  // With SSL on the server, pgmq-js's default (ssl on) works once the
  // client trusts the server's certificate.
  if (process.env.PGMQ_SSL_PORT) {
    await check('pgmq-js over SSL (TCP, certificate checked against its CA)', async () => {
      const ssl = { ca: fs.readFileSync(process.env.PGMQ_SSL_CA, 'utf8') };
      const s = await Pgmq.new({ ...conn, host: '127.0.0.1', port: Number(process.env.PGMQ_SSL_PORT), ssl },
        { skipExtensionCreation: true });
      await s.queue.create('js_ssl');
      const id = await s.msg.send('js_ssl', { over: 'tls' });
      const m = await s.msg.read('js_ssl', 30);
      assert.equal(m.msgId, id);
      const k = new pg.Client({ ...conn, host: '127.0.0.1', port: Number(process.env.PGMQ_SSL_PORT), ssl });
      await k.connect();
      const v = await k.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      await k.end();
      assert.equal(v.rows[0].ssl, true);
      await s.queue.drop('js_ssl');
      await s.close();
    });
    await check('pgmq-js default ssl (true) refuses a certificate it cannot verify', async () => {
      // (with skipExtensionCreation, Pgmq.new connects only at the first call)
      const s = await Pgmq.new({ ...conn, host: '127.0.0.1', port: Number(process.env.PGMQ_SSL_PORT), ssl: undefined },
        { skipExtensionCreation: true });
      await assert.rejects(s.queue.list(), /self[- ]signed|unable to verify|certificate/i);
      await s.close();
    });
  }
}

main()
  .catch((e) => { failed++; console.log(`not ok - driver: ${e.stack || e}`.split('\n').join('\n# ')); })
  .finally(() => {
    console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
    process.exit(failed ? 1 : 0);
  });
