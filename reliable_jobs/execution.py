"""Run one locked job on a job thread and record its outcome."""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from . import crashpoints, queries
from .connections import close_quietly, is_usable
from .context import JobContext, LockedJob, Outcome
from .errors import DeferredError, LostOwnershipError, ReviewRequiredError
from .payload import decode_arguments
from .running import Finished, RunningJob

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)


class JobRunner:
    """Take jobs from `tasks` and run them, one at a time, on one connection."""

    def __init__(
        self,
        app: App,
        tasks: queue.SimpleQueue[RunningJob | None],
        finished: queue.SimpleQueue[Finished],
        wake: threading.Event,
        note_due: Callable[[float], None],
        stopping: threading.Event,
    ) -> None:
        self.app = app
        self.tasks = tasks
        self.finished = finished
        self.wake = wake
        self.note_due = note_due
        self.stopping = stopping
        self.conn: psycopg.Connection[Any] | None = None
        self.autonomous_conn: psycopg.Connection[Any] | None = None
        self.autonomous_used = False

    def run(self) -> None:
        while True:
            running = self.tasks.get()
            if running is None:
                close_quietly(self.conn)
                close_quietly(self.autonomous_conn)
                return
            job = running.job
            if self.stopping.is_set() or running.lost.is_set():
                # Prefetched but not started: the main loop releases it.
                self.finished.put(Finished(job.id, job.locker_pid, started=False))
                self.wake.set()
                continue

            running.started = True
            destroy = False
            try:
                destroy = self._run_one(running)
            except BaseException:
                logger.exception(
                    "Job %d (%s): unexpected error in the job thread",
                    job.id,
                    job.job_name,
                    extra={"action": "internal_error", "job_id": job.id},
                )
            finally:
                self.finished.put(Finished(job.id, job.locker_pid, destroy=destroy))
                self.wake.set()

    def _run_one(self, running: RunningJob) -> bool:
        """Run the job; return True when the main loop must delete its row."""
        job = running.job
        job_function = self.app.registry[job.job_name]
        args, kwargs = decode_arguments(job.args, job.kwargs)
        ctx = JobContext(
            job,
            self._connection(),
            schema=self.app.schema,
            lock_class=self.app.lock_class,
            lost=running.lost,
            autonomous=self._autonomous_connection,
        )
        running.context = ctx
        logger.debug(
            "Job %d (%s): attempt %d starting with args=%r kwargs=%r",
            job.id,
            job.job_name,
            job.attempts,
            args,
            kwargs,
            extra={"action": "job_start", "job_id": job.id, "job_name": job.job_name},
        )

        token = ctx.activate()
        try:
            crashpoints.reach("after_lock")
            job_function.func(ctx, *args, **kwargs)
        except LostOwnershipError as error:
            self._clean_up()
            _log_lost(job, error.reason)
            return False
        except BaseException as error:
            self._clean_up()
            self._record_failure(ctx, job, error)
            return False
        finally:
            JobContext.reset(token)

        self._clean_up()
        return self._finish(ctx, job)

    def _finish(self, ctx: JobContext, job: LockedJob) -> bool:
        """Return True when the worker must delete the row the job body left alone.

        The main loop deletes such rows in batches, one commit per batch: a
        crash before that commit runs these jobs again, which is the
        at-least-once contract of a job that leaves its row to the worker.
        """
        if ctx.outcome is not Outcome.NONE:
            _log_done(job, ctx.outcome)
            return False
        if ctx.lost.is_set():
            _log_lost(job, "the locker connection was lost while the job ran")
            return False
        return True

    def _record_failure(self, ctx: JobContext, job: LockedJob, error: BaseException) -> None:
        """Schedule a retry, or keep the job as failed when its policy gives up."""
        if ctx.lost.is_set():
            _log_lost(job, f"the job raised {error!r} after its lock was lost; not recorded")
            return

        message = f"{type(error).__name__}: {error}"
        backtrace = "".join(traceback.format_exception(error))
        deferred = isinstance(error, DeferredError)
        if isinstance(error, DeferredError):
            give_up, delay = False, error.delay
        elif isinstance(error, ReviewRequiredError):
            give_up, delay = True, None
        else:
            policy = self.app.registry[job.job_name].retry
            give_up = policy.should_stop(job.attempts, job.seconds_since_enqueue)
            delay = None if give_up else policy.delay(job.attempts, job.seconds_since_enqueue)

        params = {
            "class": self.app.lock_class,
            "id": job.id,
            "locker_pid": job.locker_pid,
            "delay": delay,
            "expire": give_up,
            "refund": deferred,
            "error": None if deferred else message,
            "backtrace": None if deferred else backtrace,
        }
        statement = queries.report_job(self.app.schema)
        try:
            row = self._connection().execute(statement, params).fetchone()
        except psycopg.Error as report_error:
            _log_report_error(job, report_error)
            return

        if not row or not row[0]:
            ctx.lost.set()
            _log_lost(job, f"the job raised {message} after its lock was lost; not recorded")
        elif deferred:
            assert delay is not None
            self.note_due(delay)
            logger.info(
                "Job %d (%s): deferred for %.1f s without using an attempt: %s",
                job.id,
                job.job_name,
                delay,
                error,
                extra={"action": "job_deferred", "job_id": job.id, "job_name": job.job_name},
            )
        elif give_up:
            logger.error(
                "Job %d (%s): attempt %d failed: %s; no attempts left, kept as failed",
                job.id,
                job.job_name,
                job.attempts,
                message,
                extra={"action": "job_failed", "job_id": job.id, "job_name": job.job_name},
            )
        else:
            assert delay is not None
            self.note_due(delay)
            logger.warning(
                "Job %d (%s): attempt %d failed: %s; retrying in %.1f s",
                job.id,
                job.job_name,
                job.attempts,
                message,
                delay,
                extra={"action": "job_retry", "job_id": job.id, "job_name": job.job_name},
            )

    def _connection(self) -> psycopg.Connection[Any]:
        if not is_usable(self.conn):
            close_quietly(self.conn)
            self.conn = self.app.connect("job")
        assert self.conn is not None
        return self.conn

    def _autonomous_connection(self) -> psycopg.Connection[Any]:
        if not is_usable(self.autonomous_conn):
            close_quietly(self.autonomous_conn)
            self.autonomous_conn = self.app.connect("autonomous")
        assert self.autonomous_conn is not None
        self.autonomous_used = True
        return self.autonomous_conn

    def _clean_up(self) -> None:
        """Leave both connections idle, and the autonomous one without locks."""
        self.conn = _rolled_back(self.conn)
        if not self.autonomous_used:
            return
        self.autonomous_used = False
        self.autonomous_conn = _rolled_back(self.autonomous_conn)
        if self.autonomous_conn is None:
            return
        # Side-effect claims hold session locks on this connection while a
        # call runs; any lock still held after the job is a leak.
        try:
            self.autonomous_conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            close_quietly(self.autonomous_conn)
            self.autonomous_conn = None


def _rolled_back(conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any] | None:
    """Return the connection idle, or None after closing one that is broken."""
    if conn is None:
        return None
    if not is_usable(conn):
        close_quietly(conn)
        return None
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        try:
            conn.rollback()
        except psycopg.Error:
            close_quietly(conn)
            return None
    return conn


def _log_done(job: LockedJob, outcome: Outcome) -> None:
    logger.debug(
        "Job %d (%s): attempt %d done (%s)",
        job.id,
        job.job_name,
        job.attempts,
        outcome.value,
        extra={"action": "job_done", "job_id": job.id, "job_name": job.job_name},
    )


def _log_lost(job: LockedJob, reason: str) -> None:
    logger.warning(
        "Job %d (%s): lost ownership (%s); this attempt is not reported done, and another "
        "worker may run the job",
        job.id,
        job.job_name,
        reason,
        extra={"action": "lost", "job_id": job.id, "job_name": job.job_name},
    )


def _log_report_error(job: LockedJob, error: BaseException) -> None:
    logger.error(
        "Job %d (%s): cannot record the outcome of attempt %d: %s; the next worker to "
        "lock it counts the attempt as died",
        job.id,
        job.job_name,
        job.attempts,
        error,
        extra={"action": "report_failed", "job_id": job.id, "job_name": job.job_name},
    )
