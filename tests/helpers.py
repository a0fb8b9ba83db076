"""Helpers for tests: worker processes, polling, and table reads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reliable_jobs import App, Worker

ROOT = Path(__file__).resolve().parent.parent


def start_worker_process(
    dsn: str, schema: str, log_path: Path, *worker_args: str
) -> subprocess.Popen[bytes]:
    """Start `reliable-jobs worker` on tests.jobs_app in a new process."""
    env = {**os.environ, "RJ_TEST_DSN": dsn, "RJ_TEST_SCHEMA": schema}
    command = [
        sys.executable,
        "-m",
        "reliable_jobs",
        "-v",
        "worker",
        "--app",
        "tests.jobs_app:build_app",
        "--poll-interval",
        "0.5",
        *worker_args,
    ]
    # The child keeps its own copy of the file descriptor.
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def fetch(conn: psycopg.Connection[Any], schema: str, query: str, *params: Any) -> list[Any]:
    """Run `query`, with {} replaced by the schema, and return all rows."""
    statement = sql.SQL(query).format(sql.Identifier(schema))
    return conn.execute(statement, params).fetchall()


def scalar(conn: psycopg.Connection[Any], schema: str, query: str, *params: Any) -> Any:
    """Run `query` and return the first column of its first row."""
    rows = fetch(conn, schema, query, *params)
    return rows[0][0] if rows else None


@contextmanager
def worker_thread(app: App, **options: Any) -> Iterator[Worker]:
    """Run a worker on a thread for the duration of the block, then stop it."""
    options.setdefault("install_signal_handlers", False)
    worker = Worker(app, **options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop within 30 s"
