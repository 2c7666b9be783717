#!/usr/bin/env python3
"""test/fuzz/hostile.py: hostile-input generator for the broker extension.

Calls every SQL function of schema broker with random and hostile arguments
from several sessions for a bounded time, and checks after each call that
nothing broke; pauses every session now and then to check the invariants of
the queues; scans the server log at the end.  Prints a summary and exits 1
when anything failed.

Connection: libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE) or
--dsn; the user must be a superuser and the extension installed.  The
functions are described in FUNCTIONS below, one entry each; a broker
function without an entry is reported as a failure.

Usage: hostile.py [--seconds N] [--sessions N] [--seed S] [--dsn DSN]
                  [--server-log FILE] [--check-interval N] [--verbose]
"""
import argparse
import datetime
import json
import os
import random
import re
import sys
import threading
import time
import traceback
from collections import Counter, deque

import psycopg
from psycopg.types.datetime import TimestamptzLoader
from psycopg.types.string import TextLoader

INT_MAX = 2**31 - 1
INT_MIN = -2**31
BIG_MAX = 2**63 - 1
BIG_MIN = -2**63

NOPRIV = 'fz_nopriv'            # a role that was granted nothing
EVIL = 'fz_evil'                # unprivileged owner of schema evil

# Queues made at set-up (name, create_queue arguments); the generators
# mostly pick these, and create/drop/purge mostly the churn ones.
MAIN_QUEUES = [
    ('fz_dlq', {}),
    ('fz_a', {}),
    ('fz_b', {'lease': '200 ms', 'max_deliveries': 2, 'dead_letter_queue': 'fz_dlq'}),
    ('fz_c', {'max_message_size': 64, 'default_ttl': '2 seconds'}),
    ('fz_d', {'max_message_size': 1048576, 'lease': '1 second'}),
    ('fz_e', {'max_deliveries': 1, 'lease': '100 ms'}),
    ('f' * 48, {}),
]
CHURN_QUEUES = ['fz_t0', 'fz_t1', 'fz_t2', 'fz_t3']

# Queue names that must be refused with 42602 (NULL is generated apart).
BAD_NAMES = [
    '', 'a' * 49, 'Orders', 'ORDERS', '1abc', '9', 'a-b', 'a b', ' fz_a', 'fz_a ',
    'fz_a\n', 'fz_a\t', "q'; DROP TABLE x; --", 'q"; DROP TABLE x; --',
    "'); DELETE FROM broker.queue_defs; --", "fz_a' OR '1'='1", 'q%s%n%x%d',
    'q\\', 'q\\0', 'broker.queue_defs', 'pg_catalog.q', '$1', '*', '%', '_%',
    'é', 'fz_ä', '日本', '😀', 'ı', 'ＦＺ', 'fz_a\u200b', '\u202efz_a', 'q' * 48 + 'é',
    'x' * 10 * 1024 * 1024, "'" * 100000,
]

INTERVAL_EXTREMES = [
    '0', '-1 second', '-1 microsecond', '1 microsecond', '100000 years',
    '178000000 years', '-178000000 years', 'infinity', '-infinity',
    '1 month -30 days', '1 mon -29 days', '1 day -86400 seconds', 'P1Y2M',
    '00:00:00.000001', '-0', 'garbage', '', '2147483647 days', '-2147483648 days',
    '9223372036854775807 microseconds',
]
INT_EXTREMES = [0, -1, 1, 10000, 10001, INT_MAX, INT_MIN, 2**31, -2**31 - 1]
BIG_EXTREMES = [0, -1, 1, BIG_MAX, BIG_MIN, 2**63, -2**63 - 1]

# SQLSTATEs PostgreSQL itself raises for hostile input or concurrency,
# accepted from any call: bad literals, overflows, stack depth, size limits,
# timeouts, serialization failures and deadlocks.
GENERIC_STATES = {
    '22P02', '22007', '22008', '22015', '22003', '22P05', '54001', '54000',
    '57014', '40001', '40P01', '2202E',
}
# What a read-only refusal names when it comes from one of the extension's
# own statements rather than from a check of the function itself.
INTERNAL_OP = re.compile(r'cannot execute (nextval|setval|SELECT FOR|INSERT|UPDATE|DELETE|TRUNCATE)')

# Raised by the server to sessions other than the one that crashed it.
COLLATERAL_STATES = {'57P01', '57P02', '57P03', '08006', '08003', '08000'}


class Val:
    """One generated argument: a Python value bound as a parameter, or a
    server-side SQL expression (expr); desc spells it in a reproduction."""

    def __init__(self, value=None, expr=None, meta=None):
        self.value = value
        self.expr = expr
        self.meta = meta or {}


NULL = None

# SQL type names as pg_catalog spells them (integer is a keyword there).
CATALOG_TYPE = {'integer': 'int4', 'bigint': 'int8', 'boolean': 'bool', 'bigint[]': 'int8[]',
                'integer[]': 'int4[]'}


def V(value, **meta):
    """A parameter value."""
    return Val(value=value, meta=meta)


def E(expr, **meta):
    """A server-side expression (already of the right type)."""
    return Val(expr=expr, meta=meta)


class Fn:
    """One table entry: a broker function, its arguments (name, SQL type,
    generator), whether it returns a set, the SQLSTATEs it may raise for bad
    input, whether PUBLIC lacks EXECUTE, a weight and an optional check run
    after a successful call."""

    def __init__(self, sig, args, srf, expect, admin=False, weight=1.0, post=None,
                 timeout=None):
        self.sig = sig
        self.name = sig.split('(')[0]
        self.args = args
        self.srf = srf
        self.expect = set(expect)
        self.admin = admin
        self.weight = weight
        self.post = post
        self.timeout = timeout
        self.ndefaults = 0          # from pg_proc


# ---------------------------------------------------------------------------
# Argument generators: each takes a Ctx and returns a Val.

def g_queue(c):
    """A queue name: mostly an existing one, sometimes missing or malformed."""
    r = c.rng.random()
    if r < 0.78:
        return V(c.rng.choice(c.st.queue_pool()), queue=True)
    if r < 0.83:
        return V('fz_nosuch_%d' % c.rng.randrange(5))
    if r < 0.86:
        return V(NULL)
    return V(c.rng.choice(BAD_NAMES), bad_name=True)


def g_queue_or_null(c):
    """A queue name where NULL means every queue."""
    return V(NULL) if c.rng.random() < 0.4 else g_queue(c)


def g_new_queue(c):
    """A name for create_queue: churn names mostly."""
    r = c.rng.random()
    if r < 0.7:
        return V(c.rng.choice(CHURN_QUEUES))
    if r < 0.8:
        return V(c.rng.choice(MAIN_QUEUES)[0])
    return g_queue(c)


def g_drop_queue(c):
    """A queue to drop or purge: churn names mostly."""
    r = c.rng.random()
    if r < 0.75:
        return V(c.rng.choice(CHURN_QUEUES))
    return g_queue(c)


def g_dlq(c):
    """A dead-letter queue name or NULL."""
    r = c.rng.random()
    if r < 0.5:
        return V(NULL)
    if r < 0.8:
        return V(c.rng.choice(['fz_dlq'] + CHURN_QUEUES))
    return g_queue(c)


def interval(c, normal, p_extreme=0.2, p_null=0.05):
    """An interval: one of the normal values, an extreme one, or NULL."""
    r = c.rng.random()
    if r < p_null:
        return V(NULL)
    if r < p_null + p_extreme:
        return V(c.rng.choice(INTERVAL_EXTREMES), extreme=True)
    return V(c.rng.choice(normal))


def g_lease(c):
    return interval(c, ['50 ms', '200 ms', '1 second', '30 seconds', '5 minutes'])


def g_delay(c):
    return interval(c, ['0', '0', '0', '0', '100 ms', '1 second'], 0.12, 0.1)


def g_ttl(c):
    r = c.rng.random()
    if r < 0.6:
        return V(NULL)
    return interval(c, ['200 ms', '1 second', '10 seconds', '1 hour'], 0.4, 0.0)


def g_wait(c):
    v = interval(c, ['0', '0', '0', '0', '0', '10 ms', '200 ms', '1 second'], 0.08, 0.05)
    return v


def integer(c, normal, extreme_p=0.25, null_p=0.03):
    """An integer: a normal value, an extreme one, or NULL."""
    r = c.rng.random()
    if r < null_p:
        return V(NULL)
    if r < null_p + extreme_p:
        return V(c.rng.choice(INT_EXTREMES), extreme=True)
    return V(c.rng.choice(normal))


def g_max_messages(c):
    return integer(c, [1, 1, 2, 5, 10, 10, 100, 1000, 10000])


def g_max_size(c):
    return integer(c, [64, 100, 4096, 1048576, 1048577, 1])


def g_max_deliveries(c):
    if c.rng.random() < 0.5:
        return V(NULL)
    return integer(c, [1, 2, 3, 5, 100])


def g_bool(c):
    return V(c.rng.choice([True, False, False, NULL]))


def small_json(c):
    """A small JSON object as text."""
    n = c.rng.randrange(4)
    obj = {'n': c.rng.randrange(10**9), 'w': c.wid}
    for i in range(n):
        obj['k%d' % i] = c.rng.choice(['v', 'é', '😀', "it's", '"q"', '\\', '\n', 1.5, None,
                                       [1, 2], {'x': True}])
    return json.dumps(obj, ensure_ascii=c.rng.random() < 0.5)


def g_payload(c):
    """A payload: small JSON mostly; odd scalars, sizes around the limits,
    deep nesting, invalid JSON, and rarely tens of megabytes."""
    r = c.rng.random()
    if r < 0.03:
        return V(NULL)
    if r < 0.70:
        return V(small_json(c))
    if r < 0.78:
        return V(c.rng.choice(['null', '1', '"s"', 'true', '[]', '{}', '1e308', '-0',
                               '1' + '0' * 1000, '"\\u0000"', '"\\ud800"', '{"a":1,"a":2}',
                               '"' + 'é' * 100 + '"']))
    if r < 0.88:
        # {"data": "<k chars>"} takes 16 + k bytes: around every limit
        m = c.rng.choice([64, 100, 4096, 1048576])
        k = max(0, m - 16 + c.rng.choice([-1, 0, 1]))
        return V(json.dumps({'data': 'x' * k}), size=16 + k)
    if r < 0.93:
        d = c.rng.choice([10, 100, 1000, 5000, 100000])
        return V('[' * d + ']' * d, depth=d)
    if r < 0.995:
        return V(c.rng.choice(['{', '{"a":}', "{'a': 1}", 'nul', '', '[1,]', '{"a" 1}']),
                 invalid=True)
    mb = c.rng.choice([10, 20, 30])
    return E("pg_catalog.jsonb_build_object('big', pg_catalog.repeat('x', %d))" % (mb << 20),
             huge=True)


def g_headers(c):
    """Headers: NULL mostly; small, large, and rarely tens of megabytes."""
    r = c.rng.random()
    if r < 0.6:
        return V(NULL)
    if r < 0.9:
        return V(small_json(c))
    if r < 0.985:
        k = c.rng.choice([100, 5000, 100000, 1048576])
        return V(json.dumps({'h': 'y' * k}), size=16 + k)
    if r < 0.997:
        d = c.rng.choice([100, 1000, 100000])
        return V('{"a":' * d + '1' + '}' * d, depth=d)
    mb = c.rng.choice([10, 20])
    return E("pg_catalog.jsonb_build_object('big', pg_catalog.repeat('h', %d))" % (mb << 20),
             huge=True)


def g_batch_headers(c):
    """Headers of a batch, stored once per message: at most a few kB."""
    r = c.rng.random()
    if r < 0.6:
        return V(NULL)
    if r < 0.95:
        return V(small_json(c))
    return V(json.dumps({'h': 'y' * 5000}), size=5016)


def g_payloads(c):
    """A batch: 0 to 1,000,000 elements (big ones rarely), sometimes with a
    NULL or oversized element, multi-dimensional, or NULL itself."""
    r = c.rng.random()
    if r < 0.03:
        return V(NULL)
    if r < 0.06:
        return V([], n=0)
    if r < 0.10:
        return V([[small_json(c), small_json(c)], [small_json(c), small_json(c)]], n=4)
    if r < 0.95:
        n = c.rng.choice([1, 1, 2, 3, 5, 10, 50, 200, 1000, 1025, 2000, 5000])
        elems = [small_json(c) for _ in range(min(n, 200))]
        elems = [elems[i % len(elems)] for i in range(n)]
        if c.rng.random() < 0.05:
            elems[c.rng.randrange(n)] = NULL
        if c.rng.random() < 0.05:
            elems[c.rng.randrange(n)] = json.dumps({'data': 'x' * 5000})
        return V(elems, n=n)
    n = c.rng.choice([10000, 20000, 100000, 100000, 1000000])
    return E("ARRAY(SELECT pg_catalog.jsonb_build_object('i', g)"
             " FROM pg_catalog.generate_series(1, %d) g)" % n, n=n, huge=n > 10000)


def known_message(c):
    """(queue, id, receipt) of a recent delivery or message, or None."""
    return c.st.pick_message(c.rng)


def g_id(c):
    """A message id: of a recent message mostly, else odd values."""
    r = c.rng.random()
    m = known_message(c)
    if r < 0.75 and m:
        c.pending['msg'] = m
        return V(m[1])
    if r < 0.8:
        return V(NULL)
    return V(c.rng.choice(BIG_EXTREMES + [c.rng.randrange(1, 10**7)]), extreme=True)


def g_receipt(c):
    """A receipt: the current one of the message picked for the id mostly,
    else stale, random, negative or NULL."""
    m = c.pending.get('msg')
    r = c.rng.random()
    if m and m[2] is not None and r < 0.7:
        return V(m[2])
    if r < 0.78:
        return V(NULL)
    if m and m[2] is not None and r < 0.85:
        return V(m[2] ^ 1)
    return V(c.rng.choice(BIG_EXTREMES + [c.rng.randrange(0, 2**62)]), extreme=True)


def g_id_text(c):
    """An id as text: a recent id mostly, else text that is no bigint."""
    v = g_id(c)
    if v.value is not None and c.rng.random() < 0.8:
        return V(str(v.value))
    return V(c.rng.choice([NULL, '', 'abc', ' 12 ', '1e3', '0x10', '-0', '9223372036854775808',
                           "1; DROP TABLE x", '1' * 1000]))


def g_receipt_text(c):
    """A receipt as text, or NULL."""
    v = g_receipt_opt(c)
    return V(None if v.value is None else str(v.value))


def g_receipt_opt(c):
    """delete's optional receipt: NULL half the time."""
    return V(NULL) if c.rng.random() < 0.5 else g_receipt(c)


def g_ids(c):
    """An id array: recent ids with duplicates, NULLs, garbage; empty, NULL,
    or (rarely) 100,000 ids."""
    r = c.rng.random()
    if r < 0.03:
        return V(NULL)
    if r < 0.06:
        return V([])
    if r < 0.08:
        return E("ARRAY(SELECT g::pg_catalog.int8 FROM pg_catalog.generate_series(1, %d) g)"
                 % c.rng.choice([10000, 100000]))
    ids = []
    for _ in range(c.rng.choice([1, 2, 5, 10, 100])):
        m = known_message(c)
        ids.append(m[1] if m else c.rng.randrange(1, 10**6))
    if c.rng.random() < 0.2:
        ids.append(NULL)
    if c.rng.random() < 0.2:
        ids += ids[:3]
    if c.rng.random() < 0.1:
        ids.append(c.rng.choice(BIG_EXTREMES[:5]))
    return V(ids)


# ---------------------------------------------------------------------------
# Checks run after a successful call, inside the caller's transaction, as
# superuser with search_path = pg_catalog.  They return nothing; they call
# w.fail() and record effects to apply at commit.

def post_enqueue(w, call, rows):
    """The ids returned are distinct and exactly the rows this call stored."""
    ids = [r[0] for r in rows]
    is_batch = call.fn.name == 'broker.enqueue_batch'
    # the queue as the call saw it (it holds the queue's lock until commit)
    row = w.conn.execute("SELECT q.queue_id, q.max_message_size FROM broker.queue_defs q"
                         " WHERE q.name = %s", (call.queue,)).fetchone()
    if row is None:
        if not call.iso:    # a snapshot older than the queue may not see it
            w.fail('%s succeeded for a queue that does not exist' % call.fn.name, call,
                   repr(call.queue))
        return
    call.queue_id, call.max_size = row
    if not is_batch:
        if len(ids) != 1 or ids[0] is None or ids[0] <= 0:
            w.fail('enqueue returned a bad id', call, 'returned %r' % ids[:5])
            return
    n = call.vals[1].meta.get('n') if is_batch else 1
    w.check()
    if len(set(ids)) != len(ids):
        w.fail('%s returned duplicate ids' % call.fn.name, call,
               '%d ids, %d distinct' % (len(ids), len(set(ids))))
    if n is not None and len(ids) != n:
        w.fail('%s returned the wrong number of ids' % call.fn.name, call,
               '%d payloads, %d ids' % (n, len(ids)))
    if is_batch and ids != sorted(ids):
        w.fail('enqueue_batch ids not increasing in array order', call, 'first ids %r' % ids[:5])
    stored = w.stored_since(call.queue_id, call.seq_before)
    w.check()
    if set(stored) != set(ids):
        missing = sorted(set(ids) - set(stored))
        extra = sorted(set(stored) - set(ids))
        w.fail('%s returned ids other than those stored' % call.fn.name, call,
               '%d returned, %d stored; returned not stored %r; stored not returned %r'
               % (len(ids), len(stored), missing[:5], extra[:5]))
    # payloads stored under the id returned for them, in array order
    payloads = None
    if is_batch and isinstance(call.vals[1].value, list) and ids and \
            len(ids) <= 200 and len(ids) == n and all(not isinstance(e, list) for e in call.vals[1].value):
        payloads = call.vals[1].value
    elif not is_batch and call.vals[1].value is not None and len(call.vals[1].value) < 100000:
        payloads = [call.vals[1].value]
    if payloads is not None and set(stored) == set(ids):
        bad = w.q1("SELECT count(*) FROM ROWS FROM (unnest(%s::int8[]), unnest(%s::jsonb[])) u(i, p)"
                   " WHERE NOT EXISTS (SELECT 1 FROM broker.messages m WHERE m.queue_id = %s"
                   " AND m.id = u.i AND m.payload = u.p)", (ids, payloads, call.queue_id))
        w.check()
        if bad:
            w.fail('%s stored a payload under another id' % call.fn.name, call,
                   '%d of %d payloads not under the id returned for them' % (bad, len(ids)))
    # message size: payload and headers together within max_message_size
    if ids and len(ids) <= 1000 and set(stored) == set(ids):
        row = w.conn.execute(
            "SELECT max(pg_column_size(m.payload::text::jsonb) - 4),"
            "       max(coalesce(pg_column_size(m.headers::text::jsonb) - 4, 0)),"
            "       max(pg_column_size(m.payload::text::jsonb) - 4 +"
            "           coalesce(pg_column_size(m.headers::text::jsonb) - 4, 0))"
            "  FROM broker.messages m WHERE m.queue_id = %s AND m.id = ANY(%s)",
            (call.queue_id, ids)).fetchone()
        w.check()
        if row[0] is not None and row[0] > call.max_size:
            w.fail('payload larger than max_message_size accepted', call,
                   'payload %d bytes, queue accepts %d' % (row[0], call.max_size))
        elif row[2] is not None and row[2] > call.max_size:
            w.fail('headers not counted against max_message_size', call,
                   'payload %d + headers %d bytes stored, queue accepts %d'
                   % (row[0], row[1], call.max_size))
    for i in ids[:200]:
        call.effects.append(('enqueued', call.queue, i))


def post_dequeue(w, call, rows):
    """Rows are distinct, within max_messages, never deleted before, never
    under another session's valid lease; leases are recorded for commit."""
    w.check()
    ids = [r[0] for r in rows]
    mm = 1 if call.vals[1].meta.get('omitted') else call.vals[1].value
    if isinstance(mm, int) and len(ids) > mm:
        w.fail('dequeue returned more than max_messages', call, '%d > %d' % (len(ids), mm))
    if len(set(ids)) != len(ids):
        w.fail('dequeue returned a message twice in one call', call, repr(ids[:10]))
    for r in rows:
        mid, dc, lease_until, receipt = r[0], r[4], r[5], r[7]
        if dc is None or dc < 1 or receipt is None or receipt < 0 or lease_until is None:
            w.fail('dequeue returned a malformed row', call,
                   'id %s delivery_count %s receipt %s lease_until %s' % (mid, dc, receipt, lease_until))
        if mid in w.txn_leased and mid not in w.txn_released:
            w.fail('dequeue returned a message already leased in this transaction', call, 'id %d' % mid)
        w.txn_leased.add(mid)
        w.st.check_delivery(w, call, mid, call.started, r)
        call.effects.append(('lease', call.queue, mid, lease_until, receipt,
                             'session %d (delivery %s): %s'
                             % (w.wid, dc, clip(call.repro, 200))))


def post_delete_one(w, call, rows):
    """A true result records the id as deleted at commit."""
    if rows and rows[0][0] is True and call.vals[1].value is not None:
        call.effects.append(('delete', call.queue, as_id(call.vals[1].value)))


def post_delete_many(w, call, rows):
    """The ids returned are distinct and among those given."""
    w.check()
    got = [r[0] for r in rows if type(r[0]) is int]   # an untyped call may reach delete(text, text)
    if len(set(got)) != len(got):
        w.fail('delete(ids[]) returned an id twice', call, repr(got[:10]))
    given = call.vals[1].value
    if isinstance(given, list) and not set(got) <= set(given):
        w.fail('delete(ids[]) returned an id not given', call,
               repr(sorted(set(got) - set(given))[:10]))
    for i in got:
        call.effects.append(('delete', call.queue, i))


def post_release(w, call, rows):
    if rows and rows[0][0] is True:
        call.effects.append(('release', call.queue, call.vals[1].value))
        w.txn_released.add(call.vals[1].value)


def post_extend(w, call, rows):
    if rows and rows[0][0] is not None:
        call.effects.append(('extend', call.queue, call.vals[1].value, rows[0][0]))


def post_purge(w, call, rows):
    call.effects.append(('purge', call.queue))


def post_drop(w, call, rows):
    if rows and rows[0][0] is True:
        call.effects.append(('purge', call.queue))


def post_create(w, call, rows):
    pass


# ---------------------------------------------------------------------------
# The table: one entry per SQL function of schema broker.

Q_ERRS = {'42602', '42704', '53200'}
FUNCTIONS = [
    Fn('broker.create_queue(text,interval,integer,interval,integer,text,boolean)',
       [('queue', 'text', g_new_queue), ('lease', 'interval', g_lease),
        ('max_message_size', 'integer', g_max_size), ('default_ttl', 'interval', g_ttl),
        ('max_deliveries', 'integer', g_max_deliveries),
        ('dead_letter_queue', 'text', g_dlq), ('if_not_exists', 'boolean', g_bool)],
       srf=False, admin=True, weight=2, expect={'42602', '22004', '22023', '42710'}),
    Fn('broker.drop_queue(text,boolean)',
       [('queue', 'text', g_drop_queue), ('if_exists', 'boolean', g_bool)],
       srf=False, admin=True, weight=1.5, expect=Q_ERRS | {'22004', '2BP01'}, post=post_drop),
    Fn('broker.purge_queue(text)', [('queue', 'text', g_drop_queue)],
       srf=False, admin=True, weight=1, expect=Q_ERRS, post=post_purge),
    Fn('broker.enqueue(text,jsonb,interval,interval,jsonb)',
       [('queue', 'text', g_queue), ('payload', 'jsonb', g_payload), ('delay', 'interval', g_delay),
        ('ttl', 'interval', g_ttl), ('headers', 'jsonb', g_headers)],
       srf=False, weight=20, expect=Q_ERRS | {'22004', '22023', '54000'}, post=post_enqueue),
    Fn('broker.enqueue_batch(text,jsonb[],interval,interval,jsonb)',
       [('queue', 'text', g_queue), ('payloads', 'jsonb[]', g_payloads),
        ('delay', 'interval', g_delay), ('ttl', 'interval', g_ttl),
        ('headers', 'jsonb', g_batch_headers)],
       srf=True, weight=8, expect=Q_ERRS | {'22004', '22023', '54000'}, post=post_enqueue,
       timeout='120s'),
    Fn('broker.dequeue(text,integer,interval,interval)',
       [('queue', 'text', g_queue), ('max_messages', 'integer', g_max_messages),
        ('lease', 'interval', g_lease), ('wait', 'interval', g_wait)],
       srf=True, weight=20, expect=Q_ERRS | {'22004', '22023'}, post=post_dequeue),
    Fn('broker.delete(text,bigint,bigint)',
       [('queue', 'text', g_queue), ('id', 'bigint', g_id), ('receipt', 'bigint', g_receipt_opt)],
       srf=False, weight=12, expect=Q_ERRS | {'22004'}, post=post_delete_one),
    Fn('broker.delete(text,text,text)',
       [('queue', 'text', g_queue), ('id', 'text', g_id_text), ('receipt', 'text', g_receipt_text)],
       srf=False, weight=4, expect=Q_ERRS | {'22004', '22P02'}, post=post_delete_one),
    Fn('broker.delete(text,bigint[])',
       [('queue', 'text', g_queue), ('ids', 'bigint[]', g_ids)],
       srf=True, weight=6, expect=Q_ERRS | {'22004'}, post=post_delete_many),
    Fn('broker.release(text,bigint,bigint,interval)',
       [('queue', 'text', g_queue), ('id', 'bigint', g_id), ('receipt', 'bigint', g_receipt),
        ('delay', 'interval', g_delay)],
       srf=False, weight=6, expect=Q_ERRS | {'22004', '22023'}, post=post_release),
    Fn('broker.extend_lease(text,bigint,bigint,interval)',
       [('queue', 'text', g_queue), ('id', 'bigint', g_id), ('receipt', 'bigint', g_receipt),
        ('lease', 'interval', g_lease)],
       srf=False, weight=6, expect=Q_ERRS | {'22004', '22023'}, post=post_extend),
    Fn('broker.metrics(text)', [('queue', 'text', g_queue_or_null)],
       srf=True, weight=3, expect=Q_ERRS),
    Fn('broker.waiters(text)', [('queue', 'text', g_queue_or_null)],
       srf=True, weight=2, expect=Q_ERRS),
    Fn('broker._consumers()', [], srf=True, weight=1, expect=set()),
    Fn('broker.health()', [], srf=True, weight=1, expect=set()),
    Fn('broker.reap(text)', [('queue', 'text', g_queue_or_null)],
       srf=False, weight=2, expect=Q_ERRS),
    Fn('broker.maintain_segments()', [], srf=True, admin=True, weight=2, expect={'25001'}),
]


# ---------------------------------------------------------------------------

def clip(s, n=160):
    """A string cut for a report."""
    s = str(s)
    return s if len(s) <= n else s[:n] + '...(%d chars)' % len(s)


def literal(v, typ, typed=True):
    """SQL text for a value in a reproduction; long strings abbreviated."""
    if v is None:
        return 'NULL' + ('::' + typ if typed else '')
    if isinstance(v, list):
        text = array_text(v)
    elif isinstance(v, bool):
        text = 't' if v else 'f'
    else:
        text = str(v)
    if len(text) > 200:
        if len(set(text)) == 1:
            q = "pg_catalog.repeat(%s, %d)" % (sql_quote(text[0]), len(text))
        else:
            q = sql_quote(text[:60] + '...') + ' /* %d chars */' % len(text)
    else:
        q = sql_quote(text)
    return q + ('::' + typ if typed else '')


def sql_quote(s):
    """A string as an SQL literal."""
    if '\\' in s:
        return "E'" + s.replace('\\', '\\\\').replace("'", "''") + "'"
    return "'" + s.replace("'", "''") + "'"


def array_text(v):
    """A (nested) list as an array literal."""
    parts = []
    for e in v:
        if e is None:
            parts.append('NULL')
        elif isinstance(e, list):
            parts.append(array_text(e))
        else:
            s = str(e)
            parts.append('"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"')
    return '{' + ','.join(parts) + '}'


def as_id(v):
    """A message id given as int or text, or None."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def as_text(v):
    """A value as the text an untyped parameter carries."""
    if v is None:
        return None
    if isinstance(v, bool):
        return 't' if v else 'f'
    if isinstance(v, list):
        return array_text(v)
    return str(v)


class Call:
    """One generated call: its function, arguments and mode, the SQL and
    parameters that run it, and a reproduction."""

    def __init__(self, fn, vals, omit, mode, nopriv, evil):
        self.fn = fn
        self.vals = vals
        self.omit = omit            # indexes of defaulted args left out
        self.mode = mode            # typed, named, untyped, prepared
        self.nopriv = nopriv
        self.evil = evil
        self.effects = []
        self.queue = vals[0].value if vals and fn.args[0][0] == 'queue' else None
        self.queue_id = None
        self.seq_before = None
        self.max_size = None
        self.started = None
        self.ended = None

    def build(self):
        """(statements to run in order, each (sql, params)), reproduction."""
        fn = self.fn
        head = ('SELECT * FROM %s(' if fn.srf else 'SELECT %s(') % fn.name
        pieces, params, repro = [], [], []
        prepared = self.mode == 'prepared'
        for i, (aname, typ, _) in enumerate(fn.args):
            if i in self.omit:
                continue
            v = self.vals[i]
            named = self.mode == 'named'
            prefix = aname + ' => ' if named else ''
            if v.expr is not None:
                pieces.append(prefix + v.expr)
                repro.append(prefix + v.expr)
            elif self.mode in ('typed', 'named'):
                pieces.append(prefix + '%s::pg_catalog.' + CATALOG_TYPE.get(typ, typ))
                params.append(v.value)
                repro.append(prefix + literal(v.value, typ))
            elif self.mode == 'untyped':
                pieces.append('%s')
                params.append(as_text(v.value))
                repro.append(literal(v.value, typ, typed=False))
            else:
                pieces.append('$%d' % (len(params) + 1))
                params.append(as_text(v.value))
                repro.append(literal(v.value, typ, typed=False))
        call_sql = head + ', '.join(pieces) + ')'
        pre = []
        if self.nopriv:
            pre.append('SET ROLE %s' % NOPRIV)
        if self.evil:
            pre.append('SET search_path = evil, pg_catalog')
        if prepared:
            lits = ', '.join('NULL' if p is None else sql_quote(p) for p in params)
            stmts = [('DEALLOCATE ALL', None), ('PREPARE fz_p AS ' + call_sql, None),
                     ('EXECUTE fz_p(%s)' % lits if params else 'EXECUTE fz_p', None)]
            text = '; '.join(pre + ['PREPARE fz_p AS ' + head + ', '.join(
                '$%d' % (k + 1) for k in range(len(params))) + ')',
                'EXECUTE fz_p(%s)' % ', '.join(repro)])
        else:
            stmts = [(call_sql, params)]
            text = '; '.join(pre + [head + ', '.join(repro) + ')'])
        return stmts, text + ';'


class State:
    """What the sessions share: recent messages and deliveries, deleted ids,
    recorded leases, counters and failures."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.args = args
        self.messages = deque(maxlen=5000)      # (queue, id, None)
        self.deliveries = deque(maxlen=3000)    # (queue, id, receipt)
        self.deleted = {}                       # id -> time recorded
        self.leases = {}                        # id -> (queue, lease_until, receipt, time recorded)
        self.inflight = Counter()               # id -> calls in flight that may change its lease
        self.changed = {}                       # id -> time its lease state last changed
        self.calls = Counter()
        self.errors = Counter()
        self.fn_errors = Counter()
        self.checks = 0
        self.failures = {}                      # class -> [count, detail, repro]
        self.collateral = Counter()
        self.uncovered = []

    def queue_pool(self):
        return [q for q, _ in MAIN_QUEUES] + CHURN_QUEUES

    def pick_message(self, rng):
        with self.lock:
            pool = self.deliveries if (rng.random() < 0.7 and self.deliveries) else self.messages
            if not pool:
                return None
            return pool[rng.randrange(len(pool))]

    def fail(self, cls, detail, repro):
        with self.lock:
            f = self.failures.setdefault(cls, [0, detail, repro])
            f[0] += 1
        if self.args.verbose:
            print('FAIL %s: %s\n     %s' % (cls, clip(detail, 300), clip(repro, 600)),
                  file=sys.stderr, flush=True)

    def check_delivery(self, w, call, mid, started, row=None):
        """A message delivered by a call that started at 'started' must not
        have been deleted before, nor be under a lease recorded before that
        was still valid when the call returned (a waiting call may take a
        message whose lease ran out while it waited)."""
        with self.lock:
            d = self.deleted.get(mid)
            lease = self.leases.get(mid)
            busy = self.inflight.get(mid, 0) - w.my_inflight.get(mid, 0)
            changed = self.changed.get(mid, 0)
        if d is not None and d < started:
            w.fail('dequeue returned a deleted message', call,
                   'id %d was deleted %.3f s before the call' % (mid, started - d))
        if lease is not None and busy <= 0 and changed < started:
            q, until, receipt, at, trace = lease
            start_dt = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
            end_dt = datetime.datetime.fromtimestamp(call.ended, datetime.timezone.utc)
            if until > end_dt + datetime.timedelta(milliseconds=100):
                w.fail('dequeue returned a message under another valid lease', call,
                       'id %d leased until %s (receipt %s, committed %.3f s before the call by %s);'
                       ' call ran %s to %s in session %d, got delivery %s'
                       % (mid, until, receipt, started - at, trace, start_dt, end_dt, w.wid,
                          row[4] if row else '?'))

    def apply(self, effects, wid):
        """Record what a committed transaction did."""
        now = time.time()
        with self.lock:
            for e in effects:
                kind, q = e[0], e[1]
                if kind == 'enqueued':
                    self.messages.append((q, e[2], None))
                elif kind == 'lease':
                    self.leases[e[2]] = (q, e[3], e[4], now, e[5])
                    self.changed[e[2]] = now
                    self.deliveries.append((q, e[2], e[4]))
                elif kind == 'delete':
                    self.deleted[e[2]] = now
                    self.leases.pop(e[2], None)
                    self.changed[e[2]] = now
                elif kind == 'release':
                    self.leases.pop(e[2], None)
                    self.changed[e[2]] = now
                elif kind == 'extend':
                    old = self.leases.get(e[2])
                    if old:
                        self.leases[e[2]] = (old[0], e[3], old[2], now, old[4] + ' then extended')
                    self.changed[e[2]] = now
                elif kind == 'purge':
                    for i in [i for i, l in self.leases.items() if l[0] == q]:
                        del self.leases[i]
            if len(self.changed) > 200000:
                self.changed.clear()
                self.leases.clear()


class Pause:
    """A barrier the coordinator raises to get every session to a quiescent
    point (no transaction open) and lowers to let them go on."""

    def __init__(self, n):
        self.cond = threading.Condition()
        self.n = n
        self.requested = False
        self.arrived = 0
        self.generation = 0

    def checkpoint(self):
        """Called by a session between transactions: waits while paused."""
        with self.cond:
            if not self.requested:
                return
            gen = self.generation
            self.arrived += 1
            self.cond.notify_all()
            while self.generation == gen:
                self.cond.wait()

    def pause(self, timeout):
        """Request a pause; True when every session arrived in time."""
        with self.cond:
            self.requested = True
            self.arrived = 0
            end = time.time() + timeout
            while self.arrived < self.n and time.time() < end:
                self.cond.wait(0.2)
            return self.arrived >= self.n

    def resume(self):
        with self.cond:
            self.requested = False
            self.generation += 1
            self.cond.notify_all()

    def leave(self):
        """A session that stops counts as arrived forever."""
        with self.cond:
            self.n -= 1
            self.cond.notify_all()


class WideTimestamptzLoader(TimestamptzLoader):
    """timestamptz, with the years Python cannot hold (after 9999, before 1,
    infinity) loaded as the largest or smallest datetime."""

    def load(self, data):
        try:
            return super().load(data)
        except psycopg.DataError:
            if bytes(data).lstrip().startswith(b'-') or b'BC' in bytes(data):
                return datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
            return datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)


def connect(args, autocommit=True, tries=60, dsn=None):
    """A connection, retried while the server restarts after a crash."""
    last = None
    for _ in range(tries):
        try:
            conn = psycopg.connect(args.dsn if dsn is None else dsn, autocommit=autocommit)
            conn.prepare_threshold = None       # the calls PREPARE and DEALLOCATE ALL
            conn.adapters.register_loader('jsonb', TextLoader)
            conn.adapters.register_loader('json', TextLoader)
            conn.adapters.register_loader('timestamptz', WideTimestamptzLoader)
            return conn
        except psycopg.OperationalError as e:
            last = e
            time.sleep(1)
    raise last


class Worker(threading.Thread):
    """One session: runs random calls until the deadline."""

    def __init__(self, wid, st, pause, fns, deadline, args, standby_dsn=None):
        super().__init__(daemon=True)
        self.standby_dsn = standby_dsn      # a session on the standby: nothing may change
        self.wid = wid
        self.st = st
        self.pause = pause
        self.fns = fns
        self.weights = [f.weight for f in fns]
        self.deadline = deadline
        self.args = args
        self.rng = random.Random('%s/%d' % (args.seed, wid))
        self.conn = None
        self.current = None
        self.notices = []
        self.my_inflight = Counter()
        self.txn_leased = set()
        self.txn_released = set()

    # -- helpers used by the checks
    def fail(self, cls, call, detail):
        self.st.fail(cls, detail, call.repro if call else '')

    def check(self, n=1):
        with self.st.lock:
            self.st.checks += n

    def q1(self, query, params=None):
        return self.conn.execute(query, params).fetchone()[0]

    def stored_since(self, queue_id, before):
        """Ids of the messages of a queue this transaction inserted above 'before'."""
        parts = ' UNION ALL '.join(
            'SELECT id FROM broker.messages_%d WHERE queue_id = %%(q)s AND id > %%(b)s'
            ' AND xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id())' % s for s in range(4))
        return [r[0] for r in self.conn.execute(parts, {'q': queue_id, 'b': before})]

    def on_notice(self, diag):
        msg = diag.message_primary or ''
        if 'EVIL_TRAP' in msg:
            self.st.fail('attacker code ran inside the extension (search_path)',
                         msg, self.current.repro if self.current else '')

    def session_setup(self):
        """Connect and set this session's knobs."""
        self.conn = connect(self.args, dsn=self.standby_dsn)
        self.conn.add_notice_handler(self.on_notice)
        self.conn.execute("SET statement_timeout = '20s'")
        self.conn.execute("SET application_name = 'fz_w%d'" % self.wid)
        if self.rng.random() < 0.5:
            self.conn.execute('SET broker.segment_size = %d' % self.rng.choice([100, 1000]))
        if self.rng.random() < 0.3:
            self.conn.execute("SET broker.consumer = %s" % sql_quote(
                self.rng.choice(['c' * 200, 'é' * 50, "x'y", ''])))

    def run(self):
        try:
            self.session_setup()
            while time.time() < self.deadline:
                if not self.standby_dsn:
                    self.pause.checkpoint()
                if time.time() >= self.deadline:
                    break
                try:
                    self.transaction()
                except psycopg.OperationalError as e:
                    self.lost(e)
        except Exception as e:
            self.st.fail('harness error', '%s: %s' % (type(e).__name__, clip(e, 300)),
                         clip(traceback.format_exc(), 1500))
        finally:
            if not self.standby_dsn:
                self.pause.leave()

    def lost(self, e):
        """The connection broke: record it unless another session's crash
        explains it, then reconnect."""
        state = getattr(e, 'sqlstate', None)
        call = self.current
        if state in COLLATERAL_STATES:
            with self.st.lock:
                self.st.collateral[state] += 1
        else:
            self.st.fail('server connection lost (see the crash in the server log for the cause)',
                         clip(str(e).strip(), 200), call.repro if call else '')
        try:
            self.conn.close()
        except Exception:
            pass
        time.sleep(1)
        self.session_setup()

    def new_call(self):
        """Generate one call."""
        fn = self.rng.choices(self.fns, self.weights)[0]
        ctx = Ctx(self)
        vals = [gen(ctx) for (_, _, gen) in fn.args]
        n = len(fn.args)
        omit = set()
        r = self.rng.random()
        mode = 'typed' if r < 0.55 else 'named' if r < 0.72 else 'untyped' if r < 0.92 else 'prepared'
        if fn.ndefaults and mode in ('typed', 'untyped', 'prepared') and self.rng.random() < 0.3:
            k = self.rng.randrange(fn.ndefaults + 1)
            omit = set(range(n - k, n))
        elif fn.ndefaults and mode == 'named' and self.rng.random() < 0.5:
            omit = {i for i in range(n - fn.ndefaults, n) if self.rng.random() < 0.5}
        for i in omit:
            vals[i] = V(None, omitted=True)
        nopriv = self.rng.random() < 0.15
        evil = self.rng.random() < 0.25
        call = Call(fn, vals, omit, mode, nopriv, evil)
        call.stmts, call.repro = call.build()
        if self.standby_dsn:
            call.repro = '/* on a standby */ ' + call.repro
        return call

    def transaction(self):
        """One transaction of one or a few calls, committed or rolled back."""
        conn = self.conn
        self.txn_leased, self.txn_released = set(), set()
        ncalls = 1 if self.rng.random() < 0.85 else self.rng.randrange(2, 5)
        iso = 'REPEATABLE READ' if self.rng.random() < 0.04 else None
        conn.execute('BEGIN' + (' ISOLATION LEVEL ' + iso if iso else ''))
        effects = []
        ok = True
        for _ in range(ncalls):
            call = self.new_call()
            self.current = call
            if not self.one_call(call, iso):
                ok = False
                break
            effects += call.effects
        commit = ok and self.rng.random() < 0.9
        try:
            conn.execute('COMMIT' if commit else 'ROLLBACK')
        except psycopg.Error as e:
            if e.sqlstate is None or e.sqlstate in COLLATERAL_STATES or conn.broken:
                raise psycopg.OperationalError(str(e)) if not isinstance(e, psycopg.OperationalError) else e
            # a commit may fail (leases written at commit); the call was fine
            self.error(self.current, e, at_commit=True)
            conn.execute('ROLLBACK')
            commit = False
        finally:
            for i in list(self.my_inflight):
                with self.st.lock:
                    self.st.inflight[i] -= self.my_inflight[i]
            if commit and not self.standby_dsn:
                self.st.apply(effects, self.wid)
            self.my_inflight.clear()
        # the session still works
        self.check()
        if conn.execute('SELECT 1').fetchone()[0] != 1 or \
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.fail('session unusable after a call', self.current, 'SELECT 1 failed')
        self.current = None

    def one_call(self, call, iso):
        """Run one call inside the open transaction; False when it failed
        (the transaction is then aborted)."""
        conn = self.conn
        fn = call.fn
        call.iso = iso
        with self.st.lock:
            self.st.calls[fn.sig] += 1
        # bookkeeping for the checks, read before the call
        if fn.post is post_enqueue:
            s = conn.execute('SELECT last_value, is_called FROM broker.message_id_seq').fetchone()
            call.seq_before = s[0] if s[1] else s[0] - 1
        mid = as_id(call.vals[1].value) if len(call.vals) > 1 else None
        if fn.name in ('broker.release', 'broker.extend_lease', 'broker.delete') and mid is not None:
            with self.st.lock:
                self.st.inflight[mid] += 1
            self.my_inflight[mid] += 1
        timeout = fn.timeout
        if call.vals and any(v.meta.get('huge') for v in call.vals):
            timeout = '120s'
        if fn.name == 'broker.dequeue' and call.vals[3].meta.get('extreme') and self.rng.random() < 0.7:
            timeout = '2s'
        if timeout:
            conn.execute("SET LOCAL statement_timeout = '%s'" % timeout)
        rows = None
        call.started = time.time()
        try:
            for pre in (['SET LOCAL ROLE ' + NOPRIV] if call.nopriv else []) + \
                       (['SET LOCAL search_path = evil, pg_catalog'] if call.evil else []):
                conn.execute(pre)
            for i, (q, params) in enumerate(call.stmts):
                if params is None:
                    cur = conn.execute(q, prepare=False)
                else:
                    cur = conn.execute(q, params, prepare=False)
                if i == len(call.stmts) - 1:
                    try:
                        rows = cur.fetchall()
                    except UnicodeDecodeError as e:
                        self.fail('%s returned invalid UTF-8' % fn.name, call, clip(e, 200))
                        rows = None
                    call.ended = time.time()
            if call.mode == 'prepared':
                conn.execute('DEALLOCATE fz_p')
            conn.execute('RESET ROLE')
            conn.execute('SET LOCAL search_path = pg_catalog')
            if timeout:
                conn.execute("SET LOCAL statement_timeout = '20s'")
        except psycopg.OperationalError as e:
            if e.sqlstate is None or e.sqlstate in COLLATERAL_STATES or conn.broken:
                raise
            self.error(call, e)
            conn.execute('ROLLBACK')
            conn.execute('BEGIN')
            return False
        except psycopg.Error as e:
            if conn.broken:
                raise psycopg.OperationalError(str(e))
            self.error(call, e)
            conn.execute('ROLLBACK')
            conn.execute('BEGIN')
            return False
        # results
        if call.nopriv and fn.admin:
            self.fail('%s ran for a role without EXECUTE' % fn.name, call, 'no 42501')
        if fn.post and not self.standby_dsn and rows is not None:
            try:
                fn.post(self, call, rows)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as e:
                self.fail('check query failed after %s' % fn.name, call,
                          '%s %s' % (e.sqlstate, clip(e, 200)))
                conn.execute('ROLLBACK')
                conn.execute('BEGIN')
                return False
        return True

    def error(self, call, e, at_commit=False):
        """Classify an error raised by a call."""
        state = e.sqlstate or '?????'
        fn = call.fn
        with self.st.lock:
            self.st.errors[state] += 1
            self.st.fn_errors[(fn.sig, state)] += 1
        msg = (e.diag.message_primary or str(e)) if e.diag else str(e)
        detail = e.diag.message_detail or '' if e.diag else ''
        self.check()
        where = ' at COMMIT' if at_commit else ''
        if state == 'XX000':
            self.fail('internal error (XX000) in %s%s: %s' % (fn.name, where, clip(msg, 80)),
                      call, clip(msg, 300))
        elif len(msg) + len(detail) > 2048:
            self.fail('error message echoes oversized input',
                      call, '%d-character message: %s' % (len(msg) + len(detail), clip(msg, 120)))
        if state == '42501':
            if not (call.nopriv and fn.admin):
                self.fail('%s refused with 42501 for a role that may call it' % fn.name, call, clip(msg))
            return
        if call.nopriv and fn.admin and state in fn.expect:
            self.fail('%s checked arguments before privileges' % fn.name, call, '%s %s' % (state, clip(msg)))
        allowed = fn.expect | GENERIC_STATES
        if self.standby_dsn:
            # refused up front as read-only, not from inside an internal statement
            allowed = allowed | {'25006', '55000'}
            ctx = (e.diag.context or '') if e.diag else ''
            if state == '25006' and ('SQL statement' in ctx or INTERNAL_OP.search(msg)):
                self.fail('on a standby, %s fails inside an internal statement' % fn.name, call,
                          '%s %s; %s' % (state, clip(msg, 120), clip(ctx.strip(), 200)))
        if call.mode in ('untyped', 'prepared'):
            allowed = allowed | {'42P18'}
        if state not in allowed and state != 'XX000':
            self.fail('unexpected SQLSTATE %s from %s%s' % (state, fn.name, where), call, clip(msg, 300))
        if state == '54000' and fn.post is post_enqueue and isinstance(call.queue, str):
            self.justify_54000(call, msg)

    def justify_54000(self, call, msg):
        """A payload refused as too large must be larger than the limit."""
        v = call.vals[1]
        if v.expr is not None or v.value is None or 'payload too large' not in msg:
            return
        payloads = v.value if isinstance(v.value, list) else [v.value]
        if any(isinstance(p, list) for p in payloads) or sum(len(p or '') for p in payloads) > 4 << 20:
            return
        conn = self.conn
        conn.execute('ROLLBACK')
        conn.execute('BEGIN')
        row = conn.execute(
            "SELECT (SELECT q.max_message_size FROM broker.queue_defs q WHERE q.name = %s"
            "        AND q.created_at < %s),"
            " (SELECT max(pg_column_size(p::text::jsonb) - 4) FROM unnest(%s::jsonb[]) p)",
            (call.queue, datetime.datetime.fromtimestamp(call.started, datetime.timezone.utc),
             payloads)).fetchone()
        self.check()
        if row[0] is not None and row[1] is not None and row[1] <= row[0]:
            self.fail('payload within max_message_size refused', call,
                      'largest payload %d bytes, queue accepts %d: %s' % (row[1], row[0], clip(msg)))


class Ctx:
    """What a generator sees: the session's random source and shared state."""

    def __init__(self, w):
        self.rng = w.rng
        self.st = w.st
        self.wid = w.wid
        self.pending = {}


# ---------------------------------------------------------------------------
# Set-up, invariants and the final checks (the coordinator's connection).

EVIL_OPS = [(op, t) for t in ('integer', 'bigint', 'text', 'timestamp with time zone')
            for op in ('=', '<>', '<', '<=', '>', '>=')] + [('=', 'tid'), ('=', '"char"')]


def setup(conn, args):
    """Roles, the attacker's schema evil, a canary table and the queues."""
    x = conn.execute
    for role in (NOPRIV, EVIL):
        if not x("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            x('CREATE ROLE %s LOGIN' % role)
    x('CREATE TABLE IF NOT EXISTS public.x (canary int)')
    x('DROP SCHEMA IF EXISTS evil CASCADE')
    x('CREATE SCHEMA evil AUTHORIZATION %s' % EVIL)
    x('GRANT USAGE ON SCHEMA evil TO PUBLIC')
    x('SET ROLE %s' % EVIL)
    x("CREATE TABLE evil.calls (at timestamptz DEFAULT pg_catalog.clock_timestamp(),"
      " what text, cur name, sess name)")
    x('GRANT INSERT, SELECT ON evil.calls TO PUBLIC')
    # records who ran it, once per transaction and trap, and warns (the
    # warning survives a rollback: it reaches the client and the log)
    x("""CREATE FUNCTION evil.trap(what text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE k text := 'evil.f' OPERATOR(pg_catalog.||) pg_catalog.md5(what);
BEGIN
  IF pg_catalog.current_setting(k, true) OPERATOR(pg_catalog.=) 'y' THEN RETURN; END IF;
  PERFORM pg_catalog.set_config(k, 'y', true);
  RAISE WARNING 'EVIL_TRAP % ran as current_user=% session_user=%', what, current_user, session_user;
  BEGIN
    INSERT INTO evil.calls (what, cur, sess) VALUES (what, current_user, session_user);
  EXCEPTION WHEN OTHERS THEN NULL;   -- read-only (a standby): the warning is enough
  END;
END $$""")
    names = {'=': 'eq', '<>': 'ne', '<': 'lt', '<=': 'le', '>': 'gt', '>=': 'ge'}
    for k, (op, t) in enumerate(EVIL_OPS):
        f = 'evil.op%d_%s' % (k, names[op])
        x("CREATE FUNCTION %s(%s, %s) RETURNS boolean LANGUAGE plpgsql AS $$BEGIN"
          " PERFORM evil.trap('%s (%s)'); RETURN $1 OPERATOR(pg_catalog.%s) $2; END$$"
          % (f, t, t, op, t.replace("'", ''), op))
        x('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)' % (op, t, t, f))
    x("CREATE FUNCTION evil.op_tsmi(timestamptz, timestamptz) RETURNS interval LANGUAGE plpgsql AS"
      " $$BEGIN PERFORM evil.trap('- (timestamptz)'); RETURN $1 OPERATOR(pg_catalog.-) $2; END$$")
    x('CREATE OPERATOR evil.- (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.op_tsmi)')
    x("CREATE FUNCTION evil.count_sf(bigint) RETURNS bigint LANGUAGE plpgsql AS"
      " $$BEGIN PERFORM evil.trap('count(*)'); RETURN $1 OPERATOR(pg_catalog.+) 1; END$$")
    x("CREATE AGGREGATE evil.count(*) (SFUNC = evil.count_sf, STYPE = bigint, INITCOND = '0')")
    for agg, t in (('min', 'bigint'), ('max', 'bigint'), ('min', 'timestamptz'), ('max', 'timestamptz'),
                   ('sum', 'bigint')):
        f = 'evil.%s_%s_sf' % (agg, t)
        x("CREATE FUNCTION %s(%s, %s) RETURNS %s LANGUAGE plpgsql AS $$BEGIN"
          " PERFORM evil.trap('%s(%s)'); RETURN %s; END$$"
          % (f, 'numeric' if agg == 'sum' else t, t, 'numeric' if agg == 'sum' else t, agg, t,
             {'min': 'least($1, $2)', 'max': 'greatest($1, $2)',
              'sum': 'coalesce($1, 0) OPERATOR(pg_catalog.+) $2'}[agg]))
        x('CREATE AGGREGATE evil.%s(%s) (SFUNC = %s, STYPE = %s)'
          % (agg, t, f, 'numeric' if agg == 'sum' else t))
    x("CREATE FUNCTION evil.string_agg_sf(text, text, text) RETURNS text LANGUAGE plpgsql AS"
      " $$BEGIN PERFORM evil.trap('string_agg'); RETURN pg_catalog.concat($1, $3, $2); END$$")
    x("CREATE AGGREGATE evil.string_agg(text, text) (SFUNC = evil.string_agg_sf, STYPE = text)")
    for fdef in (
            "nextval(regclass) RETURNS bigint AS $$BEGIN PERFORM evil.trap('nextval');"
            " RETURN pg_catalog.nextval($1); END$$",
            "now() RETURNS timestamptz AS $$BEGIN PERFORM evil.trap('now');"
            " RETURN pg_catalog.now(); END$$",
            "clock_timestamp() RETURNS timestamptz AS $$BEGIN PERFORM evil.trap('clock_timestamp');"
            " RETURN pg_catalog.clock_timestamp(); END$$",
            "unnest(anyarray) RETURNS SETOF anyelement AS $$BEGIN PERFORM evil.trap('unnest');"
            " RETURN QUERY SELECT * FROM pg_catalog.unnest($1); END$$",
            "pg_total_relation_size(regclass) RETURNS bigint AS $$BEGIN"
            " PERFORM evil.trap('pg_total_relation_size'); RETURN pg_catalog.pg_total_relation_size($1); END$$",
            "lower(text) RETURNS text AS $$BEGIN PERFORM evil.trap('lower');"
            " RETURN pg_catalog.lower($1); END$$"):
        x('CREATE FUNCTION evil.' + fdef.replace(' AS $$', ' LANGUAGE plpgsql AS $$', 1))
    x('RESET ROLE')
    # the queues
    for q in CHURN_QUEUES:
        x('SELECT broker.drop_queue(%s, true)', (q,))
    for q, opts in reversed(MAIN_QUEUES):
        if q != 'fz_dlq':
            x('SELECT broker.drop_queue(%s, true)', (q,))
    x("SELECT broker.drop_queue('fz_dlq', true)")
    for q, opts in MAIN_QUEUES:
        named = ''.join(', %s => %%s' % k for k in opts)
        x('SELECT broker.create_queue(%%s%s)' % named, [q] + list(opts.values()))


def introspect(conn, st):
    """Match the table against pg_proc: fill in the defaults, report
    functions without an entry and entries whose arguments differ."""
    conn.execute('SET search_path = pg_catalog')
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.pronargdefaults, coalesce(p.proargnames[1:p.pronargs], '{}'),"
        "       p.proretset FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'broker' ORDER BY 1").fetchall()
    conn.execute('RESET search_path')
    known = {f.sig: f for f in FUNCTIONS}
    present = []
    for sig, ndef, argnames, retset in rows:
        sig = sig.replace(', ', ',')
        f = known.get(sig)
        if f is None:
            st.uncovered.append(sig)
            st.fail('broker function without a table entry: %s' % sig,
                    'add one entry to FUNCTIONS in test/fuzz/hostile.py', '')
            continue
        f.ndefaults = ndef
        if list(argnames) != [a[0] for a in f.args] or retset != f.srf:
            st.fail('table entry out of date: %s' % sig,
                    'pg_proc has arguments %s, set-returning %s' % (list(argnames), retset), '')
        present.append(f)
    missing = sorted(set(known) - {f.sig for f in present})
    return present, missing


class Checker:
    """The invariants, checked while every session is paused."""

    def __init__(self, st, args):
        self.st = st
        self.args = args
        self.rng = random.Random('%s/checker' % args.seed)
        self.rounds = 0

    def check(self, n=1):
        with self.st.lock:
            self.st.checks += n

    def fail(self, cls, detail, repro=''):
        self.st.fail(cls, detail, repro)

    def run(self):
        self.rounds += 1
        with connect(self.args) as conn:
            conn.execute('SET search_path = pg_catalog')
            self.gauges(conn)
        queues = self.queues()
        for q, ready, total in queues:
            if ready <= 50000:
                self.drain(q)
        self.housekeeping(queues)

    def housekeeping(self, queues):
        """Empty the queues that grew large (huge batches), so that a long
        run does not fill the disk."""
        with connect(self.args) as conn:
            for q, ready, total in queues:
                if total > 200000:
                    conn.execute('SELECT broker.purge_queue(%s)', (q,))

    def queues(self):
        with connect(self.args) as conn:
            return conn.execute(
                "SELECT queue, ready, total FROM broker.metrics() ORDER BY queue").fetchall()

    def gauges(self, conn):
        """metrics() agrees with the rows of broker.messages: ready, leased,
        delayed and total, counting only messages not expired."""
        conn.execute('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        t0 = conn.execute('SELECT clock_timestamp()').fetchone()[0]
        metrics = conn.execute('SELECT * FROM broker.metrics()').fetchall()
        t1 = conn.execute('SELECT clock_timestamp()').fetchone()[0]
        counts = {r[0]: r[1:] for r in conn.execute("""
            SELECT q.name,
                   count(*) FILTER (WHERE m.vt <= %(t)s AND (q.max_deliveries IS NULL
                                    OR m.delivery_count < q.max_deliveries)),
                   count(*) FILTER (WHERE m.vt > %(t)s AND m.receipt IS NOT NULL),
                   count(*) FILTER (WHERE m.vt > %(t)s AND m.receipt IS NULL),
                   count(m.id),
                   count(*) FILTER (WHERE m.vt <= %(t)s AND m.delivery_count >= q.max_deliveries),
                   count(*) FILTER (WHERE (m.vt > %(t)s AND m.vt <= %(u)s)
                                    OR (m.expires_at > %(t)s AND m.expires_at <= %(u)s))
              FROM broker.queue_defs q
              LEFT JOIN broker.messages m ON m.queue_id = q.queue_id
                   AND (m.expires_at IS NULL OR m.expires_at > %(t)s)
             WHERE q.kind = 'q' GROUP BY q.name""", {'t': t0, 'u': t1})}
        conn.execute('COMMIT')
        names = {r[0] for r in metrics}
        self.check()
        if names != set(counts):
            self.fail('metrics() lists other queues than queue_defs',
                      'metrics %s, queue_defs %s' % (sorted(names), sorted(counts)))
        for r in metrics:
            q, ready, leased, delayed, total = r[0], r[1], r[2], r[3], r[4]
            if q not in counts:
                continue
            c_ready, c_leased, c_delayed, c_total, c_exhausted, unstable = counts[q]
            self.check(2)
            got = (ready, leased, delayed, total)
            want = (c_ready, c_leased, c_delayed, c_total)
            if any(g is None or abs(g - w) > unstable for g, w in zip(got, want)):
                self.fail('metrics() gauges differ from broker.messages',
                          'queue %s: metrics ready/leased/delayed/total %s, rows %s (%d changing state)'
                          % (q, got, want, unstable),
                          "SELECT * FROM broker.metrics('%s');" % q)
            if None not in got and abs(total - (ready + leased + delayed) - c_exhausted) > unstable:
                self.fail('metrics(): ready + leased + delayed + exhausted != total',
                          'queue %s: %s, exhausted %d' % (q, got, c_exhausted),
                          "SELECT * FROM broker.metrics('%s');" % q)

    def drain(self, q):
        """A fresh session draining the queue with dequeue(q, 10000) gets
        every message that was ready, and none deleted or not due; then
        rolls back, so the queue is as it was."""
        with connect(self.args, autocommit=False) as conn:
            conn.execute('SET search_path = pg_catalog')
            conn.execute("SET statement_timeout = '120s'")
            t0 = conn.execute('SELECT clock_timestamp()').fetchone()[0]
            ready = {r[0] for r in conn.execute("""
                SELECT m.id FROM broker.messages m JOIN broker.queue_defs q USING (queue_id)
                 WHERE q.name = %(q)s AND m.vt <= %(t)s
                   AND (m.expires_at IS NULL OR m.expires_at > %(t)s)
                   AND (q.max_deliveries IS NULL OR m.delivery_count < q.max_deliveries)""",
                {'q': q, 't': t0})}
            got = []
            started = time.time()
            try:
                while True:
                    rows = conn.execute('SELECT id FROM broker.dequeue(%s, 10000)', (q,)).fetchall()
                    if not rows:
                        break
                    got += [r[0] for r in rows]
            except psycopg.Error as e:
                conn.rollback()
                if e.sqlstate in ('42704',):        # dropped meanwhile by nobody: paused
                    pass
                self.fail('draining a queue failed', '%s: %s %s' % (q, e.sqlstate, clip(e, 200)),
                          "SELECT id FROM broker.dequeue('%s', 10000);" % q)
                return
            t2 = conn.execute('SELECT clock_timestamp()').fetchone()[0]
            gotset = set(got)
            missing = ready - gotset
            if missing:
                # those that expired meanwhile do not count
                still = {r[0] for r in conn.execute(
                    "SELECT id FROM broker.messages WHERE id = ANY(%s)"
                    " AND (expires_at IS NULL OR expires_at > %s)", (list(missing), t2))}
                missing &= still
            extra = gotset - ready
            notdue = set()
            if extra:
                notdue = {r[0] for r in conn.execute(
                    "SELECT id FROM broker.messages WHERE id = ANY(%s) AND vt > %s",
                    (list(extra), t2))}
            conn.rollback()
        self.check(3)
        if len(gotset) != len(got):
            self.fail('a drain returned a message twice', '%s: %d rows, %d ids' % (q, len(got), len(gotset)))
        if missing:
            self.fail('ready message not deliverable',
                      'queue %s: %d of %d ready messages not returned by a drain, e.g. %s'
                      % (q, len(missing), len(ready), sorted(missing)[:5]),
                      "SELECT id FROM broker.dequeue('%s', 10000);" % q)
        if notdue:
            self.fail('dequeue delivered a message not due (leased or delayed)',
                      'queue %s: ids %s' % (q, sorted(notdue)[:5]),
                      "SELECT id FROM broker.dequeue('%s', 10000);" % q)
        with self.st.lock:
            deleted = [i for i in got if i in self.st.deleted and self.st.deleted[i] < started]
        if deleted:
            self.fail('dequeue returned a deleted message',
                      'queue %s: drain returned deleted ids %s' % (q, deleted[:5]),
                      "SELECT id FROM broker.dequeue('%s', 10000);" % q)

    def final(self, log_offsets):
        """The attacker's table is empty, the canary table still exists, and
        the server log has no crash, PANIC, TRAP or XX000."""
        with connect(self.args) as conn:
            conn.execute('SET search_path = pg_catalog')
            rows = conn.execute('SELECT what, cur, sess, count(*) FROM evil.calls'
                                ' GROUP BY 1, 2, 3 ORDER BY 1').fetchall()
            self.check()
            for what, cur, sess, n in rows:
                self.fail('attacker code ran inside the extension (search_path)',
                          '%s ran %d times as current_user=%s session_user=%s' % (what, n, cur, sess),
                          'SELECT * FROM evil.calls;')
            self.check()
            if conn.execute("SELECT to_regclass('public.x')").fetchone()[0] is None:
                self.fail('canary table public.x was dropped (SQL injection)', '', '')
        pats = [('server crash', re.compile(r'terminated by signal|server process .* was terminated')),
                ('PANIC in the server log', re.compile(r'\bPANIC\b')),
                ('assertion failure (TRAP) in the server log', re.compile(r'\bTRAP\b')),
                ('XX000 in the server log', re.compile(r'\bXX000\b')),
                ('attacker code ran (server log)', re.compile(r'EVIL_TRAP'))]
        for path, offset in log_offsets.items():
            self.check()
            self.scan_log(path, offset, pats)

    def scan_log(self, path, offset, pats):
        """Report the lines of a log, from offset on, that match a pattern."""
        crashed = None
        with open(path, 'rb') as f:
            f.seek(offset)
            for raw in f:
                line = raw.decode('utf-8', 'replace').rstrip()
                if crashed and 'Failed process was running:' in line:
                    # the statement of the process that crashed
                    self.fail('server crash', clip(crashed, 200),
                              clip(line.split('Failed process was running:', 1)[1].strip(), 800))
                    crashed = None
                    continue
                crashed = None
                for cls, pat in pats:
                    if pat.search(line):
                        if cls == 'server crash' and 'terminated by signal' in line:
                            crashed = line
                        else:
                            self.fail(cls, clip(line, 300), '(server log)')


def main():
    ap = argparse.ArgumentParser(description='Hostile-input generator for broker.')
    ap.add_argument('--seconds', type=float, default=60)
    ap.add_argument('--sessions', type=int, default=4)
    ap.add_argument('--seed', default=None)
    ap.add_argument('--dsn', default='', help='libpq connection string (default: environment)')
    ap.add_argument('--server-log', action='append', default=[],
                    help='server log file to scan at the end (may be repeated)')
    ap.add_argument('--standby-dsn', default=None,
                    help='a hot standby of the server: one more session calls it')
    ap.add_argument('--check-interval', type=float, default=None,
                    help='seconds between invariant checks (default: seconds/6, 5 to 30)')
    ap.add_argument('--verbose', action='store_true', help='print each failure as it happens')
    args = ap.parse_args()
    if args.seed is None:
        args.seed = str(random.randrange(10**9))
    interval = args.check_interval or max(5.0, min(30.0, args.seconds / 6))
    print('hostile: seed %s, %d sessions, %g s' % (args.seed, args.sessions, args.seconds), flush=True)

    st = State(args)
    log_offsets = {p: os.path.getsize(p) for p in args.server_log}
    with connect(args) as conn:
        setup(conn, args)
        fns, missing = introspect(conn, st)
    if missing:
        print('table entries for functions not in this installation (skipped): %s'
              % ', '.join(missing))

    pause = Pause(args.sessions)
    deadline = time.time() + args.seconds
    workers = [Worker(i, st, pause, fns, deadline, args) for i in range(args.sessions)]
    if args.standby_dsn:
        workers.append(Worker(args.sessions, st, pause, fns, deadline, args, args.standby_dsn))
    for w in workers:
        w.start()
    checker = Checker(st, args)
    next_check = time.time() + interval
    while time.time() < deadline:
        time.sleep(min(0.5, max(0, deadline - time.time())))
        if time.time() >= next_check and time.time() < deadline - 1:
            quiet = pause.pause(timeout=180)
            try:
                if quiet:
                    checker.run()
                else:
                    busy = [w for w in workers if w.is_alive() and w.current]
                    st.fail('sessions did not reach a quiescent point in 180 s', '',
                            ' | '.join(w.current.repro for w in busy)[:2000])
            except psycopg.Error as e:
                st.fail('invariant check failed to run', '%s %s' % (e.sqlstate, clip(e, 300)),
                        clip(traceback.format_exc(), 800))
            finally:
                pause.resume()
            next_check = time.time() + interval
    for w in workers:
        w.join(timeout=300)
    try:
        checker.run()
        checker.final(log_offsets)
    except psycopg.Error as e:
        st.fail('final check failed to run', '%s %s' % (e.sqlstate, clip(e, 300)), '')
    report(st, checker)
    return 1 if st.failures else 0


def report(st, checker):
    """Print the summary: calls, errors, checks, failures with reproductions."""
    total = sum(st.calls.values())
    print('\ncalls per function:')
    for sig, n in sorted(st.calls.items()):
        errs = ', '.join('%s %d' % (s, k) for (f, s), k in sorted(st.fn_errors.items()) if f == sig)
        print('  %-70s %7d%s' % (sig, n, ('   errors: ' + errs) if errs else ''))
    print('errors per SQLSTATE: ' + (', '.join('%s %d' % kv for kv in sorted(st.errors.items())) or 'none'))
    if st.collateral:
        print('sessions ended by another session\'s crash: ' +
              ', '.join('%s %d' % kv for kv in sorted(st.collateral.items())))
    print('invariant rounds: %d, checks run: %d' % (checker.rounds, st.checks))
    if st.uncovered:
        print('broker functions without a table entry: ' + ', '.join(st.uncovered))
    nfail = sum(f[0] for f in st.failures.values())
    if st.failures:
        print('\nFAILURES (%d classes, %d occurrences):' % (len(st.failures), nfail))
        for cls, (n, detail, repro) in sorted(st.failures.items()):
            print('- %s  [%d]' % (cls, n))
            if detail:
                print('    %s' % clip(detail, 400))
            if repro:
                print('    repro: %s' % clip(repro, 800))
    print('\nhostile: %d calls, %d checks, %d failures' % (total, st.checks, nfail))


if __name__ == '__main__':
    sys.exit(main())
