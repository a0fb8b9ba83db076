"""Dedicated connections with reconnection on failure."""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import tenacity
from psycopg import pq

logger = logging.getLogger(__name__)

Connect = Callable[[], psycopg.Connection[Any]]


def connect_with_backoff(
    connect: Connect, stopping: threading.Event, purpose: str
) -> psycopg.Connection[Any] | None:
    """Connect, retrying with jittered exponential backoff until `stopping` is set.

    Return None if the worker started stopping before a connection was made.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(psycopg.OperationalError),
        wait=tenacity.wait_exponential(multiplier=0.05, max=5.0) + tenacity.wait_random(0, 0.2),
        stop=lambda _state: stopping.is_set(),
        sleep=lambda seconds: _sleep_unless_stopping(stopping, seconds),
        before_sleep=lambda state: logger.warning(
            "Cannot connect the %s connection (attempt %d): %s; retrying",
            purpose,
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
            extra={"action": "reconnect", "purpose": purpose},
        ),
        reraise=False,
    )
    try:
        return retrying(connect)
    except tenacity.RetryError:
        return None


def _sleep_unless_stopping(stopping: threading.Event, seconds: float) -> None:
    stopping.wait(seconds)


def is_usable(conn: psycopg.Connection[Any] | None) -> bool:
    """Return whether a connection can still run statements, as far as is known.

    An idle connection has nothing to read. A readable socket means that the
    server closed it or sent a termination notice (a restart, or
    pg_terminate_backend), so the connection is treated as broken. The
    check costs no round trip.
    """
    if conn is None or conn.closed or conn.broken:
        return False
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def check_socket(conn: psycopg.Connection[Any]) -> None:
    """Raise OperationalError if is_usable() finds the connection closed.

    Used as a pool's check: it finds connections that a server restart
    closed, without the round trip of a test query.
    """
    if not is_usable(conn):
        # Closed here so that the pool discards it instead of handing it out again.
        close_quietly(conn)
        raise psycopg.OperationalError("the server closed this connection")


def close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection, ignoring errors from one that is already broken."""
    if conn is None:
        return
    try:
        conn.close()
    except psycopg.Error:
        logger.debug("Error while closing a connection", exc_info=True)
