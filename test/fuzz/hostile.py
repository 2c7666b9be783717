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

# Roles granted queue privileges at set-up (and again at every quiescent
# point, since a drop takes a queue's grants with it).  Calls are made as
# these roles too; whether a call may run is decided from broker.grant_defs
# as the call's transaction sees it (the generated grant and revoke calls
# change it), read before and after the call (a change in between: not
# judged).  fz_member has fz_grp's privileges, fz_noinh (NOINHERIT) not.
MODEL_GRANTS = [
    ('fz_a', 'fz_prod', 'produce'), ('fz_r', 'fz_prod', 'produce'), ('fz_g', 'fz_prod', 'produce'),
    ('fz_a', 'fz_cons', 'consume'), ('fz_r', 'fz_cons', 'consume'), ('fz_c', 'fz_cons', 'consume'),
    ('fz_d', 'fz_adm', 'admin'), ('fz_t0', 'fz_adm', 'admin'), ('fz_dlq', 'fz_adm', 'produce'),
    ('*', 'fz_grp', 'consume'), ('fz_e', 'fz_grp', 'produce'),
]
MODEL_ROLES = ['fz_prod', 'fz_cons', 'fz_adm', 'fz_member', 'fz_noinh']
SCRATCH_ROLES = ['fz_s0', 'fz_s1']
# EXECUTE on the functions PUBLIC may not execute, granted at set-up
EXEC_GRANTS = {('fz_adm', 'broker.create_queue')}
# What each function needs on its queue argument (see docs/api.md,
# Privileges); 'see': any privilege (metrics, waiters); 'owner': none
# but the owner's (reap and maintain_segments of every queue).
NEEDS = {
    'broker.enqueue': 'produce', 'broker.enqueue_batch': 'produce', 'broker.publish': 'produce',
    'broker.dequeue': 'consume', 'broker.delete': 'consume', 'broker.release': 'consume',
    'broker.extend_lease': 'consume', 'broker.complete': 'consume', 'broker.fail': 'consume',
    'broker.status': 'consume', 'broker.archive': 'consume',
    'broker.drop_queue': 'admin', 'broker.purge_queue': 'admin', 'broker.subscribe': 'admin',
    'broker.unsubscribe': 'admin', 'broker."grant"': 'admin', 'broker.revoke': 'admin',
    'broker.reap': 'admin', 'broker.metrics': 'see', 'broker.waiters': 'see',
    'broker.create_queue': 'produce',       # on its dead_letter_queue
}
PRIV_SETS = {'produce': ['produce', 'admin'], 'consume': ['consume', 'admin'], 'admin': ['admin'],
             'see': ['produce', 'consume', 'admin']}
RECORD_STATES = {'done', 'failed', 'dead_lettered', 'deleted', 'expired'}
LIVE_STATES = {'ready', 'delayed', 'leased', 'expired'}

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
    ('fz_g', {'dedup_window': '1 second'}),
    ('fz_r', {'retention': '1 hour', 'lease': '1 second', 'max_lease': '3 seconds'}),
    ('fz_j', {'retention': '10 minutes', 'max_deliveries': 2, 'dead_letter_queue': 'fz_dlq',
              'lease': '200 ms'}),
]
CHURN_QUEUES = ['fz_t0', 'fz_t1', 'fz_t2', 'fz_t3']

# Topic subscriptions made at set-up (fz_c's limit of 64 bytes makes most
# copies too large, so only 'tiny.' topics reach it).
MAIN_SUBSCRIPTIONS = [
    ('fz_a', 'orders.#'), ('fz_a', '#.eu'), ('fz_b', 'orders.*.created'), ('fz_c', 'tiny.#'),
    ('fz_d', '#'), ('fz_e', 'orders.eu'), ('fz_g', '*.*'), ('fz_g', 'a.#.#.b'), ('f' * 48, '*'),
]
TOPIC_WORDS = ['orders', 'eu', 'us', 'created', 'a', 'b', 'tiny', 'x-y', '0', '_']
MAX_TOPIC = 255         # bytes of a topic or pattern, of a group or dedup key
MAX_KEY = 255

# Topics that must be refused with 22023 (valid ones are generated).
BAD_TOPICS = [
    '', '#', '*', '*.*', 'orders.#', 'orders.*', 'a..b', '.a', 'a.', '.', '..', 'A', 'Orders',
    'a b', ' a', 'a ', 'a\n', 'a\tb', 'é', 'orders.é', '日本', '😀', 'ａ', 'a\u200b',
    "o'; DROP TABLE x; --", 'a/b', 'a,b', '$1', '%s', 'a' * 256, '.'.join(['a'] * 128) + 'a',
    '.'.join(['a'] * 129), 'x' * 10 * 1024 * 1024,
]
# Topics at the limits that must be accepted.
EDGE_TOPICS = ['a' * 255, '.'.join(['a'] * 128), '.'.join(['orders'] * 35) + '.eu.x',
               '-', '_', '0', 'a.b', 'tiny.' + 'x' * 250]
# Patterns: at the limits (valid) and malformed (22023).
EDGE_PATTERNS = [
    '#', '*', '*.*', '#.#', 'a.#.#.b', '#.a.#', '*.#', '#.*', '.'.join(['#'] * 128),
    '.'.join(['*'] * 128), '#.a.' * 63 + '#', 'a' * 255, '.'.join(['a'] * 128),
    '.'.join(['*', '#'] * 64), '-', '_.-.0',
]
BAD_PATTERNS = [
    '', 'a..b', '.a', 'a.', '.', 'A', '#a', 'a#', '**', '##', '*a', 'a.*#', '# ', ' #', 'é',
    'orders.é', '日本.#', '😀', 'a b', "a'b", 'a%', 'a\\', 'a' * 256, '.'.join(['a'] * 128) + 'a',
    '.'.join(['#'] * 200), '.'.join(['*'] * 200), 'x' * 10 * 1024 * 1024, 'a.\n', '\u202ea',
]
# Group and dedup keys: 1 to 255 bytes (the multibyte ones count bytes).
KEY_EDGES = ['k', 'k' * 255, 'é' * 127, '😀' * 63, ' ', '"', '\\', "k'; DROP TABLE x; --",
             '{}', 'NULL', 'a,b', '日本', 'ı']
BAD_KEYS = ['', 'k' * 256, 'é' * 128, '😀' * 64, 'k' * 100000]
PRIORITY_EXTREMES = [-1, 10, 100, INT_MAX, INT_MIN, 2**31, -2**31 - 1]
VALID_WORD = re.compile(r'[a-z0-9_-]+')

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
    # short in all, but its parts step out of the timestamp range one by one
    '-71582788 months 2147483647 days', '-2000 years 731000 days',
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


def utf8_len(s):
    return len(s.encode('utf-8', 'surrogatepass'))


def valid_key(k):
    """A group or dedup key the contract accepts (NULL aside)."""
    return 1 <= utf8_len(k) <= MAX_KEY


def valid_topic(t):
    """A topic: 1-255 bytes of words of [a-z0-9_-] separated by '.'."""
    return 1 <= utf8_len(t) <= MAX_TOPIC and all(VALID_WORD.fullmatch(w) for w in t.split('.'))


def valid_pattern(p):
    """A pattern: as a topic, and a word may also be '*' or '#'."""
    return 1 <= utf8_len(p) <= MAX_TOPIC and \
        all(w in ('*', '#') or VALID_WORD.fullmatch(w) for w in p.split('.'))


def topic_matches(pattern, topic):
    """AMQP topic matching: '*' is exactly one word, '#' zero or more."""
    p, t = pattern.split('.'), topic.split('.')
    memo = {}

    def m(i, j):
        if (i, j) in memo:
            return memo[(i, j)]
        if i == len(p):
            r = j == len(t)
        elif p[i] == '#':
            r = m(i + 1, j) or (j < len(t) and m(i, j + 1))
        elif j == len(t):
            r = False
        else:
            r = (p[i] == '*' or p[i] == t[j]) and m(i + 1, j + 1)
        memo[(i, j)] = r
        return r
    return m(0, 0)


def topic_for(rng, pattern):
    """A topic that the pattern matches (None when it would be too long)."""
    words = []
    for w in pattern.split('.'):
        if w == '*':
            words.append(rng.choice(TOPIC_WORDS))
        elif w == '#':
            words += [rng.choice(TOPIC_WORDS) for _ in range(rng.choice([0, 0, 1, 2]))]
        else:
            words.append(w)
    if not words:
        words = [rng.choice(TOPIC_WORDS)]
    t = '.'.join(words)
    return t if utf8_len(t) <= MAX_TOPIC else None


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
    c.pending['n'] = 0
    if r < 0.06:
        return V([], n=0)
    c.pending['n'] = 4
    if r < 0.10:
        c.pending['payload_2d'] = True
        return V([[small_json(c), small_json(c)], [small_json(c), small_json(c)]], n=4)
    if r < 0.95:
        n = c.rng.choice([1, 1, 2, 3, 5, 10, 50, 200, 1000, 1025, 2000, 5000])
        elems = [small_json(c) for _ in range(min(n, 200))]
        elems = [elems[i % len(elems)] for i in range(n)]
        if c.rng.random() < 0.05:
            elems[c.rng.randrange(n)] = NULL
        if c.rng.random() < 0.05:
            elems[c.rng.randrange(n)] = json.dumps({'data': 'x' * 5000})
        c.pending['n'] = n
        return V(elems, n=n)
    n = c.rng.choice([10000, 20000, 100000, 100000, 1000000])
    c.pending['n'] = n
    c.pending['payload_expr'] = True
    return E("ARRAY(SELECT pg_catalog.jsonb_build_object('i', g)"
             " FROM pg_catalog.generate_series(1, %d) g)" % n, n=n, huge=n > 10000)


def g_group_key(c):
    """A group key: NULL mostly, a few shared ones (so groups form), and
    keys around 255 bytes, multibyte, empty or huge."""
    r = c.rng.random()
    if r < 0.55:
        return V(NULL)
    if r < 0.9:
        return V('g%d' % c.rng.randrange(6))
    return key_extreme(c)


def g_dedup_key(c):
    """A dedup key: NULL mostly, keys shared by every session (so keys
    repeat within and across transactions), fresh ones, and odd ones."""
    r = c.rng.random()
    if r < 0.5:
        return V(NULL)
    if r < 0.8:
        return V('d%d' % c.rng.randrange(30))
    if r < 0.9:
        return V('u%d' % c.rng.randrange(10**9))
    return key_extreme(c)


def key_extreme(c):
    """A key at or beyond the limits, marked invalid when it is."""
    k = c.rng.choice(KEY_EDGES + BAD_KEYS)
    return V(k, invalid=not valid_key(k), extreme=not valid_key(k))


def g_priority(c):
    """A priority: 0 to 9 mostly, NULL (meaning 0), and out of range."""
    r = c.rng.random()
    if r < 0.05:
        return V(NULL)
    if r < 0.9:
        return V(c.rng.choice([0, 0, 0, 1, 5, 9]))
    p = c.rng.choice(PRIORITY_EXTREMES)
    return V(p, invalid=True, extreme=True)


def batch_keys(c, one):
    """group_keys or dedup_keys of a batch, for the payloads generated just
    before (c.pending['n']): NULL mostly, else one key per payload with
    NULL elements; or of the wrong length, two-dimensional, with an empty
    or oversized element (these are marked invalid)."""
    n = c.pending.get('n')
    if c.pending.get('payload_expr') or c.rng.random() < 0.5:
        if c.pending.get('payload_expr') and one is g_group_key and n <= 100000 and \
                c.rng.random() < 0.3:
            return E("ARRAY(SELECT 'g' OPERATOR(pg_catalog.||) pg_catalog.mod(g, %d)::pg_catalog.text"
                     " FROM pg_catalog.generate_series(1, %d) g)" % (c.rng.choice([1, 7, 1000]), n))
        return V(NULL)
    if n is None:
        n = c.rng.choice([0, 1, 3])
    r = c.rng.random()
    if r < 0.8:
        pool = ([None] * 3 + ['g%d' % i for i in range(6)]) if one is g_group_key else \
            ([None] * 3 + ['d%d' % i for i in range(30)] + ['u%d' % c.rng.randrange(10**9)])
        keys = [c.rng.choice(pool) for _ in range(min(n, 200))]
        keys = [keys[i % len(keys)] for i in range(n)] if keys else []
        if keys and c.rng.random() < 0.1:
            k = c.rng.choice(KEY_EDGES + BAD_KEYS)
            keys[c.rng.randrange(n)] = k
        bad = [k for k in keys if k is not None and not valid_key(k)]
        return V(keys, invalid=bool(bad), extreme=bool(bad),
                 ambiguous=c.pending.get('payload_2d', False))
    if r < 0.9:
        m = n + c.rng.choice([-1, 1, 5]) if n > 0 else c.rng.choice([1, 5])
        return V(['g%d' % (i % 3) for i in range(m)], invalid=True)
    return V([['g0', 'g1'], ['g2', None]], invalid=True)


def g_group_keys(c):
    return batch_keys(c, g_group_key)


def g_dedup_keys(c):
    return batch_keys(c, g_dedup_key)


def g_topic(c):
    """A topic: words of the subscriptions' vocabulary mostly (so patterns
    match), at the limits, malformed, NULL."""
    r = c.rng.random()
    if r < 0.03:
        return V(NULL)
    if r < 0.82:
        t = '.'.join(c.rng.choice(TOPIC_WORDS) for _ in range(c.rng.choice([1, 2, 2, 3, 3, 4, 6])))
    elif r < 0.9:
        t = c.rng.choice(EDGE_TOPICS)
    else:
        t = c.rng.choice(BAD_TOPICS)
    return V(t, invalid=not valid_topic(t), extreme=len(t) > 255)


def g_pattern(c):
    """A subscription pattern: valid ones from the topic vocabulary with
    wildcards, ones at the limits, malformed ones, NULL."""
    r = c.rng.random()
    if r < 0.03:
        return V(NULL)
    if r < 0.6:
        p = '.'.join(c.rng.choice(TOPIC_WORDS[:6] + ['*', '#'])
                     for _ in range(c.rng.choice([1, 1, 2, 2, 3, 4])))
    elif r < 0.75:
        p = c.rng.choice(EDGE_PATTERNS)
    else:
        p = c.rng.choice(BAD_PATTERNS)
    return V(p, invalid=not valid_pattern(p), extreme=len(p) > 255)


def g_pub_payload(c):
    """A publish payload: small JSON mostly (so that copies are made), else
    as for enqueue."""
    return V(small_json(c)) if c.rng.random() < 0.6 else g_payload(c)


def g_pub_headers(c):
    """Headers of a publish: must be a JSON object (or NULL); arrays and
    scalars are refused; some already carry a "topic" to be overwritten."""
    r = c.rng.random()
    if r < 0.4:
        return V(NULL)
    if r < 0.7:
        return V(small_json(c))
    if r < 0.82:
        return V(json.dumps({'topic': c.rng.choice(['spoof', 1, None, ['a'], {'t': 1}]), 'h': 1}))
    if r < 0.9:
        return V(c.rng.choice(['[]', '[1, 2]', '["topic"]', '1', '"s"', 'null', 'true', '"{}"',
                               '[{"topic": "x"}]']), invalid=True)
    k = c.rng.choice([100, 5000, 1048576])
    return V(json.dumps({'h': 'y' * k}), size=16 + k)


def g_dedup_window(c):
    """create_queue's dedup_window: positive, or 0, negative, 10001 years."""
    r = c.rng.random()
    if r < 0.05:
        return V(NULL)
    if r < 0.75:
        return V(c.rng.choice(['5 minutes', '1 second', '200 ms', '1 hour', '1 day']))
    return V(c.rng.choice(['0', '-1 second', '-1 microsecond', '10001 years', '10000 years',
                           '1 mon -30 days'] + INTERVAL_EXTREMES), extreme=True)


def g_retention(c):
    """create_queue's retention: NULL mostly (no records), short and long
    ones, and 0, negative, beyond 10000 years."""
    r = c.rng.random()
    if r < 0.5:
        return V(NULL)
    if r < 0.85:
        return V(c.rng.choice(['1 second', '1 minute', '1 hour', '7 days']))
    return V(c.rng.choice(['0', '-1 second', '10001 years', '10000 years'] + INTERVAL_EXTREMES),
             extreme=True)


def g_max_lease(c):
    """create_queue's max_lease: shorter and longer than the lease given,
    NULL (22004), and the extremes."""
    r = c.rng.random()
    if r < 0.05:
        return V(NULL)
    if r < 0.8:
        return V(c.rng.choice(['100 ms', '1 second', '5 seconds', '1 minute', '12 hours']))
    return V(c.rng.choice(['0', '-1 second', '10001 years', '10000 years'] + INTERVAL_EXTREMES),
             extreme=True)


def g_result(c):
    """complete's result or fail's error: NULL, small JSON, around the
    queues' size limits, deep, and rarely tens of megabytes."""
    r = c.rng.random()
    if r < 0.25:
        return V(NULL)
    if r < 0.8:
        return V(small_json(c))
    if r < 0.95:
        m = c.rng.choice([64, 4096, 1048576])
        k = max(0, m - 16 + c.rng.choice([-1, 0, 1]))
        return V(json.dumps({'data': 'x' * k}), size=16 + k)
    if r < 0.99:
        d = c.rng.choice([100, 1000, 100000])
        return V('[' * d + ']' * d, depth=d)
    return E("pg_catalog.jsonb_build_object('big', pg_catalog.repeat('r', %d))" % (20 << 20),
             huge=True)


def g_msg_queue(c):
    """The queue of a recent message (its id then follows) mostly, else
    any queue argument."""
    m = known_message(c)
    if m and c.rng.random() < 0.7:
        c.pending['msg'] = m
        c.pending['same_queue'] = True
        return V(m[0], queue=True)
    return g_queue(c)


def g_msg_id(c):
    """The id of the message picked with its queue, else as g_id."""
    m = c.pending.get('msg') if c.pending.get('same_queue') else None
    if m and c.rng.random() < 0.9:
        return V(m[1])
    return g_id(c)


def g_after_id(c):
    r = c.rng.random()
    if r < 0.05:
        return V(NULL)
    if r < 0.5:
        return V(0)
    m = known_message(c)
    if r < 0.85 and m:
        return V(max(0, m[1] - c.rng.choice([1, 10, 1000])))
    return V(c.rng.choice(BIG_EXTREMES), extreme=True)


def g_max_rows(c):
    r = c.rng.random()
    if r < 0.05:
        return V(NULL)
    if r < 0.8:
        return V(c.rng.choice([1, 2, 10, 100, 10000]))
    return V(c.rng.choice([0, -1, 10001, INT_MAX, INT_MIN]), extreme=True)


def g_grant_queue(c):
    """grant/revoke's queue: a queue, '*' (every queue), or odd names."""
    r = c.rng.random()
    if r < 0.2:
        return V('*')
    if r < 0.25:
        return V(c.rng.choice(['**', ' *', "*'", '%']))
    return g_queue(c)


def g_role(c):
    """grant/revoke's role: the scratch and model roles, public, and names
    no role has (PUBLIC in upper case is looked up as a role)."""
    r = c.rng.random()
    if r < 0.45:
        return V(c.rng.choice(SCRATCH_ROLES))
    if r < 0.7:
        return V(c.rng.choice(MODEL_ROLES + ['fz_grp']))
    if r < 0.75:
        return V('public')
    if r < 0.8:
        return V(NULL)
    return V(c.rng.choice(['PUBLIC', 'Public', 'fz_nosuchrole', '', 'x' * 100, "r'; DROP TABLE x; --",
                           'fz_s0 ', 'é' * 40, 'pg_read_all_stats', EVIL]))


def g_privilege(c):
    r = c.rng.random()
    if r < 0.85:
        return V(c.rng.choice(['produce', 'consume', 'admin']))
    if r < 0.9:
        return V(NULL)
    return V(c.rng.choice(['read', 'ADMIN', 'Produce', '', 'admin ', 'all', 'x' * 10000, 'produce\\0']),
             invalid=True)


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

def flat(v):
    """A list argument's elements in storage order (a 2-D array flattened)."""
    out = []
    for e in v:
        if isinstance(e, list):
            out.extend(e)
        else:
            out.append(e)
    return out


def keys_of(call, idx, n):
    """The keys (group or dedup) of each message of an enqueue call, a list
    of n str or None; None when not known here (an SQL expression)."""
    if idx >= len(call.vals):
        return [None] * (n or 0)
    v = call.vals[idx]
    if v.expr is not None:
        return None
    if call.fn.name != 'broker.enqueue_batch':
        return [v.value]
    if v.value is None:
        return [None] * (n or 0)
    keys = flat(v.value)
    return keys if len(keys) == n else None


def arg_value(call, name):
    """The value of a named argument of the call (None: NULL or omitted)."""
    for i, (aname, _, _) in enumerate(call.fn.args):
        if aname == name:
            return call.vals[i].value
    return None


def expected_priority(call):
    p = arg_value(call, 'priority')
    return 0 if p is None else p


def dedup_hit_check(w, call, queue_id, pairs):
    """pairs: (dedup key, id) an enqueue returned without storing: the
    queue must have accepted that id with that key (broker.dedup_*), and if
    the message is still stored it is in that queue."""
    if not pairs:
        return
    seen = {}
    with w.st.lock:
        known = {i: w.st.id_queue.get(i) for _, i in pairs}
    for _, i in pairs:
        w.check()
        if known[i] is not None and known[i] != queue_id:
            w.fail('a dedup hit returned the id of a message of another queue', call,
                   'id %d was enqueued into queue id %d, the call is for queue id %d'
                   % (i, known[i], queue_id))
    if call.iso:        # an older snapshot may not see the key the call found
        return
    for k, i in w.conn.execute(
            "SELECT d.dedup_key, d.id FROM (SELECT queue_id, dedup_key, id FROM broker.dedup_0"
            " UNION ALL SELECT queue_id, dedup_key, id FROM broker.dedup_1) d"
            " WHERE d.queue_id = %s AND d.dedup_key = ANY(%s::text[])",
            (queue_id, sorted({k for k, _ in pairs}))):
        seen.setdefault(k, set()).add(i)
    w.check()
    bad = [(k, i) for k, i in pairs if i not in seen.get(k, ())]
    if bad:
        w.fail('a dedup hit returned an id the queue never accepted with that key', call,
               'key %r -> id %d; the queue remembers %r for it'
               % (clip(bad[0][0], 40), bad[0][1], sorted(seen.get(bad[0][0], ()))))
    ids = sorted({i for _, i in pairs})
    other = w.conn.execute("SELECT id FROM broker.messages WHERE queue_id = ANY(ARRAY[%s, -%s])"
                           " AND id = ANY(%s)", (queue_id, queue_id, ids)).fetchall()
    gone = set(ids) - {r[0] for r in other}
    if gone:
        # not in this queue any more: then in no queue (ids are never reused)
        other = w.conn.execute(
            "SELECT id, queue_id FROM broker.messages WHERE queue_id = ANY(ARRAY(SELECT"
            " unnest(ARRAY[d.queue_id, -d.queue_id]) FROM broker.queue_defs d)) AND id = ANY(%s)",
            (sorted(gone),)).fetchall()
        w.check()
        if other:
            w.fail('a dedup hit returned the id of a message of another queue', call,
                   'id %d is stored with queue_id %d, the call is for queue id %d'
                   % (other[0][0], other[0][1], queue_id))


def dedup_expect(w, call, queue_id, key, window):
    """The id an enqueue of this key must return: the one this transaction
    or a committed one stored with it, when surely still within the
    queue's window (both times taken before the calls); else None."""
    rec = w.txn_dedup.get((queue_id, key))
    if rec is None:
        with w.st.lock:
            rec = w.st.dedup.get((queue_id, key))
    if rec is None or window is None:
        return None
    i, t = rec
    return i if call.ended + 0.3 < t + window else None


def post_enqueue(w, call, rows):
    """One id per payload; the ids stored are exactly the rows this call
    stored (waiting ones of ordered groups included), each payload under
    its own id, in array order, with its group key and priority; an id not
    stored is a dedup hit: the key's earlier message in this queue, the
    same for every repeat of a key, and the one remembered while its
    window lasts."""
    ids = [r[0] for r in rows]
    is_batch = call.fn.name == 'broker.enqueue_batch'
    # the queue as the call saw it (it holds the queue's lock until commit)
    row = w.conn.execute("SELECT q.queue_id, q.max_message_size,"
                         " pg_catalog.date_part('epoch', q.dedup_window)"
                         " FROM broker.queue_defs q WHERE q.name = %s", (call.queue,)).fetchone()
    if row is None:
        if not call.iso:    # a snapshot older than the queue may not see it
            w.fail('%s succeeded for a queue that does not exist' % call.fn.name, call,
                   repr(call.queue))
        return
    call.queue_id, call.max_size, window = row
    qid = call.queue_id
    if not is_batch:
        if len(ids) != 1 or ids[0] is None or ids[0] <= 0:
            w.fail('enqueue returned a bad id', call, 'returned %r' % ids[:5])
            return
    n = call.vals[1].meta.get('n') if is_batch else 1
    w.check()
    if n is not None and len(ids) != n:
        w.fail('%s returned the wrong number of ids' % call.fn.name, call,
               '%d payloads, %d ids' % (n, len(ids)))
        return
    n = len(ids)
    dk = keys_of(call, 6, n)
    gk = keys_of(call, 5, n)
    stored_rows = {r[0]: r for r in w.stored_rows(qid, call.seq_before)}
    stored = set(stored_rows)
    # repeated ids: only for repeats of one dedup key
    pos = {}
    for i, x in enumerate(ids):
        pos.setdefault(x, []).append(i)
    w.check()
    dups = [x for x, ps in pos.items() if len(ps) > 1 and
            (dk is None or None in {dk[i] for i in ps} or len({dk[i] for i in ps}) > 1)]
    if dups:
        w.fail('%s returned duplicate ids' % call.fn.name, call,
               '%d ids, %d distinct, e.g. %d at elements %s (dedup keys %s)'
               % (len(ids), len(pos), dups[0], [i + 1 for i in pos[dups[0]]][:5],
                  [clip(dk[i], 20) for i in pos[dups[0]]][:5] if dk else '?'))
    if dk is not None:
        bykey = {}
        for i, k in enumerate(dk):
            if k is not None:
                bykey.setdefault(k, set()).add(ids[i])
        w.check()
        split = [k for k, s in bykey.items() if len(s) > 1]
        if split:
            w.fail('one dedup key got several ids in one call', call,
                   'key %r -> %s' % (clip(split[0], 40), sorted(bykey[split[0]])[:5]))
    w.check()
    extra = sorted(stored - set(ids))
    hits = [(i, x) for i, x in enumerate(ids) if x not in stored]
    unexplained = [x for i, x in hits if dk is None or dk[i] is None]
    if extra or unexplained:
        w.fail('%s returned ids other than those stored' % call.fn.name, call,
               '%d returned, %d stored; returned not stored (without a dedup key) %r;'
               ' stored not returned %r' % (len(ids), len(stored), unexplained[:5], extra[:5]))
    if dk is not None:
        # hits outside this call's own first occurrences
        dedup_hit_check(w, call, qid, [(dk[i], x) for i, x in hits if dk[i] is not None])
        for i, k in enumerate(dk):
            if k is None:
                continue
            want = dedup_expect(w, call, qid, k, window)
            w.check()
            if want is not None and ids[i] != want:
                w.fail('a dedup key within its window was enqueued again', call,
                       'key %r: returned %d, the queue accepted it with id %d%s'
                       % (clip(k, 40), ids[i], want,
                          ' in this transaction' if (qid, k) in w.txn_dedup else ''))
                break
    # ids of the messages stored, in array order (first occurrences)
    first = []
    for i, x in enumerate(ids):
        if x in stored and pos[x][0] == i:
            first.append(i)
    firsts = [ids[i] for i in first]
    w.check()
    if firsts != sorted(firsts):
        w.fail('%s ids not increasing in array order' % call.fn.name, call, 'first ids %r' % firsts[:5])
    # group key and priority as given
    prio = expected_priority(call)
    if gk is not None and isinstance(prio, int):
        bad = [(i, stored_rows[ids[i]]) for i in first
               if stored_rows[ids[i]][1] != gk[i] or stored_rows[ids[i]][2] != prio]
        w.check()
        if bad:
            i, r = bad[0]
            w.fail('%s stored another group key or priority' % call.fn.name, call,
                   'element %d: stored group %r priority %r, given %r, %r'
                   % (i + 1, clip(r[1], 40), r[2], clip(gk[i], 40), prio))
    # payloads stored under the id returned for them, in array order
    payloads = None
    if is_batch and isinstance(call.vals[1].value, list) and first and \
            len(ids) <= 200 and all(not isinstance(e, list) for e in call.vals[1].value):
        payloads = [call.vals[1].value[i] for i in first]
    elif not is_batch and first and call.vals[1].value is not None and \
            len(call.vals[1].value) < 100000:
        payloads = [call.vals[1].value]
    if payloads is not None and not extra:
        bad = w.q1("SELECT count(*) FROM ROWS FROM (unnest(%s::int8[]), unnest(%s::jsonb[])) u(i, p)"
                   " WHERE NOT EXISTS (SELECT 1 FROM broker.messages m"
                   " WHERE m.queue_id = ANY(ARRAY[%s, -%s])"
                   " AND m.id = u.i AND m.payload = u.p)", (firsts, payloads, qid, qid))
        w.check()
        if bad:
            w.fail('%s stored a payload under another id' % call.fn.name, call,
                   '%d of %d payloads not under the id returned for them' % (bad, len(firsts)))
    # message size: payload and headers together within max_message_size
    if stored and len(stored) <= 1000:
        row = w.conn.execute(
            "SELECT max(pg_column_size(m.payload::text::jsonb) - 4),"
            "       max(coalesce(pg_column_size(m.headers::text::jsonb) - 4, 0)),"
            "       max(pg_column_size(m.payload::text::jsonb) - 4 +"
            "           coalesce(pg_column_size(m.headers::text::jsonb) - 4, 0))"
            "  FROM broker.messages m WHERE m.queue_id = ANY(ARRAY[%s, -%s]) AND m.id = ANY(%s)",
            (qid, qid, sorted(stored))).fetchone()
        w.check()
        if row[0] is not None and row[0] > call.max_size:
            w.fail('payload larger than max_message_size accepted', call,
                   'payload %d bytes, queue accepts %d' % (row[0], call.max_size))
        elif row[2] is not None and row[2] > call.max_size:
            w.fail('headers not counted against max_message_size', call,
                   'payload %d + headers %d bytes stored, queue accepts %d'
                   % (row[0], row[1], call.max_size))
    status_after_enqueue(w, call, qid, firsts[:100])
    note_stored(w, call, qid, [(ids[i], dk[i] if dk else None) for i in first])
    with w.st.lock:
        w.st.stats['dedup hits'] += len([1 for i, _ in hits if dk and dk[i] is not None])
        w.st.stats['grouped messages stored'] += len([1 for r in stored_rows.values() if r[1]])
        w.st.stats['waiting behind a head'] += len([1 for r in stored_rows.values() if r[3] < 0])
        w.st.stats['priority > 0 stored'] += len([1 for r in stored_rows.values() if r[2]])


def status_after_enqueue(w, call, qid, ids):
    """status of the messages a call just stored, in its transaction: each
    one, with delivery_count 0, ready, or delayed while its delay runs, or
    expired once its ttl has passed (a margin of 0.3 s around both)."""
    if not ids or call.iso or not isinstance(call.queue, str):
        return
    rows = w.conn.execute(
        "SELECT m.id, s.state, s.delivery_count, m.vt - t.now, m.expires_at - t.now, m.queue_id < 0"
        " FROM (SELECT pg_catalog.clock_timestamp() AS now) t,"
        " broker.messages m LEFT JOIN broker.status(%s, %s::int8[]) s ON s.id = m.id"
        " WHERE m.queue_id = ANY(ARRAY[%s, -%s]) AND m.id = ANY(%s)",
        (call.queue, ids, qid, qid, ids)).fetchall()
    w.check()
    margin = datetime.timedelta(milliseconds=300)
    for mid, state, dc, to_vt, to_exp, waiting in rows:
        if state is None:
            w.fail('status does not know a message just enqueued', call, 'id %d' % mid)
            return
        ok = set()
        if to_exp is not None and to_exp < margin:
            ok.add('expired')
        if to_exp is None or to_exp > -margin:
            if to_vt < margin or waiting:       # behind its group's head: ready
                ok.add('ready')
            if to_vt > -margin:
                ok.add('delayed')
        if state not in ok or dc != 0:
            w.fail('status of a message just enqueued is not ready or delayed as its delay says',
                   call, 'id %d: %s, delivery_count %s; delay left %s, ttl left %s'
                   % (mid, state, dc, to_vt, to_exp))
            return
    with w.st.lock:
        w.st.stats['status checked after enqueue'] += len(rows)


def stored_sql(per_queue):
    """The rows this transaction inserted (or updated) with an id above
    %(b)s, of queue %(q)s (its waiting group members included) or of any."""
    cond = ' AND queue_id = ANY(ARRAY[%(q)s, -%(q)s])' if per_queue else \
        (' AND queue_id = ANY(ARRAY(SELECT unnest(ARRAY[d.queue_id, -d.queue_id])'
         ' FROM broker.queue_defs d))')
    return ' UNION ALL '.join(
        'SELECT * FROM broker.messages_%d WHERE id > %%(b)s%s'
        ' AND xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id())' % (s, cond)
        for s in range(4))


def note_stored(w, call, qid, stored):
    """Remember (at commit) messages a call stored: (id, dedup key)."""
    for i, k in stored[:200]:
        call.effects.append(('enqueued', call_queue_name(call, qid), i))
    for i, k in stored[:5000]:
        call.effects.append(('idq', qid, i))
        if k is not None:
            w.txn_dedup[(qid, k)] = (i, call.started)
            call.effects.append(('dedup', qid, k, i, call.started))


def call_queue_name(call, qid):
    return call.queue if call.queue is not None else call.copies_names.get(qid)


def post_publish(w, call, rows):
    """publish returns how many copies it stored, one per queue at most;
    each carries headers->>'topic' = topic over the given headers, the
    payload, group key and priority given; a queue this transaction
    subscribed to a matching pattern got one (without a dedup key); no
    queue got a copy while it remembers the dedup key."""
    topic = call.vals[0].value
    ret = rows[0][0] if rows else None
    headers = arg_value(call, 'headers')
    payload = call.vals[1]
    copies = w.conn.execute(
        "SELECT m.queue_id, m.id, m.headers->>'topic', m.payload = %(p)s::jsonb,"
        " (m.headers - 'topic') = (coalesce(%(h)s::jsonb, '{}') - 'topic'),"
        " m.group_key, m.priority, q.name,"
        " pg_catalog.date_part('epoch', q.dedup_window)"
        " FROM (" + stored_sql(False) + ") m"
        " LEFT JOIN broker.queue_defs q ON q.queue_id = abs(m.queue_id)",
        {'b': call.seq_before, 'p': payload.value if payload.expr is None else None,
         'h': headers if isinstance(headers, str) else None}).fetchall()
    w.check(2)
    if not isinstance(ret, int) or ret < 0 or ret != len(copies):
        w.fail('publish returned a count other than the copies it stored', call,
               'returned %r, stored %d' % (ret, len(copies)))
    qids = [abs(r[0]) for r in copies]
    if len(set(qids)) != len(qids):
        w.fail('publish stored two copies in one queue', call,
               'queue ids %s' % sorted(Counter(qids).items())[:5])
    call.copies_names = {abs(r[0]): r[7] for r in copies}
    gkey = arg_value(call, 'group_key')
    dkey = arg_value(call, 'dedup_key')
    prio = expected_priority(call)
    for qid, mid, t, peq, heq, g, p, name, window in copies:
        w.check()
        if t != topic:
            w.fail("a published copy lacks headers->>'topic' = topic", call,
                   'id %d in queue %s has topic %r' % (mid, name, clip(t, 60)))
        elif name is None and not call.iso:
            w.fail('publish stored a copy in a queue that does not exist', call,
                   'id %d, queue id %d' % (mid, qid))
        elif payload.expr is None and payload.value is not None and peq is False:
            w.fail('a published copy has another payload', call, 'id %d in queue %s' % (mid, name))
        elif heq is False:
            w.fail('a published copy has other headers than given (topic aside)', call,
                   'id %d in queue %s' % (mid, name))
        elif g != gkey or (isinstance(prio, int) and p != prio):
            w.fail('a published copy has another group key or priority', call,
                   'id %d in queue %s: group %r priority %r' % (mid, name, clip(g, 40), p))
        if qid < 0 and gkey is None:
            w.fail('a published copy without group waits behind a group', call,
                   'id %d, queue_id %d' % (mid, qid))
        if dkey is not None:
            want = dedup_expect(w, call, abs(qid), dkey, window)
            if want is not None:
                w.fail('publish stored a copy in a queue that remembers its dedup key', call,
                       'queue %s: key %r was accepted with id %d, copy stored as %d'
                       % (name, clip(dkey, 40), want, mid))
    got = set(qids)
    if dkey is None and valid_topic(topic):
        for q, pattern in sorted(w.txn_subs):
            if topic_matches(pattern, topic):
                qid = w.q1("SELECT queue_id FROM broker.queue_defs WHERE name = %s", (q,))
                w.check()
                if qid is not None and qid not in got:
                    w.fail('publish missed a queue subscribed in the same transaction', call,
                           'queue %s subscribed to %r in this transaction; topic %r; copies in %s'
                           % (q, pattern, clip(topic, 60), sorted(call.copies_names.values())))
                    break
    for qid, mid, *_ in copies:
        note_stored(w, call, abs(qid), [(mid, dkey)])
    with w.st.lock:
        w.st.stats['published copies'] += len(copies)
        w.st.stats['publishes reaching no queue'] += not copies


def post_subscribe(w, call, rows):
    """True: the subscription is there now (and the queue matches its
    pattern in this transaction's publishes)."""
    if not rows or rows[0][0] is not True:
        return
    with w.st.lock:
        w.st.stats['subscriptions added'] += 1
    q, pattern = call.vals[0].value, call.vals[1].value
    w.check()
    if not w.q1("SELECT count(*) FROM broker.subscriptions WHERE queue = %s AND pattern = %s",
                (q, pattern)):
        w.fail('subscribe returned true, but broker.subscriptions lacks it', call, '')
    w.txn_subs.add((q, pattern))


def post_unsubscribe(w, call, rows):
    """True: the subscription is gone; false: there was none, so not one
    this transaction made."""
    q, pattern = call.vals[0].value, call.vals[1].value
    w.check()
    if rows and rows[0][0] is True:
        if w.q1("SELECT count(*) FROM broker.subscriptions WHERE queue = %s AND pattern = %s",
                (q, pattern)):
            w.fail('unsubscribe returned true, but broker.subscriptions still lists it', call, '')
    elif (q, pattern) in w.txn_subs:
        w.fail('unsubscribe returned false for a subscription this transaction made', call, '')
    w.txn_subs.discard((q, pattern))


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
    if ids:
        check_groups_delivered(w, call, ids)


def check_groups_delivered(w, call, ids):
    """Ordered groups: at most one message per group in one dequeue, only
    a group's head, and never while another message of the group is under
    a valid lease."""
    qid = w.q1("SELECT queue_id FROM broker.queue_defs WHERE name = %s", (call.queue,))
    if qid is None:
        return
    rows = w.conn.execute(
        "SELECT m.id, m.group_key, m.queue_id FROM broker.messages m"
        " WHERE m.queue_id = ANY(ARRAY[%s, -%s]) AND m.id = ANY(%s) AND m.group_key IS NOT NULL",
        (qid, qid, ids)).fetchall()
    w.check()
    groups = Counter(r[1] for r in rows)
    two = [g for g, k in groups.items() if k > 1]
    if two:
        w.fail('dequeue returned two messages of one group', call,
               'group %r: ids %s' % (clip(two[0], 40), sorted(r[0] for r in rows if r[1] == two[0])))
    waiting = [r[0] for r in rows if r[2] < 0]
    if waiting:
        w.fail("dequeue returned a message waiting behind its group's head", call,
               'ids %s' % waiting[:5])
    for mid, g, _ in rows[:20]:
        other = w.conn.execute(
            "SELECT m.id, m.vt FROM broker.messages m WHERE m.queue_id = ANY(ARRAY[%s, -%s])"
            " AND m.group_key = %s AND m.id <> %s AND m.receipt IS NOT NULL"
            " AND m.vt > pg_catalog.clock_timestamp() + interval '50 ms'",
            (qid, qid, g, mid)).fetchall()
        w.check()
        if other:
            w.fail('a group has two messages under lease', call,
                   'delivered id %d of group %r while id %d is leased until %s'
                   % (mid, clip(g, 40), other[0][0], other[0][1]))
            break


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
        w.txn_subs = {(q, p) for q, p in w.txn_subs if q != call.queue}


def post_create(w, call, rows):
    """A queue this call created (created_at is this transaction's start)
    has the settings given (or their defaults); a creator that is not a
    superuser is its admin (broker.grants)."""
    if call.iso or not isinstance(call.queue, str) or arg_value(call, 'if_not_exists'):
        return
    given = {}
    for i, (aname, _, _) in enumerate(call.fn.args):
        v = call.vals[i]
        given[aname] = None if v.meta.get('omitted') else v.value
    defaults = {'lease': '30 seconds', 'max_message_size': 4096, 'dedup_window': '5 minutes',
                'max_lease': '12 hours'}
    for k, d in defaults.items():
        if given.get(k) is None:
            given[k] = d
    row = w.conn.execute(
        "SELECT q.created_at = pg_catalog.now(), q.lease = %(lease)s::interval,"
        " q.max_message_size = %(max_message_size)s::int4,"
        " q.default_ttl IS NOT DISTINCT FROM %(default_ttl)s::interval,"
        " q.max_deliveries IS NOT DISTINCT FROM %(max_deliveries)s::int4,"
        " q.dedup_window = %(dedup_window)s::interval,"
        " q.retention IS NOT DISTINCT FROM %(retention)s::interval,"
        " q.max_lease = %(max_lease)s::interval"
        " FROM broker.queue_defs q WHERE q.name = %(queue)s",
        dict(given, queue=call.queue)).fetchone()
    if row is None or not row[0]:
        return          # existed already (if_not_exists)
    w.check(2)
    names = ['lease', 'max_message_size', 'default_ttl', 'max_deliveries', 'dedup_window',
             'retention', 'max_lease']
    bad = [n for n, ok in zip(names, row[1:8]) if ok is not True]
    if bad:
        w.fail('create_queue stored another %s than given' % bad[0], call,
               'given %r' % clip(given.get(bad[0]), 60))
    if call.role is not None:
        got = w.q1("SELECT count(*) FROM broker.grants WHERE queue = %s AND role = %s::name"
                   " AND privilege = 'admin'", (call.queue, call.role))
        if got != 1:
            w.fail('a queue created by a role that is not a superuser lacks its admin grant', call,
                   'broker.grants has %d admin rows of %s for it' % (got, call.role))


def job_rows_check(w, call, rows, qname, asked):
    """Rows of broker.job (status or archive): states known, finished_at
    and result as docs/api.md says for each state, a record only on a
    queue with a retention, never a live row of a message a committed
    delete removed before the call, never a message of another queue.
    Returns the queue's (queue_id, retention in s) or None."""
    q = w.conn.execute("SELECT queue_id, pg_catalog.date_part('epoch', retention),"
                       " created_at < %s FROM broker.queue_defs WHERE name = %s",
                       (datetime.datetime.fromtimestamp(call.started, datetime.timezone.utc),
                        qname)).fetchone()
    w.check()
    for r in rows:
        mid, state, dc, enq, vis, fin, result = r[0], r[1], r[2], r[3], r[4], r[5], r[8]
        if state not in RECORD_STATES | LIVE_STATES:
            w.fail('%s returned an unknown state' % call.fn.name, call, 'id %s state %r' % (mid, state))
            continue
        if asked is not None and mid not in asked:
            w.fail('%s returned an id not asked for' % call.fn.name, call, 'id %s' % mid)
        if dc is None or dc < 0 or enq is None or vis is None:
            w.fail('%s returned a malformed job' % call.fn.name, call, repr(r[:6]))
        if (fin is None) != (state in ('ready', 'delayed', 'leased')):
            w.fail('%s: finished_at %s for state %s' % (call.fn.name, 'NULL' if fin is None else 'set',
                                                         state), call, 'id %s' % mid)
        if result is not None and state not in ('done', 'failed', 'dead_lettered'):
            w.fail('%s: a result for state %s' % (call.fn.name, state), call, 'id %s' % mid)
        if state in RECORD_STATES - {'expired'} and q is not None and q[1] is None and q[2]:
            w.fail('%s returned a record of a queue without a retention' % call.fn.name, call,
                   'id %s state %s' % (mid, state))
        with w.st.lock:
            d = w.st.deleted.get(mid)
            home = w.st.id_queue.get(mid)
        if state in ('ready', 'delayed', 'leased') and d is not None and d < call.started:
            w.fail('%s shows a message a committed delete removed as live' % call.fn.name, call,
                   'id %d is %s, deleted %.3f s before the call' % (mid, state, call.started - d))
        if q is not None and home is not None and home != q[0] and q[2]:
            w.fail('%s returned a job of another queue' % call.fn.name, call,
                   'id %d was enqueued into queue id %d, the call is for %d' % (mid, home, q[0]))
    return q


def post_status(w, call, rows):
    """status: one row at most for one id, the id asked; for ids[], one
    row per id at most, in id order; see job_rows_check."""
    w.check()
    v = call.vals[1].value
    # an expression (ARRAY(...)) has its type whatever the mode: the ids form
    many = call.fn.args[1][0] == 'ids' and (
        call.mode not in ('untyped', 'prepared') or call.vals[1].expr is not None)
    if call.vals[1].expr is not None:
        asked = None
    elif isinstance(v, list):
        asked = {as_id(x) for x in flat(v)} - {None}
    else:
        asked = {as_id(v)} - {None}
    ids = [r[0] for r in rows]
    if not many and len(rows) > 1:
        w.fail('status of one id returned %d rows' % len(rows), call, repr(ids[:5]))
    if ids != sorted(set(ids)):
        w.fail('status(ids[]) rows not one per id in id order', call, repr(ids[:10]))
    if isinstance(call.queue, str):
        q = job_rows_check(w, call, rows, call.queue, asked)
        # never delivered (delivery_count 0, so never released either):
        # visible_at is its delivery time (enqueued_at + delay) while that
        # is still ahead, and its enqueue time once it has come (the
        # contract: "the delay's end while delayed, ... its enqueue time
        # otherwise")
        fresh = [(r[0], r[3], r[4]) for r in rows if r[2] == 0 and r[1] in ('ready', 'delayed')]
        if q is not None and fresh and not call.iso:
            vts = dict(w.conn.execute(
                "SELECT id, vt FROM broker.messages WHERE queue_id = ANY(ARRAY[%s, -%s])"
                " AND id = ANY(%s) AND delivery_count = 0 AND receipt IS NULL",
                (q[0], q[0], [i for i, _, _ in fresh])).fetchall())
            w.check()
            due_by = datetime.datetime.fromtimestamp(call.ended, datetime.timezone.utc)
            bad = [(i, v, vts[i]) for i, e, v in fresh
                   if i in vts and v != vts[i] and not (v == e and vts[i] <= due_by)]
            if bad:
                w.fail('status: visible_at of a message never delivered is neither its delivery time'
                       ' (still ahead) nor its enqueue time (once due)', call,
                       'id %d: visible_at %s, delivery time %s' % bad[0])
        with w.st.lock:
            for r in rows:
                w.st.stats['status rows %s' % r[1]] += 1


def post_archive(w, call, rows):
    """archive: records only, ids above after_id in increasing order, at
    most max_rows, none older than the queue's retention, none from a
    queue without one."""
    w.check()
    after = arg_value(call, 'after_id')
    mx = arg_value(call, 'max_rows')
    after = 0 if call.vals[1].meta.get('omitted') else after
    mx = 100 if call.vals[2].meta.get('omitted') else mx
    ids = [r[0] for r in rows]
    if ids != sorted(set(ids)):
        w.fail('archive rows not in increasing id order', call, repr(ids[:10]))
    if isinstance(after, int) and any(i <= after for i in ids):
        w.fail('archive returned an id not above after_id', call, repr([i for i in ids if i <= after][:5]))
    if isinstance(mx, int) and len(ids) > mx:
        w.fail('archive returned more than max_rows', call, '%d > %d' % (len(ids), mx))
    live = [r for r in rows if r[1] not in RECORD_STATES]
    if live:
        w.fail('archive returned a live message', call, 'id %s state %s' % (live[0][0], live[0][1]))
    if not isinstance(call.queue, str):
        return
    q = job_rows_check(w, call, rows, call.queue, None)
    if q is None or not q[2]:
        return
    if q[1] is None and rows:
        w.fail('archive returned rows for a queue without a retention', call, '%d rows' % len(rows))
    elif q[1] is not None:
        limit = datetime.datetime.fromtimestamp(call.started - q[1] - 1, datetime.timezone.utc)
        old = [r for r in rows if r[5] is not None and r[5] < limit]
        if old:
            w.fail('archive returned a record older than the retention', call,
                   'id %s finished %s, retention %s s' % (old[0][0], old[0][5], q[1]))


def post_finish(w, call, rows):
    """complete and fail: true records the id as removed at commit; on a
    queue with a retention, status then shows its record in this
    transaction: done with the result (complete), failed with the error
    (fail without a dead-letter queue), or dead_lettered with the error and
    headers->>'dead_letter_id' the id of a copy in the dead-letter queue
    with the same payload; on a queue without one, status knows it no
    more."""
    if not rows or rows[0][0] is not True:
        return
    mid = as_id(call.vals[1].value)
    if mid is None or not isinstance(call.queue, str):
        return
    call.effects.append(('delete', call.queue, mid))
    w.txn_released.add(mid)
    with w.st.lock:
        w.st.stats['jobs ended by %s' % call.fn.name.split('.')[1]] += 1
    if call.iso:
        return
    q = w.conn.execute("SELECT queue_id, retention IS NOT NULL, dead_letter_id"
                       " FROM broker.queue_defs WHERE name = %s", (call.queue,)).fetchone()
    if q is None:
        return
    res = call.vals[3]
    job = w.conn.execute(
        "SELECT j.id, j.state, j.result IS NOT DISTINCT FROM %s::jsonb,"
        " (j.headers->>'dead_letter_id')::int8, j.finished_at, j.payload::text"
        " FROM broker.status(%s, %s::int8) j",
        (res.value if res.expr is None and not res.meta.get('omitted') else None, call.queue,
         mid)).fetchall()
    w.check()
    what = 'complete' if call.fn.name == 'broker.complete' else 'fail'
    if not q[1]:
        if job:
            w.fail('status knows a job %s removed from a queue without a retention' % what, call,
                   'id %d shows %s' % (mid, job[0][1]))
        return
    if len(job) != 1:
        w.fail('%s removed a job of a queue with a retention, but status has no record' % what,
               call, 'status(%r, %d) returned %d rows' % (call.queue, mid, len(job)))
        return
    _, state, same, dlid, fin, payload = job[0]
    want = 'done' if what == 'complete' else 'dead_lettered' if q[2] is not None else 'failed'
    if state != want:
        w.fail('after %s, status says %s (not %s)' % (what, state, want), call, 'id %d' % mid)
    elif res.expr is None and same is not True:
        w.fail('after %s, the record has another result than given' % what, call, 'id %d' % mid)
    elif fin is None:
        w.fail('after %s, the record has no finished_at' % what, call, 'id %d' % mid)
    if state == 'dead_lettered':
        w.check()
        copy = None if dlid is None else w.conn.execute(
            "SELECT payload::text FROM broker.messages WHERE queue_id = ANY(ARRAY[%s, -%s])"
            " AND id = %s", (q[2], q[2], dlid)).fetchone()
        if copy is None:
            w.fail('a dead_lettered record names no copy in the dead-letter queue', call,
                   'id %d, dead_letter_id %r' % (mid, dlid))
        elif w.q1('SELECT %s::jsonb = %s::jsonb', (copy[0], payload)) is not True:
            w.fail('the dead-letter copy of a failed job has another payload', call,
                   'id %d -> %d' % (mid, dlid))


def post_grant(w, call, rows):
    """grant: the grant is listed in broker.grants now; revoke true: it is
    not (nobody else can add it back before this transaction ends)."""
    if not rows or rows[0][0] not in (True, False):
        w.fail('%s returned %r' % (call.fn.name, rows[0][0] if rows else None), call, '')
        return
    q, role, priv = (call.vals[i].value for i in range(3))
    if not all(isinstance(x, str) for x in (q, role, priv)):
        return
    grant = call.fn.name == 'broker."grant"'
    if not grant and rows[0][0] is not True:
        return
    n = w.q1("SELECT count(*) FROM broker.grant_defs g WHERE g.queue_id = coalesce("
             " (SELECT d.queue_id FROM broker.queue_defs d WHERE d.name = %s AND %s <> '*'), 0)"
             " AND g.grantee = %s::name AND g.privilege = %s", (q, q, role, priv))
    w.check()
    if grant and n != 1:
        w.fail('grant succeeded, but broker.grant_defs lacks it', call, '%d rows' % n)
    elif not grant and n != 0:
        w.fail('revoke returned true, but the grant is still there', call, '%d rows' % n)


# Whether the role %(role)s has one of the privileges %(p)s on the queue
# of the given id, by the grants of that queue or of '*', to the role, to a
# role whose privileges it has, or to public (admin includes the others).
HAS_PRIV_SQL = (
    "EXISTS (SELECT 1 FROM broker.grant_defs g LEFT JOIN pg_catalog.pg_roles r"
    " ON r.rolname = g.grantee WHERE g.queue_id = ANY(ARRAY[0, %s])"
    " AND g.privilege = ANY(%%(p)s::text[]) AND (g.grantee = 'public'"
    " OR pg_catalog.pg_has_role(%%(role)s::name, r.oid, 'USAGE')))")
QUEUE_NAME = re.compile(r'[a-z_][a-z0-9_]{0,47}')


# ---------------------------------------------------------------------------
# The table: one entry per SQL function of schema broker.

Q_ERRS = {'42602', '42704', '53200'}
# SQLSTATEs (with a message pattern) a function raises only after it has
# checked the caller's privilege on the queue: from a role without it, they
# would reveal something about the queue.
LEASE_TOO_LONG = re.compile(r'lease is longer than queue')
AFTER_PRIV = {
    'broker.enqueue': [('54000', None)], 'broker.enqueue_batch': [('54000', None)],
    'broker.publish': [('54000', None)], 'broker.complete': [('54000', None)],
    'broker.fail': [('54000', None)], 'broker.dequeue': [('22023', LEASE_TOO_LONG)],
    'broker.extend_lease': [('22023', LEASE_TOO_LONG)], 'broker.drop_queue': [('2BP01', None)],
    'broker.create_queue': [('42710', None)],
}
# Functions whose every 22023 comes from an argument the generator marks
# (invalid, extreme or ambiguous): a 22023 for clean arguments is a failure.
STRICT_22023 = {'broker.enqueue', 'broker.enqueue_batch', 'broker.publish', 'broker.subscribe',
                'broker.unsubscribe'}
FUNCTIONS = [
    Fn('broker.create_queue(text,interval,integer,interval,integer,text,boolean,interval,'
       'interval,interval)',
       [('queue', 'text', g_new_queue), ('lease', 'interval', g_lease),
        ('max_message_size', 'integer', g_max_size), ('default_ttl', 'interval', g_ttl),
        ('max_deliveries', 'integer', g_max_deliveries),
        ('dead_letter_queue', 'text', g_dlq), ('if_not_exists', 'boolean', g_bool),
        ('dedup_window', 'interval', g_dedup_window), ('retention', 'interval', g_retention),
        ('max_lease', 'interval', g_max_lease)],
       srf=False, admin=True, weight=2, expect={'42602', '22004', '22023', '42710'},
       post=post_create),
    Fn('broker.drop_queue(text,boolean)',
       [('queue', 'text', g_drop_queue), ('if_exists', 'boolean', g_bool)],
       srf=False, weight=1.5, expect=Q_ERRS | {'22004', '2BP01'}, post=post_drop),
    Fn('broker.purge_queue(text)', [('queue', 'text', g_drop_queue)],
       srf=False, weight=1, expect=Q_ERRS, post=post_purge),
    Fn('broker.enqueue(text,jsonb,interval,interval,jsonb,text,text,integer)',
       [('queue', 'text', g_queue), ('payload', 'jsonb', g_payload), ('delay', 'interval', g_delay),
        ('ttl', 'interval', g_ttl), ('headers', 'jsonb', g_headers),
        ('group_key', 'text', g_group_key), ('dedup_key', 'text', g_dedup_key),
        ('priority', 'integer', g_priority)],
       srf=False, weight=20, expect=Q_ERRS | {'22004', '22023', '54000'}, post=post_enqueue),
    Fn('broker.enqueue_batch(text,jsonb[],interval,interval,jsonb,text[],text[],integer)',
       [('queue', 'text', g_queue), ('payloads', 'jsonb[]', g_payloads),
        ('delay', 'interval', g_delay), ('ttl', 'interval', g_ttl),
        ('headers', 'jsonb', g_batch_headers), ('group_keys', 'text[]', g_group_keys),
        ('dedup_keys', 'text[]', g_dedup_keys), ('priority', 'integer', g_priority)],
       srf=True, weight=8, expect=Q_ERRS | {'22004', '22023', '54000'}, post=post_enqueue,
       timeout='120s'),
    Fn('broker.subscribe(text,text)',
       [('queue', 'text', g_queue), ('pattern', 'text', g_pattern)],
       srf=False, weight=3, expect=Q_ERRS | {'22004', '22023'}, post=post_subscribe),
    Fn('broker.unsubscribe(text,text)',
       [('queue', 'text', g_queue), ('pattern', 'text', g_pattern)],
       srf=False, weight=2, expect=Q_ERRS | {'22004', '22023'},
       post=post_unsubscribe),
    Fn('broker.publish(text,jsonb,interval,interval,jsonb,text,text,integer)',
       [('topic', 'text', g_topic), ('payload', 'jsonb', g_pub_payload),
        ('delay', 'interval', g_delay),
        ('ttl', 'interval', g_ttl), ('headers', 'jsonb', g_pub_headers),
        ('group_key', 'text', g_group_key), ('dedup_key', 'text', g_dedup_key),
        ('priority', 'integer', g_priority)],
       srf=False, weight=10, expect={'22004', '22023', '54000', '53200'}, post=post_publish),
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
    Fn('broker.complete(text,bigint,bigint,jsonb)',
       [('queue', 'text', g_msg_queue), ('id', 'bigint', g_msg_id),
        ('receipt', 'bigint', g_receipt_opt), ('result', 'jsonb', g_result)],
       srf=False, weight=6, expect=Q_ERRS | {'22004', '54000'}, post=post_finish),
    Fn('broker.fail(text,bigint,bigint,jsonb)',
       [('queue', 'text', g_msg_queue), ('id', 'bigint', g_msg_id),
        ('receipt', 'bigint', g_receipt_opt), ('error', 'jsonb', g_result)],
       srf=False, weight=4, expect=Q_ERRS | {'22004', '54000'}, post=post_finish),
    Fn('broker.status(text,bigint)',
       [('queue', 'text', g_msg_queue), ('id', 'bigint', g_msg_id)],
       srf=True, weight=4, expect=Q_ERRS | {'22004'}, post=post_status),
    Fn('broker.status(text,text)',
       [('queue', 'text', g_msg_queue), ('id', 'text', g_id_text)],
       srf=True, weight=2, expect=Q_ERRS | {'22004', '22P02'}, post=post_status),
    Fn('broker.status(text,bigint[])',
       [('queue', 'text', g_msg_queue), ('ids', 'bigint[]', g_ids)],
       srf=True, weight=2, expect=Q_ERRS | {'22004'}, post=post_status),
    Fn('broker.archive(text,bigint,integer)',
       [('queue', 'text', g_queue), ('after_id', 'bigint', g_after_id),
        ('max_rows', 'integer', g_max_rows)],
       srf=True, weight=2, expect=Q_ERRS | {'22004', '22023'}, post=post_archive),
    Fn('broker."grant"(text,name,text)',
       [('queue', 'text', g_grant_queue), ('role', 'name', g_role),
        ('privilege', 'text', g_privilege)],
       srf=False, weight=2, expect={'22004', '22023', '42602', '42704'}, post=post_grant),
    Fn('broker.revoke(text,name,text)',
       [('queue', 'text', g_grant_queue), ('role', 'name', g_role),
        ('privilege', 'text', g_privilege)],
       srf=False, weight=2, expect={'22004', '22023', '42602', '42704'}, post=post_grant),
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

    def __init__(self, fn, vals, omit, mode, role, evil):
        self.fn = fn
        self.vals = vals
        self.omit = omit            # indexes of defaulted args left out
        self.mode = mode            # typed, named, untyped, prepared
        self.role = role            # None: the superuser; else a role without superuser
        self.priv = None            # what the role may do, read before the call
        self.evil = evil
        self.effects = []
        self.queue = vals[0].value if vals and fn.args[0][0] == 'queue' else None
        self.queue_id = None
        self.seq_before = None
        self.max_size = None
        self.started = None
        self.ended = None
        self.copies_names = {}

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
        if self.role:
            pre.append('SET ROLE %s' % self.role)
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
        self.dedup = {}                         # (queue_id, key) -> (id, time before the enqueue)
        self.stats = Counter()                  # what the routing calls did
        self.id_queue = {}                      # id -> queue_id it was enqueued into

    def queue_pool(self):
        return [q for q, _ in MAIN_QUEUES] + CHURN_QUEUES

    def pick_message(self, rng):
        with self.lock:
            pool = self.deliveries if (rng.random() < 0.7 and self.deliveries) else self.messages
            if not pool:
                return None
            return pool[rng.randrange(len(pool))]

    def fail(self, cls, detail, repro):
        cls, detail, repro = (str(x).replace('\x00', '\\x00') for x in (cls, detail, repro))
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
                elif kind == 'idq':
                    self.id_queue[e[2]] = q
                elif kind == 'dedup':
                    old = self.dedup.get((q, e[2]))
                    if old is None or old[1] < e[4]:
                        self.dedup[(q, e[2])] = (e[3], e[4])
            if len(self.id_queue) > 500000:
                self.id_queue.clear()
            if len(self.dedup) > 200000:
                self.dedup.clear()
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
        self.txn_subs = set()           # (queue, pattern) this transaction subscribed
        self.txn_dedup = {}             # (queue_id, dedup key) -> (id, time) stored in it

    # -- helpers used by the checks
    def fail(self, cls, call, detail):
        self.st.fail(cls, detail, call.repro if call else '')

    def check(self, n=1):
        with self.st.lock:
            self.st.checks += n

    def q1(self, query, params=None):
        return self.conn.execute(query, params).fetchone()[0]

    def stored_rows(self, queue_id, before):
        """(id, group_key, priority) of the messages of a queue (waiting
        ones of its groups included) this transaction inserted above 'before'."""
        return self.conn.execute('SELECT id, group_key, priority, queue_id FROM (%s) m'
                                 % stored_sql(True),
                                 {'q': queue_id, 'b': before}).fetchall()

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
        r = self.rng.random()
        role = NOPRIV if r < 0.1 else self.rng.choice(MODEL_ROLES) if r < 0.25 else None
        evil = self.rng.random() < 0.25
        call = Call(fn, vals, omit, mode, role, evil)
        call.stmts, call.repro = call.build()
        if self.standby_dsn:
            call.repro = '/* on a standby */ ' + call.repro
        return call

    def transaction(self):
        """One transaction of one or a few calls, committed or rolled back."""
        conn = self.conn
        self.txn_leased, self.txn_released = set(), set()
        self.txn_subs, self.txn_dedup = set(), {}
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
        if fn.post in (post_enqueue, post_publish):
            s = conn.execute('SELECT last_value, is_called FROM broker.message_id_seq').fetchone()
            call.seq_before = s[0] if s[1] else s[0] - 1
        mid = as_id(call.vals[1].value) if len(call.vals) > 1 else None
        if fn.name in ('broker.release', 'broker.extend_lease', 'broker.delete', 'broker.complete',
                       'broker.fail') and mid is not None:
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
        if call.role:
            call.priv = self.priv_expectation(call)
        call.started = time.time()
        try:
            for pre in (['SET LOCAL ROLE ' + call.role] if call.role else []) + \
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
            conn.execute('ROLLBACK')
            conn.execute('BEGIN')
            self.error(call, e)
            return False
        except psycopg.Error as e:
            if conn.broken:
                raise psycopg.OperationalError(str(e))
            # rolled back first: the checks of the error read the catalog
            conn.execute('ROLLBACK')
            conn.execute('BEGIN')
            self.error(call, e)
            return False
        # results
        if call.role:
            self.judge_success(call, rows)
        self.check()
        bad = [fn.args[i][0] for i, v in enumerate(call.vals) if v.meta.get('invalid')]
        if bad:
            self.fail('%s accepted an invalid %s' % (fn.name, bad[0]), call,
                      'the contract refuses it with 22023')
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

    # -- queue privileges
    def priv_expectation(self, call):
        """What the call's role may do, from broker.grant_defs as this
        transaction sees it (the server reads grants with the latest
        snapshot): a tuple, read before and after the call and compared."""
        fn, role, conn = call.fn, call.role, self.conn
        if fn.admin and (role, fn.name) not in EXEC_GRANTS:
            return ('noexec',)
        need = NEEDS.get(fn.name)
        if need is None:
            return ('owner',) if fn.admin else ('free',)
        if call.iso:
            return ('unknown',)         # an older snapshot: not judged
        if fn.name == 'broker.publish':
            topic = call.vals[0].value
            if not isinstance(topic, str) or not valid_topic(topic):
                return ('args',)
            rows = conn.execute(
                "SELECT q.queue_id, q.name, array_agg(s.pattern), " + HAS_PRIV_SQL % 'q.queue_id' +
                " FROM broker.subscription_defs s JOIN broker.queue_defs q USING (queue_id)"
                " GROUP BY 1, 2", {'role': role, 'p': PRIV_SETS['produce']}).fetchall()
            denied = tuple(name for qid, name, pats, ok in sorted(rows)
                           if not ok and any(topic_matches(p, topic) for p in pats))
            return ('publish', denied)
        qname = arg_value(call, 'dead_letter_queue' if fn.name == 'broker.create_queue' else 'queue')
        if fn.name == 'broker.create_queue' and qname is None:
            return ('free',)
        if qname is None and need == 'see':
            rows = conn.execute("SELECT q.queue_id, q.name FROM broker.queue_defs q WHERE q.kind = 'q'"
                                " AND " + HAS_PRIV_SQL % 'q.queue_id',
                                {'role': role, 'p': PRIV_SETS['see']}).fetchall()
            return ('see_all', frozenset(rows))
        if qname is None and fn.name == 'broker.reap':
            return ('owner',)
        if not isinstance(qname, str):
            return ('args',)
        if qname == '*' and fn.name in ('broker."grant"', 'broker.revoke'):
            ok = conn.execute('SELECT ' + HAS_PRIV_SQL % '0', {'role': role, 'p': ['admin']}).fetchone()[0]
            return ('star', ok)
        if not QUEUE_NAME.fullmatch(qname):
            return ('args',)
        row = conn.execute('SELECT q.queue_id, ' + HAS_PRIV_SQL % 'q.queue_id' +
                           ' FROM broker.queue_defs q WHERE q.name = %(q)s',
                           {'role': role, 'p': PRIV_SETS[need], 'q': qname}).fetchone()
        if row is None:
            return ('noqueue',)
        return ('queue', qname, need, row[0], row[1])

    def stable_priv(self, call):
        """The expectation read before the call, if it still holds now
        (else None: a grant, revoke or subscription changed meanwhile)."""
        before = call.priv
        if before is None or before[0] in ('unknown',):
            return None
        if before[0] in ('noexec', 'owner', 'free'):
            return before
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            return None
        after = self.priv_expectation(call)
        self.check()
        if after != before:
            with self.st.lock:
                self.st.stats['privilege changes during a call (not judged)'] += 1
            return None
        return before

    def judge_success(self, call, rows):
        """A call by a role without superuser succeeded: it must have had
        the privilege; metrics() and waiters() show only its queues."""
        fn = call.fn
        e = self.stable_priv(call)
        with self.st.lock:
            self.st.stats['calls as a granted or ungranted role'] += 1
        if e is None:
            return
        kind = e[0]
        if kind == 'noexec':
            self.fail('%s ran for a role without EXECUTE' % fn.name, call, 'no 42501')
        elif kind == 'owner':
            self.fail('%s ran for a role that is not the owner' % fn.name, call, 'no 42501')
        elif kind == 'queue' and not e[4]:
            self.fail('%s ran for a role without the %s privilege' % (fn.name, e[2]), call,
                      'role %s, queue %s' % (call.role, e[1]))
        elif kind == 'star' and not e[1]:
            self.fail('%s on every queue (*) ran for a role without admin on *' % fn.name, call,
                      'role %s' % call.role)
        elif kind == 'publish' and e[1]:
            self.fail('publish reached a queue the role may not produce into', call,
                      'role %s, queues without produce %s' % (call.role, list(e[1])))
        elif kind == 'queue' and e[4]:
            with self.st.lock:
                self.st.stats['granted calls that ran'] += 1
        elif kind == 'see_all' and rows is not None:
            names = {r[0] for r in rows}
            self.check()
            mine = {n for _, n in e[1]}
            if names - mine:
                self.fail('%s() showed a queue the role has no privilege on' % fn.name, call,
                          'role %s, shown %s' % (call.role, sorted(names - mine)[:5]))
            elif mine - names and fn.name == 'broker.metrics':
                # dropped meanwhile?  only queues that still exist count
                still = {r[0] for r in self.conn.execute(
                    'SELECT name FROM broker.queue_defs WHERE queue_id = ANY(%s)',
                    ([i for i, n in e[1] if n in mine - names],))}
                if still:
                    self.fail('metrics() left out a queue the role has a privilege on', call,
                              'role %s, missing %s' % (call.role, sorted(still)[:5]))

    def judge_refusal(self, call, msg, detail):
        """42501: from PostgreSQL for a function the role may not execute;
        else the role lacks the privilege the call needs, and the message
        names the queue, the role and the privilege."""
        fn = call.fn
        if not call.role:
            self.fail('%s refused with 42501 for a superuser' % fn.name, call, clip(msg))
            return
        e = self.stable_priv(call)
        with self.st.lock:
            self.st.stats['calls as a granted or ungranted role'] += 1
            self.st.stats['refused with 42501'] += 1
        if e is None:
            return
        kind = e[0]
        self.check()
        if kind == 'noexec':
            if 'permission denied for function' not in msg:
                self.fail('%s: 42501 without EXECUTE, but another message' % fn.name, call, clip(msg))
        elif kind == 'owner':
            if not re.match(r'permission denied to (reap every queue|maintain the message store)', msg):
                self.fail('%s: 42501 for a role that is not the owner, but another message' % fn.name,
                          call, clip(msg))
        elif kind == 'star':
            if e[1]:
                self.fail('%s on * refused for a role with admin on *' % fn.name, call, clip(msg))
            elif not re.match(r'permission denied to (grant|revoke) privileges on every queue', msg):
                self.fail('%s on *: 42501 with another message' % fn.name, call, clip(msg))
        elif kind == 'publish':
            if not e[1]:
                self.fail('publish refused with 42501 for a role with produce on every queue it reaches',
                          call, clip(msg))
            elif msg != 'permission denied for queue "%s"' % e[1][0] or \
                    detail != 'Role "%s" needs the produce privilege on it.' % call.role:
                self.fail('publish refused without naming the first queue (in id order) it may'
                          ' not produce into', call, '%s / %s; expected queue %s'
                          % (clip(msg), clip(detail), e[1][0]))
        elif kind == 'queue':
            if e[4]:
                self.fail('%s refused with 42501 for a role that has the %s privilege' % (fn.name, e[2]),
                          call, 'role %s: %s' % (call.role, clip(msg)))
                return
            want_d = ('Its figures are shown to roles with a privilege on it and to members of'
                      ' pg_read_all_stats.' if e[2] == 'see' else
                      'Role "%s" needs the %s privilege on it.' % (call.role, e[2]))
            if msg != 'permission denied for queue "%s"' % e[1] or detail != want_d:
                self.fail('%s: 42501 does not name the queue, role and privilege' % fn.name, call,
                          '%s / %s; expected queue %s, role %s, %s'
                          % (clip(msg), clip(detail), e[1], call.role, e[2]))
        else:
            # free, args, noqueue, see_all: arguments and the queue come first
            self.fail('%s refused with 42501 where %s' % (
                fn.name, {'free': 'it needs no privilege', 'args': 'an argument is invalid',
                          'noqueue': 'the queue does not exist', 'see_all': 'it lists what the role may see'
                          }.get(kind, kind)), call, clip(msg))

    def judge_other(self, call, state, msg):
        """Another error for a role: not one that comes only after the
        privilege check when the role lacks the privilege, and not an
        argument error from a function PostgreSQL should have refused."""
        fn = call.fn
        e = self.stable_priv(call)
        if e is None:
            return
        if e[0] == 'noexec' and state in fn.expect:
            self.fail('%s checked arguments before privileges' % fn.name, call,
                      '%s %s' % (state, clip(msg)))
            return
        denied = (e[0] == 'queue' and not e[4]) or (e[0] == 'publish' and e[1])
        if denied:
            for st_, pat in AFTER_PRIV.get(fn.name, []):
                if state == st_ and (pat is None or pat.search(msg)):
                    self.fail('%s raised %s before refusing a role without the privilege'
                              % (fn.name, state), call, 'role %s: %s' % (call.role, clip(msg)))

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
            self.judge_refusal(call, msg, detail)
            return
        if call.role:
            self.judge_other(call, state, msg)
        if state == '22023' and fn.name in STRICT_22023 and not any(
                v.meta.get(k) for v in call.vals for k in ('invalid', 'extreme', 'ambiguous')):
            self.fail('%s refused valid arguments with 22023' % fn.name, call, clip(msg, 300))
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
    for role in [NOPRIV, EVIL, 'fz_grp'] + MODEL_ROLES + SCRATCH_ROLES:
        if not x("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            x('CREATE ROLE %s %s' % (role, 'NOLOGIN' if role == 'fz_grp' else 'LOGIN'))
    x('ALTER ROLE fz_noinh NOINHERIT')
    x('GRANT fz_grp TO fz_member, fz_noinh')
    for role, fname in EXEC_GRANTS:
        x('GRANT EXECUTE ON FUNCTION %s TO %s' % (fname, role))
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
    for q, pattern in MAIN_SUBSCRIPTIONS:
        x('SELECT broker.subscribe(%s, %s)', (q, pattern))
    model_grants(conn)


def model_grants(conn):
    """The grants of MODEL_GRANTS (on the queues that exist), and none to
    public or to the role that must have none."""
    x = conn.execute
    for q, role, priv in MODEL_GRANTS:
        if q == '*' or x('SELECT 1 FROM broker.queue_defs WHERE name = %s', (q,)).fetchone():
            x('SELECT broker.grant(%s, %s, %s)', (q, role, priv))
    for q, role, priv in x("SELECT queue, role, privilege FROM broker.grants"
                           " WHERE role = ANY(%s::name[])", (['public', NOPRIV],)).fetchall():
        x('SELECT broker.revoke(%s, %s, %s)', (q, role, priv))


def introspect(conn, st):
    """Match the table against pg_proc: fill in the defaults, report
    functions without an entry and entries whose arguments differ."""
    conn.execute('SET search_path = pg_catalog')
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.pronargdefaults, coalesce(p.proargnames[1:p.pronargs], '{}'),"
        "       p.proretset, has_function_privilege(%s, p.oid, 'EXECUTE')"
        "  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'broker' ORDER BY 1", (NOPRIV,)).fetchall()
    conn.execute('RESET search_path')
    known = {f.sig: f for f in FUNCTIONS}
    present = []
    for sig, ndef, argnames, retset, public_exec in rows:
        sig = sig.replace(', ', ',')
        f = known.get(sig)
        if f is None:
            st.uncovered.append(sig)
            st.fail('broker function without a table entry: %s' % sig,
                    'add one entry to FUNCTIONS in test/fuzz/hostile.py', '')
            continue
        f.ndefaults = ndef
        if list(argnames) != [a[0] for a in f.args] or retset != f.srf or public_exec == f.admin:
            st.fail('table entry out of date: %s' % sig,
                    'pg_proc has arguments %s, set-returning %s, EXECUTE for PUBLIC %s'
                    % (list(argnames), retset, public_exec), '')
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
        self.pconn = None

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
            self.structure(conn)
        queues = self.queues()
        for q, ready, total in queues:
            if ready <= 50000:
                self.drain(q)
        self.publish_probe()
        self.dedup_probe()
        self.jobs_probe()
        self.privilege_probe()
        self.housekeeping(queues)

    def jobs_probe(self):
        """With every session paused, on queues of its own (fz_pj keeps
        records for an hour, has a dead-letter queue and a max_lease of 2
        s; fz_pk keeps records, without one): a job's life as status shows
        it (ready, delayed, leased, done with its result, failed and
        dead_lettered with the error, deleted), status of many ids, archive,
        max_lease refused by dequeue and extend_lease, and a complete rolled
        back."""
        with connect(self.args) as conn:
            conn.execute('SET search_path = pg_catalog')
            x = lambda sql, *a: conn.execute(sql, a or None)
            x("SELECT broker.create_queue('fz_pj_dlq', if_not_exists => true)")
            x("SELECT broker.create_queue('fz_pj', lease => '1 second', retention => '1 hour',"
              " max_lease => '2 seconds', dead_letter_queue => 'fz_pj_dlq', max_deliveries => 5,"
              " if_not_exists => true)")
            x("SELECT broker.create_queue('fz_pk', retention => '1 hour', if_not_exists => true)")
            for q in ('fz_pj', 'fz_pk', 'fz_pj_dlq'):
                x('SELECT broker.purge_queue(%s)', q)
            tag = self.rng.randrange(10**9)
            status = lambda q, i: x('SELECT state, delivery_count, result::text, headers::text,'
                                    ' finished_at, payload::text FROM broker.status(%s, %s::int8)',
                                    q, i).fetchall()
            enq = lambda q, n, **kw: x('SELECT broker.enqueue(%s, %s::jsonb' + ''.join(
                ', %s => %%s' % k for k in kw) + ')', q, json.dumps({'job': tag, 'n': n}),
                *kw.values()).fetchone()[0]
            repro = []

            def want(what, got, expect, cmp=None):
                self.check()
                if not (cmp(got) if cmp else got == expect):
                    self.fail('jobs: ' + what, 'got %r, expected %r' % (clip(got, 200), clip(expect, 200)),
                              ' '.join(repro)[-1500:])
                    return False
                return True

            def refused(what, sql, *a):
                repro.append(sql % tuple(sql_quote(str(v)) for v in a) + ';')
                try:
                    x(sql, *a)
                except psycopg.Error as e:
                    return want(what, (e.sqlstate, bool(LEASE_TOO_LONG.search(str(e)))), ('22023', True))
                return want(what, 'success', '22023 lease is longer than queue')
            i1 = enq('fz_pj', 1)
            repro.append("SELECT broker.enqueue('fz_pj', '{}');")
            r = status('fz_pj', i1)
            if not want('status of a message just enqueued', [(s[0], s[1], s[4]) for s in r],
                        [('ready', 0, None)]):
                return
            want('status returns the payload', json.loads(r[0][5]), {'job': tag, 'n': 1})
            i2 = enq('fz_pj', 2, delay='1 hour')
            want('status of a delayed message', [s[0] for s in status('fz_pj', i2)], ['delayed'])
            refused('dequeue with a lease longer than max_lease',
                    "SELECT * FROM broker.dequeue(%s, 1, lease => '3 seconds')", 'fz_pj')
            repro.append("SELECT * FROM broker.dequeue('fz_pj', 10);")
            got = x("SELECT id, receipt FROM broker.dequeue('fz_pj', 10)").fetchall()
            if not want('dequeue of the probe queue', [g[0] for g in got], [i1]):
                return
            rc = got[0][1]
            want('status of a leased message', [(s[0], s[1]) for s in status('fz_pj', i1)], [('leased', 1)])
            refused('extend_lease beyond max_lease',
                    "SELECT broker.extend_lease(%s, %s, %s, '2.001 seconds')", 'fz_pj', i1, rc)
            want('extend_lease to max_lease', x("SELECT broker.extend_lease('fz_pj', %s, %s, '2 seconds')"
                                                " IS NOT NULL", i1, rc).fetchone()[0], True)
            res = json.dumps({'url': 'x', 'tag': tag})
            repro.append("SELECT broker.complete('fz_pj', %d, %d, '%s');" % (i1, rc, res))
            want('complete returns true', x('SELECT broker.complete(%s, %s, %s, %s::jsonb)', 'fz_pj', i1, rc,
                                            res).fetchone()[0], True)
            r = status('fz_pj', i1)
            if want('status after complete', [(s[0], s[1]) for s in r], [('done', 1)]):
                want('the result of a done job', json.loads(r[0][2]), json.loads(res))
                want('finished_at of a done job', r[0][4] is not None, True)
            want('complete twice', x('SELECT broker.complete(%s, %s, %s)', 'fz_pj', i1, rc).fetchone()[0],
                 False)
            # fail: to the dead-letter queue
            i3 = enq('fz_pj', 3)
            rc3 = x("SELECT receipt FROM broker.dequeue('fz_pj')").fetchone()[0]
            err = json.dumps({'error': 'probe %d' % tag})
            repro.append("SELECT broker.fail('fz_pj', %d, %d, '%s');" % (i3, rc3, err))
            want('fail returns true', x('SELECT broker.fail(%s, %s, %s, %s::jsonb)', 'fz_pj', i3, rc3,
                                        err).fetchone()[0], True)
            r = status('fz_pj', i3)
            dlid = None
            if want('status after fail with a dead-letter queue', [s[0] for s in r], ['dead_lettered']):
                want('the error of a dead_lettered job', json.loads(r[0][2]), json.loads(err))
                dlid = json.loads(r[0][3] or '{}').get('dead_letter_id')
                cp = x("SELECT payload::text FROM broker.messages m JOIN broker.queue_defs q"
                       " ON m.queue_id = q.queue_id WHERE q.name = 'fz_pj_dlq' AND m.id = %s",
                       dlid).fetchall()
                want('the dead-letter copy of a failed job', [json.loads(c[0]) for c in cp],
                     [{'job': tag, 'n': 3}])
            # fail without a dead-letter queue, and delete
            i4 = enq('fz_pk', 4)
            want('fail without a receipt', x('SELECT broker.fail(%s, %s, error => %s::jsonb)', 'fz_pk', i4,
                                             err).fetchone()[0], True)
            want('status after fail', [s[0] for s in status('fz_pk', i4)], ['failed'])
            i5 = enq('fz_pk', 5)
            x('SELECT broker.delete(%s, %s::int8)', 'fz_pk', i5)
            want('status after delete', [s[0] for s in status('fz_pk', i5)], ['deleted'])
            want('status of an id of another queue', status('fz_pk', i1), [])
            ids = [r[0] for r in x('SELECT id, state FROM broker.status(%s, %s::int8[])', 'fz_pj',
                                   [i3, i1, i2, 10**15, None, i1]).fetchall()]
            repro.append("SELECT * FROM broker.status('fz_pj', ARRAY[%d, %d, %d, 1e15, NULL, %d]);"
                         % (i3, i1, i2, i1))
            want('status of many ids', ids, sorted({i1, i2, i3}))
            arch = x("SELECT id, state FROM broker.archive('fz_pj', %s, 10)", i1 - 1).fetchall()
            repro.append("SELECT * FROM broker.archive('fz_pj', %d, 10);" % (i1 - 1))
            want('archive of the probe queue', arch, [(i1, 'done'), (i3, 'dead_lettered')])
            want('archive of a page of one', x("SELECT id FROM broker.archive('fz_pj', %s, 1)",
                                               i1 - 1).fetchall(), [(i1,)])
            # a complete rolled back leaves the job as it was
            i6 = enq('fz_pj', 6)
            conn.execute('BEGIN')
            x('SELECT broker.complete(%s, %s)', 'fz_pj', i6)
            want('status of a job completed in the same transaction', [s[0] for s in status('fz_pj', i6)],
                 ['done'])
            conn.execute('ROLLBACK')
            want('status after a complete rolled back', [s[0] for s in status('fz_pj', i6)], ['ready'])
            x('SELECT broker.delete(%s, %s::int8[])', 'fz_pj', [i2, i6])
            if dlid:
                x('SELECT broker.delete(%s, %s::int8)', 'fz_pj_dlq', dlid)

    def privilege_probe(self):
        """With every session paused, a role of its own (fz_probe) in a
        session kept open throughout: refused with 42501 naming the queue,
        the role and the privilege until granted; a grant committed by
        another session applies at its next call, a revoke too (also
        inside its open transaction); a privilege through a group role
        holds while it is a member; admin allows the others, grants on the
        queue and reap of it, not grants on '*' nor reap of every queue;
        publish is refused naming the first queue (in id order) it reaches
        without produce."""
        role, grp, q = 'fz_probe', 'fz_probe_grp', 'fz_pp'
        with connect(self.args) as su, connect(self.args) as a:
            su.execute('SET search_path = pg_catalog')
            x = lambda sql, *p: su.execute(sql, p or None)
            for r in (role, grp):
                if not x('SELECT 1 FROM pg_roles WHERE rolname = %s', r).fetchone():
                    x('CREATE ROLE %s' % r)
            x('REVOKE %s FROM %s' % (grp, role))
            x("SELECT broker.create_queue(%s, if_not_exists => true)", q)
            model_grants(su)        # nothing granted to public
            for gq, gr, gp in x('SELECT queue, role, privilege FROM broker.grants WHERE role = ANY(%s::name[])',
                                [role, grp]).fetchall():
                x('SELECT broker.revoke(%s, %s, %s)', gq, gr, gp)
            a.execute('SET search_path = pg_catalog')
            a.execute('SET ROLE %s' % role)
            log = []

            def call(sql, *p):
                log.append(sql % tuple(sql_quote(str(v)) for v in p) + ';')
                try:
                    return a.execute(sql, p or None).fetchall()
                except psycopg.Error as e:
                    if a.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                        a.execute('ROLLBACK')
                    return e

            def su_do(sql, *p):
                log.append('-- other session: ' + sql % tuple(sql_quote(str(v)) for v in p) + ';')
                cur = x(sql, *p)
                return cur.fetchall() if cur.description else None

            def refused(what, res, queue, priv, detail=None):
                self.check()
                want = ('42501', 'permission denied for queue "%s"' % queue,
                        detail or 'Role "%s" needs the %s privilege on it.' % (role, priv))
                got = (res.sqlstate, res.diag.message_primary, res.diag.message_detail) \
                    if isinstance(res, psycopg.Error) else ('success', clip(res, 100), '')
                if got != want:
                    self.fail('privileges: ' + what, 'got %r, expected %r' % (got, want), ' '.join(log)[-1500:])

            def allowed(what, res):
                self.check()
                if isinstance(res, psycopg.Error):
                    self.fail('privileges: ' + what, '%s %s' % (res.sqlstate, clip(res, 200)),
                              ' '.join(log)[-1500:])
                    return False
                return True
            enq = "SELECT broker.enqueue(%s, '{\"probe\": 1}')"
            refused('enqueue without a grant', call(enq, q), q, 'produce')
            refused('dequeue without a grant', call('SELECT * FROM broker.dequeue(%s)', q), q, 'consume')
            refused('metrics(queue) without a grant', call('SELECT * FROM broker.metrics(%s)', q), q, None,
                    'Its figures are shown to roles with a privilege on it and to members of'
                    ' pg_read_all_stats.')
            self.check()
            if su_do('SELECT broker.grant(%s, %s, %s)', q, role, 'produce') != [(True,)] or \
                    su_do('SELECT broker.grant(%s, %s, %s)', q, role, 'produce') != [(False,)]:
                self.fail('privileges: grant did not return true, then false', '', ' '.join(log))
            res = call(enq, q)
            if allowed('enqueue after a grant by another session', res):
                mid = res[0][0]
                refused('dequeue with produce only', call('SELECT * FROM broker.dequeue(%s)', q), q, 'consume')
                refused('status with produce only', call('SELECT * FROM broker.status(%s, %s::int8)', q, mid),
                        q, 'consume')
                refused('purge_queue with produce only', call('SELECT broker.purge_queue(%s)', q), q, 'admin')
                res = call('SELECT queue FROM broker.metrics()')
                self.check()
                if allowed('metrics() with a grant', res) and res != [(q,)]:
                    self.fail('privileges: metrics() shows other queues than those granted',
                              'shows %s' % clip(res, 300), ' '.join(log)[-1500:])
                su_do('SELECT broker.grant(%s, %s, %s)', q, role, 'consume')
                a.execute('BEGIN')
                res = call('SELECT id FROM broker.dequeue(%s, 10)', q)
                if allowed('dequeue after a grant of consume', res):
                    self.check()
                    if mid not in [r[0] for r in res]:
                        self.fail('privileges: the granted dequeue did not get the message',
                                  'got %s' % res, ' '.join(log)[-1500:])
                su_do('SELECT broker.revoke(%s, %s, %s)', q, role, 'consume')
                refused('status in an open transaction after a revoke committed',
                        call('SELECT * FROM broker.status(%s, %s::int8)', q, mid), q, 'consume')
                if a.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    a.execute('ROLLBACK')
                su_do("SELECT broker.grant('*', %s, 'consume')", grp)
                refused('dequeue with a grant to a group role it is not a member of',
                        call('SELECT * FROM broker.dequeue(%s)', q), q, 'consume')
                su_do('GRANT %s TO %s' % (grp, role))
                allowed('status through a group role on *', call('SELECT * FROM broker.status(%s, %s::int8)',
                                                                  q, mid))
                su_do('REVOKE %s FROM %s' % (grp, role))
                refused('status after leaving the group role', call('SELECT * FROM broker.status(%s, %s::int8)',
                                                                    q, mid), q, 'consume')
                su_do("SELECT broker.revoke('*', %s, 'consume')", grp)
                su_do('SELECT broker.grant(%s, %s, %s)', q, role, 'admin')
                a.execute('BEGIN')
                allowed('purge_queue with admin', call('SELECT broker.purge_queue(%s)', q))
                allowed('grant on the queue with admin', call("SELECT broker.grant(%s, 'fz_s0', 'consume')", q))
                a.execute('ROLLBACK')
                allowed('reap of the queue with admin', call('SELECT broker.reap(%s)', q))
                res = call("SELECT broker.grant('*', %s, 'consume')", role)
                self.check()
                if not (isinstance(res, psycopg.Error) and res.sqlstate == '42501' and
                        'every queue' in res.diag.message_primary):
                    self.fail("privileges: grant on '*' by an admin of one queue", clip(res, 200),
                              ' '.join(log)[-1500:])
                res = call('SELECT broker.reap()')
                self.check()
                if not (isinstance(res, psycopg.Error) and res.sqlstate == '42501'):
                    self.fail('privileges: reap() of every queue by a queue admin', clip(res, 200),
                              ' '.join(log)[-1500:])
                x('SELECT broker.delete(%s, %s::int8)', q, mid)
            # publish: refused at the first queue (in id order) without produce
            su_do("SELECT broker.subscribe(%s, 'fzprobe.#')", q)
            subs = x('SELECT q.queue_id, q.name, s.pattern FROM broker.subscription_defs s'
                     ' JOIN broker.queue_defs q USING (queue_id) ORDER BY 1').fetchall()
            reached = sorted({(i, n) for i, n, p in subs if topic_matches(p, 'fzprobe.x')})
            mine = {n for n, in x("SELECT queue FROM broker.grants WHERE role = %s AND privilege IN"
                                  " ('produce', 'admin')", role).fetchall()}
            denied = [n for i, n in reached if n not in mine]
            res = call("SELECT broker.publish('fzprobe.x', '{}')")
            if denied:
                refused('publish reaching queues without produce', res, denied[0], 'produce')
            else:
                allowed('publish with produce on every queue reached', res)
            su_do("SELECT broker.unsubscribe(%s, 'fzprobe.#')", q)
            for p in ('produce', 'admin'):
                su_do('SELECT broker.revoke(%s, %s, %s)', q, role, p)
            refused('enqueue after the grants were revoked', call(enq, q), q, 'produce')
            a.execute('RESET ROLE')

    def structure(self, conn):
        """In one snapshot: every message waiting in an ordered group
        (queue_id < 0) has its group's head (queue_id = -that, same key),
        one head per group, the head holding the group's lowest id; no
        message, subscription or dedup key of a queue that does not exist;
        every subscription's pattern valid.  A group whose head was removed
        by a transaction that could not lock it at once is handed on by the
        reaper's next pass (docs/design.md §14): broker.reap() first does
        that now, as nothing else runs at a quiescent point."""
        conn.execute('SELECT broker.reap()')
        conn.execute('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        q = lambda sql: conn.execute(sql).fetchall()
        headless = q("""
            SELECT w.queue_id, w.group_key, count(*), min(w.id) FROM broker.messages w
             WHERE w.queue_id < 0 AND NOT EXISTS (
                   SELECT 1 FROM broker.messages h
                    WHERE h.queue_id = -w.queue_id AND h.group_key = w.group_key)
             GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 5""")
        keyless = q("SELECT id, queue_id FROM broker.messages WHERE queue_id < 0"
                    " AND group_key IS NULL LIMIT 5")
        heads = q("""
            SELECT queue_id, group_key, count(*), array_agg(id ORDER BY id) FROM broker.messages
             WHERE queue_id > 0 AND group_key IS NOT NULL
             GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1, 2 LIMIT 5""")
        order = q("""
            SELECT h.queue_id, h.group_key, h.id, min(w.id) FROM broker.messages h
              JOIN broker.messages w ON w.queue_id = -h.queue_id AND w.group_key = h.group_key
             WHERE h.queue_id > 0 AND h.group_key IS NOT NULL
             GROUP BY 1, 2, 3 HAVING min(w.id) < h.id ORDER BY 1, 2 LIMIT 5""")
        lost = q("""
            SELECT m.queue_id, count(*) FROM broker.messages m
             WHERE NOT EXISTS (SELECT 1 FROM broker.queue_defs d WHERE d.queue_id = abs(m.queue_id))
             GROUP BY 1 ORDER BY 1 LIMIT 5""")
        subs = q("""
            SELECT s.queue_id, s.pattern FROM broker.subscription_defs s
             WHERE NOT EXISTS (SELECT 1 FROM broker.queue_defs d
                                WHERE d.queue_id = s.queue_id AND d.kind = 'q') LIMIT 5""")
        patterns = [r[0] for r in q("SELECT pattern FROM broker.subscription_defs")]
        nview = q("SELECT count(*) FROM broker.subscriptions")[0][0]
        keys = q("""
            SELECT d.queue_id, count(*) FROM (SELECT queue_id FROM broker.dedup_0
                   UNION ALL SELECT queue_id FROM broker.dedup_1) d
             WHERE NOT EXISTS (SELECT 1 FROM broker.queue_defs q WHERE q.queue_id = d.queue_id)
             GROUP BY 1 ORDER BY 1 LIMIT 5""")
        grants = q("""
            SELECT g.queue_id, g.grantee, g.privilege FROM broker.grant_defs g
             WHERE g.queue_id <> 0 AND NOT EXISTS (SELECT 1 FROM broker.queue_defs d
                                                    WHERE d.queue_id = g.queue_id) LIMIT 5""")
        records = q("""
            SELECT r.queue_id, count(*) FROM (SELECT queue_id FROM broker.records_0
                   UNION ALL SELECT queue_id FROM broker.records_1) r
             WHERE NOT EXISTS (SELECT 1 FROM broker.queue_defs q WHERE q.queue_id = r.queue_id)
             GROUP BY 1 ORDER BY 1 LIMIT 5""")
        both = q("""
            SELECT r.queue_id, r.id, r.state FROM (SELECT queue_id, id, state FROM broker.records_0
                   UNION ALL SELECT queue_id, id, state FROM broker.records_1) r
              JOIN broker.messages m ON m.id = r.id AND abs(m.queue_id) = r.queue_id LIMIT 5""")
        twice = q("""
            SELECT queue_id, id, count(*) FROM (SELECT queue_id, id FROM broker.records_0
                   UNION ALL SELECT queue_id, id FROM broker.records_1) r
             GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5""")
        conn.execute('COMMIT')
        self.check(13)
        if grants:
            self.fail('grants of a dropped queue remain', '(queue_id, role, privilege): %s' % grants,
                      'SELECT * FROM broker.grant_defs;')
        if records:
            self.fail('job records of a dropped queue remain', '(queue_id, count): %s' % records, '')
        if both:
            self.fail('a message is both in its queue and recorded as gone',
                      '(queue_id, id, state): %s' % both,
                      'SELECT * FROM broker.status(<queue>, %d);' % both[0][1])
        if twice:
            self.fail('a message has two job records', '(queue_id, id, n): %s' % twice, '')
        if headless:
            self.fail("a message waits in an ordered group that has no head",
                      '(queue_id, group_key, waiting, lowest id): %s' % headless,
                      'SELECT * FROM broker.messages WHERE queue_id = %d AND group_key = %s;'
                      % (headless[0][0], sql_quote(headless[0][1] or '')))
        if keyless:
            self.fail('a message waits (queue_id < 0) without a group key', repr(keyless), '')
        if heads:
            self.fail('an ordered group has two heads',
                      '(queue_id, group_key, heads, ids): %s' % heads,
                      'SELECT * FROM broker.messages WHERE queue_id = %d AND group_key = %s;'
                      % (heads[0][0], sql_quote(heads[0][1])))
        if order:
            self.fail("a group's head is not its lowest id (delivered out of id order)",
                      '(queue_id, group_key, head id, lowest waiting id): %s' % order,
                      'SELECT id, queue_id FROM broker.messages WHERE abs(queue_id) = %d'
                      ' AND group_key = %s ORDER BY id;' % (order[0][0], sql_quote(order[0][1])))
        if lost:
            self.fail('messages of a queue that does not exist', '(queue_id, count): %s' % lost,
                      'SELECT queue_id, id FROM broker.messages WHERE abs(queue_id) = %d;'
                      % abs(lost[0][0]))
        if subs:
            self.fail('a subscription of a queue that does not exist', '(queue_id, pattern): %s'
                      % [(a, clip(b, 40)) for a, b in subs], 'SELECT * FROM broker.subscription_defs;')
        if nview != len(patterns) and not subs:
            self.fail('broker.subscriptions does not list every subscription',
                      'view %d rows, table %d' % (nview, len(patterns)), '')
        bad = [p for p in patterns if not valid_pattern(p)]
        if bad:
            self.fail('an invalid pattern was stored as a subscription', repr(clip(bad[0], 100)), '')
        if keys:
            self.fail('dedup keys of a dropped queue remain', '(queue_id, keys): %s' % keys, '')

    def probe_conn(self):
        """The publish probe's own session, kept across rounds so that its
        compiled subscriptions must follow the other sessions' changes."""
        if self.pconn is None or self.pconn.closed or self.pconn.broken:
            self.pconn = connect(self.args)
            self.pconn.execute('SET search_path = pg_catalog')
        return self.pconn

    def probe_publish(self, conn, topic, in_txn=False):
        """Publish a tagged empty message, find its copies, roll back:
        (count returned, queue names with a copy), or the error."""
        before = conn.execute('SELECT last_value FROM broker.message_id_seq').fetchone()[0]
        tag = 'p%d' % self.rng.randrange(10**6)
        if not in_txn:
            conn.execute('BEGIN')
        try:
            n = conn.execute("SELECT broker.publish(%s, '{}', headers => %s::jsonb)",
                             (topic, json.dumps({'probe': tag}))).fetchone()[0]
            got = [r[0] for r in conn.execute(
                "SELECT q.name FROM broker.queue_defs q JOIN broker.messages m"
                " ON m.queue_id = ANY(ARRAY[q.queue_id, -q.queue_id])"
                " WHERE m.id > %s AND m.headers->>'probe' = %s", (before, tag))]
        except psycopg.Error as e:
            if e.sqlstate is None or conn.broken:
                raise
            conn.execute('ROLLBACK')
            return e
        if not in_txn:
            conn.execute('ROLLBACK')
        return n, got

    def judge_publish(self, topic, res, expect, repro, what=''):
        """A probe's publish reached exactly the queues with a matching
        pattern (a 54000 names one of them)."""
        self.check()
        if isinstance(res, psycopg.Error):
            m = re.search(r'queue "([^"]*)" accepts', str(res))
            if res.sqlstate == '54000' and m and m.group(1) in expect:
                return False
            if res.sqlstate == '54000' and m:
                self.fail('publish reached other queues than the matching subscriptions' + what,
                          'topic %r: 54000 from queue %s, which has no matching subscription;'
                          ' matching queues %s' % (clip(topic, 80), m.group(1), sorted(expect)),
                          repro)
                return False
            self.fail('publish failed in a probe', '%s %s' % (res.sqlstate, clip(res, 200)), repro)
            return False
        n, got = res
        if n != len(got) or len(set(got)) != len(got) or set(got) != expect:
            self.fail('publish reached other queues than the matching subscriptions' + what,
                      'topic %r: returned %r, copies in %s, matching queues %s'
                      % (clip(topic, 80), n, sorted(got), sorted(expect)), repro)
        return True

    def publish_probe(self):
        """With every session paused: publishes to topics of the vocabulary
        and to topics made to match some subscriptions reach exactly the
        queues whose patterns match (checked against broker.subscriptions
        with a matcher of our own), from a session whose compiled
        subscriptions are older; and inside one transaction a subscribe
        takes effect for the next publish, an unsubscribe too."""
        try:
            conn = self.probe_conn()
            subs = conn.execute('SELECT queue, pattern FROM broker.subscriptions').fetchall()
            queues = [r[0] for r in conn.execute('SELECT queue FROM broker.queues ORDER BY 1')]
            rng = self.rng
            topics = ['.'.join(rng.choice(TOPIC_WORDS) for _ in range(rng.choice([1, 2, 3, 4])))
                      for _ in range(4)]
            topics += [t for t in (topic_for(rng, p) for _, p in rng.sample(subs, min(4, len(subs))))
                       if t and valid_topic(t)]
            for topic in topics:
                expect = {q for q, p in subs if topic_matches(p, topic)}
                res = self.probe_publish(conn, topic)
                self.judge_publish(topic, res, expect,
                                   'SELECT * FROM broker.subscriptions; SELECT broker.publish(%s, %s);'
                                   % (sql_quote(topic), "'{}'"))
            if not queues:
                return
            self.cross_session_probe(conn, subs)
            q = rng.choice(queues)
            pattern = '.'.join(rng.choice(TOPIC_WORDS[:6] + ['*', '#'])
                               for _ in range(rng.choice([1, 2, 3])))
            topic = topic_for(rng, pattern)
            if topic is None or not valid_topic(topic):
                return
            others = {qq for qq, p in subs if topic_matches(p, topic)}
            repro = ('BEGIN; SELECT broker.subscribe(%s, %s); SELECT broker.publish(%s, %s);'
                     % (sql_quote(q), sql_quote(pattern), sql_quote(topic), "'{}'"))
            conn.execute('BEGIN')
            added = conn.execute('SELECT broker.subscribe(%s, %s)', (q, pattern)).fetchone()[0]
            res = self.probe_publish(conn, topic, in_txn=True)
            if not self.judge_publish(topic, res, others | {q}, repro, ' (after subscribe)'):
                return      # rolled back
            if added:
                conn.execute('SELECT broker.unsubscribe(%s, %s)', (q, pattern))
                res = self.probe_publish(conn, topic, in_txn=True)
                repro = repro[:-1] + ' SELECT broker.unsubscribe(%s, %s); SELECT broker.publish(%s, %s);' \
                    % (sql_quote(q), sql_quote(pattern), sql_quote(topic), "'{}'")
                if not self.judge_publish(topic, res, others, repro, ' (after unsubscribe)'):
                    return
            conn.execute('ROLLBACK')
        except psycopg.OperationalError:
            self.pconn = None
            raise
        except psycopg.Error:
            if self.pconn is not None and not self.pconn.broken:
                self.pconn.execute('ROLLBACK')
            raise

    def cross_session_probe(self, conn, subs):
        """The probe session has compiled the subscriptions; another
        session subscribes a queue to a new pattern, commits, and the next
        publish of the probe session must reach it; then it unsubscribes,
        and the next publish must not.  (The other session first takes the
        matching patterns off queues too small for the copy, and puts them
        back after.)"""
        sizes = dict(conn.execute('SELECT queue, max_message_size FROM broker.queues').fetchall())
        big = sorted(q for q, n in sizes.items() if n >= 512)
        if not big:
            return
        q = self.rng.choice(big)
        word = 'probe%d' % self.rng.randrange(10**6)
        pattern, topic = word + '.#', word + '.x'
        blockers = [(qq, p) for qq, p in subs if sizes.get(qq, 0) < 512 and topic_matches(p, topic)]
        expect = {qq for qq, p in subs if topic_matches(p, topic)} - {qq for qq, _ in blockers}
        repro = 'SELECT broker.publish(%s, %s);' % (sql_quote(topic), "'{}'")
        sub = 'SELECT broker.subscribe(%s, %s);' % (sql_quote(q), sql_quote(pattern))
        unsub = 'SELECT broker.unsubscribe(%s, %s);' % (sql_quote(q), sql_quote(pattern))
        with connect(self.args) as other:
            other.execute('SET search_path = pg_catalog')
            for qq, p in blockers:
                other.execute('SELECT broker.unsubscribe(%s, %s)', (qq, p))
            try:
                res = self.probe_publish(conn, topic)
                if not self.judge_publish(topic, res, expect, repro, ' (before)'):
                    return
                other.execute('SELECT broker.subscribe(%s, %s)', (q, pattern))
                res = self.probe_publish(conn, topic)
                self.judge_publish(topic, res, expect | {q},
                                   '-- session 1: %s  -- session 2: %s  -- session 1: %s'
                                   % (repro, sub, repro), ' (subscribed by another session)')
                other.execute('SELECT broker.unsubscribe(%s, %s)', (q, pattern))
                res = self.probe_publish(conn, topic)
                self.judge_publish(topic, res, expect,
                                   '-- session 2: %s  -- session 1: %s  -- session 2: %s'
                                   '  -- session 1: %s' % (sub, repro, unsub, repro),
                                   ' (unsubscribed by another session)')
            finally:
                other.execute('SELECT broker.unsubscribe(%s, %s)', (q, pattern))
                for qq, p in blockers:
                    other.execute('SELECT broker.subscribe(%s, %s)', (qq, p))

    def dedup_probe(self):
        """With every session paused, in one queue: a dedup key enqueued
        again within the window returns the first id and enqueued_total
        does not grow, also once that message is deleted, and within one
        batch; after the window the key enqueues anew."""
        with connect(self.args) as conn:
            conn.execute('SET search_path = pg_catalog')
            qs = conn.execute("SELECT queue, pg_catalog.date_part('epoch', dedup_window)"
                              " FROM broker.queues WHERE max_message_size >= 100"
                              " ORDER BY 1").fetchall()
            if not qs:
                return
            q, window = self.rng.choice(qs)
            if self.rng.random() < 0.4 and any(r[0] == 'fz_g' for r in qs):
                q, window = [r for r in qs if r[0] == 'fz_g'][0]
            key = 'probe-%d' % self.rng.randrange(10**9)
            key2 = key + '-b'
            total = lambda: conn.execute('SELECT enqueued_total FROM broker.metrics(%s)',
                                         (q,)).fetchone()[0]
            key_ids = set()             # ids the key was accepted with; the window runs
            t_new = [0.0]               # from the latest of them

            def enq(p):
                i = conn.execute('SELECT broker.enqueue(%s, %s::jsonb, dedup_key => %s)',
                                 (q, p, key)).fetchone()[0]
                if i not in key_ids:
                    key_ids.add(i)
                    t_new[0] = time.time()
                return i
            within = lambda: time.time() + 0.3 < t0 + window
            repro = "SELECT broker.enqueue(%s, '{\"p\": 1}', dedup_key => %s);" % (sql_quote(q), sql_quote(key))
            e0 = total()
            t0 = time.time()
            id1 = enq('{"p": 1}')
            e1 = total()
            self.check(2)
            if e1 != e0 + 1:
                self.fail('enqueued_total did not count one stored message',
                          'queue %s: %s -> %s' % (q, e0, e1), repro)
            id2 = enq('{"p": 2}')
            e2 = total()
            mine = {id1, id2}
            if within():
                self.check(2)
                if id2 != id1:
                    self.fail('a dedup key within its window was enqueued again (probe)',
                              'queue %s: first id %d, then %d' % (q, id1, id2), repro * 2)
                if e2 != e1:
                    self.fail('a dedup hit counted in enqueued_total',
                              'queue %s: %s -> %s' % (q, e1, e2), repro * 2)
                conn.execute('SELECT broker.delete(%s, %s)', (q, id1))
                id3 = enq('{"p": 3}')
                e3 = total()
                mine.add(id3)
                if within():
                    self.check(2)
                    if id3 != id1 or e3 != e2:
                        self.fail('a dedup key was forgotten when its message was deleted',
                                  'queue %s: first id %d, after delete %d; enqueued_total %s -> %s'
                                  % (q, id1, id3, e2, e3),
                                  repro + ' SELECT broker.delete(%s, <id>); ' % sql_quote(q) + repro)
                ids = [r[0] for r in conn.execute(
                    "SELECT * FROM broker.enqueue_batch(%s, ARRAY['{\"p\": 4}', '{\"p\": 5}',"
                    " '{\"p\": 6}']::jsonb[], dedup_keys => %s)", (q, [key, key2, key2]))]
                e4 = total()
                mine.update(ids)
                if ids and ids[0] not in key_ids:
                    key_ids.add(ids[0])
                    t_new[0] = time.time()
                if within():
                    self.check(2)
                    if len(ids) != 3 or ids[0] != id1 or ids[1] != ids[2] or ids[1] == id1:
                        self.fail('enqueue_batch dedup keys: wrong ids',
                                  'queue %s: keys [k, k2, k2] (k accepted as %d) returned %s'
                                  % (q, id1, ids), repro + " SELECT * FROM broker.enqueue_batch(%s,"
                                  " ARRAY['{}','{}','{}']::jsonb[], dedup_keys => ARRAY[%s, %s, %s]);"
                                  % (sql_quote(q), sql_quote(key), sql_quote(key2), sql_quote(key2)))
                    if e4 != e3 + 1:
                        self.fail('enqueue_batch: enqueued_total counts other than the messages stored',
                                  'queue %s: %s -> %s for one new message' % (q, e3, e4), '')
            if window <= 2:
                time.sleep(max(0.0, t_new[0] + window + 0.3 - time.time()))
                before = set(key_ids)
                e5 = total()
                id5 = enq('{"p": 7}')
                e6 = total()
                mine.add(id5)
                self.check()
                if id5 in before or e6 != e5 + 1:
                    self.fail('a dedup key still deduplicates after its window',
                              'queue %s, window %s s: first id %d, after the window %d'
                              % (q, window, id1, id5), repro)
            conn.execute('SELECT broker.delete(%s, %s::int8[])', (q, sorted(mine)))

    def housekeeping(self, queues):
        """Empty the queues that grew large (huge batches), so that a long
        run does not fill the disk; grant the model roles their privileges
        again (a drop takes them away), revoke what public got."""
        with connect(self.args) as conn:
            model_grants(conn)
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
                   count(*) FILTER (WHERE (m.vt <= %(t)s OR m.queue_id < 0)
                                    AND (q.max_deliveries IS NULL
                                    OR m.delivery_count < q.max_deliveries)),
                   count(*) FILTER (WHERE m.vt > %(t)s AND m.queue_id > 0 AND m.receipt IS NOT NULL),
                   count(*) FILTER (WHERE m.vt > %(t)s AND m.queue_id > 0 AND m.receipt IS NULL),
                   count(m.id),
                   count(*) FILTER (WHERE (m.vt <= %(t)s OR m.queue_id < 0)
                                    AND m.delivery_count >= q.max_deliveries),
                   count(*) FILTER (WHERE (m.queue_id > 0 AND m.vt > %(t)s AND m.vt <= %(u)s)
                                    OR (m.expires_at > %(t)s AND m.expires_at <= %(u)s))
              FROM broker.queue_defs q
              LEFT JOIN broker.messages m ON m.queue_id = ANY(ARRAY[q.queue_id, -q.queue_id])
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
            ready_rows = {r[0]: r[1:] for r in conn.execute(
                'SELECT m.id, m.priority, m.expires_at, m.seg FROM (' + ' UNION ALL '.join(
                    'SELECT *, %d AS seg FROM broker.messages_%d' % (k, k) for k in range(4)) +
                """) m JOIN broker.queue_defs q USING (queue_id)
                 WHERE q.name = %(q)s AND m.vt <= %(t)s
                   AND (m.expires_at IS NULL OR m.expires_at > %(t)s)
                   AND (q.max_deliveries IS NULL OR m.delivery_count < q.max_deliveries)""",
                {'q': q, 't': t0})}
            # dequeue scans the oldest segment first (a moved row in its new segment's turn)
            age = dict(conn.execute('SELECT segment, first_id FROM broker.segments').fetchall())
            ready = set(ready_rows)
            got = []
            started = time.time()
            try:
                # the first one alone: the highest priority, then the lowest id
                first = conn.execute('SELECT id FROM broker.dequeue(%s, 1)', (q,)).fetchall()
                t1 = conn.execute('SELECT clock_timestamp()').fetchone()[0]
                if first:
                    got.append(first[0][0])
                    self.check_first(conn, q, first[0][0], ready_rows, t1, age)
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

    def check_first(self, conn, q, mid, ready_rows, t1, age):
        """The first message a drain takes is of the highest priority among
        those ready (and still unexpired after the call), and of that
        priority the lowest id of the oldest segment (docs/api.md: a row
        maintenance moved forward is taken in its new segment's turn),
        unless it became due during the call."""
        sure = {i: p for i, (p, exp, seg) in ready_rows.items() if exp is None or exp > t1}
        if not sure:
            return
        row = conn.execute('SELECT m.priority FROM broker.messages m JOIN broker.queue_defs d'
                           ' USING (queue_id) WHERE d.name = %s AND m.id = %s', (q, mid)).fetchone()
        if row is None:
            return
        top = max(sure.values())
        order = lambda i: (age.get(ready_rows[i][2], 0), i)
        lowest = min((i for i, p in sure.items() if p == top), key=order)
        self.check()
        repro = "SELECT id FROM broker.dequeue('%s', 1);  -- while every session is paused" % q
        if row[0] < top:
            self.fail('dequeue took a lower priority first',
                      'queue %s: took id %d of priority %d while id %d of priority %d was ready'
                      % (q, mid, row[0], lowest, top), repro)
        elif mid in ready_rows and order(mid) > order(lowest):
            self.fail('dequeue did not take the lowest id of the highest priority first',
                      'queue %s: took id %d (segment %d), id %d (segment %d) of the same priority'
                      ' %d was ready' % (q, mid, ready_rows[mid][2], lowest, ready_rows[lowest][2],
                                         top), repro)

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
    ap.add_argument('--standby-sessions', type=int, default=1,
                    help='sessions calling the standby (default 1)')
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
        workers += [Worker(args.sessions + i, st, pause, fns, deadline, args, args.standby_dsn)
                    for i in range(args.standby_sessions)]
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
    print('what the calls did: ' + (', '.join('%s %d' % kv for kv in sorted(st.stats.items())) or 'none'))
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
