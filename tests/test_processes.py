"""Workers in separate processes: concurrency, SIGKILL, poison jobs, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import no_advisory_locks_soon
from reliable_jobs import App, call
from tests.helpers import fetch, scalar, start_worker_process, wait_until
from tests.jobs_app import build_app

pytestmark = pytest.mark.slow


@pytest.fixture
def jobs_app(app: App, monkeypatch: pytest.MonkeyPatch, dsn: str) -> App:
    """The app of tests.jobs_app on this test's schema, for enqueueing."""
    monkeypatch.setenv("RJ_TEST_DSN", dsn)
    monkeypatch.setenv("RJ_TEST_SCHEMA", app.schema)
    return build_app()


@pytest.fixture
def workers(dsn: str, app: App, tmp_path: Path) -> Any:
    """Start worker processes; every one still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        process = start_worker_process(dsn, app.schema, tmp_path / "workers.log", *args)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def listeners(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'reliable_jobs listener'"
    ).fetchone()
    return int(row[0]) if row else 0


def runs(db: psycopg.Connection[Any], app: App) -> list[tuple[int, int, str]]:
    return fetch(db, app.schema, "SELECT job_id, attempt, note FROM {}.runs ORDER BY at")


def pid_of(note: str) -> int:
    return int(note.rsplit("pid=", 1)[1])


def test_two_workers_run_each_job_once(
    jobs_app: App, workers: Any, db: psycopg.Connection[Any]
) -> None:
    first = workers("--concurrency", "8")
    second = workers("--concurrency", "8")
    wait_until(lambda: listeners(db) == 2, 20, "both workers to listen")
    ids = jobs_app.registry["record"].enqueue_many(call() for _ in range(1000))

    wait_until(
        lambda: scalar(db, jobs_app.schema, "SELECT count(*) FROM {}.jobs") == 0,
        60,
        "the queue to drain",
    )
    first.send_signal(signal.SIGTERM)
    second.send_signal(signal.SIGTERM)

    assert first.wait(timeout=20) == 0
    assert second.wait(timeout=20) == 0
    rows = runs(db, jobs_app)
    assert sorted(job_id for job_id, _, _ in rows) == sorted(ids)
    assert {pid_of(note) for _, _, note in rows} == {first.pid, second.pid}
    assert all(attempt == 1 for _, attempt, _ in rows)


def test_killed_worker_job_rescued_at_once(
    jobs_app: App, workers: Any, db: psycopg.Connection[Any]
) -> None:
    workers()
    workers()
    wait_until(lambda: listeners(db) == 2, 20, "both workers to listen")
    job_id = jobs_app.registry["block"].enqueue(60)
    (_, _, note) = wait_until(lambda: runs(db, jobs_app), 10, "the first attempt")[0]

    victim = pid_of(note)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(runs(db, jobs_app)) >= 3, 10, "another worker to finish the job")
    rescue_seconds = time.monotonic() - killed_at

    rows = runs(db, jobs_app)
    assert [(attempt, note.split()[0]) for _, attempt, note in rows] == [
        (1, "start"),
        (2, "start"),
        (2, "end"),
    ]
    assert pid_of(rows[1][2]) != victim
    # The rescuer polls every 0.5 s; nothing waits for a lease or a timeout.
    assert rescue_seconds < 5
    wait_until(
        lambda: (
            scalar(db, jobs_app.schema, "SELECT count(*) FROM {}.jobs WHERE id = %s", job_id) == 0
        ),
        5,
        "the job row to be destroyed",
    )


def test_poison_job_fails_after_max_attempts(
    jobs_app: App, workers: Any, db: psycopg.Connection[Any]
) -> None:
    job_id = jobs_app.registry["kill_self"].enqueue()

    exit_codes = []
    for _ in range(6):
        process = workers("--burst")
        exit_codes.append(process.wait(timeout=30))
        if exit_codes[-1] == 0:
            break

    assert exit_codes == [-signal.SIGKILL] * 3 + [0]
    assert len(runs(db, jobs_app)) == 3
    rows = fetch(
        db,
        jobs_app.schema,
        "SELECT attempts, expired_at IS NOT NULL, last_error_message FROM {}.jobs WHERE id = %s",
        job_id,
    )
    attempts, expired, message = rows[0]
    assert attempts == 3
    assert expired
    assert "gave up after 3 attempt(s)" in message


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_lets_running_job_finish(
    jobs_app: App, workers: Any, db: psycopg.Connection[Any], signum: int
) -> None:
    process = workers()
    jobs_app.registry["block"].enqueue(1.0)
    wait_until(lambda: runs(db, jobs_app), 20, "the job to start")

    process.send_signal(signum)

    assert process.wait(timeout=20) == 0
    assert [note.split()[0] for _, _, note in runs(db, jobs_app)] == ["start", "end"]
    assert scalar(db, jobs_app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_shutdown_grace_rolls_back_cut_job(
    jobs_app: App, workers: Any, db: psycopg.Connection[Any], dsn: str
) -> None:
    process = workers("--shutdown-grace", "0.5")
    job_id = jobs_app.registry["write_then_block"].enqueue(60)
    wait_until(lambda: runs(db, jobs_app), 20, "the job to start")
    time.sleep(0.3)  # let it write inside its transaction

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=20) == 0
    assert [note.split()[0] for _, _, note in runs(db, jobs_app)] == ["start"]
    rows = fetch(
        db,
        jobs_app.schema,
        "SELECT attempts, error_count, run_at <= now(), locked_by, expired_at "
        "FROM {}.jobs WHERE id = %s",
        job_id,
    )
    assert rows == [(0, 0, True, None, None)]
    assert no_advisory_locks_soon(dsn, jobs_app)
