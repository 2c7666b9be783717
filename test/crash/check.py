#!/usr/bin/python3
"""check.py: checks the broker against the logs of load.py after a crash loop.

Run it once the load is stopped and the server is up, before any further
restart (a restart rebuilds the low-water marks and would hide messages
that dequeue no longer finds).  It

 1. waits until no message of the crash-loop queues is leased or delayed;
 2. checks the gauges: per queue, broker.metrics()' ready, leased, delayed
    and total equal the counts of the rows in broker.messages (total also
    counts exhausted messages, those at max_deliveries that a dequeue has
    not dead-lettered yet; messages waiting behind their group's head
    count as ready, whatever their own delay); the low-water marks: no
    live message that dequeue may take has an id below its queue's mark
    (broker.waiters()), or it is *stuck*; the groups: every message
    waiting behind a head (queue_id < 0) has one (a row with the queue's
    id and its group key), or it is *stuck*, and that head is the group's
    only one and its lowest id; the records: no message is both in its
    queue and recorded as gone;
 3. reads every row of the queues;
 4. drains every queue with dequeue (deleting what it takes), round after
    round until nothing comes back, and then finds nothing left: no row,
    metrics' ready and total 0, and every message that was ready before the
    drain was returned by it or has expired meanwhile (else it is *stuck*);
 5. checks the logs against what it read and drained:
    lost    a committed enqueue (or copy of a committed publish) whose
            message is in no queue (nor, as a copy, in its dead-letter
            queue), was never removed (a removal counts also when in
            doubt), has no ttl that has passed, and was not dropped at
            max_deliveries (a queue without dead-letter queue, a delivery
            with delivery_count >= max_deliveries);
    back    a message removed (delete, complete or fail confirmed, true)
            that is still in a queue, was delivered again (a committed
            delivery with a higher delivery_count or received after the
            removal), removed twice, or whose copy is in the dead-letter
            queue;
    double  two committed deliveries of one message under valid leases:
            test/tools/broker_sim.c's rule (same delivery_count, or the later
            one received before the earlier one's lease ended); the lease
            ends at lease_until, later if an extend_lease was confirmed,
            at the time a release was sent if there was one (even in doubt);
            a delivery in doubt is left out;
    group   ordered groups: a message delivered (even by a dequeue in
            doubt) before every lower id of its group had left the queue
            (each one's earliest possible leaving: a removal sent, its ttl
            passed, its delivery at max_deliveries); a confirmed removal
            of a group's message before the removal of a lower id was sent
            (deletions out of id order); two committed deliveries of
            different messages of a group whose leases overlap (each lease
            from the delivery's receive time to the earliest of its
            lease_until, a confirmed extension, a release or removal sent,
            its ttl passed);
            two messages of a group in one dequeue; a group with two heads,
            or whose head is not its lowest id; a message in another group
            than the one it was enqueued with;
    dedup   a dedup key stored twice within the queue's dedup_window; a
            call with a key that returned an id other than the stored
            message's, or an earlier one's after the window had passed; a
            stored message no call returned; a publish that returned 0
            without a publish of the key within the window;
    publish a confirmed publish that returned neither the number of queues
            its topic reaches nor 0 (a dedup hit); two copies in a queue;
            a publish in doubt with copies in some queues and not others
            (all or none); a copy in a queue the topic does not reach;
    records the queue with a retention (cl_job): a message still in the
            queue that also has a record, or a record in both record tables;
            after the drain, by broker.status: a confirmed complete, fail
            or delete whose record is not done, failed or deleted with the
            result given and the delivery count of the delivery it
            removed; a committed message with neither a row nor a record;
            a record no call (even in doubt), ttl or max_deliveries
            explains;
    priority a dequeue that returned a message of a lower priority before
            one of a higher priority;
    other   a message in a queue or delivered that no enqueue (even in
            doubt) produced, or found in a queue that is neither its own
            nor its dead-letter queue.
Prints the figures and the line
  crash loop: N crashes, M messages checked, L lost, B back, D double, S stuck,
  G gauge mismatches, O group, U dedup, P publish, R records, Q priority
and exits 1 on any violation.  --probe does step 2 alone (it can run under
load, e.g. before each crash) and appends what it finds to
<logdir>/probe.jsonl, which the final check counts in; --redrain drains once
more, e.g. after a restart, and says what came back.

Usage: check.py --logdir DIR [--crashes N] [--dsn DSN]
       check.py --probe [--logdir DIR]
       check.py --probe-loop [--logdir DIR]   a probe per line of stdin, to "quit"
       check.py --redrain [--logdir DIR]
"""

import argparse
import glob
import json
import os
import sys
import time
from collections import defaultdict, namedtuple

import psycopg

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import JOB_QUEUE, QUEUES, SUBSCRIPTIONS, subscribers  # noqa: E402

KINDS = ('lost', 'back', 'double', 'stuck', 'gauges', 'group', 'dedup', 'publish',
         'records', 'priority', 'other')
INF = float('inf')

# Every message of the given queues, with the segment table that holds it;
# a message waiting behind its group's head has the queue's id negated.
Row = namedtuple('Row', 'q id k dc vt exp rcpt seg waiting g pri')
ROWS = """
SELECT d.name, m.id, m.payload->>'k', m.delivery_count,
       extract(epoch FROM m.vt)::float8, extract(epoch FROM m.expires_at)::float8,
       m.receipt, m.tableoid::regclass::text, m.queue_id < 0, m.group_key, m.priority
  FROM (SELECT tableoid, * FROM broker.messages_0
        UNION ALL SELECT tableoid, * FROM broker.messages_1
        UNION ALL SELECT tableoid, * FROM broker.messages_2
        UNION ALL SELECT tableoid, * FROM broker.messages_3) m
  JOIN broker.queue_defs d ON d.queue_id = abs(m.queue_id)
 WHERE d.name = ANY (%s)"""

# Groups whose head is missing, not alone or not their lowest id, and
# waiting messages without a group: one statement, so one snapshot.
HEADS = """
SELECT d.name, m.group_key, count(*) FILTER (WHERE m.queue_id > 0),
       min(m.id), min(m.id) FILTER (WHERE m.queue_id > 0),
       (array_agg(m.id ORDER BY m.id) FILTER (WHERE m.queue_id > 0))[1:5],
       (array_agg(m.id ORDER BY m.id) FILTER (WHERE m.queue_id < 0))[1:5],
       count(*) FILTER (WHERE m.queue_id < 0)
  FROM broker.messages m JOIN broker.queue_defs d ON d.queue_id = abs(m.queue_id)
 WHERE d.name = ANY (%s) AND (m.group_key IS NOT NULL OR m.queue_id < 0)
 GROUP BY 1, 2
HAVING count(*) FILTER (WHERE m.queue_id > 0) <> 1 OR m.group_key IS NULL
    OR min(m.id) <> min(m.id) FILTER (WHERE m.queue_id > 0)"""

# Messages that are both in their queue and recorded as gone, and records
# in both record tables: one statement each.
RECORDED_AND_QUEUED = """
SELECT d.name, r.id, r.state, m.queue_id
  FROM (SELECT queue_id, id, state FROM broker.records_0
        UNION ALL SELECT queue_id, id, state FROM broker.records_1) r
  JOIN broker.queue_defs d ON d.queue_id = r.queue_id
  JOIN broker.messages m ON m.queue_id IN (r.queue_id, -r.queue_id) AND m.id = r.id
 WHERE d.name = ANY (%s)"""
RECORDED_TWICE = """
SELECT d.name, r0.id, r0.state, r1.state
  FROM broker.records_0 r0 JOIN broker.records_1 r1 USING (queue_id, id)
  JOIN broker.queue_defs d ON d.queue_id = r0.queue_id
 WHERE d.name = ANY (%s)"""

REMOVED_STATE = {'delete': 'deleted', 'complete': 'done', 'fail': 'failed'}


def connect(dsn):
    """Connects, waiting at most 60 s for the server to accept connections."""
    deadline = time.time() + 60
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


class Q(namedtuple('Q', 'maxd dlq ttl window retention')):
    """Settings of a crash-loop queue, from broker.queues."""


def queue_defs(conn):
    """Settings of the crash-loop queues: name -> Q."""
    rows = conn.execute(
        "SELECT queue, max_deliveries, dead_letter_queue,"
        " extract(epoch FROM default_ttl)::float8, extract(epoch FROM dedup_window)::float8,"
        " extract(epoch FROM retention)::float8 FROM broker.queues"
        " WHERE queue = ANY (%s)", (list(QUEUES),)).fetchall()
    return {r[0]: Q(*r[1:]) for r in rows}


def wait_quiet(conn, names, secs):
    """Waits until no live message is leased or delayed; False on timeout."""
    deadline = time.time() + secs
    while time.time() < deadline:
        busy = conn.execute(
            "SELECT count(*) FROM broker.messages m JOIN broker.queue_defs d"
            " ON d.queue_id = abs(m.queue_id)"
            " WHERE d.name = ANY (%s) AND m.vt > clock_timestamp()"
            " AND (m.expires_at IS NULL OR m.expires_at > clock_timestamp())",
            (names,)).fetchone()[0]
        if busy == 0:
            return True
        time.sleep(0.5)
    return False


def read_rows(conn, names, extra=''):
    return [Row(*r) for r in conn.execute(ROWS + extra, (names,)).fetchall()]


def classify(rows, defs, now):
    """Counts rows per queue as metrics does at time now: a message waiting
    behind its group's head is ready, whatever its own delay (issue 9)."""
    c = defaultdict(lambda: dict(ready=0, leased=0, delayed=0, total=0, exhausted=0))
    for r in rows:
        if r.exp is not None and r.exp <= now:
            continue
        x = c[r.q]
        x['total'] += 1
        maxd = defs[r.q].maxd
        if r.vt > now and not r.waiting:
            x['leased' if r.rcpt is not None else 'delayed'] += 1
        elif maxd is None or r.dc < maxd:
            x['ready'] += 1
        else:
            x['exhausted'] += 1
    return c


def check_gauges(conn, defs, tries=3):
    """Compares metrics' gauges with the rows; returns a list of mismatches.

    The rows and metrics are read in one REPEATABLE READ transaction; each
    row count is taken at the clock before and after metrics, and metrics
    must lie between the two.  A mismatch is confirmed by further tries
    before it is reported (a message can change class between the reads)."""
    names = list(defs)
    for _ in range(tries):
        bad = []
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = read_rows(conn, names)
            t0 = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
            met = conn.execute(
                "SELECT queue, ready, leased, delayed, total FROM broker.metrics()"
                " WHERE queue = ANY (%s)", (names,)).fetchall()
            t1 = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        c0, c1 = classify(rows, defs, t0), classify(rows, defs, t1)
        for q, ready, leased, delayed, total in met:
            got = dict(ready=ready, leased=leased, delayed=delayed, total=total,
                       exhausted=total - ready - leased - delayed)
            for k, v in got.items():
                lo, hi = sorted((c0[q][k], c1[q][k]))
                if not lo <= v <= hi:
                    bad.append(f'{q}: metrics {k} = {v}, rows say {lo}'
                               + (f'..{hi}' if hi != lo else ''))
        if not bad:
            return []
        time.sleep(0.2)
    return bad


def below_lwm(conn, names):
    """Messages below their queue's low-water mark; returns (queue, id, text).

    No live message that dequeue may take (not one waiting behind its
    group's head) may have an id below the mark (docs/design.md, the
    low-water mark); dequeue scans from it, so such a message is stuck
    until a restart resets the marks.  The marks are read first, the rows
    with a later snapshot, so a message deleted meanwhile is not seen."""
    marks = lwm(conn, names)
    rows = read_rows(
        conn, names,
        " AND m.queue_id > 0"
        " AND m.id < (SELECT w.low_water_mark FROM broker.waiters(d.name) w)"
        " AND (m.expires_at IS NULL OR m.expires_at > clock_timestamp())")
    return [(r.q, r.id, f'{r.q} id {r.id} key {r.k}: below the low-water mark'
             f' {marks.get(r.q)} (delivery_count {r.dc}, priority {r.pri}, in {r.seg})')
            for r in rows if r.id < (marks.get(r.q) or 0)]


def bad_heads(conn, names):
    """Groups without a head (their waiting messages are stuck), with two
    heads or a head that is not their lowest id; returns (kind, q, ids, text).
    A group whose head was removed by a transaction that could not lock the
    group at once waits for the reaper's next pass (docs/design.md §14): a
    group without a head counts only if it still has none after
    broker.reap() and a moment."""
    rows = conn.execute(HEADS, (names,)).fetchall()
    if any(r[2] == 0 for r in rows):
        for _ in range(3):
            conn.execute('SELECT broker.reap()')
            time.sleep(0.3)
            rows = conn.execute(HEADS, (names,)).fetchall()
            if not any(r[2] == 0 for r in rows):
                break
    out = []
    for q, g, heads, lowest, head, head_ids, waiting_ids, nwaiting in rows:
        if g is None:
            out.append(('stuck', q, waiting_ids,
                        f'{q}: {nwaiting} messages wait behind a head without a group key'
                        f' (ids {waiting_ids})'))
        elif heads == 0:
            out.append(('stuck', q, waiting_ids,
                        f'{q} group {g}: {nwaiting} messages wait behind a head that no'
                        f' longer exists (ids {waiting_ids}...)'))
        elif heads > 1:
            out.append(('group', q, head_ids,
                        f'{q} group {g}: {heads} heads (ids {head_ids}), waiting {nwaiting}'))
        else:
            out.append(('group', q, head_ids,
                        f'{q} group {g}: head {head} is not the lowest id {lowest}'
                        f' (waiting ids {waiting_ids})'))
    return out


def recorded_and_queued(conn, names):
    """Messages both in their queue and recorded, and records in both
    tables; returns texts."""
    out = [f'{q} id {i}: in the queue (queue_id {qid}) and recorded {state}'
           for q, i, state, qid in conn.execute(RECORDED_AND_QUEUED, (names,)).fetchall()]
    out += [f'{q} id {i}: recorded twice, {s0} in records_0 and {s1} in records_1'
            for q, i, s0, s1 in conn.execute(RECORDED_TWICE, (names,)).fetchall()]
    return out


def probe(conn, defs, logdir):
    """Checks the gauges, the low-water marks, the groups' heads and the
    records (under load too); appends what it finds to logdir/probe.jsonl,
    for the final check."""
    names = list(defs)
    found = [{'kind': 'gauges', 'msg': b} for b in check_gauges(conn, defs)]
    found += [{'kind': 'stuck', 'q': q, 'id': i, 'msg': m}
              for q, i, m in below_lwm(conn, names)]
    found += [{'kind': kind, 'q': q, 'ids': ids, 'msg': m}
              for kind, q, ids, m in bad_heads(conn, names)]
    found += [{'kind': 'records', 'msg': m} for m in recorded_and_queued(conn, names)]
    if logdir and found:
        with open(os.path.join(logdir, 'probe.jsonl'), 'a') as f:
            for r in found:
                r['t'] = time.time()
                f.write(json.dumps(r) + '\n')
            f.flush()
            os.fsync(f.fileno())
    return found


def probe_loop(dsn, conn, logdir):
    """--probe-loop: a probe for each line of stdin, in one process (the
    TAP test's probes would otherwise each pay for a start of Python and
    psycopg); the connection is made again after a crash."""
    for line in sys.stdin:
        if line.strip() == 'quit':
            break
        found, err = None, None
        for _ in range(3):
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(dsn)
                found = probe(conn, queue_defs(conn), logdir)
                break
            except psycopg.Error as e:
                err = e
                try:
                    conn.close()
                except (psycopg.Error, AttributeError):
                    pass
                conn = None
        for r in found or []:
            print(f"{r['kind']}: {r['msg']}")
        if found is None:
            print(f'probe failed: {err}')
        print(f'probe done {len(found) if found is not None else -1}', flush=True)
    return 0


def drain(conn, names, dlqs, out):
    """Dequeues and deletes everything, sources before dead-letter queues,
    until a whole round returns nothing; appends delivery records to out."""
    order = sorted(names, key=lambda q: q in dlqs)
    total = 0
    while True:
        got = 0
        for q in order:
            while True:
                with conn.transaction():
                    cur = conn.execute(
                        "SELECT id, payload->>'k', delivery_count,"
                        " extract(epoch FROM lease_until)::float8, receipt"
                        " FROM broker.dequeue(%s, 200)", (q,))
                    rows = cur.fetchall()
                    recv = sent = time.time()
                    gone = {r[0] for r in conn.execute(
                        "SELECT * FROM broker.delete(%s, %s::bigint[])",
                        (q, [r[0] for r in rows])).fetchall()} if rows else set()
                t = time.time()
                for i, k, dc, until, rcpt in rows:
                    out.append({'op': 'dlv', 'doubt': False, 'q': q, 'id': i, 'k': k,
                                'dc': dc, 'recv': recv, 'until': until, 'rcpt': rcpt,
                                'w': 'drain'})
                    out.append({'op': 'del', 'doubt': False, 'q': q, 'id': i, 'k': k,
                                'rcpt': rcpt, 'dc': dc, 'ok': i in gone, 'how': 'delete',
                                'res': None, 'sent': sent, 't': t})
                got += len(rows)
                if not rows:
                    break
        total += got
        if got == 0:
            return total


def keep(logdir, records):
    """Appends the drain's records to logdir/drain.jsonl, so that a later
    run of the checker on the same logs knows them."""
    if not logdir or not records:
        return
    with open(os.path.join(logdir, 'drain.jsonl'), 'a') as f:
        for r in records:
            f.write(json.dumps(r, separators=(',', ':')) + '\n')
        f.flush()
        os.fsync(f.fileno())


def read_logs(logdir):
    """Every record of every client log of logdir, in the order written."""
    recs = []
    for path in sorted(glob.glob(os.path.join(logdir, '*.jsonl'))):
        if os.path.basename(path) == 'probe.jsonl':
            continue
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    recs.append(json.loads(line))
    return recs


def lwm(conn, names):
    """The low-water mark of each queue (broker.waiters)."""
    return dict(conn.execute(
        "SELECT queue, low_water_mark FROM broker.waiters() WHERE queue = ANY (%s)",
        (names,)).fetchall())


def copy_key(k, q):
    """The key of a message in the checks: a published message's copies
    share the payload's key, so each copy is told apart by its queue."""
    return f'{k}@{q}' if q in SUBSCRIPTIONS else k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dsn', default='')
    ap.add_argument('--logdir')
    ap.add_argument('--crashes', type=int, default=0)
    ap.add_argument('--quiet-timeout', type=float, default=60)
    ap.add_argument('--probe', action='store_true')
    ap.add_argument('--redrain', action='store_true')
    ap.add_argument('--probe-loop', action='store_true',
                    help='a probe for each line read from stdin (until "quit"), each'
                    ' answered by "probe done N" (N findings), reconnecting after crashes')
    a = ap.parse_args()

    conn = connect(a.dsn)
    defs = queue_defs(conn)
    names = sorted(defs)
    dlqs = {d.dlq for d in defs.values() if d.dlq}

    if a.probe:
        found = probe(conn, defs, a.logdir)
        for r in found:
            print(f"{r['kind']}: {r['msg']}")
        return 1 if found else 0

    if a.probe_loop:
        return probe_loop(a.dsn, conn, a.logdir)

    if a.redrain:
        wait_quiet(conn, names, a.quiet_timeout)
        out = []
        n = drain(conn, names, dlqs, out)
        keep(a.logdir, out)
        print(f'redrain: {n} messages delivered')
        for r in out:
            if r['op'] == 'dlv':
                print(f"  {r['q']} id {r['id']} key {r['k']} delivery_count {r['dc']}")
        return 0

    if not a.logdir:
        ap.error('--logdir is needed')
    recs = read_logs(a.logdir)
    violations = defaultdict(list)

    # what the probes during the run found
    probed = set()
    path = os.path.join(a.logdir, 'probe.jsonl')
    if os.path.exists(path):
        seen_msgs = set()
        with open(path) as f:
            for r in map(json.loads, f):
                if r['kind'] == 'stuck' and 'id' in r:
                    if (r['q'], r['id']) in probed:
                        continue
                    probed.add((r['q'], r['id']))
                elif r['kind'] != 'gauges':
                    # the same finding at several probes counts once
                    if r['msg'] in seen_msgs:
                        continue
                    seen_msgs.add(r['msg'])
                    for i in r.get('ids') or []:
                        probed.add((r['q'], i))
                violations[r['kind']].append('during the run: ' + r['msg'])

    # 1, 2: quiet, then gauges, low-water marks, heads, records
    if not wait_quiet(conn, names, a.quiet_timeout):
        violations['stuck'].append(
            f'messages still leased or delayed after {a.quiet_timeout:.0f} s')
    for b in check_gauges(conn, defs):
        violations['gauges'].append('before the drain: ' + b)
    for q, i, m in below_lwm(conn, names):
        if (q, i) not in probed:
            probed.add((q, i))
            violations['stuck'].append(m)
    for kind, q, ids, m in bad_heads(conn, names):
        violations[kind].append('before the drain: ' + m)
        probed.update((q, i) for i in ids or [])
    for m in recorded_and_queued(conn, names):
        violations['records'].append('before the drain: ' + m)

    # 3: every row
    rows = read_rows(conn, names)
    t_read = time.time()
    marks = lwm(conn, names)
    ready_before = {(r.q, r.id): r for r in rows
                    if (r.exp is None or r.exp > t_read) and r.vt <= t_read
                    and (defs[r.q].maxd is None or r.dc < defs[r.q].maxd)}

    # 4: drain; nothing may be left
    drained = []
    ndrained = drain(conn, names, dlqs, drained)
    keep(a.logdir, drained)
    t_drained = time.time()
    left = read_rows(conn, names,
                     " AND (m.expires_at IS NULL OR m.expires_at > clock_timestamp())")
    got = {(r['q'], r['id']) for r in drained if r['op'] == 'dlv'}
    reported = set(probed)
    for r in ready_before.values():
        if (r.q, r.id) not in got and (r.exp is None or r.exp > t_drained) \
                and (r.q, r.id) not in reported:
            reported.add((r.q, r.id))
            violations['stuck'].append(
                f'{r.q} id {r.id} key {r.k}: ready (delivery_count {r.dc}'
                f"{', waiting in group ' + r.g if r.waiting else ''}) but not returned by"
                f' dequeue; in {r.seg}, low-water mark {marks.get(r.q)}')
    listed = defaultdict(int)            # queue -> reported messages left
    for r in left:
        if (r.q, r.id) not in reported:
            reported.add((r.q, r.id))
            violations['stuck'].append(f'{r.q} id {r.id} key {r.k}: left after the drain'
                                       f' (delivery_count {r.dc}, in {r.seg}'
                                       f"{', waiting in group ' + r.g if r.waiting else ''})")
        listed[r.q] += 1
    for q, ready, total in conn.execute(
            "SELECT queue, ready, total FROM broker.metrics() WHERE queue = ANY (%s)",
            (names,)).fetchall():
        if ready or total:
            # counted only if more than the messages listed above
            msg = f'{q}: after the drain metrics says ready {ready}, total {total}'
            if total > listed[q]:
                violations['stuck'].append(msg)
            else:
                print('stuck: ' + msg)
    for b in check_gauges(conn, defs):
        violations['gauges'].append('after the drain: ' + b)

    # 5: the logs against what was read and drained
    recs.extend(drained)
    figures = check_logs(conn, defs, recs, rows, t_read, violations)
    print_figures(a.crashes, figures, rows, ndrained, drained, t_read)
    for kind in KINDS:
        for v in violations[kind][:50]:
            print(f'{kind}: {v}')
        if len(violations[kind]) > 50:
            print(f'{kind}: ... {len(violations[kind]) - 50} more')
    line = (f"crash loop: {a.crashes} crashes, {figures['checked']} messages checked,"
            f" {len(violations['lost'])} lost, {len(violations['back'])} back,"
            f" {figures['double_pairs']} double, {len(violations['stuck'])} stuck,"
            f" {len(violations['gauges'])} gauge mismatches,"
            f" {len(violations['group'])} group, {len(violations['dedup'])} dedup,"
            f" {len(violations['publish'])} publish, {len(violations['records'])} records,"
            f" {len(violations['priority'])} priority")
    if violations['other']:
        line += f", {len(violations['other'])} other"
    print(line)
    return 1 if any(violations.values()) else 0


def check_logs(conn, defs, recs, rows, t_read, violations):
    """Step 5: every check of the logs against the rows read before the
    drain and what the drain returned; returns the figures."""
    fig = defaultdict(int)

    # Attempts: an enqueue record per message, a publish record expanded
    # into one per queue its topic reaches (key k@queue).
    att = defaultdict(list)              # key -> enqueue attempts
    pubs = defaultdict(list)             # payload key -> publish records
    for r in recs:
        if r['op'] == 'enq':
            att[r['k']].append(r)
        elif r['op'] == 'pub':
            pubs[r['k']].append(r)
            for q in subscribers(r['topic']):
                att[copy_key(r['k'], q)].append(dict(r, op='enq', q=q, id=None,
                                                      k=copy_key(r['k'], q), pk=r['k']))
    for k in att:
        att[k].sort(key=lambda e: e['sent'])
    for k in pubs:
        pubs[k].sort(key=lambda e: e['sent'])

    dlv = defaultdict(list)              # (q, id) -> deliveries
    dlv_key = defaultdict(list)          # key -> deliveries
    calls = defaultdict(list)            # (consumer, recv) -> deliveries of one dequeue
    dels = defaultdict(list)             # (q, id) -> removals
    key_deleted = defaultdict(list)      # key -> removals that may have removed
    ext = defaultdict(list)              # (q, id, rcpt) -> confirmed new lease ends
    rel = defaultdict(list)              # (q, id, rcpt) -> release send times
    keys_seen = set()
    ids_seen = defaultdict(set)          # (q, key) -> ids in rows, deliveries, removals
    for r in recs:
        op = r['op']
        if op in ('dlv', 'del'):
            r['k'] = copy_key(r['k'], r['q'])
            ids_seen[(r['q'], r['k'])].add(r['id'])
        if op == 'dlv':
            dlv[(r['q'], r['id'])].append(r)
            dlv_key[r['k']].append(r)
            calls[(r['w'], r['recv'])].append(r)
            keys_seen.add(r['k'])
        elif op == 'del':
            r.setdefault('how', 'delete')
            dels[(r['q'], r['id'])].append(r)
            if r['ok']:
                key_deleted[r['k']].append(r)
        elif op == 'ext':
            if not r['doubt'] and r['until'] is not None:
                ext[(r['q'], r['id'], r['rcpt'])].append(r['until'])
        elif op == 'rel':
            if r['ok']:
                rel[(r['q'], r['id'], r['rcpt'])].append(r['sent'])
    rows = [r._replace(k=copy_key(r.k, r.q)) for r in rows]
    in_rows = defaultdict(list)          # key -> rows
    row_at = {}
    for row in rows:
        in_rows[row.k].append(row)
        keys_seen.add(row.k)
        ids_seen[(row.q, row.k)].add(row.id)
        row_at[(row.q, row.id)] = row

    def seen(k, q):
        return ids_seen.get((q, k), set())

    # committed: a confirmed enqueue, or a confirmed publish that stored
    # its copies or hit their dedup key.  Each key's representative is the
    # last call that surely stored a message (for its ttl): an enqueue
    # returns the id of the message it stored, or of the one whose dedup
    # key it hit; a publish returns how many copies it stored.
    committed = {}
    for k, es in att.items():
        conf = [e for e in es if not e['doubt']]
        if 'pk' in es[0]:
            n_all = len(subscribers(es[0]['topic']))
            if not any(e['n'] == n_all or (e['n'] == 0 and e['dk']) for e in conf):
                continue
            st = [e for e in conf if e['n'] == n_all] or [e for e in es if e['n'] == n_all]
        else:
            if not conf:
                continue
            first = {}
            for e in es:
                first.setdefault(e['id'], e)
            sure = {e['id'] for e in conf} | seen(k, es[0]['q'])
            st = [e for i, e in first.items() if i in sure]
        committed[k] = max(st or es, key=lambda e: e['t'])

    # lost, and publishes in doubt (all copies or none)
    def accounted(k, e):
        """True, or why the message of key k (origin e['q']) is missing."""
        q = e['q']
        d = defs[q]
        where = {row.q for row in in_rows.get(k, [])}
        if where:
            if not where <= {q, d.dlq}:
                violations['other'].append(f'key {k} of {q} found in {sorted(where)}')
            return True
        if key_deleted.get(k):
            return True
        ttl = e['ttl'] if e['ttl'] is not None else d.ttl
        if ttl is not None and e['t'] + ttl <= t_read:
            return True
        if d.maxd is not None and d.dlq is None and \
                max((x['dc'] for x in dlv_key.get(k, []) if x['q'] == q), default=0) >= d.maxd:
            return True
        hist = ', '.join(f"id {x['id']} dc {x['dc']} by {x['w']}"
                         f"{' (in doubt)' if x['doubt'] else ''}"
                         for x in dlv_key.get(k, []) if x['q'] == q)
        return (f"{q} id {e['id']} key {k} (ttl {ttl}, delay {e['delay']}): gone;"
                f" deliveries: {hist or 'none'}")

    for k, e in committed.items():
        why = accounted(k, e)
        if why is not True:
            violations['lost'].append(why)

    for pk, ps in pubs.items():
        qs = subscribers(ps[0]['topic'])
        copies = [copy_key(pk, q) for q in qs]
        anywhere = [q for q in SUBSCRIPTIONS if seen(copy_key(pk, q), q)]
        bad = [q for q in anywhere if q not in qs]
        if bad:
            violations['publish'].append(f"{pk} published to {ps[0]['topic']} (reaches"
                                         f" {qs or 'no queue'}) has copies in {bad}")
        for p in ps:
            if not p['doubt'] and p['n'] not in (0, len(qs)):
                violations['publish'].append(
                    f"{pk} published to {p['topic']}: returned {p['n']}, reaches {len(qs)}")
            if not p['doubt'] and p['n'] == 0 and qs and not p['dk']:
                violations['publish'].append(
                    f"{pk} published to {p['topic']} without dedup key: returned 0")
        if not qs:
            fig['pub_nowhere'] += 1
            continue
        if all(c in committed for c in copies):
            continue
        # in doubt: some copies seen means all committed
        if anywhere:
            fig['pub_doubt_all'] += 1
            for c in copies:
                e = max(att[c], key=lambda e: e['t'])
                why = accounted(c, e)
                if why is not True:
                    violations['publish'].append(
                        f'{pk} in doubt, copies in {anywhere}, not in {e["q"]}: {why}')
        else:
            fig['pub_doubt_none'] += 1

    # phantoms
    for k in keys_seen:
        if k not in att:
            violations['other'].append(f'key {k} in a queue or delivered, never enqueued')

    # back
    for (q, i), ds in dels.items():
        ok = [d for d in ds if d['ok'] and not d['doubt']]
        if not ok:
            continue
        if len(ok) > 1:
            violations['back'].append(f'{q} id {i}: removed {len(ok)} times'
                                      f" ({', '.join(d['how'] for d in ok)})")
        first = min(ok, key=lambda d: d['t'])
        if first['t'] < t_read and (q, i) in row_at:
            violations['back'].append(f'{q} id {i}: removed at {first["t"]:.3f},'
                                      ' still in the queue')
        for d in dlv.get((q, i), []):
            if not d['doubt'] and (d['dc'] > first['dc'] or d['recv'] > first['t']):
                violations['back'].append(
                    f"{q} id {i} key {d['k']}: removed (delivery_count {first['dc']}),"
                    f" delivered again (delivery_count {d['dc']}, by {d['w']})")
        dlq = defs[q].dlq
        if dlq and (any(row.q == dlq for row in in_rows.get(first['k'], []))
                    or any(d['q'] == dlq and not d['doubt']
                           for d in dlv_key.get(first['k'], []))):
            violations['back'].append(f"{q} id {i} key {first['k']}: removed, and its copy"
                                      f" is in {dlq}")

    # double
    def lease_end(q, i, d1):
        """The earliest the lease of delivery d1 may have ended."""
        end = max([d1['until']] + ext.get((q, i, d1['rcpt']), []))
        sent = rel.get((q, i, d1['rcpt']))
        if sent:
            end = min(end, min(sent))
        return end

    for (q, i), ds in dlv.items():
        ds = sorted((d for d in ds if not d['doubt']), key=lambda d: (d['dc'], d['recv']))
        for a_i, d1 in enumerate(ds):
            deleted = any(x['ok'] and not x['doubt'] and x['rcpt'] == d1['rcpt']
                          for x in dels.get((q, i), []))
            if deleted:
                continue               # a later delivery is counted as back
            end = lease_end(q, i, d1)
            for d2 in ds[a_i + 1:]:
                if d2['dc'] == d1['dc'] or d2['recv'] < end:
                    fig['double_pairs'] += 1
                    violations['double'].append(
                        f"{q} id {i} key {d1['k']}: delivery_count {d1['dc']} to {d1['w']}"
                        f" (lease until {end:.3f}) and {d2['dc']} to {d2['w']}"
                        f" received at {d2['recv']:.3f}")

    check_groups(defs, att, dlv, calls, dels, rows, ids_seen, lease_end, violations, fig)
    check_dedup(defs, att, pubs, ids_seen, violations, fig)
    check_records(conn, defs, att, dlv, dels, ids_seen, violations, fig)

    # priorities: one dequeue returns the higher priority first
    pri_of = {k: es[0]['pri'] for k, es in att.items()}
    for (w, recv), ds in calls.items():
        ps = [pri_of.get(d['k']) for d in ds]
        if None not in ps and any(x < y for x, y in zip(ps, ps[1:])):
            violations['priority'].append(
                f"{ds[0]['q']}: one dequeue by {w} at {recv:.3f} returned priorities {ps}"
                f" (ids {[d['id'] for d in ds]})")
        if len(set(ps) - {None}) > 1:
            fig['pri_calls'] += 1

    # figures
    doubt = defaultdict(int)
    confirmed = defaultdict(int)
    for r in recs:
        (doubt if r.get('doubt') else confirmed)[r['op']] += 1
    doubt_keys = [k for k in att if k not in committed]
    fig['checked'] = len(committed)
    fig['doubt_keys'] = len(doubt_keys)
    fig['doubt_found'] = sum(1 for k in doubt_keys if k in keys_seen or k in key_deleted)
    fig['dlv'], fig['dlv_doubt'] = confirmed['dlv'], doubt['dlv']
    fig['removed'] = sum(1 for ds in dels.values() for d in ds if d['ok'] and not d['doubt'])
    fig['del_doubt'] = doubt['del']
    fig['ext'], fig['rel'] = confirmed['ext'], confirmed['rel']
    fig['ext_rel_doubt'] = doubt['ext'] + doubt['rel']
    fig['doubt_ops'] = sum(doubt.values())
    fig['pub'], fig['pub_doubt'] = confirmed['pub'], doubt['pub']
    fig['pub_hits'] = sum(1 for ps in pubs.values() for p in ps
                          if not p['doubt'] and p['n'] == 0 and subscribers(p['topic']))
    return fig


def check_groups(defs, att, dlv, calls, dels, rows, ids_seen, lease_end, violations, fig):
    """Ordered groups: order of deliveries and removals, exclusive leases,
    one message per group in a dequeue, every message in its own group."""
    # the group of each message (q, id) and of each key
    group_of_key = {}
    for k, es in att.items():
        if es[0]['g'] is not None:
            group_of_key[k] = es[0]['g']
    members = defaultdict(set)            # (q, g) -> committed ids
    group_of = {}                         # (q, id) -> g
    for (q, k), ids in ids_seen.items():
        g = group_of_key.get(k)
        if g is None or att[k][0]['q'] != q:
            continue                      # no group, or a dead-lettered copy
        for i in ids:
            group_of[(q, i)] = g
            members[(q, g)].add(i)
    for k, es in att.items():
        g = group_of_key.get(k)
        if g is None:
            continue
        for e in es:
            if e['id'] is not None:
                group_of[(e['q'], e['id'])] = g
                if not e['doubt']:
                    members[(e['q'], g)].add(e['id'])
    for r in rows:
        want = group_of_key.get(r.k) if att.get(r.k) and att[r.k][0]['q'] == r.q else None
        if r.g != want and r.k in att:
            violations['group'].append(f'{r.q} id {r.id} key {r.k}: group {r.g!r} in the'
                                       f' queue, enqueued with {want!r}')

    def left_at(q, i):
        """The earliest moment message (q, i) may have left its queue."""
        e = att_of.get((q, i))
        t = INF
        for d in dels.get((q, i), []):
            if d['ok']:
                t = min(t, d['sent'])
        if e is not None:
            ttl = e['ttl'] if e['ttl'] is not None else defs[q].ttl
            if ttl is not None:
                t = min(t, e['sent'] + ttl)
        maxd = defs[q].maxd
        if maxd is not None:
            for d in dlv.get((q, i), []):
                if d['dc'] >= maxd:
                    t = min(t, d['recv'])
        return t

    att_of = {}                          # (q, id) -> the attempt that made it
    for k, es in att.items():
        for e in sorted(es, key=lambda e: e['sent'], reverse=True):
            if e['id'] is not None:
                att_of[(e['q'], e['id'])] = e
    for (q, k), ids in ids_seen.items():  # copies of publishes: the first call
        if k in att and att[k][0]['id'] is None:
            for i in ids:
                att_of.setdefault((q, i), att[k][0])

    for (q, g), ids in members.items():
        ids = sorted(ids)
        fig['group_msgs'] += len(ids)
        fig['groups'] += 1
        # deliveries: every lower id had left before
        worst, worst_id = -INF, None      # the latest leaving among lower ids
        removed_before = -INF             # the latest confirmed removal sent, lower ids
        removed_id = None
        for i in ids:
            for d in dlv.get((q, i), []):
                fig['group_dlv'] += 1
                if d['recv'] < worst:
                    violations['group'].append(
                        f"{q} group {g}: id {i} delivered (delivery_count {d['dc']}, by"
                        f" {d['w']}{', in doubt' if d['doubt'] else ''}) at {d['recv']:.3f},"
                        f" before the lower id {worst_id} left"
                        + (' (it never did)' if worst == INF else f' (at {worst:.3f} at the'
                           ' earliest)'))
            ok = [d for d in dels.get((q, i), []) if d['ok'] and not d['doubt']]
            for d in ok:
                if d['t'] < removed_before:
                    violations['group'].append(
                        f"{q} group {g}: id {i} removed ({d['how']} confirmed at {d['t']:.3f})"
                        f" before the removal of the lower id {removed_id} was sent"
                        f" ({removed_before:.3f})")
            if ok:
                s = min(d['sent'] for d in ok)
                if s > removed_before:
                    removed_before, removed_id = s, i
            t = left_at(q, i)
            if t > worst:
                worst, worst_id = t, i
        # leases of different messages do not overlap
        ws = []
        for i in ids:
            for d in dlv.get((q, i), []):
                if d['doubt']:
                    continue
                # the lease ends at the latest when the message leaves
                # (removed, expired: then the next one is the head)
                end = min(lease_end(q, i, d), left_at(q, i))
                ws.append((d['recv'], end, i, d))
        ws.sort(key=lambda w: w[0])
        fig['group_leases'] += len(ws)
        for n, (r1, e1, i1, d1) in enumerate(ws):
            for r2, e2, i2, d2 in ws[n + 1:]:
                if r2 >= e1:
                    break
                if i2 != i1 and r1 < e2:
                    violations['group'].append(
                        f"{q} group {g}: ids {i1} and {i2} leased at once: {i1} by {d1['w']}"
                        f" from {r1:.3f} to {e1:.3f} at the earliest, {i2} by {d2['w']}"
                        f" received at {r2:.3f}")
    # one message per group in a dequeue
    for (w, recv), ds in calls.items():
        gs = defaultdict(list)
        for d in ds:
            g = group_of.get((d['q'], d['id']))
            if g is not None:
                gs[g].append(d['id'])
        for g, ids in gs.items():
            if len(ids) > 1:
                violations['group'].append(f"{ds[0]['q']} group {g}: one dequeue by {w} at"
                                           f" {recv:.3f} returned ids {ids}")


def check_dedup(defs, att, pubs, ids_seen, violations, fig):
    """Dedup keys: stored at most once per window; every call returned the
    stored message's id (or published nothing)."""
    eps = 0.01
    for k, es in att.items():
        if 'pk' in es[0] or not any(e['dk'] for e in es):
            continue
        q = es[0]['q']
        window = defs[q].window
        fig['dedup_keys'] += 1
        fig['dedup_attempts'] += len(es)
        fig['dedup_retries'] += sum(1 for e in es if e['try'])
        creation = {}
        for e in es:
            creation.setdefault(e['id'], e)
        seen = ids_seen.get((q, k), set())
        for i in seen - set(creation):
            violations['dedup'].append(f'{q} key {k}: id {i} stored, no call returned it')
        stored = sorted({i for i in seen if i in creation}
                        | {e['id'] for e in es if not e['doubt']},
                        key=lambda i: creation[i]['sent'])
        for x, y in zip(stored, stored[1:]):
            cx, cy = creation[x], creation[y]
            if cy['t'] - cx['sent'] < window - eps:
                violations['dedup'].append(
                    f"{q} key {k}: stored twice within the window of {window:g} s: id {x}"
                    f" (try {cx['try']}, {cx['sent']:.3f}..{cx['t']:.3f}) and id {y}"
                    f" (try {cy['try']}, {cy['sent']:.3f}..{cy['t']:.3f})")
            else:
                fig['dedup_again'] += 1
        for e in es:
            if e['doubt'] or creation[e['id']] is e:
                continue
            c = creation[e['id']]
            fig['dedup_hits'] += 1
            if e['sent'] - c['t'] > window + eps:
                violations['dedup'].append(
                    f"{q} key {k}: try {e['try']} at {e['sent']:.3f} returned id {e['id']},"
                    f" stored at {c['t']:.3f} at the latest, more than {window:g} s before")
            later = [y for y in stored if y != e['id'] and creation[y]['t'] < e['sent']
                     and creation[y]['sent'] > c['t']]
            if later:
                violations['dedup'].append(
                    f"{q} key {k}: try {e['try']} returned id {e['id']}, but id {later[-1]}"
                    f" was stored after it")
        if any(e['doubt'] for e in es) and any(e['try'] for e in es):
            fig['dedup_doubt_retried'] += 1

    for pk, ps in pubs.items():
        qs = subscribers(ps[0]['topic'])
        if not qs or not any(p['dk'] for p in ps):
            continue
        window = min(defs[q].window for q in qs)
        fig['pub_keys'] += 1
        if any(p['doubt'] for p in ps) and any(p['try'] for p in ps):
            fig['dedup_doubt_retried'] += 1
        conf_store = [p for p in ps if not p['doubt'] and p['n'] == len(qs)]
        for x, y in zip(conf_store, conf_store[1:]):
            if y['t'] - x['sent'] < window - eps:
                violations['dedup'].append(
                    f"publish key {pk}: stored twice within the window: try {x['try']}"
                    f" at {x['sent']:.3f} and try {y['try']} at {y['t']:.3f}")
        for p in ps:
            if p['doubt'] or p['n'] != 0:
                continue
            before = [e for e in ps if e is not p and e['n'] == len(qs) and e['sent'] < p['t']
                      and p['sent'] - e['t'] < window + eps]
            if not before:
                violations['dedup'].append(
                    f"publish key {pk}: try {p['try']} returned 0 (a dedup hit) with no"
                    f" publish of the key in the {window:g} s before")
        span = ps[-1]['t'] - ps[0]['sent']
        nstore = sum(1 for p in ps if p['n'] == len(qs))
        for q in qs:
            ids = ids_seen.get((q, copy_key(pk, q)), set())
            if len(ids) > max(1, nstore) or (len(ids) > 1 and span < window - eps):
                violations['dedup'].append(
                    f'publish key {pk}: {len(ids)} copies in {q} (ids {sorted(ids)}),'
                    f' {nstore} calls stored, all within {span:.1f} s')
    for pk, ps in pubs.items():
        qs = subscribers(ps[0]['topic'])
        if any(p['dk'] for p in ps) or not qs:
            continue
        for q in qs:
            ids = ids_seen.get((q, copy_key(pk, q)), set())
            if len(ids) > 1:
                violations['publish'].append(f'publish key {pk}: {len(ids)} copies in {q}'
                                             f' (ids {sorted(ids)})')


def check_records(conn, defs, att, dlv, dels, ids_seen, violations, fig):
    """The queue with a retention: after the drain every message has left,
    so broker.status must give each committed one its record, with the
    outcome of the confirmed removal, or one that a call in doubt, a ttl
    or max_deliveries explains."""
    q = JOB_QUEUE
    if q not in defs or defs[q].retention is None:
        return
    d = defs[q]
    msg = {}                              # id -> (key, attempt)
    for k, es in att.items():
        for e in es:
            if e['q'] == q:
                msg.setdefault(e['id'], (k, e))
    for (qq, k), ids in ids_seen.items():
        if qq == q:
            for i in ids:
                if i not in msg and k in att:
                    msg[i] = (k, att[k][0])
    if not msg:
        return
    status = {}
    for row in conn.execute(
            "SELECT id, state, delivery_count, result FROM broker.status(%s, %s::bigint[])",
            (q, sorted(msg))).fetchall():
        status[row[0]] = row[1:]
    for i, (k, e) in sorted(msg.items()):
        is_committed = (not e['doubt']) or ids_seen.get((q, k))
        st = status.get(i)
        ds = dels.get((q, i), [])
        conf = [x for x in ds if x['ok'] and not x['doubt']]
        if st is None:
            if is_committed:
                violations['records'].append(f'{q} id {i} key {k}: neither in the queue nor'
                                             ' recorded (broker.status gives no row)')
            continue
        fig['records'] += 1
        fig['rec_' + st[0]] += 1
        state, dc, result = st
        if conf:
            x = min(conf, key=lambda x: x['t'])
            want = REMOVED_STATE[x['how']]
            if state != want or result != x['res'] or dc != x['dc']:
                violations['records'].append(
                    f"{q} id {i} key {k}: {x['how']} confirmed (delivery_count {x['dc']},"
                    f" result {x['res']}), recorded {state} (delivery_count {dc},"
                    f" result {result})")
            continue
        maybe = [x for x in ds if x['ok']]
        ttl = e['ttl'] if e['ttl'] is not None else d.ttl
        if state in ('done', 'failed', 'deleted'):
            how = {'done': 'complete', 'failed': 'fail', 'deleted': 'delete'}[state]
            if any(x['how'] == how and x['res'] == result and x['dc'] == dc for x in maybe):
                continue
            if state == 'failed' and result is None and d.maxd is not None and \
                    max((x['dc'] for x in dlv.get((q, i), [])), default=0) >= d.maxd:
                continue
        elif state == 'expired' and ttl is not None:
            continue
        elif state in ('ready', 'leased', 'delayed'):
            continue                      # left after the drain: counted as stuck
        violations['records'].append(
            f"{q} id {i} key {k}: recorded {state} (delivery_count {dc}, result {result});"
            f" no confirmed removal, calls in doubt: "
            f"{[(x['how'], x['dc'], x['res']) for x in maybe] or 'none'}, ttl {ttl}")


def print_figures(crashes, f, rows, ndrained, drained, t_read):
    print(f'crashes survived:      {crashes}')
    print(f"messages enqueued:     {f['checked']} committed, {f['doubt_keys']} in doubt"
          f" ({f['doubt_found']} of them did commit)")
    print(f"messages checked:      {f['checked']}")
    print(f"deliveries:            {f['dlv']} committed, {f['dlv_doubt']} in doubt"
          f" ({sum(1 for r in drained if r['op'] == 'dlv')} by the final drain)")
    print(f"removals:              {f['removed']} committed, {f['del_doubt']} in doubt")
    print(f"extends, releases:     {f['ext']}, {f['rel']} ({f['ext_rel_doubt']} in doubt)")
    print(f"in-doubt operations:   {f['doubt_ops']}")
    print(f"ordered groups:        {f['group_msgs']} messages in {f['groups']} groups,"
          f" {f['group_dlv']} deliveries checked for order, {f['group_leases']} leases"
          f" checked for overlaps")
    print(f"dedup keys:            {f['dedup_keys']} keys, {f['dedup_attempts']} calls,"
          f" {f['dedup_retries']} retries: {f['dedup_hits']} returned the stored id,"
          f" {f['dedup_again']} stored again after the window;"
          f" {f['dedup_doubt_retried']} retried after a call in doubt;"
          f" {f['pub_keys']} publish keys")
    print(f"publishes:             {f['pub']} confirmed ({f['pub_hits']} dedup hits,"
          f" {f['pub_nowhere']} keys to no queue), {f['pub_doubt']} in doubt"
          f" (of the keys no confirmed call decided, {f['pub_doubt_all']} with all copies,"
          f" {f['pub_doubt_none']} with none)")
    states = ', '.join(f"{f[k]} {k[4:]}" for k in sorted(f) if k.startswith('rec_'))
    print(f"job records:           {f['records']} checked ({states or 'none'})")
    print(f"dequeues of mixed priorities: {f['pri_calls']}")
    print(f"rows before the drain: {len(rows)}, drained {ndrained}")
    stale = sum(1 for row in rows if row.exp is not None and row.exp < t_read - 10)
    print(f"expired over 10 s ago, still on disk: {stale}"
          + (' (the reaper does not remove them)' if stale else ''))
    print(f"covered: {f['group_dlv']} group deliveries,"
          f" {f['dedup_hits'] + f['pub_hits']} dedup hits, {f['pub']} publishes,"
          f" {f['rec_done']} done, {f['rec_failed']} failed")


if __name__ == '__main__':
    sys.exit(main())
