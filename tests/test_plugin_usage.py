"""The crash test from docs/testing.md, written as a user would, with the plugin's fixtures."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from reliable_jobs import App, JobContext, idempotent
from reliable_jobs.testing import Crash, EffectRecorder, crash_schedules

pytestmark = pytest.mark.slow


def test_checkout_charges_once(
    reliable_jobs_app: App, effect_recorder: EffectRecorder, crash_replay: Any
) -> None:
    app, recorder = reliable_jobs_app, effect_recorder

    @idempotent(key="charge:{order}", check=lambda order: recorder.count(f"charge:{order}"))
    def charge(order: int) -> None:
        recorder.record(f"charge:{order}")  # stands for the payment provider

    @app.job()
    def checkout(ctx: JobContext, order: int) -> None:
        charge(order)

    orders = iter(range(1_000_000))

    @given(crash_schedules())
    def charged_once(schedule: list[Crash]) -> None:
        order = next(orders)
        report = crash_replay(checkout, order, crashes=schedule)
        report.check_clean()
        assert recorder.count(f"charge:{order}") == 1, report.describe()

    charged_once()
