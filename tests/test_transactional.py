"""@transactional_destroy: writes and the job's deletion commit together."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from psycopg import sql
from tenacity import stop_after_attempt, wait_fixed

from reliable_jobs import App, JobContext, RetryPolicy, transactional_destroy
from tests.helpers import fetch, scalar

NO_WAIT = RetryPolicy(stop_after_attempt(3), wait_fixed(0))


def write(app: App, ctx: JobContext, note: str) -> None:
    statement = sql.SQL("INSERT INTO {}.runs (job_id, attempt, note) VALUES (%s, %s, %s)")
    ctx.connection.execute(
        statement.format(sql.Identifier(app.schema)), (ctx.job_id, ctx.attempt, note)
    )


def notes(db: psycopg.Connection[Any], app: App) -> list[tuple[int, str]]:
    return fetch(db, app.schema, "SELECT attempt, note FROM {}.runs ORDER BY at")


def test_writes_and_destroy_commit_together(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="price")
    @transactional_destroy
    def price(ctx: JobContext, widget: int) -> None:
        write(app, ctx, f"widget {widget}")

    price.enqueue(7)
    app.run_worker(burst=True, install_signal_handlers=False)

    assert notes(db, app) == [(1, "widget 7")]
    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_raising_body_rolls_back_and_retries(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="flaky", retry=NO_WAIT)
    @transactional_destroy
    def flaky(ctx: JobContext) -> None:
        write(app, ctx, "written")
        if ctx.attempt < 3:
            raise RuntimeError("quote service down")

    flaky.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    # Attempts 1 and 2 wrote, then raised: their writes were rolled back.
    assert notes(db, app) == [(3, "written")]
    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_deleted_row_rolls_back_without_failure(
    app: App, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker finished the job: this attempt's writes must not commit."""

    @app.job(name="raced", retry=NO_WAIT)
    @transactional_destroy
    def raced(ctx: JobContext) -> None:
        write(app, ctx, "duplicate write")
        # Stand in for the other worker: the row disappears before our destroy.
        db.execute(sql.SQL("DELETE FROM {}.jobs").format(sql.Identifier(app.schema)))

    raced.enqueue()
    with caplog.at_level(logging.WARNING, logger="reliable_jobs"):
        app.run_worker(burst=True, install_signal_handlers=False)

    assert notes(db, app) == []
    actions = [getattr(record, "action", None) for record in caplog.records]
    assert "lost" in actions
    assert "job_retry" not in actions
    assert "job_failed" not in actions


def test_body_settling_itself_is_respected(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="snoozer")
    @transactional_destroy
    def snoozer(ctx: JobContext) -> None:
        write(app, ctx, "before snooze")
        ctx.retry_in(3600)

    snoozer.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    assert notes(db, app) == [(1, "before snooze")]
    assert scalar(db, app.schema, "SELECT run_at > now() + interval '59 minutes' FROM {}.jobs")


def test_decorated_job_keeps_signature(app: App) -> None:
    @app.job(name="typed")
    @transactional_destroy
    def typed(ctx: JobContext, widget: int, price: float = 1.0) -> None:
        """Set a price."""

    assert typed.__doc__ == "Set a price."
    assert typed.func.__name__ == "typed"
