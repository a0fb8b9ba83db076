"""Retry policies built from tenacity's stop and wait strategies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .errors import InvalidArgumentError

DEFAULT_MAX_ATTEMPTS = 25


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed job is tried again, and when it is kept as failed.

    `stop` and `wait` are tenacity strategies, evaluated after each failed
    attempt with that attempt's number and the time since the job was
    enqueued, both measured on the database clock.
    """

    stop: stop_base = field(
        default_factory=lambda: tenacity.stop_after_attempt(DEFAULT_MAX_ATTEMPTS)
    )
    wait: wait_base = field(
        default_factory=lambda: (
            tenacity.wait_exponential(multiplier=1, max=3600) + tenacity.wait_random(0, 1)
        )
    )

    def should_stop(self, attempt: int, seconds_since_enqueue: float) -> bool:
        """Return whether no attempt may follow the failed attempt number `attempt`."""
        return bool(self.stop(_retry_state(attempt, seconds_since_enqueue)))

    def delay(self, attempt: int, seconds_since_enqueue: float) -> float:
        """Return the seconds to wait before the attempt after `attempt`."""
        return max(0.0, float(self.wait(_retry_state(attempt, seconds_since_enqueue))))


def _retry_state(attempt: int, seconds_since_enqueue: float) -> tenacity.RetryCallState:
    # tenacity's strategies read only the attempt number and the elapsed
    # time, so a state built by hand can replace a live Retrying loop.
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    now = time.monotonic()
    state.start_time = now - seconds_since_enqueue
    state.attempt_number = attempt
    state.outcome_timestamp = now
    return state


def coerce_policy(retry: RetryPolicy | int | None) -> RetryPolicy:
    """Return a policy from a RetryPolicy, a max attempt count, or None (the default)."""
    if retry is None:
        return RetryPolicy()
    if isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, int) and not isinstance(retry, bool) and retry >= 1:
        return RetryPolicy(stop=tenacity.stop_after_attempt(retry))
    raise InvalidArgumentError(
        f"retry={retry!r} is invalid; pass a max attempt count >= 1 or "
        "RetryPolicy(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(10))"
    )
