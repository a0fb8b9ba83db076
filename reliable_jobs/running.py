"""Records that the worker's main loop and its job threads pass to each other."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .context import JobContext, LockedJob


@dataclass
class RunningJob:
    """A job handed to a job thread and not finished yet."""

    job: LockedJob
    context: JobContext | None = None
    # Set when the worker no longer holds the job's lock; shared with the
    # job's context so that a context created later still reads it.
    lost: threading.Event = field(default_factory=threading.Event)
    # Set by the job thread when the body starts; a job still waiting in
    # the prefetch buffer at shutdown is released without running.
    started: bool = False


@dataclass(frozen=True)
class Finished:
    """A job thread's report to the main loop that a job left its hands."""

    job_id: int
    locker_pid: int
    destroy: bool = False  # the job returned and left its row: the loop deletes it
    started: bool = True  # False when it was never run, because the worker is stopping
