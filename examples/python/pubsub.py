"""Publish/subscribe: setup.sql subscribed `billing` to 'orders.*.paid' and
`audit` to '#'.  A publish puts one copy into every queue with a matching
pattern, in the publisher's transaction; each copy's headers carry the topic.

    python3 pubsub.py eu 42       # publish orders.eu.paid, then read both queues
"""
import sys

import psycopg
from psycopg.types.json import Jsonb


def publish(conn, topic, payload):
    """Publish `payload` on `topic`; return how many queues got a copy."""
    return conn.execute("SELECT broker.publish(%s, %s)", (topic, Jsonb(payload))).fetchone()[0]


def receive(conn, queue, max_messages=100):
    """Take what is in `queue` and acknowledge it in the same transaction:
    return [(topic, payload)]."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, headers->>'topic', payload FROM broker.dequeue(%s, %s)",
            (queue, max_messages),
        ).fetchall()
        conn.execute("SELECT broker.delete(%s, %s::bigint[])", (queue, [r[0] for r in rows]))
    return [(topic, payload) for _, topic, payload in rows]


if __name__ == "__main__":
    region, order_id = sys.argv[1], int(sys.argv[2])
    with psycopg.connect(autocommit=True) as conn:
        print("copies:", publish(conn, f"orders.{region}.paid", {"order_id": order_id}))
        for queue in ("billing", "audit"):
            print(queue, receive(conn, queue))
