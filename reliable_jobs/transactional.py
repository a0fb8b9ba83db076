"""@transactional_destroy: a job's writes and its deletion commit together."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from .context import JobContext

P = ParamSpec("P")
R = TypeVar("R")


def transactional_destroy(
    func: Callable[Concatenate[JobContext, P], R],
) -> Callable[Concatenate[JobContext, P], R]:
    """Run the job body in one transaction that also deletes the job row.

    Either the body's writes on `ctx.connection` and the deletion both
    commit, or neither does and the job is retried. When the deletion finds
    the job no longer owned by this worker (its lock was lost, or the row is
    gone), the whole transaction rolls back and LostOwnershipError makes the
    worker count the attempt as neither done nor failed.
    """

    @functools.wraps(func)
    def run_in_transaction(ctx: JobContext, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with ctx.transaction():
            result = func(ctx, *args, **kwargs)
            # The body may have settled its row itself (retry_in, expire).
            if not ctx.settled:
                ctx.destroy()
        return result

    return run_in_transaction
