// Jobs: submit a job, let a worker complete (or fail) it, poll its status.
//
// The queue `thumbnails` keeps the outcome of every job for a day (created
// with retention => '1 day'), so broker.status finds a job by its id while
// it waits, while it runs and after it has finished.
//
//     node jobs.js cat.png 128      # submit, work it here, print the outcome
'use strict';
const { Pool } = require('pg');

const QUEUE = 'thumbnails';
const FINISHED = new Set(['done', 'failed', 'dead_lettered', 'expired', 'deleted']);

// A job that would fail again if retried: end it with broker.fail.
class BadInput extends Error {}

// The work (pretend): validate, then 'resize' and return where the result is.
function makeThumbnail(job) {
  if (!Number.isInteger(job.width) || job.width < 16 || job.width > 1024) {
    throw new BadInput(`width must be an integer from 16 to 1024, not ${JSON.stringify(job.width)}`);
  }
  return { url: `https://cdn.example/${job.image.replace(/\.[^.]*$/, '')}-${job.width}.png` };
}

// Submit a job; resolve to its id (the message id, a bigint: a string).
async function submit(db, job) {
  const { rows: [r] } = await db.query('SELECT broker.enqueue($1, $2) AS id', [QUEUE, job]);
  return r.id;
}

// Worker: take one job (waiting for one up to `wait` seconds), run it,
// record the outcome.  Resolve to the job id, or null when there was none.
async function workOne(db, wait = 20) {
  const { rows: [job] } = await db.query(
    'SELECT id, receipt, payload FROM broker.dequeue($1, 1, wait => $2)', [QUEUE, `${wait} s`]);
  if (!job) return null;
  try {
    const result = makeThumbnail(job.payload);
    // false would mean the lease ran out and another worker has the job
    await db.query('SELECT broker.complete($1, $2, $3, $4)', [QUEUE, job.id, job.receipt, result]);
  } catch (err) {
    if (!(err instanceof BadInput)) throw err; // anything else: retried after the lease
    await db.query('SELECT broker.fail($1, $2, $3, $4)',
      [QUEUE, job.id, job.receipt, { error: err.message }]);
  }
  return job.id;
}

// The job's row of broker.status ({ state, result, ... }), or undefined.
async function status(db, id) {
  const { rows } = await db.query('SELECT * FROM broker.status($1, $2::bigint)', [QUEUE, id]);
  return rows[0];
}

// Client: poll the job's status until it has finished; resolve to its row.
async function waitFor(db, id, { timeout = 30, every = 0.2 } = {}) {
  const deadline = Date.now() + timeout * 1000;
  for (;;) {
    const job = await status(db, id);
    if (job && FINISHED.has(job.state)) return job;
    if (Date.now() > deadline) throw new Error(`job ${id} still ${job?.state} after ${timeout} s`);
    await new Promise((resolve) => setTimeout(resolve, every * 1000));
  }
}

module.exports = { submit, workOne, status, waitFor };

if (require.main === module) {
  const [image, width] = process.argv.slice(2);
  const pool = new Pool();
  (async () => {
    const id = await submit(pool, { image, width: Number(width) });
    console.log(`submitted job ${id} - ${(await status(pool, id)).state}`);
    await workOne(pool);
    const job = await waitFor(pool, id);
    console.log(`job ${id} ${job.state} ${JSON.stringify(job.result)}`);
  })().finally(() => pool.end());
}
