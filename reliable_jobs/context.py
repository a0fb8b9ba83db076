"""The context a running job receives as its first argument."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from . import queries
from .errors import LostOwnershipError
from .jobs import check_delay

# SQLSTATE raised by destroy_job() when the locker no longer holds the lock.
LOST_LOCK_SQLSTATE = "RJ001"


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
    """What the job body already decided about its own row."""

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
    ) -> None:
        self.job_id = job.id
        self.name = job.job_name
        self.queue = job.queue
        self.attempt = job.attempts
        self.connection = connection
        self.lost = lost if lost is not None else threading.Event()
        self.outcome = Outcome.NONE
        self._job = job
        self._schema = schema
        self._lock_class = lock_class
        self._transaction_depth = 0
        self._pending = Outcome.NONE

    def __repr__(self) -> str:
        return f"<JobContext job_id={self.job_id} name={self.name!r} attempt={self.attempt}>"

    @property
    def owned(self) -> bool:
        """Whether this worker still holds the job's lock, as far as it knows."""
        return not self.lost.is_set()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Transaction]:
        """Open a transaction on `connection`; destroy() inside it commits with it."""
        self._transaction_depth += 1
        try:
            with self.connection.transaction() as tx:
                yield tx
        except BaseException:
            if self._transaction_depth == 1:
                self._pending = Outcome.NONE
            raise
        finally:
            self._transaction_depth -= 1

        if self._transaction_depth == 0 and self._pending is not Outcome.NONE:
            self.outcome, self._pending = self._pending, Outcome.NONE

    def destroy(self) -> None:
        """Delete the job row, inside the current transaction when there is one.

        Raise LostOwnershipError when the worker no longer holds the job's
        lock, or when the row was already deleted: in both cases another
        worker may have run the job, so this attempt must not count as done.
        """
        self._check_owned()
        try:
            row = self.connection.execute(
                queries.destroy_job(self._schema), self._ownership_params()
            ).fetchone()
        except psycopg.DatabaseError as error:
            if error.sqlstate == LOST_LOCK_SQLSTATE:
                self.lost.set()
                raise LostOwnershipError(self.job_id, "lock lost before the destroy") from None
            raise

        if not row or row[0] == 0:
            raise LostOwnershipError(self.job_id, "the job row was already deleted")
        self._record(Outcome.DESTROYED)

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
        row = self.connection.execute(queries.report_job(self._schema), params).fetchone()
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
