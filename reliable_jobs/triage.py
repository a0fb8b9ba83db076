"""Decide, right after locking, which jobs may run at all.

A job that cannot run is kept and reported, never dropped: an unknown name
is retried later without using up attempts, a malformed row is kept as
failed, and a job whose previous attempts all killed their worker is kept
as failed once its retry policy gives up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .context import LockedJob
from .locker import Locker
from .payload import decode_arguments

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)

# Backoff cap for a job name that this worker has not registered, typically
# during a deploy.
UNKNOWN_JOB_MAX_DELAY = 300.0


def triage(app: App, locker: Locker, jobs: list[LockedJob]) -> list[LockedJob]:
    """Return the jobs that may run; settle the others and unlock them."""
    runnable = []
    settled = []
    for job in jobs:
        if _settle_if_unrunnable(app, locker, job):
            settled.append(job.id)
        else:
            runnable.append(job)
    locker.unlock(settled)
    return runnable


def _settle_if_unrunnable(app: App, locker: Locker, job: LockedJob) -> bool:
    job_function = app.registry.get(job.job_name)
    if job_function is None:
        _reschedule_unknown(locker, job)
        return True

    try:
        decode_arguments(job.args, job.kwargs)
    except ValueError as error:
        message = f"undecodable job row: {error}"
        logger.error(
            "Job %d (%s): %s; kept as failed",
            job.id,
            job.job_name,
            message,
            extra={"action": "undecodable", "job_id": job.id, "job_name": job.job_name},
        )
        locker.report(job, delay=None, expire=True, error=message)
        return True

    finished_attempts = job.attempts - 1
    if job.previous_attempt_died and job_function.retry.should_stop(
        finished_attempts, job.seconds_since_enqueue
    ):
        message = (
            f"gave up after {finished_attempts} attempt(s); the last one ended without "
            "reporting an outcome (its worker was killed or lost its database connection)"
        )
        logger.error(
            "Job %d (%s): %s",
            job.id,
            job.job_name,
            message,
            extra={"action": "expired", "job_id": job.id, "job_name": job.job_name},
        )
        locker.report(job, delay=None, expire=True, refund=True, error=message)
        return True
    return False


def _reschedule_unknown(locker: Locker, job: LockedJob) -> None:
    delay = min(2.0 ** min(job.error_count, 16), UNKNOWN_JOB_MAX_DELAY)
    message = (
        f"unknown job {job.job_name!r}: no job function is registered under this name in "
        "the worker that locked it; register it, or deploy the code that defines it"
    )
    logger.warning(
        "Job %d (%s): unknown job name; retrying in %.0f s without using an attempt",
        job.id,
        job.job_name,
        delay,
        extra={"action": "unknown_job", "job_id": job.id, "job_name": job.job_name},
    )
    locker.report(job, delay=delay, refund=True, error=message)
