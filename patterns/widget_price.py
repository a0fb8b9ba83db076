"""Database-only work: update a widget's price from an external quote.

Problem: the job reads a quote (a read, safe to repeat) and writes a row.
If it dies after writing but before its job row is deleted, a plain job
writes again on retry.

Guarantee: exactly once. @transactional_destroy commits the UPDATE and the
deletion of the job row in one transaction: a crash before the commit
rolls back both, a crash after it leaves nothing to retry. The `updates`
counter shows it: it ends at 1 for every widget whatever crashed.
"""

from __future__ import annotations

from psycopg import sql

from reliable_jobs import App, JobContext, JobFunction, transactional_destroy

from . import client
from .tables import PATTERN_RETRY, table


def register(app: App) -> JobFunction[[int], None]:
    @app.job(name="update_widget_price", retry=PATTERN_RETRY)
    @transactional_destroy
    def update_widget_price(ctx: JobContext, widget_id: int) -> None:
        quote = client.get(f"quotes/{widget_id}")
        ctx.connection.execute(
            sql.SQL(
                "INSERT INTO {} (id, price, updates) VALUES (%s, %s, 1) "
                "ON CONFLICT (id) DO UPDATE SET price = excluded.price, "
                "updates = widgets.updates + 1"
            ).format(table(ctx.schema, "widgets")),
            (widget_id, quote["price"]),
        )

    return update_widget_price
