"""Several external steps: reserve stock, charge, ship.

Problem: a crash between two steps must resume at the next step, without
repeating the ones done.

Guarantee: each step exactly once. Each step is an @idempotent effect with
its own key and its own check against the provider. On a retry, the steps
already done return their stored results without calling; the first step
not done is resolved by its check, or called. The final write goes with
@transactional_destroy.
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

UNCERTAIN = (TimeoutError, urllib.error.URLError)


def _find(resource: str, order_id: int) -> str | None:
    found = client.get(f"{resource}?order={order_id}")["data"]
    return found[0]["id"] if found else None


@idempotent(
    key="reserve:{order_id}",
    check=lambda order_id: _find("reservations", order_id),
    uncertain_errors=UNCERTAIN,
)
def reserve(order_id: int) -> str:
    body = {"order": order_id, "sku": "widget", "quantity": 1}
    return str(client.post("reservations", body, idempotency_key=current_effect_key())["id"])


@idempotent(
    key="fulfil-charge:{order_id}",
    check=lambda order_id, amount: _find("charges", order_id),
    uncertain_errors=UNCERTAIN,
)
def charge(order_id: int, amount: int) -> str:
    body = {"order": order_id, "amount": amount}
    return str(client.post("charges", body, idempotency_key=current_effect_key())["id"])


@idempotent(
    key="ship:{order_id}",
    check=lambda order_id: _find("shipments", order_id),
    uncertain_errors=UNCERTAIN,
)
def ship(order_id: int) -> str:
    body = {"order": order_id}
    return str(client.post("shipments", body, idempotency_key=current_effect_key())["id"])


def register(app: App) -> JobFunction[[int, int], None]:
    @app.job(name="fulfil_order", retry=PATTERN_RETRY)
    @transactional_destroy
    def fulfil_order(ctx: JobContext, order_id: int, amount: int) -> None:
        reserve(order_id)
        charge(order_id, amount)
        shipment_id = ship(order_id)
        ctx.connection.execute(
            sql.SQL(
                "INSERT INTO {} (order_id, shipment_id, updates) VALUES (%s, %s, 1) "
                "ON CONFLICT (order_id) DO UPDATE SET shipment_id = excluded.shipment_id, "
                "updates = fulfilments.updates + 1"
            ).format(table(ctx.schema, "fulfilments")),
            (order_id, shipment_id),
        )

    return fulfil_order
