"""Fixtures shared by the whole suite: a database, and an app on a fresh schema.

The database comes from RELIABLE_JOBS_TEST_DSN; without it, an embedded
PostgreSQL is started for the session. Each test gets a schema of its own,
dropped afterwards, and fails if an advisory lock of that schema is left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reliable_jobs import App


@pytest.fixture(scope="session")
def dsn(reliable_jobs_dsn: str) -> str:
    """The test database, from the reliable_jobs pytest plugin."""
    return reliable_jobs_dsn


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    name = f"rjt_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def app(dsn: str, schema: str) -> Iterator[App]:
    """A migrated app with a `runs` table that test jobs write to."""
    app = App(dsn, schema=schema)
    app.migrate()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.runs (job_id bigint, attempt integer, note text, "
                "at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(sql.Identifier(schema))
        )
    yield app
    app.close()
    assert no_advisory_locks_soon(dsn, app), "a test left advisory locks of its schema"


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for the test's own checks."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def no_advisory_locks_soon(dsn: str, app: App, timeout: float = 5.0) -> bool:
    """Return whether the app's advisory locks are all gone within `timeout` seconds.

    A session closed by its client ends on the server a moment later, and
    its locks go with it; a lock still held after the timeout is a leak.
    """
    deadline = time.monotonic() + timeout
    while advisory_locks(dsn, app):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def advisory_locks(dsn: str, app: App) -> list[tuple[Any, ...]]:
    """Return the advisory locks of the app's jobs and ledger held by any session."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, objid FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid IN (%s::oid, %s::oid)",
            (app.lock_class, app.effect_lock_class),
        ).fetchall()
