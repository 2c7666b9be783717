"""The worker of the word-count web-queue-worker: takes jobs from the queue
`wordcount` (long-poll), counts the words, and ends each job with
broker.complete and the counts as its result, or with broker.fail and an
error when the input is bad (retrying would not help).  A worker that dies
mid-job leaves it leased; it is delivered again when the lease runs out.

    python3 worker.py --name worker-1
"""
import argparse
import re
import signal
from collections import Counter
from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb

QUEUE = "wordcount"
WORD = re.compile(r"\w+(?:['’]\w+)*")   # letters and digits, with inner apostrophes: "don't"


class BadInput(Exception):
    pass


def count_words(text):
    if not isinstance(text, str):
        raise BadInput(f"text must be a string, not {type(text).__name__}")
    counts = Counter(w.lower() for w in WORD.findall(text))
    if not counts:
        raise BadInput("the text has no words to count")
    return {"counts": dict(counts.most_common()), "words": sum(counts.values())}


def run(conn, lease=timedelta(seconds=30), wait=timedelta(seconds=5), stop=lambda: False):
    while not stop():
        row = conn.execute("SELECT id, receipt, payload FROM broker.dequeue(%s, 1, lease => %s,"
                           " wait => %s)", (QUEUE, lease, wait)).fetchone()
        if row is None:
            continue
        job_id, receipt, job = row
        try:
            result = count_words(job.get("text"))
            conn.execute("SELECT broker.complete(%s, %s, %s, %s)",
                         (QUEUE, job_id, receipt, Jsonb(result)))
        except BadInput as exc:
            conn.execute("SELECT broker.fail(%s, %s, %s, %s)",
                         (QUEUE, job_id, receipt, Jsonb({"error": str(exc)})))
        except psycopg.errors.ProgramLimitExceeded:       # the counts are over max_message_size
            conn.execute("SELECT broker.fail(%s, %s, %s, %s)",
                         (QUEUE, job_id, receipt, Jsonb({"error": "too many distinct words"})))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="wordcount-worker", help="its name in broker.consumers")
    parser.add_argument("--lease", type=float, default=30, help="seconds a job is held")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* environment)")
    args = parser.parse_args()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))   # finish the job, then leave
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('broker.consumer', %s, false)", (args.name,))
        try:
            run(conn, lease=timedelta(seconds=args.lease), stop=lambda: bool(stopping))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
