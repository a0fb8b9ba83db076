"""The demo end to end, small: real worker processes, real kills, every pattern."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from patterns import demo
from patterns.provider import FakeProvider
from patterns.tables import create_tables
from reliable_jobs import App

pytestmark = pytest.mark.slow


def test_demo_holds_under_chaos(dsn: str) -> None:
    results, counts = demo.run(dsn, jobs=50, seed=7, out=lambda _text: None)

    assert counts.kills >= 1
    assert [result.pattern for result in results] == [
        "widget price (db only)",
        "card charge",
        "verification email",
        "webhook",
        "reserve, charge, ship",
    ]
    for result in results:
        assert result.held, demo.format_table(results, counts)
        assert result.seen >= result.expected
    for result in results:
        if result.guarantee == "exactly once":
            assert result.duplicates == 0
            assert result.seen == result.expected


def test_demo_table_reports_broken_guarantee() -> None:
    broken = demo.PatternResult("card charge", 10, 10, 11, 1, "exactly once", False)

    table = demo.format_table([broken], demo.Chaos(kills=3, terminations=1))

    assert "card charge" in table
    assert " NO" in table
    assert "3 workers killed with SIGKILL, 1 database connection(s) terminated" in table


def test_demo_results_see_duplicate_charge(app: App, db: psycopg.Connection[Any]) -> None:
    create_tables(db, app.schema)
    provider = FakeProvider()
    for order in (1, 1, 2):  # order 1 charged twice, with no idempotency key
        provider.records.create("charges", {"order": order}, None)
    for order in (1, 2):
        db.execute(
            sql.SQL("INSERT INTO {} (id, updates) VALUES (%s, 1)").format(
                sql.Identifier(app.schema, "orders")
            ),
            (order,),
        )
    provider.server.server_close()

    results = demo._results(app, provider, 2)

    charge = next(result for result in results if result.pattern == "card charge")
    assert charge.seen == 3
    assert charge.duplicates == 1
    assert not charge.held
