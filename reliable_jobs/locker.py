"""The locker: one dedicated connection that holds the locks of running jobs.

A job belongs to a worker for as long as the locker's session holds the
job's advisory lock. If the session ends, PostgreSQL releases its locks at
once and another worker may take the job: no lease or timer is involved.
The locker is used by the worker's main thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from . import queries
from .connections import close_quietly
from .context import LockedJob

logger = logging.getLogger(__name__)


class Locker:
    """Lock, unlock and release jobs over one session."""

    def __init__(self, conn: psycopg.Connection[Any], *, schema: str, lock_class: int) -> None:
        self.conn = conn
        self.pid = conn.info.backend_pid
        self.schema = schema
        self.lock_class = lock_class

    def lock(
        self, limit: int, queues: Sequence[str] | None, exclude: Collection[int]
    ) -> list[LockedJob]:
        """Lock up to `limit` due jobs and count an attempt on each, committed."""
        params = {
            "class": self.lock_class,
            "queues": list(queues) if queues is not None else None,
            "exclude": list(exclude),
            "limit": limit,
        }
        try:
            cursor = self.conn.cursor(row_factory=dict_row)
            rows = cursor.execute(queries.lock_jobs(self.schema), params).fetchall()
        except psycopg.OperationalError:
            raise
        except psycopg.Error:
            # The function's transaction rolled back, but session locks taken
            # before the error survive a rollback: release them.
            self._release_stray_locks(exclude)
            raise
        return [LockedJob(**row, locker_pid=self.pid) for row in rows]

    def cycle(
        self,
        destroy: Collection[int],
        unlock: Collection[int],
        limit: int,
        queues: Sequence[str] | None,
        exclude: Collection[int],
    ) -> tuple[list[LockedJob], list[int]]:
        """Delete `destroy`, unlock `unlock`, then lock up to `limit` due jobs.

        Return the jobs locked, and the ids of `destroy` whose row was
        already gone (so their attempt is not reported done).
        """
        params = {
            "class": self.lock_class,
            "destroy": list(destroy),
            "unlock": list(unlock),
            "queues": list(queues) if queues is not None else None,
            "exclude": list(exclude),
            "limit": max(0, limit),
        }
        try:
            cursor = self.conn.cursor(row_factory=dict_row)
            rows = cursor.execute(queries.worker_cycle(self.schema), params).fetchall()
        except psycopg.Error:
            if not self.broken:
                self._release_stray_locks([*exclude, *unlock])
            raise

        locked: list[LockedJob] = []
        missing: list[int] = []
        for row in rows:
            if row.pop("kind") == "missing":
                missing.append(row["id"])
            else:
                locked.append(LockedJob(**row, locker_pid=self.pid))
        return locked, missing

    @property
    def broken(self) -> bool:
        """Whether the session is gone, and every lock it held with it."""
        return self.conn.closed or self.conn.broken

    def unlock(self, ids: Collection[int]) -> None:
        """Release the advisory locks of finished jobs."""
        if not ids:
            return
        params = {"class": self.lock_class, "ids": list(ids)}
        row = self.conn.execute(queries.unlock_jobs(self.schema), params).fetchone()
        unlocked = row[0] if row else 0
        if unlocked != len(ids):
            logger.warning(
                "Released %d of %d job locks; the others were not held",
                unlocked,
                len(ids),
                extra={"action": "unlock"},
            )

    def report(
        self,
        job: LockedJob,
        *,
        delay: float | None,
        expire: bool = False,
        refund: bool = False,
        error: str | None = None,
        backtrace: str | None = None,
    ) -> bool:
        """Record an attempt's outcome on the locker connection; see report_job()."""
        params = {
            "class": self.lock_class,
            "id": job.id,
            "locker_pid": self.pid,
            "delay": delay,
            "expire": expire,
            "refund": refund,
            "error": error,
            "backtrace": backtrace,
        }
        row = self.conn.execute(queries.report_job(self.schema), params).fetchone()
        return bool(row and row[0])

    def terminate_backend(self, pid: int) -> None:
        """End another session, rolling back its open transaction."""
        try:
            self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.Error as error:
            logger.warning(
                "Cannot terminate backend %d: %s", pid, error, extra={"action": "terminate"}
            )

    def close(self) -> None:
        """Close the session, which releases every lock it still holds."""
        close_quietly(self.conn)

    def _release_stray_locks(self, keep: Collection[int]) -> None:
        keep_keys = {job_id & 0x7FFFFFFF for job_id in keep}
        try:
            rows = self.conn.execute(
                queries.held_locks(self.schema), {"class": self.lock_class}
            ).fetchall()
            for (key,) in rows:
                if key not in keep_keys:
                    self.conn.execute(
                        queries.unlock_key(self.schema), {"class": self.lock_class, "key": key}
                    )
        except psycopg.Error:
            logger.exception("Cannot release stray job locks", extra={"action": "unlock"})
