"""Crash-replay testing: prove that a job is safe to run again after any crash.

Crash a job at each boundary the toolkit controls, replay it to the end,
and check what happened outside::

    from hypothesis import given
    from reliable_jobs.testing import crash_schedules, replay

    @given(crash_schedules())
    def test_charge_once(schedule):
        report = replay(app, checkout, 42, crashes=schedule)
        report.check_clean()
        assert recorder.count("charge:42") == 1, report.describe()

This module needs hypothesis: install reliable_jobs[testing].
"""

from ..crashpoints import CRASH_POINTS
from .recorder import EffectRecorder
from .replay import ReplayReport, ReplayViolation, Run, make_all_due, replay, run_once
from .strategies import Crash, crash_schedules, register_profiles

__all__ = [
    "CRASH_POINTS",
    "Crash",
    "EffectRecorder",
    "ReplayReport",
    "ReplayViolation",
    "Run",
    "crash_schedules",
    "make_all_due",
    "register_profiles",
    "replay",
    "run_once",
]
