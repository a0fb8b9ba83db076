"""pytest fixtures for testing jobs against a real PostgreSQL.

Loaded automatically when reliable_jobs is installed. The database comes
from RELIABLE_JOBS_TEST_DSN; without it an embedded PostgreSQL starts
once per test session (install reliable_jobs[embedded]).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ..app import App


def pytest_configure(config: pytest.Config) -> None:
    try:
        from .strategies import register_profiles
    except ImportError:  # hypothesis is not installed: no profiles to register
        return
    register_profiles()


@pytest.fixture(scope="session")
def reliable_jobs_dsn() -> str:
    """Return the test database: RELIABLE_JOBS_TEST_DSN, else an embedded PostgreSQL."""
    configured = os.environ.get("RELIABLE_JOBS_TEST_DSN")
    if configured:
        return configured
    from ..embedded import start_embedded_postgres

    return start_embedded_postgres()


@pytest.fixture
def reliable_jobs_app(reliable_jobs_dsn: str) -> Iterator[App]:
    """Yield a migrated App on a schema of its own, and drop the schema after the test."""
    schema = f"rjtest_{uuid.uuid4().hex[:12]}"
    app = App(reliable_jobs_dsn, schema=schema)
    app.migrate()
    yield app
    app.close()
    with psycopg.connect(reliable_jobs_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def effect_recorder(reliable_jobs_app: App) -> Iterator[Any]:
    """Yield an EffectRecorder on the test's app."""
    from .recorder import EffectRecorder

    recorder = EffectRecorder(reliable_jobs_app)
    yield recorder
    recorder.close()


@pytest.fixture
def crash_replay(reliable_jobs_app: App) -> Callable[..., Any]:
    """replay() bound to the test's app: crash_replay(job, *args, crashes=[...])."""
    from .replay import replay

    def run(*args: Any, **kwargs: Any) -> Any:
        return replay(reliable_jobs_app, *args, **kwargs)

    return run
