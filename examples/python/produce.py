"""Produce in a business transaction: the order row, the stock reservation and
the order's event commit together, or none of them does.

    python3 produce.py alice widget 19.90
"""
import sys
from decimal import Decimal

import psycopg
from psycopg.types.json import Jsonb


def place_order(conn, customer, item, total):
    """Store an order, reserve its item and enqueue its event; return the order id.

    Raises psycopg.errors.CheckViolation when the item is out of stock: the
    transaction rolls back, and neither the order nor its event exists.
    """
    with conn.transaction():
        order_id = conn.execute(
            "INSERT INTO shop_orders (customer, item, total) VALUES (%s, %s, %s) RETURNING id",
            (customer, item, total),
        ).fetchone()[0]
        conn.execute(
            "SELECT broker.enqueue('orders', %s)",
            (Jsonb({"order_id": order_id, "customer": customer, "item": item,
                    "total": str(total)}),),
        )
        # quantity has CHECK (quantity >= 0): out of stock raises, and the
        # INSERT and the enqueue above roll back with it
        conn.execute("UPDATE shop_stock SET quantity = quantity - 1 WHERE item = %s", (item,))
    return order_id


if __name__ == "__main__":
    customer, item, total = sys.argv[1], sys.argv[2], Decimal(sys.argv[3])
    # connection settings come from PGHOST, PGPORT, PGUSER, PGDATABASE
    with psycopg.connect() as conn:
        try:
            print("order", place_order(conn, customer, item, total), "placed")
        except psycopg.errors.CheckViolation:
            sys.exit(f"{item} is out of stock: no order, no event")
