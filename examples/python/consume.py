"""Consume with long-poll and receipts.

Each batch is taken under a lease in its own transaction (autocommit), the
work runs outside any transaction, and each message is deleted with its
receipt afterwards.  Long work keeps its lease alive with extend_lease.  A
handler that raises hands its message back with a delay (release); after
max_deliveries the queue moves it to its dead-letter queue.

    python3 consume.py            # print the order events, until Ctrl-C
"""
import time
from datetime import timedelta

import psycopg


class LeaseLost(Exception):
    """The lease ran out and another consumer took the message: stop working on it."""


def consume(conn, queue, handle, *, batch=10, lease=timedelta(seconds=30),
            wait=timedelta(seconds=20), retry_delay=timedelta(seconds=10), stop=None):
    """Take messages from `queue` and call handle(payload, keep_alive) for each.

    `conn` must be in autocommit mode: the dequeue's transaction commits the
    lease, and each delete is a transaction of its own.  keep_alive() extends
    the lease of the message being handled; call it now and then during long
    work (it talks to the server at most every lease/3).  Runs until
    stop() returns true (checked after each wait of at most `wait`).
    """
    while not (stop and stop()):
        messages = conn.execute(
            "SELECT id, receipt, payload FROM broker.dequeue(%s, %s, lease => %s, wait => %s)",
            (queue, batch, lease, wait),
        ).fetchall()
        for msg_id, receipt, payload in messages:
            last_extended = time.monotonic()

            def keep_alive():
                nonlocal last_extended
                if time.monotonic() - last_extended < lease.total_seconds() / 3:
                    return
                until = conn.execute(
                    "SELECT broker.extend_lease(%s, %s, %s, %s)", (queue, msg_id, receipt, lease)
                ).fetchone()[0]
                if until is None:
                    raise LeaseLost(msg_id)
                last_extended = time.monotonic()

            try:
                handle(payload, keep_alive)
            except LeaseLost:
                continue            # another consumer has it now: leave it alone
            except Exception as exc:
                print(f"message {msg_id} failed ({exc!r}); retrying in {retry_delay}")
                conn.execute("SELECT broker.release(%s, %s, %s, delay => %s)",
                             (queue, msg_id, receipt, retry_delay))
                continue
            # done: acknowledge.  False means the lease ran out and the message
            # was delivered again meanwhile; its new holder acknowledges it.
            conn.execute("SELECT broker.delete(%s, %s, %s)", (queue, msg_id, receipt))


if __name__ == "__main__":
    def show(order, keep_alive):
        print("order", order["order_id"], "for", order["customer"], order["total"])

    with psycopg.connect(autocommit=True) as conn:
        # name this consumer in broker.consumers
        conn.execute("SET broker.consumer = 'orders-printer'")
        try:
            consume(conn, "orders", show)
        except KeyboardInterrupt:
            pass    # the messages of an interrupted batch come back when their lease runs out
