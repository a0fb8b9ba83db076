"""Replay a job to completion under a schedule of crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import crashpoints
from ..app import App
from ..jobs import JobFunction
from ..ledger import Effect, list_effects
from ..worker import Worker
from .strategies import Crash

FinalState = Literal["done", "failed", "pending"]

# Seconds a single run may take before the replay gives up on it.
RUN_TIMEOUT = 60.0
# Seconds a closed session's locks may take to disappear from pg_locks.
LOCK_RELEASE_SECONDS = 5.0


class ReplayViolation(AssertionError):
    """A replay broke a property; the message contains the schedule and every run."""


@dataclass(frozen=True)
class Run:
    """One worker run of the replay: the crash it armed, and what it reached."""

    number: int
    crash: Crash | None
    crashed: bool
    points: tuple[str, ...]


@dataclass
class ReplayReport:
    """An account of one replay: its runs, the job's final state, and what it left behind."""

    job_id: int
    schedule: tuple[Crash, ...]
    runs: list[Run] = field(default_factory=list)
    final_state: FinalState = "pending"
    last_error: str | None = None
    effects: list[Effect] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def crashes_not_reached(self) -> tuple[Crash, ...]:
        """Crashes of the schedule that no run reached before the job finished."""
        fired = sum(1 for run in self.runs if run.crashed)
        return self.schedule[fired:]

    @property
    def crash_points_hit(self) -> list[str]:
        return [run.crash.point for run in self.runs if run.crashed and run.crash]

    def effect_states(self) -> dict[str, str]:
        """Return the ledger state of each effect key."""
        return {effect.key: effect.state for effect in self.effects}

    def describe(self) -> str:
        """Return a readable account: schedule, runs, final state, ledger, leftovers."""
        lines = [f"crash schedule: {list(self.schedule)}", f"job {self.job_id}:"]
        for run in self.runs:
            outcome = f"crashed at {run.crash!r}" if run.crashed else "ran without crashing"
            lines.append(f"  run {run.number}: {outcome}; reached {' > '.join(run.points) or '-'}")
        lines.append(
            f"final state: {self.final_state}"
            + (f" ({self.last_error})" if self.last_error else "")
        )
        for effect in self.effects:
            lines.append(f"ledger: {effect.key} {effect.state} after {effect.calls} call(s)")
        lines.extend(f"leftover: {item}" for item in self.leftovers)
        return "\n".join(lines)

    def violation(self, message: str) -> ReplayViolation:
        """Return a ReplayViolation that explains `message` with this replay's account."""
        return ReplayViolation(f"{message}\n{self.describe()}")

    def check_clean(self) -> None:
        """Raise ReplayViolation if the job was lost or left anything locked or stuck."""
        if self.final_state == "pending":
            raise self.violation("the job neither finished nor failed within the replay")
        if self.leftovers:
            raise self.violation("the replay left locks or claims behind")


def replay(
    app: App,
    job: JobFunction[Any, Any],
    *args: Any,
    crashes: list[Crash] | tuple[Crash, ...] = (),
    mode: Literal["thread", "process"] = "thread",
    app_spec: str | None = None,
    max_runs: int | None = None,
    **kwargs: Any,
) -> ReplayReport:
    """Enqueue `job(*args, **kwargs)` and run it until it finishes, crashing on schedule.

    Each run starts a fresh worker on the job; the first crash of the
    schedule not yet used is armed in it. A crash stops the worker at that
    point: its database sessions end, so the server rolls back and
    unlocks, and no code of the toolkit runs after it. In "thread" mode the
    worker runs in this process and its job thread is frozen for good; in
    "process" mode it is `reliable-jobs worker --app APP_SPEC`, killed
    with SIGKILL. Retry backoff is skipped between runs.
    """
    if mode == "process" and not app_spec:
        raise ValueError("mode='process' needs app_spec='module:attribute' naming the same app")
    job_id = job.enqueue(*args, **kwargs)
    report = ReplayReport(job_id=job_id, schedule=tuple(crashes))
    pending = list(crashes)
    limit = max_runs if max_runs is not None else 2 * len(pending) + 10

    for number in range(1, limit + 1):
        report.final_state, report.last_error = _job_state(app, job_id)
        if report.final_state != "pending":
            break
        _make_due(app, job_id)
        crash = pending[0] if pending else None
        if mode == "thread":
            run = _run_in_thread(app, crash, number)
        else:
            assert app_spec is not None
            run = _run_in_process(app, app_spec, crash, number)
        if run.crashed:
            pending.pop(0)
        report.runs.append(run)
    else:
        report.final_state, report.last_error = _job_state(app, job_id)

    report.effects = [
        effect for effect in list_effects(app, limit=10_000) if effect.job_id == job_id
    ]
    report.leftovers = _leftovers(app, report)
    return report


class _CrashArm:
    """The crash hook of one in-process run."""

    def __init__(self, crash: Crash | None, worker: Worker, app: App) -> None:
        self.crash = crash
        self.worker = worker
        self.app = app
        self.points: list[str] = []
        self.hits: Counter[str] = Counter()
        self.fired = threading.Event()  # the crash began
        self.dead = threading.Event()  # the worker's sessions have ended

    def __call__(self, point: str) -> None:
        if self.fired.is_set() or threading.current_thread().name.startswith("replay-frozen"):
            return
        self.points.append(point)
        if self.crash is None or point != self.crash.point:
            return
        self.hits[point] += 1
        if self.hits[point] == self.crash.nth:
            self._die()

    def _die(self) -> None:
        """Stop the worker as a killed process would stop, and never return."""
        self.fired.set()
        threading.current_thread().name = "replay-frozen"
        self.worker.halt()
        try:
            _end_sessions(self.app, self.worker.session_pids())
        finally:
            self.dead.set()
        threading.Event().wait()


def run_once(app: App, crash: Crash | None = None, number: int = 1) -> Run:
    """Run one burst worker in this process until the queue is idle or `crash` fires.

    The building block of replay(), for tests that drive the queue step by
    step, such as a hypothesis state machine.
    """
    return _run_in_thread(app, crash, number)


def make_all_due(app: App) -> None:
    """Skip every retry backoff in the app's queue (jobs held for review stay held)."""
    with app.connect("testing") as conn:
        conn.execute(
            f'UPDATE "{app.schema}".jobs SET run_at = now() '
            "WHERE run_at > now() AND expired_at IS NULL"
        )


def _run_in_thread(app: App, crash: Crash | None, number: int) -> Run:
    worker = Worker(
        app, concurrency=1, burst=True, poll_interval=0.05, install_signal_handlers=False
    )
    arm = _CrashArm(crash, worker, app)
    previous = crashpoints.set_hook(arm)
    try:
        thread = threading.Thread(target=worker.run, name=f"replay-run-{number}", daemon=True)
        thread.start()
        # The run ends when the worker's loop returns, or when a crash has
        # ended its sessions: a crash in the loop's own thread freezes it.
        deadline = time.monotonic() + RUN_TIMEOUT
        while thread.is_alive() and not arm.dead.is_set() and time.monotonic() < deadline:
            thread.join(0.01)
        if arm.fired.is_set():
            arm.dead.wait(max(0.0, deadline - time.monotonic()))
        if not arm.dead.is_set() and thread.is_alive():
            raise RuntimeError(f"replay run {number} did not end within {RUN_TIMEOUT} s")
    finally:
        crashpoints.set_hook(previous)
    return Run(number, crash, arm.fired.is_set(), tuple(arm.points))


def _run_in_process(app: App, app_spec: str, crash: Crash | None, number: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="reliable_jobs-replay-") as directory:
        log_path = Path(directory) / "points.log"
        env = {**os.environ, "RELIABLE_JOBS_CRASH_LOG": str(log_path)}
        env.pop("RELIABLE_JOBS_CRASH_AT", None)
        if crash is not None:
            env["RELIABLE_JOBS_CRASH_AT"] = f"{crash.point}:{crash.nth}"
        command = [
            sys.executable,
            "-m",
            "reliable_jobs",
            "--dsn",
            app.conninfo,
            "worker",
            "--app",
            app_spec,
            "--burst",
            "--poll-interval",
            "0.05",
        ]
        completed = subprocess.run(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        crashed = completed.returncode == -signal.SIGKILL
        if completed.returncode not in (0, -signal.SIGKILL):
            raise RuntimeError(
                f"replay run {number}: the worker exited with {completed.returncode}: "
                f"{completed.stderr.decode(errors='replace')[-2000:]}"
            )
        points = tuple(log_path.read_text().split()) if log_path.exists() else ()
    return Run(number, crash, crashed, points)


def _end_sessions(app: App, pids: list[int]) -> None:
    """Terminate sessions and wait until the server has ended them."""
    with app.connect("testing") as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::integer[]) AS pid", (pids,))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s::integer[])", (pids,)
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.01)


def _job_state(app: App, job_id: int) -> tuple[FinalState, str | None]:
    with app.connect("testing") as conn:
        row = conn.execute(
            f'SELECT expired_at IS NOT NULL, last_error_message FROM "{app.schema}".jobs '
            "WHERE id = %s",
            (job_id,),
        ).fetchone()
    if row is None:
        return "done", None
    return ("failed" if row[0] else "pending"), row[1]


def _make_due(app: App, job_id: int) -> None:
    """Skip the retry backoff: the replay is about crashes, not about waiting."""
    with app.connect("testing") as conn:
        conn.execute(
            f'UPDATE "{app.schema}".jobs SET run_at = now() WHERE id = %s AND run_at > now()',
            (job_id,),
        )


def _leftovers(app: App, report: ReplayReport) -> list[str]:
    """Describe advisory locks still held, and claims no one will settle."""
    found: list[str] = []
    with app.connect("testing") as conn:
        # A session closed by the worker ends on the server a moment later,
        # and its locks go with it; only a lock that stays is a leftover.
        deadline = time.monotonic() + LOCK_RELEASE_SECONDS
        while True:
            locks = conn.execute(
                "SELECT classid::bigint, objid::bigint, pid FROM pg_locks "
                "WHERE locktype = 'advisory' AND classid IN (%s::oid, %s::oid)",
                (app.lock_class, app.effect_lock_class),
            ).fetchall()
            if not locks or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    found.extend(
        f"advisory lock {objid} of class {classid} held by {pid}" for classid, objid, pid in locks
    )

    for effect in report.effects:
        if effect.state == "claimed":
            found.append(f"effect {effect.key} is still claimed")
        if effect.state == "uncertain" and report.final_state != "failed":
            found.append(f"effect {effect.key} is uncertain but its job is not held for review")
    return found
