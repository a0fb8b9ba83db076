"""Locking: one lock per job, no leaks, MVCC re-checks, ownership on destroy."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from conftest import advisory_locks
from reliable_jobs import App, JobContext, LostOwnershipError, call
from reliable_jobs.locker import Locker
from tests.helpers import scalar


def make_locker(app: App) -> Locker:
    return Locker(app.connect(), schema=app.schema, lock_class=app.lock_class)


def register_noop(app: App) -> Any:
    @app.job(name="noop")
    def noop(ctx: JobContext, n: int = 0) -> None:
        pass

    return noop


def test_lock_takes_one_lock_per_job(app: App, dsn: str) -> None:
    noop = register_noop(app)
    noop.enqueue_many(call(n) for n in range(50))
    locker = make_locker(app)

    jobs = locker.lock(3, None, ())

    assert len(jobs) == 3
    held = advisory_locks(dsn, app)
    assert len(held) == 3
    assert {pid for pid, _ in held} == {locker.pid}
    locker.close()


def test_lock_skips_held_and_excluded(app: App) -> None:
    noop = register_noop(app)
    noop.enqueue_many(call(n) for n in range(4))
    first = make_locker(app)
    second = make_locker(app)

    taken_by_first = first.lock(2, None, ())
    taken_by_second = second.lock(10, None, ())
    again_by_first = first.lock(10, None, [job.id for job in taken_by_first])

    first_ids = {job.id for job in taken_by_first}
    second_ids = {job.id for job in taken_by_second}
    assert len(first_ids) == 2
    assert len(second_ids) == 2
    assert first_ids.isdisjoint(second_ids)
    assert again_by_first == []
    first.close()
    second.close()


def test_second_unlock_returns_false(app: App) -> None:
    noop = register_noop(app)
    noop.enqueue()
    locker = make_locker(app)
    (job,) = locker.lock(1, None, ())
    key = job.id & 0x7FFFFFFF

    unlock = "SELECT pg_advisory_unlock(%s, %s)"
    assert locker.conn.execute(unlock, (app.lock_class, key)).fetchone() == (True,)
    assert locker.conn.execute(unlock, (app.lock_class, key)).fetchone() == (False,)
    locker.close()


def test_attempt_committed_at_lock(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)
    job_id = noop.enqueue()
    locker = make_locker(app)

    (job,) = locker.lock(1, None, ())

    assert job.attempts == 1
    assert scalar(db, app.schema, "SELECT attempts FROM {}.jobs WHERE id = %s", job_id) == 1
    locker.close()


def test_died_attempt_counted_at_next_lock(app: App, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)
    job_id = noop.enqueue()
    crashed = make_locker(app)
    crashed.lock(1, None, ())
    crashed.close()  # the session ends as if its process died

    rescuer = make_locker(app)
    (job,) = rescuer.lock(1, None, ())

    assert job.previous_attempt_died
    assert job.attempts == 2
    assert job.error_count == 1
    message = scalar(db, app.schema, "SELECT last_error_message FROM {}.jobs WHERE id = %s", job_id)
    assert "attempt 1 ended without reporting" in message
    rescuer.close()


def test_deleted_row_not_locked(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    """A row deleted after the lock query's snapshot is unlocked and skipped."""
    noop = register_noop(app)
    job_id = noop.enqueue()
    deleter = psycopg.connect(dsn)
    deleter.execute(f"DELETE FROM {app.schema}.jobs WHERE id = %s", (job_id,))
    locker = make_locker(app)

    # The lock query finds the row (the delete is not committed) and takes
    # its advisory lock; the re-read skips the row that the delete holds.
    assert locker.lock(1, None, ()) == []
    assert advisory_locks(dsn, app) == []
    deleter.commit()

    assert locker.lock(1, None, ()) == []
    deleter.close()
    locker.close()


def test_destroy_after_lock_lost(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)
    job_id = noop.enqueue()
    locker = make_locker(app)
    (job,) = locker.lock(1, None, ())
    db.execute("SELECT pg_terminate_backend(%s)", (locker.pid,))

    with psycopg.connect(dsn, autocommit=True) as conn:
        ctx = JobContext(job, conn, schema=app.schema, lock_class=app.lock_class)
        with pytest.raises(LostOwnershipError, match="lock lost"):
            ctx.destroy()

    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs WHERE id = %s", job_id) == 1
    locker.close()


def test_destroy_of_deleted_row_fails(app: App, dsn: str, db: psycopg.Connection[Any]) -> None:
    noop = register_noop(app)
    job_id = noop.enqueue()
    locker = make_locker(app)
    (job,) = locker.lock(1, None, ())
    db.execute(f"DELETE FROM {app.schema}.jobs WHERE id = %s", (job_id,))

    with psycopg.connect(dsn, autocommit=True) as conn:
        ctx = JobContext(job, conn, schema=app.schema, lock_class=app.lock_class)
        with pytest.raises(LostOwnershipError, match="already deleted"):
            ctx.destroy()
    locker.unlock([job.id])
    locker.close()


def test_destroy_in_rolled_back_transaction(
    app: App, dsn: str, db: psycopg.Connection[Any]
) -> None:
    noop = register_noop(app)
    job_id = noop.enqueue()
    locker = make_locker(app)
    (job,) = locker.lock(1, None, ())

    with psycopg.connect(dsn, autocommit=True) as conn:
        ctx = JobContext(job, conn, schema=app.schema, lock_class=app.lock_class)
        with pytest.raises(RuntimeError), ctx.transaction():
            ctx.destroy()
            raise RuntimeError("the job failed after destroy()")

    assert scalar(db, app.schema, "SELECT count(*) FROM {}.jobs WHERE id = %s", job_id) == 1
    assert ctx.outcome.value == "none"
    locker.unlock([job.id])
    locker.close()
