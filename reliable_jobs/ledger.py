"""The side-effect ledger: claim, settle, list, resolve and prune effect keys.

Claims and outcomes are written on a connection of their own in autocommit
mode, outside the job's transaction, so a rollback of the job cannot erase
them. A claim is alive exactly as long as its owner's database session
holds the key's advisory lock: neither a stuck row nor an expiry timer
decides it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import class_row

from . import queries
from .app import App
from .errors import InvalidArgumentError, ReliableJobsError

logger = logging.getLogger(__name__)

SETTLED_STATES = ("done", "skipped")


@dataclass(frozen=True)
class Claim:
    """The result of claiming an effect key; see claim_effect() in the migrations."""

    outcome: str
    result: Any
    stored_fingerprint: str | None


@dataclass(frozen=True)
class Effect:
    """One row of the ledger."""

    key: str
    state: str
    job_id: int | None
    job_name: str | None
    calls: int
    last_error: str | None
    result: Any
    updated_at: dt.datetime


class Ledger:
    """Ledger operations for one schema over one autocommit connection."""

    def __init__(self, conn: psycopg.Connection[Any], *, schema: str, lock_class: int) -> None:
        self.conn = conn
        self.schema = schema
        self.lock_class = lock_class

    def claim(self, key: str, fingerprint: str, job_id: int | None, job_name: str | None) -> Claim:
        params = {
            "class": self.lock_class,
            "key": key,
            "fingerprint": fingerprint,
            "job_id": job_id,
            "job_name": job_name,
        }
        row = self.conn.execute(queries.claim_effect(self.schema), params).fetchone()
        assert row is not None
        return Claim(*row)

    def reclaim(self, key: str) -> None:
        self.conn.execute(queries.reclaim_effect(self.schema), {"key": key})

    def settle(self, key: str, state: str, result: Any = None, error: str | None = None) -> None:
        """Record the outcome of the caller's claim and release its lock."""
        params = {
            "class": self.lock_class,
            "key": key,
            "state": state,
            "result": _json_or_none(result),
            "error": error,
        }
        self.conn.execute(queries.settle_effect(self.schema), params)

    def settle_orphaned(self, key: str, state: str, result: Any, owner_pid: int) -> bool:
        """Record an outcome after the claiming session was lost; see the query."""
        params = {
            "key": key,
            "state": state,
            "result": _json_or_none(result),
            "owner_pid": owner_pid,
        }
        return self.conn.execute(queries.settle_orphaned_effect(self.schema), params).rowcount > 0


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, allow_nan=False)


def list_effects(app: App, *, uncertain_only: bool = False, limit: int = 100) -> list[Effect]:
    """Return ledger rows, most recently changed first.

    With `uncertain_only`, return the effects awaiting review: uncertain,
    or claimed by a session that may have died.
    """
    states = ["uncertain", "claimed"] if uncertain_only else None
    with app.admin_connection() as conn:
        cursor = conn.cursor(row_factory=class_row(Effect))
        params = {"states": states, "limit": limit}
        return cursor.execute(queries.list_effects(app.schema), params).fetchall()


def resolve_effect(app: App, key: str, *, done: bool, result: Any = None) -> int | None:
    """Settle an uncertain effect by hand and resume its job; return the job id.

    `done=True` records that the effect happened, with `result` as what the
    function returns from now on; `done=False` deletes the claim so that the
    next attempt calls the function again. The job that was held for review
    is made runnable at once.
    """
    if not done and result is not None:
        raise InvalidArgumentError("result= applies only with done=True")
    params = {"class": app.effect_lock_class, "key": key, "result": _json_or_none(result)}

    with app.admin_connection() as conn:
        row = conn.execute(queries.try_effect_lock(app.schema), params).fetchone()
        if not row or not row[0]:
            raise ReliableJobsError(
                f"effect {key!r} is being called right now by a live worker; wait for it "
                "to finish instead of resolving it"
            )
        try:
            query = queries.resolve_effect_done if done else queries.resolve_effect_not_done
            changed = conn.execute(query(app.schema), params).fetchone()
            if changed is None:
                state = conn.execute(queries.effect_state(app.schema), params).fetchone()
                raise ReliableJobsError(
                    f"effect {key!r} is {'not in the ledger' if state is None else state[0]}; "
                    "only claimed or uncertain effects can be resolved"
                )
            job_id: int | None = changed[0]
            if job_id is not None:
                conn.execute(queries.resume_job(app.schema), {"id": job_id})
        finally:
            conn.execute(queries.release_effect_lock(app.schema), params)

    logger.info(
        "Effect %s resolved by hand as %s; job %s resumed",
        key,
        "done" if done else "not done",
        job_id,
        extra={"action": "effect_resolved", "job_id": job_id},
    )
    return job_id


def prune_effects(app: App, older_than: dt.timedelta) -> int:
    """Delete settled effects older than `older_than` whose job is gone; return the count.

    Claimed and uncertain effects are never pruned, and neither is an
    effect whose claiming job is still in the queue, because that job may
    run again and must find the key.

    NOTE: another queued job with the same key that has not run yet is not
    known to the ledger; pick a cutoff longer than such a job can wait.
    """
    seconds = older_than.total_seconds()
    if seconds < 0:
        raise InvalidArgumentError(f"older_than={older_than} is negative; pass a duration >= 0")
    with app.admin_connection() as conn:
        cursor = conn.execute(queries.prune_effects(app.schema), {"older_than": seconds})
        return cursor.rowcount
