"""Named points where crash tests can stop a worker as if its process died.

Each boundary that reliable_jobs controls calls reach() with its name. By
default nothing happens. reliable_jobs.testing installs a hook that
crashes the worker at a chosen point. A worker process started with
RELIABLE_JOBS_CRASH_AT=point[:nth] kills itself with SIGKILL the nth
time it reaches that point, and RELIABLE_JOBS_CRASH_LOG=path makes it
append each point it reaches to that file.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

CRASH_POINTS = (
    "after_lock",  # the job is locked and its attempt counted; the body has not started
    "before_claim",  # an @idempotent call is about to claim its key
    "after_claim",  # the claim is committed; the function has not been called
    "before_call",  # the function is about to be called
    "after_call",  # the function returned; nothing is recorded yet
    "before_record",  # the done record is about to be written
    "after_record",  # the done record is committed
    "before_commit",  # a job transaction is about to commit
    "after_commit",  # a job transaction committed
    "before_destroy",  # the job row is about to be deleted outside a transaction
    "after_destroy",  # the job row is deleted
)

Hook = Callable[[str], None]

_hook: Hook | None = None


def reach(point: str) -> None:
    """Signal that the running job reached `point`; a crash test may stop it here."""
    hook = _hook
    if hook is not None:
        hook(point)


def set_hook(hook: Hook | None) -> Hook | None:
    """Install the hook called at every point; return the previous one."""
    global _hook
    previous, _hook = _hook, hook
    return previous


class _KillAtPoint:
    """Log reached points to a file and SIGKILL this process at the chosen one."""

    def __init__(self, spec: str | None, log_path: str | None) -> None:
        self.point: str | None = None
        self.nth = 0
        if spec:
            self.point, self.nth = _parse_spec(spec)
        self.log_path = log_path
        self.hits: Counter[str] = Counter()

    def __call__(self, point: str) -> None:
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(point + "\n")
        if point != self.point:
            return
        self.hits[point] += 1
        if self.hits[point] == self.nth:
            os.kill(os.getpid(), signal.SIGKILL)


def _parse_spec(spec: str) -> tuple[str, int]:
    point, _, nth = spec.partition(":")
    if point not in CRASH_POINTS or (nth and not nth.isdigit()):
        raise ValueError(
            f"RELIABLE_JOBS_CRASH_AT={spec!r} is invalid; use POINT or POINT:N with POINT one "
            f"of {', '.join(CRASH_POINTS)}"
        )
    return point, int(nth or 1)


def _install_from_environment() -> None:
    spec = os.environ.get("RELIABLE_JOBS_CRASH_AT")
    log_path = os.environ.get("RELIABLE_JOBS_CRASH_LOG")
    if spec or log_path:
        set_hook(_KillAtPoint(spec, log_path))


_install_from_environment()
