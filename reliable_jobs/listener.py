"""LISTEN for new jobs on a connection of its own, reconnecting after failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

import psycopg
from psycopg import sql

from .connections import Connect, close_quietly, connect_with_backoff

logger = logging.getLogger(__name__)


class Listener(threading.Thread):
    """Set `wake` whenever a job is enqueued on one of the worker's queues.

    It checks `stopping` every 0.2 s, the timeout of each wait.

    psycopg's notifies() holds its connection's lock while it waits, so the
    listener never shares its connection with queries. After each
    (re)connection it sets `wake` once, because notifications sent while it
    was disconnected are lost and the worker must poll.
    """

    def __init__(
        self,
        connect: Connect,
        channel: str,
        queues: Collection[str] | None,
        wake: threading.Event,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name="reliable_jobs-listener", daemon=True)
        self.connect = connect
        self.channel = channel
        self.queues = set(queues) if queues is not None else None
        self.wake = wake
        self.stopping = stopping
        self.connected = threading.Event()
        self.connections = 0  # LISTEN sessions started so far, reconnections included
        self.conn: psycopg.Connection[object] | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            conn = connect_with_backoff(self.connect, self.stopping, "listener")
            if conn is None:
                return
            self.conn = conn
            try:
                self._listen(conn)
            except psycopg.OperationalError as error:
                if self.stopping.is_set():
                    return
                logger.warning(
                    "Listener connection lost: %s; reconnecting",
                    error,
                    extra={"action": "listen"},
                )
            finally:
                self.connected.clear()
                close_quietly(conn)

    def _listen(self, conn: psycopg.Connection[object]) -> None:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self.connections += 1
        self.connected.set()
        self.wake.set()
        logger.debug("Listening on %s", self.channel, extra={"action": "listen"})

        while not self.stopping.is_set():
            for notify in conn.notifies(timeout=0.2):
                if self.queues is None or notify.payload in self.queues:
                    self.wake.set()
