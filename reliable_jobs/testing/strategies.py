"""Hypothesis strategies and settings profiles for crash-replay tests."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ..crashpoints import CRASH_POINTS

PROFILE_VARIABLE = "RELIABLE_JOBS_HYPOTHESIS_PROFILE"


@dataclass(frozen=True)
class Crash:
    """Crash the worker the `nth` time, within one run, that it reaches `point`."""

    point: str
    nth: int = 1

    def __post_init__(self) -> None:
        if self.point not in CRASH_POINTS:
            raise ValueError(
                f"unknown crash point {self.point!r}; use one of {', '.join(CRASH_POINTS)}"
            )
        if self.nth < 1:
            raise ValueError(f"nth={self.nth} is invalid; pass an int >= 1")

    def __repr__(self) -> str:
        return f"Crash({self.point!r})" if self.nth == 1 else f"Crash({self.point!r}, {self.nth})"


def crash_schedules(
    points: Sequence[str] = CRASH_POINTS, *, max_crashes: int = 3, max_nth: int = 2
) -> st.SearchStrategy[list[Crash]]:
    """Generate crash schedules: which points crash, on which hit, in what order.

    The replay consumes them in order, one per run: a run crashes at its
    crash, and the next run starts from what the crash left behind.
    Shrinking moves towards fewer crashes, earlier points and first hits.
    """
    crash = st.builds(Crash, st.sampled_from(list(points)), st.integers(1, max_nth))
    return st.lists(crash, max_size=max_crashes)


def register_profiles() -> None:
    """Register the `dev` and `ci` profiles and load the one the environment names.

    RELIABLE_JOBS_HYPOTHESIS_PROFILE selects it; `dev` is the default.
    Replays talk to PostgreSQL, so no deadline applies and slow examples
    are not an error.
    """
    common = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        "derandomize": False,
    }
    settings.register_profile("dev", max_examples=15, **common)  # type: ignore[arg-type]
    settings.register_profile("ci", max_examples=60, **common)  # type: ignore[arg-type]
    settings.load_profile(os.environ.get(PROFILE_VARIABLE, "dev"))
