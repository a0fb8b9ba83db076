"""Count external effects outside every transaction under test."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from ..app import App


class EffectRecorder:
    """A log of external calls by key, kept in a table of the app's schema.

    Each record() commits at once on the recorder's own connection, so no
    crash or rollback of the job under test can erase it, and worker
    processes that build the same recorder write to the same log. Use it
    in place of the external system in tests:
    `assert recorder.count("charge:42") == 1`.
    """

    def __init__(self, app: App, table: str = "recorded_effects") -> None:
        self.app = app
        self.table = sql.Identifier(app.schema, table)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def record(self, key: str) -> None:
        """Log one external call under `key`."""
        self._execute(sql.SQL("INSERT INTO {} (key) VALUES (%s)").format(self.table), (key,))

    def count(self, key: str) -> int:
        """Return how many calls were logged under `key`."""
        return self.counts().get(key, 0)

    def counts(self) -> Counter[str]:
        """Return the number of calls logged per key."""
        rows = self._execute(
            sql.SQL("SELECT key, count(*) FROM {} GROUP BY key").format(self.table)
        )
        return Counter({key: count for key, count in rows})

    def clear(self) -> None:
        """Forget every logged call."""
        self._execute(sql.SQL("DELETE FROM {}").format(self.table))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _create_table(self, conn: psycopg.Connection[Any]) -> None:
        # Created at first use, so a recorder can be built before migrate().
        # Two processes creating it at once race on the catalog; one wins.
        with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (key text NOT NULL, "
                    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
                ).format(self.table)
            )

    def _execute(self, query: sql.Composed, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self.app.connect("recorder")
                self._create_table(self._conn)
            cursor = self._conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []
