"""The context a running job receives as its first argument."""

from __future__ import annotations

import contextvars
import enum
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from . import crashpoints, queries
from .errors import LostOwnershipError, ReliableJobsError
from .jobs import check_delay

# SQLSTATE raised by destroy_job() when the locker no longer holds the lock.
LOST_LOCK_SQLSTATE = "RJ001"

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "reliable_jobs_current_job", default=None
)


@dataclass(frozen=True)
class LockedJob:
    """A job row as locked by a worker's locker connection."""

    id: int
    queue: str
    job_name: str
    priority: int
    args: Any
    kwargs: Any
    attempts: int
    error_count: int
    previous_attempt_died: bool
    seconds_since_enqueue: float
    locker_pid: int


class Outcome(enum.Enum):
    """The job body's own decision about its row, if it made one."""

    NONE = "none"
    DESTROYED = "destroyed"
    RESCHEDULED = "rescheduled"
    EXPIRED = "expired"


class JobContext:
    """The running job's identity, its database connection and its row.

    `connection` is an autocommit connection for the job's own work; use
    transaction() to group writes with destroy() so that both commit or
    neither does.
    """

    def __init__(
        self,
        job: LockedJob,
        connection: psycopg.Connection[Any],
        *,
        schema: str,
        lock_class: int,
        lost: threading.Event | None = None,
        autonomous: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.job_id = job.id
        self.name = job.job_name
        self.queue = job.queue
        self.attempt = job.attempts
        self.connection = connection
        self.lost = lost if lost is not None else threading.Event()
        self.outcome = Outcome.NONE
        self._job = job
        self.schema = schema
        self._lock_class = lock_class
        self._autonomous = autonomous
        self._transaction_depth = 0
        self._pending = Outcome.NONE

    def __repr__(self) -> str:
        return f"<JobContext job_id={self.job_id} name={self.name!r} attempt={self.attempt}>"

    @staticmethod
    def current() -> JobContext | None:
        """Return the context of the job running in this thread, or None."""
        return _current.get()

    def activate(self) -> contextvars.Token[JobContext | None]:
        """Make this the current job of the calling thread until reset()."""
        return _current.set(self)

    @staticmethod
    def reset(token: contextvars.Token[JobContext | None]) -> None:
        """Restore the current job that activate() replaced."""
        _current.reset(token)

    @property
    def autonomous_connection(self) -> psycopg.Connection[Any]:
        """A second autocommit connection, outside any transaction of `connection`.

        What it writes commits at once and survives a rollback of the job's
        own transaction; reliable_jobs records side effects through it.
        """
        if self._autonomous is None:
            raise ReliableJobsError(
                f"job {self.job_id} has no autonomous connection; it is available to jobs "
                "run by a worker"
            )
        return self._autonomous()

    @property
    def settled(self) -> bool:
        """Whether the job body already destroyed, rescheduled or expired its row."""
        return self.outcome is not Outcome.NONE or self._pending is not Outcome.NONE

    @property
    def owned(self) -> bool:
        """Whether this worker still holds the job's lock, as far as it has detected."""
        return not self.lost.is_set()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Transaction]:
        """Open a transaction on `connection`; destroy() inside it commits with it."""
        self._transaction_depth += 1
        try:
            with self.connection.transaction() as tx:
                yield tx
                crashpoints.reach("before_commit")
        except BaseException:
            if self._transaction_depth == 1:
                self._pending = Outcome.NONE
            raise
        finally:
            self._transaction_depth -= 1

        crashpoints.reach("after_commit")
        if self._transaction_depth == 0 and self._pending is not Outcome.NONE:
            self.outcome, self._pending = self._pending, Outcome.NONE

    def destroy(self) -> None:
        """Delete the job row, inside the current transaction when there is one.

        Raise LostOwnershipError when the worker no longer holds the job's
        lock, or when the row was already deleted: in both cases another
        worker may have run the job, so this attempt must not count as done.
        """
        self._check_owned()
        if self.connection.info.transaction_status == pq.TransactionStatus.IDLE:
            crashpoints.reach("before_destroy")
        try:
            row = self.connection.execute(
                queries.destroy_job(self.schema), self._ownership_params()
            ).fetchone()
        except psycopg.DatabaseError as error:
            if error.sqlstate == LOST_LOCK_SQLSTATE:
                self.lost.set()
                raise LostOwnershipError(self.job_id, "lock lost before the destroy") from None
            raise

        if not row or row[0] == 0:
            raise LostOwnershipError(self.job_id, "the job row was already deleted")
        self._record(Outcome.DESTROYED)
        if self.outcome is Outcome.DESTROYED:
            # Committed already; inside a transaction the point is after_commit.
            crashpoints.reach("after_destroy")

    def retry_in(self, seconds: float) -> None:
        """Run the job again after `seconds`, without counting this attempt.

        The job body should return after calling it; the worker then leaves
        the row alone.
        """
        delay = check_delay(seconds)
        self._report(delay=delay, expire=False, refund=True, error=None)
        self._record(Outcome.RESCHEDULED)

    def expire(self, reason: str = "expired by the job") -> None:
        """Keep the job as failed, with `reason` as its last error; no retry follows."""
        self._report(delay=None, expire=True, refund=False, error=reason)
        self._record(Outcome.EXPIRED)

    def _report(
        self, *, delay: float | None, expire: bool, refund: bool, error: str | None
    ) -> None:
        self._check_owned()
        params = self._ownership_params() | {
            "delay": delay,
            "expire": expire,
            "refund": refund,
            "error": error,
            "backtrace": None,
        }
        row = self.connection.execute(queries.report_job(self.schema), params).fetchone()
        if not row or not row[0]:
            self.lost.set()
            raise LostOwnershipError(self.job_id, "lock lost before the report")

    def _record(self, outcome: Outcome) -> None:
        in_transaction = self.connection.info.transaction_status == pq.TransactionStatus.INTRANS
        if in_transaction and self._transaction_depth > 0:
            self._pending = outcome
        elif not in_transaction:
            self.outcome = outcome
        # A transaction opened without transaction() leaves the outcome
        # unknown; the worker's own destroy afterwards settles it.

    def _check_owned(self) -> None:
        if self.lost.is_set():
            raise LostOwnershipError(self.job_id, "the worker's locker connection was lost")

    def _ownership_params(self) -> dict[str, Any]:
        return {"class": self._lock_class, "id": self.job_id, "locker_pid": self._job.locker_pid}
