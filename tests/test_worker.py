"""The worker in this process: outcomes, retries, bad rows, order, wake-ups."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from tenacity import stop_after_attempt, wait_fixed

from conftest import advisory_locks
from reliable_jobs import App, JobContext, RetryPolicy
from tests.helpers import fetch, scalar, wait_until, worker_thread


def record(app: App, ctx: JobContext, note: str) -> None:
    """Insert a row into the test's runs table on the job's connection."""
    statement = sql.SQL("INSERT INTO {}.runs (job_id, attempt, note) VALUES (%s, %s, %s)")
    params = (ctx.job_id, ctx.attempt, note)
    ctx.connection.execute(statement.format(sql.Identifier(app.schema)), params)


def runs(db: psycopg.Connection[Any], app: App) -> list[tuple[int, int, str]]:
    return fetch(db, app.schema, "SELECT job_id, attempt, note FROM {}.runs ORDER BY at")


def test_returned_job_destroyed(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="ok")
    def ok(ctx: JobContext, value: int) -> None:
        record(app, ctx, f"value {value}")

    job_id = ok.enqueue(7)
    app.run_worker(burst=True, install_signal_handlers=False)

    assert runs(db, app) == [(job_id, 1, "value 7")]
    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0


def test_failed_job_retried_with_error_stored(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="flaky", retry=RetryPolicy(stop_after_attempt(5), wait_fixed(30)))
    def flaky(ctx: JobContext) -> None:
        raise ValueError("card declined")

    job_id = flaky.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    rows = fetch(
        db,
        app.schema,
        "SELECT attempts, error_count, last_error_message, last_error_backtrace, "
        "extract(epoch FROM run_at - now()), expired_at FROM {}.jobs WHERE id = %s",
        job_id,
    )
    attempts, error_count, message, backtrace, wait, expired_at = rows[0]
    assert (attempts, error_count) == (1, 1)
    assert message == "ValueError: card declined"
    assert "raise ValueError" in backtrace
    assert 28 < wait <= 30
    assert expired_at is None


def test_last_attempt_kept_as_failed(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="doomed", retry=RetryPolicy(stop_after_attempt(3), wait_fixed(0)))
    def doomed(ctx: JobContext) -> None:
        record(app, ctx, "run")
        raise RuntimeError(f"attempt {ctx.attempt} failed")

    job_id = doomed.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    assert [attempt for _, attempt, _ in runs(db, app)] == [1, 2, 3]
    rows = fetch(
        db,
        app.schema,
        "SELECT attempts, error_count, last_error_message, expired_at IS NOT NULL "
        "FROM {}.jobs WHERE id = %s",
        job_id,
    )
    assert rows == [(3, 3, "RuntimeError: attempt 3 failed", True)]


def test_retry_and_failure_logged(app: App, caplog: pytest.LogCaptureFixture) -> None:
    @app.job(name="doomed", retry=RetryPolicy(stop_after_attempt(2), wait_fixed(0)))
    def doomed(ctx: JobContext, secret: str) -> None:
        raise RuntimeError("boom")

    job_id = doomed.enqueue("card 4242")
    with caplog.at_level(logging.INFO, logger="reliable_jobs"):
        app.run_worker(burst=True, install_signal_handlers=False)

    retry = [r for r in caplog.records if getattr(r, "action", None) == "job_retry"]
    failed = [r for r in caplog.records if getattr(r, "action", None) == "job_failed"]
    assert len(retry) == 1
    assert retry[0].levelno == logging.WARNING
    assert f"Job {job_id} (doomed)" in retry[0].getMessage()
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR
    assert all("card 4242" not in r.getMessage() for r in caplog.records)
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert "worker_start" in actions
    assert "worker_stop" in actions


def test_retry_in_reschedules_without_attempt(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="snooze")
    def snooze(ctx: JobContext) -> None:
        ctx.retry_in(60)

    job_id = snooze.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    rows = fetch(
        db,
        app.schema,
        "SELECT attempts, error_count, round(extract(epoch FROM run_at - locked_at)) "
        "FROM {}.jobs WHERE id = %s",
        job_id,
    )
    # locked_at is cleared by the report, so compare with now() instead.
    assert rows[0][:2] == (0, 0)
    wait = scalar(db, app.schema, "SELECT extract(epoch FROM run_at - now()) FROM {}.jobs")
    assert 58 < wait <= 60


def test_expire_keeps_job_as_failed(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="give_up")
    def give_up(ctx: JobContext) -> None:
        ctx.expire("customer account closed")

    job_id = give_up.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    rows = fetch(
        db,
        app.schema,
        "SELECT last_error_message, expired_at IS NOT NULL FROM {}.jobs WHERE id = %s",
        job_id,
    )
    assert rows == [("customer account closed", True)]


def test_transaction_commits_writes_with_destroy(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="atomic")
    def atomic(ctx: JobContext, fail: bool) -> None:
        with ctx.transaction():
            record(app, ctx, "written")
            ctx.destroy()
            if fail:
                raise RuntimeError("failed after destroy")

    good = atomic.enqueue(False)
    bad = atomic.configure(priority=200).enqueue(True)
    app.run_worker(burst=True, install_signal_handlers=False)

    assert runs(db, app) == [(good, 1, "written")]
    assert scalar(db, app.schema, "SELECT array_agg(id) FROM {}.jobs") == [bad]


def test_unknown_job_rescheduled(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="known")
    def known(ctx: JobContext) -> None:
        record(app, ctx, "known ran")

    db.execute(
        sql.SQL(
            "INSERT INTO {}.jobs (queue, job_name, priority) VALUES ('default', 'gone', 1)"
        ).format(sql.Identifier(app.schema))
    )
    known_id = known.enqueue()
    app.run_worker(burst=True, install_signal_handlers=False)

    assert runs(db, app) == [(known_id, 1, "known ran")]
    rows = fetch(
        db,
        app.schema,
        "SELECT attempts, error_count, last_error_message, run_at > now(), expired_at "
        "FROM {}.jobs WHERE job_name = 'gone'",
    )
    attempts, error_count, message, later, expired_at = rows[0]
    assert (attempts, error_count, later, expired_at) == (0, 1, True, None)
    assert "unknown job 'gone'" in message


def test_undecodable_row_kept_as_failed(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="takes_args")
    def takes_args(ctx: JobContext, *args: Any) -> None:
        record(app, ctx, "ran")

    db.execute(
        sql.SQL(
            "INSERT INTO {}.jobs (queue, job_name, priority, args) "
            "VALUES ('default', 'takes_args', 100, '{{\"not\": \"a list\"}}')"
        ).format(sql.Identifier(app.schema))
    )
    good = takes_args.enqueue(1)
    app.run_worker(burst=True, install_signal_handlers=False)

    assert runs(db, app) == [(good, 1, "ran")]
    rows = fetch(db, app.schema, "SELECT last_error_message, expired_at IS NOT NULL FROM {}.jobs")
    assert len(rows) == 1
    assert "undecodable job row: args must be a JSON array" in rows[0][0]
    assert rows[0][1] is True


def test_priority_then_run_at_order(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="ordered")
    def ordered(ctx: JobContext, label: str) -> None:
        record(app, ctx, label)

    ordered.configure(priority=50).enqueue("third")
    ordered.configure(priority=1).enqueue("first")
    ordered.configure(priority=10).enqueue("second")
    ordered.configure(priority=50).enqueue("fourth")
    ordered.configure(priority=0, delay=3600).enqueue("later")
    app.run_worker(burst=True, install_signal_handlers=False)

    assert [note for _, _, note in runs(db, app)] == ["first", "second", "third", "fourth"]
    assert scalar(db, app.schema, "SELECT args FROM {}.jobs") == ["later"]


def test_worker_takes_only_its_queues(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="queued")
    def queued(ctx: JobContext, label: str) -> None:
        record(app, ctx, label)

    queued.configure(queue="emails").enqueue("email")
    queued.configure(queue="reports").enqueue("report")
    queued.enqueue("default")
    app.run_worker(queues=["emails", "default"], burst=True, install_signal_handlers=False)

    assert sorted(note for _, _, note in runs(db, app)) == ["default", "email"]
    assert scalar(db, app.schema, "SELECT queue FROM {}.jobs") == "reports"


def test_scheduled_job_runs_when_due(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="scheduled")
    def scheduled(ctx: JobContext) -> None:
        record(app, ctx, "ran")

    scheduled.configure(delay=1.0).enqueue()
    with worker_thread(app, poll_interval=0.1):
        time.sleep(0.5)
        assert runs(db, app) == []
        wait_until(lambda: runs(db, app), 5, "the scheduled job")


def test_notification_wakes_idle_worker(app: App, db: psycopg.Connection[Any]) -> None:
    @app.job(name="prompt")
    def prompt(ctx: JobContext) -> None:
        record(app, ctx, "ran")

    # With a 60 s poll interval only the notification can wake the worker.
    with worker_thread(app, poll_interval=60) as worker:
        wait_until(worker.listener.connected.is_set, 5, "the listener")
        time.sleep(0.2)
        prompt.enqueue()
        wait_until(lambda: runs(db, app), 5, "the job to start")


def test_worker_recovers_lost_connections(app: App, db: psycopg.Connection[Any]) -> None:
    """After all its sessions are killed, as in a server restart, the worker goes on."""

    @app.job(name="prompt")
    def prompt(ctx: JobContext, n: int) -> None:
        record(app, ctx, f"run {n}")

    with worker_thread(app, poll_interval=60) as worker:
        wait_until(worker.listener.connected.is_set, 5, "the listener")
        prompt.enqueue(1)
        wait_until(lambda: len(runs(db, app)) == 1, 5, "the first job")

        # Each worker connection names its purpose in application_name.
        killed = db.execute(
            "SELECT array_agg(DISTINCT application_name) FROM pg_stat_activity "
            "WHERE application_name LIKE 'reliable_jobs %' AND pg_terminate_backend(pid)"
        ).fetchone()
        assert killed is not None
        assert {"reliable_jobs locker", "reliable_jobs listener", "reliable_jobs job"} <= set(
            killed[0]
        )
        wait_until(
            lambda: worker.listener.connections == 2 and worker.listener.connected.is_set(),
            10,
            "the listener to reconnect",
        )
        prompt.enqueue(2)
        wait_until(lambda: len(runs(db, app)) == 2, 5, "the job after reconnecting")


def test_lost_locker_stops_ownership(app: App, db: psycopg.Connection[Any]) -> None:
    seen_lost = threading.Event()

    @app.job(name="long", retry=RetryPolicy(stop_after_attempt(5), wait_fixed(0)))
    def long(ctx: JobContext) -> None:
        record(app, ctx, "start")
        if ctx.attempt == 1:
            if ctx.lost.wait(10):
                seen_lost.set()
            record(app, ctx, "returning after lost")

    job_id = long.enqueue()
    with worker_thread(app, poll_interval=0.1):
        wait_until(lambda: runs(db, app), 5, "the first attempt")
        locker_pid = scalar(
            db,
            app.schema,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid",
            app.lock_class,
        )
        db.execute("SELECT pg_terminate_backend(%s)", (locker_pid,))
        wait_until(
            lambda: scalar(db, app.schema, "SELECT count(*) FROM {}.jobs") == 0,
            10,
            "the second attempt to finish the job",
        )

    assert seen_lost.is_set()
    assert runs(db, app) == [
        (job_id, 1, "start"),
        (job_id, 1, "returning after lost"),
        (job_id, 2, "start"),
    ]


def test_finished_jobs_unlocked_while_running(
    app: App, dsn: str, db: psycopg.Connection[Any]
) -> None:
    @app.job(name="mixed", retry=RetryPolicy(stop_after_attempt(3), wait_fixed(3600)))
    def mixed(ctx: JobContext, n: int) -> None:
        record(app, ctx, "ran")
        if n % 3 == 0:
            raise RuntimeError("retry later")

    for n in range(12):
        mixed.enqueue(n)
    with worker_thread(app, concurrency=4, poll_interval=0.1):
        wait_until(lambda: len(runs(db, app)) == 12, 10, "every job to run once")
        # The worker is still running: its locker session must hold nothing.
        wait_until(lambda: advisory_locks(dsn, app) == [], 5, "the locks to be released")


def test_lost_notification_recovered_by_poll_after_reconnect(
    app: App, db: psycopg.Connection[Any]
) -> None:
    @app.job(name="prompt")
    def prompt(ctx: JobContext) -> None:
        record(app, ctx, "ran")

    with worker_thread(app, poll_interval=60) as worker:
        wait_until(worker.listener.connected.is_set, 5, "the listener")
        time.sleep(0.2)
        # A row inserted without NOTIFY stands for a notification sent while
        # the listener was disconnected.
        db.execute(
            sql.SQL(
                "INSERT INTO {}.jobs (queue, job_name, priority) VALUES ('default', 'prompt', 1)"
            ).format(sql.Identifier(app.schema))
        )
        time.sleep(0.3)
        assert runs(db, app) == []

        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'reliable_jobs listener'"
        )
        wait_until(lambda: runs(db, app), 10, "the poll after reconnecting")
