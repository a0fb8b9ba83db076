"""The worker: a main loop that locks jobs and threads that run them."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg

from .connections import connect_with_backoff, is_usable
from .context import JobContext, LockedJob
from .errors import InvalidArgumentError, translated_database_errors
from .execution import JobRunner
from .listener import Listener
from .locker import Locker
from .schema import check_schema_version
from .triage import triage

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)

# TCP keepalives make a locker whose server vanished without closing the
# connection (a network partition) see an error within about 25 s, instead
# of holding on to jobs it no longer owns. See libpq's keepalives options.
LOCKER_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


@dataclass
class RunningJob:
    """A job handed to a job thread and not finished yet."""

    job: LockedJob
    context: JobContext | None = None
    # Set when the worker no longer holds the job's lock; shared with the
    # job's context so that a context created later still sees it.
    lost: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


class Worker:
    """Run jobs from the app's queue until stopped.

    The main loop owns the locker connection. `concurrency` job threads
    run the jobs, each on a connection of its own, and a listener thread
    wakes the loop when a job is enqueued. stop(), SIGTERM and SIGINT stop
    taking jobs and give running ones `shutdown_grace` seconds to finish.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        burst: bool = False,
        poll_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        install_signal_handlers: bool = True,
    ) -> None:
        _check_worker_options(queues, concurrency, poll_interval, shutdown_grace)
        self.app = app
        self.queues = list(queues) if queues is not None else None
        self.concurrency = concurrency
        self.burst = burst
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.install_signal_handlers = install_signal_handlers

        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.running: dict[int, RunningJob] = {}
        self.finished: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self.tasks: queue.SimpleQueue[RunningJob | None] = queue.SimpleQueue()
        self.locker: Locker | None = None
        self.halted = False
        self.runners: list[JobRunner] = []
        self.next_due = float("inf")  # monotonic time of a retry this worker scheduled
        self.next_due_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.listener = Listener(
            lambda: app.connect("listener"), app.channel, self.queues, self.wake, self.stopping
        )

    def halt(self) -> None:
        """Stop at once, as if the process died: no unlock, no report, no grace.

        For crash tests: the caller ends the worker's database sessions
        (see session_pids()) so that the server rolls back and unlocks.
        """
        self.halted = True
        self.stop()

    def session_pids(self) -> list[int]:
        """Return the backend pids of every database session the worker has open."""
        connections = [self.listener.conn]
        if self.locker is not None:
            connections.append(self.locker.conn)
        for runner in self.runners:
            connections.extend([runner.conn, runner.autonomous_conn])
        return [
            conn.info.backend_pid for conn in connections if conn is not None and not conn.closed
        ]

    def stop(self) -> None:
        """Stop taking jobs; run() returns once running jobs finish or the grace ends."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        """Run jobs until stop() is called, a signal arrives, or (burst) none are due.

        Raise ConfigurationError when no database address is set or the
        schema is not migrated, and in burst mode DatabaseUnavailableError
        when the database cannot be reached at start.
        """
        self.app.conninfo  # noqa: B018 -- raises before any thread starts
        logger.info(
            "Worker starting: pid %d, queues %s, concurrency %d%s",
            os.getpid(),
            ",".join(self.queues) if self.queues else "all",
            self.concurrency,
            ", burst" if self.burst else "",
            extra={"action": "worker_start"},
        )
        previous_handlers = self._install_signal_handlers()
        try:
            self._connect_first_locker()
            self._start_threads()
            self._loop()
        finally:
            self._shut_down()
            self._restore_signal_handlers(previous_handlers)
            logger.info("Worker stopped: pid %d", os.getpid(), extra={"action": "worker_stop"})

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()
            if self.locker is None and not self._connect_locker():
                return

            try:
                locked = self._lock_round()
            except psycopg.OperationalError as error:
                self._on_locker_lost(error)
                continue

            if self.burst and not locked and not self.running:
                logger.info("No job is due; burst worker exiting", extra={"action": "burst_end"})
                return
            if locked and len(self.running) < self.concurrency:
                continue
            self.wake.wait(self._seconds_to_wait())

    def note_due(self, delay: float) -> None:
        """Wake the loop after `delay` seconds, when a retry scheduled here is due."""
        with self.next_due_lock:
            self.next_due = min(self.next_due, time.monotonic() + delay)

    def _seconds_to_wait(self) -> float:
        with self.next_due_lock:
            now = time.monotonic()
            if self.next_due <= now:
                self.next_due = float("inf")
                return 0.0
            return min(self.poll_interval, self.next_due - now)

    def _lock_round(self) -> int:
        """Unlock finished jobs, then lock due jobs for the free threads."""
        assert self.locker is not None
        self.locker.unlock(self._collect_finished())

        free = self.concurrency - len(self.running)
        if free <= 0:
            # No query runs while every thread is busy, so look at the
            # socket: a terminated session is seen within one poll interval.
            if not is_usable(self.locker.conn):
                raise psycopg.OperationalError("the locker connection was closed by the server")
            return 0
        jobs = self.locker.lock(free, self.queues, self.running.keys())
        runnable = triage(self.app, self.locker, jobs)
        for job in runnable:
            running = RunningJob(job)
            self.running[job.id] = running
            self.tasks.put(running)
        return len(jobs)

    def _collect_finished(self) -> list[int]:
        to_unlock: list[int] = []
        while True:
            try:
                job_id, locker_pid = self.finished.get_nowait()
            except queue.Empty:
                return to_unlock
            self.running.pop(job_id, None)
            # A job locked by a previous locker session lost its lock with
            # that session; unlocking it here would act on another session.
            if self.locker is not None and locker_pid == self.locker.pid:
                to_unlock.append(job_id)

    def _connect_first_locker(self) -> None:
        """Connect the locker and check the schema version before taking jobs."""
        if self.burst:
            # A one-off run fails fast instead of waiting for the database.
            with translated_database_errors(self.app.schema):
                conn = self.app.connect("locker", **LOCKER_KEEPALIVES)
            self.locker = Locker(conn, schema=self.app.schema, lock_class=self.app.lock_class)
        elif not self._connect_locker():
            return
        assert self.locker is not None
        check_schema_version(self.locker.conn, self.app.schema)

    def _connect_locker(self) -> bool:
        conn = connect_with_backoff(
            lambda: self.app.connect("locker", **LOCKER_KEEPALIVES), self.stopping, "locker"
        )
        if conn is None:
            return False
        self.locker = Locker(conn, schema=self.app.schema, lock_class=self.app.lock_class)
        logger.debug("Locker connected: backend %d", self.locker.pid, extra={"action": "locker"})
        return True

    def _on_locker_lost(self, error: Exception) -> None:
        """Mark every running job as no longer owned: its lock went with the session."""
        logger.warning(
            "Locker connection lost: %s; %d running job(s) are no longer owned and will "
            "not be reported done",
            error,
            len(self.running),
            extra={"action": "locker_lost"},
        )
        for running in self.running.values():
            running.lost.set()
            logger.warning(
                "Job %d (%s): lost ownership with the locker connection",
                running.job.id,
                running.job.job_name,
                extra={"action": "lost", "job_id": running.job.id},
            )
        if self.locker is not None:
            self.locker.close()
        self.locker = None

    def _start_threads(self) -> None:
        # A burst worker stops once nothing is due, so it never waits for news.
        if not self.burst:
            self.listener.start()
        for index in range(self.concurrency):
            runner = JobRunner(self.app, self.tasks, self.finished, self.wake, self.note_due)
            self.runners.append(runner)
            thread = threading.Thread(
                target=runner.run, name=f"reliable_jobs-job-{index}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _shut_down(self) -> None:
        """Let running jobs finish within the grace period, then release the rest."""
        self.stopping.set()
        if self.halted:
            if self.locker is not None:
                self.locker.close()
            return
        deadline = time.monotonic() + self.shutdown_grace
        while self.running and time.monotonic() < deadline:
            self._drain_finished_quietly()
            if self.running:
                self.wake.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                self.wake.clear()
        self._drain_finished_quietly()

        for _ in self.threads:
            self.tasks.put(None)
        if self.running:
            self._abandon_running()
        if self.locker is not None:
            self.locker.close()

        # Idle job threads close their connections on the sentinel; a thread
        # still in an abandoned job is left behind as a daemon. The listener
        # checks `stopping` every 0.2 s.
        deadline = time.monotonic() + 2.0
        started = [thread for thread in [*self.threads, self.listener] if thread.ident]
        for thread in started:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _drain_finished_quietly(self) -> None:
        finished = self._collect_finished()
        if self.locker is None or not finished:
            return
        try:
            self.locker.unlock(finished)
        except psycopg.Error as error:
            logger.warning("Cannot unlock finished jobs: %s", error, extra={"action": "unlock"})

    def _abandon_running(self) -> None:
        """Roll back jobs cut off by the grace period; make them runnable at once."""
        for running in list(self.running.values()):
            job = running.job
            ctx = running.context
            logger.warning(
                "Job %d (%s): still running after the %.1f s shutdown grace; rolling it back",
                job.id,
                job.job_name,
                self.shutdown_grace,
                extra={"action": "abandon", "job_id": job.id},
            )
            running.lost.set()
            if self.locker is None or job.locker_pid != self.locker.pid:
                continue
            try:
                if ctx is not None:
                    self.locker.terminate_backend(ctx.connection.info.backend_pid)
                self.locker.report(job, delay=None, refund=True)
                self.locker.unlock([job.id])
            except psycopg.Error as error:
                logger.warning(
                    "Job %d (%s): cannot release after shutdown: %s; it becomes runnable "
                    "when this process exits",
                    job.id,
                    job.job_name,
                    error,
                    extra={"action": "abandon", "job_id": job.id},
                )

    def _install_signal_handlers(self) -> dict[int, Any]:
        if not self.install_signal_handlers:
            return {}
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info(
            "Received %s: finishing running jobs, taking no new ones",
            signal.Signals(signum).name,
            extra={"action": "signal"},
        )
        self.stop()


def _check_worker_options(
    queues: Sequence[str] | None, concurrency: int, poll_interval: float, shutdown_grace: float
) -> None:
    if queues is not None and (
        isinstance(queues, str) or not all(isinstance(q, str) and q for q in queues)
    ):
        raise InvalidArgumentError(
            f"queues={queues!r} is invalid; pass a list of queue names, or None for all"
        )
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidArgumentError(f"concurrency={concurrency!r} is invalid; pass an int >= 1")
    if not poll_interval > 0:
        raise InvalidArgumentError(f"poll_interval={poll_interval!r} is invalid; pass seconds > 0")
    if not shutdown_grace >= 0:
        raise InvalidArgumentError(
            f"shutdown_grace={shutdown_grace!r} is invalid; pass seconds >= 0"
        )
