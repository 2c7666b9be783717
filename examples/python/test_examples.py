"""Checks the Python examples against a server (run by test.sh after setup.sql
and grants.sql): the application connects as shop_app, the workers as
shop_worker.  Prints "ok - ..." / "not ok - ..." lines; exits 1 if one failed."""
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from decimal import Decimal

import psycopg

import consume
import jobs
import produce
import pubsub

failed = False


def check(cond, desc):
    global failed
    print(("ok - " if cond else "not ok - ") + desc, flush=True)
    failed |= not cond


def app(**kw):
    return psycopg.connect("user=shop_app", **kw)


def worker(**kw):
    return psycopg.connect("user=shop_worker", autocommit=True, **kw)


owner = psycopg.connect(autocommit=True)


def one(sql, *args):
    return owner.execute(sql, args).fetchone()[0]


def run_consumer(queue, handle, wait=timedelta(seconds=0.5), **kw):
    """consume() in a thread as shop_worker; returns (thread, stop event)."""
    stop = threading.Event()

    def run():
        with worker() as conn:
            conn.execute("SET broker.consumer = 'test-consumer'")
            consume.consume(conn, queue, handle, wait=wait, stop=stop.is_set, **kw)

    t = threading.Thread(target=run)
    t.start()
    return t, stop


# a clean slate (the test may run again on the same database)
owner.execute("TRUNCATE shop_orders")
for q in ("orders", "orders_dead", "billing", "audit", "thumbnails"):
    owner.execute("SELECT broker.purge_queue(%s)", (q,))

# --- produce in a business transaction -------------------------------------------

owner.execute("INSERT INTO shop_stock VALUES ('widget', 1), ('gadget', 5) "
              "ON CONFLICT (item) DO UPDATE SET quantity = excluded.quantity")
with app() as conn:
    order_id = produce.place_order(conn, "alice", "widget", Decimal("19.90"))
    try:
        produce.place_order(conn, "bob", "widget", Decimal("19.90"))
        out_of_stock = False
    except psycopg.errors.CheckViolation:
        out_of_stock = True
check(out_of_stock, "produce: the second widget order fails (out of stock)")
check(one("SELECT count(*) FROM shop_orders") == 1, "produce: only the first order row exists")
with worker() as conn:
    rows = conn.execute("SELECT id, payload FROM broker.dequeue('orders', 10)").fetchall()
    for msg_id, _ in rows:
        conn.execute("SELECT broker.delete('orders', %s::bigint)", (msg_id,))
check([payload["order_id"] for _, payload in rows] == [order_id],
      "produce: exactly one event, the committed order's")

# --- consume with long-poll and receipts ------------------------------------------

acked_before = one("SELECT coalesce(sum(deleted), 0) FROM broker.consumers"
                   " WHERE consumer = 'test-consumer' AND queue = 'orders'")
seen = []


def first_only(order, keep_alive):
    seen.append((time.monotonic(), order))
    stop.set()                  # one message is enough: leave after this batch


def wakeups():
    return owner.execute("SELECT wakeups, empty_wakeups FROM broker.waiters('orders')").fetchone()


def wait_until(cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


# a consumer that waits up to 20 s in one dequeue (the default of consume())
woken_before = wakeups()
t, stop = run_consumer("orders", first_only, wait=timedelta(seconds=20))
waiting = wait_until(lambda: one("SELECT waiting FROM broker.waiters('orders')") == 1, 30)
with app() as conn:
    committed = time.monotonic()
    order_id = produce.place_order(conn, "carol", "gadget", Decimal("5.00"))
wait_until(lambda: seen, 30)
stop.set()
t.join()
woken = tuple(a - b for a, b in zip(wakeups(), woken_before))
check(waiting and len(seen) == 1 and seen[0][1]["order_id"] == order_id,
      "consume: the waiting consumer got the order committed during its wait")
check(waiting and woken == (1, 0),
      "consume: long-poll: the commit woke the waiting dequeue, which took the message "
      f"(wake-ups {woken[0]}, empty {woken[1]}; "
      f"{(seen[0][0] - committed) * 1000 if seen else float('nan'):.0f} ms after the commit)")
check(one("SELECT total FROM broker.metrics('orders')") == 0,
      "consume: the message was deleted with its receipt")

# long work: a 1 s lease, 3 s of work, kept alive with extend_lease; a second
# consumer runs meanwhile and must not get the message
with app() as conn:
    produce.place_order(conn, "dave", "gadget", Decimal("5.00"))
handled = []


def slow(order, keep_alive):
    handled.append(order["order_id"])
    for _ in range(40):
        time.sleep(0.1)
        keep_alive()


t1, stop1 = run_consumer("orders", slow, lease=timedelta(seconds=2))
wait_until(lambda: handled, 30)
t2, stop2 = run_consumer("orders", slow, lease=timedelta(seconds=2))
time.sleep(4.5)
stop1.set(), stop2.set()
t1.join(), t2.join()
check(len(handled) == 1, f"consume: extend_lease kept the 2 s lease through 4 s of work, "
                         f"a second consumer did not get the message (handled {len(handled)} time(s))")
check(one("SELECT total FROM broker.metrics('orders')") == 0,
      "consume: and the message was deleted after the long work")

# a failure: released with a delay, delivered again, then done
with app() as conn:
    produce.place_order(conn, "erin", "gadget", Decimal("5.00"))
attempts = []


def flaky(order, keep_alive):
    attempts.append(time.monotonic())
    if len(attempts) == 1:
        raise RuntimeError("payment service unavailable")


t, stop = run_consumer("orders", flaky, retry_delay=timedelta(seconds=1))
deadline = time.monotonic() + 10
while len(attempts) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.3)
stop.set()
t.join()
check(len(attempts) == 2 and attempts[1] - attempts[0] >= 0.9,
      "consume: a failed message was released and delivered again after the retry delay")
check(one("SELECT total FROM broker.metrics('orders')") == 0,
      "consume: the retried message was deleted")
acked = one("SELECT sum(deleted) FROM broker.consumers WHERE consumer = 'test-consumer'"
            " AND queue = 'orders'")
check(acked - acked_before == 3,
      "consume: broker.consumers counts the three acknowledgements of 'test-consumer'")

# --- publish/subscribe -------------------------------------------------------------

with app(autocommit=True) as conn:
    paid = pubsub.publish(conn, "orders.eu.paid", {"order_id": 1})
    created = pubsub.publish(conn, "orders.us.created", {"order_id": 2})
    nobody = pubsub.publish(conn, "orders", {"order_id": 3})
check((paid, created, nobody) == (2, 1, 1),
      f"pubsub: copies per topic: paid 2, created 1, bare 'orders' 1 (audit's '#') "
      f"(got {paid}, {created}, {nobody})")
with worker() as conn:
    billing = pubsub.receive(conn, "billing")
    audit = pubsub.receive(conn, "audit")
check(billing == [("orders.eu.paid", {"order_id": 1})], "pubsub: billing got the paid order only")
check(sorted(t for t, _ in audit) == ["orders", "orders.eu.paid", "orders.us.created"],
      "pubsub: audit got every topic, with the topic in the headers")

# --- jobs ------------------------------------------------------------------------------

with app(autocommit=True) as client:
    good = jobs.submit(client, {"image": "cat.png", "width": 128})
    bad = jobs.submit(client, {"image": "dog.png", "width": 5000})
    check(jobs.status(client, good)["state"] == "ready", "jobs: a submitted job is ready")
    worker_done = []

    def work():
        with worker() as conn:
            for _ in range(2):
                worker_done.append(jobs.work_one(conn, wait=timedelta(seconds=5)))

    w = threading.Thread(target=work)
    w.start()
    done = jobs.wait_for(client, good)
    failed_job = jobs.wait_for(client, bad)
    w.join()
    check(done["state"] == "done" and done["result"] == {"url": "https://cdn.example/cat-128.png"},
          f"jobs: polled until done, with the result ({done['state']} {done['result']})")
    check(failed_job["state"] == "failed" and "width" in failed_job["result"]["error"],
          f"jobs: bad input ends failed, with the error ({failed_job['result']})")
    check(jobs.status(client, 999999999) is None, "jobs: an unknown id has no status")

# --- the scripts' command lines ----------------------------------------------------------

env = dict(os.environ, PGUSER="shop_app")
out = subprocess.run([sys.executable, "produce.py", "frank", "gadget", "7.50"],
                     env=env, capture_output=True, text=True)
check(out.returncode == 0 and "placed" in out.stdout, f"produce.py: {out.stdout.strip()}")
out = subprocess.run([sys.executable, "produce.py", "gina", "widget", "7.50"],
                     env=env, capture_output=True, text=True)
check(out.returncode == 1 and "out of stock" in out.stderr, f"produce.py: {out.stderr.strip()}")
out = subprocess.run([sys.executable, "jobs.py", "bird.png", "64"],
                     env=dict(os.environ, PGUSER="shop_worker"), capture_output=True, text=True)
check(out.returncode == 1 and "permission denied for queue \"thumbnails\"" in out.stderr,
      "jobs.py as shop_worker: refused, it may not produce")
out = subprocess.run([sys.executable, "jobs.py", "bird.png", "64"], capture_output=True, text=True)
check(out.returncode == 0 and "done {'url': 'https://cdn.example/bird-64.png'}" in out.stdout,
      f"jobs.py: {out.stdout.strip()}")

sys.exit(1 if failed else 0)
