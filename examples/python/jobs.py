"""Jobs: submit a job, let a worker complete (or fail) it, poll its status.

The queue `thumbnails` keeps the outcome of every job for a day (created with
retention => '1 day'), so broker.status finds a job by its id while it waits,
while it runs and after it has finished.

    python3 jobs.py cat.png 128   # submit, work it here, print the outcome
"""
import sys
import time
from datetime import timedelta

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

QUEUE = "thumbnails"
FINISHED = {"done", "failed", "dead_lettered", "expired", "deleted"}


class BadInput(Exception):
    """A job that would fail again if retried: end it with broker.fail."""


def make_thumbnail(job):
    """The work (pretend): validate, then 'resize' and return where the result is."""
    if not isinstance(job.get("width"), int) or not 16 <= job["width"] <= 1024:
        raise BadInput(f"width must be an integer from 16 to 1024, not {job.get('width')!r}")
    stem = job["image"].rsplit(".", 1)[0]
    return {"url": f"https://cdn.example/{stem}-{job['width']}.png"}


def submit(conn, job):
    """Submit a job; its message id is the job id."""
    return conn.execute("SELECT broker.enqueue(%s, %s)", (QUEUE, Jsonb(job))).fetchone()[0]


def work_one(conn, wait=timedelta(seconds=20)):
    """Worker: take one job (waiting for one up to `wait`), run it, record the
    outcome.  Returns the job id, or None when there was nothing to do."""
    row = conn.execute(
        "SELECT id, receipt, payload FROM broker.dequeue(%s, 1, wait => %s)", (QUEUE, wait)
    ).fetchone()
    if row is None:
        return None
    job_id, receipt, job = row
    try:
        result = make_thumbnail(job)
    except BadInput as exc:
        conn.execute("SELECT broker.fail(%s, %s, %s, %s)",
                     (QUEUE, job_id, receipt, Jsonb({"error": str(exc)})))
    else:
        # false would mean the lease ran out and another worker has the job
        conn.execute("SELECT broker.complete(%s, %s, %s, %s)",
                     (QUEUE, job_id, receipt, Jsonb(result)))
    return job_id


def status(conn, job_id):
    """The job's row of broker.status as a dict (state, result, ...), or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM broker.status(%s, %s::bigint)",
                           (QUEUE, job_id)).fetchone()


def wait_for(conn, job_id, timeout=30.0, every=0.2):
    """Client: poll the job's status until it has finished; return its row."""
    deadline = time.monotonic() + timeout
    while True:
        job = status(conn, job_id)
        if job is not None and job["state"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job and job['state']} after {timeout} s")
        time.sleep(every)


if __name__ == "__main__":
    with psycopg.connect(autocommit=True) as conn:
        job_id = submit(conn, {"image": sys.argv[1], "width": int(sys.argv[2])})
        print("submitted job", job_id, "-", status(conn, job_id)["state"])
        work_one(conn)
        job = wait_for(conn, job_id)
        print("job", job_id, job["state"], job["result"])
