"""External charge: charge a card, then mark the order charged.

Problem: the provider may charge and the worker die before anything is
recorded. A retry must not charge again, and must still mark the order.

Guarantee: exactly once, as the provider records it. @idempotent claims the
key "charge:<order>" in the ledger before calling. After a crash during
the call, `find_charge` asks the provider whether the charge exists, and
the provider's own idempotency key (current_effect_key()) drops a repeated
request anyway. The order row is then updated with @transactional_destroy.
"""

from __future__ import annotations

import urllib.error

from psycopg import sql

from reliable_jobs import (
    App,
    JobContext,
    JobFunction,
    current_effect_key,
    idempotent,
    transactional_destroy,
)

from . import client
from .tables import PATTERN_RETRY, table


def find_charge(order_id: int, amount: int) -> str | None:
    """Return the id of the order's charge at the provider, or None."""
    charges = client.get(f"charges?order={order_id}")["data"]
    return charges[0]["id"] if charges else None


@idempotent(
    key="charge:{order_id}",
    check=find_charge,
    # A timeout may hide a charge that went through.
    uncertain_errors=(TimeoutError, urllib.error.URLError),
)
def charge(order_id: int, amount: int) -> str:
    response = client.post(
        "charges", {"order": order_id, "amount": amount}, idempotency_key=current_effect_key()
    )
    return str(response["id"])


def register(app: App) -> JobFunction[[int, int], None]:
    @app.job(name="charge_order", retry=PATTERN_RETRY)
    @transactional_destroy
    def charge_order(ctx: JobContext, order_id: int, amount: int) -> None:
        charge_id = charge(order_id, amount)
        ctx.connection.execute(
            sql.SQL(
                "INSERT INTO {} (id, charge_id, updates) VALUES (%s, %s, 1) "
                "ON CONFLICT (id) DO UPDATE SET charge_id = excluded.charge_id, "
                "updates = orders.updates + 1"
            ).format(table(ctx.schema, "orders")),
            (order_id, charge_id),
        )

    return charge_order
