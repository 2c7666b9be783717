#!/usr/bin/python3
"""check.py: checks the broker against the logs of load.py after a crash loop.

Run it once the load is stopped and the server is up, before any further
restart (a restart rebuilds the low-water marks and would hide messages
that dequeue no longer finds).  It

 1. waits until no message of the crash-loop queues is leased or delayed;
 2. checks the gauges: per queue, broker.metrics()' ready, leased, delayed
    and total equal the counts of the rows in broker.messages (total also
    counts exhausted messages, those at max_deliveries that a dequeue has
    not dead-lettered yet); and the low-water marks: no live message has
    an id below its queue's mark (broker.waiters()), or it is *stuck*;
 3. reads every row of the queues;
 4. drains every queue with dequeue (deleting what it takes), round after
    round until nothing comes back, and then finds nothing left: no row,
    metrics' ready and total 0, and every message that was ready before the
    drain was returned by it or has expired meanwhile (else it is *stuck*);
 5. checks the logs against what it read and drained:
    lost    a committed enqueue whose message is in no queue (nor, as a
            copy, in its dead-letter queue), was never deleted (a delete
            counts also when in doubt), has no ttl that has passed, and
            was not dropped at max_deliveries (a queue without dead-letter
            queue, a delivery with delivery_count >= max_deliveries);
    back    a message deleted (delete confirmed, true) that is still in a
            queue, was delivered again (a committed delivery with a higher
            delivery_count or received after the delete), deleted twice,
            or whose copy is in the dead-letter queue;
    double  two committed deliveries of one message under valid leases:
            test/tools/broker_sim.c's rule (same delivery_count, or the later
            one received before the earlier one's lease ended); the lease
            ends at lease_until, later if an extend_lease was confirmed,
            at the time a release was sent if there was one (even in doubt);
            a delivery in doubt is left out;
    other   a message in a queue or delivered that no enqueue (even in
            doubt) produced, or found in a queue that is neither its own
            nor its dead-letter queue.
Prints the figures and the line
  crash loop: N crashes, M messages checked, L lost, B back, D double, S stuck, G gauge mismatches
and exits 1 on any violation.  --probe does step 2 alone (it can run under
load, e.g. before each crash) and appends what it finds to
<logdir>/probe.jsonl, which the final check counts in; --redrain drains once
more, e.g. after a restart, and says what came back.

Usage: check.py --logdir DIR [--crashes N] [--dsn DSN]
       check.py --probe [--logdir DIR]
       check.py --redrain [--logdir DIR]
"""

import argparse
import glob
import json
import os
import sys
import time
from collections import defaultdict

import psycopg

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import QUEUES  # noqa: E402

# Every message of the given queues, with the segment table that holds it.
ROWS = """
SELECT d.name, m.id, m.payload->>'k', m.delivery_count,
       extract(epoch FROM m.vt)::float8, extract(epoch FROM m.expires_at)::float8,
       m.receipt, m.tableoid::regclass::text
  FROM (SELECT tableoid, * FROM broker.messages_0
        UNION ALL SELECT tableoid, * FROM broker.messages_1
        UNION ALL SELECT tableoid, * FROM broker.messages_2
        UNION ALL SELECT tableoid, * FROM broker.messages_3) m
  JOIN broker.queue_defs d USING (queue_id)
 WHERE d.name = ANY (%s)"""


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


def queue_defs(conn):
    """Settings of the crash-loop queues: name -> (max_deliveries, dlq, ttl s)."""
    rows = conn.execute(
        "SELECT queue, max_deliveries, dead_letter_queue,"
        " extract(epoch FROM default_ttl)::float8 FROM broker.queues"
        " WHERE queue = ANY (%s)", (list(QUEUES),)).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def wait_quiet(conn, names, secs):
    """Waits until no live message is leased or delayed; False on timeout."""
    deadline = time.time() + secs
    while time.time() < deadline:
        busy = conn.execute(
            "SELECT count(*) FROM broker.messages m JOIN broker.queue_defs d USING (queue_id)"
            " WHERE d.name = ANY (%s) AND m.vt > clock_timestamp()"
            " AND (m.expires_at IS NULL OR m.expires_at > clock_timestamp())",
            (names,)).fetchone()[0]
        if busy == 0:
            return True
        time.sleep(0.5)
    return False


def classify(rows, defs, now):
    """Counts rows per queue as metrics does at time now."""
    c = defaultdict(lambda: dict(ready=0, leased=0, delayed=0, total=0, exhausted=0))
    for q, _id, _k, dc, vt, exp, rcpt, _seg in rows:
        if exp is not None and exp <= now:
            continue
        x = c[q]
        x['total'] += 1
        maxd = defs[q][0]
        if vt > now:
            x['leased' if rcpt is not None else 'delayed'] += 1
        elif maxd is None or dc < maxd:
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
            rows = conn.execute(ROWS, (names,)).fetchall()
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

    No live message may have an id below the mark (docs/design.md, the
    low-water mark); dequeue scans from it, so such a message is stuck
    until a restart resets the marks.  The marks are read first, the rows
    with a later snapshot, so a message deleted meanwhile is not seen."""
    marks = lwm(conn, names)
    rows = conn.execute(
        ROWS + " AND m.id < (SELECT w.low_water_mark FROM broker.waiters(d.name) w)"
        " AND (m.expires_at IS NULL OR m.expires_at > clock_timestamp())",
        (names,)).fetchall()
    return [(q, i, f'{q} id {i} key {k}: below the low-water mark {marks.get(q)}'
             f' (delivery_count {dc}, in {seg})')
            for q, i, k, dc, vt, exp, rcpt, seg in rows if i < (marks.get(q) or 0)]


def probe(conn, defs, logdir):
    """Checks the gauges and the low-water marks (under load too); appends
    what it finds to logdir/probe.jsonl, for the final check."""
    found = [{'kind': 'gauges', 'msg': b} for b in check_gauges(conn, defs)]
    found += [{'kind': 'stuck', 'q': q, 'id': i, 'msg': m}
              for q, i, m in below_lwm(conn, list(defs))]
    if logdir and found:
        with open(os.path.join(logdir, 'probe.jsonl'), 'a') as f:
            for r in found:
                r['t'] = time.time()
                f.write(json.dumps(r) + '\n')
            f.flush()
            os.fsync(f.fileno())
    return found


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
                    recv = time.time()
                    gone = {r[0] for r in conn.execute(
                        "SELECT * FROM broker.delete(%s, %s::bigint[])",
                        (q, [r[0] for r in rows])).fetchall()} if rows else set()
                t = time.time()
                for i, k, dc, until, rcpt in rows:
                    out.append({'op': 'dlv', 'doubt': False, 'q': q, 'id': i, 'k': k,
                                'dc': dc, 'recv': recv, 'until': until, 'rcpt': rcpt,
                                'w': 'drain'})
                    out.append({'op': 'del', 'doubt': False, 'q': q, 'id': i, 'k': k,
                                'rcpt': rcpt, 'dc': dc, 'ok': i in gone, 't': t})
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
    """Every record of every client log of logdir."""
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dsn', default='')
    ap.add_argument('--logdir')
    ap.add_argument('--crashes', type=int, default=0)
    ap.add_argument('--quiet-timeout', type=float, default=60)
    ap.add_argument('--probe', action='store_true')
    ap.add_argument('--redrain', action='store_true')
    a = ap.parse_args()

    conn = connect(a.dsn)
    defs = queue_defs(conn)
    names = sorted(defs)
    dlqs = {d[1] for d in defs.values() if d[1]}

    if a.probe:
        found = probe(conn, defs, a.logdir)
        for r in found:
            print(f"{r['kind']}: {r['msg']}")
        return 1 if found else 0

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
        with open(path) as f:
            for r in map(json.loads, f):
                if r['kind'] == 'stuck':
                    if (r['q'], r['id']) in probed:
                        continue
                    probed.add((r['q'], r['id']))
                violations[r['kind']].append('during the run: ' + r['msg'])

    # 1, 2: quiet, then gauges and low-water marks
    if not wait_quiet(conn, names, a.quiet_timeout):
        violations['stuck'].append(
            f'messages still leased or delayed after {a.quiet_timeout:.0f} s')
    for b in check_gauges(conn, defs):
        violations['gauges'].append('before the drain: ' + b)
    for q, i, m in below_lwm(conn, names):
        if (q, i) not in probed:
            probed.add((q, i))
            violations['stuck'].append(m)

    # 3: every row
    rows = conn.execute(ROWS, (names,)).fetchall()
    t_read = time.time()
    marks = lwm(conn, names)
    ready_before = {(q, i): (q, i, k, dc, vt, exp, rcpt, seg)
                    for q, i, k, dc, vt, exp, rcpt, seg in rows
                    if (exp is None or exp > t_read) and vt <= t_read
                    and (defs[q][0] is None or dc < defs[q][0])}

    # 4: drain; nothing may be left
    drained = []
    ndrained = drain(conn, names, dlqs, drained)
    keep(a.logdir, drained)
    t_drained = time.time()
    left = conn.execute(ROWS + " AND (m.expires_at IS NULL OR m.expires_at > clock_timestamp())",
                        (names,)).fetchall()
    got = {(r['q'], r['id']) for r in drained if r['op'] == 'dlv'}
    reported = set(probed)
    for q, i, k, dc, vt, exp, rcpt, seg in ready_before.values():
        if (q, i) not in got and (exp is None or exp > t_drained) and (q, i) not in reported:
            reported.add((q, i))
            violations['stuck'].append(
                f'{q} id {i} key {k}: ready (delivery_count {dc}) but not returned by dequeue;'
                f' in {seg}, low-water mark {marks.get(q)}')
    listed = defaultdict(int)            # queue -> reported messages left
    for q, i, k, dc, vt, exp, rcpt, seg in left:
        if (q, i) not in reported:
            reported.add((q, i))
            violations['stuck'].append(f'{q} id {i} key {k}: left after the drain'
                                       f' (delivery_count {dc}, in {seg})')
        listed[q] += 1
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
    enq = {}
    dlv = defaultdict(list)              # (q, id) -> deliveries
    dlv_key = defaultdict(list)          # key -> deliveries
    dels = defaultdict(list)             # (q, id) -> deletes
    key_deleted = defaultdict(list)      # key -> deletes that may have deleted
    ext = defaultdict(list)              # (q, id, rcpt) -> confirmed new lease ends
    rel = defaultdict(list)              # (q, id, rcpt) -> release send times
    keys_seen = set()
    for r in recs:
        op = r['op']
        if op == 'enq':
            enq[r['k']] = r
        elif op == 'dlv':
            dlv[(r['q'], r['id'])].append(r)
            dlv_key[r['k']].append(r)
            keys_seen.add(r['k'])
        elif op == 'del':
            dels[(r['q'], r['id'])].append(r)
            if r['ok']:
                key_deleted[r['k']].append(r)
        elif op == 'ext':
            if not r['doubt'] and r['until'] is not None:
                ext[(r['q'], r['id'], r['rcpt'])].append(r['until'])
        elif op == 'rel':
            if r['ok']:
                rel[(r['q'], r['id'], r['rcpt'])].append(r['sent'])
    in_rows = defaultdict(list)          # key -> rows
    for row in rows:
        in_rows[row[2]].append(row)
        keys_seen.add(row[2])

    # lost
    committed = [e for e in enq.values() if not e['doubt']]
    for e in committed:
        k, q = e['k'], e['q']
        maxd, dlq, dttl = defs[q]
        where = {row[0] for row in in_rows.get(k, [])}
        if where:
            if not where <= {q, dlq}:
                violations['other'].append(f'key {k} of {q} found in {sorted(where)}')
            continue
        if key_deleted.get(k):
            continue
        ttl = e['ttl'] if e['ttl'] is not None else dttl
        if ttl is not None and e['t'] + ttl <= t_read:
            continue
        if maxd is not None and dlq is None and \
                max((d['dc'] for d in dlv.get((q, e['id']), [])), default=0) >= maxd:
            continue
        hist = ', '.join(f"dc {d['dc']} by {d['w']}{' (in doubt)' if d['doubt'] else ''}"
                         for d in dlv.get((q, e['id']), []))
        violations['lost'].append(f"{q} id {e['id']} key {k} (ttl {ttl}, delay"
                                  f" {e['delay']}): gone; deliveries: {hist or 'none'}")

    # phantoms
    for k in keys_seen:
        if k not in enq:
            violations['other'].append(f'key {k} in a queue or delivered, never enqueued')

    # back
    for (q, i), ds in dels.items():
        ok = [d for d in ds if d['ok'] and not d['doubt']]
        if not ok:
            continue
        if len(ok) > 1:
            violations['back'].append(f'{q} id {i}: deleted {len(ok)} times')
        first = min(ok, key=lambda d: d['t'])
        for row in rows if first['t'] < t_read else []:
            if row[0] == q and row[1] == i:
                violations['back'].append(f'{q} id {i}: deleted at {first["t"]:.3f},'
                                          ' still in the queue')
        for d in dlv.get((q, i), []):
            if not d['doubt'] and (d['dc'] > first['dc'] or d['recv'] > first['t']):
                violations['back'].append(
                    f"{q} id {i} key {d['k']}: deleted (delivery_count {first['dc']}),"
                    f" delivered again (delivery_count {d['dc']}, by {d['w']})")
        dlq = defs[q][1]
        if dlq and (any(row[0] == dlq for row in in_rows.get(first['k'], []))
                    or any(d['q'] == dlq and not d['doubt']
                           for d in dlv_key.get(first['k'], []))):
            violations['back'].append(f"{q} id {i} key {first['k']}: deleted, and its copy"
                                      f" is in {dlq}")

    # double
    ndouble_pairs = 0
    for (q, i), ds in dlv.items():
        ds = sorted((d for d in ds if not d['doubt']), key=lambda d: (d['dc'], d['recv']))
        for a_i, d1 in enumerate(ds):
            deleted = any(x['ok'] and not x['doubt'] and x['rcpt'] == d1['rcpt']
                          for x in dels.get((q, i), []))
            if deleted:
                continue               # a later delivery is counted as back
            end = max([d1['until']] + ext.get((q, i, d1['rcpt']), []))
            sent = rel.get((q, i, d1['rcpt']))
            if sent:
                end = min(end, min(sent))
            for d2 in ds[a_i + 1:]:
                if d2['dc'] == d1['dc'] or d2['recv'] < end:
                    ndouble_pairs += 1
                    violations['double'].append(
                        f"{q} id {i} key {d1['k']}: delivery_count {d1['dc']} to {d1['w']}"
                        f" (lease until {end:.3f}) and {d2['dc']} to {d2['w']}"
                        f" received at {d2['recv']:.3f}")

    # figures
    doubt = defaultdict(int)
    confirmed = defaultdict(int)
    for r in recs:
        (doubt if r.get('doubt') else confirmed)[r['op']] += 1
    doubt_enq = [e for e in enq.values() if e['doubt']]
    doubt_found = sum(1 for e in doubt_enq if e['k'] in keys_seen or e['k'] in key_deleted)
    ndel = sum(1 for ds in dels.values() for d in ds if d['ok'] and not d['doubt'])
    print(f'crashes survived:      {a.crashes}')
    print(f'messages enqueued:     {len(committed)} committed, {len(doubt_enq)} in doubt'
          f' ({doubt_found} of them did commit)')
    print(f'messages checked:      {len(committed)}')
    print(f"deliveries:            {confirmed['dlv']} committed, {doubt['dlv']} in doubt"
          f" ({sum(1 for r in drained if r['op'] == 'dlv')} by the final drain)")
    print(f"deletes:               {ndel} committed, {doubt['del']} in doubt")
    print(f"extends, releases:     {confirmed['ext']}, {confirmed['rel']}"
          f" ({doubt['ext'] + doubt['rel']} in doubt)")
    print(f"in-doubt operations:   {sum(doubt.values())}")
    print(f"rows before the drain: {len(rows)}, drained {ndrained}")
    stale = sum(1 for row in rows if row[5] is not None and row[5] < t_read - 10)
    print(f"expired over 10 s ago, still on disk: {stale}"
          + (' (the reaper does not remove them)' if stale else ''))
    for kind in ('lost', 'back', 'double', 'stuck', 'gauges', 'other'):
        for v in violations[kind][:50]:
            print(f'{kind}: {v}')
        if len(violations[kind]) > 50:
            print(f'{kind}: ... {len(violations[kind]) - 50} more')
    line = (f"crash loop: {a.crashes} crashes, {len(committed)} messages checked,"
            f" {len(violations['lost'])} lost, {len(violations['back'])} back,"
            f" {ndouble_pairs} double, {len(violations['stuck'])} stuck,"
            f" {len(violations['gauges'])} gauge mismatches")
    if violations['other']:
        line += f", {len(violations['other'])} other"
    print(line)
    return 1 if any(violations.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
