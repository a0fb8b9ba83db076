"""Inspect and repair the queue: status counts, failed jobs, manual retry."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from psycopg.rows import class_row

from . import queries
from .app import App
from .errors import InvalidArgumentError, JobNotFoundError


@dataclass(frozen=True)
class JobNameStatus:
    """Job counts for one job name."""

    job_name: str
    ready: int
    scheduled: int
    running: int
    failed: int
    oldest_ready_seconds: float | None


@dataclass(frozen=True)
class FailedJob:
    """A job kept as failed, with its last error."""

    id: int
    job_name: str
    queue: str
    attempts: int
    error_count: int
    expired_at: dt.datetime
    last_error_message: str | None
    last_error_backtrace: str | None


def queue_status(app: App) -> list[JobNameStatus]:
    """Count ready, scheduled, running and failed jobs per job name."""
    with app.admin_connection() as conn:
        cursor = conn.cursor(row_factory=class_row(JobNameStatus))
        return cursor.execute(queries.status(app.schema), {"class": app.lock_class}).fetchall()


def failed_jobs(app: App, limit: int = 100) -> list[FailedJob]:
    """Return the most recently failed jobs, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"limit={limit!r} is invalid; pass an int >= 1")
    with app.admin_connection() as conn:
        cursor = conn.cursor(row_factory=class_row(FailedJob))
        return cursor.execute(queries.failed_jobs(app.schema), {"limit": limit}).fetchall()


def retry_failed_job(app: App, job_id: int) -> None:
    """Make a failed job runnable now, with a fresh attempt budget."""
    with app.admin_connection() as conn:
        row = conn.execute(queries.retry_failed(app.schema), {"id": job_id}).fetchone()
        if row is not None:
            return
        state = conn.execute(queries.job_exists(app.schema), {"id": job_id}).fetchone()
    if state is None:
        raise JobNotFoundError(job_id, " (it finished, or the id is wrong)")
    raise InvalidArgumentError(
        f"job {job_id} has not failed, so there is nothing to retry; it is ready, "
        "scheduled or running"
    )
