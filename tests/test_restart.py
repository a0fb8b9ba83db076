"""A real PostgreSQL restart under a running worker."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from reliable_jobs import App, JobContext
from tests.helpers import wait_until, worker_thread

pytestmark = pytest.mark.slow


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[Any]:
    """An embedded PostgreSQL of this test's own, so restarting it disturbs nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        server = pgserver.get_server(  # type: ignore[attr-defined]
            tmp_path / "pgdata", cleanup_mode="delete"
        )
    server.pg_ctl = pg_ctl  # type: ignore[attr-defined]
    yield server
    server.cleanup()


def restart(server: Any) -> None:
    server.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)


def test_worker_survives_server_restart(private_server: Any) -> None:
    dsn = private_server.get_uri()
    app = App(dsn, schema="restart")
    app.migrate()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE restart.runs (n integer, at timestamptz DEFAULT clock_timestamp())"
        )

    @app.job(name="note")
    def note(ctx: JobContext, n: int) -> None:
        ctx.connection.execute(sql.SQL("INSERT INTO restart.runs (n) VALUES (%s)"), (n,))

    def count() -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM restart.runs").fetchone()
        return int(row[0]) if row else 0

    # A 60 s poll interval: only LISTEN/NOTIFY can explain a quick pick-up.
    with worker_thread(app, poll_interval=60) as worker:
        wait_until(worker.listener.connected.is_set, 5, "the listener")
        note.enqueue(1)
        wait_until(lambda: count() == 1, 5, "the job before the restart")

        restart(private_server)
        wait_until(
            lambda: worker.listener.connections == 2 and worker.listener.connected.is_set(),
            15,
            "the listener to reconnect",
        )

        enqueued_at = time.monotonic()
        note.enqueue(2)
        wait_until(lambda: count() == 2, 5, "the job after the restart")
        assert time.monotonic() - enqueued_at < 5
    app.close()
