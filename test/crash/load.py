#!/usr/bin/python3
"""load.py: a mixed load for the broker crash loop that survives crashes.

Producers and consumers, each a process with its own connection, work on
the queues of QUEUES until SIGTERM (or --seconds).  When the server dies
they reconnect and go on.  Each client appends what the server confirmed
to its own log, <logdir>/<name>.jsonl, one JSON object per line, written
and fsync'ed only after the COMMIT returned; an operation whose COMMIT got
no answer is logged with "doubt": true (it may or may not have happened).
An operation that failed before its COMMIT was sent never happened and is
not logged.  check.py reads the logs.

Records ("t" is the client's clock, seconds since the epoch, taken after
the server answered; "recv" is taken right after dequeue returned):
  enq  q id k ttl delay t          a committed enqueue (ttl/delay in s or null)
  dlv  q id k dc recv until rcpt   a committed delivery (until = lease_until)
  del  q id k rcpt dc ok t         a delete; ok = the server said it deleted
  ext  q id rcpt until t           extend_lease; until = new lease_until or null
  rel  q id rcpt ok sent           release; sent = when the call was sent

Producers use enqueue and enqueue_batch, some with a ttl, some with a
delay.  Consumers come in four roles, by their number:
  txn    dequeue and delete in one transaction;
  lease  dequeue (commit), then delete with the receipt in a second
         transaction; some are extended first, some released;
  lazy   dequeue (commit), then leave half the leases to run out, delete
         some after their lease ran out, the rest at once;
  mixed  any of these, with long-poll dequeues.

Usage: load.py --setup                  create the queues
       load.py --logdir DIR [--producers 3] [--consumers 4] [--seconds S]
                    [--long-delays A-B]
Connection: --dsn, else the PG* environment variables.
"""

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time

import psycopg

# name: (lease s, default_ttl s, max_deliveries, dead-letter queue)
QUEUES = {
    'cl_dead': (1, None, None, None),
    'cl_plain': (1, None, None, None),
    'cl_dlq': (1, None, 3, 'cl_dead'),
    'cl_ttl': (2, 4, 4, None),
}
PRODUCE_TO = ['cl_plain', 'cl_plain', 'cl_dlq', 'cl_ttl']
CONSUME_FROM = ['cl_plain', 'cl_dlq', 'cl_ttl', 'cl_dead']
ROLES = ['txn', 'lease', 'lazy', 'mixed']

DEQ = ("SELECT id, payload->>'k', delivery_count,"
       " extract(epoch FROM lease_until)::float8, receipt"
       " FROM broker.dequeue(%s, %s, wait => make_interval(secs => %s))")


def setup(dsn):
    """Creates the queues of QUEUES (dead-letter queues first)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in sorted(QUEUES, key=lambda n: QUEUES[n][3] is not None):
            lease, ttl, maxd, dlq = QUEUES[name]
            conn.execute(
                "SELECT broker.create_queue(%s, lease => make_interval(secs => %s),"
                " default_ttl => make_interval(secs => %s), max_deliveries => %s,"
                " dead_letter_queue => %s, if_not_exists => true)",
                (name, lease, ttl, maxd, dlq))


class Lost(Exception):
    """The connection is gone: reconnect."""


class Client:
    """One worker: a connection, a log file and a random generator."""

    def __init__(self, name, dsn, logdir, stop, run):
        self.name = name
        self.dsn = dsn
        self.stop = stop
        self.run = run
        self.rnd = random.Random(f'{run}:{name}')
        self.log = open(os.path.join(logdir, name + '.jsonl'), 'a')
        self.conn = None
        self.seq = 0
        self.stats = {}

    def count(self, what, n=1):
        """Adds n to one of this client's counters."""
        self.stats[what] = self.stats.get(what, 0) + n

    def write(self, records):
        """Appends records to the log and flushes them to disk."""
        if not records:
            return
        for r in records:
            self.log.write(json.dumps(r, separators=(',', ':')) + '\n')
        self.log.flush()
        os.fsync(self.log.fileno())

    def connect(self):
        """Connects, retrying while the server is down or recovering."""
        while not self.stop.is_set():
            self.conn = None
            try:
                self.conn = psycopg.connect(
                    self.dsn, connect_timeout=5, application_name=self.name,
                    options='-c statement_timeout=30s')
                self.conn.execute("SELECT set_config('broker.consumer', %s, false)",
                                  (self.name,))
                self.conn.commit()
                return True
            except psycopg.Error:
                self.recover()
                time.sleep(0.2 + self.rnd.random() * 0.3)
        return False

    def sql(self, query, params=()):
        """Runs one statement in the open transaction; returns its rows."""
        try:
            cur = self.conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as e:
            self.recover()
            raise Lost() from e

    def commit(self):
        """Commits; True when the server confirmed, False when in doubt."""
        try:
            self.conn.commit()
            return True
        except psycopg.Error:
            self.count('in_doubt')
            self.recover()
            return False

    def recover(self):
        """After an error: roll back, or drop a broken connection."""
        if self.conn is not None and not self.conn.broken:
            try:
                self.conn.rollback()
                return
            except psycopg.Error:
                pass
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        self.conn = None

    def loop(self):
        """Runs steps until told to stop, reconnecting when needed."""
        while not self.stop.is_set():
            if self.conn is None:
                self.count('connects')
                if not self.connect():
                    break
            try:
                self.step()
            except Lost:
                self.count('errors')
        if self.conn is not None:
            self.conn.close()
        self.log.close()


class Producer(Client):
    """Enqueues single messages and batches, some with a ttl or a delay."""

    def __init__(self, *args, long_delays):
        super().__init__(*args)
        self.long_delays = long_delays

    def step(self):
        r = self.rnd
        q = r.choice(PRODUCE_TO)
        n = 1 if r.random() < 0.6 else r.randint(2, 8)
        ttl = round(r.uniform(0.3, 4), 2) if r.random() < 0.2 else None
        x = r.random()
        # long delays outlive a turn of the segments: moved at rotation
        delay = round(r.uniform(0.1, 2), 2) if x < 0.1 else \
            round(r.uniform(*self.long_delays), 2) if x < 0.15 else None
        keys = [f'{self.run}:{self.name}-{self.seq + i}' for i in range(n)]
        self.seq += n
        payloads = [json.dumps({'k': k}) for k in keys]
        if n == 1:
            rows = self.sql(
                "SELECT broker.enqueue(%s, %s::jsonb, delay => make_interval(secs => %s),"
                " ttl => make_interval(secs => %s))", (q, payloads[0], delay, ttl))
        else:
            rows = self.sql(
                "SELECT * FROM broker.enqueue_batch(%s, %s::text[]::jsonb[],"
                " delay => make_interval(secs => %s), ttl => make_interval(secs => %s))",
                (q, payloads, delay, ttl))
        ids = [row[0] for row in rows]
        ok = self.commit()
        t = time.time()
        self.write([{'op': 'enq', 'doubt': not ok, 'q': q, 'id': i, 'k': k,
                     'ttl': ttl, 'delay': delay, 't': t}
                    for i, k in zip(ids, keys)])
        self.count('enqueued' if ok else 'enqueued_in_doubt', n)
        time.sleep(r.uniform(0.04, 0.1))


class Consumer(Client):
    """Dequeues in the shape of its role (see the module comment)."""

    def __init__(self, *args, role):
        super().__init__(*args)
        self.role = role

    def dequeue(self, q, n, wait=0):
        """Runs a dequeue in the open transaction; returns delivery records."""
        rows = self.sql(DEQ, (q, n, wait))
        recv = time.time()
        return [{'op': 'dlv', 'q': q, 'id': i, 'k': k, 'dc': dc, 'recv': recv,
                 'until': until, 'rcpt': rcpt, 'w': self.name}
                for i, k, dc, until, rcpt in rows]

    def take(self, q, n, wait):
        """Dequeues in a transaction of its own; returns what committed."""
        dl = self.dequeue(q, n, wait)
        if not dl:
            if not self.commit():
                raise Lost()
            return []
        ok = self.commit()
        for d in dl:
            d['doubt'] = not ok
        self.write(dl)
        self.count('delivered' if ok else 'delivered_in_doubt', len(dl))
        if not ok:
            raise Lost()
        return dl

    def delete(self, d):
        """Deletes one delivered message with its receipt."""
        rows = self.sql("SELECT broker.delete(%s, %s, %s)", (d['q'], d['id'], d['rcpt']))
        ok = self.commit()
        self.write([{'op': 'del', 'doubt': not ok, 'q': d['q'], 'id': d['id'],
                     'k': d['k'], 'rcpt': d['rcpt'], 'dc': d['dc'],
                     'ok': bool(rows[0][0]), 't': time.time()}])
        if not ok:
            raise Lost()
        self.count('deleted' if rows[0][0] else 'stale_deletes')

    def extend(self, d, secs):
        """Extends the lease of one delivery."""
        rows = self.sql(
            "SELECT extract(epoch FROM broker.extend_lease(%s, %s, %s,"
            " make_interval(secs => %s)))::float8", (d['q'], d['id'], d['rcpt'], secs))
        ok = self.commit()
        self.write([{'op': 'ext', 'doubt': not ok, 'q': d['q'], 'id': d['id'],
                     'rcpt': d['rcpt'], 'until': rows[0][0], 't': time.time()}])
        if not ok:
            raise Lost()
        self.count('extended')

    def release(self, d, delay):
        """Releases one delivery, deliverable again after delay."""
        sent = time.time()
        rows = self.sql("SELECT broker.release(%s, %s, %s, make_interval(secs => %s))",
                        (d['q'], d['id'], d['rcpt'], delay))
        ok = self.commit()
        self.write([{'op': 'rel', 'doubt': not ok, 'q': d['q'], 'id': d['id'],
                     'rcpt': d['rcpt'], 'ok': bool(rows[0][0]), 'sent': sent}])
        if not ok:
            raise Lost()
        self.count('released')

    def in_one(self, q, n, wait):
        """Dequeue and delete in one transaction."""
        dl = self.dequeue(q, n, wait)
        if not dl:
            if not self.commit():
                raise Lost()
            return False
        rows = self.sql("SELECT * FROM broker.delete(%s, %s::bigint[])",
                        (q, [d['id'] for d in dl]))
        gone = {row[0] for row in rows}
        ok = self.commit()
        t = time.time()
        recs = []
        for d in dl:
            d['doubt'] = not ok
            recs.append(d)
            recs.append({'op': 'del', 'doubt': not ok, 'q': q, 'id': d['id'],
                         'k': d['k'], 'rcpt': d['rcpt'], 'dc': d['dc'],
                         'ok': d['id'] in gone, 't': t})
        self.write(recs)
        if not ok:
            raise Lost()
        self.count('delivered', len(dl))
        self.count('deleted', len(gone))
        return True

    def leased(self, q, n, wait, lazy):
        """Dequeue (commit), then delete, extend, release or abandon each."""
        dl = self.take(q, n, wait)
        r = self.rnd
        for d in dl:
            x = r.random()
            if lazy:
                if x < 0.5:
                    self.count('abandoned')
                elif x < 0.6:
                    time.sleep(r.uniform(0.5, 2.5))
                    self.delete(d)
                else:
                    self.delete(d)
            elif x < 0.15:
                self.extend(d, r.choice([3, 4]))
                time.sleep(r.uniform(0, 0.3))
                self.delete(d)
            elif x < 0.3:
                self.release(d, r.choice([0, 0, 0.3, 1]))
            else:
                self.delete(d)
        return bool(dl)

    def step(self):
        r = self.rnd
        role = self.role if self.role != 'mixed' else r.choice(ROLES[:3])
        wait = r.choice([0, 1]) if self.role == 'mixed' else 0
        q = r.choice(CONSUME_FROM)
        n = r.randint(1, 5) if role == 'txn' else r.randint(1, 3)
        if role == 'txn':
            got = self.in_one(q, n, wait)
        else:
            got = self.leased(q, n, wait, role == 'lazy')
        if not got:
            time.sleep(0.05)


def work(kind, name, dsn, logdir, stop, run, arg):
    """Body of one worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if kind == 'p':
        c = Producer(name, dsn, logdir, stop, run, long_delays=arg)
    else:
        c = Consumer(name, dsn, logdir, stop, run, role=arg)
    c.loop()
    print(f'{name}: ' + ', '.join(f'{k} {v}' for k, v in sorted(c.stats.items())),
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dsn', default='')
    ap.add_argument('--setup', action='store_true', help='create the queues and exit')
    ap.add_argument('--logdir')
    ap.add_argument('--producers', type=int, default=3)
    ap.add_argument('--consumers', type=int, default=4)
    ap.add_argument('--seconds', type=float, default=0, help='0: until SIGTERM')
    ap.add_argument('--long-delays', default='5-15', metavar='A-B',
                    help='the range of the long delays, in seconds')
    a = ap.parse_args()
    long_delays = tuple(float(x) for x in a.long_delays.split('-'))
    if a.setup:
        setup(a.dsn)
        return 0
    if not a.logdir:
        ap.error('--logdir is needed')
    os.makedirs(a.logdir, exist_ok=True)
    run = f'{os.getpid():x}{int(time.time()) % 100000:05d}'
    stop = mp.Event()
    procs = []
    for i in range(a.producers):
        procs.append(mp.Process(target=work, args=('p', f'p{i}', a.dsn, a.logdir, stop, run,
                                                   long_delays)))
    for i in range(a.consumers):
        role = ROLES[i % len(ROLES)]
        procs.append(mp.Process(target=work, args=('c', f'c{i}-{role}', a.dsn, a.logdir,
                                                   stop, run, role)))
    # The handler only sets a flag: setting the Event there could deadlock
    # on the Event's lock if the signal came while this process held it.
    signalled = []
    signal.signal(signal.SIGTERM, lambda *_: signalled.append(1))
    signal.signal(signal.SIGINT, lambda *_: signalled.append(1))
    for p in procs:
        p.start()
    deadline = time.time() + a.seconds if a.seconds else None
    while not signalled and (deadline is None or time.time() < deadline):
        time.sleep(0.2)
    stop.set()
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.terminate()
    return 0


if __name__ == '__main__':
    sys.exit(main())
