"""A small end-to-end run: enqueue example jobs, drain them, check the result.

Each job records one order in a table and destroys itself in the same
transaction; some fail on their first attempt and are retried. The run
succeeds when every order was recorded exactly once and the queue is empty.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql
from tenacity import stop_after_attempt, wait_fixed

from .app import App
from .context import JobContext
from .jobs import call
from .retry import RetryPolicy
from .worker import Worker

DEMO_SCHEMA = "reliable_jobs_demo"
DRAIN_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class DemoResult:
    """Counts from one demo run, and whether every order took effect once."""

    jobs: int
    orders_recorded: int
    duplicates: int
    retries: int
    jobs_left: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.orders_recorded == self.jobs and self.duplicates == 0 and self.jobs_left == 0


def build_demo_app(conninfo: str) -> App:
    """Return an app with the demo's job registered."""
    app = App(conninfo, schema=DEMO_SCHEMA)

    @app.job(name="record_order", retry=RetryPolicy(stop_after_attempt(5), wait_fixed(0.5)))
    def record_order(ctx: JobContext, order_id: int) -> None:
        # Every seventh order fails once, to show a retry with backoff.
        if order_id % 7 == 0 and ctx.attempt == 1:
            raise RuntimeError(f"payment gateway timed out for order {order_id}")
        with ctx.transaction():
            ctx.connection.execute(
                sql.SQL("INSERT INTO {}.orders (order_id, attempt) VALUES (%s, %s)").format(
                    sql.Identifier(DEMO_SCHEMA)
                ),
                (order_id, ctx.attempt),
            )
            ctx.destroy()

    return app


def run_demo(
    conninfo: str, jobs: int = 200, concurrency: int = 4, keep: bool = False
) -> DemoResult:
    """Enqueue `jobs` orders, run a burst worker on them, and count the results."""
    app = build_demo_app(conninfo)
    schema = sql.Identifier(DEMO_SCHEMA)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    app.migrate()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # No unique constraint on purpose: a duplicate must be counted, not rejected.
        conn.execute(
            sql.SQL("CREATE TABLE {}.orders (order_id integer NOT NULL, attempt integer)").format(
                schema
            )
        )

    started = time.monotonic()
    app.registry["record_order"].enqueue_many(call(order_id) for order_id in range(1, jobs + 1))
    worker = Worker(app, concurrency=concurrency, install_signal_handlers=False)
    thread = threading.Thread(target=worker.run, name="demo-worker")
    thread.start()
    # Retried jobs wait for their backoff, so run until none is left.
    deadline = started + DRAIN_TIMEOUT_SECONDS
    while _count(conninfo, "SELECT count(*) FROM {}.jobs WHERE expired_at IS NULL") > 0:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    worker.stop()
    thread.join()
    seconds = time.monotonic() - started

    result = DemoResult(
        jobs=jobs,
        orders_recorded=_count(conninfo, "SELECT count(DISTINCT order_id) FROM {}.orders"),
        duplicates=_count(conninfo, "SELECT count(*) - count(DISTINCT order_id) FROM {}.orders"),
        retries=_count(conninfo, "SELECT coalesce(sum(attempt - 1), 0) FROM {}.orders"),
        jobs_left=_count(conninfo, "SELECT count(*) FROM {}.jobs"),
        seconds=seconds,
    )
    app.close()
    if not keep:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
    return result


def _count(conninfo: str, query: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(sql.SQL(query).format(sql.Identifier(DEMO_SCHEMA))).fetchone()
    return int(row[0]) if row else 0
