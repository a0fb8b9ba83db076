"""The worker: a main loop that locks jobs and threads that run them."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import psycopg

from . import crashpoints
from .connections import connect_with_backoff, is_usable
from .context import LockedJob
from .errors import InvalidArgumentError, translated_database_errors
from .execution import JobRunner
from .listener import Listener
from .locker import Locker
from .running import Finished, RunningJob
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
        prefetch: int | None = None,
    ) -> None:
        _check_worker_options(queues, concurrency, poll_interval, shutdown_grace)
        if prefetch is not None and (not isinstance(prefetch, int) or prefetch < 0):
            raise InvalidArgumentError(f"prefetch={prefetch!r} is invalid; pass an int >= 0")
        self.app = app
        self.queues = list(queues) if queues is not None else None
        self.concurrency = concurrency
        # Locked jobs waiting for a thread, so that threads never wait for
        # the database; each is counted as an attempt when it is locked.
        # NOTE: if the process dies before a thread starts a prefetched job,
        # that attempt counts as one that died.
        self.capacity = concurrency + (concurrency if prefetch is None else prefetch)
        self.burst = burst
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.install_signal_handlers = install_signal_handlers

        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.running: dict[int, RunningJob] = {}
        self.finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        # Finished jobs whose row the next cycle deletes, and whose lock it
        # releases; kept until a cycle commits.
        self.pending_destroy: list[int] = []
        self.pending_unlock: list[int] = []
        self.unstarted: list[LockedJob] = []
        self.unlocked_last = 0  # jobs unlocked by the last cycle
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
            except psycopg.Error as error:
                if self.locker is None or self.locker.broken:
                    self._on_locker_lost(error)
                    continue
                # The session and its locks are intact (a deadlock, a
                # timeout): the cycle rolled back, so try it again.
                logger.warning(
                    "Worker cycle failed: %s; retrying", error, extra={"action": "cycle_failed"}
                )
                self.wake.wait(0.05)
                continue

            if self.burst and not locked and not self.running:
                # Jobs unlocked by that cycle may be due again (a retry
                # without delay): a burst worker looks once more first.
                if self.unlocked_last:
                    continue
                logger.info("No job is due; burst worker exiting", extra={"action": "burst_end"})
                return
            if locked and len(self.running) < self.capacity:
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

    def _lock_round(self, limit: int | None = None) -> int:
        """Settle finished jobs, then lock due jobs for the free places, in one cycle."""
        assert self.locker is not None
        self._collect_finished()
        free = self.capacity - len(self.running) if limit is None else limit
        if free <= 0 and not self.pending_unlock:
            # No query runs while every place is taken, so look at the
            # socket: a terminated session is seen within one poll interval.
            if not is_usable(self.locker.conn):
                raise psycopg.OperationalError("the locker connection was closed by the server")
            return 0

        destroy = list(self.pending_destroy)
        self.unlocked_last = len(self.pending_unlock)
        if destroy:
            crashpoints.reach("before_destroy")
        jobs, missing = self.locker.cycle(
            destroy, self.pending_unlock, free, self.queues, self.running.keys()
        )
        self.pending_destroy.clear()
        self.pending_unlock.clear()
        if destroy:
            crashpoints.reach("after_destroy")
        _log_destroyed(destroy, set(missing))

        for job in triage(self.app, self.locker, jobs):
            running = RunningJob(job)
            self.running[job.id] = running
            self.tasks.put(running)
        return len(jobs)

    def _collect_finished(self) -> None:
        while True:
            try:
                item = self.finished.get_nowait()
            except queue.Empty:
                return
            running = self.running.pop(item.job_id, None)
            # A job locked by a previous locker session lost its lock with
            # that session; settling it here would act on another session.
            if self.locker is None or item.locker_pid != self.locker.pid:
                continue
            if not item.started and running is not None:
                self.unstarted.append(running.job)
                continue
            self.pending_unlock.append(item.job_id)
            if item.destroy:
                self.pending_destroy.append(item.job_id)

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
        # The finished jobs' rows and locks belonged to the lost session.
        self.pending_destroy.clear()
        self.pending_unlock.clear()
        self.unstarted.clear()
        if self.locker is not None:
            self.locker.close()
        self.locker = None

    def _start_threads(self) -> None:
        # A burst worker stops once nothing is due, so it needs no listener.
        if not self.burst:
            self.listener.start()
        for index in range(self.concurrency):
            runner = JobRunner(
                self.app, self.tasks, self.finished, self.wake, self.note_due, self.stopping
            )
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
        """Delete and unlock finished jobs, and release the ones never started."""
        if self.locker is None:
            return
        try:
            self._lock_round(limit=0)
            self._release_unstarted()
        except psycopg.Error as error:
            logger.warning(
                "Cannot settle finished jobs at shutdown: %s; they run again elsewhere",
                error,
                extra={"action": "unlock"},
            )

    def _release_unstarted(self) -> None:
        """Give back the attempt of prefetched jobs that never ran, and unlock them."""
        assert self.locker is not None
        for job in self.unstarted:
            self.locker.report(job, delay=None, refund=True)
        self.locker.unlock([job.id for job in self.unstarted])
        self.unstarted.clear()

    def _abandon_running(self) -> None:
        """Roll back jobs cut off by the grace period; make them runnable at once."""
        for running in list(self.running.values()):
            job = running.job
            if not running.started:
                continue
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


def _log_destroyed(destroyed: list[int], missing: set[int]) -> None:
    for job_id in destroyed:
        if job_id in missing:
            logger.warning(
                "Job %d: its row was already deleted when the worker came to delete it; "
                "this attempt is not reported done",
                job_id,
                extra={"action": "lost", "job_id": job_id},
            )
        else:
            logger.debug("Job %d: done", job_id, extra={"action": "job_done", "job_id": job_id})
