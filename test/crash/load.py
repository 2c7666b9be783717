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
the server answered; "sent" is taken before the call was sent; "recv" is
taken right after dequeue returned):
  enq  q id k ttl delay pri g dk try sent t
                                   an enqueue (ttl/delay in s or null; pri
                                   the priority, g the group key or null; dk
                                   true when k was also the dedup key; try
                                   0 for a first attempt, n for the n-th
                                   retry of the same call)
  pub  topic k n ttl delay pri g dk try sent t
                                   a publish; n = what it returned
  dlv  q id k dc recv until rcpt w a committed delivery (until = lease_until)
  del  q id k rcpt dc ok how res sent t
                                   a removal: how = delete, complete or fail
                                   (res = the result or error given); ok =
                                   the server said it removed the message
  ext  q id rcpt until t           extend_lease; until = new lease_until or null
  rel  q id rcpt ok sent           release; sent = when the call was sent

Producers use enqueue, enqueue_batch and publish: some messages with a ttl,
a delay, a priority; into cl_group with group keys (ordered groups); into
cl_job (a queue with a retention); to topics that 1-3 queues subscribe to.
Some enqueues into cl_plain, and some publishes, carry a dedup key (the
message's key k): such a call is retried with the same arguments when its
COMMIT got no answer (in doubt) or its connection died before it, and now
and then after it was confirmed (soon, within the dedup window: it must
return the same id, or publish nothing; or once the window has passed: it
must store the message again).  Some of these calls wait a moment before
COMMIT, so that crashes find COMMITs in flight.

Consumers come in four roles, by their number:
  txn    dequeue and remove in one transaction;
  lease  dequeue (commit), then remove with the receipt in a second
         transaction; some are extended first, some released;
  lazy   dequeue (commit), then leave half the leases to run out, remove
         some after their lease ran out, the rest at once;
  mixed  any of these, with long-poll dequeues.
A removal is a delete, except on cl_job, where it is mostly a complete
(with a result) or a fail (with an error), so that records are kept.

Usage: load.py --setup [--dedup-window S]   create the queues and subscriptions
       load.py --logdir DIR [--producers 3] [--consumers 6] [--seconds S]
                    [--long-delays A-B] [--dedup-window S]
Connection: --dsn, else the PG* environment variables.  Run it as a
superuser or the extension's owner (the functions check per-queue
privileges; the owner may do everything).
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

# name: settings of create_queue (lease s, default_ttl s, max_deliveries,
# dead-letter queue, retention s).  Every queue gets the same dedup_window
# (--dedup-window), so that the dedup key tables turn over during a run.
QUEUES = {
    'cl_dead': dict(lease=1, ttl=None, maxd=None, dlq=None, retention=None),
    'cl_plain': dict(lease=1, ttl=None, maxd=None, dlq=None, retention=None),
    'cl_dlq': dict(lease=1, ttl=None, maxd=3, dlq='cl_dead', retention=None),
    'cl_ttl': dict(lease=2, ttl=4, maxd=4, dlq=None, retention=None),
    # ordered groups; heads exhausted at 3 deliveries are dead-lettered
    'cl_group': dict(lease=1, ttl=None, maxd=3, dlq='cl_dead', retention=None),
    # jobs: a record of every message that leaves, kept longer than a run
    'cl_job': dict(lease=1, ttl=None, maxd=3, dlq=None, retention=3600),
    # the subscribers of the topics
    'cl_sub_a': dict(lease=1, ttl=None, maxd=None, dlq=None, retention=None),
    'cl_sub_b': dict(lease=1, ttl=None, maxd=None, dlq=None, retention=None),
    'cl_sub_c': dict(lease=1, ttl=None, maxd=None, dlq=None, retention=None),
}
# queue: its patterns (cl_sub_b and cl_sub_c are matched twice by cl.eu.order)
SUBSCRIPTIONS = {
    'cl_sub_a': ['cl.#'],
    'cl_sub_b': ['cl.*.order', 'cl.eu.order'],
    'cl_sub_c': ['*.eu.*', 'cl.eu.#'],
}
# cl.eu.order reaches the 3 queues, cl.us.order 2, cl.eu.audit 2, zz.none none
TOPICS = ['cl.eu.order'] * 8 + ['cl.us.order', 'cl.eu.audit', 'zz.none']
PRODUCE_TO = ['cl_plain', 'cl_plain', 'cl_dlq', 'cl_ttl']
# what a producer does in a step, by weight
ACTIONS = ['plain'] * 4 + ['group'] * 3 + ['job'] * 2 + ['pub'] * 2
CONSUME_FROM = ['cl_plain', 'cl_dlq', 'cl_ttl', 'cl_dead', 'cl_group', 'cl_group',
                'cl_job', 'cl_sub_a', 'cl_sub_b', 'cl_sub_c']
ROLES = ['txn', 'lease', 'lazy', 'mixed']
GROUPS = [f'g{i:02d}' for i in range(30)]          # of cl_group
PUB_GROUPS = [f'pg{i}' for i in range(8)]           # of the published messages
JOB_QUEUE = 'cl_job'
DEDUP_WINDOW = 10.0                                 # s, --dedup-window

DEQ = ("SELECT id, payload->>'k', delivery_count,"
       " extract(epoch FROM lease_until)::float8, receipt"
       " FROM broker.dequeue(%s, %s, wait => make_interval(secs => %s))")


def topic_matches(pattern, topic):
    """AMQP-style match: * is one word, # is zero or more words."""
    p, t = pattern.split('.'), topic.split('.')

    def m(i, j):
        if i == len(p):
            return j == len(t)
        if p[i] == '#':
            return any(m(i + 1, k) for k in range(j, len(t) + 1))
        return j < len(t) and (p[i] == '*' or p[i] == t[j]) and m(i + 1, j + 1)
    return m(0, 0)


def subscribers(topic):
    """The queues a publish to topic reaches."""
    return sorted(q for q, pats in SUBSCRIPTIONS.items()
                  if any(topic_matches(p, topic) for p in pats))


def setup(dsn, window):
    """Creates the queues of QUEUES (dead-letter queues first) and the
    subscriptions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in sorted(QUEUES, key=lambda n: QUEUES[n]['dlq'] is not None):
            s = QUEUES[name]
            conn.execute(
                "SELECT broker.create_queue(%s, lease => make_interval(secs => %s),"
                " default_ttl => make_interval(secs => %s), max_deliveries => %s,"
                " dead_letter_queue => %s, if_not_exists => true,"
                " dedup_window => make_interval(secs => %s),"
                " retention => make_interval(secs => %s))",
                (name, s['lease'], s['ttl'], s['maxd'], s['dlq'], window, s['retention']))
        for q, pats in SUBSCRIPTIONS.items():
            for p in pats:
                conn.execute("SELECT broker.subscribe(%s, %s)", (q, p))


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

    def commit(self, pause=0):
        """Commits (after a pause of the client: a COMMIT that a crash may
        find in flight); True when the server confirmed, False when in doubt."""
        if pause:
            time.sleep(pause)
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
    """Enqueues single messages and batches (some with a ttl, a delay, a
    priority, group keys), publishes, and retries calls with dedup keys."""

    def __init__(self, *args, long_delays):
        super().__init__(*args)
        self.long_delays = long_delays
        self.retries = []          # [due time, call, attempt]: calls to retry

    def keys(self, n, tag=''):
        ks = [f'{self.run}:{self.name}-{tag}{self.seq + i}' for i in range(n)]
        self.seq += n
        return ks

    def timing(self, long_ok=True):
        """A ttl and a delay for a new call."""
        r = self.rnd
        ttl = round(r.uniform(0.3, 4), 2) if r.random() < 0.2 else None
        x = r.random()
        # long delays outlive a turn of the segments: moved at rotation
        delay = round(r.uniform(0.1, 2), 2) if x < 0.1 else \
            round(r.uniform(*self.long_delays), 2) if x < 0.15 and long_ok else None
        return ttl, delay

    def new_call(self):
        """A new call: a dict that do_call runs (and reruns, for a retry)."""
        r = self.rnd
        action = r.choice(ACTIONS)
        n = 1 if r.random() < 0.6 else r.randint(2, 8)
        if action == 'pub':
            ttl = round(r.uniform(2, 6), 2) if r.random() < 0.1 else None
            delay = round(r.uniform(0.1, 1.5), 2) if r.random() < 0.1 else None
            return dict(kind='pub', topic=r.choice(TOPICS), keys=self.keys(1, 'pub'),
                        ttl=ttl, delay=delay,
                        pri=r.randint(1, 9) if r.random() < 0.2 else 0,
                        groups=[r.choice(PUB_GROUPS) if r.random() < 0.3 else None],
                        dk=r.random() < 0.5)
        if action == 'group':
            ttl = round(r.uniform(1, 6), 2) if r.random() < 0.1 else None
            delay = round(r.uniform(0.1, 2), 2) if r.random() < 0.05 else None
            return dict(kind='enq', q='cl_group', keys=self.keys(n), ttl=ttl, delay=delay,
                        pri=r.randint(0, 9) if r.random() < 0.3 else 0,
                        groups=[r.choice(GROUPS) if r.random() < 0.9 else None
                                for _ in range(n)],
                        dk=False)
        if action == 'job':
            ttl = round(r.uniform(1, 5), 2) if r.random() < 0.1 else None
            return dict(kind='enq', q=JOB_QUEUE, keys=self.keys(n), ttl=ttl, delay=None,
                        pri=0, groups=[None] * n, dk=False)
        q = r.choice(PRODUCE_TO)
        ttl, delay = self.timing()
        return dict(kind='enq', q=q, keys=self.keys(n), ttl=ttl, delay=delay,
                    pri=r.randint(1, 9) if q == 'cl_plain' and r.random() < 0.3 else 0,
                    groups=[None] * n,
                    dk=q == 'cl_plain' and r.random() < 0.4)

    def do_call(self, c, attempt):
        """Runs one call in a transaction of its own and logs it."""
        r = self.rnd
        payloads = [json.dumps({'k': k}) for k in c['keys']]
        dks = c['keys'] if c['dk'] else None
        grouped = any(g is not None for g in c['groups'])
        sent = time.time()
        if c['kind'] == 'pub':
            rows = self.sql(
                "SELECT broker.publish(%s, %s::jsonb, delay => make_interval(secs => %s),"
                " ttl => make_interval(secs => %s), group_key => %s, dedup_key => %s,"
                " priority => %s)",
                (c['topic'], payloads[0], c['delay'], c['ttl'], c['groups'][0],
                 dks[0] if dks else None, c['pri']))
        elif len(payloads) == 1:
            rows = self.sql(
                "SELECT broker.enqueue(%s, %s::jsonb, delay => make_interval(secs => %s),"
                " ttl => make_interval(secs => %s), group_key => %s, dedup_key => %s,"
                " priority => %s)",
                (c['q'], payloads[0], c['delay'], c['ttl'], c['groups'][0],
                 dks[0] if dks else None, c['pri']))
        else:
            rows = self.sql(
                "SELECT * FROM broker.enqueue_batch(%s, %s::text[]::jsonb[],"
                " delay => make_interval(secs => %s), ttl => make_interval(secs => %s),"
                " group_keys => %s, dedup_keys => %s, priority => %s)",
                (c['q'], payloads, c['delay'], c['ttl'], c['groups'] if grouped else None,
                 dks, c['pri']))
        # calls with a dedup key wait now and then before COMMIT
        ok = self.commit(pause=r.uniform(0.05, 0.3) if c['dk'] and r.random() < 0.3 else 0)
        t = time.time()
        common = {'doubt': not ok, 'ttl': c['ttl'], 'delay': c['delay'], 'pri': c['pri'],
                  'dk': c['dk'], 'try': attempt, 'sent': sent, 't': t}
        if c['kind'] == 'pub':
            recs = [dict(op='pub', topic=c['topic'], k=c['keys'][0], n=rows[0][0],
                         g=c['groups'][0], **common)]
        else:
            recs = [dict(op='enq', q=c['q'], id=row[0], k=k, g=g, **common)
                    for row, k, g in zip(rows, c['keys'], c['groups'])]
        self.write(recs)
        what = 'published' if c['kind'] == 'pub' else 'enqueued'
        self.count(what if ok else what + '_in_doubt', len(recs))
        if attempt:
            self.count('retries')
        return ok

    def step(self):
        r = self.rnd
        now = time.time()
        due = [x for x in self.retries if x[0] <= now]
        if due:
            x = min(due, key=lambda x: x[0])
            self.retries.remove(x)
            _, c, attempt = x
        else:
            c, attempt = self.new_call(), 0
        try:
            ok = self.do_call(c, attempt)
        except Lost:
            # rolled back (the COMMIT was not sent): a call with a dedup
            # key is retried as it would be by an application
            if c['dk'] and attempt < 8:
                self.retries.append([0, c, attempt + 1])
            raise
        if c['dk'] and attempt < 8:
            if not ok:
                self.retries.append([0, c, attempt + 1])     # in doubt: at once
            elif r.random() < 0.35:                        # within the window
                self.retries.append([time.time() + r.uniform(0.1, 3), c, attempt + 1])
            elif r.random() < 0.08:                        # after it
                self.retries.append([time.time() + DEDUP_WINDOW + r.uniform(2, 5), c,
                                     attempt + 1])
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

    def how(self, q):
        """How to remove a message of q: delete, complete or fail."""
        if q != JOB_QUEUE:
            return 'delete'
        x = self.rnd.random()
        return 'complete' if x < 0.6 else 'fail' if x < 0.85 else 'delete'

    def remove(self, d, how):
        """Runs delete, complete or fail of one delivery in the open
        transaction; returns (what the server said, the result given, sent)."""
        sent = time.time()
        if how == 'delete':
            rows = self.sql("SELECT broker.delete(%s, %s, %s)", (d['q'], d['id'], d['rcpt']))
            return bool(rows[0][0]), None, sent
        res = {'r' if how == 'complete' else 'e': f"{d['k']}/{d['rcpt']}/{self.name}"}
        rows = self.sql(f"SELECT broker.{how}(%s, %s, %s, %s::jsonb)",
                        (d['q'], d['id'], d['rcpt'], json.dumps(res)))
        return bool(rows[0][0]), res, sent

    def delete(self, d):
        """Removes one delivered message with its receipt."""
        how = self.how(d['q'])
        ok_srv, res, sent = self.remove(d, how)
        ok = self.commit(pause=self.rnd.uniform(0.05, 0.3)
                         if how != 'delete' and self.rnd.random() < 0.15 else 0)
        self.write([{'op': 'del', 'doubt': not ok, 'q': d['q'], 'id': d['id'],
                     'k': d['k'], 'rcpt': d['rcpt'], 'dc': d['dc'], 'ok': ok_srv,
                     'how': how, 'res': res, 'sent': sent, 't': time.time()}])
        if not ok:
            raise Lost()
        self.count({'delete': 'deleted', 'complete': 'completed', 'fail': 'failed'}[how]
                   if ok_srv else 'stale_removals')

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
        """Dequeue and remove in one transaction."""
        dl = self.dequeue(q, n, wait)
        if not dl:
            if not self.commit():
                raise Lost()
            return False
        removed = []                     # (delivery, ok, how, res, sent)
        if q == JOB_QUEUE:
            for d in dl:
                how = self.how(q)
                removed.append((d, how) + self.remove(d, how))
        else:
            sent = time.time()
            rows = self.sql("SELECT * FROM broker.delete(%s, %s::bigint[])",
                            (q, [d['id'] for d in dl]))
            gone = {row[0] for row in rows}
            removed = [(d, 'delete', d['id'] in gone, None, sent) for d in dl]
        ok = self.commit(pause=self.rnd.uniform(0.05, 0.3)
                         if q == JOB_QUEUE and self.rnd.random() < 0.15 else 0)
        t = time.time()
        recs = []
        for d, how, ok_srv, res, sent in removed:
            d['doubt'] = not ok
            recs.append(d)
            recs.append({'op': 'del', 'doubt': not ok, 'q': q, 'id': d['id'],
                         'k': d['k'], 'rcpt': d['rcpt'], 'dc': d['dc'], 'ok': ok_srv,
                         'how': how, 'res': res, 'sent': sent, 't': t})
        self.write(recs)
        if not ok:
            raise Lost()
        self.count('delivered', len(dl))
        self.count('removed', sum(1 for x in removed if x[2]))
        return True

    def leased(self, q, n, wait, lazy):
        """Dequeue (commit), then remove, extend, release or abandon each."""
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


def work(kind, name, dsn, logdir, stop, run, arg, window):
    """Body of one worker process."""
    global DEDUP_WINDOW
    DEDUP_WINDOW = window
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
    ap.add_argument('--setup', action='store_true',
                    help='create the queues and subscriptions and exit')
    ap.add_argument('--logdir')
    ap.add_argument('--producers', type=int, default=3)
    ap.add_argument('--consumers', type=int, default=6)
    ap.add_argument('--seconds', type=float, default=0, help='0: until SIGTERM')
    ap.add_argument('--long-delays', default='5-15', metavar='A-B',
                    help='the range of the long delays, in seconds')
    ap.add_argument('--dedup-window', type=float, default=DEDUP_WINDOW,
                    help='the dedup_window of the queues (--setup), in seconds: the'
                    ' producers retry some calls after it (check.py reads it from'
                    ' broker.queues)')
    a = ap.parse_args()
    long_delays = tuple(float(x) for x in a.long_delays.split('-'))
    if a.setup:
        setup(a.dsn, a.dedup_window)
        return 0
    if not a.logdir:
        ap.error('--logdir is needed')
    os.makedirs(a.logdir, exist_ok=True)
    run = f'{os.getpid():x}{int(time.time()) % 100000:05d}'
    stop = mp.Event()
    procs = []
    for i in range(a.producers):
        procs.append(mp.Process(target=work, args=('p', f'p{i}', a.dsn, a.logdir, stop, run,
                                                   long_delays, a.dedup_window)))
    for i in range(a.consumers):
        role = ROLES[i % len(ROLES)]
        procs.append(mp.Process(target=work, args=('c', f'c{i}-{role}', a.dsn, a.logdir,
                                                   stop, run, role, a.dedup_window)))
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
